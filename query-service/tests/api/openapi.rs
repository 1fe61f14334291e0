//! The OpenAPI document served at `/openapi.json` describes what the service answers: each
//! answer below, one per documented operation and per error class the service can give
//! without a store outage, has a documented status, content type and a body that fits the
//! documented schema (no field missing, none undocumented, every type right).

use crate::helpers::*;
use events::service::openapi::{check_answer, operations, template_of};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test]
async fn every_answer_fits_the_schema_documented_for_its_route_and_status() {
    let names = Names::new();
    let query = spawn_query_with(
        &names,
        &[
            ("MIN_VERSION_WAIT_MS", "300"),
            ("OPERATOR_TOKENS", "op-token"),
        ],
    )
    .await;
    let (command, _database) = spawn_command(&names).await;
    let client = reqwest::Client::new();
    let doc: Value = get_json(&client, &query.url("/openapi.json")).await;
    let created: Value = client
        .post(command.url("/todos"))
        .json(&json!({"title": "documented", "description": "d"}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let id = created["id"].as_i64().expect("id");
    eventually(Duration::from_secs(20), "the todo readable", || async {
        client
            .get(query.url(&format!("/todos/{id}")))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    // A document this version cannot read, within the highest id recorded: the 500 answer.
    let db = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("client")
        .database(&names.mongo_db);
    db.collection::<mongodb::bson::Document>("todos")
        .insert_one(mongodb::bson::doc! { "_id": 1_000_000_i64, "version": "x" })
        .await
        .expect("insert");
    db.collection::<mongodb::bson::Document>("projection_stats")
        .update_one(
            mongodb::bson::doc! { "_id": "todos" },
            mongodb::bson::doc! { "$max": { "max_todo_id": 1_000_000_i64 } },
        )
        .upsert(true)
        .await
        .expect("highest id");
    let todo = format!("/todos/{id}");
    let requests: Vec<(String, u16)> = vec![
        (
            "/todos?limit=1&completed=false&sort=-created_at".to_string(),
            200,
        ),
        ("/todos?limit=0".into(), 400),
        (todo.clone(), 200),
        (format!("{todo}?min_version=1"), 200),
        (format!("{todo}?min_version=0"), 400),
        (format!("{todo}?min_version=9"), 503),
        ("/todos/999999".into(), 404),
        ("/todos/1000000".into(), 500),
        ("/stats".into(), 200),
        ("/todos/stream".into(), 200),
        ("/".into(), 200),
        ("/health".into(), 200),
        ("/ready".into(), 200),
        ("/metrics".into(), 200),
        ("/openapi.json".into(), 200),
    ];
    let mut errors = Vec::new();
    let mut exercised = BTreeSet::new();
    for (path, expected) in requests {
        let response = client.get(query.url(&path)).send().await.expect("answer");
        let status = response.status().as_u16();
        assert_eq!(status, expected, "GET {path}");
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii").to_string());
        // A stream never ends: its head is what there is to check.
        let bytes = if path == "/todos/stream" {
            Default::default()
        } else {
            response.bytes().await.expect("body")
        };
        errors.extend(check_answer(
            &doc,
            "GET",
            &path,
            status,
            content_type.as_deref(),
            &bytes,
        ));
        exercised.insert((
            "get".to_string(),
            template_of(&doc, &path).expect("documented path"),
        ));
    }
    // The operator's routes: with the token, without, with another, and a bad request.
    let operator: [(&str, &str, Option<&str>, u16); 7] = [
        ("GET", "/dead-letters", Some("op-token"), 200),
        ("GET", "/dead-letters", None, 401),
        ("GET", "/dead-letters", Some("other"), 403),
        (
            "POST",
            "/dead-letters/redrive?all=true",
            Some("op-token"),
            200,
        ),
        ("POST", "/dead-letters/redrive", Some("op-token"), 400),
        (
            "POST",
            "/dead-letters/purge?confirm=true",
            Some("op-token"),
            200,
        ),
        ("POST", "/dead-letters/purge", Some("op-token"), 400),
    ];
    for (method, path, token, expected) in operator {
        let mut request = client.request(method.parse().expect("method"), query.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        assert_eq!(status, expected, "{method} {path}");
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().expect("ascii").to_string());
        let bytes = response.bytes().await.expect("body");
        errors.extend(check_answer(
            &doc,
            method,
            path,
            status,
            content_type.as_deref(),
            &bytes,
        ));
        exercised.insert((
            method.to_lowercase(),
            template_of(&doc, path).expect("documented path"),
        ));
    }
    assert!(
        errors.is_empty(),
        "answers outside the document:\n{}",
        errors.join("\n")
    );
    assert_eq!(
        exercised,
        operations(&doc),
        "every documented operation answered once"
    );
    command.stop().await;
    query.stop().await;
    names.cleanup().await;
}

/// The todo both services answer with is one shape: the `Todo` schema of query-service's
/// document equals command-service's (descriptions aside).
#[test]
fn both_services_document_the_same_todo() {
    fn shape(mut schema: Value) -> Value {
        fn strip(v: &mut Value) {
            match v {
                Value::Object(map) => {
                    map.remove("description");
                    map.values_mut().for_each(strip);
                }
                Value::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        strip(&mut schema);
        schema
    }
    let command = command_service::openapi::document()["components"]["schemas"]["Todo"].clone();
    let query = query_service::openapi::document()["components"]["schemas"]["Todo"].clone();
    assert!(command.is_object(), "command-service documents Todo");
    assert_eq!(shape(query), shape(command));
}
