//! `spec.sharedState`, `spec.serving` and `spec.model.contextLength`
//! against the real control plane (issues 3/9 and 4/9): what reaches the
//! server's config and the pods' mounts, a credentials Secret or CA bundle
//! that is missing holding the rollout (a condition and a Warning, the last
//! good config and pods kept), and the SharedState condition telling that
//! several replicas without a store each keep their own limits.
//!
//! Reasons are compared as literals: they are API (alerts and scripts
//! match on them), so a renamed constant must fail here.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use securechat_crds::SecureChatModel;
use securechat_crds::files::config::ServerConfig;
use securechat_crds::files::names;
use securechat_crds::v1alpha1::OnUnavailable;
use securechat_operator::labels::Names;
use securechat_test_support::cluster::models::{
    OperatorNamespace, await_reason, condition, create_model,
};
use securechat_test_support::cluster::{self, await_condition, wait_for};
use serde_json::json;

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

/// The Warning Events on `model` with `reason`: (note, count).
async fn warnings(client: &Client, namespace: &str, model: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("involvedObject.name={model}");
    let list = events
        .list(&ListParams::default().fields(&selector))
        .await
        .expect("list events");
    list.items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .map(|e| {
            // A repeated event is one object with a count (or a series).
            let repeats = e
                .count
                .unwrap_or(1)
                .max(e.series.and_then(|s| s.count).unwrap_or(1));
            format!("{} (x{repeats})", e.message.unwrap_or_default())
        })
        .collect()
}

async fn await_warning(client: &Client, namespace: &str, model: &str, reason: &str) -> String {
    wait_for(
        &format!("a Warning Event {reason}"),
        Duration::from_secs(30),
        || async move {
            warnings(client, namespace, model, reason)
                .await
                .into_iter()
                .next()
        },
    )
    .await
}

/// The server config the operator wrote, if it wrote one.
async fn written_config(client: &Client, namespace: &str, model: &str) -> Option<ServerConfig> {
    let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&Names::config_map(model))
        .await
        .expect("get the config map")?;
    let yaml = &map.data.expect("data")[names::CONFIG];
    Some(ServerConfig::from_yaml(yaml).expect("the server parses the config"))
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.data = Some(
        data.iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect(),
    );
    secret
}

#[tokio::test]
async fn shared_state_reaches_config_and_mounts_and_a_missing_secret_holds_the_rollout() {
    let OperatorNamespace {
        client,
        ns,
        operator: _operator,
        models,
    } = OperatorNamespace::start("shared-state").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    create_model(
        &models,
        "s",
        json!({
            "replicas": 2,
            "model": {"contextLength": 4096},
            "serving": {"maxConcurrentSequences": 8, "maxQueue": 5, "prefillChunkTokens": 128,
                        "tierWeights": {"admin": 9}},
            "sharedState": {
                "address": "valkey.infra.svc:6379",
                "network": {"toNamespaces": {"matchLabels": {"kubernetes.io/metadata.name": "infra"}}},
                "credentials": {"secretName": "valkey-acl", "usernameKey": "user"},
                "tls": {"caBundle": {"configMapName": "valkey-ca", "key": "bundle.pem"}},
                "onUnavailable": "LocalFallback"
            }
        }),
    )
    .await;

    // No Secret yet: refused before anything mounts it, in Ready, in
    // SharedState and in a Warning.
    let message = await_reason(
        &models,
        "s",
        "SharedState",
        "False",
        "CredentialsNotFound",
        "sharedState.credentials: Secret valkey-acl does not exist",
    )
    .await;
    await_reason(
        &models,
        "s",
        "Ready",
        "False",
        "CredentialsNotFound",
        &message,
    )
    .await;
    let note = await_warning(&client, &ns.name, "s", "CredentialsNotFound").await;
    assert!(note.contains("Secret valkey-acl does not exist"), "{note}");
    assert!(deployments.get_opt("s").await.expect("get").is_none());
    assert!(written_config(&client, &ns.name, "s").await.is_none());

    // The Secret without the password key; then complete, and the CA
    // bundle is what is missing. The model notices without a spec change.
    secrets
        .create(
            &PostParams::default(),
            &secret("valkey-acl", &[("user", "chat")]),
        )
        .await
        .expect("create the secret");
    await_reason(
        &models,
        "s",
        "SharedState",
        "False",
        "CredentialsNotFound",
        "Secret valkey-acl has no key password",
    )
    .await;
    secrets
        .replace(
            "valkey-acl",
            &PostParams::default(),
            &secret("valkey-acl", &[("user", "chat"), ("password", "pw-1")]),
        )
        .await
        .expect("add the password");
    await_reason(
        &models,
        "s",
        "SharedState",
        "False",
        "CaBundleNotFound",
        "ConfigMap valkey-ca does not exist",
    )
    .await;
    let mut bundle = ConfigMap::default();
    bundle.metadata.name = Some("valkey-ca".into());
    bundle.data = Some(BTreeMap::from([(
        "bundle.pem".to_string(),
        "-----BEGIN CERTIFICATE-----\n".to_string(),
    )]));
    config_maps
        .create(&PostParams::default(), &bundle)
        .await
        .expect("create the CA bundle");
    await_reason(&models, "s", "Ready", "True", "Ready", "").await;
    await_reason(
        &models,
        "s",
        "SharedState",
        "True",
        "Configured",
        "valkey.infra.svc:6379",
    )
    .await;

    // The config the server reads.
    let config = written_config(&client, &ns.name, "s")
        .await
        .expect("config");
    config.validate().expect("the server accepts it");
    assert_eq!(config.model.context_length, Some(4096));
    assert_eq!(
        (
            config.serving.max_concurrent_sequences,
            config.serving.max_queue,
            config.serving.prefill_chunk_tokens,
            config.serving.tier_weights.admin,
            config.serving.tier_weights.developer,
        ),
        (8, 5, 128, 9, 2)
    );
    let store = config.shared_state.clone().expect("sharedState");
    assert_eq!(store.address, "valkey.infra.svc:6379");
    assert_eq!(store.key_prefix, format!("{}/s/", ns.name));
    assert_eq!(store.replicas, 2);
    assert_eq!(store.on_unavailable, OnUnavailable::LocalFallback);
    let username = store.username_file.clone().expect("username file");
    let password = store.password_file.clone().expect("password file");
    let ca = store.tls.clone().expect("tls").ca_file;

    // The pods mount exactly the named keys, read-only, at those paths.
    let deployment = deployments.get("s").await.expect("the deployment");
    let pod = deployment.spec.template.spec.expect("pod");
    let mounts = pod.containers[0].volume_mounts.clone().expect("mounts");
    let mut files = BTreeMap::new();
    for volume in pod.volumes.expect("volumes") {
        let (source, items, mode) = match (&volume.secret, &volume.config_map) {
            (Some(s), _) => (
                format!("Secret {}", s.secret_name.clone().unwrap_or_default()),
                s.items.clone(),
                s.default_mode,
            ),
            (_, Some(m)) => (
                format!("ConfigMap {}", m.name),
                m.items.clone(),
                m.default_mode,
            ),
            _ => continue,
        };
        let Some(mount) = mounts.iter().find(|m| m.name == volume.name) else {
            continue;
        };
        for item in items.into_iter().flatten() {
            let path = std::path::Path::new(&mount.mount_path).join(&item.path);
            files.insert(path, (source.clone(), item.key, mount.read_only, mode));
        }
    }
    let read_only = Some(true);
    assert_eq!(
        files.get(&username),
        Some(&(
            "Secret valkey-acl".to_string(),
            "user".to_string(),
            read_only,
            Some(0o440)
        ))
    );
    assert_eq!(
        files.get(&password),
        Some(&(
            "Secret valkey-acl".to_string(),
            "password".to_string(),
            read_only,
            Some(0o440)
        ))
    );
    assert_eq!(
        files.get(&ca),
        Some(&(
            "ConfigMap valkey-ca".to_string(),
            "bundle.pem".to_string(),
            read_only,
            Some(0o440)
        ))
    );

    // The Secret goes and the spec changes meanwhile: refused again, and
    // neither the config nor the pods move to what they could not mount.
    let template = deployments.get("s").await.expect("get").spec.template;
    secrets
        .delete("valkey-acl", &DeleteParams::default())
        .await
        .expect("delete the secret");
    patch_spec(&models, "s", json!({"serving": {"maxQueue": 7}})).await;
    await_reason(
        &models,
        "s",
        "Ready",
        "False",
        "CredentialsNotFound",
        "Secret valkey-acl does not exist",
    )
    .await;
    let kept = written_config(&client, &ns.name, "s")
        .await
        .expect("config");
    assert_eq!(kept.serving.max_queue, 5, "the last good config stays");
    let now = deployments.get("s").await.expect("get").spec.template;
    assert_eq!(now, template, "the pods are not rolled");
}

#[tokio::test]
async fn several_replicas_without_a_store_are_told_once_that_limits_are_per_replica() {
    let OperatorNamespace {
        client,
        ns,
        operator: _operator,
        models,
    } = OperatorNamespace::start("per-replica").await;
    create_model(&models, "r", json!({"replicas": 1})).await;
    await_reason(&models, "r", "SharedState", "True", "SingleReplica", "").await;
    await_reason(&models, "r", "Ready", "True", "Ready", "").await;

    patch_spec(&models, "r", json!({"replicas": 3})).await;
    let message = await_reason(
        &models,
        "r",
        "SharedState",
        "False",
        "PerReplicaLimits",
        "3 replicas and no spec.sharedState",
    )
    .await;
    assert!(message.contains("up to 3x"), "{message}");
    let note = await_warning(&client, &ns.name, "r", "PerReplicaLimits").await;
    assert!(note.contains("hold per replica"), "{note}");
    // The model serves all the same.
    await_reason(&models, "r", "Ready", "True", "Ready", "").await;

    // More reconciles (a config change, a scale) say nothing more.
    patch_spec(
        &models,
        "r",
        json!({"rateLimit": {"requestsPerMinute": 30}}),
    )
    .await;
    patch_spec(&models, "r", json!({"replicas": 2})).await;
    await_condition(
        models.clone(),
        "r",
        "the last spec observed, Ready",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| {
            m.is_some_and(|m| {
                m.status.as_ref().and_then(|s| s.observed_generation) == m.metadata.generation
                    && condition(Some(m), "Ready").is_some_and(|(s, _, _)| s == "True")
            })
        },
    )
    .await;
    let said = warnings(&client, &ns.name, "r", "PerReplicaLimits").await;
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].ends_with("(x1)"), "{said:?}");

    // A store: limits are shared, the condition says so.
    patch_spec(
        &models,
        "r",
        json!({"sharedState": {"address": "10.0.5.7:6379", "network": {"to": ["10.0.5.7/32"]}}}),
    )
    .await;
    await_reason(
        &models,
        "r",
        "SharedState",
        "True",
        "Configured",
        "10.0.5.7:6379",
    )
    .await;

    // The example passes admission and waits for its Secret.
    let example = cluster::example_doc(
        "examples/shared-state/valkey-in-cluster.yaml",
        "SecureChatModel",
        &ns.name,
    );
    let example: SecureChatModel = serde_yaml::from_value(example).expect("example parses");
    let name = example.metadata.name.clone().expect("a name");
    models
        .create(&PostParams::default(), &example)
        .await
        .expect("the API server accepts the example");
    await_reason(
        &models,
        &name,
        "SharedState",
        "False",
        "CredentialsNotFound",
        "Secret valkey-acl does not exist",
    )
    .await;
}
