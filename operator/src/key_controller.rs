//! The ChatApiKey reconcile loop: observe (the model, its key table, the
//! consumer Secret, the CA bundle), decide (pure, in `key_plan`), write the
//! plan in order, requeue. A finalizer removes the key's hash from the
//! model's table when the ChatApiKey is deleted (revocation).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use securechat_crds::files::names;
use securechat_crds::v1alpha1::{ChatApiKey, SecureChatModel};
use tracing::{info, warn};

use crate::api_keys;
use crate::apply::{Writer, controlled_by};
use crate::client_cert;
use crate::controller::{Context, api};
use crate::desired::secrets::CA_BUNDLE_LABEL;
use crate::key_plan::{
    self, KeyObserved, KeyPlan, KeyWrite, consumer_secret_name, model_namespace, read_table,
};
use crate::labels::Names;
use crate::reasons::api_key::ROTATE_REQUESTED;
use crate::status_writer::patch_status;
use crate::{Error, FIELD_MANAGER, Result};

pub use crate::key_plan::CONSUMER_LABEL;

/// What every ChatApiKey reconcile shares: the operator's state and the
/// recorder of this controller's Events.
struct KeyContext {
    state: Arc<Context>,
    recorder: Recorder,
}

pub async fn run(state: Arc<Context>, namespaces: &[String]) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let context = Arc::new(KeyContext {
        recorder: Recorder::new(state.client.clone(), reporter),
        state: state.clone(),
    });
    futures::future::join_all(scopes.iter().map(|ns| {
        let context = context.clone();
        let client = state.client.clone();
        let (keys, secrets) = (
            api::<ChatApiKey>(&client, ns.as_deref()),
            api::<Secret>(&client, ns.as_deref()),
        );
        // Only the consumer Secrets: the operator's other Secrets (keys,
        // certificates of every model) would otherwise be listed and
        // watched here too.
        let consumers = watcher::Config::default().labels(CONSUMER_LABEL);
        let mut controller = Controller::new(keys, watcher::Config::default())
            .with_config(state.controller_config())
            .trigger_backoff(crate::backoff::watch_backoff())
            .owns(secrets, consumers);
        // A model's change wakes its keys at once, wherever they are: a
        // namespace removed from auth.apiKeys.allowedNamespaces revokes its
        // keys now, not at their next periodic look. So does its CA bundle
        // (a CA rotation): every key copies it into its consumer Secret
        // (ca.crt) within the rotation's overlap. A key may name a model in
        // another watched namespace, so each scope's controller watches
        // models and bundles in every scope (a list of n namespaces makes
        // n^2 watches; the operator is given few).
        for model_scope in &scopes {
            let store = controller.store();
            controller = controller.watches(
                api::<SecureChatModel>(&client, model_scope.as_deref()),
                watcher::Config::default(),
                move |model| keys_of_model(&store.state(), model.namespace(), &model.name_any()),
            );
            let store = controller.store();
            controller = controller.watches(
                api::<ConfigMap>(&client, model_scope.as_deref()),
                watcher::Config::default().labels(CA_BUNDLE_LABEL),
                move |bundle| keys_of_bundle(&store.state(), &bundle),
            );
        }
        async move {
            controller
                .shutdown_on_signal()
                .run(reconcile, error_policy, context)
                .for_each(|_| async {})
                .await;
        }
    }))
    .await;
}

/// The ChatApiKeys of the model `name` in `namespace`.
fn keys_of_model(
    keys: &[Arc<ChatApiKey>],
    namespace: Option<String>,
    name: &str,
) -> Vec<ObjectRef<ChatApiKey>> {
    keys.iter()
        .filter(|k| k.spec.model_ref.name == name && Some(model_namespace(k)) == namespace)
        .map(|k| ObjectRef::from_obj(k.as_ref()))
        .collect()
}

/// The ChatApiKeys whose model's CA bundle this ConfigMap is.
fn keys_of_bundle(keys: &[Arc<ChatApiKey>], bundle: &ConfigMap) -> Vec<ObjectRef<ChatApiKey>> {
    let name = bundle.name_any();
    match name.strip_suffix("-ca-bundle") {
        Some(model) if Names::ca_bundle(model) == name => {
            keys_of_model(keys, bundle.namespace(), model)
        }
        _ => Vec::new(),
    }
}

async fn reconcile(key: Arc<ChatApiKey>, context: Arc<KeyContext>) -> Result<Action> {
    let namespace = key
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<ChatApiKey> = Api::namespaced(context.state.client.clone(), &namespace);
    finalizer::finalizer(&api, api_keys::FINALIZER, key, |event| async {
        match event {
            Finalizer::Apply(key) => apply_key(&key, &context).await,
            Finalizer::Cleanup(key) => revoke(&key, &context.state.client).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Reads what the plan decides on. Without the model nothing else matters.
async fn observe(key: &ChatApiKey, client: &Client) -> Result<KeyObserved> {
    let model_ns = model_namespace(key);
    let model_name = &key.spec.model_ref.name;
    let model = Api::<SecureChatModel>::namespaced(client.clone(), &model_ns)
        .get_opt(model_name)
        .await?;
    if model.is_none() {
        return Ok(KeyObserved::default());
    }
    let in_model_ns = Api::<Secret>::namespaced(client.clone(), &model_ns);
    let in_key_ns = Api::<Secret>::namespaced(client.clone(), &key.namespace().unwrap_or_default());
    Ok(KeyObserved {
        model,
        table: in_model_ns.get_opt(&Names::api_keys(model_name)).await?,
        consumer: in_key_ns.get_opt(&consumer_secret_name(key)).await?,
        ca: Api::<ConfigMap>::namespaced(client.clone(), &model_ns)
            .get_opt(&Names::ca_bundle(model_name))
            .await?
            .and_then(|c| c.data?.remove(names::CA_CERT)),
        // Its private key only where a certificate is to be signed.
        ca_secret: if key.spec.credential.has_certificate() {
            in_model_ns.get_opt(&Names::ca_secret(model_name)).await?
        } else {
            None
        },
    })
}

async fn apply_key(key: &ChatApiKey, context: &KeyContext) -> Result<Action> {
    let client = &context.state.client;
    let observed = observe(key, client).await?;
    let plan = key_plan::plan(
        key,
        &observed,
        Utc::now(),
        api_keys::new_plaintext,
        client_cert::sign,
    )?;
    execute(key, client, &plan).await?;
    if let Some(note) = plan.note {
        info!(key = %key.name_any(), id = ?plan.status.key_id, "{note}");
    }
    if let Some(warning) = &plan.warning {
        publish(
            context,
            key,
            EventType::Warning,
            plan.reason.as_str(),
            warning,
        )
        .await;
    }
    if let Some(note) = &plan.rotate_requested {
        info!(key = %key.name_any(), "{note}");
        publish(context, key, EventType::Normal, ROTATE_REQUESTED, note).await;
    }
    if key.status.as_ref() != Some(&plan.status) {
        patch_status(client, key, &plan.status).await?;
    }
    Ok(Action::requeue(plan.requeue))
}

/// The plan's writes, in order; the first failure stops the rest (the next
/// reconcile plans again from what was written).
async fn execute(key: &ChatApiKey, client: &Client, plan: &KeyPlan) -> Result<()> {
    let mut writer = Writer::new(client.clone());
    for write in &plan.writes {
        match write {
            KeyWrite::Consumer(secret) => {
                writer.apply(secret).await?;
            }
            KeyWrite::DeleteConsumer { namespace, name } => {
                writer
                    .delete_if_present::<Secret, _>(key, namespace, name)
                    .await?;
            }
            KeyWrite::Table(table) => {
                let namespace = table
                    .namespace()
                    .ok_or(Error::MissingField("metadata.namespace"))?;
                Api::<Secret>::namespaced(client.clone(), &namespace)
                    .replace(&table.name_any(), &PostParams::default(), table)
                    .await?;
            }
        }
    }
    Ok(())
}

/// An Event on the ChatApiKey. Best effort: failing to record one must
/// not fail the reconcile.
async fn publish(
    context: &KeyContext,
    key: &ChatApiKey,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = context.recorder.publish(&event, &key.object_ref(&())).await {
        warn!(error = %e, "could not publish an event");
    }
}

/// Revocation: the hash leaves the model's table before the ChatApiKey
/// (and, through its owner reference, the consumer Secret) goes. Only a
/// table the model controls is written.
async fn revoke(key: &ChatApiKey, client: &Client) -> Result<Action> {
    let model_ns = model_namespace(key);
    let model_name = &key.spec.model_ref.name;
    let Some(model) = Api::<SecureChatModel>::namespaced(client.clone(), &model_ns)
        .get_opt(model_name)
        .await?
    else {
        // Its table went (or goes) with it.
        return Ok(Action::await_change());
    };
    let tables: Api<Secret> = Api::namespaced(client.clone(), &model_ns);
    let id = api_keys::key_id(&key.uid().unwrap_or_default());
    if let Some(mut secret) = tables.get_opt(&Names::api_keys(model_name)).await?
        && controlled_by(&secret.metadata, model.uid().as_deref())
    {
        let mut table = read_table(&secret)?;
        if table.get(&id).is_some() {
            table.keys.retain(|k| k.id != id);
            secret = key_plan::with_table(&secret, &table)?;
            tables
                .replace(&secret.name_any(), &PostParams::default(), &secret)
                .await?;
            info!(key = %key.name_any(), %id, "revoked the API key");
        }
    }
    Ok(Action::await_change())
}

fn error_policy(key: Arc<ChatApiKey>, error: &Error, _: Arc<KeyContext>) -> Action {
    warn!(key = %key.name_any(), namespace = ?key.namespace(), error = %error, "ChatApiKey reconcile error");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use securechat_crds::v1alpha1::API_VERSION;
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

    fn woken(refs: Vec<ObjectRef<ChatApiKey>>) -> Vec<String> {
        refs.into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect()
    }

    /// Issue 19: a model's change (its allowedNamespaces) must reach its
    /// keys in other namespaces at once, not at their next periodic look.
    /// Keys of the model `chat/glm` in two namespaces, and two that only
    /// look alike.
    fn keys() -> [Arc<ChatApiKey>; 4] {
        [
            key("chat", "same-ns", json!({"name": "glm"})),
            key(
                "apps",
                "other-ns",
                json!({"name": "glm", "namespace": "chat"}),
            ),
            key("chat", "other-model", json!({"name": "smol"})),
            key("apps", "same-name-wrong-ns", json!({"name": "glm"})),
        ]
    }

    #[test]
    fn a_model_change_wakes_its_keys_in_every_namespace() {
        let keys = keys();
        assert_eq!(
            woken(keys_of_model(&keys, Some("chat".into()), "glm")),
            ["chat/same-ns", "apps/other-ns"]
        );
        assert_eq!(
            woken(keys_of_model(&keys, Some("apps".into()), "glm")),
            ["apps/same-name-wrong-ns"]
        );
    }

    #[test]
    fn a_bundle_change_wakes_the_keys_of_its_model_only() {
        let keys = keys();
        assert_eq!(
            woken(keys_of_bundle(&keys, &bundle("chat", "glm-ca-bundle"))),
            ["chat/same-ns", "apps/other-ns"]
        );
        assert!(keys_of_bundle(&keys, &bundle("chat", "glm-config")).is_empty());
    }
}
