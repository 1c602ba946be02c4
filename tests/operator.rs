//! The operator's reconcile loop against the real control plane: a
//! SecureChatModel becomes a hardened, GPU-scheduled Deployment that kwok
//! runs, a Service, a NetworkPolicy and status conditions; drift is
//! reverted; deleting the model garbage-collects what it owned.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestNamespace, await_condition, client, install_crds, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use securechat_crds::SecureChatModel;
use securechat_crds::conditions::condition_status;
use securechat_operator::controller::{self, State};
use serde_json::json;

fn condition_is(model: Option<&SecureChatModel>, type_: &str, status: &str) -> bool {
    model
        .and_then(|m| m.status.as_ref())
        .is_some_and(|s| condition_status(&s.conditions, type_) == Some(status))
}

#[tokio::test]
async fn a_model_becomes_a_running_gpu_deployment_with_network_policy_and_status() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "operator").await;
    let state = Arc::new(State {
        client: client.clone(),
        default_image: "securechat/server:test".into(),
    });
    let namespace = ns.name.clone();
    let operator = tokio::spawn(async move { controller::run(state, Some(&namespace)).await });

    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": "chat"},
        "spec": {
            "replicas": 2,
            "resources": {"gpu": {"count": 1, "product": "NVIDIA-A100-SXM4-80GB"}},
            "network": {"ingress": [
                {"port": 8501, "from": ["0.0.0.0/0"], "description": "Web UI"},
                {"port": 8000, "from": ["10.0.0.0/16"], "description": "internal API"},
                {"port": 22, "from": ["203.0.113.7/32"], "description": "SSH"}
            ]}
        }
    }))
    .expect("valid model");
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create model");

    // Both replicas run on the two A100 nodes (one GPU each), placed by the
    // real scheduler and started by kwok.
    let available = await_condition(
        models.clone(),
        "chat",
        "Available=True",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| {
            condition_is(m, "Available", "True")
                && m.and_then(|m| m.status.as_ref())
                    .and_then(|s| s.ready_replicas)
                    == Some(2)
        },
    )
    .await;
    let status = available.status.expect("status");
    assert_eq!(status.replicas.as_deref(), Some("2/2"));
    assert_eq!(
        status.endpoint,
        Some(format!("https://chat.{}.svc:8000", ns.name))
    );
    assert_eq!(
        status.model.as_deref(),
        Some("SmolLM2-135M-Instruct (embedded)")
    );
    // The SSH rule is refused loudly, so the model is not Ready.
    assert_eq!(
        condition_status(&status.conditions, "NetworkReady"),
        Some("False")
    );
    assert_eq!(condition_status(&status.conditions, "Ready"), Some("False"));
    let network = status
        .conditions
        .iter()
        .find(|c| c.type_ == "NetworkReady")
        .expect("NetworkReady");
    assert!(
        network.message.contains("network.ingress[2]: port 22"),
        "{}",
        network.message
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=chat"))
        .await
        .expect("pods");
    let mut nodes: Vec<String> = list
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["gpu-a100-0", "gpu-a100-1"]);

    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), &ns.name)
        .get("chat")
        .await
        .expect("policy");
    let ingress = policy.spec.expect("spec").ingress.expect("ingress");
    assert_eq!(ingress.len(), 2, "one rule per served security-group rule");
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
        .get("chat")
        .await
        .expect("sa");
    assert_eq!(sa.automount_service_account_token, Some(false));
    Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name)
        .get("chat")
        .await
        .expect("PDB for 2 replicas");

    // Fixing the spec makes the model Ready.
    let fix = json!({"spec": {"network": {"ingress": [
        {"port": 8501, "from": ["0.0.0.0/0"], "description": "Web UI"},
        {"port": 8000, "from": ["10.0.0.0/16"], "description": "internal API"}
    ]}}});
    models
        .patch("chat", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .expect("patch");
    await_condition(
        models.clone(),
        "chat",
        "Ready=True",
        Duration::from_secs(60),
        |m: Option<&SecureChatModel>| condition_is(m, "Ready", "True"),
    )
    .await;

    // Drift is reverted: a deleted Service comes back, a hand-edited
    // replica count is restored.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .delete("chat", &DeleteParams::default())
        .await
        .expect("delete service");
    wait_for(
        "the Service to be recreated",
        Duration::from_secs(60),
        || {
            let services = services.clone();
            async move {
                services
                    .get_opt("chat")
                    .await
                    .ok()
                    .flatten()
                    .filter(|s| s.metadata.deletion_timestamp.is_none())
            }
        },
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deployments
        .patch("chat", &PatchParams::apply("someone-else").force(), &Patch::Apply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat"}, "spec": {"replicas": 5}
        })))
        .await
        .expect("drift");
    await_condition(
        deployments.clone(),
        "chat",
        "replicas restored to 2",
        Duration::from_secs(60),
        |d: Option<&Deployment>| d.and_then(|d| d.spec.replicas) == Some(2),
    )
    .await;

    // Scaling to one replica removes the PDB.
    models
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scale");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the PDB to be removed", Duration::from_secs(60), || {
        let pdbs = pdbs.clone();
        async move { matches!(pdbs.get_opt("chat").await, Ok(None)).then_some(()) }
    })
    .await;

    // Deleting the model garbage-collects its objects.
    models
        .delete("chat", &DeleteParams::foreground())
        .await
        .expect("delete model");
    wait_for(
        "the Deployment to be garbage-collected",
        Duration::from_secs(90),
        || {
            let deployments = deployments.clone();
            async move { matches!(deployments.get_opt("chat").await, Ok(None)).then_some(()) }
        },
    )
    .await;
    operator.abort();
}
