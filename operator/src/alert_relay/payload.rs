//! Alertmanager's webhook payload, version 4: the JSON body of every
//! `webhook_config` notification (Alertmanager's docs, "webhook_config").
//! Only what the messages show is read; unknown fields are ignored, so a
//! later Alertmanager that adds fields still parses.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The one payload version this relay reads.
pub const VERSION: &str = "4";

/// Alertmanager's zero time: `endsAt` of an alert that has not ended.
const ZERO_TIME_YEAR: i32 = 1;

/// One notification: a group of alerts that share the route's `group_by`
/// labels.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub version: String,
    #[serde(default)]
    pub group_key: String,
    /// Alerts Alertmanager left out because of the receiver's `max_alerts`.
    #[serde(default)]
    pub truncated_alerts: u64,
    pub status: Status,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    /// Alertmanager's own URL (`--web.external-url`).
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
}

/// Whether an alert (or a whole group: firing while any alert is) fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: Status,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    /// Alertmanager's zero time (year 1) while the alert has not ended; see
    /// [`Alert::ended_at`].
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// The rule's expression in the Prometheus that fired it.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    #[serde(default)]
    pub fingerprint: String,
}

impl Alert {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.annotations
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// When a resolved alert ended; None while it fires (Alertmanager then
    /// sends its zero time, or the time it will consider the alert stale).
    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        use chrono::Datelike;
        match (self.status, self.ends_at) {
            (Status::Resolved, Some(t)) if t.year() > ZERO_TIME_YEAR => Some(t),
            _ => None,
        }
    }
}

/// Why a request body is not a notification this relay can render.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not Alertmanager's webhook JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("webhook payload version {0:?} is not supported; this relay reads version {VERSION}")]
    Version(String),
    #[error("the notification carries no alerts")]
    NoAlerts,
}

/// Parses and checks a webhook body.
pub fn parse(body: &[u8]) -> Result<Notification, PayloadError> {
    let notification: Notification = serde_json::from_slice(body)?;
    if notification.version != VERSION {
        return Err(PayloadError::Version(notification.version));
    }
    if notification.alerts.is_empty() {
        return Err(PayloadError::NoAlerts);
    }
    Ok(notification)
}
