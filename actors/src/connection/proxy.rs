//! The proxy half of a `Connection`: the upstream socket, its reader, and the half-close rules.
//!
//! Bytes flow both ways at once, each direction with one chunk in flight: a reader does not
//! read again until its chunk is written to the other side. When one side finishes, what it
//! sent has therefore already been written onwards; the other side's write direction is then
//! shut (a FIN upstream, `close_notify` and a FIN to the client), and the other direction keeps
//! flowing until its side finishes too.

use std::sync::Arc;

use actix::prelude::*;
use tokio::io::{AsyncWriteExt, ReadHalf};

use super::session::with_limit;
use super::{ConnState, Connection, Service, TlsStream};
use crate::messages::{Inbound, ReadOutcome, Side};
use crate::reader::ReaderHandle;
use crate::upstream_pool::{Connected, UpstreamLease};
use crate::upstream_stream::UpstreamWriteHalf;
use crate::DisposeReason;

/// A proxying connection's upstream side.
pub(super) struct UpstreamLink {
    /// `None` while a write is in flight, and for good once the client has finished (dropping
    /// an owned write half shuts the socket's write side: the upstream sees a FIN).
    writer: Option<UpstreamWriteHalf>,
    /// The upstream reader lives while this handle does.
    reader: Option<ReaderHandle>,
    read_done: bool,
    /// Which side finished first: the disposal reason of a normal end.
    first_finished: Option<Side>,
    /// The upstream's place in its "active" count, given back when the link is dropped.
    lease: UpstreamLease,
}

impl Connection {
    /// Opens the upstream, then starts reading both sides. The client is not read before the
    /// upstream is there to take its bytes; if the upstream cannot be reached the client is read
    /// only to drain it while it gets `close_notify`.
    pub(super) fn connect_upstream(
        &mut self,
        client: ReadHalf<TlsStream>,
        ctx: &mut Context<Self>,
    ) {
        let Service::Proxy(pool) = &self.env.service else {
            return self.start_client_reader(client, ctx);
        };
        let peer = self.peer;
        let local = self.local.unwrap_or(peer);
        let tls = self.tls.as_deref().cloned();
        let connecting = Arc::clone(pool).connect(self.env.log.clone(), peer, local, tls);
        ctx.spawn(connecting.into_actor(self).map(move |result, act, ctx| {
            act.start_client_reader(client, ctx);
            if act.state != ConnState::Open {
                return;
            }
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
            let reader = act.spawn_reader(read_half, Side::Upstream, ctx);
            act.upstream = Some(UpstreamLink {
                writer: Some(write_half),
                reader: Some(reader),
                read_done: false,
                first_finished: None,
                lease,
            });
        }));
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
        if let Some(link) = &self.upstream {
            link.lease.proxied(from, bytes);
        }
    }

    fn write_to_upstream(&mut self, bytes: bytes::Bytes) -> ResponseActFuture<Self, ()> {
        let Some(mut writer) = self.upstream.as_mut().and_then(|link| link.writer.take()) else {
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
                    if let (Some(link), ConnState::Open) = (act.upstream.as_mut(), act.state) {
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
        if let Some(link) = self.upstream.as_mut() {
            link.first_finished.get_or_insert(Side::Client);
            // Dropping the owned write half is shutdown(SHUT_WR): the upstream reads EOF.
            link.writer = None;
        }
        self.finish_if_both_done(ctx);
    }

    pub(super) fn upstream_finished(&mut self, outcome: ReadOutcome, ctx: &mut Context<Self>) {
        let Some(link) = self.upstream.as_mut() else {
            return;
        };
        link.read_done = true;
        link.reader = None;
        if self.state != ConnState::Open {
            return;
        }
        match outcome {
            ReadOutcome::PeerEof { .. } => {
                link.first_finished.get_or_insert(Side::Upstream);
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
        let Some(mut writer) = self.writer.take() else {
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
        let Some(link) = self.upstream.as_ref() else {
            return;
        };
        if self.state == ConnState::Open && self.reader_done && link.read_done && self.close_sent {
            let reason = match link.first_finished {
                Some(Side::Upstream) => DisposeReason::UpstreamEof,
                _ => DisposeReason::PeerEof,
            };
            self.reason.get_or_insert(reason);
            ctx.stop();
        }
    }

    /// Closing: the upstream gets a FIN at once (dropping an owned write half shuts the
    /// socket's write side); what it still sends is drained until the connection stops.
    pub(super) fn shut_upstream_write(&mut self) {
        if let Some(link) = self.upstream.as_mut() {
            link.writer = None;
        }
    }

    /// From the stop hook: stop the upstream reader and close the upstream socket.
    pub(super) fn release_upstream(&mut self) {
        if self.upstream.take().is_some() {
            // Dropping the link drops the reader's handle (it stops) and the write half.
            self.env.stats.upstream_closed();
        }
    }
}
