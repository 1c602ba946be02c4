//! `status` of a SecureChatModel: conditions, endpoints, and the state of
//! its certificate and signing keys.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a SecureChatModel.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecureChatModelStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Available, TLSReady, SigningKeysReady, NetworkReady, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Served model, e.g. `SmolLM2-135M-Instruct (embedded)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,

    /// Ready replicas out of desired, e.g. `2/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,

    /// Pods ready to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// In-cluster URL of the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// In-cluster URL of the web chat UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_endpoint: Option<String>,

    /// How the model is reached from outside the cluster, one line per
    /// path `spec.expose` made (e.g. `https://chat.example.com/ (Ingress
    /// chat-web)`, `NodePort 30851 -> web (Service chat-external)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_endpoints: Vec<String>,

    /// Server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,

    /// Token-signing keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_keys: Option<SigningKeysStatus>,
}

/// Observed state of the server certificate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// Secret holding tls.crt, tls.key and ca.crt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Expiry of the current certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the operator renews it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Time>,
    /// ConfigMap with the CA bundle for in-cluster clients (key ca.crt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_config_map: Option<String>,
    /// Expiry of the CA that signs the server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<Time>,
    /// When the next CA rotation starts (a new CA joins the bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_renew_at: Option<Time>,
    /// Number of CA certificates in the bundle: 2 during a CA rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_size: Option<i32>,
}

/// Observed state of the signing keys.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeysStatus {
    /// Secret holding the keyset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Key id that signs new tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_kid: Option<String>,
    /// Key id that still verifies during the grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_kid: Option<String>,
    /// Key id published ahead of the next rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_kid: Option<String>,
    /// When the next rotation step happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_at: Option<Time>,
}
