//! The llama forward pass on the CPU, on plain f32 buffers and our own
//! kernels (`securechat-kernels`), when every weight is in a block format
//! they multiply (Q4_1, Q8_0: the default model).
//!
//! Why not candle ops here: at 135M parameters a decode step is ~25 small
//! ops per layer, and candle allocates a tensor and dispatches for each; on
//! two cores that overhead was as large as a third of the step. Here a step
//! is a handful of loops over buffers allocated once per call, attention
//! reads an f16 cache in place, and only the matmuls go to the thread pool.
//! The rounding follows llama.cpp's CPU backend (see `securechat_kernels`'
//! `ops` and `attention`), so greedy output is comparable with it.
//!
//! A step runs any number of sequences at once (continuous batching): their
//! rows are stacked, so each matmul reads its weights once for all of them,
//! and each sequence's keys and values live in blocks of a shared pool
//! ([`KvPool`]) listed in its block table. Every operation treats rows
//! independently and attention sums a row by its position (prompt or
//! generated), so a sequence's numbers do not depend on its batch.

use std::sync::Arc;

use securechat_kernels::QMatrix;
use securechat_kernels::attention::{BLOCK_TOKENS, KvPool, SeqQueries, paged_attention};
use securechat_kernels::ops::{add_assign, rms_norm, rope, rope_angles, rope_halves, silu_mul};

use super::config::LlamaConfig;
use super::weights::Weights;
use crate::inference::error::{InferenceError, Result};
use crate::inference::model::{PagedLm, RopeVariant, SeqStep};

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V rows stacked: one matmul.
    qkv: Arc<QMatrix>,
    wo: Arc<QMatrix>,
    ffn_norm: Vec<f32>,
    /// Gate and up rows stacked: one matmul.
    gate_up: Arc<QMatrix>,
    down: Arc<QMatrix>,
}

pub struct CpuLlama {
    config: LlamaConfig,
    embedding: Arc<QMatrix>,
    output: Arc<QMatrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    pool: KvPool,
    /// The one sequence [`Self::forward_chunk`] runs (the single-sequence
    /// API): the pool's first blocks, and how many positions it holds.
    single_table: Vec<u32>,
    single_len: usize,
}

impl CpuLlama {
    /// The model on our kernels, or `None` when some weight is in a format
    /// (or on a device) they do not cover.
    pub fn new(config: &LlamaConfig, weights: &Weights) -> Result<Option<Self>> {
        let (Some(embedding), Some(output)) = (weights.embedding.kernel(), weights.output.kernel())
        else {
            return Ok(None);
        };
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            let (Some(qkv), Some(wo), Some(gate_up), Some(down)) = (
                l.qkv.kernel(),
                l.wo.kernel(),
                l.gate_up.kernel(),
                l.w_down.kernel(),
            ) else {
                return Ok(None);
            };
            layers.push(Layer {
                attn_norm: l.attn_norm.to_vec1()?,
                qkv: qkv.clone(),
                wo: wo.clone(),
                ffn_norm: l.ffn_norm.to_vec1()?,
                gate_up: gate_up.clone(),
                down: down.clone(),
            });
        }
        let c = config;
        let (q, kv) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        // Every layer's MLP has the width of the first: the step's buffers
        // are sized once.
        let ffn = layers.first().map_or(0, |l| l.down.cols());
        let shapes_fit = layers.iter().all(|l| {
            l.qkv.rows() == q + 2 * kv
                && l.qkv.cols() == c.hidden
                && l.wo.rows() == c.hidden
                && l.wo.cols() == q
                && l.down.cols() == ffn
                && l.gate_up.rows() == 2 * ffn
                && l.down.rows() == c.hidden
                && l.attn_norm.len() == c.hidden
                && l.ffn_norm.len() == c.hidden
        });
        if !shapes_fit || embedding.cols() != c.hidden || output.cols() != c.hidden {
            return Err(InferenceError::Metadata(
                "weight shapes do not match the model's heads and widths".into(),
            ));
        }
        Ok(Some(Self {
            config: config.clone(),
            embedding: embedding.clone(),
            output: output.clone(),
            output_norm: weights.output_norm.to_vec1()?,
            layers,
            pool: KvPool::new(c.n_layer, c.n_kv_head, c.head_dim, context_blocks(c)),
            single_table: (0..context_blocks(c) as u32).collect(),
            single_len: 0,
        }))
    }

    pub fn clear(&mut self) {
        self.single_len = 0;
    }

    /// Runs one chunk of the single sequence at `pos..pos + tokens.len()`;
    /// returns the last position's logits when asked. A chunk of several
    /// tokens sums attention as a prompt, one token as a decode step.
    pub fn forward_chunk(
        &mut self,
        tokens: &[u32],
        pos: usize,
        want_logits: bool,
    ) -> Result<Option<Vec<f32>>> {
        if pos != self.single_len {
            return Err(InferenceError::Unsupported(format!(
                "position {pos} does not follow the {} cached positions",
                self.single_len
            )));
        }
        let table = std::mem::take(&mut self.single_table);
        let step = SeqStep {
            tokens,
            pos,
            blocks: &table,
            tiled_below: if tokens.len() > 1 {
                pos + tokens.len()
            } else {
                0
            },
            logits: want_logits,
        };
        let out = self.run(&[step]);
        self.single_table = table;
        let mut logits = out?;
        self.single_len = pos + tokens.len();
        Ok(logits.pop())
    }

    /// One forward pass over every sequence of `batch`; the logits of
    /// those that ask, in order.
    fn run(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (hidden, hd) = (c.hidden, c.head_dim);
        let (q_width, kv_width) = (c.n_head * hd, c.n_kv_head * hd);
        let qkv_width = q_width + 2 * kv_width;
        let rows: usize = batch.iter().map(|s| s.tokens.len()).sum();
        if rows == 0 {
            return Ok(Vec::new());
        }
        // Each row's position, for the rotary angles and the cache.
        let mut positions = Vec::with_capacity(rows);
        let mut seqs = Vec::with_capacity(batch.len());
        for s in batch {
            let end = s.pos + s.tokens.len();
            if s.tokens.is_empty() || end > c.context_length {
                return Err(InferenceError::Unsupported(format!(
                    "{} tokens at position {} in a context of {}",
                    s.tokens.len(),
                    s.pos,
                    c.context_length
                )));
            }
            if s.blocks.len() * BLOCK_TOKENS < end {
                return Err(InferenceError::Unsupported(format!(
                    "{} blocks hold fewer than {end} positions",
                    s.blocks.len()
                )));
            }
            positions.extend(s.pos..end);
            seqs.push(SeqQueries {
                table: s.blocks,
                pos: s.pos,
                rows: s.tokens.len(),
                tiled_below: s.tiled_below,
            });
        }
        // Each row's sequence, to find its block table.
        let row_seq: Vec<usize> = batch
            .iter()
            .enumerate()
            .flat_map(|(i, s)| std::iter::repeat_n(i, s.tokens.len()))
            .collect();

        let mut x = vec![0f32; rows * hidden];
        let tokens = batch.iter().flat_map(|s| s.tokens.iter());
        for (&id, row) in tokens.zip(x.chunks_exact_mut(hidden)) {
            if id as usize >= self.embedding.rows() {
                return Err(InferenceError::Unsupported(format!(
                    "token id {id} outside the {} embeddings",
                    self.embedding.rows()
                )));
            }
            self.embedding.dequantize_row(id as usize, row);
        }
        // Rotary angles of each row's position, shared by every layer.
        let half = hd / 2;
        let mut cos = vec![0f32; rows * half];
        let mut sin = vec![0f32; rows * half];
        for ((c_row, s_row), &p) in cos
            .chunks_exact_mut(half)
            .zip(sin.chunks_exact_mut(half))
            .zip(&positions)
        {
            rope_angles(p, c.rope_base, c_row, s_row);
        }

        let rope = match c.rope {
            RopeVariant::Interleaved => rope,
            RopeVariant::Halves => rope_halves,
        };
        let mut h = vec![0f32; rows * hidden];
        let mut qkv = vec![0f32; rows * qkv_width];
        let mut q = vec![0f32; rows * q_width];
        let mut k = vec![0f32; kv_width];
        let mut y = vec![0f32; rows * q_width];
        let mut o = vec![0f32; rows * hidden];
        let ffn = self.layers.first().map_or(0, |l| l.down.cols());
        let mut gate_up = vec![0f32; rows * 2 * ffn];
        let mut act = vec![0f32; rows * ffn];
        for (i, l) in self.layers.iter().enumerate() {
            rms_norm(&x, &l.attn_norm, c.rms_eps, &mut h);
            l.qkv.matmul(&h, &mut qkv)?;
            for r in 0..rows {
                let row = &qkv[r * qkv_width..(r + 1) * qkv_width];
                let (qs, rest) = row.split_at(q_width);
                let (ks, vs) = rest.split_at(kv_width);
                let (c_row, s_row) = (
                    &cos[r * half..(r + 1) * half],
                    &sin[r * half..(r + 1) * half],
                );
                let q_row = &mut q[r * q_width..(r + 1) * q_width];
                q_row.copy_from_slice(qs);
                rope(q_row, c_row, s_row);
                k.copy_from_slice(ks);
                rope(&mut k, c_row, s_row);
                let table = batch[row_seq[r]].blocks;
                self.pool.write(table, i, positions[r], &k, vs)?;
            }
            paged_attention(&self.pool, i, &seqs, &q, c.n_head, &mut y)?;
            l.wo.matmul(&y, &mut o)?;
            add_assign(&mut x, &o);

            rms_norm(&x, &l.ffn_norm, c.rms_eps, &mut h);
            l.gate_up.matmul(&h, &mut gate_up)?;
            silu_mul(&gate_up, &mut act, ffn);
            l.down.matmul(&act, &mut o)?;
            add_assign(&mut x, &o);
        }
        // Only each asking sequence's last row goes through the output
        // projection, all of them in one matmul: the 49k-row table is read
        // once per step, not once per sequence.
        let mut last = Vec::new();
        let mut end = 0;
        for s in batch {
            end += s.tokens.len();
            if s.logits {
                last.extend_from_slice(&x[(end - 1) * hidden..end * hidden]);
            }
        }
        let n = last.len() / hidden;
        if n == 0 {
            return Ok(Vec::new());
        }
        rms_norm(&last, &self.output_norm, c.rms_eps, &mut h[..n * hidden]);
        let vocab = self.output.rows();
        let mut logits = vec![0f32; n * vocab];
        self.output.matmul(&h[..n * hidden], &mut logits)?;
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }
}

/// Blocks that hold one whole context.
fn context_blocks(c: &LlamaConfig) -> usize {
    c.context_length.div_ceil(BLOCK_TOKENS)
}

impl PagedLm for CpuLlama {
    fn bytes_per_token(&self) -> usize {
        let c = &self.config;
        KvPool::bytes_per_token(c.n_layer, c.n_kv_head, c.head_dim)
    }

    fn allocate_pool(&mut self, blocks: usize) -> Result<()> {
        let c = &self.config;
        // The single-sequence API keeps its blocks at the pool's start.
        let blocks = blocks.max(context_blocks(c));
        self.pool = KvPool::new(c.n_layer, c.n_kv_head, c.head_dim, blocks);
        self.single_len = 0;
        Ok(())
    }

    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>> {
        securechat_kernels::on_pool(|| self.run(batch))
    }
}
