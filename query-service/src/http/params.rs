//! The query parameters of the todo reads: `GET /todos` (filter, order, page size, cursor)
//! and `?min_version=` of `GET /todos/{id}`; the list cursors, encoded and decoded, and the
//! `Link` header that carries the next one.

use crate::error::{ApiError, FieldError};
use crate::store::{Cursor, ListQuery, SortKey};
use std::collections::HashMap;

pub const DEFAULT_LIMIT: i64 = 50;

pub const MAX_LIMIT: i64 = 200;

/// The values `sort` takes.
pub const SORTS: [&str; 8] = [
    "id",
    "-id",
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "due_at",
    "-due_at",
];

/// An error for each parameter of `params` not in `known`, in name order.
pub(super) fn unknown_params(
    params: &HashMap<String, String>,
    known: &[&str],
    errors: &mut Vec<FieldError>,
) {
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

/// Parses `GET /todos` parameters: `completed=true|false`, `overdue=true`, `limit=1..=200`,
/// `sort=id|-id|created_at|-created_at|updated_at|-updated_at|due_at|-due_at`, `cursor` from
/// a `Link` header. `sort=due_at` lists the todos that have a due date; `overdue=true` the
/// ones not completed whose due date is past (at the time of the first page: the cursor
/// carries it), in due-date order (`sort` beside it gives only the direction; with
/// `completed=true` the list is empty).
pub fn list_query(params: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let mut errors = Vec::new();
    unknown_params(
        params,
        &["completed", "overdue", "limit", "cursor", "sort"],
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
    let overdue = match params.get("overdue").map(String::as_str) {
        None => false,
        Some("true") => true,
        Some(other) => {
            errors.push(FieldError::new(
                "overdue",
                format!("must be true (leave it out for every todo), got {other:?}"),
            ));
            false
        }
    };
    let (mut sort, mut descending): (SortKey, bool) = match params.get("sort").map(String::as_str) {
        None if overdue => (SortKey::DueAt, false),
        None => (SortKey::Id, false),
        Some(given) => match sort_of(given) {
            Some(sort) => sort,
            None => {
                errors.push(FieldError::new(
                    "sort",
                    format!("must be one of id, created_at, updated_at, due_at (prefix - for descending), got {given:?}"),
                ));
                (SortKey::Id, false)
            }
        },
    };
    // The overdue list is in due-date order: `sort` beside it gives the direction only. An
    // overdue todo is open: with `completed=true` the list is empty (the store is not asked).
    if overdue {
        sort = SortKey::DueAt;
    }
    let mut completed = match (overdue, completed) {
        (true, Some(true)) => Some(true),
        (true, _) => Some(false),
        (false, c) => c,
    };
    let mut due_before = overdue.then(|| crate::store::timestamp(chrono::Utc::now()));
    // A cursor continues the listing it was issued for: its order and filter are the page's,
    // whatever `sort` and `completed` say beside it.
    let after = match params.get("cursor") {
        None => None,
        Some(raw) => match decode_cursor(raw) {
            Some(c) => {
                (sort, descending, completed, due_before) =
                    (c.sort, c.descending, c.completed, c.due_before);
                Some(c.after)
            }
            None => {
                errors.push(FieldError::new(
                    "cursor",
                    "is not a cursor this service issues (see the Link header of a page)",
                ));
                None
            }
        },
    };
    if errors.is_empty() {
        Ok(ListQuery {
            completed,
            due_before: due_before.as_deref().and_then(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .ok()
                    .map(|t| t.with_timezone(&chrono::Utc))
            }),
            sort,
            descending,
            limit,
            after,
        })
    } else {
        Err(ApiError::InvalidQuery(errors))
    }
}

/// `sort`'s value for an order.
fn sort_name(sort: SortKey, descending: bool) -> &'static str {
    match (sort, descending) {
        (SortKey::Id, false) => "id",
        (SortKey::Id, true) => "-id",
        (SortKey::CreatedAt, false) => "created_at",
        (SortKey::CreatedAt, true) => "-created_at",
        (SortKey::UpdatedAt, false) => "updated_at",
        (SortKey::UpdatedAt, true) => "-updated_at",
        (SortKey::DueAt, false) => "due_at",
        (SortKey::DueAt, true) => "-due_at",
    }
}

/// The order a `sort` value names.
fn sort_of(name: &str) -> Option<(SortKey, bool)> {
    [
        SortKey::Id,
        SortKey::CreatedAt,
        SortKey::UpdatedAt,
        SortKey::DueAt,
    ]
    .into_iter()
    .flat_map(|key| [(key, false), (key, true)])
    .find(|(key, descending)| sort_name(*key, *descending) == name)
}

/// The form of every cursor [`encode_cursor`] writes and [`decode_cursor`] reads:
/// `<sort>~<filter>~<id>`, and for a time order `~<time>` (the stored RFC 3339 text with
/// microseconds). The filter is `all`, `true` or `false` (`completed`), or for the overdue
/// list `overdue.<time>`, the time it is overdue at. The OpenAPI document declares it as
/// `cursor`'s pattern.
pub const CURSOR_PATTERN: &str = concat!(
    r"^(-?id~(all|true|false)~[0-9]{1,16}",
    r"|-?(created_at|updated_at|due_at)~(all|true|false)~[0-9]{1,16}",
    r"~[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z",
    r"|-?due_at~overdue\.[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z",
    r"~[0-9]{1,16}~[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)$"
);

/// The `cursor` of the page after `c` in the listing `q`: the listing's order and filter and
/// the position `c`, readable and checkable (see [`CURSOR_PATTERN`]).
pub fn encode_cursor(q: &ListQuery, c: &Cursor) -> String {
    let filter = match (q.due_before, q.completed) {
        (Some(t), _) => format!("overdue.{}", crate::store::timestamp(t)),
        (None, None) => "all".to_string(),
        (None, Some(true)) => "true".to_string(),
        (None, Some(false)) => "false".to_string(),
    };
    let mut cursor = format!("{}~{filter}~{}", sort_name(q.sort, q.descending), c.id);
    if let (SortKey::CreatedAt | SortKey::UpdatedAt | SortKey::DueAt, Some(v)) = (q.sort, &c.v) {
        cursor.push('~');
        cursor.push_str(v);
    }
    cursor
}

/// A cursor read back: the listing it continues and where.
#[derive(Debug, PartialEq)]
struct Decoded {
    sort: SortKey,
    descending: bool,
    completed: Option<bool>,
    /// The overdue list's time, as stored.
    due_before: Option<String>,
    after: Cursor,
}

/// Whether `v` has the form of a stored time: `YYYY-MM-DDTHH:MM:SS.ffffffZ`. It is compared as
/// text, never read as a date, so any digits in that form are a position.
fn is_stored_time(v: &str) -> bool {
    v.len() == 27
        && v.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            26 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

fn decode_cursor(raw: &str) -> Option<Decoded> {
    let mut parts = raw.split('~');
    let (sort, descending) = sort_of(parts.next()?)?;
    let (completed, due_before) = match parts.next()? {
        "all" => (None, None),
        "true" => (Some(true), None),
        "false" => (Some(false), None),
        overdue if sort == SortKey::DueAt => {
            let at = overdue.strip_prefix("overdue.")?;
            if !is_stored_time(at) {
                return None;
            }
            (Some(false), Some(at.to_string()))
        }
        _ => return None,
    };
    let id = parts.next()?;
    if id.is_empty() || id.len() > 16 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: i64 = id.parse().ok()?;
    let v = match (sort, parts.next()) {
        (SortKey::Id, None) => None,
        (SortKey::CreatedAt | SortKey::UpdatedAt | SortKey::DueAt, Some(v))
            if is_stored_time(v) =>
        {
            Some(v.to_string())
        }
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Decoded {
        sort,
        descending,
        completed,
        due_before,
        after: Cursor { v, id },
    })
}

pub(super) fn next_link(q: &ListQuery, cursor: &Cursor) -> String {
    let mut url = format!(
        "/todos?limit={}&sort={}",
        q.limit,
        sort_name(q.sort, q.descending)
    );
    if q.due_before.is_some() {
        url.push_str("&overdue=true");
    } else if let Some(c) = q.completed {
        url.push_str(&format!("&completed={c}"));
    }
    format!("<{url}&cursor={}>; rel=\"next\"", encode_cursor(q, cursor))
}

/// Parses `?min_version=N` for `GET /todos/{id}`.
pub fn min_version(params: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    let mut errors = Vec::new();
    unknown_params(params, &["min_version"], &mut errors);
    let v = match params.get("min_version") {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if events::limits::in_id_range(n) => Some(n),
            _ => {
                errors.push(FieldError::new(
                    "min_version",
                    format!(
                        "must be an integer from 1 to {}, got {v:?}",
                        events::limits::MAX_ID
                    ),
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
    fn cursors_round_trip_and_carry_their_listing() {
        let time = "2026-11-22T10:00:00.000000Z";
        let cases = [
            (SortKey::Id, false, None, None, "id~all~42"),
            (SortKey::Id, true, Some(true), None, "-id~true~42"),
            (
                SortKey::CreatedAt,
                false,
                Some(false),
                Some(time),
                "created_at~false~42~2026-11-22T10:00:00.000000Z",
            ),
            (
                SortKey::UpdatedAt,
                true,
                None,
                Some(time),
                "-updated_at~all~42~2026-11-22T10:00:00.000000Z",
            ),
        ];
        for (sort, descending, completed, v, text) in cases {
            let q = ListQuery {
                completed,
                due_before: None,
                sort,
                descending,
                limit: 5,
                after: None,
            };
            let c = Cursor {
                v: v.map(String::from),
                id: 42,
            };
            assert_eq!(encode_cursor(&q, &c), text);
            assert_eq!(
                decode_cursor(text),
                Some(Decoded {
                    sort,
                    descending,
                    completed,
                    due_before: None,
                    after: c
                }),
                "{text}"
            );
        }
        // The overdue list's cursor carries the time it is overdue at.
        let at = "2026-12-05T10:00:00.000000Z";
        let q = ListQuery {
            completed: Some(false),
            due_before: at.parse().ok(),
            sort: SortKey::DueAt,
            descending: true,
            limit: 5,
            after: None,
        };
        let c = Cursor {
            v: Some(time.to_string()),
            id: 42,
        };
        let text = encode_cursor(&q, &c);
        assert_eq!(
            text,
            "-due_at~overdue.2026-12-05T10:00:00.000000Z~42~2026-11-22T10:00:00.000000Z"
        );
        let back = list_query(&params(&[("cursor", &text)])).expect("the overdue cursor");
        assert_eq!(back.due_before, q.due_before);
        assert_eq!(
            (back.sort, back.descending, back.completed),
            (SortKey::DueAt, true, Some(false))
        );
    }

    #[test]
    fn overdue_lists_are_in_due_date_order_and_not_completed() {
        let q = list_query(&params(&[("overdue", "true")])).expect("overdue");
        assert_eq!(
            (q.sort, q.descending, q.completed),
            (SortKey::DueAt, false, Some(false))
        );
        assert!(q.due_before.is_some());
        // `sort` beside it gives the direction; completed=true, a list with nothing in it.
        let q = list_query(&params(&[("overdue", "true"), ("sort", "-created_at")]))
            .expect("overdue, descending");
        assert_eq!((q.sort, q.descending), (SortKey::DueAt, true));
        let q = list_query(&params(&[("overdue", "true"), ("completed", "true")]))
            .expect("overdue and completed");
        assert_eq!(q.completed, Some(true));
        match list_query(&params(&[("overdue", "false")])) {
            Err(ApiError::InvalidQuery(errors)) => assert_eq!(errors[0].field, "overdue"),
            other => panic!("overdue=false: expected an invalid query, got {other:?}"),
        }
    }

    #[test]
    fn a_cursor_carries_its_order_and_filter_whatever_the_parameters_beside_it() {
        let by_time = "-updated_at~true~7~2026-11-22T10:00:00.000000Z";
        let q = list_query(&params(&[
            ("cursor", by_time),
            ("sort", "id"),
            ("completed", "false"),
        ]))
        .expect("a cursor of another sort");
        assert_eq!(
            (q.sort, q.descending, q.completed),
            (SortKey::UpdatedAt, true, Some(true))
        );
        assert_eq!(q.after.map(|c| c.id), Some(7));
    }

    #[test]
    fn a_cursor_of_another_form_is_refused() {
        for bad in [
            "abc",
            "",
            "id~all~",
            "id~all~x",
            "id~maybe~7",
            "title~all~7",
            "id~all~7~2026-11-22T10:00:00.000000Z",
            "created_at~all~7",
            "created_at~all~7~2026-11-22",
            "id~all~12345678901234567",
            "id~all~-1",
            "id~all~7~",
        ] {
            assert!(
                matches!(
                    list_query(&params(&[("cursor", bad)])),
                    Err(ApiError::InvalidQuery(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn min_version_must_be_positive() {
        assert_eq!(
            min_version(&params(&[("min_version", "3")])).expect("ok"),
            Some(3)
        );
        assert_eq!(min_version(&params(&[])).expect("ok"), None);
        for bad in ["0", "-1", "x", "9007199254740992"] {
            assert!(
                min_version(&params(&[("min_version", bad)])).is_err(),
                "{bad}"
            );
        }
    }
}
