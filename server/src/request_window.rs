//! The per-caller request windows behind `auth.policy`'s `input.usage`
//! (a leaf: the state holds one, and `policy` reads the state).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The length of a caller's window of `input.usage`.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Requests per caller in its current window: the window starts at the
/// caller's first request and ends [`WINDOW`] later. Bounded: beyond `max`
/// callers, windows that are over are dropped, then the oldest.
pub struct Windows {
    windows: Mutex<HashMap<String, (Instant, u64)>>,
    max: usize,
}

impl Windows {
    pub fn new(max: usize) -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// Counts one request of `subject` at `now`; returns how many it made
    /// earlier in the same window.
    pub fn count(&self, subject: &str, now: Instant) -> u64 {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !windows.contains_key(subject) && windows.len() >= self.max {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if windows.len() >= self.max
                && let Some(oldest) = windows
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(k, _)| k.clone())
            {
                windows.remove(&oldest);
            }
        }
        let entry = windows.entry(subject.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        let before = entry.1;
        entry.1 += 1;
        before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_earlier_requests_and_restarts_when_over() {
        let w = Windows::new(10);
        let t0 = Instant::now();
        assert_eq!(w.count("a", t0), 0);
        assert_eq!(w.count("a", t0 + Duration::from_secs(1)), 1);
        assert_eq!(w.count("b", t0 + Duration::from_secs(2)), 0);
        assert_eq!(w.count("a", t0 + Duration::from_secs(59)), 2);
        assert_eq!(w.count("a", t0 + WINDOW), 0, "a new window");
        assert_eq!(w.count("a", t0 + WINDOW + Duration::from_secs(1)), 1);
    }

    #[test]
    fn windows_stay_bounded_dropping_the_oldest() {
        let w = Windows::new(2);
        let t0 = Instant::now();
        w.count("a", t0);
        w.count("b", t0 + Duration::from_secs(1));
        w.count("c", t0 + Duration::from_secs(2));
        let map = w.windows.lock().unwrap();
        assert_eq!(map.len(), 2);
        assert!(!map.contains_key("a"), "the oldest went");
    }
}
