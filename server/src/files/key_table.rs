//! The API-key table file as the server owns it in standalone mode (in
//! Kubernetes it is a read-only mounted Secret). Two writers share it: the
//! `keys` CLI and the server's `lastUsedAt` write-back (`last_used.rs`).
//! Each does one locked read-modify-write: take
//! [`TableLock`], [`load`], change, [`save`] (validated, then replaced
//! atomically), so neither loses the other's change and a crash leaves the
//! old table or the new one.

use std::path::Path;

use anyhow::{Context, bail};
use securechat_crds::files::api_keys::ApiKeyTable;

use super::atomic::write_atomic;

/// An exclusive lock on the table for one read-modify-write, so two CLI
/// runs at once cannot lose each other's change. A lock file older than a
/// minute is left over from a crash and is taken over.
pub struct TableLock {
    path: std::path::PathBuf,
}

impl TableLock {
    pub fn acquire(table: &Path) -> anyhow::Result<Self> {
        let path = table.with_extension("json.lock");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(Self { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > std::time::Duration::from_secs(60));
                    if stale {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if std::time::Instant::now() > deadline {
                        bail!(
                            "{} is locked by another securechat-server keys command",
                            table.display()
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
    }
}

impl Drop for TableLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn load(path: &Path) -> anyhow::Result<ApiKeyTable> {
    if !path.exists() {
        return Ok(ApiKeyTable::default());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let table: ApiKeyTable =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    table
        .validate()
        .with_context(|| format!("validating {}", path.display()))?;
    Ok(table)
}

pub fn save(path: &Path, table: &ApiKeyTable) -> anyhow::Result<()> {
    table.validate()?;
    write_atomic(path, &serde_json::to_vec_pretty(table)?, true)
}
