//! The admin API and the metrics listener, read as an operator would: `GET /metrics` and
//! `GET /connections?limit=100` with the token every second, and the Prometheus text parsed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The longest one HTTP request may take.
const HTTP_LIMIT: Duration = Duration::from_secs(10);

/// An HTTP/1.0 GET (so the answer is never chunked), with a bearer token if given: the status,
/// the body and how long it took.
pub(crate) fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String, Duration)> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, HTTP_LIMIT)?;
    s.set_read_timeout(Some(HTTP_LIMIT))?;
    s.set_write_timeout(Some(HTTP_LIMIT))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: soak\r\n{auth}\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    Ok((status, body.to_string(), started.elapsed()))
}

/// One scrape of Prometheus text: every sample by its name and labels as written
/// (`tlsvisor_connections_disposed_total{reason="peer_eof"}`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    /// Parses the text format (comments skipped).
    pub(crate) fn parse(text: &str) -> Metrics {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (key, value) = l.rsplit_once(' ')?;
                    Some((key.to_string(), value.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// A sample by its exact key; 0 when absent (counters not yet created).
    pub(crate) fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// Whether the scrape had this family at all.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.0
            .keys()
            .any(|k| k == name || k.starts_with(&format!("{name}{{")))
    }

    /// The samples of a family with one label, by that label's value.
    pub(crate) fn by_label(&self, name: &str) -> BTreeMap<String, f64> {
        let prefix = format!("{name}{{");
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let labels = k.strip_prefix(&prefix)?.strip_suffix('}')?;
                let (_, value) = labels.split_once('=')?;
                Some((value.trim_matches('"').to_string(), *v))
            })
            .collect()
    }

    /// The sum of a family's samples.
    pub(crate) fn sum(&self, name: &str) -> f64 {
        self.by_label(name).values().sum()
    }

    /// `accepted`, `active` and the sum of `disposed`, as one scrape saw them.
    pub(crate) fn books(&self) -> (u64, u64, u64) {
        (
            self.get("tlsvisor_connections_accepted_total") as u64,
            self.get("tlsvisor_connections_active") as u64,
            self.sum("tlsvisor_connections_disposed_total") as u64,
        )
    }
}

/// Where the server answers, and with what token.
#[derive(Clone)]
pub(crate) struct Endpoints {
    /// `--admin-listen`.
    pub(crate) admin: SocketAddr,
    /// `--metrics-listen`.
    pub(crate) metrics: SocketAddr,
    /// The content of `--admin-token-file`.
    pub(crate) token: String,
}

impl Endpoints {
    /// `GET /metrics` on the admin API, parsed; an error for anything but a 200.
    pub(crate) fn admin_metrics(&self) -> Result<(Metrics, Duration), String> {
        match get(self.admin, "/metrics", Some(&self.token)) {
            Ok((200, body, took)) => Ok((Metrics::parse(&body), took)),
            Ok((status, body, _)) => Err(format!("admin /metrics: {status} {body}")),
            Err(e) => Err(format!("admin /metrics: {e}")),
        }
    }
}

/// What the scrapes of a run saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct ScrapeBooks {
    /// Rounds (each: admin `/metrics`, admin `/connections?limit=100`, metrics `/metrics`).
    pub(crate) rounds: u64,
    /// Requests that failed or answered anything but 200, and the first few of them.
    pub(crate) failures: u64,
    /// The first failures, word for word.
    pub(crate) failure_samples: Vec<String>,
    /// Scrapes where `accepted != active + sum(disposed)`, and the first of them.
    pub(crate) inconsistent: u64,
    /// The first inconsistent scrape's figures.
    pub(crate) inconsistent_sample: Option<String>,
    /// The longest request.
    pub(crate) slowest: Duration,
    /// The most connections live, handshakes in progress and acceptors paused in one scrape.
    pub(crate) max_active: u64,
    /// See `max_active`.
    pub(crate) max_handshakes: u64,
    /// See `max_active`.
    pub(crate) max_paused: u64,
    /// Scrapes in which at least one acceptor waited at a limit.
    pub(crate) rounds_paused: u64,
    /// The most connections `/connections?limit=100` listed.
    pub(crate) max_listed: u64,
}

impl ScrapeBooks {
    fn failed(&mut self, what: String) {
        self.failures += 1;
        if self.failure_samples.len() < 5 {
            self.failure_samples.push(what);
        }
    }

    /// One round of the three requests.
    pub(crate) fn round(&mut self, e: &Endpoints) {
        self.rounds += 1;
        match e.admin_metrics() {
            Ok((m, took)) => {
                self.slowest = self.slowest.max(took);
                let (accepted, active, disposed) = m.books();
                if accepted != active + disposed {
                    self.inconsistent += 1;
                    self.inconsistent_sample.get_or_insert_with(|| {
                        format!("accepted {accepted}, active {active}, disposed {disposed}")
                    });
                }
                self.max_active = self.max_active.max(active);
                let handshakes = m.get("tlsvisor_handshakes_in_progress") as u64;
                self.max_handshakes = self.max_handshakes.max(handshakes);
                let paused = m.get("tlsvisor_acceptors_paused") as u64;
                self.max_paused = self.max_paused.max(paused);
                if paused > 0 {
                    self.rounds_paused += 1;
                }
            }
            Err(what) => self.failed(what),
        }
        match get(e.admin, "/connections?limit=100", Some(&e.token)) {
            Ok((200, body, took)) => {
                self.slowest = self.slowest.max(took);
                match serde_json::from_str::<serde_json::Value>(&body) {
                    Ok(v) => {
                        let n = v["connections"].as_array().map_or(0, Vec::len) as u64;
                        self.max_listed = self.max_listed.max(n);
                    }
                    Err(err) => self.failed(format!("/connections: {err}")),
                }
            }
            Ok((status, body, _)) => self.failed(format!("/connections: {status} {body}")),
            Err(err) => self.failed(format!("/connections: {err}")),
        }
        match get(e.metrics, "/metrics", None) {
            Ok((200, _, took)) => self.slowest = self.slowest.max(took),
            Ok((status, body, _)) => self.failed(format!("metrics /metrics: {status} {body}")),
            Err(err) => self.failed(format!("metrics /metrics: {err}")),
        }
    }
}
