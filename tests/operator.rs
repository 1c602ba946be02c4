//! The operator's reconcile loop against the real control plane: a
//! SecureChatModel becomes a hardened, GPU-scheduled Deployment that kwok
//! runs, a Service, a NetworkPolicy and status conditions; drift is
//! reverted; deleting the model garbage-collects what it owned.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use securechat_crds::SecureChatModel;
use securechat_crds::conditions::condition_status;
use securechat_crds::files::api_keys::ApiKeyTable;
use securechat_crds::files::config::ServerConfig;
use securechat_crds::files::keyset::SigningKeySet;
use securechat_operator::controller::{self, Context};
use securechat_operator::metrics::Metrics;
use securechat_test_support::cluster::{
    TestNamespace, await_condition, client, install_crds, wait_for,
};
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
    let state = Arc::new(Context::new(
        client.clone(),
        "securechat/server:test".into(),
        Arc::new(Metrics::new()),
    ));
    let namespaces = vec![ns.name.clone()];
    let operator = tokio::spawn(async move { controller::run(state, &namespaces).await });

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
    assert_eq!(
        ingress.len(),
        3,
        "one rule per served security-group rule, and the scraper's"
    );
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

    // Certificate, CA bundle, signing keys, API-key table and config exist,
    // in the formats the server reads, and the status points at them.
    let ready = models.get("chat").await.expect("model");
    let status = ready.status.expect("status");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let tls = secrets.get("chat-tls").await.expect("tls secret");
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let tls_data = tls.data.expect("tls data");
    assert!(String::from_utf8_lossy(&tls_data["tls.crt"].0).contains("BEGIN CERTIFICATE"));
    let dns = &tls.metadata.annotations.expect("annotations")["securechat.dev/dns-names"];
    assert!(dns.contains(&format!("chat.{}.svc", ns.name)), "{dns}");
    let bundle = Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .get("chat-ca-bundle")
        .await
        .expect("ca bundle");
    assert_eq!(
        bundle.data.expect("data")["ca.crt"].as_bytes(),
        tls_data["ca.crt"].0.as_slice()
    );
    let tls_status = status.tls.expect("tls status");
    assert!(tls_status.not_after.is_some() && tls_status.renew_at.is_some());
    let keys = secrets
        .get("chat-signing-keys")
        .await
        .expect("signing keys");
    let keyset: SigningKeySet =
        serde_json::from_slice(&keys.data.expect("data")["keyset.json"].0).expect("keyset");
    keyset.validate().expect("valid keyset");
    let active_kid = keyset.active().expect("active key").kid.clone();
    assert_eq!(
        status.signing_keys.expect("keys status").active_kid,
        Some(active_kid.clone())
    );
    let table = secrets.get("chat-api-keys").await.expect("api keys");
    let table: ApiKeyTable =
        serde_json::from_slice(&table.data.expect("data")["api-keys.json"].0).expect("table");
    assert!(table.keys.is_empty());
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .get("chat-config")
        .await
        .expect("config");
    ServerConfig::from_yaml(&config.data.expect("data")["config.yaml"])
        .expect("server config parses");

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

    // Reconciles do not re-issue key material.
    let keys = secrets
        .get("chat-signing-keys")
        .await
        .expect("signing keys");
    let again: SigningKeySet =
        serde_json::from_slice(&keys.data.expect("data")["keyset.json"].0).expect("keyset");
    assert_eq!(again.active().map(|k| k.kid.clone()), Some(active_kid));

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
