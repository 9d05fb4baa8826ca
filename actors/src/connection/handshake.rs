//! The server side of a TLS handshake: read the ClientHello, pick the configuration, finish;
//! or, for a protocol that passes TLS through (`--protocol passthrough`), read the ClientHello
//! for its SNI and hand back the client's stream with every byte read so far still to come.
//!
//! The decision "terminate or pass through" is taken here and only here, by the service the
//! ClientHello chooses ([`choose_service`]), right after the ClientHello is parsed: it is the
//! one place that knows the SNI before anything is sent to the client.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::LazyConfigAcceptor;

use crate::connection::handshake_failure::{HelloSummary, UnrecognizedName};
use crate::connection::shared_socket::{SharedSocket, SocketWatch};
use crate::edge::read_ahead::ReadAhead;
use crate::fault::injected::HelloFault;
use crate::service::counts::ServiceSeat;
use crate::service::definition::Service;
use crate::service::table::ServiceTable;
use crate::tls::refused_certificate::{RefusedCertificate, WithRefused};

/// The client's TCP socket, shared: a proxied connection watches it for a reset while a write
/// to the upstream holds its reader back.
pub(crate) type ClientSocket = SharedSocket<TcpStream>;

/// A watch on the client's socket (see [`SocketWatch::failed`]): TCP, or unix for a plaintext
/// client of a unix listener.
#[derive(Clone)]
pub(crate) enum ClientWatch {
    Tcp(SocketWatch<TcpStream>),
    Unix(SocketWatch<tokio::net::UnixStream>),
}

impl ClientWatch {
    /// See [`SocketWatch::failed`].
    pub(crate) async fn failed(&self) -> io::Error {
        match self {
            ClientWatch::Tcp(w) => w.failed().await,
            ClientWatch::Unix(w) => w.failed().await,
        }
    }

    /// See [`SocketWatch::reset_on_close`] (a unix socket has no reset: its close is all).
    pub(crate) fn reset_on_close(&self) -> io::Result<()> {
        match self {
            ClientWatch::Tcp(w) => w.reset_on_close(),
            ClientWatch::Unix(_) => Ok(()),
        }
    }

    /// See [`SocketWatch::shutdown_write`].
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        match self {
            ClientWatch::Tcp(w) => w.shutdown_write(),
            ClientWatch::Unix(w) => w.shutdown_write(),
        }
    }
}

/// The server side of a TLS stream over TCP (read ahead while the client streams).
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<ReadAhead<ClientSocket>>;

/// What the handshake produced.
// Not boxed: it is moved once, into the connection's `ClientStream`, which is not boxed either.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Accepted<S> {
    /// A TLS session with the client, terminated here.
    Terminated(tokio_rustls::server::TlsStream<ReadAhead<S>>),
    /// The client's stream, not terminated: reading it yields the ClientHello and whatever
    /// followed it, as the client sent them, then the socket's bytes.
    PassedThrough {
        client: ReadAhead<S>,
        hello: HelloSummary,
    },
}

/// Why a handshake did not produce a stream, with what the client had offered if its
/// ClientHello was read.
pub(crate) enum HandshakeError {
    /// It did not finish within the handshake timeout.
    TimedOut { hello: Option<HelloSummary> },
    /// It failed: not TLS, no shared parameters, a refused client certificate, a reset.
    Failed {
        error: io::Error,
        hello: Option<HelloSummary>,
        /// The client certificate the verifier refused, if that is why it failed.
        refused: Option<RefusedCertificate>,
    },
    /// A fault rule reset it once the ClientHello was read (the socket resets on close).
    Injected,
    /// The service its ClientHello chose was at its `max_connections`: refused with a fatal
    /// `internal_error` alert before anything else was answered.
    ServiceFull { hello: HelloSummary },
}

/// The service a ClientHello chose, with the connection's seat among its live connections
/// (`None` when it was full, and the connection is refused).
pub(crate) struct Chosen {
    pub(crate) service: Arc<Service>,
    pub(crate) seat: Option<ServiceSeat>,
}

/// Runs the handshake on `tcp` with the service its ClientHello chooses in `services`, bounded
/// by `limit`; `inject_failure` is the `during_handshake` fault point, `at_hello` asks the
/// runtime fault rules what to do once the ClientHello (and so the SNI) is read, with a watch
/// on the socket to act on it. Returns the service chosen (if the ClientHello was read) with
/// the outcome.
pub(super) async fn handshake(
    services: Arc<ServiceTable>,
    tcp: TcpStream,
    limit: Duration,
    inject_failure: bool,
    at_hello: impl FnOnce(&SocketWatch<TcpStream>, Option<&str>) -> HelloFault,
) -> (
    Option<Chosen>,
    Result<Accepted<ClientSocket>, HandshakeError>,
) {
    if inject_failure {
        let failed = HandshakeError::Failed {
            error: io::Error::other("injected handshake failure"),
            hello: None,
            refused: None,
        };
        return (None, Err(failed));
    }
    let socket = SharedSocket::new(tcp);
    let watch = socket.watch();
    let mut chosen = None;
    let result = accept(
        services,
        socket,
        Instant::now() + limit,
        &mut chosen,
        |sni| at_hello(&watch, sni),
    )
    .await;
    (chosen, result)
}

/// The service a ClientHello goes to: by its SNI in `services` (exact name, then wildcard,
/// then the default). The one place a connection's service is chosen, right after its
/// ClientHello is read and before anything is answered.
pub(crate) fn choose_service(services: &ServiceTable, hello: &HelloSummary) -> Arc<Service> {
    Arc::clone(services.choose(hello.sni.as_deref()))
}

/// A fatal `unrecognized_name` alert (RFC 6066) as a plaintext TLS record: before the
/// ServerHello nothing is encrypted, so these seven bytes are the whole answer.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// A fatal `internal_error` alert, plaintext as above: what a client of a service at its
/// `max_connections` is told. TLS has no "busy" alert; of those it has, `internal_error` is the
/// one whose meaning is true here ("an internal error unrelated to the peer or the correctness
/// of this protocol … makes it impossible to continue", RFC 8446 6.2), where
/// `handshake_failure` or `access_denied` would send the client's operator after its cipher
/// suites or its certificate. The server's books say which limit (`service_limit`).
const INTERNAL_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

/// Runs the handshake on `io` (a client's socket; an in-memory stream in the fuzz targets)
/// with the TLS of the service its ClientHello chooses in `services` (left in `chosen`),
/// finished by `deadline`. The ClientHello is read first so that it can choose the service,
/// so that a `--sni-strict` server can refuse an unknown name with `unrecognized_name`, which rustls's certificate
/// resolver cannot send (a resolver that finds nothing makes rustls send `access_denied`), so
/// that a failure can say what the client offered, and so that a runtime fault rule can
/// match the SNI (`at_hello`, asked once with it).
///
/// Where some service of the table passes TLS through, every byte read from `io` is recorded
/// until the ClientHello parses (bounded: `RECORD_LIMIT`); a client that passes through gets no byte
/// from us, and its stream replays the recording first. A client that is not TLS, or whose
/// ClientHello does not parse, fails here as it would on a terminating server (the same
/// classes, `not_tls` included): nothing is forwarded for it.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    services: Arc<ServiceTable>,
    io: S,
    deadline: Instant,
    chosen: &mut Option<Chosen>,
    at_hello: impl FnOnce(Option<&str>) -> HelloFault,
) -> Result<Accepted<S>, HandshakeError> {
    // Recorded only where some service passes TLS through: which one this client goes to is
    // known once its ClientHello is parsed, and by then the hello must already be kept.
    let transport = match services.passes_any_through() {
        false => ReadAhead::new(io),
        true => ReadAhead::recording(io),
    };
    let hello_read = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), transport);
    let mut start = match timeout_at(deadline, hello_read).await {
        Err(_) => return Err(HandshakeError::TimedOut { hello: None }),
        Ok(Err(error)) => {
            return Err(HandshakeError::Failed {
                error,
                hello: None,
                refused: None,
            })
        }
        Ok(Ok(start)) => start,
    };
    let hello = HelloSummary::of(&start.client_hello());
    let service = choose_service(&services, &hello);
    let choice = chosen.insert(Chosen {
        service: Arc::clone(&service),
        seat: None,
    });
    let pass_through = service.handler.passes_through();
    let tls = service.tls();
    if !pass_through && tls.refuses(hello.sni.as_deref()) {
        // Best effort, within the handshake's own time limit: if it fails, the client sees
        // the connection close without the alert.
        let _ = timeout_at(deadline, start.io.write_all(&UNRECOGNIZED_NAME_ALERT)).await;
        let name = hello.sni.clone().unwrap_or_default();
        return Err(HandshakeError::Failed {
            error: io::Error::new(io::ErrorKind::InvalidData, UnrecognizedName(name)),
            hello: Some(hello),
            refused: None,
        });
    }
    // Its seat is taken here, before anything is answered, so that a full service can still
    // say so with an alert; it stays with the connection (in `chosen`) whatever follows.
    choice.seat = service.admit();
    if choice.seat.is_none() {
        let _ = timeout_at(deadline, start.io.write_all(&INTERNAL_ERROR_ALERT)).await;
        return Err(HandshakeError::ServiceFull { hello });
    }
    match at_hello(hello.sni.as_deref()) {
        HelloFault::Proceed => {}
        HelloFault::Delay(delay) => {
            if timeout_at(deadline, tokio::time::sleep(delay))
                .await
                .is_err()
            {
                return Err(HandshakeError::TimedOut { hello: Some(hello) });
            }
        }
        HelloFault::Stall => {
            tokio::time::sleep_until(deadline).await;
            return Err(HandshakeError::TimedOut { hello: Some(hello) });
        }
        HelloFault::Reset => return Err(HandshakeError::Injected),
    }
    if pass_through {
        return match start.io.into_replay() {
            Ok(client) => Ok(Accepted::PassedThrough { client, hello }),
            Err(overflow) => Err(HandshakeError::Failed {
                error: io::Error::new(io::ErrorKind::InvalidData, overflow),
                hello: Some(hello),
                refused: None,
            }),
        };
    }
    // Terminated here: what was recorded for a passthrough that is not this client's is let go.
    start.io.stop_recording();
    let finish = WithRefused::new(start.into_stream(Arc::clone(tls.config())));
    match timeout_at(deadline, finish).await {
        Err(_) => Err(HandshakeError::TimedOut { hello: Some(hello) }),
        Ok((Err(error), refused)) => Err(HandshakeError::Failed {
            error,
            hello: Some(hello),
            refused,
        }),
        Ok((Ok(stream), _)) => Ok(Accepted::Terminated(stream)),
    }
}
