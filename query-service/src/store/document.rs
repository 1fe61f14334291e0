//! Stored documents and todos: the document an event's guarded upsert writes, a document read
//! back as a [`Todo`] or a tombstone, and the timestamps they hold.
//!
//! `todos` documents: `{ _id, version, title, description, completed, created_at,
//! updated_at, due_at, erased_at, deleted, deleted_at?, last_event_id, last_position,
//! last_actor, last_causation_id, last_correlation_id, projected_at }` (the `last_` fields
//! are the newest event's: who wrote it and why; `null` for an event written before version 3
//! of the contract)
//! and, on a live todo only, its sort keys ([`SORT_KEYS`]: four, and two more when it has a
//! due date); `_id` = the todo id. Timestamps are
//! stored as fixed-width RFC 3339 strings with microseconds, so they sort as text and read
//! back exactly as the command side wrote them.
//!
//! A sort key is one string that sorts as its list does: `[<completed>|]<time>|<id>`, the id
//! zero-padded to 16 digits (every id is at most 2^53 - 1), the `completed` prefix (`0|` or
//! `1|`) on the keys the filtered lists walk. A tombstone has none, so the sparse indexes on
//! them hold live todos only.

use super::{Stored, Todo};
use bson::{doc, Bson, Document};
use chrono::{DateTime, SecondsFormat, Utc};
use events::{Envelope, EventType};

/// Fixed-width UTC timestamp with microseconds: sorts as text.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The sort key fields: `(field, time field, led by completed)`. The `due_at` keys are on the
/// todos that have a due date only: the lists in due-date order hold those.
pub const SORT_KEYS: [(&str, &str, bool); 6] = [
    ("sort_created", "created_at", false),
    ("sort_updated", "updated_at", false),
    ("sort_completed_created", "created_at", true),
    ("sort_completed_updated", "updated_at", true),
    ("sort_due", "due_at", false),
    ("sort_completed_due", "due_at", true),
];

/// The prefix of the sort keys of todos whose `completed` is `c`.
pub fn completed_prefix(c: bool) -> &'static str {
    if c {
        "1|"
    } else {
        "0|"
    }
}

/// A sort key: `prefix`, the time, the id.
pub fn sort_key(prefix: &str, at: &str, id: i64) -> String {
    format!("{prefix}{at}|{id:016}")
}

/// Greater than every sort key that starts with `prefix` (`~` sorts after digits and `|`).
pub fn keys_end(prefix: &str) -> String {
    format!("{prefix}~")
}

/// The sort keys of a live todo (`times`: its `created_at`, `updated_at` and `due_at`, as
/// stored).
pub(super) fn sort_keys(id: i64, completed: bool, times: [Option<&str>; 3]) -> Document {
    let mut keys = Document::new();
    for (field, time, by_completed) in SORT_KEYS {
        let at = match time {
            "created_at" => times[0],
            "updated_at" => times[1],
            _ => times[2],
        };
        let Some(at) = at else {
            continue;
        };
        let prefix = if by_completed {
            completed_prefix(completed)
        } else {
            ""
        };
        keys.insert(field, sort_key(prefix, at, id));
    }
    keys
}

/// The version-guarded upsert of one event: its filter and its update.
pub(super) fn guarded_upsert(e: &Envelope) -> (Document, Document) {
    let now = timestamp(Utc::now());
    let text = |s: &Option<String>| s.clone().map_or(Bson::Null, Bson::String);
    let mut set = doc! {
        "version": e.version,
        "last_event_id": e.event_id.to_string(),
        "last_position": e.position,
        "last_actor": text(&e.actor),
        "last_causation_id": text(&e.causation_id),
        "last_correlation_id": &e.correlation_id,
        "projected_at": &now,
    };
    let mut update = Document::new();
    match (&e.event_type, &e.data) {
        (EventType::TodoCreated | EventType::TodoUpdated, Some(data)) => {
            set.insert("title", &data.title);
            set.insert(
                "description",
                data.description
                    .clone()
                    .map(Bson::String)
                    .unwrap_or(Bson::Null),
            );
            set.insert("completed", data.completed);
            set.insert(
                "erased_at",
                data.erased_at
                    .map(timestamp)
                    .map_or(Bson::Null, Bson::String),
            );
            let (created, updated) = (timestamp(data.created_at), timestamp(data.updated_at));
            let due = data.due_at.map(timestamp);
            set.extend(sort_keys(
                e.todo_id,
                data.completed,
                [Some(&created), Some(&updated), due.as_deref()],
            ));
            set.insert("created_at", created);
            set.insert("updated_at", updated);
            match due {
                Some(due) => {
                    set.insert("due_at", due);
                }
                // No due date: no due-date keys either (an earlier version's may be there).
                None => {
                    set.insert("due_at", Bson::Null);
                    update.insert("$unset", doc! { "sort_due": "", "sort_completed_due": "" });
                }
            }
            set.insert("deleted", false);
        }
        _ => {
            set.insert("deleted", true);
            set.insert("deleted_at", timestamp(e.occurred_at));
            let mut unset = doc! {
                "title": "", "description": "", "completed": "", "due_at": "", "erased_at": ""
            };
            for (field, _, _) in SORT_KEYS {
                unset.insert(field, "");
            }
            update.insert("$unset", unset);
        }
    }
    update.insert("$set", set);
    let filter = doc! { "_id": e.todo_id, "version": { "$lt": e.version } };
    (filter, update)
}

/// [`guarded_upsert`] over what a read found: exactly the version read, or no document at all
/// (every stored document has a version, so the filter matches none and the upsert inserts),
/// or a document this version cannot read (the version guard alone). So what the write
/// replaced is known. A document changed since the read makes the upsert try to insert a
/// second `_id`, which the unique index refuses (E11000).
pub(super) fn upsert_over(e: &Envelope, guard: super::projection::Guard) -> (Document, Document) {
    use super::projection::Guard;
    let (mut filter, update) = guarded_upsert(e);
    match guard {
        Guard::Exactly(version) => {
            filter.insert("version", version);
        }
        Guard::Absent => {
            filter.insert("version", doc! { "$exists": false });
        }
        Guard::Older => {}
    }
    (filter, update)
}

/// The document the guarded upsert of `e` inserts where there was none (`scripts/bench.sh`
/// fills a read model with such documents in bulk, as the projection would have left them).
pub fn document_after(e: &Envelope) -> Document {
    let (_, update) = guarded_upsert(e);
    let mut document = doc! { "_id": e.todo_id };
    if let Ok(set) = update.get_document("$set") {
        document.extend(set.clone());
    }
    document
}

/// The write that puts a document *ahead* of `e` (a later version than the log has) back to
/// the state `e` leaves it in: the guarded upsert's update, filtered the other way round.
pub(super) fn reset_ahead(e: &Envelope) -> (Document, Document) {
    let (_, mut update) = guarded_upsert(e);
    if e.data.is_some() {
        // Beside what the upsert unsets (the due-date keys of a todo without a due date).
        let mut unset = update.get_document("$unset").cloned().unwrap_or_default();
        unset.insert("deleted_at", "");
        update.insert("$unset", unset);
    }
    let filter = doc! { "_id": e.todo_id, "version": { "$gt": e.version } };
    (filter, update)
}

/// [`from_document`] for a read that answers a client: a document this version cannot read is
/// an error (500 on the API), never taken for a missing todo.
pub(super) fn read_document(d: &Document) -> mongodb::error::Result<Stored> {
    from_document(d).ok_or_else(|| {
        mongodb::error::Error::custom(format!(
            "a stored document this version cannot read: {}",
            d.get("_id")
                .map_or_else(|| "no _id".to_string(), ToString::to_string)
        ))
    })
}

/// A stored document as a todo or a tombstone; `None` when a field is missing or of another
/// type.
pub(super) fn from_document(d: &Document) -> Option<Stored> {
    let id = d.get_i64("_id").ok()?;
    let version = d.get_i64("version").ok()?;
    if d.get_bool("deleted").unwrap_or(false) {
        return Some(Stored::Deleted { version });
    }
    Some(Stored::Live(Todo {
        id,
        title: d.get_str("title").ok()?.to_string(),
        description: d.get_str("description").ok().map(str::to_string),
        completed: d.get_bool("completed").ok()?,
        version,
        created_at: parse_timestamp(d.get_str("created_at").ok()?)?,
        updated_at: parse_timestamp(d.get_str("updated_at").ok()?)?,
        // Absent on a document written before due dates, null without one.
        due_at: optional_timestamp(d, "due_at")?,
        // Absent on a document written before erasure, null when never erased.
        erased_at: optional_timestamp(d, "erased_at")?,
    }))
}

/// An optional timestamp field: `Some(None)` when absent or null, `None` when it is of another
/// type or no timestamp (the document is unreadable).
fn optional_timestamp(d: &Document, field: &str) -> Option<Option<DateTime<Utc>>> {
    match d.get(field) {
        None | Some(Bson::Null) => Some(None),
        Some(Bson::String(s)) => Some(Some(parse_timestamp(s)?)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_fixed_width_and_sort_as_text() {
        let a = parse_timestamp("2026-11-22T10:00:00Z").expect("a");
        let b = parse_timestamp("2026-11-22T10:00:00.123456Z").expect("b");
        let c = parse_timestamp("2026-11-22T10:00:00.5Z").expect("c");
        let texts: Vec<String> = [a, b, c].into_iter().map(timestamp).collect();
        assert_eq!(texts[0], "2026-11-22T10:00:00.000000Z");
        assert!(texts.windows(2).all(|w| w[0] < w[1]), "{texts:?}");
        for t in [a, b, c] {
            assert_eq!(parse_timestamp(&timestamp(t)), Some(t), "exact round trip");
        }
    }
}
