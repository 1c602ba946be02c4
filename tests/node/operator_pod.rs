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
use securechat_test_support::cluster::node::Node;
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
        &system.name,
        "--set",
        &format!("watchNamespaces={{{}}}", models_ns.name),
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

    // The operator pod Ready on node-0 (its readiness needs the API).
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &system.name);
    let operator = tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                if let Some(pod) = list.items.into_iter().find(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                }) {
                    return pod;
                }
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
