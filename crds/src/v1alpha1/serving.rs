//! `spec.model`: which model is served, where its weights come from, and
//! the generation defaults.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Architecture family: ChatGLM3, GLM4 or Llama-GGUF. It decides the loader
/// and the chat format. The server detects the family from the model files
/// and refuses to start when they hold another one than declared here.
/// Unset: whatever family the files hold is served.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ModelFamily {
    /// ChatGLM3 (e.g. THUDM/chatglm3-6b), safetensors + tokenizer.json.
    ChatGLM3,
    /// GLM-4 (e.g. THUDM/glm-4-9b-chat), safetensors + tokenizer.json.
    GLM4,
    /// Any llama-architecture model as a quantized GGUF file. The embedded
    /// default model is of this family.
    #[serde(rename = "Llama-GGUF")]
    LlamaGguf,
}

impl ModelFamily {
    /// The name as `spec.model.family` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatGLM3 => "ChatGLM3",
            Self::GLM4 => "GLM4",
            Self::LlamaGguf => "Llama-GGUF",
        }
    }
}

impl std::fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which model to serve and its generation defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.source.embedded) || !has(self.family) || self.family == 'Llama-GGUF'",
     "message": "model.family: the embedded model is a Llama-GGUF model; set family: Llama-GGUF (or leave it unset) or use a volume or huggingFace source"}
]))]
pub struct ModelSpec {
    /// The declared family (see [`ModelFamily`], whose text `kubectl
    /// explain` shows for this field). Unset: detected from the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<ModelFamily>,

    /// Where the weights come from. Exactly one of embedded, volume or
    /// huggingFace.
    #[serde(default)]
    pub source: ModelSource,

    /// Context window in tokens. Defaults to what the model file declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 128, max = 1048576))]
    pub context_length: Option<i32>,

    /// Default maximum number of tokens generated per answer (the seed's
    /// `max_length`). A request may ask for fewer, or more up to its tier's
    /// cap.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_tokens: i32,

    /// Default sampling temperature; 0 means greedy decoding.
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: f64,

    /// Default nucleus-sampling probability mass.
    #[serde(default = "default_top_p")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: f64,

    /// Parameter count of the model: a number and M (millions) or B
    /// (billions), e.g. `6B`, `6.2B`, `135M`. With `resources.gpu.product`
    /// the operator checks before starting any pod that the weights fit the
    /// card's memory (Ready=False, reason InsufficientGpuMemory, when they
    /// cannot). Unset: read from a huggingFace repository name ending in
    /// it (`THUDM/chatglm3-6b`); otherwise the check is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?[MB]$"))]
    pub parameters: Option<String>,

    /// Number format of the weights while serving a safetensors checkpoint
    /// (ChatGLM3, GLM-4); see [`ModelDtype`]. GGUF files keep their
    /// quantized blocks and refuse any value but Auto. Unset: Auto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<ModelDtype>,
}

/// Number format of a safetensors checkpoint's weights in memory. Auto:
/// BF16 on a GPU, F16 on the CPU (candle's CPU matmul has an F16 kernel but
/// widens BF16 to F32 on every multiply); F32 doubles the memory of either.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ModelDtype {
    /// BF16 on a GPU, F16 on the CPU.
    #[default]
    Auto,
    /// IEEE half precision (2 bytes per weight).
    F16,
    /// bfloat16 (2 bytes per weight): the format GLM releases ship in.
    BF16,
    /// Single precision (4 bytes per weight).
    F32,
}

impl ModelDtype {
    /// The name as `spec.model.dtype` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "Auto",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::F32 => "F32",
        }
    }
}

impl std::fmt::Display for ModelDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            family: None,
            source: ModelSource::default(),
            context_length: None,
            max_tokens: default_max_tokens(),
            temperature: default_temperature(),
            top_p: default_top_p(),
            parameters: None,
            dtype: None,
        }
    }
}

// Generation defaults (the seed's `max_length=2048, temperature=0.7`), shared
// with the server config so both read the same numbers.

/// Tokens generated per answer by default (the seed's `max_length`).
pub const DEFAULT_MAX_TOKENS: u32 = 2048;
/// Sampling temperature by default (the seed's).
pub const DEFAULT_TEMPERATURE: f64 = 0.7;
/// Nucleus-sampling mass by default: all of it.
pub const DEFAULT_TOP_P: f64 = 1.0;

fn default_max_tokens() -> i32 {
    DEFAULT_MAX_TOKENS as i32
}
fn default_temperature() -> f64 {
    DEFAULT_TEMPERATURE
}
fn default_top_p() -> f64 {
    DEFAULT_TOP_P
}

/// Where the weights come from: exactly one of the three.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.embedded), has(self.volume), has(self.huggingFace)].filter(x, x).size() == 1",
     "message": "model.source: set exactly one of embedded, volume or huggingFace"}
]))]
pub struct ModelSource {
    /// The small default model baked into the server image
    /// (SmolLM2-135M-Instruct, Q4_1 GGUF). Needs no network and no volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedSource>,

    /// Weights on a PersistentVolumeClaim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSource>,

    /// Weights fetched from a Hugging Face repository by an init container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugging_face: Option<HuggingFaceSource>,
}

impl Default for ModelSource {
    fn default() -> Self {
        Self {
            embedded: Some(EmbeddedSource::default()),
            volume: None,
            hugging_face: None,
        }
    }
}

/// The model shipped inside the server image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct EmbeddedSource {}

/// Weights on a PersistentVolumeClaim, mounted read-only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSource {
    /// Name of the PersistentVolumeClaim in the model's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,

    /// Path inside the volume: a .gguf file, or a directory holding
    /// config.json, *.safetensors and tokenizer.json.
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.contains('..')", "message": "model.source.volume.path: must not contain '..'"}
    ]))]
    pub path: String,
}

/// A Hugging Face repository, fetched by an init container into an emptyDir.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HuggingFaceSource {
    /// Repository id, e.g. `THUDM/chatglm3-6b`.
    #[schemars(
        length(min = 3, max = 200),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub repo: String,

    /// Branch, tag or commit. Pin a commit for reproducible deployments.
    #[serde(default = "default_revision")]
    #[schemars(length(min = 1, max = 100))]
    pub revision: String,

    /// For GGUF repositories: the file to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.contains('..') && !self.startsWith('/')",
         "message": "model.source.huggingFace.file: a path inside the repository (no '..', not absolute)"}
    ]))]
    pub file: Option<String>,

    /// Secret in the model's namespace with key `token`, for gated repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub token_secret_name: Option<String>,
}

fn default_revision() -> String {
    "main".into()
}
