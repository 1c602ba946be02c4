//! Client certificates as credentials (`auth.mtls`): who a verified
//! certificate is, and whether it agrees with a bearer credential sent
//! beside it. Pure: the handshake (`tls::client_verifier`) has already
//! checked the chain, the validity and the purpose; this decides on the
//! identity alone.
//!
//! The rules, for a request on the API port with mTLS Optional or
//! Required:
//! - certificate, no bearer: the certificate's SPIFFE ID is the principal.
//!   A key-table record bound to that ID (`spiffeID`) speaks for it: its
//!   tier, its usage, its lifecycle (a suspended, expired or revoked one is
//!   401 with the key's code; removing it revokes the identity at once).
//!   Else the most specific `auth.mtls.allow` entry gives the tier; no
//!   entry (or no SPIFFE ID) is 403 `identity_not_allowed`.
//! - certificate and bearer: the bearer must be an API key, or a token
//!   minted from one, bound to exactly that SPIFFE ID (`spiffeID` in the
//!   key table); then the key's tier applies, with the SPIFFE ID as the
//!   principal. Anything else (an unbound key, another key's binding, an
//!   OIDC token) is 401 `identity_mismatch`.
//! - no certificate: bearer credentials as without mTLS, except that a key
//!   bound to a SPIFFE ID is 401 `certificate_required` (a key copied off
//!   its workload is useless without the certificate's private key).

use chrono::{DateTime, Utc};
use securechat_crds::files::api_keys::ApiKeyTable;
use securechat_crds::v1alpha1::{SpiffeAllow, allowed_tier};

use crate::credentials::api_key;
use crate::error::{ApiError, AuthFailure};
use crate::listener::ClientCertificate;
use crate::principal::{Method, Principal};

/// The caller behind a certificate sent without a bearer credential.
pub fn certificate_principal(
    cert: &ClientCertificate,
    allow: &[SpiffeAllow],
    table: &ApiKeyTable,
    now: DateTime<Utc>,
) -> Result<Principal, ApiError> {
    let Some(id) = &cert.spiffe_id else {
        return Err(ApiError::IdentityNotAllowed(
            "the certificate carries no SPIFFE ID (one spiffe:// URI SAN)".into(),
        ));
    };
    let bound: Vec<_> = table
        .keys
        .iter()
        .filter(|k| k.spiffe_id.as_deref() == Some(id.as_str()))
        .collect();
    if !bound.is_empty() {
        // A usable record if there is one, else the first one's refusal.
        let record = bound
            .iter()
            .find(|k| api_key::ensure_usable(k, now).is_ok())
            .unwrap_or(&bound[0]);
        api_key::ensure_usable(record, now).map_err(ApiError::Unauthorized)?;
        return Ok(Principal {
            subject: id.clone(),
            key_id: Some(record.id.clone()),
            tier: record.tier,
            method: Method::ClientCertificate,
        });
    }
    let tier = allowed_tier(allow, id).ok_or_else(|| {
        ApiError::IdentityNotAllowed(format!("{id} matches no auth.mtls.allow entry"))
    })?;
    Ok(Principal {
        subject: id.clone(),
        key_id: None,
        tier,
        method: Method::ClientCertificate,
    })
}

/// Whether a bearer's principal and the connection's certificate agree.
/// `binding` is the SPIFFE ID the principal's key is bound to (none for
/// unbound keys and for tokens not minted from a key).
pub fn agree(
    principal: Principal,
    binding: Option<&str>,
    cert: Option<&ClientCertificate>,
) -> Result<Principal, AuthFailure> {
    match (binding, cert) {
        (None, None) => Ok(principal),
        (Some(_), None) => Err(AuthFailure::CertificateRequired),
        (binding, Some(cert)) => match cert.spiffe_id.as_deref() {
            Some(id) if binding == Some(id) => Ok(Principal {
                subject: id.to_string(),
                ..principal
            }),
            _ => Err(AuthFailure::IdentityMismatch),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use securechat_crds::v1alpha1::Tier;

    const WEB: &str = "spiffe://cluster.local/ns/apps/sa/web";

    fn cert(id: Option<&str>) -> ClientCertificate {
        ClientCertificate {
            spiffe_id: id.map(str::to_string),
            not_after: None,
        }
    }

    fn key_principal() -> Principal {
        Principal {
            subject: "key:abc".into(),
            key_id: Some("abc".into()),
            tier: Tier::Developer,
            method: Method::ApiKey,
        }
    }

    #[test]
    fn a_certificate_alone_gets_its_allow_entry_tier_or_403() {
        let allow = [SpiffeAllow {
            spiffe_id: "spiffe://cluster.local/ns/apps/*".into(),
            tier: Tier::Developer,
        }];
        let table = ApiKeyTable::default();
        let now = Utc::now();
        let p = certificate_principal(&cert(Some(WEB)), &allow, &table, now).unwrap();
        assert_eq!(
            (p.subject.as_str(), p.tier, p.method),
            (WEB, Tier::Developer, Method::ClientCertificate)
        );
        let other = certificate_principal(
            &cert(Some("spiffe://cluster.local/ns/x/sa/y")),
            &allow,
            &table,
            now,
        );
        assert!(matches!(other, Err(ApiError::IdentityNotAllowed(m)) if m.contains("ns/x/sa/y")));
        let none = certificate_principal(&cert(None), &allow, &table, now);
        assert!(matches!(none, Err(ApiError::IdentityNotAllowed(m)) if m.contains("no SPIFFE ID")));
    }

    #[test]
    fn a_key_bound_to_the_id_speaks_for_a_certificate_alone() {
        use securechat_crds::files::api_keys::{ApiKeyRecord, ApiKeyState, SecretHash};
        let now = Utc::now();
        let record = |id: &str, state| ApiKeyRecord {
            id: id.into(),
            name: "apps/web".into(),
            tier: Tier::ReadOnly,
            state,
            secret_hash: SecretHash::of_key("sk-sc-x-y"),
            previous_secret_hash: None,
            previous_secret_valid_until: None,
            created_at: now,
            expires_at: None,
            rotated_at: None,
            last_used_at: None,
            spiffe_id: Some(WEB.into()),
        };
        let allow = [SpiffeAllow {
            spiffe_id: "spiffe://cluster.local/ns/apps/*".into(),
            tier: Tier::Developer,
        }];
        let table = ApiKeyTable {
            keys: vec![
                record("old", ApiKeyState::Revoked),
                record("web", ApiKeyState::Active),
            ],
            history: Vec::new(),
        };
        let p = certificate_principal(&cert(Some(WEB)), &allow, &table, now).unwrap();
        assert_eq!((p.tier, p.key_id.as_deref()), (Tier::ReadOnly, Some("web")));
        let suspended = ApiKeyTable {
            keys: vec![record("web", ApiKeyState::Suspended)],
            history: Vec::new(),
        };
        assert!(matches!(
            certificate_principal(&cert(Some(WEB)), &allow, &suspended, now),
            Err(ApiError::Unauthorized(AuthFailure::Suspended))
        ));
    }

    #[test]
    fn a_bearer_beside_a_certificate_must_be_bound_to_it() {
        let bound = agree(key_principal(), Some(WEB), Some(&cert(Some(WEB)))).unwrap();
        assert_eq!((bound.subject.as_str(), bound.tier), (WEB, Tier::Developer));
        assert_eq!(bound.key_id.as_deref(), Some("abc"));
        for (binding, presented) in [
            (None, Some(WEB)),
            (Some("spiffe://cluster.local/ns/apps/sa/other"), Some(WEB)),
            (Some(WEB), None),
        ] {
            assert_eq!(
                agree(key_principal(), binding, Some(&cert(presented))).unwrap_err(),
                AuthFailure::IdentityMismatch,
                "{binding:?} vs {presented:?}"
            );
        }
    }

    #[test]
    fn without_a_certificate_only_unbound_bearers_pass() {
        assert_eq!(
            agree(key_principal(), None, None).unwrap().subject,
            "key:abc"
        );
        assert_eq!(
            agree(key_principal(), Some(WEB), None).unwrap_err(),
            AuthFailure::CertificateRequired
        );
    }
}
