//! Cost of one batched decode step of the default model by batch size: N
//! sequences of 64 cached positions each decode one token together.
//!
//!     cargo run --release -p securechat-server --example step_scaling [-- 1 4 16]
//!
//! Prints, per N, the best of 5 steps and the tokens/s that makes.

use std::time::{Duration, Instant};

use securechat_server::inference::{SeqStep, WeightFormat, default_model_path, load_model};

const CACHED: usize = 64;
const BLOCK: usize = 16;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![1, 4, 16]
    } else {
        sizes
    };
    let path = default_model_path().ok_or("HOME is not set")?;
    let mut loaded = load_model(&path, None, WeightFormat::AsStored)?;
    let model = loaded.model.paged().ok_or("no paged forward pass")?;
    let max = sizes.iter().copied().max().unwrap_or(1);
    let per_seq = (CACHED + 8) / BLOCK + 1;
    model.allocate_pool(max * per_seq)?;
    let tables: Vec<Vec<u32>> = (0..max)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let prompt: Vec<u32> = (0..CACHED as u32).map(|i| 100 + i).collect();
    // Fill every sequence's cache with the same 64-token prompt.
    for table in &tables {
        model.step(&[SeqStep {
            tokens: &prompt,
            pos: 0,
            blocks: table,
            tiled_below: CACHED,
            logits: false,
        }])?;
    }
    let token = [42u32];
    for &n in &sizes {
        let batch: Vec<SeqStep<'_>> = tables[..n]
            .iter()
            .map(|t| SeqStep {
                tokens: &token,
                pos: CACHED,
                blocks: t,
                tiled_below: CACHED,
                logits: true,
            })
            .collect();
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let started = Instant::now();
            model.step(&batch)?;
            best = best.min(started.elapsed());
        }
        println!(
            "{n:>3} sequences: step {:>7.1} ms = {:>6.1} tokens/s",
            best.as_secs_f64() * 1e3,
            n as f64 / best.as_secs_f64()
        );
    }
    Ok(())
}
