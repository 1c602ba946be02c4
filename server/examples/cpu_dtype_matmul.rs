//! How fast candle's CPU matmul multiplies a GLM-6B-sized weight in each
//! number format `spec.model.dtype` offers: the measurement behind Auto
//! choosing F16 on the CPU.
//!
//!     cargo run --release -p securechat-server --example cpu_dtype_matmul
//!
//! The weight is ChatGLM3-6B's attention output projection (4096 x 4096)
//! and its MLP down-projection (4096 x 13696); the activations are 1
//! (decode), 8 and 32 rows. Best of 5 runs per case, printed as
//! milliseconds and as the weight bytes read per second.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

fn main() -> candle_core::Result<()> {
    let device = Device::Cpu;
    for (rows, cols) in [(4096usize, 4096usize), (4096, 13696)] {
        let w32 = Tensor::randn(0f32, 0.02, (rows, cols), &device)?;
        for m in [1usize, 8, 32] {
            let x32 = Tensor::randn(0f32, 1.0, (m, cols), &device)?;
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let w = w32.to_dtype(dtype)?;
                let x = x32.to_dtype(dtype)?;
                let wt = w.t()?;
                let mut best = f64::INFINITY;
                for _ in 0..5 {
                    let start = Instant::now();
                    let y = x.matmul(&wt)?;
                    best = best.min(start.elapsed().as_secs_f64());
                    drop(y);
                }
                let bytes = (rows * cols * dtype.size_in_bytes()) as f64;
                println!(
                    "{rows}x{cols} weight, {m:>2} rows, {:>5}: {:8.2} ms, {:6.1} GB/s of weights",
                    format!("{dtype:?}"),
                    best * 1e3,
                    bytes / best / 1e9
                );
            }
        }
    }
    Ok(())
}
