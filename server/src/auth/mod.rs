//! Authentication and authorisation of a request: which credential it
//! carries, whose it is (checked by `credentials`, the only place secrets
//! are parsed and compared), and whether that caller may do this now.
//!
//! `Authorized<P>` is an extractor: brute-force guard -> credential check
//! (API key or JWT) -> permission `P` for the caller's tier -> request rate
//! limit -> `auth.policy` (`crate::policy`). Handlers that take it run only
//! for permitted, in-budget callers the policy admits.

use std::marker::PhantomData;
use std::net::IpAddr;
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use chrono::{DateTime, Utc};
use securechat_crds::files::config::ServerConfig;
use securechat_crds::v1alpha1::{Permission, Tier};

use crate::audit::{Audit, RateInfo};
use crate::credentials::{api_key, oidc};
use crate::error::{ApiError, AuthFailure};
use crate::forwarded;
use crate::listener::ClientAddr;
use crate::policy;
use crate::principal::{Method, Principal};
use crate::ratelimit::{Decision, Op, Rate};
use crate::session::{CSRF_HEADER, SESSION_COOKIE, Session, WebPort, cookie};
use crate::state::AppState;
use subtle::ConstantTimeEq;

/// Reads the bearer credential from the Authorization header.
pub fn bearer(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        // Two Authorization headers: which one would a proxy have checked?
        return Err(AuthFailure::Malformed);
    }
    let text = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, credential) = text.split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed);
    }
    let credential = credential.trim();
    if credential.is_empty() || credential.len() > 8192 {
        return Err(AuthFailure::Malformed);
    }
    Ok(credential)
}

/// Checks a credential against the current keys.
pub async fn authenticate(
    state: &AppState,
    credential: &str,
    now: DateTime<Utc>,
) -> Result<Principal, AuthFailure> {
    if api_key::looks_like_api_key(credential) {
        let table = state.api_keys.load();
        let record = api_key::verify(&table, credential, now)?;
        return Ok(Principal {
            subject: format!("key:{}", record.id),
            key_id: Some(record.id.clone()),
            tier: record.tier,
            method: Method::ApiKey,
        });
    }
    if credential.split('.').count() != 3 {
        return Err(AuthFailure::Malformed);
    }
    let runtime = state.live_config();
    // Tokens of a configured external issuer go to its verifier; all
    // others must be ours.
    if let Some(iss) = oidc::peek_issuer(credential)
        && let Some(issuer) = runtime
            .config
            .auth
            .oidc
            .iter()
            .find(|i| i.issuer_url.trim_end_matches('/') == iss.trim_end_matches('/'))
    {
        let identity = state
            .oidc
            .verify(credential, issuer, runtime.policy.leeway_secs)
            .await?;
        return Ok(Principal {
            subject: format!("oidc:{}#{}", identity.issuer, identity.subject),
            key_id: None,
            tier: identity.tier,
            method: Method::Token,
        });
    }
    let verified = state
        .signing
        .load()
        .verify(credential, &runtime.policy, now);
    state.metrics.jwt_verification(match &verified {
        Ok(_) => "ok",
        Err(failure) => failure.label(),
    });
    let (claims, tier) = verified?;
    // Tokens minted from an API key die with it: a revoked or suspended
    // key's outstanding tokens stop working at once, not at their exp.
    let key_id = claims.sub.strip_prefix("key:").map(str::to_string);
    let mut tier = tier;
    if let Some(id) = &key_id {
        let table = state.api_keys.load();
        let record = table.get(id).ok_or(AuthFailure::UnknownKey)?;
        api_key::ensure_usable(record, now)?;
        // A tier lowered since the token was minted applies at once.
        tier = tier.min(record.tier);
    }
    Ok(Principal {
        subject: claims.sub,
        key_id,
        tier,
        method: Method::Token,
    })
}

/// The address the brute-force guard keys on: the peer, or the client a
/// trusted proxy names in `X-Forwarded-For` (see `forwarded`).
pub fn client_ip(state: &AppState, extensions: &Extensions, headers: &HeaderMap) -> Option<IpAddr> {
    let peer = extensions.get::<ClientAddr>()?.0.ip();
    let runtime = state.live_config();
    let forwarded_for = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok());
    Some(forwarded::client_ip(
        peer,
        forwarded_for,
        &runtime.trusted_proxies,
    ))
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The brute-force guard's bucket: `max` failures a minute, all at once.
fn failure_rate(state: &AppState) -> Rate {
    let max = state
        .live_config()
        .config
        .limits
        .max_auth_failures_per_minute;
    Rate::per_minute(max, max)
}

/// Refuses clients with too many recent failures, before any crypto work.
pub async fn check_guard(
    state: &AppState,
    ip: Option<IpAddr>,
    now: Instant,
) -> Result<(), ApiError> {
    let Some(ip) = ip else { return Ok(()) };
    let rate = failure_rate(state);
    match state
        .failure_buckets
        .one(Op::Peek, &ip.to_string(), rate, 1.0, now)
        .await?
    {
        Decision::Allowed { .. } => Ok(()),
        Decision::Denied { retry_after } => {
            state.metrics.limited("auth_failures");
            Err(ApiError::AuthThrottled(retry_after))
        }
    }
}

/// Counts a failure against the client address and the metrics. A store
/// that cannot count it is already counted in its own metric; the request
/// fails either way.
pub async fn note_failure(
    state: &AppState,
    ip: Option<IpAddr>,
    failure: AuthFailure,
    now: Instant,
) {
    state.metrics.auth_failure(failure.label());
    if let Some(ip) = ip {
        let rate = failure_rate(state);
        let _ = state
            .failure_buckets
            .one(Op::Charge, &ip.to_string(), rate, 1.0, now)
            .await;
    }
}

/// Authenticates the request's bearer credential, with the guard. On the
/// web port a request without an Authorization header may instead carry
/// the web UI's session cookie (see [`session_principal`]).
pub async fn principal_from_parts(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let now = Instant::now();
    let ip = client_ip(state, &parts.extensions, &parts.headers);
    check_guard(state, ip, now).await?;
    let on_web_port = parts.extensions.get::<WebPort>().is_some();
    let session_id = cookie(&parts.headers, SESSION_COOKIE);
    let result = match (bearer(&parts.headers), session_id) {
        (Err(AuthFailure::Missing), Some(id)) if on_web_port => {
            let result = session_principal(state, parts, id, Utc::now()).await;
            if let Err(ApiError::Unauthorized(failure)) = &result {
                note_failure(state, ip, *failure, now).await;
            }
            return result;
        }
        (Ok(credential), _) => authenticate(state, credential, Utc::now()).await,
        (Err(failure), _) => Err(failure),
    };
    match result {
        Ok(p) => Ok(p),
        Err(failure) => {
            note_failure(state, ip, failure, now).await;
            Err(ApiError::Unauthorized(failure))
        }
    }
}

/// The caller behind a web session cookie. The cookie alone is not
/// enough (it rides along on any request the browser makes to this site):
/// the request must also carry the session's CSRF token in a custom header,
/// which only script running on this origin can read (from
/// `GET /web/session`) and send, and any `Origin` it has must be this
/// server's own. An API-key session re-checks its key, so suspending,
/// revoking or downgrading a key applies to open sessions at once.
pub async fn session_principal(
    state: &AppState,
    parts: &Parts,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Principal, ApiError> {
    let session = live_session(state, id, now).await?;
    if !same_origin_or_none(&parts.headers) {
        return Err(ApiError::CsrfRefused("the Origin is not this server"));
    }
    let presented = parts
        .headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .ok_or(ApiError::CsrfRefused("the X-CSRF-Token header is missing"))?;
    if !bool::from(presented.ct_eq(session.csrf.as_bytes())) {
        return Err(ApiError::CsrfRefused("the X-CSRF-Token header is wrong"));
    }
    Ok(session.principal)
}

/// The session behind a cookie value, with an API-key session's key
/// re-checked (state and tier) against the current table.
pub async fn live_session(
    state: &AppState,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Session, ApiError> {
    let mut session = state
        .sessions
        .get(id, now)
        .await?
        .ok_or(ApiError::Unauthorized(AuthFailure::SessionExpired))?;
    if let Some(key_id) = &session.principal.key_id {
        let table = state.api_keys.load();
        let record = table
            .get(key_id)
            .ok_or(ApiError::Unauthorized(AuthFailure::UnknownKey))?;
        api_key::ensure_usable(record, now).map_err(ApiError::Unauthorized)?;
        session.principal.tier = session.principal.tier.min(record.tier);
    }
    Ok(session)
}

/// True when the request has no `Origin`, or this server's own.
pub fn same_origin_or_none(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN) else {
        return true;
    };
    headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| origin.as_bytes() == format!("https://{host}").as_bytes())
}

/// A tier's request limit: its own, else the global one, except that the
/// Admin tier has no cap unless it sets one (operators must be able to
/// manage keys while users exhaust theirs).
pub fn request_limit(config: &ServerConfig, tier: Tier) -> Option<u32> {
    match (config.roles.tier(tier).requests_per_minute, tier) {
        (Some(own), _) => Some(own.max(1) as u32),
        (None, Tier::Admin) => None,
        (None, _) => Some(config.rate_limit.requests_per_minute.max(1) as u32),
    }
}

/// Takes one request from the principal's per-minute budget (tier
/// override, else the global limit; `burst` at once).
pub async fn take_request(
    state: &AppState,
    subject: &str,
    tier: Tier,
    audit: &Audit,
) -> Result<(), ApiError> {
    let runtime = state.live_config();
    let Some(per_minute) = request_limit(&runtime.config, tier) else {
        return Ok(());
    };
    let burst = runtime
        .config
        .rate_limit
        .burst
        .map_or(per_minute, |b| b.max(1) as u32);
    let rate = Rate::per_minute(per_minute, burst);
    match state
        .request_buckets
        .one(Op::Take, subject, rate, 1.0, Instant::now())
        .await?
    {
        Decision::Allowed { remaining, reset } => {
            audit.rate(RateInfo {
                limit: per_minute,
                remaining,
                reset_secs: reset.as_secs(),
            });
            Ok(())
        }
        Decision::Denied { retry_after } => {
            state.metrics.limited("requests");
            Err(ApiError::RateLimited {
                limit: per_minute,
                retry_after,
            })
        }
    }
}

/// A permission an endpoint requires.
pub trait Needs: Send + Sync + 'static {
    const PERMISSION: Permission;
    const NAME: &'static str;
}

pub struct ChatPermission;
impl Needs for ChatPermission {
    const PERMISSION: Permission = Permission::Chat;
    const NAME: &'static str = "Chat";
}
pub struct ModelsPermission;
impl Needs for ModelsPermission {
    const PERMISSION: Permission = Permission::Models;
    const NAME: &'static str = "Models";
}
pub struct UsagePermission;
impl Needs for UsagePermission {
    const PERMISSION: Permission = Permission::Usage;
    const NAME: &'static str = "Usage";
}
pub struct AdminPermission;
impl Needs for AdminPermission {
    const PERMISSION: Permission = Permission::Admin;
    const NAME: &'static str = "Admin";
}

/// An authenticated, permitted, in-budget caller.
pub struct Authorized<P: Needs> {
    pub principal: Principal,
    /// What `auth.policy` changed about this request.
    pub overrides: policy::Overrides,
    _p: PhantomData<P>,
}

impl<P: Needs> FromRequestParts<AppState> for Authorized<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let audit = parts
            .extensions
            .get::<Audit>()
            .cloned()
            .unwrap_or_else(Audit::disabled);
        let principal = principal_from_parts(parts, state).await?;
        audit.principal(
            &principal.subject,
            principal.key_id.as_deref(),
            principal.tier.as_str(),
        );
        let runtime = state.live_config();
        let tier_spec = runtime.config.roles.tier(principal.tier);
        if !tier_spec.permissions.contains(&P::PERMISSION) {
            return Err(ApiError::Forbidden(P::NAME));
        }
        take_request(state, &principal.subject, principal.tier, &audit).await?;
        let client = client_ip(state, &parts.extensions, &parts.headers);
        let overrides = policy::authorize(state, parts, &principal, client, &audit)?;
        if let Some(id) = &principal.key_id {
            state.record_usage(id, 0, 0, true, Utc::now());
        }
        Ok(Self {
            principal,
            overrides,
            _p: PhantomData,
        })
    }
}
