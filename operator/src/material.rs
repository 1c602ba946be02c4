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
use crate::ca_rotation::{self, CaSet};
use crate::desired::Input;
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
    ctx: &Input<'_>,
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

    let schedule = ca_rotation::Schedule {
        ca_validity: spec.ca_validity.as_chrono(),
        overlap: spec.ca_overlap.as_chrono(),
    };
    let ca_secret = secrets.get_opt(&format!("{}-ca", ctx.name)).await?;
    let existing = ca_secret.as_ref().and_then(secrets::ca_set_from_secret);
    let requested = ctx
        .model
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_CA_ANNOTATION))
        .cloned();
    let rotate_now = requested.is_some()
        && requested != existing.as_ref().and_then(|s| s.rotation_handled.clone());
    let (step, mut ca_next_at) =
        ca_rotation::next_step(existing.as_ref(), &schedule, rotate_now, now);
    let new_ca = || -> Result<(pki::CertifiedKey, DateTime<Utc>)> {
        let not_after = now + schedule.ca_validity;
        Ok((pki::new_ca(&ctx.name, now, not_after)?, not_after))
    };
    let set = match (step, existing) {
        (ca_rotation::Step::Wait, Some(set)) => set,
        (ca_rotation::Step::Bootstrap, _) | (_, None) => {
            let (ca, not_after) = new_ca()?;
            let set = CaSet::bootstrap(ca, not_after);
            writer.apply(&secrets::ca_secret(ctx, &set)).await?;
            info!(model = %ctx.name, "issued a new CA");
            set
        }
        (step, Some(existing)) => {
            let fresh = match step {
                ca_rotation::Step::PublishNext => Some(new_ca()?),
                _ => None,
            };
            let mut set = ca_rotation::apply_step(&existing, &step, &schedule, now, fresh);
            if step == ca_rotation::Step::PublishNext {
                if rotate_now {
                    set.rotation_handled = requested;
                }
                // Trust before record: the bundle gains the new CA before
                // the Secret says it was published, so the overlap counted
                // from the Secret is never longer than the bundle has had it.
                writer
                    .apply(&secrets::ca_bundle(ctx, &set.bundle()))
                    .await?;
            }
            writer.apply(&secrets::ca_secret(ctx, &set)).await?;
            info!(model = %ctx.name, ?step, "CA rotation step");
            ca_next_at = Some(now + TimeDelta::seconds(1));
            set
        }
    };

    let wanted = secrets::dns_names(ctx);
    let tls_name = Names::tls_secret(&ctx.name);
    let tls_secret = secrets.get_opt(&tls_name).await?;
    let existing = tls_secret.as_ref().and_then(secrets::issued_certificate);
    // Re-issued whenever the CA that signs has changed (a promotion, or a
    // new CA), also after a crash between the two writes.
    let ca_changed = tls_secret.as_ref().and_then(secrets::issuer_of).as_deref()
        != Some(set.active.cert_pem.as_str());
    let issued = match secrets::certificate_decision(existing.as_ref(), &wanted, ca_changed, now) {
        None => existing.expect("no decision means a certificate exists"),
        Some(reason) => {
            let (mut not_after, mut renew_at) = secrets::certificate_times(ctx, now);
            // Never outlive the CA that signs it.
            if let Some(ca_not_after) = set.active_not_after.filter(|t| *t < not_after) {
                renew_at -= not_after - ca_not_after;
                not_after = ca_not_after;
            }
            let leaf =
                pki::new_server_certificate(&ctx.name, &set.active, &wanted, now, not_after)?;
            let issued = IssuedCertificate {
                not_after,
                renew_at,
                dns_names: wanted,
            };
            writer
                .apply(&secrets::tls_secret(
                    ctx,
                    &set.active.cert_pem,
                    &leaf,
                    &issued,
                ))
                .await?;
            info!(model = %ctx.name, ?reason, %not_after, "issued a server certificate");
            issued
        }
    };
    writer
        .apply(&secrets::ca_bundle(ctx, &set.bundle()))
        .await?;
    let ca_renew_at = set.active_not_after.map(|t| schedule.renew_at(t));
    let (reason, rotation_note) = match (&set.next, &set.previous) {
        (Some(next), _) => (
            "CaRotating",
            format!(
                "; a new CA is in the bundle and signs from {}",
                (next.published_at + schedule.overlap).to_rfc3339()
            ),
        ),
        (None, Some(previous)) => (
            "CaRotating",
            format!(
                "; the previous CA stays in the bundle until {}",
                previous.retire_at.to_rfc3339()
            ),
        ),
        (None, None) => ("CertificateIssued", String::new()),
    };
    Ok(Outcome {
        ready: true,
        reason,
        message: format!(
            "valid until {}, renews at {}{rotation_note}",
            issued.not_after.to_rfc3339(),
            issued.renew_at.to_rfc3339()
        ),
        status: TlsStatus {
            secret_name: Some(tls_name),
            not_after: to_time(issued.not_after),
            renew_at: to_time(issued.renew_at),
            ca_bundle_config_map: Some(Names::ca_bundle(&ctx.name)),
            ca_not_after: set.active_not_after.and_then(to_time),
            ca_renew_at: ca_renew_at.and_then(to_time),
            ca_bundle_size: i32::try_from(set.trusted().len()).ok(),
        },
        next_action_at: Some(ca_next_at.map_or(issued.renew_at, |t| t.min(issued.renew_at))),
    })
}

/// Model annotation for incident response: a new value starts a CA
/// rotation now (through the bundle overlap, never skipping it).
pub const ROTATE_CA_ANNOTATION: &str = "securechat.dev/rotate-ca";

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
    ctx: &Input<'_>,
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
pub async fn api_keys(writer: &mut Writer, ctx: &Input<'_>) -> Result<()> {
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
