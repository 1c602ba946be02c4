//! ChatApiKey lifecycle: mint, rotate with overlap, suspend, expire, revoke.
//!
//! Two Secrets hold a key: the consumer Secret (`spec.secretName`, in the
//! ChatApiKey's namespace, owned by it) with the plaintext, and the model's
//! `<model>-api-keys` table with only a hash. The plaintext is always
//! written first and the table derived from it, so an operator killed
//! between two writes never leaves a table entry whose plaintext is lost.
//!
//! Rotation is three-phase, like the signing keys, so no valid caller ever
//! fails: (1) the new plaintext is staged in the consumer Secret under
//! `next-api-key` (callers still use `api-key`); (2) the table accepts both
//! (new hash current, old hash previous until propagation + grace);
//! (3) after the propagation time, when every replica has loaded that
//! table, `api-key` becomes the new key. The key id never changes.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use k8s_openapi::ByteString;
use securechat_crds::files::api_keys::{
    ApiKeyRecord, ApiKeyState, ApiKeyTable, SecretHash, format_key,
};
use securechat_crds::hex::hex;
use securechat_crds::v1alpha1::{ChatApiKey, KeyRotation, SecureChatModel};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Consumer Secret keys.
pub const API_KEY: &str = "api-key";
pub const NEXT_API_KEY: &str = "next-api-key";
pub const KEY_ID: &str = "key-id";

/// Finalizer that removes the hash from the model's table on deletion.
pub const FINALIZER: &str = "securechat.dev/revoke-api-key";

/// The key id: derived from the ChatApiKey's uid, so it is stable across
/// rotations and recomputed identically after a crash.
pub fn key_id(uid: &str) -> String {
    let digest = Sha256::digest(uid.as_bytes());
    hex(&digest[..8])
}

/// A fresh plaintext key for `id`: 32 random bytes.
pub fn new_plaintext(id: &str) -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Render {
        what: "API key",
        message: format!("no randomness from the OS: {e}"),
    })?;
    Ok(format_key(id, &URL_SAFE_NO_PAD.encode(bytes)))
}

/// Whether ChatApiKeys in `namespace` may mint keys for `model`.
pub fn namespace_allowed(model: &SecureChatModel, namespace: &str) -> bool {
    model.metadata.namespace.as_deref() == Some(namespace)
        || model
            .spec
            .auth
            .api_keys
            .allowed_namespaces
            .iter()
            .any(|allowed| allowed.0 == "*" || allowed.0 == namespace)
}

/// When the key expires: `expiresAt`, or `expiresAfter` from when the key
/// was first minted (`minted_at`), as its doc says: time spent Pending
/// (waiting for the model, for permission) does not count. Not minted yet:
/// no expiry runs.
pub fn expires_at(key: &ChatApiKey, minted_at: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    if let Some(at) = &key.spec.expires_at {
        return DateTime::from_timestamp(at.0.as_second(), 0);
    }
    let after = key.spec.expires_after.as_ref()?;
    Some(minted_at? + after.as_chrono())
}

/// How long a staged key waits before callers are handed it: long enough
/// for every replica to load the table that accepts it.
pub fn propagation(rotation: &KeyRotation) -> Duration {
    (rotation.period.as_chrono() / 4).min(Duration::seconds(90))
}

/// The plaintexts in the consumer Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consumer {
    pub current: Option<String>,
    pub next: Option<String>,
}

impl Consumer {
    pub fn from_data(data: Option<&BTreeMap<String, ByteString>>) -> Self {
        let get = |k: &str| {
            data.and_then(|d| d.get(k))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|s| !s.is_empty())
        };
        Self {
            current: get(API_KEY),
            next: get(NEXT_API_KEY),
        }
    }
}

/// What the key needs next; one write each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStep {
    /// Put `plaintext` into the consumer Secret as `api-key`.
    Mint { plaintext: String },
    /// Stage the next plaintext in the consumer Secret.
    StageNext { plaintext: String },
    /// Write this record into the model's table.
    WriteRecord(ApiKeyRecord),
    /// Hand the staged key to callers (`api-key` = next).
    HandOver,
    /// Remove the record from the table (expired).
    RemoveRecord,
    /// Nothing to do until then (None: until something changes).
    Wait(Option<DateTime<Utc>>),
}

/// Inputs of one decision.
pub struct KeyView<'a> {
    pub key: &'a ChatApiKey,
    pub id: &'a str,
    pub consumer: &'a Consumer,
    pub record: Option<&'a ApiKeyRecord>,
    pub now: DateTime<Utc>,
    /// When the key was first minted (None: not yet).
    pub minted_at: Option<DateTime<Utc>>,
    /// The securechat.dev/rotate annotation has a value not acted on yet.
    pub rotate_requested: bool,
    /// The SPIFFE ID the record is bound to (credential ClientCertificate
    /// or Both), so that a certificate with it speaks for this key.
    pub spiffe_id: Option<&'a str>,
}

/// The next step for a key that is allowed and not being deleted.
/// `fresh` makes a new plaintext when a step needs one.
pub fn next_key_step(
    view: &KeyView<'_>,
    fresh: impl FnOnce() -> Result<String>,
) -> Result<KeyStep> {
    let KeyView {
        key,
        id,
        consumer,
        record,
        now,
        minted_at,
        rotate_requested,
        spiffe_id,
    } = *view;
    let expiry = expires_at(key, minted_at);
    if expiry.is_some_and(|e| e <= now) {
        return Ok(match record {
            Some(_) => KeyStep::RemoveRecord,
            None => KeyStep::Wait(None),
        });
    }
    let Some(current) = &consumer.current else {
        return Ok(KeyStep::Mint {
            plaintext: fresh()?,
        });
    };
    let current_hash = SecretHash::of_key(current);
    let rotation = key.spec.rotation.clone();
    // A rotation asked for by annotation overlaps as a periodic one would:
    // the key's own grace, or the default one without spec.rotation.
    let overlap = rotation.clone().unwrap_or_default();
    let desired_state = if key.spec.suspended {
        ApiKeyState::Suspended
    } else {
        ApiKeyState::Active
    };
    let name = format!(
        "{}/{}",
        key.metadata.namespace.as_deref().unwrap_or_default(),
        key.metadata.name.as_deref().unwrap_or_default()
    );
    let mut desired = record.cloned().unwrap_or_else(|| ApiKeyRecord {
        id: id.to_string(),
        name: name.clone(),
        tier: key.spec.tier,
        state: desired_state,
        secret_hash: current_hash.clone(),
        previous_secret_hash: None,
        previous_secret_valid_until: None,
        created_at: now,
        expires_at: expiry,
        rotated_at: None,
        last_used_at: None,
        spiffe_id: None,
    });
    desired.spiffe_id = spiffe_id.map(str::to_string);
    desired.name = name;
    desired.tier = key.spec.tier;
    desired.state = desired_state;
    desired.expires_at = expiry;
    match &consumer.next {
        Some(next) => {
            let next_hash = SecretHash::of_key(next);
            if desired.secret_hash != next_hash {
                // Phase 2: the table accepts both.
                desired.previous_secret_hash = Some(current_hash);
                desired.previous_secret_valid_until =
                    Some(now + propagation(&overlap) + overlap.grace_period.as_chrono());
                desired.secret_hash = next_hash;
                desired.rotated_at = Some(now);
            }
        }
        None => {
            if desired.secret_hash != current_hash
                && desired.previous_secret_hash.as_ref() != Some(&current_hash)
            {
                // The table does not know the consumer's key (first mint,
                // or a table restored from elsewhere): it becomes current.
                desired.secret_hash = current_hash.clone();
                desired.previous_secret_hash = None;
                desired.previous_secret_valid_until = None;
            }
        }
    }
    if record != Some(&desired) {
        return Ok(KeyStep::WriteRecord(desired));
    }
    let record = record.expect("equal to desired");
    if consumer.next.is_some() {
        // Phase 3, once every replica had time to load the table.
        let rotated = record.rotated_at.unwrap_or(record.created_at);
        let hand_over_at = rotated + propagation(&overlap);
        return Ok(if now >= hand_over_at {
            KeyStep::HandOver
        } else {
            KeyStep::Wait(Some(hand_over_at))
        });
    }
    // Phase 1 when the period is over.
    let wake = |at: Option<DateTime<Utc>>| {
        [
            at,
            expiry,
            record.previous_secret_valid_until.filter(|v| *v > now),
        ]
        .into_iter()
        .flatten()
        .min()
    };
    let due = match &rotation {
        Some(r) if !key.spec.suspended => {
            Some(record.rotated_at.unwrap_or(record.created_at) + r.period.as_chrono())
        }
        _ => None,
    };
    if rotate_requested || due.is_some_and(|due| now >= due) {
        Ok(KeyStep::StageNext {
            plaintext: fresh()?,
        })
    } else {
        Ok(KeyStep::Wait(wake(due)))
    }
}

/// Inserts or replaces a record in the table.
pub fn upsert(table: &mut ApiKeyTable, record: ApiKeyRecord) {
    match table.get_mut(&record.id) {
        Some(existing) => *existing = record,
        None => table.keys.push(record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use securechat_crds::v1alpha1::ChatApiKeySpec;
    use serde_json::json;

    fn key(spec: serde_json::Value) -> ChatApiKey {
        let spec: ChatApiKeySpec = serde_json::from_value(spec).unwrap();
        let mut k = ChatApiKey::new("frontend", spec);
        k.metadata.namespace = Some("apps".into());
        k.metadata.uid = Some("uid-1".into());
        // Created ten minutes before the first mint (t(0)).
        k.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 - 600).unwrap(),
        ));
        k
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    /// Drives a key through its steps in simulated time, checking after
    /// every write that the key callers hold is accepted by the table.
    #[test]
    fn rotation_never_hands_callers_a_key_the_table_does_not_accept() {
        let k = key(
            json!({"modelRef": {"name": "m"}, "rotation": {"period": "10m", "gracePeriod": "2m"}}),
        );
        let id = key_id("uid-1");
        let mut consumer = Consumer::default();
        let mut table = ApiKeyTable::default();
        let mut now = t(0);
        let mut n = 0;
        let mut rotations = 0;
        let mut keys_held = Vec::new();
        while now < t(3600) {
            let record = table.get(&id).cloned();
            let view = KeyView {
                key: &k,
                id: &id,
                consumer: &consumer,
                record: record.as_ref(),
                now,
                minted_at: Some(t(0)),
                rotate_requested: false,
                spiffe_id: None,
            };
            let step = next_key_step(&view, || {
                n += 1;
                Ok(format_key(&id, &format!("{n:0>43}")))
            })
            .unwrap();
            match step {
                KeyStep::Mint { plaintext } => consumer.current = Some(plaintext),
                KeyStep::StageNext { plaintext } => consumer.next = Some(plaintext),
                KeyStep::WriteRecord(r) => upsert(&mut table, r),
                KeyStep::HandOver => {
                    consumer.current = consumer.next.take();
                    rotations += 1;
                }
                KeyStep::RemoveRecord => unreachable!("no expiry set"),
                KeyStep::Wait(at) => now = at.expect("rotation wakes us"),
            }
            // Every key a caller may still hold is accepted until the
            // grace ends: the one in `api-key` always.
            if let (Some(current), Some(record)) = (&consumer.current, table.get(&id)) {
                let hash = SecretHash::of_key(current);
                assert!(
                    record.accepted_hashes(now).any(|h| *h == hash),
                    "caller's key rejected at {now}"
                );
                if !keys_held.contains(current) {
                    keys_held.push(current.clone());
                }
            }
        }
        assert!(rotations >= 5, "rotated {rotations} times in an hour");
        assert_eq!(table.keys.len(), 1, "one record, same id across rotations");
    }

    #[test]
    fn suspension_and_tier_are_written_to_the_record() {
        let mut k = key(json!({"modelRef": {"name": "m"}, "tier": "ReadOnly"}));
        let id = key_id("uid-1");
        let consumer = Consumer {
            current: Some(format_key(&id, &"a".repeat(43))),
            next: None,
        };
        let step = |k: &ChatApiKey, record: Option<&ApiKeyRecord>| {
            next_key_step(
                &KeyView {
                    key: k,
                    id: &id,
                    consumer: &consumer,
                    record,
                    now: t(5),
                    minted_at: Some(t(0)),
                    rotate_requested: false,
                    spiffe_id: None,
                },
                || unreachable!(),
            )
            .unwrap()
        };
        let KeyStep::WriteRecord(record) = step(&k, None) else {
            panic!("first write is the record")
        };
        assert_eq!(record.state, ApiKeyState::Active);
        assert_eq!(step(&k, Some(&record)), KeyStep::Wait(None));
        k.spec.suspended = true;
        let KeyStep::WriteRecord(suspended) = step(&k, Some(&record)) else {
            panic!("suspension is written")
        };
        assert_eq!(suspended.state, ApiKeyState::Suspended);
        assert_eq!(suspended.secret_hash, record.secret_hash, "same secret");
    }

    #[test]
    fn an_expired_key_leaves_the_table() {
        let k = key(json!({"modelRef": {"name": "m"}, "expiresAfter": "1h"}));
        // From the first mint, not from the resource's creation (t(-600)).
        assert_eq!(expires_at(&k, Some(t(0))), Some(t(3600)));
        assert_eq!(expires_at(&k, None), None, "not minted: no expiry runs");
        let id = key_id("uid-1");
        let consumer = Consumer {
            current: Some(format_key(&id, &"a".repeat(43))),
            next: None,
        };
        let record = ApiKeyRecord {
            id: id.clone(),
            name: "apps/frontend".into(),
            tier: k.spec.tier,
            state: ApiKeyState::Active,
            secret_hash: SecretHash::of_key(consumer.current.as_ref().unwrap()),
            previous_secret_hash: None,
            previous_secret_valid_until: None,
            created_at: t(0),
            expires_at: Some(t(3600)),
            rotated_at: None,
            last_used_at: None,
            spiffe_id: None,
        };
        let view = |now| KeyView {
            key: &k,
            id: &id,
            consumer: &consumer,
            record: Some(&record),
            now,
            minted_at: Some(t(0)),
            rotate_requested: false,
            spiffe_id: None,
        };
        assert_eq!(
            next_key_step(&view(t(10)), || unreachable!()).unwrap(),
            KeyStep::Wait(Some(t(3600)))
        );
        assert_eq!(
            next_key_step(&view(t(3600)), || unreachable!()).unwrap(),
            KeyStep::RemoveRecord
        );
    }

    fn view_of<'a>(
        key: &'a ChatApiKey,
        id: &'a str,
        consumer: &'a Consumer,
        record: Option<&'a ApiKeyRecord>,
        now: DateTime<Utc>,
        rotate_requested: bool,
    ) -> KeyView<'a> {
        KeyView {
            key,
            id,
            consumer,
            record,
            now,
            minted_at: Some(t(0)),
            rotate_requested,
            spiffe_id: None,
        }
    }

    /// securechat.dev/rotate: a key without spec.rotation rotates at once,
    /// overlapping by the default grace, and keeps its id.
    #[test]
    fn a_requested_rotation_stages_a_new_secret_now_with_the_default_grace() {
        let k = key(json!({"modelRef": {"name": "m"}}));
        let id = key_id("uid-1");
        let old = format_key(&id, &"a".repeat(43));
        let new = format_key(&id, &"b".repeat(43));
        let mut consumer = Consumer {
            current: Some(old.clone()),
            next: None,
        };
        let KeyStep::WriteRecord(record) = next_key_step(
            &view_of(&k, &id, &consumer, None, t(5), false),
            || unreachable!(),
        )
        .unwrap() else {
            panic!("the record first")
        };
        // Without a request nothing happens, ever.
        assert_eq!(
            next_key_step(
                &view_of(&k, &id, &consumer, Some(&record), t(5), false),
                || unreachable!()
            )
            .unwrap(),
            KeyStep::Wait(None)
        );
        let step = next_key_step(
            &view_of(&k, &id, &consumer, Some(&record), t(10), true),
            || Ok(new.clone()),
        )
        .unwrap();
        assert_eq!(
            step,
            KeyStep::StageNext {
                plaintext: new.clone()
            }
        );
        consumer.next = Some(new.clone());
        let KeyStep::WriteRecord(both) = next_key_step(
            &view_of(&k, &id, &consumer, Some(&record), t(11), false),
            || unreachable!(),
        )
        .unwrap() else {
            panic!("the table accepts both")
        };
        let defaults = KeyRotation::default();
        assert_eq!(
            both.previous_secret_valid_until,
            Some(t(11) + propagation(&defaults) + defaults.grace_period.as_chrono())
        );
        assert_eq!(both.id, id);
        let accepted: Vec<_> = both.accepted_hashes(t(12)).cloned().collect();
        assert!(accepted.contains(&SecretHash::of_key(&old)));
        assert!(accepted.contains(&SecretHash::of_key(&new)));
    }

    #[test]
    fn key_ids_are_stable_and_table_shaped() {
        let id = key_id("0b1c-uid");
        assert_eq!(id, key_id("0b1c-uid"));
        assert_eq!(id.len(), 16);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(
            new_plaintext(&id)
                .unwrap()
                .starts_with(&format!("sk-sc-{id}-"))
        );
    }
}
