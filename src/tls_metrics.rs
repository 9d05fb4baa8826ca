//! The TLS and service families of `/metrics`: reloads, certificate expiry, and connections
//! per service, read from the server's [`TlsReloader`].

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use tlsvisor_actors::TlsReloader;

use crate::exposition::family;

const RELOADS: &str = "tlsvisor_tls_reloads_total";
const EXPIRY: &str = "tlsvisor_certificate_expiry_timestamp_seconds";
const RELOADS_HELP: &str = "TLS configuration reloads (SIGHUP, --watch-certs), by result.";
const EXPIRY_HELP: &str = "notAfter of each certificate served, in Unix seconds.";
const SERVICE_ACTIVE: &str = "tlsvisor_service_connections_active";
const SERVICE_TOTAL: &str = "tlsvisor_service_connections_total";
const SERVICE_REFUSED: &str = "tlsvisor_service_connections_refused_total";
const SERVICE_ACTIVE_HELP: &str =
    "Connections whose ClientHello chose the service (its first name, or default), not ended yet.";
const SERVICE_TOTAL_HELP: &str =
    "Connections whose ClientHello chose the service (its first name, or default), admitted.";
const SERVICE_REFUSED_HELP: &str =
    "Clients refused because their service was at its max-connections (reason service_limit).";

/// Exposes a server's reload counts and the expiry of every certificate it serves now.
pub(crate) struct TlsCollector {
    reloader: TlsReloader,
    descs: Vec<Desc>,
}

impl TlsCollector {
    /// A collector reading `reloader` at each scrape.
    pub(crate) fn new(reloader: TlsReloader) -> Result<TlsCollector, prometheus::Error> {
        let desc = |name: &str, help: &str, label: &str| {
            Desc::new(
                name.to_string(),
                help.to_string(),
                vec![label.to_string()],
                Default::default(),
            )
        };
        Ok(TlsCollector {
            reloader,
            descs: vec![
                desc(RELOADS, RELOADS_HELP, "result")?,
                desc(EXPIRY, EXPIRY_HELP, "name")?,
                desc(SERVICE_ACTIVE, SERVICE_ACTIVE_HELP, "service")?,
                desc(SERVICE_TOTAL, SERVICE_TOTAL_HELP, "service")?,
                desc(SERVICE_REFUSED, SERVICE_REFUSED_HELP, "service")?,
            ],
        })
    }
}

fn labelled(label: &str, value: &str) -> Metric {
    let mut pair = LabelPair::default();
    pair.set_name(label.to_string());
    pair.set_value(value.to_string());
    let mut metric = Metric::default();
    metric.set_label(vec![pair]);
    metric
}

impl Collector for TlsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snap = self.reloader.snapshot();
        let reloads = [("ok", snap.reloads_ok), ("failed", snap.reloads_failed)]
            .into_iter()
            .map(|(result, n)| {
                let mut metric = labelled("result", result);
                let mut counter = Counter::default();
                counter.set_value(n as f64);
                metric.set_counter(counter);
                metric
            })
            .collect();
        let expiry = snap
            .certificate_expiry
            .iter()
            .map(|(name, not_after)| {
                let mut metric = labelled("name", name);
                let mut gauge = Gauge::default();
                gauge.set_value(*not_after as f64);
                metric.set_gauge(gauge);
                metric
            })
            .collect();
        let services = self.reloader.service_connections();
        let active = services
            .iter()
            .map(|s| {
                let mut metric = labelled("service", &s.service);
                let mut gauge = Gauge::default();
                gauge.set_value(s.active as f64);
                metric.set_gauge(gauge);
                metric
            })
            .collect();
        let counters = |of: fn(&tlsvisor_actors::ServiceConnections) -> u64| {
            services
                .iter()
                .map(|s| {
                    let mut metric = labelled("service", &s.service);
                    let mut counter = Counter::default();
                    counter.set_value(of(s) as f64);
                    metric.set_counter(counter);
                    metric
                })
                .collect()
        };
        let total = counters(|s| s.total);
        let refused = counters(|s| s.refused);
        vec![
            family(RELOADS, RELOADS_HELP, MetricType::COUNTER, reloads),
            family(EXPIRY, EXPIRY_HELP, MetricType::GAUGE, expiry),
            family(
                SERVICE_ACTIVE,
                SERVICE_ACTIVE_HELP,
                MetricType::GAUGE,
                active,
            ),
            family(
                SERVICE_TOTAL,
                SERVICE_TOTAL_HELP,
                MetricType::COUNTER,
                total,
            ),
            family(
                SERVICE_REFUSED,
                SERVICE_REFUSED_HELP,
                MetricType::COUNTER,
                refused,
            ),
        ]
    }
}
