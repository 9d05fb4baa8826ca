//! `/metrics`: the Prometheus text exposition of the server's counters and of the process.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::Registry;

use crate::exposition::set_value;
use crate::upstream_metrics::UpstreamCollector;
use tlsvisor_actors::{
    DisposeReason, HandshakeFailureClass, LatencySnapshot, RejectReason, Stats,
    CONNECT_LATENCY_BUCKETS,
};

/// Exposes one server's `Stats`, read as one snapshot per scrape so that
/// `accepted == active + disposed` holds within every scrape.
struct StatsCollector {
    stats: Arc<Stats>,
    descs: Vec<Desc>,
}

/// (name, help, type, label) of every family the collector emits.
const FAMILIES: [(&str, &str, MetricType, Option<&str>); 17] = [
    (
        "tlsvisor_connections_active",
        "Connections registered and not yet disposed.",
        MetricType::GAUGE,
        None,
    ),
    (
        "tlsvisor_connections_accepted_total",
        "Connections registered since start.",
        MetricType::COUNTER,
        None,
    ),
    (
        "tlsvisor_connections_disposed_total",
        "Connections disposed, by reason.",
        MetricType::COUNTER,
        Some("reason"),
    ),
    (
        "tlsvisor_dispose_duplicates_total",
        "Dispose messages for an id already disposed (should stay 0).",
        MetricType::COUNTER,
        None,
    ),
    (
        "tlsvisor_dispose_fallback_total",
        "Disposals sent by the drop guard because the stop hook did not run (should stay 0).",
        MetricType::COUNTER,
        None,
    ),
    (
        "tlsvisor_handshakes_in_progress",
        "Connections in the TLS handshake.",
        MetricType::GAUGE,
        None,
    ),
    (
        "tlsvisor_connections_rejected_total",
        "Sockets closed at accept, by reason.",
        MetricType::COUNTER,
        Some("reason"),
    ),
    (
        "tlsvisor_accept_errors_total",
        "Errors returned by accept(2).",
        MetricType::COUNTER,
        None,
    ),
    (
        "tlsvisor_proxy_bytes_client_to_upstream_total",
        "Bytes read from clients and written to upstreams.",
        MetricType::COUNTER,
        None,
    ),
    (
        "tlsvisor_proxy_bytes_upstream_to_client_total",
        "Bytes read from upstreams and written to clients.",
        MetricType::COUNTER,
        None,
    ),
    (
        "tlsvisor_upstream_connections_open",
        "Upstream connections open.",
        MetricType::GAUGE,
        None,
    ),
    (
        "tlsvisor_upstream_connect_seconds",
        "Time to connect to the upstream (successful connects).",
        MetricType::HISTOGRAM,
        None,
    ),
    (
        "tlsvisor_acceptors_paused",
        "Acceptors not accepting now: at a connection or handshake limit, or backing off after \
         the process ran out of file descriptors.",
        MetricType::GAUGE,
        None,
    ),
    (
        "tlsvisor_worker_connections_accepted_total",
        "Connections admitted, by the worker whose acceptor accepted them.",
        MetricType::COUNTER,
        Some("worker"),
    ),
    (
        "tlsvisor_dispose_lost_total",
        "Disposals that could not be delivered because the registry was gone (each logged); 0 \
         unless a guarantee broke.",
        MetricType::COUNTER,
        None,
    ),
    (
        "tlsvisor_handshake_failures_total",
        "Failed TLS handshakes, by class (GET /handshake-failures on the admin API lists the \
         latest).",
        MetricType::COUNTER,
        Some("class"),
    ),
    (
        "tlsvisor_connections_revalidated_total",
        "Open connections checked against a new client-certificate policy (after a reload that \
         changed it, or POST /revalidate), by result: kept, or closed as credentials_revoked.",
        MetricType::COUNTER,
        Some("result"),
    ),
];

impl StatsCollector {
    fn new(stats: Arc<Stats>) -> Result<Self, prometheus::Error> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, label)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    label.iter().map(|l| l.to_string()).collect(),
                    Default::default(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(StatsCollector { stats, descs })
    }
}

/// One family of counters or gauges; each sample's label value goes with the family's label.
fn family(index: usize, samples: Vec<(Option<String>, f64)>) -> MetricFamily {
    let (name, help, kind, label_name) = FAMILIES[index];
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    for (label_value, value) in samples {
        let mut metric = Metric::default();
        if let (Some(label_name), Some(label_value)) = (label_name, label_value) {
            let mut label = LabelPair::default();
            label.set_name(label_name.to_string());
            label.set_value(label_value);
            metric.set_label(vec![label]);
        }
        set_value(&mut metric, kind, value);
        family.mut_metric().push(metric);
    }
    family
}

fn latency_family(index: usize, latency: &LatencySnapshot) -> MetricFamily {
    let (name, help, kind, _) = FAMILIES[index];
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
                    .map(|r| (Some(r.as_str().to_string()), l.disposed(*r) as f64))
                    .collect(),
            ),
            family(3, one(l.duplicates)),
            family(4, one(l.fallbacks)),
            family(5, vec![(None, snap.handshakes_in_progress as f64)]),
            family(
                6,
                RejectReason::ALL
                    .iter()
                    .map(|r| (Some(r.as_str().to_string()), snap.rejected(*r) as f64))
                    .collect(),
            ),
            family(7, one(snap.accept_errors)),
            family(8, one(snap.proxy.bytes_client_to_upstream)),
            family(9, one(snap.proxy.bytes_upstream_to_client)),
            family(10, vec![(None, snap.proxy.upstreams_open as f64)]),
            latency_family(11, &snap.proxy.connect_latency),
            family(12, vec![(None, snap.acceptors_paused as f64)]),
            family(
                13,
                snap.worker_accepted
                    .iter()
                    .enumerate()
                    .map(|(worker, n)| (Some(worker.to_string()), *n as f64))
                    .collect(),
            ),
            family(14, one(snap.dispose_lost)),
            family(
                15,
                HandshakeFailureClass::ALL
                    .iter()
                    .map(|c| {
                        let failures = snap.handshake_failures(*c) as f64;
                        (Some(c.as_str().to_string()), failures)
                    })
                    .collect(),
            ),
            family(
                16,
                vec![
                    (Some("kept".into()), snap.revalidated_kept as f64),
                    (Some("closed".into()), snap.revalidated_closed as f64),
                ],
            ),
        ]
    }
}

/// The registry a scrape gathers: the server's counters, each proxy upstream's, the `extra`
/// collectors (the TLS families) and the process's (`process_*`).
pub(crate) fn registry(
    stats: Arc<Stats>,
    extra: Vec<Box<dyn Collector>>,
) -> Result<Registry, prometheus::Error> {
    let registry = Registry::new();
    registry.register(Box::new(UpstreamCollector::new(Arc::clone(&stats))?))?;
    registry.register(Box::new(StatsCollector::new(stats)?))?;
    for collector in extra {
        registry.register(collector)?;
    }
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}
