//! `api-keys.json`: the API-key table. It holds hashes only; the plaintext
//! key exists once, in the consumer's Secret (operator) or on the CLI's last
//! stdout line (standalone).
//!
//! Key format: `sk-sc-<id>-<secret>`. The prefix makes leaked keys easy to
//! find with secret scanners; the id lets the server look up one record
//! instead of comparing against every hash; the secret is 256 random bits,
//! base64url without padding (43 characters).
//!
//! Hash: `sha256:<hex>` of the whole plaintext key. A slow password hash
//! (argon2) protects low-entropy passwords against offline guessing; these
//! secrets are 256-bit random, so guessing is infeasible either way, and a
//! fast hash keeps per-request verification in microseconds instead of
//! handing attackers a CPU-exhaustion lever.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ValidationError, is_valid_id};
use crate::hex::hex;
use crate::v1alpha1::{SpiffePattern, Tier};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "sk-sc-";
/// Length of the secret part (256 bits in base64url, no padding).
pub const SECRET_LEN: usize = 43;
/// Longest key id.
pub const MAX_ID_LEN: usize = 32;
const HASH_PREFIX: &str = "sha256:";

/// The stored lifecycle state. "Expired" is not stored: it follows from
/// `expiresAt` and the clock (see [`ApiKeyRecord::status_at`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiKeyState {
    /// In use (unless past `expiresAt`).
    Active,
    /// Deactivated; can be resumed.
    Suspended,
    /// Gone for good.
    Revoked,
}

/// The state that decides whether a key authenticates now.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiKeyStatus {
    /// Authenticates.
    Active,
    /// Deactivated; can be resumed.
    Suspended,
    /// Past its `expiresAt`.
    Expired,
    /// Gone for good.
    Revoked,
}

impl ApiKeyStatus {
    /// The name shown in listings and audit records.
    pub fn as_str(&self) -> &'static str {
        match self {
            ApiKeyStatus::Active => "Active",
            ApiKeyStatus::Suspended => "Suspended",
            ApiKeyStatus::Expired => "Expired",
            ApiKeyStatus::Revoked => "Revoked",
        }
    }
}

/// A stored secret hash, `sha256:<64 hex digits>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct SecretHash(pub String);

impl SecretHash {
    /// Hashes a plaintext key for storage.
    pub fn of_key(plaintext_key: &str) -> Self {
        Self(format!(
            "{HASH_PREFIX}{}",
            hex(&Self::digest_of_key(plaintext_key))
        ))
    }

    /// The raw digest [`SecretHash::of_key`] stores, for the verifier: a
    /// presented key is compared as bytes, never formatted to hex and
    /// parsed back (that round trip was 1.4% of the server's CPU on
    /// authenticated GET /v1/models).
    pub fn digest_of_key(plaintext_key: &str) -> [u8; 32] {
        Sha256::digest(plaintext_key.as_bytes()).into()
    }

    /// The raw digest, for constant-time comparison by the verifier.
    pub fn digest(&self) -> Option<[u8; 32]> {
        let hex_part = self.0.strip_prefix(HASH_PREFIX)?;
        if hex_part.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex_part.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

/// Builds the plaintext key from its parts.
pub fn format_key(id: &str, secret: &str) -> String {
    format!("{KEY_PREFIX}{id}-{secret}")
}

/// One API key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// Lowercase letters and digits; part of the plaintext key.
    pub id: String,
    /// Human name (standalone) or `<namespace>/<name>` of the ChatApiKey.
    pub name: String,
    /// What the key may do.
    pub tier: Tier,
    /// Stored lifecycle state; see [`ApiKeyRecord::status_at`].
    pub state: ApiKeyState,
    /// Hash of the current secret.
    pub secret_hash: SecretHash,
    /// Hash of the secret before the last rotation; accepted until
    /// `previousSecretValidUntil`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_hash: Option<SecretHash>,
    /// End of the previous secret's grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
    /// When the key was minted.
    pub created_at: DateTime<Utc>,
    /// No expiry when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// When the current secret replaced the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<DateTime<Utc>>,
    /// Last successful use as recorded by the writer of this file (the
    /// server reports live usage through metrics and /admin/keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// The SPIFFE ID this key is bound to (`keys create --spiffe-id`): the
    /// server accepts the key only on a connection whose client certificate
    /// carries this ID, so a key copied off its workload is useless
    /// elsewhere; and a certificate with this ID sent alone is this key's
    /// caller (its tier, usage and lifecycle), so removing or suspending
    /// the record revokes the certificate's identity at once.
    #[serde(rename = "spiffeID", default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
}

impl ApiKeyRecord {
    /// The lifecycle state at `now`. Revoked and Suspended win over Expired
    /// because they are deliberate decisions.
    pub fn status_at(&self, now: DateTime<Utc>) -> ApiKeyStatus {
        match self.state {
            ApiKeyState::Revoked => ApiKeyStatus::Revoked,
            ApiKeyState::Suspended => ApiKeyStatus::Suspended,
            ApiKeyState::Active if self.expires_at.is_some_and(|e| now >= e) => {
                ApiKeyStatus::Expired
            }
            ApiKeyState::Active => ApiKeyStatus::Active,
        }
    }

    /// Hashes a presented key may match at `now`: the current one, and the
    /// previous one while its grace period lasts.
    pub fn accepted_hashes(&self, now: DateTime<Utc>) -> impl Iterator<Item = &SecretHash> {
        let previous = match (&self.previous_secret_hash, self.previous_secret_valid_until) {
            (Some(hash), Some(until)) if now < until => Some(hash),
            _ => None,
        };
        std::iter::once(&self.secret_hash).chain(previous)
    }
}

/// How many expired keys a table remembers, the oldest dropped first: at
/// about 200 bytes each, 200 keep the table (a Secret, at most 1 MiB)
/// small while covering months of short-lived keys.
pub const HISTORY_LIMIT: usize = 200;

/// An expired key, archived when it left the table: what an audit of who
/// held which key, and until when, needs. Never a hash.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExpiredKeyRecord {
    /// The key's id (the non-secret part of the key).
    pub id: String,
    /// As in the table: a human name or `<namespace>/<name>`.
    pub name: String,
    /// What the key could do.
    pub tier: Tier,
    /// When the key was minted.
    pub created_at: DateTime<Utc>,
    /// When it expired.
    pub expired_at: DateTime<Utc>,
    /// Its last recorded use, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The whole table.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyTable {
    /// Every key, in no particular order; ids are unique.
    pub keys: Vec<ApiKeyRecord>,
    /// Expired keys removed from `keys`, oldest first, at most
    /// [`HISTORY_LIMIT`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ExpiredKeyRecord>,
}

impl ApiKeyTable {
    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&ApiKeyRecord> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The key with this id, to change it.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut ApiKeyRecord> {
        self.keys.iter_mut().find(|k| k.id == id)
    }

    /// Removes the expired key `id` from `keys` and archives it in
    /// `history` (dropping the oldest beyond [`HISTORY_LIMIT`]). It expired
    /// at its `expiresAt`, or `now` for a key without one. False when no
    /// such key is in the table.
    pub fn archive_expired(&mut self, id: &str, now: DateTime<Utc>) -> bool {
        let Some(at) = self.keys.iter().position(|k| k.id == id) else {
            return false;
        };
        let key = self.keys.remove(at);
        self.history.push(ExpiredKeyRecord {
            expired_at: key.expires_at.unwrap_or(now),
            id: key.id,
            name: key.name,
            tier: key.tier,
            created_at: key.created_at,
            last_used_at: key.last_used_at,
        });
        let excess = self.history.len().saturating_sub(HISTORY_LIMIT);
        self.history.drain(..excess);
        true
    }

    /// Every problem of the table, each naming its field: ids, names,
    /// hashes and the grace-period pairs.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            if !is_valid_id(&key.id, MAX_ID_LEN) {
                problems.push(format!(
                    "keys[{i}].id: must be 1-{MAX_ID_LEN} lowercase letters or digits"
                ));
            }
            if !seen.insert(key.id.as_str()) {
                problems.push(format!("keys[{i}].id: duplicate id {:?}", key.id));
            }
            if key.name.is_empty() || key.name.len() > 253 {
                problems.push(format!("keys[{i}].name: must be 1-253 characters"));
            }
            if key.secret_hash.digest().is_none() {
                problems.push(format!(
                    "keys[{i}].secretHash: must be sha256:<64 hex digits>"
                ));
            }
            match (&key.previous_secret_hash, key.previous_secret_valid_until) {
                (Some(hash), Some(_)) if hash.digest().is_none() => {
                    problems.push(format!(
                        "keys[{i}].previousSecretHash: must be sha256:<64 hex digits>"
                    ));
                }
                (Some(_), None) => problems.push(format!(
                    "keys[{i}].previousSecretValidUntil: required with previousSecretHash"
                )),
                (None, Some(_)) => problems.push(format!(
                    "keys[{i}].previousSecretHash: required with previousSecretValidUntil"
                )),
                _ => {}
            }
            if key.expires_at.is_some_and(|e| e <= key.created_at) {
                problems.push(format!("keys[{i}].expiresAt: must be after createdAt"));
            }
            match key.spiffe_id.as_deref().map(SpiffePattern::parse) {
                None | Some(Ok(SpiffePattern::Exact(_))) => {}
                Some(Ok(SpiffePattern::Prefix(_))) => problems.push(format!(
                    "keys[{i}].spiffeID: must be one SPIFFE ID, not a pattern"
                )),
                Some(Err(e)) => problems.push(format!("keys[{i}].spiffeID: {e}")),
            }
        }
        if self.history.len() > HISTORY_LIMIT {
            problems.push(format!(
                "history: at most {HISTORY_LIMIT} entries, found {}",
                self.history.len()
            ));
        }
        ValidationError::check(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, day, hour, 0, 0).unwrap()
    }

    #[test]
    fn the_raw_digest_is_the_one_stored_in_hex() {
        let key = format_key("k1", "s3cret");
        let stored = SecretHash::of_key(&key);
        assert_eq!(stored.digest(), Some(SecretHash::digest_of_key(&key)));
        assert_ne!(
            SecretHash::digest_of_key(&key),
            SecretHash::digest_of_key(&format_key("k1", "other"))
        );
    }

    fn record(id: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            name: "ci".into(),
            tier: Tier::Developer,
            state: ApiKeyState::Active,
            secret_hash: SecretHash::of_key("sk-sc-a-new"),
            previous_secret_hash: None,
            previous_secret_valid_until: None,
            created_at: t(1, 0),
            expires_at: Some(t(10, 0)),
            rotated_at: None,
            last_used_at: None,
            spiffe_id: None,
        }
    }

    #[test]
    fn hash_is_sha256_hex_and_parses_back() {
        // SHA-256("abc"), a published test vector.
        let h = SecretHash::of_key("abc");
        assert_eq!(
            h.0,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.digest().map(|d| d[0]), Some(0xba));
        assert_eq!(SecretHash("sha256:zz".into()).digest(), None);
        assert_eq!(SecretHash("md5:00".into()).digest(), None);
        assert_eq!(format_key("abc123", "s3cr3t"), "sk-sc-abc123-s3cr3t");
    }

    #[test]
    fn status_follows_state_then_expiry() {
        let mut k = record("a");
        assert_eq!(k.status_at(t(2, 0)), ApiKeyStatus::Active);
        assert_eq!(k.status_at(t(10, 0)), ApiKeyStatus::Expired);
        k.state = ApiKeyState::Suspended;
        assert_eq!(k.status_at(t(11, 0)), ApiKeyStatus::Suspended);
        k.state = ApiKeyState::Revoked;
        assert_eq!(k.status_at(t(2, 0)), ApiKeyStatus::Revoked);
    }

    #[test]
    fn previous_secret_is_accepted_only_during_grace() {
        let mut k = record("a");
        k.previous_secret_hash = Some(SecretHash::of_key("sk-sc-a-old"));
        k.previous_secret_valid_until = Some(t(2, 1));
        assert_eq!(k.accepted_hashes(t(2, 0)).count(), 2);
        assert_eq!(k.accepted_hashes(t(2, 1)).count(), 1);
    }

    #[test]
    fn expired_keys_are_archived_in_a_bounded_history() {
        let mut table = ApiKeyTable::default();
        for i in 0..HISTORY_LIMIT + 5 {
            let mut key = record(&format!("k{i}"));
            key.last_used_at = Some(t(2, 0));
            table.keys.push(key);
        }
        let mut never = record("never");
        never.expires_at = None;
        table.keys.push(never);
        for i in 0..HISTORY_LIMIT + 5 {
            assert!(table.archive_expired(&format!("k{i}"), t(11, 0)));
        }
        assert!(!table.archive_expired("k0", t(11, 0)), "already archived");
        assert_eq!(table.keys.len(), 1);
        assert_eq!(table.history.len(), HISTORY_LIMIT);
        // The oldest went first; each entry keeps what an audit needs.
        assert_eq!(table.history[0].id, "k5");
        let last = table.history.last().unwrap();
        assert_eq!(last.id, format!("k{}", HISTORY_LIMIT + 4));
        assert_eq!(
            (
                last.tier,
                last.created_at,
                last.expired_at,
                last.last_used_at
            ),
            (Tier::Developer, t(1, 0), t(10, 0), Some(t(2, 0)))
        );
        assert!(table.archive_expired("never", t(11, 0)));
        assert_eq!(table.history.last().unwrap().expired_at, t(11, 0));
        let json = serde_json::to_string(&table).unwrap();
        assert!(!json.contains("sha256:"), "no hash in the history");
        assert!(table.validate().is_ok());
        let back: ApiKeyTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, table);
        // A table without history reads and writes as before.
        let empty = serde_json::to_string(&ApiKeyTable::default()).unwrap();
        assert_eq!(empty, r#"{"keys":[]}"#);
    }

    #[test]
    fn round_trips_and_validates() {
        let table = ApiKeyTable {
            keys: vec![record("a"), record("b")],
            ..Default::default()
        };
        let json = serde_json::to_string_pretty(&table).unwrap();
        assert!(
            json.contains("\"secretHash\": \"sha256:") && json.contains("\"tier\": \"Developer\"")
        );
        let back: ApiKeyTable = serde_json::from_str(&json).unwrap();
        assert_eq!(back, table);
        assert!(back.validate().is_ok());
        assert!(back.get("b").is_some() && back.get("c").is_none());
    }

    #[test]
    fn validation_names_each_bad_field() {
        let mut bad = record("A-1");
        bad.name = String::new();
        bad.secret_hash = SecretHash("plain".into());
        bad.previous_secret_hash = Some(SecretHash::of_key("x"));
        bad.expires_at = Some(t(1, 0));
        let dup = record("A-1");
        let text = ApiKeyTable {
            keys: vec![bad, dup],
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        for needle in [
            "keys[0].id",
            "duplicate id",
            "keys[0].name",
            "keys[0].secretHash",
            "keys[0].previousSecretValidUntil",
            "keys[0].expiresAt",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }
}
