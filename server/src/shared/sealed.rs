//! Values the store holds but must not be able to read: sealed with
//! ChaCha20-Poly1305 under a key derived from a secret the store never sees
//! (a session's cookie id, an SSO login's state; the store is keyed by
//! their SHA-256 only). Whoever reads the store, or a backup of it, learns
//! neither the CSRF token nor the PKCE verifier; whoever holds the cookie
//! can open only its own session.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

/// The random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("sealing failed: the system random number generator failed")]
pub struct SealError;

/// The key: SHA-256 over a domain label and the secret (the lookup key is
/// SHA-256 of the secret alone, so the two never coincide).
fn key(secret: &str, purpose: &[u8]) -> LessSafeKey {
    let digest = Sha256::new()
        .chain_update(b"securechat sealed value key\0")
        .chain_update(purpose)
        .chain_update([0])
        .chain_update(secret.as_bytes())
        .finalize();
    // A 32-byte key is exactly ChaCha20-Poly1305's: new() cannot fail.
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &digest).expect("a 32-byte key");
    LessSafeKey::new(unbound)
}

/// `nonce || ciphertext || tag`, bound to `purpose`.
pub fn seal(secret: &str, purpose: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| SealError)?;
    let mut buffer = plaintext.to_vec();
    key(secret, purpose)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose),
            &mut buffer,
        )
        .map_err(|_| SealError)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buffer);
    Ok(out)
}

/// The plaintext, or `None` for a value sealed under another secret or
/// purpose, or altered.
pub fn open(secret: &str, purpose: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = ciphertext.to_vec();
    let plaintext = key(secret, purpose)
        .open_in_place(nonce, Aad::from(purpose), &mut buffer)
        .ok()?;
    Some(plaintext.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_secret_and_purpose_open_a_value() {
        let value = seal("cookie-id", b"session", b"{\"csrf\":\"t0ken\"}").unwrap();
        assert!(!value.windows(5).any(|w| w == b"t0ken"), "sealed in clear");
        assert_eq!(
            open("cookie-id", b"session", &value).as_deref(),
            Some(&b"{\"csrf\":\"t0ken\"}"[..])
        );
        assert_eq!(open("other-id", b"session", &value), None);
        assert_eq!(open("cookie-id", b"login", &value), None);
        let mut altered = value.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(open("cookie-id", b"session", &altered), None);
        assert_eq!(open("cookie-id", b"session", &value[..5]), None);
    }
}
