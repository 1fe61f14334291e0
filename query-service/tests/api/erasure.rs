//! Who and why in the read model's documents, and erasure end to end: after
//! `POST /todos/{id}/erase` the read model holds no trace of the todo's text, and `verify` and a
//! replay from the log agree with it.

use crate::helpers::*;
use bson::{doc, Document};
use serde_json::{json, Value};
use std::time::Duration;

/// The raw document of todo `id` in `mongo_db`'s `todos`.
async fn document(mongo_db: &str, id: i64) -> Document {
    let client = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("MongoDB");
    client
        .database(mongo_db)
        .collection::<Document>("todos")
        .find_one(doc! { "_id": id })
        .await
        .expect("find")
        .expect("the todo's document")
}

/// Every document of every collection of `mongo_db`, as text.
async fn everything(mongo_db: &str) -> String {
    let client = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("MongoDB");
    let db = client.database(mongo_db);
    let mut text = String::new();
    for name in db.list_collection_names().await.expect("collections") {
        let mut cursor = db
            .collection::<Document>(&name)
            .find(doc! {})
            .await
            .expect("find");
        while cursor.advance().await.expect("cursor") {
            let d: Document = cursor.deserialize_current().expect("document");
            text.push_str(&d.to_string());
        }
    }
    text
}

#[tokio::test]
async fn an_erased_todo_leaves_no_text_in_the_read_model_and_verify_and_replay_agree() {
    let names = Names::new();
    let database = create_database().await;
    let command = spawn_app_with(Options {
        database_url: Some(database.url.clone()),
        exchange: Some(names.exchange.clone()),
        extra: vec![
            ("WRITE_TOKENS", "carol:w1".into()),
            ("FEED_TOKENS", "replayer:f1".into()),
            ("OPERATOR_TOKENS", "dpo:o1".into()),
        ],
    })
    .await;
    let query = spawn_query(&names).await;
    wait_for_consumer(&query).await;
    let client = reqwest::Client::new();
    let secret = "Pick up Ms. Q's prescription";
    let created: Value = client
        .post(command.url("/todos"))
        .bearer_auth("w1")
        .json(&json!({"title": secret, "description": "pharmacy on Elm St"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("todo");
    let id = created["id"].as_i64().expect("id");
    let patched = client
        .patch(command.url(&format!("/todos/{id}")))
        .bearer_auth("w1")
        .json(&json!({"title": format!("{secret} (urgent)")}))
        .send()
        .await
        .expect("patch");
    assert_eq!(patched.status(), 200);
    let read: Value = get_json(&client, &query.url(&format!("/todos/{id}?min_version=2"))).await;
    assert_eq!(read["title"], format!("{secret} (urgent)"));

    // Who and why, as the document keeps them.
    let log: Vec<Value> = client
        .get(command.url("/events"))
        .bearer_auth("f1")
        .send()
        .await
        .expect("feed")
        .json()
        .await
        .expect("events");
    let stored = document(&names.mongo_db, id).await;
    assert_eq!(stored.get_str("last_actor").ok(), Some("carol"));
    assert_eq!(
        stored.get_str("last_causation_id").ok(),
        log[1]["causation_id"].as_str()
    );
    assert_eq!(
        stored.get_str("last_correlation_id").ok(),
        log[1]["correlation_id"].as_str()
    );

    let erased = client
        .post(command.url(&format!("/todos/{id}/erase")))
        .bearer_auth("o1")
        .send()
        .await
        .expect("erase");
    assert_eq!(erased.status(), 200);
    let read: Value = get_json(&client, &query.url(&format!("/todos/{id}?min_version=3"))).await;
    assert_eq!(read["title"], "(erased)");
    assert_eq!(read["description"], Value::Null);
    assert!(read["erased_at"].is_string(), "{read}");
    let stored = document(&names.mongo_db, id).await;
    assert_eq!(stored.get_str("last_actor").ok(), Some("dpo"));
    let all = everything(&names.mongo_db).await;
    for text in ["Ms. Q", "Elm St"] {
        assert!(!all.contains(text), "the read model still holds {text:?}");
    }

    // verify: the log and the read model agree.
    let (ok, report) =
        crate::verify::run_verify_with(&names, &command.address, &[], &[("FEED_TOKEN", "f1")])
            .await;
    assert!(ok && report.contains("0 difference(s)"), "{report}");

    // A replay of the log into an empty read model makes the same document, without the text.
    let replayed_db = format!("{}_replayed", names.mongo_db);
    let store = query_service::store::Store::connect(&mongodb_uri(), &replayed_db)
        .await
        .expect("MongoDB");
    tokio::time::timeout(
        Duration::from_secs(30),
        query_service::replay::replay(&store, &command.address, Some("f1")),
    )
    .await
    .expect("replay ends within 30 s")
    .expect("replay");
    let replayed = document(&replayed_db, id).await;
    let live = document(&names.mongo_db, id).await;
    for field in [
        "title",
        "description",
        "erased_at",
        "version",
        "completed",
        "created_at",
    ] {
        assert_eq!(replayed.get(field), live.get(field), "{field}");
    }
    assert!(!everything(&replayed_db).await.contains("Ms. Q"));
    let _ = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("MongoDB")
        .database(&replayed_db)
        .drop()
        .await;
    names.cleanup().await;
}
