//! What the scheduler adds to a lone sequence's decode step: the default
//! model decoding greedily through `CausalLm::forward` (no scheduler), and
//! the same model behind the engine the server runs (queue, scheduler
//! thread, batch bookkeeping, sampling, the event channel), round after
//! round in one process so both see the same machine.
//!
//!     cargo run --release -p securechat-server --example engine_overhead [-- TOKENS]
//!
//! Prints per round the median time per generated token of each path, then
//! the medians over all rounds and their difference: the per-step cost of
//! serving one sequence through the scheduler.

use std::time::{Duration, Instant};

use securechat_server::engine::{
    Caller, ChatMessage, GenerationEvent, GenerationRequest, Role, SamplingParams,
};
use securechat_server::inference::{
    EngineOptions, WeightFormat, default_model_path, load_engine, load_model,
};

const ROUNDS: usize = 5;
const PROMPT: &str =
    "Write a long story about a lighthouse keeper and the sea, in many paragraphs.";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
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
    for round in 0..ROUNDS {
        // The model alone: one forward pass per token, timed each.
        let mut steps = Vec::with_capacity(tokens);
        let mut logits = direct.model.forward(&prompt, 0)?;
        for i in 0..tokens {
            let next = argmax(&logits);
            let t = Instant::now();
            logits = direct.model.forward(&[next], prompt.len() + i)?;
            steps.push(t.elapsed());
        }
        let d = median(steps);

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
        while let Some(event) = stream.blocking_recv() {
            match event? {
                GenerationEvent::Text(_) => {
                    let now = Instant::now();
                    if let Some(before) = last {
                        gaps.push(now - before);
                    }
                    last = Some(now);
                }
                GenerationEvent::Done { .. } => break,
            }
        }
        let n = gaps.len();
        let e = median(gaps);
        println!(
            "round {round}: model alone {:.2} ms/token, through the engine {:.2} ms/token ({n} gaps)",
            d.as_secs_f64() * 1e3,
            e.as_secs_f64() * 1e3
        );
        all_direct.push(d);
        all_engine.push(e);
    }
    let (d, e) = (median(all_direct), median(all_engine));
    println!(
        "median: model alone {:.2} ms/token, through the engine {:.2} ms/token, scheduler adds {:+.2} ms ({:+.1}%)",
        d.as_secs_f64() * 1e3,
        e.as_secs_f64() * 1e3,
        (e.as_secs_f64() - d.as_secs_f64()) * 1e3,
        (e.as_secs_f64() / d.as_secs_f64() - 1.0) * 100.0
    );
    Ok(())
}
