//! The outermost middleware: opens the request's [`Audit`] record, counts
//! the request in the metrics and adds the `RateLimit-*` headers. The
//! record itself (what is logged, and when) lives in [`crate::audit`].

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;

use crate::audit::Audit;
use crate::error::AuthFailure;
use crate::listener::ClientAddr;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::state::AppState;

/// Stores the matched route into the audit record; runs inside the router
/// (as a route layer) because only there is the route known.
pub async fn note_route(request: Request, next: Next) -> Response {
    if let (Some(audit), Some(path)) = (
        request.extensions().get::<Audit>(),
        request.extensions().get::<MatchedPath>(),
    ) {
        audit.route(path.as_str().to_string());
    }
    next.run(request).await
}

/// The outermost middleware: audit record, request metrics, RateLimit-*
/// headers.
pub async fn middleware(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
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
    request.extensions_mut().insert(audit.clone());
    let mut response = next.run(request).await;
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
