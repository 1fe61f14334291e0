use crate::helpers::*;
use serde_json::Value;

async fn post_with_key(app: &TestApp, key: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url("/todos"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn the_same_idempotency_key_replays_the_first_response() {
    let app = spawn_app().await;
    let first = post_with_key(&app, "key-1", r#"{"title":"once","completed":true}"#).await;
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.expect("json");

    // The same request, however its JSON is written: other key order, spacing, a title with
    // the whitespace validation trims, a description null or left out.
    let same = [
        r#"{"completed":true,"title":"once"}"#,
        r#"{ "completed" : true ,
            "title" : "once" }"#,
        r#"{"title":"once","completed":true,"description":null}"#,
        r#"{"description":null,"completed":true,"title":"  once "}"#,
    ];
    for body in same {
        let again = post_with_key(&app, "key-1", body).await;
        assert_eq!(again.status(), 201, "{body}");
        assert_eq!(again.headers()["location"], location, "{body}");
        assert_eq!(again.headers()["idempotent-replayed"], "true", "{body}");
        let again: Value = again.json().await.expect("json");
        assert_eq!(first, again, "{body}");
    }

    assert_eq!(app.count("todos").await, 1);
    assert_eq!(app.count("events").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_body_is_422_and_changes_nothing() {
    let app = spawn_app().await;
    assert_eq!(
        post_with_key(&app, "key-2", r#"{"title":"a"}"#)
            .await
            .status(),
        201
    );
    // Each differs from the first request in what it asks for.
    for body in [
        r#"{"title":"b"}"#,
        r#"{"title":"a","completed":true}"#,
        r#"{"title":"a","description":""}"#,
    ] {
        let response = post_with_key(&app, "key-2", body).await;
        assert_eq!(response.status(), 422, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.expect("json");
        assert_eq!(
            problem["type"], "/problems/idempotency-key-reused",
            "{body}"
        );
    }
    assert_eq!(app.count("todos").await, 1);
    assert_eq!(app.count("events").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_create_one_todo() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = app.client.clone();
        let url = app.url("/todos");
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", "key-concurrent")
                .body(r#"{"title":"raced"}"#)
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.expect("json")
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.expect("task"));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "all answers equal: {bodies:?}"
    );
    assert_eq!(app.count("todos").await, 1);
    assert_eq!(app.count("events").await, 1);
    app.stop().await;
}
