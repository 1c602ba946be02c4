//! Table-driven negative tests over real TLS: every bad input gets its
//! status and error code.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

use common::{MODEL, RELAXED, TestServer, chat_body, server};

/// A request to send and what must come back.
struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Option<Body>,
    status: u16,
    code: Option<&'static str>,
}

enum Body {
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

fn bearer(credential: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {credential}"))]
}

fn chat(
    name: &'static str,
    auth: Vec<(&'static str, String)>,
    body: Value,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        name,
        method: Method::POST,
        path: "/v1/chat/completions",
        headers: auth,
        body: Some(Body::Json(body)),
        status,
        code,
    }
}

/// A token-endpoint case: `code` is the RFC 6749 §5.2 `error` string.
fn token_case(
    name: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Body,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method: Method::POST,
        path: "/oauth/token",
        headers,
        body: Some(body),
        status,
        code: Some(code),
    }
}

fn form(text: &str) -> Body {
    Body::Raw(
        "application/x-www-form-urlencoded",
        text.as_bytes().to_vec(),
    )
}

fn basic_auth(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// Signs arbitrary claims with the server's active key (a token only the
/// server could have made, except for what the test changes).
struct Forge {
    kid: String,
    pem: String,
    iss: String,
    aud: String,
    sub: String,
}

impl Forge {
    fn claims(&self) -> Value {
        let now = Utc::now().timestamp();
        json!({"iss": self.iss, "aud": self.aud, "sub": self.sub, "role": "Admin",
               "iat": now, "nbf": now, "exp": now + 600, "jti": "t"})
    }
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        self.sign_with(header, claims)
    }
    fn sign_with(&self, header: Header, claims: &Value) -> String {
        let key = EncodingKey::from_ed_pem(self.pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
    fn with(&self, f: impl FnOnce(&mut Value)) -> String {
        let mut c = self.claims();
        f(&mut c);
        self.sign(&c)
    }
}

fn unsigned(header: Value, claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{h}.{c}.")
}

async fn run(s: &TestServer, case: &Case) -> (u16, Value) {
    let mut req = s.client.request(case.method.clone(), s.url(case.path));
    for (k, v) in &case.headers {
        req = req.header(*k, v);
    }
    match &case.body {
        Some(Body::Json(v)) => req = req.json(v),
        Some(Body::Raw(ct, bytes)) => {
            if !ct.is_empty() {
                req = req.header("content-type", *ct);
            }
            req = req.body(bytes.clone());
        }
        None => {}
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let status = resp.status().as_u16();
    let oauth = case.path == "/oauth/token";
    // The token endpoint challenges for client authentication (Basic,
    // RFC 6749 §5.2); the API for bearer credentials.
    let scheme = if oauth { "Basic" } else { "Bearer" };
    if status == 401 {
        assert!(
            resp.headers()
                .get("www-authenticate")
                .is_some_and(|v| v.to_str().unwrap().starts_with(scheme)),
            "{}: 401 without WWW-Authenticate: {scheme}",
            case.name
        );
    }
    if oauth {
        assert_eq!(
            resp.headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok()),
            Some("no-store"),
            "{}: token responses must not be cached",
            case.name
        );
    }
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// The error code and whether the body has the shape its endpoint
/// promises: RFC 6749 §5.2 at /oauth/token, OpenAI elsewhere.
fn error_code<'b>(case: &Case, body: &'b Value) -> (Option<&'b str>, bool) {
    if case.path == "/oauth/token" {
        let shaped = body["error"].is_string()
            && body["error_description"].is_string()
            && body.as_object().is_some_and(|o| o.len() == 2);
        (body["error"].as_str(), shaped)
    } else {
        (
            body["error"]["code"].as_str(),
            body["error"]["message"].is_string(),
        )
    }
}

#[tokio::test]
async fn every_bad_input_gets_its_status_and_code() {
    let s = server(RELAXED).await;
    let keyset = s.keyset();
    let active = keyset.active().unwrap().clone();
    let forge = Forge {
        kid: active.kid.clone(),
        pem: active.private_key_pem.clone(),
        iss: "https://localhost:8000".into(),
        aud: "securechat".into(),
        sub: format!("key:{}", s.keys.admin_id),
    };
    // Another Ed25519 key claiming the server's kid.
    let foreign = securechat_server::dev::signing_keyset(Utc::now()).unwrap();
    let impostor = Forge {
        pem: foreign.keys[0].private_key_pem.clone(),
        ..forge_clone(&forge)
    };
    let now = Utc::now().timestamp();
    let good_claims = forge.claims();
    // alg confusion: HS256 keyed with the public key as published in JWKS.
    let jwks: Value = s
        .client
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public_x = jwks["keys"][0]["x"].as_str().unwrap().to_string();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(active.kid.clone());
    let confused = jsonwebtoken::encode(
        &hs,
        &good_claims,
        &EncodingKey::from_secret(public_x.as_bytes()),
    )
    .unwrap();
    let mut tampered = forge.sign(&good_claims);
    {
        let parts: Vec<&str> = tampered.split('.').collect();
        let mut claims = good_claims.clone();
        claims["sub"] = json!("key:someoneelse");
        tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        );
    }
    let mut no_kid = Header::new(Algorithm::EdDSA);
    no_kid.kid = None;

    let ok = chat_body("hello");
    let admin = bearer(&s.keys.admin);
    let big = vec![b'a'; 2 * 1024 * 1024];
    let long_prompt = "word ".repeat(common::CONTEXT + 10);
    let json_ct = "application/json";

    let cases = vec![
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
        chat(
            "forged signature (foreign key, same kid)",
            bearer(&impostor.sign(&good_claims)),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "expired token",
            bearer(&forge.with(|c| {
                c["exp"] = json!(now - 60);
                c["iat"] = json!(now - 700);
                c["nbf"] = json!(now - 700);
            })),
            ok.clone(),
            401,
            Some("token_expired"),
        ),
        chat(
            "token not yet valid",
            bearer(&forge.with(|c| c["nbf"] = json!(now + 60))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "token issued in the future",
            bearer(&forge.with(|c| c["iat"] = json!(now + 60))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "wrong issuer",
            bearer(&forge.with(|c| c["iss"] = json!("https://evil.example"))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "wrong audience",
            bearer(&forge.with(|c| c["aud"] = json!("other"))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "missing sub",
            bearer(&forge.with(|c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "missing exp",
            bearer(&forge.with(|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "unknown role",
            bearer(&forge.with(|c| c["role"] = json!("root"))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "token for a key not in the table",
            bearer(&forge.with(|c| c["sub"] = json!("key:nosuchkey"))),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "alg none",
            bearer(&unsigned(
                json!({"alg": "none", "kid": active.kid}),
                &good_claims,
            )),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "alg confusion HS256 with public key",
            bearer(&confused),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "header alg differs from key alg",
            bearer(&{
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some(active.kid.clone());
                unsigned(serde_json::to_value(&h).unwrap(), &good_claims) + "sig"
            }),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "unknown kid",
            bearer(&{
                let mut h = Header::new(Algorithm::EdDSA);
                h.kid = Some("nokid".into());
                forge.sign_with(h, &good_claims)
            }),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "no kid",
            bearer(&forge.sign_with(no_kid, &good_claims)),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "tampered payload",
            bearer(&tampered),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        chat(
            "two-part token",
            bearer("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0"),
            ok.clone(),
            401,
            Some("invalid_api_key"),
        ),
        Case {
            name: "readonly lists models",
            method: Method::GET,
            path: "/v1/models",
            headers: bearer(&s.keys.readonly),
            body: None,
            status: 403,
            code: Some("permission_denied"),
        },
        Case {
            name: "developer reads admin keys",
            method: Method::GET,
            path: "/admin/keys",
            headers: bearer(&s.keys.developer),
            body: None,
            status: 403,
            code: Some("permission_denied"),
        },
        Case {
            name: "readonly patches config",
            method: Method::PATCH,
            path: "/admin/config",
            headers: bearer(&s.keys.readonly),
            body: Some(Body::Json(json!({}))),
            status: 403,
            code: Some("permission_denied"),
        },
        Case {
            name: "developer uses seed admin path",
            method: Method::POST,
            path: "/api/admin/configuration",
            headers: bearer(&s.keys.developer),
            body: Some(Body::Json(json!({}))),
            status: 403,
            code: Some("permission_denied"),
        },
        Case {
            name: "malformed JSON",
            method: Method::POST,
            path: "/v1/chat/completions",
            headers: admin.clone(),
            body: Some(Body::Raw(json_ct, b"{\"messages\": [".to_vec())),
            status: 400,
            code: Some("invalid_json"),
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
        },
        Case {
            name: "text/plain body",
            method: Method::POST,
            path: "/v1/chat/completions",
            headers: admin.clone(),
            body: Some(Body::Raw("text/plain", ok.to_string().into_bytes())),
            status: 415,
            code: Some("unsupported_media_type"),
        },
        Case {
            name: "oversized body",
            method: Method::POST,
            path: "/v1/chat/completions",
            headers: admin.clone(),
            body: Some(Body::Raw(json_ct, big)),
            status: 413,
            code: Some("payload_too_large"),
        },
        Case {
            name: "unknown route",
            method: Method::GET,
            path: "/v2/everything",
            headers: admin.clone(),
            body: None,
            status: 404,
            code: Some("not_found"),
        },
        Case {
            name: "wrong method",
            method: Method::GET,
            path: "/v1/chat/completions",
            headers: admin.clone(),
            body: None,
            status: 405,
            code: Some("method_not_allowed"),
        },
        Case {
            name: "foreign CORS origin",
            method: Method::POST,
            path: "/v1/chat/completions",
            headers: vec![
                ("authorization", format!("Bearer {}", s.keys.admin)),
                ("origin", "https://evil.example".into()),
            ],
            body: Some(Body::Json(ok.clone())),
            status: 403,
            code: Some("origin_not_allowed"),
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
        },
        Case {
            name: "seed chat with wrong type",
            method: Method::POST,
            path: "/api/chat",
            headers: admin.clone(),
            body: Some(Body::Json(json!({"message": "hi", "max_length": "big"}))),
            status: 400,
            code: Some("invalid_request"),
        },
        Case {
            name: "seed chat with unknown field",
            method: Method::POST,
            path: "/api/chat",
            headers: admin.clone(),
            body: Some(Body::Json(json!({"message": "hi", "prompt": "x"}))),
            status: 400,
            code: Some("invalid_request"),
        },
        Case {
            name: "seed chat with empty message",
            method: Method::POST,
            path: "/api/chat",
            headers: admin.clone(),
            body: Some(Body::Json(json!({"message": " "}))),
            status: 400,
            code: Some("invalid_value"),
        },
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
        Case {
            name: "admin keys without credentials",
            method: Method::GET,
            path: "/admin/keys",
            headers: vec![],
            body: None,
            status: 401,
            code: Some("missing_credentials"),
        },
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let (status, body) = run(&s, case).await;
        let (code, shaped) = error_code(case, &body);
        if status != case.status || (case.code.is_some() && code != case.code) {
            failures.push(format!(
                "{}: got {status} {code:?}, want {} {:?} ({body})",
                case.name, case.status, case.code
            ));
        }
        if status >= 400 && !shaped {
            failures.push(format!(
                "{}: not an error body of its endpoint's shape: {body}",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Every rejected credential was counted by reason.
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in [
        "missing",
        "malformed",
        "wrong_secret",
        "key_suspended",
        "key_expired",
        "invalid_token",
        "unknown_kid",
        "token_expired",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "no auth failure metric for {reason}"
        );
    }
}

fn forge_clone(f: &Forge) -> Forge {
    Forge {
        kid: f.kid.clone(),
        pem: f.pem.clone(),
        iss: f.iss.clone(),
        aud: f.aud.clone(),
        sub: f.sub.clone(),
    }
}

#[tokio::test]
async fn a_token_within_the_leeway_is_accepted() {
    let s = server(RELAXED).await;
    let active = s.keyset().active().unwrap().clone();
    let forge = Forge {
        kid: active.kid.clone(),
        pem: active.private_key_pem.clone(),
        iss: "https://localhost:8000".into(),
        aud: "securechat".into(),
        sub: format!("key:{}", s.keys.admin_id),
    };
    let now = Utc::now().timestamp();
    // Expired 2 s ago: inside the 5 s leeway.
    let token = forge.with(|c| {
        c["exp"] = json!(now - 2);
        c["iat"] = json!(now - 600);
        c["nbf"] = json!(now - 600);
    });
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(token)
        .json(&chat_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
