//! Helpers shared by the inference tests that need the real model.
#![allow(dead_code)] // each test binary uses a different subset

pub mod glm_checkpoint;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use securechat_server::engine::{
    Caller, ChatMessage, Engine, EngineError, FinishReason, GenerationEvent, GenerationRequest,
    GenerationStream, Role, SamplingParams, Usage,
};
use securechat_server::inference::{
    EngineOptions, LoadedModel, SeqStep, ServingOptions, default_model_path, load_engine,
};

/// The default model; a missing file fails the test (it must not skip).
pub fn model_path() -> PathBuf {
    let path = default_model_path().expect("HOME is not set");
    assert!(
        path.exists(),
        "model file {} is missing: run `make model`",
        path.display()
    );
    path
}

/// The default model behind the default scheduler, with room for
/// `max_queue` waiting requests.
pub fn engine(max_queue: usize) -> Arc<dyn Engine> {
    engine_with(ServingOptions {
        max_queue,
        ..ServingOptions::default()
    })
}

pub fn engine_with(serving: ServingOptions) -> Arc<dyn Engine> {
    load_engine(
        &model_path(),
        EngineOptions {
            serving,
            ..EngineOptions::default()
        },
    )
    .expect("loading the default model")
}

pub fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: Role::User,
        content: text.to_owned(),
    }]
}

pub fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        max_tokens,
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

pub fn request(text: &str, params: SamplingParams) -> GenerationRequest {
    GenerationRequest {
        messages: user(text),
        params,
        caller: Caller::default(),
    }
}

/// Everything one generation streamed.
#[derive(Debug)]
pub struct Collected {
    pub pieces: Vec<String>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

impl Collected {
    pub fn text(&self) -> String {
        self.pieces.concat()
    }
}

/// Reads a stream to its end; panics on errors or a missing `Done`.
pub fn collect(mut stream: GenerationStream) -> Collected {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut pieces = Vec::new();
    while let Some(event) = stream.blocking_recv() {
        assert!(Instant::now() < deadline, "generation took too long");
        match event.expect("generation error") {
            GenerationEvent::Text(t) => {
                assert!(!t.is_empty(), "empty Text event");
                pieces.push(t);
            }
            GenerationEvent::Done {
                finish_reason,
                usage,
            } => {
                assert!(stream.blocking_recv().is_none(), "events after Done");
                return Collected {
                    pieces,
                    finish_reason,
                    usage,
                };
            }
        }
    }
    panic!("stream ended without Done")
}

pub fn run(engine: &dyn Engine, req: GenerationRequest) -> Collected {
    collect(engine.generate(req).expect("generate"))
}

pub fn wait_until_idle(engine: &dyn Engine, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while engine.queue_depth() > 0 {
        if Instant::now() > deadline {
            return Err(format!(
                "queue depth still {} after {within:?}",
                engine.queue_depth()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

pub fn is_queue_full(r: &Result<GenerationStream, EngineError>) -> bool {
    matches!(r, Err(EngineError::QueueFull { .. }))
}

/// Runs `prompts` alone through `alone`'s single-sequence API, then
/// together through `batched`'s batched step (their blocks interleaved in
/// the pool): the prompt, then `steps - 1` greedy tokens picked from the
/// logits alone. Returns per sequence and step the largest |Δ| between the
/// two, relative to the logit scale alone, and whether their argmax agrees.
pub fn batched_against_alone(
    alone: &mut LoadedModel,
    batched: &mut LoadedModel,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Vec<Vec<(f32, bool)>> {
    use securechat_kernels::attention::BLOCK_TOKENS;
    let argmax =
        |v: &[f32]| (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best }) as u32;
    let expected: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|prompt| {
            let mut out = vec![alone.model.forward(prompt, 0).unwrap()];
            for step in 1..steps {
                let t = argmax(out.last().unwrap());
                out.push(alone.model.forward(&[t], prompt.len() + step - 1).unwrap());
            }
            out
        })
        .collect();

    let n = prompts.len();
    let per_sequence = batched.model.context_length().div_ceil(BLOCK_TOKENS);
    let paged = batched.model.paged().expect("a batched pass");
    paged.allocate_pool(n * per_sequence).unwrap();
    // Sequence i holds blocks i, i + n, i + 2n, ...
    let tables: Vec<Vec<u32>> = (0..n)
        .map(|i| (0..per_sequence).map(|b| (i + b * n) as u32).collect())
        .collect();
    let mut found = vec![Vec::new(); n];
    for step in 0..steps {
        let inputs: Vec<Vec<u32>> = (0..n)
            .map(|i| match step {
                0 => prompts[i].clone(),
                _ => vec![argmax(&expected[i][step - 1])],
            })
            .collect();
        let batch: Vec<SeqStep<'_>> = (0..n)
            .map(|i| SeqStep {
                tokens: &inputs[i],
                pos: if step == 0 {
                    0
                } else {
                    prompts[i].len() + step - 1
                },
                blocks: &tables[i],
                tiled_below: 0,
                logits: true,
            })
            .collect();
        let logits = paged.step(&batch).unwrap();
        assert_eq!(logits.len(), n);
        for i in 0..n {
            let want = &expected[i][step];
            assert_eq!(logits[i].len(), want.len());
            let scale = want.iter().fold(0.0f32, |a, x| a.max(x.abs())).max(1e-6);
            let worst = logits[i]
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            found[i].push((worst / scale, argmax(&logits[i]) == argmax(want)));
        }
    }
    found
}

/// Polls `engine` until it runs two sequences at once or has nothing left
/// to run; the most it saw running. Batched means batched: a model without
/// a batched pass is held to one.
pub fn peak_running(engine: &dyn Engine) -> usize {
    let mut most_running = 0;
    loop {
        let stats = engine.stats();
        most_running = most_running.max(stats.running);
        if most_running > 1 || (stats.running == 0 && stats.waiting == 0) {
            return most_running;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
