//! What the scheduler adds to a lone sequence's decode step: the default
//! model decoding greedily through `CausalLm::forward` (no scheduler), and
//! the same model behind the engine the server runs (queue, scheduler
//! thread, batch bookkeeping, sampling, the event channel), round after
//! round in one process so both see the same machine.
//!
//!     cargo run --release -p securechat-server --example engine_overhead [-- TOKENS]
//!
//! Prints per round the median time per generated token of each path and
//! the CPU time per token (summed over the process's threads, from
//! /proc/self/task/*/schedstat: on a shared machine, waiting for a core is
//! not counted), then the medians over all rounds and their difference:
//! the per-step cost of serving one sequence through the scheduler.

use std::time::{Duration, Instant};

use securechat_server::engine::{
    Caller, ChatMessage, GenerationEvent, GenerationRequest, Role, SamplingParams,
};
use securechat_server::inference::{
    EngineOptions, WeightFormat, default_model_path, load_engine, load_model,
};

const ROUNDS: usize = 3;
const PROMPT: &str =
    "Write a long story about a lighthouse keeper and the sea, in many paragraphs.";

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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tokens: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 64,
    };
    let path = default_model_path().ok_or("HOME is not set")?;
    let mut direct = load_model(&path, None, WeightFormat::AsStored)?;
    let engine = load_engine(&path, EngineOptions::default())?;
    let messages = vec![ChatMessage {
        role: Role::User,
        content: PROMPT.into(),
    }];
    let prompt = direct.encoder.encode(&messages)?;
    let (mut all_direct, mut all_engine) = (Vec::new(), Vec::new());
    let (mut cpu_direct, mut cpu_engine) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // The model alone: one forward pass per token, timed each.
        let mut steps = Vec::with_capacity(tokens);
        let mut logits = direct.model.forward(&prompt, 0)?;
        let cpu = cpu_time();
        for i in 0..tokens {
            let next = argmax(&logits);
            let t = Instant::now();
            logits = direct.model.forward(&[next], prompt.len() + i)?;
            steps.push(t.elapsed());
        }
        let d = median(steps);
        let dc = (cpu_time() - cpu) / tokens as u32;

        // The engine: the gaps between streamed tokens, as a client sees
        // them (the first token's prompt excluded).
        let mut stream = engine.generate(GenerationRequest {
            messages: messages.clone(),
            params: SamplingParams {
                max_tokens: tokens as u32,
                temperature: 0.0,
                ..SamplingParams::default()
            },
            caller: Caller::default(),
        })?;
        let mut gaps = Vec::with_capacity(tokens);
        let mut last = None;
        let mut cpu = Duration::ZERO;
        while let Some(event) = stream.blocking_recv() {
            match event? {
                GenerationEvent::Text(_) => {
                    let now = Instant::now();
                    match last {
                        Some(before) => gaps.push(now - before),
                        None => cpu = cpu_time(),
                    }
                    last = Some(now);
                }
                GenerationEvent::Done { .. } => break,
            }
        }
        let n = gaps.len();
        let ec = (cpu_time() - cpu) / n.max(1) as u32;
        let e = median(gaps);
        println!(
            "round {round}: model alone {:.2} ms/token ({:.2} CPU), through the engine {:.2} ms/token ({:.2} CPU; {n} gaps)",
            ms(d),
            ms(dc),
            ms(e),
            ms(ec)
        );
        all_direct.push(d);
        all_engine.push(e);
        cpu_direct.push(dc);
        cpu_engine.push(ec);
    }
    for (what, d, e) in [
        ("wall", median(all_direct), median(all_engine)),
        ("CPU", median(cpu_direct), median(cpu_engine)),
    ] {
        println!(
            "median {what}: model alone {:.2} ms/token, through the engine {:.2} ms/token, scheduler adds {:+.2} ms ({:+.1}%)",
            ms(d),
            ms(e),
            ms(e) - ms(d),
            (e.as_secs_f64() / d.as_secs_f64() - 1.0) * 100.0
        );
    }
    Ok(())
}
