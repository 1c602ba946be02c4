//! Chaos on the real node (issue 5/9), under a steady load through the
//! model's Service (kube-proxy) against its 2 replicas, each request a new
//! connection (a new client), so every one is balanced afresh:
//!
//! 1. The server container of one pod is SIGKILLed from the host: the
//!    kubelet restarts it in place. Until its endpoint leaves the Service,
//!    the dead pod refuses new connections (counted and printed); the
//!    client retries those as the openai SDKs do by default (2 retries,
//!    0.5 s and 1 s apart, each a new connection balanced afresh). As that
//!    client sees it, the only requests that fail are the ones in flight at
//!    the kill.
//! 2. One pod is evicted (the Eviction API, as `kubectl drain` does): the
//!    PodDisruptionBudget refuses evicting the other until the replacement
//!    is Ready, and the deleted pod keeps serving through its preStop sleep
//!    while the Service forgets it: not one request fails.
//! 3. The node's containerd restarts (tests/cluster/node-restart.sh): the
//!    containers run on in their shims, none restarts, not one request
//!    fails.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, EvictParams, ListParams};
use securechat_test_support::cluster::node::{HostProcess, Node};
use securechat_test_support::cluster::serving::https_client_resolving;
use securechat_test_support::cluster::{
    self as cluster, InProcessOperator, TestNamespace, client, install_crds, kubectl, wait_for,
};
use serde_json::json;

use crate::{consumer_credentials, create_cpu_model, create_key};

/// Requests a second, through the Service.
const RATE: u64 = 20;

/// Answers in a row through the Service before the load starts.
const WARM_UP: usize = 20;

#[derive(Debug)]
struct Outcome {
    sent: Instant,
    done: Instant,
    /// What the client ends with, after its retries of refused connections.
    result: Result<u16, Failure>,
    /// When each of its connections was refused (then retried).
    refused: Vec<Instant>,
}

/// The openai SDKs' default retry of a connection error: 2 retries, after
/// 0.5 s and 1 s (their exponential backoff, without the jitter). Only a
/// refused connection is retried here: it never reached a server, so any
/// method may be sent again; a request that reached a server and failed
/// stays failed.
const SDK_RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(500), Duration::from_millis(1000)];

#[derive(Debug)]
struct Failure {
    /// The connection never opened: the request reached no server.
    connect: bool,
    error: String,
}

impl Outcome {
    fn in_flight_at(&self, t: Instant) -> bool {
        self.sent <= t && t <= self.done
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_containers_and_evicted_pods_fail_no_request_beyond_those_in_flight() {
    let kube = client().await;
    let node = Node::get();
    let _turn = node.take_turn().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "node-chaos").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;

    let spec = json!({
        "replicas": 2,
        "network": {"ingress": [{"port": 8000, "from": ["0.0.0.0/0"]}]},
        "rateLimit": {"requestsPerMinute": 1000000}
    });
    create_cpu_model(&kube, &node, &ns.name, "m", spec).await;
    create_key(&kube, &ns.name, "app", "m").await;

    let pods: Api<Pod> = Api::namespaced(kube.clone(), &ns.name);
    let selector = securechat_operator::labels::selector("m")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    // A rollout settled, not merely two Ready pods: mid-rollout an old pod
    // that is about to stop can still be one of the two (CI, stop 29: a
    // connection refused through the Service before any fault).
    let ready = settled_pods(&kube, &ns.name, "m", &selector, 2).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.crt");
    let key = consumer_credentials(&kube, &ns.name, "app", &ca).await;
    let host = format!("m.{}.svc", ns.name);

    // Both pods accept the key (its table reached each pod's volume).
    for pod in &ready {
        let ip: std::net::IpAddr = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .expect("pod IP")
            .parse()
            .expect("IP");
        let addr = SocketAddr::new(ip, 8000);
        wait_for(
            &format!("the key accepted by {}", pod.name_any()),
            Duration::from_secs(120),
            || {
                let (ca, host, key) = (ca.clone(), host.clone(), key.clone());
                async move { (get_models(&ca, &host, addr, &key).await.ok()? == 200).then_some(()) }
            },
        )
        .await;
    }

    let cluster_ip = crate::cluster_ip(&kube, &ns.name, "m").await;
    let service = SocketAddr::new(cluster_ip, 8000);
    // kube-proxy routes only to the two pods: WARM_UP answers in a row
    // through the Service before any outcome counts.
    wait_for(
        "the Service answering through both pods",
        Duration::from_secs(60),
        || {
            let (ca, host, key) = (ca.clone(), host.clone(), key.clone());
            async move {
                for _ in 0..WARM_UP {
                    if get_models(&ca, &host, service, &key).await.ok()? != 200 {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let load = {
        let (stop, outcomes, ca, host, key) = (
            stop.clone(),
            outcomes.clone(),
            ca.clone(),
            host.clone(),
            key.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            let mut tasks = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (outcomes, ca, host, key) =
                    (outcomes.clone(), ca.clone(), host.clone(), key.clone());
                tasks.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let mut refused = Vec::new();
                    let mut retries = SDK_RETRY_DELAYS.iter();
                    let result = loop {
                        let attempt = Instant::now();
                        let result = get_models(&ca, &host, service, &key).await;
                        match (&result, retries.next()) {
                            (Err(f), Some(delay)) if f.connect => {
                                refused.push(attempt);
                                tokio::time::sleep(*delay).await;
                            }
                            _ => break result,
                        }
                    };
                    outcomes.lock().unwrap().push(Outcome {
                        sent,
                        done: Instant::now(),
                        result,
                        refused,
                    });
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        })
    };
    let settle = Duration::from_secs(3);
    tokio::time::sleep(settle).await;

    // 1. SIGKILL the first pod's server process; the kubelet restarts the
    // container in the same pod.
    let victim = &ready[0];
    let victim_name = victim.name_any();
    let container = victim
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].container_id.clone())
        .expect("container id");
    let process = HostProcess::of_container(&node, &container);
    let victim_ip = victim
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the victim's IP");
    let slices: Api<EndpointSlice> = Api::namespaced(kube.clone(), &ns.name);
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &process.pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {}", process.pid);
    // Polled every 50 ms: when the pod's endpoint stopped being ready.
    let endpoint_left = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=m"))
                .await;
            let still_ready = list.map_or(true, |list| {
                list.items
                    .into_iter()
                    .flat_map(|slice| slice.endpoints.unwrap_or_default())
                    .any(|e| {
                        e.addresses.contains(&victim_ip)
                            && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                    })
            });
            if !still_ready {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the killed pod's endpoint left the Service within 60 s");
    wait_for(
        "the killed container restarted and Ready",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            let name = victim_name.clone();
            async move {
                let pod = pods.get(&name).await.ok()?;
                let restarted = pod
                    .status
                    .as_ref()?
                    .container_statuses
                    .as_ref()?
                    .first()?
                    .restart_count
                    >= 1;
                (restarted && is_ready(&pod)).then_some(())
            }
        },
    )
    .await;
    let back = Instant::now();
    tokio::time::sleep(settle).await;

    // 2. Evict the other pod; the budget then refuses a second eviction
    // until the replacement is Ready.
    let evicted_name = ready[1].name_any();
    let evicted = Instant::now();
    pods.evict(&evicted_name, &EvictParams::default())
        .await
        .expect("the first eviction is allowed");
    // Through kubectl: kube's client retries a 429 until it passes.
    let eviction = dir.path().join("eviction.json");
    std::fs::write(
        &eviction,
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
               "metadata": {"name": victim_name, "namespace": ns.name}})
        .to_string(),
    )
    .expect("write the eviction");
    let (allowed, _, refusal) = kubectl(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/{}/pods/{victim_name}/eviction", ns.name),
        "-f",
        eviction.to_str().expect("utf-8 path"),
    ]);
    assert!(
        !allowed && refusal.contains("disruption budget"),
        "the budget let a second pod go: {refusal}"
    );
    let replacement = wait_for(
        "the evicted pod's replacement Ready",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            let (selector, gone, victim) =
                (selector.clone(), evicted_name.clone(), victim_name.clone());
            async move {
                let list = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?;
                list.items
                    .into_iter()
                    .find(|p| p.name_any() != gone && p.name_any() != victim && is_ready(p))
                    .map(|p| p.name_any())
            }
        },
    )
    .await;
    // The evicted pod is gone (its preStop sleep and drain over).
    wait_for("the evicted pod gone", Duration::from_secs(60), || {
        let pods = pods.clone();
        let gone = evicted_name.clone();
        async move { pods.get_opt(&gone).await.ok()?.is_none().then_some(()) }
    })
    .await;
    tokio::time::sleep(settle).await;

    // 3. containerd restarts (SIGTERM, started again): the containers run on
    // in their shims and the kubelet reconnects; nothing restarts.
    let restarts = |list: &[Pod]| -> Vec<(String, i32)> {
        list.iter()
            .map(|p| {
                let count = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first())
                    .map_or(-1, |c| c.restart_count);
                (p.name_any(), count)
            })
            .collect()
    };
    let before = restarts(&ready_pods(&pods, &selector, 2).await);
    let restarted = Instant::now();
    let out =
        std::process::Command::new(cluster::repo_root().join("tests/cluster/node-restart.sh"))
            .arg("containerd")
            .env("SECURECHAT_STATE_DIR", cluster::state_dir())
            .output()
            .expect("run node-restart.sh");
    assert!(
        out.status.success(),
        "node-restart.sh containerd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(settle).await;
    // The kubelet talks to the new containerd: an exec goes through it.
    let (ok, version, stderr) = kubectl(&[
        "-n",
        &ns.name,
        "exec",
        &victim_name,
        "--",
        "/usr/local/bin/securechat-server",
        "--version",
    ]);
    assert!(ok, "exec after the containerd restart: {version}{stderr}");
    let after = restarts(&ready_pods(&pods, &selector, 2).await);
    assert_eq!(after, before, "containers restarted with containerd");
    println!(
        "containerd restarted in {:.1}s",
        restarted.elapsed().as_secs_f64() - settle.as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !matches!(o.result, Ok(200)))
        .collect();
    let in_flight_at_kill = failed.iter().filter(|o| o.in_flight_at(killed)).count();
    // Connections the dead pod refused until its endpoint left the Service
    // (or its container was back), each retried as the SDKs do.
    let refused: Vec<f64> = outcomes
        .iter()
        .flat_map(|o| &o.refused)
        .map(|t| seconds_since(killed, *t))
        .collect();
    let (first, last) = refused
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    println!(
        "{} requests at {RATE}/s; kill: {in_flight_at_kill} failed in flight; {} connections \
         refused ({first:.2}s to {last:.2}s after the kill), each retried; container back after \
         {:.1}s; eviction and containerd restart: {} failed; replacement {replacement}",
        outcomes.len(),
        refused.len(),
        back.duration_since(killed).as_secs_f64(),
        failed.iter().filter(|o| o.sent >= evicted).count()
    );
    // Refused until the pod's endpoint left the Service (kubelet → API →
    // EndpointSlice → kube-proxy: nothing in the pod can shorten that) or
    // its container was back; retried, and refused again on every retry.
    let still_refused = |o: &&&Outcome| {
        matches!(&o.result, Err(f) if f.connect)
            && o.refused.iter().all(|t| *t >= killed && *t <= back)
    };
    let refused_to_the_end = failed.iter().filter(still_refused).count();
    println!(
        "the endpoint left the Service {:.2}s after the kill; {refused_to_the_end} requests were \
         refused on each of the SDKs' 2 retries",
        endpoint_left.duration_since(killed).as_secs_f64()
    );
    let unexplained: Vec<_> = failed
        .iter()
        .filter(|o| !o.in_flight_at(killed) && !still_refused(o))
        .map(|o| {
            (
                seconds_since(killed, o.sent),
                o.refused.len(),
                o.result.as_ref().map_err(|f| f.error.as_str()),
            )
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "requests failed beyond those in flight at the kill and the connections the dead pod \
         refused ((seconds since the kill, negative before it; connections refused; outcome)): \
         {unexplained:?}"
    );
    assert!(
        outcomes.iter().filter(|o| o.sent >= back).count() as u64 > RATE,
        "the load ran on after the faults"
    );
}

pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Seconds from `from` to `t`, negative when `t` is earlier.
fn seconds_since(from: Instant, t: Instant) -> f64 {
    match t.checked_duration_since(from) {
        Some(after) => after.as_secs_f64(),
        None => -from.duration_since(t).as_secs_f64(),
    }
}

/// The Deployment's `n` pods once its rollout has settled: every replica
/// updated and Ready, no other pod of the model (none terminating), and
/// the Service's EndpointSlices listing exactly their addresses as ready.
pub(crate) async fn settled_pods(
    kube: &kube::Client,
    namespace: &str,
    model: &str,
    selector: &str,
    n: usize,
) -> Vec<Pod> {
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(kube.clone(), namespace);
    let want = i32::try_from(n).expect("a small replica count");
    wait_for(
        &format!("the rollout of {model} settled on {n} Ready pods"),
        Duration::from_secs(240),
        || {
            let (deployments, pods, slices) = (deployments.clone(), pods.clone(), slices.clone());
            let selector = selector.to_string();
            async move {
                let deployment = deployments.get(model).await.ok()?;
                let status = deployment.status.as_ref()?;
                let settled = status.observed_generation == deployment.metadata.generation
                    && status.replicas == Some(want)
                    && status.updated_replicas == Some(want)
                    && status.ready_replicas == Some(want);
                if !settled {
                    return None;
                }
                let list = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?;
                if list.items.len() != n || !list.items.iter().all(is_ready) {
                    return None;
                }
                let mut pod_ips: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                    .collect();
                let mut endpoint_ips: Vec<String> = slices
                    .list(
                        &ListParams::default()
                            .labels(&format!("kubernetes.io/service-name={model}")),
                    )
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .flat_map(|slice| slice.endpoints.unwrap_or_default())
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                    .flat_map(|e| e.addresses)
                    .collect();
                pod_ips.sort();
                endpoint_ips.sort();
                (pod_ips == endpoint_ips).then_some(list.items)
            }
        },
    )
    .await
}

/// The Deployment's `n` pods once all are Ready.
async fn ready_pods(pods: &Api<Pod>, selector: &str, n: usize) -> Vec<Pod> {
    wait_for(
        &format!("{n} Ready pods of the model"),
        Duration::from_secs(240),
        || {
            let pods = pods.clone();
            let selector = selector.to_string();
            async move {
                let list = pods
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .ok()?;
                let ready: Vec<Pod> = list.items.into_iter().filter(is_ready).collect();
                (ready.len() == n).then_some(ready)
            }
        },
    )
    .await
}

/// GET /v1/models with a new client (a new connection), through `addr`.
async fn get_models(ca: &Path, host: &str, addr: SocketAddr, key: &str) -> Result<u16, Failure> {
    let http = https_client_resolving(ca, host, addr).map_err(|error| Failure {
        connect: false,
        error,
    })?;
    http.get(format!("https://{host}:8000/v1/models"))
        .bearer_auth(key)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| Failure {
            connect: e.is_connect(),
            error: format!("{e:?}"),
        })
}
