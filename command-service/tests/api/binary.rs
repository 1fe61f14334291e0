//! The real `command-service` binary: its signals, exit code and the log it writes.

use crate::helpers::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use serde_json::Value;
use std::time::Duration;

/// The settings a test's binary runs with: its own database and exchange.
fn vars(database_url: &str, exchange: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url.to_string()),
        ("AMQP_URL", amqp_url()),
        ("AMQP_EXCHANGE", exchange.to_string()),
        ("RELAY_MAX_BACKOFF_MS", "1000".into()),
        ("RELAY_POLL_MS", "500".into()),
    ]
}

/// SIGTERM while a request is in flight (a PATCH waiting for a row a test session holds): the
/// process stops accepting, the request still gets its answer, every event committed (the
/// PATCH's too, committed after the signal) is published and marked before the process
/// exits, and it exits with code 0.
#[tokio::test]
async fn on_sigterm_the_request_in_flight_is_answered_its_event_published_and_the_exit_code_is_0() {
    let database = create_database().await;
    let database_url = database.url.clone();
    let exchange = format!("test.{}", uuid::Uuid::new_v4().simple());
    let queue = bind_queue(&exchange, false).await;
    let mut service = start_binary(
        [
            vars(&database_url, &exchange),
            vec![
                ("DATABASE_LOCK_TIMEOUT_MS", "20000".into()),
                ("DATABASE_STATEMENT_TIMEOUT_MS", "20000".into()),
            ],
        ]
        .concat(),
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let response = client
        .post(service.url("/todos"))
        .header("content-type", "application/json")
        .body(r#"{"title":"in flight at SIGTERM"}"#)
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");

    // A session holds the todo's row: the PATCH waits for it inside the service.
    let mut holder = AsyncPgConnection::establish(&database_url)
        .await
        .expect("database");
    holder.batch_execute("BEGIN").await.expect("begin");
    diesel::sql_query(format!("SELECT id FROM todos WHERE id = {id} FOR UPDATE"))
        .execute(&mut holder)
        .await
        .expect("row locked");
    let patch = tokio::spawn(
        client
            .patch(service.url(&format!("/todos/{id}")))
            .header("content-type", "application/json")
            .body(r#"{"completed":true}"#)
            .send(),
    );
    eventually(
        Duration::from_secs(10),
        "the PATCH waits for the row",
        || async { lock_waiters(&database_url).await >= 1 },
    )
    .await;

    service.signal("TERM");
    service
        .wait_for_log("SIGTERM received", Duration::from_secs(10))
        .await;
    let addr = service.address.trim_start_matches("http://").to_string();
    eventually(
        Duration::from_secs(10),
        "new connections refused",
        || async { tokio::net::TcpStream::connect(&addr).await.is_err() },
    )
    .await;
    assert!(!patch.is_finished(), "the PATCH is still in flight");
    holder.batch_execute("ROLLBACK").await.expect("released");

    let response = patch.await.expect("task").expect("the PATCH is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let status = service.exit_status(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", service.log());
    assert!(service.log().contains("command-service stopped"));

    let messages = queue.take(2, Duration::from_secs(10)).await;
    let versions: Vec<(i64, i64)> = messages
        .iter()
        .map(|m| {
            let e = events::Envelope::from_json(&m.data).expect("envelope");
            (e.todo_id, e.version)
        })
        .collect();
    assert_eq!(versions, [(id, 1), (id, 2)]);
    #[derive(diesel::QueryableByName)]
    struct Left {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(&database_url)
        .await
        .expect("database");
    let left: Left = diesel::sql_query(
        "SELECT count(*) AS n FROM events, relay_cursor c \
         WHERE events.position IS NULL OR events.position > c.position",
    )
    .get_result(&mut conn)
    .await
    .expect("backlog");
    assert_eq!(left.n, 0, "every event marked published before the exit");
    queue.delete().await;
}

/// Passwords never reach the log, read from what the real binary writes (`LOG_FORMAT` json,
/// at `debug`, so the libraries' own lines are in it too): a RabbitMQ password the broker
/// refuses and PostgreSQL's password, while the service starts, writes and retries, and a
/// PostgreSQL password the server refuses while the service waits for its database. The
/// redacted settings line is there, so the log was read.
#[tokio::test]
async fn passwords_in_the_urls_never_reach_the_real_log() {
    let database = create_database().await;
    let database_url = database.url.clone();
    assert!(
        database_url.contains(":todo@"),
        "the test looks for PostgreSQL's password `todo` after a colon: {database_url}"
    );
    let amqp_secret = format!("amqp-secret-{}", uuid::Uuid::new_v4().simple());
    let amqp_with_secret = amqp_url().replacen(":guest@", &format!(":{amqp_secret}@"), 1);
    assert!(
        amqp_with_secret.contains(&amqp_secret),
        "{amqp_with_secret}"
    );
    let exchange = format!("test.{}", uuid::Uuid::new_v4().simple());
    let mut settings = vars(&database_url, &exchange);
    settings.retain(|(name, _)| *name != "AMQP_URL");
    settings.push(("AMQP_URL", amqp_with_secret));
    settings.push(("RUST_LOG", "debug".into()));
    let mut service = start_binary(settings).await;
    let response = reqwest::Client::new()
        .post(service.url("/todos"))
        .header("content-type", "application/json")
        .body(r#"{"title":"logged"}"#)
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    service
        .wait_for_log("RabbitMQ unreachable", Duration::from_secs(15))
        .await;
    service.signal("TERM");
    assert_eq!(
        service.exit_status(Duration::from_secs(30)).await.code(),
        Some(0)
    );
    let log = service.log();
    assert!(
        log.contains("guest:***@") && log.contains("todo:***@"),
        "the settings line, redacted: {log}"
    );
    for secret in [amqp_secret.as_str(), ":todo@", "todo:todo"] {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{secret} in the log: {leaks:#?}");
    }

    // PostgreSQL refusing the password: the service logs each failed try while it waits.
    let pg_secret = format!("pg-secret-{}", uuid::Uuid::new_v4().simple());
    let refused_url = database_url.replacen(":todo@", &format!(":{pg_secret}@"), 1);
    let mut settings = vars(&refused_url, &exchange);
    settings.push(("RUST_LOG", "debug".into()));
    let mut waiting = spawn_binary(settings);
    waiting
        .wait_for_log("PostgreSQL not reachable yet", Duration::from_secs(15))
        .await;
    waiting.child.kill().expect("SIGKILL");
    waiting.exit_status(Duration::from_secs(10)).await;
    let log = waiting.log();
    assert!(
        log.contains("PostgreSQL not reachable yet"),
        "the refused tries are logged: {log}"
    );
    assert!(log.contains("todo:***@"), "the settings line: {log}");
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(&pg_secret)).collect();
    assert!(leaks.is_empty(), "{pg_secret} in the log: {leaks:#?}");
}

/// A `CORS_ORIGINS` entry that is no origin stops the binary at start with a configuration
/// error naming the variable and the entry: exit code 1, no panic, nothing served.
#[tokio::test]
async fn a_cors_origins_entry_that_is_no_origin_stops_the_binary_naming_it() {
    for entry in ["not a url", "http://x/path", "ftp://x"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_command-service"))
            .env("CORS_ORIGINS", format!("http://localhost:5002,{entry}"))
            .env("HTTP_ADDR", "127.0.0.1:0")
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{entry}: {stderr}");
        assert!(
            stderr.contains("CORS_ORIGINS") && stderr.contains(entry),
            "{entry}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{entry}: {stderr}");
    }
}
