//! The ChatApiKey reconcile loop: decide one step (pure, in `api_keys`),
//! write it, requeue. A finalizer removes the key's hash from the model's
//! table when the ChatApiKey is deleted (revocation).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use securechat_crds::conditions::{ConditionUpdate, set_condition};
use securechat_crds::files::api_keys::ApiKeyTable;
use securechat_crds::files::names;
use securechat_crds::v1alpha1::{
    API_VERSION, ChatApiKey, ChatApiKeyStatus, KeyPhase, SecureChatModel,
};
use tracing::{info, warn};

use crate::api_keys::{self, Consumer, KeyStep, KeyView};
use crate::apply::Writer;
use crate::controller::Context;
use crate::desired::secrets::CA_BUNDLE_LABEL;
use crate::labels::{self, Names};
use crate::{Error, FIELD_MANAGER, Result};

/// Label on consumer Secrets, naming their ChatApiKey.
pub const CONSUMER_LABEL: &str = "securechat.dev/api-key";

/// Expired entries are swept at least this often (the second seed's
/// five-minute cleanup).
const SWEEP: Duration = Duration::from_secs(300);

pub async fn run(state: Arc<Context>, namespaces: &[String]) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    futures::future::join_all(scopes.into_iter().map(|ns| {
        let state = state.clone();
        async move {
            let client = state.client.clone();
            let (keys, secrets, bundles) = match &ns {
                Some(ns) => (
                    Api::<ChatApiKey>::namespaced(client.clone(), ns),
                    Api::<Secret>::namespaced(client.clone(), ns),
                    Api::<ConfigMap>::namespaced(client.clone(), ns),
                ),
                None => (
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                ),
            };
            // Only the consumer Secrets and the CA bundles: the operator's
            // other Secrets and ConfigMaps (keys, certificates, configs of
            // every model) would otherwise be listed and watched here too.
            let consumers = watcher::Config::default().labels(CONSUMER_LABEL);
            let bundle_maps = watcher::Config::default().labels(CA_BUNDLE_LABEL);
            let controller = Controller::new(keys, watcher::Config::default())
                .with_config(state.controller_config())
                .trigger_backoff(crate::backoff::watch_backoff());
            // A CA rotation changes the model's bundle; every key of that
            // model copies it into its consumer Secret (ca.crt) within the
            // rotation's overlap. Keys of a model in another namespace of a
            // namespace list get it at their periodic resync instead.
            let keys_store = controller.store();
            controller
                .owns(secrets, consumers)
                .watches(bundles, bundle_maps, move |bundle| {
                    keys_of_bundle(&keys_store.state(), &bundle)
                })
                .shutdown_on_signal()
                .run(reconcile, error_policy, state)
                .for_each(|_| async {})
                .await;
        }
    }))
    .await;
}

/// The ChatApiKeys whose model's CA bundle this ConfigMap is.
fn keys_of_bundle(keys: &[Arc<ChatApiKey>], bundle: &ConfigMap) -> Vec<ObjectRef<ChatApiKey>> {
    let Some(model) = bundle
        .name_any()
        .strip_suffix("-ca-bundle")
        .map(str::to_string)
    else {
        return Vec::new();
    };
    let namespace = bundle.namespace();
    keys.iter()
        .filter(|k| {
            k.spec.model_ref.name == model
                && Some(model_namespace(k)) == namespace
                && Names::ca_bundle(&model) == bundle.name_any()
        })
        .map(|k| ObjectRef::from_obj(k.as_ref()))
        .collect()
}

async fn reconcile(key: Arc<ChatApiKey>, state: Arc<Context>) -> Result<Action> {
    let namespace = key
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<ChatApiKey> = Api::namespaced(state.client.clone(), &namespace);
    finalizer::finalizer(&api, api_keys::FINALIZER, key, |event| async {
        match event {
            Finalizer::Apply(key) => apply_key(&key, &state).await,
            Finalizer::Cleanup(key) => revoke(&key, &state).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn model_namespace(key: &ChatApiKey) -> String {
    key.spec
        .model_ref
        .namespace
        .clone()
        .or_else(|| key.namespace())
        .unwrap_or_default()
}

async fn apply_key(key: &ChatApiKey, state: &Context) -> Result<Action> {
    let client = &state.client;
    let namespace = key.namespace().unwrap_or_default();
    let model_ns = model_namespace(key);
    let model_name = &key.spec.model_ref.name;
    let id = api_keys::key_id(
        key.uid()
            .as_deref()
            .ok_or(Error::MissingField("metadata.uid"))?,
    );
    let secret_name = key
        .spec
        .secret_name
        .clone()
        .unwrap_or_else(|| key.name_any());
    let mut status = key.status.clone().unwrap_or_default();
    status.key_id = Some(id.clone());
    status.secret_name = Some(secret_name.clone());
    status.expires_at = api_keys::expires_at(key).and_then(to_time);

    let model = Api::<SecureChatModel>::namespaced(client.clone(), &model_ns)
        .get_opt(model_name)
        .await?;
    let Some(model) = model else {
        let message = format!("SecureChatModel {model_ns}/{model_name} does not exist");
        return blocked(key, state, status, "ModelNotFound", message).await;
    };
    if !api_keys::namespace_allowed(&model, &namespace) {
        let message = format!(
            "namespace {namespace} is not in {model_ns}/{model_name}'s auth.apiKeys.allowedNamespaces; no key was minted"
        );
        return blocked(key, state, status, "NamespaceNotAllowed", message).await;
    }
    let tables: Api<Secret> = Api::namespaced(client.clone(), &model_ns);
    let table_name = Names::api_keys(model_name);
    let Some(table_secret) = tables.get_opt(&table_name).await? else {
        let message = format!("the model's key table {model_ns}/{table_name} does not exist yet");
        return blocked(key, state, status, "ModelNotReady", message).await;
    };
    let table = read_table(&table_secret)?;
    let consumers: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let consumer_secret = consumers.get_opt(&secret_name).await?;
    let consumer = Consumer::from_data(consumer_secret.as_ref().and_then(|s| s.data.as_ref()));
    let now = Utc::now();
    let record = table.get(&id).cloned();
    let step = api_keys::next_key_step(
        &KeyView {
            key,
            id: &id,
            consumer: &consumer,
            record: record.as_ref(),
            now,
        },
        || api_keys::new_plaintext(&id),
    )?;
    let mut writer = Writer::new(client.clone());
    let endpoint = model.status.as_ref().and_then(|s| s.endpoint.clone());
    let ca = Api::<ConfigMap>::namespaced(client.clone(), &model_ns)
        .get_opt(&Names::ca_bundle(model_name))
        .await?
        .and_then(|c| c.data?.get(names::CA_CERT).cloned());
    let consumer_object = |c: &Consumer| {
        consumer_secret_object(
            key,
            &secret_name,
            &id,
            c,
            endpoint.as_deref(),
            ca.as_deref(),
        )
    };
    let requeue = match &step {
        KeyStep::Mint { plaintext } => {
            writer
                .apply(&consumer_object(&Consumer {
                    current: Some(plaintext.clone()),
                    next: None,
                }))
                .await?;
            info!(key = %key.name_any(), %id, "minted an API key");
            Some(Duration::from_millis(200))
        }
        KeyStep::StageNext { plaintext } => {
            writer
                .apply(&consumer_object(&Consumer {
                    current: consumer.current.clone(),
                    next: Some(plaintext.clone()),
                }))
                .await?;
            info!(key = %key.name_any(), %id, "staged the next API key");
            Some(Duration::from_millis(200))
        }
        KeyStep::HandOver => {
            writer
                .apply(&consumer_object(&Consumer {
                    current: consumer.next.clone(),
                    next: None,
                }))
                .await?;
            info!(key = %key.name_any(), %id, "handed the rotated API key to callers");
            Some(Duration::from_millis(200))
        }
        KeyStep::WriteRecord(record) => {
            let record = record.clone();
            write_table(&tables, table_secret, |t| api_keys::upsert(t, record)).await?;
            Some(Duration::from_millis(200))
        }
        KeyStep::RemoveRecord => {
            let id = id.clone();
            write_table(&tables, table_secret, |t| t.keys.retain(|k| k.id != id)).await?;
            info!(key = %key.name_any(), %id, "removed the expired API key from the table");
            Some(Duration::from_millis(200))
        }
        KeyStep::Wait(at) => at.map(|at| {
            (at - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_secs(1), SWEEP)
        }),
    };
    // Keep the consumer Secret's metadata (endpoint, CA) current too.
    if matches!(step, KeyStep::Wait(_) | KeyStep::WriteRecord(_)) && consumer.current.is_some() {
        writer.apply(&consumer_object(&consumer)).await?;
    }

    let record = table.get(&id);
    let expired = api_keys::expires_at(key).is_some_and(|e| e <= now);
    let phase = if expired {
        KeyPhase::Expired
    } else if consumer.current.is_none() || record.is_none() {
        KeyPhase::Pending
    } else if key.spec.suspended {
        KeyPhase::Suspended
    } else if consumer.next.is_some()
        || record.is_some_and(|r| r.previous_secret_valid_until.is_some_and(|v| v > now))
    {
        KeyPhase::Rotating
    } else {
        KeyPhase::Active
    };
    status.phase = Some(phase);
    if let Some(r) = record {
        status.last_rotated_at = r.rotated_at.and_then(to_time);
        status.grace_ends_at = r
            .previous_secret_valid_until
            .filter(|v| *v > now)
            .and_then(to_time);
        status.next_rotation_at =
            key.spec.rotation.as_ref().and_then(|rot| {
                to_time(r.rotated_at.unwrap_or(r.created_at) + rot.period.as_chrono())
            });
    }
    let (ready, reason, message) = match phase {
        KeyPhase::Active => (
            true,
            "Active",
            format!("key {id} is in Secret {secret_name}"),
        ),
        KeyPhase::Rotating => (
            true,
            "Rotating",
            format!("key {id} is rotating; the previous secret works until the grace ends"),
        ),
        KeyPhase::Suspended => (
            false,
            "Suspended",
            "spec.suspended is true; requests with this key are refused".into(),
        ),
        KeyPhase::Expired => (
            false,
            "Expired",
            "the key expired and was removed from the model's table".into(),
        ),
        KeyPhase::Pending => (false, "Minting", "minting the key".into()),
    };
    write_status(key, state, status, ready, reason, message).await?;
    Ok(match requeue {
        Some(after) => Action::requeue(after),
        None => Action::requeue(SWEEP),
    })
}

/// The key cannot be minted: say why in a condition, write nothing else.
async fn blocked(
    key: &ChatApiKey,
    state: &Context,
    mut status: ChatApiKeyStatus,
    reason: &str,
    message: String,
) -> Result<Action> {
    status.phase = Some(KeyPhase::Pending);
    write_status(key, state, status, false, reason, message).await?;
    Ok(Action::requeue(Duration::from_secs(30)))
}

async fn write_status(
    key: &ChatApiKey,
    state: &Context,
    mut status: ChatApiKeyStatus,
    ready: bool,
    reason: &str,
    message: String,
) -> Result<()> {
    status.observed_generation = key.metadata.generation;
    set_condition(
        &mut status.conditions,
        ConditionUpdate::new("Ready", ready, reason, message),
        key.metadata.generation,
        Timestamp::now(),
    );
    if key.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<ChatApiKey> =
        Api::namespaced(state.client.clone(), &key.namespace().unwrap_or_default());
    let patch =
        serde_json::json!({"apiVersion": API_VERSION, "kind": "ChatApiKey", "status": status});
    api.patch_status(
        &key.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Revocation: the hash leaves the model's table before the ChatApiKey
/// (and, through its owner reference, the consumer Secret) goes.
async fn revoke(key: &ChatApiKey, state: &Context) -> Result<Action> {
    let model_ns = model_namespace(key);
    let tables: Api<Secret> = Api::namespaced(state.client.clone(), &model_ns);
    let id = api_keys::key_id(&key.uid().unwrap_or_default());
    if let Some(secret) = tables
        .get_opt(&Names::api_keys(&key.spec.model_ref.name))
        .await?
        && read_table(&secret)?.get(&id).is_some()
    {
        write_table(&tables, secret, |t| t.keys.retain(|k| k.id != id)).await?;
        info!(key = %key.name_any(), %id, "revoked the API key");
    }
    Ok(Action::await_change())
}

fn read_table(secret: &Secret) -> Result<ApiKeyTable> {
    match secret.data.as_ref().and_then(|d| d.get(names::API_KEYS)) {
        None => Ok(ApiKeyTable::default()),
        Some(raw) => serde_json::from_slice(&raw.0).map_err(|e| Error::Render {
            what: "API-key table",
            message: format!("{} is unreadable: {e}", secret.name_any()),
        }),
    }
}

/// Read-modify-write of the model's table with optimistic concurrency:
/// many ChatApiKeys share it, and a concurrent write makes this one fail
/// with 409 and retry, never lose an entry.
async fn write_table(
    api: &Api<Secret>,
    mut secret: Secret,
    change: impl FnOnce(&mut ApiKeyTable),
) -> Result<()> {
    let mut table = read_table(&secret)?;
    change(&mut table);
    table.validate().map_err(|e| Error::Render {
        what: "API-key table",
        message: e.to_string(),
    })?;
    let json = serde_json::to_string_pretty(&table).map_err(|e| Error::Render {
        what: "API-key table",
        message: e.to_string(),
    })?;
    secret
        .data
        .get_or_insert_with(Default::default)
        .insert(names::API_KEYS.into(), ByteString(json.into_bytes()));
    api.replace(&secret.name_any(), &PostParams::default(), &secret)
        .await?;
    Ok(())
}

fn consumer_secret_object(
    key: &ChatApiKey,
    name: &str,
    id: &str,
    consumer: &Consumer,
    endpoint: Option<&str>,
    ca: Option<&str>,
) -> Secret {
    let mut data = std::collections::BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
    };
    if let Some(current) = &consumer.current {
        put(api_keys::API_KEY, current);
    }
    if let Some(next) = &consumer.next {
        put(api_keys::NEXT_API_KEY, next);
    }
    put(api_keys::KEY_ID, id);
    if let Some(endpoint) = endpoint {
        put("endpoint", endpoint);
    }
    if let Some(ca) = ca {
        put(names::CA_CERT, ca);
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: key.namespace(),
            labels: Some(
                [
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        labels::MANAGED_BY.to_string(),
                    ),
                    (CONSUMER_LABEL.to_string(), key.name_any()),
                ]
                .into(),
            ),
            owner_references: key
                .controller_owner_ref(&())
                .map(|o: OwnerReference| vec![o]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

fn to_time(t: chrono::DateTime<Utc>) -> Option<Time> {
    Timestamp::from_second(t.timestamp()).ok().map(Time)
}

fn error_policy(key: Arc<ChatApiKey>, error: &Error, _: Arc<Context>) -> Action {
    warn!(key = %key.name_any(), namespace = ?key.namespace(), error = %error, "ChatApiKey reconcile error");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(namespace: &str, name: &str, model_ref: serde_json::Value) -> Arc<ChatApiKey> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": API_VERSION,
                "kind": "ChatApiKey",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"modelRef": model_ref},
            }))
            .expect("ChatApiKey"),
        )
    }

    fn bundle(namespace: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_bundle_change_wakes_the_keys_of_its_model_only() {
        let keys = [
            key("chat", "same-ns", json!({"name": "glm"})),
            key(
                "apps",
                "other-ns",
                json!({"name": "glm", "namespace": "chat"}),
            ),
            key("chat", "other-model", json!({"name": "smol"})),
            key("apps", "same-name-wrong-ns", json!({"name": "glm"})),
        ];
        let woken: Vec<String> = keys_of_bundle(&keys, &bundle("chat", "glm-ca-bundle"))
            .into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect();
        assert_eq!(woken, ["chat/same-ns", "apps/other-ns"]);
        assert!(keys_of_bundle(&keys, &bundle("chat", "glm-config")).is_empty());
    }
}
