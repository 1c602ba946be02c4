//! Alerts that reach people, end to end with real parts: a real Prometheus
//! scrapes promtool-style series and evaluates the shipped rules
//! (charts/securechat/files/prometheus-rules.yaml), a real Alertmanager
//! routes them with the shipped example (files/alertmanager.yml), the relay
//! (`securechat-operator alert-relay`, this crate's binary) turns them into
//! robot messages, and a local receiver stands in for the two robots'
//! servers, checking the request shapes their documentation gives:
//!
//! - WeChat Work group robot (developer.work.weixin.qq.com, "群机器人配置说明"):
//!   `POST /cgi-bin/webhook/send?key=KEY`, `{"msgtype":"markdown",
//!   "markdown":{"content":...}}`, content at most 4096 bytes.
//! - DingTalk custom robot (open.dingtalk.com, "自定义机器人安全设置" and
//!   "消息类型"): `POST /robot/send?access_token=T&timestamp=MS&sign=S`, S the
//!   URL-encoded base64 HMAC-SHA256 of "MS\nSECRET" keyed by SECRET, MS
//!   within an hour of now; `{"msgtype":"markdown","markdown":{"title":...,
//!   "text":...}}`.
//!
//! Timings are shortened for the test: scrape and evaluation every second,
//! Alertmanager's group_wait and group_interval 1s, and the rules' `for:`
//! durations set to 0s in a copy of the shipped file (nothing else of the
//! rules changes), since the shipped 5-10 minutes would make the test wait
//! that long. The receiver also misbehaves on purpose: WeChat Work's first
//! answer is the throttling errcode (the relay retries), DingTalk's first
//! three are HTTP 503 (the relay gives up, answers Alertmanager 502, and
//! Alertmanager retries).
//!
//! Needs Prometheus and Alertmanager from `make tools`
//! (tests/cluster/build-tools.sh prometheus alertmanager).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine;
use reqwest::Url;
use securechat_test_support::cluster;
use serde_json::{Value, json};

const WECOM_PATH: &str = "/cgi-bin/webhook/send";
const DINGTALK_PATH: &str = "/robot/send";
const DINGTALK_SECRET: &str =
    "SEC0f3b7c1d9e2a4b6c8d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
/// The host and port the shipped example's webhook URLs name.
const EXAMPLE_RELAY: &str = "http://securechat-alert-relay.securechat-system.svc:8080";
/// How long to wait for a message before giving up (not a timing
/// assertion: on a busy machine the chain takes a few seconds).
const PATIENCE: Duration = Duration::from_secs(180);

/// One request that reached the stand-in robots.
#[derive(Debug, Clone)]
struct Received {
    /// The robot's key (WeChat Work) or access token (DingTalk).
    robot: String,
    title: Option<String>,
    markdown: String,
}

#[derive(Default)]
struct Robots {
    received: Vec<Received>,
    /// Every request, answered or not, per key or token and message
    /// heading (the notification's group).
    requests: BTreeMap<(String, String), u32>,
    /// What did not follow the documented shapes.
    violations: Vec<String>,
}

impl Robots {
    fn requests_to(&self, robot: &str, heading: &str) -> u32 {
        self.requests
            .iter()
            .filter(|((r, h), _)| r == robot && h.contains(heading))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The group of the failures scripted below.
const CERTIFICATE_GROUP: &str = "SecureChatCertificateExpiring team-a/llama (critical)";

type Shared = Arc<Mutex<Robots>>;

/// How the stand-in answers a robot's n-th request (1-based) for a group
/// (the message's first line).
fn scripted_failure(robot: &str, heading: &str, n: u32) -> Option<(StatusCode, Value)> {
    let certificate = heading.contains(CERTIFICATE_GROUP) && heading.contains("FIRING");
    match (robot, n) {
        ("oncall-wecom-key", 1) if certificate => Some((
            StatusCode::OK,
            json!({"errcode": 45009, "errmsg": "api freq out of limit"}),
        )),
        ("oncall-dingtalk-token", 1..=3) if certificate => Some((
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"errcode": -1, "errmsg": "system busy"}),
        )),
        ("broken-key", _) => Some((
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"errcode": -1, "errmsg": "system busy"}),
        )),
        ("revoked-key", _) => Some((
            StatusCode::OK,
            json!({"errcode": 93000, "errmsg": "invalid webhook url"}),
        )),
        _ => None,
    }
}

fn query_pairs(raw: Option<String>) -> BTreeMap<String, String> {
    let url = Url::parse(&format!("http://robot/?{}", raw.unwrap_or_default())).expect("query");
    url.query_pairs().into_owned().collect()
}

fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    keys
}

fn string_field<'a>(v: &'a Value, key: &str, problems: &mut Vec<String>) -> &'a str {
    match v[key].as_str() {
        Some(s) if !s.trim().is_empty() => s,
        _ => {
            problems.push(format!("{key} is not a non-empty string: {v}"));
            ""
        }
    }
}

/// Checks one request against a robot's documented shape and answers as
/// the robot would.
fn answer(
    robots: &Shared,
    robot: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
    check: impl FnOnce(&Value, &mut Vec<String>) -> (Option<String>, String),
) -> (StatusCode, axum::Json<Value>) {
    let mut robots = robots.lock().expect("lock");
    let Some(robot) = robot else {
        robots
            .violations
            .push("request without key/access_token".into());
        return (
            StatusCode::OK,
            axum::Json(json!({"errcode": 93000, "errmsg": "invalid webhook url"})),
        );
    };
    let mut problems = Vec::new();
    let json_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        problems.push(format!("content-type {:?}", headers.get("content-type")));
    }
    let parsed: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        problems.push(format!("body is not JSON ({e})"));
        Value::Null
    });
    let (title, markdown) = check(&parsed, &mut problems);
    let heading = markdown.lines().next().unwrap_or_default().to_string();
    let n = {
        let count = robots
            .requests
            .entry((robot.clone(), heading.clone()))
            .or_default();
        *count += 1;
        *count
    };
    if !problems.is_empty() {
        for p in &problems {
            robots.violations.push(format!("{robot}: {p}"));
        }
        return (
            StatusCode::OK,
            axum::Json(json!({"errcode": 40008, "errmsg": "invalid message type"})),
        );
    }
    if let Some((status, reply)) = scripted_failure(&robot, &heading, n) {
        return (status, axum::Json(reply));
    }
    robots.received.push(Received {
        robot,
        title,
        markdown,
    });
    (
        StatusCode::OK,
        axum::Json(json!({"errcode": 0, "errmsg": "ok"})),
    )
}

async fn wecom(
    State(robots): State<Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let key = query_pairs(query).remove("key");
    answer(&robots, key, &headers, &body, |v, problems| {
        if keys(v) != ["markdown", "msgtype"] || v["msgtype"] != "markdown" {
            problems.push(format!("not a markdown message: {v}"));
        }
        if keys(&v["markdown"]) != ["content"] {
            problems.push(format!("markdown holds more than content: {v}"));
        }
        let content = string_field(&v["markdown"], "content", problems);
        if content.len() > 4096 {
            problems.push(format!("content of {} bytes > 4096", content.len()));
        }
        (None, content.to_string())
    })
}

async fn dingtalk(
    State(robots): State<Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let mut query = query_pairs(query);
    let token = query.remove("access_token");
    let timestamp = query.remove("timestamp");
    let sign = query.remove("sign");
    answer(&robots, token, &headers, &body, |v, problems| {
        match (timestamp.as_deref().map(str::parse::<i64>), sign) {
            (Some(Ok(ms)), Some(sign)) => {
                let skew = (chrono::Utc::now().timestamp_millis() - ms).abs();
                if skew > 3_600_000 {
                    problems.push(format!("timestamp {ms} is {skew} ms from now"));
                }
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, DINGTALK_SECRET.as_bytes());
                let tag = ring::hmac::sign(&key, format!("{ms}\n{DINGTALK_SECRET}").as_bytes());
                let expected = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
                if sign != expected {
                    problems.push(format!("sign {sign:?} is not {expected:?}"));
                }
            }
            other => problems.push(format!("timestamp/sign missing or malformed: {other:?}")),
        }
        let mut top = keys(v);
        top.retain(|k| *k != "at");
        if top != ["markdown", "msgtype"] || v["msgtype"] != "markdown" {
            problems.push(format!("not a markdown message: {v}"));
        }
        if keys(&v["markdown"]) != ["text", "title"] {
            problems.push(format!("markdown is not title + text: {v}"));
        }
        let title = string_field(&v["markdown"], "title", problems).to_string();
        let text = string_field(&v["markdown"], "text", problems).to_string();
        (Some(title), text)
    })
}

/// Serves an axum app on a free local port; returns its address.
async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A child process, killed when the test ends; its output in a file.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(name: &'static str, program: &Path, args: &[String], dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Process { name, child, log }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!("--- {} ---\n{}", self.name, lines[start..].join("\n"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Chain {
    processes: Vec<Process>,
    robots: Shared,
}

impl Chain {
    fn logs(&self) -> String {
        let robots = self.robots.lock().expect("lock");
        let received: Vec<String> = robots
            .received
            .iter()
            .map(|r| {
                format!(
                    "{}: {:?} {}",
                    r.robot,
                    r.title,
                    r.markdown.lines().next().unwrap_or("")
                )
            })
            .collect();
        format!(
            "violations: {:?}\nrequests: {:?}\nreceived:\n{}\n{}",
            robots.violations,
            robots.requests,
            received.join("\n"),
            self.processes
                .iter()
                .map(Process::tail)
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    /// Waits for a message to `robot` whose markdown or title contains
    /// every one of `needles`.
    async fn message(&self, robot: &str, needles: &[&str]) -> Received {
        let deadline = Instant::now() + PATIENCE;
        loop {
            {
                let robots = self.robots.lock().expect("lock");
                assert!(
                    robots.violations.is_empty(),
                    "the relay broke a robot's documented shape: {:?}",
                    robots.violations
                );
                let found = robots.received.iter().find(|r| {
                    r.robot == robot
                        && needles.iter().all(|n| {
                            r.markdown.contains(n)
                                || r.title.as_deref().is_some_and(|t| t.contains(n))
                        })
                });
                if let Some(found) = found {
                    return found.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no message to {robot} with {needles:?} within {PATIENCE:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn write_robot(dir: &Path, name: &str, url: String, secret: Option<&str>) -> String {
    let robot_dir = dir.join("robots").join(name);
    std::fs::create_dir_all(&robot_dir).expect("robot dir");
    std::fs::write(robot_dir.join("url"), format!("{url}\n")).expect("url file");
    if let Some(secret) = secret {
        std::fs::write(robot_dir.join("secret"), secret).expect("secret file");
    }
    robot_dir.display().to_string()
}

/// The shipped rules with every `for:` at 0s (see the header).
fn rules_without_for(dir: &Path) -> PathBuf {
    let shipped = cluster::repo_root().join("charts/securechat/files/prometheus-rules.yaml");
    let mut rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&shipped).expect("rules")).expect("yaml");
    let mut changed = 0;
    for group in rules["groups"].as_sequence_mut().expect("groups") {
        for rule in group["rules"].as_sequence_mut().expect("rules") {
            if let Some(m) = rule.as_mapping_mut()
                && m.contains_key("for")
            {
                m.insert("for".into(), "0s".into());
                changed += 1;
            }
        }
    }
    assert!(changed > 10, "the shipped rules lost their for: durations");
    let path = dir.join("rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(&rules).expect("yaml")).expect("write rules");
    path
}

/// The shipped routing example, pointed at this relay, with short timings.
fn alertmanager_config(dir: &Path, relay: SocketAddr) -> PathBuf {
    let example = cluster::repo_root().join("charts/securechat/files/alertmanager.yml");
    let text = std::fs::read_to_string(&example).expect("example");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let route = &mut config["route"];
    route["group_wait"] = "1s".into();
    route["group_interval"] = "1s".into();
    let mut urls = 0;
    for receiver in config["receivers"].as_sequence_mut().expect("receivers") {
        for hook in receiver["webhook_configs"]
            .as_sequence_mut()
            .expect("webhook_configs")
        {
            let url = hook["url"].as_str().expect("url").to_string();
            let path = url
                .strip_prefix(EXAMPLE_RELAY)
                .unwrap_or_else(|| panic!("{url} is not the chart's relay Service"));
            hook["url"] = format!("http://{relay}{path}").into();
            urls += 1;
        }
    }
    assert_eq!(urls, 3, "the example's robots changed");
    let path = dir.join("alertmanager.yml");
    std::fs::write(&path, serde_yaml::to_string(&config).expect("yaml")).expect("write");
    path
}

async fn wait_ready(client: &reqwest::Client, url: &str, chain: &Chain) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        if Instant::now() > deadline {
            panic!("{url} never answered\n{}", chain.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A firing certificate alert, as Alertmanager posts it.
fn notification() -> Value {
    json!({
        "version": "4", "status": "firing", "receiver": "r", "groupKey": "g",
        "groupLabels": {}, "commonLabels": {"alertname": "SecureChatCertificateExpiring"},
        "commonAnnotations": {}, "externalURL": "http://am", "truncatedAlerts": 0,
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "SecureChatCertificateExpiring", "namespace": "n", "model": "m", "severity": "critical"},
            "annotations": {"summary": "s"},
            "startsAt": "2026-12-06T16:40:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": "f"
        }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_alerts_reach_wecom_and_dingtalk_robots_through_alertmanager() {
    let prometheus = cluster::tool("prometheus");
    let alertmanager = cluster::tool("alertmanager");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();

    // The stand-in robots.
    let robots: Shared = Arc::default();
    let robot_addr = serve(
        Router::new()
            .route(WECOM_PATH, post(wecom))
            .route(DINGTALK_PATH, post(dingtalk))
            .with_state(robots.clone()),
    )
    .await;

    // The series Prometheus scrapes, as the servers export them: a
    // certificate with 50 minutes left (critical and warning), an API key
    // with 5 days (warning), a signing key with 2 hours (quiet).
    let series = Arc::new(Mutex::new(String::new()));
    let set_series = |cert_seconds: u64| {
        *series.lock().expect("lock") = format!(
            "securechat_certificate_expiry_seconds{{namespace=\"team-a\",model=\"llama\",pod=\"llama-0\"}} {cert_seconds}\n\
             securechat_api_key_expiry_seconds{{namespace=\"team-a\",model=\"llama\",key_id=\"k-7f3a\",name=\"ci-bot\",pod=\"llama-0\"}} 432000\n\
             securechat_signing_key_expiry_seconds{{namespace=\"team-a\",model=\"llama\",pod=\"llama-0\"}} 7200\n"
        );
    };
    set_series(3000);
    let metrics_addr = {
        let series = series.clone();
        serve(Router::new().route(
            "/metrics",
            get(move || {
                let series = series.clone();
                async move { series.lock().expect("lock").clone() }
            }),
        ))
        .await
    };

    // The relay, with robots whose files point at the stand-ins.
    let relay_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let wecom_url = |key: &str| format!("http://{robot_addr}{WECOM_PATH}?key={key}");
    let mut relay_args = vec![
        "alert-relay".to_string(),
        format!("--listen-address={relay_addr}"),
        "--attempts=3".into(),
        "--runbook-url-template=https://runbooks.example/securechat#{alertname}".into(),
    ];
    for (name, url, secret) in [
        ("oncall-wecom", wecom_url("oncall-wecom-key"), None),
        (
            "oncall-dingtalk",
            format!("http://{robot_addr}{DINGTALK_PATH}?access_token=oncall-dingtalk-token"),
            Some(DINGTALK_SECRET),
        ),
        ("team-wecom", wecom_url("team-wecom-key"), None),
        ("broken", wecom_url("broken-key"), None),
        ("revoked", wecom_url("revoked-key"), None),
    ] {
        let kind = if secret.is_some() {
            "dingtalk"
        } else {
            "wecom"
        };
        let robot_dir = write_robot(dir, name, url, secret);
        relay_args.push(format!("--robot={name}={kind}:{robot_dir}"));
    }
    let relay = Process::start(
        "relay",
        Path::new(env!("CARGO_BIN_EXE_securechat-operator")),
        &relay_args,
        dir,
    );

    let am_port = free_port();
    let am_config = alertmanager_config(dir, relay_addr);
    let am = Process::start(
        "alertmanager",
        &alertmanager,
        &[
            format!("--config.file={}", am_config.display()),
            format!("--storage.path={}", dir.join("am").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            // No peers: an empty cluster address turns gossip off.
            "--cluster.listen-address=".into(),
        ],
        dir,
    );

    let rules = rules_without_for(dir);
    let prom_port = free_port();
    let prom_config = dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             alerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: securechat-servers\n    static_configs: [{{targets: ['{metrics_addr}']}}]\n",
            rules.display()
        ),
    )
    .expect("prometheus.yml");
    let prom = Process::start(
        "prometheus",
        &prometheus,
        &[
            format!("--config.file={}", prom_config.display()),
            format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        dir,
    );
    let chain = Chain {
        processes: vec![relay, am, prom],
        robots: robots.clone(),
    };

    // reqwest's rustls needs the process's crypto provider (ring, as in
    // the rest of the workspace).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    wait_ready(&http, &format!("http://{relay_addr}/healthz"), &chain).await;

    // The relay's own answers: unknown robot, bad payload, a robot that
    // keeps failing (retried, then 502 so Alertmanager retries), a robot
    // that refuses (502 at once).
    let post = |path: &str, body: Vec<u8>| {
        http.post(format!("http://{relay_addr}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let body = serde_json::to_vec(&notification()).expect("json");
    let r = post("/robots/nobody", body.clone()).await.expect("relay");
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.expect("json error");
    assert_eq!(e["error"], "unknown_robot", "{e}");
    assert!(
        e["message"].as_str().unwrap_or("").contains("oncall-wecom"),
        "{e}"
    );
    let r = post("/robots/team-wecom", b"{\"version\":\"3\"}".to_vec())
        .await
        .expect("relay");
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.expect("json error");
    assert_eq!(e["error"], "invalid_payload", "{e}");
    let r = post("/robots/broken", body.clone()).await.expect("relay");
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.expect("json error");
    assert_eq!(e["error"], "robot_unavailable", "{e}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(message.contains("after 3 attempts"), "{e}");
    assert!(
        !message.contains("broken-key"),
        "the robot's key leaked: {e}"
    );
    assert_eq!(
        robots.lock().expect("lock").requests_to("broken-key", ""),
        3
    );
    let r = post("/robots/revoked", body).await.expect("relay");
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.expect("json error");
    assert_eq!(e["error"], "robot_refused", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("errcode 93000"),
        "{e}"
    );
    assert_eq!(
        robots.lock().expect("lock").requests_to("revoked-key", ""),
        1
    );

    // Critical: the on-call group, on both robots.
    let runbook = "https://runbooks.example/securechat#securechatcertificateexpiring";
    let wecom_critical = chain
        .message(
            "oncall-wecom-key",
            &[
                "FIRING",
                "SecureChatCertificateExpiring team-a/llama (critical)",
                "TLS certificate of team-a/llama expires within 24 hours",
                "**Model**: team-a/llama",
                "The serving certificate expires in",
                runbook,
            ],
        )
        .await;
    assert!(
        wecom_critical
            .markdown
            .contains("<font color=\"warning\">FIRING</font>")
    );
    let dingtalk_critical = chain
        .message(
            "oncall-dingtalk-token",
            &[
                "critical: TLS certificate of team-a/llama expires within 24 hours",
                runbook,
            ],
        )
        .await;
    assert_eq!(
        dingtalk_critical.title.as_deref(),
        Some("[FIRING:1] SecureChatCertificateExpiring team-a/llama (critical)")
    );
    // Warning: the team's group; the API key is named.
    chain
        .message(
            "team-wecom-key",
            &[
                "SecureChatApiKeyExpiring team-a/llama (warning)",
                "expires within 7 days",
                "**API key**: ci-bot (k-7f3a)",
                "https://runbooks.example/securechat#securechatapikeyexpiring",
            ],
        )
        .await;
    {
        let robots = robots.lock().expect("lock");
        // WeChat Work throttled the certificate's first message: the relay
        // tried again.
        let wecom = robots.requests_to("oncall-wecom-key", CERTIFICATE_GROUP);
        assert!(wecom >= 2, "{:?}", robots.requests);
        // DingTalk failed it three times: the relay gave up (3 attempts),
        // answered 502, and Alertmanager sent the notification again.
        let dingtalk = robots.requests_to("oncall-dingtalk-token", CERTIFICATE_GROUP);
        assert!(dingtalk >= 4, "{:?}", robots.requests);
        // The critical certificate alert silenced its warning twin: no
        // robot saw the certificate's warning.
        assert!(
            !robots.received.iter().any(|r| r
                .markdown
                .contains("SecureChatCertificateExpiring team-a/llama (warning)")),
            "inhibition failed:\n{}",
            chain.logs()
        );
    }

    // The certificate is renewed: both severities resolve, and the on-call
    // robots hear it.
    set_series(30 * 24 * 3600);
    let resolved = chain
        .message(
            "oncall-wecom-key",
            &["RESOLVED</font> SecureChatCertificateExpiring team-a/llama (critical)"],
        )
        .await;
    assert!(
        resolved.markdown.contains("**Resolved**: "),
        "{}",
        resolved.markdown
    );
    chain
        .message(
            "oncall-dingtalk-token",
            &["[RESOLVED:1] SecureChatCertificateExpiring team-a/llama (critical)"],
        )
        .await;
}
