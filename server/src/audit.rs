//! The audit record of one request: who, decision, tokens, redactions.
//!
//! The middleware (`routes::audit_layer`) puts an [`Audit`] handle into the
//! request; the extractor and handlers fill it in. The line is written when
//! the last handle is dropped: for a streamed answer that is when the
//! stream ends, so token counts are complete. Secrets, tokens and prompt
//! text never enter the record unless `audit.includePrompts` is set.
//!
//! A leaf module: it knows nothing of the server's state, so everything
//! that handles a request can hold a handle without an import cycle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::AuthFailure;

/// Rate-limit state reported in `RateLimit-*` headers of a successful
/// response.
#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
}

/// Where this process runs: its pod and node (the second seed's "node id",
/// from the downward API), so failures can be grouped by node. Read once
/// at start; `None` outside Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub pod: Option<String>,
    pub node: Option<String>,
}

impl Placement {
    /// The placement named by the environment variables the operator sets
    /// on the server container (`files::names::POD_NAME_ENV`,
    /// `NODE_NAME_ENV`); empty values count as unset.
    pub fn from_env() -> Self {
        use securechat_crds::files::names::{NODE_NAME_ENV, POD_NAME_ENV};
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            pod: var(POD_NAME_ENV),
            node: var(NODE_NAME_ENV),
        }
    }
}

#[derive(Debug, Default)]
struct Record {
    time: String,
    pod: Option<String>,
    node: Option<String>,
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
    policy_reason: Option<String>,
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
            pod = r.pod.as_deref(),
            node = r.node.as_deref(),
            client = r.client.as_deref(),
            method = %r.method,
            route = %r.route,
            status = r.status,
            decision = r.decision,
            principal = r.principal.as_deref(),
            key_id = r.key_id.as_deref(),
            role = r.role.as_deref(),
            auth_failure = r.auth_failure,
            policy_denied = r.policy_reason.as_deref(),
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

    /// `auth.policy` denied the request, for this reason.
    pub fn policy_denied(&self, reason: &str) {
        self.with(|r| r.policy_reason = Some(reason.to_string()));
    }

    pub fn rate(&self, info: RateInfo) {
        self.with(|r| r.rate = Some(info));
    }

    /// Reports `info` instead of the rate already noted when it has less
    /// left for its limit (a token budget that binds before the request
    /// limit), or when none was noted.
    pub fn rate_if_tighter(&self, info: RateInfo) {
        self.with(|r| {
            let fraction = |i: &RateInfo| f64::from(i.remaining) / f64::from(i.limit.max(1));
            if r.rate.is_none_or(|old| fraction(&info) < fraction(&old)) {
                r.rate = Some(info);
            }
        });
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

    /// A new record for a request that arrived at `time`; `enabled` and
    /// `include_prompts` come from the config in force then; `placement`
    /// is this process's.
    pub fn start(
        enabled: bool,
        include_prompts: bool,
        placement: &Placement,
        time: DateTime<Utc>,
        client: Option<String>,
        method: String,
    ) -> Self {
        Self(Arc::new(Inner {
            enabled,
            include_prompts,
            record: Mutex::new(Record {
                time: time.to_rfc3339(),
                pod: placement.pod.clone(),
                node: placement.node.clone(),
                client,
                method,
                route: "unmatched".into(),
                ..Default::default()
            }),
        }))
    }

    /// The matched route, known only inside the router.
    pub fn route(&self, route: String) {
        self.with(|r| r.route = route);
    }

    /// Completes the record with the response's status and latency;
    /// returns the route (for the request metrics) and the rate-limit
    /// state a successful response reports in its headers.
    pub fn finish(&self, status: u16, latency: Duration) -> (String, Option<RateInfo>) {
        let mut out = (String::new(), None);
        self.with(|r| {
            r.status = status;
            r.latency_ms = latency.as_secs_f64() * 1000.0;
            r.decision = decision(status);
            out = (
                r.route.clone(),
                r.rate.filter(|_| (200..300).contains(&status)),
            );
        });
        out
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

/// The audit decision a response status stands for.
fn decision(status: u16) -> &'static str {
    match status {
        401 => "unauthenticated",
        403 => "forbidden",
        429 => "throttled",
        s if s < 400 => "allowed",
        _ => "error",
    }
}
