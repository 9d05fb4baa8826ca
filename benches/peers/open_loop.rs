//! An open-loop load client for the `tail` phase: redis PINGs at a fixed rate over a few TLS
//! connections, each request sent at the time the schedule gives it whatever the replies to
//! earlier ones are doing, and its latency measured from that scheduled time.
//!
//! A closed-loop client (send, wait for the reply, send the next) stops sending while the
//! server stalls, so the stall is counted once, by the one request that waited, and the
//! requests it would have sent meanwhile are never measured ("coordinated omission"). Here the
//! pacer keeps sending on schedule, pipelining on a connection whose previous reply is late,
//! and every request a stall delays carries the stall in its latency. Should the client itself
//! fall behind, measuring from the scheduled time still counts the delay, and the run says so:
//! its achieved rate falls short of the asked rate and its send lag grows.
//!
//! tokio's timer has a granularity of a millisecond, far coarser than the latencies measured
//! here (tens of microseconds), so the pacer sleeps on a `timerfd` armed for each send's
//! absolute time (nanosecond resolution, `CLOCK_MONOTONIC`), and every timestamp is read from
//! that clock.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::load;

/// The request, inline redis protocol, and the reply every one of them gets.
const PING: &[u8] = b"PING\r\n";
const PONG: &[u8] = b"+PONG\r\n";

/// How long the replies still in flight after the last send may take before they count as lost.
const DRAIN: Duration = Duration::from_secs(10);

/// Latencies recorded, in nanoseconds: 1 µs to 60 s at three significant digits.
const LOWEST_NS: u64 = 1_000;
const HIGHEST_NS: u64 = 60_000_000_000;

/// What one open-loop run asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// Requests per second, over all connections.
    pub rate: u64,
    /// Connections, each given every `connections`-th request of the schedule.
    pub connections: usize,
    /// Sent but not recorded: the connections, caches and the server settle first.
    pub warmup: Duration,
    /// Sent and recorded.
    pub measured: Duration,
}

impl Plan {
    fn warmup_requests(&self) -> u64 {
        (self.warmup.as_secs_f64() * self.rate as f64).round() as u64
    }

    /// The requests whose latency is recorded.
    pub(crate) fn measured_requests(&self) -> u64 {
        (self.measured.as_secs_f64() * self.rate as f64).round() as u64
    }

    /// The scheduled send time of request `i`, `start` being request 0's.
    fn scheduled(&self, start: u64, i: u64) -> u64 {
        start + (i as f64 * 1e9 / self.rate as f64) as u64
    }
}

/// What one run measured.
pub(crate) struct Outcome {
    /// Round trip of each recorded request, from its scheduled send time to its reply, in ns.
    pub latency: Histogram<u64>,
    /// How late the pacer sent each recorded request, in ns: the client's own timing error.
    pub send_lag: Histogram<u64>,
    /// Replies to recorded requests per second, over the time the recorded sends actually took.
    pub achieved_rate: f64,
    /// The client thread's CPU time over the recorded sends, as a share of one core.
    pub client_cpu_share: f64,
    /// Recorded requests that got no reply (a connection broke, or `DRAIN` ran out).
    pub lost: u64,
    /// Connections that broke during the run.
    pub broken: usize,
    /// CPU time of the server process over the recorded sends.
    pub server_cpu: Duration,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the timerfd and of every timestamp.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec passed by pointer, which outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) of the calling thread: the client's runtime is one thread.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct passed by pointer, which outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// A sleep to an absolute `CLOCK_MONOTONIC` time through a timerfd.
struct Pacer {
    timer: AsyncFd<OwnedFd>,
}

impl Pacer {
    fn new() -> std::io::Result<Pacer> {
        // SAFETY: timerfd_create with constant arguments; the descriptor is owned right after.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by timerfd_create and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns `fd`, an open timerfd, for as long as it lives, and an
        // OwnedFd's as_raw_fd always returns the descriptor it owns.
        let timer = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Pacer { timer })
    }

    async fn sleep_until(&self, at_ns: u64) -> std::io::Result<()> {
        if now_ns() >= at_ns {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        let fd = self.timer.get_ref().as_raw_fd();
        // SAFETY: timerfd_settime reads `spec`, which outlives the call, on a timerfd we own.
        let armed = unsafe {
            libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        };
        if armed != 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            let mut ready = self.timer.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live 8-byte buffer.
            let n = unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::WouldBlock {
                return Err(error);
            }
            // A readiness left from an earlier expiration, already read: wait for this one.
            ready.clear_ready();
        }
    }
}

/// One connection's side of the run: the scheduled times of its requests awaiting a reply,
/// oldest first (redis replies in order).
#[derive(Default)]
struct InFlight {
    scheduled: RefCell<VecDeque<u64>>,
    broken: Cell<bool>,
}

/// The window of scheduled times whose requests are recorded.
#[derive(Clone, Copy)]
struct Window {
    from: u64,
    until: u64,
}

impl Window {
    fn contains(&self, scheduled: u64) -> bool {
        (self.from..self.until).contains(&scheduled)
    }
}

/// Reads `+PONG\r\n` replies and records, for those in `window`, the time from the scheduled
/// send to the read that completed them. Returns when the connection ends or says something
/// else; the pacer then sends it nothing more.
async fn read_replies(
    mut reader: ReadHalf<TlsStream<TcpStream>>,
    in_flight: &InFlight,
    window: &Cell<Window>,
    latency: &RefCell<Histogram<u64>>,
) {
    let mut buf = [0u8; 16 * 1024];
    // Bytes of the current reply already read.
    let mut at = 0;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Every reply this read completed arrived together: one timestamp for all.
        let now = now_ns();
        for &byte in &buf[..n] {
            if byte != PONG[at] {
                eprintln!("tail: unexpected reply byte {byte:#x}");
                in_flight.broken.set(true);
                return;
            }
            at += 1;
            if at < PONG.len() {
                continue;
            }
            at = 0;
            let Some(scheduled) = in_flight.scheduled.borrow_mut().pop_front() else {
                eprintln!("tail: a reply to no request");
                in_flight.broken.set(true);
                return;
            };
            if window.get().contains(scheduled) {
                latency
                    .borrow_mut()
                    .saturating_record(now.saturating_sub(scheduled).max(LOWEST_NS));
            }
        }
    }
    in_flight.broken.set(true);
}

/// Runs `plan` against the TLS server at `addr` (a PING answered with `+PONG`), whose process
/// is `server_pid`, on the current thread. An error if the connections could not be opened or
/// all of them broke.
pub(crate) async fn run(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    plan: Plan,
    server_pid: u32,
) -> Result<Outcome, String> {
    let conns = load::open_idle(addr, config, plan.connections).await;
    if conns.len() < plan.connections {
        return Err(format!(
            "only {} of {} connections opened",
            conns.len(),
            plan.connections
        ));
    }
    let pacer = Pacer::new().map_err(|e| format!("timerfd: {e}"))?;
    let mut writers: Vec<WriteHalf<TlsStream<TcpStream>>> = Vec::new();
    let mut readers = Vec::new();
    for conn in conns {
        let (reader, writer) = tokio::io::split(conn);
        readers.push(reader);
        writers.push(writer);
    }
    let in_flight: Vec<InFlight> = (0..plan.connections).map(|_| InFlight::default()).collect();
    let latency = RefCell::new(
        Histogram::<u64>::new_with_bounds(LOWEST_NS, HIGHEST_NS, 3)
            .map_err(|e| format!("histogram: {e}"))?,
    );
    let mut send_lag = Histogram::<u64>::new_with_bounds(LOWEST_NS, HIGHEST_NS, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    // Set once the start time is known; no reply can arrive before the first send.
    let window = Cell::new(Window { from: 0, until: 0 });

    let reading = futures::future::join_all(
        readers
            .into_iter()
            .zip(&in_flight)
            .map(|(reader, in_flight)| read_replies(reader, in_flight, &window, &latency)),
    );

    let sending = async {
        let warm = plan.warmup_requests();
        let total = warm + plan.measured_requests();
        // A little ahead, so that request 0 is not late already.
        let start = now_ns() + 20_000_000;
        window.set(Window {
            from: plan.scheduled(start, warm),
            until: plan.scheduled(start, total),
        });
        let mut began = (0, Duration::ZERO, Duration::ZERO);
        let mut last_send = 0;
        for i in 0..total {
            let at = plan.scheduled(start, i);
            if let Err(e) = pacer.sleep_until(at).await {
                return Err(format!("timerfd: {e}"));
            }
            if i == warm {
                began = (now_ns(), thread_cpu(), crate::procfs::cpu(server_pid));
            }
            let c = (i % plan.connections as u64) as usize;
            if in_flight[c].broken.get() {
                continue;
            }
            in_flight[c].scheduled.borrow_mut().push_back(at);
            let writer = &mut writers[c];
            // write_all hands the request to rustls, flush writes its record to the socket.
            let sent = async {
                writer.write_all(PING).await?;
                writer.flush().await
            };
            if sent.await.is_err() {
                in_flight[c].broken.set(true);
            }
            let now = now_ns();
            if i >= warm {
                send_lag.saturating_record(now.saturating_sub(at).max(LOWEST_NS));
            }
            last_send = now;
        }
        let ended = (thread_cpu(), crate::procfs::cpu(server_pid));
        // The replies still in flight.
        let deadline = now_ns() + DRAIN.as_nanos() as u64;
        while now_ns() < deadline
            && in_flight
                .iter()
                .any(|f| !f.broken.get() && !f.scheduled.borrow().is_empty())
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok((began, last_send, ended))
    };

    let (began, last_send, ended) = tokio::select! {
        sent = sending => sent?,
        _ = reading => return Err("every connection broke".to_string()),
    };
    let latency = latency.into_inner();
    let recorded = plan.measured_requests();
    // From the first recorded send's scheduled time to the last one's actual send, plus one
    // interval: the measured duration exactly when the pacer kept up.
    let span_ns = last_send.saturating_sub(window.get().from) as f64 + 1e9 / plan.rate as f64;
    let wall = Duration::from_nanos(last_send.saturating_sub(began.0).max(1));
    Ok(Outcome {
        achieved_rate: latency.len() as f64 / (span_ns / 1e9),
        client_cpu_share: ended.0.saturating_sub(began.1).as_secs_f64() / wall.as_secs_f64(),
        lost: recorded.saturating_sub(latency.len()),
        broken: in_flight.iter().filter(|f| f.broken.get()).count(),
        server_cpu: ended.1.saturating_sub(began.2),
        latency,
        send_lag,
    })
}
