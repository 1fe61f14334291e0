//! The event log in PostgreSQL: how events are appended, stamped with their position, read
//! back as a feed, and how far the relay has published them.
//!
//! Writers never share a lock. An event is appended with no position (`position IS NULL`), in
//! the same statement as its todo change, so a write commits as soon as PostgreSQL flushes it
//! and concurrent writes commit in parallel (group commit). The sequencer, one at a time under
//! a transaction-level advisory lock, [`stamp`]s the committed events it sees with the next
//! positions (`max(position) + 1, + 2, …`, in `seq` order). From this follows:
//!
//! - positions are gapless and only ever grow, so a reader of `position > N` never skips an
//!   event: one that commits later is stamped later, with a larger position;
//! - each todo's events keep their version order: a todo's next event is inserted (and takes a
//!   higher `seq`) only after its previous one committed, so no stamping round can see the
//!   later one without the earlier one;
//! - the feed and the relay read only stamped events; [`feed`] stamps what is pending first, so
//!   a write that was answered before a feed request began is in that feed.
//!
//! The relay keeps one cursor (`relay_cursor.position`): every event up to it was confirmed by
//! RabbitMQ. Published events are always a prefix of the log, so no per-row flag is needed.

use crate::db::{bind, prepared, Bind, Prepared};
use crate::schema::{events as ev, relay_cursor};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use events::{Envelope, EventType, Field, TodoState, SCHEMA_VERSION};
use uuid::Uuid;

/// Advisory lock key held by the one sequencer stamping at a time.
const SEQUENCER_LOCK: i64 = 0x0073_6571_7565; // "seque"
/// Advisory lock key held by the one relay publishing at a time.
pub(crate) const RELAY_LOCK: i64 = 0x0072_656c_6179; // "relay"

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    /// A stored row that does not make an envelope (never written by this service).
    #[error("event at position {position} is unreadable: {reason}")]
    Corrupt { position: i64, reason: String },
}

/// One stamped row of `events`, as the feed and the relay read it.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = ev)]
struct EventRow {
    position: Option<i64>,
    event_id: Uuid,
    event_type: String,
    todo_id: i64,
    version: i64,
    occurred_at: DateTime<Utc>,
    correlation_id: String,
    data: Option<serde_json::Value>,
    changed: serde_json::Value,
    causation_id: Option<String>,
    actor: Option<String>,
    traceparent: Option<String>,
}

/// A stamped event and the trace context of the write that appended it (the relay's publish
/// span continues it).
#[derive(Debug, Clone)]
pub struct Logged {
    pub envelope: Envelope,
    pub traceparent: Option<String>,
}

impl EventRow {
    fn into_logged(self) -> Result<Logged, LogError> {
        let traceparent = self.traceparent.clone();
        Ok(Logged {
            envelope: self.into_envelope()?,
            traceparent,
        })
    }

    fn into_envelope(self) -> Result<Envelope, LogError> {
        let position = self.position.unwrap_or(0);
        let corrupt = |reason: String| LogError::Corrupt { position, reason };
        let event_type = EventType::parse(&self.event_type)
            .ok_or_else(|| corrupt(format!("unknown event type {:?}", self.event_type)))?;
        let data: Option<TodoState> = self
            .data
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| corrupt(format!("data: {e}")))?;
        let changed: Vec<Field> =
            serde_json::from_value(self.changed).map_err(|e| corrupt(format!("changed: {e}")))?;
        Ok(Envelope {
            event_id: self.event_id,
            event_type,
            schema_version: SCHEMA_VERSION,
            todo_id: self.todo_id,
            version: self.version,
            position,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            actor: self.actor,
            data,
            changed,
        })
    }
}

/// Stamped events after `after`, oldest first, at most `limit`. A row that does not make an
/// envelope (never written by this service) ends the list: the events before it, and why.
pub async fn read_after(
    conn: &mut AsyncPgConnection,
    after: i64,
    limit: i64,
) -> Result<(Vec<Logged>, Option<LogError>), LogError> {
    let rows: Vec<EventRow> = ev::table
        .filter(ev::position.gt(after))
        .order(ev::position.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)
        .await?;
    let mut envelopes = Vec::with_capacity(rows.len());
    for row in rows {
        match row.into_logged() {
            Ok(e) => envelopes.push(e),
            Err(err) => return Ok((envelopes, Some(err))),
        }
    }
    Ok((envelopes, None))
}

/// A page of the feed: its events, the head of the log when it was read (the highest
/// position stamped: every event committed before the request is at or below it), and how
/// many events the request stamped itself.
pub struct FeedPage {
    pub events: Vec<Envelope>,
    pub head: i64,
    pub stamped: i64,
}

/// `GET /events`: stamps whatever committed before the request (waiting for a running
/// sequencer round to finish rather than skipping), then reads.
pub async fn feed(
    conn: &mut AsyncPgConnection,
    after: i64,
    limit: i64,
) -> Result<FeedPage, LogError> {
    let stamped = stamp_all(conn, Lock::Wait).await?.unwrap_or(0);
    let head: Option<i64> = ev::table
        .select(diesel::dsl::max(ev::position))
        .first(conn)
        .await?;
    match read_after(conn, after, limit).await? {
        (events, None) => Ok(FeedPage {
            events: events.into_iter().map(|e| e.envelope).collect(),
            head: head.unwrap_or(0),
            stamped,
        }),
        (_, Some(err)) => Err(err),
    }
}

/// Stamps rounds until nothing is pending. `None` when another sequencer held the lock (only
/// with [`Lock::Try`]); else how many events got positions.
pub async fn stamp_all(conn: &mut AsyncPgConnection, lock: Lock) -> Result<Option<i64>, LogError> {
    let mut total = 0;
    loop {
        match stamp(conn, lock, STAMP_BATCH).await? {
            Stamp::Busy => return Ok((total > 0).then_some(total)),
            Stamp::Stamped(n) => {
                total += n;
                if n < STAMP_BATCH {
                    return Ok(Some(total));
                }
            }
        }
    }
}

/// Events one stamping round takes at most.
pub const STAMP_BATCH: i64 = 5_000;

/// How [`stamp`] takes the sequencer lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Give up at once if another sequencer holds it (the background sequencer).
    Try,
    /// Wait for it (a feed reader, which must not read past unstamped events).
    Wait,
}

/// What a stamping round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// Another session holds the sequencer lock.
    Busy,
    /// This many events got positions (0 when none was pending).
    Stamped(i64),
}

/// Whether a transaction-level advisory lock was taken.
#[derive(QueryableByName)]
pub(crate) struct Locked {
    #[diesel(sql_type = Bool)]
    pub(crate) locked: bool,
}

/// `pg_try_advisory_xact_lock(key)`, answered as [`Locked`].
pub(crate) fn try_lock(key: i64) -> Prepared<(Bind<BigInt, i64>,)> {
    prepared(
        "SELECT pg_try_advisory_xact_lock($1) AS locked",
        (bind::<BigInt, _>(key),),
    )
}

/// One stamping round (see the module header), in its own transaction. It runs at READ
/// COMMITTED (each statement sees every round committed before it took the lock) and commits
/// synchronously whatever the server's default: a stamp lost in a crash after a reader saw it
/// would hand its positions out again, and that reader would skip the events they go to.
pub async fn stamp(
    conn: &mut AsyncPgConnection,
    lock: Lock,
    batch: i64,
) -> Result<Stamp, LogError> {
    let stamp = conn
        .build_transaction()
        .read_committed()
        .run::<_, diesel::result::Error, _>(async |conn| {
            prepared("SET LOCAL synchronous_commit = on", ())
                .execute(conn)
                .await?;
            match lock {
                Lock::Try => {
                    let got: Locked = try_lock(SEQUENCER_LOCK).get_result(conn).await?;
                    if !got.locked {
                        return Ok(Stamp::Busy);
                    }
                }
                Lock::Wait => {
                    prepared(
                        "SELECT pg_advisory_xact_lock($1)",
                        (bind::<BigInt, _>(SEQUENCER_LOCK),),
                    )
                    .execute(conn)
                    .await?;
                }
            }
            // Under the lock no other stamp runs, and every earlier round is committed and
            // visible to this statement: `max(position)` is final.
            let n = prepared(
                "WITH pending AS ( \
                   SELECT seq, row_number() OVER (ORDER BY seq) AS n \
                   FROM (SELECT seq FROM events WHERE position IS NULL ORDER BY seq LIMIT $1) p \
                 ), top AS (SELECT coalesce(max(position), 0) AS p FROM events) \
                 UPDATE events e SET position = top.p + pending.n \
                 FROM pending, top WHERE e.seq = pending.seq",
                (bind::<BigInt, _>(batch),),
            )
            .execute(conn)
            .await?;
            Ok(Stamp::Stamped(n as i64))
        })
        .await?;
    Ok(stamp)
}

/// The outbox as `/ready` reports it.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct Outbox {
    /// Events committed but not yet confirmed by RabbitMQ: unstamped ones and stamped ones
    /// past the relay's cursor.
    #[diesel(sql_type = BigInt)]
    pub backlog: i64,
    /// Rounds in a row that failed to publish the event after the cursor.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub publish_attempts: i32,
    /// Why the last of them failed.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub last_error: Option<String>,
}

pub async fn outbox(conn: &mut AsyncPgConnection) -> Result<Outbox, LogError> {
    Ok(prepared(
        "SELECT (SELECT count(*) FROM events WHERE position IS NULL) \
              + (SELECT count(*) FROM events WHERE position > c.position) AS backlog, \
                c.publish_attempts, c.last_error \
         FROM relay_cursor c",
        (),
    )
    .get_result(conn)
    .await?)
}

/// The position up to which RabbitMQ confirmed every event.
pub async fn published_up_to(conn: &mut AsyncPgConnection) -> Result<i64, LogError> {
    Ok(relay_cursor::table
        .select(relay_cursor::position)
        .first(conn)
        .await?)
}

/// Moves the relay's cursor forward to `position` and clears its error.
pub async fn mark_published(conn: &mut AsyncPgConnection, position: i64) -> Result<(), LogError> {
    diesel::update(relay_cursor::table)
        .filter(relay_cursor::position.lt(position))
        .set((
            relay_cursor::position.eq(position),
            relay_cursor::publish_attempts.eq(0),
            relay_cursor::last_error.eq(None::<String>),
            relay_cursor::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// Records why the event after the cursor could not be published.
pub async fn publish_failed(conn: &mut AsyncPgConnection, reason: &str) -> Result<(), LogError> {
    diesel::update(relay_cursor::table)
        .set((
            relay_cursor::publish_attempts.eq(relay_cursor::publish_attempts + 1),
            relay_cursor::last_error.eq(reason),
            relay_cursor::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
