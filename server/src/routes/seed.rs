//! POST /api/chat in the first seed's shape:
//! `{message, history, max_length=2048, temperature=0.7}` ->
//! `{response, history, user}`.
//!
//! `history` is accepted in both ChatGLM forms: a list of
//! `{role, content}` messages (ChatGLM3) or of `[user, assistant]` pairs
//! (ChatGLM2); it is returned in the message form with the new turn
//! appended. `max_length` bounds the generated tokens.

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
    let mut history: Vec<ChatMessage> = Vec::with_capacity(body.history.len() * 2 + 2);
    for turn in body.history {
        match turn {
            Turn::Message(m) => history.push(m),
            Turn::Pair(user, assistant) => {
                history.push(ChatMessage {
                    role: Role::User,
                    content: user,
                });
                history.push(ChatMessage {
                    role: Role::Assistant,
                    content: assistant,
                });
            }
        }
    }
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
        user: caller.principal.subject,
    }))
}
