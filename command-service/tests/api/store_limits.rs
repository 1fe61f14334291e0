use crate::helpers::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A session of its own that locked todo `id`'s row and stalls (its transaction stays open
/// while the value lives).
async fn lock_row(app: &TestApp, id: i64) -> diesel_async::AsyncPgConnection {
    let mut stalled = app.db().await;
    stalled.batch_execute("BEGIN").await.expect("begin");
    diesel::sql_query(format!("SELECT id FROM todos WHERE id = {id} FOR UPDATE"))
        .execute(&mut stalled)
        .await
        .expect("row locked");
    stalled
}

/// A session that locked a todo's row and stalls (a stuck client, an operator's open `psql`)
/// must not freeze writes: writes of that todo answer 503 with `Retry-After` once the lock
/// wait passes `DATABASE_LOCK_TIMEOUT_MS`, and writes of other todos go on meanwhile, even
/// when the blocked ones outnumber the pool's connections.
#[tokio::test]
async fn a_todo_locked_by_a_stalled_session_answers_503_and_blocks_no_other_write() {
    let app = spawn_app_with(Options {
        extra: vec![("DATABASE_LOCK_TIMEOUT_MS", "300".into())],
        ..Options::default()
    })
    .await;
    let x = app.create("locked").await["id"].as_i64().expect("id");
    let y = app.create("free").await["id"].as_i64().expect("id");

    let mut stalled = lock_row(&app, x).await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    // As many writes of the locked todo as the pool has connections (`DATABASE_POOL_SIZE` 5).
    let blocked: Vec<_> = (0..5)
        .map(|i| {
            let request = client
                .patch(app.url(&format!("/todos/{x}")))
                .header("content-type", "application/json")
                .body(format!(r#"{{"title":"blocked {i}"}}"#));
            tokio::spawn(async move {
                let started = Instant::now();
                let response = request.send().await;
                (response, started.elapsed())
            })
        })
        .collect();
    // Let the five reach the lock. Not awaited on a condition: each waits only
    // DATABASE_LOCK_TIMEOUT_MS (300 ms) before its 503, so "all five waiting" is a window a
    // poll can miss; the assertions below hold whether or not they all got there.
    tokio::time::sleep(Duration::from_millis(100)).await;

    for (method, path, body, status) in [
        ("POST", "/todos".to_string(), r#"{"title":"new"}"#, 201),
        ("PATCH", format!("/todos/{y}"), r#"{"completed":true}"#, 200),
    ] {
        let started = Instant::now();
        let response = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                app.url(&path),
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("answered");
        assert_eq!(
            response.status(),
            status,
            "{method} {path} while {x} is locked"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{method} {path} took {:?}",
            started.elapsed()
        );
    }

    for task in blocked {
        let (response, took) = task.await.expect("task");
        let response = response.expect("a write of the locked todo is answered");
        assert_eq!(response.status(), 503);
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        assert_eq!(response.headers()["retry-after"], "1");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(problem["status"], 503);
    }

    stalled.batch_execute("ROLLBACK").await.expect("rollback");
    let response = app
        .send(
            "PATCH",
            &format!("/todos/{x}"),
            Some(r#"{"title":"free now"}"#),
        )
        .await;
    assert_eq!(response.status(), 200);
    // Two creates, the POST and PATCH made while locked, the last PATCH: no event from a 503.
    assert_eq!(app.count("events").await, 5);
    app.stop().await;
}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

/// Every pooled connection carries the limits as session settings, beside any options the
/// URL gives; a statement past its timeout is "store unavailable" (503), not a bug (500).
#[tokio::test]
async fn every_pooled_connection_carries_the_limits_and_a_statement_past_them_is_503() {
    let database = create_database().await;
    let database_url = database.url.clone();
    let url = format!("{database_url}?options=-c%20work_mem%3D7MB");
    let limits = command_service::db::Limits {
        connect: Duration::from_secs(2),
        statement: Duration::from_millis(400),
        lock: Duration::from_millis(300),
        idle_in_transaction: Duration::from_millis(4000),
    };
    let pool = command_service::db::pool(&url, 2, limits).expect("pool");
    let mut conn = pool.get().await.expect("connection");
    for (name, expected) in [
        ("statement_timeout", "400ms"),
        ("lock_timeout", "300ms"),
        ("idle_in_transaction_session_timeout", "4s"),
        ("work_mem", "7MB"),
    ] {
        let setting: Setting =
            diesel::sql_query(format!("SELECT current_setting('{name}') AS value"))
                .get_result(&mut conn)
                .await
                .expect("setting");
        assert_eq!(setting.value, expected, "{name}");
    }
    let started = Instant::now();
    let err = diesel::sql_query("SELECT pg_sleep(3)")
        .execute(&mut conn)
        .await
        .expect_err("cancelled by statement_timeout");
    assert!(started.elapsed() < Duration::from_secs(2), "{err}");
    assert!(command_service::db::is_unavailable(&err), "{err}");
    let answer =
        command_service::error::ApiError::from(command_service::commands::CommandError::from(err));
    assert_eq!(answer.status(), 503);
}

/// With every pooled connection taken (`DATABASE_POOL_SIZE` 1, held by a write waiting for a
/// row a stalled session locked), another request waits for a connection no longer than
/// `DATABASE_TIMEOUT_MS`, then answers 503 with `Retry-After` and writes nothing.
#[tokio::test]
async fn a_request_that_finds_the_pool_exhausted_answers_503_within_the_database_timeout() {
    let app = spawn_app_with(Options {
        extra: vec![
            ("DATABASE_POOL_SIZE", "1".into()),
            ("DATABASE_TIMEOUT_MS", "500".into()),
            ("DATABASE_LOCK_TIMEOUT_MS", "20000".into()),
            ("DATABASE_STATEMENT_TIMEOUT_MS", "20000".into()),
        ],
        ..Options::default()
    })
    .await;
    let x = app.create("locked").await["id"].as_i64().expect("id");
    let mut stalled = lock_row(&app, x).await;
    // This PATCH takes the pool's only connection and waits with it for the row.
    let holding = {
        let request = app
            .client
            .patch(app.url(&format!("/todos/{x}")))
            .header("content-type", "application/json")
            .body(r#"{"completed":true}"#);
        tokio::spawn(request.send())
    };
    eventually(
        Duration::from_secs(10),
        "the PATCH waits for the row",
        || async { lock_waiters(&app.database_url).await >= 1 },
    )
    .await;

    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        app.post_json("/todos", r#"{"title":"no connection for me"}"#),
    )
    .await
    .expect("answered within 5 s, not when the pool frees up");
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2000),
        "waited {took:?} for a connection (DATABASE_TIMEOUT_MS 500)"
    );
    assert_eq!(response.headers()["retry-after"], "1");
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["status"], 503);
    assert!(
        !holding.is_finished(),
        "the PATCH still holds the connection"
    );

    stalled.batch_execute("ROLLBACK").await.expect("rollback");
    let response = holding.await.expect("task").expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(app.count("todos").await, 1, "the 503 wrote no todo");
    assert_eq!(app.count("events").await, 2);
    app.stop().await;
}

/// `/ready` and `/metrics` query PostgreSQL on a pool of their own: with every connection of
/// the write pool held (`DATABASE_POOL_SIZE` 2, both by writes waiting for a row a stalled
/// session locked) and a third write waiting for one of them, both answer 200 at once, `/ready`
/// with PostgreSQL up and the outbox read, `/metrics` with the backlog read at scrape time.
#[tokio::test]
async fn ready_and_metrics_answer_at_once_while_writes_hold_every_pooled_connection() {
    let app = spawn_app_with(Options {
        extra: vec![
            ("DATABASE_POOL_SIZE", "2".into()),
            ("DATABASE_TIMEOUT_MS", "3000".into()),
            ("DATABASE_LOCK_TIMEOUT_MS", "20000".into()),
            ("DATABASE_STATEMENT_TIMEOUT_MS", "20000".into()),
        ],
        ..Options::default()
    })
    .await;
    // No queue is bound to the test's exchange: the create's event stays in the outbox.
    let x = app.create("locked").await["id"].as_i64().expect("id");
    let mut stalled = lock_row(&app, x).await;
    let holding: Vec<_> = (0..2)
        .map(|i| {
            let request = app
                .client
                .patch(app.url(&format!("/todos/{x}")))
                .header("content-type", "application/json")
                .body(format!(r#"{{"title":"holding {i}"}}"#));
            tokio::spawn(request.send())
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "both PATCHes hold a connection, waiting for the row",
        || async { lock_waiters(&app.database_url).await >= 2 },
    )
    .await;
    // A third write finds the pool empty and waits for a connection meanwhile.
    let waiting = {
        let request = app
            .client
            .post(app.url("/todos"))
            .header("content-type", "application/json")
            .body(r#"{"title":"no connection for me"}"#);
        tokio::spawn(async move {
            let started = Instant::now();
            (request.send().await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    for path in ["/ready", "/metrics", "/ready", "/metrics"] {
        let started = Instant::now();
        let response =
            tokio::time::timeout(Duration::from_secs(5), app.client.get(app.url(path)).send())
                .await
                .unwrap_or_else(|_| panic!("{path} answered within 5 s"))
                .expect("answered");
        let took = started.elapsed();
        assert_eq!(
            response.status(),
            200,
            "{path} with the write pool exhausted"
        );
        assert!(took < Duration::from_millis(1000), "{path} took {took:?}");
        let body = response.text().await.expect("body");
        if path == "/ready" {
            let ready: Value = serde_json::from_str(&body).expect("ready JSON");
            assert_eq!(ready["status"], "ready", "{ready}");
            assert_eq!(ready["checks"]["postgres"], "up", "{ready}");
            assert_eq!(ready["checks"]["outbox_backlog"], 1, "{ready}");
        } else {
            assert_eq!(
                events::testing::sample(&body, "outbox_backlog"),
                Some(1.0),
                "{body}"
            );
        }
    }

    // The write pool was exhausted all along: the third write got no connection.
    let (response, took) = waiting.await.expect("task");
    let response = response.expect("answered");
    assert_eq!(response.status(), 503);
    assert!(took >= Duration::from_millis(2900), "waited {took:?}");
    for task in &holding {
        assert!(
            !task.is_finished(),
            "the PATCHes still hold their connections"
        );
    }
    stalled.batch_execute("ROLLBACK").await.expect("rollback");
    for task in holding {
        let response = task.await.expect("task").expect("answered");
        assert_eq!(response.status(), 200);
    }
    app.stop().await;
}

/// PostgreSQL that cannot serve now, as a command meets it (a lock timeout, no pooled
/// connection within the wait), answers 503 problem+json with `Retry-After: 1`; another error
/// answers without it.
#[test]
fn every_store_unavailable_answer_is_503_with_retry_after() {
    use command_service::commands::CommandError;
    use command_service::error::ApiError;
    let lock_timeout = diesel::result::Error::DatabaseError(
        diesel::result::DatabaseErrorKind::Unknown,
        Box::new("canceling statement due to lock timeout".to_string()),
    );
    let pool_timeout = diesel_async::pooled_connection::deadpool::PoolError::Timeout(
        deadpool::managed::TimeoutType::Wait,
    );
    for error in [
        ApiError::from(CommandError::from(lock_timeout)),
        ApiError::from(CommandError::from(pool_timeout)),
    ] {
        let why = format!("{error:?}");
        let response = error.into_response();
        assert_eq!(response.status(), 503, "{why}");
        assert_eq!(response.headers()["retry-after"], "1", "{why}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{why}"
        );
    }
    let other = ApiError::NotFound("no".into()).into_response();
    assert!(other.headers().get("retry-after").is_none());
}
