//! Audit log and request metrics: one middleware around every request.
//!
//! The middleware puts an [`Audit`] handle into the request; the extractor
//! and handlers fill it in (who, decision, tokens, redactions). The line is
//! written when the last handle is dropped: for a streamed answer that is
//! when the stream ends, so token counts are complete. Secrets, tokens and
//! prompt text never enter the record unless `audit.includePrompts` is set.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;

use crate::error::AuthFailure;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::serve::ClientAddr;
use crate::state::AppState;

/// Rate-limit state reported in `RateLimit-*` headers of a successful
/// response.
#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
}

#[derive(Debug, Default)]
struct Record {
    time: String,
    client: Option<String>,
    method: String,
    route: String,
    status: u16,
    decision: &'static str,
    principal: Option<String>,
    key_id: Option<String>,
    role: Option<String>,
    auth_failure: Option<&'static str>,
    latency_ms: f64,
    tokens_in: u64,
    tokens_out: u64,
    redactions: u64,
    prompt: Option<String>,
    answer: Option<String>,
    rate: Option<RateInfo>,
}

struct Inner {
    enabled: bool,
    include_prompts: bool,
    record: Mutex<Record>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.enabled {
            return;
        }
        let r = self.record.get_mut().unwrap_or_else(|e| e.into_inner());
        // Structured fields: with the JSON log format each request is one
        // JSON object on one line.
        tracing::info!(
            target: "securechat::audit",
            time = %r.time,
            client = r.client.as_deref(),
            method = %r.method,
            route = %r.route,
            status = r.status,
            decision = r.decision,
            principal = r.principal.as_deref(),
            key_id = r.key_id.as_deref(),
            role = r.role.as_deref(),
            auth_failure = r.auth_failure,
            latency_ms = r.latency_ms,
            tokens_in = r.tokens_in,
            tokens_out = r.tokens_out,
            redactions = r.redactions,
            prompt = r.prompt.as_deref(),
            answer = r.answer.as_deref(),
            "audit"
        );
    }
}

/// A handle on this request's audit record.
#[derive(Clone)]
pub struct Audit(Arc<Inner>);

impl Audit {
    fn with(&self, f: impl FnOnce(&mut Record)) {
        f(&mut self.0.record.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn principal(&self, subject: &str, key_id: Option<&str>, role: &str) {
        self.with(|r| {
            r.principal = Some(subject.to_string());
            r.key_id = key_id.map(str::to_string);
            r.role = Some(role.to_string());
        });
    }

    pub fn auth_failure(&self, failure: AuthFailure) {
        self.with(|r| r.auth_failure = Some(failure.label()));
    }

    pub fn rate(&self, info: RateInfo) {
        self.with(|r| r.rate = Some(info));
    }

    pub fn tokens(&self, prompt: u64, completion: u64) {
        self.with(|r| {
            r.tokens_in = prompt;
            r.tokens_out = completion;
        });
    }

    pub fn redactions(&self, n: u64) {
        self.with(|r| r.redactions += n);
    }

    /// Prompt text, only when configured.
    pub fn prompt(&self, text: impl FnOnce() -> String) {
        if self.0.include_prompts {
            let t = text();
            self.with(|r| r.prompt = Some(t));
        }
    }

    pub fn answer(&self, text: &str) {
        if self.0.include_prompts {
            self.with(|r| r.answer = Some(text.to_string()));
        }
    }

    /// A detached handle for code outside a request (tests).
    pub fn disabled() -> Self {
        Self(Arc::new(Inner {
            enabled: false,
            include_prompts: false,
            record: Mutex::new(Record::default()),
        }))
    }
}

/// Stores the matched route into the audit record; runs inside the router
/// (as a route layer) because only there is the route known.
pub async fn note_route(request: Request, next: Next) -> Response {
    if let (Some(audit), Some(path)) = (
        request.extensions().get::<Audit>(),
        request.extensions().get::<MatchedPath>(),
    ) {
        let route = path.as_str().to_string();
        audit.with(|r| r.route = route);
    }
    next.run(request).await
}

/// The outermost middleware: audit record, request metrics, RateLimit-*
/// headers.
pub async fn middleware(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let runtime = state.runtime();
    let audit = Audit(Arc::new(Inner {
        enabled: runtime.config.audit.enabled,
        include_prompts: runtime.config.audit.include_prompts,
        record: Mutex::new(Record {
            time: Utc::now().to_rfc3339(),
            client: request
                .extensions()
                .get::<ClientAddr>()
                .map(|a| a.0.ip().to_string()),
            method: request.method().to_string(),
            route: "unmatched".into(),
            ..Default::default()
        }),
    }));
    let method = request.method().to_string();
    request.extensions_mut().insert(audit.clone());
    let mut response = next.run(request).await;
    let status = response.status();
    let elapsed = start.elapsed();
    if let Some(failure) = response.extensions().get::<AuthFailure>() {
        audit.auth_failure(*failure);
    }
    let mut route = String::new();
    audit.with(|r| {
        r.status = status.as_u16();
        r.latency_ms = elapsed.as_secs_f64() * 1000.0;
        r.decision = match status.as_u16() {
            401 => "unauthenticated",
            403 => "forbidden",
            429 => "throttled",
            s if s < 400 => "allowed",
            _ => "error",
        };
        route = r.route.clone();
        if let Some(rate) = r.rate.filter(|_| status.is_success()) {
            let h = response.headers_mut();
            h.insert("ratelimit-limit", HeaderValue::from(rate.limit));
            h.insert("ratelimit-remaining", HeaderValue::from(rate.remaining));
            h.insert("ratelimit-reset", HeaderValue::from(rate.reset_secs));
        }
    });
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method,
            status: status.as_u16(),
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels { route })
        .observe(elapsed.as_secs_f64());
    response
}
