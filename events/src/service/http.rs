//! What every HTTP route of both services goes through: the correlation id, the request span
//! and log line, the request metrics, and the route table that is served and documented.

use super::metrics::HttpMetrics;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

/// The correlation id header, read from requests and set on every answer.
pub const REQUEST_ID: &str = "x-request-id";

/// One served route: its method, its path as the OpenAPI document writes it, its filter.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub filter: BoxedFilter<(Response,)>,
}

/// A route's name in logs and metrics, `POST /todos`: made from the route table's method and
/// path, so it is written once. Each distinct name is allocated once for the process.
pub type RouteName = &'static str;

fn route_name(method: &str, path: &str) -> RouteName {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let name = format!("{} {}", method.to_uppercase(), path);
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = names.iter().find(|n| **n == name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.push(leaked);
    leaked
}

impl Route {
    /// The route `method path`, its filter built by `make` from the route's name (which the
    /// handler hands to [`answer`]).
    pub fn new<F>(
        method: &'static str,
        path: &'static str,
        make: impl FnOnce(RouteName) -> F,
    ) -> Self
    where
        F: Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static,
    {
        let name = route_name(method, path);
        Self {
            method,
            path,
            filter: make(name).boxed(),
        }
    }
}

/// The operator routes both services serve: `/health`, `/ready` (the service's own checks),
/// `/metrics` (the service's registry) and `/openapi.json` (its document).
pub fn operator_routes(
    ready: BoxedFilter<(Response,)>,
    metrics: BoxedFilter<(Response,)>,
    document: &'static str,
) -> Vec<Route> {
    vec![
        Route::new("get", "/health", |_| health()),
        Route::new("get", "/ready", |_| ready),
        Route::new("get", "/metrics", |_| metrics),
        Route::new("get", "/openapi.json", |_| openapi(document)),
    ]
}

/// A readiness answer: 200 when the store the service needs answers, 503 when not, the body
/// naming every check.
pub fn readiness(ready: bool, checks: serde_json::Value, tasks: impl serde::Serialize) -> Response {
    json_response(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &serde_json::json!({
            "status": if ready { "ready" } else { "not ready" },
            "checks": checks,
            "tasks": tasks,
        }),
    )
}

/// Serves exactly the routes of `table`; what none of them takes (no such route, wrong method,
/// a malformed header or query string) is answered by `on_rejection` and counted as route
/// `unmatched`. A 405 carries `Allow`: the methods the table serves at the request's path.
/// Every answer carries `X-Request-Id`.
pub fn serve<H, Fut>(
    table: Vec<Route>,
    metrics: HttpMetrics,
    on_rejection: H,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone
where
    H: Fn(Rejection) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, Infallible>> + Send,
{
    let routes: Arc<Vec<(&'static str, &'static str)>> =
        Arc::new(table.iter().map(|r| (r.method, r.path)).collect());
    let mut filters = table.into_iter().map(|r| r.filter);
    let first = filters.next().expect("at least one route");
    let api = filters.fold(first, |all, next| all.or(next).unify().boxed());
    let answered = api
        .recover(move |rejection| {
            let metrics = metrics.clone();
            let on_rejection = on_rejection.clone();
            async move {
                let response = on_rejection(rejection).await;
                if let Ok(r) = &response {
                    let status = r.status().as_u16();
                    metrics.observe("unmatched", status, Duration::ZERO);
                    // Inside the request's server span (`server_span`): its status too.
                    record_status(&tracing::Span::current(), status);
                }
                response
            }
        })
        .unify();
    let table = routes.clone();
    let answered = answered
        .with(warp::trace(move |info| server_span(&table, info)))
        .map(Reply::into_response);
    warp::path::full().and(request_id()).and(answered).map(
        move |path: warp::path::FullPath, id: String, mut response: Response| {
            if response.status() == StatusCode::METHOD_NOT_ALLOWED {
                if let Ok(allow) = HeaderValue::from_str(&allowed(&routes, path.as_str())) {
                    response.headers_mut().insert(header::ALLOW, allow);
                }
            }
            // What no handler answered (a refusal before one ran, the operator routes) carries
            // the correlation id too.
            if !response.headers().contains_key(REQUEST_ID) {
                if let Ok(value) = HeaderValue::from_str(&id) {
                    response.headers_mut().insert(REQUEST_ID, value);
                }
            }
            response
        },
    )
}

/// The server span of a request (OpenTelemetry's HTTP conventions), child of the trace its
/// `traceparent` header names, or the root of a new one: named `METHOD /route/{template}` by
/// the route table (the method alone for a path it does not serve); [`answer`] records the
/// status. The probes (`/health`, `/ready`, `/metrics`) are not traced: an orchestrator's
/// every-second calls would bury the requests.
fn server_span(
    routes: &[(&'static str, &'static str)],
    info: warp::trace::Info<'_>,
) -> tracing::Span {
    let path = info.path();
    if matches!(path, "/health" | "/ready" | "/metrics") {
        return tracing::Span::none();
    }
    let method = info.method().as_str();
    let route = routes
        .iter()
        .find(|(m, template)| m.eq_ignore_ascii_case(method) && matches_template(template, path))
        .map(|(_, template)| *template);
    let name = match route {
        Some(template) => format!("{method} {template}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "HTTP",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        url.scheme = "http",
        url.path = path,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let traceparent = info
        .request_headers()
        .get(super::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    super::trace::set_parent(&span, traceparent);
    super::trace::record_trace_id(&span);
    span
}

/// Records an answer's status on its server span: a 5xx marks the span failed (a 4xx is the
/// client's, not the server's, as OpenTelemetry's HTTP conventions say).
fn record_status(server: &tracing::Span, status: u16) {
    server.record("http.response.status_code", status);
    if status >= 500 {
        server.record("otel.status_code", "ERROR");
    }
}

/// Whether `path` is one of `template`'s (a `{…}` segment matches any one segment).
fn matches_template(template: &str, path: &str) -> bool {
    let mut t = template.trim_end_matches('/').split('/');
    let mut p = path.trim_end_matches('/').split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(t), Some(p)) if t == p || (t.starts_with('{') && t.ends_with('}')) => {}
            _ => return false,
        }
    }
}

/// The methods `routes` (method, path template) serve at `path`, upper case, comma-separated,
/// as `Allow` lists them. A template's `{…}` segment matches any one segment.
pub fn allowed(routes: &[(&str, &str)], path: &str) -> String {
    let mut methods: Vec<String> = routes
        .iter()
        .filter(|(_, template)| matches_template(template, path))
        .map(|(method, _)| method.to_uppercase())
        .collect();
    methods.sort();
    methods.dedup();
    methods.join(", ")
}

/// The request's correlation id: `X-Request-Id` if the client sent a usable one (1 to 128
/// visible ASCII characters), else a new UUID. The header is read as raw bytes, so a value
/// warp could not read as a string (bytes outside ASCII) is replaced too, never refused.
pub fn request_id() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::header::value(REQUEST_ID)
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
        .map(|given: Option<HeaderValue>| usable_id(given.as_ref()))
}

/// The given id if it is usable as a correlation id, else a new UUID.
fn usable_id(given: Option<&HeaderValue>) -> String {
    given
        .map(HeaderValue::as_bytes)
        .filter(|id| {
            !id.is_empty() && id.len() <= crate::MAX_ID_TEXT && id.iter().all(u8::is_ascii_graphic)
        })
        .and_then(|id| String::from_utf8(id.to_vec()).ok())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Runs a handler's work inside a `request` span carrying the correlation id and route, logs
/// the status it answered, counts it, and returns the answer with `X-Request-Id` set. An error
/// is answered as the service's error type turns it into a response.
pub async fn answer<E, Fut>(
    metrics: HttpMetrics,
    id: String,
    route: RouteName,
    work: Fut,
) -> Result<Response, Infallible>
where
    E: Into<Response>,
    Fut: Future<Output = Result<Response, E>>,
{
    let started = Instant::now();
    let server = tracing::Span::current();
    server.record("otel.name", route);
    server.record(
        "http.route",
        route.split_once(' ').map_or(route, |(_, path)| path),
    );
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        route,
        causation_id = tracing::field::Empty,
    );
    let mut response = async {
        let response = work.await.unwrap_or_else(Into::into);
        tracing::info!(status = response.status().as_u16(), "request answered");
        response
    }
    .instrument(span)
    .await;
    record_status(&server, response.status().as_u16());
    metrics.observe(route, response.status().as_u16(), started.elapsed());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}

/// A JSON answer with `status`.
pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let mut response = warp::reply::json(body).into_response();
    *response.status_mut() = status;
    response
}

/// `GET /health`: the process answers.
pub fn health() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("health")
        .and(warp::get())
        .map(|| json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" })))
}

/// `GET /openapi.json`: the service's document.
pub fn openapi(
    document: &'static str,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("openapi.json").and(warp::get()).map(move || {
        let mut response = document.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    })
}

/// The answer of `GET /metrics`: `text` in the OpenMetrics format.
pub fn openmetrics(text: String) -> Response {
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[cfg(feature = "testing")]
/// The `(method, path)` of every route in `table`, as [`super::openapi::operations`] lists a
/// document's.
pub fn served(table: &[Route]) -> std::collections::BTreeSet<(String, String)> {
    table
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect()
}

/// The documented operations `api` does not take: each is sent (with `body` for the methods
/// that carry one, `{id}` as 1) and must be answered by its route, not as "no such route" (404
/// from the rejection handler) or 405. A store that cannot be reached answers 503: that counts
/// as answered.
#[cfg(feature = "testing")]
pub async fn unanswered<F>(doc: &serde_json::Value, api: &F, body: &str) -> Vec<String>
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + 'static,
{
    let mut missing = Vec::new();
    for (method, path) in super::openapi::operations(doc) {
        let mut request = warp::test::request()
            .method(&method.to_uppercase())
            .path(&path.replace("{id}", "1"))
            .header("content-type", "application/json");
        if method != "get" && method != "delete" {
            request = request.body(body);
        }
        // A route that streams never finishes its body: still answering after a while is an
        // answer.
        let Ok(response) = tokio::time::timeout(Duration::from_secs(5), request.reply(api)).await
        else {
            continue;
        };
        let status = response.status().as_u16();
        let text = String::from_utf8_lossy(response.body());
        if status == 405 || text.contains("No such route") {
            missing.push(format!("{method} {path}: {status} {text}"));
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_the_methods_served_at_the_path() {
        let routes = [
            ("post", "/todos"),
            ("get", "/todos"),
            ("patch", "/todos/{id}"),
            ("delete", "/todos/{id}"),
            ("get", "/todos/stream"),
            ("get", "/"),
        ];
        let cases = [
            ("/todos", "GET, POST", "a collection"),
            ("/todos/7", "DELETE, PATCH", "an item"),
            (
                "/todos/stream",
                "DELETE, GET, PATCH",
                "a fixed path beside a template",
            ),
            ("/", "GET", "the root"),
            ("/todos/", "GET, POST", "a trailing slash"),
            ("/nowhere", "", "no route"),
        ];
        for (path, allow, why) in cases {
            assert_eq!(allowed(&routes, path), allow, "{why}");
        }
    }

    #[test]
    fn a_usable_request_id_is_kept_and_any_other_replaced() {
        let longest = "x".repeat(128);
        for id in ["abc-123", "a", &longest] {
            let given = HeaderValue::from_str(id).expect("value");
            assert_eq!(usable_id(Some(&given)), id);
        }
        let replaced: Vec<HeaderValue> = vec![
            HeaderValue::from_static(""),
            HeaderValue::from_static("two words"),
            HeaderValue::from_bytes("café".as_bytes()).expect("value"),
            HeaderValue::from_bytes(b"\xff").expect("value"),
            HeaderValue::from_str(&"x".repeat(129)).expect("value"),
        ];
        for given in replaced.iter().map(Some).chain([None]) {
            let id = usable_id(given);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{given:?} gave {id}");
        }
    }
}

/// What warp rejected before a handler ran, in the terms both services answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// No route has this path: 404.
    NotFound,
    /// A route has this path, not this method: 405.
    MethodNotAllowed,
    /// A header or the query string did not parse: 400.
    BadRequest(String),
    /// warp's own body filters refused the content type: 415.
    UnsupportedMediaType(String),
    /// A browser request from an origin CORS does not allow: 403.
    Forbidden(String),
    /// Anything else is a bug in the routes: 500, the rejection in the log.
    Unhandled(String),
}

/// Classifies warp's own rejections; a service's custom rejections are its own to look for
/// first.
pub fn rejected(rejection: &Rejection) -> Rejected {
    if rejection.is_not_found() {
        Rejected::NotFound
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        Rejected::MethodNotAllowed
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        Rejected::BadRequest(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        Rejected::BadRequest(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        Rejected::BadRequest(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::UnsupportedMediaType>() {
        Rejected::UnsupportedMediaType(e.to_string())
    } else if let Some(e) = rejection.find::<warp::cors::CorsForbidden>() {
        Rejected::Forbidden(e.to_string())
    } else {
        Rejected::Unhandled(format!("{rejection:?}"))
    }
}
