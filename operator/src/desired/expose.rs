//! `spec.expose`: the external Service, the Ingresses, the Gateway API
//! routes and the InferencePool, the NetworkPolicy rules that admit the
//! proxies in front, and the exposures refused because they would let
//! clients past `network.ingress`.
//!
//! The rule every path keeps: whoever `network.ingress` does not admit to a
//! port cannot reach it through an exposure either.
//! - Services keep the client's address (`externalTrafficPolicy: Local`),
//!   so the NetworkPolicy's ranges apply to real clients; a LoadBalancer
//!   also gets them as `loadBalancerSourceRanges`.
//! - An Ingress in re-encrypt mode is given the port's ranges as its
//!   allow-list (ingress-nginx `whitelist-source-range`); the NetworkPolicy
//!   admits the controller.
//! - A path that hides the client from both (TLS passthrough through an
//!   Ingress, any Gateway API route: the API has no client-address filter)
//!   is refused unless the port's rules admit every address.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule as K8sIngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use securechat_crds::files::names;
use securechat_crds::v1alpha1::{
    ExposedPort, ExternalServiceType, ProxyPeers, ProxyTlsMode, RouteExposure,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Input, RefusedRule};
use crate::labels::{self, Names};

/// Ranges meaning "every address".
const EVERYONE: [&str; 2] = ["0.0.0.0/0", "::/0"];

/// ingress-nginx's annotations (its documented names).
const NGINX: &str = "nginx.ingress.kubernetes.io";

impl Input<'_> {
    fn port_number(&self, port: ExposedPort) -> i32 {
        match port {
            ExposedPort::Api => self.model.spec.ports.api,
            ExposedPort::Web => self.model.spec.ports.web,
        }
    }

    /// The address ranges `network.ingress` admits to `port`.
    fn admitted_ranges(&self, port: ExposedPort) -> Vec<String> {
        let number = self.port_number(port);
        let mut ranges: Vec<String> = self
            .model
            .spec
            .network
            .ingress
            .iter()
            .filter(|r| r.port == number)
            .flat_map(|r| r.from.iter().map(|c| c.0.clone()))
            .collect();
        ranges.sort();
        ranges.dedup();
        ranges
    }

    fn open_to_everyone(&self, port: ExposedPort) -> bool {
        self.admitted_ranges(port)
            .iter()
            .any(|r| EVERYONE.contains(&r.as_str()))
    }
}

/// The Service's port name for `port` (the ClusterIP Service's names).
fn port_name(port: ExposedPort) -> &'static str {
    match port {
        ExposedPort::Api => "api",
        ExposedPort::Web => "web",
    }
}

/// `<name>-external`: NodePort or LoadBalancer, only the exposed ports,
/// client addresses kept.
pub fn external_service(input: &Input) -> Option<Service> {
    let exposed = input.model.spec.expose.as_ref()?.service.as_ref()?;
    let node_port = |port: ExposedPort| {
        let fixed = exposed.node_ports.as_ref()?;
        match port {
            ExposedPort::Api => fixed.api,
            ExposedPort::Web => fixed.web,
        }
    };
    let ports = exposed
        .ports
        .iter()
        .map(|&port| ServicePort {
            name: Some(port_name(port).into()),
            port: input.port_number(port),
            target_port: Some(IntOrString::String(port_name(port).into())),
            node_port: node_port(port),
            protocol: Some("TCP".into()),
            app_protocol: Some("https".into()),
        })
        .collect();
    let load_balancer = exposed.type_ == ExternalServiceType::LoadBalancer;
    let source_ranges: Vec<String> = {
        let mut all: Vec<String> = exposed
            .ports
            .iter()
            .flat_map(|&p| input.admitted_ranges(p))
            .collect();
        all.sort();
        all.dedup();
        all
    };
    let mut metadata = input.metadata(Names::external_service(&input.name));
    if !exposed.annotations.is_empty() {
        metadata.annotations = Some(exposed.annotations.clone());
    }
    Some(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(
                match exposed.type_ {
                    ExternalServiceType::NodePort => "NodePort",
                    ExternalServiceType::LoadBalancer => "LoadBalancer",
                }
                .into(),
            ),
            selector: Some(labels::selector(&input.name)),
            ports: Some(ports),
            // Keep the client's address, so the NetworkPolicy's ranges
            // apply to the real client and not to a node's SNAT address.
            external_traffic_policy: Some("Local".into()),
            load_balancer_source_ranges: (load_balancer && !source_ranges.is_empty())
                .then_some(source_ranges),
            load_balancer_class: exposed
                .load_balancer_class
                .clone()
                .filter(|_| load_balancer),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The external Service's endpoints as the API server holds it: node
/// ports (assigned by Kubernetes unless fixed) or the load balancer's
/// address once it has one.
pub fn service_endpoints(live: &Service) -> Vec<String> {
    let name = live.metadata.name.clone().unwrap_or_default();
    let Some(spec) = &live.spec else {
        return Vec::new();
    };
    let lb_address = live
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()));
    spec.ports
        .iter()
        .flatten()
        .map(|p| {
            let port_name = p.name.clone().unwrap_or_default();
            match (spec.type_.as_deref(), &lb_address) {
                (Some("LoadBalancer"), Some(address)) => {
                    format!(
                        "https://{address}:{}/ -> {port_name} (Service {name})",
                        p.port
                    )
                }
                (Some("LoadBalancer"), None) => {
                    format!(
                        "LoadBalancer port {} -> {port_name}, address pending (Service {name})",
                        p.port
                    )
                }
                _ => format!(
                    "NodePort {} -> {port_name} (Service {name})",
                    p.node_port
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "pending".into())
                ),
            }
        })
        .collect()
}

/// `https://<host>/` of an Ingress.
pub fn ingress_endpoints(ingress: &Ingress) -> Vec<String> {
    let name = ingress.metadata.name.clone().unwrap_or_default();
    ingress
        .spec
        .iter()
        .flat_map(|s| s.rules.iter().flatten())
        .filter_map(|r| r.host.as_ref())
        .map(|host| format!("https://{host}/ (Ingress {name})"))
        .collect()
}

/// `https://<hostname>/` of a route.
pub fn route_endpoints(kind: &str, name: &str, spec: &Value) -> Vec<String> {
    spec["hostnames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|host| format!("https://{host}/ ({kind} {name})"))
        .collect()
}

/// The Ingresses, and the ones refused (with why).
pub fn ingresses(input: &Input) -> (Vec<Ingress>, Vec<RefusedRule>) {
    let Some(expose) = input.model.spec.expose.as_ref() else {
        return (Vec::new(), Vec::new());
    };
    let mut refused = Vec::new();
    let mut built = Vec::new();
    for (index, exposure) in expose.ingresses.iter().enumerate() {
        let port = exposure.port;
        let number = input.port_number(port);
        let ranges = input.admitted_ranges(port);
        if exposure.mode == ProxyTlsMode::Passthrough && !input.open_to_everyone(port) {
            refused.push(RefusedRule {
                index,
                port: number,
                reason: format!(
                    "expose.ingresses[{index}]: TLS passthrough hides the client's address from \
                     the NetworkPolicy (it sees the controller), so it would admit anyone the \
                     controller does, and network.ingress admits only {} to port {number}; use \
                     mode Reencrypt (the ranges become the controller's allow-list) or admit \
                     0.0.0.0/0",
                    describe(&ranges)
                ),
            });
            continue;
        }
        if ranges.is_empty() {
            refused.push(RefusedRule {
                index,
                port: number,
                reason: format!(
                    "expose.ingresses[{index}]: network.ingress admits no address range to port \
                     {number}, so no client could come in through the Ingress; add a rule with \
                     `from` ranges for it"
                ),
            });
            continue;
        }
        let mut annotations =
            BTreeMap::from([(format!("{NGINX}/backend-protocol"), "HTTPS".to_string())]);
        match exposure.mode {
            ProxyTlsMode::Passthrough => {
                annotations.insert(format!("{NGINX}/ssl-passthrough"), "true".into());
            }
            ProxyTlsMode::Reencrypt => {
                annotations.extend([
                    (format!("{NGINX}/proxy-ssl-verify"), "on".to_string()),
                    (
                        format!("{NGINX}/proxy-ssl-secret"),
                        format!(
                            "{}/{}",
                            input.namespace,
                            Names::ca_bundle_secret(&input.name)
                        ),
                    ),
                    (format!("{NGINX}/proxy-ssl-name"), input.service_host()),
                    (format!("{NGINX}/proxy-ssl-server-name"), "on".to_string()),
                    (format!("{NGINX}/whitelist-source-range"), ranges.join(",")),
                ]);
            }
        }
        annotations.extend(exposure.annotations.clone());
        let mut metadata = input.metadata(Names::ingress(&input.name, port_name(port)));
        metadata.annotations = Some(annotations);
        built.push(Ingress {
            metadata,
            spec: Some(IngressSpec {
                ingress_class_name: Some(exposure.class_name.clone()),
                rules: Some(vec![K8sIngressRule {
                    host: Some(exposure.host.clone()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/".into()),
                            path_type: "Prefix".into(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: Names::service(&input.name),
                                    port: Some(ServiceBackendPort {
                                        name: Some(port_name(port).into()),
                                        number: None,
                                    }),
                                }),
                                resource: None,
                            },
                        }],
                    }),
                }]),
                tls: (exposure.mode == ProxyTlsMode::Reencrypt).then(|| {
                    vec![IngressTLS {
                        hosts: Some(vec![exposure.host.clone()]),
                        secret_name: exposure.tls_secret_name.clone(),
                    }]
                }),
                default_backend: None,
            }),
            ..Default::default()
        });
    }
    (built, refused)
}

fn describe(ranges: &[String]) -> String {
    if ranges.is_empty() {
        "no address range".into()
    } else {
        ranges.join(", ")
    }
}

/// `<name>-ca-bundle` as a Secret with `ca.crt`: what ingress-nginx's
/// `proxy-ssl-secret` verifies the pods with (it reads Secrets only). The
/// CA certificate only, never a key. Made only while a re-encrypting
/// Ingress uses it.
pub fn ca_bundle_secret(input: &Input, bundle: &ConfigMap) -> Option<Secret> {
    let uses = input.model.spec.expose.as_ref().is_some_and(|e| {
        e.ingresses
            .iter()
            .any(|i| i.mode == ProxyTlsMode::Reencrypt)
    });
    let pem = bundle.data.as_ref()?.get(names::CA_CERT)?;
    uses.then(|| Secret {
        metadata: input.metadata(Names::ca_bundle_secret(&input.name)),
        string_data: Some(BTreeMap::from([(names::CA_CERT.into(), pem.clone())])),
        type_: Some("Opaque".into()),
        ..Default::default()
    })
}

// Gateway API and Inference Extension objects, kept as JSON: their types
// are not in k8s-openapi, and the projects' own CRDs validate them.

/// `TLSRoute` (gateway.networking.k8s.io/v1), its spec as JSON.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "TLSRoute",
    plural = "tlsroutes",
    namespaced,
    schema = "disabled"
)]
pub struct TlsRouteSpec(pub Value);

/// `HTTPRoute` (gateway.networking.k8s.io/v1), its spec as JSON.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    plural = "httproutes",
    namespaced,
    schema = "disabled"
)]
pub struct HttpRouteSpec(pub Value);

/// `BackendTLSPolicy` (gateway.networking.k8s.io/v1), its spec as JSON.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "BackendTLSPolicy",
    plural = "backendtlspolicies",
    namespaced,
    schema = "disabled"
)]
pub struct BackendTlsPolicySpec(pub Value);

/// `InferencePool` (inference.networking.k8s.io/v1), its spec as JSON.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "inference.networking.k8s.io",
    version = "v1",
    kind = "InferencePool",
    plural = "inferencepools",
    namespaced,
    schema = "disabled"
)]
pub struct InferencePoolSpec(pub Value);

/// The Gateway API objects for `expose.routes`.
#[derive(Debug, Default)]
pub struct Routes {
    pub tls_routes: Vec<TLSRoute>,
    pub http_routes: Vec<HTTPRoute>,
    pub backend_tls_policies: Vec<BackendTLSPolicy>,
    pub refused: Vec<RefusedRule>,
}

pub fn routes(input: &Input) -> Routes {
    let mut out = Routes::default();
    let Some(expose) = input.model.spec.expose.as_ref() else {
        return out;
    };
    for (index, route) in expose.routes.iter().enumerate() {
        let number = input.port_number(route.port);
        if !input.open_to_everyone(route.port) {
            out.refused.push(RefusedRule {
                index,
                port: number,
                reason: format!(
                    "expose.routes[{index}]: a Gateway hides the client's address from the \
                     NetworkPolicy and the Gateway API has no client-address filter, so the \
                     route would admit anyone the Gateway does, and network.ingress admits \
                     only {} to port {number}; admit 0.0.0.0/0 to the port, or expose it with \
                     a Service or a re-encrypting Ingress",
                    describe(&input.admitted_ranges(route.port))
                ),
            });
            continue;
        }
        let name = Names::route(&input.name, port_name(route.port));
        let spec = route_spec(input, route);
        match route.mode {
            ProxyTlsMode::Passthrough => {
                let mut object = TLSRoute::new(&name, TlsRouteSpec(spec));
                object.metadata = input.metadata(name);
                out.tls_routes.push(object);
            }
            ProxyTlsMode::Reencrypt => {
                let mut object = HTTPRoute::new(&name, HttpRouteSpec(spec));
                object.metadata = input.metadata(name.clone());
                out.http_routes.push(object);
                let policy = json!({
                    "targetRefs": [{
                        "group": "",
                        "kind": "Service",
                        "name": Names::service(&input.name),
                        "sectionName": port_name(route.port),
                    }],
                    "validation": {
                        "caCertificateRefs": [{
                            "group": "",
                            "kind": "ConfigMap",
                            "name": Names::ca_bundle(&input.name),
                        }],
                        "hostname": input.service_host(),
                    },
                });
                let mut object = BackendTLSPolicy::new(&name, BackendTlsPolicySpec(policy));
                object.metadata = input.metadata(name);
                out.backend_tls_policies.push(object);
            }
        }
    }
    out
}

fn route_spec(input: &Input, route: &RouteExposure) -> Value {
    let parents: Vec<Value> = route
        .parent_refs
        .iter()
        .map(|p| {
            let mut parent =
                json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": p.name});
            if let Some(ns) = &p.namespace {
                parent["namespace"] = json!(ns);
            }
            if let Some(section) = &p.section_name {
                parent["sectionName"] = json!(section);
            }
            parent
        })
        .collect();
    json!({
        "parentRefs": parents,
        "hostnames": route.hostnames,
        "rules": [{
            "backendRefs": [{
                "name": Names::service(&input.name),
                "port": input.port_number(route.port),
            }],
        }],
    })
}

/// The InferencePool: the model's pods on the API port, picked by the
/// configured endpoint picker.
pub fn inference_pool(input: &Input) -> Option<InferencePool> {
    let pool = input.model.spec.expose.as_ref()?.inference_pool.as_ref()?;
    let spec = json!({
        "selector": {"matchLabels": labels::selector(&input.name)},
        "targetPorts": [{"number": input.model.spec.ports.api}],
        "endpointPickerRef": {
            "kind": "Service",
            "name": pool.endpoint_picker.service,
            "port": {"number": pool.endpoint_picker.port},
            "failureMode": pool.endpoint_picker.failure_mode,
        },
    });
    let name = Names::inference_pool(&input.name);
    let mut object = InferencePool::new(&name, InferencePoolSpec(spec));
    object.metadata = input.metadata(name);
    Some(object)
}

/// NetworkPolicy ingress rules admitting the proxies in front: the Ingress
/// controllers and gateways of the exposures that are not refused, and the
/// InferencePool's gateway and picker (to the API port).
pub fn proxy_ingress_rules(
    input: &Input,
    refused: &[RefusedRule],
) -> Vec<NetworkPolicyIngressRule> {
    let Some(expose) = input.model.spec.expose.as_ref() else {
        return Vec::new();
    };
    let is_refused = |reason_prefix: &str, index: usize| {
        refused
            .iter()
            .any(|r| r.index == index && r.reason.starts_with(reason_prefix))
    };
    let mut rules = Vec::new();
    for (index, i) in expose.ingresses.iter().enumerate() {
        if !is_refused("expose.ingresses", index) {
            rules.push(admit(&i.controller, input.port_number(i.port)));
        }
    }
    for (index, r) in expose.routes.iter().enumerate() {
        if !is_refused("expose.routes", index) {
            rules.push(admit(&r.gateway_pods, input.port_number(r.port)));
        }
    }
    if let Some(pool) = &expose.inference_pool {
        rules.push(admit(&pool.gateway_pods, input.model.spec.ports.api));
    }
    rules
}

fn admit(peers: &ProxyPeers, port: i32) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".into()),
            end_port: None,
        }]),
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(peers.namespaces.clone()),
            pod_selector: peers.pods.clone(),
            ip_block: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;

    fn input_of(spec: Value) -> SecureChatModelHolder {
        SecureChatModelHolder(model("chat", spec))
    }
    struct SecureChatModelHolder(securechat_crds::SecureChatModel);
    impl SecureChatModelHolder {
        fn input(&self) -> Input<'_> {
            Input::new(&self.0, "img").expect("input")
        }
    }

    fn seed_network() -> Value {
        // The seed's security group: web to the world, API to the VPC.
        json!({"ingress": [
            {"port": 8501, "from": ["0.0.0.0/0"]},
            {"port": 8000, "from": ["10.0.0.0/16"]}
        ]})
    }

    #[test]
    fn load_balancer_carries_only_the_exposed_ports_and_the_rules_ranges() {
        let m = input_of(json!({"network": seed_network(),
            "expose": {"service": {"type": "LoadBalancer", "ports": ["Api"]}}}));
        let svc = external_service(&m.input()).expect("service");
        assert_eq!(svc.metadata.name.as_deref(), Some("chat-external"));
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        let ports = spec.ports.expect("ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, 8000);
        assert_eq!(
            spec.load_balancer_source_ranges,
            Some(vec!["10.0.0.0/16".to_string()])
        );
    }

    #[test]
    fn node_port_keeps_fixed_ports_and_sets_no_source_ranges() {
        let m = input_of(json!({"network": seed_network(),
            "expose": {"service": {"type": "NodePort", "ports": ["Web", "Api"],
                                   "nodePorts": {"web": 30851}}}}));
        let spec = external_service(&m.input())
            .expect("service")
            .spec
            .expect("spec");
        let ports = spec.ports.expect("ports");
        assert_eq!(ports[0].node_port, Some(30851));
        assert_eq!(ports[1].node_port, None);
        assert_eq!(spec.load_balancer_source_ranges, None);
        assert!(external_service(&input_of(json!({})).input()).is_none());
    }

    #[test]
    fn reencrypting_ingress_gets_the_ranges_as_its_allow_list() {
        let m = input_of(json!({"network": seed_network(), "expose": {"ingresses": [{
            "port": "Api", "className": "nginx", "host": "chat.example.com", "mode": "Reencrypt",
            "controller": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
        }]}}));
        let (built, refused) = ingresses(&m.input());
        assert!(refused.is_empty(), "{refused:?}");
        let annotations = built[0].metadata.annotations.clone().expect("annotations");
        assert_eq!(
            annotations[&format!("{NGINX}/whitelist-source-range")],
            "10.0.0.0/16"
        );
        assert_eq!(
            annotations[&format!("{NGINX}/proxy-ssl-secret")],
            "team/chat-ca-bundle"
        );
        assert_eq!(
            annotations[&format!("{NGINX}/proxy-ssl-name")],
            "chat.team.svc"
        );
        let rules = proxy_ingress_rules(&m.input(), &refused);
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(8000))
        );
    }

    #[test]
    fn passthrough_is_refused_for_a_port_not_open_to_everyone() {
        let controller = json!({"namespaces": {"matchLabels": {"team": "edge"}}});
        let m = input_of(json!({"network": seed_network(), "expose": {"ingresses": [
            {"port": "Api", "className": "nginx", "host": "api.example.com", "mode": "Passthrough", "controller": controller},
            {"port": "Web", "className": "nginx", "host": "chat.example.com", "mode": "Passthrough", "controller": controller}
        ]}}));
        let (built, refused) = ingresses(&m.input());
        assert_eq!(built.len(), 1, "the web port is open to everyone");
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].reason.contains("10.0.0.0/16"),
            "{}",
            refused[0].reason
        );
        // The refused exposure opens nothing.
        let rules = proxy_ingress_rules(&m.input(), &refused);
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(8501))
        );
    }

    #[test]
    fn routes_pass_through_or_reencrypt_with_the_models_ca() {
        let gateway = json!({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "gw"}}});
        let m = input_of(json!({"network": seed_network(), "expose": {"routes": [
            {"port": "Web", "mode": "Reencrypt", "parentRefs": [{"name": "public", "namespace": "gw"}],
             "hostnames": ["chat.example.com"], "gatewayPods": gateway},
            {"port": "Api", "mode": "Passthrough", "parentRefs": [{"name": "public"}],
             "hostnames": ["api.example.com"], "gatewayPods": gateway}
        ]}}));
        let routes = routes(&m.input());
        assert_eq!(routes.http_routes.len(), 1);
        assert!(
            routes.tls_routes.is_empty(),
            "the API is not open to everyone"
        );
        assert_eq!(routes.refused.len(), 1);
        let policy = &routes.backend_tls_policies[0].spec.0;
        assert_eq!(
            policy["validation"]["caCertificateRefs"][0]["name"],
            "chat-ca-bundle"
        );
        assert_eq!(policy["validation"]["hostname"], "chat.team.svc");
        assert_eq!(
            routes.http_routes[0].spec.0["rules"][0]["backendRefs"][0]["port"],
            8501
        );
    }

    #[test]
    fn inference_pool_selects_the_pods_on_the_api_port() {
        let m = input_of(json!({"expose": {"inferencePool": {
            "endpointPicker": {"service": "chat-epp", "port": 9002},
            "gatewayPods": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "gw"}}}
        }}}));
        let pool = inference_pool(&m.input()).expect("pool");
        assert_eq!(pool.spec.0["targetPorts"][0]["number"], 8000);
        assert_eq!(
            pool.spec.0["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "chat"
        );
        assert_eq!(pool.spec.0["endpointPickerRef"]["failureMode"], "FailClose");
        assert_eq!(proxy_ingress_rules(&m.input(), &[]).len(), 1);
    }
}
