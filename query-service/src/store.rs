//! The read model in MongoDB.
//!
//! `todos` holds one document per todo, `_id` = the todo id:
//! `{ _id, version, title, description, completed, created_at, updated_at, deleted,
//!    deleted_at?, last_event_id, last_position, projected_at }`.
//! Timestamps are stored as fixed-width RFC 3339 strings with microseconds, so they sort as
//! text and read back exactly as the command side wrote them.
//!
//! Applying an event is one version-guarded upsert: the filter `{_id, version: {$lt: v}}`
//! matches only a document older than the event. A newer or equal document makes the upsert
//! try to insert a second `_id`, which the unique `_id` index refuses (E11000): that is how a
//! duplicate or late event is recognised and skipped. A delete keeps the document as a
//! tombstone with its version, so nothing older can bring the todo back.
//!
//! [`Store::apply_batch`] applies many events in one unordered bulk `update` command: per todo
//! only the newest event of the batch is written (each event carries the todo's full state, so
//! the newest alone gives the same document), through the same guard.
//!
//! `projection_stats` holds one document of counters shared by every replica, updated once per
//! batch.

use bson::{doc, Bson, Document};
use chrono::{DateTime, SecondsFormat, Utc};
use events::{Envelope, EventType};
use futures_util::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

const STATS_ID: &str = "todos";
/// The secondary indexes of `todos`, by name: what the lists sorted by time need to walk an
/// index in the requested order (with and without `completed`), each led by `deleted` so
/// tombstones stay out of the walk. Lists in id order need none: they read by `_id`. The
/// `/stats` counts use the prefixes `deleted` and `deleted, completed`. Each costs write
/// throughput; `scripts/bench.sh` prints the store's upsert rate with each.
pub const INDEXES: &[IndexSpec] = &[
    ("live_created_at_id", &["deleted", "created_at", "_id"]),
    ("live_updated_at_id", &["deleted", "updated_at", "_id"]),
    (
        "live_completed_created_at_id",
        &["deleted", "completed", "created_at", "_id"],
    ),
    (
        "live_completed_updated_at_id",
        &["deleted", "completed", "updated_at", "_id"],
    ),
];

/// An index: its name and its keys (ascending).
pub type IndexSpec = (&'static str, &'static [&'static str]);

/// Index models for `indexes` (ascending keys).
pub fn index_models(indexes: &[IndexSpec]) -> Vec<IndexModel> {
    indexes
        .iter()
        .map(|(name, keys)| {
            let mut spec = Document::new();
            for key in *keys {
                spec.insert(*key, 1);
            }
            IndexModel::builder()
                .keys(spec)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        })
        .collect()
}

/// An index earlier versions created and this one drops.
const RETIRED_INDEX: &str = "live_completed_id";
/// MongoDB's "index not found" error.
const INDEX_NOT_FOUND: i32 = 27;

/// Most ids one page in id order reads (see [`Store::list`]).
pub const ID_SCAN_LIMIT: usize = 2_000;
/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

#[derive(Clone)]
pub struct Store {
    client: Client,
    db: mongodb::Database,
    todos: Collection<Document>,
    stats: Collection<Document>,
}

/// What the projection did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The read model now holds this event's version.
    Applied,
    /// The read model already had this version or a newer one: skipped.
    Duplicate,
    /// A newer event of the same todo in the same batch was applied instead; the read model
    /// holds the newer state, which includes this one's.
    Superseded,
    /// The message could never be applied; it went to the dead-letter queue.
    DeadLettered,
}

/// Why MongoDB refused to write one event of a batch (a write error of the bulk command).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MongoDB refused the write (code {code}): {message}")]
pub struct Refused {
    pub code: i32,
    pub message: String,
}

impl From<&mongodb::error::Error> for Refused {
    fn from(err: &mongodb::error::Error) -> Self {
        let code = match err.kind.as_ref() {
            ErrorKind::Command(c) => c.code,
            ErrorKind::Write(WriteFailure::WriteError(w)) => w.code,
            _ => -1,
        };
        Refused {
            code,
            message: err.to_string(),
        }
    }
}

/// The outcome of each event of a batch, in the batch's order. `None`: not settled, because
/// the newest event of its todo in the batch was refused; apply it again without that one.
pub type BatchResult = Vec<Option<Result<Outcome, Refused>>>;

/// How many events of each outcome a batch had, for the shared counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub applied: i64,
    pub duplicates: i64,
    pub superseded: i64,
    pub dead_lettered: i64,
}

impl Counts {
    pub fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Superseded => self.superseded += 1,
            Outcome::DeadLettered => self.dead_lettered += 1,
        }
    }

    pub fn total(&self) -> i64 {
        self.applied + self.duplicates + self.superseded + self.dead_lettered
    }
}

/// A todo as the read API serves it: the same shape the command side answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub total: u64,
    pub completed: u64,
    pub pending: u64,
    pub projection: ProjectionStats,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProjectionStats {
    pub applied: i64,
    pub skipped_duplicates: i64,
    /// Events folded into a newer event of the same todo in the same batch.
    pub superseded: i64,
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

/// Server error codes that go away by themselves (a node restarting, stepping down, out of
/// reach).
const TRANSIENT_CODES: &[i32] = &[
    6,
    7,
    89,
    91,
    189,
    262,
    9001,
    10107,
    11600,
    11602,
    13435,
    13436,
    63,
    150,
    234,
    133,
    WRITE_CONCERN_FAILED,
];
/// MongoDB's "write concern failed".
const WRITE_CONCERN_FAILED: i32 = 64;

/// Whether an error is the kind that goes away by itself (the server is restarting or out of
/// reach): retried with backoff, never a reason to dead-letter a message.
pub fn is_transient(err: &mongodb::error::Error) -> bool {
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
            db,
            client,
        })
    }

    /// Creates the indexes the list queries use (idempotent); see [`INDEXES`].
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        self.todos.create_indexes(index_models(INDEXES)).await?;
        // Kept by earlier versions for lists in id order, which now read by `_id`; it only
        // cost writes. Absent on new read models.
        if let Err(err) = self.todos.drop_index(RETIRED_INDEX).await {
            if !matches!(err.kind.as_ref(), ErrorKind::Command(c) if c.code == INDEX_NOT_FOUND) {
                tracing::debug!(error = %err, index = RETIRED_INDEX, "retired index not dropped");
            }
        }
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
    pub async fn apply(&self, e: &Envelope) -> mongodb::error::Result<Outcome> {
        let (filter, update) = guarded_upsert(e);
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
            Ok(_) => Ok(Outcome::Applied),
            Err(err) if is_duplicate_key(&err) => match upsert().await {
                Ok(_) => Ok(Outcome::Applied),
                Err(err) if is_duplicate_key(&err) => Ok(Outcome::Duplicate),
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        }
    }

    /// Applies a batch of events in one bulk command (see the module header). The result has
    /// one entry per event, in order. An error is the whole command failing (nothing can be
    /// said of any event); a [`Refused`] entry is MongoDB refusing that event's write; the
    /// older events of that todo in the batch are left unsettled (`None`).
    pub async fn apply_batch(&self, events: &[Envelope]) -> mongodb::error::Result<BatchResult> {
        self.apply_batch_between_tries(events, || async {}).await
    }

    /// [`Store::apply_batch`], running `between_tries` after a first try that met duplicate
    /// keys and before the second: the moment at which, in a race, another replica's insert
    /// has landed. A test uses it to be that replica, since a server that runs one command at
    /// a time never interleaves two replicas' upserts by itself.
    pub async fn apply_batch_between_tries<F, Fut>(
        &self,
        events: &[Envelope],
        mut between_tries: F,
    ) -> mongodb::error::Result<BatchResult>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        // The newest event of each todo is written; the others follow its fate.
        let mut newest: HashMap<i64, usize> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            let slot = newest.entry(e.todo_id).or_insert(i);
            if e.version > events[*slot].version {
                *slot = i;
            }
        }
        let mut written: Vec<usize> = newest.into_values().collect();
        written.sort_unstable();
        let mut results: HashMap<usize, Result<Outcome, Refused>> = HashMap::new();
        let mut pending = written;
        // A duplicate key is tried once more, for the reason `apply` gives.
        for attempt in 0..2 {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                between_tries().await;
            }
            let errors = self
                .bulk_upsert(pending.iter().map(|&i| &events[i]))
                .await?;
            let mut again = Vec::new();
            for (k, &i) in pending.iter().enumerate() {
                match errors.get(&k) {
                    None => {
                        if attempt > 0 {
                            tracing::debug!(
                                todo_id = events[i].todo_id,
                                version = events[i].version,
                                "applied on the second try: another writer inserted the todo first"
                            );
                        }
                        results.insert(i, Ok(Outcome::Applied));
                    }
                    Some(r) if r.code == DUPLICATE_KEY && attempt == 0 => again.push(i),
                    Some(r) if r.code == DUPLICATE_KEY => {
                        results.insert(i, Ok(Outcome::Duplicate));
                    }
                    Some(r) => {
                        results.insert(i, Err(r.clone()));
                    }
                }
            }
            pending = again;
        }
        Ok(events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if let Some(result) = results.get(&i) {
                    return Some(result.clone());
                }
                // Not written itself: the written event of its todo decides.
                let (j, _) = results
                    .iter()
                    .find(|(j, _)| events[**j].todo_id == e.todo_id)
                    .expect("every todo of the batch has a written event");
                match &results[j] {
                    Ok(Outcome::Applied) if events[*j].version > e.version => {
                        Some(Ok(Outcome::Superseded))
                    }
                    Ok(_) => Some(Ok(Outcome::Duplicate)),
                    Err(_) => None,
                }
            })
            .collect())
    }

    /// [`Store::apply_batch`] until every event is settled: the older events of a todo whose
    /// newest one was refused are applied again without it.
    pub async fn apply_all(
        &self,
        events: &[Envelope],
    ) -> mongodb::error::Result<Vec<Result<Outcome, Refused>>> {
        let mut results: Vec<Option<Result<Outcome, Refused>>> = vec![None; events.len()];
        loop {
            let open: Vec<usize> = (0..events.len())
                .filter(|&k| results[k].is_none())
                .collect();
            if open.is_empty() {
                return Ok(results.into_iter().flatten().collect());
            }
            let subset: Vec<Envelope> = open.iter().map(|&k| events[k].clone()).collect();
            for (&k, result) in open.iter().zip(self.apply_batch(&subset).await?) {
                results[k] = result;
            }
        }
    }

    /// One unordered `update` command of version-guarded upserts. Returns the write errors by
    /// the index of the event in `events`.
    async fn bulk_upsert<'a>(
        &self,
        events: impl Iterator<Item = &'a Envelope>,
    ) -> mongodb::error::Result<HashMap<usize, Refused>> {
        let updates: Vec<&Envelope> = events.collect();
        let reply = self
            .db
            .run_command(bulk_upsert_command(
                self.todos.name(),
                updates.iter().copied(),
            ))
            .await?;
        let mut errors = HashMap::new();
        if let Ok(list) = reply.get_array("writeErrors") {
            let int = |d: &Document, k: &str| {
                d.get(k)
                    .and_then(|v| v.as_i32().or_else(|| v.as_i64().map(|n| n as i32)))
            };
            for item in list {
                let Some(e) = item.as_document() else {
                    continue;
                };
                let (Some(index), Some(code)) = (int(e, "index"), int(e, "code")) else {
                    return Err(mongodb::error::Error::custom(format!(
                        "a write error the bulk reply does not tie to an event: {e}"
                    )));
                };
                let message = e.get_str("errmsg").unwrap_or("").to_string();
                errors.insert(index.max(0) as usize, Refused { code, message });
            }
        }
        if let Ok(wce) = reply.get_document("writeConcernError") {
            // The writes may not be durable: every one of them is refused for now, and tried
            // again (the guard makes a write that did land a duplicate).
            let message = format!("write concern error: {wce}");
            for (index, _) in updates.iter().enumerate() {
                errors.entry(index).or_insert(Refused {
                    code: WRITE_CONCERN_FAILED,
                    message: message.clone(),
                });
            }
        }
        Ok(errors)
    }

    /// Adds a batch's outcomes to the shared projection counters and raises the highest todo
    /// id seen, which lists in id order walk up to (one update).
    pub async fn record(
        &self,
        counts: Counts,
        newest_event: Option<DateTime<Utc>>,
        max_todo_id: i64,
    ) -> mongodb::error::Result<()> {
        let mut max = doc! { "max_todo_id": max_todo_id };
        let mut update = doc! { "$inc": {
            "applied": counts.applied,
            "skipped_duplicates": counts.duplicates,
            "superseded": counts.superseded,
            "dead_lettered": counts.dead_lettered,
        } };
        if let (true, Some(at)) = (counts.applied > 0, newest_event) {
            let now = Utc::now();
            update.insert(
                "$set",
                doc! {
                    "last_applied_at": timestamp(now),
                    "lag_ms": (now - at).num_milliseconds(),
                },
            );
            max.insert("last_event_at", timestamp(at));
        }
        update.insert("$max", max);
        self.stats
            .update_one(doc! { "_id": STATS_ID }, update)
            .upsert(true)
            .await?;
        Ok(())
    }

    pub async fn get(&self, id: i64) -> mongodb::error::Result<Option<Stored>> {
        self.todos
            .find_one(doc! { "_id": id })
            .await?
            .map(|d| read_document(&d))
            .transpose()
    }

    /// The stored documents of `ids` (point reads), by id; `None` for a document this version
    /// cannot read.
    pub async fn get_many(
        &self,
        ids: &[i64],
    ) -> mongodb::error::Result<HashMap<i64, Option<Stored>>> {
        let docs: Vec<Document> = self
            .todos
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .try_collect()
            .await?;
        Ok(docs
            .iter()
            .filter_map(|d| Some((d.get_i64("_id").ok()?, from_document(d))))
            .collect())
    }

    /// Every todo id the read model holds, live or deleted (reads the whole collection).
    pub async fn all_ids(&self) -> mongodb::error::Result<Vec<i64>> {
        let docs: Vec<Document> = self
            .todos
            .find(doc! {})
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().filter_map(|d| d.get_i64("_id").ok()).collect())
    }

    /// One page of live todos, and the cursor of the next page when more may follow.
    pub async fn list(&self, q: &ListQuery) -> mongodb::error::Result<(Vec<Todo>, Option<Cursor>)> {
        if q.sort == SortKey::Id {
            return self.list_by_id(q).await;
        }
        let mut filter = doc! { "deleted": false };
        if let Some(c) = q.completed {
            filter.insert("completed", c);
        }
        let (op, dir) = if q.descending {
            ("$lt", -1)
        } else {
            ("$gt", 1)
        };
        let key = q.sort.field();
        if let Some(after) = &q.after {
            // A time-ordered cursor carries its time (`list_query` refuses one that does not).
            let v = after.v.clone().unwrap_or_default();
            filter.insert(
                "$or",
                vec![
                    Bson::Document(doc! { key: { op: &v } }),
                    Bson::Document(doc! { key: &v, "_id": { op: after.id } }),
                ],
            );
        }
        let sort = doc! { key: dir, "_id": dir };
        let docs: Vec<Document> = self
            .todos
            .find(filter)
            .sort(sort)
            .limit(q.limit + 1)
            .await?
            .try_collect()
            .await?;
        let more = docs.len() as i64 > q.limit;
        let todos: Vec<Todo> = docs
            .iter()
            .take(q.limit as usize)
            .map(read_document)
            .collect::<mongodb::error::Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|s| match s {
                Stored::Live(t) => Some(t),
                Stored::Deleted { .. } => None,
            })
            .collect();
        let next = match todos.last() {
            Some(last) if more => Some(Cursor {
                v: Some(timestamp(match q.sort {
                    SortKey::UpdatedAt => last.updated_at,
                    _ => last.created_at,
                })),
                id: last.id,
            }),
            _ => None,
        };
        Ok((todos, next))
    }

    /// A page in id order, read by id: todo ids come from PostgreSQL's identity, dense but for
    /// the ids of creates that rolled back, so the next page is among the next ids. Each round reads a window of ids with one `_id: {$in: …}`
    /// lookup (a point read per id on any store, and in `_id` order without a sort), and
    /// filters out tombstones and other `completed` values. Windows start at `limit + 1` ids
    /// and double while they come back short, up to [`ID_SCAN_LIMIT`] ids per page; a page
    /// that stopped there may be short (even empty) and still have a next link.
    async fn list_by_id(
        &self,
        q: &ListQuery,
    ) -> mongodb::error::Result<(Vec<Todo>, Option<Cursor>)> {
        let limit = q.limit as usize;
        let desc = q.descending;
        // Ids lie in 1..=max; `max` is read only when a walk must know where the ids end.
        let mut max: Option<i64> = None;
        let mut position = match (&q.after, desc) {
            (Some(c), _) => c.id,
            (None, false) => 0,
            (None, true) => *max.insert(self.max_todo_id().await?) + 1,
        };
        let mut found: Vec<Todo> = Vec::with_capacity(limit + 1);
        let mut window = limit as i64 + 1;
        let mut scanned = 0;
        let exhausted = loop {
            let ids: Vec<i64> = if desc {
                ((position - window).max(1)..position).rev().collect()
            } else {
                (position + 1..=position.saturating_add(window)).collect()
            };
            let Some(&last) = ids.last() else {
                break true;
            };
            scanned += ids.len();
            let docs: Vec<Document> = self
                .todos
                .find(doc! { "_id": { "$in": &ids } })
                .sort(doc! { "_id": if desc { -1 } else { 1 } })
                .await?
                .try_collect()
                .await?;
            for stored in docs
                .iter()
                .map(read_document)
                .collect::<mongodb::error::Result<Vec<_>>>()?
            {
                if let Stored::Live(t) = stored {
                    if q.completed.is_none_or(|c| c == t.completed) && found.len() <= limit {
                        found.push(t);
                    }
                }
            }
            position = last;
            if found.len() > limit {
                break false;
            }
            let beyond = if desc {
                position > 1
            } else {
                let max = match max {
                    Some(m) => m,
                    None => *max.insert(self.max_todo_id().await?),
                };
                position < max
            };
            if !beyond {
                break true;
            }
            if scanned >= ID_SCAN_LIMIT {
                break false;
            }
            window = (window * 2).min((ID_SCAN_LIMIT - scanned) as i64);
        };
        let next = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|t| Cursor { v: None, id: t.id })
        } else if exhausted {
            None
        } else {
            Some(Cursor {
                v: None,
                id: position,
            })
        };
        Ok((found, next))
    }

    /// The highest todo id the read model has seen (0 for none). A read model projected before
    /// this figure was kept gets it once from the collection itself.
    pub async fn max_todo_id(&self) -> mongodb::error::Result<i64> {
        let kept = self
            .stats
            .find_one(doc! { "_id": STATS_ID })
            .projection(doc! { "max_todo_id": 1 })
            .await?
            .and_then(|d| d.get("max_todo_id").and_then(Bson::as_i64));
        if let Some(max) = kept {
            return Ok(max);
        }
        let newest = self
            .todos
            .find_one(doc! {})
            .sort(doc! { "_id": -1 })
            .projection(doc! { "_id": 1 })
            .await?
            .and_then(|d| d.get_i64("_id").ok())
            .unwrap_or(0);
        self.stats
            .update_one(
                doc! { "_id": STATS_ID },
                doc! { "$max": { "max_todo_id": newest } },
            )
            .upsert(true)
            .await?;
        Ok(newest)
    }

    /// How many live todos there are, and how many of them are completed. Counting reads
    /// every live todo's index entry (every document, on a store that scans): callers cache it.
    pub async fn counts(&self) -> mongodb::error::Result<(u64, u64)> {
        let total = self
            .todos
            .count_documents(doc! { "deleted": false })
            .await?;
        let completed = self
            .todos
            .count_documents(doc! { "deleted": false, "completed": true })
            .await?;
        Ok((total, completed))
    }

    /// The shared projection counters (one point read).
    pub async fn projection_stats(&self) -> mongodb::error::Result<ProjectionStats> {
        let p = self
            .stats
            .find_one(doc! { "_id": STATS_ID })
            .await?
            // No counters document yet: no batch was ever recorded, every figure is 0.
            .unwrap_or_default();
        let int = |k: &str| p.get(k).and_then(Bson::as_i64).unwrap_or(0);
        let text = |k: &str| p.get_str(k).ok().map(str::to_string);
        Ok(ProjectionStats {
            applied: int("applied"),
            skipped_duplicates: int("skipped_duplicates"),
            superseded: int("superseded"),
            dead_lettered: int("dead_lettered"),
            last_event_at: text("last_event_at"),
            last_applied_at: text("last_applied_at"),
            lag_ms: p.get("lag_ms").and_then(Bson::as_i64),
        })
    }
}

/// The unordered bulk `update` command of the version-guarded upserts of `events` (what
/// [`Store::apply_batch`] sends; `scripts/bench.sh` sends it straight to the store for the
/// store's own rate).
pub fn bulk_upsert_command<'a>(
    collection: &str,
    events: impl Iterator<Item = &'a Envelope>,
) -> Document {
    let updates: Vec<Document> = events
        .map(|e| {
            let (q, u) = guarded_upsert(e);
            doc! { "q": q, "u": u, "upsert": true }
        })
        .collect();
    doc! { "update": collection, "updates": updates, "ordered": false }
}

/// The version-guarded upsert of one event: its filter and its update.
fn guarded_upsert(e: &Envelope) -> (Document, Document) {
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
    let filter = doc! { "_id": e.todo_id, "version": { "$lt": e.version } };
    (filter, update)
}

/// [`from_document`] for a read that answers a client: a document this version cannot read is
/// an error (500 on the API), never taken for a missing todo.
fn read_document(d: &Document) -> mongodb::error::Result<Stored> {
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
