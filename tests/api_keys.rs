//! ChatApiKey lifecycle against the real control plane (issue 5/8): minted
//! only for allowed namespaces, plaintext in the consumer Secret and only a
//! hash in the model's table, rotation that keeps the key id and overlaps
//! old and new secrets, suspension, and revocation by deletion.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestNamespace, await_condition, client, install_crds, wait_for};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use securechat_crds::files::api_keys::{ApiKeyState, ApiKeyTable, SecretHash};
use securechat_crds::v1alpha1::{ChatApiKey, KeyPhase, SecureChatModel};
use securechat_operator::controller::{self, Context};
use securechat_operator::key_controller;
use securechat_operator::metrics::Metrics;
use serde_json::json;

async fn table(client: &Client, namespace: &str, model: &str) -> ApiKeyTable {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(&format!("{model}-api-keys"))
        .await
        .expect("table secret");
    serde_json::from_slice(&secret.data.expect("data")["api-keys.json"].0).expect("table")
}

async fn consumer(client: &Client, namespace: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .expect("get consumer secret")
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8(v.0.clone()).expect("utf-8"))
}

fn phase(key: Option<&ChatApiKey>) -> Option<KeyPhase> {
    key?.status.as_ref()?.phase
}

#[tokio::test]
async fn a_chat_api_key_is_minted_rotated_suspended_and_revoked() {
    let client = client().await;
    install_crds();
    let models_ns = TestNamespace::create(&client, "keys-model").await;
    let apps = TestNamespace::create(&client, "keys-apps").await;
    let other = TestNamespace::create(&client, "keys-other").await;
    let state = Arc::new(Context::new(
        client.clone(),
        "securechat/server:test".into(),
        Arc::new(Metrics::new()),
    ));
    let scopes = vec![
        models_ns.name.clone(),
        apps.name.clone(),
        other.name.clone(),
    ];
    let (s1, s2, n1, n2) = (state.clone(), state, scopes.clone(), scopes);
    let models_task = tokio::spawn(async move { controller::run(s1, &n1).await });
    let keys_task = tokio::spawn(async move { key_controller::run(s2, &n2).await });

    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &models_ns.name);
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": "m"},
        "spec": {"replicas": 0, "auth": {"apiKeys": {"allowedNamespaces": [apps.name]}}}
    }))
    .unwrap();
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("model");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &models_ns.name);
    wait_for("the model's key table", Duration::from_secs(60), || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("m-api-keys").await.ok().flatten() }
    })
    .await;

    // A namespace that is not allowed gets a condition and nothing else.
    let denied_keys: Api<ChatApiKey> = Api::namespaced(client.clone(), &other.name);
    let denied: ChatApiKey = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
        "metadata": {"name": "sneaky"},
        "spec": {"modelRef": {"name": "m", "namespace": models_ns.name}}
    }))
    .unwrap();
    denied_keys
        .create(&PostParams::default(), &denied)
        .await
        .expect("create denied key");
    let refused = await_condition(
        denied_keys.clone(),
        "sneaky",
        "NamespaceNotAllowed",
        Duration::from_secs(60),
        |k: Option<&ChatApiKey>| {
            k.and_then(|k| k.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.reason == "NamespaceNotAllowed")
            })
        },
    )
    .await;
    assert!(consumer(&client, &other.name, "sneaky").await.is_none());
    let refused_id = refused.status.unwrap().key_id.unwrap();
    assert!(
        table(&client, &models_ns.name, "m")
            .await
            .get(&refused_id)
            .is_none()
    );

    // An allowed key with a fast rotation.
    let keys: Api<ChatApiKey> = Api::namespaced(client.clone(), &apps.name);
    let key: ChatApiKey = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
        "metadata": {"name": "frontend"},
        "spec": {"modelRef": {"name": "m", "namespace": models_ns.name}, "tier": "Developer",
                 "expiresAfter": "720h", "secretName": "frontend-api-key",
                 "rotation": {"period": "1m", "gracePeriod": "30s"}}
    }))
    .unwrap();
    keys.create(&PostParams::default(), &key)
        .await
        .expect("create key");
    let active = await_condition(
        keys.clone(),
        "frontend",
        "phase Active",
        Duration::from_secs(60),
        |k: Option<&ChatApiKey>| phase(k) == Some(KeyPhase::Active),
    )
    .await;
    let id = active.status.as_ref().unwrap().key_id.clone().unwrap();
    let secret = consumer(&client, &apps.name, "frontend-api-key")
        .await
        .expect("consumer secret");
    let first = field(&secret, "api-key").expect("plaintext");
    assert!(first.starts_with(&format!("sk-sc-{id}-")), "{first}");
    assert_eq!(
        secret.owner_references()[0].name,
        "frontend",
        "owned by the ChatApiKey"
    );
    let record = table(&client, &models_ns.name, "m")
        .await
        .get(&id)
        .cloned()
        .expect("record");
    assert_eq!(record.secret_hash, SecretHash::of_key(&first));
    let raw_table = Api::<Secret>::namespaced(client.clone(), &models_ns.name)
        .get("m-api-keys")
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&raw_table.data.unwrap()["api-keys.json"].0).contains(&first),
        "the table holds no plaintext"
    );
    assert!(record.expires_at.is_some());

    // Rotation: the key id stays, callers get a new secret, and the table
    // accepted the new secret before callers got it and still accepts the
    // old one during the grace.
    let rotated = wait_for("the key to rotate", Duration::from_secs(150), || {
        let client = client.clone();
        let ns = apps.name.clone();
        let first = first.clone();
        async move {
            let s = consumer(&client, &ns, "frontend-api-key").await?;
            field(&s, "api-key").filter(|k| *k != first)
        }
    })
    .await;
    assert!(rotated.starts_with(&format!("sk-sc-{id}-")), "same key id");
    let record = table(&client, &models_ns.name, "m")
        .await
        .get(&id)
        .cloned()
        .expect("record");
    let now = chrono::Utc::now();
    let accepted: Vec<_> = record.accepted_hashes(now).cloned().collect();
    assert!(accepted.contains(&SecretHash::of_key(&rotated)));
    assert!(
        accepted.contains(&SecretHash::of_key(&first)),
        "the old secret works during the grace"
    );
    let status = keys.get("frontend").await.unwrap().status.unwrap();
    assert!(status.last_rotated_at.is_some());

    // Suspension is reversible and keeps the secret.
    keys.patch(
        "frontend",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspended": true}})),
    )
    .await
    .expect("suspend");
    wait_for("Suspended in the table", Duration::from_secs(30), || {
        let client = client.clone();
        let (ns, id) = (models_ns.name.clone(), id.clone());
        async move {
            (table(&client, &ns, "m").await.get(&id)?.state == ApiKeyState::Suspended).then_some(())
        }
    })
    .await;
    await_condition(
        keys.clone(),
        "frontend",
        "phase Suspended",
        Duration::from_secs(30),
        |k: Option<&ChatApiKey>| phase(k) == Some(KeyPhase::Suspended),
    )
    .await;
    keys.patch(
        "frontend",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspended": false}})),
    )
    .await
    .expect("resume");
    wait_for("Active again in the table", Duration::from_secs(30), || {
        let client = client.clone();
        let (ns, id) = (models_ns.name.clone(), id.clone());
        async move {
            (table(&client, &ns, "m").await.get(&id)?.state == ApiKeyState::Active).then_some(())
        }
    })
    .await;

    // Deleting the ChatApiKey revokes it: the hash leaves the table, then
    // the resource and its Secret go.
    keys.delete("frontend", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("the record to be removed", Duration::from_secs(30), || {
        let client = client.clone();
        let (ns, id) = (models_ns.name.clone(), id.clone());
        async move {
            table(&client, &ns, "m")
                .await
                .get(&id)
                .is_none()
                .then_some(())
        }
    })
    .await;
    wait_for("the ChatApiKey to be gone", Duration::from_secs(30), || {
        let keys = keys.clone();
        async move { matches!(keys.get_opt("frontend").await, Ok(None)).then_some(()) }
    })
    .await;
    models_task.abort();
    keys_task.abort();
}
