//! Causal grouped-query attention over a key/value cache kept at f16.
//!
//! f16 halves the cache's memory, and it is what llama.cpp keeps by default:
//! queries, keys, values and attention weights all pass through f16 there,
//! so rounding them the same way here keeps both engines' outputs
//! comparable. Products of two f16 values are exact in f32, so only the
//! order of the sums differs.

use half::f16;
use half::slice::HalfFloatSliceExt;
use half::vec::HalfBitsVecExt;
use rayon::prelude::*;

use crate::ops::{add_assign, softmax_scaled};
use crate::{ShapeError, axpy_f16, dot_f16, dot_f16_tiled, f16_round_slice};

/// Positions per block of the pool: small enough that a sequence wastes
/// at most 15 positions of its last block, large enough that a block's keys
/// for one layer (16 × 192 values for the default model) are one 6 KiB
/// stretch of memory.
pub const BLOCK_TOKENS: usize = 16;

/// Keys and values of many sequences, in fixed-size blocks of
/// [`BLOCK_TOKENS`] positions (a paged cache): a sequence owns a list of
/// blocks (its block table), not a stretch of one buffer, so sequences of
/// any length share one pool without fragmenting it, and a block holding
/// a common prefix can sit in several tables at once.
///
/// Layout: `[block][layer][slot][kv_head][head_dim]` for keys and, apart,
/// for values; one block's keys for one layer are contiguous.
pub struct KvPool {
    n_layer: usize,
    n_kv_head: usize,
    head_dim: usize,
    n_blocks: usize,
    keys: Vec<f16>,
    values: Vec<f16>,
}

impl KvPool {
    pub fn new(n_layer: usize, n_kv_head: usize, head_dim: usize, n_blocks: usize) -> Self {
        let len = n_blocks * n_layer * BLOCK_TOKENS * n_kv_head * head_dim;
        Self {
            n_layer,
            n_kv_head,
            head_dim,
            n_blocks,
            keys: zeroed(len),
            values: zeroed(len),
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Bytes one position takes in every layer, keys and values.
    pub fn bytes_per_token(n_layer: usize, n_kv_head: usize, head_dim: usize) -> usize {
        2 * n_layer * n_kv_head * head_dim * std::mem::size_of::<f16>()
    }

    fn row(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Where `(block, layer)`'s rows start.
    fn offset(&self, block: usize, layer: usize) -> usize {
        (block * self.n_layer + layer) * BLOCK_TOKENS * self.row()
    }

    /// Writes the key and value rows (`n_kv_head · head_dim` each) of
    /// position `pos` of the sequence whose blocks are `table`, in `layer`,
    /// rounded to f16.
    pub fn write(
        &mut self,
        table: &[u32],
        layer: usize,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), ShapeError> {
        let row = self.row();
        if k.len() != row || v.len() != row {
            return Err(ShapeError(format!(
                "KV pool: {} keys and {} values for a row of {row}",
                k.len(),
                v.len()
            )));
        }
        let block = self.block(table, pos)?;
        if layer >= self.n_layer {
            return Err(ShapeError(format!("KV pool: no layer {layer}")));
        }
        let at = self.offset(block, layer) + pos % BLOCK_TOKENS * row;
        self.keys[at..at + row].convert_from_f32_slice(k);
        self.values[at..at + row].convert_from_f32_slice(v);
        Ok(())
    }

    /// The block holding `pos` in `table`, checked against the pool.
    fn block(&self, table: &[u32], pos: usize) -> Result<usize, ShapeError> {
        let Some(&block) = table.get(pos / BLOCK_TOKENS) else {
            return Err(ShapeError(format!(
                "KV pool: position {pos} is past the {} blocks of its table",
                table.len()
            )));
        };
        let block = block as usize;
        if block >= self.n_blocks {
            return Err(ShapeError(format!(
                "KV pool: block {block} of a pool of {}",
                self.n_blocks
            )));
        }
        Ok(block)
    }
}

/// `len` zero values, from zeroed memory: the operating system hands the
/// pages out as they are first written, so a pool sized for the worst case
/// costs only what sequences use.
fn zeroed(len: usize) -> Vec<f16> {
    vec![0u16; len].reinterpret_into()
}

/// One sequence's query rows in a step of [`paged_attention`].
#[derive(Debug, Clone, Copy)]
pub struct SeqQueries<'a> {
    /// The blocks holding the sequence's positions, in order.
    pub table: &'a [u32],
    /// Position of the first query row; the rows are consecutive.
    pub pos: usize,
    /// Query rows of this sequence in the step.
    pub rows: usize,
    /// Rows at positions below this one are summed as llama.cpp sums the
    /// rows of a prompt batch, the others as it sums a single decode row.
    /// Tied to the position rather than to the step, a sequence's
    /// arithmetic is the same however its work is split into steps and
    /// whichever sequences share them.
    pub tiled_below: usize,
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

/// Causal attention of each sequence's query rows over its cached
/// positions up to and including each row's own (whose keys and values
/// must be written already).
///
/// `q` holds the rows of `seqs` in order, `[rows, n_head · head_dim]`, with
/// rotary embeddings applied; `out` gets the same shape. The `n_head /
/// n_kv_head` query heads of a group share its keys and values. Work is
/// split by (row, head) over rayon's pool.
pub fn paged_attention(
    pool: &KvPool,
    layer: usize,
    seqs: &[SeqQueries<'_>],
    q: &[f32],
    n_head: usize,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    let (hd, n_kv, row) = (pool.head_dim, pool.n_kv_head, pool.row());
    if n_head == 0 || !n_head.is_multiple_of(n_kv) {
        return Err(ShapeError(format!(
            "{n_head} query heads do not share {n_kv} KV heads evenly"
        )));
    }
    let width = n_head * hd;
    let rows: usize = seqs.iter().map(|s| s.rows).sum();
    if q.len() != rows * width || out.len() != q.len() {
        return Err(ShapeError(format!(
            "attention: {} query values and {} outputs for {rows} rows of {width}",
            q.len(),
            out.len()
        )));
    }
    if layer >= pool.n_layer {
        return Err(ShapeError(format!("KV pool: no layer {layer}")));
    }
    // Each row: its sequence's table, its position and how it sums.
    let mut per_row = Vec::with_capacity(rows);
    for s in seqs {
        for pos in s.pos..s.pos + s.rows {
            pool.block(s.table, pos)?;
            per_row.push((s.table, pos, pos < s.tiled_below));
        }
    }
    let n_rep = n_head / n_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    // One task per (row, query head): with one new token there are still
    // n_head tasks to share between the threads (per KV group there would
    // be as few as 3, which two threads split 2:1). Heads of a group read
    // the same keys, which stay in cache between them.
    out.par_chunks_mut(hd)
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (task, out)| {
            let (r, h) = (task / n_head, task % n_head);
            let (table, pos, tiled) = per_row[r];
            let g = h / n_rep;
            // Every block was checked above.
            let at = |j: usize| {
                pool.offset(table[j / BLOCK_TOKENS] as usize, layer)
                    + j % BLOCK_TOKENS * row
                    + g * hd
            };
            let start = r * width + h * hd;
            attend(
                &q[start..start + hd],
                pos + 1,
                |j| &pool.keys[at(j)..at(j) + hd],
                |j| &pool.values[at(j)..at(j) + hd],
                tiled,
                scale,
                scratch,
                out,
            );
        });
    Ok(())
}

/// One query head over keys and values `0..n_keys`, into `out`.
#[allow(clippy::too_many_arguments)] // the parts of one head's attention
fn attend<'a>(
    q: &[f32],
    n_keys: usize,
    key: impl Fn(usize) -> &'a [f16],
    value: impl Fn(usize) -> &'a [f16],
    tiled: bool,
    scale: f32,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let hd = q.len();
    let (dot, lanes): (DotF16, usize) = if tiled {
        (dot_f16_tiled, LANES)
    } else {
        (dot_f16, ROW_LANES)
    };
    let Scratch {
        q: qh,
        scores,
        partial,
    } = scratch;
    // The query head, at the precision it meets f16 keys.
    qh.clear();
    qh.extend_from_slice(q);
    f16_round_slice(qh);
    scores.clear();
    scores.extend((0..n_keys).map(|j| dot(qh, key(j))));
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
        axpy_f16(w, value(j), lane);
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

    /// Two query heads per KV head, in blocks scattered over the pool,
    /// positions added one by one and then in a batch: each output is
    /// causal attention over the positions up to its own, within f16
    /// rounding of plain f32 arithmetic.
    #[test]
    fn grouped_causal_attention_over_scattered_blocks_matches_f32() {
        let (n_layer, n_kv, n_head, hd) = (2, 2, 4, 8);
        let row = n_kv * hd;
        let total = 2 * BLOCK_TOKENS + 5;
        let k: Vec<f32> = (0..total * row).map(value).collect();
        let v: Vec<f32> = (0..total * row).map(|i| value(i + 13)).collect();
        let q: Vec<f32> = (0..total * n_head * hd).map(|i| value(i + 29)).collect();
        let mut pool = KvPool::new(n_layer, n_kv, hd, 6);
        let table = [4, 1, 3];
        let mut got = vec![0.0; q.len()];
        let width = n_head * hd;
        // Positions 0..3 one at a time, then the rest in one batch.
        for (from, to) in [(0, 1), (1, 2), (2, 3), (3, total)] {
            for layer in 0..n_layer {
                for p in from..to {
                    let r = p * row..(p + 1) * row;
                    pool.write(&table, layer, p, &k[r.clone()], &v[r]).unwrap();
                }
            }
            let seq = SeqQueries {
                table: &table,
                pos: from,
                rows: to - from,
                tiled_below: if to - from > 1 { to } else { 0 },
            };
            paged_attention(
                &pool,
                1,
                &[seq],
                &q[from * width..to * width],
                n_head,
                &mut got[from * width..to * width],
            )
            .unwrap();
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

    /// Rows of several sequences in one call give, bit for bit, what each
    /// sequence's rows give alone: batching never changes an answer.
    #[test]
    fn a_batch_of_sequences_equals_each_alone() {
        let (n_layer, n_kv, n_head, hd) = (1, 1, 2, 8);
        let row = n_kv * hd;
        let width = n_head * hd;
        let mut pool = KvPool::new(n_layer, n_kv, hd, 8);
        let tables: [&[u32]; 3] = [&[0, 5], &[2], &[7, 1, 3]];
        let lens = [20, 3, 40];
        for (t, (&table, &len)) in tables.iter().zip(&lens).enumerate() {
            for p in 0..len {
                let kv: Vec<f32> = (0..row).map(|i| value(i + 31 * p + 977 * t)).collect();
                pool.write(table, 0, p, &kv, &kv).unwrap();
            }
        }
        // Sequence 0 decodes its last position, 1 runs its whole prompt,
        // 2 a chunk of its prompt.
        let seqs = [
            SeqQueries {
                table: tables[0],
                pos: 19,
                rows: 1,
                tiled_below: 10,
            },
            SeqQueries {
                table: tables[1],
                pos: 0,
                rows: 3,
                tiled_below: 3,
            },
            SeqQueries {
                table: tables[2],
                pos: 30,
                rows: 10,
                tiled_below: 40,
            },
        ];
        let rows: usize = seqs.iter().map(|s| s.rows).sum();
        let q: Vec<f32> = (0..rows * width).map(|i| value(i + 7)).collect();
        let mut together = vec![0.0; q.len()];
        paged_attention(&pool, 0, &seqs, &q, n_head, &mut together).unwrap();
        let mut at = 0;
        for s in seqs {
            let n = s.rows * width;
            let mut alone = vec![0.0; n];
            paged_attention(&pool, 0, &[s], &q[at..at + n], n_head, &mut alone).unwrap();
            assert_eq!(alone, together[at..at + n]);
            at += n;
        }
    }

    #[test]
    fn the_pool_refuses_misuse() {
        let mut pool = KvPool::new(1, 1, 2, 2);
        let row = [0.0; 2];
        assert!(
            pool.write(&[0], 0, BLOCK_TOKENS, &row, &row).is_err(),
            "past the table"
        );
        assert!(pool.write(&[2], 0, 0, &row, &row).is_err(), "no block 2");
        assert!(pool.write(&[0], 1, 0, &row, &row).is_err(), "no layer 1");
        assert!(
            pool.write(&[0], 0, 0, &[0.0; 3], &[0.0; 3]).is_err(),
            "not a row"
        );
        pool.write(&[1], 0, 0, &row, &row).unwrap();
        let mut out = [0.0; 4];
        let seq = |rows| SeqQueries {
            table: &[1],
            pos: 0,
            rows,
            tiled_below: 0,
        };
        assert!(
            paged_attention(&pool, 1, &[seq(1)], &[0.0; 4], 2, &mut out).is_err(),
            "no layer 1"
        );
        assert!(paged_attention(&pool, 0, &[seq(1)], &[0.0; 4], 2, &mut out).is_ok());
        assert!(
            paged_attention(&pool, 0, &[seq(2)], &[0.0; 4], 2, &mut out).is_err(),
            "2 rows, 1 row of queries"
        );
        let far = SeqQueries {
            table: &[1],
            pos: BLOCK_TOKENS,
            rows: 1,
            tiled_below: 0,
        };
        assert!(
            paged_attention(&pool, 0, &[far], &[0.0; 4], 2, &mut out).is_err(),
            "past the table"
        );
    }
}
