//! `ConnDescription`: what a live connection says about itself when an operator asks.

use std::net::SocketAddr;
use std::time::Duration;

use crate::supervision::conn_id::ConnId;

use crate::tls::info::TlsInfo;

/// One live connection as it described itself (`ServerHandle::connections`), answered by the
/// connection actor itself, so the numbers are its own at that instant.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnDescription {
    /// Its id.
    pub id: ConnId,
    /// The client's address (`0.0.0.0:0`, meaningless, for a client of a unix listener: see
    /// `unix`).
    pub peer: SocketAddr,
    /// Its client came over a unix socket (a plaintext listener at a path): it has no address,
    /// and shows as `unix`.
    pub unix: bool,
    /// The worker (0-based) whose thread it lives on.
    pub worker: usize,
    /// The service its ClientHello chose (its first name, or `default`), once chosen.
    pub service: Option<String>,
    /// `registered`, `handshaking`, `open` or `closing`.
    pub state: &'static str,
    /// What the server does with its bytes: the session protocol's name (`echo`), `proxy`, or
    /// `passthrough` (TLS not terminated: `tls` then holds the ClientHello's SNI only).
    pub protocol: &'static str,
    /// Time since it was accepted and registered.
    pub age: Duration,
    /// Decrypted bytes read from the client.
    pub bytes_in: u64,
    /// Decrypted bytes written to the client.
    pub bytes_out: u64,
    /// What its handshake negotiated (SNI, ALPN, client certificate), once it finished.
    pub tls: Option<TlsInfo>,
    /// What the handshake with its TLS upstream negotiated (version, cipher, group, ALPN,
    /// whether it resumed), while it has one.
    pub upstream_tls: Option<TlsInfo>,
}
