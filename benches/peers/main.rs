//! The peer harness: tlsvisor against the TLS fronts a user would pick instead, in one run, on
//! one machine. `cargo bench --bench peers` (see README.md); writes docs/benchmarks.md and
//! docs/benchmarks.svg. Not run in CI: it installs Debian packages and takes minutes.
//!
//! On a 2-core machine the client shares the CPU with the server, so rates are capped by the
//! client: the figure that compares servers is each server's own CPU per unit of work (read
//! from /proc), reported as a ratio to the best peer of the same run, with raw rates beside it.

// The harness counts CLOSE-WAIT sockets over netlink, signals its children and raises its
// own descriptor limit through libc, each call with its SAFETY comment.
#![allow(unsafe_code)]

mod fronts;
mod load;
mod open_loop;
mod passthrough;
mod procfs;
mod reencrypt;
mod report;
mod roles;
mod scale;
mod tail;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use report::{Measure, Row};

/// The servers of a run, in report order. The first two are ours: tlsvisor and the floor.
const SERVERS: [&str; 7] = [
    "tlsvisor",
    "bare-rustls",
    "stunnel",
    "haproxy",
    "hitch",
    "nginx",
    "redis-tls",
];

/// The phases measured on every server of [`SERVERS`], in rounds.
const MAIN_PHASES: [&str; 6] = ["handshake", "requests", "idle", "burst", "bulk", "sigterm"];

/// SIGKILL bursts per size; the report gives the median.
const BURST_REPEATS: usize = 3;

struct Settings {
    /// Rounds of the CPU measurements (`TLSVISOR_BENCH_ROUNDS`; 2, or 1 in a quick run).
    rounds: usize,
    /// Phases to run (`TLSVISOR_BENCH_PHASES`); all when unset.
    phases: Option<Vec<String>>,
    /// A quick or phase-limited run: its report does not replace docs/benchmarks.md.
    partial: bool,
    handshakes: usize,
    requests: usize,
    bulk_bytes: usize,
    idle: Vec<usize>,
    bursts: Vec<usize>,
    sigterm_crowd: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let phases = list_from_env("TLSVISOR_BENCH_PHASES");
        let quick = std::env::var("TLSVISOR_BENCH_QUICK").is_ok();
        let partial = quick || phases.is_some();
        let rounds = std::env::var("TLSVISOR_BENCH_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(if quick { 1 } else { 2 })
            .max(1);
        if quick {
            Settings {
                rounds,
                phases,
                partial,
                handshakes: 1000,
                requests: 20_000,
                bulk_bytes: 128 << 20,
                idle: vec![2000],
                bursts: vec![1000],
                sigterm_crowd: 1000,
            }
        } else {
            Settings {
                rounds,
                phases,
                partial,
                handshakes: 5000,
                requests: 100_000,
                bulk_bytes: 1 << 30,
                idle: vec![2000, report::LARGE],
                bursts: vec![1000, report::LARGE],
                sigterm_crowd: report::LARGE,
            }
        }
    }
}

impl Settings {
    fn runs(&self, phase: &str) -> bool {
        self.phases
            .as_ref()
            .map_or(true, |phases| phases.iter().any(|p| p == phase))
    }
}

/// A comma-separated list from the environment, if the variable is set.
fn list_from_env(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect())
}

/// A server under test.
struct Running {
    pid: u32,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    child: Option<Child>,
}

struct Env {
    root: PathBuf,
    work: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    redis_port: u16,
    echo_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn peers_sh(env: &Env) -> PathBuf {
    env.root.join("benches/peers/peers.sh")
}

fn start(env: &Env, name: &'static str, upstream_port: u16) -> Running {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let upstream = format!("127.0.0.1:{upstream_port}");
    match name {
        "tlsvisor" => start_tlsvisor(env, &["--protocol", "proxy", "--upstream", &upstream], true),
        "bare-rustls" => {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--bare-proxy", &addr.to_string(), &upstream])
                .args([env.cert.to_str().unwrap(), env.key.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            read_line_starting(&mut child, "READY");
            wait_listening(port);
            Running {
                pid: child.id(),
                addr,
                metrics: None,
                child: Some(child),
            }
        }
        peer => start_peer(env, peer, upstream_port),
    }
}

/// The tlsvisor binary on a free port with `protocol` (its `--protocol` and `--upstream`
/// flags), with the run's certificate if it terminates TLS (`tls_files`).
fn start_tlsvisor(env: &Env, protocol: &[&str], tls_files: bool) -> Running {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let metrics = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tlsvisor"));
    command
        .arg("serve")
        .args(protocol)
        .args(["--listen", &addr.to_string()])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")]);
    if tls_files {
        command.args([
            "--cert",
            env.cert.to_str().unwrap(),
            "--key",
            env.key.to_str().unwrap(),
        ]);
    }
    let child = command
        // No --max-connections: the default is what the open-files limit holds (9,950
        // proxied connections under 20,000 descriptors), and more would be refused.
        .args(["--idle-timeout", "0", "--log-level", "warn"])
        // An A/B of one setting: extra flags for tlsvisor alone.
        .args(
            std::env::var("TLSVISOR_BENCH_TLSVISOR_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port);
    wait_listening(metrics);
    Running {
        pid: child.id(),
        addr,
        metrics: Some(([127, 0, 0, 1], metrics).into()),
        child: Some(child),
    }
}

/// A peer started by peers.sh on a free port, in front of 127.0.0.1:`upstream_port` (the run's
/// CA is passed for the peers that verify a TLS upstream).
fn start_peer(env: &Env, peer: &str, upstream_port: u16) -> Running {
    let port = free_port();
    let out = Command::new(peers_sh(env))
        .args(["start", peer, &port.to_string(), &upstream_port.to_string()])
        .args([env.cert.to_str().unwrap(), env.key.to_str().unwrap()])
        .arg(env.work.join(peer))
        .arg(&env.ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{peer} did not start: {out:?}");
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    wait_listening(port);
    Running {
        pid,
        addr: ([127, 0, 0, 1], port).into(),
        metrics: None,
        child: None,
    }
}

fn stop(env: &Env, server: Running) {
    match server.child {
        Some(mut child) => {
            let _ = child.kill();
            let _ = child.wait();
        }
        None => {
            let _ = Command::new(peers_sh(env))
                .args(["stop", &server.pid.to_string()])
                .status();
        }
    }
}

fn read_line_starting(child: &mut Child, prefix: &str) -> String {
    let stdout = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "no {prefix} line");
        if let Some(at) = line.find(prefix) {
            return line[at..].trim().to_string();
        }
    }
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `work` and returns the server's CPU time it cost.
fn cpu_of<T>(server: &Running, work: impl FnOnce() -> T) -> (T, Duration) {
    let before = procfs::cpu(server.pid);
    let out = work();
    // Let the server finish what the client no longer waits for (closes, logs).
    std::thread::sleep(Duration::from_millis(300));
    (out, procfs::cpu(server.pid).saturating_sub(before))
}

fn handshake_rows(env: &Env, s: &Settings, server: &Running, row: &mut Row) {
    let ca = std::fs::read(&env.ca).unwrap();
    for (resume, cpu_measure, rate_measure) in [
        (
            false,
            Measure::FullHandshakeCpuUs,
            Measure::FullHandshakeRate,
        ),
        (
            true,
            Measure::ResumedHandshakeCpuUs,
            Measure::ResumedHandshakeRate,
        ),
    ] {
        let config = load::client_config(&ca, resume);
        let rt = client_runtime();
        if resume {
            // Prime the ticket cache.
            rt.block_on(load::handshakes(server.addr, config.clone(), 4, 1));
        }
        let (run, cpu) = cpu_of(server, || {
            rt.block_on(load::handshakes(
                server.addr,
                config.clone(),
                s.handshakes,
                16,
            ))
        });
        if run.completed == 0 {
            continue;
        }
        row.set(cpu_measure, cpu.as_secs_f64() * 1e6 / run.completed as f64);
        row.set(
            rate_measure,
            run.completed as f64 / run.elapsed.as_secs_f64(),
        );
        if resume {
            row.set(
                Measure::ResumedShare,
                run.resumed as f64 / run.completed as f64,
            );
        }
        if run.failed > 0 {
            row.note(format!(
                "{} of {} handshakes failed",
                run.failed, s.handshakes
            ));
        }
    }
}

fn redis_benchmark_rows(env: &Env, s: &Settings, server: &Running, row: &mut Row) {
    for (pipeline, cpu_measure, rate_measure) in [
        (1, Measure::RequestCpuUs, Measure::RequestRate),
        (
            16,
            Measure::PipelinedRequestCpuUs,
            Measure::PipelinedRequestRate,
        ),
    ] {
        let (out, cpu) = cpu_of(server, || {
            Command::new("timeout")
                .args([
                    "300",
                    "redis-benchmark",
                    "--tls",
                    "--cacert",
                    env.ca.to_str().unwrap(),
                ])
                .args(["--sni", "localhost", "-h", "127.0.0.1"])
                .args(["-p", &server.addr.port().to_string(), "-c", "50"])
                .args(["-n", &s.requests.to_string(), "-t", "set,get", "-q"])
                .args(["-P", &pipeline.to_string()])
                .output()
                .unwrap()
        });
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let rates: Vec<f64> = text
            .split(['\r', '\n'])
            .filter(|l| l.contains("requests per second"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect();
        if !out.status.success() || rates.len() != 2 {
            row.note(format!(
                "redis-benchmark -P {pipeline} failed: {}",
                text.trim()
            ));
            continue;
        }
        let requests = 2 * s.requests;
        row.set(cpu_measure, cpu.as_secs_f64() * 1e6 / requests as f64);
        row.set(rate_measure, rates.iter().sum::<f64>() / rates.len() as f64);
    }
}

fn idle_rows(env: &Env, s: &Settings, server: &Running, row: &mut Row) {
    let ca = std::fs::read(&env.ca).unwrap();
    let config = load::client_config(&ca, false);
    for &n in &s.idle {
        let rt = client_runtime();
        let before = procfs::rss(server.pid);
        let conns = rt.block_on(load::open_idle(server.addr, config.clone(), n));
        std::thread::sleep(Duration::from_millis(500));
        let after = procfs::rss(server.pid);
        let threads = procfs::threads(server.pid);
        if conns.len() < n {
            row.note(format!(
                "only {} of {n} idle connections opened",
                conns.len()
            ));
        }
        let per_conn = after.saturating_sub(before) as f64 / conns.len().max(1) as f64;
        let (rss_measure, thread_measure) = if n <= 2000 {
            (Measure::IdleRssSmall, Measure::IdleThreadsSmall)
        } else {
            (Measure::IdleRssLarge, Measure::IdleThreadsLarge)
        };
        row.set(rss_measure, per_conn / 1024.0);
        row.set(thread_measure, threads as f64);
        drop(conns);
        drop(rt);
        wait_until(Duration::from_secs(30), || {
            procfs::close_wait(server.addr.port()) == 0
        });
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

fn crowd(env: &Env, addr: SocketAddr, n: usize) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--crowd",
            &addr.to_string(),
            &n.to_string(),
            env.ca.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = read_line_starting(&mut child, "READY");
    assert_eq!(ready, format!("READY {n}"), "crowd of {n} did not gather");
    child
}

fn active(metrics: SocketAddr) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(metrics).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("tlsvisor_connections_active "))
        .and_then(|v| v.trim().parse().ok())
}

/// Times of one SIGKILL burst, from the kill: the client process gone, no CLOSE-WAIT, and
/// (tlsvisor) no active connection.
struct Burst {
    crowd_gone: Duration,
    close_wait_gone: Option<Duration>,
    active_zero: Option<Duration>,
}

fn one_burst(env: &Env, server: &Running, n: usize) -> Burst {
    let mut crowd = crowd(env, server.addr, n);
    if let Some(metrics) = server.metrics {
        wait_until(Duration::from_secs(30), || {
            active(metrics) == Some(n as f64)
        });
    }
    let killed = Instant::now();
    let _ = crowd.kill();
    let _ = crowd.wait();
    // The clients' own teardown (the kernel closing their sockets) is inside every figure
    // below; this says how much of it that was.
    let crowd_gone = killed.elapsed();
    let port = server.addr.port();
    // CLOSE-WAIT first, over netlink, which costs the server nothing. A /metrics scrape makes
    // tlsvisor list /proc/self/fd (thousands of entries here), so scraping it every
    // millisecond would load the server being timed: `active` is read once CLOSE-WAIT is
    // gone, and its time is an upper bound.
    let close_wait_gone = wait_until(Duration::from_secs(60), || procfs::close_wait(port) == 0)
        .map(|_| killed.elapsed());
    let active_zero = server.metrics.and_then(|metrics| {
        wait_until(Duration::from_secs(60), || active(metrics) == Some(0.0))
            .map(|_| killed.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    Burst {
        crowd_gone,
        close_wait_gone,
        active_zero,
    }
}

/// The middle value (the upper middle of an even count); `None` if any run timed out.
fn median(mut times: Vec<Option<Duration>>) -> Option<Duration> {
    if times.iter().any(Option::is_none) {
        return None;
    }
    times.sort();
    times.get(times.len() / 2).copied().flatten()
}

fn burst_rows(env: &Env, s: &Settings, server: &Running, row: &mut Row) {
    for &n in &s.bursts {
        // One burst of a thousand varies by tens of milliseconds from run to run on this
        // machine: report the median of BURST_REPEATS.
        let runs: Vec<Burst> = (0..BURST_REPEATS)
            .map(|_| one_burst(env, server, n))
            .collect();
        let (exit, cw, act) = if n <= 1000 {
            (
                Measure::BurstSmallExitMs,
                Measure::BurstSmallMs,
                Measure::BurstSmallActiveMs,
            )
        } else {
            (
                Measure::BurstLargeExitMs,
                Measure::BurstLargeMs,
                Measure::BurstLargeActiveMs,
            )
        };
        let ms = |t: Duration| t.as_secs_f64() * 1e3;
        if let Some(t) = median(runs.iter().map(|r| Some(r.crowd_gone)).collect()) {
            row.set(exit, ms(t));
        }
        match median(runs.iter().map(|r| r.close_wait_gone).collect()) {
            Some(t) => row.set(cw, ms(t)),
            None => row.note(format!(
                "CLOSE-WAIT still present 60 s after killing {n} clients"
            )),
        }
        match median(runs.iter().map(|r| r.active_zero).collect()) {
            Some(t) => row.set(act, ms(t)),
            None if server.metrics.is_some() => row.note(format!(
                "connections still active 60 s after killing {n} clients"
            )),
            None => {}
        }
        let all: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.0}", r.close_wait_gone.map_or(f64::NAN, ms)))
            .collect();
        row.note(format!(
            "{n} SIGKILLed, ms to no CLOSE-WAIT in each run: {}",
            all.join(", ")
        ));
    }
}

fn bulk_rows(env: &Env, s: &Settings, server: &Running, row: &mut Row) {
    let ca = std::fs::read(&env.ca).unwrap();
    let config = load::client_config(&ca, false);
    let rt = client_runtime();
    let (elapsed, cpu) = cpu_of(server, || {
        rt.block_on(load::bulk(server.addr, config, s.bulk_bytes))
    });
    let Some(elapsed) = elapsed else {
        row.note("bulk transfer failed".to_string());
        return;
    };
    // Bytes through TLS, both directions.
    let gib = 2.0 * s.bulk_bytes as f64 / (1u64 << 30) as f64;
    row.set(Measure::BulkCpuSecPerGib, cpu.as_secs_f64() / gib);
    row.set(
        Measure::BulkMbPerSec,
        2.0 * s.bulk_bytes as f64 / 1e6 / elapsed.as_secs_f64(),
    );
}

fn sigterm_row(env: &Env, s: &Settings, row: &mut Row) {
    let server = start(env, "tlsvisor", env.redis_port);
    let mut crowd = crowd(env, server.addr, s.sigterm_crowd);
    if let Some(metrics) = server.metrics {
        wait_until(Duration::from_secs(30), || {
            active(metrics) == Some(s.sigterm_crowd as f64)
        });
    }
    let mut child = server.child.unwrap();
    let started = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let took = started.elapsed();
    let clean = read_line_starting(&mut crowd, "CLEAN");
    let _ = crowd.wait();
    row.set(Measure::SigtermExitMs, took.as_secs_f64() * 1e3);
    if let Some(n) = clean
        .strip_prefix("CLEAN ")
        .and_then(|n| n.parse::<f64>().ok())
    {
        row.set(Measure::SigtermCleanShare, n / s.sigterm_crowd as f64);
    }
    row.note(format!(
        "SIGTERM with {} live connections: {status}, {} after {took:?}",
        s.sigterm_crowd,
        clean.to_lowercase()
    ));
}

fn raise_nofile() {
    let limit = libc::rlimit {
        rlim_cur: 200_000,
        rlim_max: 200_000,
    };
    // SAFETY: setrlimit reads the struct passed by pointer. As root this raises the hard limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if roles::run_if_asked(&args) {
        return;
    }
    raise_nofile();
    let s = Settings::from_env();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("tlsvisor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let env = Env {
        cert: root.join("certs/server.crt"),
        key: root.join("certs/server.key"),
        ca: root.join("certs/ca.crt"),
        redis_port: free_port(),
        echo_port: free_port(),
        work,
        root,
    };
    if std::env::var("TLSVISOR_BENCH_NO_INSTALL").is_err() {
        let ok = Command::new(peers_sh(&env))
            .arg("install")
            .status()
            .unwrap();
        assert!(ok.success(), "installing the peers failed");
    }
    let mut redis = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &env.redis_port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--maxclients", "60000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut echo = Command::new(std::env::current_exe().unwrap())
        .args(["--echo-upstream", &format!("127.0.0.1:{}", env.echo_port)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    read_line_starting(&mut echo, "READY");
    wait_listening(env.redis_port);

    let only = list_from_env("TLSVISOR_BENCH_ONLY");
    let servers: Vec<&'static str> = SERVERS
        .into_iter()
        .filter(|name| only.as_ref().map_or(true, |o| o.iter().any(|n| n == name)))
        .collect();
    let mut rows: Vec<Row> = servers.iter().map(|name| Row::new(name)).collect();
    // The CPU figures are measured in every round, in alternating server order, and each keeps
    // its lowest value: interference from the rest of this VM only ever adds CPU, and a slow
    // spell then hits both ends of the order. Memory, bursts and SIGTERM run once.
    // A run of named phases that are none of these (scale, reencrypt, passthrough, tail) skips
    // them.
    let main_rounds = if MAIN_PHASES.iter().any(|p| s.runs(p)) {
        s.rounds
    } else {
        0
    };
    for round in 0..main_rounds {
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let name = servers[i];
            eprintln!("== {name} (round {} of {})", round + 1, s.rounds);
            let first = round == 0;
            let mut row = Row::new(name);
            let server = start(&env, name, env.redis_port);
            if first {
                // Replaced by the count with 2,000 idle connections when that phase runs.
                row.set(
                    Measure::IdleThreadsSmall,
                    procfs::threads(server.pid) as f64,
                );
            }
            if s.runs("handshake") {
                handshake_rows(&env, &s, &server, &mut row);
            }
            if s.runs("requests") {
                redis_benchmark_rows(&env, &s, &server, &mut row);
            }
            if first && s.runs("idle") {
                idle_rows(&env, &s, &server, &mut row);
            }
            if first && s.runs("burst") {
                burst_rows(&env, &s, &server, &mut row);
            }
            stop(&env, server);
            if name != "redis-tls" && s.runs("bulk") {
                let server = start(&env, name, env.echo_port);
                bulk_rows(&env, &s, &server, &mut row);
                stop(&env, server);
            }
            if first && name == "tlsvisor" && s.runs("sigterm") {
                sigterm_row(&env, &s, &mut row);
            }
            eprintln!("{row:?}");
            rows[i].merge(row);
        }
    }
    // The scale phase runs only when asked for by name (it takes minutes per size): its own
    // servers, redis-servers and crowds, its own table.
    if s.phases
        .as_ref()
        .is_some_and(|p| p.iter().any(|p| p == "scale"))
    {
        let quick = std::env::var("TLSVISOR_BENCH_QUICK").is_ok();
        let sizes: Vec<usize> = list_from_env("TLSVISOR_BENCH_SCALE_SIZES")
            .map(|l| l.iter().filter_map(|n| n.parse().ok()).collect())
            .unwrap_or(if quick {
                vec![1000]
            } else {
                vec![9_900, 50_000, 100_000]
            });
        let endings = list_from_env("TLSVISOR_BENCH_SCALE_ENDINGS").unwrap_or(
            ["sigkill", "drain", "idle", "sigterm"]
                .map(str::to_string)
                .to_vec(),
        );
        let table = scale::run(&env, &sizes, &endings, &servers);
        let out = env.root.join("target/bench-partial");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("scale.md"), table.join("\n") + "\n").unwrap();
        eprintln!("wrote {}", out.join("scale.md").display());
    }
    // Re-encryption to a TLS upstream and passthrough by name (issue 18), and the tail latency
    // each front adds (issue 19), run only when named, each with its own servers and its own
    // table (target/bench-partial/NAME.md).
    for (phase, run) in [
        (
            "reencrypt",
            reencrypt::run as fn(&Env, &Settings, Option<&[String]>) -> Vec<String>,
        ),
        ("passthrough", passthrough::run),
        ("tail", tail::run),
    ] {
        if s.phases
            .as_ref()
            .is_some_and(|p| p.iter().any(|p| p == phase))
        {
            let table = run(&env, &s, only.as_deref());
            let out = env.root.join("target/bench-partial");
            std::fs::create_dir_all(&out).unwrap();
            let file = out.join(format!("{phase}.md"));
            std::fs::write(&file, table.join("\n") + "\n").unwrap();
            eprintln!("wrote {}", file.display());
        }
    }
    let _ = redis.kill();
    let _ = echo.kill();
    let _ = redis.wait();
    let _ = echo.wait();
    // Only a full run replaces the published report; a partial one goes under target/.
    let docs = if s.partial || only.is_some() {
        env.root.join("target/bench-partial")
    } else {
        env.root.join("docs")
    };
    std::fs::create_dir_all(&docs).unwrap();
    report::write(&docs, &rows, &machine_line(), &versions());
    let _ = std::fs::remove_dir_all(&env.work);
    eprintln!("wrote {}", docs.join("benchmarks.md").display());
}

fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

fn versions() -> Vec<String> {
    let mut out = vec![format!(
        "tlsvisor {} (this commit, release build)",
        env!("CARGO_PKG_VERSION")
    )];
    let dpkg = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}\n"])
        .args([
            "stunnel4",
            "haproxy",
            "hitch",
            "nginx",
            "libnginx-mod-stream",
            "redis-server",
            "redis-tools",
            "openssl",
        ])
        .output();
    if let Ok(dpkg) = dpkg {
        out.extend(
            String::from_utf8_lossy(&dpkg.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    out
}
