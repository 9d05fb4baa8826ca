//! Building blocks of the Prometheus exposition that every collector of `/metrics` uses
//! (`metrics.rs`, `upstream_metrics.rs`, `tls_metrics.rs`): kept apart so that the collectors
//! import it and not each other.

use prometheus::proto::{Counter, Gauge, Metric, MetricFamily, MetricType};

/// A family of `metrics`.
pub(crate) fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<Metric>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

/// Sets `metric`'s value as a counter or, for any other `kind`, a gauge.
pub(crate) fn set_value(metric: &mut Metric, kind: MetricType, value: f64) {
    if kind == MetricType::COUNTER {
        let mut counter = Counter::default();
        counter.set_value(value);
        metric.set_counter(counter);
    } else {
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        metric.set_gauge(gauge);
    }
}
