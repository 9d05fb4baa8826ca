//! Driving the real `tlsvisor` binary: start it, read its JSON logs, scrape its metrics, signal
//! it, and hold many client connections from a second process.

pub(crate) mod certs;
pub(crate) mod crowd;
#[cfg(feature = "interop")]
pub(crate) mod redis;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tlsvisor_actors::testing::{client_config, eventually, TlsClient};

/// A ceiling only a hang reaches.
pub(crate) const HANG: Duration = Duration::from_secs(30);

/// The development CA the built-in certificate chains to.
pub(crate) fn dev_ca() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/certs/ca.crt")).unwrap()
}

/// Raises this test process's soft open-files limit to its hard limit: tests that hold
/// thousands of client sockets must not depend on the shell's `ulimit -n`.
pub(crate) fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A running `tlsvisor` process with JSON logs.
pub(crate) struct Tlsvisor {
    pub child: Child,
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    logs: Logs,
    /// The thread reading stderr; joined once the process has exited, so that every line the
    /// process wrote is in `logs` before a test reads them.
    collector: Option<std::thread::JoinHandle<()>>,
}

impl Tlsvisor {
    /// Starts `tlsvisor serve` on a free port with JSON logs, metrics on a free port, and
    /// `extra` flags.
    pub(crate) fn serve(extra: &[&str]) -> Tlsvisor {
        Tlsvisor::serve_with(extra, &Limits::default())
    }

    /// Starts the binary with exactly `args` (which must ask for JSON logs).
    pub(crate) fn spawn(args: &[&str]) -> Tlsvisor {
        Tlsvisor::spawn_with(args, &Limits::default())
    }

    /// Starts `tlsvisor serve` as [`Tlsvisor::serve`] does, under `limits`.
    pub(crate) fn serve_with(extra: &[&str], limits: &Limits) -> Tlsvisor {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ];
        args.extend_from_slice(extra);
        Tlsvisor::spawn_with(&args, limits)
    }

    /// Starts the binary with exactly `args` (which must ask for JSON logs) under `limits`.
    pub(crate) fn spawn_with(args: &[&str], limits: &Limits) -> Tlsvisor {
        let (child, logs, collector) = start_collecting_logs(args, limits);
        let mut server = Tlsvisor {
            child,
            listen: "0.0.0.0:0".parse().unwrap(),
            metrics: None,
            logs,
            collector: Some(collector),
        };
        let wants_metrics = args.contains(&"--metrics-listen");
        // Without `--listen`, a client-mode server may have plaintext listeners only: its
        // `listening plain` line says it is up (`listen` stays unspecified then).
        let may_be_plain_only = !args.contains(&"--listen");
        let found = eventually(HANG, || {
            let listen = server.log_field("listening", "listen");
            let plain = server.log_field("listening plain", "listen_plain");
            let metrics = server.log_field("metrics listening", "metrics_listen");
            if listen.is_some() || (may_be_plain_only && plain.is_some()) {
                if let Some(listen) = listen {
                    server.listen = listen.parse().unwrap();
                }
                server.metrics = metrics.map(|m| m.parse().unwrap());
                return !wants_metrics || server.metrics.is_some();
            }
            false
        });
        assert!(
            found,
            "tlsvisor never logged its addresses: {:?}",
            server.logs()
        );
        server
    }

    /// Starts the binary with no arguments (echo on 127.0.0.1:8443, built-in certificate,
    /// terminal logs) and waits until it accepts.
    pub(crate) fn spawn_default() -> Tlsvisor {
        let (child, logs, collector) = start_collecting_logs(&[], &Limits::default());
        let listen: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        assert!(
            eventually(HANG, || TcpStream::connect(listen).is_ok()),
            "nothing accepts on {listen}"
        );
        Tlsvisor {
            child,
            listen,
            metrics: None,
            logs,
            collector: Some(collector),
        }
    }

    /// Log lines that were not JSON (terminal format), as printed.
    pub(crate) fn raw_lines(&self) -> Vec<String> {
        self.logs()
            .iter()
            .filter_map(|v| v["raw"].as_str().map(str::to_string))
            .collect()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lowers the running process's open-files limit (soft and hard) to `nofile`, as
    /// `prlimit --pid` does: the server started under a limit that holds its
    /// `--max-connections` (it refuses to start otherwise), and now finds its descriptors
    /// short, as when something else in the process takes them.
    pub(crate) fn lower_open_files_limit(&self, nofile: u64) {
        let limit = libc::rlimit {
            rlim_cur: nofile,
            rlim_max: nofile,
        };
        let pid = libc::pid_t::try_from(self.pid()).unwrap();
        // SAFETY: prlimit only reads `limit` and writes nothing (the old limit is not asked for).
        let done = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
        assert_eq!(done, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// Every log record so far.
    pub(crate) fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    /// Log records whose message is `msg`.
    pub(crate) fn logs_with(&self, msg: &str) -> Vec<serde_json::Value> {
        self.logs()
            .into_iter()
            .filter(|v| v["msg"] == msg)
            .collect()
    }

    /// Log records whose message is `msg`, once there are `n` of them, and no more. The process
    /// writes its log on a thread of its own (and after an upgrade two processes share the
    /// stderr), so a line can trail the metric or the line of the other process that came after
    /// it: a test that has seen those waits for the line.
    pub(crate) fn logged(&self, msg: &str, n: usize) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        assert!(
            eventually(HANG, || {
                lines = self.logs_with(msg);
                lines.len() >= n
            }),
            "{n} log lines {msg:?}: {lines:?}"
        );
        assert_eq!(lines.len(), n, "{n} log lines {msg:?}: {lines:?}");
        lines
    }

    fn log_field(&self, msg: &str, field: &str) -> Option<String> {
        self.logs_with(msg)
            .first()
            .and_then(|v| v[field].as_str().map(str::to_string))
    }

    /// Every address the server listens on (one "listening" line each), in order, without
    /// repeats (after an upgrade the new process logs the same addresses again).
    pub(crate) fn listening(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for line in self.logs_with("listening") {
            let addr = line["listen"].as_str().unwrap().parse().unwrap();
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        addrs
    }

    /// The admin API's address (`--admin-listen`), from its log line.
    pub(crate) fn admin_listen(&self) -> SocketAddr {
        let mut admin = None;
        assert!(
            eventually(HANG, || {
                admin = self.log_field("admin listening", "admin_listen");
                admin.is_some()
            }),
            "no admin listener: {:?}",
            self.logs()
        );
        admin.unwrap().parse().unwrap()
    }

    /// A TLS client trusting the development CA.
    pub(crate) fn connect(&self) -> std::io::Result<TlsClient> {
        TlsClient::connect(self.listen, client_config(&dev_ca())?)
    }

    /// Scrapes `/metrics` and checks the ledger invariant in the same scrape.
    pub(crate) fn scrape(&self) -> Metrics {
        self.try_scrape().expect("scrape /metrics")
    }

    /// Scrapes until a scrape succeeds: while the process is out of descriptors, the metrics
    /// listener cannot accept or read /proc either.
    pub(crate) fn scrape_when_possible(&self) -> Metrics {
        let mut last = self.try_scrape();
        assert!(
            eventually(HANG, || {
                last = self.try_scrape();
                last.is_ok()
            }),
            "no scrape succeeded: {:?}",
            last.err()
        );
        last.unwrap()
    }

    /// Like [`Tlsvisor::scrape`]; an I/O failure or a non-200 answer is an error.
    pub(crate) fn try_scrape(&self) -> std::io::Result<Metrics> {
        let metrics = Metrics::parse(&try_http_get(
            self.metrics.expect("metrics enabled"),
            "/metrics",
        )?);
        let disposed: f64 = metrics.sum("tlsvisor_connections_disposed_total");
        assert_eq!(
            metrics.get("tlsvisor_connections_accepted_total"),
            metrics.get("tlsvisor_connections_active") + disposed,
            "accepted == active + disposed must hold in every scrape"
        );
        Ok(metrics)
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGKILL`, ...).
    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }

    /// Waits for the process to exit, up to `within`.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The pipe is closed: the collector ends once it has read the last line.
                if let Some(collector) = self.collector.take() {
                    collector.join().unwrap();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Starts the binary with `args` and a thread that keeps every stderr line: a JSON log record
/// as it is, any other line as `{"msg": "(not json)", "raw": line}`.
type Logs = Arc<Mutex<Vec<serde_json::Value>>>;

/// What the process is started under: its own open-files limit, environment variables.
#[derive(Default)]
pub(crate) struct Limits {
    /// `RLIMIT_NOFILE`, soft and hard, set in the child before it runs.
    pub nofile: Option<u64>,
    pub env: Vec<(&'static str, &'static str)>,
}

/// Makes `command` run under `limits` (its environment, and its open-files limit set in the
/// child between fork and exec).
pub(crate) fn under_limits(command: &mut Command, limits: &Limits) {
    command.envs(limits.env.iter().copied());
    if let Some(nofile) = limits.nofile {
        use std::os::unix::process::CommandExt;
        let limit = libc::rlimit {
            rlim_cur: nofile,
            rlim_max: nofile,
        };
        // SAFETY: setrlimit is async-signal-safe and only reads `limit`, a copy owned by the
        // closure; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
}

fn start_collecting_logs(
    args: &[&str],
    limits: &Limits,
) -> (Child, Logs, std::thread::JoinHandle<()>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tlsvisor"));
    under_limits(&mut command, limits);
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tlsvisor");
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&logs);
    let collector = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let value = serde_json::from_str(&line)
                .unwrap_or_else(|_| serde_json::json!({ "msg": "(not json)", "raw": line }));
            sink.lock().unwrap().push(value);
        }
    });
    (child, logs, collector)
}

impl Drop for Tlsvisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connections waiting in the accept queue of the sockets listening on `port`: their TCP
/// handshake is done and nothing has accepted them yet, so none of them can have got through a
/// TLS handshake (a listening socket's `rx_queue` in `/proc/net/tcp` is its accept queue).
pub(crate) fn accept_queue(port: u16) -> usize {
    let mut queued = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(queues)) =
                (fields.get(1), fields.get(3), fields.get(4))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if *state != "0A" || local_port != Some(port) {
                continue;
            }
            let rx_queue = queues
                .split(':')
                .nth(1)
                .and_then(|hex| usize::from_str_radix(hex, 16).ok());
            queued += rx_queue.expect("a tx_queue:rx_queue field");
        }
    }
    queued
}

/// Waits (up to [`HANG`]) until `n` connections wait in the accept queue on `port`.
pub(crate) fn wait_accept_queue(port: u16, n: usize) {
    let mut seen = 0;
    assert!(
        eventually(HANG, || {
            seen = accept_queue(port);
            seen == n
        }),
        "{n} connections should wait in the accept queue of port {port}; {seen} do"
    );
}

/// An address on 127.0.0.1 with a port free now (bound and released: for a program that must
/// bind it itself, such as `systemd-socket-activate`).
#[cfg(feature = "interop")]
pub(crate) fn free_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe");
    probe.local_addr().expect("the probe's address")
}

/// `[::1]` where the host has IPv6 loopback, else `None` (the caller falls back to IPv4 and
/// says so): IPv6 is tested wherever it can be.
pub(crate) fn ipv6_loopback() -> Option<std::net::IpAddr> {
    match std::net::TcpListener::bind("[::1]:0") {
        Ok(_) => Some(std::net::Ipv6Addr::LOCALHOST.into()),
        Err(e) => {
            eprintln!("::1 cannot be bound ({e}): testing a second IPv4 address instead");
            None
        }
    }
}

/// A second address to listen on beside 127.0.0.1: `[::1]` if possible, else `127.0.0.1`;
/// with a port free now.
#[cfg(feature = "interop")]
pub(crate) fn free_second_addr() -> SocketAddr {
    let ip = ipv6_loopback().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    let probe = std::net::TcpListener::bind((ip, 0)).expect("bind a probe");
    probe.local_addr().expect("the probe's address")
}

/// A plain HTTP/1.0 GET (the metrics endpoint is the only HTTP the tests speak).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> String {
    try_http_get(addr, path).unwrap()
}

/// Like [`http_get`]; an I/O failure or a non-200 answer is an error.
pub(crate) fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(HANG))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(std::io::Error::other(format!(
            "bad answer: {response:.200}"
        ))),
    }
}

/// A parsed Prometheus text exposition: `name{labels}` → value.
pub(crate) struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    /// Every connection accepted was disposed once, through its stop hook: the books balance
    /// and no `Dispose` was a duplicate, a fallback or lost.
    pub(crate) fn assert_books_exact(&self) {
        assert_eq!(
            self.get("tlsvisor_connections_accepted_total"),
            self.sum("tlsvisor_connections_disposed_total"),
            "accepted == disposed"
        );
        assert_eq!(self.get("tlsvisor_dispose_duplicates_total"), 0.0);
        assert_eq!(self.get("tlsvisor_dispose_fallback_total"), 0.0);
        assert_eq!(self.get("tlsvisor_dispose_lost_total"), 0.0);
    }

    pub(crate) fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                Some((key.to_string(), value.parse().ok()?))
            })
            .collect();
        Metrics(samples)
    }

    /// One sample; panics if absent.
    pub(crate) fn get(&self, key: &str) -> f64 {
        *self.0.get(key).unwrap_or_else(|| panic!("no sample {key}"))
    }

    /// The sum of every sample of a family.
    pub(crate) fn sum(&self, family: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| *k == family || k.starts_with(&format!("{family}{{")))
            .map(|(_, v)| v)
            .sum()
    }

    pub(crate) fn disposed(&self, reason: &str) -> f64 {
        self.get(&format!(
            "tlsvisor_connections_disposed_total{{reason=\"{reason}\"}}"
        ))
    }
}
