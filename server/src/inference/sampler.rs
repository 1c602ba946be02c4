//! Turning logits into the next token: repetition penalty, temperature,
//! top-k, top-p, and a seeded random draw (or argmax when greedy).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Validated sampling settings for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// At or below [`GREEDY_BELOW`] the most likely token is always taken.
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: Option<usize>,
    /// 1.0 disables it; >1 makes tokens already in the context less likely.
    pub repetition_penalty: f32,
}

/// Temperatures this small are numerically greedy anyway; treating them as
/// exactly greedy makes them deterministic without a seed.
pub const GREEDY_BELOW: f32 = 1e-4;

pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
    /// Scratch space reused across steps (no allocation per token).
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(config: SamplingConfig, seed: u64) -> Self {
        Self {
            config,
            rng: StdRng::seed_from_u64(seed),
            candidates: Vec::new(),
        }
    }

    /// Picks the next token. `context` holds the prompt and generated tokens,
    /// for the repetition penalty. `logits` is modified in place.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        apply_repetition_penalty(logits, context, self.config.repetition_penalty);
        if self.config.temperature <= GREEDY_BELOW {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.config.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);

        if let Some(k) = self
            .config
            .top_k
            .filter(|&k| k > 0 && k < self.candidates.len())
        {
            self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
            self.candidates.truncate(k);
        }
        let nucleus = self.config.top_p > 0.0 && self.config.top_p < 1.0;
        if nucleus || self.config.top_k.is_some() {
            self.candidates.sort_unstable_by(by_logit_desc);
        }

        // Softmax over the candidates, shifted by the max for stability.
        let max = self
            .candidates
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f32;
        for c in &mut self.candidates {
            c.1 = (c.1 - max).exp();
            total += c.1;
        }
        if nucleus {
            let mut cumulative = 0.0f32;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cumulative += c.1 / total;
                if cumulative >= self.config.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
            total = self.candidates.iter().map(|c| c.1).sum();
        }

        let mut r = self.rng.random::<f32>() * total;
        for &(id, p) in &self.candidates {
            if r < p {
                return id;
            }
            r -= p;
        }
        // Rounding can leave `r` just above the last weight.
        self.candidates
            .last()
            .map(|c| c.0)
            .unwrap_or_else(|| argmax(logits))
    }
}

/// Index of the largest logit; the lowest index wins ties, so it is stable.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// CTRL-style penalty: positive logits are divided, negative multiplied, once
/// per distinct token.
fn apply_repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &t in context {
        let Some(slot) = seen.get_mut(t as usize) else {
            continue;
        };
        if std::mem::replace(slot, true) {
            continue;
        }
        let l = &mut logits[t as usize];
        *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(temperature: f32, top_p: f32, top_k: Option<usize>) -> SamplingConfig {
        SamplingConfig {
            temperature,
            top_p,
            top_k,
            repetition_penalty: 1.0,
        }
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(config(0.0, 1.0, None), 1);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let draw = |seed| {
            let mut s = Sampler::new(config(1.0, 1.0, None), seed);
            (0..64)
                .map(|_| s.sample(&mut [1.0; 16], &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(config(5.0, 1.0, Some(1)), 3);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [0.0, 0.5, 0.4], &[]), 1);
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // Token 0 holds ~88% of the mass; top_p 0.5 leaves only it.
        let mut s = Sampler::new(config(1.0, 0.5, None), 3);
        for _ in 0..100 {
            assert_eq!(s.sample(&mut [4.0, 2.0, 0.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn sampling_spreads_over_candidates() {
        let mut s = Sampler::new(config(1.0, 1.0, Some(2)), 11);
        let mut counts = [0u32; 3];
        for _ in 0..1000 {
            counts[s.sample(&mut [1.0, 1.0, 0.9], &[]) as usize] += 1;
        }
        assert_eq!(counts[2], 0, "top_k=2 must exclude the third token");
        assert!(counts[0] > 350 && counts[1] > 350, "{counts:?}");
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(
            SamplingConfig {
                temperature: 0.0,
                top_p: 1.0,
                top_k: None,
                repetition_penalty: 2.0,
            },
            0,
        );
        // Token 0 wins without penalty; seen once or many times it is halved once.
        assert_eq!(s.sample(&mut [3.0, 2.0], &[0, 0, 0]), 1);
        let mut negative = [-1.0, -1.5];
        assert_eq!(s.sample(&mut negative, &[0]), 1);
        assert_eq!(negative[0], -2.0);
    }
}
