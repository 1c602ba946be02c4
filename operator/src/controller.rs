//! The reconcile loop: thin on purpose. Build the desired objects (pure),
//! apply what changed, observe, compute status (pure), write status if it
//! changed, and tell people what happened through Events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use securechat_crds::v1alpha1::{API_VERSION, SecureChatModel, SecureChatModelStatus};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::apply::Writer;
use crate::desired::{self, Context};
use crate::labels::{self, Names};
use crate::metrics::Metrics;
use crate::status::{Observed, model_status, requeue_after};
use crate::{Error, FIELD_MANAGER, Result, material};

/// Shared by every reconcile.
pub struct State {
    pub client: Client,
    /// Server image for models that name none.
    pub default_image: String,
    pub metrics: Arc<Metrics>,
    /// Reconciles at once per controller (`--max-concurrent-reconciles`).
    pub max_concurrent_reconciles: u16,
    recorder: Recorder,
}

impl State {
    pub fn new(client: Client, default_image: String, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            default_image,
            metrics,
            max_concurrent_reconciles: DEFAULT_MAX_CONCURRENT_RECONCILES,
        }
    }

    pub fn with_max_concurrent_reconciles(mut self, n: u16) -> Self {
        self.max_concurrent_reconciles = n.max(1);
        self
    }

    /// The controller settings every controller of the operator uses.
    pub fn controller_config(&self) -> kube::runtime::controller::Config {
        kube::runtime::controller::Config::default().concurrency(self.max_concurrent_reconciles)
    }
}

/// As `--max-concurrent-reconciles` defaults (kube-runtime's own default
/// is unbounded: 1,000 models applied at once would all reconcile at once).
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 8;

/// Watches SecureChatModels (in all namespaces when `namespaces` is empty,
/// else in each listed one) and what they own, and reconciles until the
/// shutdown signal.
pub async fn run(state: Arc<State>, namespaces: &[String]) {
    if namespaces.is_empty() {
        run_scope(state, None).await;
    } else {
        futures::future::join_all(
            namespaces
                .iter()
                .map(|ns| run_scope(state.clone(), Some(ns.as_str()))),
        )
        .await;
    }
}

/// An Api over one namespace, or all of them.
pub(crate) fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn run_scope(state: Arc<State>, namespace: Option<&str>) {
    let client = state.client.clone();
    let owned = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={}",
        labels::MANAGED_BY
    ));
    // Pods are not owned directly (ReplicaSets are), but their scheduling
    // state feeds the Available condition, so they wake their model.
    let pods_of_models = watcher::Config::default().labels(labels::MODEL_LABEL);
    Controller::new(
        api::<SecureChatModel>(&client, namespace),
        watcher::Config::default(),
    )
    .owns(api::<Deployment>(&client, namespace), owned.clone())
    .owns(api::<Service>(&client, namespace), owned.clone())
    .owns(api::<NetworkPolicy>(&client, namespace), owned)
    .watches(
        api::<Pod>(&client, namespace),
        pods_of_models,
        |pod: Pod| {
            let model = pod.labels().get(labels::MODEL_LABEL)?.clone();
            Some(ObjectRef::<SecureChatModel>::new(&model).within(&pod.namespace()?))
        },
    )
    .with_config(state.controller_config())
    .trigger_backoff(crate::backoff::watch_backoff())
    .shutdown_on_signal()
    .run(reconcile, error_policy, state)
    .for_each(|result| async move {
        match result {
            Ok((obj, _)) => debug!(model = %obj.name, "reconciled"),
            Err(e) => debug!(error = %e, "reconcile failed"),
        }
    })
    .await;
}

async fn reconcile(model: Arc<SecureChatModel>, state: Arc<State>) -> Result<Action> {
    let name = model.name_any();
    let namespace = model.namespace().unwrap_or_default();
    let span = info_span!("reconcile", model = %name, namespace = %namespace);
    let started = Instant::now();
    let result = reconcile_model(&model, &state).instrument(span).await;
    let error = result.as_ref().err().map(Error::metric_label);
    state
        .metrics
        .reconciled(&namespace, &name, started.elapsed(), error);
    result
}

async fn reconcile_model(model: &SecureChatModel, state: &State) -> Result<Action> {
    if model.metadata.deletion_timestamp.is_some() {
        // Owner references hand everything to the garbage collector.
        state
            .metrics
            .forget(&model.namespace().unwrap_or_default(), &model.name_any());
        return Ok(Action::await_change());
    }
    let ctx = Context::new(model, &state.default_image)?;
    let mut writer = Writer::new(state.client.clone());

    writer.apply(&desired::service_account(&ctx)).await?;
    writer.apply(&desired::service(&ctx)).await?;
    let network = desired::network_policy(&ctx);
    writer.apply(&network.policy).await?;
    let now = chrono::Utc::now();
    let tls = match material::tls(&mut writer, &ctx, now).await {
        Ok(tls) => tls,
        Err(e) => {
            return Err(material_failed(state, model, "tls", crate::status::TLS_READY, e).await);
        }
    };
    let keys = match material::signing_keys(&mut writer, &ctx, now).await {
        Ok(keys) => keys,
        Err(e) => {
            let condition = crate::status::SIGNING_KEYS_READY;
            return Err(material_failed(state, model, "signing_keys", condition, e).await);
        }
    };
    material::api_keys(&mut writer, &ctx).await?;
    let (config_map, config_checksum) = desired::config_map(&ctx)?;
    writer.apply(&config_map).await?;
    let deployment = writer
        .apply(&desired::deployment(&ctx, &config_checksum))
        .await?;
    match desired::pdb(&ctx) {
        Some(pdb) => {
            writer.apply(&pdb).await?;
        }
        None => {
            writer
                .delete_if_present::<PodDisruptionBudget, _>(
                    model,
                    &ctx.namespace,
                    &Names::pdb(&ctx.name),
                )
                .await?
        }
    }

    let host = ctx.service_host();
    let observed = Observed {
        deployment: deployment.status,
        unschedulable: unschedulable_message(&state.client, &ctx).await?,
        refused_rules: network.refused,
        endpoint: format!("https://{host}:{}", model.spec.ports.api),
        web_endpoint: format!("https://{host}:{}", model.spec.ports.web),
        tls: Some(tls.state.clone()),
        signing_keys: Some(keys.state.clone()),
    };
    let status = model_status(model, &observed, Timestamp::now());
    for change in &writer.changes {
        state.metrics.wrote(&change.kind);
    }
    if !writer.changes.is_empty() {
        let note: Vec<String> = writer.changes.iter().map(ToString::to_string).collect();
        info!(changes = %note.join(", "), "applied");
        publish(state, model, EventType::Normal, "Applied", note.join("; ")).await;
    }
    if model.status.as_ref() != Some(&status) {
        // Trouble is reported per condition; good news once, by Ready.
        // (Every Event is a write: a model converging is not six of them.)
        for (type_, reason, message) in condition_changes(model.status.as_ref(), &status) {
            if reason_is_trouble(&type_, &status) {
                let note = format!("{type_}: {message}");
                publish(state, model, EventType::Warning, &reason, note).await;
            } else if type_ == crate::status::READY {
                publish(state, model, EventType::Normal, &reason, message).await;
            }
        }
        let api: Api<SecureChatModel> = Api::namespaced(state.client.clone(), &ctx.namespace);
        let patch = serde_json::json!({"apiVersion": API_VERSION, "kind": "SecureChatModel", "status": status});
        api.patch_status(
            &ctx.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    // Owned objects and pods wake us on change; certificate renewal and key
    // rotation are due at known times; the periodic requeue catches anything
    // a watch missed, sooner while the model is not Ready.
    let material_due = [tls.next_action_at, keys.next_action_at]
        .into_iter()
        .flatten()
        .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
        .min();
    Ok(Action::requeue(requeue_after(&status, material_due)))
}

/// A certificate renewal or key rotation failed: counted, shown as the
/// material's condition (reason RenewalFailed) and as a Warning event, then
/// retried by the error policy. The last good material stays in force.
async fn material_failed(
    state: &State,
    model: &SecureChatModel,
    material: &str,
    condition: &str,
    error: Error,
) -> Error {
    state.metrics.material_failed(material);
    let message = format!("{material}: {error}");
    let mut status = model.status.clone().unwrap_or_default();
    let changed = securechat_crds::conditions::set_condition(
        &mut status.conditions,
        securechat_crds::conditions::ConditionUpdate::new(
            condition,
            false,
            "RenewalFailed",
            message.clone(),
        ),
        model.metadata.generation,
        k8s_openapi::jiff::Timestamp::now(),
    );
    if changed {
        publish(state, model, EventType::Warning, "RenewalFailed", message).await;
        let api: Api<SecureChatModel> =
            Api::namespaced(state.client.clone(), &model.namespace().unwrap_or_default());
        let patch = serde_json::json!({"apiVersion": API_VERSION, "kind": "SecureChatModel", "status": status});
        if let Err(e) = api
            .patch_status(
                &model.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            warn!(error = %e, "could not report the failed renewal in the status");
        }
    }
    error
}

/// The scheduler's message for a pod of this model it could not place.
async fn unschedulable_message(client: &Client, ctx: &Context<'_>) -> Result<Option<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ctx.namespace);
    let selector = format!("{}={}", labels::MODEL_LABEL, ctx.name);
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(list.items.iter().find_map(|pod| {
        pod.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .and_then(|c| c.message.clone())
    }))
}

/// Conditions whose status or reason changed: (type, reason, message).
pub fn condition_changes(
    old: Option<&SecureChatModelStatus>,
    new: &SecureChatModelStatus,
) -> Vec<(String, String, String)> {
    new.conditions
        .iter()
        .filter(|c| {
            let before = old.and_then(|o| o.conditions.iter().find(|p| p.type_ == c.type_));
            before.is_none_or(|p| p.status != c.status || p.reason != c.reason)
        })
        // Degraded=False on first sight is not news.
        .filter(|c| !(old.is_none() && c.type_ == crate::status::DEGRADED && c.status == "False"))
        .map(|c| (c.type_.clone(), c.reason.clone(), c.message.clone()))
        .collect()
}

fn reason_is_trouble(type_: &str, status: &SecureChatModelStatus) -> bool {
    let Some(c) = status.conditions.iter().find(|c| c.type_ == type_) else {
        return false;
    };
    if type_ == crate::status::DEGRADED {
        c.status == "True"
    } else {
        // A model that is merely starting is not a warning.
        c.status == "False" && !matches!(c.reason.as_str(), "NoReplicasReady" | "Pending")
    }
}

async fn publish(
    state: &State,
    model: &SecureChatModel,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let mut note = note;
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    let event = Event {
        type_,
        reason: reason.chars().take(128).collect(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    // Events are best effort: failing to record one must not fail the
    // reconcile (e.g. an RBAC gap for events).
    if let Err(e) = state.recorder.publish(&event, &model.object_ref(&())).await {
        warn!(error = %e, "could not publish an event");
    }
}

fn error_policy(model: Arc<SecureChatModel>, error: &Error, _: Arc<State>) -> Action {
    warn!(model = %model.name_any(), namespace = ?model.namespace(), error = %error, label = error.metric_label(), "reconcile error");
    match error {
        Error::Kube(_) => Action::requeue(Duration::from_secs(5)),
        Error::Render { .. }
        | Error::NotOwned { .. }
        | Error::MissingField(_)
        | Error::Finalizer(_) => Action::requeue(Duration::from_secs(60)),
    }
}
