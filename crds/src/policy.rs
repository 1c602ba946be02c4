//! `spec.auth.policy`: a Rego module that decides, for every authorised
//! request, whether it may go on and with what limits. Compiled and
//! evaluated here, with the `regorus` engine, so the operator (which
//! refuses a module that does not compile, before it writes the config)
//! and the server (which evaluates it in-process) run the same code.
//!
//! # The contract
//!
//! The module is `package securechat` and defines:
//!
//! - `allow` (boolean): the request goes on only when it is `true`;
//!   undefined counts as `false`, so a module denies by default.
//! - `reason` (string, optional): told to a denied caller in the 403 body
//!   and written to the audit log.
//! - `max_tokens` (number, optional): lowers this request's max_tokens to
//!   at most this (never raises it above what the caller or the tier
//!   allows); at least 1.
//!
//! Its `input` is [`PolicyInput`] (the field docs say each one). A module
//! that defines none of `allow`, or fails to evaluate (a runtime error such
//! as a conflict between two complete rules), denies: a policy fails
//! closed.

use std::sync::Arc;

use regorus::{CompiledPolicy, PolicyModule, Value};
use serde::Serialize;
use thiserror::Error;

/// The package the module must declare.
pub const PACKAGE: &str = "securechat";

/// The file name the module is known by in error messages.
const MODULE_ID: &str = "policy.rego";

/// Longest accepted module, in bytes: a policy is a handful of rules, and
/// the config that carries it is a ConfigMap (1 MiB in all).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The entry point: one object gathering the user's rules, so one
/// evaluation answers all three (each one undefined becomes its default).
/// A package of its own, so it cannot clash with a rule the user writes.
const WRAPPER: &str = r#"
package securechat_decision

default allow := false

allow := data.securechat.allow if is_boolean(data.securechat.allow)

default reason := null

reason := data.securechat.reason if is_string(data.securechat.reason)

default max_tokens := null

max_tokens := data.securechat.max_tokens if is_number(data.securechat.max_tokens)

decision := {"allow": allow, "reason": reason, "max_tokens": max_tokens}
"#;
const ENTRY_POINT: &str = "data.securechat_decision.decision";

/// Why a module was refused.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// Larger than [`MAX_POLICY_BYTES`].
    #[error("the policy is {0} bytes; at most {MAX_POLICY_BYTES} are accepted")]
    TooLarge(usize),
    /// Does not parse or compile (the message names line and column).
    #[error("the policy does not compile: {0}")]
    Compile(String),
    /// Compiles, but declares another package than [`PACKAGE`].
    #[error("the policy must be `package {PACKAGE}`; it declares {0}")]
    WrongPackage(String),
    /// Declares no `allow` rule, so it would deny everything.
    #[error("the policy defines no `allow` rule, so it would deny every request")]
    NoAllowRule,
}

/// Why an evaluation produced no decision (the request is then denied).
#[derive(Debug, Error)]
pub enum EvalError {
    /// The input could not be turned into a Rego value.
    #[error("the policy input: {0}")]
    Input(#[from] serde_json::Error),
    /// A runtime error in the module (e.g. two complete rules disagreeing).
    #[error("the policy failed: {0}")]
    Runtime(String),
    /// The entry point did not give the documented object.
    #[error("the policy's decision is malformed: {0}")]
    Malformed(String),
}

/// A module that compiled. Cheap to clone; evaluation takes `&self`, so
/// one compiled policy serves every request thread at once.
#[derive(Clone)]
pub struct Policy {
    compiled: CompiledPolicy,
    /// The module's text, as given.
    source: Arc<str>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("bytes", &self.source.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// The document a module sees as `input`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyInput {
    /// Who is asking: `key:<id>` for an API key and the tokens minted from
    /// it, `oidc:<issuer>#<sub>` for an external issuer's token, the
    /// SPIFFE ID for a request over a client certificate (`auth.mtls`).
    pub principal: String,
    /// The API key behind the request, if any (its id).
    pub key_id: Option<String>,
    /// The namespace of the ChatApiKey behind the request, if any (keys
    /// minted by the operator are named `<namespace>/<name>`).
    pub namespace: Option<String>,
    /// How the caller proved it: `ApiKey`, `Token` or `ClientCertificate`
    /// (a client certificate alone).
    pub auth_method: String,
    /// The caller's tier: `ReadOnly`, `Developer` or `Admin`.
    pub tier: String,
    /// The HTTP method, upper case (`GET`, `POST`).
    pub method: String,
    /// The matched route (`/v1/chat/completions`, `/v1/models`), not the
    /// raw path: ids in paths do not make every request a new route.
    pub route: String,
    /// The model the server serves (its id as clients name it).
    pub model: String,
    /// The request body's size in bytes as its Content-Length declares
    /// (0 without one).
    pub request_bytes: u64,
    /// Usage of the current window.
    pub usage: WindowUsage,
    /// The client's address (the peer, or the client a trusted proxy
    /// names), when known.
    pub client_address: Option<String>,
    /// When the request arrived.
    pub time: PolicyTime,
}

/// Usage counters of the caller's current window.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct WindowUsage {
    /// Requests the caller made earlier in this window on this replica,
    /// not counting this one (so `requests < 10` admits exactly ten).
    pub requests: u64,
    /// The window's length in seconds; it starts at the caller's first
    /// request and a new one starts when it is over.
    pub window_seconds: u64,
}

/// The time of a request, in the two shapes policies compare most easily.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyTime {
    /// Seconds since the Unix epoch.
    pub unix_seconds: i64,
    /// RFC 3339, UTC.
    pub rfc3339: String,
    /// Hour of the day, UTC (0-23): office-hours rules without time
    /// built-ins.
    pub hour_utc: u32,
    /// Day of the week, UTC, `Monday` to `Sunday`.
    pub weekday_utc: String,
}

impl PolicyTime {
    /// The fields of `at`.
    pub fn at(at: chrono::DateTime<chrono::Utc>) -> Self {
        use chrono::{Datelike, Timelike, Weekday};
        let weekday = match at.weekday() {
            Weekday::Mon => "Monday",
            Weekday::Tue => "Tuesday",
            Weekday::Wed => "Wednesday",
            Weekday::Thu => "Thursday",
            Weekday::Fri => "Friday",
            Weekday::Sat => "Saturday",
            Weekday::Sun => "Sunday",
        };
        Self {
            unix_seconds: at.timestamp(),
            rfc3339: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            hour_utc: at.hour(),
            weekday_utc: weekday.into(),
        }
    }
}

/// What a module decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    /// Whether the request may go on.
    pub allow: bool,
    /// The module's `reason`, if it gave one.
    pub reason: Option<String>,
    /// The module's `max_tokens`, if it gave one (at least 1).
    pub max_tokens: Option<u32>,
}

impl Policy {
    /// Parses and compiles a module, and checks the contract's shape (the
    /// package, an `allow` rule).
    pub fn compile(source: &str) -> Result<Self, PolicyError> {
        if source.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge(source.len()));
        }
        let modules = [
            PolicyModule {
                id: MODULE_ID.into(),
                content: source.into(),
            },
            PolicyModule {
                id: "securechat-decision.rego".into(),
                content: WRAPPER.into(),
            },
        ];
        let mut engine = regorus::Engine::new();
        for module in &modules {
            engine
                .add_policy(module.id.to_string(), module.content.to_string())
                .map_err(|e| PolicyError::Compile(e.to_string()))?;
        }
        let packages = engine
            .get_packages()
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        let own: Vec<&String> = packages
            .iter()
            .filter(|p| p.as_str() != "data.securechat_decision")
            .collect();
        if own.iter().any(|p| p.as_str() != "data.securechat") {
            let names: Vec<&str> = own
                .iter()
                .map(|p| p.strip_prefix("data.").unwrap_or(p))
                .collect();
            return Err(PolicyError::WrongPackage(names.join(", ")));
        }
        let compiled = engine
            .compile_with_entrypoint(&ENTRY_POINT.into())
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        // The module is prepared now, so the one way left to fail is a
        // path that is no rule (a `default allow` alone counts as one).
        if engine
            .compile_with_entrypoint(&"data.securechat.allow".into())
            .is_err()
        {
            return Err(PolicyError::NoAllowRule);
        }
        Ok(Self {
            compiled,
            source: source.into(),
        })
    }

    /// The module's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the module on one request's input.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<PolicyDecision, EvalError> {
        let input = Value::from(serde_json::to_value(input)?);
        let result = self
            .compiled
            .eval_with_input(input)
            .map_err(|e| EvalError::Runtime(e.to_string()))?;
        decision(&result)
    }
}

/// Reads the wrapper's object.
fn decision(value: &Value) -> Result<PolicyDecision, EvalError> {
    let malformed = |what: &str| EvalError::Malformed(what.to_string());
    let field = |name: &str| &value[&Value::from(name)];
    let allow = *field("allow")
        .as_bool()
        .map_err(|_| malformed("allow is not a boolean"))?;
    let reason = match field("reason") {
        Value::Null | Value::Undefined => None,
        v => Some(
            v.as_string()
                .map_err(|_| malformed("reason is not a string"))?
                .to_string(),
        ),
    };
    let max_tokens = match field("max_tokens") {
        Value::Null | Value::Undefined => None,
        v => {
            let n = v
                .as_f64()
                .map_err(|_| malformed("max_tokens is not a number"))?;
            if n.is_nan() || n < 1.0 {
                return Err(malformed("max_tokens must be at least 1"));
            }
            // Larger than any context: the same as no cap.
            Some(n.min(f64::from(u32::MAX)) as u32)
        }
    };
    Ok(PolicyDecision {
        allow,
        reason,
        max_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../examples/policies/reads-per-window.rego");
    const NAMESPACE_CAP: &str = include_str!("../../examples/policies/namespace-max-tokens.rego");

    fn input(method: &str, requests: u64) -> PolicyInput {
        PolicyInput {
            principal: "key:alice".into(),
            key_id: Some("alice".into()),
            namespace: Some("team-a".into()),
            auth_method: "ApiKey".into(),
            tier: "ReadOnly".into(),
            method: method.into(),
            route: "/v1/models".into(),
            model: "smollm2".into(),
            request_bytes: 0,
            usage: WindowUsage {
                requests,
                window_seconds: 60,
            },
            client_address: Some("10.0.0.7".into()),
            time: PolicyTime::at(chrono::DateTime::UNIX_EPOCH),
        }
    }

    #[test]
    fn the_seed_example_allows_ten_reads_a_window_and_denies_the_eleventh() {
        let policy = Policy::compile(SEED).unwrap();
        for before in 0..10 {
            let d = policy.evaluate(&input("GET", before)).unwrap();
            assert!(d.allow, "read {} of the window", before + 1);
            assert_eq!(d.reason, None);
        }
        let denied = policy.evaluate(&input("GET", 10)).unwrap();
        assert!(!denied.allow);
        assert_eq!(
            denied.reason.as_deref(),
            Some("at most 10 requests per 60 s window may read; this is request 11")
        );
        let post = policy.evaluate(&input("POST", 50)).unwrap();
        assert!(post.allow, "other methods are the tier table's business");
    }

    #[test]
    fn a_namespace_gets_a_lower_max_tokens_and_others_none() {
        let policy = Policy::compile(NAMESPACE_CAP).unwrap();
        let mut batch = input("POST", 0);
        batch.namespace = Some("batch-jobs".into());
        let d = policy.evaluate(&batch).unwrap();
        assert_eq!((d.allow, d.max_tokens), (true, Some(32)));
        let d = policy.evaluate(&input("POST", 0)).unwrap();
        assert_eq!((d.allow, d.max_tokens), (true, None));
        let mut none = input("POST", 0);
        none.namespace = None;
        assert_eq!(policy.evaluate(&none).unwrap().max_tokens, None);
    }

    #[test]
    fn every_input_field_is_visible_to_rego() {
        let policy = Policy::compile(
            r#"package securechat
import rego.v1
allow if {
    input.principal == "key:alice"
    input.key_id == "alice"
    input.namespace == "team-a"
    input.auth_method == "ApiKey"
    input.tier == "ReadOnly"
    input.method == "GET"
    input.route == "/v1/models"
    input.model == "smollm2"
    input.request_bytes == 0
    input.usage.requests == 3
    input.usage.window_seconds == 60
    net.cidr_contains("10.0.0.0/8", input.client_address)
    input.time.unix_seconds == 0
    input.time.rfc3339 == "1970-01-01T00:00:00Z"
    input.time.hour_utc == 0
    input.time.weekday_utc == "Thursday"
}
"#,
        )
        .unwrap();
        assert!(policy.evaluate(&input("GET", 3)).unwrap().allow);
        assert!(!policy.evaluate(&input("GET", 4)).unwrap().allow);
    }

    #[test]
    fn undefined_allow_denies_and_decisions_are_checked() {
        let policy = Policy::compile(
            "package securechat\nimport rego.v1\nallow if input.tier == \"Admin\"\n",
        )
        .unwrap();
        let d = policy.evaluate(&input("GET", 0)).unwrap();
        assert_eq!(
            d,
            PolicyDecision {
                allow: false,
                reason: None,
                max_tokens: None
            }
        );
        let only_default = Policy::compile("package securechat\ndefault allow := true\n").unwrap();
        assert!(only_default.evaluate(&input("GET", 0)).unwrap().allow);
        let zero = Policy::compile("package securechat\nallow := true\nmax_tokens := 0\n").unwrap();
        let err = zero.evaluate(&input("GET", 0)).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn a_runtime_conflict_is_an_error_not_an_allow() {
        let policy = Policy::compile(
            "package securechat\nimport rego.v1\nallow := true if input.method == \"GET\"\nallow := false if input.tier == \"ReadOnly\"\n",
        )
        .unwrap();
        assert!(policy.evaluate(&input("GET", 0)).is_err());
        assert!(!policy.evaluate(&input("POST", 0)).unwrap().allow);
        // regorus resolves functions when it evaluates: an unknown one is
        // an evaluation error, which the server turns into a denial.
        let unknown =
            Policy::compile("package securechat\nallow := no_such_function(1)\n").unwrap();
        assert!(unknown.evaluate(&input("GET", 0)).is_err());
    }

    #[test]
    fn broken_modules_are_refused_with_what_is_wrong() {
        let compile = |source: &str| Policy::compile(source).map(|_| ());
        let err = compile("package securechat\nallow if {\n").unwrap_err();
        assert!(matches!(err, PolicyError::Compile(_)), "{err}");
        let err = compile("package other\nallow := true\n").unwrap_err();
        assert!(
            matches!(&err, PolicyError::WrongPackage(p) if p == "other"),
            "{err}"
        );
        let err = compile("package securechat\nreason := \"no\"\nalow := true\n").unwrap_err();
        assert!(matches!(err, PolicyError::NoAllowRule), "{err}");
        let huge = format!(
            "package securechat\nallow := true\n#{}",
            "x".repeat(MAX_POLICY_BYTES)
        );
        assert!(matches!(
            Policy::compile(&huge),
            Err(PolicyError::TooLarge(_))
        ));
    }
}
