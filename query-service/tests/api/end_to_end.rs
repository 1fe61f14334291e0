use crate::convergence::differences;
use crate::helpers::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn writes_on_the_command_side_become_reads_on_the_query_side() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let (command, database_url) = spawn_command(&names).await;
    let client = reqwest::Client::new();

    // Create, then read your write with the version the write returned.
    let created: Value = write(
        &client,
        "POST",
        command.url("/todos"),
        Some(json!({"title": "Learn CQRS", "description": "outbox first"})),
    )
    .await
    .json()
    .await
    .expect("json");
    let id = created["id"].as_i64().expect("id");
    let response = client
        .get(query.url(&format!("/todos/{id}?min_version=1")))
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let read: Value = response.json().await.expect("json");
    assert_eq!(
        read, created,
        "the read model answers what the write side returned"
    );

    // Update and complete: each read with min_version sees at least that version.
    for (body, expect_version) in [
        (json!({"title": "Learn CQRS well"}), 2),
        (json!({"completed": true}), 3),
    ] {
        let written: Value = write(
            &client,
            "PATCH",
            command.url(&format!("/todos/{id}")),
            Some(body),
        )
        .await
        .json()
        .await
        .expect("json");
        assert_eq!(written["version"], expect_version);
        let read: Value = get_json(
            &client,
            &query.url(&format!("/todos/{id}?min_version={expect_version}")),
        )
        .await;
        assert!(read["version"].as_i64().expect("version") >= expect_version);
        assert_eq!(read, written);
    }

    // The list and the stats show it.
    let list: Vec<Value> = get_json(&client, &query.url("/todos?completed=true")).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id);
    // /stats counts are at most a second old.
    eventually(
        Duration::from_secs(5),
        "one completed todo counted",
        || async {
            let stats: Value = get_json(&client, &query.url("/stats")).await;
            (
                stats["total"].as_i64(),
                stats["completed"].as_i64(),
                stats["pending"].as_i64(),
            ) == (Some(1), Some(1), Some(0))
        },
    )
    .await;
    let stats: Value = get_json(&client, &query.url("/stats")).await;
    assert_eq!(stats["projection"]["applied"], 3);

    // Delete: gone from reads, and a read asking for the delete's version says 404, not stale.
    assert_eq!(
        write(
            &client,
            "DELETE",
            command.url(&format!("/todos/{id}")),
            None
        )
        .await
        .status(),
        204
    );
    let response = client
        .get(query.url(&format!("/todos/{id}?min_version=4")))
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let list: Vec<Value> = get_json(&client, &query.url("/todos")).await;
    assert!(list.is_empty(), "tombstones are never listed: {list:?}");

    // A version that will never come: a bounded wait, then 503 saying the read model is behind.
    let response = client
        .get(query.url(&format!("/todos/{id}?min_version=99")))
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), 404, "a deleted todo stays deleted");
    let other: Value = write(
        &client,
        "POST",
        command.url("/todos"),
        Some(json!({"title": "other"})),
    )
    .await
    .json()
    .await
    .expect("json");
    let response = client
        .get(query.url(&format!("/todos/{}?min_version=7", other["id"])))
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.expect("json");
    assert_eq!(problem["type"], "/problems/read-model-behind");

    eventually(Duration::from_secs(10), "read model converged", || async {
        differences(&database_url, &mongodb_uri(), &names.mongo_db)
            .await
            .is_empty()
    })
    .await;
    command.stop().await;
    query.stop().await;
    names.cleanup().await;
}

/// A message published to the exchange beside command-service's, for a todo PostgreSQL never
/// had: `schema_version` 0 (no version of the contract), or a create at version 2.
fn foreign_message(todo_id: i64, schema_version: i64, version: i64) -> Vec<u8> {
    let at = chrono::Utc::now();
    let event = events::Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: events::EventType::TodoCreated,
        schema_version: events::SCHEMA_VERSION,
        todo_id,
        version,
        position: todo_id,
        occurred_at: at,
        correlation_id: "foreign".into(),
        causation_id: None,
        actor: None,
        data: Some(events::TodoState {
            title: "never written on the command side".into(),
            description: None,
            completed: false,
            created_at: at,
            updated_at: at,
            due_at: None,
            erased_at: None,
        }),
        changed: Vec::new(),
    };
    let mut json = serde_json::to_value(&event).expect("json");
    json["schema_version"] = schema_version.into();
    serde_json::to_vec(&json).expect("json")
}

#[tokio::test]
async fn messages_the_write_side_never_sent_leave_no_document_beside_its_writes() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let (command, database_url) = spawn_command(&names).await;
    let publisher = publisher(&names.exchange).await;
    let client = reqwest::Client::new();

    let create = |title: &str| {
        write(
            &client,
            "POST",
            command.url("/todos"),
            Some(json!({ "title": title })),
        )
    };
    let first: Value = create("before").await.json().await.expect("json");
    let id = first["id"].as_i64().expect("id");
    publisher
        .publish_raw("todo.created", &foreign_message(id + 1000, 0, 1))
        .await;
    publisher
        .publish_raw("todo.created", &foreign_message(id + 1001, 1, 2))
        .await;
    let url = command.url(&format!("/todos/{id}"));
    let patched = write(&client, "PATCH", url, Some(json!({ "completed": true }))).await;
    assert_eq!(patched.status(), 200);
    assert_eq!(create("after").await.status(), 201);

    // Three events from command-service and the two foreign messages, each settled once.
    eventually(Duration::from_secs(20), "five messages settled", || async {
        let p = get_json::<Value>(&client, &query.url("/stats")).await["projection"].clone();
        [
            "applied",
            "skipped_duplicates",
            "superseded",
            "dead_lettered",
        ]
        .iter()
        .map(|k| p[k].as_i64().unwrap_or(0))
        .sum::<i64>()
            == 5
    })
    .await;
    let diffs = differences(&database_url, &mongodb_uri(), &names.mongo_db).await;
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert_eq!(queue_depth(&names.dead_letter_queue()).await, 2);
    command.stop().await;
    query.stop().await;
    names.cleanup().await;
}
