//! OpenAI-compatible endpoints: POST /v1/chat/completions (JSON or SSE) and
//! GET /v1/models.

use std::convert::Infallible;
use std::time::Instant;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::ApiJson;
use crate::audit::Audit;
use crate::auth::{Authorized, ChatPermission, ModelsPermission};
use crate::chat_pipeline::{self, Piece, Requested};
use crate::engine::{ChatMessage, FinishReason, Role, Usage};
use crate::error::ApiError;
use crate::state::AppState;

/// How many sensitive values the input filter replaced in the prompt
/// (`[FILTERED]` is what the model saw instead).
pub const INPUT_REDACTIONS_HEADER: &str = "x-securechat-input-redactions";

/// Message content: a string, or the array-of-parts form (text parts only).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: Role,
    pub content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The request. Unknown fields are accepted (SDKs send many optional
/// ones); known fields must have the right type.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub n: Option<u32>,
}

fn to_messages(input: Vec<InMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    input
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match m.content {
                Content::Text(t) => t,
                Content::Parts(parts) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            _ => {
                                return Err(ApiError::InvalidField {
                                    message: format!(
                                        "messages[{i}].content: only text parts are supported"
                                    ),
                                    param: "messages",
                                });
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage {
                role: m.role,
                content,
            })
        })
        .collect()
}

fn finish_reason(reason: FinishReason, filtered: bool) -> &'static str {
    match (filtered, reason) {
        (true, _) => "content_filter",
        (false, FinishReason::Stop) => "stop",
        (false, FinishReason::Length) => "length",
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn completion_id() -> String {
    crate::credentials::jwt::new_jti()
        .map_or_else(|_| "chatcmpl-local".into(), |j| format!("chatcmpl-{j}"))
}

pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(audit): Extension<Audit>,
    caller: Authorized<ChatPermission>,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let model_id = state.model_id();
    if let Some(requested) = &body.model
        && !state.serves_model(requested)
    {
        return Err(ApiError::ModelNotFound(requested.clone()));
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(ApiError::InvalidField {
            message: "n: only 1 is supported".into(),
            param: "n",
        });
    }
    let stop = match body.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let requested = Requested {
        max_tokens: body.max_completion_tokens.or(body.max_tokens),
        temperature: body.temperature,
        top_p: body.top_p,
        stop,
        seed: body.seed,
        policy_max_tokens: caller.overrides.max_tokens,
    };
    let messages = to_messages(body.messages)?;
    let prepared =
        chat_pipeline::prepare(&state, &caller.principal, &audit, messages, requested).await?;
    let input_redactions = HeaderValue::from(prepared.input_redactions);
    let rx = chat_pipeline::start(&state, &caller.principal, &audit, prepared, received)?;
    let id = completion_id();
    let created = chrono::Utc::now().timestamp();
    if !body.stream {
        let (text, reason, usage, filtered) = chat_pipeline::collect(rx).await?;
        let mut response = Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model_id,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(reason, filtered),
            }],
            "usage": usage_json(usage),
        }))
        .into_response();
        response
            .headers_mut()
            .insert(INPUT_REDACTIONS_HEADER, input_redactions);
        return Ok(response);
    }
    let include_usage = body.stream_options.is_some_and(|o| o.include_usage);
    let events = sse_events(rx, id, model_id, created, include_usage);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(INPUT_REDACTIONS_HEADER, input_redactions);
    Ok(response)
}

/// Turns pieces into OpenAI chunk events, ending with `data: [DONE]`.
/// Public for the SSE fuzz target (fuzz/), which checks that no text can
/// break out of its `data:` line.
pub fn sse_events(
    rx: tokio::sync::mpsc::Receiver<Piece>,
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), None);
    // state: (receiver, done?)
    let head = stream::iter([Ok(Event::default().data(first.to_string()))]);
    let body = stream::unfold((rx, false), move |(mut rx, done)| {
        let chunk = chunk.clone();
        async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(Piece::Text(t)) => {
                    Some((vec![chunk(json!({"content": t}), None)], (rx, false)))
                }
                Some(Piece::Finished {
                    finish_reason: reason,
                    usage,
                    filtered,
                    output_redactions,
                }) => {
                    let mut last = chunk(json!({}), Some(finish_reason(reason, filtered)));
                    if output_redactions > 0 {
                        // An extension field (SDKs keep unknown fields):
                        // the answer had sensitive values replaced.
                        last["securechat"] = json!({"output_redactions": output_redactions});
                    }
                    let mut out = vec![last];
                    if include_usage {
                        let mut u = out[0].clone();
                        u["choices"] = json!([]);
                        u["usage"] = usage_json(usage);
                        out.push(u);
                    }
                    Some((out, (rx, true)))
                }
                // Errors after the head was sent become an error event.
                Some(Piece::Failed(e)) => Some((vec![e.body()], (rx, true))),
                None => None,
            }
        }
    })
    .flat_map(|values| {
        stream::iter(
            values
                .into_iter()
                .map(|v| Ok(Event::default().data(v.to_string()))),
        )
    });
    let done = stream::iter([Ok(Event::default().data("[DONE]"))]);
    head.chain(body).chain(done)
}

pub async fn models(
    State(state): State<AppState>,
    _caller: Authorized<ModelsPermission>,
) -> Json<Value> {
    let info = state.engine.info();
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id(),
            "object": "model",
            "created": 0,
            "owned_by": "securechat",
            "family": info.family,
            "context_length": info.context_length,
        }],
    }))
}
