//! The HTTP API: the state every handler gets, the table of routes and [`routes`], which serves
//! them. The handlers live by concern: [`todos`] (the commands), [`feed`] (`GET /events`) and
//! [`ops`] (health, readiness, metrics, the OpenAPI document); [`extract`] reads what they take
//! from a request (body, `If-Match`, `Idempotency-Key`, ids).
//!
//! Each route is one function returning a filter, state injected with `with_state`, and every
//! error answered by [`crate::error`]. Handlers never reject: once a route matched, the handler
//! answers, so warp's rejections only ever mean "no such route", "wrong method" or a malformed
//! header or query string.

pub mod auth;
mod extract;
mod feed;
mod ops;
mod todos;

pub use feed::FEED_MAX_LIMIT;
pub use ops::OPENAPI;

use crate::commands::{Commands, Probes};
use crate::error::handle_rejection;
use crate::metrics::Metrics;
use crate::relay::RelayStatus;
use events::service::http::{self, json_response, Route};
use std::convert::Infallible;
use std::sync::Arc;
use warp::reply::Response;
use warp::Filter;

#[derive(Clone)]
pub struct State {
    pub commands: Commands,
    /// `/ready`'s and `/metrics`' PostgreSQL, on connections of their own.
    pub probes: Probes,
    pub relay: Arc<RelayStatus>,
    pub tasks: Arc<events::service::supervise::Supervisor>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: u64,
    /// Who may write and who may read `GET /events` (`WRITE_TOKENS`, `FEED_TOKENS`).
    pub tokens: auth::Tokens,
    /// Origins browsers may call the API from (`CORS_ORIGINS`); none: no cross-origin calls.
    pub cors_origins: Vec<String>,
}

fn with_state(state: State) -> impl Filter<Extract = (State,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Every route the service serves. `routes` serves exactly these, and the OpenAPI test checks
/// this list against the OpenAPI document (`crate::openapi`) both ways.
pub fn route_table(state: State) -> Vec<Route> {
    let mut table = vec![
        Route::new("post", "/todos", |name| todos::create(state.clone(), name)),
        Route::new("patch", "/todos/{id}", |name| {
            todos::patch(state.clone(), name)
        }),
        Route::new("put", "/todos/{id}", |name| todos::put(state.clone(), name)),
        Route::new("delete", "/todos/{id}", |name| {
            todos::delete(state.clone(), name)
        }),
        Route::new("post", "/todos/{id}/erase", |name| {
            todos::erase(state.clone(), name)
        }),
        Route::new("get", "/events", |name| feed::feed(state.clone(), name)),
    ];
    table.extend(http::operator_routes(
        ops::ready(state.clone()).boxed(),
        ops::metrics(state).boxed(),
        OPENAPI.as_str(),
    ));
    table
}

/// All routes, with rejections answered as problem+json.
pub fn routes(state: State) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let metrics = state.metrics.http.clone();
    let origins = state.cors_origins.clone();
    let api = http::serve(route_table(state), metrics, handle_rejection);
    // Browsers may call the API from `CORS_ORIGINS` (by default query-service's live page on
    // this machine); a request from another origin is refused (403, writing nothing), one with
    // no Origin (curl, other services) is served as always.
    let cors = warp::cors()
        .allow_origins(origins.iter().map(String::as_str))
        .allow_methods(["GET", "POST", "PATCH", "PUT", "DELETE"])
        .allow_headers([
            "content-type",
            "if-match",
            "idempotency-key",
            "authorization",
            "x-request-id",
        ])
        .expose_headers(["etag", "location", "x-request-id", "idempotent-replayed"])
        .max_age(600);
    api.with(cors)
        .map(warp::Reply::into_response)
        .recover(handle_rejection)
        .unify()
        .map(vary_origin)
}

/// Every answer depends on the request's `Origin` (CORS headers on an allowed one, 403 on
/// another): `Vary: Origin` tells caches so, preflight and actual answers alike.
fn vary_origin(mut response: Response) -> Response {
    use warp::http::{header::VARY, HeaderValue};
    let varies = response
        .headers()
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin") || v.trim() == "*");
    if !varies {
        response
            .headers_mut()
            .append(VARY, HeaderValue::from_static("origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State whose database cannot be reached: routing and error mapping work without it.
    fn offline_state() -> State {
        let url = "postgres://nobody:none@127.0.0.1:9/none";
        let limits = crate::settings::Settings::from_vars(Vec::new())
            .expect("defaults")
            .database_limits();
        State {
            commands: Commands::new(
                crate::db::pool(url, 1, limits).expect("pool"),
                crate::commands::Wake::default(),
                crate::idempotency::Keys::new(24),
            ),
            probes: Probes::new(url, limits).expect("probe pool"),
            relay: Arc::default(),
            tasks: Arc::default(),
            metrics: Arc::default(),
            max_body_bytes: 1024,
            tokens: auth::Tokens::default(),
            cors_origins: Vec::new(),
        }
    }

    /// Routes served == operations documented, and every documented operation answers (with
    /// the stores unreachable: 503 is an answer; "no such route" and 405 are not).
    #[tokio::test]
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
        let missing = http::unanswered(&doc, &routes(offline_state()), r#"{"title":"t"}"#).await;
        assert!(missing.is_empty(), "{missing:?}");
    }
}
