//! `keyset.json`: the keys that sign and verify the server's access tokens.
//!
//! Rotation (the rotation seed's 24h with overlap) is done by the writer (the
//! operator, or dev mode once): a `Next` key is published ahead of time so
//! verifiers learn it, becomes `Active` (signs), then `Previous` (verifies
//! only) until its `notAfter`, then it is dropped. The server never decides
//! rotation itself: several replicas must agree on one active key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{ValidationError, is_valid_id};
use crate::v1alpha1::SigningAlgorithm;

/// Where a key is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Published in the JWKS, not yet signing.
    Next,
    /// Signs new tokens. Exactly one key is Active.
    Active,
    /// No longer signs; still verifies tokens it signed until `notAfter`.
    Previous,
}

/// One signing key.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningKey {
    /// Key id, the JWT header's `kid`.
    pub kid: String,
    /// The only algorithm this key is used with; a token whose header names
    /// another algorithm is refused.
    pub alg: SigningAlgorithm,
    /// Where the key is in its rotation.
    pub state: KeyState,
    /// Not used to sign or verify before this time.
    pub not_before: DateTime<Utc>,
    /// Not used to sign or verify after this time.
    pub not_after: DateTime<Utc>,
    /// PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`).
    pub private_key_pem: String,
}

// The private key must never reach a log line.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("state", &self.state)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

/// The whole keyset file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningKeySet {
    /// Next, Active and Previous keys; kids are unique.
    pub keys: Vec<SigningKey>,
}

const PEM_HEADER: &str = "-----BEGIN PRIVATE KEY-----";

impl SigningKey {
    /// Whether the key's validity window contains `now`.
    pub fn is_within_validity(&self, now: DateTime<Utc>) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

impl SigningKeySet {
    /// The key that signs new tokens.
    pub fn active(&self) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.state == KeyState::Active)
    }

    /// Keys that may verify a token at `now`: Active and Previous keys inside
    /// their window. Next keys are published but do not verify yet, so a
    /// token signed with a leaked not-yet-active key is useless.
    pub fn verifying(&self, now: DateTime<Utc>) -> impl Iterator<Item = &SigningKey> {
        self.keys
            .iter()
            .filter(move |k| k.state != KeyState::Next && k.is_within_validity(now))
    }

    /// Structural checks; they do not depend on the clock, so a file that
    /// was valid when written stays valid (expired keys merely stop
    /// verifying).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            if !is_valid_id(&key.kid, 64) {
                problems.push(format!(
                    "keys[{i}].kid: must be 1-64 lowercase letters or digits"
                ));
            }
            if !seen.insert(key.kid.as_str()) {
                problems.push(format!("keys[{i}].kid: duplicate kid {:?}", key.kid));
            }
            if key.not_before >= key.not_after {
                problems.push(format!("keys[{i}].notAfter: must be after notBefore"));
            }
            if !key.private_key_pem.trim_start().starts_with(PEM_HEADER) {
                problems.push(format!(
                    "keys[{i}].privateKeyPem: must be a PKCS#8 PEM private key ({PEM_HEADER})"
                ));
            }
        }
        match self
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Active)
            .count()
        {
            1 => {}
            0 => problems.push("keys: exactly one key must be Active; none is".to_string()),
            n => problems.push(format!("keys: exactly one key must be Active; {n} are")),
        }
        ValidationError::check(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn key(kid: &str, state: KeyState) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            alg: SigningAlgorithm::EdDSA,
            state,
            not_before: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            not_after: Utc.with_ymd_and_hms(2026, 1, 3, 0, 0, 0).unwrap(),
            private_key_pem: format!(
                "{PEM_HEADER}\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"
            ),
        }
    }

    #[test]
    fn round_trips_in_camel_case() {
        let set = SigningKeySet {
            keys: vec![key("k1", KeyState::Active), key("k0", KeyState::Previous)],
        };
        let json = serde_json::to_string(&set).unwrap();
        assert!(
            json.contains("\"notBefore\"") && json.contains("\"privateKeyPem\""),
            "{json}"
        );
        assert!(
            json.contains("\"alg\":\"EdDSA\"") && json.contains("\"state\":\"Previous\""),
            "{json}"
        );
        let back: SigningKeySet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        assert!(back.validate().is_ok());
    }

    #[test]
    fn exactly_one_active_key() {
        let none = SigningKeySet {
            keys: vec![key("a", KeyState::Next)],
        };
        assert!(none.validate().unwrap_err().to_string().contains("none is"));
        let two = SigningKeySet {
            keys: vec![key("a", KeyState::Active), key("b", KeyState::Active)],
        };
        assert!(two.validate().unwrap_err().to_string().contains("2 are"));
    }

    #[test]
    fn rejects_bad_kids_windows_and_pems() {
        let mut bad = key("Bad-Kid", KeyState::Active);
        bad.not_after = bad.not_before;
        bad.private_key_pem = "-----BEGIN RSA PRIVATE KEY-----".into();
        let dup = key("Bad-Kid", KeyState::Previous);
        let err = SigningKeySet {
            keys: vec![bad, dup],
        }
        .validate()
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("keys[0].kid"), "{text}");
        assert!(text.contains("duplicate kid"), "{text}");
        assert!(text.contains("keys[0].notAfter"), "{text}");
        assert!(text.contains("keys[0].privateKeyPem"), "{text}");
    }

    #[test]
    fn next_keys_and_expired_keys_do_not_verify() {
        let set = SigningKeySet {
            keys: vec![
                key("a", KeyState::Active),
                key("n", KeyState::Next),
                key("p", KeyState::Previous),
            ],
        };
        let inside = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
        let kids: Vec<_> = set.verifying(inside).map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["a", "p"]);
        let after = Utc.with_ymd_and_hms(2026, 1, 4, 0, 0, 0).unwrap();
        assert_eq!(set.verifying(after).count(), 0);
        assert_eq!(set.active().map(|k| k.kid.as_str()), Some("a"));
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let text = format!("{:?}", key("a", KeyState::Active));
        assert!(!text.contains("MC4CAQ") && text.contains("<redacted>"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<SigningKeySet>(r#"{"keys":[],"extra":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"));
    }
}
