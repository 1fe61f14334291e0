//! The OpenAPI 3.1 document served at `GET /openapi.json`. Each operation is declared once
//! below (method, path, parameters, answers); every schema is derived from the type the
//! handlers read or answer with (`Todo`, `TodoInput`, `TodoPatch`, `events::Envelope`, the
//! problem document), so a field added to a type is documented by the same change.
//! `tests/api/openapi.rs` holds the document against the routes served and every answer's
//! body against the schema documented for its route and status.

use crate::commands::Todo;
use crate::input::{TodoInput, TodoPatch};
use events::service::openapi as ops;
use events::service::problem::{FieldError, Problem};
use events::Envelope;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "command-service",
        description = "The write side of the todo CQRS pair: each write commits the todo and its \
                       event in one transaction; a relay publishes the events to RabbitMQ."
    ),
    paths(
        create,
        patch,
        put,
        delete,
        events,
        ready,
        ops::health,
        ops::metrics,
        ops::openapi
    ),
    components(schemas(Todo, TodoInput, TodoPatch, Envelope, Problem, FieldError))
)]
struct Document;

/// The document as JSON.
pub fn document() -> serde_json::Value {
    serde_json::to_value(Document::openapi()).expect("an OpenAPI document serializes")
}

const PROBLEM: &str = "application/problem+json";

/// `POST /todos`.
#[utoipa::path(post, path = "/todos", tag = "todos",
    params(
        ("Authorization" = Option<String>, Header, description = "Bearer <token>, when WRITE_TOKENS is set"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; the same key with the same request replays the first answer"),
        ("X-Request-Id" = Option<String>, Header, description = "Echoed back; becomes the event's correlation_id"),
    ),
    request_body(content = TodoInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = Todo, headers(
            ("Location" = String, description = "/todos/{id}"),
            ("ETag" = String, description = "The version, quoted"),
        )),
        (status = 400, description = "Malformed JSON or a bad header", body = Problem, content_type = PROBLEM),
        (status = 401, description = "WRITE_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A bearer token that is not one of WRITE_TOKENS", body = Problem, content_type = PROBLEM),
        (status = 413, description = "Body over MAX_BODY_BYTES", body = Problem, content_type = PROBLEM),
        (status = 415, description = "Not declared JSON", body = Problem, content_type = PROBLEM),
        (status = 422, description = "Invalid fields, or an Idempotency-Key reused with another request", body = Problem, content_type = PROBLEM),
        (status = 500, description = "Unexpected, e.g. a stored idempotent answer this version cannot read; nothing changed", body = Problem, content_type = PROBLEM),
        (status = 503, description = "PostgreSQL unavailable; nothing changed (Retry-After)", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn create() {}

/// `PATCH /todos/{id}`.
#[utoipa::path(patch, path = "/todos/{id}", tag = "todos",
    params(
        ("id" = i64, Path, description = "Todo id"),
        ("If-Match" = Option<String>, Header, description = "*, or quoted versions; compared strongly"),
        ("X-Request-Id" = Option<String>, Header),
    ),
    request_body(content = TodoPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The new state (the same when nothing changed)", body = Todo, headers(("ETag" = String))),
        (status = 400, body = Problem, content_type = PROBLEM),
        (status = 401, description = "WRITE_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A bearer token that is not one of WRITE_TOKENS", body = Problem, content_type = PROBLEM),
        (status = 404, body = Problem, content_type = PROBLEM),
        (status = 412, description = "If-Match does not match; current_version says where the todo is", body = Problem, content_type = PROBLEM),
        (status = 413, body = Problem, content_type = PROBLEM),
        (status = 415, body = Problem, content_type = PROBLEM),
        (status = 422, body = Problem, content_type = PROBLEM),
        (status = 503, description = "Unavailable now; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn patch() {}

/// `PUT /todos/{id}`.
#[utoipa::path(put, path = "/todos/{id}", tag = "todos",
    params(
        ("id" = i64, Path, description = "Todo id"),
        ("If-Match" = Option<String>, Header, description = "*, or quoted versions; compared strongly"),
        ("X-Request-Id" = Option<String>, Header),
    ),
    request_body(content = TodoInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The new state (the same when nothing changed)", body = Todo, headers(("ETag" = String))),
        (status = 400, body = Problem, content_type = PROBLEM),
        (status = 401, description = "WRITE_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A bearer token that is not one of WRITE_TOKENS", body = Problem, content_type = PROBLEM),
        (status = 404, body = Problem, content_type = PROBLEM),
        (status = 412, body = Problem, content_type = PROBLEM),
        (status = 413, body = Problem, content_type = PROBLEM),
        (status = 415, body = Problem, content_type = PROBLEM),
        (status = 422, body = Problem, content_type = PROBLEM),
        (status = 503, description = "Unavailable now; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn put() {}

/// `DELETE /todos/{id}`.
#[utoipa::path(delete, path = "/todos/{id}", tag = "todos",
    params(
        ("id" = i64, Path, description = "Todo id"),
        ("If-Match" = Option<String>, Header),
        ("X-Request-Id" = Option<String>, Header),
    ),
    responses(
        (status = 204, description = "Deleted", headers(("ETag" = String, description = "The delete's version"))),
        (status = 400, body = Problem, content_type = PROBLEM),
        (status = 401, description = "WRITE_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A bearer token that is not one of WRITE_TOKENS", body = Problem, content_type = PROBLEM),
        (status = 404, body = Problem, content_type = PROBLEM),
        (status = 412, body = Problem, content_type = PROBLEM),
        (status = 503, description = "Unavailable now; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn delete() {}

/// `GET /events`.
#[utoipa::path(get, path = "/events", tag = "events",
    params(
        ("after" = Option<i64>, Query, description = "Position to read after (default 0)"),
        ("limit" = Option<i64>, Query, description = "1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "Events oldest first", body = Vec<Envelope>, headers(
            ("Link" = String, description = "rel=\"next\": the next page, when this one is full"),
        )),
        (status = 400, body = Problem, content_type = PROBLEM),
        (status = 401, description = "WRITE_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A bearer token that is not one of WRITE_TOKENS", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Unavailable now; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn events() {}

/// `GET /ready`.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "PostgreSQL answers; the body reports RabbitMQ, the outbox backlog, the relay and the tasks", body = serde_json::Value),
        (status = 503, description = "PostgreSQL does not answer", body = serde_json::Value),
    ))]
#[allow(dead_code)]
fn ready() {}
