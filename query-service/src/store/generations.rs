//! Generations of the read model, and the pointer every reader follows.
//!
//! The read model is a pair of collections, a *generation*: generation 0 is `todos` and
//! `projection_stats` (every read model before rebuilds existed), generation `n` is `todos_n`
//! and `projection_stats_n`. One document, `_id: "pointer"` in `read_model`, says which one
//! reads are served from (`current`), which one a rebuild is filling (`building`), and which
//! one was current before the last switch and is kept a while for readers that have not
//! switched yet (`previous`, until `previous_until`). No document: generation 0, nothing else.
//!
//! How the switch keeps its promise (a reader never sees fewer todos, a missing one or an
//! older version after it than before), `query_service::rebuild` at length; in short:
//!
//! - every process re-reads the pointer every [`POINTER_EVERY`]; readers follow `current`;
//! - the consumer writes each batch to every generation the pointer names, newest first, with
//!   a pointer no older than [`POINTER_MAX_AGE`]; so once every consumer has seen `building`,
//!   the generation being built holds everything the current one does, and goes on holding it;
//! - a rebuild waits [`SWITCH_WAIT`] after naming its generation, so that every consumer has
//!   seen it, before it reads the log: an event a consumer wrote to the current generation
//!   alone was in the log before the rebuild started reading it.

use super::{reads::Walks, Store};
use bson::{doc, Document};
use chrono::{DateTime, Utc};
use mongodb::Collection;
use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The collection of the pointer document.
pub const POINTER_COLLECTION: &str = "read_model";
/// The `_id` of the pointer document.
const POINTER_ID: &str = "pointer";
/// How often a serving process re-reads the pointer.
pub const POINTER_EVERY: Duration = Duration::from_secs(1);
/// The oldest reading of the pointer a batch may be written by: older, it is read again first.
pub const POINTER_MAX_AGE: Duration = Duration::from_secs(2);
/// How long a rebuild waits between naming its generation and reading the log, and between
/// unnaming the previous generation and dropping it: longer than any consumer keeps a reading.
pub const SWITCH_WAIT: Duration = Duration::from_secs(5);
/// How long a rebuild's hold on its generation lasts unless renewed (it renews it at every
/// step): a rebuild that was killed is taken up by another once this has run out.
pub const LEASE: Duration = Duration::from_secs(30);

fn lease_until() -> bson::DateTime {
    bson::DateTime::from_chrono(Utc::now() + chrono::Duration::from_std(LEASE).unwrap_or_default())
}

/// The pointer document: which generation is which.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pointer {
    /// The generation reads are served from.
    pub current: i64,
    /// The generation a rebuild is filling, once it is ready for writes (its collections made,
    /// its indexes built): every consumer writes to it too.
    pub building: Option<i64>,
    /// The generation a rebuild claimed and is still preparing: nobody writes to it yet.
    pub preparing: Option<i64>,
    /// The log position up to which the rebuild has applied the log to `building`, its writes
    /// and their counts.
    pub build_position: i64,
    /// The log position up to which the rebuild is writing now: set while a bulk write is in
    /// flight. Found set by a rebuild that takes up a stopped one, it says that writes may have
    /// landed without their counts.
    pub build_writing: Option<i64>,
    /// The generation current before the last switch, still written to until
    /// `previous_until`, then dropped.
    pub previous: Option<i64>,
    pub previous_until: Option<DateTime<Utc>>,
    /// The rebuild that holds `preparing` or `building`, and until when: it renews its lease
    /// at every step; another rebuild takes it up only once the lease has run out.
    pub owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
}

impl Pointer {
    fn from_document(d: &Document) -> Self {
        let number = |k: &str| {
            d.get(k)
                .and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)))
        };
        Pointer {
            current: number("current").unwrap_or(0),
            building: number("building"),
            preparing: number("preparing"),
            build_position: number("build_position").unwrap_or(0),
            build_writing: number("build_writing"),
            previous: number("previous"),
            previous_until: d.get_datetime("previous_until").ok().map(|t| t.to_chrono()),
            owner: d.get_str("owner").ok().map(String::from),
            lease_until: d.get_datetime("lease_until").ok().map(|t| t.to_chrono()),
        }
    }

    /// The generations a batch is written to, newest first: the one being built, the current
    /// one, the previous one while it is kept.
    pub fn written(&self) -> Vec<i64> {
        let mut all: Vec<i64> = [self.building, Some(self.current), self.previous]
            .into_iter()
            .flatten()
            .collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.dedup();
        all
    }

    /// Every generation the pointer names (the ones whose collections must not be dropped).
    pub fn named(&self) -> Vec<i64> {
        let mut all = self.written();
        all.extend(self.preparing);
        all
    }
}

/// The names of generation `n`'s two collections: the todos and the counters.
pub fn collection_names(n: i64) -> (String, String) {
    if n == 0 {
        ("todos".into(), "projection_stats".into())
    } else {
        (format!("todos_{n}"), format!("projection_stats_{n}"))
    }
}

/// The generation a collection name belongs to, if it is one of a generation's.
pub fn generation_of(collection: &str) -> Option<i64> {
    match collection {
        "todos" | "projection_stats" => Some(0),
        _ => {
            let n = collection
                .strip_prefix("todos_")
                .or_else(|| collection.strip_prefix("projection_stats_"))?;
            n.parse().ok().filter(|&n: &i64| n > 0)
        }
    }
}

/// One generation: its collections and what this process learned of them.
pub struct Generation {
    pub number: i64,
    pub(crate) todos: Collection<Document>,
    pub(crate) stats: Collection<Document>,
    /// What time-ordered lists learned of this generation.
    pub(crate) walks: Walks,
    /// How the writes since the last [`Store::record`] moved the counts of live and completed
    /// todos; the record adds it to the counters.
    pub(crate) tally: Mutex<super::projection::Tally>,
    /// The highest todo id this process's writes put in this generation: the counters get it
    /// only when the batch settles, and a list in id order must not stop short of a todo a
    /// `?min_version=` read already answered.
    pub(crate) written_highest: AtomicI64,
}

/// The generations this process has met and the pointer as last read, shared by every copy of
/// a [`Store`].
pub struct Generations {
    db: mongodb::Database,
    pointer: RwLock<(Pointer, Option<Instant>)>,
    known: Mutex<HashMap<i64, Arc<Generation>>>,
}

impl Generations {
    pub(crate) fn new(db: mongodb::Database) -> Self {
        Self {
            db,
            pointer: RwLock::new((Pointer::default(), None)),
            known: Mutex::default(),
        }
    }

    fn get(&self, n: i64) -> Arc<Generation> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(n)
            .or_insert_with(|| {
                let (todos, stats) = collection_names(n);
                Arc::new(Generation {
                    number: n,
                    todos: self.db.collection(&todos),
                    stats: self.db.collection(&stats),
                    walks: Walks::default(),
                    tally: Mutex::default(),
                    written_highest: AtomicI64::new(0),
                })
            })
            .clone()
    }
}

/// The handles a batch is written through: each pinned to one generation.
pub struct Targets {
    /// Newer than the current one (the generation being built): written before it.
    pub newer: Vec<Store>,
    /// The generation reads are served from: its outcomes settle the batch.
    pub current: Store,
    /// Older (the previous generation while it is kept): written after it.
    pub older: Vec<Store>,
}

impl Store {
    /// The generation this handle works on: the pinned one, else the current one as the
    /// pointer was last read.
    pub(crate) fn gen(&self) -> Arc<Generation> {
        match &self.pinned {
            Some(g) => g.clone(),
            None => self.generations.get(self.pointer().current),
        }
    }

    /// A handle on generation `n` alone, whatever the pointer says.
    pub fn pinned(&self, n: i64) -> Store {
        Store {
            pinned: Some(self.generations.get(n)),
            ..self.clone()
        }
    }

    /// A handle on the generation this one works on now, kept whatever the pointer says next.
    pub fn pinned_now(&self) -> Store {
        Store {
            pinned: Some(self.gen()),
            ..self.clone()
        }
    }

    /// The generation this handle works on now.
    pub fn generation(&self) -> i64 {
        self.gen().number
    }

    /// The pointer as this process last read it.
    pub fn pointer(&self) -> Pointer {
        self.generations
            .pointer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    fn pointer_collection(&self) -> Collection<Document> {
        self.db.collection(POINTER_COLLECTION)
    }

    /// Reads the pointer from MongoDB and follows it from now on.
    pub async fn refresh_pointer(&self) -> mongodb::error::Result<Pointer> {
        let asked = Instant::now();
        let found = self
            .pointer_collection()
            .find_one(doc! { "_id": POINTER_ID })
            .await?;
        let pointer = found
            .as_ref()
            .map(Pointer::from_document)
            .unwrap_or_default();
        let mut kept = self
            .generations
            .pointer
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Two readings racing: the one asked later wins.
        if kept.1.is_none_or(|at| at <= asked) {
            if kept.1.is_some() && kept.0.current != pointer.current {
                tracing::info!(
                    from = kept.0.current,
                    to = pointer.current,
                    "the read model's pointer moved: reads follow it"
                );
            }
            *kept = (pointer.clone(), Some(asked));
        }
        Ok(pointer)
    }

    /// The pointer, read again first if this process's reading is older than `max_age`.
    pub async fn fresh_pointer(&self, max_age: Duration) -> mongodb::error::Result<Pointer> {
        let kept = self
            .generations
            .pointer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match kept {
            (pointer, Some(at)) if at.elapsed() < max_age => Ok(pointer),
            _ => self.refresh_pointer().await,
        }
    }

    /// The handles a batch is written through, by a pointer no older than [`POINTER_MAX_AGE`].
    pub async fn targets(&self) -> mongodb::error::Result<Targets> {
        let pointer = self.fresh_pointer(POINTER_MAX_AGE).await?;
        let mut targets = Targets {
            newer: Vec::new(),
            current: self.pinned(pointer.current),
            older: Vec::new(),
        };
        for n in pointer.written() {
            if n > pointer.current {
                targets.newer.push(self.pinned(n));
            } else if n < pointer.current {
                targets.older.push(self.pinned(n));
            }
        }
        Ok(targets)
    }

    /// Claims generation `current + 1` for the rebuild `owner`: `preparing` in the pointer,
    /// with its lease, if no other rebuild holds one. `None` when another does (or the pointer
    /// moved meanwhile).
    pub async fn claim_generation(
        &self,
        seen: &Pointer,
        owner: &str,
    ) -> mongodb::error::Result<Option<i64>> {
        let next = seen.named().into_iter().max().unwrap_or(0) + 1;
        let claimed = self
            .pointer_collection()
            .update_one(
                doc! {
                    "_id": POINTER_ID,
                    "current": seen.current,
                    "building": null,
                    "preparing": null,
                },
                doc! { "$set": {
                    "preparing": next,
                    "build_position": 0_i64,
                    "owner": owner,
                    "lease_until": lease_until(),
                } },
            )
            .upsert(true)
            .await;
        match claimed {
            Ok(r) if r.modified_count == 1 || r.upserted_id.is_some() => Ok(Some(next)),
            Ok(_) => Ok(None),
            // The upsert met the existing document: another rebuild's, or another pointer.
            Err(err) if super::is_duplicate_key(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Takes up generation `n` (being prepared or built) for the rebuild `owner`, if the lease
    /// of the rebuild that held it has run out.
    pub async fn take_over(&self, n: i64, owner: &str) -> mongodb::error::Result<bool> {
        let r = self
            .pointer_collection()
            .update_one(
                doc! {
                    "_id": POINTER_ID,
                    "$and": [
                        { "$or": [ { "building": n }, { "preparing": n } ] },
                        { "$or": [
                            { "lease_until": { "$lt": bson::DateTime::now() } },
                            { "lease_until": { "$exists": false } },
                        ] },
                    ],
                },
                doc! { "$set": { "owner": owner, "lease_until": lease_until() } },
            )
            .await?;
        Ok(r.modified_count == 1)
    }

    /// Lets go of the lease of `owner` on generation `n` (a rebuild stopping on purpose):
    /// another may take it up at once.
    pub async fn release(&self, n: i64, owner: &str) -> mongodb::error::Result<()> {
        self.pointer_collection()
            .update_one(
                doc! { "_id": POINTER_ID, "owner": owner, "$or": [ { "building": n }, { "preparing": n } ] },
                doc! { "$unset": { "owner": "", "lease_until": "" } },
            )
            .await?;
        Ok(())
    }

    /// Makes a claimed generation `building`: from now on every consumer writes to it too.
    pub async fn open_for_writes(&self, n: i64, owner: &str) -> mongodb::error::Result<bool> {
        let r = self
            .pointer_collection()
            .update_one(
                doc! { "_id": POINTER_ID, "preparing": n, "owner": owner },
                doc! {
                    "$set": { "building": n, "lease_until": lease_until() },
                    "$unset": { "preparing": "" },
                },
            )
            .await?;
        Ok(r.modified_count == 1)
    }

    /// Gives generation `n` up, being prepared or built by `owner`: unnamed, then (after
    /// [`SWITCH_WAIT`], once no consumer writes to it) dropped. `false` when `owner` does not
    /// hold it.
    pub async fn abandon(&self, n: i64, owner: &str) -> mongodb::error::Result<bool> {
        let r = self
            .pointer_collection()
            .update_one(
                doc! {
                    "_id": POINTER_ID,
                    "owner": owner,
                    "$or": [ { "building": n }, { "preparing": n } ],
                },
                doc! { "$unset": {
                    "building": "", "preparing": "", "build_position": "", "build_writing": "",
                    "owner": "", "lease_until": "",
                } },
            )
            .await?;
        if r.modified_count == 0 {
            return Ok(false);
        }
        tokio::time::sleep(SWITCH_WAIT).await;
        self.drop_generation(n).await?;
        Ok(true)
    }

    /// Records that the rebuild `owner` is writing the log up to `position` to generation
    /// `n`, and renews its lease.
    pub async fn record_build_writing(
        &self,
        n: i64,
        owner: &str,
        position: i64,
    ) -> mongodb::error::Result<bool> {
        let r = self
            .pointer_collection()
            .update_one(
                doc! { "_id": POINTER_ID, "building": n, "owner": owner },
                doc! { "$set": { "build_writing": position, "lease_until": lease_until() } },
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Records that the rebuild `owner` applied the log up to `position` to generation `n`,
    /// writes and counts, and renews its lease.
    pub async fn record_build_position(
        &self,
        n: i64,
        owner: &str,
        position: i64,
    ) -> mongodb::error::Result<bool> {
        let r = self
            .pointer_collection()
            .update_one(
                doc! { "_id": POINTER_ID, "building": n, "owner": owner },
                doc! {
                    "$max": { "build_position": position },
                    "$set": { "lease_until": lease_until() },
                    "$unset": { "build_writing": "" },
                },
            )
            .await?;
        Ok(r.matched_count == 1)
    }

    /// Switches every reader to generation `n`, which a rebuild built: it becomes current, the
    /// current one becomes previous and is kept (written to) until `grace` has passed.
    pub async fn switch_to(
        &self,
        n: i64,
        owner: &str,
        grace: Duration,
    ) -> mongodb::error::Result<Option<i64>> {
        let Some(found) = self
            .pointer_collection()
            .find_one(doc! { "_id": POINTER_ID, "building": n, "owner": owner })
            .await?
        else {
            return Ok(None);
        };
        let old = Pointer::from_document(&found).current;
        let until = Utc::now() + chrono::Duration::from_std(grace).unwrap_or_default();
        let r = self
            .pointer_collection()
            .update_one(
                doc! { "_id": POINTER_ID, "building": n, "current": old, "owner": owner },
                doc! {
                    "$set": {
                        "current": n,
                        "previous": old,
                        "previous_until": bson::DateTime::from_chrono(until),
                    },
                    "$unset": {
                        "building": "", "build_position": "", "build_writing": "",
                        "owner": "", "lease_until": "",
                    },
                },
            )
            .await?;
        Ok((r.modified_count == 1).then_some(old))
    }

    /// Unnames the previous generation once its grace has passed, waits until no consumer can
    /// still write to it ([`SWITCH_WAIT`]), and drops its collections. `Some(n)` when it
    /// dropped generation `n`.
    pub async fn retire_previous(&self) -> mongodb::error::Result<Option<i64>> {
        let pointer = self.refresh_pointer().await?;
        let (Some(previous), Some(until)) = (pointer.previous, pointer.previous_until) else {
            return Ok(None);
        };
        if until > Utc::now() {
            return Ok(None);
        }
        let r = self
            .pointer_collection()
            .update_one(
                doc! { "_id": POINTER_ID, "previous": previous },
                doc! { "$unset": { "previous": "", "previous_until": "" } },
            )
            .await?;
        if r.modified_count == 0 {
            return Ok(None);
        }
        tokio::time::sleep(SWITCH_WAIT).await;
        self.drop_generation(previous).await?;
        Ok(Some(previous))
    }

    /// Drops generation `n`'s collections: the secondary indexes of its todos one at a time
    /// first, resting as long as each drop took, then the collections. A store that drops a
    /// full collection in one blocking command (the local MongoDB-wire server: 9-12 s at
    /// 150,000 todos, every read waiting meanwhile) is held up for one index at a time instead
    /// (about 1.5 s each there). Deleting the todos in bulks first was tried and left out: that
    /// server deletes 500 todos in about 2 s at that size, so emptying took most of an hour.
    /// On mongod each step is cheap.
    pub async fn drop_generation(&self, n: i64) -> mongodb::error::Result<()> {
        let g = self.generations.get(n);
        for index in super::INDEXES {
            let started = Instant::now();
            if let Err(err) = g.todos.drop_index(index.0).await {
                // Absent (never made, or dropped by an earlier try), or no collection at all.
                tracing::debug!(error = %err, index = index.0, generation = n, "index not dropped");
                continue;
            }
            tokio::time::sleep(started.elapsed()).await;
        }
        g.todos.drop().await?;
        g.stats.drop().await?;
        Ok(())
    }

    /// Drops the collections of every generation the pointer does not name (left by a rebuild
    /// or a retirement that was stopped half way). Returns the generations dropped.
    pub async fn drop_unnamed(&self, pointer: &Pointer) -> mongodb::error::Result<Vec<i64>> {
        let named = pointer.named();
        let mut dropped = Vec::new();
        for name in self.db.list_collection_names().await? {
            let Some(n) = generation_of(&name) else {
                continue;
            };
            // Only generations up to the highest the pointer names: a collection of another
            // name pattern's (`todos_2024`) is not a generation of this read model's.
            if named.contains(&n) || n > named.iter().copied().max().unwrap_or(0) {
                continue;
            }
            self.db.collection::<Document>(&name).drop().await?;
            if !dropped.contains(&n) {
                dropped.push(n);
            }
        }
        dropped.sort_unstable();
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_written_newest_generation_first() {
        let pointer = Pointer {
            current: 3,
            building: Some(4),
            previous: Some(2),
            ..Pointer::default()
        };
        assert_eq!(pointer.written(), vec![4, 3, 2]);
        assert_eq!(Pointer::default().written(), vec![0]);
        let preparing = Pointer {
            preparing: Some(5),
            ..Pointer::default()
        };
        assert_eq!(
            preparing.written(),
            vec![0],
            "nobody writes to a generation being prepared"
        );
        assert_eq!(preparing.named(), vec![0, 5]);
    }

    #[test]
    fn collection_names_round_trip() {
        for n in [0, 1, 17] {
            let (todos, stats) = collection_names(n);
            assert_eq!(generation_of(&todos), Some(n));
            assert_eq!(generation_of(&stats), Some(n));
        }
        assert_eq!(generation_of("read_model"), None);
        assert_eq!(generation_of("todos_x"), None);
        assert_eq!(generation_of("todos_0"), None);
    }
}
