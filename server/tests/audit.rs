//! The audit log: one JSON line per request, with who/what/decision, and
//! never a secret or prompt text unless configured.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use securechat_test_support::https::{self, RELAXED, chat_body, server};
use serde_json::Value;

/// The process's audit sink, once per test binary (as `main` sets it).
fn captured() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let lines = buf.clone();
        assert!(securechat_server::audit::set_sink(move |line| {
            lines.lock().unwrap().extend_from_slice(line)
        }));
        buf
    })
    .clone()
}

async fn audit_lines(buf: &Arc<Mutex<Vec<u8>>>, route: &str, want: usize) -> Vec<Value> {
    for _ in 0..50 {
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("every line is JSON"))
            .filter(|v| v["target"] == "securechat::audit" && v["route"] == route)
            .collect();
        if lines.len() >= want {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no audit line for {route}");
}

#[tokio::test]
async fn one_json_line_per_request_without_secrets() {
    let buf = captured();
    let s = server(RELAXED).await;
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&s.keys.developer)
        .json(&chat_body("top secret plan for card 4111111111111111"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let lines = audit_lines(&buf, "/v1/chat/completions", 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["status"], 200);
    assert_eq!(line["decision"], "allowed");
    assert_eq!(line["principal"], format!("key:{}", s.keys.developer_id));
    assert_eq!(line["role"], "Developer");
    assert_eq!(line["tokens_out"], 6);
    assert_eq!(line["redactions"], 1);
    assert!(line["latency_ms"].as_f64().is_some());
    // The pod and node it ran on (the second seed's node id), so failures
    // can be grouped by node.
    assert_eq!(line["pod"], https::POD);
    assert_eq!(line["node"], https::NODE);
    let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    assert!(!text.contains(&s.keys.developer), "API key in the log");
    assert!(
        !text.contains("top secret") && !text.contains("4111111111111111"),
        "prompt in the log"
    );

    // A refused request is audited with its reason.
    let resp = s
        .client
        .get(s.url("/admin/keys"))
        .bearer_auth("sk-sc-nope-x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let lines = audit_lines(&buf, "/admin/keys", 1).await;
    assert_eq!(lines[0]["decision"], "unauthenticated");
    assert_eq!(lines[0]["auth_failure"], "malformed");
}
