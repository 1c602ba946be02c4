//! The real node (issue 5/9): the operator's generated objects running as
//! real pods on node-0 (`make node-up`), beside the kwok nodes. Not part of
//! `cargo test --workspace` (Cargo.toml: `test = false`): `make test` runs
//! these after everything else, once it has brought the node up, so a node
//! failure is reported on its own. By hand:
//! `make cluster-up node-up && cargo test --test node`.
//!
//! Each test has its own namespace and takes its turn on the node
//! (`Node::take_turn`): the node is one per machine.

mod autoscaling;
mod chaos;
mod cpu_model;
mod expose;
mod metrics;
mod network_policy;
mod operator_pod;
mod rotation;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, ListParams, PostParams};
use securechat_crds::{ChatApiKey, SecureChatModel};
use securechat_operator::labels::Names;
use securechat_test_support::cluster::models::create_model;
use securechat_test_support::cluster::node::Node;
use securechat_test_support::cluster::{self, kubectl, wait_for};
use serde_json::{Value, json};

/// Creates SecureChatModel `name` to run on node-0's CPU: `spec` with the
/// node's server image and scheduling, and no GPU (other `resources` kept).
pub async fn create_cpu_model(
    kube: &kube::Client,
    node: &Node,
    namespace: &str,
    name: &str,
    mut spec: Value,
) {
    let fields = spec.as_object_mut().expect("the spec is an object");
    fields.insert("image".into(), json!(node.server_image));
    fields.insert("scheduling".into(), node.scheduling());
    let resources = fields.entry("resources").or_insert_with(|| json!({}));
    resources["gpu"] = json!({"count": 0});
    create_model(
        &Api::<SecureChatModel>::namespaced(kube.clone(), namespace),
        name,
        spec,
    )
    .await;
}

/// Creates a Developer ChatApiKey `name` for `model`, its consumer Secret
/// also called `name`.
pub async fn create_key(kube: &kube::Client, namespace: &str, name: &str, model: &str) {
    Api::<ChatApiKey>::namespaced(kube.clone(), namespace)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"modelRef": {"name": model}, "tier": "Developer", "secretName": name}
            }))
            .expect("a valid ChatApiKey"),
        )
        .await
        .expect("create a key");
}

/// What an app reads from consumer Secret `secret` once the operator has
/// written it: the model's CA (written to `ca`) and the API key (returned).
pub async fn consumer_credentials(
    kube: &kube::Client,
    namespace: &str,
    secret: &str,
    ca: &Path,
) -> String {
    let secrets = Api::<Secret>::namespaced(kube.clone(), namespace);
    let app = wait_for("the consumer Secret", Duration::from_secs(60), || {
        let secrets = secrets.clone();
        async move { secrets.get_opt(secret).await.ok().flatten() }
    })
    .await;
    let data = app.data.expect("consumer data");
    std::fs::write(ca, &data["ca.crt"].0).expect("write the model's CA");
    String::from_utf8(data[securechat_operator::api_keys::API_KEY].0.clone())
        .expect("the key is text")
}

/// The model's one pod once Ready, or a panic with what the kubelet said
/// (pod conditions, container states, events).
pub async fn ready_pod(kube: &kube::Client, namespace: &str, model: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), namespace);
    let selector = securechat_operator::labels::selector(model)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let found = tokio::time::timeout(Duration::from_secs(240), async {
        loop {
            let ready = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()
                .and_then(|list| {
                    // The Deployment's pod (a test may add look-alikes).
                    list.items.into_iter().find(|p| {
                        p.metadata.owner_references.is_some()
                            && p.status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .is_some_and(|c| {
                                    c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                                })
                    })
                });
            if let Some(pod) = ready {
                return pod;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    match found {
        Ok(pod) => pod,
        Err(_) => {
            let deployment = deployments.get_opt(model).await.ok().flatten();
            let (_, describe, _) = kubectl(&["-n", namespace, "describe", "pods", "-l", &selector]);
            panic!(
                "no Ready pod of {model} after 240s\ndeployment status: {:?}\n{describe}\nnode logs: {}",
                deployment.and_then(|d| d.status),
                cluster::state_dir().join("node/logs").display()
            );
        }
    }
}

/// The model's CA bundle (PEM) once the operator has published it: what a
/// scraper or client of the model trusts.
pub async fn model_ca_bundle(kube: &kube::Client, namespace: &str, model: &str) -> String {
    let bundles = Api::<ConfigMap>::namespaced(kube.clone(), namespace);
    let name = Names::ca_bundle(model);
    wait_for("the model's CA bundle", Duration::from_secs(60), || {
        let (bundles, name) = (bundles.clone(), name.clone());
        async move {
            bundles
                .get_opt(&name)
                .await
                .ok()
                .flatten()?
                .data?
                .remove("ca.crt")
        }
    })
    .await
}

/// The ClusterIP of Service `name` (kube-proxy routes it on node-0).
pub async fn cluster_ip(kube: &kube::Client, namespace: &str, name: &str) -> std::net::IpAddr {
    Api::<Service>::namespaced(kube.clone(), namespace)
        .get(name)
        .await
        .expect("service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP")
        .parse()
        .expect("an IP address")
}
