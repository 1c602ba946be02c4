//! Conditions in the Kubernetes API convention.
//!
//! Status conditions are a list keyed by `type`. These helpers are pure: the
//! caller passes `now`, and `lastTransitionTime` only moves when a condition's
//! status actually changes, so a reconcile that changes nothing writes
//! nothing new.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// `status` of a condition that holds.
pub const TRUE: &str = "True";
/// `status` of a condition that does not hold.
pub const FALSE: &str = "False";
/// `status` of a condition not yet determined.
pub const UNKNOWN: &str = "Unknown";

/// The part of a condition a reconciler decides; the rest is bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    /// The condition's `type`, e.g. `Ready`: the key of the list.
    pub type_: String,
    /// Whether it holds (`True`) or not (`False`).
    pub status: bool,
    /// A CamelCase word for programs, e.g. `NoReplicasReady`.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
}

impl ConditionUpdate {
    /// A condition update from its four parts.
    pub fn new(
        type_: impl Into<String>,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Inserts or updates one condition. Returns true when anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    update: ConditionUpdate,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = if update.status { TRUE } else { FALSE }.to_string();
    match conditions.iter_mut().find(|c| c.type_ == update.type_) {
        Some(existing) => {
            let transition = existing.status != status;
            let changed = transition
                || existing.reason != update.reason
                || existing.message != update.message
                || existing.observed_generation != observed_generation;
            if transition {
                existing.last_transition_time = Time(now);
            }
            existing.status = status;
            existing.reason = update.reason;
            existing.message = update.message;
            existing.observed_generation = observed_generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: update.type_,
                status,
                reason: update.reason,
                message: update.message,
                observed_generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// The status of a condition by type, if present.
pub fn condition_status<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

/// True when the condition is present with status "True".
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    condition_status(conditions, type_) == Some(TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid timestamp")
    }

    #[test]
    fn adds_a_new_condition_with_now_as_transition_time() {
        let mut list = Vec::new();
        assert!(set_condition(
            &mut list,
            ConditionUpdate::new("Ready", false, "Pending", "waiting"),
            Some(1),
            at(10)
        ));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status, FALSE);
        assert_eq!(list[0].last_transition_time, Time(at(10)));
        assert_eq!(list[0].observed_generation, Some(1));
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut list = Vec::new();
        set_condition(
            &mut list,
            ConditionUpdate::new("Ready", false, "Pending", "a"),
            Some(1),
            at(10),
        );
        assert!(set_condition(
            &mut list,
            ConditionUpdate::new("Ready", false, "StillPending", "b"),
            Some(1),
            at(20)
        ));
        assert_eq!(list[0].last_transition_time, Time(at(10)));
        assert_eq!(list[0].reason, "StillPending");
        assert!(set_condition(
            &mut list,
            ConditionUpdate::new("Ready", true, "Available", "ok"),
            Some(2),
            at(30)
        ));
        assert_eq!(list[0].last_transition_time, Time(at(30)));
        assert!(is_true(&list, "Ready"));
    }

    #[test]
    fn identical_update_reports_no_change() {
        let mut list = Vec::new();
        set_condition(
            &mut list,
            ConditionUpdate::new("Ready", true, "Available", "ok"),
            Some(1),
            at(10),
        );
        assert!(!set_condition(
            &mut list,
            ConditionUpdate::new("Ready", true, "Available", "ok"),
            Some(1),
            at(99)
        ));
        assert_eq!(list[0].last_transition_time, Time(at(10)));
    }

    #[test]
    fn conditions_are_keyed_by_type() {
        let mut list = Vec::new();
        set_condition(
            &mut list,
            ConditionUpdate::new("Ready", true, "A", ""),
            None,
            at(1),
        );
        set_condition(
            &mut list,
            ConditionUpdate::new("TLSReady", false, "B", ""),
            None,
            at(1),
        );
        assert_eq!(list.len(), 2);
        assert_eq!(condition_status(&list, "TLSReady"), Some(FALSE));
        assert_eq!(condition_status(&list, "Missing"), None);
    }
}
