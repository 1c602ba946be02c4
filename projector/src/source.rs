//! Secrets and ConfigMaps as payloads, with the kubelet's rules: every key
//! becomes a file of that name with the volume's mode; a ConfigMap's
//! `data` and `binaryData` are merged (the API server refuses a key in
//! both).

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::writer::{FileProjection, Payload};

/// The files of a Secret. `stringData` is write-only in the API and never
/// comes back from a read; it is honoured anyway (an object built in a
/// test may carry it), overriding `data` as the API server would.
pub fn secret_payload(secret: &Secret, mode: u32) -> Payload {
    let mut out = Payload::new();
    for (key, value) in secret.data.iter().flatten() {
        out.insert(
            key.clone(),
            FileProjection {
                data: value.0.clone(),
                mode,
            },
        );
    }
    for (key, value) in secret.string_data.iter().flatten() {
        out.insert(
            key.clone(),
            FileProjection {
                data: value.clone().into_bytes(),
                mode,
            },
        );
    }
    out
}

/// The files of a ConfigMap.
pub fn config_map_payload(config_map: &ConfigMap, mode: u32) -> Payload {
    let mut out = Payload::new();
    for (key, value) in config_map.data.iter().flatten() {
        out.insert(
            key.clone(),
            FileProjection {
                data: value.clone().into_bytes(),
                mode,
            },
        );
    }
    for (key, value) in config_map.binary_data.iter().flatten() {
        out.insert(
            key.clone(),
            FileProjection {
                data: value.0.clone(),
                mode,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    #[test]
    fn secret_keys_become_files_with_the_mode() {
        let secret = Secret {
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), ByteString(b"C".to_vec())),
                ("tls.key".to_string(), ByteString(b"K".to_vec())),
            ])),
            string_data: Some(BTreeMap::from([("tls.key".to_string(), "K2".to_string())])),
            ..Default::default()
        };
        let p = secret_payload(&secret, 0o400);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p["tls.crt"],
            FileProjection {
                data: b"C".to_vec(),
                mode: 0o400
            }
        );
        assert_eq!(p["tls.key"].data, b"K2", "stringData wins, as in the API");
        assert!(secret_payload(&Secret::default(), 0o644).is_empty());
    }

    #[test]
    fn config_map_text_and_binary_data_are_merged() {
        let cm = ConfigMap {
            data: Some(BTreeMap::from([(
                "config.yaml".to_string(),
                "a: 1\n".to_string(),
            )])),
            binary_data: Some(BTreeMap::from([(
                "logo.png".to_string(),
                ByteString(vec![0x89, b'P']),
            )])),
            ..Default::default()
        };
        let p = config_map_payload(&cm, 0o644);
        assert_eq!(p["config.yaml"].data, b"a: 1\n");
        assert_eq!(p["logo.png"].data, vec![0x89, b'P']);
    }
}
