//! The one error type of the inference module. Handlers never see it: the
//! engine maps it to [`crate::engine::EngineError`] at the trait boundary.

use std::path::PathBuf;

use securechat_crds::v1alpha1::ModelFamily as SpecFamily;

/// Why loading a model or running it failed.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} is missing; run `make model`")]
    ModelMissing { path: PathBuf },
    #[error("invalid GGUF metadata: {0}")]
    Metadata(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(#[from] minijinja::Error),
    #[error("tensor computation: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("CPU kernels: {0}")]
    Kernel(#[from] securechat_kernels::ShapeError),
    #[error("could not start the inference worker: {0}")]
    Worker(String),
    #[error(
        "model.family is {declared}, but {path} holds a {detected} model: correct model.family, or leave it unset to serve what the files hold"
    )]
    FamilyMismatch {
        path: PathBuf,
        declared: SpecFamily,
        detected: SpecFamily,
    },
    #[error("checkpoint shard {path} is missing ({named_by} names it)")]
    ShardMissing { path: PathBuf, named_by: String },
}

impl InferenceError {
    /// A short, stable label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::ModelMissing { .. } => "model_missing",
            Self::Metadata(_) => "metadata",
            Self::Unsupported(_) => "unsupported",
            Self::Tokenizer(_) => "tokenizer",
            Self::Template(_) => "template",
            Self::Tensor(_) => "tensor",
            Self::Kernel(_) => "kernel",
            Self::Worker(_) => "worker",
            Self::FamilyMismatch { .. } => "family_mismatch",
            Self::ShardMissing { .. } => "shard_missing",
        }
    }
}

pub type Result<T, E = InferenceError> = std::result::Result<T, E>;
