//! The process under a supervisor: systemd's socket activation and notifications, and the
//! binary upgrade on SIGUSR2. Real programs (`systemd-socket-activate`, the binary itself),
//! real sockets.

// The notification tests need `fault-injection`; without it their helpers are unused.
#![cfg_attr(not(feature = "fault-injection"), allow(dead_code, unused_imports))]

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{try_http_get, Limits, Metrics, Tlsvisor, HANG};
use tlsvisor_actors::testing::{client_config, eventually, CloseSeen, ScratchDir, TlsClient};

fn echo_once(addr: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    let mut client = TlsClient::connect(addr, client_config(&common::dev_ca())?)?;
    let back = client.echo(payload)?;
    if back != payload {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// A TLS client on each of `addrs`, each having echoed once.
fn live_clients(addrs: &[SocketAddr]) -> Vec<TlsClient> {
    let config = client_config(&common::dev_ca()).unwrap();
    addrs
        .iter()
        .map(|addr| {
            let mut client = TlsClient::connect(*addr, Arc::clone(&config)).unwrap();
            assert_eq!(client.echo(b"live").unwrap(), b"live");
            client
        })
        .collect()
}

/// Each client sees the server's close_notify, then EOF (a graceful drain).
fn assert_closed_gracefully(live: Vec<TlsClient>) {
    for mut client in live {
        assert!(matches!(
            client.read_until_close(),
            CloseSeen::CloseNotifyThenEof
        ));
    }
}

/// Under `systemd-socket-activate` (Debian's `systemd`), hence `interop`.
#[cfg(feature = "interop")]
mod interop {
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::{assert_closed_gracefully, echo_once, live_clients};
    use crate::common::{self, HANG};
    use tlsvisor_actors::testing::eventually;

    /// The inodes of the sockets listening on `port` (from /proc/net/tcp and tcp6).
    fn listening_inodes(port: u16) -> Vec<String> {
        let mut inodes = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(table) = std::fs::read_to_string(table) else {
                continue;
            };
            inodes.extend(table.lines().skip(1).filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = u16::from_str_radix(fields[1].rsplit(':').next()?, 16).ok()?;
                (local_port == port && fields[3] == "0A").then(|| fields[9].to_string())
            }));
        }
        inodes
    }

    /// The inode of the socket listening on `port`, if any.
    fn listening_inode(port: u16) -> Option<String> {
        listening_inodes(port).into_iter().next()
    }

    /// Whether process `pid` holds the socket with inode `inode`.
    fn holds_socket(pid: u32, inode: &str) -> bool {
        let wanted = format!("socket:[{inode}]");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == wanted)
                })
            })
            .unwrap_or(false)
    }

    /// `systemd-socket-activate` listening on each of `sockets` (with its FileDescriptorName)
    /// and starting the server, with `--listen` for each of `listen`, at the first connection;
    /// its stderr lines collected.
    struct Activated {
        child: std::process::Child,
        lines: Arc<Mutex<Vec<String>>>,
        collector: Option<std::thread::JoinHandle<()>>,
    }

    impl Activated {
        fn start(sockets: &[(SocketAddr, &str)], listen: &[SocketAddr]) -> Activated {
            let mut server = vec![env!("CARGO_BIN_EXE_tlsvisor").to_string(), "serve".into()];
            for addr in listen {
                server.extend(["--listen".to_string(), addr.to_string()]);
            }
            server.extend(
                [
                    "--log-format",
                    "json",
                    "--shutdown-grace",
                    "5s",
                    "--workers",
                    "2",
                ]
                .map(String::from),
            );
            let names: Vec<&str> = sockets.iter().map(|(_, name)| *name).collect();
            let mut command = Command::new("systemd-socket-activate");
            for (addr, _) in sockets {
                command.args(["-l", &addr.to_string()]);
            }
            let mut child = command
                .arg(format!("--fdname={}", names.join(":")))
                .args(&server)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("systemd-socket-activate (Debian package systemd) must be installed");
            let lines = Arc::new(Mutex::new(Vec::<String>::new()));
            let sink = Arc::clone(&lines);
            let stderr = child.stderr.take().unwrap();
            let collector = std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            Activated {
                child,
                lines,
                collector: Some(collector),
            }
        }

        fn logs(&self) -> String {
            self.lines.lock().unwrap().join("\n")
        }

        /// The pid of the server (systemd-socket-activate execs it in place).
        fn pid(&self) -> u32 {
            self.child.id()
        }

        /// SIGTERM with a live client on each of `addrs`: each sees close_notify, and the process
        /// exits 0. Returns the logs.
        fn terminate_draining(&mut self, addrs: &[SocketAddr]) -> String {
            let live = live_clients(addrs);
            let status = self.terminate();
            assert_closed_gracefully(live);
            let logs = self.logs();
            assert!(
                status.success(),
                "exit 0 after the drain: {status:?}\n{logs}"
            );
            logs
        }

        /// SIGTERM; the exit status once the process is gone, with every log line read.
        fn terminate(&mut self) -> std::process::ExitStatus {
            // SAFETY: kill(2) on our own child's pid.
            assert_eq!(unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) }, 0);
            let deadline = Instant::now() + HANG;
            let status = loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    break status;
                }
                assert!(Instant::now() < deadline, "no exit after SIGTERM");
                std::thread::sleep(Duration::from_millis(10));
            };
            if let Some(collector) = self.collector.take() {
                collector.join().unwrap();
            }
            status
        }
    }

    impl Drop for Activated {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn under_systemd_socket_activate_the_socket_is_inherited_and_sigterm_drains_and_exits_0() {
        let addr = common::free_addr();
        let port = addr.port();
        let mut activated = Activated::start(&[(addr, "tls")], &[addr]);
        // systemd-socket-activate listens itself and starts the server at the first connection.
        assert!(eventually(HANG, || listening_inode(port).is_some()));
        let inode = listening_inode(port).unwrap();
        // The first client is queued on the socket before the server exists; it must be served.
        echo_once(addr, b"first").expect("the first client is served");
        let pid = activated.pid();
        assert!(
            holds_socket(pid, &inode),
            "the server serves the socket it inherited"
        );
        assert_eq!(
            listening_inode(port),
            Some(inode),
            "nothing else listens on the port"
        );
        let logs = activated.logs();
        assert!(
            logs.contains("serving an inherited socket (LISTEN_FDS)"),
            "{logs}"
        );
        assert!(
            logs.contains(r#""name":"tls""#),
            "its FileDescriptorName is logged: {logs}"
        );

        // A live client during SIGTERM: it gets close_notify, the process exits 0.
        let logs = activated.terminate_draining(&[addr]);
        assert!(logs.contains("shutdown complete"), "{logs}");
    }

    /// Two sockets from `systemd-socket-activate` (IPv4 and IPv6 where possible), named, and
    /// `--listen` naming them in the other order: each is mapped by its address, inherited (the
    /// server never binds), and served; SIGTERM drains both.
    #[test]
    fn under_systemd_socket_activate_two_sockets_are_inherited_by_address_and_served() {
        let (v4, second) = (common::free_addr(), common::free_second_addr());
        let mut activated =
            Activated::start(&[(v4, "public4"), (second, "public6")], &[second, v4]);
        assert!(eventually(HANG, || listening_inode(v4.port()).is_some()
            && listening_inode(second.port()).is_some()));
        let inodes = [v4, second].map(|a| listening_inode(a.port()).unwrap());
        echo_once(v4, b"first, queued before the server runs").expect("served");
        echo_once(second, b"second address").expect("served");
        let pid = activated.pid();
        for (addr, inode) in [v4, second].iter().zip(&inodes) {
            assert!(
                holds_socket(pid, inode),
                "{addr}: the inherited socket is served"
            );
            assert_eq!(
                listening_inodes(addr.port()),
                std::slice::from_ref(inode),
                "{addr}: nothing else listens on its port (the server bound nothing)"
            );
        }
        let logs = activated.logs();
        let inherited: Vec<serde_json::Value> = activated
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["msg"] == "serving an inherited socket (LISTEN_FDS)")
            .collect();
        assert_eq!(inherited.len(), 2, "{logs}");
        for (line, (addr, name)) in inherited.iter().zip([(second, "public6"), (v4, "public4")]) {
            assert_eq!(line["listen"], addr.to_string(), "{logs}");
            assert_eq!(line["name"], name, "{logs}");
            assert_eq!(line["matched"], "address", "{logs}");
        }
        activated.terminate_draining(&[v4, second]);
    }
}

/// Receives notifications on a datagram socket the test owns, with their arrival times.
struct NotifySocket {
    socket: UnixDatagram,
    _dir: ScratchDir,
    path: String,
}

impl NotifySocket {
    fn new(name: &str) -> NotifySocket {
        let dir = ScratchDir::new(name).unwrap();
        let path = dir.path("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        NotifySocket {
            socket,
            path: path.to_string_lossy().into_owned(),
            _dir: dir,
        }
    }

    /// Waits (up to HANG) until `count` messages for which `wanted` holds have arrived; every
    /// message received meanwhile, with its arrival time.
    fn until_count(&self, count: usize, wanted: fn(&str) -> bool) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + HANG;
        let mut messages = Vec::new();
        let mut found = 0;
        let mut buf = [0_u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                found += usize::from(wanted(&message));
                messages.push((Instant::now(), message));
                if found == count {
                    return messages;
                }
            }
        }
        panic!("{found} of {count} wanted messages within {HANG:?}; got {messages:?}");
    }

    /// Waits (up to HANG) for a message containing `line`, returning those before it too.
    fn until(&self, line: &str) -> Vec<String> {
        let deadline = Instant::now() + HANG;
        let mut seen = Vec::new();
        let mut buf = [0_u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = message.lines().any(|l| l == line);
                seen.push(message);
                if found {
                    return seen;
                }
            }
        }
        panic!("no {line} within {HANG:?}; got {seen:?}");
    }
}

fn is_watchdog(message: &str) -> bool {
    message.lines().any(|l| l == "WATCHDOG=1")
}

/// The status a watchdog tick sends instead of `WATCHDOG=1` when a worker did not answer.
fn is_stuck(message: &str) -> bool {
    message.contains("workers stuck")
}

fn watchdogs(messages: &[(Instant, String)]) -> Vec<Instant> {
    messages
        .iter()
        .filter(|(_, m)| is_watchdog(m))
        .map(|(at, _)| *at)
        .collect()
}

#[cfg(feature = "fault-injection")]
#[test]
fn notify_socket_gets_ready_reloading_watchdog_until_a_worker_wedges_and_stopping() {
    let notify = NotifySocket::new("notify");
    let path: &'static str = Box::leak(notify.path.clone().into_boxed_str());
    let limits = Limits {
        env: vec![
            ("NOTIFY_SOCKET", path),
            // A 400 ms watchdog: pings every 200 ms.
            ("WATCHDOG_USEC", "400000"),
            ("TLSVISOR_FAULTS", "session_hang"),
        ],
        ..Limits::default()
    };
    let mut server = Tlsvisor::serve_with(&["--workers", "2", "--shutdown-grace", "1s"], &limits);
    let first = notify.until("READY=1");
    assert!(first.last().unwrap().contains("STATUS="), "{first:?}");
    // READY=1 was sent once the port accepts.
    assert!(TcpStream::connect(server.listen).is_ok());

    // Watchdog pings at the configured interval (WATCHDOG_USEC / 2): ten of them, their
    // median gap near 200 ms (a loaded machine may delay one ping, or this reader: single gaps
    // vary, the median does not).
    let pings = watchdogs(&notify.until_count(10, is_watchdog));
    let mut gaps: Vec<u128> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!(
        (100..=400).contains(&median),
        "gaps near 200 ms: median {median} of {gaps:?}"
    );

    // SIGHUP: RELOADING=1 then READY=1.
    server.signal(libc::SIGHUP);
    let reload = notify.until("READY=1");
    let reloading = reload
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .expect("RELOADING=1");
    assert!(reload[reloading].contains("MONOTONIC_USEC="), "{reload:?}");
    assert!(
        reloading < reload.len() - 1,
        "READY=1 after RELOADING=1: {reload:?}"
    );

    // Wedge one worker: its session never returns from on_data. From the first tick that finds
    // it stuck, every tick says so instead of pinging: five more such ticks, and no WATCHDOG=1
    // among them.
    let mut wedged = server.connect().unwrap();
    wedged.send(b"hang").unwrap();
    notify.until_count(1, is_stuck);
    let after = notify.until_count(5, is_stuck);
    assert!(
        watchdogs(&after).is_empty(),
        "no WATCHDOG=1 once a worker is wedged: {after:?}"
    );

    // SIGTERM: STOPPING=1. (The wedged worker is abandoned, so the exit status is 1.)
    server.signal(libc::SIGTERM);
    notify.until("STOPPING=1");
    assert!(server.wait_exit(HANG).is_some());
}

/// What a client loop saw: each fresh TLS connection echoes once.
#[derive(Default, Debug)]
struct LoopReport {
    ok: usize,
    refused: usize,
    reset: usize,
    other: Vec<String>,
    longest_gap: Duration,
}

impl LoopReport {
    fn merge(mut self, other: LoopReport) -> LoopReport {
        self.ok += other.ok;
        self.refused += other.refused;
        self.reset += other.reset;
        self.other.extend(other.other);
        self.longest_gap = self.longest_gap.max(other.longest_gap);
        self
    }
}

/// A client loop on its own thread (see [`client_loop`]).
struct ClientLoop {
    /// Echoes answered so far, counted as they happen.
    ok: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<LoopReport>,
}

impl ClientLoop {
    /// Its report, once `stop` is set.
    fn join(self) -> LoopReport {
        self.thread.join().unwrap()
    }
}

/// Waits (up to HANG) until each of `loops` has had `more` echoes answered from now on: the
/// sign that clients are being served (rather than a pause in which they might be).
fn wait_served<'a>(loops: impl IntoIterator<Item = &'a ClientLoop>, more: usize) {
    let targets: Vec<(&ClientLoop, usize)> = loops
        .into_iter()
        .map(|l| (l, l.ok.load(Ordering::SeqCst) + more))
        .collect();
    let served = eventually(HANG, || {
        targets
            .iter()
            .all(|(l, target)| l.ok.load(Ordering::SeqCst) >= *target)
    });
    let counts: Vec<usize> = targets
        .iter()
        .map(|(l, _)| l.ok.load(Ordering::SeqCst))
        .collect();
    assert!(
        served,
        "{more} more echoes on each loop; answered so far: {counts:?}"
    );
}

/// Opens a fresh TLS connection and echoes on it every `every`, until `stop`.
fn client_loop(addr: SocketAddr, every: Duration, stop: Arc<AtomicBool>) -> ClientLoop {
    let ok = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ok);
    let thread = std::thread::spawn(move || {
        let config = client_config(&common::dev_ca()).unwrap();
        let mut report = LoopReport::default();
        let mut last_ok = Instant::now();
        let mut n = 0_u64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let payload = format!("ping {n}");
            let result = TlsClient::connect(addr, Arc::clone(&config))
                .and_then(|mut c| c.echo(payload.as_bytes()));
            match result {
                Ok(back) if back == payload.as_bytes() => {
                    report.longest_gap = report.longest_gap.max(last_ok.elapsed());
                    last_ok = Instant::now();
                    report.ok += 1;
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => report.other.push("echo mismatch".into()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => report.refused += 1,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => report.reset += 1,
                Err(e) => report.other.push(e.to_string()),
            }
            // Pacing, so that the loops leave the machine to the processes under test.
            std::thread::sleep(every);
        }
        report
    });
    ClientLoop { ok, thread }
}

/// Makes this test process the reaper of orphans, so the process an upgrade starts (the old
/// one's child) becomes ours once the old one exits, and its exit status can be read.
fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag on this process.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
}

/// Waits up to `within` for process `pid` (a reparented orphan) to exit; its exit code.
fn wait_pid(pid: u32, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a pid this process reaps, with a status out-pointer.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if r == pid as i32 {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn scrape(addr: SocketAddr) -> Metrics {
    let metrics = Metrics::parse(&try_http_get(addr, "/metrics").unwrap());
    assert_eq!(
        metrics.get("tlsvisor_connections_accepted_total"),
        metrics.get("tlsvisor_connections_active")
            + metrics.sum("tlsvisor_connections_disposed_total"),
        "accepted == active + disposed"
    );
    metrics
}

/// Waits until `old` says its upgrade's new process is ready; the new pid and metrics address.
fn new_process(old: &Tlsvisor) -> (u32, SocketAddr) {
    let ready = "upgrade: the new process is ready; draining this one";
    assert!(eventually(HANG, || !old.logs_with(ready).is_empty()));
    let new_pid = old.logs_with(ready)[0]["pid"].as_u64().unwrap() as u32;
    // Both processes log to the same stderr: the second metrics line is the new process's.
    let new_metrics = old.logged("metrics listening", 2)[1]["metrics_listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (new_pid, new_metrics)
}

/// The old process drains and exits 0 (its stderr stays open in the new one, so the exit is
/// read directly rather than through the log collector).
fn old_exits_0(old: &mut Tlsvisor) {
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = old.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "old exits 0: {status:?}");
}

#[test]
fn sigusr2_upgrades_in_place_without_refusing_resetting_or_failing_a_client() {
    become_subreaper();
    // A fixed admin port: the new process must bind it while the old one still holds it.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let admin_flag = admin.to_string();
    let mut old = Tlsvisor::serve(&[
        "--workers",
        "2",
        "--shutdown-grace",
        "3s",
        "--admin-listen",
        &admin_flag,
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    // Four loops, so that connections are accepted by the old process up to its last moment.
    let clients: Vec<_> = (0..4)
        .map(|_| client_loop(old.listen, Duration::from_millis(3), Arc::clone(&stop)))
        .collect();
    // A connection that lives across the upgrade: the old process drains it with close_notify.
    let mut long_lived = old.connect().unwrap();
    assert_eq!(long_lived.echo(b"before").unwrap(), b"before");
    wait_served(&clients, 10);
    let before = scrape(old.metrics.unwrap());
    assert!(before.get("tlsvisor_connections_accepted_total") > 5.0);

    old.signal(libc::SIGUSR2);
    let (new_pid, new_metrics) = new_process(&old);
    // The metrics and admin sockets were handed over, not bound again (no SO_REUSEPORT): the
    // new process serves the very port the old one had (--metrics-listen asked for port 0).
    assert_eq!(Some(new_metrics), old.metrics);
    let admin_lines = old.logged("admin listening", 2);
    assert_eq!(admin_lines[1]["admin_listen"], admin_flag.as_str());
    assert!(matches!(
        long_lived.read_until_close(),
        CloseSeen::CloseNotifyThenEof
    ));
    old_exits_0(&mut old);
    // The admin port the old process held is the new one's now.
    assert!(
        eventually(HANG, || try_http_get(admin, "/health/live").is_ok()),
        "the new process answers on the admin port"
    );
    // The old process is gone: these are served by the new one.
    wait_served(&clients, 10);
    stop.store(true, Ordering::SeqCst);
    let report = clients
        .into_iter()
        .map(ClientLoop::join)
        .fold(LoopReport::default(), LoopReport::merge);
    println!("upgrade client loop: {report:?}");
    assert_eq!((report.refused, report.reset), (0, 0), "{report:?}");
    assert!(
        report.other.is_empty(),
        "no failed handshake or echo: {report:?}"
    );
    assert!(report.ok > 50, "{report:?}");

    // The new process serves, with its own books.
    echo_once(old.listen, b"after").unwrap();
    let after = scrape(new_metrics);
    assert!(after.get("tlsvisor_connections_accepted_total") >= 1.0);
    // The old process completed its shutdown.
    let shutdowns = old.logged("shutdown complete", 1);
    assert_eq!(shutdowns[0]["left_registered"], 0);
    // SAFETY: kill(2) on the process our child started (reparented to us).
    assert_eq!(unsafe { libc::kill(new_pid as i32, libc::SIGTERM) }, 0);
    assert_eq!(
        wait_pid(new_pid, HANG),
        Some(0),
        "the new process exits 0 on SIGTERM"
    );
}

/// SIGUSR2 to `old` (after `before` breaks the upgrade) under a client loop: the upgrade must
/// fail with an error containing `why`, the loop see nothing refused or failed, and the old
/// process keep serving and exit 0 on SIGTERM.
/// Returns the lines of the shared stderr that were not JSON records.
fn upgrade_fails_and_old_keeps_serving(
    mut old: Tlsvisor,
    before: impl FnOnce(),
    why: &str,
) -> Vec<String> {
    let stop = Arc::new(AtomicBool::new(false));
    let clients = client_loop(old.listen, Duration::from_millis(3), Arc::clone(&stop));
    wait_served([&clients], 10);
    before();
    old.signal(libc::SIGUSR2);
    // HANG (30 s) is above the 20 s readiness timeout.
    let message = "upgrade failed: this process keeps serving";
    assert!(eventually(HANG, || !old.logs_with(message).is_empty()));
    let failed = &old.logs_with(message)[0];
    assert!(failed["error"].as_str().unwrap().contains(why), "{failed}");
    // Served after the failure too.
    wait_served([&clients], 10);
    stop.store(true, Ordering::SeqCst);
    let report = clients.join();
    println!("failed-upgrade client loop: {report:?}");
    assert_eq!((report.refused, report.reset), (0, 0), "{report:?}");
    assert!(report.other.is_empty(), "{report:?}");
    echo_once(old.listen, b"still here").unwrap();
    scrape(old.metrics.unwrap());
    old.signal(libc::SIGTERM);
    assert!(old.wait_exit(HANG).unwrap().success());
    old.raw_lines()
}

#[test]
fn a_new_binary_that_fails_to_start_leaves_the_old_one_serving() {
    let dir = ScratchDir::new("upgrade-fails").unwrap();
    let (cert, key) = (dir.path("server.crt"), dir.path("server.key"));
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::copy(format!("{root}/certs/server.crt"), &cert).unwrap();
    std::fs::copy(format!("{root}/certs/server.key"), &key).unwrap();
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let old = Tlsvisor::serve(&["--workers", "2", "--cert", &cert, "--key", &key]);
    // The configuration the new process would read is broken: it exits at start-up.
    let break_key = || ScratchDir::replace(std::path::Path::new(&key), "not a key\n").unwrap();
    // Issue 17, finding 11: the old process logs the new one's reason, naming the file, on a
    // line of its own; the new one prints nothing that could interleave with it.
    let why = format!("exited before it was ready (exit status: 1): TLS: {key}");
    let raw = upgrade_fails_and_old_keeps_serving(old, break_key, &why);
    assert!(raw.is_empty(), "every line is one JSON record: {raw:?}");
}

#[test]
fn reuse_port_lets_two_processes_bind_one_port_and_without_it_the_second_fails() {
    let first = Tlsvisor::serve(&["--reuse-port"]);
    let listen = first.listen.to_string();
    let second = Tlsvisor::spawn(&[
        "serve",
        "--listen",
        &listen,
        "--log-format",
        "json",
        "--reuse-port",
    ]);
    echo_once(first.listen, b"either").unwrap();
    drop(second);
    let refused = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args(["serve", "--listen", &listen, "--log-format", "json"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "without --reuse-port the port is taken"
    );
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("in use"), "{text}");
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_new_process_never_ready_is_killed_after_the_timeout_and_the_old_one_keeps_serving() {
    let limits = Limits {
        env: vec![("TLSVISOR_UPGRADE_FAULT", "never_ready")],
        ..Limits::default()
    };
    let old = Tlsvisor::serve_with(&["--workers", "2"], &limits);
    upgrade_fails_and_old_keeps_serving(old, || {}, "not ready within");
}

/// `--listen` twice (127.0.0.1 and `[::1]`, or a second IPv4 port without IPv6): TLS echo on
/// both, one set of books covering both, and SIGTERM drains both and exits 0.
#[test]
fn two_listen_addresses_are_served_with_one_ledger_and_sigterm_drains_both() {
    let second = match common::ipv6_loopback() {
        Some(_) => "[::1]:0",
        None => "127.0.0.1:0",
    };
    let mut server = Tlsvisor::serve(&["--listen", second, "--workers", "2"]);
    let addrs = server.listening();
    assert_eq!(addrs.len(), 2, "one listening line per address: {addrs:?}");
    assert_eq!(addrs[0], server.listen);
    assert_ne!(addrs[0], addrs[1]);
    for addr in &addrs {
        for _ in 0..3 {
            echo_once(*addr, format!("via {addr}").as_bytes()).unwrap();
        }
    }
    let live = live_clients(&addrs);
    // 3 + 1 on each address, in one ledger (the scrape checks accepted == active + disposed);
    // the six closed ones leave the books a moment after their clients are done.
    let mut metrics = server.scrape();
    assert!(
        eventually(HANG, || {
            metrics = server.scrape();
            metrics.get("tlsvisor_connections_active") == 2.0
        }),
        "the two live clients are the active ones: {}",
        metrics.get("tlsvisor_connections_active")
    );
    assert_eq!(metrics.get("tlsvisor_connections_accepted_total"), 8.0);
    assert_eq!(
        metrics.sum("tlsvisor_worker_connections_accepted_total"),
        8.0
    );

    server.signal(libc::SIGTERM);
    assert_closed_gracefully(live);
    let status = server.wait_exit(HANG).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    for addr in addrs {
        assert!(TcpStream::connect(addr).is_err(), "{addr} is closed");
    }
}

/// A bind failure names the address that failed.
#[test]
fn a_second_listen_address_that_is_taken_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let refused = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
        .args(["serve", "--listen", "127.0.0.1:0", "--listen", &taken])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains(&format!("cannot listen on {taken}")),
        "{text}"
    );
}

/// SIGUSR2 with two listeners: both sockets go over to the new process, which maps them back
/// by address; a client loop on each address sees nothing refused, reset or failed.
#[test]
fn sigusr2_with_two_listeners_hands_over_both_without_refusing_a_client() {
    become_subreaper();
    let second = match common::ipv6_loopback() {
        Some(_) => "[::1]:0",
        None => "127.0.0.1:0",
    };
    let mut old = Tlsvisor::serve(&[
        "--listen",
        second,
        "--workers",
        "2",
        "--shutdown-grace",
        "3s",
    ]);
    let addrs = old.listening();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    let stop = Arc::new(AtomicBool::new(false));
    // Two loops on each address.
    let clients: Vec<(SocketAddr, _)> = addrs
        .iter()
        .flat_map(|addr| [*addr, *addr])
        .map(|addr| {
            let stop = Arc::clone(&stop);
            (addr, client_loop(addr, Duration::from_millis(3), stop))
        })
        .collect();
    wait_served(clients.iter().map(|(_, l)| l), 10);

    old.signal(libc::SIGUSR2);
    let (new_pid, new_metrics) = new_process(&old);
    old_exits_0(&mut old);
    // The old process is gone: these are served by the new one, on both addresses.
    wait_served(clients.iter().map(|(_, l)| l), 10);
    stop.store(true, Ordering::SeqCst);
    for (addr, client) in clients {
        let report = client.join();
        println!("upgrade client loop on {addr}: {report:?}");
        assert_eq!((report.refused, report.reset), (0, 0), "{addr}: {report:?}");
        assert!(report.other.is_empty(), "{addr}: {report:?}");
        assert!(report.ok > 20, "{addr}: {report:?}");
    }

    // The new process took both sockets, mapped by address, and serves both.
    let inherited = old.logged("serving an inherited socket (LISTEN_FDS)", 2);
    let mapped: Vec<&str> = inherited
        .iter()
        .map(|l| l["listen"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    assert_eq!(mapped, expected, "{inherited:?}");
    assert!(inherited.iter().all(|l| l["matched"] == "address"));
    for addr in &addrs {
        echo_once(*addr, b"after").unwrap();
    }
    let after = scrape(new_metrics);
    assert!(after.get("tlsvisor_connections_accepted_total") >= 2.0);
    old.logged("shutdown complete", 1);
    // SAFETY: kill(2) on the process our child started (reparented to us).
    assert_eq!(unsafe { libc::kill(new_pid as i32, libc::SIGTERM) }, 0);
    assert_eq!(wait_pid(new_pid, HANG), Some(0), "the new process exits 0");
}

/// Issue 17, finding 11: a config file the new process cannot read is reported the same way,
/// in the old process's line, naming the file.
#[test]
fn a_config_file_broken_before_an_upgrade_is_named_in_the_old_process_log() {
    let dir = ScratchDir::new("upgrade-bad-config").unwrap();
    let config = dir.path("tlsvisor.toml");
    std::fs::write(&config, "workers = 2\n").unwrap();
    let config = config.to_string_lossy().into_owned();
    let old = Tlsvisor::serve(&["--config", &config]);
    let break_config = || std::fs::write(&config, "workers = \"many\"\n").unwrap();
    let why = format!("exited before it was ready (exit status: 1): bad config {config}");
    let raw = upgrade_fails_and_old_keeps_serving(old, break_config, &why);
    assert!(raw.is_empty(), "every line is one JSON record: {raw:?}");
}

/// One plaintext client loop (client mode) for the upgrade below: connect, send, read the echo
/// (through tlsvisor and a TLS upstream), end with a FIN; counted by outcome.
fn plain_loop(
    target: PlainTarget,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut refused, mut other) = (0, 0, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            let round = |stream: &mut dyn ReadWrite| -> std::io::Result<()> {
                stream.write_all(b"ping")?;
                let mut back = [0; 4];
                stream.read_exact(&mut back)?;
                if &back != b"ping" {
                    return Err(std::io::Error::other(format!("echoed {back:?}")));
                }
                stream.finish()?;
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest)?;
                Ok(())
            };
            let result = match &target {
                PlainTarget::Tcp(addr) => TcpStream::connect(addr).and_then(|mut s| {
                    s.set_read_timeout(Some(HANG))?;
                    round(&mut s)
                }),
                PlainTarget::Unix(path) => {
                    std::os::unix::net::UnixStream::connect(path).and_then(|mut s| {
                        s.set_read_timeout(Some(HANG))?;
                        round(&mut s)
                    })
                }
            };
            match result {
                Ok(()) => ok += 1,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                // A unix socket whose file is gone says NotFound: as refused, for a client.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => refused += 1,
                Err(e) => other.push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        (ok, refused, other)
    })
}

/// Where [`plain_loop`] connects.
#[derive(Clone)]
enum PlainTarget {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

/// A client socket [`plain_loop`] reads, writes and ends with a FIN.
trait ReadWrite: std::io::Read + std::io::Write {
    fn finish(&self) -> std::io::Result<()>;
}

impl ReadWrite for TcpStream {
    fn finish(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl ReadWrite for std::os::unix::net::UnixStream {
    fn finish(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// SIGUSR2 with plaintext listeners (client mode), a TCP one and a unix one: both sockets go
/// over to the new process (mapped back by address and path) and a client loop on each sees
/// no connection refused; the old process leaves the unix socket's file to the new one, which
/// removes it when it exits.
#[test]
fn sigusr2_hands_plain_listeners_over_tcp_and_unix_without_refusing_a_client() {
    become_subreaper();
    let certs = crate::upstream_tls::UpstreamCerts::new("upgrade-plain-listeners");
    let upstream =
        crate::upstream_tls::tls_echo(crate::upstream_tls::upstream_config(&certs.upstream, None));
    let target = format!("tls://{}", upstream.addr());
    let (ca, sock) = (certs.path("upstream-ca.crt"), certs.path("plain.sock"));
    let unix = format!("unix:{sock}");
    let mut old = Tlsvisor::serve(&[
        "--protocol",
        "proxy",
        "--upstream",
        &target,
        "--upstream-ca",
        &ca,
        "--upstream-sni",
        "localhost",
        "--listen-plain",
        "127.0.0.1:0",
        "--listen-plain",
        &unix,
        "--workers",
        "2",
        "--shutdown-grace",
        "3s",
    ]);
    let plain = old.logged("listening plain", 2);
    let tcp: SocketAddr = plain[0]["listen_plain"].as_str().unwrap().parse().unwrap();
    assert_eq!(plain[1]["listen_plain"], unix.as_str());
    let stop = Arc::new(AtomicBool::new(false));
    let targets = [
        PlainTarget::Tcp(tcp),
        PlainTarget::Tcp(tcp),
        PlainTarget::Unix(sock.clone().into()),
        PlainTarget::Unix(sock.clone().into()),
    ];
    let loops: Vec<_> = targets
        .iter()
        .map(|t| plain_loop(t.clone(), Arc::clone(&stop)))
        .collect();
    let served = |n: f64| {
        eventually(HANG, || {
            old.scrape_when_possible()
                .get("tlsvisor_connections_accepted_total")
                >= n
        })
    };
    assert!(served(20.0), "the loops are served");

    old.signal(libc::SIGUSR2);
    let (new_pid, new_metrics) = new_process(&old);
    old_exits_0(&mut old);
    // The old process left the unix socket's file to the new one.
    assert!(std::path::Path::new(&sock).exists());
    let before = scrape(new_metrics).get("tlsvisor_connections_accepted_total");
    assert!(
        eventually(HANG, || scrape(new_metrics)
            .get("tlsvisor_connections_accepted_total")
            >= before + 20.0),
        "the new process serves the loops"
    );
    stop.store(true, Ordering::SeqCst);
    for (target, handle) in targets.iter().zip(loops) {
        let (ok, refused, other) = handle.join().unwrap();
        let name = match target {
            PlainTarget::Tcp(addr) => addr.to_string(),
            PlainTarget::Unix(path) => path.display().to_string(),
        };
        println!("plain upgrade loop on {name}: ok {ok} refused {refused} other {other:?}");
        assert_eq!(refused, 0, "{name}: no connection refused");
        assert!(other.is_empty(), "{name}: {other:?}");
        // How many a loop completes depends on the machine's load; that the new process
        // served the loops is the scrape above.
        assert!(ok > 0, "{name}: {ok}");
    }
    let inherited = old.logged("serving an inherited plaintext socket (LISTEN_FDS)", 2);
    let mapped: Vec<&str> = inherited
        .iter()
        .map(|l| l["listen_plain"].as_str().unwrap())
        .collect();
    assert_eq!(mapped, [tcp.to_string().as_str(), unix.as_str()]);
    assert!(eventually(HANG, || scrape(new_metrics)
        .get("tlsvisor_connections_active")
        == 0.0));
    scrape(new_metrics).assert_books_exact();
    // SAFETY: kill(2) on the process our child started (reparented to us).
    assert_eq!(unsafe { libc::kill(new_pid as i32, libc::SIGTERM) }, 0);
    assert_eq!(wait_pid(new_pid, HANG), Some(0), "the new process exits 0");
    assert!(
        !std::path::Path::new(&sock).exists(),
        "the new process removed the file at its clean exit"
    );
}
