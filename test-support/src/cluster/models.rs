//! What the operator tests against the real API server share: a namespace
//! with the operator scoped to it, and reading and awaiting a
//! SecureChatModel's conditions.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use securechat_crds::SecureChatModel;
use serde_json::json;

use super::{InProcessOperator, TestNamespace, await_condition, client, install_crds, wait_for};

/// A namespace for one test, the operator scoped to it, and its models.
pub struct OperatorNamespace {
    pub client: Client,
    pub ns: TestNamespace,
    pub operator: InProcessOperator,
    pub models: Api<SecureChatModel>,
}

impl OperatorNamespace {
    /// The CRDs installed, a fresh namespace named after `prefix`, and the
    /// operator watching it.
    pub async fn start(prefix: &str) -> Self {
        let client = client().await;
        install_crds();
        let ns = TestNamespace::create(&client, prefix).await;
        let operator =
            InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
        let models = Api::namespaced(client.clone(), &ns.name);
        Self {
            client,
            ns,
            operator,
            models,
        }
    }
}

/// A SecureChatModel named `name` with `spec`, namespace left to the Api.
pub fn model(name: &str, spec: serde_json::Value) -> SecureChatModel {
    serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a SecureChatModel from JSON")
}

/// Creates the model `name` with `spec`.
pub async fn create_model(models: &Api<SecureChatModel>, name: &str, spec: serde_json::Value) {
    models
        .create(&PostParams::default(), &model(name, spec))
        .await
        .unwrap_or_else(|e| panic!("create the model {name}: {e}"));
}

/// A condition's (status, reason, message).
pub fn condition(model: Option<&SecureChatModel>, type_: &str) -> Option<(String, String, String)> {
    let c = model?
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// How long a test waits for a condition the operator sets.
pub const CONDITION_WAIT: Duration = Duration::from_secs(90);

/// Waits (up to [`CONDITION_WAIT`]) until condition `type_` of model `name`
/// is `status` with `reason` (any reason if empty) and a message containing
/// `text`; returns the message.
pub async fn await_reason(
    models: &Api<SecureChatModel>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
    text: &str,
) -> String {
    let what = format!("{type_}={status}/{reason} saying {text:?}");
    let model = await_condition(
        models.clone(),
        name,
        &what,
        CONDITION_WAIT,
        |m: Option<&SecureChatModel>| {
            condition(m, type_).is_some_and(|(s, r, m)| {
                s == status && (reason.is_empty() || r == reason) && m.contains(text)
            })
        },
    )
    .await;
    condition(Some(&model), type_)
        .unwrap_or_else(|| panic!("{} has no {type_} condition", model.name_any()))
        .2
}

/// The note of a Warning Event on `model` with `reason`, once there is one
/// (up to 30 s).
pub async fn warning(client: &Client, namespace: &str, model: &str, reason: &str) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("involvedObject.name={model}");
    wait_for(
        &format!("a Warning Event {reason}"),
        Duration::from_secs(30),
        || {
            let (events, selector) = (events.clone(), selector.clone());
            async move {
                let list = events
                    .list(&ListParams::default().fields(&selector))
                    .await
                    .ok()?;
                list.items.into_iter().find_map(|e| {
                    (e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
                        .then(|| e.message.unwrap_or_default())
                })
            }
        },
    )
    .await
}
