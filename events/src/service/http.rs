//! What every HTTP route of both services goes through: the correlation id, the request span
//! and log line, the request metrics, and the route table that is served and documented.

use super::metrics::HttpMetrics;
use std::convert::Infallible;
use std::future::Future;
use std::time::{Duration, Instant};
use tracing::Instrument;
use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The correlation id header, read from requests and set on every answer.
pub const REQUEST_ID: &str = "x-request-id";

/// One served route: its method, its path as the OpenAPI document writes it, its filter.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub filter: BoxedFilter<(Response,)>,
}

impl Route {
    pub fn new(method: &'static str, path: &'static str, filter: BoxedFilter<(Response,)>) -> Self {
        Self {
            method,
            path,
            filter,
        }
    }
}

/// Serves exactly the routes of `table`; what none of them takes (no such route, wrong method,
/// a malformed header or query string) is answered by `on_rejection` and counted as route
/// `unmatched`.
pub fn serve<H, Fut>(
    table: Vec<Route>,
    metrics: HttpMetrics,
    on_rejection: H,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone
where
    H: Fn(Rejection) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, Infallible>> + Send,
{
    let mut filters = table.into_iter().map(|r| r.filter);
    let first = filters.next().expect("at least one route");
    let api = filters.fold(first, |all, next| all.or(next).unify().boxed());
    api.recover(move |rejection| {
        let metrics = metrics.clone();
        let on_rejection = on_rejection.clone();
        async move {
            let response = on_rejection(rejection).await;
            if let Ok(r) = &response {
                metrics.observe("unmatched", r.status().as_u16(), Duration::ZERO);
            }
            response
        }
    })
    .unify()
}

/// The request's correlation id: `X-Request-Id` if the client sent a usable one (1 to 128
/// visible ASCII characters), else a new UUID.
pub fn request_id() -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::header::optional::<String>(REQUEST_ID).map(|given: Option<String>| {
        given
            .filter(|id| {
                !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
            })
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    })
}

/// Runs a handler's work inside a `request` span carrying the correlation id and route, logs
/// the status it answered, counts it, and returns the answer with `X-Request-Id` set.
pub async fn answer(
    metrics: &HttpMetrics,
    id: String,
    route: &'static str,
    work: impl Future<Output = Response>,
) -> Result<Response, Infallible> {
    let started = Instant::now();
    let span = tracing::info_span!("request", correlation_id = %id, route);
    let mut response = async {
        let response = work.await;
        tracing::info!(status = response.status().as_u16(), "request answered");
        response
    }
    .instrument(span)
    .await;
    metrics.observe(route, response.status().as_u16(), started.elapsed());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}
