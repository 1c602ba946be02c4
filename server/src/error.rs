//! One error type for every request failure, rendered in the OpenAI error
//! shape (`{"error": {"message", "type", "code", "param"}}`) with the right
//! status, so SDKs surface a readable message whatever went wrong.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use securechat_crds::v1alpha1::Tier;
use serde_json::json;

use crate::engine::EngineError;
use crate::limits::{UNAVAILABLE_RETRY_AFTER, Unavailable};

/// Why authentication failed. The label goes to metrics and the audit log;
/// the client sees one generic message so it learns nothing about which
/// check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    Missing,
    Malformed,
    UnknownKey,
    WrongSecret,
    Suspended,
    Expired,
    Revoked,
    InvalidToken,
    TokenExpired,
    UnknownKid,
    AlgorithmMismatch,
    /// A web session cookie that is unknown, signed out or expired.
    SessionExpired,
    /// A client certificate and a bearer credential that are not the same
    /// identity (`auth.mtls`): the bearer is not a key bound to the
    /// certificate's SPIFFE ID.
    IdentityMismatch,
    /// A key bound to a SPIFFE ID, sent without that client certificate.
    CertificateRequired,
}

impl AuthFailure {
    pub fn label(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::WrongSecret => "wrong_secret",
            AuthFailure::Suspended => "key_suspended",
            AuthFailure::Expired => "key_expired",
            AuthFailure::Revoked => "key_revoked",
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::TokenExpired => "token_expired",
            AuthFailure::UnknownKid => "unknown_kid",
            AuthFailure::AlgorithmMismatch => "algorithm_mismatch",
            AuthFailure::SessionExpired => "session_expired",
            AuthFailure::IdentityMismatch => "identity_mismatch",
            AuthFailure::CertificateRequired => "certificate_required",
        }
    }

    /// What the caller is told. Lifecycle states are worth telling (the
    /// caller can act: ask for a new key) and reveal nothing to someone who
    /// does not already hold the key, because they are only reported after
    /// the secret matched.
    fn message(&self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "missing credentials: send Authorization: Bearer <API key or token>"
            }
            AuthFailure::Suspended => "this API key is suspended",
            AuthFailure::Expired => "this API key has expired",
            AuthFailure::Revoked => "this API key has been revoked",
            AuthFailure::TokenExpired => "the access token has expired",
            AuthFailure::SessionExpired => {
                "your session has expired or was signed out; sign in again"
            }
            AuthFailure::IdentityMismatch => {
                "the client certificate and the bearer credential are not the same identity: send a key bound to the certificate's SPIFFE ID, or only one of the two"
            }
            AuthFailure::CertificateRequired => {
                "this API key is bound to a client certificate: connect with that certificate"
            }
            _ => "invalid credentials",
        }
    }
}

/// Every failure a handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", .0.message())]
    Unauthorized(AuthFailure),
    #[error("too many failed authentication attempts; retry in {}s", .0.as_secs())]
    AuthThrottled(Duration),
    #[error("your role does not allow this: {0} permission required")]
    Forbidden(&'static str),
    /// A verified client certificate whose identity `auth.mtls.allow` does
    /// not admit.
    #[error("client certificate refused: {0}")]
    IdentityNotAllowed(String),
    #[error("rate limit exceeded: {limit} requests per minute")]
    RateLimited { limit: u32, retry_after: Duration },
    #[error("token quota exceeded: {limit} tokens per minute")]
    QuotaExceeded { limit: u32, retry_after: Duration },
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("{message}")]
    InvalidField {
        message: String,
        param: &'static str,
    },
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    #[error("Content-Encoding {0:?} is not supported: send the body uncompressed")]
    UnsupportedEncoding(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("the request body was not received in time")]
    RequestTimeout,
    #[error("the prompt is {prompt_tokens} tokens; the {tier} tier allows at most {limit}")]
    PromptOverTierLimit {
        prompt_tokens: usize,
        limit: usize,
        tier: Tier,
    },
    #[error("the request contains sensitive data ({0}) and was refused")]
    SensitiveData(String),
    #[error("the model {0:?} does not exist")]
    ModelNotFound(String),
    #[error("no route for this path")]
    NotFound,
    #[error("cross-origin requests from this origin are not allowed")]
    OriginNotAllowed,
    #[error("request refused by the CSRF defence: {0}")]
    CsrfRefused(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("server not ready: {0}")]
    NotReady(String),
    /// The store the replicas share limits in is unreachable and the
    /// policy is FailClosed: no request is admitted unmetered.
    #[error("limits cannot be checked right now (the shared store is unavailable); retry shortly")]
    SharedStateUnavailable(#[from] Unavailable),
    #[error("internal error")]
    Internal(String),
    /// `auth.policy` denied the request; the message is its reason.
    #[error("{0}")]
    PolicyDenied(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::AuthThrottled(_)
            | ApiError::RateLimited { .. }
            | ApiError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Forbidden(_)
            | ApiError::IdentityNotAllowed(_)
            | ApiError::OriginNotAllowed
            | ApiError::CsrfRefused(_)
            | ApiError::PolicyDenied(_) => StatusCode::FORBIDDEN,
            ApiError::BadJson(_)
            | ApiError::InvalidRequest(_)
            | ApiError::InvalidField { .. }
            | ApiError::PromptOverTierLimit { .. }
            | ApiError::SensitiveData(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::ModelNotFound(_) | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Engine(e) => match e {
                EngineError::QueueFull { .. } | EngineError::Unavailable(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                EngineError::PromptTooLong { .. } | EngineError::InvalidRequest(_) => {
                    StatusCode::BAD_REQUEST
                }
                EngineError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::NotReady(_) | ApiError::SharedStateUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(f) => match f {
                AuthFailure::Missing => "missing_credentials",
                AuthFailure::Suspended => "key_suspended",
                AuthFailure::Expired => "key_expired",
                AuthFailure::Revoked => "key_revoked",
                AuthFailure::TokenExpired => "token_expired",
                AuthFailure::SessionExpired => "session_expired",
                AuthFailure::IdentityMismatch => "identity_mismatch",
                AuthFailure::CertificateRequired => "certificate_required",
                _ => "invalid_api_key",
            },
            ApiError::AuthThrottled(_) => "too_many_auth_failures",
            ApiError::Forbidden(_) => "permission_denied",
            ApiError::IdentityNotAllowed(_) => "identity_not_allowed",
            ApiError::RateLimited { .. } => "rate_limit_exceeded",
            ApiError::QuotaExceeded { .. } => "token_quota_exceeded",
            ApiError::BadJson(_) => "invalid_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::InvalidField { .. } => "invalid_value",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::UnsupportedEncoding(_) => "unsupported_content_encoding",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::PromptOverTierLimit { .. } => "prompt_too_long",
            ApiError::SensitiveData(_) => "sensitive_data",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::NotFound => "not_found",
            ApiError::OriginNotAllowed => "origin_not_allowed",
            ApiError::CsrfRefused(_) => "csrf_refused",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Engine(e) => match e {
                EngineError::QueueFull { .. } => "model_busy",
                EngineError::PromptTooLong { .. } => "context_length_exceeded",
                EngineError::InvalidRequest(_) => "invalid_request",
                EngineError::Unavailable(_) => "model_unavailable",
                EngineError::Internal(_) => "inference_failed",
            },
            ApiError::NotReady(_) => "not_ready",
            ApiError::SharedStateUnavailable(_) => "shared_state_unavailable",
            ApiError::Internal(_) => "internal_error",
            ApiError::PolicyDenied(_) => "policy_denied",
        }
    }

    /// The OpenAI `error.type`.
    fn kind(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::AuthThrottled(d) => Some(*d),
            ApiError::RateLimited { retry_after, .. }
            | ApiError::QuotaExceeded { retry_after, .. } => Some(*retry_after),
            ApiError::Engine(EngineError::QueueFull { retry_after, .. }) => Some(*retry_after),
            ApiError::NotReady(_) => Some(Duration::from_secs(5)),
            ApiError::SharedStateUnavailable(_) => Some(UNAVAILABLE_RETRY_AFTER),
            _ => None,
        }
    }

    /// The JSON body, also used for SSE error events.
    pub fn body(&self) -> serde_json::Value {
        let param = match self {
            ApiError::InvalidField { param, .. } => Some(*param),
            ApiError::PromptOverTierLimit { .. } => Some("messages"),
            _ => None,
        };
        // Internal details go to the log, never to the client.
        let message = match self {
            ApiError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error");
                self.to_string()
            }
            _ => self.to_string(),
        };
        json!({"error": {"message": message, "type": self.kind(), "code": self.code(), "param": param}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(after) = self.retry_after() {
            // Round up: "retry in 0s" would invite an immediate retry.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let ApiError::RateLimited { limit, retry_after }
        | ApiError::QuotaExceeded { limit, retry_after } = &self
        {
            headers.insert("ratelimit-limit", HeaderValue::from(*limit));
            headers.insert("ratelimit-remaining", HeaderValue::from(0));
            headers.insert(
                "ratelimit-reset",
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        if let ApiError::Unauthorized(failure) = &self {
            let value = match failure {
                AuthFailure::Missing => "Bearer realm=\"securechat\"",
                _ => "Bearer realm=\"securechat\", error=\"invalid_token\"",
            };
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        }
        // The failure label travels to the audit/metrics middleware.
        if let ApiError::Unauthorized(failure) = self {
            response.extensions_mut().insert(failure);
        }
        response
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;
