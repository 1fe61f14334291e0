//! The commands, the todo they answer, the ways they fail, and the SQL they run. Each command
//! changes the todo row and appends its event to `events` (the transactional outbox) in one
//! statement or one transaction, so a todo never changes without its event and no event exists
//! for a change that did not commit. Writers share no lock: see [`crate::event_log`] for how
//! events get their position afterwards. A create with an `Idempotency-Key` stores its answer
//! in the same transaction, through [`crate::idempotency`].

use crate::db::{bind, prepared, PgPool, PooledConn};
use crate::event_log::{self, LogError};
use crate::idempotency::{self, Replayed};
use crate::input::{TodoInput, TodoPatch};
use crate::schema::todos;
use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use events::{Field, TodoState};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

/// The write side's entry point: the pool, the wake-up every committed write gives the
/// sequencer (in-process: no `NOTIFY`, which would serialize the commits of all writers), and
/// the stored answers of `Idempotency-Key` requests.
#[derive(Clone)]
pub struct Commands {
    pool: PgPool,
    wake: Wake,
    keys: idempotency::Keys,
}

/// The in-process wake-ups between the writers, the sequencer and the relay.
#[derive(Clone, Default)]
pub struct Wake {
    /// A write committed: the sequencer has events to stamp.
    pub appended: Arc<Notify>,
    /// Events got positions: the relay has events to publish.
    pub stamped: Arc<Notify>,
}

impl Commands {
    pub fn new(pool: PgPool, wake: Wake, keys: idempotency::Keys) -> Self {
        Self { pool, wake, keys }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn appended(&self) {
        self.wake.appended.notify_one();
    }
}

/// PostgreSQL as `GET /ready` and `GET /metrics` ask it, on a pool of its own
/// ([`crate::db::PROBE_CONNECTIONS`] connections with [`crate::db::Limits::for_probes`]): a
/// write pool exhausted by slow or stalled writers never makes a probe wait or fail, and a write
/// never waits for a connection a probe holds.
#[derive(Clone)]
pub struct Probes {
    pool: PgPool,
}

impl Probes {
    /// Builds the probe pool; like every pool it connects on demand.
    pub fn new(database_url: &str, limits: crate::db::Limits) -> anyhow::Result<Self> {
        Ok(Self {
            pool: crate::db::pool(
                database_url,
                crate::db::PROBE_CONNECTIONS,
                limits.for_probes(),
            )?,
        })
    }

    /// Events committed but not yet confirmed by RabbitMQ, and why the last publish failed.
    pub async fn outbox(&self) -> Result<event_log::Outbox, CommandError> {
        let mut conn = conn(&self.pool).await?;
        Ok(event_log::outbox(&mut conn).await?)
    }

    /// Whether PostgreSQL answers.
    pub async fn ping(&self) -> Result<(), CommandError> {
        #[derive(QueryableByName)]
        struct One {
            #[diesel(sql_type = Bool)]
            #[allow(dead_code)]
            ok: bool,
        }
        let mut conn = conn(&self.pool).await?;
        let _: One = diesel::sql_query("SELECT true AS ok")
            .get_result(&mut conn)
            .await?;
        Ok(())
    }
}

/// Why a command did not happen. Nothing here knows HTTP: `crate::error` maps each case to
/// its answer once, at the edge.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("todo {0} does not exist")]
    NotFound(i64),
    /// `If-Match` did not match; `current` is the todo's version, `None` when it does not
    /// exist (`If-Match: *` on a missing todo).
    #[error("precondition failed: current version is {current:?}")]
    PreconditionFailed { current: Option<i64> },
    #[error("Idempotency-Key reused with a different request")]
    IdempotencyKeyReused,
    /// PostgreSQL cannot serve now (down, a timeout, the pool exhausted): nothing changed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<diesel::result::Error> for CommandError {
    fn from(err: diesel::result::Error) -> Self {
        if crate::db::is_unavailable(&err) {
            CommandError::Unavailable(err.to_string())
        } else {
            CommandError::Internal(anyhow::Error::new(err).context("database query failed"))
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for CommandError {
    fn from(err: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        // Timeouts waiting for a connection and failures to open one both mean PostgreSQL is
        // not reachable right now.
        CommandError::Unavailable(err.to_string())
    }
}

impl From<LogError> for CommandError {
    fn from(err: LogError) -> Self {
        match err {
            LogError::Db(e) => e.into(),
            corrupt @ LogError::Corrupt { .. } => CommandError::Internal(corrupt.into()),
        }
    }
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Queryable,
    Selectable,
    QueryableByName,
    utoipa::ToSchema,
)]
#[diesel(table_name = todos)]
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
}

/// The fields a write sets: what a `PUT` gives whole and a `PATCH` leaves or changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    title: String,
    description: Option<String>,
    completed: bool,
    due_at: Option<DateTime<Utc>>,
}

impl Fields {
    fn of(input: &TodoInput) -> Self {
        Fields {
            title: input.title.clone(),
            description: input.description.clone(),
            completed: input.completed,
            due_at: input.due_at,
        }
    }
}

/// The JSON of an event's `data`: the todo's full state after the change.
fn state_json(
    fields: &Fields,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
) -> Result<serde_json::Value, CommandError> {
    serde_json::to_value(TodoState {
        title: fields.title.clone(),
        description: fields.description.clone(),
        completed: fields.completed,
        created_at,
        updated_at,
        due_at: fields.due_at,
    })
    .map_err(|e| CommandError::Internal(anyhow::Error::new(e)))
}

/// Which of the two update routes a change came from.
#[derive(Debug, Clone)]
pub enum Change {
    Patch(TodoPatch),
    Put(TodoInput),
}

/// `If-Match` as the handler parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    Any,
    Versions(Vec<i64>),
}

impl Precondition {
    fn check(&self, current: i64) -> Result<(), CommandError> {
        match self {
            Precondition::Any => Ok(()),
            Precondition::Versions(v) if v.contains(&current) => Ok(()),
            Precondition::Versions(_) => Err(CommandError::PreconditionFailed {
                current: Some(current),
            }),
        }
    }
}

/// The answer for a todo that does not exist: `If-Match: *` is false when there is no current
/// representation (RFC 9110 13.1.1), so 412; otherwise 404.
fn missing(id: i64, precondition: Option<&Precondition>) -> CommandError {
    match precondition {
        Some(Precondition::Any) => CommandError::PreconditionFailed { current: None },
        _ => CommandError::NotFound(id),
    }
}

/// What `create` answers: a new todo, or the stored answer of an earlier identical request.
#[derive(Debug)]
pub enum Created {
    New(Todo),
    Replayed(Replayed),
}

/// Errors inside a transaction: a command error, or "another request with the same
/// Idempotency-Key committed first" (roll back, then replay its response).
enum TxError {
    Command(CommandError),
    KeyTaken,
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Command(e.into())
    }
}

impl From<CommandError> for TxError {
    fn from(e: CommandError) -> Self {
        TxError::Command(e)
    }
}

/// PostgreSQL keeps microseconds: truncate so what we return equals what a re-read returns.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

async fn conn(pool: &PgPool) -> Result<PooledConn, CommandError> {
    Ok(pool.get().await?)
}

/// Inserts the todo and its `TodoCreated` in one statement: one round trip, and on its own an
/// implicit transaction. `scripts/bench.sh` runs this very statement under pgbench.
pub const CREATE: &str = "\
WITH todo AS ( \
  INSERT INTO todos (title, description, completed, version, created_at, updated_at, due_at) \
  VALUES ($1, $2, $3, 1, $4, $4, $8) \
  RETURNING id, title, description, completed, version, created_at, updated_at, due_at \
), event AS ( \
  INSERT INTO events (event_id, event_type, todo_id, version, occurred_at, correlation_id, data) \
  SELECT $5, 'TodoCreated', id, 1, $4, $6, $7 FROM todo \
) \
SELECT id, title, description, completed, version, created_at, updated_at, due_at FROM todo";

/// Sets the new state and appends its `TodoUpdated` in one statement (after `locked`).
const UPDATE: &str = "\
WITH todo AS ( \
  UPDATE todos SET title = $2, description = $3, completed = $4, version = version + 1, \
                   updated_at = $5, due_at = $10 \
  WHERE id = $1 \
  RETURNING id, title, description, completed, version, created_at, updated_at, due_at \
), event AS ( \
  INSERT INTO events (event_id, event_type, todo_id, version, occurred_at, correlation_id, \
                      data, changed) \
  SELECT $6, 'TodoUpdated', id, version, $5, $7, $8, $9 FROM todo \
) \
SELECT id, title, description, completed, version, created_at, updated_at, due_at FROM todo";

/// Removes the row and appends its `TodoDeleted` (the next version) in one statement.
const DELETE: &str = "\
WITH gone AS ( \
  DELETE FROM todos WHERE id = $1 RETURNING id, version + 1 AS version \
), event AS ( \
  INSERT INTO events (event_id, event_type, todo_id, version, occurred_at, correlation_id) \
  SELECT $2, 'TodoDeleted', id, version, $3, $4 FROM gone \
) \
SELECT version AS n FROM gone";

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn insert_todo(
    conn: &mut AsyncPgConnection,
    input: &TodoInput,
    correlation_id: &str,
) -> Result<Todo, CommandError> {
    let at = now();
    let data = state_json(&Fields::of(input), at, at)?;
    let statement = prepared(
        CREATE,
        (
            bind::<Text, _>(&input.title),
            bind::<Nullable<Text>, _>(&input.description),
            bind::<Bool, _>(input.completed),
            bind::<Timestamptz, _>(at),
            bind::<SqlUuid, _>(Uuid::now_v7()),
            bind::<Text, _>(correlation_id),
            bind::<Jsonb, _>(data),
            bind::<Nullable<Timestamptz>, _>(input.due_at),
        ),
    );
    Ok(statement.get_result(conn).await?)
}

impl Commands {
    /// `POST /todos`.
    #[tracing::instrument(skip_all, fields(correlation_id))]
    pub async fn create(
        &self,
        input: TodoInput,
        idempotency: Option<idempotency::Key>,
        correlation_id: &str,
    ) -> Result<Created, CommandError> {
        let mut pooled = conn(&self.pool).await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        let Some(key) = idempotency else {
            let todo = insert_todo(conn, &input, correlation_id).await?;
            self.appended();
            tracing::info!(todo_id = todo.id, version = todo.version, "todo created");
            return Ok(Created::New(todo));
        };
        if let Some(replay) = self.keys.replay(conn, &key).await? {
            return Ok(Created::Replayed(replay));
        }
        let result = conn
            .transaction::<_, TxError, _>(async |conn| {
                let todo = insert_todo(conn, &input, correlation_id).await?;
                if !self.keys.remember(conn, &key, &todo).await? {
                    return Err(TxError::KeyTaken);
                }
                Ok(todo)
            })
            .await;
        match result {
            Ok(todo) => {
                self.appended();
                tracing::info!(todo_id = todo.id, version = todo.version, "todo created");
                Ok(Created::New(todo))
            }
            Err(TxError::Command(e)) => Err(e),
            // A concurrent request with the same key committed while we worked: our
            // transaction rolled back, so answer with what it stored.
            Err(TxError::KeyTaken) => self
                .keys
                .replay(conn, &key)
                .await?
                .map(Created::Replayed)
                .ok_or_else(|| {
                    CommandError::Internal(anyhow::anyhow!(
                        "idempotency key vanished after conflict"
                    ))
                }),
        }
    }

    /// `PATCH` and `PUT /todos/{id}`. A change that leaves every field as it is answers the
    /// current state and writes no event.
    #[tracing::instrument(skip_all, fields(todo_id = id, correlation_id))]
    pub async fn update(
        &self,
        id: i64,
        change: Change,
        precondition: Option<Precondition>,
        correlation_id: &str,
    ) -> Result<Todo, CommandError> {
        let mut pooled = conn(&self.pool).await?;
        let (todo, written) = (&mut *pooled as &mut AsyncPgConnection)
            .transaction::<_, CommandError, _>(async |conn| {
                let current = locked(conn, id)
                    .await?
                    .ok_or_else(|| missing(id, precondition.as_ref()))?;
                if let Some(p) = &precondition {
                    p.check(current.version)?;
                }
                let fields = match &change {
                    Change::Put(input) => Fields::of(input),
                    Change::Patch(p) => Fields {
                        title: p.title.clone().unwrap_or_else(|| current.title.clone()),
                        description: p
                            .description
                            .clone()
                            .unwrap_or_else(|| current.description.clone()),
                        completed: p.completed.unwrap_or(current.completed),
                        due_at: p.due_at.unwrap_or(current.due_at),
                    },
                };
                let mut changed = Vec::new();
                if fields.title != current.title {
                    changed.push(Field::Title);
                }
                if fields.description != current.description {
                    changed.push(Field::Description);
                }
                if fields.completed != current.completed {
                    changed.push(Field::Completed);
                }
                if fields.due_at != current.due_at {
                    changed.push(Field::DueAt);
                }
                if changed.is_empty() {
                    return Ok((current, false));
                }
                let at = now();
                let data = state_json(&fields, current.created_at, at)?;
                let changed = serde_json::to_value(&changed)
                    .map_err(|e| CommandError::Internal(anyhow::Error::new(e)))?;
                let statement = prepared(
                    UPDATE,
                    (
                        bind::<BigInt, _>(id),
                        bind::<Text, _>(&fields.title),
                        bind::<Nullable<Text>, _>(&fields.description),
                        bind::<Bool, _>(fields.completed),
                        bind::<Timestamptz, _>(at),
                        bind::<SqlUuid, _>(Uuid::now_v7()),
                        bind::<Text, _>(correlation_id),
                        bind::<Jsonb, _>(data),
                        bind::<Jsonb, _>(changed),
                        bind::<Nullable<Timestamptz>, _>(fields.due_at),
                    ),
                );
                let todo: Todo = statement.get_result(conn).await?;
                Ok((todo, true))
            })
            .await?;
        if written {
            self.appended();
            tracing::info!(todo_id = id, version = todo.version, "todo updated");
        }
        Ok(todo)
    }

    /// `DELETE /todos/{id}`: removes the row and appends `TodoDeleted` with the next version.
    /// Returns that version.
    #[tracing::instrument(skip_all, fields(todo_id = id, correlation_id))]
    pub async fn delete(
        &self,
        id: i64,
        precondition: Option<Precondition>,
        correlation_id: &str,
    ) -> Result<i64, CommandError> {
        let mut pooled = conn(&self.pool).await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        let not_found = || CommandError::NotFound(id);
        let version = match &precondition {
            // No precondition: one statement.
            None => delete_row(conn, id, correlation_id)
                .await?
                .ok_or_else(not_found)?,
            Some(p) => {
                conn.transaction::<_, CommandError, _>(async |conn| {
                    let current = locked(conn, id)
                        .await?
                        .ok_or_else(|| missing(id, Some(p)))?;
                    p.check(current.version)?;
                    delete_row(conn, id, correlation_id)
                        .await?
                        .ok_or_else(not_found)
                })
                .await?
            }
        };
        self.appended();
        tracing::info!(todo_id = id, version, "todo deleted");
        Ok(version)
    }

    /// `GET /events?after=&limit=`: committed events after `after`, oldest first. Stamps what
    /// is pending first (see [`event_log::feed`]), and wakes the relay for what it stamped.
    pub async fn feed(&self, after: i64, limit: i64) -> Result<event_log::FeedPage, CommandError> {
        let mut conn = conn(&self.pool).await?;
        let page = event_log::feed(&mut conn, after, limit).await?;
        if page.stamped > 0 {
            self.wake.stamped.notify_one();
        }
        Ok(page)
    }
}

/// Deletes the row and appends its event; `None` when there was no such todo.
async fn delete_row(
    conn: &mut AsyncPgConnection,
    id: i64,
    correlation_id: &str,
) -> Result<Option<i64>, diesel::result::Error> {
    let statement = prepared(
        DELETE,
        (
            bind::<BigInt, _>(id),
            bind::<SqlUuid, _>(Uuid::now_v7()),
            bind::<Timestamptz, _>(now()),
            bind::<Text, _>(correlation_id),
        ),
    );
    Ok(statement
        .get_result::<Version>(conn)
        .await
        .optional()?
        .map(|v| v.n))
}

/// The todo, its row locked until the transaction ends; `None` when there is no such todo.
async fn locked(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<Todo>, CommandError> {
    Ok(todos::table
        .find(id)
        .select(Todo::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}
