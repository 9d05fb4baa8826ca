//! What the phases of issue 18 (`reencrypt`, `passthrough`) share: a few fronts measured in
//! rounds, one after another, in front of one backend that is not measured, and their table.

use std::fmt::Write as _;

use crate::report::{fmt, Measure, Row};
use crate::{Running, Settings};

/// The servers of `all` that `TLSVISOR_BENCH_ONLY` keeps (all of them when it is unset).
pub(crate) fn chosen(all: &[&'static str], only: Option<&[String]>) -> Vec<&'static str> {
    all.iter()
        .copied()
        .filter(|name| only.map_or(true, |o| o.iter().any(|n| n == name)))
        .collect()
}

/// Measures each server in `s.rounds` rounds, in alternating order like the main phases (a
/// slow spell of the shared machine then hits both ends of the order), a fresh server each
/// round: `start` starts it, `work` fills its row, and the rounds are merged (every CPU cost
/// keeps its lowest value, each round's value listed in the table's notes).
pub(crate) fn measure(
    s: &Settings,
    servers: &[&'static str],
    start: impl Fn(&str) -> Running,
    stop: impl Fn(Running),
    work: impl Fn(&Running, &mut Row),
) -> Vec<Row> {
    let mut rows: Vec<Row> = servers.iter().map(|name| Row::new(name)).collect();
    for round in 0..s.rounds {
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let name = servers[i];
            eprintln!("== {name} (round {} of {})", round + 1, s.rounds);
            let mut row = Row::new(name);
            let server = start(name);
            work(&server, &mut row);
            stop(server);
            eprintln!("{row:?}");
            rows[i].merge(row);
        }
    }
    rows
}

/// The load average (1, 5 and 15 minutes) now: the machine these phases run on is shared.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A Markdown table: one line per measure, one column per server, then tlsvisor's ratio to
/// each other server (lower is better for a cost); the rounds and notes below it.
pub(crate) fn table(rows: &[Row], lines: &[(Measure, &str)]) -> Vec<String> {
    let ours = rows.iter().find(|r| r.name == "tlsvisor");
    let peers: Vec<&Row> = rows.iter().filter(|r| r.name != "tlsvisor").collect();
    let mut head = String::from("| measure |");
    let mut rule = String::from("|---|");
    for r in rows {
        let _ = write!(head, " {} |", r.name);
        rule.push_str("---:|");
    }
    if ours.is_some() {
        for p in &peers {
            let _ = write!(head, " tlsvisor / {} |", p.name);
            rule.push_str("---:|");
        }
    }
    let mut out = vec![head, rule];
    for (m, label) in lines {
        if rows.iter().all(|r| r.get(*m).is_none()) {
            continue;
        }
        let mut line = format!("| {label} |");
        for r in rows {
            let _ = write!(
                line,
                " {} |",
                r.get(*m).map(fmt).unwrap_or_else(|| "—".into())
            );
        }
        if let Some(ours) = ours {
            for p in &peers {
                let ratio = match (ours.get(*m), p.get(*m)) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                    _ => "—".to_string(),
                };
                let _ = write!(line, " {ratio} |");
            }
        }
        out.push(line);
    }
    let mut notes = Vec::new();
    for r in rows {
        notes.extend(r.notes().iter().map(|n| format!("- {}: {n}", r.name)));
        for (m, label) in lines {
            if let Some(values) = r.rounds_of(*m) {
                let values: Vec<String> = values.iter().map(|v| fmt(*v)).collect();
                notes.push(format!(
                    "- {}: {label}, each round: {}",
                    r.name,
                    values.join(", ")
                ));
            }
        }
    }
    if !notes.is_empty() {
        out.push(String::new());
        out.extend(notes);
    }
    out
}
