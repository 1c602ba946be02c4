//! What the batched passes on candle ops (llama's in `llama/candle.rs`,
//! GLM's in `glm/candle.rs`) share: the key/value pool (per layer, the keys
//! and values of every slot, `[blocks * BLOCK_TOKENS, n_kv_head,
//! head_dim]`; a sequence's positions live in the blocks its block table
//! names, [`SeqStep::blocks`]), one sequence's attention over what it has
//! in the pool, and the rows a step's logits come from.

use candle_core::{DType, Device, Tensor};
use securechat_kernels::attention::BLOCK_TOKENS;

use crate::inference::error::{InferenceError, Result};
use crate::inference::model::SeqStep;

pub(crate) struct KvPool {
    layers: Vec<(Tensor, Tensor)>,
    slots: usize,
}

impl KvPool {
    /// No slots: every step is refused until [`Self::allocate`].
    pub(crate) fn empty() -> Self {
        Self {
            layers: Vec::new(),
            slots: 0,
        }
    }

    pub(crate) fn is_allocated(&self) -> bool {
        !self.layers.is_empty()
    }

    /// `blocks` blocks for each of `n_layer` layers, zeroed.
    pub(crate) fn allocate(
        n_layer: usize,
        blocks: usize,
        n_kv_head: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let slots = blocks * BLOCK_TOKENS;
        let shape = (slots, n_kv_head, head_dim);
        let layers = (0..n_layer)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, dtype, device)?,
                    Tensor::zeros(shape, dtype, device)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers, slots })
    }

    /// Bytes one position takes across the layers.
    pub(crate) fn bytes_per_token(
        n_layer: usize,
        n_kv_head: usize,
        head_dim: usize,
        dtype: DType,
    ) -> usize {
        n_layer * 2 * n_kv_head * head_dim * dtype.size_in_bytes()
    }

    /// Refuses a batch a step cannot run: an empty sequence, one past the
    /// context, or a block table that does not cover its positions or names
    /// a block outside the pool.
    pub(crate) fn check(&self, batch: &[SeqStep<'_>], context_length: usize) -> Result<()> {
        if !self.is_allocated() {
            return Err(InferenceError::Unsupported(
                "batched step before the key/value pool was allocated".into(),
            ));
        }
        for s in batch {
            let end = s.pos + s.tokens.len();
            if s.tokens.is_empty() || end > context_length {
                return Err(InferenceError::Unsupported(format!(
                    "{} tokens at position {} in a context of {context_length}",
                    s.tokens.len(),
                    s.pos,
                )));
            }
            if s.blocks.len() * BLOCK_TOKENS < end
                || s.blocks
                    .iter()
                    .any(|&b| (b as usize + 1) * BLOCK_TOKENS > self.slots)
            {
                return Err(InferenceError::Unsupported(format!(
                    "a block table of {} blocks cannot hold {end} positions in a pool of {} slots",
                    s.blocks.len(),
                    self.slots
                )));
            }
        }
        Ok(())
    }

    /// Writes `s`'s new keys and values (`[seq, n_kv, hd]` rows, in the
    /// pool's dtype) of layer `layer` to its slots, and returns every key
    /// and value it has so far as `[n_kv, end, hd]`.
    pub(crate) fn write_and_gather(
        &self,
        layer: usize,
        s: &SeqStep<'_>,
        k_rows: &Tensor,
        v_rows: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (pool_k, pool_v) = &self.layers[layer];
        let end = s.pos + s.tokens.len();
        // Runs of positions within one block are contiguous slots.
        let mut p = s.pos;
        while p < end {
            let in_block = p % BLOCK_TOKENS;
            let run = (BLOCK_TOKENS - in_block).min(end - p);
            let slot = s.blocks[p / BLOCK_TOKENS] as usize * BLOCK_TOKENS + in_block;
            pool_k.slice_set(&k_rows.narrow(0, p - s.pos, run)?, 0, slot)?;
            pool_v.slice_set(&v_rows.narrow(0, p - s.pos, run)?, 0, slot)?;
            p += run;
        }
        let slots: Vec<u32> = (0..end)
            .map(|p| s.blocks[p / BLOCK_TOKENS] * BLOCK_TOKENS as u32 + (p % BLOCK_TOKENS) as u32)
            .collect();
        let slots = Tensor::new(slots.as_slice(), pool_k.device())?;
        // [end, n_kv, hd] -> [n_kv, end, hd]
        let gather = |pool: &Tensor| -> candle_core::Result<Tensor> {
            pool.index_select(&slots, 0)?.transpose(0, 1)?.contiguous()
        };
        Ok((gather(pool_k)?, gather(pool_v)?))
    }
}

/// One sequence's attention: its `seq` queries at positions `pos..`
/// (`q`, `[1, n_head, seq, hd]`, rotated) against its keys and values so
/// far (`[n_kv, end, hd]`, as [`KvPool::write_and_gather`] gives them).
/// The query heads sharing a key/value head are stacked along the rows:
/// one batched matmul per group, without repeating K/V. Scores and softmax
/// in f32 whatever the weights' dtype. Returns `[seq, n_head * hd]`.
pub(crate) fn attend(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    pos: usize,
) -> candle_core::Result<Tensor> {
    let (_, n_head, seq, head_dim) = q.dims4()?;
    let (n_kv_head, end, _) = keys.dims3()?;
    let n_rep = n_head / n_kv_head;
    let q = (q.reshape((n_kv_head, n_rep * seq, head_dim))? * (1.0 / (head_dim as f64).sqrt()))?;
    let mut scores = q.matmul(&keys.t()?)?.to_dtype(DType::F32)?;
    if seq > 1 {
        scores = scores.broadcast_add(&causal_mask(n_rep, seq, pos, end, q.device())?)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(values.dtype())?;
    probs
        .matmul(values)? // [n_kv, n_rep * seq, hd]
        .reshape((n_head, seq, head_dim))?
        .transpose(0, 1)?
        .reshape((seq, n_head * head_dim))
}

/// The last row of each sequence of `batch` that asks for logits, stacked
/// (`x` holds the batch's rows in order); `None` when none asks. They go
/// through the output projection together: the vocabulary table is read
/// once per step.
pub(crate) fn asking_rows(
    x: &Tensor,
    batch: &[SeqStep<'_>],
) -> candle_core::Result<Option<Tensor>> {
    let mut last = Vec::new();
    let mut end = 0;
    for s in batch {
        end += s.tokens.len();
        if s.logits {
            last.push(x.narrow(0, end - 1, 1)?);
        }
    }
    if last.is_empty() {
        return Ok(None);
    }
    Tensor::cat(&last, 0).map(Some)
}

/// Additive f32 mask for rows laid out as (repeat, query) pairs: query `s`
/// sits at absolute position `pos + s` and sees keys up to and including it.
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
