//! How the controllers wait between retries of their watches.
//!
//! kube-runtime applies one backoff to the merged stream of all of a
//! controller's watches (the model, and each kind it owns or watches), and
//! while it sleeps none of them is polled. Its default grows to 30 s: after
//! a kube-apiserver restart, the errors of five watches reconnecting one by
//! one stacked those sleeps into a 3-minute stall with no reconcile
//! (operator/tests/chaos.rs found it). Capped at a few seconds, every watch
//! is back within seconds of the API server; an outage costs the API server
//! one request per watch every few seconds, as client-go's reflectors do.

use std::time::Duration;

use kube::runtime::utils::{Backoff, ResetTimerBackoff};

const FIRST: Duration = Duration::from_millis(250);
const MOST: Duration = Duration::from_secs(4);
/// Quiet this long and the next error starts from FIRST again.
const RESET_AFTER: Duration = Duration::from_secs(30);

/// Exponential from 250 ms, doubling, capped at 4 s.
#[derive(Debug, Clone)]
pub struct WatchRetry {
    next: Duration,
}

impl Default for WatchRetry {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Iterator for WatchRetry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(MOST);
        Some(now)
    }
}

impl Backoff for WatchRetry {
    fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// The backoff every controller of the operator gives its watches.
pub fn watch_backoff() -> ResetTimerBackoff<WatchRetry> {
    ResetTimerBackoff::new(WatchRetry::default(), RESET_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_a_quarter_second_to_a_cap_and_resets() {
        let mut b = WatchRetry::default();
        let waits: Vec<u64> = b.by_ref().take(7).map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next(), Some(FIRST));
    }
}
