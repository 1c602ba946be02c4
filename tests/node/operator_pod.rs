//! The operator as the chart deploys it, a real pod on node-0 (issue 5/9):
//! its image, its ServiceAccount token and RBAC, leader election through
//! its Lease, and the API server reached from inside the pod through the
//! `kubernetes` Service. It then deploys a CPU model whose server pod also
//! runs on node-0 and becomes Ready.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use securechat_crds::SecureChatModel;
use securechat_test_support::cluster::node::{HostProcess, Node};
use securechat_test_support::cluster::{
    self, TestNamespace, client, install_crds, kubeconfig_path, kubectl, wait_for,
};
use serde_json::json;

use crate::ready_pod;

fn helm(args: &[&str]) -> String {
    let out = Command::new(cluster::tool("helm"))
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm uninstall` when the test ends, also when it panics.
struct Release {
    name: String,
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new(cluster::tool("helm"))
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args([
                "uninstall",
                &self.name,
                "-n",
                &self.namespace,
                "--wait=false",
            ])
            .output();
    }
}

/// `helm install` of the chart as `release`, watching `models_ns`, with the
/// node's images and `replicas` operator pods on node-0.
fn install(node: &Node, release: &Release, models_ns: &str, replicas: u32) {
    let (image_repo, image_tag) = node
        .operator_image
        .rsplit_once(':')
        .expect("operator image has a tag");
    let (server_repo, server_tag) = node
        .server_image
        .rsplit_once(':')
        .expect("server image has a tag");
    let scheduling = node.scheduling();
    let chart = cluster::repo_root().join("charts/securechat");
    helm(&[
        "install",
        &release.name,
        chart.to_str().expect("utf-8 path"),
        "-n",
        &release.namespace,
        "--set",
        &format!("watchNamespaces={{{models_ns}}}"),
        "--set",
        &format!("operator.replicas={replicas}"),
        "--set",
        &format!("operator.image.repository={image_repo}"),
        "--set",
        &format!("operator.image.tag={image_tag}"),
        "--set",
        &format!("serverImage.repository={server_repo}"),
        "--set",
        &format!("serverImage.tag={server_tag}"),
        "--set-json",
        &format!("operator.nodeSelector={}", scheduling["nodeSelector"]),
        "--set-json",
        &format!("operator.tolerations={}", scheduling["tolerations"]),
        "--wait=false",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_operator_runs_as_a_real_pod_and_deploys_a_model() {
    let kube = client().await;
    let node = Node::get();
    let _turn = node.take_turn().await;
    install_crds();
    let system = TestNamespace::create(&kube, "node-op").await;
    let models_ns = TestNamespace::create(&kube, "node-op-m").await;
    let release = Release {
        name: format!("sc{}", &system.name[system.name.len() - 6..]),
        namespace: system.name.clone(),
    };
    install(&node, &release, &models_ns.name, 1);
    let scheduling = node.scheduling();

    // The operator pod Ready on node-0 (its readiness needs the API).
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &system.name);
    let operator = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            if let Ok(list) = pods.list(&ListParams::default()).await
                && let Some(pod) = list.items.into_iter().find(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
            {
                return pod;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let (_, describe, _) = kubectl(&["-n", &system.name, "describe", "pods"]);
        let (_, logs, _) = kubectl(&[
            "-n",
            &system.name,
            "logs",
            "--all-containers",
            "-l",
            "app.kubernetes.io/name=securechat",
            "--tail=30",
        ]);
        panic!("the operator pod is not Ready after 180s:\n{describe}\nlogs:\n{logs}")
    });
    assert_eq!(
        operator.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(node.name.as_str())
    );

    // Leader election: the pod holds the chart's Lease.
    let leases: Api<Lease> = Api::namespaced(kube.clone(), &system.name);
    let holder = wait_for(
        "the operator pod to hold its Lease",
        Duration::from_secs(60),
        || {
            let leases = leases.clone();
            async move {
                let list = leases.list(&ListParams::default()).await.ok()?;
                list.items
                    .into_iter()
                    .find_map(|l| l.spec.and_then(|s| s.holder_identity))
            }
        },
    )
    .await;
    assert_eq!(holder, operator.name_any());

    // It reconciles: a CPU model in its watched namespace becomes a Ready
    // server pod on node-0, with the default server image the chart gave it.
    Api::<SecureChatModel>::namespaced(kube.clone(), &models_ns.name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
                "metadata": {"name": "m", "namespace": models_ns.name},
                "spec": {
                    "replicas": 1,
                    "resources": {"gpu": {"count": 0}},
                    "scheduling": scheduling
                }
            }))
            .unwrap(),
        )
        .await
        .expect("create the model");
    let server = ready_pod(&kube, &models_ns.name, "m").await;
    let spec = server.spec.expect("pod spec");
    assert_eq!(spec.node_name.as_deref(), Some(node.name.as_str()));
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some(node.server_image.as_str())
    );
    drop(release);
}

/// The chart's 2 operator replicas on node-0: one holds the Lease; the
/// leader crashes (SIGKILL, so it hands nothing over) and its pod goes, and
/// another pod (the standby, or the Deployment's replacement if it asks
/// first) takes the Lease once it expires and reconciles a model created
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_operator_pod_takes_over_when_the_leader_pod_dies() {
    let kube = client().await;
    let node = Node::get();
    let _turn = node.take_turn().await;
    install_crds();
    let system = TestNamespace::create(&kube, "node-ha").await;
    let models_ns = TestNamespace::create(&kube, "node-ha-m").await;
    let release = Release {
        name: format!("sc{}", &system.name[system.name.len() - 6..]),
        namespace: system.name.clone(),
    };
    install(&node, &release, &models_ns.name, 2);

    let pods: Api<Pod> = Api::namespaced(kube.clone(), &system.name);
    let ready = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none()
            && p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let operators: Vec<String> = wait_for(
        "2 operator pods Ready on node-0",
        Duration::from_secs(180),
        || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default()).await.ok()?;
                let names: Vec<String> = list
                    .items
                    .iter()
                    .filter(|p| ready(p))
                    .map(|p| p.name_any())
                    .collect();
                (names.len() == 2).then_some(names)
            }
        },
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(kube.clone(), &system.name);
    let lease = || {
        let leases = leases.clone();
        async move {
            leases
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find_map(|l| l.spec.filter(|s| s.holder_identity.is_some()))
        }
    };
    let first = wait_for("a leader", Duration::from_secs(60), lease).await;
    let leader = first.holder_identity.clone().expect("holder");
    assert!(operators.contains(&leader), "{leader} not in {operators:?}");
    let standby = operators
        .iter()
        .find(|n| **n != leader)
        .expect("a standby")
        .clone();

    // The leader crashes: its process SIGKILLed from the host, so it hands
    // nothing over, and its pod deleted so that it does not come back under
    // the same identity. A model is created once it is gone.
    let leader_pod = pods.get(&leader).await.expect("the leader pod");
    let container = leader_pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .expect("the leader's container id");
    let process = HostProcess::of_container(&node, &container);
    let deleted = std::time::Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &process.pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -KILL {}", process.pid);
    pods.delete(&leader, &Default::default())
        .await
        .expect("delete the leader pod");
    // Its process gone first, so that only the standby can deploy it.
    wait_for("the leader pod gone", Duration::from_secs(60), || {
        let pods = pods.clone();
        let leader = leader.clone();
        async move { pods.get_opt(&leader).await.ok()?.is_none().then_some(()) }
    })
    .await;
    let models = Api::<SecureChatModel>::namespaced(kube.clone(), &models_ns.name);
    models
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
                "metadata": {"name": "after", "namespace": models_ns.name},
                "spec": {"replicas": 1, "resources": {"gpu": {"count": 0}}}
            }))
            .unwrap(),
        )
        .await
        .expect("create a model");
    // The standby, or the replacement pod the Deployment started, whichever
    // asks first once the lease has expired.
    let taken = wait_for(
        "another operator pod to take the Lease",
        Duration::from_secs(120),
        || {
            let lease = lease();
            let leader = leader.clone();
            async move {
                lease
                    .await
                    .filter(|s| s.holder_identity.as_deref().is_some_and(|h| h != leader))
            }
        },
    )
    .await;
    let took = deleted.elapsed();
    let holder = taken.holder_identity.clone().expect("holder");
    let live: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .expect("operator pods")
        .items
        .iter()
        .filter(|p| ready(p))
        .map(|p| p.name_any())
        .collect();
    assert!(
        live.contains(&holder),
        "{holder} is not a live operator pod: {live:?}"
    );
    assert_eq!(
        taken.lease_transitions.unwrap_or(0),
        first.lease_transitions.unwrap_or(0) + 1,
        "one transition"
    );
    // The new leader reconciles: the model created meanwhile gets its
    // Deployment.
    let deployments =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(kube.clone(), &models_ns.name);
    wait_for(
        "the new leader to deploy the model created without a leader",
        Duration::from_secs(120),
        || {
            let deployments = deployments.clone();
            async move { deployments.get_opt("after").await.ok().flatten() }
        },
    )
    .await;
    println!(
        "{} {holder} took over {:.1}s after the leader {leader} was killed (lease {}s)",
        if holder == standby {
            "the standby"
        } else {
            "the replacement pod"
        },
        took.as_secs_f64(),
        first.lease_duration_seconds.unwrap_or(0)
    );
    drop(release);
}
