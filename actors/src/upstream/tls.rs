//! `UpstreamTls`: TLS on the hop to the upstreams of one group, and the handshake of one
//! upstream connection.
//!
//! The group's rustls `ClientConfig` is built by whoever embeds the crate (the binary reads
//! `--upstream-ca`, `--upstream-cert`/`--upstream-key`), so trust, client certificates and
//! versions are theirs to choose. It is one `Arc` for the whole group: every connection to
//! its upstreams shares its session cache, and so resumes the sessions of those before it.

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

/// TLS to every upstream of one group (a [`ProxyConfig`](crate::ProxyConfig)).
#[derive(Clone)]
#[non_exhaustive]
pub struct UpstreamTls {
    /// The client configuration: the roots the upstreams' certificates must chain to, the
    /// client certificate if any, versions and groups. Shared by every connection of the
    /// group, so its session cache resumes earlier sessions. Its `alpn_protocols`, if set, are
    /// offered to every upstream; if empty, each connection offers the protocol its client
    /// agreed with us by ALPN, if any (passed through), and none otherwise.
    pub config: Arc<ClientConfig>,
    /// The name sent as SNI and verified in the upstream's certificate. `None`: the host of
    /// each upstream's `HOST:PORT` (an IP address is verified against the certificate's IP
    /// SANs and sends no SNI). A unix-socket upstream needs one.
    pub server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("alpn_protocols", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// TLS with `config`, verifying each upstream under its own host name.
    pub fn new(config: Arc<ClientConfig>) -> UpstreamTls {
        UpstreamTls {
            config,
            server_name: None,
        }
    }

    /// Sends and verifies `name` (a DNS name or an IP address) for every upstream of the
    /// group instead of each one's host; an invalid name is an error.
    pub fn with_server_name(mut self, name: &str) -> Result<UpstreamTls, String> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| format!("invalid upstream server name {name:?}: {e}"))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// Runs the client handshake on `io` with `name`, offering `alpn` unless the group's
    /// configuration sets its own protocols. A failure is an [`UpstreamTlsFailed`] error.
    pub(crate) async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
        name: ServerName<'static>,
        alpn: Option<&str>,
    ) -> io::Result<tokio_rustls::client::TlsStream<IO>> {
        let connector = TlsConnector::from(Arc::clone(&self.config));
        let connecting = match (self.config.alpn_protocols.is_empty(), alpn) {
            (true, Some(alpn)) => connector
                .with_alpn(vec![alpn.as_bytes().to_vec()])
                .connect(name, io),
            _ => connector.connect(name, io),
        };
        connecting
            .await
            .map_err(|e| io::Error::new(e.kind(), UpstreamTlsFailed(e.to_string())))
    }
}

/// The TLS handshake with an upstream failed (or timed out): what the I/O error of such a
/// connect carries, so that the connection is disposed as `upstream_tls_failed`.
#[derive(Debug)]
pub(crate) struct UpstreamTlsFailed(pub(crate) String);

impl fmt::Display for UpstreamTlsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS handshake with the upstream failed: {}", self.0)
    }
}

impl std::error::Error for UpstreamTlsFailed {}

/// Whether `e` is (or wraps) a failed upstream TLS handshake.
pub(crate) fn is_tls_failure(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<UpstreamTlsFailed>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_failure_is_recognised_through_its_error() {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            UpstreamTlsFailed("bad cert".into()),
        );
        assert!(is_tls_failure(&e));
        assert!(e.to_string().contains("bad cert"));
        assert!(!is_tls_failure(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
    }
}
