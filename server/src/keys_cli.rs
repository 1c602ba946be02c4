//! `securechat-server keys …`: API-key lifecycle on the local table
//! (standalone mode; in Kubernetes the operator owns the table).
//!
//! Each verb is a pure function on the table; the CLI loads, applies one,
//! validates and writes atomically, so a crash leaves the old table or the
//! new one.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use securechat_crds::files::api_keys::{ApiKeyRecord, ApiKeyState, ApiKeyTable};
use securechat_crds::v1alpha1::Tier;

use crate::credentials::api_key;
// The table file's lock and its locked read and write live with the other
// writer of the file (`files::last_used`); re-exported for the CLI's callers.
pub use crate::files::key_table::{TableLock, load, save};

/// Reads a lifetime: a Go duration (`720h`, `90m`) or whole days (`30d`).
pub fn parse_lifetime(text: &str) -> anyhow::Result<chrono::Duration> {
    if let Some(days) = text.strip_suffix('d') {
        let days: i64 = days
            .parse()
            .with_context(|| format!("invalid duration {text:?}"))?;
        if days <= 0 || days > 36_500 {
            bail!("invalid duration {text:?}: days must be between 1 and 36500");
        }
        return Ok(chrono::Duration::days(days));
    }
    let d: securechat_crds::Duration = text.parse()?;
    if d.as_secs() == 0 {
        bail!("invalid duration {text:?}: must be positive");
    }
    Ok(d.as_chrono())
}

/// Adds a key; returns (id, plaintext).
pub fn create(
    table: &mut ApiKeyTable,
    name: &str,
    tier: Tier,
    lifetime: Option<chrono::Duration>,
    now: DateTime<Utc>,
) -> anyhow::Result<(String, String)> {
    let id = loop {
        let id = api_key::random_id()?;
        if table.get(&id).is_none() {
            break id;
        }
    };
    let minted = api_key::mint(&id)?;
    table.keys.push(ApiKeyRecord {
        id: id.clone(),
        name: name.to_string(),
        tier,
        state: ApiKeyState::Active,
        secret_hash: minted.hash,
        previous_secret_hash: None,
        previous_secret_valid_until: None,
        created_at: now,
        expires_at: lifetime.map(|l| now + l),
        rotated_at: None,
        last_used_at: None,
        spiffe_id: None,
    });
    Ok((id, minted.plaintext))
}

fn find<'t>(table: &'t mut ApiKeyTable, id: &str) -> anyhow::Result<&'t mut ApiKeyRecord> {
    table
        .get_mut(id)
        .with_context(|| format!("no API key with id {id:?}"))
}

pub fn suspend(table: &mut ApiKeyTable, id: &str) -> anyhow::Result<()> {
    let key = find(table, id)?;
    match key.state {
        ApiKeyState::Revoked => bail!("key {id} is revoked; it cannot be suspended"),
        _ => key.state = ApiKeyState::Suspended,
    }
    Ok(())
}

pub fn resume(table: &mut ApiKeyTable, id: &str) -> anyhow::Result<()> {
    let key = find(table, id)?;
    match key.state {
        ApiKeyState::Suspended => key.state = ApiKeyState::Active,
        ApiKeyState::Active => bail!("key {id} is not suspended"),
        ApiKeyState::Revoked => bail!("key {id} is revoked; revocation is permanent"),
    }
    Ok(())
}

/// New secret, same id; the old secret keeps working for `grace`.
pub fn rotate(
    table: &mut ApiKeyTable,
    id: &str,
    grace: chrono::Duration,
    now: DateTime<Utc>,
) -> anyhow::Result<String> {
    let key = find(table, id)?;
    if key.state == ApiKeyState::Revoked {
        bail!("key {id} is revoked; it cannot be rotated");
    }
    let minted = api_key::mint(id)?;
    let old = std::mem::replace(&mut key.secret_hash, minted.hash);
    if grace > chrono::Duration::zero() {
        key.previous_secret_hash = Some(old);
        key.previous_secret_valid_until = Some(now + grace);
    } else {
        key.previous_secret_hash = None;
        key.previous_secret_valid_until = None;
    }
    key.rotated_at = Some(now);
    Ok(minted.plaintext)
}

/// Permanent. The record stays (for `list` and audits) with no valid
/// secret left.
pub fn revoke(table: &mut ApiKeyTable, id: &str) -> anyhow::Result<()> {
    let key = find(table, id)?;
    key.state = ApiKeyState::Revoked;
    key.previous_secret_hash = None;
    key.previous_secret_valid_until = None;
    Ok(())
}

/// Archives every key past its expiry (revoked ones stay, for audits)
/// into the table's bounded history and removes it, as the operator does
/// for a ChatApiKey; returns their ids. `/admin/keys/history` lists them.
pub fn prune(table: &mut ApiKeyTable, now: DateTime<Utc>) -> Vec<String> {
    let expired: Vec<String> = table
        .keys
        .iter()
        .filter(|k| k.state != ApiKeyState::Revoked && k.expires_at.is_some_and(|e| e <= now))
        .map(|k| k.id.clone())
        .collect();
    for id in &expired {
        table.archive_expired(id, now);
    }
    expired
}

/// The `keys list` table.
pub fn render_list(table: &ApiKeyTable, now: DateTime<Utc>) -> String {
    let fmt = |t: Option<DateTime<Utc>>| {
        t.map_or("-".to_string(), |t| {
            t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
        })
    };
    let mut out = format!(
        "{:<14} {:<20} {:<10} {:<10} {:<21} {:<21} {}\n",
        "ID", "NAME", "TIER", "STATE", "CREATED", "EXPIRES", "LAST USED"
    );
    for k in &table.keys {
        out.push_str(&format!(
            "{:<14} {:<20} {:<10} {:<10} {:<21} {:<21} {}\n",
            k.id,
            k.name,
            k.tier.as_str(),
            k.status_at(now).as_str(),
            fmt(Some(k.created_at)),
            fmt(k.expires_at),
            fmt(k.last_used_at)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use securechat_crds::files::api_keys::ApiKeyStatus;

    #[test]
    fn lifecycle_create_suspend_resume_rotate_revoke() {
        let now = Utc::now();
        let mut table = ApiKeyTable::default();
        let (id, key) = create(
            &mut table,
            "ci",
            Tier::Developer,
            Some(parse_lifetime("30d").unwrap()),
            now,
        )
        .unwrap();
        assert!(table.validate().is_ok());
        assert!(api_key::verify(&table, &key, now).is_ok());
        suspend(&mut table, &id).unwrap();
        assert_eq!(
            table.get(&id).unwrap().status_at(now),
            ApiKeyStatus::Suspended
        );
        assert!(resume(&mut table, "nope").is_err());
        resume(&mut table, &id).unwrap();
        assert!(resume(&mut table, &id).is_err(), "not suspended");
        let new_key = rotate(&mut table, &id, chrono::Duration::hours(1), now).unwrap();
        assert_ne!(new_key, key);
        assert!(
            new_key.starts_with(&format!("sk-sc-{id}-")),
            "id stays the same"
        );
        assert!(
            api_key::verify(&table, &key, now).is_ok(),
            "old key in grace"
        );
        assert!(api_key::verify(&table, &key, now + chrono::Duration::hours(2)).is_err());
        revoke(&mut table, &id).unwrap();
        assert!(api_key::verify(&table, &new_key, now).is_err());
        assert!(resume(&mut table, &id).is_err());
        assert!(rotate(&mut table, &id, chrono::Duration::zero(), now).is_err());
        assert!(render_list(&table, now).contains("Revoked"));
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d").unwrap(), chrono::Duration::days(30));
        assert_eq!(parse_lifetime("36h").unwrap(), chrono::Duration::hours(36));
        assert!(parse_lifetime("0d").is_err());
        assert!(parse_lifetime("0s").is_err());
        assert!(parse_lifetime("soon").is_err());
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-keys.json");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let _lock = TableLock::acquire(&path).unwrap();
                    let mut table = load(&path).unwrap();
                    create(
                        &mut table,
                        &format!("k{i}"),
                        Tier::ReadOnly,
                        None,
                        Utc::now(),
                    )
                    .unwrap();
                    save(&path, &table).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(load(&path).unwrap().keys.len(), 8);
        assert!(!dir.path().join("api-keys.json.lock").exists());
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-keys.json");
        assert!(
            load(&path).unwrap().keys.is_empty(),
            "a missing table is empty"
        );
        let mut table = ApiKeyTable::default();
        create(&mut table, "a", Tier::Admin, None, Utc::now()).unwrap();
        save(&path, &table).unwrap();
        assert_eq!(load(&path).unwrap(), table);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_err());
    }
}
