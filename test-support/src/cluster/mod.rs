//! Test harness for the integration tests: a client for the local control
//! plane (`make cluster-up`), one fresh namespace per test, CRD installation
//! and waiting helpers. A test that needs the cluster and finds none fails
//! with a message that says what to run; it never skips.

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub mod models;
pub mod node;
pub mod serving;

/// Repository root: the nearest directory above the running test's crate
/// holding tests/cluster. The test's crate comes from the environment cargo
/// gives the test process, before this crate's compile-time path: checkouts
/// share one CARGO_TARGET_DIR, and cargo reuses this crate's build from
/// another checkout (a CI clone since deleted) when its sources are older.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .ancestors()
        .find(|dir| dir.join("tests/cluster").is_dir())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

/// Where the control plane keeps its state, as tests/cluster/state.sh
/// says: $SECURECHAT_STATE_DIR (`make test` sets .securechat/test), else
/// .securechat (`make cluster-up`).
pub fn state_dir() -> PathBuf {
    std::env::var_os("SECURECHAT_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".securechat"))
}

/// The control plane's pids, logs and audit log.
pub fn cluster_dir() -> PathBuf {
    state_dir().join("cluster")
}

/// The kubeconfig the tests use: $KUBECONFIG, else the state dir's.
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .unwrap_or_else(|| state_dir().join("kubeconfig"))
}

const NO_CLUSTER: &str =
    "no local control plane: run `make cluster-up` (or `make test`, which starts one)";

/// A client for the local control plane. Panics with instructions when it is
/// not running.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("{NO_CLUSTER}\n(cannot read {}: {e})", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{NO_CLUSTER}\n(bad kubeconfig {}: {e})", path.display()));
    let client = Client::try_from(config).expect("client from kubeconfig");
    if let Err(e) = client.apiserver_version().await {
        panic!(
            "{NO_CLUSTER}\n(API server at {} does not answer: {e})",
            path.display()
        );
    }
    client
}

/// A client whose requests carry `user_agent`, so the API server's audit
/// log can tell them apart (see [`audit_writes`]).
pub async fn client_as(user_agent: &str) -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("{NO_CLUSTER}\n(cannot read {}: {e})", path.display()));
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{NO_CLUSTER}\n(bad kubeconfig {}: {e})", path.display()));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(user_agent).expect("user agent is a header value"),
    ));
    Client::try_from(config).expect("client from kubeconfig")
}

/// The API server's audit log of write requests (tests/cluster/up.sh).
pub fn audit_log_path() -> PathBuf {
    cluster_dir().join("audit.log")
}

/// Current end of the audit log, to count writes from here on.
pub fn audit_log_offset() -> u64 {
    std::fs::metadata(audit_log_path())
        .unwrap_or_else(|e| {
            panic!(
                "no audit log at {} ({e}): restart the control plane with `make cluster-down cluster-up`",
                audit_log_path().display()
            )
        })
        .len()
}

/// One write request the API server recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedWrite {
    pub verb: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// Write requests (create, update, patch, delete) the API server logged
/// after `offset` from clients with exactly this user agent.
pub fn audit_writes(offset: u64, user_agent: &str) -> Vec<AuditedWrite> {
    use std::io::{BufRead, Seek, SeekFrom};
    let mut file = std::fs::File::open(audit_log_path()).expect("audit log");
    file.seek(SeekFrom::Start(offset)).expect("seek audit log");
    std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .filter(|e| e["userAgent"] == user_agent)
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete" | "deletecollection")
            )
        })
        .map(|e| {
            let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
            AuditedWrite {
                verb: s(&e["verb"]).unwrap_or_default(),
                resource: s(&e["objectRef"]["resource"]).unwrap_or_default(),
                subresource: s(&e["objectRef"]["subresource"]),
                namespace: s(&e["objectRef"]["namespace"]),
                name: s(&e["objectRef"]["name"]),
            }
        })
        .collect()
}

/// The document of `kind` in a multi-document YAML file of the repository
/// (the examples also create their namespaces), placed in `namespace`.
pub fn example_doc(path: &str, kind: &str, namespace: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(repo_root().join(path))
        .unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut doc = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("yaml"))
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {path}"));
    doc["metadata"]["namespace"] = namespace.into();
    doc
}

/// Runs kubectl against the test cluster; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(kubectl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl ({e}): run `make tools`"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// kubectl that must succeed; returns stdout.
pub fn kubectl_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = kubectl(args);
    assert!(ok, "kubectl {} failed:\n{stderr}", args.join(" "));
    stdout
}

/// kubectl that must succeed within 30s (for discovery and OpenAPI data
/// that the API server publishes shortly after a CRD is Established).
pub fn kubectl_eventually(args: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, stdout, stderr) = kubectl(args);
        if ok {
            return stdout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl {} kept failing for 30s:\n{stderr}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn kubectl_bin() -> PathBuf {
    tool("kubectl")
}

/// A tool `make tools` builds into ~/.cache/securechat/bin (or
/// $SECURECHAT_CACHE/bin). Panics with what to run when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let cache = std::env::var_os("SECURECHAT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs_home().join(".cache/securechat"));
    let path = cache.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make tools`",
        path.display()
    );
    path
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Installs the committed CRDs (server-side apply, idempotent) and waits
/// until both are Established.
pub fn install_crds() {
    // Once per test binary: tests run in parallel, and a CRD being
    // re-applied by one test has no conditions yet for another's wait.
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let dir = repo_root().join("charts/securechat/crds");
        let dir = dir.to_str().expect("utf-8 path");
        kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", dir]);
        kubectl_eventually(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/securechatmodels.securechat.dev",
            "crd/chatapikeys.securechat.dev",
        ]);
    });
}

/// A namespace that exists for one test and is deleted when dropped (also
/// when the test panics).
pub struct TestNamespace {
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestNamespace {
    /// Creates `t-<prefix>-<unique>` and waits for its default
    /// ServiceAccount, so pods can be created in it at once.
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let unique = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
                ^ COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut name = format!("t-{prefix}-{unique}");
        name.truncate(63);
        let name = name.trim_end_matches('-').to_string();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("securechat.dev/test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for("default service account", Duration::from_secs(60), || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten() }
        })
        .await;
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await; kubectl deletes without waiting for finalizers.
        let _ = Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

/// Polls `probe` until it returns Some, or panics after `timeout` saying what
/// was awaited. For state a watch cannot express directly (e.g. "some pod
/// of this label is Running"); prefer `kube::runtime::wait` where it can.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Awaits a kube-runtime condition with a timeout, panicking with `what`.
pub async fn await_condition<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl kube::runtime::wait::Condition<K>,
) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    match tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api, name, cond),
    )
    .await
    {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{what}: {name} was deleted while waiting"),
        Ok(Err(e)) => panic!("{what}: watch failed: {e}"),
        Err(_) => panic!("timed out after {timeout:?} waiting for {what} ({name})"),
    }
}

/// The server image the in-process operator gives models that name none
/// (the operator's `--server-image`).
pub const OPERATOR_SERVER_IMAGE: &str = "securechat/server:test";

/// Both of the operator's controllers (SecureChatModel and ChatApiKey)
/// in-process, scoped to `namespace`, with a client whose User-Agent is
/// `user_agent`; stopped when dropped (also when the test panics).
pub struct InProcessOperator {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl InProcessOperator {
    pub async fn start(namespace: &str, user_agent: &str) -> Self {
        use securechat_operator::controller::{self, Context};
        use securechat_operator::key_controller;
        use securechat_operator::metrics::Metrics;
        let state = std::sync::Arc::new(Context::new(
            client_as(user_agent).await,
            OPERATOR_SERVER_IMAGE.into(),
            std::sync::Arc::new(Metrics::new()),
        ));
        let namespaces = vec![namespace.to_string()];
        let (s1, n1) = (state.clone(), namespaces.clone());
        let models = tokio::spawn(async move { controller::run(s1, &n1).await });
        let keys = tokio::spawn(async move { key_controller::run(state, &namespaces).await });
        Self {
            tasks: vec![models, keys],
        }
    }
}

impl Drop for InProcessOperator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
