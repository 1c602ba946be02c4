//! Causal grouped-query attention over a key/value cache kept at f16.
//!
//! f16 halves the cache's memory, and it is what llama.cpp keeps by default:
//! queries, keys, values and attention weights all pass through f16 there,
//! so rounding them the same way here keeps both engines' outputs
//! comparable. Products of two f16 values are exact in f32, so only the
//! order of the sums differs.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::ops::{add_assign, softmax_scaled};
use crate::{ShapeError, axpy_f16, dot_f16, dot_f16_tiled, f16_round_slice};

/// Keys and values of every layer for the positions seen so far, written in
/// place (no copy of the history per token).
pub struct KvCache {
    n_kv_head: usize,
    head_dim: usize,
    max_len: usize,
    len: usize,
    /// Per layer: keys and values, position-major `[pos][kv_head][head_dim]`,
    /// so a new position is an append and growing never re-lays the past.
    layers: Vec<(Vec<f16>, Vec<f16>)>,
}

impl KvCache {
    pub fn new(n_layer: usize, n_kv_head: usize, head_dim: usize, max_len: usize) -> Self {
        Self {
            n_kv_head,
            head_dim,
            max_len,
            len: 0,
            layers: (0..n_layer).map(|_| (Vec::new(), Vec::new())).collect(),
        }
    }

    /// Positions cached in every layer.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position; the buffers keep their capacity for the next
    /// request.
    pub fn clear(&mut self) {
        self.len = 0;
        for (k, v) in &mut self.layers {
            k.clear();
            v.clear();
        }
    }

    fn row(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Appends `seq` positions of keys and values (`[seq, n_kv_head ·
    /// head_dim]` each) to `layer`, rounded to f16. Every layer takes the
    /// same positions, then [`Self::advance`] counts them.
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), ShapeError> {
        let row = self.row();
        if k.len() != v.len() || !k.len().is_multiple_of(row) {
            return Err(ShapeError(format!(
                "KV cache: {} keys and {} values are not whole rows of {row}",
                k.len(),
                v.len()
            )));
        }
        let seq = k.len() / row;
        if self.len + seq > self.max_len {
            return Err(ShapeError(format!(
                "KV cache: {} positions exceed the context of {}",
                self.len + seq,
                self.max_len
            )));
        }
        let Some((kc, vc)) = self.layers.get_mut(layer) else {
            return Err(ShapeError(format!("KV cache: no layer {layer}")));
        };
        if kc.len() != self.len * row {
            return Err(ShapeError(format!(
                "KV cache: layer {layer} already holds these positions"
            )));
        }
        let at = kc.len();
        kc.resize(at + k.len(), f16::ZERO);
        vc.resize(at + v.len(), f16::ZERO);
        kc[at..].convert_from_f32_slice(k);
        vc[at..].convert_from_f32_slice(v);
        Ok(())
    }

    /// Counts the positions every layer has been given by [`Self::append`].
    pub fn advance(&mut self, seq: usize) {
        self.len += seq;
    }
}

use crate::scalar::{LANES, ROW_LANES};

/// `Σ a·b` over an f32 query and an f16 key.
type DotF16 = fn(&[f32], &[f16]) -> f32;

// llama.cpp sums a batch of several query rows (a prompt) through
// llamafile's 16-lane tiles and a single row (a decode step) through its
// 64-lane vector dot; both are followed here, so either kind of step
// rounds as it does there.

/// Scratch space of one attention task, reused across its items.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    /// `[lanes][head_dim]` partial sums.
    partial: Vec<f32>,
}

/// Attention of the `seq` newest positions of `layer` (appended, not yet
/// advanced) over everything cached up to each of them.
///
/// `q` is `[seq, n_head · head_dim]` with rotary embeddings applied; `out`
/// gets `[seq, n_head · head_dim]`. The `n_head / n_kv_head` query heads of
/// a group share its keys and values. Work is split by (position, head)
/// over rayon's pool.
pub fn attention(
    cache: &KvCache,
    layer: usize,
    q: &[f32],
    n_head: usize,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let (hd, n_kv, row) = (cache.head_dim, cache.n_kv_head, cache.row());
    if n_head == 0 || !n_head.is_multiple_of(n_kv) {
        return Err(ShapeError(format!(
            "{n_head} query heads do not share {n_kv} KV heads evenly"
        )));
    }
    let width = n_head * hd;
    if !q.len().is_multiple_of(width) || out.len() != q.len() {
        return Err(ShapeError(format!(
            "attention: {} query values and {} outputs for rows of {width}",
            q.len(),
            out.len()
        )));
    }
    let seq = q.len() / width;
    let Some((keys, values)) = cache.layers.get(layer) else {
        return Err(ShapeError(format!("KV cache: no layer {layer}")));
    };
    if keys.len() != (cache.len + seq) * row {
        return Err(ShapeError(format!(
            "attention: layer {layer} holds {} positions, expected {}",
            keys.len() / row,
            cache.len + seq
        )));
    }
    let n_rep = n_head / n_kv;
    let (dot, lanes): (DotF16, usize) = if seq == 1 {
        (dot_f16, ROW_LANES)
    } else {
        (dot_f16_tiled, LANES)
    };
    let scale = 1.0 / (hd as f32).sqrt();
    // One task per (position, query head): with one new token there are
    // still n_head tasks to share between the threads (per KV group there
    // would be as few as 3, which two threads split 2:1). Heads of a group
    // read the same keys, which stay in cache between them.
    out.par_chunks_mut(hd)
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (task, out)| {
            let (s, h) = (task / n_head, task % n_head);
            let g = h / n_rep;
            let n_keys = cache.len + s + 1;
            let Scratch {
                q: qh,
                scores,
                partial,
            } = scratch;
            // The query head, at the precision it meets f16 keys.
            let start = s * width + h * hd;
            qh.clear();
            qh.extend_from_slice(&q[start..start + hd]);
            f16_round_slice(qh);
            scores.clear();
            scores.extend(
                (0..n_keys).map(|j| dot(qh, &keys[j * row + g * hd..j * row + (g + 1) * hd])),
            );
            softmax_scaled(scores, scale);
            f16_round_slice(scores);
            // Σ_j w_j·v_j summed as llama.cpp sums it: position j
            // fused-multiply-added into lane j % lanes, the lanes folded as
            // `scalar::fold64` and `fold16` (whole rows at a time, so it
            // vectorizes).
            partial.clear();
            partial.resize(lanes * hd, 0.0);
            for (j, &w) in scores.iter().enumerate() {
                let lane = &mut partial[j % lanes * hd..(j % lanes + 1) * hd];
                axpy_f16(w, &values[j * row + g * hd..j * row + (g + 1) * hd], lane);
            }
            let halves: &[usize] = if lanes == ROW_LANES {
                &[32, 16, 8, 4]
            } else {
                &[8, 4]
            };
            for &half in halves {
                let (low, high) = partial.split_at_mut(half * hd);
                for l in 0..half {
                    add_assign(&mut low[l * hd..(l + 1) * hd], &high[l * hd..(l + 1) * hd]);
                }
            }
            // (0 + 2) + (1 + 3)
            let (low, high) = partial.split_at_mut(2 * hd);
            add_assign(&mut low[..2 * hd], &high[..2 * hd]);
            let (low, high) = low.split_at_mut(hd);
            add_assign(low, high);
            out.copy_from_slice(low);
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f32 attention of one query head over keys/values `[n][hd]`.
    fn reference(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>]) -> Vec<f32> {
        let scale = 1.0 / (q.len() as f32).sqrt();
        let scores: Vec<f32> = keys
            .iter()
            .map(|k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale)
            .collect();
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f32 = exps.iter().sum();
        let mut out = vec![0.0; q.len()];
        for (e, v) in exps.iter().zip(values) {
            for (o, x) in out.iter_mut().zip(v) {
                *o += e / total * x;
            }
        }
        out
    }

    fn value(i: usize) -> f32 {
        ((i * 7919 % 101) as f32 - 50.0) / 40.0
    }

    /// Two query heads per KV head, positions added one by one and then in a
    /// batch: each output is causal attention over the positions up to its
    /// own, within f16 rounding of plain f32 arithmetic.
    #[test]
    fn grouped_causal_attention_matches_f32() {
        let (n_layer, n_kv, n_head, hd) = (2, 2, 4, 8);
        let row = n_kv * hd;
        let total = 7;
        let k: Vec<f32> = (0..total * row).map(value).collect();
        let v: Vec<f32> = (0..total * row).map(|i| value(i + 13)).collect();
        let q: Vec<f32> = (0..total * n_head * hd).map(|i| value(i + 29)).collect();
        let mut cache = KvCache::new(n_layer, n_kv, hd, 16);
        let mut got = vec![0.0; q.len()];
        // Positions 0..3 one at a time, then 3..7 in one batch.
        for (from, to) in [(0, 1), (1, 2), (2, 3), (3, total)] {
            for layer in 0..n_layer {
                cache
                    .append(layer, &k[from * row..to * row], &v[from * row..to * row])
                    .unwrap();
            }
            let width = n_head * hd;
            attention(
                &cache,
                1,
                &q[from * width..to * width],
                n_head,
                &mut got[from * width..to * width],
            )
            .unwrap();
            cache.advance(to - from);
        }
        for s in 0..total {
            for h in 0..n_head {
                let g = h / (n_head / n_kv);
                let head =
                    |m: &[f32], j: usize| m[j * row + g * hd..j * row + (g + 1) * hd].to_vec();
                let keys: Vec<Vec<f32>> = (0..=s).map(|j| head(&k, j)).collect();
                let values: Vec<Vec<f32>> = (0..=s).map(|j| head(&v, j)).collect();
                let at = (s * n_head + h) * hd;
                let want = reference(&q[at..at + hd], &keys, &values);
                for (a, b) in got[at..at + hd].iter().zip(&want) {
                    assert!((a - b).abs() < 5e-3, "position {s} head {h}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn the_cache_refuses_past_its_context_and_misuse() {
        let mut cache = KvCache::new(1, 1, 2, 2);
        assert!(
            cache.append(0, &[0.0; 6], &[0.0; 6]).is_err(),
            "3 positions in a context of 2"
        );
        assert!(
            cache.append(0, &[0.0; 3], &[0.0; 3]).is_err(),
            "not whole rows"
        );
        assert!(
            cache.append(1, &[0.0; 2], &[0.0; 2]).is_err(),
            "no such layer"
        );
        cache.append(0, &[0.0; 2], &[0.0; 2]).unwrap();
        assert!(
            cache.append(0, &[0.0; 2], &[0.0; 2]).is_err(),
            "same positions twice"
        );
        cache.advance(1);
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
        cache.append(0, &[0.0; 4], &[0.0; 4]).unwrap();
    }

    #[test]
    fn attention_checks_shapes() {
        let mut cache = KvCache::new(1, 2, 4, 8);
        cache.append(0, &[0.0; 8], &[0.0; 8]).unwrap();
        let mut out = vec![0.0; 12];
        assert!(
            attention(&cache, 0, &[0.0; 12], 3, &mut out).is_err(),
            "3 heads over 2 groups"
        );
        let mut out = vec![0.0; 16];
        assert!(attention(&cache, 0, &[0.0; 16], 4, &mut out).is_ok());
        assert!(
            attention(&cache, 0, &[0.0; 32], 4, &mut [0.0; 32]).is_err(),
            "2 queries, 1 position"
        );
    }
}
