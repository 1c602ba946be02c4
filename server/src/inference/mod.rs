//! Inference: loads a model (a GGUF llama-family file, or a ChatGLM3 /
//! GLM-4 safetensors directory), and serves it behind the
//! [`crate::engine::Engine`] trait: a scheduler that batches every running
//! request into each forward pass, behind a bounded, fair queue.
//!
//! The HTTP side only calls [`load_engine`] and the trait; no candle type
//! crosses this module's boundary.

mod candle_pool;
mod chat_template;
mod error;
mod fused;
mod gguf;
mod glm;
mod kv_cache;
mod linear;
mod llama;
mod model;
mod prompt;
mod sampler;
mod scheduler;
mod text_stream;
mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use securechat_crds::v1alpha1::ModelDtype;
use securechat_crds::v1alpha1::ModelFamily as SpecFamily;

pub use chat_template::ChatTemplate;
pub use error::InferenceError;
pub use glm::GlmFamily;
pub use llama::WeightFormat;
pub use model::{CausalLm, PagedLm, RopeVariant, SeqStep};
pub use prompt::{CHATML_TEMPLATE, PromptEncoder};
pub use scheduler::{LocalEngine, ServingOptions, kv_cache_tokens};
pub use text_stream::Utf8Stream;
pub use tokenizer::{ChatTokenizer, Segment};

use securechat_crds::default_model;

use crate::engine::{Engine, ModelInfo};

/// Where `make model` (scripts/fetch-model.sh) puts the default model for
/// this user; `None` without a `HOME`.
pub fn default_model_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| default_model::cached_path(Path::new(&home)))
}

/// How to load and serve a model.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Shown in /v1/models; defaults to the file's `general.name` or stem.
    pub model_id: Option<String>,
    /// Batching, queueing and the key/value cache.
    pub serving: ServingOptions,
    /// Caps prompt + generation below what the model file declares
    /// (`spec.model.contextLength`); more than the file's is refused.
    pub context_length: Option<usize>,
    /// Weights as stored by default: our CPU kernels multiply Q4_1 as fast
    /// as Q8_0 (measured: decode 25.8 vs 26.0 tokens/s) in 41 MiB less
    /// memory for the default model.
    pub weight_format: WeightFormat,
    /// Where the model runs (`serve --device`).
    pub placement: Placement,
    /// Number format of safetensors weights (`spec.model.dtype`); GGUF
    /// files refuse all but Auto.
    pub dtype: ModelDtype,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            model_id: None,
            serving: ServingOptions::default(),
            context_length: None,
            weight_format: WeightFormat::AsStored,
            placement: Placement::Auto,
            dtype: ModelDtype::Auto,
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

/// What a model path holds, as far as the loader can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// A GGUF file (its architecture is looked up in the family table at
    /// load).
    LlamaGguf,
    /// A Hugging Face directory with config.json, tokenizer.json, safetensors.
    Glm(GlmFamily),
}

impl ModelFamily {
    /// The name a SecureChatModel's `spec.model.family` gives this family.
    pub fn spec_family(self) -> SpecFamily {
        match self {
            Self::LlamaGguf => SpecFamily::LlamaGguf,
            Self::Glm(GlmFamily::ChatGlm3) => SpecFamily::ChatGLM3,
            Self::Glm(GlmFamily::Glm4) => SpecFamily::GLM4,
        }
    }
}

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Picks the family from what `path` is: a GGUF file by its magic bytes, a
/// ChatGLM3 / GLM-4 directory by its config files.
pub fn detect_family(path: &Path) -> Result<ModelFamily, InferenceError> {
    let io = |source| InferenceError::Io {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        return Err(InferenceError::ModelMissing {
            path: path.to_owned(),
        });
    }
    if path.is_dir() {
        if !glm::is_glm_dir(path) {
            return Err(InferenceError::Unsupported(format!(
                "{} is a directory without config.json (expected a ChatGLM3 or GLM-4 checkpoint)",
                path.display()
            )));
        }
        let config = std::fs::read_to_string(path.join("config.json")).map_err(io)?;
        let config: serde_json::Value = serde_json::from_str(&config)
            .map_err(|e| InferenceError::Metadata(format!("config.json: {e}")))?;
        let tokenizer_config = std::fs::read_to_string(path.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        return glm::detect_family(&config, tokenizer_config.as_ref()).map(ModelFamily::Glm);
    }
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(path).map_err(io)?, &mut magic)
        .map_err(io)?;
    if &magic == GGUF_MAGIC {
        Ok(ModelFamily::LlamaGguf)
    } else {
        Err(InferenceError::Unsupported(format!(
            "{} is neither a GGUF file nor a ChatGLM3 / GLM-4 directory",
            path.display()
        )))
    }
}

/// The family at `path`, refused when it is not the `declared` one: a
/// SecureChatModel's `spec.model.family` naming ChatGLM3 over a GGUF file
/// stops the server at start with both names, rather than being ignored.
pub fn check_family(path: &Path, declared: SpecFamily) -> Result<ModelFamily, InferenceError> {
    let detected = detect_family(path)?;
    if detected.spec_family() == declared {
        Ok(detected)
    } else {
        Err(InferenceError::FamilyMismatch {
            path: path.to_owned(),
            declared,
            detected: detected.spec_family(),
        })
    }
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    /// The first GPU when built with `cuda` and one is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The CPU with candle's quantized kernels instead of ours: the
    /// reference that tests compare ours against.
    CpuCandleKernels,
    /// GPU `n`; an error when the build has no `cuda` feature or no such GPU.
    Gpu(usize),
}

impl Placement {
    fn kernels(self) -> linear::CpuKernels {
        match self {
            Self::CpuCandleKernels => linear::CpuKernels::Candle,
            _ => linear::CpuKernels::Ours,
        }
    }

    /// Opens the device: for [`Placement::Gpu`], an error when the build
    /// has no `cuda` feature or no such GPU is visible (never the CPU).
    pub fn device(self) -> Result<candle_core::Device, InferenceError> {
        match self {
            Self::Cpu | Self::CpuCandleKernels => Ok(candle_core::Device::Cpu),
            Self::Gpu(ordinal) => gpu(ordinal),
            Self::Auto => {
                #[cfg(feature = "cuda")]
                if candle_core::utils::cuda_is_available() {
                    return gpu(0);
                }
                Ok(candle_core::Device::Cpu)
            }
        }
    }
}

/// A `--device` value that is none of `auto`, `cpu`, `cuda`, `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {0:?}: expected auto, cpu, cuda or cuda:N (N a GPU's index)")]
pub struct InvalidDevice(String);

impl std::str::FromStr for Placement {
    type Err = InvalidDevice;

    /// `serve --device`: `auto` (the first GPU if one is visible, else the
    /// CPU), `cpu`, `cuda` (GPU 0) or `cuda:N`. The CUDA forms never fall
    /// back to the CPU.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Gpu(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Gpu)
                .ok_or_else(|| InvalidDevice(other.to_string())),
        }
    }
}

#[cfg(feature = "cuda")]
fn gpu(ordinal: usize) -> Result<candle_core::Device, InferenceError> {
    // candle's default CUDA path for quantized weights (MMVQ/MMQ) quantizes
    // activations to 8 bits: on an H200 its logits were 0.2–0.8 (mean
    // |Δ|) off the exact model and greedy text drifted within a sentence.
    // The dequantize-then-multiply kernels compute what the f32 model does
    // (|Δ| < 1e-4) and decoded faster there (28 vs 21 tokens/s), so every
    // GPU uses them. The switch is process-wide in candle.
    candle_core::quantized::cuda::set_force_dmmv(true);
    Ok(candle_core::Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn gpu(ordinal: usize) -> Result<candle_core::Device, InferenceError> {
    Err(InferenceError::Unsupported(format!(
        "GPU {ordinal}: this build has no `cuda` feature"
    )))
}

/// Loads the model at `path`, whichever family it is, on the first GPU if
/// there is one (see [`Placement::Auto`]). `format` applies to GGUF weights
/// on the CPU; GLM safetensors are loaded as f16 (bf16 on a GPU).
pub fn load_model(
    path: &Path,
    model_id: Option<String>,
    format: WeightFormat,
) -> Result<LoadedModel, InferenceError> {
    load_model_on(path, model_id, format, Placement::Auto)
}

/// [`load_model`] on a chosen device.
pub fn load_model_on(
    path: &Path,
    model_id: Option<String>,
    format: WeightFormat,
    placement: Placement,
) -> Result<LoadedModel, InferenceError> {
    load_model_as(path, model_id, format, placement, ModelDtype::Auto)
}

/// [`load_model_on`] with safetensors weights in `dtype`
/// (`spec.model.dtype`); a GGUF file with any but Auto is refused, since
/// its quantized blocks are not converted.
pub fn load_model_as(
    path: &Path,
    model_id: Option<String>,
    format: WeightFormat,
    placement: Placement,
    dtype: ModelDtype,
) -> Result<LoadedModel, InferenceError> {
    let device = placement.device()?;
    match detect_family(path)? {
        ModelFamily::LlamaGguf if dtype != ModelDtype::Auto => {
            Err(InferenceError::Unsupported(format!(
                "model.dtype {dtype}: {} is a GGUF file, whose quantized weights are served as stored; leave model.dtype unset or Auto",
                path.display()
            )))
        }
        ModelFamily::LlamaGguf => load_gguf(path, model_id, format, &device, placement.kernels()),
        ModelFamily::Glm(_) => glm::load(path, model_id, &device, dtype),
    }
}

/// Loads the model of a GGUF file's architecture (its `general.architecture`
/// names it) from the file's weights onto `device`.
type LoadGguf = fn(
    &mut gguf::GgufFile,
    &str,
    RopeVariant,
    WeightFormat,
    &candle_core::Device,
    linear::CpuKernels,
) -> Result<Box<dyn CausalLm>, InferenceError>;

/// A GGUF architecture this server runs.
struct GgufArchitecture {
    /// Its `general.architecture`, which also prefixes its metadata keys.
    name: &'static str,
    rope: RopeVariant,
    load: LoadGguf,
}

/// Every GGUF architecture served: a new one is its own directory beside
/// `llama/` (or, when llama's forward pass fits, none) and one line here.
const GGUF_ARCHITECTURES: &[GgufArchitecture] = &[GgufArchitecture {
    name: "llama",
    rope: RopeVariant::Interleaved,
    load: llama::load,
}];

/// The table's entry for `arch`, or an error naming what is served.
fn gguf_architecture(arch: &str) -> Result<&'static GgufArchitecture, InferenceError> {
    GGUF_ARCHITECTURES
        .iter()
        .find(|a| a.name == arch)
        .ok_or_else(|| {
            let known: Vec<&str> = GGUF_ARCHITECTURES.iter().map(|a| a.name).collect();
            InferenceError::Unsupported(format!(
                "GGUF architecture `{arch}` (this server runs: {})",
                known.join(", ")
            ))
        })
}

/// Loads a GGUF model (tokenizer, chat template, weights) by its
/// architecture's entry in [`GGUF_ARCHITECTURES`].
fn load_gguf(
    path: &Path,
    model_id: Option<String>,
    format: WeightFormat,
    device: &candle_core::Device,
    kernels: linear::CpuKernels,
) -> Result<LoadedModel, InferenceError> {
    let mut file = gguf::GgufFile::open(path)?;
    let md = file.metadata();
    let arch = gguf_architecture(md.string("general.architecture")?)?;
    let tokenizer = tokenizer::ChatTokenizer::from_metadata(md)?;
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
    let model = (arch.load)(&mut file, arch.name, arch.rope, format, device, kernels)?;
    let info = ModelInfo {
        id: model_id.unwrap_or(default_id),
        family: arch.name.into(),
        context_length: model.context_length(),
    };
    Ok(LoadedModel {
        model,
        encoder,
        info,
    })
}

/// Loads the model at `path` (see [`load_model`]) and starts its scheduler.
pub fn load_engine(path: &Path, opts: EngineOptions) -> Result<Arc<dyn Engine>, InferenceError> {
    let mut loaded = load_model_as(
        path,
        opts.model_id,
        opts.weight_format,
        opts.placement,
        opts.dtype,
    )?;
    if let Some(cap) = opts.context_length {
        let declared = loaded.info.context_length;
        if cap > declared || cap < 2 {
            return Err(InferenceError::Unsupported(format!(
                "model.contextLength {cap}: the model's context is {declared} tokens, and at least 2 are needed"
            )));
        }
        loaded.info.context_length = cap;
    }
    let engine = LocalEngine::start(loaded.model, loaded.encoder, loaded.info, opts.serving)?;
    Ok(Arc::new(engine))
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    #[test]
    fn devices_parse_as_serve_device_spells_them() {
        let parse = |s: &str| s.parse::<Placement>();
        assert_eq!(parse("auto"), Ok(Placement::Auto));
        assert_eq!(parse("cpu"), Ok(Placement::Cpu));
        assert_eq!(parse("cuda"), Ok(Placement::Gpu(0)));
        assert_eq!(parse("cuda:3"), Ok(Placement::Gpu(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA", ""] {
            let error = parse(bad).expect_err(bad).to_string();
            assert!(error.contains("auto, cpu, cuda or cuda:N"), "{error}");
        }
    }

    /// `--device cuda` never means the CPU: a build without CUDA says so.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_refuses_a_gpu_placement() {
        let error = Placement::Gpu(0).device().expect_err("no GPU here");
        assert!(error.to_string().contains("no `cuda` feature"), "{error}");
        assert!(matches!(
            Placement::Auto.device(),
            Ok(candle_core::Device::Cpu)
        ));
    }
}
