//! The projection's consumer: RabbitMQ → MongoDB.
//!
//! - Topology (declared at every connect, idempotently): the durable topic exchange, a durable
//!   quorum queue bound with `todo.#`, and a dead-letter exchange and queue.
//! - Manual acknowledgements with a prefetch: a message is acked only after MongoDB has the
//!   change (or already had it: duplicates and late events are acked as skipped).
//! - Batches: the consumer takes whatever has arrived (up to the prefetch, never waiting for
//!   more) and applies it as one bulk write ([`Store::apply_batch`]). This process's
//!   `?min_version=` waiters are told what it wrote at once, and the shared counters are
//!   updated at once (the counts of live and completed todos move by what the writes replaced,
//!   which a redelivery could not know). Settling it on the broker (the fan-out notice, one
//!   `multiple` ack) happens at most every [`SETTLE_EVERY`]: under load the batches written in
//!   that time settle together, so the broker and this process pay those two once for all of
//!   them instead of once per batch of a few events; a lone batch settles at once. Until
//!   settled, a batch's messages are unacked, so a crash between its write and its settling
//!   redelivers them (duplicates, which the version guard skips and the counters do not count
//!   twice). One info line per batch; each event's line (with its correlation id) is at debug.
//! - A message that can never apply is dead-lettered at its first delivery: a body that is not
//!   a JSON event, has a `schema_version` of 0 or fails `Envelope::validate` (an older or newer
//!   version of the contract is read, not refused).
//! - An event MongoDB refuses (a write error of its own: a validator, a full disk, a lost
//!   permission, a write conflict) is kept unacked and tried again in place after a delay that
//!   doubles from [`RETRY_BASE`] up to `RETRY_MAX_BACKOFF_MS`, for as long as the store refuses
//!   it. Meanwhile the rest of its batch is acked one by one (a `multiple` ack would ack it
//!   too) and the consumer goes on with later messages; refused events hold prefetch slots, so
//!   at most `AMQP_PREFETCH` of them are held.
//! - A message the broker has delivered `AMQP_MAX_DELIVERIES` times without it being settled
//!   (its quorum queue's `x-delivery-count` header) is dead-lettered with that reason before it
//!   is even parsed: a message that makes the consumer fail every time (a crash, a panic, a
//!   process killed while it holds it) cannot loop for ever. Each return counts, also one after a
//!   reconnect while the event was held for a store that refused it, so the bound is set well
//!   above the reconnects such an outage costs (20 by default); a valid event dead-lettered
//!   that way says so in its reason, and `query-service dead-letters redrive` sends it back.
//! - A transient MongoDB error of the whole batch (server away, restarting) is retried in place
//!   with backoff; the batch stays unacked meanwhile, so nothing is lost.
//! - lapin does not reconnect by itself: the loop here reconnects with a backoff that starts
//!   again from its base only after a connection has served (see [`SERVED_AFTER`]).
//! - On shutdown the consumer is cancelled, the batch in hand is finished and settled with
//!   those written before it, and the connection is closed; unacked messages (prefetched or
//!   held) go back to the queue.

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Counts, Outcome, Refused, Store};
use events::service::backoff::Backoff;
use events::Envelope;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The shortest time between two settlings of written batches (see the module header).
pub const SETTLE_EVERY: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct ConsumerConfig {
    pub metrics: Arc<Metrics>,
    pub amqp_url: String,
    pub exchange: String,
    pub queue: String,
    pub prefetch: u16,
    /// Ceiling of every backoff: reconnects, a store away, an event the store refuses.
    pub max_backoff: Duration,
    /// Told the `(todo_id, version)` of every event settled into the store, batch by batch
    /// (`?min_version=` waiters listen).
    pub applied: tokio::sync::broadcast::Sender<Applied>,
    /// The fanout exchange each batch's changes to the read model are published to, for every
    /// replica's `GET /todos/stream` (`crate::fanout`).
    pub changes_exchange: String,
    /// `AMQP_MAX_DELIVERIES`: a message delivered this many times without being settled is
    /// dead-lettered with that reason at its next delivery, untried (0: never).
    pub max_deliveries: u32,
}

pub use crate::waits::Applied;

/// What `/ready` reads of the consumer.
#[derive(Debug, Default)]
pub struct ConsumerStatus {
    /// Subscribed to the queue.
    pub connected: AtomicBool,
    /// The change fan-out listener is subscribed (`crate::fanout`): stream clients get every
    /// replica's changes.
    pub fanout: AtomicBool,
    /// Messages in the dead-letter queue as last read (`None`: not read yet).
    pub dead_letters: std::sync::Mutex<Option<u32>>,
}

/// How often the consumer reads how many messages the dead-letter queue holds.
pub const DEAD_LETTERS_EVERY: Duration = Duration::from_secs(5);

/// First delay before a reconnect, and before the first retry of an event the store refused.
pub const RETRY_BASE: Duration = Duration::from_millis(200);
/// How long a connection must last to count as having served: only then does the reconnect
/// delay start over from [`RETRY_BASE`]. So a broker that drops the consumer right after it
/// connects or subscribes (a node shutting down, a queue deleted under it, a proxy cutting
/// connections) costs one connection per ceiling, not five a second.
pub const SERVED_AFTER: Duration = Duration::from_secs(10);

pub async fn run(
    store: Store,
    config: ConsumerConfig,
    status: Arc<ConsumerStatus>,
    shutdown: Shutdown,
) {
    let mut reconnect = Backoff::new(RETRY_BASE, config.max_backoff);
    // What batches wrote and did not settle survives a lost connection: its fan-out notice is
    // published on the next one (its deliveries come back as duplicates, which make no notice
    // of their own).
    let mut unsettled = Unsettled::default();
    while !shutdown.is_triggered() {
        config.metrics.consumer_connect();
        let served = match connect(&config).await {
            Ok(link) => {
                tracing::info!(queue = %config.queue, "consumer connected to RabbitMQ");
                let connected_at = Instant::now();
                let mut settled = false;
                let channels = Channels {
                    deliveries: &link.deliveries,
                    dead_letters: &link.dead_letters,
                    notices: &link.notices,
                    probe: &link.probe,
                };
                let result = consume(
                    &store,
                    &config,
                    channels,
                    (&status, &shutdown),
                    &mut unsettled,
                    &mut settled,
                )
                .await;
                status.connected.store(false, Ordering::Relaxed);
                config.metrics.set_held(0);
                if let Err(err) = result {
                    tracing::warn!(error = %err, "consumer lost its connection; reconnecting");
                }
                for conn in [&link.consuming, &link.publishing] {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into()))
                            .await;
                }
                settled || connected_at.elapsed() >= SERVED_AFTER
            }
            Err(err) if err.to_string().contains("inequivalent arg") => {
                // Not a passing fault: the queue exists with arguments this version does not
                // declare (an earlier version made it). It will not go away by retrying.
                tracing::error!(
                    error = %err,
                    queue = %config.queue,
                    "the queue was declared with other arguments, by an earlier version; \
                     see deploy/README.md, Upgrading, to create it anew"
                );
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, "RabbitMQ unreachable");
                false
            }
        };
        if shutdown.is_triggered() {
            break;
        }
        if served {
            reconnect.reset();
        }
        tracing::info!(
            retry_in_ms = reconnect.peek().as_millis() as u64,
            "consumer reconnecting"
        );
        if !reconnect.pause(&shutdown).await {
            break;
        }
    }
    tracing::info!("consumer stopped");
}

/// Declares the exchange, the quorum queue with its dead-lettering, and the dead-letter queue.
/// The arguments must equal those in `deploy/rabbitmq/definitions.json`: RabbitMQ refuses a
/// redeclaration with other arguments.
pub async fn declare_topology(channel: &Channel, exchange: &str, queue: &str) -> lapin::Result<()> {
    declare_topology_with(channel, exchange, queue, false).await
}

/// [`declare_topology`]; with `passive`, each exchange and queue is only checked to exist and
/// nothing is bound (a broker user that may configure nothing finds what the definitions made).
async fn declare_topology_with(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    passive: bool,
) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        passive,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        passive,
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
        .queue_declare(queue.into(), durable_queue, quorum_args(Some(&dlx)))
        .await?;
    if passive {
        return Ok(());
    }
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

/// The arguments of a quorum queue, with its dead-letter exchange for the main queue
/// (`deploy/rabbitmq/definitions.json` holds the same). The main queue has no
/// `x-delivery-limit`: RabbitMQ 3.x quorum queues count every return of a message, also those
/// of a consumer that reconnects or restarts while it holds an event the store refuses, and
/// would dead-letter that valid event. The consumer never requeues a message itself (see the
/// module header), so nothing else would reach such a limit.
pub fn quorum_args(dead_letter_exchange: Option<&str>) -> FieldTable {
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
    }
    args
}

/// The consumer's connections and channels: it consumes on one connection and publishes (dead
/// letters, change notices) on another, as RabbitMQ advises: a connection that publishes is
/// the one the broker stops reading during a memory or disk alarm, and the acks that would
/// drain the backlog must not wait behind it.
struct Link {
    consuming: Connection,
    publishing: Connection,
    deliveries: Channel,
    /// In confirm mode.
    dead_letters: Channel,
    notices: Channel,
    probe: Channel,
}

async fn open(url: &str, name: &str) -> anyhow::Result<Connection> {
    Ok(tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name(name.into()),
        ),
    )
    .await??)
}

async fn connect(config: &ConsumerConfig) -> anyhow::Result<Link> {
    let consuming = open(&config.amqp_url, "query-service consumer").await?;
    // The topology, declared where the broker user may configure it (the local services'
    // guest); with the users deploy/rabbitmq/definitions.json ships, which may configure none of
    // it, the first declaration is refused (closing its channel) and everything is only checked
    // to exist, as the definitions made it.
    let declared = match declare_on_own_channel(&consuming, config, false).await {
        Ok(()) => true,
        Err(err) if err.to_string().contains("ACCESS_REFUSED") => {
            declare_on_own_channel(&consuming, config, true).await?;
            false
        }
        Err(err) => return Err(err.into()),
    };
    tracing::debug!(declared, "consumer topology in place");
    let deliveries = consuming.create_channel().await?;
    deliveries
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let publishing = open(&config.amqp_url, "query-service publisher").await?;
    let dead_letters = publishing.create_channel().await?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let notices = publishing.create_channel().await?;
    let probe = publishing.create_channel().await?;
    Ok(Link {
        consuming,
        publishing,
        deliveries,
        dead_letters,
        notices,
        probe,
    })
}

/// [`declare_topology`] with the change fan-out's exchange, on a channel of its own (a refusal
/// closes the channel); with `passive`, only checks that each exists.
async fn declare_on_own_channel(
    conn: &Connection,
    config: &ConsumerConfig,
    passive: bool,
) -> lapin::Result<()> {
    let channel = conn.create_channel().await?;
    declare_topology_with(&channel, &config.exchange, &config.queue, passive).await?;
    crate::fanout::declare(&channel, &config.changes_exchange, passive).await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// A delivery whose event is being applied, or waits to be tried again because the store
/// refused it.
struct Pending {
    delivery: Delivery,
    event: Envelope,
    /// How many times the store refused the event on this delivery.
    refusals: u32,
    /// When to try again.
    due: Instant,
    /// The consumer span of this attempt at the message ([`event_span`]), open until it is
    /// settled or refused (a refused one ends failed; the retry opens another).
    span: tracing::Span,
}

/// The consumer's channels: the one it consumes (and acks, and publishes the changes) on, and
/// one in confirm mode it dead-letters on.
#[derive(Clone, Copy)]
struct Channels<'a> {
    deliveries: &'a Channel,
    dead_letters: &'a Channel,
    notices: &'a Channel,
    /// Reads the dead-letter queue's depth (a passive declare, which closes the channel it
    /// runs on if it fails: never one of the others).
    probe: &'a Channel,
}

async fn consume(
    store: &Store,
    config: &ConsumerConfig,
    channels: Channels<'_>,
    (status, shutdown): (&ConsumerStatus, &Shutdown),
    unsettled: &mut Unsettled,
    settled: &mut bool,
) -> anyhow::Result<()> {
    // Deliveries of an earlier connection cannot be acked on this one: they come back.
    unsettled.to_ack.clear();
    let channel = channels.deliveries;
    let tag = format!("query-service-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            config.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    status.connected.store(true, Ordering::Relaxed);
    let most = usize::from(config.prefetch.max(1));
    // Events the store refused, unacked, each waiting for its `due` time. They hold prefetch
    // slots: with all slots held the broker sends nothing more and only retries run.
    let mut held: Vec<Pending> = Vec::new();
    // When batches were last settled.
    let mut last_settled = Instant::now() - SETTLE_EVERY;
    let dlq = events::dead_letter_queue(&config.queue);
    let mut dead_letters_tick = tokio::time::interval(DEAD_LETTERS_EVERY);
    dead_letters_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let cancel = || async {
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    };
    loop {
        let next_retry = held.iter().map(|p| p.due).min();
        let settle_at = (!unsettled.is_empty()).then(|| last_settled + SETTLE_EVERY);
        let started = Instant::now();
        let mut fresh = Vec::new();
        tokio::select! {
            // Shutdown first: a stopping consumer takes no new batch, and settles what it wrote.
            biased;
            _ = shutdown.triggered() => {
                cancel().await;
                settle(config, channels, unsettled, &held).await?;
                return Ok(());
            }
            // (With nothing held the branch is off; its deadline is never awaited.)
            _ = tokio::time::sleep_until(next_retry.unwrap_or(started).into()),
                if next_retry.is_some() => {}
            _ = tokio::time::sleep_until(settle_at.unwrap_or(started).into()),
                if settle_at.is_some() => {}
            _ = dead_letters_tick.tick() => {
                let depth = tokio::time::timeout(
                    Duration::from_secs(2),
                    crate::dead_letters::depth(channels.probe, &dlq),
                )
                .await;
                let known = match depth {
                    Ok(Ok(n)) => Some(n),
                    // A failed passive declare closes the probe's channel: unknown until the
                    // next connection.
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "the dead-letter queue's depth is unknown");
                        None
                    }
                    Err(_) => None,
                };
                config.metrics.set_dead_letters(known);
                *status.dead_letters.lock().unwrap_or_else(|e| e.into_inner()) = known;
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => fresh.push(delivery),
                Some(Err(err)) => return Err(err.into()),
                None => return Err(anyhow::anyhow!("consumer stream ended")),
            },
        }
        // Whatever else has already arrived (at most the prefetch) joins the batch; nothing
        // waits for more.
        while fresh.len() < most {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => fresh.push(delivery),
                Some(Some(Err(err))) => return Err(err.into()),
                Some(None) | None => break,
            }
        }
        let now = Instant::now();
        let (due, waiting): (Vec<Pending>, Vec<Pending>) =
            held.into_iter().partition(|p| p.due <= now);
        held = waiting;
        if (!fresh.is_empty() || !due.is_empty())
            && handle_batch(
                store,
                config,
                channels,
                (fresh, due),
                &mut held,
                unsettled,
                shutdown,
            )
            .await?
                == Settled::Stopped
        {
            // The batch is unacked and goes back to the queue with the channel, as do the held
            // events and the batches not settled yet; acking a later batch with `multiple`
            // would ack them too.
            cancel().await;
            return Ok(());
        }
        // Settled now when the last settling is old enough, or when the unacked messages hold
        // half the prefetch (the broker would soon send nothing more).
        if !unsettled.is_empty()
            && (last_settled.elapsed() >= SETTLE_EVERY
                || unsettled.to_ack.len() + held.len() >= most.div_ceil(2))
        {
            settle(config, channels, unsettled, &held).await?;
            last_settled = Instant::now();
            *settled = true;
        }
    }
}

/// What the batches since the last settling wrote (and counted): announced and acked together
/// by [`settle`].
#[derive(Default)]
struct Unsettled {
    changes: Vec<crate::changes::Change>,
    to_ack: Vec<Pending>,
}

impl Unsettled {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.to_ack.is_empty()
    }
}

/// Settles what the batches since the last settling wrote: the fan-out notice, then the ack.
async fn settle(
    config: &ConsumerConfig,
    channels: Channels<'_>,
    unsettled: &mut Unsettled,
    held: &[Pending],
) -> anyhow::Result<()> {
    let Unsettled { changes, to_ack } = unsettled;
    // The notice before the ack: the changes are in MongoDB already, and batches redelivered
    // after a failure in between are all duplicates, which make no notice of their own.
    if !changes.is_empty() {
        changes.sort_by_key(|c| c.position);
        let batch = crate::changes::Batch {
            changes: changes.clone(),
        };
        crate::fanout::publish(channels.notices, &config.changes_exchange, &batch).await?;
        changes.clear();
    }
    ack(to_ack, held).await?;
    to_ack.clear();
    Ok(())
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Every delivery was written (to be settled, or settled), dead-lettered, or held for a
    /// retry.
    All,
    /// Shutdown came while the store was away: nothing of it was acked.
    Stopped,
}

fn header<'a>(delivery: &'a Delivery, key: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(key)
}

/// How many times the broker delivered `delivery` before, without it being settled: its
/// quorum queue counts them in `x-delivery-count` (absent on a first delivery).
fn earlier_deliveries(delivery: &Delivery) -> u32 {
    crate::dead_letters::number(header(delivery, "x-delivery-count"))
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
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

/// Applies a batch, the new deliveries `fresh` with the held events whose retry is due
/// (`retried`), and tells this process's waiters what it wrote: see the module header. What
/// it wrote joins `unsettled` (for [`settle`]); events the store refused join `held`.
/// Returns an error only when the broker connection failed (the caller reconnects; unsettled
/// messages are redelivered).
async fn handle_batch(
    store: &Store,
    config: &ConsumerConfig,
    channels: Channels<'_>,
    (fresh, retried): (Vec<Delivery>, Vec<Pending>),
    held: &mut Vec<Pending>,
    unsettled: &mut Unsettled,
    shutdown: &Shutdown,
) -> anyhow::Result<Settled> {
    let started = Instant::now();
    let size = fresh.len() + retried.len();
    let mut counts = Counts::default();
    // Held events first: they are the older deliveries. Each attempt is a span of its own
    // (the last one ended when the store refused it).
    let mut batch = retried;
    for pending in &mut batch {
        pending.span = event_span(&pending.delivery, &config.queue);
    }
    for delivery in fresh {
        let earlier = earlier_deliveries(&delivery);
        if config.max_deliveries > 0 && earlier >= config.max_deliveries {
            let reason = format!(
                "delivered {earlier} times without being settled (AMQP_MAX_DELIVERIES is {}): \
                 the consumer failed or stopped each time it held it",
                config.max_deliveries
            );
            let span = event_span(&delivery, &config.queue);
            span.record("otel.status_code", "ERROR");
            span.in_scope(|| {
                tracing::error!(earlier, "message delivered too often; dead-lettering it")
            });
            dead_letter(channels.dead_letters, &config.exchange, &delivery, &reason).await?;
            counts.add(Outcome::DeadLettered);
            config.metrics.observe_event(Outcome::DeadLettered, None);
            continue;
        }
        match Envelope::from_json(&delivery.data) {
            Ok(event) => batch.push(Pending {
                span: event_span(&delivery, &config.queue),
                delivery,
                event,
                refusals: 0,
                due: started,
            }),
            Err(err) => {
                let span = event_span(&delivery, &config.queue);
                span.record("otel.status_code", "ERROR");
                span.in_scope(|| {
                    tracing::warn!(error = %err, "message is not a valid event; dead-lettering it")
                });
                dead_letter(
                    channels.dead_letters,
                    &config.exchange,
                    &delivery,
                    &err.to_string(),
                )
                .await?;
                counts.add(Outcome::DeadLettered);
                config.metrics.observe_event(Outcome::DeadLettered, None);
            }
        }
    }
    let events: Vec<Envelope> = batch.iter().map(|p| p.event.clone()).collect();
    let batch_span = batch_span(&batch);
    // Every generation of the read model the pointer names, newest first
    // (`store/generations.rs`): the one a rebuild fills before the current one, the previous
    // one after it, so that the newer always holds what the older does.
    let Some(targets) = targets(store, config, shutdown)
        .instrument(batch_span.clone())
        .await
    else {
        return Ok(Settled::Stopped);
    };
    let Some(newer_refusals) = apply_newer(&targets.newer, config, &events, shutdown)
        .instrument(batch_span.clone())
        .await
    else {
        return Ok(Settled::Stopped);
    };
    let store = &targets.current;
    // What a newer generation refused is held without a write to the current one.
    let to_current: Vec<Envelope> = events
        .iter()
        .zip(&newer_refusals)
        .filter(|(_, refused)| refused.is_none())
        .map(|(e, _)| e.clone())
        .collect();
    let Some(current_results) = apply(store, config, &to_current, shutdown)
        .instrument(batch_span.clone())
        .await
    else {
        // Shutting down with the store away: leave the batch unacked; it is redelivered.
        return Ok(Settled::Stopped);
    };
    let mut current_results = current_results.into_iter();
    let results: Vec<Result<Outcome, Refused>> = newer_refusals
        .into_iter()
        .map(|refused| match refused {
            Some(refused) => Err(refused),
            None => current_results
                .next()
                .expect("one result per event written to the current generation"),
        })
        .collect();

    let mut to_ack: Vec<Pending> = Vec::with_capacity(batch.len());
    let mut applied = Vec::with_capacity(batch.len());
    let mut changes = Vec::new();
    let mut newest_event = None;
    let mut highest = crate::store::Highest::default();
    let mut refused_now = 0;
    for (mut pending, result) in batch.into_iter().zip(results) {
        let event = &pending.event;
        let span = pending.span.clone();
        match result {
            Ok(outcome) => {
                span.in_scope(|| {
                    tracing::debug!(
                        todo_id = event.todo_id,
                        version = event.version,
                        event_type = %event.event_type,
                        ?outcome,
                        refusals = pending.refusals,
                        "event projected"
                    )
                });
                counts.add(outcome);
                let lag =
                    (outcome == Outcome::Applied).then(|| chrono::Utc::now() - event.occurred_at);
                config.metrics.observe_event(outcome, lag);
                if outcome == Outcome::Applied {
                    newest_event = newest_event.max(Some(event.occurred_at));
                    changes.push(crate::changes::Change::of_event(event));
                }
                applied.push(crate::waits::Landed {
                    id: event.todo_id,
                    version: event.version,
                    // An applied event's state is what the read model holds now; of a
                    // duplicate or a superseded one, only that it holds this version or later.
                    state: (outcome == Outcome::Applied)
                        .then(|| crate::store::Stored::after(event)),
                });
                highest = crate::store::Highest::of([event]).max(highest);
                to_ack.push(pending);
            }
            Err(refused) => {
                pending.refusals += 1;
                let delay =
                    Backoff::after_failures(RETRY_BASE, config.max_backoff, pending.refusals);
                span.in_scope(|| {
                    tracing::warn!(
                        error = %refused,
                        todo_id = event.todo_id,
                        version = event.version,
                        refusals = pending.refusals,
                        retry_in_ms = delay.as_millis() as u64,
                        "MongoDB refused the event; keeping it and retrying"
                    )
                });
                config.metrics.observe_refusal();
                refused_now += 1;
                pending.due = Instant::now() + delay;
                // This attempt's span ends here, failed; the retry opens another.
                span.record("otel.status_code", "ERROR");
                pending.span = tracing::Span::none();
                held.push(pending);
            }
        }
    }
    config.metrics.set_held(held.len());
    // The waiters of this process first: what the batch wrote is in MongoDB already, and they
    // need not wait for the counters, the fan-out notice and the ack. Nobody listening is fine.
    if !applied.is_empty() {
        let _ = config.applied.send(Arc::new(applied));
    }
    // The counters at once, before the batch is acked: the counts of live and completed todos
    // move by what its writes replaced, which a redelivery after a crash would not know (its
    // events are then duplicates). And lists in id order walk up to the highest todo id
    // recorded here, so a failure to record is retried like the store being away.
    if counts.total() > 0 {
        let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
        while let Err(err) = store
            .record(counts, newest_event, highest)
            .instrument(batch_span.clone())
            .await
        {
            tracing::warn!(error = %err, retry_in_ms = backoff.peek().as_millis() as u64, "projection counters not updated; retrying");
            config.metrics.observe_store_unavailable();
            if !backoff.pause(shutdown).await {
                return Ok(Settled::Stopped);
            }
        }
    }
    if apply_older(&targets.older, config, &to_current, shutdown)
        .instrument(batch_span.clone())
        .await
        .is_none()
    {
        return Ok(Settled::Stopped);
    }
    unsettled.changes.append(&mut changes);
    unsettled.to_ack.append(&mut to_ack);
    // In the batch's span: the line carries its first message's trace id.
    let _in_batch = batch_span.enter();
    tracing::info!(
        size,
        applied = counts.applied,
        duplicates = counts.duplicates,
        superseded = counts.superseded,
        dead_lettered = counts.dead_lettered,
        refused = refused_now,
        held = held.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "batch projected"
    );
    Ok(Settled::All)
}

/// Acks `settled`. Every unacked delivery of the channel is in `settled`, in `held`, or arrived
/// after all of them (delivery tags grow). So one `multiple` ack on the highest settled tag
/// below every held tag acks exactly the settled deliveries up to it; those above a held one
/// are acked one by one, so that no held event is ever acked.
async fn ack(settled: &mut [Pending], held: &[Pending]) -> lapin::Result<()> {
    settled.sort_unstable_by_key(|p| p.delivery.delivery_tag);
    let lowest_held = held
        .iter()
        .map(|p| p.delivery.delivery_tag)
        .min()
        .unwrap_or(u64::MAX);
    let below = settled.partition_point(|p| p.delivery.delivery_tag < lowest_held);
    if let Some(last) = settled[..below].last() {
        last.delivery
            .ack(BasicAckOptions { multiple: true })
            .await?;
    }
    for p in &settled[below..] {
        p.delivery.ack(BasicAckOptions { multiple: false }).await?;
    }
    Ok(())
}

/// Applies `events` as one batch and gives each its outcome, or the store's refusal. A
/// transient failure of the whole command (the store away) is retried in place with backoff:
/// nothing could be applied meanwhile. A command the store refuses for another reason is
/// applied one event at a time, so one bad event costs no other its place; the older events
/// of a todo whose newest event was refused are applied without it. `None` when shutdown came
/// while the store was away.
async fn apply(
    store: &Store,
    config: &ConsumerConfig,
    events: &[Envelope],
    shutdown: &Shutdown,
) -> Option<Vec<Result<Outcome, Refused>>> {
    let mut results: Vec<Option<Result<Outcome, Refused>>> = vec![None; events.len()];
    let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
    loop {
        let open: Vec<usize> = (0..events.len())
            .filter(|&k| results[k].is_none())
            .collect();
        if open.is_empty() {
            return Some(results.into_iter().flatten().collect());
        }
        let subset: Vec<Envelope> = open.iter().map(|&k| events[k].clone()).collect();
        let outcome = match store.apply_batch(&subset).await {
            Ok(batch) => batch,
            Err(err) if crate::store::is_transient(&err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.peek().as_millis() as u64, "MongoDB unavailable; retrying");
                config.metrics.observe_store_unavailable();
                if !backoff.pause(shutdown).await {
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
                            Ok(settled) => break Some(settled),
                            Err(err) if crate::store::is_transient(&err) => {
                                config.metrics.observe_store_unavailable();
                                if !backoff.pause(shutdown).await {
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
        // `None`: an older event of a todo whose newest event was refused; tried again in the
        // next round, without that one. Each round settles the newest open event of every todo.
        for (&k, result) in open.iter().zip(outcome) {
            if result.is_some() {
                results[k] = result;
            }
        }
    }
}

/// The handles of the generations a batch is written to, by a fresh reading of the pointer;
/// the store away is retried with backoff. `None` when shutdown came meanwhile.
async fn targets(
    store: &Store,
    config: &ConsumerConfig,
    shutdown: &Shutdown,
) -> Option<crate::store::generations::Targets> {
    let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
    loop {
        match store.targets().await {
            Ok(targets) => return Some(targets),
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.peek().as_millis() as u64, "read model pointer not read; retrying");
                config.metrics.observe_store_unavailable();
                if !backoff.pause(shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Writes a batch to the generations newer than the current one (the one a rebuild fills),
/// each through the same version guard, retries and one-by-one fallback as the current one
/// ([`apply`]), with its own counters. Returns, per event, the first refusal a newer
/// generation gave: such an event is held and retried like one the current generation
/// refused, and not written to the current generation meanwhile, so that the generation being
/// built never lacks what the current one holds. `None` when shutdown came meanwhile.
async fn apply_newer(
    generations: &[Store],
    config: &ConsumerConfig,
    events: &[Envelope],
    shutdown: &Shutdown,
) -> Option<Vec<Option<Refused>>> {
    let mut refusals: Vec<Option<Refused>> = vec![None; events.len()];
    if events.is_empty() {
        return Some(refusals);
    }
    for store in generations {
        let results = apply(store, config, events, shutdown).await?;
        let mut counts = Counts::default();
        let mut highest = crate::store::Highest::default();
        let mut newest = None;
        for (k, result) in results.into_iter().enumerate() {
            match result {
                Ok(outcome) => {
                    counts.add(outcome);
                    highest = crate::store::Highest::of([&events[k]]).max(highest);
                    if outcome == Outcome::Applied {
                        newest = newest.max(Some(events[k].occurred_at));
                    }
                }
                Err(refused) => {
                    tracing::warn!(
                        generation = store.generation(),
                        todo_id = events[k].todo_id,
                        version = events[k].version,
                        error = %refused,
                        "MongoDB refused the event in the generation being built; holding it"
                    );
                    refusals[k].get_or_insert(refused);
                }
            }
        }
        if counts.total() > 0 {
            let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
            while let Err(err) = store.record(counts, newest, highest).await {
                tracing::warn!(generation = store.generation(), error = %err, "counters of the generation being built not updated; retrying");
                config.metrics.observe_store_unavailable();
                if !backoff.pause(shutdown).await {
                    return None;
                }
            }
        }
    }
    Some(refusals)
}

/// Writes a batch to the generations older than the current one (the previous one, kept
/// through a rebuild's grace period for replicas that have not switched yet), best effort: the
/// store away is retried with backoff, a refusal is logged, and a generation the pointer no
/// longer names (retired meanwhile) is left alone, so that no late write recreates a dropped
/// collection. `None` when shutdown came meanwhile.
async fn apply_older(
    generations: &[Store],
    config: &ConsumerConfig,
    events: &[Envelope],
    shutdown: &Shutdown,
) -> Option<()> {
    if events.is_empty() {
        return Some(());
    }
    for store in generations {
        let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
        loop {
            let written = async {
                let named = store
                    .fresh_pointer(crate::store::generations::POINTER_MAX_AGE)
                    .await?
                    .written()
                    .contains(&store.generation());
                if !named {
                    return Ok(());
                }
                let outcomes = store.apply_all(events).await?;
                let mut counts = Counts::default();
                for (event, outcome) in events.iter().zip(outcomes) {
                    match outcome {
                        Ok(outcome) => counts.add(outcome),
                        Err(refused) => tracing::warn!(
                            generation = store.generation(),
                            todo_id = event.todo_id,
                            version = event.version,
                            error = %refused,
                            "MongoDB refused an event in the previous generation"
                        ),
                    }
                }
                let newest = events.iter().map(|e| e.occurred_at).max();
                store
                    .record(counts, newest, crate::store::Highest::of(events))
                    .await
            };
            match written.await {
                Ok(()) => break,
                Err(err) if !crate::store::is_transient(&err) => {
                    // Not the store away: trying again would hold the queue for ever.
                    tracing::error!(generation = store.generation(), error = %err, "batch refused by the previous generation; going on without it");
                    break;
                }
                Err(err) => {
                    tracing::warn!(generation = store.generation(), error = %err, retry_in_ms = backoff.peek().as_millis() as u64, "batch not written to the previous generation; retrying");
                    config.metrics.observe_store_unavailable();
                    if !backoff.pause(shutdown).await {
                        return None;
                    }
                }
            }
        }
    }
    Some(())
}

/// The span one message is logged in (its correlation id, message id and routing key), and
/// its consumer span in OpenTelemetry's messaging conventions: a child of the publish the
/// message's `traceparent` header names, so it joins the trace of the request that wrote it.
fn event_span(delivery: &Delivery, queue: &str) -> tracing::Span {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str())
        .unwrap_or("");
    let span = tracing::info_span!(
        "event",
        otel.name = %format!("process {queue}"),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = queue,
        messaging.rabbitmq.destination.routing_key = delivery.routing_key.as_str(),
        messaging.message.id = message_id,
        correlation_id = %correlation_id(delivery),
        message_id,
        routing_key = delivery.routing_key.as_str(),
        trace_id = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let traceparent = match header(delivery, events::HEADER_TRACEPARENT) {
        Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
        _ => None,
    };
    events::service::trace::set_parent(&span, traceparent);
    events::service::trace::record_trace_id(&span);
    span
}

/// The span of a batch's writes to the read model: a child of its newest message's span
/// (held events, retried, come first), linked to the others', so each message's trace reaches
/// the write that applied it.
fn batch_span(batch: &[Pending]) -> tracing::Span {
    let span = match batch.last() {
        Some(newest) => tracing::info_span!(
            parent: &newest.span,
            "apply batch",
            otel.name = "apply batch",
            size = batch.len()
        ),
        None => tracing::info_span!("apply batch", otel.name = "apply batch", size = 0),
    };
    for pending in batch.iter().rev().skip(1).take(MAX_LINKS) {
        if let Some(traceparent) = events::service::trace::traceparent(&pending.span) {
            events::service::trace::add_link(&span, &traceparent);
        }
    }
    span
}

/// The links a batch span carries at most (OpenTelemetry's default limit).
const MAX_LINKS: usize = 128;

/// How long the broker may take to confirm a dead letter's copy.
const CONFIRM_WITHIN: Duration = Duration::from_secs(5);

/// Dead-letters a message that can never apply, with the reason: a copy of it (body,
/// properties, headers) goes to the dead-letter exchange, `mandatory`, with `x-refused-reason`
/// and `x-refused-at` added, and only once the broker confirmed that the copy reached the
/// dead-letter queue is the original acked. A copy the broker refused, returned (no queue
/// bound) or did not confirm within [`CONFIRM_WITHIN`] is an error: the consumer reconnects and
/// the original, unacked, is delivered again.
async fn dead_letter(
    channel: &Channel,
    exchange: &str,
    delivery: &Delivery,
    reason: &str,
) -> anyhow::Result<()> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        events::HEADER_REFUSED_REASON.into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        events::HEADER_REFUSED_AT.into(),
        AMQPValue::LongString(chrono::Utc::now().to_rfc3339().into()),
    );
    let properties = delivery.properties.clone().with_headers(headers);
    let dlx = events::dead_letter_exchange(exchange);
    crate::dead_letters::publish_confirmed(
        channel,
        (&dlx, delivery.routing_key.as_str()),
        &delivery.data,
        properties,
        CONFIRM_WITHIN,
        "the dead letter's copy",
    )
    .await?;
    delivery.ack(BasicAckOptions { multiple: false }).await?;
    Ok(())
}
