//! The routes for operators: `GET /health` (liveness), `GET /ready` (readiness: PostgreSQL,
//! RabbitMQ, the outbox and the supervised tasks), `GET /metrics` (OpenMetrics) and
//! `GET /openapi.json`. `/ready` and `/metrics` query PostgreSQL through
//! [`crate::commands::Probes`], never through the writes' pool.

use super::{with_state, State};
use std::sync::atomic::Ordering;
use std::time::Duration;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The OpenAPI 3 description of this service, served at `GET /openapi.json`.
pub static OPENAPI: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::openapi::document().to_string());

pub(super) fn metrics(
    state: State,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: State| async move {
            if let Ok(Ok(outbox)) =
                tokio::time::timeout(Duration::from_secs(2), state.probes.outbox()).await
            {
                state.metrics.outbox_backlog.set(outbox.backlog);
            }
            events::service::http::openmetrics(state.metrics.render())
        })
}

pub(super) fn ready(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("ready")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: State| async move {
            let timeout = Duration::from_secs(2);
            let postgres = tokio::time::timeout(timeout, state.probes.ping()).await;
            let postgres_up = matches!(postgres, Ok(Ok(())));
            let outbox = if postgres_up {
                tokio::time::timeout(timeout, state.probes.outbox())
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            let broker_up = state.relay.broker_connected.load(Ordering::Relaxed);
            // Writes need PostgreSQL only: with RabbitMQ away they are still accepted and kept
            // in the outbox, so the broker's state is reported but does not make us unready.
            events::service::http::readiness(
                postgres_up,
                serde_json::json!({
                    "postgres": if postgres_up { "up" } else { "down" },
                    "rabbitmq": if broker_up { "up" } else { "down" },
                    "outbox_backlog": outbox.as_ref().map(|o| o.backlog),
                    "relay_failed_rounds": outbox.as_ref().map(|o| o.publish_attempts),
                    "relay_last_error": outbox.as_ref().and_then(|o| o.last_error.clone()),
                    "writes": state.tokens.write_mode(),
                    "feed": state.tokens.feed_mode(),
                    "erase": state.tokens.erase_mode(),
                }),
                state.tasks.report(),
            )
        })
}
