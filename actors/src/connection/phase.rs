//! The phases of a connection. Each phase owns what it needs and nothing else, so leaving a
//! phase drops its resources: the handshake slot goes back when the handshake ends, a session
//! is dropped as the close begins, and whatever phase the connection is in when it stops, its
//! sockets, readers and upstream go with it. They only move forward.

use actix::SpawnHandle;
use std::time::Instant;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::proxy::UpstreamLink;
use super::TlsStream;
use crate::connection::reader::ReaderHandle;
use crate::edge::admission::HandshakeSlot;
use crate::protocol::Session;

/// Where a connection is in its life.
pub(super) enum Phase {
    /// In the registry; the actor has not started.
    Accepted(Accepted),
    /// Reading the balancer's PROXY header, then the TLS handshake. The socket belongs to the
    /// handshake's future; the phase holds the handshake's place under the limits.
    Handshaking { slot: HandshakeSlot },
    /// TLS is up; the readers and the session (or the upstream) are running.
    Open(Open),
    /// Flushing, sending `close_notify`, waiting (bounded) for the client to finish.
    Closing(Closing),
    /// Stopped; its `Dispose` is sent. Owns nothing.
    Disposed,
}

/// An accepted socket waiting for its actor to start.
pub(super) struct Accepted {
    pub(super) socket: TcpStream,
    /// Held from accept until the handshake ends (the handshake limits and gauge).
    pub(super) handshake: HandshakeSlot,
}

/// An open connection.
pub(super) struct Open {
    pub(super) writer: ClientWriter,
    /// The client reader lives while this handle does; `None` once the client has finished
    /// (and, for a proxy, until the upstream is there to take the client's bytes).
    pub(super) reader: Option<ReaderHandle>,
    pub(super) service: OpenService,
    pub(super) last_read: Instant,
    /// The idle timer, cancelled as the connection leaves this phase.
    pub(super) idle_timer: Option<SpawnHandle>,
}

/// What an open connection does with the client's bytes.
pub(super) enum OpenService {
    /// A session of the server's protocol, and the reply it is building.
    Session(SessionState),
    /// Connecting to the upstream. The client's read half waits here: the client is not read
    /// before the upstream can take its bytes.
    Connecting(ReadHalf<TlsStream>),
    /// Forwarding both ways.
    Proxy(UpstreamLink),
}

/// A session and the reply it is building.
pub(super) struct SessionState {
    pub(super) session: Box<dyn Session>,
    pub(super) reply: Vec<u8>,
}

/// A closing connection: what is left to write, and the client's last bytes to drain.
pub(super) struct Closing {
    pub(super) writer: ClientWriter,
    /// Reads on (and drops) until the client finishes: a lingering close. `None` once it has.
    pub(super) reader: Option<ReaderHandle>,
    /// What the session had not written yet; sent before `close_notify`.
    pub(super) pending: Vec<u8>,
    /// A proxy's upstream, its write side shut, drained until the connection stops.
    pub(super) upstream: Option<UpstreamLink>,
}

/// The client's write direction.
pub(super) enum ClientWriter {
    /// Free for the next write.
    Ready(WriteHalf<TlsStream>),
    /// A write or the `close_notify` flush holds the write half; its completion moves on.
    Busy,
    /// `close_notify` and the FIN are out, or the close gave up on them.
    Shut,
}

impl ClientWriter {
    /// Takes the write half for a write, leaving `Busy`; `None` if it is not free.
    pub(super) fn take_ready(&mut self) -> Option<WriteHalf<TlsStream>> {
        match std::mem::replace(self, ClientWriter::Busy) {
            ClientWriter::Ready(half) => Some(half),
            other => {
                *self = other;
                None
            }
        }
    }

    pub(super) fn is_busy(&self) -> bool {
        matches!(self, ClientWriter::Busy)
    }

    pub(super) fn is_shut(&self) -> bool {
        matches!(self, ClientWriter::Shut)
    }
}

impl Phase {
    /// The phase's name in a description.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Phase::Accepted(_) => "registered",
            Phase::Handshaking { .. } => "handshaking",
            Phase::Open(_) => "open",
            Phase::Closing(_) => "closing",
            Phase::Disposed => "disposed",
        }
    }
}
