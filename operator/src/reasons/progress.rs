//! Which condition reasons need a user's change: the classification that
//! `health` turns into kstatus's `Reconciling` and `Stalled` conditions
//! (what Flux's health checks and other GitOps tools read). A reason added
//! to `reasons` that means "the operator will not get there by itself" is
//! listed in [`MODEL_STALLED`] (a ChatApiKey's are classified by
//! `KeyReason::progress`, which the compiler keeps complete); every other
//! reason of a condition that does not hold counts as converging.

/// Where a resource is headed, as its condition reasons tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Where the spec asks it to be (which may be not Ready: a suspended
    /// or expired key).
    Settled,
    /// On its way: the operator or the cluster will get it there.
    Converging,
    /// Stuck until someone changes the spec or the cluster: a GitOps apply
    /// waiting on it should fail now, with this reason.
    Stalled,
}

/// SecureChatModel reasons (conditions False with them) that need a
/// user's change.
pub const MODEL_STALLED: [&str; 15] = [
    // No node can take the pod as asked (e.g. 2 GPUs on an A100 selector).
    super::UNSCHEDULABLE,
    // A spec.network rule was refused.
    super::RULE_REFUSED,
    // spec.sensitiveData does not compile.
    super::INVALID_SENSITIVE_DATA_PATTERN,
    // The API server refused an object built from the spec.
    super::APPLY_FAILED,
    // Someone else's object has one of the model's names.
    super::OBJECT_CONFLICT,
    // Objects the spec names do not exist: the user creates them.
    super::SECRET_NOT_FOUND,
    super::CREDENTIALS_NOT_FOUND,
    super::CA_BUNDLE_NOT_FOUND,
    super::INVALID_SHARED_STATE_ADDRESS,
    // spec.expose asks for a kind whose CRDs are not installed.
    super::CRD_NOT_INSTALLED,
    // autoscaling.engine is KEDA, and KEDA is not installed.
    super::KEDA_NOT_INSTALLED,
    // spec.auth.policy does not compile, or its ConfigMap or key is
    // missing: the pods keep the last good config until the user fixes it.
    super::POLICY_INVALID,
    super::POLICY_NOT_FOUND,
    // The model does not fit the GPU the spec names.
    super::INSUFFICIENT_GPU_MEMORY,
    // GPU pods whose GPU is not visible: the node's driver or device
    // plugin needs fixing, restarts will not help.
    super::GPU_UNAVAILABLE,
];

/// The progress a SecureChatModel condition's reason stands for, when the
/// condition does not hold.
pub fn model(reason: &str) -> Progress {
    if MODEL_STALLED.contains(&reason) {
        Progress::Stalled
    } else {
        Progress::Converging
    }
}
