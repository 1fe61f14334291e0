//! The read model in MongoDB.
//!
//! `todos` holds one document per todo, `_id` = the todo id:
//! `{ _id, version, title, description, completed, created_at, updated_at, deleted,
//!    deleted_at?, last_event_id, last_position, applied_events, projected_at }`.
//! Timestamps are stored as fixed-width RFC 3339 strings with microseconds, so they sort as
//! text and read back exactly as the command side wrote them.
//!
//! Applying an event is one version-guarded upsert: the filter `{_id, version: {$lt: v}}`
//! matches only a document older than the event. A newer or equal document makes the upsert
//! try to insert a second `_id`, which the unique `_id` index refuses (E11000): that is how a
//! duplicate or late event is recognised and skipped. A delete keeps the document as a
//! tombstone with its version, so nothing older can bring the todo back.
//!
//! `projection_stats` holds one document of counters shared by every replica.

use bson::{doc, Bson, Document};
use chrono::{DateTime, SecondsFormat, Utc};
use events::{Envelope, EventType};
use futures_util::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde::Serialize;
use std::time::Duration;

const STATS_ID: &str = "todos";
/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

#[derive(Clone)]
pub struct Store {
    client: Client,
    todos: Collection<Document>,
    stats: Collection<Document>,
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// The read model already had this version or a newer one.
    Skipped,
}

/// A todo as the read API serves it: the same shape the command side answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Todo {
    pub id: i64,
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One stored document: a live todo or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Live(Todo),
    Deleted { version: i64 },
}

impl Stored {
    pub fn version(&self) -> i64 {
        match self {
            Stored::Live(t) => t.version,
            Stored::Deleted { version } => *version,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Id,
    CreatedAt,
    UpdatedAt,
}

impl SortKey {
    pub fn field(self) -> &'static str {
        match self {
            SortKey::Id => "_id",
            SortKey::CreatedAt => "created_at",
            SortKey::UpdatedAt => "updated_at",
        }
    }
}

/// A list query: filter, order, page size and the position after which the page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub completed: Option<bool>,
    pub sort: SortKey,
    pub descending: bool,
    pub limit: i64,
    pub after: Option<Cursor>,
}

/// Keyset position: the sort value and id of the last item of the previous page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub v: Option<String>,
    pub id: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub total: u64,
    pub completed: u64,
    pub pending: u64,
    pub projection: ProjectionStats,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProjectionStats {
    pub applied: i64,
    pub skipped_duplicates: i64,
    pub dead_lettered: i64,
    /// `occurred_at` of the newest event applied.
    pub last_event_at: Option<String>,
    /// When the newest event was applied.
    pub last_applied_at: Option<String>,
    /// Milliseconds between an event's `occurred_at` and its application, for the last one.
    pub lag_ms: Option<i64>,
}

/// Fixed-width UTC timestamp with microseconds: sorts as text.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Whether an error is the kind that goes away by itself (the server is restarting or out of
/// reach): retried with backoff, never a reason to dead-letter a message.
pub fn is_transient(err: &mongodb::error::Error) -> bool {
    const TRANSIENT_CODES: &[i32] = &[
        6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 234, 133,
    ];
    if err.contains_label("RetryableWriteError")
        || err.contains_label("TransientTransactionError")
        || err.contains_label("NetworkError")
    {
        return true;
    }
    match err.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => TRANSIENT_CODES.contains(&w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => true,
        _ => false,
    }
}

fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

impl Store {
    /// Builds the client. No connection is made here: the driver connects on first use and
    /// reconnects by itself, so the service starts while MongoDB is still down.
    pub async fn connect(uri: &str, database: &str) -> mongodb::error::Result<Self> {
        let mut options = ClientOptions::parse(uri).await?;
        options
            .app_name
            .get_or_insert_with(|| "query-service".into());
        // Fail an operation within seconds while the server is away; the caller retries.
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(3));
        options
            .connect_timeout
            .get_or_insert(Duration::from_secs(3));
        let client = Client::with_options(options)?;
        let db = client.database(database);
        Ok(Self {
            todos: db.collection("todos"),
            stats: db.collection("projection_stats"),
            client,
        })
    }

    /// Creates the indexes the list queries use (idempotent).
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        };
        self.todos
            .create_indexes([
                index(
                    doc! { "deleted": 1, "completed": 1, "_id": 1 },
                    "live_completed_id",
                ),
                index(
                    doc! { "deleted": 1, "created_at": 1, "_id": 1 },
                    "live_created_at_id",
                ),
                index(
                    doc! { "deleted": 1, "updated_at": 1, "_id": 1 },
                    "live_updated_at_id",
                ),
                index(
                    doc! { "deleted": 1, "completed": 1, "created_at": 1, "_id": 1 },
                    "live_completed_created_at_id",
                ),
            ])
            .await?;
        Ok(())
    }

    pub async fn ping(&self) -> mongodb::error::Result<()> {
        self.client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await?;
        Ok(())
    }

    /// Applies one event with the version guard described in the module header.
    #[tracing::instrument(skip_all, fields(todo_id = e.todo_id, version = e.version, event_type = %e.event_type))]
    pub async fn apply(&self, e: &Envelope) -> mongodb::error::Result<Applied> {
        let now = timestamp(Utc::now());
        let mut set = doc! {
            "version": e.version,
            "last_event_id": e.event_id.to_string(),
            "last_position": e.position,
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
                set.insert("created_at", timestamp(data.created_at));
                set.insert("updated_at", timestamp(data.updated_at));
                set.insert("deleted", false);
            }
            _ => {
                set.insert("deleted", true);
                set.insert("deleted_at", timestamp(e.occurred_at));
                update.insert(
                    "$unset",
                    doc! { "title": "", "description": "", "completed": "" },
                );
            }
        }
        update.insert("$set", set);
        update.insert("$inc", doc! { "applied_events": 1_i64 });
        let filter = doc! { "_id": e.todo_id, "version": { "$lt": e.version } };
        // A duplicate key means the document existed when the upsert tried to insert it, and
        // did not match the filter then. Once more settles why: if it now matches, another
        // consumer (a replica) inserted an older version between our filter and our insert,
        // and this newer version must still land; if not, what is stored is this version or
        // newer, and the event is a duplicate. Documents are never removed (deletes leave
        // tombstones), so the second try cannot meet a missing document again.
        let upsert = || {
            self.todos
                .update_one(filter.clone(), update.clone())
                .upsert(true)
        };
        match upsert().await {
            Ok(_) => Ok(Applied::Applied),
            Err(err) if is_duplicate_key(&err) => match upsert().await {
                Ok(_) => Ok(Applied::Applied),
                Err(err) if is_duplicate_key(&err) => Ok(Applied::Skipped),
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        }
    }

    /// Counts an outcome in the shared projection counters.
    pub async fn record(
        &self,
        outcome: Outcome,
        occurred_at: Option<DateTime<Utc>>,
    ) -> mongodb::error::Result<()> {
        let field = match outcome {
            Outcome::Applied => "applied",
            Outcome::Skipped => "skipped_duplicates",
            Outcome::DeadLettered => "dead_lettered",
        };
        let mut update = doc! { "$inc": { field: 1_i64 } };
        if let (Outcome::Applied, Some(at)) = (outcome, occurred_at) {
            let now = Utc::now();
            update.insert(
                "$set",
                doc! {
                    "last_applied_at": timestamp(now),
                    "lag_ms": (now - at).num_milliseconds(),
                },
            );
            update.insert("$max", doc! { "last_event_at": timestamp(at) });
        }
        self.stats
            .update_one(doc! { "_id": STATS_ID }, update)
            .upsert(true)
            .await?;
        Ok(())
    }

    pub async fn get(&self, id: i64) -> mongodb::error::Result<Option<Stored>> {
        Ok(self
            .todos
            .find_one(doc! { "_id": id })
            .await?
            .and_then(|d| from_document(&d)))
    }

    /// One page of live todos and whether more follow.
    pub async fn list(&self, q: &ListQuery) -> mongodb::error::Result<(Vec<Todo>, bool)> {
        let mut filter = doc! { "deleted": false };
        if let Some(c) = q.completed {
            filter.insert("completed", c);
        }
        let (op, dir) = if q.descending {
            ("$lt", -1)
        } else {
            ("$gt", 1)
        };
        if let Some(after) = &q.after {
            match (q.sort, &after.v) {
                (SortKey::Id, _) | (_, None) => {
                    filter.insert("_id", doc! { op: after.id });
                }
                (key, Some(v)) => {
                    filter.insert(
                        "$or",
                        vec![
                            Bson::Document(doc! { key.field(): { op: v } }),
                            Bson::Document(doc! { key.field(): v, "_id": { op: after.id } }),
                        ],
                    );
                }
            }
        }
        let sort = if q.sort == SortKey::Id {
            doc! { "_id": dir }
        } else {
            doc! { q.sort.field(): dir, "_id": dir }
        };
        let docs: Vec<Document> = self
            .todos
            .find(filter)
            .sort(sort)
            .limit(q.limit + 1)
            .await?
            .try_collect()
            .await?;
        let more = docs.len() as i64 > q.limit;
        let todos = docs
            .iter()
            .take(q.limit as usize)
            .filter_map(from_document)
            .filter_map(|s| match s {
                Stored::Live(t) => Some(t),
                Stored::Deleted { .. } => None,
            })
            .collect();
        Ok((todos, more))
    }

    pub async fn stats(&self) -> mongodb::error::Result<Stats> {
        let total = self
            .todos
            .count_documents(doc! { "deleted": false })
            .await?;
        let completed = self
            .todos
            .count_documents(doc! { "deleted": false, "completed": true })
            .await?;
        let p = self
            .stats
            .find_one(doc! { "_id": STATS_ID })
            .await?
            .unwrap_or_default();
        let int = |k: &str| p.get(k).and_then(Bson::as_i64).unwrap_or(0);
        let text = |k: &str| p.get_str(k).ok().map(str::to_string);
        Ok(Stats {
            total,
            completed,
            pending: total.saturating_sub(completed),
            projection: ProjectionStats {
                applied: int("applied"),
                skipped_duplicates: int("skipped_duplicates"),
                dead_lettered: int("dead_lettered"),
                last_event_at: text("last_event_at"),
                last_applied_at: text("last_applied_at"),
                lag_ms: p.get("lag_ms").and_then(Bson::as_i64),
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Skipped,
    DeadLettered,
}

fn from_document(d: &Document) -> Option<Stored> {
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
    }))
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
