//! The server side of a TLS handshake: read the ClientHello, pick the configuration, finish.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::connection::shared_socket::{SharedSocket, SocketWatch};
use crate::edge::read_ahead::ReadAhead;
use crate::tls::source::LoadedTls;

/// The client's TCP socket, shared: a proxied connection watches it for a reset while a write
/// to the upstream holds its reader back.
pub(crate) type ClientSocket = SharedSocket<TcpStream>;

/// A watch on the client's socket (see [`SocketWatch::failed`]).
pub(crate) type ClientWatch = SocketWatch<TcpStream>;

/// The server side of a TLS stream over TCP (read ahead while the client streams).
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<ReadAhead<ClientSocket>>;

/// A watch on the socket under `stream`.
pub(crate) fn watch(stream: &TlsStream) -> ClientWatch {
    stream.get_ref().0.get_ref().watch()
}

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

/// Runs the handshake on `tcp` with `tls`. The ClientHello is read first so that a
/// `--sni-strict` server can refuse an unknown name with `unrecognized_name`, which rustls's
/// certificate resolver cannot send (a resolver that finds nothing makes rustls send
/// `access_denied`).
async fn accept(tls: Arc<LoadedTls>, tcp: TcpStream) -> io::Result<TlsStream> {
    let mut start = LazyConfigAcceptor::new(
        rustls::server::Acceptor::default(),
        ReadAhead::new(SharedSocket::new(tcp)),
    )
    .await?;
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
