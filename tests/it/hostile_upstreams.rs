//! Hostile upstreams behind the real binary (issue 17), each with 100 real TLS clients: an
//! upstream that (a) accepts and never reads, (b) reads and never answers, (c) resets
//! mid-stream, (d) closes half-way through an answer, (e) accepts then closes at once,
//! (f) answers one byte a second; and (g), one whose connects are black-holed, in a network
//! namespace (`interop` below: it needs root).
//!
//! For each: what the clients see (bytes, `close_notify`, a reset), the reason recorded (the
//! metric and the `disposed` lines), the RSS per live connection, the time from the cause to
//! the last disposal, passive health (`tlsvisor_upstream_up`), and the books:
//! `accepted == active + disposed` while the connections are held (when the RSS is measured)
//! and at the end, where every disposal is counted once under its reason and logged once, with
//! no duplicate, fallback or lost disposal, no socket left ESTABLISHED or in CLOSE-WAIT on
//! either side, and descriptors back where they were. With 100 clients a case takes seconds
//! (the longest wait for a 15 s limit).
//! Each test prints one row of the table in docs/operations.md, "Hostile upstreams".

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsConnector;

use crate::common;
use crate::common::{Tlsvisor, HANG};
use tlsvisor_actors::testing::leak::{self, TcpState};
use tlsvisor_actors::testing::{client_config, eventually};

/// Clients per case: as many as the finding 7 had, and few enough that the seven
/// cases stay a few seconds each in a debug build on two cores.
const CLIENTS: usize = 100;
/// What every client sends first.
const REQUEST: &[u8] = b"GET /hostile\r\n";
/// What an upstream that answers part of a response sends before it fails.
const PARTIAL: usize = 4096;
/// The most an uploading client pushes: far more than it takes to stall the proxy's write to
/// an upstream that does not read (its 4 KiB receive window, the kernel's buffers in between);
/// a client stops at the stall, well before this.
const UPLOAD: usize = 64 * 1024 * 1024;
/// The RSS a live proxied connection may cost: one chunk in flight per direction (64 KiB
/// each), 64 KiB of ciphertext read ahead, rustls's buffers (ARCHITECTURE.md, "The proxy").
const BOUND_PER_CONNECTION: f64 = 256.0 * 1024.0;
/// Handshakes in flight at once, below the listen backlog.
const CONNECT_WINDOW: usize = 32;

/// How a hostile upstream treats every connection.
#[derive(Clone, Copy, Debug)]
enum Hostility {
    /// Accepts and never reads (nor writes, nor closes).
    NeverReads,
    /// Reads everything, answers nothing.
    NeverAnswers,
    /// Reads the request, sends part of an answer, then resets (SO_LINGER 0).
    ResetsMidStream,
    /// Reads the request, sends part of an answer, then closes (a FIN).
    ClosesHalfway,
    /// Accepts and closes at once, reading nothing.
    AcceptsThenCloses,
    /// Reads the request, then answers one byte a second, for ever.
    Trickles,
}

/// A plaintext upstream behaving as its [`Hostility`] says, on a runtime of its own; dropping
/// it closes every socket it holds.
struct HostileUpstream {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl HostileUpstream {
    fn start(how: Hostility) -> HostileUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Hostility::NeverReads = how {
            // A small receive window, fixed (no autotuning: loopback's grows to 32 MiB), as a
            // busy server's: the proxy's write stalls after some KiB rather than after the
            // whole upload sat in the upstream's kernel buffers, which would stall nothing.
            socket.set_recv_buffer_size(4096).unwrap();
        }
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&loopback.into()).unwrap();
        socket.listen(1024).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(socket.into()).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(misbehave(socket, how));
            }
        });
        HostileUpstream {
            addr,
            _runtime: runtime,
        }
    }
}

async fn misbehave(mut socket: TcpStream, how: Hostility) {
    let mut buf = vec![0u8; 64 * 1024];
    match how {
        Hostility::NeverReads => std::future::pending().await,
        Hostility::NeverAnswers => while let Ok(1..) = socket.read(&mut buf).await {},
        Hostility::ResetsMidStream | Hostility::ClosesHalfway | Hostility::Trickles => {
            if socket.read_exact(&mut buf[..REQUEST.len()]).await.is_err() {
                return;
            }
            if let Hostility::Trickles = how {
                // A byte a second until the client's end arrives (a FIN: read returns 0).
                let (mut read, mut write) = socket.split();
                let trickle = async {
                    while write.write_all(b".").await.is_ok() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                };
                let end = async { while let Ok(1..) = read.read(&mut buf).await {} };
                tokio::select! {
                    _ = trickle => {}
                    _ = end => {}
                }
                return;
            }
            let _ = socket.write_all(&[b'x'; PARTIAL]).await;
            if let Hostility::ResetsMidStream = how {
                let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
            }
            drop(socket);
        }
        Hostility::AcceptsThenCloses => drop(socket),
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// How a client saw its connection end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    /// TLS `close_notify`.
    CloseNotify,
    /// A TCP FIN without `close_notify`.
    EofWithoutCloseNotify,
    /// A reset, or another error.
    Error,
    /// The client reset the connection itself.
    ResetByClient,
}

/// Reads until the server ends the stream: the bytes received and how it ended.
async fn read_until_close(tls: &mut (impl AsyncRead + Unpin)) -> (usize, End) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut received = 0;
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => return (received, End::CloseNotify),
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return (received, End::EofWithoutCloseNotify)
            }
            Err(_) => return (received, End::Error),
        }
    }
}

/// Uploads into the proxy for as long as it takes (up to [`UPLOAD`]), and counts itself ready
/// once a write has been pending for 300 ms: the proxy stopped reading it, its write upstream
/// stalled. The write stays pending (a write given up on would leave a TLS record half sent,
/// and a client that stopped early would stall nothing). On the word, a client that
/// `then_resets` closes with a reset (SO_LINGER 0, as a client killed with unsent bytes); the
/// others read until the server closes, their write still pending. Returns what was sent, what
/// was read and how it ended.
async fn upload_into_a_stall(tls: Tls, cue: Cue, then_resets: bool) -> (usize, (usize, End)) {
    // A send buffer of its own size, not autotuned to megabytes: the stall comes sooner, and
    // less of the machine's TCP memory sits behind it.
    socket2::SockRef::from(tls.get_ref().0)
        .set_send_buffer_size(64 * 1024)
        .unwrap();
    if then_resets {
        // Only a close uses the linger setting: set now, it makes the drop below a reset.
        socket2::SockRef::from(tls.get_ref().0)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    let (mut read, mut write) = tokio::io::split(tls);
    let sent = AtomicUsize::new(0);
    let ready = Arc::clone(&cue.ready);
    let writing = async {
        let chunk = vec![0x5a_u8; 16 * 1024];
        let mut counted = false;
        while sent.load(Ordering::Relaxed) < UPLOAD {
            let written = async {
                write.write_all(&chunk).await?;
                write.flush().await
            };
            tokio::pin!(written);
            let result = match tokio::time::timeout(Duration::from_millis(300), &mut written).await
            {
                Ok(result) => result,
                Err(_) => {
                    if !counted {
                        counted = true;
                        ready.fetch_add(1, Ordering::SeqCst);
                    }
                    written.await
                }
            };
            if result.is_err() {
                break;
            }
            sent.fetch_add(chunk.len(), Ordering::Relaxed);
        }
        // Done (the whole upload went through: the test sees too few ready) or failed.
        std::future::pending::<()>().await
    };
    tokio::pin!(writing);
    let mut go = cue.go.clone();
    tokio::select! {
        _ = go.wait_for(|go| *go) => {}
        _ = &mut writing => unreachable!(),
    }
    if then_resets {
        return (sent.load(Ordering::Relaxed), (0, End::ResetByClient));
    }
    let seen = tokio::select! {
        seen = read_until_close(&mut read) => seen,
        _ = &mut writing => unreachable!(),
    };
    (sent.load(Ordering::Relaxed), seen)
}

/// Clients tell the test they reached the state it measures, and wait for its word to go on.
#[derive(Clone)]
struct Cue {
    ready: Arc<AtomicUsize>,
    go: watch::Receiver<bool>,
}

impl Cue {
    fn new() -> (Cue, watch::Sender<bool>) {
        let (tx, go) = watch::channel(false);
        let cue = Cue {
            ready: Arc::new(AtomicUsize::new(0)),
            go,
        };
        (cue, tx)
    }

    /// This client is where the test wants it; waits for the word.
    async fn ready_then_wait(mut self) {
        self.ready.fetch_add(1, Ordering::SeqCst);
        let _ = self.go.wait_for(|go| *go).await;
    }

    /// Waits until every client is ready.
    fn wait_all_ready(&self, name: &str) {
        assert!(
            eventually(HANG, || self.ready.load(Ordering::SeqCst) == CLIENTS),
            "{name}: {} of {CLIENTS} clients ready",
            self.ready.load(Ordering::SeqCst)
        );
    }
}

/// Sends `REQUEST`, then a byte a second (so that the idle timeout does not end the connection
/// before the test has measured it) until the word to go, while reading what comes back until
/// the server closes. Returns what it read and how it ended.
async fn request_and_keep_alive(tls: Tls, cue: Cue) -> (usize, End) {
    let (mut read, mut write) = tokio::io::split(tls);
    write.write_all(REQUEST).await.unwrap();
    write.flush().await.unwrap();
    let mut go = cue.go.clone();
    let keep_alive = async move {
        cue.ready.fetch_add(1, Ordering::SeqCst);
        while !*go.borrow() {
            tokio::select! {
                _ = go.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let _ = write.write_all(b"\n").await;
                    let _ = write.flush().await;
                }
            }
        }
        write
    };
    let (seen, mut write) = tokio::join!(read_until_close(&mut read), keep_alive);
    let _ = write.shutdown().await;
    seen
}

/// Sends `REQUEST`, reads until the server closes, waits for the word, then closes too.
async fn request_then_close_on_cue(mut tls: Tls, cue: Cue) -> (usize, End) {
    tls.write_all(REQUEST).await.unwrap();
    tls.flush().await.unwrap();
    let seen = read_until_close(&mut tls).await;
    cue.ready_then_wait().await;
    let _ = tls.shutdown().await;
    seen
}

/// Sends `REQUEST`, reads until two bytes came back, tells the test, and on its word closes
/// (`close_notify`), reading on until the server closes too.
async fn trickled_then_close_on_cue(tls: Tls, cue: Cue) -> (usize, End) {
    let (mut read, mut write) = tokio::io::split(tls);
    write.write_all(REQUEST).await.unwrap();
    write.flush().await.unwrap();
    let mut first = [0u8; 2];
    read.read_exact(&mut first).await.unwrap();
    cue.ready_then_wait().await;
    let _ = write.shutdown().await;
    let (rest, end) = read_until_close(&mut read).await;
    (first.len() + rest, end)
}

/// One case: the hostile upstream, the binary proxying to it, the clients' runtime, and what
/// the process looked like before the clients came.
struct Case {
    name: &'static str,
    /// Where the binary proxies to.
    upstream: SocketAddr,
    /// What answers there, if anything does (it lives as long as the case).
    _hostile: Option<HostileUpstream>,
    server: Tlsvisor,
    runtime: tokio::runtime::Runtime,
    baseline_rss: f64,
    baseline_fds: f64,
}

impl Case {
    fn start(name: &'static str, how: Hostility, extra: &[&str]) -> Case {
        let hostile = HostileUpstream::start(how);
        Case::proxying_to(name, hostile.addr, Some(hostile), extra)
    }

    /// The binary proxying to `upstream`, where `hostile` (if any) answers.
    fn proxying_to(
        name: &'static str,
        upstream: SocketAddr,
        hostile: Option<HostileUpstream>,
        extra: &[&str],
    ) -> Case {
        common::raise_open_files_limit();
        let target = upstream.to_string();
        let mut args = vec!["--protocol", "proxy", "--upstream", &target];
        args.extend_from_slice(extra);
        let server = Tlsvisor::serve(&args);
        let baseline = server.scrape();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Case {
            name,
            upstream,
            _hostile: hostile,
            baseline_rss: rss(&server),
            baseline_fds: baseline.get("process_open_fds"),
            server,
            runtime,
        }
    }

    /// Connects [`CLIENTS`] clients (a window at a time) and runs `each` on every one on the
    /// clients' runtime; returns its tasks.
    fn clients<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        each: impl Fn(Tls, usize) -> F + Send + Sync + 'static,
    ) -> Vec<tokio::task::JoinHandle<T>> {
        let config = client_config(&common::dev_ca()).unwrap();
        let connector = TlsConnector::from(config);
        let window = Arc::new(Semaphore::new(CONNECT_WINDOW));
        let each = Arc::new(each);
        let addr = self.server.listen;
        (0..CLIENTS)
            .map(|i| {
                let (connector, window, each) =
                    (connector.clone(), Arc::clone(&window), Arc::clone(&each));
                self.runtime.spawn(async move {
                    let permit = window.acquire_owned().await.unwrap();
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    let tls = connector.connect(name, tcp).await.unwrap();
                    drop(permit);
                    each(tls, i).await
                })
            })
            .collect()
    }

    fn join<T>(&self, tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
        self.runtime.block_on(async {
            let mut out = Vec::with_capacity(tasks.len());
            for task in tasks {
                out.push(tokio::time::timeout(HANG, task).await.unwrap().unwrap());
            }
            out
        })
    }

    /// Waits until `n` connections are live.
    fn wait_active(&self, n: usize) {
        let mut seen = 0.0;
        assert!(
            eventually(HANG, || {
                seen = self.server.scrape().get("tlsvisor_connections_active");
                seen == n as f64
            }),
            "{}: {n} connections should be live, {seen} are",
            self.name
        );
    }

    /// RSS per live connection now, over [`CLIENTS`] of them, checked against the bound; and
    /// the ledger, exact while they are held.
    fn rss_per_connection(&self) -> f64 {
        let m = self.server.scrape();
        assert_eq!(
            m.get("tlsvisor_connections_accepted_total"),
            m.get("tlsvisor_connections_active") + m.sum("tlsvisor_connections_disposed_total"),
            "{}: accepted == active + disposed",
            self.name
        );
        let per = (rss(&self.server) - self.baseline_rss) / CLIENTS as f64;
        assert!(
            per <= BOUND_PER_CONNECTION,
            "{}: {:.1} KiB of RSS per connection",
            self.name,
            per / 1024.0
        );
        per
    }

    /// Waits until `n` connections were disposed as `reason`; returns when that was.
    fn wait_disposed(&self, reason: &str, n: usize) -> Instant {
        self.wait_disposed_as_any(&[reason], n)
    }

    /// Waits until `n` connections were disposed as one of `reasons`; returns when that was.
    fn wait_disposed_as_any(&self, reasons: &[&str], n: usize) -> Instant {
        let mut seen = 0.0;
        assert!(
            eventually(HANG, || {
                let m = self.server.scrape();
                seen = reasons.iter().map(|r| m.disposed(r)).sum();
                seen == n as f64
            }),
            "{}: {n} connections should be disposed as {reasons:?}, {seen} are; all: {:?}",
            self.name,
            self.disposed_so_far()
        );
        Instant::now()
    }

    /// Every reason a connection was disposed as so far, with its count.
    fn disposed_so_far(&self) -> BTreeMap<String, f64> {
        let family = "tlsvisor_connections_disposed_total{";
        let m = self.server.scrape();
        m.0.iter()
            .filter(|(k, v)| k.starts_with(family) && **v > 0.0)
            .map(|(k, v)| (k[family.len()..].trim_end_matches('}').to_string(), *v))
            .collect()
    }

    fn upstream_up(&self) -> f64 {
        self.server.scrape().get(&format!(
            "tlsvisor_upstream_up{{upstream=\"{}\"}}",
            self.upstream
        ))
    }

    /// The end of every case: nothing live, every disposal once and in a `disposed` line with
    /// its reason, no socket left open on either side, descriptors back.
    fn assert_books_clean(&self, reasons: &[(&str, usize)]) {
        self.wait_active(0);
        let m = self.server.scrape();
        for family in [
            "tlsvisor_dispose_duplicates_total",
            "tlsvisor_dispose_fallback_total",
            "tlsvisor_dispose_lost_total",
        ] {
            assert_eq!(m.get(family), 0.0, "{}: {family}", self.name);
        }
        let total: usize = reasons.iter().map(|(_, n)| n).sum();
        assert_eq!(
            m.get("tlsvisor_connections_accepted_total"),
            total as f64,
            "{}",
            self.name
        );
        let lines = self.server.logged("disposed", total);
        for (reason, n) in reasons {
            assert_eq!(m.disposed(reason), *n as f64, "{}: {reason}", self.name);
            let logged = lines.iter().filter(|l| l["reason"] == *reason).count();
            assert_eq!(logged, *n, "{}: disposed lines with {reason}", self.name);
        }
        let (listen, upstream) = (self.server.listen.port(), self.upstream.port());
        let open = || {
            leak::close_wait_on_port(listen).unwrap()
                + leak::sockets_on_local_port(listen, TcpState::Established).unwrap()
                + leak::sockets_to_remote_port(upstream, TcpState::Established).unwrap()
                + leak::sockets_to_remote_port(upstream, TcpState::CloseWait).unwrap()
        };
        assert!(
            eventually(HANG, || open() == 0),
            "{}: {} sockets left open",
            self.name,
            open()
        );
        let mut fds = 0.0;
        assert!(
            eventually(HANG, || {
                fds = self.server.scrape().get("process_open_fds");
                fds <= self.baseline_fds
            }),
            "{}: {fds} descriptors open, {} before",
            self.name,
            self.baseline_fds
        );
    }

    /// One row of the table in docs/operations.md.
    fn report(&self, seen: &str, reason: &str, to_disposal: Duration, rss: f64) {
        eprintln!(
            "HOSTILE | {} | {seen} | {reason} | {:.2} s | {:.1} KiB | up {}",
            self.name,
            to_disposal.as_secs_f64(),
            rss / 1024.0,
            self.upstream_up()
        );
    }
}

fn rss(server: &Tlsvisor) -> f64 {
    leak::rss_bytes(server.pid()).unwrap() as f64
}

/// How the clients saw their connections end, counted.
fn tally(ends: impl IntoIterator<Item = (usize, End)>) -> BTreeMap<End, (usize, usize)> {
    let mut seen: BTreeMap<End, (usize, usize)> = BTreeMap::new();
    for (bytes, end) in ends {
        let entry = seen.entry(end).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(bytes);
    }
    seen
}

/// (a) Clients upload into an upstream that never reads, until the proxy stops reading them
/// (backpressure). Half of them then reset: each is noticed at once, while the write of its
/// bytes is still stalled, and disposed as its own failure (`reader_error`; issue 17, finding
/// 7). The other half wait: the stalled write's limit (the idle timeout) ends them as
/// `upstream_error`, with `close_notify`. Health stays up: a TCP proxy cannot tell an upstream
/// that does not read from a busy one.
#[test]
fn an_upstream_that_never_reads() {
    let case = Case::start(
        "(a) accepts, never reads",
        Hostility::NeverReads,
        // Long enough that the first write to stall is not at its limit before the last
        // client is connected and stalled too.
        &["--idle-timeout", "15s"],
    );
    let (cue, go) = Cue::new();
    let each = cue.clone();
    let tasks = case.clients(move |tls, i| upload_into_a_stall(tls, each.clone(), i % 2 == 0));
    cue.wait_all_ready(case.name);
    // The writes upstream are stalled: what was forwarded stops growing.
    let forwarded = || {
        case.server
            .scrape()
            .get("tlsvisor_proxy_bytes_client_to_upstream_total")
    };
    let mut before = forwarded();
    assert!(eventually(HANG, || {
        std::thread::sleep(Duration::from_millis(500));
        let now = forwarded();
        std::mem::replace(&mut before, now) == now
    }));
    let rss = case.rss_per_connection();
    let started = Instant::now();
    go.send(true).unwrap();
    let resets_done = case.wait_disposed("reader_error", CLIENTS / 2);
    let results = case.join(tasks);
    let stalled_done = case.wait_disposed("upstream_error", CLIENTS / 2);
    let uploaded: usize = results.iter().map(|(sent, _)| sent).sum();
    eprintln!(
        "{}: {uploaded} bytes uploaded, {before} forwarded to the upstream",
        case.name
    );
    assert!((before as usize) < uploaded, "nothing held back");
    let seen = tally(results.iter().map(|(_, seen)| *seen));
    assert_eq!(
        seen.get(&End::ResetByClient),
        Some(&(CLIENTS / 2, 0)),
        "{seen:?}"
    );
    assert_eq!(
        seen.get(&End::CloseNotify),
        Some(&(CLIENTS / 2, 0)),
        "{seen:?}"
    );
    assert_eq!(case.upstream_up(), 1.0);
    case.assert_books_clean(&[
        ("reader_error", CLIENTS / 2),
        ("upstream_error", CLIENTS / 2),
    ]);
    case.report(
        "half: their own reset (noticed while the write upstream is stalled)",
        "reader_error",
        resets_done - started,
        rss,
    );
    case.report(
        "the other half: close_notify at the write's stall limit (the idle timeout, 15 s here)",
        "upstream_error",
        stalled_done - started,
        rss,
    );
}

/// (b) An upstream that reads and never answers: the clients, once quiet, are closed at the
/// idle timeout with `close_notify` and nothing else. Health stays up (no answer is not a
/// failure a TCP proxy can judge: a subscriber waits for ever, legitimately).
#[test]
fn an_upstream_that_never_answers() {
    let case = Case::start(
        "(b) reads, never answers",
        Hostility::NeverAnswers,
        &["--idle-timeout", "3s"],
    );
    let (cue, go) = Cue::new();
    let each = cue.clone();
    let tasks = case.clients(move |tls, _| request_and_keep_alive(tls, each.clone()));
    cue.wait_all_ready(case.name);
    case.wait_active(CLIENTS);
    let rss = case.rss_per_connection();
    let quiet = Instant::now();
    go.send(true).unwrap();
    let done = case.wait_disposed("idle_timeout", CLIENTS);
    let seen = tally(case.join(tasks));
    assert_eq!(seen.get(&End::CloseNotify), Some(&(CLIENTS, 0)), "{seen:?}");
    assert_eq!(case.upstream_up(), 1.0);
    case.assert_books_clean(&[("idle_timeout", CLIENTS)]);
    case.report(
        "close_notify, no byte, at the idle timeout (3 s here)",
        "idle_timeout",
        done - quiet,
        rss,
    );
}

/// (c) An upstream that resets after part of its answer: the clients get that part, then
/// `close_notify` (a failure ends the stream cleanly: ARCHITECTURE.md, "Where the guarantees
/// do not hold"), at once. Health stays up: it had answered; the next connect tells whether it
/// is gone.
#[test]
fn an_upstream_that_resets_mid_stream() {
    let case = Case::start(
        "(c) resets mid-stream",
        Hostility::ResetsMidStream,
        &["--idle-timeout", "30s"],
    );
    let tasks = case.clients(|mut tls, _| async move {
        tls.write_all(REQUEST).await.unwrap();
        tls.flush().await.unwrap();
        let seen = read_until_close(&mut tls).await;
        let _ = tls.shutdown().await;
        seen
    });
    let seen = tally(case.join(tasks));
    assert_eq!(
        seen.get(&End::CloseNotify),
        Some(&(CLIENTS, PARTIAL)),
        "{seen:?}"
    );
    case.wait_disposed("upstream_error", CLIENTS);
    assert_eq!(case.upstream_up(), 1.0);
    case.assert_books_clean(&[("upstream_error", CLIENTS)]);
    let rss = (rss(&case.server) - case.baseline_rss) / CLIENTS as f64;
    case.report(
        "the part answered, then close_notify",
        "upstream_error",
        longest_life(&case.server),
        rss,
    );
}

/// (d) An upstream that closes (a FIN) half-way through its answer: the clients get the part
/// and `close_notify` (the upstream's end, passed on), and the connection ends when they
/// close too: `upstream_eof`. Health stays up.
#[test]
fn an_upstream_that_closes_half_way() {
    let case = Case::start(
        "(d) closes half-way",
        Hostility::ClosesHalfway,
        &["--idle-timeout", "30s"],
    );
    let (cue, go) = Cue::new();
    let each = cue.clone();
    let tasks = case.clients(move |tls, _| request_then_close_on_cue(tls, each.clone()));
    cue.wait_all_ready(case.name);
    case.wait_active(CLIENTS);
    let rss = case.rss_per_connection();
    let closing = Instant::now();
    go.send(true).unwrap();
    let done = case.wait_disposed("upstream_eof", CLIENTS);
    let seen = tally(case.join(tasks));
    assert_eq!(
        seen.get(&End::CloseNotify),
        Some(&(CLIENTS, PARTIAL)),
        "{seen:?}"
    );
    assert_eq!(case.upstream_up(), 1.0);
    case.assert_books_clean(&[("upstream_eof", CLIENTS)]);
    case.report(
        "the part answered, then close_notify; ends when the client closes",
        "upstream_eof",
        done - closing,
        rss,
    );
}

/// (e) An upstream that accepts and closes at once, before a byte: what a forwarder in front
/// of a dead server does. The clients get `close_notify` and nothing else, and the connection
/// ends when they close too: `upstream_eof` — or `upstream_error` for a client whose request
/// reached the closed socket before its FIN was read (its kernel answers the bytes with a
/// reset), a race the proxy cannot avoid. Health stays up: passive health judges connects
/// (`upstream/pool.rs`), and this one connected; the first byte is not waited for.
#[test]
fn an_upstream_that_accepts_then_closes_at_once() {
    let case = Case::start(
        "(e) accepts then closes",
        Hostility::AcceptsThenCloses,
        &["--idle-timeout", "30s"],
    );
    let (cue, go) = Cue::new();
    let each = cue.clone();
    let tasks = case.clients(move |tls, _| request_then_close_on_cue(tls, each.clone()));
    cue.wait_all_ready(case.name);
    let rss = case.rss_per_connection();
    let closing = Instant::now();
    go.send(true).unwrap();
    let reasons = ["upstream_eof", "upstream_error"];
    let done = case.wait_disposed_as_any(&reasons, CLIENTS);
    let seen = tally(case.join(tasks));
    assert_eq!(seen.get(&End::CloseNotify), Some(&(CLIENTS, 0)), "{seen:?}");
    let m = case.server.scrape();
    let split = reasons.map(|r| (r, m.disposed(r) as usize));
    assert_eq!(case.upstream_up(), 1.0);
    let failures = m.get(&format!(
        "tlsvisor_upstream_connect_failures_total{{upstream=\"{}\"}}",
        case.upstream
    ));
    assert_eq!(failures, 0.0);
    case.assert_books_clean(&split);
    case.report(
        &format!(
            "close_notify, no byte; ends when the client closes ({} upstream_eof, {} upstream_error)",
            split[0].1, split[1].1
        ),
        "upstream_eof / upstream_error",
        done - closing,
        rss,
    );
}

/// (f) An upstream that answers one byte a second: the bytes go through as they come (each
/// one written and flushed, a few bytes of memory each). The idle timeout counts bytes either
/// way (as nginx's `proxy_timeout` does: a client that only listens to a stream is not idle),
/// so the trickle keeps the connection open while it lasts; it ends when the client closes:
/// its `close_notify` reaches the upstream as a FIN, the upstream closes, and the connection
/// is `peer_eof` (the client finished first). Health stays up.
#[test]
fn an_upstream_that_answers_a_byte_a_second() {
    let case = Case::start(
        "(f) one byte a second",
        Hostility::Trickles,
        &["--idle-timeout", "2s"],
    );
    let (cue, go) = Cue::new();
    let each = cue.clone();
    let tasks = case.clients(move |tls, _| trickled_then_close_on_cue(tls, each.clone()));
    cue.wait_all_ready(case.name);
    // Past the idle timeout with no byte from the clients: the trickle keeps them open.
    let rss = case.rss_per_connection();
    std::thread::sleep(Duration::from_millis(2500));
    case.wait_active(CLIENTS);
    let closing = Instant::now();
    go.send(true).unwrap();
    let done = case.wait_disposed("peer_eof", CLIENTS);
    let ends = case.join(tasks);
    assert!(
        ends.iter()
            .all(|(bytes, end)| *end == End::CloseNotify && *bytes >= 2),
        "{:?}",
        tally(ends.clone())
    );
    assert_eq!(case.upstream_up(), 1.0);
    case.assert_books_clean(&[("peer_eof", CLIENTS)]);
    case.report(
        "a byte a second, for as long as it lasts (the idle timeout counts both ways); close_notify once the client closes",
        "peer_eof",
        done - closing,
        rss,
    );
}

/// The longest `lifetime_ms` of the `disposed` lines: from accept to disposal.
fn longest_life(server: &Tlsvisor) -> Duration {
    let longest = server
        .logs_with("disposed")
        .iter()
        .filter_map(|l| l["lifetime_ms"].as_u64())
        .max()
        .unwrap_or(0);
    Duration::from_millis(longest)
}

/// (g) needs root: it makes a network namespace.
#[cfg(feature = "interop")]
mod interop {
    use super::*;
    use std::process::Command;

    /// An address whose connects are black-holed: a network namespace of this test's own,
    /// joined to ours by a veth pair, and a route through it to a /25 that nobody there holds.
    /// The namespace does not forward (its default), so a SYN sent there is dropped without a
    /// word (no RST, no ICMP): the connect waits until its timeout, as to a host that is down
    /// behind a firewall. Deleting the namespace deletes the veth pair and with it the route.
    struct BlackHole {
        ns: String,
        addr: SocketAddr,
    }

    fn ip(args: &[&str]) {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {}", args.join(" "));
    }

    impl BlackHole {
        fn make() -> BlackHole {
            let pid = std::process::id();
            let ns = format!("tvh{pid}");
            let (ours, theirs) = (format!("{ns}a"), format!("{ns}b"));
            // A /30 for the link and a /25 behind it, in 10.77.0.0/16 (deploy/netns uses
            // 10.12.0.0/16), one /24 per process id.
            let net = format!("10.77.{}", pid % 250);
            let hole = BlackHole {
                addr: format!("{net}.200:6379").parse().unwrap(),
                ns: ns.clone(),
            };
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &ours, "type", "veth", "peer", "name", &theirs, "netns", &ns,
            ]);
            ip(&["addr", "add", &format!("{net}.1/30"), "dev", &ours]);
            ip(&["link", "set", &ours, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{net}.2/30"),
                "dev",
                &theirs,
            ]);
            ip(&["-n", &ns, "link", "set", &theirs, "up"]);
            let forwarding = Command::new("ip")
                .args(["netns", "exec", &ns, "cat", "/proc/sys/net/ipv4/ip_forward"])
                .output()
                .unwrap();
            assert_eq!(forwarding.stdout, b"0\n", "the namespace must not forward");
            ip(&[
                "route",
                "add",
                &format!("{net}.128/25"),
                "via",
                &format!("{net}.2"),
            ]);
            // Black-holed indeed: neither refused nor unreachable, just no answer.
            let tried =
                std::net::TcpStream::connect_timeout(&hole.addr, Duration::from_millis(300));
            let e = tried.expect_err("a connect into the black hole");
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ),
                "{e}"
            );
            hole
        }
    }

    impl Drop for BlackHole {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        }
    }

    /// (g) An upstream that cannot be reached: its connects are black-holed (no RST, no ICMP),
    /// so each waits for `--upstream-connect-timeout`. The clients get `close_notify` and no
    /// byte when it expires; the first failure marks the upstream down (and, being the only
    /// one, it is still tried: no client is refused on stale state).
    #[test]
    fn an_unreachable_upstream() {
        // SAFETY: geteuid only reads the process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("an_unreachable_upstream: skipped, a network namespace needs root");
            return;
        }
        let hole = BlackHole::make();
        let case = Case::proxying_to(
            "(g) unreachable (black-holed)",
            hole.addr,
            None,
            // Long enough that every client is connected while the first connect still waits.
            &["--idle-timeout", "30s", "--upstream-connect-timeout", "10s"],
        );
        let (cue, go) = Cue::new();
        let each = cue.clone();
        let tasks = case.clients(move |tls, _| request_then_close_on_cue(tls, each.clone()));
        case.wait_active(CLIENTS);
        let rss = case.rss_per_connection();
        case.wait_disposed("upstream_connect_failed", CLIENTS);
        cue.wait_all_ready(case.name);
        go.send(true).unwrap();
        let seen = tally(case.join(tasks));
        assert_eq!(seen.get(&End::CloseNotify), Some(&(CLIENTS, 0)), "{seen:?}");
        assert_eq!(case.upstream_up(), 0.0, "marked down");
        let failures = case.server.scrape().get(&format!(
            "tlsvisor_upstream_connect_failures_total{{upstream=\"{}\"}}",
            case.upstream
        ));
        assert_eq!(failures, CLIENTS as f64);
        case.assert_books_clean(&[("upstream_connect_failed", CLIENTS)]);
        case.report(
            "close_notify, no byte, at the connect timeout (10 s here)",
            "upstream_connect_failed",
            longest_life(&case.server),
            rss,
        );
    }
}
