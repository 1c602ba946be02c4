//! Expiry monitoring (the second seed): seconds until expiry of the
//! certificate, each signing key and each API key; reload failures per
//! file kind, stale files, and the rotations the server saw. These are the
//! series the chart's alert rules use, so their names and labels are
//! checked here exactly.

use chrono::{Duration, Utc};
use securechat_crds::files::keyset::KeyState;
use securechat_crds::v1alpha1::Tier;
use securechat_server::files::atomic::write_atomic;
use securechat_server::keys_cli::{self, TableLock};
use securechat_test_support::https::{
    RELAXED, add_keys, client_for, default_engine, eventually, metrics_at, metrics_text, sample,
    server, start_on,
};
use serde_json::{Value, json};

const DAY: f64 = 86_400.0;

#[tokio::test]
async fn expiry_gauges_carry_the_labels_alerts_group_by() {
    let s = server(RELAXED).await;
    let m = metrics_text(&s).await;
    // Dev certificates live a year (whole days: rcgen dates).
    let cert = sample(&m, "securechat_certificate_expiry_seconds").unwrap();
    assert!((363.0 * DAY..=366.0 * DAY).contains(&cert), "{cert}");
    let kid = s.keyset().active().unwrap().kid.clone();
    let signing = sample(
        &m,
        &format!("securechat_signing_key_expiry_seconds{{kid=\"{kid}\",phase=\"active\"}}"),
    )
    .unwrap_or_else(|| panic!("{m}"));
    assert!((364.0 * DAY..=365.0 * DAY).contains(&signing), "{signing}");
    // The developer key was created with a 30-day lifetime.
    let developer = sample(
        &m,
        &format!(
            "securechat_api_key_expiry_seconds{{key_id=\"{}\",name=\"dev\",tier=\"Developer\"}}",
            s.keys.developer_id
        ),
    )
    .unwrap_or_else(|| panic!("{m}"));
    assert!(
        (29.9 * DAY..=30.0 * DAY).contains(&developer),
        "{developer}"
    );
    // Already expired: negative, so a critical alert fires.
    assert!(
        m.lines()
            .any(|l| l.starts_with("securechat_api_key_expiry_seconds{")
                && l.contains("name=\"expired\"")
                && l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() < -0.9 * DAY),
        "{m}"
    );
    // No expiry, or revoked: nothing to alert on.
    for name in ["admin", "revoked"] {
        assert!(
            !m.lines()
                .any(|l| l.starts_with("securechat_api_key_expiry_seconds{")
                    && l.contains(&format!("name=\"{name}\""))),
            "{name} has an expiry series:\n{m}"
        );
    }
    // Failure counters exist at zero before any failure, for increase().
    for file in ["config", "signing_keys", "api_keys", "tls"] {
        assert_eq!(
            sample(
                &m,
                &format!("securechat_file_reloads_total{{file=\"{file}\",result=\"error\"}}")
            ),
            Some(0.0),
            "{file}"
        );
        assert_eq!(
            sample(&m, &format!("securechat_file_stale{{file=\"{file}\"}}")),
            Some(0.0),
            "{file}"
        );
    }
    for counter in [
        "securechat_certificate_renewals_total",
        "securechat_signing_key_rotations_total",
        "securechat_api_key_rotations_total",
    ] {
        assert_eq!(sample(&m, counter), Some(0.0), "{counter}");
    }
}

#[tokio::test]
async fn rotations_and_stale_files_are_counted() {
    let s = server(RELAXED).await;
    let keyset_path = s.data().join("signing-keys/keyset.json");
    let original = s.keyset();
    let old_kid = original.active().unwrap().kid.clone();

    // A keyset that does not parse: counted, marked stale, old key signs.
    write_atomic(&keyset_path, b"{\"keys\": 7}", true).unwrap();
    assert!(
        eventually(async || {
            let m = metrics_text(&s).await;
            sample(&m, "securechat_file_stale{file=\"signing_keys\"}") == Some(1.0)
        })
        .await
    );
    let m = metrics_text(&s).await;
    assert_eq!(
        sample(
            &m,
            "securechat_file_reloads_total{file=\"signing_keys\",result=\"error\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "securechat_signing_key_rotations_total"),
        Some(0.0)
    );

    // A rotation: a new Active key, the old one Previous.
    let now = Utc::now();
    let mut set = securechat_server::dev::signing_keyset(now).unwrap();
    set.keys[0].kid = "rotated2".into();
    let mut previous = original.keys[0].clone();
    previous.state = KeyState::Previous;
    set.keys.push(previous);
    write_atomic(&keyset_path, &serde_json::to_vec(&set).unwrap(), true).unwrap();
    assert!(
        eventually(async || {
            let m = metrics_text(&s).await;
            sample(&m, "securechat_signing_key_rotations_total") == Some(1.0)
        })
        .await
    );
    let m = metrics_text(&s).await;
    assert_eq!(
        sample(&m, "securechat_file_stale{file=\"signing_keys\"}"),
        Some(0.0)
    );
    assert!(
        sample(
            &m,
            &format!(
                "securechat_signing_key_expiry_seconds{{kid=\"{old_kid}\",phase=\"previous\"}}"
            )
        )
        .is_some(),
        "{m}"
    );
    assert!(m.contains("securechat_signing_key_expiry_seconds{kid=\"rotated2\",phase=\"active\"}"));

    // An API-key rotation through the CLI's functions (under its lock).
    let table_path = s.data().join("api-keys.json");
    {
        let _lock = TableLock::acquire(&table_path).unwrap();
        let mut table = keys_cli::load(&table_path).unwrap();
        keys_cli::rotate(&mut table, &s.keys.developer_id, Duration::hours(1), now).unwrap();
        keys_cli::create(&mut table, "new", Tier::ReadOnly, None, now).unwrap();
        keys_cli::save(&table_path, &table).unwrap();
    }
    assert!(
        eventually(async || {
            let m = metrics_text(&s).await;
            sample(&m, "securechat_api_key_rotations_total") == Some(1.0)
        })
        .await,
        "a created key is not a rotation; one rotation expected"
    );
}

#[tokio::test]
async fn jwt_verifications_are_counted_by_result() {
    let s = server(RELAXED).await;
    let token: Value = s
        .client
        .post(s.url("/oauth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_secret": s.keys.admin}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = token["access_token"].as_str().unwrap();
    for credential in [jwt.to_string(), format!("{jwt}x")] {
        s.client
            .get(s.url("/v1/models"))
            .bearer_auth(credential)
            .send()
            .await
            .unwrap();
    }
    let m = metrics_text(&s).await;
    assert_eq!(
        sample(&m, "securechat_jwt_verifications_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "securechat_jwt_verifications_total{result=\"invalid_token\"}"
        ),
        Some(1.0)
    );
}

/// The scheduler's series, with the default model: after two identical
/// requests nothing runs or waits, the second found the first's prompt in
/// the prefix cache, and each request's queue time is counted by tier.
#[tokio::test]
async fn the_scheduler_reports_its_batch_queue_and_prefix_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = securechat_server::dev::ensure(dir.path()).unwrap();
    std::fs::write(&config, RELAXED).unwrap();
    let keys = add_keys(dir.path());
    let running = start_on(dir.path(), default_engine(), None).await;
    let client = client_for(&dir.path().join("tls/ca.crt"), &[&rustls::version::TLS13]);
    let base = format!("https://localhost:{}", running.api_addr.port());
    let body = json!({"messages": [{"role": "user", "content": "Say hello to the harbour."}],
        "max_tokens": 4, "temperature": 0.0});
    for _ in 0..2 {
        let reply = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&keys.developer)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success(), "{}", reply.status());
        reply.text().await.unwrap();
    }
    let m = metrics_at(&client, &base).await;
    assert_eq!(sample(&m, "securechat_sequences_running"), Some(0.0));
    assert_eq!(sample(&m, "securechat_requests_waiting"), Some(0.0));
    assert_eq!(sample(&m, "securechat_kv_cache_usage_ratio"), Some(0.0));
    let queries = sample(&m, "securechat_prefix_cache_queries_total").unwrap();
    let hits = sample(&m, "securechat_prefix_cache_hits_total").unwrap();
    assert!(hits >= 16.0 && hits < queries, "{hits} of {queries}");
    assert_eq!(
        sample(
            &m,
            "securechat_request_queue_time_seconds_count{tier=\"Developer\"}"
        ),
        Some(2.0)
    );
    for family in [
        "securechat_inter_token_latency_seconds",
        "securechat_engine_step_duration_seconds",
        "securechat_preemptions_total",
    ] {
        assert!(m.contains(family), "{family} missing");
    }
}
