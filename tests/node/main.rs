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

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use securechat_test_support::cluster::{self, kubectl};

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
