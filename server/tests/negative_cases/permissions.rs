//! Tiers: a key whose tier lacks the permission gets 403, on the OpenAI,
//! admin and seed endpoints alike.

use reqwest::Method;
use securechat_test_support::https::TestServer;
use serde_json::json;

use crate::{Body, Case, bearer};

pub fn cases(s: &TestServer) -> Vec<Case> {
    vec![
        Case {
            name: "readonly lists models",
            method: Method::GET,
            path: "/v1/models",
            headers: bearer(&s.keys.readonly),
            body: None,
            status: 403,
            code: Some("permission_denied"),
            allow: None,
        },
        Case {
            name: "developer reads admin keys",
            method: Method::GET,
            path: "/admin/keys",
            headers: bearer(&s.keys.developer),
            body: None,
            status: 403,
            code: Some("permission_denied"),
            allow: None,
        },
        Case {
            name: "readonly patches config",
            method: Method::PATCH,
            path: "/admin/config",
            headers: bearer(&s.keys.readonly),
            body: Some(Body::Json(json!({}))),
            status: 403,
            code: Some("permission_denied"),
            allow: None,
        },
        Case {
            name: "developer uses seed admin path",
            method: Method::POST,
            path: "/api/admin/configuration",
            headers: bearer(&s.keys.developer),
            body: Some(Body::Json(json!({}))),
            status: 403,
            code: Some("permission_denied"),
            allow: None,
        },
    ]
}
