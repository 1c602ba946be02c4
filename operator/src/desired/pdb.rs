//! The model's PodDisruptionBudget, only when there is more than one replica.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Input;
use crate::labels::{self, Names};

/// With more than one replica, voluntary disruptions (node drains) take at
/// most one pod at a time. With one replica a PDB would block drains
/// forever, so none is made (and an old one is deleted). `replicas` is the
/// current count: the fixed one, or what the autoscaler last set on the
/// Deployment (its change wakes the reconciler, which follows it here).
pub fn pdb(input: &Input, replicas: i32) -> Option<PodDisruptionBudget> {
    (replicas > 1).then(|| PodDisruptionBudget {
        metadata: input.metadata(Names::pdb(&input.name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector(&input.name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;

    #[test]
    fn only_with_more_than_one_replica() {
        let m = model("chat", serde_json::json!({}));
        let input = Input::new(&m, "img").expect("input");
        assert!(pdb(&input, 1).is_none());
        let budget = pdb(&input, 3).expect("pdb");
        assert_eq!(
            budget.spec.expect("spec").max_unavailable,
            Some(IntOrString::Int(1))
        );
    }
}
