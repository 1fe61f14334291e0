//! The outbox relay: publishes committed events to RabbitMQ, oldest first, and marks each one
//! published only after the broker confirmed it.
//!
//! - Woken by `NOTIFY todo_outbox` (sent by every append, delivered at commit), with a slow
//!   fallback poll in case a notification is missed (the listening connection was down).
//! - One batch at a time inside a transaction that holds an advisory lock: when several
//!   command-service processes run, one drains while the others wait, so an event is not
//!   published twice in the normal case and order is kept.
//! - `mandatory` publishing with publisher confirms: a nack, a returned (unroutable) message,
//!   a timeout or a lost connection leaves the event unpublished; it is retried with backoff.
//! - Reconnects to RabbitMQ and PostgreSQL by itself; on shutdown it finishes the batch in flight.

use crate::db::PgPool;
use crate::metrics::Metrics;
use crate::schema::events as ev;
use crate::shutdown::Shutdown;
use crate::todos::{to_envelope, OUTBOX_CHANNEL};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Advisory lock that makes one relay drain at a time.
const RELAY_LOCK: i64 = 0x0072_656c_6179; // "relay"
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub database_url: String,
    pub amqp_url: String,
    pub exchange: String,
    pub batch_size: i64,
    pub poll: Duration,
    pub max_backoff: Duration,
    pub idempotency_ttl_hours: i64,
}

/// What `/ready` reads of the relay; its counters are in [`Metrics`].
#[derive(Debug, Default)]
pub struct RelayStatus {
    pub broker_connected: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
enum DrainError {
    #[error("database: {0}")]
    Db(#[from] diesel::result::Error),
    #[error("database pool: {0}")]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

/// Result of one batch.
#[derive(Debug, Default)]
struct Batch {
    /// Another relay holds the lock.
    busy: bool,
    /// Rows seen.
    seen: usize,
    /// Rows confirmed and marked.
    published: usize,
    /// The broker connection failed mid-batch: reconnect.
    broker_failed: Option<String>,
    /// The broker refused or could not route a message: back off and retry.
    refused: Option<String>,
}

pub async fn run(
    pool: PgPool,
    config: RelayConfig,
    status: Arc<RelayStatus>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let base = Duration::from_millis(100);
    let mut backoff = base;
    let mut listener: Option<AsyncPgConnection> = None;
    let mut broker: Option<(Connection, Channel)> = None;
    let mut last_cleanup = tokio::time::Instant::now();
    tracing::info!(exchange = %config.exchange, "outbox relay started");

    while !shutdown.is_triggered() {
        if listener.is_none() {
            listener = listen(&config.database_url).await;
        }
        let connected = broker
            .as_ref()
            .is_some_and(|(c, ch)| c.status().connected() && ch.status().connected());
        if !connected {
            broker = None;
            status.broker_connected.store(false, Ordering::Relaxed);
            match connect(&config).await {
                Ok(b) => {
                    tracing::info!("relay connected to RabbitMQ");
                    status.broker_connected.store(true, Ordering::Relaxed);
                    broker = Some(b);
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ unreachable");
                    backoff = pause(backoff, config.max_backoff, &shutdown).await;
                    continue;
                }
            }
        }
        let Some((_, channel)) = broker.as_ref() else {
            continue;
        };

        match drain(&pool, channel, &config).await {
            Ok(batch) => {
                metrics.published.inc_by(batch.published as u64);
                if let Some(err) = batch.broker_failed {
                    metrics.publish_failures.inc();
                    tracing::warn!(error = %err, "publishing failed, reconnecting to RabbitMQ");
                    broker = None;
                    backoff = pause(backoff, config.max_backoff, &shutdown).await;
                    continue;
                }
                if let Some(reason) = batch.refused {
                    metrics.publish_failures.inc();
                    tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "broker did not take an event; it stays in the outbox");
                    backoff = pause(backoff, config.max_backoff, &shutdown).await;
                    continue;
                }
                backoff = base;
                if !batch.busy && batch.seen as i64 == config.batch_size {
                    continue; // more waiting
                }
                if batch.busy {
                    // Another relay drains; look again soon in case it stops.
                    tokio::select! {
                        _ = tokio::time::sleep(config.poll) => {}
                        _ = shutdown.triggered() => {}
                    }
                    continue;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "outbox unreadable, PostgreSQL unavailable?");
                backoff = pause(backoff, config.max_backoff, &shutdown).await;
                continue;
            }
        }

        if last_cleanup.elapsed() > Duration::from_secs(600) {
            last_cleanup = tokio::time::Instant::now();
            cleanup_idempotency_keys(&pool, config.idempotency_ttl_hours).await;
        }

        // Idle: wait for a commit's notification, the fallback poll, or shutdown.
        wait(&mut listener, config.poll, &shutdown).await;
    }
    if let Some((conn, _)) = broker {
        let _ = conn.close(200, "shutdown".into()).await;
    }
    tracing::info!("outbox relay stopped");
}

/// Sleeps for `backoff` plus jitter (or until shutdown) and returns the next backoff.
async fn pause(backoff: Duration, max: Duration, shutdown: &Shutdown) -> Duration {
    let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 4));
    tokio::select! {
        _ = tokio::time::sleep(backoff + jitter) => {}
        _ = shutdown.triggered() => {}
    }
    (backoff * 2).min(max)
}

async fn listen(database_url: &str) -> Option<AsyncPgConnection> {
    let result = async {
        let mut conn = AsyncPgConnection::establish(database_url).await?;
        diesel::sql_query(format!("LISTEN {OUTBOX_CHANNEL}"))
            .execute(&mut conn)
            .await?;
        Ok::<_, anyhow::Error>(conn)
    }
    .await;
    match result {
        Ok(conn) => Some(conn),
        Err(err) => {
            tracing::debug!(error = %err, "cannot LISTEN yet; polling");
            None
        }
    }
}

async fn wait(listener: &mut Option<AsyncPgConnection>, poll: Duration, shutdown: &Shutdown) {
    let Some(conn) = listener.as_mut() else {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.triggered() => {}
        }
        return;
    };
    let timed_out = {
        let mut notifications = std::pin::pin!(conn.notifications_stream());
        let timed_out = tokio::select! {
            n = notifications.next() => !matches!(n, Some(Ok(_))),
            _ = tokio::time::sleep(poll) => true,
            _ = shutdown.triggered() => return,
        };
        // Many commits may have notified: one drain serves them all.
        while let Some(Some(Ok(_))) = futures_util::FutureExt::now_or_never(notifications.next()) {}
        timed_out
    };
    // A listening connection that died would never notify again: check it when idle.
    if timed_out && diesel::sql_query("SELECT 1").execute(conn).await.is_err() {
        *listener = None;
    }
}

async fn connect(config: &RelayConfig) -> anyhow::Result<(Connection, Channel)> {
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(
            &config.amqp_url,
            ConnectionProperties::default().with_connection_name("command-service relay".into()),
        ),
    )
    .await??;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((conn, channel))
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Publishes one batch of unpublished events and marks the confirmed ones, in one transaction.
#[tracing::instrument(skip_all)]
async fn drain(
    pool: &PgPool,
    channel: &Channel,
    config: &RelayConfig,
) -> Result<Batch, DrainError> {
    let mut pooled = pool.get().await?;
    let conn: &mut AsyncPgConnection = &mut pooled;
    let batch = conn
        .transaction::<_, DrainError, _>(async |conn| {
            let lock: Locked = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
                .bind::<BigInt, _>(RELAY_LOCK)
                .get_result(conn)
                .await?;
            if !lock.locked {
                return Ok(Batch {
                    busy: true,
                    ..Batch::default()
                });
            }
            let rows: Vec<(i64, serde_json::Value)> = ev::table
                .filter(ev::published_at.is_null())
                .order(ev::position.asc())
                .limit(config.batch_size)
                .select((ev::position, ev::payload))
                .load(conn)
                .await?;
            let mut batch = Batch {
                seen: rows.len(),
                ..Batch::default()
            };
            let mut pending = Vec::with_capacity(rows.len());
            for (position, payload) in rows {
                let envelope = match to_envelope(position, payload) {
                    Ok(e) => e,
                    Err(err) => {
                        // Cannot happen for rows this service wrote; keep it visible and stop.
                        batch.refused = Some(format!("event at position {position}: {err}"));
                        break;
                    }
                };
                match publish(channel, &config.exchange, &envelope).await {
                    Ok(confirm) => pending.push((position, confirm)),
                    Err(err) => {
                        batch.broker_failed = Some(err.to_string());
                        break;
                    }
                }
            }
            // Confirms arrive in publish order; stop marking at the first failure so the
            // outbox never has a published event after an unpublished one of the same batch.
            let mut confirmed = Vec::with_capacity(pending.len());
            let mut failed_at = None;
            for (position, confirm) in pending {
                if batch.broker_failed.is_some() || batch.refused.is_some() {
                    break;
                }
                match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                    Ok(Ok(Confirmation::Ack(None))) => confirmed.push(position),
                    Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                        batch.refused = Some(format!(
                            "event at position {position} unroutable: {} {} (no queue bound to exchange {})",
                            returned.reply_code, returned.reply_text, config.exchange
                        ));
                        failed_at = Some(position);
                    }
                    Ok(Ok(Confirmation::Nack(_))) => {
                        batch.refused = Some(format!("event at position {position} nacked by the broker"));
                        failed_at = Some(position);
                    }
                    Ok(Ok(Confirmation::NotRequested)) => {
                        batch.broker_failed = Some("channel is not in confirm mode".into());
                    }
                    Ok(Err(err)) => batch.broker_failed = Some(err.to_string()),
                    Err(_) => batch.broker_failed = Some("publisher confirm timed out".into()),
                }
            }
            if !confirmed.is_empty() {
                diesel::update(ev::table.filter(ev::position.eq_any(&confirmed)))
                    .set(ev::published_at.eq(diesel::dsl::now))
                    .execute(conn)
                    .await?;
            }
            if let (Some(position), Some(reason)) = (failed_at, batch.refused.as_ref()) {
                diesel::update(ev::table.find(position))
                    .set((
                        ev::publish_attempts.eq(ev::publish_attempts + 1),
                        ev::last_error.eq(reason),
                    ))
                    .execute(conn)
                    .await?;
            }
            batch.published = confirmed.len();
            Ok(batch)
        })
        .await?;
    if batch.published > 0 {
        tracing::debug!(published = batch.published, "events published");
    }
    Ok(batch)
}

async fn publish(
    channel: &Channel,
    exchange: &str,
    envelope: &events::Envelope,
) -> lapin::Result<lapin::PublisherConfirm> {
    let mut headers = FieldTable::default();
    headers.insert(
        events::HEADER_TODO_ID.into(),
        AMQPValue::LongLongInt(envelope.todo_id),
    );
    headers.insert(
        events::HEADER_VERSION.into(),
        AMQPValue::LongLongInt(envelope.version),
    );
    headers.insert(
        events::HEADER_CORRELATION_ID.into(),
        AMQPValue::LongString(envelope.correlation_id.as_str().into()),
    );
    let properties = BasicProperties::default()
        .with_content_type(events::CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_message_id(envelope.event_id.to_string().into())
        .with_type(envelope.event_type.as_str().into())
        .with_correlation_id(envelope.correlation_id.as_str().into())
        .with_timestamp(envelope.occurred_at.timestamp().max(0) as u64)
        .with_app_id("command-service".into())
        .with_headers(headers);
    channel
        .basic_publish(
            exchange.into(),
            envelope.routing_key().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &envelope.to_json(),
            properties,
        )
        .await
}

async fn cleanup_idempotency_keys(pool: &PgPool, ttl_hours: i64) {
    let result = async {
        let mut conn = pool.get().await?;
        let n = diesel::sql_query(
            "DELETE FROM idempotency_keys WHERE created_at <= now() - make_interval(hours => $1::int)",
        )
        .bind::<BigInt, _>(ttl_hours)
        .execute(&mut conn)
        .await?;
        Ok::<_, anyhow::Error>(n)
    }
    .await;
    match result {
        Ok(n) if n > 0 => tracing::info!(removed = n, "expired idempotency keys removed"),
        Ok(_) => {}
        Err(err) => tracing::debug!(error = %err, "idempotency key cleanup skipped"),
    }
}
