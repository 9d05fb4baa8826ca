//! The `tlsvisor` binary end to end: real process, real signals, real scrapes, a crowd of
//! clients in another process killed with SIGKILL.

use std::time::{Duration, Instant};

use crate::common;
use crate::common::crowd::Crowd;
use crate::common::{Tlsvisor, HANG};
use tlsvisor_actors::testing::{
    client_config, eventually, leak, upstream, CloseSeen, TestUpstream, TlsClient,
};

#[test]
fn no_arguments_serves_echo_on_8443_with_the_development_certificate() {
    let mut server = Tlsvisor::spawn_default();
    let mut client = server.connect().unwrap();
    assert_eq!(client.echo(b"hello 8443").unwrap(), b"hello 8443");
    drop(client);
    // Ctrl-C in a terminal: SIGINT runs the same graceful shutdown as SIGTERM.
    server.signal(libc::SIGINT);
    let status = server.wait_exit(HANG).expect("exits after SIGINT");
    assert!(status.success(), "{status:?}");
    let warned = server
        .raw_lines()
        .iter()
        .any(|l| l.contains("BUILT-IN DEVELOPMENT CERTIFICATE"));
    assert!(
        warned,
        "the development certificate must be announced loudly"
    );
}

#[test]
fn metrics_logs_and_sigterm_with_live_clients() {
    let mut server = Tlsvisor::serve(&["--shutdown-grace", "5s"]);
    let before = server.scrape();
    for name in [
        "tlsvisor_connections_active",
        "tlsvisor_connections_accepted_total",
        "tlsvisor_dispose_duplicates_total",
        "tlsvisor_dispose_fallback_total",
        "tlsvisor_handshakes_in_progress",
        "tlsvisor_connections_rejected_total{reason=\"fd_exhausted\"}",
        "tlsvisor_connections_rejected_total{reason=\"per_ip_limit\"}",
        "tlsvisor_acceptors_paused",
        "tlsvisor_worker_connections_accepted_total{worker=\"0\"}",
        "process_open_fds",
        "process_threads",
        "process_resident_memory_bytes",
    ] {
        assert!(before.0.contains_key(name), "missing {name}");
    }

    let mut clients: Vec<TlsClient> = (0..10).map(|_| server.connect().unwrap()).collect();
    for client in &mut clients {
        assert_eq!(client.echo(b"live").unwrap(), b"live");
    }
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == 10.0));
    assert_eq!(
        server.scrape().get("tlsvisor_connections_accepted_total"),
        10.0
    );

    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| std::thread::spawn(move || c.read_until_close()))
        .collect();
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    for reader in readers {
        let seen = reader.join().unwrap();
        assert!(
            matches!(seen, CloseSeen::CloseNotifyThenEof),
            "each client sees close_notify then EOF, got {seen:?}"
        );
    }
    let status = server.wait_exit(HANG).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5) + Duration::from_secs(3));

    let disposals = server.logs_with("disposed");
    assert_eq!(disposals.len(), 10, "one log line per disposal");
    assert!(disposals.iter().all(|d| d["reason"] == "shutdown"));
    assert!(disposals
        .iter()
        .all(|d| d["conn_id"].is_u64() && d["peer"].is_string()));
}

/// 1,000 clients connect, echo once, and are SIGKILLed together. The server must get back to
/// where it was: no live connection, no CLOSE-WAIT socket (on its port, and to the upstream if
/// it proxies), as many threads and descriptors as before.
fn burst_of_sigkilled_clients(extra: &[&str], upstream_port: Option<u16>) {
    const CROWD: usize = 1000;
    let mut args = vec!["--workers", "2"];
    args.extend_from_slice(extra);
    let server = Tlsvisor::serve(&args);
    let pid = server.pid();
    let port = server.listen.port();
    // Warm up every lazily made resource (a metrics worker thread, the first connection).
    let mut warm = server.connect().unwrap();
    assert_eq!(warm.echo(b"warm").unwrap(), b"warm");
    drop(warm);
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == 0.0));
    // The warm-up's socket and the last scrape's close a moment after the counters say so:
    // the baseline is taken once the server holds no connection on either port.
    let metrics_port = server.metrics.expect("metrics enabled").port();
    assert!(eventually(HANG, || [port, metrics_port]
        .iter()
        .all(|p| leak::ServerSockets::on_port(*p).unwrap().is_clean())));
    let fds_before = leak::open_fds(pid).unwrap();
    let threads_before = leak::threads(pid).unwrap();

    let crowd = Crowd::gather(server.listen, CROWD);
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == CROWD as f64));
    let threads_during = leak::threads(pid).unwrap();
    let rss_during = leak::rss_bytes(pid).unwrap();

    let killed_at = Instant::now();
    crowd.kill();
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == 0.0));
    let to_active_zero = killed_at.elapsed();
    let close_wait = || {
        leak::close_wait_on_port(port).unwrap()
            + upstream_port.map_or(0, |up| {
                leak::sockets_to_remote_port(up, leak::TcpState::CloseWait).unwrap()
                    + leak::sockets_on_local_port(up, leak::TcpState::CloseWait).unwrap()
            })
    };
    assert!(eventually(HANG, || close_wait() == 0));
    let to_no_close_wait = killed_at.elapsed();

    let after = server.scrape();
    assert_eq!(after.get("tlsvisor_dispose_duplicates_total"), 0.0);
    assert_eq!(after.get("tlsvisor_dispose_fallback_total"), 0.0);
    assert_eq!(
        after.get("tlsvisor_connections_accepted_total"),
        (CROWD + 1) as f64
    );
    if upstream_port.is_some() {
        assert!(eventually(HANG, || server
            .scrape()
            .get("tlsvisor_upstream_connections_open")
            == 0.0));
    }
    // At most as many as before (a scrape's socket may be closing at either reading).
    let fds_back = eventually(HANG, || leak::open_fds(pid).unwrap() <= fds_before);
    assert!(
        fds_back,
        "fds: {} before, {} now: {:?}; metrics: {:?}",
        fds_before,
        leak::open_fds(pid).unwrap(),
        fd_targets(pid),
        server
            .scrape()
            .0
            .iter()
            .filter(|(k, _)| k.starts_with("tlsvisor"))
            .collect::<Vec<_>>()
    );
    assert_eq!(leak::threads(pid).unwrap(), threads_before);
    assert_eq!(threads_during, threads_before, "no thread per connection");
    eprintln!(
        "burst {CROWD} {extra:?}: active 0 after {to_active_zero:?}, no CLOSE-WAIT after \
         {to_no_close_wait:?}; during: {threads_during} threads, RSS {} KiB, peak RSS {} KiB; \
         fds back to {fds_before}",
        rss_during / 1024,
        leak::peak_rss_bytes(pid).unwrap() / 1024
    );
}

#[test]
fn burst_of_1000_sigkilled_clients_is_cleaned_up() {
    burst_of_sigkilled_clients(&[], None);
}

#[test]
fn burst_of_1000_sigkilled_proxied_clients_is_cleaned_up_on_both_sides() {
    let upstream = TestUpstream::start(upstream::echo);
    let target = upstream.addr().to_string();
    burst_of_sigkilled_clients(
        &["--protocol", "proxy", "--upstream", &target],
        Some(upstream.addr().port()),
    );
}

#[test]
fn sigterm_with_1000_live_clients_exits_0_and_each_sees_close_notify() {
    const CROWD: usize = 1000;
    let mut server = Tlsvisor::serve(&["--shutdown-grace", "10s"]);
    let crowd = Crowd::gather(server.listen, CROWD);
    assert!(eventually(HANG, || server
        .scrape()
        .get("tlsvisor_connections_active")
        == CROWD as f64));
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(HANG).expect("exits after SIGTERM");
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    let summary = crowd.summary();
    assert_eq!(summary.close_notify, CROWD, "{summary:?}");
    let disposals = server.logs_with("disposed");
    assert_eq!(disposals.len(), CROWD);
    assert!(disposals.iter().all(|d| d["reason"] == "shutdown"));
    eprintln!("SIGTERM with {CROWD} live connections: exited 0 after {took:?}");
}

#[test]
fn bad_configuration_is_a_clear_error_not_a_panic() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
            .args(args)
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
        out
    };
    let out = run(&["serve", "--protocol", "proxy"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));

    let out = run(&["serve", "--handshake-timeout", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("500ms"));

    let out = run(&[
        "serve",
        "--cert",
        "/nonexistent.pem",
        "--key",
        "/nonexistent.key",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.pem"));
}

/// Clients that connect to the metrics port and send nothing, or half a request, do not hold
/// up a scrape (each connection waits for its request on its own); the server closes them
/// once their request timeout (3 s) is over.
#[test]
fn silent_sockets_on_the_metrics_port_do_not_delay_a_scrape() {
    use std::io::{Read, Write};
    // The metrics server's request timeout.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
    let server = Tlsvisor::serve(&[]);
    let metrics = server.metrics.unwrap();
    // Four silent sockets and one with half a request, taken by the server (none left in its
    // accept queue), then a scrape, then a look at whether each silent socket has been answered
    // or closed. Held up behind one, the scrape would come back only after that one's request
    // timeout had closed it. If the look ends before any silent socket can have timed out, what
    // it saw is the order of the answers; if not (a slow attempt on a loaded machine, or a
    // scrape held up), the attempt tells nothing and is made again, at most five times.
    let attempt = || {
        let connected = Instant::now();
        let mut silent: Vec<std::net::TcpStream> = (0..4)
            .map(|_| std::net::TcpStream::connect(metrics).unwrap())
            .collect();
        let mut partial = std::net::TcpStream::connect(metrics).unwrap();
        partial.write_all(b"GET /metr").unwrap();
        silent.push(partial);
        assert!(
            eventually(HANG, || common::accept_queue(metrics.port()) == 0),
            "the silent sockets are accepted"
        );
        let started = Instant::now();
        server.scrape();
        let took = started.elapsed();
        let seen: Vec<std::io::Result<usize>> = silent
            .iter_mut()
            .map(|socket| {
                socket.set_nonblocking(true).unwrap();
                let seen = socket.read(&mut [0_u8; 64]);
                socket.set_nonblocking(false).unwrap();
                seen
            })
            .collect();
        let looked = connected.elapsed();
        if looked >= REQUEST_TIMEOUT {
            eprintln!("the scrape took {took:?}, the whole attempt {looked:?}: again");
            return None;
        }
        Some((silent, connected, took, seen))
    };
    let (silent, connected, took, seen) = (0..5)
        .find_map(|_| attempt())
        .expect("a scrape answered within the silent sockets' request timeout, in 5 attempts");
    // Answered while every silent socket was still open and unanswered.
    for pending in seen {
        assert!(
            matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a silent socket was answered or closed before the scrape (which took {took:?}): \
             {pending:?}"
        );
    }
    // And the server closes them once their request timeout is over: an end, not our read
    // timeout (a 408 answer may come before it).
    for mut socket in silent {
        socket.set_read_timeout(Some(HANG)).unwrap();
        let mut sink = Vec::new();
        let end = socket.read_to_end(&mut sink);
        let closed_after = connected.elapsed();
        assert!(
            end.is_ok()
                || matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "not closed by the server ({closed_after:?}): {end:?}"
        );
        // Well past the 3 s timeout on a loaded machine, well short of anything else.
        assert!(
            closed_after < Duration::from_secs(10),
            "closed after {closed_after:?}"
        );
    }
    server.scrape();
}

/// Runs the binary at `--log-level level` through a handshake the client gives up (it does not
/// trust the certificate) and a client over `--max-connections-per-ip 1`; every log record.
fn logs_of_a_failed_handshake_and_a_refused_client(level: &str) -> Vec<serde_json::Value> {
    let mut server = Tlsvisor::serve(&["--log-level", level, "--max-connections-per-ip", "1"]);
    let stranger = tlsvisor_actors::DevCerts::generate().unwrap();
    let trusts_another_ca = client_config(stranger.ca_cert_pem.as_bytes()).unwrap();
    let refused =
        TlsClient::connect(server.listen, trusts_another_ca).and_then(|mut c| c.echo(b"x"));
    assert!(refused.is_err(), "the client refuses the certificate");
    assert!(eventually(HANG, || server
        .scrape()
        .disposed("handshake_failed")
        == 1.0));
    let mut held = server.connect().unwrap();
    assert_eq!(held.echo(b"one").unwrap(), b"one");
    // Closed at accept: the address holds its one connection.
    let _ = server.connect().and_then(|mut c| c.echo(b"two"));
    assert!(eventually(HANG, || server.scrape().get(
        "tlsvisor_connections_rejected_total{reason=\"per_ip_limit\"}"
    ) == 1.0));
    drop(held);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(HANG).expect("exits").success());
    server.logs()
}

fn from_rustls(record: &serde_json::Value) -> bool {
    record["target"]
        .as_str()
        .is_some_and(|t| t.starts_with("rustls"))
}

/// `--log-level debug` logs the library's debug lines (the client over its per-IP limit) and,
/// through the `log` bridge, rustls's records (the handshake); at the default `info` neither
/// shows, while actix-server's info records (the metrics listener) do. Under `cargo test
/// --release` this checks a release build, where slog leaves debug lines out unless its
/// `release_max_level_*` feature keeps them.
#[test]
fn log_level_debug_shows_debug_lines_and_rustls_records_and_info_shows_neither() {
    let debug = logs_of_a_failed_handshake_and_a_refused_client("debug");
    let refused = debug
        .iter()
        .find(|r| r["msg"] == "rejected: per-IP limit")
        .unwrap_or_else(|| panic!("no debug line for the refused client: {debug:?}"));
    assert_eq!(refused["level"], "DEBG");
    let rustls: Vec<_> = debug.iter().filter(|r| from_rustls(r)).collect();
    assert!(!rustls.is_empty(), "no rustls record at debug: {debug:?}");
    assert!(rustls.iter().all(|r| r["level"] == "DEBG"), "{rustls:?}");

    let info = logs_of_a_failed_handshake_and_a_refused_client("info");
    let below_info: Vec<_> = info
        .iter()
        .filter(|r| r["level"] == "DEBG" || r["level"] == "TRCE" || from_rustls(r))
        .collect();
    assert!(below_info.is_empty(), "{below_info:?}");
}

/// Without `--cert`, serving beyond loopback is a start-up error naming `--cert`, before
/// anything is bound; and the same for a socket inherited through `LISTEN_FDS` whose address
/// is not loopback, even when it stands for a loopback `--listen` entry (mapped by order).
#[test]
fn the_development_certificate_is_refused_beyond_loopback() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let run = |command: &mut std::process::Command| {
        let started = Instant::now();
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(started.elapsed() < HANG);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !stderr.contains("\"listening\""),
            "nothing served: {stderr}"
        );
        stderr
    };
    let binary = env!("CARGO_BIN_EXE_tlsvisor");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let stderr = run(std::process::Command::new(binary).args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            listen,
            "--log-format",
            "json",
        ]));
        assert!(
            stderr.contains("--cert") && stderr.contains(listen),
            "{stderr}"
        );
    }

    // A socket on every address, handed over as systemd would (fd 3, LISTEN_FDS=1).
    let inherited = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let addr = inherited.local_addr().unwrap();
    let fd = inherited.as_raw_fd();
    let mut command = std::process::Command::new(binary);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    // SAFETY: dup2 and fcntl are async-signal-safe; `fd` stays open in the parent until the
    // child ran.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself leaves close-on-exec set (and the socket would not reach the
            // child): in a test process with other tests' descriptors coming and going, the
            // listener may well be fd 3.
            let inherited = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            match inherited {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            }
        });
    }
    let stderr = run(&mut command);
    assert!(
        stderr.contains("--cert") && stderr.contains(&format!("inherited socket {addr}")),
        "{stderr}"
    );
}

/// What each open descriptor of `pid` points at, for a failure message.
fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}
