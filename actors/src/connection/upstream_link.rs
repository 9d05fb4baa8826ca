//! `UpstreamLink`: a proxied connection's hold on its upstream socket's write side and on the
//! upstream's place in the pool.

use std::sync::Arc;

use crate::connection::messages::Side;
use crate::connection::writer::Writer;
use crate::supervision::stats::Stats;
use crate::tls::info::TlsInfo;
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
    /// What the TLS handshake with the upstream negotiated (a TLS group; boxed: a plaintext
    /// upstream pays one pointer).
    pub(super) tls: Option<Box<TlsInfo>>,
}

impl UpstreamLink {
    /// A link over a connected upstream, counted open from now on.
    pub(super) fn new(
        writer: UpstreamWriteHalf,
        watch: UpstreamWatch,
        lease: UpstreamLease,
        stats: Arc<Stats>,
        tls: Option<TlsInfo>,
    ) -> Self {
        UpstreamLink {
            writer: Writer::Ready(writer),
            watch,
            lease,
            stats,
            tls: tls.map(Box::new),
        }
    }

    /// Shuts the write side: a plaintext upstream gets its FIN now (or, if a write holds the
    /// half, as soon as that write completes). A free TLS half is returned: its
    /// `close_notify` and FIN take an asynchronous shutdown (`machine.rs`, `upstream_goodbye`).
    #[must_use = "a TLS half returned must be shut down (or dropped)"]
    pub(super) fn shut_write(&mut self) -> Option<UpstreamWriteHalf> {
        self.writer.shut().filter(UpstreamWriteHalf::is_tls)
    }

    /// [`UpstreamLink::shut_write`] for a connection about to stop (its client is gone): a
    /// free plaintext half goes without the `shutdown(2)` its drop would make, since the
    /// socket's close at the stop sends the same FIN (`UpstreamWriteHalf::close_quietly`).
    #[must_use = "a TLS half returned must be shut down (or dropped)"]
    pub(super) fn shut_write_closing_anyway(&mut self) -> Option<UpstreamWriteHalf> {
        match self.writer.shut() {
            Some(half) if !half.is_tls() => {
                half.close_quietly();
                None
            }
            half => half,
        }
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
