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
    /// Every detector, in the order they are documented.
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

// What CEL can tell of Rust regex syntax: the constructs it lacks, which
// users paste from other engines, where not escaped (after an even number of
// backslashes). Whether the rest compiles is for the operator and the
// server, which compile it. Used in CEL raw strings (r'...').

/// An unescaped `(?=`, `(?!`, `(?<=` or `(?<!`: look-around.
const LOOK_AROUND: &str = r"(^|[^\\])(\\\\)*[(][?]<?[=!]";
/// An unescaped `\1` to `\9`: a backreference.
const BACKREFERENCE: &str = r"(^|[^\\])(\\\\)*\\[1-9]";

/// A user-defined pattern of sensitive data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomPattern {
    /// Name reported in audit logs and metrics.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: String,
    /// Regular expression (Rust regex syntax: no look-around, no
    /// backreferences), at most 1024 characters.
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": format!("!self.matches(r'{LOOK_AROUND}')"),
         "message": "sensitiveData.customPatterns[].regex: Rust regex syntax has no look-around ((?=, (?!, (?<=, (?<!)"},
        {"rule": format!("!self.matches(r'{BACKREFERENCE}')"),
         "message": r"sensitiveData.customPatterns[].regex: Rust regex syntax has no backreferences (\1 to \9)"}
    ]))]
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

    /// Extra patterns: at most 32, of at most 8192 characters of regex in
    /// all (the server compiles them into one expression with the
    /// detectors).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["name"],
        "x-kubernetes-validations" = [
            {"rule": "self.map(p, size(p.regex)).sum() <= 8192",
             "message": "sensitiveData.customPatterns: at most 8192 characters of regex in all (the server compiles them into one expression)"}
        ]
    ))]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cel_spots_look_around_and_backreferences_only_where_unescaped() {
        let look_around = regex::Regex::new(LOOK_AROUND).expect("compiles");
        let backreference = regex::Regex::new(BACKREFERENCE).expect("compiles");
        for refused in [r"secret(?=:)", r"(?!x)", r"a(?<=b)", r"(?<!c)d", r"\\(?=x)"] {
            assert!(look_around.is_match(refused), "{refused}");
        }
        for fine in [
            r"\(?=",
            r"(?:x)",
            r"(?i)secret",
            r"(?P<n>x)",
            r"EMP-[0-9]{6}",
        ] {
            assert!(!look_around.is_match(fine), "{fine}");
        }
        for refused in [r"(a)\1", r"\9", r"x\\\2"] {
            assert!(backreference.is_match(refused), "{refused}");
        }
        for fine in [r"\\1", r"\d{3}", r"[0-9]{1,9}", r"\x41"] {
            assert!(!backreference.is_match(fine), "{fine}");
        }
    }
}
