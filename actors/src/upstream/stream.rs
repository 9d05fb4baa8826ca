//! The proxy's upstream socket, TCP or unix, and its owned halves.
//!
//! An enum rather than a trait object: the reader is generic over `AsyncRead`, the two kinds
//! are all there is, and a match costs less than a vtable call and a box per connection.
//! Dropping either kind's owned write half shuts the socket's write side (tokio does it for
//! both), which is how the proxy passes a client's FIN on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

/// A connected upstream socket.
pub(crate) enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The read half of an [`UpstreamStream`].
pub(crate) enum UpstreamReadHalf {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

/// The write half of an [`UpstreamStream`]; dropping it sends the upstream a FIN.
pub(crate) enum UpstreamWriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

impl UpstreamStream {
    /// Splits into owned halves; the socket closes once both are dropped.
    pub(crate) fn into_split(self) -> (UpstreamReadHalf, UpstreamWriteHalf) {
        match self {
            UpstreamStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (UpstreamReadHalf::Tcp(r), UpstreamWriteHalf::Tcp(w))
            }
            UpstreamStream::Unix(s) => {
                let (r, w) = s.into_split();
                (UpstreamReadHalf::Unix(r), UpstreamWriteHalf::Unix(w))
            }
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
