//! The Secrets and CA bundle of a model, and the pure decisions about them:
//! whether a certificate must be (re)issued, when it renews. The random
//! material itself comes from `crate::pki`; these functions only place it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use securechat_crds::files::api_keys::ApiKeyTable;
use securechat_crds::files::keyset::SigningKeySet;
use securechat_crds::files::names;

use super::Input;
use crate::ca_rotation::{CaSet, NextCa, PreviousCa};
use crate::labels::Names;
use crate::pki::CertifiedKey;
use crate::{Error, Result};

/// Annotations the operator keeps on the certificate Secret, so deciding on
/// renewal needs no certificate parsing.
pub const NOT_AFTER_ANNOTATION: &str = "securechat.dev/not-after";
pub const RENEW_AT_ANNOTATION: &str = "securechat.dev/renew-at";
pub const DNS_NAMES_ANNOTATION: &str = "securechat.dev/dns-names";
/// Key of the CA's private key in the operator-only CA Secret.
pub const CA_KEY: &str = "ca.key";

/// The names the server certificate must cover: the Service's in-cluster
/// names plus the user's extras.
pub fn dns_names(input: &Input) -> Vec<String> {
    let svc = Names::service(&input.name);
    let ns = &input.namespace;
    let mut names = vec![
        format!("{svc}.{ns}.svc"),
        format!("{svc}.{ns}.svc.cluster.local"),
        format!("{svc}.{ns}"),
        svc,
    ];
    names.extend(input.model.spec.tls.dns_names.iter().map(|d| d.0.clone()));
    names.dedup();
    names
}

/// What an existing certificate Secret says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub not_after: DateTime<Utc>,
    pub renew_at: DateTime<Utc>,
    pub dns_names: Vec<String>,
}

/// Reads the operator's annotations; None when the Secret is incomplete or
/// not ours (then it is reissued).
pub fn issued_certificate(secret: &Secret) -> Option<IssuedCertificate> {
    let data = secret.data.as_ref()?;
    if !data.contains_key(names::TLS_CERT) || !data.contains_key(names::TLS_KEY) {
        return None;
    }
    let annotations = secret.metadata.annotations.as_ref()?;
    let time = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    Some(IssuedCertificate {
        not_after: time(NOT_AFTER_ANNOTATION)?,
        renew_at: time(RENEW_AT_ANNOTATION)?,
        dns_names: annotations
            .get(DNS_NAMES_ANNOTATION)?
            .split(',')
            .map(str::to_string)
            .collect(),
    })
}

/// Why a server certificate is (re)issued now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueReason {
    Missing,
    CaChanged,
    DnsNamesChanged,
    Renewal,
}

/// Whether the server certificate must be issued now, and why.
pub fn certificate_decision(
    existing: Option<&IssuedCertificate>,
    wanted_dns_names: &[String],
    ca_changed: bool,
    now: DateTime<Utc>,
) -> Option<IssueReason> {
    match existing {
        None => Some(IssueReason::Missing),
        Some(_) if ca_changed => Some(IssueReason::CaChanged),
        Some(cert) if cert.dns_names != wanted_dns_names => Some(IssueReason::DnsNamesChanged),
        Some(cert) if now >= cert.renew_at => Some(IssueReason::Renewal),
        Some(_) => None,
    }
}

/// When a certificate issued `now` with this validity expires and renews:
/// `renewBefore` ahead of expiry, or when a third of the validity is left.
pub fn certificate_times(input: &Input, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let tls = &input.model.spec.tls;
    let validity = tls.validity.as_chrono();
    let renew_before = tls.renew_before.map_or(validity / 3, |d| d.as_chrono());
    let not_after = now + validity;
    (not_after, not_after - renew_before)
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// Data keys and annotations of the CA Secret beyond `ca.crt` / `ca.key`
/// (the active CA): the CA rotation's state, see `crate::ca_rotation`.
pub const NEXT_CA_CERT: &str = "next-ca.crt";
pub const NEXT_CA_KEY: &str = "next-ca.key";
pub const PREVIOUS_CA_CERT: &str = "previous-ca.crt";
pub const CA_NOT_AFTER_ANNOTATION: &str = "securechat.dev/ca-not-after";
pub const NEXT_CA_PUBLISHED_AT_ANNOTATION: &str = "securechat.dev/next-ca-published-at";
pub const NEXT_CA_NOT_AFTER_ANNOTATION: &str = "securechat.dev/next-ca-not-after";
pub const PREVIOUS_CA_RETIRE_AT_ANNOTATION: &str = "securechat.dev/previous-ca-retire-at";
/// The last value of the model's rotate-CA annotation acted upon.
pub const CA_ROTATION_HANDLED_ANNOTATION: &str = "securechat.dev/ca-rotation-handled";

/// The operator-only Secret with the model's CA keys and rotation state.
pub fn ca_secret(input: &Input, set: &CaSet) -> Secret {
    let mut data = BTreeMap::from([
        (names::CA_CERT.to_string(), bytes(&set.active.cert_pem)),
        (CA_KEY.to_string(), bytes(&set.active.key_pem)),
    ]);
    let mut annotations = BTreeMap::new();
    let mut time = |key: &str, t: DateTime<Utc>| {
        annotations.insert(key.to_string(), t.to_rfc3339());
    };
    if let Some(t) = set.active_not_after {
        time(CA_NOT_AFTER_ANNOTATION, t);
    }
    if let Some(next) = &set.next {
        data.insert(NEXT_CA_CERT.into(), bytes(&next.ca.cert_pem));
        data.insert(NEXT_CA_KEY.into(), bytes(&next.ca.key_pem));
        time(NEXT_CA_PUBLISHED_AT_ANNOTATION, next.published_at);
        time(NEXT_CA_NOT_AFTER_ANNOTATION, next.not_after);
    }
    if let Some(previous) = &set.previous {
        data.insert(PREVIOUS_CA_CERT.into(), bytes(&previous.cert_pem));
        time(PREVIOUS_CA_RETIRE_AT_ANNOTATION, previous.retire_at);
    }
    if let Some(handled) = &set.rotation_handled {
        annotations.insert(CA_ROTATION_HANDLED_ANNOTATION.into(), handled.clone());
    }
    let mut metadata = input.metadata(format!("{}-ca", input.name));
    metadata.annotations = Some(annotations);
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Reads the CA set back; None when the active CA is missing (then a new
/// CA is bootstrapped). A next or previous CA missing its time annotation
/// is dropped rather than trusted forever.
pub fn ca_set_from_secret(secret: &Secret) -> Option<CaSet> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let empty = BTreeMap::new();
    let annotations = secret.metadata.annotations.as_ref().unwrap_or(&empty);
    let time = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let next = match (
        text(NEXT_CA_CERT),
        text(NEXT_CA_KEY),
        time(NEXT_CA_PUBLISHED_AT_ANNOTATION),
        time(NEXT_CA_NOT_AFTER_ANNOTATION),
    ) {
        (Some(cert_pem), Some(key_pem), Some(published_at), Some(not_after)) => Some(NextCa {
            ca: CertifiedKey { cert_pem, key_pem },
            published_at,
            not_after,
        }),
        _ => None,
    };
    let previous = match (
        text(PREVIOUS_CA_CERT),
        time(PREVIOUS_CA_RETIRE_AT_ANNOTATION),
    ) {
        (Some(cert_pem), Some(retire_at)) => Some(PreviousCa {
            cert_pem,
            retire_at,
        }),
        _ => None,
    };
    Some(CaSet {
        active: CertifiedKey {
            cert_pem: text(names::CA_CERT)?,
            key_pem: text(CA_KEY)?,
        },
        active_not_after: time(CA_NOT_AFTER_ANNOTATION),
        next,
        previous,
        rotation_handled: annotations.get(CA_ROTATION_HANDLED_ANNOTATION).cloned(),
    })
}

/// The CA that signed the certificate in a server-certificate Secret (its
/// `ca.crt`), to tell whether the active CA has changed since.
pub fn issuer_of(secret: &Secret) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(names::CA_CERT)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// `<name>-tls`: the server certificate, its key and the CA, as a
/// kubernetes.io/tls Secret the pods mount.
pub fn tls_secret(
    input: &Input,
    ca_cert_pem: &str,
    leaf: &CertifiedKey,
    issued: &IssuedCertificate,
) -> Secret {
    let mut metadata = input.metadata(Names::tls_secret(&input.name));
    metadata.annotations = Some(BTreeMap::from([
        (
            NOT_AFTER_ANNOTATION.to_string(),
            issued.not_after.to_rfc3339(),
        ),
        (
            RENEW_AT_ANNOTATION.to_string(),
            issued.renew_at.to_rfc3339(),
        ),
        (DNS_NAMES_ANNOTATION.to_string(), issued.dns_names.join(",")),
    ]));
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (names::TLS_CERT.to_string(), bytes(&leaf.cert_pem)),
            (names::TLS_KEY.to_string(), bytes(&leaf.key_pem)),
            (names::CA_CERT.to_string(), bytes(ca_cert_pem)),
        ])),
        ..Default::default()
    }
}

/// `<name>-ca-bundle`: what in-cluster clients trust to call the model.
/// Label on CA bundle ConfigMaps: the ChatApiKey controller watches these
/// only, not every ConfigMap the operator made.
pub const CA_BUNDLE_LABEL: &str = "securechat.dev/ca-bundle";

pub fn ca_bundle(input: &Input, ca_cert_pem: &str) -> ConfigMap {
    let mut metadata = input.metadata(Names::ca_bundle(&input.name));
    metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(CA_BUNDLE_LABEL.into(), "true".into());
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(
            names::CA_CERT.to_string(),
            ca_cert_pem.to_string(),
        )])),
        ..Default::default()
    }
}

/// `<name>-signing-keys`: the keyset file, validated before it is written.
pub fn signing_keys_secret(input: &Input, keyset: &SigningKeySet) -> Result<Secret> {
    keyset.validate().map_err(|e| Error::Render {
        what: "signing keyset",
        message: e.to_string(),
    })?;
    let json = serde_json::to_string_pretty(keyset).map_err(|e| Error::Render {
        what: "signing keyset",
        message: e.to_string(),
    })?;
    Ok(Secret {
        metadata: input.metadata(Names::signing_keys(&input.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(names::KEYSET.to_string(), bytes(&json))])),
        ..Default::default()
    })
}

/// Reads the keyset back; None when missing or unreadable (then a new one
/// is made).
pub fn keyset_from_secret(secret: &Secret) -> Option<SigningKeySet> {
    let raw = secret.data.as_ref()?.get(names::KEYSET)?;
    let keyset: SigningKeySet = serde_json::from_slice(&raw.0).ok()?;
    keyset.validate().ok().map(|()| keyset)
}

/// `<name>-api-keys`: created empty; ChatApiKeys add hashes to it.
pub fn empty_api_keys_secret(input: &Input) -> Result<Secret> {
    let json =
        serde_json::to_string_pretty(&ApiKeyTable::default()).map_err(|e| Error::Render {
            what: "API-key table",
            message: e.to_string(),
        })?;
    Ok(Secret {
        metadata: input.metadata(Names::api_keys(&input.name)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            names::API_KEYS.to_string(),
            bytes(&json),
        )])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn certificate_covers_the_service_names_and_extras() {
        let m = model("chat", json!({"tls": {"dnsNames": ["chat.example.com"]}}));
        let names = dns_names(&Input::new(&m, "img").expect("input"));
        assert_eq!(
            names,
            [
                "chat.team.svc",
                "chat.team.svc.cluster.local",
                "chat.team",
                "chat",
                "chat.example.com"
            ]
        );
    }

    #[test]
    fn default_renewal_is_a_third_of_validity_before_expiry() {
        let m = model("chat", json!({"tls": {"validity": "90h"}}));
        let (not_after, renew_at) = certificate_times(
            &Input::new(&m, "img").expect("input"),
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(not_after, at("2026-01-04T18:00:00Z"));
        assert_eq!(renew_at, at("2026-01-03T12:00:00Z"));
        let m = model(
            "chat",
            json!({"tls": {"validity": "90h", "renewBefore": "10h"}}),
        );
        let (_, renew_at) = certificate_times(
            &Input::new(&m, "img").expect("input"),
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(renew_at, at("2026-01-04T08:00:00Z"));
    }

    #[test]
    fn decides_when_to_issue() {
        let names = vec!["a".to_string()];
        let cert = IssuedCertificate {
            not_after: at("2026-03-01T00:00:00Z"),
            renew_at: at("2026-02-01T00:00:00Z"),
            dns_names: names.clone(),
        };
        let now = at("2026-01-15T00:00:00Z");
        assert_eq!(
            certificate_decision(None, &names, false, now),
            Some(IssueReason::Missing)
        );
        assert_eq!(certificate_decision(Some(&cert), &names, false, now), None);
        assert_eq!(
            certificate_decision(Some(&cert), &names, true, now),
            Some(IssueReason::CaChanged)
        );
        assert_eq!(
            certificate_decision(Some(&cert), &["b".to_string()], false, now),
            Some(IssueReason::DnsNamesChanged)
        );
        assert_eq!(
            certificate_decision(Some(&cert), &names, false, at("2026-02-01T00:00:00Z")),
            Some(IssueReason::Renewal)
        );
    }

    #[test]
    fn tls_secret_round_trips_its_annotations() {
        let m = model("chat", json!({}));
        let input = Input::new(&m, "img").expect("input");
        let leaf = CertifiedKey {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        let issued = IssuedCertificate {
            not_after: at("2026-03-01T00:00:00Z"),
            renew_at: at("2026-02-01T00:00:00Z"),
            dns_names: dns_names(&input),
        };
        let secret = tls_secret(&input, "CA", &leaf, &issued);
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(issued_certificate(&secret), Some(issued));
    }

    #[test]
    fn ca_secret_round_trips_a_rotation_in_progress() {
        let m = model("chat", json!({}));
        let input = Input::new(&m, "img").expect("input");
        let ca = |n: &str| CertifiedKey {
            cert_pem: format!("CERT {n}"),
            key_pem: format!("KEY {n}"),
        };
        let mut set = CaSet::bootstrap(ca("a"), at("2036-01-01T00:00:00Z"));
        assert_eq!(
            ca_set_from_secret(&ca_secret(&input, &set)),
            Some(set.clone())
        );
        set.next = Some(NextCa {
            ca: ca("b"),
            published_at: at("2026-01-01T00:00:00Z"),
            not_after: at("2036-01-01T00:00:00Z"),
        });
        set.previous = Some(PreviousCa {
            cert_pem: "CERT z".into(),
            retire_at: at("2026-01-02T00:00:00Z"),
        });
        set.rotation_handled = Some("incident-42".into());
        let secret = ca_secret(&input, &set);
        assert_eq!(secret.metadata.name.as_deref(), Some("chat-ca"));
        assert_eq!(ca_set_from_secret(&secret), Some(set));
    }

    #[test]
    fn a_next_ca_without_its_times_is_dropped() {
        let m = model("chat", json!({}));
        let input = Input::new(&m, "img").expect("input");
        let mut set = CaSet::bootstrap(
            CertifiedKey {
                cert_pem: "A".into(),
                key_pem: "KA".into(),
            },
            at("2036-01-01T00:00:00Z"),
        );
        set.next = Some(NextCa {
            ca: set.active.clone(),
            published_at: at("2026-01-01T00:00:00Z"),
            not_after: at("2036-01-01T00:00:00Z"),
        });
        let mut secret = ca_secret(&input, &set);
        secret
            .metadata
            .annotations
            .as_mut()
            .expect("annotations")
            .remove(NEXT_CA_PUBLISHED_AT_ANNOTATION);
        assert_eq!(ca_set_from_secret(&secret).expect("set").next, None);
    }

    #[test]
    fn an_incomplete_secret_is_not_trusted() {
        let secret = Secret::default();
        assert_eq!(issued_certificate(&secret), None);
        assert!(keyset_from_secret(&secret).is_none());
    }
}
