//! Connections per service, by label: what `tlsvisor_service_connections_active{service}`,
//! `tlsvisor_service_connections_total{service}` and
//! `tlsvisor_service_connections_refused_total{service}` show. Kept by label, not by service
//! value, so that the figures of a service carry over the reloads that rebuild it; and the
//! active count is also what a service's `max_connections` is checked against, so the figure
//! and the cap can never disagree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One service's figures.
#[derive(Debug, Default)]
pub(crate) struct ServiceCount {
    active: AtomicU64,
    total: AtomicU64,
    /// Clients refused because the service was at its `max_connections`.
    refused: AtomicU64,
}

/// A connection's seat in its service's figures: counted when taken, uncounted from the
/// active ones when dropped (with the connection).
#[derive(Debug)]
pub(crate) struct ServiceSeat(Arc<ServiceCount>);

impl ServiceCount {
    /// Counts one more connection of this service, until the seat is dropped; or, with the
    /// service at `cap` live connections already, counts a refusal and gives no seat. The check
    /// and the increment are one compare-and-swap, so concurrent handshakes on every worker
    /// never seat more than `cap`; the seat's drop (with its connection, once) gives it back.
    /// A reload that lowers `cap` below the live count refuses new clients until enough of
    /// the live ones have ended: none of those is closed for it.
    pub(crate) fn seat_within(self: &Arc<Self>, cap: Option<usize>) -> Option<ServiceSeat> {
        let cap = cap.map_or(u64::MAX, |cap| cap as u64);
        let seated = self
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |active| {
                (active < cap).then_some(active + 1)
            });
        if seated.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(ServiceSeat(Arc::clone(self)))
    }
}

impl Drop for ServiceSeat {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections of one service, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConnections {
    /// The service's label: its first name, or `default`.
    pub service: String,
    /// Connections that chose it and have not ended yet.
    pub active: u64,
    /// Connections that chose it since the server started, and that it admitted.
    pub total: u64,
    /// Clients that chose it and were refused: it was at its `max_connections`.
    pub refused: u64,
}

/// Every label's figures (one per server; a label stays once seen).
#[derive(Debug, Default)]
pub(crate) struct ServiceCounts(Mutex<BTreeMap<String, Arc<ServiceCount>>>);

impl ServiceCounts {
    /// The figures of `label`, created at zero the first time.
    pub(crate) fn of(&self, label: &str) -> Arc<ServiceCount> {
        // Only lookups and inserts happen under the lock: a poisoned map is still whole.
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(label.to_string()).or_default())
    }

    /// Every label's figures, by label.
    pub(crate) fn snapshot(&self) -> Vec<ServiceConnections> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(label, count)| ServiceConnections {
                service: label.clone(),
                active: count.active.load(Ordering::Relaxed),
                total: count.total.load(Ordering::Relaxed),
                refused: count.refused.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_holds_under_concurrent_seats_and_each_drop_gives_one_back() {
        let count = Arc::new(ServiceCount::default());
        let cap = 8;
        let seated: Vec<Vec<ServiceSeat>> = std::thread::scope(|s| {
            let takers: Vec<_> = (0..4)
                .map(|_| {
                    let count = &count;
                    s.spawn(move || {
                        (0..1000)
                            .filter_map(|_| count.seat_within(Some(cap)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            takers.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let held: usize = seated.iter().map(Vec::len).sum();
        assert_eq!(held, cap);
        assert_eq!(count.active.load(Ordering::Relaxed), cap as u64);
        assert_eq!(count.refused.load(Ordering::Relaxed), 4000 - cap as u64);
        drop(seated);
        assert_eq!(count.active.load(Ordering::Relaxed), 0);
        let again = count.seat_within(Some(1)).expect("a seat once one is free");
        assert!(count.seat_within(Some(1)).is_none());
        drop(again);
        assert_eq!(count.total.load(Ordering::Relaxed), cap as u64 + 1);
        assert!(count.seat_within(None).is_some(), "no cap: always seated");
    }
}
