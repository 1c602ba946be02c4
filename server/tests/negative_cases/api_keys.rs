//! API keys on the chat endpoint: none, malformed, unknown, with the wrong
//! secret, suspended, revoked or expired, and two Authorization headers.

use reqwest::Method;
use securechat_test_support::https::{TestServer, chat_body};

use crate::{Case, bearer, chat};

pub fn cases(s: &TestServer) -> Vec<Case> {
    let ok = chat_body("hello");
    vec![
        chat(
            "no credentials",
            vec![],
            ok.clone(),
            401,
            Some("missing_credentials"),
        ),
        chat(
            "basic scheme",
            vec![("authorization", "Basic YTpi".into())],
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "bearer without credential",
            vec![("authorization", "Bearer".into())],
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "bearer with spaces only",
            vec![("authorization", "Bearer    ".into())],
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "garbage credential",
            bearer("hello"),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "key prefix only",
            bearer("sk-sc-"),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "key with short secret",
            bearer(&format!("sk-sc-{}-abc", s.keys.admin_id)),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "unknown key id",
            bearer(&format!("sk-sc-zzzzzzzzzzzz-{}", "A".repeat(43))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "wrong secret",
            bearer(&format!("sk-sc-{}-{}", s.keys.admin_id, "A".repeat(43))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "suspended key",
            bearer(&s.keys.suspended),
            ok.clone(),
            401,
            Some("key_suspended"),
        ),
        chat(
            "revoked key",
            bearer(&s.keys.revoked),
            ok.clone(),
            401,
            Some("key_revoked"),
        ),
        chat(
            "expired key",
            bearer(&s.keys.expired),
            ok.clone(),
            401,
            Some("key_expired"),
        ),
        chat(
            "two authorization headers",
            vec![
                ("authorization", format!("Bearer {}", s.keys.admin)),
                ("authorization", format!("Bearer {}", s.keys.admin)),
            ],
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        Case {
            name: "admin keys without credentials",
            method: Method::GET,
            path: "/admin/keys",
            headers: vec![],
            body: None,
            status: 401,
            code: Some("missing_credentials"),
            allow: None,
        },
    ]
}
