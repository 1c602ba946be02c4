//! The llama-family model's weights as loaded ([`Weights`]), before a
//! forward pass is chosen. Both passes read them: the candle one
//! (`candle.rs`) and the one on our kernels (`cpu.rs`), so they live below
//! both.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::config::LlamaConfig;
use crate::inference::error::Result;
use crate::inference::fused::FusedProjection;
use crate::inference::gguf::GgufFile;
use crate::inference::linear::{CpuKernels, Linear};

/// How matrix weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// As stored in the file.
    AsStored,
    /// Q4_1 (and other formats without a fast candle kernel) converted to
    /// Q8_0 at load: ~1.7x the memory of Q4_1, ~3x faster matmuls on x86.
    /// CPU only: on a GPU the stored format is kept.
    Q8_0,
    /// Everything dequantized to f32 (~4x the memory of Q8_0): no activation
    /// quantization, so results depend only on summation order. For
    /// reference checks, not for serving.
    F32,
}

pub(super) struct LayerWeights {
    pub attn_norm: Tensor,
    /// Q, K and V projections in one matmul.
    pub qkv: FusedProjection,
    pub wo: Linear,
    pub ffn_norm: Tensor,
    /// The MLP's gate and up projections in one matmul.
    pub gate_up: FusedProjection,
    pub w_down: Linear,
}

/// The model's weights as loaded, before a forward pass is chosen.
pub(super) struct Weights {
    /// Also the output projection when the file ties them.
    pub embedding: Linear,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Tensor,
    pub output: Linear,
}

impl Weights {
    pub(super) fn load(
        file: &mut GgufFile,
        config: &LlamaConfig,
        format: WeightFormat,
        device: &Device,
        kernels: CpuKernels,
    ) -> Result<Self> {
        let embedding = Linear::new(matrix(file, "token_embd.weight", format, device)?, kernels)?;
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let mut weight =
                |part: &str| matrix(file, &format!("blk.{i}.{part}.weight"), format, device);
            let qkv = FusedProjection::new(
                vec![weight("attn_q")?, weight("attn_k")?, weight("attn_v")?],
                kernels,
            )?;
            let gate_up =
                FusedProjection::new(vec![weight("ffn_gate")?, weight("ffn_up")?], kernels)?;
            layers.push(LayerWeights {
                qkv,
                gate_up,
                wo: Linear::new(weight("attn_output")?, kernels)?,
                w_down: Linear::new(weight("ffn_down")?, kernels)?,
                attn_norm: vector(file, &format!("blk.{i}.attn_norm.weight"), device)?,
                ffn_norm: vector(file, &format!("blk.{i}.ffn_norm.weight"), device)?,
            });
        }
        let output_norm = vector(file, "output_norm.weight", device)?;
        // Small models tie the output projection to the embedding table.
        let output = if file.has_tensor("output.weight") {
            Linear::new(matrix(file, "output.weight", format, device)?, kernels)?
        } else {
            embedding.clone()
        };
        Ok(Self {
            embedding,
            layers,
            output_norm,
            output,
        })
    }
}

/// A weight matrix, converted to `format`.
fn matrix(
    file: &mut GgufFile,
    name: &str,
    format: WeightFormat,
    device: &Device,
) -> Result<QTensor> {
    convert(file.tensor(name, device)?, format)
}

/// A norm weight, as plain f32.
fn vector(file: &mut GgufFile, name: &str, device: &Device) -> Result<Tensor> {
    Ok(file.tensor(name, device)?.dequantize(device)?)
}

fn convert(t: QTensor, format: WeightFormat) -> Result<QTensor> {
    let slow = !matches!(
        t.dtype(),
        GgmlDType::Q8_0
            | GgmlDType::Q4_0
            | GgmlDType::Q4K
            | GgmlDType::Q6K
            | GgmlDType::F32
            | GgmlDType::F16
    );
    // Q8_0 blocks span 32 values along each row.
    let fits = t.shape().dims().last().is_some_and(|d| d % 32 == 0);
    // candle's CUDA kernels multiply every GGUF block format directly, so
    // on a GPU requantizing would only cost memory.
    let on_cpu = t.device().is_cpu();
    match format {
        WeightFormat::Q8_0 if slow && fits && on_cpu => {
            let dense = t.dequantize(&t.device())?;
            Ok(QTensor::quantize(&dense, GgmlDType::Q8_0)?)
        }
        // candle runs F32 "quantized" tensors as plain f32 matmuls.
        WeightFormat::F32 => Ok(QTensor::quantize(
            &t.dequantize(&t.device())?,
            GgmlDType::F32,
        )?),
        _ => Ok(t),
    }
}
