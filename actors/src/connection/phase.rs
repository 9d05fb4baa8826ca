//! The phases of a connection, as data: each phase owns what it needs and nothing else, so
//! that leaving a phase drops what the next one does not take. The transitions between them
//! are all in `machine.rs`; this file only says what each phase holds.
//!
//! ```text
//! Accepted ──▶ Handshaking ──▶ Open ──▶ Closing ──▶ Disposed
//!     │             │            │                     ▲
//!     └─────────────┴────────────┴─────────────────────┘  (a stop skips what is left)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix::SpawnHandle;
use tokio::io::{ReadHalf, WriteHalf};

use crate::connection::client_stream::ClientStream;
use crate::connection::handshake::ClientWatch;
use crate::connection::messages::Side;
use crate::connection::reader::ReaderHandle;
use crate::connection::upstream_link::UpstreamLink;
use crate::connection::writer::Writer;
use crate::edge::accepted_socket::AcceptedSocket;
use crate::edge::admission::HandshakeSlot;
use crate::protocol::Session;
use crate::tls::client_policy::PeerChain;
use crate::tls::info::TlsInfo;

/// Where a connection is in its life. Phases only move forward.
pub(super) enum Phase {
    /// In the registry; the actor has not started.
    Accepted(Accepted),
    /// Reading the balancer's PROXY header, then the TLS handshake. The socket belongs to the
    /// future doing that; the phase holds the handshake's place under the limits.
    Handshaking(Handshaking),
    /// TLS is up; the readers and the session (or the upstream) are running.
    Open(Open),
    /// Flushing, sending `close_notify`, waiting (bounded) for the client to finish.
    Closing(Closing),
    /// Stopped: the stop hook dropped everything the connection held. The last phase, never a
    /// stand-in for another.
    Disposed,
}

/// An accepted socket waiting for its actor to start.
pub(super) struct Accepted {
    pub(super) socket: AcceptedSocket,
    /// Held from accept until the handshake ends (the handshake limits and gauge).
    pub(super) slot: HandshakeSlot,
}

/// A handshake under way (with the PROXY header before it, if one is expected).
pub(super) struct Handshaking {
    /// Given back as the phase ends, however it ends.
    pub(super) slot: HandshakeSlot,
}

/// What exists from the end of the handshake on: read by the disposal line, `Describe` and
/// the PROXY header sent upstream.
pub(super) struct Established {
    /// What the handshake negotiated (boxed: an idle connection pays one pointer).
    pub(super) tls: Box<TlsInfo>,
    /// How long the handshake took, from registration.
    pub(super) handshake_ms: u64,
    /// The client's certificate chain, kept for live revalidation: only when the client
    /// presented one and `revalidate_live` is on (a connection without pays one null pointer).
    pub(super) peer_chain: Option<Arc<PeerChain>>,
}

/// An open connection.
pub(super) struct Open {
    pub(super) established: Established,
    pub(super) writer: ClientWriter,
    pub(super) service: OpenService,
    pub(super) last_read: Instant,
    /// The idle timer, cancelled as the connection leaves this phase (absent without an idle
    /// timeout).
    pub(super) idle_timer: Option<SpawnHandle>,
}

/// What an open connection does with the client's bytes.
pub(super) enum OpenService {
    /// A session of the server's protocol, and the reader of the client.
    Session {
        session: SessionState,
        reader: ReaderState,
    },
    /// Connecting to the upstream. The client's read half waits here: the client is not read
    /// before the upstream can take its bytes.
    Connecting {
        client: ReadHalf<ClientStream>,
        /// Our address as the client sees it, for the PROXY header sent upstream.
        local: SocketAddr,
        /// The client's socket, watched while the connect is under way (nothing reads it).
        watch: ClientWatch,
    },
    /// Forwarding both ways.
    Proxy(Proxying),
}

/// A session and the reply it is building.
pub(super) struct SessionState {
    pub(super) session: Box<dyn Session>,
    pub(super) reply: Vec<u8>,
}

/// A connection forwarding between the client and its upstream.
pub(super) struct Proxying {
    pub(super) upstream: UpstreamLink,
    pub(super) flow: ProxyFlow,
    /// The client's socket, watched while a write to the upstream holds the client's reader
    /// back (the upstream's is in the link).
    pub(super) client: ClientWatch,
}

/// Which directions of a proxied connection still flow. Each side's reader lives while that
/// side is sending; when one side finishes, all it sent is written onwards already (a reader
/// reads again only once its chunk is written), so its end is passed on at once.
pub(super) enum ProxyFlow {
    /// Both sides are sending.
    Both {
        client: ReaderHandle,
        upstream: ReaderHandle,
    },
    /// The client ended with `close_notify`: the upstream's write side is shut (it read EOF),
    /// and upstream → client flows on until the upstream finishes too.
    ClientFinished { upstream: ReaderHandle },
    /// The upstream finished: `close_notify` and a FIN go (or went) to the client, and client
    /// → upstream flows on until the client finishes too.
    UpstreamFinished { client: ReaderHandle },
    /// Both sides finished, `first` first; the client's `close_notify` is still on its way,
    /// and the connection stops once it is out.
    Finished { first: Side },
}

/// A closing connection: what is left to write, and the client's last bytes to drain.
pub(super) struct Closing {
    pub(super) established: Established,
    pub(super) writer: ClientWriter,
    /// Reads on (and drops) until the client finishes: a lingering close.
    pub(super) linger: ReaderState,
    /// What the session had not written yet; sent before `close_notify`.
    pub(super) pending: Vec<u8>,
    /// A proxy's upstream, its write side shut, drained until the connection stops.
    pub(super) upstream: Option<Drained>,
}

/// A proxy's upstream while the connection closes: its write side is shut, and what it still
/// sends is read and dropped until the connection stops.
pub(super) struct Drained {
    pub(super) link: UpstreamLink,
    pub(super) reader: ReaderState,
}

/// One side's reader: running while the side sends, or done.
pub(super) enum ReaderState {
    /// The reader lives while this handle does; dropping it cancels the read. Held for that
    /// drop alone, never read.
    Running(#[allow(dead_code)] ReaderHandle),
    /// The side has finished (or failed): its reader has stopped, nothing more comes.
    Finished,
}

/// The client's write direction.
pub(super) type ClientWriter = Writer<WriteHalf<ClientStream>>;

impl Proxying {
    /// `side` has finished: its reader has stopped (its handle is dropped here).
    pub(super) fn finished(&mut self, side: Side) {
        replace_with::replace_with(
            &mut self.flow,
            || ProxyFlow::Finished { first: side },
            |flow| match (flow, side) {
                (ProxyFlow::Both { upstream, .. }, Side::Client) => {
                    ProxyFlow::ClientFinished { upstream }
                }
                (ProxyFlow::Both { client, .. }, Side::Upstream) => {
                    ProxyFlow::UpstreamFinished { client }
                }
                (ProxyFlow::UpstreamFinished { .. }, Side::Client) => ProxyFlow::Finished {
                    first: Side::Upstream,
                },
                (ProxyFlow::ClientFinished { .. }, Side::Upstream) => ProxyFlow::Finished {
                    first: Side::Client,
                },
                // A side finishes once; anything else is already past it.
                (flow, _) => flow,
            },
        );
    }
}

impl Phase {
    /// The phase's name in a description.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Phase::Accepted(_) => "registered",
            Phase::Handshaking(_) => "handshaking",
            Phase::Open(_) => "open",
            Phase::Closing(_) => "closing",
            Phase::Disposed => "disposed",
        }
    }

    /// What the handshake established, once it has.
    pub(super) fn established(&self) -> Option<&Established> {
        match self {
            Phase::Open(open) => Some(&open.established),
            Phase::Closing(closing) => Some(&closing.established),
            _ => None,
        }
    }

    /// The upstream link, while there is one (open and proxying, or drained while closing).
    pub(super) fn upstream(&mut self) -> Option<&mut UpstreamLink> {
        match self {
            Phase::Open(Open {
                service: OpenService::Proxy(proxying),
                ..
            }) => Some(&mut proxying.upstream),
            Phase::Closing(Closing {
                upstream: Some(drained),
                ..
            }) => Some(&mut drained.link),
            _ => None,
        }
    }

    /// What the TLS handshake with the upstream negotiated, while there is a TLS upstream.
    pub(super) fn upstream_tls(&self) -> Option<&TlsInfo> {
        let link = match self {
            Phase::Open(Open {
                service: OpenService::Proxy(proxying),
                ..
            }) => &proxying.upstream,
            Phase::Closing(Closing {
                upstream: Some(drained),
                ..
            }) => &drained.link,
            _ => return None,
        };
        link.tls.as_deref()
    }

    /// The upstream link of a connection open and proxying (not once it closes).
    pub(super) fn proxying_upstream(&mut self) -> Option<&mut UpstreamLink> {
        match self {
            Phase::Open(Open {
                service: OpenService::Proxy(proxying),
                ..
            }) => Some(&mut proxying.upstream),
            _ => None,
        }
    }
}
