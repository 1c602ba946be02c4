//! A circuit breaker around each outbound dependency (OIDC discovery and
//! JWKS, the model hub, the shared store, the web UI's OAuth2 and WeChat
//! Work sign-in calls), so that a dependency that is
//! down costs each request nothing instead of a timeout.
//!
//! ```text
//!            N consecutive failures, or a failure rate
//!   Closed ───────────────────────────────────────────▶ Open
//!     ▲                                                  │ cool-down over:
//!     │ the probe succeeds        the probe fails        ▼ one call probes
//!     └──────────────────────── HalfOpen ────────────────┘
//!                                   └──────▶ Open (cool-down again)
//! ```
//!
//! - Closed: every call goes through; outcomes are counted (consecutive
//!   failures, and the failure share of the last [`BreakerConfig::window`]
//!   calls once at least `minimum_calls` were made).
//! - Open: calls are refused at once ([`Refused`]) until the cool-down is
//!   over; the caller answers from its last good state where it has one
//!   (the OIDC keys), else fails fast.
//! - HalfOpen: exactly one call (the probe) goes through; the others are
//!   refused until it ends. A probe dropped before it reports (its future
//!   cancelled) counts as a failure, so the breaker cannot stay half-open.
//!
//! [`Machine`] is the pure state machine (time is passed in, so it is
//! tested with an injected clock); [`Breaker`] holds one behind a mutex and
//! reports its state as `securechat_circuit_state{target}`: 0 closed,
//! 1 half-open, 2 open.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use securechat_crds::files::config::CircuitBreakerConfig;

/// When a breaker opens and how long it stays open.
pub type BreakerConfig = CircuitBreakerConfig;

/// A breaker's state; the number is the metric's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl State {
    /// The `to` label of `securechat_circuit_transitions_total`.
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

/// A call refused because the circuit is open (or half-open with its probe
/// under way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open after repeated failures; next try in {}s", .retry_in.as_secs().max(1))]
pub struct Refused {
    /// Until the next call may probe.
    pub retry_in: Duration,
}

/// What [`Machine::admit`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: an ordinary call.
    Call,
    /// Half-open: this call is the probe.
    Probe,
}

/// The pure state machine.
#[derive(Debug)]
pub struct Machine {
    config: BreakerConfig,
    state: State,
    consecutive_failures: u32,
    /// Outcomes of the last `window` calls while closed (true: failed).
    recent: VecDeque<bool>,
    opened_at: Option<Instant>,
    probing: bool,
}

impl Machine {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: State::Closed,
            consecutive_failures: 0,
            recent: VecDeque::new(),
            opened_at: None,
            probing: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a call may go out at `now`; the state it moved to, if any.
    pub fn admit(&mut self, now: Instant) -> (Result<Admission, Refused>, Option<State>) {
        let cool_down = self.config.cool_down.as_std();
        match self.state {
            State::Closed => (Ok(Admission::Call), None),
            State::Open => {
                let since = self.opened_at.map_or(cool_down, |t| now.duration_since(t));
                if since >= cool_down {
                    self.state = State::HalfOpen;
                    self.probing = true;
                    (Ok(Admission::Probe), Some(State::HalfOpen))
                } else {
                    let retry_in = cool_down - since;
                    (Err(Refused { retry_in }), None)
                }
            }
            State::HalfOpen if !self.probing => {
                self.probing = true;
                (Ok(Admission::Probe), None)
            }
            State::HalfOpen => (
                Err(Refused {
                    retry_in: Duration::ZERO,
                }),
                None,
            ),
        }
    }

    /// Records how an admitted call ended; the state it moved to, if any.
    pub fn record(&mut self, admission: Admission, ok: bool, now: Instant) -> Option<State> {
        match (admission, self.state) {
            (Admission::Probe, State::HalfOpen) => {
                self.probing = false;
                if ok { self.close() } else { self.open(now) }
            }
            (Admission::Call, State::Closed) => {
                let window = self.config.window.max(1) as usize;
                self.recent.push_back(!ok);
                while self.recent.len() > window {
                    self.recent.pop_front();
                }
                if ok {
                    self.consecutive_failures = 0;
                    return None;
                }
                self.consecutive_failures += 1;
                let failures = self.recent.iter().filter(|f| **f).count() as u64;
                let calls = self.recent.len() as u64;
                let rate_tripped = calls >= u64::from(self.config.minimum_calls.max(1))
                    && failures * 100 >= u64::from(self.config.failure_rate_percent) * calls;
                if self.consecutive_failures >= self.config.consecutive_failures.max(1)
                    || rate_tripped
                {
                    self.open(now)
                } else {
                    None
                }
            }
            // A call admitted in another state ended after the breaker
            // moved on (calls overlap): its outcome is old news.
            _ => None,
        }
    }

    fn open(&mut self, now: Instant) -> Option<State> {
        self.state = State::Open;
        self.opened_at = Some(now);
        self.probing = false;
        Some(State::Open)
    }

    fn close(&mut self) -> Option<State> {
        self.state = State::Closed;
        self.consecutive_failures = 0;
        self.recent.clear();
        self.opened_at = None;
        Some(State::Closed)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub target: String,
    pub to: String,
}

/// The metric families breakers report into (clones of the registry's;
/// `Default` gives detached ones, for code run without a registry).
#[derive(Clone, Default)]
pub struct CircuitMetrics {
    pub state: Family<TargetLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
}

/// A breaker shared by the callers of one dependency.
pub struct Breaker {
    target: String,
    machine: Mutex<Machine>,
    metrics: CircuitMetrics,
}

impl Breaker {
    /// A closed breaker for `target` (the metric's label), reported as 0.
    pub fn new(target: impl Into<String>, config: BreakerConfig, metrics: CircuitMetrics) -> Self {
        let target = target.into();
        metrics
            .state
            .get_or_create(&TargetLabels {
                target: target.clone(),
            })
            .set(State::Closed as i64);
        Self {
            target,
            machine: Mutex::new(Machine::new(config)),
            metrics,
        }
    }

    pub fn state(&self) -> State {
        self.machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .state()
    }

    fn moved(&self, to: Option<State>) {
        let Some(to) = to else { return };
        self.metrics
            .state
            .get_or_create(&TargetLabels {
                target: self.target.clone(),
            })
            .set(to as i64);
        self.metrics
            .transitions
            .get_or_create(&TransitionLabels {
                target: self.target.clone(),
                to: to.label().into(),
            })
            .inc();
        match to {
            State::Open => {
                tracing::warn!(target_dependency = %self.target, "circuit open: failing fast")
            }
            State::HalfOpen => {
                tracing::info!(target_dependency = %self.target, "circuit half-open: probing")
            }
            State::Closed => {
                tracing::info!(target_dependency = %self.target, "circuit closed: the dependency answers again")
            }
        }
    }

    /// Asks to make one call; the permit reports its outcome.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Refused> {
        let (admission, moved) = self
            .machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(Instant::now());
        self.moved(moved);
        Ok(Permit {
            breaker: self.clone(),
            admission: admission?,
            reported: false,
        })
    }

    /// Runs `call` under the breaker: refused at once while open, its
    /// outcome recorded (`is_failure` says which errors are the
    /// dependency's fault: a 404 is an answer, a timeout is not).
    pub async fn call<T, E>(
        self: &Arc<Self>,
        call: impl Future<Output = Result<T, E>>,
        is_failure: impl FnOnce(&E) -> bool,
    ) -> Result<Result<T, E>, Refused> {
        let permit = self.admit()?;
        let result = call.await;
        permit.report(match &result {
            Ok(_) => true,
            Err(e) => !is_failure(e),
        });
        Ok(result)
    }
}

/// One admitted call. Dropped without [`Permit::report`] (the caller's
/// future was cancelled) it counts as a failure.
pub struct Permit {
    breaker: Arc<Breaker>,
    admission: Admission,
    reported: bool,
}

impl Permit {
    pub fn report(mut self, ok: bool) {
        self.finish(ok);
    }

    fn finish(&mut self, ok: bool) {
        self.reported = true;
        let moved = self
            .breaker
            .machine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(self.admission, ok, Instant::now());
        self.breaker.moved(moved);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.finish(false);
        }
    }
}

/// Breakers made on first use, one per target, for dependencies that the
/// config names by the handful (the web UI's sign-in providers), so the
/// map holds at most one entry per configured provider.
pub struct Breakers {
    config: BreakerConfig,
    metrics: CircuitMetrics,
    by_target: Mutex<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    pub fn new(config: BreakerConfig, metrics: CircuitMetrics) -> Self {
        Self {
            config,
            metrics,
            by_target: Mutex::new(HashMap::new()),
        }
    }

    /// The breaker of `target`, closed when first asked for.
    pub fn get(&self, target: &str) -> Arc<Breaker> {
        let mut by_target = self.by_target.lock().unwrap_or_else(|e| e.into_inner());
        by_target
            .entry(target.to_string())
            .or_insert_with(|| Arc::new(Breaker::new(target, self.config, self.metrics.clone())))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use securechat_crds::Duration as SpecDuration;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate_percent: 50,
            minimum_calls: 6,
            window: 10,
            cool_down: SpecDuration::from_secs(10),
        }
    }

    fn call(m: &mut Machine, ok: bool, now: Instant) -> Option<State> {
        let (admission, _) = m.admit(now);
        m.record(admission.expect("admitted"), ok, now)
    }

    #[test]
    fn opens_after_consecutive_failures_and_refuses_until_the_cool_down() {
        let t0 = Instant::now();
        let mut m = Machine::new(config());
        assert_eq!(call(&mut m, false, t0), None);
        assert_eq!(call(&mut m, true, t0), None, "a success resets the run");
        assert_eq!(call(&mut m, false, t0), None);
        assert_eq!(call(&mut m, false, t0), None);
        assert_eq!(call(&mut m, false, t0), Some(State::Open));
        let (refused, moved) = m.admit(t0 + Duration::from_secs(4));
        assert_eq!(
            refused,
            Err(Refused {
                retry_in: Duration::from_secs(6)
            })
        );
        assert_eq!(moved, None);
    }

    #[test]
    fn opens_on_the_failure_rate_without_a_long_run() {
        let t0 = Instant::now();
        let mut m = Machine::new(config());
        // F S F S F: 3 of 5 failed, but fewer than minimum_calls.
        for ok in [false, true, false, true, false] {
            assert_eq!(call(&mut m, ok, t0), None);
        }
        // The sixth call: 3 failures of 6 is 50%.
        assert_eq!(call(&mut m, true, t0), None, "a success never opens");
        assert_eq!(call(&mut m, false, t0), Some(State::Open), "4 of 7");
    }

    #[test]
    fn a_probe_after_the_cool_down_closes_or_reopens() {
        let t0 = Instant::now();
        let mut m = Machine::new(config());
        for _ in 0..3 {
            call(&mut m, false, t0);
        }
        assert_eq!(m.state(), State::Open);
        let t1 = t0 + Duration::from_secs(10);
        let (probe, moved) = m.admit(t1);
        assert_eq!(
            (probe, moved),
            (Ok(Admission::Probe), Some(State::HalfOpen))
        );
        assert!(m.admit(t1).0.is_err(), "one probe at a time");
        assert_eq!(m.record(Admission::Probe, false, t1), Some(State::Open));
        assert!(
            m.admit(t1 + Duration::from_secs(9)).0.is_err(),
            "a failed probe restarts the cool-down"
        );
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(m.admit(t2).0, Ok(Admission::Probe));
        assert_eq!(m.record(Admission::Probe, true, t2), Some(State::Closed));
        // Closed again with a clean slate: two failures do not reopen it.
        assert_eq!(call(&mut m, false, t2), None);
        assert_eq!(call(&mut m, false, t2), None);
        assert_eq!(m.state(), State::Closed);
    }

    #[test]
    fn late_outcomes_of_calls_from_an_earlier_state_are_ignored() {
        let t0 = Instant::now();
        let mut m = Machine::new(config());
        let (slow, _) = m.admit(t0);
        for _ in 0..3 {
            call(&mut m, false, t0);
        }
        assert_eq!(m.record(slow.unwrap(), true, t0), None);
        assert_eq!(m.state(), State::Open, "a late success does not close it");
    }

    #[test]
    fn the_breaker_reports_its_state_and_a_dropped_probe_counts_as_failed() {
        let metrics = CircuitMetrics::default();
        let mut cfg = config();
        cfg.consecutive_failures = 1;
        cfg.cool_down = SpecDuration::from_secs(0);
        let b = Arc::new(Breaker::new("test", cfg, metrics.clone()));
        let gauge = || {
            metrics
                .state
                .get_or_create(&TargetLabels {
                    target: "test".into(),
                })
                .get()
        };
        assert_eq!(gauge(), 0);
        b.admit().unwrap().report(false);
        assert_eq!(gauge(), 2);
        let probe = b.admit().unwrap();
        assert_eq!(gauge(), 1);
        drop(probe);
        assert_eq!(b.state(), State::Open);
        b.admit().unwrap().report(true);
        assert_eq!(gauge(), 0);
        let to = |s: &str| {
            metrics
                .transitions
                .get_or_create(&TransitionLabels {
                    target: "test".into(),
                    to: s.into(),
                })
                .get()
        };
        assert_eq!((to("open"), to("half_open"), to("closed")), (2, 2, 1));
    }
}
