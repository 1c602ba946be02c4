//! The token endpoint (/oauth/token): grant types, client credentials in
//! the body and in Basic, key states, bodies and scopes; every answer in
//! RFC 6749 §5.2's shape.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use securechat_test_support::https::TestServer;
use serde_json::json;

use crate::{Body, Case, basic_auth, bearer, form, token_case};

pub fn cases(s: &TestServer) -> Vec<Case> {
    let json_ct = "application/json";
    vec![
        token_case(
            "token: wrong grant type",
            vec![],
            form(&format!(
                "grant_type=password&client_secret={}",
                s.keys.admin
            )),
            400,
            "unsupported_grant_type",
        ),
        token_case(
            "token: authorization_code grant",
            vec![],
            form("grant_type=authorization_code&code=abc"),
            400,
            "unsupported_grant_type",
        ),
        token_case(
            "token: bad secret",
            vec![],
            Body::Json(
                json!({"grant_type": "client_credentials", "client_secret": "sk-sc-abc-def"}),
            ),
            401,
            "invalid_client",
        ),
        token_case(
            "token: wrong secret for a real key id",
            vec![],
            form(&format!(
                "grant_type=client_credentials&client_secret=sk-sc-{}-{}",
                s.keys.admin_id,
                "A".repeat(43)
            )),
            401,
            "invalid_client",
        ),
        token_case(
            "token: empty secret",
            vec![],
            form("grant_type=client_credentials&client_secret="),
            401,
            "invalid_client",
        ),
        token_case(
            "token: suspended key",
            vec![],
            Body::Json(
                json!({"grant_type": "client_credentials", "client_secret": s.keys.suspended}),
            ),
            400,
            "invalid_grant",
        ),
        token_case(
            "token: revoked key",
            vec![],
            form(&format!(
                "grant_type=client_credentials&client_secret={}",
                s.keys.revoked
            )),
            400,
            "invalid_grant",
        ),
        token_case(
            "token: expired key",
            vec![],
            form(&format!(
                "grant_type=client_credentials&client_secret={}",
                s.keys.expired
            )),
            400,
            "invalid_grant",
        ),
        token_case(
            "token: client_id of another key",
            vec![],
            Body::Json(
                json!({"grant_type": "client_credentials", "client_id": s.keys.developer_id, "client_secret": s.keys.admin}),
            ),
            401,
            "invalid_client",
        ),
        token_case(
            "token: no secret",
            vec![],
            Body::Json(json!({"grant_type": "client_credentials"})),
            401,
            "invalid_client",
        ),
        token_case(
            "token: client_id without secret",
            vec![],
            form(&format!(
                "grant_type=client_credentials&client_id={}",
                s.keys.admin_id
            )),
            401,
            "invalid_client",
        ),
        token_case(
            "token: missing grant type",
            vec![],
            form("client_secret=x"),
            400,
            "invalid_request",
        ),
        token_case(
            "token: grant type given twice",
            vec![],
            form(&format!(
                "grant_type=client_credentials&grant_type=client_credentials&client_secret={}",
                s.keys.admin
            )),
            400,
            "invalid_request",
        ),
        token_case(
            "token: malformed JSON",
            vec![],
            Body::Raw(json_ct, b"{\"grant_type\": ".to_vec()),
            400,
            "invalid_request",
        ),
        token_case(
            "token: grant type of the wrong JSON type",
            vec![],
            Body::Json(json!({"grant_type": 7, "client_secret": s.keys.admin})),
            400,
            "invalid_request",
        ),
        token_case(
            "token: text/plain body",
            vec![],
            Body::Raw("text/plain", b"grant_type=client_credentials".to_vec()),
            400,
            "invalid_request",
        ),
        token_case(
            "token: oversized body",
            vec![],
            Body::Raw(
                "application/x-www-form-urlencoded",
                vec![b'a'; 2 * 1024 * 1024],
            ),
            400,
            "invalid_request",
        ),
        token_case(
            "token: Basic and body credentials at once",
            vec![("authorization", basic_auth(&s.keys.admin_id, &s.keys.admin))],
            form(&format!(
                "grant_type=client_credentials&client_secret={}",
                s.keys.admin
            )),
            400,
            "invalid_request",
        ),
        token_case(
            "token: Basic with a wrong secret",
            vec![(
                "authorization",
                basic_auth(
                    &s.keys.admin_id,
                    &format!("sk-sc-{}-{}", s.keys.admin_id, "B".repeat(43)),
                ),
            )],
            form("grant_type=client_credentials"),
            401,
            "invalid_client",
        ),
        token_case(
            "token: Basic that is not base64",
            vec![("authorization", "Basic !!!notbase64".into())],
            form("grant_type=client_credentials"),
            401,
            "invalid_client",
        ),
        token_case(
            "token: Basic without a colon",
            vec![(
                "authorization",
                format!("Basic {}", STANDARD.encode("justanid")),
            )],
            form("grant_type=client_credentials"),
            401,
            "invalid_client",
        ),
        token_case(
            "token: bearer scheme instead of client authentication",
            bearer(&s.keys.admin),
            form("grant_type=client_credentials"),
            401,
            "invalid_client",
        ),
        token_case(
            "token: scope above the key's tier",
            vec![],
            form(&format!(
                "grant_type=client_credentials&scope=Admin&client_secret={}",
                s.keys.developer
            )),
            400,
            "invalid_scope",
        ),
        token_case(
            "token: unknown scope",
            vec![],
            form(&format!(
                "grant_type=client_credentials&scope=root&client_secret={}",
                s.keys.admin
            )),
            400,
            "invalid_scope",
        ),
        token_case(
            "token: two scopes",
            vec![],
            form(&format!(
                "grant_type=client_credentials&scope=ReadOnly%20Developer&client_secret={}",
                s.keys.admin
            )),
            400,
            "invalid_scope",
        ),
    ]
}
