//! POST /oauth/token (client credentials: the API key is the client
//! secret) and GET /.well-known/jwks.json. Token-endpoint errors use the
//! OAuth shape (see `oauth_error`), not the OpenAI one.

use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, PRAGMA};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use securechat_crds::files::api_keys::{ApiKeyRecord, ApiKeyTable};
use securechat_crds::v1alpha1::Tier;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{has_content_type, parse_json, read_limited};
use super::oauth_error::{OAuthCode, OAuthError};
use crate::audit::Audit;
use crate::auth::{self, check_guard, note_failure, take_request};
use crate::credentials::api_key;
use crate::credentials::jwt::{Claims, new_jti};
use crate::error::{ApiError, AuthFailure};
use crate::state::AppState;

/// The token endpoint under the first seed's path (its FastAPI app's
/// `tokenUrl="token"`), beside `/oauth/token`.
pub const SEED_TOKEN_PATH: &str = "/token";

/// The parameters of a token request (RFC 6749 §4.4.2), from either body
/// encoding. Unknown parameters are ignored, as §3.2 requires.
#[derive(Debug, Default, Deserialize)]
pub struct TokenRequest {
    #[serde(default)]
    pub grant_type: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// client_id / client_secret from the Authorization header: `None` without
/// one, an error for a header that is not well-formed HTTP Basic (the only
/// header scheme a token endpoint takes, RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let malformed = || OAuthError::invalid_client(AuthFailure::Malformed);
    if values.next().is_some() {
        return Err(malformed());
    }
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, encoded) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(AuthFailure::Malformed).described(
            "unsupported client authentication scheme: use HTTP Basic or client_secret in the body",
        ));
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or_else(malformed)?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    // §2.3.1: both parts are form-urlencoded before base64.
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

/// The tier a token is minted for: the key's own, or a lower one named in
/// `scope` (a client can ask for a less powerful token than its key).
fn granted_tier(scope: Option<&str>, key_tier: Tier) -> Result<Tier, OAuthError> {
    let Some(scope) = scope else {
        return Ok(key_tier);
    };
    let mut names = scope.split(' ').filter(|s| !s.is_empty());
    let (Some(name), None) = (names.next(), names.next()) else {
        return Err(OAuthError::new(
            OAuthCode::InvalidScope,
            "scope: name exactly one tier (ReadOnly, Developer or Admin)",
        ));
    };
    let tier: Tier = name
        .parse()
        .map_err(|e: String| OAuthError::new(OAuthCode::InvalidScope, format!("scope: {e}")))?;
    if tier > key_tier {
        return Err(OAuthError::new(
            OAuthCode::InvalidScope,
            format!(
                "scope: this key's tier is {}; it cannot be granted {}",
                key_tier.as_str(),
                tier.as_str()
            ),
        ));
    }
    Ok(tier)
}

pub async fn token(State(state): State<AppState>, request: Request) -> Response {
    match issue(&state, request).await {
        Ok(body) => {
            let mut response = Json(body).into_response();
            // RFC 6749 §5.1.
            let headers = response.headers_mut();
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Why the client's credentials were refused: a failed authentication
/// (counted by the brute-force guard) or a malformed request.
enum ClientRefusal {
    Failed(AuthFailure, OAuthError),
    Invalid(OAuthError),
}

/// The key the client authenticates with (§2.3: HTTP Basic or the body).
fn client_record(
    table: &ApiKeyTable,
    basic: Result<Option<(String, String)>, OAuthError>,
    client_id: Option<String>,
    client_secret: Option<String>,
    now: chrono::DateTime<Utc>,
) -> Result<&ApiKeyRecord, ClientRefusal> {
    let fail = |failure: AuthFailure, error: OAuthError| ClientRefusal::Failed(failure, error);
    let basic = basic.map_err(|e| fail(AuthFailure::Malformed, e))?;
    let (client_id, secret) = match (basic, client_secret) {
        (Some(_), Some(_)) => {
            // §2.3: one authentication method per request.
            return Err(ClientRefusal::Invalid(OAuthError::invalid_request(
                "client credentials sent both with HTTP Basic and in the body; use one",
            )));
        }
        (Some((id, secret)), None) => (Some(id), secret),
        (None, Some(secret)) => (client_id, secret),
        (None, None) => {
            return Err(fail(
                AuthFailure::Missing,
                OAuthError::invalid_client(AuthFailure::Missing),
            ));
        }
    };
    let record = api_key::verify(table, &secret, now)
        .map_err(|failure| fail(failure, ApiError::Unauthorized(failure).into()))?;
    // A client_id, when given, must name the same key.
    if client_id
        .as_deref()
        .is_some_and(|id| !id.is_empty() && id != record.id)
    {
        return Err(fail(
            AuthFailure::WrongSecret,
            OAuthError::invalid_client(AuthFailure::WrongSecret),
        ));
    }
    Ok(record)
}

async fn issue(state: &AppState, request: Request) -> Result<Value, OAuthError> {
    let audit = request
        .extensions()
        .get::<Audit>()
        .cloned()
        .unwrap_or_else(Audit::disabled);
    let ip = auth::client_ip(state, request.extensions(), request.headers());
    let basic = basic_credentials(request.headers());
    let body: TokenRequest = if has_content_type(&request, "application/json") {
        parse_json(&read_limited(request, state).await?)?
    } else if has_content_type(&request, "application/x-www-form-urlencoded") {
        parse_form(&read_limited(request, state).await?)?
    } else {
        return Err(OAuthError::invalid_request(
            "the body must be application/x-www-form-urlencoded (or application/json)",
        ));
    };
    let grant_type = body
        .grant_type
        .as_deref()
        .ok_or_else(|| OAuthError::invalid_request("grant_type: required"))?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::new(
            OAuthCode::UnsupportedGrantType,
            format!("grant_type {grant_type:?}: only client_credentials is supported"),
        ));
    }
    let started = Instant::now();
    check_guard(state, ip, started).await?;
    let now = Utc::now();
    let table = state.api_keys.load();
    let record = match client_record(&table, basic, body.client_id, body.client_secret, now) {
        Ok(record) => record,
        Err(ClientRefusal::Failed(failure, error)) => {
            note_failure(state, ip, failure, started).await;
            return Err(error);
        }
        Err(ClientRefusal::Invalid(error)) => return Err(error),
    };
    let tier = granted_tier(body.scope.as_deref(), record.tier)?;
    let subject = format!("key:{}", record.id);
    audit.principal(&subject, Some(&record.id), tier.as_str());
    // Minting tokens counts against the key's request budget like any call.
    take_request(state, &subject, record.tier, &audit).await?;
    state.record_usage(&record.id, 0, 0, true, now);
    let runtime = state.live_config();
    let ttl = runtime.config.auth.token_ttl.as_chrono();
    // A token never outlives the key it was minted from.
    let exp = record.expires_at.map_or(now + ttl, |e| e.min(now + ttl));
    let claims = Claims {
        iss: runtime.config.auth.issuer.clone(),
        aud: runtime.config.auth.audience.clone(),
        sub: subject,
        role: tier.as_str().to_string(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        exp: exp.timestamp(),
        jti: new_jti().map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    let signing = state.signing.load();
    let token = signing
        .sign(&claims, now)
        .map_err(|e| ApiError::NotReady(e.to_string()))?;
    Ok(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": claims.exp - claims.iat,
        "scope": tier.as_str(),
    }))
}

/// Form parameters; a repeated one is refused (RFC 6749 §3.2: parameters
/// must not be included more than once), since two values would leave it
/// open which one a proxy and the server each acted on.
fn parse_form(bytes: &[u8]) -> Result<TokenRequest, OAuthError> {
    let mut request = TokenRequest::default();
    for (k, v) in form_urlencoded::parse(bytes) {
        let slot = match k.as_ref() {
            "grant_type" => &mut request.grant_type,
            "client_id" => &mut request.client_id,
            "client_secret" => &mut request.client_secret,
            "scope" => &mut request.scope,
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "{k}: given more than once"
            )));
        }
    }
    Ok(request)
}

pub async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(state.signing.load().jwks(Utc::now()))
}
