//! `lastUsedAt`: written back to a key table the server owns (standalone),
//! merged with concurrent `keys` CLI edits; only exported as a metric when
//! the table is read-only (operator mode) or a projected file.

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use securechat_crds::v1alpha1::Tier;
use securechat_server::keys_cli::{self, TableLock};
use securechat_test_support::https::{
    self, RELAXED, TestServer, chat_body, metrics_text, sample, server_with,
};
use serde_json::json;

async fn use_key(s: &TestServer, key: &str) {
    let resp = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn standalone_records_last_use_in_the_table_without_losing_cli_edits() {
    let dir = tempfile::tempdir().unwrap();
    // A short interval, so that write-backs interleave with the CLI edits
    // below instead of all landing at shutdown.
    let s = server_with(dir, RELAXED, Some(Duration::from_millis(20))).await;
    let table_path = s.data().join("api-keys.json");
    let before: DateTime<Utc> = Utc::now();
    let mut created = Vec::new();
    for i in 0..15 {
        use_key(&s, &s.keys.developer).await;
        // What `securechat-server keys create` does, in-process.
        let path = table_path.clone();
        let id = tokio::task::spawn_blocking(move || {
            let _lock = TableLock::acquire(&path).unwrap();
            let mut table = keys_cli::load(&path).unwrap();
            let (id, _) = keys_cli::create(
                &mut table,
                &format!("cli{i}"),
                Tier::ReadOnly,
                None,
                Utc::now(),
            )
            .unwrap();
            keys_cli::save(&path, &table).unwrap();
            id
        })
        .await
        .unwrap();
        created.push(id);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A token minted from a key is a use of that key, and so is using it.
    let token: serde_json::Value = s
        .client
        .post(s.url("/oauth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_secret": s.keys.admin}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .json(&chat_body("hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let state = s.running.state.clone();
    let dir = s.dir;
    // Shutting down writes what is still pending.
    s.running.shutdown().await;
    let after = Utc::now();

    let table = keys_cli::load(&dir.path().join("api-keys.json")).unwrap();
    for id in &created {
        assert!(table.get(id).is_some(), "CLI-created key {id} was lost");
    }
    let used = |id: &str| table.get(id).unwrap().last_used_at;
    for id in [&s.keys.developer_id, &s.keys.admin_id] {
        let t = used(id).unwrap_or_else(|| panic!("{id}: no lastUsedAt"));
        assert!(before <= t && t <= after, "{id}: {t}");
    }
    let readonly = table.keys.iter().find(|k| k.name == "guest").unwrap();
    assert_eq!(
        readonly.last_used_at, None,
        "an unused key has no lastUsedAt"
    );
    let exposition = state.metrics.encode();
    assert!(
        sample(
            &exposition,
            "securechat_key_table_writes_total{result=\"ok\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{exposition}"
    );
    assert_eq!(
        sample(
            &exposition,
            "securechat_key_table_writes_total{result=\"error\"}"
        ),
        None
    );

    // `keys list` shows it.
    let out = Command::new(env!("CARGO_BIN_EXE_securechat-server"))
        .args(["keys", "--data-dir", dir.path().to_str().unwrap(), "list"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    let line = listing
        .lines()
        .find(|l| l.starts_with(s.keys.developer_id.as_str()))
        .unwrap();
    let shown = used(&s.keys.developer_id)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    assert!(line.trim_end().ends_with(&shown), "{listing}");
}

#[tokio::test]
async fn a_read_only_table_is_never_written_and_last_use_is_a_metric() {
    let s = server_with(tempfile::tempdir().unwrap(), RELAXED, None).await;
    let table_path = s.data().join("api-keys.json");
    let original = std::fs::read(&table_path).unwrap();
    let before = Utc::now().timestamp_millis() as f64 / 1000.0;
    use_key(&s, &s.keys.developer).await;
    let after = Utc::now().timestamp_millis() as f64 / 1000.0;
    let exposition = metrics_text(&s).await;
    let series = format!(
        "securechat_api_key_last_used_timestamp_seconds{{key_id=\"{}\"}}",
        s.keys.developer_id
    );
    let value = sample(&exposition, &series).unwrap_or_else(|| panic!("{exposition}"));
    assert!(before <= value && value <= after, "{value}");
    assert!(
        !exposition.contains(&format!(
            "last_used_timestamp_seconds{{key_id=\"{}\"}}",
            s.keys.admin_id
        )),
        "an unused key has no last-use sample"
    );
    s.running.shutdown().await;
    assert_eq!(std::fs::read(&table_path).unwrap(), original);
}

#[cfg(unix)]
#[tokio::test]
async fn a_projected_table_is_not_written_even_in_standalone_mode() {
    // The kubelet's layout: the table name is a symlink into the mount.
    let dir = tempfile::tempdir().unwrap();
    securechat_server::dev::ensure(dir.path()).unwrap();
    std::fs::write(dir.path().join("config.yaml"), RELAXED).unwrap();
    let keys = https::add_keys(dir.path());
    let table = dir.path().join("api-keys.json");
    let real = dir.path().join("..data-api-keys.json");
    std::fs::rename(&table, &real).unwrap();
    std::os::unix::fs::symlink(&real, &table).unwrap();
    let s = https::serve_prepared(dir, keys, Some(Duration::from_millis(10))).await;
    let real = s.data().join("..data-api-keys.json");
    let original = std::fs::read(&real).unwrap();
    use_key(&s, &s.keys.developer).await;
    let link = s.data().join("api-keys.json");
    s.running.shutdown().await;
    assert_eq!(std::fs::read(&real).unwrap(), original);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the projected name is still a symlink"
    );
}
