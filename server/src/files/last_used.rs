//! `lastUsedAt` write-back for a key table the server owns (standalone
//! mode). Uses are recorded in memory on every request; this task writes
//! them to the table file at most once per interval, in one batch, so a
//! busy key costs one write a minute rather than one per request.
//!
//! The `keys` CLI edits the same file, so each write takes its lock,
//! re-reads the table, merges (newer timestamp wins; keys the file no
//! longer has stay gone) and replaces the file atomically. A CLI edit is
//! therefore never lost, whichever runs first.
//!
//! A table mounted from a Secret (operator mode) is read-only and shared by
//! replicas; there the server writes nothing and exports
//! `securechat_api_key_last_used_timestamp_seconds` instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use securechat_crds::files::api_keys::ApiKeyTable;
use tokio::sync::watch;

use super::key_table::{self, TableLock};
use crate::state::AppState;

/// Sets each key's `lastUsedAt` to the later of the stored and the observed
/// time; returns whether anything changed. Ids missing from the table are
/// ignored (the key was removed after it was used).
pub fn merge(table: &mut ApiKeyTable, used: &HashMap<String, DateTime<Utc>>) -> bool {
    let mut changed = false;
    for key in &mut table.keys {
        if let Some(&seen) = used.get(&key.id)
            && key.last_used_at.is_none_or(|stored| seen > stored)
        {
            key.last_used_at = Some(seen);
            changed = true;
        }
    }
    changed
}

/// Merges `used` into the table file under the CLI's lock. Returns whether
/// the file was rewritten. A table that does not parse is left alone (the
/// server keeps its last good version and reports the bad file; overwriting
/// it would destroy whatever the user is fixing).
pub fn write_back(path: &Path, used: &HashMap<String, DateTime<Utc>>) -> anyhow::Result<bool> {
    let _lock = TableLock::acquire(path)?;
    let mut table = key_table::load(path)?;
    if !merge(&mut table, used) {
        return Ok(false);
    }
    key_table::save(path, &table)?;
    Ok(true)
}

/// Whether `path` is a projected file (a symlink, as in a mounted Secret or
/// ConfigMap) rather than a file this process may replace.
pub fn is_projected(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Writes recorded uses to `path` every `interval` and once more when
/// `shutdown` turns true, so a clean stop loses nothing.
pub async fn run(
    state: AppState,
    path: PathBuf,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut written: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; nothing has been used yet.
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        flush(&state, &path, &mut written).await;
        if stopping {
            break;
        }
    }
}

/// Writes the uses newer than what was last written.
async fn flush(state: &AppState, path: &Path, written: &mut HashMap<String, DateTime<Utc>>) {
    let pending: HashMap<String, DateTime<Utc>> = {
        let usage = state.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage
            .iter()
            .filter_map(|(id, u)| Some((id.clone(), u.last_used_at?)))
            .filter(|(id, t)| written.get(id).is_none_or(|w| t > w))
            .collect()
    };
    if pending.is_empty() {
        return;
    }
    let target = path.to_path_buf();
    let batch = pending.clone();
    // The lock wait and the fsyncs are blocking work.
    let result = tokio::task::spawn_blocking(move || write_back(&target, &batch)).await;
    match result {
        Ok(Ok(_)) => {
            state.metrics.key_table_write(true);
            written.extend(pending);
        }
        Ok(Err(e)) => {
            // Kept pending: the next tick tries again.
            state.metrics.key_table_write(false);
            tracing::warn!(path = %path.display(), error = %e, "cannot record lastUsedAt");
        }
        Err(e) => {
            state.metrics.key_table_write(false);
            tracing::warn!(error = %e, "lastUsedAt writer task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use securechat_crds::v1alpha1::Tier;

    use crate::keys_cli;

    fn table_with(ids: &[&str]) -> (ApiKeyTable, Vec<String>) {
        let mut table = ApiKeyTable::default();
        let mut out = Vec::new();
        for name in ids {
            let (id, _) = keys_cli::create(&mut table, name, Tier::Developer, None, Utc::now())
                .expect("create");
            out.push(id);
        }
        (table, out)
    }

    #[test]
    fn the_later_time_wins_and_unknown_ids_are_ignored() {
        let (mut table, ids) = table_with(&["a", "b"]);
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(30);
        table.keys[1].last_used_at = Some(t1);
        let used = HashMap::from([
            (ids[0].clone(), t0),
            (ids[1].clone(), t0),
            ("gone".to_string(), t1),
        ]);
        assert!(merge(&mut table, &used));
        assert_eq!(table.keys[0].last_used_at, Some(t0));
        assert_eq!(table.keys[1].last_used_at, Some(t1), "never moves back");
        assert!(table.get("gone").is_none());
        assert!(!merge(&mut table, &used), "nothing newer: no change");
    }

    #[test]
    fn write_back_keeps_concurrent_cli_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-keys.json");
        let (table, ids) = table_with(&["used"]);
        key_table::save(&path, &table).unwrap();
        let writer = {
            let path = path.clone();
            let id = ids[0].clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let at = Utc::now() + chrono::Duration::seconds(i);
                    write_back(&path, &HashMap::from([(id.clone(), at)])).unwrap();
                }
            })
        };
        // The CLI's own read-modify-write, as `keys create` does it.
        for i in 0..40 {
            let _lock = TableLock::acquire(&path).unwrap();
            let mut table = key_table::load(&path).unwrap();
            keys_cli::create(
                &mut table,
                &format!("cli{i}"),
                Tier::ReadOnly,
                None,
                Utc::now(),
            )
            .unwrap();
            key_table::save(&path, &table).unwrap();
        }
        writer.join().unwrap();
        let table = key_table::load(&path).unwrap();
        assert_eq!(table.keys.len(), 41, "every CLI-created key survived");
        assert!(table.get(&ids[0]).unwrap().last_used_at.is_some());
    }

    #[test]
    fn an_unreadable_table_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-keys.json");
        std::fs::write(&path, b"{broken").unwrap();
        let used = HashMap::from([("abc".to_string(), Utc::now())]);
        assert!(write_back(&path, &used).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"{broken");
    }
}
