//! The [`Engine`] implementation: a scheduler thread owns the model and,
//! step after step, runs one batched forward pass over every running
//! sequence — a decode token for each generating one plus prompt chunks of
//! newly admitted ones (chunked prefill: a long prompt delays everyone's
//! next token by at most one chunk). Sequences join and leave between
//! steps (continuous batching).
//!
//! Around the model:
//! - requests wait in a [`FairQueue`] (per tier by weight, round-robin
//!   between callers inside a tier), bounded: a full queue is refused at
//!   once with a Retry-After from the measured service time;
//! - keys and values live in blocks of a pool ([`BlockManager`]): a
//!   request is admitted when the blocks for its whole prompt are free,
//!   and full blocks are kept by prefix for the next prompt that starts
//!   the same way (a conversation's earlier turns, a system prompt);
//! - when the pool runs out mid-generation, the newest sequence of the
//!   lowest tier is preempted: its blocks are released and it waits at the
//!   head of the queue, then recomputes what it had (mostly from the
//!   prefix cache) and goes on where it stopped. Nothing runs out of
//!   memory, and its answer is the one it would have given uninterrupted:
//!   sampling state is kept, and recomputed positions are summed as
//!   before.
//!
//! Every model's pass is batched: both llama passes (ours on the CPU,
//! candle's on a GPU) and GLM's (candle ops, `inference/glm/candle.rs`).
//! A model without a batched pass ([`CausalLm::paged`] is `None`) would run
//! through the same scheduler one sequence at a time.

mod blocks;
mod queue;
mod sequence;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use securechat_crds::v1alpha1::{ServingSpec, TierWeights};
use securechat_kernels::attention::BLOCK_TOKENS;
use tokio::sync::mpsc;

use self::blocks::{BlockManager, PrefixKey};
use self::queue::FairQueue;
use self::sequence::{Outcome, Sequence};
use super::error::{InferenceError, Result};
use super::model::{CausalLm, SeqStep};
use super::prompt::PromptEncoder;
use crate::engine::{
    ChatMessage, Engine, EngineError, EngineStats, FinishReason, GenerationRequest,
    GenerationStream, ModelInfo,
};
use crate::metrics::ServingMetrics;

/// How the scheduler serves: `spec.serving` (whose defaults are in
/// [`ServingSpec`]) in the units the scheduler counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingOptions {
    /// Sequences run together in one step.
    pub max_sequences: usize,
    /// Requests that may wait for a place before `QueueFull`.
    pub max_queue: usize,
    /// Positions the key/value pool holds over all sequences; `None`: a
    /// share of the memory available (see [`kv_cache_tokens`]).
    pub kv_cache_tokens: Option<usize>,
    /// Whether full blocks are kept and shared by prefix.
    pub prefix_cache: bool,
    /// Prompt tokens run per step, over all sequences together: a step
    /// holding a prompt chunk delays everyone's next token by that chunk
    /// and no more.
    pub prefill_chunk_tokens: usize,
    pub tier_weights: TierWeights,
}

impl From<&ServingSpec> for ServingOptions {
    fn from(spec: &ServingSpec) -> Self {
        // The CRD's ranges keep these positive; a hand-written config
        // with a negative number gets the smallest sensible value.
        let count = |n: i32, least: usize| usize::try_from(n).unwrap_or(0).max(least);
        Self {
            max_sequences: count(spec.max_concurrent_sequences, 1),
            max_queue: count(spec.max_queue, 0),
            kv_cache_tokens: spec.kv_cache_tokens.map(|n| count(n, 1)),
            prefix_cache: spec.prefix_cache,
            prefill_chunk_tokens: count(spec.prefill_chunk_tokens, 1),
            tier_weights: spec.tier_weights.clone(),
        }
    }
}

impl Default for ServingOptions {
    fn default() -> Self {
        Self::from(&ServingSpec::default())
    }
}

/// The share of available memory the key/value pool takes by default.
const KV_MEMORY_SHARE: f64 = 0.4;

/// The pool's size in positions: `configured`, or [`KV_MEMORY_SHARE`] of
/// the memory available to this process; never less than one whole
/// context (a lone request must always fit) nor more than every sequence
/// at full context.
pub fn kv_cache_tokens(
    configured: Option<usize>,
    bytes_per_token: usize,
    context_length: usize,
    max_sequences: usize,
) -> usize {
    let wanted = configured.unwrap_or_else(|| match available_memory() {
        Some(bytes) => (bytes as f64 * KV_MEMORY_SHARE) as usize / bytes_per_token.max(1),
        None => context_length * max_sequences.min(4),
    });
    wanted
        .min(context_length * max_sequences)
        .max(context_length)
}

/// Bytes this process may still allocate: the lesser of the machine's
/// available memory and what its cgroup (a pod's limit) has left.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?
        * 1024;
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let cgroup = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(current)) => Some(max.saturating_sub(current)),
        _ => None,
    };
    Some(cgroup.map_or(available, |c| c.min(available)))
}

/// The waiting room, shared by the handle (which adds) and the scheduler
/// (which admits).
struct Inbox {
    queue: FairQueue<Sequence>,
    /// The handle is gone: finish what is there, then stop.
    closing: bool,
}

/// What the handle reads of the scheduler's state.
struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    running: AtomicUsize,
    /// Preempted sequences waiting to resume.
    resuming: AtomicUsize,
    /// Moving average of request service times, for Retry-After.
    avg_request_ms: AtomicU64,
    /// [`BlockManager::usage`], as f64 bits.
    kv_usage: AtomicU64,
    prefix_hits: AtomicU64,
    prefix_queries: AtomicU64,
}

impl Shared {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        // A panic while holding the lock leaves a consistent queue (every
        // mutation is a single call), so a poisoned lock is still usable.
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct LocalEngine {
    info: ModelInfo,
    encoder: Arc<PromptEncoder>,
    shared: Arc<Shared>,
    max_queue: usize,
    max_sequences: usize,
    metrics: ServingMetrics,
}

/// A first guess before any request has finished.
const INITIAL_REQUEST_MS: u64 = 2_000;

impl LocalEngine {
    /// Starts the scheduler thread; `opts.max_queue` counts requests
    /// waiting for a place among the running ones.
    pub fn start(
        mut model: Box<dyn CausalLm>,
        encoder: PromptEncoder,
        info: ModelInfo,
        opts: ServingOptions,
    ) -> Result<Self> {
        let metrics = ServingMetrics::default();
        if opts.max_sequences == 0 || opts.prefill_chunk_tokens == 0 {
            return Err(InferenceError::Unsupported(format!(
                "serving needs at least one sequence and one prompt token per step, got {} and {}",
                opts.max_sequences, opts.prefill_chunk_tokens
            )));
        }
        // `info` carries the configured cap (spec.model.contextLength).
        let context_length = info.context_length.min(model.context_length());
        let (blocks, max_sequences, prefix_cache) = match model.paged() {
            Some(paged) => {
                let tokens = kv_cache_tokens(
                    opts.kv_cache_tokens,
                    paged.bytes_per_token(),
                    context_length,
                    opts.max_sequences,
                );
                // The pool may be larger (the model keeps a context's
                // worth for its single-sequence API); the scheduler uses
                // what it asked for.
                let blocks = tokens.div_ceil(BLOCK_TOKENS);
                paged.allocate_pool(blocks)?;
                tracing::info!(
                    kv_cache_tokens = blocks * BLOCK_TOKENS,
                    kv_cache_mib = (blocks * BLOCK_TOKENS * paged.bytes_per_token()) >> 20,
                    max_sequences = opts.max_sequences,
                    "batched engine"
                );
                (blocks, opts.max_sequences, opts.prefix_cache)
            }
            // One sequence in the model's own cache: the blocks only count.
            None => (context_length.div_ceil(BLOCK_TOKENS), 1, false),
        };
        // Alone in the model, a prompt stalls no one: it runs whole, as
        // the model prefills it.
        let chunk_tokens = match model.paged() {
            Some(_) => opts.prefill_chunk_tokens,
            None => context_length,
        };
        let encoder = Arc::new(encoder);
        let shared = Arc::new(Shared {
            inbox: Mutex::new(Inbox {
                queue: FairQueue::new(opts.tier_weights),
                closing: false,
            }),
            wake: Condvar::new(),
            running: AtomicUsize::new(0),
            resuming: AtomicUsize::new(0),
            avg_request_ms: AtomicU64::new(INITIAL_REQUEST_MS),
            kv_usage: AtomicU64::new(0f64.to_bits()),
            prefix_hits: AtomicU64::new(0),
            prefix_queries: AtomicU64::new(0),
        });
        let scheduler = Scheduler {
            model,
            encoder: encoder.clone(),
            blocks: BlockManager::new(blocks, prefix_cache),
            running: Vec::new(),
            resuming: VecDeque::new(),
            max_sequences,
            chunk_tokens,
            context_length,
            shared: shared.clone(),
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || scheduler.run())
            .map_err(|e| InferenceError::Worker(e.to_string()))?;
        Ok(Self {
            info,
            encoder,
            shared,
            max_queue: opts.max_queue,
            max_sequences,
            metrics,
        })
    }

    fn retry_after(&self, queued: usize) -> Duration {
        let avg = self.shared.avg_request_ms.load(Ordering::Relaxed);
        // The queue ahead drains `max_sequences` at a time, each taking
        // about the average service time; rounded up to whole seconds
        // (Retry-After's resolution) and at least one.
        let rounds = (queued as u64 + 1).div_ceil(self.max_sequences as u64);
        Duration::from_secs(avg.saturating_mul(rounds).div_ceil(1000).max(1))
    }
}

impl Drop for LocalEngine {
    fn drop(&mut self) {
        self.shared.inbox().closing = true;
        self.shared.wake.notify_all();
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
        // Room for every event of this request: the scheduler never blocks
        // on a slow reader (which would stall every other sequence).
        let max_events = (request.params.max_tokens as usize).min(context_length) + 2;
        let (events, stream) = mpsc::channel(max_events);
        let seed = request.params.seed.unwrap_or_else(rand::random);
        let caller = request.caller;
        let sequence = Sequence::new(caller.tier, prompt, &request.params, seed, events);
        let mut inbox = self.shared.inbox();
        let queued = inbox.queue.len() + self.shared.resuming.load(Ordering::SeqCst);
        if inbox.queue.len() >= self.max_queue {
            return Err(EngineError::QueueFull {
                queued,
                retry_after: self.retry_after(queued),
            });
        }
        inbox.queue.push(caller.tier, &caller.principal, sequence);
        drop(inbox);
        self.shared.wake.notify_one();
        Ok(stream)
    }

    fn queue_depth(&self) -> usize {
        // Under the lock: the scheduler moves a sequence from the queue to
        // the running set while holding it, so none is counted twice or
        // missed.
        let inbox = self.shared.inbox();
        inbox.queue.len()
            + self.shared.resuming.load(Ordering::SeqCst)
            + self.shared.running.load(Ordering::SeqCst)
    }

    fn stats(&self) -> EngineStats {
        let inbox = self.shared.inbox();
        EngineStats {
            waiting: inbox.queue.len() + self.shared.resuming.load(Ordering::SeqCst),
            running: self.shared.running.load(Ordering::SeqCst),
            kv_cache_usage: f64::from_bits(self.shared.kv_usage.load(Ordering::Relaxed)),
            prefix_cache_hits: self.shared.prefix_hits.load(Ordering::Relaxed),
            prefix_cache_queries: self.shared.prefix_queries.load(Ordering::Relaxed),
        }
    }

    fn serving_metrics(&self) -> ServingMetrics {
        self.metrics.clone()
    }
}

/// Cancellations are counted by the request side
/// (`securechat_generations_abandoned_total`); the stage is only known here.
fn log_cancelled(s: &Sequence) {
    tracing::info!(
        stage = s.stage().as_str(),
        prompt_tokens = s.prompt_len,
        completion_tokens = s.generated,
        "generation cancelled: the client went away"
    );
}

/// Blocks that hold `positions`.
fn blocks_for(positions: usize) -> usize {
    positions.div_ceil(BLOCK_TOKENS)
}

/// The scheduler thread's state: the model, the pool's bookkeeping and
/// the sequences in it.
struct Scheduler {
    model: Box<dyn CausalLm>,
    encoder: Arc<PromptEncoder>,
    blocks: BlockManager,
    /// In admission order.
    running: Vec<Sequence>,
    /// Preempted, oldest first: admitted before anything queued.
    resuming: VecDeque<Sequence>,
    max_sequences: usize,
    chunk_tokens: usize,
    context_length: usize,
    shared: Arc<Shared>,
    metrics: ServingMetrics,
}

/// How long an idle scheduler sleeps before looking for departed clients.
const IDLE_WAIT: Duration = Duration::from_millis(100);

impl Scheduler {
    fn run(mut self) {
        loop {
            {
                let shared = self.shared.clone();
                let mut inbox = shared.inbox();
                self.admit(&mut inbox.queue);
                self.publish();
                if self.running.is_empty() {
                    if inbox.closing && inbox.queue.is_empty() && self.resuming.is_empty() {
                        return;
                    }
                    let _ = shared.wake.wait_timeout(inbox, IDLE_WAIT);
                    continue;
                }
            }
            self.step();
        }
    }

    /// Counters the handle reads.
    fn publish(&self) {
        self.shared
            .running
            .store(self.running.len(), Ordering::SeqCst);
        self.shared
            .resuming
            .store(self.resuming.len(), Ordering::SeqCst);
        let usage = self.blocks.usage();
        self.shared
            .kv_usage
            .store(usage.to_bits(), Ordering::Relaxed);
    }

    /// Blocks the running sequences will still take for what they have
    /// been promised (their whole prompt and a first generated token).
    fn promised(&self) -> usize {
        self.running
            .iter()
            .map(|s| blocks_for(s.tokens.len() + 1).saturating_sub(s.blocks.len()))
            .sum()
    }

    /// Moves waiting sequences into the running set while there is room
    /// in it and blocks for their prompts; departed clients are dropped.
    fn admit(&mut self, queue: &mut FairQueue<Sequence>) {
        queue.retain(|s| {
            let gone = s.cancelled();
            if gone {
                log_cancelled(s);
            }
            !gone
        });
        self.resuming.retain(|s| {
            let gone = s.cancelled();
            if gone {
                log_cancelled(s);
            }
            !gone
        });
        while self.running.len() < self.max_sequences {
            let from_resuming = !self.resuming.is_empty();
            let Some(next) = self.resuming.front().or_else(|| queue.peek()) else {
                return;
            };
            // At least the last token runs, for the logits after it.
            let keys = PrefixKey::of_blocks(&next.tokens[..next.tokens.len() - 1]);
            let hits = self.blocks.cached_prefix(&keys);
            let needed =
                blocks_for(next.tokens.len() + 1) - hits + self.blocks.idle_among(&keys[..hits]);
            let free = self.blocks.available().saturating_sub(self.promised());
            if needed > free {
                if !self.running.is_empty() {
                    return;
                }
                // Alone it would still not fit: it never will. (The pool
                // holds at least one context, so this is a bug, not load.)
                let s = match from_resuming {
                    true => self.resuming.pop_front(),
                    false => queue.pop(),
                };
                if let Some(s) = s {
                    s.fail(EngineError::Internal(format!(
                        "{} positions do not fit the key/value cache",
                        s.tokens.len()
                    )));
                }
                continue;
            }
            let popped = match from_resuming {
                true => self.resuming.pop_front(),
                false => queue.pop(),
            };
            let Some(mut s) = popped else {
                return;
            };
            s.blocks = self.blocks.take_prefix(&keys, hits);
            s.computed = s.blocks.len() * BLOCK_TOKENS;
            s.block_keys = keys[..s.blocks.len()].to_vec();
            // A resumed sequence's recomputation is not a prompt: only
            // first admissions count.
            if !from_resuming {
                let queries = s.tokens.len() as u64;
                let hit_tokens = s.computed as u64;
                self.shared
                    .prefix_queries
                    .fetch_add(queries, Ordering::Relaxed);
                self.shared
                    .prefix_hits
                    .fetch_add(hit_tokens, Ordering::Relaxed);
                self.metrics
                    .observe_queue_time(s.tier, s.enqueued.elapsed().as_secs_f64());
            }
            self.running.push(s);
        }
    }

    /// Ends sequence `i` of the running set and gives its blocks back;
    /// published before its last event is sent, so a client that has its
    /// answer never sees it still counted.
    fn remove(&mut self, i: usize) -> Sequence {
        let s = self.running.remove(i);
        self.blocks.release(&s.blocks);
        self.publish();
        s
    }

    /// Releases the newest sequence of the lowest tier and puts it at the
    /// head of the queue; it resumes where it stopped.
    fn preempt(&mut self) {
        let Some(i) = (0..self.running.len())
            .rev()
            .min_by_key(|&i| self.running[i].tier)
        else {
            return;
        };
        let mut s = self.remove(i);
        tracing::info!(
            tier = ?s.tier,
            positions = s.tokens.len(),
            "key/value cache full: sequence preempted, to be recomputed"
        );
        s.blocks.clear();
        s.block_keys.clear();
        s.computed = 0;
        self.metrics.preemptions.inc();
        self.resuming.push_back(s);
        self.publish();
    }

    /// How many tokens each running sequence runs this step (0: none), with
    /// blocks for them allocated; preempts when decoding sequences need
    /// blocks that are not there.
    fn plan(&mut self) -> Vec<usize> {
        // Generating sequences first: one token each, and a block when the
        // last one is full.
        loop {
            let needed: usize = self
                .running
                .iter()
                .filter(|s| s.pending() == 1)
                .map(|s| blocks_for(s.computed + 1).saturating_sub(s.blocks.len()))
                .sum();
            if needed <= self.blocks.available() || self.running.len() <= 1 {
                break;
            }
            self.preempt();
        }
        let mut budget = self.chunk_tokens;
        let mut plan = Vec::with_capacity(self.running.len());
        for s in &mut self.running {
            let mut n = if s.pending() == 1 {
                1
            } else {
                s.pending().min(budget)
            };
            // As many positions as the blocks it has and can get hold.
            let room = (s.blocks.len() + self.blocks.available()) * BLOCK_TOKENS - s.computed;
            n = n.min(room);
            while s.blocks.len() < blocks_for(s.computed + n) {
                match self.blocks.allocate() {
                    Some(b) => s.blocks.push(b),
                    None => break,
                }
            }
            if s.pending() > 1 {
                budget -= n;
            }
            plan.push(n);
        }
        plan
    }

    /// One forward pass over the running sequences, then sampling.
    fn step(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].cancelled() {
                let s = self.remove(i);
                log_cancelled(&s);
            } else {
                i += 1;
            }
        }
        let plan = self.plan();
        if !self.running.is_empty() && plan.iter().all(|&n| n == 0) {
            // Every sequence waits for blocks that others were given:
            // the newest lowest one makes room for the rest.
            self.preempt();
            return;
        }
        let started = Instant::now();
        let outcome = {
            let batch: Vec<SeqStep<'_>> = self
                .running
                .iter()
                .zip(&plan)
                .filter(|(_, n)| **n > 0)
                .map(|(s, &n)| SeqStep {
                    tokens: &s.tokens[s.computed..s.computed + n],
                    pos: s.computed,
                    blocks: &s.blocks,
                    tiled_below: s.tiled_below(),
                    logits: s.computed + n == s.tokens.len(),
                })
                .collect();
            let model = &mut self.model;
            let first = self.running.first();
            let cancelled = || first.is_some_and(Sequence::cancelled);
            // A panic inside the tensor code must fail these requests, not
            // the engine.
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                forward(model.as_mut(), &batch, &cancelled)
            }))
        };
        let logits = match outcome {
            Ok(Ok(Some(logits))) => logits,
            // The client left during the prompt; the next step drops it.
            Ok(Ok(None)) => return,
            failed => {
                let message = match failed {
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, kind = e.metric_label(), "generation failed");
                        e.to_string()
                    }
                    _ => {
                        tracing::error!("generation panicked");
                        "the model failed on this request".into()
                    }
                };
                for i in (0..self.running.len()).rev() {
                    if plan[i] > 0 {
                        let s = self.remove(i);
                        s.fail(EngineError::Internal(message.clone()));
                    }
                }
                return;
            }
        };
        self.metrics
            .step_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut logits = logits.into_iter();
        let tokenizer = &self.encoder.tokenizer;
        let mut ended = Vec::new();
        for (i, (s, &n)) in self.running.iter_mut().zip(&plan).enumerate() {
            if n == 0 {
                continue;
            }
            s.computed += n;
            // Newly full blocks join the prefix cache.
            for b in s.block_keys.len()..s.computed / BLOCK_TOKENS {
                let key = PrefixKey::chain(
                    s.block_keys.last().copied(),
                    &s.tokens[b * BLOCK_TOKENS..(b + 1) * BLOCK_TOKENS],
                );
                self.blocks.register(s.blocks[b], key);
                s.block_keys.push(key);
            }
            if s.computed < s.tokens.len() {
                continue;
            }
            let Some(mut l) = logits.next() else {
                ended.push((i, Err("the model returned too few logits".to_owned())));
                continue;
            };
            if s.wants_no_tokens() {
                ended.push((i, Ok(Outcome::Finished(FinishReason::Length))));
                continue;
            }
            let before = s.last_token;
            let outcome = s.sample(&mut l, tokenizer, self.context_length);
            if let (Some(before), Some(after)) = (before, s.last_token)
                && after > before
            {
                self.metrics
                    .inter_token_latency
                    .observe((after - before).as_secs_f64());
            }
            if outcome != Outcome::Continue {
                ended.push((i, Ok(outcome)));
            }
        }
        for (i, outcome) in ended.into_iter().rev() {
            let mut s = self.remove(i);
            match outcome {
                Ok(Outcome::Finished(reason)) => s.finish(reason, false),
                Ok(Outcome::StopString) => s.finish(FinishReason::Stop, true),
                Ok(Outcome::Cancelled) => {
                    log_cancelled(&s);
                    continue;
                }
                Ok(Outcome::Continue) => continue,
                Err(message) => {
                    s.fail(EngineError::Internal(message));
                    continue;
                }
            }
            let ms = s.enqueued.elapsed().as_millis() as u64;
            tracing::debug!(
                prompt_tokens = s.prompt_len,
                completion_tokens = s.generated,
                ms,
                ttft_ms = s.first_token.map(|t| (t - s.enqueued).as_millis() as u64),
                "generation finished"
            );
            // Exponential moving average, weight 1/4 for the newest request.
            let _ = self.shared.avg_request_ms.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |avg| Some((avg * 3 + ms) / 4),
            );
        }
    }
}

/// Runs a step on the model: batched when it has a paged forward pass,
/// otherwise its one sequence in its own cache, a whole prompt through
/// [`CausalLm::prefill`] (which asks `cancelled` between its own pieces;
/// `None` when it said yes) and later tokens through
/// [`CausalLm::forward`].
fn forward(
    model: &mut dyn CausalLm,
    batch: &[SeqStep<'_>],
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Vec<Vec<f32>>>> {
    if let Some(paged) = model.paged() {
        return paged.step(batch).map(Some);
    }
    let mut out = Vec::new();
    for s in batch {
        let logits = if s.pos == 0 {
            match model.prefill(s.tokens, cancelled)? {
                Some(logits) => logits,
                None => return Ok(None),
            }
        } else {
            model.forward(s.tokens, s.pos)?
        };
        if s.logits {
            out.push(logits);
        }
    }
    Ok(Some(out))
}
