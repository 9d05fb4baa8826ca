//! `UpstreamLink`: a proxied connection's hold on its upstream socket's write side and on the
//! upstream's place in the pool.

use std::sync::Arc;

use crate::connection::messages::Side;
use crate::connection::writer::Writer;
use crate::supervision::stats::Stats;
use crate::upstream::pool::UpstreamLease;
use crate::upstream::stream::{UpstreamWatch, UpstreamWriteHalf};

/// The upstream side of a proxied connection (its reader's handle is kept by the phase, beside
/// it). Dropping the link closes the upstream's write half (a FIN, once the read half is gone
/// too the socket closes), gives the upstream's lease back to the pool and counts the
/// upstream connection closed.
pub(super) struct UpstreamLink {
    /// Dropping an owned write half shuts the socket's write side: the upstream reads EOF.
    pub(super) writer: Writer<UpstreamWriteHalf>,
    /// The upstream's socket, watched while a write to the client holds the upstream's reader
    /// back.
    pub(super) watch: UpstreamWatch,
    /// The upstream's place in its "active" count, given back when the link is dropped.
    lease: UpstreamLease,
    stats: Arc<Stats>,
}

impl UpstreamLink {
    /// A link over a connected upstream, counted open from now on.
    pub(super) fn new(
        writer: UpstreamWriteHalf,
        watch: UpstreamWatch,
        lease: UpstreamLease,
        stats: Arc<Stats>,
    ) -> Self {
        UpstreamLink {
            writer: Writer::Ready(writer),
            watch,
            lease,
            stats,
        }
    }

    /// Shuts the write side: the upstream gets its FIN now (or, if a write holds the half,
    /// as soon as that write completes).
    pub(super) fn shut_write(&mut self) {
        drop(self.writer.shut());
    }

    /// Counts bytes written onwards, server-wide and against this upstream.
    pub(super) fn count_proxied(&self, from: Side, bytes: usize) {
        self.stats.proxied(from, bytes);
        self.lease.proxied(from, bytes);
    }
}

impl Drop for UpstreamLink {
    fn drop(&mut self) {
        self.stats.upstream_closed();
    }
}
