//! The model's Deployment: hardened, GPU-aware pods of the server, each
//! file it reads on its own mount so rotations reach it without a restart.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, SleepAction,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use securechat_crds::default_model;
use securechat_crds::files::names::{self, NODE_NAME_ENV, POD_NAME_ENV};
use securechat_crds::v1alpha1::{ComputeResources, MtlsMode, TlsMode};

use super::Input;
use crate::labels::{self, Names};

/// Where the server reads its files; each is a separate mount so a Secret
/// update (rotation) reaches the pod in place, with no restart.
pub const CONFIG_DIR: &str = "/etc/securechat/config";
pub const TLS_DIR: &str = "/etc/securechat/tls";
pub const SIGNING_KEYS_DIR: &str = "/etc/securechat/signing-keys";
pub const API_KEYS_DIR: &str = "/etc/securechat/api-keys";
/// The client-certificate trust bundle (`auth.mtls`), when mTLS is on.
pub const CLIENT_CA_DIR: &str = "/etc/securechat/client-ca";
const MODELS_DIR: &str = "/models";
/// Non-root uid/gid of the server image (distroless "nonroot").
pub const RUN_AS: i64 = 65532;
/// Pod template annotation that changes when the server config changes, so
/// config changes roll the pods while secret rotations (hot-reloaded) do not.
pub const CONFIG_CHECKSUM_ANNOTATION: &str = "securechat.dev/config-checksum";
/// How long a deleted pod keeps serving before SIGTERM: long enough for
/// the endpoint change to reach every node's kube-proxy (a killed pod's
/// endpoint lingered 1.5-3 s on the real node of tests/node/chaos.rs: 14-29
/// refused connections at 20 requests/s, half of them sent its way), well
/// inside the default 30 s termination grace period that also covers the
/// drain.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;
pub const GPU_TAINT_KEY: &str = "nvidia.com/gpu";
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// The hardened, GPU-aware Deployment of the server.
pub fn deployment(input: &Input, config_checksum: &str) -> Deployment {
    let spec = &input.model.spec;
    let mut annotations = BTreeMap::new();
    annotations.insert(
        CONFIG_CHECKSUM_ANNOTATION.to_string(),
        config_checksum.to_string(),
    );

    let (volumes, mounts, model_path) = volumes(input);
    let container = Container {
        name: crate::health::SERVER_CONTAINER.into(),
        image: Some(input.server_image()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(server_args(input, model_path)),
        ports: Some(vec![
            ContainerPort {
                name: Some("api".into()),
                container_port: spec.ports.api,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("web".into()),
                container_port: spec.ports.web,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        // The server's audit lines name the pod and node they come from.
        env: Some(server_env(input)),
        // A server that exits on a fatal error (no GPU, a bad model) has
        // said why as its last log line: the kubelet keeps it as the
        // termination message, where the operator reads it.
        termination_message_policy: Some(FALLBACK_TO_LOGS_ON_ERROR.into()),
        resources: Some(resources(input)),
        volume_mounts: Some(mounts),
        readiness_probe: Some(https_probe(input, "/readyz", 5, 3)),
        liveness_probe: Some(https_probe(input, "/healthz", 10, 6)),
        // Loading a model can take a while; liveness waits for it.
        startup_probe: Some(Probe {
            failure_threshold: Some(60),
            ..https_probe(input, "/healthz", 5, 60)
        }),
        security_context: Some(hardened()),
        // A deleted pod keeps serving while the Service forgets it: the
        // kubelet sleeps before SIGTERM (the image has no shell, hence the
        // sleep action), so connections kube-proxy still routes here in
        // that time are answered instead of refused.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let init_containers = model_fetcher(input).map(|fetcher| vec![fetcher]);

    let scheduling = &spec.scheduling;
    let mut node_selector = scheduling.node_selector.clone();
    let mut tolerations = scheduling.tolerations.clone();
    if spec.resources.gpu.count > 0 {
        if let Some(product) = &spec.resources.gpu.product {
            node_selector.insert(GPU_PRODUCT_LABEL.into(), product.clone());
        }
        let gpu_toleration = Toleration {
            key: Some(GPU_TAINT_KEY.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        if !tolerations.contains(&gpu_toleration) {
            tolerations.push(gpu_toleration);
        }
    }

    let pod = PodSpec {
        service_account_name: Some(Names::service_account(&input.name)),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        init_containers,
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: (!node_selector.is_empty()).then_some(node_selector),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        affinity: scheduling.affinity.clone(),
        runtime_class_name: scheduling.runtime_class_name.clone(),
        priority_class_name: scheduling.priority_class_name.clone(),
        topology_spread_constraints: (!scheduling.topology_spread_constraints.is_empty())
            .then(|| scheduling.topology_spread_constraints.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    Deployment {
        metadata: input.metadata(Names::deployment(&input.name)),
        spec: DeploymentSpec {
            // Under autoscaling the autoscaler owns the count: leaving the
            // field out of the apply gives it up, so the two never fight.
            replicas: spec.fixed_replicas(),
            selector: LabelSelector {
                match_labels: Some(labels::selector(&input.name)),
                ..Default::default()
            },
            // GPUs are scarce: replace one pod at a time rather than asking
            // for an extra GPU during a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(if spec.resources.gpu.count > 0 {
                        0
                    } else {
                        1
                    })),
                    max_unavailable: Some(IntOrString::Int(if spec.resources.gpu.count > 0 {
                        1
                    } else {
                        0
                    })),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels::common(&input.name)),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The kubelet's termination message policy that falls back to the log's
/// tail when the container wrote no termination-log file and failed.
const FALLBACK_TO_LOGS_ON_ERROR: &str = "FallbackToLogsOnError";
/// What the NVIDIA container toolkit mounts into a GPU container: the CUDA
/// driver library (compute) and nvidia-smi (utility), nothing for graphics
/// or video. `NVIDIA_VISIBLE_DEVICES` is left to the device plugin, which
/// sets it to the GPUs it allocated: a pod that set it itself could reach
/// GPUs it was not given (on nodes whose plugin uses the envvar strategy).
pub const NVIDIA_DRIVER_CAPABILITIES: (&str, &str) =
    ("NVIDIA_DRIVER_CAPABILITIES", "compute,utility");

/// The server's arguments: its config, model and ports; on GPU pods
/// `--device cuda`, so a pod whose GPU is not visible exits with an error
/// (GpuUnavailable) instead of running on its CPU.
fn server_args(input: &Input, model_path: String) -> Vec<String> {
    let spec = &input.model.spec;
    let mut args = vec![
        "serve".into(),
        "--config".into(),
        format!("{CONFIG_DIR}/config.yaml"),
        "--model".into(),
        model_path,
        "--api-addr".into(),
        format!("0.0.0.0:{}", spec.ports.api),
        "--web-addr".into(),
        format!("0.0.0.0:{}", spec.ports.web),
    ];
    if spec.resources.gpu.count > 0 {
        args.extend(["--device".into(), "cuda".into()]);
    }
    args
}

fn server_env(input: &Input) -> Vec<EnvVar> {
    let mut env = vec![
        downward(POD_NAME_ENV, "metadata.name"),
        downward(NODE_NAME_ENV, "spec.nodeName"),
    ];
    if input.model.spec.resources.gpu.count > 0 {
        let (name, value) = NVIDIA_DRIVER_CAPABILITIES;
        env.push(EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        });
    }
    env
}

/// Non-root, read-only root filesystem, no privileges, no capabilities,
/// the runtime's seccomp profile: every container of the pod.
fn hardened() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An environment variable holding a field of the pod (downward API).
fn downward(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where the Hugging Face token Secret is mounted in the init container.
const HF_TOKEN_DIR: &str = "/var/run/securechat/hf-token";

/// For a `huggingFace` source: the init container that downloads the model
/// into the pod's `model` emptyDir (`securechat-server fetch`, same image),
/// so the serving container never talks to the hub.
fn model_fetcher(input: &Input) -> Option<Container> {
    let spec = &input.model.spec;
    let hf = spec.model.source.hugging_face.as_ref()?;
    let mut args = vec![
        "fetch".to_string(),
        "--repo".into(),
        hf.repo.clone(),
        "--revision".into(),
        hf.revision.clone(),
        "--dest".into(),
        MODELS_DIR.into(),
    ];
    if let Some(file) = &hf.file {
        args.extend(["--file".into(), file.clone()]);
    }
    let mut mounts = vec![
        VolumeMount {
            name: "model".into(),
            mount_path: MODELS_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    if hf.token_secret_name.is_some() {
        args.extend(["--token-file".into(), format!("{HF_TOKEN_DIR}/token")]);
        mounts.push(VolumeMount {
            name: "hf-token".into(),
            mount_path: HF_TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Some(Container {
        name: "fetch-model".into(),
        image: Some(input.server_image()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        volume_mounts: Some(mounts),
        security_context: Some(hardened()),
        ..Default::default()
    })
}

/// A kubelet HTTPS probe. The kubelet has no client certificate, so when
/// the API port requires one (`auth.mtls.mode: Required`) it probes the
/// web port, which never asks for one and serves the same health
/// endpoints.
fn https_probe(input: &Input, path: &str, period: i32, failures: i32) -> Probe {
    let port = match input.model.spec.auth.mtls.mode {
        MtlsMode::Required => "web",
        MtlsMode::Disabled | MtlsMode::Optional => "api",
    };
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            scheme: Some("HTTPS".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn resources(input: &Input) -> ResourceRequirements {
    let spec = &input.model.spec.resources;
    let mut requests = quantities(spec.requests.as_ref());
    let mut limits = quantities(spec.limits.as_ref());
    if spec.gpu.count > 0 {
        // Extended resources must have requests == limits.
        let gpus = Quantity(spec.gpu.count.to_string());
        requests.insert(spec.gpu.resource_name.clone(), gpus.clone());
        limits.insert(spec.gpu.resource_name.clone(), gpus);
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

fn quantities(resources: Option<&ComputeResources>) -> BTreeMap<String, Quantity> {
    let mut map = BTreeMap::new();
    if let Some(r) = resources {
        if let Some(cpu) = &r.cpu {
            map.insert("cpu".to_string(), cpu.clone());
        }
        if let Some(memory) = &r.memory {
            map.insert("memory".to_string(), memory.clone());
        }
    }
    map
}

/// Where the client secret of the `index`th `auth.oidc` entry is mounted
/// (its Secret's key `client-secret`), as the server config names it.
pub fn sso_client_secret_file(index: usize) -> std::path::PathBuf {
    std::path::Path::new(&sso_client_secret_dir(index)).join(SSO_CLIENT_SECRET_KEY)
}
/// The mount point of that Secret.
fn sso_client_secret_dir(index: usize) -> String {
    format!("/etc/securechat/sso/{index}")
}
const SSO_CLIENT_SECRET_KEY: &str = "client-secret";

/// Where the client secret of the `spec.web.sso` provider `name` is
/// mounted (its Secret's key `client-secret`), as the server config names
/// it.
pub fn oauth2_client_secret_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(&oauth2_client_secret_dir(name)).join(SSO_CLIENT_SECRET_KEY)
}
/// The mount point of that Secret.
fn oauth2_client_secret_dir(name: &str) -> String {
    format!("/etc/securechat/oauth2/{name}")
}

/// Volumes, their mounts, and the model path the server is told to load.
fn volumes(input: &Input) -> (Vec<Volume>, Vec<VolumeMount>, String) {
    let spec = &input.model.spec;
    let secret = |volume: &str, secret_name: String| Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tls_secret = match spec.tls.mode {
        TlsMode::ExistingSecret => spec
            .tls
            .secret_name
            .clone()
            .unwrap_or_else(|| Names::tls_secret(&input.name)),
        TlsMode::Generated => Names::tls_secret(&input.name),
    };
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: Names::config_map(&input.name),
                ..Default::default()
            }),
            ..Default::default()
        },
        secret("tls", tls_secret),
        secret("signing-keys", Names::signing_keys(&input.name)),
        secret("api-keys", Names::api_keys(&input.name)),
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("64Mi".into())),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    };
    let mut mounts = vec![
        mount("config", CONFIG_DIR),
        mount("tls", TLS_DIR),
        mount("signing-keys", SIGNING_KEYS_DIR),
        mount("api-keys", API_KEYS_DIR),
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    // The client-certificate trust bundle: the model's CA bundle (every CA
    // it trusts, the next and previous during a CA rotation), or the
    // ConfigMap the spec names (a SPIRE or cert-manager bundle). A
    // ConfigMap volume follows the ConfigMap's changes; the server
    // reloads it.
    let mtls = &spec.auth.mtls;
    if mtls.mode != MtlsMode::Disabled {
        let (name, key) = match &mtls.trust_bundle {
            Some(bundle) => (bundle.config_map_name.clone(), bundle.key.clone()),
            None => (Names::ca_bundle(&input.name), names::CA_CERT.to_string()),
        };
        volumes.push(Volume {
            name: "client-ca".into(),
            config_map: Some(ConfigMapVolumeSource {
                name,
                items: Some(vec![KeyToPath {
                    key,
                    path: names::CA_CERT.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount("client-ca", CLIENT_CA_DIR));
    }
    // The web UI's SSO client secrets, one volume per issuer that has one.
    for (index, issuer) in spec.auth.oidc.iter().enumerate() {
        let Some(secret_name) = &issuer.client_secret_name else {
            continue;
        };
        let name = format!("sso-client-secret-{index}");
        volumes.push(Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name.clone()),
                default_mode: Some(0o440),
                items: Some(vec![KeyToPath {
                    key: SSO_CLIENT_SECRET_KEY.into(),
                    path: SSO_CLIENT_SECRET_KEY.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(&name, &sso_client_secret_dir(index)));
    }
    // The plain-OAuth2 providers' client secrets (spec.web.sso), one
    // volume each; names are DNS labels and unique (CEL), so are these.
    for provider in &spec.web.sso {
        let Some(secret_name) = &provider.client_secret_name else {
            continue;
        };
        let name = format!("oauth2-client-secret-{}", provider.name);
        volumes.push(Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name.clone()),
                default_mode: Some(0o440),
                items: Some(vec![KeyToPath {
                    key: SSO_CLIENT_SECRET_KEY.into(),
                    path: SSO_CLIENT_SECRET_KEY.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(mount(&name, &oauth2_client_secret_dir(&provider.name)));
    }
    // The shared store's credentials and CA bundle, where the config says.
    for (volume, volume_mount) in super::shared_state::volumes(spec.shared_state.as_ref()) {
        volumes.push(volume);
        mounts.push(volume_mount);
    }
    let source = &spec.model.source;
    let model_path = if let Some(volume) = &source.volume {
        volumes.push(Volume {
            name: "model".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: volume.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
        mounts.push(mount("model", MODELS_DIR));
        format!("{MODELS_DIR}/{}", volume.path.trim_start_matches('/'))
    } else if let Some(hf) = &source.hugging_face {
        // Filled by the fetch-model init container; read-only here.
        volumes.push(Volume {
            name: "model".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        mounts.push(mount("model", MODELS_DIR));
        if let Some(token_secret) = &hf.token_secret_name {
            volumes.push(Volume {
                name: "hf-token".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(token_secret.clone()),
                    default_mode: Some(0o440),
                    items: Some(vec![KeyToPath {
                        key: "token".into(),
                        path: "token".into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        match &hf.file {
            Some(file) => format!("{MODELS_DIR}/{file}"),
            None => MODELS_DIR.to_string(),
        }
    } else {
        default_model::EMBEDDED_PATH.to_string()
    };
    (volumes, mounts, model_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;
    use serde_json::json;

    fn build(spec: serde_json::Value) -> Deployment {
        let m = model("chat", spec);
        deployment(
            &Input::new(&m, "securechat/server:0.1.0").expect("input"),
            "abc",
        )
    }

    fn pod(d: &Deployment) -> PodSpec {
        d.spec.clone().template.spec.expect("pod spec")
    }

    /// `auth.mtls`: the trust bundle is mounted where the config says (the
    /// model's CA bundle by default, else the named ConfigMap's key), and
    /// with Required the kubelet, which has no client certificate, probes
    /// the web port.
    #[test]
    fn mtls_mounts_the_trust_bundle_and_moves_probes_off_a_required_port() {
        let client_ca = |d: &Deployment| {
            let pod = pod(d);
            let volume = pod
                .volumes
                .expect("volumes")
                .into_iter()
                .find(|v| v.name == "client-ca")?;
            let mounted = pod.containers[0]
                .volume_mounts
                .as_ref()
                .expect("mounts")
                .iter()
                .any(|m| m.name == "client-ca" && m.mount_path == CLIENT_CA_DIR);
            assert!(mounted, "the bundle volume is mounted at {CLIENT_CA_DIR}");
            let source = volume.config_map.expect("a ConfigMap volume");
            let item = source.items.expect("items")[0].clone();
            Some((source.name, item.key, item.path))
        };
        let probe_port = |d: &Deployment| {
            let pod = pod(d);
            let probes = [
                pod.containers[0].readiness_probe.clone(),
                pod.containers[0].liveness_probe.clone(),
                pod.containers[0].startup_probe.clone(),
            ];
            let ports: Vec<_> = probes
                .into_iter()
                .map(|p| p.and_then(|p| p.http_get).map(|h| h.port))
                .collect();
            assert!(ports.windows(2).all(|w| w[0] == w[1]), "{ports:?}");
            ports[0].clone()
        };
        let off = build(json!({}));
        assert_eq!(client_ca(&off), None);
        assert_eq!(probe_port(&off), Some(IntOrString::String("api".into())));

        let optional = build(json!({"auth": {"mtls": {"mode": "Optional"}}}));
        assert_eq!(
            client_ca(&optional),
            Some(("chat-ca-bundle".into(), "ca.crt".into(), "ca.crt".into()))
        );
        assert_eq!(
            probe_port(&optional),
            Some(IntOrString::String("api".into()))
        );

        let spire = build(json!({"auth": {"mtls": {"mode": "Required",
            "trustBundle": {"configMapName": "spire-bundle", "key": "bundle.crt"}}}}));
        assert_eq!(
            client_ca(&spire),
            Some(("spire-bundle".into(), "bundle.crt".into(), "ca.crt".into()))
        );
        assert_eq!(probe_port(&spire), Some(IntOrString::String("web".into())));
    }

    #[test]
    fn pods_are_hardened() {
        let d = build(json!({}));
        let pod = pod(&d);
        let c = &pod.containers[0];
        let sc = c
            .security_context
            .as_ref()
            .expect("container security context");
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(c.image.as_deref(), Some("securechat/server:0.1.0"));
        // The audit lines' pod and node, from the downward API.
        let env: Vec<(String, Option<String>)> = c
            .env
            .clone()
            .expect("env")
            .into_iter()
            .map(|e| {
                let field = e.value_from.and_then(|v| v.field_ref).map(|f| f.field_path);
                (e.name, field)
            })
            .collect();
        assert_eq!(
            env,
            [
                ("POD_NAME".to_string(), Some("metadata.name".to_string())),
                ("NODE_NAME".to_string(), Some("spec.nodeName".to_string())),
            ]
        );
        let probe = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("probe");
        assert_eq!(
            (probe.scheme.as_deref(), probe.path.as_deref()),
            (Some("HTTPS"), Some("/readyz"))
        );
    }

    #[test]
    fn a_deleted_pod_serves_while_the_service_forgets_it() {
        let pod = pod(&build(json!({})));
        let sleep = pod.containers[0]
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .expect("a preStop sleep");
        assert_eq!(sleep.seconds, PRE_STOP_SLEEP_SECONDS);
        // Inside the grace period (default 30 s), with time left to drain.
        assert!(PRE_STOP_SLEEP_SECONDS < 30 && pod.termination_grace_period_seconds.is_none());
    }

    #[test]
    fn secrets_are_mounted_as_files_and_config_changes_roll_pods() {
        let d = build(json!({}));
        let template = d.spec.clone().template;
        let annotations = template
            .metadata
            .expect("meta")
            .annotations
            .expect("annotations");
        assert_eq!(
            annotations
                .get(CONFIG_CHECKSUM_ANNOTATION)
                .map(String::as_str),
            Some("abc")
        );
        let volumes = template.spec.expect("pod").volumes.expect("volumes");
        let secrets: Vec<_> = volumes
            .iter()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert_eq!(secrets, ["chat-tls", "chat-signing-keys", "chat-api-keys"]);
    }

    #[test]
    fn an_oauth2_providers_client_secret_is_mounted_where_the_config_says() {
        let d = build(json!({"web": {"sso": [{
            "name": "wecom", "kind": "WeCom", "clientId": "ww1", "clientSecretName": "wecom-app",
            "wecom": {"agentId": "1000002"}
        }]}}));
        let pod = pod(&d);
        let volume = pod
            .volumes
            .as_ref()
            .expect("volumes")
            .iter()
            .find(|v| v.name == "oauth2-client-secret-wecom")
            .expect("the secret's volume");
        assert_eq!(
            volume
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref()),
            Some("wecom-app")
        );
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .expect("mounts")
            .iter()
            .find(|m| m.name == "oauth2-client-secret-wecom")
            .expect("mounted");
        assert_eq!(
            std::path::Path::new(&mount.mount_path).join("client-secret"),
            oauth2_client_secret_file("wecom")
        );
    }

    #[test]
    fn gpus_become_requests_limits_toleration_and_node_selector() {
        let d =
            build(json!({"resources": {"gpu": {"count": 2, "product": "NVIDIA-H100-80GB-HBM3"}}}));
        let pod = pod(&d);
        let res = pod.containers[0].resources.clone().expect("resources");
        assert_eq!(
            res.limits.expect("limits").get("nvidia.com/gpu"),
            Some(&Quantity("2".into()))
        );
        assert_eq!(
            res.requests.expect("requests").get("nvidia.com/gpu"),
            Some(&Quantity("2".into()))
        );
        let tolerations = pod.tolerations.expect("tolerations");
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("nvidia.com/gpu")
                    && t.effect.as_deref() == Some("NoSchedule"))
        );
        assert_eq!(
            pod.node_selector
                .expect("selector")
                .get(GPU_PRODUCT_LABEL)
                .map(String::as_str),
            Some("NVIDIA-H100-80GB-HBM3")
        );
    }

    /// GPU pods run the CUDA image (a model's own image still wins), are
    /// told to use the GPU or fail, and ask the container toolkit for the
    /// compute driver; CPU pods keep the default image and `--device auto`.
    #[test]
    fn gpu_pods_get_the_cuda_image_and_must_use_their_gpu() {
        let cuda = "securechat/server:0.1.0-cuda";
        let container = |spec: serde_json::Value| {
            let m = model("chat", spec);
            let input = Input::new(&m, "securechat/server:0.1.0")
                .expect("input")
                .with_cuda_image(cuda);
            let d = deployment(&input, "abc");
            let pod = pod(&d);
            let fetcher = pod.init_containers.and_then(|c| c.first().cloned());
            (pod.containers[0].clone(), fetcher)
        };
        let env = |c: &Container, name: &str| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        let device = |c: &Container| {
            let args = c.args.clone().expect("args");
            args.iter()
                .position(|a| a == "--device")
                .map(|i| args[i + 1].clone())
        };

        let (gpu, _) = container(json!({"resources": {"gpu": {"count": 1}}}));
        assert_eq!(gpu.image.as_deref(), Some(cuda));
        assert_eq!(device(&gpu).as_deref(), Some("cuda"));
        assert_eq!(
            env(&gpu, "NVIDIA_DRIVER_CAPABILITIES").as_deref(),
            Some("compute,utility")
        );
        // The device plugin sets it to the allocated GPUs, never the pod.
        assert_eq!(env(&gpu, "NVIDIA_VISIBLE_DEVICES"), None);
        assert_eq!(
            gpu.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );

        let (cpu, _) = container(json!({}));
        assert_eq!(cpu.image.as_deref(), Some("securechat/server:0.1.0"));
        assert_eq!(device(&cpu), None);
        assert_eq!(env(&cpu, "NVIDIA_DRIVER_CAPABILITIES"), None);

        let (own, fetcher) = container(json!({
            "image": "registry.example/server:mine",
            "resources": {"gpu": {"count": 1}},
            "model": {"source": {"huggingFace": {"repo": "THUDM/chatglm3-6b"}}}
        }));
        assert_eq!(own.image.as_deref(), Some("registry.example/server:mine"));
        assert_eq!(device(&own).as_deref(), Some("cuda"));
        let fetcher = fetcher.expect("fetch-model");
        assert_eq!(
            fetcher.image.as_deref(),
            Some("registry.example/server:mine")
        );
    }

    #[test]
    fn no_gpu_means_no_gpu_toleration() {
        let pod = pod(&build(json!({})));
        assert!(pod.tolerations.is_none());
        assert!(pod.node_selector.is_none());
    }

    #[test]
    fn custom_resource_name_and_user_scheduling_pass_through() {
        let d = build(json!({
            "resources": {"gpu": {"count": 1, "resourceName": "amd.com/gpu"}, "requests": {"cpu": "2", "memory": "8Gi"}},
            "scheduling": {
                "nodeSelector": {"zone": "a"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                "runtimeClassName": "nvidia",
                "priorityClassName": "high"
            }
        }));
        let pod = pod(&d);
        let res = pod.containers[0].resources.clone().expect("resources");
        let requests = res.requests.expect("requests");
        assert_eq!(requests.get("amd.com/gpu"), Some(&Quantity("1".into())));
        assert_eq!(requests.get("memory"), Some(&Quantity("8Gi".into())));
        assert_eq!(pod.tolerations.expect("tolerations").len(), 2);
        assert_eq!(
            pod.node_selector
                .expect("selector")
                .get("zone")
                .map(String::as_str),
            Some("a")
        );
        assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
    }

    #[test]
    fn a_hugging_face_source_is_fetched_by_a_hardened_init_container() {
        let d = build(
            json!({"model": {"family": "Llama-GGUF", "source": {"huggingFace": {
            "repo": "org/model-GGUF", "revision": "0123abc", "file": "m.Q4_1.gguf",
            "tokenSecretName": "hf"}}}}),
        );
        let pod = pod(&d);
        let init = pod.init_containers.clone().expect("init containers");
        assert_eq!(init.len(), 1);
        let fetcher = &init[0];
        assert_eq!(fetcher.image.as_deref(), Some("securechat/server:0.1.0"));
        assert_eq!(
            fetcher.args.clone().expect("args"),
            [
                "fetch",
                "--repo",
                "org/model-GGUF",
                "--revision",
                "0123abc",
                "--dest",
                "/models",
                "--file",
                "m.Q4_1.gguf",
                "--token-file",
                "/var/run/securechat/hf-token/token"
            ]
        );
        assert_eq!(fetcher.security_context, Some(hardened()));
        let writable: Vec<_> = fetcher
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.read_only != Some(true))
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(writable, ["/models", "/tmp"]);
        // The server reads the fetched file, read-only, and never the token.
        let server = &pod.containers[0];
        let args = server.args.clone().expect("args");
        assert!(
            args.windows(2)
                .any(|w| w == ["--model", "/models/m.Q4_1.gguf"])
        );
        let mounts = server.volume_mounts.clone().expect("mounts");
        let model = mounts
            .iter()
            .find(|m| m.name == "model")
            .expect("model mount");
        assert_eq!(model.read_only, Some(true));
        assert!(!mounts.iter().any(|m| m.name == "hf-token"));
        let volumes = pod.volumes.expect("volumes");
        let model = volumes
            .iter()
            .find(|v| v.name == "model")
            .expect("model volume");
        assert!(model.empty_dir.is_some());
        let token = volumes
            .iter()
            .find(|v| v.name == "hf-token")
            .expect("token volume");
        assert_eq!(
            token.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            Some("hf")
        );
    }

    #[test]
    fn a_safetensors_repository_is_served_from_the_directory_without_a_token() {
        let d = build(
            json!({"model": {"family": "ChatGLM3", "source": {"huggingFace": {
            "repo": "THUDM/chatglm3-6b"}}}}),
        );
        let pod = pod(&d);
        let fetcher = &pod.init_containers.clone().expect("init")[0];
        let args = fetcher.args.clone().expect("args");
        assert!(!args.iter().any(|a| a == "--token-file" || a == "--file"));
        let server_args = pod.containers[0].args.clone().expect("args");
        assert!(server_args.windows(2).any(|w| w == ["--model", "/models"]));
        assert!(
            !pod.volumes
                .expect("volumes")
                .iter()
                .any(|v| v.name == "hf-token")
        );
        // No init container for the other sources.
        assert!(pod_of_default().init_containers.is_none());
    }

    fn pod_of_default() -> PodSpec {
        pod(&build(json!({})))
    }

    #[test]
    fn volume_source_mounts_the_claim_read_only() {
        let d = build(
            json!({"model": {"family": "ChatGLM3", "source": {"volume": {"claimName": "weights", "path": "chatglm3-6b"}}}}),
        );
        let pod = pod(&d);
        let args = pod.containers[0].args.clone().expect("args");
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--model" && w[1] == "/models/chatglm3-6b"),
            "{args:?}"
        );
        let claim = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find_map(|v| v.persistent_volume_claim)
            .expect("pvc volume");
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("weights", Some(true))
        );
    }

    #[test]
    fn existing_tls_secret_is_mounted_instead() {
        let d =
            build(json!({"tls": {"mode": "ExistingSecret", "secretName": "from-cert-manager"}}));
        let volumes = pod(&d).volumes.expect("volumes");
        let tls = volumes
            .iter()
            .find(|v| v.name == "tls")
            .and_then(|v| v.secret.clone())
            .expect("tls volume");
        assert_eq!(tls.secret_name.as_deref(), Some("from-cert-manager"));
    }
}
