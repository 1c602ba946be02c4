//! A JSON body extractor whose every failure is one of our JSON errors:
//! 415 for a wrong content type or a compressed body, 413 over the
//! configured limit (enforced while reading, so a huge body is never
//! buffered), 408 for a body trickled past the read timeout, 400 for bad
//! JSON, a field of the wrong type or a body that breaks off.

use axum::body::to_bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http_body_util::LengthLimitError;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

pub struct ApiJson<T>(pub T);

/// Whether the request declares `want` (parameters such as charset
/// ignored), once: two Content-Type headers are ambiguous (which one would
/// a proxy in front have checked?) and match nothing.
pub fn has_content_type(request: &Request, want: &str) -> bool {
    let mut values = request.headers().get_all(CONTENT_TYPE).iter();
    let first = values.next();
    if values.next().is_some() {
        return false;
    }
    first
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

/// Reads the body up to the configured limit.
pub async fn read_limited(
    request: Request,
    state: &AppState,
) -> Result<axum::body::Bytes, ApiError> {
    let limits = state.live_config().config.limits.clone();
    let limit = limits.max_body_bytes;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    // We never decode compressed bodies; reading gzip bytes as JSON would
    // report the wrong problem (RFC 9110 §8.4.1: answer 415).
    if let Some(encoding) = request.headers().get(CONTENT_ENCODING) {
        let name = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        if !name.trim().eq_ignore_ascii_case("identity") {
            return Err(ApiError::UnsupportedEncoding(name));
        }
    }
    // A client trickling its body must not hold a task forever.
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let timeout = limits.body_read_timeout.as_std();
    match tokio::time::timeout(timeout, to_bytes(request.into_body(), limit_usize)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let e = e.into_inner();
            if e.is::<LengthLimitError>() {
                Err(ApiError::PayloadTooLarge(limit))
            } else {
                // Bad chunked framing, or the client went away mid-body.
                Err(ApiError::InvalidRequest(format!(
                    "the request body could not be read: {e}"
                )))
            }
        }
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
