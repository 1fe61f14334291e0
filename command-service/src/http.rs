//! The HTTP API: one function per route returning a filter, state injected with `with_state`,
//! and every error answered by [`crate::error`]. Handlers never reject: once a route matched,
//! the handler answers, so warp's rejections only ever mean "no such route", "wrong method" or
//! a malformed header or query string.

use crate::error::{handle_rejection, ApiError};
use crate::input;
use crate::metrics::Metrics;
use crate::relay::RelayStatus;
use crate::todos::{Change, Commands, Created, Idempotency, Precondition, Todo};
use bytes::{Buf, Bytes, BytesMut};
use events::service::http::{self, request_id, Route};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

const FEED_DEFAULT_LIMIT: i64 = 100;
const FEED_MAX_LIMIT: i64 = 1000;

#[derive(Clone)]
pub struct State {
    pub commands: Commands,
    pub relay: Arc<RelayStatus>,
    pub tasks: Arc<events::service::supervise::Supervisor>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: u64,
}

fn with_state(state: State) -> impl Filter<Extract = (State,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Every route the service serves. `routes` serves exactly these, and the OpenAPI test checks
/// this list against `openapi.json` both ways.
pub fn route_table(state: State) -> Vec<Route> {
    let route = Route::new;
    vec![
        route("post", "/todos", create(state.clone()).boxed()),
        route("patch", "/todos/{id}", patch(state.clone()).boxed()),
        route("put", "/todos/{id}", put(state.clone()).boxed()),
        route("delete", "/todos/{id}", delete(state.clone()).boxed()),
        route("get", "/events", feed(state.clone()).boxed()),
        route("get", "/health", health().boxed()),
        route("get", "/ready", ready(state.clone()).boxed()),
        route("get", "/metrics", metrics(state.clone()).boxed()),
        route("get", "/openapi.json", openapi().boxed()),
    ]
}

/// The OpenAPI 3 description of this service, served at `GET /openapi.json`.
pub static OPENAPI: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::openapi::document().to_string());

/// All routes, with rejections answered as problem+json.
pub fn routes(state: State) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let metrics = state.metrics.http.clone();
    http::serve(route_table(state), metrics, handle_rejection)
}

/// Reads a JSON request body: 415 unless the content type is JSON, 413 past the limit (by
/// `Content-Length` when given, else while reading a chunked body).
fn json_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(
            move |content_type: Option<String>, length: Option<u64>, body| async move {
                read_json_body(content_type, length, body, limit)
                    .await
                    .map_err(warp::reject::custom)
            },
        )
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn read_json_body<S, B>(
    content_type: Option<String>,
    length: Option<u64>,
    body: S,
    limit: u64,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    match content_type {
        Some(ct) if is_json(&ct) => {}
        Some(ct) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type must be application/json, got {ct}."
            )))
        }
        None => {
            return Err(ApiError::UnsupportedMediaType(
                "Content-Type must be application/json; none was given.".into(),
            ))
        }
    }
    if length.is_some_and(|l| l > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| ApiError::BadRequest(format!("unreadable body: {e}")))?;
        if buf.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let mut response = warp::reply::json(body).into_response();
    *response.status_mut() = status;
    response
}

fn todo_response(status: StatusCode, todo: &Todo) -> Response {
    let mut response = json_response(status, todo);
    set_etag(&mut response, todo.version);
    response
}

fn set_etag(response: &mut Response, version: i64) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
}

/// Answers a handler's result, errors included, with the request id attached, and counts it.
async fn answer(
    metrics: Arc<Metrics>,
    id: String,
    route: &'static str,
    work: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, Infallible> {
    let work = async { work.await.unwrap_or_else(ApiError::into_response) };
    http::answer(&metrics.http, id, route, work).await
}

fn todo_id(id: i64) -> Result<i64, ApiError> {
    if id > 0 {
        Ok(id)
    } else {
        Err(ApiError::NotFound(format!(
            "Todo {id} does not exist; ids are positive."
        )))
    }
}

/// Parses `If-Match`: `*`, or a list of entity tags. It compares strongly (RFC 9110 13.1.1), so
/// only strong tags `"N"` can match; a weak `W/"N"` is well-formed but matches nothing, as does
/// a tag that is not a version (412). A malformed header is 400.
pub fn precondition(raw: Option<String>) -> Result<Option<Precondition>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let raw = raw.trim();
    if raw == "*" {
        return Ok(Some(Precondition::Any));
    }
    let mut versions = Vec::new();
    for tag in raw.split(',').map(str::trim) {
        let (weak, opaque) = match tag.strip_prefix("W/") {
            Some(opaque) => (true, opaque),
            None => (false, tag),
        };
        let inner = opaque
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "If-Match must be * or quoted entity tags such as \"3\"; got {raw}."
                ))
            })?;
        if weak {
            continue;
        }
        if let Ok(v) = inner.parse::<i64>() {
            versions.push(v);
        }
    }
    Ok(Some(Precondition::Versions(versions)))
}

fn idempotency(
    raw: Option<String>,
    input: &input::TodoInput,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(key) = raw else { return Ok(None) };
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 characters.".into(),
        ));
    }
    Ok(Some(Idempotency {
        key,
        request_hash: request_hash(input),
    }))
}

/// The hash a repeated `Idempotency-Key` request is compared by: that of the validated input,
/// never of the JSON text. Two bodies that ask for the same todo (keys in another order, other
/// spacing, a title validation trims, a description null or left out) hash the same, whatever
/// features `serde_json` was built with.
pub fn request_hash(input: &input::TodoInput) -> String {
    /// A struct serializes its fields in declaration order: a fixed encoding.
    #[derive(serde::Serialize)]
    struct Canonical<'a> {
        title: &'a str,
        description: Option<&'a str>,
        completed: bool,
    }
    let canonical = serde_json::to_vec(&Canonical {
        title: &input.title,
        description: input.description.as_deref(),
        completed: input.completed,
    })
    .unwrap_or_default();
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn create(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos")
        .and(warp::post())
        .and(request_id())
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(json_body(state.max_body_bytes))
        .and(with_state(state))
        .and_then(
            |id: String, key: Option<String>, body: Bytes, state: State| async move {
                let correlation = id.clone();
                answer(state.metrics.clone(), id, "POST /todos", async move {
                    let input = input::todo_input(&body)?;
                    let idem = idempotency(key, &input)?;
                    match state.commands.create(input, idem, &correlation).await? {
                        Created::New(todo) => {
                            let mut response = todo_response(StatusCode::CREATED, &todo);
                            location(&mut response, todo.id);
                            Ok(response)
                        }
                        Created::Replayed { status, body } => {
                            let status =
                                StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
                            let mut response = json_response(status, &body);
                            if let Some(id) = body.get("id").and_then(|v| v.as_i64()) {
                                location(&mut response, id);
                            }
                            if let Some(v) = body.get("version").and_then(|v| v.as_i64()) {
                                set_etag(&mut response, v);
                            }
                            response
                                .headers_mut()
                                .insert("idempotent-replayed", HeaderValue::from_static("true"));
                            Ok(response)
                        }
                    }
                })
                .await
            },
        )
}

fn location(response: &mut Response, id: i64) {
    if let Ok(v) = HeaderValue::from_str(&format!("/todos/{id}")) {
        response.headers_mut().insert(header::LOCATION, v);
    }
}

fn update_route(
    state: State,
    method: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
    route: &'static str,
    parse: fn(&[u8]) -> Result<Change, ApiError>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos" / i64)
        .and(method)
        .and(request_id())
        .and(warp::header::optional::<String>("if-match"))
        .and(json_body(state.max_body_bytes))
        .and(with_state(state))
        .and_then(move |id: i64, rid: String, if_match: Option<String>, body: Bytes, state: State| async move {
            let correlation = rid.clone();
            answer(state.metrics.clone(), rid, route, async move {
                let id = todo_id(id)?;
                let change = parse(&body)?;
                let precondition = precondition(if_match)?;
                let todo = state.commands.update(id, change, precondition, &correlation).await?;
                Ok(todo_response(StatusCode::OK, &todo))
            })
            .await
        })
}

fn patch(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    update_route(state, warp::patch(), "PATCH /todos/{id}", |b| {
        input::todo_patch(b).map(Change::Patch)
    })
}

fn put(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    update_route(state, warp::put(), "PUT /todos/{id}", |b| {
        input::todo_input(b).map(Change::Put)
    })
}

fn delete(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos" / i64)
        .and(warp::delete())
        .and(request_id())
        .and(warp::header::optional::<String>("if-match"))
        .and(with_state(state))
        .and_then(
            |id: i64, rid: String, if_match: Option<String>, state: State| async move {
                let correlation = rid.clone();
                answer(
                    state.metrics.clone(),
                    rid,
                    "DELETE /todos/{id}",
                    async move {
                        let id = todo_id(id)?;
                        let precondition = precondition(if_match)?;
                        let version = state
                            .commands
                            .delete(id, precondition, &correlation)
                            .await?;
                        let mut response = StatusCode::NO_CONTENT.into_response();
                        set_etag(&mut response, version);
                        Ok(response)
                    },
                )
                .await
            },
        )
}

#[derive(Debug, PartialEq, Eq)]
struct FeedQuery {
    after: i64,
    limit: i64,
}

fn feed_query(params: &HashMap<String, String>) -> Result<FeedQuery, ApiError> {
    let mut errors = Vec::new();
    for key in params.keys().filter(|k| *k != "after" && *k != "limit") {
        errors.push(crate::error::FieldError::new(
            key.clone(),
            "unknown query parameter",
        ));
    }
    let after = match params.get("after") {
        None => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                errors.push(crate::error::FieldError::new(
                    "after",
                    format!("must be a non-negative integer, got {v:?}"),
                ));
                0
            }
        },
    };
    let limit = match params.get("limit") {
        None => FEED_DEFAULT_LIMIT,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=FEED_MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.push(crate::error::FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {FEED_MAX_LIMIT}, got {v:?}"),
                ));
                0
            }
        },
    };
    if errors.is_empty() {
        Ok(FeedQuery { after, limit })
    } else {
        Err(ApiError::InvalidQuery(errors))
    }
}

fn feed(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("events")
        .and(warp::get())
        .and(request_id())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_state(state))
        .and_then(
            |rid: String, params: HashMap<String, String>, state: State| async move {
                answer(state.metrics.clone(), rid, "GET /events", async move {
                    let q = feed_query(&params)?;
                    let events = state.commands.feed(q.after, q.limit).await?;
                    let mut response = json_response(StatusCode::OK, &events);
                    if events.len() as i64 == q.limit {
                        if let Some(last) = events.last() {
                            let link = format!(
                                "</events?after={}&limit={}>; rel=\"next\"",
                                last.position, q.limit
                            );
                            if let Ok(v) = HeaderValue::from_str(&link) {
                                response.headers_mut().insert(header::LINK, v);
                            }
                        }
                    }
                    Ok(response)
                })
                .await
            },
        )
}

fn metrics(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: State| async move {
            if let Ok(Ok(outbox)) =
                tokio::time::timeout(Duration::from_secs(2), state.commands.outbox()).await
            {
                state.metrics.outbox_backlog.set(outbox.backlog);
            }
            let mut response = state.metrics.render().into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        })
}

fn openapi() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("openapi.json").and(warp::get()).map(|| {
        let mut response = OPENAPI.as_str().into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    })
}

fn health() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("health")
        .and(warp::get())
        .map(|| json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" })))
}

fn ready(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("ready")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: State| async move {
            let timeout = Duration::from_secs(2);
            let postgres = tokio::time::timeout(timeout, state.commands.ping()).await;
            let postgres_up = matches!(postgres, Ok(Ok(())));
            let outbox = if postgres_up {
                tokio::time::timeout(timeout, state.commands.outbox())
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            let broker_up = state.relay.broker_connected.load(Ordering::Relaxed);
            // Writes need PostgreSQL only: with RabbitMQ away they are still accepted and kept
            // in the outbox, so the broker's state is reported but does not make us unready.
            let status = if postgres_up {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(
                status,
                &serde_json::json!({
                    "status": if postgres_up { "ready" } else { "not ready" },
                    "checks": {
                        "postgres": if postgres_up { "up" } else { "down" },
                        "rabbitmq": if broker_up { "up" } else { "down" },
                        "outbox_backlog": outbox.as_ref().map(|o| o.backlog),
                        "relay_failed_rounds": outbox.as_ref().map(|o| o.publish_attempts),
                        "relay_last_error": outbox.as_ref().and_then(|o| o.last_error.clone()),
                    },
                    "tasks": state.tasks.report(),
                }),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State whose database cannot be reached: routing and error mapping work without it.
    fn offline_state() -> State {
        State {
            commands: Commands::new(
                crate::db::pool(
                    "postgres://nobody:none@127.0.0.1:9/none",
                    1,
                    crate::settings::Settings::from_vars(Vec::new())
                        .expect("defaults")
                        .database_limits(),
                )
                .expect("pool"),
                crate::todos::Wake::default(),
                24,
            ),
            relay: Arc::default(),
            tasks: Arc::default(),
            metrics: Arc::default(),
            max_body_bytes: 1024,
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
        let documented: std::collections::BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .expect("operations")
                    .keys()
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect();
        let served: std::collections::BTreeSet<(String, String)> = route_table(offline_state())
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(served, documented, "served routes vs openapi.json");

        let api = routes(offline_state());
        for (method, path) in &documented {
            let concrete = path.replace("{id}", "1");
            let mut request = warp::test::request()
                .method(&method.to_uppercase())
                .path(&concrete)
                .header("content-type", "application/json");
            if method != "get" && method != "delete" {
                request = request.body(r#"{"title":"t"}"#);
            }
            let response = request.reply(&api).await;
            let status = response.status().as_u16();
            let body = String::from_utf8_lossy(response.body()).to_string();
            assert!(
                status != 405 && !body.contains("No such route"),
                "{method} {path}: {status} {body}"
            );
        }
    }

    #[test]
    fn if_match_forms() {
        let cases: &[(&str, Option<Precondition>)] = &[
            ("*", Some(Precondition::Any)),
            ("\"3\"", Some(Precondition::Versions(vec![3]))),
            ("W/\"3\"", Some(Precondition::Versions(vec![]))),
            ("W/\"3\", \"4\"", Some(Precondition::Versions(vec![4]))),
            ("\"1\", \"2\"", Some(Precondition::Versions(vec![1, 2]))),
            ("\"abc\"", Some(Precondition::Versions(vec![]))),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                &precondition(Some(raw.to_string())).expect(raw),
                expected,
                "If-Match: {raw}"
            );
        }
        for malformed in ["3", "W/3", "\"3\", 4"] {
            assert!(
                matches!(
                    precondition(Some(malformed.into())),
                    Err(ApiError::BadRequest(_))
                ),
                "If-Match: {malformed}"
            );
        }
        assert_eq!(precondition(None).expect("absent"), None);
    }

    #[test]
    fn the_request_hash_is_that_of_the_validated_input() {
        let hash = |body: &str| request_hash(&input::todo_input(body.as_bytes()).expect(body));
        let first = hash(r#"{"title":"a","completed":true}"#);
        for same in [
            r#"{"completed":true,"title":"a"}"#,
            r#"{ "title" : " a ", "completed" : true, "description" : null }"#,
        ] {
            assert_eq!(hash(same), first, "{same}");
        }
        for other in [
            r#"{"title":"a"}"#,
            r#"{"title":"b","completed":true}"#,
            r#"{"title":"a","completed":true,"description":""}"#,
        ] {
            assert_ne!(hash(other), first, "{other}");
        }
    }

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in ["text/plain", "application/x-www-form-urlencoded", "json"] {
            assert!(!is_json(ct), "{ct}");
        }
    }

    #[test]
    fn feed_query_defaults_and_errors() {
        let q = |pairs: &[(&str, &str)]| {
            feed_query(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            q(&[]).expect("defaults"),
            FeedQuery {
                after: 0,
                limit: 100
            }
        );
        assert_eq!(
            q(&[("after", "7"), ("limit", "5")]).expect("given"),
            FeedQuery { after: 7, limit: 5 }
        );
        for bad in [
            vec![("after", "-1")],
            vec![("after", "x")],
            vec![("limit", "0")],
            vec![("limit", "1001")],
            vec![("cursor", "1")],
        ] {
            assert!(q(&bad).is_err(), "{bad:?}");
        }
    }
}
