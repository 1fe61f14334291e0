//! The todo reads: `GET /todos` (one page, with a `Link` to the next) and `GET /todos/{id}`,
//! which with `?min_version=` waits (bounded) until the read model holds that version.

use super::params::{list_query, min_version, next_link};
use super::{json_response, query, with_state, State};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::Stored;
use events::service::http::{answer, request_id, RouteName};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

pub(super) fn list(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos")
        .and(warp::get())
        .and(request_id())
        .and(query())
        .and(with_state(state))
        .and_then(
            move |rid: String, params: HashMap<String, String>, state: State| async move {
                answer::<ApiError, _>(state.metrics.http.clone(), rid, route, async move {
                    let q = list_query(&params)?;
                    let (todos, next) = state.store.list(&q).await?;
                    let mut response = json_response(StatusCode::OK, &todos);
                    if let Some(cursor) = next {
                        if let Ok(v) = HeaderValue::from_str(&next_link(&q, &cursor)) {
                            response.headers_mut().insert(header::LINK, v);
                        }
                    }
                    Ok(response)
                })
                .await
            },
        )
}

pub(super) fn get(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos" / i64)
        .and(warp::get())
        .and(request_id())
        .and(query())
        .and(with_state(state))
        .and_then(
            move |id: i64, rid: String, params: HashMap<String, String>, state: State| async move {
                answer::<ApiError, _>(state.metrics.http.clone(), rid, route, async move {
                    if !events::limits::in_id_range(id) {
                        return Err(ApiError::NotFound(format!(
                            "Todo {id} does not exist; ids are 1 to {}.",
                            events::limits::MAX_ID
                        )));
                    }
                    let want = min_version(&params)?;
                    let stored = read_at_least(&state, id, want).await?;
                    match stored {
                        Some(Stored::Live(todo)) => {
                            let mut response = json_response(StatusCode::OK, &todo);
                            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", todo.version)) {
                                response.headers_mut().insert(header::ETAG, v);
                            }
                            Ok(response)
                        }
                        Some(Stored::Deleted { .. }) => {
                            Err(ApiError::NotFound(format!("Todo {id} was deleted.")))
                        }
                        None => Err(ApiError::NotFound(format!("Todo {id} does not exist."))),
                    }
                })
                .await
            },
        )
}

/// Whether the read model has version `want` of a todo or later. A delete is final: no later
/// version can follow a tombstone.
fn holds(stored: &Option<Stored>, want: i64) -> bool {
    match stored {
        Some(Stored::Deleted { .. }) => true,
        Some(s) => s.version() >= want,
        None => false,
    }
}

/// A request's place in the `?min_version=` wait budget, counted in `min_version_waiting`
/// while it is held.
struct Waiting<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    metrics: &'a Metrics,
}

impl<'a> Waiting<'a> {
    fn new(permit: tokio::sync::SemaphorePermit<'a>, metrics: &'a Metrics) -> Self {
        metrics.min_version_waiting(1);
        Self {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.metrics.min_version_waiting(-1);
    }
}

/// How often a `?min_version=` waiter reads again when this process's consumer said nothing
/// about its todo: another replica's consumer may have applied it.
const MIN_VERSION_POLL: Duration = Duration::from_millis(100);

/// Reads a todo; with `want`, waits (bounded) until the read model holds that version or a
/// later one. Never answers an older version in that case: it says the read model is behind.
/// The waiter reads again as soon as this process's consumer applied a batch holding its todo
/// at that version or later, and every [`MIN_VERSION_POLL`] in case another replica did. A
/// request that would wait while `MIN_VERSION_MAX_WAITERS` others are waiting is told at once
/// that the read model is behind.
async fn read_at_least(
    state: &State,
    id: i64,
    want: Option<i64>,
) -> Result<Option<Stored>, ApiError> {
    let deadline = Instant::now() + state.min_version_wait;
    // Subscribed before the first read, so no batch applied after it goes unseen.
    let mut applied = state.applied.subscribe();
    // Taken on the first wait, given back when the request ends (answered or abandoned).
    let mut permit: Option<Waiting> = None;
    loop {
        let stored = state.store.get(id).await?;
        let Some(want) = want else { return Ok(stored) };
        if holds(&stored, want) {
            return Ok(stored);
        }
        if permit.is_none() {
            match state.min_version_waiters.try_acquire() {
                Ok(p) => permit = Some(Waiting::new(p, &state.metrics)),
                Err(_) => {
                    tracing::debug!(id, want, "min_version wait budget spent; not waiting");
                    let have = stored.as_ref().map(Stored::version);
                    return Err(ApiError::Behind { have, want });
                }
            }
        }
        let poll =
            tokio::time::sleep_until((Instant::now() + MIN_VERSION_POLL).min(deadline).into());
        tokio::pin!(poll);
        loop {
            tokio::select! {
                batch = applied.recv() => match batch {
                    Ok(batch) if !batch.iter().any(|&(t, v)| t == id && v >= want) => continue,
                    // Ours, or missed batches (lagged): read again.
                    _ => break,
                },
                _ = &mut poll => break,
            }
        }
        if Instant::now() >= deadline {
            let stored = state.store.get(id).await?;
            let have = stored.as_ref().map(Stored::version);
            if have.is_some_and(|h| h >= want) || matches!(stored, Some(Stored::Deleted { .. })) {
                return Ok(stored);
            }
            return Err(ApiError::Behind { have, want });
        }
    }
}
