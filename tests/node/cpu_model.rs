//! A CPU SecureChatModel's Deployment, exactly as the operator renders it,
//! on the real kubelet: the hardening checked on the running process from
//! the host (uid, capabilities, seccomp, read-only root, no service-account
//! token, cgroup limits), its HTTPS probes passing, and a chat completion
//! answered through the Service's ClusterIP (kube-proxy) with the
//! certificate the operator issued and a key it minted.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use securechat_test_support::cluster::node::{HostProcess, Node};
use securechat_test_support::cluster::serving::https_client_resolving;
use securechat_test_support::cluster::{
    InProcessOperator, TestNamespace, client, install_crds, wait_for,
};

use serde_json::json;

use crate::{consumer_credentials, create_cpu_model, create_key, ready_pod};

/// The limits the model asks for, checked in the pod's cgroups.
const CPU_LIMIT_MILLIS: i64 = 1500;
const MEMORY_LIMIT: i64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_model_runs_hardened_on_the_real_node_and_answers_through_its_service() {
    let kube = client().await;
    let node = Node::get();
    let _turn = node.take_turn().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "node-cpu").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;

    let spec = json!({
        "replicas": 1,
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": format!("{CPU_LIMIT_MILLIS}m"), "memory": MEMORY_LIMIT.to_string()}
        },
        "network": {"ingress": [{"port": 8000, "from": ["0.0.0.0/0"]}]}
    });
    create_cpu_model(&kube, &node, &ns.name, "m", spec).await;
    create_key(&kube, &ns.name, "app", "m").await;

    // Ready means the kubelet's HTTPS readiness probe passed.
    let pod = ready_pod(&kube, &ns.name, "m").await;
    let spec = pod.spec.as_ref().expect("pod spec");
    assert_eq!(spec.node_name.as_deref(), Some(node.name.as_str()));
    let status = pod.status.as_ref().expect("pod status");
    let server = &status.container_statuses.as_ref().expect("statuses")[0];
    let process =
        HostProcess::of_container(&node, server.container_id.as_deref().expect("container id"));

    // Non-root: the image's user, as the Deployment says.
    let uids = process.status("Uid");
    assert!(uids.split_whitespace().all(|u| u == "65532"), "uids {uids}");
    // No capabilities, no privilege escalation, the runtime's seccomp filter.
    assert_eq!(process.status("CapEff"), "0000000000000000");
    assert_eq!(process.status("CapPrm"), "0000000000000000");
    assert_eq!(process.status("NoNewPrivs"), "1");
    assert_eq!(process.status("Seccomp"), "2", "seccomp mode filter");
    let root = process.root_mount_options();
    assert!(root.split(',').any(|o| o == "ro"), "root mounted {root}");
    // No service-account token anywhere it would be mounted.
    assert!(
        !process
            .path("/var/run/secrets/kubernetes.io/serviceaccount")
            .exists(),
        "a service-account token is mounted"
    );
    // The limits, as the kernel enforces them.
    let memory = std::fs::read_to_string(process.cgroup("memory").join("memory.limit_in_bytes"))
        .expect("memory limit");
    assert_eq!(memory.trim(), MEMORY_LIMIT.to_string());
    let cpu = process.cgroup("cpu");
    let quota: i64 = read_number(&cpu.join("cpu.cfs_quota_us"));
    let period: i64 = read_number(&cpu.join("cpu.cfs_period_us"));
    assert_eq!(quota * 1000 / period, CPU_LIMIT_MILLIS);

    // Through the Service's ClusterIP with the operator's certificate and
    // the minted key, from the consumer Secret as an app would read it.
    let cluster_ip = crate::cluster_ip(&kube, &ns.name, "m").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = consumer_credentials(&kube, &ns.name, "app", &dir.path().join("ca.crt")).await;
    let host = format!("m.{}.svc", ns.name);
    let http = https_client_resolving(
        &dir.path().join("ca.crt"),
        &host,
        SocketAddr::new(cluster_ip, 8000),
    )
    .expect("client");
    let base = format!("https://{host}:8000");
    // The key reaches the pod's mounted table through the kubelet's Secret
    // sync, which takes up to its sync period: retry until it is accepted.
    let models_body: serde_json::Value = wait_for(
        "the key accepted by the pod",
        Duration::from_secs(120),
        || {
            let (http, base, key) = (http.clone(), base.clone(), key.clone());
            async move {
                let r = http
                    .get(format!("{base}/v1/models"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .ok()?;
                if r.status() == 200 {
                    r.json().await.ok()
                } else {
                    None
                }
            }
        },
    )
    .await;
    let model_id = models_body["data"][0]["id"].as_str().expect("model id");
    let answer = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .timeout(Duration::from_secs(120))
        .json(&json!({
            "model": model_id,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8
        }))
        .send()
        .await
        .expect("chat completion");
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.expect("json answer");
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(!content.is_empty(), "an empty answer: {body}");

    // The liveness probe kept passing meanwhile: never restarted.
    let pod = Api::<Pod>::namespaced(kube.clone(), &ns.name)
        .get(pod.metadata.name.as_deref().expect("pod name"))
        .await
        .expect("pod");
    let restarts = pod
        .status
        .expect("status")
        .container_statuses
        .expect("statuses")[0]
        .restart_count;
    assert_eq!(restarts, 0);
}

fn read_number(path: &std::path::Path) -> i64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
