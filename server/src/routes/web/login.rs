//! Session endpoints of the web UI: API-key login, the session's view for
//! the page (role, limits, CSRF token), logout, and the login options.
//!
//! An API key pasted into the page is exchanged for a session at once and
//! then forgotten by the page: the key never sits in JS-readable storage
//! (an XSS bug could otherwise read a long-lived credential that works
//! from anywhere), while the cookie is HttpOnly, only works on this web
//! port with the CSRF token, and dies with logout or the session lifetime.

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use securechat_crds::v1alpha1::Permission;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{self, check_guard, live_session};
use crate::credentials::api_key;
use crate::error::{ApiError, AuthFailure};
use crate::routes::body::ApiJson;
use crate::session::{self, Login, SESSION_COOKIE, Session, StoreError, cookie};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyLogin {
    pub api_key: String,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full => ApiError::NotReady(e.to_string()),
            StoreError::Random => ApiError::Internal(e.to_string()),
            StoreError::Unavailable(_) => ApiError::NotReady(e.to_string()),
        }
    }
}

/// What the page learns about its session.
pub fn session_view(state: &AppState, session: &Session) -> Value {
    let runtime = state.live_config();
    let config = &runtime.config;
    let tier = config.roles.tier(session.principal.tier);
    json!({
        "name": session.display_name,
        // Keys the page's conversation list in localStorage, so that two
        // people sharing a browser profile do not see each other's.
        "subject": session.principal.subject,
        "role": session.principal.tier,
        "login": match &session.login {
            Login::ApiKey => json!({"method": "apiKey"}),
            Login::Sso { issuer } => json!({"method": "sso", "issuer": issuer}),
            Login::OAuth2 { provider } => json!({"method": "oauth2", "provider": provider}),
        },
        "expiresAt": session.expires_at,
        "csrfToken": session.csrf,
        "permissions": tier.permissions,
        "isAdmin": tier.permissions.contains(&Permission::Admin),
        "limits": {
            "maxTokens": tier.max_tokens_per_request,
            "defaultMaxTokens": config.generation.max_tokens,
            "defaultTemperature": config.generation.temperature,
            "maxTemperature": 2.0,
        },
    })
}

/// Stores a session and answers with its view and the cookie.
pub async fn open_session(
    state: &AppState,
    session: Session,
    now: DateTime<Utc>,
) -> Result<(HeaderValue, Value), ApiError> {
    let max_age = (session.expires_at - now).num_seconds();
    let view = session_view(state, &session);
    let id = state.sessions.create(session, now).await?;
    let cookie = HeaderValue::from_str(&session::set_cookie(SESSION_COOKIE, &id, max_age))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((cookie, view))
}

/// `POST /web/login` `{"apiKey": "sk-sc-…"}`: the key is checked like a
/// bearer credential (same brute-force guard and failure metrics) and
/// exchanged for a session no longer than the key's own life.
pub async fn login_with_key(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let ip = auth::client_ip(&state, request.extensions(), request.headers());
    let started = std::time::Instant::now();
    check_guard(&state, ip, started).await?;
    // Only this origin's page logs in (no login CSRF from an origin that
    // CORS allows for bearer calls).
    if !auth::same_origin_or_none(request.headers()) {
        return Err(ApiError::CsrfRefused("the Origin is not this server"));
    }
    // A new login replaces the browser's previous session rather than
    // leaving it alive behind the new cookie.
    if let Some(old) = cookie(request.headers(), SESSION_COOKIE) {
        state.sessions.remove(old).await?;
    }
    let ApiJson(body) = ApiJson::<KeyLogin>::from_request(request, &state).await?;
    let now = Utc::now();
    let key = body.api_key.trim();
    let verified = if api_key::looks_like_api_key(key) {
        auth::authenticate(&state, key, now).await
    } else {
        Err(AuthFailure::Malformed)
    };
    let principal = match verified {
        Ok(p) => p,
        Err(failure) => return Err(auth::refuse(&state, ip, failure, started).await),
    };
    let table = state.api_keys.load();
    let record = principal
        .key_id
        .as_deref()
        .and_then(|id| table.get(id))
        .ok_or(ApiError::Unauthorized(AuthFailure::UnknownKey))?;
    let ttl = state.live_config().config.web.session_ttl;
    let mut expires_at = now + chrono::Duration::seconds(ttl.as_secs() as i64);
    if let Some(key_expiry) = record.expires_at {
        expires_at = expires_at.min(key_expiry);
    }
    let session = Session {
        principal,
        login: Login::ApiKey,
        display_name: record.name.clone(),
        csrf: session::random_token()?,
        expires_at,
    };
    let (cookie, view) = open_session(&state, session, now).await?;
    let mut response = Json(view).into_response();
    response.headers_mut().insert(SET_COOKIE, cookie);
    Ok(response)
}

/// `GET /web/session`: the signed-in session's view (with its CSRF
/// token), or 401 when there is none. Only this origin's script can read
/// the answer: CORS never allows credentials.
pub async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = cookie(&headers, SESSION_COOKIE)
        .ok_or(ApiError::Unauthorized(AuthFailure::SessionExpired))?;
    let session = live_session(&state, id, Utc::now()).await?;
    Ok(Json(session_view(&state, &session)).into_response())
}

/// `POST /web/logout`: forgets the session and deletes the cookie. It
/// needs the CSRF token like any call with the session (so another site
/// cannot sign the user out); without a live session it just clears the
/// cookie.
pub async fn logout(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    if let Some(id) = cookie(&parts.headers, SESSION_COOKIE) {
        if state.sessions.get(id, Utc::now()).await?.is_some() {
            auth::session_principal(&state, &parts, id, Utc::now()).await?;
        }
        state.sessions.remove(id).await?;
    }
    let mut response = Json(json!({"status": "signed out"})).into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&session::set_cookie(SESSION_COOKIE, "", 0))
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    Ok(response)
}

/// `GET /web/options`: how one may sign in (the SSO providers: OIDC
/// issuers, then the plain-OAuth2 ones).
pub async fn options(State(state): State<AppState>) -> Json<Value> {
    let runtime = state.live_config();
    let oauth2 = runtime.config.web.oauth2.iter().enumerate().map(|(i, c)| {
        json!({
            "id": format!("oauth2-{i}"),
            "name": c.provider.label(),
            "label": format!("Sign in with {}", c.provider.label()),
            "start": format!("/web/oauth2/start?provider={i}"),
        })
    });
    let sso: Vec<Value> = runtime
        .config
        .web
        .sso
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s
                .display_name
                .clone()
                .unwrap_or_else(|| s.issuer_url.clone());
            json!({
                "id": i,
                "label": format!("Sign in with SSO: {name}"),
                "name": name,
                "start": format!("/web/sso/start?provider={i}"),
            })
        })
        .chain(oauth2)
        .collect();
    Json(json!({ "sso": sso }))
}
