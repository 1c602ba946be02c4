//! What the server refuses, over real TLS (README: "Security: what is
//! refused and why"): prompts longer than the tier allows, prompts beyond
//! the token quota, sensitive numbers however they are written, and admin
//! patches that would lock everyone out; and a patch keeps the numbers
//! the admin wrote.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use securechat_test_support::https::{RELAXED, TestServer, chat_body, post_chat, server};

async fn chat(s: &TestServer, key: &str, body: &Value) -> (u16, Value) {
    let resp = post_chat(s, key, body).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn patch_config(s: &TestServer, patch: &Value) -> (u16, Value) {
    let resp = s
        .client
        .patch(s.url("/admin/config"))
        .bearer_auth(&s.keys.admin)
        .json(patch)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn get_config(s: &TestServer) -> Value {
    s.client
        .get(s.url("/admin/config"))
        .bearer_auth(&s.keys.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `n` words: the echo engine counts one token per word, plus one.
fn words(n: usize) -> String {
    vec!["word"; n].join(" ")
}

#[tokio::test]
async fn a_prompt_longer_than_the_tier_allows_is_refused_before_the_model() {
    let s = server(&format!(
        "{RELAXED}roles:\n  readOnly:\n    permissions: [Chat]\n    maxPromptTokens: 100\n"
    ))
    .await;
    let (status, body) = chat(&s, &s.keys.readonly, &chat_body(&words(150))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "prompt_too_long", "{body}");
    assert_eq!(body["error"]["param"], "messages", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("151 tokens") && message.contains("100"),
        "{message}"
    );
    assert_eq!(
        s.engine.calls.load(Ordering::SeqCst),
        0,
        "the model never saw it"
    );

    // Within the limit, and for a tier without one, the same prompt passes.
    let (status, body) = chat(&s, &s.keys.readonly, &chat_body(&words(99))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = chat(&s, &s.keys.developer, &chat_body(&words(150))).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn prompt_tokens_count_against_the_token_quota() {
    // 300 tokens a minute; each request below is a 201-token prompt and a
    // one-token answer.
    let s = server(&format!(
        "{RELAXED}roles:\n  readOnly:\n    permissions: [Chat]\n    tokensPerMinute: 300\n"
    ))
    .await;
    let mut body = chat_body(&words(200));
    body["max_tokens"] = json!(1);
    let (status, first) = chat(&s, &s.keys.readonly, &body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["usage"]["prompt_tokens"], 201);
    assert_eq!(first["usage"]["completion_tokens"], 1);
    let (status, second) = chat(&s, &s.keys.readonly, &body).await;
    assert_eq!(status, 429, "the prompt was free: {second}");
    assert_eq!(second["error"]["code"], "token_quota_exceeded");
    assert_eq!(s.engine.calls.load(Ordering::SeqCst), 1);
}

/// What Chinese input methods and copy-paste produce, as the user typed it.
const UNICODE_CASES: [&str; 10] = [
    "卡号４１１１ １１１１ １１１１ １１１１。",
    "身份证１１０１０５１９４９１２３１００２Ｘ。",
    "手机１３８１２３４５６７８。",
    "邮箱ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ。",
    "card 4111\u{200B}1111\u{200B}1111\u{200B}1111 ok",
    "mail jo\u{200D}hn@example.com ok",
    "card 4111\u{00A0}1111\u{3000}1111\u{202F}1111 ok",
    "card 4111.1111.1111.1111 or 4111/1111/1111/1111 or 4111_1111_1111_1111",
    "ssn 123\u{2013}45\u{2013}6789 ok",
    "بطاقة ٤١١١ ١١١١ ١١١١ ١١١١ ok",
];

/// No digit of any script, and no at sign, is left.
fn clean(text: &str) -> bool {
    !text.contains(|c: char| c.is_numeric() || c == '@' || c == '＠')
}

#[tokio::test]
async fn unicode_forms_of_sensitive_input_are_redacted_before_the_model_sees_them() {
    let s = server(RELAXED).await;
    for text in UNICODE_CASES {
        let (status, body) = chat(&s, &s.keys.admin, &chat_body(text)).await;
        assert_eq!(status, 200, "{body}");
        let seen = s.engine.last_messages.lock().unwrap()[0].content.clone();
        assert!(
            seen.contains("[FILTERED]") && clean(&seen),
            "{text:?} reached the model as {seen:?}"
        );
    }
}

#[tokio::test]
async fn unicode_forms_split_across_stream_chunks_are_redacted() {
    // Input filtering off, so the numbers reach the echo engine and come
    // back three characters per event through the output filter.
    let s = server(&format!("{RELAXED}sensitiveData:\n  input: false\n")).await;
    for text in UNICODE_CASES {
        let mut body = chat_body(text);
        body["stream"] = json!(true);
        let resp = post_chat(&s, &s.keys.developer, &body).await;
        assert_eq!(resp.status(), 200);
        let sse = resp.text().await.unwrap();
        let content: String = sse
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert!(
            content.contains("[FILTERED]") && clean(&content),
            "{text:?} came back as {content:?}"
        );
    }
}

#[tokio::test]
async fn admin_patches_that_would_lock_everyone_out_are_refused() {
    let s = server(RELAXED).await;
    let on_disk = std::fs::read_to_string(s.data().join("config.yaml")).unwrap();
    for (patch, field) in [
        (
            json!({"roles": {"admin": {"permissions": ["Chat", "Models"]}}}),
            "roles.admin.permissions",
        ),
        (
            json!({"roles": {"admin": {"permissions": []}}}),
            "roles.admin.permissions",
        ),
        (
            json!({"limits": {"maxAuthFailuresPerMinute": 0}}),
            "limits.maxAuthFailuresPerMinute",
        ),
        (
            json!({"limits": {"maxAuthFailuresPerMinute": 1}}),
            "limits.maxAuthFailuresPerMinute",
        ),
        (
            json!({"rateLimit": {"requestsPerMinute": 0}}),
            "rateLimit.requestsPerMinute",
        ),
        (
            json!({"rateLimit": {"tokensPerMinute": 0}}),
            "rateLimit.tokensPerMinute",
        ),
        (
            json!({"roles": {
                "readOnly": {"requestsPerMinute": 0},
                "developer": {"requestsPerMinute": 0},
                "admin": {"requestsPerMinute": 0},
            }}),
            "roles.readOnly.requestsPerMinute",
        ),
        (
            json!({"roles": {"developer": {"tokensPerMinute": 0}}}),
            "roles.developer.tokensPerMinute",
        ),
        (
            json!({"roles": {"readOnly": {"maxTokensPerRequest": 0}}}),
            "roles.readOnly.maxTokensPerRequest",
        ),
        (
            json!({"roles": {"readOnly": {"maxPromptTokens": 1}}}),
            "roles.readOnly.maxPromptTokens",
        ),
    ] {
        let (status, body) = patch_config(&s, &patch).await;
        assert_eq!(status, 400, "{patch} was accepted: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{patch}: {message} does not name {field}"
        );
    }
    // Nothing of it took effect, in memory or on disk: the admin still is one.
    let config = get_config(&s).await;
    assert_eq!(
        config["roles"]["admin"]["permissions"]
            .as_array()
            .unwrap()
            .len(),
        4,
        "{config}"
    );
    assert_eq!(config["limits"]["maxAuthFailuresPerMinute"], 100000);
    assert_eq!(
        std::fs::read_to_string(s.data().join("config.yaml")).unwrap(),
        on_disk
    );
    // A patch that keeps everyone in still applies.
    let (status, body) =
        patch_config(&s, &json!({"limits": {"maxAuthFailuresPerMinute": 3}})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_patch_keeps_the_sampling_numbers_as_written() {
    let s = server(&format!(
        "{RELAXED}generation:\n  temperature: 0.7\n  topP: 0.9\n"
    ))
    .await;
    // Any patch rewrites the whole config.
    let (status, body) = patch_config(&s, &json!({"rateLimit": {"requestsPerMinute": 5000}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["persisted"], true, "{body}");
    assert_eq!(
        body["config"]["generation"]["temperature"],
        json!(0.7),
        "{body}"
    );
    let yaml = std::fs::read_to_string(s.data().join("config.yaml")).unwrap();
    assert!(
        yaml.contains("temperature: 0.7\n") && yaml.contains("topP: 0.9\n"),
        "{yaml}"
    );
    let config = get_config(&s).await;
    assert_eq!(config["generation"]["temperature"], json!(0.7), "{config}");
    assert_eq!(config["generation"]["topP"], json!(0.9), "{config}");
    // And a patch of the value itself.
    let (status, body) = patch_config(&s, &json!({"generation": {"temperature": 0.3}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["config"]["generation"]["temperature"],
        json!(0.3),
        "{body}"
    );
    let yaml = std::fs::read_to_string(s.data().join("config.yaml")).unwrap();
    assert!(yaml.contains("temperature: 0.3\n"), "{yaml}");
}
