//! The request metrics every route records, `http_requests_total{route,status}` and
//! `http_request_duration_seconds{route,status}`, and the text exposition of a registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
        Self { requests, latency }
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
