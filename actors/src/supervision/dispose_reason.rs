//! Why a connection ended: the label of every disposal.

use std::fmt;

/// Why a connection was disposed. Each variant is one way a connection can end; all of them
/// reach the registry through the same `Connection::stopped()` hook.
///
/// The snake_case names ([`DisposeReason::as_str`]) are part of the binary's contract: they are
/// the `reason` label of `tlsvisor_connections_disposed_total` and the `reason` field of the
/// disposal log line.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisposeReason {
    /// The client finished: TLS `close_notify`, or a TCP FIN without it (logged as unclean).
    PeerEof,
    /// Reading from the client failed: a TLS error (bad record, bad MAC) or an I/O error.
    ReaderError,
    /// Writing to the client failed or stalled past the idle timeout.
    WriterError,
    /// The TLS handshake failed: not TLS, no shared parameters, a reset mid-handshake.
    HandshakeFailed,
    /// The TLS handshake did not finish within the handshake timeout.
    HandshakeTimeout,
    /// Nothing was read from the client within the idle timeout.
    IdleTimeout,
    /// The connection was registered but could not be started (Garnet's scenario).
    StartFailed,
    /// The session (protocol code) panicked while handling this connection.
    SessionPanic,
    /// The session rejected what the client sent, or the protocol refused to open a session.
    ProtocolError,
    /// The server shut down while the connection was live.
    Shutdown,
    /// An operator or embedding program closed this one connection.
    Killed,
    /// Proxy: the upstream refused, was unreachable, or did not accept within the timeout.
    UpstreamConnectFailed,
    /// Proxy: the upstream finished first, and both directions are now done.
    UpstreamEof,
    /// Proxy: reading from or writing to the upstream failed (a reset mid-stream).
    UpstreamError,
    /// mTLS: the client presented no certificate when one is required, or one that did not
    /// verify (unknown CA, expired, revoked by a CRL) or that the allow-list does not admit.
    ClientAuthFailed,
    /// The session ended the connection after its last reply ([`Flow::Close`](crate::protocol::Flow)):
    /// a `QUIT`, or a final error message before hanging up.
    SessionClosed,
    /// `accept_proxy`: the PROXY protocol header expected before the handshake was malformed,
    /// of a version not accepted, cut short, or did not arrive in time.
    ProxyHeaderInvalid,
    /// `accept_proxy`: the original client its PROXY header named was at one of its per-IP
    /// limits (also counted as a `per_ip_limit` rejection: behind a balancer the limit can only
    /// be applied once the connection is accepted and its header read).
    PerIpLimit,
}

impl DisposeReason {
    /// Every reason, in a fixed order (metrics expose each one, zero or not).
    pub const ALL: [DisposeReason; 18] = [
        DisposeReason::PeerEof,
        DisposeReason::ReaderError,
        DisposeReason::WriterError,
        DisposeReason::HandshakeFailed,
        DisposeReason::HandshakeTimeout,
        DisposeReason::IdleTimeout,
        DisposeReason::StartFailed,
        DisposeReason::SessionPanic,
        DisposeReason::ProtocolError,
        DisposeReason::Shutdown,
        DisposeReason::Killed,
        DisposeReason::UpstreamConnectFailed,
        DisposeReason::UpstreamEof,
        DisposeReason::UpstreamError,
        DisposeReason::ClientAuthFailed,
        DisposeReason::SessionClosed,
        DisposeReason::ProxyHeaderInvalid,
        DisposeReason::PerIpLimit,
    ];

    /// The snake_case word used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DisposeReason::PeerEof => "peer_eof",
            DisposeReason::ReaderError => "reader_error",
            DisposeReason::WriterError => "writer_error",
            DisposeReason::HandshakeFailed => "handshake_failed",
            DisposeReason::HandshakeTimeout => "handshake_timeout",
            DisposeReason::IdleTimeout => "idle_timeout",
            DisposeReason::StartFailed => "start_failed",
            DisposeReason::SessionPanic => "session_panic",
            DisposeReason::ProtocolError => "protocol_error",
            DisposeReason::SessionClosed => "session_closed",
            DisposeReason::Shutdown => "shutdown",
            DisposeReason::Killed => "killed",
            DisposeReason::UpstreamConnectFailed => "upstream_connect_failed",
            DisposeReason::UpstreamEof => "upstream_eof",
            DisposeReason::UpstreamError => "upstream_error",
            DisposeReason::ClientAuthFailed => "client_auth_failed",
            DisposeReason::ProxyHeaderInvalid => "proxy_header_invalid",
            DisposeReason::PerIpLimit => "per_ip_limit",
        }
    }

    /// Position in [`DisposeReason::ALL`], for per-reason counters: `ALL` lists the variants
    /// in declaration order (a unit test holds it to that).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DisposeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_for_every_reason() {
        for (i, reason) in DisposeReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }

    #[test]
    fn names_are_snake_case_and_unique() {
        let mut names: Vec<_> = DisposeReason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DisposeReason::ALL.len());
    }
}
