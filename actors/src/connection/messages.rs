//! The messages a `Connection` receives: from its readers (bytes, and the end of a side), and
//! from its registry (close, describe yourself). One struct each.

use std::io;

use actix::Message;
use bytes::Bytes;

use crate::supervision::conn_description::ConnDescription;
use crate::supervision::dispose_reason::DisposeReason;

/// How a connection is asked to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseMode {
    /// Flush, send `close_notify`, shut the TCP write side, wait briefly for the peer, stop.
    Graceful,
    /// Stop now; the socket is closed when the actor and its reader are dropped.
    Force,
}

/// Registry (shutdown, kill) → `Connection`: close with this reason. A connection already
/// closing keeps its first reason; a forced close always stops it at once.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub(crate) struct Close {
    /// How to close.
    pub mode: CloseMode,
    /// The reason recorded if the connection had none yet.
    pub reason: DisposeReason,
}

/// Registry → `Connection`, for an operator: describe yourself. Answered at once from the
/// connection's own fields.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "ConnDescription")]
pub(crate) struct Describe;

/// Which side of a connection a reader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The TLS client.
    Client,
    /// The plaintext upstream of a proxying connection.
    Upstream,
}

/// A `Reader` → its `Connection`: bytes read from one side (decrypted, for the client). The
/// reply comes once the bytes are handled and written onwards, and the reader does not read
/// again before it: this is the backpressure between the two directions.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Inbound {
    /// Where the bytes came from.
    pub side: Side,
    /// The bytes.
    pub bytes: Bytes,
}

/// How a reader's loop ended.
#[derive(Debug)]
pub(crate) enum ReadOutcome {
    /// The side finished sending. `clean` is false when a TLS client closed TCP without
    /// `close_notify` (always true for a plain TCP upstream).
    PeerEof {
        /// Whether the side ended properly.
        clean: bool,
    },
    /// Reading failed (a TLS protocol error, a reset, an injected fault).
    Failed(io::Error),
}

/// A `Reader` → its `Connection`, once: that side's reading is finished. The reader stops
/// after sending it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct ReaderFinished {
    /// Which side finished.
    pub side: Side,
    /// How.
    pub outcome: ReadOutcome,
}
