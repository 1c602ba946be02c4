//! The `reason` of every condition and Event the operator writes on a
//! SecureChatModel, in one place (as cert-manager's `constants.go`): a
//! reason is API, since alerts, `kubectl wait` scripts and the tests match
//! on it, so each one is written once here and read everywhere else.
//! A ChatApiKey's reasons are in [`api_key`].
//!
//! Reasons are CamelCase words (the Kubernetes API convention for
//! `Condition.reason`); each constant says which condition carries it and
//! what it means to a reader of `kubectl describe scm`.

pub mod api_key;
pub mod progress;

// Ready: True with READY, or False with the reason of the first condition
// that is not (see status::model_status).

/// Ready=True: every condition Ready depends on holds; the model serves.
pub const READY: &str = "Ready";
/// Ready=False: a `sensitiveData.customPatterns` regex does not compile by
/// the server's rules (alone, or all of them together over the size
/// limit); the new config was not written and running pods keep the last
/// good one.
pub const INVALID_SENSITIVE_DATA_PATTERN: &str = "InvalidSensitiveDataPattern";
/// Ready=False: the API server refused an object built from the spec (the
/// message is the API server's); nothing after it was applied.
pub const APPLY_FAILED: &str = "ApplyFailed";
/// Ready=False: an object of one of the model's names exists and the model
/// does not control it (someone else's, or another resource's); the
/// operator leaves it untouched rather than take it over, and the message
/// names it.
pub const OBJECT_CONFLICT: &str = "ObjectConflict";

/// Ready=False: `spec.auth.policy`'s Rego module does not compile by the
/// server's rules (or is not `package securechat` with an `allow` rule);
/// the new config was not written and running pods keep the last good
/// one. The message is the compiler's.
pub const POLICY_INVALID: &str = "PolicyInvalid";
/// Ready=False: the ConfigMap `spec.auth.policy.configMapRef` names, or its
/// key, does not exist; nothing was written, as for PolicyInvalid.
pub const POLICY_NOT_FOUND: &str = "PolicyNotFound";

// Available.

/// Available=True: `replicas` is 0; keys and certificates are kept.
pub const SCALED_TO_ZERO: &str = "ScaledToZero";
/// Available=True: every replica is ready and updated.
pub const REPLICAS_READY: &str = "ReplicasReady";
/// Available=True: some replicas are ready, not all (Degraded says so too).
pub const PARTIALLY_READY: &str = "PartiallyReady";
/// Available=False: the scheduler could not place a pod; the message is
/// the scheduler's (named after the scheduler's own reason).
pub const UNSCHEDULABLE: &str = "Unschedulable";
/// Available=False: pods exist or are coming, none is ready yet.
pub const NO_REPLICAS_READY: &str = "NoReplicasReady";

// NetworkReady.

/// NetworkReady=True: the NetworkPolicy mirrors `spec.network`.
pub const POLICY_APPLIED: &str = "PolicyApplied";
/// NetworkReady=False: a rule of `spec.network` was refused (e.g. a port
/// the model does not serve); the others are applied.
pub const RULE_REFUSED: &str = "RuleRefused";

// Degraded.

/// Degraded=False: nothing is degraded.
pub const AS_EXPECTED: &str = "AsExpected";
/// Degraded=True: serving, but not as asked (missing replicas, refused
/// network rules, a replica that cannot be scheduled).
pub const DEGRADED: &str = "Degraded";

// TLSReady and SigningKeysReady (key material).

/// TLSReady / SigningKeysReady=False: the material has not been reconciled
/// yet.
pub const PENDING: &str = "Pending";
/// TLSReady / SigningKeysReady=False: a certificate renewal or key rotation
/// failed; the last good material stays in force and it is retried.
pub const RENEWAL_FAILED: &str = "RenewalFailed";
/// TLSReady=True: serving the certificate of `tls.secretName`.
pub const EXISTING_SECRET: &str = "ExistingSecret";
/// TLSReady=False: `tls.secretName` does not exist or lacks a key pair.
pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
/// TLSReady=True: a CA rotation is under way (both CAs are trusted).
pub const CA_ROTATING: &str = "CaRotating";
/// TLSReady=True: the operator's CA issued the serving certificate.
pub const CERTIFICATE_ISSUED: &str = "CertificateIssued";
/// SigningKeysReady=True: a next key is published, not signing yet.
pub const ROTATING: &str = "Rotating";
/// SigningKeysReady=True: an active key signs; no rotation under way.
pub const KEYSET_READY: &str = "KeysetReady";

// SharedState: whether the model's limits hold for the model as a whole.

/// SharedState=True: `sharedState` is set; the replicas share one store
/// for limits, sessions and usage.
pub const SHARED_STATE_CONFIGURED: &str = "Configured";
/// SharedState=True: at most one replica and no store; the one process's
/// limits are the model's.
pub const SINGLE_REPLICA: &str = "SingleReplica";
/// SharedState=False: more than one replica and no `sharedState`: every
/// limit (requests and tokens per minute, the brute-force guard) holds per
/// replica, so the model as a whole allows up to `replicas` times as much,
/// and web sessions live in the replica that made them. Serving goes on
/// (Ready does not wait on it); the Warning says so once.
pub const PER_REPLICA_LIMITS: &str = "PerReplicaLimits";
/// SharedState=False and Ready=False: the credentials Secret of
/// `sharedState.credentials` does not exist or lacks a key it names; the
/// config and Deployment were not changed, running pods keep the last good
/// ones.
pub const CREDENTIALS_NOT_FOUND: &str = "CredentialsNotFound";
/// SharedState=False and Ready=False: the ConfigMap or Secret of
/// `sharedState.tls.caBundle` does not exist or lacks its key; nothing was
/// rolled out, as for CredentialsNotFound.
pub const CA_BUNDLE_NOT_FOUND: &str = "CaBundleNotFound";
/// SharedState=False and Ready=False: `sharedState.address` has no valid
/// port (admission refuses such an address; a spec stored before that rule
/// gets this); nothing was rolled out.
pub const INVALID_SHARED_STATE_ADDRESS: &str = "InvalidSharedStateAddress";

// Events only.

/// Normal Event: owned objects were created or changed (the note lists
/// them).
pub const APPLIED: &str = "Applied";

/// Reasons of a model that is merely starting: not a warning.
pub const STARTING: [&str; 2] = [NO_REPLICAS_READY, PENDING];
/// Reasons of a model waiting for an object the user creates (polled
/// sooner: the operator does not watch the objects a spec merely names).
pub const AWAITING_REFERENCE: [&str; 3] =
    [CREDENTIALS_NOT_FOUND, CA_BUNDLE_NOT_FOUND, POLICY_NOT_FOUND];
/// Available reasons while replicas are on their way (polled sooner).
pub const ROLLING_OUT: [&str; 2] = [NO_REPLICAS_READY, PARTIALLY_READY];

// ScalingReady: only on a model with spec.autoscaling (see
// status::scaling_condition). Not a Ready blocker.

/// ScalingReady=True: the autoscaler evaluates the serving metric and
/// scales the Deployment.
pub const SCALING_ACTIVE: &str = "ScalingActive";
/// ScalingReady=False: the autoscaler has not evaluated yet.
pub const SCALING_PENDING: &str = "Pending";
/// ScalingReady=False: the HPA cannot read the pods metric (no
/// custom-metrics adapter, or it has no series for the pods); the message
/// is the HPA's own.
pub const SCALING_METRICS_UNAVAILABLE: &str = "MetricsUnavailable";
/// ScalingReady=False: the autoscaler cannot scale the Deployment
/// (AbleToScale=False, or KEDA's Ready=False); the message is its own.
pub const SCALING_BLOCKED: &str = "CannotScale";
/// ScalingReady=False: `engine: KEDA` and KEDA's ScaledObject CRD is not
/// installed; needs the user's change (install KEDA, or engine HPA).
pub const KEDA_NOT_INSTALLED: &str = "KedaNotInstalled";

/// Ready=False: `spec.expose` asks for an object whose CRD the cluster does
/// not have (Gateway API routes, an InferencePool); needs the user's change
/// (install the CRDs, or drop the exposure).
pub const CRD_NOT_INSTALLED: &str = "CrdNotInstalled";

/// Ready/Available=False: the model does not fit one card of
/// `resources.gpu.product` (see `gpu_memory`); no pod is rolled out for
/// it. Needs the user's change (a larger card, a smaller model).
pub const INSUFFICIENT_GPU_MEMORY: &str = "InsufficientGpuMemory";
/// Ready/Available=False: the server of a GPU pod exited because no GPU
/// was visible to it (its termination message says so); needs the
/// cluster's change (the node's NVIDIA driver, container toolkit or device
/// plugin).
pub const GPU_UNAVAILABLE: &str = "GpuUnavailable";
