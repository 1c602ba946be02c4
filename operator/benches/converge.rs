//! Convergence benchmark of issue 4/8 (a benchmark, not a test: it prints
//! figures and asserts nothing about time). Against the local control plane
//! (`make cluster-up`), with the operator as a separate release process:
//!
//! 1. apply N SecureChatModels (default 100, one replica each, no GPU) at
//!    once and time until every one is Ready=True;
//! 2. count the operator's write requests per model on that first converge,
//!    from the API server's audit log;
//! 3. poke every model (an annotation) and count the writes of that no-op
//!    pass (expected 0);
//! 4. grow to M models (default 1,000, scaled to zero) and read the
//!    operator's resident memory.
//!
//! Run: `cargo bench -p securechat-operator --bench converge`
//! (SECURECHAT_BENCH_MODELS, SECURECHAT_BENCH_MODELS_RSS to change N, M).
//! Results go to stdout and to benches/RESULTS.md.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use securechat_crds::SecureChatModel;
use securechat_crds::conditions::condition_status;
use securechat_test_support::cluster::{
    self, TestNamespace, audit_log_offset, audit_writes, client, install_crds,
};
use serde_json::json;

const USER_AGENT: &str = concat!("securechat-operator/", env!("CARGO_PKG_VERSION"));

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Operator {
    child: Child,
    metrics: String,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Operator {
    fn start(namespace: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_securechat-operator"))
            .args(["run", "--namespace", namespace, "--leader-elect", "false"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", cluster::kubeconfig_path())
            .env("SECURECHAT_LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start securechat-operator");
        Self {
            child,
            metrics: format!("127.0.0.1:{port}"),
        }
    }

    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("operator /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Successful reconciles so far, scraped from /metrics.
    fn reconciles(&self) -> u64 {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.metrics) else {
            return 0;
        };
        let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.metrics);
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.lines()
            .find_map(|l| {
                l.strip_prefix("securechat_operator_reconciles_total{result=\"success\"} ")
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    /// Waits until 3 s pass without a reconcile. Models mid-rollout are
    /// polled every 20 s, so that may never come: after 2 minutes it says
    /// so and returns, and what follows is measured on a busy operator.
    async fn quiesce(&self) {
        let began = Instant::now();
        let mut last = self.reconciles();
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = self.reconciles();
            if now == last {
                return;
            }
            if began.elapsed() > Duration::from_secs(120) {
                eprintln!(
                    "the operator still reconciles ({} in 3 s) after 2 minutes",
                    now - last
                );
                return;
            }
            last = now;
        }
    }
}

fn model(name: &str, replicas: i32) -> SecureChatModel {
    serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "network": {"ingress": [{"port": 8000, "from": ["10.0.0.0/16"]}]}}
    }))
    .expect("model")
}

async fn create_all(api: &Api<SecureChatModel>, names: Vec<String>, replicas: i32) {
    stream::iter(names)
        .for_each_concurrent(16, |name| async move {
            api.create(&PostParams::default(), &model(&name, replicas))
                .await
                .expect("create model");
        })
        .await;
}

async fn count_ready(api: &Api<SecureChatModel>) -> (usize, usize) {
    let list = api.list(&ListParams::default()).await.expect("list models");
    let ready = list
        .items
        .iter()
        .filter(|m| {
            m.status
                .as_ref()
                .is_some_and(|s| condition_status(&s.conditions, "Ready") == Some("True"))
        })
        .count();
    (ready, list.items.len())
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful: run only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_usize("SECURECHAT_BENCH_MODELS", 100);
    let m = env_usize("SECURECHAT_BENCH_MODELS_RSS", 1000).max(n);
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "bench").await;
    let api: Api<SecureChatModel> = Api::namespaced(client.clone(), &ns.name);
    let operator = Operator::start(&ns.name);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_idle, _) = operator.rss_kib();

    let offset = audit_log_offset();
    let started = Instant::now();
    create_all(&api, (0..n).map(|i| format!("m{i:04}")).collect(), 1).await;
    let created = started.elapsed();
    loop {
        let (ready, total) = count_ready(&api).await;
        if ready == total && total == n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {ready}/{n} Ready after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converged = started.elapsed();
    let first: Vec<_> = audit_writes(offset, USER_AGENT)
        .into_iter()
        .filter(|w| w.namespace.as_deref() == Some(&ns.name))
        .collect();
    let events = first.iter().filter(|w| w.resource == "events").count();
    // Each figure is printed as soon as it is measured: a later phase may
    // take long on a loaded machine.
    println!(
        "{n} models Ready in {:.1} s (creates {:.1} s); {} operator writes ({events} events)",
        converged.as_secs_f64(),
        created.as_secs_f64(),
        first.len()
    );

    operator.quiesce().await;
    let offset = audit_log_offset();
    let before = operator.reconciles();
    stream::iter((0..n).map(|i| format!("m{i:04}")))
        .for_each_concurrent(16, |name| {
            let api = api.clone();
            async move {
                api.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {"bench/poke": "1"}}})),
                )
                .await
                .expect("poke");
            }
        })
        .await;
    while operator.reconciles() < before + n as u64 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let noop = audit_writes(offset, USER_AGENT).len();
    println!(
        "no-op pass over {n} models: {noop} writes; RSS {:?} KiB",
        operator.rss_kib()
    );

    create_all(&api, (n..m).map(|i| format!("m{i:04}")).collect(), 0).await;
    loop {
        let list = api.list(&ListParams::default()).await.expect("list");
        if list.items.iter().all(|m| m.status.is_some()) && list.items.len() == m {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    operator.quiesce().await;
    let (rss, hwm) = operator.rss_kib();

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(|s| s.trim().to_string())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let table = format!(
        "| figure | measured | goal |\n|---|---|---|\n\
         | {n} models applied → all Ready | {:.1} s (creates took {:.1} s) | < 30 s |\n\
         | operator API writes per model, first converge | {:.1} ({} objects/status + {:.1} events) | report |\n\
         | operator API writes in a no-op pass over {n} models | {noop} | 0 |\n\
         | operator RSS, idle / with {m} models | {:.1} MiB / {:.1} MiB (peak {:.1} MiB) | < 100 MiB |\n",
        converged.as_secs_f64(),
        created.as_secs_f64(),
        first.len() as f64 / n as f64,
        first.len() - events,
        events as f64 / n as f64,
        rss_idle as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
    let profile = if cfg!(debug_assertions) {
        "dev-profile (dependencies at opt-level 2)"
    } else {
        "release"
    };
    let section = format!(
        "## Operator convergence (4/8)\n\n{date}, {cores} cores, {cpu}; control plane of tests/cluster \
         on the same machine; operator {profile} build, one process.\n\n{table}\n\
         Run: `cargo bench -p securechat-operator --bench converge`.\n"
    );
    println!("{section}");
    write_section(&section);
    append_summary_rows(&[
        (
            format!("operator: {n} models applied → all Ready"),
            converged.as_secs_f64(),
            "s",
            "< 30 s",
        ),
        (
            format!("operator API writes in a no-op pass over {n} models"),
            noop as f64,
            "writes",
            "0",
        ),
        (
            format!("operator RSS with {m} models"),
            rss as f64 / 1024.0,
            "MiB",
            "< 100 MiB",
        ),
    ]);
}

/// Rows for `make bench`'s summary table (scripts/bench.sh sets
/// BENCH_SUMMARY); these figures have no peer.
fn append_summary_rows(rows: &[(String, f64, &str, &str)]) {
    let Some(path) = std::env::var_os("BENCH_SUMMARY") else {
        return;
    };
    let mut lines = String::new();
    for (figure, ours, unit, goal) in rows {
        let row = json!({
            "figure": figure, "ours": ours, "peer": null, "unit": unit,
            "higher_is_better": false, "goal": goal,
        });
        lines.push_str(&format!("{row}\n"));
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("open BENCH_SUMMARY");
    std::io::Write::write_all(&mut file, lines.as_bytes()).expect("write BENCH_SUMMARY");
}

/// Replaces this benchmark's section of benches/RESULTS.md: from its "## "
/// title to the next title or the next section's "<!-- " marker, which
/// belongs to the section after it.
fn write_section(section: &str) {
    let path = cluster::repo_root().join("benches/RESULTS.md");
    let old = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| "# Benchmark results\n\nWritten by the benchmarks; see each section for how to run it.\n\n".into());
    let title = section.lines().next().expect("title");
    let mut out = String::new();
    let mut skipping = false;
    let mut replaced = false;
    for line in old.lines() {
        if line.starts_with("<!--") {
            skipping = false;
        }
        if line.starts_with("## ") {
            skipping = line == title;
            if skipping && !replaced {
                out.push_str(section);
                out.push('\n');
                replaced = true;
            }
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(section);
    }
    std::fs::write(&path, out).expect("write benches/RESULTS.md");
}
