//! `Reconciling` and `Stalled`: the abnormal-true conditions of the kstatus
//! conventions (sigs.k8s.io/cli-utils/pkg/kstatus), which Flux's health
//! checks and other GitOps tools compute a resource's status from. Without
//! them a model that can never be scheduled is `InProgress` forever, and a
//! `wait: true` apply waits for its whole timeout instead of failing with
//! our reason.
//!
//! Both are derived from the conditions already computed, by a pure
//! function and a reason classification (`reasons::progress`), so a new
//! reason only needs classifying:
//! - `Stalled=True` (kstatus: Failed) when a condition that does not hold
//!   has a reason that needs a user's change; its reason and message are
//!   that condition's.
//! - else `Reconciling=True` (kstatus: InProgress) while `Ready` is not
//!   True and its reason is converging;
//! - else both False (kstatus: Current, once `observedGeneration` caught up).
//!
//! At most one of them is True: kstatus reads the first True one it finds.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use securechat_crds::conditions::{ConditionUpdate, FALSE, TRUE};
use securechat_crds::files::names::{GPU_UNAVAILABLE_MESSAGE, MISSING_DRIVER_LIBRARY};

use crate::reasons::progress::Progress;

/// Condition type: True while the resource converges (kstatus InProgress).
pub const RECONCILING: &str = "Reconciling";
/// Condition type: True while it cannot get where its spec asks without a
/// user's change (kstatus Failed).
pub const STALLED: &str = "Stalled";
/// Reason of `Reconciling=False` and `Stalled=False` on a resource that is
/// where its spec asks.
pub const SETTLED: &str = "Settled";
/// Reason of `Reconciling=False` while `Stalled=True` says why.
pub const STUCK: &str = "Stalled";
/// The condition type that says whether the resource works.
const READY: &str = "Ready";

/// The `Reconciling` and `Stalled` conditions for a resource whose other
/// conditions are `conditions`; `classify` says what a reason of a
/// condition that does not hold means.
pub fn health_conditions(
    conditions: &[Condition],
    classify: impl Fn(&str) -> Progress,
) -> [ConditionUpdate; 2] {
    let own = |c: &&Condition| c.type_ != RECONCILING && c.type_ != STALLED;
    // Ready first: its reason names the first blocker, the best one to show.
    let ready = conditions.iter().filter(own).find(|c| c.type_ == READY);
    let others = conditions.iter().filter(own).filter(|c| c.type_ != READY);
    let stalled = ready
        .into_iter()
        .chain(others)
        .find(|c| c.status == FALSE && classify(&c.reason) == Progress::Stalled);
    if let Some(cause) = stalled {
        let message = format!("{}: {}", cause.type_, cause.message);
        return [
            ConditionUpdate::new(
                RECONCILING,
                false,
                STUCK,
                "stalled until the spec or the cluster changes (see Stalled)",
            ),
            ConditionUpdate::new(STALLED, true, cause.reason.clone(), message),
        ];
    }
    let not_stalled = ConditionUpdate::new(STALLED, false, SETTLED, "");
    let converging = match ready {
        None => Some(("Pending".to_string(), "not reconciled yet".to_string())),
        Some(c) if c.status != TRUE && classify(&c.reason) == Progress::Converging => {
            Some((c.reason.clone(), c.message.clone()))
        }
        Some(_) => None,
    };
    let reconciling = match converging {
        Some((reason, message)) => ConditionUpdate::new(RECONCILING, true, reason, message),
        None => ConditionUpdate::new(RECONCILING, false, SETTLED, ""),
    };
    [reconciling, not_stalled]
}

/// The name of the server's container in the model's pods.
pub const SERVER_CONTAINER: &str = "server";

/// Why a pod's server exited, when the cause is that no GPU was visible to
/// it (reason `GpuUnavailable`): its current or last termination message
/// (the log's tail, `FallbackToLogsOnError`) holds the server's own error
/// for `--device cuda`, or the loader's for a CUDA build started without
/// the driver library the NVIDIA container toolkit mounts.
pub fn gpu_unavailable_message(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let server = statuses.iter().find(|s| s.name == SERVER_CONTAINER)?;
    let terminated = [server.state.as_ref(), server.last_state.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|s| s.terminated.as_ref());
    terminated
        .filter_map(|t| t.message.as_deref())
        .find(|m| m.contains(GPU_UNAVAILABLE_MESSAGE) || m.contains(MISSING_DRIVER_LIBRARY))
        .map(|m| m.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reasons::{self, api_key::KeyReason, progress};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn condition(type_: &str, status: bool, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status { TRUE } else { FALSE }.into(),
            reason: reason.into(),
            message: format!("{reason} says so"),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    /// (Reconciling, Stalled) as (status, reason) pairs.
    fn health(
        conditions: &[Condition],
        classify: impl Fn(&str) -> Progress,
    ) -> ((bool, String), (bool, String)) {
        let [r, s] = health_conditions(conditions, classify);
        ((r.status, r.reason), (s.status, s.reason))
    }

    fn key(reason: KeyReason) -> Vec<Condition> {
        vec![condition(READY, reason.ready(), reason.as_str())]
    }

    fn key_progress(reason: &str) -> Progress {
        KeyReason::parse(reason).map_or(Progress::Converging, KeyReason::progress)
    }

    #[test]
    fn a_ready_model_is_neither_reconciling_nor_stalled() {
        let conditions = [
            condition(READY, true, reasons::READY),
            condition("Available", true, reasons::REPLICAS_READY),
            condition("Degraded", false, reasons::AS_EXPECTED),
        ];
        let (r, s) = health(&conditions, progress::model);
        assert_eq!(r, (false, SETTLED.into()));
        assert_eq!(s, (false, SETTLED.into()));
    }

    #[test]
    fn a_model_that_cannot_be_scheduled_is_stalled_with_the_schedulers_reason() {
        let conditions = [
            condition(READY, false, reasons::UNSCHEDULABLE),
            condition("Available", false, reasons::UNSCHEDULABLE),
        ];
        let [r, s] = health_conditions(&conditions, progress::model);
        assert!(s.status && !r.status);
        assert_eq!(s.reason, reasons::UNSCHEDULABLE);
        assert_eq!(s.message, "Ready: Unschedulable says so");
    }

    #[test]
    fn a_refused_rule_stalls_a_model_whose_ready_names_another_blocker() {
        // Ready names the replicas coming up; the refused rule will not go
        // away by itself.
        let conditions = [
            condition(READY, false, reasons::NO_REPLICAS_READY),
            condition("Available", false, reasons::NO_REPLICAS_READY),
            condition("NetworkReady", false, reasons::RULE_REFUSED),
        ];
        let (r, s) = health(&conditions, progress::model);
        assert_eq!(s, (true, reasons::RULE_REFUSED.into()));
        assert_eq!(r, (false, STUCK.into()));
    }

    #[test]
    fn a_policy_that_does_not_compile_stalls_a_model_still_serving_the_last_good_one() {
        // The pods keep the last good config (Available), but the new
        // module will not compile until the user changes it.
        for reason in [reasons::POLICY_INVALID, reasons::POLICY_NOT_FOUND] {
            let conditions = [
                condition(READY, false, reason),
                condition("Available", true, reasons::REPLICAS_READY),
            ];
            let (r, s) = health(&conditions, progress::model);
            assert_eq!(s, (true, reason.into()), "{reason}");
            assert_eq!(r, (false, STUCK.into()), "{reason}");
        }
    }

    #[test]
    fn a_model_on_its_way_is_reconciling() {
        let conditions = [
            condition(READY, false, reasons::NO_REPLICAS_READY),
            condition("Available", false, reasons::NO_REPLICAS_READY),
            condition("TLSReady", false, reasons::PENDING),
        ];
        let (r, s) = health(&conditions, progress::model);
        assert_eq!(r, (true, reasons::NO_REPLICAS_READY.into()));
        assert!(!s.0);
        // Nothing observed yet: reconciling too.
        let (r, _) = health(&[], progress::model);
        assert!(r.0);
    }

    #[test]
    fn every_model_reason_that_needs_a_user_is_stalled() {
        for reason in progress::MODEL_STALLED {
            let (r, s) = health(&[condition(READY, false, reason)], progress::model);
            assert_eq!((r.0, s), (false, (true, reason.to_string())), "{reason}");
        }
    }

    #[test]
    fn keys_settle_stall_or_converge_by_their_reason() {
        let stalled = [
            KeyReason::ModelNotFound,
            KeyReason::NamespaceNotAllowed,
            KeyReason::SecretConflict,
            KeyReason::TierNotAllowed,
            KeyReason::ClientCertificateUnavailable,
            KeyReason::IdentityConflict,
        ];
        let converging = [KeyReason::Minting, KeyReason::ModelNotReady];
        for reason in KeyReason::ALL {
            let (r, s) = health(&key(reason), key_progress);
            let expected = if stalled.contains(&reason) {
                (false, true)
            } else if converging.contains(&reason) {
                (true, false)
            } else {
                // Active, Rotating, and the states asked for (Suspended,
                // Expired): settled.
                (false, false)
            };
            assert_eq!((r.0, s.0), expected, "{reason}");
        }
    }

    #[test]
    fn a_server_that_found_no_gpu_is_told_apart_from_other_exits() {
        let pod = |message: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "status": {"containerStatuses": [{
                    "name": "server", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": message}}
                }]}
            }))
            .expect("pod")
        };
        let ours =
            "Error: --device cuda:0: no GPU is visible to the server: CUDA_ERROR_NO_DEVICE\n";
        assert_eq!(
            gpu_unavailable_message(&pod(ours)).as_deref(),
            Some(ours.trim())
        );
        let loader = "securechat-server: error while loading shared libraries: libcuda.so.1: \
                      cannot open shared object file: No such file or directory";
        assert!(gpu_unavailable_message(&pod(loader)).is_some());
        assert_eq!(
            gpu_unavailable_message(&pod("Error: cannot load /models/x: bad magic")),
            None
        );
        assert_eq!(gpu_unavailable_message(&Pod::default()), None);
    }

    #[test]
    fn the_previous_health_conditions_do_not_feed_the_new_ones() {
        let mut conditions = key(KeyReason::Active);
        conditions.push(condition(STALLED, false, reasons::UNSCHEDULABLE));
        conditions.push(condition(RECONCILING, false, reasons::UNSCHEDULABLE));
        let (r, s) = health(&conditions, progress::model);
        assert_eq!((r.0, s.0), (false, false));
    }
}
