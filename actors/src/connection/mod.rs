//! `Connection`: one client's TLS connection, from registration to disposal.

/// Logs at `$level` on the server's logger with the connection's `conn_id` and `peer` inline.
/// Nothing is built for a filtered-out record, and an idle connection keeps no logger of its
/// own (a child `Logger` cost two allocations per connection).
macro_rules! log_conn {
    ($level:ident, $conn:expr, $msg:expr $(; $($kv:tt)*)?) => {
        slog::$level!($conn.env.log, $msg;
            "conn_id" => $conn.id.0, "peer" => %$conn.peer $(, $($kv)*)?)
    };
}

mod accept_header;
mod access_log;
mod close;
mod describe;
mod env;
pub(crate) mod handshake;
mod phase;
mod proxy;
pub(crate) mod reader;
mod session;
mod start;

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::net::TcpStream;

use crate::connection::access_log::DisposalFields;
use crate::edge::admission::HandshakeSlot;
use crate::edge::read_ahead::ReadAhead;
use crate::fault::{FaultPoint, Faults};
use crate::supervision::conn_id::ConnId;
use crate::supervision::dispose_reason::DisposeReason;
use crate::supervision::messages::{ReaderFinished, Side};
use crate::supervision::registration::Registration;
use crate::tls::info::TlsInfo;

pub(crate) use self::env::{ConnectionEnv, Service};
use self::phase::{Accepted, Phase};

/// The server side of a TLS stream over TCP (read ahead while the client streams).
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>;

/// One client's connection: runs the TLS handshake, owns the TLS write half and the session
/// (or the upstream link), and supervises its reader children. What it owns at each point of
/// its life is in its [`Phase`].
///
/// Every way the connection ends goes through `Connection::begin_close` or a direct
/// `ctx.stop()`, and so through `stopped()`, the only place that sends `Dispose`. The first
/// reason recorded is the one reported.
pub(crate) struct Connection {
    id: ConnId,
    peer: SocketAddr,
    /// Our address as the client sees it (the PROXY header's destination).
    local: Option<SocketAddr>,
    env: Arc<ConnectionEnv>,
    phase: Phase,
    reason: Option<DisposeReason>,
    clean_eof: Option<bool>,
    /// Set while a message handler runs; still set in `stopped()` only if a handler unwound.
    in_handler: bool,
    registered_at: Instant,
    /// When the handshake finished, how long it took.
    handshake_ms: Option<u64>,
    /// Decrypted bytes read from the client and written to it (the access log's sizes).
    bytes_in: u64,
    bytes_out: u64,
    /// What the handshake negotiated (boxed: an idle connection pays one pointer).
    tls: Option<Box<TlsInfo>>,
    registration: Registration,
}

impl Connection {
    /// A connection on the books through `registration`, holding its handshake slot until the
    /// handshake ends.
    pub(crate) fn new(
        id: ConnId,
        peer: SocketAddr,
        socket: TcpStream,
        env: Arc<ConnectionEnv>,
        registration: Registration,
        handshake: HandshakeSlot,
    ) -> Self {
        Connection {
            id,
            peer,
            local: None,
            env,
            phase: Phase::Accepted(Accepted { socket, handshake }),
            reason: None,
            clean_eof: None,
            in_handler: false,
            registered_at: Instant::now(),
            handshake_ms: None,
            bytes_in: 0,
            bytes_out: 0,
            tls: None,
            registration,
        }
    }

    fn faults(&self) -> &Faults {
        &self.env.faults
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.faults().is_on(FaultPoint::AfterRegisterBeforeStart) {
            log_conn!(
                warn,
                self,
                "fault injected: failing after register, before start"
            );
            return self.begin_close(DisposeReason::StartFailed, ctx);
        }
        if self.env.draining.load(Ordering::SeqCst) {
            return self.begin_close(DisposeReason::Shutdown, ctx);
        }
        let Phase::Accepted(accepted) = std::mem::replace(&mut self.phase, Phase::Disposed) else {
            // Nothing else can be there before the start; stop rather than run without one.
            self.reason.get_or_insert(DisposeReason::StartFailed);
            return ctx.stop();
        };
        self.phase = Phase::Handshaking {
            slot: accepted.handshake,
        };
        self.start_after_proxy_header(accepted.socket, ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if self.faults().is_on(FaultPoint::SkipStopHook) {
            // As if actix had skipped the hook: the registration's Drop and the readers'
            // handles are all that is left to dispose of this connection.
            return;
        }
        // The phase would go with this actor anyway; dropping it now closes the sockets at
        // once, stops the readers (each lives while its handle, owned by the phase, does),
        // gives back the handshake slot and the upstream. A session dropped here may panic in
        // its Drop: that must not cost the Dispose below.
        let phase = std::mem::replace(&mut self.phase, Phase::Disposed);
        let _ = catch_unwind(AssertUnwindSafe(move || drop(phase)));
        let reason = match self.reason {
            Some(reason) => reason,
            // A handler unwound: actix ran this hook while dropping the panicked actor.
            None if self.in_handler || std::thread::panicking() => DisposeReason::SessionPanic,
            // Stopped with no reason recorded: its arbiter is being torn down.
            None => DisposeReason::Shutdown,
        };
        let fields = DisposalFields {
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            close_notify: self.clean_eof,
            handshake_ms: self.handshake_ms,
            tls: self.tls.as_deref(),
        };
        log_conn!(info, self, "disposed";
            "reason" => reason.as_str(),
            "lifetime_ms" => self.registered_at.elapsed().as_millis() as u64,
            fields);
        self.registration.dispose(reason);
    }
}

impl Handler<ReaderFinished> for Connection {
    type Result = ();

    fn handle(&mut self, msg: ReaderFinished, ctx: &mut Self::Context) {
        match msg.side {
            Side::Client => self.client_finished(msg.outcome, ctx),
            Side::Upstream => self.upstream_finished(msg.outcome, ctx),
        }
    }
}
