//! Who may reach the pods: `spec.ports`, `spec.network` (security-group
//! rules enforced as NetworkPolicies) and `spec.cors` (browser origins).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Container ports; both serve HTTPS only.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.api != self.web", "message": "ports: api and web must be different ports"}
]))]
pub struct PortsSpec {
    /// The OpenAI-compatible API (seed: 8000).
    #[serde(default = "default_api_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub api: i32,

    /// The web chat UI (seed: 8501).
    #[serde(default = "default_web_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub web: i32,
}

impl Default for PortsSpec {
    fn default() -> Self {
        Self {
            api: default_api_port(),
            web: default_web_port(),
        }
    }
}

/// The API's port when `ports.api` is not set (the seed's 8000).
pub const DEFAULT_API_PORT: i32 = 8000;
/// The web UI's port when `ports.web` is not set (the seed's 8501).
pub const DEFAULT_WEB_PORT: i32 = 8501;

fn default_api_port() -> i32 {
    DEFAULT_API_PORT
}
fn default_web_port() -> i32 {
    DEFAULT_WEB_PORT
}

/// Network access, as security-group rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Who may connect to which port. Each rule becomes one NetworkPolicy
    /// ingress rule. No rules: no ingress at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub ingress: Vec<IngressRule>,

    /// Extra destinations the pods may reach, besides DNS and what the model
    /// source and OIDC issuers need.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub egress: Vec<EgressRule>,

    /// Proxies (address ranges) in front of the pods whose
    /// `X-Forwarded-For` is believed: the brute-force guard then keys on
    /// the client address the proxy reports, so one throttled client behind
    /// a shared proxy does not lock out the others. Any other peer is keyed
    /// on its own address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub trusted_proxies: Vec<Cidr>,

    /// Who may scrape the pods' `/metrics` (served on ports.api, over
    /// HTTPS): an ingress rule of its own, so the default-deny policy does
    /// not hide the servers from Prometheus. By default the pods labelled
    /// `app.kubernetes.io/name: prometheus` (the Prometheus Operator's
    /// label) in the namespace named `monitoring`. It opens ports.api only
    /// (the chat routes still need credentials); ports.web stays closed.
    #[serde(default)]
    pub monitoring: MonitoringAccess,
}

/// The monitoring system's access to the metrics endpoint (ports.api),
/// e.g. `{fromNamespaces: {matchLabels: {kubernetes.io/metadata.name:
/// observability}}}`. Both selectors must match (namespace and pod); an
/// empty selector `{}` matches all. Set `enabled: false` to admit no
/// scraper.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.enabled || (has(self.fromNamespaces.matchLabels) && size(self.fromNamespaces.matchLabels) > 0) || (has(self.fromNamespaces.matchExpressions) && size(self.fromNamespaces.matchExpressions) > 0) || (has(self.fromPods.matchLabels) && size(self.fromPods.matchLabels) > 0) || (has(self.fromPods.matchExpressions) && size(self.fromPods.matchExpressions) > 0)",
     "message": "network.monitoring: fromNamespaces and fromPods cannot both be empty (that admits every pod in the cluster to the API port; use network.ingress for that, or enabled: false for no scraper)"}
]))]
pub struct MonitoringAccess {
    /// Whether the scraper is admitted (default true).
    #[serde(default = "monitoring_enabled")]
    pub enabled: bool,

    /// Namespaces the scraper runs in (default: the namespace named
    /// `monitoring`).
    #[serde(default = "default_monitoring_namespaces")]
    pub from_namespaces: LabelSelector,

    /// The scraper's pods in those namespaces (default:
    /// `app.kubernetes.io/name: prometheus`).
    #[serde(default = "default_monitoring_pods")]
    pub from_pods: LabelSelector,
}

/// The namespace `network.monitoring` admits by default.
pub const DEFAULT_MONITORING_NAMESPACE: &str = "monitoring";
/// The label (key, value) of the scraper pods `network.monitoring` admits
/// by default: what the Prometheus Operator puts on Prometheus's pods.
pub const DEFAULT_MONITORING_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "prometheus");

impl Default for MonitoringAccess {
    fn default() -> Self {
        Self {
            enabled: monitoring_enabled(),
            from_namespaces: default_monitoring_namespaces(),
            from_pods: default_monitoring_pods(),
        }
    }
}

fn monitoring_enabled() -> bool {
    true
}

fn match_labels(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(key.to_string(), value.to_string())].into()),
        match_expressions: None,
    }
}

fn default_monitoring_namespaces() -> LabelSelector {
    match_labels("kubernetes.io/metadata.name", DEFAULT_MONITORING_NAMESPACE)
}

fn default_monitoring_pods() -> LabelSelector {
    match_labels(
        DEFAULT_MONITORING_POD_LABEL.0,
        DEFAULT_MONITORING_POD_LABEL.1,
    )
}

/// Transport protocol of a rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Protocol {
    /// TCP, which both ports serve.
    #[default]
    TCP,
    /// UDP, e.g. for an egress rule to a DNS server.
    UDP,
}

/// One security-group style ingress rule, e.g.
/// `{port: 8000, from: ["10.0.0.0/16"], description: internal API}`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.from) && size(self.from) > 0) || has(self.fromNamespaces) || has(self.fromPods)",
     "message": "network.ingress: each rule needs a source: from (CIDRs), fromNamespaces or fromPods"}
]))]
pub struct IngressRule {
    /// Port the rule opens (must be one the pods serve: ports.api or
    /// ports.web).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Protocol (TCP).
    #[serde(default)]
    pub protocol: Protocol,

    /// Source address ranges in CIDR notation, e.g. `10.0.0.0/16` or
    /// `0.0.0.0/0`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub from: Vec<Cidr>,

    /// In-cluster sources: namespaces matching this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_namespaces: Option<LabelSelector>,

    /// In-cluster sources: pods matching this selector (in the namespaces
    /// selected by fromNamespaces, or the model's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pods: Option<LabelSelector>,

    /// What the rule is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub description: Option<String>,
}

/// One extra egress destination.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Destination port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Protocol (TCP).
    #[serde(default)]
    pub protocol: Protocol,

    /// Destination ranges in CIDR notation.
    #[schemars(length(min = 1, max = 64))]
    pub to: Vec<Cidr>,

    /// What the rule is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub description: Option<String>,
}

/// An IPv4 or IPv6 range in CIDR notation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Cidr(
    #[schemars(length(min = 3, max = 43))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isCIDR(self)", "message": "must be a CIDR such as 10.0.0.0/16 or 0.0.0.0/0"}
    ]))]
    pub String,
);

/// Cross-origin access.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorsSpec {
    /// Origins (scheme://host[:port]) allowed to call the API from a browser.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub allowed_origins: Vec<Origin>,
}

/// A browser origin such as `https://chat.example.com`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Origin(
    #[schemars(
        length(min = 8, max = 512),
        regex(pattern = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
    )]
    pub String,
);
