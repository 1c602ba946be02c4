//! `spec.sensitiveData`: detectors and custom patterns of sensitive data,
//! and what happens on a match.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Built-in detectors of sensitive data.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum Detector {
    /// Payment card numbers: 13–19 digits, spaces or dashes allowed, Luhn
    /// checked.
    CreditCard,
    /// US social security numbers.
    USSSN,
    /// E-mail addresses.
    Email,
    /// Chinese resident identity card numbers (18 characters, checksum
    /// verified).
    ChineseResidentID,
    /// Chinese mobile phone numbers.
    ChineseMobile,
}

impl Detector {
    pub const ALL: [Detector; 5] = [
        Detector::CreditCard,
        Detector::USSSN,
        Detector::Email,
        Detector::ChineseResidentID,
        Detector::ChineseMobile,
    ];
}

/// What to do when sensitive data is found.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FilterAction {
    /// Replace each match with `[FILTERED]` (the seed's behaviour).
    #[default]
    Redact,
    /// Refuse the request with 400 (input) or end the answer (output).
    Reject,
}

/// A user-defined pattern of sensitive data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomPattern {
    /// Name reported in audit logs and metrics.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: String,
    /// Regular expression (Rust regex syntax, no look-around).
    #[schemars(length(min = 1, max = 1024))]
    pub regex: String,
}

/// Sensitive-data filtering of prompts and answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SensitiveDataSpec {
    /// Filter what callers send.
    #[serde(default = "super::default_true")]
    pub input: bool,

    /// Filter what the model answers (streaming-safe).
    #[serde(default = "super::default_true")]
    pub output: bool,

    /// Built-in detectors to run. Default: all of them.
    #[serde(default = "default_detectors")]
    #[schemars(length(max = 5))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub detectors: Vec<Detector>,

    /// Extra patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub custom_patterns: Vec<CustomPattern>,

    /// Redact (default) or Reject.
    #[serde(default)]
    pub action: FilterAction,
}

impl Default for SensitiveDataSpec {
    fn default() -> Self {
        Self {
            input: true,
            output: true,
            detectors: default_detectors(),
            custom_patterns: Vec::new(),
            action: FilterAction::default(),
        }
    }
}

fn default_detectors() -> Vec<Detector> {
    Detector::ALL.to_vec()
}
