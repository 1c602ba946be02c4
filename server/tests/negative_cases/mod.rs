//! The bad-input tables, one per family of input, each run by its own test
//! in negative.rs: API keys, JWTs, credential headers, tier permissions,
//! chat requests, bodies, routes and origins, unicode, the seed-compatible
//! endpoints and the token endpoint. Each case names its status and its
//! endpoint's error code; a few good inputs that sit right next to bad ones
//! (the body limit exactly, a lower-case scheme) are in the tables too,
//! expecting 200.

pub mod api_keys;
pub mod bodies;
pub mod credentials;
pub mod permissions;
pub mod routing;
pub mod seed;
pub mod token_endpoint;
pub mod tokens;
pub mod unicode;
pub mod validation;

use reqwest::Method;
use securechat_test_support::https::TestServer;
use serde_json::Value;

use crate::{Body, Case, Forge};

/// Every table.
pub async fn all(s: &TestServer, forge: &Forge) -> Vec<Case> {
    let mut cases = api_keys::cases(s);
    cases.extend(tokens::cases(s, forge).await);
    cases.extend(credentials::cases(s, forge));
    cases.extend(permissions::cases(s));
    cases.extend(validation::cases(s));
    cases.extend(bodies::cases(s));
    cases.extend(routing::cases(s));
    cases.extend(unicode::cases(s));
    cases.extend(seed::cases(s));
    cases.extend(token_endpoint::cases(s));
    cases
}

/// `Authorization: Bearer` with the admin key.
fn admin(s: &TestServer) -> Vec<(&'static str, String)> {
    crate::bearer(&s.keys.admin)
}

/// Any request.
fn request(
    name: &'static str,
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Option<Body>,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        path,
        headers,
        body,
        status,
        code,
        allow: None,
    }
}

/// A body sent as bytes with a content type ("" for none).
fn raw(content_type: &'static str, bytes: impl Into<Vec<u8>>) -> Option<Body> {
    Some(Body::Raw(content_type, bytes.into()))
}

fn json_bytes(text: &str) -> Option<Body> {
    raw("application/json", text.as_bytes().to_vec())
}

/// A chat completion of one user message with `extra` merged in.
fn chat_with(extra: Value) -> Value {
    securechat_test_support::https::chat_body_with("x", extra)
}

/// A path built at run time, kept for the table's lifetime.
fn leak(path: String) -> &'static str {
    Box::leak(path.into_boxed_str())
}
