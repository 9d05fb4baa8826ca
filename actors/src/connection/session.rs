//! The bytes a connection receives, and the session side of it: calling the protocol's
//! session (panics and errors become disposal reasons), and writing its replies to the client
//! with backpressure. A write's completion goes back to the state machine.

use std::future::Future;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use actix::prelude::*;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;

use crate::connection::actor::{log_conn, Connection};
use crate::connection::messages::{Inbound, Side};
use crate::connection::phase::{Open, OpenService, Phase, SessionState};
use crate::connection::writer::watching;
use crate::error::SessionError;
use crate::fault::point::FaultPoint;
use crate::protocol::{AsyncReply, Flow, Session};
use crate::supervision::dispose_reason::DisposeReason;

impl Connection {
    /// Bytes from one side. The reply resolves once they are handled and written onwards: the
    /// reader that sent them waits for it before reading again (backpressure).
    pub(super) fn received(
        &mut self,
        msg: Inbound,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, ()> {
        if msg.side == Side::Client {
            self.bytes_in += msg.bytes.len() as u64;
        }
        let proxying = match &mut self.phase {
            Phase::Open(open) => {
                // A byte either way is activity (the idle timeout's definition): the client's,
                // and the upstream's that a listening client receives.
                open.last_read = Instant::now();
                matches!(open.service, OpenService::Proxy(_))
            }
            // While closing, what the client and the upstream still send is drained and
            // dropped (lingering close).
            _ => return Box::pin(fut::ready(())),
        };
        if proxying {
            return self.forward(msg);
        }
        match self.run_session(|session, _| Ok(session.on_data_async(&msg.bytes))) {
            Ok(Some(reply)) => self.await_reply(reply),
            Ok(None) => match self.run_session(|session, reply| session.on_data(&msg.bytes, reply))
            {
                Ok(flow) => self.answer(flow, ctx),
                Err(reason) => self.close_without_reply(reason, ctx),
            },
            Err(reason) => self.close_without_reply(reason, ctx),
        }
    }

    /// Runs a session callback, turning a panic or a protocol error into a disposal reason.
    /// Outside `Open` there is no session (it went as the close began): nothing runs.
    pub(super) fn run_session<T: Default>(
        &mut self,
        call: impl FnOnce(&mut dyn Session, &mut Vec<u8>) -> Result<T, SessionError>,
    ) -> Result<T, DisposeReason> {
        let inject_panic = self.fault(FaultPoint::SessionPanic);
        if self.fault(FaultPoint::SessionHang) {
            log_conn!(warn, self, "fault injected: the session never returns");
            loop {
                std::thread::park();
            }
        }
        let Some(state) = self.session_state() else {
            return Ok(T::default());
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if inject_panic {
                panic!("injected session panic");
            }
            call(state.session.as_mut(), &mut state.reply)
        }));
        let reason = match outcome {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => {
                if let Some(suppressed) = self.env.throttles.session_refused_input.admit() {
                    log_conn!(warn, self, "session refused input";
                        "error" => %e, "suppressed" => suppressed);
                }
                DisposeReason::ProtocolError
            }
            // The session may be in any state: it is dropped (guarded) as the close begins.
            Err(_) => {
                log_conn!(
                    error,
                    self,
                    "session panicked; closing this connection only"
                );
                DisposeReason::SessionPanic
            }
        };
        if let Some(state) = self.session_state() {
            state.reply.clear();
        }
        Err(reason)
    }

    /// The session and its reply, while the connection is open.
    fn session_state(&mut self) -> Option<&mut SessionState> {
        match &mut self.phase {
            Phase::Open(Open {
                service: OpenService::Session { session, .. },
                ..
            }) => Some(session),
            _ => None,
        }
    }

    /// Writes the reply the session gave, then reads on or closes as `flow` says.
    fn answer(&mut self, flow: Flow, ctx: &mut Context<Self>) -> ResponseActFuture<Self, ()> {
        let written = self.write_reply();
        if matches!(flow, Flow::Close) {
            // The write goes first: the close waits for it, then sends close_notify.
            self.close(DisposeReason::SessionClosed, ctx);
        }
        written
    }

    /// Closes with `reason`; nothing is written for this chunk.
    fn close_without_reply(
        &mut self,
        reason: DisposeReason,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, ()> {
        self.close(reason, ctx);
        Box::pin(fut::ready(()))
    }

    /// Waits for an async reply (the reader waits too: one chunk in flight), then answers.
    fn await_reply(&mut self, reply: AsyncReply) -> ResponseActFuture<Self, ()> {
        let guarded = AssertUnwindSafe(reply).catch_unwind();
        Box::pin(guarded.into_actor(self).then(|outcome, act, ctx| {
            let Some(state) = act.session_state() else {
                // Closed while the reply was being worked out: nothing more is written.
                return Box::pin(fut::ready(())) as ResponseActFuture<Self, ()>;
            };
            let reason = match outcome {
                Ok(Ok((bytes, flow))) => {
                    state.reply = bytes;
                    return act.answer(flow, ctx);
                }
                Ok(Err(e)) => {
                    if let Some(suppressed) = act.env.throttles.session_refused_input.admit() {
                        log_conn!(warn, act, "session refused input";
                            "error" => %e, "suppressed" => suppressed);
                    }
                    DisposeReason::ProtocolError
                }
                // Dropped (guarded) as the close begins.
                Err(_) => {
                    log_conn!(error, act, "session panicked; closing this connection only");
                    DisposeReason::SessionPanic
                }
            };
            act.close_without_reply(reason, ctx)
        }))
    }

    /// Writes the session's pending reply to the client.
    fn write_reply(&mut self) -> ResponseActFuture<Self, ()> {
        let data = match self.session_state() {
            Some(state) if !state.reply.is_empty() => std::mem::take(&mut state.reply),
            _ => return Box::pin(fut::ready(())),
        };
        // The buffer is freed once written: nothing is pending then (one chunk in flight), and
        // a connection that streamed and went quiet must not keep what its largest reply
        // needed (it kept up to 256 KiB before). A reply costs an allocation instead.
        // The client's own write: no other side to watch.
        self.write_to_client(data, std::future::pending(), |_, _, _| {})
    }

    /// Writes `data` to the client and flushes it, unless `source` (a watch on where the data
    /// came from: the upstream's socket) fails first; then `done` gets the data back with
    /// whether it was written, and the state machine gets the write half back. The reader that
    /// produced the data waits for this to resolve before reading again.
    pub(super) fn write_to_client<B: AsRef<[u8]> + 'static>(
        &mut self,
        data: B,
        source: impl Future<Output = io::Error> + 'static,
        done: impl FnOnce(&mut Self, B, bool) + 'static,
    ) -> ResponseActFuture<Self, ()> {
        let Phase::Open(open) = &mut self.phase else {
            return Box::pin(fut::ready(()));
        };
        let Some(mut half) = open.writer.take() else {
            return Box::pin(fut::ready(()));
        };
        let stall_limit = self.idle_timeout();
        // A runtime fault rule may slow this write, or cut it short and end the connection.
        let len = data.as_ref().len();
        let pause = self.fault_pause(len, true);
        let (allowed, ending) = self.fault_cut(len);
        let write = async move {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            let writing = async {
                half.write_all(&data.as_ref()[..allowed]).await?;
                half.flush().await
            };
            let outcome = watching(stall_limit, writing, source).await;
            (half, data, outcome)
        };
        Box::pin(
            write
                .into_actor(self)
                .map(move |(half, data, outcome), act, ctx| {
                    let written = matches!(outcome, Ok(Ok(())));
                    if written {
                        act.bytes_out += allowed as u64;
                    }
                    done(act, data, written);
                    act.client_written(half, outcome, ctx);
                    if let (true, Some(ending)) = (written, ending) {
                        act.fault_ends(ending, ctx);
                    }
                }),
        )
    }
}
