//! Reading the read model: one todo or many by id, every id, pages of live todos (in id
//! windows, or along the time indexes), the highest todo id, the counts and the projection's
//! stats.

use super::document::{from_document, read_document, timestamp};
use super::{is_transient, Store, Stored, Todo, STATS_ID};
use bson::{doc, Bson, Document};
use futures_util::TryStreamExt;
use serde::Serialize;
use std::collections::HashMap;

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
    pub async fn get(&self, id: i64) -> Result<Option<Stored>, ReadError> {
        self.todos
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
    pub async fn list(&self, q: &ListQuery) -> Result<(Vec<Todo>, Option<Cursor>), ReadError> {
        if q.sort == SortKey::Id {
            return Ok(self.list_by_id(q).await?);
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
            .stats
            .find_one(doc! { "_id": STATS_ID })
            .projection(doc! { "max_position": 1 })
            .await?
            .and_then(|d| d.get("max_position").and_then(Bson::as_i64));
        if let Some(max) = kept {
            return Ok(max);
        }
        let newest = self
            .todos
            .find_one(doc! {})
            .sort(doc! { "last_position": -1 })
            .projection(doc! { "last_position": 1 })
            .await?
            .and_then(|d| d.get_i64("last_position").ok())
            .unwrap_or(0);
        self.stats
            .update_one(
                doc! { "_id": STATS_ID },
                doc! { "$max": { "max_position": newest } },
            )
            .upsert(true)
            .await?;
        Ok(newest)
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
    pub async fn counts(&self) -> Result<(u64, u64), ReadError> {
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
    pub async fn projection_stats(&self) -> Result<ProjectionStats, ReadError> {
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
