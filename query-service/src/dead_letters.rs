//! `query-service dead-letters list | redrive [--all | <event id>...] | purge --yes`: the
//! dead-letter queue (`<AMQP_QUEUE>.dlq`) as an operator works it.
//!
//! - **list** takes every message of the queue (up to [`MOST`]) on one channel without
//!   acking any, prints each (its event id, todo, version, type, when and why the consumer
//!   refused it: the `x-refused-at` and `x-refused-reason` headers travel with the message),
//!   and closes the channel: every message goes back to the queue as it was.
//! - **redrive** takes the messages the same way and sends the chosen ones (every one with
//!   `--all`, else those whose `message_id` is a given event id) back to the live queue,
//!   through the default exchange to `AMQP_QUEUE` alone (no other queue bound to the events
//!   exchange sees them twice), with publisher confirms; a message is acked off the
//!   dead-letter queue only once the broker confirmed its copy. The consumer then applies it,
//!   or refuses it again and it comes back with its new reason. The others go back untouched.
//!   Each copy keeps the event's body and properties; the refusal headers are dropped and
//!   `x-redriven-at` and `x-previous-refusal` added. A copy the broker refuses or does not
//!   confirm stops the redrive: what was sent until then is reported with why it stopped, and
//!   the rest stays. A connection lost between a confirm and its ack leaves that message in
//!   the dead-letter queue too: redriven again, it is a duplicate the version guard skips.
//! - They take the messages off the queue while they work: a `list` running beside a
//!   `redrive` or a `purge` hides what it holds from them. Run one at a time.
//! - **purge** drops every message of the queue, only with `--yes`, and says how many.
//!
//! They run with `AMQP_URL`'s user. `list` and `purge` need to read the dead-letter queue,
//! which query-service's own user may (deploy/rabbitmq/definitions.json). `redrive` also
//! publishes into the live queue, which that user may not (its password cannot put an event
//! in its queue): run it with the operator's (`AMQP_URL=amqp://admin:…@…/todo`,
//! deploy/README.md), or with the local `guest`.

use anyhow::Context;
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use std::time::Duration;

/// Most messages one command takes off the queue at once.
pub const MOST: usize = 100_000;
/// How long the broker may take to confirm one redriven copy.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// One dead letter as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub event_id: String,
    pub todo_id: Option<i64>,
    pub version: Option<i64>,
    pub event_type: String,
    pub refused_at: String,
    pub reason: String,
    pub routing_key: String,
}

impl std::fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or_dash = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        write!(
            f,
            "{}  todo {}  version {}  {}  refused {}: {}",
            if self.event_id.is_empty() {
                "-"
            } else {
                &self.event_id
            },
            or_dash(self.todo_id),
            or_dash(self.version),
            if self.event_type.is_empty() {
                "-"
            } else {
                &self.event_type
            },
            if self.refused_at.is_empty() {
                "-"
            } else {
                &self.refused_at
            },
            self.reason
        )
    }
}

fn text(value: Option<&AMQPValue>) -> String {
    match value {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        _ => String::new(),
    }
}

/// An AMQP integer (of any width) as an `i64`.
pub fn number(value: Option<&AMQPValue>) -> Option<i64> {
    match value? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

fn describe(message: &BasicGetMessage) -> DeadLetter {
    let p = &message.delivery.properties;
    let headers = p
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    let get = |k: &str| headers.get(k);
    // The body, when it is an event, fills in what the headers lack.
    let body: Option<serde_json::Value> = serde_json::from_slice(&message.delivery.data).ok();
    let from_body = |k: &str| body.as_ref().and_then(|b| b.get(k)).cloned();
    DeadLetter {
        event_id: p
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .or_else(|| from_body("event_id").and_then(|v| v.as_str().map(String::from)))
            .unwrap_or_default(),
        todo_id: number(get(events::HEADER_TODO_ID))
            .or_else(|| from_body("todo_id").and_then(|v| v.as_i64())),
        version: number(get(events::HEADER_VERSION))
            .or_else(|| from_body("version").and_then(|v| v.as_i64())),
        event_type: p
            .kind()
            .as_ref()
            .map(|s| s.to_string())
            .or_else(|| from_body("event_type").and_then(|v| v.as_str().map(String::from)))
            .unwrap_or_default(),
        refused_at: text(get(events::HEADER_REFUSED_AT)),
        reason: {
            let reason = text(get(events::HEADER_REFUSED_REASON));
            if reason.is_empty() {
                "(no reason recorded: dead-lettered by the broker)".into()
            } else {
                reason
            }
        },
        routing_key: message.delivery.routing_key.to_string(),
    }
}

/// Publishes `body` with `properties` to `exchange` under `routing_key`, `mandatory`, on a
/// channel in confirm mode, and waits up to `within` for the broker's confirm. A copy the
/// broker refused, returned (no queue bound) or did not confirm in time is an error naming
/// `what`. The consumer's dead letters and the redrive both publish this way.
pub async fn publish_confirmed(
    channel: &Channel,
    (exchange, routing_key): (&str, &str),
    body: &[u8],
    properties: BasicProperties,
    within: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let confirmed = tokio::time::timeout(within, async {
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await?
            .await
    })
    .await;
    match confirmed {
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => anyhow::bail!(
            "{what} was returned: no queue is bound to {exchange:?} under {routing_key:?}"
        ),
        Ok(Ok(Confirmation::Nack(_))) => anyhow::bail!("the broker refused {what}"),
        Ok(Ok(Confirmation::NotRequested)) => {
            anyhow::bail!("the channel publishing {what} is not in confirm mode")
        }
        Ok(Err(err)) => Err(anyhow::Error::new(err).context(format!("publishing {what}"))),
        Err(_) => anyhow::bail!("the broker did not confirm {what} within {within:?}"),
    }
}

/// A connection and a channel for one command.
async fn open(amqp_url: &str) -> anyhow::Result<(Connection, Channel)> {
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(
            amqp_url,
            ConnectionProperties::default()
                .with_connection_name("query-service dead-letters".into()),
        ),
    )
    .await
    .context("RabbitMQ did not answer within 10 s")?
    .context("connecting to RabbitMQ (AMQP_URL)")?;
    let channel = conn.create_channel().await?;
    Ok((conn, channel))
}

/// Every message of `dlq` (at most `most`), unacked on `channel`.
async fn take(channel: &Channel, dlq: &str, most: usize) -> anyhow::Result<Vec<BasicGetMessage>> {
    let mut taken = Vec::new();
    while taken.len() < most {
        match channel
            .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
            .await
            .with_context(|| format!("reading the dead-letter queue {dlq}"))?
        {
            Some(message) => taken.push(message),
            None => break,
        }
    }
    Ok(taken)
}

/// How many messages `dlq` holds (a passive declare).
pub async fn depth(channel: &Channel, dlq: &str) -> lapin::Result<u32> {
    let q = channel
        .queue_declare(
            dlq.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// The dead letters of `queue`'s dead-letter queue, oldest first; every one stays there.
pub async fn list(amqp_url: &str, queue: &str) -> anyhow::Result<Vec<DeadLetter>> {
    list_at_most(amqp_url, queue, MOST).await
}

/// [`list`], of the first `most` only.
pub async fn list_at_most(
    amqp_url: &str,
    queue: &str,
    most: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    let dlq = events::dead_letter_queue(queue);
    let (conn, channel) = open(amqp_url).await?;
    let taken = take(&channel, &dlq, most).await?;
    let letters = taken.iter().map(describe).collect();
    // Closing the channel without an ack puts every message back, in its order.
    let _ = channel.close(200, "listed".into()).await;
    let _ = conn.close(200, "listed".into()).await;
    Ok(letters)
}

/// Which dead letters `redrive` sends back.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    EventIds(Vec<String>),
}

/// What `redrive` did.
#[derive(Debug, Default)]
pub struct Redriven {
    pub sent: Vec<DeadLetter>,
    /// Dead letters left where they were.
    pub kept: usize,
    /// Event ids asked for that the queue did not hold.
    pub missing: Vec<String>,
    /// Why it stopped before the end: the dead letters sent until then are in `sent`, the
    /// rest stay in the dead-letter queue.
    pub failed: Option<String>,
}

/// Sends the chosen dead letters of `queue` back to it (see the module header).
pub async fn redrive(
    amqp_url: &str,
    queue: &str,
    selection: &Selection,
) -> anyhow::Result<Redriven> {
    let dlq = events::dead_letter_queue(queue);
    let (conn, channel) = open(amqp_url).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let taken = take(&channel, &dlq, MOST).await?;
    let mut report = Redriven::default();
    let mut found = std::collections::HashSet::new();
    for message in &taken {
        let letter = describe(message);
        let chosen = match selection {
            Selection::All => true,
            Selection::EventIds(ids) => ids.contains(&letter.event_id),
        };
        if !chosen {
            report.kept += 1;
            continue;
        }
        found.insert(letter.event_id.clone());
        let properties = redriven_properties(&message.delivery.properties, &letter.reason);
        // What was sent before a failure is reported with it.
        let sent = async {
            publish_confirmed(
                &channel,
                ("", queue),
                &message.delivery.data,
                properties,
                CONFIRM_WITHIN,
                &format!("the copy of {}", letter.event_id),
            )
            .await?;
            message
                .delivery
                .ack(BasicAckOptions { multiple: false })
                .await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(err) = sent {
            report.failed = Some(format!("{err:#}"));
            break;
        }
        report.sent.push(letter);
    }
    if let Selection::EventIds(ids) = selection {
        report.missing = ids
            .iter()
            .filter(|id| !found.contains(*id))
            .cloned()
            .collect();
    }
    let _ = channel.close(200, "redriven".into()).await;
    let _ = conn.close(200, "redriven".into()).await;
    Ok(report)
}

/// The properties of a redriven copy: the original's, without the refusal headers, with
/// `x-redriven-at` and the reason it was refused with before.
fn redriven_properties(original: &BasicProperties, reason: &str) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        let k = k.as_str();
        if k != events::HEADER_REFUSED_REASON
            && k != events::HEADER_REFUSED_AT
            && !k.starts_with("x-death")
            && !k.starts_with("x-first-death")
            && !k.starts_with("x-last-death")
            && k != "x-delivery-count"
        {
            kept.insert(k.into(), v.clone());
        }
    }
    headers = kept;
    headers.insert(
        "x-redriven-at".into(),
        AMQPValue::LongString(chrono::Utc::now().to_rfc3339().into()),
    );
    headers.insert(
        "x-previous-refusal".into(),
        AMQPValue::LongString(reason.into()),
    );
    original.clone().with_headers(headers)
}

/// Drops every message of `queue`'s dead-letter queue; how many it held.
pub async fn purge(amqp_url: &str, queue: &str) -> anyhow::Result<u32> {
    let dlq = events::dead_letter_queue(queue);
    let (conn, channel) = open(amqp_url).await?;
    let purged = channel
        .queue_purge(dlq.as_str().into(), QueuePurgeOptions::default())
        .await
        .with_context(|| format!("purging {dlq}"))?;
    let _ = conn.close(200, "purged".into()).await;
    Ok(purged)
}
