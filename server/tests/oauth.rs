//! The token endpoint as an OAuth 2.0 client sees it (RFC 6749 §4.4, §5):
//! HTTP Basic client authentication, scope down-scoping, uncacheable
//! answers, and throttling reported in the OAuth error shape.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{CACHE_CONTROL, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE};
use securechat_test_support::https::{self, RELAXED, server};
use serde_json::Value;

#[tokio::test]
async fn basic_client_authentication_and_uncacheable_answers() {
    let s = server(RELAXED).await;
    let admin_id = s.keys.admin_id.clone();
    let resp = s
        .client
        .post(s.url("/oauth/token"))
        .basic_auth(&admin_id, Some(&s.keys.admin))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
    assert_eq!(resp.headers()[PRAGMA], "no-cache");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["scope"], "Admin");
    assert_eq!(body["token_type"], "Bearer");

    // RFC 6749 §2.3.1: the Basic parts are form-urlencoded first; an
    // escaped secret must decode to the same key.
    let escaped = s.keys.admin.replace('-', "%2D");
    let header = format!("Basic {}", STANDARD.encode(format!("{admin_id}:{escaped}")));
    let resp = s
        .client
        .post(s.url("/oauth/token"))
        .header("authorization", header)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let resp = s
        .client
        .post(s.url("/oauth/token"))
        .basic_auth(&admin_id, Some("sk-sc-wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    assert_eq!(resp.headers()[CACHE_CONTROL], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_description"], "client authentication failed");
}

#[tokio::test]
async fn a_scope_grants_a_lower_tier_and_the_token_is_held_to_it() {
    let s = server(RELAXED).await;
    let token: Value = s
        .client
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "ReadOnly"),
            ("client_secret", s.keys.admin.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token["scope"], "ReadOnly");
    let jwt = token["access_token"].as_str().unwrap();
    // ReadOnly may chat but not list models, although the key is Admin.
    let resp = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(jwt)
        .json(&https::chat_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The seed's role names are accepted as scopes too.
    let token: Value = s
        .client
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "user"),
            ("client_secret", s.keys.admin.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(token["scope"], "Developer");
}

#[tokio::test]
async fn throttling_at_the_token_endpoint_uses_the_oauth_shape() {
    let s = server("limits:\n  maxAuthFailuresPerMinute: 3\n").await;
    for _ in 0..3 {
        let resp = s
            .client
            .post(s.url("/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_secret", "sk-sc-nope-x"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // Even the right key waits while the address is throttled.
    let resp = s
        .client
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_secret", s.keys.admin.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key(RETRY_AFTER));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body["error_description"].is_string());
    // The failures were counted by reason, like everywhere else.
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("securechat_auth_failures_total{reason=\"malformed\"} 3"),
        "{metrics}"
    );
}
