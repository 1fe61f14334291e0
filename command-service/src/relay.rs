//! The outbox relay: publishes stamped events to RabbitMQ, oldest first, and moves the
//! published cursor only past what the broker confirmed.
//!
//! - Woken in-process by the sequencer after it stamped events, with a fallback poll.
//! - One round at a time inside a transaction that holds an advisory lock: when several
//!   command-service processes run, one publishes while the others wait, so an event is not
//!   published twice in the normal case and order is kept. A relay that finds the lock taken
//!   looks again a few milliseconds later.
//! - `mandatory` publishing with publisher confirms: a nack, a returned (unroutable) message,
//!   a timeout or a lost connection stops the round; the cursor moves past the confirmed
//!   prefix only, and the rest is retried with backoff.
//! - Every call to RabbitMQ has a deadline (`AMQP_TIMEOUT_MS`): connecting, each step of
//!   setting up the channel, publishing a round's events, and waiting for their confirms. A
//!   broker that stops answering is a broker failure (connection dropped, backoff), so a round's
//!   transaction stays open for at most two deadlines, and PostgreSQL ends it a second after
//!   that if the relay itself stalls. A connection RabbitMQ blocked (a memory or disk alarm) is
//!   kept, unused, until the broker unblocks it, instead of opening new ones that would block
//!   in turn.
//! - The cursor update commits with `synchronous_commit = off`: a crash can lose the last
//!   advance, which publishes those events again, and the consumer's version guard absorbs
//!   duplicates. It saves a disk flush per round.
//! - Reconnects to RabbitMQ and PostgreSQL by itself. On shutdown (after the HTTP server
//!   answered its last requests and the sequencer stamped what they committed) it finishes the
//!   round in flight and, while its connection works, publishes what is left, for at most
//!   `AMQP_TIMEOUT_MS` more; whatever remains is published at the next start.

use crate::db::PgPool;
use crate::event_log::{self, try_lock, Locked, RELAY_LOCK};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use events::service::backoff::Backoff;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

/// How soon a relay that found another one publishing looks again.
const BUSY_RETRY: Duration = Duration::from_millis(5);

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub amqp_url: String,
    pub exchange: String,
    pub batch_size: i64,
    pub poll: Duration,
    pub max_backoff: Duration,
    /// The deadline of each call to RabbitMQ (`AMQP_TIMEOUT_MS`); publishing a round's events
    /// and waiting for their confirms have one each.
    pub timeout: Duration,
}

/// What `/ready` reads of the relay; its counters are in [`Metrics`].
#[derive(Debug, Default)]
pub struct RelayStatus {
    pub broker_connected: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("database: {0}")]
    Db(#[from] diesel::result::Error),
    #[error("event log: {0}")]
    Log(#[from] event_log::LogError),
    #[error("database pool: {0}")]
    Pool(#[from] diesel_async::pooled_connection::deadpool::PoolError),
}

/// Why a round stopped before publishing all it read.
#[derive(Debug)]
enum Failure {
    /// The connection or channel failed: reconnect.
    Broker(String),
    /// The broker refused or could not route a message: back off and retry.
    Refused(String),
}

/// What one round did.
#[derive(Debug)]
enum Round {
    /// Another relay holds the lock.
    Busy,
    /// Every event read (`read`) was confirmed.
    Done { read: usize },
    /// The first `published` events were confirmed, then publishing failed.
    Stopped { published: usize, failure: Failure },
}

pub async fn run(
    pool: PgPool,
    stamped: Arc<Notify>,
    config: RelayConfig,
    status: Arc<RelayStatus>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
    let mut broker: Option<(Connection, Channel)> = None;
    // A connection RabbitMQ blocked, kept until it is unblocked (then closed for a fresh one).
    let mut blocked: Option<Connection> = None;
    tracing::info!(exchange = %config.exchange, "outbox relay started");

    while !shutdown.is_triggered() {
        if let Some((conn, _)) = broker.take_if(|(conn, _)| conn.status().blocked()) {
            blocked = Some(conn);
        }
        if let Some(conn) = blocked.take() {
            if conn.status().connected() && conn.status().blocked() {
                status.broker_connected.store(false, Ordering::Relaxed);
                tracing::warn!(
                    retry_in_ms = backoff.peek().as_millis() as u64,
                    "RabbitMQ blocks publishing (a resource alarm?); waiting for it to unblock"
                );
                blocked = Some(conn);
                backoff.pause(&shutdown).await;
                continue;
            }
            close(conn, config.timeout, "unblocked, reconnecting").await;
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
                    tracing::warn!(error = %err, retry_in_ms = backoff.peek().as_millis() as u64, "RabbitMQ unreachable");
                    backoff.pause(&shutdown).await;
                    continue;
                }
            }
        }
        let Some((_, channel)) = broker.as_ref() else {
            continue;
        };

        match publish_round(&pool, channel, &config).await {
            Ok(Round::Busy) => {
                tokio::select! {
                    _ = tokio::time::sleep(BUSY_RETRY) => {}
                    _ = shutdown.triggered() => {}
                }
                continue;
            }
            Ok(Round::Done { read }) => {
                metrics.published.inc_by(read as u64);
                backoff.reset();
                if read as i64 == config.batch_size {
                    continue; // more waiting
                }
            }
            Ok(Round::Stopped { published, failure }) => {
                metrics.published.inc_by(published as u64);
                metrics.publish_failures.inc();
                // A fresh channel: the failed one may still hold confirms of the messages
                // published after the failure, which nobody will wait for.
                let failed = broker.take();
                match failure {
                    Failure::Broker(err) => {
                        tracing::warn!(error = %err, "publishing failed, reconnecting to RabbitMQ");
                        status.broker_connected.store(false, Ordering::Relaxed);
                        match failed {
                            Some((conn, _)) if conn.status().blocked() => blocked = Some(conn),
                            // Not waited for: a broker that stopped answering would not
                            // answer a close either. lapin closes it in the background.
                            Some(dropped) => drop(dropped),
                            None => {}
                        }
                    }
                    Failure::Refused(reason) => {
                        tracing::warn!(%reason, retry_in_ms = backoff.peek().as_millis() as u64, "broker did not take an event; it stays in the outbox");
                        if let Some((conn, _)) = failed {
                            close(conn, config.timeout, "republishing").await;
                        }
                    }
                }
                backoff.pause(&shutdown).await;
                continue;
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.peek().as_millis() as u64, "outbox unreadable, PostgreSQL unavailable?");
                backoff.pause(&shutdown).await;
                continue;
            }
        }

        // Idle: wait for the sequencer, the fallback poll, or shutdown.
        tokio::select! {
            _ = stamped.notified() => {}
            _ = tokio::time::sleep(config.poll) => {}
            _ = shutdown.triggered() => {}
        }
    }
    if let Some((conn, channel)) = broker {
        if conn.status().connected() && !conn.status().blocked() {
            last_rounds(&pool, &channel, &config, &metrics).await;
        }
        close(conn, config.timeout, "shutdown").await;
    }
    tracing::info!("outbox relay stopped");
}

/// Publishes what the last requests committed before the service stops: rounds until the
/// outbox is empty, a round fails, or `config.timeout` has passed.
async fn last_rounds(pool: &PgPool, channel: &Channel, config: &RelayConfig, metrics: &Metrics) {
    let until = Instant::now() + config.timeout;
    while Instant::now() < until {
        match publish_round(pool, channel, config).await {
            Ok(Round::Done { read }) => {
                metrics.published.inc_by(read as u64);
                if (read as i64) < config.batch_size {
                    return;
                }
            }
            Ok(Round::Stopped { published, failure }) => {
                metrics.published.inc_by(published as u64);
                metrics.publish_failures.inc();
                tracing::warn!(
                    ?failure,
                    "last publishing round failed; the next start publishes"
                );
                return;
            }
            // Another replica's relay publishes them.
            Ok(Round::Busy) => return,
            Err(err) => {
                tracing::warn!(error = %err, "last publishing round failed; the next start publishes");
                return;
            }
        }
    }
}

/// Closes a connection, waiting for the broker's answer at most `limit`.
async fn close(conn: Connection, limit: Duration, reason: &str) {
    if let Err(err) = within(
        limit,
        "closing the connection",
        conn.close(200, reason.into()),
    )
    .await
    {
        tracing::debug!(error = %err, "RabbitMQ connection not closed cleanly");
    }
}

/// `call`'s result, or an error naming `what` if it takes longer than `limit`.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(|e| anyhow::anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "{what} timed out after {} ms",
            limit.as_millis()
        )),
    }
}

/// Connects and sets up a confirming channel and the exchange, each step within the deadline.
async fn connect(config: &RelayConfig) -> anyhow::Result<(Connection, Channel)> {
    let limit = config.timeout;
    let conn = within(
        limit,
        "connecting",
        Connection::connect(
            &config.amqp_url,
            ConnectionProperties::default().with_connection_name("command-service relay".into()),
        ),
    )
    .await?;
    let channel = within(limit, "opening a channel", conn.create_channel()).await?;
    within(
        limit,
        "enabling publisher confirms",
        channel.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    within(
        limit,
        "declaring the exchange",
        channel.exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    Ok((conn, channel))
}

/// Publishes the events after the cursor (at most a batch) and moves the cursor past the
/// confirmed prefix, in one transaction.
// At debug: a round is no trace of its own (an idle relay polls; a standby one retries every
// few milliseconds), only its events' publish spans are, in their writes' traces.
#[tracing::instrument(level = "debug", skip_all)]
async fn publish_round(
    pool: &PgPool,
    channel: &Channel,
    config: &RelayConfig,
) -> Result<Round, RoundError> {
    let mut pooled = pool.get().await?;
    let conn: &mut AsyncPgConnection = &mut pooled;
    let round = conn
        .transaction::<_, RoundError, _>(async |conn| {
            let lock: Locked = try_lock(RELAY_LOCK).get_result(conn).await?;
            if !lock.locked {
                return Ok(Round::Busy);
            }
            // Idle in this transaction while RabbitMQ works: at most a deadline for publishing
            // and one for the confirms. Past that and a second, PostgreSQL ends the session
            // (and the lock with it), whatever the connection's own limit.
            let idle = config.timeout * 2 + Duration::from_secs(1);
            conn.batch_execute(&format!(
                "SET LOCAL synchronous_commit = off; \
                 SET LOCAL idle_in_transaction_session_timeout = {}",
                idle.as_millis()
            ))
            .await?;
            let cursor = event_log::published_up_to(conn).await?;
            let (batch, unreadable) =
                event_log::read_after(conn, cursor, config.batch_size).await?;
            let read = batch.len();
            let mut pending = Vec::with_capacity(read);
            let mut failure = None;
            let limit = config.timeout.as_millis();
            // lapin holds a publish back while RabbitMQ blocks the connection: bounded here.
            let publishing = Instant::now() + config.timeout;
            for logged in &batch {
                let envelope = &logged.envelope;
                let span = publish_span(&config.exchange, logged);
                let traceparent = events::service::trace::traceparent(&span);
                let publishing_one = publish_traced(
                    channel,
                    &config.exchange,
                    envelope,
                    traceparent.as_deref(),
                )
                .instrument(span.clone());
                // The span stays open until the broker confirms (or not): a publish is done
                // when it is confirmed.
                match tokio::time::timeout_at(publishing, publishing_one).await {
                    Ok(Ok(confirm)) => pending.push((envelope.position, confirm, span)),
                    Ok(Err(err)) => {
                        span.record("otel.status_code", "ERROR");
                        failure = Some(Failure::Broker(err.to_string()));
                        break;
                    }
                    Err(_) => {
                        span.record("otel.status_code", "ERROR");
                        failure = Some(Failure::Broker(format!(
                            "publishing timed out after {limit} ms"
                        )));
                        break;
                    }
                }
            }
            // Confirms arrive in publish order; the cursor moves past the confirmed prefix.
            // After a failed publish the confirms of what went out before it still count.
            let mut confirmed: Option<i64> = None;
            let mut published = 0;
            let confirming = Instant::now() + config.timeout;
            let mut pending = pending.into_iter();
            for (position, confirm, span) in pending.by_ref() {
                let refused = match tokio::time::timeout_at(confirming, confirm).await {
                    Ok(Ok(Confirmation::Ack(None))) => {
                        confirmed = Some(position);
                        published += 1;
                        continue;
                    }
                    Ok(Ok(Confirmation::Ack(Some(returned)))) => Failure::Refused(format!(
                        "event at position {position} unroutable: {} {} (no queue bound to exchange {})",
                        returned.reply_code, returned.reply_text, config.exchange
                    )),
                    Ok(Ok(Confirmation::Nack(_))) => Failure::Refused(format!(
                        "event at position {position} nacked by the broker"
                    )),
                    Ok(Ok(Confirmation::NotRequested)) => {
                        Failure::Broker("channel is not in confirm mode".into())
                    }
                    Ok(Err(err)) => Failure::Broker(err.to_string()),
                    Err(_) => {
                        Failure::Broker(format!("publisher confirm timed out after {limit} ms"))
                    }
                };
                span.record("otel.status_code", "ERROR");
                // The first failure is the one to report; nothing after it is marked.
                failure.get_or_insert(refused);
                break;
            }
            // Past a failure nothing is marked published: these go out again next round.
            for (_, _, span) in pending {
                span.record("otel.status_code", "ERROR");
            }
            if let (None, Some(err)) = (&failure, unreadable) {
                // Never written by this service: it stays at the head of the outbox, where
                // `/ready` and the log show it, until someone repairs the row.
                tracing::error!(error = %err, "an event in the outbox cannot be read");
                failure = Some(Failure::Refused(err.to_string()));
            }
            if let Some(position) = confirmed {
                event_log::mark_published(conn, position).await?;
            }
            Ok(match failure {
                None => Round::Done { read },
                Some(failure) => {
                    let (Failure::Broker(reason) | Failure::Refused(reason)) = &failure;
                    event_log::publish_failed(conn, reason).await?;
                    Round::Stopped { published, failure }
                }
            })
        })
        .await?;
    if let Round::Done { read } = round {
        if read > 0 {
            tracing::debug!(published = read, "events published");
        }
    }
    Ok(round)
}

/// The producer span of one event's publish (OpenTelemetry's messaging conventions), child of
/// the write that appended it: its trace is the request's.
fn publish_span(exchange: &str, logged: &event_log::Logged) -> tracing::Span {
    let envelope = &logged.envelope;
    let span = tracing::info_span!(
        "publish",
        otel.name = %format!("publish {exchange}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = exchange,
        messaging.rabbitmq.destination.routing_key = envelope.routing_key(),
        messaging.message.id = %envelope.event_id,
        todo_id = envelope.todo_id,
        version = envelope.version,
        position = envelope.position,
        otel.status_code = tracing::field::Empty,
    );
    events::service::trace::set_parent(&span, logged.traceparent.as_deref());
    span
}

/// Publishes one event as the relay does (persistent, mandatory, its headers); the confirm is
/// the caller's to wait for. `scripts/bench.sh` publishes with it for the broker's own rate.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    envelope: &events::Envelope,
) -> lapin::Result<lapin::PublisherConfirm> {
    publish_traced(channel, exchange, envelope, None).await
}

/// [`publish`], with the `traceparent` header the consumer's spans continue.
async fn publish_traced(
    channel: &Channel,
    exchange: &str,
    envelope: &events::Envelope,
    traceparent: Option<&str>,
) -> lapin::Result<lapin::PublisherConfirm> {
    let mut headers = FieldTable::default();
    if let Some(traceparent) = traceparent {
        headers.insert(
            events::HEADER_TRACEPARENT.into(),
            AMQPValue::LongString(traceparent.into()),
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_past_its_deadline_fails_naming_it() {
        let started = std::time::Instant::now();
        let never = std::future::pending::<Result<(), lapin::Error>>();
        let err = within(Duration::from_millis(50), "opening a channel", never)
            .await
            .expect_err("times out");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(err.to_string(), "opening a channel timed out after 50 ms");
        let answered = within(Duration::from_millis(50), "declaring", async {
            Err::<(), _>("refused")
        })
        .await
        .expect_err("fails");
        assert_eq!(answered.to_string(), "declaring: refused");
    }
}
