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
//! whose `allow` is undefined for a request, that fails to evaluate (a
//! runtime error such as a conflict between two complete rules), or whose
//! `allow`, `reason` or `max_tokens` has another type than the above,
//! denies: a policy fails closed.
//!
//! # What one decision costs
//!
//! Each rule of the contract is compiled as its own entry point, and a
//! decision evaluates `allow`, then `max_tokens` only when allowed or
//! `reason` only when denied (each only if the module defines it). A
//! wrapper rule gathering all three into one object cost about 15 µs more
//! per decision than `allow` alone in a 1-rule module (regorus 0.9.1,
//! release, busy 2-core machine: p50 17.4 µs against 2.4 µs). The input is
//! built as a Rego value directly, not through serde_json (about 4 µs).

use std::collections::BTreeMap;
use std::sync::Arc;

use regorus::{CompiledPolicy, Value};
use thiserror::Error;

/// The package the module must declare.
pub const PACKAGE: &str = "securechat";

/// The file name the module is known by in error messages.
const MODULE_ID: &str = "policy.rego";

/// Longest accepted module, in bytes: a policy is a handful of rules, and
/// the config that carries it is a ConfigMap (1 MiB in all).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The package's path in `data`.
const PACKAGE_PATH: &str = "data.securechat";

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
    /// A runtime error in the module (e.g. two complete rules disagreeing).
    #[error("the policy failed: {0}")]
    Runtime(String),
    /// A rule of the contract gave a value of another type than documented.
    #[error("the policy's decision is malformed: {0}")]
    Malformed(String),
}

/// A module that compiled. Cheap to clone; evaluation takes `&self`, so
/// one compiled policy serves every request thread at once.
#[derive(Clone)]
pub struct Policy {
    /// `allow`, prepared for evaluation.
    allow: CompiledPolicy,
    /// `reason`, when the module defines it.
    reason: Option<CompiledPolicy>,
    /// `max_tokens`, when the module defines it.
    max_tokens: Option<CompiledPolicy>,
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

/// The document a module sees as `input`: each field under its own name
/// ([`PolicyInput::to_value`]), an absent one as `null`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyInput {
    /// Who is asking: `key:<id>` for an API key and the tokens minted from
    /// it, `oidc:<issuer>#<sub>` for an external issuer's token, the
    /// SPIFFE ID for a request over a client certificate (`auth.mtls`).
    pub principal: String,
    /// The API key behind the request, if any (its id).
    pub key_id: Option<String>,
    /// The namespace of the ChatApiKey behind the request (keys minted by
    /// the operator are named `<namespace>/<name>`), else the one a client
    /// certificate's SPIFFE ID names (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`);
    /// none otherwise.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUsage {
    /// Requests the caller made earlier in this window on this replica,
    /// not counting this one (so `requests < 10` admits exactly ten).
    pub requests: u64,
    /// The window's length in seconds; it starts at the caller's first
    /// request and a new one starts when it is over.
    pub window_seconds: u64,
}

/// The time of a request, in the two shapes policies compare most easily.
#[derive(Debug, Clone, PartialEq)]
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

/// A Rego object from `(name, value)` pairs.
fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    let map: BTreeMap<Value, Value> = fields
        .into_iter()
        .map(|(k, v)| (Value::from(k), v))
        .collect();
    Value::from(map)
}

fn string_or_null(s: &Option<String>) -> Value {
    s.as_deref().map_or(Value::Null, Value::from)
}

impl PolicyInput {
    /// The `input` document.
    pub fn to_value(&self) -> Value {
        let Self {
            principal,
            key_id,
            namespace,
            auth_method,
            tier,
            method,
            route,
            model,
            request_bytes,
            usage,
            client_address,
            time,
        } = self;
        object([
            ("principal", Value::from(principal.as_str())),
            ("key_id", string_or_null(key_id)),
            ("namespace", string_or_null(namespace)),
            ("auth_method", Value::from(auth_method.as_str())),
            ("tier", Value::from(tier.as_str())),
            ("method", Value::from(method.as_str())),
            ("route", Value::from(route.as_str())),
            ("model", Value::from(model.as_str())),
            ("request_bytes", Value::from(*request_bytes)),
            (
                "usage",
                object([
                    ("requests", Value::from(usage.requests)),
                    ("window_seconds", Value::from(usage.window_seconds)),
                ]),
            ),
            ("client_address", string_or_null(client_address)),
            (
                "time",
                object([
                    ("unix_seconds", Value::from(time.unix_seconds)),
                    ("rfc3339", Value::from(time.rfc3339.as_str())),
                    ("hour_utc", Value::from(time.hour_utc)),
                    ("weekday_utc", Value::from(time.weekday_utc.as_str())),
                ]),
            ),
        ])
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
        let mut engine = regorus::Engine::new();
        engine
            .add_policy(MODULE_ID.to_string(), source.to_string())
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        let packages = engine
            .get_packages()
            .map_err(|e| PolicyError::Compile(e.to_string()))?;
        if packages.iter().any(|p| p.as_str() != PACKAGE_PATH) {
            let names: Vec<&str> = packages
                .iter()
                .map(|p| p.strip_prefix("data.").unwrap_or(p))
                .collect();
            return Err(PolicyError::WrongPackage(names.join(", ")));
        }
        // A path that is no rule of the module is the one way left to fail
        // once it parsed (a `default allow` alone counts as a rule).
        let mut entry = |rule: &str| {
            engine
                .compile_with_entrypoint(&format!("{PACKAGE_PATH}.{rule}").into())
                .ok()
        };
        let allow = entry("allow").ok_or(PolicyError::NoAllowRule)?;
        let reason = entry("reason");
        let max_tokens = entry("max_tokens");
        Ok(Self {
            allow,
            reason,
            max_tokens,
            source: source.into(),
        })
    }

    /// The module's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the module on one request's input.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<PolicyDecision, EvalError> {
        // Rc-backed: each evaluation below clones a pointer, not the input.
        let input = input.to_value();
        let eval = |rule: &CompiledPolicy| {
            rule.eval_with_input(input.clone())
                .map_err(|e| EvalError::Runtime(e.to_string()))
        };
        let malformed = |what: &str| EvalError::Malformed(what.to_string());
        let allow = match eval(&self.allow)? {
            Value::Undefined => false,
            Value::Bool(b) => b,
            _ => return Err(malformed("allow is not a boolean")),
        };
        if !allow {
            let reason = match &self.reason {
                None => None,
                Some(rule) => match eval(rule)? {
                    Value::Undefined | Value::Null => None,
                    Value::String(s) => Some(s.to_string()),
                    _ => return Err(malformed("reason is not a string")),
                },
            };
            return Ok(PolicyDecision {
                allow,
                reason,
                max_tokens: None,
            });
        }
        let max_tokens = match &self.max_tokens {
            None => None,
            Some(rule) => match eval(rule)? {
                Value::Undefined | Value::Null => None,
                n @ Value::Number(_) => {
                    let n = n
                        .as_f64()
                        .map_err(|_| malformed("max_tokens is not a number"))?;
                    if n.is_nan() || n < 1.0 {
                        return Err(malformed("max_tokens must be at least 1"));
                    }
                    // Larger than any context: the same as no cap.
                    Some(n.min(f64::from(u32::MAX)) as u32)
                }
                _ => return Err(malformed("max_tokens is not a number")),
            },
        };
        Ok(PolicyDecision {
            allow,
            reason: None,
            max_tokens,
        })
    }
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
    fn absent_fields_are_null_and_the_decision_rules_have_their_types() {
        let policy = Policy::compile(
            "package securechat\nimport rego.v1\n\
             allow if { input.key_id == null; input.namespace == null; input.client_address == null }\n",
        )
        .unwrap();
        let anonymous = PolicyInput {
            key_id: None,
            namespace: None,
            client_address: None,
            ..input("GET", 0)
        };
        assert!(policy.evaluate(&anonymous).unwrap().allow);
        assert!(!policy.evaluate(&input("GET", 0)).unwrap().allow);
        // A wrong type is no decision: the request is denied as on an error.
        for source in [
            "package securechat\nallow := \"yes\"\n",
            "package securechat\nallow := true\nmax_tokens := \"32\"\n",
            "package securechat\nallow := false\nreason := 42\n",
        ] {
            let policy = Policy::compile(source).unwrap();
            let err = policy.evaluate(&input("GET", 0)).unwrap_err();
            assert!(matches!(err, EvalError::Malformed(_)), "{source}: {err}");
        }
        // The reason is asked only of a denial, max_tokens only of an allow.
        let policy = Policy::compile(
            "package securechat\nimport rego.v1\nallow := input.method == \"GET\"\n\
             reason := \"reads only\"\nmax_tokens := 8\n",
        )
        .unwrap();
        let get = policy.evaluate(&input("GET", 0)).unwrap();
        assert_eq!(
            (get.allow, get.reason, get.max_tokens),
            (true, None, Some(8))
        );
        let post = policy.evaluate(&input("POST", 0)).unwrap();
        assert_eq!(
            (post.allow, post.reason.as_deref(), post.max_tokens),
            (false, Some("reads only"), None)
        );
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
