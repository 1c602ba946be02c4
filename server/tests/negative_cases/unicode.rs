//! Unicode in bodies: text the model may see (NUL, bidi overrides, emoji,
//! escaped surrogate pairs) is served as is; what is not Unicode (lone
//! surrogates, invalid or overlong UTF-8) is invalid JSON.

use reqwest::Method;
use securechat_test_support::https::{MODEL, TestServer, chat_body};
use serde_json::json;

use super::{admin, chat_with, json_bytes, raw, request};
use crate::{Case, chat};

fn content_json(escaped: &str) -> String {
    format!(r#"{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "{escaped}"}}]}}"#)
}

/// A chat body whose content holds `bytes` between two letters.
fn with_bytes(bytes: &[u8]) -> Vec<u8> {
    let text = content_json("a#b");
    let (head, tail) = text.split_once('#').unwrap();
    [head.as_bytes(), bytes, tail.as_bytes()].concat()
}

pub fn cases(s: &TestServer) -> Vec<Case> {
    let a = admin(s);
    let chat_raw = |name, body, status, code| {
        request(
            name,
            Method::POST,
            "/v1/chat/completions",
            a.clone(),
            body,
            status,
            code,
        )
    };
    vec![
        chat(
            "NUL in content is served",
            a.clone(),
            chat_body("a\u{0}b"),
            200,
            None,
        ),
        chat(
            "right-to-left override in content is served",
            a.clone(),
            chat_body("abc \u{202E}cba"),
            200,
            None,
        ),
        chat(
            "emoji and ZWJ sequences are served",
            a.clone(),
            chat_body("🦀 👩‍👩‍👧"),
            200,
            None,
        ),
        chat_raw(
            "escaped surrogate pair is served",
            json_bytes(&content_json("\\ud83e\\udd80")),
            200,
            None,
        ),
        chat_raw(
            "lone high surrogate escape",
            json_bytes(&content_json("\\ud800")),
            400,
            Some("invalid_json"),
        ),
        chat_raw(
            "lone low surrogate escape",
            json_bytes(&content_json("x\\udc00y")),
            400,
            Some("invalid_json"),
        ),
        chat_raw(
            "invalid UTF-8 in a string",
            raw("application/json", with_bytes(&[0xFF])),
            400,
            Some("invalid_json"),
        ),
        chat_raw(
            "overlong UTF-8 encoding of '/'",
            raw("application/json", with_bytes(&[0xC0, 0xAF])),
            400,
            Some("invalid_json"),
        ),
        chat_raw(
            "raw control character in a string",
            json_bytes(&content_json("a\u{1}b")),
            400,
            Some("invalid_json"),
        ),
        chat(
            "emoji in a role",
            a.clone(),
            json!({"messages": [{"role": "us👤er", "content": "x"}]}),
            400,
            Some("invalid_request"),
        ),
        chat(
            "NUL in the model name",
            a.clone(),
            chat_with(json!({"model": format!("{MODEL}\u{0}")})),
            404,
            Some("model_not_found"),
        ),
        chat(
            "model name in full-width letters",
            a.clone(),
            chat_with(json!({"model": "ｔｅｓｔ-model"})),
            404,
            Some("model_not_found"),
        ),
    ]
}
