//! How the consumer treats what it cannot apply: an event MongoDB refuses is retried, never
//! dead-lettered; a message that can never apply is dead-lettered at its first delivery; a
//! queue that refuses the consumer is not hammered with reconnects.

use crate::helpers::*;
use bson::doc;
use chrono::{TimeZone, Utc};
use events::{Envelope, EventType, TodoState, SCHEMA_VERSION};
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use std::time::{Duration, Instant};

fn created(todo_id: i64, title: &str) -> Envelope {
    let at = Utc
        .with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
        .single()
        .expect("time");
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: EventType::TodoCreated,
        schema_version: SCHEMA_VERSION,
        todo_id,
        version: 1,
        position: todo_id,
        occurred_at: at,
        correlation_id: format!("consumer-{todo_id}"),
        causation_id: None,
        actor: None,
        data: Some(TodoState {
            title: title.to_string(),
            description: None,
            completed: false,
            created_at: at,
            updated_at: at,
            due_at: None,
            erased_at: None,
        }),
        changed: Vec::new(),
    }
}

/// Sets (or with an empty document, removes) the validator of the test's `todos` collection.
pub async fn validator(names: &Names, validator: bson::Document) {
    let client = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("MongoDB client");
    client
        .database(&names.mongo_db)
        .run_command(doc! { "collMod": "todos", "validator": validator })
        .await
        .expect("collMod validator");
}

async fn status_of(client: &reqwest::Client, query: &Running, path: &str) -> u16 {
    client
        .get(query.url(path))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_event_the_store_refuses_is_retried_with_growing_delay_until_it_lands_and_never_dead_lettered(
) {
    let names = Names::new();
    // RETRY_MAX_BACKOFF_MS is 1000 for tests: retries after 0.2, 0.4, 0.8, then every 1 s.
    let query = spawn_query(&names).await;
    validator(&names, doc! { "title": { "$ne": "refuse me" } }).await;
    let publisher = publisher(&names.exchange).await;
    publisher.publish(&created(1, "refuse me")).await;
    publisher
        .publish(&created(2, "after the refused one"))
        .await;

    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(10),
        "the next todo is applied while the refused event waits",
        || async { status_of(&client, &query, "/todos/2").await == 200 },
    )
    .await;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            queue_depth(&names.dead_letter_queue()).await,
            0,
            "a valid event the store refuses is never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status_of(&client, &query, "/todos/1").await, 404);
    let refusals = metric(&client, &query, "projection_refusals_total").await;
    assert!(
        (3.0..=12.0).contains(&refusals),
        "retried again and again, with a growing delay rather than in a loop: {refusals} refusals"
    );
    assert_eq!(
        metric(&client, &query, "projection_held_events").await,
        1.0,
        "the refused event is held"
    );
    assert_eq!(
        metric(&client, &query, "consumer_connection_attempts_total").await,
        1.0,
        "no channel error (an ack of an unknown delivery) made the consumer reconnect"
    );

    // Held unacked, so nothing is lost when the consumer stops: the event is back in the queue.
    query.stop().await;
    eventually(
        Duration::from_secs(5),
        "the held event back in the queue",
        || async { queue_depth(&names.queue).await == 1 },
    )
    .await;

    validator(&names, doc! {}).await;
    let query = spawn_query(&names).await;
    eventually(
        Duration::from_secs(10),
        "the event lands once the store takes it",
        || async { status_of(&client, &query, "/todos/1").await == 200 },
    )
    .await;
    let todo: Value = get_json(&client, &query.url("/todos/1")).await;
    assert_eq!(todo["title"], "refuse me");
    eventually(Duration::from_secs(5), "nothing held", || async {
        metric(&client, &query, "projection_held_events").await == 0.0
    })
    .await;
    let stats: Value = get_json(&client, &query.url("/stats")).await;
    assert_eq!(stats["projection"]["applied"], 2, "{stats}");
    assert_eq!(stats["projection"]["dead_lettered"], 0, "{stats}");
    assert_eq!(queue_depth(&names.dead_letter_queue()).await, 0);
    query.stop().await;
    names.cleanup().await;
}

fn text(value: Option<&AMQPValue>) -> String {
    match value {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn events_of_an_older_and_a_newer_contract_version_are_applied_not_dead_lettered() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;
    // Version 1, as a command-service built before due dates wrote it: no `due_at`.
    let mut v1 = serde_json::to_value(created(1, "written by version 1")).expect("json");
    v1["schema_version"] = 1.into();
    v1["data"].as_object_mut().expect("data").remove("due_at");
    // A newer writer's: fields this build does not know, in `data`, in the envelope and in
    // `changed`.
    let mut newer = serde_json::to_value(created(2, "written by version 3")).expect("json");
    newer["schema_version"] = 3.into();
    newer["data"]["due_at"] = "2026-12-31T17:00:00Z".into();
    newer["data"]["priority"] = "high".into();
    newer["tenant"] = "acme".into();
    newer["changed"] = serde_json::json!(["priority"]);
    for event in [&v1, &newer] {
        publisher
            .publish_raw("todo.created", &serde_json::to_vec(event).expect("json"))
            .await;
    }
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(10), "both applied", || async {
        status_of(&client, &query, "/todos/2").await == 200
            && status_of(&client, &query, "/todos/1").await == 200
    })
    .await;
    let one: serde_json::Value = client
        .get(query.url("/todos/1"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(one["due_at"], serde_json::Value::Null, "{one}");
    let two: serde_json::Value = client
        .get(query.url("/todos/2"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(two["due_at"], "2026-12-31T17:00:00Z", "{two}");
    assert!(
        two.get("priority").is_none(),
        "what this build does not know is left out: {two}"
    );
    assert_eq!(queue_depth(&names.dead_letter_queue()).await, 0);
    query.stop().await;
    names.cleanup().await;
}

// nextest runs each test in its own process, so this test's global log subscriber is its own.
#[tokio::test]
async fn a_message_that_can_never_apply_is_dead_lettered_at_its_first_delivery() {
    // The consumer logs this once per delivery of such a message.
    let seen = LineCounter::install("message is not a valid event");
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;
    let mut future = serde_json::to_value(created(1, "of no version")).expect("json");
    future["schema_version"] = 0.into();
    publisher
        .publish_raw("todo.created", b"{ not an event")
        .await;
    publisher
        .publish_raw("todo.created", &serde_json::to_vec(&future).expect("json"))
        .await;
    publisher.publish(&created(2, "after them")).await;

    let client = reqwest::Client::new();
    eventually(Duration::from_secs(10), "both dead-lettered", || async {
        queue_depth(&names.dead_letter_queue()).await == 2
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the good event applied",
        || async { status_of(&client, &query, "/todos/2").await == 200 },
    )
    .await;

    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    for _ in 0..2 {
        let message = channel
            .basic_get(
                names.dead_letter_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("get")
            .expect("a dead letter");
        let (reason, at) = refusal(&message.delivery);
        assert!(
            reason.contains("not a JSON event") || reason.contains("schema_version 0"),
            "the consumer's reason travels with the message: {reason}"
        );
        assert!(
            chrono::DateTime::parse_from_rfc3339(&at).is_ok(),
            "when it was refused: {at}"
        );
    }
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(seen.count(), 2, "each message was delivered once");
    let stats: Value = get_json(&client, &query.url("/stats")).await;
    assert_eq!(stats["projection"]["dead_lettered"], 2, "{stats}");
    query.stop().await;
    names.cleanup().await;
}

/// A TCP proxy to RabbitMQ that cuts every connection `after` it was opened: long enough
/// for the consumer to connect, declare its queues and subscribe, far too short to serve.
/// Returns the `AMQP_URL` that goes through it.
async fn cutting_proxy(after: Duration) -> String {
    let url = amqp_url();
    let (head, rest) = url.split_once('@').expect("AMQP_URL has credentials");
    let (broker, path) = rest.split_once('/').expect("AMQP_URL has a vhost");
    let broker = broker.to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("proxy listens");
    let port = listener.local_addr().expect("proxy address").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let broker = broker.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&broker).await {
                    let _ = tokio::time::timeout(
                        after,
                        tokio::io::copy_bidirectional(&mut inbound, &mut outbound),
                    )
                    .await;
                }
                // Both ends dropped: the connection is cut.
            });
        }
    });
    format!("{head}@127.0.0.1:{port}/{path}")
}

/// The reason and time the consumer gave a dead letter (`x-refused-reason`, `x-refused-at`).
fn refusal(delivery: &lapin::message::Delivery) -> (String, String) {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let headers = headers.inner();
    (
        text(headers.get(events::HEADER_REFUSED_REASON)),
        text(headers.get(events::HEADER_REFUSED_AT)),
    )
}

// nextest runs each test in its own process, so this test's global log subscriber is its own.
#[tokio::test]
async fn a_consumer_whose_connections_fail_right_after_connecting_reconnects_with_growing_delay() {
    let connected = LineCounter::install("consumer connected to RabbitMQ");
    let names = Names::new();
    let proxied = cutting_proxy(Duration::from_millis(800)).await;
    let query = spawn_query_with(
        &names,
        &[
            ("AMQP_URL", proxied.as_str()),
            ("RETRY_MAX_BACKOFF_MS", "5000"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(5), "a first connect", || async {
        connected.count() > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let connects = connected.count();
    // Each connection ends 0.8 s after it opened (time enough to open both of the consumer's
    // connections and declare its topology). Waits of 0.2, 0.4, 0.8, 1.6, 3.2 s (plus up to a
    // quarter of jitter) make at most 6 connects in 10 s; starting again from 0.2 s after each
    // connect would make about 10.
    assert!((3..=6).contains(&connects), "{connects} connects in 10 s");
    let attempts = metric(&client, &query, "consumer_connection_attempts_total").await;
    assert_eq!(attempts, connects as f64, "every attempt connected");
    query.stop().await;
    names.cleanup().await;
}

/// Events outside the contract, as only a peer with broker access could send them: each is
/// dead-lettered with its reason and changes nothing, and the lists stay as they were (an id at
/// the top of i64 never becomes the highest id lists in id order walk to).
#[tokio::test]
async fn events_outside_the_contract_are_dead_lettered_with_their_reason_and_change_nothing() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;
    for id in 1..=3 {
        publisher.publish(&created(id, "kept")).await;
    }
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(10), "three applied", || async {
        get_json::<Value>(&client, &query.url("/stats")).await["projection"]["applied"] == 3
    })
    .await;
    let lists = [
        "/todos",
        "/todos?sort=-id",
        "/todos?sort=-created_at",
        "/todos?sort=updated_at&completed=false",
        "/stats",
    ];
    let before = {
        let mut seen = Vec::new();
        for path in lists {
            seen.push(get_json::<Value>(&client, &query.url(path)).await);
        }
        seen
    };

    let mut update = created(2, "kept");
    update.event_type = events::EventType::TodoUpdated;
    let forged: Vec<(&str, Envelope, &str)> = vec![
        (
            "an id at the top of i64",
            created(i64::MAX, "forged"),
            "todo_id",
        ),
        ("an id past 2^53 - 1", created(1 << 53, "forged"), "todo_id"),
        (
            "a version far ahead",
            Envelope {
                version: 1 << 62,
                ..update.clone()
            },
            "version",
        ),
        (
            "a position past the log's range",
            Envelope {
                position: i64::MAX,
                version: 2,
                ..update.clone()
            },
            "position",
        ),
        (
            "an oversized title",
            created(7, &"x".repeat(events::limits::TITLE_MAX_CHARS + 1)),
            "title",
        ),
        (
            "a title not stored trimmed",
            created(8, "  padded  "),
            "title",
        ),
        (
            "an oversized description",
            {
                let mut e = created(9, "fine");
                if let Some(data) = e.data.as_mut() {
                    data.description = Some("d".repeat(events::limits::DESCRIPTION_MAX_CHARS + 1));
                }
                e
            },
            "description",
        ),
    ];
    for (_, event, _) in &forged {
        publisher
            .publish_raw(
                event.routing_key(),
                &serde_json::to_vec(event).expect("json"),
            )
            .await;
    }
    eventually(
        Duration::from_secs(10),
        "every forged event dead-lettered",
        || async { queue_depth(&names.dead_letter_queue()).await == forged.len() as u32 },
    )
    .await;

    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    for (what, event, field) in &forged {
        let message = channel
            .basic_get(
                names.dead_letter_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("get")
            .expect("a dead letter");
        let body: Envelope = serde_json::from_slice(&message.delivery.data).expect("the event");
        assert_eq!(&body, event, "{what}: dead-lettered in order, unchanged");
        let (reason, _) = refusal(&message.delivery);
        assert!(
            reason.contains(field),
            "{what}: the reason names {field}: {reason}"
        );
    }
    let _ = conn.close(200, "done".into()).await;

    for (path, earlier) in lists.iter().zip(&before) {
        let mut now = get_json::<Value>(&client, &query.url(path)).await;
        let mut earlier = earlier.clone();
        if *path == "/stats" {
            assert_eq!(
                now["projection"]["dead_lettered"],
                forged.len(),
                "counted: {now}"
            );
            for v in [&mut now, &mut earlier] {
                v["projection"] = Value::Null;
            }
        }
        assert_eq!(&now, &earlier, "{path} unchanged");
    }
    assert_eq!(status_of(&client, &query, "/todos/2").await, 200);
    let todo: Value = get_json(&client, &query.url("/todos/2")).await;
    assert_eq!(todo["version"], 1, "not pinned by a forged version");
    query.stop().await;
    names.cleanup().await;
}
