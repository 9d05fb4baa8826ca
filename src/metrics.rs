//! `/metrics`: the Prometheus text exposition of the server's counters and of the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, Registry, TextEncoder};
use slog::{info, warn, Logger};
use tlsvisor_actors::{
    DisposeReason, LatencySnapshot, RejectReason, Stats, CONNECT_LATENCY_BUCKETS,
};

use crate::BoxError;

/// Exposes one server's `Stats`, read as one snapshot per scrape so that
/// `accepted == active + disposed` holds within every scrape.
struct StatsCollector {
    stats: Arc<Stats>,
    descs: Vec<Desc>,
}

/// (name, help, type) of every family the collector emits.
const FAMILIES: [(&str, &str, MetricType); 12] = [
    (
        "tlsvisor_connections_active",
        "Connections registered and not yet disposed.",
        MetricType::GAUGE,
    ),
    (
        "tlsvisor_connections_accepted_total",
        "Connections registered since start.",
        MetricType::COUNTER,
    ),
    (
        "tlsvisor_connections_disposed_total",
        "Connections disposed, by reason.",
        MetricType::COUNTER,
    ),
    (
        "tlsvisor_dispose_duplicates_total",
        "Dispose messages for an id already disposed (should stay 0).",
        MetricType::COUNTER,
    ),
    (
        "tlsvisor_dispose_fallback_total",
        "Disposals sent by the drop guard because the stop hook did not run (should stay 0).",
        MetricType::COUNTER,
    ),
    (
        "tlsvisor_handshakes_in_progress",
        "Connections in the TLS handshake.",
        MetricType::GAUGE,
    ),
    (
        "tlsvisor_connections_rejected_total",
        "Sockets closed at accept, by reason.",
        MetricType::COUNTER,
    ),
    (
        "tlsvisor_accept_errors_total",
        "Errors returned by accept(2).",
        MetricType::COUNTER,
    ),
    (
        "tlsvisor_proxy_bytes_client_to_upstream_total",
        "Bytes read from clients and written to upstreams.",
        MetricType::COUNTER,
    ),
    (
        "tlsvisor_proxy_bytes_upstream_to_client_total",
        "Bytes read from upstreams and written to clients.",
        MetricType::COUNTER,
    ),
    (
        "tlsvisor_upstream_connections_open",
        "Upstream connections open.",
        MetricType::GAUGE,
    ),
    (
        "tlsvisor_upstream_connect_seconds",
        "Time to connect to the upstream (successful connects).",
        MetricType::HISTOGRAM,
    ),
];

impl StatsCollector {
    fn new(stats: Arc<Stats>) -> Result<Self, prometheus::Error> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _)| {
                let labels = if name.ends_with("disposed_total") || name.ends_with("rejected_total")
                {
                    vec!["reason".to_string()]
                } else {
                    vec![]
                };
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels,
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(StatsCollector { stats, descs })
    }
}

fn family(index: usize, samples: Vec<(Option<&str>, f64)>) -> MetricFamily {
    let (name, help, kind) = FAMILIES[index];
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    for (reason, value) in samples {
        let mut metric = Metric::default();
        if let Some(reason) = reason {
            let mut label = LabelPair::default();
            label.set_name("reason".to_string());
            label.set_value(reason.to_string());
            metric.set_label(vec![label]);
        }
        if kind == MetricType::COUNTER {
            let mut counter = Counter::default();
            counter.set_value(value);
            metric.set_counter(counter);
        } else {
            let mut gauge = Gauge::default();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        }
        family.mut_metric().push(metric);
    }
    family
}

fn latency_family(index: usize, latency: &LatencySnapshot) -> MetricFamily {
    let (name, help, kind) = FAMILIES[index];
    let mut histogram = Histogram::default();
    histogram.set_sample_count(latency.count);
    histogram.set_sample_sum(latency.sum_seconds);
    let buckets = CONNECT_LATENCY_BUCKETS
        .iter()
        .zip(&latency.cumulative)
        .map(|(bound, count)| {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(*bound);
            bucket.set_cumulative_count(*count);
            bucket
        })
        .collect();
    histogram.set_bucket(buckets);
    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.mut_metric().push(metric);
    family
}

impl Collector for StatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snap = self.stats.snapshot();
        let l = &snap.ledger;
        let one = |v: u64| vec![(None, v as f64)];
        vec![
            family(0, one(l.active)),
            family(1, one(l.accepted)),
            family(
                2,
                DisposeReason::ALL
                    .iter()
                    .map(|r| (Some(r.as_str()), l.disposed_for(*r) as f64))
                    .collect(),
            ),
            family(3, one(l.duplicates)),
            family(4, one(l.fallbacks)),
            family(5, vec![(None, snap.handshakes_in_progress as f64)]),
            family(
                6,
                RejectReason::ALL
                    .iter()
                    .zip(snap.rejected)
                    .map(|(r, n)| (Some(r.as_str()), n as f64))
                    .collect(),
            ),
            family(7, one(snap.accept_errors)),
            family(8, one(snap.proxy.bytes_client_to_upstream)),
            family(9, one(snap.proxy.bytes_upstream_to_client)),
            family(10, vec![(None, snap.proxy.upstreams_open as f64)]),
            latency_family(11, &snap.proxy.connect_latency),
        ]
    }
}

/// The `/metrics` endpoint on its own thread.
pub struct MetricsServer {
    http: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves the server's and the process's metrics, and those of the
    /// `extra` collectors (the TLS families).
    pub fn start(
        addr: SocketAddr,
        stats: Arc<Stats>,
        extra: Vec<Box<dyn Collector>>,
        log: Logger,
    ) -> Result<Self, BoxError> {
        let registry = Registry::new();
        registry.register(Box::new(StatsCollector::new(stats)?))?;
        for collector in extra {
            registry.register(collector)?;
        }
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let http = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?,
        );
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or("metrics listener has no IP address")?;
        info!(log, "metrics listening"; "metrics_listen" => %addr);
        let serving = Arc::clone(&http);
        let thread = std::thread::Builder::new()
            .name("tlsvisor-metrics".into())
            .spawn(move || serve(&serving, &registry, &log))?;
        Ok(MetricsServer {
            http,
            thread: Some(thread),
        })
    }
}

fn serve(http: &tiny_http::Server, registry: &Registry, log: &Logger) {
    let encoder = TextEncoder::new();
    let content_type =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], encoder.format_type().as_bytes()).ok();
    for request in http.incoming_requests() {
        if request.url() != "/metrics" {
            let missing = tiny_http::Response::from_string("not found; try /metrics\n");
            let _ = request.respond(missing.with_status_code(404));
            continue;
        }
        let mut body = Vec::new();
        if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
            warn!(log, "metrics encoding failed"; "error" => %e);
            let failed = tiny_http::Response::from_string("encoding failed\n");
            let _ = request.respond(failed.with_status_code(500));
            continue;
        }
        let mut response = tiny_http::Response::from_data(body);
        if let Some(header) = &content_type {
            response = response.with_header(header.clone());
        }
        let _ = request.respond(response);
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
