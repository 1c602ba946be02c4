//! The seed-compatible endpoints: POST /api/chat and
//! /api/admin/configuration, with the same error shape as the rest.

use reqwest::Method;
use securechat_test_support::https::TestServer;
use serde_json::json;

use super::{admin, json_bytes, raw, request};
use crate::{Body, Case, bearer};

pub fn cases(s: &TestServer) -> Vec<Case> {
    let a = admin(s);
    let seed = |name, headers: Vec<(&'static str, String)>, body, status, code| {
        request(name, Method::POST, "/api/chat", headers, body, status, code)
    };
    let json = |v: serde_json::Value| Some(Body::Json(v));
    vec![
        seed(
            "seed chat is served",
            a.clone(),
            json(json!({"message": "hi", "history": [["a", "b"]]})),
            200,
            None,
        ),
        seed(
            "seed chat without credentials",
            vec![],
            json(json!({"message": "hi"})),
            401,
            Some("missing_credentials"),
        ),
        seed(
            "seed chat with a suspended key",
            bearer(&s.keys.suspended),
            json(json!({"message": "hi"})),
            401,
            Some("key_suspended"),
        ),
        seed(
            "seed chat of malformed JSON",
            a.clone(),
            json_bytes("{\"message\": \"hi\""),
            400,
            Some("invalid_json"),
        ),
        seed(
            "seed chat without a message",
            a.clone(),
            json(json!({"history": []})),
            400,
            Some("invalid_request"),
        ),
        seed(
            "seed chat with a history entry of the wrong type",
            a.clone(),
            json(json!({"message": "hi", "history": [7]})),
            400,
            Some("invalid_request"),
        ),
        seed(
            "seed chat with a history triple",
            a.clone(),
            json(json!({"message": "hi", "history": [["a", "b", "c"]]})),
            400,
            Some("invalid_request"),
        ),
        seed(
            "seed chat with an unknown role in history",
            a.clone(),
            json(json!({"message": "hi", "history": [{"role": "root", "content": "x"}]})),
            400,
            Some("invalid_request"),
        ),
        seed(
            "seed chat temperature too high",
            a.clone(),
            json(json!({"message": "hi", "temperature": 9})),
            400,
            Some("invalid_value"),
        ),
        seed(
            "seed chat mixing a flat history with pairs",
            a.clone(),
            json(json!({"message": "hi", "history": ["q", ["a", "b"]]})),
            400,
            Some("invalid_value"),
        ),
        request(
            "seed secure-chat without credentials",
            Method::POST,
            "/api/secure-chat",
            vec![],
            json(json!({"message": "hi"})),
            401,
            Some("missing_credentials"),
        ),
        seed(
            "seed chat max_length zero",
            a.clone(),
            json(json!({"message": "hi", "max_length": 0})),
            400,
            Some("invalid_value"),
        ),
        seed(
            "seed chat max_length negative",
            a.clone(),
            json(json!({"message": "hi", "max_length": -5})),
            400,
            Some("invalid_request"),
        ),
        seed(
            "seed chat as text/plain",
            a.clone(),
            raw("text/plain", "message=hi"),
            415,
            Some("unsupported_media_type"),
        ),
        seed(
            "seed chat with a lone surrogate",
            a.clone(),
            json_bytes(r#"{"message": "\udfff"}"#),
            400,
            Some("invalid_json"),
        ),
        seed(
            "seed chat over the body limit",
            a.clone(),
            raw("application/json", vec![b' '; 2 * 1024 * 1024]),
            413,
            Some("payload_too_large"),
        ),
        request(
            "seed admin configuration out of range",
            Method::POST,
            "/api/admin/configuration",
            a.clone(),
            json(json!({"generation": {"temperature": 7}})),
            400,
            Some("invalid_request"),
        ),
        request(
            "seed admin configuration without credentials",
            Method::GET,
            "/api/admin/configuration",
            vec![],
            None,
            401,
            Some("missing_credentials"),
        ),
        Case {
            name: "seed chat with wrong type",
            method: Method::POST,
            path: "/api/chat",
            headers: a.clone(),
            body: Some(Body::Json(json!({"message": "hi", "max_length": "big"}))),
            status: 400,
            code: Some("invalid_request"),
            allow: None,
        },
        Case {
            name: "seed chat with unknown field",
            method: Method::POST,
            path: "/api/chat",
            headers: a.clone(),
            body: Some(Body::Json(json!({"message": "hi", "prompt": "x"}))),
            status: 400,
            code: Some("invalid_request"),
            allow: None,
        },
        Case {
            name: "seed chat with empty message",
            method: Method::POST,
            path: "/api/chat",
            headers: a.clone(),
            body: Some(Body::Json(json!({"message": " "}))),
            status: 400,
            code: Some("invalid_value"),
            allow: None,
        },
    ]
}
