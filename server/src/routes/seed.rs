//! POST /api/chat (and `/api/secure-chat`, the path of the seed's full
//! example) in the first seed's shape:
//! `{message, history, max_length=2048, temperature=0.7}` ->
//! `{response, history, user, user_id}` (the seed's two examples name the
//! caller `user` and `user_id`; both are sent, so either client works).
//!
//! `history` is accepted in the ChatGLM forms: a list of `{role, content}`
//! messages (ChatGLM3), of `[user, assistant]` pairs (ChatGLM2), or the
//! seed's `List[str]`: a flat list of strings alternating user and
//! assistant, starting with the user. It is returned in the message form
//! with the new turn appended. `max_length` bounds the generated tokens.

use std::time::Instant;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::body::ApiJson;
use crate::audit::Audit;
use crate::auth::{Authorized, ChatPermission};
use crate::chat_pipeline::{self, Requested};
use crate::engine::{ChatMessage, Role};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Turn {
    Message(ChatMessage),
    Pair(String, String),
    /// One entry of the seed's flat `List[str]` history.
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedChatRequest {
    pub message: String,
    #[serde(default)]
    pub history: Vec<Turn>,
    #[serde(default = "default_max_length")]
    pub max_length: u32,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
}

fn default_max_length() -> u32 {
    2048
}
fn default_temperature() -> f32 {
    0.7
}

#[derive(Debug, Serialize)]
pub struct SeedChatResponse {
    pub response: String,
    pub history: Vec<ChatMessage>,
    pub user: String,
    /// The same as `user`, under the name of the seed's `/api/chat`.
    pub user_id: String,
}

/// The history as messages. A flat list of strings alternates user and
/// assistant; it cannot be mixed with the other forms, whose roles are
/// explicit, since a string's role would then depend on what precedes it.
fn history_messages(history: Vec<Turn>) -> Result<Vec<ChatMessage>, ApiError> {
    let flat = history
        .iter()
        .filter(|t| matches!(t, Turn::Text(_)))
        .count();
    if flat > 0 && flat < history.len() {
        return Err(ApiError::InvalidField {
            message: "history: either a flat list of strings (alternating user and assistant) \
                      or a list of messages or [user, assistant] pairs, not both"
                .into(),
            param: "history",
        });
    }
    let mut messages = Vec::with_capacity(history.len() * 2 + 2);
    for (i, turn) in history.into_iter().enumerate() {
        match turn {
            Turn::Message(m) => messages.push(m),
            Turn::Pair(user, assistant) => {
                messages.push(ChatMessage {
                    role: Role::User,
                    content: user,
                });
                messages.push(ChatMessage {
                    role: Role::Assistant,
                    content: assistant,
                });
            }
            Turn::Text(content) => messages.push(ChatMessage {
                role: if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                content,
            }),
        }
    }
    Ok(messages)
}

pub async fn chat(
    State(state): State<AppState>,
    Extension(audit): Extension<Audit>,
    caller: Authorized<ChatPermission>,
    ApiJson(body): ApiJson<SeedChatRequest>,
) -> Result<Json<SeedChatResponse>, ApiError> {
    let received = Instant::now();
    if body.message.trim().is_empty() {
        return Err(ApiError::InvalidField {
            message: "message: must not be empty".into(),
            param: "message",
        });
    }
    let mut history = history_messages(body.history)?;
    history.push(ChatMessage {
        role: Role::User,
        content: body.message,
    });
    let requested = Requested {
        max_tokens: Some(body.max_length),
        temperature: Some(body.temperature),
        policy_max_tokens: caller.overrides.max_tokens,
        ..Default::default()
    };
    let prepared =
        chat_pipeline::prepare(&state, &caller.principal, &audit, history, requested).await?;
    // The returned history carries the filtered input, never the raw one.
    let mut history = prepared.request.messages.clone();
    let rx = chat_pipeline::start(&state, &caller.principal, &audit, prepared, received)?;
    let (response, _, _, _) = chat_pipeline::collect(rx).await?;
    history.push(ChatMessage {
        role: Role::Assistant,
        content: response.clone(),
    });
    Ok(Json(SeedChatResponse {
        response,
        history,
        user: caller.principal.subject.clone(),
        user_id: caller.principal.subject,
    }))
}
