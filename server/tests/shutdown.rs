//! A stopping server (SIGTERM in a pod: a scale-down, a rollout, an
//! eviction) finishes what it is serving: a streamed answer in progress
//! when the signal comes runs to its end, while the listener stops taking
//! connections, and the process then exits by itself. A real
//! `securechat-server` process with the real model, over real TLS: before
//! this, the process returned from `main` at once and cut the answer.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use securechat_server::dev;
use securechat_test_support::https::process::ServerProcess;
use securechat_test_support::https::{RELAXED, add_keys, client_with_timeout, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_in_flight_at_sigterm_runs_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dev::ensure(dir.path()).unwrap();
    std::fs::write(&config_path, RELAXED).unwrap();
    let keys = add_keys(dir.path());
    let client = client_with_timeout(
        &dir.path().join("tls/ca.crt"),
        &[&rustls::version::TLS13],
        Duration::from_secs(300),
    );
    let mut server = ServerProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_securechat-server")),
        dir.path(),
        "server",
    );
    server.wait_ready(&client).await;

    let mut answer = client
        .post(format!("{}/v1/chat/completions", server.base()))
        .bearer_auth(&keys.developer)
        .json(&json!({
            "messages": [{"role": "user", "content": "Count from one to one hundred in words."}],
            "max_tokens": 48, "temperature": 0, "stream": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // The first token is out: the answer is in flight.
    let mut body = String::new();
    while !body.contains("\"content\"") {
        let chunk = answer.chunk().await.unwrap().expect("a first chunk");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }

    server.terminate();
    // The listener closes at once: a new caller is refused, not queued.
    let port = server.port;
    let refused = eventually(async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    assert!(refused, "the stopping server still accepts connections");

    while let Some(chunk) = answer.chunk().await.unwrap_or_else(|e| {
        panic!(
            "the answer was cut after {body:?}: {e}\nserver log:\n{}",
            server.log_tail()
        )
    }) {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        body.trim_end().ends_with("data: [DONE]"),
        "the answer was cut: {body}"
    );
    assert!(
        ["length", "stop"]
            .iter()
            .any(|r| body.contains(&format!("\"finish_reason\":\"{r}\""))),
        "no finish reason: {body}"
    );
    let status = server.exited(Duration::from_secs(60)).await;
    assert!(status.success(), "exit after SIGTERM: {status}");
}
