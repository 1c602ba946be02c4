//! Probes and metrics. Unauthenticated, as probes and scrapers expect; they
//! reveal no secret (key ids and expiry times only).

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use chrono::Utc;
use securechat_crds::files::api_keys::ApiKeyState;
use securechat_crds::files::keyset::KeyState;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::metrics::{KeyIdLabels, KeyLabels, KidLabels, SchedulerGauges, SpiffeLabels};
use crate::state::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when a signing key can sign and the engine answers. The shared
/// store's state is reported, not required: under FailClosed only the
/// limited endpoints refuse while it is down, and a replica taken out of
/// the Service would not bring it back.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let now = Utc::now();
    let signing = state.signing.load();
    let kid = signing.active_kid(now).ok_or_else(|| {
        ApiError::NotReady("no active signing key inside its validity window".into())
    })?;
    let mut body = json!({
        "status": "ready",
        "model": state.model_id(),
        "activeKid": kid,
        "queueDepth": state.engine.queue_depth(),
    });
    if let Some(store) = &state.store {
        body["sharedState"] = json!(store.probe().await);
    }
    Ok(Json(body))
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
    for key in &state.signing.load().expiries {
        let phase = match key.phase {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Previous => "previous",
        };
        m.signing_key_expiry
            .get_or_create(&KidLabels {
                kid: key.kid.clone(),
                phase: phase.into(),
            })
            .set(secs(key.not_after));
    }
    let table = state.api_keys.load();
    m.api_key_expiry.clear();
    for key in &table.keys {
        // A revoked key can never be used again; its expiry is no reason
        // to page anyone.
        if let Some(expires) = key.expires_at
            && key.state != ApiKeyState::Revoked
        {
            m.api_key_expiry
                .get_or_create(&KeyIdLabels {
                    key_id: key.id.clone(),
                    name: key.name.clone(),
                    tier: key.tier.as_str().into(),
                })
                .set(secs(expires));
        }
    }
    m.client_certificate_expiry.clear();
    {
        let mut certs = state
            .client_cert_not_after
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // An expired certificate can no longer connect: its series ends.
        certs.retain(|_, not_after| *not_after > now);
        for (spiffe_id, not_after) in certs.iter() {
            m.client_certificate_expiry
                .get_or_create(&SpiffeLabels {
                    spiffe_id: spiffe_id.clone(),
                })
                .set(secs(*not_after));
        }
    }
    m.api_key_last_used.clear();
    let usage = state.usage.lock().unwrap_or_else(|e| e.into_inner());
    for key in &table.keys {
        // This process's own record, or what the table's writer recorded
        // (another replica, or this server before a restart).
        let seen = usage.get(&key.id).and_then(|u| u.last_used_at);
        if let Some(last) = seen.max(key.last_used_at) {
            m.api_key_last_used
                .get_or_create(&KeyLabels {
                    key_id: key.id.clone(),
                })
                .set(last.timestamp_millis() as f64 / 1000.0);
        }
    }
    drop(usage);
    m.queue_depth.set(state.engine.queue_depth() as i64);
    let stats = state.engine.stats();
    let s = &m.scheduler;
    s.requests_waiting.set(stats.waiting as i64);
    s.sequences_running.set(stats.running as i64);
    s.kv_cache_usage.set(stats.kv_cache_usage);
    SchedulerGauges::catch_up(&s.prefix_cache_hits, stats.prefix_cache_hits);
    SchedulerGauges::catch_up(&s.prefix_cache_queries, stats.prefix_cache_queries);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}
