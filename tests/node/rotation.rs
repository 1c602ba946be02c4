//! Rotation through the real kubelet (issue 5/9): the certificate (a CA
//! rotation), the signing keys and an API key rotate while a steady load
//! runs against the model's pod on node-0 through its ClusterIP. Every
//! change reaches the running pod through the kubelet's Secret updates
//! (checked in the container's own files, from the host), with no restart
//! and no failed request.
//!
//! The client is an app outside the cluster: it reads its consumer
//! Secrets (key and CA bundle) from the API server as soon as they change,
//! which is the hardest case for the operator's phases (a pod's mounted
//! copy lags by up to the kubelet's sync period).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use securechat_crds::{ChatApiKey, SecureChatModel};
use securechat_test_support::cluster::node::{HostProcess, Node};
use securechat_test_support::cluster::serving::{https_client_resolving, read};
use securechat_test_support::cluster::{
    InProcessOperator, TestNamespace, await_condition, client, install_crds, wait_for,
};
use serde_json::json;

use crate::{create_cpu_model, ready_pod};

const RATE: u64 = 10;

/// One request of the load: which credential, when, and what came back.
#[derive(Debug)]
struct Outcome {
    jwt: bool,
    sent: Instant,
    result: Result<u16, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_signing_key_and_api_key_rotations_reach_the_running_pod_without_a_failed_request()
 {
    let kube = client().await;
    let node = Node::get();
    let _turn = node.take_turn().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "node-rot").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;

    let models: Api<SecureChatModel> = Api::namespaced(kube.clone(), &ns.name);
    let spec = json!({
        "replicas": 1,
        "network": {"ingress": [{"port": 8000, "from": ["0.0.0.0/0"]}]},
        // Longer than the kubelet's sync (10 s on node-0) plus
        // its jitter: the pod serves the new leaf before the
        // bundle drops the old CA.
        "tls": {"caOverlap": "60s"},
        "signingKeys": {"rotationPeriod": "10m", "gracePeriod": "5m"},
        // The grace must cover the tokens' lifetime (admission checks).
        "auth": {"tokenTTL": "5m"},
        "rateLimit": {"requestsPerMinute": 1000000}
    });
    create_cpu_model(&kube, &node, &ns.name, "m", spec).await;
    let keys: Api<ChatApiKey> = Api::namespaced(kube.clone(), &ns.name);
    // Rotation every 2 min: the operator hands the new key over
    // period/4 = 30 s after the table accepts it.
    for (name, rotation) in [
        ("app", json!({"period": "2m", "gracePeriod": "1m"})),
        ("minter", serde_json::Value::Null),
    ] {
        let mut spec = json!({"modelRef": {"name": "m"}, "tier": "Developer", "secretName": name});
        if !rotation.is_null() {
            spec["rotation"] = rotation;
        }
        keys.create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
                "metadata": {"name": name, "namespace": ns.name}, "spec": spec
            }))
            .unwrap(),
        )
        .await
        .expect("create a key");
    }

    let pod = ready_pod(&kube, &ns.name, "m").await;
    let pod_uid = pod.metadata.uid.clone().expect("pod uid");
    let container = pod
        .status
        .as_ref()
        .expect("status")
        .container_statuses
        .as_ref()
        .expect("statuses")[0]
        .container_id
        .clone()
        .expect("container id");
    let process = HostProcess::of_container(&node, &container);
    let cluster_ip = crate::cluster_ip(&kube, &ns.name, "m").await;
    let host = format!("m.{}.svc", ns.name);
    let addr = SocketAddr::new(cluster_ip, 8000);
    let base = format!("https://{host}:8000");

    // The app's view of its consumer Secrets, kept current from the API.
    let apps = tempfile::tempdir().expect("tempdir");
    let stop = Arc::new(AtomicBool::new(false));
    for name in ["app", "minter"] {
        follow_consumer(
            kube.clone(),
            &ns.name,
            name,
            apps.path().join(name),
            stop.clone(),
        );
    }
    let (app, minter) = (apps.path().join("app"), apps.path().join("minter"));
    for f in [
        app.join("api-key"),
        app.join("ca.crt"),
        minter.join("api-key"),
    ] {
        wait_for(
            &format!("{}", f.display()),
            Duration::from_secs(60),
            || async { f.exists().then_some(()) },
        )
        .await;
    }
    // Both keys accepted by the pod (their table reached its volume).
    for dir in [&app, &minter] {
        wait_for(
            "a key accepted by the pod",
            Duration::from_secs(120),
            || async {
                (get_models(dir, &host, addr, &base, &read(&dir.join("api-key"))?).await == Ok(200))
                    .then_some(())
            },
        )
        .await;
    }
    let first_leaf = mounted(&process, "/etc/securechat/tls/tls.crt");
    let first_key = read(&app.join("api-key")).expect("key");
    let first_kid = models
        .get("m")
        .await
        .expect("model")
        .status
        .and_then(|s| s.signing_keys)
        .and_then(|k| k.active_kid)
        .expect("an active signing key");

    // The load: RATE requests a second, alternating the rotating API key and
    // a JWT minted every 2 s from the steady key.
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let load = {
        let (outcomes, stop, app, minter, host, base) = (
            outcomes.clone(),
            stop.clone(),
            app.clone(),
            minter.clone(),
            host.clone(),
            base.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            let mut jwt = String::new();
            let mut in_flight = Vec::new();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                if n % (2 * RATE) == 1 {
                    let key = read(&minter.join("api-key")).unwrap_or_default();
                    match mint_jwt(&minter, &host, addr, &base, &key).await {
                        Ok(token) => jwt = token,
                        Err(e) => outcomes.lock().unwrap().push(Outcome {
                            jwt: true,
                            sent: Instant::now(),
                            result: Err(format!("minting: {e}")),
                        }),
                    }
                }
                let use_jwt = n.is_multiple_of(2);
                let (bearer, dir) = if use_jwt {
                    (jwt.clone(), minter.clone())
                } else {
                    (read(&app.join("api-key")).unwrap_or_default(), app.clone())
                };
                let (outcomes, host, base) = (outcomes.clone(), host.clone(), base.clone());
                in_flight.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let result = get_models(&dir, &host, addr, &base, &bearer).await;
                    outcomes.lock().unwrap().push(Outcome {
                        jwt: use_jwt,
                        sent,
                        result,
                    });
                }));
            }
            for task in in_flight {
                let _ = task.await;
            }
        })
    };

    let patch = |body: serde_json::Value| {
        let models = models.clone();
        async move {
            models
                .patch("m", &PatchParams::default(), &Patch::Merge(body))
                .await
                .expect("patch the model");
        }
    };
    let started = Instant::now();
    // 1. The CA and the certificate: the pod's mounted leaf changes.
    patch(json!({"metadata": {"annotations": {"securechat.dev/rotate-ca": "node-1"}}})).await;
    wait_for(
        "the new server certificate in the pod's volume",
        Duration::from_secs(240),
        || async { (mounted(&process, "/etc/securechat/tls/tls.crt") != first_leaf).then_some(()) },
    )
    .await;
    let certificate_took = started.elapsed();
    // 2. The signing keys: the new key id in the pod's keyset.
    let at = Instant::now();
    patch(json!({"metadata": {"annotations": {"securechat.dev/rotate-signing-keys": "node-1"}}}))
        .await;
    let rotated = await_condition(
        models.clone(),
        "m",
        "a new signing key active",
        Duration::from_secs(120),
        |m: Option<&SecureChatModel>| {
            m.and_then(|m| m.status.as_ref())
                .and_then(|s| s.signing_keys.as_ref())
                .is_some_and(|k| {
                    k.active_kid.is_some() && k.active_kid.as_ref() != Some(&first_kid)
                })
        },
    )
    .await;
    let new_kid = rotated
        .status
        .and_then(|s| s.signing_keys)
        .and_then(|k| k.active_kid)
        .expect("new kid");
    wait_for(
        "the new signing key in the pod's volume",
        Duration::from_secs(120),
        || async {
            mounted(&process, "/etc/securechat/signing-keys/keyset.json")
                .contains(&new_kid)
                .then_some(())
        },
    )
    .await;
    let signing_took = at.elapsed();
    // 3. The API key: handed over by the operator once the pod's table
    // accepts it; then a few seconds of traffic on the new key alone.
    let at = Instant::now();
    wait_for(
        "the API key rotated in the app's Secret",
        Duration::from_secs(300),
        || async {
            read(&app.join("api-key"))
                .filter(|k| *k != first_key)
                .map(|_| ())
        },
    )
    .await;
    let api_key_took = at.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("the load ran");

    // No restart: the same pod, its container never restarted.
    let pod = Api::<Pod>::namespaced(kube.clone(), &ns.name)
        .get(pod.metadata.name.as_deref().expect("name"))
        .await
        .expect("the pod is still there");
    assert_eq!(pod.metadata.uid.as_deref(), Some(pod_uid.as_str()));
    let restarts = pod
        .status
        .expect("status")
        .container_statuses
        .expect("statuses")[0]
        .restart_count;
    assert_eq!(restarts, 0, "the server restarted");

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    // Each failure with when it was sent, from the start of the rotations.
    let failed: Vec<(Duration, bool, &Result<u16, String>)> = outcomes
        .iter()
        .filter(|o| o.result != Ok(200))
        .map(|o| (o.sent.saturating_duration_since(started), o.jwt, &o.result))
        .collect();
    let jwts = outcomes.iter().filter(|o| o.jwt).count();
    println!(
        "node-0 rotation: {} requests ({} with the rotating API key, {jwts} with JWTs) over {:?}; \
         the new certificate reached the pod {certificate_took:?} after the CA rotation began, \
         the new signing key {signing_took:?} after its rotation began; the API key was handed \
         over {api_key_took:?} after that",
        outcomes.len(),
        outcomes.len() - jwts,
        started.elapsed(),
    );
    assert!(failed.is_empty(), "failed requests: {failed:#?}");
    assert!(
        outcomes.len() as u64 > 20 * RATE,
        "the load ran for a while: {} requests",
        outcomes.len()
    );
    // The key in use at the end is the rotated one, and the pod accepts it.
    let last = read(&app.join("api-key")).expect("key");
    assert_ne!(last, first_key);
    assert_eq!(get_models(&app, &host, addr, &base, &last).await, Ok(200));
}

/// A file of the server's container, as it reads it.
fn mounted(process: &HostProcess, path: &str) -> String {
    std::fs::read_to_string(process.path(path)).unwrap_or_default()
}

/// Keeps `dir` (`api-key`, `ca.crt`) equal to the consumer Secret `name`,
/// re-read every 200 ms until `stop`; each file replaced atomically.
fn follow_consumer(
    kube: kube::Client,
    namespace: &str,
    name: &str,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
) {
    let secrets: Api<Secret> = Api::namespaced(kube, namespace);
    let name = name.to_string();
    std::fs::create_dir_all(&dir).expect("app dir");
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Some(secret)) = secrets.get_opt(&name).await {
                for (key, value) in secret.data.unwrap_or_default() {
                    let tmp = dir.join(format!(".{key}.tmp"));
                    if std::fs::write(&tmp, &value.0).is_ok() {
                        let _ = std::fs::rename(&tmp, dir.join(&key));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

async fn get_models(
    app: &Path,
    host: &str,
    addr: SocketAddr,
    base: &str,
    bearer: &str,
) -> Result<u16, String> {
    https_client_resolving(&app.join("ca.crt"), host, addr)?
        .get(format!("{base}/v1/models"))
        .bearer_auth(bearer)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

async fn mint_jwt(
    app: &Path,
    host: &str,
    addr: SocketAddr,
    base: &str,
    key: &str,
) -> Result<String, String> {
    let response = https_client_resolving(&app.join("ca.crt"), host, addr)?
        .post(format!("{base}/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        // The key's characters are URL-safe (a base64url secret).
        .body(format!("grant_type=client_credentials&client_secret={key}"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    body["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("token endpoint answered {status}: {body}"))
}
