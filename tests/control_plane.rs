//! The local control plane is a real one: the real scheduler places pods by
//! GPU resources, taints and node selectors; kwok runs what it binds; the
//! controller-manager's garbage collector and deployment controller work.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::wait::conditions;
use securechat_test_support::cluster::{TestNamespace, await_condition, client, wait_for};
use serde_json::json;

const A100: &str = "NVIDIA-A100-SXM4-80GB";

fn pod(name: &str, gpus: u32, tolerate_gpu_taint: bool, selector: Option<(&str, &str)>) -> Pod {
    let mut spec = json!({
        "containers": [{
            "name": "main",
            "image": "registry.invalid/securechat-server:test",
            "resources": if gpus > 0 {
                json!({"limits": {"nvidia.com/gpu": gpus.to_string()}, "requests": {"nvidia.com/gpu": gpus.to_string()}})
            } else {
                json!({"requests": {"cpu": "100m"}})
            }
        }]
    });
    if tolerate_gpu_taint {
        spec["tolerations"] =
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
    }
    if let Some((k, v)) = selector {
        spec["nodeSelector"] = json!({k: v});
    }
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
    )
    .expect("valid pod")
}

async fn scheduled_node(pods: &Api<Pod>, name: &str) -> String {
    let pod = await_condition(
        pods.clone(),
        name,
        "pod to be scheduled",
        Duration::from_secs(60),
        |p: Option<&Pod>| {
            p.and_then(|p| p.spec.as_ref())
                .and_then(|s| s.node_name.as_ref())
                .is_some()
        },
    )
    .await;
    pod.spec.and_then(|s| s.node_name).unwrap_or_default()
}

#[tokio::test]
async fn scheduler_places_gpu_pods_on_matching_nodes_and_kwok_runs_them() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "sched").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    pods.create(
        &PostParams::default(),
        &pod("gpu", 1, true, Some(("nvidia.com/gpu.product", A100))),
    )
    .await
    .expect("create gpu pod");
    pods.create(&PostParams::default(), &pod("cpu", 0, false, None))
        .await
        .expect("create cpu pod");

    let gpu_node = scheduled_node(&pods, "gpu").await;
    assert!(
        gpu_node.starts_with("gpu-a100-"),
        "GPU pod landed on {gpu_node}"
    );
    let cpu_node = scheduled_node(&pods, "cpu").await;
    assert_eq!(
        cpu_node, "cpu-0",
        "a pod without the toleration must avoid the tainted GPU nodes"
    );

    let running = await_condition(
        pods.clone(),
        "gpu",
        "kwok to run the pod",
        Duration::from_secs(60),
        conditions::is_pod_running(),
    )
    .await;
    assert!(
        running.status.and_then(|s| s.pod_ip).is_some(),
        "kwok assigns a pod IP"
    );
}

#[tokio::test]
async fn a_pod_asking_for_more_gpus_than_any_a100_has_stays_pending() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "pending").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(
        &PostParams::default(),
        &pod("greedy", 2, true, Some(("nvidia.com/gpu.product", A100))),
    )
    .await
    .expect("create pod");

    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let message = wait_for("a FailedScheduling event", Duration::from_secs(60), || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=greedy"))
                .await
                .ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
                .and_then(|e| e.message)
        }
    })
    .await;
    assert!(message.contains("Insufficient nvidia.com/gpu"), "{message}");

    // The scheduler records the event and the pod condition separately.
    let pod = await_condition(
        pods.clone(),
        "greedy",
        "PodScheduled=False",
        Duration::from_secs(30),
        |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "PodScheduled" && c.status == "False")
                })
        },
    )
    .await;
    let status = pod.status.expect("status");
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let scheduled = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .expect("PodScheduled condition");
    assert_eq!(scheduled.reason.as_deref(), Some("Unschedulable"));
}

#[tokio::test]
async fn controller_manager_runs_deployments_and_collects_garbage() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "gc").await;

    // Deployment controller + ReplicaSet controller + scheduler + kwok.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": "registry.invalid/web:1"}]}
            }
        }
    }))
    .expect("valid deployment");
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");
    await_condition(
        deployments.clone(),
        "web",
        "Deployment Available",
        Duration::from_secs(90),
        conditions::is_deployment_completed(),
    )
    .await;

    // Garbage collector: deleting an owner removes its dependents.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let owner = config_maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create owner");
    let dependent = ConfigMap {
        metadata: ObjectMeta {
            name: Some("dependent".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "owner".into(),
                uid: owner.metadata.uid.clone().expect("uid"),
                ..Default::default()
            }]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    };
    config_maps
        .create(&PostParams::default(), &dependent)
        .await
        .expect("create dependent");
    config_maps
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    wait_for(
        "the garbage collector to delete the dependent",
        Duration::from_secs(60),
        || {
            let config_maps = config_maps.clone();
            async move { matches!(config_maps.get_opt("dependent").await, Ok(None)).then_some(()) }
        },
    )
    .await;

    // Deleting the Deployment takes its ReplicaSet and pods with it.
    deployments
        .delete("web", &DeleteParams::foreground())
        .await
        .expect("delete deployment");
    let pods: Api<Pod> = Api::namespaced(client, &ns.name);
    wait_for(
        "the deployment's pods to be collected",
        Duration::from_secs(90),
        || {
            let pods = pods.clone();
            async move {
                pods.list(&ListParams::default().labels("app=web"))
                    .await
                    .ok()
                    .filter(|l| l.items.is_empty())
                    .map(|_| ())
            }
        },
    )
    .await;
}
