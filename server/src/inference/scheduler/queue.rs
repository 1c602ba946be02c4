//! The waiting room: one queue per tier, served by weight (stride
//! scheduling), and inside a tier round-robin between callers, so one
//! caller with 50 requests in flight cannot starve another with one.
//!
//! Stride scheduling: every tier has a `pass`; the non-empty tier with the
//! lowest pass is served next and its pass grows by `STRIDE / weight`. With
//! weights 4:2:1 and every tier busy, admins get 4 of each 7 admissions.
//! A tier that was empty rejoins at the lowest pass of the busy ones, so
//! idle time earns no burst. Ties go to the higher tier.

use std::collections::{HashMap, VecDeque};

use securechat_crds::v1alpha1::{Tier, TierWeights};

const STRIDE: u64 = 1 << 20;

/// Tiers, highest first: the order ties are broken in.
const BY_PRIORITY: [Tier; 3] = [Tier::Admin, Tier::Developer, Tier::ReadOnly];

fn index(tier: Tier) -> usize {
    match tier {
        Tier::Admin => 0,
        Tier::Developer => 1,
        Tier::ReadOnly => 2,
    }
}

struct TierQueue<T> {
    /// Callers with waiting items, the next to serve first.
    turn: VecDeque<String>,
    items: HashMap<String, VecDeque<T>>,
    pass: u64,
}

impl<T> Default for TierQueue<T> {
    fn default() -> Self {
        Self {
            turn: VecDeque::new(),
            items: HashMap::new(),
            pass: 0,
        }
    }
}

impl<T> TierQueue<T> {
    fn is_empty(&self) -> bool {
        self.turn.is_empty()
    }
}

pub struct FairQueue<T> {
    tiers: [TierQueue<T>; 3],
    weights: TierWeights,
    len: usize,
}

impl<T> FairQueue<T> {
    pub fn new(weights: TierWeights) -> Self {
        Self {
            tiers: Default::default(),
            weights,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, tier: Tier, caller: &str, item: T) {
        let lowest_busy = self
            .tiers
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| t.pass)
            .min();
        let q = &mut self.tiers[index(tier)];
        if q.is_empty()
            && let Some(lowest) = lowest_busy
        {
            q.pass = q.pass.max(lowest);
        }
        let items = q.items.entry(caller.to_owned()).or_default();
        if items.is_empty() {
            q.turn.push_back(caller.to_owned());
        }
        items.push_back(item);
        self.len += 1;
    }

    /// The tier served next.
    fn next_tier(&self) -> Option<usize> {
        BY_PRIORITY
            .iter()
            .map(|&t| index(t))
            .filter(|&i| !self.tiers[i].is_empty())
            .min_by_key(|&i| self.tiers[i].pass)
    }

    /// The item [`Self::pop`] would return.
    pub fn peek(&self) -> Option<&T> {
        let q = &self.tiers[self.next_tier()?];
        q.items.get(q.turn.front()?)?.front()
    }

    pub fn pop(&mut self) -> Option<T> {
        let i = self.next_tier()?;
        // The CRD admits weights of 1 and more; 1 covers anything else.
        let weight = u64::try_from(self.weights.of(BY_PRIORITY[i]))
            .unwrap_or(1)
            .max(1);
        let stride = STRIDE / weight;
        let q = &mut self.tiers[i];
        let caller = q.turn.pop_front()?;
        let items = q.items.get_mut(&caller)?;
        let item = items.pop_front();
        if items.is_empty() {
            q.items.remove(&caller);
        } else {
            q.turn.push_back(caller);
        }
        q.pass += stride;
        self.len -= 1;
        item
    }

    /// Drops the items `keep` says no to (requests whose client left).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for q in &mut self.tiers {
            for items in q.items.values_mut() {
                let before = items.len();
                items.retain(&mut keep);
                self.len -= before - items.len();
            }
            q.items.retain(|_, items| !items.is_empty());
            let items = &q.items;
            q.turn.retain(|caller| items.contains_key(caller));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut FairQueue<(Tier, &'static str, u32)>) -> Vec<(Tier, &'static str, u32)> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn callers_of_a_tier_take_turns() {
        let mut q = FairQueue::new(TierWeights::default());
        for i in 0..50 {
            q.push(Tier::Developer, "flood", (Tier::Developer, "flood", i));
        }
        q.push(Tier::Developer, "one", (Tier::Developer, "one", 0));
        let order = drain(&mut q);
        let position = order.iter().position(|e| e.1 == "one").unwrap();
        assert!(position <= 1, "the single request waited behind {position}");
        // Each caller's own requests keep their order.
        let flood: Vec<u32> = order
            .iter()
            .filter(|e| e.1 == "flood")
            .map(|e| e.2)
            .collect();
        assert_eq!(flood, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn tiers_share_by_weight_and_ties_go_up() {
        let mut q = FairQueue::new(TierWeights {
            admin: 4,
            developer: 2,
            read_only: 1,
        });
        for i in 0..70 {
            q.push(Tier::ReadOnly, "r", (Tier::ReadOnly, "r", i));
            q.push(Tier::Developer, "d", (Tier::Developer, "d", i));
            q.push(Tier::Admin, "a", (Tier::Admin, "a", i));
        }
        assert_eq!(q.peek().map(|e| e.0), Some(Tier::Admin));
        let first: Vec<Tier> = (0..70).filter_map(|_| q.pop()).map(|e| e.0).collect();
        let count = |t| first.iter().filter(|&&x| x == t).count();
        assert_eq!(
            (
                count(Tier::Admin),
                count(Tier::Developer),
                count(Tier::ReadOnly)
            ),
            (40, 20, 10)
        );
        assert_eq!(first[0], Tier::Admin);
    }

    #[test]
    fn an_idle_tier_earns_no_burst() {
        let mut q = FairQueue::new(TierWeights::default());
        for i in 0..100 {
            q.push(Tier::Admin, "a", (Tier::Admin, "a", i));
        }
        for _ in 0..80 {
            q.pop();
        }
        // Read-only joins late: it gets its 1-in-5 share from now on, not
        // the 80 admissions it missed.
        for i in 0..10 {
            q.push(Tier::ReadOnly, "r", (Tier::ReadOnly, "r", i));
        }
        let next: Vec<Tier> = (0..10).filter_map(|_| q.pop()).map(|e| e.0).collect();
        let read_only = next.iter().filter(|&&t| t == Tier::ReadOnly).count();
        assert!((1..=3).contains(&read_only), "{next:?}");
    }

    #[test]
    fn retain_drops_items_and_empty_callers() {
        let mut q = FairQueue::new(TierWeights::default());
        q.push(Tier::ReadOnly, "x", (Tier::ReadOnly, "x", 1));
        q.push(Tier::ReadOnly, "y", (Tier::ReadOnly, "y", 2));
        q.push(Tier::ReadOnly, "y", (Tier::ReadOnly, "y", 3));
        q.retain(|e| e.2 != 1 && e.2 != 3);
        assert_eq!(q.len(), 1);
        assert_eq!(drain(&mut q), vec![(Tier::ReadOnly, "y", 2)]);
        assert!(q.is_empty());
    }
}
