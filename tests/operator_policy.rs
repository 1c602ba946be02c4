//! `spec.auth.policy` against the real control plane: the operator
//! compiles the Rego module with the server's code before it writes the
//! config. A module that does not compile, or a ConfigMap that is not
//! there, stops the rollout with Ready=False (PolicyInvalid,
//! PolicyNotFound) and a Warning Event, and the last good config stays; a
//! good module reaches the config without rolling the pods (the server
//! hot-reloads it).
//!
//! Reasons are compared as literals: they are API.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use securechat_crds::SecureChatModel;
use securechat_crds::files::config::ServerConfig;
use securechat_crds::files::names;
use securechat_operator::labels::Names;
use securechat_test_support::cluster::models::{
    OperatorNamespace, await_reason, create_model, warning,
};
use serde_json::json;

const SEED: &str = include_str!("../examples/policies/reads-per-window.rego");
const NAMESPACE_CAP: &str = include_str!("../examples/policies/namespace-max-tokens.rego");

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

/// `auth.policy` of the config the operator wrote.
async fn written_policy(client: &Client, namespace: &str, model: &str) -> Option<String> {
    let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(&Names::config_map(model))
        .await
        .expect("the server config");
    let yaml = &map.data.expect("data")[names::CONFIG];
    let config: ServerConfig = serde_yaml::from_str(yaml).expect("config parses");
    config.auth.policy
}

/// The Deployment's config checksum (a change rolls the pods).
async fn checksum(client: &Client, namespace: &str, model: &str) -> String {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(&Names::deployment(model))
        .await
        .expect("the Deployment");
    deployment
        .spec
        .template
        .metadata
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("securechat.dev/config-checksum").cloned())
        .expect("a config checksum")
}

#[tokio::test]
async fn a_policy_is_compiled_before_it_is_written_and_a_broken_one_refused() {
    let OperatorNamespace {
        client,
        ns,
        operator: _operator,
        models,
    } = OperatorNamespace::start("policy").await;
    create_model(
        &models,
        "p",
        json!({"replicas": 0, "auth": {"policy": {"rego": SEED}}}),
    )
    .await;
    await_reason(&models, "p", "Ready", "True", "", "").await;
    assert_eq!(
        written_policy(&client, &ns.name, "p").await.as_deref(),
        Some(SEED)
    );
    let rolled = checksum(&client, &ns.name, "p").await;

    // A module that does not compile: named in Ready and in a Warning,
    // and the config keeps the last good one.
    patch_spec(
        &models,
        "p",
        json!({"auth": {"policy": {"rego": "package securechat\nallow if {\n"}}}),
    )
    .await;
    let message = await_reason(&models, "p", "Ready", "False", "PolicyInvalid", "").await;
    assert!(
        message.starts_with("spec.auth.policy: the policy does not compile"),
        "{message}"
    );
    let note = warning(&client, &ns.name, "p", "PolicyInvalid").await;
    assert!(note.contains("spec.auth.policy"), "{note}");
    // kstatus: Failed (Stalled=True) with the same reason, so a GitOps
    // apply waiting on the model fails now instead of at its timeout.
    await_reason(&models, "p", "Stalled", "True", "PolicyInvalid", "").await;
    assert_eq!(
        written_policy(&client, &ns.name, "p").await.as_deref(),
        Some(SEED)
    );

    // Both an inline module and a ConfigMap: admission refuses it.
    let both = models
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"auth": {"policy": {"configMapRef": {"name": "rules"}}}}}),
            ),
        )
        .await
        .expect_err("refused");
    assert!(
        both.to_string()
            .contains("exactly one of rego or configMapRef"),
        "{both}"
    );

    // A ConfigMap that is not there yet: PolicyNotFound, then written once
    // it is created (the operator polls a model that waits for one).
    patch_spec(
        &models,
        "p",
        json!({"auth": {"policy": {"rego": null, "configMapRef": {"name": "rules"}}}}),
    )
    .await;
    let message = await_reason(&models, "p", "Ready", "False", "PolicyNotFound", "").await;
    assert!(
        message.contains("ConfigMap rules does not exist"),
        "{message}"
    );
    let rules = ConfigMap {
        metadata: ObjectMeta {
            name: Some("rules".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "policy.rego".to_string(),
            NAMESPACE_CAP.to_string(),
        )])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &rules)
        .await
        .expect("create the ConfigMap");
    await_reason(&models, "p", "Ready", "True", "Ready", "").await;
    assert_eq!(
        written_policy(&client, &ns.name, "p").await.as_deref(),
        Some(NAMESPACE_CAP)
    );
    assert_eq!(
        checksum(&client, &ns.name, "p").await,
        rolled,
        "a policy change does not roll the pods"
    );
}
