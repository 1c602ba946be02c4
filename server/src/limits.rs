//! The limiters behind one interface, whether this process keeps them or
//! the replicas share them: `Buckets::Memory` (no `sharedState`: exactly
//! the single-replica behaviour) or `Buckets::Shared` (the store, with an
//! in-memory twin used only under `LocalFallback` while the store is
//! unreachable). Callers say what they want (`Op`, buckets, cost); what to
//! do when the store fails is decided here, by [`fallback_rate`] and the
//! config's `onUnavailable`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use securechat_crds::v1alpha1::OnUnavailable;

use crate::ratelimit::{Admission, Decision, KeyedBuckets, Op, Rate};
use crate::shared::{Store, StoreError};

/// How long a client refused for an unreachable store is told to wait.
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// A limiter refused to decide: the store is unreachable and the policy is
/// FailClosed.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Unavailable {
    #[source]
    pub source: StoreError,
}

/// One family of buckets (requests, tokens, auth failures).
pub enum Buckets {
    Memory(KeyedBuckets),
    Shared {
        store: Arc<Store>,
        /// Name of the family in the store's keys (`rl:<family>:<key>`).
        family: &'static str,
        /// Used only while the store is unreachable under LocalFallback.
        fallback: KeyedBuckets,
        /// Keys the store refused, until when: what [`Buckets::early_peek`]
        /// knows without a round trip.
        refused: Refusals,
    },
}

/// Keys a store refused and until when, at most `max_keys` of them.
pub struct Refusals {
    until: Mutex<HashMap<String, Instant>>,
    max_keys: usize,
}

impl Refusals {
    fn new(max_keys: usize) -> Self {
        Self {
            until: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, key: &str, retry_after: Duration, now: Instant) {
        let mut until = self.lock();
        if until.len() >= self.max_keys {
            until.retain(|_, t| *t > now);
        }
        if until.len() < self.max_keys {
            until.insert(key.to_string(), now + retry_after);
        }
    }

    fn get(&self, key: &str, now: Instant) -> Option<Duration> {
        let mut until = self.lock();
        let t = *until.get(key)?;
        if t > now {
            return Some(t - now);
        }
        until.remove(key);
        None
    }
}

impl Buckets {
    pub fn memory(max_keys: usize) -> Self {
        Buckets::Memory(KeyedBuckets::new(max_keys))
    }

    pub fn shared(store: Arc<Store>, family: &'static str, max_keys: usize) -> Self {
        Buckets::Shared {
            store,
            family,
            fallback: KeyedBuckets::new(max_keys),
            refused: Refusals::new(max_keys),
        }
    }

    /// Whether these buckets are the store's, where [`Buckets::early_peek`]
    /// only knows past refusals and the exact check is made later, in the
    /// request's one round trip ([`admit`]).
    pub fn is_shared(&self) -> bool {
        matches!(self, Buckets::Shared { .. })
    }

    /// The check made before a credential is verified, without a round
    /// trip: in memory the exact peek (it costs nothing); shared, only the
    /// refusals this replica was already told of, until they expire. The
    /// exact shared check comes with the request's take ([`admit`]).
    pub fn early_peek(&self, key: &str, rate: Rate, cost: f64, now: Instant) -> Decision {
        match self {
            Buckets::Memory(local) => local.peek(key, rate, cost, now),
            Buckets::Shared { refused, .. } => match refused.get(key, now) {
                Some(retry_after) => Decision::Denied { retry_after },
                None => Decision::Allowed {
                    remaining: 0,
                    reset: Duration::ZERO,
                    bucket: 0,
                },
            },
        }
    }

    /// Applies `op` to every named bucket at once (all or none for a take).
    pub async fn apply(
        &self,
        op: Op,
        buckets: &[(&str, Rate)],
        cost: f64,
        now: Instant,
    ) -> Result<Decision, Unavailable> {
        match admit(None, self, op, buckets, cost, now).await? {
            Admission::Decided(decision) => Ok(decision),
            // Without a guard there is nothing to be throttled by.
            Admission::Throttled { retry_after } => Ok(Decision::Denied { retry_after }),
        }
    }

    /// [`Buckets::apply`] on one bucket.
    pub async fn one(
        &self,
        op: Op,
        key: &str,
        rate: Rate,
        cost: f64,
        now: Instant,
    ) -> Result<Decision, Unavailable> {
        self.apply(op, &[(key, rate)], cost, now).await
    }

    /// The store behind these buckets, if shared.
    pub fn store(&self) -> Option<&Arc<Store>> {
        match self {
            Buckets::Memory(_) => None,
            Buckets::Shared { store, .. } => Some(store),
        }
    }
}

/// The store's name of `key` in a family (`rl:<family>:<key>`).
fn store_name(family: &str, key: &str) -> String {
    format!("rl:{family}:{key}")
}

/// A request's check-and-update in one step: the client address's guard
/// (`guard`: its buckets, key and rate; it must hold one failure, nothing
/// is taken), then `op` on `buckets`. With the store that is one script,
/// one round trip; in memory, a peek and then the operation. A store's
/// refusal is remembered for [`Buckets::early_peek`].
pub async fn admit(
    guard: Option<(&Buckets, &str, Rate)>,
    buckets: &Buckets,
    op: Op,
    named: &[(&str, Rate)],
    cost: f64,
    now: Instant,
) -> Result<Admission, Unavailable> {
    let (store, family, fallback, refused) = match buckets {
        Buckets::Memory(local) => {
            if let Some((g, key, rate)) = guard
                && let Decision::Denied { retry_after } = g.early_peek(key, rate, 1.0, now)
            {
                return Ok(Admission::Throttled { retry_after });
            }
            return Ok(Admission::Decided(local.apply(op, named, cost, now)));
        }
        Buckets::Shared {
            store,
            family,
            fallback,
            refused,
        } => (store, family, fallback, refused),
    };
    // The guard is the same store's (both come from one `sharedState`).
    let guard = guard.and_then(|(g, key, rate)| match g {
        Buckets::Shared {
            family,
            fallback,
            refused,
            ..
        } => Some((store_name(family, key), key, rate, fallback, refused)),
        Buckets::Memory(_) => None,
    });
    let guards: Vec<(&str, Rate)> = guard
        .iter()
        .map(|(name, _, rate, _, _)| (name.as_str(), *rate))
        .collect();
    let names: Vec<String> = named
        .iter()
        .map(|(key, _)| store_name(family, key))
        .collect();
    let prefixed: Vec<(&str, Rate)> = names
        .iter()
        .zip(named)
        .map(|(name, &(_, rate))| (name.as_str(), rate))
        .collect();
    match store.admit(&guards, op, &prefixed, cost).await {
        Ok(admission) => {
            match (admission, &guard) {
                (Admission::Throttled { retry_after }, Some((_, key, _, _, refused))) => {
                    refused.note(key, retry_after, now);
                }
                (Admission::Decided(Decision::Denied { retry_after }), _) => {
                    if let [(key, _)] = named {
                        refused.note(key, retry_after, now);
                    }
                }
                _ => {}
            }
            Ok(admission)
        }
        Err(source) => match store.config().on_unavailable {
            OnUnavailable::FailClosed => Err(Unavailable { source }),
            OnUnavailable::LocalFallback => {
                let replicas = store.replicas();
                if let Some((_, key, rate, g, _)) = &guard
                    && let Decision::Denied { retry_after } =
                        g.peek(key, fallback_rate(*rate, replicas), 1.0, now)
                {
                    return Ok(Admission::Throttled { retry_after });
                }
                let shares: Vec<(&str, Rate)> = named
                    .iter()
                    .map(|&(key, rate)| (key, fallback_rate(rate, replicas)))
                    .collect();
                Ok(Admission::Decided(fallback.apply(op, &shares, cost, now)))
            }
        },
    }
}

/// One replica's share of a limit while each enforces it alone: the
/// limit divided by the replicas, never below one unit (a limit smaller
/// than the replica count would otherwise refuse everything).
pub fn fallback_rate(rate: Rate, replicas: u32) -> Rate {
    let replicas = f64::from(replicas.max(1));
    Rate {
        capacity: (rate.capacity / replicas).max(1.0),
        per_second: rate.per_second / replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replica_enforces_its_share() {
        let rate = Rate::per_minute(30, 30);
        let share = fallback_rate(rate, 3);
        assert_eq!(share.capacity, 10.0);
        assert!((share.per_second - 30.0 / 60.0 / 3.0).abs() < 1e-12);
        // One replica: the whole limit.
        assert_eq!(fallback_rate(rate, 1), rate);
        assert_eq!(fallback_rate(rate, 0), rate);
        // A limit below the replica count still lets one request through
        // per replica.
        assert_eq!(fallback_rate(Rate::per_minute(2, 2), 3).capacity, 1.0);
    }

    #[test]
    fn memory_buckets_take_from_all_or_none() {
        let b = Buckets::memory(10);
        let minute = Rate::per_minute(100, 100);
        let day = Rate::per_minute(10, 10);
        let now = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let both = [("m", minute), ("d", day)];
            for _ in 0..10 {
                let d = b.apply(Op::Take, &both, 1.0, now).await.unwrap();
                assert!(matches!(d, Decision::Allowed { .. }));
            }
            // The smaller bucket is empty: the take is refused and the
            // larger one keeps its 90.
            let d = b.apply(Op::Take, &both, 1.0, now).await.unwrap();
            assert!(matches!(d, Decision::Denied { .. }), "{d:?}");
            let d = b.one(Op::Peek, "m", minute, 1.0, now).await.unwrap();
            assert!(
                matches!(d, Decision::Allowed { remaining: 90, .. }),
                "{d:?}"
            );
        });
    }
}
