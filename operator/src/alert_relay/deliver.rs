//! Posting one message to one robot, retrying what is worth retrying.
//!
//! A robot that is throttling (20 messages a minute for both), busy or
//! unreachable gets the same message again after a pause that doubles from
//! `first_pause`; each attempt re-reads the robot's files (a rotated Secret
//! applies at once) and, for DingTalk, signs with a fresh timestamp. A
//! refusal (wrong key, bad signature) is not retried here: sending the same
//! request again cannot succeed. Either way the caller answers Alertmanager
//! with a 5xx, and Alertmanager retries the whole notification with its own
//! backoff, so nothing is lost while a robot is down.

use std::time::Duration;

use reqwest::redirect::Policy;
use serde_json::Value;
use tracing::warn;

use crate::alert_relay::robot::{self, Reply, RobotError, RobotSpec};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries per message, the first included.
    pub attempts: u32,
    pub first_pause: Duration,
    pub max_pause: Duration,
    /// Per request: a robot that does not answer in this long is retried.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    /// Four tries over about 3.5 s of pauses (0.5, 1, 2 s): well inside
    /// Alertmanager's notification timeout, and a throttled robot's minute
    /// is left to Alertmanager's own retries.
    fn default() -> Self {
        Self {
            attempts: 4,
            first_pause: Duration::from_millis(500),
            max_pause: Duration::from_secs(8),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The pause before try 2, 3, ... (one fewer than the attempts).
    pub fn pauses(&self) -> impl Iterator<Item = Duration> + use<> {
        let max = self.max_pause;
        std::iter::successors(Some(self.first_pause), move |p| Some((*p * 2).min(max)))
            .take(self.attempts.saturating_sub(1) as usize)
    }
}

/// Why a message did not reach a robot.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("robot {robot}: {source}")]
    Credentials {
        robot: String,
        #[source]
        source: RobotError,
    },
    #[error("robot {robot} refused the message: {reason}")]
    Refused { robot: String, reason: String },
    #[error("robot {robot} still failing after {attempts} attempts: {last}")]
    GaveUp {
        robot: String,
        attempts: u32,
        last: String,
    },
}

impl DeliveryError {
    /// A stable code for the JSON error body and the logs.
    pub fn code(&self) -> &'static str {
        match self {
            DeliveryError::Credentials { .. } => "robot_credentials",
            DeliveryError::Refused { .. } => "robot_refused",
            DeliveryError::GaveUp { .. } => "robot_unavailable",
        }
    }
}

/// The HTTP client for robots: the system's CA roots (the images carry
/// them), no redirects (a robot answers directly; a redirect would carry
/// the key elsewhere).
pub fn client(policy: &RetryPolicy) -> Result<reqwest::Client, reqwest::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A malformed system certificate must not stop the relay.
        let _ = roots.add(cert);
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(Policy::none())
        .timeout(policy.request_timeout)
        .user_agent(concat!(
            "securechat-alert-relay/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
}

/// Posts `body` to `robot`; returns the number of attempts it took.
pub async fn deliver(
    client: &reqwest::Client,
    robot: &RobotSpec,
    body: &Value,
    policy: &RetryPolicy,
) -> Result<u32, DeliveryError> {
    let mut pauses = policy.pauses();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let credentials = robot.load().map_err(|source| DeliveryError::Credentials {
            robot: robot.name.clone(),
            source,
        })?;
        let url = robot::request_url(
            robot.kind,
            &credentials,
            chrono::Utc::now().timestamp_millis(),
        );
        let reply = match client.post(url).json(body).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(bytes) => robot::classify(robot.kind, status, &bytes),
                    Err(e) => Reply::Retry(e.without_url().to_string()),
                }
            }
            // Never print the URL: its query is the robot's key.
            Err(e) => Reply::Retry(e.without_url().to_string()),
        };
        match reply {
            Reply::Delivered => return Ok(attempt),
            Reply::Refused(reason) => {
                return Err(DeliveryError::Refused {
                    robot: robot.name.clone(),
                    reason,
                });
            }
            Reply::Retry(reason) => match pauses.next() {
                Some(pause) => {
                    warn!(robot = %robot.name, kind = robot.kind.as_str(), attempt, %reason, ?pause, "robot delivery failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                None => {
                    return Err(DeliveryError::GaveUp {
                        robot: robot.name.clone(),
                        attempts: attempt,
                        last: reason,
                    });
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_a_cap_one_fewer_than_the_attempts() {
        let policy = RetryPolicy {
            attempts: 6,
            first_pause: Duration::from_millis(500),
            max_pause: Duration::from_secs(4),
            request_timeout: Duration::from_secs(1),
        };
        let secs: Vec<f64> = policy.pauses().map(|p| p.as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 4.0]);
        let once = RetryPolicy {
            attempts: 1,
            ..policy
        };
        assert_eq!(once.pauses().count(), 0);
    }
}
