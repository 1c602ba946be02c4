//! `auth.policy` in the request path: after a caller is authenticated,
//! permitted by its tier and within its rate limit, the config's Rego
//! module (compiled once per config, see [`crate::state::LiveConfig`]) is
//! asked about the request. It may deny it (403 with the module's reason,
//! audited) or lower its max_tokens. The contract and the input are
//! [`securechat_crds::policy`]'s; this module gathers the input from the
//! request and keeps the per-caller window counts it reports.

use std::net::IpAddr;
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::header::CONTENT_LENGTH;
use axum::http::request::Parts;
use chrono::Utc;
use securechat_crds::policy::{Policy, PolicyInput, PolicyTime, WindowUsage};

use crate::audit::Audit;
use crate::error::ApiError;
use crate::principal::{Method, Principal};
use crate::request_window::WINDOW;
use crate::state::AppState;

/// What an allowing decision changes about the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// The request's max_tokens is lowered to at most this.
    pub max_tokens: Option<u32>,
}

/// The namespace a SPIFFE ID names by the Kubernetes convention
/// (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, as the
/// operator issues them and SPIRE's and Istio's Kubernetes registrars do).
fn spiffe_namespace(subject: &str) -> Option<&str> {
    let path = subject.strip_prefix("spiffe://")?.split_once('/')?.1;
    match path.split('/').collect::<Vec<_>>()[..] {
        ["ns", namespace, "sa", account] if !namespace.is_empty() && !account.is_empty() => {
            Some(namespace)
        }
        _ => None,
    }
}

/// The input for one request.
fn input(
    state: &AppState,
    parts: &Parts,
    principal: &Principal,
    client: Option<IpAddr>,
    requests_before: u64,
) -> PolicyInput {
    // ChatApiKeys' keys are named `<namespace>/<name>` by the operator;
    // a standalone key's plain name has no namespace. A client
    // certificate's SPIFFE ID names one by the Kubernetes convention.
    let namespace = principal
        .key_id
        .as_ref()
        .and_then(|id| {
            let table = state.api_keys.load();
            let record = table.get(id)?;
            record.name.split_once('/').map(|(ns, _)| ns.to_string())
        })
        .or_else(|| spiffe_namespace(&principal.subject).map(str::to_string));
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or_else(|| parts.uri.path().to_string(), |m| m.as_str().to_string());
    let request_bytes = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    PolicyInput {
        principal: principal.subject.clone(),
        key_id: principal.key_id.clone(),
        namespace,
        auth_method: match principal.method {
            Method::ApiKey => "ApiKey",
            Method::Token => "Token",
            Method::ClientCertificate => "ClientCertificate",
        }
        .into(),
        tier: principal.tier.as_str().into(),
        method: parts.method.as_str().into(),
        route,
        model: state.model_id(),
        request_bytes,
        usage: WindowUsage {
            requests: requests_before,
            window_seconds: WINDOW.as_secs(),
        },
        client_address: client.map(|ip| ip.to_string()),
        time: PolicyTime::at(Utc::now()),
    }
}

/// Asks the config's policy, if it has one, about this request.
pub fn authorize(
    state: &AppState,
    parts: &Parts,
    principal: &Principal,
    client: Option<IpAddr>,
    audit: &Audit,
) -> Result<Overrides, ApiError> {
    let runtime = state.live_config();
    let Some(policy) = &runtime.access_policy else {
        return Ok(Overrides::default());
    };
    let before = state
        .policy_windows
        .count(&principal.subject, Instant::now());
    decide(
        state,
        policy,
        &input(state, parts, principal, client, before),
        audit,
    )
}

/// Evaluates and turns the decision into the request's fate.
fn decide(
    state: &AppState,
    policy: &Policy,
    input: &PolicyInput,
    audit: &Audit,
) -> Result<Overrides, ApiError> {
    let decision = match policy.evaluate(input) {
        Ok(d) => d,
        Err(e) => {
            // Fails closed: a policy that cannot decide admits no one.
            tracing::warn!(error = %e, principal = %input.principal, "the access policy failed; denying");
            state.metrics.policy_decision("error");
            let reason = "the access policy could not decide; ask the model's owner".to_string();
            audit.policy_denied(&reason);
            return Err(ApiError::PolicyDenied(reason));
        }
    };
    if decision.allow {
        state.metrics.policy_decision("allow");
        return Ok(Overrides {
            max_tokens: decision.max_tokens,
        });
    }
    state.metrics.policy_decision("deny");
    let reason = decision
        .reason
        .unwrap_or_else(|| "denied by the access policy".to_string());
    audit.policy_denied(&reason);
    Err(ApiError::PolicyDenied(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spiffe_id_names_its_namespace_by_the_kubernetes_convention() {
        assert_eq!(
            spiffe_namespace("spiffe://cluster.local/ns/batch-jobs/sa/nightly"),
            Some("batch-jobs")
        );
        for other in [
            "key:4f2a",
            "oidc:https://idp/ns/x/sa/y",
            "spiffe://cluster.local/ns/apps",
            "spiffe://cluster.local/ns//sa/web",
            "spiffe://cluster.local/ns/apps/sa/web/extra",
            "spiffe://cluster.local/workload/ns/apps/sa/web",
        ] {
            assert_eq!(spiffe_namespace(other), None, "{other}");
        }
    }
}
