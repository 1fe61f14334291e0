//! The read model in MongoDB: the [`Store`] handle, its connection and indexes, and the types
//! the service shares.
//!
//! `todos` holds one document per todo, `_id` = the todo id (its fields and their mapping to a
//! [`Todo`]: `document.rs`); `projection_stats` holds one document of counters shared by every
//! replica. The rest of the store lives by concern:
//!
//! - `projection.rs`: the version-guarded writes of events, one by one and in bulk, and the
//!   shared counters;
//! - `reads.rs`: point reads, pages of todos, counts and the projection's stats;
//! - `document.rs`: stored documents to and from todos, timestamps, the guarded upsert itself.

mod document;
pub mod generations;
mod projection;
mod reads;

pub use document::{completed_prefix, document_after, sort_key, timestamp, SORT_KEYS};
pub use projection::{bulk_upsert_command, BatchResult, Counts, Highest, Outcome, Refused};
pub use reads::{
    Cursor, ListQuery, ProjectionStats, ReadError, ReadModelStats, ReplayPage, SortKey, Stats,
    ID_SCAN_LIMIT,
};

use bson::{doc, Document};
use chrono::{DateTime, Utc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, IndexModel};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `_id` of the one document of `projection_stats`.
const STATS_ID: &str = "todos";
/// The flag of `projection_stats` that says the counts of live and completed todos are kept
/// there (every read model this version started, and older ones once counted).
const COUNTS_KEPT: &str = "counts_kept";
/// The secondary indexes of `todos`, by name. The lists sorted by time walk one of the six
/// sort keys (`document::SortKeys`: one string field per order, the sort value and the id,
/// led by `completed` for the filtered lists), each a single-field index that only live todos
/// are in (sparse: a tombstone has no sort keys). A page is one bounded range of one field,
/// in the field's order: an index walk with no sort stage on any store. Lists in id order
/// need none: they read by `_id`. Each costs write throughput; `scripts/bench.sh` prints the
/// store's upsert rate with each.
pub const INDEXES: &[IndexSpec] = &[
    ("sort_created", &["sort_created"], true),
    ("sort_updated", &["sort_updated"], true),
    ("sort_completed_created", &["sort_completed_created"], true),
    ("sort_completed_updated", &["sort_completed_updated"], true),
    // Todos with a due date only: the lists in due-date order and the overdue filter.
    ("sort_due", &["sort_due"], true),
    ("sort_completed_due", &["sort_completed_due"], true),
    // `GET /todos/stream`'s replay for a client reconnecting with `Last-Event-ID` walks the
    // read model in the order of each document's last change.
    ("last_position", &["last_position"], false),
];

/// An index: its name, its keys (ascending) and whether it is sparse.
pub type IndexSpec = (&'static str, &'static [&'static str], bool);

/// Index models for `indexes` (ascending keys).
pub fn index_models(indexes: &[IndexSpec]) -> Vec<IndexModel> {
    indexes
        .iter()
        .map(|(name, keys, sparse)| {
            let mut spec = Document::new();
            for key in *keys {
                spec.insert(*key, 1);
            }
            IndexModel::builder()
                .keys(spec)
                .options(
                    IndexOptions::builder()
                        .name(name.to_string())
                        .sparse(*sparse)
                        .build(),
                )
                .build()
        })
        .collect()
}

/// Indexes earlier versions created and this one drops: the compound `deleted, <time>, _id`
/// indexes the time-ordered lists used before the sort keys (a store that cannot walk a
/// compound index past an equality prefix sorted every page in memory), and one the lists in
/// id order used.
const RETIRED_INDEXES: &[&str] = &[
    "live_completed_id",
    "live_created_at_id",
    "live_updated_at_id",
    "live_completed_created_at_id",
    "live_completed_updated_at_id",
];
/// MongoDB's "index not found" error.
const INDEX_NOT_FOUND: i32 = 27;

#[derive(Clone)]
pub struct Store {
    client: Client,
    db: mongodb::Database,
    /// The read model's generations and the pointer to the one reads follow, shared by every
    /// copy of the handle (`generations.rs`).
    generations: std::sync::Arc<generations::Generations>,
    /// The generation this handle reads and writes whatever the pointer says: set by
    /// [`Store::pinned`] for work that must stay on one generation (a batch, a replay).
    pinned: Option<std::sync::Arc<generations::Generation>>,
}

/// A todo as the read API serves it: the same shape the command side answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Todo {
    pub id: i64,
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the todo is due; `null` when it has no due date.
    pub due_at: Option<DateTime<Utc>>,
    /// When its title and description were erased; `null` when never (its title then reads
    /// `(erased)`).
    #[serde(default)]
    pub erased_at: Option<DateTime<Utc>>,
}

impl Todo {
    /// The todo an event leaves behind; `None` for a deletion.
    pub fn after(e: &events::Envelope) -> Option<Todo> {
        match (&e.event_type, &e.data) {
            (events::EventType::TodoCreated | events::EventType::TodoUpdated, Some(data)) => {
                Some(Todo {
                    id: e.todo_id,
                    title: data.title.clone(),
                    description: data.description.clone(),
                    completed: data.completed,
                    version: e.version,
                    created_at: data.created_at,
                    updated_at: data.updated_at,
                    due_at: data.due_at,
                    erased_at: data.erased_at,
                })
            }
            _ => None,
        }
    }
}

/// One stored document: a live todo or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Live(Todo),
    Deleted { version: i64 },
}

impl Stored {
    /// What the read model holds once `e` is applied.
    pub fn after(e: &events::Envelope) -> Stored {
        match Todo::after(e) {
            Some(todo) => Stored::Live(todo),
            None => Stored::Deleted { version: e.version },
        }
    }

    pub fn version(&self) -> i64 {
        match self {
            Stored::Live(t) => t.version,
            Stored::Deleted { version } => *version,
        }
    }
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

/// Whether a write met an existing `_id` (or another unique key).
pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    const DUPLICATE_KEY: i32 = 11000;
    match err.kind.as_ref() {
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
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
            generations: std::sync::Arc::new(generations::Generations::new(db.clone())),
            pinned: None,
            db,
            client,
        })
    }

    /// Creates the indexes the list queries use (idempotent); see [`INDEXES`].
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        // Reads and writes follow the pointer: read it before anything else.
        self.refresh_pointer().await?;
        self.gen().ensure_indexes().await
    }

    pub async fn ping(&self) -> mongodb::error::Result<()> {
        self.client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await?;
        Ok(())
    }
}

impl generations::Generation {
    /// Creates this generation's indexes (idempotent); see [`INDEXES`].
    pub(crate) async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        self.todos.create_indexes(index_models(INDEXES)).await?;
        // A read model that starts empty keeps its counts from the first batch on.
        if self.todos.find_one(doc! {}).await?.is_none() {
            self.stats
                .update_one(
                    doc! { "_id": STATS_ID },
                    doc! { "$setOnInsert": { COUNTS_KEPT: true, "sort_keys": 1 } },
                )
                .upsert(true)
                .await?;
        }
        // Kept by earlier versions; they only cost writes now. Absent on new read models.
        for index in RETIRED_INDEXES {
            if let Err(err) = self.todos.drop_index(*index).await {
                if !matches!(err.kind.as_ref(), ErrorKind::Command(c) if c.code == INDEX_NOT_FOUND)
                {
                    tracing::debug!(error = %err, index, "retired index not dropped");
                }
            }
        }
        Ok(())
    }
}
