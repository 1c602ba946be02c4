//! The server over real TLS: chat (JSON and SSE), the seed API, tokens,
//! admin, limits, filters, hot reload, metrics.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use securechat_server::keys_cli;
use securechat_test_support::https::{self, MODEL, RELAXED, chat_body, server};

#[tokio::test]
async fn chat_completion_with_an_api_key() {
    let s = server(RELAXED).await;
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.readonly)
        .json(&chat_body("hello there friend"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("ratelimit-remaining"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello there friend"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(
        body["usage"]["total_tokens"],
        body["usage"]["prompt_tokens"].as_u64().unwrap() + 3
    );
}

#[tokio::test]
async fn sensitive_input_is_redacted_before_the_model_sees_it() {
    let s = server(RELAXED).await;
    let body: Value = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.admin)
        .json(&chat_body(
            "card 4111 1111 1111 1111 and mail a.b@example.com ok",
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "card [FILTERED] and mail [FILTERED] ok"
    );
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
        metrics.contains("direction=\"input\",detector=\"credit_card\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn reject_mode_refuses_sensitive_input() {
    let s = server(&format!("{RELAXED}sensitiveData:\n  action: Reject\n")).await;
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.admin)
        .json(&chat_body("my ssn is 123-45-6789"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "sensitive_data");
    assert_eq!(
        s.engine.calls.load(Ordering::SeqCst),
        0,
        "the model never saw it"
    );
}

/// Output filtering of a stream: the echo engine sends three characters per
/// event, so the card number arrives split across many SSE chunks.
#[tokio::test]
async fn streaming_redacts_numbers_split_across_chunks() {
    // Input filtering off, so the card reaches the model and comes back in
    // pieces through the output filter.
    let s = server(&format!("{RELAXED}sensitiveData:\n  input: false\n")).await;
    let mut body = chat_body("pay with 4111 1111 1111 1111 today");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.developer)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let chunks = https::sse_chunks(&resp.text().await.unwrap());
    let content = https::sse_content(&chunks);
    assert_eq!(content, "pay with [FILTERED] today");
    assert!(
        chunks.len() > 4,
        "streamed in several chunks: {}",
        chunks.len()
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    let usage = chunks
        .iter()
        .find(|c| c["usage"].is_object())
        .expect("usage chunk");
    assert_eq!(usage["usage"]["completion_tokens"], 7);
}

#[tokio::test]
async fn seed_chat_api_shape() {
    let s = server(RELAXED).await;
    let body: Value = s
        .client
        .post(s.url("/api/chat"))
        .bearer_auth(&s.keys.developer)
        .json(&json!({"message": "ni hao", "history": [["q", "a"]], "max_length": 2048, "temperature": 0.7}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["response"], "ni hao");
    assert_eq!(body["user"], format!("key:{}", s.keys.developer_id));
    let history = body["history"].as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[0], json!({"role": "user", "content": "q"}));
    assert_eq!(
        history[3],
        json!({"role": "assistant", "content": "ni hao"})
    );
}

/// The first seed's complete example (section 7) posts its `ChatRequest`
/// to `/api/secure-chat`; the same endpoint as `/api/chat` answers.
#[tokio::test]
async fn seed_secure_chat_path_is_the_chat_endpoint() {
    let s = server(RELAXED).await;
    let resp = s
        .client
        .post(s.url("/api/secure-chat"))
        .bearer_auth(&s.keys.developer)
        .json(&json!({"message": "ni hao", "history": [], "max_length": 2048, "temperature": 0.7}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["response"], "ni hao");
    assert_eq!(body["user"], format!("key:{}", s.keys.developer_id));
    assert_eq!(
        body["history"],
        json!([{"role": "user", "content": "ni hao"}, {"role": "assistant", "content": "ni hao"}])
    );
}

/// The seed's `history: List[str] = []`: a flat list alternating user and
/// assistant turns.
#[tokio::test]
async fn seed_flat_string_history_alternates_user_and_assistant() {
    let s = server(RELAXED).await;
    let body: Value = s
        .client
        .post(s.url("/api/secure-chat"))
        .bearer_auth(&s.keys.developer)
        .json(&json!({
            "message": "and tomorrow",
            "history": ["what is the weather", "sunny"],
            "max_length": 2048,
            "temperature": 0.7
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let roles: Vec<&str> = body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"], "{body}");
    assert_eq!(body["history"][1]["content"], "sunny");
    assert_eq!(body["history"][2]["content"], "and tomorrow");
}

/// The seed's `/api/chat` answers `{response, history, user_id}`; its
/// `/api/secure-chat` answers `user`: both name the caller.
#[tokio::test]
async fn seed_chat_names_the_caller_as_user_id_too() {
    let s = server(RELAXED).await;
    let body: Value = s
        .client
        .post(s.url("/api/chat"))
        .bearer_auth(&s.keys.admin)
        .json(&json!({"message": "ni hao", "history": [], "max_length": 2048, "temperature": 0.7}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let caller = format!("key:{}", s.keys.admin_id);
    assert_eq!(body["user_id"], caller);
    assert_eq!(body["user"], caller);
}

/// The seed's FastAPI app declares `OAuth2PasswordBearer(tokenUrl="token")`:
/// `POST /token` is the token endpoint, and its token calls the seed's chat.
#[tokio::test]
async fn seed_token_path_is_the_token_endpoint() {
    let s = server(RELAXED).await;
    let resp = s
        .client
        .post(s.url("/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_secret", s.keys.developer.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let token: Value = resp.json().await.unwrap();
    assert_eq!(token["token_type"], "Bearer");
    let resp = s
        .client
        .post(s.url("/api/secure-chat"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .json(&json!({"message": "ni hao", "history": [], "max_length": 2048, "temperature": 0.7}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["user_id"], format!("key:{}", s.keys.developer_id));
    // Errors keep the OAuth shape under the seed's path too.
    let resp = s.client.get(s.url("/token")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn oauth_token_then_bearer_jwt_and_jwks() {
    let s = server(RELAXED).await;
    // Form encoding, as OAuth clients send it.
    let resp = s
        .client
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_secret", s.keys.developer.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token: Value = resp.json().await.unwrap();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 1800);
    let jwt = token["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    let jwks: Value = s
        .client
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kid"].as_str(), header.kid.as_deref());
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert!(jwks.to_string().find("PRIVATE").is_none() && jwks["keys"][0].get("d").is_none());
    let models = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let models: Value = models.json().await.unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    // JSON body works too; a ReadOnly token cannot list models.
    let ro: Value = s
        .client
        .post(s.url("/oauth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_secret": s.keys.readonly}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(ro["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn admin_sees_keys_without_secrets_and_patches_config() {
    let s = server(RELAXED).await;
    let resp = s
        .client
        .get(s.url("/admin/keys"))
        .bearer_auth(&s.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("sha256") && !text.contains("sk-sc-"),
        "{text}"
    );
    let keys: Value = serde_json::from_str(&text).unwrap();
    let states: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap())
        .collect();
    for state in ["Active", "Suspended", "Revoked", "Expired"] {
        assert!(states.contains(&state), "{states:?}");
    }
    let resp = s
        .client
        .patch(s.url("/admin/config"))
        .bearer_auth(&s.keys.admin)
        .json(&json!({"cors": {"allowedOrigins": ["https://app.example"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let patched: Value = resp.json().await.unwrap();
    assert_eq!(patched["persisted"], true);
    // The new origin now passes CORS.
    let resp = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(&s.keys.admin)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    // An invalid patch is refused and changes nothing.
    let resp = s
        .client
        .post(s.url("/api/admin/configuration"))
        .bearer_auth(&s.keys.admin)
        .json(&json!({"rateLimit": {"requestsPerMinute": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let config: Value = s
        .client
        .get(s.url("/admin/config"))
        .bearer_auth(&s.keys.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["rateLimit"]["requestsPerMinute"], 100000);
}

#[tokio::test]
async fn the_eleventh_request_in_a_minute_is_limited() {
    let s = server("").await;
    for i in 0..10 {
        let resp = s
            .client
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(&s.keys.developer)
            .json(&chat_body("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.developer)
        .json(&chat_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&retry), "{retry}");
    assert_eq!(resp.headers()["ratelimit-limit"], "10");
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // Another principal is unaffected.
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.readonly)
        .json(&chat_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The Admin tier has no request cap by default (seed 001: "Admin: no
    // hard cap").
    for i in 0..15 {
        let resp = s
            .client
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(&s.keys.admin)
            .json(&chat_body("hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "admin request {i}");
    }
}

#[tokio::test]
async fn repeated_auth_failures_from_one_address_are_throttled() {
    let s = server("limits:\n  maxAuthFailuresPerMinute: 5\n").await;
    for _ in 0..5 {
        let resp = s
            .client
            .get(s.url("/v1/models"))
            .bearer_auth("sk-sc-nope-x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // Even a valid key is refused while the address is throttled.
    let resp = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(&s.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_auth_failures");
}

#[tokio::test]
async fn a_full_queue_is_503_with_retry_after() {
    let s = server(RELAXED).await;
    s.engine.queue_full.store(true, Ordering::SeqCst);
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.admin)
        .json(&chat_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "2");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_busy");
}

#[tokio::test]
async fn token_quota_per_tier() {
    // ReadOnly gets 10 tokens a minute here; the echo engine spends one per word.
    let s = server(&format!(
        "{RELAXED}roles:\n  readOnly:\n    permissions: [Chat]\n    tokensPerMinute: 10\n"
    ))
    .await;
    let words = "a b c d e f g h i j k l";
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.readonly)
        .json(&chat_body(words))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.readonly)
        .json(&chat_body("again"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "token_quota_exceeded");
}

async fn wait_for(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `securechat_file_reloads_total{file, result="error"}` (which starts at 0).
async fn reload_errors(client: &reqwest::Client, metrics_url: &str, file: &str) -> f64 {
    let text = client
        .get(metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("securechat_file_reloads_total{{file=\"{file}\",result=\"error\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Issue 26: `keys prune` archives an expired key (id, tier, dates) in the
/// table's bounded history before removing it, and the admin API lists it
/// with the usage the server counted.
#[tokio::test]
async fn pruned_expired_keys_are_listed_in_the_admin_history() {
    let s = server(RELAXED).await;
    let table_path = s.data().join("api-keys.json");
    let mut table = keys_cli::load(&table_path).unwrap();
    let created = Utc::now();
    let lifetime = chrono::Duration::seconds(5);
    let (id, short) = keys_cli::create(
        &mut table,
        "short-lived",
        securechat_crds::v1alpha1::Tier::Developer,
        Some(lifetime),
        created,
    )
    .unwrap();
    keys_cli::save(&table_path, &table).unwrap();
    let c = &s.client;
    let chat = async || {
        c.post(s.url("/v1/chat/completions"))
            .bearer_auth(&short)
            .json(&chat_body("one two"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert!(
        wait_for(async || chat().await == 200).await,
        "the new key never worked"
    );
    assert_eq!(chat().await, 200);
    // Past its expiry it is refused (refusals count no usage).
    let left = (created + lifetime - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(200)).await;
    assert_eq!(chat().await, 401);

    let mut table = keys_cli::load(&table_path).unwrap();
    // Ours, and the fixture's expired key; not the revoked one.
    let pruned = keys_cli::prune(&mut table, Utc::now());
    assert_eq!(pruned.len(), 2, "{pruned:?}");
    assert!(pruned.contains(&id), "{pruned:?}");
    assert!(keys_cli::prune(&mut table, Utc::now()).is_empty());
    keys_cli::save(&table_path, &table).unwrap();
    let history = async || -> Value {
        c.get(s.url("/admin/keys/history"))
            .bearer_auth(&s.keys.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    assert!(
        wait_for(async || history().await["keys"][0]["id"] == id.as_str()).await,
        "the pruned key never appeared in the history"
    );
    let body = history().await;
    assert_eq!(body["keys"].as_array().unwrap().len(), 2, "{body}");
    // Newest first.
    let entry = &body["keys"][0];
    assert_eq!(entry["name"], "short-lived");
    assert_eq!(entry["tier"], "Developer");
    assert!(entry["createdAt"].is_string() && entry["expiredAt"].is_string());
    assert!(entry["lastUsedAt"].is_string(), "{entry}");
    assert_eq!(entry["usage"]["requests"], 2, "{entry}");
    assert_eq!(entry["usage"]["completionTokens"], 4, "{entry}");
    assert!(entry.get("secretHash").is_none());
    assert_eq!(body["usageScope"], "replica");
    // Gone from the live table.
    let keys: Value = c
        .get(s.url("/admin/keys"))
        .bearer_auth(&s.keys.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!keys.to_string().contains(&id));
    // A developer cannot read it.
    let resp = c
        .get(s.url("/admin/keys/history"))
        .bearer_auth(&s.keys.developer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn key_table_changes_are_hot_reloaded_and_bad_files_keep_the_last_good() {
    let s = server(RELAXED).await;
    let table_path = s.data().join("api-keys.json");
    // Mint a JWT from the developer key, then revoke the key on disk.
    let token: Value = s
        .client
        .post(s.url("/oauth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_secret": s.keys.developer}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = token["access_token"].as_str().unwrap().to_string();
    let mut table = keys_cli::load(&table_path).unwrap();
    keys_cli::revoke(&mut table, &s.keys.developer_id).unwrap();
    let (_, fresh) = keys_cli::create(
        &mut table,
        "fresh",
        securechat_crds::v1alpha1::Tier::Developer,
        None,
        Utc::now(),
    )
    .unwrap();
    keys_cli::save(&table_path, &table).unwrap();
    let c = &s.client;
    assert!(
        wait_for(async || c
            .get(s.url("/v1/models"))
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap()
            .status()
            == 200)
        .await,
        "new key never became valid"
    );
    let resp = c
        .get(s.url("/v1/models"))
        .bearer_auth(&s.keys.developer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Tokens minted from a revoked key die with it.
    let resp = c
        .get(s.url("/v1/models"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A corrupt table is refused; the last good one stays.
    let metrics_url = s.url("/metrics");
    let errors_before = reload_errors(c, &metrics_url, "api_keys").await;
    std::fs::write(&table_path, b"{ this is not json").unwrap();
    assert!(
        wait_for(async || reload_errors(c, &metrics_url, "api_keys").await > errors_before).await,
        "reload error not counted"
    );
    let resp = c
        .get(s.url("/v1/models"))
        .bearer_auth(&fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let s = server(RELAXED).await;
    assert_eq!(
        s.client
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = s
        .client
        .get(s.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    s.client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.admin)
        .json(&chat_body("one two"))
        .send()
        .await
        .unwrap();
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "securechat_http_requests_total{route=\"/v1/chat/completions\",method=\"POST\",status=\"200\"}",
        "securechat_http_request_duration_seconds_bucket",
        "securechat_tokens_generated_total 2",
        "securechat_time_to_first_token_seconds_count 1",
        "securechat_certificate_expiry_seconds",
        "securechat_signing_key_expiry_seconds{kid=",
        "securechat_api_key_expiry_seconds{key_id=",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
}

#[tokio::test]
async fn both_ports_speak_only_tls_1_3_by_default() {
    let s = server(RELAXED).await;
    let web = format!("https://localhost:{}/healthz", s.running.web_addr.port());
    assert_eq!(s.client.get(&web).send().await.unwrap().status(), 200);
    let tls12 = https::client_for(&s.ca_path(), &[&rustls::version::TLS12]);
    assert!(
        tls12.get(s.url("/healthz")).send().await.is_err(),
        "TLS 1.2 must be refused"
    );
    // Plain HTTP gets no answer.
    assert!(
        s.client
            .get(format!(
                "http://localhost:{}/healthz",
                s.running.api_addr.port()
            ))
            .send()
            .await
            .is_err()
    );
    // With minVersion 1.2 a 1.2 client connects.
    let s12 = server(&format!("{RELAXED}tls:\n  minVersion: \"1.2\"\n")).await;
    let tls12 = https::client_for(&s12.ca_path(), &[&rustls::version::TLS12]);
    assert_eq!(
        tls12
            .get(s12.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn certificate_and_signing_keys_are_hot_reloaded() {
    let s = server(RELAXED).await;
    let c = &s.client;
    let old_token: Value = c
        .post(s.url("/oauth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_secret": s.keys.admin}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_jwt = old_token["access_token"].as_str().unwrap().to_string();
    let old_kid = jsonwebtoken::decode_header(&old_jwt).unwrap().kid.unwrap();

    // Rotate: a new active key, the old one kept as Previous.
    let mut set = s.keyset();
    set.keys[0].state = securechat_crds::files::keyset::KeyState::Previous;
    let now = Utc::now();
    let mut fresh =
        securechat_server::dev::signing_keyset(now + chrono::Duration::seconds(1)).unwrap();
    fresh.keys[0].kid = "rotated1".into();
    set.keys.push(fresh.keys.remove(0));
    securechat_server::files::atomic::write_atomic(
        &s.data().join("signing-keys/keyset.json"),
        &serde_json::to_vec(&set).unwrap(),
        true,
    )
    .unwrap();
    let token_url = s.url("/oauth/token");
    let admin = s.keys.admin.clone();
    assert!(
        wait_for(async || {
            let t: Value = c
                .post(&token_url)
                .json(&json!({"grant_type": "client_credentials", "client_secret": admin}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            jsonwebtoken::decode_header(t["access_token"].as_str().unwrap())
                .unwrap()
                .kid
                .as_deref()
                == Some("rotated1")
        })
        .await,
        "the new key never started signing"
    );
    // The token from the previous key still verifies during the grace.
    let resp = c
        .get(s.url("/v1/models"))
        .bearer_auth(&old_jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let jwks: Value = c
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&"rotated1"),
        "{kids:?}"
    );

    // A new certificate from a new CA: new connections present it.
    let certs = securechat_server::dev::certificates(Utc::now()).unwrap();
    let tls = s.data().join("tls");
    let new_ca = s.data().join("new-ca.crt");
    std::fs::write(&new_ca, &certs.ca_cert).unwrap();
    securechat_server::files::atomic::write_atomic(
        &tls.join("tls.key"),
        certs.key.as_bytes(),
        true,
    )
    .unwrap();
    securechat_server::files::atomic::write_atomic(
        &tls.join("tls.crt"),
        certs.cert.as_bytes(),
        false,
    )
    .unwrap();
    let health = s.url("/healthz");
    assert!(
        wait_for(async || {
            // A fresh client per try: no pooled connection to the old cert.
            let client = https::client_for(&new_ca, &[&rustls::version::TLS13]);
            client
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await,
        "the new certificate was never served"
    );
    // A corrupt certificate is refused; the new one stays.
    let metrics_url = s.url("/metrics");
    let fresh_client = https::client_for(&new_ca, &[&rustls::version::TLS13]);
    let errors_before = reload_errors(&fresh_client, &metrics_url, "tls").await;
    std::fs::write(tls.join("tls.crt"), b"-----BEGIN CERTIFICATE-----\nnope\n").unwrap();
    assert!(
        wait_for(async || reload_errors(&fresh_client, &metrics_url, "tls").await > errors_before)
            .await
    );
    let client = https::client_for(&new_ca, &[&rustls::version::TLS13]);
    assert_eq!(client.get(&health).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn developers_see_their_own_usage_and_readonly_cannot() {
    let s = server(RELAXED).await;
    for _ in 0..2 {
        s.client
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(&s.keys.developer)
            .json(&chat_body("one two three"))
            .send()
            .await
            .unwrap();
    }
    let usage: Value = s
        .client
        .get(s.url("/v1/usage"))
        .bearer_auth(&s.keys.developer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["keyId"], s.keys.developer_id.as_str());
    assert_eq!(usage["usage"]["completionTokens"], 6);
    // Two chats and this request.
    assert_eq!(usage["usage"]["requests"], 3);
    let resp = s
        .client
        .get(s.url("/v1/usage"))
        .bearer_auth(&s.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn web_page_is_served_with_a_strict_policy_and_security_headers() {
    let s = server(RELAXED).await;
    let web = format!("https://localhost:{}", s.running.web_addr.port());
    let resp = s.client.get(format!("{web}/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert!(resp.headers().contains_key("strict-transport-security"));
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("/ui/app.js") && !html.contains("<script>"),
        "no inline script"
    );
    let js = s
        .client
        .get(format!("{web}/ui/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    let js = js.text().await.unwrap();
    assert!(js.contains("/v1/chat/completions") && !js.contains("innerHTML"));
    // API answers are never cached.
    let models = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(&s.keys.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(models.headers()["cache-control"], "no-store");
}

/// Deployed by the operator, the server answers to the SecureChatModel's
/// name (`servedModelName`), and still to the model file's own name.
#[tokio::test]
async fn the_served_model_name_is_the_model_id() {
    let s = server(&format!("{RELAXED}servedModelName: chatglm3-secure\n")).await;
    let models: Value = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(&s.keys.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "chatglm3-secure", "{models}");
    for name in ["chatglm3-secure", MODEL] {
        let mut body = chat_body("hi");
        body["model"] = json!(name);
        let resp = s
            .client
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(&s.keys.admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "model {name}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["model"], "chatglm3-secure");
    }
}

#[tokio::test]
async fn ratelimit_headers_report_a_token_budget_when_it_binds_first() {
    let s = server(
        "rateLimit:\n  requestsPerMinute: 1000\n\
         roles:\n  developer:\n    permissions: [Chat, Models, Usage]\n    tokensPerDay: 200\n",
    )
    .await;
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.developer)
        .json(&https::chat_body_with("hi", json!({"max_tokens": 50})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Prompt + max_tokens reserved from 200 a day leaves less, for its
    // limit, than 999 of 1000 requests a minute.
    assert_eq!(resp.headers()["ratelimit-limit"], "200");
    let remaining: u32 = resp.headers()["ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining <= 150, "{remaining}");
    // A call that spends no tokens reports the request limit.
    let resp = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(&s.keys.developer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["ratelimit-limit"], "1000");
    assert_eq!(resp.headers()["ratelimit-remaining"], "998");
}
