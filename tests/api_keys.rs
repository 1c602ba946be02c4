//! ChatApiKey lifecycle against the real control plane (issue 5/8): minted
//! only for allowed namespaces, plaintext in the consumer Secret and only a
//! hash in the model's table, rotation that keeps the key id and overlaps
//! old and new secrets, suspension, and revocation by deletion.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use securechat_crds::files::api_keys::{ApiKeyState, ApiKeyTable, SecretHash};
use securechat_crds::v1alpha1::{ChatApiKey, KeyPhase, SecureChatModel};
use securechat_operator::controller::{self, Context};
use securechat_operator::key_controller;
use securechat_operator::metrics::Metrics;
use securechat_operator::reasons::api_key::KeyReason;
use securechat_test_support::cluster::{
    TestNamespace, await_condition, client, install_crds, wait_for,
};
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

/// The Ready condition's (reason, message).
fn ready(key: Option<&ChatApiKey>) -> Option<(String, String)> {
    let c = key?
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.reason.clone(), c.message.clone()))
}

/// Both controllers in-process, watching `scopes`; stopped when dropped
/// (also when the test panics).
struct Operator(Vec<tokio::task::JoinHandle<()>>);

impl Operator {
    fn start(client: &Client, scopes: &[&TestNamespace]) -> Self {
        let state = Arc::new(Context::new(
            client.clone(),
            "securechat/server:test".into(),
            Arc::new(Metrics::new()),
        ));
        let scopes: Vec<String> = scopes.iter().map(|ns| ns.name.clone()).collect();
        let (s1, n1) = (state.clone(), scopes.clone());
        Self(vec![
            tokio::spawn(async move { controller::run(s1, &n1).await }),
            tokio::spawn(async move { key_controller::run(state, &scopes).await }),
        ])
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// Creates the model `m` (no replicas) allowing keys from `allowed`, and
/// waits for its key table.
async fn model_with_table(client: &Client, namespace: &str, allowed: &[&str]) -> Secret {
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": "m"},
        "spec": {"replicas": 0, "auth": {"apiKeys": {"allowedNamespaces": allowed}}}
    }))
    .unwrap();
    Api::<SecureChatModel>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &model)
        .await
        .expect("model");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    wait_for("the model's key table", Duration::from_secs(60), || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("m-api-keys").await.ok().flatten() }
    })
    .await
}

/// Waits until the model `m`'s table has no record `id`.
async fn record_gone(client: &Client, namespace: &str, id: &str, within: Duration) {
    wait_for("the record to leave the table", within, || async move {
        table(client, namespace, "m")
            .await
            .get(id)
            .is_none()
            .then_some(())
    })
    .await;
}

async fn create_key(client: &Client, namespace: &str, name: &str, spec: serde_json::Value) {
    let key: ChatApiKey = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    Api::<ChatApiKey>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &key)
        .await
        .expect("create key");
}

async fn await_reason(client: &Client, namespace: &str, name: &str, reason: KeyReason) -> String {
    let key = await_condition(
        Api::<ChatApiKey>::namespaced(client.clone(), namespace),
        name,
        reason.as_str(),
        Duration::from_secs(60),
        move |k: Option<&ChatApiKey>| ready(k).is_some_and(|(r, _)| r == reason.as_str()),
    )
    .await;
    ready(Some(&key)).expect("Ready condition").1
}

/// Issue 19: a ChatApiKey whose `secretName` names a Secret it did not
/// create (a tenant's own, or the model's key table) neither writes nor
/// adopts it: it reports SecretConflict with a Warning Event, and deleting
/// the ChatApiKey leaves the Secret where it was. Before the fix the key
/// got Ready, wrote its key into `victim`, became its controlling owner,
/// and the garbage collector deleted `victim` (and the model's table) with
/// it.
#[tokio::test]
async fn a_chat_api_key_never_takes_over_a_secret_it_did_not_create() {
    let client = client().await;
    install_crds();
    let models_ns = TestNamespace::create(&client, "steal-model").await;
    let app = TestNamespace::create(&client, "steal-app").await;
    let _operator = Operator::start(&client, &[&models_ns, &app]);
    let table_before = model_with_table(&client, &models_ns.name, &[&app.name]).await;

    let app_secrets: Api<Secret> = Api::namespaced(client.clone(), &app.name);
    let victim: Secret = serde_json::from_value(json!({
        "metadata": {"name": "victim"},
        "stringData": {"password": "hunter2"}
    }))
    .unwrap();
    let victim = app_secrets
        .create(&PostParams::default(), &victim)
        .await
        .expect("victim");
    let model_ref = json!({"name": "m", "namespace": models_ns.name});
    create_key(
        &client,
        &app.name,
        "thief",
        json!({"modelRef": model_ref, "secretName": "victim"}),
    )
    .await;
    create_key(
        &client,
        &models_ns.name,
        "table-thief",
        json!({"modelRef": {"name": "m"}, "secretName": "m-api-keys"}),
    )
    .await;
    // A key with a Secret of its own, to see the garbage collector at work.
    create_key(
        &client,
        &app.name,
        "honest",
        json!({"modelRef": model_ref, "secretName": "honest-key"}),
    )
    .await;

    let message = await_reason(&client, &app.name, "thief", KeyReason::SecretConflict).await;
    assert!(
        message.contains(&format!("Secret {}/victim", app.name)),
        "{message}"
    );
    let message = await_reason(
        &client,
        &models_ns.name,
        "table-thief",
        KeyReason::SecretConflict,
    )
    .await;
    assert!(message.contains("m-api-keys"), "{message}");
    await_reason(&client, &app.name, "honest", KeyReason::Active).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &app.name);
    wait_for(
        "a SecretConflict Warning Event",
        Duration::from_secs(30),
        || {
            let events = events.clone();
            async move {
                let list = events
                    .list(&ListParams::default().fields("regarding.name=thief"))
                    .await
                    .ok()?;
                list.items.into_iter().find(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some(KeyReason::SecretConflict.as_str())
                })
            }
        },
    )
    .await;

    let unchanged = |before: &Secret, after: &Secret| {
        assert_eq!(
            after.metadata.resource_version,
            before.metadata.resource_version,
            "{} was written",
            before.name_any()
        );
        assert_eq!(
            after.metadata.owner_references,
            before.metadata.owner_references
        );
        assert_eq!(after.data, before.data);
    };
    let model_secrets: Api<Secret> = Api::namespaced(client.clone(), &models_ns.name);
    unchanged(&victim, &app_secrets.get("victim").await.unwrap());
    // The table is still the model's, and holds the honest key only.
    let table_now = model_secrets.get("m-api-keys").await.unwrap();
    assert_eq!(
        table_now.metadata.owner_references,
        table_before.metadata.owner_references
    );
    let names: Vec<String> = table(&client, &models_ns.name, "m")
        .await
        .keys
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, [format!("{}/honest", app.name)]);

    // Deleting every key: the honest key's Secret goes with it (the garbage
    // collector ran), `victim` and the table stay as they were.
    for (ns, name) in [
        (&app.name, "thief"),
        (&models_ns.name, "table-thief"),
        (&app.name, "honest"),
    ] {
        Api::<ChatApiKey>::namespaced(client.clone(), ns)
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete key");
    }
    wait_for(
        "the honest key's Secret to be collected",
        Duration::from_secs(60),
        || {
            let secrets = app_secrets.clone();
            async move { matches!(secrets.get_opt("honest-key").await, Ok(None)).then_some(()) }
        },
    )
    .await;
    for (ns, name) in [(&app.name, "thief"), (&models_ns.name, "table-thief")] {
        wait_for("the ChatApiKey to be gone", Duration::from_secs(30), || {
            let keys = Api::<ChatApiKey>::namespaced(client.clone(), ns);
            async move { matches!(keys.get_opt(name).await, Ok(None)).then_some(()) }
        })
        .await;
    }
    unchanged(
        &victim,
        &app_secrets
            .get("victim")
            .await
            .expect("victim still exists"),
    );
    let table_after = model_secrets
        .get("m-api-keys")
        .await
        .expect("table still exists");
    assert_eq!(
        table_after.metadata.owner_references,
        table_before.metadata.owner_references
    );
    assert!(table(&client, &models_ns.name, "m").await.keys.is_empty());
}

/// Issue 19, the model's side: a Secret named like the model's key table
/// that the model did not create is not its table. The operator neither
/// adopts it nor lets any ChatApiKey write hashes into it; keys wait with
/// ModelNotReady, naming it. Before the fix the operator took it as the
/// table and keys wrote their records into it.
#[tokio::test]
async fn a_secret_named_like_the_models_key_table_is_not_its_table() {
    let client = client().await;
    install_crds();
    let models_ns = TestNamespace::create(&client, "table-model").await;
    let app = TestNamespace::create(&client, "table-app").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &models_ns.name);
    let planted: Secret = serde_json::from_value(json!({
        "metadata": {"name": "m-api-keys"},
        "stringData": {"notes": "not the operator's"}
    }))
    .unwrap();
    let planted = secrets
        .create(&PostParams::default(), &planted)
        .await
        .expect("planted");
    let _operator = Operator::start(&client, &[&models_ns, &app]);
    model_with_table(&client, &models_ns.name, &[&app.name]).await;
    let model_ref = json!({"name": "m", "namespace": models_ns.name});
    create_key(&client, &app.name, "k", json!({"modelRef": model_ref})).await;
    let message = await_reason(&client, &app.name, "k", KeyReason::ModelNotReady).await;
    assert!(
        message.contains("is not the model's key table"),
        "{message}"
    );
    let now = secrets.get("m-api-keys").await.expect("still there");
    assert_eq!(
        now.metadata.resource_version,
        planted.metadata.resource_version
    );
    assert_eq!(now.metadata.owner_references, None);
}

/// Issue 19: removing a namespace from `auth.apiKeys.allowedNamespaces`
/// revokes its keys at once: the hash leaves the model's table (which is
/// what the server authenticates against: it loads exactly this Secret's
/// `api-keys.json`), the plaintext Secret is deleted, and the status says
/// revoked. Before the fix the key turned Pending ("no key was minted")
/// while its hash stayed Active in the table and the key kept working.
#[tokio::test]
async fn removing_a_namespace_from_the_list_revokes_its_keys_at_once() {
    let client = client().await;
    install_crds();
    let models_ns = TestNamespace::create(&client, "revoke-model").await;
    let app = TestNamespace::create(&client, "revoke-app").await;
    let _operator = Operator::start(&client, &[&models_ns, &app]);
    model_with_table(&client, &models_ns.name, &[&app.name]).await;
    let model_ref = json!({"name": "m", "namespace": models_ns.name});
    create_key(
        &client,
        &app.name,
        "admin",
        json!({"modelRef": model_ref, "tier": "Developer"}),
    )
    .await;
    let keys: Api<ChatApiKey> = Api::namespaced(client.clone(), &app.name);
    let active = await_condition(
        keys.clone(),
        "admin",
        "phase Active",
        Duration::from_secs(60),
        |k: Option<&ChatApiKey>| phase(k) == Some(KeyPhase::Active),
    )
    .await;
    let id = active.status.unwrap().key_id.unwrap();
    let record = table(&client, &models_ns.name, "m")
        .await
        .get(&id)
        .cloned()
        .expect("record");
    assert_eq!(record.state, ApiKeyState::Active);

    Api::<SecureChatModel>::namespaced(client.clone(), &models_ns.name)
        .patch(
            "m",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"auth": {"apiKeys": {"allowedNamespaces": null}}}})),
        )
        .await
        .expect("remove the namespace");
    let removed_at = std::time::Instant::now();
    record_gone(&client, &models_ns.name, &id, Duration::from_secs(10)).await;
    eprintln!("revoked {:?} after the model changed", removed_at.elapsed());
    let message = await_reason(&client, &app.name, "admin", KeyReason::NamespaceNotAllowed).await;
    assert!(
        message.starts_with(&format!("revoked: namespace {}", app.name)),
        "{message}"
    );
    wait_for(
        "the plaintext Secret to be deleted",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let ns = app.name.clone();
            async move {
                consumer(&client, &ns, "admin")
                    .await
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        phase(keys.get_opt("admin").await.unwrap().as_ref()),
        Some(KeyPhase::Pending)
    );
}

#[tokio::test]
async fn a_chat_api_key_is_minted_rotated_suspended_and_revoked() {
    let client = client().await;
    install_crds();
    let models_ns = TestNamespace::create(&client, "keys-model").await;
    let apps = TestNamespace::create(&client, "keys-apps").await;
    let other = TestNamespace::create(&client, "keys-other").await;
    let _operator = Operator::start(&client, &[&models_ns, &apps, &other]);
    model_with_table(&client, &models_ns.name, &[&apps.name]).await;

    // A namespace that is not allowed gets a condition and nothing else.
    let model_ref = json!({"name": "m", "namespace": models_ns.name});
    create_key(
        &client,
        &other.name,
        "sneaky",
        json!({"modelRef": model_ref}),
    )
    .await;
    await_reason(
        &client,
        &other.name,
        "sneaky",
        KeyReason::NamespaceNotAllowed,
    )
    .await;
    let refused = Api::<ChatApiKey>::namespaced(client.clone(), &other.name)
        .get("sneaky")
        .await
        .expect("sneaky");
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
    create_key(
        &client,
        &apps.name,
        "frontend",
        json!({"modelRef": model_ref, "tier": "Developer",
               "expiresAfter": "720h", "secretName": "frontend-api-key",
               "rotation": {"period": "1m", "gracePeriod": "30s"}}),
    )
    .await;
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
    record_gone(&client, &models_ns.name, &id, Duration::from_secs(30)).await;
    wait_for("the ChatApiKey to be gone", Duration::from_secs(30), || {
        let keys = keys.clone();
        async move { matches!(keys.get_opt("frontend").await, Ok(None)).then_some(()) }
    })
    .await;
}

/// Issue 26: `securechat.dev/rotate` rotates a key now (the remedy for a
/// leaked key that keeps the consumer's identity): same key id, old and new
/// secrets both accepted during the grace, then only the new one; each
/// value acts once, recorded in the status, with a Normal Event.
#[tokio::test]
async fn the_rotate_annotation_rotates_a_key_now_with_overlap() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "rotate-now").await;
    let _operator = Operator::start(&client, &[&ns]);
    model_with_table(&client, &ns.name, &[]).await;
    // A period far from due: only the annotation rotates here. Propagation
    // is a quarter of the period (30s), then the 30s grace.
    create_key(
        &client,
        &ns.name,
        "leaky",
        json!({"modelRef": {"name": "m"}, "rotation": {"period": "2m", "gracePeriod": "30s"}}),
    )
    .await;
    let keys: Api<ChatApiKey> = Api::namespaced(client.clone(), &ns.name);
    let active = await_condition(
        keys.clone(),
        "leaky",
        "phase Active",
        Duration::from_secs(60),
        |k: Option<&ChatApiKey>| phase(k) == Some(KeyPhase::Active),
    )
    .await;
    let id = active.status.as_ref().unwrap().key_id.clone().unwrap();
    let leaked = field(
        &consumer(&client, &ns.name, "leaky").await.unwrap(),
        "api-key",
    )
    .unwrap();

    keys.patch(
        "leaky",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"securechat.dev/rotate": "leak-1"}}})),
    )
    .await
    .expect("annotate");
    await_condition(
        keys.clone(),
        "leaky",
        "the request handled",
        Duration::from_secs(30),
        |k: Option<&ChatApiKey>| {
            k.and_then(|k| k.status.as_ref()?.handled_rotate_request.clone())
                .as_deref()
                == Some("leak-1")
        },
    )
    .await;
    // The new secret is staged, and the table accepts both.
    let staged = wait_for("the new secret staged", Duration::from_secs(30), || {
        let client = client.clone();
        let ns = ns.name.clone();
        async move { field(&consumer(&client, &ns, "leaky").await?, "next-api-key") }
    })
    .await;
    assert!(staged.starts_with(&format!("sk-sc-{id}-")), "same key id");
    let both = wait_for("the table to accept both", Duration::from_secs(30), || {
        let (client, ns) = (client.clone(), ns.name.clone());
        let (id, staged) = (id.clone(), staged.clone());
        async move {
            let record = table(&client, &ns, "m").await.get(&id).cloned()?;
            let accepted: Vec<_> = record
                .accepted_hashes(chrono::Utc::now())
                .cloned()
                .collect();
            accepted
                .contains(&SecretHash::of_key(&staged))
                .then_some(record)
        }
    })
    .await;
    let now = chrono::Utc::now();
    let accepted: Vec<_> = both.accepted_hashes(now).cloned().collect();
    assert!(
        accepted.contains(&SecretHash::of_key(&leaked)),
        "the old secret works during the grace"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    wait_for("a RotateRequested Event", Duration::from_secs(30), || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default().fields("regarding.name=leaky"))
                .await
                .ok()?;
            list.items.into_iter().find(|e| {
                e.type_.as_deref() == Some("Normal")
                    && e.reason.as_deref() == Some("RotateRequested")
            })
        }
    })
    .await;

    // Callers get the new secret; once the grace is over only it works.
    let grace_end = both.previous_secret_valid_until.expect("a grace");
    let handed = wait_for(
        "callers to get the new secret",
        Duration::from_secs(90),
        || {
            let (client, ns, staged) = (client.clone(), ns.name.clone(), staged.clone());
            async move {
                let key = field(&consumer(&client, &ns, "leaky").await?, "api-key")?;
                (key == staged).then_some(key)
            }
        },
    )
    .await;
    let left = (grace_end - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_secs(1)).await;
    let record = table(&client, &ns.name, "m")
        .await
        .get(&id)
        .cloned()
        .unwrap();
    let accepted: Vec<_> = record
        .accepted_hashes(chrono::Utc::now())
        .cloned()
        .collect();
    assert_eq!(
        accepted,
        [SecretHash::of_key(&handed)],
        "only the new secret"
    );

    // The same value again does nothing: the key is not rotated twice.
    let before = keys.get("leaky").await.unwrap();
    keys.patch(
        "leaky",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .expect("touch");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = keys.get("leaky").await.unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().last_rotated_at,
        before.status.as_ref().unwrap().last_rotated_at
    );
    assert_eq!(
        field(
            &consumer(&client, &ns.name, "leaky").await.unwrap(),
            "api-key"
        )
        .unwrap(),
        handed
    );
}

/// Issue 26: `expiresAfter` counts from the first mint, as its doc says,
/// not from the ChatApiKey's creation: time spent Pending (here: waiting
/// for its model) is not lost.
#[tokio::test]
async fn expires_after_counts_from_the_first_mint_not_from_creation() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "expiry-mint").await;
    let _operator = Operator::start(&client, &[&ns]);
    create_key(
        &client,
        &ns.name,
        "early",
        json!({"modelRef": {"name": "m"}, "expiresAfter": "1h"}),
    )
    .await;
    await_reason(&client, &ns.name, "early", KeyReason::ModelNotFound).await;
    // Pending a few seconds before the model exists.
    tokio::time::sleep(Duration::from_secs(5)).await;
    model_with_table(&client, &ns.name, &[]).await;
    let keys: Api<ChatApiKey> = Api::namespaced(client.clone(), &ns.name);
    let active = await_condition(
        keys.clone(),
        "early",
        "phase Active",
        Duration::from_secs(60),
        |k: Option<&ChatApiKey>| phase(k) == Some(KeyPhase::Active),
    )
    .await;
    let status = active.status.clone().unwrap();
    let seconds = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| t.0.as_second();
    let created = seconds(active.metadata.creation_timestamp.as_ref().unwrap());
    let minted = seconds(status.first_minted_at.as_ref().expect("firstMintedAt"));
    let expires = seconds(status.expires_at.as_ref().expect("expiresAt"));
    assert!(minted >= created + 5, "minted {minted}, created {created}");
    assert_eq!(expires, minted + 3600);
    let id = status.key_id.unwrap();
    let record = table(&client, &ns.name, "m")
        .await
        .get(&id)
        .cloned()
        .unwrap();
    assert_eq!(record.expires_at.map(|e| e.timestamp()), Some(expires));
}

/// Issue 26: consumer Secrets carry Stakater Reloader's match annotation,
/// so Deployments reading the key from an environment variable roll when
/// it rotates; `spec.reloader: false` takes it off the live Secret.
#[tokio::test]
async fn consumer_secrets_carry_the_reloader_annotation_unless_opted_out() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "reloader").await;
    let _operator = Operator::start(&client, &[&ns]);
    model_with_table(&client, &ns.name, &[]).await;
    create_key(
        &client,
        &ns.name,
        "env-consumer",
        json!({"modelRef": {"name": "m"}}),
    )
    .await;
    let annotation = |secret: &Secret| {
        secret
            .annotations()
            .get("reloader.stakater.com/match")
            .cloned()
    };
    let marked = wait_for("the consumer Secret", Duration::from_secs(60), || {
        let (client, ns) = (client.clone(), ns.name.clone());
        async move { consumer(&client, &ns, "env-consumer").await }
    })
    .await;
    assert_eq!(annotation(&marked).as_deref(), Some("true"));

    Api::<ChatApiKey>::namespaced(client.clone(), &ns.name)
        .patch(
            "env-consumer",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"reloader": false}})),
        )
        .await
        .expect("opt out");
    wait_for("the annotation to go", Duration::from_secs(60), || {
        let (client, ns) = (client.clone(), ns.name.clone());
        async move {
            let secret = consumer(&client, &ns, "env-consumer").await?;
            (secret
                .annotations()
                .get("reloader.stakater.com/match")
                .is_none()
                && field(&secret, "api-key").is_some())
            .then_some(())
        }
    })
    .await;
}

/// Issue 25 (who may mint what): an allowed namespace mints up to
/// Developer unless the model's owner names a higher tier for it in
/// `auth.apiKeys.maxTiers`. A key asking for more gets TierNotAllowed (and a
/// Warning Event) and nothing is minted; the owner raising the limit mints
/// it; lowering the limit again revokes it.
#[tokio::test]
async fn a_namespace_asking_above_its_max_tier_gets_tier_not_allowed() {
    let client = client().await;
    install_crds();
    let models_ns = TestNamespace::create(&client, "maxtier-model").await;
    let app = TestNamespace::create(&client, "maxtier-app").await;
    let _operator = Operator::start(&client, &[&models_ns, &app]);
    model_with_table(&client, &models_ns.name, &[&app.name]).await;
    let model_ref = json!({"name": "m", "namespace": models_ns.name});
    create_key(
        &client,
        &app.name,
        "wants-admin",
        json!({"modelRef": model_ref, "tier": "Admin"}),
    )
    .await;
    create_key(
        &client,
        &app.name,
        "developer",
        json!({"modelRef": model_ref, "tier": "Developer"}),
    )
    .await;
    let message = await_reason(&client, &app.name, "wants-admin", KeyReason::TierNotAllowed).await;
    assert!(
        message.starts_with("spec.tier Admin is above Developer"),
        "{message}"
    );
    assert!(consumer(&client, &app.name, "wants-admin").await.is_none());
    await_reason(&client, &app.name, "developer", KeyReason::Active).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &app.name);
    wait_for("the TierNotAllowed Event", Duration::from_secs(30), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("TierNotAllowed"))
                .then_some(())
        }
    })
    .await;

    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &models_ns.name);
    let set_max = |tier: &'static str| {
        let models = models.clone();
        let app = app.name.clone();
        async move {
            models
                .patch(
                    "m",
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"spec": {"auth": {"apiKeys": {"maxTiers": {app: tier}}}}}),
                    ),
                )
                .await
                .expect("maxTiers");
        }
    };
    set_max("Admin").await;
    await_reason(&client, &app.name, "wants-admin", KeyReason::Active).await;
    let keys: Api<ChatApiKey> = Api::namespaced(client.clone(), &app.name);
    let id = keys
        .get("wants-admin")
        .await
        .unwrap()
        .status
        .unwrap()
        .key_id
        .unwrap();
    assert!(
        table(&client, &models_ns.name, "m")
            .await
            .get(&id)
            .is_some()
    );

    set_max("Developer").await;
    record_gone(&client, &models_ns.name, &id, Duration::from_secs(30)).await;
    await_reason(&client, &app.name, "wants-admin", KeyReason::TierNotAllowed).await;
}
