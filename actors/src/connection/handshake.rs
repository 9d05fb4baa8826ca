//! The server side of a TLS handshake: read the ClientHello, pick the configuration, finish.

use std::io;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::connection::TlsStream;
use crate::edge::read_ahead::ReadAhead;
use crate::tls::source::LoadedTls;

/// A fatal `unrecognized_name` alert (RFC 6066) as a plaintext TLS record: before the
/// ServerHello nothing is encrypted, so these seven bytes are the whole answer.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Runs the handshake on `tcp` with `tls`. The ClientHello is read first so that a
/// `--sni-strict` server can refuse an unknown name with `unrecognized_name`, which rustls's
/// certificate resolver cannot send (a resolver that finds nothing makes rustls send
/// `access_denied`).
pub(crate) async fn accept(tls: Arc<LoadedTls>, tcp: TcpStream) -> io::Result<TlsStream> {
    let mut start =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), ReadAhead::new(tcp)).await?;
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
