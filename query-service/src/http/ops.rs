//! The service's own routes: `/stats` (one read of the projection's counters, which keep the
//! counts; counted and cached for [`COUNTS_MAX_AGE`] on a read model an earlier version wrote,
//! until its counts are kept),
//! `/health`, `/ready`, `/metrics` and `/openapi.json`.

use super::{json_response, with_state, State};
use crate::error::ApiError;
use crate::store::Store;
use events::service::http::request_id;
use events::service::http::{answer, RouteName};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// How old the counts `/stats` answers may be. Counting reads every live todo's index entry,
/// so a client polling `/stats` must not make the store count at its own pace.
pub const COUNTS_MAX_AGE: Duration = Duration::from_secs(1);

/// When counts were taken, and the counts of live and of completed todos.
type Counted = (Instant, (u64, u64));

/// The last counts of live and completed todos, and when they were taken. One request
/// recounts at a time; the others meanwhile answer what was last counted.
#[derive(Clone, Default)]
pub struct CountsCache {
    last: Arc<std::sync::Mutex<Option<Counted>>>,
    recount: Arc<tokio::sync::Mutex<()>>,
}

impl CountsCache {
    fn last(&self) -> Option<Counted> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn get(&self, store: &Store) -> Result<(u64, u64), ApiError> {
        loop {
            let last = self.last();
            if let Some((at, counts)) = last {
                if at.elapsed() < COUNTS_MAX_AGE {
                    return Ok(counts);
                }
            }
            match self.recount.try_lock() {
                Ok(_recounting) => {
                    let counts = store.count_todos().await?;
                    *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((Instant::now(), counts));
                    return Ok(counts);
                }
                // Another request is recounting: its last counts will do.
                Err(_) => match last {
                    Some((_, counts)) => return Ok(counts),
                    None => drop(self.recount.lock().await),
                },
            }
        }
    }
}

/// The OpenAPI 3 description of this service, served at `GET /openapi.json`.
pub static OPENAPI: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::openapi::document().to_string());

pub(super) fn stats(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("stats")
        .and(warp::get())
        .and(request_id())
        .and(with_state(state))
        .and_then(move |rid: String, state: State| async move {
            answer::<ApiError, _>(state.metrics.http.clone(), rid, route, async move {
                // One point read: the counts are kept with the counters, batch by batch. A read
                // model an earlier version wrote is counted (cached) until they are.
                let (projection, kept) = state.store.stats_and_counts().await?;
                let (total, completed) = match kept {
                    Some(counts) => counts,
                    None => state.counts.get(&state.store).await?,
                };
                let stats = crate::store::Stats {
                    total,
                    completed,
                    pending: total.saturating_sub(completed),
                    projection,
                    dead_letter_queue: *state
                        .consumer
                        .dead_letters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()),
                    read_model: (&state.store.pointer()).into(),
                    lag: state.lag.get(),
                };
                Ok(json_response(StatusCode::OK, &stats))
            })
            .await
        })
}

pub(super) fn metrics(
    state: State,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: State| events::service::http::openmetrics(state.metrics.render()))
}

pub(super) fn ready(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("ready")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: State| async move {
            let mongo_up = matches!(
                tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await,
                Ok(Ok(()))
            );
            let consumer_up = state.consumer.connected.load(Ordering::Relaxed);
            let fanout_up = state.consumer.fanout.load(Ordering::Relaxed);
            // A stuck projection is named, not failed: taking every replica out of service
            // would turn stale reads into no reads. `projection_stuck` is what alerts.
            let lag = state.lag.get();
            // Reads need MongoDB only. Without RabbitMQ the answers grow stale but stay
            // correct for the version they report, so the broker is reported, not required.
            events::service::http::readiness(
                mongo_up,
                serde_json::json!({
                    "mongodb": if mongo_up { "up" } else { "down" },
                    "rabbitmq": if consumer_up { "up" } else { "down" },
                    "fanout": if fanout_up { "up" } else { "down" },
                    "projection": lag.state,
                    "lag_events": lag.events,
                }),
                state.tasks.report(),
            )
        })
}
