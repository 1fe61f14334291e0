//! Tests that stop a shared service. nextest runs them alone (`.config/nextest.toml`).

use crate::helpers::*;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn outage_of_rabbitmq_while_writing_loses_no_event() {
    let exchange = format!("test.{}", uuid::Uuid::new_v4().simple());
    // Durable queue and exchange: they outlive the broker restart, as the real ones do.
    let queue = bind_queue(&exchange, true).await;
    let queue_name = queue.name.clone();
    drop(queue);
    let app = spawn_app_with(Options {
        exchange: Some(exchange.clone()),
        ..Options::default()
    })
    .await;

    let restart = Restart("start-rabbitmq");
    services("stop-rabbitmq");
    let mut ids = Vec::new();
    for i in 0..100 {
        let todo = app
            .create(&format!("written while RabbitMQ is down {i}"))
            .await;
        ids.push(todo["id"].as_i64().expect("id"));
    }
    // Some todos change twice more, so order per todo is tested across versions.
    for id in ids.iter().take(20) {
        for body in [r#"{"completed":true}"#, r#"{"description":"again"}"#] {
            let response = app.send("PATCH", &format!("/todos/{id}"), Some(body)).await;
            assert_eq!(response.status(), 200);
        }
    }
    let ready: Value = app
        .client
        .get(app.url("/ready"))
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("json");
    assert_eq!(
        ready["status"], "ready",
        "writes need only PostgreSQL: {ready}"
    );
    assert_eq!(ready["checks"]["rabbitmq"], "down", "{ready}");
    assert_eq!(ready["checks"]["outbox_backlog"], 140, "{ready}");
    drop(restart); // starts RabbitMQ and waits until it answers

    let queue = bind_queue(&exchange, true).await;
    assert_eq!(queue.name, queue_name);
    let messages = queue.take(140, Duration::from_secs(60)).await;
    let mut versions: HashMap<i64, Vec<i64>> = HashMap::new();
    for m in &messages {
        let e = events::Envelope::from_json(&m.data).expect("envelope");
        versions.entry(e.todo_id).or_default().push(e.version);
    }
    assert_eq!(versions.len(), 100, "every todo's creation arrived");
    for (i, id) in ids.iter().enumerate() {
        let expected: Vec<i64> = if i < 20 { vec![1, 2, 3] } else { vec![1] };
        assert_eq!(versions[id], expected, "todo {id}: every version, in order");
    }
    app.stop().await;
    queue.delete().await;
}

#[tokio::test]
async fn outage_of_postgresql_answers_503_and_recovers_by_itself() {
    let app = spawn_app().await;
    let id = app.create("before the outage").await["id"]
        .as_i64()
        .expect("id");

    let restart = Restart("start-postgres");
    services("stop-postgres");
    let writes = [
        ("POST", "/todos".to_string(), Some(r#"{"title":"during"}"#)),
        (
            "PATCH",
            format!("/todos/{id}"),
            Some(r#"{"completed":true}"#),
        ),
        ("DELETE", format!("/todos/{id}"), None),
    ];
    for (method, path, body) in &writes {
        let response = app.send(method, path, *body).await;
        assert_eq!(response.status(), 503, "{method} {path}");
        assert_eq!(response.headers()["retry-after"], "1", "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["status"], 503);
    }
    let ready = app
        .client
        .get(app.url("/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "not ready");
    assert_eq!(
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .expect("health")
            .status(),
        200
    );
    drop(restart);

    eventually(Duration::from_secs(30), "ready again", || async {
        app.client
            .get(app.url("/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let response = app
        .send(
            "PATCH",
            &format!("/todos/{id}"),
            Some(r#"{"completed":true}"#),
        )
        .await;
    assert_eq!(response.status(), 200);
    let todo: Value = response.json().await.expect("json");
    assert_eq!(todo["version"], 2, "nothing from the outage was written");
    assert_eq!(app.count("events").await, 2);
    app.stop().await;
}
