//! Why a connection ended: the label of every disposal.

use crate::supervision::labels::labels;

labels! {
    /// Why a connection was disposed. Each variant is one way a connection can end; all of them
    /// reach the registry through the same `Connection::stopped()` hook.
    ///
    /// The snake_case names ([`DisposeReason::as_str`]) are part of the binary's contract: they are
    /// the `reason` label of `tlsvisor_connections_disposed_total` and the `reason` field of the
    /// disposal log line.
    pub enum DisposeReason {
        /// The client finished: TLS `close_notify`, or a TCP FIN without it (logged as unclean).
        PeerEof => "peer_eof",
        /// Reading from the client failed: a TLS error (bad record, bad MAC) or an I/O error.
        ReaderError => "reader_error",
        /// Writing to the client failed or stalled past the idle timeout.
        WriterError => "writer_error",
        /// The TLS handshake failed: not TLS, no shared parameters, a reset mid-handshake.
        HandshakeFailed => "handshake_failed",
        /// The TLS handshake did not finish within the handshake timeout.
        HandshakeTimeout => "handshake_timeout",
        /// No byte in either direction (from the client, or from the upstream) within the idle
        /// timeout.
        IdleTimeout => "idle_timeout",
        /// The connection was registered but could not be started (Garnet's scenario).
        StartFailed => "start_failed",
        /// The session (protocol code) panicked while handling this connection.
        SessionPanic => "session_panic",
        /// The session rejected what the client sent, or the protocol refused to open a session.
        ProtocolError => "protocol_error",
        /// The server shut down while the connection was live.
        Shutdown => "shutdown",
        /// An operator or embedding program closed this one connection.
        Killed => "killed",
        /// Proxy: the upstream refused, was unreachable, or did not accept within the timeout.
        UpstreamConnectFailed => "upstream_connect_failed",
        /// Proxy: the upstream finished first, and both directions are now done.
        UpstreamEof => "upstream_eof",
        /// Proxy: reading from or writing to the upstream failed (a reset mid-stream).
        UpstreamError => "upstream_error",
        /// mTLS: the client presented no certificate when one is required, or one that did not
        /// verify (unknown CA, expired, revoked by a CRL) or that the allow-list does not admit.
        ClientAuthFailed => "client_auth_failed",
        /// The session ended the connection after its last reply ([`Flow::Close`](crate::protocol::Flow)):
        /// a `QUIT`, or a final error message before hanging up.
        SessionClosed => "session_closed",
        /// `accept_proxy`: the PROXY protocol header expected before the handshake was malformed,
        /// of a version not accepted, cut short, or did not arrive in time.
        ProxyHeaderInvalid => "proxy_header_invalid",
        /// `accept_proxy`: the original client its PROXY header named was at one of its per-IP
        /// limits (also counted as a `per_ip_limit` rejection: behind a balancer the limit can only
        /// be applied once the connection is accepted and its header read).
        PerIpLimit => "per_ip_limit",
        /// The connection reached `max_lifetime` (spread by ±10 %) and was closed gracefully.
        MaxLifetime => "max_lifetime",
        /// Proxy: one side had finished, and the other did not finish within
        /// `half_close_timeout`.
        HalfCloseTimeout => "half_close_timeout",
        /// A runtime fault rule (`POST /faults`) ended it on purpose: a reset during the
        /// handshake, a truncation, a reset or an early `close_notify` after some bytes.
        FaultInjected => "fault_injected",
        /// mTLS: a reload (or `POST /revalidate`) put in place a client-certificate policy (CA
        /// bundle, CRLs, allow-list) that a new handshake with this client's certificate would
        /// fail; closed gracefully. Also a resumed handshake whose certificate the current
        /// policy refuses (rustls does not verify it again on resumption).
        CredentialsRevoked => "credentials_revoked",
        /// mTLS: the client's certificate (the leaf it presented) reached its
        /// `notAfter` while the connection was open; closed gracefully at that moment.
        ClientCertificateExpired => "client_certificate_expired",
        /// Proxy to a TLS upstream: the TLS handshake with the upstream failed (its certificate
        /// did not verify, no shared parameters, it refused our client certificate, it does not
        /// speak TLS) or did not finish within the connect timeout; counted against the
        /// upstream's passive health like a failed connect.
        UpstreamTlsFailed => "upstream_tls_failed",
        /// The service its ClientHello chose (a `[[service]]`'s `max-connections`) had that many
        /// live connections already: refused with a fatal `internal_error` alert before the
        /// handshake went on. (Named for the limit that refused it, as `per_ip_limit` is; the
        /// server-wide `max_connections` refuses no one: it pauses accepting.)
        ServiceLimit => "service_limit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_with_its_contract_name() {
        // An exhaustive match: a new variant fails to compile here until it is named, and the
        // macro puts it in ALL with that name.
        fn contract_name(reason: DisposeReason) -> &'static str {
            match reason {
                DisposeReason::PeerEof => "peer_eof",
                DisposeReason::ReaderError => "reader_error",
                DisposeReason::WriterError => "writer_error",
                DisposeReason::HandshakeFailed => "handshake_failed",
                DisposeReason::HandshakeTimeout => "handshake_timeout",
                DisposeReason::IdleTimeout => "idle_timeout",
                DisposeReason::StartFailed => "start_failed",
                DisposeReason::SessionPanic => "session_panic",
                DisposeReason::ProtocolError => "protocol_error",
                DisposeReason::Shutdown => "shutdown",
                DisposeReason::Killed => "killed",
                DisposeReason::UpstreamConnectFailed => "upstream_connect_failed",
                DisposeReason::UpstreamEof => "upstream_eof",
                DisposeReason::UpstreamError => "upstream_error",
                DisposeReason::ClientAuthFailed => "client_auth_failed",
                DisposeReason::SessionClosed => "session_closed",
                DisposeReason::ProxyHeaderInvalid => "proxy_header_invalid",
                DisposeReason::PerIpLimit => "per_ip_limit",
                DisposeReason::MaxLifetime => "max_lifetime",
                DisposeReason::HalfCloseTimeout => "half_close_timeout",
                DisposeReason::FaultInjected => "fault_injected",
                DisposeReason::CredentialsRevoked => "credentials_revoked",
                DisposeReason::ClientCertificateExpired => "client_certificate_expired",
                DisposeReason::UpstreamTlsFailed => "upstream_tls_failed",
                DisposeReason::ServiceLimit => "service_limit",
            }
        }
        for (i, reason) in DisposeReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert_eq!(reason.as_str(), contract_name(*reason));
        }
        assert_eq!(DisposeReason::COUNT, 25);
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
