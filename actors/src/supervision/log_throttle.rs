//! `LogThrottle`: at most one line a second for a warning that any client can cause, with how
//! many were left out since the last one. A flood of clients while an upstream is down wrote
//! one `upstream connect failed` warning each (16,554 in the million-connection soak); the
//! disposal reason and the counters still record every one, the log says it once a second.
//! Used for the connections' warnings, the acceptors' and each class of failed handshake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// One throttled warning, shared by every connection of a server. Lock-free: two atomics.
///
/// Public for embedders whose protocols log what a client can cause: share one per warning,
/// and write the line only when [`LogThrottle::admit`] says so, with the count it gives.
#[derive(Debug, Default)]
pub struct LogThrottle {
    /// The second (since the Unix epoch) of the last line written; 0 before the first.
    last_second: AtomicU64,
    /// Warnings left out since the last line written.
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// A throttle that has written no line yet.
    pub fn new() -> LogThrottle {
        LogThrottle::default()
    }

    /// Whether to write the line now: `Some(n)` with the `n` left out since the last line,
    /// or `None` to leave this one out (it is counted).
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.admit_at(now)
    }

    /// [`LogThrottle::admit`] at `second` (since the Unix epoch).
    pub(crate) fn admit_at(&self, second: u64) -> Option<u64> {
        let last = self.last_second.load(Ordering::Relaxed);
        // Of the connections that race here in a new second, the one whose exchange wins
        // writes the line; the others count themselves out.
        if last != second
            && self
                .last_second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The throttled warnings of one server's connections.
#[derive(Debug, Default)]
pub(crate) struct Throttles {
    /// A connect to an upstream failed (an upstream down fails every client's connect).
    pub(crate) upstream_connect_failed: LogThrottle,
    /// The protocol refused a client's input (a client can send bad input in a loop).
    pub(crate) session_refused_input: LogThrottle,
    /// A client was refused because its service was full (a busy service refuses many).
    pub(crate) service_limit: LogThrottle,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_left_out() {
        let throttle = LogThrottle::default();
        assert_eq!(throttle.admit_at(100), Some(0));
        assert_eq!(throttle.admit_at(100), None);
        assert_eq!(throttle.admit_at(100), None);
        assert_eq!(throttle.admit_at(101), Some(2));
        assert_eq!(throttle.admit_at(101), None);
        assert_eq!(throttle.admit_at(105), Some(1));
    }
}
