//! The soak's own upstreams: plaintext echo servers on loopback that obey a command in a
//! connection's first four bytes, and that go down on a schedule (the listening socket is
//! closed, so tlsvisor's connects are refused) and come back.
//!
//! Two of them, given to tlsvisor as two `--upstream`s:
//! - the *steady* one is down one second a minute, at a moment the flaky one is down too: only
//!   then does a client see `upstream_connect_failed` (tlsvisor retries a refused connect once
//!   on the other upstream);
//! - the *flaky* one is down 10 s of every 30 s, which exercises the pool's passive health
//!   (down, backoff, probe) and the retry without clients noticing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// First bytes of a request the upstream answers by resetting the connection at once
/// (`SO_LINGER` 0): tlsvisor records `upstream_error`.
pub(crate) const RESET: &[u8; 4] = b"RST!";
/// First bytes of a request the upstream answers with [`BYE`] and a close (FIN): tlsvisor
/// records `upstream_eof`.
pub(crate) const CLOSE: &[u8; 4] = b"FIN!";
/// What the upstream writes before closing on [`CLOSE`].
pub(crate) const BYE: &[u8; 4] = b"BYE\n";

/// How often an upstream looks at its schedule.
const TICK: Duration = Duration::from_millis(50);
/// The most one upstream connection may last (nothing in the mix comes near it).
const CONNECTION_LIMIT: Duration = Duration::from_secs(120);

/// When an upstream is down, from the start of the soak.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Schedule {
    /// Down `[25 s, 26 s)` of every minute (inside a down period of [`Schedule::Flaky`]).
    Steady,
    /// Down `[20 s, 30 s)` of every 30 s.
    Flaky,
}

impl Schedule {
    fn is_up(self, since_start: Duration) -> bool {
        let ms = since_start.as_millis() as u64;
        match self {
            Schedule::Steady => !(25_000..26_000).contains(&(ms % 60_000)),
            Schedule::Flaky => ms % 30_000 < 20_000,
        }
    }
}

/// What clients need to know of the upstreams going down. A client that failed may have
/// failed for it (and rightly) if, during its life, every upstream was down (tlsvisor had
/// nowhere to connect: `upstream_connect_failed`) or an upstream closed its listening socket
/// (the connections the kernel had completed and not yet handed to `accept` are reset:
/// `upstream_error` for a connection whose upstream connect had just succeeded).
#[derive(Debug, Default)]
pub(crate) struct Outages {
    /// Bumped as the steady upstream goes down (odd: every upstream is down) and again as it
    /// is back (even).
    epoch: AtomicU64,
    /// Bumped as any upstream closes its listening socket.
    pub(crate) closings: AtomicU64,
    /// How many outages of every upstream began.
    pub(crate) count: AtomicU64,
    /// How many times a listening socket could not be bound again at once.
    pub(crate) rebind_failures: AtomicU64,
}

/// Where [`Outages`] stood as a client began.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    epoch: u64,
    closings: u64,
}

impl Outages {
    /// Where things stand now, to compare with [`Outages::overlapped`] at the end of a client.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            epoch: self.epoch.load(Ordering::SeqCst),
            closings: self.closings.load(Ordering::SeqCst),
        }
    }

    /// Whether every upstream was down at `mark` or since, or an upstream closed its listening
    /// socket since.
    pub(crate) fn overlapped(&self, mark: Mark) -> bool {
        mark.epoch % 2 == 1
            || self.epoch.load(Ordering::SeqCst) != mark.epoch
            || self.closings.load(Ordering::SeqCst) != mark.closings
    }
}

/// One upstream: its fixed address, served on its schedule until `stop`.
pub(crate) struct Upstream {
    /// Where it listens while up.
    pub(crate) addr: SocketAddr,
}

impl Upstream {
    /// Binds a port and serves it on `schedule` (counted from `start`) until `stop` is set.
    pub(crate) async fn start(
        schedule: Schedule,
        start: Instant,
        outages: Arc<Outages>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve(listener, addr, schedule, start, outages, stop));
        Ok(Upstream { addr })
    }
}

async fn serve(
    first: TcpListener,
    addr: SocketAddr,
    schedule: Schedule,
    start: Instant,
    outages: Arc<Outages>,
    stop: Arc<AtomicBool>,
) {
    let mut listener = Some(first);
    while !stop.load(Ordering::SeqCst) {
        let up = schedule.is_up(start.elapsed());
        match (&listener, up) {
            (Some(l), true) => {
                if let Ok(Ok((tcp, _))) = tokio::time::timeout(TICK, l.accept()).await {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(CONNECTION_LIMIT, handle(tcp)).await;
                    });
                }
                continue;
            }
            (Some(_), false) => {
                // Closing the socket refuses connects from now on; connections already
                // accepted go on (those still in the backlog are reset by the kernel).
                listener = None;
                outages.closings.fetch_add(1, Ordering::SeqCst);
                if let Schedule::Steady = schedule {
                    outages.count.fetch_add(1, Ordering::SeqCst);
                    outages.epoch.fetch_add(1, Ordering::SeqCst);
                }
            }
            (None, true) => match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    if let Schedule::Steady = schedule {
                        outages.epoch.fetch_add(1, Ordering::SeqCst);
                    }
                    continue;
                }
                Err(_) => {
                    outages.rebind_failures.fetch_add(1, Ordering::SeqCst);
                }
            },
            (None, false) => {}
        }
        tokio::time::sleep(TICK).await;
    }
}

/// One upstream connection: a command in the first four bytes, else an echo of everything
/// until the client's end, then a FIN.
async fn handle(mut tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match tcp.read(&mut head[got..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    if &head == RESET {
        let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
        return;
    }
    if &head == CLOSE {
        let _ = tcp.write_all(BYE).await;
        return;
    }
    if tcp.write_all(&head[..got]).await.is_err() {
        return;
    }
    if got == head.len() {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    }
    let _ = tcp.shutdown().await;
}
