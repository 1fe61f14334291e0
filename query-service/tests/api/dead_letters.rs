//! `query-service dead-letters list | redrive | purge` and the bound on deliveries, against
//! the real broker.

use crate::helpers::*;
use events::{Envelope, EventType, TodoState, SCHEMA_VERSION};
use lapin::options::{BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use query_service::dead_letters::{self, Selection};
use std::time::Duration;

fn created(todo_id: i64, title: &str) -> Envelope {
    let at = chrono::Utc::now();
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: EventType::TodoCreated,
        schema_version: SCHEMA_VERSION,
        todo_id,
        version: 1,
        position: todo_id,
        occurred_at: at,
        correlation_id: "dead-letters".into(),
        causation_id: None,
        actor: None,
        data: Some(TodoState {
            title: title.into(),
            description: None,
            completed: false,
            created_at: at,
            updated_at: at,
            due_at: Some(at + chrono::Duration::days(3)),
            erased_at: None,
        }),
        changed: Vec::new(),
    }
}

/// Publishes `e` to the dead-letter exchange as a consumer of an earlier version refused it.
async fn dead_letter_as_refused(names: &Names, e: &Envelope, reason: &str) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    let mut headers = FieldTable::default();
    headers.insert(
        events::HEADER_REFUSED_REASON.into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        events::HEADER_REFUSED_AT.into(),
        AMQPValue::LongString(chrono::Utc::now().to_rfc3339().into()),
    );
    headers.insert(
        events::HEADER_TODO_ID.into(),
        AMQPValue::LongLongInt(e.todo_id),
    );
    headers.insert(
        events::HEADER_VERSION.into(),
        AMQPValue::LongLongInt(e.version),
    );
    channel
        .basic_publish(
            events::dead_letter_exchange(&names.exchange)
                .as_str()
                .into(),
            e.routing_key().into(),
            BasicPublishOptions::default(),
            &e.to_json(),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(e.event_id.to_string().into())
                .with_type(e.event_type.as_str().into())
                .with_headers(headers),
        )
        .await
        .expect("published")
        .await
        .expect("confirmed");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_dead_letter_an_earlier_version_refused_is_listed_with_its_reason_redriven_and_applied() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let client = reqwest::Client::new();
    // Two events a query-service of contract version 1 refused, and one no version can read.
    let first = created(1, "due on Monday");
    let second = created(2, "due on Tuesday");
    let refusal = "schema_version 2 is not supported (this build reads 1)";
    dead_letter_as_refused(&names, &first, refusal).await;
    dead_letter_as_refused(&names, &second, refusal).await;
    let mut bad = created(3, "bad");
    bad.data.as_mut().expect("data").title = " ".repeat(3);
    dead_letter_as_refused(&names, &bad, "data.title breaks the write side's rules").await;
    eventually(Duration::from_secs(10), "three dead letters", || async {
        queue_depth(&names.dead_letter_queue()).await == 3
    })
    .await;

    let listed = dead_letters::list(&amqp_url(), &names.queue)
        .await
        .expect("list");
    assert_eq!(listed.len(), 3, "{listed:#?}");
    assert_eq!(listed[0].event_id, first.event_id.to_string());
    assert_eq!((listed[0].todo_id, listed[0].version), (Some(1), Some(1)));
    assert_eq!(listed[0].event_type, "TodoCreated");
    assert_eq!(listed[0].reason, refusal);
    assert!(!listed[0].refused_at.is_empty());
    assert_eq!(
        queue_depth(&names.dead_letter_queue()).await,
        3,
        "listing takes nothing away"
    );
    // `/stats` and the metric count them.
    eventually(Duration::from_secs(15), "/stats counts them", || async {
        get_json::<serde_json::Value>(&client, &query.url("/stats")).await["dead_letter_queue"] == 3
    })
    .await;
    assert_eq!(
        metric(&client, &query, "dead_letter_queue_messages").await,
        3.0
    );

    // One by its event id, then the rest: the good one is applied, the bad one refused again
    // with its reason and back in the queue.
    let one = dead_letters::redrive(
        &amqp_url(),
        &names.queue,
        &Selection::EventIds(vec![first.event_id.to_string(), "not-there".into()]),
    )
    .await
    .expect("redrive one");
    assert_eq!(one.sent.len(), 1);
    assert_eq!(one.kept, 2);
    assert_eq!(one.missing, ["not-there"]);
    let rest = dead_letters::redrive(&amqp_url(), &names.queue, &Selection::All)
        .await
        .expect("redrive the rest");
    assert_eq!(rest.sent.len(), 2);
    for id in [1, 2] {
        eventually(Duration::from_secs(10), "redriven and applied", || async {
            client
                .get(query.url(&format!("/todos/{id}")))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    let todo: serde_json::Value = get_json(&client, &query.url("/todos/2")).await;
    assert!(todo["due_at"].is_string(), "{todo}");
    eventually(Duration::from_secs(10), "the bad one back", || async {
        queue_depth(&names.dead_letter_queue()).await == 1
    })
    .await;
    let again = dead_letters::list(&amqp_url(), &names.queue)
        .await
        .expect("list");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event_id, bad.event_id.to_string());
    assert!(
        again[0].reason.contains("title"),
        "refused again, with this version's reason: {}",
        again[0].reason
    );

    let purged = dead_letters::purge(&amqp_url(), &names.queue)
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    assert_eq!(queue_depth(&names.dead_letter_queue()).await, 0);
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn a_message_delivered_past_the_bound_without_being_settled_is_dead_lettered_saying_so() {
    let names = Names::new();
    // The first query-service declares the queues; then it stops, and the event is delivered
    // and returned three times, as to a consumer that failed on it each time.
    let query = spawn_query(&names).await;
    query.stop().await;
    let publisher = publisher(&names.exchange).await;
    let poison = created(7, "returned three times");
    publisher.publish(&poison).await;
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = conn.create_channel().await.expect("channel");
    for _ in 0..3 {
        let message = channel
            .basic_get(
                names.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .expect("get")
            .expect("the event");
        message
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("returned");
    }
    let _ = conn.close(200, "done".into()).await;
    let query = spawn_query_with(&names, &[("AMQP_MAX_DELIVERIES", "3")]).await;
    eventually(Duration::from_secs(10), "dead-lettered", || async {
        queue_depth(&names.dead_letter_queue()).await == 1
    })
    .await;
    let listed = dead_letters::list(&amqp_url(), &names.queue)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].reason.contains("delivered 3 times"),
        "{}",
        listed[0].reason
    );
    let client = reqwest::Client::new();
    let status = client
        .get(query.url("/todos/7"))
        .send()
        .await
        .expect("GET")
        .status();
    assert_eq!(status, 404, "not applied");
    // Redriven, it is a first delivery again, and applied.
    dead_letters::redrive(&amqp_url(), &names.queue, &Selection::All)
        .await
        .expect("redrive");
    eventually(Duration::from_secs(10), "applied", || async {
        client
            .get(query.url("/todos/7"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn the_operator_routes_list_redrive_and_purge_with_a_token_and_answer_nothing_without() {
    let names = Names::new();
    let off = spawn_query(&names).await;
    let client = reqwest::Client::new();
    let answer = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        (status, body)
    };
    // OPERATOR_TOKENS unset: off.
    let (status, body) = answer(
        client
            .get(off.url("/dead-letters"))
            .bearer_auth("anything")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    off.stop().await;

    let query = spawn_query_with(&names, &[("OPERATOR_TOKENS", "op-one, op-two")]).await;
    let first = created(11, "refused by an earlier version");
    let second = created(12, "refused too");
    let refusal = "schema_version 2 is not supported (this build reads 1)";
    dead_letter_as_refused(&names, &first, refusal).await;
    dead_letter_as_refused(&names, &second, refusal).await;
    eventually(Duration::from_secs(10), "two dead letters", || async {
        queue_depth(&names.dead_letter_queue()).await == 2
    })
    .await;

    let r = client
        .get(query.url("/dead-letters"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let (status, _) = answer(
        client
            .get(query.url("/dead-letters"))
            .bearer_auth("op-three")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, 403);

    let (status, list) = answer(
        client
            .get(query.url("/dead-letters"))
            .bearer_auth("op-two")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["dead_letters"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );
    assert_eq!(
        list["dead_letters"][0]["event_id"],
        first.event_id.to_string()
    );
    assert_eq!(list["dead_letters"][0]["reason"], refusal);
    assert_eq!(list["truncated"], false);

    // A bad request changes nothing.
    for path in [
        "/dead-letters/redrive",
        "/dead-letters/redrive?all=true&event_ids=x",
        "/dead-letters/purge",
        "/dead-letters/purge?confirm=false",
    ] {
        let (status, body) = answer(
            client
                .post(query.url(path))
                .bearer_auth("op-one")
                .send()
                .await
                .expect("POST"),
        )
        .await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    assert_eq!(queue_depth(&names.dead_letter_queue()).await, 2);

    let (status, redriven) = answer(
        client
            .post(query.url(&format!(
                "/dead-letters/redrive?event_ids={}",
                first.event_id
            )))
            .bearer_auth("op-one")
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(status, 200, "{redriven}");
    assert_eq!(redriven["redriven"].as_array().map(Vec::len), Some(1));
    assert_eq!(redriven["kept"], 1);
    eventually(Duration::from_secs(10), "redriven and applied", || async {
        client
            .get(query.url("/todos/11"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let (status, purged) = answer(
        client
            .post(query.url("/dead-letters/purge?confirm=true"))
            .bearer_auth("op-one")
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["purged"], 1);
    assert_eq!(queue_depth(&names.dead_letter_queue()).await, 0);
    query.stop().await;
    names.cleanup().await;
}
