//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! - `http_requests_total{route,status}` and `http_request_duration_seconds{route,status}`
//!   ([`events::service::metrics::HttpMetrics`], as command-service has them)
//! - `projection_events_total{outcome="applied|skipped_duplicate|superseded|dead_lettered"}`
//! - `projection_lag_seconds`: time from an event's `occurred_at` to its application (histogram)
//! - `projection_refusals_total`: writes of an event MongoDB refused (each such event is kept
//!   unacked and tried again), and `projection_held_events`: how many are held now
//! - `projection_store_unavailable_total`: times the consumer found MongoDB unavailable (a
//!   batch's write or its counters failed as a server away does) and retried after a pause
//! - `consumer_connection_attempts_total`: connections to RabbitMQ the consumer tried
//! - `dead_letter_queue_messages`: messages in the dead-letter queue, as the consumer last
//!   read it (every [`crate::consumer::DEAD_LETTERS_EVERY`]; -1 when it could not)
//! - `min_version_waiting`: `?min_version=` requests waiting now (at most
//!   `MIN_VERSION_MAX_WAITERS`); `min_version_rounds_total`, `min_version_round_reads_total`
//!   and `min_version_answered_by_notice_total`: how the shared waiting room answered them
//!   (`crate::waits`); `todo_reads_skipped_total`: reads of a todo past the highest id held
//! - `log_head_position`, `projection_position`, `projection_lag_events`,
//!   `projection_oldest_unapplied_seconds`, `projection_stuck`, `log_head_read_failures_total`:
//!   the lag by position and whether the projection is stuck (`crate::lag`)

use crate::store::Outcome;
use events::service::metrics::{render, HttpMetrics};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::fmt::Write;

/// The `outcome` label is the projection's [`Outcome`], under these values (what dashboards
/// read: changing one breaks them).
impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "skipped_duplicate",
            Outcome::Superseded => "superseded",
            Outcome::DeadLettered => "dead_lettered",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    outcome: Outcome,
}

pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    events: Family<EventLabels, Counter>,
    lag: Histogram,
    refusals: Counter,
    held: Gauge,
    store_unavailable: Counter,
    connection_attempts: Counter,
    min_version_waiting: Gauge,
    dead_letters: Gauge,
    /// The `?min_version=` waiting room's figures (`crate::waits`).
    pub waits: crate::waits::WaitFigures,
    /// The lag by position (`crate::lag`).
    pub lag_by_position: crate::lag::LagFigures,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let http = HttpMetrics::register(&mut registry);
        let events = Family::<EventLabels, Counter>::default();
        // 1 ms … ~65 s
        let lag = Histogram::new(exponential_buckets(0.001, 2.0, 17));
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
        let refusals = Counter::default();
        registry.register(
            "projection_refusals",
            "Writes of an event MongoDB refused; the event is kept unacked and tried again",
            refusals.clone(),
        );
        let held = Gauge::default();
        registry.register(
            "projection_held_events",
            "Events MongoDB refused that the consumer holds unacked for a retry",
            held.clone(),
        );
        let store_unavailable = Counter::default();
        registry.register(
            "projection_store_unavailable",
            "Times the consumer found MongoDB unavailable and retried the batch after a pause",
            store_unavailable.clone(),
        );
        let connection_attempts = Counter::default();
        registry.register(
            "consumer_connection_attempts",
            "Connections to RabbitMQ the consumer tried",
            connection_attempts.clone(),
        );
        let min_version_waiting = Gauge::default();
        registry.register(
            "min_version_waiting",
            "Requests waiting for a ?min_version= to be projected",
            min_version_waiting.clone(),
        );
        let dead_letters = Gauge::default();
        dead_letters.set(-1);
        registry.register(
            "dead_letter_queue_messages",
            "Messages in the dead-letter queue as the consumer last read it (-1: not read yet)",
            dead_letters.clone(),
        );
        let waits = crate::waits::WaitFigures::default();
        registry.register(
            "min_version_rounds",
            "Rounds of the ?min_version= waiting room (each reads every todo waited for once)",
            waits.rounds.clone(),
        );
        registry.register(
            "min_version_round_reads",
            "Todos read by the ?min_version= waiting room's rounds",
            waits.round_reads.clone(),
        );
        registry.register(
            "min_version_answered_by_notice",
            "?min_version= waiters answered from a notice of what landed, with no store read",
            waits.answered_by_notice.clone(),
        );
        registry.register(
            "todo_reads_skipped",
            "Reads of a todo skipped because its id is past the highest the read model holds",
            waits.absent_without_read.clone(),
        );
        let position_lag = crate::lag::LagFigures::register(&mut registry);
        Self {
            registry,
            waits,
            lag_by_position: position_lag,
            http,
            events,
            lag,
            refusals,
            held,
            store_unavailable,
            connection_attempts,
            min_version_waiting,
            dead_letters,
        }
    }
}

impl Metrics {
    pub fn observe_event(&self, outcome: Outcome, lag: Option<chrono::TimeDelta>) {
        self.events.get_or_create(&EventLabels { outcome }).inc();
        if let Some(lag) = lag {
            self.lag
                .observe(lag.num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6);
        }
    }

    /// MongoDB refused an event's write once more.
    pub fn observe_refusal(&self) {
        self.refusals.inc();
    }

    /// How many messages the dead-letter queue holds (`None`, -1: unknown).
    pub fn set_dead_letters(&self, n: Option<u32>) {
        self.dead_letters.set(n.map_or(-1, i64::from));
    }

    /// How many refused events the consumer holds for a retry, as last set.
    pub fn held(&self) -> i64 {
        self.held.get()
    }

    /// How many refused events the consumer holds for a retry.
    pub fn set_held(&self, held: usize) {
        self.held.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    /// MongoDB was unavailable for a batch (or its counters); the consumer retries after a pause.
    pub fn observe_store_unavailable(&self) {
        self.store_unavailable.inc();
    }

    /// The consumer is about to connect to RabbitMQ.
    pub fn consumer_connect(&self) {
        self.connection_attempts.inc();
    }

    /// A `?min_version=` request starts (`1`) or stops (`-1`) waiting.
    pub fn min_version_waiting(&self, change: i64) {
        self.min_version_waiting.inc_by(change);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_is_counted_under_its_label_value() {
        let metrics = Metrics::default();
        for outcome in [
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::Superseded,
            Outcome::DeadLettered,
        ] {
            metrics.observe_event(outcome, None);
        }
        let text = metrics.render();
        for label in [
            "applied",
            "skipped_duplicate",
            "superseded",
            "dead_lettered",
        ] {
            let sample = format!("projection_events_total{{outcome=\"{label}\"}} 1");
            assert!(text.contains(&sample), "{sample} in\n{text}");
        }
    }
}
