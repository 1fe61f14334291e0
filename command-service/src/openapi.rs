//! The OpenAPI 3.1 document served at `GET /openapi.json`. Each operation is declared once
//! below (method, path, parameters, answers); every schema is derived from the type the
//! handlers read or answer with (`Todo`, `TodoInput`, `TodoPatch`, `events::Envelope`, the
//! problem document), so a field added to a type is documented by the same change.
//! `tests/api/openapi.rs` holds the document against the routes served and every answer's
//! body against the schema documented for its route and status.

use crate::commands::{Erased, Todo};
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
        erase,
        events,
        ready,
        ops::health,
        ops::metrics,
        ops::openapi
    ),
    components(schemas(Todo, Erased, TodoInput, TodoPatch, Envelope, Problem, FieldError))
)]
struct Document;

/// The document as JSON: what utoipa derives from the types, with the rules the service
/// holds requests to written from the constants that hold them (`events::limits`,
/// `events::service::openapi`).
pub fn document() -> serde_json::Value {
    use events::limits::{DESCRIPTION_MAX_CHARS, DESCRIPTION_PATTERN, TITLE_PATTERN};
    use serde_json::json;
    let mut doc =
        serde_json::to_value(Document::openapi()).expect("an OpenAPI document serializes");
    for schema in ["TodoInput", "TodoPatch"] {
        ops::merge(
            ops::property(&mut doc, schema, "title"),
            json!({"type": "string", "pattern": TITLE_PATTERN,
                   "description": "Trimmed, then 1 to 200 characters, no control character, not only whitespace and invisible characters"}),
        );
        ops::merge(
            ops::property(&mut doc, schema, "description"),
            json!({"type": ["string", "null"], "maxLength": DESCRIPTION_MAX_CHARS, "pattern": DESCRIPTION_PATTERN}),
        );
        ops::merge(
            ops::property(&mut doc, schema, "completed"),
            json!({"type": "boolean"}),
        );
        *ops::property(&mut doc, schema, "due_at") = json!({
            "type": ["string", "null"], "format": "date-time", "pattern": crate::input::DUE_AT_PATTERN,
            "description": "When the todo is due: RFC 3339, years 1970 to 9999, kept to the microsecond; null for none"
        });
        doc["components"]["schemas"][schema]["additionalProperties"] = json!(false);
    }
    doc["components"]["schemas"]["TodoPatch"]["minProperties"] = json!(1);
    // A missing `completed` is false: not required.
    if let Some(required) = doc["components"]["schemas"]["TodoInput"]["required"].as_array_mut() {
        required.retain(|f| f != "completed");
    }
    for field in ["id", "version"] {
        *ops::property(&mut doc, "Todo", field) = ops::id_schema();
    }
    for parameter in ops::parameters_named(&mut doc, "after") {
        ops::merge(
            &mut parameter["schema"],
            json!({"minimum": 0, "maximum": events::limits::MAX_ID}),
        );
    }
    for parameter in ops::parameters_named(&mut doc, "limit") {
        ops::merge(
            &mut parameter["schema"],
            json!({"minimum": 1, "maximum": crate::http::FEED_MAX_LIMIT}),
        );
    }
    // A created todo is the one its next writes name: OpenAPI links from the 201's id (and
    // its ETag, for If-Match).
    let link = |operation: &str| {
        json!({"operationId": operation, "parameters": {
            "id": "$response.body#/id",
            "If-Match": "$response.header.ETag",
        }})
    };
    doc["paths"]["/todos"]["post"]["responses"]["201"]["links"] = json!({
        "PatchTheTodo": link("patch"),
        "PutTheTodo": link("put"),
        "DeleteTheTodo": link("delete"),
    });
    ops::finish(&mut doc);
    doc
}

const PROBLEM: &str = "application/problem+json";

/// `POST /todos`.
#[utoipa::path(post, path = "/todos", tag = "todos",
    params(
        ("Authorization" = Option<String>, Header, description = "Bearer <token> (the scheme in any case), one of WRITE_TOKENS when it is set; a FEED_TOKENS token is 403"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters (blanks inside); the same key with the same request replays the first answer, with another request 422; another form is 400"),
    ),
    request_body(content = TodoInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = Todo, headers(
            ("Location" = String, description = "/todos/{id}"),
            ("ETag" = String, description = "The version, quoted"),
        )),
        (status = 400, description = "Malformed JSON or a bad header", body = Problem, content_type = PROBLEM),
        (status = 401, description = "WRITE_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A bearer token that is not one of WRITE_TOKENS (a feed token too), or a browser Origin CORS_ORIGINS does not list", body = Problem, content_type = PROBLEM),
        (status = 408, description = "The body did not arrive whole within HTTP_BODY_READ_TIMEOUT_MS; nothing written", body = Problem, content_type = PROBLEM),
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
        ("id" = i64, Path, description = "Todo id, 1 to 2^53 - 1; any other is 404"),
        ("Authorization" = Option<String>, Header, description = "Bearer <token> (the scheme in any case), one of WRITE_TOKENS when it is set; a FEED_TOKENS token is 403"),
        ("If-Match" = Option<String>, Header, description = "*, or entity tags (\"N\" or W/\"N\"), comma-separated; compared strongly, so only \"<current version>\" or * matches (412 otherwise); another form is 400"),
    ),
    request_body(content = TodoPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The new state (the same when nothing changed)", body = Todo, headers(("ETag" = String))),
        (status = 400, body = Problem, content_type = PROBLEM),
        (status = 401, description = "WRITE_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A bearer token that is not one of WRITE_TOKENS (a feed token too), or a browser Origin CORS_ORIGINS does not list", body = Problem, content_type = PROBLEM),
        (status = 404, body = Problem, content_type = PROBLEM),
        (status = 412, description = "If-Match does not match; current_version says where the todo is", body = Problem, content_type = PROBLEM),
        (status = 408, body = Problem, content_type = PROBLEM),
        (status = 413, body = Problem, content_type = PROBLEM),
        (status = 415, body = Problem, content_type = PROBLEM),
        (status = 422, body = Problem, content_type = PROBLEM),
        (status = 500, description = "Unexpected; nothing changed", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Unavailable now; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn patch() {}

/// `PUT /todos/{id}`.
#[utoipa::path(put, path = "/todos/{id}", tag = "todos",
    params(
        ("id" = i64, Path, description = "Todo id, 1 to 2^53 - 1; any other is 404"),
        ("Authorization" = Option<String>, Header, description = "Bearer <token> (the scheme in any case), one of WRITE_TOKENS when it is set; a FEED_TOKENS token is 403"),
        ("If-Match" = Option<String>, Header, description = "*, or entity tags (\"N\" or W/\"N\"), comma-separated; compared strongly, so only \"<current version>\" or * matches (412 otherwise); another form is 400"),
    ),
    request_body(content = TodoInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The new state (the same when nothing changed)", body = Todo, headers(("ETag" = String))),
        (status = 400, body = Problem, content_type = PROBLEM),
        (status = 401, description = "WRITE_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A bearer token that is not one of WRITE_TOKENS (a feed token too), or a browser Origin CORS_ORIGINS does not list", body = Problem, content_type = PROBLEM),
        (status = 404, body = Problem, content_type = PROBLEM),
        (status = 412, body = Problem, content_type = PROBLEM),
        (status = 408, body = Problem, content_type = PROBLEM),
        (status = 413, body = Problem, content_type = PROBLEM),
        (status = 415, body = Problem, content_type = PROBLEM),
        (status = 422, body = Problem, content_type = PROBLEM),
        (status = 500, description = "Unexpected; nothing changed", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Unavailable now; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn put() {}

/// `DELETE /todos/{id}`.
#[utoipa::path(delete, path = "/todos/{id}", tag = "todos",
    params(
        ("id" = i64, Path, description = "Todo id, 1 to 2^53 - 1; any other is 404"),
        ("Authorization" = Option<String>, Header, description = "Bearer <token> (the scheme in any case), one of WRITE_TOKENS when it is set; a FEED_TOKENS token is 403"),
        ("If-Match" = Option<String>, Header, description = "*, or entity tags (\"N\" or W/\"N\"), comma-separated; compared strongly, so only \"<current version>\" or * matches (412 otherwise); another form is 400"),
    ),
    responses(
        (status = 204, description = "Deleted", headers(("ETag" = String, description = "The delete's version"))),
        (status = 400, body = Problem, content_type = PROBLEM),
        (status = 401, description = "WRITE_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A bearer token that is not one of WRITE_TOKENS (a feed token too), or a browser Origin CORS_ORIGINS does not list", body = Problem, content_type = PROBLEM),
        (status = 404, body = Problem, content_type = PROBLEM),
        (status = 412, body = Problem, content_type = PROBLEM),
        (status = 500, description = "Unexpected; nothing changed", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Unavailable now; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn delete() {}

/// `POST /todos/{id}/erase`.
#[utoipa::path(post, path = "/todos/{id}/erase", tag = "todos",
    description = "Removes the todo's title and description from it, from every event of its history and (through one more TodoUpdated) from the read model; ids, versions, times, completed and due_at are kept, and data.erased_at marks it. For a person's request to erase their data. Takes a token of OPERATOR_TOKENS only; closed (403) while that is unset.",
    params(
        ("id" = i64, Path, description = "Todo id, 1 to 2^53 - 1; any other is 404"),
        ("Authorization" = Option<String>, Header, description = "Bearer <token> (the scheme in any case), one of OPERATOR_TOKENS; write and feed tokens are 403"),
    ),
    responses(
        (status = 200, description = "Erased (again: nothing more to do)", body = Erased),
        (status = 401, description = "OPERATOR_TOKENS is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "OPERATOR_TOKENS is unset (erasure over HTTP closed), or a bearer token that is not one of them", body = Problem, content_type = PROBLEM),
        (status = 404, description = "No todo with this id ever existed", body = Problem, content_type = PROBLEM),
        (status = 500, description = "Unexpected; nothing changed", body = Problem, content_type = PROBLEM),
        (status = 503, description = "Unavailable now; nothing changed", body = Problem, content_type = PROBLEM, headers(("Retry-After" = String, description = "Seconds to wait: 1"))),
    )
)]
#[allow(dead_code)]
fn erase() {}

/// `GET /events`.
#[utoipa::path(get, path = "/events", tag = "events",
    params(
        ("Authorization" = Option<String>, Header, description = "Bearer <token> (the scheme in any case): one of FEED_TOKENS when it is set, else of WRITE_TOKENS when that is set"),
        ("after" = Option<i64>, Query, description = "Position to read after: 0 (default) to 2^53 - 1"),
        ("limit" = Option<i64>, Query, description = "Events per page: 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "Events oldest first", body = Vec<Envelope>, headers(
            ("Link" = String, description = "rel=\"next\": the next page, when this one is full"),
            ("Log-Head" = i64, description = "The head of the log when the page was read: the highest position stamped; every event committed before the request is at or below it"),
        )),
        (status = 400, body = Problem, content_type = PROBLEM),
        (status = 401, description = "FEED_TOKENS (or, while it is empty, WRITE_TOKENS) is set and no bearer token came", body = Problem, content_type = PROBLEM, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A bearer token that may not read the feed: with FEED_TOKENS set, any but those; else any but WRITE_TOKENS", body = Problem, content_type = PROBLEM),
        (status = 500, description = "Unexpected", body = Problem, content_type = PROBLEM),
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
