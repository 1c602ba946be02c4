//! The outermost part of every request's middleware (`routes::common`):
//! opens the request's [`Audit`] record, counts the request in the metrics
//! and adds the `RateLimit-*` headers. The record itself (what is logged,
//! and when) lives in [`crate::audit`].

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::response::Response;
use chrono::Utc;

use crate::audit::Audit;
use crate::error::AuthFailure;
use crate::listener::ClientAddr;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::AppState;

/// A request's open audit record, from [`open`] to [`close`].
pub struct Opened {
    audit: Audit,
    method: String,
    start: Instant,
}

/// Opens the request's audit record and puts a handle into it. The route
/// is known here: the middleware runs inside the router (`Router::layer`),
/// which has put the [`MatchedPath`] into the request already.
pub fn open(state: &AppState, request: &mut Request) -> Opened {
    let start = Instant::now();
    let runtime = state.live_config();
    let method = request.method().to_string();
    let audit = Audit::start(
        runtime.config.audit.enabled,
        runtime.config.audit.include_prompts,
        &state.placement,
        Utc::now(),
        request
            .extensions()
            .get::<ClientAddr>()
            .map(|a| a.0.ip().to_string()),
        method.clone(),
    );
    if let Some(path) = request.extensions().get::<MatchedPath>() {
        audit.route(path.as_str().to_string());
    }
    request.extensions_mut().insert(audit.clone());
    Opened {
        audit,
        method,
        start,
    }
}

/// Completes the record with the response, counts the request in the
/// metrics and adds the `RateLimit-*` headers.
pub fn close(state: &AppState, opened: Opened, mut response: Response) -> Response {
    let Opened {
        audit,
        method,
        start,
    } = opened;
    let status = response.status();
    let elapsed = start.elapsed();
    if let Some(failure) = response.extensions().get::<AuthFailure>() {
        audit.auth_failure(*failure);
    }
    let (route, rate) = audit.finish(status.as_u16(), elapsed);
    if let Some(rate) = rate {
        let h = response.headers_mut();
        h.insert("ratelimit-limit", HeaderValue::from(rate.limit));
        h.insert("ratelimit-remaining", HeaderValue::from(rate.remaining));
        h.insert("ratelimit-reset", HeaderValue::from(rate.reset_secs));
    }
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method,
            status: status.as_u16(),
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels { route })
        .observe(elapsed.as_secs_f64());
    response
}
