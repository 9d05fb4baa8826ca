//! The PROXY v1/v2 header reader, on the bytes a balancer (or anyone who can reach a
//! `--accept-proxy` listener) sends before the TLS handshake. The first byte picks the accepted
//! versions; the rest is the stream, read in chunks of a size the second byte picks.
//!
//! Checked: no panic; never more than a header's bound read; a header accepted consumes
//! exactly itself (a v1 line up to its `\r\n`, a v2 header's 16 bytes and announced length),
//! so not one byte of the TLS handshake behind it is taken.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tlsvisor_actors::fuzz_hooks::{read_proxy_header, PROXY_V2_MAX_LENGTH};
use tlsvisor_actors::ProxyVersions;
use tokio::io::{AsyncRead, ReadBuf};

/// The longest v1 line.
const V1_MAX_LENGTH: usize = 107;

/// A client socket that gives `data` in chunks of `chunk` bytes, then EOF; counts what it gave.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
    given: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = out
            .remaining()
            .min(this.chunk)
            .min(this.data.len() - this.given);
        out.put_slice(&this.data[this.given..this.given + n]);
        this.given += n;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let [versions, chunk, stream @ ..] = data else {
        return;
    };
    let versions = match versions % 3 {
        0 => ProxyVersions::V1,
        1 => ProxyVersions::V2,
        _ => ProxyVersions::Any,
    };
    let mut socket = Chunked {
        data: stream,
        chunk: usize::from(*chunk).max(1),
        given: 0,
    };
    // The reader never waits on this socket: one poll runs it to its end.
    let verdict = {
        let read = std::pin::pin!(read_proxy_header(&mut socket, versions));
        match read.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(verdict) => verdict,
            Poll::Pending => panic!("the header reader waited on a socket that never blocks"),
        }
    };
    let given = socket.given;
    assert!(
        given <= PROXY_V2_MAX_LENGTH.max(V1_MAX_LENGTH),
        "read {given} bytes, past every header's bound"
    );
    if verdict.is_ok() {
        let header = &stream[..given];
        match header[0] {
            b'P' => {
                assert!(given <= V1_MAX_LENGTH);
                assert!(header.ends_with(b"\r\n"));
                assert_eq!(
                    header.windows(2).position(|w| w == b"\r\n"),
                    Some(given - 2),
                    "a v1 header read past its line"
                );
            }
            b'\r' => {
                let length = u16::from_be_bytes([header[14], header[15]]) as usize;
                assert_eq!(given, 16 + length, "a v2 header read past its length");
            }
            other => panic!("a header accepted that starts with {other:#04x}"),
        }
    }
});
