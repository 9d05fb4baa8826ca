//! `Writer`: one write direction of a connection (to the client, or to its upstream), which
//! one write at a time holds, and the limit on how long a write may stall.

use std::io;
use std::time::Duration;

/// One write direction: free, held by a write in flight, or shut for good.
pub(super) enum Writer<W> {
    /// Free for the next write.
    Ready(W),
    /// A write holds the half; its completion gives it back with [`Writer::put_back`].
    Busy,
    /// Shut: its end was sent (`close_notify`, a FIN), or given up on. A write in flight when
    /// the direction was shut drops its half when it completes.
    Shut,
}

impl<W> Writer<W> {
    /// Takes the half for a write, leaving `Busy`; `None` if it is not free.
    pub(super) fn take(&mut self) -> Option<W> {
        match std::mem::replace(self, Writer::Busy) {
            Writer::Ready(half) => Some(half),
            other => {
                *self = other;
                None
            }
        }
    }

    /// A write is over: the half becomes free again, unless the direction was shut meanwhile,
    /// in which case the half is handed back to be dropped (for an upstream, that drop is the
    /// FIN).
    pub(super) fn put_back(&mut self, half: W) -> Option<W> {
        match self {
            Writer::Shut => Some(half),
            _ => {
                *self = Writer::Ready(half);
                None
            }
        }
    }

    /// Shuts the direction; the half, if it was free, to be closed by the caller.
    pub(super) fn shut(&mut self) -> Option<W> {
        match std::mem::replace(self, Writer::Shut) {
            Writer::Ready(half) => Some(half),
            _ => None,
        }
    }

    pub(super) fn is_busy(&self) -> bool {
        matches!(self, Writer::Busy)
    }

    pub(super) fn is_shut(&self) -> bool {
        matches!(self, Writer::Shut)
    }
}

/// Runs `work` under an optional time limit; running out is a `TimedOut` I/O error.
pub(super) async fn with_limit<T>(
    limit: Option<Duration>,
    work: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match limit {
        None => work.await,
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled"))),
    }
}
