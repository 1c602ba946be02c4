//! The operator's main scenarios against the real control plane (issue 4/8):
//! the seed-1-like example end to end, an unplaceable GPU request moved to
//! an H100, drift and bad references, a restart mid-reconcile, and proof
//! from the API server's audit log that a no-op reconcile writes nothing.
//!
//! Each test runs the controller in-process, scoped to its own namespace,
//! with a client whose User-Agent is unique to the test, so the audit log
//! attributes every write to exactly one operator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use securechat_crds::SecureChatModel;
use securechat_crds::conditions::condition_status;
use securechat_crds::files::config::ServerConfig;
use securechat_operator::controller::{self, Context};
use securechat_operator::metrics::Metrics;
use securechat_test_support::cluster::models::CONDITION_WAIT;
use securechat_test_support::cluster::{
    self, AuditedWrite, TestNamespace, audit_log_offset, audit_writes, await_condition, client,
    client_as, install_crds, wait_for,
};
use serde_json::json;
use tokio::task::JoinHandle;

fn condition(model: Option<&SecureChatModel>, type_: &str) -> Option<(String, String, String)> {
    let c = model?
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn is(model: Option<&SecureChatModel>, type_: &str, status: &str) -> bool {
    model
        .and_then(|m| m.status.as_ref())
        .is_some_and(|s| condition_status(&s.conditions, type_) == Some(status))
}

/// An operator for one namespace, with its own User-Agent and metrics.
struct Operator {
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
    user_agent: String,
}

impl Operator {
    async fn start(namespace: &str, user_agent: &str) -> Self {
        let metrics = Arc::new(Metrics::new());
        let state = Arc::new(Context::new(
            client_as(user_agent).await,
            "securechat/server:test".into(),
            metrics.clone(),
        ));
        let namespaces = vec![namespace.to_string()];
        let task = tokio::spawn(async move { controller::run(state, &namespaces).await });
        Self {
            task,
            metrics,
            user_agent: user_agent.into(),
        }
    }

    fn successful_reconciles(&self) -> u64 {
        metric(
            &self.metrics.render(),
            "securechat_operator_reconciles_total{result=\"success\"}",
        )
    }

    fn failed_reconciles(&self) -> u64 {
        metric(
            &self.metrics.render(),
            "securechat_operator_reconciles_total{result=\"error\"}",
        )
    }

    fn writes_since(&self, offset: u64) -> Vec<AuditedWrite> {
        audit_writes(offset, &self.user_agent)
    }

    /// Triggers a reconcile of `name` without changing anything the
    /// operator reads (an annotation on the model), waits for it to finish,
    /// and returns the operator's writes during it.
    async fn noop_reconcile_writes(
        &self,
        models: &Api<SecureChatModel>,
        name: &str,
    ) -> Vec<AuditedWrite> {
        // Let reconciles triggered by earlier changes (status writes, pod
        // updates) settle first.
        let mut last = self.successful_reconciles();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = self.successful_reconciles();
            if now == last {
                break;
            }
            last = now;
        }
        let offset = audit_log_offset();
        let before = self.successful_reconciles();
        models
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": format!("{:?}", Instant::now())}}})),
            )
            .await
            .expect("poke");
        wait_for(
            "a reconcile after the poke",
            Duration::from_secs(30),
            || {
                let n = self.successful_reconciles();
                async move { (n > before).then_some(()) }
            },
        )
        .await;
        self.writes_since(offset)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn example_model(namespace: &str) -> SecureChatModel {
    let doc = cluster::example_doc(
        "examples/chatglm3-secure.yaml",
        "SecureChatModel",
        namespace,
    );
    serde_yaml::from_value(doc).expect("example parses")
}

async fn pods_of(client: &Client, namespace: &str, model: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("securechat.dev/model={model}")))
        .await
        .expect("pods")
        .items
}

#[tokio::test]
async fn the_seed_example_runs_on_an_a100_and_a_noop_reconcile_writes_nothing() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "seed").await;
    let operator = Operator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let offset = audit_log_offset();

    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    let model = example_model(&ns.name);
    let name = model.name_any();
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create the example");
    let started = Instant::now();
    await_condition(
        models.clone(),
        &name,
        "Ready=True",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| is(m, "Ready", "True"),
    )
    .await;
    let first = operator.writes_since(offset);
    eprintln!(
        "example Ready in {:?} with {} API writes by the operator: {:?}",
        started.elapsed(),
        first.len(),
        first
            .iter()
            .map(|w| format!("{} {}", w.verb, w.resource))
            .collect::<Vec<_>>()
    );
    assert!(
        first
            .iter()
            .all(|w| w.namespace.as_deref() == Some(&ns.name)),
        "the operator wrote outside its namespace: {first:?}"
    );

    // The pod is on an A100 node, placed by the real scheduler.
    let pods = pods_of(&client, &ns.name, &name).await;
    assert_eq!(pods.len(), 1);
    let node = pods[0].spec.as_ref().and_then(|s| s.node_name.clone());
    assert!(
        node.as_deref().is_some_and(|n| n.starts_with("gpu-a100")),
        "{node:?}"
    );

    // Every child with the fields the example asks for.
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get(&name)
        .await
        .expect("deployment");
    let pod = deployment.spec.template.spec.expect("pod");
    let container = &pod.containers[0];
    let limits = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .expect("limits");
    assert_eq!(limits["nvidia.com/gpu"].0, "1");
    assert_eq!(
        pod.node_selector.expect("node selector")["nvidia.com/gpu.product"],
        "NVIDIA-A100-SXM4-80GB"
    );
    assert!(
        pod.tolerations
            .expect("tolerations")
            .iter()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu"))
    );
    let security = container
        .security_context
        .as_ref()
        .expect("security context");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));

    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), &ns.name)
        .get(&name)
        .await
        .expect("network policy")
        .spec
        .expect("spec");
    let ingress = policy.ingress.expect("ingress");
    let cidrs: Vec<(i32, String)> = ingress
        .iter()
        .flat_map(|rule| {
            let port = match rule.ports.as_ref().unwrap()[0].port.as_ref().unwrap() {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
                other => panic!("{other:?}"),
            };
            rule.from
                .iter()
                .flatten()
                .filter_map(move |p| Some((port, p.ip_block.as_ref()?.cidr.clone())))
        })
        .collect();
    assert_eq!(
        cidrs,
        [
            (8501, "0.0.0.0/0".to_string()),
            (8000, "10.0.0.0/16".to_string())
        ]
    );
    assert_eq!(
        policy.policy_types.expect("types"),
        ["Ingress".to_string(), "Egress".to_string()]
    );

    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .get(&format!("{name}-config"))
        .await
        .expect("config map");
    let config =
        ServerConfig::from_yaml(&config.data.expect("data")["config.yaml"]).expect("server config");
    assert_eq!(config.rate_limit.requests_per_minute, 10);
    let service = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get(&name)
        .await
        .expect("service");
    let mut ports: Vec<i32> = service
        .spec
        .expect("spec")
        .ports
        .expect("ports")
        .iter()
        .map(|p| p.port)
        .collect();
    ports.sort();
    assert_eq!(ports, [8000, 8501]);

    // A reconcile with nothing to do makes zero write requests, as counted
    // by the API server itself.
    let writes = operator.noop_reconcile_writes(&models, &name).await;
    assert!(writes.is_empty(), "a no-op reconcile wrote: {writes:?}");
    assert_eq!(operator.failed_reconciles(), 0);

    // Deleting the model garbage-collects every child.
    models
        .delete(&name, &DeleteParams::foreground())
        .await
        .expect("delete");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let selector = format!("securechat.dev/model={name}");
    wait_for(
        "every child to be garbage-collected",
        Duration::from_secs(90),
        || {
            let (secrets, deployments, selector) = (
                secrets.clone(),
                Api::<Deployment>::namespaced(client.clone(), &ns.name),
                selector.clone(),
            );
            async move {
                let lp = ListParams::default().labels(&selector);
                let s = secrets.list(&lp).await.ok()?.items.len();
                let d = deployments.list(&lp).await.ok()?.items.len();
                (s == 0 && d == 0).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn two_gpus_on_an_a100_are_unschedulable_until_moved_to_the_h100() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "gpu").await;
    let _operator = Operator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": "big", "namespace": ns.name},
        "spec": {"resources": {"gpu": {"count": 2, "product": "NVIDIA-A100-SXM4-80GB"}}}
    }))
    .unwrap();
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create");
    let stuck = await_condition(
        models.clone(),
        "big",
        "Available=False/Unschedulable",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| {
            condition(m, "Available").is_some_and(|(s, r, _)| s == "False" && r == "Unschedulable")
        },
    )
    .await;
    let (_, _, message) = condition(Some(&stuck), "Available").unwrap();
    assert!(
        message.contains("Insufficient nvidia.com/gpu"),
        "the scheduler's message is shown: {message}"
    );
    let (_, ready_reason, _) = condition(Some(&stuck), "Ready").unwrap();
    assert_eq!(ready_reason, "Unschedulable");

    models
        .patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"resources": {"gpu": {"product": "NVIDIA-H100-80GB-HBM3"}}}}),
            ),
        )
        .await
        .expect("move to H100");
    await_condition(
        models.clone(),
        "big",
        "Ready=True on the H100",
        Duration::from_secs(120),
        |m: Option<&SecureChatModel>| is(m, "Ready", "True"),
    )
    .await;
    let running: Vec<String> = pods_of(&client, &ns.name, "big")
        .await
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(running, ["gpu-h100-0"]);
}

#[tokio::test]
async fn drift_is_reverted_and_a_missing_existing_secret_is_a_condition_not_a_crash_loop() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "drift").await;
    let operator = Operator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": "d", "namespace": ns.name},
        "spec": {"network": {"ingress": [{"port": 8000, "from": ["10.0.0.0/16"]}]}}
    }))
    .unwrap();
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create");
    await_condition(
        models.clone(),
        "d",
        "Ready=True",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| is(m, "Ready", "True"),
    )
    .await;

    // Someone opens the API port to the world and deletes the Service.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    let original = policies.get("d").await.expect("policy").spec;
    policies
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}}),
            ),
        )
        .await
        .expect("edit policy");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .delete("d", &DeleteParams::default())
        .await
        .expect("delete service");
    wait_for(
        "policy and Service restored",
        Duration::from_secs(30),
        || {
            let (policies, services, original) =
                (policies.clone(), services.clone(), original.clone());
            async move {
                let policy = policies.get("d").await.ok()?;
                let service = services.get_opt("d").await.ok()??;
                (policy.spec == original && service.metadata.deletion_timestamp.is_none())
                    .then_some(())
            }
        },
    )
    .await;

    // A reference to a Secret that does not exist: a condition that says
    // so, the last good objects stay, and no hot error loop.
    let errors_before = operator.failed_reconciles();
    models
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"tls": {"mode": "ExistingSecret", "secretName": "corp-cert"}}}),
            ),
        )
        .await
        .expect("switch to ExistingSecret");
    let broken = await_condition(
        models.clone(),
        "d",
        "TLSReady=False",
        Duration::from_secs(30),
        |m: Option<&SecureChatModel>| is(m, "TLSReady", "False"),
    )
    .await;
    let (_, reason, message) = condition(Some(&broken), "TLSReady").unwrap();
    assert_eq!(reason, "SecretNotFound");
    assert!(message.contains("corp-cert"), "{message}");
    assert!(is(Some(&broken), "Ready", "False"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        operator.failed_reconciles(),
        errors_before,
        "a missing Secret is a condition, not a reconcile error"
    );

    // Creating the Secret heals it.
    let tls = Api::<Secret>::namespaced(client.clone(), &ns.name)
        .get("d-tls")
        .await
        .expect("generated tls secret");
    let mut corp = Secret {
        data: tls.data.clone(),
        type_: tls.type_.clone(),
        ..Default::default()
    };
    corp.metadata.name = Some("corp-cert".into());
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &corp)
        .await
        .expect("create corp-cert");
    // Secrets are not watched; the model is poked instead of waiting for
    // the periodic requeue.
    models
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": "1"}}})),
        )
        .await
        .expect("poke");
    await_condition(
        models.clone(),
        "d",
        "TLSReady=True",
        Duration::from_secs(30),
        |m: Option<&SecureChatModel>| is(m, "TLSReady", "True"),
    )
    .await;
}

#[tokio::test]
async fn an_operator_restarted_mid_reconcile_converges_to_the_same_state() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "restart").await;
    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": "r", "namespace": ns.name}, "spec": {}
    }))
    .unwrap();
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create");
    let user_agent = format!("securechat-test/{}", ns.name);
    let offset = audit_log_offset();
    let first = Operator::start(&ns.name, &user_agent).await;
    // Stop it as soon as it has written something, mid-reconcile.
    wait_for("the first write", Duration::from_secs(30), || {
        let n = first.writes_since(offset).len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    drop(first);
    let partial = audit_writes(offset, &user_agent);
    eprintln!("stopped after {} write(s): {partial:?}", partial.len());

    let second = Operator::start(&ns.name, &user_agent).await;
    await_condition(
        models.clone(),
        "r",
        "Ready=True after restart",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| is(m, "Ready", "True"),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let keys_uid = secrets.get("r-signing-keys").await.expect("keys").uid();
    let tls_uid = secrets.get("r-tls").await.expect("tls").uid();
    // A third operator finds nothing to do, and keeps the key material.
    drop(second);
    let third = Operator::start(&ns.name, &user_agent).await;
    let writes = third.noop_reconcile_writes(&models, "r").await;
    assert!(
        writes.is_empty(),
        "a fresh operator rewrote converged state: {writes:?}"
    );
    assert_eq!(secrets.get("r-signing-keys").await.unwrap().uid(), keys_uid);
    assert_eq!(secrets.get("r-tls").await.unwrap().uid(), tls_uid);
}

/// np-guard's list of allowed connections: (source, destination, conn).
fn np_guard_connections(dir: &std::path::Path) -> Vec<(String, String, String)> {
    let out = std::process::Command::new(cluster::tool("k8snetpolicy"))
        .args(["list", "--quiet", "-o", "json", "--dirpath"])
        .arg(dir)
        .output()
        .expect("run k8snetpolicy");
    assert!(
        out.status.success(),
        "k8snetpolicy list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("list json");
    list.iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().expect("string field").to_string();
            (s("src"), s("dst"), s("conn"))
        })
        .collect()
}

fn ipv4(s: &str) -> u32 {
    u32::from(s.parse::<std::net::Ipv4Addr>().expect("IPv4"))
}

/// Whether the evaluator lists TCP `port` from `ip` to `target` as allowed.
/// Sources are printed as address ranges ("10.0.0.0-10.0.255.255"),
/// connections as "All Connections" or "TCP 8000,8501" (ranges "a-b").
fn allowed_from_ip(
    connections: &[(String, String, String)],
    ip: &str,
    target: &str,
    port: u16,
) -> bool {
    let ip = ipv4(ip);
    connections.iter().any(|(src, dst, conn)| {
        // Pods and workloads ("ns/name[Pod]") are not address ranges.
        let in_range = !src.contains('/')
            && match src.split_once('-') {
                Some((lo, hi)) => (ipv4(lo)..=ipv4(hi)).contains(&ip),
                None => ipv4(src) == ip,
            };
        in_range
            && dst == target
            && (conn == "All Connections"
                || conn.split(';').any(|part| {
                    let part = part.trim();
                    part.strip_prefix("TCP ").is_some_and(|ports| {
                        ports.split(',').any(|p| match p.split_once('-') {
                            Some((lo, hi)) => {
                                (lo.parse().unwrap_or(0)..=hi.parse().unwrap_or(0)).contains(&port)
                            }
                            None => p.parse() == Ok(port),
                        })
                    })
                }))
    })
}

/// Asks np-guard's NetworkPolicy evaluator whether a connection is allowed
/// by the policies and pods in `dir`.
fn np_guard_allows(dir: &std::path::Path, args: &[&str]) -> bool {
    let out = std::process::Command::new(cluster::tool("k8snetpolicy"))
        .args(["eval", "--quiet", "--dirpath"])
        .arg(dir)
        .args(args)
        .output()
        .expect("run k8snetpolicy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "k8snetpolicy eval {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match stdout.trim().rsplit(' ').next() {
        Some("true") => true,
        Some("false") => false,
        _ => panic!("unexpected k8snetpolicy output for {args:?}: {stdout}"),
    }
}

#[tokio::test]
async fn the_network_policy_means_what_the_security_group_says_per_a_real_evaluator() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "netpol").await;
    let _operator = Operator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    // The seed's security group, without a GPU so it does not compete with
    // the other tests for the A100s.
    let mut model = example_model(&ns.name);
    model.spec.resources.gpu.count = 0;
    model.spec.resources.gpu.product = None;
    let name = model.name_any();
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create");
    await_condition(
        models.clone(),
        &name,
        "Ready=True",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| is(m, "Ready", "True"),
    )
    .await;
    let pod = pods_of(&client, &ns.name, &name)
        .await
        .into_iter()
        .next()
        .expect("a pod")
        .name_any();

    // What the evaluator reads: the model's pods and policy as the API
    // server holds them, the namespaces, and a stand-in cluster DNS pod.
    let dir = std::env::temp_dir().join(format!("securechat-netpol-{}", ns.name));
    evaluator_input(
        &dir,
        &ns.name,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}\n\
         spec: {containers: [{name: coredns, image: coredns, ports: [{containerPort: 53, protocol: UDP}]}]}\n\
         status: {podIP: 10.0.0.10, hostIP: 10.0.0.10}\n",
    );

    // Ingress from external addresses comes from the evaluator's full
    // connectivity list (its `eval --source-ip` needs a destination IP as
    // well in v1.4.4, which cannot name a pod).
    let connections = np_guard_connections(&dir);
    let target = format!("{}/{pod}[Pod]", ns.name);
    let from_ip = |ip: &str, port: &str| {
        allowed_from_ip(&connections, ip, &target, port.parse().expect("port"))
    };
    assert!(from_ip("10.0.5.7", "8000"), "API from the internal network");
    assert!(
        !from_ip("192.168.1.10", "8000"),
        "API from outside 10.0.0.0/16"
    );
    assert!(from_ip("192.168.1.10", "8501"), "web from anywhere");
    assert!(from_ip("203.0.113.9", "8501"), "web from anywhere");
    assert!(!from_ip("10.0.5.7", "22"), "no SSH");
    assert!(!from_ip("10.0.5.7", "9090"), "no other port");

    let from_pod = ["-s", pod.as_str(), "-n", ns.name.as_str()];
    let egress = |extra: &[&str]| {
        let mut args = from_pod.to_vec();
        args.extend(extra);
        np_guard_allows(&dir, &args)
    };
    assert!(
        egress(&[
            "-d",
            "coredns",
            "--destination-namespace",
            "kube-system",
            "-p",
            "53",
            "--protocol",
            "udp"
        ]),
        "DNS to the cluster resolver"
    );
    assert!(
        !egress(&["--destination-ip", "8.8.8.8", "-p", "443"]),
        "no egress to the internet"
    );
    assert!(
        !egress(&["--destination-ip", "10.0.5.7", "-p", "5432"]),
        "no egress inside the cluster either"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes what k8snetpolicy reads for a model: its pods and policy as the
/// API server holds them, its namespace and kube-system (with their
/// labels), and `extra` (stand-in objects, YAML).
fn evaluator_input(dir: &std::path::Path, namespace: &str, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let live = cluster::kubectl_ok(&["get", "pods,networkpolicies", "-n", namespace, "-o", "json"]);
    let mut live: serde_json::Value = serde_json::from_str(&live).expect("kubectl json");
    // Owner references make the evaluator report the ReplicaSet instead
    // of the pod; the policy selects pods by label either way.
    for item in live["items"].as_array_mut().expect("items") {
        item["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("ownerReferences");
    }
    std::fs::write(dir.join("model.json"), live.to_string()).unwrap();
    let namespaces =
        cluster::kubectl_ok(&["get", "namespace", namespace, "kube-system", "-o", "yaml"]);
    std::fs::write(dir.join("namespaces.yaml"), namespaces).unwrap();
    std::fs::write(dir.join("extra.yaml"), extra).unwrap();
}

#[tokio::test]
async fn the_shared_store_is_reachable_on_its_port_only_per_a_real_evaluator() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "netpol-store").await;
    let _operator = Operator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    // A Valkey in the cluster (namespace infra, its pods by label), and an
    // external replica's range: both on the address's port.
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": "store"},
        "spec": {"replicas": 1, "sharedState": {
            "address": "valkey.infra.svc:6379",
            "network": {
                "to": ["192.0.2.0/24"],
                "toNamespaces": {"matchLabels": {"kubernetes.io/metadata.name": "infra"}},
                "toPods": {"matchLabels": {"app.kubernetes.io/name": "valkey"}}
            }
        }}
    }))
    .expect("model");
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create");
    await_condition(
        models.clone(),
        "store",
        "Ready=True",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| is(m, "Ready", "True"),
    )
    .await;
    let pod = pods_of(&client, &ns.name, "store")
        .await
        .into_iter()
        .next()
        .expect("a pod")
        .name_any();

    // Stand-ins: the store's namespace and pod, and a pod beside it that
    // is not the store.
    let dir = std::env::temp_dir().join(format!("securechat-netpol-{}", ns.name));
    evaluator_input(
        &dir,
        &ns.name,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: infra, labels: {kubernetes.io/metadata.name: infra}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: valkey-0, namespace: infra, labels: {app.kubernetes.io/name: valkey}}\n\
         spec: {containers: [{name: valkey, image: valkey, ports: [{containerPort: 6379}]}]}\n\
         status: {podIP: 10.0.7.7, hostIP: 10.0.7.7}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: other-0, namespace: infra, labels: {app.kubernetes.io/name: other}}\n\
         spec: {containers: [{name: other, image: other, ports: [{containerPort: 6379}]}]}\n\
         status: {podIP: 10.0.7.8, hostIP: 10.0.7.8}\n",
    );
    let from_pod = ["-s", pod.as_str(), "-n", ns.name.as_str()];
    let egress = |extra: &[&str]| {
        let mut args = from_pod.to_vec();
        args.extend(extra);
        np_guard_allows(&dir, &args)
    };
    let to_pod = |name: &str, port: &str| {
        egress(&["-d", name, "--destination-namespace", "infra", "-p", port])
    };
    assert!(to_pod("valkey-0", "6379"), "the store's pod on its port");
    assert!(!to_pod("valkey-0", "6380"), "no other port of the store");
    assert!(!to_pod("other-0", "6379"), "no other pod of its namespace");
    let to_ip = |ip: &str, port: &str| egress(&["--destination-ip", ip, "-p", port]);
    assert!(to_ip("192.0.2.5", "6379"), "the store's external range");
    assert!(
        !to_ip("198.51.100.1", "6379"),
        "no address outside the ranges"
    );
    assert!(!to_ip("192.0.2.5", "443"), "no other port in the range");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn signing_keys_rotate_through_next_active_previous_on_request() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "rotate").await;
    let _operator = Operator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": "k", "namespace": ns.name},
        // The shortest grace admission allows: it must cover tokenTTL,
        // whose least is 1m.
        "spec": {"replicas": 0, "auth": {"tokenTTL": "1m"},
                 "signingKeys": {"rotationPeriod": "5m", "gracePeriod": "1m"}}
    }))
    .unwrap();
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create");
    let keys_status = |m: Option<&SecureChatModel>| {
        m.and_then(|m| m.status.as_ref())
            .and_then(|s| s.signing_keys.clone())
            .unwrap_or_default()
    };
    let ready = await_condition(
        models.clone(),
        "k",
        "an active key",
        CONDITION_WAIT,
        |m: Option<&SecureChatModel>| keys_status(m).active_kid.is_some(),
    )
    .await;
    let first = keys_status(Some(&ready)).active_kid.unwrap();
    let keyset = || async {
        let secret = Api::<Secret>::namespaced(client.clone(), &ns.name)
            .get("k-signing-keys")
            .await
            .expect("keyset secret");
        serde_json::from_slice::<securechat_crds::files::keyset::SigningKeySet>(
            &secret.data.expect("data")["keyset.json"].0,
        )
        .expect("keyset")
    };

    // Incident response: rotate now.
    models
        .patch(
            "k",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"securechat.dev/rotate-signing-keys": "incident-1"}}})),
        )
        .await
        .expect("rotate now");
    let published = await_condition(
        models.clone(),
        "k",
        "a Next key published",
        Duration::from_secs(30),
        |m: Option<&SecureChatModel>| keys_status(m).next_kid.is_some(),
    )
    .await;
    let second = keys_status(Some(&published)).next_kid.unwrap();
    assert_eq!(
        keys_status(Some(&published)).active_kid,
        Some(first.clone()),
        "the old key still signs"
    );
    let set = keyset().await;
    assert_eq!(set.keys.len(), 2);
    set.validate().expect("valid while rotating");

    // After the propagation time the new key signs and the old verifies.
    let promoted = await_condition(
        models.clone(),
        "k",
        "the new key active",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| keys_status(m).active_kid.as_deref() == Some(second.as_str()),
    )
    .await;
    assert_eq!(
        keys_status(Some(&promoted)).previous_kid,
        Some(first.clone())
    );
    let set = keyset().await;
    let previous = set
        .keys
        .iter()
        .find(|k| k.kid == first)
        .expect("old key kept");
    assert!(
        previous.not_after > chrono::Utc::now(),
        "verifies during the grace"
    );

    // After the grace, the old key is gone; the request was handled once.
    await_condition(
        models.clone(),
        "k",
        "the previous key removed",
        Duration::from_secs(120),
        |m: Option<&SecureChatModel>| {
            let s = keys_status(m);
            s.previous_kid.is_none() && s.active_kid.as_deref() == Some(second.as_str())
        },
    )
    .await;
    let set = keyset().await;
    assert_eq!(set.keys.len(), 1);
    assert_eq!(set.keys[0].kid, second);
    assert!(
        keys_status(Some(&models.get("k").await.unwrap()))
            .next_kid
            .is_none(),
        "rotate-now acted once"
    );
}

/// Whether a server certificate (PEM) chains to one of the CAs in `bundle`
/// (PEM), checked the way a rustls client checks it.
fn trusted_by(bundle: &str, leaf: &str, host: &str) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(ca.expect("bundle PEM")).expect("CA accepted");
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("verifier");
    let leaf = CertificateDer::from_pem_slice(leaf.as_bytes()).expect("leaf PEM");
    let host = ServerName::try_from(host.to_string()).expect("host");
    verifier
        .verify_server_cert(&leaf, &[], &host, &[], UnixTime::now())
        .is_ok()
}

/// CA rotation (issue 5/8): the bundle holds old and new CA around the
/// switch, the server certificate is re-signed only after the new CA has
/// been in the bundle for the overlap, the old CA leaves the bundle only
/// after another overlap, and API-key consumers' ca.crt follows the bundle.
#[tokio::test]
async fn a_ca_rotation_keeps_clients_trusting_the_served_certificate_throughout() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "carot").await;
    let _operator =
        cluster::InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;

    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": "c", "namespace": ns.name},
        "spec": {"replicas": 0, "tls": {"caOverlap": "10s"}}
    }))
    .unwrap();
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create model");
    let keys: Api<securechat_crds::ChatApiKey> = Api::namespaced(client.clone(), &ns.name);
    keys.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
            "metadata": {"name": "app", "namespace": ns.name},
            "spec": {"modelRef": {"name": "c"}, "secretName": "app-key"}
        }))
        .unwrap(),
    )
    .await
    .expect("create key");

    let host = format!("c.{}.svc", ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let text = |s: &Secret, key: &str| {
        String::from_utf8(s.data.as_ref().expect("data")[key].0.clone()).expect("utf-8")
    };
    let bundle = || async {
        Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
            .get("c-ca-bundle")
            .await
            .expect("bundle")
            .data
            .expect("data")["ca.crt"]
            .clone()
    };
    let served = || async { text(&secrets.get("c-tls").await.expect("tls"), "tls.crt") };
    let consumer_ca = || async {
        secrets
            .get_opt("app-key")
            .await
            .expect("get")
            .map(|s| text(&s, "ca.crt"))
    };
    let tls_status = |m: Option<&SecureChatModel>| {
        m.and_then(|m| m.status.as_ref())
            .and_then(|s| s.tls.clone())
            .unwrap_or_default()
    };
    let size = |m: Option<&SecureChatModel>| tls_status(m).ca_bundle_size;

    await_condition(
        models.clone(),
        "c",
        "one CA",
        CONDITION_WAIT,
        |m: Option<&SecureChatModel>| size(m) == Some(1),
    )
    .await;
    let first_ca = bundle().await;
    let first_leaf = served().await;
    assert!(trusted_by(&first_ca, &first_leaf, &host));
    wait_for(
        "the consumer Secret with the CA",
        Duration::from_secs(30),
        || async { (consumer_ca().await.as_deref() == Some(first_ca.as_str())).then_some(()) },
    )
    .await;

    models
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"securechat.dev/rotate-ca": "incident-7"}}}),
            ),
        )
        .await
        .expect("rotate the CA");
    let published = Instant::now();
    await_condition(
        models.clone(),
        "c",
        "two CAs",
        Duration::from_secs(30),
        |m: Option<&SecureChatModel>| size(m) == Some(2),
    )
    .await;
    let both = bundle().await;
    assert!(
        both.starts_with(&first_ca),
        "the old CA stays first: {both}"
    );
    assert_eq!(both.matches("BEGIN CERTIFICATE").count(), 2);
    // The consumers learn the new CA while the old one still signs.
    wait_for(
        "the consumer Secret with both CAs",
        Duration::from_secs(8),
        || async { (consumer_ca().await.as_deref() == Some(both.as_str())).then_some(()) },
    )
    .await;

    // Until the overlap is over, the old certificate is served; afterwards
    // the new CA signs a new one, and both are trusted by the bundle.
    let mut saw_switch = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let leaf = served().await;
        let current = bundle().await;
        assert!(
            trusted_by(&current, &leaf, &host),
            "the served certificate is trusted by the bundle at every moment"
        );
        if leaf != first_leaf {
            saw_switch = Some(published.elapsed());
            assert!(
                trusted_by(&current, &first_leaf, &host),
                "old one still trusted"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let switched_after = saw_switch.expect("the certificate was re-signed by the new CA");
    assert!(
        switched_after >= Duration::from_secs(9),
        "the new CA signed only after the overlap: {switched_after:?}"
    );
    let second_leaf = served().await;
    assert!(
        !trusted_by(&first_ca, &second_leaf, &host),
        "signed by the new CA"
    );

    // After another overlap the old CA leaves the bundle and the consumers.
    let done = await_condition(
        models.clone(),
        "c",
        "one CA again",
        Duration::from_secs(40),
        |m: Option<&SecureChatModel>| size(m) == Some(1),
    )
    .await;
    let last = bundle().await;
    assert_ne!(last, first_ca);
    assert!(trusted_by(&last, &second_leaf, &host));
    assert!(!trusted_by(&last, &first_leaf, &host));
    wait_for(
        "the consumer Secret with the new CA only",
        Duration::from_secs(30),
        || async { (consumer_ca().await.as_deref() == Some(last.as_str())).then_some(()) },
    )
    .await;
    assert_eq!(
        condition(Some(&done), "TLSReady").map(|c| c.1),
        Some("CertificateIssued".into())
    );
    // The request was handled once: no second rotation starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(size(Some(&models.get("c").await.unwrap())), Some(1));
}

/// A certificate that cannot be renewed (here: the CA key in the CA Secret
/// was damaged) is a condition, a metric and an event, not a silent retry
/// loop; repairing the CA recovers.
#[tokio::test]
async fn a_failed_certificate_renewal_is_a_condition_and_a_metric() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "renewfail").await;
    let operator = Operator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": "r", "namespace": ns.name},
        "spec": {"replicas": 0}
    }))
    .unwrap();
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create");
    await_condition(
        models.clone(),
        "r",
        "a certificate",
        CONDITION_WAIT,
        |m: Option<&SecureChatModel>| is(m, "TLSReady", "True"),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let good_ca = secrets.get("r-ca").await.expect("CA secret");
    secrets
        .patch(
            "r-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"ca.key": "bm90IGEga2V5"}})),
        )
        .await
        .expect("damage the CA key");
    secrets
        .delete("r-tls", &DeleteParams::default())
        .await
        .expect("delete the certificate");
    // Certificate Secrets are not watched (renewal is driven by time): a
    // change to the model starts the reconcile that meets the damage.
    let poke = |value: &'static str| {
        let models = models.clone();
        async move {
            models
                .patch(
                    "r",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {"test/poke": value}}})),
                )
                .await
                .expect("poke the model");
        }
    };
    poke("1").await;
    let failed = await_condition(
        models.clone(),
        "r",
        "TLSReady=False/RenewalFailed",
        CONDITION_WAIT,
        |m: Option<&SecureChatModel>| {
            condition(m, "TLSReady").is_some_and(|c| c.0 == "False" && c.1 == "RenewalFailed")
        },
    )
    .await;
    let message = condition(Some(&failed), "TLSReady").unwrap().2;
    assert!(message.contains("tls"), "{message}");
    let text = operator.metrics.render();
    assert!(
        metric(
            &text,
            "securechat_operator_material_failures_total{material=\"tls\"}"
        ) >= 1,
        "{text}"
    );

    // Repaired: the certificate is issued again and the condition clears.
    let key = good_ca.data.as_ref().expect("data")["ca.key"].clone();
    secrets
        .patch(
            "r-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"ca.key": key}})),
        )
        .await
        .expect("repair the CA key");
    poke("2").await;
    await_condition(
        models.clone(),
        "r",
        "TLSReady again",
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| is(m, "TLSReady", "True"),
    )
    .await;
    assert!(secrets.get_opt("r-tls").await.unwrap().is_some());
}
