//! `spec.audit`: the per-request audit log.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Audit logging.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditSpec {
    /// Write one JSON line per request (who, what, decision, latency, token
    /// counts) to the server's log.
    #[serde(default = "super::default_true")]
    pub enabled: bool,

    /// Also log prompt and answer text. Off by default: prompts may hold
    /// exactly the data the filter exists to protect.
    #[serde(default)]
    pub include_prompts: bool,
}

impl Default for AuditSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            include_prompts: false,
        }
    }
}
