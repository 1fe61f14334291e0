//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! - `http_requests_total{route,status}` and `http_request_duration_seconds{route,status}`
//! - `projection_events_total{outcome="applied|skipped_duplicate|dead_lettered"}`
//! - `projection_lag_seconds`: time from an event's `occurred_at` to its application (histogram)

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
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

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EventOutcome {
    applied,
    skipped_duplicate,
    dead_lettered,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub outcome: EventOutcome,
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    latency: HistogramFamily,
    events: Family<EventLabels, Counter>,
    lag: Histogram,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let events = Family::<EventLabels, Counter>::default();
        // 1 ms … ~65 s
        let lag = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            latency.clone(),
        );
        registry.register(
            "projection_events",
            "Events settled by the projection, by outcome",
            events.clone(),
        );
        registry.register(
            "projection_lag_seconds",
            "Time from an event's occurred_at to its application in MongoDB",
            lag.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            events,
            lag,
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

    pub fn observe_event(&self, outcome: EventOutcome, lag: Option<chrono::TimeDelta>) {
        self.events.get_or_create(&EventLabels { outcome }).inc();
        if let Some(lag) = lag {
            self.lag
                .observe(lag.num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %err, "metrics encoding failed");
        }
        out
    }
}
