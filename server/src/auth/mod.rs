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
use securechat_crds::v1alpha1::{MtlsMode, Permission, Tier};

use crate::audit::{Audit, RateInfo};
use crate::credentials::{api_key, oidc};
use crate::error::{ApiError, AuthFailure};
use crate::forwarded;
use crate::limits;
use crate::listener::{ClientAddr, ClientCertificate};
use crate::policy;
use crate::principal::{Method, Principal};
use crate::ratelimit::{Admission, Decision, Op, Rate};
use crate::session::{CSRF_HEADER, SESSION_COOKIE, Session, WebPort, cookie};
use crate::state::AppState;
use subtle::ConstantTimeEq;

pub mod mtls;

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

/// Checks a credential against the current keys, on a connection without
/// a client certificate: a key bound to a SPIFFE ID (and a token minted
/// from one) is refused (see `mtls`).
pub async fn authenticate(
    state: &AppState,
    credential: &str,
    now: DateTime<Utc>,
) -> Result<Principal, AuthFailure> {
    authenticate_beside(state, credential, None, now).await
}

/// Checks a credential sent on a connection that may carry a verified
/// client certificate: the two must agree (see `mtls`).
pub async fn authenticate_beside(
    state: &AppState,
    credential: &str,
    cert: Option<&ClientCertificate>,
    now: DateTime<Utc>,
) -> Result<Principal, AuthFailure> {
    let principal = bearer_principal(state, credential, now).await?;
    let table = state.api_keys.load();
    let binding = principal
        .key_id
        .as_deref()
        .and_then(|id| table.get(id))
        .and_then(|record| record.spiffe_id.as_deref());
    mtls::agree(principal.clone(), binding, cert)
}

/// Whose a bearer credential is, whatever the connection.
async fn bearer_principal(
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

/// Counts a failure against the client address and the metrics. Returns
/// how long to wait when the address had no failure left to spend (the
/// failures were counted elsewhere, e.g. on another replica, since this
/// request's check): the caller answers 429 rather than 401. A store that
/// cannot count it is already counted in its own metric; the request fails
/// either way.
pub async fn note_failure(
    state: &AppState,
    ip: Option<IpAddr>,
    failure: AuthFailure,
    now: Instant,
) -> Option<std::time::Duration> {
    state.metrics.auth_failure(failure.label());
    let ip = ip?;
    let rate = failure_rate(state);
    match state
        .failure_buckets
        .one(Op::Take, &ip.to_string(), rate, 1.0, now)
        .await
    {
        Ok(Decision::Denied { retry_after }) => {
            state.metrics.limited("auth_failures");
            Some(retry_after)
        }
        Ok(Decision::Allowed { .. }) | Err(_) => None,
    }
}

/// [`check_guard`] before the credential of an API request, without a
/// round trip: with the store, only addresses already refused here are;
/// the exact check is made with the request's take ([`admit_request`]).
fn check_guard_early(state: &AppState, ip: Option<IpAddr>, now: Instant) -> Result<(), ApiError> {
    let Some(ip) = ip else { return Ok(()) };
    match state
        .failure_buckets
        .early_peek(&ip.to_string(), failure_rate(state), 1.0, now)
    {
        Decision::Allowed { .. } => Ok(()),
        Decision::Denied { retry_after } => {
            state.metrics.limited("auth_failures");
            Err(ApiError::AuthThrottled(retry_after))
        }
    }
}

/// The answer to a failed credential: 401, or 429 when the address has
/// run out of failures.
pub async fn refuse(
    state: &AppState,
    ip: Option<IpAddr>,
    failure: AuthFailure,
    now: Instant,
) -> ApiError {
    match note_failure(state, ip, failure, now).await {
        Some(retry_after) => ApiError::AuthThrottled(retry_after),
        None => ApiError::Unauthorized(failure),
    }
}

/// Authenticates the request's bearer credential, with the guard. On the
/// web port a request without an Authorization header may instead carry
/// the web UI's session cookie (see [`session_principal`]).
pub async fn principal_from_parts(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let now = Instant::now();
    let ip = client_ip(state, &parts.extensions, &parts.headers);
    check_guard_early(state, ip, now)?;
    let on_web_port = parts.extensions.get::<WebPort>().is_some();
    let session_id = cookie(&parts.headers, SESSION_COOKIE);
    // Only the API port asks for certificates, and only under auth.mtls; a
    // connection opened before mTLS was switched off keeps its
    // certificate, which then no longer counts.
    let runtime = state.live_config();
    let mtls_config = &runtime.config.auth.mtls;
    let cert = parts
        .extensions
        .get::<ClientCertificate>()
        .filter(|_| mtls_config.mode != MtlsMode::Disabled);
    if let (Err(AuthFailure::Missing), Some(cert)) = (bearer(&parts.headers), cert) {
        // A certificate the handshake verified is not a guess: a 403 here
        // does not count against the brute-force guard.
        let table = state.api_keys.load();
        let principal = mtls::certificate_principal(cert, &mtls_config.allow, &table, Utc::now());
        if principal.is_ok() {
            note_certificate(state, cert);
        }
        return principal;
    }
    let result = match (bearer(&parts.headers), session_id) {
        (Err(AuthFailure::Missing), Some(id)) if on_web_port => {
            return match session_principal(state, parts, id, Utc::now()).await {
                Err(ApiError::Unauthorized(failure)) => Err(refuse(state, ip, failure, now).await),
                other => other,
            };
        }
        (Ok(credential), _) => authenticate_beside(state, credential, cert, Utc::now()).await,
        (Err(failure), _) => Err(failure),
    };
    match result {
        Ok(p) => {
            if let Some(cert) = cert {
                note_certificate(state, cert);
            }
            Ok(p)
        }
        Err(failure) => Err(refuse(state, ip, failure, now).await),
    }
}

/// Feeds the client-certificate expiry gauge with an accepted certificate.
fn note_certificate(state: &AppState, cert: &ClientCertificate) {
    if let (Some(id), Some(not_after)) = (&cert.spiffe_id, cert.not_after) {
        state.note_client_certificate(id, not_after);
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
    admit_request(state, None, subject, tier, audit).await
}

/// [`take_request`], with the client address's guard checked in the same
/// step when the store keeps it (one round trip for the whole request;
/// [`check_guard_early`] left the exact check to this).
pub async fn admit_request(
    state: &AppState,
    ip: Option<IpAddr>,
    subject: &str,
    tier: Tier,
    audit: &Audit,
) -> Result<(), ApiError> {
    let runtime = state.live_config();
    let limit = request_limit(&runtime.config, tier);
    let ip = ip
        .filter(|_| state.failure_buckets.is_shared())
        .map(|ip| ip.to_string());
    let guard = ip
        .as_deref()
        .map(|ip| (&state.failure_buckets, ip, failure_rate(state)));
    let Some(per_minute) = limit else {
        if guard.is_some() {
            admitted(
                limits::admit(
                    guard,
                    &state.request_buckets,
                    Op::Take,
                    &[],
                    1.0,
                    Instant::now(),
                )
                .await?,
                state,
            )?;
        }
        return Ok(());
    };
    let burst = runtime
        .config
        .rate_limit
        .burst
        .map_or(per_minute, |b| b.max(1) as u32);
    let rate = Rate::per_minute(per_minute, burst);
    let admission = limits::admit(
        guard,
        &state.request_buckets,
        Op::Take,
        &[(subject, rate)],
        1.0,
        Instant::now(),
    )
    .await?;
    match admitted(admission, state)? {
        Decision::Allowed {
            remaining, reset, ..
        } => {
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

/// The buckets' decision of an admission whose guard passed; a throttled
/// address is refused as [`check_guard`] would.
fn admitted(admission: Admission, state: &AppState) -> Result<Decision, ApiError> {
    match admission {
        Admission::Decided(decision) => Ok(decision),
        Admission::Throttled { retry_after } => {
            state.metrics.limited("auth_failures");
            Err(ApiError::AuthThrottled(retry_after))
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
        let ip = client_ip(state, &parts.extensions, &parts.headers);
        admit_request(state, ip, &principal.subject, principal.tier, &audit).await?;
        let overrides = policy::authorize(state, parts, &principal, ip, &audit)?;
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
