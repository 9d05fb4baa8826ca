//! The `/metrics` listener: a small HTTP/1.1 responder on a thread of its own.
//!
//! It replaces tiny_http, whose accept thread gave up for good on the first failed `accept`:
//! out of descriptors, the metrics endpoint went dark exactly when an operator needs it. This
//! one pauses and tries again, like the acceptors. One request per connection, answered with
//! `Connection: close`, is all Prometheus and curl need.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};
use slog::{info, warn, Logger};
use tlsvisor_actors::Stats;

use crate::error::BoxError;
use crate::metrics::registry;

/// How long a scraper gets for its whole request and answer: one slow or silent client must
/// not hold the endpoint (it answers one request at a time).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dropping the server waits for its thread, which may be answering a slow client;
/// past it the thread is left to finish on its own (the process is usually exiting).
const STOP_WAIT: Duration = Duration::from_millis(200);
/// The longest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// Pauses after a failed accept: 10 ms doubling to 500 ms.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);

/// The `/metrics` endpoint; stopped and joined on drop.
pub struct MetricsServer {
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Closed when the thread ends.
    finished: mpsc::Receiver<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves the server's and the process's metrics, and those of the
    /// `extra` collectors, at `/metrics`.
    pub fn start(
        addr: SocketAddr,
        stats: Arc<Stats>,
        extra: Vec<Box<dyn Collector>>,
        log: Logger,
    ) -> Result<Self, BoxError> {
        let registry = registry(stats, extra)?;
        let listener = crate::listen::reusable(addr, true)
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        let bound = listener.local_addr()?;
        info!(log, "metrics listening"; "metrics_listen" => %bound);
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let (finished_tx, finished) = mpsc::channel::<()>();
        let thread = {
            let (listener, stopping) = (Arc::clone(&listener), Arc::clone(&stopping));
            std::thread::Builder::new()
                .name("tlsvisor-metrics".into())
                .spawn(move || {
                    serve(&listener, &registry, &stopping, &log);
                    drop(finished_tx);
                })?
        };
        Ok(MetricsServer {
            listener,
            stopping,
            thread: Some(thread),
            finished,
        })
    }
}

fn serve(listener: &TcpListener, registry: &Registry, stopping: &AtomicBool, log: &Logger) {
    let mut pause = FIRST_PAUSE;
    let mut last_warning: Option<Instant> = None;
    while !stopping.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                pause = FIRST_PAUSE;
                if let Err(e) = answer(stream, registry) {
                    slog::debug!(log, "metrics request failed"; "error" => %e);
                }
            }
            Err(_) if stopping.load(Ordering::Acquire) => break,
            Err(e) => {
                // Out of descriptors, say: retrying at once would spin on the same error.
                if !matches!(last_warning, Some(at) if at.elapsed() < Duration::from_secs(1)) {
                    warn!(log, "metrics: cannot accept; pausing"; "error" => %e,
                        "pause_ms" => pause.as_millis() as u64);
                    last_warning = Some(Instant::now());
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        }
    }
}

/// Reads one request head and answers it.
fn answer(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
        // Each read gets what is left of the request's time, not a fresh timeout.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            let encoder = TextEncoder::new();
            let mut body = Vec::new();
            match encoder.encode(&registry.gather(), &mut body) {
                Ok(()) => respond(&mut stream, "200 OK", encoder.format_type(), &body),
                Err(e) => respond(
                    &mut stream,
                    "500 Internal Server Error",
                    "text/plain",
                    e.to_string().as_bytes(),
                ),
            }
        }
        (Some(b"GET"), _) => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"not found; try /metrics\n",
        ),
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", b""),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // shutdown(SHUT_RD) of a listening socket wakes a blocked accept with an error, and
        // needs no new descriptor (a wake-up connection might not get one).
        let _ = socket2::SockRef::from(&*self.listener).shutdown(std::net::Shutdown::Read);
        // A request being answered ends within its own deadline; waiting for it is bounded
        // here too, so that a forced shutdown still exits within its second.
        if self.finished.recv_timeout(STOP_WAIT) == Err(mpsc::RecvTimeoutError::Disconnected) {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}
