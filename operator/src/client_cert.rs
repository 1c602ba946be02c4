//! Client certificates for ChatApiKeys (`spec.credential:
//! ClientCertificate | Both`), decided: which SPIFFE ID, when to renew,
//! what the consumer Secret holds. Pure; `key_plan` calls these and
//! `pki::new_client_certificate` signs.
//!
//! Renewal overlaps by construction: a certificate is checked by the
//! server against the model's CA, not against a list of serials, so the
//! previous certificate keeps working until its own `notAfter` while its
//! successor is already in the Secret. The successor is written at two
//! thirds of the lifetime (8h before the end of the default 24h), leaving a
//! consumer a third of the lifetime to reload the Secret.
//!
//! Revocation does not wait for expiry: the key-table record bound to the
//! SPIFFE ID is what makes the server accept the identity (see
//! `server/src/auth/mtls.rs`), and it leaves the table when the ChatApiKey
//! is deleted.
//!
//! What the Secret holds besides `tls.crt`/`tls.key`/`ca.crt` lives in
//! annotations, as for the serving certificate: its SPIFFE ID, serial,
//! `notAfter`, renewal time, the CA that signed it and the rotate request
//! it answered. Nothing is parsed back out of the certificate itself.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use securechat_crds::files::names;
use securechat_crds::hex::hex;
use securechat_crds::v1alpha1::{ChatApiKey, ClientCertificateStatus, SecureChatModel, spiffe_id};
use sha2::{Digest, Sha256};

use crate::pki::CertifiedKey;

/// Annotations on the consumer Secret describing its certificate.
pub const SPIFFE_ID_ANNOTATION: &str = "securechat.dev/client-certificate-spiffe-id";
pub const SERIAL_ANNOTATION: &str = "securechat.dev/client-certificate-serial";
pub const NOT_AFTER_ANNOTATION: &str = "securechat.dev/client-certificate-not-after";
pub const RENEW_AT_ANNOTATION: &str = "securechat.dev/client-certificate-renew-at";
/// A digest of the CA certificate that signed it: a CA rotation re-issues.
pub const ISSUER_ANNOTATION: &str = "securechat.dev/client-certificate-issuer";
/// The `securechat.dev/rotate` value it was issued under: a new value
/// renews it at once.
pub const REQUEST_ANNOTATION: &str = "securechat.dev/client-certificate-rotate-request";

/// The record of a certificate-only key must carry a secret hash (the
/// table's format); it is the hash of this, which is not an API key
/// (`sk-sc-` prefix), so no bearer credential can ever match it.
pub fn certificate_only_secret(id: &str) -> String {
    format!("certificate-only:{id}")
}

/// The SPIFFE ID a ChatApiKey's certificate carries:
/// `spiffe://<model's trust domain>/ns/<key's namespace>/sa/<sa>`, the
/// service account being `clientCertificate.serviceAccountName`, else the
/// key's name.
pub fn identity(key: &ChatApiKey, model: &SecureChatModel) -> String {
    let sa = key
        .spec
        .client_certificate
        .as_ref()
        .and_then(|c| c.service_account_name.clone())
        .or_else(|| key.metadata.name.clone())
        .unwrap_or_default();
    spiffe_id(
        model.spec.auth.mtls.trust_domain(),
        key.metadata.namespace.as_deref().unwrap_or_default(),
        &sa,
    )
}

/// The lifetime asked for (`clientCertificate.lifetime` or the default).
pub fn lifetime(key: &ChatApiKey) -> TimeDelta {
    key.spec
        .client_certificate
        .clone()
        .unwrap_or_default()
        .lifetime()
        .as_chrono()
}

/// A short digest of a CA certificate's PEM.
pub fn issuer_digest(ca_cert_pem: &str) -> String {
    hex(&Sha256::digest(ca_cert_pem.trim().as_bytes())[..8])
}

/// A certificate in the consumer Secret, with what the operator recorded.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedClientCertificate {
    pub pair: CertifiedKey,
    pub spiffe_id: String,
    /// Hex.
    pub serial: String,
    pub not_after: DateTime<Utc>,
    pub renew_at: DateTime<Utc>,
    /// [`issuer_digest`] of the signing CA.
    pub issuer: String,
    /// The `securechat.dev/rotate` value it was issued under.
    pub request: Option<String>,
}

/// Never prints the key (through [`CertifiedKey`]'s own Debug).
impl std::fmt::Debug for IssuedClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedClientCertificate")
            .field("pair", &self.pair)
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("renew_at", &self.renew_at)
            .field("issuer", &self.issuer)
            .field("request", &self.request)
            .finish()
    }
}

impl IssuedClientCertificate {
    /// The certificate in a consumer Secret; None when any part is missing
    /// (then a new one is issued).
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .filter(|s| !s.is_empty())
        };
        let annotations = secret.metadata.annotations.as_ref()?;
        let time = |k: &str| {
            annotations
                .get(k)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Some(Self {
            pair: CertifiedKey {
                cert_pem: text(names::TLS_CERT)?,
                key_pem: text(names::TLS_KEY)?,
            },
            spiffe_id: annotations.get(SPIFFE_ID_ANNOTATION)?.clone(),
            serial: annotations.get(SERIAL_ANNOTATION)?.clone(),
            not_after: time(NOT_AFTER_ANNOTATION)?,
            renew_at: time(RENEW_AT_ANNOTATION)?,
            issuer: annotations.get(ISSUER_ANNOTATION)?.clone(),
            request: annotations.get(REQUEST_ANNOTATION).cloned(),
        })
    }

    /// Adds it to a consumer Secret's data and annotations.
    pub fn write_into(
        &self,
        data: &mut BTreeMap<String, ByteString>,
        annotations: &mut BTreeMap<String, String>,
    ) {
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        data.insert(names::TLS_CERT.into(), bytes(&self.pair.cert_pem));
        data.insert(names::TLS_KEY.into(), bytes(&self.pair.key_pem));
        for (k, v) in [
            (SPIFFE_ID_ANNOTATION, self.spiffe_id.clone()),
            (SERIAL_ANNOTATION, self.serial.clone()),
            (NOT_AFTER_ANNOTATION, self.not_after.to_rfc3339()),
            (RENEW_AT_ANNOTATION, self.renew_at.to_rfc3339()),
            (ISSUER_ANNOTATION, self.issuer.clone()),
        ] {
            annotations.insert(k.into(), v);
        }
        if let Some(request) = &self.request {
            annotations.insert(REQUEST_ANNOTATION.into(), request.clone());
        }
    }

    /// What `status.clientCertificate` shows.
    pub fn status(&self) -> ClientCertificateStatus {
        let time = |t: DateTime<Utc>| {
            k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
                .ok()
                .map(Time)
        };
        ClientCertificateStatus {
            spiffe_id: self.spiffe_id.clone(),
            serial: self.serial.clone(),
            not_after: time(self.not_after),
            renew_at: time(self.renew_at),
        }
    }
}

/// Why a client certificate is issued now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewReason {
    /// None in the Secret yet (or an incomplete one).
    Missing,
    /// The SPIFFE ID it should carry changed (service account, trust
    /// domain).
    IdentityChanged,
    /// The model's signing CA changed (a CA rotation).
    IssuerChanged,
    /// Two thirds of its life are over.
    Due,
    /// It outlives a lifetime shortened since.
    LifetimeShortened,
    /// A new `securechat.dev/rotate` value.
    Requested,
}

/// What the certificate decision looks at.
pub struct Wanted<'a> {
    pub spiffe_id: &'a str,
    /// [`issuer_digest`] of the CA that signs now.
    pub issuer: &'a str,
    pub lifetime: TimeDelta,
    /// The `securechat.dev/rotate` annotation's value, if any.
    pub request: Option<&'a str>,
}

/// Whether (and why) to issue a new certificate at `now`.
pub fn renewal(
    existing: Option<&IssuedClientCertificate>,
    wanted: &Wanted<'_>,
    now: DateTime<Utc>,
) -> Option<RenewReason> {
    let Some(existing) = existing else {
        return Some(RenewReason::Missing);
    };
    if existing.spiffe_id != wanted.spiffe_id {
        Some(RenewReason::IdentityChanged)
    } else if existing.issuer != wanted.issuer {
        Some(RenewReason::IssuerChanged)
    } else if now >= existing.renew_at {
        Some(RenewReason::Due)
    } else if existing.not_after - now > wanted.lifetime {
        Some(RenewReason::LifetimeShortened)
    } else if wanted.request.is_some() && wanted.request != existing.request.as_deref() {
        Some(RenewReason::Requested)
    } else {
        None
    }
}

/// (notAfter, renewAt) of a certificate issued at `now`: `lifetime` on,
/// never past the signing CA's own expiry, renewed at two thirds of that.
pub fn times(
    now: DateTime<Utc>,
    lifetime: TimeDelta,
    ca_not_after: Option<DateTime<Utc>>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let not_after = ca_not_after.map_or(now + lifetime, |ca| ca.min(now + lifetime));
    let renew_at = now + (not_after - now) * 2 / 3;
    (not_after, renew_at)
}

/// What signing needs, decided by the plan.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub model: &'a str,
    pub ca: &'a CertifiedKey,
    pub spiffe_id: &'a str,
    pub now: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// A signed certificate and its serial (hex).
#[derive(Debug, Clone)]
pub struct Signed {
    pub pair: CertifiedKey,
    pub serial: String,
}

/// The operator's signer: a random serial, `pki` signs.
pub fn sign(request: &Request<'_>) -> crate::Result<Signed> {
    let serial = crate::pki::new_serial()?;
    let pair = crate::pki::new_client_certificate(
        request.model,
        request.ca,
        request.spiffe_id,
        &serial,
        request.now,
        request.not_after,
    )?;
    Ok(Signed {
        pair,
        serial: hex(&serial),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    const ID: &str = "spiffe://cluster.local/ns/apps/sa/web";

    fn issued(at: DateTime<Utc>, lifetime: TimeDelta, n: usize) -> IssuedClientCertificate {
        let (not_after, renew_at) = times(at, lifetime, None);
        IssuedClientCertificate {
            pair: CertifiedKey {
                cert_pem: format!("cert {n}"),
                key_pem: format!("key {n}"),
            },
            spiffe_id: ID.into(),
            serial: format!("{n:02x}"),
            not_after,
            renew_at,
            issuer: "ca1".into(),
            request: None,
        }
    }

    fn wanted(lifetime: TimeDelta) -> Wanted<'static> {
        Wanted {
            spiffe_id: ID,
            issuer: "ca1",
            lifetime,
            request: None,
        }
    }

    /// A week of reconciles every minute: the Secret always holds a valid
    /// certificate, the one it held before stays valid until its own end
    /// (the overlap a consumer has to reload), and renewals happen at two
    /// thirds of the life, not more often.
    #[test]
    fn renewal_at_two_thirds_keeps_a_valid_certificate_with_overlap() {
        let day = TimeDelta::hours(24);
        let mut held = issued(t(0), day, 0);
        let mut renewals = 0;
        let mut now = t(0);
        while now < t(7 * 86_400) {
            match renewal(Some(&held), &wanted(day), now) {
                Some(RenewReason::Due) => {
                    let next = issued(now, day, renewals + 1);
                    // The previous one still has a third of its life.
                    assert!(held.not_after - now >= day / 3 - TimeDelta::minutes(1));
                    held = next;
                    renewals += 1;
                }
                None => {}
                other => panic!("unexpected {other:?} at {now}"),
            }
            assert!(held.not_after > now, "an expired certificate at {now}");
            now += TimeDelta::minutes(1);
        }
        // 7 days / 16 h.
        assert_eq!(renewals, 10);
    }

    #[test]
    fn identity_issuer_lifetime_and_requests_renew_at_once() {
        let day = TimeDelta::hours(24);
        let held = issued(t(0), day, 0);
        assert_eq!(
            renewal(None, &wanted(day), t(0)),
            Some(RenewReason::Missing)
        );
        assert_eq!(renewal(Some(&held), &wanted(day), t(60)), None);
        let other = Wanted {
            spiffe_id: "spiffe://cluster.local/ns/apps/sa/api",
            ..wanted(day)
        };
        assert_eq!(
            renewal(Some(&held), &other, t(60)),
            Some(RenewReason::IdentityChanged)
        );
        let rotated_ca = Wanted {
            issuer: "ca2",
            ..wanted(day)
        };
        assert_eq!(
            renewal(Some(&held), &rotated_ca, t(60)),
            Some(RenewReason::IssuerChanged)
        );
        assert_eq!(
            renewal(Some(&held), &wanted(TimeDelta::hours(1)), t(60)),
            Some(RenewReason::LifetimeShortened)
        );
        let asked = Wanted {
            request: Some("leak-1"),
            ..wanted(day)
        };
        assert_eq!(
            renewal(Some(&held), &asked, t(60)),
            Some(RenewReason::Requested)
        );
        let answered = IssuedClientCertificate {
            request: Some("leak-1".into()),
            ..held
        };
        assert_eq!(renewal(Some(&answered), &asked, t(60)), None);
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let (not_after, renew_at) = times(t(0), TimeDelta::hours(24), Some(t(3000)));
        assert_eq!(not_after, t(3000));
        assert_eq!(renew_at, t(2000));
        let (not_after, renew_at) = times(t(0), TimeDelta::minutes(3), None);
        assert_eq!((not_after, renew_at), (t(180), t(120)));
    }

    #[test]
    fn the_secret_round_trips_what_was_issued() {
        let held = IssuedClientCertificate {
            request: Some("r".into()),
            ..issued(t(0), TimeDelta::hours(24), 3)
        };
        let (mut data, mut annotations) = (BTreeMap::new(), BTreeMap::new());
        held.write_into(&mut data, &mut annotations);
        let secret = Secret {
            data: Some(data),
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                annotations: Some(annotations),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(IssuedClientCertificate::from_secret(&secret), Some(held));
        assert!(!certificate_only_secret("abc").starts_with("sk-sc-"));
    }
}
