//! Keyed token buckets with bounded memory. Used for requests per minute
//! per principal, generated tokens per minute per principal, and failed
//! authentications per client address. Pure apart from a mutex: the caller
//! passes `now`, so tests drive the clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The pace of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Most units available at once (burst).
    pub capacity: f64,
    /// Units added back per second.
    pub per_second: f64,
}

impl Rate {
    /// `per_minute` units a minute, `burst` at once.
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        Self {
            capacity: f64::from(burst.max(1)),
            per_second: f64::from(per_minute.max(1)) / 60.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    updated: Instant,
}

/// The outcome of taking from a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// `remaining` and `reset` (until full) are those of the bucket with
    /// the least left for its capacity, `bucket` (its index): the limit a
    /// caller runs into first, which is what `RateLimit-*` headers report.
    Allowed {
        remaining: u32,
        reset: Duration,
        bucket: usize,
    },
    Denied {
        retry_after: Duration,
    },
}

/// What to do with a set of buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Take the cost from every bucket if each has it, else from none.
    Take,
    /// Whether every bucket has the cost, taking nothing.
    Peek,
    /// Take the cost from every bucket unconditionally (levels may go
    /// negative: debt paid off by waiting).
    Charge,
    /// Give the cost back to every bucket, up to its capacity.
    Refund,
}

impl Op {
    /// The name the store's script reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Take => "take",
            Op::Peek => "peek",
            Op::Charge => "charge",
            Op::Refund => "refund",
        }
    }
}

/// The buckets' levels after an operation, and what the caller is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub levels: Vec<f64>,
    pub decision: Decision,
}

/// The whole decision, given each bucket's level already refilled to now.
/// Pure: the in-memory buckets and the shared store's script both follow
/// it (the script in Lua, next to the data).
pub fn decide(op: Op, levels: &[f64], rates: &[Rate], cost: f64) -> Outcome {
    let retry = levels
        .iter()
        .zip(rates)
        .filter(|(level, _)| **level < cost)
        .map(|(level, rate)| (cost - level) / rate.per_second)
        .fold(None, |acc: Option<f64>, wait| {
            Some(acc.map_or(wait, |a| a.max(wait)))
        });
    let new_levels: Vec<f64> = match (op, retry) {
        (Op::Take, None) | (Op::Charge, _) => levels.iter().map(|l| l - cost).collect(),
        (Op::Refund, _) => levels
            .iter()
            .zip(rates)
            .map(|(l, r)| (l + cost).min(r.capacity))
            .collect(),
        (Op::Take, Some(_)) | (Op::Peek, _) => levels.to_vec(),
    };
    let decision = match (op, retry) {
        (Op::Take | Op::Peek, Some(wait)) => Decision::Denied {
            retry_after: secs(wait),
        },
        _ => match binding(&new_levels, rates) {
            Some(i) => Decision::Allowed {
                remaining: new_levels[i].max(0.0).floor() as u32,
                reset: secs((rates[i].capacity - new_levels[i]) / rates[i].per_second),
                bucket: i,
            },
            None => Decision::Allowed {
                remaining: 0,
                reset: Duration::ZERO,
                bucket: 0,
            },
        },
    };
    Outcome {
        levels: new_levels,
        decision,
    }
}

/// A request's admission in one step: the client address's brute-force
/// guard, then the principal's buckets. The shared store decides both in
/// one script (one round trip); in memory they are two steps (a peek of
/// one failure on the guard, then the buckets' operation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    /// The client address has no failure to spare: refused before any
    /// bucket is touched.
    Throttled { retry_after: Duration },
    /// The guard passed (or there was none): what the buckets decided.
    Decided(Decision),
}

/// The bucket with the least left for its capacity (the first of equals).
fn binding(levels: &[f64], rates: &[Rate]) -> Option<usize> {
    (0..levels.len().min(rates.len())).reduce(|best, i| {
        if levels[i] / rates[i].capacity < levels[best] / rates[best].capacity {
            i
        } else {
            best
        }
    })
}

/// Many buckets, one per key; at most `max_keys` remembered.
#[derive(Debug)]
pub struct KeyedBuckets {
    buckets: Mutex<HashMap<String, Bucket>>,
    max_keys: usize,
}

impl KeyedBuckets {
    pub fn new(max_keys: usize) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// Takes `cost` units if available.
    pub fn take(&self, key: &str, rate: Rate, cost: f64, now: Instant) -> Decision {
        self.apply(Op::Take, &[(key, rate)], cost, now)
    }

    /// Whether at least `cost` units are available, without taking them.
    pub fn peek(&self, key: &str, rate: Rate, cost: f64, now: Instant) -> Decision {
        self.apply(Op::Peek, &[(key, rate)], cost, now)
    }

    /// Takes `amount` units unconditionally; the level may go negative (a
    /// generation that overshot the token quota is paid off by waiting).
    pub fn charge(&self, key: &str, rate: Rate, amount: f64, now: Instant) {
        self.apply(Op::Charge, &[(key, rate)], amount, now);
    }

    /// Gives back `amount` units taken for work that was then not done;
    /// the level never exceeds the capacity.
    pub fn refund(&self, key: &str, rate: Rate, amount: f64, now: Instant) {
        self.apply(Op::Refund, &[(key, rate)], amount, now);
    }

    /// Applies `op` with `cost` to every bucket at once, under one lock: a
    /// take takes from all of them or from none (a request must fit both
    /// the minute's and the day's budget). The decision reports the first
    /// bucket's level and the longest wait of any denying one. The shared
    /// store's script (`shared::BUCKET_SCRIPT`) is the same function.
    pub fn apply(&self, op: Op, buckets: &[(&str, Rate)], cost: f64, now: Instant) -> Decision {
        let mut map = self.lock();
        let mut levels = Vec::with_capacity(buckets.len());
        for &(key, rate) in buckets {
            if !map.contains_key(key) && map.len() >= self.max_keys {
                evict_idlest(&mut map, self.max_keys / 10 + 1);
            }
            let bucket = map.entry(key.to_string()).or_insert(Bucket {
                level: rate.capacity,
                updated: now,
            });
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.level = (bucket.level + elapsed * rate.per_second).min(rate.capacity);
            bucket.updated = now;
            levels.push(bucket.level);
        }
        let rates: Vec<Rate> = buckets.iter().map(|&(_, r)| r).collect();
        let outcome = decide(op, &levels, &rates, cost);
        for (&(key, _), level) in buckets.iter().zip(&outcome.levels) {
            if let Some(bucket) = map.get_mut(key) {
                bucket.level = *level;
            }
        }
        outcome.decision
    }
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        // A panic while holding the lock leaves consistent numbers behind;
        // keep limiting rather than failing every request.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Drops the `count` least recently used buckets. Evicting forgets debt,
/// which only ever favours a client that has been idle the longest.
fn evict_idlest(map: &mut HashMap<String, Bucket>, count: usize) {
    let mut times: Vec<Instant> = map.values().map(|b| b.updated).collect();
    let Some(nth) = count.min(times.len()).checked_sub(1) else {
        return;
    };
    // Linear, not a sort: this runs under the lock once per `count` new
    // keys, and a flood of new keys is exactly when it runs most.
    let (_, &mut cutoff, _) = times.select_nth_unstable(nth);
    map.retain(|_, b| b.updated > cutoff);
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_per_minute_denies_the_eleventh_and_refills() {
        let b = KeyedBuckets::new(100);
        let rate = Rate::per_minute(10, 10);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(
                matches!(b.take("k", rate, 1.0, t0), Decision::Allowed { .. }),
                "request {i}"
            );
        }
        match b.take("k", rate, 1.0, t0) {
            Decision::Denied { retry_after } => assert_eq!(retry_after.as_secs(), 6),
            other => panic!("{other:?}"),
        }
        // Other keys are independent.
        assert!(matches!(
            b.take("other", rate, 1.0, t0),
            Decision::Allowed { .. }
        ));
        // One request's worth refills in 6 seconds.
        assert!(matches!(
            b.take("k", rate, 1.0, t0 + Duration::from_secs(6)),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn charges_can_overdraw_and_peek_does_not_take() {
        let b = KeyedBuckets::new(10);
        let rate = Rate::per_minute(600, 600);
        let t0 = Instant::now();
        assert!(matches!(
            b.peek("k", rate, 1.0, t0),
            Decision::Allowed { remaining: 600, .. }
        ));
        b.charge("k", rate, 700.0, t0);
        match b.peek("k", rate, 1.0, t0) {
            Decision::Denied { retry_after } => assert_eq!(retry_after.as_secs(), 10),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refund_gives_back_up_to_the_capacity() {
        let b = KeyedBuckets::new(10);
        let rate = Rate::per_minute(600, 600);
        let t0 = Instant::now();
        assert!(matches!(
            b.take("k", rate, 500.0, t0),
            Decision::Allowed { remaining: 100, .. }
        ));
        b.refund("k", rate, 500.0, t0);
        assert!(matches!(
            b.peek("k", rate, 1.0, t0),
            Decision::Allowed { remaining: 600, .. }
        ));
        b.refund("k", rate, 500.0, t0);
        assert!(matches!(
            b.peek("k", rate, 1.0, t0),
            Decision::Allowed { remaining: 600, .. }
        ));
    }

    /// The default `limits.maxTrackedClients`.
    const CAP: usize = 10_000;
    const FLOOD: u64 = 1_000_000;

    #[test]
    fn a_million_principals_stay_within_the_cap_and_a_busy_one_stays_limited() {
        let b = KeyedBuckets::new(CAP);
        let rate = Rate::per_minute(10, 10);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(matches!(
                b.take("key:legit", rate, 1.0, t0),
                Decision::Allowed { .. }
            ));
        }
        let mut peak = 0;
        for i in 0..FLOOD {
            // The flood spans one second: no refill for anyone.
            let now = t0 + Duration::from_micros(i);
            b.take(&format!("key:{i}"), rate, 1.0, now);
            peak = peak.max(b.len());
            // The legitimate principal keeps asking and keeps its debt: an
            // active bucket is never among the idlest, so the flood cannot
            // evict it into a fresh burst. ("Active" is relative to the
            // flood: a bucket untouched for ~90% of the cap's worth of new
            // keys is the idlest and is forgotten, which only ever gives
            // its owner a fresh burst.)
            if i % 1_000 == 0 {
                assert!(
                    matches!(b.take("key:legit", rate, 1.0, now), Decision::Denied { .. }),
                    "the busy principal was forgotten after {i} others"
                );
            }
        }
        assert!(peak <= CAP, "{peak} keys tracked, cap {CAP}");
        // Once its bucket refills (one request per 6 s) it is served again,
        // exactly as often as its limit allows.
        let later = t0 + Duration::from_secs(8);
        assert!(matches!(
            b.take("key:legit", rate, 1.0, later),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            b.take("key:legit", rate, 1.0, later),
            Decision::Denied { .. }
        ));
        assert!(b.len() <= CAP);
    }

    /// The brute-force guard's use (see `auth::check_guard` and
    /// `note_failure`): peek, then charge one failure per attempt, keyed by
    /// client address.
    #[test]
    fn a_million_failing_addresses_stay_within_the_cap_and_the_attacker_stays_throttled() {
        let b = KeyedBuckets::new(CAP);
        let rate = Rate::per_minute(20, 20);
        let t0 = Instant::now();
        let attacker = "198.51.100.7";
        for _ in 0..20 {
            b.charge(attacker, rate, 1.0, t0);
        }
        assert!(matches!(
            b.peek(attacker, rate, 1.0, t0),
            Decision::Denied { .. }
        ));
        let mut peak = 0;
        for i in 0..FLOOD {
            let now = t0 + Duration::from_micros(i);
            let address = std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(i));
            let key = address.to_string();
            if matches!(b.peek(&key, rate, 1.0, now), Decision::Allowed { .. }) {
                b.charge(&key, rate, 1.0, now);
            }
            peak = peak.max(b.len());
            if i % 1_000 == 0 {
                // The attacker keeps trying from its own address too.
                assert!(
                    matches!(b.peek(attacker, rate, 1.0, now), Decision::Denied { .. }),
                    "the attacker was forgotten after {i} other addresses"
                );
                b.charge(attacker, rate, 1.0, now);
            }
        }
        assert!(peak <= CAP, "{peak} addresses tracked, cap {CAP}");
        // A new, honest address is not throttled by any of it.
        let now = t0 + Duration::from_secs(1);
        assert!(matches!(
            b.peek("192.0.2.1", rate, 1.0, now),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            b.peek(attacker, rate, 1.0, now),
            Decision::Denied { .. }
        ));
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_idlest() {
        let b = KeyedBuckets::new(100);
        let rate = Rate::per_minute(10, 10);
        let t0 = Instant::now();
        for i in 0..1000u64 {
            b.take(&format!("k{i}"), rate, 1.0, t0 + Duration::from_millis(i));
        }
        assert!(b.len() <= 100, "{}", b.len());
        // The most recent key survived.
        let map = b.lock();
        assert!(map.contains_key("k999"));
    }
}
