//! The seam between the supervisor and what is spoken over a connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use crate::supervision::conn_id::ConnId;

use crate::error::SessionError;

use crate::tls::info::TlsInfo;

/// What a session knows about its connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnInfo {
    /// The connection's id (also in every log line of the connection).
    pub id: ConnId,
    /// The client's address.
    pub peer: SocketAddr,
    /// What the TLS handshake negotiated (version, cipher suite, SNI, ALPN).
    pub tls: TlsInfo,
}

/// A protocol served by a server: a factory of sessions, shared by every worker.
pub trait Protocol: Send + Sync + 'static {
    /// A name for logs.
    fn name(&self) -> &'static str;

    /// Creates the session of a connection whose TLS handshake just finished. Runs on the
    /// connection's worker thread. An error refuses the connection: it is closed gracefully
    /// (`close_notify`) with reason `protocol_error`.
    fn open(&self, info: &ConnInfo) -> Result<Box<dyn Session>, SessionError>;
}

/// A reply that takes async work (a message to another actor and its answer, a query): the
/// bytes to write and what to do then. It runs on the connection's own worker thread (it need
/// not be `Send`), and the client is not read again before it resolves: one chunk in flight,
/// as with [`Session::on_data`]. A panic inside it ends the connection as `session_panic`.
pub type AsyncReply = Pin<Box<dyn Future<Output = Result<(Vec<u8>, Flow), SessionError>>>>;

/// What the connection does once a session call has returned.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flow {
    /// Write the reply (if any) and read on.
    #[default]
    Continue,
    /// Write the reply (if any), then close gracefully: `close_notify`, the TCP FIN, the
    /// client's own end awaited (bounded). Reason `session_closed`. For a `QUIT`, or a last
    /// `-ERR ...` before hanging up.
    Close,
}

/// One connection's protocol state. Called from the connection's actor only, one call at a
/// time, so it needs no locking.
///
/// A panic in a session is caught by the connection and ends it with reason `session_panic`;
/// the server and the other connections carry on.
pub trait Session: 'static {
    /// Handles decrypted bytes from the client; appends anything to send back to `reply`.
    /// The reply is written (and flushed) before the client's next bytes are read; then the
    /// connection reads on or closes, as the [`Flow`] says. An error closes the connection
    /// with reason `protocol_error`, discarding the reply.
    fn on_data(&mut self, input: &[u8], reply: &mut Vec<u8>) -> Result<Flow, SessionError>;

    /// For a session that answers after async work: return `Some(reply)` and `on_data` is not
    /// called for these bytes; the connection writes what the reply resolves to, then goes on
    /// as its [`Flow`] says. The default, `None`, answers with `on_data`.
    fn on_data_async(&mut self, _input: &[u8]) -> Option<AsyncReply> {
        None
    }

    /// The client finished sending; a last reply may be appended before `close_notify`.
    fn on_peer_finished(&mut self, _reply: &mut Vec<u8>) {}
}

/// Writes back every byte it receives: the test and benchmark protocol.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Protocol for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn open(&self, _info: &ConnInfo) -> Result<Box<dyn Session>, SessionError> {
        Ok(Box::new(EchoSession))
    }
}

struct EchoSession;

impl Session for EchoSession {
    fn on_data(&mut self, input: &[u8], reply: &mut Vec<u8>) -> Result<Flow, SessionError> {
        reply.extend_from_slice(input);
        Ok(Flow::Continue)
    }
}
