//! What the operator refuses, against the real control plane (issue 19): a
//! spec it cannot build shows `Ready=False` with a reason naming the
//! problem and a Warning Event, never `Ready=True` over a config new pods
//! cannot start with, nor an empty status forever.
//!
//! Reasons are compared as literals: they are API (alerts and scripts
//! match on them), so a renamed constant must fail here.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use securechat_crds::SecureChatModel;
use securechat_crds::files::config::ServerConfig;
use securechat_crds::files::names;
use securechat_operator::labels::Names;
use securechat_test_support::cluster::models::{OperatorNamespace, create_model, warning};
use securechat_test_support::cluster::{self, await_condition};
use serde_json::json;

/// The Ready condition's (status, reason, message).
fn ready(model: Option<&SecureChatModel>) -> Option<(String, String, String)> {
    let c = model?
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn await_ready(
    models: &Api<SecureChatModel>,
    name: &str,
    status: &str,
    reason: &str,
) -> String {
    let what = format!("Ready={status}/{reason}");
    let model = await_condition(
        models.clone(),
        name,
        &what,
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| {
            ready(m).is_some_and(|(s, r, _)| s == status && (reason.is_empty() || r == reason))
        },
    )
    .await;
    ready(Some(&model)).expect("Ready").2
}

async fn patch_spec(models: &Api<SecureChatModel>, name: &str, spec: serde_json::Value) {
    models
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("patch the model's spec");
}

/// The custom patterns of the server config the operator wrote.
async fn written_patterns(client: &Client, namespace: &str, model: &str) -> Vec<String> {
    let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(&Names::config_map(model))
        .await
        .expect("the server config");
    let yaml = &map.data.expect("data")[names::CONFIG];
    let config: ServerConfig = serde_yaml::from_str(yaml).expect("config parses");
    config
        .sensitive_data
        .custom_patterns
        .into_iter()
        .map(|p| p.regex)
        .collect()
}

#[tokio::test]
async fn a_custom_pattern_the_server_would_refuse_is_refused_and_the_last_good_config_stays() {
    let OperatorNamespace {
        client,
        ns,
        operator: _operator,
        models,
    } = OperatorNamespace::start("patterns").await;
    let ticket = json!({"name": "ticket", "regex": "TICKET-[0-9]{6}"});
    create_model(
        &models,
        "p",
        json!({"replicas": 0, "sensitiveData": {"customPatterns": [ticket]}}),
    )
    .await;
    await_ready(&models, "p", "True", "").await;
    let good = written_patterns(&client, &ns.name, "p").await;
    assert_eq!(good, ["TICKET-[0-9]{6}"]);

    // A pattern that does not compile: named in Ready and in a Warning.
    patch_spec(
        &models,
        "p",
        json!({"sensitiveData": {"customPatterns": [ticket, {"name": "bad", "regex": "("}]}}),
    )
    .await;
    let message = await_ready(&models, "p", "False", "InvalidSensitiveDataPattern").await;
    assert!(
        message.starts_with("spec.sensitiveData: customPatterns[1] (bad): "),
        "{message}"
    );
    let note = warning(&client, &ns.name, "p", "InvalidSensitiveDataPattern").await;
    assert!(note.contains("customPatterns[1] (bad)"), "{note}");
    assert_eq!(written_patterns(&client, &ns.name, "p").await, good);

    // Patterns that each compile but not together (the server's size
    // limit applies to the one combined regex).
    let wide: Vec<_> = (0..3)
        .map(|i| json!({"name": format!("wide{i}"), "regex": r"\w{100}"}))
        .collect();
    patch_spec(
        &models,
        "p",
        json!({"sensitiveData": {"customPatterns": wide}}),
    )
    .await;
    await_condition(
        models.clone(),
        "p",
        "Ready=False naming the patterns together",
        Duration::from_secs(30),
        |m: Option<&SecureChatModel>| {
            ready(m).is_some_and(|(_, _, message)| message.contains("(wide0, wide1, wide2)"))
        },
    )
    .await;
    assert_eq!(written_patterns(&client, &ns.name, "p").await, good);

    // Fixed: written, and Ready again.
    patch_spec(
        &models,
        "p",
        json!({"sensitiveData": {"customPatterns": [{"name": "wide0", "regex": r"\w{100}"}]}}),
    )
    .await;
    await_ready(&models, "p", "True", "Ready").await;
    assert_eq!(written_patterns(&client, &ns.name, "p").await, [r"\w{100}"]);
}

#[tokio::test]
async fn an_object_the_api_server_rejects_is_a_condition_not_an_empty_status() {
    let OperatorNamespace {
        client,
        ns,
        operator: _operator,
        models,
    } = OperatorNamespace::start("rejected").await;
    // Admission takes any Toleration; the Deployment's validation refuses
    // a value with operator Exists.
    let toleration =
        json!({"key": "dedicated", "operator": "Exists", "value": "gpu", "effect": "NoSchedule"});
    create_model(
        &models,
        "t",
        json!({"replicas": 0, "scheduling": {"tolerations": [toleration]}}),
    )
    .await;
    let message = await_ready(&models, "t", "False", "ApplyFailed").await;
    assert!(
        message.contains("tolerations[") && message.contains("Exists"),
        "{message}"
    );
    let note = warning(&client, &ns.name, "t", "ApplyFailed").await;
    assert!(note.contains("tolerations["), "{note}");
    let table = cluster::kubectl_ok(&["get", "scm", "t", "-n", &ns.name]);
    let row = table.lines().nth(1).expect("a row");
    assert_eq!(
        row.split_whitespace().nth(1),
        Some("False"),
        "the READY column: {table}"
    );

    // Fixed: the Deployment is applied and the model gets Ready.
    patch_spec(
        &models,
        "t",
        json!({"scheduling": {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}}),
    )
    .await;
    await_ready(&models, "t", "True", "Ready").await;
}
