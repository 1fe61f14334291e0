use crate::helpers::*;
use chrono::{Duration as Span, TimeZone, Utc};
use events::{Envelope, EventType, Field, TodoState, SCHEMA_VERSION};
use query_service::store::{Store, Stored};
use rand::seq::SliceRandom;
use serde_json::Value;
use std::time::Duration;

fn event(todo_id: i64, version: i64, kind: EventType, title: &str, completed: bool) -> Envelope {
    let base = Utc
        .with_ymd_and_hms(2026, 11, 22, 10, 0, 0)
        .single()
        .expect("time");
    let at = base + Span::seconds(todo_id * 100 + version);
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: kind,
        schema_version: SCHEMA_VERSION,
        todo_id,
        version,
        position: todo_id * 100 + version,
        occurred_at: at,
        correlation_id: format!("test-{todo_id}-{version}"),
        data: (kind != EventType::TodoDeleted).then(|| TodoState {
            title: title.to_string(),
            description: None,
            completed,
            created_at: base + Span::seconds(todo_id * 100 + 1),
            updated_at: at,
        }),
        changed: if kind == EventType::TodoUpdated {
            vec![Field::Title, Field::Completed]
        } else {
            Vec::new()
        },
    }
}

async fn stats(client: &reqwest::Client, query: &Running) -> Value {
    get_json(client, &query.url("/stats")).await
}

#[tokio::test]
async fn duplicated_and_shuffled_events_end_at_each_todos_last_version() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;

    // 20 todos: created, updated 1 to 4 times, every fourth one deleted at the end.
    let mut all = Vec::new();
    let mut last = Vec::new();
    for id in 1..=20_i64 {
        let updates = 1 + id % 4;
        all.push(event(
            id,
            1,
            EventType::TodoCreated,
            &format!("todo {id} v1"),
            false,
        ));
        for v in 2..=(1 + updates) {
            all.push(event(
                id,
                v,
                EventType::TodoUpdated,
                &format!("todo {id} v{v}"),
                v % 2 == 0,
            ));
        }
        let mut final_version = 1 + updates;
        let deleted = id % 4 == 0;
        if deleted {
            final_version += 1;
            all.push(event(id, final_version, EventType::TodoDeleted, "", false));
        }
        last.push((id, final_version, deleted));
    }
    let mut deliveries: Vec<&Envelope> = all.iter().chain(all.iter()).collect();
    deliveries.shuffle(&mut rand::rng());
    for e in &deliveries {
        publisher.publish(e).await;
    }

    let client = reqwest::Client::new();
    let total = deliveries.len() as i64;
    eventually(
        Duration::from_secs(30),
        "every delivery settled",
        || async {
            let s = stats(&client, &query).await;
            s["projection"]["applied"].as_i64().unwrap_or(0)
                + s["projection"]["skipped_duplicates"].as_i64().unwrap_or(0)
                + s["projection"]["superseded"].as_i64().unwrap_or(0)
                == total
        },
    )
    .await;

    let store = Store::connect(&mongodb_uri(), &names.mongo_db)
        .await
        .expect("store");
    for (id, version, deleted) in last {
        let stored = store.get(id).await.expect("read").expect("document exists");
        assert_eq!(
            stored.version(),
            version,
            "todo {id} ends at its last version"
        );
        let response = client
            .get(query.url(&format!("/todos/{id}")))
            .send()
            .await
            .expect("get");
        if deleted {
            assert!(
                matches!(stored, Stored::Deleted { .. }),
                "todo {id} stays deleted"
            );
            assert_eq!(response.status(), 404, "todo {id}");
        } else {
            assert_eq!(response.status(), 200, "todo {id}");
            let todo: Value = response.json().await.expect("json");
            assert_eq!(todo["version"], version);
            assert_eq!(todo["title"], format!("todo {id} v{version}"));
        }
    }
    // /stats counts are at most a second old.
    eventually(Duration::from_secs(5), "15 live todos counted", || async {
        stats(&client, &query).await["total"] == 15
    })
    .await;
    let s = stats(&client, &query).await;
    assert_eq!(s["projection"]["dead_lettered"], 0, "{s}");
    assert!(
        s["projection"]["skipped_duplicates"].as_i64().expect("n")
            + s["projection"]["superseded"].as_i64().expect("n")
            >= all.len() as i64,
        "every second copy is skipped or folded into a newer event: {s}"
    );
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn a_malformed_message_is_dead_lettered_and_the_next_good_one_applied() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;

    let poison: &[(&str, &[u8])] = &[
        ("todo.created", b"{ not json"),
        ("todo.created", br#"{"event_type":"TodoCreated"}"#),
        ("todo.updated", br#"[1,2,3]"#),
    ];
    for (key, body) in poison {
        publisher.publish_raw(key, body).await;
    }
    let good = event(7, 1, EventType::TodoCreated, "after the poison", false);
    publisher.publish(&good).await;

    let client = reqwest::Client::new();
    eventually(Duration::from_secs(20), "good event applied", || async {
        client
            .get(query.url("/todos/7"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "poison in the dead-letter queue",
        || async { queue_depth(&names.dead_letter_queue()).await == 3 },
    )
    .await;
    let s = stats(&client, &query).await;
    assert_eq!(s["projection"]["dead_lettered"], 3, "{s}");
    assert_eq!(
        queue_depth(&names.queue).await,
        0,
        "nothing left blocking the queue"
    );
    query.stop().await;
    names.cleanup().await;
}
