//! The server side of a TLS handshake: read the ClientHello, pick the configuration, finish.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::edge::read_ahead::ReadAhead;
use crate::tls::source::LoadedTls;

/// The server side of a TLS stream over TCP (read ahead while the client streams).
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<ReadAhead<TcpStream>>;

/// Why a handshake did not produce a stream.
pub(super) enum HandshakeError {
    /// It did not finish within the handshake timeout.
    TimedOut,
    /// It failed: not TLS, no shared parameters, a refused client certificate, a reset.
    Failed(io::Error),
}

/// Runs the handshake on `tcp` with `tls`, bounded by `limit`; `inject_failure` is the
/// `during_handshake` fault point.
pub(super) async fn handshake(
    tls: Arc<LoadedTls>,
    tcp: TcpStream,
    limit: Duration,
    inject_failure: bool,
) -> Result<TlsStream, HandshakeError> {
    if inject_failure {
        return Err(HandshakeError::Failed(io::Error::other(
            "injected handshake failure",
        )));
    }
    match tokio::time::timeout(limit, accept(tls, tcp)).await {
        Err(_) => Err(HandshakeError::TimedOut),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// A fatal `unrecognized_name` alert (RFC 6066) as a plaintext TLS record: before the
/// ServerHello nothing is encrypted, so these seven bytes are the whole answer.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Runs the handshake on `io` (a client's TCP socket; an in-memory stream in the fuzz
/// targets) with `tls`. The ClientHello is read first so that a `--sni-strict` server can
/// refuse an unknown name with `unrecognized_name`, which rustls's certificate resolver cannot
/// send (a resolver that finds nothing makes rustls send `access_denied`).
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    tls: Arc<LoadedTls>,
    io: S,
) -> io::Result<tokio_rustls::server::TlsStream<ReadAhead<S>>> {
    let mut start =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), ReadAhead::new(io)).await?;
    let server_name = start.client_hello().server_name().map(str::to_string);
    if tls.refuses(server_name.as_deref()) {
        // Best effort, within the handshake's own time limit: if it fails, the client sees
        // the connection close without the alert.
        let _ = start.io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unrecognized_name: no certificate for {}",
                server_name.unwrap_or_default()
            ),
        ));
    }
    start.into_stream(Arc::clone(tls.config())).await
}
