//! The projection's consumer: RabbitMQ → MongoDB.
//!
//! - Topology (declared at every connect, idempotently): the durable topic exchange, a durable
//!   quorum queue bound with `todo.#`, and a dead-letter exchange and queue.
//! - Manual acknowledgements with a prefetch: a message is acked only after MongoDB has the
//!   change (or already had it: duplicates and late events are acked as skipped).
//! - Batches: the consumer takes whatever has arrived (up to the prefetch, never waiting for
//!   more) and applies it as one bulk write ([`Store::apply_batch`]), then settles it with one
//!   `multiple` ack and one update of the shared counters. One info line per batch; each
//!   event's line (with its correlation id) is at debug.
//! - A body that is not a valid event is dead-lettered at once (it cannot get better); an event
//!   MongoDB refuses is redelivered up to `MAX_DELIVERY_ATTEMPTS` times, then dead-lettered.
//! - A transient MongoDB error (server away, restarting) is retried in place with backoff and
//!   never dead-lettered; the message stays unacked meanwhile, so nothing is lost.
//! - lapin does not reconnect by itself: the loop here reconnects with backoff.
//! - On shutdown the consumer is cancelled, the batch in hand is finished, and the
//!   connection is closed; unacked prefetched messages go back to the queue.

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{BatchResult, Counts, Outcome, Refused, Store};
use events::Envelope;
use futures_util::{FutureExt, StreamExt};
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

#[derive(Clone)]
pub struct ConsumerConfig {
    pub metrics: Arc<Metrics>,
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub prefetch: u16,
    pub max_attempts: u32,
    pub max_backoff: Duration,
    /// Told the `(todo_id, version)` of every event settled into the store, batch by batch
    /// (`?min_version=` waiters listen).
    pub applied: tokio::sync::broadcast::Sender<Applied>,
}

/// The `(todo_id, version)` pairs the read model holds after a batch.
pub type Applied = Arc<Vec<(i64, i64)>>;

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
    let most = usize::from(config.prefetch.max(1));
    loop {
        let next = tokio::select! {
            // Shutdown first: a stopping consumer takes no new batch.
            biased;
            _ = shutdown.triggered() => {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                return Ok(());
            }
            next = consumer.next() => next,
        };
        let mut batch = match next {
            Some(Ok(delivery)) => vec![delivery],
            Some(Err(err)) => return Err(err.into()),
            None => return Err(anyhow::anyhow!("consumer stream ended")),
        };
        // Whatever else has already arrived (at most the prefetch) joins the batch; nothing
        // waits for more.
        while batch.len() < most {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                Some(Some(Err(err))) => return Err(err.into()),
                Some(None) | None => break,
            }
        }
        if handle_batch(store, config, batch, shutdown).await? == Settled::Stopped {
            // The batch is unacked and goes back to the queue with the channel; acking a
            // later batch with `multiple` would ack it too.
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            return Ok(());
        }
    }
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Every delivery was acked or nacked.
    All,
    /// Shutdown came while the store was away: nothing of the batch was acked.
    Stopped,
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

/// Applies a batch of deliveries and settles each: see the module header. Returns an error
/// only when the broker connection failed (the caller reconnects; unsettled messages are
/// redelivered).
async fn handle_batch(
    store: &Store,
    config: &ConsumerConfig,
    deliveries: Vec<Delivery>,
    shutdown: &Shutdown,
) -> lapin::Result<Settled> {
    let started = std::time::Instant::now();
    let mut counts = Counts::default();
    let mut events = Vec::with_capacity(deliveries.len());
    // `owner[k]` is the delivery event `k` came in.
    let mut owner = Vec::with_capacity(deliveries.len());
    for (i, delivery) in deliveries.iter().enumerate() {
        match Envelope::from_json(&delivery.data) {
            Ok(e) => {
                events.push(e);
                owner.push(i);
            }
            Err(err) => {
                event_span(delivery).in_scope(|| {
                    tracing::warn!(error = %err, "message is not a valid event; dead-lettering it")
                });
                dead_letter(delivery).await?;
                counts.add(Outcome::DeadLettered);
                config.metrics.observe_event(Outcome::DeadLettered, None);
            }
        }
    }
    let Some(results) = apply(store, config, &events, shutdown).await else {
        // Shutting down with the store away: leave the batch unacked; it is redelivered.
        return Ok(Settled::Stopped);
    };

    let mut to_ack: Vec<&Delivery> = Vec::with_capacity(events.len());
    let mut applied = Vec::with_capacity(events.len());
    let mut newest_event = None;
    let mut max_todo_id = 0;
    for ((event, result), &i) in events.iter().zip(results).zip(&owner) {
        let delivery = &deliveries[i];
        let span = event_span(delivery);
        // `apply` returns only when every event is settled.
        let Some(result) = result else { continue };
        match result {
            Ok(outcome) => {
                span.in_scope(|| {
                    tracing::debug!(
                        todo_id = event.todo_id,
                        version = event.version,
                        event_type = %event.event_type,
                        ?outcome,
                        "event projected"
                    )
                });
                counts.add(outcome);
                let lag =
                    (outcome == Outcome::Applied).then(|| chrono::Utc::now() - event.occurred_at);
                config.metrics.observe_event(outcome, lag);
                if outcome == Outcome::Applied {
                    newest_event = newest_event.max(Some(event.occurred_at));
                }
                applied.push((event.todo_id, event.version));
                max_todo_id = max_todo_id.max(event.todo_id);
                to_ack.push(delivery);
            }
            Err(refused) => {
                let attempt = previous_deliveries(delivery) + 1;
                if attempt >= config.max_attempts {
                    span.in_scope(|| {
                        tracing::error!(error = %refused, attempt, "event cannot be applied; dead-lettering it")
                    });
                    dead_letter(delivery).await?;
                    counts.add(Outcome::DeadLettered);
                    config.metrics.observe_event(Outcome::DeadLettered, None);
                } else {
                    span.in_scope(|| {
                        tracing::warn!(error = %refused, attempt, "event cannot be applied; redelivering")
                    });
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await?;
                }
            }
        }
    }
    // Before the ack: lists in id order walk up to the highest todo id recorded here, so a
    // failure to record is retried like the store being away, never skipped.
    let mut backoff = Duration::from_millis(100);
    while let Err(err) = store.record(counts, newest_event, max_todo_id).await {
        tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "projection counters not updated; retrying");
        if !pause(&mut backoff, config.max_backoff, shutdown).await {
            return Ok(Settled::Stopped);
        }
    }
    // Every other delivery of the batch is settled by now, and every earlier batch was: one
    // `multiple` ack on the highest tag acks exactly these.
    if let Some(last) = to_ack.iter().max_by_key(|d| d.delivery_tag) {
        last.ack(BasicAckOptions { multiple: true }).await?;
    }
    if !applied.is_empty() {
        // Nobody listening is fine.
        let _ = config.applied.send(Arc::new(applied));
    }
    tracing::info!(
        size = deliveries.len(),
        applied = counts.applied,
        duplicates = counts.duplicates,
        superseded = counts.superseded,
        dead_lettered = counts.dead_lettered,
        took_ms = started.elapsed().as_millis() as u64,
        "batch projected"
    );
    Ok(Settled::All)
}

/// Applies `events` as one batch. A transient failure of the whole batch, or of single
/// events, is retried in place with backoff; a batch the store refuses for another reason is
/// applied one event at a time, so one bad event costs no other its place. `None` when
/// shutdown came while the store was away.
async fn apply(
    store: &Store,
    config: &ConsumerConfig,
    events: &[Envelope],
    shutdown: &Shutdown,
) -> Option<BatchResult> {
    let mut results: BatchResult = vec![None; events.len()];
    let mut backoff = Duration::from_millis(100);
    loop {
        let open: Vec<usize> = (0..events.len())
            .filter(|&k| results[k].is_none())
            .collect();
        if open.is_empty() {
            return Some(results);
        }
        let subset: Vec<Envelope> = open.iter().map(|&k| events[k].clone()).collect();
        let outcome = match store.apply_batch(&subset).await {
            Ok(batch) => batch,
            Err(err) if crate::store::is_transient(&err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "MongoDB unavailable; retrying");
                if !pause(&mut backoff, config.max_backoff, shutdown).await {
                    return None;
                }
                continue;
            }
            Err(err) => {
                tracing::warn!(error = %err, events = subset.len(), "bulk write refused; applying one event at a time");
                let mut one_by_one = Vec::with_capacity(subset.len());
                for e in &subset {
                    one_by_one.push(loop {
                        match store.apply(e).await {
                            Ok(outcome) => break Some(Ok(outcome)),
                            Err(err) if crate::store::is_transient(&err) => {
                                if !pause(&mut backoff, config.max_backoff, shutdown).await {
                                    return None;
                                }
                            }
                            Err(err) => break Some(Err(Refused::from(&err))),
                        }
                    });
                }
                one_by_one
            }
        };
        let mut transient = false;
        for (&k, result) in open.iter().zip(outcome) {
            match result {
                Some(Err(refused)) if refused.is_transient() => transient = true,
                // An older event of a todo whose newest event was refused: tried again in the
                // next round, without it.
                None => {}
                Some(settled) => results[k] = Some(settled),
            }
        }
        if transient && !pause(&mut backoff, config.max_backoff, shutdown).await {
            return None;
        }
    }
}

/// Sleeps for `backoff` (doubling it up to `max`); false when shutdown came first.
async fn pause(backoff: &mut Duration, max: Duration, shutdown: &Shutdown) -> bool {
    if shutdown.is_triggered() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = shutdown.triggered() => return false,
    }
    *backoff = (*backoff * 2).min(max);
    true
}

/// The span one message is logged in: its correlation id, message id and routing key.
fn event_span(delivery: &Delivery) -> tracing::Span {
    tracing::info_span!(
        "event",
        correlation_id = %correlation_id(delivery),
        message_id = delivery.properties.message_id().as_ref().map(|s| s.as_str()).unwrap_or(""),
        routing_key = delivery.routing_key.as_str(),
    )
}

async fn dead_letter(delivery: &Delivery) -> lapin::Result<()> {
    delivery
        .nack(BasicNackOptions {
            requeue: false,
            ..BasicNackOptions::default()
        })
        .await
        .map(|_| ())
}
