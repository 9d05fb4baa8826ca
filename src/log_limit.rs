//! `LogLimit`: at most one log line per interval for a warning any client can trigger, with
//! how many were left out since the last one. Without it, one client sending bad requests in
//! a loop writes the log as fast as it can send (15,010 lines in 5 s were seen for the admin
//! API's 401), hiding everything else and filling the disk.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The state of one rate-limited warning.
pub(crate) struct LogLimit {
    every: Duration,
    /// When the last line was written, and how many were left out since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    /// At most one line per `every`.
    pub(crate) fn new(every: Duration) -> LogLimit {
        LogLimit {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether to write the line for an event at `now`: `Some(n)` with the `n` events left
    /// out since the last line written, or `None` to leave this one out (it is counted).
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        // A panic while the lock was held cannot leave the pair inconsistent: take it as is.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        match *last {
            Some(at) if now.saturating_duration_since(at) < self.every => {
                *suppressed = suppressed.saturating_add(1);
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let limit = LogLimit::new(Duration::from_secs(1));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(limit.admit(at(0)), Some(0));
        assert_eq!(limit.admit(at(1)), None);
        assert_eq!(limit.admit(at(999)), None);
        assert_eq!(limit.admit(at(1000)), Some(2));
        assert_eq!(limit.admit(at(1500)), None);
        assert_eq!(limit.admit(at(5000)), Some(1));
        assert_eq!(limit.admit(at(6000)), Some(0));
    }
}
