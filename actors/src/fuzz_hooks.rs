//! What the fuzz targets in `fuzz/` reach of the crate's parsers: thin wrappers over
//! crate-private code, so that a target runs exactly what the server runs on the same bytes.
//! Hidden from the documentation, compiled only with the `fuzzing` feature, and not a
//! supported API (nor part of `public-api.txt`).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::edge::accept_proxy::{self, Original, ProxyVersions};
use crate::fault::injected::HelloFault;
use crate::tls::certificate::CertificateInfo;
use crate::tls::client_auth::{AllowList, ClientIdentity};
use crate::tls::source::LoadedTls;
use crate::tls::tickets::TicketKeys;

/// The longest PROXY v2 header the reader accepts (the fixed part and its TLVs).
pub const PROXY_V2_MAX_LENGTH: usize = accept_proxy::MAX_V2_LENGTH;

/// What a valid PROXY header said.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyOriginal {
    /// The client's original address.
    Client(SocketAddr),
    /// A `LOCAL` (v2) or `UNKNOWN` (v1) header: the TCP peer stays the peer.
    Local,
}

/// Reads one PROXY header from `reader` as an acceptor reads it from a client socket (the
/// crate's `read_header`), consuming exactly its bytes.
pub async fn read_proxy_header<R: AsyncRead + Unpin>(
    reader: &mut R,
    versions: ProxyVersions,
) -> io::Result<ProxyOriginal> {
    Ok(match accept_proxy::read_header(reader, versions).await? {
        Original::Client(addr) => ProxyOriginal::Client(addr),
        Original::Local => ProxyOriginal::Local,
    })
}

/// The server side of a handshake on `io` with `tls`, as a connection runs it (the crate's
/// `accept`: the ClientHello first and the `--sni-strict` refusal, then rustls with the SNI
/// resolver, over the read-ahead transport). Returns the negotiated SNI on success.
pub async fn accept_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    tls: Arc<LoadedTls>,
    io: S,
) -> io::Result<Option<String>> {
    use crate::connection::handshake::{accept, Accepted, HandshakeError};
    // The fuzz targets' streams end; a day is no limit for them.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400);
    // One default service serving `tls`: a table without names cannot be refused.
    let default = crate::service::definition::Service::new(
        &[],
        (*tls).clone(),
        crate::service::handler::Handler::Sessions(Arc::new(crate::protocol::Echo)),
    )
    .and_then(|default| crate::service::table::ServiceTable::new(default, Vec::new()))
    .map_err(io::Error::other)?;
    let mut chosen = None;
    let hello_done = |_: Option<&str>| HelloFault::Proceed;
    match accept(Arc::new(default), io, deadline, &mut chosen, hello_done).await {
        Ok(Accepted::Terminated(stream)) => {
            Ok(stream.get_ref().1.server_name().map(str::to_string))
        }
        Ok(Accepted::PassedThrough { hello, .. }) => Ok(hello.sni),
        Err(HandshakeError::Failed { error, .. }) => Err(error),
        Err(HandshakeError::TimedOut { .. }) => Err(io::ErrorKind::TimedOut.into()),
        Err(HandshakeError::Injected) => Err(io::ErrorKind::ConnectionReset.into()),
        // A default service has no cap of its own: never here.
        Err(HandshakeError::ServiceFull { .. }) => Err(io::ErrorKind::ConnectionRefused.into()),
    }
}

/// How [`accept_by_name`] ended a client.
#[derive(Debug)]
pub enum ByName {
    /// Terminated by the default service; the SNI it negotiated.
    Terminated(Option<String>),
    /// Passed through by the passthrough service: its SNI, and every byte a forwarder reads
    /// from the client (the replayed ClientHello, then the socket's bytes to its end).
    PassedThrough(Option<String>, Vec<u8>),
}

/// A handshake on `io` as a port serving two services runs it: `pass.test` and `*.pass.test`
/// passed through (never connected here), anything else terminated by the default service with
/// `tls`. The bytes of a passed-through client are read to the end, as its forwarder would.
pub async fn accept_by_name<S: AsyncRead + AsyncWrite + Unpin>(
    tls: Arc<LoadedTls>,
    io: S,
) -> io::Result<ByName> {
    use crate::connection::handshake::{accept, Accepted, HandshakeError};
    use crate::service::definition::Service;
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400);
    let names = ["pass.test".to_string(), "*.pass.test".to_string()];
    let table = Service::new(
        &[],
        (*tls).clone(),
        crate::service::handler::Handler::Sessions(Arc::new(crate::protocol::Echo)),
    )
    .and_then(|default| {
        let pass = Service::passthrough(
            &names,
            (*tls).clone(),
            crate::ProxyConfig::new("127.0.0.1:9"),
        )?;
        crate::service::table::ServiceTable::new(default, vec![pass])
    })
    .map_err(io::Error::other)?;
    let mut chosen = None;
    let hello_done = |_: Option<&str>| HelloFault::Proceed;
    match accept(Arc::new(table), io, deadline, &mut chosen, hello_done).await {
        Ok(Accepted::Terminated(stream)) => Ok(ByName::Terminated(
            stream.get_ref().1.server_name().map(str::to_string),
        )),
        Ok(Accepted::PassedThrough { mut client, hello }) => {
            let mut forwarded = Vec::new();
            client.read_to_end(&mut forwarded).await?;
            Ok(ByName::PassedThrough(hello.sni, forwarded))
        }
        Err(HandshakeError::Failed { error, .. }) => Err(error),
        Err(HandshakeError::TimedOut { .. }) => Err(io::ErrorKind::TimedOut.into()),
        Err(HandshakeError::Injected) => Err(io::ErrorKind::ConnectionReset.into()),
        Err(HandshakeError::ServiceFull { .. }) => Err(io::ErrorKind::ConnectionRefused.into()),
    }
}

/// The read-ahead transport a client socket is wrapped in under rustls (the crate's
/// `ReadAhead`), with what it holds in view.
#[derive(Debug)]
pub struct ReadAhead<S>(crate::edge::read_ahead::ReadAhead<S>);

impl<S> ReadAhead<S> {
    /// Wraps `io`.
    pub fn new(io: S) -> Self {
        ReadAhead(crate::edge::read_ahead::ReadAhead::new(io))
    }

    /// Bytes read ahead and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.0.buffered()
    }

    /// Bytes of read-ahead memory held.
    pub fn held(&self) -> usize {
        self.0.held()
    }

    /// The most it reads at once while the peer streams.
    pub const GULP: usize = crate::edge::read_ahead::GULP;
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

/// Ticket keys from the content of a key file (`TicketKeys::from_file` without the file).
pub fn ticket_keys(text: &[u8]) -> Result<TicketKeys, crate::TlsConfigError> {
    TicketKeys::parse(Path::new("fuzz.key"), text)
}

/// Whether `allow` admits a client presenting `der` (`None` if it cannot be read), as the
/// verifier decides after webpki's verification.
pub fn allow_list_admits(allow: &AllowList, der: &[u8]) -> Option<bool> {
    CertificateInfo::from_der(der)
        .ok()
        .map(|info| allow.admits(&info))
}

/// The identity a connection records for a client presenting `der`.
pub fn client_identity(der: &[u8]) -> Option<ClientIdentity> {
    ClientIdentity::of(&rustls::pki_types::CertificateDer::from(der))
}
