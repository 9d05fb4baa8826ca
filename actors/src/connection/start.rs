//! How a connection starts: the TLS handshake under its time limit, then the session (or the
//! upstream) and the reader children.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::io::{AsyncRead, ReadHalf};
use tokio::net::TcpStream;

use super::{ConnState, Connection, Service, TlsStream};
use crate::fault::FaultPoint;
use crate::messages::Side;
use crate::reader::{Reader, ReaderHandle};
use crate::{ConnInfo, DisposeReason, TlsInfo};

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
        self.state = ConnState::Handshaking;
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
            match tokio::time::timeout(limit, crate::handshake::accept(tls, tcp)).await {
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
        if self.state != ConnState::Handshaking {
            return;
        }
        // The handshake is over either way: its slot goes to the next client.
        self.handshake = None;
        let stream = match result {
            Ok(stream) => stream,
            Err(HandshakeError::TimedOut) => {
                log_conn!(debug, self, "handshake timed out");
                return self.begin_close(DisposeReason::HandshakeTimeout, ctx);
            }
            Err(HandshakeError::Failed(e)) => {
                log_conn!(debug, self, "handshake failed"; "error" => %e);
                let reason = match crate::client_auth::is_client_auth_failure(&e) {
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
        self.state = ConnState::Open;
        self.last_read = Instant::now();
        let (read_half, write_half) = tokio::io::split(stream);
        self.writer = Some(write_half);
        if let Some(limit) = self.env.config.idle_timeout {
            self.arm_idle_timer(limit, ctx);
        }
        match &self.env.service {
            Service::Sessions(protocol) => {
                let info = ConnInfo {
                    id: self.id,
                    peer: self.peer,
                    tls: tls.clone(),
                };
                let protocol = Arc::clone(protocol);
                match catch_unwind(AssertUnwindSafe(|| protocol.open(&info))) {
                    Ok(Ok(session)) => self.session = Some(session),
                    Ok(Err(e)) => {
                        log_conn!(info, self, "protocol refused the connection"; "error" => %e);
                        // Read on (and drop) while closing: the lingering close needs it.
                        self.start_client_reader(read_half, ctx);
                        return self.begin_close(DisposeReason::ProtocolError, ctx);
                    }
                    Err(_) => {
                        log_conn!(error, self, "protocol panicked opening a session");
                        self.start_client_reader(read_half, ctx);
                        return self.begin_close(DisposeReason::SessionPanic, ctx);
                    }
                }
                self.start_client_reader(read_half, ctx);
            }
            // The client is read once the upstream is there to take its bytes.
            Service::Proxy(_) => self.connect_upstream(read_half, ctx),
        }
    }

    pub(super) fn start_client_reader(
        &mut self,
        half: ReadHalf<TlsStream>,
        ctx: &mut Context<Self>,
    ) {
        self.reader = Some(self.spawn_reader(half, Side::Client, ctx));
    }

    /// Starts a reader child for one side, on this arbiter, reporting to this connection; it
    /// lives as long as the returned handle, which this connection keeps.
    pub(super) fn spawn_reader<R: AsyncRead + Unpin + 'static>(
        &self,
        half: R,
        side: Side,
        ctx: &mut Context<Self>,
    ) -> ReaderHandle {
        let me = ctx.address();
        Reader::start_child(
            half,
            side,
            (me.clone().recipient(), me.recipient()),
            self.env.config.read_buffer,
            self.env.faults.clone(),
        )
    }
}
