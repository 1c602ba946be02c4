//! The files the operator writes and the server reads.
//!
//! Kubernetes projects Secrets and ConfigMaps into the pod as files; the
//! server hot-reloads them. Defining the formats here, next to the CRDs, means
//! the operator serialises exactly the types the server deserialises:
//!
//! - [`config`]: `config.yaml`, the server configuration (a ConfigMap).
//! - [`keyset`]: `keyset.json`, the token-signing keys (a Secret).
//! - [`api_keys`]: `api-keys.json`, the API-key table with hashes only (a
//!   Secret).
//!
//! Every type has a `validate` that the server runs before a new version
//! replaces the last good one, and the operator runs before it writes.

pub mod api_keys;
pub mod config;
pub mod keyset;

/// File names inside the mounted directories (and the Secret / ConfigMap keys
/// that become those files).
pub mod names {
    /// Server configuration, YAML.
    pub const CONFIG: &str = "config.yaml";
    /// Signing keyset, JSON.
    pub const KEYSET: &str = "keyset.json";
    /// API-key table, JSON.
    pub const API_KEYS: &str = "api-keys.json";
    /// PEM certificate chain, leaf first (kubernetes.io/tls key).
    pub const TLS_CERT: &str = "tls.crt";
    /// PEM PKCS#8 private key (kubernetes.io/tls key).
    pub const TLS_KEY: &str = "tls.key";
    /// PEM CA certificate clients should trust.
    pub const CA_CERT: &str = "ca.crt";
    /// Environment variable of the server container holding its pod's name
    /// (downward API `metadata.name`); audit lines carry it.
    pub const POD_NAME_ENV: &str = "POD_NAME";
    /// Environment variable of the server container holding its node's
    /// name (downward API `spec.nodeName`); audit lines carry it.
    pub const NODE_NAME_ENV: &str = "NODE_NAME";
    /// Environment variable (and `--device` flag) of `securechat-server
    /// serve` choosing where the model runs: `auto`, `cpu`, `cuda` or
    /// `cuda:N`. The operator sets `cuda` on GPU pods.
    pub const DEVICE_ENV: &str = "SECURECHAT_DEVICE";
    /// What the server's error says when it was told to run on a GPU and
    /// none is visible; the operator finds it in the pod's termination
    /// message (reason `GpuUnavailable`).
    pub const GPU_UNAVAILABLE_MESSAGE: &str = "no GPU is visible to the server";
    /// What the dynamic loader says when the CUDA build starts where the
    /// NVIDIA container toolkit injected no driver library: the same cause
    /// (no GPU given to the container), seen before the server runs.
    pub const MISSING_DRIVER_LIBRARY: &str = "libcuda.so.1";
}

/// Why a file's content is not acceptable. Each message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ValidationError(pub Vec<String>);

impl ValidationError {
    /// `Ok(())` when no problem was collected.
    pub(crate) fn check(problems: Vec<String>) -> Result<(), ValidationError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError(problems))
        }
    }
}

/// Ids (key ids, API-key ids) are used in URLs, headers and the plaintext key
/// itself, so they are kept to a conservative alphabet.
pub(crate) fn is_valid_id(id: &str, max_len: usize) -> bool {
    !id.is_empty()
        && id.len() <= max_len
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}
