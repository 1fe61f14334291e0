//! The sequencer task: gives committed events their positions ([`event_log::stamp`]) and then
//! wakes the relay.
//!
//! - Woken in-process by every write this process commits (a `tokio::sync::Notify`, which
//!   coalesces: one round serves every write that committed before it started), at most one
//!   round per [`MIN_INTERVAL`], with a fallback poll (`RELAY_POLL_MS`) for writes whose
//!   process died between commit and wake-up.
//! - With several command-service processes, whichever sequencer is woken stamps, under a
//!   transaction-level advisory lock. One that finds the lock taken looks again a few
//!   milliseconds later, since the round in progress may have started before its writes
//!   committed.
//! - Needs PostgreSQL only: with RabbitMQ away, events still get positions and the feed stays
//!   current.
//! - On shutdown (after the HTTP server answered its last requests) it stamps once more.

use crate::db::PgPool;
use crate::event_log::{self, Lock};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use events::service::backoff::Backoff;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How soon a sequencer that found another one stamping looks again.
const BUSY_RETRY: Duration = Duration::from_millis(3);
/// Rounds start at most this often. An idle sequencer stamps a write at once; under load,
/// each round serves every write committed since the last one. Measured on a 2-core machine
/// (`scripts/bench.sh`): one round per write cost a quarter of the write rate at one client.
const MIN_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy)]
pub struct SequencerConfig {
    pub poll: Duration,
    pub max_backoff: Duration,
}

pub async fn run(
    pool: PgPool,
    appended: Arc<Notify>,
    stamped: Arc<Notify>,
    config: SequencerConfig,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
    tracing::info!("sequencer started");
    while !shutdown.is_triggered() {
        let started = tokio::time::Instant::now();
        match round(&pool).await {
            Ok(Some(n)) => {
                backoff.reset();
                if n > 0 {
                    metrics.stamped.inc_by(n as u64);
                    stamped.notify_one();
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(BUSY_RETRY) => {}
                    _ = shutdown.triggered() => {}
                }
                continue;
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.peek().as_millis() as u64, "cannot stamp events, PostgreSQL unavailable?");
                backoff.pause(&shutdown).await;
                continue;
            }
        }
        tokio::select! {
            _ = appended.notified() => {}
            _ = tokio::time::sleep(config.poll) => {}
            _ = shutdown.triggered() => {}
        }
        // Coalesce: under load, one round per interval stamps every write committed in it,
        // rather than one disk flush for the stamps of each write.
        let since = started.elapsed();
        if since < MIN_INTERVAL {
            tokio::select! {
                _ = tokio::time::sleep(MIN_INTERVAL - since) => {}
                _ = shutdown.triggered() => {}
            }
        }
    }
    // The service stops the sequencer after its last requests were answered: what they
    // committed gets its position now, for the relay's last round.
    match round(&pool).await {
        Ok(Some(n)) if n > 0 => {
            metrics.stamped.inc_by(n as u64);
            stamped.notify_one();
        }
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = %err, "last stamping round failed; the next start stamps")
        }
    }
    tracing::info!("sequencer stopped");
}

/// One round: `Some(stamped)`, or `None` when another sequencer holds the lock.
async fn round(pool: &PgPool) -> anyhow::Result<Option<i64>> {
    let mut conn = pool.get().await?;
    let stamped = event_log::stamp_all(&mut conn, Lock::Try).await?;
    if let Some(n @ 1..) = stamped {
        tracing::debug!(stamped = n, "events stamped");
    }
    Ok(stamped)
}
