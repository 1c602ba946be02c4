//! Nanoseconds per 32-value block of the dot products and of a one-token
//! matmul, single-threaded, on an L2-sized and a DRAM-sized matrix:
//!
//!     cargo run --release -p securechat-kernels --example dot_speed
//!
//! Best of several repetitions, so a busy machine inflates it less.

use std::time::Instant;

use securechat_kernels::{BlockQ8_1, QK, QMatrix, WeightType, implementation, quantize_q8_1};

fn blocks(ty: WeightType, rows: usize, cols: usize) -> Vec<u8> {
    let mut state = 1u64;
    let per_row = cols / QK * ty.block_bytes();
    let mut data = vec![0u8; rows * per_row];
    for (i, b) in data.iter_mut().enumerate() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Keep the f16 scale bytes small and finite: every block starts with
        // them, and a random high byte could be an infinity or NaN.
        let in_block = i % ty.block_bytes();
        *b = if in_block < 4 && in_block % 2 == 1 {
            0x20
        } else {
            (state >> 56) as u8
        };
    }
    data
}

fn main() {
    println!("kernels: {}", implementation());
    let cols = 576;
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let mut a = vec![BlockQ8_1::default(); cols / QK];
    quantize_q8_1(&x, &mut a);
    for ty in [WeightType::Q4_1, WeightType::Q8_0] {
        for rows in [1536, 49152] {
            let m = QMatrix::new(ty, rows, cols, blocks(ty, rows, cols)).expect("shape");
            let mut out = vec![0f32; rows];
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let mut best = f64::INFINITY;
            for _ in 0..20 {
                let start = Instant::now();
                pool.install(|| m.matmul(&x, &mut out)).expect("matmul");
                best = best.min(start.elapsed().as_secs_f64());
            }
            let n_blocks = rows * cols / QK;
            println!(
                "{ty:?} [{rows} x {cols}] one token, 1 thread: {:.2} ns/block ({:.2} GB/s of weights)",
                best * 1e9 / n_blocks as f64,
                (n_blocks * ty.block_bytes()) as f64 / best / 1e9
            );
        }
    }
}
