//! Chat completion requests that are not valid: JSON, fields and their
//! ranges, the model, the context length, the content type, the size.

use reqwest::Method;
use securechat_test_support::https::{self, MODEL, TestServer, chat_body};
use serde_json::json;

use crate::{Body, Case, bearer, chat};

pub fn cases(s: &TestServer) -> Vec<Case> {
    let ok = chat_body("hello");
    let admin = bearer(&s.keys.admin);
    let big = vec![b'a'; 2 * 1024 * 1024];
    let long_prompt = "word ".repeat(https::CONTEXT + 10);
    let json_ct = "application/json";
    vec![
        Case {
            name: "malformed JSON",
            method: Method::POST,
            path: "/v1/chat/completions",
            headers: admin.clone(),
            body: Some(Body::Raw(json_ct, b"{\"messages\": [".to_vec())),
            status: 400,
            code: Some("invalid_json"),
            allow: None,
        },
        chat(
            "messages of the wrong type",
            admin.clone(),
            json!({"model": MODEL, "messages": "hi"}),
            400,
            Some("invalid_request"),
        ),
        chat(
            "missing messages",
            admin.clone(),
            json!({"model": MODEL}),
            400,
            Some("invalid_request"),
        ),
        chat(
            "empty messages",
            admin.clone(),
            json!({"model": MODEL, "messages": []}),
            400,
            Some("invalid_value"),
        ),
        chat(
            "unknown role in message",
            admin.clone(),
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            400,
            Some("invalid_request"),
        ),
        chat(
            "temperature too high",
            admin.clone(),
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 5}),
            400,
            Some("invalid_value"),
        ),
        chat(
            "temperature as string",
            admin.clone(),
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
            400,
            Some("invalid_request"),
        ),
        chat(
            "top_p zero",
            admin.clone(),
            json!({"messages": [{"role": "user", "content": "x"}], "top_p": 0}),
            400,
            Some("invalid_value"),
        ),
        chat(
            "max_tokens zero",
            admin.clone(),
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            400,
            Some("invalid_value"),
        ),
        chat(
            "max_tokens negative",
            admin.clone(),
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            400,
            Some("invalid_request"),
        ),
        chat(
            "n of 2",
            admin.clone(),
            json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
            400,
            Some("invalid_value"),
        ),
        chat(
            "image content part",
            admin.clone(),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            400,
            Some("invalid_value"),
        ),
        chat(
            "unknown model",
            admin.clone(),
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}),
            404,
            Some("model_not_found"),
        ),
        chat(
            "prompt longer than the context",
            admin.clone(),
            chat_body(&long_prompt),
            400,
            Some("context_length_exceeded"),
        ),
        Case {
            name: "no content type",
            method: Method::POST,
            path: "/v1/chat/completions",
            headers: admin.clone(),
            body: Some(Body::Raw("", ok.to_string().into_bytes())),
            status: 415,
            code: Some("unsupported_media_type"),
            allow: None,
        },
        Case {
            name: "text/plain body",
            method: Method::POST,
            path: "/v1/chat/completions",
            headers: admin.clone(),
            body: Some(Body::Raw("text/plain", ok.to_string().into_bytes())),
            status: 415,
            code: Some("unsupported_media_type"),
            allow: None,
        },
        Case {
            name: "oversized body",
            method: Method::POST,
            path: "/v1/chat/completions",
            headers: admin.clone(),
            body: Some(Body::Raw(json_ct, big)),
            status: 413,
            code: Some("payload_too_large"),
            allow: None,
        },
    ]
}
