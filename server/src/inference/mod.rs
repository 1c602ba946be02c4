//! Inference with candle: loads a model, and serves it behind the
//! [`crate::engine::Engine`] trait with a bounded queue.
//!
//! The HTTP side only calls [`load_engine`] and the trait; no candle type
//! crosses this module's boundary.

mod chat_template;
mod error;
mod fused;
mod generate;
mod gguf;
mod kv_cache;
mod llama;
mod model;
mod prompt;
mod sampler;
mod text_stream;
mod tokenizer;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::InferenceError;
pub use generate::{Ending, GenerationReport, TextSink, generate};
pub use llama::WeightFormat;
pub use model::CausalLm;
pub use prompt::PromptEncoder;
pub use tokenizer::{GgufTokenizer, Segment};

use crate::engine::{Engine, ModelInfo};

/// Where `make model` (scripts/fetch-model.sh) puts the default model.
pub fn default_model_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| {
        PathBuf::from(home).join(".cache/securechat/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

/// How to load and serve a model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Shown in /v1/models; defaults to the file's `general.name` or stem.
    pub model_id: Option<String>,
    /// Requests that may wait behind the running one before `QueueFull`.
    pub queue_capacity: usize,
    pub weight_format: WeightFormat,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            model_id: None,
            queue_capacity: 8,
            weight_format: WeightFormat::Q8_0,
        }
    }
}

/// A model and its prompt encoder, without the serving machinery: for
/// benchmarks and parity tests that drive the model step by step.
pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub encoder: PromptEncoder,
    pub info: ModelInfo,
}

/// Loads a GGUF llama-family model (tokenizer, chat template, weights).
pub fn load_model(
    path: &Path,
    model_id: Option<String>,
    format: WeightFormat,
) -> Result<LoadedModel, InferenceError> {
    let device = candle_core::Device::Cpu;
    let mut file = gguf::GgufFile::open(path)?;
    let md = file.metadata();
    let tokenizer = tokenizer::GgufTokenizer::from_metadata(md)?;
    let template = if md.contains("tokenizer.chat_template") {
        Some(md.string("tokenizer.chat_template")?.to_owned())
    } else {
        None
    };
    let default_id = if md.contains("general.name") {
        md.string("general.name")?.to_owned()
    } else {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    };
    let encoder = PromptEncoder::new(tokenizer, template.as_deref())?;
    let model = llama::Llama::load(&mut file, format, &device)?;
    let info = ModelInfo {
        id: model_id.unwrap_or(default_id),
        family: "llama".into(),
        context_length: model.config().context_length,
    };
    Ok(LoadedModel {
        model: Box::new(model),
        encoder,
        info,
    })
}

/// Loads a GGUF llama-family model and starts its worker thread.
pub fn load_engine(path: &Path, opts: EngineOptions) -> Result<Arc<dyn Engine>, InferenceError> {
    let loaded = load_model(path, opts.model_id, opts.weight_format)?;
    let engine = worker::LocalEngine::start(
        loaded.model,
        loaded.encoder,
        loaded.info,
        opts.queue_capacity,
    )?;
    Ok(Arc::new(engine))
}
