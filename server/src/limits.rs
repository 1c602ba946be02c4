//! The limiters behind one interface, whether this process keeps them or
//! the replicas share them: `Buckets::Memory` (no `sharedState`: exactly
//! the single-replica behaviour) or `Buckets::Shared` (the store, with an
//! in-memory twin used only under `LocalFallback` while the store is
//! unreachable). Callers say what they want (`Op`, buckets, cost); what to
//! do when the store fails is decided here, by [`fallback_rate`] and the
//! config's `onUnavailable`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use securechat_crds::v1alpha1::OnUnavailable;

use crate::ratelimit::{Decision, KeyedBuckets, Op, Rate};
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
    },
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
        match self {
            Buckets::Memory(local) => Ok(local.apply(op, buckets, cost, now)),
            Buckets::Shared {
                store,
                family,
                fallback,
            } => {
                let names: Vec<String> = buckets
                    .iter()
                    .map(|(key, _)| format!("rl:{family}:{key}"))
                    .collect();
                let named: Vec<(&str, Rate)> = names
                    .iter()
                    .zip(buckets)
                    .map(|(name, &(_, rate))| (name.as_str(), rate))
                    .collect();
                match store.buckets(op, &named, cost).await {
                    Ok(decision) => Ok(decision),
                    Err(source) => match store.config().on_unavailable {
                        OnUnavailable::FailClosed => Err(Unavailable { source }),
                        OnUnavailable::LocalFallback => {
                            let replicas = store.replicas();
                            let shares: Vec<(&str, Rate)> = buckets
                                .iter()
                                .map(|&(key, rate)| (key, fallback_rate(rate, replicas)))
                                .collect();
                            Ok(fallback.apply(op, &shares, cost, now))
                        }
                    },
                }
            }
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
