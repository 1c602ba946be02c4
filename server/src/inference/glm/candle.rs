//! The GLM forward pass (ChatGLM3 and GLM-4 share the architecture) on
//! candle ops, in the checkpoint's dtype, batched like llama's
//! (`llama/candle.rs`): the rows of every running sequence are stacked so
//! that each projection reads its weights once per step, and each
//! sequence's keys and values live in the blocks of the shared pool its
//! block table names. candle-transformers' `glm4` keeps one sequence's
//! cache inside the model, so it cannot batch; it stays the reference this
//! pass is tested against (`tests/inference_glm.rs`).
//!
//! The architecture, as in THUDM's `modeling_chatglm.py`: RMSNorm (or
//! LayerNorm when `rmsnorm` is false); one QKV projection with bias;
//! grouped attention over `multi_query_group_num` key/value heads; rotary
//! embeddings on the first half of each head's dimensions, neighbours
//! paired, base 10,000 × `rope_ratio`; a SwiGLU MLP whose gate and up
//! halves are one matrix.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use candle_transformers::models::glm4::Config;
use securechat_kernels::attention::BLOCK_TOKENS;

use crate::inference::candle_pool::{KvPool, asking_rows, attend};
use crate::inference::error::{InferenceError, Result};
use crate::inference::model::SeqStep;

/// The dimensions a step needs, read once from `config.json`.
#[derive(Debug, Clone)]
struct Shape {
    n_layer: usize,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    /// Dimensions of a head that rotate: the first half.
    rotary_dim: usize,
    ffn: usize,
    context_length: usize,
    /// `apply_residual_connection_post_layernorm`: the residual is the
    /// normed input instead of the input.
    residual_after_norm: bool,
}

struct Layer {
    input_norm: LayerNorm,
    qkv: Linear,
    dense: Linear,
    post_attention_norm: LayerNorm,
    /// Gate and up, `[2 * ffn, hidden]`.
    gate_up: Linear,
    down: Linear,
}

pub(super) struct CandleGlm {
    shape: Shape,
    /// `[vocab, hidden]`.
    embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: Option<LayerNorm>,
    output: Linear,
    /// cos/sin of the rotary angles, `[context, rotary_dim / 2]`, in the
    /// weights' dtype (computed in f32).
    cos: Tensor,
    sin: Tensor,
    /// The scheduler's pool. Empty until [`Self::allocate_pool`].
    pool: KvPool,
    /// The single-sequence API's pool (one context's worth, its blocks in
    /// order), allocated by its first call: serving never makes one.
    solo: KvPool,
    dtype: DType,
    device: Device,
}

impl CandleGlm {
    pub(super) fn load(c: &Config, vb: VarBuilder) -> Result<Self> {
        if c.fp32_residual_connection {
            return Err(InferenceError::Unsupported(
                "GLM config with fp32_residual_connection".into(),
            ));
        }
        let n_head = c.num_attention_heads;
        let n_kv_head = if c.multi_query_attention {
            c.multi_query_group_num
        } else {
            n_head
        };
        let head_dim = c.kv_channels;
        if n_head == 0
            || n_kv_head == 0
            || !n_head.is_multiple_of(n_kv_head)
            || !head_dim.is_multiple_of(4)
        {
            return Err(InferenceError::Metadata(format!(
                "config.json: {n_head} heads in {n_kv_head} groups of dimension {head_dim}"
            )));
        }
        let shape = Shape {
            n_layer: c.num_layers,
            n_head,
            n_kv_head,
            head_dim,
            rotary_dim: head_dim / 2,
            ffn: c.ffn_hidden_size,
            context_length: c.seq_length,
            residual_after_norm: c.apply_residual_connection_post_layernorm,
        };
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let hidden = c.hidden_size;
        let norm = |vb: VarBuilder| -> candle_core::Result<LayerNorm> {
            if c.rmsnorm {
                Ok(candle_nn::rms_norm(hidden, c.layernorm_epsilon, vb)?.into_inner())
            } else {
                candle_nn::layer_norm(hidden, c.layernorm_epsilon, vb)
            }
        };
        let vb = vb.pp("transformer");
        let embedding = vb
            .pp("embedding")
            .pp("word_embeddings")
            .get((c.padded_vocab_size, hidden), "weight")?;
        let qkv_out = (n_head + 2 * n_kv_head) * head_dim;
        let layers = (0..c.num_layers)
            .map(|i| -> candle_core::Result<Layer> {
                let vb = vb.pp("encoder").pp("layers").pp(i);
                let attn = vb.pp("self_attention");
                let mlp = vb.pp("mlp");
                let bias = c.add_bias_linear;
                Ok(Layer {
                    input_norm: norm(vb.pp("input_layernorm"))?,
                    qkv: candle_nn::linear_b(
                        hidden,
                        qkv_out,
                        bias || c.add_qkv_bias,
                        attn.pp("query_key_value"),
                    )?,
                    dense: candle_nn::linear_b(n_head * head_dim, hidden, bias, attn.pp("dense"))?,
                    post_attention_norm: norm(vb.pp("post_attention_layernorm"))?,
                    gate_up: candle_nn::linear_b(
                        hidden,
                        2 * c.ffn_hidden_size,
                        bias,
                        mlp.pp("dense_h_to_4h"),
                    )?,
                    down: candle_nn::linear_b(
                        c.ffn_hidden_size,
                        hidden,
                        bias,
                        mlp.pp("dense_4h_to_h"),
                    )?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        let final_norm = if c.post_layer_norm {
            Some(norm(vb.pp("encoder").pp("final_layernorm"))?)
        } else {
            None
        };
        let output =
            candle_nn::linear_b(hidden, c.padded_vocab_size, false, vb.pp("output_layer"))?;
        let base = 10_000.0 * c.rope_ratio as f64;
        let (cos, sin) = rope_tables(shape.rotary_dim, base, shape.context_length, &device)?;
        Ok(Self {
            shape,
            embedding,
            layers,
            final_norm,
            output,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            pool: KvPool::empty(),
            solo: KvPool::empty(),
            dtype,
            device,
        })
    }

    pub(super) fn context_length(&self) -> usize {
        self.shape.context_length
    }

    pub(super) fn bytes_per_token(&self) -> usize {
        let s = &self.shape;
        KvPool::bytes_per_token(s.n_layer, s.n_kv_head, s.head_dim, self.dtype)
    }

    fn new_pool(&self, blocks: usize) -> candle_core::Result<KvPool> {
        let s = &self.shape;
        KvPool::allocate(
            s.n_layer,
            blocks,
            s.n_kv_head,
            s.head_dim,
            self.dtype,
            &self.device,
        )
    }

    pub(super) fn allocate_pool(&mut self, blocks: usize) -> Result<()> {
        // Freed first: the old pool and the new one need not fit together.
        self.pool = KvPool::empty();
        self.pool = self.new_pool(blocks)?;
        Ok(())
    }

    /// A batched step in the scheduler's pool.
    pub(super) fn step(&self, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>> {
        self.run(&self.pool, batch)
    }

    /// A step of the single-sequence API in a pool of its own, one
    /// context's worth ([`Self::solo_blocks`], in order), made on the
    /// first call.
    pub(super) fn solo_step(&mut self, step: SeqStep<'_>) -> Result<Vec<f32>> {
        if !self.solo.is_allocated() {
            self.solo = self.new_pool(self.solo_blocks())?;
        }
        let mut logits = self.run(&self.solo, &[step])?;
        logits
            .pop()
            .ok_or_else(|| InferenceError::Tensor(candle_core::Error::Msg("no logits".into())))
    }

    /// Blocks of one context.
    pub(super) fn solo_blocks(&self) -> usize {
        self.shape.context_length.div_ceil(BLOCK_TOKENS)
    }

    /// One forward pass over every sequence of `batch` in `pool`; the
    /// logits of those that ask, in order.
    fn run(&self, pool: &KvPool, batch: &[SeqStep<'_>]) -> Result<Vec<Vec<f32>>> {
        pool.check(batch, self.shape.context_length)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let mut x = self.embedding.index_select(&ids, 0)?; // [rows, hidden]
        let ffn = self.shape.ffn;
        for (index, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(&x)?;
            let attention = self.attention(pool, index, &h, batch)?;
            let residual = if self.shape.residual_after_norm {
                &h
            } else {
                &x
            };
            let x1 = (residual + attention)?;
            let h = layer.post_attention_norm.forward(&x1)?;
            let gate_up = layer.gate_up.forward(&h)?;
            let gate = gate_up.narrow(D::Minus1, 0, ffn)?;
            let up = gate_up.narrow(D::Minus1, ffn, ffn)?;
            let mlp = layer.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)?;
            let residual = if self.shape.residual_after_norm {
                &h
            } else {
                &x1
            };
            x = (residual + mlp)?;
        }
        let Some(mut last) = asking_rows(&x, batch)? else {
            return Ok(Vec::new());
        };
        if let Some(norm) = &self.final_norm {
            last = norm.forward(&last)?;
        }
        let logits = self.output.forward(&last)?.to_dtype(DType::F32)?;
        Ok(logits.to_vec2()?)
    }

    /// Attention of layer `index` for the stacked rows `x` of `batch`: the
    /// projection for all rows at once, then per sequence its new keys and
    /// values written to its slots and its queries against every slot it
    /// has so far ([`attend`]: scores and softmax in f32, as the configs'
    /// own `attention_softmax_in_fp32` says).
    fn attention(
        &self,
        pool: &KvPool,
        index: usize,
        x: &Tensor,
        batch: &[SeqStep<'_>],
    ) -> candle_core::Result<Tensor> {
        let Shape {
            n_head,
            n_kv_head,
            head_dim,
            ..
        } = self.shape;
        let qkv = self.layers[index].qkv.forward(x)?;
        let q = qkv.narrow(D::Minus1, 0, n_head * head_dim)?;
        let k = qkv.narrow(D::Minus1, n_head * head_dim, n_kv_head * head_dim)?;
        let v = qkv.narrow(
            D::Minus1,
            (n_head + n_kv_head) * head_dim,
            n_kv_head * head_dim,
        )?;
        let mut ys = Vec::with_capacity(batch.len());
        let mut row = 0;
        for s in batch {
            let seq = s.tokens.len();
            // [seq, n*hd] -> [1, n, seq, hd] with the rotation applied.
            let rotated = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
                let heads = t
                    .narrow(0, row, seq)?
                    .reshape((seq, n, head_dim))?
                    .transpose(0, 1)?
                    .unsqueeze(0)?;
                self.rope(&heads, s.pos, seq)
            };
            let q = rotated(&q, n_head)?;
            // Back to [seq, n_kv, hd]: the pool's row layout.
            let k_rows = rotated(&k, n_kv_head)?
                .squeeze(0)?
                .transpose(0, 1)?
                .contiguous()?;
            let v_rows = v
                .narrow(0, row, seq)?
                .reshape((seq, n_kv_head, head_dim))?
                .contiguous()?;
            let (keys, values) = pool.write_and_gather(index, s, &k_rows, &v_rows)?;
            ys.push(attend(&q, &keys, &values, s.pos)?);
            row += seq;
        }
        self.layers[index].dense.forward(&Tensor::cat(&ys, 0)?)
    }

    /// Rotates the first `rotary_dim` dimensions of `heads`
    /// (`[1, n, seq, hd]`) for positions `pos..pos + seq`, neighbours
    /// paired; the rest pass unchanged.
    fn rope(&self, heads: &Tensor, pos: usize, seq: usize) -> candle_core::Result<Tensor> {
        let (rot, hd) = (self.shape.rotary_dim, self.shape.head_dim);
        let cos = self.cos.narrow(0, pos, seq)?;
        let sin = self.sin.narrow(0, pos, seq)?;
        let turned = candle_nn::rotary_emb::rope_i(
            &heads.narrow(D::Minus1, 0, rot)?.contiguous()?,
            &cos,
            &sin,
        )?;
        Tensor::cat(
            &[turned, heads.narrow(D::Minus1, rot, hd - rot)?],
            D::Minus1,
        )?
        .contiguous()
    }
}

/// cos/sin of the rotary angles of every position, `[context, rot / 2]`:
/// pair `j` turns by `pos / base^(2j / rot)`.
fn rope_tables(
    rot: usize,
    base: f64,
    context: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let inv_freq: Vec<f32> = (0..rot)
        .step_by(2)
        .map(|i| (1.0 / base.powf(i as f64 / rot as f64)) as f32)
        .collect();
    let inv_freq = Tensor::new(inv_freq.as_slice(), device)?.unsqueeze(0)?;
    let positions = Tensor::arange(0u32, context as u32, device)?
        .to_dtype(DType::F32)?
        .unsqueeze(1)?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}
