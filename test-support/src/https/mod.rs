//! Test harness: a real server over real TLS with a deterministic engine.

pub mod client_certs;
pub mod in_process;
pub mod process;
pub mod raw;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use securechat_crds::files::api_keys::ApiKeyState;
use securechat_crds::files::keyset::SigningKeySet;
use securechat_crds::v1alpha1::Tier;
use securechat_server::audit::Placement;
use securechat_server::engine::{
    ChatMessage, Engine, EngineError, FinishReason, GenerationEvent, GenerationRequest,
    GenerationStream, ModelInfo, Role, Usage,
};
use securechat_server::startup::{Running, ServeOptions, start};
use securechat_server::{dev, keys_cli};
use tokio::sync::mpsc;

pub const MODEL: &str = "test-model";
pub const CONTEXT: usize = 512;
/// The pod and node the test servers say they run in (what the downward
/// API gives a pod), for the audit lines.
pub const POD: &str = "securechat-chat-5d8c7-x2x9q";
pub const NODE: &str = "gpu-a100-0";

/// Echoes the last user message back, three characters per event (so the
/// streaming filter sees numbers split across chunks). One "token" per
/// whitespace-separated word.
pub struct EchoEngine {
    info: ModelInfo,
    pub queue_full: AtomicBool,
    pub calls: AtomicUsize,
    /// The messages of the latest request, as the engine received them.
    pub last_messages: Mutex<Vec<ChatMessage>>,
}

impl EchoEngine {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            info: ModelInfo {
                id: MODEL.into(),
                family: "echo".into(),
                context_length: CONTEXT,
            },
            queue_full: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            last_messages: Mutex::new(Vec::new()),
        })
    }
}

impl Engine for EchoEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_prompt_tokens(&self, messages: &[ChatMessage]) -> Result<usize, EngineError> {
        Ok(messages
            .iter()
            .map(|m| m.content.split_whitespace().count() + 1)
            .sum())
    }

    fn generate(&self, request: GenerationRequest) -> Result<GenerationStream, EngineError> {
        if self.queue_full.load(Ordering::SeqCst) {
            return Err(EngineError::QueueFull {
                queued: 8,
                retry_after: Duration::from_secs(2),
            });
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.last_messages.lock().unwrap() = request.messages.clone();
        let prompt_tokens = self.count_prompt_tokens(&request.messages)? as u32;
        let text = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let max = request.params.max_tokens as usize;
        let words: Vec<&str> = text.split_inclusive(' ').take(max).collect();
        let truncated = words.len() < text.split_inclusive(' ').count();
        let answer = words.concat();
        let word_count = words.len() as u32;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let chars: Vec<char> = answer.chars().collect();
            for chunk in chars.chunks(3) {
                if tx
                    .send(Ok(GenerationEvent::Text(chunk.iter().collect())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx
                .send(Ok(GenerationEvent::Done {
                    finish_reason: if truncated {
                        FinishReason::Length
                    } else {
                        FinishReason::Stop
                    },
                    usage: Usage {
                        prompt_tokens,
                        completion_tokens: word_count,
                    },
                }))
                .await;
        });
        Ok(rx)
    }

    fn queue_depth(&self) -> usize {
        0
    }
}

/// Keys of every state, created with the CLI's functions.
pub struct Keys {
    pub admin: String,
    pub developer: String,
    pub readonly: String,
    pub suspended: String,
    pub revoked: String,
    pub expired: String,
    pub admin_id: String,
    pub developer_id: String,
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub running: Running,
    pub engine: Arc<EchoEngine>,
    pub keys: Keys,
    pub client: reqwest::Client,
    pub base: String,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
    pub fn data(&self) -> &Path {
        self.dir.path()
    }
    pub fn keyset(&self) -> SigningKeySet {
        let bytes = std::fs::read(self.data().join("signing-keys/keyset.json")).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
    pub fn ca_path(&self) -> PathBuf {
        self.data().join("tls/ca.crt")
    }
}

pub fn add_keys(dir: &Path) -> Keys {
    let path = dir.join("api-keys.json");
    let now = Utc::now();
    let mut table = keys_cli::load(&path).unwrap();
    let (admin_id, admin) = keys_cli::create(&mut table, "admin", Tier::Admin, None, now).unwrap();
    let (developer_id, developer) = keys_cli::create(
        &mut table,
        "dev",
        Tier::Developer,
        Some(chrono::Duration::days(30)),
        now,
    )
    .unwrap();
    let (_, readonly) = keys_cli::create(&mut table, "guest", Tier::ReadOnly, None, now).unwrap();
    let (sid, suspended) =
        keys_cli::create(&mut table, "suspended", Tier::Admin, None, now).unwrap();
    keys_cli::suspend(&mut table, &sid).unwrap();
    let (rid, revoked) = keys_cli::create(&mut table, "revoked", Tier::Admin, None, now).unwrap();
    keys_cli::revoke(&mut table, &rid).unwrap();
    let (eid, expired) = keys_cli::create(&mut table, "expired", Tier::Admin, None, now).unwrap();
    let rec = table.get_mut(&eid).unwrap();
    rec.created_at = now - chrono::Duration::days(2);
    rec.expires_at = Some(now - chrono::Duration::days(1));
    assert_eq!(rec.state, ApiKeyState::Active);
    keys_cli::save(&path, &table).unwrap();
    Keys {
        admin,
        developer,
        readonly,
        suspended,
        revoked,
        expired,
        admin_id,
        developer_id,
    }
}

/// A TLS client that trusts only the dev CA.
pub fn client_for(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> reqwest::Client {
    client_with_timeout(ca, versions, Duration::from_secs(20))
}

/// Same, giving up on a request after `timeout`.
pub fn client_with_timeout(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
    timeout: Duration,
) -> reqwest::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .build()
        .unwrap()
}

/// Starts a server; `extra_config` replaces the dev config.
pub async fn server(extra_config: &str) -> TestServer {
    server_in(tempfile::tempdir().unwrap(), extra_config).await
}

/// Same, in a directory that may already hold dev material.
pub async fn server_in(dir: tempfile::TempDir, extra_config: &str) -> TestServer {
    server_with(dir, extra_config, None).await
}

/// Same, choosing whether the server owns the key table and writes
/// `lastUsedAt` back (standalone) or only reads it (operator mode).
pub async fn server_with(
    dir: tempfile::TempDir,
    extra_config: &str,
    record_last_used: Option<Duration>,
) -> TestServer {
    let config = dev::ensure(dir.path()).unwrap();
    if !extra_config.is_empty() {
        std::fs::write(&config, extra_config).unwrap();
    }
    let keys = add_keys(dir.path());
    serve_prepared(dir, keys, record_last_used).await
}

/// Options for a server of the dev material in `dir`, on free ports.
pub fn serve_options(dir: &Path, record_last_used: Option<Duration>) -> ServeOptions {
    ServeOptions {
        config_path: dir.join("config.yaml"),
        api_addr: "127.0.0.1:0".parse().unwrap(),
        web_addr: "127.0.0.1:0".parse().unwrap(),
        // The dev CA, so the OIDC test's fake identity provider (which
        // serves the same dev certificate) is trusted.
        oidc_ca_bundle: Some(dir.join("tls/ca.crt")),
        // Off unless asked for: tests that edit the table without the CLI's
        // lock would race the writer.
        record_last_used,
        path_root: None,
        placement: Placement {
            pod: Some(POD.into()),
            node: Some(NODE.into()),
        },
    }
}

/// Starts a server on a directory already holding its dev material, its
/// config and `keys`.
pub async fn serve_prepared(
    dir: tempfile::TempDir,
    keys: Keys,
    record_last_used: Option<Duration>,
) -> TestServer {
    let engine = EchoEngine::new();
    let running = start_on(dir.path(), engine.clone(), record_last_used).await;
    let client = client_for(&dir.path().join("tls/ca.crt"), &[&rustls::version::TLS13]);
    let base = format!("https://localhost:{}", running.api_addr.port());
    TestServer {
        dir,
        running,
        engine,
        keys,
        client,
        base,
    }
}

/// Starts a server with `engine` on `dir`'s dev material and config.
pub async fn start_on(
    dir: &Path,
    engine: Arc<dyn Engine>,
    record_last_used: Option<Duration>,
) -> Running {
    let options = serve_options(dir, record_last_used);
    start(&options, engine).await.unwrap()
}

/// Servers on one directory (one config, one key table, one CA), each a
/// separate server with its own state: replicas as the operator runs them.
pub struct Replicas {
    /// Replica 0, with the keys and a client trusting the CA.
    pub first: TestServer,
    pub others: Vec<Running>,
}

impl Replicas {
    /// `n` replicas of a server configured with `config`.
    pub async fn start(config: &str, n: usize) -> Self {
        let first = server(config).await;
        let mut others = Vec::new();
        for _ in 1..n {
            others.push(start_on(first.data(), first.engine.clone(), None).await);
        }
        Self { first, others }
    }

    /// The base URL of replica `i`.
    pub fn base(&self, i: usize) -> String {
        match i {
            0 => self.first.base.clone(),
            i => format!("https://localhost:{}", self.others[i - 1].api_addr.port()),
        }
    }

    /// The web port's base URL of replica `i`.
    pub fn web_base(&self, i: usize) -> String {
        let running = match i {
            0 => &self.first.running,
            i => &self.others[i - 1],
        };
        format!("https://localhost:{}", running.web_addr.port())
    }

    pub fn len(&self) -> usize {
        1 + self.others.len()
    }

    /// Never: replica 0 always exists.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The default model (`make model`), as the server loads it; a missing
/// file fails the test with what to run.
pub fn default_engine() -> Arc<dyn Engine> {
    use securechat_server::inference;
    inference::load_engine(
        &inference::default_model_path().expect("HOME is set"),
        inference::EngineOptions::default(),
    )
    .expect("the default model (make model)")
}

/// A config generous enough that limits do not interfere with other tests.
pub const RELAXED: &str =
    "rateLimit:\n  requestsPerMinute: 100000\nlimits:\n  maxAuthFailuresPerMinute: 100000\n";

pub fn chat_body(text: &str) -> serde_json::Value {
    serde_json::json!({"model": MODEL, "messages": [{"role": "user", "content": text}]})
}

/// [`chat_body`] with each field of `extra` set.
pub fn chat_body_with(text: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut body = chat_body(text);
    for (k, v) in extra.as_object().expect("extra is an object") {
        body[k] = v.clone();
    }
    body
}

/// POSTs `body` to /v1/chat/completions with the credential `key`.
pub async fn post_chat(s: &TestServer, key: &str, body: &serde_json::Value) -> reqwest::Response {
    let request = s.client.post(s.url("/v1/chat/completions"));
    request.bearer_auth(key).json(body).send().await.unwrap()
}

/// The text exposition at /metrics.
pub async fn metrics_text(s: &TestServer) -> String {
    metrics_at(&s.client, &s.base).await
}

/// The text exposition at `base`/metrics.
pub async fn metrics_at(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series (`name{labels}` exactly as exposed).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Polls `check` until it holds or 10 s pass: reloads are asynchronous.
/// A deadline, not a timing assertion: the value is what is checked.
pub async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..200 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The JSON chunks of an OpenAI server-sent event stream, which must end
/// with `data: [DONE]`.
pub fn sse_chunks(text: &str) -> Vec<serde_json::Value> {
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// The text the chunks' deltas carry, in order.
pub fn sse_content(chunks: &[serde_json::Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}
