//! The model's NetworkPolicy: the spec's security-group rules, with default
//! deny both ways, and the rules that cannot be expressed reported, not dropped.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use securechat_crds::v1alpha1::{
    IngressRule, MonitoringAccess, Protocol, SharedStateNetwork, SharedStateSpec,
};

use super::Input;
use crate::labels::{self, Names};

/// A security-group rule that cannot become a NetworkPolicy rule, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRule {
    pub index: usize,
    pub port: i32,
    pub reason: String,
}

/// The policy to apply plus the rules that were refused (reported as the
/// NetworkReady condition, never silently dropped).
#[derive(Debug, Clone)]
pub struct NetworkPolicyPlan {
    pub policy: NetworkPolicy,
    pub refused: Vec<RefusedRule>,
}

/// Default deny in both directions for the model's pods, then one ingress
/// rule per security-group rule, and egress only to DNS, to what the model
/// source and OIDC issuers need, and to the user's egress rules.
pub fn network_policy(input: &Input) -> NetworkPolicyPlan {
    let spec = &input.model.spec;
    let served = [spec.ports.api, spec.ports.web];
    let mut refused = Vec::new();
    let mut ingress = Vec::new();
    for (index, rule) in spec.network.ingress.iter().enumerate() {
        if !served.contains(&rule.port) {
            refused.push(RefusedRule {
                index,
                port: rule.port,
                reason: format!(
                    "network.ingress[{index}]: port {} is not served by the pods (api {}, web {}); \
                     a pod has no SSH or other ports, so this rule cannot apply",
                    rule.port, spec.ports.api, spec.ports.web
                ),
            });
            continue;
        }
        ingress.push(ingress_rule(rule));
    }
    if let Some(rule) = monitoring_ingress(&spec.network.monitoring, spec.ports.api) {
        ingress.push(rule);
    }
    // The proxies in front of exposed ports; an exposure that would let
    // clients past the rules above is refused here and opens nothing.
    let (_, mut exposure_refused) = super::expose::ingresses(input);
    exposure_refused.extend(super::expose::routes(input).refused);
    ingress.extend(super::expose::proxy_ingress_rules(input, &exposure_refused));
    refused.extend(exposure_refused);

    let mut egress = vec![dns_egress()];
    // A Hugging Face source is fetched over HTTPS, and OIDC discovery/JWKS
    // too; their addresses are not known in advance, so 443 is opened to
    // all destinations only when one of them is configured.
    // So are the plain-OAuth2 sign-in providers' token and user-info
    // endpoints (spec.web.sso).
    if spec.model.source.hugging_face.is_some()
        || !spec.auth.oidc.is_empty()
        || !spec.web.sso.is_empty()
    {
        egress.push(NetworkPolicyEgressRule {
            ports: Some(vec![port(443, Protocol::TCP)]),
            to: Some(vec![ip_block("0.0.0.0/0"), ip_block("::/0")]),
        });
    }
    for rule in &spec.network.egress {
        egress.push(NetworkPolicyEgressRule {
            ports: Some(vec![port(rule.port, rule.protocol)]),
            to: Some(rule.to.iter().map(|c| ip_block(&c.0)).collect()),
        });
    }

    if let Some(rule) = spec.shared_state.as_ref().and_then(shared_state_egress) {
        egress.push(rule);
    }

    let policy = NetworkPolicy {
        metadata: input.metadata(Names::network_policy(&input.name)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::selector(&input.name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    };
    NetworkPolicyPlan { policy, refused }
}

fn ingress_rule(rule: &IngressRule) -> NetworkPolicyIngressRule {
    let mut from: Vec<NetworkPolicyPeer> = rule.from.iter().map(|c| ip_block(&c.0)).collect();
    match (&rule.from_namespaces, &rule.from_pods) {
        (None, None) => {}
        // Both set: pods matching fromPods in namespaces matching
        // fromNamespaces (one peer, so the selectors AND).
        (namespaces, pods) => from.push(NetworkPolicyPeer {
            namespace_selector: namespaces.clone(),
            pod_selector: pods.clone(),
            ip_block: None,
        }),
    }
    NetworkPolicyIngressRule {
        ports: Some(vec![port(rule.port, rule.protocol)]),
        from: Some(from),
    }
}

/// The scraper's way to `/metrics`, which the API port serves: that port
/// only, from the monitoring pods in the monitoring namespaces (one peer, so
/// both selectors must match). None when monitoring is disabled.
fn monitoring_ingress(
    monitoring: &MonitoringAccess,
    api_port: i32,
) -> Option<NetworkPolicyIngressRule> {
    monitoring.enabled.then(|| NetworkPolicyIngressRule {
        ports: Some(vec![port(api_port, Protocol::TCP)]),
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(monitoring.from_namespaces.clone()),
            pod_selector: Some(monitoring.from_pods.clone()),
            ip_block: None,
        }]),
    })
}

/// Egress to the shared store's port, towards where `sharedState.network`
/// says it runs: a NetworkPolicy matches addresses and labels, never a
/// host name, so `address` gives only the port. None for an address
/// without a valid port (admission refuses those; the reconcile then stops
/// at a refusal naming it).
fn shared_state_egress(store: &SharedStateSpec) -> Option<NetworkPolicyEgressRule> {
    let port_number = i32::from(store.port()?);
    let SharedStateNetwork {
        to,
        to_namespaces,
        to_pods,
    } = &store.network;
    let mut peers: Vec<NetworkPolicyPeer> = to.iter().map(|c| ip_block(&c.0)).collect();
    if to_namespaces.is_some() || to_pods.is_some() {
        // One peer, so the selectors AND: the store's pods in the store's
        // namespaces (toPods alone: in the model's namespace).
        peers.push(NetworkPolicyPeer {
            namespace_selector: to_namespaces.clone(),
            pod_selector: to_pods.clone(),
            ip_block: None,
        });
    }
    Some(NetworkPolicyEgressRule {
        ports: Some(vec![port(port_number, Protocol::TCP)]),
        to: Some(peers),
    })
}

fn port(number: i32, protocol: Protocol) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some(match protocol {
            Protocol::TCP => "TCP".into(),
            Protocol::UDP => "UDP".into(),
        }),
        end_port: None,
    }
}

fn ip_block(cidr: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_string(),
            except: None,
        }),
        ..Default::default()
    }
}

fn dns_egress() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        ports: Some(vec![port(53, Protocol::UDP), port(53, Protocol::TCP)]),
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    "kube-system".to_string(),
                )])),
                ..Default::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "k8s-app".to_string(),
                    "kube-dns".to_string(),
                )])),
                ..Default::default()
            }),
            ip_block: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;
    use securechat_crds::v1alpha1::DEFAULT_API_PORT;
    use serde_json::json;

    fn plan(spec: serde_json::Value) -> NetworkPolicyPlan {
        let m = model("chat", spec);
        network_policy(&Input::new(&m, "img").expect("input"))
    }

    #[test]
    fn empty_spec_admits_only_the_scraper_and_allows_only_dns_egress() {
        let p = plan(json!({}));
        let spec = p.policy.spec.expect("spec");
        assert_eq!(
            spec.policy_types,
            Some(vec!["Ingress".to_string(), "Egress".to_string()])
        );
        // The one rule: Prometheus in `monitoring`, to the API port.
        let ingress = spec.ingress.expect("ingress");
        assert_eq!(ingress.len(), 1);
        assert_eq!(
            ingress[0].ports,
            Some(vec![port(DEFAULT_API_PORT, Protocol::TCP)])
        );
        let peer = &ingress[0].from.as_ref().expect("from")[0];
        let labels = |s: &Option<LabelSelector>| {
            s.as_ref()
                .and_then(|s| s.match_labels.clone())
                .expect("matchLabels")
        };
        assert_eq!(
            labels(&peer.namespace_selector),
            BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "monitoring".to_string()
            )])
        );
        assert_eq!(
            labels(&peer.pod_selector),
            BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "prometheus".to_string()
            )])
        );
        assert!(peer.ip_block.is_none());
        let egress = spec.egress.expect("egress");
        assert_eq!(egress.len(), 1);
        assert!(
            egress[0]
                .ports
                .as_ref()
                .expect("ports")
                .iter()
                .all(|p| p.port == Some(IntOrString::Int(53)))
        );
        assert!(p.refused.is_empty());
    }

    #[test]
    fn the_scraper_rule_follows_the_api_port_and_its_selectors_or_goes() {
        let p = plan(json!({"ports": {"api": 9443}, "network": {"monitoring": {
            "fromNamespaces": {"matchLabels": {"team": "obs"}},
            "fromPods": {}
        }}}));
        let ingress = p.policy.spec.expect("spec").ingress.expect("ingress");
        assert_eq!(ingress.len(), 1);
        assert_eq!(ingress[0].ports, Some(vec![port(9443, Protocol::TCP)]));
        let peer = &ingress[0].from.as_ref().expect("from")[0];
        assert_eq!(
            peer.namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(BTreeMap::from([("team".to_string(), "obs".to_string())]))
        );
        // {}: every pod in those namespaces.
        assert_eq!(peer.pod_selector, Some(LabelSelector::default()));

        let p = plan(json!({"network": {"monitoring": {"enabled": false}}}));
        assert_eq!(p.policy.spec.expect("spec").ingress, Some(vec![]));
    }

    #[test]
    fn seed_security_group_rules_become_ingress_rules_and_ssh_is_refused() {
        let p = plan(json!({"network": {"ingress": [
            {"port": 8501, "from": ["0.0.0.0/0"], "description": "Web"},
            {"port": 8000, "from": ["10.0.0.0/16"], "description": "internal API"},
            {"port": 22, "from": ["203.0.113.7/32"], "description": "SSH"}
        ]}}));
        let ingress = p.policy.spec.expect("spec").ingress.expect("ingress");
        assert_eq!(ingress.len(), 3, "two user rules and the scraper");
        assert_eq!(
            ingress[1].ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(8000))
        );
        let cidr = ingress[1].from.as_ref().expect("from")[0]
            .ip_block
            .as_ref()
            .expect("ipBlock")
            .cidr
            .clone();
        assert_eq!(cidr, "10.0.0.0/16");
        assert_eq!(p.refused.len(), 1);
        assert_eq!((p.refused[0].index, p.refused[0].port), (2, 22));
        assert!(p.refused[0].reason.contains("network.ingress[2]"));
    }

    #[test]
    fn in_cluster_sources_become_selectors() {
        let p = plan(json!({"network": {"ingress": [
            {"port": 8000, "fromNamespaces": {"matchLabels": {"team": "apps"}}, "fromPods": {"matchLabels": {"role": "client"}}}
        ]}}));
        let ingress = p.policy.spec.expect("spec").ingress.expect("ingress");
        let peer = &ingress[0].from.as_ref().expect("from")[0];
        assert!(
            peer.namespace_selector.is_some()
                && peer.pod_selector.is_some()
                && peer.ip_block.is_none()
        );
    }

    #[test]
    fn oidc_or_hugging_face_opens_https_egress_and_user_rules_are_added() {
        let p = plan(json!({
            "auth": {"oidc": [{"issuerURL": "https://idp.example.com", "audience": "chat"}]},
            "network": {"egress": [{"port": 5432, "to": ["10.1.0.0/16"]}]}
        }));
        let egress = p.policy.spec.expect("spec").egress.expect("egress");
        assert_eq!(egress.len(), 3);
        assert_eq!(
            egress[1].ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(443))
        );
        assert_eq!(
            egress[2].ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(5432))
        );
    }

    #[test]
    fn an_oauth2_sign_in_provider_opens_https_egress() {
        let p = plan(json!({"web": {"sso": [{
            "name": "wecom", "kind": "WeCom", "clientId": "ww1", "clientSecretName": "s",
            "wecom": {"agentId": "1000002"}
        }]}}));
        let egress = p.policy.spec.expect("spec").egress.expect("egress");
        assert_eq!(egress.len(), 2, "DNS and 443");
        assert_eq!(
            egress[1].ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(443))
        );
    }

    #[test]
    fn the_shared_store_gets_one_egress_rule_to_its_port_and_peers() {
        let egress = |shared_state: serde_json::Value| {
            plan(json!({ "sharedState": shared_state }))
                .policy
                .spec
                .expect("spec")
                .egress
                .expect("egress")
        };
        // An external Redis: its address ranges.
        let rules = egress(json!({"address": "redis.example.com:6380",
            "network": {"to": ["192.0.2.0/24", "2001:db8::/64"]}}));
        assert_eq!(rules.len(), 2, "DNS and the store");
        let store = &rules[1];
        assert_eq!(store.ports, Some(vec![port(6380, Protocol::TCP)]));
        let cidrs: Vec<_> = store
            .to
            .iter()
            .flatten()
            .map(|p| p.ip_block.as_ref().expect("ipBlock").cidr.as_str())
            .collect();
        assert_eq!(cidrs, ["192.0.2.0/24", "2001:db8::/64"]);

        // An in-cluster Valkey: its pods in its namespace, one peer.
        let rules = egress(json!({"address": "valkey.infra.svc:6379", "network": {
            "toNamespaces": {"matchLabels": {"kubernetes.io/metadata.name": "infra"}},
            "toPods": {"matchLabels": {"app.kubernetes.io/name": "valkey"}}}}));
        let peers = rules[1].to.clone().expect("to");
        assert_eq!(peers.len(), 1);
        assert!(
            peers[0].namespace_selector.is_some()
                && peers[0].pod_selector.is_some()
                && peers[0].ip_block.is_none()
        );
        assert_eq!(rules[1].ports, Some(vec![port(6379, Protocol::TCP)]));

        // Pods alone: the model's own namespace (no namespace selector).
        let rules = egress(json!({"address": "[fd00::7]:6379",
            "network": {"toPods": {"matchLabels": {"app": "valkey"}}}}));
        let peers = rules[1].to.clone().expect("to");
        assert!(peers[0].namespace_selector.is_none() && peers[0].pod_selector.is_some());

        // No sharedState, no rule.
        assert_eq!(egress(serde_json::Value::Null).len(), 1);
    }
}
