use crate::helpers::*;
use lapin::types::AMQPValue;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

fn header_i64(delivery: &lapin::message::Delivery, key: &str) -> Option<i64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

#[tokio::test]
async fn each_accepted_write_is_published_once_as_a_persistent_message() {
    let exchange = format!("test.{}", uuid::Uuid::new_v4().simple());
    let queue = bind_queue(&exchange, false).await;
    let app = spawn_app_with(Options {
        exchange: Some(exchange.clone()),
        ..Options::default()
    })
    .await;

    let id = app.create("publish me").await["id"].as_i64().expect("id");
    let path = format!("/todos/{id}");
    assert_eq!(
        app.send("PATCH", &path, Some(r#"{"completed":true}"#))
            .await
            .status(),
        200
    );
    assert_eq!(app.send("DELETE", &path, None).await.status(), 204);
    // Rejected writes publish nothing.
    assert_eq!(
        app.send("PATCH", &path, Some(r#"{"completed":true}"#))
            .await
            .status(),
        404
    );

    let feed = app.events().await;
    assert_eq!(feed.len(), 3);
    let messages = queue.take(3, Duration::from_secs(15)).await;
    for (message, event) in messages.iter().zip(&feed) {
        let props = &message.properties;
        assert_eq!(
            props.message_id().as_ref().map(|s| s.as_str().to_string()),
            event["event_id"].as_str().map(str::to_string),
            "message_id is the event id"
        );
        assert_eq!(*props.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            props.kind().as_ref().map(|s| s.as_str()),
            event["event_type"].as_str()
        );
        let body: Value = serde_json::from_slice(&message.data).expect("JSON body");
        assert_eq!(&body, event, "the message body is the feed's envelope");
        let envelope = events::Envelope::from_json(&message.data).expect("valid envelope");
        assert_eq!(message.routing_key.as_str(), envelope.routing_key());
        assert_eq!(header_i64(message, "todo_id"), Some(id));
        assert_eq!(header_i64(message, "version"), Some(envelope.version));
    }
    let versions: Vec<i64> = messages
        .iter()
        .map(|m| header_i64(m, "version").expect("version header"))
        .collect();
    assert_eq!(versions, [1, 2, 3]);

    // Everything confirmed is marked published.
    eventually(Duration::from_secs(5), "outbox drained", || async {
        let ready: Value = app
            .client
            .get(app.url("/ready"))
            .send()
            .await
            .expect("ready")
            .json()
            .await
            .expect("json");
        ready["checks"]["outbox_backlog"] == 0 && ready["checks"]["rabbitmq"] == "up"
    })
    .await;
    app.stop().await;
    queue.delete().await;
}

#[tokio::test]
async fn two_relays_on_one_database_publish_each_event_once() {
    let exchange = format!("test.{}", uuid::Uuid::new_v4().simple());
    let queue = bind_queue(&exchange, false).await;
    let database = create_database().await;
    let database_url = database.url.clone();
    let first = spawn_app_with(Options {
        exchange: Some(exchange.clone()),
        database_url: Some(database_url.clone()),
        ..Options::default()
    })
    .await;
    let second = spawn_app_with(Options {
        exchange: Some(exchange.clone()),
        database_url: Some(database_url),
        ..Options::default()
    })
    .await;
    let mut tasks = Vec::new();
    for (i, app) in [&first, &second].into_iter().enumerate() {
        for j in 0..20 {
            let client = app.client.clone();
            let url = app.url("/todos");
            tasks.push(tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"title":"todo {i}-{j}"}}"#))
                    .send()
                    .await
                    .expect("sent");
                assert_eq!(response.status(), 201);
            }));
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    let messages = queue.take(40, Duration::from_secs(20)).await;
    let ids: HashSet<String> = messages
        .iter()
        .map(|m| m.properties.message_id().as_ref().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), 40, "40 distinct events, none twice");
    first.stop().await;
    second.stop().await;
    queue.delete().await;
}

/// With no queue bound, RabbitMQ returns the mandatory message: the relay must leave the event
/// in the outbox and say why, not mark it published, and publish it once a queue is bound.
#[tokio::test]
async fn an_event_with_no_queue_bound_stays_in_the_outbox_until_one_is() {
    let app = spawn_app().await;
    let id = app.create("nobody listens yet").await["id"]
        .as_i64()
        .expect("id");
    eventually(
        Duration::from_secs(10),
        "the relay published and the broker returned the event",
        || async {
            let checks = &ready(&app).await["checks"];
            checks["relay_failed_rounds"]
                .as_i64()
                .is_some_and(|n| n >= 1)
                && checks["relay_last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("unroutable") && e.contains("NO_ROUTE"))
        },
    )
    .await;
    let body = ready(&app).await;
    assert_eq!(body["checks"]["outbox_backlog"], 1, "{body}");
    assert!(metric(&app, "outbox_publish_failures_total").await >= 1.0);
    assert_eq!(metric(&app, "outbox_published_total").await, 0.0);

    let queue = bind_queue(&app.exchange, false).await;
    let messages = queue.take(1, Duration::from_secs(15)).await;
    let envelope = events::Envelope::from_json(&messages[0].data).expect("envelope");
    assert_eq!((envelope.todo_id, envelope.version), (id, 1));
    eventually(
        Duration::from_secs(5),
        "outbox drained, error cleared",
        || async {
            let checks = &ready(&app).await["checks"];
            checks["outbox_backlog"] == 0
                && checks["relay_failed_rounds"] == 0
                && checks["relay_last_error"].is_null()
        },
    )
    .await;
    assert_eq!(metric(&app, "outbox_published_total").await, 1.0);
    app.stop().await;
    queue.delete().await;
}

/// A queue that is full and set to `x-overflow: reject-publish` makes RabbitMQ nack what the
/// relay publishes: the nacked event stays in the outbox, `/ready` says it was nacked, and it
/// is published as soon as the queue has room again.
#[tokio::test]
async fn an_event_the_broker_nacks_stays_in_the_outbox_until_the_queue_has_room() {
    use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let exchange = format!("test.{}", uuid::Uuid::new_v4().simple());
    let conn = amqp_connect().await;
    let channel = conn.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange declared");
    // Room for one message; past that the broker refuses publishes.
    let name = format!("{exchange}.full");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .expect("queue declared");
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.as_str().into(),
            events::BINDING_KEY.into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("bound");
    let app = spawn_app_with(Options {
        exchange: Some(exchange.clone()),
        ..Options::default()
    })
    .await;

    let first = app.create("fills the queue").await["id"]
        .as_i64()
        .expect("id");
    let second = app.create("finds it full").await["id"]
        .as_i64()
        .expect("id");
    eventually(
        Duration::from_secs(10),
        "the broker nacked the second event",
        || async {
            let checks = &ready(&app).await["checks"];
            checks["relay_last_error"]
                .as_str()
                .is_some_and(|e| e.contains("nacked"))
        },
    )
    .await;
    let body = ready(&app).await;
    assert_eq!(body["checks"]["outbox_backlog"], 1, "{body}");
    assert!(
        body["checks"]["relay_failed_rounds"]
            .as_i64()
            .is_some_and(|n| n >= 1),
        "{body}"
    );
    assert!(metric(&app, "outbox_publish_failures_total").await >= 1.0);

    // Room again: the first message is taken off the queue; the second one follows.
    let get = || async {
        let message = channel
            .basic_get(name.as_str().into(), BasicGetOptions::default())
            .await
            .expect("basic.get")?;
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        Some(events::Envelope::from_json(&message.delivery.data).expect("envelope"))
    };
    let taken = get().await.expect("the first event is in the queue");
    assert_eq!(taken.todo_id, first);
    eventually(
        Duration::from_secs(10),
        "the nacked event published",
        || async {
            let checks = &ready(&app).await["checks"];
            checks["outbox_backlog"] == 0 && checks["relay_last_error"].is_null()
        },
    )
    .await;
    let taken = get().await.expect("the second event is in the queue");
    assert_eq!((taken.todo_id, taken.version), (second, 1));
    app.stop().await;
    let _ = channel
        .queue_delete(name.as_str().into(), Default::default())
        .await;
}

/// At-least-once: the relay's cursor commits with `synchronous_commit = off`, so a crash
/// between RabbitMQ's confirm and that commit leaves the cursor behind events the broker
/// already has. Simulated honestly: the service published and marked three events and
/// stopped; `relay_cursor.position` is moved back as a lost commit would leave it; the service
/// starts again. The events past the cursor are published again, with the same message ids
/// and bodies, so query-service's version guard recognises them as duplicates (see
/// query-service/tests/api/projection.rs, events published twice each in random order).
#[tokio::test]
async fn events_confirmed_but_whose_cursor_move_was_lost_are_published_again_with_the_same_ids() {
    let exchange = format!("test.{}", uuid::Uuid::new_v4().simple());
    let queue = bind_queue(&exchange, false).await;
    let database = create_database().await;
    let database_url = database.url.clone();
    let options = || Options {
        exchange: Some(exchange.clone()),
        database_url: Some(database_url.clone()),
        ..Options::default()
    };
    let app = spawn_app_with(options()).await;
    let id = app.create("once").await["id"].as_i64().expect("id");
    app.create("twice").await;
    assert_eq!(
        app.send(
            "PATCH",
            &format!("/todos/{id}"),
            Some(r#"{"completed":true}"#)
        )
        .await
        .status(),
        200
    );
    let first = queue.take(3, Duration::from_secs(15)).await;
    eventually(Duration::from_secs(5), "all three marked", || async {
        ready(&app).await["checks"]["outbox_backlog"] == 0
    })
    .await;
    app.stop().await;

    // The last round's cursor move, lost: the cursor is back after the first event.
    let mut conn = <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(
        &database_url,
    )
    .await
    .expect("database");
    let moved = diesel_async::RunQueryDsl::execute(
        diesel::sql_query("UPDATE relay_cursor SET position = 1"),
        &mut conn,
    )
    .await
    .expect("cursor moved back");
    assert_eq!(moved, 1);

    let app = spawn_app_with(options()).await;
    let again = queue.take(2, Duration::from_secs(15)).await;
    let ids = |messages: &[lapin::message::Delivery]| -> Vec<String> {
        messages
            .iter()
            .map(|m| m.properties.message_id().as_ref().expect("id").to_string())
            .collect()
    };
    assert_eq!(ids(&again), ids(&first[1..]), "the same events again");
    for (a, b) in again.iter().zip(&first[1..]) {
        assert_eq!(a.data, b.data, "the same body");
    }
    assert_eq!(app.events().await.len(), 3, "no new event in the log");
    app.stop().await;
    queue.delete().await;
}
