//! The reconcile loop: thin on purpose. Build the desired objects (pure),
//! apply what changed, observe, compute status (pure), write status if it
//! changed, and tell people what happened through Events. A spec that
//! cannot be built (a pattern the server would refuse, an object the API
//! server rejects) stops the reconcile at a refusal that Ready shows, rather
//! than an error retried blindly with nothing in the status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use securechat_crds::conditions;
use securechat_crds::v1alpha1::{SecureChatModel, SecureChatModelStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::apply::Writer;
use crate::desired::{self, Input};
use crate::labels::{self, Names};
use crate::metrics::Metrics;
use crate::status::{
    Observed, Refusal, ScalingObserved, model_status, refused_config, refused_status,
    requeue_after, status_events,
};
use crate::status_writer::patch_status;
use crate::{Error, FIELD_MANAGER, Result, access_policy, health, material, reasons, references};

/// The reconciler's shared context (kube-runtime's `Arc<Context>`), given to
/// every reconcile of both controllers.
pub struct Context {
    pub client: Client,
    /// Server image for models that name none.
    pub default_image: String,
    /// Server image for models with GPUs that name none: the CUDA build.
    pub cuda_image: String,
    pub metrics: Arc<Metrics>,
    /// Reconciles at once per controller (`--max-concurrent-reconciles`).
    pub max_concurrent_reconciles: u16,
    recorder: Recorder,
}

impl Context {
    pub fn new(client: Client, default_image: String, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            cuda_image: cuda_image_of(&default_image),
            default_image,
            metrics,
            max_concurrent_reconciles: DEFAULT_MAX_CONCURRENT_RECONCILES,
        }
    }

    /// With the CUDA server image given to GPU pods (`--server-cuda-image`).
    pub fn with_cuda_image(mut self, image: String) -> Self {
        self.cuda_image = image;
        self
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

/// How `make images` tags the CUDA build of the server beside the CPU one
/// (scripts/images.sh): same repository, tag `<version>-cuda`.
pub const CUDA_TAG_SUFFIX: &str = "-cuda";

/// The CUDA server image beside a CPU one, by the `make images` naming:
/// `repo:tag` gives `repo:tag-cuda`, an untagged `repo` gives
/// `repo:latest-cuda`. A digest names one image only: it is kept as it is
/// (give `--server-cuda-image` its own digest).
pub fn cuda_image_of(image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let name = image.rsplit('/').next().unwrap_or(image);
    if name.contains(':') {
        format!("{image}{CUDA_TAG_SUFFIX}")
    } else {
        format!("{image}:latest{CUDA_TAG_SUFFIX}")
    }
}

/// Watches SecureChatModels (in all namespaces when `namespaces` is empty,
/// else in each listed one) and what they own, and reconciles until the
/// shutdown signal.
pub async fn run(ctx: Arc<Context>, namespaces: &[String]) {
    if namespaces.is_empty() {
        run_scope(ctx, None).await;
    } else {
        futures::future::join_all(
            namespaces
                .iter()
                .map(|ns| run_scope(ctx.clone(), Some(ns.as_str()))),
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

async fn run_scope(ctx: Arc<Context>, namespace: Option<&str>) {
    let client = ctx.client.clone();
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
    .owns(api::<NetworkPolicy>(&client, namespace), owned.clone())
    // The HPA's status (can it read the metric?) feeds ScalingReady.
    .owns(api::<HorizontalPodAutoscaler>(&client, namespace), owned)
    .watches(
        api::<Pod>(&client, namespace),
        pods_of_models,
        |pod: Pod| {
            let model = pod.labels().get(labels::MODEL_LABEL)?.clone();
            Some(ObjectRef::<SecureChatModel>::new(&model).within(&pod.namespace()?))
        },
    )
    .with_config(ctx.controller_config())
    .trigger_backoff(crate::backoff::watch_backoff())
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((obj, _)) => debug!(model = %obj.name, "reconciled"),
            Err(e) => debug!(error = %e, "reconcile failed"),
        }
    })
    .await;
}

async fn reconcile(model: Arc<SecureChatModel>, ctx: Arc<Context>) -> Result<Action> {
    let name = model.name_any();
    let namespace = model.namespace().unwrap_or_default();
    let span = info_span!("reconcile", model = %name, namespace = %namespace);
    let started = Instant::now();
    let result = reconcile_model(&model, &ctx).instrument(span).await;
    let error = result.as_ref().err().map(Error::metric_label);
    ctx.metrics
        .reconciled(&namespace, &name, started.elapsed(), error);
    result
}

async fn reconcile_model(model: &SecureChatModel, ctx: &Context) -> Result<Action> {
    if model.metadata.deletion_timestamp.is_some() {
        // Owner references hand everything to the garbage collector.
        ctx.metrics
            .forget(&model.namespace().unwrap_or_default(), &model.name_any());
        return Ok(Action::await_change());
    }
    let input = Input::new(model, &ctx.default_image)?.with_cuda_image(&ctx.cuda_image);
    let mut writer = Writer::new(ctx.client.clone());
    let converged = converge(ctx, &input, &mut writer).await;
    report_changes(ctx, model, &writer).await;
    let (outcome, material_due) = match converged {
        Ok(converged) => (
            Outcome::Observed(Box::new(converged.observed)),
            converged.material_due,
        ),
        Err(Stop::Refused(refusal)) => {
            warn!(reason = refusal.reason, message = %refusal.message, "refused");
            (Outcome::Refused(refusal), None)
        }
        Err(Stop::Failed(error)) => return Err(error),
    };
    let mut status = outcome.status(model);
    if model.status.as_ref() != Some(&status) {
        // The cache may not hold the status this operator wrote last (a
        // reconcile queued by an owned object's change can run before the
        // watch brings the patch back), and Events are decided against it:
        // read the live status before a write, so a change is announced
        // once. Status writes are rare; a no-op reconcile reads nothing.
        let live = Api::<SecureChatModel>::namespaced(ctx.client.clone(), &input.namespace)
            .get_status(&input.name)
            .await?;
        let current = SecureChatModel {
            status: live.status,
            ..model.clone()
        };
        status = outcome.status(&current);
        if current.status.as_ref() != Some(&status) {
            for event in status_events(current.status.as_ref(), &status) {
                publish(ctx, model, event.type_, &event.reason, event.note).await;
            }
            patch_status(&ctx.client, model, &status).await?;
        }
    }
    // Owned objects and pods wake us on change; certificate renewal and key
    // rotation are due at known times; the periodic requeue catches anything
    // a watch missed, sooner while the model is not Ready. A refused model
    // waits for its spec to change (or the periodic requeue).
    Ok(Action::requeue(requeue_after(&status, material_due)))
}

/// How a reconcile ended, which the status is computed from.
enum Outcome {
    Observed(Box<Observed>),
    Refused(Refusal),
}

impl Outcome {
    /// The status to show, starting from `model`'s current one.
    fn status(&self, model: &SecureChatModel) -> SecureChatModelStatus {
        match self {
            Outcome::Observed(observed) => model_status(model, observed, Timestamp::now()),
            Outcome::Refused(refusal) => refused_status(model, refusal, Timestamp::now()),
        }
    }
}

/// Why a reconcile stopped before the model converged.
enum Stop {
    /// The spec cannot be built as it is: shown as Ready=False, not an
    /// error to retry at once.
    Refused(Refusal),
    /// Anything else: the error policy retries.
    Failed(Error),
}

/// An object of the model's that someone else holds is a refusal: the
/// operator will not take it over (see `apply`), so retrying cannot help
/// until it is moved out of the way.
impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        match error {
            Error::NotOwned { .. } => Stop::Refused(Refusal {
                reason: reasons::OBJECT_CONFLICT,
                message: error.to_string(),
                condition: None,
            }),
            error => Stop::Failed(error),
        }
    }
}

/// What a converged model looks like, and when its key material is due.
struct Converged {
    observed: Observed,
    material_due: Option<Duration>,
}

/// Applies every owned object in order, and observes the result.
async fn converge(
    ctx: &Context,
    input: &Input<'_>,
    writer: &mut Writer,
) -> std::result::Result<Converged, Stop> {
    let model = input.model;
    apply(writer, &desired::service_account(input)).await?;
    apply(writer, &desired::service(input)).await?;
    let network = desired::network_policy(input);
    apply(writer, &network.policy).await?;
    let now = chrono::Utc::now();
    let tls = match material::tls(writer, input, now).await {
        Ok(tls) => tls,
        Err(e) => {
            let condition = crate::status::TLS_READY;
            return Err(Stop::Failed(
                material_failed(ctx, model, "tls", condition, e).await,
            ));
        }
    };
    let keys = match material::signing_keys(writer, input, now).await {
        Ok(keys) => keys,
        Err(e) => {
            let condition = crate::status::SIGNING_KEYS_READY;
            return Err(Stop::Failed(
                material_failed(ctx, model, "signing_keys", condition, e).await,
            ));
        }
    };
    material::api_keys(writer, input).await?;
    // Running pods keep their last good config when this one is refused.
    if let Some(refusal) = refused_config(model) {
        return Err(Stop::Refused(refusal));
    }
    // Nor are they rolled to a store whose credentials or CA bundle the
    // new pods could not mount.
    let shared_state = model.spec.shared_state.as_ref();
    let found = references::observe(&ctx.client, &input.namespace, shared_state).await?;
    if let Some(refusal) = references::refusal(shared_state, &found) {
        return Err(Stop::Refused(refusal));
    }
    // Nor handed a policy module they would refuse.
    let observed = access_policy::observe(
        &ctx.client,
        &input.namespace,
        model.spec.auth.policy.as_ref(),
    )
    .await?;
    let policy = access_policy::decide(observed).map_err(Stop::Refused)?;
    let (config_map, config_checksum) = desired::config_map_with_policy(input, policy)?;
    apply(writer, &config_map).await?;
    let deployment = apply(writer, &desired::deployment(input, &config_checksum)).await?;
    let scaling = converge_autoscaler(writer, input).await?;
    // The count now: the fixed one, or what the autoscaler last set.
    let desired_replicas = deployment.spec.replicas;
    let current = model
        .spec
        .fixed_replicas()
        .or(desired_replicas)
        .unwrap_or_else(|| model.spec.min_replicas());
    match desired::pdb(input, current) {
        Some(pdb) => {
            apply(writer, &pdb).await?;
        }
        None => {
            writer
                .delete_if_present::<PodDisruptionBudget, _>(
                    model,
                    &input.namespace,
                    &Names::pdb(&input.name),
                )
                .await?
        }
    }

    let external_endpoints = converge_exposure(writer, input).await?;

    let host = input.service_host();
    let pods = model_pods(&ctx.client, input).await?;
    let observed = Observed {
        deployment: deployment.status,
        desired_replicas,
        scaling,
        external_endpoints,
        unschedulable: pods.iter().find_map(unschedulable_message),
        gpu_unavailable: pods.iter().find_map(health::gpu_unavailable_message),
        refused_rules: network.refused,
        endpoint: format!("https://{host}:{}", model.spec.ports.api),
        web_endpoint: format!("https://{host}:{}", model.spec.ports.web),
        tls: Some(tls.state.clone()),
        signing_keys: Some(keys.state.clone()),
    };
    let material_due = [tls.next_action_at, keys.next_action_at]
        .into_iter()
        .flatten()
        .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
        .min();
    Ok(Converged {
        observed,
        material_due,
    })
}

/// Applies the model's autoscaler (an HPA, or KEDA's ScaledObject), removes
/// the one it does not use, and says what the autoscaler reports.
async fn converge_autoscaler(
    writer: &mut Writer,
    input: &Input<'_>,
) -> std::result::Result<Option<ScalingObserved>, Stop> {
    let model = input.model;
    let name = Names::autoscaler(&input.name);
    // Nothing asked for and nothing made before (ScalingReady is only on a
    // model that had an autoscaler): read nothing.
    let made_before = model.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == crate::status::SCALING_READY)
    });
    if model.spec.autoscaling.is_none() && !made_before {
        return Ok(None);
    }
    let hpa = match desired::horizontal_pod_autoscaler(input) {
        Some(hpa) => Some(apply(writer, &hpa).await?),
        None => {
            writer
                .delete_if_present::<HorizontalPodAutoscaler, _>(model, &input.namespace, &name)
                .await?;
            None
        }
    };
    let keda = match desired::scaled_object(input) {
        Some(object) => match writer.apply(&object).await {
            Ok(live) => Some(ScalingObserved::Keda(keda_conditions(&live))),
            // No such resource: KEDA's CRD is not installed.
            Err(Error::Kube(kube::Error::Api(status))) if status.code == 404 => {
                Some(ScalingObserved::KedaNotInstalled)
            }
            Err(e) => return Err(Stop::from(e)),
        },
        None => {
            // A cluster without KEDA answers 404 for the type: nothing to
            // delete.
            writer
                .delete_if_present::<desired::ScaledObject, _>(model, &input.namespace, &name)
                .await?;
            None
        }
    };
    Ok(hpa.map(|h| ScalingObserved::Hpa(h.status)).or(keda))
}

/// Applies what `spec.expose` asks for (the external Service, Ingresses,
/// Gateway API routes, the InferencePool) and removes what it no longer
/// does. A type whose CRD is not installed (Gateway API, the inference
/// extension) stops the reconcile at a refusal that names it.
async fn converge_exposure(
    writer: &mut Writer,
    input: &Input<'_>,
) -> std::result::Result<Vec<String>, Stop> {
    use desired::expose;
    let model = input.model;
    let ns = &input.namespace;
    // Nothing asked for and nothing made before (the status lists what
    // was): a reconcile of a model without exposure reads nothing here.
    let made_before = model
        .status
        .as_ref()
        .is_some_and(|s| !s.external_endpoints.is_empty());
    if model.spec.expose.is_none() && !made_before {
        return Ok(Vec::new());
    }
    let mut endpoints = Vec::new();
    match expose::external_service(input) {
        Some(service) => {
            let live = apply(writer, &service).await?;
            endpoints.extend(expose::service_endpoints(&live));
        }
        None => {
            writer
                .delete_if_present::<Service, _>(model, ns, &Names::external_service(&input.name))
                .await?
        }
    }
    let (ingresses, _) = expose::ingresses(input);
    let routes = expose::routes(input);
    for port in ["api", "web"] {
        let name = Names::ingress(&input.name, port);
        match ingresses
            .iter()
            .find(|i| i.metadata.name.as_deref() == Some(name.as_str()))
        {
            Some(ingress) => {
                apply(writer, ingress).await?;
                endpoints.extend(expose::ingress_endpoints(ingress));
            }
            None => {
                writer
                    .delete_if_present::<Ingress, _>(model, ns, &name)
                    .await?
            }
        }
        let name = Names::route(&input.name, port);
        let named = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.name.as_deref() == Some(name.as_str())
        };
        let tls_route = routes.tls_routes.iter().find(|o| named(&o.metadata));
        let http_route = routes.http_routes.iter().find(|o| named(&o.metadata));
        endpoints.extend(
            tls_route
                .map(|r| expose::route_endpoints("TLSRoute", &name, &r.spec.0))
                .into_iter()
                .flatten(),
        );
        endpoints.extend(
            http_route
                .map(|r| expose::route_endpoints("HTTPRoute", &name, &r.spec.0))
                .into_iter()
                .flatten(),
        );
        sync_optional(writer, input, &name, tls_route).await?;
        sync_optional(writer, input, &name, http_route).await?;
        sync_optional(
            writer,
            input,
            &name,
            routes
                .backend_tls_policies
                .iter()
                .find(|o| named(&o.metadata)),
        )
        .await?;
    }
    let bundle_secret = match ingresses.is_empty() {
        true => None,
        false => Api::<ConfigMap>::namespaced(writer.client().clone(), ns)
            .get_opt(&Names::ca_bundle(&input.name))
            .await
            .map_err(Error::from)?
            .and_then(|bundle| expose::ca_bundle_secret(input, &bundle)),
    };
    match bundle_secret {
        Some(secret) => {
            apply(writer, &secret).await?;
        }
        None => {
            writer
                .delete_if_present::<Secret, _>(model, ns, &Names::ca_bundle_secret(&input.name))
                .await?
        }
    }
    let pool = expose::inference_pool(input);
    sync_optional(
        writer,
        input,
        &Names::inference_pool(&input.name),
        pool.as_ref(),
    )
    .await?;
    if pool.is_some() {
        endpoints.push(format!(
            "InferencePool {} (attach it to a route's backendRefs)",
            Names::inference_pool(&input.name)
        ));
    }
    Ok(endpoints)
}

/// Applies `object` when there is one, else deletes what an earlier spec
/// made under `name`. A kind the cluster does not have: nothing to delete,
/// and a refusal naming the missing CRD when the spec asks for one.
async fn sync_optional<K>(
    writer: &mut Writer,
    input: &Input<'_>,
    name: &str,
    object: Option<&K>,
) -> std::result::Result<(), Stop>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match object {
        Some(object) => match writer.apply(object).await {
            Ok(_) => Ok(()),
            Err(Error::Kube(kube::Error::Api(status))) if status.code == 404 => {
                let dt = K::DynamicType::default();
                Err(Stop::Refused(Refusal {
                    reason: reasons::CRD_NOT_INSTALLED,
                    message: format!(
                        "spec.expose needs a {} ({}), and the cluster has no such resource: \
                         install its CRDs (Gateway API, or the Gateway API Inference Extension)",
                        K::kind(&dt),
                        K::api_version(&dt)
                    ),
                    condition: None,
                }))
            }
            Err(e) => Err(match e.refusal() {
                Some(message) => Stop::Refused(Refusal {
                    reason: reasons::APPLY_FAILED,
                    message: message.to_string(),
                    condition: None,
                }),
                None => Stop::from(e),
            }),
        },
        None => Ok(writer
            .delete_if_present::<K, _>(input.model, &input.namespace, name)
            .await?),
    }
}

/// KEDA's conditions on a ScaledObject (its status is not typed here).
fn keda_conditions(object: &desired::ScaledObject) -> Vec<Condition> {
    object
        .status
        .as_ref()
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value::<Vec<KedaCondition>>(c.clone()).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|c| Condition {
            type_: c.type_,
            status: c.status,
            reason: c.reason.unwrap_or_default(),
            message: c.message.unwrap_or_default(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        })
        .collect()
}

/// One condition as KEDA writes it (no lastTransitionTime guaranteed).
#[derive(serde::Deserialize)]
struct KedaCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    reason: Option<String>,
    message: Option<String>,
}

/// Server-side applies one owned object. One the API server refuses for
/// what it is stops the reconcile with the API server's message (reason
/// ApplyFailed): retrying the same object cannot help, the spec must change.
async fn apply<K>(writer: &mut Writer, object: &K) -> std::result::Result<K, Stop>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    writer
        .apply(object)
        .await
        .map_err(|error| match error.refusal() {
            Some(message) => Stop::Refused(Refusal {
                reason: reasons::APPLY_FAILED,
                message: message.to_string(),
                condition: None,
            }),
            None => Stop::from(error),
        })
}

/// Counts the writes of this reconcile and lists them in one Normal Event.
async fn report_changes(ctx: &Context, model: &SecureChatModel, writer: &Writer) {
    for change in &writer.changes {
        ctx.metrics.wrote(&change.kind);
    }
    if !writer.changes.is_empty() {
        let note: Vec<String> = writer.changes.iter().map(ToString::to_string).collect();
        info!(changes = %note.join(", "), "applied");
        publish(
            ctx,
            model,
            EventType::Normal,
            reasons::APPLIED,
            note.join("; "),
        )
        .await;
    }
}

/// A certificate renewal or key rotation failed: counted, shown as the
/// material's condition (reason RenewalFailed) and as a Warning event, then
/// retried by the error policy. The last good material stays in force.
async fn material_failed(
    ctx: &Context,
    model: &SecureChatModel,
    material: &str,
    condition: &str,
    error: Error,
) -> Error {
    ctx.metrics.material_failed(material);
    let message = format!("{material}: {error}");
    let mut status = model.status.clone().unwrap_or_default();
    let changed = conditions::set_condition(
        &mut status.conditions,
        conditions::ConditionUpdate::new(
            condition,
            false,
            reasons::RENEWAL_FAILED,
            message.clone(),
        ),
        model.metadata.generation,
        k8s_openapi::jiff::Timestamp::now(),
    );
    if changed {
        publish(
            ctx,
            model,
            EventType::Warning,
            reasons::RENEWAL_FAILED,
            message,
        )
        .await;
        if let Err(e) = patch_status(&ctx.client, model, &status).await {
            warn!(error = %e, "could not report the failed renewal in the status");
        }
    }
    error
}

/// The pod condition the scheduler sets, and its reason when it could not
/// place the pod (Kubernetes' names, not ours).
const POD_SCHEDULED: &str = "PodScheduled";
const SCHEDULER_UNSCHEDULABLE: &str = "Unschedulable";

/// The model's pods, whose troubles the status reports.
async fn model_pods(client: &Client, input: &Input<'_>) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &input.namespace);
    let selector = format!("{}={}", labels::MODEL_LABEL, input.name);
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// The scheduler's message for a pod of this model it could not place.
fn unschedulable_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == POD_SCHEDULED
                && c.status == conditions::FALSE
                && c.reason.as_deref() == Some(SCHEDULER_UNSCHEDULABLE)
        })
        .and_then(|c| c.message.clone())
}

async fn publish(
    ctx: &Context,
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
    if let Err(e) = ctx.recorder.publish(&event, &model.object_ref(&())).await {
        warn!(error = %e, "could not publish an event");
    }
}

fn error_policy(model: Arc<SecureChatModel>, error: &Error, _: Arc<Context>) -> Action {
    warn!(model = %model.name_any(), namespace = ?model.namespace(), error = %error, label = error.metric_label(), "reconcile error");
    match error {
        Error::Kube(_) => Action::requeue(Duration::from_secs(5)),
        Error::Render { .. }
        | Error::NotOwned { .. }
        | Error::MissingField(_)
        | Error::Finalizer(_) => Action::requeue(Duration::from_secs(60)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cuda_image_is_the_default_images_tag_with_cuda() {
        assert_eq!(
            cuda_image_of("securechat/server:0.1.0"),
            "securechat/server:0.1.0-cuda"
        );
        assert_eq!(
            cuda_image_of("registry.example:5000/team/server"),
            "registry.example:5000/team/server:latest-cuda"
        );
        let pinned = format!("securechat/server@sha256:{}", "ab".repeat(32));
        assert_eq!(cuda_image_of(&pinned), pinned);
    }
}
