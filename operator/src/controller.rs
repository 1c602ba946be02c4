//! The reconcile loop: thin on purpose. Build the desired objects (pure),
//! apply them, observe, compute status (pure), write status.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use securechat_crds::v1alpha1::{API_VERSION, SecureChatModel};
use tracing::{info, warn};

use crate::desired::{self, Context};
use crate::labels::Names;
use crate::status::{Observed, model_status};
use crate::{Error, FIELD_MANAGER, Result, apply, material};

/// Shared by every reconcile.
pub struct State {
    pub client: Client,
    /// Server image for models that name none.
    pub default_image: String,
}

/// Watches SecureChatModels (all namespaces, or one) and what they own, and
/// reconciles until the stream ends (on shutdown signal).
pub async fn run(state: Arc<State>, namespace: Option<&str>) {
    let client = state.client.clone();
    let (models, deployments, services, policies) = match namespace {
        Some(ns) => (
            Api::<SecureChatModel>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
            Api::<NetworkPolicy>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=securechat-operator");
    Controller::new(models, watcher::Config::default())
        .owns(deployments, owned.clone())
        .owns(services, owned.clone())
        .owns(policies, owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, state)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(model = %obj.name, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

async fn reconcile(model: Arc<SecureChatModel>, state: Arc<State>) -> Result<Action> {
    let ctx = Context::new(&model, &state.default_image)?;
    let client = &state.client;
    info!(model = %ctx.name, namespace = %ctx.namespace, "reconciling");

    apply::apply(client, &desired::service_account(&ctx)).await?;
    apply::apply(client, &desired::service(&ctx)).await?;
    let network = desired::network_policy(&ctx);
    apply::apply(client, &network.policy).await?;
    let now = chrono::Utc::now();
    let tls = material::tls(client, &ctx, now).await?;
    let keys = material::signing_keys(client, &ctx, now).await?;
    material::api_keys(client, &ctx).await?;
    let (config_map, config_checksum) = desired::config_map(&ctx)?;
    apply::apply(client, &config_map).await?;
    let deployment = apply::apply(client, &desired::deployment(&ctx, &config_checksum)).await?;
    match desired::pdb(&ctx) {
        Some(pdb) => {
            apply::apply(client, &pdb).await?;
        }
        None => {
            apply::delete_if_present::<PodDisruptionBudget>(
                client,
                &ctx.namespace,
                &Names::pdb(&ctx.name),
            )
            .await?
        }
    }

    let host = ctx.service_host();
    let observed = Observed {
        deployment: deployment.status,
        refused_rules: network.refused,
        endpoint: format!("https://{host}:{}", model.spec.ports.api),
        web_endpoint: format!("https://{host}:{}", model.spec.ports.web),
        tls: Some((
            tls.ready,
            tls.reason,
            tls.message.clone(),
            tls.status.clone(),
        )),
        signing_keys: Some((
            keys.ready,
            keys.reason,
            keys.message.clone(),
            keys.status.clone(),
        )),
    };
    let status = model_status(&model, &observed, Timestamp::now());
    if model.status.as_ref() != Some(&status) {
        let api: Api<SecureChatModel> = Api::namespaced(client.clone(), &ctx.namespace);
        let patch = serde_json::json!({"apiVersion": API_VERSION, "kind": "SecureChatModel", "status": status});
        api.patch_status(
            &ctx.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    // Owned objects wake us on change; certificate renewal and key rotation
    // are due at known times; the periodic requeue catches anything a watch
    // missed.
    let due = [tls.next_action_at, keys.next_action_at]
        .into_iter()
        .flatten()
        .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
        .min()
        .unwrap_or(Duration::MAX);
    Ok(Action::requeue(
        due.clamp(Duration::from_secs(1), Duration::from_secs(300)),
    ))
}

fn error_policy(model: Arc<SecureChatModel>, error: &Error, _: Arc<State>) -> Action {
    warn!(model = %model.name_any(), error = %error, label = error.metric_label(), "reconcile error");
    match error {
        Error::Kube(_) => Action::requeue(Duration::from_secs(5)),
        Error::Render { .. } | Error::MissingField(_) => Action::requeue(Duration::from_secs(60)),
    }
}
