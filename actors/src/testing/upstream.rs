//! `TestUpstream`: a plaintext TCP server for proxy tests, one thread per connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// A loopback TCP server running `handler` on its own thread for each connection and
/// collecting what each handler returns. Accepting stops when it is dropped.
pub struct TestUpstream<R> {
    addr: SocketAddr,
    reports: mpsc::Receiver<R>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl<R: Send + 'static> TestUpstream<R> {
    /// Listens on 127.0.0.1, a free port.
    pub fn start(handler: impl Fn(TcpStream) -> R + Send + Sync + Clone + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test upstream"); // harness setup: failing here fails the test
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address"); // harness setup: failing here fails the test
        let (tx, reports) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stopping);
        let acceptor = std::thread::spawn(move || {
            for stream in listener.incoming() {
                // Drop raises the flag, then connects once to wake this loop up.
                if stop_seen.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (tx, handler) = (tx.clone(), handler.clone());
                std::thread::spawn(move || {
                    let _ = tx.send(handler(stream));
                });
            }
        });
        TestUpstream {
            addr,
            reports,
            stopping,
            acceptor: Some(acceptor),
        }
    }

    /// Where the upstream listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next handler's result, waiting up to `within`.
    pub fn next_report(&self, within: Duration) -> Option<R> {
        self.reports.recv_timeout(within).ok()
    }
}

impl<R> Drop for TestUpstream<R> {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Echoes every byte until the client finishes, then finishes too. Returns the bytes echoed.
pub fn echo(mut stream: TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            stream.shutdown(Shutdown::Write)?;
            return Ok(total);
        }
        stream.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Reads until EOF.
pub fn read_to_eof(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all)?;
    Ok(all)
}

/// Closes `stream` with a reset (SO_LINGER 0), as a crashed upstream would.
pub fn reset(stream: TcpStream) {
    // Best effort: without the option the close is a plain FIN, which the test then sees.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

/// A deterministic pseudo-random byte stream (xorshift), so both ends can check it by hash.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
