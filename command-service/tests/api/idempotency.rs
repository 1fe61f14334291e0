use crate::helpers::*;
use diesel_async::RunQueryDsl;
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

#[tokio::test]
async fn a_stored_answer_that_cannot_be_read_is_500_not_a_guess() {
    let app = spawn_app().await;
    let body = r#"{"title":"kept"}"#;
    assert_eq!(
        post_with_key(&app, "key-unreadable", body).await.status(),
        201
    );
    let mut conn = app.db().await;
    diesel::sql_query(
        "UPDATE idempotency_keys SET response_body = '{\"title\":\"kept\"}' \
         WHERE key = 'key-unreadable'",
    )
    .execute(&mut conn)
    .await
    .expect("stored answer damaged");

    let again = post_with_key(&app, "key-unreadable", body).await;
    assert_eq!(again.status(), 500);
    assert!(again.headers().get("location").is_none());
    assert_eq!(app.count("todos").await, 1);
    app.stop().await;
}

#[tokio::test]
async fn expired_keys_are_removed_by_a_supervised_task_and_live_ones_kept() {
    let app = spawn_app().await;
    let body = ready(&app).await;
    assert_eq!(
        body["tasks"]["idempotency-cleanup"]["state"], "running",
        "{body}"
    );
    for key in ["key-old", "key-live"] {
        assert_eq!(
            post_with_key(&app, key, r#"{"title":"t"}"#).await.status(),
            201
        );
    }
    let mut conn = app.db().await;
    diesel::sql_query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' \
         WHERE key = 'key-old'",
    )
    .execute(&mut conn)
    .await
    .expect("key aged");

    let settings = test_settings(&app.database_url, &app.exchange, Vec::new());
    let pool =
        command_service::db::pool(&app.database_url, 1, settings.database_limits()).expect("pool");
    let keys = command_service::idempotency::Keys::new(settings.idempotency_ttl_hours);
    assert_eq!(keys.remove_expired(&pool).await.expect("cleanup"), 1);
    assert_eq!(app.count("idempotency_keys").await, 1);
    // The live key still replays.
    let again = post_with_key(&app, "key-live", r#"{"title":"t"}"#).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    app.stop().await;
}

/// The cleanup's delete reads the expired keys through the index on `created_at`, not the
/// whole table: with 20,000 live keys and 5 expired ones, PostgreSQL's plan for it names the
/// index.
#[tokio::test]
async fn the_cleanup_of_expired_keys_goes_through_the_index_on_created_at() {
    let app = spawn_app().await;
    let mut conn = app.db().await;
    for statement in [
        "INSERT INTO idempotency_keys (key, request_hash, response_status, response_body) \
         SELECT 'live-' || n, 'h', 201, '{}' FROM generate_series(1, 20000) AS n",
        "INSERT INTO idempotency_keys (key, request_hash, response_status, response_body, created_at) \
         SELECT 'old-' || n, 'h', 201, '{}', now() - interval '25 hours' FROM generate_series(1, 5) AS n",
        "ANALYZE idempotency_keys",
    ] {
        diesel::sql_query(statement)
            .execute(&mut conn)
            .await
            .expect(statement);
    }
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let explain = format!(
        "EXPLAIN {}",
        command_service::idempotency::REMOVE_EXPIRED
            .replace("$1", "24")
            .replace("$2", "1000")
    );
    let plan: Vec<Line> = diesel::sql_query(&explain)
        .load(&mut conn)
        .await
        .expect("explain");
    let plan: Vec<String> = plan.into_iter().map(|l| l.line).collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("idempotency_keys_created_at_idx")),
        "the delete does not use the index:\n{}",
        plan.join("\n")
    );
    let settings = test_settings(&app.database_url, &app.exchange, Vec::new());
    let pool =
        command_service::db::pool(&app.database_url, 1, settings.database_limits()).expect("pool");
    let keys = command_service::idempotency::Keys::new(settings.idempotency_ttl_hours);
    assert_eq!(keys.remove_expired(&pool).await.expect("cleanup"), 5);
    app.stop().await;
}
