//! The relay's HTTP side, for Alertmanager's `webhook_configs`:
//!
//! - `POST /robots/{name}`: one notification (webhook payload version 4) to
//!   the robot named `name`. 200 when it was delivered; 400 for a body that
//!   is not a version-4 notification; 404 for a robot the relay was not
//!   given; 502 when the robot could not be reached or refused the message,
//!   so that Alertmanager retries. Errors are JSON: `{"error": CODE,
//!   "message": TEXT}`.
//! - `GET /healthz`: 200 while the process serves.
//!
//! One robot per URL, so each of a receiver's webhook_configs is retried
//! by Alertmanager on its own: a DingTalk outage does not resend to WeChat
//! Work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tracing::{info, warn};

use crate::alert_relay::deliver::{self, DeliveryError, RetryPolicy};
use crate::alert_relay::payload::{self, PayloadError};
use crate::alert_relay::render::{self, Runbooks};
use crate::alert_relay::robot::{MAX_MARKDOWN_BYTES, RobotSpec};

/// What the relay serves with.
pub struct Relay {
    pub robots: BTreeMap<String, RobotSpec>,
    pub runbooks: Runbooks,
    pub policy: RetryPolicy,
    pub client: reqwest::Client,
}

/// Why a notification was not relayed: each an HTTP status and a code.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("no robot named {0:?}; this relay has: {1}")]
    UnknownRobot(String, String),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

impl IntoResponse for RelayError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            RelayError::Payload(_) => (StatusCode::BAD_REQUEST, "invalid_payload"),
            RelayError::UnknownRobot(..) => (StatusCode::NOT_FOUND, "unknown_robot"),
            RelayError::Delivery(e) => (StatusCode::BAD_GATEWAY, e.code()),
        };
        (
            status,
            axum::Json(json!({ "error": code, "message": self.to_string() })),
        )
            .into_response()
    }
}

pub fn app(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/robots/{name}", post(relay_notification))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(relay)
}

async fn relay_notification(
    State(relay): State<Arc<Relay>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, RelayError> {
    let robot = relay.robots.get(&name).ok_or_else(|| {
        let known: Vec<&str> = relay.robots.keys().map(String::as_str).collect();
        RelayError::UnknownRobot(name.clone(), known.join(", "))
    })?;
    let notification = payload::parse(&body)?;
    let message = render::render(
        &notification,
        robot.kind.flavor(),
        &relay.runbooks,
        MAX_MARKDOWN_BYTES,
    );
    let body = robot.kind.body(&message);
    match deliver::deliver(&relay.client, robot, &body, &relay.policy).await {
        Ok(attempts) => {
            info!(robot = %name, kind = robot.kind.as_str(), title = %message.title, attempts, "relayed");
            Ok(axum::Json(json!({
                "robot": name,
                "alerts": notification.alerts.len(),
                "attempts": attempts,
            }))
            .into_response())
        }
        Err(e) => {
            warn!(robot = %name, error = %e, title = %message.title, "not relayed; Alertmanager will retry");
            Err(e.into())
        }
    }
}

/// Serves until the listener fails.
pub async fn serve(addr: SocketAddr, relay: Arc<Relay>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, robots = ?relay.robots.keys().collect::<Vec<_>>(), "alert relay listening");
    axum::serve(listener, app(relay)).await
}
