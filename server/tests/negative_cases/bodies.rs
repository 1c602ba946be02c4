//! Bodies: framing, types, sampling ranges, sizes, content types and
//! encodings, and admin patches that must not be applied.

use reqwest::Method;
use securechat_test_support::https::{TestServer, chat_body};
use serde_json::json;

use super::{admin, chat_with, json_bytes, raw, request};
use crate::{Body, Case, chat};

/// The configured body limit (`limits.maxBodyBytes` default).
const LIMIT: usize = 1024 * 1024;

/// A valid chat body padded with whitespace to exactly `len` bytes.
fn padded(len: usize) -> Vec<u8> {
    let mut body = chat_body("pad").to_string().into_bytes();
    let closing = body.pop().unwrap();
    body.resize(len - 1, b' ');
    body.push(closing);
    body
}

/// `depth` nested arrays inside an otherwise valid request.
fn nested(depth: usize) -> String {
    let inner = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    format!(r#"{{"messages": [{{"role": "user", "content": "x"}}], "extra": {inner}}}"#)
}

pub fn cases(s: &TestServer) -> Vec<Case> {
    let a = admin(s);
    let post = |name, path, body, status, code| {
        request(name, Method::POST, path, a.clone(), body, status, code)
    };
    let chat_raw =
        |name, body, status, code| post(name, "/v1/chat/completions", body, status, code);
    let ok_text = chat_body("hello").to_string();
    let patch = |name, body, status, code| {
        request(
            name,
            Method::PATCH,
            "/admin/config",
            a.clone(),
            body,
            status,
            code,
        )
    };
    vec![
        chat_raw("empty body", json_bytes(""), 400, Some("invalid_json")),
        chat_raw(
            "JSON null",
            json_bytes("null"),
            400,
            Some("invalid_request"),
        ),
        chat_raw("JSON array", json_bytes("[]"), 400, Some("invalid_request")),
        chat_raw(
            "JSON string",
            json_bytes("\"hi\""),
            400,
            Some("invalid_request"),
        ),
        chat_raw(
            "trailing garbage after the object",
            json_bytes(&format!("{ok_text}xyz")),
            400,
            Some("invalid_json"),
        ),
        chat_raw(
            "byte order mark before the object",
            raw("application/json", {
                let mut b = vec![0xEF, 0xBB, 0xBF];
                b.extend_from_slice(ok_text.as_bytes());
                b
            }),
            400,
            Some("invalid_json"),
        ),
        chat_raw(
            "messages given twice",
            json_bytes(
                r#"{"messages": [{"role": "user", "content": "a"}], "messages": [{"role": "system", "content": "b"}]}"#,
            ),
            400,
            Some("invalid_request"),
        ),
        chat_raw(
            "single quotes",
            json_bytes("{'messages': []}"),
            400,
            Some("invalid_json"),
        ),
        // An unknown field is skipped without recursion, however deep.
        chat_raw(
            "deeply nested JSON in an ignored field is skipped",
            json_bytes(&nested(10_000)),
            200,
            None,
        ),
        // Where it is parsed, the parser's depth limit refuses it before
        // the stack can overflow.
        chat_raw(
            "deeply nested JSON in content (10,000 levels)",
            json_bytes(&format!(
                r#"{{"messages": [{{"role": "user", "content": {}1{}}}]}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )),
            400,
            Some("invalid_json"),
        ),
        chat(
            "message without content",
            a.clone(),
            json!({"messages": [{"role": "user"}]}),
            400,
            Some("invalid_request"),
        ),
        chat(
            "message without role",
            a.clone(),
            json!({"messages": [{"content": "x"}]}),
            400,
            Some("invalid_request"),
        ),
        chat(
            "null content",
            a.clone(),
            json!({"messages": [{"role": "user", "content": null}]}),
            400,
            Some("invalid_request"),
        ),
        chat(
            "message that is a string",
            a.clone(),
            json!({"messages": ["hello"]}),
            400,
            Some("invalid_request"),
        ),
        chat(
            "text part without text",
            a.clone(),
            json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
            400,
            Some("invalid_value"),
        ),
        chat(
            "model of the wrong type",
            a.clone(),
            chat_with(json!({"model": 7})),
            400,
            Some("invalid_request"),
        ),
        chat(
            "empty model name",
            a.clone(),
            chat_with(json!({"model": ""})),
            404,
            Some("model_not_found"),
        ),
        chat(
            "temperature negative",
            a.clone(),
            chat_with(json!({"temperature": -0.1})),
            400,
            Some("invalid_value"),
        ),
        chat(
            "temperature beyond f32",
            a.clone(),
            chat_with(json!({"temperature": 1e40})),
            400,
            Some("invalid_value"),
        ),
        chat(
            "top_p above 1",
            a.clone(),
            chat_with(json!({"top_p": 1.5})),
            400,
            Some("invalid_value"),
        ),
        chat(
            "top_p negative",
            a.clone(),
            chat_with(json!({"top_p": -1})),
            400,
            Some("invalid_value"),
        ),
        chat(
            "max_tokens beyond u32",
            a.clone(),
            chat_with(json!({"max_tokens": 4_294_967_296u64})),
            400,
            Some("invalid_request"),
        ),
        chat(
            "max_tokens fractional",
            a.clone(),
            chat_with(json!({"max_tokens": 1.5})),
            400,
            Some("invalid_request"),
        ),
        chat(
            "max_completion_tokens zero",
            a.clone(),
            chat_with(json!({"max_completion_tokens": 0})),
            400,
            Some("invalid_value"),
        ),
        chat(
            "five stop sequences",
            a.clone(),
            chat_with(json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            Some("invalid_value"),
        ),
        chat(
            "empty stop sequence",
            a.clone(),
            chat_with(json!({"stop": ""})),
            400,
            Some("invalid_value"),
        ),
        chat(
            "stop of the wrong type",
            a.clone(),
            chat_with(json!({"stop": 5})),
            400,
            Some("invalid_request"),
        ),
        chat(
            "stream as a string",
            a.clone(),
            chat_with(json!({"stream": "yes"})),
            400,
            Some("invalid_request"),
        ),
        chat(
            "negative seed",
            a.clone(),
            chat_with(json!({"seed": -1})),
            400,
            Some("invalid_request"),
        ),
        chat(
            "n of 0",
            a.clone(),
            chat_with(json!({"n": 0})),
            400,
            Some("invalid_value"),
        ),
        chat_raw(
            "body exactly at the limit is served",
            raw("application/json", padded(LIMIT)),
            200,
            None,
        ),
        chat_raw(
            "body one byte over the limit",
            raw("application/json", padded(LIMIT + 1)),
            413,
            Some("payload_too_large"),
        ),
        chat_raw(
            "form body",
            raw("application/x-www-form-urlencoded", "messages=hi"),
            415,
            Some("unsupported_media_type"),
        ),
        chat_raw(
            "multipart body",
            raw("multipart/form-data; boundary=x", ok_text.clone()),
            415,
            Some("unsupported_media_type"),
        ),
        chat_raw(
            "application/jsonp",
            raw("application/jsonp", ok_text.clone()),
            415,
            Some("unsupported_media_type"),
        ),
        chat_raw(
            "JSON with a charset parameter is served",
            raw("application/json; charset=utf-8", ok_text.clone()),
            200,
            None,
        ),
        chat_raw(
            "upper-case content type is served",
            raw("APPLICATION/JSON", ok_text.clone()),
            200,
            None,
        ),
        request(
            "two content types",
            Method::POST,
            "/v1/chat/completions",
            {
                let mut h = a.clone();
                h.push(("content-type", "application/json".into()));
                h.push(("content-type", "text/plain".into()));
                h
            },
            raw("", ok_text.clone()),
            415,
            Some("unsupported_media_type"),
        ),
        request(
            "gzip content encoding",
            Method::POST,
            "/v1/chat/completions",
            {
                let mut h = a.clone();
                h.push(("content-encoding", "gzip".into()));
                h
            },
            json_bytes(&ok_text),
            415,
            Some("unsupported_content_encoding"),
        ),
        request(
            "identity content encoding is served",
            Method::POST,
            "/v1/chat/completions",
            {
                let mut h = a.clone();
                h.push(("content-encoding", "identity".into()));
                h
            },
            json_bytes(&ok_text),
            200,
            None,
        ),
        patch(
            "admin patch out of range",
            Some(Body::Json(json!({"rateLimit": {"requestsPerMinute": 0}}))),
            400,
            Some("invalid_request"),
        ),
        patch(
            "admin patch with an unknown field",
            Some(Body::Json(json!({"bogus": true}))),
            400,
            Some("invalid_request"),
        ),
        patch(
            "admin patch that is an array",
            Some(Body::Json(json!([1]))),
            400,
            Some("invalid_request"),
        ),
        patch(
            "admin patch of malformed JSON",
            json_bytes("{\"limits\": "),
            400,
            Some("invalid_json"),
        ),
        patch(
            "admin patch nested 10,000 deep",
            json_bytes(&format!(
                "{}1{}",
                "{\"a\":".repeat(10_000),
                "}".repeat(10_000)
            )),
            400,
            Some("invalid_json"),
        ),
        patch(
            "admin patch with a body timeout of zero",
            Some(Body::Json(json!({"limits": {"bodyReadTimeout": "0s"}}))),
            400,
            Some("invalid_request"),
        ),
    ]
}
