//! The decode loop of one request: prefill, then sample token by token,
//! streaming text until end-of-sequence, a stop string, `max_tokens` or the
//! context limit — or until the client goes away, which is noticed between
//! prefill chunks and before every generated token.

use std::time::{Duration, Instant};

use super::error::Result;
use super::model::CausalLm;
use super::sampler::{Sampler, SamplingConfig};
use super::text_stream::{StopFilter, StopOutcome, Utf8Stream};
use super::tokenizer::ChatTokenizer;
use crate::engine::{FinishReason, SamplingParams, Usage};

/// Where generated text goes.
pub trait TextSink {
    /// Delivers text; returns false when the client has gone away.
    fn text(&mut self, text: String) -> bool;
    /// True once the client has gone away (checked before every step).
    fn cancelled(&self) -> bool;
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    Finished(FinishReason),
    /// The client went away; the stage says how far the work had got.
    Cancelled(Stage),
}

/// Where a generation was when its client went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before its prompt was read.
    Queued,
    /// While the prompt was being read (stopped between prefill chunks).
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

#[derive(Debug, Clone)]
pub struct GenerationReport {
    pub ending: Ending,
    pub usage: Usage,
    pub time_to_first_token: Option<Duration>,
    pub prefill: Duration,
    pub decode: Duration,
    /// The generated ids (including an end-of-sequence token, if any).
    pub tokens: Vec<u32>,
}

pub fn sampling_config(p: &SamplingParams) -> SamplingConfig {
    SamplingConfig {
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k.map(|k| k as usize),
        repetition_penalty: p.repetition_penalty,
    }
}

/// Runs one generation. The caller has checked that the prompt fits the
/// context and is not empty.
pub fn generate(
    model: &mut dyn CausalLm,
    tokenizer: &ChatTokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    seed: u64,
    sink: &mut dyn TextSink,
) -> Result<GenerationReport> {
    let started = Instant::now();
    let mut sampler = Sampler::new(sampling_config(params), seed);
    let mut utf8 = Utf8Stream::default();
    let mut stops = StopFilter::new(&params.stop);
    let mut context: Vec<u32> = prompt.to_vec();
    let mut report = GenerationReport {
        ending: Ending::Finished(FinishReason::Length),
        usage: Usage {
            prompt_tokens: prompt.len() as u32,
            completion_tokens: 0,
        },
        time_to_first_token: None,
        prefill: Duration::ZERO,
        decode: Duration::ZERO,
        tokens: Vec::new(),
    };
    if sink.cancelled() {
        report.ending = Ending::Cancelled(Stage::Queued);
        return Ok(report);
    }

    let Some(mut logits) = model.prefill(prompt, &|| sink.cancelled())? else {
        report.ending = Ending::Cancelled(Stage::Prefill);
        report.prefill = started.elapsed();
        return Ok(report);
    };
    report.prefill = started.elapsed();
    let decode_started = Instant::now();
    let context_length = model.context_length();
    let mut hit_stop = false;

    for step in 0..params.max_tokens {
        if sink.cancelled() {
            report.ending = Ending::Cancelled(Stage::Decode);
            break;
        }
        let token = sampler.sample(&mut logits, &context);
        report.tokens.push(token);
        report.usage.completion_tokens = step + 1;
        if tokenizer.is_end_of_generation(token) {
            report.ending = Ending::Finished(FinishReason::Stop);
            break;
        }
        context.push(token);

        let text = utf8.push(tokenizer.token_bytes(token));
        let (emit, stopped) = match stops.push(&text) {
            StopOutcome::Emit(t) => (t, false),
            StopOutcome::Stopped(t) => (t, true),
        };
        if !emit.is_empty() {
            report
                .time_to_first_token
                .get_or_insert_with(|| started.elapsed());
            if !sink.text(emit) {
                report.ending = Ending::Cancelled(Stage::Decode);
                break;
            }
        }
        if stopped {
            hit_stop = true;
            report.ending = Ending::Finished(FinishReason::Stop);
            break;
        }
        if context.len() >= context_length || step + 1 == params.max_tokens {
            break; // Length
        }
        logits = model.forward(&[token], context.len() - 1)?;
    }
    report.decode = decode_started.elapsed();

    if !matches!(report.ending, Ending::Cancelled(_)) && !hit_stop {
        // Ended by length or end-of-sequence: release what was held back,
        // unless the last bytes complete a stop string.
        let rest = match stops.push(&utf8.finish()) {
            StopOutcome::Emit(t) => t + &stops.finish(),
            StopOutcome::Stopped(t) => {
                report.ending = Ending::Finished(FinishReason::Stop);
                t
            }
        };
        if !rest.is_empty() {
            report
                .time_to_first_token
                .get_or_insert_with(|| started.elapsed());
            sink.text(rest);
        }
    }
    Ok(report)
}
