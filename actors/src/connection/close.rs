//! How a connection ends: the reason, the graceful close (flush, `close_notify`, FIN, a
//! bounded linger for the client's own end), the idle timer, and the client finishing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use actix::prelude::*;
use tokio::io::AsyncWriteExt;

use super::phase::{ClientWriter, Closing, Open, OpenService, Phase, SessionState};
use super::proxy::UpstreamLink;
use super::start::spawn_reader;
use super::Connection;
use crate::connection::reader::ReaderHandle;
use crate::protocol::Flow;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::messages::{Close, CloseMode, ReadOutcome, Side};

impl Connection {
    /// Starts closing with `reason` (kept only if no reason was recorded before). An open
    /// connection closes gracefully, bounded by the close timeout; one without a TLS session yet
    /// stops at once.
    pub(super) fn begin_close(&mut self, reason: DisposeReason, ctx: &mut Context<Self>) {
        self.reason.get_or_insert(reason);
        match std::mem::replace(&mut self.phase, Phase::Disposed) {
            Phase::Open(open) => self.close_open(open, ctx),
            // Nothing to say goodbye on: what the phase holds goes as the actor stops.
            early @ (Phase::Accepted(_) | Phase::Handshaking { .. }) => {
                self.phase = early;
                ctx.stop();
            }
            already @ (Phase::Closing(_) | Phase::Disposed) => self.phase = already,
        }
    }

    /// Open → Closing: the session is dropped (what it had not written yet is kept), a proxy's
    /// upstream gets its FIN, a client not read yet starts being drained.
    fn close_open(&mut self, open: Open, ctx: &mut Context<Self>) {
        if let Some(timer) = open.idle_timer {
            ctx.cancel_future(timer);
        }
        let mut reader = open.reader;
        let (pending, upstream) = match open.service {
            OpenService::Session(SessionState { session, reply }) => {
                // A session may be in any state after a panic, and a panic in its Drop must
                // not take the connection's close with it.
                let _ = catch_unwind(AssertUnwindSafe(move || drop(session)));
                (reply, None)
            }
            OpenService::Connecting(client) => {
                reader = Some(spawn_reader(&self.env, client, Side::Client, ctx));
                (Vec::new(), None)
            }
            // Dropping the owned write half is shutdown(SHUT_WR): the upstream gets its FIN
            // now rather than when the actor stops; what it still sends is drained.
            OpenService::Proxy(link) => (Vec::new(), Some(link.shut_write())),
        };
        self.enter_closing(open.writer, reader, pending, upstream, ctx);
    }

    /// Enters `Closing` with what the open phase left, bounded by one deadline for the whole
    /// close: a write in flight to a client that does not read must not hold a graceful close
    /// (a kill, a shutdown) open. The flush and the linger each get `close_timeout`; the
    /// deadline bounds both together.
    pub(super) fn enter_closing(
        &mut self,
        writer: ClientWriter,
        reader: Option<ReaderHandle>,
        pending: Vec<u8>,
        upstream: Option<UpstreamLink>,
        ctx: &mut Context<Self>,
    ) {
        let busy = writer.is_busy();
        self.phase = Phase::Closing(Closing {
            writer,
            reader,
            pending,
            upstream,
        });
        let deadline = self.env.config.close_timeout.saturating_mul(2);
        ctx.run_later(deadline, |_, ctx| ctx.stop());
        // A write in flight holds the write half; its completion finishes the close.
        if !busy {
            self.finish_close(ctx);
        }
    }

    /// Writes what is left of the reply, sends `close_notify` and shuts the TCP write side
    /// (FIN), then stops once the client has finished too, or after the close timeout. Lingering
    /// until the client's FIN keeps an unread byte from turning our close into a reset, which
    /// could destroy the `close_notify` before the client reads it.
    pub(super) fn finish_close(&mut self, ctx: &mut Context<Self>) {
        let Phase::Closing(closing) = &mut self.phase else {
            return;
        };
        let Some(mut writer) = closing.writer.take_ready() else {
            // Shut already (a proxy half-close sent it): nothing more to say, but the client
            // may still be sending, so linger as after any close_notify. Busy: a proxy
            // half-close is shutting it right now, and that future's completion goes on.
            if closing.writer.is_shut() {
                self.close_notify_sent(ctx);
            }
            return;
        };
        let pending = std::mem::take(&mut closing.pending);
        let limit = self.env.config.close_timeout;
        let shutdown = async move {
            let _ = tokio::time::timeout(limit, async {
                if !pending.is_empty() {
                    writer.write_all(&pending).await?;
                }
                // tokio-rustls: queue close_notify, flush it, then shutdown(SHUT_WR) the socket.
                writer.shutdown().await
            })
            .await;
        };
        ctx.spawn(
            shutdown
                .into_actor(self)
                .map(|(), act, ctx| act.close_notify_sent(ctx)),
        );
    }

    /// Our `close_notify` and FIN are out (or the close timeout gave up on them). Closing: stop
    /// once the client has finished, or after the close timeout. Still open: a proxy
    /// half-close, which goes on until both sides are done.
    pub(super) fn close_notify_sent(&mut self, ctx: &mut Context<Self>) {
        match &mut self.phase {
            Phase::Open(open) => {
                open.writer = ClientWriter::Shut;
                self.finish_if_both_done(ctx);
            }
            Phase::Closing(closing) => {
                closing.writer = ClientWriter::Shut;
                if closing.reader.is_none() {
                    ctx.stop();
                } else {
                    ctx.run_later(self.env.config.close_timeout, |_, ctx| ctx.stop());
                }
            }
            _ => {}
        }
    }

    /// One timer per idle period, not per read: on expiry it re-arms for what is left.
    pub(super) fn arm_idle_timer(&mut self, after: Duration, ctx: &mut Context<Self>) {
        let timer = ctx.run_later(after, |act, ctx| {
            let (Some(limit), Phase::Open(open)) = (act.env.config.idle_timeout, &act.phase) else {
                return;
            };
            // A write in flight is the client not reading, not the client idle: the write's own
            // stall limit ends that one, as a writer_error.
            if open.writer.is_busy() {
                return act.arm_idle_timer(limit, ctx);
            }
            let idle = open.last_read.elapsed();
            if idle >= limit {
                act.begin_close(DisposeReason::IdleTimeout, ctx);
            } else {
                act.arm_idle_timer(limit - idle, ctx);
            }
        });
        if let Phase::Open(open) = &mut self.phase {
            open.idle_timer = Some(timer);
        }
    }

    /// The client finished sending or failed.
    pub(super) fn client_finished(&mut self, outcome: ReadOutcome, ctx: &mut Context<Self>) {
        let proxying = match &mut self.phase {
            Phase::Open(open) => {
                open.reader = None;
                matches!(open.service, OpenService::Proxy(_))
            }
            Phase::Closing(closing) => {
                closing.reader = None;
                // Lingering close: the client has finished too. Stop, unless our
                // close_notify is still being flushed; that future stops the actor once done.
                if closing.writer.is_shut() {
                    ctx.stop();
                }
                return;
            }
            _ => return,
        };
        match outcome {
            ReadOutcome::PeerEof { clean } => {
                self.clean_eof = Some(clean);
                // A TLS client ends its half with close_notify; a FIN without one is a client
                // that died (killed, crashed: its kernel sent the FIN) or a truncated stream.
                // Only a clean end is passed on as a half-close, which keeps the client's side
                // waiting for the upstream to finish; an unclean one closes both sides now
                // (what the client sent is upstream already; the upstream gets its FIN).
                if proxying && clean {
                    return self.client_eof_to_upstream(ctx);
                }
                let reason = self
                    .run_session(|session, reply| {
                        session.on_peer_finished(reply);
                        // The client is done either way; the connection closes after this.
                        Ok(Flow::Close)
                    })
                    .err()
                    .unwrap_or(DisposeReason::PeerEof);
                self.begin_close(reason, ctx);
            }
            ReadOutcome::Failed(e) if is_reset(&e) => {
                // The client's socket is gone (a reset: it was killed, or crashed): nothing
                // can reach it, so no close_notify is attempted; a burst of killed clients
                // costs one stop each.
                log_conn!(debug, self, "connection reset by the client"; "error" => %e);
                self.reason.get_or_insert(DisposeReason::ReaderError);
                ctx.stop();
            }
            ReadOutcome::Failed(e) => {
                log_conn!(debug, self, "read failed"; "error" => %e);
                self.begin_close(DisposeReason::ReaderError, ctx);
            }
        }
    }
}

impl Handler<Close> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Self::Context) {
        match msg.mode {
            CloseMode::Graceful => self.begin_close(msg.reason, ctx),
            CloseMode::Force => {
                self.reason.get_or_insert(msg.reason);
                ctx.stop();
            }
        }
    }
}

/// Whether a read failed because the peer's socket is gone (nothing more can be sent to it).
fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}
