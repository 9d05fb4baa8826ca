//! The proxy half of a `Connection`: the upstream socket, its reader, and the half-close rules.
//!
//! Bytes flow both ways at once, each direction with one chunk in flight: a reader does not
//! read again until its chunk is written to the other side. When one side finishes, what it
//! sent has therefore already been written onwards; the other side's write direction is then
//! shut (a FIN upstream, `close_notify` and a FIN to the client), and the other direction keeps
//! flowing until its side finishes too.

use std::sync::Arc;

use actix::prelude::*;
use tokio::io::AsyncWriteExt;

use super::phase::{Closing, Open, OpenService, Phase};
use super::session::with_limit;
use super::start::spawn_reader;
use super::{Connection, Service};
use crate::connection::reader::ReaderHandle;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::messages::{Inbound, ReadOutcome, Side};
use crate::supervision::stats::Stats;
use crate::upstream::pool::{Connected, UpstreamLease};
use crate::upstream::stream::UpstreamWriteHalf;

/// A proxying connection's upstream side. Dropping it closes the upstream socket, stops its
/// reader and counts the upstream connection closed.
pub(super) struct UpstreamLink {
    /// `None` while a write is in flight, and for good once the client has finished (dropping
    /// an owned write half shuts the socket's write side: the upstream sees a FIN).
    writer: Option<UpstreamWriteHalf>,
    /// The upstream reader lives while this handle does; `None` once the upstream finished.
    reader: Option<ReaderHandle>,
    /// Which side finished first: the disposal reason of a normal end.
    first_finished: Option<Side>,
    stats: Arc<Stats>,
    /// The upstream's place in its "active" count, given back when the link is dropped.
    lease: UpstreamLease,
}

impl UpstreamLink {
    /// The link with its write side shut: the upstream gets its FIN now, what it still sends
    /// is drained until the connection stops.
    pub(super) fn shut_write(mut self) -> UpstreamLink {
        self.writer = None;
        self
    }

    /// The upstream finished (its reader has reported): drop the reader's handle.
    fn finished(&mut self) {
        self.reader = None;
    }
}

impl Drop for UpstreamLink {
    fn drop(&mut self) {
        self.stats.upstream_closed();
    }
}

impl Connection {
    /// Opens the upstream, then starts reading both sides. The client's read half waits in the
    /// phase meanwhile; if the upstream cannot be reached, the close drains the client while it
    /// gets `close_notify`.
    pub(super) fn connect_upstream(&mut self, ctx: &mut Context<Self>) {
        let Service::Proxy(pool) = &self.env.service else {
            return;
        };
        let peer = self.peer;
        let local = self.local.unwrap_or(peer);
        let tls = self.tls.as_deref().cloned();
        let connecting = Arc::clone(pool).connect(self.env.log.clone(), peer, local, tls);
        ctx.spawn(connecting.into_actor(self).map(move |result, act, ctx| {
            // Closed meanwhile: the client's read half went into the close; the upstream
            // socket, if any, is dropped here.
            let Phase::Open(Open {
                service: OpenService::Connecting(_),
                ..
            }) = &act.phase
            else {
                return;
            };
            let Connected {
                stream,
                lease,
                latency,
            } = match result {
                Ok(connected) => connected,
                Err(e) => {
                    log_conn!(warn, act, "upstream connect failed"; "error" => %e);
                    return act.begin_close(DisposeReason::UpstreamConnectFailed, ctx);
                }
            };
            act.env.stats.upstream_opened(latency);
            let (read_half, write_half) = stream.into_split();
            let link = UpstreamLink {
                writer: Some(write_half),
                reader: Some(spawn_reader(&act.env, read_half, Side::Upstream, ctx)),
                first_finished: None,
                stats: Arc::clone(&act.env.stats),
                lease,
            };
            let env = &act.env;
            if let Phase::Open(open) = &mut act.phase {
                let connecting = std::mem::replace(&mut open.service, OpenService::Proxy(link));
                if let OpenService::Connecting(client) = connecting {
                    open.reader = Some(spawn_reader(env, client, Side::Client, ctx));
                }
            }
        }));
    }

    /// The upstream link, while open.
    fn open_link(&mut self) -> Option<&mut UpstreamLink> {
        match &mut self.phase {
            Phase::Open(Open {
                service: OpenService::Proxy(link),
                ..
            }) => Some(link),
            _ => None,
        }
    }

    /// Forwards a chunk to the other side; resolves once it is written.
    pub(super) fn forward(&mut self, msg: Inbound) -> ResponseActFuture<Self, ()> {
        match msg.side {
            Side::Upstream => self.write_to_client(msg.bytes, |act, bytes, written| {
                if written {
                    act.count_proxied(Side::Upstream, bytes.len())
                }
            }),
            Side::Client => self.write_to_upstream(msg.bytes),
        }
    }

    /// Counts bytes written onwards, server-wide and against the upstream.
    fn count_proxied(&self, from: Side, bytes: usize) {
        self.env.stats.proxied(from, bytes);
        let link = match &self.phase {
            Phase::Open(Open {
                service: OpenService::Proxy(link),
                ..
            })
            | Phase::Closing(Closing {
                upstream: Some(link),
                ..
            }) => link,
            _ => return,
        };
        link.lease.proxied(from, bytes);
    }

    fn write_to_upstream(&mut self, bytes: bytes::Bytes) -> ResponseActFuture<Self, ()> {
        let Some(mut writer) = self.open_link().and_then(|link| link.writer.take()) else {
            return Box::pin(fut::ready(()));
        };
        let stall_limit = self.env.config.idle_timeout;
        let write = async move {
            let result = with_limit(stall_limit, writer.write_all(&bytes)).await;
            (writer, bytes.len(), result)
        };
        Box::pin(
            write
                .into_actor(self)
                .map(|(writer, len, result), act, ctx| {
                    // Closing meanwhile: the write half stays dropped (the upstream has its FIN).
                    if let Some(link) = act.open_link() {
                        link.writer = Some(writer);
                    }
                    match result {
                        Ok(()) => act.count_proxied(Side::Client, len),
                        Err(e) => {
                            log_conn!(debug, act, "upstream write failed"; "error" => %e);
                            act.begin_close(DisposeReason::UpstreamError, ctx);
                        }
                    }
                }),
        )
    }

    /// The client finished sending; all of it is upstream already. Pass the FIN on.
    pub(super) fn client_eof_to_upstream(&mut self, ctx: &mut Context<Self>) {
        if let Some(link) = self.open_link() {
            link.first_finished.get_or_insert(Side::Client);
            // Dropping the owned write half is shutdown(SHUT_WR): the upstream reads EOF.
            link.writer = None;
        }
        self.finish_if_both_done(ctx);
    }

    pub(super) fn upstream_finished(&mut self, outcome: ReadOutcome, ctx: &mut Context<Self>) {
        match &mut self.phase {
            Phase::Closing(Closing {
                upstream: Some(link),
                ..
            }) => return link.finished(),
            Phase::Open(Open {
                service: OpenService::Proxy(link),
                ..
            }) => link.finished(),
            _ => return,
        }
        match outcome {
            ReadOutcome::PeerEof { .. } => {
                if let Some(link) = self.open_link() {
                    link.first_finished.get_or_insert(Side::Upstream);
                }
                self.shut_client_write(ctx);
            }
            ReadOutcome::Failed(e) => {
                log_conn!(debug, self, "upstream read failed"; "error" => %e);
                self.begin_close(DisposeReason::UpstreamError, ctx);
            }
        }
    }

    /// The upstream finished and all it sent is written to the client: send `close_notify` and
    /// a FIN, and keep reading the client until it finishes too.
    fn shut_client_write(&mut self, ctx: &mut Context<Self>) {
        let Phase::Open(open) = &mut self.phase else {
            return;
        };
        // Never busy here: the upstream reader reads (and so finishes) only once its previous
        // chunk is written to the client.
        let Some(mut writer) = open.writer.take_ready() else {
            return self.close_notify_sent(ctx);
        };
        let limit = self.env.config.close_timeout;
        let shutdown = async move {
            let _ = tokio::time::timeout(limit, writer.shutdown()).await;
        };
        ctx.spawn(
            shutdown
                .into_actor(self)
                .map(|(), act, ctx| act.close_notify_sent(ctx)),
        );
    }

    /// Stops once both sides have finished and both write directions are shut.
    pub(super) fn finish_if_both_done(&mut self, ctx: &mut Context<Self>) {
        let Phase::Open(Open {
            writer,
            reader,
            service: OpenService::Proxy(link),
            ..
        }) = &self.phase
        else {
            return;
        };
        if reader.is_none() && link.reader.is_none() && writer.is_shut() {
            let reason = match link.first_finished {
                Some(Side::Upstream) => DisposeReason::UpstreamEof,
                _ => DisposeReason::PeerEof,
            };
            self.reason.get_or_insert(reason);
            ctx.stop();
        }
    }
}
