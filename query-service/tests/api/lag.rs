//! The lag by position: the head of the log against what the read model applied, and a
//! projection that applies nothing while events wait named `stuck`.

use crate::consumer::validator;
use crate::helpers::*;
use bson::doc;
use serde_json::Value;
use std::time::Duration;

async fn ready(client: &reqwest::Client, query: &Running) -> (u16, Value) {
    let response = client.get(query.url("/ready")).send().await.expect("ready");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn a_projection_applying_nothing_while_events_wait_is_stuck_and_idle_again_once_it_applies() {
    let names = Names::new();
    let (command, _database) = spawn_command(&names).await;
    let query = spawn_query_with(
        &names,
        &[
            ("FEED_URL", command.address.as_str()),
            ("LAG_EVERY_MS", "200"),
            ("STUCK_AFTER_MS", "1500"),
        ],
    )
    .await;
    wait_for_consumer(&query).await;
    let client = reqwest::Client::new();
    create_todos(&client, &command, &["one", "two", "three"]).await;
    eventually(
        Duration::from_secs(10),
        "idle with the three applied",
        || async {
            let stats: Value = get_json(&client, &query.url("/stats")).await;
            let (_, body) = ready(&client, &query).await;
            stats["lag"]["head"] == 3
                && stats["lag"]["applied"] == 3
                && body["checks"]["projection"] == "idle"
                && body["checks"]["lag_events"] == 0
        },
    )
    .await;
    assert_eq!(metric(&client, &query, "projection_stuck").await, 0.0);
    let stats: Value = get_json(&client, &query.url("/stats")).await;
    assert_eq!(stats["lag"]["events"], 0, "{stats}");
    assert_eq!(stats["lag"]["head"], stats["lag"]["applied"], "{stats}");

    // The store refuses every write: events wait, nothing is applied.
    validator(&names, doc! { "_id": { "$lt": 0 } }).await;
    create_todos(
        &client,
        &command,
        &["four", "five", "six", "seven", "eight"],
    )
    .await;
    eventually(Duration::from_secs(10), "/ready says stuck", || async {
        let (status, body) = ready(&client, &query).await;
        // Named, not failed: reads of what the read model holds go on.
        status == 200 && body["checks"]["projection"] == "stuck"
    })
    .await;
    assert_eq!(metric(&client, &query, "projection_stuck").await, 1.0);
    let stuck: Value = get_json(&client, &query.url("/stats")).await;
    let behind = stuck["lag"]["events"].as_i64().expect("lag in events");
    assert_eq!(behind, 5, "{stuck}");
    assert!(
        stuck["lag"]["oldest_unapplied_seconds"]
            .as_f64()
            .expect("age")
            >= 1.0,
        "{stuck}"
    );
    assert_eq!(metric(&client, &query, "projection_lag_events").await, 5.0);

    // The lag grows with the writes.
    create_todos(&client, &command, &["nine", "ten"]).await;
    eventually(Duration::from_secs(10), "the lag grows", || async {
        get_json::<Value>(&client, &query.url("/stats")).await["lag"]["events"] == 7
    })
    .await;

    // The store takes writes again: the held events land, the lag goes back to 0.
    validator(&names, doc! {}).await;
    eventually(
        Duration::from_secs(15),
        "idle again with nothing behind",
        || async {
            let (status, body) = ready(&client, &query).await;
            status == 200
                && body["checks"]["projection"] == "idle"
                && body["checks"]["lag_events"] == 0
        },
    )
    .await;
    assert_eq!(metric(&client, &query, "projection_stuck").await, 0.0);
    let stats: Value = get_json(&client, &query.url("/stats")).await;
    assert_eq!(stats["lag"]["oldest_unapplied_seconds"], 0.0, "{stats}");
    assert_eq!(stats["total"], 10, "{stats}");

    // Kept counts a redelivery left off (as after a crash between a batch's writes and its
    // counters): counted again once the projection is quiet.
    let mongo = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("MongoDB");
    mongo
        .database(&names.mongo_db)
        .collection::<bson::Document>("projection_stats")
        .update_one(
            doc! { "_id": "todos" },
            doc! { "$inc": { "todos_live": 2_i64 }, "$set": { "counts_suspect": true } },
        )
        .await
        .expect("counters");
    eventually(
        Duration::from_secs(10),
        "the kept counts counted again",
        || async { get_json::<Value>(&client, &query.url("/stats")).await["total"] == 10 },
    )
    .await;

    query.stop().await;
    command.stop().await;
    names.cleanup().await;
}
