//! The proxy's upstream socket, TCP or unix, and its halves.
//!
//! An enum rather than a trait object: the reader is generic over `AsyncRead`, the two kinds
//! are all there is, and a match costs less than a vtable call and a box per connection.
//! Each half is a handle on one shared socket (`connection/shared_socket.rs`), and so is the
//! watch a proxied connection keeps to notice the upstream failing while nothing reads it.
//! Dropping the write half shuts the socket's write side, which is how the proxy passes a
//! client's end on: the upstream reads EOF.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::connection::shared_socket::{SharedSocket, SocketWatch};

/// A connected upstream socket.
pub(crate) enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The read half of an [`UpstreamStream`].
pub(crate) enum UpstreamReadHalf {
    Tcp(SharedSocket<TcpStream>),
    Unix(SharedSocket<UnixStream>),
}

/// The write half of an [`UpstreamStream`]; dropping it sends the upstream a FIN.
pub(crate) enum UpstreamWriteHalf {
    Tcp(SharedSocket<TcpStream>),
    Unix(SharedSocket<UnixStream>),
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
                    UpstreamWriteHalf::Tcp(s),
                    watch,
                )
            }
            UpstreamStream::Unix(s) => {
                let s = SharedSocket::new(s);
                let watch = UpstreamWatch::Unix(s.watch());
                (
                    UpstreamReadHalf::Unix(s.handle()),
                    UpstreamWriteHalf::Unix(s),
                    watch,
                )
            }
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
        }
    }
}

impl AsyncWrite for UpstreamWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamWriteHalf::Tcp(h) => Pin::new(h).poll_write(cx, buf),
            UpstreamWriteHalf::Unix(h) => Pin::new(h).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamWriteHalf::Tcp(h) => Pin::new(h).poll_flush(cx),
            UpstreamWriteHalf::Unix(h) => Pin::new(h).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamWriteHalf::Tcp(h) => Pin::new(h).poll_shutdown(cx),
            UpstreamWriteHalf::Unix(h) => Pin::new(h).poll_shutdown(cx),
        }
    }
}

impl Drop for UpstreamWriteHalf {
    /// The FIN: the upstream reads EOF (as tokio's own write halves do when dropped). An error
    /// means the socket is gone already, which is what the FIN was to say.
    fn drop(&mut self) {
        let _ = match self {
            UpstreamWriteHalf::Tcp(h) => h.shutdown_write(),
            UpstreamWriteHalf::Unix(h) => h.shutdown_write(),
        };
    }
}
