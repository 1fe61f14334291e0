//! The contract between command-service and query-service.
//!
//! Both services depend on this crate for the event types, their JSON envelope and the
//! RabbitMQ names, so neither side can drift from the other. The tests at the bottom pin the
//! JSON shape with literal samples: changing a field name or an event name breaks them.

pub mod limits;
#[cfg(feature = "service")]
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Durable topic exchange the command side publishes every event to.
pub const EXCHANGE: &str = "todo.events";
/// Quorum queue the query side consumes from, bound to [`EXCHANGE`] with [`BINDING_KEY`].
pub const QUERY_QUEUE: &str = "query-service.todo-events";
/// Binding key that matches every todo event.
pub const BINDING_KEY: &str = "todo.#";
/// Exchange dead-lettered messages of [`QUERY_QUEUE`] go to (fanout, durable).
pub const DEAD_LETTER_EXCHANGE: &str = "todo.events.dlx";
/// Queue that keeps dead-lettered messages for inspection and replay.
pub const DEAD_LETTER_QUEUE: &str = "query-service.todo-events.dlq";
/// Dead-letter exchange belonging to an events exchange: `<exchange>.dlx`.
pub fn dead_letter_exchange(exchange: &str) -> String {
    format!("{exchange}.dlx")
}

/// Dead-letter queue belonging to a consumer queue: `<queue>.dlq`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// The read side's fanout exchange belonging to a consumer queue, `<queue>.changes`: each
/// replica publishes the changes it applied there and every replica's stream listens.
pub fn changes_exchange(queue: &str) -> String {
    format!("{queue}.changes")
}

/// Content type of every message body.
pub const CONTENT_TYPE: &str = "application/json";
/// AMQP header carrying the todo id.
pub const HEADER_TODO_ID: &str = "todo_id";
/// AMQP header carrying the todo version the event produced.
pub const HEADER_VERSION: &str = "version";
/// AMQP header carrying the correlation id of the request that caused the event.
pub const HEADER_CORRELATION_ID: &str = "correlation_id";
/// AMQP header carrying the W3C trace context of the request that wrote the event
/// (`traceparent`, as <https://www.w3.org/TR/trace-context/> writes it), so the read side's
/// spans join the request's trace. Absent on events written before version 3.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// AMQP header the read side adds to a message it dead-letters: why it refused it.
pub const HEADER_REFUSED_REASON: &str = "x-refused-reason";
/// AMQP header the read side adds to a message it dead-letters: when (RFC 3339).
pub const HEADER_REFUSED_AT: &str = "x-refused-at";
/// The contract's version this build writes, and the newest it reads in full.
///
/// Every version of the contract only adds to the one before: optional fields, read as absent
/// by an older reader (a change that takes something away or changes a meaning is a new
/// contract, on exchanges of its own, not a new version of this one). So a reader takes every
/// version: an older one is upcast to this one ([`upcast`], one step per version), a newer one
/// is read as this one, the fields this build does not know left out of the way.
///
/// - 1: the first.
/// - 2: `data.due_at`, the todo's due date (RFC 3339, or `null`).
/// - 3: `causation_id` (what caused the event: the id of the request that wrote it) and
///   `actor` (who: the name of the bearer token, or `anonymous`), both `null` on an event
///   written before; `data.erased_at`, set on every event of a todo whose title and
///   description were erased (see [`ERASED_TITLE`]).
pub const SCHEMA_VERSION: u32 = 3;

/// The title every event of an erased todo carries in place of its own (its description is
/// `null`); `data.erased_at` says when it was erased. A title a reader of version 2 still
/// takes, so an erasure never dead-letters on a reader that does not know it.
pub const ERASED_TITLE: &str = "(erased)";

/// The actor of a write no named token made: writes open, or a token without a name.
pub const ANONYMOUS: &str = "anonymous";

/// The longest `causation_id`, `correlation_id` or `actor` the write side writes.
pub const MAX_ID_TEXT: usize = 128;

/// The steps from each older version to the next, as JSON: `UPCASTS[n - 1]` takes an event
/// of version `n` to version `n + 1`. A version 3 adds one function here.
const UPCASTS: [fn(&mut serde_json::Value); SCHEMA_VERSION as usize - 1] = [v1_to_v2, v2_to_v3];

/// Version 2 added `data.due_at`: a version 1 todo had no due date.
fn v1_to_v2(event: &mut serde_json::Value) {
    if let Some(data) = event.get_mut("data").and_then(|d| d.as_object_mut()) {
        data.entry("due_at").or_insert(serde_json::Value::Null);
    }
}

/// Version 3 added `causation_id` and `actor` (unknown before: `null`) and `data.erased_at`
/// (no todo was erased before).
fn v2_to_v3(event: &mut serde_json::Value) {
    if let Some(event) = event.as_object_mut() {
        event
            .entry("causation_id")
            .or_insert(serde_json::Value::Null);
        event.entry("actor").or_insert(serde_json::Value::Null);
    }
    if let Some(data) = event.get_mut("data").and_then(|d| d.as_object_mut()) {
        data.entry("erased_at").or_insert(serde_json::Value::Null);
    }
}

/// Takes an event of any older version (its JSON) to [`SCHEMA_VERSION`], one step at a time.
/// An event of this version or a newer one, or without a usable `schema_version`, is left as
/// it is.
pub fn upcast(mut event: serde_json::Value) -> serde_json::Value {
    let Some(from) = event.get("schema_version").and_then(|v| v.as_u64()) else {
        return event;
    };
    if from == 0 || from >= u64::from(SCHEMA_VERSION) {
        return event;
    }
    for step in &UPCASTS[from as usize - 1..] {
        step(&mut event);
    }
    event["schema_version"] = SCHEMA_VERSION.into();
    event
}

/// The three things that can happen to a todo, named in the past tense.
#[cfg_attr(feature = "service", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    TodoCreated,
    TodoUpdated,
    TodoDeleted,
}

impl EventType {
    /// The name used in the envelope's `event_type` and the AMQP `type` property.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TodoCreated => "TodoCreated",
            EventType::TodoUpdated => "TodoUpdated",
            EventType::TodoDeleted => "TodoDeleted",
        }
    }

    /// The routing key the event is published with on [`EXCHANGE`].
    pub fn routing_key(self) -> &'static str {
        match self {
            EventType::TodoCreated => "todo.created",
            EventType::TodoUpdated => "todo.updated",
            EventType::TodoDeleted => "todo.deleted",
        }
    }

    /// Parses the name written by [`EventType::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        [
            EventType::TodoCreated,
            EventType::TodoUpdated,
            EventType::TodoDeleted,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A todo field a `TodoUpdated` can change.
#[cfg_attr(feature = "service", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Title,
    Description,
    Completed,
    /// Version 2.
    DueAt,
}

/// The full state of a todo after a change. A field a newer version of the contract added
/// and this build does not know is left out (see [`SCHEMA_VERSION`]).
#[cfg_attr(feature = "service", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TodoState {
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the todo is due (version 2); `null` when it has no due date.
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
    /// When the todo's title and description were erased (version 3): every event of its
    /// history then carries [`ERASED_TITLE`] and no description. `null` when never erased.
    #[serde(default)]
    pub erased_at: Option<DateTime<Utc>>,
}

/// One event as it travels: stored in the command side's log, published as one AMQP message,
/// served by `GET /events`.
#[cfg_attr(feature = "service", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub event_type: EventType,
    pub schema_version: u32,
    pub todo_id: i64,
    /// The todo's version after this event: 1 for its creation, then 2, 3, …
    pub version: i64,
    /// Global, increasing position in the command side's event log. Zero until stored.
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: String,
    /// What caused the event (version 3): the id of the request that wrote it (a UUID the
    /// write side gives each request). `null` on an event written before version 3.
    #[serde(default)]
    pub causation_id: Option<String>,
    /// Who wrote it (version 3): the name of the bearer token (`WRITE_TOKENS` entries written
    /// `name:token`), or [`ANONYMOUS`]. `null` on an event written before version 3.
    #[serde(default)]
    pub actor: Option<String>,
    /// Full state after the change; `None` for a delete.
    pub data: Option<TodoState>,
    /// Fields a `TodoUpdated` changed; empty for the other types. A field a newer version
    /// added and this build does not know is left out.
    #[serde(default, deserialize_with = "known_fields")]
    pub changed: Vec<Field>,
}

/// The entries of `changed` this build knows; the others (a newer version's fields) are left
/// out. Anything but an array of strings is refused.
fn known_fields<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Field>, D::Error> {
    let names: Vec<String> = Vec::deserialize(d)?;
    Ok(names
        .into_iter()
        .filter_map(|name| serde_json::from_value(serde_json::Value::String(name)).ok())
        .collect())
}

/// Why a message body is not a usable event.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not a JSON event envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema_version {0} is not a version of the contract (they start at 1)")]
    SchemaVersion(u32),
    #[error("{0} must carry data")]
    MissingData(EventType),
    #[error("TodoDeleted must not carry data")]
    UnexpectedData,
    #[error(
        "{field} {value} is outside what the write side produces (1 to {})",
        limits::MAX_ID
    )]
    OutOfRange { field: &'static str, value: i64 },
    #[error("data.{field} breaks the write side's rules: {reason}")]
    Text { field: &'static str, reason: String },
    #[error("TodoCreated must have version 1, got {0}")]
    CreatedVersion(i64),
    #[error("{field} is longer than {} characters", MAX_ID_TEXT)]
    TooLong { field: &'static str },
    #[error("data.title of an erased todo must be {ERASED_TITLE:?} and its description null")]
    NotErased,
}

impl Envelope {
    /// Routing key for this event.
    pub fn routing_key(&self) -> &'static str {
        self.event_type.routing_key()
    }

    /// Serializes the envelope to the JSON body of a message.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a message body: the JSON shape and the invariants both services rely
    /// on. An event of an older version is upcast ([`upcast`]); one of a newer version is read
    /// as this build's version, without the fields it does not know. Either way the envelope
    /// returned says [`SCHEMA_VERSION`]: it holds what this build reads, nothing more.
    pub fn from_json(body: &[u8]) -> Result<Self, EnvelopeError> {
        /// The version alone, read first: an older event is upcast as JSON before it is read
        /// as this version's envelope, whatever its shape.
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let Version { schema_version } = serde_json::from_slice(body)?;
        let mut envelope: Envelope = if schema_version == 0 {
            return Err(EnvelopeError::SchemaVersion(0));
        } else if schema_version < SCHEMA_VERSION {
            serde_json::from_value(upcast(serde_json::from_slice(body)?))?
        } else {
            serde_json::from_slice(body)?
        };
        envelope.schema_version = SCHEMA_VERSION;
        envelope.validate()?;
        Ok(envelope)
    }

    /// [`Envelope::from_json`] of an event already parsed as JSON (a page of `GET /events`).
    pub fn from_value(value: serde_json::Value) -> Result<Self, EnvelopeError> {
        let mut envelope: Envelope = serde_json::from_value(upcast(value))?;
        if envelope.schema_version == 0 {
            return Err(EnvelopeError::SchemaVersion(0));
        }
        envelope.schema_version = SCHEMA_VERSION;
        envelope.validate()?;
        Ok(envelope)
    }

    /// Checks what the contract allows, as the write side produces it: a schema version from
    /// 1, the todo id, version and position within 1 to [`limits::MAX_ID`], data where the type
    /// needs it and none where it does not, version 1 for a creation, and the todo's text
    /// within the write side's rules ([`limits`]). The read side refuses (dead-letters) an
    /// event outside them: only a peer with broker access, or a bug, can send one.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.schema_version == 0 {
            return Err(EnvelopeError::SchemaVersion(0));
        }
        for (field, value) in [
            ("todo_id", self.todo_id),
            ("version", self.version),
            ("position", self.position),
        ] {
            if !limits::in_id_range(value) {
                return Err(EnvelopeError::OutOfRange { field, value });
            }
        }
        for (field, text) in [
            ("correlation_id", Some(self.correlation_id.as_str())),
            ("causation_id", self.causation_id.as_deref()),
            ("actor", self.actor.as_deref()),
        ] {
            if text.is_some_and(|t| t.chars().count() > MAX_ID_TEXT) {
                return Err(EnvelopeError::TooLong { field });
            }
        }
        if let Some(data) = &self.data {
            if data.erased_at.is_some()
                && (data.title != ERASED_TITLE || data.description.is_some())
            {
                return Err(EnvelopeError::NotErased);
            }
            if let Some(reason) = limits::stored_title(&data.title) {
                return Err(EnvelopeError::Text {
                    field: "title",
                    reason,
                });
            }
            if let Some(reason) = data.description.as_deref().and_then(limits::description) {
                return Err(EnvelopeError::Text {
                    field: "description",
                    reason,
                });
            }
        }
        match (self.event_type, &self.data) {
            (EventType::TodoDeleted, Some(_)) => return Err(EnvelopeError::UnexpectedData),
            (EventType::TodoCreated | EventType::TodoUpdated, None) => {
                return Err(EnvelopeError::MissingData(self.event_type))
            }
            _ => {}
        }
        if self.event_type == EventType::TodoCreated && self.version != 1 {
            return Err(EnvelopeError::CreatedVersion(self.version));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATED: &str = r#"{
        "event_id": "0b8f6a52-3c39-4c6e-9a53-2f0a4a1d6f10", "event_type": "TodoCreated",
        "schema_version": 3, "todo_id": 42, "version": 1, "position": 1234,
        "occurred_at": "2026-11-22T10:00:00Z", "correlation_id": "req-1",
        "causation_id": "0193a0c4-1a2b-7c3d-8e4f-5a6b7c8d9e0f", "actor": "alice",
        "data": { "title": "Learn CQRS", "description": null, "completed": false,
                  "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z",
                  "due_at": null, "erased_at": null },
        "changed": [] }"#;

    const UPDATED: &str = r#"{
        "event_id": "6d1c1c0e-7f0b-4c55-8d2e-9c7f2b6c1a22", "event_type": "TodoUpdated",
        "schema_version": 3, "todo_id": 42, "version": 3, "position": 1240,
        "occurred_at": "2026-11-22T10:05:00.123456Z", "correlation_id": "req-7",
        "causation_id": "0193a0c4-1a2b-7c3d-8e4f-5a6b7c8d9e10", "actor": "anonymous",
        "data": { "title": "Learn CQRS", "description": "with outbox", "completed": true,
                  "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:05:00.123456Z",
                  "due_at": "2026-11-30T17:00:00Z", "erased_at": null },
        "changed": ["completed", "description"] }"#;

    const DELETED: &str = r#"{
        "event_id": "9a0e5c1b-2d3f-4e5a-8b6c-7d8e9f0a1b2c", "event_type": "TodoDeleted",
        "schema_version": 3, "todo_id": 42, "version": 4, "position": 1300,
        "occurred_at": "2026-11-22T11:00:00Z", "correlation_id": "req-9",
        "causation_id": "0193a0c4-1a2b-7c3d-8e4f-5a6b7c8d9e11", "actor": "alice",
        "data": null, "changed": [] }"#;

    /// [`CREATED`] as version 1 wrote it: no due date.
    const CREATED_V1: &str = r#"{
        "event_id": "0b8f6a52-3c39-4c6e-9a53-2f0a4a1d6f10", "event_type": "TodoCreated",
        "schema_version": 1, "todo_id": 42, "version": 1, "position": 1234,
        "occurred_at": "2026-11-22T10:00:00Z", "correlation_id": "req-1",
        "data": { "title": "Learn CQRS", "description": null, "completed": false,
                  "created_at": "2026-11-22T10:00:00Z", "updated_at": "2026-11-22T10:00:00Z" },
        "changed": [] }"#;

    #[test]
    fn a_version_1_event_is_upcast_to_this_version() {
        // CREATED as version 3 reads a version 1 event: nothing known of its cause or actor.
        let expected: serde_json::Value = serde_json::from_str(&CREATED.replace(
            "\"0193a0c4-1a2b-7c3d-8e4f-5a6b7c8d9e0f\", \"actor\": \"alice\"",
            "null, \"actor\": null",
        ))
        .expect("JSON");
        let value: serde_json::Value = serde_json::from_str(CREATED_V1).expect("JSON");
        assert_eq!(upcast(value), expected, "the upcast JSON is this version's");
        let parsed = Envelope::from_json(CREATED_V1.as_bytes()).expect("a version 1 event");
        assert_eq!(
            Envelope::from_value(serde_json::from_str(CREATED_V1).expect("JSON"))
                .expect("the same, parsed already"),
            parsed
        );
        assert_eq!(parsed.schema_version, SCHEMA_VERSION);
        assert_eq!(parsed.data.as_ref().and_then(|d| d.due_at), None);
        assert_eq!(
            (parsed.causation_id.as_deref(), parsed.actor.as_deref()),
            (None, None)
        );
        // A version 1 delete has no data to add to.
        let deleted_v1 = DELETED.replace("\"schema_version\": 3", "\"schema_version\": 1");
        let deleted = Envelope::from_json(deleted_v1.as_bytes()).expect("a version 1 delete");
        assert_eq!(deleted.data, None);
        // This version and newer ones are not touched.
        let current: serde_json::Value = serde_json::from_str(UPDATED).expect("JSON");
        assert_eq!(upcast(current.clone()), current);
    }

    #[test]
    fn a_version_2_event_is_upcast_to_this_version() {
        let v2 = UPDATED
            .replace("\"schema_version\": 3", "\"schema_version\": 2")
            .replace(
                "\"causation_id\": \"0193a0c4-1a2b-7c3d-8e4f-5a6b7c8d9e10\", \"actor\": \"anonymous\",",
                "",
            )
            .replace(", \"erased_at\": null", "");
        assert!(!v2.contains("erased_at") && !v2.contains("causation_id"));
        let parsed = Envelope::from_json(v2.as_bytes()).expect("a version 2 event");
        let mut expected = Envelope::from_json(UPDATED.as_bytes()).expect("version 3");
        expected.causation_id = None;
        expected.actor = None;
        assert_eq!(
            parsed, expected,
            "the same event, nothing known of cause and actor"
        );
        let written: serde_json::Value = serde_json::from_slice(&parsed.to_json()).expect("JSON");
        assert_eq!(written["actor"], serde_json::Value::Null);
        assert_eq!(written["data"]["erased_at"], serde_json::Value::Null);
    }

    #[test]
    fn a_newer_version_is_read_as_this_one_without_what_it_does_not_know() {
        let newer = UPDATED
            .replace("\"schema_version\": 3", "\"schema_version\": 4")
            .replace(
                "\"due_at\": \"2026-11-30T17:00:00Z\"",
                "\"due_at\": \"2026-11-30T17:00:00Z\", \"priority\": \"high\", \"tags\": [\"a\"]",
            )
            .replace("\"changed\":", "\"tenant\": \"acme\", \"changed\":")
            .replace("\"description\"]", "\"description\", \"priority\"]");
        assert!(newer.contains("\"tenant\"") && newer.contains("\"priority\": \"high\""));
        let read = Envelope::from_json(newer.as_bytes()).expect("a version 4 event is read");
        assert_eq!(
            read,
            Envelope::from_json(UPDATED.as_bytes()).expect("version 3"),
            "read as this version: the unknown fields are left out"
        );
        let written: serde_json::Value = serde_json::from_slice(&read.to_json()).expect("JSON");
        assert_eq!(written["schema_version"], 3);
        assert!(written["data"].get("priority").is_none());
        assert!(written.get("tenant").is_none());
    }

    #[test]
    fn ids_and_names_over_128_characters_are_refused_naming_the_field() {
        let long = "x".repeat(MAX_ID_TEXT + 1);
        for field in ["correlation_id", "causation_id", "actor"] {
            let mut value: serde_json::Value = serde_json::from_str(UPDATED).expect("JSON");
            value[field] = serde_json::Value::String(long.clone());
            let err = Envelope::from_value(value.clone()).expect_err(field);
            assert!(err.to_string().contains(field), "{err}");
            value[field] = serde_json::Value::String(long[1..].to_string());
            assert!(Envelope::from_value(value).is_ok(), "{field} at the limit");
        }
    }

    #[test]
    fn an_erased_event_carries_the_erased_title_and_no_description() {
        let erased = UPDATED
            .replace(
                "\"erased_at\": null",
                "\"erased_at\": \"2026-12-01T09:00:00Z\"",
            )
            .replace(
                "\"title\": \"Learn CQRS\"",
                &format!("\"title\": \"{ERASED_TITLE}\""),
            )
            .replace("\"description\": \"with outbox\"", "\"description\": null");
        let read = Envelope::from_json(erased.as_bytes()).expect("an erased event");
        assert!(read.data.as_ref().is_some_and(|d| d.erased_at.is_some()));
        // Marked erased while still holding its text: refused.
        let half = UPDATED.replace(
            "\"erased_at\": null",
            "\"erased_at\": \"2026-12-01T09:00:00Z\"",
        );
        let err = Envelope::from_json(half.as_bytes()).expect_err("text left in an erased event");
        assert!(err.to_string().contains("erased"), "{err}");
    }

    #[test]
    fn literal_samples_of_each_type_parse() {
        let created = Envelope::from_json(CREATED.as_bytes()).expect("TodoCreated sample");
        assert_eq!(created.event_type, EventType::TodoCreated);
        assert_eq!(
            (created.todo_id, created.version, created.position),
            (42, 1, 1234)
        );
        let data = created.data.as_ref().expect("created carries data");
        assert_eq!(data.title, "Learn CQRS");
        assert_eq!(data.description, None);
        assert_eq!(data.due_at, None);

        let updated = Envelope::from_json(UPDATED.as_bytes()).expect("TodoUpdated sample");
        assert_eq!(updated.event_type, EventType::TodoUpdated);
        assert_eq!(updated.changed, vec![Field::Completed, Field::Description]);
        assert!(updated.data.as_ref().is_some_and(|d| d.completed));
        assert_eq!(
            updated.data.as_ref().and_then(|d| d.due_at),
            "2026-11-30T17:00:00Z".parse().ok()
        );

        let deleted = Envelope::from_json(DELETED.as_bytes()).expect("TodoDeleted sample");
        assert_eq!(deleted.event_type, EventType::TodoDeleted);
        assert_eq!(deleted.data, None);
        assert_eq!(deleted.version, 4);
    }

    #[test]
    fn each_sample_round_trips_to_the_same_json_value() {
        for sample in [CREATED, UPDATED, DELETED] {
            let parsed = Envelope::from_json(sample.as_bytes()).expect("sample parses");
            let written: serde_json::Value =
                serde_json::from_slice(&parsed.to_json()).expect("written JSON parses");
            let original: serde_json::Value = serde_json::from_str(sample).expect("sample is JSON");
            assert_eq!(written, original, "round trip changed the JSON of {sample}");
            assert_eq!(
                Envelope::from_json(&parsed.to_json()).expect("reparse"),
                parsed
            );
        }
    }

    #[test]
    fn written_json_has_exactly_the_documented_keys() {
        let parsed = Envelope::from_json(UPDATED.as_bytes()).expect("sample parses");
        let value: serde_json::Value = serde_json::from_slice(&parsed.to_json()).expect("json");
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("envelope is an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "actor",
                "causation_id",
                "changed",
                "correlation_id",
                "data",
                "event_id",
                "event_type",
                "occurred_at",
                "position",
                "schema_version",
                "todo_id",
                "version"
            ]
        );
        let data_keys: Vec<&str> = value["data"]
            .as_object()
            .expect("data is an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            data_keys.len(),
            7,
            "data has title, description, completed, created_at, updated_at, due_at, \
             erased_at: {data_keys:?}"
        );
    }

    #[test]
    fn names_and_routing_keys_are_pinned() {
        assert_eq!(EXCHANGE, "todo.events");
        assert_eq!(QUERY_QUEUE, "query-service.todo-events");
        assert_eq!(BINDING_KEY, "todo.#");
        assert_eq!(dead_letter_exchange(EXCHANGE), DEAD_LETTER_EXCHANGE);
        assert_eq!(dead_letter_queue(QUERY_QUEUE), DEAD_LETTER_QUEUE);
        let table = [
            (EventType::TodoCreated, "TodoCreated", "todo.created"),
            (EventType::TodoUpdated, "TodoUpdated", "todo.updated"),
            (EventType::TodoDeleted, "TodoDeleted", "todo.deleted"),
        ];
        for (t, name, key) in table {
            assert_eq!(t.as_str(), name);
            assert_eq!(t.routing_key(), key);
            assert_eq!(EventType::parse(name), Some(t));
            assert_eq!(
                serde_json::to_string(&t).expect("json"),
                format!("\"{name}\"")
            );
        }
        assert_eq!(EventType::parse("TodoArchived"), None);
    }

    #[test]
    fn malformed_envelopes_are_rejected_with_a_reason() {
        let cases: &[(&str, String)] = &[
            ("not JSON at all", "{nope".to_string()),
            (
                "unknown event type",
                CREATED.replace("TodoCreated", "TodoArchived"),
            ),
            (
                "schema version 0",
                CREATED.replace("\"schema_version\": 3", "\"schema_version\": 0"),
            ),
            (
                "a due date that is not RFC 3339",
                UPDATED.replace("2026-11-30T17:00:00Z", "next tuesday"),
            ),
            (
                "created without data",
                DELETED
                    .replace("TodoDeleted", "TodoCreated")
                    .replace("\"version\": 4", "\"version\": 1"),
            ),
            (
                "delete with data",
                UPDATED.replace("TodoUpdated", "TodoDeleted"),
            ),
            (
                "zero version",
                UPDATED.replace("\"version\": 3", "\"version\": 0"),
            ),
            (
                "negative todo id",
                UPDATED.replace("\"todo_id\": 42", "\"todo_id\": -1"),
            ),
            (
                "created at version 2",
                CREATED.replace("\"version\": 1", "\"version\": 2"),
            ),
            (
                "string todo id",
                UPDATED.replace("\"todo_id\": 42", "\"todo_id\": \"42\""),
            ),
            (
                "missing event_id",
                CREATED.replace(
                    "\"event_id\": \"0b8f6a52-3c39-4c6e-9a53-2f0a4a1d6f10\",",
                    "",
                ),
            ),
        ];
        for (why, body) in cases {
            assert!(
                Envelope::from_json(body.as_bytes()).is_err(),
                "{why}: should be rejected: {body}"
            );
        }
    }

    #[test]
    fn events_outside_what_the_write_side_produces_are_refused_naming_the_field() {
        let max = limits::MAX_ID.to_string();
        let past = (limits::MAX_ID + 1).to_string();
        let long_title = "t".repeat(limits::TITLE_MAX_CHARS + 1);
        let long_description = "d".repeat(limits::DESCRIPTION_MAX_CHARS + 1);
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "an id at the top of i64",
                UPDATED.replace("\"todo_id\": 42", &format!("\"todo_id\": {}", i64::MAX)),
                "todo_id",
            ),
            (
                "an id past MAX_ID",
                UPDATED.replace("\"todo_id\": 42", &format!("\"todo_id\": {past}")),
                "todo_id",
            ),
            (
                "a version far ahead",
                UPDATED.replace("\"version\": 3", &format!("\"version\": {}", 1_i64 << 62)),
                "version",
            ),
            (
                "a position past MAX_ID",
                UPDATED.replace("\"position\": 1240", &format!("\"position\": {past}")),
                "position",
            ),
            (
                "position 0 (never stored)",
                UPDATED.replace("\"position\": 1240", "\"position\": 0"),
                "position",
            ),
            (
                "a title past the write side's limit",
                UPDATED.replace(
                    "\"title\": \"Learn CQRS\"",
                    &format!("\"title\": \"{long_title}\""),
                ),
                "title",
            ),
            (
                "a blank title",
                UPDATED.replace("\"title\": \"Learn CQRS\"", "\"title\": \"   \""),
                "title",
            ),
            (
                "a title not stored trimmed",
                UPDATED.replace("\"title\": \"Learn CQRS\"", "\"title\": \" Learn CQRS \""),
                "title",
            ),
            (
                "a description past the write side's limit",
                UPDATED.replace(
                    "\"description\": \"with outbox\"",
                    &format!("\"description\": \"{long_description}\""),
                ),
                "description",
            ),
        ];
        for (why, body, field) in cases {
            let err = Envelope::from_json(body.as_bytes()).expect_err(why);
            assert!(
                err.to_string().contains(field),
                "{why}: the reason names {field}: {err}"
            );
        }
        // A title of only invisible characters, which earlier versions of the write side took
        // (the log keeps it), is still applied.
        let invisible =
            UPDATED.replace("\"title\": \"Learn CQRS\"", "\"title\": \"\\u200b\\u202e\"");
        assert!(
            Envelope::from_json(invisible.as_bytes()).is_ok(),
            "an invisible title the log may hold"
        );
        // The edges themselves are inside.
        let edge = UPDATED
            .replace("\"todo_id\": 42", &format!("\"todo_id\": {max}"))
            .replace("\"position\": 1240", &format!("\"position\": {max}"));
        assert!(
            Envelope::from_json(edge.as_bytes()).is_ok(),
            "MAX_ID is a usable id"
        );
    }
}
