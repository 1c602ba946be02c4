//! The model's ConfigMap: the server's `config.yaml`, rendered from the spec
//! with the crate's own config types, and its checksum that rolls the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use securechat_crds::files::config::{
    FilePaths, GenerationDefaults, Limits, ModelConfig, ServerAuth, ServerConfig, ServerTls,
    SsoClient, WebConfig,
};
use securechat_crds::files::names;
use securechat_crds::hex::hex;
use securechat_crds::v1alpha1::OidcIssuer;
use sha2::{Digest, Sha256};

use super::Input;
use super::deployment::{API_KEYS_DIR, SIGNING_KEYS_DIR, TLS_DIR, sso_client_secret_file};
use crate::labels::Names;
use crate::{Error, Result};

/// The server configuration the pods read, derived from the spec. The
/// policy sections are the spec's own types, copied as they are.
pub fn server_config(input: &Input) -> ServerConfig {
    let spec = &input.model.spec;
    let dir = |d: &str, f: &str| std::path::Path::new(d).join(f);
    ServerConfig {
        served_model_name: Some(input.name.clone()),
        model: ModelConfig {
            family: spec.model.family,
            context_length: spec
                .model
                .context_length
                .and_then(|n| u32::try_from(n).ok()),
        },
        files: FilePaths {
            tls_cert: dir(TLS_DIR, names::TLS_CERT),
            tls_key: dir(TLS_DIR, names::TLS_KEY),
            signing_keys: dir(SIGNING_KEYS_DIR, names::KEYSET),
            api_keys: dir(API_KEYS_DIR, names::API_KEYS),
        },
        tls: ServerTls {
            min_version: spec.tls.min_version,
        },
        generation: GenerationDefaults {
            max_tokens: u32::try_from(spec.model.max_tokens).unwrap_or(2048),
            temperature: spec.model.temperature as f32,
            top_p: spec.model.top_p as f32,
        },
        auth: ServerAuth {
            issuer: spec
                .auth
                .issuer
                .clone()
                .unwrap_or_else(|| format!("https://{}", input.service_host())),
            audience: spec
                .auth
                .audience
                .clone()
                .unwrap_or_else(|| input.name.clone()),
            token_ttl: spec.auth.token_ttl,
            leeway: spec.auth.leeway,
            // The server reads client secrets from files (web.sso below),
            // never by Secret name.
            oidc: spec
                .auth
                .oidc
                .iter()
                .map(|o| OidcIssuer {
                    client_secret_name: None,
                    ..o.clone()
                })
                .collect(),
        },
        roles: spec.roles.clone(),
        rate_limit: spec.rate_limit.clone(),
        cors: spec.cors.clone(),
        sensitive_data: spec.sensitive_data.clone(),
        audit: spec.audit.clone(),
        limits: Limits {
            trusted_proxies: spec.network.trusted_proxies.clone(),
            ..Default::default()
        },
        // An issuer with a clientId gets a "Sign in with SSO" button, as
        // the spec documents: a confidential client when it names a client
        // secret (mounted by the Deployment), else a public one (PKCE).
        web: WebConfig {
            sso: spec
                .auth
                .oidc
                .iter()
                .enumerate()
                .filter(|(_, o)| o.client_id.is_some())
                .map(|(index, o)| SsoClient {
                    client_secret_file: o
                        .client_secret_name
                        .as_ref()
                        .map(|_| sso_client_secret_file(index)),
                    ..SsoClient::for_issuer(&o.issuer_url)
                })
                .collect(),
            ..Default::default()
        },
        serving: spec.serving.clone(),
        // Rendered with its mounts by the shared-state change (4/9).
        shared_state: None,
    }
}

/// The ConfigMap holding `config.yaml`, and the checksum of its content
/// (the Deployment's pod-template annotation, so a config change rolls the
/// pods).
pub fn config_map(input: &Input) -> Result<(ConfigMap, String)> {
    let config = server_config(input);
    let yaml = serde_yaml::to_string(&config).map_err(|e| Error::Render {
        what: "server config",
        message: e.to_string(),
    })?;
    let checksum = hex(&Sha256::digest(yaml.as_bytes()));
    let map = ConfigMap {
        metadata: input.metadata(Names::config_map(&input.name)),
        data: Some(BTreeMap::from([(names::CONFIG.to_string(), yaml)])),
        ..Default::default()
    };
    Ok((map, checksum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;
    use securechat_crds::v1alpha1::ModelFamily;
    use serde_json::json;

    fn render(spec: serde_json::Value) -> (ConfigMap, String) {
        let m = model("chat", spec);
        config_map(&Input::new(&m, "img").expect("input")).expect("renders")
    }

    #[test]
    fn the_server_reads_back_what_the_operator_writes() {
        let (map, _) = render(
            json!({"rateLimit": {"requestsPerMinute": 30}, "cors": {"allowedOrigins": ["https://chat.example.com"]}}),
        );
        let yaml = &map.data.expect("data")[names::CONFIG];
        let parsed = ServerConfig::from_yaml(yaml).expect("server parses it");
        parsed.validate().expect("and accepts it");
        assert_eq!(parsed.rate_limit.requests_per_minute, 30);
        assert_eq!(parsed.cors.allowed_origins.len(), 1);
        assert_eq!(parsed.auth.issuer, "https://chat.team.svc");
        assert_eq!(parsed.auth.audience, "chat");
        assert_eq!(parsed.served_model_name.as_deref(), Some("chat"));
        assert_eq!(
            parsed.files.signing_keys,
            std::path::Path::new("/etc/securechat/signing-keys/keyset.json")
        );
    }

    #[test]
    fn the_declared_model_family_reaches_the_server_and_unset_means_detect() {
        let (map, _) = render(json!({"model": {"family": "ChatGLM3",
            "source": {"volume": {"claimName": "weights", "path": "chatglm3-6b"}}}}));
        let parsed = ServerConfig::from_yaml(&map.data.expect("data")[names::CONFIG])
            .expect("server parses it");
        assert_eq!(parsed.model.family, Some(ModelFamily::ChatGLM3));
        let (map, _) = render(json!({}));
        let parsed = ServerConfig::from_yaml(&map.data.expect("data")[names::CONFIG])
            .expect("server parses it");
        assert_eq!(parsed.model.family, None);
    }

    #[test]
    fn an_oidc_issuer_with_a_client_id_gets_an_sso_button() {
        let (map, _) = render(json!({"auth": {"oidc": [
            {"issuerURL": "https://idp.example", "audience": "chat", "clientId": "chat-web"},
            {"issuerURL": "https://api-only.example", "audience": "chat"}
        ]}}));
        let parsed = ServerConfig::from_yaml(&map.data.expect("data")[names::CONFIG])
            .expect("server parses it");
        parsed.validate().expect("and accepts it");
        assert_eq!(parsed.web.sso.len(), 1);
        assert_eq!(parsed.web.sso[0].issuer_url, "https://idp.example");
        assert_eq!(parsed.sso_client_id(&parsed.web.sso[0]), Some("chat-web"));
    }

    #[test]
    fn an_sso_client_secret_is_a_mounted_file_never_a_secret_name() {
        let m = model(
            "chat",
            json!({"auth": {"oidc": [
                {"issuerURL": "https://public.example", "audience": "chat", "clientId": "pub"},
                {"issuerURL": "https://idp.example", "audience": "chat", "clientId": "chat-web",
                 "clientSecretName": "idp-client"}
            ]}}),
        );
        let input = Input::new(&m, "img").expect("input");
        let (map, _) = config_map(&input).expect("renders");
        let yaml = &map.data.expect("data")[names::CONFIG];
        assert!(!yaml.contains("idp-client"), "{yaml}");
        let parsed = ServerConfig::from_yaml(yaml).expect("server parses it");
        parsed.validate().expect("and accepts it");
        assert_eq!(parsed.web.sso[0].client_secret_file, None);
        let file = sso_client_secret_file(1);
        assert_eq!(parsed.web.sso[1].client_secret_file.as_ref(), Some(&file));

        // The Deployment mounts exactly that key of that Secret there.
        let deployment = crate::desired::deployment::deployment(&input, "checksum");
        let pod = deployment.spec.template.spec.expect("pod spec");
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| {
                v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("idp-client")
            })
            .expect("a volume of the client secret");
        let items = volume.secret.unwrap().items.unwrap();
        assert_eq!(items[0].key, "client-secret");
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == volume.name)
            .expect("mounted")
            .clone();
        assert_eq!(
            std::path::Path::new(&mount.mount_path).join(&items[0].path),
            file
        );
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn checksum_follows_config_changes_only() {
        let (_, a) = render(json!({"replicas": 1}));
        let (_, b) = render(json!({"replicas": 3}));
        let (_, c) = render(json!({"rateLimit": {"requestsPerMinute": 11}}));
        assert_eq!(a, b, "scaling must not roll the pods");
        assert_ne!(a, c, "a config change must roll the pods");
    }
}
