//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! - `http_requests_total{route,status}` and `http_request_duration_seconds{route,status}`
//!   ([`events::service::metrics::HttpMetrics`], as query-service has them)
//! - `outbox_backlog` (events committed, not yet confirmed by RabbitMQ; read at scrape time)
//! - `events_stamped_total` (events given their position by the sequencer)
//! - `outbox_published_total`, `outbox_publish_failures_total`

use events::service::metrics::{render, HttpMetrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub outbox_backlog: Gauge,
    pub stamped: Counter,
    pub published: Counter,
    pub publish_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        let outbox_backlog = Gauge::default();
        let stamped = Counter::default();
        let published = Counter::default();
        let publish_failures = Counter::default();
        registry.register(
            "outbox_backlog",
            "Events committed but not yet confirmed by RabbitMQ",
            outbox_backlog.clone(),
        );
        registry.register(
            "events_stamped",
            "Events given their position in the log by the sequencer",
            stamped.clone(),
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
            http,
            outbox_backlog,
            stamped,
            published,
            publish_failures,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
