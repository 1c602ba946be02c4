//! The SecureChatModel resource: its root spec, one field per section of
//! the sibling modules, and the defaults an empty `spec: {}` means.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    AuditSpec, AuthSpec, AutoscalingSpec, CorsSpec, ExposeSpec, ModelSpec, NetworkSpec, PortsSpec,
    RateLimitSpec, ResourcesSpec, RolesSpec, SchedulingSpec, SecureChatModelStatus,
    SensitiveDataSpec, ServingSpec, SharedStateSpec, SigningKeysSpec, TlsSpec, WebSpec, cel,
};

/// A chat model served securely: GPU-scheduled inference pods running the
/// securechat HTTPS server, with generated TLS certificates, NetworkPolicies
/// that mirror security-group rules, and signing keys that rotate by
/// themselves. An empty spec deploys the embedded default model, locked down.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "securechat.dev",
    version = "v1alpha1",
    kind = "SecureChatModel",
    doc = "A chat model served securely: GPU-scheduled inference pods running the securechat HTTPS server, generated TLS certificates, NetworkPolicies mirroring security-group rules, and self-rotating signing keys. An empty spec deploys the embedded default model, locked down.",
    plural = "securechatmodels",
    singular = "securechatmodel",
    shortname = "scm",
    category = "securechat",
    namespaced,
    status = "SecureChatModelStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".status.model"}"#,
    printcolumn = r#"{"name":"Replicas","type":"string","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new("size(self.metadata.name) <= 40").message("metadata.name: must be at most 40 characters, so that the names of the objects made from it (e.g. <name>-signing-keys) stay valid"),
    validation = kube::core::Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name: must be a DNS label (lowercase letters, digits and '-', starting with a letter and ending with a letter or digit, e.g. my-model): it names the model's Service, and a name such as my.model cannot"),
    validation = kube::core::Rule::new("!has(self.spec.auth) || !has(self.spec.auth.mtls) || !has(self.spec.auth.mtls.mode) || self.spec.auth.mtls.mode == 'Disabled' || has(self.spec.auth.mtls.trustBundle) || !has(self.spec.tls) || !has(self.spec.tls.mode) || self.spec.tls.mode != 'ExistingSecret'").message("spec.auth.mtls.trustBundle: required with tls.mode ExistingSecret, which has no model CA to trust by default")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": format!("!has(self.auth) || !has(self.signingKeys) || !has(self.auth.tokenTTL) || !has(self.signingKeys.gracePeriod) || ({})",
        cel::when_durations_convert(
            &["self.auth.tokenTTL", "self.signingKeys.gracePeriod"],
            "duration(self.auth.tokenTTL) <= duration(self.signingKeys.gracePeriod)")),
     "message": "auth.tokenTTL: must not exceed signingKeys.gracePeriod: after a rotation the previous signing key verifies only for the grace period, so a token that lives longer would be refused before it expires"},
    {"rule": "!has(self.autoscaling) || !has(self.replicas)",
     "message": "replicas and autoscaling: set one, not both (with autoscaling the pod count is the autoscaler's, between autoscaling.minReplicas and maxReplicas; remove spec.replicas)"}
]))]
pub struct SecureChatModelSpec {
    /// Number of inference pods (default 1). 0 scales the model down while
    /// keeping its keys and certificates. Not with `autoscaling`, which
    /// decides the count instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,

    /// Scale the pods on a serving signal (requests waiting, sequences
    /// running or KV-cache use) between a minimum and a maximum, with a
    /// HorizontalPodAutoscaler or KEDA. Unset: `replicas` pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Server container image. Defaults to the securechat server image that
    /// matches the operator's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Which model to serve and its generation defaults.
    #[serde(default)]
    pub model: ModelSpec,

    /// GPUs and compute resources of each pod.
    #[serde(default)]
    pub resources: ResourcesSpec,

    /// Where the pods may run: node selectors, tolerations, affinity and
    /// friends, passed through to the pod spec.
    #[serde(default)]
    pub scheduling: SchedulingSpec,

    /// Container ports of the API and the web chat UI (both HTTPS).
    #[serde(default)]
    pub ports: PortsSpec,

    /// Server certificate: generated by the operator's per-model CA, or taken
    /// from an existing Secret.
    #[serde(default)]
    pub tls: TlsSpec,

    /// The keys that sign the server's short-lived access tokens, and how
    /// often they rotate.
    #[serde(default)]
    pub signing_keys: SigningKeysSpec,

    /// Token issuing and verification: issuer, audience, lifetime, clock
    /// skew, external OIDC issuers, and who may mint API keys.
    #[serde(default)]
    pub auth: AuthSpec,

    /// Permission tiers and their quotas.
    #[serde(default)]
    pub roles: RolesSpec,

    /// Request and token rate limits per principal.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,

    /// Cross-origin access for browsers.
    #[serde(default)]
    pub cors: CorsSpec,

    /// Detection and redaction (or rejection) of sensitive data in prompts and
    /// answers.
    #[serde(default)]
    pub sensitive_data: SensitiveDataSpec,

    /// Network access to and from the pods, written as security-group rules
    /// and enforced with NetworkPolicies. Default: deny all ingress but
    /// Prometheus's scrape of the API port (network.monitoring), egress
    /// only to DNS (and what the model source and OIDC issuers need).
    #[serde(default)]
    pub network: NetworkSpec,

    /// Audit logging of every request.
    #[serde(default)]
    pub audit: AuditSpec,

    /// How one pod serves many callers at once: continuous batching, the
    /// KV cache, the queue and fair admission by tier.
    #[serde(default)]
    pub serving: ServingSpec,

    /// A Redis-protocol store (Valkey or Redis 7+) shared by the replicas,
    /// so limits, token budgets, web sessions and usage hold for the model
    /// as a whole. Unset: each replica keeps its own (with more than one
    /// replica the model says so in its SharedState condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_state: Option<SharedStateSpec>,

    /// The web chat UI's sign-in providers that are plain OAuth2 (e.g.
    /// WeChat Work), besides API keys and `auth.oidc` single sign-on.
    #[serde(default, skip_serializing_if = "is_default_web")]
    pub web: WebSpec,

    /// Reaching the model from outside the cluster (NodePort or
    /// LoadBalancer Service, Ingress, Gateway API routes) and publishing
    /// its pods as a Gateway API Inference Extension InferencePool.
    /// `network.ingress` still decides who may come in. Unset: a ClusterIP
    /// Service only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<ExposeSpec>,
}

fn is_default_web(web: &WebSpec) -> bool {
    *web == WebSpec::default()
}

/// Pods of a model that sets neither `replicas` nor `autoscaling`.
pub const DEFAULT_REPLICAS: i32 = 1;

impl SecureChatModelSpec {
    /// The fixed pod count: `replicas`, or its default. None under
    /// autoscaling, where the autoscaler owns the count.
    pub fn fixed_replicas(&self) -> Option<i32> {
        match self.autoscaling {
            Some(_) => None,
            None => Some(self.replicas.unwrap_or(DEFAULT_REPLICAS)),
        }
    }

    /// The most pods the model may run: the fixed count, or
    /// `autoscaling.maxReplicas`. What a per-replica share of a limit is
    /// computed from, so the shares never add up to more than the limit.
    pub fn max_replicas(&self) -> i32 {
        match &self.autoscaling {
            Some(a) => a.max_replicas,
            None => self.replicas.unwrap_or(DEFAULT_REPLICAS),
        }
    }

    /// The fewest pods the model runs: the fixed count, or
    /// `autoscaling.minReplicas`.
    pub fn min_replicas(&self) -> i32 {
        match &self.autoscaling {
            Some(a) => a.min_replicas,
            None => self.replicas.unwrap_or(DEFAULT_REPLICAS),
        }
    }
}

/// The spec an empty `spec: {}` means, with every default filled in.
impl Default for SecureChatModelSpec {
    fn default() -> Self {
        Self {
            replicas: None,
            autoscaling: None,
            image: None,
            model: ModelSpec::default(),
            resources: ResourcesSpec::default(),
            scheduling: SchedulingSpec::default(),
            ports: PortsSpec::default(),
            tls: TlsSpec::default(),
            signing_keys: SigningKeysSpec::default(),
            auth: AuthSpec::default(),
            roles: RolesSpec::default(),
            rate_limit: RateLimitSpec::default(),
            cors: CorsSpec::default(),
            sensitive_data: SensitiveDataSpec::default(),
            network: NetworkSpec::default(),
            audit: AuditSpec::default(),
            serving: ServingSpec::default(),
            shared_state: None,
            web: WebSpec::default(),
            expose: None,
        }
    }
}
