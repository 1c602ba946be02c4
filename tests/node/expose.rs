//! `spec.expose.service` NodePort on the real node (issue 6/9): the
//! operator's `<model>-external` Service, programmed by kube-proxy on
//! node-0, reached at the node's address and port from the host with the
//! model's certificate (verified against its CA, under its Service name)
//! and a minted key; `status.externalEndpoints` names that port.
//!
//! `network.ingress` still decides who comes in: the Service keeps the
//! client's address (`externalTrafficPolicy: Local`), so the model's
//! NetworkPolicy rule for the API port applies to callers through the
//! node port as to any other. A pod whose address the rule names connects
//! through the node port, one beside it does not. (The host itself is the
//! node: kube-router lets the node's own traffic through, as the kubelet's
//! probes need.)

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use securechat_crds::SecureChatModel;
use securechat_operator::labels::Names;
use securechat_test_support::cluster::node::{Node, connects};
use securechat_test_support::cluster::serving::https_client_resolving;
use securechat_test_support::cluster::{
    InProcessOperator, TestNamespace, client, install_crds, kubectl, wait_for,
};
use serde_json::{Value, json};

use crate::{consumer_credentials, create_cpu_model, create_key, ready_pod};

const SLEEP: &[&str] = &["/bin/sleep", "3600"];
const API_PORT: i32 = 8000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_port_reaches_the_model_with_its_certificate_and_its_network_rule() {
    let kube = client().await;
    let node = Node::get();
    let _turn = node.take_turn().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "node-expose").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;

    // Two callers on the node; the rule admits the first one's address.
    let pod_ip = |pod: &k8s_openapi::api::core::v1::Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("pod IP")
    };
    let role = json!({"role": "client"});
    let admitted = pod_ip(
        &node
            .client_pod(&kube, &ns.name, "admitted", role.clone(), SLEEP)
            .await,
    );
    node.client_pod(&kube, &ns.name, "refused", role, SLEEP)
        .await;
    let rule = format!("{admitted}/32");

    let spec = json!({
        "replicas": 1,
        "network": {"ingress": [{"port": API_PORT, "from": [rule]}]},
        "expose": {"service": {"type": "NodePort", "ports": ["Api"]}}
    });
    create_cpu_model(&kube, &node, &ns.name, "m", spec).await;
    create_key(&kube, &ns.name, "app", "m").await;
    ready_pod(&kube, &ns.name, "m").await;

    // The node port Kubernetes gave the API, and the status naming it.
    let services: Api<Service> = Api::namespaced(kube.clone(), &ns.name);
    let external = Names::external_service("m");
    let node_port = wait_for(
        "the external Service's node port",
        Duration::from_secs(60),
        || {
            let (services, external) = (services.clone(), external.clone());
            async move {
                let service = services.get_opt(&external).await.ok().flatten()?;
                let spec = service.spec?;
                assert_eq!(spec.type_.as_deref(), Some("NodePort"));
                assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
                let ports = spec.ports?;
                assert_eq!(ports.len(), 1, "only the API is exposed: {ports:?}");
                ports[0].node_port
            }
        },
    )
    .await;
    let endpoint = format!("NodePort {node_port} -> api (Service {external})");
    let models: Api<SecureChatModel> = Api::namespaced(kube.clone(), &ns.name);
    let listed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let status = models.get("m").await.ok().and_then(|m| m.status);
            if status.is_some_and(|s| s.external_endpoints.contains(&endpoint)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    if listed.is_err() {
        let (_, status, _) = kubectl(&[
            "-n",
            &ns.name,
            "get",
            "scm",
            "m",
            "-o",
            "jsonpath={.status}",
        ]);
        panic!("status.externalEndpoints does not say {endpoint:?} after 60s; status: {status}");
    }

    // The operator's rule for the API port names the caller's address.
    let policy = Api::<NetworkPolicy>::namespaced(kube.clone(), &ns.name)
        .get(&Names::network_policy("m"))
        .await
        .expect("the model's NetworkPolicy");
    let policy_json = serde_json::to_value(&policy).expect("policy json");
    let admits = policy_json["spec"]["ingress"]
        .as_array()
        .expect("ingress rules")
        .iter()
        .any(|r| {
            r["ports"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["port"] == API_PORT))
                && r["from"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f["ipBlock"]["cidr"] == rule))
        });
    assert!(admits, "no rule admits {rule} to {API_PORT}: {policy_json}");

    // From the host: node address and port, the model's CA, its Service
    // name, the minted key.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.crt");
    let key = consumer_credentials(&kube, &ns.name, "app", &ca).await;
    let host = format!("m.{}.svc", ns.name);
    let node_addr = SocketAddr::new(node.ip.parse().expect("node IP"), node_port as u16);
    let http = https_client_resolving(&ca, &host, node_addr).expect("client");
    let url = format!("https://{host}:{node_port}/v1/models");
    let models_body: Value = wait_for(
        &format!("GET {url} at {node_addr} answered 200 with the key"),
        Duration::from_secs(120),
        || {
            let (http, url, key) = (http.clone(), url.clone(), key.clone());
            async move {
                let r = http.get(url).bearer_auth(key).send().await.ok()?;
                if r.status() == 200 {
                    r.json().await.ok()
                } else {
                    None
                }
            }
        },
    )
    .await;
    assert!(
        models_body["data"][0]["id"].is_string(),
        "no model listed: {models_body}"
    );
    // Only the model's CA is trusted: a client that trusts another CA
    // (the control plane's) refuses the certificate.
    let other_ca = securechat_test_support::cluster::cluster_dir().join("pki/ca.crt");
    let wrong = https_client_resolving(&other_ca, &host, node_addr).expect("client");
    let refused = wrong.get(&url).bearer_auth(&key).send().await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_connect()),
        "a client trusting another CA connected: {refused:?}"
    );

    // Through the node port from pods: the rule's address comes in, the
    // one beside it does not (the client's address reaches the policy).
    let node_ip = node.ip.clone();
    let reach = |pod: &'static str| {
        let (namespace, node_ip) = (ns.name.clone(), node_ip.clone());
        move || {
            let (namespace, node_ip) = (namespace.clone(), node_ip.clone());
            async move {
                tokio::task::spawn_blocking(move || connects(&namespace, pod, &node_ip, node_port))
                    .await
                    .ok()
            }
        }
    };
    wait_for(
        "the admitted pod through the node port",
        Duration::from_secs(60),
        {
            let reach = reach("admitted");
            move || {
                let probe = reach();
                async move { probe.await.filter(|c| *c).map(|_| ()) }
            }
        },
    )
    .await;
    let refused_pod = reach("refused")().await.expect("connect task");
    assert!(
        !refused_pod,
        "a pod the rule does not name connected through the node port"
    );
}
