//! The start of a TLS connection: the read-ahead transport under rustls, the ClientHello read
//! first (`LazyConfigAcceptor`), the `--sni-strict` refusal, and the SNI resolver choosing among
//! three certificates (one default, two with a wildcard, ECDSA and RSA), on what a client sends.
//!
//! The first byte: bit 0 `--sni-strict`, the rest a plan of how the client's bytes arrive
//! (chunk sizes, and moments the socket has nothing) and what sizes the reader asks for. The
//! rest is the client's bytes.
//!
//! Checked: no panic and no hang (the socket ends, so the handshake must end); and the
//! read-ahead transport, on the same plan, hands out exactly the bytes the socket gave, in
//! order, and holds no memory while the socket has nothing to give.
//!
//! Then the same bytes on a port of two services, `pass.test` (and `*.pass.test`) passed
//! through and the rest terminated: a client passed through is one whose SNI is that service's,
//! and what its forwarder reads is every byte the client sent, the recorded ClientHello
//! included, byte for byte.
#![no_main]

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tlsvisor_actors::fuzz_hooks::{accept_by_name, accept_handshake, ByName, ReadAhead};
use tlsvisor_actors::{CertificateFiles, LoadedTls, TlsSource};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sizes a socket read gives at most, by the plan.
const GIVES: [usize; 8] = [1, 5, 64, 517, 4096, 4097, 16_384, usize::MAX];
/// Sizes a reader asks for, by the plan.
const ASKS: [usize; 8] = [1, 7, 100, 4096, 4097, 16_384, 65_536, 70_000];

/// A client socket: gives `data` by the plan (chunks, and `Pending` now and then), then EOF;
/// takes whatever is written.
struct Client<'a> {
    data: &'a [u8],
    plan: u8,
    step: u32,
    given: usize,
    /// The last poll was `Pending`: the next one gives (never two in a row).
    waited: bool,
}

impl Client<'_> {
    fn next(&mut self) -> u8 {
        self.step += 1;
        self.plan.rotate_left(self.step % 8)
    }
}

impl AsyncRead for Client<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let turn = this.next();
        if turn & 0x80 != 0 && !this.waited && this.given < this.data.len() {
            // Nothing yet: the next poll gives.
            this.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.waited = false;
        let n = out
            .remaining()
            .min(GIVES[usize::from(turn & 7)])
            .min(this.data.len() - this.given);
        out.put_slice(&this.data[this.given..this.given + n]);
        this.given += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The server's certificates, lenient and `--sni-strict`.
fn servers() -> &'static [Arc<LoadedTls>; 2] {
    static SERVERS: OnceLock<[Arc<LoadedTls>; 2]> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let pair = |name: &str| {
            CertificateFiles::new(
                fixtures.join(format!("{name}.crt")),
                fixtures.join(format!("{name}.key")),
            )
        };
        let load = |sni_strict| {
            let source = TlsSource {
                certificates: vec![pair("default"), pair("wild-ecdsa"), pair("wild-rsa")],
                sni_strict,
                ..TlsSource::default()
            };
            Arc::new(source.load().expect("the fixture certificates load"))
        };
        [load(false), load(true)]
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // Timers: the handshake runs under its deadline (a day in the hook: no input waits).
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    })
}

/// Reads everything through the read-ahead transport by the plan; checks the bytes and that
/// no memory is held while the socket has nothing.
fn read_ahead_hands_out_what_it_read(plan: u8, data: &[u8]) {
    let mut reader = ReadAhead::new(Client {
        data,
        plan,
        step: 0,
        given: 0,
        waited: false,
    });
    let mut got = Vec::with_capacity(data.len());
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = vec![0u8; 70_000];
    for turn in 0u32.. {
        assert!(
            turn < 1_000_000,
            "the read-ahead transport does not progress"
        );
        let ask = ASKS[usize::from(plan.rotate_right(turn % 8) & 7)];
        let mut out = ReadBuf::new(&mut buf[..ask]);
        match Pin::new(&mut reader).poll_read(&mut cx, &mut out) {
            Poll::Pending => {
                assert_eq!(reader.buffered(), 0, "bytes lost across a Pending");
                assert_eq!(
                    reader.held(),
                    0,
                    "read-ahead memory held while the socket is quiet"
                );
            }
            Poll::Ready(Err(e)) => panic!("the in-memory socket failed: {e}"),
            Poll::Ready(Ok(())) if out.filled().is_empty() => break,
            Poll::Ready(Ok(())) => got.extend_from_slice(out.filled()),
        }
        assert!(reader.held() <= ReadAhead::<Client<'_>>::GULP);
    }
    assert_eq!(reader.buffered(), 0);
    assert!(got == data, "the read-ahead transport changed the bytes");
}

fuzz_target!(|data: &[u8]| {
    let [first, client @ ..] = data else {
        return;
    };
    let (strict, plan) = (usize::from(first & 1), first.rotate_right(1));
    let tls = servers()[strict].clone();
    let socket = Client {
        data: client,
        plan,
        step: 0,
        given: 0,
        waited: false,
    };
    // Nothing but this socket can wake the handshake: it ends when the socket does.
    let _ = runtime().block_on(accept_handshake(tls.clone(), socket));
    read_ahead_hands_out_what_it_read(plan, client);
    passed_through_byte_for_byte(tls, plan, client);
});

/// A port of two services: a client passed through by name is forwarded everything it sent.
fn passed_through_byte_for_byte(tls: Arc<LoadedTls>, plan: u8, data: &[u8]) {
    let socket = Client {
        data,
        plan,
        step: 0,
        given: 0,
        waited: false,
    };
    if let Ok(ByName::PassedThrough(sni, forwarded)) =
        runtime().block_on(accept_by_name(tls, socket))
    {
        let sni = sni
            .expect("only a named client is passed through")
            .to_ascii_lowercase();
        assert!(
            sni == "pass.test" || sni.ends_with(".pass.test"),
            "passed through for {sni:?}"
        );
        assert!(
            forwarded == data,
            "the forwarded bytes are not the client's"
        );
    }
}
