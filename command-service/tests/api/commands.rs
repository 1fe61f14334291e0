use crate::helpers::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn create_patch_and_delete_follow_the_http_contract() {
    let app = spawn_app().await;

    let response = app.post_json("/todos", r#"{"title":"Learn CQRS"}"#).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(response.headers()["etag"], "\"1\"");
    let todo: Value = response.json().await.expect("json");
    let id = todo["id"].as_i64().expect("id");
    assert_eq!(location, format!("/todos/{id}"));
    assert_eq!(todo["version"], 1);
    assert_eq!(todo["title"], "Learn CQRS");
    assert_eq!(todo["completed"], false);
    assert_eq!(todo["description"], Value::Null);
    assert!(todo["created_at"].is_string() && todo["updated_at"].is_string());

    let response = app
        .send(
            "PATCH",
            &format!("/todos/{id}"),
            Some(r#"{"completed":true}"#),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let todo: Value = response.json().await.expect("json");
    assert_eq!(todo["version"], 2);
    assert_eq!(todo["completed"], true);
    assert_eq!(
        todo["title"], "Learn CQRS",
        "PATCH keeps fields it does not name"
    );

    let response = app
        .client
        .patch(app.url(&format!("/todos/{id}")))
        .header("content-type", "application/json")
        .header("if-match", "\"1\"")
        .body(r#"{"title":"stale"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 412);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.expect("json");
    assert_eq!(problem["status"], 412);
    assert_eq!(problem["current_version"], 2);

    let response = app
        .client
        .delete(app.url(&format!("/todos/{id}")))
        .header("if-match", "\"2\"")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 204);
    let response = app.send("DELETE", &format!("/todos/{id}"), None).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    // Three accepted writes, three events, in order, with consecutive versions.
    let events = app.events().await;
    let kinds: Vec<(&str, i64)> = events
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().expect("type"),
                e["version"].as_i64().expect("v"),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("TodoCreated", 1), ("TodoUpdated", 2), ("TodoDeleted", 3)]
    );
    assert_eq!(events[1]["changed"], json!(["completed"]));
    assert_eq!(events[2]["data"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn a_due_date_is_set_on_create_changed_and_cleared_and_every_event_carries_it() {
    let app = spawn_app().await;
    let created: Value = app
        .post_json(
            "/todos",
            r#"{"title":"file taxes","due_at":"2027-04-15T23:59:00.1234567-04:00"}"#,
        )
        .await
        .json()
        .await
        .expect("json");
    let id = created["id"].as_i64().expect("id");
    assert_eq!(
        created["due_at"], "2027-04-16T03:59:00.123456Z",
        "in UTC, to the microsecond: {created}"
    );
    let path = format!("/todos/{id}");
    let moved: Value = app
        .send("PATCH", &path, Some(r#"{"due_at":"2027-05-01T12:00:00Z"}"#))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(moved["due_at"], "2027-05-01T12:00:00Z");
    assert_eq!(
        moved["title"], "file taxes",
        "a PATCH keeps what it does not name"
    );
    let kept: Value = app
        .send("PATCH", &path, Some(r#"{"completed":true}"#))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(kept["due_at"], "2027-05-01T12:00:00Z", "{kept}");
    let cleared: Value = app
        .send("PATCH", &path, Some(r#"{"due_at":null}"#))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(cleared["due_at"], Value::Null);
    let put: Value = app
        .send(
            "PUT",
            &path,
            Some(r#"{"title":"file taxes","due_at":"2028-01-01T00:00:00Z"}"#),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(put["due_at"], "2028-01-01T00:00:00Z");
    let put_without: Value = app
        .send("PUT", &path, Some(r#"{"title":"file taxes"}"#))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        put_without["due_at"],
        Value::Null,
        "a PUT is the whole todo"
    );

    // Each bad due date is 422 naming the field, and writes nothing.
    let before = app.events().await.len();
    for body in [
        r#"{"due_at":"tomorrow"}"#,
        r#"{"due_at":"2027-02-30T00:00:00Z"}"#,
        r#"{"due_at":"1969-07-20T20:17:00Z"}"#,
        r#"{"due_at":1700000000}"#,
    ] {
        let response = app.send("PATCH", &path, Some(body)).await;
        assert_eq!(response.status(), 422, "{body}");
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["errors"][0]["field"], "due_at", "{body}: {problem}");
    }
    assert_eq!(app.events().await.len(), before);

    let events = app.events().await;
    let dues: Vec<(i64, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["schema_version"].as_i64().expect("schema_version"),
                e["data"]["due_at"].clone(),
                e["changed"].clone(),
            )
        })
        .collect();
    let v = i64::from(events::SCHEMA_VERSION);
    assert_eq!(
        dues,
        [
            (v, json!("2027-04-16T03:59:00.123456Z"), json!([])),
            (v, json!("2027-05-01T12:00:00Z"), json!(["due_at"])),
            (v, json!("2027-05-01T12:00:00Z"), json!(["completed"])),
            (v, Value::Null, json!(["due_at"])),
            (
                v,
                json!("2028-01-01T00:00:00Z"),
                json!(["completed", "due_at"])
            ),
            (v, Value::Null, json!(["due_at"])),
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn put_replaces_the_whole_todo_and_a_no_op_change_writes_no_event() {
    let app = spawn_app().await;
    let todo = app.create("Write docs").await;
    let id = todo["id"].as_i64().expect("id");

    let response = app
        .send(
            "PATCH",
            &format!("/todos/{id}"),
            Some(r#"{"description":"README first","completed":true}"#),
        )
        .await;
    assert_eq!(response.status(), 200);

    // PUT without description and completed resets them to null and false.
    let response = app
        .send(
            "PUT",
            &format!("/todos/{id}"),
            Some(r#"{"title":"Write the docs"}"#),
        )
        .await;
    assert_eq!(response.status(), 200);
    let todo: Value = response.json().await.expect("json");
    assert_eq!(todo["version"], 3);
    assert_eq!(todo["title"], "Write the docs");
    assert_eq!(todo["description"], Value::Null);
    assert_eq!(todo["completed"], false);

    // The same state again: 200 with the current version, no new event.
    let response = app
        .send(
            "PUT",
            &format!("/todos/{id}"),
            Some(r#"{"title":" Write the docs "}"#),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"3\"");
    let events = app.events().await;
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[2]["changed"],
        json!(["title", "description", "completed"])
    );

    // A list of tags matches if any of them does.
    let response = app
        .client
        .patch(app.url(&format!("/todos/{id}")))
        .header("content-type", "application/json")
        .header("if-match", "\"1\", \"3\"")
        .body(r#"{"completed":true}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    app.stop().await;
}

/// RFC 9110: `If-Match` compares strongly, so a weak tag never matches; and `*` is false when
/// there is no current representation, so on a missing todo it fails (412) rather than 404.
#[tokio::test]
async fn if_match_never_matches_a_weak_tag_and_star_fails_on_a_missing_todo() {
    let app = spawn_app().await;
    let id = app.create("guarded").await["id"].as_i64().expect("id");
    let todo = format!("/todos/{id}");
    let body = Some(r#"{"title":"changed"}"#);
    let cases: Vec<(&str, &str, &str, Option<&str>)> = vec![
        ("PATCH", &todo, "W/\"1\"", body),
        ("PUT", &todo, "W/\"1\"", body),
        ("DELETE", &todo, "W/\"1\"", None),
        ("PATCH", &todo, "W/\"1\", W/\"2\"", body),
        ("PATCH", "/todos/999999", "*", body),
        ("PUT", "/todos/999999", "*", body),
        ("DELETE", "/todos/999999", "*", None),
    ];
    for (method, path, if_match, body) in cases {
        let why = format!("{method} {path} If-Match: {if_match}");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = app
            .client
            .request(method, app.url(path))
            .header("if-match", if_match);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("sent");
        assert_eq!(response.status(), 412, "{why}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{why}"
        );
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["status"], 412, "{why}");
    }
    // A strong tag of the current version still matches.
    let response = app
        .client
        .patch(app.url(&todo))
        .header("content-type", "application/json")
        .header("if-match", "W/\"1\", \"1\"")
        .body(r#"{"completed":true}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let events = app.events().await;
    assert_eq!(events.len(), 2, "only the strongly matched change wrote");
    app.stop().await;
}

#[tokio::test]
async fn the_event_feed_pages_by_position() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create(&format!("todo {i}")).await;
    }
    let response = app
        .client
        .get(app.url("/events?limit=2"))
        .send()
        .await
        .expect("feed");
    assert_eq!(response.status(), 200);
    let next = response.headers()["link"]
        .to_str()
        .expect("ascii")
        .to_string();
    let head: i64 = response.headers()["log-head"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a position");
    let page: Vec<Value> = response.json().await.expect("json");
    assert_eq!(page.len(), 2);
    let last = page[1]["position"].as_i64().expect("position");
    assert_eq!(
        next,
        format!("</events?after={last}&limit=2>; rel=\"next\"")
    );

    let rest: Vec<Value> = app
        .client
        .get(app.url(&format!("/events?after={last}&limit=10")))
        .send()
        .await
        .expect("feed")
        .json()
        .await
        .expect("json");
    assert_eq!(rest.len(), 3);
    let positions: Vec<i64> = page
        .iter()
        .chain(rest.iter())
        .map(|e| e["position"].as_i64().expect("position"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "increasing: {positions:?}"
    );
    assert_eq!(
        Some(&head),
        positions.last(),
        "Log-Head is the newest position, on the first page already"
    );

    for bad in [
        "/events?after=-1",
        "/events?limit=0",
        "/events?limit=abc",
        "/events?cursor=1",
    ] {
        let response = app.client.get(app.url(bad)).send().await.expect("sent");
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
    }
    app.stop().await;
}

/// `/ready` answers 200 while PostgreSQL is up, and its `outbox_backlog` counts the events
/// RabbitMQ has not confirmed: here two, while no queue is bound (the broker returns them),
/// then none once a queue takes them.
#[tokio::test]
async fn health_and_readiness_report_the_stores_and_the_backlog_of_unpublished_events() {
    let app = spawn_app().await;
    let health = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .expect("sent");
    assert_eq!(health.status(), 200);
    let response = app
        .client
        .get(app.url("/ready"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["checks"]["postgres"], "up", "{body}");

    app.create("first").await;
    app.create("second").await;
    eventually(
        Duration::from_secs(10),
        "the relay tried and the broker returned the events",
        || async {
            let checks = &ready(&app).await["checks"];
            checks["relay_failed_rounds"]
                .as_i64()
                .is_some_and(|n| n >= 1)
                && checks["rabbitmq"] == "up"
        },
    )
    .await;
    let body = ready(&app).await;
    assert_eq!(body["checks"]["outbox_backlog"], 2, "{body}");
    assert_eq!(body["status"], "ready", "{body}");

    let queue = bind_queue(&app.exchange, false).await;
    queue.take(2, Duration::from_secs(15)).await;
    eventually(Duration::from_secs(5), "backlog drained to 0", || async {
        ready(&app).await["checks"]["outbox_backlog"] == 0
    })
    .await;
    app.stop().await;
    queue.delete().await;
}

/// `If-Match: *` matches any existing todo (RFC 9110), on every route that takes it.
#[tokio::test]
async fn if_match_star_lets_a_patch_a_put_and_a_delete_of_an_existing_todo_through() {
    let app = spawn_app().await;
    let id = app.create("guarded").await["id"].as_i64().expect("id");
    let path = format!("/todos/{id}");
    for (method, body, status, etag) in [
        ("PATCH", Some(r#"{"completed":true}"#), 200, "\"2\""),
        ("PUT", Some(r#"{"title":"replaced"}"#), 200, "\"3\""),
        ("DELETE", None, 204, "\"4\""),
    ] {
        let mut request = app
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                app.url(&path),
            )
            .header("if-match", "*");
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("sent");
        assert_eq!(response.status(), status, "{method} If-Match: *");
        assert_eq!(response.headers()["etag"], etag, "{method} If-Match: *");
    }
    let kinds: Vec<String> = app
        .events()
        .await
        .iter()
        .map(|e| format!("{} {}", e["event_type"], e["version"]))
        .collect();
    assert_eq!(
        kinds,
        [
            "\"TodoCreated\" 1",
            "\"TodoUpdated\" 2",
            "\"TodoUpdated\" 3",
            "\"TodoDeleted\" 4"
        ]
    );
    app.stop().await;
}

/// A `PATCH` or `PUT` that sets every field to the value it has answers 200 with the todo as it
/// is (same version, same `updated_at`), writes no new version and appends no event.
#[tokio::test]
async fn a_patch_or_put_with_the_current_values_answers_200_with_the_same_version_and_writes_no_event(
) {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/todos",
            r#"{"title":"same","description":"as before","completed":true}"#,
        )
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("json");
    let id = created["id"].as_i64().expect("id");
    let path = format!("/todos/{id}");
    let row = |app: &TestApp| {
        let url = app.database_url.clone();
        async move {
            use diesel_async::{AsyncConnection, RunQueryDsl};
            #[derive(diesel::QueryableByName)]
            struct Row {
                #[diesel(sql_type = diesel::sql_types::Text)]
                row: String,
            }
            let mut conn = diesel_async::AsyncPgConnection::establish(&url)
                .await
                .expect("database");
            let r: Row = diesel::sql_query(format!(
                "SELECT todos::text AS row FROM todos WHERE id = {id}"
            ))
            .get_result(&mut conn)
            .await
            .expect("row");
            r.row
        }
    };
    let before = row(&app).await;
    for (method, body) in [
        ("PATCH", r#"{"title":"same"}"#),
        ("PATCH", r#"{"completed":true}"#),
        ("PATCH", r#"{"description":"as before"}"#),
        (
            "PATCH",
            r#"{"title":" same ","description":"as before","completed":true}"#,
        ),
        (
            "PUT",
            r#"{"title":"same","description":"as before","completed":true}"#,
        ),
    ] {
        let why = format!("{method} {body}");
        let response = app.send(method, &path, Some(body)).await;
        assert_eq!(response.status(), 200, "{why}");
        assert_eq!(response.headers()["etag"], "\"1\"", "{why}");
        let todo: Value = response.json().await.expect("json");
        assert_eq!(todo, created, "{why}: the todo as it was");
        assert_eq!(row(&app).await, before, "{why}: the row as it was");
        assert_eq!(app.count("events").await, 1, "{why}: no event");
    }
    // A real change after them is version 2, the second event.
    let response = app
        .send("PATCH", &path, Some(r#"{"completed":false}"#))
        .await;
    assert_eq!(response.headers()["etag"], "\"2\"");
    assert_eq!(app.count("events").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn the_request_id_is_echoed_and_stored_as_the_events_correlation_id() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/todos"))
        .header("content-type", "application/json")
        .header("x-request-id", "abc-123")
        .body(r#"{"title":"traced"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let events = app.events().await;
    assert_eq!(events[0]["correlation_id"], "abc-123");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_updates_of_one_todo_get_distinct_consecutive_versions() {
    let app = spawn_app().await;
    let id = app.create("contended").await["id"].as_i64().expect("id");
    let mut tasks = Vec::new();
    for i in 0..10 {
        let client = app.client.clone();
        let url = app.url(&format!("/todos/{id}"));
        tasks.push(tokio::spawn(async move {
            let response = client
                .patch(url)
                .header("content-type", "application/json")
                .body(json!({ "title": format!("title {i}") }).to_string())
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), 200);
            let todo: Value = response.json().await.expect("json");
            todo["version"].as_i64().expect("version")
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.expect("task"));
    }
    versions.sort_unstable();
    assert_eq!(versions, (2..=11).collect::<Vec<i64>>());
    let events = app.events().await;
    assert_eq!(events.len(), 11);
    app.stop().await;
}

/// An `X-Request-Id` that cannot serve as a correlation id (empty, bytes outside visible
/// ASCII such as a space or a tab, longer than 128) is replaced by a new one; the request is
/// answered as if none was sent. One of 1 to 128 visible characters is kept, up to the limit.
#[tokio::test]
async fn an_unusable_request_id_is_replaced_by_a_new_one_and_a_usable_one_kept_up_to_128() {
    let app = spawn_app().await;
    let longest = format!("{}~!", "r".repeat(126));
    for kept in [longest.as_str(), "x", "a:b/c=d_e.f"] {
        let response = app
            .client
            .post(app.url("/todos"))
            .header("content-type", "application/json")
            .header("x-request-id", kept)
            .body(r#"{"title":"traced"}"#)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 201, "{kept}");
        assert_eq!(response.headers()["x-request-id"], kept, "kept: {kept}");
        let todo: Value = response.json().await.expect("json");
        let events = app.events().await;
        let event = events
            .iter()
            .find(|e| e["todo_id"] == todo["id"])
            .expect("its event");
        assert_eq!(event["correlation_id"], kept);
    }
    let unusable: Vec<reqwest::header::HeaderValue> = vec![
        reqwest::header::HeaderValue::from_static(""),
        reqwest::header::HeaderValue::from_bytes("café".as_bytes()).expect("value"),
        reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").expect("value"),
        reqwest::header::HeaderValue::from_static("two words"),
        reqwest::header::HeaderValue::from_static("tab\there"),
        reqwest::header::HeaderValue::from_str(&"a".repeat(129)).expect("value"),
    ];
    for given in unusable {
        let why = format!("X-Request-Id: {given:?}");
        let response = app
            .client
            .post(app.url("/todos"))
            .header("content-type", "application/json")
            .header("x-request-id", given.clone())
            .body(r#"{"title":"traced"}"#)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 201, "{why}");
        let answered = response.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(
            uuid::Uuid::parse_str(&answered).is_ok(),
            "{why}: {answered}"
        );
        let todo: Value = response.json().await.expect("json");
        let events = app.events().await;
        let event = events
            .iter()
            .find(|e| e["todo_id"] == todo["id"])
            .expect("its event");
        assert_eq!(event["correlation_id"], answered.as_str(), "{why}");

        for path in ["/health", "/events", "/ready"] {
            let response = app
                .client
                .get(app.url(path))
                .header("x-request-id", given.clone())
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status(), 200, "{why} on {path}");
        }
    }
    app.stop().await;
}

/// Todo ids stop at 2^53 - 1 (`events::limits::MAX_ID`): the last one is handed out and reads
/// back exactly, and a create past it is refused, writing nothing, instead of handing out an id
/// a JavaScript client would read as another number.
#[tokio::test]
async fn the_last_todo_id_is_max_id_and_a_create_past_it_writes_nothing() {
    use diesel_async::RunQueryDsl;
    let app = spawn_app().await;
    let mut conn = app.db().await;
    diesel::sql_query(format!(
        "SELECT setval(pg_get_serial_sequence('todos', 'id'), {})",
        events::limits::MAX_ID - 1
    ))
    .execute(&mut conn)
    .await
    .expect("sequence moved to its end");
    let last = app.create("the last id").await;
    assert_eq!(last["id"].as_i64(), Some(events::limits::MAX_ID), "{last}");
    let before = (app.count("todos").await, app.count("events").await);
    let past = app.post_json("/todos", r#"{"title":"one too many"}"#).await;
    assert!(
        past.status().is_server_error(),
        "a create past MAX_ID answered {}",
        past.status()
    );
    assert_eq!(
        (app.count("todos").await, app.count("events").await),
        before,
        "a refused create wrote"
    );
    app.stop().await;
}
