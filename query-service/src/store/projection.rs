//! The projection's writes: events applied to `todos` with a version guard, and the shared
//! counters of what it did.
//!
//! Applying an event is one version-guarded upsert (built by `document::guarded_upsert`): the
//! filter `{_id, version: {$lt: v}}` matches only a document older than the event. A newer or
//! equal document makes the upsert try to insert a second `_id`, which the unique `_id` index
//! refuses (E11000). A delete keeps the document as a tombstone with its version, so nothing
//! older can bring the todo back.
//!
//! [`Store::apply_batch`] applies many events in one unordered bulk `update` command: per todo
//! only the newest event of the batch is written (each event carries the todo's full state, so
//! the newest alone gives the same document). It first reads what the batch's todos hold (one
//! `_id: {$in: …}` read; a todo's first version is not read for, but written only where no
//! document is): an event not newer than that is a duplicate, skipped without a write (that is
//! how a duplicate or late event is recognised). Each write is filtered on exactly
//! the version read (or, where there was nothing, inserts only), so what it replaced is known
//! and the counts of live and completed todos move by exactly that (kept with the counters, so
//! `/stats` reads them, never counts). A write that meets a document changed since the read
//! (another replica's write) fails on the `_id` index (E11000) and is tried again from a new
//! read, up to four times; then it is refused, and the consumer holds the event and
//! tries later. Over a document this version cannot read, the version guard alone decides.
//!
//! `projection_stats` holds one document of counters shared by every replica, updated once per
//! batch by [`Store::record`].

use super::document::{guarded_upsert, timestamp};
use super::Stored;
use super::{Store, COUNTS_KEPT, STATS_ID, WRITE_CONCERN_FAILED};
use bson::{doc, Document};
use chrono::{DateTime, Utc};
use events::Envelope;
use futures_util::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use std::collections::HashMap;

/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

/// What the projection did with one event; also the `outcome` label of
/// `projection_events_total` (its values: [`crate::metrics`]).
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

impl Refused {
    /// Whether trying again may land it: another writer's insert in the way (a duplicate key
    /// after the guard's tries), a write concern not met, a server stepping down.
    pub fn retryable(&self) -> bool {
        self.code == DUPLICATE_KEY
            || self.code == WRITE_CONCERN_FAILED
            || super::TRANSIENT_CODES.contains(&self.code)
    }
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

impl Store {
    /// Puts a document that is ahead of `e` (the log's newest event of its todo) back to the
    /// state `e` leaves it in; 1 if it was ahead, else 0. Only `verify --repair` calls it.
    pub async fn reset_ahead(&self, e: &Envelope) -> mongodb::error::Result<u64> {
        let (filter, update) = super::document::reset_ahead(e);
        Ok(self
            .gen()
            .todos
            .update_one(filter, update)
            .await?
            .modified_count)
    }

    /// Sets the highest todo id and log position the read model keeps (`verify --repair`: the
    /// log's), which lists in id order and replays walk up to.
    pub async fn reset_highest(&self, highest: Highest) -> mongodb::error::Result<()> {
        self.gen().stats
            .update_one(
                doc! { "_id": super::STATS_ID },
                doc! { "$set": { "max_todo_id": highest.todo_id, "max_position": highest.position } },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Counts the live and completed todos of a read model written by an earlier version, once,
    /// and keeps them with the counters (from then on each batch moves them); `verify
    /// --repair` counts again. Batches applied while it counts may be counted twice or not at
    /// all: `verify` tells.
    pub async fn keep_counts(&self, recount: bool) -> Result<(), super::ReadError> {
        let kept = self
            .gen()
            .stats
            .find_one(doc! { "_id": STATS_ID })
            .projection(doc! { COUNTS_KEPT: 1 })
            .await?;
        if !recount && kept.is_some_and(|d| d.get(COUNTS_KEPT).is_some()) {
            return Ok(());
        }
        let (live, completed) = self.count_todos().await?;
        self.gen()
            .stats
            .update_one(
                doc! { "_id": STATS_ID },
                doc! { "$set": {
                    "todos_live": live as i64,
                    "todos_completed": completed as i64,
                    COUNTS_KEPT: true,
                } },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Gives the live todos of a read model written by an earlier version their sort keys
    /// (`document.rs`), once: a flag in the counters says it was done. Walks the ids in
    /// windows of 1,000 (one `_id: {$in: …}` read and one bulk update each); each update is
    /// guarded by the version it read, so a todo the projection changed meanwhile keeps the
    /// keys the projection gave it. Returns how many todos it gave keys to.
    pub async fn add_sort_keys(&self) -> mongodb::error::Result<u64> {
        const DONE: &str = "sort_keys";
        let flag = self
            .gen()
            .stats
            .find_one(doc! { "_id": STATS_ID })
            .projection(doc! { DONE: 1 })
            .await?;
        if flag.is_some_and(|d| d.get(DONE).is_some()) {
            return Ok(0);
        }
        let highest = self.max_todo_id().await?;
        let mut added = 0;
        let mut from = 0i64;
        while from < highest {
            let ids: Vec<i64> = (from + 1..=from.saturating_add(1_000).min(highest)).collect();
            from = *ids.last().expect("a window");
            let docs: Vec<Document> = self
                .gen()
                .todos
                .find(doc! { "_id": { "$in": &ids }, "deleted": false })
                .await?
                .try_collect()
                .await?;
            let updates: Vec<Document> = docs
                .iter()
                .filter(|d| !d.contains_key("sort_created"))
                .filter_map(|d| {
                    // A read model written before sort keys predates due dates too.
                    let keys = super::document::sort_keys(
                        d.get_i64("_id").ok()?,
                        d.get_bool("completed").ok()?,
                        [
                            Some(d.get_str("created_at").ok()?),
                            Some(d.get_str("updated_at").ok()?),
                            None,
                        ],
                    );
                    Some(doc! {
                        "q": { "_id": d.get_i64("_id").ok()?, "version": d.get_i64("version").ok()?, "deleted": false },
                        "u": { "$set": keys },
                    })
                })
                .collect();
            if !updates.is_empty() {
                let reply = self
                    .db
                    .run_command(
                        doc! { "update": self.gen().todos.name(), "updates": updates, "ordered": false },
                    )
                    .await?;
                added += reply.get_i32("nModified").map_or(0, |n| n as u64);
            }
        }
        self.gen()
            .stats
            .update_one(doc! { "_id": STATS_ID }, doc! { "$set": { DONE: 1 } })
            .upsert(true)
            .await?;
        Ok(added)
    }

    /// Applies one event: [`Store::apply_batch`] of one. `Err(Refused)`: MongoDB refused its
    /// write.
    pub async fn apply(&self, e: &Envelope) -> mongodb::error::Result<Result<Outcome, Refused>> {
        Ok(self
            .apply_batch(std::slice::from_ref(e))
            .await?
            .pop()
            .flatten()
            .expect("the one event of a batch of one is settled"))
    }

    /// Applies a batch of events in one bulk command (see the top of this module). The result has
    /// one entry per event, in order. An error is the whole command failing (nothing can be
    /// said of any event); a [`Refused`] entry is MongoDB refusing that event's write; the
    /// older events of that todo in the batch are left unsettled (`None`).
    pub async fn apply_batch(&self, events: &[Envelope]) -> mongodb::error::Result<BatchResult> {
        self.apply_batch_racing(events, || async {}).await
    }

    /// [`Store::apply_batch`], running `before_first_write` after the first try's read and
    /// before its write: the moment at which, in a race, another replica's write lands. A test
    /// uses it to be that replica, since a server that runs one command at a time never
    /// interleaves two replicas' commands by itself.
    pub async fn apply_batch_racing<F, Fut>(
        &self,
        events: &[Envelope],
        mut before_first_write: F,
    ) -> mongodb::error::Result<BatchResult>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        // One generation for the whole batch: its reads, writes and counts.
        let this = self.pinned_now();
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
        // Each try reads what the todos hold now and writes over exactly that, so the counts
        // of live and completed todos move by what each write replaced. A write that meets a
        // document changed since the read (another replica's) is tried again.
        for attempt in 0..WRITE_TRIES {
            if pending.is_empty() {
                break;
            }
            // A todo's first version needs no read: it is written only where nothing is (and
            // meets the `_id` index otherwise, then is read on the next try).
            let ids: Vec<i64> = pending
                .iter()
                .filter(|&&i| attempt > 0 || events[i].version > 1)
                .map(|&i| events[i].todo_id)
                .collect();
            let priors = if ids.is_empty() {
                HashMap::new()
            } else {
                this.get_many(&ids).await?
            };
            let mut to_write = Vec::with_capacity(pending.len());
            for &i in &pending {
                let e = &events[i];
                match priors.get(&e.todo_id) {
                    Some(Some(stored)) if stored.version() >= e.version => {
                        results.insert(i, Ok(Outcome::Duplicate));
                    }
                    Some(Some(stored)) => to_write.push((i, Some(stored.clone()))),
                    // A document this version cannot read: written over by the version guard
                    // alone, counted as if nothing was there.
                    Some(None) | None => to_write.push((i, None)),
                }
            }
            if to_write.is_empty() {
                break;
            }
            if attempt == 0 {
                before_first_write().await;
            }
            let guards: Vec<Guard> = to_write
                .iter()
                .map(
                    |(i, prior)| match (prior, priors.get(&events[*i].todo_id)) {
                        (Some(stored), _) => Guard::Exactly(stored.version()),
                        (None, Some(None)) => Guard::Older,
                        (None, _) => Guard::Absent,
                    },
                )
                .collect();
            let errors = this
                .bulk_upsert(
                    to_write
                        .iter()
                        .zip(&guards)
                        .map(|((i, _), guard)| (&events[*i], *guard)),
                )
                .await?;
            let mut again = Vec::new();
            let mut tally = Tally::default();
            for (k, (i, prior)) in to_write.into_iter().enumerate() {
                match errors.get(&k) {
                    None => {
                        if attempt > 0 {
                            tracing::debug!(
                                todo_id = events[i].todo_id,
                                version = events[i].version,
                                "applied on a later try: another writer changed the todo first"
                            );
                        }
                        tally.replace(prior.as_ref(), &Stored::after(&events[i]));
                        this.gen()
                            .written_highest
                            .fetch_max(events[i].todo_id, std::sync::atomic::Ordering::Relaxed);
                        results.insert(i, Ok(Outcome::Applied));
                    }
                    // Over a document this version cannot read, the guard alone decides, as
                    // it always did: a duplicate key means it is not older.
                    Some(r) if r.code == DUPLICATE_KEY && guards[k] == Guard::Older => {
                        results.insert(i, Ok(Outcome::Duplicate));
                    }
                    Some(r) if r.code == DUPLICATE_KEY && attempt + 1 < WRITE_TRIES => {
                        again.push(i)
                    }
                    Some(r) => {
                        results.insert(i, Err(r.clone()));
                    }
                }
            }
            // What landed is counted now, before a later try can fail the whole batch.
            this.gen()
                .tally
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(tally);
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
        events: impl Iterator<Item = (&'a Envelope, Guard)>,
    ) -> mongodb::error::Result<HashMap<usize, Refused>> {
        let updates: Vec<(&Envelope, Guard)> = events.collect();
        let reply = self
            .db
            .run_command(bulk_command(
                self.gen().todos.name(),
                updates
                    .iter()
                    .map(|(e, guard)| super::document::upsert_over(e, *guard)),
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
        highest: Highest,
    ) -> mongodb::error::Result<()> {
        let g = self.gen();
        let mut max = doc! { "max_todo_id": highest.todo_id, "max_position": highest.position };
        // The span of the times the sort keys hold: time-ordered lists walk windows of it.
        let mut min = Document::new();
        for (time, span) in [
            ("created_at", highest.created),
            ("updated_at", highest.updated),
            ("due_at", highest.due),
        ] {
            if let Some((low, high)) = span {
                min.insert(format!("min_{time}"), timestamp(low));
                max.insert(format!("max_{time}"), timestamp(high));
            }
        }
        // The counts the writes since the last record moved (taken now: a record that fails
        // puts them back for the next).
        let tally = std::mem::take(&mut *g.tally.lock().unwrap_or_else(|e| e.into_inner()));
        let mut update = doc! { "$inc": {
            "applied": counts.applied,
            "skipped_duplicates": counts.duplicates,
            "superseded": counts.superseded,
            "dead_lettered": counts.dead_lettered,
            "todos_live": tally.live,
            "todos_completed": tally.completed,
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
        if !min.is_empty() {
            update.insert("$min", min);
        }
        // A duplicate is mostly a redelivery: a batch whose writes may have landed before a
        // crash, their counts not (a duplicate moves no count). The kept counts are suspect
        // until they are counted again while the projection is quiet (`Store::recount_if_quiet`).
        if counts.duplicates > 0 {
            match update.get_document_mut("$set") {
                Ok(set) => {
                    set.insert(COUNTS_SUSPECT, true);
                }
                Err(_) => {
                    update.insert("$set", doc! { COUNTS_SUSPECT: true });
                }
            }
        }
        if let Err(err) = g
            .stats
            .update_one(doc! { "_id": STATS_ID }, update)
            .upsert(true)
            .await
        {
            // Put back for the next record. (A record that landed but whose answer was lost
            // counts twice: `verify` reports counts that differ from the log's.)
            g.tally.lock().unwrap_or_else(|e| e.into_inner()).add(tally);
            return Err(err);
        }
        Ok(())
    }
}

/// The flag of the counters that says the kept counts may be off: a batch met duplicates.
pub(super) const COUNTS_SUSPECT: &str = "counts_suspect";

impl Store {
    /// Counts the live and completed todos again and keeps them, if the counts are suspect
    /// ([`COUNTS_SUSPECT`]) and the projection was quiet throughout: `head` is the head of the
    /// log before (the read model applied up to it: nothing waits) and `head_after` reads it
    /// again once counted. A write that landed while counting belongs to an event stamped before
    /// the count ended, so an unchanged head means none did; and the counts are set only if the
    /// applied position is still `head`, so a batch recorded meanwhile makes it try another
    /// time. Returns the counts before and after when it set them.
    pub async fn recount_if_quiet<F, Fut>(
        &self,
        head: i64,
        head_after: F,
    ) -> Result<Option<((i64, i64), (u64, u64))>, super::ReadError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<i64>>,
    {
        let this = self.pinned_now();
        let g = this.gen();
        let Some(stats) = g
            .stats
            .find_one(doc! { "_id": STATS_ID, COUNTS_SUSPECT: true, "max_position": head })
            .await?
        else {
            return Ok(None);
        };
        let before = (
            stats.get_i64("todos_live").unwrap_or(0),
            stats.get_i64("todos_completed").unwrap_or(0),
        );
        let (live, completed) = this.count_todos().await?;
        if head_after().await != Some(head) {
            return Ok(None);
        }
        let set = g
            .stats
            .update_one(
                doc! { "_id": STATS_ID, COUNTS_SUSPECT: true, "max_position": head },
                doc! {
                    "$set": { "todos_live": live as i64, "todos_completed": completed as i64 },
                    "$unset": { COUNTS_SUSPECT: "" },
                },
            )
            .await?;
        Ok((set.modified_count == 1).then_some((before, (live, completed))))
    }
}

/// The highest todo id and log position a batch settled: kept with the counters, lists in id
/// order walk up to the one, replays for `Last-Event-ID` up to the other. And the span of the
/// `created_at` and `updated_at` times it wrote, which the time-ordered lists walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Highest {
    pub todo_id: i64,
    pub position: i64,
    pub created: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub updated: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub due: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

fn widest(
    a: Option<(DateTime<Utc>, DateTime<Utc>)>,
    b: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    match (a, b) {
        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.max(b.1))),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Highest {
    /// The higher of each figure, the wider of each span.
    pub fn max(self, other: Self) -> Self {
        Self {
            todo_id: self.todo_id.max(other.todo_id),
            position: self.position.max(other.position),
            created: widest(self.created, other.created),
            updated: widest(self.updated, other.updated),
            due: widest(self.due, other.due),
        }
    }

    /// The highest of `events`.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Self {
        events.into_iter().fold(Self::default(), |h, e| {
            let state = e.data.as_ref();
            h.max(Self {
                todo_id: e.todo_id,
                position: e.position,
                created: state.map(|d| (d.created_at, d.created_at)),
                updated: state.map(|d| (d.updated_at, d.updated_at)),
                due: state.and_then(|d| d.due_at).map(|t| (t, t)),
            })
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
    bulk_command(collection, events.map(guarded_upsert))
}

fn bulk_command(collection: &str, writes: impl Iterator<Item = (Document, Document)>) -> Document {
    let updates: Vec<Document> = writes
        .map(|(q, u)| doc! { "q": q, "u": u, "upsert": true })
        .collect();
    doc! { "update": collection, "updates": updates, "ordered": false }
}

/// How many tries a batch's write of one todo gets while other writers keep changing it.
const WRITE_TRIES: usize = 4;

/// What a write of a batch was guarded by: the version read, the version guard alone (a
/// document this version cannot read), or no document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guard {
    Exactly(i64),
    Older,
    Absent,
}

/// How the counts of live and of completed live todos moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub live: i64,
    pub completed: i64,
}

impl Tally {
    fn weigh(stored: Option<&Stored>) -> (i64, i64) {
        match stored {
            Some(Stored::Live(t)) => (1, i64::from(t.completed)),
            _ => (0, 0),
        }
    }

    /// A write replaced `before` with `after`.
    fn replace(&mut self, before: Option<&Stored>, after: &Stored) {
        let (l0, c0) = Self::weigh(before);
        let (l1, c1) = Self::weigh(Some(after));
        self.live += l1 - l0;
        self.completed += c1 - c0;
    }

    fn add(&mut self, other: Tally) {
        self.live += other.live;
        self.completed += other.completed;
    }
}
