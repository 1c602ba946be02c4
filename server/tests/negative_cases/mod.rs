//! The rest of the bad-input table, by kind of input: credentials, bodies,
//! headers, methods, paths, unicode and the seed-compatible endpoints.
//! Each case names its status and its endpoint's error code; a few good
//! inputs that sit right next to bad ones (the body limit exactly, a
//! lower-case scheme) are in the table too, expecting 200.

mod bodies;
mod credentials;
mod routing;
mod seed;
mod unicode;

use reqwest::Method;
use securechat_test_support::https::TestServer;
use serde_json::Value;

use crate::{Body, Case, Forge};

pub fn all(s: &TestServer, forge: &Forge) -> Vec<Case> {
    let mut cases = credentials::cases(s, forge);
    cases.extend(bodies::cases(s));
    cases.extend(routing::cases(s));
    cases.extend(unicode::cases(s));
    cases.extend(seed::cases(s));
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
    let mut body = securechat_test_support::https::chat_body("x");
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// A path built at run time, kept for the table's lifetime.
fn leak(path: String) -> &'static str {
    Box::leak(path.into_boxed_str())
}
