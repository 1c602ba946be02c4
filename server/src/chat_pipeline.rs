//! The chat pipeline shared by /v1/chat/completions and /api/chat:
//! input filter -> tier clamps -> token quota -> context check -> engine,
//! then the engine's events through the streaming output filter.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use securechat_crds::v1alpha1::{FilterAction, Tier, TierSpec};
use tokio::sync::mpsc;

use crate::audit::{Audit, RateInfo};
use crate::engine::{
    Caller, ChatMessage, EngineError, FinishReason, GenerationEvent, GenerationRequest,
    SamplingParams, Usage,
};
use crate::error::ApiError;
use crate::pii::StreamFilter;
use crate::principal::Principal;
use crate::ratelimit::{Decision, Op, Rate};
use crate::state::{AppState, LiveConfig};

/// Sampling values as the caller sent them (None: use the defaults).
#[derive(Debug, Default, Clone)]
pub struct Requested {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    /// `auth.policy`'s cap for this request (not the caller's: it lowers
    /// max_tokens, defaulted or asked for, silently, as the tier's does).
    pub policy_max_tokens: Option<u32>,
}

/// What the output side emits.
#[derive(Debug)]
pub enum Piece {
    Text(String),
    Finished {
        finish_reason: FinishReason,
        usage: Usage,
        /// The output filter refused the rest of the answer.
        filtered: bool,
        /// Sensitive values the output filter replaced or refused.
        output_redactions: u64,
    },
    Failed(ApiError),
}

/// A request ready for the engine.
pub struct Prepared {
    pub request: GenerationRequest,
    pub prompt_tokens: usize,
    /// Sensitive values the input filter replaced in the prompt; reported
    /// to the caller (a header) so a UI can say the model never saw them.
    pub input_redactions: u64,
    runtime: Arc<LiveConfig>,
    reservation: Option<Reservation>,
}

/// Refuses a prompt longer than the caller's tier allows (400, before
/// anything is queued): reading a prompt costs compute in proportion to its
/// length, so a low tier must not buy minutes of it with one request.
fn check_prompt_length(tier: Tier, spec: &TierSpec, prompt_tokens: usize) -> Result<(), ApiError> {
    match spec.max_prompt_tokens {
        Some(limit) if prompt_tokens > limit.max(1) as usize => {
            Err(ApiError::PromptOverTierLimit {
                prompt_tokens,
                limit: limit.max(1) as usize,
                tier,
            })
        }
        _ => Ok(()),
    }
}

/// What admitting a request takes from the token buckets: `now` must be
/// there, `debt` is charged beyond it. A request reserves its prompt and
/// its whole max_tokens up front (so concurrent requests can never spend
/// more than the budget together, on any number of replicas); what the
/// answer did not use comes back when it ends. A reservation larger than
/// the smallest bucket needs a full one and leaves it in debt, paid off by
/// waiting.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ReservationCost {
    now: f64,
    debt: f64,
}

fn reservation_cost(prompt_tokens: usize, max_tokens: u32, capacity: f64) -> ReservationCost {
    let tokens = (prompt_tokens as f64).max(1.0) + f64::from(max_tokens);
    let now = tokens.min(capacity);
    ReservationCost {
        now,
        debt: tokens - now,
    }
}

/// A caller's token budgets: per minute, per day, or both (tier and global
/// per-minute limits: the smaller one).
#[derive(Debug, Clone, PartialEq)]
struct TokenQuota {
    /// `(limit, bucket name, rate)` of each budget that applies.
    budgets: Vec<(u32, String, Rate)>,
}

fn token_quota(runtime: &LiveConfig, principal: &Principal) -> Option<TokenQuota> {
    let tier = runtime.config.roles.tier(principal.tier);
    let global = runtime.config.rate_limit.tokens_per_minute;
    let minute = match (tier.tokens_per_minute, global) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut budgets = Vec::new();
    if let Some(limit) = minute {
        let limit = limit.max(1) as u32;
        budgets.push((
            limit,
            principal.subject.clone(),
            Rate::per_minute(limit, limit),
        ));
    }
    if let Some(limit) = tier.tokens_per_day {
        let limit = limit.max(1) as u32;
        budgets.push((
            limit,
            format!("day:{}", principal.subject),
            Rate {
                capacity: f64::from(limit),
                per_second: f64::from(limit) / 86_400.0,
            },
        ));
    }
    (!budgets.is_empty()).then_some(TokenQuota { budgets })
}

/// Tokens reserved for one request, settled once when it ends.
#[derive(Debug, Clone)]
pub struct Reservation {
    buckets: Vec<(String, Rate)>,
    reserved: f64,
}

impl Reservation {
    /// Gives back what `used` did not take (or charges what it took
    /// beyond the reservation). A store that cannot be reached loses the
    /// refund, which only ever errs against the caller, and is counted.
    pub async fn settle(self, state: &AppState, used: u64) {
        let difference = self.reserved - used as f64;
        let (op, amount) = if difference >= 0.0 {
            (Op::Refund, difference)
        } else {
            (Op::Charge, -difference)
        };
        if amount == 0.0 {
            return;
        }
        let buckets: Vec<(&str, Rate)> = self
            .buckets
            .iter()
            .map(|(name, rate)| (name.as_str(), *rate))
            .collect();
        let _ = state
            .token_buckets
            .apply(op, &buckets, amount, Instant::now())
            .await;
    }
}

/// Reserves prompt + max_tokens from every budget at once, or refuses with
/// the budget that is short (429 with Retry-After).
async fn reserve(
    state: &AppState,
    audit: &Audit,
    quota: &TokenQuota,
    prompt_tokens: usize,
    max_tokens: u32,
) -> Result<Reservation, ApiError> {
    let buckets: Vec<(&str, Rate)> = quota
        .budgets
        .iter()
        .map(|(_, name, rate)| (name.as_str(), *rate))
        .collect();
    let capacity = buckets
        .iter()
        .map(|(_, r)| r.capacity)
        .fold(f64::INFINITY, f64::min);
    let cost = reservation_cost(prompt_tokens, max_tokens, capacity);
    let now = Instant::now();
    let mut taken = state
        .token_buckets
        .apply(Op::Take, &buckets, cost.now, now)
        .await?;
    if let Decision::Denied { retry_after } = taken {
        state.metrics.limited("tokens");
        // The budget that refused: the one that needs the longest wait is
        // not known here; the smallest limit is the one a caller can act on.
        let limit = quota.budgets.iter().map(|(l, _, _)| *l).min().unwrap_or(0);
        return Err(ApiError::QuotaExceeded { limit, retry_after });
    }
    if cost.debt > 0.0 {
        taken = state
            .token_buckets
            .apply(Op::Charge, &buckets, cost.debt, now)
            .await?;
    }
    // The RateLimit-* headers describe whichever runs out first for this
    // caller: the request limit, or this token budget.
    if let Decision::Allowed {
        remaining,
        reset,
        bucket,
    } = taken
        && let Some((limit, _, _)) = quota.budgets.get(bucket)
    {
        audit.rate_if_tighter(RateInfo {
            limit: *limit,
            remaining,
            reset_secs: reset.as_secs(),
        });
    }
    Ok(Reservation {
        buckets: quota
            .budgets
            .iter()
            .map(|(_, name, rate)| (name.clone(), *rate))
            .collect(),
        reserved: cost.now + cost.debt,
    })
}

/// Validates and filters the input and reserves its tokens; fails before
/// anything is queued.
pub async fn prepare(
    state: &AppState,
    principal: &Principal,
    audit: &Audit,
    mut messages: Vec<ChatMessage>,
    requested: Requested,
) -> Result<Prepared, ApiError> {
    let runtime = state.live_config();
    let config = &runtime.config;
    if messages.is_empty() {
        return Err(ApiError::InvalidField {
            message: "messages: at least one message is required".into(),
            param: "messages",
        });
    }
    let temperature = requested
        .temperature
        .unwrap_or(config.generation.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::InvalidField {
            message: "temperature: must be between 0 and 2".into(),
            param: "temperature",
        });
    }
    let top_p = requested.top_p.unwrap_or(config.generation.top_p);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::InvalidField {
            message: "top_p: must be greater than 0 and at most 1".into(),
            param: "top_p",
        });
    }
    if requested.max_tokens == Some(0) {
        return Err(ApiError::InvalidField {
            message: "max_tokens: must be at least 1".into(),
            param: "max_tokens",
        });
    }
    if requested.stop.len() > 4 || requested.stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::InvalidField {
            message: "stop: at most 4 non-empty strings of up to 256 bytes".into(),
            param: "stop",
        });
    }
    // The tier's cap silently clamps, like OpenAI's per-model maximum.
    let tier_cap = config
        .roles
        .tier(principal.tier)
        .max_tokens_per_request
        .map(|c| c.max(1) as u32);
    let max_tokens = requested
        .max_tokens
        .unwrap_or(config.generation.max_tokens)
        .min(tier_cap.unwrap_or(u32::MAX))
        .min(requested.policy_max_tokens.unwrap_or(u32::MAX));

    audit.prompt(|| {
        messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    });
    let mut input_redactions = 0u64;
    if runtime.filter.input {
        let mut found = 0u64;
        for message in &mut messages {
            let (redacted, findings) = runtime.filter.redact(&message.content);
            for f in &findings {
                state.metrics.redacted("input", &f.kind.label());
            }
            found += findings.len() as u64;
            if !findings.is_empty() && runtime.filter.action == FilterAction::Reject {
                audit.redactions(found);
                let kinds: Vec<String> = findings.iter().map(|f| f.kind.label()).collect();
                return Err(ApiError::SensitiveData(kinds.join(", ")));
            }
            message.content = redacted;
        }
        audit.redactions(found);
        input_redactions = found;
    }

    let info = state.engine.info();
    let prompt_tokens = state.engine.count_prompt_tokens(&messages)?;
    if prompt_tokens >= info.context_length {
        return Err(EngineError::PromptTooLong {
            prompt_tokens,
            context_length: info.context_length,
        }
        .into());
    }
    check_prompt_length(
        principal.tier,
        config.roles.tier(principal.tier),
        prompt_tokens,
    )?;

    let reservation = match token_quota(&runtime, principal) {
        Some(quota) => Some(reserve(state, audit, &quota, prompt_tokens, max_tokens).await?),
        None => None,
    };

    let params = SamplingParams {
        max_tokens,
        temperature,
        top_p,
        seed: requested.seed,
        stop: requested.stop,
        ..SamplingParams::default()
    };
    Ok(Prepared {
        request: GenerationRequest {
            messages,
            params,
            caller: Caller {
                tier: principal.tier,
                principal: principal.subject.clone(),
            },
        },
        prompt_tokens,
        input_redactions,
        reservation,
        runtime,
    })
}

/// Queues the request and returns the filtered output as a channel. A
/// full queue fails here, before any response is started (503).
pub fn start(
    state: &AppState,
    principal: &Principal,
    audit: &Audit,
    prepared: Prepared,
    received: Instant,
) -> Result<mpsc::Receiver<Piece>, ApiError> {
    let mut reservation = prepared.reservation;
    let mut events = match state.engine.generate(prepared.request) {
        Ok(events) => events,
        Err(e) => {
            // Refused before any compute (a full queue): the whole
            // reservation goes back.
            if let Some(reservation) = reservation {
                let state = state.clone();
                tokio::spawn(async move { reservation.settle(&state, 0).await });
            }
            return Err(e.into());
        }
    };
    state
        .metrics
        .queue_depth
        .set(state.engine.queue_depth() as i64);
    let (tx, rx) = mpsc::channel(32);
    let state = state.clone();
    let principal = principal.clone();
    let audit = audit.clone();
    let runtime = prepared.runtime;
    tokio::spawn(async move {
        let filter_output = runtime.filter.output;
        let mut filter = StreamFilter::new(&runtime.filter);
        let mut first = true;
        let mut answer = String::new();
        let mut redactions = 0u64;
        // Pieces of text the engine sent: what a cancelled answer used,
        // as near as this side can tell (the engine sends about one a
        // token).
        let mut pieces = 0u64;
        let prompt_tokens = prepared.prompt_tokens as u64;
        // Sends one piece; when the client has gone, returns (after giving
        // back the unused reservation), and dropping `events` cancels the
        // generation.
        macro_rules! send {
            ($piece:expr) => {
                if tx.send($piece).await.is_err() {
                    state.metrics.generations_abandoned.inc();
                    if let Some(r) = reservation.take() {
                        r.settle(&state, prompt_tokens + pieces).await;
                    }
                    return;
                }
            };
        }
        loop {
            let event = tokio::select! {
                // The client left (its response, holding `rx`, was
                // dropped): noticed at once, not at the next failed send (a
                // queued or prefilling job sends nothing for minutes).
                // Returning drops `events`, which the worker checks before
                // a job starts, between prefill chunks and before every
                // token.
                () = tx.closed() => {
                    state.metrics.generations_abandoned.inc();
                    if let Some(r) = reservation.take() {
                        r.settle(&state, prompt_tokens + pieces).await;
                    }
                    return;
                }
                event = events.recv() => event,
            };
            let Some(event) = event else { break };
            match event {
                Ok(GenerationEvent::Text(text)) => {
                    pieces += 1;
                    if first {
                        first = false;
                        state
                            .metrics
                            .time_to_first_token
                            .observe(received.elapsed().as_secs_f64());
                    }
                    let released = if filter_output {
                        let r = filter.push(&text);
                        redactions += r.findings.len() as u64;
                        for f in &r.findings {
                            state.metrics.redacted("output", &f.kind.label());
                        }
                        r
                    } else {
                        crate::pii::Released {
                            text,
                            ..Default::default()
                        }
                    };
                    if !released.text.is_empty() {
                        answer.push_str(&released.text);
                        send!(Piece::Text(released.text));
                    }
                    if released.rejected {
                        let usage = Usage {
                            prompt_tokens: prepared.prompt_tokens as u32,
                            completion_tokens: 0,
                        };
                        if let Some(r) = reservation.take() {
                            r.settle(&state, prompt_tokens + pieces).await;
                        }
                        finish(&state, &principal, &audit, usage, redactions, &answer);
                        send!(Piece::Finished {
                            finish_reason: FinishReason::Stop,
                            usage,
                            filtered: true,
                            output_redactions: redactions,
                        });
                        return;
                    }
                }
                Ok(GenerationEvent::Done {
                    finish_reason,
                    usage,
                }) => {
                    let rest = filter.finish();
                    redactions += rest.findings.len() as u64;
                    for f in &rest.findings {
                        state.metrics.redacted("output", &f.kind.label());
                    }
                    if !rest.text.is_empty() {
                        answer.push_str(&rest.text);
                        send!(Piece::Text(rest.text));
                    }
                    if let Some(r) = reservation.take() {
                        let used = u64::from(usage.prompt_tokens + usage.completion_tokens);
                        r.settle(&state, used).await;
                    }
                    finish(&state, &principal, &audit, usage, redactions, &answer);
                    send!(Piece::Finished {
                        finish_reason,
                        usage,
                        filtered: rest.rejected,
                        output_redactions: redactions,
                    });
                    return;
                }
                Err(e) => {
                    if let Some(r) = reservation.take() {
                        r.settle(&state, prompt_tokens + pieces).await;
                    }
                    send!(Piece::Failed(e.into()));
                    return;
                }
            }
        }
        if let Some(r) = reservation.take() {
            r.settle(&state, prompt_tokens + pieces).await;
        }
        send!(Piece::Failed(ApiError::Engine(EngineError::Internal(
            "the engine ended the stream without finishing".into()
        ))));
    });
    Ok(rx)
}

fn finish(
    state: &AppState,
    principal: &Principal,
    audit: &Audit,
    usage: Usage,
    redactions: u64,
    answer: &str,
) {
    let completion = u64::from(usage.completion_tokens);
    state.metrics.tokens_generated.inc_by(completion);
    state
        .metrics
        .prompt_tokens
        .inc_by(u64::from(usage.prompt_tokens));
    if let Some(id) = &principal.key_id {
        state.record_usage(
            id,
            u64::from(usage.prompt_tokens),
            completion,
            false,
            Utc::now(),
        );
    }
    audit.tokens(u64::from(usage.prompt_tokens), completion);
    audit.redactions(redactions);
    audit.answer(answer);
}

/// Drains the pieces into one answer (non-streaming responses).
pub async fn collect(
    mut rx: mpsc::Receiver<Piece>,
) -> Result<(String, FinishReason, Usage, bool), ApiError> {
    let mut text = String::new();
    while let Some(piece) = rx.recv().await {
        match piece {
            Piece::Text(t) => text.push_str(&t),
            Piece::Finished {
                finish_reason,
                usage,
                filtered,
                ..
            } => return Ok((text, finish_reason, usage, filtered)),
            Piece::Failed(e) => return Err(e),
        }
    }
    Err(ApiError::Internal("generation task ended early".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_up_to_the_tier_limit_pass() {
        let read_only = TierSpec::read_only();
        let limit = read_only.max_prompt_tokens.unwrap() as usize;
        assert!(check_prompt_length(Tier::ReadOnly, &read_only, limit).is_ok());
        let err = check_prompt_length(Tier::ReadOnly, &read_only, limit + 1).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(err.body()["error"]["code"], "prompt_too_long");
        // Admin has no limit of its own: the model's context bounds it.
        assert!(check_prompt_length(Tier::Admin, &TierSpec::admin(), 1 << 20).is_ok());
    }

    #[test]
    fn a_request_reserves_prompt_and_max_tokens_and_a_huge_one_leaves_debt() {
        assert_eq!(
            reservation_cost(201, 50, 300.0),
            ReservationCost {
                now: 251.0,
                debt: 0.0
            }
        );
        assert_eq!(
            reservation_cost(1000, 24, 300.0),
            ReservationCost {
                now: 300.0,
                debt: 724.0
            }
        );
        // Even an empty prompt costs something: every request reads one.
        assert_eq!(reservation_cost(0, 0, 300.0).now, 1.0);
    }
}
