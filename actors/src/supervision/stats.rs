//! Counters shared by the supervisor, the registry and the connections, read by metrics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::edge::per_ip::PerIpTable;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::handshake_failures::{
    HandshakeFailure, HandshakeFailureClass, HandshakeFailures,
};
use crate::supervision::labels::labels;
use crate::upstream::books::UpstreamBooks;
use crate::upstream::pool::UpstreamSnapshot;

labels! {
    /// Why an accepted socket was closed before it became a `Connection`.
    ///
    /// The server-wide limits (`max_connections`, `max_handshakes`, `max_handshake_rate`)
    /// reject nothing: at those, the acceptors stop accepting and clients wait in the kernel's
    /// backlog.
    pub enum RejectReason {
        /// The process ran out of file descriptors: the socket was accepted on the spare
        /// descriptor and closed at once, so the client sees a prompt close instead of a hang.
        FdExhausted => "fd_exhausted",
        /// Its client address (IPv6: its /64) was at `max_connections_per_ip` or
        /// `max_handshakes_per_ip`, or over `max_handshake_rate_per_ip`.
        PerIpLimit => "per_ip_limit",
    }
}

/// The registry's books. They live behind one lock so that a reader always sees
/// `accepted == active + disposed`: the registry changes them together, in one critical section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ledger {
    /// Connections registered so far.
    pub accepted: u64,
    /// Connections registered and not yet disposed (the registry's map size).
    pub active: u64,
    /// Disposals applied, per reason, indexed like [`DisposeReason::ALL`] (read through
    /// [`Ledger::disposed`]: adding a reason changes no public type).
    disposed: [u64; DisposeReason::COUNT],
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
    pub fn disposed(&self, reason: DisposeReason) -> u64 {
        self.disposed[reason.index()]
    }

    /// Counts one disposal with `reason` (the registry's, as it applies a `Dispose`).
    pub(crate) fn count_disposed(&mut self, reason: DisposeReason) {
        self.disposed[reason.index()] += 1;
    }

    /// The invariant the design promises at every instant.
    pub fn is_balanced(&self) -> bool {
        self.accepted == self.active + self.disposed_total()
    }
}

/// Upper bounds (seconds) of the upstream connect latency histogram's buckets.
pub const CONNECT_LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A histogram of upstream connect latencies, lock-free.
#[derive(Debug, Default)]
struct LatencyHistogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; CONNECT_LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A point-in-time copy of the connect latency histogram.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct LatencySnapshot {
    /// Cumulative counts, one per bound of [`CONNECT_LATENCY_BUCKETS`].
    pub cumulative: Vec<u64>,
    /// All observations (the +Inf bucket).
    pub count: u64,
    /// Sum of observations, in seconds.
    pub sum_seconds: f64,
}

/// Proxy traffic counters.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ProxySnapshot {
    /// Bytes read from clients and written to upstreams.
    pub bytes_client_to_upstream: u64,
    /// Bytes read from upstreams and written to clients.
    pub bytes_upstream_to_client: u64,
    /// Upstream sockets open now.
    pub upstreams_open: i64,
    /// Upstream connect latencies (successful connects).
    pub connect_latency: LatencySnapshot,
    /// Each upstream's counters and health, by service (see [`Stats::upstreams`]).
    pub upstreams: Vec<UpstreamSnapshot>,
}

/// A consistent view of every counter, taken at one instant.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Snapshot {
    /// The registry's books.
    pub ledger: Ledger,
    /// Connections in the TLS handshake right now.
    pub handshakes_in_progress: i64,
    /// Sockets closed at accept, per reason, indexed like [`RejectReason::ALL`] (read through
    /// [`Snapshot::rejected`]).
    rejected: [u64; RejectReason::COUNT],
    /// Failed handshakes, per class, indexed like [`HandshakeFailureClass::ALL`] (read
    /// through [`Snapshot::handshake_failures`]).
    handshake_failures: [u64; HandshakeFailureClass::COUNT],
    /// Errors returned by `accept(2)`.
    pub accept_errors: u64,
    /// `Dispose` messages that could not be delivered because the registry was gone (each
    /// logged too). 0 unless a guarantee broke: see ARCHITECTURE.md.
    pub dispose_lost: u64,
    /// Acceptors not polling their listener right now: waiting for a connection or handshake
    /// slot or for their turn under the handshake rate, or backing off after the process ran
    /// out of descriptors.
    pub acceptors_paused: i64,
    /// Connections admitted by each worker's acceptor, indexed by worker.
    pub worker_accepted: Vec<u64>,
    /// Client addresses (IPv6: /64 prefixes) holding a per-IP slot, or whose handshake-rate
    /// bucket is still refilling; 0 once no connection is live (with a per-IP rate, a second
    /// or so later).
    pub per_ip_clients: usize,
    /// Proxy traffic (all zero when not proxying).
    pub proxy: ProxySnapshot,
    /// Open connections a revalidation pass found still admitted (`result="kept"`).
    pub revalidated_kept: u64,
    /// Open connections a revalidation pass closed as `credentials_revoked`
    /// (`result="closed"`).
    pub revalidated_closed: u64,
}

impl Snapshot {
    /// Sockets closed at accept with one reason.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()]
    }

    /// Sockets closed at accept, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    /// Failed handshakes of one class (each one is also a disposal, as `handshake_failed`,
    /// `handshake_timeout` or `client_auth_failed`).
    pub fn handshake_failures(&self, class: HandshakeFailureClass) -> u64 {
        self.handshake_failures[class.index()]
    }
}

/// Shared, lock-light counters of one server instance.
#[derive(Debug, Default)]
pub struct Stats {
    acceptors_paused: AtomicI64,
    /// One counter per worker (empty for a `Stats` not made by a server).
    worker_accepted: Box<[AtomicU64]>,
    pub(crate) per_ip: Arc<PerIpTable>,
    ledger: Mutex<Ledger>,
    handshakes_in_progress: AtomicI64,
    rejected: [AtomicU64; RejectReason::COUNT],
    accept_errors: AtomicU64,
    handshake_failures: HandshakeFailures,
    dispose_lost: AtomicU64,
    revalidated_kept: AtomicU64,
    revalidated_closed: AtomicU64,
    bytes_client_to_upstream: AtomicU64,
    bytes_upstream_to_client: AtomicU64,
    upstreams_open: AtomicI64,
    connect_latency: LatencyHistogram,
    /// Every upstream group (each service's), across reloads.
    upstream_books: Arc<UpstreamBooks>,
}

impl Stats {
    /// Counters for a server with `workers` worker arbiters.
    pub(crate) fn for_workers(workers: usize, upstream_books: Arc<UpstreamBooks>) -> Stats {
        Stats {
            worker_accepted: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            upstream_books,
            ..Stats::default()
        }
    }

    /// Takes a consistent snapshot.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            ledger: self.ledger(),
            handshakes_in_progress: self.handshakes_in_progress.load(Ordering::Relaxed),
            rejected: std::array::from_fn(|i| self.rejected[i].load(Ordering::Relaxed)),
            handshake_failures: std::array::from_fn(|i| {
                self.handshake_failures.count(HandshakeFailureClass::ALL[i])
            }),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            dispose_lost: self.dispose_lost.load(Ordering::Relaxed),
            acceptors_paused: self.paused_acceptors(),
            worker_accepted: self
                .worker_accepted
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
            per_ip_clients: self.per_ip.len(),
            proxy: self.proxy_snapshot(),
            revalidated_kept: self.revalidated_kept.load(Ordering::Relaxed),
            revalidated_closed: self.revalidated_closed.load(Ordering::Relaxed),
        }
    }

    /// Counts one verdict of a revalidation pass: kept, or closed.
    pub(crate) fn revalidated(&self, kept: bool) {
        let counter = match kept {
            true => &self.revalidated_kept,
            false => &self.revalidated_closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn proxy_snapshot(&self) -> ProxySnapshot {
        let h = &self.connect_latency;
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(CONNECT_LATENCY_BUCKETS.len());
        for bucket in &h.buckets[..CONNECT_LATENCY_BUCKETS.len()] {
            running += bucket.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let count = running + h.buckets[CONNECT_LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        ProxySnapshot {
            bytes_client_to_upstream: self.bytes_client_to_upstream.load(Ordering::Relaxed),
            bytes_upstream_to_client: self.bytes_upstream_to_client.load(Ordering::Relaxed),
            upstreams_open: self.upstreams_open.load(Ordering::Relaxed),
            connect_latency: LatencySnapshot {
                cumulative,
                count,
                sum_seconds: h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            },
            upstreams: self.upstreams(),
        }
    }

    /// Each upstream's counters and health, of every service's group (the default's first,
    /// then the named services' in their order, each group in configuration order; then the
    /// groups a reload removed, while connections still hold them; empty when nothing
    /// forwards): [`ProxySnapshot::upstreams`] without the rest of a snapshot. An upstream a
    /// reload kept in its service's group keeps its counters.
    pub fn upstreams(&self) -> Vec<UpstreamSnapshot> {
        self.upstream_books.snapshot()
    }

    pub(crate) fn proxied(&self, from: crate::connection::messages::Side, bytes: usize) {
        let counter = match from {
            crate::connection::messages::Side::Client => &self.bytes_client_to_upstream,
            crate::connection::messages::Side::Upstream => &self.bytes_upstream_to_client,
        };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn upstream_opened(&self, latency: std::time::Duration) {
        self.upstreams_open.fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        let slot = CONNECT_LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(CONNECT_LATENCY_BUCKETS.len());
        let h = &self.connect_latency;
        h.buckets[slot].fetch_add(1, Ordering::Relaxed);
        h.sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn upstream_closed(&self) {
        self.upstreams_open.fetch_sub(1, Ordering::Relaxed);
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

    /// The most recent failed handshakes, newest first (at most [`RECENT_FAILURES`](crate::RECENT_FAILURES)).
    pub fn recent_handshake_failures(&self) -> Vec<HandshakeFailure> {
        self.handshake_failures.recent()
    }

    /// Books a failed handshake; `Some(suppressed)` when it should be logged (see
    /// `HandshakeFailures::record`).
    pub(crate) fn handshake_failed(&self, failure: HandshakeFailure) -> Option<u64> {
        self.handshake_failures.record(failure)
    }

    pub(crate) fn handshake_started(&self) {
        self.handshakes_in_progress.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_ended(&self) {
        self.handshakes_in_progress.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, reason: RejectReason, count: u64) {
        // ALL lists the reasons in discriminant order.
        self.rejected[reason.index()].fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn dispose_lost(&self) {
        self.dispose_lost.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn worker_accepted(&self, worker: usize) {
        if let Some(counter) = self.worker_accepted.get(worker) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an acceptor as paused until the returned mark is dropped (so a paused acceptor
    /// that is cancelled, at shutdown, cannot leave the gauge up).
    pub(crate) fn acceptor_paused(&self) -> AcceptorPaused<'_> {
        self.acceptors_paused.fetch_add(1, Ordering::Relaxed);
        AcceptorPaused { stats: self }
    }

    pub(crate) fn paused_acceptors(&self) -> i64 {
        self.acceptors_paused.load(Ordering::Relaxed)
    }
}

/// An acceptor counted in `acceptors_paused` while this lives.
pub(crate) struct AcceptorPaused<'a> {
    stats: &'a Stats,
}

impl Drop for AcceptorPaused<'_> {
    fn drop(&mut self) {
        self.stats.acceptors_paused.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connect_latency_buckets_are_cumulative() {
        let stats = Stats::default();
        stats.upstream_opened(Duration::from_micros(300));
        stats.upstream_opened(Duration::from_millis(30));
        stats.upstream_opened(Duration::from_secs(9));
        let h = stats.snapshot().proxy.connect_latency;
        assert_eq!(h.count, 3);
        assert_eq!(h.cumulative[0], 1); // <= 0.5 ms
        assert_eq!(h.cumulative[6], 2); // <= 50 ms
        assert_eq!(*h.cumulative.last().unwrap(), 2); // <= 5 s; 9 s is only in +Inf
        assert!((h.sum_seconds - 9.0303).abs() < 1e-6);
        assert_eq!(stats.snapshot().proxy.upstreams_open, 3);
    }
}
