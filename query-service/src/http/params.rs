//! The query parameters of the todo reads: `GET /todos` (filter, order, page size, cursor)
//! and `?min_version=` of `GET /todos/{id}`; the list cursors, encoded and decoded, and the
//! `Link` header that carries the next one.

use crate::error::{ApiError, FieldError};
use crate::store::{Cursor, ListQuery, SortKey};
use base64::Engine;
use std::collections::HashMap;

pub const DEFAULT_LIMIT: i64 = 50;

pub const MAX_LIMIT: i64 = 200;

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

/// The largest id a cursor may hold: the largest the write side produces, far from
/// overflowing the windows a page in id order walks.
const CURSOR_MAX_ID: i64 = events::limits::MAX_ID;

fn decode_cursor(raw: &str) -> Option<Cursor> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()?;
    let cursor: Cursor = serde_json::from_slice(&bytes).ok()?;
    (0..=CURSOR_MAX_ID).contains(&cursor.id).then_some(cursor)
}

pub(super) fn next_link(q: &ListQuery, cursor: &Cursor) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
