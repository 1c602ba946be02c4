//! The model's certificate and keys, as observe -> plan -> execute. Unlike
//! the other objects these hold random material, so they are read first and
//! only written when missing, invalid or due; re-applying them blindly would
//! rotate every key on every reconcile.
//!
//! The plans ([`plan_tls`], [`plan_signing_keys`]) are pure: what the API
//! server holds, the spec and `now` in; the writes to make, in order, and
//! the condition to show out. Fresh material comes from a [`Mint`] passed
//! in ([`PkiMint`] in the operator, counters in the tests), so a test can
//! drive years of renewals and rotations, with a crash between any two
//! writes, in milliseconds. The executors ([`tls`], [`signing_keys`]) read,
//! plan and write, nothing else.
//!
//! Only material the model's operator made is read: a Secret of one of
//! these names that the model does not control is someone else's, and
//! trusting its CA or keys would let them sign for the model. Planning
//! stops with [`Error::NotOwned`] instead.

use chrono::{DateTime, Duration as TimeDelta, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use securechat_crds::files::keyset::{KeyState, SigningKey};
use securechat_crds::files::names;
use securechat_crds::v1alpha1::{SigningKeysStatus, TlsMode, TlsStatus};
use tracing::info;

use crate::apply::{Writer, controlled_by};
use crate::ca_rotation::{self, CaSet};
use crate::desired::Input;
use crate::desired::secrets::{self, IssueReason, IssuedCertificate};
use crate::labels::Names;
use crate::pki::CertifiedKey;
use crate::status::MaterialState;
use crate::{Error, Result, pki, reasons, rotation};

/// The outcome for one kind of material: its condition and status, and
/// when it next needs attention.
#[derive(Debug, Clone)]
pub struct Outcome<S> {
    pub state: MaterialState<S>,
    pub next_action_at: Option<DateTime<Utc>>,
}

fn to_time(t: DateTime<Utc>) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::from_second(t.timestamp())
        .ok()
        .map(Time)
}

/// Fresh random material, made only when a plan needs it.
pub trait Mint {
    /// A new CA for the model, valid until `not_after`.
    fn ca(&mut self, now: DateTime<Utc>, not_after: DateTime<Utc>) -> Result<CertifiedKey>;
    /// A serving certificate for `dns_names`, signed by `ca`.
    fn server_certificate(
        &mut self,
        ca: &CertifiedKey,
        dns_names: &[String],
        now: DateTime<Utc>,
        not_after: DateTime<Utc>,
    ) -> Result<CertifiedKey>;
}

/// The operator's [`Mint`]: real keys from `crate::pki`.
pub struct PkiMint<'a> {
    pub model: &'a str,
}

impl Mint for PkiMint<'_> {
    fn ca(&mut self, now: DateTime<Utc>, not_after: DateTime<Utc>) -> Result<CertifiedKey> {
        pki::new_ca(self.model, now, not_after)
    }

    fn server_certificate(
        &mut self,
        ca: &CertifiedKey,
        dns_names: &[String],
        now: DateTime<Utc>,
        not_after: DateTime<Utc>,
    ) -> Result<CertifiedKey> {
        pki::new_server_certificate(self.model, ca, dns_names, now, not_after)
    }
}

/// What the API server holds for the model's TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsObserved {
    /// `tls.secretName` (ExistingSecret mode only).
    pub existing: Option<Secret>,
    /// `<model>-ca`: the CA keys and rotation state.
    pub ca: Option<Secret>,
    /// `<model>-tls`: the serving certificate.
    pub certificate: Option<Secret>,
}

/// One TLS write, in the order the plan lists them.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsWrite {
    CaSecret(Secret),
    Bundle(ConfigMap),
    Certificate(Secret),
}

/// What one reconcile does about TLS.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    pub writes: Vec<TlsWrite>,
    /// For the log: the CA step taken, and why a certificate was issued.
    pub ca_step: Option<ca_rotation::Step>,
    pub issued: Option<(IssueReason, DateTime<Utc>)>,
    pub outcome: Outcome<TlsStatus>,
}

/// The Secret, if the model controls it; someone else's is an error.
fn models_own<'a>(ctx: &Input<'_>, secret: Option<&'a Secret>) -> Result<Option<&'a Secret>> {
    match secret {
        Some(s) if !controlled_by(&s.metadata, ctx.model.metadata.uid.as_deref()) => {
            Err(Error::NotOwned {
                kind: "Secret".into(),
                namespace: ctx.namespace.clone(),
                name: s.name_any(),
            })
        }
        other => Ok(other),
    }
}

/// Reads what [`plan_tls`] decides on.
pub async fn observe_tls(writer: &Writer, ctx: &Input<'_>) -> Result<TlsObserved> {
    let secrets: Api<Secret> = Api::namespaced(writer.client().clone(), &ctx.namespace);
    let spec = &ctx.model.spec.tls;
    if spec.mode == TlsMode::ExistingSecret {
        let name = spec.secret_name.clone().unwrap_or_default();
        return Ok(TlsObserved {
            existing: secrets.get_opt(&name).await?,
            ..Default::default()
        });
    }
    Ok(TlsObserved {
        existing: None,
        ca: secrets.get_opt(&Names::ca_secret(&ctx.name)).await?,
        certificate: secrets.get_opt(&Names::tls_secret(&ctx.name)).await?,
    })
}

/// Ensures the CA, the server certificate and the CA bundle.
pub async fn tls(
    writer: &mut Writer,
    ctx: &Input<'_>,
    now: DateTime<Utc>,
) -> Result<Outcome<TlsStatus>> {
    let observed = observe_tls(writer, ctx).await?;
    let plan = plan_tls(ctx, &observed, now, &mut PkiMint { model: &ctx.name })?;
    for write in &plan.writes {
        match write {
            TlsWrite::CaSecret(secret) | TlsWrite::Certificate(secret) => {
                writer.apply(secret).await?;
            }
            TlsWrite::Bundle(bundle) => {
                writer.apply(bundle).await?;
            }
        }
    }
    if let Some(step) = &plan.ca_step {
        info!(model = %ctx.name, ?step, "CA step");
    }
    if let Some((reason, not_after)) = &plan.issued {
        info!(model = %ctx.name, ?reason, %not_after, "issued a server certificate");
    }
    Ok(plan.outcome)
}

/// Decides one reconcile of the model's TLS.
pub fn plan_tls(
    ctx: &Input<'_>,
    observed: &TlsObserved,
    now: DateTime<Utc>,
    mint: &mut impl Mint,
) -> Result<TlsPlan> {
    let spec = &ctx.model.spec.tls;
    if spec.mode == TlsMode::ExistingSecret {
        return Ok(existing_secret_plan(ctx, observed.existing.as_ref()));
    }
    let schedule = ca_rotation::Schedule {
        ca_validity: pki::capped_ca_validity(spec.ca_validity.as_chrono()),
        overlap: spec.ca_overlap.as_chrono(),
    };
    let mut writes = Vec::new();
    let (set, ca_step, ca_next_at) = plan_ca(ctx, observed, &schedule, now, mint, &mut writes)?;

    let wanted = secrets::dns_names(ctx);
    let tls_secret = models_own(ctx, observed.certificate.as_ref())?;
    let existing = tls_secret.and_then(secrets::issued_certificate);
    // Re-issued whenever the CA that signs has changed (a promotion, or a
    // new CA), also after a crash between the two writes.
    let ca_changed =
        tls_secret.and_then(secrets::issuer_of).as_deref() != Some(set.active.cert_pem.as_str());
    // A certificate issued before the cap (or by hand) that outlives it is
    // renewed now.
    let too_long = existing
        .as_ref()
        .is_some_and(|c| c.not_after - now > pki::MAX_SERVING_VALIDITY);
    let decision = secrets::certificate_decision(existing.as_ref(), &wanted, ca_changed, now)
        .or(too_long.then_some(IssueReason::Renewal));
    let (issued, issue) = match (decision, existing) {
        (None, Some(existing)) => (existing, None),
        (reason, _) => {
            let reason = reason.unwrap_or(IssueReason::Missing);
            let (not_after, renew_at) = secrets::certificate_times(ctx, now);
            let (mut not_after, mut renew_at) = pki::capped_serving_times(now, not_after, renew_at);
            // Never outlive the CA that signs it.
            if let Some(ca_not_after) = set.active_not_after.filter(|t| *t < not_after) {
                renew_at -= not_after - ca_not_after;
                not_after = ca_not_after;
            }
            let leaf = mint.server_certificate(&set.active, &wanted, now, not_after)?;
            let issued = IssuedCertificate {
                not_after,
                renew_at,
                dns_names: wanted,
            };
            writes.push(TlsWrite::Certificate(secrets::tls_secret(
                ctx,
                &set.active.cert_pem,
                &leaf,
                &issued,
            )));
            (issued, Some((reason, not_after)))
        }
    };
    writes.push(TlsWrite::Bundle(secrets::ca_bundle(ctx, &set.bundle())));
    let ca_renew_at = set.active_not_after.map(|t| schedule.renew_at(t));
    let (reason, rotation_note) = match (&set.next, &set.previous) {
        (Some(next), _) => (
            reasons::CA_ROTATING,
            format!(
                "; a new CA is in the bundle and signs from {}",
                (next.published_at + schedule.overlap).to_rfc3339()
            ),
        ),
        (None, Some(previous)) => (
            reasons::CA_ROTATING,
            format!(
                "; the previous CA stays in the bundle until {}",
                previous.retire_at.to_rfc3339()
            ),
        ),
        (None, None) => (reasons::CERTIFICATE_ISSUED, String::new()),
    };
    Ok(TlsPlan {
        writes,
        ca_step,
        issued: issue,
        outcome: Outcome {
            state: MaterialState {
                ready: true,
                reason,
                message: format!(
                    "valid until {}, renews at {}{rotation_note}",
                    issued.not_after.to_rfc3339(),
                    issued.renew_at.to_rfc3339()
                ),
                status: TlsStatus {
                    secret_name: Some(Names::tls_secret(&ctx.name)),
                    not_after: to_time(issued.not_after),
                    renew_at: to_time(issued.renew_at),
                    ca_bundle_config_map: Some(Names::ca_bundle(&ctx.name)),
                    ca_not_after: set.active_not_after.and_then(to_time),
                    ca_renew_at: ca_renew_at.and_then(to_time),
                    ca_bundle_size: i32::try_from(set.trusted().len()).ok(),
                },
            },
            next_action_at: Some(ca_next_at.map_or(issued.renew_at, |t| t.min(issued.renew_at))),
        },
    })
}

/// ExistingSecret mode: the user's Secret is served as it is; only whether
/// it is usable is decided.
fn existing_secret_plan(ctx: &Input<'_>, found: Option<&Secret>) -> TlsPlan {
    let name = ctx.model.spec.tls.secret_name.clone().unwrap_or_default();
    let usable = found
        .and_then(|s| s.data.as_ref())
        .is_some_and(|d| d.contains_key(names::TLS_CERT) && d.contains_key(names::TLS_KEY));
    let (reason, message) = if usable {
        (
            reasons::EXISTING_SECRET,
            format!("serving the certificate in Secret {name}"),
        )
    } else {
        (
            reasons::SECRET_NOT_FOUND,
            format!("Secret {name} does not exist or lacks tls.crt / tls.key"),
        )
    };
    TlsPlan {
        writes: Vec::new(),
        ca_step: None,
        issued: None,
        outcome: Outcome {
            state: MaterialState {
                ready: usable,
                reason,
                message,
                status: TlsStatus {
                    secret_name: Some(name),
                    ..Default::default()
                },
            },
            next_action_at: None,
        },
    }
}

/// The CA part of [`plan_tls`]: the CA set in force after this reconcile,
/// the step taken (None: nothing to write) and when the next one is due.
/// Pushes the CA writes.
fn plan_ca(
    ctx: &Input<'_>,
    observed: &TlsObserved,
    schedule: &ca_rotation::Schedule,
    now: DateTime<Utc>,
    mint: &mut impl Mint,
    writes: &mut Vec<TlsWrite>,
) -> Result<(CaSet, Option<ca_rotation::Step>, Option<DateTime<Utc>>)> {
    let existing = models_own(ctx, observed.ca.as_ref())?.and_then(secrets::ca_set_from_secret);
    let requested = annotation(ctx, ROTATE_CA_ANNOTATION);
    // A CA made before the cap that outlives it rotates now, through the
    // overlap like any rotation.
    let too_long = existing
        .as_ref()
        .and_then(|s| s.active_not_after)
        .is_some_and(|t| t - now > pki::MAX_CA_VALIDITY);
    let rotate_now = too_long
        || (requested.is_some()
            && requested != existing.as_ref().and_then(|s| s.rotation_handled.clone()));
    let (step, next_at) = ca_rotation::next_step(existing.as_ref(), schedule, rotate_now, now);
    let mut new_ca = || -> Result<(CertifiedKey, DateTime<Utc>)> {
        let not_after = now + schedule.ca_validity;
        Ok((mint.ca(now, not_after)?, not_after))
    };
    let (set, next_at) = match (&step, existing) {
        (ca_rotation::Step::Wait, Some(set)) => return Ok((set, None, next_at)),
        (ca_rotation::Step::Bootstrap, _) | (_, None) => {
            let (ca, not_after) = new_ca()?;
            (CaSet::bootstrap(ca, not_after), next_at)
        }
        (step, Some(existing)) => {
            let fresh = match step {
                ca_rotation::Step::PublishNext => Some(new_ca()?),
                _ => None,
            };
            let mut set = ca_rotation::apply_step(&existing, step, schedule, now, fresh);
            if *step == ca_rotation::Step::PublishNext {
                if requested.is_some() && rotate_now {
                    set.rotation_handled = requested;
                }
                // Trust before record: the bundle gains the new CA before
                // the Secret says it was published, so the overlap counted
                // from the Secret is never longer than the bundle has had it.
                writes.push(TlsWrite::Bundle(secrets::ca_bundle(ctx, &set.bundle())));
            }
            // The next step is computed on the next reconcile, soon.
            (set, Some(now + TimeDelta::seconds(1)))
        }
    };
    writes.push(TlsWrite::CaSecret(secrets::ca_secret(ctx, &set)));
    Ok((set, Some(step), next_at))
}

/// The model's annotation `name`, if set.
fn annotation(ctx: &Input<'_>, name: &str) -> Option<String> {
    ctx.model.metadata.annotations.as_ref()?.get(name).cloned()
}

/// Model annotation for incident response: a new value starts a CA
/// rotation now (through the bundle overlap, never skipping it).
pub const ROTATE_CA_ANNOTATION: &str = "securechat.dev/rotate-ca";

/// Model annotation for incident response: a new value rotates the signing
/// keys now (through Next, keeping the grace period).
pub const ROTATE_NOW_ANNOTATION: &str = "securechat.dev/rotate-signing-keys";
/// On the keyset Secret: the last rotate-now value acted upon.
pub const ROTATION_HANDLED_ANNOTATION: &str = "securechat.dev/rotation-handled";

/// What one reconcile does about the signing keys: at most one write.
#[derive(Debug, Clone)]
pub struct SigningKeysPlan {
    pub write: Option<Secret>,
    /// For the log: the rotation step taken.
    pub step: Option<rotation::Step>,
    pub outcome: Outcome<SigningKeysStatus>,
}

/// Drives the signing keyset through its three-phase rotation: one step
/// (one Secret write) per reconcile at most, requeued at the next step's
/// time.
pub async fn signing_keys(
    writer: &mut Writer,
    ctx: &Input<'_>,
    now: DateTime<Utc>,
) -> Result<Outcome<SigningKeysStatus>> {
    let secrets: Api<Secret> = Api::namespaced(writer.client().clone(), &ctx.namespace);
    let observed = secrets.get_opt(&Names::signing_keys(&ctx.name)).await?;
    let plan = plan_signing_keys(ctx, observed.as_ref(), now, pki::new_signing_key)?;
    if let Some(secret) = &plan.write {
        writer.apply(secret).await?;
    }
    if let Some(step) = &plan.step {
        info!(model = %ctx.name, ?step, "signing keys: rotation step");
    }
    Ok(plan.outcome)
}

/// Decides one reconcile of the signing keys from the keyset Secret.
/// `new_key` makes a key (as `pki::new_signing_key`) when a step needs one.
pub fn plan_signing_keys(
    ctx: &Input<'_>,
    observed: Option<&Secret>,
    now: DateTime<Utc>,
    new_key: impl FnOnce(
        securechat_crds::v1alpha1::SigningAlgorithm,
        KeyState,
        DateTime<Utc>,
        DateTime<Utc>,
    ) -> Result<SigningKey>,
) -> Result<SigningKeysPlan> {
    let spec = &ctx.model.spec.signing_keys;
    let name = Names::signing_keys(&ctx.name);
    let schedule = rotation::Schedule {
        algorithm: spec.algorithm,
        rotation_period: spec.rotation_period.as_chrono(),
        grace_period: spec.grace_period.as_chrono(),
    };
    let secret = models_own(ctx, observed)?;
    let existing = secret.and_then(secrets::keyset_from_secret);
    let requested = annotation(ctx, ROTATE_NOW_ANNOTATION);
    let handled = secret
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(|a| a.get(ROTATION_HANDLED_ANNOTATION))
        .cloned();
    let rotate_now = requested.is_some() && requested != handled;
    let (step, mut next_at) = rotation::next_step(existing.as_ref(), &schedule, rotate_now, now);
    let (keyset, write) = match (step == rotation::Step::Wait, existing) {
        (true, Some(keyset)) => (keyset, None),
        (_, existing) => {
            let new_key = match step {
                rotation::Step::Bootstrap | rotation::Step::PublishNext => Some(new_key(
                    spec.algorithm,
                    KeyState::Next,
                    // A bootstrap key signs at once: a minute of tolerance
                    // for replicas whose clocks are behind. A Next key's
                    // publication time is exact: its propagation wait
                    // counts from it.
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
            // The next step is computed on the next reconcile, soon.
            next_at = Some(now + TimeDelta::seconds(1));
            (keyset, Some(desired))
        }
    };
    if next_at.is_none() {
        next_at = rotation::next_step(Some(&keyset), &schedule, false, now).1;
    }
    let active = keyset.active();
    let previous = keyset.keys.iter().find(|k| k.state == KeyState::Previous);
    let next = keyset.keys.iter().find(|k| k.state == KeyState::Next);
    let next_rotation = active.map(|k| k.not_before + schedule.rotation_period);
    Ok(SigningKeysPlan {
        step: write.is_some().then_some(step),
        write,
        outcome: Outcome {
            state: MaterialState {
                ready: active.is_some(),
                reason: if next.is_some() {
                    reasons::ROTATING
                } else {
                    reasons::KEYSET_READY
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
            },
            next_action_at: next_at,
        },
    })
}

/// Creates the empty API-key table once; ChatApiKeys fill it, so it is
/// never overwritten here. A Secret of its name that the model does not
/// control is someone else's: left alone, and the model says so.
pub async fn api_keys(writer: &mut Writer, ctx: &Input<'_>) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(writer.client().clone(), &ctx.namespace);
    let found = secrets.get_opt(&Names::api_keys(&ctx.name)).await?;
    if models_own(ctx, found.as_ref())?.is_none() {
        writer.apply(&secrets::empty_api_keys_secret(ctx)?).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::desired::test_support::model;
    use serde_json::json;

    fn t(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + TimeDelta::hours(hours)
    }

    fn pem(body: &str) -> String {
        format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
    }

    /// Numbered fake material: a CA is `CA n`, a leaf names its CA.
    #[derive(Default)]
    struct Counter {
        cas: usize,
        leaves: usize,
    }

    impl Mint for Counter {
        fn ca(&mut self, _: DateTime<Utc>, _: DateTime<Utc>) -> Result<CertifiedKey> {
            self.cas += 1;
            Ok(CertifiedKey {
                cert_pem: pem(&format!("CA {}", self.cas)),
                key_pem: format!("key of CA {}", self.cas),
            })
        }

        fn server_certificate(
            &mut self,
            ca: &CertifiedKey,
            _: &[String],
            _: DateTime<Utc>,
            _: DateTime<Utc>,
        ) -> Result<CertifiedKey> {
            self.leaves += 1;
            Ok(CertifiedKey {
                cert_pem: pem(&format!("leaf {} by {}", self.leaves, ca.key_pem)),
                key_pem: format!("key of leaf {}", self.leaves),
            })
        }
    }

    /// The model's TLS objects as the API server holds them.
    #[derive(Default)]
    struct Store {
        secrets: BTreeMap<String, Secret>,
        bundle: Option<String>,
    }

    impl Store {
        fn observed(&self) -> TlsObserved {
            TlsObserved {
                existing: None,
                ca: self.secrets.get("chat-ca").cloned(),
                certificate: self.secrets.get("chat-tls").cloned(),
            }
        }

        fn write(&mut self, write: &TlsWrite) {
            match write {
                TlsWrite::CaSecret(s) | TlsWrite::Certificate(s) => {
                    self.secrets.insert(s.name_any(), s.clone());
                }
                TlsWrite::Bundle(c) => {
                    self.bundle = c.data.as_ref().and_then(|d| d.get(names::CA_CERT)).cloned();
                }
            }
        }

        fn apply(&mut self, plan: &TlsPlan) {
            for write in &plan.writes {
                self.write(write);
            }
        }

        /// What a client that trusts the bundle sees of the served
        /// certificate: trusted and unexpired, or why not.
        fn check(&self, now: DateTime<Utc>) -> std::result::Result<(), String> {
            let Some(served) = self.secrets.get("chat-tls") else {
                return Ok(()); // nothing served yet
            };
            let issuer = secrets::issuer_of(served).ok_or("no issuer")?;
            let Some(bundle) = self.bundle.as_deref() else {
                return Ok(()); // no client trusts anything yet
            };
            if !bundle.contains(&issuer) {
                return Err(format!(
                    "served certificate's CA not in the bundle:\n{issuer}"
                ));
            }
            let issued = secrets::issued_certificate(served).ok_or("unreadable certificate")?;
            if issued.not_after <= now {
                return Err(format!(
                    "served certificate expired at {}",
                    issued.not_after
                ));
            }
            Ok(())
        }
    }

    /// Two years of a 30-day certificate under a 90-day CA with a day of
    /// overlap, the operator killed after the first write of every third
    /// reconcile: clients trusting the bundle always trust the served
    /// certificate, and it never expires.
    #[test]
    fn two_years_of_renewals_and_ca_rotations_keep_the_served_certificate_trusted() {
        let m = model(
            "chat",
            json!({"tls": {"validity": "720h", "caValidity": "2160h", "caOverlap": "24h"}}),
        );
        let ctx = Input::new(&m, "img").unwrap();
        let mut store = Store::default();
        let mut mint = Counter::default();
        let mut now = t(0);
        let mut reconciles = 0;
        while now < t(2 * 365 * 24) {
            let plan = plan_tls(&ctx, &store.observed(), now, &mut mint).unwrap();
            reconciles += 1;
            let crash = reconciles % 3 == 0 && plan.writes.len() > 1;
            for write in plan.writes.iter().take(if crash { 1 } else { usize::MAX }) {
                store.write(write);
                if let Err(e) = store.check(now) {
                    panic!("at {now} after {write:?}: {e}");
                }
            }
            if crash {
                continue; // restarted: the same moment is planned again
            }
            let next = plan
                .outcome
                .next_action_at
                .expect("a renewal is always due");
            assert!(next > now, "no progress at {now}");
            now = next.min(now + TimeDelta::hours(12));
        }
        assert!(mint.cas >= 8, "{} CAs in two years of 90 days", mint.cas);
        assert!(mint.leaves >= 24, "{} certificates", mint.leaves);
    }

    /// A model admitted before the validity caps (`2000000h`: 228 years).
    fn centuries() -> securechat_crds::SecureChatModel {
        model(
            "chat",
            json!({"tls": {"validity": "2000000h", "caValidity": "2000000h"}}),
        )
    }

    /// Issue 19: `tls.validity: 2000000h` gave a certificate valid until
    /// 2255; it is capped at a year (the CA at ten), and the capped one is
    /// not reissued on every reconcile.
    #[test]
    fn a_validity_of_centuries_is_capped_and_stable() {
        let m = centuries();
        let ctx = Input::new(&m, "img").unwrap();
        let mut store = Store::default();
        let mut mint = Counter::default();
        let plan = plan_tls(&ctx, &store.observed(), t(0), &mut mint).unwrap();
        store.apply(&plan);
        let status = &plan.outcome.state.status;
        let year = to_time(t(0) + pki::MAX_SERVING_VALIDITY);
        assert_eq!(status.not_after, year);
        assert_eq!(status.ca_not_after, to_time(t(0) + pki::MAX_CA_VALIDITY));
        let again = plan_tls(&ctx, &store.observed(), t(1), &mut mint).unwrap();
        assert_eq!(again.issued, None);
        assert!(again.ca_step.is_none());
        assert_eq!((mint.cas, mint.leaves), (1, 1));
    }

    /// A model admitted before the caps holds a certificate and a CA valid
    /// until 2255: the certificate is reissued within the cap at once, and
    /// the CA rotates (through its overlap).
    #[test]
    fn material_issued_before_the_caps_is_replaced() {
        let m = centuries();
        let ctx = Input::new(&m, "img").unwrap();
        let mut store = Store::default();
        let mut mint = Counter::default();
        store.apply(&plan_tls(&ctx, &store.observed(), t(0), &mut mint).unwrap());
        let until_2255 = t(2_000_000).to_rfc3339();
        for (name, annotation) in [
            ("chat-tls", secrets::NOT_AFTER_ANNOTATION),
            ("chat-ca", secrets::CA_NOT_AFTER_ANNOTATION),
        ] {
            let secret = store.secrets.get_mut(name).unwrap();
            secret
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(annotation.into(), until_2255.clone());
        }
        let plan = plan_tls(&ctx, &store.observed(), t(1), &mut mint).unwrap();
        assert_eq!(plan.ca_step, Some(ca_rotation::Step::PublishNext));
        let (reason, not_after) = plan.issued.expect("reissued");
        assert_eq!(reason, IssueReason::Renewal);
        assert!(not_after <= t(1) + pki::MAX_SERVING_VALIDITY);
    }

    #[test]
    fn someone_elses_ca_or_keys_are_never_used() {
        let m = model("chat", json!({}));
        let ctx = Input::new(&m, "img").unwrap();
        let mut store = Store::default();
        store.apply(&plan_tls(&ctx, &store.observed(), t(0), &mut Counter::default()).unwrap());
        let mut planted = store.secrets["chat-ca"].clone();
        planted.metadata.owner_references = None;
        store.secrets.insert("chat-ca".into(), planted);
        let refused = plan_tls(&ctx, &store.observed(), t(1), &mut Counter::default());
        assert!(
            matches!(&refused, Err(Error::NotOwned { name, .. }) if name == "chat-ca"),
            "{refused:?}"
        );
        let keys = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("chat-signing-keys".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let refused = plan_signing_keys(&ctx, Some(&keys), t(0), |_, _, _, _| unreachable!());
        assert!(matches!(refused, Err(Error::NotOwned { .. })));
    }

    #[test]
    fn signing_keys_write_once_per_step_and_then_wait() {
        let m = model("chat", json!({}));
        let ctx = Input::new(&m, "img").unwrap();
        let key = pki::new_signing_key;
        let first = plan_signing_keys(&ctx, None, t(0), key).unwrap();
        let secret = first.write.expect("bootstrap writes the keyset");
        assert_eq!(first.step, Some(rotation::Step::Bootstrap));
        let mut secret = secret;
        // Steps follow one per reconcile until the keyset is steady.
        for _ in 0..5 {
            let plan = plan_signing_keys(&ctx, Some(&secret), t(0), key).unwrap();
            match plan.write {
                Some(next) => secret = next,
                None => {
                    assert!(plan.outcome.state.ready);
                    assert_eq!(plan.outcome.state.reason, reasons::KEYSET_READY);
                    assert!(plan.outcome.next_action_at.is_some_and(|at| at > t(0)));
                    return;
                }
            }
        }
        panic!("the keyset never settled");
    }
}
