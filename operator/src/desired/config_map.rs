//! The model's ConfigMap: the server's `config.yaml`, rendered from the spec
//! with the crate's own config types, and its checksum that rolls the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use securechat_crds::files::config::{
    FilePaths, GenerationDefaults, Limits, ModelConfig, OAuth2Client, ServerAuth, ServerConfig,
    ServerMtls, ServerTls, SsoClient, WebConfig,
};
use securechat_crds::files::names;
use securechat_crds::hex::hex;
use securechat_crds::v1alpha1::{
    AuthSpec, DEFAULT_MAX_TOKENS, ModelSpec, MtlsSpec, NetworkSpec, OidcIssuer,
    SecureChatModelSpec, TlsSpec, WebSsoProvider,
};
use sha2::{Digest, Sha256};

use super::deployment::{
    API_KEYS_DIR, CLIENT_CA_DIR, SIGNING_KEYS_DIR, TLS_DIR, oauth2_client_secret_file,
    sso_client_secret_file,
};
use super::{Input, shared_state};
use crate::labels::Names;
use crate::{Error, Result};

/// The server configuration the pods read, derived from the spec. The
/// policy sections are the spec's own types, copied as they are.
///
/// Every field of the spec, and of the sections copied field by field, is
/// named here with where it goes instead: adding a field to the spec
/// without deciding whether the server needs it does not compile.
pub fn server_config(input: &Input) -> ServerConfig {
    let SecureChatModelSpec {
        replicas: _,    // the Deployment; the store's share: max_replicas() below
        autoscaling: _, // the autoscaler; the store's share: max_replicas() below
        expose: _,      // the external Service, Ingresses, routes and their policy rules
        image: _,       // the Deployment
        model,
        resources: _,  // the Deployment
        scheduling: _, // the Deployment
        ports: _,      // the Deployment's arguments, the Service, the NetworkPolicy
        tls,
        signing_keys: _, // material: the keyset file the config points at
        auth,
        roles,
        rate_limit,
        cors,
        sensitive_data,
        network,
        audit,
        serving,
        shared_state,
        web,
    } = &input.model.spec;
    let ModelSpec {
        family,
        source: _, // the Deployment: the --model argument and its volume
        context_length,
        max_tokens,
        temperature,
        top_p,
        parameters: _, // the operator's GPU memory check (gpu_memory)
        dtype,
    } = model;
    let TlsSpec {
        mode: _,         // material and the Deployment's tls volume
        secret_name: _,  // idem
        validity: _,     // material
        renew_before: _, // material
        dns_names: _,    // material
        min_version,
        ca_validity: _, // material
        ca_overlap: _,  // material
    } = tls;
    let AuthSpec {
        issuer,
        audience,
        token_ttl,
        leeway,
        oidc,
        api_keys: _, // the ChatApiKey controller
        policy: _,   // crate::access_policy reads and compiles it: config_map_with_policy
        mtls,
    } = auth;
    let MtlsSpec {
        mode: mtls_mode,
        trust_bundle: _, // the Deployment's client-ca volume (files.clientCaBundle)
        allow,
        trust_domain: _, // the ChatApiKey controller (client certificates)
    } = mtls;
    let NetworkSpec {
        ingress: _, // the NetworkPolicy
        egress: _,  // the NetworkPolicy
        trusted_proxies,
        monitoring: _, // the NetworkPolicy
    } = network;
    let dir = |d: &str, f: &str| std::path::Path::new(d).join(f);
    ServerConfig {
        served_model_name: Some(input.name.clone()),
        model: ModelConfig {
            family: *family,
            // Admission keeps it positive; a value that is not cannot be a
            // window and is left to the model file's.
            context_length: context_length.and_then(|n| u32::try_from(n).ok()),
            dtype: *dtype,
        },
        files: FilePaths {
            tls_cert: dir(TLS_DIR, names::TLS_CERT),
            tls_key: dir(TLS_DIR, names::TLS_KEY),
            signing_keys: dir(SIGNING_KEYS_DIR, names::KEYSET),
            api_keys: dir(API_KEYS_DIR, names::API_KEYS),
            client_ca_bundle: dir(CLIENT_CA_DIR, names::CA_CERT),
        },
        tls: ServerTls {
            min_version: *min_version,
        },
        generation: GenerationDefaults {
            max_tokens: u32::try_from(*max_tokens).unwrap_or(DEFAULT_MAX_TOKENS),
            temperature: *temperature as f32,
            top_p: *top_p as f32,
        },
        auth: ServerAuth {
            issuer: issuer
                .clone()
                .unwrap_or_else(|| format!("https://{}", input.service_host())),
            audience: audience.clone().unwrap_or_else(|| input.name.clone()),
            token_ttl: *token_ttl,
            leeway: *leeway,
            // The server reads client secrets from files (web.sso below),
            // never by Secret name.
            oidc: oidc
                .iter()
                .map(|o| OidcIssuer {
                    client_secret_name: None,
                    ..o.clone()
                })
                .collect(),
            policy: None,
            mtls: ServerMtls {
                mode: *mtls_mode,
                allow: allow.clone(),
            },
        },
        roles: roles.clone(),
        rate_limit: rate_limit.clone(),
        cors: cors.clone(),
        sensitive_data: sensitive_data.clone(),
        audit: audit.clone(),
        limits: Limits {
            trusted_proxies: trusted_proxies.clone(),
            ..Default::default()
        },
        // An issuer with a clientId gets a "Sign in with SSO" button, as
        // the spec documents: a confidential client when it names a client
        // secret (mounted by the Deployment), else a public one (PKCE).
        web: WebConfig {
            sso: oidc
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
            // spec.web.sso: plain-OAuth2 providers, the Secret turned into
            // the file the Deployment mounts (never a Secret name).
            oauth2: web
                .sso
                .iter()
                .map(|p| OAuth2Client {
                    client_secret_file: p
                        .client_secret_name
                        .as_ref()
                        .map(|_| oauth2_client_secret_file(&p.name)),
                    provider: WebSsoProvider {
                        client_secret_name: None,
                        ..p.clone()
                    },
                })
                .collect(),
            ..Default::default()
        },
        serving: serving.clone(),
        shared_state: shared_state::config(
            shared_state.as_ref(),
            &input.namespace,
            &input.name,
            // Under autoscaling the most pods there can be: each replica's
            // LocalFallback share of a limit then never adds up to more
            // than the limit, whatever the autoscaler does meanwhile.
            input.model.spec.max_replicas(),
        ),
        outbound: Default::default(),
    }
}

/// The ConfigMap holding `config.yaml`, and the checksum of its content
/// (the Deployment's pod-template annotation, so a config change rolls the
/// pods), with `spec.auth.policy`'s inline module if it has one.
pub fn config_map(input: &Input) -> Result<(ConfigMap, String)> {
    let inline = input
        .model
        .spec
        .auth
        .policy
        .as_ref()
        .and_then(|p| p.rego.clone());
    config_map_with_policy(input, inline)
}

/// The same with `policy` (the module `crate::access_policy` read and
/// compiled) as `auth.policy`.
pub fn config_map_with_policy(
    input: &Input,
    policy: Option<String>,
) -> Result<(ConfigMap, String)> {
    let mut config = server_config(input);
    config.auth.policy = policy;
    let render = |config: &ServerConfig| {
        serde_yaml::to_string(config).map_err(|e| Error::Render {
            what: "server config",
            message: e.to_string(),
        })
    };
    let yaml = render(&config)?;
    // Scaling must not roll the pods: the replica count the shared store's
    // fallback divides by is left out of the checksum, and reaches running
    // pods in place (the server re-reads config.yaml when the kubelet
    // updates it).
    let mut rolled = config;
    if let Some(shared_state) = &mut rolled.shared_state {
        shared_state.replicas = 0;
    }
    // Nor a policy change: the server hot-reloads it (and keeps its last
    // good one should a bad one arrive).
    rolled.auth.policy = None;
    let checksum = hex(&Sha256::digest(render(&rolled)?.as_bytes()));
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
    use securechat_crds::v1alpha1::{ModelDtype, ModelFamily};
    use serde_json::json;

    fn render(spec: serde_json::Value) -> (ConfigMap, String) {
        let m = model("chat", spec);
        config_map(&Input::new(&m, "img").expect("input")).expect("renders")
    }

    #[test]
    fn mtls_reaches_the_server_with_the_mounted_bundle() {
        let (map, _) = render(json!({"auth": {"mtls": {"mode": "Required", "allow": [
            {"spiffeID": "spiffe://cluster.local/ns/apps/*", "tier": "Developer"}
        ]}}}));
        let parsed = ServerConfig::from_yaml(&map.data.expect("data")[names::CONFIG]).unwrap();
        parsed.validate().expect("the server accepts it");
        assert_eq!(
            parsed.auth.mtls.mode,
            securechat_crds::v1alpha1::MtlsMode::Required
        );
        assert_eq!(
            parsed.auth.mtls.allow[0].spiffe_id,
            "spiffe://cluster.local/ns/apps/*"
        );
        assert_eq!(
            parsed.files.client_ca_bundle,
            std::path::Path::new(CLIENT_CA_DIR).join(names::CA_CERT)
        );
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
    fn a_wecom_provider_is_rendered_with_its_secret_as_a_mounted_file() {
        let (map, _) = render(json!({"web": {"sso": [{
            "name": "wecom", "kind": "WeCom", "clientId": "ww1234",
            "clientSecretName": "wecom-app",
            "wecom": {"agentId": "1000002", "departmentTiers": [{"id": 2, "tier": "Developer"}]}
        }]}}));
        let parsed = ServerConfig::from_yaml(&map.data.unwrap()[names::CONFIG]).unwrap();
        parsed.validate().expect("the rendered config is valid");
        let client = &parsed.web.oauth2[0];
        assert_eq!(client.provider.client_secret_name, None);
        assert_eq!(
            client.client_secret_file.as_ref(),
            Some(&oauth2_client_secret_file("wecom"))
        );
        let wecom = client.provider.wecom.as_ref().unwrap();
        assert_eq!(wecom.api_base(), "https://qyapi.weixin.qq.com");
        assert_eq!(
            wecom.authorize(),
            "https://login.work.weixin.qq.com/wwlogin/sso/login"
        );
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

        // With a shared store the replica count is in the config (the
        // fallback divides by it), and still scaling does not roll.
        let store = |replicas: i32, timeout: &str| {
            render(json!({"replicas": replicas, "sharedState": {
                "address": "valkey:6379", "network": {"to": ["10.0.5.0/24"]}, "timeout": timeout}}))
        };
        let (two_map, two) = store(2, "50ms");
        let (three_map, three) = store(3, "50ms");
        assert_ne!(two_map.data, three_map.data, "the count is written");
        assert_eq!(two, three, "scaling must not roll the pods");
        assert_ne!(two, store(2, "80ms").1, "a store setting rolls them");
    }

    #[test]
    fn serving_context_length_and_shared_state_reach_the_server() {
        let (map, _) = render(json!({
            "replicas": 2,
            "model": {"contextLength": 4096, "dtype": "F16"},
            "serving": {"maxConcurrentSequences": 8, "kvCacheTokens": 32768, "maxQueue": 5,
                        "prefixCache": false, "prefillChunkTokens": 128,
                        "tierWeights": {"admin": 9, "developer": 3, "readOnly": 1}},
            "network": {"trustedProxies": ["10.0.0.0/8"]},
            "sharedState": {"address": "valkey.infra.svc:6379",
                            "network": {"toNamespaces": {"matchLabels": {"team": "infra"}}},
                            "credentials": {"secretName": "valkey-acl"},
                            "onUnavailable": "LocalFallback"}
        }));
        let parsed = ServerConfig::from_yaml(&map.data.expect("data")[names::CONFIG])
            .expect("server parses it");
        parsed.validate().expect("and accepts it");
        assert_eq!(parsed.model.context_length, Some(4096));
        assert_eq!(parsed.model.dtype, Some(ModelDtype::F16));
        let serving = &parsed.serving;
        assert_eq!(
            (
                serving.max_concurrent_sequences,
                serving.kv_cache_tokens,
                serving.max_queue,
                serving.prefix_cache,
                serving.prefill_chunk_tokens,
                serving.tier_weights.admin
            ),
            (8, Some(32768), 5, false, 128, 9)
        );
        assert_eq!(parsed.limits.trusted_proxies.len(), 1);
        let store = parsed.shared_state.expect("sharedState");
        assert_eq!(store.address, "valkey.infra.svc:6379");
        assert_eq!(store.key_prefix, "team/chat/");
        assert_eq!(store.replicas, 2);
        assert_eq!(
            store.password_file.as_deref(),
            Some(std::path::Path::new(
                "/etc/securechat/shared-state/credentials/password"
            ))
        );
        assert_eq!(store.username_file, None);

        let (map, _) = render(json!({}));
        let yaml = &map.data.expect("data")[names::CONFIG];
        assert!(!yaml.contains("sharedState"), "{yaml}");
    }
}
