//! Token-endpoint errors in the shape OAuth clients parse (RFC 6749 §5.2):
//! `{"error": "<code>", "error_description": "..."}`, 400 unless the client
//! failed to authenticate (401 with `WWW-Authenticate`), never cached.
//!
//! The rest of the API answers in the OpenAI shape; OAuth libraries
//! (authlib, oauth2-rs, Spring) only understand this one at /oauth/token.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{ApiError, AuthFailure};

/// The registered error codes the endpoint uses. RFC 6749 §5.2 defines the
/// first five; `temporarily_unavailable` and `server_error` come from the
/// OAuth Extensions Error Registry and cover throttling and outages, which
/// §5.2 has no code for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnsupportedGrantType,
    InvalidScope,
    TemporarilyUnavailable,
    ServerError,
}

impl OAuthCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            OAuthCode::InvalidRequest => "invalid_request",
            OAuthCode::InvalidClient => "invalid_client",
            OAuthCode::InvalidGrant => "invalid_grant",
            OAuthCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthCode::InvalidScope => "invalid_scope",
            OAuthCode::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthCode::ServerError => "server_error",
        }
    }
}

/// One token-endpoint failure.
#[derive(Debug)]
pub struct OAuthError {
    pub code: OAuthCode,
    pub description: String,
    /// Set for 429/503 answers; `None` means 400/401/500 by code.
    status: Option<StatusCode>,
    retry_after: Option<Duration>,
    /// Why authentication failed, for the audit log and metrics.
    failure: Option<AuthFailure>,
}

impl OAuthError {
    pub fn new(code: OAuthCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            status: None,
            retry_after: None,
            failure: None,
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(OAuthCode::InvalidRequest, description)
    }

    /// The client did not authenticate: missing, unknown or wrong secret.
    /// The description never says which, so a guesser learns nothing.
    pub fn invalid_client(failure: AuthFailure) -> Self {
        let description = match failure {
            AuthFailure::Missing => {
                "client authentication required: send the API key as client_secret \
                 (form or JSON body) or with HTTP Basic"
            }
            _ => "client authentication failed",
        };
        Self {
            failure: Some(failure),
            ..Self::new(OAuthCode::InvalidClient, description)
        }
    }

    /// The secret matched but the key may not be used now (suspended,
    /// expired, revoked): the grant itself is no longer valid. Telling the
    /// holder why is safe (they proved they hold the key) and actionable.
    pub fn invalid_grant(failure: AuthFailure) -> Self {
        let description = match failure {
            AuthFailure::Suspended => "this API key is suspended",
            AuthFailure::Expired => "this API key has expired",
            AuthFailure::Revoked => "this API key has been revoked",
            _ => "the grant is not valid",
        };
        Self {
            failure: Some(failure),
            ..Self::new(OAuthCode::InvalidGrant, description)
        }
    }

    /// A method other than POST: 405 (the router adds `Allow`), still in
    /// this endpoint's error shape.
    pub fn method_not_allowed() -> Self {
        Self {
            status: Some(StatusCode::METHOD_NOT_ALLOWED),
            ..Self::invalid_request("the token endpoint accepts POST only")
        }
    }

    /// The same error with another description.
    pub fn described(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    pub fn status(&self) -> StatusCode {
        if let Some(status) = self.status {
            return status;
        }
        match self.code {
            OAuthCode::InvalidClient => StatusCode::UNAUTHORIZED,
            OAuthCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            OAuthCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Failures raised by the shared helpers (body reading, guards, limits,
/// signing) are translated, so the endpoint has one error shape.
impl From<ApiError> for OAuthError {
    fn from(error: ApiError) -> Self {
        let description = error.to_string();
        match error {
            ApiError::Unauthorized(failure) => match failure {
                AuthFailure::Suspended | AuthFailure::Expired | AuthFailure::Revoked => {
                    OAuthError::invalid_grant(failure)
                }
                _ => OAuthError::invalid_client(failure),
            },
            ApiError::AuthThrottled(retry_after)
            | ApiError::RateLimited { retry_after, .. }
            | ApiError::QuotaExceeded { retry_after, .. } => Self {
                status: Some(StatusCode::TOO_MANY_REQUESTS),
                retry_after: Some(retry_after),
                ..Self::new(OAuthCode::TemporarilyUnavailable, description)
            },
            ApiError::NotReady(_) => Self {
                retry_after: Some(Duration::from_secs(5)),
                ..Self::new(OAuthCode::TemporarilyUnavailable, description)
            },
            ApiError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error at the token endpoint");
                Self::new(OAuthCode::ServerError, "internal error")
            }
            ApiError::Engine(_) => Self::new(OAuthCode::ServerError, description),
            // Everything else is a request the endpoint cannot parse: bad
            // JSON, wrong content type, oversized or trickled body.
            _ => OAuthError::invalid_request(description),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({"error": self.code.as_str(), "error_description": self.description});
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        // RFC 6749 §5.1: token responses must not be cached; errors too,
        // since they may describe the state of a key.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6749 §5.2: 401 carries a challenge for the scheme the
            // endpoint accepts in a header, HTTP Basic (§2.3.1).
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"securechat\", charset=\"UTF-8\""),
            );
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some(failure) = self.failure {
            response.extensions_mut().insert(failure);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_rfc_6749() {
        assert_eq!(
            OAuthError::invalid_client(AuthFailure::WrongSecret).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            OAuthError::invalid_grant(AuthFailure::Expired).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            OAuthError::invalid_request("x").status(),
            StatusCode::BAD_REQUEST
        );
        let throttled = OAuthError::from(ApiError::AuthThrottled(Duration::from_millis(1500)));
        assert_eq!(throttled.code, OAuthCode::TemporarilyUnavailable);
        assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
        let response = throttled.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn shared_helper_errors_become_invalid_request() {
        for error in [
            ApiError::BadJson("eof".into()),
            ApiError::UnsupportedMediaType,
            ApiError::PayloadTooLarge(10),
            ApiError::RequestTimeout,
        ] {
            assert_eq!(OAuthError::from(error).code, OAuthCode::InvalidRequest);
        }
        assert_eq!(
            OAuthError::from(ApiError::Unauthorized(AuthFailure::Revoked)).code,
            OAuthCode::InvalidGrant
        );
        assert_eq!(
            OAuthError::from(ApiError::Internal("disk".into())).description,
            "internal error",
            "internal details never reach the client"
        );
    }
}
