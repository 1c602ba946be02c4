//! Two operator processes against the real control plane: only the Lease
//! holder reconciles; SIGKILL it and the standby takes over and reconciles.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use securechat_crds::SecureChatModel;
use securechat_test_support::cluster::{
    TestNamespace, client, install_crds, kubeconfig_path, wait_for,
};
use serde_json::json;

const LEASE_SECONDS: u64 = 4;

struct OperatorProcess {
    child: Child,
    log: PathBuf,
}

impl OperatorProcess {
    fn start(namespace: &str, identity: &str) -> Self {
        let log = std::env::temp_dir().join(format!("securechat-{namespace}-{identity}.log"));
        let out = File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_securechat-operator"))
            .args([
                "run",
                "--namespace",
                namespace,
                "--lease-namespace",
                namespace,
            ])
            .args(["--lease-duration-seconds", &LEASE_SECONDS.to_string()])
            .args(["--lease-retry-seconds", "1", "--identity", identity])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", kubeconfig_path())
            .env("SECURECHAT_LOG_LEVEL", "info")
            .stdout(Stdio::from(out.try_clone().expect("log file")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start securechat-operator");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("securechat-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn create_and_await_status(models: &Api<SecureChatModel>, name: &str) {
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": name}, "spec": {}
    }))
    .unwrap();
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create model");
    wait_for(
        &format!("{name} to be reconciled"),
        Duration::from_secs(60),
        || {
            let models = models.clone();
            async move {
                let m = models.get(name).await.ok()?;
                m.status?.observed_generation.map(|_| ())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_standby_takes_over_when_it_dies() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "leader").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let models: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);

    let mut a = OperatorProcess::start(&ns.name, "a");
    wait_for("a to hold the lease", Duration::from_secs(60), || {
        let leases = leases.clone();
        async move { (holder(&leases).await.as_deref() == Some("a")).then_some(()) }
    })
    .await;
    let b = OperatorProcess::start(&ns.name, "b");
    wait_for("b to stand by", Duration::from_secs(30), || {
        let log = b.log();
        async move { log.contains("standing by").then_some(()) }
    })
    .await;

    create_and_await_status(&models, "first").await;
    assert_eq!(holder(&leases).await.as_deref(), Some("a"));
    assert!(a.log().contains("applied"), "a reconciled:\n{}", a.log());
    assert!(
        !b.log().contains("applied"),
        "the standby must not reconcile:\n{}",
        b.log()
    );

    // SIGKILL: no chance to release the lease; b must wait it out.
    a.child.kill().expect("kill a");
    let killed = Instant::now();
    wait_for("b to take the lease over", Duration::from_secs(60), || {
        let leases = leases.clone();
        async move { (holder(&leases).await.as_deref() == Some("b")).then_some(()) }
    })
    .await;
    eprintln!(
        "takeover {:?} after SIGKILL (lease duration {LEASE_SECONDS}s, retry 1s)",
        killed.elapsed()
    );
    create_and_await_status(&models, "second").await;
    assert!(b.log().contains("became leader"), "{}", b.log());
    assert!(b.log().contains("applied"), "b reconciles:\n{}", b.log());
}
