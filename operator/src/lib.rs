//! The securechat operator: turns a SecureChatModel into a hardened,
//! GPU-scheduled, network-isolated deployment of the securechat server.
//!
//! - [`desired`]: pure builders, one per owned kind, from the resource to the
//!   object that should exist. No client in there.
//! - [`status`]: pure computation of conditions from what was observed, and
//!   the event policy (which condition changes become Events).
//! - [`reasons`]: every condition and Event reason, documented, in one place.
//! - [`status_writer`]: the one status patch (server-side apply).
//! - [`apply`]: server-side apply with one field manager, orphan cleanup.
//! - [`references`]: the Secrets and ConfigMaps a spec names but does not
//!   own, checked before a rollout would mount them.
//! - [`controller`]: the thin reconcile loop that wires them together.
//! - [`leader`]: Lease-based leader election, so only one replica reconciles.
//! - [`metrics`]: Prometheus metrics and health endpoints.
//! - [`alert_relay`]: the `alert-relay` subcommand, Alertmanager -> WeChat
//!   Work and DingTalk robots.

pub mod access_policy;
pub mod alert_relay;
pub mod api_keys;
pub mod apply;
pub mod backoff;
pub mod ca_rotation;
pub mod cli;
pub mod client_cert;
pub mod controller;
pub mod desired;
pub mod error;
pub mod gpu_memory;
pub mod health;
pub mod key_controller;
pub mod key_plan;
pub mod labels;
pub mod leader;
pub mod material;
pub mod metrics;
pub mod pki;
pub mod reasons;
pub mod references;
pub mod rotation;
pub mod status;
pub mod status_writer;

pub use error::{Error, Result};

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "securechat-operator";
