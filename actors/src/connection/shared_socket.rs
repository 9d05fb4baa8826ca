//! `SharedSocket`: one socket with several owners — the side that reads it, the side that
//! writes it, and a [`SocketWatch`] that only waits for it to fail. The descriptor closes when
//! the last of them is dropped.
//!
//! Why a watch: a proxied connection reads a side only once that side's previous chunk is
//! written onwards (backpressure, one chunk in flight per direction). While that write is
//! stalled on a peer that does not read, nothing reads the side it came from, so a reset there
//! went unnoticed: clients uploading into an upstream that never read, then reset, were held
//! until the idle timeout and disposed as the upstream's error (issue 17, finding 7). A stalled
//! write now races the other side's [`SocketWatch::failed`], which waits for the kernel to
//! report an error on the socket (`EPOLLERR`: a reset, retransmissions timed out) without
//! reading it: the bytes backpressure left in the kernel stay there, and the memory bound holds.
//!
//! The socket is behind an `Arc` and used through tokio's `&self` API (`poll_read_ready` then
//! `try_read`, as tokio's own owned halves do), so each owner is a plain handle: no lock, and
//! the watch adds one pointer to what a connection holds.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf, Ready};
use tokio::net::{TcpStream, UnixStream};

/// What [`SharedSocket`] needs of a tokio socket: its `&self` readiness and I/O calls. TCP and
/// unix stream sockets have the same ones.
pub(crate) trait Socket: AsFd {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize>;
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>>;
    fn take_error(&self) -> io::Result<Option<io::Error>>;
}

macro_rules! socket_of {
    ($stream:ty) => {
        impl Socket for $stream {
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$stream>::poll_read_ready(self, cx)
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$stream>::try_read(self, buf)
            }
            fn try_io<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                <$stream>::try_io(self, interest, f)
            }
            fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$stream>::poll_write_ready(self, cx)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$stream>::try_write(self, buf)
            }
            fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                <$stream>::try_write_vectored(self, bufs)
            }
            fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> {
                <$stream>::ready(self, interest)
            }
            fn take_error(&self) -> io::Result<Option<io::Error>> {
                <$stream>::take_error(self)
            }
        }
    };
}

socket_of!(TcpStream);
socket_of!(UnixStream);

/// A socket read and written through a shared handle (see the module docs). Shutting it down
/// (`poll_shutdown`) shuts the write side, as tokio's sockets do.
#[derive(Debug)]
pub(crate) struct SharedSocket<S>(Arc<S>);

/// A handle on a socket that never reads or writes it: it only waits for it to fail. It keeps
/// the descriptor open while it lives, like any owner, so it lives where the socket's other
/// handles live (in the connection's phase) and goes with them.
#[derive(Debug)]
pub(crate) struct SocketWatch<S>(Arc<S>);

impl<S> Clone for SocketWatch<S> {
    fn clone(&self) -> Self {
        SocketWatch(Arc::clone(&self.0))
    }
}

impl<S: Socket> SharedSocket<S> {
    pub(crate) fn new(socket: S) -> Self {
        SharedSocket(Arc::new(socket))
    }

    /// Another handle to read or write the same socket.
    pub(crate) fn handle(&self) -> SharedSocket<S> {
        SharedSocket(Arc::clone(&self.0))
    }

    /// A watch on this socket.
    pub(crate) fn watch(&self) -> SocketWatch<S> {
        SocketWatch(Arc::clone(&self.0))
    }

    /// `shutdown(SHUT_WR)`: the peer reads EOF once what was written is through.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(&*self.0).shutdown(Shutdown::Write)
    }
}

impl<S: Socket> SocketWatch<S> {
    /// `SO_LINGER` 0: closing the socket (once its last handle goes) sends an RST instead of a
    /// FIN. What a fault rule's reset does.
    pub(crate) fn reset_on_close(&self) -> io::Result<()> {
        socket2::SockRef::from(&*self.0).set_linger(Some(std::time::Duration::ZERO))
    }

    /// `shutdown(SHUT_WR)` without a TLS `close_notify`: the peer reads a truncated stream.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(&*self.0).shutdown(Shutdown::Write)
    }

    /// The address the socket was accepted on (`getsockname(2)`).
    pub(crate) fn local_addr(&self) -> Option<std::net::SocketAddr> {
        socket2::SockRef::from(&*self.0)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
    }

    /// Resolves once the socket reports an error — a reset, retransmissions that timed out:
    /// its peer is gone for good, whatever is still queued in it. It reads nothing, so what
    /// the peer sent stays in the kernel. A future that is never polled costs nothing: a write
    /// that completes at once never registers with the reactor for this.
    pub(crate) async fn failed(&self) -> io::Error {
        match self.0.ready(Interest::ERROR).await {
            // The error flag stays set in tokio once seen, so another owner may have taken the
            // error itself (a read or a write that failed with it): the socket is gone either way.
            Ok(_) => match self.0.take_error() {
                Ok(Some(e)) | Err(e) => e,
                Ok(None) => io::Error::from(io::ErrorKind::ConnectionReset),
            },
            // The runtime is going away: so is the connection.
            Err(e) => e,
        }
    }
}

impl<S: Socket + Unpin> AsyncRead for SharedSocket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // Every caller here hands an initialized buffer (a slice of the reader's scratch,
            // rustls's), so this zeroes nothing.
            let unfilled = buf.initialize_unfilled();
            let asked = unfilled.len();
            let mut got = None;
            let read = self.0.try_io(Interest::READABLE, || {
                let n = self.0.try_read(unfilled)?;
                got = Some(n);
                // A short read emptied the socket's receive queue: say so as tokio's own
                // `TcpStream::poll_read` does, by clearing the readiness this read consumed
                // (`try_io` clears it on `WouldBlock`, and only if no newer event came in
                // meanwhile). Without it the next read finds the stale readiness and costs a
                // `recvfrom` that returns `EAGAIN`: one more system call per request per side.
                if 0 < n && n < asked {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            match (got, read) {
                (Some(n), _) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale: try_io cleared it, so the next poll_read_ready
                // registers the waker.
                (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (None, Err(e)) => return Poll::Ready(Err(e)),
                // `got` is set whenever the closure returns Ok.
                (None, Ok(_)) => continue,
            }
        }
    }
}

impl<S: Socket + Unpin> AsyncWrite for SharedSocket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: a write is in the kernel once it returns.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (SharedSocket<TcpStream>, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().unwrap();
        (SharedSocket::new(ours), theirs)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn reads_writes_and_shuts_down_through_separate_handles() {
        runtime().block_on(async {
            let (socket, mut peer) = pair().await;
            let (mut reader, mut writer) = (socket.handle(), socket);
            writer.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            std::io::Read::read_exact(&mut peer, &mut got).unwrap();
            assert_eq!(&got, b"ping");
            std::io::Write::write_all(&mut peer, b"pong").unwrap();
            reader.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
            writer.shutdown().await.unwrap();
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut peer, &mut rest).unwrap();
            assert!(rest.is_empty(), "the peer reads EOF");
        });
    }

    #[test]
    fn a_watch_sees_a_reset_without_reading_what_is_queued() {
        runtime().block_on(async {
            let (socket, mut peer) = pair().await;
            let watch = socket.watch();
            // Bytes queued and never read, as behind a stalled write.
            std::io::Write::write_all(&mut peer, &[7u8; 1000]).unwrap();
            let quiet = tokio::time::timeout(Duration::from_millis(50), watch.failed()).await;
            assert!(quiet.is_err(), "no error while the peer is alive");
            socket2::SockRef::from(&peer)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(peer);
            let error = tokio::time::timeout(Duration::from_secs(30), watch.failed())
                .await
                .expect("the reset is seen");
            assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
            // A second watch after the error was taken still resolves.
            let again = tokio::time::timeout(Duration::from_secs(30), watch.failed()).await;
            assert!(again.is_ok());
            drop(socket);
        });
    }

    #[test]
    fn a_peer_that_finishes_cleanly_is_not_a_failure() {
        runtime().block_on(async {
            let (socket, peer) = pair().await;
            let watch = socket.watch();
            peer.shutdown(Shutdown::Write).unwrap();
            let quiet = tokio::time::timeout(Duration::from_millis(100), watch.failed()).await;
            assert!(quiet.is_err(), "a FIN is not an error");
            drop((peer, socket));
        });
    }
}
