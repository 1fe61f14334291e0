//! How far the read model is behind the log, by position, and whether the projection is stuck.
//!
//! `projection_lag_seconds` and `/stats` `lag_ms` move only when an event is applied: a
//! projection that stopped applying keeps showing the last healthy figure. So every
//! `LAG_EVERY_MS` this task asks command-service's feed for the one event after the highest
//! position the read model applied (`GET {FEED_URL}/events?after=<applied>&limit=1`, with
//! `FEED_TOKEN`): the answer's `Log-Head` header is the head of the log, and its event, if any,
//! the oldest one not applied yet. From that:
//!
//! - `lag_events`: head − applied (0 when the read model holds the whole log), or the events
//!   this process holds for a retry if more (they can be below the applied position, which is
//!   the highest applied);
//! - `oldest_unapplied_seconds`: the age of that oldest event not applied (0 when none waits);
//! - `state`: `idle` (nothing waits), `applying` (events wait and the applied position moved
//!   within `STUCK_AFTER_MS`), `stuck` (events wait and it has not moved for
//!   `STUCK_AFTER_MS`), `unknown` (the feed could not be read, or `FEED_URL` is empty).
//!
//! While the projection is quiet (nothing waits), it also counts the live and completed todos
//! again if a batch met duplicates since the last count (`Store::recount_if_quiet`): a
//! redelivery after a crash can have written without moving the kept counts.
//!
//! The applied position is the read model's (`max_position` with the counters, moved by every
//! replica), so every replica tells the same. `/stats` (`lag`), `/ready` (`checks.projection`)
//! and the metrics (`log_head_position`, `projection_position`, `projection_lag_events`,
//! `projection_oldest_unapplied_seconds`, `projection_stuck`) show it; the page shows the lag
//! in events.

use crate::replay::LogReader;
use crate::store::Store;
use chrono::{DateTime, Utc};
use events::service::shutdown::Shutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the projection is doing, as [`Lag`] tells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionState {
    /// Not read yet, the feed could not be read, or `FEED_URL` is empty.
    #[default]
    Unknown,
    /// Nothing waits: the read model holds the log up to its head.
    Idle,
    /// Events wait and the applied position moved within `STUCK_AFTER_MS`.
    Applying,
    /// Events wait and the applied position has not moved for `STUCK_AFTER_MS`.
    Stuck,
}

/// The lag by position, as last read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Lag {
    pub state: ProjectionState,
    /// The head of the log: the highest position command-service has stamped.
    pub head: Option<i64>,
    /// The highest log position the read model applied.
    pub applied: Option<i64>,
    /// Events in the log the read model has not applied: `head - applied`.
    pub events: Option<i64>,
    /// Age of the oldest event not applied yet, in seconds (0 when none waits).
    pub oldest_unapplied_seconds: Option<f64>,
    /// Seconds since the applied position last moved (or nothing waited).
    pub seconds_since_progress: Option<f64>,
    /// When it was read.
    pub checked_at: Option<DateTime<Utc>>,
}

/// The metrics of the lag by position.
#[derive(Clone, Default)]
pub struct LagFigures {
    head: Gauge,
    applied: Gauge,
    events: Gauge,
    oldest_unapplied: Gauge<f64, std::sync::atomic::AtomicU64>,
    stuck: Gauge,
    read_failures: Counter,
}

impl LagFigures {
    pub fn register(registry: &mut Registry) -> Self {
        let figures = Self::default();
        registry.register(
            "log_head_position",
            "The head of the write side's log: the highest position stamped (-1: unknown)",
            figures.head.clone(),
        );
        registry.register(
            "projection_position",
            "The highest log position the read model applied (-1: unknown)",
            figures.applied.clone(),
        );
        registry.register(
            "projection_lag_events",
            "Events in the log the read model has not applied (-1: unknown)",
            figures.events.clone(),
        );
        registry.register(
            "projection_oldest_unapplied_seconds",
            "Age of the oldest event the read model has not applied (0: none waits; -1: unknown)",
            figures.oldest_unapplied.clone(),
        );
        registry.register(
            "projection_stuck",
            "1 while events wait and the read model applied nothing for STUCK_AFTER_MS",
            figures.stuck.clone(),
        );
        registry.register(
            "log_head_read_failures",
            "Reads of the log's head from command-service's feed that failed",
            figures.read_failures.clone(),
        );
        figures.set(&Lag::default());
        figures
    }

    fn set(&self, lag: &Lag) {
        self.head.set(lag.head.unwrap_or(-1));
        self.applied.set(lag.applied.unwrap_or(-1));
        self.events.set(lag.events.unwrap_or(-1));
        self.oldest_unapplied
            .set(lag.oldest_unapplied_seconds.unwrap_or(-1.0));
        self.stuck
            .set(i64::from(lag.state == ProjectionState::Stuck));
    }
}

/// The watcher's settings.
#[derive(Clone)]
pub struct LagConfig {
    /// command-service's base URL (`FEED_URL`); `None`: lag by position is off.
    pub feed_url: Option<String>,
    pub feed_token: Option<String>,
    pub every: Duration,
    pub stuck_after: Duration,
}

/// The lag as last read, shared by the watcher and the routes.
pub struct Watch {
    last: Mutex<Lag>,
    figures: LagFigures,
}

impl Watch {
    pub fn new(figures: LagFigures) -> Self {
        Self {
            last: Mutex::new(Lag::default()),
            figures,
        }
    }

    pub fn get(&self) -> Lag {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn put(&self, lag: Lag) {
        self.figures.set(&lag);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = lag;
    }

    /// Reads the lag every `config.every` until `shutdown`. `held` tells how many events this
    /// process's consumer holds for a retry: they may be below the applied position (a
    /// high-water mark), and wait all the same.
    pub async fn run(
        &self,
        store: Store,
        config: LagConfig,
        held: impl Fn() -> i64,
        shutdown: Shutdown,
    ) {
        let Some(url) = config.feed_url.as_deref() else {
            return;
        };
        let log = match LogReader::with_page_size(url, config.feed_token.as_deref(), 1) {
            Ok(log) => log,
            Err(err) => {
                tracing::warn!(error = %err, "FEED_URL unusable; lag by position is off");
                return;
            }
        };
        // The applied position as last seen, and since when it has not moved.
        let mut progress: Option<(i64, Instant)> = None;
        // The head and applied position as last seen, and since when neither moved.
        let mut still: Option<((i64, i64), Instant)> = None;
        loop {
            match read(&store, &log).await {
                Ok((head, applied, oldest)) => {
                    let now = Instant::now();
                    let held = held().max(0);
                    let behind = (head - applied).max(held).max(0);
                    let waiting = behind > 0;
                    progress = match progress {
                        Some((seen, since)) if seen == applied && waiting => Some((seen, since)),
                        _ => Some((applied, now)),
                    };
                    let since = progress.map_or(Duration::ZERO, |(_, at)| now - at);
                    let state = match (waiting, since >= config.stuck_after) {
                        (false, _) => ProjectionState::Idle,
                        (true, false) => ProjectionState::Applying,
                        (true, true) => ProjectionState::Stuck,
                    };
                    let lag = Lag {
                        state,
                        head: Some(head),
                        applied: Some(applied),
                        events: Some(behind),
                        oldest_unapplied_seconds: Some(match oldest {
                            Some(at) if waiting => {
                                ((Utc::now() - at).num_milliseconds().max(0)) as f64 / 1000.0
                            }
                            _ => 0.0,
                        }),
                        seconds_since_progress: Some(since.as_secs_f64()),
                        checked_at: Some(Utc::now()),
                    };
                    if state == ProjectionState::Stuck && self.get().state != ProjectionState::Stuck
                    {
                        tracing::error!(
                            lag_events = behind,
                            applied,
                            stuck_for_s = since.as_secs(),
                            "the projection is stuck: events wait and nothing was applied"
                        );
                    }
                    self.put(lag);
                    still = match still {
                        Some((seen, since)) if seen == (head, applied) => Some((seen, since)),
                        _ => Some(((head, applied), now)),
                    };
                    // Quiet for a whole reading: a batch that wrote before it has recorded too.
                    let quiet = still.is_some_and(|(_, since)| now - since >= config.every);
                    if !waiting && quiet {
                        // Quiet: the moment to count again kept counts a redelivery may have
                        // left off (`Store::recount_if_quiet`).
                        let again =
                            || async { read(&store, &log).await.ok().map(|(head, _, _)| head) };
                        match store.recount_if_quiet(head, again).await {
                            Ok(Some((before, after))) => tracing::info!(
                                live_before = before.0,
                                completed_before = before.1,
                                live = after.0,
                                completed = after.1,
                                "kept counts counted again while the projection was quiet"
                            ),
                            Ok(None) => {}
                            Err(err) => {
                                tracing::debug!(error = %err, "kept counts not counted again")
                            }
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "log head not read");
                    self.figures.read_failures.inc();
                    let mut lag = self.get();
                    lag.state = ProjectionState::Unknown;
                    self.put(lag);
                }
            }
            tokio::select! {
                _ = shutdown.triggered() => return,
                _ = tokio::time::sleep(config.every) => {}
            }
        }
    }
}

/// The head of the log, the position the read model applied, and the `occurred_at` of the
/// first event after it (if any).
async fn read(store: &Store, log: &LogReader) -> anyhow::Result<(i64, i64, Option<DateTime<Utc>>)> {
    let applied = store.max_position().await?;
    let (page, head) = log.page_and_head(applied).await?;
    let head = head.ok_or_else(|| {
        anyhow::anyhow!("command-service's feed sends no Log-Head (an earlier version)")
    })?;
    Ok((head, applied, page.first().map(|e| e.occurred_at)))
}
