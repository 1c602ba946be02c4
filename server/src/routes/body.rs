//! A JSON body extractor whose every failure is one of our JSON errors:
//! 415 for a wrong content type, 413 over the configured limit (enforced
//! while reading, so a huge body is never buffered), 400 for bad JSON or a
//! field of the wrong type.

use axum::body::to_bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

pub struct ApiJson<T>(pub T);

const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the request declares `want` (parameters such as charset ignored).
pub fn has_content_type(request: &Request, want: &str) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

/// Reads the body up to the configured limit.
pub async fn read_limited(
    request: Request,
    state: &AppState,
) -> Result<axum::body::Bytes, ApiError> {
    let limit = state.runtime().config.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    // A client trickling its body must not hold a task forever.
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match tokio::time::timeout(BODY_TIMEOUT, to_bytes(request.into_body(), limit_usize)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::PayloadTooLarge(limit)),
        Err(_) => Err(ApiError::RequestTimeout),
    }
}

/// Parses JSON, telling syntax errors (400 invalid_json) from shape errors
/// (400 invalid_request) with serde's message, which names the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::InvalidRequest(e.to_string()),
        _ => ApiError::BadJson(e.to_string()),
    })
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        if !has_content_type(&request, "application/json") {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = read_limited(request, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}
