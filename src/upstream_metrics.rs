//! The per-upstream families of `/metrics`: health, connections and bytes of each upstream of
//! every service's group, labelled `upstream` as it was configured (`HOST:PORT`, `unix:/path`
//! or `tls://HOST:PORT`). The default service's upstreams carry `upstream` alone (the label set
//! these families had before there were services, which outside checks match); a named
//! service's carry `service` (its first name) too, so one address in two groups is two series.
//! A reload keeps the counters of an upstream it keeps (see the library's `UpstreamBooks`); a
//! group it removed is shown until its last connection ended.

use std::sync::Arc;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use tlsvisor_actors::{Stats, UpstreamSnapshot};

use crate::exposition::{family as named_family, set_value};

/// (name, help, type) of each family; all are labelled `upstream` (and `service` for a named
/// service's), the bytes also `direction`.
const UP: (&str, &str, MetricType) = (
    "tlsvisor_upstream_up",
    "1 while the upstream takes clients, 0 while passive health checks hold it down.",
    MetricType::GAUGE,
);
const OPENED: (&str, &str, MetricType) = (
    "tlsvisor_upstream_connections_total",
    "Connections opened to the upstream.",
    MetricType::COUNTER,
);
const ACTIVE: (&str, &str, MetricType) = (
    "tlsvisor_upstream_connections_active",
    "Connections open to the upstream, and connects to it in flight.",
    MetricType::GAUGE,
);
const FAILURES: (&str, &str, MetricType) = (
    "tlsvisor_upstream_connect_failures_total",
    "Connects to the upstream that failed (each retried once on another upstream).",
    MetricType::COUNTER,
);
const BYTES: (&str, &str, MetricType) = (
    "tlsvisor_upstream_bytes_total",
    "Bytes proxied through the upstream, by direction (client_to_upstream, upstream_to_client).",
    MetricType::COUNTER,
);

/// Exposes each upstream of every forwarding service of a server's [`Stats`] (nothing when no
/// service forwards).
pub(crate) struct UpstreamCollector {
    stats: Arc<Stats>,
    descs: Vec<Desc>,
}

impl UpstreamCollector {
    pub(crate) fn new(stats: Arc<Stats>) -> Result<UpstreamCollector, prometheus::Error> {
        let desc = |(name, help, _): (&str, &str, MetricType), labels: &[&str]| {
            Desc::new(
                name.to_string(),
                help.to_string(),
                labels.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )
        };
        let upstream = ["upstream"];
        Ok(UpstreamCollector {
            stats,
            descs: vec![
                desc(UP, &upstream)?,
                desc(OPENED, &upstream)?,
                desc(ACTIVE, &upstream)?,
                desc(FAILURES, &upstream)?,
                desc(BYTES, &["upstream", "direction"])?,
            ],
        })
    }
}

/// One sample with `labels`, a counter or a gauge as its family is.
fn sample(kind: MetricType, labels: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = Metric::default();
    metric.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect(),
    );
    set_value(&mut metric, kind, value);
    metric
}

fn family((name, help, kind): (&str, &str, MetricType), metrics: Vec<Metric>) -> MetricFamily {
    named_family(name, help, kind, metrics)
}

/// The labels naming `upstream`: `service` for a named service's, then `upstream`.
fn naming(upstream: &UpstreamSnapshot) -> Vec<(&str, &str)> {
    let service = (upstream.service.as_deref()).map(|service| ("service", service));
    service
        .into_iter()
        .chain([("upstream", upstream.upstream.as_str())])
        .collect()
}

/// One sample per upstream of `value`.
fn per_upstream(
    spec: (&str, &str, MetricType),
    upstreams: &[UpstreamSnapshot],
    value: impl Fn(&UpstreamSnapshot) -> u64,
) -> MetricFamily {
    let metrics = upstreams
        .iter()
        .map(|u| sample(spec.2, &naming(u), value(u) as f64))
        .collect();
    family(spec, metrics)
}

impl Collector for UpstreamCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let upstreams = self.stats.upstreams();
        let bytes = upstreams
            .iter()
            .flat_map(|u| {
                [
                    ("client_to_upstream", u.bytes_client_to_upstream),
                    ("upstream_to_client", u.bytes_upstream_to_client),
                ]
                .map(|(direction, n)| {
                    let mut labels = naming(u);
                    labels.push(("direction", direction));
                    sample(BYTES.2, &labels, n as f64)
                })
            })
            .collect();
        vec![
            per_upstream(UP, &upstreams, |u| u64::from(u.up)),
            per_upstream(OPENED, &upstreams, |u| u.connections_opened),
            per_upstream(ACTIVE, &upstreams, |u| u.connections_active),
            per_upstream(FAILURES, &upstreams, |u| u.connect_failures),
            family(BYTES, bytes),
        ]
    }
}
