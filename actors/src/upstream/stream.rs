//! The proxy's upstream socket, TCP or unix, plaintext or TLS, and its halves.
//!
//! An enum rather than a trait object: the reader is generic over `AsyncRead`, the kinds
//! are all there is, and a match costs less than a vtable call and a box per connection.
//! Each half is a handle on one shared socket (`connection/shared_socket.rs`), and so is the
//! watch a proxied connection keeps to notice the upstream failing while nothing reads it.
//! Dropping the write half shuts the socket's write side, which is how the proxy passes a
//! client's end on: the upstream reads EOF. A TLS upstream's write half should be shut down
//! (`close_notify`, then the FIN) before it is dropped; its drop does the same at once if the
//! socket has room, and otherwise sends the FIN alone.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};

use crate::connection::shared_socket::{SharedSocket, SocketWatch};

/// A connected upstream socket.
pub(crate) enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// TLS over either (boxed: rustls's state is large, and a plaintext upstream need not
    /// pay for it).
    Tls(Box<UpstreamTlsStream>),
}

/// A TLS upstream: rustls's client over the shared socket.
pub(crate) type UpstreamTlsStream = tokio_rustls::client::TlsStream<Transport>;

/// The socket under a TLS upstream, shared so that it can be watched (and shut) beside the
/// TLS stream that reads and writes it.
pub(crate) enum Transport {
    Tcp(SharedSocket<TcpStream>),
    Unix(SharedSocket<UnixStream>),
}

/// The read half of an [`UpstreamStream`].
pub(crate) enum UpstreamReadHalf {
    Tcp(SharedSocket<TcpStream>),
    Unix(SharedSocket<UnixStream>),
    Tls(ReadHalf<UpstreamTlsStream>),
}

/// The write half of an [`UpstreamStream`]; dropping it sends the upstream a FIN (after
/// `close_notify`, for TLS, if it can go at once), unless [`UpstreamWriteHalf::close_quietly`]
/// said the socket closes anyway.
pub(crate) struct UpstreamWriteHalf {
    kind: WriteKind,
    /// Whether dropping the half sends the FIN itself (`shutdown(SHUT_WR)`).
    fin_on_drop: bool,
}

/// What an [`UpstreamWriteHalf`] writes to.
enum WriteKind {
    Tcp(SharedSocket<TcpStream>),
    Unix(SharedSocket<UnixStream>),
    Tls {
        half: WriteHalf<UpstreamTlsStream>,
        /// The socket itself, for the FIN when `close_notify` cannot be written at once.
        socket: Transport,
    },
}

/// A watch on an [`UpstreamStream`]: resolves once the upstream's socket fails.
#[derive(Clone)]
pub(crate) enum UpstreamWatch {
    Tcp(SocketWatch<TcpStream>),
    Unix(SocketWatch<UnixStream>),
}

impl UpstreamStream {
    /// Splits into its halves and a watch; the socket closes once all three are dropped.
    pub(crate) fn into_split(self) -> (UpstreamReadHalf, UpstreamWriteHalf, UpstreamWatch) {
        match self {
            UpstreamStream::Tcp(s) => {
                let s = SharedSocket::new(s);
                let watch = UpstreamWatch::Tcp(s.watch());
                (
                    UpstreamReadHalf::Tcp(s.handle()),
                    UpstreamWriteHalf::new(WriteKind::Tcp(s)),
                    watch,
                )
            }
            UpstreamStream::Unix(s) => {
                let s = SharedSocket::new(s);
                let watch = UpstreamWatch::Unix(s.watch());
                (
                    UpstreamReadHalf::Unix(s.handle()),
                    UpstreamWriteHalf::new(WriteKind::Unix(s)),
                    watch,
                )
            }
            UpstreamStream::Tls(tls) => {
                let transport = tls.get_ref().0;
                let (watch, socket) = (transport.watch(), transport.handle());
                let (read, write) = tokio::io::split(*tls);
                (
                    UpstreamReadHalf::Tls(read),
                    UpstreamWriteHalf::new(WriteKind::Tls {
                        half: write,
                        socket,
                    }),
                    watch,
                )
            }
        }
    }
}

impl Transport {
    fn watch(&self) -> UpstreamWatch {
        match self {
            Transport::Tcp(s) => UpstreamWatch::Tcp(s.watch()),
            Transport::Unix(s) => UpstreamWatch::Unix(s.watch()),
        }
    }

    fn handle(&self) -> Transport {
        match self {
            Transport::Tcp(s) => Transport::Tcp(s.handle()),
            Transport::Unix(s) => Transport::Unix(s.handle()),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.shutdown_write(),
            Transport::Unix(s) => s.shutdown_write(),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl UpstreamWatch {
    /// The upstream's socket reported an error (a reset): see [`SocketWatch::failed`].
    pub(crate) async fn failed(self) -> io::Error {
        match self {
            UpstreamWatch::Tcp(w) => w.failed().await,
            UpstreamWatch::Unix(w) => w.failed().await,
        }
    }
}

impl AsyncRead for UpstreamReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamReadHalf::Tcp(h) => Pin::new(h).poll_read(cx, buf),
            UpstreamReadHalf::Unix(h) => Pin::new(h).poll_read(cx, buf),
            UpstreamReadHalf::Tls(h) => Pin::new(h).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().kind).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().kind).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().kind).poll_shutdown(cx)
    }
}

impl AsyncWrite for WriteKind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteKind::Tcp(h) => Pin::new(h).poll_write(cx, buf),
            WriteKind::Unix(h) => Pin::new(h).poll_write(cx, buf),
            WriteKind::Tls { half, .. } => Pin::new(half).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteKind::Tcp(h) => Pin::new(h).poll_flush(cx),
            WriteKind::Unix(h) => Pin::new(h).poll_flush(cx),
            WriteKind::Tls { half, .. } => Pin::new(half).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteKind::Tcp(h) => Pin::new(h).poll_shutdown(cx),
            WriteKind::Unix(h) => Pin::new(h).poll_shutdown(cx),
            WriteKind::Tls { half, .. } => Pin::new(half).poll_shutdown(cx),
        }
    }
}

impl UpstreamWriteHalf {
    fn new(kind: WriteKind) -> Self {
        UpstreamWriteHalf {
            kind,
            fin_on_drop: true,
        }
    }

    /// Whether ending this direction has something to say before the FIN (`close_notify`),
    /// which takes an asynchronous shutdown rather than a drop.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.kind, WriteKind::Tls { .. })
    }

    /// Drops a plaintext half without the `shutdown(SHUT_WR)` its drop would make: for a
    /// connection that is about to close the socket anyway (its client is gone), whose
    /// `close(2)` sends the same FIN. A burst of killed clients costs one system call and one
    /// upstream EOF (a wake-up and a message) less each. A TLS half is dropped as usual: its
    /// `close_notify` goes before the FIN.
    pub(crate) fn close_quietly(mut self) {
        self.fin_on_drop = self.is_tls();
    }
}

impl Drop for UpstreamWriteHalf {
    /// The FIN: the upstream reads EOF (as tokio's own write halves do when dropped). An error
    /// means the socket is gone already, which is what the FIN was to say.
    ///
    /// A TLS half first tries, without waiting, what its shutdown does: flush what rustls
    /// holds, `close_notify`, the FIN (a no-op if a shutdown already ran). When the socket has
    /// no room for that, the FIN goes alone: the upstream sees a TCP end without
    /// `close_notify`, which is what a drop that cannot wait can give.
    fn drop(&mut self) {
        if !self.fin_on_drop {
            return;
        }
        let _ = match &mut self.kind {
            WriteKind::Tcp(h) => h.shutdown_write(),
            WriteKind::Unix(h) => h.shutdown_write(),
            WriteKind::Tls { half, socket } => {
                let mut cx = Context::from_waker(futures::task::noop_waker_ref());
                match Pin::new(half).poll_shutdown(&mut cx) {
                    Poll::Ready(Ok(())) => Ok(()),
                    Poll::Ready(Err(_)) | Poll::Pending => socket.shutdown_write(),
                }
            }
        };
    }
}
