//! Several projections of the same input run as one quantized matmul.
//!
//! Q, K and V (and the MLP's gate and up) all multiply the same activations.
//! Stacking their weight rows turns three (two) matmuls into one: the
//! activations are quantized once and the thread pool is dispatched once,
//! which matters for a model this small, where per-call overhead rivals the
//! arithmetic. Rows of a quantized matrix are independent runs of blocks, so
//! stacking is a byte concatenation and changes no result.

use std::borrow::Cow;

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{Module, Result, Tensor};

pub enum FusedProjection {
    /// One matmul whose output columns are split at these widths.
    Stacked { matmul: QMatMul, widths: Vec<usize> },
    /// Mixed block formats cannot be stacked: one matmul each.
    Separate(Vec<QMatMul>),
}

impl FusedProjection {
    /// Weights are `[out_i, in]`, all with the same `in`.
    pub fn new(weights: Vec<QTensor>) -> Result<Self> {
        let Some(first) = weights.first() else {
            candle_core::bail!("no weights to fuse")
        };
        let (dtype, device) = (first.dtype(), first.device());
        let k = first.shape().dims2()?.1;
        let stackable = weights
            .iter()
            .all(|w| w.dtype() == dtype && w.shape().dims2().is_ok_and(|(_, wk)| wk == k));
        if !stackable {
            let separate = weights
                .into_iter()
                .map(QMatMul::from_qtensor)
                .collect::<Result<_>>()?;
            return Ok(Self::Separate(separate));
        }
        let mut widths = Vec::with_capacity(weights.len());
        let mut bytes = Vec::new();
        for w in &weights {
            widths.push(w.shape().dims2()?.0);
            bytes.extend_from_slice(&w.data()?);
        }
        let rows = widths.iter().sum::<usize>();
        let storage = QStorage::from_data(Cow::Owned(bytes), &device, dtype)?;
        let matmul = QMatMul::from_qtensor(QTensor::new(storage, (rows, k))?)?;
        Ok(Self::Stacked { matmul, widths })
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
