//! A llama-family model's shape, read from its GGUF metadata. The keys are
//! those of the file's own architecture (`{general.architecture}.block_count`
//! and so on, as llama.cpp writes them), so an architecture that only
//! renames llama's keys or pairs its rotary dimensions differently is one
//! more line in the family table (`inference/mod.rs`), not another copy of
//! this reader.

use crate::inference::error::{InferenceError, Result};
use crate::inference::gguf::GgufFile;
use crate::inference::model::RopeVariant;

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Which dimensions rotate together; GGUF does not say, the family
    /// table does (llama.cpp decides it by architecture as well).
    pub rope: RopeVariant,
    pub context_length: usize,
    pub vocab_size: usize,
}

impl LlamaConfig {
    /// Reads the shape under `arch`'s keys; `arch` must be the file's
    /// `general.architecture`.
    pub fn from_gguf(file: &GgufFile, arch: &str, rope: RopeVariant) -> Result<Self> {
        let md = file.metadata();
        let stored = md.string("general.architecture")?;
        if stored != arch {
            return Err(InferenceError::Unsupported(format!(
                "GGUF architecture `{stored}` read as `{arch}`"
            )));
        }
        let key = |name: &str| format!("{arch}.{name}");
        let hidden = md.usize(&key("embedding_length"))?;
        let n_head = md.usize(&key("attention.head_count"))?;
        let n_kv_head = md.usize(&key("attention.head_count_kv"))?;
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 || hidden % n_head != 0 {
            return Err(InferenceError::Metadata(format!(
                "inconsistent heads: hidden {hidden}, {n_head} heads, {n_kv_head} KV heads"
            )));
        }
        let head_dim = hidden / n_head;
        if md.contains(&key("rope.dimension_count"))
            && md.usize(&key("rope.dimension_count"))? != head_dim
        {
            return Err(InferenceError::Unsupported(
                "partial rotary embeddings".into(),
            ));
        }
        let vocab_size = if md.contains(&key("vocab_size")) {
            md.usize(&key("vocab_size"))?
        } else {
            md.strings("tokenizer.ggml.tokens")?.len()
        };
        Ok(Self {
            n_layer: md.usize(&key("block_count"))?,
            n_head,
            n_kv_head,
            head_dim,
            hidden,
            rms_eps: md.f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: if md.contains(&key("rope.freq_base")) {
                md.f32(&key("rope.freq_base"))?
            } else {
                10_000.0
            },
            rope,
            context_length: md.usize(&key("context_length"))?,
            vocab_size,
        })
    }
}
