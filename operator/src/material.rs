//! Observe-then-issue for the model's certificate and keys. Unlike the other
//! objects these hold random material, so they are read first and only
//! written when missing, invalid or due; re-applying them blindly would
//! rotate every key on every reconcile.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use securechat_crds::files::keyset::{KeyState, SigningKeySet};
use securechat_crds::files::names;
use securechat_crds::v1alpha1::{SigningKeysStatus, TlsMode, TlsStatus};
use tracing::info;

use crate::apply::Writer;
use crate::desired::Context;
use crate::desired::secrets::{self, IssuedCertificate};
use crate::labels::Names;
use crate::{Result, pki};

/// The outcome for one kind of material: whether it is usable, why, what
/// the status shows, and when it next needs attention.
#[derive(Debug, Clone)]
pub struct Outcome<S> {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub status: S,
    pub next_action_at: Option<DateTime<Utc>>,
}

fn to_time(t: DateTime<Utc>) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
        .ok()
        .map(Time)
}

/// Ensures the CA, the server certificate and the CA bundle.
pub async fn tls(
    writer: &mut Writer,
    ctx: &Context<'_>,
    now: DateTime<Utc>,
) -> Result<Outcome<TlsStatus>> {
    let secrets: Api<Secret> = Api::namespaced(writer.client().clone(), &ctx.namespace);
    let spec = &ctx.model.spec.tls;
    if spec.mode == TlsMode::ExistingSecret {
        let name = spec.secret_name.clone().unwrap_or_default();
        let found = secrets.get_opt(&name).await?;
        let usable = found
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .is_some_and(|d| d.contains_key(names::TLS_CERT) && d.contains_key(names::TLS_KEY));
        return Ok(Outcome {
            ready: usable,
            reason: if usable {
                "ExistingSecret"
            } else {
                "SecretNotFound"
            },
            message: if usable {
                format!("serving the certificate in Secret {name}")
            } else {
                format!("Secret {name} does not exist or lacks tls.crt / tls.key")
            },
            status: TlsStatus {
                secret_name: Some(name),
                ..Default::default()
            },
            next_action_at: None,
        });
    }

    let ca_name = format!("{}-ca", ctx.name);
    let existing_ca = secrets
        .get_opt(&ca_name)
        .await?
        .as_ref()
        .and_then(secrets::ca_from_secret);
    let (ca, ca_changed) = match existing_ca {
        Some(ca) => (ca, false),
        None => {
            let ca = pki::new_ca(
                &ctx.name,
                now,
                now + TimeDelta::days(secrets::CA_VALIDITY_DAYS),
            )?;
            writer.apply(&secrets::ca_secret(ctx, &ca)).await?;
            info!(model = %ctx.name, "issued a new CA");
            (ca, true)
        }
    };

    let wanted = secrets::dns_names(ctx);
    let tls_name = Names::tls_secret(&ctx.name);
    let existing = secrets
        .get_opt(&tls_name)
        .await?
        .as_ref()
        .and_then(secrets::issued_certificate);
    let issued = match secrets::certificate_decision(existing.as_ref(), &wanted, ca_changed, now) {
        None => existing.expect("no decision means a certificate exists"),
        Some(reason) => {
            let (not_after, renew_at) = secrets::certificate_times(ctx, now);
            let leaf = pki::new_server_certificate(&ctx.name, &ca, &wanted, now, not_after)?;
            let issued = IssuedCertificate {
                not_after,
                renew_at,
                dns_names: wanted,
            };
            writer
                .apply(&secrets::tls_secret(ctx, &ca.cert_pem, &leaf, &issued))
                .await?;
            info!(model = %ctx.name, ?reason, %not_after, "issued a server certificate");
            issued
        }
    };
    writer.apply(&secrets::ca_bundle(ctx, &ca.cert_pem)).await?;
    Ok(Outcome {
        ready: true,
        reason: "CertificateIssued",
        message: format!(
            "valid until {}, renews at {}",
            issued.not_after.to_rfc3339(),
            issued.renew_at.to_rfc3339()
        ),
        status: TlsStatus {
            secret_name: Some(tls_name),
            not_after: to_time(issued.not_after),
            renew_at: to_time(issued.renew_at),
            ca_bundle_config_map: Some(Names::ca_bundle(&ctx.name)),
        },
        next_action_at: Some(issued.renew_at),
    })
}

/// Ensures a signing keyset exists with one active key of the spec's
/// algorithm. (Timed rotation through next/active/previous is driven from
/// here as well once it lands; today a new keyset is made only when none
/// is usable.)
pub async fn signing_keys(
    writer: &mut Writer,
    ctx: &Context<'_>,
    now: DateTime<Utc>,
) -> Result<Outcome<SigningKeysStatus>> {
    let secrets: Api<Secret> = Api::namespaced(writer.client().clone(), &ctx.namespace);
    let spec = &ctx.model.spec.signing_keys;
    let name = Names::signing_keys(&ctx.name);
    let existing = secrets
        .get_opt(&name)
        .await?
        .as_ref()
        .and_then(secrets::keyset_from_secret);
    let keyset = match existing {
        Some(keyset)
            if keyset
                .active()
                .is_some_and(|k| k.alg == spec.algorithm && k.is_within_validity(now)) =>
        {
            keyset
        }
        _ => {
            let lifetime = spec.rotation_period.as_chrono() + spec.grace_period.as_chrono();
            let key = pki::new_signing_key(
                spec.algorithm,
                KeyState::Active,
                now - TimeDelta::minutes(1),
                now + lifetime,
            )?;
            let keyset = SigningKeySet { keys: vec![key] };
            writer
                .apply(&secrets::signing_keys_secret(ctx, &keyset)?)
                .await?;
            info!(model = %ctx.name, alg = ?spec.algorithm, "created a signing keyset");
            keyset
        }
    };
    let active = keyset.active();
    let previous = keyset.keys.iter().find(|k| k.state == KeyState::Previous);
    let next = keyset.keys.iter().find(|k| k.state == KeyState::Next);
    let next_rotation = active.map(|k| k.not_before + spec.rotation_period.as_chrono());
    Ok(Outcome {
        ready: active.is_some(),
        reason: "KeysetReady",
        message: format!(
            "{} key(s), active {}",
            keyset.keys.len(),
            active.map_or("none", |k| k.kid.as_str())
        ),
        status: SigningKeysStatus {
            secret_name: Some(name),
            active_kid: active.map(|k| k.kid.clone()),
            previous_kid: previous.map(|k| k.kid.clone()),
            next_kid: next.map(|k| k.kid.clone()),
            next_rotation_at: next_rotation.and_then(to_time),
        },
        next_action_at: next_rotation,
    })
}

/// Creates the empty API-key table once; ChatApiKeys fill it, so it is
/// never overwritten here.
pub async fn api_keys(writer: &mut Writer, ctx: &Context<'_>) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(writer.client().clone(), &ctx.namespace);
    if secrets
        .get_opt(&Names::api_keys(&ctx.name))
        .await?
        .is_none()
    {
        writer.apply(&secrets::empty_api_keys_secret(ctx)?).await?;
    }
    Ok(())
}
