//! CA rotation with an overlapping trust bundle, as a pure function of the
//! CA set, the spec and the time. Each step is one write of the CA Secret,
//! so an operator killed between any two writes leaves a set that is valid
//! on its own.
//!
//! Phases of one CA:
//! 1. `next`: in the bundle, signs nothing, for the overlap time, so every
//!    client trusts it before any server certificate is signed by it. The
//!    bundle is written *before* the CA Secret that records the new CA, so
//!    the overlap can only be longer than planned, never shorter.
//! 2. `active`: signs the server certificate (re-issued as soon as the
//!    active CA changes). Rotated when a third of its validity is left or on
//!    request.
//! 3. `previous`: the CA that signed the certificate replicas may still
//!    serve until they reload; stays in the bundle for the overlap time,
//!    then is dropped. A new rotation waits until it is gone, so a served
//!    certificate's CA is never missing from the bundle.

use chrono::{DateTime, Duration, Utc};

use crate::pki::CertifiedKey;

/// A CA published in the bundle, not yet signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextCa {
    pub ca: CertifiedKey,
    pub published_at: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// A CA that no longer signs but stays trusted until `retire_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousCa {
    pub cert_pem: String,
    pub retire_at: DateTime<Utc>,
}

/// Everything the CA Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSet {
    pub active: CertifiedKey,
    /// Expiry of the active CA. `None` for a CA written by an operator
    /// version that did not record it: such a CA rotates on request only.
    pub active_not_after: Option<DateTime<Utc>>,
    pub next: Option<NextCa>,
    pub previous: Option<PreviousCa>,
    /// The last rotate-now request acted upon.
    pub rotation_handled: Option<String>,
}

impl CaSet {
    /// A set with one fresh active CA.
    pub fn bootstrap(ca: CertifiedKey, not_after: DateTime<Utc>) -> Self {
        Self {
            active: ca,
            active_not_after: Some(not_after),
            next: None,
            previous: None,
            rotation_handled: None,
        }
    }

    /// The CA certificates clients must trust now: active, next, previous.
    pub fn trusted(&self) -> Vec<&str> {
        [Some(self.active.cert_pem.as_str())]
            .into_iter()
            .chain([
                self.next.as_ref().map(|n| n.ca.cert_pem.as_str()),
                self.previous.as_ref().map(|p| p.cert_pem.as_str()),
            ])
            .flatten()
            .collect()
    }

    /// The bundle ConfigMap's `ca.crt`: every trusted CA, PEM after PEM.
    pub fn bundle(&self) -> String {
        self.trusted()
            .into_iter()
            .map(|pem| {
                let pem = pem.trim_end();
                format!("{pem}\n")
            })
            .collect()
    }
}

/// CA settings, from the model's spec.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub ca_validity: Duration,
    pub overlap: Duration,
}

impl Schedule {
    /// When a CA that expires at `not_after` starts rotating: a third of
    /// its validity before, but never later than two overlaps before
    /// expiry (it must be replaced before it expires).
    pub fn renew_at(&self, not_after: DateTime<Utc>) -> DateTime<Utc> {
        not_after - (self.ca_validity / 3).max(self.overlap * 2)
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing until the time returned with it.
    Wait,
    /// No CA: create one (nothing can trust an old one).
    Bootstrap,
    /// Put a new CA in the bundle.
    PublishNext,
    /// The next CA signs; the active one becomes previous.
    Promote,
    /// The previous CA's overlap is over: drop it from the bundle.
    RetirePrevious,
}

/// The step due now, and when the next one is due.
pub fn next_step(
    set: Option<&CaSet>,
    schedule: &Schedule,
    rotate_now: bool,
    now: DateTime<Utc>,
) -> (Step, Option<DateTime<Utc>>) {
    let Some(set) = set else {
        return (Step::Bootstrap, None);
    };
    if let Some(previous) = &set.previous {
        if now >= previous.retire_at {
            return (Step::RetirePrevious, None);
        }
        // Promotion may still be pending, but no new rotation starts while
        // the previous CA is in the bundle.
        let promote_at = set.next.as_ref().map(|n| n.published_at + schedule.overlap);
        return match promote_at {
            Some(at) if now >= at => (Step::Promote, None),
            Some(at) => (Step::Wait, Some(at.min(previous.retire_at))),
            None => (Step::Wait, Some(previous.retire_at)),
        };
    }
    if let Some(next) = &set.next {
        let promote_at = next.published_at + schedule.overlap;
        if now >= promote_at {
            return (Step::Promote, None);
        }
        return (Step::Wait, Some(promote_at));
    }
    let renew_at = set.active_not_after.map(|t| schedule.renew_at(t));
    if rotate_now || renew_at.is_some_and(|t| now >= t) {
        return (Step::PublishNext, None);
    }
    (Step::Wait, renew_at)
}

/// Applies PublishNext (with `new_ca`, valid until `not_after`), Promote or
/// RetirePrevious to the set. Wait and Bootstrap leave it as it is.
pub fn apply_step(
    set: &CaSet,
    step: &Step,
    schedule: &Schedule,
    now: DateTime<Utc>,
    new_ca: Option<(CertifiedKey, DateTime<Utc>)>,
) -> CaSet {
    let mut set = set.clone();
    match step {
        Step::PublishNext => {
            if let Some((ca, not_after)) = new_ca {
                set.next = Some(NextCa {
                    ca,
                    published_at: now,
                    not_after,
                });
            }
        }
        Step::Promote => {
            if let Some(next) = set.next.take() {
                let old = std::mem::replace(&mut set.active, next.ca);
                set.active_not_after = Some(next.not_after);
                set.previous = Some(PreviousCa {
                    cert_pem: old.cert_pem,
                    retire_at: now + schedule.overlap,
                });
            }
        }
        Step::RetirePrevious => set.previous = None,
        Step::Wait | Step::Bootstrap => {}
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::minutes(minutes)
    }

    fn ca(name: &str) -> CertifiedKey {
        CertifiedKey {
            cert_pem: format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n"),
            key_pem: format!("key of {name}"),
        }
    }

    /// Validity 300 minutes (renews at 200), overlap 10 minutes.
    fn schedule() -> Schedule {
        Schedule {
            ca_validity: Duration::minutes(300),
            overlap: Duration::minutes(10),
        }
    }

    #[test]
    fn no_ca_bootstraps() {
        assert_eq!(next_step(None, &schedule(), false, t(0)).0, Step::Bootstrap);
    }

    #[test]
    fn a_fresh_ca_waits_until_a_third_of_its_validity_is_left() {
        let set = CaSet::bootstrap(ca("a"), t(300));
        assert_eq!(
            next_step(Some(&set), &schedule(), false, t(1)),
            (Step::Wait, Some(t(200)))
        );
        assert_eq!(
            next_step(Some(&set), &schedule(), false, t(200)).0,
            Step::PublishNext
        );
    }

    #[test]
    fn a_rotation_request_publishes_at_once() {
        let set = CaSet::bootstrap(ca("a"), t(300));
        assert_eq!(
            next_step(Some(&set), &schedule(), true, t(1)).0,
            Step::PublishNext
        );
    }

    #[test]
    fn a_ca_of_unknown_expiry_rotates_on_request_only() {
        let mut set = CaSet::bootstrap(ca("a"), t(300));
        set.active_not_after = None;
        assert_eq!(
            next_step(Some(&set), &schedule(), false, t(100_000)),
            (Step::Wait, None)
        );
        assert_eq!(
            next_step(Some(&set), &schedule(), true, t(0)).0,
            Step::PublishNext
        );
    }

    /// The whole rotation: at every moment the bundle holds the CA of the
    /// certificate being served (the active CA, or the previous one while
    /// replicas may still serve its certificate), and a new CA was in the
    /// bundle for the whole overlap before it signed.
    #[test]
    fn a_full_rotation_keeps_the_signing_ca_trusted_throughout() {
        let s = schedule();
        let mut set = CaSet::bootstrap(ca("a"), t(300));
        assert_eq!(set.trusted().len(), 1);

        let step = next_step(Some(&set), &s, false, t(200)).0;
        set = apply_step(&set, &step, &s, t(200), Some((ca("b"), t(500))));
        assert_eq!(set.trusted(), vec![ca("a").cert_pem, ca("b").cert_pem]);
        assert_eq!(set.active, ca("a"), "the new CA does not sign yet");
        assert_eq!(
            next_step(Some(&set), &s, false, t(205)),
            (Step::Wait, Some(t(210)))
        );
        // A request during the overlap does not shorten it.
        assert_eq!(next_step(Some(&set), &s, true, t(205)).0, Step::Wait);

        let step = next_step(Some(&set), &s, false, t(210)).0;
        assert_eq!(step, Step::Promote);
        set = apply_step(&set, &step, &s, t(210), None);
        assert_eq!(set.active, ca("b"));
        assert_eq!(set.active_not_after, Some(t(500)));
        assert_eq!(set.trusted(), vec![ca("b").cert_pem, ca("a").cert_pem]);
        // A request while the previous CA is in the bundle waits for it.
        assert_eq!(
            next_step(Some(&set), &s, true, t(215)),
            (Step::Wait, Some(t(220)))
        );

        let step = next_step(Some(&set), &s, false, t(220)).0;
        assert_eq!(step, Step::RetirePrevious);
        set = apply_step(&set, &step, &s, t(220), None);
        assert_eq!(set.trusted(), vec![ca("b").cert_pem]);
        assert_eq!(
            next_step(Some(&set), &s, false, t(221)),
            (Step::Wait, Some(t(400)))
        );
    }

    #[test]
    fn a_short_lived_ca_rotates_two_overlaps_before_expiry() {
        let s = Schedule {
            ca_validity: Duration::minutes(30),
            overlap: Duration::minutes(10),
        };
        assert_eq!(s.renew_at(t(30)), t(10));
    }

    #[test]
    fn the_bundle_is_one_pem_after_another() {
        let mut set = CaSet::bootstrap(ca("a"), t(300));
        set = apply_step(
            &set,
            &Step::PublishNext,
            &schedule(),
            t(0),
            Some((ca("b"), t(500))),
        );
        let bundle = set.bundle();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(bundle.ends_with("-----END CERTIFICATE-----\n"));
        assert!(!bundle.contains("\n\n"));
    }
}
