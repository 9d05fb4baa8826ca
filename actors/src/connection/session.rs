//! The session side of a connection: calling the protocol's session (panics and errors become
//! disposal reasons), and writing its replies to the client with backpressure.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;

use super::phase::{ClientWriter, Open, OpenService, Phase, SessionState};
use super::Connection;
use crate::error::SessionError;
use crate::fault::FaultPoint;
use crate::protocol::AsyncReply;
use crate::protocol::Flow;
use crate::protocol::Session;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::messages::{Inbound, Side};

impl Connection {
    /// Runs a session callback, turning a panic or a protocol error into a disposal reason.
    /// Outside `Open` there is no session (it went as the close began): nothing runs.
    pub(super) fn run_session<T: Default>(
        &mut self,
        call: impl FnOnce(&mut dyn Session, &mut Vec<u8>) -> Result<T, SessionError>,
    ) -> Result<T, DisposeReason> {
        let inject_panic = self.faults().is_on(FaultPoint::SessionPanic);
        if self.faults().is_on(FaultPoint::SessionHang) {
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
                log_conn!(warn, self, "session refused input"; "error" => %e);
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
                service: OpenService::Session(state),
                ..
            }) => Some(state),
            _ => None,
        }
    }

    /// Writes the reply the session gave, then reads on or closes as `flow` says.
    fn answer(&mut self, flow: Flow, ctx: &mut Context<Self>) -> ResponseActFuture<Self, ()> {
        match flow {
            Flow::Continue => self.write_reply(),
            Flow::Close => {
                // The write goes first: the close waits for it, then sends close_notify.
                let written = self.write_reply();
                self.begin_close(DisposeReason::SessionClosed, ctx);
                written
            }
        }
    }

    /// Begins the close with `reason`; nothing is written for this chunk.
    fn close_now(
        &mut self,
        reason: DisposeReason,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, ()> {
        self.begin_close(reason, ctx);
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
                    log_conn!(warn, act, "session refused input"; "error" => %e);
                    DisposeReason::ProtocolError
                }
                // Dropped (guarded) as the close begins.
                Err(_) => {
                    log_conn!(error, act, "session panicked; closing this connection only");
                    DisposeReason::SessionPanic
                }
            };
            act.close_now(reason, ctx)
        }))
    }

    /// Writes the session's pending reply to the client.
    pub(super) fn write_reply(&mut self) -> ResponseActFuture<Self, ()> {
        let data = match self.session_state() {
            Some(state) if !state.reply.is_empty() => std::mem::take(&mut state.reply),
            _ => return Box::pin(fut::ready(())),
        };
        // The buffer is freed once written: nothing is pending then (one chunk in flight), and
        // a connection that streamed and went quiet must not keep what its largest reply
        // needed (it kept up to 256 KiB before). A reply costs an allocation instead.
        self.write_to_client(data, |_, _written_buffer, _| {})
    }

    /// Writes `data` to the client and flushes it, then hands the buffer back to `recycle`
    /// with whether the write succeeded.
    /// The reader that produced the data waits for this to resolve before reading again.
    pub(super) fn write_to_client<B: AsRef<[u8]> + 'static>(
        &mut self,
        data: B,
        recycle: impl FnOnce(&mut Self, B, bool) + 'static,
    ) -> ResponseActFuture<Self, ()> {
        let Phase::Open(open) = &mut self.phase else {
            return Box::pin(fut::ready(()));
        };
        let Some(mut writer) = open.writer.take_ready() else {
            return Box::pin(fut::ready(()));
        };
        let stall_limit = self.env.config.idle_timeout;
        let write = async move {
            let result = with_limit(stall_limit, async {
                writer.write_all(data.as_ref()).await?;
                writer.flush().await
            })
            .await;
            (writer, data, result)
        };
        Box::pin(
            write
                .into_actor(self)
                .map(|(writer, data, result), act, ctx| {
                    if result.is_ok() {
                        act.bytes_out += data.as_ref().len() as u64;
                    }
                    recycle(act, data, result.is_ok());
                    if let Err(e) = &result {
                        log_conn!(debug, act, "write failed"; "error" => %e);
                        act.reason.get_or_insert(DisposeReason::WriterError);
                    }
                    match &mut act.phase {
                        Phase::Open(open) => {
                            open.writer = ClientWriter::Ready(writer);
                            if result.is_err() {
                                act.begin_close(DisposeReason::WriterError, ctx);
                            }
                        }
                        // A close was asked for while this write held the write half.
                        Phase::Closing(closing) => {
                            closing.writer = ClientWriter::Ready(writer);
                            act.finish_close(ctx);
                        }
                        _ => {}
                    }
                }),
        )
    }
}

/// Runs `work` under an optional time limit; running out is a `TimedOut` I/O error.
pub(super) async fn with_limit(
    limit: Option<Duration>,
    work: impl std::future::Future<Output = io::Result<()>>,
) -> io::Result<()> {
    match limit {
        None => work.await,
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled"))),
    }
}

impl Handler<Inbound> for Connection {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) -> Self::Result {
        self.in_handler = true;
        if msg.side == Side::Client {
            self.bytes_in += msg.bytes.len() as u64;
        }
        if self.faults().is_on(FaultPoint::ConnectionPanic) {
            panic!("injected connection panic");
        }
        let proxying = match &mut self.phase {
            Phase::Open(open) => {
                open.last_read = Instant::now();
                Some(matches!(open.service, OpenService::Proxy(_)))
            }
            // While closing, the client's bytes are drained and dropped (lingering close).
            _ => None,
        };
        let done = if proxying.is_none() {
            Box::pin(fut::ready(())) as ResponseActFuture<Self, ()>
        } else if proxying == Some(true) {
            self.forward(msg)
        } else {
            match self.run_session(|session, _| Ok(session.on_data_async(&msg.bytes))) {
                Ok(Some(reply)) => self.await_reply(reply),
                Ok(None) => {
                    match self.run_session(|session, reply| session.on_data(&msg.bytes, reply)) {
                        Ok(flow) => self.answer(flow, ctx),
                        Err(reason) => self.close_now(reason, ctx),
                    }
                }
                Err(reason) => self.close_now(reason, ctx),
            }
        };
        self.in_handler = false;
        done
    }
}
