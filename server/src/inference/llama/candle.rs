//! The llama forward pass on candle ops: for GPUs, block formats our
//! kernels do not multiply, and the candle-kernel reference. Written here
//! rather than with candle-transformers' `quantized_llama` for speed: an
//! in-place KV cache, grouped-query attention without repeating K/V, and
//! only the last position through the output projection.
//!
//! It also runs many sequences per step ([`PagedLm`]), as the CPU pass on
//! our kernels does: their rows are stacked so that every projection reads
//! its weights once for all of them (on a GPU the step costs about what
//! one sequence's does until the matmuls stop being bound by reading the
//! weights), and each sequence's keys and values live in blocks of a
//! shared pool named by its block table. Attention runs per sequence over
//! the rows gathered from its blocks.

use candle_core::{DType, Device, Module, Tensor};

use super::config::LlamaConfig;
use super::weights::Weights;
use crate::inference::candle_pool::{KvPool, asking_rows, attend};
use crate::inference::error::Result;
use crate::inference::kv_cache::CandleKvCache;
use crate::inference::model::{PagedLm, RopeVariant, SeqStep};

/// The forward pass on candle ops.
pub(super) struct CandleLlama {
    config: LlamaConfig,
    weights: Weights,
    cos: Tensor,
    sin: Tensor,
    /// The single-sequence API's cache ([`Self::forward_chunk`]).
    pub(super) cache: CandleKvCache,
    /// The batched step's pool, f32. Empty until
    /// [`PagedLm::allocate_pool`].
    pool: KvPool,
    device: Device,
}

impl CandleLlama {
    pub(super) fn new(
        config: &LlamaConfig,
        weights: Weights,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let (cos, sin) = rope_tables(config, device)?;
        let cache = CandleKvCache::new(
            config.n_layer,
            config.n_kv_head,
            config.head_dim,
            config.context_length,
            device,
        );
        Ok(Self {
            config: config.clone(),
            weights,
            cos,
            sin,
            cache,
            pool: KvPool::empty(),
            device: device.clone(),
        })
    }

    fn attention(
        &mut self,
        c: &LlamaConfig,
        index: usize,
        x: &Tensor,
        pos: usize,
    ) -> candle_core::Result<Tensor> {
        let layer = &self.weights.layers[index];
        let seq = x.dim(0)?;
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            // [seq, n*hd] -> [1, n, seq, hd], contiguous for rope.
            t.reshape((seq, n, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)
        };
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        let [q, k, v]: [Tensor; 3] =
            layer.qkv.forward(x)?.try_into().map_err(|_| {
                candle_core::Error::Msg("QKV projection must give 3 outputs".into())
            })?;
        let rope = match c.rope {
            RopeVariant::Interleaved => candle_nn::rotary_emb::rope_i,
            RopeVariant::Halves => candle_nn::rotary_emb::rope,
        };
        let q = rope(&heads(q, c.n_head)?, &cos, &sin)?;
        let k = rope(&heads(k, c.n_kv_head)?, &cos, &sin)?;
        let v = heads(v, c.n_kv_head)?;
        let (k, v) = self.cache.append(index, &k.squeeze(0)?, &v.squeeze(0)?)?;
        let y = attend(&q, &k, &v, pos)?;
        layer.wo.forward(&y)
    }

    /// Runs one chunk; returns the last position's logits when asked.
    pub(super) fn forward_chunk(
        &mut self,
        c: &LlamaConfig,
        tokens: &[u32],
        pos: usize,
        want_logits: bool,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let seq = tokens.len();
        if pos != self.cache.len() {
            candle_core::bail!(
                "position {pos} does not follow the {} cached positions",
                self.cache.len()
            );
        }
        self.cache.reserve(seq)?;
        let mut x = self.weights.embedding.embedding(tokens)?; // [seq, hidden]
        let eps = c.rms_eps;
        for i in 0..self.weights.layers.len() {
            let h = candle_nn::ops::rms_norm(&x, &self.weights.layers[i].attn_norm, eps)?;
            x = (x + self.attention(c, i, &h, pos)?)?;
            let layer = &self.weights.layers[i];
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let [gate, up]: [Tensor; 2] = layer.gate_up.forward(&h)?.try_into().map_err(|_| {
                candle_core::Error::Msg("gate/up projection must give 2 outputs".into())
            })?;
            x = (x + layer
                .w_down
                .forward(&(candle_nn::ops::silu(&gate)? * up)?)?)?;
        }
        self.cache.advance(seq);
        if !want_logits {
            return Ok(None);
        }
        // Only the last position's logits are needed to pick the next token.
        let last = x.narrow(0, seq - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.weights.output_norm, eps)?;
        let logits = self
            .weights
            .output
            .forward(&last)?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        Ok(Some(logits.to_vec1()?))
    }
}

impl CandleLlama {
    /// One forward pass over every sequence of `batch` (see the module
    /// comment); the logits of those that ask, in order.
    fn run(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>> {
        let c = self.config.clone();
        self.pool.check(batch, c.context_length)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let mut x = self.weights.embedding.embedding(&ids)?; // [rows, hidden]
        let eps = c.rms_eps;
        for i in 0..self.weights.layers.len() {
            let h = candle_nn::ops::rms_norm(&x, &self.weights.layers[i].attn_norm, eps)?;
            x = (x + self.batched_attention(&c, i, &h, batch)?)?;
            let layer = &self.weights.layers[i];
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let [gate, up]: [Tensor; 2] = layer.gate_up.forward(&h)?.try_into().map_err(|_| {
                candle_core::Error::Msg("gate/up projection must give 2 outputs".into())
            })?;
            x = (x + layer
                .w_down
                .forward(&(candle_nn::ops::silu(&gate)? * up)?)?)?;
        }
        let Some(last) = asking_rows(&x, batch)? else {
            return Ok(Vec::new());
        };
        let last = candle_nn::ops::rms_norm(&last, &self.weights.output_norm, eps)?;
        let logits = self.weights.output.forward(&last)?.to_dtype(DType::F32)?;
        Ok(logits.to_vec2()?)
    }

    /// Attention of layer `index` for the stacked rows `x` of `batch`:
    /// projections for all rows at once, then per sequence its new keys
    /// and values written to its slots and its queries against every slot
    /// it has so far.
    fn batched_attention(
        &self,
        c: &LlamaConfig,
        index: usize,
        x: &Tensor,
        batch: &[SeqStep<'_>],
    ) -> candle_core::Result<Tensor> {
        let layer = &self.weights.layers[index];
        let [q, k, v]: [Tensor; 3] =
            layer.qkv.forward(x)?.try_into().map_err(|_| {
                candle_core::Error::Msg("QKV projection must give 3 outputs".into())
            })?;
        let rope = match c.rope {
            RopeVariant::Interleaved => candle_nn::rotary_emb::rope_i,
            RopeVariant::Halves => candle_nn::rotary_emb::rope,
        };
        let mut ys = Vec::with_capacity(batch.len());
        let mut row = 0;
        for s in batch {
            let seq = s.tokens.len();
            let heads = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
                // [seq, n*hd] -> [1, n, seq, hd], contiguous for rope.
                t.narrow(0, row, seq)?
                    .reshape((seq, n, c.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?
                    .unsqueeze(0)
            };
            let cos = self.cos.narrow(0, s.pos, seq)?;
            let sin = self.sin.narrow(0, s.pos, seq)?;
            let q = rope(&heads(&q, c.n_head)?, &cos, &sin)?;
            // Back to [seq, n_kv, hd]: the pool's row layout.
            let k_rows = rope(&heads(&k, c.n_kv_head)?, &cos, &sin)?
                .squeeze(0)?
                .transpose(0, 1)?
                .contiguous()?;
            let v_rows = v
                .narrow(0, row, seq)?
                .reshape((seq, c.n_kv_head, c.head_dim))?
                .contiguous()?;
            let (keys, values) = self.pool.write_and_gather(index, s, &k_rows, &v_rows)?;
            ys.push(attend(&q, &keys, &values, s.pos)?);
            row += seq;
        }
        layer.wo.forward(&Tensor::cat(&ys, 0)?)
    }
}

impl PagedLm for CandleLlama {
    fn bytes_per_token(&self) -> usize {
        let c = &self.config;
        KvPool::bytes_per_token(c.n_layer, c.n_kv_head, c.head_dim, DType::F32)
    }

    fn allocate_pool(&mut self, blocks: usize) -> Result<()> {
        let c = &self.config;
        // Freed first: the old pool and the new one need not fit together.
        self.pool = KvPool::empty();
        self.pool = KvPool::allocate(
            c.n_layer,
            blocks,
            c.n_kv_head,
            c.head_dim,
            DType::F32,
            &self.device,
        )?;
        Ok(())
    }

    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>> {
        self.run(batch)
    }
}

/// cos/sin of the rotary angles for every position of the context, `[ctx, hd/2]`.
fn rope_tables(c: &LlamaConfig, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let inv_freq: Vec<f32> = (0..c.head_dim)
        .step_by(2)
        .map(|i| 1.0 / c.rope_base.powf(i as f32 / c.head_dim as f32))
        .collect();
    let inv_freq = Tensor::new(inv_freq.as_slice(), device)?.unsqueeze(0)?;
    let positions = Tensor::arange(0u32, c.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .unsqueeze(1)?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}
