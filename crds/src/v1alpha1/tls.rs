//! `spec.tls`: the server certificate and the per-model CA that issues it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel;
use crate::Duration;

const HOUR: u64 = 3600;

/// Shortest lifetime of a serving certificate: renewals would otherwise
/// follow each other faster than pods reload them.
pub const MIN_CERT_VALIDITY: Duration = Duration::from_secs(HOUR);
/// Longest lifetime of a serving certificate: one year (8760h). Public CAs
/// issue 398 days at most; a leaked key should not outlive that.
pub const MAX_CERT_VALIDITY: Duration = Duration::from_secs(8760 * HOUR);
/// Longest lifetime of the per-model CA: ten years (87600h), its default.
pub const MAX_CA_VALIDITY: Duration = Duration::from_secs(87600 * HOUR);
/// Shortest renewBefore: renewing at the moment of expiry leaves no time to
/// hand the new certificate to the pods.
const MIN_RENEW_BEFORE: Duration = Duration::from_secs(60);

/// Who issues the server certificate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TlsMode {
    /// The operator keeps a per-model CA and issues and renews the
    /// certificate itself.
    #[default]
    Generated,
    /// Use the certificate in `secretName` (type kubernetes.io/tls), e.g. one
    /// issued by cert-manager.
    ExistingSecret,
}

/// Lowest TLS protocol version the server accepts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TlsVersion {
    /// TLS 1.2, for old clients.
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3 only (default).
    #[default]
    #[serde(rename = "1.3")]
    V1_3,
}

/// Server certificate settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.mode != 'ExistingSecret' || has(self.secretName)",
     "message": "tls.secretName: required when tls.mode is ExistingSecret"},
    {"rule": "self.mode != 'Generated' || !has(self.secretName)",
     "message": "tls.secretName: only allowed when tls.mode is ExistingSecret (Generated certificates live in <name>-tls)"},
    {"rule": format!("!has(self.renewBefore) || {}", cel::when_durations_convert(
        &["self.renewBefore", "self.validity"],
        "duration(self.renewBefore) < duration(self.validity)")),
     "message": "tls.renewBefore: must be shorter than tls.validity"},
    {"rule": cel::when_durations_convert(
        &["self.caValidity", "self.validity"],
        "duration(self.caValidity) >= duration(self.validity)"),
     "message": "tls.caValidity: must be at least tls.validity"},
    {"rule": cel::when_durations_convert(
        &["self.caOverlap", "self.caValidity"],
        "duration(self.caOverlap) < duration(self.caValidity)"),
     "message": "tls.caOverlap: must be shorter than tls.caValidity"}
]))]
pub struct TlsSpec {
    /// Generated (default) or ExistingSecret.
    #[serde(default)]
    pub mode: TlsMode,

    /// With mode ExistingSecret: the kubernetes.io/tls Secret to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,

    /// Lifetime of generated certificates (Go duration). Default 2160h (90
    /// days); at least 1h and at most 8760h (1 year).
    #[serde(default = "default_tls_validity")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("tls.validity", Some(MIN_CERT_VALIDITY), MAX_CERT_VALIDITY)
    ]))]
    pub validity: Duration,

    /// Renew this long before expiry (at least 1m, and shorter than
    /// validity). Default: when a third of the validity is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("tls.renewBefore", Some(MIN_RENEW_BEFORE), MAX_CERT_VALIDITY)
    ]))]
    pub renew_before: Option<Duration>,

    /// Extra DNS names for the certificate, besides the Service's names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub dns_names: Vec<DnsName>,

    /// Lowest TLS version accepted: "1.2" or "1.3" (default).
    #[serde(default)]
    pub min_version: TlsVersion,

    /// Lifetime of the generated per-model CA (Go duration): at least
    /// validity and at most 87600h (10 years), the default. A new CA is
    /// rolled in when a third of it is left, or at once when the annotation
    /// securechat.dev/rotate-ca gets a new value.
    #[serde(default = "default_ca_validity")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("tls.caValidity", Some(MIN_CERT_VALIDITY), MAX_CA_VALIDITY)
    ]))]
    pub ca_validity: Duration,

    /// CA rotation overlap (Go duration, default 24h): a new CA is in the
    /// CA bundle this long before it signs the server certificate, and the
    /// old CA stays in the bundle this long after. It must cover the time
    /// every client takes to reload the bundle. At most 8760h, and shorter
    /// than caValidity.
    #[serde(default = "default_ca_overlap")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("tls.caOverlap", None, MAX_CERT_VALIDITY)
    ]))]
    pub ca_overlap: Duration,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            mode: TlsMode::default(),
            secret_name: None,
            validity: default_tls_validity(),
            renew_before: None,
            dns_names: Vec::new(),
            min_version: TlsVersion::default(),
            ca_validity: default_ca_validity(),
            ca_overlap: default_ca_overlap(),
        }
    }
}

fn default_tls_validity() -> Duration {
    Duration::from_secs(90 * 24 * 3600)
}

fn default_ca_validity() -> Duration {
    MAX_CA_VALIDITY
}

fn default_ca_overlap() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// A DNS name (wildcards allowed in the first label).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct DnsName(
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        )
    )]
    pub String,
);
