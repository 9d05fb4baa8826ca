//! The process under a supervisor: systemd's socket activation and notifications, and the
//! binary upgrade on SIGUSR2. Real programs (`systemd-socket-activate`, the binary itself),
//! real sockets.

// Each test is compiled under its own features; helpers of the others are then unused.
#![cfg_attr(
    not(all(feature = "interop", feature = "fault-injection")),
    allow(dead_code, unused_imports)
)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{try_http_get, Limits, Metrics, Tlsvisor, HANG};
use tlsvisor_actors::testing::{client_config, eventually, CloseSeen, ScratchDir, TlsClient};

/// The inode of the socket listening on `port` (from /proc/net/tcp), if any.
fn listening_inode(port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(fields[1].rsplit(':').next()?, 16).ok()?;
        (local_port == port && fields[3] == "0A").then(|| fields[9].to_string())
    })
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

fn echo_once(addr: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    let mut client = TlsClient::connect(addr, client_config(&common::dev_ca())?)?;
    let back = client.echo(payload)?;
    if back != payload {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// Needs `systemd-socket-activate` (Debian's `systemd`), hence `interop`.
#[cfg(feature = "interop")]
#[test]
fn under_systemd_socket_activate_the_socket_is_inherited_and_sigterm_drains_and_exits_0() {
    let addr = common::free_addr();
    let (port, listen) = (addr.port(), addr.to_string());
    let server = format!(
        "{} serve --listen {listen} --log-format json --shutdown-grace 5s --workers 2",
        env!("CARGO_BIN_EXE_tlsvisor")
    );
    let mut activator = Command::new("systemd-socket-activate")
        .args(["-l", &listen, "--fdname=tls"])
        .args(server.split(' '))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd) must be installed");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&lines);
    let stderr = activator.stderr.take().unwrap();
    let collector = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    // systemd-socket-activate listens itself and starts the server at the first connection.
    assert!(eventually(HANG, || listening_inode(port).is_some()));
    let inode = listening_inode(port).unwrap();
    // The first client is queued on the socket before the server exists; it must be served.
    echo_once(listen.parse().unwrap(), b"first").expect("the first client is served");
    let pid = activator.id(); // it execs the server in place
    assert!(
        holds_socket(pid, &inode),
        "the server serves the socket it inherited"
    );
    assert_eq!(
        listening_inode(port),
        Some(inode),
        "nothing else listens on the port"
    );
    let logs = lines.lock().unwrap().join("\n");
    assert!(
        logs.contains("serving an inherited socket (LISTEN_FDS)"),
        "{logs}"
    );
    assert!(
        logs.contains(r#""name":"tls""#),
        "its FileDescriptorName is logged: {logs}"
    );

    // A live client during SIGTERM: it gets close_notify, the process exits 0.
    let mut live = TlsClient::connect(
        listen.parse().unwrap(),
        client_config(&common::dev_ca()).unwrap(),
    )
    .unwrap();
    assert_eq!(live.echo(b"live").unwrap(), b"live");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    assert!(matches!(
        live.read_until_close(),
        CloseSeen::CloseNotifyThenEof
    ));
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = activator.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    collector.join().unwrap();
    let logs = lines.lock().unwrap().join("\n");
    assert!(
        status.success(),
        "exit 0 after the drain: {status:?}\n{logs}"
    );
    assert!(logs.contains("shutdown complete"), "{logs}");
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

    /// Every message arriving within `within`, with its arrival time.
    fn collect(&self, within: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + within;
        let mut messages = Vec::new();
        let mut buf = [0_u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                messages.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
        messages
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

fn watchdogs(messages: &[(Instant, String)]) -> Vec<Instant> {
    messages
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
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

    // Watchdog pings at the configured interval (WATCHDOG_USEC / 2).
    let pings = watchdogs(&notify.collect(Duration::from_secs(2)));
    assert!(
        (7..=13).contains(&pings.len()),
        "about 10 pings in 2 s: {}",
        pings.len()
    );
    let gaps: Vec<u128> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert!(
        gaps.iter().all(|g| (100..=400).contains(g)),
        "gaps near 200 ms: {gaps:?}"
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

    // Wedge one worker: its session never returns from on_data. The pings stop.
    let mut wedged = server.connect().unwrap();
    wedged.send(b"hang").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let after = notify.collect(Duration::from_secs(2));
    assert!(
        watchdogs(&after).is_empty(),
        "no WATCHDOG=1 once a worker is wedged: {after:?}"
    );
    assert!(
        after.iter().any(|(_, m)| m.contains("workers stuck")),
        "{after:?}"
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

/// Opens a fresh TLS connection and echoes on it every `every`, until `stop`.
fn client_loop(
    addr: SocketAddr,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<LoopReport> {
    std::thread::spawn(move || {
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
                }
                Ok(_) => report.other.push("echo mismatch".into()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => report.refused += 1,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => report.reset += 1,
                Err(e) => report.other.push(e.to_string()),
            }
            std::thread::sleep(every);
        }
        report
    })
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
    std::thread::sleep(Duration::from_millis(300));
    let before = scrape(old.metrics.unwrap());
    assert!(before.get("tlsvisor_connections_accepted_total") > 5.0);

    old.signal(libc::SIGUSR2);
    assert!(eventually(HANG, || !old
        .logs_with("upgrade: the new process is ready; draining this one")
        .is_empty()));
    let ready = old.logs_with("upgrade: the new process is ready; draining this one");
    let new_pid = ready[0]["pid"].as_u64().unwrap() as u32;
    // Both processes log to the same stderr: the second metrics line is the new process's.
    let metrics_lines = old.logs_with("metrics listening");
    let new_metrics: SocketAddr = metrics_lines[1]["metrics_listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(matches!(
        long_lived.read_until_close(),
        CloseSeen::CloseNotifyThenEof
    ));
    // The old process drains and exits 0 (its stderr stays open in the new one, so the exit
    // is read directly rather than through the log collector).
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = old.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "old exits 0: {status:?}");
    // The admin port the old process held is the new one's now.
    assert!(
        eventually(HANG, || try_http_get(admin, "/health/live").is_ok()),
        "the new process answers on the admin port"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let report = clients
        .into_iter()
        .map(|c| c.join().unwrap())
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
    let shutdowns = old.logs_with("shutdown complete");
    assert_eq!(shutdowns.len(), 1, "the old process completed its shutdown");
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
fn upgrade_fails_and_old_keeps_serving(mut old: Tlsvisor, before: impl FnOnce(), why: &str) {
    let stop = Arc::new(AtomicBool::new(false));
    let clients = client_loop(old.listen, Duration::from_millis(3), Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(200));
    before();
    old.signal(libc::SIGUSR2);
    // HANG (30 s) is above the 20 s readiness timeout.
    let message = "upgrade failed: this process keeps serving";
    assert!(eventually(HANG, || !old.logs_with(message).is_empty()));
    let failed = &old.logs_with(message)[0];
    assert!(failed["error"].as_str().unwrap().contains(why), "{failed}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let report = clients.join().unwrap();
    println!("failed-upgrade client loop: {report:?}");
    assert_eq!((report.refused, report.reset), (0, 0), "{report:?}");
    assert!(report.other.is_empty(), "{report:?}");
    echo_once(old.listen, b"still here").unwrap();
    scrape(old.metrics.unwrap());
    old.signal(libc::SIGTERM);
    assert!(old.wait_exit(HANG).unwrap().success());
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
    upgrade_fails_and_old_keeps_serving(old, break_key, "exited before it was ready");
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
