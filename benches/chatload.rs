//! A concurrent streaming-chat load generator for the OpenAI chat
//! completions API (SSE): `clients` concurrent clients, each sending its
//! requests one after another on its own keep-alive HTTP/1.1 connection,
//! greedy, with distinct prompts. Speaks HTTPS with a CA file and a Bearer
//! key (securechat-server) or plain HTTP (llama.cpp's llama-server), so both
//! sides of scripts/bench-concurrency.sh are measured with the same client.
//!
//!     cargo run --release --example chatload -- \
//!         --url https://localhost:8000 --ca data/tls/ca.crt --api-key "$KEY" \
//!         --clients 16 --requests 2 --max-tokens 64
//!
//! What it measures, per request, from the moment it is first sent:
//! - TTFT: until the first non-empty content delta (queueing included);
//! - inter-token latency: the gaps between content deltas;
//! - completion tokens: from the usage chunk (`stream_options.include_usage`)
//!   when the server sends one, else the number of content deltas.
//!
//! A 503 or 429 (the model's queue is full) is retried after its
//! Retry-After, as the OpenAI SDKs do; the time waited counts towards that
//! request's TTFT, and the retries are reported.
//!
//! Modes: `load` (one turn per request; `--system-words` puts a shared
//! system prompt of that many words in front of every request, the prefix
//! cache case) and `multiturn` (each request is a two-turn conversation
//! whose second turn re-sends the first turn's history; TTFT of both turns
//! are reported). Prints one JSON line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One turn per request.
    Load,
    /// Two turns per request; the second re-sends the first's history.
    Multiturn,
}

#[derive(Parser, Debug)]
#[command(about = "Concurrent streaming chat clients against an OpenAI-compatible server")]
struct Options {
    /// The server's base URL: https://HOST:PORT (needs --ca) or http://HOST:PORT.
    #[arg(long)]
    url: Uri,
    /// PEM CA certificate that signed an https server's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "CHATLOAD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The `model` field of each request (default: none sent).
    #[arg(long)]
    model: Option<String>,
    /// A name copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long, value_enum, default_value_t = Mode::Load)]
    mode: Mode,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Requests (conversations, in multiturn mode) per client.
    #[arg(long, default_value_t = 2)]
    requests: usize,
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// Words of a system prompt shared by every request (0: none; 900 make
    /// ~1,000 tokens with the default model).
    #[arg(long, default_value_t = 0)]
    system_words: usize,
    /// Multiturn: words of the document in each conversation's first turn
    /// (1,250 make a ~1,400-token first turn with the default model).
    #[arg(long, default_value_t = 1250)]
    document_words: usize,
    /// Index of the first prompt: runs against one server use disjoint
    /// ranges, so no run finds another's prompts in a prefix cache.
    #[arg(long, default_value_t = 0)]
    first_prompt: usize,
    /// Unmeasured requests sent one at a time before the measured ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The load generator's own worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("--url {0}: only http:// and https:// are supported")]
    Scheme(String),
    #[error("--url {0}: an https URL needs --ca")]
    NoCa(String),
    #[error("--url has no host")]
    NoHost,
    #[error("reading the CA file {path}: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    #[error("{host} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("HTTP {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the stream sent an error: {0}")]
    StreamError(String),
    #[error("the stream ended without [DONE]")]
    Truncated,
    #[error("the answer had no content")]
    NoContent,
    #[error("a client task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What one SSE `data:` line of a chat completion chunk carries.
#[derive(Debug, Default, PartialEq)]
struct Chunk {
    content: Option<String>,
    /// (prompt_tokens, completion_tokens)
    usage: Option<(u64, u64)>,
    error: Option<String>,
    done: bool,
}

/// Reads one line of an SSE stream; `None` for lines that are not data
/// (blank separators, comments, `event:`) or not JSON.
fn parse_sse_line(line: &str) -> Option<Chunk> {
    let data = line.strip_prefix("data:")?.trim();
    if data == "[DONE]" {
        return Some(Chunk {
            done: true,
            ..Chunk::default()
        });
    }
    let v: Value = serde_json::from_str(data).ok()?;
    let error = v.get("error").map(|e| {
        e.get("message")
            .and_then(Value::as_str)
            .map_or_else(|| e.to_string(), str::to_owned)
    });
    let content = v
        .pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let usage = v.get("usage").and_then(|u| {
        Some((
            u.get("prompt_tokens")?.as_u64()?,
            u.get("completion_tokens")?.as_u64()?,
        ))
    });
    Some(Chunk {
        content,
        usage,
        error,
        done: false,
    })
}

/// What one request measured.
#[derive(Debug, Clone)]
struct Sample {
    ttft: Duration,
    /// Gaps between content deltas.
    gaps: Vec<Duration>,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Whether the counts came from a usage chunk (else from the deltas).
    usage_reported: bool,
    retries: u64,
    text: String,
}

/// Word lists for prompts: distinct prompts from an index, without digits
/// or anything else the sensitive-data filter would rewrite.
const ADJECTIVES: [&str; 16] = [
    "brave",
    "quiet",
    "curious",
    "ancient",
    "clever",
    "gentle",
    "restless",
    "tiny",
    "golden",
    "lonely",
    "cheerful",
    "stubborn",
    "wise",
    "forgotten",
    "hungry",
    "patient",
];
const NOUNS: [&str; 16] = [
    "fox",
    "lighthouse keeper",
    "robot",
    "baker",
    "dragon",
    "gardener",
    "sailor",
    "owl",
    "painter",
    "clockmaker",
    "river",
    "librarian",
    "mountain goat",
    "inventor",
    "whale",
    "shepherd",
];
const PLACES: [&str; 16] = [
    "a desert town",
    "the northern forest",
    "a floating island",
    "an old harbour",
    "a busy market",
    "the frozen lake",
    "a hidden valley",
    "a crowded city",
    "the edge of the sea",
    "a mountain village",
    "a quiet library",
    "a train station",
    "a castle ruin",
    "the rice fields",
    "a lighthouse",
    "a secret garden",
];
const VERBS: [&str; 8] = [
    "watches",
    "repairs",
    "visits",
    "remembers",
    "follows",
    "describes",
    "protects",
    "questions",
];

/// The user prompt of request `index`: distinct for each index below 4,096.
fn user_prompt(index: usize) -> String {
    let adjective = ADJECTIVES[index % 16];
    let noun = NOUNS[(index / 16) % 16];
    let place = PLACES[(index / 256) % 16];
    format!(
        "Write a long, detailed story about a {adjective} {noun} who lives in {place}. \
         Describe the mornings, the people, and one surprising event."
    )
}

/// `words` words of plain prose, made from the word lists; `seed` varies
/// the text (different documents for different conversations).
fn prose(words: usize, seed: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut i = seed.wrapping_mul(7919);
    while count < words {
        let sentence = format!(
            "The {} {} {} the {} {} near {}. ",
            ADJECTIVES[i % 16],
            NOUNS[(i / 3) % 16],
            VERBS[(i / 5) % 8],
            ADJECTIVES[(i / 7) % 16],
            NOUNS[(i / 11) % 16],
            PLACES[(i / 13) % 16],
        );
        count += sentence.split_whitespace().count();
        out.push_str(&sentence);
        i = i.wrapping_add(37);
    }
    out.trim_end().to_owned()
}

/// The shared system prompt of the prefix-cache run.
fn system_prompt(words: usize) -> String {
    format!(
        "You are the storyteller of a village archive. Keep every answer in the style of the \
         archive's records below.\n\n{}",
        prose(words, 0)
    )
}

fn request_body(options: &Options, messages: &[Value]) -> Bytes {
    let mut body = json!({
        "messages": messages,
        "max_tokens": options.max_tokens,
        "temperature": 0.0,
        // llama.cpp's default penalty is off too; said explicitly, since
        // greedy parity needs it off.
        "repeat_penalty": 1.0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(model) = &options.model {
        body["model"] = json!(model);
    }
    Bytes::from(body.to_string())
}

/// Where and how to connect.
struct Target {
    host: String,
    port: u16,
    /// `Host` header.
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    path: String,
    api_key: Option<String>,
}

impl Target {
    fn new(options: &Options) -> Result<Target, LoadError> {
        let url = &options.url;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(LoadError::Scheme(url.to_string())),
        };
        let host = url.host().ok_or(LoadError::NoHost)?.to_owned();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let ca = options
                .ca
                .as_ref()
                .ok_or_else(|| LoadError::NoCa(url.to_string()))?;
            let ca_error = |message: String| LoadError::Ca {
                path: ca.clone(),
                message,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| ca_error(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| ca_error(e.to_string()))?)
                    .map_err(|e| ca_error(e.to_string()))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = ServerName::try_from(host.clone())
                .map_err(|_| LoadError::ServerName { host: host.clone() })?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let base = url.path().trim_end_matches('/');
        Ok(Target {
            authority: url
                .authority()
                .map_or_else(|| host.clone(), |a| a.to_string()),
            host,
            port,
            tls,
            path: format!("{base}/v1/chat/completions"),
            api_key: options.api_key.clone(),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, LoadError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| LoadError::Connect {
                addr: addr.clone(),
                source,
            })?;
        tcp.set_nodelay(true).map_err(|source| LoadError::Connect {
            addr: addr.clone(),
            source,
        })?;
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| LoadError::Connect { addr, source })?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                Ok(sender)
            }
            None => {
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                Ok(sender)
            }
        }
    }
}

/// One client's keep-alive connection, reopened when it breaks.
struct Client {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// How long a busy server asks us to wait; one second when it does not say.
fn retry_after(headers: &hyper::HeaderMap) -> Duration {
    headers
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
}

impl Client {
    /// Sends one streaming chat request (retrying while the server is
    /// busy) and reads its stream to the end.
    async fn chat(&mut self, body: Bytes) -> Result<Sample, LoadError> {
        let started = Instant::now();
        let mut retries = 0;
        loop {
            // The previous response is fully read, but the connection may
            // not be idle yet; a broken one is replaced.
            let reusable = match self.sender.as_mut() {
                Some(s) => s.ready().await.is_ok(),
                None => false,
            };
            if !reusable {
                self.sender = None;
            }
            let fresh = self.sender.is_none();
            let sender = match &mut self.sender {
                Some(s) => s,
                None => self.sender.insert(self.target.connect().await?),
            };
            let mut request = Request::post(self.target.path.as_str())
                .header("host", self.target.authority.as_str())
                .header("content-type", "application/json")
                .header("accept", "text/event-stream");
            if let Some(key) = &self.target.api_key {
                request = request.header("authorization", format!("Bearer {key}"));
            }
            let response = match sender
                .send_request(request.body(Full::new(body.clone()))?)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.sender = None;
                    // A server may close an idle keep-alive connection just
                    // as the next request goes out (llama-server does): the
                    // request never reached it, so it is sent again on a
                    // new connection.
                    if !fresh && e.is_incomplete_message() {
                        continue;
                    }
                    return Err(e.into());
                }
            };
            let status = response.status();
            if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
            {
                let wait = retry_after(response.headers());
                // Read the refusal so the connection can be reused.
                let _ = response.into_body().collect().await;
                retries += 1;
                tokio::time::sleep(wait).await;
                continue;
            }
            if !status.is_success() {
                let body = response.into_body().collect().await?.to_bytes();
                return Err(LoadError::Status {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
            }
            let result = read_stream(response.into_body(), started, retries).await;
            if result.is_err() {
                self.sender = None;
            }
            return result;
        }
    }
}

async fn read_stream(
    mut body: hyper::body::Incoming,
    started: Instant,
    retries: u64,
) -> Result<Sample, LoadError> {
    let mut pending = Vec::<u8>::new();
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut gaps = Vec::new();
    let mut deltas = 0u64;
    let mut usage = None;
    let mut text = String::new();
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let arrived = Instant::now();
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(chunk) = parse_sse_line(line.trim_end_matches(['\r', '\n'])) else {
                continue;
            };
            if let Some(error) = chunk.error {
                return Err(LoadError::StreamError(error));
            }
            if let Some(content) = chunk.content {
                deltas += 1;
                text.push_str(&content);
                if let Some(previous) = last {
                    gaps.push(arrived.duration_since(previous));
                }
                first.get_or_insert(arrived);
                last = Some(arrived);
            }
            if chunk.usage.is_some() {
                usage = chunk.usage;
            }
            done |= chunk.done;
        }
    }
    if !done {
        return Err(LoadError::Truncated);
    }
    let first = first.ok_or(LoadError::NoContent)?;
    let (prompt_tokens, completion_tokens) = usage.unwrap_or((0, deltas));
    Ok(Sample {
        ttft: first.duration_since(started),
        gaps,
        prompt_tokens,
        completion_tokens,
        usage_reported: usage.is_some(),
        retries,
        text,
    })
}

/// The `p`th percentile (nearest rank) in milliseconds; 0 when empty.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

fn sorted(mut values: Vec<Duration>) -> Vec<Duration> {
    values.sort_unstable();
    values
}

/// The messages of load-mode request `index`.
fn load_messages(options: &Options, system: Option<&str>, index: usize) -> Vec<Value> {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": user_prompt(options.first_prompt + index)}));
    messages
}

/// The first turn of multiturn conversation `index`: a document to read,
/// distinct from its very first words on (nothing for a cache to share).
fn first_turn(options: &Options, index: usize) -> Vec<Value> {
    let n = options.first_prompt + index;
    let document = prose(options.document_words, n + 1);
    vec![json!({
        "role": "user",
        "content": format!(
            "{document}\n\nThese are the village records. Summarise them in a few sentences."
        ),
    })]
}

const SECOND_TURN: &str = "Which of these records is the most surprising, and why?";

/// One client's share of the measured requests: indices `client`,
/// `client + clients`, ...
async fn run_client(
    options: Arc<Options>,
    target: Arc<Target>,
    system: Option<Arc<str>>,
    client: usize,
) -> Result<Vec<(Sample, Option<Sample>)>, LoadError> {
    let mut c = Client {
        target,
        sender: None,
    };
    let mut out = Vec::new();
    for r in 0..options.requests {
        // Warm-up requests take the indices below `clients * requests`'s range.
        let index = options.warmup + r * options.clients + client;
        out.push(one_request(&options, &mut c, system.as_deref(), index).await?);
    }
    Ok(out)
}

async fn one_request(
    options: &Options,
    client: &mut Client,
    system: Option<&str>,
    index: usize,
) -> Result<(Sample, Option<Sample>), LoadError> {
    match options.mode {
        Mode::Load => {
            let messages = load_messages(options, system, index);
            Ok((client.chat(request_body(options, &messages)).await?, None))
        }
        Mode::Multiturn => {
            let mut messages = first_turn(options, index);
            let first = client.chat(request_body(options, &messages)).await?;
            messages.push(json!({"role": "assistant", "content": first.text}));
            messages.push(json!({"role": "user", "content": SECOND_TURN}));
            let second = client.chat(request_body(options, &messages)).await?;
            Ok((first, Some(second)))
        }
    }
}

async fn run(options: Arc<Options>) -> Result<Value, LoadError> {
    let target = Arc::new(Target::new(&options)?);
    let system: Option<Arc<str>> =
        (options.system_words > 0).then(|| system_prompt(options.system_words).into());

    let mut warm = Client {
        target: target.clone(),
        sender: None,
    };
    for index in 0..options.warmup {
        one_request(&options, &mut warm, system.as_deref(), index).await?;
    }

    let start = Instant::now();
    let tasks: Vec<_> = (0..options.clients)
        .map(|client| {
            tokio::spawn(run_client(
                options.clone(),
                target.clone(),
                system.clone(),
                client,
            ))
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    let wall = start.elapsed().as_secs_f64();

    let all: Vec<&Sample> = samples
        .iter()
        .flat_map(|(a, b)| std::iter::once(a).chain(b.as_ref()))
        .collect();
    let completion_tokens: u64 = all.iter().map(|s| s.completion_tokens).sum();
    let ttft = sorted(samples.iter().map(|(a, _)| a.ttft).collect());
    let gaps = sorted(all.iter().flat_map(|s| s.gaps.iter().copied()).collect());
    let deltas: usize = all.iter().map(|s| s.gaps.len() + 1).sum();
    let mean = |values: &mut dyn Iterator<Item = u64>| {
        let v: Vec<u64> = values.collect();
        v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
    };
    let mut line = json!({
        "label": options.label,
        "mode": match options.mode { Mode::Load => "load", Mode::Multiturn => "multiturn" },
        "clients": options.clients,
        "requests": samples.len(),
        "max_tokens": options.max_tokens,
        "wall_s": wall,
        "completion_tokens": completion_tokens,
        "tokens_per_s": completion_tokens as f64 / wall,
        "tokens_per_delta": completion_tokens as f64 / deltas.max(1) as f64,
        "usage_reported": all.iter().all(|s| s.usage_reported),
        "retries": all.iter().map(|s| s.retries).sum::<u64>(),
        "mean_prompt_tokens": mean(&mut samples.iter().map(|(a, _)| a.prompt_tokens)),
        "mean_completion_tokens": mean(&mut samples.iter().map(|(a, _)| a.completion_tokens)),
        "ttft_p50_ms": percentile_ms(&ttft, 50.0),
        "ttft_p95_ms": percentile_ms(&ttft, 95.0),
        "itl_p50_ms": percentile_ms(&gaps, 50.0),
        "itl_p95_ms": percentile_ms(&gaps, 95.0),
        "first_text": samples.first().map(|(a, _)| a.text.clone()),
    });
    if options.mode == Mode::Multiturn {
        let second: Vec<&Sample> = samples.iter().filter_map(|(_, b)| b.as_ref()).collect();
        let ttft2 = sorted(second.iter().map(|s| s.ttft).collect());
        line["turn2_ttft_p50_ms"] = json!(percentile_ms(&ttft2, 50.0));
        line["turn2_ttft_p95_ms"] = json!(percentile_ms(&ttft2, 95.0));
        line["turn2_mean_prompt_tokens"] = json!(mean(&mut second.iter().map(|s| s.prompt_tokens)));
    }
    Ok(line)
}

fn main() {
    let options = Arc::new(Options::parse());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatload: starting the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(options)) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("chatload: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_deltas_and_usage_are_read() {
        let c = parse_sse_line(r#"data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#);
        assert_eq!(c.unwrap().content.as_deref(), Some("Hi"));
        // The role-only head (ours: empty content; llama-server: null) is no token.
        let head = parse_sse_line(
            r#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
        );
        assert_eq!(head.unwrap().content, None);
        let null = parse_sse_line(r#"data: {"choices":[{"delta":{"content":null}}]}"#);
        assert_eq!(null.unwrap().content, None);
        let usage = parse_sse_line(
            r#"data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":64,"total_tokens":76}}"#,
        );
        assert_eq!(usage.unwrap().usage, Some((12, 64)));
        assert!(parse_sse_line("data: [DONE]").unwrap().done);
    }

    #[test]
    fn non_data_lines_are_skipped_and_errors_surface() {
        assert_eq!(parse_sse_line(""), None);
        assert_eq!(parse_sse_line(": keep-alive"), None);
        assert_eq!(parse_sse_line("event: message"), None);
        let e = parse_sse_line(r#"data: {"error":{"message":"boom","type":"server_error"}}"#);
        assert_eq!(e.unwrap().error.as_deref(), Some("boom"));
    }

    #[test]
    fn prompts_are_distinct_and_free_of_digits() {
        let prompts: std::collections::HashSet<String> = (0..4096).map(user_prompt).collect();
        assert_eq!(prompts.len(), 4096);
        assert!(
            prompts
                .iter()
                .all(|p| !p.chars().any(|c| c.is_ascii_digit()))
        );
        let text = prose(750, 0);
        let words = text.split_whitespace().count();
        assert!((750..760).contains(&words), "{words} words");
        assert_ne!(prose(100, 1), prose(100, 2));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile_ms(&values, 50.0), 50.0);
        assert_eq!(percentile_ms(&values, 95.0), 95.0);
        assert_eq!(percentile_ms(&[], 95.0), 0.0);
    }
}
