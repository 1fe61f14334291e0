//! The read side's change fan-out over RabbitMQ, so that every replica's `GET /todos/stream`
//! carries every change, whichever replica's consumer applied it.
//!
//! - The consumer publishes each acked batch's changes ([`publish`]) as one message to the
//!   fanout exchange `<queue>.changes` (`events::changes_exchange`): transient, unconfirmed,
//!   since a lost notice costs a stream client a reconnect, never a change in the read model.
//! - Each replica's listener ([`run`]) consumes them through a queue of its own (server-named,
//!   exclusive, deleted with its connection, bounded in bytes, oldest dropped first) and hands
//!   them to its [`Hub`], and tells its `?min_version=` waiters which versions landed.
//! - When the listener's connection is lost, its clients may miss changes until it is back:
//!   once it is, every client is told so (`Hub::interrupt`) and reconnects with
//!   `Last-Event-ID`, which replays from the read model.

use crate::changes::{Batch, Hub};
use crate::consumer::Applied;
use crate::shutdown::Shutdown;
use events::service::backoff::Backoff;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a replica's fan-out queue may hold before its oldest notices are dropped.
const QUEUE_MAX_BYTES: i64 = 64 << 20;

#[derive(Clone)]
pub struct FanoutConfig {
    pub amqp_url: String,
    /// The fanout exchange, `<queue>.changes`.
    pub exchange: String,
    pub max_backoff: Duration,
    pub hub: Arc<Hub>,
    pub applied: tokio::sync::broadcast::Sender<Applied>,
    pub status: Arc<crate::consumer::ConsumerStatus>,
}

/// Declares the fanout exchange (idempotent); with `passive`, only checks that it exists.
pub async fn declare(channel: &Channel, exchange: &str, passive: bool) -> lapin::Result<()> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                passive,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// [`declare`] on a channel of its own; a broker user that may not configure the exchange (the
/// definitions made it) has it checked instead.
async fn declare_or_check(conn: &Connection, exchange: &str) -> lapin::Result<()> {
    let channel = conn.create_channel().await?;
    match declare(&channel, exchange, false).await {
        Err(err) if err.to_string().contains("ACCESS_REFUSED") => {
            let channel = conn.create_channel().await?;
            declare(&channel, exchange, true).await?;
            let _ = channel.close(200, "checked".into()).await;
        }
        other => {
            other?;
            let _ = channel.close(200, "declared".into()).await;
        }
    }
    Ok(())
}

/// Publishes one batch's changes to every replica. Does not wait for the broker.
pub async fn publish(channel: &Channel, exchange: &str, batch: &Batch) -> lapin::Result<()> {
    let body = serde_json::to_vec(batch).unwrap_or_default();
    channel
        .basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_content_type(events::CONTENT_TYPE.into()),
        )
        .await
        .map(|_| ())
}

/// The listener: reconnects by itself until shutdown, with a delay that starts over once a
/// connection served (`crate::consumer::SERVED_AFTER`).
pub async fn run(config: FanoutConfig, shutdown: Shutdown) {
    let mut reconnect = Backoff::new(crate::consumer::RETRY_BASE, config.max_backoff);
    // Clients admitted before the first subscription may have missed changes too.
    let mut lost = true;
    while !shutdown.is_triggered() {
        let connected = Instant::now();
        match listen(&config, &shutdown, &mut lost).await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(error = %err, "change fan-out listener lost RabbitMQ; reconnecting");
                lost = true;
            }
        }
        if connected.elapsed() >= crate::consumer::SERVED_AFTER {
            reconnect.reset();
        }
        if !reconnect.pause(&shutdown).await {
            break;
        }
    }
}

async fn listen(config: &FanoutConfig, shutdown: &Shutdown, lost: &mut bool) -> anyhow::Result<()> {
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(
            &config.amqp_url,
            ConnectionProperties::default()
                .with_connection_name("query-service change fan-out".into()),
        ),
    )
    .await??;
    declare_or_check(&conn, &config.exchange).await?;
    let channel = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(QUEUE_MAX_BYTES),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("drop-head".into()),
    );
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            queue.name().as_str().into(),
            config.exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut notices = channel
        .basic_consume(
            queue.name().as_str().into(),
            "fan-out".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tracing::info!(exchange = %config.exchange, "change fan-out listening");
    config
        .status
        .fanout
        .store(true, std::sync::atomic::Ordering::Relaxed);
    if std::mem::take(lost) {
        config
            .hub
            .interrupt("the change fan-out was interrupted; reconnect with Last-Event-ID");
    }
    let result = loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.triggered() => break Ok(()),
            next = notices.next() => next,
        };
        match next {
            Some(Ok(delivery)) => match serde_json::from_slice::<Batch>(&delivery.data) {
                Ok(batch) => {
                    let applied: Vec<crate::waits::Landed> = batch
                        .changes
                        .iter()
                        .map(crate::waits::Landed::of_change)
                        .collect();
                    let _ = config.applied.send(Arc::new(applied));
                    config.hub.publish(batch);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "a fan-out notice that is not a batch of changes; ignored")
                }
            },
            Some(Err(err)) => break Err(err.into()),
            None => break Err(anyhow::anyhow!("the fan-out queue's consumer ended")),
        }
    };
    config
        .status
        .fanout
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bye".into())).await;
    result
}
