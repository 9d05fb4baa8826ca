//! The scale phase (issue 19): N idle TLS connections through tlsvisor in proxy mode to
//! redis-server, opened by several crowd processes (one source address of 127.0.0.0/8 each, so
//! ephemeral ports never run out, and at most [`PER_CROWD`] connections each, so no client
//! process runs out of descriptors), then ended one of four ways: `sigkill` of the clients,
//! `sigterm` of tlsvisor, `POST /drain`, and the idle timeout.
//!
//! Past what one process's open-files limit holds (9,950 proxied connections under a hard
//! limit of 20,000, which cannot be raised here), N is spread over several tlsvisor processes
//! sharing the port with `--reuse-port`, as nginx's workers do. Redis needs a descriptor per
//! upstream connection too, and is under the same limit: one redis-server per
//! [`PER_REDIS`] upstream connections, each tlsvisor process naming one of them.
//!
//! Per size it reports: RSS per connection (the servers' RSS delta / N), handshakes a second
//! while ramping and server CPU per connection opened (handshake, upstream connect, PING),
//! `GET /connections?limit=100` and `GET /metrics` latency while holding them, threads; then per
//! ending the time to active 0 and no CLOSE-WAIT, and the share of clients that saw
//! `close_notify`. Peers (bare-rustls, haproxy, nginx) run the `sigkill` ending at the sizes one
//! process of theirs holds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, peers_sh, procfs, read_line_starting, wait_listening, wait_until, Env};

/// Connections one crowd process opens (one source address each).
const PER_CROWD: usize = 9_000;
/// Proxied connections one tlsvisor process is given (its ceiling is 9,950).
const PER_PROCESS: usize = 9_900;
/// Upstream connections one redis-server holds (its maxclients is its open-files limit less 32).
const PER_REDIS: usize = 19_000;
/// The idle timeout of the `idle` ending.
const IDLE: Duration = Duration::from_secs(5);

/// The servers of one scale measurement: tlsvisor processes sharing a port, or one peer.
struct Fleet {
    port: u16,
    pids: Vec<u32>,
    children: Vec<Child>,
    /// tlsvisor's metrics and admin listeners, per process.
    metrics: Vec<SocketAddr>,
    admin: Vec<SocketAddr>,
    /// A peer started through peers.sh (stopped through it).
    peer: Option<&'static str>,
}

impl Fleet {
    fn tlsvisor(redis: &[u16], n: usize, env: &Env, idle: Option<Duration>) -> Fleet {
        let processes = n.div_ceil(PER_PROCESS).max(1);
        let port = free_port();
        let mut fleet = Fleet {
            port,
            pids: Vec::new(),
            children: Vec::new(),
            metrics: Vec::new(),
            admin: Vec::new(),
            peer: None,
        };
        let idle = idle.map_or("0".to_string(), |d| format!("{}s", d.as_secs()));
        for i in 0..processes {
            let metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let upstream = format!("127.0.0.1:{}", redis[i * PER_PROCESS / PER_REDIS]);
            let child = Command::new(env!("CARGO_BIN_EXE_tlsvisor"))
                .args(["serve", "--protocol", "proxy", "--upstream", &upstream])
                .args(["--listen", &format!("127.0.0.1:{port}"), "--reuse-port"])
                .args(["--metrics-listen", &metrics.to_string()])
                .args(["--admin-listen", &admin.to_string()])
                .args(["--cert", env.cert.to_str().unwrap()])
                .args(["--key", env.key.to_str().unwrap()])
                .args(["--idle-timeout", &idle, "--log-level", "warn"])
                // Long enough that the exit time measured is what the close takes, not the
                // grace forcing it (the target is an exit within 3 s, every client clean).
                .args(["--shutdown-grace", "10s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            wait_listening(metrics.port());
            wait_listening(admin.port());
            fleet.pids.push(child.id());
            fleet.children.push(child);
            fleet.metrics.push(metrics);
            fleet.admin.push(admin);
        }
        wait_listening(port);
        fleet
    }

    fn peer(env: &Env, name: &'static str, redis: u16) -> Fleet {
        let running = crate::start(env, name, redis);
        Fleet {
            port: running.addr.port(),
            pids: vec![running.pid],
            children: running.child.into_iter().collect(),
            metrics: Vec::new(),
            admin: Vec::new(),
            peer: Some(name).filter(|n| *n != "bare-rustls"),
        }
    }

    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn rss(&self) -> u64 {
        self.pids.iter().map(|p| procfs::rss(*p)).sum()
    }

    fn cpu(&self) -> Duration {
        self.pids.iter().map(|p| procfs::cpu(*p)).sum()
    }

    fn threads(&self) -> u64 {
        self.pids.iter().map(|p| procfs::threads(*p)).sum()
    }

    /// tlsvisor's live connections over every process; `None` for a peer or a failed scrape.
    fn active(&self) -> Option<f64> {
        if self.metrics.is_empty() {
            return None;
        }
        self.metrics.iter().map(|m| crate::active(*m)).sum()
    }

    fn stop(mut self, env: &Env) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.peer.is_some() {
            let _ = Command::new(peers_sh(env))
                .args(["stop", &self.pids[0].to_string()])
                .status();
        }
    }
}

/// One HTTP/1.0 request to `addr`: the time to the whole answer.
fn http_time(addr: SocketAddr, method: &str, path: &str) -> Option<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).ok()?;
    body.starts_with(b"HTTP/1.").then(|| started.elapsed())
}

/// The median of five requests, in milliseconds.
fn http_median_ms(addr: SocketAddr, path: &str) -> f64 {
    let mut times: Vec<f64> = (0..5)
        .filter_map(|_| http_time(addr, "GET", path))
        .map(|t| t.as_secs_f64() * 1e3)
        .collect();
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Crowd processes opening `n` connections to `addr` together, each from its own source
/// address (127.0.1.1, 127.0.1.2, ...): returns them once every one said READY, and the time
/// that took.
fn crowds(env: &Env, addr: SocketAddr, n: usize) -> (Vec<Child>, usize, Duration) {
    let started = Instant::now();
    let mut children: Vec<Child> = (0..n.div_ceil(PER_CROWD))
        .map(|i| {
            let size = PER_CROWD.min(n - i * PER_CROWD);
            Command::new(std::env::current_exe().unwrap())
                .args(["--crowd", &addr.to_string(), &size.to_string()])
                .arg(env.ca.to_str().unwrap())
                .arg(format!("127.0.1.{}", i + 1))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let opened = children
        .iter_mut()
        .map(|c| {
            read_line_starting(c, "READY")
                .strip_prefix("READY ")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        })
        .sum();
    (children, opened, started.elapsed())
}

/// How many of the crowds' connections saw `close_notify` (each crowd prints it once all of
/// its connections ended).
fn clean_share(crowds: &mut [Child], opened: usize) -> f64 {
    let clean: usize = crowds
        .iter_mut()
        .map(|c| {
            let line = read_line_starting(c, "CLEAN");
            let _ = c.wait();
            line.strip_prefix("CLEAN ")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        })
        .sum();
    clean as f64 / opened.max(1) as f64
}

/// One ending's figures.
struct Ending {
    /// From the end's start to no CLOSE-WAIT on the port.
    close_wait_gone: Option<Duration>,
    /// To tlsvisor's active 0 (every process), or to every process's exit for `sigterm`.
    done: Option<Duration>,
    clean: Option<f64>,
}

/// What holding them cost.
struct Held {
    opened: usize,
    ramp: Duration,
    rss_per_conn: f64,
    cpu_per_conn: Duration,
    threads: u64,
    connections_ms: f64,
    metrics_ms: f64,
}

fn hold(env: &Env, fleet: &Fleet, n: usize) -> (Vec<Child>, Held) {
    let rss = fleet.rss();
    let cpu = fleet.cpu();
    let (crowds, opened, ramp) = crowds(env, fleet.addr(), n);
    if !fleet.metrics.is_empty() {
        wait_until(Duration::from_secs(30), || {
            fleet.active() == Some(opened as f64)
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let held = Held {
        opened,
        ramp,
        rss_per_conn: fleet.rss().saturating_sub(rss) as f64 / opened.max(1) as f64,
        cpu_per_conn: fleet.cpu().saturating_sub(cpu) / opened.max(1) as u32,
        threads: fleet.threads(),
        connections_ms: fleet
            .admin
            .first()
            .map_or(f64::NAN, |a| http_median_ms(*a, "/connections?limit=100")),
        metrics_ms: fleet
            .metrics
            .first()
            .map_or(f64::NAN, |m| http_median_ms(*m, "/metrics")),
    };
    (crowds, held)
}

fn end(fleet: &mut Fleet, mut crowds: Vec<Child>, opened: usize, how: &str) -> Ending {
    let port = fleet.port;
    let started = Instant::now();
    let cw = |fleet: &Fleet| {
        let _ = fleet;
        wait_until(Duration::from_secs(60), || procfs::close_wait(port) == 0)
            .map(|_| started.elapsed())
    };
    match how {
        "sigkill" => {
            for c in &mut crowds {
                let _ = c.kill();
            }
            for c in &mut crowds {
                let _ = c.wait();
            }
            let close_wait_gone = cw(fleet);
            let done = wait_until(Duration::from_secs(60), || {
                fleet.active().map_or(true, |a| a == 0.0)
            })
            .map(|_| started.elapsed());
            Ending {
                close_wait_gone,
                done,
                clean: None,
            }
        }
        "sigterm" => {
            for pid in &fleet.pids {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
            }
            for child in &mut fleet.children {
                let _ = child.wait();
            }
            let done = Some(started.elapsed());
            Ending {
                close_wait_gone: cw(fleet),
                done,
                clean: Some(clean_share(&mut crowds, opened)),
            }
        }
        "drain" => {
            for admin in &fleet.admin {
                let _ = http_time(*admin, "POST", "/drain?period=1s");
            }
            let done = wait_until(Duration::from_secs(60), || fleet.active() == Some(0.0))
                .map(|_| started.elapsed());
            Ending {
                close_wait_gone: cw(fleet),
                done,
                clean: Some(clean_share(&mut crowds, opened)),
            }
        }
        // "idle": the servers run with --idle-timeout IDLE; timed from the last READY.
        _ => {
            let done = wait_until(IDLE * 4 + Duration::from_secs(30), || {
                fleet.active() == Some(0.0)
            })
            .map(|_| started.elapsed());
            Ending {
                close_wait_gone: cw(fleet),
                done,
                clean: Some(clean_share(&mut crowds, opened)),
            }
        }
    }
}

/// Redis servers enough for `n` upstream connections: their ports and processes.
fn redis_fleet(n: usize) -> (Vec<u16>, Vec<Child>) {
    let count = n.div_ceil(PER_REDIS).max(1) + 1;
    let mut ports = Vec::new();
    let mut children = Vec::new();
    for _ in 0..count {
        let port = free_port();
        children.push(
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--maxclients", "19968"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_listening(port);
        ports.push(port);
    }
    (ports, children)
}

fn fmt_ms(t: Option<Duration>) -> String {
    t.map_or("-".to_string(), |t| format!("{:.0}", t.as_secs_f64() * 1e3))
}

/// Runs the phase at each size in `sizes`, with `endings`, for `servers`; returns the report's
/// lines (a markdown table), also printed as they come.
pub(crate) fn run(
    env: &Env,
    sizes: &[usize],
    endings: &[String],
    servers: &[&'static str],
) -> Vec<String> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut lines = vec![
        format!("Machine load (1, 5, 15 min) at the start: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        String::new(),
        "| server | N | processes | ending | opened | ramp s | handshakes/s | server CPU µs/conn | RSS KiB/conn | threads | /connections?limit=100 ms | /metrics ms | to no CLOSE-WAIT ms | to active 0 / exit ms | close_notify seen |".to_string(),
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|".to_string(),
    ];
    let (redis, mut redis_children) = redis_fleet(sizes.iter().copied().max().unwrap_or(1));
    for &n in sizes {
        for &server in servers {
            let tlsvisor = server == "tlsvisor";
            // A peer runs as one process (its own workers inside): only up to one process's limit.
            if !tlsvisor && n > PER_PROCESS {
                continue;
            }
            let endings: Vec<&str> = if tlsvisor {
                endings.iter().map(String::as_str).collect()
            } else {
                vec!["sigkill"]
            };
            for how in endings {
                let idle = (how == "idle").then_some(IDLE);
                let mut fleet = if tlsvisor {
                    Fleet::tlsvisor(&redis, n, env, idle)
                } else {
                    Fleet::peer(env, server, redis[0])
                };
                let (crowds, held) = hold(env, &fleet, n);
                let ending = end(&mut fleet, crowds, held.opened, how);
                let line = format!(
                    "| {server} | {n} | {} | {how} | {} | {:.1} | {:.0} | {:.0} | {:.1} | {} | {:.1} | {:.1} | {} | {} | {} |",
                    fleet.pids.len(),
                    held.opened,
                    held.ramp.as_secs_f64(),
                    held.opened as f64 / held.ramp.as_secs_f64(),
                    held.cpu_per_conn.as_secs_f64() * 1e6,
                    held.rss_per_conn / 1024.0,
                    held.threads,
                    held.connections_ms,
                    held.metrics_ms,
                    fmt_ms(ending.close_wait_gone),
                    fmt_ms(ending.done),
                    ending.clean.map_or("-".to_string(), |c| format!("{:.1} %", c * 100.0)),
                );
                eprintln!("{line}");
                lines.push(line);
                fleet.stop(env);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    for child in &mut redis_children {
        let _ = child.kill();
        let _ = child.wait();
    }
    lines
}
