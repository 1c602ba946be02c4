//! Which blocks of the key/value pool are free, who holds the others, and
//! which hold a known token prefix (the prefix cache).
//!
//! A block is in exactly one of three states:
//! - held: in one or more sequences' block tables (`refs > 0`);
//! - cached: held by no one but full of a known prefix, so a later prompt
//!   that starts the same way takes it instead of recomputing it; evicted
//!   least recently released first when a block is needed;
//! - free: nothing worth keeping.
//!
//! A prefix is known by [`PrefixKey`]: a 128-bit hash of every token from
//! the start of the sequence to the end of the block, so a block is only
//! reused after the very same tokens (the chance that two prefixes share a
//! key is 2^-128). Only full blocks are ever shared, and a sequence writes
//! only positions past its shared blocks, so no one writes a block another
//! sequence reads.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use securechat_kernels::attention::BLOCK_TOKENS;

/// The tokens from the start of a sequence to the end of one of its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrefixKey(u128);

impl PrefixKey {
    /// The key of a block holding `tokens` after the prefix `parent`
    /// (`None` for the first block).
    pub fn chain(parent: Option<PrefixKey>, tokens: &[u32]) -> Self {
        // Two SipHash runs, told apart by a leading salt, make 128 bits.
        let half = |salt: u8| {
            let mut h = DefaultHasher::new();
            salt.hash(&mut h);
            parent.map(|p| p.0).hash(&mut h);
            tokens.hash(&mut h);
            h.finish()
        };
        Self(u128::from(half(0)) << 64 | u128::from(half(1)))
    }

    /// The keys of every full block of `tokens`.
    pub fn of_blocks(tokens: &[u32]) -> Vec<Self> {
        let mut parent = None;
        tokens
            .chunks_exact(BLOCK_TOKENS)
            .map(|block| {
                let key = Self::chain(parent, block);
                parent = Some(key);
                key
            })
            .collect()
    }
}

pub struct BlockManager {
    /// Per block: sequences holding it.
    refs: Vec<u32>,
    /// Per block: the prefix it holds, when it is in the prefix cache.
    key: Vec<Option<PrefixKey>>,
    by_key: HashMap<PrefixKey, u32>,
    /// Cached blocks held by no one, by when they were released.
    idle: BTreeMap<u64, u32>,
    /// Per block: its entry in `idle`.
    released_at: Vec<u64>,
    free: Vec<u32>,
    clock: u64,
    prefix_cache: bool,
}

impl BlockManager {
    pub fn new(blocks: usize, prefix_cache: bool) -> Self {
        Self {
            refs: vec![0; blocks],
            key: vec![None; blocks],
            by_key: HashMap::new(),
            idle: BTreeMap::new(),
            released_at: vec![0; blocks],
            // Popped from the end: block 0 first.
            free: (0..blocks as u32).rev().collect(),
            clock: 0,
            prefix_cache,
        }
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks a sequence could take now (free or cached and idle).
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Blocks held by sequences, as a share of the pool.
    pub fn usage(&self) -> f64 {
        let held = self.total() - self.available();
        held as f64 / self.total().max(1) as f64
    }

    /// How many of `keys` (a prompt's blocks, in order) the cache holds
    /// from the start.
    pub fn cached_prefix(&self, keys: &[PrefixKey]) -> usize {
        if !self.prefix_cache {
            return 0;
        }
        keys.iter()
            .take_while(|k| self.by_key.contains_key(k))
            .count()
    }

    /// How many of the blocks cached for `keys` no sequence holds: taking
    /// them uses up that many available blocks.
    pub fn idle_among(&self, keys: &[PrefixKey]) -> usize {
        keys.iter()
            .filter_map(|k| self.by_key.get(k))
            .filter(|&&b| self.refs[b as usize] == 0)
            .count()
    }

    /// Takes the cached blocks of the first `n` of `keys` (see
    /// [`Self::cached_prefix`]) into a new block table.
    pub fn take_prefix(&mut self, keys: &[PrefixKey], n: usize) -> Vec<u32> {
        let mut table = Vec::with_capacity(n);
        for key in &keys[..n] {
            let Some(&block) = self.by_key.get(key) else {
                break;
            };
            self.hold(block);
            table.push(block);
        }
        table
    }

    fn hold(&mut self, block: u32) {
        let b = block as usize;
        if self.refs[b] == 0 && self.key[b].is_some() {
            self.idle.remove(&self.released_at[b]);
        }
        self.refs[b] += 1;
    }

    /// A block for one sequence to write: a free one, else the cached block
    /// released longest ago (forgetting its prefix); `None` when every
    /// block is held.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                if let Some(key) = self.key[b as usize].take() {
                    self.by_key.remove(&key);
                }
                b
            }
        };
        self.refs[block as usize] = 1;
        Some(block)
    }

    /// Records that `block`, now full, holds the prefix `key`. When another
    /// block already holds it, that one stays the cached copy.
    pub fn register(&mut self, block: u32, key: PrefixKey) {
        if !self.prefix_cache || self.key[block as usize].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.by_key.entry(key) {
            e.insert(block);
            self.key[block as usize] = Some(key);
        }
    }

    /// Gives back a sequence's blocks: those no one else holds become
    /// cached (if they hold a known prefix) or free.
    pub fn release(&mut self, table: &[u32]) {
        // The last blocks first, so that under pressure a prompt's tail is
        // evicted before its head (which more prompts share).
        for &block in table.iter().rev() {
            let b = block as usize;
            self.refs[b] = self.refs[b].saturating_sub(1);
            if self.refs[b] > 0 {
                continue;
            }
            if self.key[b].is_some() {
                self.clock += 1;
                self.released_at[b] = self.clock;
                self.idle.insert(self.clock, block);
            } else {
                self.free.push(block);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 31 + salt).collect()
    }

    #[test]
    fn a_released_prefix_is_found_and_shared_by_the_next_prompt() {
        let mut m = BlockManager::new(8, true);
        let prompt = tokens(3 * BLOCK_TOKENS + 5, 1);
        let keys = PrefixKey::of_blocks(&prompt);
        assert_eq!(keys.len(), 3);
        let table: Vec<u32> = (0..4).map(|_| m.allocate().unwrap()).collect();
        for (i, key) in keys.iter().enumerate() {
            m.register(table[i], *key);
        }
        assert_eq!(m.available(), 4);
        // A second prompt with the same first two blocks, while the first
        // still runs: it shares them.
        let mut other = prompt[..2 * BLOCK_TOKENS].to_vec();
        other.extend(tokens(BLOCK_TOKENS, 7));
        let other_keys = PrefixKey::of_blocks(&other);
        assert_eq!(m.cached_prefix(&other_keys), 2);
        let shared = m.take_prefix(&other_keys, 2);
        assert_eq!(shared, table[..2]);
        m.release(&table);
        // Blocks 0 and 1 are still held by the second; 2 is cached, 3 free.
        assert_eq!(m.available(), 6);
        m.release(&shared);
        assert_eq!(m.available(), 8);
        assert_eq!(m.cached_prefix(&keys), 3, "the whole prefix stays cached");
    }

    #[test]
    fn the_least_recently_released_prefix_is_evicted_first() {
        let mut m = BlockManager::new(2, true);
        let (a, b) = (tokens(BLOCK_TOKENS, 1), tokens(BLOCK_TOKENS, 2));
        let (ka, kb) = (PrefixKey::of_blocks(&a), PrefixKey::of_blocks(&b));
        let (ba, bb) = (m.allocate().unwrap(), m.allocate().unwrap());
        m.register(ba, ka[0]);
        m.register(bb, kb[0]);
        assert_eq!(m.allocate(), None, "both held");
        m.release(&[ba]);
        m.release(&[bb]);
        assert_eq!(m.allocate(), Some(ba), "a was released first");
        assert_eq!(m.cached_prefix(&ka), 0);
        assert_eq!(m.cached_prefix(&kb), 1);
    }

    #[test]
    fn keys_depend_on_every_earlier_token() {
        let a = tokens(2 * BLOCK_TOKENS, 1);
        let mut b = a.clone();
        b[0] += 1;
        let (ka, kb) = (PrefixKey::of_blocks(&a), PrefixKey::of_blocks(&b));
        assert_ne!(ka[0], kb[0]);
        assert_ne!(ka[1], kb[1], "same second block after a different first");
    }

    #[test]
    fn without_the_prefix_cache_nothing_is_shared() {
        let mut m = BlockManager::new(2, false);
        let keys = PrefixKey::of_blocks(&tokens(BLOCK_TOKENS, 1));
        let block = m.allocate().unwrap();
        m.register(block, keys[0]);
        m.release(&[block]);
        assert_eq!(m.cached_prefix(&keys), 0);
        assert_eq!(m.available(), 2);
    }

    #[test]
    fn a_second_copy_of_a_prefix_is_freed_not_cached() {
        let mut m = BlockManager::new(3, true);
        let keys = PrefixKey::of_blocks(&tokens(BLOCK_TOKENS, 1));
        let (first, second) = (m.allocate().unwrap(), m.allocate().unwrap());
        m.register(first, keys[0]);
        m.register(second, keys[0]);
        m.release(&[second]);
        m.release(&[first]);
        assert_eq!(m.take_prefix(&keys, 1), vec![first]);
        assert_eq!(m.usage(), 1.0 / 3.0);
    }
}
