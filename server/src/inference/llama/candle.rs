//! The llama forward pass on candle ops: for GPUs, block formats our
//! kernels do not multiply, and the candle-kernel reference. Written here
//! rather than with candle-transformers' `quantized_llama` for speed: an
//! in-place KV cache, grouped-query attention without repeating K/V, and
//! only the last position through the output projection.

use candle_core::{DType, Device, Module, Tensor};

use super::config::LlamaConfig;
use super::weights::Weights;
use crate::inference::kv_cache::CandleKvCache;
use crate::inference::model::RopeVariant;

/// The forward pass on candle ops.
pub(super) struct CandleLlama {
    weights: Weights,
    cos: Tensor,
    sin: Tensor,
    pub(super) cache: CandleKvCache,
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
            weights,
            cos,
            sin,
            cache,
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
        let n_rep = c.n_head / c.n_kv_head;

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
        let kv_len = k.dim(1)?;

        // Grouped-query attention without copying K/V per query head: the
        // n_rep query heads sharing a KV head are stacked along the row axis,
        // so one batched matmul per KV head serves them all.
        let q = (q.reshape((c.n_kv_head, n_rep * seq, c.head_dim))?
            * (1.0 / (c.head_dim as f64).sqrt()))?;
        let mut att = q.matmul(&k.t()?)?;
        if seq > 1 {
            att = att.broadcast_add(&causal_mask(n_rep, seq, pos, kv_len, &self.device)?)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?; // [n_kv, n_rep*seq, hd]
        let y = y
            .reshape((c.n_head, seq, c.head_dim))?
            .transpose(0, 1)?
            .reshape((seq, c.hidden))?;
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

/// Additive mask for rows laid out as (repeat, query) pairs: query `s` sits
/// at absolute position `pos + s` and sees keys up to and including it.
fn causal_mask(
    n_rep: usize,
    seq: usize,
    pos: usize,
    kv_len: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut mask = Vec::with_capacity(n_rep * seq * kv_len);
    for _ in 0..n_rep {
        for s in 0..seq {
            mask.extend((0..kv_len).map(|j| if j > pos + s { f32::NEG_INFINITY } else { 0.0 }));
        }
    }
    Tensor::from_vec(mask, (1, n_rep * seq, kv_len), device)
}
