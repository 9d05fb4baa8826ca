//! How a connection ends: the reason, the graceful close (flush, `close_notify`, FIN, a
//! bounded linger for the client's own end), the idle timer, and the client finishing.

use actix::prelude::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

use super::{ConnState, Connection};
use crate::messages::{Close, CloseMode, ReadOutcome};
use crate::{DisposeReason, Flow};

impl Connection {
    /// Starts closing with `reason` (kept only if no reason was recorded before). An open
    /// connection closes gracefully, bounded by the close timeout; one without a TLS session yet
    /// stops at once.
    pub(super) fn begin_close(&mut self, reason: DisposeReason, ctx: &mut Context<Self>) {
        self.reason.get_or_insert(reason);
        match self.state {
            ConnState::Closing | ConnState::Disposed => {}
            ConnState::Registered | ConnState::Handshaking => ctx.stop(),
            ConnState::Open => {
                self.state = ConnState::Closing;
                // The upstream, if any, gets its FIN now rather than when the actor stops.
                self.shut_upstream_write();
                // One deadline for the whole close: a write in flight to a client that does not
                // read must not hold a graceful close (a kill, a shutdown) open. The flush and
                // the linger each get close_timeout; this bounds both together.
                let deadline = self.env.config.close_timeout.saturating_mul(2);
                ctx.run_later(deadline, |_, ctx| ctx.stop());
                // A write in flight holds the write half; its completion finishes the close.
                if !self.write_in_flight {
                    self.finish_close(ctx);
                }
            }
        }
    }

    /// Writes what is left of the reply, sends `close_notify` and shuts the TCP write side
    /// (FIN), then stops once the client has finished too, or after the close timeout. Lingering
    /// until the client's FIN keeps an unread byte from turning our close into a reset, which
    /// could destroy the `close_notify` before the client reads it.
    pub(super) fn finish_close(&mut self, ctx: &mut Context<Self>) {
        let Some(mut writer) = self.writer.take() else {
            // No write half: either it is shut already, or a proxy half-close is shutting it
            // right now, and that future's completion ends the close.
            if self.close_sent {
                ctx.stop();
            }
            return;
        };
        let pending = std::mem::take(&mut self.reply);
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
        self.close_sent = true;
        if self.state == ConnState::Open {
            return self.finish_if_both_done(ctx);
        }
        if self.reader_done {
            ctx.stop();
        } else {
            ctx.run_later(self.env.config.close_timeout, |_, ctx| ctx.stop());
        }
    }

    /// One timer per idle period, not per read: on expiry it re-arms for what is left.
    pub(super) fn arm_idle_timer(&self, after: Duration, ctx: &mut Context<Self>) {
        ctx.run_later(after, |act, ctx| {
            let (Some(limit), ConnState::Open) = (act.env.config.idle_timeout, act.state) else {
                return;
            };
            // A write in flight is the client not reading, not the client idle: the write's own
            // stall limit ends that one, as a writer_error.
            if act.write_in_flight {
                return act.arm_idle_timer(limit, ctx);
            }
            let idle = act.last_read.elapsed();
            if idle >= limit {
                act.begin_close(DisposeReason::IdleTimeout, ctx);
            } else {
                act.arm_idle_timer(limit - idle, ctx);
            }
        });
    }

    /// The client finished sending or failed.
    pub(super) fn client_finished(&mut self, outcome: ReadOutcome, ctx: &mut Context<Self>) {
        self.reader_done = true;
        self.reader = None;
        match self.state {
            ConnState::Open => {}
            // Lingering close: the client has finished too. Stop, unless our close_notify is
            // still being flushed; that future stops the actor once it is done.
            ConnState::Closing if self.close_sent => return ctx.stop(),
            _ => return,
        }
        match outcome {
            ReadOutcome::PeerEof { clean } => {
                self.clean_eof = Some(clean);
                if self.upstream.is_some() {
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
