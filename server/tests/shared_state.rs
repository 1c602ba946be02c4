//! Replicas that behave as one (sharedState): three servers on one config
//! and key table, sharing a real redis-server (scripts/valkey.sh), each
//! test with its own store. Limits hold across replicas under concurrency;
//! a store that goes away is answered with 503s (FailClosed) or per-replica
//! shares (LocalFallback), and when it comes back the servers use it again
//! by themselves.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use securechat_server::dev;
use securechat_server::shared::usage::USAGE_RETENTION;
use securechat_test_support::https::{
    Replicas, TestServer, chat_body_with, metrics_at, metrics_text, sample, server_in,
};
use securechat_test_support::store::{StoreOptions, StoreProcess};

/// A config with the store at `address` and `rest` appended (YAML).
fn config(address: &str, on_unavailable: &str, rest: &str) -> String {
    format!(
        "limits:\n  maxAuthFailuresPerMinute: 100000\n\
         sharedState:\n  address: {address}\n  keyPrefix: test/replicas/\n  \
         onUnavailable: {on_unavailable}\n  timeout: 250ms\n  replicas: 3\n{rest}"
    )
}

/// Sends `n` GET /v1/models at once, spread over the replicas in turn,
/// and returns the statuses.
async fn models_burst(r: &Replicas, key: &str, n: usize) -> Vec<u16> {
    let requests = (0..n).map(|i| {
        let url = format!("{}/v1/models", r.base(i % r.len()));
        let client = r.first.client.clone();
        let key = key.to_string();
        async move {
            let resp = client.get(url).bearer_auth(key).send().await.unwrap();
            let status = resp.status().as_u16();
            if status == 503 {
                // FailClosed's answer: a JSON error and a Retry-After.
                assert!(resp.headers().contains_key("retry-after"));
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"]["code"], "shared_state_unavailable", "{body}");
            }
            status
        }
    });
    join_all(requests).await
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Waits until every replica's readiness probe reports the store as `want`.
async fn store_status_everywhere(r: &Replicas, want: &str) {
    for i in 0..r.len() {
        let mut last = Value::Null;
        let mut ok = false;
        for _ in 0..100 {
            last = r
                .first
                .client
                .get(format!("{}/readyz", r.base(i)))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if last["sharedState"]["status"] == want {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "replica {i}: sharedState never became {want}: {last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_requests_across_three_replicas_admit_exactly_ten() {
    let store = StoreProcess::start();
    let r = Replicas::start(
        &config(
            &store.address(),
            "FailClosed",
            "rateLimit:\n  requestsPerMinute: 10\n",
        ),
        3,
    )
    .await;
    let statuses = models_burst(&r, &r.first.keys.developer, 30).await;
    assert_eq!(count(&statuses, 200), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 20, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_closed_answers_503_while_the_store_is_down_and_recovers_by_itself() {
    let mut store = StoreProcess::start();
    let r = Replicas::start(
        &config(
            &store.address(),
            "FailClosed",
            "rateLimit:\n  requestsPerMinute: 10\n",
        ),
        3,
    )
    .await;
    // Killed in the middle of a burst: every request gets an answer, each
    // one of admitted, limited or 503 (never a 500, never a hang; the
    // client gives up after 20 s).
    let (statuses, ()) = tokio::join!(models_burst(&r, &r.first.keys.admin, 60), async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        store.kill();
    });
    assert_eq!(statuses.len(), 60);
    assert!(
        statuses.iter().all(|s| [200, 429, 503].contains(s)),
        "{statuses:?}"
    );
    let statuses = models_burst(&r, &r.first.keys.developer, 12).await;
    assert_eq!(count(&statuses, 503), 12, "{statuses:?}");
    // Health stays up, and says why.
    for i in 0..r.len() {
        let health = r
            .first
            .client
            .get(format!("{}/healthz", r.base(i)))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }
    store_status_everywhere(&r, "unavailable").await;
    let metrics = metrics_at(&r.first.client, &r.base(0)).await;
    let errors: f64 = ["timeout", "connection"]
        .iter()
        .filter_map(|k| {
            sample(
                &metrics,
                &format!("securechat_shared_state_errors_total{{kind=\"{k}\"}}"),
            )
        })
        .sum();
    assert!(errors >= 1.0, "{metrics}");

    // Back (empty, as a restarted store without persistence is): no
    // server restarts, and the limit is global again.
    store.restart();
    store_status_everywhere(&r, "ok").await;
    let statuses = models_burst(&r, &r.first.keys.developer, 30).await;
    assert_eq!(count(&statuses, 200), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 20, "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_fallback_enforces_each_replicas_share_until_the_store_is_back() {
    let mut store = StoreProcess::start();
    let r = Replicas::start(
        &config(
            &store.address(),
            "LocalFallback",
            "rateLimit:\n  requestsPerMinute: 30\n",
        ),
        3,
    )
    .await;
    store.kill();
    // 15 a replica; each admits its share, 30 / 3.
    let statuses = models_burst(&r, &r.first.keys.developer, 45).await;
    assert_eq!(count(&statuses, 200), 30, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 15, "{statuses:?}");
    let metrics = metrics_at(&r.first.client, &r.base(0)).await;
    assert_eq!(
        sample(&metrics, "securechat_shared_state_local_fallback"),
        Some(1.0),
        "{metrics}"
    );

    // Back: every replica's local share is spent, so what is admitted now
    // is the store's fresh, global limit.
    store.restart();
    store_status_everywhere(&r, "ok").await;
    let metrics = metrics_at(&r.first.client, &r.base(0)).await;
    assert_eq!(
        sample(&metrics, "securechat_shared_state_local_fallback"),
        Some(0.0),
        "{metrics}"
    );
    let statuses = models_burst(&r, &r.first.keys.developer, 45).await;
    assert_eq!(count(&statuses, 200), 30, "{statuses:?}");
}

/// The store's level of a principal's daily token budget.
fn day_level(store: &StoreProcess, key_id: &str) -> f64 {
    store
        .command(&[
            "HGET",
            &format!("test/replicas/rl:tokens:day:key:{key_id}"),
            "l",
        ])
        .expect("the budget's bucket exists")
        .parse()
        .unwrap()
}

/// Sends `n` chats at once, spread over the replicas; returns each status
/// and body, checking that every refusal is a token-quota 429 with a
/// Retry-After.
async fn chat_burst(r: &Replicas, key: &str, body: &Value, n: usize) -> Vec<(u16, Value)> {
    let requests = (0..n).map(|i| {
        let url = format!("{}/v1/chat/completions", r.base(i % r.len()));
        let client = r.first.client.clone();
        let key = key.to_string();
        let body = body.clone();
        async move {
            let resp = client
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let retry_after = resp.headers().contains_key("retry-after");
            let json: Value = resp.json().await.unwrap();
            match status {
                200 => {}
                429 => {
                    assert!(retry_after, "{json}");
                    assert_eq!(json["error"]["code"], "token_quota_exceeded", "{json}");
                }
                other => panic!("status {other}: {json}"),
            }
            (status, json)
        }
    });
    join_all(requests).await
}

fn total_tokens(results: &[(u16, Value)]) -> (u64, u64) {
    let admitted = results.iter().filter(|(s, _)| *s == 200).count() as u64;
    let used = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, j)| j["usage"]["total_tokens"].as_u64().unwrap())
        .sum();
    (admitted, used)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_chats_never_exceed_the_token_budget_and_unused_reservations_come_back() {
    let store = StoreProcess::start();
    // Daily budgets: they refill by 1000 / 86400 tokens a second, so what
    // is admitted is what the budget holds, however slow the machine.
    let r = Replicas::start(
        &config(
            &store.address(),
            "FailClosed",
            "rateLimit:\n  requestsPerMinute: 100000\n\
             roles:\n  readOnly:\n    permissions: [Chat]\n    tokensPerDay: 1000\n  \
             developer:\n    permissions: [Chat, Models, Usage]\n    tokensPerDay: 1000\n",
        ),
        3,
    )
    .await;

    // Answers that use their whole reservation: a 20-word prompt (21
    // tokens by the echo engine's count) echoed up to max_tokens 10, 31
    // tokens each. 50 of them would take 1550: exactly 32 fit in 1000.
    let words = vec!["w"; 20].join(" ");
    let full = chat_body_with(&words, serde_json::json!({"max_tokens": 10}));
    let results = chat_burst(&r, &r.first.keys.readonly, &full, 50).await;
    let (admitted, used) = total_tokens(&results);
    assert_eq!(used, admitted * 31);
    assert_eq!(admitted, 1000 / 31, "{used} tokens used");

    // Answers that use little of it: 3 prompt tokens + max_tokens 30
    // reserved, 2 generated; 28 of every reservation come back.
    let small = chat_body_with("hello world", serde_json::json!({"max_tokens": 30}));
    let results = chat_burst(&r, &r.first.keys.developer, &small, 50).await;
    let (admitted, used) = total_tokens(&results);
    assert!(used <= 1000, "{used}");
    // At least the reservations that fit at once were admitted.
    assert!(admitted >= 1000 / 33, "{admitted} admitted");
    // The bucket holds the budget less what was used (plus a sliver of
    // refill): nothing reserved was kept.
    let level = day_level(&store, &r.first.keys.developer_id);
    let expected = 1000.0 - used as f64;
    assert!(
        level >= expected && level < expected + 1.0,
        "level {level}, expected {expected} ({admitted} admitted, {used} used)"
    );
}

/// GET /v1/models on replica `i` as the client a trusted proxy names.
async fn models_via_proxy(r: &Replicas, i: usize, client: &str, key: &str) -> (u16, Value) {
    let resp = r
        .first
        .client
        .get(format!("{}/v1/models", r.base(i)))
        .header("x-forwarded-for", client)
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_brute_force_guard_trips_across_replicas_and_spares_a_proxys_other_clients() {
    let store = StoreProcess::start();
    // The tests connect from 127.0.0.1: a trusted proxy here.
    let r = Replicas::start(
        &format!(
            "rateLimit:\n  requestsPerMinute: 100000\n\
             limits:\n  maxAuthFailuresPerMinute: 5\n  trustedProxies: [\"127.0.0.1/32\"]\n\
             sharedState:\n  address: {}\n  keyPrefix: test/guard/\n  timeout: 250ms\n  replicas: 3\n",
            store.address()
        ),
        3,
    )
    .await;
    let attacker = "198.51.100.7";
    // Five guesses, spread over the replicas: one budget.
    for i in 0..5 {
        let (status, body) = models_via_proxy(&r, i % 3, attacker, "sk-sc-nope-x").await;
        assert_eq!(status, 401, "guess {i}: {body}");
    }
    // Now every replica refuses the address, a valid key included.
    for i in 0..3 {
        let (status, body) = models_via_proxy(&r, i, attacker, &r.first.keys.developer).await;
        assert_eq!(status, 429, "replica {i}: {body}");
        assert_eq!(body["error"]["code"], "too_many_auth_failures");
    }
    // The proxy's other clients, and the proxy itself, are served.
    for i in 0..3 {
        let (status, body) = models_via_proxy(&r, i, "198.51.100.8", &r.first.keys.developer).await;
        assert_eq!(status, 200, "replica {i}: {body}");
        let resp = r
            .first
            .client
            .get(format!("{}/v1/models", r.base(i)))
            .bearer_auth(&r.first.keys.developer)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_web_login_on_one_replica_holds_on_the_others_and_a_logout_ends_it_everywhere() {
    let store = StoreProcess::start();
    let r = Replicas::start(
        &config(
            &store.address(),
            "FailClosed",
            "rateLimit:\n  requestsPerMinute: 100000\n",
        ),
        3,
    )
    .await;
    let client = &r.first.client;
    let login = client
        .post(format!("{}/web/login", r.web_base(0)))
        .json(&serde_json::json!({"apiKey": r.first.keys.developer}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let view: Value = login.json().await.unwrap();
    let csrf = view["csrfToken"].as_str().unwrap().to_string();
    let session_on = |i: usize| {
        client
            .get(format!("{}/web/session", r.web_base(i)))
            .header("cookie", &cookie)
            .send()
    };
    for i in 0..3 {
        let resp = session_on(i).await.unwrap();
        assert_eq!(resp.status(), 200, "replica {i}");
        let view: Value = resp.json().await.unwrap();
        assert_eq!(view["csrfToken"], csrf.as_str(), "replica {i}");
        // The session authorises API calls on the web port of any replica.
        let models = client
            .get(format!("{}/v1/models", r.web_base(i)))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .send()
            .await
            .unwrap();
        assert_eq!(models.status(), 200, "replica {i}");
    }
    let logout = client
        .post(format!("{}/web/logout", r.web_base(2)))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 200);
    for i in 0..3 {
        let resp = session_on(i).await.unwrap();
        assert_eq!(resp.status(), 401, "replica {i} after the logout");
    }
}

/// The readiness probe's view of the store, polled until `done` holds.
async fn store_health_until(s: &TestServer, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        last = s
            .client
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&last["sharedState"]) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store never reached the expected state: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_store_with_a_password_from_files_and_a_clear_error_for_a_wrong_one() {
    // The store serves the dev certificate (localhost) that the server's
    // directory holds; the server trusts it through tls.caFile.
    let dir = tempfile::tempdir().unwrap();
    dev::ensure(dir.path()).unwrap();
    let store = StoreProcess::start_with(StoreOptions {
        password: Some("s3cret-store-password".into()),
        tls: Some((
            dir.path().join("tls/tls.crt"),
            dir.path().join("tls/tls.key"),
        )),
    });
    // A wrong password first: the server starts, says why it cannot use
    // the store, and refuses limited requests meanwhile.
    std::fs::write(dir.path().join("store-password"), "wrong\n").unwrap();
    let config = format!(
        "sharedState:\n  address: {}\n  keyPrefix: test/tls/\n  timeout: 250ms\n  \
         tls:\n    caFile: tls/ca.crt\n  passwordFile: store-password\n",
        store.tls_address()
    );
    let s = server_in(dir, &config).await;
    let health = store_health_until(&s, |h| h["status"] == "unavailable").await;
    let error = health["sharedState"]["error"].as_str().unwrap();
    assert!(error.contains("refused the credentials"), "{health}");
    let resp = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(&s.keys.developer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let healthz = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    let metrics = metrics_text(&s).await;
    assert!(
        sample(
            &metrics,
            "securechat_shared_state_errors_total{kind=\"auth\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );

    // The right password (a rotated Secret): used without a restart.
    std::fs::write(s.data().join("store-password"), "s3cret-store-password\n").unwrap();
    store_health_until(&s, |h| h["status"] == "ok").await;
    let resp = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(&s.keys.developer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_is_the_whole_models_on_every_replica() {
    let store = StoreProcess::start();
    let r = Replicas::start(
        &config(
            &store.address(),
            "FailClosed",
            "rateLimit:\n  requestsPerMinute: 100000\n",
        ),
        3,
    )
    .await;
    let client = &r.first.client;
    let developer = &r.first.keys.developer;
    // On each replica: one model list and one chat (3 prompt tokens by the
    // echo engine's count, 2 generated).
    for i in 0..3 {
        let resp = client
            .get(format!("{}/v1/models", r.base(i)))
            .bearer_auth(developer)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let resp = client
            .post(format!("{}/v1/chat/completions", r.base(i)))
            .bearer_auth(developer)
            .json(&chat_body_with("hello world", serde_json::json!({})))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Each replica counts its own in Prometheus, per key id.
    let id = &r.first.keys.developer_id;
    for i in 0..3 {
        let metrics = metrics_at(client, &r.base(i)).await;
        assert_eq!(
            sample(
                &metrics,
                &format!("securechat_api_key_requests_total{{key_id=\"{id}\"}}")
            ),
            Some(2.0),
            "replica {i}: {metrics}"
        );
        assert_eq!(
            sample(
                &metrics,
                &format!("securechat_api_key_tokens_total{{key_id=\"{id}\",kind=\"completion\"}}")
            ),
            Some(2.0),
            "replica {i}"
        );
    }
    // /admin/keys on any replica reports the whole model's (flushed within
    // a second).
    let admin = &r.first.keys.admin;
    let base = r.base(1);
    let whole_model = || async {
        let keys: Value = client
            .get(format!("{base}/admin/keys"))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(keys["usageScope"], "model");
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .unwrap()["usage"]
            .clone()
    };
    let mut last = Value::Null;
    for _ in 0..50 {
        last = whole_model().await;
        if last["requests"] == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["requests"], 6, "{last}");
    assert_eq!(last["promptTokens"], 9, "{last}");
    assert_eq!(last["completionTokens"], 6, "{last}");
    // The caller's own view counts this very request too (7th).
    let own: Value = client
        .get(format!("{}/v1/usage", r.base(2)))
        .bearer_auth(developer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(own["usageScope"], "model", "{own}");
    assert_eq!(own["usage"]["requests"], 7, "{own}");
    assert!(own["usage"]["lastUsedAt"].is_string(), "{own}");
    // The hash lives the retention past the last use, so a key removed
    // from the table does not stay in the store for ever.
    let ttl: u64 = store
        .command(&["PTTL", &format!("test/replicas/usage:{id}")])
        .expect("a TTL")
        .parse()
        .expect("milliseconds");
    let retention = USAGE_RETENTION.as_millis() as u64;
    assert!(
        ttl > retention - 60_000 && ttl <= retention,
        "{ttl} ms left of {retention}"
    );
}

/// The store's batcher (`Store::spawn_batcher`) puts concurrent
/// admissions into shared script calls; each must still get its own
/// answer, in order, as if alone: a refused guard takes nothing, and the
/// bucket admits exactly its capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admissions_share_script_calls_and_each_gets_its_own_answer() {
    use std::sync::Arc;

    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use securechat_server::ratelimit::{Admission, Decision, Op, Rate};
    use securechat_server::shared::{Store, StoreMetrics};

    let process = StoreProcess::start();
    let config = serde_yaml::from_str(&format!(
        "address: {}\nkeyPrefix: test/batches/\n",
        process.address()
    ))
    .unwrap();
    let metrics = StoreMetrics {
        errors: Family::default(),
        fallback: Gauge::default(),
    };
    let store = Arc::new(Store::new(config, std::path::Path::new("."), metrics).unwrap());
    store.spawn_batcher();

    // An address whose guard holds nothing (one failure charged to a
    // guard of one), and one with room to spare.
    let tight_guard = Rate::per_minute(1, 1);
    let loose_guard = Rate::per_minute(1000, 1000);
    store
        .buckets(Op::Charge, &[("guard:blocked", tight_guard)], 1.0)
        .await
        .unwrap();
    let bucket = Rate::per_minute(10, 10);
    let calls_before = script_calls(&process.address()).await;
    let answers = join_all((0..50).map(|i| {
        let store = Arc::clone(&store);
        async move {
            let guard = if i % 5 == 0 {
                ("guard:blocked", tight_guard)
            } else {
                ("guard:open", loose_guard)
            };
            store
                .admit(&[guard], Op::Take, &[("bucket", bucket)], 1.0)
                .await
                .unwrap()
        }
    }))
    .await;
    let calls = script_calls(&process.address()).await - calls_before;

    let throttled = answers
        .iter()
        .filter(|a| matches!(a, Admission::Throttled { .. }))
        .count();
    let mut remaining: Vec<u32> = answers
        .iter()
        .filter_map(|a| match a {
            Admission::Decided(Decision::Allowed { remaining, .. }) => Some(*remaining),
            _ => None,
        })
        .collect();
    let denied = answers
        .iter()
        .filter(|a| matches!(a, Admission::Decided(Decision::Denied { .. })))
        .count();
    assert_eq!(throttled, 10, "{answers:?}");
    // Each admitted request saw the bucket after its own take.
    remaining.sort_unstable();
    assert_eq!(remaining, (0..10).collect::<Vec<_>>(), "{answers:?}");
    assert_eq!(denied, 30, "{answers:?}");
    assert!(
        calls < 50,
        "50 concurrent admissions took {calls} script calls: none shared one"
    );
}

/// Script calls the store has run (EVALSHA and EVAL), from INFO.
async fn script_calls(address: &str) -> u64 {
    let client = redis::Client::open(format!("redis://{address}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
