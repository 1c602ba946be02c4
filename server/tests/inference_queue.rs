//! The inference queue at ten times its depth: what does not fit is refused
//! at once (503 model_busy upstream), nothing blocks, and memory stays flat
//! however many bursts come. The model is a stand-in that holds every
//! forward pass until the test opens a gate (the real one would make the
//! timing depend on the machine); the tokenizer is the default model's.

mod inference_support;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use inference_support::{collect, greedy, model_path, request, wait_until_idle};
use securechat_server::engine::{Engine, EngineError, FinishReason};
use securechat_server::inference::{
    CausalLm, InferenceError, LocalEngine, ServingOptions, WeightFormat, load_model,
};

const DEPTH: usize = 4;
const ROUNDS: usize = 30;

/// Open or shut; forward passes wait while it is shut.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.changed.notify_all();
    }
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.changed.wait(open).unwrap();
        }
    }
}

/// Answers end-of-sequence at once, when the gate lets it.
struct GatedModel {
    gate: Arc<Gate>,
    vocab: usize,
    eos: u32,
    context: usize,
}

impl CausalLm for GatedModel {
    fn forward(&mut self, _tokens: &[u32], _pos: usize) -> Result<Vec<f32>, InferenceError> {
        self.gate.wait();
        let mut logits = vec![0.0; self.vocab];
        logits[self.eos as usize] = 100.0;
        Ok(logits)
    }
    fn context_length(&self) -> usize {
        self.context
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
}

/// Resident memory of this process in KiB (Linux).
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

#[test]
fn ten_times_the_depth_is_refused_at_once_with_flat_memory() {
    let loaded = load_model(&model_path(), None, WeightFormat::AsStored).unwrap();
    let tokenizer = &loaded.encoder.tokenizer;
    let gate = Arc::new(Gate::default());
    let model = GatedModel {
        gate: gate.clone(),
        vocab: tokenizer.vocab_size(),
        eos: tokenizer.eos,
        context: loaded.info.context_length,
    };
    drop(loaded.model);
    // A model without a paged forward pass runs one request at a time.
    let serving = ServingOptions {
        max_queue: DEPTH,
        ..ServingOptions::default()
    };
    let engine = LocalEngine::start(Box::new(model), loaded.encoder, loaded.info, serving).unwrap();
    let prompt = "a few words of prompt ".repeat(100);
    let mut rss = Vec::new();
    let mut peak_depth = 0;
    for round in 0..ROUNDS {
        gate.set(false);
        let started = Instant::now();
        let mut accepted = Vec::new();
        let mut refused = 0;
        for _ in 0..10 * DEPTH {
            match engine.generate(request(&prompt, greedy(8))) {
                Ok(stream) => accepted.push(stream),
                Err(EngineError::QueueFull { retry_after, .. }) => {
                    assert!(retry_after >= Duration::from_secs(1));
                    refused += 1;
                }
                Err(e) => panic!("round {round}: {e:?}"),
            }
            peak_depth = peak_depth.max(engine.queue_depth());
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round}: submitting took {:?}: generate must not block",
            started.elapsed()
        );
        // The queue, plus the one the worker may already hold.
        assert!(
            (DEPTH..=DEPTH + 1).contains(&accepted.len()),
            "round {round}: {} admitted",
            accepted.len()
        );
        assert_eq!(refused, 10 * DEPTH - accepted.len());
        gate.set(true);
        for stream in accepted {
            assert_eq!(collect(stream).finish_reason, FinishReason::Stop);
        }
        wait_until_idle(&engine, Duration::from_secs(10)).unwrap();
        if let Some(kib) = rss_kib() {
            rss.push(kib);
        }
    }
    assert!(peak_depth <= DEPTH + 1, "queue depth reached {peak_depth}");
    if rss.len() == ROUNDS {
        // After a few warm-up rounds (allocator pools, tokenizer caches),
        // 25 more bursts of 40 requests must not grow the process.
        let (warm, last) = (rss[4], rss[ROUNDS - 1]);
        eprintln!("RSS after round 5: {warm} KiB, after round {ROUNDS}: {last} KiB");
        assert!(
            last <= warm + 4 * 1024,
            "resident memory grew from {warm} KiB to {last} KiB over {} bursts",
            ROUNDS - 5
        );
    }
}
