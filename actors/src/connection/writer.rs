//! `Writer`: one write direction of a connection (to the client, or to its upstream), which
//! one write at a time holds, and the limit on how long a write may stall.

use std::future::Future;
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

/// A write cut short because the socket of the other side failed meanwhile: the peer whose
/// bytes were being written is gone (a reset), and nothing read it while it waited.
pub(super) struct OtherSideFailed(pub(super) io::Error);

/// Runs a write under its stall limit ([`with_limit`]) unless `other_side` (a watch on the
/// socket the bytes came from, `SocketWatch::failed`) resolves first: while a write is stalled
/// its source is not read (one chunk in flight), and only this notices the source resetting.
/// The write is polled first, so one that completes at once never polls the watch.
pub(super) async fn watching<T>(
    limit: Option<Duration>,
    write: impl Future<Output = io::Result<T>>,
    other_side: impl Future<Output = io::Error>,
) -> Result<io::Result<T>, OtherSideFailed> {
    tokio::select! {
        biased;
        written = with_limit(limit, write) => Ok(written),
        failure = other_side => Err(OtherSideFailed(failure)),
    }
}
