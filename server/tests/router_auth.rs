//! `auth::Authorized` through the router, in-process (no TLS, no sockets):
//! which credential gets which answer, API keys and the tokens minted from
//! them, each tier's permissions, and the brute-force guard, which counts
//! failures per client address. negative.rs sends many more malformed
//! credentials over TLS.

use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{Method, Request, StatusCode};
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use securechat_test_support::https::in_process::{InProcess, Reply, request};
use securechat_test_support::https::{RELAXED, chat_body};
use serde_json::json;

async fn chat(app: &InProcess, bearer: &str) -> Reply {
    let body = chat_body("hello");
    app.post_json("/v1/chat/completions", Some(bearer), &body)
        .await
}

/// A token from the token endpoint for the API key `key`.
async fn mint(app: &InProcess, key: &str) -> String {
    let form = Request::builder()
        .method(Method::POST)
        .uri("/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&client_secret={key}").into())
        .unwrap();
    let reply = app.send(form).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.json()["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn no_credential_is_401_with_a_bearer_challenge() {
    let (_s, app) = InProcess::start(RELAXED).await;
    let reply = app.get("/v1/models", None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.code().as_deref(), Some("missing_credentials"));
    let challenge = reply.headers[WWW_AUTHENTICATE].to_str().unwrap();
    assert_eq!(challenge, "Bearer realm=\"securechat\"");
}

#[tokio::test]
async fn an_invalid_credential_is_401_invalid_api_key() {
    let (s, app) = InProcess::start(RELAXED).await;
    let unknown_id = format!("sk-sc-zzzzzzzzzzzz-{}", "A".repeat(43));
    let wrong_secret = format!("sk-sc-{}-{}", s.keys.admin_id, "A".repeat(43));
    for credential in ["hello", "a.b.c", unknown_id.as_str(), wrong_secret.as_str()] {
        let reply = app.get("/v1/models", Some(credential)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{credential}");
        assert_eq!(
            reply.code().as_deref(),
            Some("invalid_api_key"),
            "{credential}"
        );
        let challenge = reply.headers[WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
}

#[tokio::test]
async fn suspended_revoked_and_expired_keys_each_get_their_code() {
    let (s, app) = InProcess::start(RELAXED).await;
    for (key, code) in [
        (&s.keys.suspended, "key_suspended"),
        (&s.keys.revoked, "key_revoked"),
        (&s.keys.expired, "key_expired"),
    ] {
        let reply = chat(&app, key).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{code}");
        assert_eq!(reply.code().as_deref(), Some(code));
    }
}

#[tokio::test]
async fn a_token_minted_from_a_key_has_the_key_tier() {
    let (s, app) = InProcess::start(RELAXED).await;
    let admin_token = mint(&app, &s.keys.admin).await;
    let developer_token = mint(&app, &s.keys.developer).await;
    assert_eq!(admin_token.split('.').count(), 3, "a JWT");
    for (credential, tier) in [(&s.keys.admin, "admin key"), (&admin_token, "admin token")] {
        let reply = app.get("/admin/keys", Some(credential)).await;
        assert_eq!(reply.status, StatusCode::OK, "{tier}: {}", reply.text);
    }
    for credential in [&s.keys.developer, &developer_token] {
        let reply = app.get("/v1/models", Some(credential)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        let reply = app.get("/admin/keys", Some(credential)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.code().as_deref(), Some("permission_denied"));
    }
}

#[tokio::test]
async fn an_expired_token_is_401_token_expired() {
    let (s, app) = InProcess::start(RELAXED).await;
    let active = s.keyset().active().unwrap().clone();
    let now = Utc::now().timestamp();
    // Ten minutes past its exp: far beyond the 5 s leeway.
    let claims = json!({"iss": "https://localhost:8000", "aud": "securechat",
        "sub": format!("key:{}", s.keys.admin_id), "role": "Admin",
        "iat": now - 1200, "nbf": now - 1200, "exp": now - 600, "jti": "t"});
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(active.kid.clone());
    let key = EncodingKey::from_ed_pem(active.private_key_pem.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let reply = chat(&app, &token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.code().as_deref(), Some("token_expired"));
}

#[tokio::test]
async fn each_tier_reaches_only_its_permissions() {
    let (s, app) = InProcess::start(RELAXED).await;
    // (key, path, status): ReadOnly may chat only; Developer adds models
    // and usage; Admin has everything.
    let table = [
        (&s.keys.readonly, "/v1/models", StatusCode::FORBIDDEN),
        (&s.keys.readonly, "/v1/usage", StatusCode::FORBIDDEN),
        (&s.keys.developer, "/v1/models", StatusCode::OK),
        (&s.keys.developer, "/v1/usage", StatusCode::OK),
        (&s.keys.developer, "/admin/keys", StatusCode::FORBIDDEN),
        (&s.keys.developer, "/admin/config", StatusCode::FORBIDDEN),
        (&s.keys.admin, "/admin/keys", StatusCode::OK),
        (&s.keys.admin, "/admin/config", StatusCode::OK),
    ];
    for (key, path, status) in table {
        let reply = app.get(path, Some(key)).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text);
        if status == StatusCode::FORBIDDEN {
            assert_eq!(reply.code().as_deref(), Some("permission_denied"));
        }
    }
    let reply = chat(&app, &s.keys.readonly).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[tokio::test]
async fn the_brute_force_guard_throttles_the_failing_address_only() {
    let config =
        "rateLimit:\n  requestsPerMinute: 100000\nlimits:\n  maxAuthFailuresPerMinute: 3\n";
    let (s, app) = InProcess::start(config).await;
    let attacker = "198.51.100.7:50000".parse().unwrap();
    let neighbour = "198.51.100.8:50000".parse().unwrap();
    for _ in 0..3 {
        let reply = app
            .send_from(
                attacker,
                request(Method::GET, "/v1/models", Some("guess"), None),
            )
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    // The fourth request is refused before its credential is looked at,
    // even a good one.
    let good = request(Method::GET, "/v1/models", Some(&s.keys.admin), None);
    let reply = app.send_from(attacker, good).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text
    );
    assert_eq!(reply.code().as_deref(), Some("too_many_auth_failures"));
    let retry: u64 = reply.headers[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Another address is not affected.
    let good = request(Method::GET, "/v1/models", Some(&s.keys.admin), None);
    let reply = app.send_from(neighbour, good).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}
