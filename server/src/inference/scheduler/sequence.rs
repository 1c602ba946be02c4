//! One request inside the scheduler: its tokens, how many of them the
//! cache holds, its blocks, and the text it has streamed. Sampling, stop
//! strings, `max_tokens` and the context limit are decided here, token by
//! token, exactly as a request alone would decide them.

use std::time::Instant;

use securechat_crds::v1alpha1::Tier;
use tokio::sync::mpsc;

use super::super::sampler::{Sampler, SamplingConfig};
use super::super::text_stream::{StopFilter, StopOutcome, Utf8Stream};
use super::super::tokenizer::ChatTokenizer;
use super::blocks::PrefixKey;
use crate::engine::{EngineError, FinishReason, GenerationEvent, SamplingParams, Usage};

pub type EventSender = mpsc::Sender<Result<GenerationEvent, EngineError>>;

/// Where a generation was when its client went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before its prompt was read.
    Queued,
    /// While the prompt was being read.
    Prefill,
    /// While tokens were being generated.
    Decode,
}

impl Stage {
    /// Log label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Prefill => "prefill",
            Stage::Decode => "decode",
        }
    }
}

/// What a sampled token did to its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The token joins the context; the next step computes it.
    Continue,
    Finished(FinishReason),
    /// A stop string appeared; the text before it was sent.
    StopString,
    /// The client went away.
    Cancelled,
}

pub fn sampling_config(p: &SamplingParams) -> SamplingConfig {
    SamplingConfig {
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k.map(|k| k as usize),
        repetition_penalty: p.repetition_penalty,
    }
}

pub struct Sequence {
    pub tier: Tier,
    pub prompt_len: usize,
    /// The prompt, then every generated token but an end-of-generation one.
    pub tokens: Vec<u32>,
    /// Positions whose keys and values the cache holds.
    pub computed: usize,
    /// The pool blocks holding positions `0..computed` (and room past it).
    pub blocks: Vec<u32>,
    /// Keys of the full blocks registered in the prefix cache so far.
    pub block_keys: Vec<PrefixKey>,
    pub max_tokens: u32,
    pub generated: u32,
    sampler: Sampler,
    utf8: Utf8Stream,
    stops: StopFilter,
    pub events: EventSender,
    pub enqueued: Instant,
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
}

impl Sequence {
    pub fn new(
        tier: Tier,
        prompt: Vec<u32>,
        params: &SamplingParams,
        seed: u64,
        events: EventSender,
    ) -> Self {
        Self {
            tier,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            blocks: Vec::new(),
            block_keys: Vec::new(),
            max_tokens: params.max_tokens,
            generated: 0,
            sampler: Sampler::new(sampling_config(params), seed),
            utf8: Utf8Stream::default(),
            stops: StopFilter::new(&params.stop),
            events,
            enqueued: Instant::now(),
            first_token: None,
            last_token: None,
        }
    }

    pub fn cancelled(&self) -> bool {
        self.events.is_closed()
    }

    pub fn stage(&self) -> Stage {
        if self.generated > 0 {
            Stage::Decode
        } else if self.computed > 0 {
            Stage::Prefill
        } else {
            Stage::Queued
        }
    }

    /// Positions below this one were the prompt: the cache sums them as a
    /// prompt batch (a one-token prompt as a decode row, as it runs alone).
    pub fn tiled_below(&self) -> usize {
        if self.prompt_len > 1 {
            self.prompt_len
        } else {
            0
        }
    }

    /// Tokens still to run before the next sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len as u32,
            completion_tokens: self.generated,
        }
    }

    /// Whether the sequence ends before sampling at all (`max_tokens` 0).
    pub fn wants_no_tokens(&self) -> bool {
        self.max_tokens == 0
    }

    /// Samples the next token from the logits after the last one and
    /// streams what it completes.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        tokenizer: &ChatTokenizer,
        context_length: usize,
    ) -> Outcome {
        let token = self.sampler.sample(logits, &self.tokens);
        self.generated += 1;
        if tokenizer.is_end_of_generation(token) {
            return Outcome::Finished(FinishReason::Stop);
        }
        self.tokens.push(token);
        let text = self.utf8.push(tokenizer.token_bytes(token));
        let (emit, stopped) = match self.stops.push(&text) {
            StopOutcome::Emit(t) => (t, false),
            StopOutcome::Stopped(t) => (t, true),
        };
        if !emit.is_empty() && !self.send_text(emit) {
            return Outcome::Cancelled;
        }
        if stopped {
            return Outcome::StopString;
        }
        if self.tokens.len() >= context_length || self.generated >= self.max_tokens {
            return Outcome::Finished(FinishReason::Length);
        }
        Outcome::Continue
    }

    /// Delivers text; false when the client has gone away.
    fn send_text(&mut self, text: String) -> bool {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        // The channel has room for every event (see the engine's
        // `generate`), so it is never full; closed means the client left.
        self.events
            .try_send(Ok(GenerationEvent::Text(text)))
            .is_ok()
    }

    /// Ends a generation that finished: releases held-back text (unless
    /// a stop string completes in it) and sends `Done`.
    pub fn finish(&mut self, reason: FinishReason, stopped_by_string: bool) {
        let mut reason = reason;
        if !stopped_by_string {
            let rest = match self.stops.push(&self.utf8.finish()) {
                StopOutcome::Emit(t) => t + &self.stops.finish(),
                StopOutcome::Stopped(t) => {
                    reason = FinishReason::Stop;
                    t
                }
            };
            if !rest.is_empty() {
                self.send_text(rest);
            }
        }
        let _ = self.events.try_send(Ok(GenerationEvent::Done {
            finish_reason: reason,
            usage: self.usage(),
        }));
    }

    /// Ends a generation that failed.
    pub fn fail(&self, error: EngineError) {
        let _ = self.events.try_send(Err(error));
    }
}
