//! Counters shared by the supervisor, the registry and the connections, read by metrics.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::DisposeReason;

/// Why an accepted socket was closed before it became a `Connection`.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_connections` connections were already live.
    MaxConnections,
}

impl RejectReason {
    /// Every reason, in a fixed order.
    pub const ALL: [RejectReason; 1] = [RejectReason::MaxConnections];

    /// The snake_case word used as the `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MaxConnections => "max_connections",
        }
    }
}

/// The registry's books. They live behind one lock so that a reader always sees
/// `accepted == active + disposed`: the registry changes them together, in one critical section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Connections registered so far.
    pub accepted: u64,
    /// Connections registered and not yet disposed (the registry's map size).
    pub active: u64,
    /// Disposals applied, per reason, indexed like [`DisposeReason::ALL`].
    pub disposed: [u64; DisposeReason::ALL.len()],
    /// `Dispose` messages for an id that was already disposed (kept at 0 by design).
    pub duplicates: u64,
    /// Disposals sent by the drop-guard backstop because `stopped()` never ran.
    pub fallbacks: u64,
}

impl Ledger {
    /// All disposals, whatever the reason.
    pub fn disposed_total(&self) -> u64 {
        self.disposed.iter().sum()
    }

    /// Disposals with one reason.
    pub fn disposed_for(&self, reason: DisposeReason) -> u64 {
        self.disposed[reason.index()]
    }

    /// The invariant the design promises at every instant.
    pub fn is_balanced(&self) -> bool {
        self.accepted == self.active + self.disposed_total()
    }
}

/// A consistent view of every counter, taken at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The registry's books.
    pub ledger: Ledger,
    /// Connections in the TLS handshake right now.
    pub handshakes_in_progress: i64,
    /// Sockets closed at accept, per reason, indexed like [`RejectReason::ALL`].
    pub rejected: [u64; RejectReason::ALL.len()],
    /// Errors returned by `accept(2)`.
    pub accept_errors: u64,
}

/// Shared, lock-light counters of one server instance.
#[derive(Debug, Default)]
pub struct Stats {
    ledger: Mutex<Ledger>,
    handshakes_in_progress: AtomicI64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    accept_errors: AtomicU64,
    /// Admitted by the supervisor and not yet disposed: the admission gate's count. It runs ahead
    /// of `ledger.active` by the connections whose `Register` is still in flight.
    admitted: AtomicUsize,
}

impl Stats {
    /// Takes a consistent snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            ledger: self.ledger(),
            handshakes_in_progress: self.handshakes_in_progress.load(Ordering::Relaxed),
            rejected: std::array::from_fn(|i| self.rejected[i].load(Ordering::Relaxed)),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }

    /// The registry's books alone.
    pub fn ledger(&self) -> Ledger {
        self.ledger_lock().clone()
    }

    pub(crate) fn update_ledger(&self, change: impl FnOnce(&mut Ledger)) {
        change(&mut self.ledger_lock());
    }

    fn ledger_lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding this lock can only come from a bug in the few lines that update
        // counters; the counters themselves stay meaningful, so a poisoned lock is still read.
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn handshake_started(&self) {
        self.handshakes_in_progress.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_ended(&self) {
        self.handshakes_in_progress.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, reason: RejectReason) {
        let index = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.rejected[index].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Claims a slot if fewer than `max` connections are admitted.
    pub(crate) fn try_admit(&self, max: usize) -> bool {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn release_admission(&self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}
