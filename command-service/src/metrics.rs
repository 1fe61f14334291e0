//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! - `http_requests_total{route,status}` and `http_request_duration_seconds{route,status}`
//! - `outbox_backlog` (events committed, not yet confirmed by RabbitMQ; read at scrape time)
//! - `outbox_published_total`, `outbox_publish_failures_total`

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub status: u16,
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    latency: HistogramFamily,
    pub outbox_backlog: Gauge,
    pub published: Counter,
    pub publish_failures: Counter,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~8 s
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let outbox_backlog = Gauge::default();
        let published = Counter::default();
        let publish_failures = Counter::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            latency.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Events committed but not yet confirmed by RabbitMQ",
            outbox_backlog.clone(),
        );
        registry.register(
            "outbox_published",
            "Events published and confirmed by RabbitMQ",
            published.clone(),
        );
        registry.register(
            "outbox_publish_failures",
            "Publish rounds that failed (broker away, nack, unroutable)",
            publish_failures.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            outbox_backlog,
            published,
            publish_failures,
        }
    }
}

impl Metrics {
    pub fn observe_request(&self, route: &str, status: u16, elapsed: Duration) {
        let labels = HttpLabels {
            route: route.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %err, "metrics encoding failed");
        }
        out
    }
}
