//! External OIDC issuers: a fake identity provider over TLS publishes
//! discovery and a JWKS; the server verifies its tokens, maps roles, limits
//! refetches on unknown kids and keeps the last good keys when it is down;
//! its circuit breaker opens on a provider that stops answering and closes
//! when it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration as StdDuration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::get;
use chrono::{Duration, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use securechat_crds::files::keyset::{KeyState, SigningKeySet};
use securechat_crds::v1alpha1::{SigningAlgorithm, TlsVersion};
use securechat_server::credentials::jwt::SigningMaterial;
use securechat_server::{dev, listener, tls};
use securechat_test_support::https::{
    RELAXED, client_with_timeout, eventually, metrics_text, sample, server_in,
};
use serde_json::{Value, json};

struct Idp {
    url: String,
    pem: String,
    kid: String,
    jwks_fetches: Arc<AtomicUsize>,
    /// [`HEALTHY`], or [`HANGING`]: every request waits far past any
    /// client's timeout.
    mode: Arc<AtomicU8>,
    stop: tokio::sync::watch::Sender<bool>,
}

const HEALTHY: u8 = 0;
const HANGING: u8 = 1;

/// Waits for a minute while the provider is hanging.
async fn maybe_hang(mode: &AtomicU8) {
    if mode.load(Ordering::SeqCst) == HANGING {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
}

async fn start_idp(data: &std::path::Path) -> Idp {
    let now = Utc::now();
    let key = dev::new_signing_key(
        "idpkey1",
        SigningAlgorithm::ES256,
        KeyState::Active,
        now - Duration::hours(1),
        now + Duration::hours(1),
    )
    .unwrap();
    let jwks = SigningMaterial::from_keyset(&SigningKeySet {
        keys: vec![key.clone()],
    })
    .unwrap()
    .jwks(now);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let fetches = Arc::new(AtomicUsize::new(0));
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks")});
    let counter = fetches.clone();
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let (discovery_mode, jwks_mode) = (mode.clone(), mode.clone());
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move {
                maybe_hang(&discovery_mode).await;
                axum::Json(discovery)
            }),
        )
        .route(
            "/jwks",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    maybe_hang(&jwks_mode).await;
                    axum::Json(jwks)
                }
            }),
        );
    let cert = tls::load_cert(
        &std::fs::read(data.join("tls/tls.crt")).unwrap(),
        &std::fs::read(data.join("tls/tls.key")).unwrap(),
    )
    .unwrap();
    let swappable = Arc::new(tls::SwappableCert(ArcSwap::new(cert.key)));
    let acceptor = Arc::new(ArcSwap::from_pointee(
        tls::acceptor(swappable, TlsVersion::V1_3, None).unwrap(),
    ));
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(listener::serve_tls(
        listener,
        acceptor,
        app,
        || std::time::Duration::from_secs(30),
        rx,
    ));
    Idp {
        url,
        pem: key.private_key_pem,
        kid: key.kid,
        jwks_fetches: fetches,
        mode,
        stop,
    }
}

impl Idp {
    fn token(&self, kid: &str, f: impl FnOnce(&mut Value)) -> String {
        let now = Utc::now().timestamp();
        let mut claims = json!({"iss": self.url, "aud": "chat-ui", "sub": "alice", "role": "admin",
                                "iat": now, "exp": now + 300});
        f(&mut claims);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn oidc_tokens_are_verified_through_a_cached_jwks() {
    let dir = tempfile::tempdir().unwrap();
    dev::ensure(dir.path()).unwrap();
    let idp = start_idp(dir.path()).await;
    let config = format!(
        "{RELAXED}auth:\n  oidc:\n    - issuerURL: {}\n      audience: chat-ui\n      roleClaim: role\n",
        idp.url
    );
    let s = server_in(dir, &config).await;
    let get = |path: &str, token: String| s.client.get(s.url(path)).bearer_auth(token).send();

    let admin = idp.token(&idp.kid, |_| {});
    assert_eq!(
        get("/admin/keys", admin.clone()).await.unwrap().status(),
        200
    );
    let guest = idp.token(&idp.kid, |c| c["role"] = json!("guest"));
    assert_eq!(
        get("/v1/models", guest).await.unwrap().status(),
        403,
        "guest maps to ReadOnly"
    );
    let users = idp.token(&idp.kid, |c| c["role"] = json!(["guest", "user"]));
    assert_eq!(
        get("/v1/models", users).await.unwrap().status(),
        200,
        "highest role wins"
    );
    let wrong_aud = idp.token(&idp.kid, |c| c["aud"] = json!("other"));
    assert_eq!(get("/v1/models", wrong_aud).await.unwrap().status(), 401);
    let no_role = idp.token(&idp.kid, |c| {
        c.as_object_mut().unwrap().remove("role");
    });
    assert_eq!(
        get("/v1/models", no_role).await.unwrap().status(),
        401,
        "no role and no default tier"
    );
    let expired = idp.token(&idp.kid, |c| c["exp"] = json!(Utc::now().timestamp() - 60));
    assert_eq!(get("/v1/models", expired).await.unwrap().status(), 401);
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(idp.kid.clone());
    let forged = jsonwebtoken::encode(
        &hs,
        &json!({"iss": idp.url, "aud": "chat-ui", "sub": "x", "role": "admin", "exp": Utc::now().timestamp() + 60}),
        &EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    assert_eq!(get("/v1/models", forged).await.unwrap().status(), 401);

    // Unknown kids: at most one refetch per interval, however many arrive.
    let before = idp.jwks_fetches.load(Ordering::SeqCst);
    for i in 0..5 {
        let t = idp.token(&format!("rogue{i}"), |_| {});
        assert_eq!(get("/v1/models", t).await.unwrap().status(), 401);
    }
    let after = idp.jwks_fetches.load(Ordering::SeqCst);
    assert!(
        after - before <= 1,
        "{} refetches for 5 unknown kids",
        after - before
    );

    // The issuer goes down: cached keys keep working.
    idp.stop.send(true).unwrap();
    assert_eq!(get("/admin/keys", admin).await.unwrap().status(), 200);
}

#[tokio::test]
async fn the_breaker_opens_on_a_hanging_issuer_and_closes_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    dev::ensure(dir.path()).unwrap();
    let idp = start_idp(dir.path()).await;
    // A 1 s timeout per call; two failures in a row open the breaker for
    // 2 s.
    let config = format!(
        "{RELAXED}auth:\n  oidc:\n    - issuerURL: {}\n      audience: chat-ui\n      roleClaim: role\n\
         outbound:\n  timeout: 1s\n  minRefetchInterval: 1s\n  circuitBreaker:\n    consecutiveFailures: 2\n    minimumCalls: 2\n    coolDown: 2s\n",
        idp.url
    );
    let s = server_in(dir, &config).await;
    // A request may wait for discovery and the JWKS, 1 s each, and no
    // longer: this client gives up after 4 s, which fails the test.
    let client = client_with_timeout(
        &s.ca_path(),
        &[&rustls::version::TLS13],
        StdDuration::from_secs(4),
    );
    let get = |token: String| {
        let client = client.clone();
        let url = s.url("/v1/models");
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("no request outlasts the configured timeout")
                .status()
        }
    };
    let series = |name: &str, extra: &str| {
        format!("securechat_{name}{{target=\"oidc:{}\"{extra}}}", idp.url)
    };
    let state = || async { sample(&metrics_text(&s).await, &series("circuit_state", "")) };

    let admin = idp.token(&idp.kid, |_| {});
    assert_eq!(get(admin.clone()).await, 200);
    assert_eq!(state().await, Some(0.0), "closed");

    // The provider hangs: tokens whose key is not cached make the server
    // ask it (and time out) until the breaker opens.
    idp.mode.store(HANGING, Ordering::SeqCst);
    let mut n = 0;
    assert!(
        eventually(async || {
            n += 1;
            assert_eq!(get(idp.token(&format!("rogue{n}"), |_| {})).await, 401);
            state().await == Some(2.0)
        })
        .await,
        "the breaker never opened"
    );
    // Open: the cached key still verifies (the last good JWKS), an unknown
    // one is refused at once.
    assert_eq!(get(admin.clone()).await, 200);
    assert_eq!(get(idp.token("unknown", |_| {})).await, 401);

    // Back: after the cool-down a request probes, and the breaker closes.
    idp.mode.store(HEALTHY, Ordering::SeqCst);
    assert!(
        eventually(async || {
            n += 1;
            get(idp.token(&format!("rogue{n}"), |_| {})).await;
            state().await == Some(0.0)
        })
        .await,
        "the breaker never closed"
    );
    let metrics = metrics_text(&s).await;
    for to in ["open", "half_open", "closed"] {
        let seen = sample(
            &metrics,
            &series("circuit_transitions_total", &format!(",to=\"{to}\"")),
        );
        assert!(seen.is_some_and(|n| n >= 1.0), "{to}: {metrics}");
    }
    assert_eq!(get(admin).await, 200);
}
