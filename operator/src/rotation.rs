//! Three-phase signing-key rotation, as a pure function of the keyset, the
//! spec and the time. Each step is one write of the whole keyset (one
//! Secret), so an operator killed between any two writes leaves a keyset
//! that is valid on its own: exactly one Active key, and every key that
//! signed an unexpired token still present.
//!
//! Phases of one key:
//! 1. `Next`: published, verifies, does not sign. It stays Next for the
//!    propagation time, so every replica has loaded it before any replica
//!    signs with it (the kubelet refreshes mounted Secrets within about a
//!    minute; the server reloads on change).
//! 2. `Active`: signs. After the rotation period a new Next is published.
//! 3. `Previous`: demoted when its successor becomes Active; its `notAfter`
//!    is set to demotion + grace period, after which it is removed. The
//!    grace period must outlast the longest token lifetime.

use chrono::{DateTime, Duration, Utc};
use securechat_crds::files::keyset::{KeyState, SigningKey, SigningKeySet};
use securechat_crds::v1alpha1::SigningAlgorithm;

/// Rotation settings, from the model's spec.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub algorithm: SigningAlgorithm,
    pub rotation_period: Duration,
    pub grace_period: Duration,
}

impl Schedule {
    /// How long a new key stays Next before it signs: long enough for
    /// every replica to load it, short against the rotation period.
    pub fn propagation(&self) -> Duration {
        (self.rotation_period / 10).min(Duration::minutes(2))
    }

    /// A key's validity when published: its whole planned life plus one
    /// more rotation period of slack, so an operator that is down for a
    /// while does not make the active key expire under the replicas.
    pub fn lifetime(&self) -> Duration {
        self.propagation() + self.rotation_period * 2 + self.grace_period
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until `next_at`.
    Wait,
    /// No usable keyset: create one with a fresh Active key (bootstrap;
    /// nothing can have been signed yet).
    Bootstrap,
    /// Publish a new Next key.
    PublishNext,
    /// Promote the Next key; demote the Active key to Previous.
    Promote,
    /// Drop Previous keys whose grace has ended.
    RetirePrevious,
}

/// The step due now, and when the next one is due.
pub fn next_step(
    keyset: Option<&SigningKeySet>,
    schedule: &Schedule,
    rotate_now: bool,
    now: DateTime<Utc>,
) -> (Step, Option<DateTime<Utc>>) {
    let Some(keyset) = keyset.filter(|k| k.validate().is_ok()) else {
        return (Step::Bootstrap, None);
    };
    let active = keyset.active().expect("validated: one Active key");
    if keyset
        .keys
        .iter()
        .any(|k| k.state == KeyState::Previous && k.not_after <= now)
    {
        return (Step::RetirePrevious, None);
    }
    let next = keyset.keys.iter().find(|k| k.state == KeyState::Next);
    if let Some(next) = next {
        let promote_at = next.not_before + schedule.propagation();
        if now >= promote_at {
            return (Step::Promote, None);
        }
        return (Step::Wait, Some(earliest(keyset, promote_at)));
    }
    // An algorithm change or an expiring active key rotates at once, as
    // does a manual request; otherwise at the end of the period.
    let rotate_at = if rotate_now
        || active.alg != schedule.algorithm
        || active.not_after - schedule.grace_period - schedule.propagation() <= now
    {
        now
    } else {
        active.not_before + schedule.rotation_period
    };
    if now >= rotate_at {
        return (Step::PublishNext, None);
    }
    (Step::Wait, Some(earliest(keyset, rotate_at)))
}

/// The earlier of `at` and the end of a Previous key's grace.
fn earliest(keyset: &SigningKeySet, at: DateTime<Utc>) -> DateTime<Utc> {
    keyset
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Previous)
        .map(|k| k.not_after)
        .chain([at])
        .min()
        .expect("non-empty")
}

/// Applies a step (other than Wait/Bootstrap, which need a new key from
/// outside) to the keyset. `new_key` is used by PublishNext.
pub fn apply_step(
    keyset: &SigningKeySet,
    step: &Step,
    schedule: &Schedule,
    now: DateTime<Utc>,
    new_key: Option<SigningKey>,
) -> SigningKeySet {
    let mut keys = keyset.keys.clone();
    match step {
        Step::Wait => {}
        Step::Bootstrap => {
            let mut key = new_key.expect("bootstrap needs a key");
            key.state = KeyState::Active;
            keys = vec![key];
        }
        Step::PublishNext => {
            let mut key = new_key.expect("publishing needs a key");
            key.state = KeyState::Next;
            keys.push(key);
        }
        Step::Promote => {
            for key in &mut keys {
                match key.state {
                    KeyState::Active => {
                        key.state = KeyState::Previous;
                        key.not_after = key.not_after.min(now + schedule.grace_period);
                    }
                    KeyState::Next => key.state = KeyState::Active,
                    KeyState::Previous => {}
                }
            }
        }
        Step::RetirePrevious => {
            keys.retain(|k| !(k.state == KeyState::Previous && k.not_after <= now));
        }
    }
    // Newest first: easiest to read in `kubectl get secret -o yaml`.
    keys.sort_by_key(|k| std::cmp::Reverse(k.not_before));
    SigningKeySet { keys }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::BTreeMap;

    fn schedule() -> Schedule {
        Schedule {
            algorithm: SigningAlgorithm::EdDSA,
            rotation_period: Duration::hours(24),
            grace_period: Duration::hours(1),
        }
    }

    fn key(n: usize, now: DateTime<Utc>, s: &Schedule) -> SigningKey {
        SigningKey {
            kid: format!("k{n}"),
            alg: s.algorithm,
            state: KeyState::Next,
            not_before: now,
            not_after: now + s.lifetime(),
            private_key_pem: "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"
                .into(),
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    /// Runs the operator's loop in simulated time, one write per step, and
    /// returns every keyset that was ever written.
    fn simulate(
        s: &Schedule,
        hours: i64,
        token_ttl: Duration,
    ) -> Vec<(DateTime<Utc>, SigningKeySet)> {
        let mut now = t0();
        let mut n = 0;
        let mut keyset: Option<SigningKeySet> = None;
        let mut written = Vec::new();
        let end = t0() + Duration::hours(hours);
        while now < end {
            let (step, next_at) = next_step(keyset.as_ref(), s, false, now);
            if step == Step::Wait {
                now = next_at.expect("a wait has a time");
                continue;
            }
            let new_key = matches!(step, Step::Bootstrap | Step::PublishNext).then(|| {
                n += 1;
                key(n, now, s)
            });
            let current = keyset.clone().unwrap_or_default();
            let updated = apply_step(&current, &step, s, now, new_key);
            updated.validate().expect("every written keyset is valid");
            written.push((now, updated.clone()));
            keyset = Some(updated);
        }
        let _ = token_ttl;
        written
    }

    #[test]
    fn a_key_goes_next_active_previous_gone_in_order() {
        let s = schedule();
        let history = simulate(&s, 72, Duration::minutes(30));
        let mut phases: BTreeMap<String, Vec<KeyState>> = BTreeMap::new();
        for (_, set) in &history {
            for k in &set.keys {
                let seen = phases.entry(k.kid.clone()).or_default();
                if seen.last() != Some(&k.state) {
                    seen.push(k.state);
                }
            }
        }
        assert_eq!(phases["k1"], [KeyState::Active, KeyState::Previous]);
        assert_eq!(
            phases["k2"],
            [KeyState::Next, KeyState::Active, KeyState::Previous]
        );
        // k1 is gone once its grace ended.
        let last = &history.last().unwrap().1;
        assert!(last.keys.iter().all(|k| k.kid != "k1"));
    }

    #[test]
    fn no_key_signs_before_it_was_published_for_the_propagation_time() {
        let s = schedule();
        let history = simulate(&s, 100, Duration::minutes(30));
        let mut published: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for (at, set) in &history {
            for k in &set.keys {
                published.entry(k.kid.clone()).or_insert(*at);
                if k.state == KeyState::Active && k.kid != "k1" {
                    assert!(
                        *at - published[&k.kid] >= s.propagation(),
                        "{} signed {} after publication",
                        k.kid,
                        *at - published[&k.kid]
                    );
                }
            }
        }
    }

    #[test]
    fn crash_between_any_two_writes_keeps_every_unexpired_token_verifying() {
        // A token signed at time t by the then-active key must verify until
        // t + ttl in every keyset written afterwards. Because each step is
        // one write, "killed after write i" is exactly "keyset i stays in
        // force": so every written state is checked, and after it the same
        // state as long as the operator could be down before the key
        // expires (lifetime slack).
        let s = schedule();
        let ttl = Duration::minutes(30);
        let history = simulate(&s, 120, ttl);
        for (i, (at, set)) in history.iter().enumerate() {
            let signer = set.active().unwrap();
            let token_expiry = *at + ttl;
            for (later_at, later) in history.iter().skip(i) {
                if *later_at > token_expiry {
                    break;
                }
                let k = later
                    .keys
                    .iter()
                    .find(|k| k.kid == signer.kid)
                    .unwrap_or_else(|| {
                        panic!(
                            "{} removed at {later_at} while a token from {at} lives",
                            signer.kid
                        )
                    });
                assert!(k.not_after >= token_expiry, "{} expires too early", k.kid);
            }
        }
    }

    #[test]
    fn at_most_one_key_signs_and_at_most_three_exist() {
        let history = simulate(&schedule(), 200, Duration::minutes(30));
        for (_, set) in history {
            assert_eq!(
                set.keys
                    .iter()
                    .filter(|k| k.state == KeyState::Active)
                    .count(),
                1
            );
            assert!(set.keys.len() <= 3, "{set:?}");
        }
    }

    #[test]
    fn rotate_now_skips_the_period_but_not_propagation_or_grace() {
        let s = schedule();
        let now = t0() + Duration::hours(1);
        let set = apply_step(
            &SigningKeySet::default(),
            &Step::Bootstrap,
            &s,
            t0(),
            Some(key(1, t0(), &s)),
        );
        assert_eq!(next_step(Some(&set), &s, false, now).0, Step::Wait);
        assert_eq!(next_step(Some(&set), &s, true, now).0, Step::PublishNext);
        let set = apply_step(&set, &Step::PublishNext, &s, now, Some(key(2, now, &s)));
        // still the propagation wait, even though rotation was requested
        let (step, at) = next_step(Some(&set), &s, true, now);
        assert_eq!(step, Step::Wait);
        assert_eq!(at, Some(now + s.propagation()));
        let later = now + s.propagation();
        let set = apply_step(&set, &Step::Promote, &s, later, None);
        let previous = set.keys.iter().find(|k| k.kid == "k1").unwrap();
        assert_eq!(previous.state, KeyState::Previous);
        assert_eq!(previous.not_after, later + s.grace_period);
    }

    #[test]
    fn an_algorithm_change_rotates_through_next_not_by_replacement() {
        let s = schedule();
        let set = apply_step(
            &SigningKeySet::default(),
            &Step::Bootstrap,
            &s,
            t0(),
            Some(key(1, t0(), &s)),
        );
        let rs = Schedule {
            algorithm: SigningAlgorithm::RS256,
            ..s
        };
        assert_eq!(next_step(Some(&set), &rs, false, t0()).0, Step::PublishNext);
    }

    #[test]
    fn a_missing_or_invalid_keyset_is_bootstrapped() {
        let s = schedule();
        assert_eq!(next_step(None, &s, false, t0()).0, Step::Bootstrap);
        let broken = SigningKeySet { keys: vec![] };
        assert_eq!(next_step(Some(&broken), &s, false, t0()).0, Step::Bootstrap);
    }
}
