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
    EngineOptions, ServingOptions, default_model_path, load_engine,
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
