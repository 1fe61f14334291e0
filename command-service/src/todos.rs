//! The commands. Each runs in one PostgreSQL transaction that changes the todo row and appends
//! its event to `events` (the transactional outbox), so a todo never changes without its event
//! and no event exists for a change that did not commit.

use crate::db::{PgPool, PooledConn};
use crate::error::ApiError;
use crate::input::{TodoInput, TodoPatch};
use crate::schema::{events as ev, todos};
use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Jsonb, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use events::{Envelope, EventType, Field, TodoState, SCHEMA_VERSION};
use serde::Serialize;
use uuid::Uuid;

/// Advisory lock key that serializes event appends, so `position` order is commit order.
const APPEND_LOCK: i64 = 0x746f_646f_6576; // "todoev"
/// Channel the relay LISTENs on; every append NOTIFYs it, delivered at commit.
pub const OUTBOX_CHANNEL: &str = "todo_outbox";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Queryable, Selectable)]
#[diesel(table_name = todos)]
pub struct Todo {
    pub id: i64,
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Todo {
    fn state(&self) -> TodoState {
        TodoState {
            title: self.title.clone(),
            description: self.description.clone(),
            completed: self.completed,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
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
    fn check(&self, current: i64) -> Result<(), ApiError> {
        match self {
            Precondition::Any => Ok(()),
            Precondition::Versions(v) if v.contains(&current) => Ok(()),
            Precondition::Versions(_) => Err(ApiError::PreconditionFailed { current }),
        }
    }
}

/// An `Idempotency-Key` and the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
    pub ttl_hours: i64,
}

/// What `create` answers: a new todo, or the stored response of an earlier identical request.
#[derive(Debug)]
pub enum Created {
    New(Todo),
    Replayed {
        status: u16,
        body: serde_json::Value,
    },
}

/// Errors inside a transaction: an API error, or "another request with the same
/// Idempotency-Key committed first" (roll back, then replay its response).
enum TxError {
    Api(ApiError),
    KeyTaken,
}

impl From<diesel::result::Error> for TxError {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Api(e.into())
    }
}

impl From<ApiError> for TxError {
    fn from(e: ApiError) -> Self {
        TxError::Api(e)
    }
}

/// PostgreSQL keeps microseconds: truncate so what we return equals what a re-read returns.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

async fn conn(pool: &PgPool) -> Result<PooledConn, ApiError> {
    Ok(pool.get().await?)
}

#[derive(QueryableByName)]
struct StoredResponse {
    #[diesel(sql_type = Text)]
    request_hash: String,
    #[diesel(sql_type = Integer)]
    response_status: i32,
    #[diesel(sql_type = Jsonb)]
    response_body: serde_json::Value,
}

async fn stored_response(
    conn: &mut AsyncPgConnection,
    idem: &Idempotency,
) -> Result<Option<Created>, ApiError> {
    let stored: Option<StoredResponse> = diesel::sql_query(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys \
         WHERE key = $1 AND created_at > now() - make_interval(hours => $2::int)",
    )
    .bind::<Text, _>(&idem.key)
    .bind::<BigInt, _>(idem.ttl_hours)
    .get_result(conn)
    .await
    .optional()?;
    match stored {
        None => Ok(None),
        Some(s) if s.request_hash != idem.request_hash => Err(ApiError::IdempotencyKeyReused),
        Some(s) => Ok(Some(Created::Replayed {
            status: u16::try_from(s.response_status).unwrap_or(201),
            body: s.response_body,
        })),
    }
}

/// Appends one event to the log in the caller's transaction and wakes the relay at commit.
#[tracing::instrument(skip_all, fields(todo_id = envelope.todo_id, version = envelope.version, event_type = %envelope.event_type))]
async fn append(
    conn: &mut AsyncPgConnection,
    envelope: &Envelope,
) -> Result<i64, diesel::result::Error> {
    // Held to commit: appends commit one at a time, in position order.
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(APPEND_LOCK)
        .execute(conn)
        .await?;
    let payload = serde_json::to_value(envelope)
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    let position: i64 = diesel::insert_into(ev::table)
        .values((
            ev::event_id.eq(envelope.event_id),
            ev::event_type.eq(envelope.event_type.as_str()),
            ev::todo_id.eq(envelope.todo_id),
            ev::version.eq(envelope.version),
            ev::occurred_at.eq(envelope.occurred_at),
            ev::correlation_id.eq(&envelope.correlation_id),
            ev::payload.eq(payload),
        ))
        .returning(ev::position)
        .get_result(conn)
        .await?;
    diesel::sql_query(format!("NOTIFY {OUTBOX_CHANNEL}"))
        .execute(conn)
        .await?;
    Ok(position)
}

fn envelope(
    event_type: EventType,
    todo_id: i64,
    version: i64,
    occurred_at: DateTime<Utc>,
    correlation_id: &str,
    data: Option<TodoState>,
    changed: Vec<Field>,
) -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        event_type,
        schema_version: SCHEMA_VERSION,
        todo_id,
        version,
        position: 0,
        occurred_at,
        correlation_id: correlation_id.to_string(),
        data,
        changed,
    }
}

/// `POST /todos`.
#[tracing::instrument(skip_all, fields(correlation_id))]
pub async fn create(
    pool: &PgPool,
    input: TodoInput,
    idempotency: Option<Idempotency>,
    correlation_id: &str,
) -> Result<Created, ApiError> {
    let mut pooled = conn(pool).await?;
    let conn: &mut AsyncPgConnection = &mut pooled;
    if let Some(idem) = &idempotency {
        if let Some(replay) = stored_response(conn, idem).await? {
            return Ok(replay);
        }
    }
    let idem = idempotency.clone();
    let result = conn
        .transaction::<_, TxError, _>(async |conn| {
            let at = now();
            let todo: Todo = diesel::insert_into(todos::table)
                .values((
                    todos::title.eq(&input.title),
                    todos::description.eq(&input.description),
                    todos::completed.eq(input.completed),
                    todos::version.eq(1_i64),
                    todos::created_at.eq(at),
                    todos::updated_at.eq(at),
                ))
                .returning(Todo::as_returning())
                .get_result(conn)
                .await?;
            let event = envelope(
                EventType::TodoCreated,
                todo.id,
                1,
                at,
                correlation_id,
                Some(todo.state()),
                Vec::new(),
            );
            append(conn, &event).await?;
            if let Some(idem) = &idem {
                let body = serde_json::to_value(&todo)
                    .map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
                // Takes the key unless a live entry holds it; an expired one is replaced.
                let taken = diesel::sql_query(
                    "INSERT INTO idempotency_keys (key, request_hash, response_status, response_body) \
                     VALUES ($1, $2, 201, $3) \
                     ON CONFLICT (key) DO UPDATE SET request_hash = EXCLUDED.request_hash, \
                       response_status = EXCLUDED.response_status, \
                       response_body = EXCLUDED.response_body, created_at = now() \
                     WHERE idempotency_keys.created_at <= now() - make_interval(hours => $4::int)",
                )
                .bind::<Text, _>(&idem.key)
                .bind::<Text, _>(&idem.request_hash)
                .bind::<Jsonb, _>(body)
                .bind::<BigInt, _>(idem.ttl_hours)
                .execute(conn)
                .await?;
                if taken == 0 {
                    return Err(TxError::KeyTaken);
                }
            }
            Ok(todo)
        })
        .await;
    match result {
        Ok(todo) => {
            tracing::info!(todo_id = todo.id, version = todo.version, "todo created");
            Ok(Created::New(todo))
        }
        Err(TxError::Api(e)) => Err(e),
        // A concurrent request with the same key committed while we worked: our transaction
        // rolled back, so answer with what it stored.
        Err(TxError::KeyTaken) => match &idempotency {
            Some(idem) => stored_response(conn, idem).await?.ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("idempotency key vanished after conflict"))
            }),
            None => Err(ApiError::Internal(anyhow::anyhow!(
                "key conflict without a key"
            ))),
        },
    }
}

async fn locked(conn: &mut AsyncPgConnection, id: i64) -> Result<Todo, ApiError> {
    todos::table
        .find(id)
        .select(Todo::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::NotFound(format!("Todo {id} does not exist.")))
}

/// `PATCH` and `PUT /todos/{id}`. A change that leaves every field as it is answers the current
/// state and writes no event.
#[tracing::instrument(skip_all, fields(todo_id = id, correlation_id))]
pub async fn update(
    pool: &PgPool,
    id: i64,
    change: Change,
    precondition: Option<Precondition>,
    correlation_id: &str,
) -> Result<Todo, ApiError> {
    let mut pooled = conn(pool).await?;
    let todo = (&mut *pooled as &mut AsyncPgConnection)
        .transaction::<_, ApiError, _>(async |conn| {
            let current = locked(conn, id).await?;
            if let Some(p) = &precondition {
                p.check(current.version)?;
            }
            let (title, description, completed) = match &change {
                Change::Put(input) => (
                    input.title.clone(),
                    input.description.clone(),
                    input.completed,
                ),
                Change::Patch(p) => (
                    p.title.clone().unwrap_or_else(|| current.title.clone()),
                    p.description
                        .clone()
                        .unwrap_or_else(|| current.description.clone()),
                    p.completed.unwrap_or(current.completed),
                ),
            };
            let mut changed = Vec::new();
            if title != current.title {
                changed.push(Field::Title);
            }
            if description != current.description {
                changed.push(Field::Description);
            }
            if completed != current.completed {
                changed.push(Field::Completed);
            }
            if changed.is_empty() {
                return Ok(current);
            }
            let at = now();
            let todo: Todo = diesel::update(todos::table.find(id))
                .set((
                    todos::title.eq(title),
                    todos::description.eq(description),
                    todos::completed.eq(completed),
                    todos::version.eq(current.version + 1),
                    todos::updated_at.eq(at),
                ))
                .returning(Todo::as_returning())
                .get_result(conn)
                .await?;
            let event = envelope(
                EventType::TodoUpdated,
                id,
                todo.version,
                at,
                correlation_id,
                Some(todo.state()),
                changed,
            );
            append(conn, &event).await?;
            Ok(todo)
        })
        .await?;
    tracing::info!(todo_id = id, version = todo.version, "todo updated");
    Ok(todo)
}

/// `DELETE /todos/{id}`: removes the row and appends `TodoDeleted` with the next version.
/// Returns that version.
#[tracing::instrument(skip_all, fields(todo_id = id, correlation_id))]
pub async fn delete(
    pool: &PgPool,
    id: i64,
    precondition: Option<Precondition>,
    correlation_id: &str,
) -> Result<i64, ApiError> {
    let mut pooled = conn(pool).await?;
    let version = (&mut *pooled as &mut AsyncPgConnection)
        .transaction::<_, ApiError, _>(async |conn| {
            let current = locked(conn, id).await?;
            if let Some(p) = &precondition {
                p.check(current.version)?;
            }
            diesel::delete(todos::table.find(id)).execute(conn).await?;
            let version = current.version + 1;
            let event = envelope(
                EventType::TodoDeleted,
                id,
                version,
                now(),
                correlation_id,
                None,
                Vec::new(),
            );
            append(conn, &event).await?;
            Ok(version)
        })
        .await?;
    tracing::info!(todo_id = id, version, "todo deleted");
    Ok(version)
}

/// `GET /events?after=&limit=`: committed events after `after`, oldest first.
pub async fn feed(pool: &PgPool, after: i64, limit: i64) -> Result<Vec<Envelope>, ApiError> {
    let mut conn = conn(pool).await?;
    let rows: Vec<(i64, serde_json::Value)> = ev::table
        .filter(ev::position.gt(after))
        .order(ev::position.asc())
        .limit(limit)
        .select((ev::position, ev::payload))
        .load(&mut conn)
        .await?;
    rows.into_iter().map(|(p, v)| to_envelope(p, v)).collect()
}

/// Rebuilds the envelope of a stored row; the payload is written without its position, which
/// the database assigns on insert.
pub fn to_envelope(position: i64, payload: serde_json::Value) -> Result<Envelope, ApiError> {
    let mut envelope: Envelope = serde_json::from_value(payload).map_err(|e| {
        ApiError::Internal(anyhow::Error::new(e).context(format!("event {position} unreadable")))
    })?;
    envelope.position = position;
    Ok(envelope)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Events committed but not yet confirmed by RabbitMQ.
pub async fn outbox_backlog(pool: &PgPool) -> Result<i64, ApiError> {
    let mut conn = conn(pool).await?;
    let count: Count =
        diesel::sql_query("SELECT count(*) AS n FROM events WHERE published_at IS NULL")
            .get_result(&mut conn)
            .await?;
    Ok(count.n)
}

/// Whether PostgreSQL answers.
pub async fn ping(pool: &PgPool) -> Result<(), ApiError> {
    #[derive(QueryableByName)]
    struct One {
        #[diesel(sql_type = Bool)]
        #[allow(dead_code)]
        ok: bool,
    }
    let mut conn = conn(pool).await?;
    let _: One = diesel::sql_query("SELECT true AS ok")
        .get_result(&mut conn)
        .await?;
    Ok(())
}
