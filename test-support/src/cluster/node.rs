//! The real node (`make node-up`, tests/cluster/node-up.sh): node-0, a
//! kubelet with containerd, kube-proxy and kube-router's NetworkPolicy
//! controller beside the kwok nodes, with the securechat images loaded.
//! Tests that run pods on it take turns ([`Node::take_turn`]): it is one
//! per machine, and a test's timings and policy rules must not mix with
//! another's. A test that needs the node and finds none fails with what to
//! run; it never skips.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::{kubeconfig_path, state_dir, tool, wait_for};

const NO_NODE: &str = "no real node: run `make node-up` as root with the control plane up \
     (`make test` starts both)";

/// What node-up.sh wrote to `node/node.env` under the state dir.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub ip: String,
    pub pod_cidr: String,
    /// `key=value`: pods select it to land on the node.
    pub label: (String, String),
    /// `key=value:effect`: pods tolerate it to land on the node.
    pub taint: (String, String, String),
    pub server_image: String,
    pub operator_image: String,
    /// busybox-static: sh, nc, wget, sleep.
    pub client_image: String,
    /// The Prometheus server (entrypoint /prometheus).
    pub prometheus_image: String,
    /// The node's containerd (`ctr --address`).
    pub containerd_socket: String,
    /// The cluster DNS (CoreDNS on the node): Service names resolve under
    /// this domain.
    pub cluster_domain: String,
}

/// Host-wide: tests of every checkout take turns on the one node.
const TURN_LOCK: &str = "/run/lock/securechat-node-tests.lock";

/// Held while a test uses the node; the next test's turn starts on drop.
pub struct Turn {
    _file: File,
}

impl Node {
    /// The node of this control plane. Panics with what to run when it is
    /// not up or not Ready.
    pub fn get() -> Self {
        let path = state_dir().join("node/node.env");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{NO_NODE}\n(cannot read {}: {e})", path.display()));
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let var = |k: &str| {
            vars.get(k)
                .map(|v| v.to_string())
                .unwrap_or_else(|| panic!("{NO_NODE}\n({} has no {k})", path.display()))
        };
        let (label_key, label_value) = split_pair(&var("NODE_LABEL"), '=');
        let (taint_key, rest) = split_pair(&var("NODE_TAINT"), '=');
        let (taint_value, taint_effect) = split_pair(&rest, ':');
        let node = Self {
            name: var("NODE_NAME"),
            ip: var("NODE_IP"),
            pod_cidr: var("NODE_POD_CIDR"),
            label: (label_key, label_value),
            taint: (taint_key, taint_value, taint_effect),
            server_image: var("SERVER_IMAGE"),
            operator_image: var("OPERATOR_IMAGE"),
            client_image: var("CLIENT_IMAGE"),
            prometheus_image: var("PROMETHEUS_IMAGE"),
            containerd_socket: var("CONTAINERD_SOCKET"),
            cluster_domain: var("CLUSTER_DOMAIN"),
        };
        let (ok, _, stderr) = super::kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("node/{}", node.name),
            "--timeout=30s",
        ]);
        assert!(ok, "{NO_NODE}\n(node {} is not Ready: {stderr})", node.name);
        node
    }

    /// Waits for the node to be this test's alone (blocking, as long as the
    /// tests before it take).
    pub async fn take_turn(&self) -> Turn {
        tokio::task::spawn_blocking(|| {
            let file = File::options()
                .create(true)
                .append(true)
                .open(TURN_LOCK)
                .unwrap_or_else(|e| panic!("cannot open {TURN_LOCK}: {e}"));
            // flock(2): released when the file closes, also when the test
            // process dies. (std's File::lock needs Rust 1.89; the
            // workspace's MSRV is 1.88.)
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
                .unwrap_or_else(|e| panic!("cannot lock {TURN_LOCK}: {e}"));
            Turn { _file: file }
        })
        .await
        .expect("lock task")
    }

    /// `spec.scheduling` of a SecureChatModel (or a pod spec's fields) that
    /// puts its pods on this node and nowhere else.
    pub fn scheduling(&self) -> serde_json::Value {
        json!({
            "nodeSelector": {&self.label.0: &self.label.1},
            "tolerations": [{
                "key": &self.taint.0, "operator": "Equal",
                "value": &self.taint.1, "effect": &self.taint.2
            }]
        })
    }

    /// Starts a busybox pod on the node running `command` (e.g. `sleep`,
    /// to be exec'd into by [`exec`], or `httpd` as a target) with
    /// `labels`, and returns it Running with its IP.
    pub async fn client_pod(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
        labels: serde_json::Value,
        command: &[&str],
    ) -> Pod {
        let scheduling = self.scheduling();
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "nodeSelector": scheduling["nodeSelector"],
                "tolerations": scheduling["tolerations"],
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                // sleep or httpd as PID 1 ignores SIGTERM: do not wait 30 s.
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "client",
                    "image": &self.client_image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 65532,
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"}
                    }
                }]
            }
        }))
        .expect("client pod");
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create client pod");
        wait_for(
            &format!("client pod {name} running on {}", self.name),
            Duration::from_secs(120),
            || {
                let pods = pods.clone();
                async move {
                    let pod = pods.get(name).await.ok()?;
                    let status = pod.status.as_ref()?;
                    (status.phase.as_deref() == Some("Running") && status.pod_ip.is_some())
                        .then_some(pod)
                }
            },
        )
        .await
    }
}

fn split_pair(s: &str, sep: char) -> (String, String) {
    let (a, b) = s
        .split_once(sep)
        .unwrap_or_else(|| panic!("{NO_NODE}\n(malformed node.env value {s:?})"));
    (a.to_string(), b.to_string())
}

/// Runs `command` in `pod` through the API server and the kubelet
/// (`kubectl exec`, so both directions of their authentication are used);
/// returns (exit status 0, stdout + stderr).
pub fn exec(namespace: &str, pod: &str, command: &[&str]) -> (bool, String) {
    let out = Command::new(tool("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(["-n", namespace, "exec", pod, "--"])
        .args(command)
        .output()
        .expect("run kubectl exec");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Whether a TCP connection from `pod` to `ip:port` opens within 3 s
/// (busybox nc). A refused connection is an open path, a timeout a blocked
/// one: the test asks which the policy lets through.
pub fn connects(namespace: &str, pod: &str, ip: &str, port: i32) -> bool {
    let port = port.to_string();
    let (ok, _) = exec(
        namespace,
        pod,
        &[
            "/bin/sh",
            "-c",
            "nc -w 3 \"$0\" \"$1\" </dev/null",
            ip,
            &port,
        ],
    );
    ok
}

/// Whether `name` resolves from `pod` through the cluster DNS (busybox
/// nslookup, with the pod's resolv.conf as the kubelet wrote it).
pub fn resolves(namespace: &str, pod: &str, name: &str) -> bool {
    exec(namespace, pod, &["/bin/nslookup", name]).0
}

/// The host's view of a running container: its first process under
/// /proc (the test runs as root on the node's host).
pub struct HostProcess {
    pub pid: u32,
}

impl HostProcess {
    /// The process of the container with this CRI id (a pod status's
    /// `containerID` without `containerd://`), through the node's ctr.
    pub fn of_container(node: &Node, container_id: &str) -> Self {
        let id = container_id.trim_start_matches("containerd://");
        let out = Command::new("ctr")
            .args([
                "--address",
                &node.containerd_socket,
                "-n",
                "k8s.io",
                "tasks",
                "ls",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run ctr ({e}): run `make node-up`"));
        let listing = String::from_utf8_lossy(&out.stdout);
        let pid = listing
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?, f.next()?))
            })
            .find(|(task, _)| *task == id)
            .and_then(|(_, pid)| pid.parse().ok())
            .unwrap_or_else(|| panic!("no running task {id} in the node's containerd:\n{listing}"));
        Self { pid }
    }

    pub fn proc(&self) -> PathBuf {
        Path::new("/proc").join(self.pid.to_string())
    }

    /// A field of /proc/PID/status, e.g. `Uid`, `CapEff`, `Seccomp`.
    pub fn status(&self, field: &str) -> String {
        let text = std::fs::read_to_string(self.proc().join("status")).expect("proc status");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    /// The mount options of the process's root filesystem.
    pub fn root_mount_options(&self) -> String {
        let text = std::fs::read_to_string(self.proc().join("mountinfo")).expect("mountinfo");
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(4) == Some(&"/"))
            .and_then(|f| f.get(5).map(|o| o.to_string()))
            .expect("a root mount")
    }

    /// A file as the container sees it (its root, through /proc).
    pub fn path(&self, inside: &str) -> PathBuf {
        self.proc()
            .join("root")
            .join(inside.trim_start_matches('/'))
    }

    /// The cgroup v1 directory of `controller` holding the process.
    pub fn cgroup(&self, controller: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.proc().join("cgroup")).expect("proc cgroup");
        let rel = text
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| path.to_string())
            })
            .unwrap_or_else(|| panic!("no {controller} cgroup for pid {}", self.pid));
        // This machine mounts each v1 controller on its own.
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(rel.trim_start_matches('/'))
    }
}
