//! `query-service rebuild [COMMAND_URL] [--grace SECONDS] [--share PERCENT]`: builds a new generation of the read
//! model from the event log beside the one serving reads, then switches every reader to it at
//! once, and drops the old one after a grace period. `replay` stays for repairing in place.
//!
//! The steps, each recorded in the pointer document (`store/generations.rs`), so that a
//! rebuild stopped at any point is taken up where it stopped by running it again:
//!
//! 1. **Claim** generation `n` (the highest the pointer names, plus one): `preparing: n`, unless
//!    another rebuild holds one. A previous generation still in its grace period is waited
//!    for and dropped first.
//! 2. **Prepare** it: drop whatever a stopped rebuild left of it, create its collections'
//!    indexes on the empty collections (cheap: no index build over a full collection), start
//!    its counters. Drop the collections of generations the pointer no longer names.
//! 3. **Open it for writes**: `building: n`. Every consumer writes each batch to `n` before the
//!    current generation, with a reading of the pointer no older than two seconds; the
//!    rebuild waits five seconds so every consumer has seen it. From then on an event in
//!    the current generation is in `n` too, or was in the log before the rebuild reads it.
//! 4. **Read the log** (`GET /events`) from `build_position` into `n` through the version
//!    guard, up to the head of the log as its first page is read (command-service's
//!    `Log-Head`): every event a consumer wrote to the current generation alone is at or below
//!    it, and every later one reaches `n` through the consumers. So the rebuild ends however
//!    fast writes come. It records `build_position` after each bulk write (200 events) and
//!    its counts: a rebuild stopped here starts again after the last one recorded. It writes for
//!    `--share` percent of the time (default 50) and rests the rest, so that the live
//!    projection, which writes each batch twice meanwhile, keeps up.
//! 5. **Switch**: `current: n`, `previous:` the old one until now + grace. Each serving process
//!    follows the pointer within a second; since `n` holds everything the old one holds, no
//!    reader sees a todo missing or an older version than before. Consumers go on writing the
//!    old generation (after `n`) during the grace period, for replicas that have not switched.
//! 6. **Retire** the old generation once its grace has passed (the rebuild waits for it; if it
//!    is stopped meanwhile, any serving process does it): unnamed, five seconds more, dropped.
//!
//! A rebuild holds its generation with a lease in the pointer (`owner`, `lease_until`: 30 s,
//! renewed at every step, every write of the pointer filtered on it): one killed is taken up
//! by the next run once its lease has run out; one still running keeps it, and a second run
//! stops. `--abandon` takes the generation (waiting out a lease the same way), unnames it and
//! drops it. Killed after the switch, the next run only finishes that rebuild's retirement.
//!
//! The kept counts of live and completed todos: a rebuild stopped in the middle of a bulk
//! write (`build_writing` in the pointer) loses what that bulk moved (its writes landed,
//! their counts did not), so a rebuild that takes up such a one counts the generation again
//! before it goes on. Writes of the consumers during that count can be counted twice or not
//! at all: `verify` reports kept counts that differ from the log's, and `verify --repair`
//! counts again. A rebuild stopped between two bulk writes keeps exact counts.

use crate::replay::{apply_log, LogReader, Report, Step, Until, PAGE};
use crate::store::generations::{Pointer, SWITCH_WAIT};
use crate::store::Store;
use anyhow::Context;
use std::time::Duration;

/// How a rebuild runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the old generation is kept (and written) after the switch.
    pub grace: Duration,
    /// Events per page of the log (1 to [`PAGE`]).
    pub page_size: i64,
    /// Stop after this many pages (tests: a rebuild stopped half way, to be taken up again).
    pub stop_after_pages: Option<u64>,
    /// How long to wait between reading the log to its end and switching (tests: the
    /// consumers alone keep the new generation up to date meanwhile).
    pub hold_switch: Duration,
    /// The share of the time the rebuild writes, in percent (1 to 100): after each bulk write
    /// it rests for as long as the write took times `(100 - share) / share`, so the store
    /// keeps room for the live projection (which writes every batch twice meanwhile) and the
    /// reads.
    pub share: u32,
    /// Give the generation being built up instead (`--abandon`): unnamed, then dropped.
    pub abandon: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(60),
            page_size: PAGE,
            stop_after_pages: None,
            hold_switch: Duration::ZERO,
            share: 50,
            abandon: false,
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// The generation built.
    pub generation: i64,
    /// The generation it replaced (dropped once its grace passed), if it got that far.
    pub replaced: Option<i64>,
    /// The log position it started reading after: 0, or where a stopped rebuild got to.
    pub resumed_from: i64,
    /// The log read by this run.
    pub log: Report,
    /// Whether it switched the readers to the new generation (false: stopped before).
    pub switched: bool,
    /// Whether the replaced generation is dropped.
    pub retired: bool,
    /// It only finished the retirement of the last rebuild, which was stopped in its grace
    /// period.
    pub finished_only: bool,
    /// It gave the generation being built up (`--abandon`).
    pub abandoned: bool,
}

impl std::fmt::Display for Rebuilt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.abandoned {
            return write!(
                f,
                "generation {} abandoned: unnamed and dropped; reads stay where they were",
                self.generation
            );
        }
        if self.finished_only {
            return write!(
                f,
                "the last rebuild's switch to generation {} was finished: generation {} {}; run rebuild again for a new one",
                self.generation,
                self.replaced.unwrap_or_default(),
                if self.retired { "dropped" } else { "still kept" }
            );
        }
        write!(
            f,
            "generation {}: read {} events after position {} ({} applied, {} already there) to position {}",
            self.generation,
            self.log.read,
            self.resumed_from,
            self.log.applied,
            self.log.skipped,
            self.log.last_position
        )?;
        match (self.switched, self.replaced, self.retired) {
            (false, _, _) => write!(f, "; stopped before the switch: run it again to go on"),
            (true, Some(old), true) => {
                write!(
                    f,
                    "; reads switched from generation {old}, which is dropped"
                )
            }
            (true, Some(old), false) => write!(
                f,
                "; reads switched from generation {old}, kept for its grace period"
            ),
            (true, None, _) => write!(f, "; reads switched"),
        }
    }
}

/// Runs a rebuild of the read model behind `store` from the log of the command-service at
/// `command_url` (sending `token`, `FEED_TOKEN`, if given), or takes up a stopped one; or,
/// when the last rebuild switched and was stopped during its grace period, finishes that one's
/// retirement and stops (run it again for a new rebuild).
pub async fn rebuild(
    store: &Store,
    command_url: &str,
    token: Option<&str>,
    options: &Options,
) -> anyhow::Result<Rebuilt> {
    let log = LogReader::with_page_size(command_url, token, options.page_size)?;
    let owner = uuid::Uuid::new_v4().to_string();
    let pointer = store.refresh_pointer().await?;
    let mut rebuilt = Rebuilt::default();
    if pointer.building.is_none() && pointer.preparing.is_none() {
        if let Some(previous) = pointer.previous {
            let wait = pointer
                .previous_until
                .map(|until| (until - chrono::Utc::now()).to_std().unwrap_or_default())
                .unwrap_or_default();
            tracing::info!(
                previous,
                wait_s = wait.as_secs(),
                "the last rebuild switched and left its previous generation in its grace period; finishing that rebuild"
            );
            tokio::time::sleep(wait).await;
            store.retire_previous().await?;
            let after = store.refresh_pointer().await?;
            rebuilt.generation = after.current;
            rebuilt.replaced = Some(previous);
            rebuilt.switched = true;
            rebuilt.retired = after.previous != Some(previous);
            rebuilt.finished_only = true;
            return Ok(rebuilt);
        }
    }
    let n = match (pointer.building, pointer.preparing) {
        (Some(n), _) | (None, Some(n)) => {
            take_over(store, n, &pointer, &owner).await?;
            n
        }
        (None, None) => {
            let n = store
                .claim_generation(&pointer, &owner)
                .await?
                .context("another rebuild claimed a generation meanwhile: let it finish")?;
            tracing::info!(
                generation = n,
                current = pointer.current,
                "rebuild claimed a generation"
            );
            n
        }
    };
    rebuilt.generation = n;
    if options.abandon {
        anyhow::ensure!(
            store.abandon(n, &owner).await?,
            "generation {n} was taken by another rebuild meanwhile"
        );
        rebuilt.abandoned = true;
        return Ok(rebuilt);
    }
    match (pointer.building, pointer.build_writing) {
        (Some(_), Some(writing)) => {
            // Stopped during a bulk write: what landed of it was not counted.
            tracing::warn!(
                generation = n,
                writing,
                "the stopped rebuild was writing; counting the generation again"
            );
            store
                .pinned(n)
                .keep_counts(true)
                .await
                .context("counting the generation being built")?;
        }
        (Some(_), None) => {}
        (None, _) => prepare(store, n, &pointer, &owner).await?,
    }
    let pointer = store.refresh_pointer().await?;
    anyhow::ensure!(
        pointer.building == Some(n) && pointer.owner.as_deref() == Some(owner.as_str()),
        "the pointer no longer names generation {n} as the one this rebuild builds: {pointer:?}"
    );
    rebuilt.resumed_from = pointer.build_position;
    tracing::info!(
        generation = n,
        wait_s = SWITCH_WAIT.as_secs(),
        "waiting for every consumer to write to the new generation too"
    );
    tokio::time::sleep(SWITCH_WAIT).await;

    let built = store.pinned(n);
    let mut pages = 0u64;
    let stop_after = options.stop_after_pages;
    let share = options.share.clamp(1, 100);
    let mut writing_since = std::time::Instant::now();
    let owner_ref = owner.as_str();
    let read = apply_log(
        &built,
        &log,
        pointer.build_position,
        Until::HeadAtStart,
        |step| {
            let (stop, rest) = match step {
                Step::PageDone(_) => {
                    pages += 1;
                    (stop_after.is_some_and(|k| pages >= k), Duration::ZERO)
                }
                Step::Writing(_) => {
                    writing_since = std::time::Instant::now();
                    (false, Duration::ZERO)
                }
                Step::Written(_) => (false, writing_since.elapsed() * (100 - share) / share),
            };
            async move {
                let held = match step {
                    Step::Writing(to) => store.record_build_writing(n, owner_ref, to).await?,
                    Step::Written(report) => {
                        store
                            .record_build_position(n, owner_ref, report.last_position)
                            .await?
                    }
                    Step::PageDone(_) => true,
                };
                anyhow::ensure!(
                    held,
                    "generation {n} is no longer this rebuild's (taken up by another, or abandoned)"
                );
                anyhow::ensure!(!stop, StoppedHalfWay);
                tokio::time::sleep(rest).await;
                Ok(())
            }
        },
    )
    .await;
    rebuilt.log = match read {
        Ok(report) => report,
        Err(err) if err.is::<StoppedHalfWay>() => {
            store.release(n, &owner).await?;
            let pointer = store.refresh_pointer().await?;
            rebuilt.log.last_position = pointer.build_position;
            return Ok(rebuilt);
        }
        Err(err) => return Err(err),
    };

    tokio::time::sleep(options.hold_switch).await;
    let old = store
        .switch_to(n, &owner, options.grace)
        .await?
        .with_context(|| {
            format!(
                "generation {n} is no longer this rebuild's (taken up by another, or abandoned)"
            )
        })?;
    rebuilt.switched = true;
    rebuilt.replaced = Some(old);
    tracing::info!(
        generation = n,
        previous = old,
        grace_s = options.grace.as_secs(),
        "switched: reads follow the new generation; the old one is kept for the grace period"
    );
    tokio::time::sleep(options.grace).await;
    store.retire_previous().await?;
    // Retired by this process, or by a serving one that got there first.
    rebuilt.retired = store.refresh_pointer().await?.previous != Some(old);
    Ok(rebuilt)
}

/// Takes up generation `n`, which another rebuild claimed: at once if that one's lease has run
/// out (it was stopped), else after waiting for the lease to run out, unless that rebuild
/// renews it meanwhile (it is running).
async fn take_over(store: &Store, n: i64, pointer: &Pointer, owner: &str) -> anyhow::Result<()> {
    if let Some(until) = pointer.lease_until {
        let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default();
        if !wait.is_zero() {
            tracing::info!(
                generation = n,
                wait_s = wait.as_secs() + 1,
                "another rebuild holds this generation; waiting for its lease to run out"
            );
            tokio::time::sleep(wait + Duration::from_secs(1)).await;
        }
    }
    anyhow::ensure!(
        store.take_over(n, owner).await?,
        "another rebuild holds generation {n} and renews its lease: it is running (owner {}); \
         let it finish, or stop it and run rebuild again",
        pointer.owner.as_deref().unwrap_or("unknown")
    );
    tracing::info!(
        generation = n,
        position = pointer.build_position,
        "taking up a stopped rebuild where it got to"
    );
    Ok(())
}

/// A rebuild stopped by [`Options::stop_after_pages`].
#[derive(Debug, thiserror::Error)]
#[error("stopped after the pages asked for")]
struct StoppedHalfWay;

/// Step 2: generation `n`, claimed, made empty with its indexes and counters, then opened for
/// writes.
async fn prepare(store: &Store, n: i64, pointer: &Pointer, owner: &str) -> anyhow::Result<()> {
    store
        .drop_generation(n)
        .await
        .with_context(|| format!("dropping what a stopped rebuild left of generation {n}"))?;
    let named = Pointer {
        preparing: Some(n),
        ..pointer.clone()
    };
    let dropped = store.drop_unnamed(&named).await?;
    if !dropped.is_empty() {
        tracing::info!(?dropped, "dropped generations the pointer no longer names");
    }
    store
        .pinned(n)
        .gen()
        .ensure_indexes()
        .await
        .with_context(|| format!("creating generation {n}'s indexes"))?;
    anyhow::ensure!(
        store.open_for_writes(n, owner).await?,
        "generation {n} is no longer this rebuild's (taken up by another, or abandoned)"
    );
    Ok(())
}
