//! Key and certificate material: the per-model CA, server certificates and
//! token-signing keys. Random by nature, so kept apart from the pure
//! builders in `desired/`, which decide *whether* to issue.

use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use securechat_crds::files::keyset::{KeyState, SigningKey};
use securechat_crds::hex::hex;
use securechat_crds::v1alpha1::SigningAlgorithm;

use crate::{Error, Result};

/// The longest a serving certificate may be valid, whatever `tls.validity`
/// says: 365 days, the CA/Browser Forum's bound for public certificates
/// (398 days) rounded down. The CRD bounds the field too, but objects
/// admitted before that rule (or with a typo of `2000000h`, which gave a
/// certificate valid until 2255) must not get a longer one.
pub const MAX_SERVING_VALIDITY: chrono::TimeDelta = chrono::TimeDelta::days(365);
/// The longest a model's CA may be valid, whatever `tls.caValidity` says:
/// 10 years. A CA is rotated a third of its validity before expiry, so this
/// still rotates it within 7 years, and a leaked CA key is not good for
/// centuries.
pub const MAX_CA_VALIDITY: chrono::TimeDelta = chrono::TimeDelta::days(3650);

/// `tls.caValidity`, capped at [`MAX_CA_VALIDITY`].
pub fn capped_ca_validity(requested: chrono::TimeDelta) -> chrono::TimeDelta {
    requested.min(MAX_CA_VALIDITY)
}

/// A serving certificate's (notAfter, renewAt) for one issued at `now`,
/// capped at [`MAX_SERVING_VALIDITY`]. When the cap applies, the renewal
/// lead (`notAfter - renewAt`) is kept if it fits in a third of the capped
/// validity, else becomes that third (the default lead): a lead computed
/// from an uncapped `2000000h` would put the renewal in the past and
/// reissue on every reconcile.
pub fn capped_serving_times(
    now: DateTime<Utc>,
    not_after: DateTime<Utc>,
    renew_at: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let validity = not_after - now;
    if validity <= MAX_SERVING_VALIDITY {
        return (not_after, renew_at);
    }
    let capped = now + MAX_SERVING_VALIDITY;
    let lead = (not_after - renew_at).min(MAX_SERVING_VALIDITY / 3);
    (capped, capped - lead)
}

fn pki_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |e| Error::Render {
        what,
        message: e.to_string(),
    }
}

/// A certificate and its key: PEM certificate and PKCS#8 PEM key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Never prints the key: these values end up in logs and test failures.
impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The CA's subject names the model and its key: during a CA rotation two
/// CAs of one model sit in the bundle, and clients pick a certificate's
/// issuer by subject, so the subjects must differ. Derived from the key, the
/// subject can be rebuilt from the key alone when signing.
fn ca_params(model: &str, key: &KeyPair) -> Result<CertificateParams> {
    use sha2::{Digest, Sha256};
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_error("CA"))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let digest = Sha256::digest(key.public_key_raw());
    let key_id = hex(&digest[..4]);
    params.distinguished_name.push(
        DnType::CommonName,
        format!("securechat CA for {model} {key_id}"),
    );
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// A new self-signed CA for one model.
pub fn new_ca(model: &str, now: DateTime<Utc>, not_after: DateTime<Utc>) -> Result<CertifiedKey> {
    let key = KeyPair::generate().map_err(pki_error("CA key"))?;
    let mut params = ca_params(model, &key)?;
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
    let issuer = Issuer::new(ca_params(model, &ca_key)?, ca_key);
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

/// A client certificate for the SPIFFE ID `spiffe_id` (its only SAN, a
/// URI), signed by the model's CA `ca`, for client authentication only,
/// valid until `not_after` (exact to the second), with serial `serial`
/// (big-endian bytes; the caller draws them).
pub fn new_client_certificate(
    model: &str,
    ca: &CertifiedKey,
    spiffe_id: &str,
    serial: &[u8],
    now: DateTime<Utc>,
    not_after: DateTime<Utc>,
) -> Result<CertifiedKey> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(pki_error("CA key"))?;
    let issuer = Issuer::new(ca_params(model, &ca_key)?, ca_key);
    let key = KeyPair::generate().map_err(pki_error("client key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(pki_error("client certificate"))?;
    let uri = rcgen::string::Ia5String::try_from(spiffe_id).map_err(pki_error("SPIFFE ID"))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    params
        .distinguished_name
        .push(DnType::CommonName, spiffe_id);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // Five minutes back, as for serving certificates: a server whose
    // clock runs a little behind still accepts a certificate just issued.
    params.not_before = to_offset(now - chrono::Duration::minutes(5));
    params.not_after = to_offset(not_after);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(pki_error("client certificate"))?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A fresh certificate serial: 16 random bytes, the top bit clear so the
/// DER integer is positive (RFC 5280 asks for a positive serial of at most
/// 20 bytes).
pub fn new_serial() -> Result<[u8; 16]> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::Render {
        what: "certificate serial",
        message: e.to_string(),
    })?;
    bytes[0] &= 0x7f;
    // A leading zero byte would be dropped from the DER integer, and the
    // serial recorded in status would not be the one in the certificate.
    bytes[0] |= 0x01;
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    fn verifier(cas: &[&CertifiedKey]) -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots
                .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("CA PEM"))
                .expect("CA accepted");
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier")
    }

    fn verify(
        verifier: &rustls::client::WebPkiServerVerifier,
        leaf: &CertifiedKey,
    ) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("leaf PEM");
        let name = ServerName::try_from("chat.team.svc").expect("name");
        verifier
            .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn serving_certificates_are_capped_at_a_year_and_keep_a_sane_renewal() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let hours = chrono::TimeDelta::hours;
        // Within the cap: untouched.
        let asked = (now + hours(2160), now + hours(1440));
        assert_eq!(capped_serving_times(now, asked.0, asked.1), asked);
        let year = (now + MAX_SERVING_VALIDITY, now + hours(100));
        assert_eq!(capped_serving_times(now, year.0, year.1), year);
        // `validity: 2000000h` with the default lead (a third): one year,
        // renewed when a third of it is left, not at once.
        let huge = now + hours(2_000_000);
        let (not_after, renew_at) = capped_serving_times(now, huge, huge - hours(2_000_000) / 3);
        assert_eq!(not_after, now + MAX_SERVING_VALIDITY);
        assert_eq!(renew_at, not_after - MAX_SERVING_VALIDITY / 3);
        assert!(renew_at > now);
        // An explicit short renewBefore is kept.
        let (not_after, renew_at) = capped_serving_times(now, huge, huge - hours(720));
        assert_eq!(not_after - renew_at, hours(720));
    }

    #[test]
    fn the_ca_is_capped_at_ten_years() {
        let hours = chrono::TimeDelta::hours;
        assert_eq!(capped_ca_validity(hours(2_000_000)), MAX_CA_VALIDITY);
        assert_eq!(capped_ca_validity(hours(87_600)), MAX_CA_VALIDITY);
        assert_eq!(capped_ca_validity(hours(26_280)), hours(26_280));
    }

    /// A client certificate from the model's CA passes a client verifier
    /// trusting that CA (chain, validity, clientAuth), carries the SPIFFE
    /// ID as a URI SAN and the serial asked for, and is no server
    /// certificate.
    #[test]
    fn client_certificates_verify_as_clients_only() {
        let now = Utc::now();
        let ca = new_ca("chat", now, now + chrono::Duration::days(30)).expect("CA");
        let id = "spiffe://cluster.local/ns/apps/sa/web";
        let serial = new_serial().expect("serial");
        assert!(serial[0] & 0x80 == 0 && serial[0] != 0);
        let leaf = new_client_certificate(
            "chat",
            &ca,
            id,
            &serial,
            now,
            now + chrono::Duration::hours(24),
        )
        .expect("client certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("client verifier");
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        verifier
            .verify_client_cert(&der, &[], UnixTime::now())
            .expect("a client certificate the model's CA signed");
        // The SAN and serial are in the DER as written.
        let bytes: &[u8] = der.as_ref();
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(
            contains(id.as_bytes()),
            "the SPIFFE ID is in the certificate"
        );
        assert!(contains(&serial), "the serial is in the certificate");
        // clientAuth only: no server verifier accepts it.
        assert!(verify(&verifier_of(&ca), &leaf).is_err());
    }

    fn verifier_of(ca: &CertifiedKey) -> Arc<rustls::client::WebPkiServerVerifier> {
        verifier(&[ca])
    }

    /// During a CA rotation the bundle holds two CAs of the same model; a
    /// client must find the right one for whichever certificate a replica
    /// serves, so their subjects differ and each leaf chains to its own.
    #[test]
    fn certificates_of_two_cas_of_one_model_verify_against_a_bundle_of_both() {
        let now = Utc::now();
        let later = now + chrono::Duration::days(1);
        let names = vec!["chat.team.svc".to_string()];
        let old_ca = new_ca("chat", now, later).expect("old CA");
        let new_ca = new_ca("chat", now, later).expect("new CA");
        let old_leaf =
            new_server_certificate("chat", &old_ca, &names, now, later).expect("old leaf");
        let new_leaf =
            new_server_certificate("chat", &new_ca, &names, now, later).expect("new leaf");

        let both = verifier(&[&old_ca, &new_ca]);
        verify(&both, &old_leaf).expect("old certificate trusted by the bundle");
        verify(&both, &new_leaf).expect("new certificate trusted by the bundle");

        let only_old = verifier(&[&old_ca]);
        assert!(verify(&only_old, &new_leaf).is_err());
    }
}
