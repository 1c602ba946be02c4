//! Autoscaling on a serving signal, end to end on the real node (issue
//! 6/9): a CPU model with `spec.autoscaling` (1 to 2 pods on
//! `SequencesRunning`), a real Prometheus scraping its pods as the chart's
//! PodMonitor says, prometheus-adapter v0.12.0 serving
//! `custom.metrics.k8s.io` with the chart's rules
//! (charts/securechat/files/prometheus-adapter-rules.yaml) behind an
//! APIService, and the real kube-controller-manager's HPA controller
//! (tests/cluster/up.sh: synced every 5 s) scaling the Deployment.
//!
//! Under concurrent chat load through the model's Service (each request a
//! new connection, so kube-proxy balances every one afresh) the HPA adds
//! the second pod; when the load drops to one caller it takes it away
//! again. Not one request fails during either move: the new pod joins the
//! Service only once Ready, and the removed one keeps serving through its
//! preStop sleep while the Service forgets it.
//!
//! Prometheus and the adapter run as host processes, not as pods on
//! node-0: node-0 has 2 cores for everything, and the two model pods the
//! HPA scales between must fit there with room for the load; the
//! aggregation path is the one a cluster has all the same (the API server
//! proxies to the adapter through a Service whose endpoint is the node's
//! address, with its front-proxy certificate, and the adapter authorises
//! the HPA controller's requests with a SubjectAccessReview).
//! tests/node/metrics.rs covers Prometheus as a pod behind the model's
//! NetworkPolicy.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceSpec, ServiceReference,
};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use securechat_crds::SecureChatModel;
use securechat_crds::v1alpha1::ServingMetric;
use securechat_operator::labels::Names;
use securechat_operator::status::SCALING_READY;
use securechat_test_support::cluster::node::Node;
use securechat_test_support::cluster::serving::https_client_resolving;
use securechat_test_support::cluster::{
    self, InProcessOperator, TestNamespace, client, install_crds, kubectl, kubectl_ok, tool,
    wait_for,
};
use serde_json::{Value, json};

use crate::{consumer_credentials, create_cpu_model, create_key, model_ca_bundle};

use crate::chaos::settled_pods;
use crate::metrics::prometheus_config;

/// The signal the model scales on, and its target per pod: one pod under
/// `HEAVY` callers runs about that many sequences, three times the target,
/// so the HPA wants more pods than `maxReplicas`; `LIGHT` callers over two
/// pods average a quarter of it, so it wants one.
const METRIC: ServingMetric = ServingMetric::SequencesRunning;
const TARGET: &str = "2";
const HEAVY: usize = 6;
const LIGHT: usize = 1;

/// Tokens per answer: a request lasts well under the preStop sleep
/// (operator/src/desired/deployment.rs, 5 s) even on this 2-core machine,
/// so one that starts just before its pod leaves the Service still ends
/// before the server is told to stop.
const MAX_TOKENS: u32 = 16;

/// The aggregated API the adapter serves, in the versions HPA clients ask
/// for (the HPA controller prefers v1beta2).
const CUSTOM_METRICS: &str = "custom.metrics.k8s.io";
const CUSTOM_METRICS_VERSIONS: [(&str, i32); 2] = [("v1beta1", 100), ("v1beta2", 200)];
const ADAPTER_SERVICE: &str = "prometheus-adapter";

#[derive(Debug)]
struct Outcome {
    sent: Instant,
    result: Result<(), String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hpa_scales_a_cpu_model_on_its_serving_signal_and_back_without_failing_a_request() {
    let kube = client().await;
    let node = Node::get();
    let _turn = node.take_turn().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "node-hpa").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;

    // Two pods of these requests fit node-0's 2 cores beside CoreDNS; the
    // limit lets one pod use half the machine while it is alone.
    let spec = json!({
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"}
        },
        "network": {"ingress": [{"port": 8000, "from": ["0.0.0.0/0"]}]},
        "rateLimit": {"requestsPerMinute": 1000000},
        // Short windows: the test waits for both moves.
        "autoscaling": {
            "minReplicas": 1, "maxReplicas": 2,
            "metric": "SequencesRunning", "target": TARGET,
            "behavior": {
                "scaleUpStabilizationSeconds": 0,
                "scaleDownStabilizationSeconds": 10,
                "scaleDownPeriodSeconds": 5
            }
        }
    });
    create_cpu_model(&kube, &node, &ns.name, "m", spec).await;
    create_key(&kube, &ns.name, "app", "m").await;

    // Prometheus: the chart's PodMonitor as a prometheus.yml, discovering
    // pods through the API server with the test's kubeconfig.
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path();
    let bundle = model_ca_bundle(&kube, &ns.name, "m").await;
    std::fs::write(etc.join("ca.crt"), &bundle).expect("write the CA");
    std::fs::copy(
        cluster::repo_root().join("charts/securechat/files/prometheus-rules.yaml"),
        etc.join("prometheus-rules.yaml"),
    )
    .expect("copy the shipped rules");
    let mut config: Value = serde_json::from_str(&prometheus_config(
        etc.to_str().expect("utf-8 path"),
        &ns.name,
        &format!("{}/securechat-servers", ns.name),
        &format!("m.{}.svc", ns.name),
    ))
    .expect("config json");
    config["scrape_configs"][0]["kubernetes_sd_configs"][0]["kubeconfig_file"] =
        json!(cluster::kubeconfig_path());
    std::fs::write(etc.join("prometheus.yml"), config.to_string()).expect("write config");
    let localhost: IpAddr = [127, 0, 0, 1].into();
    let prometheus_port = free_port(localhost);
    let prometheus = HostDaemon::start(
        "prometheus",
        etc,
        &[
            &format!("--config.file={}", etc.join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", etc.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ],
    );

    // prometheus-adapter with the chart's rules, on the node's address (a
    // Service endpoint may not be loopback), with a serving certificate
    // for its Service name that the APIService trusts.
    let node_ip: IpAddr = node.ip.parse().expect("node IP");
    let adapter_port = free_port(node_ip);
    let service_host = format!("{ADAPTER_SERVICE}.{}.svc", ns.name);
    let (cert, key) = serving_certificate(etc, &service_host);
    let kubeconfig = cluster::kubeconfig_path();
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path");
    let adapter = HostDaemon::start(
        "prometheus-adapter",
        etc,
        &[
            &format!("--prometheus-url=http://127.0.0.1:{prometheus_port}"),
            &format!(
                "--config={}",
                cluster::repo_root()
                    .join("charts/securechat/files/prometheus-adapter-rules.yaml")
                    .display()
            ),
            // New series (the pods the HPA adds) are found within seconds
            // (default 10 min).
            "--metrics-relist-interval=5s",
            &format!("--lister-kubeconfig={kubeconfig}"),
            &format!("--authentication-kubeconfig={kubeconfig}"),
            &format!("--authorization-kubeconfig={kubeconfig}"),
            &format!("--bind-address={node_ip}"),
            &format!("--secure-port={adapter_port}"),
            &format!("--tls-cert-file={}", cert.display()),
            &format!("--tls-private-key-file={}", key.display()),
            "--v=2",
        ],
    );
    let _apis = register_adapter(&kube, &ns.name, node_ip, adapter_port, &cert).await;

    // The model answers through its Service with the minted key.
    let first = crate::ready_pod(&kube, &ns.name, "m").await.name_any();
    let ca = etc.join("app-ca.crt");
    let app_key = consumer_credentials(&kube, &ns.name, "app", &ca).await;
    let mut target = Target {
        ca,
        host: format!("m.{}.svc", ns.name),
        service: SocketAddr::new(crate::cluster_ip(&kube, &ns.name, "m").await, 8000),
        key: app_key,
        model: String::new(),
    };
    // The key reaches the pod's mounted table with the kubelet's next
    // Secret sync.
    target.model = wait_for(
        "the key accepted through the Service",
        Duration::from_secs(120),
        || {
            let http = https_client_resolving(&target.ca, &target.host, target.service);
            let (url, key) = (
                format!("https://{}:8000/v1/models", target.host),
                target.key.clone(),
            );
            async move {
                let response = http.ok()?.get(url).bearer_auth(key).send().await.ok()?;
                let body: Value = response.json().await.ok()?;
                body["data"][0]["id"].as_str().map(str::to_string)
            }
        },
    )
    .await;
    let target = Arc::new(target);
    target
        .chat()
        .await
        .expect("a chat answer through the Service");

    // The adapter serves the signal of the model's pod, and the HPA reads
    // it: one pod, nothing to do yet.
    let metric_path = format!(
        "/apis/{CUSTOM_METRICS}/v1beta1/namespaces/{}/pods/*/{}",
        ns.name,
        METRIC.series()
    );
    let diagnose = || {
        format!(
            "\nprometheus log:\n{}\nadapter log:\n{}\nhpa: {}\nmodel status: {}",
            prometheus.tail(),
            adapter.tail(),
            kubectl(&["-n", &ns.name, "describe", "hpa", &Names::autoscaler("m")]).1,
            kubectl(&[
                "-n",
                &ns.name,
                "get",
                "scm",
                "m",
                "-o",
                "jsonpath={.status}"
            ])
            .1
        )
    };
    let served = poll(Duration::from_secs(180), || {
        let values = pod_values(&metric_path).filter(|v| v.iter().any(|(pod, _)| *pod == first));
        async move { values }
    })
    .await
    .unwrap_or_else(|| panic!("the adapter never served {metric_path}{}", diagnose()));
    println!("adapter serves {}: {served:?}", METRIC.series());
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(kube.clone(), &ns.name);
    poll(Duration::from_secs(60), || {
        let hpas = hpas.clone();
        async move { current_average(&hpas.get("m").await.ok()?) }
    })
    .await
    .unwrap_or_else(|| panic!("the HPA never read the metric{}", diagnose()));
    let models: Api<SecureChatModel> = Api::namespaced(kube.clone(), &ns.name);
    poll(Duration::from_secs(60), || {
        let models = models.clone();
        async move { scaling_ready(&models.get("m").await.ok()?).then_some(()) }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the model's {SCALING_READY} never turned True{}",
            diagnose()
        )
    });

    // Load: HEAVY callers, each sending one chat request after another on
    // a new connection.
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let callers = Arc::new(AtomicUsize::new(HEAVY));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..HEAVY)
        .map(|i| {
            let (target, outcomes, callers, stop) = (
                target.clone(),
                outcomes.clone(),
                callers.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if i >= callers.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    let sent = Instant::now();
                    let result = target.chat().await;
                    outcomes.lock().unwrap().push(Outcome { sent, result });
                }
            })
        })
        .collect();
    let heavy = Instant::now();

    // 1 -> 2: the HPA asks for the second pod, which joins the Service
    // once Ready.
    let selector = securechat_operator::labels::selector("m")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), &ns.name);
    let seen = poll(Duration::from_secs(240), || {
        let hpas = hpas.clone();
        async move {
            let hpa = hpas.get("m").await.ok()?;
            (hpa.status.as_ref()?.desired_replicas == 2).then(|| current_average(&hpa))?
        }
    })
    .await
    .unwrap_or_else(|| panic!("the HPA never asked for 2 pods under load{}", diagnose()));
    let decided_up = heavy.elapsed();
    let two = settled_pods(&kube, &ns.name, "m", &selector, 2).await;
    let scaled_up = heavy.elapsed();
    assert_eq!(
        deployments
            .get("m")
            .await
            .expect("deployment")
            .spec
            .replicas,
        Some(2),
        "the Deployment's replicas are the HPA's"
    );
    // The load reaches the new pod: its own signal rises through the
    // adapter.
    let second = two
        .iter()
        .map(ResourceExt::name_any)
        .find(|p| *p != first)
        .expect("a second pod");
    poll(Duration::from_secs(60), || {
        let values = pod_values(&metric_path)
            .filter(|v| v.iter().any(|(pod, value)| *pod == second && *value > 0.0));
        async move { values }
    })
    .await
    .unwrap_or_else(|| panic!("the new pod {second} never ran a sequence{}", diagnose()));

    // 2 -> 1: LIGHT callers; the HPA gives a pod back after its
    // stabilisation window.
    callers.store(LIGHT, Ordering::Relaxed);
    let light = Instant::now();
    let light_seen = poll(Duration::from_secs(240), || {
        let hpas = hpas.clone();
        async move {
            let hpa = hpas.get("m").await.ok()?;
            (hpa.status.as_ref()?.desired_replicas == 1).then(|| current_average(&hpa))?
        }
    })
    .await
    .unwrap_or_else(|| panic!("the HPA never went back to 1 pod{}", diagnose()));
    let decided_down = light.elapsed();
    settled_pods(&kube, &ns.name, "m", &selector, 1).await;
    let scaled_down = light.elapsed();
    // A little more load on the one pod left, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("load worker");
    }
    assert!(
        scaling_ready(&models.get("m").await.expect("model")),
        "{SCALING_READY} after both moves{}",
        diagnose()
    );

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let count = |from: Instant, to: Option<Instant>| {
        outcomes
            .iter()
            .filter(|o| o.sent >= from && to.is_none_or(|to| o.sent < to))
            .count()
    };
    println!(
        "{} chat requests ({MAX_TOKENS} tokens each): {} with {HEAVY} callers (average {:.2} \
         {} per pod when the HPA asked for 2 after {:.1}s, 2 pods Ready in the Service after \
         {:.1}s), {} with {LIGHT} caller (average {:.2} when it asked for 1 after {:.1}s, one pod \
         left after {:.1}s)",
        outcomes.len(),
        count(heavy, Some(light)),
        seen,
        METRIC.series(),
        decided_up.as_secs_f64(),
        scaled_up.as_secs_f64(),
        count(light, None),
        light_seen,
        decided_down.as_secs_f64(),
        scaled_down.as_secs_f64(),
    );
    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|o| {
            let error = o.result.as_ref().err()?;
            Some((seconds_since(heavy, o.sent), error))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed while the HPA scaled ((seconds since the load began, error)): {failed:?}"
    );
    assert!(
        count(light, None) > 0 && count(heavy, Some(light)) > HEAVY,
        "the load ran through both moves"
    );
}

/// Where the load goes: the model's Service, with its CA and a key.
struct Target {
    ca: PathBuf,
    host: String,
    service: SocketAddr,
    key: String,
    /// The id /v1/models gives.
    model: String,
}

impl Target {
    /// One chat completion on a new connection: Ok when answered 200 with
    /// text.
    async fn chat(&self) -> Result<(), String> {
        let http = https_client_resolving(&self.ca, &self.host, self.service)?;
        let response = http
            .post(format!("https://{}:8000/v1/chat/completions", self.host))
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(60))
            .json(&json!({
                "model": self.model,
                "messages": [{"role": "user", "content": "Count from one to twenty."}],
                "max_tokens": MAX_TOKENS
            }))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| format!("{e:?}"))?;
        let text = body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default();
        if status != 200 || text.is_empty() {
            return Err(format!("{status}: {body}"));
        }
        Ok(())
    }
}

/// A host process, killed when dropped (also when the test panics), with
/// its output in `<dir>/<name>.log`.
struct HostDaemon {
    child: Child,
    log: PathBuf,
}

impl HostDaemon {
    fn start(name: &str, dir: &Path, args: &[&str]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(tool(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { child, log }
    }

    /// The last lines of its log.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for HostDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster-wide APIServices, deleted when dropped: one left behind
/// pointing at a stopped adapter makes API discovery fail for everyone.
struct AggregatedApis {
    names: Vec<String>,
}

impl Drop for AggregatedApis {
    fn drop(&mut self) {
        let mut args = vec!["delete", "apiservice", "--ignore-not-found", "--wait=false"];
        args.extend(self.names.iter().map(String::as_str));
        let _ = kubectl(&args);
    }
}

/// The adapter's Service (no selector: its endpoint is the host process
/// on the node's address) and the APIServices that route
/// `custom.metrics.k8s.io` to it.
async fn register_adapter(
    kube: &kube::Client,
    namespace: &str,
    node_ip: IpAddr,
    port: u16,
    cert: &Path,
) -> AggregatedApis {
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": ADAPTER_SERVICE, "namespace": namespace},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": ADAPTER_SERVICE, "namespace": namespace,
                      "labels": {"kubernetes.io/service-name": ADAPTER_SERVICE,
                                 "endpointslice.kubernetes.io/managed-by": "securechat-test"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [node_ip.to_string()], "conditions": {"ready": true}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}
    ]});
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), objects.to_string()).expect("write manifest");
    kubectl_ok(&["apply", "-f", file.path().to_str().expect("utf-8 path")]);

    let ca_bundle = std::fs::read(cert).expect("read the adapter's certificate");
    let apis: Api<APIService> = Api::all(kube.clone());
    let mut names = Vec::new();
    for (version, priority) in CUSTOM_METRICS_VERSIONS {
        let name = format!("{version}.{CUSTOM_METRICS}");
        let api_service = APIService {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(APIServiceSpec {
                group: Some(CUSTOM_METRICS.into()),
                version: Some(version.into()),
                group_priority_minimum: 100,
                version_priority: priority,
                ca_bundle: Some(ByteString(ca_bundle.clone())),
                service: Some(ServiceReference {
                    name: Some(ADAPTER_SERVICE.into()),
                    namespace: Some(namespace.into()),
                    port: Some(443),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        apis.patch(
            &name,
            &PatchParams::apply("securechat-test").force(),
            &Patch::Apply(&api_service),
        )
        .await
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
        names.push(name);
    }
    AggregatedApis { names }
}

/// A self-signed serving certificate for `host` (the APIService's
/// caBundle), as (certificate, key) files in `dir`.
fn serving_certificate(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("adapter.crt"), dir.join("adapter.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName=DNS:{host}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A port free on `ip` now.
fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The metric's value per pod, as `custom.metrics.k8s.io` serves it.
fn pod_values(path: &str) -> Option<Vec<(String, f64)>> {
    let (ok, body, _) = kubectl(&["get", "--raw", path]);
    if !ok {
        return None;
    }
    let list: Value = serde_json::from_str(&body).ok()?;
    list["items"]
        .as_array()?
        .iter()
        .map(|item| {
            let pod = item["describedObject"]["name"].as_str()?.to_string();
            Some((pod, quantity(item["value"].as_str()?)?))
        })
        .collect()
}

/// The HPA's last reading of the pods metric, averaged over the pods.
fn current_average(hpa: &HorizontalPodAutoscaler) -> Option<f64> {
    let current = hpa.status.as_ref()?.current_metrics.as_ref()?.first()?;
    quantity(&current.pods.as_ref()?.current.average_value.as_ref()?.0)
}

/// A Kubernetes quantity as the adapter writes it (`3`, `2500m`).
fn quantity(q: &str) -> Option<f64> {
    match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => q.parse().ok(),
    }
}

fn scaling_ready(model: &SecureChatModel) -> bool {
    model.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == SCALING_READY && c.status == "True")
    })
}

/// Polls `probe` every 500 ms until it gives a value, or None after
/// `timeout` (the caller panics with its own diagnosis).
async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn seconds_since(from: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(from).as_secs_f64()
}
