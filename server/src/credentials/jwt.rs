//! Access tokens: signing with the active key and verification with the
//! keys that currently verify, each pinned to its own algorithm.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use securechat_crds::files::ValidationError;
use securechat_crds::files::keyset::{KeyState, SigningKeySet};
use securechat_crds::v1alpha1::{SigningAlgorithm, Tier};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::error::AuthFailure;

/// The claims the server issues and requires.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub role: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// Issuer, audience and clock-skew allowance, from the config.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
}

struct VerifyingKey {
    kid: String,
    alg: Algorithm,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    key: DecodingKey,
}

struct ActiveKey {
    kid: String,
    alg: Algorithm,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    key: EncodingKey,
}

/// The keyset, parsed once per reload.
pub struct SigningMaterial {
    active: Option<ActiveKey>,
    keys: Vec<VerifyingKey>,
    jwks: Value,
    /// Every key's phase and end, for the expiry metrics.
    pub expiries: Vec<KeyExpiry>,
    /// Tokens whose signature one of these keys verified, by SHA-256 of
    /// the token. A client sends the same token for its whole lifetime, and
    /// the signature check is most of a request's cost (EdDSA ~80 µs, RS256
    /// ~280 µs, ES256 ~650 µs here). Only the signature is remembered: a
    /// hit re-checks the key's window, exp / nbf / iat, issuer and audience
    /// against the current time and policy. A new keyset is a new
    /// `SigningMaterial`, so a removed key's tokens are never found here.
    verified: quick_cache::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
}

/// What a verified signature established, to re-check cheaply.
struct VerifiedToken {
    kid: String,
    claims: Claims,
    tier: Tier,
}

/// Tokens remembered per keyset: bounded memory (a few MiB at most) under
/// any number of distinct tokens; beyond it the least used are forgotten
/// and simply verified again.
const VERIFIED_TOKENS: usize = 16_384;

/// When one signing key stops verifying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExpiry {
    pub kid: String,
    pub phase: KeyState,
    pub not_after: DateTime<Utc>,
}

/// Why a keyset was refused (the last good one stays in force).
#[derive(Debug, thiserror::Error)]
pub enum KeysetError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("key {kid}: {source}")]
    Key {
        kid: String,
        #[source]
        source: KeyError,
    },
}

/// Why one key of the keyset is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unreadable private key: {0}")]
    Unreadable(#[source] rcgen::Error),
    #[error("the private key is not an {0:?} key")]
    WrongAlgorithm(SigningAlgorithm),
    #[error("unexpected {0} public key encoding")]
    PublicKeyEncoding(&'static str),
    #[error(transparent)]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("no active signing key is inside its validity window")]
    NoActiveKey,
    #[error(transparent)]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

fn algorithm(alg: SigningAlgorithm) -> Algorithm {
    match alg {
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::RS256 => Algorithm::RS256,
    }
}

impl SigningMaterial {
    /// Parses every key. Fails (and the last good keyset stays) if any key
    /// does not parse or is not of its declared algorithm.
    pub fn from_keyset(set: &SigningKeySet) -> Result<Self, KeysetError> {
        set.validate()?;
        let mut keys = Vec::new();
        let mut jwks = Vec::new();
        let mut active = None;
        for k in &set.keys {
            let alg = algorithm(k.alg);
            let key_error = |source: KeyError| KeysetError::Key {
                kid: k.kid.clone(),
                source,
            };
            let (decoding, jwk) = public_key(&k.private_key_pem, k.alg).map_err(key_error)?;
            let mut jwk = jwk;
            jwk["kid"] = json!(k.kid);
            jwk["use"] = json!("sig");
            jwk["alg"] = json!(format!("{alg:?}"));
            jwks.push(jwk);
            if k.state == KeyState::Active {
                let pem = k.private_key_pem.as_bytes();
                let key = match k.alg {
                    SigningAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem),
                    SigningAlgorithm::ES256 => EncodingKey::from_ec_pem(pem),
                    SigningAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem),
                }
                .map_err(|e| key_error(e.into()))?;
                active = Some(ActiveKey {
                    kid: k.kid.clone(),
                    alg,
                    not_before: k.not_before,
                    not_after: k.not_after,
                    key,
                });
            }
            keys.push(VerifyingKey {
                kid: k.kid.clone(),
                alg,
                not_before: k.not_before,
                not_after: k.not_after,
                key: decoding,
            });
        }
        Ok(Self {
            active,
            keys,
            jwks: json!({ "keys": jwks }),
            expiries: set
                .keys
                .iter()
                .map(|k| KeyExpiry {
                    kid: k.kid.clone(),
                    phase: k.state,
                    not_after: k.not_after,
                })
                .collect(),
            verified: quick_cache::sync::Cache::new(VERIFIED_TOKENS),
        })
    }

    /// The JWKS document: every key not yet past its end, including the
    /// Next key so verifiers learn it before it signs.
    pub fn jwks(&self, now: DateTime<Utc>) -> Value {
        let live: Vec<&str> = self
            .keys
            .iter()
            .filter(|k| now <= k.not_after)
            .map(|k| k.kid.as_str())
            .collect();
        let keys: Vec<Value> = self.jwks["keys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|j| live.iter().any(|kid| j["kid"] == *kid))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        json!({ "keys": keys })
    }

    /// The kid marked Active in the keyset, whatever its window: what a
    /// rotation changes.
    pub fn designated_active_kid(&self) -> Option<&str> {
        self.active.as_ref().map(|a| a.kid.as_str())
    }

    /// The kid that signs now, if the active key is inside its window.
    pub fn active_kid(&self, now: DateTime<Utc>) -> Option<&str> {
        self.active
            .as_ref()
            .filter(|a| a.not_before <= now && now <= a.not_after)
            .map(|a| a.kid.as_str())
    }

    /// Signs claims with the active key.
    pub fn sign(&self, claims: &Claims, now: DateTime<Utc>) -> Result<String, SignError> {
        let active = self
            .active
            .as_ref()
            .filter(|a| a.not_before <= now && now <= a.not_after)
            .ok_or(SignError::NoActiveKey)?;
        let mut header = Header::new(active.alg);
        header.kid = Some(active.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &active.key)?)
    }

    /// Verifies a token: header alg must equal the kid's algorithm, the kid
    /// must be one of the keyset's keys (Next, Active or Previous) inside
    /// its window, and exp / nbf / iss /
    /// aud must hold with the leeway.
    pub fn verify(
        &self,
        token: &str,
        policy: &TokenPolicy,
        now: DateTime<Utc>,
    ) -> Result<(Claims, Tier), AuthFailure> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.verified.get(&digest) {
            self.recheck(&known, policy, now)?;
            return Ok((known.claims.clone(), known.tier));
        }
        let (kid, claims, tier) = self.verify_signature_and_claims(token, policy, now)?;
        self.verified.insert(
            digest,
            Arc::new(VerifiedToken {
                kid,
                claims: claims.clone(),
                tier,
            }),
        );
        Ok((claims, tier))
    }

    /// [`Self::verify`] without the memory of verified tokens: the
    /// signature is checked every time (benchmarks measure this).
    pub fn verify_uncached(
        &self,
        token: &str,
        policy: &TokenPolicy,
        now: DateTime<Utc>,
    ) -> Result<(Claims, Tier), AuthFailure> {
        self.verify_signature_and_claims(token, policy, now)
            .map(|(_, claims, tier)| (claims, tier))
    }

    /// The checks of [`Self::verify`] that do not involve the signature, as
    /// jsonwebtoken and `verify_signature_and_claims` make them, for a
    /// token whose signature was verified before.
    fn recheck(
        &self,
        known: &VerifiedToken,
        policy: &TokenPolicy,
        now: DateTime<Utc>,
    ) -> Result<(), AuthFailure> {
        if !self
            .keys
            .iter()
            .any(|k| k.kid == known.kid && k.not_before <= now && now <= k.not_after)
        {
            return Err(AuthFailure::UnknownKid);
        }
        let (t, leeway) = (now.timestamp(), policy.leeway_secs as i64);
        let c = &known.claims;
        if c.exp < t - leeway {
            return Err(AuthFailure::TokenExpired);
        }
        if c.nbf > t + leeway || c.iat > t + leeway {
            return Err(AuthFailure::InvalidToken);
        }
        if c.iss != policy.issuer || c.aud != policy.audience {
            return Err(AuthFailure::InvalidToken);
        }
        Ok(())
    }

    /// Full verification: header, key, signature and claims.
    fn verify_signature_and_claims(
        &self,
        token: &str,
        policy: &TokenPolicy,
        now: DateTime<Utc>,
    ) -> Result<(String, Claims, Tier), AuthFailure> {
        // `alg: none` (or any name we do not know) fails here: the header
        // type has no such variant.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::InvalidToken)?;
        let kid = header.kid.as_deref().ok_or(AuthFailure::UnknownKid)?;
        // Next keys verify too: during a rotation another replica may
        // already have loaded the keyset where this key is Active and sign
        // with it, while this one still sees it as Next.
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid && k.not_before <= now && now <= k.not_after)
            .ok_or(AuthFailure::UnknownKid)?;
        if header.alg != key.alg {
            return Err(AuthFailure::AlgorithmMismatch);
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = policy.leeway_secs;
        validation.validate_nbf = true;
        validation.set_issuer(&[&policy.issuer]);
        validation.set_audience(&[&policy.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthFailure::TokenExpired,
                    _ => AuthFailure::InvalidToken,
                }
            })?;
        let claims = data.claims;
        // jsonwebtoken does not check iat; a token "issued" in the future
        // was not issued by a clock we trust.
        if claims.iat > now.timestamp() + policy.leeway_secs as i64 {
            return Err(AuthFailure::InvalidToken);
        }
        let tier = Tier::from_role_name(&claims.role).ok_or(AuthFailure::InvalidToken)?;
        Ok((key.kid.clone(), claims, tier))
    }
}

/// The public half of a PKCS#8 private key as a decoding key and a JWK.
fn public_key(pem: &str, alg: SigningAlgorithm) -> Result<(DecodingKey, Value), KeyError> {
    let pair = rcgen::KeyPair::from_pem(pem).map_err(KeyError::Unreadable)?;
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let expected = match alg {
        SigningAlgorithm::EdDSA => &rcgen::PKCS_ED25519,
        SigningAlgorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        SigningAlgorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
    };
    if pair.algorithm() != expected {
        return Err(KeyError::WrongAlgorithm(alg));
    }
    match alg {
        SigningAlgorithm::EdDSA => {
            let x = b64(raw);
            Ok((
                DecodingKey::from_ed_components(&x)?,
                json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
            ))
        }
        SigningAlgorithm::ES256 => {
            // Uncompressed SEC1 point: 0x04 || x || y.
            if raw.len() != 65 || raw[0] != 4 {
                return Err(KeyError::PublicKeyEncoding("P-256"));
            }
            let (x, y) = (b64(&raw[1..33]), b64(&raw[33..]));
            Ok((
                DecodingKey::from_ec_components(&x, &y)?,
                json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
            ))
        }
        SigningAlgorithm::RS256 => {
            let (n, e) =
                crate::der::rsa_public_components(raw).ok_or(KeyError::PublicKeyEncoding("RSA"))?;
            let (n, e) = (b64(n), b64(e));
            Ok((
                DecodingKey::from_rsa_components(&n, &e)?,
                json!({"kty": "RSA", "n": n, "e": e}),
            ))
        }
    }
}

/// A random token id.
pub fn new_jti() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use securechat_crds::files::keyset::SigningKey;

    /// A throwaway RSA key generated for these tests only.
    const RSA_PEM: &str = include_str!("testdata/rs256-test-only.pem");

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "iss".into(),
            audience: "aud".into(),
            leeway_secs: 5,
        }
    }

    fn claims(now: DateTime<Utc>) -> Claims {
        Claims {
            iss: "iss".into(),
            aud: "aud".into(),
            sub: "user".into(),
            role: "user".into(),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            exp: now.timestamp() + 600,
            jti: "j".into(),
        }
    }

    fn key(kid: &str, alg: SigningAlgorithm, state: KeyState, now: DateTime<Utc>) -> SigningKey {
        let (from, to) = (now - Duration::hours(1), now + Duration::hours(1));
        match alg {
            SigningAlgorithm::RS256 => SigningKey {
                kid: kid.into(),
                alg,
                state,
                not_before: from,
                not_after: to,
                private_key_pem: RSA_PEM.into(),
            },
            _ => crate::dev::new_signing_key(kid, alg, state, from, to).unwrap(),
        }
    }

    fn sign_with(k: &SigningKey, header_alg: Algorithm, c: &Claims) -> String {
        let pem = k.private_key_pem.as_bytes();
        let enc = match k.alg {
            SigningAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            SigningAlgorithm::ES256 => EncodingKey::from_ec_pem(pem),
            SigningAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem),
        }
        .unwrap();
        let mut header = Header::new(header_alg);
        header.kid = Some(k.kid.clone());
        jsonwebtoken::encode(&header, c, &enc).unwrap()
    }

    fn keyset(now: DateTime<Utc>) -> SigningKeySet {
        SigningKeySet {
            keys: vec![
                key("active", SigningAlgorithm::ES256, KeyState::Active, now),
                key("previous", SigningAlgorithm::EdDSA, KeyState::Previous, now),
                key("next", SigningAlgorithm::EdDSA, KeyState::Next, now),
                key("rsa", SigningAlgorithm::RS256, KeyState::Previous, now),
            ],
        }
    }

    #[test]
    fn each_algorithm_signs_and_verifies_under_its_own_kid() {
        let now = Utc::now();
        let set = keyset(now);
        let m = SigningMaterial::from_keyset(&set).unwrap();
        let token = m.sign(&claims(now), now).unwrap();
        let (c, tier) = m.verify(&token, &policy(), now).unwrap();
        assert_eq!((c.sub.as_str(), tier), ("user", Tier::Developer));
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
            Some("active")
        );
        let previous = sign_with(&set.keys[1], Algorithm::EdDSA, &claims(now));
        assert!(
            m.verify(&previous, &policy(), now).is_ok(),
            "previous key still verifies"
        );
        let rsa = sign_with(&set.keys[3], Algorithm::RS256, &claims(now));
        assert!(m.verify(&rsa, &policy(), now).is_ok());
        let jwks = m.jwks(now);
        let kinds: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kty"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["EC", "OKP", "OKP", "RSA"]);
    }

    #[test]
    fn next_keys_verify_and_keys_past_their_window_do_not() {
        let now = Utc::now();
        let set = keyset(now);
        let m = SigningMaterial::from_keyset(&set).unwrap();
        let next = sign_with(&set.keys[2], Algorithm::EdDSA, &claims(now));
        assert!(
            m.verify(&next, &policy(), now).is_ok(),
            "a Next key verifies (another replica may already sign with it)"
        );
        assert_eq!(
            jsonwebtoken::decode_header(m.sign(&claims(now), now).unwrap())
                .unwrap()
                .kid
                .as_deref(),
            Some("active"),
            "but only the Active key signs"
        );
        let later = now + Duration::hours(2);
        let mut c = claims(later);
        c.exp = later.timestamp() + 600;
        let previous = sign_with(&set.keys[1], Algorithm::EdDSA, &c);
        assert_eq!(
            m.verify(&previous, &policy(), later).err(),
            Some(AuthFailure::UnknownKid)
        );
        assert!(m.jwks(later)["keys"].as_array().unwrap().is_empty());
        assert!(
            m.sign(&c, later).is_err(),
            "the active key is past its window"
        );
    }

    #[test]
    fn a_remembered_signature_skips_nothing_but_the_signature_check() {
        let now = Utc::now();
        let set = keyset(now);
        let m = SigningMaterial::from_keyset(&set).unwrap();
        let token = sign_with(&set.keys[1], Algorithm::EdDSA, &claims(now));
        assert!(m.verify(&token, &policy(), now).is_ok(), "first: verified");
        assert!(
            m.verify(&token, &policy(), now).is_ok(),
            "again: remembered"
        );
        // Time moves on: the same token expires (past exp + leeway) ...
        let after_exp = now + Duration::seconds(600 + 6);
        assert_eq!(
            m.verify(&token, &policy(), after_exp).err(),
            Some(AuthFailure::TokenExpired)
        );
        // ... its key's window ends ...
        let after_key = now + Duration::hours(2);
        assert_eq!(
            m.verify(&token, &policy(), after_key).err(),
            Some(AuthFailure::UnknownKid)
        );
        // ... before its nbf / iat it was not valid yet ...
        let before = now - Duration::seconds(60);
        assert_eq!(
            m.verify(&token, &policy(), before).err(),
            Some(AuthFailure::InvalidToken)
        );
        // ... and a changed issuer or audience refuses it.
        for changed in [
            TokenPolicy {
                issuer: "other".into(),
                ..policy()
            },
            TokenPolicy {
                audience: "other".into(),
                ..policy()
            },
        ] {
            assert_eq!(
                m.verify(&token, &changed, now).err(),
                Some(AuthFailure::InvalidToken)
            );
        }
        assert!(m.verify(&token, &policy(), now).is_ok(), "still valid now");
        // A token differing in one signature character is another token.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert_eq!(
            m.verify(&forged, &policy(), now).err(),
            Some(AuthFailure::InvalidToken)
        );
        // A new keyset without that key forgets it.
        let without: SigningKeySet = SigningKeySet {
            keys: vec![set.keys[0].clone(), set.keys[2].clone()],
        };
        let reloaded = SigningMaterial::from_keyset(&without).unwrap();
        assert_eq!(
            reloaded.verify(&token, &policy(), now).err(),
            Some(AuthFailure::UnknownKid)
        );
    }

    #[test]
    fn a_kid_only_verifies_with_its_own_algorithm() {
        let now = Utc::now();
        let set = keyset(now);
        let m = SigningMaterial::from_keyset(&set).unwrap();
        // An EdDSA signature presented under the ES256 key's kid.
        let mut impostor = set.keys[1].clone();
        impostor.kid = "active".into();
        let token = sign_with(&impostor, Algorithm::EdDSA, &claims(now));
        assert_eq!(
            m.verify(&token, &policy(), now).err(),
            Some(AuthFailure::AlgorithmMismatch)
        );
        // HS256 keyed with the RSA key's public material (the classic
        // confusion attack) is refused before any HMAC is computed.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa".into());
        let jwks = m.jwks(now);
        let n = jwks["keys"][3]["n"].as_str().unwrap();
        let token = jsonwebtoken::encode(
            &header,
            &claims(now),
            &EncodingKey::from_secret(n.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            m.verify(&token, &policy(), now).err(),
            Some(AuthFailure::AlgorithmMismatch)
        );
    }

    #[test]
    fn a_key_of_the_wrong_type_is_refused_at_load() {
        let now = Utc::now();
        let mut k = key("k", SigningAlgorithm::EdDSA, KeyState::Active, now);
        k.alg = SigningAlgorithm::ES256;
        let err = SigningMaterial::from_keyset(&SigningKeySet { keys: vec![k] })
            .err()
            .unwrap();
        assert!(
            matches!(&err, KeysetError::Key { kid, source: KeyError::WrongAlgorithm(SigningAlgorithm::ES256) } if kid == "k"),
            "{err}"
        );
        assert!(err.to_string().contains("not an ES256 key"), "{err}");
        let mut garbled = key("g", SigningAlgorithm::EdDSA, KeyState::Active, now);
        garbled.private_key_pem =
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        assert!(
            SigningMaterial::from_keyset(&SigningKeySet {
                keys: vec![garbled]
            })
            .is_err()
        );
    }
}
