//! Plain OAuth2 sign-in providers (`web.oauth2`, from `spec.web.sso`):
//! the authorization URL, the code exchange and the user-info call of a
//! generic provider, and how a user's answer maps onto a tier.
//!
//! Unlike OIDC there is no ID token to verify: the identity is what the
//! provider's user-info endpoint (or, for WeChat Work, its user API) says
//! when called with the access token (the secret) this server obtained
//! itself from the code over TLS. The code is bound to this browser by
//! `state` (always) and to this server's request by PKCE (where the
//! provider supports it).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use securechat_crds::v1alpha1::{OAuth2Settings, RoleValueTier, Tier, TokenEndpointAuth};
use serde_json::Value;

/// Who the provider says signed in, before the tier is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUser {
    /// Stable id at the provider (WeCom: the userid).
    pub id: String,
    /// What the page shows.
    pub display_name: String,
    /// Role, group or department values, as text.
    pub roles: Vec<String>,
}

/// Why a sign-in through an OAuth2 provider failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuth2Error {
    /// The provider could not be reached or answered garbage.
    #[error("{step}: {source}")]
    Unreachable {
        step: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// The provider answered, but not with what its API promises.
    #[error("{step}: unexpected answer: {detail}")]
    Malformed { step: &'static str, detail: String },
    /// The provider refused a call (an OAuth2 error or a WeCom errcode).
    #[error("{step}: the provider refused: {detail}")]
    Refused { step: &'static str, detail: String },
    /// The code is invalid, expired or already used (WeCom errcode 40029,
    /// OAuth2 `invalid_grant`).
    #[error("the sign-in code has expired or was already used ({detail})")]
    CodeExpired { detail: String },
    /// WeCom: the person who scanned is not a member of the corp.
    #[error("not a member of this organisation (WeChat Work answered with an openid only)")]
    NotAMember,
    /// The provider failed repeatedly and its circuit is open: refused
    /// without calling it.
    #[error("failing repeatedly, not called for now: {0}")]
    CircuitOpen(#[from] crate::breaker::Refused),
    /// The mounted client secret could not be read.
    #[error("reading the client secret {path}: {source}")]
    Secret {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl OAuth2Error {
    pub fn http(step: &'static str) -> impl FnOnce(reqwest::Error) -> Self {
        move |source| Self::Unreachable { step, source }
    }

    /// Whether the provider itself is at fault (a 502 page) rather than
    /// the user's sign-in (a 400/403 page).
    pub fn is_provider_failure(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Malformed { .. }
                | Self::CircuitOpen(_)
                | Self::Secret { .. }
        )
    }
}

/// Reads a mounted client secret (per login: a rotated Secret applies at
/// once).
pub fn read_secret(path: &std::path::Path) -> Result<String, OAuth2Error> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| OAuth2Error::Secret {
            path: path.display().to_string(),
            source,
        })
}

/// Appends `query` to `base`, which may already have a query.
pub fn with_query(base: &str, query: &str) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}{query}")
}

/// The authorization request of a generic provider (RFC 6749 §4.1.1,
/// with RFC 7636's challenge when PKCE is on).
pub fn authorize_url(
    settings: &OAuth2Settings,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    pkce_challenge: Option<&str>,
) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", state);
    if !settings.scopes.is_empty() {
        query.append_pair("scope", &settings.scopes.join(" "));
    }
    if let Some(challenge) = pkce_challenge {
        query
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
    }
    with_query(&settings.authorize_url, &query.finish())
}

/// The text of a JSON value that names a role or an id: strings as they
/// are, numbers in decimal.
fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads the user out of a user-info answer with the configured pointers.
pub fn read_user(settings: &OAuth2Settings, answer: &Value) -> Result<ProviderUser, OAuth2Error> {
    let id = answer
        .pointer(&settings.user_id_pointer)
        .and_then(as_text)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| OAuth2Error::Malformed {
            step: "user info",
            detail: format!(
                "no string or number at userIdPointer {}",
                settings.user_id_pointer
            ),
        })?;
    let display_name = settings
        .display_name_pointer
        .as_deref()
        .and_then(|p| answer.pointer(p))
        .and_then(as_text)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| id.clone());
    let roles = match settings
        .role_pointer
        .as_deref()
        .and_then(|p| answer.pointer(p))
    {
        Some(Value::Array(items)) => items.iter().filter_map(as_text).collect(),
        Some(value) => as_text(value).into_iter().collect(),
        None => Vec::new(),
    };
    Ok(ProviderUser {
        id,
        display_name,
        roles,
    })
}

/// The highest tier the user's role values are mapped to, else the
/// default; `None` refuses the user.
pub fn tier_of(roles: &[String], mapping: &[RoleValueTier], default: Option<Tier>) -> Option<Tier> {
    roles
        .iter()
        .filter_map(|r| mapping.iter().find(|m| m.value == *r).map(|m| m.tier))
        .max()
        .or(default)
}

/// Exchanges the code at the token endpoint (RFC 6749 §4.1.3) and returns
/// the access token.
pub async fn exchange_code(
    http: &reqwest::Client,
    settings: &OAuth2Settings,
    client_id: &str,
    client_secret: Option<&str>,
    code: &str,
    redirect_uri: &str,
    code_verifier: Option<&str>,
) -> Result<String, OAuth2Error> {
    const STEP: &str = "token endpoint";
    let post_secret = settings.token_endpoint_auth == TokenEndpointAuth::ClientSecretPost;
    let form = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("client_id", client_id);
        if let Some(verifier) = code_verifier {
            form.append_pair("code_verifier", verifier);
        }
        if let (Some(secret), true) = (client_secret, post_secret) {
            form.append_pair("client_secret", secret);
        }
        form.finish()
    };
    let mut request = http
        .post(&settings.token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json");
    if let (Some(secret), false) = (client_secret, post_secret) {
        // client_secret_basic: both parts form-encoded first (§2.3.1).
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = STANDARD.encode(format!("{}:{}", enc(client_id), enc(secret)));
        request = request.header("authorization", format!("Basic {basic}"));
    }
    let response = request
        .body(form)
        .send()
        .await
        .map_err(OAuth2Error::http(STEP))?;
    let status = response.status();
    failed_provider(STEP, status)?;
    let body: Value = response.json().await.map_err(OAuth2Error::http(STEP))?;
    if let Some(error) = body.get("error").and_then(Value::as_str) {
        let description = body
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("");
        let detail = format!("{status}: {error} {description}")
            .trim()
            .to_string();
        return Err(if error == "invalid_grant" {
            OAuth2Error::CodeExpired { detail }
        } else {
            OAuth2Error::Refused { step: STEP, detail }
        });
    }
    if !status.is_success() {
        return Err(OAuth2Error::Refused {
            step: STEP,
            detail: status.to_string(),
        });
    }
    body.get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| OAuth2Error::Malformed {
            step: STEP,
            detail: "no access_token".into(),
        })
}

/// A 5xx is the provider's failure whatever its body says (often a
/// gateway's HTML page): the 502 page and a failure for its breaker, not
/// a refused sign-in.
fn failed_provider(step: &'static str, status: reqwest::StatusCode) -> Result<(), OAuth2Error> {
    if status.is_server_error() {
        return Err(OAuth2Error::Malformed {
            step,
            detail: format!("HTTP {status}"),
        });
    }
    Ok(())
}

/// Calls the user-info endpoint with the access token.
pub async fn user_info(
    http: &reqwest::Client,
    settings: &OAuth2Settings,
    access_token: &str,
) -> Result<ProviderUser, OAuth2Error> {
    const STEP: &str = "user info";
    let response = http
        .get(&settings.user_info_url)
        .bearer_auth(access_token)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(OAuth2Error::http(STEP))?;
    let status = response.status();
    failed_provider(STEP, status)?;
    if !status.is_success() {
        return Err(OAuth2Error::Refused {
            step: STEP,
            detail: status.to_string(),
        });
    }
    let answer: Value = response.json().await.map_err(OAuth2Error::http(STEP))?;
    read_user(settings, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> OAuth2Settings {
        serde_json::from_value(json!({
            "authorizeURL": "https://idp.example/authorize?tenant=a",
            "tokenURL": "https://idp.example/token",
            "userInfoURL": "https://idp.example/me",
            "scopes": ["read:user", "groups"],
            "userIdPointer": "/data/id",
            "displayNamePointer": "/data/profile/name",
            "rolePointer": "/data/groups",
            "roleMapping": [
                {"value": "chat-users", "tier": "Developer"},
                {"value": "42", "tier": "Admin"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn the_authorization_request_carries_state_scope_and_the_challenge() {
        let url = authorize_url(
            &settings(),
            "cid",
            "https://chat/web/oauth2/callback",
            "st&x",
            Some("ch"),
        );
        assert_eq!(
            url,
            "https://idp.example/authorize?tenant=a&response_type=code&client_id=cid&\
             redirect_uri=https%3A%2F%2Fchat%2Fweb%2Foauth2%2Fcallback&state=st%26x&\
             scope=read%3Auser+groups&code_challenge=ch&code_challenge_method=S256"
        );
        let without = authorize_url(&settings(), "cid", "https://r", "s", None);
        assert!(!without.contains("code_challenge"), "{without}");
    }

    #[test]
    fn the_user_is_read_with_the_pointers() {
        let answer = json!({"data": {"id": 1234, "profile": {"name": "Ada"}, "groups": ["x", 42, "chat-users"]}});
        let user = read_user(&settings(), &answer).unwrap();
        assert_eq!(
            user,
            ProviderUser {
                id: "1234".into(),
                display_name: "Ada".into(),
                roles: vec!["x".into(), "42".into(), "chat-users".into()],
            }
        );
        // A single role value, no name: the id is shown.
        let answer = json!({"data": {"id": "u-1", "groups": "chat-users"}});
        let user = read_user(&settings(), &answer).unwrap();
        assert_eq!((user.display_name.as_str(), user.roles.len()), ("u-1", 1));
        // No id is an error that names the pointer.
        let error = read_user(&settings(), &json!({"data": {"id": null}})).unwrap_err();
        assert!(error.to_string().contains("/data/id"), "{error}");
    }

    #[test]
    fn the_highest_mapped_tier_wins_and_unmapped_users_get_the_default_or_nothing() {
        let mapping = settings().role_mapping;
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            tier_of(&roles(&["chat-users", "42"]), &mapping, None),
            Some(Tier::Admin)
        );
        assert_eq!(
            tier_of(&roles(&["chat-users"]), &mapping, None),
            Some(Tier::Developer)
        );
        assert_eq!(tier_of(&roles(&["other"]), &mapping, None), None);
        assert_eq!(
            tier_of(&roles(&[]), &mapping, Some(Tier::ReadOnly)),
            Some(Tier::ReadOnly)
        );
    }
}
