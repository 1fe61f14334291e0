//! The request metrics every route records, `http_requests_total{route,status}` and
//! `http_request_duration_seconds{route,status}`, the server's connection figures
//! (`http_connections_open`, `http_connections_refused_total{reason}` with reason `full` or
//! `peer`, `http_connections_evicted_total`), and the text exposition of a registry.

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

/// Cheap to clone: the families are shared, so every clone counts into the same registry.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    latency: HistogramFamily,
    open: Gauge,
    refused: Family<ReasonLabel, Counter>,
    evicted: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~8 s
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

impl HttpMetrics {
    /// Creates the request metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<HttpLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            latency.clone(),
        );
        let open = Gauge::default();
        registry.register(
            "http_connections_open",
            "Connections the HTTP server holds now",
            open.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "http_connections_refused",
            "Connections answered 503 and closed at accept: every one busy (full) or the peer at its cap (peer)",
            refused.clone(),
        );
        let evicted = Counter::default();
        registry.register(
            "http_connections_evicted",
            "Idle connections closed to make room for a new one at HTTP_MAX_CONNECTIONS",
            evicted.clone(),
        );
        Self {
            requests,
            latency,
            open,
            refused,
            evicted,
        }
    }

    /// A connection was admitted.
    pub fn connection_opened(&self) {
        self.open.inc();
    }

    /// An admitted connection ended.
    pub fn connection_closed(&self) {
        self.open.dec();
    }

    /// A connection refused at accept, `reason` `full` or `peer`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// An idle connection closed to make room.
    pub fn connection_evicted(&self) {
        self.evicted.inc();
    }

    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        let labels = HttpLabels {
            route: route.to_string(),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// The text exposition format of `registry`, as `GET /metrics` serves it.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %err, "metrics encoding failed");
    }
    out
}
