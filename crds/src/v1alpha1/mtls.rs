//! `spec.auth.mtls`: client certificates on the API port, with SPIFFE IDs
//! as identities, and the allow-list that maps them onto tiers.
//!
//! Which failures happen where (the server's behaviour, see
//! `server/src/auth/mtls.rs`):
//! - At the TLS handshake (no HTTP answer at all): in `Required` mode a
//!   client without a certificate; in either mode a certificate that does
//!   not chain to the trust bundle, is expired or not yet valid, or is not
//!   meant for client authentication.
//! - 403 `identity_not_allowed`: a valid certificate sent without a bearer
//!   credential whose SPIFFE ID (its URI SAN) matches no `allow` entry and
//!   no key bound to it in the key table, or that carries no SPIFFE ID.
//! - 401 `identity_mismatch`: a certificate and a bearer credential that do
//!   not agree (see [`MtlsMode::Optional`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Tier;

/// Whether the API port asks for client certificates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MtlsMode {
    /// No client certificates are requested (the default).
    #[default]
    Disabled,
    /// A certificate is requested, not required. A request with a valid
    /// certificate and no bearer is the certificate's identity; with both,
    /// they must agree: the bearer must be an API key (or a token minted
    /// from one) bound to exactly that SPIFFE ID, else 401
    /// `identity_mismatch`. Without a certificate, bearer credentials work
    /// as in Disabled, except keys bound to a SPIFFE ID (401
    /// `certificate_required`).
    Optional,
    /// A valid certificate is required at the TLS handshake: a client
    /// without one never reaches authentication. A bearer, if also sent,
    /// must agree as in Optional.
    Required,
}

/// Client certificates on the API port (the web port never asks for
/// them).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsSpec {
    /// Disabled (default), Optional or Required.
    #[serde(default)]
    pub mode: MtlsMode,

    /// The CAs client certificates must chain to. Unset: the model's own CA
    /// bundle (`<model>-ca-bundle`, which also holds the next and previous
    /// CA during a CA rotation). A ConfigMap names another bundle, e.g. a SPIRE or
    /// cert-manager trust bundle; its changes apply without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle: Option<TrustBundleRef>,

    /// SPIFFE ID patterns and the tier each grants to a certificate sent
    /// without a bearer credential (an API key bound to the exact ID, in
    /// the key table, takes precedence: its tier and lifecycle apply). A pattern is an exact ID
    /// (`spiffe://cluster.local/ns/apps/sa/billing`) or a path prefix ending
    /// in `/*` (`spiffe://cluster.local/ns/apps/*` matches every ID below
    /// `spiffe://cluster.local/ns/apps/`). The most specific entry wins: an
    /// exact one, else the longest prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub allow: Vec<SpiffeAllow>,

    /// The trust domain of the SPIFFE IDs in client certificates the
    /// operator issues to ChatApiKeys (`credential: ClientCertificate` or
    /// `Both`): `spiffe://<trustDomain>/ns/<namespace>/sa/<sa>`. Default
    /// `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[a-z0-9._-]+$"))]
    pub trust_domain: Option<String>,
}

/// The trust domain when `auth.mtls.trustDomain` is unset.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

impl MtlsSpec {
    /// `trustDomain`, else [`DEFAULT_TRUST_DOMAIN`].
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_deref().unwrap_or(DEFAULT_TRUST_DOMAIN)
    }
}

/// The SPIFFE ID of service account `sa` in `namespace` (the Kubernetes
/// convention SPIRE and Istio use).
pub fn spiffe_id(trust_domain: &str, namespace: &str, sa: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}")
}

/// A ConfigMap in the model's namespace holding PEM CA certificates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustBundleRef {
    /// Name of the ConfigMap.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub config_map_name: String,

    /// The key holding the PEM bundle. Default: `ca.crt`.
    #[serde(default = "default_bundle_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// `ca.crt`, the key Kubernetes and cert-manager bundles use (the same
/// name as `files::names::CA_CERT`, which `files` owns: `files` builds on
/// these types, so they do not import it back).
fn default_bundle_key() -> String {
    "ca.crt".to_owned()
}

/// One allow-list entry: a SPIFFE ID pattern and its tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpiffeAllow {
    /// `spiffe://<trust-domain>/<path>`, exact, or a prefix ending in `/*`.
    #[serde(rename = "spiffeID")]
    #[schemars(
        length(min = 10, max = 2048),
        regex(pattern = r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._~%!$&'()+,;=:@-]+)*(/\*)?$")
    )]
    pub spiffe_id: String,

    /// The tier the identity gets.
    pub tier: Tier,
}

/// Why an allow-list pattern is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffePatternError {
    /// Not a `spiffe://` URI.
    #[error("must start with spiffe://")]
    Scheme,
    /// An empty trust domain, or one with other characters.
    #[error("must name a trust domain (lowercase letters, digits, '.', '-', '_')")]
    TrustDomain,
    /// A `*` anywhere but as the whole last segment.
    #[error("'*' is allowed only as a last path segment of its own (/*)")]
    Wildcard,
    /// An empty, `.` or `..` path segment.
    #[error("path segments must not be empty, '.' or '..'")]
    Segment,
}

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiffePattern<'a> {
    /// Matches this ID only.
    Exact(&'a str),
    /// Matches IDs that start with this (which ends in `/`).
    Prefix(&'a str),
}

impl<'a> SpiffePattern<'a> {
    /// Parses `spiffe://td/path` or `spiffe://td/path/*`.
    pub fn parse(pattern: &'a str) -> Result<Self, SpiffePatternError> {
        let rest = pattern
            .strip_prefix("spiffe://")
            .ok_or(SpiffePatternError::Scheme)?;
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(SpiffePatternError::TrustDomain);
        }
        let wildcard = pattern.ends_with("/*");
        // The path without the final `*`; a prefix's keeps its `/`.
        let body = if wildcard {
            &path[..path.len() - 1]
        } else {
            path
        };
        if body.contains('*') {
            return Err(SpiffePatternError::Wildcard);
        }
        let segments = if wildcard {
            &body[..body.len().saturating_sub(1)]
        } else {
            body
        };
        if !segments.is_empty()
            && segments
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(SpiffePatternError::Segment);
        }
        Ok(if wildcard {
            SpiffePattern::Prefix(&pattern[..pattern.len() - 1])
        } else {
            SpiffePattern::Exact(pattern)
        })
    }

    /// How well this pattern matches `id`: None when it does not; a larger
    /// number for a more specific match (exact beats every prefix, a longer
    /// prefix a shorter one).
    pub fn specificity(&self, id: &str) -> Option<usize> {
        match self {
            SpiffePattern::Exact(e) => (*e == id).then_some(usize::MAX),
            SpiffePattern::Prefix(p) => {
                (id.len() > p.len() && id.starts_with(p)).then_some(p.len())
            }
        }
    }
}

/// The tier `allow` grants `id`: the most specific matching entry's.
/// Entries that do not parse never match (the config is validated before
/// it is used, so there are none in force).
pub fn allowed_tier(allow: &[SpiffeAllow], id: &str) -> Option<Tier> {
    allow
        .iter()
        .filter_map(|a| {
            let score = SpiffePattern::parse(&a.spiffe_id).ok()?.specificity(id)?;
            Some((score, a.tier))
        })
        .max_by_key(|(score, _)| *score)
        .map(|(_, tier)| tier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(id: &str, tier: Tier) -> SpiffeAllow {
        SpiffeAllow {
            spiffe_id: id.into(),
            tier,
        }
    }

    #[test]
    fn patterns_parse_exact_and_prefix_and_refuse_the_rest() {
        assert_eq!(
            SpiffePattern::parse("spiffe://td/ns/a/sa/b"),
            Ok(SpiffePattern::Exact("spiffe://td/ns/a/sa/b"))
        );
        assert_eq!(
            SpiffePattern::parse("spiffe://td/ns/a/*"),
            Ok(SpiffePattern::Prefix("spiffe://td/ns/a/"))
        );
        assert_eq!(
            SpiffePattern::parse("https://td/x"),
            Err(SpiffePatternError::Scheme)
        );
        assert_eq!(
            SpiffePattern::parse("spiffe:///x"),
            Err(SpiffePatternError::TrustDomain)
        );
        assert_eq!(
            SpiffePattern::parse("spiffe://TD/x"),
            Err(SpiffePatternError::TrustDomain)
        );
        assert_eq!(
            SpiffePattern::parse("spiffe://td/ns/*/sa/b"),
            Err(SpiffePatternError::Wildcard)
        );
        assert_eq!(
            SpiffePattern::parse("spiffe://td/ns*"),
            Err(SpiffePatternError::Wildcard)
        );
        assert_eq!(
            SpiffePattern::parse("spiffe://td/ns//b"),
            Err(SpiffePatternError::Segment)
        );
        assert_eq!(
            SpiffePattern::parse("spiffe://td/ns/../b"),
            Err(SpiffePatternError::Segment)
        );
    }

    #[test]
    fn the_most_specific_entry_wins() {
        let list = [
            allow("spiffe://td/*", Tier::ReadOnly),
            allow("spiffe://td/ns/apps/*", Tier::Developer),
            allow("spiffe://td/ns/apps/sa/ops", Tier::Admin),
        ];
        let tier = |id| allowed_tier(&list, id);
        assert_eq!(tier("spiffe://td/ns/apps/sa/ops"), Some(Tier::Admin));
        assert_eq!(tier("spiffe://td/ns/apps/sa/web"), Some(Tier::Developer));
        assert_eq!(tier("spiffe://td/ns/other/sa/web"), Some(Tier::ReadOnly));
        assert_eq!(tier("spiffe://other/ns/apps/sa/web"), None);
        // A prefix names what is below it, not itself or a longer sibling.
        assert_eq!(allowed_tier(&list[1..2], "spiffe://td/ns/apps/"), None);
        assert_eq!(allowed_tier(&list[1..2], "spiffe://td/ns/appsx/sa/a"), None);
    }
}
