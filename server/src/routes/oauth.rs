//! POST /oauth/token (client credentials: the API key is the client
//! secret) and GET /.well-known/jwks.json.

use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::body::{has_content_type, parse_json, read_limited};
use crate::audit::Audit;
use crate::auth::jwt::{Claims, new_jti};
use crate::auth::{api_key, check_guard, note_failure, take_request};
use crate::error::{ApiError, AuthFailure};
use crate::serve::ClientAddr;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    pub grant_type: String,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
}

/// client_id / client_secret from HTTP Basic (RFC 6749 §2.3.1), if sent.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

pub async fn token(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let audit = request
        .extensions()
        .get::<Audit>()
        .cloned()
        .unwrap_or_else(Audit::disabled);
    let ip = request.extensions().get::<ClientAddr>().map(|a| a.0.ip());
    let basic = basic_credentials(request.headers());
    let body: TokenRequest = if has_content_type(&request, "application/json") {
        parse_json(&read_limited(request, &state).await?)?
    } else if has_content_type(&request, "application/x-www-form-urlencoded") {
        let bytes = read_limited(request, &state).await?;
        serde_urlencoded_from(&bytes)?
    } else {
        return Err(ApiError::UnsupportedMediaType);
    };
    if body.grant_type != "client_credentials" {
        return Err(ApiError::InvalidField {
            message: "grant_type: only client_credentials is supported".into(),
            param: "grant_type",
        });
    }
    let started = Instant::now();
    check_guard(&state, ip, started)?;
    let (client_id, secret) = match (basic, body.client_secret) {
        (Some((id, secret)), _) => (Some(id), secret),
        (None, Some(secret)) => (body.client_id, secret),
        (None, None) => {
            note_failure(&state, ip, AuthFailure::Missing, started);
            return Err(ApiError::Unauthorized(AuthFailure::Missing));
        }
    };
    let now = Utc::now();
    let table = state.api_keys.load();
    let record = match api_key::verify(&table, &secret, now) {
        Ok(r) => r,
        Err(failure) => {
            note_failure(&state, ip, failure, started);
            return Err(ApiError::Unauthorized(failure));
        }
    };
    // A client_id, when given, must name the same key.
    if client_id
        .as_deref()
        .is_some_and(|id| !id.is_empty() && id != record.id)
    {
        note_failure(&state, ip, AuthFailure::WrongSecret, started);
        return Err(ApiError::Unauthorized(AuthFailure::WrongSecret));
    }
    let subject = format!("key:{}", record.id);
    audit.principal(&subject, Some(&record.id), record.tier.as_str());
    // Minting tokens counts against the key's request budget like any call.
    take_request(&state, &subject, record.tier, &audit)?;
    let runtime = state.runtime();
    let ttl = runtime.config.auth.token_ttl.as_chrono();
    // A token never outlives the key it was minted from.
    let exp = record.expires_at.map_or(now + ttl, |e| e.min(now + ttl));
    let claims = Claims {
        iss: runtime.config.auth.issuer.clone(),
        aud: runtime.config.auth.audience.clone(),
        sub: subject,
        role: record.tier.as_str().to_string(),
        iat: now.timestamp(),
        nbf: now.timestamp(),
        exp: exp.timestamp(),
        jti: new_jti().map_err(ApiError::Internal)?,
    };
    let signing = state.signing.load();
    let token = signing.sign(&claims, now).map_err(ApiError::NotReady)?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": claims.exp - claims.iat,
        "scope": record.tier.as_str(),
    })))
}

fn serde_urlencoded_from(bytes: &[u8]) -> Result<TokenRequest, ApiError> {
    let mut grant_type = None;
    let mut client_id = None;
    let mut client_secret = None;
    for (k, v) in form_urlencoded::parse(bytes) {
        match k.as_ref() {
            "grant_type" => grant_type = Some(v.into_owned()),
            "client_id" => client_id = Some(v.into_owned()),
            "client_secret" => client_secret = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(TokenRequest {
        grant_type: grant_type.ok_or_else(|| ApiError::InvalidField {
            message: "grant_type: required".into(),
            param: "grant_type",
        })?,
        client_id,
        client_secret,
    })
}

pub async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(state.signing.load().jwks(Utc::now()))
}
