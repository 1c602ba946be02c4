//! "Sign in with …" through a plain OAuth2 provider (`web.oauth2`: a
//! generic provider or WeChat Work), this server being the client.
//!
//! `GET /web/oauth2/start?provider=N` remembers a fresh `state` (and a
//! PKCE verifier where the provider takes one) server side, binds the
//! state to this browser with the same short-lived HttpOnly cookie as the
//! OIDC login, and redirects to the provider's authorization page.
//! `GET /web/oauth2/callback` checks the state like the OIDC callback
//! (this browser's, pending, one use, 10 minutes), identifies the user
//! with the provider's API (`credentials::oauth2` / `credentials::wecom`),
//! maps them onto a tier and opens a session. Every failure is a page
//! saying what happened; a user mapped to no tier is refused.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::header::{HOST, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use securechat_crds::files::config::{OAUTH2_CALLBACK_PATH, OAuth2Client};
use securechat_crds::v1alpha1::Tier;

use super::error_page;
use super::login::open_session;
use super::sso::pkce_challenge;
use crate::credentials::oauth2::{self, OAuth2Error, ProviderUser};
use crate::credentials::wecom::{self, WeComClient};
use crate::principal::{Method, Principal};
use crate::session::{self, LOGIN_COOKIE, Login, PendingLogin, Session};
use crate::state::AppState;

fn client_by_name(state: &AppState, name: &str) -> Option<OAuth2Client> {
    state
        .live_config()
        .config
        .web
        .oauth2
        .iter()
        .find(|c| c.provider.name == name)
        .cloned()
}

/// `GET /web/oauth2/start?provider=N`.
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let index = query.get("provider").and_then(|p| p.parse::<usize>().ok());
    let Some(client) = index.and_then(|i| state.live_config().config.web.oauth2.get(i).cloned())
    else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Unknown sign-in provider",
            "This sign-in provider is not configured (web.sso).",
        );
    };
    let provider = &client.provider;
    let redirect_uri = match &provider.redirect_url {
        Some(url) => url.clone(),
        // The provider only redirects to registered URIs (WeCom: trusted
        // domains), so a forged Host cannot send the code elsewhere.
        None => match headers.get(HOST).and_then(|h| h.to_str().ok()) {
            Some(host) => format!("https://{host}{OAUTH2_CALLBACK_PATH}"),
            None => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "Cannot start the sign-in",
                    "The request has no Host header; set web.sso[].redirectURL.",
                );
            }
        },
    };
    let (Ok(login_state), Ok(verifier)) = (session::random_token(), session::random_token()) else {
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Cannot start the sign-in",
            "The system random number generator failed.",
        );
    };
    let location = match (&provider.oauth2, &provider.wecom) {
        (Some(settings), _) => {
            let challenge = settings.pkce.then(|| pkce_challenge(&verifier));
            oauth2::authorize_url(
                settings,
                &provider.client_id,
                &redirect_uri,
                &login_state,
                challenge.as_deref(),
            )
        }
        (None, Some(settings)) => {
            wecom::authorize_url(settings, &provider.client_id, &redirect_uri, &login_state)
        }
        (None, None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "Unknown sign-in provider",
                "This sign-in provider has neither oauth2 nor wecom settings.",
            );
        }
    };
    let pending = PendingLogin {
        issuer_url: String::new(),
        code_verifier: verifier,
        nonce: String::new(),
        redirect_uri,
        started_at: Utc::now(),
        oauth2_provider: Some(provider.name.clone()),
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
            "The provider's authorization URL is not a valid URL.",
        ),
    }
}

/// `GET /web/oauth2/callback?code=…&state=…` (or `?error=…`).
pub async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    super::clearing_login_cookie(finish(&state, &headers, &query).await)
}

/// The page for a failed identification.
fn failure_page(provider: &str, error: &OAuth2Error) -> Response {
    match error {
        OAuth2Error::CodeExpired { .. } => error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            &format!(
                "The sign-in code from {provider} has expired or was already used ({error}). Start again."
            ),
        ),
        OAuth2Error::NotAMember => error_page(
            StatusCode::FORBIDDEN,
            "Sign-in refused",
            &format!("{provider}: you are {error}."),
        ),
        e if e.is_provider_failure() => {
            tracing::warn!(provider, error = %e, "OAuth2 login: provider failure");
            error_page(
                StatusCode::BAD_GATEWAY,
                "The sign-in provider is unreachable",
                &format!(
                    "Sign-in through {provider} is not available right now ({e}). \
                     Try again later, or sign in with an API key."
                ),
            )
        }
        e => error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            &format!("{provider} refused the sign-in: {e}"),
        ),
    }
}

/// Identifies the user at the provider and decides the tier.
async fn identify(
    state: &AppState,
    client: &OAuth2Client,
    pending: &PendingLogin,
    code: &str,
) -> Result<(ProviderUser, Option<Tier>), OAuth2Error> {
    let provider = &client.provider;
    let secret = client
        .client_secret_file
        .as_deref()
        .map(oauth2::read_secret)
        .transpose()?;
    let http = state.oidc.http();
    // The provider's calls for one sign-in go through its breaker: while
    // it keeps failing, a sign-in gets the 502 page at once instead of
    // waiting out `outbound.timeout` per call.
    let breaker = state
        .sign_in_breakers
        .get(&format!("oauth2:{}", provider.name));
    if let Some(settings) = &provider.oauth2 {
        let calls = async {
            let access_token = oauth2::exchange_code(
                http,
                settings,
                &provider.client_id,
                secret.as_deref(),
                code,
                &pending.redirect_uri,
                settings.pkce.then_some(pending.code_verifier.as_str()),
            )
            .await?;
            oauth2::user_info(http, settings, &access_token).await
        };
        let user = breaker
            .call(calls, OAuth2Error::is_provider_failure)
            .await??;
        let tier = oauth2::tier_of(&user.roles, &settings.role_mapping, provider.default_tier);
        return Ok((user, tier));
    }
    let (Some(settings), Some(corp_secret)) = (&provider.wecom, secret.as_deref()) else {
        return Err(OAuth2Error::Malformed {
            step: "configuration",
            detail: "a WeCom provider needs its wecom settings and clientSecretFile".into(),
        });
    };
    let wecom = WeComClient {
        http,
        cache: &state.wecom_tokens,
        settings,
        corp_id: &provider.client_id,
        corp_secret,
    };
    let member = breaker
        .call(wecom.identify(code), OAuth2Error::is_provider_failure)
        .await??;
    let tier = wecom::tier_of(
        settings,
        &member.departments,
        &member.tags,
        provider.default_tier,
    );
    let roles = member
        .departments
        .iter()
        .map(|d| format!("department {d}"))
        .chain(member.tags.iter().map(|t| format!("tag {t}")))
        .collect();
    let user = ProviderUser {
        id: member.userid,
        display_name: member.display_name,
        roles,
    };
    Ok((user, tier))
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
    let Some(client) = pending
        .oauth2_provider
        .as_deref()
        .and_then(|name| client_by_name(state, name))
    else {
        return failed(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started with a configured OAuth2 provider. Start again.",
        );
    };
    let label = client.provider.label().to_string();
    let (user, tier) = match identify(state, &client, &pending, code).await {
        Ok(found) => found,
        Err(e) => {
            state.metrics.auth_failure("oauth2_refused");
            return failure_page(&label, &e);
        }
    };
    let Some(tier) = tier else {
        state.metrics.auth_failure("no_role");
        tracing::info!(provider = %client.provider.name, user = %user.id, "OAuth2 login: no role mapped");
        let held = if user.roles.is_empty() {
            "none".to_string()
        } else {
            user.roles.join(", ")
        };
        return error_page(
            StatusCode::FORBIDDEN,
            "No role is mapped to your account",
            &format!(
                "{label} signed you in as {} ({}), but none of your roles, departments or tags \
                 ({held}) gives access to this chat. Ask an administrator to map one of them \
                 to a tier (web.sso).",
                user.display_name, user.id
            ),
        );
    };
    let ttl = state.live_config().config.web.session_ttl;
    let csrf = match session::random_token() {
        Ok(t) => t,
        Err(e) => return failed(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let session = Session {
        principal: Principal {
            subject: format!("oauth2:{}#{}", client.provider.name, user.id),
            key_id: None,
            tier,
            method: Method::Token,
        },
        login: Login::OAuth2 {
            provider: client.provider.name.clone(),
        },
        display_name: user.display_name,
        csrf,
        expires_at: now + chrono::Duration::seconds(ttl.as_secs() as i64),
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
