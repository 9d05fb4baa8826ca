//! The soak's report: Markdown, printed and kept under `target/soak/`, in the shape of the
//! "Soak" section of docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::mix::KINDS;
use crate::run::{Settings, Soak};

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

/// Thousands separated by commas.
fn n(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn machine() -> String {
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

/// The report of one run.
pub(crate) fn render(s: &Settings, soak: &Soak) -> String {
    let mut md = String::new();
    let secs = soak.elapsed.as_secs_f64().max(1e-9);
    let _ = writeln!(md, "### Soak: {}\n", s.label());
    let _ = writeln!(
        md,
        "- Machine: {}; load average as the mix ended: {}",
        machine(),
        soak.loadavg
    );
    let _ = writeln!(
        md,
        "- Mix: {} clients at a time plus up to {} silent sockets; warm-up {} clients; seed {}",
        s.concurrency,
        s.silent,
        n(s.warmup),
        s.seed
    );
    let _ = writeln!(
        md,
        "- {} clients in {} ({}): **{:.0} connections/s**",
        n(soak.connections),
        humantime::format_duration(std::time::Duration::from_secs(soak.elapsed.as_secs())),
        soak.stopped,
        soak.connections as f64 / secs
    );
    let _ = writeln!(
        md,
        "- tlsvisor's CPU: {:.0} s, {:.2} cores on average, {:.0} µs per connection; the harness's (clients and upstreams): {:.0} s",
        soak.cpu.as_secs_f64(),
        soak.cpu.as_secs_f64() / secs,
        soak.cpu.as_secs_f64() * 1e6 / soak.connections.max(1) as f64,
        soak.harness_cpu.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "- Operator: {} SIGHUPs (each after a new server certificate), {} scrape rounds (admin `/metrics`, admin `/connections?limit=100`, metrics `/metrics`), slowest request {} ms; upstreams went down {} times, both at once {} times",
        soak.hups,
        n(soak.scrapes.rounds),
        soak.scrapes.slowest.as_millis(),
        soak.closings,
        soak.outages
    );
    let _ = writeln!(
        md,
        "- Seen in the scrapes: at most {} connections live, {} handshakes in progress, {} acceptors paused at a limit (in {} of {} scrapes); `/connections` listed up to {}\n",
        soak.scrapes.max_active,
        soak.scrapes.max_handshakes,
        soak.scrapes.max_paused,
        soak.scrapes.rounds_paused,
        soak.scrapes.rounds,
        soak.scrapes.max_listed
    );

    let _ = writeln!(md, "| tlsvisor's process | start (after the warm-up, idle) | end (idle) | peak (sampled each second) |");
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| RSS, MiB | {} | {} | {} |",
        mib(soak.start.rss),
        mib(soak.end.rss),
        mib(soak.peak.rss)
    );
    let _ = writeln!(
        md,
        "| open fds | {} | {} | {} |",
        soak.start.fds, soak.end.fds, soak.peak.fds
    );
    let _ = writeln!(
        md,
        "| threads | {} | {} | {} |\n",
        soak.start.threads, soak.end.threads, soak.peak.threads
    );

    let _ = writeln!(md, "| client kind | clients | connected | as expected | failed as an upstream went down | unexpected |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for ((_, _, name), k) in KINDS.iter().zip(&soak.kinds) {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            n(k.started),
            n(k.connected),
            n(k.expected),
            n(k.outage),
            n(k.unexpected)
        );
    }
    let total = |f: fn(&crate::mix::KindCounts) -> u64| n(soak.kinds.iter().map(f).sum());
    let _ = writeln!(
        md,
        "| **all** | {} | {} | {} | {} | {} |\n",
        total(|k| k.started),
        total(|k| k.connected),
        total(|k| k.expected),
        total(|k| k.outage),
        total(|k| k.unexpected)
    );

    let _ = writeln!(md, "| server: disposed during the run, by reason | count |");
    let _ = writeln!(md, "|---|---|");
    for (reason, count) in soak.disposed.iter().filter(|(_, c)| **c > 0) {
        let _ = writeln!(md, "| `{reason}` | {} |", n(*count));
    }
    let disposed: u64 = soak.disposed.values().sum();
    let _ = writeln!(md, "| **all** | {} |", n(disposed));
    for (reason, count) in soak.rejected.iter().filter(|(_, c)| **c > 0) {
        let _ = writeln!(md, "| rejected at accept: `{reason}` | {} |", n(*count));
    }
    let m = &soak.last;
    let (accepted, active, all_disposed) = m.books();
    let _ = writeln!(
        md,
        "\nThe process's whole life (warm-up included): accepted {}, active {}, disposed {}, duplicates {}, fallbacks {}, lost {}, accept errors {}; upstream connect failures {} (each retried on the other upstream or counted as `upstream_connect_failed`).\n",
        n(accepted),
        n(active),
        n(all_disposed),
        m.get("tlsvisor_dispose_duplicates_total"),
        m.get("tlsvisor_dispose_fallback_total"),
        m.get("tlsvisor_dispose_lost_total"),
        m.get("tlsvisor_accept_errors_total"),
        n(m.sum("tlsvisor_upstream_connect_failures_total") as u64),
    );

    let _ = writeln!(md, "| check | result | figures |");
    let _ = writeln!(md, "|---|---|---|");
    for c in &soak.checks {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            c.name,
            if c.passed { "✅" } else { "❌" },
            c.detail
        );
    }
    if !soak.samples.is_empty() {
        let _ = writeln!(
            md,
            "\nUnexpected client outcomes (the first {}):\n",
            soak.samples.len()
        );
        for sample in &soak.samples {
            let _ = writeln!(md, "- {sample}");
        }
    }
    let _ = writeln!(
        md,
        "\ntlsvisor logged {} lines at `warn` and above (kept in `{}`){}",
        n(soak.log.lines),
        soak.log.path.display(),
        if soak.log.lines == 0 {
            "."
        } else {
            ", by message:\n"
        }
    );
    for (message, count) in soak.log.messages.iter().take(10) {
        let _ = writeln!(md, "- {} × `{message}`", n(*count));
    }
    md
}

/// Writes the report to `target/soak/soak-<label>-<unix time>.md`.
pub(crate) fn save(s: &Settings, text: &str) -> std::io::Result<PathBuf> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| s.root.join("target"))
        .join("soak");
    std::fs::create_dir_all(&dir)?;
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let label: String = s
        .label()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = dir.join(format!("soak-{label}-{when}.md"));
    std::fs::write(&path, text)?;
    Ok(path)
}
