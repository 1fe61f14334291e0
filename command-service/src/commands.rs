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
    /// When its title and description were erased (`command-service erase`); `null` when
    /// never. An erased todo's title reads `(erased)`, in every event of its history too.
    #[serde(default)]
    pub erased_at: Option<DateTime<Utc>>,
}

/// Who asked for a write and why, as the events it appends record them (version 3 of the
/// contract): the request's correlation id, its own id as the events' cause, the token's name,
/// and the trace the request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `X-Request-Id` as the client sent it, or a new one: what ties a conversation together.
    pub correlation_id: String,
    /// The id of the request itself (a new UUID v7 each), logged on its `request` span.
    pub causation_id: String,
    /// The name of the bearer token that wrote, or `anonymous`.
    pub actor: String,
    /// The W3C `traceparent` of the write's span: the relay sends it with the event.
    pub traceparent: Option<String>,
}

impl Origin {
    /// This origin with the `traceparent` of the current span: the write's own place in its
    /// trace, which the relay's publish span continues.
    /// It records the cause on the current span too (a request's `causation_id`), so the
    /// request's log lines name it.
    pub fn traced(&self) -> Self {
        let span = tracing::Span::current();
        span.record("causation_id", self.causation_id.as_str());
        Self {
            traceparent: events::service::trace::traceparent(&span),
            ..self.clone()
        }
    }

    /// A write from outside any request (the `erase` command, tests): a new cause, no trace.
    pub fn new(correlation_id: impl Into<String>, actor: impl Into<String>) -> Self {
        Self {
            correlation_id: correlation_id.into(),
            causation_id: Uuid::now_v7().to_string(),
            actor: actor.into(),
            traceparent: None,
        }
    }
}

/// The fields a write sets: what a `PUT` gives whole and a `PATCH` leaves or changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    title: String,
    description: Option<String>,
    completed: bool,
    due_at: Option<DateTime<Utc>>,
    erased_at: Option<DateTime<Utc>>,
}

impl Fields {
    /// The fields of the contract that differ from `current`'s, as an event's `changed`
    /// names them.
    fn changed_from(&self, current: &Todo) -> Vec<Field> {
        [
            (Field::Title, self.title != current.title),
            (Field::Description, self.description != current.description),
            (Field::Completed, self.completed != current.completed),
            (Field::DueAt, self.due_at != current.due_at),
        ]
        .into_iter()
        .filter_map(|(field, differs)| differs.then_some(field))
        .collect()
    }

    fn of(input: &TodoInput) -> Self {
        Fields {
            title: input.title.clone(),
            description: input.description.clone(),
            completed: input.completed,
            due_at: input.due_at,
            erased_at: None,
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
        erased_at: fields.erased_at,
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
  RETURNING id, title, description, completed, version, created_at, updated_at, due_at, \
            erased_at \
), event AS ( \
  INSERT INTO events (event_id, event_type, todo_id, version, occurred_at, correlation_id, data, \
                      causation_id, actor, traceparent) \
  SELECT $5, 'TodoCreated', id, 1, $4, $6, $7, $9, $10, $11 FROM todo \
) \
SELECT id, title, description, completed, version, created_at, updated_at, due_at, erased_at \
FROM todo";

/// Sets the new state and appends its `TodoUpdated` in one statement (after `locked`).
const UPDATE: &str = "\
WITH todo AS ( \
  UPDATE todos SET title = $2, description = $3, completed = $4, version = version + 1, \
                   updated_at = $5, due_at = $10, erased_at = $14 \
  WHERE id = $1 \
  RETURNING id, title, description, completed, version, created_at, updated_at, due_at, \
            erased_at \
), event AS ( \
  INSERT INTO events (event_id, event_type, todo_id, version, occurred_at, correlation_id, \
                      data, changed, causation_id, actor, traceparent) \
  SELECT $6, 'TodoUpdated', id, version, $5, $7, $8, $9, $11, $12, $13 FROM todo \
) \
SELECT id, title, description, completed, version, created_at, updated_at, due_at, erased_at \
FROM todo";

/// Removes the row and appends its `TodoDeleted` (the next version) in one statement.
const DELETE: &str = "\
WITH gone AS ( \
  DELETE FROM todos WHERE id = $1 RETURNING id, version + 1 AS version \
), event AS ( \
  INSERT INTO events (event_id, event_type, todo_id, version, occurred_at, correlation_id, \
                      causation_id, actor, traceparent) \
  SELECT $2, 'TodoDeleted', id, version, $3, $4, $5, $6, $7 FROM gone \
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
    origin: &Origin,
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
            bind::<Text, _>(&origin.correlation_id),
            bind::<Jsonb, _>(data),
            bind::<Nullable<Timestamptz>, _>(input.due_at),
            bind::<Text, _>(&origin.causation_id),
            bind::<Text, _>(&origin.actor),
            bind::<Nullable<Text>, _>(&origin.traceparent),
        ),
    );
    Ok(statement.get_result(conn).await?)
}

impl Commands {
    /// `POST /todos`.
    #[tracing::instrument(name = "commit", skip_all)]
    pub async fn create(
        &self,
        input: TodoInput,
        idempotency: Option<idempotency::Key>,
        origin: &Origin,
    ) -> Result<Created, CommandError> {
        let mut pooled = conn(&self.pool).await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        let Some(key) = idempotency else {
            let todo = insert_todo(conn, &input, origin).await?;
            self.appended();
            tracing::info!(todo_id = todo.id, version = todo.version, "todo created");
            return Ok(Created::New(todo));
        };
        if let Some(replay) = self.keys.replay(conn, &key).await? {
            return Ok(Created::Replayed(replay));
        }
        let result = conn
            .transaction::<_, TxError, _>(async |conn| {
                let todo = insert_todo(conn, &input, origin).await?;
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
    #[tracing::instrument(name = "commit", skip_all, fields(todo_id = id))]
    pub async fn update(
        &self,
        id: i64,
        change: Change,
        precondition: Option<Precondition>,
        origin: &Origin,
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
                let mut fields = match &change {
                    Change::Put(input) => Fields::of(input),
                    Change::Patch(p) => Fields {
                        title: p.title.clone().unwrap_or_else(|| current.title.clone()),
                        description: p
                            .description
                            .clone()
                            .unwrap_or_else(|| current.description.clone()),
                        completed: p.completed.unwrap_or(current.completed),
                        due_at: p.due_at.unwrap_or(current.due_at),
                        erased_at: None,
                    },
                };
                // An erased todo stays marked while its text is the erased one; a new title
                // or description is new text, written after the erasure.
                fields.erased_at = current.erased_at.filter(|_| {
                    fields.title == events::ERASED_TITLE && fields.description.is_none()
                });
                let changed = fields.changed_from(&current);
                if changed.is_empty() {
                    return Ok((current, false));
                }
                let todo =
                    write_update(conn, id, &fields, current.created_at, changed, origin).await?;
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
    #[tracing::instrument(name = "commit", skip_all, fields(todo_id = id))]
    pub async fn delete(
        &self,
        id: i64,
        precondition: Option<Precondition>,
        origin: &Origin,
    ) -> Result<i64, CommandError> {
        let mut pooled = conn(&self.pool).await?;
        let conn: &mut AsyncPgConnection = &mut pooled;
        let not_found = || CommandError::NotFound(id);
        let version = match &precondition {
            // No precondition: one statement.
            None => delete_row(conn, id, origin).await?.ok_or_else(not_found)?,
            Some(p) => {
                conn.transaction::<_, CommandError, _>(async |conn| {
                    let current = locked(conn, id)
                        .await?
                        .ok_or_else(|| missing(id, Some(p)))?;
                    p.check(current.version)?;
                    delete_row(conn, id, origin).await?.ok_or_else(not_found)
                })
                .await?
            }
        };
        self.appended();
        tracing::info!(todo_id = id, version, "todo deleted");
        Ok(version)
    }

    /// `command-service erase <id>` and `POST /todos/{id}/erase`: removes the todo's title and
    /// description from every event of its history (each then carries [`events::ERASED_TITLE`],
    /// no description and `data.erased_at`), from its row and from the stored answer of its
    /// creation's `Idempotency-Key`, in one transaction. A live todo then gets one more event,
    /// a `TodoUpdated` to the erased state, which takes the erasure to every read model; a
    /// deleted one needs none (a tombstone holds no text). Ids, versions, times, `completed`
    /// and `due_at` are kept. Erasing again rewrites nothing new and appends no event.
    #[tracing::instrument(name = "commit", skip_all, fields(todo_id = id))]
    pub async fn erase(&self, id: i64, origin: &Origin) -> Result<Erased, CommandError> {
        let mut pooled = conn(&self.pool).await?;
        let erased = (&mut *pooled as &mut AsyncPgConnection)
            .transaction::<_, CommandError, _>(async |conn| {
                let current = locked(conn, id).await?;
                let at = now();
                let text = serde_json::json!({
                    "title": events::ERASED_TITLE,
                    "description": null,
                });
                let mut marked = text;
                marked["erased_at"] = serde_json::to_value(at)
                    .map_err(|e| CommandError::Internal(anyhow::Error::new(e)))?;
                let marked_answer = marked.clone();
                // Every event that still holds text (an erased one keeps its first erasure).
                let events_erased = prepared(
                    "UPDATE events SET data = data || $2 \
                     WHERE todo_id = $1 AND data IS NOT NULL \
                       AND (data->>'erased_at' IS NULL OR data->>'title' <> $3 \
                            OR data->'description' <> 'null'::jsonb)",
                    (
                        bind::<BigInt, _>(id),
                        bind::<Jsonb, _>(marked),
                        bind::<Text, _>(events::ERASED_TITLE),
                    ),
                )
                .execute(conn)
                .await? as i64;
                let todo = match current {
                    None => {
                        let any: i64 = crate::schema::events::table
                            .filter(crate::schema::events::todo_id.eq(id))
                            .count()
                            .get_result(conn)
                            .await?;
                        if any == 0 {
                            return Err(CommandError::NotFound(id));
                        }
                        None
                    }
                    Some(current) => Some(erase_row(conn, current, at, origin).await?),
                };
                // The stored answer of the creation (a todo as it was created), and the hash
                // of its request, which would confirm a guess of the text.
                prepared(
                    "UPDATE idempotency_keys SET response_body = response_body || $2, \
                                                 request_hash = $3 \
                     WHERE response_body->>'id' = $1::text AND request_hash <> $3",
                    (
                        bind::<BigInt, _>(id),
                        bind::<Jsonb, _>(marked_answer),
                        bind::<Text, _>(crate::idempotency::ERASED_REQUEST),
                    ),
                )
                .execute(conn)
                .await?;
                Ok(Erased {
                    todo_id: id,
                    events_erased,
                    appended: todo.as_ref().is_some_and(|(_, appended)| *appended),
                    todo: todo.map(|(todo, _)| todo),
                })
            })
            .await?;
        if erased.appended {
            self.appended();
        }
        tracing::info!(
            todo_id = id,
            events_erased = erased.events_erased,
            appended = erased.appended,
            "todo erased"
        );
        Ok(erased)
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
    origin: &Origin,
) -> Result<Option<i64>, diesel::result::Error> {
    let statement = prepared(
        DELETE,
        (
            bind::<BigInt, _>(id),
            bind::<SqlUuid, _>(Uuid::now_v7()),
            bind::<Timestamptz, _>(now()),
            bind::<Text, _>(&origin.correlation_id),
            bind::<Text, _>(&origin.causation_id),
            bind::<Text, _>(&origin.actor),
            bind::<Nullable<Text>, _>(&origin.traceparent),
        ),
    );
    Ok(statement
        .get_result::<Version>(conn)
        .await
        .optional()?
        .map(|v| v.n))
}

/// Sets a todo's fields and appends its `TodoUpdated` (the next version) naming `changed`.
async fn write_update(
    conn: &mut AsyncPgConnection,
    id: i64,
    fields: &Fields,
    created_at: DateTime<Utc>,
    changed: Vec<Field>,
    origin: &Origin,
) -> Result<Todo, CommandError> {
    let at = now();
    let data = state_json(fields, created_at, at)?;
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
            bind::<Text, _>(&origin.correlation_id),
            bind::<Jsonb, _>(data),
            bind::<Jsonb, _>(changed),
            bind::<Nullable<Timestamptz>, _>(fields.due_at),
            bind::<Text, _>(&origin.causation_id),
            bind::<Text, _>(&origin.actor),
            bind::<Nullable<Text>, _>(&origin.traceparent),
            bind::<Nullable<Timestamptz>, _>(fields.erased_at),
        ),
    );
    Ok(statement.get_result(conn).await?)
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Erased {
    pub todo_id: i64,
    /// Events of its history whose text this erasure removed.
    pub events_erased: i64,
    /// Whether a `TodoUpdated` to the erased state was appended (a live todo not yet erased).
    pub appended: bool,
    /// The todo as it is now; `null` when it was deleted.
    pub todo: Option<Todo>,
}

/// Sets a live todo's row to its erased state and appends the `TodoUpdated` that says so; a
/// todo already in that state is left as it is. The todo, and whether an event was appended.
async fn erase_row(
    conn: &mut AsyncPgConnection,
    current: Todo,
    at: DateTime<Utc>,
    origin: &Origin,
) -> Result<(Todo, bool), CommandError> {
    let erased = current.erased_at.is_some()
        && current.title == events::ERASED_TITLE
        && current.description.is_none();
    if erased {
        return Ok((current, false));
    }
    let fields = Fields {
        title: events::ERASED_TITLE.to_string(),
        description: None,
        completed: current.completed,
        due_at: current.due_at,
        erased_at: Some(at),
    };
    let changed = fields.changed_from(&current);
    let todo = write_update(
        conn,
        current.id,
        &fields,
        current.created_at,
        changed,
        origin,
    )
    .await?;
    Ok((todo, true))
}

/// The todo, its row locked until the transaction ends/// The todo, its row locked until the transaction ends; `None` when there is no such todo.
async fn locked(conn: &mut AsyncPgConnection, id: i64) -> Result<Option<Todo>, CommandError> {
    Ok(todos::table
        .find(id)
        .select(Todo::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?)
}
