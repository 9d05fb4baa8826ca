//! A blocking TLS client for tests.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// How long any single read or write may block before a test call fails (a hang, not a result).
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A client configuration trusting the PEM CA certificate(s) in `ca_pem`.
pub fn client_config(ca_pem: &[u8]) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| io::Error::other(format!("bad CA PEM: {e}")))?;
        roots.add(cert).map_err(io::Error::other)?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(crate::tls::crypto::crypto_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A plain TCP connection to `to` from the address `source` (another loopback address such as
/// 127.0.0.2 stands for another client host, for per-IP limits and floods).
pub fn tcp_connect_from(source: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// A client configuration trusting `ca_pem` and presenting the client certificate `cert_pem`
/// with key `key_pem` (mTLS).
pub fn client_config_with_cert(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(io::Error::other)?)
            .map_err(io::Error::other)?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem).map_err(io::Error::other)?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(crate::tls::crypto::crypto_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(io::Error::other)?;
    Ok(Arc::new(config))
}

/// A client configuration that accepts any server certificate (signatures are still checked),
/// so that a test can look at which certificate a server chose for a name it does not serve.
/// Never use it outside tests.
pub fn client_config_accepting_any() -> io::Result<Arc<ClientConfig>> {
    let provider = Arc::new(crate::tls::crypto::crypto_provider());
    let verifier = Arc::new(AcceptAny(Arc::clone(&provider)));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Trusts every certificate; checks the handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a client saw when the server ended the connection.
#[derive(Debug)]
pub enum CloseSeen {
    /// TLS `close_notify`, then a TCP FIN: a graceful close.
    CloseNotifyThenEof,
    /// `close_notify`, but the socket then reported an error (a reset).
    CloseNotifyThenError(io::Error),
    /// A TCP FIN without `close_notify`.
    EofWithoutCloseNotify,
    /// An error before any close (a reset, a TLS alert).
    Error(io::Error),
}

/// A blocking TLS client over a real TCP socket.
pub struct TlsClient {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsClient {
    /// Connects to `addr` as `localhost` and completes the handshake.
    pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<TlsClient> {
        TlsClient::connect_as(addr, config, "localhost")
    }

    /// Like [`TlsClient::connect`], from the local address `source` (see [`tcp_connect_from`]).
    pub fn connect_from(
        source: IpAddr,
        addr: SocketAddr,
        config: Arc<ClientConfig>,
    ) -> io::Result<TlsClient> {
        TlsClient::over(tcp_connect_from(source, addr)?, config, "localhost")
    }

    /// Connects to `addr` asking for (SNI) and verifying `server_name`, and completes the
    /// handshake.
    pub fn connect_as(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<TlsClient> {
        TlsClient::over(TcpStream::connect(addr)?, config, server_name)
    }

    /// Completes a handshake as `server_name` over a connected socket.
    pub fn over(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<TlsClient> {
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_string()).map_err(io::Error::other)?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient { stream })
    }

    /// The certificate the server presented (its leaf).
    pub fn server_certificate(&self) -> Option<CertificateDer<'static>> {
        let chain = self.stream.conn.peer_certificates()?;
        chain.first().map(|c| c.clone().into_owned())
    }

    /// The rustls connection, to read what was negotiated (version, cipher suite, ALPN).
    pub fn connection(&self) -> &ClientConnection {
        &self.stream.conn
    }

    /// Sends `data` and reads back exactly as many bytes.
    pub fn echo(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        self.stream.write_all(data)?;
        self.stream.flush()?;
        let mut back = vec![0; data.len()];
        self.stream.read_exact(&mut back)?;
        Ok(back)
    }

    /// Writes `data` and flushes it to the socket.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.stream.write_all(data)?;
        self.stream.flush()
    }

    /// Writes 64 KiB chunks until a write blocks for `stall` (the server stopped reading),
    /// `limit` bytes went out, or a write failed. Returns the bytes the socket accepted.
    pub fn send_until_blocked(&mut self, stall: Duration, limit: usize) -> io::Result<usize> {
        self.stream.sock.set_write_timeout(Some(stall))?;
        let chunk = vec![0x5a_u8; 64 * 1024];
        let mut accepted = 0;
        while accepted < limit && self.send(&chunk).is_ok() {
            accepted += chunk.len();
        }
        self.stream.sock.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(accepted)
    }

    /// Reads exactly `len` bytes.
    pub fn receive(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.stream.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Reads until the server closes and reports how it closed. Data before the close is
    /// discarded.
    pub fn read_until_close(&mut self) -> CloseSeen {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return CloseSeen::EofWithoutCloseNotify
                }
                Err(e) => return CloseSeen::Error(e),
            }
        }
        // close_notify arrived; rustls stops reading the socket there, so look at the socket
        // itself: a graceful close is a FIN (read = 0), a reset is an error.
        match self.stream.sock.read(&mut buf) {
            Ok(0) => CloseSeen::CloseNotifyThenEof,
            Ok(n) => CloseSeen::CloseNotifyThenError(io::Error::other(format!(
                "{n} bytes after close_notify"
            ))),
            Err(e) => CloseSeen::CloseNotifyThenError(e),
        }
    }

    /// Sends `close_notify`, shuts the write side and waits for the server to finish.
    pub fn close(mut self) -> CloseSeen {
        if let Err(e) = self.finish_sending() {
            return CloseSeen::Error(e);
        }
        self.read_until_close()
    }

    /// Half-closes: sends `close_notify` and shuts the TCP write side, and can still read.
    pub fn finish_sending(&mut self) -> io::Result<()> {
        self.stream.conn.send_close_notify();
        while self.stream.conn.wants_write() {
            self.stream.conn.write_tls(&mut self.stream.sock)?;
        }
        self.stream.sock.shutdown(Shutdown::Write)
    }

    /// Reads everything until the server closes; returns the bytes and how it closed.
    pub fn receive_until_close(&mut self) -> (Vec<u8>, CloseSeen) {
        let mut all = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return (all, CloseSeen::EofWithoutCloseNotify)
                }
                Err(e) => return (all, CloseSeen::Error(e)),
            }
        }
        (all, self.read_until_close())
    }

    /// Shuts the TCP socket down without `close_notify`, as a crashed client would.
    pub fn drop_abruptly(self) {
        let _ = self.stream.sock.shutdown(Shutdown::Both);
    }

    /// The TCP socket, for raw writes (corrupt records) and options.
    pub fn tcp(&self) -> &TcpStream {
        &self.stream.sock
    }
}
