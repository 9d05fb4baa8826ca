//! `ReadAhead`: the client socket under TLS, reading ciphertext in large gulps while the client
//! streams.
//!
//! rustls asks its transport for at most 4 KiB per `read_tls` call (its deframer buffer grows
//! by 4 KiB at a time), so a client uploading through the proxy would cost one `read(2)` per
//! 4 KiB — four system calls per full TLS record. This wrapper notices when a read fills the
//! whole 4 KiB rustls offered (the client is sending faster than we read) and from then on reads
//! up to [`GULP`] bytes at once into its own buffer, handing rustls 4 KiB slices from memory.
//!
//! The buffer exists only while the client streams: it is freed as soon as the socket has
//! nothing more to give, so an idle connection holds no read-ahead memory. TLS still sees every
//! byte in order; only the number of system calls changes.
//!
//! Passthrough (`--protocol passthrough`) needs the ClientHello twice: parsed, to learn the SNI,
//! and byte for byte, to forward. A read-ahead made [`ReadAhead::recording`] keeps a copy of
//! every byte it takes from the socket (bounded by [`RECORD_LIMIT`]); once the hello is parsed,
//! [`ReadAhead::into_replay`] turns it into a read-ahead that hands those bytes out again before
//! reading the socket on, so the forwarding reads the client's stream from its first byte.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest single read while the client streams: four full TLS records.
pub(crate) const GULP: usize = 64 * 1024;

/// The most a recording read-ahead keeps: a ClientHello is one handshake message of at most
/// 64 KiB (rustls refuses a larger one) spread over records of at most 16 KiB + 5 bytes of
/// header each, so 64 KiB + five headers, rounded up. A client that sends more before its
/// hello parses is refused rather than held in memory without bound.
pub(crate) const RECORD_LIMIT: usize = 64 * 1024 + 64;

/// The client sent more than [`RECORD_LIMIT`] bytes before its ClientHello parsed: too much
/// to keep for forwarding.
#[derive(Debug)]
pub(crate) struct RecordingOverflow;

impl std::fmt::Display for RecordingOverflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "more than {RECORD_LIMIT} bytes before the ClientHello parsed: too large to pass \
             through"
        )
    }
}

impl std::error::Error for RecordingOverflow {}

/// A copy of what a recording read-ahead took from its socket.
#[derive(Debug, Default)]
struct Recording {
    bytes: Vec<u8>,
    /// More than [`RECORD_LIMIT`] came: `bytes` is incomplete and must not be forwarded.
    overflowed: bool,
}

impl Recording {
    fn keep(&mut self, bytes: &[u8]) {
        if self.overflowed || self.bytes.len() + bytes.len() > RECORD_LIMIT {
            self.overflowed = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(bytes);
    }
}

/// A transport that reads ahead while its peer streams (see the module docs).
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    io: S,
    /// Bytes read from `io` that rustls has not taken yet are `buf[start..end]`. Empty, with no
    /// allocation, unless the client is streaming.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled everything that was asked for: more is probably waiting.
    streaming: bool,
    /// A copy of every byte taken from `io`, while recording (boxed: only passthrough records).
    recording: Option<Box<Recording>>,
}

impl<S> ReadAhead<S> {
    /// Wraps `io`; reads go straight through until the peer streams.
    pub(crate) fn new(io: S) -> Self {
        ReadAhead {
            io,
            buf: Vec::new(),
            start: 0,
            end: 0,
            streaming: false,
            recording: None,
        }
    }

    /// Wraps `io`, keeping a copy of every byte read from it for [`ReadAhead::into_replay`].
    pub(crate) fn recording(io: S) -> Self {
        ReadAhead {
            recording: Some(Box::default()),
            ..ReadAhead::new(io)
        }
    }

    /// Stops recording and lets go of what was recorded: the client turned out to be one whose
    /// TLS ends here.
    pub(crate) fn stop_recording(&mut self) {
        self.recording = None;
    }

    /// A read-ahead on the same socket that hands out every byte this one recorded (what the
    /// parser took, and what it had read ahead without taking) before reading the socket on.
    /// A read-ahead that did not record replays nothing; one whose recording overflowed is
    /// refused.
    pub(crate) fn into_replay(self) -> Result<ReadAhead<S>, RecordingOverflow> {
        let recorded = match self.recording {
            Some(recording) if recording.overflowed => return Err(RecordingOverflow),
            Some(recording) => recording.bytes,
            None => Vec::new(),
        };
        Ok(ReadAhead {
            start: 0,
            end: recorded.len(),
            buf: recorded,
            ..ReadAhead::new(self.io)
        })
    }

    /// The transport under the read-ahead (the client's socket: a connection keeps a watch on
    /// it).
    pub(crate) fn get_ref(&self) -> &S {
        &self.io
    }

    /// Bytes read ahead and not yet handed out.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Bytes of read-ahead memory held (the fuzz target checks it is freed when the peer goes
    /// quiet).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn held(&self) -> usize {
        self.buf.capacity()
    }

    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.end - self.start);
        out.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
    }

    /// Gives the buffer back: nothing is waiting in it and the socket has gone quiet.
    fn release(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            this.hand_out(out);
            if this.start == this.end && !this.streaming {
                this.release();
            }
            return Poll::Ready(Ok(()));
        }
        if !this.streaming || out.remaining() >= GULP {
            // Straight into the caller's buffer: no copy, no memory of our own.
            this.release();
            let asked = out.remaining();
            let before = out.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
            let got = out.filled().len() - before;
            if let Some(recording) = &mut this.recording {
                recording.keep(&out.filled()[before..]);
            }
            this.streaming = asked > 0 && got == asked;
            return Poll::Ready(Ok(()));
        }
        if this.buf.len() < GULP {
            this.buf = vec![0; GULP];
        }
        let mut ahead = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.io).poll_read(cx, &mut ahead) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => {
                this.release();
                return Poll::Ready(Err(e));
            }
            Poll::Pending => {
                // Caught up with the client: stop holding memory for it.
                this.release();
                this.streaming = false;
                return Poll::Pending;
            }
        }
        let got = ahead.filled().len();
        if let Some(recording) = &mut this.recording {
            recording.keep(ahead.filled());
        }
        this.start = 0;
        this.end = got;
        // A short gulp means the client is not outrunning us any more; the next read after
        // this data goes straight through again.
        this.streaming = got == GULP;
        this.hand_out(out);
        if this.start == this.end && !this.streaming {
            this.release();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads `total` bytes in 4 KiB asks, like rustls does, counting reads that reached the
    /// socket.
    async fn read_like_rustls(
        reader: &mut ReadAhead<tokio::io::DuplexStream>,
        total: usize,
    ) -> Vec<u8> {
        let mut got = Vec::with_capacity(total);
        let mut chunk = [0u8; 4096];
        while got.len() < total {
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "early EOF after {} bytes", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_across_gulps() {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client
        });
        let mut reader = ReadAhead::new(server);
        let got = read_like_rustls(&mut reader, data.len()).await;
        assert_eq!(got, data);
        drop(writer.await.unwrap());
        let mut rest = [0u8; 16];
        assert_eq!(
            reader.read(&mut rest).await.unwrap(),
            0,
            "EOF passes through"
        );
    }

    #[tokio::test]
    async fn a_streaming_peer_is_read_in_gulps_and_the_buffer_is_freed_when_quiet() {
        let (mut client, server) = tokio::io::duplex(4 * GULP);
        client.write_all(&vec![7u8; 3 * GULP]).await.unwrap();
        let mut reader = ReadAhead::new(server);
        let mut chunk = [0u8; 4096];
        // First ask fills 4 KiB: the reader switches to gulps.
        assert_eq!(reader.read(&mut chunk).await.unwrap(), 4096);
        assert_eq!(reader.read(&mut chunk).await.unwrap(), 4096);
        assert_eq!(
            reader.buffered(),
            GULP - 4096,
            "one gulp read, one slice handed out"
        );
        let rest = read_like_rustls(&mut reader, 3 * GULP - 2 * 4096).await;
        assert!(rest.iter().all(|&b| b == 7));
        // Nothing left: the next read parks, and parking gives the memory back.
        let parked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            reader.read(&mut chunk),
        )
        .await;
        assert!(parked.is_err(), "no data, so the read waits");
        assert_eq!(reader.buf.capacity(), 0, "no buffer held while waiting");
        assert!(!reader.streaming);
    }

    #[tokio::test]
    async fn a_trickling_peer_never_gets_a_buffer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut reader = ReadAhead::new(server);
        let mut chunk = [0u8; 4096];
        for _ in 0..10 {
            client.write_all(b"PING\r\n").await.unwrap();
            assert_eq!(reader.read(&mut chunk).await.unwrap(), 6);
            assert_eq!(reader.buf.capacity(), 0);
        }
    }

    #[tokio::test]
    async fn a_recording_replays_every_byte_it_took_then_reads_on() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(b"hello, then more").await.unwrap();
        let mut reader = ReadAhead::recording(server);
        let mut first = [0u8; 7];
        assert_eq!(reader.read(&mut first).await.unwrap(), 7);
        assert_eq!(&first, b"hello, ");
        let mut replay = reader.into_replay().unwrap();
        client.write_all(b" and the socket's").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        assert_eq!(
            &all[..],
            b"hello, then more and the socket's",
            "what the parser took, what it left, then the socket"
        );
        assert_eq!(
            replay.buf.capacity(),
            0,
            "the replay's memory is given back"
        );
    }

    #[tokio::test]
    async fn a_recording_past_its_limit_is_refused_not_kept() {
        let (mut client, server) = tokio::io::duplex(4 * GULP);
        let mut reader = ReadAhead::recording(server);
        let writer = tokio::spawn(async move {
            client
                .write_all(&vec![1u8; RECORD_LIMIT + 1])
                .await
                .unwrap();
            client
        });
        let _ = read_like_rustls(&mut reader, RECORD_LIMIT + 1).await;
        let _client = writer.await.unwrap();
        assert!(reader.recording.as_ref().unwrap().bytes.is_empty());
        assert!(reader.into_replay().is_err());
    }
}
