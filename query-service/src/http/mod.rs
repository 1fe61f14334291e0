//! The read API: one function per route returning a filter, state injected with `with_state`,
//! errors answered by [`crate::error`]. Handlers never reject.
//!
//! Here: the [`State`] every handler gets, the route table and [`routes`], and the helpers the
//! handlers share. The routes themselves live by concern:
//!
//! - `todos.rs`: `GET /todos` and `GET /todos/{id}` (with its `?min_version=` wait);
//! - `params.rs`: their query parameters, the list cursors and the `Link` header;
//! - `stream.rs`: `GET /todos/stream`;
//! - `page.rs`: `GET /`, the live page, and its security headers;
//! - `ops.rs`: `/stats` (and its counts cache), `/health`, `/ready`, `/metrics`,
//!   `/openapi.json`;
//! - `operator.rs`: `/dead-letters` (list, redrive, purge), guarded by `OPERATOR_TOKENS`.

pub(crate) mod operator;
mod ops;
mod page;
mod params;
mod stream;
mod todos;

pub use operator::Operator;
pub use ops::{CountsCache, COUNTS_MAX_AGE, OPENAPI};
pub use page::Page;
pub use params::{
    encode_cursor, list_query, min_version, CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT, SORTS,
};
pub use stream::Streams;

use crate::consumer::ConsumerStatus;
use crate::error::handle_rejection;
use crate::metrics::Metrics;
use crate::store::Store;
use events::service::http::{self, json_response, Route};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use warp::reply::Response;
use warp::{Filter, Rejection};

#[derive(Clone)]
pub struct State {
    pub store: Store,
    /// The lag by position, as last read (`crate::lag`).
    pub lag: Arc<crate::lag::Watch>,
    pub consumer: Arc<ConsumerStatus>,
    pub metrics: Arc<Metrics>,
    pub min_version_wait: Duration,
    /// The requests that may wait for a `?min_version=` at once (`MIN_VERSION_MAX_WAITERS`),
    /// shared by all of them: a flood of them must not hold unbounded memory.
    pub min_version_waiters: Arc<tokio::sync::Semaphore>,
    /// The `?min_version=` waiting room, which every waiter of this process shares.
    pub waits: Arc<crate::waits::Waits>,
    /// `GET /todos/stream`'s hub of changes, places and bounds.
    pub streams: Streams,
    /// `/stats` counts, recomputed at most every [`COUNTS_MAX_AGE`].
    pub counts: CountsCache,
    /// The supervised consumer's state, for `/ready`.
    pub tasks: Arc<events::service::supervise::Supervisor>,
    /// The live page at `GET /`, writing to `COMMAND_SERVICE_URL`.
    pub page: Page,
    /// Who may call the dead-letter routes, and with which broker user they work.
    pub operator: Operator,
}

fn with_state(state: State) -> impl Filter<Extract = (State,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Every route the service serves. `routes` serves exactly these, and the OpenAPI test checks
/// this list against the OpenAPI document (`crate::openapi`) both ways.
pub fn route_table(state: State) -> Vec<Route> {
    let mut table = vec![
        Route::new("get", "/todos", |name| todos::list(state.clone(), name)),
        Route::new("get", "/todos/{id}", |name| todos::get(state.clone(), name)),
        Route::new("get", "/todos/stream", |name| {
            stream::stream(state.clone(), name)
        }),
        Route::new("get", "/stats", |name| ops::stats(state.clone(), name)),
        Route::new("get", "/", |_| page::page(state.page.clone())),
        Route::new("get", "/dead-letters", |name| {
            operator::list(state.clone(), name)
        }),
        Route::new("post", "/dead-letters/redrive", |name| {
            operator::redrive(state.clone(), name)
        }),
        Route::new("post", "/dead-letters/purge", |name| {
            operator::purge(state.clone(), name)
        }),
    ];
    table.extend(http::operator_routes(
        ops::ready(state.clone()).boxed(),
        ops::metrics(state).boxed(),
        OPENAPI.as_str(),
    ));
    table
}

pub fn routes(state: State) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let metrics = state.metrics.http.clone();
    http::serve(route_table(state), metrics, handle_rejection)
}

fn query() -> impl Filter<Extract = (HashMap<String, String>,), Error = Rejection> + Clone {
    warp::query::<HashMap<String, String>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State whose MongoDB cannot be reached: routing and error mapping work without it.
    fn offline_state() -> State {
        let store = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(Store::connect(
                "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200&connectTimeoutMS=200",
                "none",
            ))
        })
        .expect("client");
        State {
            store: store.clone(),
            lag: Arc::new(crate::lag::Watch::new(Default::default())),
            consumer: Arc::default(),
            metrics: Arc::default(),
            min_version_wait: Duration::from_millis(100),
            min_version_waiters: Arc::new(tokio::sync::Semaphore::new(1)),
            waits: crate::waits::Waits::new(store.clone(), Default::default()),
            streams: Streams::new(
                crate::changes::Hub::new(1 << 20),
                1,
                1,
                1 << 20,
                Duration::from_secs(1),
            ),
            counts: CountsCache::default(),
            tasks: Arc::default(),
            page: Page::new("http://127.0.0.1:5001").expect("page"),
            operator: Operator::default(),
        }
    }

    /// Routes served == operations documented, and every documented operation answers (with
    /// the stores unreachable: 503 is an answer; "no such route" and 405 are not).
    #[tokio::test(flavor = "multi_thread")]
    async fn the_openapi_document_lists_exactly_the_served_routes() {
        let doc: serde_json::Value = serde_json::from_str(&OPENAPI).expect("openapi.json is JSON");
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "OpenAPI 3"
        );
        assert_eq!(
            http::served(&route_table(offline_state())),
            events::service::openapi::operations(&doc),
            "served routes vs openapi.json"
        );
        let missing = http::unanswered(&doc, &routes(offline_state()), r#"{}"#).await;
        assert!(missing.is_empty(), "{missing:?}");
    }
}
