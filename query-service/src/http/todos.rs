//! The todo reads: `GET /todos` (one page, with a `Link` to the next) and `GET /todos/{id}`,
//! which with `?min_version=` waits (bounded) until the read model holds that version.

use super::params::{list_query, min_version, next_link};
use super::{json_response, query, with_state, State};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::Stored;
use events::service::http::{answer, request_id, RouteName};
use std::collections::HashMap;
use std::time::Instant;
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

/// Whether the read model has version `want` of a todo or later (or its deletion).
fn holds(stored: &Option<Stored>, want: i64) -> bool {
    stored
        .as_ref()
        .is_some_and(|s| crate::waits::settles(s, want))
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

/// Reads a todo: one store read per request, none when its id is past the highest the read
/// model holds (known, or read from the counters at most every
/// [`crate::waits::HIGHEST_REFRESH`]). With `want`, waits (bounded) in the shared waiting room
/// ([`crate::waits`]) until the read model holds that version or a later one; never answers an
/// older version then: it says the read model is behind. A request that would wait while
/// `MIN_VERSION_MAX_WAITERS` others are waiting is told at once that the read model is behind.
async fn read_at_least(
    state: &State,
    id: i64,
    want: Option<i64>,
) -> Result<Option<Stored>, ApiError> {
    let deadline = Instant::now() + state.min_version_wait;
    // In the room before the read, so that nothing landing after the read goes unseen.
    let ticket = want.map(|want| state.waits.register(id, want, deadline));
    let stored = if state.waits.may_exist(id).await? {
        state.store.get(id).await?
    } else {
        None
    };
    let (Some(want), Some(ticket)) = (want, ticket) else {
        return Ok(stored);
    };
    if holds(&stored, want) {
        return Ok(stored);
    }
    let have = stored.as_ref().map(Stored::version);
    let _waiting = match state.min_version_waiters.try_acquire() {
        Ok(p) => Waiting::new(p, &state.metrics),
        Err(_) => {
            tracing::debug!(id, want, "min_version wait budget spent; not waiting");
            return Err(ApiError::Behind { have, want });
        }
    };
    match ticket.wait(have).await {
        Ok(stored) => Ok(Some(stored)),
        Err(behind) => Err(ApiError::Behind {
            have: behind.have,
            want,
        }),
    }
}
