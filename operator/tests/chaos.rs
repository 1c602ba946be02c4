//! Chaos against the real control plane (issue 8/8):
//!
//! 1. The operator process is SIGKILLed at random points, and started again
//!    as the kubelet would restart its container, during the first converge
//!    of a model and its API keys and through every rotation (CA, signing
//!    keys, API key). Afterwards the state has converged, no key was lost or
//!    duplicated, and throughout, a server running on the projected Secrets
//!    answered every request made with a credential that should work.
//! 2. kube-apiserver and then etcd are SIGKILLed mid-reconcile and started
//!    again (tests/cluster/restart.sh): the operator reconnects and
//!    converges, and the server keeps serving with its last good files.
//!
//! The two tests take turns (the second restarts the shared control plane).
//! Kill times come from a seed printed at the start; CHAOS_SEED=N replays it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use securechat_crds::conditions::condition_status;
use securechat_crds::files::api_keys::{ApiKeyState, ApiKeyTable};
use securechat_crds::files::keyset::{KeyState, SigningKeySet};
use securechat_crds::{ChatApiKey, SecureChatModel};
use securechat_test_support::cluster::serving::{
    Credential, Outcome, ServedModel, get_models, mint_jwt, read,
};
use securechat_test_support::cluster::{
    self, TestNamespace, client, install_crds, kubeconfig_path, repo_root, wait_for,
};
use serde_json::json;

/// The second test restarts the API server under every client of the
/// cluster; the first must not be running then.
static TAKE_TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Requests per second against the server while the chaos runs.
const RATE: u64 = 20;

/// A small deterministic generator (splitmix64), so a failing run can be
/// replayed from its printed seed without another dependency.
struct Chance(u64);

impl Chance {
    fn from_env_or_clock() -> Self {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("chaos seed: CHAOS_SEED={seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration uniformly in `[lo, hi)` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// The operator binary as its Deployment runs it (leader election on, one
/// identity: a restarted container keeps its pod name, so it takes its own
/// lease back at once), restarted by the test where the kubelet would.
struct OperatorProcess {
    child: Option<Child>,
    namespace: String,
    lease_seconds: u64,
    log: PathBuf,
    /// Exits the test did not cause.
    crashes: u32,
}

impl OperatorProcess {
    fn start(namespace: &str, lease_seconds: u64) -> Self {
        let log = std::env::temp_dir().join(format!("securechat-chaos-{namespace}.log"));
        let _ = std::fs::remove_file(&log);
        let mut process = Self {
            child: None,
            namespace: namespace.into(),
            lease_seconds,
            log,
            crashes: 0,
        };
        process.spawn();
        process
    }

    /// Starts the process unless it is running.
    fn spawn(&mut self) {
        if self.child.is_some() {
            return;
        }
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("operator log");
        let retry = (self.lease_seconds / 4).max(1);
        let child = Command::new(env!("CARGO_BIN_EXE_securechat-operator"))
            .args(["run", "--namespace", &self.namespace])
            .args(["--lease-namespace", &self.namespace])
            .args(["--lease-duration-seconds", &self.lease_seconds.to_string()])
            .args(["--lease-retry-seconds", &retry.to_string()])
            .args(["--identity", "securechat-operator-0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", kubeconfig_path())
            .env("SECURECHAT_LOG_LEVEL", "info")
            // Plain text in the log file (read back in failure messages).
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(out.try_clone().expect("operator log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start securechat-operator");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs, the lease is not released.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts the process if it exited by itself (restartPolicy: Always).
    fn supervise(&mut self) {
        let exited = self
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some());
        if exited {
            self.crashes += 1;
            eprintln!("the operator exited by itself; starting it again");
            self.child = None;
            self.spawn();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// When the operator was SIGKILLed, by [`kill_at_random`] or [`kill_soon_after`].
type Kills = Arc<Mutex<Vec<Instant>>>;

/// Kills the operator at random points until stopped; every fourth life is
/// long enough for it to make progress.
fn kill_at_random(
    operator: Arc<Mutex<OperatorProcess>>,
    mut chance: Chance,
    stop: Arc<AtomicBool>,
    kills: Kills,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut life = 0u32;
        while !stop.load(Ordering::Relaxed) {
            life += 1;
            let uptime = if life.is_multiple_of(4) {
                chance.millis(3000, 6000)
            } else {
                chance.millis(150, 2500)
            };
            tokio::time::sleep(uptime).await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            {
                let mut operator = operator.lock().unwrap();
                operator.supervise();
                operator.kill();
            }
            kills.lock().unwrap().push(Instant::now());
            tokio::time::sleep(chance.millis(0, 600)).await;
            operator.lock().unwrap().spawn();
        }
    })
}

/// Two more kills early in a phase (100 ms and 400 ms after it began, each
/// restarted at once), so every phase is hit however the random lives
/// fall. A kill while the random killer has the process down is skipped.
async fn kill_soon_after(operator: &Arc<Mutex<OperatorProcess>>, kills: &Kills) {
    for delay in [100, 300] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let mut operator = operator.lock().unwrap();
        if operator.child.is_some() {
            operator.supervise();
            operator.kill();
            kills.lock().unwrap().push(Instant::now());
            operator.spawn();
        }
    }
}

/// Steady load against the server: the rotating API key (as the app's
/// mounted Secret has it at each moment) and JWTs minted every 2 s from a
/// second key. Every outcome is kept.
struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(served: &ServedModel, first_jwt: String) -> Self {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (app, minter, url) = (served.app("app"), served.app("minter"), served.url.clone());
        let task = {
            let (outcomes, stop) = (outcomes.clone(), stop.clone());
            tokio::spawn(async move {
                let mut jwt = first_jwt;
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
                let mut in_flight = Vec::new();
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    n += 1;
                    if n.is_multiple_of(2 * RATE) {
                        let key = read(&minter.join("api-key")).unwrap_or_default();
                        match mint_jwt(&minter, &url, &key).await {
                            Ok(token) => jwt = token,
                            Err(e) => outcomes.lock().unwrap().push(Outcome {
                                credential: Credential::Jwt,
                                sent: Instant::now(),
                                result: Err(format!("minting: {e}")),
                            }),
                        }
                    }
                    let (credential, bearer) = if n.is_multiple_of(2) {
                        let key = read(&app.join("api-key")).unwrap_or_default();
                        (Credential::ApiKey, key)
                    } else {
                        (Credential::Jwt, jwt.clone())
                    };
                    let (outcomes, app, url) = (outcomes.clone(), app.clone(), url.clone());
                    in_flight.push(tokio::spawn(async move {
                        let sent = Instant::now();
                        let result = get_models(&app, &url, &bearer).await;
                        outcomes.lock().unwrap().push(Outcome {
                            credential,
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
        Self {
            outcomes,
            stop,
            task,
        }
    }

    /// Stops the load and asserts every request succeeded.
    async fn finish(self, at_least: usize) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the load ran");
        let outcomes = self.outcomes.lock().unwrap();
        let began = outcomes.iter().map(|o| o.sent).min();
        let failed: Vec<String> = outcomes
            .iter()
            .filter(|o| o.result != Ok(200))
            .map(|o| {
                let at = began.map(|b| o.sent - b).unwrap_or_default();
                format!("{:?} at +{at:?}: {:?}", o.credential, o.result)
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{} of {} requests with a valid credential failed: {failed:#?}",
            failed.len(),
            outcomes.len()
        );
        assert!(
            outcomes.len() >= at_least,
            "the load ran: {} requests",
            outcomes.len()
        );
        let keyed = outcomes
            .iter()
            .filter(|o| o.credential == Credential::ApiKey)
            .count();
        eprintln!(
            "{} requests ({keyed} with the rotating API key, {} with JWTs), none failed",
            outcomes.len(),
            outcomes.len() - keyed
        );
        outcomes.len()
    }
}

fn model(name: &str) -> SecureChatModel {
    serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "tls": {"dnsNames": ["localhost"], "caOverlap": "5s"},
            "signingKeys": {"rotationPeriod": "10m", "gracePeriod": "5m"},
            // The grace must cover the tokens' lifetime (admission checks).
            "auth": {"tokenTTL": "5m"},
            "rateLimit": {"requestsPerMinute": 1000000}
        }
    }))
    .unwrap()
}

fn api_key(name: &str, model: &str, rotation: Option<serde_json::Value>) -> ChatApiKey {
    let mut spec = json!({"modelRef": {"name": model}, "tier": "Developer", "secretName": name});
    if let Some(rotation) = rotation {
        spec["rotation"] = rotation;
    }
    serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "ChatApiKey",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap()
}

/// Waits until the model's current generation is reconciled and Ready;
/// on timeout, says what its status was.
async fn model_ready(models: &Api<SecureChatModel>, name: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("(never read)");
    while Instant::now() < deadline {
        match models.get(name).await {
            Ok(m) => {
                if let Some(status) = m.status.as_ref()
                    && status.observed_generation == m.metadata.generation
                    && condition_status(&status.conditions, "Ready") == Some("True")
                {
                    return;
                }
                last = format!(
                    "generation {:?}, status {}",
                    m.metadata.generation,
                    serde_json::to_string(&m.status).unwrap_or_default()
                );
            }
            Err(e) => last = format!("reading it failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "timed out after {timeout:?} waiting for model {name} Ready; last seen: {last}\n{}",
        cluster_state(models.namespace().unwrap_or("default"))
    );
}

/// What the control plane holds for a namespace, and the tails of the
/// system components' logs: a stalled rollout says here which of the
/// scheduler, the controller manager or kwok stopped moving.
fn cluster_state(namespace: &str) -> String {
    let kubectl = |args: &[&str]| {
        let (_, stdout, stderr) = cluster::kubectl(&[&["-n", namespace], args].concat());
        stdout + &stderr
    };
    let mut out = String::new();
    // A node the node controller marked NotReady takes its pods' Ready.
    out += &kubectl(&["get", "nodes"]);
    out += &kubectl(&["get", "deployments,replicasets,pods", "-o", "wide"]);
    out += &kubectl(&[
        "get",
        "pods",
        "-o",
        "custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,PHASE:.status.phase,\
         CONDITIONS:.status.conditions[*].type,STATUS:.status.conditions[*].status,\
         DELETING:.metadata.deletionTimestamp",
    ]);
    out += &kubectl(&["get", "events", "--sort-by=.lastTimestamp"]);
    let logs = cluster::cluster_dir().join("logs");
    let operator_log = std::env::temp_dir().join(format!("securechat-chaos-{namespace}.log"));
    for (name, path) in [
        (
            "kube-controller-manager",
            logs.join("kube-controller-manager.log"),
        ),
        ("kube-scheduler", logs.join("kube-scheduler.log")),
        ("kwok", logs.join("kwok.log")),
        ("securechat-operator", operator_log),
    ] {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out += &format!("--- {name}, last lines of its log ---\n");
        for line in &lines[lines.len().saturating_sub(20)..] {
            out += line;
            out.push('\n');
        }
    }
    out
}

/// Waits until the key is Ready and returns its key id.
async fn key_ready(keys: &Api<ChatApiKey>, name: &str, timeout: Duration) -> String {
    wait_for(&format!("ChatApiKey {name} Ready"), timeout, || {
        let keys = keys.clone();
        async move {
            let k = keys.get(name).await.ok()?;
            let status = k.status?;
            (condition_status(&status.conditions, "Ready") == Some("True"))
                .then_some(status.key_id)
                .flatten()
        }
    })
    .await
}

async fn annotate(models: &Api<SecureChatModel>, name: &str, annotation: &str, value: &str) {
    models
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {annotation: value}}})),
        )
        .await
        .expect("annotate the model");
}

async fn active_kid(models: &Api<SecureChatModel>, name: &str) -> Option<String> {
    models
        .get(name)
        .await
        .ok()?
        .status?
        .signing_keys?
        .active_kid
}

/// The files the server reads, as projected: one Active signing key, and
/// exactly the expected API keys, each Active and still under its id.
fn assert_material_consistent(etc: &Path, key_ids: &[&str]) {
    let keyset: SigningKeySet =
        serde_json::from_str(&read(&etc.join("signing-keys/keyset.json")).unwrap()).unwrap();
    keyset.validate().expect("a valid keyset");
    let active = keyset
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Active)
        .count();
    assert_eq!(active, 1, "exactly one Active signing key: {keyset:#?}");
    let table: ApiKeyTable =
        serde_json::from_str(&read(&etc.join("api-keys/api-keys.json")).unwrap()).unwrap();
    table.validate().expect("a valid key table");
    let mut ids: Vec<&str> = table.keys.iter().map(|k| k.id.as_str()).collect();
    ids.sort();
    let mut expected = key_ids.to_vec();
    expected.sort();
    assert_eq!(ids, expected, "the key table holds exactly the keys");
    for record in &table.keys {
        assert_eq!(record.state, ApiKeyState::Active, "{record:?}");
    }
}

/// Kills counted inside each phase's window.
fn kills_in(kills: &[Instant], from: Instant, to: Instant) -> usize {
    kills.iter().filter(|k| **k >= from && **k <= to).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_killed_at_random_points_converges_and_loses_no_key() {
    let _turn = TAKE_TURNS.lock().await;
    let kube = client().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "chaos-kill").await;
    let models: Api<SecureChatModel> = Api::namespaced(kube.clone(), &ns.name);
    let keys: Api<ChatApiKey> = Api::namespaced(kube.clone(), &ns.name);
    let operator = Arc::new(Mutex::new(OperatorProcess::start(&ns.name, 4)));
    let stop = Arc::new(AtomicBool::new(false));
    let chance = Chance::from_env_or_clock();

    // First converge, killed at random points from the first moment on.
    let created = Instant::now();
    models
        .create(&PostParams::default(), &model("m"))
        .await
        .expect("create the model");
    let rotation = json!({"period": "1m", "gracePeriod": "30s"});
    keys.create(&PostParams::default(), &api_key("app", "m", Some(rotation)))
        .await
        .expect("create a key");
    keys.create(&PostParams::default(), &api_key("minter", "m", None))
        .await
        .expect("create a key");
    let kills = Kills::default();
    let killer = kill_at_random(operator.clone(), chance, stop.clone(), kills.clone());
    kill_soon_after(&operator, &kills).await;
    let timeout = Duration::from_secs(240);
    model_ready(&models, "m", timeout).await;
    let app_id = key_ready(&keys, "app", timeout).await;
    let minter_id = key_ready(&keys, "minter", timeout).await;
    let converged = Instant::now();
    eprintln!("first converge under chaos took {:?}", converged - created);

    let served = ServedModel::start(&kube, &ns.name, "m", &["app", "minter"]).await;
    assert_material_consistent(&served.etc, &[&app_id, &minter_id]);
    let (app, minter, url) = (served.app("app"), served.app("minter"), served.url.clone());
    let first_jwt = mint_jwt(&minter, &url, &read(&minter.join("api-key")).unwrap())
        .await
        .expect("a first token");
    let load = Load::start(&served, first_jwt.clone());
    let first_leaf = read(&served.etc.join("tls/tls.crt")).unwrap();
    let first_api_key = read(&app.join("api-key")).unwrap();
    let first_kid = active_kid(&models, "m").await;

    let ca_started = Instant::now();
    annotate(&models, "m", "securechat.dev/rotate-ca", "chaos-1").await;
    kill_soon_after(&operator, &kills).await;
    wait_for("a server certificate from the new CA", timeout, || async {
        read(&served.etc.join("tls/tls.crt"))
            .filter(|c| *c != first_leaf)
            .map(|_| ())
    })
    .await;
    let ca_done = Instant::now();

    let keys_started = Instant::now();
    annotate(
        &models,
        "m",
        "securechat.dev/rotate-signing-keys",
        "chaos-1",
    )
    .await;
    kill_soon_after(&operator, &kills).await;
    wait_for("a new Active signing key", timeout, || {
        let models = models.clone();
        let first_kid = first_kid.clone();
        async move {
            let kid = active_kid(&models, "m").await?;
            (Some(&kid) != first_kid.as_ref()).then_some(())
        }
    })
    .await;
    let keys_done = Instant::now();

    // The app's key rotates by itself (period 1m), counted from its mint.
    wait_for("the app's API key rotated", timeout, || async {
        read(&app.join("api-key"))
            .filter(|k| *k != first_api_key)
            .map(|_| ())
    })
    .await;
    let api_key_done = Instant::now();
    // A few seconds more of chaos after the last rotation's final write.
    tokio::time::sleep(Duration::from_secs(5)).await;

    stop.store(true, Ordering::Relaxed);
    killer.await.expect("the killer ran");
    let kills = kills.lock().unwrap().clone();
    operator.lock().unwrap().supervise();
    model_ready(&models, "m", timeout).await;
    assert_eq!(key_ready(&keys, "app", timeout).await, app_id, "app's id");
    assert_eq!(
        key_ready(&keys, "minter", timeout).await,
        minter_id,
        "minter's id"
    );
    // Let the last writes reach the projected files.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = load.finish(20 * RATE as usize).await;
    assert_material_consistent(&served.etc, &[&app_id, &minter_id]);
    assert_eq!(
        get_models(&app, &url, &read(&app.join("api-key")).unwrap()).await,
        Ok(200),
        "the app's current key works"
    );
    assert_eq!(
        get_models(&minter, &url, &first_jwt).await,
        Ok(200),
        "a token signed before the signing-key rotation still verifies"
    );

    let phases = [
        ("first converge", created, converged),
        ("CA rotation", ca_started, ca_done),
        ("signing-key rotation", keys_started, keys_done),
        ("API-key rotation", converged, api_key_done),
    ];
    let counts: Vec<String> = phases
        .iter()
        .map(|(name, from, to)| {
            format!(
                "{name}: {} kills in {:.1}s",
                kills_in(&kills, *from, *to),
                (*to - *from).as_secs_f64()
            )
        })
        .collect();
    eprintln!(
        "{} SIGKILLs in all; {}; {requests} requests, none failed",
        kills.len(),
        counts.join(", ")
    );
    for (name, from, to) in phases {
        assert!(
            kills_in(&kills, from, to) > 0,
            "the operator was never killed during the {name}; log:\n{}",
            operator.lock().unwrap().log()
        );
    }
    assert_eq!(
        operator.lock().unwrap().crashes,
        0,
        "the operator exits only when killed; log:\n{}",
        operator.lock().unwrap().log()
    );
    served.server.shutdown().await;
}

/// Kills a control-plane component and starts it again after `down`, as
/// tests/cluster/restart.sh does; returns when the API server is ready.
async fn restart_component(kube: &kube::Client, name: &str, down: Duration) -> Duration {
    let began = Instant::now();
    let script = repo_root().join("tests/cluster/restart.sh");
    let out = Command::new(&script)
        .args([name, "--kill", "--down", &format!("{}", down.as_secs_f64())])
        .output()
        .expect("run tests/cluster/restart.sh");
    assert!(
        out.status.success(),
        "restarting {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the API server ready again",
        Duration::from_secs(120),
        || {
            let kube = kube.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new()).ok()?;
                kube.request_text(req).await.ok().map(|_| ())
            }
        },
    )
    .await;
    let outage = began.elapsed();
    eprintln!("{name} SIGKILLed, down {down:?}; the API server was back after {outage:?}");
    outage
}

/// Restarts the rest of the control plane (SIGTERM, fresh start) when
/// dropped, also when the test fails: the tests that run next start from
/// controllers that never saw an outage, whatever state it left them in.
struct FreshControllersAfterwards;

impl Drop for FreshControllersAfterwards {
    fn drop(&mut self) {
        let script = repo_root().join("tests/cluster/restart.sh");
        for name in ["kube-controller-manager", "kube-scheduler", "kwok"] {
            match Command::new(&script).arg(name).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "restarting {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("restarting {name} failed: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_and_etcd_restarted_mid_reconcile() {
    let _turn = TAKE_TURNS.lock().await;
    // Dropped after everything else here, before the turn is handed on.
    let _fresh = FreshControllersAfterwards;
    let kube = client().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "chaos-cp").await;
    let models: Api<SecureChatModel> = Api::namespaced(kube.clone(), &ns.name);
    let keys: Api<ChatApiKey> = Api::namespaced(kube.clone(), &ns.name);
    // The chart's default lease: a short outage must not cost leadership.
    let lease_seconds = 15;
    let mut operator = OperatorProcess::start(&ns.name, lease_seconds);
    let timeout = Duration::from_secs(180);

    models
        .create(&PostParams::default(), &model("m"))
        .await
        .expect("create the model");
    for name in ["app", "minter"] {
        keys.create(&PostParams::default(), &api_key(name, "m", None))
            .await
            .expect("create a key");
    }
    model_ready(&models, "m", timeout).await;
    let app_id = key_ready(&keys, "app", timeout).await;
    let minter_id = key_ready(&keys, "minter", timeout).await;
    let served = ServedModel::start(&kube, &ns.name, "m", &["app", "minter"]).await;
    let (minter, url) = (served.app("minter"), served.url.clone());
    let first_jwt = mint_jwt(&minter, &url, &read(&minter.join("api-key")).unwrap())
        .await
        .expect("a first token");
    let load = Load::start(&served, first_jwt);

    // kube-apiserver dies while a new model is being reconciled.
    models
        .create(&PostParams::default(), &model("second"))
        .await
        .expect("create a second model");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let api_outage = restart_component(&kube, "kube-apiserver", Duration::from_secs(2)).await;
    let back = Instant::now();
    operator.supervise();
    model_ready(&models, "second", timeout).await;
    let second_ready = back.elapsed();

    // etcd dies while the CA of the first rotates.
    let first_leaf = read(&served.etc.join("tls/tls.crt")).unwrap();
    annotate(&models, "m", "securechat.dev/rotate-ca", "chaos-etcd").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let etcd_outage = restart_component(&kube, "etcd", Duration::from_secs(2)).await;
    let back = Instant::now();
    operator.supervise();
    wait_for(
        "the rotated certificate projected after the etcd restart",
        timeout,
        || async {
            read(&served.etc.join("tls/tls.crt"))
                .filter(|c| *c != first_leaf)
                .map(|_| ())
        },
    )
    .await;
    let rotated = back.elapsed();
    model_ready(&models, "m", timeout).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    operator.supervise();

    load.finish(10 * RATE as usize).await;
    assert_material_consistent(&served.etc, &[&app_id, &minter_id]);
    let reconnected = operator.log().matches("became leader").count();
    eprintln!(
        "outages: kube-apiserver {api_outage:?}, etcd {etcd_outage:?}; once the API server \
         was back: the second model Ready after {second_ready:?}, the rotated certificate \
         projected after {rotated:?}; operator exits {}, leadership acquired {reconnected} \
         time(s)",
        operator.crashes
    );
    // An outage shorter than the lease must not cost the operator its
    // process: it reconnects instead of exiting.
    let lease = Duration::from_secs(lease_seconds);
    if api_outage.max(etcd_outage) + Duration::from_secs(2 * lease_seconds / 4) < lease {
        assert_eq!(
            operator.crashes,
            0,
            "the operator exited during a short outage; log:\n{}",
            operator.log()
        );
    }
    served.server.shutdown().await;
}
