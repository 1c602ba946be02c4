//! "Sign in with SSO": the OpenID Connect authorization code flow with
//! PKCE (S256), this server being the relying party.
//!
//! `GET /web/sso/start?provider=N` reads the provider's discovery
//! document, remembers a fresh `state`, `nonce` and PKCE verifier under the
//! state (server side), binds the state to this browser with a short-lived
//! HttpOnly cookie, and redirects to the authorization endpoint.
//! `GET /web/sso/callback` checks that the returned state is the one this
//! browser started (cookie) and still pending (one use, 10 minutes),
//! exchanges the code with the verifier, verifies the ID token with the
//! same verifier as bearer tokens (signature through the cached JWKS,
//! issuer, audience = client id, expiry) plus the nonce, maps the role
//! claim to a tier, and opens a session that ends no later than the ID
//! token. Every failure is a page saying what happened.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::header::{LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Utc;
use securechat_crds::files::config::{SSO_CALLBACK_PATH, SsoClient};
use securechat_crds::v1alpha1::OidcIssuer;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error_page;
use super::login::open_session;
use crate::principal::{Method, Principal};
use crate::session::{self, LOGIN_COOKIE, Login, PendingLogin, Session};
use crate::state::AppState;

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn issuers_match(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The SSO entry and its `auth.oidc` issuer, with the ID token's audience:
/// an ID token is addressed to the client id, not to the API audience.
fn provider(state: &AppState, issuer_url: &str) -> Option<(SsoClient, OidcIssuer, String)> {
    let runtime = state.live_config();
    let config = &runtime.config;
    let sso = config
        .web
        .sso
        .iter()
        .find(|s| issuers_match(&s.issuer_url, issuer_url))?
        .clone();
    let client_id = config.sso_client_id(&sso)?.to_string();
    let mut issuer = config
        .auth
        .oidc
        .iter()
        .find(|o| issuers_match(&o.issuer_url, issuer_url))?
        .clone();
    issuer.audience = client_id.clone();
    Some((sso, issuer, client_id))
}

fn unreachable_page(issuer: &str, detail: &str) -> Response {
    tracing::warn!(issuer, error = %detail, "SSO login: identity provider unreachable");
    error_page(
        StatusCode::BAD_GATEWAY,
        "The identity provider is unreachable",
        &format!(
            "Single sign-on through {issuer} is not available right now ({detail}). \
             Try again later, or sign in with an API key."
        ),
    )
}

/// `GET /web/sso/start?provider=N`.
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let runtime = state.live_config();
    let index = query.get("provider").and_then(|p| p.parse::<usize>().ok());
    let Some(sso) = index.and_then(|i| runtime.config.web.sso.get(i)).cloned() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Unknown sign-in provider",
            "This single sign-on provider is not configured (web.sso).",
        );
    };
    let Some((sso, _, client_id)) = provider(&state, &sso.issuer_url) else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Unknown sign-in provider",
            "This single sign-on provider has no client id or issuer entry.",
        );
    };
    let redirect_uri = match &sso.redirect_url {
        Some(url) => url.clone(),
        None => match headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            // The provider only redirects to registered URIs, so a forged
            // Host cannot send the code elsewhere.
            Some(host) => format!("https://{host}{SSO_CALLBACK_PATH}"),
            None => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "Cannot start the sign-in",
                    "The request has no Host header; set web.sso[].redirectURL.",
                );
            }
        },
    };
    let discovery = match state.oidc.discover(&sso.issuer_url).await {
        Ok(d) => d,
        Err(e) => return unreachable_page(&sso.issuer_url, &e.to_string()),
    };
    let endpoint = |name: &str| {
        discovery
            .get(name)
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("https://"))
            .map(str::to_string)
    };
    let Some(authorize) = endpoint("authorization_endpoint") else {
        return unreachable_page(
            &sso.issuer_url,
            "discovery names no https authorization_endpoint",
        );
    };
    let secrets = (
        session::random_token(),
        session::random_token(),
        session::random_token(),
    );
    let (Ok(login_state), Ok(nonce), Ok(verifier)) = secrets else {
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot start the sign-in",
            "The system random number generator failed.",
        );
    };
    let pending = PendingLogin {
        issuer_url: sso.issuer_url.clone(),
        code_verifier: verifier.clone(),
        nonce: nonce.clone(),
        redirect_uri: redirect_uri.clone(),
        started_at: Utc::now(),
        oauth2_provider: None,
    };
    if let Err(e) = state
        .sessions
        .start_login(&login_state, pending, Utc::now())
        .await
    {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Cannot start the sign-in",
            &e.to_string(),
        );
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", &sso.scopes.join(" "))
        .append_pair("state", &login_state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &pkce_challenge(&verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    let separator = if authorize.contains('?') { '&' } else { '?' };
    let location = format!("{authorize}{separator}{query}");
    let login_cookie =
        session::set_cookie(LOGIN_COOKIE, &login_state, session::LOGIN_TTL.num_seconds());
    match (
        HeaderValue::from_str(&location),
        HeaderValue::from_str(&login_cookie),
    ) {
        (Ok(location), Ok(login_cookie)) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            response.headers_mut().insert(LOCATION, location);
            response.headers_mut().insert(SET_COOKIE, login_cookie);
            response
        }
        _ => error_page(
            StatusCode::BAD_GATEWAY,
            "Cannot start the sign-in",
            "The provider's authorization endpoint is not a valid URL.",
        ),
    }
}

/// The code for tokens, at the provider's token endpoint.
async fn exchange(
    state: &AppState,
    sso: &SsoClient,
    client_id: &str,
    pending: &PendingLogin,
    code: &str,
) -> Result<String, (StatusCode, String)> {
    let bad_gateway = |e: String| (StatusCode::BAD_GATEWAY, e);
    let discovery = state
        .oidc
        .discover(&sso.issuer_url)
        .await
        .map_err(|e| bad_gateway(e.to_string()))?;
    let token_endpoint = discovery
        .get("token_endpoint")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("https://"))
        .ok_or_else(|| bad_gateway("discovery names no https token_endpoint".into()))?;
    // Built in one expression: the serializer is not Send, so it must not
    // live across the awaits below.
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &pending.redirect_uri)
        .append_pair("code_verifier", &pending.code_verifier)
        .append_pair("client_id", client_id)
        .finish();
    let mut request = state
        .oidc
        .http()
        .post(token_endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json");
    if let Some(path) = &sso.client_secret_file {
        // Read per login: a rotated Secret applies without a restart.
        let secret = std::fs::read_to_string(path).map_err(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading web.sso clientSecretFile {}: {e}", path.display()),
            )
        })?;
        // client_secret_basic: both parts form-encoded first (RFC 6749 §2.3.1).
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = STANDARD.encode(format!("{}:{}", enc(client_id), enc(secret.trim())));
        request = request.header("authorization", format!("Basic {basic}"));
    }
    let response = request
        .body(form)
        .send()
        .await
        .map_err(|e| bad_gateway(format!("token endpoint: {e}")))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| bad_gateway(format!("token endpoint answer: {e}")))?;
    if !status.is_success() {
        let error = body.get("error").and_then(Value::as_str).unwrap_or("?");
        let detail = body
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("");
        return Err((
            StatusCode::BAD_REQUEST,
            format!("the provider refused the code ({status}: {error} {detail})"),
        ));
    }
    body.get("id_token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad_gateway("the token response has no id_token".into()))
}

/// `GET /web/sso/callback?code=…&state=…` (or `?error=…`).
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    super::clearing_login_cookie(finish(&state, &headers, &query).await)
}

async fn finish(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Response {
    let failed = |status, detail: &str| error_page(status, "Sign-in failed", detail);
    let (code, pending) = match super::pending_login(state, headers, query).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let now = Utc::now();
    if pending.oauth2_provider.is_some() {
        return failed(
            StatusCode::BAD_REQUEST,
            "This sign-in was started with an OAuth2 provider, not OpenID Connect. Start again.",
        );
    }
    let Some((sso, issuer, client_id)) = provider(state, &pending.issuer_url) else {
        return failed(
            StatusCode::BAD_REQUEST,
            "The provider is no longer configured.",
        );
    };
    let id_token = match exchange(state, &sso, &client_id, &pending, code).await {
        Ok(t) => t,
        Err((status, detail)) if status == StatusCode::BAD_GATEWAY => {
            return unreachable_page(&sso.issuer_url, &detail);
        }
        Err((status, detail)) => return failed(status, &detail),
    };
    let leeway = state.live_config().policy.leeway_secs;
    let (identity, claims) = match state.oidc.verify_claims(&id_token, &issuer, leeway).await {
        Ok(v) => v,
        Err(failure) => {
            state.metrics.auth_failure(failure.label());
            return failed(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "The ID token was refused ({}): wrong issuer, audience, signature, \
                     expiry, or no role this server knows.",
                    failure.label()
                ),
            );
        }
    };
    let nonce_ok = claims
        .get("nonce")
        .and_then(Value::as_str)
        .is_some_and(|n| bool::from(n.as_bytes().ct_eq(pending.nonce.as_bytes())));
    if !nonce_ok {
        state.metrics.auth_failure("invalid_token");
        return failed(
            StatusCode::UNAUTHORIZED,
            "The ID token's nonce does not match this sign-in (replayed token?).",
        );
    }
    let Some(exp) = claims
        .get("exp")
        .and_then(Value::as_i64)
        .and_then(|e| chrono::DateTime::from_timestamp(e, 0))
    else {
        return failed(StatusCode::UNAUTHORIZED, "The ID token has no valid exp.");
    };
    let ttl = state.live_config().config.web.session_ttl;
    let expires_at = exp.min(now + chrono::Duration::seconds(ttl.as_secs() as i64));
    let display_name = ["name", "preferred_username", "email"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(Value::as_str))
        .unwrap_or(identity.subject.as_str())
        .to_string();
    let csrf = match session::random_token() {
        Ok(t) => t,
        Err(e) => return failed(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let session = Session {
        principal: Principal {
            subject: format!("oidc:{}#{}", identity.issuer, identity.subject),
            key_id: None,
            tier: identity.tier,
            method: Method::Token,
        },
        login: Login::Sso {
            issuer: identity.issuer.clone(),
        },
        display_name,
        csrf,
        expires_at,
    };
    match open_session(state, session, now).await {
        Ok((cookie, _)) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            response
                .headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/"));
            response.headers_mut().insert(SET_COOKIE, cookie);
            response
        }
        Err(e) => failed(e.status(), &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_unpadded_base64url_of_sha256() {
        // Expected value computed independently (Python hashlib + base64).
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mJ0PKLcDWjFaRAC9Q3j6bwaumXqrPM"),
            "N0DtQ88jctHrfgaRzWqc3aVbIuTnM-n8207sy4AF_W8"
        );
    }
}
