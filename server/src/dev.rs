//! `serve --dev`: creates, if absent, everything a standalone server needs
//! under one directory: a CA and a localhost certificate, an Ed25519
//! signing keyset, an empty API-key table and a default config. Existing
//! files are never overwritten, so keys survive restarts.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Datelike, Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use securechat_crds::files::api_keys::ApiKeyTable;
use securechat_crds::files::config::ServerConfig;
use securechat_crds::files::keyset::{KeyState, SigningKey, SigningKeySet};
use securechat_crds::files::names;
use securechat_crds::v1alpha1::SigningAlgorithm;

use crate::files::atomic::write_atomic;

/// Dev certificates and the dev signing key live a year: outside
/// Kubernetes there is no rotator.
const DEV_VALIDITY_DAYS: i64 = 365;

/// Creates whatever is missing under `dir`; returns the config path.
pub fn ensure(dir: &Path) -> anyhow::Result<PathBuf> {
    let now = Utc::now();
    let tls = dir.join("tls");
    let keys = dir.join("signing-keys");
    for d in [dir, &tls, &keys] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let (ca_crt, ca_key) = (tls.join(names::CA_CERT), tls.join("ca.key"));
    let (crt, key) = (tls.join(names::TLS_CERT), tls.join(names::TLS_KEY));
    if !crt.exists() || !key.exists() || !ca_crt.exists() {
        let material = certificates(now)?;
        write_atomic(&ca_key, material.ca_key.as_bytes(), true)?;
        write_atomic(&ca_crt, material.ca_cert.as_bytes(), false)?;
        write_atomic(&key, material.key.as_bytes(), true)?;
        write_atomic(&crt, material.cert.as_bytes(), false)?;
        tracing::info!(ca = %ca_crt.display(), "created a dev CA and a localhost certificate");
    }
    let keyset_path = keys.join(names::KEYSET);
    if !keyset_path.exists() {
        let set = signing_keyset(now)?;
        write_atomic(&keyset_path, &serde_json::to_vec_pretty(&set)?, true)?;
        tracing::info!(path = %keyset_path.display(), "created an Ed25519 signing keyset");
    }
    let table = dir.join(names::API_KEYS);
    if !table.exists() {
        write_atomic(
            &table,
            &serde_json::to_vec_pretty(&ApiKeyTable::default())?,
            true,
        )?;
    }
    let config = dir.join(names::CONFIG);
    if !config.exists() {
        let yaml = format!(
            "# securechat server configuration (see ServerConfig in securechat-crds).\n{}",
            serde_yaml::to_string(&ServerConfig::default())?
        );
        write_atomic(&config, yaml.as_bytes(), false)?;
    }
    Ok(config)
}

/// PEM texts of a CA and a server certificate signed by it.
pub struct DevCertificates {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

/// A CA and a certificate for localhost / 127.0.0.1 / ::1.
pub fn certificates(now: DateTime<Utc>) -> anyhow::Result<DevCertificates> {
    let ymd = |t: DateTime<Utc>| rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8);
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "securechat dev CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = ymd(now - Duration::days(1));
    ca.not_after = ymd(now + Duration::days(DEV_VALIDITY_DAYS));
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = ymd(now - Duration::days(1));
    leaf.not_after = ymd(now + Duration::days(DEV_VALIDITY_DAYS));
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(DevCertificates {
        ca_cert: ca_cert.pem(),
        ca_key: issuer.key().serialize_pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A new private key for `alg` (RS256 cannot be generated with ring; the
/// operator generates those).
pub fn new_signing_key(
    kid: &str,
    alg: SigningAlgorithm,
    state: KeyState,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> anyhow::Result<SigningKey> {
    let pair = match alg {
        SigningAlgorithm::EdDSA => KeyPair::generate_for(&rcgen::PKCS_ED25519)?,
        SigningAlgorithm::ES256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?,
        SigningAlgorithm::RS256 => anyhow::bail!("RS256 keys are not generated by the server"),
    };
    Ok(SigningKey {
        kid: kid.to_string(),
        alg,
        state,
        not_before,
        not_after,
        private_key_pem: pair.serialize_pem(),
    })
}

/// One active Ed25519 key.
pub fn signing_keyset(now: DateTime<Utc>) -> anyhow::Result<SigningKeySet> {
    let kid = format!("dev{}", now.format("%Y%m%d%H%M%S"));
    Ok(SigningKeySet {
        keys: vec![new_signing_key(
            &kid,
            SigningAlgorithm::EdDSA,
            KeyState::Active,
            now - Duration::minutes(1),
            now + Duration::days(DEV_VALIDITY_DAYS),
        )?],
    })
}
