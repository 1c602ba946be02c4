//! Metrics through the model's NetworkPolicy (issue 5/9): a real
//! Prometheus server (tests/cluster/node-images.sh packs it) runs as a pod
//! on node-0 and scrapes the model's server pod the way the chart's
//! PodMonitor says, with the shipped alert rules loaded.
//!
//! The PodMonitor (charts/securechat/templates/monitoring.yaml) becomes a
//! plain prometheus.yml as the Prometheus Operator would write it:
//! kubernetes_sd_configs (role pod, the model's namespace), kept by the
//! PodMonitor's pod labels and its `api` port, scheme https, path /metrics,
//! `namespace`/`pod`/`model` labels and the job `<namespace>/<name>`. The
//! TLS settings are a per-model tlsConfig: the model's CA bundle and its
//! Service name (the chart's default skips verification; this checks the
//! stricter setting works).
//!
//! Two such Prometheus pods, identical but for their namespace: one in the
//! namespace `spec.network.monitoring` admits scrapes `up == 1` and every
//! shipped rule evaluates on the real series; the other is refused by the
//! policy (`up == 0`), and there the down-target alert becomes active. A
//! busybox pod beside the admitted Prometheus, without its label, is
//! refused too, and the admitted label opens the API port only.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use securechat_test_support::cluster::node::{Node, connects};
use securechat_test_support::cluster::{
    self, InProcessOperator, TestNamespace, client, install_crds, kubectl, kubectl_ok, wait_for,
};
use serde_json::{Value, json};

use crate::{create_cpu_model, model_ca_bundle, ready_pod};

const PROMETHEUS_PORT: u16 = 9090;
/// The alert for a server target Prometheus cannot scrape.
const TARGET_DOWN: &str = "SecureChatServerTargetDown";
const SLEEP: &[&str] = &["/bin/sleep", "3600"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_server_through_its_policy_and_the_shipped_rules_evaluate() {
    let kube = client().await;
    let node = Node::get();
    let _turn = node.take_turn().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "node-metrics").await;
    let monitoring = TestNamespace::create(&kube, "node-mon").await;
    let outsiders = TestNamespace::create(&kube, "node-mon-out").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;

    // The model admits the scraper of `monitoring` (the default pod label),
    // and nothing else.
    let spec = json!({
        "replicas": 1,
        "network": {"monitoring": {"fromNamespaces": {"matchLabels": {
            "kubernetes.io/metadata.name": monitoring.name}}}}
    });
    create_cpu_model(&kube, &node, &ns.name, "m", spec).await;
    let server = ready_pod(&kube, &ns.name, "m").await;
    let server_name = server.metadata.name.clone().expect("pod name");
    let server_ip = server
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("server pod IP");

    // What the scrape trusts: the model's CA bundle, copied next to the
    // Prometheus config (a pod mounts ConfigMaps of its own namespace).
    let bundle = model_ca_bundle(&kube, &ns.name, "m").await;
    let rules = std::fs::read_to_string(
        cluster::repo_root().join("charts/securechat/files/prometheus-rules.yaml"),
    )
    .expect("the shipped rules");
    let job = format!("{}/securechat-servers", monitoring.name);
    let config = prometheus_config(
        "/etc/prometheus",
        &ns.name,
        &job,
        &format!("m.{}.svc", ns.name),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut objects = Vec::new();
    for namespace in [&monitoring.name, &outsiders.name] {
        objects.extend(prometheus_objects(
            &node, namespace, &ns.name, &config, &rules, &bundle,
        ));
    }
    let manifest = dir.path().join("prometheus.json");
    std::fs::write(
        &manifest,
        json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string(),
    )
    .expect("write manifest");
    kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);

    let admitted = prometheus_ip(&kube, &monitoring.name).await;
    let refused = prometheus_ip(&kube, &outsiders.name).await;

    // The admitted Prometheus scrapes the pod: up == 1, through the policy.
    let up_query = format!("up{{pod=\"{server_name}\"}}");
    wait_for(
        "the admitted Prometheus to scrape the server pod (up == 1)",
        Duration::from_secs(120),
        || {
            let series = query(&admitted, &up_query);
            async move { series.filter(|s| s.first().is_some_and(|s| s["value"][1] == "1")) }
        },
    )
    .await;
    let scraped = target(&admitted, &server_name).expect("the admitted target");
    assert_eq!(scraped["health"], "up", "{scraped}");
    assert_eq!(scraped["labels"]["model"], "m", "{scraped}");
    assert_eq!(
        scraped["labels"]["namespace"],
        ns.name.as_str(),
        "{scraped}"
    );
    assert_eq!(scraped["labels"]["job"], job.as_str(), "{scraped}");
    assert!(
        scraped["scrapeUrl"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://")),
        "{scraped}"
    );

    // The shipped rules evaluate on these series: every rule healthy after
    // evaluations that saw the server's series, and the credential rules'
    // aggregations find one series for the model, by the PodMonitor's
    // labels.
    for metric in [
        "securechat_certificate_expiry_seconds",
        "securechat_signing_key_expiry_seconds",
    ] {
        let per_model = wait_for(
            &format!("{metric} of the model in the admitted Prometheus"),
            Duration::from_secs(60),
            || {
                let q = format!(
                    "min by (namespace, model) ({metric}{{namespace=\"{}\"}})",
                    ns.name
                );
                let result = query(&admitted, &q);
                async move { result.filter(|r| !r.is_empty()) }
            },
        )
        .await;
        assert_eq!(per_model.len(), 1, "{metric}: {per_model:?}");
        assert_eq!(per_model[0]["metric"]["model"], "m", "{per_model:?}");
        let seconds: f64 = per_model[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("a number");
        assert!(seconds > 0.0, "{metric} is {seconds}: already expired?");
    }
    let groups = wait_for(
        "every shipped rule evaluated healthy, after the server's series arrived",
        Duration::from_secs(60),
        || {
            let groups = api(&admitted, "/api/v1/rules").map(|d| d["groups"].clone());
            async move {
                let groups = groups?;
                let all_ok = groups.as_array()?.iter().all(|g| {
                    g["rules"].as_array().is_some_and(|rules| {
                        rules.iter().all(|r| {
                            r["health"] == "ok"
                                && r["lastError"].as_str().unwrap_or_default().is_empty()
                        })
                    })
                });
                all_ok.then_some(groups)
            }
        },
    )
    .await;
    let shipped: Value = serde_yaml::from_str(&rules).expect("rules yaml");
    let shipped_rules: usize = shipped["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    let loaded: usize = groups
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(loaded, shipped_rules, "rules loaded: {groups}");
    assert!(
        active_alert(&admitted, TARGET_DOWN, &server_name).is_none(),
        "the admitted Prometheus alerts on a target it scrapes"
    );

    // The Prometheus of another namespace is refused by the policy: its
    // target for the same pod is down, and the down-target alert is active
    // there (pending for the rule's 5m; tests/alerts unit-tests the firing).
    let state = wait_for(
        "the refused Prometheus's down-target alert",
        Duration::from_secs(120),
        || {
            let alert = active_alert(&refused, TARGET_DOWN, &server_name);
            async move { alert }
        },
    )
    .await;
    assert!(state == "pending" || state == "firing", "state {state}");
    let refused_target = target(&refused, &server_name).expect("the refused target");
    assert_eq!(refused_target["health"], "down", "{refused_target}");
    let error = refused_target["lastError"].as_str().unwrap_or_default();
    println!("refused scrape: {error}");
    // The connection never opens: not a TLS or HTTP refusal from the pod.
    assert!(
        !error.contains("tls") && !error.contains("certificate") && !error.contains("HTTP status"),
        "the refused scrape reached the server: {error}"
    );
    // Meanwhile the admitted one still scrapes it.
    assert_eq!(
        query(&admitted, &up_query).and_then(|s| s.first().map(|s| s["value"][1].clone())),
        Some(json!("1"))
    );

    // The rule admits the scraper's pods on the API port only: a pod in
    // the monitoring namespace without the label is refused, one with it
    // reaches the API port and not the web port.
    node.client_pod(
        &kube,
        &monitoring.name,
        "unlabelled",
        json!({"role": "client"}),
        SLEEP,
    )
    .await;
    node.client_pod(
        &kube,
        &monitoring.name,
        "labelled",
        json!({"app.kubernetes.io/name": "prometheus"}),
        SLEEP,
    )
    .await;
    let cells = [
        ("unlabelled", 8000, false),
        ("labelled", 8000, true),
        ("labelled", 8501, false),
    ];
    let measured: Vec<_> = cells
        .iter()
        .map(|&(pod, port, want)| {
            (
                pod,
                port,
                want,
                connects(&monitoring.name, pod, &server_ip, port),
            )
        })
        .collect();
    assert!(
        measured.iter().all(|(_, _, want, got)| want == got),
        "(pod, port, want, got): {measured:?}"
    );
}

/// The chart's PodMonitor as a prometheus.yml (see the module's docs),
/// reading the rules and the model's CA from `dir`.
pub(crate) fn prometheus_config(
    dir: &str,
    model_namespace: &str,
    job: &str,
    server_name: &str,
) -> String {
    // Short intervals: the test waits for a few scrapes and evaluations.
    json!({
        "global": {"scrape_interval": "2s", "scrape_timeout": "2s", "evaluation_interval": "2s"},
        "rule_files": [format!("{dir}/prometheus-rules.yaml")],
        "scrape_configs": [{
            "job_name": job,
            "scheme": "https",
            "metrics_path": "/metrics",
            "tls_config": {"ca_file": format!("{dir}/ca.crt"), "server_name": server_name},
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [model_namespace]}}],
            "relabel_configs": [
                // The PodMonitor's selector and its port.
                {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                 "regex": "securechat-server", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_managed_by"],
                 "regex": "securechat-operator", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_container_port_name"],
                 "regex": "api", "action": "keep"},
                // The labels the Prometheus Operator adds, and the
                // PodMonitor's relabeling to `model`.
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
                {"source_labels": ["__meta_kubernetes_pod_label_securechat_dev_model"], "target_label": "model"},
                {"target_label": "job", "replacement": job}
            ]
        }]
    })
    .to_string()
}

/// A Prometheus pod in `namespace` (label `app.kubernetes.io/name:
/// prometheus`), with its config, the rules, the CA, a ServiceAccount and
/// the right to discover the model namespace's pods.
fn prometheus_objects(
    node: &Node,
    namespace: &str,
    model_namespace: &str,
    config: &str,
    rules: &str,
    ca: &str,
) -> Vec<Value> {
    let scheduling = node.scheduling();
    let restricted = json!({
        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]}
    });
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "prometheus", "namespace": namespace}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": format!("prometheus-{namespace}"), "namespace": model_namespace},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": format!("prometheus-{namespace}"), "namespace": model_namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                           "name": format!("prometheus-{namespace}")},
               "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}]}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "prometheus", "namespace": namespace},
               "data": {"prometheus.yml": config, "prometheus-rules.yaml": rules, "ca.crt": ca}}),
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "prometheus", "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "prometheus"}},
        "spec": {
            "nodeSelector": scheduling["nodeSelector"],
            "tolerations": scheduling["tolerations"],
            "serviceAccountName": "prometheus",
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "prometheus",
                "image": node.prometheus_image,
                "imagePullPolicy": "Never",
                "args": ["--config.file=/etc/prometheus/prometheus.yml",
                         "--storage.tsdb.path=/data",
                         format!("--web.listen-address=:{PROMETHEUS_PORT}")],
                "securityContext": restricted,
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/prometheus", "readOnly": true},
                    {"name": "data", "mountPath": "/data"}
                ]
            }],
            "volumes": [
                {"name": "config", "configMap": {"name": "prometheus"}},
                {"name": "data", "emptyDir": {}}
            ]
        }}),
    ]
}

/// The IP of `namespace`'s Prometheus pod once its HTTP API answers (from
/// the host, which reaches pod IPs through the node's bridge).
async fn prometheus_ip(kube: &kube::Client, namespace: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let ip = pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=prometheus"))
                .await
                .ok()
                .and_then(|l| l.items.into_iter().find_map(|p| p.status?.pod_ip));
            if let Some(ip) = ip
                && api(&ip, "/api/v1/status/buildinfo").is_some()
            {
                return ip;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        let (_, describe, _) = kubectl(&["-n", namespace, "describe", "pod", "prometheus"]);
        let (_, logs, _) = kubectl(&["-n", namespace, "logs", "prometheus", "--tail=30"]);
        panic!("Prometheus in {namespace} does not answer after 120s:\n{describe}\nlogs:\n{logs}")
    })
}

/// GET `path` (with query parameters as curl's `--data-urlencode`) from
/// the Prometheus at `ip`; its `data` on success.
fn api_with(ip: &str, path: &str, params: &[String]) -> Option<Value> {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--fail", "--max-time", "5", "--get"]);
    for p in params {
        curl.args(["--data-urlencode", p]);
    }
    let out = curl
        .arg(format!("http://{ip}:{PROMETHEUS_PORT}{path}"))
        .output()
        .expect("run curl");
    if !out.status.success() {
        return None;
    }
    let body: Value = serde_json::from_slice(&out.stdout).ok()?;
    (body["status"] == "success").then(|| body["data"].clone())
}

fn api(ip: &str, path: &str) -> Option<Value> {
    api_with(ip, path, &[])
}

/// An instant query's result vector.
fn query(ip: &str, promql: &str) -> Option<Vec<Value>> {
    api_with(ip, "/api/v1/query", &[format!("query={promql}")])
        .and_then(|d| d["result"].as_array().cloned())
}

/// The active target of pod `pod`.
fn target(ip: &str, pod: &str) -> Option<Value> {
    api_with(ip, "/api/v1/targets", &["state=active".to_string()])?["activeTargets"]
        .as_array()?
        .iter()
        .find(|t| t["labels"]["pod"] == pod)
        .cloned()
}

/// The state (pending, firing) of alert `name` for pod `pod`, if active.
fn active_alert(ip: &str, name: &str, pod: &str) -> Option<String> {
    api(ip, "/api/v1/alerts")?["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name && a["labels"]["pod"] == pod)
        .and_then(|a| a["state"].as_str().map(str::to_string))
}

/// With `spec.auth.mtls.mode: Required` the API port (where /metrics is)
/// asks every client for a certificate at the handshake, the scraper
/// included: the chart's PodMonitor then needs a client certificate from a
/// CA in the model's trust bundle (`monitoring.workloadTlsConfig`'s `cert`
/// and `keySecret`, values.yaml). One Prometheus pod, two jobs identical
/// but for that certificate: the one with it scrapes (`up == 1`), the one
/// without is refused at the handshake (`up == 0`, a TLS error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_requires_client_certificates_is_scraped_with_one() {
    let kube = client().await;
    let node = Node::get();
    let _turn = node.take_turn().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "node-metrics-mtls").await;
    let monitoring = TestNamespace::create(&kube, "node-mon-mtls").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;

    // The scrapers' CA, which the model trusts for client certificates,
    // and Prometheus' certificate with its SPIFFE ID.
    let dir = tempfile::tempdir().expect("tempdir");
    let spiffe_id = format!(
        "spiffe://cluster.local/ns/{}/sa/prometheus",
        monitoring.name
    );
    let (scrapers_ca, client_cert, client_key) = client_certificate(dir.path(), &spiffe_id);
    kubectl_ok(&[
        "-n",
        &ns.name,
        "create",
        "configmap",
        "scrapers-ca",
        &format!("--from-literal=ca.crt={scrapers_ca}"),
    ]);
    let spec = json!({
        "replicas": 1,
        "auth": {"mtls": {"mode": "Required",
                          "trustBundle": {"configMapName": "scrapers-ca"}}},
        "network": {"monitoring": {"fromNamespaces": {"matchLabels": {
            "kubernetes.io/metadata.name": monitoring.name}}}}
    });
    create_cpu_model(&kube, &node, &ns.name, "m", spec).await;
    let server = ready_pod(&kube, &ns.name, "m").await;
    let server_name = server.metadata.name.clone().expect("pod name");
    let bundle = model_ca_bundle(&kube, &ns.name, "m").await;
    let rules = std::fs::read_to_string(
        cluster::repo_root().join("charts/securechat/files/prometheus-rules.yaml"),
    )
    .expect("the shipped rules");

    // Two jobs from the PodMonitor: with the client certificate (as
    // workloadTlsConfig's cert and keySecret give it) and without.
    let server_host = format!("m.{}.svc", ns.name);
    let with_cert = format!("{}/with-client-certificate", monitoring.name);
    let without_cert = format!("{}/without-client-certificate", monitoring.name);
    let mut config: Value = serde_json::from_str(&prometheus_config(
        "/etc/prometheus",
        &ns.name,
        &with_cert,
        &server_host,
    ))
    .expect("config");
    let mut job = config["scrape_configs"][0].clone();
    config["scrape_configs"][0]["tls_config"]["cert_file"] = json!("/etc/prometheus/client.crt");
    config["scrape_configs"][0]["tls_config"]["key_file"] =
        json!("/etc/prometheus-client/client.key");
    job["job_name"] = json!(without_cert);
    if let Some(relabel) = job["relabel_configs"].as_array_mut() {
        for r in relabel {
            if r["target_label"] == "job" {
                r["replacement"] = json!(without_cert);
            }
        }
    }
    config["scrape_configs"]
        .as_array_mut()
        .expect("scrape configs")
        .push(job);
    let mut objects = prometheus_objects(
        &node,
        &monitoring.name,
        &ns.name,
        &config.to_string(),
        &rules,
        &bundle,
    );
    for object in &mut objects {
        match object["kind"].as_str() {
            Some("ConfigMap") => object["data"]["client.crt"] = json!(client_cert),
            Some("Pod") => {
                object["spec"]["volumes"]
                    .as_array_mut()
                    .expect("volumes")
                    .push(json!({"name": "client-key", "secret": {"secretName": "prometheus-client"}}));
                object["spec"]["containers"][0]["volumeMounts"]
                    .as_array_mut()
                    .expect("mounts")
                    .push(
                        json!({"name": "client-key", "mountPath": "/etc/prometheus-client",
                                 "readOnly": true}),
                    );
            }
            _ => {}
        }
    }
    objects.push(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "prometheus-client", "namespace": monitoring.name},
        "stringData": {"client.key": client_key}}));
    let manifest = dir.path().join("prometheus.json");
    std::fs::write(
        &manifest,
        json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string(),
    )
    .expect("write manifest");
    kubectl_ok(&["apply", "-f", manifest.to_str().expect("utf-8 path")]);
    let prometheus = prometheus_ip(&kube, &monitoring.name).await;

    let up = |job: &str| format!("up{{pod=\"{server_name}\",job=\"{job}\"}}");
    wait_for(
        "the scrape with the client certificate (up == 1)",
        Duration::from_secs(120),
        || {
            let series = query(&prometheus, &up(&with_cert));
            async move { series.filter(|s| s.first().is_some_and(|s| s["value"][1] == "1")) }
        },
    )
    .await;
    let refused = wait_for(
        "the scrape without a client certificate refused (up == 0)",
        Duration::from_secs(60),
        || {
            let target = api_with(
                &prometheus,
                "/api/v1/targets",
                &["state=active".to_string()],
            )
            .and_then(|d| {
                d["activeTargets"]
                    .as_array()?
                    .iter()
                    .find(|t| t["labels"]["job"] == without_cert.as_str())
                    .cloned()
            })
            .filter(|t| t["health"] == "down");
            async move { target }
        },
    )
    .await;
    let error = refused["lastError"].as_str().unwrap_or_default();
    println!("scrape without a client certificate: {error}");
    assert!(
        error.contains("certificate") || error.contains("tls"),
        "refused for another reason than the missing certificate: {refused}"
    );
    // The certified one keeps scraping meanwhile.
    assert_eq!(
        query(&prometheus, &up(&with_cert)).and_then(|s| s.first().map(|s| s["value"][1].clone())),
        Some(json!("1"))
    );
}

/// A client CA and a certificate it issued for `spiffe_id` (URI SAN,
/// clientAuth), as PEM: (CA certificate, client certificate, client key).
fn client_certificate(dir: &std::path::Path, spiffe_id: &str) -> (String, String, String) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=scrapers",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=prometheus",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
    ]);
    std::fs::write(
        dir.join("client.ext"),
        format!(
            "subjectAltName=URI:{spiffe_id}\nextendedKeyUsage=clientAuth\n\
             keyUsage=digitalSignature\nbasicConstraints=CA:FALSE\n"
        ),
    )
    .expect("write ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "client.ext",
        "-out",
        "client.crt",
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("read PEM");
    (read("ca.crt"), read("client.crt"), read("client.key"))
}
