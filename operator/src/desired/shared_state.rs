//! `spec.sharedState` as the pods see it: the `sharedState` section of the
//! server config, the read-only volumes holding the store's credentials and
//! CA bundle at the paths that section names, and the Secrets and
//! ConfigMaps the spec refers to (checked before anything is rolled out).
//!
//! Each referenced key is mounted under a fixed file name, whatever the
//! key is called in the user's object, so the paths below are the only
//! home of where the server finds them:
//!
//! ```text
//! /etc/securechat/shared-state/
//!   credentials/   the credentials Secret, only the keys named
//!     username     <- credentials.usernameKey (when set)
//!     password     <- credentials.passwordKey
//!   ca/            tls.caBundle's ConfigMap or Secret, only its key
//!     ca.crt       <- tls.caBundle.key
//! ```
//!
//! The kubelet updates these files in place when the objects change (a
//! password rotation); the server re-reads them as it does its other
//! mounted files.

use std::path::Path;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, KeyToPath, SecretVolumeSource, Volume, VolumeMount,
};
use securechat_crds::files::config::{SharedStateConfig, SharedStateTlsFiles};
use securechat_crds::v1alpha1::{SharedStateSpec, SharedStateTls};

/// Mount point of the credentials Secret.
pub const CREDENTIALS_DIR: &str = "/etc/securechat/shared-state/credentials";
/// Mount point of the CA bundle.
pub const CA_DIR: &str = "/etc/securechat/shared-state/ca";
const USERNAME_FILE: &str = "username";
const PASSWORD_FILE: &str = "password";
const CA_FILE: &str = "ca.crt";
const CREDENTIALS_VOLUME: &str = "shared-state-credentials";
const CA_VOLUME: &str = "shared-state-ca";
/// Owner and group may read, nobody writes (as the other secret mounts).
const READ_ONLY_MODE: i32 = 0o440;

/// The server's `sharedState` section: the spec with its references
/// turned into the mounted files, the key prefix and the replica count
/// filled in.
pub fn config(
    spec: Option<&SharedStateSpec>,
    namespace: &str,
    name: &str,
    replicas: i32,
) -> Option<SharedStateConfig> {
    let spec = spec?;
    // Every field is named: a new one must be decided on here.
    let SharedStateSpec {
        address,
        network: _, // the NetworkPolicy's egress rule
        tls,
        credentials,
        key_prefix: _, // key_prefix_for below
        on_unavailable,
        timeout,
    } = spec;
    Some(SharedStateConfig {
        address: address.clone(),
        tls: tls
            .as_ref()
            .map(|SharedStateTls { server_name, .. }| SharedStateTlsFiles {
                ca_file: Path::new(CA_DIR).join(CA_FILE),
                server_name: server_name.clone(),
            }),
        username_file: credentials
            .as_ref()
            .and_then(|c| c.username_key.as_ref())
            .map(|_| Path::new(CREDENTIALS_DIR).join(USERNAME_FILE)),
        password_file: credentials
            .as_ref()
            .map(|_| Path::new(CREDENTIALS_DIR).join(PASSWORD_FILE)),
        key_prefix: spec.key_prefix_for(namespace, name),
        on_unavailable: *on_unavailable,
        timeout: *timeout,
        // A negative count cannot pass admission (minimum 0).
        replicas: u32::try_from(replicas).unwrap_or(0),
    })
}

/// The read-only volumes and mounts of the store's credentials and CA
/// bundle (none without `sharedState`).
pub fn volumes(spec: Option<&SharedStateSpec>) -> Vec<(Volume, VolumeMount)> {
    let Some(spec) = spec else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mount = |volume: &str, dir: &str| VolumeMount {
        name: volume.into(),
        mount_path: dir.into(),
        read_only: Some(true),
        ..Default::default()
    };
    if let Some(credentials) = &spec.credentials {
        let mut items = Vec::new();
        if let Some(key) = &credentials.username_key {
            items.push(item(key, USERNAME_FILE));
        }
        items.push(item(&credentials.password_key, PASSWORD_FILE));
        out.push((
            Volume {
                name: CREDENTIALS_VOLUME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(credentials.secret_name.clone()),
                    default_mode: Some(READ_ONLY_MODE),
                    items: Some(items),
                    ..Default::default()
                }),
                ..Default::default()
            },
            mount(CREDENTIALS_VOLUME, CREDENTIALS_DIR),
        ));
    }
    if let Some(tls) = &spec.tls {
        let bundle = &tls.ca_bundle;
        let items = Some(vec![item(&bundle.key, CA_FILE)]);
        let volume = match (&bundle.config_map_name, &bundle.secret_name) {
            (Some(config_map), _) => Volume {
                name: CA_VOLUME.into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map.clone(),
                    default_mode: Some(READ_ONLY_MODE),
                    items,
                    ..Default::default()
                }),
                ..Default::default()
            },
            (None, secret) => Volume {
                name: CA_VOLUME.into(),
                secret: Some(SecretVolumeSource {
                    // Admission requires exactly one of the two names.
                    secret_name: secret.clone(),
                    default_mode: Some(READ_ONLY_MODE),
                    items,
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        out.push((volume, mount(CA_VOLUME, CA_DIR)));
    }
    out
}

fn item(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        ..Default::default()
    }
}

/// Which kind of object a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    Secret,
    ConfigMap,
}

/// Which part of `sharedState` names an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceField {
    Credentials,
    CaBundle,
}

impl ReferenceField {
    /// The field as the spec writes it, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Credentials => "sharedState.credentials",
            Self::CaBundle => "sharedState.tls.caBundle",
        }
    }
}

/// An object of the model's namespace the spec names and the pods mount,
/// with the keys they need from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub field: ReferenceField,
    pub kind: ReferenceKind,
    pub name: String,
    pub keys: Vec<String>,
}

/// The credentials Secret and the CA bundle `spec` names.
pub fn references(spec: Option<&SharedStateSpec>) -> Vec<Reference> {
    let Some(spec) = spec else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(credentials) = &spec.credentials {
        out.push(Reference {
            field: ReferenceField::Credentials,
            kind: ReferenceKind::Secret,
            name: credentials.secret_name.clone(),
            keys: credentials
                .username_key
                .iter()
                .chain([&credentials.password_key])
                .cloned()
                .collect(),
        });
    }
    if let Some(tls) = &spec.tls {
        let bundle = &tls.ca_bundle;
        let (kind, name) = match (&bundle.config_map_name, &bundle.secret_name) {
            (Some(config_map), _) => (ReferenceKind::ConfigMap, config_map.clone()),
            (None, secret) => (ReferenceKind::Secret, secret.clone().unwrap_or_default()),
        };
        out.push(Reference {
            field: ReferenceField::CaBundle,
            kind,
            name,
            keys: vec![bundle.key.clone()],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::desired::test_support::model;
    use securechat_crds::v1alpha1::OnUnavailable;
    use serde_json::json;

    fn spec(shared_state: serde_json::Value) -> SharedStateSpec {
        model("chat", json!({ "sharedState": shared_state }))
            .spec
            .shared_state
            .expect("sharedState")
    }

    fn full() -> SharedStateSpec {
        spec(json!({
            "address": "valkey.infra.svc:6380",
            "network": {"toNamespaces": {"matchLabels": {"kubernetes.io/metadata.name": "infra"}}},
            "tls": {"caBundle": {"configMapName": "valkey-ca", "key": "bundle.pem"}, "serverName": "valkey"},
            "credentials": {"secretName": "valkey-acl", "usernameKey": "user", "passwordKey": "pass"},
            "onUnavailable": "LocalFallback",
            "timeout": "80ms"
        }))
    }

    #[test]
    fn the_config_names_the_mounted_files_and_defaults_the_key_prefix() {
        let config = config(Some(&full()), "team", "chat", 3).expect("config");
        assert_eq!(config.address, "valkey.infra.svc:6380");
        assert_eq!(config.key_prefix, "team/chat/");
        assert_eq!(config.replicas, 3);
        assert_eq!(config.on_unavailable, OnUnavailable::LocalFallback);
        assert_eq!(config.timeout.to_string(), "80ms");
        assert_eq!(
            config.username_file,
            Some(PathBuf::from(
                "/etc/securechat/shared-state/credentials/username"
            ))
        );
        assert_eq!(
            config.password_file,
            Some(PathBuf::from(
                "/etc/securechat/shared-state/credentials/password"
            ))
        );
        let tls = config.tls.expect("tls");
        assert_eq!(
            tls.ca_file,
            PathBuf::from("/etc/securechat/shared-state/ca/ca.crt")
        );
        assert_eq!(tls.server_name.as_deref(), Some("valkey"));
        assert_eq!(super::config(None, "team", "chat", 3), None);
    }

    #[test]
    fn without_credentials_or_tls_no_files_are_named_or_mounted() {
        let bare = spec(
            json!({"address": "10.0.5.7:6379", "network": {"to": ["10.0.5.7/32"]},
            "keyPrefix": "chat:"}),
        );
        let config = config(Some(&bare), "team", "chat", 1).expect("config");
        assert_eq!(
            (config.username_file, config.password_file, config.tls),
            (None, None, None)
        );
        assert_eq!(config.key_prefix, "chat:");
        assert!(volumes(Some(&bare)).is_empty());
        assert!(references(Some(&bare)).is_empty());
    }

    #[test]
    fn only_the_named_keys_are_mounted_read_only_where_the_config_says() {
        let spec = full();
        let config = config(Some(&spec), "team", "chat", 2).expect("config");
        let mounted = volumes(Some(&spec));
        assert_eq!(mounted.len(), 2);
        // Every file the config names is an item of a mounted volume.
        let files: Vec<PathBuf> = mounted
            .iter()
            .flat_map(|(volume, mount)| {
                assert_eq!(mount.read_only, Some(true));
                assert_eq!(mount.name, volume.name);
                let items = match (&volume.secret, &volume.config_map) {
                    (Some(secret), None) => secret.items.clone(),
                    (None, Some(map)) => map.items.clone(),
                    other => panic!("unexpected volume source {other:?}"),
                };
                items
                    .expect("only the named keys")
                    .into_iter()
                    .map(|i| Path::new(&mount.mount_path).join(i.path))
                    .collect::<Vec<_>>()
            })
            .collect();
        for named in [
            config.username_file.expect("username"),
            config.password_file.expect("password"),
            config.tls.expect("tls").ca_file,
        ] {
            assert!(files.contains(&named), "{named:?} not in {files:?}");
        }
        let credentials = mounted[0].0.secret.clone().expect("a Secret volume");
        assert_eq!(credentials.secret_name.as_deref(), Some("valkey-acl"));
        let keys: Vec<_> = credentials
            .items
            .expect("items")
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(keys, ["user", "pass"]);
        let ca = mounted[1].0.config_map.clone().expect("a ConfigMap volume");
        assert_eq!(ca.name, "valkey-ca");
    }

    #[test]
    fn a_ca_bundle_in_a_secret_is_a_secret_volume_and_reference() {
        let spec = spec(
            json!({"address": "redis.example:6379", "network": {"to": ["192.0.2.0/24"]},
            "tls": {"caBundle": {"secretName": "redis-ca"}},
            "credentials": {"secretName": "redis-auth"}}),
        );
        let mounted = volumes(Some(&spec));
        let ca = mounted[1].0.secret.clone().expect("a Secret volume");
        assert_eq!(ca.secret_name.as_deref(), Some("redis-ca"));
        assert_eq!(ca.items.expect("items")[0].key, "ca.crt");
        let credentials = mounted[0].0.secret.clone().expect("a Secret volume");
        assert_eq!(credentials.items.expect("items").len(), 1);
        assert_eq!(
            references(Some(&spec)),
            [
                Reference {
                    field: ReferenceField::Credentials,
                    kind: ReferenceKind::Secret,
                    name: "redis-auth".into(),
                    keys: vec!["password".into()],
                },
                Reference {
                    field: ReferenceField::CaBundle,
                    kind: ReferenceKind::Secret,
                    name: "redis-ca".into(),
                    keys: vec!["ca.crt".into()],
                },
            ]
        );
    }
}
