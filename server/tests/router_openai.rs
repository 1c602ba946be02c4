//! `routes::openai` through the router, in-process (no TLS, no sockets):
//! the model list, a completion's shape, usage and finish reason, streaming,
//! validation errors with the field they name, and one short completion by
//! the default model. server.rs and negative.rs cover the same endpoints
//! over TLS.

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use securechat_test_support::https::in_process::{InProcess, Reply};
use securechat_test_support::https::{
    self, CONTEXT, MODEL, RELAXED, add_keys, chat_body, chat_body_with, default_engine, start_on,
};
use serde_json::{Value, json};

async fn complete(app: &InProcess, key: &str, body: &Value) -> Reply {
    app.post_json("/v1/chat/completions", Some(key), body).await
}

#[tokio::test]
async fn models_lists_the_one_model_served() {
    let (s, app) = InProcess::start(RELAXED).await;
    let reply = app.get("/v1/models", Some(&s.keys.developer)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let model = &body["data"][0];
    assert_eq!(model["id"], MODEL);
    assert_eq!(model["object"], "model");
    assert_eq!(model["owned_by"], "securechat");
    assert_eq!(model["family"], "echo");
    assert_eq!(model["context_length"], CONTEXT);
}

#[tokio::test]
async fn a_served_name_is_listed_and_both_names_are_served() {
    let config = format!("servedModelName: team-chat\n{RELAXED}");
    let (s, app) = InProcess::start(&config).await;
    let reply = app.get("/v1/models", Some(&s.keys.admin)).await;
    assert_eq!(reply.json()["data"][0]["id"], "team-chat");
    for name in ["team-chat", MODEL] {
        let reply = complete(
            &app,
            &s.keys.admin,
            &chat_body_with("hi", json!({"model": name})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text);
        assert_eq!(reply.json()["model"], "team-chat");
    }
    let reply = complete(
        &app,
        &s.keys.admin,
        &chat_body_with("hi", json!({"model": "other"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.code().as_deref(), Some("model_not_found"));
}

#[tokio::test]
async fn a_completion_has_its_text_usage_and_finish_reason() {
    let (s, app) = InProcess::start(RELAXED).await;
    let reply = complete(&app, &s.keys.admin, &chat_body("one two three")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "one two three");
    assert_eq!(choice["finish_reason"], "stop");
    // The echo engine counts a word a token, plus one per message.
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["usage"]["total_tokens"], 7);
    // Cut at max_tokens: finish reason "length".
    let body = chat_body_with("one two three", json!({"max_tokens": 2}));
    let reply = complete(&app, &s.keys.admin, &body).await;
    let body = reply.json();
    assert_eq!(body["choices"][0]["message"]["content"], "one two ");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn a_stream_sends_chunks_usage_and_done() {
    let (s, app) = InProcess::start(RELAXED).await;
    let body = chat_body_with(
        "one two three",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let reply = complete(&app, &s.keys.admin, &body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply.headers[CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let chunks = https::sse_chunks(&reply.text);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text = https::sse_content(&chunks);
    assert_eq!(text, "one two three");
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 3);
}

#[tokio::test]
async fn invalid_requests_name_their_error_and_field() {
    let (s, app) = InProcess::start(RELAXED).await;
    let long_prompt = "word ".repeat(CONTEXT + 10);
    // (case, body, status, code, param)
    let table: [(&str, Value, StatusCode, &str, Option<&str>); 8] = [
        (
            "missing messages",
            json!({"model": MODEL}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
        ),
        (
            "empty messages",
            json!({"model": MODEL, "messages": []}),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            Some("messages"),
        ),
        (
            "temperature too high",
            chat_body_with("x", json!({"temperature": 9.0})),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            Some("temperature"),
        ),
        (
            "top_p zero",
            chat_body_with("x", json!({"top_p": 0.0})),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            Some("top_p"),
        ),
        (
            "n of 2",
            chat_body_with("x", json!({"n": 2})),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            Some("n"),
        ),
        (
            "an image part",
            json!({"messages": [{"role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            StatusCode::BAD_REQUEST,
            "invalid_value",
            Some("messages"),
        ),
        (
            "unknown model",
            chat_body_with("x", json!({"model": "gpt-4"})),
            StatusCode::NOT_FOUND,
            "model_not_found",
            None,
        ),
        (
            "prompt longer than the context",
            chat_body(&long_prompt),
            StatusCode::BAD_REQUEST,
            "context_length_exceeded",
            None,
        ),
    ];
    for (case, body, status, code, param) in table {
        let reply = complete(&app, &s.keys.admin, &body).await;
        assert_eq!(reply.status, status, "{case}: {}", reply.text);
        let error = &reply.json()["error"];
        assert_eq!(error["code"], code, "{case}");
        assert!(error["message"].is_string(), "{case}");
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{case}");
        }
    }
    // Nothing rejected reached the engine.
    assert_eq!(s.engine.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_default_model_answers_a_short_completion() {
    let dir = tempfile::tempdir().unwrap();
    let config = securechat_server::dev::ensure(dir.path()).unwrap();
    std::fs::write(&config, RELAXED).unwrap();
    let keys = add_keys(dir.path());
    let running = start_on(dir.path(), default_engine(), None).await;
    let app = InProcess::new(running.state.clone());
    let body = json!({"messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4, "temperature": 0.0});
    let reply = complete(&app, &keys.admin, &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "an empty answer");
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=4).contains(&completion), "{completion} tokens");
    let finish = body["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(["stop", "length"].contains(&finish), "{finish}");
}
