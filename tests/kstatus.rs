//! What GitOps tools make of our resources' status (issue 26): kstatus
//! (sigs.k8s.io/cli-utils/pkg/kstatus, what Flux's health checks compute),
//! run on the objects the real API server holds. A Ready model or key is
//! Current, one on its way InProgress, and one that cannot get there
//! without a user's change (2 GPUs on an A100 selector, a ChatApiKey whose
//! model does not exist) Failed with our reason, so a `wait: true` apply
//! fails at once instead of waiting out its timeout.
//!
//! kstatus is built by `make tools` (tests/cluster/kstatus, a wrapper
//! main that prints the status kstatus computes for one object).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use kube::api::{Api, PostParams};
use securechat_crds::conditions::condition_status;
use securechat_crds::v1alpha1::{ChatApiKey, SecureChatModel};
use securechat_test_support::cluster::{
    InProcessOperator, TestNamespace, await_condition, client, install_crds, tool,
};
use serde::Serialize;
use serde_json::{Value, json};

/// kstatus's (status, message) for `object`, as stored by the API server.
fn kstatus(object: &impl Serialize) -> (String, String) {
    let mut child = Command::new(tool("kstatus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run kstatus ({e}): run `make tools`"));
    let input = serde_json::to_vec(object).expect("the object as JSON");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("writing the object to kstatus");
    let out = child.wait_with_output().expect("kstatus runs");
    assert!(
        out.status.success(),
        "kstatus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("kstatus prints JSON");
    (
        result["status"].as_str().expect("status").to_string(),
        result["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn model_is(m: Option<&SecureChatModel>, type_: &str, status: &str) -> bool {
    m.and_then(|m| m.status.as_ref())
        .is_some_and(|s| condition_status(&s.conditions, type_) == Some(status))
}

fn key_is(k: Option<&ChatApiKey>, type_: &str, status: &str) -> bool {
    k.and_then(|k| k.status.as_ref())
        .is_some_and(|s| condition_status(&s.conditions, type_) == Some(status))
}

async fn create_model(api: &Api<SecureChatModel>, name: &str, spec: Value) {
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("a model");
    api.create(&PostParams::default(), &model)
        .await
        .expect("create the model");
}

async fn create_key(api: &Api<ChatApiKey>, name: &str, model: &str) {
    let key: ChatApiKey = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
        "metadata": {"name": name}, "spec": {"modelRef": {"name": model}}
    }))
    .expect("a key");
    api.create(&PostParams::default(), &key)
        .await
        .expect("create the key");
}

#[tokio::test]
async fn a_converging_model_is_in_progress_then_current_when_ready() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "kstatus-ready").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    create_model(&models, "m", json!({"replicas": 1})).await;

    // The first status the operator writes: the Deployment has no ready
    // replica yet. A watch sees every version, so this state is caught.
    let converging = await_condition(
        models.clone(),
        "m",
        "Reconciling=True",
        Duration::from_secs(60),
        |m: Option<&SecureChatModel>| model_is(m, "Reconciling", "True"),
    )
    .await;
    assert!(model_is(Some(&converging), "Stalled", "False"));
    let (status, message) = kstatus(&converging);
    assert_eq!(status, "InProgress", "{message}");

    let ready = await_condition(
        models.clone(),
        "m",
        "Ready=True",
        Duration::from_secs(120),
        |m: Option<&SecureChatModel>| model_is(m, "Ready", "True"),
    )
    .await;
    assert!(model_is(Some(&ready), "Reconciling", "False"));
    assert!(model_is(Some(&ready), "Stalled", "False"));
    let (status, message) = kstatus(&ready);
    assert_eq!(status, "Current", "{message}");
}

#[tokio::test]
async fn a_model_that_cannot_be_scheduled_fails_with_the_schedulers_reason() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "kstatus-gpu").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    // Each A100 node of the test cluster has one GPU.
    create_model(
        &models,
        "big",
        json!({"resources": {"gpu": {"count": 2, "product": "NVIDIA-A100-SXM4-80GB"}}}),
    )
    .await;
    let stalled = await_condition(
        models.clone(),
        "big",
        "Stalled=True",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| model_is(m, "Stalled", "True"),
    )
    .await;
    let condition = stalled
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
        .expect("Stalled")
        .clone();
    assert_eq!(condition.reason, "Unschedulable");
    assert!(model_is(Some(&stalled), "Reconciling", "False"));
    let (status, message) = kstatus(&stalled);
    assert_eq!(status, "Failed", "{message}");
    assert!(
        message.contains("Insufficient nvidia.com/gpu"),
        "kstatus shows the scheduler's message: {message}"
    );
}

#[tokio::test]
async fn a_key_for_a_missing_model_fails_and_one_for_a_real_model_is_current() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "kstatus-keys").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let keys: Api<ChatApiKey> = Api::namespaced(client.clone(), &ns.name);
    create_key(&keys, "orphan", "no-such-model").await;
    let orphan = await_condition(
        keys.clone(),
        "orphan",
        "Stalled=True",
        Duration::from_secs(60),
        |k: Option<&ChatApiKey>| key_is(k, "Stalled", "True"),
    )
    .await;
    let (status, message) = kstatus(&orphan);
    assert_eq!(status, "Failed", "{message}");
    assert!(
        message.contains("no-such-model does not exist"),
        "{message}"
    );

    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    create_model(&models, "m", json!({"replicas": 0})).await;
    create_key(&keys, "app", "m").await;
    let active = await_condition(
        keys.clone(),
        "app",
        "Ready=True",
        Duration::from_secs(60),
        |k: Option<&ChatApiKey>| key_is(k, "Ready", "True"),
    )
    .await;
    let (status, message) = kstatus(&active);
    assert_eq!(status, "Current", "{message}");
}
