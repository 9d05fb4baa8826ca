//! How a connection starts: the TLS handshake under its time limit, then the session (or the
//! upstream) and the reader children.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::io::AsyncRead;
use tokio::net::TcpStream;

use super::phase::{ClientWriter, Open, OpenService, Phase, SessionState};
use super::{Connection, ConnectionEnv, Service, TlsStream};
use crate::connection::reader::{Reader, ReaderHandle};
use crate::fault::FaultPoint;
use crate::protocol::ConnInfo;
use crate::protocol::Protocol;
use crate::protocol::Session;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::messages::Side;
use crate::tls::info::TlsInfo;

/// Why a handshake did not produce a stream.
enum HandshakeError {
    TimedOut,
    Failed(io::Error),
}

impl Connection {
    /// Starts the TLS handshake on the accepted socket, bounded by `handshake_timeout`.
    pub(super) fn start_handshake(&mut self, tcp: TcpStream, ctx: &mut Context<Self>) {
        // Small TLS records (handshake flights, echoes) must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        // Our address as the client sees it only goes into a PROXY header: without one, no
        // getsockname(2) per connection.
        if self.env.service.sends_proxy_header() {
            self.local = tcp.local_addr().ok();
        }
        // Taken now and kept: a reload during this handshake does not change it.
        let tls = self.env.tls.current();
        let limit = self.env.config.handshake_timeout;
        let inject_failure = self.faults().is_on(FaultPoint::DuringHandshake);
        let handshake = async move {
            if inject_failure {
                return Err(HandshakeError::Failed(io::Error::other(
                    "injected handshake failure",
                )));
            }
            match tokio::time::timeout(limit, crate::connection::handshake::accept(tls, tcp)).await
            {
                Err(_) => Err(HandshakeError::TimedOut),
                Ok(Err(e)) => Err(HandshakeError::Failed(e)),
                Ok(Ok(stream)) => Ok(stream),
            }
        };
        ctx.spawn(
            handshake
                .into_actor(self)
                .map(|result, act, ctx| act.handshake_done(result, ctx)),
        );
    }
    fn handshake_done(
        &mut self,
        result: Result<TlsStream, HandshakeError>,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.phase, Phase::Handshaking { .. }) {
            return;
        }
        let stream = match result {
            Ok(stream) => stream,
            Err(HandshakeError::TimedOut) => {
                log_conn!(debug, self, "handshake timed out");
                return self.begin_close(DisposeReason::HandshakeTimeout, ctx);
            }
            Err(HandshakeError::Failed(e)) => {
                log_conn!(debug, self, "handshake failed"; "error" => %e);
                let reason = match crate::tls::client_auth::is_client_auth_failure(&e) {
                    true => DisposeReason::ClientAuthFailed,
                    false => DisposeReason::HandshakeFailed,
                };
                return self.begin_close(reason, ctx);
            }
        };
        // Handshaking starts right after registration, so the time since then is the
        // handshake's.
        self.handshake_ms = Some(self.registered_at.elapsed().as_millis() as u64);
        let tls = TlsInfo::of(stream.get_ref().1);
        self.tls = Some(Box::new(tls.clone()));
        let (read_half, write_half) = tokio::io::split(stream);
        let writer = ClientWriter::Ready(write_half);
        // Leaving `Handshaking` gives its slot to the next client.
        let (service, reader) = match &self.env.service {
            Service::Sessions(protocol) => {
                let protocol = Arc::clone(protocol);
                let info = ConnInfo {
                    id: self.id,
                    peer: self.peer,
                    tls,
                };
                let reader = spawn_reader(&self.env, read_half, Side::Client, ctx);
                match self.open_session(&*protocol, &info) {
                    Ok(session) => (
                        OpenService::Session(SessionState {
                            session,
                            reply: Vec::new(),
                        }),
                        Some(reader),
                    ),
                    // The client is read on (and dropped) while closing: the lingering close
                    // needs it.
                    Err(reason) => {
                        self.reason.get_or_insert(reason);
                        return self.enter_closing(writer, Some(reader), Vec::new(), None, ctx);
                    }
                }
            }
            // The client is read once the upstream is there to take its bytes.
            Service::Proxy(_) => (OpenService::Connecting(read_half), None),
        };
        self.phase = Phase::Open(Open {
            writer,
            reader,
            service,
            last_read: Instant::now(),
            idle_timer: None,
        });
        if let Some(limit) = self.env.config.idle_timeout {
            self.arm_idle_timer(limit, ctx);
        }
        if matches!(self.env.service, Service::Proxy(_)) {
            self.connect_upstream(ctx);
        }
    }

    /// A session of `protocol` for this connection; a refusal or a panic is the reason to
    /// close.
    fn open_session(
        &self,
        protocol: &dyn Protocol,
        info: &ConnInfo,
    ) -> Result<Box<dyn Session>, DisposeReason> {
        match catch_unwind(AssertUnwindSafe(|| protocol.open(info))) {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => {
                log_conn!(info, self, "protocol refused the connection"; "error" => %e);
                Err(DisposeReason::ProtocolError)
            }
            Err(_) => {
                log_conn!(error, self, "protocol panicked opening a session");
                Err(DisposeReason::SessionPanic)
            }
        }
    }
}

/// Starts a reader child for one side, on the connection's arbiter, reporting to it; it lives
/// as long as the returned handle, which the connection's phase keeps. A free function (it needs
/// only `env`), so callers holding a part of the connection mutably can use it.
pub(super) fn spawn_reader<R: AsyncRead + Unpin + 'static>(
    env: &ConnectionEnv,
    half: R,
    side: Side,
    ctx: &mut Context<Connection>,
) -> ReaderHandle {
    let me = ctx.address();
    Reader::start_child(
        half,
        side,
        (me.clone().recipient(), me.recipient()),
        env.config.read_buffer,
        env.faults.clone(),
    )
}
