//! `ClientStream`: the client's side of a connection, TLS or plaintext.
//!
//! A connection accepted on a TLS listener runs the server handshake and speaks TLS to its
//! client; one accepted on a plaintext listener (client mode, `ServerBuilder::listen_plain`:
//! stunnel's `client = yes`) speaks to its client in the clear and to its upstream over TLS.
//! Both are the same connection from there on: the same readers, writer, half-close rules and
//! disposal; only what "the client finished cleanly" means differs (TLS: `close_notify`;
//! plaintext: a FIN, the only end TCP has).
//!
//! A passed-through client (`--protocol passthrough`) is the plaintext case seen from here: its
//! bytes are TLS records we do not decrypt, read first from the replay of what the ClientHello
//! read took, and its ends are FINs (we never write a `close_notify`: the TLS session is the
//! client's and the upstream's).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use crate::connection::handshake::{ClientSocket, ClientWatch, TlsStream};
use crate::connection::shared_socket::SharedSocket;
use crate::edge::read_ahead::ReadAhead;
use crate::tls::info::TlsInfo;

/// The client's stream: after the TLS handshake, or the plaintext socket of client mode.
// Not boxed: the stream lives in the one allocation `tokio::io::split` makes for its halves,
// so a TLS connection (the common case) pays no second allocation; a plaintext one carries
// the unused bytes there.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ClientStream {
    Tls(TlsStream),
    Plain(ClientSocket),
    /// A plaintext client of a unix listener.
    PlainUnix(SharedSocket<UnixStream>),
    /// TLS passed through: the bytes the ClientHello read took come first, then the socket's.
    PassedThrough {
        client: ReadAhead<ClientSocket>,
        /// The name its ClientHello asked for (SNI), lowercase.
        server_name: Option<String>,
    },
}

impl ClientStream {
    /// A watch on the client's socket (see `SocketWatch::failed`).
    pub(crate) fn watch(&self) -> ClientWatch {
        match self {
            ClientStream::Tls(stream) => ClientWatch::Tcp(stream.get_ref().0.get_ref().watch()),
            ClientStream::Plain(socket) => ClientWatch::Tcp(socket.watch()),
            ClientStream::PlainUnix(socket) => ClientWatch::Unix(socket.watch()),
            ClientStream::PassedThrough { client, .. } => {
                ClientWatch::Tcp(client.get_ref().watch())
            }
        }
    }

    /// What the client's handshake negotiated: nothing, in plaintext; passed through, only the
    /// name the ClientHello asked for (the rest is negotiated with the upstream, out of sight).
    pub(crate) fn tls_info(&self) -> TlsInfo {
        match self {
            ClientStream::Tls(stream) => TlsInfo::of(stream.get_ref().1),
            ClientStream::Plain(_) | ClientStream::PlainUnix(_) => TlsInfo::default(),
            ClientStream::PassedThrough { server_name, .. } => TlsInfo {
                server_name: server_name.clone(),
                ..TlsInfo::default()
            },
        }
    }

    /// The certificate chain the client presented and rustls verified: none in plaintext.
    pub(crate) fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            ClientStream::Tls(stream) => stream.get_ref().1.peer_certificates(),
            ClientStream::Plain(_)
            | ClientStream::PlainUnix(_)
            | ClientStream::PassedThrough { .. } => None,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::PlainUnix(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::PassedThrough { client, .. } => Pin::new(client).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::PlainUnix(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::PassedThrough { client, .. } => Pin::new(client).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::PlainUnix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::PassedThrough { client, .. } => {
                Pin::new(client).poll_write_vectored(cx, bufs)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tls(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::PlainUnix(s) => Pin::new(s).poll_flush(cx),
            ClientStream::PassedThrough { client, .. } => Pin::new(client).poll_flush(cx),
        }
    }

    /// TLS: `close_notify`, then the FIN. Plaintext and passed through: the FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::PlainUnix(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::PassedThrough { client, .. } => Pin::new(client).poll_shutdown(cx),
        }
    }
}
