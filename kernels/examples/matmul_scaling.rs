//! The matrix products of one decode step of the default model (SmolLM2
//! 135M: 30 layers of 576 wide, MLP 1536, a 49,152-row output table) for a
//! batch of N tokens against one token, on random Q4_1 weights, on the
//! thread pool as the model runs them. A batch of N costs this many single
//! steps of matmul work; the engine's aggregate tokens/s over one stream
//! can be at most N over it.
//!
//!     cargo run --release -p securechat-kernels --example matmul_scaling [-- 4 8 16]
//!
//! Prints, per N, the best of 7 timings of both (taken alternately) and
//! their ratio, in CPU time summed over the process's threads (from
//! /proc/self/task/*/schedstat): on a machine shared with other work, the
//! time a step waits for a core is no cost of the kernels. Run it with
//! `RAYON_NUM_THREADS=1` there, so idle pool threads spinning for work add
//! nothing either.
//!
//! Measured so (2026-12-06, AMD EPYC with AVX2 and no VNNI, load average
//! 22-27 from other builds, one thread): 16 tokens cost 7.5-9.2x one
//! token's CPU time (109-137 ms against 13-16 ms), so the matmuls alone let
//! a batch of 16 make 1.7-2.1x one stream's tokens per CPU second (the
//! engine's 2.3-2.6x over one stream in bench-concurrency adds what a lone
//! stream pays per step and a batch shares: thread hand-offs, the HTTP
//! side). Per 32-weight block and token the batched kernel is down to
//! maddubs, madd, convert and fma, llama.cpp's AVX2 sequence as well. Tried
//! and dropped: eight tokens per weight row instead of four (9.3-11.4x,
//! slower: eight accumulators and their operands crowd the 16 registers)
//! and each block's four scales and min terms as one vector multiply
//! (114-120 ms against 109-117 ms, no gain: those scalar products run
//! beside the integer ones).

use std::time::Duration;

use half::f16;
use securechat_kernels::{QMatrix, WeightType, on_pool};

const HIDDEN: usize = 576;
const QKV: usize = 576 + 2 * 192;
const FFN: usize = 1536;
const VOCAB: usize = 49_152;
const LAYERS: usize = 30;
const ROUNDS: usize = 7;

/// A deterministic Q4_1 matrix with weights of the model's magnitudes.
fn matrix(rows: usize, cols: usize, seed: u32) -> QMatrix {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let blocks = rows * cols / 32;
    let mut data = Vec::with_capacity(blocks * WeightType::Q4_1.block_bytes());
    for _ in 0..blocks {
        let d = f16::from_f32(0.001 + (next() % 1000) as f32 * 4e-5);
        let m = f16::from_f32(-((next() % 1000) as f32) * 4e-4);
        data.extend_from_slice(&d.to_le_bytes());
        data.extend_from_slice(&m.to_le_bytes());
        data.extend((0..16).map(|_| next() as u8));
    }
    QMatrix::new(WeightType::Q4_1, rows, cols, data).expect("shape")
}

struct Model {
    layers: Vec<[QMatrix; 4]>,
    output: QMatrix,
}

impl Model {
    /// Every matmul of a decode step over `n` token rows; the CPU time it
    /// took.
    fn step(&self, n: usize) -> Duration {
        let x = vec![0.25f32; n * FFN.max(HIDDEN)];
        let mut out = vec![0f32; n * VOCAB];
        let t = cpu_time();
        on_pool(|| {
            for [qkv, wo, gate_up, down] in &self.layers {
                for m in [qkv, wo, gate_up, down] {
                    let (rows, cols) = (m.rows(), m.cols());
                    m.matmul(&x[..n * cols], &mut out[..n * rows])
                        .expect("shapes");
                }
            }
            self.output
                .matmul(&x[..n * HIDDEN], &mut out[..n * VOCAB])
                .expect("shapes");
        });
        cpu_time().saturating_sub(t)
    }
}

/// CPU time of every thread of this process so far.
fn cpu_time() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![4, 8, 16]
    } else {
        sizes
    };
    let model = Model {
        layers: (0..LAYERS as u32)
            .map(|l| {
                [
                    matrix(QKV, HIDDEN, 4 * l + 1),
                    matrix(HIDDEN, HIDDEN, 4 * l + 2),
                    matrix(2 * FFN, HIDDEN, 4 * l + 3),
                    matrix(HIDDEN, FFN, 4 * l + 4),
                ]
            })
            .collect(),
        output: matrix(VOCAB, HIDDEN, 999),
    };
    println!("kernels: {}", securechat_kernels::implementation());
    for n in sizes {
        let (mut one, mut many) = (Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            one = one.min(model.step(1));
            many = many.min(model.step(n));
        }
        println!(
            "N={n}: one token {:.1} ms, {n} tokens {:.1} ms: {:.2}x one token's time, {:.2}x its tokens/s",
            one.as_secs_f64() * 1e3,
            many.as_secs_f64() * 1e3,
            many.as_secs_f64() / one.as_secs_f64(),
            n as f64 * one.as_secs_f64() / many.as_secs_f64()
        );
    }
    Ok(())
}
