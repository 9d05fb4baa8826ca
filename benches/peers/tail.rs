//! The `tail` phase (issue 19, item 5): the latency each TLS front adds to a round trip, at a
//! fixed rate. One redis-server serves both a plaintext port (the fronts' upstream) and its own
//! TLS port (`--tls-port`: the floor, no hop). The open-loop client ([`crate::open_loop`])
//! sends PINGs at `TLSVISOR_BENCH_TAIL_RATE` requests/s (default 20,000) over
//! `TLSVISOR_BENCH_TAIL_CONNECTIONS` connections (default 50) for `TLSVISOR_BENCH_TAIL_SECONDS`
//! (default 20, 3 in a quick run) after a warm-up, directly and through each front terminating
//! TLS to the plaintext port: tlsvisor, bare-rustls, stunnel, haproxy, hitch, nginx. The table
//! gives p50, p99, p99.9 and max of the round trip, what each front adds to the direct figures,
//! and tlsvisor's added p99 over the best proxy peer's (the target is ≤ 1.0). Per row it also
//! shows whether the client kept up: its achieved rate (flagged when more than 1 % short of
//! the asked rate), its own CPU and how late it sent. Only when named:
//! `TLSVISOR_BENCH_PHASES=tail`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::open_loop::{self, Outcome, Plan};
use crate::report::fmt;
use crate::{client_runtime, free_port, start, stop, wait_listening, Env, Running, Settings};

/// The direct row's name: redis-server on its own TLS port.
const DIRECT: &str = "redis-tls";

/// The rows, in table order: the floor first, then ours, then the peers.
const SERVERS: [&str; 7] = [
    DIRECT,
    "tlsvisor",
    "bare-rustls",
    "stunnel",
    "haproxy",
    "hitch",
    "nginx",
];

/// The fronts a user would pick instead of tlsvisor: its target is against the best of these
/// (bare-rustls is ours, the floor of any rustls proxy, and redis-tls is no proxy).
const PROXY_PEERS: [&str; 4] = ["stunnel", "haproxy", "hitch", "nginx"];

/// A row whose client sent this share of its p99 late or more, and at least
/// [`CLIENT_LAG_FLOOR_US`] late (the client thread was not scheduled in time: a loaded
/// machine), has the client's own lag in its tail figures.
const CLIENT_LAG_SHARE: f64 = 0.25;

/// What the pacer's wake-up costs on an idle core is some 30 µs at p99 on every row, taken out
/// by the subtraction of the direct row; a lag above this is a client that waited for a core.
const CLIENT_LAG_FLOOR_US: f64 = 200.0;

/// A row short of the asked rate by more than this share measured a client that fell behind.
const RATE_SHORTFALL: f64 = 0.01;

fn number_from_env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(v) => Some(v),
        Err(_) => panic!("{name}={value} is not a number"),
    }
}

fn plan_from_env() -> Plan {
    let quick = std::env::var("TLSVISOR_BENCH_QUICK").is_ok();
    let rate: u64 = number_from_env("TLSVISOR_BENCH_TAIL_RATE").unwrap_or(20_000);
    let connections: usize = number_from_env("TLSVISOR_BENCH_TAIL_CONNECTIONS").unwrap_or(50);
    let seconds: f64 =
        number_from_env("TLSVISOR_BENCH_TAIL_SECONDS").unwrap_or(if quick { 3.0 } else { 20.0 });
    assert!(rate > 0, "TLSVISOR_BENCH_TAIL_RATE must be at least 1");
    assert!(
        connections > 0,
        "TLSVISOR_BENCH_TAIL_CONNECTIONS must be at least 1"
    );
    assert!(
        seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0,
        "TLSVISOR_BENCH_TAIL_SECONDS must be above 0 and at most 3600"
    );
    Plan {
        rate,
        connections,
        warmup: Duration::from_secs(if quick { 1 } else { 2 }),
        measured: Duration::from_secs_f64(seconds),
    }
}

/// One redis-server with a plaintext port and a TLS port, no persistence.
struct Redis {
    child: Child,
    plain: u16,
    tls: u16,
}

impl Redis {
    fn start(env: &Env) -> Redis {
        let plain = free_port();
        let tls = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &plain.to_string()])
            .args(["--tls-port", &tls.to_string()])
            .args(["--tls-cert-file", env.cert.to_str().unwrap()])
            .args(["--tls-key-file", env.key.to_str().unwrap()])
            .args(["--tls-ca-cert-file", env.ca.to_str().unwrap()])
            .args(["--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(plain);
        wait_listening(tls);
        Redis { child, plain, tls }
    }

    /// The direct row's server: redis itself, on its TLS port (not stopped with the row).
    fn direct(&self) -> Running {
        Running {
            pid: self.child.id(),
            addr: ([127, 0, 0, 1], self.tls).into(),
            metrics: None,
            child: None,
        }
    }
}

/// One server's run, or why it has none.
struct Measured {
    name: &'static str,
    outcome: Result<Outcome, String>,
}

impl Measured {
    fn p(&self, quantile: f64) -> Option<f64> {
        let outcome = self.outcome.as_ref().ok()?;
        Some(outcome.latency.value_at_quantile(quantile) as f64 / 1e3)
    }

    fn max(&self) -> Option<f64> {
        Some(self.outcome.as_ref().ok()?.latency.max() as f64 / 1e3)
    }
}

pub(crate) fn run(env: &Env, s: &Settings, only: Option<&[String]>) -> Vec<String> {
    let plan = plan_from_env();
    let servers = crate::fronts::chosen(&SERVERS, only);
    let load_before = crate::fronts::load_average();
    let mut redis = Redis::start(env);
    let ca = std::fs::read(&env.ca).unwrap();
    let config = crate::load::client_config(&ca, false);
    // Every round of every server, kept whole: a row's percentiles come from one run.
    let mut rounds: Vec<Vec<Measured>> = servers.iter().map(|_| Vec::new()).collect();
    for round in 0..s.rounds {
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let name = servers[i];
            eprintln!("== tail: {name} (round {} of {})", round + 1, s.rounds);
            let server = if name == DIRECT {
                redis.direct()
            } else {
                start(env, name, redis.plain)
            };
            let outcome = client_runtime().block_on(open_loop::run(
                server.addr,
                config.clone(),
                plan,
                server.pid,
            ));
            if name != DIRECT {
                stop(env, server);
            }
            let measured = Measured { name, outcome };
            eprintln!("{}", round_line(&measured, &plan));
            rounds[i].push(measured);
        }
    }
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let load_after = crate::fronts::load_average();
    table(&plan, s.rounds, &rounds, &load_before, &load_after)
}

/// One run's figures on one line, for the notes and the progress log.
fn round_line(m: &Measured, plan: &Plan) -> String {
    match &m.outcome {
        Err(e) => format!("{}: failed: {e}", m.name),
        Ok(o) => format!(
            "{}: p50 {} / p99 {} / p99.9 {} / max {} µs, {} of {} requests/s, client CPU {:.0} %, \
             send lag p99 {} µs",
            m.name,
            fmt(m.p(0.5).unwrap_or(f64::NAN)),
            fmt(m.p(0.99).unwrap_or(f64::NAN)),
            fmt(m.p(0.999).unwrap_or(f64::NAN)),
            fmt(m.max().unwrap_or(f64::NAN)),
            fmt(o.achieved_rate),
            plan.rate,
            o.client_cpu_share * 100.0,
            fmt(o.send_lag.value_at_quantile(0.99) as f64 / 1e3),
        ),
    }
}

/// The run of a server the table shows: its lowest p99 (interference from the rest of the
/// machine only adds latency), or its last failure if no round succeeded.
fn chosen(runs: &[Measured]) -> Option<&Measured> {
    runs.iter()
        .filter(|m| m.outcome.is_ok())
        .min_by(|a, b| {
            a.p(0.99)
                .partial_cmp(&b.p(0.99))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .or(runs.last())
}

fn cell(v: Option<f64>) -> String {
    v.map(fmt).unwrap_or_else(|| "—".to_string())
}

fn signed(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 0.0 => format!("+{}", fmt(v)),
        Some(v) => format!("−{}", fmt(-v)),
        None => "—".to_string(),
    }
}

fn table(
    plan: &Plan,
    rounds: usize,
    runs: &[Vec<Measured>],
    load_before: &str,
    load_after: &str,
) -> Vec<String> {
    let rows: Vec<&Measured> = runs.iter().filter_map(|r| chosen(r)).collect();
    let direct = rows.iter().find(|m| m.name == DIRECT);
    let added = |m: &Measured, q: f64| Some(m.p(q)? - direct?.p(q)?);
    let mut out = vec![
        format!(
            "Tail latency at a fixed rate: redis PINGs over TLS, {} requests/s over {} \
             connections, {} s of warm-up then {} s measured per server, {} round(s) (servers \
             in alternating order; the round with the lowest p99 shown, every round in the \
             notes); load average {load_before} before, {load_after} after.",
            plan.rate,
            plan.connections,
            plan.warmup.as_secs_f64(),
            plan.measured.as_secs_f64(),
            rounds,
        ),
        String::new(),
        "Open loop: each request is sent at its scheduled time (request i at start + i / rate, \
         round-robin over the connections, pipelined on a connection whose previous reply is \
         late) and its latency runs from that scheduled time to its reply, so a stall counts \
         in every request it delays (no coordinated omission). One redis-server: the fronts \
         terminate TLS to its plaintext port, redis-tls is its own `--tls-port` (no hop, the \
         floor). \"added\" is the front's figure minus redis-tls's; \"server CPU\" is the \
         front's own (redis-tls: redis's, TLS and commands); the client is one thread, its \
         CPU a share of one core, its send lag how late the pacer sent (its own timing error: a row \
         whose send lag p99 is 200 µs or more and a quarter of its p99 or more is flagged \
         \"client late\", its tail is partly the client's)."
            .to_string(),
        String::new(),
        "| server | p50 µs | p99 µs | p99.9 µs | max µs | added p50 µs | added p99 µs | added \
         p99.9 µs | achieved requests/s | client CPU | client send lag p99 µs | server CPU \
         µs/request | |"
            .to_string(),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|".to_string(),
    ];
    let measured_requests = plan.measured_requests() as f64;
    for m in &rows {
        let Ok(o) = &m.outcome else {
            out.push(format!(
                "| {} | — | — | — | — | — | — | — | — | — | — | — | failed |",
                m.name
            ));
            continue;
        };
        let mut flags = Vec::new();
        if o.achieved_rate < plan.rate as f64 * (1.0 - RATE_SHORTFALL) {
            flags.push(format!(
                "**short of the asked rate by {:.1} %**",
                (1.0 - o.achieved_rate / plan.rate as f64) * 100.0
            ));
        }
        let lag = o.send_lag.value_at_quantile(0.99) as f64 / 1e3;
        if lag >= CLIENT_LAG_FLOOR_US && m.p(0.99).is_some_and(|p99| lag >= p99 * CLIENT_LAG_SHARE)
        {
            flags.push("client late: its send lag is in this p99".to_string());
        }
        if o.lost > 0 {
            flags.push(format!("{} requests without a reply", o.lost));
        }
        if o.broken > 0 {
            flags.push(format!("{} connections broke", o.broken));
        }
        let (a50, a99, a999) = if m.name == DIRECT {
            ("".to_string(), "".to_string(), "".to_string())
        } else {
            (
                signed(added(m, 0.5)),
                signed(added(m, 0.99)),
                signed(added(m, 0.999)),
            )
        };
        out.push(format!(
            "| {} | {} | {} | {} | {} | {a50} | {a99} | {a999} | {} of {} | {:.0} % | {} | {} | {} |",
            m.name,
            cell(m.p(0.5)),
            cell(m.p(0.99)),
            cell(m.p(0.999)),
            cell(m.max()),
            fmt(o.achieved_rate),
            plan.rate,
            o.client_cpu_share * 100.0,
            fmt(lag),
            fmt(o.server_cpu.as_secs_f64() * 1e6 / measured_requests),
            flags.join("; "),
        ));
    }
    out.push(String::new());
    out.push(verdict(&rows, &added));
    let notes: Vec<String> = runs
        .iter()
        .flatten()
        .map(|m| format!("- {}", round_line(m, plan)))
        .collect();
    if !notes.is_empty() {
        out.push(String::new());
        out.push("Every round:".to_string());
        out.push(String::new());
        out.extend(notes);
    }
    out
}

/// tlsvisor's added p99 against the best proxy peer's (the target: ≤ 1.0) and bare-rustls's.
fn verdict(rows: &[&Measured], added: &dyn Fn(&Measured, f64) -> Option<f64>) -> String {
    let added_p99 = |name: &str| {
        rows.iter()
            .find(|m| m.name == name)
            .and_then(|m| added(m, 0.99))
    };
    let Some(ours) = added_p99("tlsvisor") else {
        return "No ratio: tlsvisor or redis-tls has no figure in this run.".to_string();
    };
    let best = PROXY_PEERS
        .iter()
        .filter_map(|name| Some((*name, added_p99(name)?)))
        .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
    let mut line = format!("tlsvisor's added p99: {} µs", signed(Some(ours)));
    match best {
        Some((name, theirs)) if theirs > 0.0 => line.push_str(&format!(
            "; the best proxy peer's ({name}): {} µs; tlsvisor / {name} = {:.2} (target ≤ 1.00)",
            signed(Some(theirs)),
            ours / theirs
        )),
        Some((name, theirs)) => line.push_str(&format!(
            "; the best proxy peer's ({name}): {} µs, not above the floor, so no ratio (the \
             hop is inside this run's noise)",
            signed(Some(theirs))
        )),
        None => line.push_str("; no proxy peer has a figure in this run"),
    }
    if let Some(bare) = added_p99("bare-rustls") {
        line.push_str(&format!("; bare-rustls's: {} µs", signed(Some(bare))));
        if bare > 0.0 {
            line.push_str(&format!(" (tlsvisor / bare-rustls = {:.2})", ours / bare));
        }
    }
    line.push('.');
    line
}
