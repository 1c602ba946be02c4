//! The server's router called in-process with `tower::ServiceExt::oneshot`:
//! no TLS and no sockets, so a test of one extractor or handler runs in
//! milliseconds and can choose the peer address each request comes from
//! (the brute-force guard counts failures per address, which over the
//! loopback TLS tests is always 127.0.0.1). The TLS tests check the same
//! routes over the wire.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use securechat_server::listener::ClientAddr;
use securechat_server::state::AppState;
use serde_json::Value;
use tower::ServiceExt;

use super::TestServer;

/// The peer of every request that does not name one.
pub const PEER: &str = "192.0.2.1:40000";

/// `securechat_server::app(state)`, called one request at a time.
pub struct InProcess {
    app: axum::Router,
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as text (an SSE stream in full).
    pub text: String,
}

impl Reply {
    /// The body as JSON; Null when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The OpenAI-shaped error code, when the body has one.
    pub fn code(&self) -> Option<String> {
        self.json()["error"]["code"].as_str().map(str::to_string)
    }
}

impl InProcess {
    pub fn new(state: AppState) -> Self {
        Self {
            app: securechat_server::app(state),
        }
    }

    /// A test server with `config` (see [`super::server`]), and its router
    /// on the same state.
    pub async fn start(config: &str) -> (TestServer, Self) {
        let s = super::server(config).await;
        let app = Self::new(s.running.state.clone());
        (s, app)
    }

    /// `GET path`, with `bearer` when given.
    pub async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        self.send(request(Method::GET, path, bearer, None)).await
    }

    /// `POST path` of `body` as JSON, with `bearer` when given.
    pub async fn post_json(&self, path: &str, bearer: Option<&str>, body: &Value) -> Reply {
        self.send(request(Method::POST, path, bearer, Some(body)))
            .await
    }

    /// Sends `request` from [`PEER`].
    pub async fn send(&self, request: Request<Body>) -> Reply {
        self.send_from(PEER.parse().expect("PEER is an address"), request)
            .await
    }

    /// Sends `request` as the TLS listener would hand it over from `peer`.
    pub async fn send_from(&self, peer: SocketAddr, mut request: Request<Body>) -> Reply {
        request.extensions_mut().insert(ClientAddr(peer));
        let response = self
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router's error type is Infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body is read to its end")
            .to_bytes();
        Reply {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}

/// A request to `path` with `Authorization: Bearer <bearer>` when given,
/// and `body` as JSON when given.
pub fn request(
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(credential) = bearer {
        builder = builder.header(AUTHORIZATION, format!("Bearer {credential}"));
    }
    let body = match body {
        Some(json) => {
            builder = builder.header(CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    builder.body(body).expect("a valid request")
}
