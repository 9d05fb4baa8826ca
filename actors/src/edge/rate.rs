//! Rates of new handshakes: `Rate`, so many a second with a burst, and `HandshakeRate`, the
//! server-wide one every acceptor waits its turn under.
//!
//! A rate is a token bucket kept as one instant (GCRA, the generic cell rate algorithm): the
//! "theoretical arrival time" `tat` at which the bucket would be full again if nothing more
//! came. An event at `now` fits if `tat` is at most `now + tolerance` (the burst less one
//! event, in time), and moves `tat` one interval on. A bucket with `tat <= now` is full: there
//! is nothing left to remember about that client, which is what lets the per-IP table forget
//! an address (`per_ip.rs`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// So many events a second, up to a burst at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rate {
    /// Time one event costs: a second over the rate.
    interval: Duration,
    /// How far ahead of `now` the bucket may be spent: the burst less one event.
    tolerance: Duration,
}

impl Rate {
    /// `per_second` events a second, up to `burst` (at least 1, at most `per_second`) at once;
    /// `None` for a rate of 0 (off).
    fn new(per_second: usize, burst: usize) -> Option<Rate> {
        let per_second = u64::try_from(per_second).ok().filter(|n| *n > 0)?;
        // At least a nanosecond: a rate past 10^9 a second is no limit, and validation keeps
        // rates far below that.
        let interval = Duration::from_nanos((1_000_000_000 / per_second).max(1));
        let burst = u32::try_from(burst.clamp(1, per_second as usize)).unwrap_or(u32::MAX);
        Some(Rate {
            interval,
            tolerance: interval.saturating_mul(burst - 1),
        })
    }

    /// The server-wide handshake rate: a burst of a tenth of a second's worth (at least 1).
    /// Over it accepting slows rather than refusing, so a small burst costs a client a few
    /// milliseconds in the backlog at most, and it spreads handshakes (the CPU the limit is
    /// there to protect) over the second instead of letting a second's worth land at once.
    pub(crate) fn server_wide(per_second: usize) -> Option<Rate> {
        Rate::new(per_second, per_second / 10)
    }

    /// The per-client handshake rate: a burst of a whole second's worth. Over it the client is
    /// refused, not slowed, so a client that opens its pool of N connections at once must fit
    /// (as with haproxy's `sc_conn_rate` over a 1 s period: at most N in any second).
    pub(crate) fn per_client(per_second: usize) -> Option<Rate> {
        Rate::new(per_second, per_second)
    }

    /// Takes one event at `now` from the bucket `tat` if it fits; `false` (and `tat` unchanged)
    /// if it is over the rate.
    pub(crate) fn try_take(&self, tat: &mut Option<Instant>, now: Instant) -> bool {
        let current = tat.map_or(now, |t| t.max(now));
        if current > now + self.tolerance {
            return false;
        }
        *tat = Some(current + self.interval);
        true
    }

    /// Reserves the next event of the bucket `tat`: returns when it may happen (`now`, or the
    /// instant the bucket has room again). Reservations queue one after the other.
    fn reserve(&self, tat: &mut Option<Instant>, now: Instant) -> Instant {
        let current = tat.map_or(now, |t| t.max(now));
        *tat = Some(current + self.interval);
        current
            .checked_sub(self.tolerance)
            .map_or(now, |at| at.max(now))
    }

    /// Whether the bucket `tat` is full again at `now`: nothing is left to remember.
    pub(crate) fn is_refilled(tat: Option<Instant>, now: Instant) -> bool {
        tat.map_or(true, |t| t <= now)
    }
}

/// The server-wide rate of new handshakes, shared by every acceptor of every worker: each
/// waits its turn before it accepts (`Limits::handshake_turn`).
pub(crate) struct HandshakeRate {
    rate: Rate,
    tat: Mutex<Option<Instant>>,
}

impl HandshakeRate {
    pub(crate) fn new(rate: Rate) -> HandshakeRate {
        HandshakeRate {
            rate,
            tat: Mutex::new(None),
        }
    }

    /// Takes the next turn: the instant (`now` or later) at which one more handshake fits
    /// the rate. The caller waits until then; a wait cancelled (a pause, a shutdown) loses the
    /// turn, which only makes the rate a little lower.
    pub(crate) fn next_turn(&self, now: Instant) -> Instant {
        // Only the instant is updated under this lock; a poisoned one is still consistent.
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        self.rate.reserve(&mut tat, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_of_zero_is_off_and_bursts_are_as_documented() {
        assert_eq!(Rate::server_wide(0), None);
        assert_eq!(Rate::per_client(0), None);
        let server = Rate::server_wide(100).unwrap();
        assert_eq!(server.interval, Duration::from_millis(10));
        assert_eq!(server.tolerance, Duration::from_millis(90), "a burst of 10");
        let client = Rate::per_client(5).unwrap();
        assert_eq!(client.tolerance, Duration::from_millis(800), "a burst of 5");
        // A rate below 10 a second still lets one through at once.
        assert_eq!(Rate::server_wide(3).unwrap().tolerance, Duration::ZERO);
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_one_an_interval_and_refills() {
        let rate = Rate::per_client(4).unwrap();
        let start = Instant::now();
        let mut tat = None;
        for _ in 0..4 {
            assert!(rate.try_take(&mut tat, start));
        }
        assert!(!rate.try_take(&mut tat, start), "the burst is spent");
        assert!(!Rate::is_refilled(tat, start));
        let later = start + Duration::from_millis(250);
        assert!(rate.try_take(&mut tat, later), "one more after an interval");
        assert!(!rate.try_take(&mut tat, later));
        assert!(Rate::is_refilled(tat, start + Duration::from_secs(2)));
    }

    #[test]
    fn reservations_queue_one_interval_apart_after_the_burst() {
        let rate = Rate::server_wide(100).unwrap();
        let start = Instant::now();
        let mut tat = None;
        let turns: Vec<Duration> = (0..12)
            .map(|_| rate.reserve(&mut tat, start) - start)
            .collect();
        assert!(turns[..10].iter().all(|t| t.is_zero()), "{turns:?}");
        assert_eq!(turns[10], Duration::from_millis(10));
        assert_eq!(turns[11], Duration::from_millis(20));
        // Idle for a second: the bucket is full again, the next turn is at once.
        let later = start + Duration::from_secs(1);
        assert_eq!(rate.reserve(&mut tat, later), later);
    }
}
