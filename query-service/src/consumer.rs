//! The projection's consumer: RabbitMQ → MongoDB.
//!
//! - Topology (declared at every connect, idempotently): the durable topic exchange, a durable
//!   quorum queue bound with `todo.#`, and a dead-letter exchange and queue.
//! - Manual acknowledgements with a prefetch: a message is acked only after MongoDB has the
//!   change (or already had it: duplicates and late events are acked as skipped).
//! - A body that is not a valid event is dead-lettered at once (it cannot get better); an event
//!   MongoDB refuses is redelivered up to `MAX_DELIVERY_ATTEMPTS` times, then dead-lettered.
//! - A transient MongoDB error (server away, restarting) is retried in place with backoff and
//!   never dead-lettered; the message stays unacked meanwhile, so nothing is lost.
//! - lapin does not reconnect by itself: the loop here reconnects with backoff.
//! - On shutdown the consumer is cancelled, the message in hand is finished, and the
//!   connection is closed; unacked prefetched messages go back to the queue.

use crate::metrics::{EventOutcome, Metrics};
use crate::shutdown::Shutdown;
use crate::store::{Applied, Outcome, Store};
use events::Envelope;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

#[derive(Clone)]
pub struct ConsumerConfig {
    pub metrics: Arc<Metrics>,
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub prefetch: u16,
    pub max_attempts: u32,
    pub max_backoff: Duration,
}

/// What `/ready` reads of the consumer.
#[derive(Debug, Default)]
pub struct ConsumerStatus {
    pub connected: AtomicBool,
}

pub async fn run(
    store: Store,
    config: ConsumerConfig,
    status: Arc<ConsumerStatus>,
    shutdown: Shutdown,
) {
    let base = Duration::from_millis(200);
    let mut backoff = base;
    while !shutdown.is_triggered() {
        match connect(&config).await {
            Ok((conn, channel)) => {
                tracing::info!(queue = %config.queue, "consumer connected to RabbitMQ");
                status.connected.store(true, Ordering::Relaxed);
                backoff = base;
                let result = consume(&store, &config, &channel, &shutdown).await;
                status.connected.store(false, Ordering::Relaxed);
                if let Err(err) = result {
                    tracing::warn!(error = %err, "consumer lost its connection; reconnecting");
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into()))
                    .await;
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ unreachable");
            }
        }
        if shutdown.is_triggered() {
            break;
        }
        let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 4));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.triggered() => {}
        }
        backoff = (backoff * 2).min(config.max_backoff);
    }
    tracing::info!("consumer stopped");
}

/// Declares the exchange, the quorum queue with its dead-lettering, and the dead-letter queue.
/// The arguments must equal those in `deploy/rabbitmq/definitions.json`: RabbitMQ refuses a
/// redeclaration with other arguments.
pub async fn declare_topology(channel: &Channel, exchange: &str, queue: &str) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dlx = events::dead_letter_exchange(exchange);
    let dlq = events::dead_letter_queue(queue);
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(dlq.as_str().into(), durable_queue, quorum_args(None))
        .await?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(queue.into(), durable_queue, quorum_args(Some(&dlx)))
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            events::BINDING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Broker-side ceiling on deliveries: a safety net above the consumer's own attempt limit, for
/// a message whose consumer dies on it again and again.
pub const BROKER_DELIVERY_LIMIT: i64 = 20;

fn quorum_args(dead_letter_exchange: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    if let Some(dlx) = dead_letter_exchange {
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(dlx.into()),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(BROKER_DELIVERY_LIMIT),
        );
    }
    args
}

async fn connect(config: &ConsumerConfig) -> anyhow::Result<(Connection, Channel)> {
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(
            &config.amqp_url,
            ConnectionProperties::default().with_connection_name("query-service consumer".into()),
        ),
    )
    .await??;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    declare_topology(&channel, &config.exchange, &config.queue).await?;
    Ok((conn, channel))
}

async fn consume(
    store: &Store,
    config: &ConsumerConfig,
    channel: &Channel,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let tag = format!("query-service-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            _ = shutdown.triggered() => {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                return Ok(());
            }
        };
        match next {
            Some(Ok(delivery)) => handle(store, config, delivery, shutdown).await?,
            Some(Err(err)) => return Err(err.into()),
            None => return Err(anyhow::anyhow!("consumer stream ended")),
        }
    }
}

fn header<'a>(delivery: &'a Delivery, key: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(key)
}

/// How many times this message was delivered before (quorum queues count it).
fn previous_deliveries(delivery: &Delivery) -> u32 {
    match header(delivery, "x-delivery-count") {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        _ => 0,
    }
}

fn correlation_id(delivery: &Delivery) -> String {
    match header(delivery, events::HEADER_CORRELATION_ID) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default(),
    }
}

/// Applies one delivery and settles it. Returns an error only when the broker connection
/// failed (the caller reconnects; the unsettled message is redelivered).
async fn handle(
    store: &Store,
    config: &ConsumerConfig,
    delivery: Delivery,
    shutdown: &Shutdown,
) -> lapin::Result<()> {
    let span = tracing::info_span!(
        "event",
        correlation_id = %correlation_id(&delivery),
        message_id = delivery.properties.message_id().as_ref().map(|s| s.as_str()).unwrap_or(""),
        routing_key = delivery.routing_key.as_str(),
    );
    async {
        let envelope = match Envelope::from_json(&delivery.data) {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(error = %err, "message is not a valid event; dead-lettering it");
                return dead_letter(store, config, &delivery).await;
            }
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match store.apply(&envelope).await {
                Ok(result) => {
                    delivery.ack(BasicAckOptions::default()).await?;
                    let outcome = match result {
                        Applied::Applied => Outcome::Applied,
                        Applied::Skipped => Outcome::Skipped,
                    };
                    tracing::info!(
                        todo_id = envelope.todo_id,
                        version = envelope.version,
                        event_type = %envelope.event_type,
                        outcome = ?outcome,
                        "event projected"
                    );
                    count(store, config, outcome, Some(envelope.occurred_at)).await;
                    return Ok(());
                }
                Err(err) if crate::store::is_transient(&err) => {
                    if shutdown.is_triggered() {
                        // Leave it unacked: it goes back to the queue with the channel.
                        return Ok(());
                    }
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "MongoDB unavailable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.triggered() => {}
                    }
                    backoff = (backoff * 2).min(config.max_backoff);
                }
                Err(err) => {
                    let attempt = previous_deliveries(&delivery) + 1;
                    if attempt >= config.max_attempts {
                        tracing::error!(error = %err, attempt, "event cannot be applied; dead-lettering it");
                        return dead_letter(store, config, &delivery).await;
                    }
                    tracing::warn!(error = %err, attempt, "event cannot be applied; redelivering");
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await?;
                    return Ok(());
                }
            }
        }
    }
    .instrument(span)
    .await
}

async fn dead_letter(
    store: &Store,
    config: &ConsumerConfig,
    delivery: &Delivery,
) -> lapin::Result<()> {
    delivery
        .nack(BasicNackOptions {
            requeue: false,
            ..BasicNackOptions::default()
        })
        .await?;
    count(store, config, Outcome::DeadLettered, None).await;
    Ok(())
}

/// Counters are best effort: a failure to count never holds up the queue.
async fn count(
    store: &Store,
    config: &ConsumerConfig,
    outcome: Outcome,
    occurred_at: Option<chrono::DateTime<chrono::Utc>>,
) {
    let label = match outcome {
        Outcome::Applied => EventOutcome::applied,
        Outcome::Skipped => EventOutcome::skipped_duplicate,
        Outcome::DeadLettered => EventOutcome::dead_lettered,
    };
    let lag = match (outcome, occurred_at) {
        (Outcome::Applied, Some(at)) => Some(chrono::Utc::now() - at),
        _ => None,
    };
    config.metrics.observe_event(label, lag);
    if let Err(err) = store.record(outcome, occurred_at).await {
        tracing::debug!(error = %err, "projection counter not updated");
    }
}
