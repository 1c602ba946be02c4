//! Credentials: schemes, sizes and bytes an Authorization header should not
//! hold, credentials in the wrong place, and tokens whose role or key the
//! server must re-check.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use securechat_test_support::https::{TestServer, chat_body};
use serde_json::json;

use super::{admin, leak, request};
use crate::{Body, Case, Forge, bearer, chat};

pub fn cases(s: &TestServer, forge: &Forge) -> Vec<Case> {
    let ok = chat_body("hello");
    let good_claims = forge.claims();
    let developer_token = forge.with(|c| {
        c["sub"] = json!(format!("key:{}", s.keys.developer_id));
        c["role"] = json!("Developer");
    });
    // A token claiming Admin for a key whose tier is Developer: the key's
    // tier applies.
    let inflated_token = forge.with(|c| {
        c["sub"] = json!(format!("key:{}", s.keys.developer_id));
    });
    let readonly_role_token = forge.with(|c| c["role"] = json!("ReadOnly"));
    let not_json_header = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode("not json"),
        URL_SAFE_NO_PAD.encode(good_claims.to_string()),
        URL_SAFE_NO_PAD.encode("sig")
    );
    vec![
        chat(
            "lower-case bearer scheme is accepted",
            vec![("authorization", format!("bearer {}", s.keys.admin))],
            ok.clone(),
            200,
            None,
        ),
        chat(
            "Token scheme",
            vec![("authorization", format!("Token {}", s.keys.admin))],
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "tab between scheme and credential",
            vec![("authorization", format!("Bearer\t{}", s.keys.admin))],
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "credential over 8 KiB",
            bearer(&"A".repeat(9000)),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "non-ASCII bytes in the credential",
            bearer("sk-sc-é-ü"),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "two credentials in one header",
            bearer(&format!("{} {}", s.keys.admin, s.keys.admin)),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "two authorization headers, one good one garbage",
            vec![
                ("authorization", format!("Bearer {}", s.keys.admin)),
                ("authorization", "Bearer garbage".into()),
            ],
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        request(
            "API key in the query string",
            Method::POST,
            leak(format!("/v1/chat/completions?api_key={}", s.keys.admin)),
            vec![],
            Some(Body::Json(ok.clone())),
            401,
            Some("missing_credentials"),
        ),
        chat(
            "session cookie on the API port",
            vec![(
                "cookie",
                "__Host-securechat-session=abcdefabcdefabcdefabcdef".into(),
            )],
            ok.clone(),
            401,
            Some("missing_credentials"),
        ),
        chat(
            "JWT of four parts",
            bearer(&format!("{}.x", forge.sign(&good_claims))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "JWT whose header is not JSON",
            bearer(&not_json_header),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "JWT of empty parts",
            bearer(".."),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        request(
            "developer token reads admin keys",
            Method::GET,
            "/admin/keys",
            bearer(&developer_token),
            None,
            403,
            Some("permission_denied"),
        ),
        request(
            "Admin role claimed for a Developer key",
            Method::GET,
            "/admin/keys",
            bearer(&inflated_token),
            None,
            403,
            Some("permission_denied"),
        ),
        request(
            "ReadOnly token lists models",
            Method::GET,
            "/v1/models",
            bearer(&readonly_role_token),
            None,
            403,
            Some("permission_denied"),
        ),
        request(
            "developer patches config",
            Method::PATCH,
            "/admin/config",
            bearer(&s.keys.developer),
            Some(Body::Json(json!({"rateLimit": {"requestsPerMinute": 1}}))),
            403,
            Some("permission_denied"),
        ),
        request(
            "usage without credentials",
            Method::GET,
            "/v1/usage",
            vec![],
            None,
            401,
            Some("missing_credentials"),
        ),
        request(
            "revoked key reads usage",
            Method::GET,
            "/v1/usage",
            bearer(&s.keys.revoked),
            None,
            401,
            Some("key_revoked"),
        ),
        request(
            "foreign Origin null",
            Method::POST,
            "/v1/chat/completions",
            {
                let mut h = admin(s);
                h.push(("origin", "null".into()));
                h
            },
            Some(Body::Json(ok.clone())),
            403,
            Some("origin_not_allowed"),
        ),
    ]
}
