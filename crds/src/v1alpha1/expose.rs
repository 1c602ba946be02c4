//! `spec.expose`: reaching the model from outside the cluster (a NodePort
//! or LoadBalancer Service, an Ingress, Gateway API routes), and publishing
//! its pods to the Gateway API Inference Extension as an InferencePool.
//!
//! `spec.network.ingress` still decides who may come in: every path keeps
//! the client's address visible to the NetworkPolicy (Services use
//! `externalTrafficPolicy: Local`) or carries the rule's ranges to the
//! proxy in front (an Ingress in re-encrypt mode); a path that would hide
//! the client from both is refused unless the port is open to everyone.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the model is reached from outside the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposeSpec {
    /// A second Service, `<name>-external`, of type NodePort or
    /// LoadBalancer, carrying only the listed ports (the seed opens the
    /// web UI to the world and the API only to a VPC range: expose `Web`
    /// here and keep the API in-cluster, or expose both and let
    /// `network.ingress` say who may connect to which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ExternalServiceSpec>,

    /// Ingresses, one per exposed port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(a, self.exists_one(b, a.port == b.port))",
         "message": "expose.ingresses: at most one Ingress per port"}
    ]))]
    pub ingresses: Vec<IngressExposure>,

    /// Gateway API routes, one per exposed port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(a, self.exists_one(b, a.port == b.port))",
         "message": "expose.routes: at most one route per port"}
    ]))]
    pub routes: Vec<RouteExposure>,

    /// Publish the pods as a Gateway API Inference Extension
    /// `InferencePool` (inference.networking.k8s.io/v1), for gateways with
    /// an endpoint picker (llm-d, Envoy AI Gateway, agentgateway). Needs
    /// the extension's CRDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_pool: Option<InferencePoolExposure>,
}

/// One of the model's two ports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExposedPort {
    /// `ports.api`: the OpenAI-compatible API.
    Api,
    /// `ports.web`: the web chat UI.
    Web,
}

/// Type of the external Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExternalServiceType {
    /// A port on every node (30000-32767).
    NodePort,
    /// A cloud load balancer; `loadBalancerSourceRanges` is set from
    /// `network.ingress` (the union of the exposed ports' rule ranges).
    LoadBalancer,
}

/// The external Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalServiceSpec {
    /// NodePort or LoadBalancer.
    #[serde(rename = "type")]
    pub type_: ExternalServiceType,

    /// Which ports it carries.
    #[schemars(length(min = 1, max = 2))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub ports: Vec<ExposedPort>,

    /// Fixed node ports; unset, Kubernetes picks free ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ports: Option<NodePorts>,

    /// The load balancer implementation (`spec.loadBalancerClass`), e.g.
    /// `service.k8s.aws/nlb`. Unset: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub load_balancer_class: Option<String>,

    /// Annotations for the load balancer controller (e.g. an internal
    /// load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Fixed node ports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.api) || !has(self.web) || self.api != self.web",
     "message": "expose.service.nodePorts: api and web must differ"}
]))]
pub struct NodePorts {
    /// Node port of the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub api: Option<i32>,
    /// Node port of the web UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub web: Option<i32>,
}

/// How a proxy in front of the pods carries TLS: our pods always terminate
/// TLS themselves, with the certificate from the model's CA.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ProxyTlsMode {
    /// The proxy forwards the TLS stream untouched (SNI routing); clients
    /// see the model's own certificate and need its CA bundle. The proxy
    /// hides the client's address from the NetworkPolicy, so the port's
    /// `network.ingress` rules must admit every address (`0.0.0.0/0`).
    Passthrough,
    /// The proxy terminates TLS with its own certificate and opens a new
    /// TLS connection to the pod, verifying it with the model's CA bundle
    /// (ConfigMap `<name>-ca-bundle`).
    Reencrypt,
}

/// The proxy's pods, admitted to the exposed port by the NetworkPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyPeers {
    /// Namespaces the proxy runs in, e.g.
    /// `{matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}`.
    pub namespaces: LabelSelector,

    /// The proxy's pods in those namespaces. Unset: every pod there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<LabelSelector>,
}

/// One Ingress for one port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressExposure {
    /// The port it routes to.
    pub port: ExposedPort,

    /// `spec.ingressClassName`, e.g. `nginx`.
    #[schemars(length(min = 1, max = 253))]
    pub class_name: String,

    /// The host name clients use.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
         "message": "expose.ingresses[].host: must be a DNS name, e.g. chat.example.com"}
    ]))]
    pub host: String,

    /// `Passthrough` or `Reencrypt`. The annotations written for each are
    /// ingress-nginx's (`ssl-passthrough`; `backend-protocol: HTTPS` with
    /// `proxy-ssl-*` and `whitelist-source-range`); for another controller
    /// add its own under `annotations`.
    pub mode: ProxyTlsMode,

    /// The controller's pods.
    pub controller: ProxyPeers,

    /// For `Reencrypt`: the Secret (in this namespace) with the proxy's
    /// certificate for `host`. Unset: the controller's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,

    /// Extra annotations for the Ingress controller.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One Gateway API route for one port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteExposure {
    /// The port it routes to.
    pub port: ExposedPort,

    /// `Passthrough`: a `TLSRoute` (gateway.networking.k8s.io/v1) to a
    /// TLS listener in Passthrough mode. `Reencrypt`: an `HTTPRoute` plus a
    /// `BackendTLSPolicy` that makes the gateway verify the pods with the
    /// model's CA bundle. The gateway hides the client's address, so either
    /// way the port's `network.ingress` rules must admit every address.
    pub mode: ProxyTlsMode,

    /// The Gateways (and listeners) the route attaches to.
    #[schemars(length(min = 1, max = 8))]
    pub parent_refs: Vec<GatewayParent>,

    /// Host names the route answers (SNI for Passthrough).
    #[schemars(length(min = 1, max = 16))]
    pub hostnames: Vec<String>,

    /// The gateway's data-plane pods.
    pub gateway_pods: ProxyPeers,
}

/// A Gateway the route attaches to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParent {
    /// The Gateway's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace. Unset: the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// One of its listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

/// The InferencePool and who may use it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolExposure {
    /// The endpoint picker's Service (in this namespace) and port, e.g.
    /// llm-d's or the extension's reference EPP, configured with our
    /// metric names (see the chart README).
    pub endpoint_picker: EndpointPicker,

    /// The gateway's data-plane pods and the endpoint picker's pods: both
    /// are admitted to the API port (the picker reads `/metrics` there).
    pub gateway_pods: ProxyPeers,
}

/// The endpoint picker extension.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPicker {
    /// Its Service's name.
    #[schemars(length(min = 1, max = 253))]
    pub service: String,
    /// Its Service port (gRPC ext-proc).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// What the gateway does when the picker does not answer: `FailClose`
    /// (default: refuse) or `FailOpen` (route without it).
    #[serde(default)]
    pub failure_mode: PickerFailureMode,
}

/// The InferencePool's `endpointPickerRef.failureMode`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PickerFailureMode {
    /// Refuse requests while the picker is down.
    #[default]
    FailClose,
    /// Route without the picker while it is down.
    FailOpen,
}
