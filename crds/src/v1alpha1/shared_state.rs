//! `spec.sharedState`: the Redis-protocol store (Valkey or Redis 7+) that
//! makes a model's replicas enforce one set of limits and share web
//! sessions, brute-force counters and usage.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Cidr;
use crate::Duration;

/// How long one store operation may take by default before it counts as
/// the store being unavailable: a slow store must not stall requests.
pub const DEFAULT_SHARED_STATE_TIMEOUT: Duration = Duration::from_millis(50);

/// A shared store for limits, sessions and usage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedStateSpec {
    /// `host:port` of the store, e.g. `valkey.infra.svc.cluster.local:6379`
    /// or `10.0.5.7:6379`.
    #[schemars(length(min = 3, max = 260))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[^:/ ]+:[0-9]{1,5}$') || self.matches('^\\\\[[0-9a-fA-F:.]+\\\\]:[0-9]{1,5}$')",
         "message": "sharedState.address: must be host:port (e.g. valkey.infra.svc:6379, or [fd00::7]:6379)"},
        {"rule": "!self.matches(':[0-9]{1,5}$') || (int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535)",
         "message": "sharedState.address: the port must be between 1 and 65535"}
    ]))]
    pub address: String,

    /// Where the store runs, for the pods' NetworkPolicy egress rule to its
    /// port (a NetworkPolicy cannot name a host): address ranges for a store
    /// outside the cluster, or namespace / pod selectors for one inside it.
    pub network: SharedStateNetwork,

    /// TLS to the store. Unset: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SharedStateTls>,

    /// ACL user and password, from a Secret in the model's namespace.
    /// Unset: no AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SharedStateCredentials>,

    /// Prefix of every key the servers write. Default: `<namespace>/<name>/`
    /// of the SecureChatModel, so models sharing one store never share
    /// counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_prefix: Option<String>,

    /// What limited endpoints do while the store cannot be reached.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,

    /// How long one store operation may take before it counts as a failure
    /// (default 50ms).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    DEFAULT_SHARED_STATE_TIMEOUT
}

impl SharedStateSpec {
    /// The store's port, from `address` (`host:port` or `[v6]:port`).
    /// None for an address admission would have refused.
    pub fn port(&self) -> Option<u16> {
        let (_, port) = self.address.rsplit_once(':')?;
        port.parse().ok().filter(|p| *p != 0)
    }

    /// The key prefix the servers use: `keyPrefix`, else
    /// `<namespace>/<name>/` of the model, so models sharing one store
    /// never share counters.
    pub fn key_prefix_for(&self, namespace: &str, name: &str) -> String {
        self.key_prefix
            .clone()
            .unwrap_or_else(|| format!("{namespace}/{name}/"))
    }
}

/// Where the store is, as NetworkPolicy peers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.to) && size(self.to) > 0) || has(self.toNamespaces) || has(self.toPods)",
     "message": "sharedState.network: say where the store runs: to (CIDRs), toNamespaces or toPods"}
]))]
pub struct SharedStateNetwork {
    /// Address ranges of a store outside the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub to: Vec<Cidr>,

    /// Namespaces the store's pods run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_namespaces: Option<LabelSelector>,

    /// The store's pods (in the namespaces of toNamespaces, or the model's
    /// namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_pods: Option<LabelSelector>,
}

/// TLS settings towards the store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedStateTls {
    /// The CA bundle that signed the store's certificate.
    pub ca_bundle: CaBundleRef,

    /// Name to verify in the store's certificate. Default: the host of
    /// `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
}

/// A PEM CA bundle in a ConfigMap or a Secret of the model's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.configMapName) != has(self.secretName)",
     "message": "caBundle: give exactly one of configMapName or secretName"}
]))]
pub struct CaBundleRef {
    /// ConfigMap holding the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub config_map_name: Option<String>,

    /// Secret holding the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: Option<String>,

    /// Key of the bundle in it (default `ca.crt`).
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

/// ACL credentials from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedStateCredentials {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,

    /// Key of the ACL user name in it. Unset: the store's default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub username_key: Option<String>,

    /// Key of the password in it (default `password`).
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub password_key: String,
}

fn default_password_key() -> String {
    "password".to_owned()
}

/// Behaviour of limited endpoints while the store cannot be reached.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnUnavailable {
    /// Refuse limited requests with 503 and Retry-After until the store is
    /// back (health endpoints stay up). The safe default.
    #[default]
    FailClosed,
    /// Each replica enforces its share (limit / replicas) locally, and says
    /// so in a metric and a log line.
    LocalFallback,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(address: &str) -> SharedStateSpec {
        SharedStateSpec {
            address: address.into(),
            network: SharedStateNetwork::default(),
            tls: None,
            credentials: None,
            key_prefix: None,
            on_unavailable: OnUnavailable::default(),
            timeout: DEFAULT_SHARED_STATE_TIMEOUT,
        }
    }

    #[test]
    fn the_port_is_read_from_either_address_form() {
        assert_eq!(spec("valkey.infra.svc:6379").port(), Some(6379));
        assert_eq!(spec("[fd00::7]:6380").port(), Some(6380));
        assert_eq!(spec("10.0.5.7:0").port(), None);
        assert_eq!(spec("10.0.5.7:70000").port(), None);
        assert_eq!(spec("valkey").port(), None);
    }

    #[test]
    fn the_key_prefix_defaults_to_the_models_namespace_and_name() {
        let mut s = spec("valkey:6379");
        assert_eq!(s.key_prefix_for("team", "chat"), "team/chat/");
        s.key_prefix = Some("shared:".into());
        assert_eq!(s.key_prefix_for("team", "chat"), "shared:");
    }
}
