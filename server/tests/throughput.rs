//! Rough throughput figures (not a timed test: `#[ignore]`d, run with
//! `cargo test -p securechat-server --release --test throughput -- --ignored --nocapture`).
//! Prints: sensitive-data filter MB/s next to the first seed's Python regex
//! filter on the same text, JWT verifications/s, and authenticated
//! `GET /v1/models` requests/s over TLS with 16 concurrent connections.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use securechat_crds::v1alpha1::SensitiveDataSpec;
use securechat_server::credentials::jwt::{Claims, SigningMaterial, TokenPolicy};
use securechat_server::pii::Filter;

use common::{RELAXED, server};

fn sample_text(bytes: usize) -> String {
    let paragraph = "The quarterly report is attached; contact jane.doe@example.com or call 138 1234 5678. \
        Card 4111 1111 1111 1111 was declined, order 20251126-0042 shipped. 身份证11010519491231002X 已核验。 \
        Nothing sensitive in this sentence at all, just ordinary prose about models and tokens. ";
    paragraph.repeat(bytes / paragraph.len() + 1)
}

#[test]
#[ignore]
fn filter_throughput_vs_seed_python() {
    let text = sample_text(4 * 1024 * 1024);
    let filter = Filter::new(&SensitiveDataSpec::default()).unwrap();
    let start = Instant::now();
    let (out, findings) = filter.redact(&text);
    let secs = start.elapsed().as_secs_f64();
    let mb = text.len() as f64 / 1e6;
    println!(
        "securechat filter: {:.1} MB/s ({} findings, {} bytes out)",
        mb / secs,
        findings.len(),
        out.len()
    );
    // The seed's SecurityFilter: three patterns, one re.sub pass each.
    let script = r#"
import re, sys, time
text = sys.stdin.read()
patterns = [r'\b\d{4}[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b', r'\b\d{3}[- ]?\d{2}[- ]?\d{4}\b',
            r'\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Z|a-z]{2,}\b']
t = time.time()
for p in patterns:
    text = re.sub(p, '[FILTERED]', text)
print(0, time.time() - t)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let py_secs: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    println!(
        "seed python filter: {:.1} MB/s; ratio {:.1}x",
        mb / py_secs,
        py_secs / secs
    );
}

#[test]
#[ignore]
fn jwt_verifications_per_second() {
    let now = Utc::now();
    let set = securechat_server::dev::signing_keyset(now).unwrap();
    let m = SigningMaterial::from_keyset(&set).unwrap();
    let policy = TokenPolicy {
        issuer: "i".into(),
        audience: "a".into(),
        leeway_secs: 5,
    };
    let token = m
        .sign(
            &Claims {
                iss: "i".into(),
                aud: "a".into(),
                sub: "s".into(),
                role: "user".into(),
                iat: now.timestamp(),
                nbf: now.timestamp(),
                exp: now.timestamp() + 600,
                jti: "j".into(),
            },
            now,
        )
        .unwrap();
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        m.verify(&token, &policy, now).unwrap();
    }
    println!(
        "EdDSA JWT verifications: {:.0}/s (one core)",
        n as f64 / start.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn authenticated_models_requests_per_second() {
    let s = Arc::new(server(RELAXED).await);
    let per_conn = 500;
    let conns = 16;
    // Warm up the connection pool.
    s.client
        .get(s.url("/v1/models"))
        .bearer_auth(&s.keys.developer)
        .send()
        .await
        .unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let client = common::client_for(&s.ca_path(), &[&rustls::version::TLS13]);
            let mut latencies = Vec::with_capacity(per_conn);
            for _ in 0..per_conn {
                let t = Instant::now();
                let r = client
                    .get(s.url("/v1/models"))
                    .bearer_auth(&s.keys.developer)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                latencies.push(t.elapsed().as_secs_f64());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let p99 = all[all.len() * 99 / 100];
    println!(
        "GET /v1/models over TLS with an API key: {:.0} req/s, p99 {:.2} ms ({} requests, {conns} connections)",
        all.len() as f64 / secs,
        p99 * 1000.0,
        all.len()
    );
}
