//! API keys: minting, parsing and verification. The only place a presented
//! secret is compared with a stored hash, and it does so in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use securechat_crds::files::api_keys::{
    ApiKeyRecord, ApiKeyStatus, ApiKeyTable, KEY_PREFIX, MAX_ID_LEN, SECRET_LEN, SecretHash,
    format_key,
};
use subtle::ConstantTimeEq;

use crate::error::AuthFailure;

/// A freshly minted key: the plaintext (shown once) and what the table keeps.
pub struct Minted {
    pub plaintext: String,
    pub hash: SecretHash,
}

/// 256 random bits from the OS, base64url.
pub fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A random key id: 12 base-36 characters (62 bits), enough to never clash
/// in one table.
pub fn random_id() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

/// Mints a new secret for key `id`.
pub fn mint(id: &str) -> anyhow::Result<Minted> {
    let plaintext = format_key(id, &random_secret()?);
    let hash = SecretHash::of_key(&plaintext);
    Ok(Minted { plaintext, hash })
}

/// Whether a bearer credential looks like one of our API keys (rather than
/// a JWT).
pub fn looks_like_api_key(credential: &str) -> bool {
    credential.starts_with(KEY_PREFIX)
}

/// Splits `sk-sc-<id>-<secret>` and checks the shape, so garbage never
/// reaches the table lookup.
pub fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    let id_ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok = secret.len() == SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

/// Checks a presented key against the table at `now`. The secret is
/// checked before the lifecycle state, so only the key's holder learns that
/// it is suspended or expired.
pub fn verify<'t>(
    table: &'t ApiKeyTable,
    presented: &str,
    now: DateTime<Utc>,
) -> Result<&'t ApiKeyRecord, AuthFailure> {
    let (id, _) = parse(presented).ok_or(AuthFailure::Malformed)?;
    let record = table.get(id).ok_or(AuthFailure::UnknownKey)?;
    let presented_digest = SecretHash::digest_of_key(presented);
    // Compare against every accepted hash without stopping early.
    let mut matched = subtle::Choice::from(0u8);
    for hash in record.accepted_hashes(now) {
        if let Some(stored) = hash.digest() {
            matched |= stored.ct_eq(&presented_digest);
        }
    }
    if !bool::from(matched) {
        return Err(AuthFailure::WrongSecret);
    }
    ensure_usable(record, now)?;
    Ok(record)
}

/// Refuses a key that is not Active at `now`, with the state as the
/// reason. The one lifecycle check for every way a key is used: presented
/// directly, behind a token minted from it, or behind a web session opened
/// with it.
pub fn ensure_usable(record: &ApiKeyRecord, now: DateTime<Utc>) -> Result<(), AuthFailure> {
    match record.status_at(now) {
        ApiKeyStatus::Active => Ok(()),
        ApiKeyStatus::Suspended => Err(AuthFailure::Suspended),
        ApiKeyStatus::Expired => Err(AuthFailure::Expired),
        ApiKeyStatus::Revoked => Err(AuthFailure::Revoked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use securechat_crds::files::api_keys::ApiKeyState;
    use securechat_crds::v1alpha1::Tier;

    fn table_with(id: &str, hash: SecretHash, now: DateTime<Utc>) -> ApiKeyTable {
        ApiKeyTable {
            keys: vec![ApiKeyRecord {
                id: id.into(),
                name: "t".into(),
                tier: Tier::Developer,
                state: ApiKeyState::Active,
                secret_hash: hash,
                previous_secret_hash: None,
                previous_secret_valid_until: None,
                created_at: now - Duration::days(1),
                expires_at: Some(now + Duration::days(1)),
                rotated_at: None,
                last_used_at: None,
                spiffe_id: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn minted_keys_parse_and_verify() {
        let now = Utc::now();
        let id = random_id().unwrap();
        let minted = mint(&id).unwrap();
        assert!(minted.plaintext.starts_with("sk-sc-"));
        assert_eq!(parse(&minted.plaintext).map(|(i, _)| i), Some(id.as_str()));
        let table = table_with(&id, minted.hash.clone(), now);
        assert_eq!(
            verify(&table, &minted.plaintext, now).map(|r| r.id.as_str()),
            Ok(id.as_str())
        );
    }

    #[test]
    fn every_failure_has_its_reason() {
        let now = Utc::now();
        let minted = mint("abc").unwrap();
        let mut table = table_with("abc", minted.hash.clone(), now);
        let other = mint("abc").unwrap();
        assert_eq!(
            verify(&table, "sk-sc-abc", now).err(),
            Some(AuthFailure::Malformed)
        );
        assert_eq!(
            verify(&table, "nope", now).err(),
            Some(AuthFailure::Malformed)
        );
        let unknown = mint("zzz").unwrap();
        assert_eq!(
            verify(&table, &unknown.plaintext, now).err(),
            Some(AuthFailure::UnknownKey)
        );
        assert_eq!(
            verify(&table, &other.plaintext, now).err(),
            Some(AuthFailure::WrongSecret)
        );
        table.keys[0].state = ApiKeyState::Suspended;
        assert_eq!(
            verify(&table, &minted.plaintext, now).err(),
            Some(AuthFailure::Suspended)
        );
        table.keys[0].state = ApiKeyState::Revoked;
        assert_eq!(
            verify(&table, &minted.plaintext, now).err(),
            Some(AuthFailure::Revoked)
        );
        table.keys[0].state = ApiKeyState::Active;
        let later = now + Duration::days(2);
        assert_eq!(
            verify(&table, &minted.plaintext, later).err(),
            Some(AuthFailure::Expired)
        );
        // The state is not revealed to someone without the secret.
        table.keys[0].state = ApiKeyState::Suspended;
        assert_eq!(
            verify(&table, &other.plaintext, now).err(),
            Some(AuthFailure::WrongSecret)
        );
    }

    #[test]
    fn only_an_active_key_is_usable() {
        let now = Utc::now();
        let mut table = table_with("abc", mint("abc").unwrap().hash, now);
        let record = &mut table.keys[0];
        assert_eq!(ensure_usable(record, now), Ok(()));
        assert_eq!(
            ensure_usable(record, now + Duration::days(2)),
            Err(AuthFailure::Expired)
        );
        for (state, failure) in [
            (ApiKeyState::Suspended, AuthFailure::Suspended),
            (ApiKeyState::Revoked, AuthFailure::Revoked),
        ] {
            record.state = state;
            assert_eq!(ensure_usable(record, now), Err(failure));
        }
    }

    #[test]
    fn previous_secret_works_during_grace_only() {
        let now = Utc::now();
        let old = mint("abc").unwrap();
        let new = mint("abc").unwrap();
        let mut table = table_with("abc", new.hash.clone(), now);
        table.keys[0].previous_secret_hash = Some(old.hash.clone());
        table.keys[0].previous_secret_valid_until = Some(now + Duration::hours(1));
        assert!(verify(&table, &old.plaintext, now).is_ok());
        assert!(verify(&table, &new.plaintext, now).is_ok());
        let after = now + Duration::hours(2);
        assert_eq!(
            verify(&table, &old.plaintext, after).err(),
            Some(AuthFailure::WrongSecret)
        );
    }
}
