//! Connections per service, by label: what `tlsvisor_service_connections_active{service}` and
//! `tlsvisor_service_connections_total{service}` show. Kept by label, not by service value, so
//! that the figures of a service carry over the reloads that rebuild it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One service's figures.
#[derive(Debug, Default)]
pub(crate) struct ServiceCount {
    active: AtomicU64,
    total: AtomicU64,
}

/// A connection's seat in its service's figures: counted when taken, uncounted from the
/// active ones when dropped (with the connection).
#[derive(Debug)]
pub(crate) struct ServiceSeat(Arc<ServiceCount>);

impl ServiceCount {
    /// Counts one more connection of this service, until the seat is dropped.
    pub(crate) fn seat(self: &Arc<Self>) -> ServiceSeat {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ServiceSeat(Arc::clone(self))
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
    /// Connections that chose it since the server started.
    pub total: u64,
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
            })
            .collect()
    }
}
