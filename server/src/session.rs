//! Browser sessions of the web UI, kept on the server.
//!
//! The browser holds only a random 256-bit id in an HttpOnly cookie; the
//! store is keyed by the SHA-256 of that id, so looking a cookie up is a
//! hash-map probe on a digest (no timing signal about stored ids) and the
//! ids themselves are never kept. A session never holds a credential: an
//! API-key session remembers the key's id and re-checks the key table on
//! every use, an SSO session the verified identity. Both stores are
//! bounded so unauthenticated traffic cannot grow them without limit.
//!
//! With `sharedState` they live in the store instead, so that a login on
//! one replica is valid on the others and a logout ends it everywhere:
//! under `<prefix>session:<hex SHA-256 of the id>` (the login state's for a
//! pending login), with the session's remaining life as the key's TTL. The
//! value is sealed (`shared::sealed`) with a key derived from the cookie id
//! (the login state) itself, so the store, which never sees the id, holds
//! neither the CSRF token nor a PKCE verifier in clear.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::principal::Principal;
use crate::shared::{Store, sealed};

/// Name of the session cookie. The `__Host-` prefix makes the browser
/// refuse it unless it is Secure, has Path=/ and no Domain, so no other
/// host can plant or widen it.
pub const SESSION_COOKIE: &str = "__Host-securechat-session";
/// Cookie binding an SSO login in progress to the browser that started it.
pub const LOGIN_COOKIE: &str = "__Host-securechat-login";
/// Header the page sends with the session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a started SSO login may take at the provider.
pub const LOGIN_TTL: chrono::Duration = chrono::Duration::minutes(10);

/// Marks requests that arrived on the web port: only there is the session
/// cookie accepted (the API port is for programs, which send credentials
/// explicitly, and must not be driven by a browser's ambient cookie).
#[derive(Debug, Clone, Copy)]
pub struct WebPort;

/// How the session was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Login {
    ApiKey,
    Sso {
        issuer: String,
    },
    /// A plain-OAuth2 provider of `web.oauth2`, by name.
    OAuth2 {
        provider: String,
    },
}

/// One signed-in browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub principal: Principal,
    pub login: Login,
    /// What the page shows as "signed in as".
    pub display_name: String,
    /// Sent back by the page in [`CSRF_HEADER`]; the cookie alone never
    /// authorises an API call.
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// An SSO login between the redirect to the provider and its callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The `auth.oidc` / `web.sso` issuer the browser was sent to.
    pub issuer_url: String,
    pub code_verifier: String,
    pub nonce: String,
    pub redirect_uri: String,
    pub started_at: DateTime<Utc>,
    /// Set when a `web.oauth2` provider (by name) was started rather than
    /// an OIDC issuer: its callback accepts only these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_provider: Option<String>,
}

/// Why a session could not be stored or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("too many open sessions or logins; try again later")]
    Full,
    #[error("the system random number generator failed")]
    Random,
    /// The shared store failed (it counted and logged why).
    #[error("the session store is unavailable: {0}")]
    Unavailable(String),
}

impl From<crate::shared::StoreError> for StoreError {
    fn from(e: crate::shared::StoreError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// 256 random bits, base64url.
pub fn random_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| StoreError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The web UI's sessions and pending SSO logins: in this process, or in
/// the store the replicas share.
pub enum Sessions {
    Memory(MemorySessions),
    Shared(Arc<Store>),
}

/// What a sealed value is bound to (a session cannot be replayed as a
/// pending login, nor the other way round).
const SESSION_PURPOSE: &[u8] = b"securechat session v1";
const LOGIN_PURPOSE: &[u8] = b"securechat sso login v1";

fn store_key(kind: &str, id: &str) -> String {
    let hex: String = digest(id).iter().map(|b| format!("{b:02x}")).collect();
    format!("{kind}:{hex}")
}

impl Sessions {
    pub fn new(max: usize, store: Option<Arc<Store>>) -> Self {
        match store {
            Some(store) => Sessions::Shared(store),
            None => Sessions::Memory(MemorySessions::new(max)),
        }
    }

    /// Stores a session and returns the id for the cookie.
    pub async fn create(&self, session: Session, now: DateTime<Utc>) -> Result<String, StoreError> {
        match self {
            Sessions::Memory(m) => m.create(session, now),
            Sessions::Shared(store) => {
                let id = random_token()?;
                let ttl = (session.expires_at - now).to_std().unwrap_or_default();
                let json = serde_json::to_vec(&session)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let value =
                    sealed::seal(&id, SESSION_PURPOSE, &json).map_err(|_| StoreError::Random)?;
                store.set(&store_key("session", &id), value, ttl).await?;
                Ok(id)
            }
        }
    }

    /// The live session for a cookie value.
    pub async fn get(&self, id: &str, now: DateTime<Utc>) -> Result<Option<Session>, StoreError> {
        match self {
            Sessions::Memory(m) => Ok(m.get(id, now)),
            Sessions::Shared(store) => {
                let Some(value) = store.get(&store_key("session", id)).await? else {
                    return Ok(None);
                };
                Ok(sealed::open(id, SESSION_PURPOSE, &value)
                    .and_then(|json| serde_json::from_slice::<Session>(&json).ok())
                    .filter(|s| s.expires_at > now))
            }
        }
    }

    pub async fn remove(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Sessions::Memory(m) => {
                m.remove(id);
                Ok(())
            }
            Sessions::Shared(store) => Ok(store.delete(&store_key("session", id)).await?),
        }
    }

    /// Remembers a started SSO login under its `state`.
    pub async fn start_login(
        &self,
        state: &str,
        login: PendingLogin,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        match self {
            Sessions::Memory(m) => m.start_login(state, login, now),
            Sessions::Shared(store) => {
                let ttl = LOGIN_TTL.to_std().unwrap_or_default();
                let json = serde_json::to_vec(&login)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                let value =
                    sealed::seal(state, LOGIN_PURPOSE, &json).map_err(|_| StoreError::Random)?;
                Ok(store.set(&store_key("login", state), value, ttl).await?)
            }
        }
    }

    /// Takes a pending login out (atomically: a `state` is good for one
    /// callback only, on whichever replica it lands).
    pub async fn finish_login(
        &self,
        state: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PendingLogin>, StoreError> {
        match self {
            Sessions::Memory(m) => Ok(m.finish_login(state, now)),
            Sessions::Shared(store) => {
                let Some(value) = store.take(&store_key("login", state)).await? else {
                    return Ok(None);
                };
                Ok(sealed::open(state, LOGIN_PURPOSE, &value)
                    .and_then(|json| serde_json::from_slice::<PendingLogin>(&json).ok())
                    .filter(|p| now - p.started_at < LOGIN_TTL))
            }
        }
    }
}

/// The sessions and pending logins of one process.
pub struct MemorySessions {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    pending: Mutex<HashMap<[u8; 32], PendingLogin>>,
    max: usize,
}

impl MemorySessions {
    pub fn new(max: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// Stores a session and returns the id for the cookie. Expired
    /// sessions are dropped first; a store still full refuses rather than
    /// evicting someone who is signed in.
    pub fn create(&self, session: Session, now: DateTime<Utc>) -> Result<String, StoreError> {
        let id = random_token()?;
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max {
            map.retain(|_, s| s.expires_at > now);
        }
        if map.len() >= self.max {
            return Err(StoreError::Full);
        }
        map.insert(digest(&id), session);
        Ok(id)
    }

    /// The live session for a cookie value; an expired one is removed.
    pub fn get(&self, id: &str, now: DateTime<Utc>) -> Option<Session> {
        let key = digest(id);
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&digest(id));
    }

    /// Remembers a started SSO login under its `state`.
    pub fn start_login(
        &self,
        state: &str,
        login: PendingLogin,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max {
            map.retain(|_, p| now - p.started_at < LOGIN_TTL);
        }
        if map.len() >= self.max {
            return Err(StoreError::Full);
        }
        map.insert(digest(state), login);
        Ok(())
    }

    /// Takes a pending login out (a `state` is good for one callback
    /// only); `None` when unknown or older than [`LOGIN_TTL`].
    pub fn finish_login(&self, state: &str, now: DateTime<Utc>) -> Option<PendingLogin> {
        let mut map = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&digest(state))
            .filter(|p| now - p.started_at < LOGIN_TTL)
    }
}

/// The value of one cookie in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for a session or login cookie. HttpOnly: no script can
/// read it. SameSite=Lax: sent on the provider's top-level redirect back,
/// never on cross-site subrequests or POSTs. `max_age_secs` 0 deletes.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64) -> String {
    format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        max_age_secs.max(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::principal::Method;
    use securechat_crds::v1alpha1::Tier;

    fn session(expires_at: DateTime<Utc>) -> Session {
        Session {
            principal: Principal {
                subject: "key:a".into(),
                key_id: Some("a".into()),
                tier: Tier::ReadOnly,
                method: Method::ApiKey,
            },
            login: Login::ApiKey,
            display_name: "a".into(),
            csrf: "c".into(),
            expires_at,
        }
    }

    #[test]
    fn sessions_expire_and_are_removed() {
        let now = Utc::now();
        let store = MemorySessions::new(10);
        let id = store
            .create(session(now + chrono::Duration::minutes(1)), now)
            .unwrap();
        assert_eq!(id.len(), 43);
        assert!(store.get(&id, now).is_some());
        assert!(store.get("not-an-id", now).is_none());
        assert!(store.get(&id, now + chrono::Duration::minutes(2)).is_none());
        assert!(
            store.get(&id, now).is_none(),
            "expired sessions are dropped"
        );
        let id = store
            .create(session(now + chrono::Duration::minutes(1)), now)
            .unwrap();
        store.remove(&id);
        assert!(store.get(&id, now).is_none());
    }

    #[test]
    fn a_full_store_refuses_but_reclaims_expired_sessions() {
        let now = Utc::now();
        let store = MemorySessions::new(1);
        store
            .create(session(now + chrono::Duration::seconds(1)), now)
            .unwrap();
        assert_eq!(
            store.create(session(now + chrono::Duration::minutes(1)), now),
            Err(StoreError::Full)
        );
        let later = now + chrono::Duration::seconds(2);
        assert!(
            store
                .create(session(later + chrono::Duration::minutes(1)), later)
                .is_ok()
        );
    }

    #[test]
    fn a_login_state_is_good_for_one_callback_within_its_lifetime() {
        let now = Utc::now();
        let store = MemorySessions::new(4);
        let pending = PendingLogin {
            issuer_url: "https://idp".into(),
            code_verifier: "v".into(),
            nonce: "n".into(),
            redirect_uri: "https://x/web/sso/callback".into(),
            started_at: now,
            oauth2_provider: None,
        };
        store.start_login("s1", pending.clone(), now).unwrap();
        assert!(store.finish_login("s1", now).is_some());
        assert!(store.finish_login("s1", now).is_none(), "replayed state");
        store.start_login("s2", pending, now).unwrap();
        assert!(store.finish_login("s2", now + LOGIN_TTL).is_none());
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            axum::http::header::COOKIE,
            "a=1; __Host-securechat-session=xyz".parse().unwrap(),
        );
        h.append(axum::http::header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "securechat-session"), None);
        let set = set_cookie(SESSION_COOKIE, "v", 60);
        for part in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=60"] {
            assert!(set.contains(part), "{set}");
        }
    }
}
