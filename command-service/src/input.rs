//! Request bodies: parsed from JSON and validated field by field, so a 422 names every
//! offending field at once and a wrong type is reported as such (not as "malformed JSON").
//!
//! Rules (command-service/README.md, "HTTP API"): `title` required; `description` a string or null; `completed` a
//! boolean; `due_at` an RFC 3339 date-time (years 1970 to 9999, kept to the microsecond) or
//! null; unknown fields rejected. What the texts may hold is `events::limits` (title
//! trimmed, 1..=200 characters, not only invisible characters; description at most 2000; no
//! U+0000 nor other control characters), shared with the read side.

use crate::error::{ApiError, FieldError};
use chrono::{DateTime, SubsecRound, Utc};
use events::limits;
use serde_json::{Map, Value};

const FIELDS: [&str; 4] = ["title", "description", "completed", "due_at"];

/// Full state given by `POST /todos` and `PUT /todos/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct TodoInput {
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    /// RFC 3339; kept to the microsecond.
    pub due_at: Option<DateTime<Utc>>,
}

/// Partial change given by `PATCH /todos/{id}`: `None` leaves a field as it is;
/// `description: Some(None)` clears the description, `due_at: Some(None)` the due date.
#[derive(Debug, Clone, Default, PartialEq, Eq, utoipa::ToSchema)]
pub struct TodoPatch {
    pub title: Option<String>,
    pub description: Option<Option<String>>,
    pub completed: Option<bool>,
    pub due_at: Option<Option<DateTime<Utc>>>,
}

/// Parses a body as a JSON object: syntax errors are 400, anything but an object is 422, and
/// so is an object that names a key twice (parsers disagree on which one wins).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let parsed: Body = serde_json::from_slice(body).map_err(|e| {
        if body.iter().all(u8::is_ascii_whitespace) {
            ApiError::MalformedJson("the body is empty".into())
        } else {
            ApiError::MalformedJson(e.to_string())
        }
    })?;
    match parsed {
        Body::Object { map, repeated } if repeated.is_empty() => Ok(map),
        Body::Object { repeated, .. } => Err(ApiError::Validation(
            repeated
                .into_iter()
                .map(|key| FieldError::new(key, "appears more than once in the body"))
                .collect(),
        )),
        Body::Other(kind) => Err(ApiError::Validation(vec![FieldError::new(
            "body",
            format!("must be a JSON object, got {kind}"),
        )])),
    }
}

/// A request body as read by [`parse_object`]: an object with the keys it repeated (each
/// once, in order of appearance), or the kind of whatever else it was.
enum Body {
    Object {
        map: Map<String, Value>,
        repeated: Vec<String>,
    },
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> serde::de::Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Body, A::Error> {
        let mut map = Map::new();
        let mut repeated = Vec::new();
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            if map.contains_key(&key) {
                if !repeated.contains(&key) {
                    repeated.push(key);
                }
            } else {
                map.insert(key, value);
            }
        }
        Ok(Body::Object { map, repeated })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut access: A) -> Result<Body, A::Error> {
        while access.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Body::Other("an array"))
    }

    fn visit_unit<E>(self) -> Result<Body, E> {
        Ok(Body::Other("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Body, E> {
        Ok(Body::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Body, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Body, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Body, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Body, E> {
        Ok(Body::Other("a string"))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn unknown_fields(map: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    for key in map.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
        errors.push(FieldError::new(key.clone(), "unknown field"));
    }
}

fn title(value: &Value, errors: &mut Vec<FieldError>) -> Option<String> {
    match value {
        Value::String(s) => match limits::title(s) {
            Ok(trimmed) => Some(trimmed.to_string()),
            Err(message) => {
                errors.push(FieldError::new("title", message));
                None
            }
        },
        other => {
            errors.push(FieldError::new(
                "title",
                format!("must be a string, got {}", kind(other)),
            ));
            None
        }
    }
}

fn description(value: &Value, errors: &mut Vec<FieldError>) -> Option<Option<String>> {
    match value {
        Value::Null => Some(None),
        Value::String(s) => match limits::description(s) {
            None => Some(Some(s.clone())),
            Some(message) => {
                errors.push(FieldError::new("description", message));
                None
            }
        },
        other => {
            errors.push(FieldError::new(
                "description",
                format!("must be a string or null, got {}", kind(other)),
            ));
            None
        }
    }
}

fn completed(value: &Value, errors: &mut Vec<FieldError>) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        other => {
            errors.push(FieldError::new(
                "completed",
                format!("must be a boolean, got {}", kind(other)),
            ));
            None
        }
    }
}

/// The earliest and latest due dates taken: a date before 1970 or past 9999 is a mistake, and
/// some readers of RFC 3339 cannot hold it.
const DUE_YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

/// The form of a due date the OpenAPI document declares (with `format: date-time`): RFC 3339
/// with a year from 1971 to 9998 (inside [`DUE_YEARS`] whatever the offset does to the UTC
/// date) and a day from 1 to 28 (a day every month has), so that every value of that form is
/// taken; the service takes every RFC 3339 date-time within [`DUE_YEARS`].
pub const DUE_AT_PATTERN: &str = concat!(
    r"^(197[1-9]|19[89][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])",
    r"-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])",
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
);

fn due_at(value: &Value, errors: &mut Vec<FieldError>) -> Option<Option<DateTime<Utc>>> {
    use chrono::Datelike;
    match value {
        Value::Null => Some(None),
        Value::String(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) if DUE_YEARS.contains(&t.with_timezone(&Utc).year()) => {
                Some(Some(t.with_timezone(&Utc).trunc_subsecs(6)))
            }
            Ok(_) => {
                errors.push(FieldError::new(
                    "due_at",
                    format!(
                        "must be between the years {} and {} (UTC)",
                        DUE_YEARS.start(),
                        DUE_YEARS.end()
                    ),
                ));
                None
            }
            Err(e) => {
                errors.push(FieldError::new(
                    "due_at",
                    format!("must be an RFC 3339 date-time such as 2026-12-31T17:00:00Z ({e})"),
                ));
                None
            }
        },
        other => {
            errors.push(FieldError::new(
                "due_at",
                format!(
                    "must be an RFC 3339 date-time string or null, got {}",
                    kind(other)
                ),
            ));
            None
        }
    }
}

/// Validates the body of `POST /todos` or `PUT /todos/{id}`: a whole todo. A missing
/// `description` is null, a missing `completed` is false, a missing `due_at` is null.
pub fn todo_input(body: &[u8]) -> Result<TodoInput, ApiError> {
    let map = parse_object(body)?;
    let mut errors = Vec::new();
    unknown_fields(&map, &mut errors);
    let t = match map.get("title") {
        Some(v) => title(v, &mut errors),
        None => {
            errors.push(FieldError::new("title", "is required"));
            None
        }
    };
    let d = match map.get("description") {
        Some(v) => description(v, &mut errors),
        None => Some(None),
    };
    let c = match map.get("completed") {
        Some(v) => completed(v, &mut errors),
        None => Some(false),
    };
    let due = match map.get("due_at") {
        Some(v) => due_at(v, &mut errors),
        None => Some(None),
    };
    match (t, d, c, due) {
        (Some(title), Some(description), Some(completed), Some(due_at)) if errors.is_empty() => {
            Ok(TodoInput {
                title,
                description,
                completed,
                due_at,
            })
        }
        _ => Err(ApiError::Validation(errors)),
    }
}

/// Validates the body of `PATCH /todos/{id}`: at least one known field.
pub fn todo_patch(body: &[u8]) -> Result<TodoPatch, ApiError> {
    let map = parse_object(body)?;
    let mut errors = Vec::new();
    unknown_fields(&map, &mut errors);
    let patch = TodoPatch {
        title: map.get("title").and_then(|v| title(v, &mut errors)),
        description: map
            .get("description")
            .and_then(|v| description(v, &mut errors)),
        completed: map.get("completed").and_then(|v| completed(v, &mut errors)),
        due_at: map.get("due_at").and_then(|v| due_at(v, &mut errors)),
    };
    if errors.is_empty() && map.is_empty() {
        errors.push(FieldError::new(
            "body",
            "must change at least one of title, description, completed, due_at",
        ));
    }
    if errors.is_empty() {
        Ok(patch)
    } else {
        Err(ApiError::Validation(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Validation(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_todo_is_trimmed_and_defaulted() {
        let input = todo_input(br#"{"title":"  Learn CQRS  "}"#).expect("valid");
        assert_eq!(
            input,
            TodoInput {
                title: "Learn CQRS".into(),
                description: None,
                completed: false,
                due_at: None,
            }
        );
        let due = todo_input(br#"{"title":"t","due_at":"2026-12-31T18:00:00.1234567+01:00"}"#)
            .expect("a due date with an offset and nanoseconds");
        assert_eq!(
            due.due_at,
            "2026-12-31T17:00:00.123456Z".parse().ok(),
            "UTC, kept to the microsecond"
        );
        let title_200 = format!(r#"{{"title":"{}","completed":true}}"#, "é".repeat(200));
        assert!(
            todo_input(title_200.as_bytes()).is_ok(),
            "200 characters (not bytes) is fine"
        );
    }

    #[test]
    fn bad_todos_name_each_offending_field() {
        let long_title = format!(r#"{{"title":"{}"}}"#, "x".repeat(201));
        let long_description = format!(r#"{{"title":"t","description":"{}"}}"#, "d".repeat(2001));
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            ("missing title", "{}".into(), vec!["title"]),
            ("blank title", r#"{"title":"   "}"#.into(), vec!["title"]),
            (
                "title of invisible characters",
                r#"{"title":" \u200b\u200d\u2060\ufeff\u202e\u2066\u200f\u00ad "}"#.into(),
                vec!["title"],
            ),
            ("201-character title", long_title, vec!["title"]),
            ("number title", r#"{"title":5}"#.into(), vec!["title"]),
            ("null title", r#"{"title":null}"#.into(), vec!["title"]),
            (
                "NUL in title",
                r#"{"title":"a\u0000"}"#.into(),
                vec!["title"],
            ),
            (
                "NUL in description",
                r#"{"title":"t","description":"\u0000"}"#.into(),
                vec!["description"],
            ),
            (
                "2001-character description",
                long_description,
                vec!["description"],
            ),
            (
                "string completed",
                r#"{"title":"t","completed":"yes"}"#.into(),
                vec!["completed"],
            ),
            (
                "unknown field",
                r#"{"title":"t","priority":1}"#.into(),
                vec!["priority"],
            ),
            (
                "several at once",
                r#"{"title":"","completed":1,"x":0}"#.into(),
                vec!["x", "title", "completed"],
            ),
            (
                "due date not RFC 3339",
                r#"{"title":"t","due_at":"next tuesday"}"#.into(),
                vec!["due_at"],
            ),
            (
                "due date without a zone",
                r#"{"title":"t","due_at":"2026-12-31T17:00:00"}"#.into(),
                vec!["due_at"],
            ),
            (
                "due date before 1970",
                r#"{"title":"t","due_at":"1969-12-31T23:59:59Z"}"#.into(),
                vec!["due_at"],
            ),
            (
                "number due date",
                r#"{"title":"t","due_at":1767200400}"#.into(),
                vec!["due_at"],
            ),
            ("array body", "[1]".into(), vec!["body"]),
            ("string body", r#""t""#.into(), vec!["body"]),
            (
                "repeated key",
                r#"{"title":"t","completed":true,"title":"u","title":"v"}"#.into(),
                vec!["title"],
            ),
        ];
        for (why, body, expected) in cases {
            let err = todo_input(body.as_bytes()).expect_err(why);
            assert_eq!(fields(err), expected, "{why}");
        }
    }

    #[test]
    fn malformed_json_is_not_a_validation_error() {
        for body in ["{", "", "{\"title\":}", "nope"] {
            assert!(
                matches!(todo_input(body.as_bytes()), Err(ApiError::MalformedJson(_))),
                "{body:?} must be malformed JSON"
            );
        }
    }

    #[test]
    fn patches_distinguish_absent_from_null() {
        let p = todo_patch(br#"{"description":null}"#).expect("valid");
        assert_eq!(p.description, Some(None));
        assert_eq!(p.title, None);
        let p = todo_patch(br#"{"completed":true}"#).expect("valid");
        assert_eq!(p.completed, Some(true));
        assert_eq!(p.description, None);
        assert_eq!(
            fields(todo_patch(b"{}").expect_err("empty patch")),
            ["body"]
        );
        assert_eq!(
            fields(todo_patch(br#"{"completed":null}"#).expect_err("null completed")),
            ["completed"]
        );
        assert_eq!(
            fields(todo_patch(br#"{"title":null}"#).expect_err("null title")),
            ["title"]
        );
        assert_eq!(
            fields(todo_patch(br#"{"description":"\u0000"}"#).expect_err("NUL")),
            ["description"]
        );
        let p = todo_patch(br#"{"due_at":null}"#).expect("clearing the due date");
        assert_eq!(p.due_at, Some(None));
        let p = todo_patch(br#"{"due_at":"2027-01-01T00:00:00Z"}"#).expect("a due date");
        assert_eq!(p.due_at, Some("2027-01-01T00:00:00Z".parse().ok()));
        assert_eq!(todo_patch(br#"{"title":"t"}"#).expect("valid").due_at, None);
    }
}
