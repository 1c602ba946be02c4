//! The web chat page (the seed's Streamlit UI on port 8501): static files
//! compiled into the binary, served on both ports under a strict Content
//! Security Policy. The page calls the same authenticated API with the
//! user's own key or token; it has no privileges of its own.

use axum::http::HeaderValue;
use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    response
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", include_str!("web/index.html"))
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("web/app.js"))
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("web/style.css"))
}
