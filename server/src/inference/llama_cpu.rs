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

use std::sync::Arc;

use securechat_kernels::QMatrix;
use securechat_kernels::attention::{KvCache, attention};
use securechat_kernels::ops::{add_assign, rms_norm, rope, rope_angles, silu_mul};

use super::error::{InferenceError, Result};
use super::llama_weights::{LlamaConfig, Weights};

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
    cache: KvCache,
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
            cache: KvCache::new(c.n_layer, c.n_kv_head, c.head_dim, c.context_length),
        }))
    }

    pub fn clear(&mut self) {
        self.cache.clear();
    }

    /// Runs one chunk at `pos..pos + tokens.len()`; returns the last
    /// position's logits when asked.
    pub fn forward_chunk(
        &mut self,
        tokens: &[u32],
        pos: usize,
        want_logits: bool,
    ) -> Result<Option<Vec<f32>>> {
        let c = &self.config;
        let seq = tokens.len();
        if pos != self.cache.len() {
            return Err(InferenceError::Unsupported(format!(
                "position {pos} does not follow the {} cached positions",
                self.cache.len()
            )));
        }
        let (hidden, hd) = (c.hidden, c.head_dim);
        let (q_width, kv_width) = (c.n_head * hd, c.n_kv_head * hd);
        let qkv_width = q_width + 2 * kv_width;

        let mut x = vec![0f32; seq * hidden];
        for (&id, row) in tokens.iter().zip(x.chunks_exact_mut(hidden)) {
            if id as usize >= self.embedding.rows() {
                return Err(InferenceError::Unsupported(format!(
                    "token id {id} outside the {} embeddings",
                    self.embedding.rows()
                )));
            }
            self.embedding.dequantize_row(id as usize, row);
        }
        // Rotary angles of this chunk's positions, shared by every layer.
        let half = hd / 2;
        let mut cos = vec![0f32; seq * half];
        let mut sin = vec![0f32; seq * half];
        for (s, (c_row, s_row)) in cos
            .chunks_exact_mut(half)
            .zip(sin.chunks_exact_mut(half))
            .enumerate()
        {
            rope_angles(pos + s, c.rope_base, c_row, s_row);
        }

        let mut h = vec![0f32; seq * hidden];
        let mut qkv = vec![0f32; seq * qkv_width];
        let mut q = vec![0f32; seq * q_width];
        let mut k = vec![0f32; seq * kv_width];
        let mut v = vec![0f32; seq * kv_width];
        let mut y = vec![0f32; seq * q_width];
        let mut o = vec![0f32; seq * hidden];
        let ffn = self.layers.first().map_or(0, |l| l.down.cols());
        let mut gate_up = vec![0f32; seq * 2 * ffn];
        let mut act = vec![0f32; seq * ffn];
        for (i, l) in self.layers.iter().enumerate() {
            rms_norm(&x, &l.attn_norm, c.rms_eps, &mut h);
            l.qkv.matmul(&h, &mut qkv)?;
            for s in 0..seq {
                let row = &qkv[s * qkv_width..(s + 1) * qkv_width];
                let (qs, rest) = row.split_at(q_width);
                let (ks, vs) = rest.split_at(kv_width);
                let (c_row, s_row) = (
                    &cos[s * half..(s + 1) * half],
                    &sin[s * half..(s + 1) * half],
                );
                let q_row = &mut q[s * q_width..(s + 1) * q_width];
                q_row.copy_from_slice(qs);
                rope(q_row, c_row, s_row);
                let k_row = &mut k[s * kv_width..(s + 1) * kv_width];
                k_row.copy_from_slice(ks);
                rope(k_row, c_row, s_row);
                v[s * kv_width..(s + 1) * kv_width].copy_from_slice(vs);
            }
            self.cache.append(i, &k, &v)?;
            attention(&self.cache, i, &q, c.n_head, &mut y)?;
            l.wo.matmul(&y, &mut o)?;
            add_assign(&mut x, &o);

            rms_norm(&x, &l.ffn_norm, c.rms_eps, &mut h);
            l.gate_up.matmul(&h, &mut gate_up)?;
            silu_mul(&gate_up, &mut act, ffn);
            l.down.matmul(&act, &mut o)?;
            add_assign(&mut x, &o);
        }
        self.cache.advance(seq);
        if !want_logits {
            return Ok(None);
        }
        // Only the last position's logits are needed to pick the next token.
        let last = &x[(seq - 1) * hidden..];
        rms_norm(last, &self.output_norm, c.rms_eps, &mut h[..hidden]);
        let mut logits = vec![0f32; self.output.rows()];
        self.output.matmul(&h[..hidden], &mut logits)?;
        Ok(Some(logits))
    }
}
