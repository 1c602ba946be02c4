//! Observe-then-issue for the model's certificate and keys. Unlike the other
//! objects these hold random material, so they are read first and only
//! written when missing, invalid or due; re-applying them blindly would
//! rotate every key on every reconcile.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use securechat_crds::files::keyset::KeyState;
use securechat_crds::files::names;
use securechat_crds::v1alpha1::{SigningKeysStatus, TlsMode, TlsStatus};
use tracing::info;

use crate::apply::Writer;
use crate::desired::Context;
use crate::desired::secrets::{self, IssuedCertificate};
use crate::labels::Names;
use crate::{Result, pki, rotation};

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

/// Model annotation for incident response: a new value rotates the signing
/// keys now (through Next, keeping the grace period).
pub const ROTATE_NOW_ANNOTATION: &str = "securechat.dev/rotate-signing-keys";
/// On the keyset Secret: the last rotate-now value acted upon.
pub const ROTATION_HANDLED_ANNOTATION: &str = "securechat.dev/rotation-handled";

/// Drives the signing keyset through its three-phase rotation: one step
/// (one Secret write) per reconcile at most, requeued at the next step's
/// time.
pub async fn signing_keys(
    writer: &mut Writer,
    ctx: &Context<'_>,
    now: DateTime<Utc>,
) -> Result<Outcome<SigningKeysStatus>> {
    let secrets: Api<Secret> = Api::namespaced(writer.client().clone(), &ctx.namespace);
    let spec = &ctx.model.spec.signing_keys;
    let name = Names::signing_keys(&ctx.name);
    let schedule = rotation::Schedule {
        algorithm: spec.algorithm,
        rotation_period: spec.rotation_period.as_chrono(),
        grace_period: spec.grace_period.as_chrono(),
    };
    let secret = secrets.get_opt(&name).await?;
    let existing = secret.as_ref().and_then(secrets::keyset_from_secret);
    let requested = ctx
        .model
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_NOW_ANNOTATION))
        .cloned();
    let handled = secret
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(ROTATION_HANDLED_ANNOTATION))
        .cloned();
    let rotate_now = requested.is_some() && requested != handled;
    let (step, mut next_at) = rotation::next_step(existing.as_ref(), &schedule, rotate_now, now);
    let keyset = if step == rotation::Step::Wait {
        existing.expect("waiting implies a keyset")
    } else {
        let new_key = match step {
            rotation::Step::Bootstrap | rotation::Step::PublishNext => Some(pki::new_signing_key(
                spec.algorithm,
                KeyState::Next,
                // A bootstrap key signs at once: a minute of tolerance for
                // replicas whose clocks are behind. A Next key's
                // publication time is exact: its propagation wait counts
                // from it.
                if step == rotation::Step::Bootstrap {
                    now - TimeDelta::minutes(1)
                } else {
                    now
                },
                now + schedule.lifetime(),
            )?),
            _ => None,
        };
        let keyset = rotation::apply_step(
            &existing.unwrap_or_default(),
            &step,
            &schedule,
            now,
            new_key,
        );
        let mut desired = secrets::signing_keys_secret(ctx, &keyset)?;
        // Remember a handled rotate-now request so it acts once.
        let handled = if step == rotation::Step::PublishNext && rotate_now {
            requested.clone()
        } else {
            handled
        };
        if let Some(value) = handled {
            desired
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(ROTATION_HANDLED_ANNOTATION.into(), value);
        }
        writer.apply(&desired).await?;
        info!(model = %ctx.name, ?step, "signing keys: rotation step");
        // The next step is computed on the next reconcile, soon.
        next_at = Some(now + TimeDelta::seconds(1));
        keyset
    };
    if next_at.is_none() {
        next_at = rotation::next_step(Some(&keyset), &schedule, false, now).1;
    }
    let active = keyset.active();
    let previous = keyset.keys.iter().find(|k| k.state == KeyState::Previous);
    let next = keyset.keys.iter().find(|k| k.state == KeyState::Next);
    let next_rotation = active.map(|k| k.not_before + schedule.rotation_period);
    Ok(Outcome {
        ready: active.is_some(),
        reason: if next.is_some() {
            "Rotating"
        } else {
            "KeysetReady"
        },
        message: format!(
            "{} key(s): active {}{}{}",
            keyset.keys.len(),
            active.map_or("none", |k| k.kid.as_str()),
            next.map(|k| format!(", next {} (published, not signing yet)", k.kid))
                .unwrap_or_default(),
            previous
                .map(|k| format!(
                    ", previous {} (verifies until {})",
                    k.kid,
                    k.not_after.to_rfc3339()
                ))
                .unwrap_or_default(),
        ),
        status: SigningKeysStatus {
            secret_name: Some(name),
            active_kid: active.map(|k| k.kid.clone()),
            previous_kid: previous.map(|k| k.kid.clone()),
            next_kid: next.map(|k| k.kid.clone()),
            next_rotation_at: next_rotation.and_then(to_time),
        },
        next_action_at: next_at,
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
