//! Key and certificate material: the per-model CA, server certificates and
//! token-signing keys. Random by nature, so kept apart from the pure
//! builders in `desired/`, which decide *whether* to issue.

use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use securechat_crds::files::keyset::{KeyState, SigningKey};
use securechat_crds::v1alpha1::SigningAlgorithm;

use crate::{Error, Result};

fn pki_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |e| Error::Render {
        what,
        message: e.to_string(),
    }
}

/// A CA: PEM certificate and PKCS#8 PEM key.
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params(model: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_error("CA"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("securechat CA for {model}"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// A new self-signed CA for one model.
pub fn new_ca(model: &str, now: DateTime<Utc>, not_after: DateTime<Utc>) -> Result<CertifiedKey> {
    let key = KeyPair::generate().map_err(pki_error("CA key"))?;
    let mut params = ca_params(model)?;
    params.not_before = to_offset(now - chrono::Duration::days(1));
    params.not_after = to_offset(not_after);
    let cert = params
        .self_signed(&key)
        .map_err(pki_error("CA certificate"))?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A server certificate for `dns_names`, signed by `ca`, valid until
/// `not_after` (exact to the second).
pub fn new_server_certificate(
    model: &str,
    ca: &CertifiedKey,
    dns_names: &[String],
    now: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> Result<CertifiedKey> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(pki_error("CA key"))?;
    // The issuer is rebuilt from the CA's subject and key (the same subject
    // new_ca wrote), which is all a signature needs.
    let issuer = Issuer::new(ca_params(model)?, ca_key);
    let key = KeyPair::generate().map_err(pki_error("server key"))?;
    let mut params =
        CertificateParams::new(dns_names.to_vec()).map_err(pki_error("server certificate"))?;
    params.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = to_offset(now - chrono::Duration::minutes(5));
    params.not_after = to_offset(not_after);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(pki_error("server certificate"))?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn to_offset(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A fresh random key id: 20 lowercase base-32 characters (100 bits).
pub fn new_kid() -> Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| Error::Render {
        what: "key id",
        message: e.to_string(),
    })?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect())
}

/// A new signing key for `alg`.
pub fn new_signing_key(
    alg: SigningAlgorithm,
    state: KeyState,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> Result<SigningKey> {
    let private_key_pem = match alg {
        SigningAlgorithm::EdDSA => KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(pki_error("Ed25519 key"))?
            .serialize_pem(),
        SigningAlgorithm::ES256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(pki_error("P-256 key"))?
            .serialize_pem(),
        SigningAlgorithm::RS256 => {
            use rsa::pkcs8::{EncodePrivateKey, LineEnding};
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 3072).map_err(|e| {
                Error::Render {
                    what: "RSA key",
                    message: e.to_string(),
                }
            })?;
            key.to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| Error::Render {
                    what: "RSA key",
                    message: e.to_string(),
                })?
                .to_string()
        }
    };
    Ok(SigningKey {
        kid: new_kid()?,
        alg,
        state,
        not_before,
        not_after,
        private_key_pem,
    })
}
