//! Whether a model fits the GPU its spec names, decided before any pod
//! starts: CEL cannot know sizes, and a model that does not fit would
//! otherwise crash-loop with an out-of-memory error on every start.
//!
//! The rule: the weights (parameters × bytes per parameter) plus 20% (the
//! activation workspace, cuBLAS's and the allocator's slack) plus 2 GiB
//! (the CUDA context, about 0.5 GiB, and the key/value cache of a serving
//! batch) must fit the memory the driver reports for the card. One card
//! holds the model: the server runs it on GPU 0, whatever `gpu.count` is.
//! So a 6B model in f16 (11.2 GiB of weights, 15.4 GiB needed) fits an L4
//! or A10 (22.5 GiB) and not a T4 (15.0 GiB).
//!
//! The check is skipped, never guessed, when the size (`spec.model.parameters`
//! or a repository name ending in it), the weights' precision or the card
//! (`resources.gpu.product`) is unknown.

use securechat_crds::v1alpha1::{ModelDtype, ModelFamily, ModelSpec, SecureChatModelSpec};

/// Memory of a GPU as its driver reports it (nvidia-smi's
/// `memory.total`, MiB), by the product names GPU Feature Discovery writes
/// to the `nvidia.com/gpu.product` node label (`NVIDIA-A100-SXM4-80GB`,
/// `Tesla-T4`): the family token, and a variant token where one family
/// comes in several sizes. Variants come before their family's default.
const CARDS: [(&str, Option<&str>, u32); 15] = [
    ("T4", None, 15_360),
    ("V100", Some("32GB"), 32_768),
    ("V100", None, 16_384),
    ("A10", None, 23_028),
    ("A10G", None, 23_028),
    ("A30", None, 24_576),
    ("A40", None, 46_068),
    ("L4", None, 23_034),
    ("L40", None, 46_068),
    ("L40S", None, 46_068),
    ("A100", Some("80GB"), 81_920),
    ("A100", None, 40_960),
    ("H100", Some("NVL"), 95_830),
    ("H100", None, 81_559),
    ("H200", None, 143_771),
];

/// Share of the weights' size added for workspace and slack.
const WORKSPACE_FRACTION: f64 = 0.2;
/// Fixed GiB for the CUDA context and a serving batch's key/value cache.
const FIXED_GIB: f64 = 2.0;
const GIB: f64 = (1u64 << 30) as f64;

/// A model that cannot fit the card its spec names.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the model needs about {required_gib:.1} GiB of GPU memory ({parameters} parameters × \
     {bytes_per_parameter} bytes = {weights_gib:.1} GiB of weights, + 20% and 2 GiB for the CUDA \
     context, activations and key/value cache) and one {product} has {card_gib:.1} GiB: choose a \
     larger resources.gpu.product or a smaller (or quantised GGUF) model"
)]
pub struct InsufficientGpuMemory {
    pub parameters: String,
    pub bytes_per_parameter: f64,
    pub weights_gib: f64,
    pub required_gib: f64,
    pub product: String,
    pub card_gib: f64,
}

/// Checks that the model fits one card of `resources.gpu.product`; Ok
/// when it does or when what is needed to tell is unknown.
pub fn check(spec: &SecureChatModelSpec) -> Result<(), InsufficientGpuMemory> {
    let gpu = &spec.resources.gpu;
    let Some(product) = gpu.product.as_deref().filter(|_| gpu.count > 0) else {
        return Ok(());
    };
    let (Some(card_gib), Some((label, parameters)), Some(bytes_per_parameter)) = (
        card_memory_gib(product),
        parameter_count(&spec.model),
        bytes_per_parameter(&spec.model),
    ) else {
        return Ok(());
    };
    let weights_gib = parameters * bytes_per_parameter / GIB;
    let required_gib = required_gib(weights_gib);
    if required_gib <= card_gib {
        return Ok(());
    }
    Err(InsufficientGpuMemory {
        parameters: label,
        bytes_per_parameter,
        weights_gib,
        required_gib,
        product: product.to_string(),
        card_gib,
    })
}

/// What a model of `weights_gib` needs on the card.
pub fn required_gib(weights_gib: f64) -> f64 {
    weights_gib * (1.0 + WORKSPACE_FRACTION) + FIXED_GIB
}

/// The memory (GiB) of one card of a `nvidia.com/gpu.product` label value;
/// for a MIG slice (`…-MIG-1g.10gb`), the slice's.
pub fn card_memory_gib(product: &str) -> Option<f64> {
    let tokens: Vec<String> = product.split('-').map(str::to_ascii_uppercase).collect();
    if let Some(i) = tokens.iter().position(|t| t == "MIG") {
        // GFD's mixed strategy names the profile: `<compute>g.<memory>gb`.
        let profile = tokens.get(i + 1)?;
        let gb = profile.split_once('.')?.1.strip_suffix("GB")?;
        return gb.parse::<f64>().ok();
    }
    let has = |t: &str| tokens.iter().any(|token| token == t);
    CARDS
        .iter()
        .find(|&&(family, variant, _)| has(family) && variant.is_none_or(has))
        .map(|&(_, _, mib)| f64::from(mib) / 1024.0)
}

/// The parameter count, as written (`6B`) and as a number: from
/// `spec.model.parameters`, else from a huggingFace repository name that
/// ends in it (`THUDM/chatglm3-6b`, `Qwen/Qwen2-1.5B-Instruct`).
pub fn parameter_count(model: &ModelSpec) -> Option<(String, f64)> {
    if let Some(written) = &model.parameters {
        return parse_parameters(written).map(|n| (written.clone(), n));
    }
    let repo = &model.source.hugging_face.as_ref()?.repo;
    let name = repo.rsplit('/').next()?;
    name.split(['-', '_'])
        .find_map(|token| parse_parameters(token).map(|n| (token.to_string(), n)))
}

/// `6B`, `6.2b`, `135M` as a number of parameters.
fn parse_parameters(s: &str) -> Option<f64> {
    let (number, scale) = match s.char_indices().last()? {
        (i, 'B' | 'b') => (&s[..i], 1e9),
        (i, 'M' | 'm') => (&s[..i], 1e6),
        _ => return None,
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Bytes per parameter of the weights on the GPU: safetensors load in
/// `spec.model.dtype`, half precision (f16/bf16, 2 bytes) unless it says
/// F32 (4 bytes); a GGUF file keeps its quantisation,
/// read from the tag its name carries (`…Q4_K_M.gguf`: 4.5 bits, the
/// block scales included). None when that is unknown (the embedded model
/// is tiny and fits any card).
pub fn bytes_per_parameter(model: &ModelSpec) -> Option<f64> {
    if model.source.embedded.is_some() {
        return None;
    }
    let file = model
        .source
        .hugging_face
        .as_ref()
        .and_then(|hf| hf.file.clone())
        .or_else(|| model.source.volume.as_ref().map(|v| v.path.clone()));
    let gguf = model.family == Some(ModelFamily::LlamaGguf)
        || file
            .as_deref()
            .is_some_and(|f| f.to_ascii_lowercase().ends_with(".gguf"));
    if !gguf {
        return Some(match model.dtype.unwrap_or_default() {
            ModelDtype::F32 => 4.0,
            ModelDtype::Auto | ModelDtype::F16 | ModelDtype::BF16 => 2.0,
        });
    }
    let name = file?.to_ascii_uppercase();
    // Bits per weight of llama.cpp's formats, scales included.
    const TAGS: [(&str, f64); 12] = [
        ("BF16", 16.0),
        ("F16", 16.0),
        ("F32", 32.0),
        ("Q8_0", 8.5),
        ("Q6_K", 6.5625),
        ("Q5_1", 6.0),
        ("Q5_0", 5.5),
        ("Q5_K", 5.5),
        ("Q4_1", 5.0),
        ("Q4_0", 4.5),
        ("Q4_K", 4.5),
        ("Q3_K", 3.4375),
    ];
    TAGS.iter()
        .find(|(tag, _)| name.contains(tag))
        .map(|(_, bits)| bits / 8.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use securechat_crds::v1alpha1::SecureChatModelSpec;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> SecureChatModelSpec {
        serde_json::from_value(value).expect("valid spec")
    }

    fn glm(parameters: &str, product: &str) -> SecureChatModelSpec {
        spec(json!({
            "model": {"family": "ChatGLM3", "parameters": parameters,
                      "source": {"volume": {"claimName": "weights", "path": "chatglm3-6b"}}},
            "resources": {"gpu": {"count": 1, "product": product}}
        }))
    }

    #[test]
    fn cards_are_known_by_their_feature_discovery_labels() {
        let gib = |p| card_memory_gib(p).map(|g| (g * 10.0).round() / 10.0);
        assert_eq!(gib("Tesla-T4"), Some(15.0));
        assert_eq!(gib("NVIDIA-L4"), Some(22.5));
        assert_eq!(gib("NVIDIA-A10G"), Some(22.5));
        assert_eq!(gib("NVIDIA-A100-SXM4-40GB"), Some(40.0));
        assert_eq!(gib("NVIDIA-A100-PCIE-40GB"), Some(40.0));
        assert_eq!(gib("NVIDIA-A100-SXM4-80GB"), Some(80.0));
        assert_eq!(gib("NVIDIA-H100-80GB-HBM3"), Some(79.6));
        assert_eq!(gib("NVIDIA-H100-NVL"), Some(93.6));
        assert_eq!(gib("NVIDIA-H200"), Some(140.4));
        assert_eq!(gib("NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"), Some(5.0));
        // L40S is not an L4, A100 not an A10.
        assert_eq!(gib("NVIDIA-L40S"), Some(45.0));
        assert_eq!(gib("NVIDIA-GeForce-RTX-4090"), None);
    }

    #[test]
    fn the_size_comes_from_the_spec_or_the_repository_name() {
        let model = |v: serde_json::Value| spec(json!({"model": v})).model;
        let count = |v: serde_json::Value| parameter_count(&model(v)).map(|(s, n)| (s, n as u64));
        assert_eq!(
            count(
                json!({"parameters": "6.2B", "source": {"volume": {"claimName": "w", "path": "weights"}}})
            ),
            Some(("6.2B".into(), 6_200_000_000))
        );
        assert_eq!(
            count(json!({"source": {"huggingFace": {"repo": "THUDM/chatglm3-6b"}}})),
            Some(("6b".into(), 6_000_000_000))
        );
        assert_eq!(
            count(
                json!({"source": {"huggingFace": {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct"}}})
            ),
            Some(("135M".into(), 135_000_000))
        );
        // GLM-4's "4" is a version, not a size.
        assert_eq!(
            count(json!({"source": {"huggingFace": {"repo": "THUDM/glm-4-9b-chat"}}})),
            Some(("9b".into(), 9_000_000_000))
        );
        assert_eq!(
            count(json!({"source": {"huggingFace": {"repo": "acme/house-model"}}})),
            None
        );
    }

    #[test]
    fn precision_is_half_for_safetensors_and_the_quantisation_for_gguf() {
        let model = |v: serde_json::Value| spec(json!({"model": v})).model;
        let hf = |file: &str| json!({"source": {"huggingFace": {"repo": "a/b-7b", "file": file}}});
        assert_eq!(
            bytes_per_parameter(&model(
                json!({"source": {"huggingFace": {"repo": "THUDM/chatglm3-6b"}}})
            )),
            Some(2.0)
        );
        assert_eq!(
            bytes_per_parameter(&model(
                json!({"dtype": "F32", "source": {"huggingFace": {"repo": "THUDM/chatglm3-6b"}}})
            )),
            Some(4.0)
        );
        assert_eq!(
            bytes_per_parameter(&model(
                json!({"dtype": "BF16", "source": {"huggingFace": {"repo": "THUDM/chatglm3-6b"}}})
            )),
            Some(2.0)
        );
        assert_eq!(
            bytes_per_parameter(&model(hf("b-7b.Q4_K_M.gguf"))),
            Some(0.5625)
        );
        assert_eq!(
            bytes_per_parameter(&model(hf("b-7b.Q8_0.gguf"))),
            Some(1.0625)
        );
        assert_eq!(bytes_per_parameter(&model(hf("b-7b-f16.gguf"))), Some(2.0));
        assert_eq!(bytes_per_parameter(&model(hf("b-7b.gguf"))), None);
        assert_eq!(
            bytes_per_parameter(&model(json!({"source": {"embedded": {}}}))),
            None
        );
    }

    #[test]
    fn a_6b_half_precision_model_does_not_fit_a_t4_and_fits_larger_cards() {
        let refused = check(&glm("6B", "Tesla-T4")).expect_err("a T4 is too small");
        assert_eq!(refused.bytes_per_parameter, 2.0);
        assert!((refused.weights_gib - 11.18).abs() < 0.01, "{refused:?}");
        assert!((refused.required_gib - 15.41).abs() < 0.01, "{refused:?}");
        let message = refused.to_string();
        assert!(
            message.contains("15.4 GiB") && message.contains("Tesla-T4"),
            "{message}"
        );
        for product in [
            "NVIDIA-L4",
            "NVIDIA-A100-SXM4-40GB",
            "NVIDIA-H100-80GB-HBM3",
        ] {
            assert_eq!(check(&glm("6B", product)), Ok(()), "{product}");
        }
        // 70B in half precision (130 GiB of weights) needs more than an H100.
        assert!(check(&glm("70B", "NVIDIA-H100-80GB-HBM3")).is_err());
        assert!(check(&glm("32B", "NVIDIA-H200")).is_ok());
    }

    #[test]
    fn unknown_cards_sizes_and_cpu_models_are_not_checked() {
        assert_eq!(check(&glm("600B", "NVIDIA-Future-9000")), Ok(()));
        let no_product = spec(json!({
            "model": {"parameters": "600B", "source": {"volume": {"claimName": "w", "path": "weights"}}},
            "resources": {"gpu": {"count": 1}}
        }));
        assert_eq!(check(&no_product), Ok(()));
        let no_size = spec(json!({
            "model": {"source": {"volume": {"claimName": "w", "path": "weights"}}},
            "resources": {"gpu": {"count": 1, "product": "Tesla-T4"}}
        }));
        assert_eq!(check(&no_size), Ok(()));
    }
}
