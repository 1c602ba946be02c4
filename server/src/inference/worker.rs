//! The [`Engine`] implementation: one worker thread owns the model and serves
//! requests from a bounded queue, one at a time (on a 2-core machine a second
//! concurrent generation buys little and doubles memory traffic).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::decode_loop::{Ending, Stage, TextSink, generate};
use super::error::{InferenceError, Result};
use super::model::CausalLm;
use super::prompt::PromptEncoder;
use crate::engine::{
    ChatMessage, Engine, EngineError, GenerationEvent, GenerationRequest, GenerationStream,
    ModelInfo,
};

type EventSender = mpsc::Sender<Result<GenerationEvent, EngineError>>;

struct Job {
    prompt: Vec<u32>,
    request: GenerationRequest,
    seed: u64,
    events: EventSender,
}

/// The queue's load, shared by the handle (it refuses work when full and
/// estimates Retry-After) and the worker thread (it counts work done).
struct QueueLoad {
    /// Accepted and not yet finished (queued + running).
    in_flight: AtomicUsize,
    /// Moving average of request durations in milliseconds, for Retry-After.
    avg_request_ms: AtomicU64,
}

pub struct LocalEngine {
    info: ModelInfo,
    encoder: Arc<PromptEncoder>,
    queue: SyncSender<Job>,
    capacity: usize,
    shared: Arc<QueueLoad>,
}

/// A first guess before any request has finished.
const INITIAL_REQUEST_MS: u64 = 2_000;

impl LocalEngine {
    /// Starts the worker thread. `queue_capacity` counts requests waiting
    /// behind the running one.
    pub fn start(
        model: Box<dyn CausalLm>,
        encoder: PromptEncoder,
        info: ModelInfo,
        queue_capacity: usize,
    ) -> Result<Self> {
        let (tx, rx) = sync_channel::<Job>(queue_capacity);
        let encoder = Arc::new(encoder);
        let shared = Arc::new(QueueLoad {
            in_flight: AtomicUsize::new(0),
            avg_request_ms: AtomicU64::new(INITIAL_REQUEST_MS),
        });
        let worker_encoder = encoder.clone();
        let worker_shared = shared.clone();
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || run_worker(model, &worker_encoder, &worker_shared, rx))
            .map_err(|e| InferenceError::Worker(e.to_string()))?;
        Ok(Self {
            info,
            encoder,
            queue: tx,
            capacity: queue_capacity,
            shared,
        })
    }

    fn retry_after(&self, queued: usize) -> Duration {
        let avg = self.shared.avg_request_ms.load(Ordering::Relaxed);
        // Wait for the queue ahead to drain, rounded up to whole seconds
        // (Retry-After has second resolution) and at least one.
        let ms = avg.saturating_mul(queued as u64 + 1);
        Duration::from_secs(ms.div_ceil(1000).max(1))
    }
}

fn engine_error(e: InferenceError) -> EngineError {
    match e {
        InferenceError::Template(_) | InferenceError::Tokenizer(_) => {
            EngineError::InvalidRequest(e.to_string())
        }
        other => EngineError::Internal(other.to_string()),
    }
}

impl Engine for LocalEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize, EngineError> {
        self.encoder
            .encode(messages)
            .map(|p| p.len())
            .map_err(engine_error)
    }

    fn generate(&self, request: GenerationRequest) -> Result<GenerationStream, EngineError> {
        if request.messages.is_empty() {
            return Err(EngineError::InvalidRequest(
                "at least one message is required".into(),
            ));
        }
        let prompt = self
            .encoder
            .encode(&request.messages)
            .map_err(engine_error)?;
        let context_length = self.info.context_length;
        // At least one position must remain for the first generated token.
        if prompt.len() >= context_length {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt.len(),
                context_length,
            });
        }
        // Room for every event of this request: the worker never blocks on a
        // slow reader (which would stall everyone queued behind it).
        let max_events = (request.params.max_tokens as usize).min(context_length) + 2;
        let (events, stream) = mpsc::channel(max_events);
        let seed = request.params.seed.unwrap_or_else(rand::random);
        let job = Job {
            prompt,
            request,
            seed,
            events,
        };

        // Count first so a fast worker never sees the counter below zero.
        let queued = self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(job) {
            Ok(()) => Ok(stream),
            Err(err) => {
                self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                match err {
                    TrySendError::Full(_) => Err(EngineError::QueueFull {
                        queued: queued.min(self.capacity + 1),
                        retry_after: self.retry_after(queued),
                    }),
                    TrySendError::Disconnected(_) => Err(EngineError::Unavailable(
                        "the inference worker has stopped".into(),
                    )),
                }
            }
        }
    }

    fn queue_depth(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }
}

/// Streams text into the request's channel.
struct ChannelSink<'a> {
    events: &'a EventSender,
}

impl TextSink for ChannelSink<'_> {
    fn text(&mut self, text: String) -> bool {
        // The channel has room for every event (see `generate`), so a full
        // channel cannot happen; a closed one means the client left.
        self.events
            .try_send(Ok(GenerationEvent::Text(text)))
            .is_ok()
    }

    fn cancelled(&self) -> bool {
        self.events.is_closed()
    }
}

fn run_worker(
    mut model: Box<dyn CausalLm>,
    encoder: &PromptEncoder,
    shared: &QueueLoad,
    jobs: Receiver<Job>,
) {
    while let Ok(job) = jobs.recv() {
        let started = Instant::now();
        // A client that left while its job waited: dropped before it starts,
        // and kept out of the average (it took no time).
        if job.events.is_closed() {
            log_cancelled(Stage::Queued, job.prompt.len(), 0);
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        serve(model.as_mut(), encoder, &job);
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        let ms = started.elapsed().as_millis() as u64;
        // Exponential moving average, weight 1/4 for the newest request.
        let _ = shared
            .avg_request_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some((avg * 3 + ms) / 4)
            });
    }
}

/// Cancellations are counted by the request side
/// (`securechat_generations_abandoned_total`); the stage is only known here.
fn log_cancelled(stage: Stage, prompt_tokens: usize, completion_tokens: u32) {
    tracing::info!(
        stage = stage.as_str(),
        prompt_tokens,
        completion_tokens,
        "generation cancelled: the client went away"
    );
}

fn serve(model: &mut dyn CausalLm, encoder: &PromptEncoder, job: &Job) {
    let mut sink = ChannelSink {
        events: &job.events,
    };
    let params = &job.request.params;
    // A panic inside the tensor code must fail this request, not the engine.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        generate(
            model,
            &encoder.tokenizer,
            &job.prompt,
            params,
            job.seed,
            &mut sink,
        )
    }));
    let event = match outcome {
        Ok(Ok(report)) => {
            tracing::debug!(
                prompt_tokens = report.usage.prompt_tokens,
                completion_tokens = report.usage.completion_tokens,
                prefill_ms = report.prefill.as_millis() as u64,
                decode_ms = report.decode.as_millis() as u64,
                ttft_ms = report.time_to_first_token.map(|d| d.as_millis() as u64),
                "generation finished"
            );
            match report.ending {
                Ending::Finished(finish_reason) => Ok(GenerationEvent::Done {
                    finish_reason,
                    usage: report.usage,
                }),
                Ending::Cancelled(stage) => {
                    log_cancelled(stage, job.prompt.len(), report.usage.completion_tokens);
                    return;
                }
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, kind = e.metric_label(), "generation failed");
            Err(EngineError::Internal(e.to_string()))
        }
        Err(_) => {
            tracing::error!("generation panicked");
            Err(EngineError::Internal(
                "the model failed on this request".into(),
            ))
        }
    };
    let _ = job.events.try_send(event);
}
