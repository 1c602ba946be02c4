//! Several projections of the same input run as one quantized matmul.
//!
//! Q, K and V (and the MLP's gate and up) all multiply the same activations.
//! Stacking their weight rows turns three (two) matmuls into one: the
//! activations are quantized once and the thread pool is dispatched once,
//! which matters for a model this small, where per-call overhead rivals the
//! arithmetic. Rows of a quantized matrix are independent runs of blocks, so
//! stacking is a byte concatenation and changes no result.

use candle_core::quantized::QTensor;
use candle_core::{Module, Result, Tensor};

use super::linear::{CpuKernels, Linear};

pub enum FusedProjection {
    /// One matmul whose output columns are split at these widths.
    Stacked { matmul: Linear, widths: Vec<usize> },
    /// Mixed block formats cannot be stacked: one matmul each.
    Separate(Vec<Linear>),
}

impl FusedProjection {
    /// Weights are `[out_i, in]`, all with the same `in`.
    pub fn new(weights: Vec<QTensor>, kernels: CpuKernels) -> Result<Self> {
        if let Some(matmul) = Linear::stacked(&weights, kernels)? {
            let widths = weights
                .iter()
                .map(|w| w.shape().dims2().map(|(rows, _)| rows))
                .collect::<Result<_>>()?;
            return Ok(Self::Stacked { matmul, widths });
        }
        let separate = weights
            .into_iter()
            .map(|w| Linear::new(w, kernels))
            .collect::<Result<_>>()?;
        Ok(Self::Separate(separate))
    }

    /// The stacked matrix our kernels multiply, when they run this
    /// projection.
    pub fn kernel(&self) -> Option<&std::sync::Arc<securechat_kernels::QMatrix>> {
        match self {
            Self::Stacked { matmul, .. } => matmul.kernel(),
            Self::Separate(_) => None,
        }
    }

    /// One output per weight, in order (views into one buffer when stacked).
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Self::Stacked { matmul, widths } => {
                let y = matmul.forward(x)?;
                let mut start = 0;
                widths
                    .iter()
                    .map(|&w| {
                        let part = y.narrow(candle_core::D::Minus1, start, w);
                        start += w;
                        part
                    })
                    .collect()
            }
            Self::Separate(matmuls) => matmuls.iter().map(|m| m.forward(x)).collect(),
        }
    }
}
