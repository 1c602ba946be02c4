//! The ChatApiKey resource: an API key for one SecureChatModel, with its
//! lifecycle (expiry, rotation with overlap, suspension) and status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Tier, cel};
use crate::Duration;

/// Annotation on a ChatApiKey asking for a rotation now (the remedy for a
/// leaked key that keeps the consumer's identity): each new value rotates
/// the secret once, as the periodic rotation does (same key id, the old
/// secret works until the grace ends); `status.handledRotateRequest`
/// records the value acted on. Any value works, e.g. a timestamp.
pub const ROTATE_ANNOTATION: &str = "securechat.dev/rotate";

/// Longest lifetime of a key: ten years. Unset means no expiry at all.
const MAX_KEY_LIFETIME: Duration = Duration::from_secs(87600 * 3600);
/// Shortest lifetime and shortest rotation period of a key.
const MIN_KEY_PERIOD: Duration = Duration::from_secs(60);
/// Longest rotation period and grace period of a key: one year.
const MAX_KEY_ROTATION: Duration = Duration::from_secs(8760 * 3600);
/// Default lifetime of a client certificate the operator issues: 24 hours,
/// renewed when two thirds of it have passed (8 hours before expiry), so a
/// consumer that stopped reloading its Secret fails within a day, and a
/// stolen certificate is good for at most a day (plus revocation, which is
/// immediate: see `ChatApiKeySpec::credential`).
pub const DEFAULT_CLIENT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest client certificate lifetime: one minute (tests use it).
const MIN_CLIENT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(60);
/// Longest client certificate lifetime: 30 days. Certificates cannot be
/// revoked by a CRL here; only short lives keep a leaked one's use short
/// where the ChatApiKey is not deleted.
const MAX_CLIENT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(720 * 3600);

/// An API key for a SecureChatModel, with a lifecycle: Active -> Rotating
/// (the old secret still works until the grace period ends) -> Suspended
/// (can be resumed) -> Expired; deleting the resource revokes the key for
/// good. The plaintext key is written only to the consumer Secret
/// `secretName`; the model keeps only a hash.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "securechat.dev",
    version = "v1alpha1",
    kind = "ChatApiKey",
    doc = "An API key for a SecureChatModel with a lifecycle (Active, Rotating with overlap, Suspended, Expired; deleting it revokes the key). The plaintext goes only to the consumer Secret; the model stores a hash.",
    plural = "chatapikeys",
    singular = "chatapikey",
    shortname = "cak",
    category = "securechat",
    namespaced,
    status = "ChatApiKeyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.modelRef.name"}"#,
    printcolumn = r#"{"name":"Tier","type":"string","jsonPath":".spec.tier"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","priority":1}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = kube::core::Rule::new("size(self.metadata.name) <= 63").message("metadata.name: must be at most 63 characters: it is the value of the label that marks the key's consumer Secret")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.expiresAfter) && has(self.expiresAt))",
     "message": "expiresAfter and expiresAt are mutually exclusive: set one of them"},
    {"rule": "!has(self.clientCertificate) || (has(self.credential) && self.credential != 'ApiKey')",
     "message": "clientCertificate: set only with credential ClientCertificate or Both"},
    {"rule": "!has(self.rotation) || !has(self.credential) || self.credential != 'ClientCertificate'",
     "message": "rotation rotates an API key; a ClientCertificate credential has none (its certificate renews by clientCertificate.lifetime)"}
]))]
pub struct ChatApiKeySpec {
    /// The SecureChatModel this key is for. Immutable: a key belongs to one
    /// model.
    pub model_ref: ModelRef,

    /// Permission tier: ReadOnly (default), Developer or Admin.
    #[serde(default)]
    pub tier: Tier,

    /// Lifetime from the moment the key is minted (Go duration, e.g.
    /// `720h`): at least 1m and at most 87600h (10 years).
    /// Mutually exclusive with expiresAt. Neither: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("expiresAfter", Some(MIN_KEY_PERIOD), MAX_KEY_LIFETIME)
    ]))]
    pub expires_after: Option<Duration>,

    /// Fixed expiry time (RFC 3339). Mutually exclusive with expiresAfter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// Automatic rotation of the secret. The key id stays the same; the old
    /// secret keeps working until the grace period ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<KeyRotation>,

    /// Temporarily deactivate the key; set back to false to resume it.
    #[serde(default)]
    pub suspended: bool,

    /// Whether the consumer Secret carries Stakater Reloader's
    /// `reloader.stakater.com/match: "true"` annotation (default true), so
    /// that Deployments annotated `reloader.stakater.com/search: "true"`
    /// roll when the key rotates: a consumer reading the key from an
    /// environment variable never sees a rotation otherwise. Consumers that
    /// mount the Secret as a file see it without a restart; false leaves
    /// the annotation off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reloader: Option<bool>,

    /// Secret in this namespace that receives the plaintext key (key
    /// `api-key`). Default: the ChatApiKey's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: Option<String>,

    /// What the consumer Secret holds: ApiKey (default; `api-key`),
    /// ClientCertificate (`tls.crt`, `tls.key`, `ca.crt`: a short-lived
    /// client certificate from the model's CA, no API key) or Both. The
    /// certificate's URI SAN is the SPIFFE ID
    /// `spiffe://<model's auth.mtls.trustDomain>/ns/<this namespace>/sa/<clientCertificate.serviceAccountName>`,
    /// bound to this key in the model's key table: the server accepts
    /// that identity at this key's tier without an auth.mtls.allow entry,
    /// and deleting (or suspending) the ChatApiKey refuses it at once,
    /// though the certificate is still valid. With Both, the API key works
    /// only beside the certificate (a key copied off the workload is
    /// useless). Certificates need the model's auth.mtls.mode Optional or
    /// Required, its own CA (tls.mode not ExistingSecret) and no
    /// auth.mtls.trustBundle.
    #[serde(default, skip_serializing_if = "Credential::is_api_key")]
    pub credential: Credential,

    /// The client certificate (credential ClientCertificate or Both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateSpec>,
}

/// The credentials a ChatApiKey issues.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Credential {
    /// An API key (`api-key` in the consumer Secret).
    #[default]
    ApiKey,
    /// A client certificate (`tls.crt`, `tls.key`, `ca.crt`), no API key.
    ClientCertificate,
    /// Both; the API key is bound to the certificate's SPIFFE ID.
    Both,
}

impl Credential {
    /// Whether the consumer gets an API key.
    pub fn has_api_key(self) -> bool {
        self != Credential::ClientCertificate
    }

    /// Whether the consumer gets a client certificate.
    pub fn has_certificate(self) -> bool {
        self != Credential::ApiKey
    }

    fn is_api_key(&self) -> bool {
        *self == Credential::ApiKey
    }
}

/// A client certificate's identity and lifetime.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateSpec {
    /// The service account in the SPIFFE ID's path
    /// (`.../ns/<namespace>/sa/<this>`): the workload that mounts the
    /// Secret. Default: the ChatApiKey's name. The namespace is always the
    /// ChatApiKey's own, so a namespace cannot mint another's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account_name: Option<String>,

    /// How long each certificate is valid (Go duration): at least 1m, at
    /// most 720h; default 24h. A new one is written when two thirds of it
    /// have passed; the previous one stays valid until its own expiry, so
    /// consumers that reload the Secret never hold an expired certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("clientCertificate.lifetime", Some(MIN_CLIENT_CERTIFICATE_LIFETIME), MAX_CLIENT_CERTIFICATE_LIFETIME)
    ]))]
    pub lifetime: Option<Duration>,
}

impl ClientCertificateSpec {
    /// `lifetime`, else the default.
    pub fn lifetime(&self) -> Duration {
        self.lifetime.unwrap_or(DEFAULT_CLIENT_CERTIFICATE_LIFETIME)
    }
}

/// Reference to a SecureChatModel.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "modelRef is immutable: create a new ChatApiKey for another model"}
]))]
pub struct ModelRef {
    /// Name of the SecureChatModel.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Its namespace. Default: the ChatApiKey's namespace. The model must
    /// list this key's namespace in auth.apiKeys.allowedNamespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
}

/// Automatic rotation of an API key's secret (the rotation seed's 24h with
/// overlap).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": cel::when_durations_convert(
        &["self.gracePeriod", "self.period"],
        "duration(self.gracePeriod) < duration(self.period)"),
     "message": "rotation.gracePeriod: must be shorter than rotation.period"}
]))]
pub struct KeyRotation {
    /// How often a new secret is issued: at least 1m and at most 8760h.
    #[serde(default = "default_key_rotation_period")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("rotation.period", Some(MIN_KEY_PERIOD), MAX_KEY_ROTATION)
    ]))]
    pub period: Duration,

    /// How long the previous secret keeps working after a rotation; shorter
    /// than period.
    #[serde(default = "default_key_grace_period")]
    #[schemars(extend("x-kubernetes-validations" = [
        cel::duration_bounds("rotation.gracePeriod", None, MAX_KEY_ROTATION)
    ]))]
    pub grace_period: Duration,
}

impl Default for KeyRotation {
    fn default() -> Self {
        Self {
            period: default_key_rotation_period(),
            grace_period: default_key_grace_period(),
        }
    }
}

fn default_key_rotation_period() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_key_grace_period() -> Duration {
    Duration::from_secs(3600)
}

/// Lifecycle phase of an API key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum KeyPhase {
    /// Waiting for the model or for permission to mint.
    Pending,
    /// Usable.
    Active,
    /// A new secret was issued; the previous one works until the grace ends.
    Rotating,
    /// Deactivated by spec.suspended; can be resumed.
    Suspended,
    /// Past its expiry; refused by the server.
    Expired,
}

/// Observed state of a ChatApiKey.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatApiKeyStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready (the key works), and reasons when it does not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<KeyPhase>,

    /// Public key id (the non-secret prefix of the key); stable across
    /// rotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,

    /// Secret holding the plaintext key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// When the key stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// When the current secret was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated_at: Option<Time>,

    /// When the next automatic rotation happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<Time>,

    /// Until when the previous secret still works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ends_at: Option<Time>,

    /// When the key was first minted; expiresAfter counts from here (time
    /// spent Pending, e.g. waiting for the model, is not lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_minted_at: Option<Time>,

    /// The value of the securechat.dev/rotate annotation last acted on: a
    /// value equal to it does not rotate again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_rotate_request: Option<String>,

    /// The client certificate now in the consumer Secret (credential
    /// ClientCertificate or Both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateStatus>,
}

/// The client certificate the consumer Secret holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateStatus {
    /// Its URI SAN.
    #[serde(rename = "spiffeID")]
    pub spiffe_id: String,
    /// Its serial number, hex.
    pub serial: String,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the operator writes its successor (two thirds of its life).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Time>,
}
