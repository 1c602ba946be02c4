//! `spec.auth`: token issuing and verification, external OIDC issuers, and
//! who may mint API keys.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use super::{MtlsSpec, Tier, cel};
use crate::Duration;

/// Most clock skew tolerated on exp/nbf/iat: more would keep expired tokens
/// alive (the rotation seed recommends 5s).
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
/// Shortest access-token lifetime.
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Longest access-token lifetime: a day, so a stolen token dies soon.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Token issuing and verification.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// `iss` of the tokens the server issues. Default:
    /// `https://<name>.<namespace>.svc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub issuer: Option<String>,

    /// `aud` of issued tokens and the audience required of them. Default:
    /// the model's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub audience: Option<String>,

    /// Lifetime of issued access tokens (the seed's 30 minutes): at least 1m
    /// and at most 24h, and at most signingKeys.gracePeriod (the previous
    /// signing key must verify a token until it expires).
    #[serde(default = "default_token_ttl", rename = "tokenTTL")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("auth.tokenTTL", Some(MIN_TOKEN_TTL), MAX_TOKEN_TTL)
    ]))]
    pub token_ttl: Duration,

    /// Clock-skew allowance when checking exp and nbf (the rotation seed
    /// recommends at most 5s): at most 1m.
    #[serde(default = "default_leeway")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("auth.leeway", None, MAX_LEEWAY)
    ]))]
    pub leeway: Duration,

    /// External OpenID Connect issuers whose tokens are accepted (e.g. the
    /// enterprise identity provider behind the web UI's SSO login).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub oidc: Vec<OidcIssuer>,

    /// API keys minted through ChatApiKey resources.
    #[serde(default)]
    pub api_keys: ApiKeysSpec,

    /// A Rego module evaluated in-process for every authorised request
    /// (after the tier's permission and rate limit): it may deny with a
    /// reason (403) or lower the request's max_tokens. The module is
    /// `package securechat` and defines `allow`, and optionally `reason`
    /// and `max_tokens`; its input is documented in the chart's README.
    /// The operator compiles it before writing the config: one that does
    /// not compile is refused (Ready=False, reason PolicyInvalid) and the
    /// pods keep the last good one. A change applies to running pods
    /// without a restart. Unset: the tier table alone decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<AccessPolicySpec>,

    /// Client certificates (mTLS) on the API port, with SPIFFE IDs as
    /// identities. Default: not requested.
    #[serde(default, skip_serializing_if = "MtlsSpec::is_default")]
    pub mtls: MtlsSpec,
}

impl Default for AuthSpec {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            token_ttl: default_token_ttl(),
            leeway: default_leeway(),
            oidc: Vec::new(),
            api_keys: ApiKeysSpec::default(),
            policy: None,
            mtls: MtlsSpec::default(),
        }
    }
}

fn default_token_ttl() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_leeway() -> Duration {
    Duration::from_secs(5)
}

/// An external OpenID Connect issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.clientSecretName) || has(self.clientId)",
     "message": "auth.oidc.clientSecretName: only with a clientId (the web UI's SSO client)"}
]))]
pub struct OidcIssuer {
    /// Issuer URL (https); `/.well-known/openid-configuration` is read from it.
    #[schemars(length(min = 9, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isURL(self) && url(self).getScheme() == 'https'",
         "message": "auth.oidc.issuerURL: must be an https URL"}
    ]))]
    #[serde(rename = "issuerURL")]
    pub issuer_url: String,

    /// Required `aud` of the issuer's tokens (usually the client id).
    #[schemars(length(min = 1, max = 512))]
    pub audience: String,

    /// Claim that carries the caller's role (admin/user/guest or
    /// ReadOnly/Developer/Admin).
    #[serde(default = "default_role_claim")]
    #[schemars(length(min = 1, max = 128))]
    pub role_claim: String,

    /// Tier for tokens whose role claim is missing or unknown. Unset: such
    /// tokens are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tier: Option<Tier>,

    /// OAuth2 client id for the web UI's "Sign in with SSO" (authorization
    /// code flow with PKCE). Unset: SSO login is not offered for this issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub client_id: Option<String>,

    /// Secret in the model's namespace whose key `client-secret` holds the
    /// OAuth2 client secret of `clientId`: the web UI then logs in as a
    /// confidential client (client_secret_basic, and PKCE as well). The
    /// Secret is mounted into the pods, read at each login, so rotating it
    /// needs no restart. Unset: a public client (PKCE alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret_name: Option<String>,
}

fn default_role_claim() -> String {
    "role".into()
}

/// Who may mint API keys for this model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeysSpec {
    /// Namespaces whose ChatApiKeys may mint keys for this model, besides the
    /// model's own namespace. `*` allows all namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_namespaces: Vec<NamespaceName>,

    /// The highest tier the ChatApiKeys of a namespace may ask for, by
    /// namespace (`*`: every allowed namespace not named). A namespace not
    /// named here gets Developer: Admin (which may PATCH the model's config
    /// and manage its keys) only where the model's owner writes it. The
    /// model's own namespace gets Admin unless named here. A ChatApiKey
    /// that asks for more is not minted (reason TierNotAllowed), and one
    /// already minted is revoked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 64,
        "x-kubernetes-validations" = [
            {"rule": "self.all(ns, ns == '*' || ns.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",
             "message": "auth.apiKeys.maxTiers: keys must be namespace names or *"}
        ]
    ))]
    pub max_tiers: BTreeMap<String, Tier>,
}

/// The highest tier a namespace's ChatApiKeys get when
/// `auth.apiKeys.maxTiers` does not name it.
pub const DEFAULT_MAX_TIER: Tier = Tier::Developer;

impl ApiKeysSpec {
    /// The highest tier ChatApiKeys in `namespace` may ask for, for a model
    /// in `model_namespace`: the namespace's own entry, else the model's
    /// own namespace's Admin, else the `*` entry, else [`DEFAULT_MAX_TIER`].
    pub fn max_tier(&self, model_namespace: &str, namespace: &str) -> Tier {
        if let Some(tier) = self.max_tiers.get(namespace) {
            return *tier;
        }
        if namespace == model_namespace {
            return Tier::Admin;
        }
        self.max_tiers.get("*").copied().unwrap_or(DEFAULT_MAX_TIER)
    }
}

impl MtlsSpec {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A namespace name, or `*` for all.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct NamespaceName(
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
    )]
    pub String,
);

/// Where `spec.auth.policy`'s Rego module is: inline, or in a ConfigMap of
/// the model's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.rego) != has(self.configMapRef)",
     "message": "auth.policy: give exactly one of rego or configMapRef"}
]))]
pub struct AccessPolicySpec {
    /// The module's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub rego: Option<String>,

    /// A ConfigMap key holding the module. The operator reads it at every
    /// reconcile (a change reaches the pods within the periodic requeue);
    /// a missing ConfigMap or key is refused like a module that does not
    /// compile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<PolicyConfigMapRef>,
}

/// A key of a ConfigMap in the model's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyConfigMapRef {
    /// The ConfigMap's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,

    /// The key holding the module (default `policy.rego`).
    #[serde(default = "default_policy_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_policy_key() -> String {
    "policy.rego".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tier_is_developer_unless_the_owner_says_more() {
        let spec: ApiKeysSpec = serde_json::from_value(serde_json::json!({
            "allowedNamespaces": ["ops", "apps", "guests"],
            "maxTiers": {"ops": "Admin", "guests": "ReadOnly", "models": "Developer"}
        }))
        .unwrap();
        assert_eq!(spec.max_tier("models", "ops"), Tier::Admin);
        assert_eq!(spec.max_tier("models", "apps"), Tier::Developer);
        assert_eq!(spec.max_tier("models", "guests"), Tier::ReadOnly);
        // The owner's namespace: Admin, unless the owner lowers it.
        assert_eq!(spec.max_tier("teams", "teams"), Tier::Admin);
        assert_eq!(spec.max_tier("models", "models"), Tier::Developer);
        let star = ApiKeysSpec {
            max_tiers: [("*".to_string(), Tier::ReadOnly)].into(),
            ..Default::default()
        };
        assert_eq!(star.max_tier("models", "apps"), Tier::ReadOnly);
        assert_eq!(star.max_tier("models", "models"), Tier::Admin);
    }
}
