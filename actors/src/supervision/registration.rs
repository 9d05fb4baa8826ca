//! `Registration`: a connection's place in its worker's registry, held as a value.

use std::net::SocketAddr;

use std::sync::Arc;

use actix::dev::SendError;
use actix::{Addr, WeakAddr};
use slog::{error, Logger};

use crate::edge::admission::ConnectionSlot;
use crate::supervision::conn_id::ConnId;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::messages::{Dispose, DisposedVia, Register};
use crate::supervision::registry::{HandlerRegistry, Registered};
use crate::supervision::stats::Stats;

/// The one way a connection enters and leaves the books: creating a `Registration` sends its
/// `Register`, and it sends exactly one `Dispose`, either from
/// [`Registration::dispose`] (called by `Connection::stopped()`, the one intended path) or, if
/// the connection is dropped without its stop hook having run (a panic unwinding where actix
/// skips the hook, a runtime torn down mid-poll), from its `Drop`, marked
/// [`DisposedVia::Fallback`] so the registry counts it: a fallback is a bug to look at, not a
/// second normal path.
///
/// `Register` and `Dispose` are crate-private and only this type sends them, so no code outside
/// it can take a live connection off the books or put a phantom one on them.
pub(crate) struct Registration<C: Registered> {
    id: ConnId,
    registry: Addr<HandlerRegistry<C>>,
    disposed: bool,
    /// The connection's admission, given back as its `Dispose` is sent: the limits count
    /// exactly what the registry counts, and release on the same one path.
    slot: Option<ConnectionSlot>,
    /// Where a `Dispose` that could not be delivered is counted.
    stats: Arc<Stats>,
    log: Logger,
}

impl<C: Registered> Registration<C> {
    /// Registers connection `id` with `registry`, the registry of the worker it runs on. Call
    /// it on that worker, before the connection starts: `Register` and the later `Dispose` then
    /// go through one mailbox in order.
    pub(crate) fn new(
        id: ConnId,
        peer: SocketAddr,
        connection: WeakAddr<C>,
        registry: Addr<HandlerRegistry<C>>,
        stats: Arc<Stats>,
        log: Logger,
    ) -> Self {
        registry.do_send(Register {
            id,
            peer,
            connection,
        });
        Registration {
            id,
            registry,
            disposed: false,
            slot: None,
            stats,
            log,
        }
    }

    /// Releases `slot` when the `Dispose` is sent.
    pub(crate) fn holding(mut self, slot: ConnectionSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// The admission slot held, until the `Dispose` is sent (to add the per-client slots a
    /// PROXY header's original address claims).
    pub(crate) fn slot_mut(&mut self) -> Option<&mut ConnectionSlot> {
        self.slot.as_mut()
    }

    /// Sends the connection's one `Dispose`. Later calls do nothing.
    pub(crate) fn dispose(&mut self, reason: DisposeReason) {
        self.send(reason, DisposedVia::StopHook);
    }

    fn send(&mut self, reason: DisposeReason, via: DisposedVia) {
        if self.disposed {
            return;
        }
        self.disposed = true;
        self.slot = None;
        let dispose = Dispose {
            id: self.id,
            reason,
            via,
        };
        // try_send first: it says whether the registry is still there. A full mailbox is
        // not a loss (do_send ignores the capacity: a burst of disposals never waits here);
        // a closed one is, and is said and counted rather than dropped in silence.
        match self.registry.try_send(dispose) {
            Ok(()) => {}
            Err(SendError::Full(dispose)) => self.registry.do_send(dispose),
            Err(SendError::Closed(dispose)) => {
                self.stats.dispose_lost();
                error!(self.log, "dispose lost: the registry is gone";
                    "conn_id" => dispose.id.0, "reason" => dispose.reason.as_str());
            }
        }
    }
}

impl<C: Registered> Drop for Registration<C> {
    fn drop(&mut self) {
        if self.disposed {
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
