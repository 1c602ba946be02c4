//! The boundary between the HTTP handlers and inference.
//!
//! Handlers never see model types: they hand a validated [`GenerationRequest`]
//! to an [`Engine`] and read [`GenerationEvent`]s from the stream it returns.
//! The engine owns a bounded queue; when it is full, `generate` fails fast
//! with [`EngineError::QueueFull`] (-> 503 + Retry-After) instead of letting
//! memory grow.

use std::time::Duration;

use securechat_crds::v1alpha1::Tier;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::metrics::ServingMetrics;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a conversation. Content is plain text: any template control
/// tokens inside it are data, never structure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// Sampling settings, already validated and clamped to the caller's tier.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Upper bound on generated tokens.
    pub max_tokens: u32,
    /// 0.0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: Option<u32>,
    pub seed: Option<u64>,
    /// 1.0 means no penalty.
    pub repetition_penalty: f32,
    /// Generation stops before any of these strings; they are not emitted.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: 2048,
            temperature: 0.7,
            top_p: 1.0,
            top_k: None,
            seed: None,
            repetition_penalty: 1.0,
            stop: Vec::new(),
        }
    }
}

/// Who asks, for fair scheduling: tiers are served by weight, callers of
/// a tier in turn.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub tier: Tier,
    /// The principal's stable subject (e.g. `key:<id>`).
    pub principal: String,
}

/// A request the handlers have validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub messages: Vec<ChatMessage>,
    pub params: SamplingParams,
    pub caller: Caller,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// max_tokens or the context window was reached.
    Length,
}

/// Token accounting of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// What the engine streams back.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// Newly decoded text (may be empty-free partial UTF-8 is never sent:
    /// the engine only emits complete characters).
    Text(String),
    /// The last event of a successful generation.
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
}

/// A stream of events for one request. Dropping the receiver cancels the
/// generation.
pub type GenerationStream = mpsc::Receiver<Result<GenerationEvent, EngineError>>;

/// What can go wrong, each mapped to an HTTP status by the handlers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The queue is full: 503 with Retry-After.
    #[error("the model is busy: {queued} requests are queued; retry in {}s", retry_after.as_secs())]
    QueueFull {
        queued: usize,
        retry_after: Duration,
    },
    /// The prompt does not fit the context window: 400.
    #[error(
        "the prompt is {prompt_tokens} tokens; this model's context is {context_length} tokens"
    )]
    PromptTooLong {
        prompt_tokens: usize,
        context_length: usize,
    },
    /// A request the engine cannot serve (e.g. no messages): 400.
    #[error("{0}")]
    InvalidRequest(String),
    /// The engine is not loaded or has failed: 503.
    #[error("the model is unavailable: {0}")]
    Unavailable(String),
    /// A failure during generation: 500.
    #[error("inference failed: {0}")]
    Internal(String),
}

/// Static facts about the served model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelInfo {
    /// Id shown in /v1/models and accepted in requests' `model` field.
    pub id: String,
    /// Architecture family, e.g. "llama", "chatglm3", "glm4".
    pub family: String,
    pub context_length: usize,
}

/// What the engine is doing, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Requests waiting for a place (queued or preempted).
    pub waiting: usize,
    /// Sequences in the running batch.
    pub running: usize,
    /// Share of the key/value cache's blocks held by sequences, 0..=1.
    pub kv_cache_usage: f64,
    /// Prompt tokens found in the prefix cache, and looked up, since start.
    pub prefix_cache_hits: u64,
    pub prefix_cache_queries: u64,
}

/// A loaded model behind a bounded queue.
pub trait Engine: Send + Sync + 'static {
    fn info(&self) -> &ModelInfo;

    /// Tokens the rendered prompt of these messages takes, for context checks
    /// and quotas before queueing.
    fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize, EngineError>;

    /// Queues a generation. Returns at once: `QueueFull` when there is no
    /// room, otherwise a stream that yields events as tokens are decoded.
    fn generate(&self, request: GenerationRequest) -> Result<GenerationStream, EngineError>;

    /// Requests waiting or running, for /readyz and metrics.
    fn queue_depth(&self) -> usize;

    /// The scheduler's state; an engine without one reports its depth as
    /// running.
    fn stats(&self) -> EngineStats {
        EngineStats {
            running: self.queue_depth(),
            ..EngineStats::default()
        }
    }

    /// Where the engine records queue times and token latencies, for the
    /// server to export; an engine that records none gets a fresh set.
    fn serving_metrics(&self) -> ServingMetrics {
        ServingMetrics::default()
    }
}
