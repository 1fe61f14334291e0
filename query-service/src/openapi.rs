//! The OpenAPI 3.1 document served at `GET /openapi.json`. Each operation is declared once
//! below (method, path, parameters, answers); every schema is derived from the type the
//! handlers answer with (`Todo`, `Stats`, the problem document), so a field added to a type is
//! documented by the same change. `tests/api/openapi.rs` holds the document against the routes
//! served and every answer's body against the schema documented for its route and status.

use crate::http::operator::{DeadLetterList, DeadLetterView, PurgeAnswer, RedriveAnswer};
use crate::lag::{Lag, ProjectionState};
use crate::store::{ProjectionStats, ReadModelStats, Stats, Todo};
use events::service::openapi as ops;
use events::service::problem::{FieldError, Problem};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "query-service",
        description = "The read side of the todo CQRS pair: a MongoDB read model the projection \
                       keeps from command-service's events, served on its own port."
    ),
    paths(
        page,
        list,
        get,
        stream,
        stats,
        dead_letters,
        redrive,
        purge,
        ready,
        ops::health,
        ops::metrics,
        ops::openapi
    ),
    components(schemas(
        Todo,
        Stats,
        ProjectionStats,
        ReadModelStats,
        Lag,
        ProjectionState,
        Problem,
        FieldError,
        DeadLetterList,
        DeadLetterView,
        RedriveAnswer,
        PurgeAnswer
    ))
)]
struct Document;

/// The document as JSON: what utoipa derives from the types, with the rules the service
/// holds requests to written from the constants that hold them.
pub fn document() -> serde_json::Value {
    use serde_json::json;
    let mut doc =
        serde_json::to_value(Document::openapi()).expect("an OpenAPI document serializes");
    for field in ["id", "version"] {
        *ops::property(&mut doc, "Todo", field) = ops::id_schema();
    }
    let position = json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": events::limits::MAX_ID});
    let constraints = [
        (
            "limit",
            json!({"type": "integer", "minimum": 1, "maximum": crate::http::MAX_LIMIT}),
        ),
        (
            "sort",
            json!({"type": "string", "enum": crate::http::SORTS}),
        ),
        ("completed", json!({"type": "boolean"})),
        ("overdue", json!({"type": "boolean", "enum": [true]})),
        ("all", json!({"type": "boolean", "enum": [true]})),
        ("confirm", json!({"type": "boolean", "enum": [true]})),
        (
            "cursor",
            json!({"type": "string", "pattern": crate::http::CURSOR_PATTERN}),
        ),
        ("min_version", ops::id_schema()),
        ("Last-Event-ID", position),
    ];
    for (name, schema) in constraints {
        for parameter in ops::parameters_named(&mut doc, name) {
            parameter["schema"] = schema.clone();
        }
    }
    ops::finish(&mut doc);
    doc
}

const PROBLEM: &str = "application/problem+json";

/// `GET /todos`.
#[utoipa::path(get, path = "/todos", tag = "todos",
    params(
        ("completed" = Option<bool>, Query, description = "Only done (true) or open (false) todos"),
        ("overdue" = Option<bool>, Query, description = "true: only the open todos whose due date is past (at the first page's time), in due-date order (sort beside it gives the direction only: a - prefix for descending); with completed=true the list is empty"),
        ("sort" = Option<String>, Query, description = "id (default), created_at, updated_at, due_at (the todos with a due date only); a - prefix for descending"),
        ("limit" = Option<i64>, Query, description = "1 to 200 (default 50)"),
        ("cursor" = Option<String>, Query, description = "From the previous page's Link rel=next: `<sort>~<filter: all|true|false|overdue.<time>>~<id>[~<time>]`. It continues the listing it was issued for, in its order and filter: sort and completed given beside it are not read. Another form is 400"),
    ),
    responses(
        (status = 200, description = "Live todos", body = Vec<Todo>, headers(
            ("Link" = String, description = "rel=\"next\": the next page, while more follow"),
        )),
        (status = 400, description = "A bad parameter, each named", body = Problem, content_type = PROBLEM),
        (status = 500, body = Problem, content_type = PROBLEM),
        (status = 503, description = "Unavailable now; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn list() {}

/// `GET /todos/{id}`.
#[utoipa::path(get, path = "/todos/{id}", tag = "todos",
    params(
        ("id" = i64, Path, description = "Todo id, 1 to 2^53 - 1; any other is 404"),
        ("min_version" = Option<i64>, Query, description = "1 to 2^53 - 1: wait up to MIN_VERSION_WAIT_MS for this version (read your writes); not there by then, or MIN_VERSION_MAX_WAITERS requests already waiting, is 503 read-model-behind"),
    ),
    responses(
        (status = 200, description = "The todo", body = Todo, headers(("ETag" = String))),
        (status = 400, body = Problem, content_type = PROBLEM),
        (status = 404, description = "Never created, or deleted", body = Problem, content_type = PROBLEM),
        (status = 500, body = Problem, content_type = PROBLEM),
        (status = 503, description = "MongoDB unavailable, or read-model-behind: min_version not reached within MIN_VERSION_WAIT_MS, or MIN_VERSION_MAX_WAITERS requests already waiting", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn get() {}

/// `GET /`.
#[utoipa::path(get, path = "/", tag = "page",
    responses((status = 200, description = "The live page: the read model, its stream, its figures, and a form writing through command-service", body = String, content_type = "text/html")))]
#[allow(dead_code)]
fn page() {}

/// `GET /todos/stream`.
#[utoipa::path(get, path = "/todos/stream", tag = "todos",
    params(
        ("Last-Event-ID" = Option<i64>, Header, description = "The last id received (a position, 0 to 2^53 - 1; empty is none): first what the read model holds past it; another value is 400"),
    ),
    responses(
        (status = 200, description = "Server-sent events of every replica's changes: `todo` or `deleted`, id = the log position, data = {id, version, position, deleted, todo, lag_ms}; a replay past STREAM_REPLAY_MAX_BYTES or STREAM_REPLAY_MAX_MS ends with `reload` (data: {reason}: read the list again); `dropped` (data: {reason}) before a client more than STREAM_BUFFER_BYTES behind, or told to reconnect, is disconnected", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A Last-Event-ID that is not a position", body = Problem, content_type = PROBLEM),
        (status = 429, description = "This address has STREAM_MAX_PER_PEER streams open already", body = Problem, content_type = PROBLEM),
        (status = 500, body = Problem, content_type = PROBLEM),
        (status = 503, description = "Every stream slot (STREAM_MAX_SUBSCRIBERS) is taken, or MongoDB unavailable", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String))),
    ))]
#[allow(dead_code)]
fn stream() {}

/// `GET /stats`.
#[utoipa::path(get, path = "/stats", tag = "operations",
    responses(
        (status = 200, description = "Counts (at most a second old) and the projection's figures", body = Stats),
        (status = 500, body = Problem, content_type = PROBLEM),
        (status = 503, description = "Unavailable now; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    ))]
#[allow(dead_code)]
fn stats() {}

/// `GET /dead-letters`.
#[utoipa::path(get, path = "/dead-letters", tag = "operations",
    params(
        ("Authorization" = Option<String>, Header, description = "Bearer <one of OPERATOR_TOKENS>"),
    ),
    responses(
        (status = 200, description = "The dead-letter queue's messages (at most 1,000), each with its refusal; all stay there", body = DeadLetterList),
        (status = 400, description = "A query parameter (it takes none)", body = Problem, content_type = PROBLEM),
        (status = 401, description = "OPERATOR_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A token not in OPERATOR_TOKENS, or OPERATOR_TOKENS unset (the routes are off)", body = Problem, content_type = PROBLEM),
        (status = 500, body = Problem, content_type = PROBLEM),
        (status = 503, description = "RabbitMQ did not answer; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    ))]
#[allow(dead_code)]
fn dead_letters() {}

/// `POST /dead-letters/redrive`.
#[utoipa::path(post, path = "/dead-letters/redrive", tag = "operations",
    params(
        ("Authorization" = Option<String>, Header, description = "Bearer <one of OPERATOR_TOKENS>"),
        ("all" = Option<bool>, Query, description = "true: every dead letter (not with event_ids)"),
        ("event_ids" = Option<String>, Query, description = "1 to 1,000 event ids, separated by commas (not with all)"),
    ),
    responses(
        (status = 200, description = "Those sent back to the live queue (each confirmed by the broker before it left the dead-letter queue), those kept, the ids not found", body = RedriveAnswer),
        (status = 400, description = "Neither all=true nor event_ids, both, or another parameter", body = Problem, content_type = PROBLEM),
        (status = 401, description = "OPERATOR_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A token not in OPERATOR_TOKENS, or OPERATOR_TOKENS unset", body = Problem, content_type = PROBLEM),
        (status = 500, body = Problem, content_type = PROBLEM),
        (status = 503, description = "RabbitMQ did not answer or refused the broker user (see OPERATOR_AMQP_URL); what it confirmed was redriven, the rest stays", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    ))]
#[allow(dead_code)]
fn redrive() {}

/// `POST /dead-letters/purge`.
#[utoipa::path(post, path = "/dead-letters/purge", tag = "operations",
    params(
        ("Authorization" = Option<String>, Header, description = "Bearer <one of OPERATOR_TOKENS>"),
        ("confirm" = Option<bool>, Query, description = "true, or nothing is dropped (400)"),
    ),
    responses(
        (status = 200, description = "How many dead letters were dropped", body = PurgeAnswer),
        (status = 400, description = "No confirm=true, or another parameter", body = Problem, content_type = PROBLEM),
        (status = 401, description = "OPERATOR_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A token not in OPERATOR_TOKENS, or OPERATOR_TOKENS unset", body = Problem, content_type = PROBLEM),
        (status = 500, body = Problem, content_type = PROBLEM),
        (status = 503, description = "RabbitMQ did not answer; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    ))]
#[allow(dead_code)]
fn purge() {}

/// `GET /ready`.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "MongoDB answers; the body reports RabbitMQ and the tasks", body = serde_json::Value),
        (status = 503, description = "MongoDB does not answer", body = serde_json::Value),
    ))]
#[allow(dead_code)]
fn ready() {}
