//! Quantized linear layers: our own CPU kernels (`securechat-kernels`) for
//! the block formats they cover, candle's `QMatMul` for everything else and
//! on GPUs.
//!
//! candle's CPU path has no SIMD dot product for Q4_1 (the default model's
//! format) and quantizes activations into a layout that costs a copy per
//! call; ours multiplies Q4_1 and Q8_0 blocks as stored, with AVX2 where the
//! CPU has it, so the weights stay the size of the file.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Module, Result, Shape, Tensor};
use securechat_kernels::{QMatrix, WeightType};

/// Whose quantized matmul kernels the CPU uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CpuKernels {
    /// `securechat-kernels` for Q4_1 and Q8_0, candle's for the rest.
    #[default]
    Ours,
    /// candle's for everything: the reference our kernels are tested
    /// against (same results up to float rounding).
    Candle,
}

/// `y = x·Wᵀ` for a `[rows, cols]` quantized `W`.
#[derive(Clone)]
pub enum Linear {
    /// Our kernels (CPU; Q4_1 or Q8_0 blocks as stored).
    Kernel(Arc<QMatrix>),
    /// candle's quantized matmul (other formats, GPUs).
    Candle(QMatMul),
}

impl Linear {
    /// Our kernels where they apply (a CPU tensor in a format they cover),
    /// candle's otherwise.
    pub fn new(w: QTensor, kernels: CpuKernels) -> Result<Self> {
        if kernels == CpuKernels::Candle {
            return Ok(Self::Candle(QMatMul::from_qtensor(w)?));
        }
        match kernel_matrix(&w)? {
            Some(m) => Ok(Self::Kernel(Arc::new(m))),
            None => Ok(Self::Candle(QMatMul::from_qtensor(w)?)),
        }
    }

    /// Several weights with the same input width stacked into one matrix
    /// (rows concatenated): one matmul instead of several. `None` when the
    /// formats differ, so the rows cannot share one block layout.
    pub fn stacked(weights: &[QTensor], kernels: CpuKernels) -> Result<Option<Self>> {
        let Some(first) = weights.first() else {
            candle_core::bail!("no weights to stack")
        };
        let (dtype, device) = (first.dtype(), first.device());
        let cols = first.shape().dims2()?.1;
        let same = weights
            .iter()
            .all(|w| w.dtype() == dtype && w.shape().dims2().is_ok_and(|(_, c)| c == cols));
        if !same {
            return Ok(None);
        }
        let mut rows = 0;
        let mut parts = Vec::with_capacity(weights.len());
        for w in weights {
            rows += w.shape().dims2()?.0;
            parts.push(w.data()?);
        }
        // One exact allocation, handed to our kernels as it is: growing a
        // buffer, then copying it into candle's storage and again into the
        // kernel matrix left ~40 MiB of freed copies in the heap after load.
        let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in &parts {
            bytes.extend_from_slice(part);
        }
        drop(parts);
        if kernels == CpuKernels::Ours
            && device.is_cpu()
            && let Some(ty) = kernel_type(dtype)
        {
            let m = QMatrix::new(ty, rows, cols, bytes)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            return Ok(Some(Self::Kernel(Arc::new(m))));
        }
        let storage = QStorage::from_data(Cow::Owned(bytes), &device, dtype)?;
        Self::new(QTensor::new(storage, (rows, cols))?, kernels).map(Some)
    }

    /// The matrix our kernels multiply, when they run this layer.
    pub fn kernel(&self) -> Option<&Arc<QMatrix>> {
        match self {
            Self::Kernel(m) => Some(m),
            Self::Candle(_) => None,
        }
    }

    /// Rows of `ids` as f32 vectors (embedding lookup), `[n, cols]`.
    pub fn embedding(&self, ids: &[u32]) -> Result<Tensor> {
        match self {
            Self::Kernel(m) => {
                let cols = m.cols();
                let mut out = vec![0f32; ids.len() * cols];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(cols)) {
                    let id = id as usize;
                    if id >= m.rows() {
                        candle_core::bail!("token id {id} outside the {} embeddings", m.rows());
                    }
                    m.dequantize_row(id, row);
                }
                Tensor::from_vec(out, (ids.len(), cols), &candle_core::Device::Cpu)
            }
            Self::Candle(QMatMul::QTensor(t)) => t.embedding(&Tensor::new(ids, &t.device())?),
            Self::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.embedding(&Tensor::new(ids, t.device())?)
            }
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Kernel(m) => x.apply_op1_no_bwd(&KernelMatMul(m.clone())),
            Self::Candle(m) => m.forward(x),
        }
    }
}

/// The block formats our kernels multiply.
fn kernel_type(dtype: GgmlDType) -> Option<WeightType> {
    match dtype {
        GgmlDType::Q4_1 => Some(WeightType::Q4_1),
        GgmlDType::Q8_0 => Some(WeightType::Q8_0),
        _ => None,
    }
}

fn kernel_matrix(w: &QTensor) -> Result<Option<QMatrix>> {
    let Some(ty) = kernel_type(w.dtype()) else {
        return Ok(None);
    };
    if !w.device().is_cpu() {
        return Ok(None);
    }
    let Ok((rows, cols)) = w.shape().dims2() else {
        return Ok(None);
    };
    QMatrix::new(ty, rows, cols, w.data()?.into_owned())
        .map(Some)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// The kernel matmul as a candle op on f32 CPU tensors `[.., cols]`.
struct KernelMatMul(Arc<QMatrix>);

impl CustomOp1 for KernelMatMul {
    fn name(&self) -> &'static str {
        "securechat-qmatmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let m = &self.0;
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: f32 activations expected", self.name())
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: contiguous activations expected", self.name())
        };
        let x = &data[start..end];
        let mut dims = layout.shape().dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == m.cols() => *last = m.rows(),
            _ => candle_core::bail!(
                "{}: input {:?} does not end in {} columns",
                self.name(),
                layout.shape(),
                m.cols()
            ),
        }
        let mut out = vec![0f32; x.len() / m.cols() * m.rows()];
        m.matmul(x, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// max |a - b| over all elements.
    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
        let mut state = seed;
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    /// Our kernels and candle's quantized matmul agree on the same blocks
    /// (both quantize activations to 8 bits, so up to rounding).
    #[test]
    fn kernel_matmul_agrees_with_candle() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = QTensor::quantize(&random(48, 64, 1), dtype).unwrap();
            let ours = Linear::new(w, CpuKernels::Ours).unwrap();
            assert!(matches!(ours, Linear::Kernel(_)));
            let theirs =
                QMatMul::from_qtensor(QTensor::quantize(&random(48, 64, 1), dtype).unwrap())
                    .unwrap();
            for tokens in [1, 5] {
                let x = random(tokens, 64, 2);
                let a: Vec<f32> = ours
                    .forward(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let b: Vec<f32> = theirs
                    .forward(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert_eq!(a.len(), 48 * tokens);
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max);
                assert!(worst < 0.05, "{dtype:?}, {tokens} tokens: max |Δ| {worst}");
            }
        }
    }

    /// Several tokens in one call give each token what it gets alone, at
    /// model-like sizes (several tasks per thread, partial tiles).
    #[test]
    fn batched_tokens_equal_one_at_a_time() {
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let w = Linear::new(
                QTensor::quantize(&random(1000, 576, 5), dtype).unwrap(),
                CpuKernels::Ours,
            )
            .unwrap();
            let x = random(11, 576, 6);
            let batched = w.forward(&x).unwrap();
            for t in 0..11 {
                let alone = w.forward(&x.narrow(0, t, 1).unwrap()).unwrap();
                let diff: f32 = max_diff(&batched.narrow(0, t, 1).unwrap(), &alone);
                assert_eq!(diff, 0.0, "{dtype:?}, token {t}");
            }
        }
    }

    #[test]
    fn stacked_rows_equal_separate_matmuls() {
        let parts: Vec<QTensor> = [(16, 1), (32, 2)]
            .iter()
            .map(|&(rows, seed)| {
                QTensor::quantize(&random(rows, 64, seed), GgmlDType::Q4_1).unwrap()
            })
            .collect();
        let x = random(3, 64, 9);
        let stacked = Linear::stacked(&parts, CpuKernels::Ours)
            .unwrap()
            .unwrap()
            .forward(&x)
            .unwrap();
        assert_eq!(stacked.dims(), &[3, 48]);
        let mut offset = 0;
        for (rows, seed) in [(16, 1), (32, 2)] {
            let alone = Linear::new(
                QTensor::quantize(&random(rows, 64, seed), GgmlDType::Q4_1).unwrap(),
                CpuKernels::Ours,
            )
            .unwrap()
            .forward(&x)
            .unwrap();
            let part = stacked.narrow(1, offset, rows).unwrap();
            let diff: f32 = max_diff(&part, &alone);
            assert_eq!(diff, 0.0);
            offset += rows;
        }
    }

    #[test]
    fn embedding_rows_are_dequantized_weights() {
        let dense = random(10, 64, 3);
        let w = QTensor::quantize(&dense, GgmlDType::Q8_0).unwrap();
        let exact = w.dequantize(&Device::Cpu).unwrap();
        let table = Linear::new(w, CpuKernels::Ours).unwrap();
        let got = table.embedding(&[7, 0, 7]).unwrap();
        assert_eq!(got.dims(), &[3, 64]);
        let want = exact
            .index_select(&Tensor::new(&[7u32, 0, 7], &Device::Cpu).unwrap(), 0)
            .unwrap();
        let diff: f32 = max_diff(&got, &want);
        assert!(diff < 1e-6);
        assert!(
            table.embedding(&[10]).is_err(),
            "out-of-range id must be an error"
        );
    }

    #[test]
    fn other_formats_fall_back_to_candle() {
        let w = QTensor::quantize(&random(8, 256, 4), GgmlDType::Q4K).unwrap();
        assert!(matches!(
            Linear::new(w, CpuKernels::Ours).unwrap(),
            Linear::Candle(_)
        ));
    }
}
