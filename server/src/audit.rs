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

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

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

/// The record; serialised as the audit line's fields (see [`Line`]), unset
/// ones left out.
#[derive(Debug, Default, Serialize)]
struct Record {
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    method: String,
    route: String,
    status: u16,
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_failure: Option<&'static str>,
    #[serde(rename = "policy_denied", skip_serializing_if = "Option::is_none")]
    policy_reason: Option<String>,
    latency_ms: f64,
    tokens_in: u64,
    tokens_out: u64,
    redactions: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    answer: Option<String>,
    /// Reported in the response's headers, not in the line.
    #[serde(skip)]
    rate: Option<RateInfo>,
}

struct Inner {
    enabled: bool,
    include_prompts: bool,
    record: Mutex<Record>,
}

/// Where this process's audit lines go (see [`set_sink`]).
type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;
static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends every audit line (one JSON object and a newline) to `sink`, from
/// now on; set once, at start (`main`: the log writer, so audit and log
/// lines share stderr). Until then, and in a process that never sets it
/// (a test that does not read them), lines go nowhere. Returns false if a
/// sink was set already.
pub fn set_sink(sink: impl Fn(&[u8]) + Send + Sync + 'static) -> bool {
    SINK.set(Box::new(sink)).is_ok()
}

/// The target log shippers select audit lines by (the name tracing gave
/// them before the line was written here).
pub const TARGET: &str = "securechat::audit";

/// One audit line: the log format's `timestamp`, `level`, `message` and
/// `target` around the record's fields.
#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    level: &'static str,
    #[serde(flatten)]
    record: &'a Record,
    message: &'static str,
    target: &'static str,
}

impl Record {
    /// The record as one JSON line, newline included, written `now`.
    fn line(&self, now: DateTime<Utc>) -> Vec<u8> {
        let line = Line {
            timestamp: now.to_rfc3339_opts(SecondsFormat::Micros, true),
            level: "INFO",
            record: self,
            message: "audit",
            target: TARGET,
        };
        let mut out = Vec::with_capacity(512);
        // Writing into a Vec fails only on a non-string map key; Line has none.
        let _ = serde_json::to_writer(&mut out, &line);
        out.push(b'\n');
        out
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.enabled {
            return;
        }
        // Serialised here rather than as a tracing event's fields: tracing's
        // JSON formatter visits and boxes every field, which took 10% of
        // the server's CPU at 11k req/s (perf, GET /v1/models).
        if let Some(sink) = SINK.get() {
            let r = self.record.get_mut().unwrap_or_else(|e| e.into_inner());
            sink(&r.line(Utc::now()));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_line_is_one_json_object_without_the_unset_fields() {
        let record = Record {
            time: "2026-12-07T05:00:00+00:00".into(),
            client: Some("10.0.0.7".into()),
            method: "POST".into(),
            route: "/v1/chat/completions".into(),
            status: 200,
            decision: decision(200),
            principal: Some("key:abc".into()),
            key_id: Some("abc".into()),
            role: Some("Developer".into()),
            latency_ms: 1.5,
            tokens_in: 3,
            tokens_out: 6,
            redactions: 1,
            answer: Some("line one\n\"two\"".into()),
            ..Default::default()
        };
        let now = DateTime::parse_from_rfc3339("2026-12-07T05:00:01.25Z")
            .unwrap()
            .with_timezone(&Utc);
        let line = record.line(now);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let value: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            value,
            json!({
                "timestamp": "2026-12-07T05:00:01.250000Z",
                "level": "INFO",
                "time": "2026-12-07T05:00:00+00:00",
                "client": "10.0.0.7",
                "method": "POST",
                "route": "/v1/chat/completions",
                "status": 200,
                "decision": "allowed",
                "principal": "key:abc",
                "key_id": "abc",
                "role": "Developer",
                "latency_ms": 1.5,
                "tokens_in": 3,
                "tokens_out": 6,
                "redactions": 1,
                "answer": "line one\n\"two\"",
                "message": "audit",
                "target": "securechat::audit",
            })
        );
    }
}
