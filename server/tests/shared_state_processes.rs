//! Replicas as the operator runs them: three real `securechat-server`
//! processes (the binary cargo builds for these tests, with the default
//! model) on one config and key table, sharing a real redis-server
//! (scripts/valkey.sh). The in-process replicas of `shared_state.rs` cover
//! every scenario; these check the core ones across process boundaries:
//! a limit holds exactly across the three, a store killed mid-load gives
//! FailClosed 503s and never a 500 or a hang, and when it comes back the
//! processes use it again by themselves.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;

use securechat_server::dev;
use securechat_test_support::https::process::ServerProcess;
use securechat_test_support::https::{Keys, add_keys, client_for};
use securechat_test_support::store::StoreProcess;

/// Three processes on one directory: one config, one key table, one CA.
struct Processes {
    _dir: tempfile::TempDir,
    replicas: Vec<ServerProcess>,
    keys: Keys,
    client: reqwest::Client,
}

impl Processes {
    async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dev::ensure(dir.path()).unwrap();
        std::fs::write(&path, config).unwrap();
        let keys = add_keys(dir.path());
        let client = client_for(&dir.path().join("tls/ca.crt"), &[&rustls::version::TLS13]);
        let mut replicas: Vec<ServerProcess> = (0..3)
            .map(|i| {
                ServerProcess::spawn(
                    Path::new(env!("CARGO_BIN_EXE_securechat-server")),
                    dir.path(),
                    &format!("replica-{i}"),
                )
            })
            .collect();
        for replica in &mut replicas {
            replica.wait_ready(&client).await;
        }
        Self {
            _dir: dir,
            replicas,
            keys,
            client,
        }
    }

    /// `n` concurrent GET /v1/models, spread over the replicas in turn;
    /// the statuses.
    async fn models_burst(&self, key: &str, n: usize) -> Vec<u16> {
        let requests = (0..n).map(|i| {
            let url = format!("{}/v1/models", self.replicas[i % 3].base());
            let client = self.client.clone();
            let key = key.to_string();
            async move {
                let resp = client.get(url).bearer_auth(key).send().await.unwrap();
                let status = resp.status().as_u16();
                if status == 503 {
                    assert!(resp.headers().contains_key("retry-after"));
                    let body: Value = resp.json().await.unwrap();
                    assert_eq!(body["error"]["code"], "shared_state_unavailable", "{body}");
                }
                status
            }
        });
        join_all(requests).await
    }

    /// Waits until every replica's readiness probe reports the store as
    /// `want`.
    async fn store_status_everywhere(&self, want: &str) {
        for (i, replica) in self.replicas.iter().enumerate() {
            let mut last = Value::Null;
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                last = self
                    .client
                    .get(format!("{}/readyz", replica.base()))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if last["sharedState"]["status"] == want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                last["sharedState"]["status"],
                want,
                "replica {i}: {last}\n{}",
                replica.log_tail()
            );
        }
    }
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_admit_exactly_ten_and_fail_closed_until_the_store_is_back() {
    let mut store = StoreProcess::start();
    let config = format!(
        "rateLimit:\n  requestsPerMinute: 10\n\
         limits:\n  maxAuthFailuresPerMinute: 100000\n\
         sharedState:\n  address: {}\n  keyPrefix: test/processes/\n  \
         onUnavailable: FailClosed\n  timeout: 250ms\n  replicas: 3\n",
        store.address()
    );
    let p = Processes::start(&config).await;

    // 30 at once across the three processes under 10 a minute.
    let statuses = p.models_burst(&p.keys.developer, 30).await;
    assert_eq!(count(&statuses, 200), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 20, "{statuses:?}");

    // Killed in the middle of a burst (Admin: no request cap, so every
    // answer is the store's doing): admitted or 503, never a 500 or a
    // hang (the client gives up after 20 s).
    let (statuses, ()) = tokio::join!(p.models_burst(&p.keys.admin, 60), async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        store.kill();
    });
    assert_eq!(statuses.len(), 60);
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    let statuses = p.models_burst(&p.keys.developer, 12).await;
    assert_eq!(count(&statuses, 503), 12, "{statuses:?}");
    for replica in &p.replicas {
        let health = p
            .client
            .get(format!("{}/healthz", replica.base()))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }
    p.store_status_everywhere("unavailable").await;

    // Back, empty: no process restarted, and the limit is global again.
    store.restart();
    p.store_status_everywhere("ok").await;
    let statuses = p.models_burst(&p.keys.developer, 30).await;
    assert_eq!(count(&statuses, 200), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 20, "{statuses:?}");
}
