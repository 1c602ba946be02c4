//! Weight matrices of a GGUF model and their products with activations.
//!
//! On the CPU, Q4_1 and Q8_0 matrices are kept byte for byte as the file
//! stores them and multiplied by securechat-kernels (AVX2 with a scalar
//! fallback): memory stays at the file's size and the 4-bit format needs no
//! conversion. Everything else (other block formats, f32 reference runs, GPU
//! devices) goes through candle's own quantized matmul.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor};
use securechat_kernels::{QMatrix, WeightType};

/// A `[out, in]` weight matrix applied as `x · Wᵀ`.
pub enum Linear {
    Kernel(Arc<QMatrix>),
    Candle(QMatMul),
}

/// The block formats our kernels multiply, when the tensor can use them.
fn kernel_type(t: &QTensor) -> Option<WeightType> {
    if !t.device().is_cpu() || t.shape().dims().len() != 2 {
        return None;
    }
    match t.dtype() {
        GgmlDType::Q4_1 => Some(WeightType::Q4_1),
        GgmlDType::Q8_0 => Some(WeightType::Q8_0),
        _ => None,
    }
}

/// The tensor as a kernel matrix, if its format and device allow.
pub fn kernel_matrix(t: &QTensor) -> Result<Option<QMatrix>> {
    let Some(ty) = kernel_type(t) else {
        return Ok(None);
    };
    let (rows, cols) = t.shape().dims2()?;
    QMatrix::new(ty, rows, cols, t.data()?.into_owned())
        .map(Some)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

impl Linear {
    pub fn new(t: QTensor) -> Result<Self> {
        match kernel_matrix(&t)? {
            Some(m) => Ok(Self::Kernel(Arc::new(m))),
            None => Ok(Self::Candle(QMatMul::from_qtensor(t)?)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Kernel(m) => x.contiguous()?.apply_op1_no_bwd(&KernelMatMul(m)),
            Self::Candle(m) => m.forward(x),
        }
    }
}

/// Runs a kernel matrix as a candle op, so it composes with candle tensors.
struct KernelMatMul<'a>(&'a QMatrix);

impl CustomOp1 for KernelMatMul<'_> {
    fn name(&self) -> &'static str {
        "securechat-qmatmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("quantized matmul takes f32 activations")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("quantized matmul takes contiguous activations")
        };
        let dims = layout.dims();
        if dims.last() != Some(&self.0.cols()) {
            candle_core::bail!(
                "activations {dims:?} do not match a [{}, {}] matrix",
                self.0.rows(),
                self.0.cols()
            )
        }
        let x = &data[start..end];
        let mut out = vec![0f32; x.len() / self.0.cols() * self.0.rows()];
        self.0
            .matmul(x, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.0.rows();
        }
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

/// The token embedding table; with tied weights it is the output matrix too.
pub enum Embedding {
    Kernel(Arc<QMatrix>),
    Candle(Arc<QTensor>),
}

impl Embedding {
    pub fn new(t: QTensor) -> Result<Self> {
        match kernel_matrix(&t)? {
            Some(m) => Ok(Self::Kernel(Arc::new(m))),
            None => Ok(Self::Candle(Arc::new(t))),
        }
    }

    /// `[ids.len(), hidden]` rows of the table.
    pub fn lookup(&self, ids: &[u32], device: &candle_core::Device) -> Result<Tensor> {
        match self {
            Self::Kernel(m) => {
                let hidden = m.cols();
                let mut out = vec![0f32; ids.len() * hidden];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(hidden)) {
                    if id as usize >= m.rows() {
                        candle_core::bail!("token id {id} is outside the vocabulary")
                    }
                    m.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(out, (ids.len(), hidden), device)
            }
            Self::Candle(t) => t.embedding(&Tensor::new(ids, device)?),
        }
    }

    /// The same matrix as an output projection (tied embeddings).
    pub fn as_linear(&self) -> Result<Linear> {
        match self {
            Self::Kernel(m) => Ok(Linear::Kernel(m.clone())),
            Self::Candle(t) => Ok(Linear::Candle(QMatMul::from_arc(t.clone())?)),
        }
    }
}
