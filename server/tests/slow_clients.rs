//! Slow clients (slowloris): a connection that trickles or stalls its
//! headers is closed when `limits.headerReadTimeout` runs out, one that
//! stalls its body gets 408 after `limits.bodyReadTimeout`, and everyone
//! else is served meanwhile.

use securechat_test_support::https::raw::{connect, read_response};
use securechat_test_support::https::{TestServer, chat_body, server};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Scheduling slack on a busy 2-core machine.
const SLACK: Duration = Duration::from_secs(3);

const CONFIG: &str = "rateLimit:\n  requestsPerMinute: 100000\n\
                      limits:\n  maxAuthFailuresPerMinute: 100000\n  \
                      headerReadTimeout: 2s\n  bodyReadTimeout: 2s\n";

fn head(s: &TestServer, extra: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {}\r\nContent-Type: application/json\r\n{extra}\r\n",
        s.keys.admin
    )
}

/// How a slow connection ended, and when (from the end of the handshake).
#[derive(Debug)]
struct Ended {
    after: Duration,
    status: Option<u16>,
    code: Option<String>,
}

/// Connects, writes `prefix`, then `trickle` one byte every 100 ms, and
/// waits (up to 15 s) for the server to answer or close.
async fn slow_client(s: &TestServer, prefix: Vec<u8>, trickle: Vec<u8>) -> Ended {
    let mut tls = connect(&s.ca_path(), s.running.api_addr.port()).await;
    let started = Instant::now();
    tls.write_all(&prefix).await.unwrap();
    tls.flush().await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let writer_task = tokio::spawn(async move {
        for byte in trickle {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(&[byte]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
        // Then stall with the connection open.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(writer);
    });
    let response = read_response(&mut reader, Duration::from_secs(15)).await;
    let after = started.elapsed();
    writer_task.abort();
    Ended {
        after,
        status: response.as_ref().map(|r| r.status),
        code: response.and_then(|r| r.json()["error"]["code"].as_str().map(str::to_string)),
    }
}

/// Good requests while the slow clients hang: each must be answered well
/// before the slow ones are cut off.
async fn others_are_served(s: &TestServer) {
    for i in 0..5 {
        let started = Instant::now();
        let resp = s
            .client
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(&s.keys.admin)
            .json(&chat_body(&format!("meanwhile {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a good request waited {:?} behind slow clients",
            started.elapsed()
        );
    }
}

fn assert_cut_off_in_time(what: &str, ended: &Ended) {
    eprintln!("{what}: {ended:?}");
    assert!(
        ended.after >= TIMEOUT - Duration::from_millis(200),
        "{what}: closed after {:?}, before the timeout",
        ended.after
    );
    assert!(
        ended.after <= TIMEOUT + SLACK,
        "{what}: still open after {:?}",
        ended.after
    );
}

#[tokio::test]
async fn trickled_or_stalled_headers_are_cut_off_and_others_are_served() {
    let s = server(CONFIG).await;
    let full = head(&s, "Content-Length: 2\r\n").into_bytes();
    let half = full[..full.len() / 2].to_vec();
    let clients = async {
        tokio::join!(
            // One byte every 100 ms: the whole head would take ~20 s.
            slow_client(&s, Vec::new(), full.clone()),
            // Half the headers, then nothing.
            slow_client(&s, half.clone(), Vec::new()),
            // A handshake and not a single byte.
            slow_client(&s, Vec::new(), Vec::new()),
        )
    };
    let meanwhile = async {
        // Let the slow clients connect first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        others_are_served(&s).await;
    };
    let ((trickled, stalled, silent), ()) = tokio::join!(clients, meanwhile);
    for (what, ended) in [
        ("trickled headers", &trickled),
        ("stalled headers", &stalled),
        ("no request", &silent),
    ] {
        assert_cut_off_in_time(what, ended);
        // hyper closes without an answer (it has no request to answer).
        assert_eq!(ended.status, None, "{what}");
    }
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_others_are_served() {
    let s = server(CONFIG).await;
    let mut prefix = head(&s, "Content-Length: 100\r\n").into_bytes();
    prefix.extend_from_slice(b"{\"messages\": [");
    let (stalled, ()) = tokio::join!(
        // 14 of 100 body bytes, then nothing.
        slow_client(&s, prefix.clone(), Vec::new()),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            others_are_served(&s).await;
        }
    );
    assert_cut_off_in_time("stalled body", &stalled);
    assert_eq!(stalled.status, Some(408));
    assert_eq!(stalled.code.as_deref(), Some("request_timeout"));
    // A trickled body (one byte per 100 ms, 100 bytes: 10 s) gets the same.
    let mut prefix = head(&s, "Content-Length: 100\r\n").into_bytes();
    prefix.extend_from_slice(b"{");
    let trickled = slow_client(&s, prefix, vec![b' '; 99]).await;
    assert_cut_off_in_time("trickled body", &trickled);
    assert_eq!(trickled.status, Some(408));
}
