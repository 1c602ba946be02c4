//! Probes and metrics. Unauthenticated, as probes and scrapers expect; they
//! reveal no secret (key ids and expiry times only).

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use chrono::Utc;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::metrics::{KeyIdLabels, KidLabels};
use crate::state::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when a signing key can sign and the engine answers.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let now = Utc::now();
    let signing = state.signing.load();
    let kid = signing.active_kid(now).ok_or_else(|| {
        ApiError::NotReady("no active signing key inside its validity window".into())
    })?;
    Ok(Json(json!({
        "status": "ready",
        "model": state.engine.info().id,
        "activeKid": kid,
        "queueDepth": state.engine.queue_depth(),
    })))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = Utc::now();
    let secs = |t: chrono::DateTime<Utc>| (t - now).num_milliseconds() as f64 / 1000.0;
    let m = &state.metrics;
    if let Some(t) = *state
        .cert_not_after
        .lock()
        .unwrap_or_else(|e| e.into_inner())
    {
        m.cert_expiry.set(secs(t));
    }
    m.signing_key_expiry.clear();
    for (kid, not_after) in &state.signing.load().expiries {
        m.signing_key_expiry
            .get_or_create(&KidLabels { kid: kid.clone() })
            .set(secs(*not_after));
    }
    m.api_key_expiry.clear();
    for key in &state.api_keys.load().keys {
        if let Some(expires) = key.expires_at {
            m.api_key_expiry
                .get_or_create(&KeyIdLabels {
                    key_id: key.id.clone(),
                    name: key.name.clone(),
                })
                .set(secs(expires));
        }
    }
    m.queue_depth.set(state.engine.queue_depth() as i64);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}
