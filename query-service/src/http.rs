//! The read API: one function per route returning a filter, state injected with `with_state`,
//! errors answered by [`crate::error`]. Handlers never reject.

use crate::consumer::ConsumerStatus;
use crate::error::{handle_rejection, ApiError, FieldError};
use crate::metrics::Metrics;
use crate::store::{Cursor, ListQuery, SortKey, Store, Stored};
use base64::Engine;
use events::service::http::{self, request_id, Route};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

#[derive(Clone)]
pub struct State {
    pub store: Store,
    pub consumer: Arc<ConsumerStatus>,
    pub metrics: Arc<Metrics>,
    pub min_version_wait: Duration,
    /// The requests that may wait for a `?min_version=` at once (`MIN_VERSION_MAX_WAITERS`),
    /// shared by all of them: each waiter reads the store again and again, and a flood of them
    /// must not slow down the projection they wait for.
    pub min_version_waiters: Arc<tokio::sync::Semaphore>,
    /// What this process's consumer applied, batch by batch.
    pub applied: tokio::sync::broadcast::Sender<crate::consumer::Applied>,
    /// `/stats` counts, recomputed at most every [`COUNTS_MAX_AGE`].
    pub counts: CountsCache,
    /// The supervised consumer's state, for `/ready`.
    pub tasks: Arc<events::service::supervise::Supervisor>,
}

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
                    let counts = store.counts().await?;
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

fn with_state(state: State) -> impl Filter<Extract = (State,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Every route the service serves. `routes` serves exactly these, and the OpenAPI test checks
/// this list against `openapi.json` both ways.
pub fn route_table(state: State) -> Vec<Route> {
    let route = Route::new;
    vec![
        route("get", "/todos", list(state.clone()).boxed()),
        route("get", "/todos/{id}", get(state.clone()).boxed()),
        route("get", "/stats", stats(state.clone()).boxed()),
        route("get", "/health", health().boxed()),
        route("get", "/ready", ready(state.clone()).boxed()),
        route("get", "/metrics", metrics(state.clone()).boxed()),
        route("get", "/openapi.json", openapi().boxed()),
    ]
}

/// The OpenAPI 3 description of this service, served at `GET /openapi.json`.
pub static OPENAPI: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::openapi::document().to_string());

pub fn routes(state: State) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let metrics = state.metrics.http.clone();
    http::serve(route_table(state), metrics, handle_rejection)
}

fn query() -> impl Filter<Extract = (HashMap<String, String>,), Error = Rejection> + Clone {
    warp::query::<HashMap<String, String>>()
}

async fn answer(
    metrics: Arc<Metrics>,
    id: String,
    route: &'static str,
    work: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Result<Response, Infallible> {
    let work = async { work.await.unwrap_or_else(ApiError::into_response) };
    http::answer(&metrics.http, id, route, work).await
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let mut response = warp::reply::json(body).into_response();
    *response.status_mut() = status;
    response
}

fn unknown_params(params: &HashMap<String, String>, known: &[&str], errors: &mut Vec<FieldError>) {
    let mut unknown: Vec<&String> = params
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .collect();
    unknown.sort();
    for key in unknown {
        errors.push(FieldError::new(
            key.clone(),
            format!("unknown query parameter; known: {}", known.join(", ")),
        ));
    }
}

/// Parses `GET /todos` parameters: `completed=true|false`, `limit=1..=200`,
/// `sort=id|-id|created_at|-created_at|updated_at|-updated_at`, `cursor` from a `Link` header.
pub fn list_query(params: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let mut errors = Vec::new();
    unknown_params(
        params,
        &["completed", "limit", "cursor", "sort"],
        &mut errors,
    );
    let completed = match params.get("completed").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            errors.push(FieldError::new(
                "completed",
                format!("must be true or false, got {other:?}"),
            ));
            None
        }
    };
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.push(FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {MAX_LIMIT}, got {v:?}"),
                ));
                DEFAULT_LIMIT
            }
        },
    };
    let (sort, descending) = match params.get("sort").map(String::as_str) {
        None | Some("id") => (SortKey::Id, false),
        Some("-id") => (SortKey::Id, true),
        Some("created_at") => (SortKey::CreatedAt, false),
        Some("-created_at") => (SortKey::CreatedAt, true),
        Some("updated_at") => (SortKey::UpdatedAt, false),
        Some("-updated_at") => (SortKey::UpdatedAt, true),
        Some(other) => {
            errors.push(FieldError::new(
                "sort",
                format!("must be one of id, created_at, updated_at (prefix - for descending), got {other:?}"),
            ));
            (SortKey::Id, false)
        }
    };
    let after = match params.get("cursor") {
        None => None,
        // A cursor holds the sort value its page ended at: one made for id order has none,
        // one made for a time order has that time.
        Some(raw) => match decode_cursor(raw) {
            Some(c) if c.v.is_some() == (sort != SortKey::Id) => Some(c),
            Some(_) => {
                errors.push(FieldError::new(
                    "cursor",
                    "was issued for another sort; start again without it",
                ));
                None
            }
            None => {
                errors.push(FieldError::new(
                    "cursor",
                    "is not a cursor this service issued",
                ));
                None
            }
        },
    };
    if errors.is_empty() {
        Ok(ListQuery {
            completed,
            sort,
            descending,
            limit,
            after,
        })
    } else {
        Err(ApiError::InvalidQuery(errors))
    }
}

/// The `cursor` parameter of a next link.
pub fn encode_cursor(c: &Cursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(c).expect("a cursor (numbers and text) always serializes"))
}

/// The largest id a cursor may hold: far above any todo id, far from overflowing the windows
/// a page in id order walks.
const CURSOR_MAX_ID: i64 = 1 << 62;

fn decode_cursor(raw: &str) -> Option<Cursor> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()?;
    let cursor: Cursor = serde_json::from_slice(&bytes).ok()?;
    (0..=CURSOR_MAX_ID).contains(&cursor.id).then_some(cursor)
}

fn next_link(q: &ListQuery, cursor: &Cursor) -> String {
    let cursor = encode_cursor(cursor);
    let sort = match (q.sort, q.descending) {
        (SortKey::Id, false) => "id",
        (SortKey::Id, true) => "-id",
        (SortKey::CreatedAt, false) => "created_at",
        (SortKey::CreatedAt, true) => "-created_at",
        (SortKey::UpdatedAt, false) => "updated_at",
        (SortKey::UpdatedAt, true) => "-updated_at",
    };
    let mut url = format!("/todos?limit={}&sort={sort}", q.limit);
    if let Some(c) = q.completed {
        url.push_str(&format!("&completed={c}"));
    }
    format!("<{url}&cursor={cursor}>; rel=\"next\"")
}

fn list(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos")
        .and(warp::get())
        .and(request_id())
        .and(query())
        .and(with_state(state))
        .and_then(
            |rid: String, params: HashMap<String, String>, state: State| async move {
                answer(state.metrics.clone(), rid, "GET /todos", async move {
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

/// Parses `?min_version=N` for `GET /todos/{id}`.
pub fn min_version(params: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    let mut errors = Vec::new();
    unknown_params(params, &["min_version"], &mut errors);
    let v = match params.get("min_version") {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                errors.push(FieldError::new(
                    "min_version",
                    format!("must be a positive integer, got {v:?}"),
                ));
                None
            }
        },
    };
    if errors.is_empty() {
        Ok(v)
    } else {
        Err(ApiError::InvalidQuery(errors))
    }
}

fn get(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos" / i64)
        .and(warp::get())
        .and(request_id())
        .and(query())
        .and(with_state(state))
        .and_then(
            |id: i64, rid: String, params: HashMap<String, String>, state: State| async move {
                answer(state.metrics.clone(), rid, "GET /todos/{id}", async move {
                    if id <= 0 {
                        return Err(ApiError::NotFound(format!(
                            "Todo {id} does not exist; ids are positive."
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

fn stats(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("stats")
        .and(warp::get())
        .and(request_id())
        .and(with_state(state))
        .and_then(|rid: String, state: State| async move {
            answer(state.metrics.clone(), rid, "GET /stats", async move {
                let projection = state.store.projection_stats().await?;
                let (total, completed) = state.counts.get(&state.store).await?;
                let stats = crate::store::Stats {
                    total,
                    completed,
                    pending: total.saturating_sub(completed),
                    projection,
                };
                Ok(json_response(StatusCode::OK, &stats))
            })
            .await
        })
}

fn metrics(state: State) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state))
        .map(|state: State| {
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
            let mongo_up = matches!(
                tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await,
                Ok(Ok(()))
            );
            let consumer_up = state.consumer.connected.load(Ordering::Relaxed);
            // Reads need MongoDB only. Without RabbitMQ the answers grow stale but stay
            // correct for the version they report, so the broker is reported, not required.
            let status = if mongo_up {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(
                status,
                &serde_json::json!({
                    "status": if mongo_up { "ready" } else { "not ready" },
                    "checks": {
                        "mongodb": if mongo_up { "up" } else { "down" },
                        "rabbitmq": if consumer_up { "up" } else { "down" },
                    },
                    "tasks": state.tasks.report(),
                }),
            )
        })
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
            store,
            consumer: Arc::default(),
            metrics: Arc::default(),
            min_version_wait: Duration::from_millis(100),
            min_version_waiters: Arc::new(tokio::sync::Semaphore::new(1)),
            applied: tokio::sync::broadcast::channel(1).0,
            counts: CountsCache::default(),
            tasks: Arc::default(),
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

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn list_query_defaults() {
        let q = list_query(&params(&[])).expect("defaults");
        assert_eq!(q.limit, DEFAULT_LIMIT);
        assert_eq!(
            (q.sort, q.descending, q.completed),
            (SortKey::Id, false, None)
        );
        let q = list_query(&params(&[
            ("completed", "true"),
            ("sort", "-created_at"),
            ("limit", "5"),
        ]))
        .expect("given");
        assert_eq!(
            (q.sort, q.descending, q.completed, q.limit),
            (SortKey::CreatedAt, true, Some(true), 5)
        );
    }

    #[test]
    fn bad_list_parameters_are_named() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "completed not a boolean",
                &[("completed", "yes")],
                "completed",
            ),
            ("limit zero", &[("limit", "0")], "limit"),
            ("limit too large", &[("limit", "201")], "limit"),
            ("limit not a number", &[("limit", "ten")], "limit"),
            ("unknown sort", &[("sort", "title")], "sort"),
            ("garbage cursor", &[("cursor", "%%%")], "cursor"),
            ("unknown parameter", &[("page", "2")], "page"),
        ];
        for (why, pairs, field) in cases {
            match list_query(&params(pairs)) {
                Err(ApiError::InvalidQuery(errors)) => assert_eq!(errors[0].field, *field, "{why}"),
                other => panic!("{why}: expected an invalid query, got {other:?}"),
            }
        }
    }

    #[test]
    fn cursors_round_trip() {
        let c = Cursor {
            v: Some("2026-11-22T10:00:00.000000Z".into()),
            id: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        assert_eq!(decode_cursor("bm90IGpzb24"), None);
    }

    #[test]
    fn a_cursor_for_another_sort_or_out_of_range_is_refused() {
        let by_id = encode_cursor(&Cursor { v: None, id: 7 });
        let by_time = encode_cursor(&Cursor {
            v: Some("2026-11-22T10:00:00.000000Z".into()),
            id: 7,
        });
        assert!(list_query(&params(&[("cursor", &by_id)])).is_ok());
        assert!(list_query(&params(&[("cursor", &by_time), ("sort", "-updated_at")])).is_ok());
        for (cursor, sort) in [(&by_id, "created_at"), (&by_time, "id"), (&by_time, "-id")] {
            assert!(
                matches!(
                    list_query(&params(&[("cursor", cursor), ("sort", sort)])),
                    Err(ApiError::InvalidQuery(_))
                ),
                "{sort}"
            );
        }
        for id in [-1, i64::MAX, CURSOR_MAX_ID + 1] {
            let raw = encode_cursor(&Cursor { v: None, id });
            assert_eq!(decode_cursor(&raw), None, "id {id}");
        }
    }

    #[test]
    fn min_version_must_be_positive() {
        assert_eq!(
            min_version(&params(&[("min_version", "3")])).expect("ok"),
            Some(3)
        );
        assert_eq!(min_version(&params(&[])).expect("ok"), None);
        for bad in ["0", "-1", "x"] {
            assert!(
                min_version(&params(&[("min_version", bad)])).is_err(),
                "{bad}"
            );
        }
    }
}
