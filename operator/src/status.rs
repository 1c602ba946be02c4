//! Conditions computed from what was observed. Pure: `now` is passed in, and
//! `lastTransitionTime` only moves when a condition's status changes.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use securechat_crds::conditions::{ConditionUpdate, FALSE, TRUE, set_condition};
use securechat_crds::sensitive::compile_patterns;
use securechat_crds::v1alpha1::{
    SecureChatModel, SecureChatModelStatus, SigningKeysStatus, TlsStatus,
};

use crate::desired::RefusedRule;
use crate::gpu_memory;
use crate::health::{RECONCILING, STALLED, health_conditions};
use crate::reasons;
use crate::reasons::progress;

pub const READY: &str = "Ready";
pub const AVAILABLE: &str = "Available";
pub const NETWORK_READY: &str = "NetworkReady";
pub const DEGRADED: &str = "Degraded";
pub const TLS_READY: &str = "TLSReady";
pub const SIGNING_KEYS_READY: &str = "SigningKeysReady";
pub const SHARED_STATE: &str = "SharedState";
pub const SCALING_READY: &str = "ScalingReady";

/// The condition of one kind of key material (TLS, signing keys) and the
/// status block it shows, as `material` decided them.
#[derive(Debug, Clone, PartialEq)]
pub struct MaterialState<S> {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub status: S,
}

/// What the reconcile saw after applying.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub deployment: Option<DeploymentStatus>,
    /// The Deployment's `spec.replicas` as the API server holds it: under
    /// autoscaling, the count the autoscaler last set.
    pub desired_replicas: Option<i32>,
    /// The autoscaler's state, when the model has `spec.autoscaling`.
    pub scaling: Option<ScalingObserved>,
    /// The external paths `spec.expose` made, as the status lists them.
    pub external_endpoints: Vec<String>,
    /// The scheduler's message for a pod of this model it could not place
    /// (PodScheduled=False, reason Unschedulable), if any.
    pub unschedulable: Option<String>,
    /// The termination message of a GPU pod's server that exited because
    /// no GPU was visible to it, if any.
    pub gpu_unavailable: Option<String>,
    pub refused_rules: Vec<RefusedRule>,
    pub endpoint: String,
    pub web_endpoint: String,
    pub tls: Option<MaterialState<TlsStatus>>,
    pub signing_keys: Option<MaterialState<SigningKeysStatus>>,
}

/// What the model's autoscaler says about itself.
#[derive(Debug, Clone)]
pub enum ScalingObserved {
    /// The HorizontalPodAutoscaler's status (None before its first
    /// evaluation).
    Hpa(Option<HorizontalPodAutoscalerStatus>),
    /// The KEDA ScaledObject's `status.conditions`, as KEDA writes them
    /// (`Ready`, `Active`).
    Keda(Vec<Condition>),
    /// `engine: KEDA`, but the API server has no `keda.sh/v1alpha1`
    /// ScaledObject (KEDA is not installed).
    KedaNotInstalled,
}

/// The HPA's condition types (Kubernetes' names, not ours).
const HPA_ABLE_TO_SCALE: &str = "AbleToScale";
const HPA_SCALING_ACTIVE: &str = "ScalingActive";
const HPA_SCALING_LIMITED: &str = "ScalingLimited";
/// KEDA's ScaledObject condition type.
const KEDA_READY: &str = "Ready";

/// `ScalingReady`: whether the autoscaler can do its job, with the
/// autoscaler's own reason when it cannot (e.g. the HPA cannot fetch the
/// pods metric because no custom-metrics adapter serves it). None without
/// `spec.autoscaling`. Not a Ready blocker: the model serves at its
/// current count either way.
pub fn scaling_condition(
    model: &SecureChatModel,
    scaling: Option<&ScalingObserved>,
) -> Option<ConditionUpdate> {
    let spec = model.spec.autoscaling.as_ref()?;
    let false_with =
        |reason: &str, message: String| ConditionUpdate::new(SCALING_READY, false, reason, message);
    let failing = |conditions: &[(String, String, Option<String>, Option<String>)], type_: &str| {
        conditions
            .iter()
            .find(|(t, s, _, _)| t == type_ && s == FALSE)
            .map(|(t, _, reason, message)| {
                format!(
                    "{t}=False ({}): {}",
                    reason.as_deref().unwrap_or("no reason"),
                    message.as_deref().unwrap_or("")
                )
            })
    };
    Some(match scaling {
        None | Some(ScalingObserved::Hpa(None)) => false_with(
            reasons::SCALING_PENDING,
            "waiting for the autoscaler's first evaluation".into(),
        ),
        Some(ScalingObserved::KedaNotInstalled) => false_with(
            reasons::KEDA_NOT_INSTALLED,
            "autoscaling.engine is KEDA, but the cluster has no keda.sh/v1alpha1 \
             ScaledObject: install KEDA, or use engine HPA"
                .into(),
        ),
        Some(ScalingObserved::Hpa(Some(hpa))) => {
            let conditions: Vec<_> = hpa
                .conditions
                .iter()
                .flatten()
                .map(|c| {
                    (
                        c.type_.clone(),
                        c.status.clone(),
                        c.reason.clone(),
                        c.message.clone(),
                    )
                })
                .collect();
            if let Some(why) = failing(&conditions, HPA_ABLE_TO_SCALE) {
                false_with(
                    reasons::SCALING_BLOCKED,
                    format!("HorizontalPodAutoscaler {why}"),
                )
            } else if let Some(why) = failing(&conditions, HPA_SCALING_ACTIVE) {
                false_with(
                    reasons::SCALING_METRICS_UNAVAILABLE,
                    format!("HorizontalPodAutoscaler {why}"),
                )
            } else if conditions.is_empty() {
                false_with(
                    reasons::SCALING_PENDING,
                    "waiting for the HorizontalPodAutoscaler's first evaluation".into(),
                )
            } else {
                let limited = conditions
                    .iter()
                    .any(|(t, s, _, _)| t == HPA_SCALING_LIMITED && s == TRUE);
                ConditionUpdate::new(
                    SCALING_READY,
                    true,
                    reasons::SCALING_ACTIVE,
                    format!(
                        "HorizontalPodAutoscaler keeps {} per pod at {} between {} and {} pods; \
                         {} now, {} wanted{}",
                        spec.metric.series(),
                        spec.target,
                        spec.min_replicas,
                        spec.max_replicas,
                        hpa.current_replicas.unwrap_or(0),
                        hpa.desired_replicas,
                        if limited { " (at a bound)" } else { "" }
                    ),
                )
            }
        }
        Some(ScalingObserved::Keda(conditions)) => {
            match conditions.iter().find(|c| c.type_ == KEDA_READY) {
                Some(c) if c.status == TRUE => ConditionUpdate::new(
                    SCALING_READY,
                    true,
                    reasons::SCALING_ACTIVE,
                    format!(
                        "KEDA ScaledObject ready: {} per pod at {} between {} and {} pods",
                        spec.metric.series(),
                        spec.target,
                        spec.min_replicas,
                        spec.max_replicas
                    ),
                ),
                Some(c) => false_with(
                    reasons::SCALING_BLOCKED,
                    format!(
                        "KEDA ScaledObject Ready=False ({}): {}",
                        c.reason, c.message
                    ),
                ),
                None => false_with(
                    reasons::SCALING_PENDING,
                    "waiting for KEDA to take up the ScaledObject".into(),
                ),
            }
        }
    })
}

/// The status to write, starting from the current one so condition
/// transition times are kept.
pub fn model_status(
    model: &SecureChatModel,
    observed: &Observed,
    now: Timestamp,
) -> SecureChatModelStatus {
    let generation = model.metadata.generation;
    let mut status = model.status.clone().unwrap_or_default();
    let desired = model
        .spec
        .fixed_replicas()
        .or(observed.desired_replicas)
        .unwrap_or_else(|| model.spec.min_replicas());
    let ready = observed
        .deployment
        .as_ref()
        .and_then(|d| d.ready_replicas)
        .unwrap_or(0);
    let updated = observed
        .deployment
        .as_ref()
        .and_then(|d| d.updated_replicas)
        .unwrap_or(0);

    let available = if desired == 0 {
        ConditionUpdate::new(
            AVAILABLE,
            true,
            reasons::SCALED_TO_ZERO,
            "replicas is 0; keys and certificates are kept",
        )
    } else if ready >= desired && updated >= desired {
        ConditionUpdate::new(
            AVAILABLE,
            true,
            reasons::REPLICAS_READY,
            format!("{ready}/{desired} replicas ready"),
        )
    } else if ready > 0 {
        ConditionUpdate::new(
            AVAILABLE,
            true,
            reasons::PARTIALLY_READY,
            format!("{ready}/{desired} replicas ready"),
        )
    } else if let Some(message) = &observed.gpu_unavailable {
        // Before Unschedulable: a pod that started and found no GPU says
        // more than a sibling the scheduler could not place.
        ConditionUpdate::new(AVAILABLE, false, reasons::GPU_UNAVAILABLE, message.clone())
    } else if let Some(message) = &observed.unschedulable {
        ConditionUpdate::new(AVAILABLE, false, reasons::UNSCHEDULABLE, message.clone())
    } else {
        ConditionUpdate::new(
            AVAILABLE,
            false,
            reasons::NO_REPLICAS_READY,
            format!("0/{desired} replicas ready"),
        )
    };
    let network = if observed.refused_rules.is_empty() {
        ConditionUpdate::new(
            NETWORK_READY,
            true,
            reasons::POLICY_APPLIED,
            "NetworkPolicy mirrors spec.network",
        )
    } else {
        let refused: Vec<&str> = observed
            .refused_rules
            .iter()
            .map(|r| r.reason.as_str())
            .collect();
        ConditionUpdate::new(
            NETWORK_READY,
            false,
            reasons::RULE_REFUSED,
            refused.join("; "),
        )
    };
    let degraded_reasons: Vec<String> = [
        (!observed.refused_rules.is_empty()).then(|| "network rules refused".to_string()),
        (desired > 0 && ready > 0 && ready < desired)
            .then(|| format!("only {ready}/{desired} replicas ready")),
        (ready > 0)
            .then_some(observed.unschedulable.as_ref())
            .flatten()
            .map(|m| format!("a replica cannot be scheduled: {m}")),
        (ready > 0)
            .then_some(observed.gpu_unavailable.as_ref())
            .flatten()
            .map(|m| format!("a replica has no GPU: {m}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let degraded = if degraded_reasons.is_empty() {
        ConditionUpdate::new(DEGRADED, false, reasons::AS_EXPECTED, "")
    } else {
        ConditionUpdate::new(
            DEGRADED,
            true,
            reasons::DEGRADED,
            degraded_reasons.join("; "),
        )
    };
    let tls = material(TLS_READY, &observed.tls);
    let keys = material(SIGNING_KEYS_READY, &observed.signing_keys);
    // Ready names the first thing that is not.
    let blocker = [&available, &network, &tls, &keys]
        .into_iter()
        .find(|c| !c.status);
    let ready_condition = match blocker {
        None => ConditionUpdate::new(READY, true, reasons::READY, "serving"),
        Some(c) => ConditionUpdate::new(
            READY,
            false,
            c.reason.clone(),
            format!("{}: {}", c.type_, c.message),
        ),
    };
    // Not a Ready blocker: per-replica limits are a warning, the model
    // serves either way.
    let shared_state = shared_state_condition(model);
    for update in [
        ready_condition,
        available,
        network,
        tls,
        keys,
        degraded,
        shared_state,
    ] {
        set_condition(&mut status.conditions, update, generation, now);
    }
    match scaling_condition(model, observed.scaling.as_ref()) {
        Some(scaling) => {
            set_condition(&mut status.conditions, scaling, generation, now);
        }
        None => status.conditions.retain(|c| c.type_ != SCALING_READY),
    }
    set_health(&mut status, generation, now);

    status.observed_generation = generation;
    status.ready_replicas = Some(ready);
    status.replicas = Some(format!("{ready}/{desired}"));
    status.model = Some(model_description(model));
    status.endpoint = Some(observed.endpoint.clone());
    status.web_endpoint = Some(observed.web_endpoint.clone());
    status.external_endpoints = observed.external_endpoints.clone();
    status.tls = observed.tls.as_ref().map(|t| t.status.clone());
    status.signing_keys = observed.signing_keys.as_ref().map(|k| k.status.clone());
    status
}

/// Whether the model's limits hold for the model as a whole: with a shared
/// store, or with one replica; False (a Warning, once) when several
/// replicas each keep their own.
pub fn shared_state_condition(model: &SecureChatModel) -> ConditionUpdate {
    // Under autoscaling, the most there can be.
    let replicas = model.spec.max_replicas();
    match &model.spec.shared_state {
        Some(store) => ConditionUpdate::new(
            SHARED_STATE,
            true,
            reasons::SHARED_STATE_CONFIGURED,
            format!(
                "the replicas share limits, sessions and usage in the store at {}",
                store.address
            ),
        ),
        None if replicas > 1 => ConditionUpdate::new(
            SHARED_STATE,
            false,
            reasons::PER_REPLICA_LIMITS,
            format!(
                "{replicas} replicas and no spec.sharedState: rate limits, token budgets and \
                 the brute-force guard hold per replica (up to {replicas}x the configured \
                 limits for the model), and web sessions live in one replica; set \
                 spec.sharedState to share them"
            ),
        ),
        None => ConditionUpdate::new(
            SHARED_STATE,
            true,
            reasons::SINGLE_REPLICA,
            "one replica: its limits are the model's",
        ),
    }
}

fn material<S>(type_: &str, state: &Option<MaterialState<S>>) -> ConditionUpdate {
    match state {
        Some(state) => {
            ConditionUpdate::new(type_, state.ready, state.reason, state.message.clone())
        }
        None => ConditionUpdate::new(type_, false, reasons::PENDING, "not reconciled yet"),
    }
}

/// The operator will not build the spec as it is: why, shown as Ready=False
/// until the spec (or what refused it) changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
    /// The condition that shows the cause too (False with the same
    /// reason), besides Ready.
    pub condition: Option<&'static str>,
}

/// What the operator refuses before writing the server's config: custom
/// sensitive-data patterns the server would not compile (it would keep its
/// last good config, and new pods would not start), and a model that
/// cannot fit the GPU its spec names (its pods would crash-loop out of
/// memory).
pub fn refused_config(model: &SecureChatModel) -> Option<Refusal> {
    if let Err(error) = compile_patterns(&model.spec.sensitive_data) {
        return Some(Refusal {
            reason: reasons::INVALID_SENSITIVE_DATA_PATTERN,
            message: format!("spec.sensitiveData: {error}"),
            condition: None,
        });
    }
    let error = gpu_memory::check(&model.spec).err()?;
    Some(Refusal {
        reason: reasons::INSUFFICIENT_GPU_MEMORY,
        message: format!("resources.gpu.product: {error}"),
        condition: Some(AVAILABLE),
    })
}

/// The status of a model whose reconcile stopped at `refusal`: Ready=False
/// with its reason; the other conditions keep what was last observed.
pub fn refused_status(
    model: &SecureChatModel,
    refusal: &Refusal,
    now: Timestamp,
) -> SecureChatModelStatus {
    let generation = model.metadata.generation;
    let mut status = model.status.clone().unwrap_or_default();
    let ready = ConditionUpdate::new(READY, false, refusal.reason, refusal.message.clone());
    set_condition(&mut status.conditions, ready, generation, now);
    if let Some(type_) = refusal.condition {
        let cause = ConditionUpdate::new(type_, false, refusal.reason, refusal.message.clone());
        set_condition(&mut status.conditions, cause, generation, now);
    }
    set_health(&mut status, generation, now);
    status.observed_generation = generation;
    status
}

/// kstatus's Reconciling and Stalled, from the conditions just set (see
/// `health`).
fn set_health(status: &mut SecureChatModelStatus, generation: Option<i64>, now: Timestamp) {
    for update in health_conditions(&status.conditions, progress::model) {
        set_condition(&mut status.conditions, update, generation, now);
    }
}

/// One Event a status change is worth publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    pub type_: EventType,
    pub reason: String,
    pub note: String,
}

/// The event policy: which condition changes between the status last
/// written (`old`) and the new one become Events. A change is a new status
/// or reason (a message alone is not). Trouble is reported per condition,
/// as a Warning whose note names the condition; good news once, by Ready.
/// Every Event is a write: a model converging is not six of them.
pub fn status_events(
    old: Option<&SecureChatModelStatus>,
    new: &SecureChatModelStatus,
) -> Vec<StatusEvent> {
    new.conditions
        .iter()
        .filter(|c| {
            let before = old.and_then(|o| o.conditions.iter().find(|p| p.type_ == c.type_));
            before.is_none_or(|p| p.status != c.status || p.reason != c.reason)
        })
        .filter_map(|c| {
            let (type_, note) = if is_trouble(c) {
                (EventType::Warning, format!("{}: {}", c.type_, c.message))
            } else if c.type_ == READY {
                (EventType::Normal, c.message.clone())
            } else {
                return None;
            };
            Some(StatusEvent {
                type_,
                reason: c.reason.clone(),
                note,
            })
        })
        .collect()
}

/// Degraded=True is trouble; any other condition is when False, unless the
/// model is merely starting.
fn is_trouble(c: &Condition) -> bool {
    if c.type_ == RECONCILING || c.type_ == STALLED {
        // Derived from the others, whose own Events tell the news.
        false
    } else if c.type_ == DEGRADED {
        c.status == TRUE
    } else {
        c.status == FALSE && !reasons::STARTING.contains(&c.reason.as_str())
    }
}

/// Longest wait between two reconciles of a model.
pub const REQUEUE_AT_MOST: Duration = Duration::from_secs(300);
/// Longest wait while a model's replicas are on their way (Available says
/// NoReplicasReady or PartiallyReady). Their pods' and Deployment's changes
/// wake the model through watches; this poll is the net under them: a watch
/// stalled without an error (a half-open connection across an API server
/// or etcd restart) is only replaced at its timeout, minutes later, and a
/// rollout's end should not wait that long to show. It costs no-op applies,
/// no writes, and only for models mid-rollout: one that waits on something
/// else (Unschedulable, failed material) is woken by that or by its retry.
pub const REQUEUE_ROLLING_OUT_AT_MOST: Duration = Duration::from_secs(20);
/// Longest wait while a model waits for a Secret or ConfigMap its spec
/// names (reasons::AWAITING_REFERENCE). Creating that object does not wake
/// the model: watching every Secret of the watched namespaces would list
/// and hold all their data in the operator for the sake of a typo. One GET
/// per referenced object per poll, and only for models that wait.
pub const REQUEUE_AWAITING_REFERENCE_AT_MOST: Duration = Duration::from_secs(15);

/// When to reconcile a model again: at the next certificate renewal or key
/// rotation (`material_due`), but no later than the poll for its state.
pub fn requeue_after(status: &SecureChatModelStatus, material_due: Option<Duration>) -> Duration {
    let rolling_out = status
        .conditions
        .iter()
        .any(|c| c.type_ == AVAILABLE && reasons::ROLLING_OUT.contains(&c.reason.as_str()));
    let awaiting = status
        .conditions
        .iter()
        .any(|c| reasons::AWAITING_REFERENCE.contains(&c.reason.as_str()));
    let poll = if awaiting {
        REQUEUE_AWAITING_REFERENCE_AT_MOST
    } else if rolling_out {
        REQUEUE_ROLLING_OUT_AT_MOST
    } else {
        REQUEUE_AT_MOST
    };
    material_due
        .unwrap_or(Duration::MAX)
        .clamp(Duration::from_secs(1), poll)
}

/// A short description of the served model for `kubectl get scm`.
pub fn model_description(model: &SecureChatModel) -> String {
    let source = &model.spec.model.source;
    if source.embedded.is_some() {
        "SmolLM2-135M-Instruct (embedded)".to_string()
    } else if let Some(hf) = &source.hugging_face {
        hf.repo.clone()
    } else if let Some(volume) = &source.volume {
        let place = format!("{}:{}", volume.claim_name, volume.path);
        match model.spec.model.family {
            Some(family) => format!("{family} ({place})"),
            None => place,
        }
    } else {
        "unknown".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;
    use securechat_crds::conditions::{FALSE, condition_status, is_true};
    use serde_json::json;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn deployment(ready: i32) -> DeploymentStatus {
        DeploymentStatus {
            ready_replicas: Some(ready),
            updated_replicas: Some(ready),
            ..Default::default()
        }
    }

    #[test]
    fn ready_when_all_replicas_ready_and_network_applied() {
        let m = model("chat", json!({"replicas": 2}));
        let obs = Observed {
            deployment: Some(deployment(2)),
            ..material_ready()
        };
        let status = model_status(&m, &obs, at(1));
        assert!(is_true(&status.conditions, READY));
        assert_eq!(condition_status(&status.conditions, DEGRADED), Some(FALSE));
        assert_eq!(status.replicas.as_deref(), Some("2/2"));
    }

    fn material_ready() -> Observed {
        Observed {
            tls: Some(MaterialState {
                ready: true,
                reason: reasons::CERTIFICATE_ISSUED,
                message: String::new(),
                status: TlsStatus::default(),
            }),
            signing_keys: Some(MaterialState {
                ready: true,
                reason: reasons::KEYSET_READY,
                message: String::new(),
                status: SigningKeysStatus::default(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_model_mid_rollout_is_polled_sooner_than_one_ready_or_stuck() {
        let m = model("chat", json!({"replicas": 2}));
        let with = |deployment: Option<DeploymentStatus>, unschedulable: Option<&str>| {
            let observed = Observed {
                deployment,
                unschedulable: unschedulable.map(String::from),
                ..material_ready()
            };
            model_status(&m, &observed, at(1))
        };
        let ready = with(Some(deployment(2)), None);
        let none_yet = with(None, None);
        let partly = with(Some(deployment(1)), None);
        let unschedulable = with(None, Some("0/4 nodes are available"));
        assert!(is_true(&ready.conditions, READY));
        assert!(!is_true(&none_yet.conditions, READY));
        assert!(!is_true(&unschedulable.conditions, READY));
        assert!(is_true(&partly.conditions, DEGRADED));

        let hour = Some(Duration::from_secs(3600));
        assert_eq!(requeue_after(&ready, hour), REQUEUE_AT_MOST);
        assert_eq!(requeue_after(&ready, None), REQUEUE_AT_MOST);
        assert_eq!(requeue_after(&none_yet, hour), REQUEUE_ROLLING_OUT_AT_MOST);
        assert_eq!(requeue_after(&partly, hour), REQUEUE_ROLLING_OUT_AT_MOST);
        // Waiting for a node is not polled: the pod watch says when.
        assert_eq!(requeue_after(&unschedulable, hour), REQUEUE_AT_MOST);
        // Material due sooner than the poll wins, but never a busy loop.
        let soon = Some(Duration::from_secs(7));
        assert_eq!(requeue_after(&ready, soon), Duration::from_secs(7));
        assert_eq!(requeue_after(&none_yet, soon), Duration::from_secs(7));
        assert_eq!(
            requeue_after(&ready, Some(Duration::ZERO)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn not_ready_until_tls_and_keys_are() {
        let m = model("chat", json!({}));
        let obs = Observed {
            deployment: Some(deployment(1)),
            ..Default::default()
        };
        let status = model_status(&m, &obs, at(1));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("ready");
        assert_eq!(ready.status, FALSE);
        assert!(ready.message.starts_with(TLS_READY), "{}", ready.message);
    }

    #[test]
    fn not_ready_without_replicas() {
        let m = model("chat", json!({}));
        let status = model_status(&m, &Observed::default(), at(1));
        assert!(!is_true(&status.conditions, READY));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("ready");
        assert_eq!(ready.reason, reasons::NO_REPLICAS_READY);
    }

    #[test]
    fn refused_rule_surfaces_as_network_condition() {
        let m = model("chat", json!({}));
        let obs = Observed {
            deployment: Some(deployment(1)),
            refused_rules: vec![RefusedRule {
                index: 0,
                port: 22,
                reason: "network.ingress[0]: port 22".into(),
            }],
            ..Default::default()
        };
        let status = model_status(&m, &obs, at(1));
        let net = status
            .conditions
            .iter()
            .find(|c| c.type_ == NETWORK_READY)
            .expect("net");
        assert_eq!(
            (net.status.as_str(), net.reason.as_str()),
            (FALSE, reasons::RULE_REFUSED)
        );
        assert!(!is_true(&status.conditions, READY));
        assert!(is_true(&status.conditions, DEGRADED));
    }

    #[test]
    fn transition_time_is_kept_across_reconciles() {
        let mut m = model("chat", json!({}));
        let obs = Observed {
            deployment: Some(deployment(1)),
            ..material_ready()
        };
        m.status = Some(model_status(&m, &obs, at(10)));
        let again = model_status(&m, &obs, at(20));
        let ready = again
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("ready");
        assert_eq!(ready.last_transition_time.0, at(10));
    }

    #[test]
    fn an_unplaceable_gpu_request_is_unschedulable_with_the_schedulers_message() {
        let m = model("chat", json!({"resources": {"gpu": {"count": 2}}}));
        let message = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.";
        let observed = Observed {
            unschedulable: Some(message.into()),
            ..Default::default()
        };
        let status = model_status(&m, &observed, Timestamp::now());
        let available = status
            .conditions
            .iter()
            .find(|c| c.type_ == AVAILABLE)
            .expect("Available");
        assert_eq!(available.status, FALSE);
        assert_eq!(available.reason, reasons::UNSCHEDULABLE);
        assert_eq!(available.message, message);
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.reason, reasons::UNSCHEDULABLE);
    }

    #[test]
    fn a_gpu_pod_without_a_gpu_is_unavailable_stalled_and_warned_about() {
        let m = model("chat", json!({"resources": {"gpu": {"count": 1}}}));
        let message = "Error: --device cuda:0: no GPU is visible to the server: ...";
        let observed = Observed {
            gpu_unavailable: Some(message.into()),
            ..material_ready()
        };
        let status = model_status(&m, &observed, at(1));
        let find = |type_: &str| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == type_)
                .cloned()
                .expect(type_)
        };
        let available = find(AVAILABLE);
        assert_eq!(
            (available.status.as_str(), available.reason.as_str()),
            (FALSE, reasons::GPU_UNAVAILABLE)
        );
        assert_eq!(available.message, message);
        assert_eq!(find(READY).reason, reasons::GPU_UNAVAILABLE);
        assert_eq!(
            (find(STALLED).status.as_str(), find(STALLED).reason.as_str()),
            (TRUE, reasons::GPU_UNAVAILABLE)
        );
        let events = status_events(None, &status);
        assert!(
            events.iter().any(|e| e.type_ == EventType::Warning
                && e.reason == reasons::GPU_UNAVAILABLE
                && e.note.contains("no GPU is visible")),
            "{events:?}"
        );
    }

    #[test]
    fn a_model_too_big_for_its_gpu_is_refused_before_any_pod() {
        let m = model(
            "chat",
            json!({
                "model": {"parameters": "6B", "source": {"huggingFace": {"repo": "THUDM/chatglm3-6b"}}},
                "resources": {"gpu": {"count": 1, "product": "Tesla-T4"}}
            }),
        );
        let refusal = refused_config(&m).expect("refused");
        assert_eq!(refusal.reason, reasons::INSUFFICIENT_GPU_MEMORY);
        assert_eq!(refusal.condition, Some(AVAILABLE));
        assert!(refusal.message.contains("Tesla-T4"), "{}", refusal.message);
        let status = refused_status(&m, &refusal, at(1));
        let stalled = status
            .conditions
            .iter()
            .find(|c| c.type_ == STALLED)
            .expect("Stalled");
        assert_eq!(stalled.reason, reasons::INSUFFICIENT_GPU_MEMORY);

        let h100 = model(
            "chat",
            json!({
                "model": {"source": {"huggingFace": {"repo": "THUDM/chatglm3-6b"}}},
                "resources": {"gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"}}
            }),
        );
        assert_eq!(refused_config(&h100), None);
    }

    /// A status holding these (type, status, reason, message) conditions.
    fn with(conditions: &[(&str, bool, &str, &str)]) -> SecureChatModelStatus {
        let mut status = SecureChatModelStatus::default();
        for (type_, ok, reason, message) in conditions {
            let update = ConditionUpdate::new(*type_, *ok, *reason, *message);
            set_condition(&mut status.conditions, update, Some(1), at(1));
        }
        status
    }

    fn event(type_: EventType, reason: &str, note: &str) -> StatusEvent {
        StatusEvent {
            type_,
            reason: reason.into(),
            note: note.into(),
        }
    }

    #[test]
    fn status_changes_become_events_by_the_event_policy() {
        use EventType::{Normal, Warning};
        let starting = with(&[
            (READY, false, reasons::NO_REPLICAS_READY, "Available: 0/1"),
            (AVAILABLE, false, reasons::NO_REPLICAS_READY, "0/1"),
            (TLS_READY, false, reasons::PENDING, "not reconciled yet"),
            (DEGRADED, false, reasons::AS_EXPECTED, ""),
        ]);
        let ready = with(&[
            (READY, true, reasons::READY, "serving"),
            (AVAILABLE, true, reasons::REPLICAS_READY, "1/1"),
            (TLS_READY, true, reasons::CERTIFICATE_ISSUED, "valid"),
            (DEGRADED, false, reasons::AS_EXPECTED, ""),
        ]);
        let mut renewed = ready.clone();
        renewed.conditions[2].message = "valid longer".into();
        let refused = with(&[
            (READY, false, reasons::RULE_REFUSED, "NetworkReady: port 22"),
            (AVAILABLE, true, reasons::REPLICAS_READY, "1/1"),
            (NETWORK_READY, false, reasons::RULE_REFUSED, "port 22"),
            (DEGRADED, true, reasons::DEGRADED, "network rules refused"),
        ]);
        let cases: [(
            &str,
            Option<&SecureChatModelStatus>,
            &SecureChatModelStatus,
            Vec<StatusEvent>,
        ); 5] = [
            (
                "a model starting is news once, by Ready, and no warning",
                None,
                &starting,
                vec![event(Normal, reasons::NO_REPLICAS_READY, "Available: 0/1")],
            ),
            (
                "becoming ready is one Normal event",
                Some(&starting),
                &ready,
                vec![event(Normal, reasons::READY, "serving")],
            ),
            (
                "nothing changed, nothing to say",
                Some(&ready),
                &ready,
                vec![],
            ),
            (
                "a message alone is not news",
                Some(&ready),
                &renewed,
                vec![],
            ),
            (
                "trouble is a Warning per condition, naming it",
                Some(&ready),
                &refused,
                vec![
                    event(
                        Warning,
                        reasons::RULE_REFUSED,
                        "Ready: NetworkReady: port 22",
                    ),
                    event(Warning, reasons::RULE_REFUSED, "NetworkReady: port 22"),
                    event(
                        Warning,
                        reasons::DEGRADED,
                        "Degraded: network rules refused",
                    ),
                ],
            ),
        ];
        for (case, old, new, expected) in cases {
            assert_eq!(status_events(old, new), expected, "{case}");
        }
    }

    #[test]
    fn a_pattern_the_server_refuses_is_refused_and_ready_says_which() {
        let spec = json!({"replicas": 1, "sensitiveData": {"customPatterns": [
            {"name": "ticket", "regex": "T-[0-9]+"}, {"name": "bad", "regex": "("}]}});
        let mut m = model("chat", spec);
        let refusal = refused_config(&m).expect("refused");
        assert_eq!(refusal.reason, reasons::INVALID_SENSITIVE_DATA_PATTERN);
        assert!(
            refusal
                .message
                .starts_with("spec.sensitiveData: customPatterns[1] (bad): "),
            "{}",
            refusal.message
        );
        assert_eq!(refused_config(&model("chat", json!({}))), None);

        // Ready says why; what was observed before stays; it is a Warning.
        let observed = Observed {
            deployment: Some(deployment(1)),
            ..material_ready()
        };
        m.status = Some(model_status(&m, &observed, at(1)));
        let status = refused_status(&m, &refusal, at(2));
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            (FALSE, reasons::INVALID_SENSITIVE_DATA_PATTERN)
        );
        assert_eq!(ready.last_transition_time.0, at(2));
        assert!(is_true(&status.conditions, AVAILABLE));
        assert_eq!(
            status_events(m.status.as_ref(), &status),
            vec![event(
                EventType::Warning,
                reasons::INVALID_SENSITIVE_DATA_PATTERN,
                &format!("Ready: {}", refusal.message)
            )]
        );
    }

    #[test]
    fn shared_state_says_whether_limits_hold_for_the_model_as_a_whole() {
        let store = json!({"address": "valkey:6379", "network": {"to": ["10.0.5.0/24"]}});
        let cases = [
            (json!({"replicas": 1}), true, reasons::SINGLE_REPLICA),
            (json!({"replicas": 0}), true, reasons::SINGLE_REPLICA),
            (json!({"replicas": 2}), false, reasons::PER_REPLICA_LIMITS),
            (
                json!({"replicas": 2, "sharedState": store}),
                true,
                reasons::SHARED_STATE_CONFIGURED,
            ),
        ];
        for (spec, ok, reason) in cases {
            let m = model("chat", spec.clone());
            let observed = Observed {
                deployment: Some(deployment(m.spec.max_replicas())),
                ..material_ready()
            };
            let status = model_status(&m, &observed, at(1));
            let c = status
                .conditions
                .iter()
                .find(|c| c.type_ == SHARED_STATE)
                .expect("SharedState");
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (if ok { TRUE } else { FALSE }, reason),
                "{spec}"
            );
            // Per-replica limits are a warning; the model serves.
            assert!(is_true(&status.conditions, READY), "{spec}");
        }
        // Said once: a second reconcile with the same outcome is no news.
        let m = model("chat", json!({"replicas": 2}));
        let observed = Observed {
            deployment: Some(deployment(2)),
            ..material_ready()
        };
        let first = model_status(&m, &observed, at(1));
        let warned: Vec<_> = status_events(None, &first)
            .into_iter()
            .filter(|e| e.reason == reasons::PER_REPLICA_LIMITS)
            .collect();
        assert_eq!(warned.len(), 1);
        assert_eq!(warned[0].type_, EventType::Warning);
        let again = model_status(&m, &observed, at(2));
        assert!(status_events(Some(&first), &again).is_empty());
    }

    #[test]
    fn a_missing_reference_fails_its_condition_and_ready_and_is_polled_sooner() {
        let m = model("chat", json!({}));
        let refusal = Refusal {
            reason: reasons::CREDENTIALS_NOT_FOUND,
            message: "sharedState.credentials: Secret acl does not exist".into(),
            condition: Some(SHARED_STATE),
        };
        let status = refused_status(&m, &refusal, at(1));
        for type_ in [READY, SHARED_STATE] {
            let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (FALSE, reasons::CREDENTIALS_NOT_FOUND)
            );
        }
        assert_eq!(
            requeue_after(&status, None),
            REQUEUE_AWAITING_REFERENCE_AT_MOST
        );
    }

    #[test]
    fn scaling_ready_surfaces_the_autoscalers_own_reason() {
        use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerCondition;
        let m = model(
            "chat",
            json!({"autoscaling": {"maxReplicas": 3, "target": "2"}}),
        );
        let hpa_condition =
            |type_: &str, status: &str, reason: &str| HorizontalPodAutoscalerCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(format!("{reason} happened")),
                ..Default::default()
            };
        let hpa = |conditions: Vec<HorizontalPodAutoscalerCondition>| {
            ScalingObserved::Hpa(Some(HorizontalPodAutoscalerStatus {
                conditions: Some(conditions),
                current_replicas: Some(1),
                desired_replicas: 2,
                ..Default::default()
            }))
        };
        let cases = [
            (None, false, reasons::SCALING_PENDING),
            (
                Some(ScalingObserved::Hpa(None)),
                false,
                reasons::SCALING_PENDING,
            ),
            (
                Some(ScalingObserved::KedaNotInstalled),
                false,
                reasons::KEDA_NOT_INSTALLED,
            ),
            (
                Some(hpa(vec![
                    hpa_condition("AbleToScale", TRUE, "SucceededGetScale"),
                    hpa_condition("ScalingActive", FALSE, "FailedGetPodsMetric"),
                ])),
                false,
                reasons::SCALING_METRICS_UNAVAILABLE,
            ),
            (
                Some(hpa(vec![hpa_condition(
                    "AbleToScale",
                    FALSE,
                    "FailedGetScale",
                )])),
                false,
                reasons::SCALING_BLOCKED,
            ),
            (
                Some(hpa(vec![
                    hpa_condition("AbleToScale", TRUE, "ReadyForNewScale"),
                    hpa_condition("ScalingActive", TRUE, "ValidMetricFound"),
                ])),
                true,
                reasons::SCALING_ACTIVE,
            ),
        ];
        for (observed, ok, reason) in cases {
            let c = scaling_condition(&m, observed.as_ref()).expect("ScalingReady");
            assert_eq!((c.status, c.reason.as_str()), (ok, reason), "{observed:?}");
        }
        let metrics = scaling_condition(
            &m,
            Some(&hpa(vec![hpa_condition(
                "ScalingActive",
                FALSE,
                "FailedGetPodsMetric",
            )])),
        )
        .expect("condition");
        assert!(
            metrics.message.contains("FailedGetPodsMetric happened"),
            "{}",
            metrics.message
        );
        // Without autoscaling there is no such condition, and an old one
        // leaves the status.
        let fixed = model("chat", json!({"replicas": 2}));
        assert!(scaling_condition(&fixed, None).is_none());
        let mut observed = material_ready();
        observed.scaling = Some(ScalingObserved::KedaNotInstalled);
        let with = model_status(&m, &observed, at(1));
        assert_eq!(
            condition_status(&with.conditions, SCALING_READY),
            Some(FALSE)
        );
        let mut later = fixed.clone();
        later.status = Some(with);
        let without = model_status(&later, &material_ready(), at(2));
        assert_eq!(condition_status(&without.conditions, SCALING_READY), None);
    }
}
