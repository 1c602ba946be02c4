//! Aggregate throughput and time to first token of the default model under
//! N concurrent requests, in process (no HTTP or TLS), through the same
//! scheduler the server uses.
//!
//!     cargo run --release -p securechat-server --example batch_speed [-- 1 4 16]
//!
//! Each level starts N greedy requests at once, each with its own prompt
//! (~40 tokens, a different first line so nothing comes from the prefix
//! cache) and 64 tokens to generate (end-of-sequence allowed: the count of
//! tokens actually generated is what the rate divides). Prints one line
//! per level: generated tokens/s over the wall time, and the median and
//! worst time to first text.

use std::sync::Arc;
use std::time::{Duration, Instant};

use securechat_server::engine::{
    Caller, ChatMessage, Engine, GenerationEvent, GenerationRequest, Role, SamplingParams,
};
use securechat_server::inference::{EngineOptions, default_model_path, load_engine};

const MAX_TOKENS: u32 = 64;

fn request(i: usize, round: usize) -> GenerationRequest {
    GenerationRequest {
        messages: vec![ChatMessage {
            role: Role::User,
            content: format!(
                "Request {i} of round {round}. Write a short paragraph about harbours, ships and the weather at sea."
            ),
        }],
        params: SamplingParams {
            max_tokens: MAX_TOKENS,
            temperature: 0.0,
            ..SamplingParams::default()
        },
        caller: Caller::default(),
    }
}

/// Runs `n` requests at once; returns (tokens generated, wall time, times
/// to first text).
fn level(engine: &Arc<dyn Engine>, n: usize, round: usize) -> (u64, Duration, Vec<Duration>) {
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let mut stream = engine.generate(request(i, round)).expect("admitted");
            std::thread::spawn(move || {
                let mut first = None;
                let mut tokens = 0;
                while let Some(event) = stream.blocking_recv() {
                    match event.expect("generation") {
                        GenerationEvent::Text(_) => {
                            first.get_or_insert_with(|| started.elapsed());
                        }
                        GenerationEvent::Done { usage, .. } => {
                            tokens = u64::from(usage.completion_tokens);
                        }
                    }
                }
                (tokens, first.unwrap_or_else(|| started.elapsed()))
            })
        })
        .collect();
    let mut total = 0;
    let mut ttft = Vec::new();
    for h in handles {
        let (tokens, first) = h.join().expect("reader thread");
        total += tokens;
        ttft.push(first);
    }
    ttft.sort();
    (total, started.elapsed(), ttft)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let levels: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let levels = if levels.is_empty() {
        vec![1, 4, 16]
    } else {
        levels
    };
    let path = default_model_path().ok_or("HOME is not set")?;
    let engine = load_engine(&path, EngineOptions::default())?;
    // Warm-up: page the weights in, start the thread pool.
    level(&engine, 1, 0);
    for (round, &n) in levels.iter().enumerate() {
        let (tokens, wall, ttft) = level(&engine, n, round + 1);
        println!(
            "{n:>3} concurrent: {tokens:>5} tokens in {:>6.2} s = {:>6.1} tokens/s; time to first text median {:>6.0} ms, worst {:>6.0} ms",
            wall.as_secs_f64(),
            tokens as f64 / wall.as_secs_f64(),
            ttft[ttft.len() / 2].as_secs_f64() * 1e3,
            ttft[ttft.len() - 1].as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
