//! Methods (405 with the route's `Allow`), paths no route has, foreign
//! origins (CORS), and headers that are large but legal.

use reqwest::Method;
use securechat_test_support::https::{TestServer, chat_body};

use super::{admin, leak, request};
use crate::{Body, Case};

fn not_allowed(
    s: &TestServer,
    name: &'static str,
    method: Method,
    path: &'static str,
    allow: &'static str,
) -> Case {
    Case {
        allow: Some(allow),
        ..request(
            name,
            method,
            path,
            admin(s),
            None,
            405,
            Some("method_not_allowed"),
        )
    }
}

fn not_found(s: &TestServer, name: &'static str, method: Method, path: &'static str) -> Case {
    let body = (method == Method::POST).then(|| Body::Json(chat_body("x")));
    request(name, method, path, admin(s), body, 404, Some("not_found"))
}

pub fn cases(s: &TestServer) -> Vec<Case> {
    let custom = |name: &str| Method::from_bytes(name.as_bytes()).unwrap();
    vec![
        not_allowed(
            s,
            "DELETE admin keys",
            Method::DELETE,
            "/admin/keys",
            "GET,HEAD",
        ),
        // The token endpoint's own error shape (RFC 6749), even for a 405.
        Case {
            code: Some("invalid_request"),
            ..not_allowed(s, "PUT token", Method::PUT, "/oauth/token", "POST")
        },
        not_allowed(s, "POST models", Method::POST, "/v1/models", "GET,HEAD"),
        not_allowed(s, "POST healthz", Method::POST, "/healthz", "GET,HEAD"),
        not_allowed(s, "GET seed chat", Method::GET, "/api/chat", "POST"),
        not_allowed(
            s,
            "DELETE seed admin configuration",
            Method::DELETE,
            "/api/admin/configuration",
            "GET,HEAD,PATCH,POST",
        ),
        not_allowed(
            s,
            "made-up method",
            custom("BREW"),
            "/v1/chat/completions",
            "POST",
        ),
        not_allowed(s, "TRACE metrics", Method::TRACE, "/metrics", "GET,HEAD"),
        // A HEAD answer has no body to carry the code.
        Case {
            code: None,
            ..not_allowed(
                s,
                "HEAD chat completions",
                Method::HEAD,
                "/v1/chat/completions",
                "POST",
            )
        },
        not_found(s, "trailing slash", Method::POST, "/v1/chat/completions/"),
        not_found(s, "double slash", Method::POST, "//v1/chat/completions"),
        not_found(s, "encoded NUL", Method::POST, "/v1/chat/completions%00"),
        not_found(
            s,
            "dot segment with an encoded slash",
            Method::GET,
            "/v1/..%2fadmin/keys",
        ),
        not_found(s, "upper-case path", Method::POST, "/V1/CHAT/COMPLETIONS"),
        not_found(
            s,
            "web UI script on the API port",
            Method::GET,
            "/ui/app.js",
        ),
        not_found(s, "web login on the API port", Method::POST, "/web/login"),
        not_found(
            s,
            "8 KiB path",
            Method::GET,
            leak(format!("/{}", "a".repeat(8192))),
        ),
        not_found(s, "unicode path", Method::GET, "/v1/模型"),
        not_found(s, "metrics with a trailing slash", Method::GET, "/metrics/"),
        request(
            "64 KiB header is served",
            Method::POST,
            "/v1/chat/completions",
            {
                let mut h = admin(s);
                h.push(("x-padding", "p".repeat(64 * 1024)));
                h
            },
            Some(Body::Json(chat_body("x"))),
            200,
            None,
        ),
        Case {
            name: "unknown route",
            method: Method::GET,
            path: "/v2/everything",
            headers: admin(s),
            body: None,
            status: 404,
            code: Some("not_found"),
            allow: None,
        },
        Case {
            name: "wrong method",
            method: Method::GET,
            path: "/v1/chat/completions",
            headers: admin(s),
            body: None,
            status: 405,
            code: Some("method_not_allowed"),
            allow: Some("POST"),
        },
        Case {
            name: "foreign CORS origin",
            method: Method::POST,
            path: "/v1/chat/completions",
            headers: vec![
                ("authorization", format!("Bearer {}", s.keys.admin)),
                ("origin", "https://evil.example".into()),
            ],
            body: Some(Body::Json(chat_body("hello"))),
            status: 403,
            code: Some("origin_not_allowed"),
            allow: None,
        },
        Case {
            name: "foreign CORS preflight",
            method: Method::OPTIONS,
            path: "/v1/chat/completions",
            headers: vec![
                ("origin", "https://evil.example".into()),
                ("access-control-request-method", "POST".into()),
            ],
            body: None,
            status: 403,
            code: Some("origin_not_allowed"),
            allow: None,
        },
    ]
}
