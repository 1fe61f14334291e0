//! Reading the read model: one todo or many by id, every id, pages of live todos (in id
//! windows, or along the time indexes), the highest todo id, the counts and the projection's
//! stats.

use super::document::{
    completed_prefix, from_document, keys_end, read_document, sort_key, timestamp, SORT_KEYS,
};
use super::{is_transient, Store, Stored, Todo, STATS_ID};
use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a read the API serves could not answer: the store cannot serve now (retrying mends
/// it), or anything else (a fault, a stored document this version cannot read).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read model store unavailable: {0}")]
    Unavailable(#[source] mongodb::error::Error),
    #[error("read model query failed: {0}")]
    Fault(#[source] mongodb::error::Error),
}

impl From<mongodb::error::Error> for ReadError {
    fn from(err: mongodb::error::Error) -> Self {
        if is_transient(&err) {
            ReadError::Unavailable(err)
        } else {
            ReadError::Fault(err)
        }
    }
}

/// Most ids one page in id order reads (see [`Store::list`]).
pub const ID_SCAN_LIMIT: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Id,
    CreatedAt,
    UpdatedAt,
    /// The todos with a due date only.
    DueAt,
}

impl SortKey {
    pub fn field(self) -> &'static str {
        match self {
            SortKey::Id => "_id",
            SortKey::CreatedAt => "created_at",
            SortKey::UpdatedAt => "updated_at",
            SortKey::DueAt => "due_at",
        }
    }
}

/// A list query: filter, order, page size and the position after which the page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub completed: Option<bool>,
    /// Only the todos due before this time (the overdue ones: with `completed` false and the
    /// due-date order).
    pub due_before: Option<DateTime<Utc>>,
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
    /// Messages in the dead-letter queue, as this replica's consumer last read it (every 5 s);
    /// null before it could. `query-service dead-letters list` shows them.
    pub dead_letter_queue: Option<u32>,
    pub read_model: ReadModelStats,
    /// How far the read model is behind the log, by position, and whether the projection is
    /// stuck (read every `LAG_EVERY_MS`).
    pub lag: crate::lag::Lag,
}

/// Which generation of the read model this replica serves, and what a rebuild is doing
/// (`query-service rebuild`), as this replica last read the pointer (every second).
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReadModelStats {
    /// The generation reads are served from (0: the collections `todos` and
    /// `projection_stats`; n: `todos_n` and `projection_stats_n`).
    pub generation: i64,
    /// The generation a rebuild is filling, written by the consumers too; null when none.
    pub building: Option<i64>,
    /// The log position up to which that rebuild has read the log.
    pub build_position: Option<i64>,
    /// The generation served before the last switch, kept until its grace period ends.
    pub previous: Option<i64>,
}

impl From<&super::generations::Pointer> for ReadModelStats {
    fn from(p: &super::generations::Pointer) -> Self {
        ReadModelStats {
            generation: p.current,
            building: p.building,
            build_position: p.building.map(|_| p.build_position),
            previous: p.previous,
        }
    }
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

/// The span of a time-ordered list's first window while it knows nothing of the density.
const DEFAULT_SPAN_US: i64 = 60_000_000;
/// The widest window of a time-ordered list: about 30 years.
const MAX_SPAN_US: i64 = 1_000_000_000_000_000;
/// How long a time-ordered list trusts the time bounds it read.
pub const BOUNDS_MAX_AGE: Duration = Duration::from_secs(2);

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn time_of(sort: SortKey, todo: &Todo) -> DateTime<Utc> {
    match sort {
        SortKey::UpdatedAt => todo.updated_at,
        // A due-date list holds the todos with a due date only.
        SortKey::DueAt => todo.due_at.unwrap_or(todo.created_at),
        _ => todo.created_at,
    }
}

type Bounds = Option<(DateTime<Utc>, DateTime<Utc>)>;

/// What time-ordered lists learned: the density of todos in time each order last saw (todos
/// per microsecond), and the time bounds read from the projection's figures, with when.
#[derive(Debug, Default)]
pub struct Walks {
    density: Mutex<HashMap<(&'static str, &'static str, bool), f64>>,
    bounds: Mutex<HashMap<&'static str, (Instant, Bounds)>>,
}

impl Walks {
    fn density(&self, field: &'static str, prefix: &'static str, descending: bool) -> Option<f64> {
        self.density
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(field, prefix, descending))
            .copied()
    }

    fn learn(&self, field: &'static str, prefix: &'static str, descending: bool, density: f64) {
        if density.is_finite() && density > 0.0 {
            self.density
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((field, prefix, descending), density);
        }
    }

    fn bounds(&self, time: &'static str) -> Option<Bounds> {
        self.bounds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(time)
            .filter(|(at, _)| at.elapsed() < BOUNDS_MAX_AGE)
            .map(|(_, b)| *b)
    }

    fn keep_bounds(&self, time: &'static str, bounds: Bounds) {
        self.bounds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(time, (Instant::now(), bounds));
    }
}

/// The widest window of positions one read of a replay takes, in pages.
pub const REPLAY_WINDOW_MAX: i64 = 64;
/// The most windows one call of [`Store::changed_after`] reads.
pub const REPLAY_WINDOWS: usize = 8;

/// A page of a replay: the changes, where the next page starts, and whether there is more.
#[derive(Debug, Clone)]
pub struct ReplayPage {
    pub changes: Vec<crate::changes::Change>,
    pub next: i64,
    pub more: bool,
}

impl Store {
    /// One todo's document: a point read (a span of its own in a read's trace).
    #[tracing::instrument(
        name = "find todos",
        skip_all,
        fields(otel.kind = "client", db.system.name = "mongodb", db.operation.name = "find",
               db.collection.name = tracing::field::Empty, todo_id = id)
    )]
    pub async fn get(&self, id: i64) -> Result<Option<Stored>, ReadError> {
        let generation = self.gen();
        tracing::Span::current().record("db.collection.name", generation.todos.name());
        generation
            .todos
            .find_one(doc! { "_id": id })
            .await?
            .map(|d| read_document(&d))
            .transpose()
            .map_err(ReadError::from)
    }

    /// The stored documents of `ids` (point reads), by id; `None` for a document this version
    /// cannot read.
    pub async fn get_many(
        &self,
        ids: &[i64],
    ) -> mongodb::error::Result<HashMap<i64, Option<Stored>>> {
        let docs: Vec<Document> = self
            .gen()
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
            .gen()
            .todos
            .find(doc! {})
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().filter_map(|d| d.get_i64("_id").ok()).collect())
    }

    /// One page of live todos, and the cursor of the next page when more may follow.
    #[tracing::instrument(
        name = "list todos",
        skip_all,
        fields(otel.kind = "client", db.system.name = "mongodb", db.operation.name = "find",
               db.collection.name = tracing::field::Empty)
    )]
    pub async fn list(&self, q: &ListQuery) -> Result<(Vec<Todo>, Option<Cursor>), ReadError> {
        tracing::Span::current().record("db.collection.name", self.gen().todos.name());
        // Overdue and completed: nothing is both.
        if q.due_before.is_some() && q.completed == Some(true) {
            return Ok((Vec::new(), None));
        }
        if q.sort == SortKey::Id {
            return Ok(self.list_by_id(q).await?);
        }
        let todos = self.walk(q).await?;
        let more = todos.len() as i64 > q.limit;
        let todos: Vec<Todo> = todos.into_iter().take(q.limit as usize).collect();
        let next = match todos.last() {
            Some(last) if more => Some(Cursor {
                v: Some(timestamp(time_of(q.sort, last))),
                id: last.id,
            }),
            _ => None,
        };
        Ok((todos, next))
    }

    /// Up to `limit + 1` live todos of a time-ordered list, past the cursor: windows of one
    /// sort key's range (see `document.rs`), each one query `{key: {$gte: lo, $lt: hi}}` in
    /// the key's order, which walks the key's index between two bounds with no sort stage.
    ///
    /// A store that reads a whole range before it applies a limit (the local MongoDB-wire
    /// server does) pays for what a window holds, so windows are cut to hold about a page:
    /// each list order keeps the density of todos in time it last saw ([`Walks`]), the first
    /// window spans what should hold 1.15 pages, and windows double while they come back
    /// short. Windows stop at the oldest (or newest) time the projection recorded; past it one
    /// last query runs to the end of the key range, so what the figures say never decides
    /// what a page holds, only what it costs.
    async fn walk(&self, q: &ListQuery) -> Result<Vec<Todo>, ReadError> {
        let by_completed = q.completed.is_some();
        let (field, _, _) = *SORT_KEYS
            .iter()
            .find(|(_, time, c)| *time == q.sort.field() && *c == by_completed)
            .expect("a sort key for every time order");
        let prefix = q.completed.map_or("", completed_prefix);
        let need = q.limit + 1;
        let bounds = self.time_bounds(q.sort).await?;
        // The top of the key range: its end, or the first key of `due_before` (a bare time
        // sorts below every key of that instant).
        let top = match q.due_before {
            Some(t) => format!("{prefix}{}", timestamp(t)),
            None => keys_end(prefix),
        };
        // The open end of the walk, and where it has come to.
        let (mut from_key, mut from_time) = match &q.after {
            Some(c) => {
                let v = c.v.clone().unwrap_or_default();
                (sort_key(prefix, &v, c.id), parse_time(&v))
            }
            None if q.descending => (
                top.clone(),
                match (bounds, q.due_before) {
                    (Some(b), Some(t)) => Some(b.1.min(t)),
                    (b, _) => b.map(|b| b.1),
                },
            ),
            None => (prefix.to_string(), bounds.map(|b| b.0)),
        };
        let density = self.gen().walks.density(field, prefix, q.descending);
        let mut span_us = density.map_or(DEFAULT_SPAN_US, |d| {
            (need as f64 * 1.15 / d).clamp(1.0, MAX_SPAN_US as f64) as i64
        });
        let mut todos: Vec<Todo> = Vec::with_capacity(need as usize);
        let mut window_end: Option<(String, Option<DateTime<Utc>>)> = None;
        loop {
            let remaining = need - todos.len() as i64;
            // Where this window ends (`None`: at the end of the key range); a window cut short
            // by the limit goes on from its last key to the same end.
            let (to_key, to_time) = match window_end.take() {
                Some(end) => end,
                None => {
                    let to_time = match (from_time, bounds) {
                        (Some(at), Some((oldest, newest))) => {
                            let span = chrono::TimeDelta::microseconds(span_us);
                            if q.descending {
                                at.checked_sub_signed(span).filter(|t| *t >= oldest)
                            } else {
                                at.checked_add_signed(span).filter(|t| *t <= newest)
                            }
                        }
                        _ => None,
                    };
                    match to_time {
                        Some(t) if q.descending || format!("{prefix}{}", timestamp(t)) < top => {
                            (format!("{prefix}{}", timestamp(t)), Some(t))
                        }
                        None if q.descending => (prefix.to_string(), None),
                        _ => (top.clone(), None),
                    }
                }
            };
            let (filter, order) = if q.descending {
                (doc! { field: { "$gte": &to_key, "$lt": &from_key } }, -1)
            } else {
                (doc! { field: { "$gt": &from_key, "$lt": &to_key } }, 1)
            };
            let page: Vec<Document> = self
                .gen()
                .todos
                .find(filter)
                .sort(doc! { field: order })
                .limit(remaining)
                .await?
                .try_collect()
                .await?;
            let cut = page.len() as i64 == remaining;
            let last_key = page
                .last()
                .and_then(|d| d.get_str(field).ok())
                .map(str::to_string);
            // Only live todos of the filter count toward the page: a document that still has
            // a key it should not (written by an earlier version) is passed over.
            for d in &page {
                if let Stored::Live(t) = read_document(d)? {
                    // A due-date list holds todos with a due date (a stale key may remain on
                    // one without).
                    let due = match q.due_before {
                        Some(b) => t.due_at.is_some_and(|d| d < b),
                        None => q.sort != SortKey::DueAt || t.due_at.is_some(),
                    };
                    if q.completed.is_none_or(|c| c == t.completed) && due {
                        todos.push(t);
                    }
                }
            }
            if todos.len() as i64 >= need {
                break;
            }
            if let (true, Some(last)) = (cut, last_key) {
                from_key = last;
                window_end = Some((to_key, to_time));
                continue;
            }
            if to_time.is_none() {
                break;
            }
            // The next window starts where this one ended: a bare time sorts below every key
            // of that instant, so each key falls in exactly one window.
            from_key = to_key;
            from_time = to_time;
            span_us = span_us.saturating_mul(2).min(MAX_SPAN_US);
        }
        // What the walk saw of the density of todos in time (from its first todo to its last,
        // at least a millisecond), for the next page of this order.
        if let (Some(first), Some(last)) = (todos.first(), todos.last()) {
            let walked = (time_of(q.sort, last) - time_of(q.sort, first))
                .num_microseconds()
                .unwrap_or(i64::MAX)
                .abs()
                .max(1_000);
            if todos.len() > 1 {
                self.gen().walks.learn(
                    field,
                    prefix,
                    q.descending,
                    (todos.len() - 1) as f64 / walked as f64,
                );
            }
        }
        Ok(todos)
    }

    /// The oldest and newest times of an order the projection recorded (`None` before any),
    /// read at most every [`BOUNDS_MAX_AGE`]: they bound the walk's windows, never what a
    /// page holds.
    async fn time_bounds(
        &self,
        sort: SortKey,
    ) -> mongodb::error::Result<Option<(DateTime<Utc>, DateTime<Utc>)>> {
        let time = sort.field();
        if let Some(bounds) = self.gen().walks.bounds(time) {
            return Ok(bounds);
        }
        let kept = self
            .gen()
            .stats
            .find_one(doc! { "_id": STATS_ID })
            .projection(doc! { format!("min_{time}"): 1, format!("max_{time}"): 1 })
            .await?;
        let read = |k: String| {
            kept.as_ref()
                .and_then(|d| d.get_str(&k).ok())
                .and_then(parse_time)
        };
        let bounds = read(format!("min_{time}")).zip(read(format!("max_{time}")));
        self.gen().walks.keep_bounds(time, bounds);
        Ok(bounds)
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
            // Ids never pass `MAX_ID` (what the write side produces), so the step past the
            // highest one cannot overflow.
            (None, true) => max.insert(self.max_todo_id().await?).saturating_add(1),
        };
        let mut found: Vec<Todo> = Vec::with_capacity(limit + 1);
        let mut window = limit as i64 + 1;
        let mut scanned = 0;
        let exhausted = loop {
            let ids: Vec<i64> = if desc {
                (position.saturating_sub(window).max(1)..position)
                    .rev()
                    .collect()
            } else {
                (position + 1..=position.saturating_add(window)).collect()
            };
            let Some(&last) = ids.last() else {
                break true;
            };
            scanned += ids.len();
            let docs: Vec<Document> = self
                .gen()
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

    /// What the read model holds past `position` (live todos and tombstones whose last
    /// change is later), oldest first, up to `limit`: what a stream reconnecting with
    /// `Last-Event-ID` missed, each todo at its current state.
    ///
    /// It reads windows of positions (`last_position` in `(from, to]`, through its index), not
    /// everything past `position`: a store that walks a whole range before it applies a limit
    /// (the local MongoDB-wire server does) then costs what a page holds, not what the read
    /// model holds. Windows start at twice `limit` positions and double while they come back
    /// short (positions whose events a later one of the same todo superseded hold nothing),
    /// up to [`REPLAY_WINDOW_MAX`] times `limit`, and stop at the highest position recorded. One
    /// call reads at most [`REPLAY_WINDOWS`] windows: the page says where the next one starts
    /// and whether the read model holds anything past it.
    pub async fn changed_after(&self, position: i64, limit: i64) -> Result<ReplayPage, ReadError> {
        let newest = self.max_position().await?;
        let mut docs: Vec<Document> = Vec::new();
        let mut from = position;
        let mut window = limit.saturating_mul(2).max(1);
        let mut windows = 0;
        while (docs.len() as i64) < limit && from < newest && windows < REPLAY_WINDOWS {
            windows += 1;
            let to = from.saturating_add(window).min(newest);
            let page: Vec<Document> = self
                .gen()
                .todos
                .find(doc! { "last_position": { "$gt": from, "$lte": to } })
                .sort(doc! { "last_position": 1 })
                .limit(limit - docs.len() as i64)
                .await?
                .try_collect()
                .await?;
            let full = page.len() as i64 == limit - docs.len() as i64;
            docs.extend(page);
            // A window cut short by the limit ends at its last document.
            from = if full {
                docs.last()
                    .and_then(|d| d.get_i64("last_position").ok())
                    .unwrap_or(to)
            } else {
                to
            };
            window = window
                .saturating_mul(2)
                .min(limit.saturating_mul(REPLAY_WINDOW_MAX));
        }
        let changes = docs
            .iter()
            .map(|d| {
                let stored = read_document(d)?;
                let field = |name: &str| {
                    d.get_i64(name).map_err(|e| {
                        mongodb::error::Error::custom(format!("a document without {name}: {e}"))
                    })
                };
                let position = field("last_position")?;
                Ok(match stored {
                    Stored::Live(todo) => crate::changes::Change {
                        id: todo.id,
                        version: todo.version,
                        position,
                        deleted: false,
                        occurred_at: Some(todo.updated_at),
                        todo: Some(todo),
                    },
                    Stored::Deleted { version } => crate::changes::Change {
                        id: field("_id")?,
                        version,
                        position,
                        deleted: true,
                        todo: None,
                        occurred_at: None,
                    },
                })
            })
            .collect::<mongodb::error::Result<Vec<_>>>()
            .map_err(ReadError::from)?;
        Ok(ReplayPage {
            changes,
            next: from,
            more: from < newest,
        })
    }

    /// The highest log position the read model has applied (0 for none). A read model
    /// projected before this figure was kept gets it once from the collection itself.
    pub async fn max_position(&self) -> mongodb::error::Result<i64> {
        let kept = self
            .gen()
            .stats
            .find_one(doc! { "_id": STATS_ID })
            .projection(doc! { "max_position": 1 })
            .await?
            .and_then(|d| d.get("max_position").and_then(Bson::as_i64));
        if let Some(max) = kept {
            return Ok(max);
        }
        let newest = self
            .gen()
            .todos
            .find_one(doc! {})
            .sort(doc! { "last_position": -1 })
            .projection(doc! { "last_position": 1 })
            .await?
            .and_then(|d| d.get_i64("last_position").ok())
            .unwrap_or(0);
        self.gen()
            .stats
            .update_one(
                doc! { "_id": STATS_ID },
                doc! { "$max": { "max_position": newest } },
            )
            .upsert(true)
            .await?;
        Ok(newest)
    }

    /// The highest todo id the read model has seen (0 for none): the counters' figure, or the
    /// highest this process wrote since, if higher. A read model projected before this figure
    /// was kept gets it once from the collection itself.
    pub async fn max_todo_id(&self) -> mongodb::error::Result<i64> {
        let written = self
            .gen()
            .written_highest
            .load(std::sync::atomic::Ordering::Relaxed);
        let kept = self
            .gen()
            .stats
            .find_one(doc! { "_id": STATS_ID })
            .projection(doc! { "max_todo_id": 1 })
            .await?
            .and_then(|d| d.get("max_todo_id").and_then(Bson::as_i64));
        if let Some(max) = kept {
            return Ok(max.max(written));
        }
        let newest = self
            .gen()
            .todos
            .find_one(doc! {})
            .sort(doc! { "_id": -1 })
            .projection(doc! { "_id": 1 })
            .await?
            .and_then(|d| d.get_i64("_id").ok())
            .unwrap_or(0);
        self.gen()
            .stats
            .update_one(
                doc! { "_id": STATS_ID },
                doc! { "$max": { "max_todo_id": newest } },
            )
            .upsert(true)
            .await?;
        Ok(newest)
    }

    /// How many live todos there are, and how many of them are completed, counted: reads every
    /// document. Only where the counts are not kept yet (callers cache it), and to keep them.
    pub async fn count_todos(&self) -> Result<(u64, u64), ReadError> {
        let total = self
            .gen()
            .todos
            .count_documents(doc! { "deleted": false })
            .await?;
        let completed = self
            .gen()
            .todos
            .count_documents(doc! { "deleted": false, "completed": true })
            .await?;
        Ok((total, completed))
    }

    /// The shared projection counters (one point read).
    pub async fn projection_stats(&self) -> Result<ProjectionStats, ReadError> {
        Ok(self.stats_and_counts().await?.0)
    }

    /// The shared projection counters and the counts of live and completed todos they keep
    /// (`None` on a read model whose counts are not kept yet): one point read.
    pub async fn stats_and_counts(
        &self,
    ) -> Result<(ProjectionStats, Option<(u64, u64)>), ReadError> {
        let p = self
            .gen()
            .stats
            .find_one(doc! { "_id": STATS_ID })
            .await?
            // No counters document yet: no batch was ever recorded, every figure is 0.
            .unwrap_or_default();
        let int = |k: &str| p.get(k).and_then(Bson::as_i64).unwrap_or(0);
        let text = |k: &str| p.get_str(k).ok().map(str::to_string);
        let counts = p.get(super::COUNTS_KEPT).is_some().then(|| {
            (
                int("todos_live").max(0) as u64,
                int("todos_completed").max(0) as u64,
            )
        });
        let stats = ProjectionStats {
            applied: int("applied"),
            skipped_duplicates: int("skipped_duplicates"),
            superseded: int("superseded"),
            dead_lettered: int("dead_lettered"),
            last_event_at: text("last_event_at"),
            last_applied_at: text("last_applied_at"),
            lag_ms: p.get("lag_ms").and_then(Bson::as_i64),
        };
        Ok((stats, counts))
    }
}
