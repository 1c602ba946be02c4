//! A small closed-loop HTTPS load generator (wrk's model): N connections
//! spread over T threads, each sending one request after another on its own
//! keep-alive HTTP/1.1 connection for a fixed time. Both sides of the
//! server-vs-seed comparison are measured with it, so the client costs the
//! same for each.
//!
//!     cargo run --release --example loadgen -- \
//!         --url https://localhost:8000/v1/models --ca data/tls/ca.crt \
//!         --header "Authorization: Bearer $KEY" --duration 10
//!
//! Prints one JSON line: requests, errors, rps, p50/p90/p99/max latency (ms).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Options {
    url: Uri,
    ca: String,
    headers: Vec<(String, String)>,
    connections: usize,
    threads: usize,
    duration: Duration,
    warmup: Duration,
    label: String,
}

const USAGE: &str = "usage: loadgen --url https://HOST:PORT/PATH --ca CA.pem \
[--header 'Name: value']... [--connections 16] [--threads 2] [--duration 10] \
[--warmup 2] [--label NAME]";

fn parse_args() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let mut url = None;
    let mut ca = None;
    let mut options = Options {
        url: Uri::default(),
        ca: String::new(),
        headers: Vec::new(),
        connections: 16,
        threads: 2,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        label: String::new(),
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        let number = |text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("{flag}: {text:?} is not a whole number"))
        };
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--ca" => ca = Some(value()?),
            "--header" => {
                let h = value()?;
                let (name, v) = h
                    .split_once(':')
                    .ok_or(format!("--header {h:?}: expected 'Name: value'"))?;
                options
                    .headers
                    .push((name.trim().to_string(), v.trim().to_string()));
            }
            "--connections" => options.connections = number(value()?)?.max(1) as usize,
            "--threads" => options.threads = number(value()?)?.max(1) as usize,
            "--duration" => options.duration = Duration::from_secs(number(value()?)?.max(1)),
            "--warmup" => options.warmup = Duration::from_secs(number(value()?)?),
            "--label" => options.label = value()?,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let url = url.ok_or(format!("--url is required\n{USAGE}"))?;
    options.url = url.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
    if options.url.scheme_str() != Some("https") {
        return Err(format!("--url {url:?}: only https:// is supported"));
    }
    options.ca = ca.ok_or(format!("--ca is required\n{USAGE}"))?;
    Ok(options)
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

async fn connect(
    addr: SocketAddr,
    tls: &TlsConnector,
    name: &ServerName<'static>,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let stream = tls
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One keep-alive connection sending requests back to back until `end`;
/// requests completing before `measure_from` are not recorded. A failed
/// connection is counted and replaced.
async fn drive(
    options: Arc<Options>,
    addr: SocketAddr,
    tls: TlsConnector,
    name: ServerName<'static>,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let host = options
        .url
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let path = options
        .url
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let mut sender = None;
    while Instant::now() < end {
        if sender.is_none() {
            match connect(addr, &tls, &name).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    eprintln!("loadgen: {e}");
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        // The previous response is fully read, but the connection may not
        // have returned to idle yet.
        if s.ready().await.is_err() {
            tally.errors += 1;
            sender = None;
            continue;
        }
        let mut request = Request::get(path.as_str()).header("host", host.as_str());
        for (k, v) in &options.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let Ok(request) = request.body(Empty::new()) else {
            tally.errors += 1;
            break;
        };
        let started = Instant::now();
        let ok = match s.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let body = response.into_body().collect().await;
                status.is_success() && body.is_ok()
            }
            Err(_) => false,
        };
        let finished = Instant::now();
        if !ok {
            tally.errors += 1;
            sender = None;
            continue;
        }
        if started >= measure_from && finished <= end {
            tally.latencies_us.push(
                u32::try_from(finished.duration_since(started).as_micros()).unwrap_or(u32::MAX),
            );
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn main() {
    let options = match parse_args() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(options)) {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(options: Arc<Options>) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(&options.ca).map_err(|e| format!("{}: {e}", options.ca))?
    {
        roots
            .add(cert.map_err(|e| format!("{}: {e}", options.ca))?)
            .map_err(|e| format!("{}: {e}", options.ca))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config));
    let host = options.url.host().ok_or("--url has no host")?.to_string();
    let port = options.url.port_u16().unwrap_or(443);
    // Prefer IPv4: servers in the comparison listen on 127.0.0.1.
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    let addr = *addrs.first().ok_or(format!("{host} has no address"))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;

    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let tasks: Vec<_> = (0..options.connections)
        .map(|_| {
            tokio::spawn(drive(
                options.clone(),
                addr,
                tls.clone(),
                name.clone(),
                measure_from,
                end,
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let tally = task.await.map_err(|e| e.to_string())?;
        latencies.extend(tally.latencies_us);
        errors += tally.errors;
    }
    latencies.sort_unstable();
    let seconds = options.duration.as_secs_f64();
    Ok(format!(
        "{{\"label\":{:?},\"connections\":{},\"threads\":{},\"seconds\":{},\"requests\":{},\"errors\":{},\"rps\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        options.label,
        options.connections,
        options.threads,
        seconds,
        latencies.len(),
        errors,
        latencies.len() as f64 / seconds,
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
    ))
}
