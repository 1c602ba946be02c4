//! The llama forward pass on the CPU in plain Rust over our quantized
//! kernels, for weights in Q4_1 / Q8_0.
//!
//! A 135M-parameter model spends ~5 ms per token on arithmetic; candle's
//! per-op dispatch and allocation (~25 ops per layer, 30 layers) added
//! milliseconds on top. Here one forward pass allocates a handful of
//! buffers, the KV cache is reserved for the whole context up front (pages
//! are only touched, and counted in RSS, as positions fill), grouped-query
//! attention reads each KV head in place for all its query heads, and the
//! only parallel regions are the matmuls and, for prompts, attention heads.

use rayon::prelude::*;
use securechat_kernels::QMatrix;

use super::error::{InferenceError, Result};
use super::gguf::GgufFile;
use super::llama::{LlamaConfig, WeightFormat, convert};
use super::model::CausalLm;
use super::weights::kernel_matrix;

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: one matmul.
    qkv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// Gate and up stacked: one matmul.
    gate_up: QMatrix,
    down: QMatrix,
    /// `[context, n_kv_head * head_dim]`, position-major.
    k: Vec<f32>,
    v: Vec<f32>,
}

pub struct CpuLlama {
    config: LlamaConfig,
    embedding: QMatrix,
    /// None when the output projection is the embedding table (tied).
    output: Option<QMatrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    /// cos and sin of every position's rotary angles, `[context, head_dim/2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    cached: usize,
}

/// Names of the matrices of layer `i`, in load order.
const MATRICES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

fn kernel(file: &mut GgufFile, name: &str, format: WeightFormat) -> Result<QMatrix> {
    let t = convert(file.tensor(name, &candle_core::Device::Cpu)?, format)?;
    kernel_matrix(&t)?.ok_or_else(|| {
        InferenceError::Unsupported(format!("{name}: {:?} has no CPU kernel", t.dtype()))
    })
}

fn stack(parts: Vec<QMatrix>) -> Result<QMatrix> {
    let ty = parts[0].weight_type();
    let cols = parts[0].cols();
    if parts
        .iter()
        .any(|p| p.weight_type() != ty || p.cols() != cols)
    {
        return Err(InferenceError::Unsupported(
            "projections of one input in different formats".into(),
        ));
    }
    let rows = parts.iter().map(QMatrix::rows).sum();
    let data = parts
        .iter()
        .flat_map(|p| p.data().iter().copied())
        .collect();
    QMatrix::new(ty, rows, cols, data).map_err(|e| InferenceError::Metadata(e.to_string()))
}

fn vector(file: &mut GgufFile, name: &str) -> Result<Vec<f32>> {
    let t = file.tensor(name, &candle_core::Device::Cpu)?;
    Ok(t.dequantize(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1()?)
}

impl CpuLlama {
    /// True when every matrix of the file can run on our kernels in `format`.
    pub fn supports(file: &GgufFile, format: WeightFormat) -> bool {
        use candle_core::quantized::GgmlDType;
        if format == WeightFormat::F32 {
            return false;
        }
        let ok = |name: &str| {
            file.content.tensor_infos.get(name).is_some_and(|t| {
                matches!(t.ggml_dtype, GgmlDType::Q8_0)
                    || (t.ggml_dtype == GgmlDType::Q4_1
                        && t.shape.dims().last().is_some_and(|d| d.is_multiple_of(32)))
            })
        };
        let n_layer = LlamaConfig::from_gguf(file).map_or(0, |c| c.n_layer);
        n_layer > 0
            && ok("token_embd.weight")
            && (!file.has_tensor("output.weight") || ok("output.weight"))
            && (0..n_layer).all(|i| MATRICES.iter().all(|m| ok(&format!("blk.{i}.{m}.weight"))))
    }

    pub fn load(file: &mut GgufFile, format: WeightFormat) -> Result<Self> {
        let config = LlamaConfig::from_gguf(file)?;
        let embedding = kernel(file, "token_embd.weight", format)?;
        let output = if file.has_tensor("output.weight") {
            Some(kernel(file, "output.weight", format)?)
        } else {
            None
        };
        let kv_dim = config.n_kv_head * config.head_dim;
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let mut m = |part: &str| kernel(file, &format!("blk.{i}.{part}.weight"), format);
            let qkv = stack(vec![m("attn_q")?, m("attn_k")?, m("attn_v")?])?;
            let wo = m("attn_output")?;
            let gate_up = stack(vec![m("ffn_gate")?, m("ffn_up")?])?;
            let down = m("ffn_down")?;
            layers.push(Layer {
                attn_norm: vector(file, &format!("blk.{i}.attn_norm.weight"))?,
                ffn_norm: vector(file, &format!("blk.{i}.ffn_norm.weight"))?,
                qkv,
                wo,
                gate_up,
                down,
                // Zeroed allocations are mapped lazily: untouched positions
                // cost address space, not memory.
                k: vec![0.0; config.context_length * kv_dim],
                v: vec![0.0; config.context_length * kv_dim],
            });
        }
        let output_norm = vector(file, "output_norm.weight")?;
        let half = config.head_dim / 2;
        let mut cos = Vec::with_capacity(config.context_length * half);
        let mut sin = Vec::with_capacity(config.context_length * half);
        for p in 0..config.context_length {
            for i in 0..half {
                let freq = 1.0
                    / config
                        .rope_base
                        .powf(2.0 * i as f32 / config.head_dim as f32);
                let angle = p as f32 * freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            config,
            embedding,
            output,
            output_norm,
            layers,
            cos,
            sin,
            cached: 0,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn run(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        let c = &self.config;
        let (seq, hidden, hd) = (tokens.len(), c.hidden, c.head_dim);
        let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
        let ffn = self.layers[0].down.cols();
        let mut x = vec![0f32; seq * hidden];
        for (&id, row) in tokens.iter().zip(x.chunks_exact_mut(hidden)) {
            if id as usize >= self.embedding.rows() {
                return Err(fail(format!("token id {id} is outside the vocabulary")));
            }
            self.embedding.dequantize_row(id as usize, row);
        }
        let mut h = vec![0f32; seq * hidden];
        let mut qkv = vec![0f32; seq * (q_dim + 2 * kv_dim)];
        let mut att = vec![0f32; seq * q_dim];
        let mut proj = vec![0f32; seq * hidden];
        let mut gate_up = vec![0f32; seq * 2 * ffn];
        let mut act = vec![0f32; seq * ffn];
        let kernel_err = |e: securechat_kernels::ShapeError| fail(e.to_string());

        for layer in &mut self.layers {
            rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut h);
            layer.qkv.matmul(&h, &mut qkv).map_err(kernel_err)?;
            for (t, row) in qkv.chunks_exact_mut(q_dim + 2 * kv_dim).enumerate() {
                let p = pos + t;
                let (cos, sin) = (
                    &self.cos[p * hd / 2..(p + 1) * hd / 2],
                    &self.sin[p * hd / 2..(p + 1) * hd / 2],
                );
                let (q, kv) = row.split_at_mut(q_dim);
                let (k, v) = kv.split_at_mut(kv_dim);
                for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                    rope(head, cos, sin);
                }
                layer.k[p * kv_dim..(p + 1) * kv_dim].copy_from_slice(k);
                layer.v[p * kv_dim..(p + 1) * kv_dim].copy_from_slice(v);
            }
            attention(c, &qkv, &layer.k, &layer.v, pos, &mut att);
            layer.wo.matmul(&att, &mut proj).map_err(kernel_err)?;
            add(&mut x, &proj);

            rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut h);
            layer.gate_up.matmul(&h, &mut gate_up).map_err(kernel_err)?;
            for (gu, a) in gate_up.chunks_exact(2 * ffn).zip(act.chunks_exact_mut(ffn)) {
                let (g, u) = gu.split_at(ffn);
                for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
                    *a = g / (1.0 + (-g).exp()) * u;
                }
            }
            layer.down.matmul(&act, &mut proj).map_err(kernel_err)?;
            add(&mut x, &proj);
        }
        // Only the last position's logits pick the next token.
        let mut last = vec![0f32; hidden];
        rms_norm(
            &x[(seq - 1) * hidden..],
            &self.output_norm,
            c.rms_eps,
            &mut last,
        );
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        let mut logits = vec![0f32; output.rows()];
        output.matmul(&last, &mut logits).map_err(kernel_err)?;
        Ok(logits)
    }
}

fn fail(msg: String) -> InferenceError {
    InferenceError::Tensor(candle_core::Error::Msg(msg))
}

/// Row-wise RMS norm of `x` scaled by `w`, into `out`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mean = dot(x, x) / n as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
            *o = v * scale * w;
        }
    }
}

/// Rotary embedding of one head, pairs (2i, 2i+1) as GGUF llama weights
/// expect (the file's Q/K rows are permuted for this layout).
fn rope(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// A dot product the compiler vectorises: eight independent partial sums.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Causal attention of `seq` new positions (starting at `pos`) over the
/// cache; `qkv` rows hold each position's rotated queries first. Query head
/// `h` reads KV head `h / (n_head / n_kv_head)` in place.
fn attention(c: &LlamaConfig, qkv: &[f32], k: &[f32], v: &[f32], pos: usize, out: &mut [f32]) {
    let hd = c.head_dim;
    let (q_dim, kv_dim) = (c.n_head * hd, c.n_kv_head * hd);
    let row = q_dim + 2 * kv_dim;
    let seq = qkv.len() / row;
    let n_rep = c.n_head / c.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    let one = |t: usize, h: usize, out: &mut [f32], scores: &mut Vec<f32>| {
        let q = &qkv[t * row + h * hd..t * row + (h + 1) * hd];
        let kvh = h / n_rep;
        let len = pos + t + 1;
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for j in 0..len {
            let s = dot(q, &k[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd]) * scale;
            max = max.max(s);
            scores.push(s);
        }
        let mut sum = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        out.fill(0.0);
        for (j, s) in scores.iter().enumerate() {
            let p = s / sum;
            let vj = &v[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
            for (o, &vv) in out.iter_mut().zip(vj) {
                *o += p * vv;
            }
        }
    };
    if seq == 1 {
        let mut scores = Vec::with_capacity(pos + 1);
        for (h, out) in out.chunks_exact_mut(hd).enumerate() {
            one(0, h, out, &mut scores);
        }
    } else {
        // A prompt: every (position, head) pair is independent.
        out.par_chunks_mut(hd)
            .enumerate()
            .for_each_init(Vec::new, |scores, (i, out)| {
                one(i / c.n_head, i % c.n_head, out, scores)
            });
    }
}

impl CausalLm for CpuLlama {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(fail("forward with no tokens".into()));
        }
        if pos != 0 && pos != self.cached {
            return Err(fail(format!(
                "position {pos} does not follow the {} cached positions",
                self.cached
            )));
        }
        if pos + tokens.len() > self.config.context_length {
            return Err(fail(format!(
                "KV cache: {} positions exceed the context of {}",
                pos + tokens.len(),
                self.config.context_length
            )));
        }
        // Long prompts go in chunks to bound the activation buffers.
        let mut logits = Vec::new();
        let mut p = pos;
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            // A failed pass leaves the cache unusable past `p`.
            self.cached = p;
            logits = self.run(chunk, p)?;
            p += chunk.len();
        }
        self.cached = p;
        Ok(logits)
    }

    fn context_length(&self) -> usize {
        self.config.context_length
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
}

/// Prompt positions per pass: bounds the per-pass buffers (~10 MB).
const PREFILL_CHUNK: usize = 512;
