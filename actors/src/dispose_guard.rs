//! The backstop behind `Connection::stopped()`.

use actix::Addr;
use slog::{error, Logger};

use crate::admission::ConnectionSlot;
use crate::messages::{Dispose, DisposedVia};
use crate::{ConnId, DisposeReason, HandlerRegistry};

/// Owns the duty to send one connection's `Dispose`.
///
/// `Connection::stopped()` discharges it with [`DisposeGuard::dispose`]. If the connection is
/// dropped without its stop hook having run (a panic unwinding in a state where actix skips the
/// hook, a runtime torn down mid-poll) the guard's `Drop` sends the `Dispose` instead, marked
/// [`DisposedVia::Fallback`] so the registry counts it: a fallback is a bug to look at, not a
/// second normal path.
pub(crate) struct DisposeGuard {
    id: ConnId,
    registry: Addr<HandlerRegistry>,
    discharged: bool,
    /// The connection's admission, given back as its `Dispose` is sent: the limits count
    /// exactly what the registry counts, and release on the same one path.
    slot: Option<ConnectionSlot>,
    log: Logger,
}

impl DisposeGuard {
    pub(crate) fn new(id: ConnId, registry: Addr<HandlerRegistry>, log: Logger) -> Self {
        DisposeGuard {
            id,
            registry,
            discharged: false,
            slot: None,
            log,
        }
    }

    /// Releases `slot` when the `Dispose` is sent.
    pub(crate) fn holding(mut self, slot: ConnectionSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// Sends the connection's one `Dispose`. Later calls do nothing.
    pub(crate) fn dispose(&mut self, reason: DisposeReason) {
        self.send(reason, DisposedVia::StopHook);
    }

    fn send(&mut self, reason: DisposeReason, via: DisposedVia) {
        if self.discharged {
            return;
        }
        self.discharged = true;
        self.slot = None;
        // do_send ignores the mailbox's capacity: a burst of disposals never waits here.
        self.registry.do_send(Dispose {
            id: self.id,
            reason,
            via,
        });
    }
}

impl Drop for DisposeGuard {
    fn drop(&mut self) {
        if self.discharged {
            return;
        }
        let reason = if std::thread::panicking() {
            DisposeReason::SessionPanic
        } else {
            DisposeReason::Shutdown
        };
        error!(self.log, "connection dropped without its stop hook; disposing from the guard";
            "conn_id" => self.id.0, "reason" => reason.as_str());
        self.send(reason, DisposedVia::Fallback);
    }
}
