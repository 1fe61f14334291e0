//! `query-service replay` rebuilds the read model from command-service's event log, repairs a
//! gap, and changes nothing when run again.

use crate::convergence::differences;
use crate::helpers::*;
use serde_json::{json, Value};

/// Runs `query-service replay <command_url>` as an operator would, with the test's MongoDB
/// database. Off the runtime's thread: command-service answers from this test's runtime.
async fn run_replay(names: &Names, command_url: &str) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_query-service"));
    command
        .arg("replay")
        .arg(command_url)
        .env("MONGODB_URI", mongodb_uri())
        .env("MONGODB_DB", &names.mongo_db)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joined")
        .expect("query-service replay runs")
}

/// The (read, applied, skipped) figures of a successful replay's final log line.
async fn replay(names: &Names, command_url: &str) -> (i64, i64, i64) {
    let output = run_replay(names, command_url).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "replay failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done: Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "replay finished")
        .unwrap_or_else(|| panic!("no 'replay finished' line in {stdout}"));
    let n = |k: &str| done[k].as_i64().unwrap_or_else(|| panic!("{k} in {done}"));
    (n("read"), n("applied"), n("skipped"))
}

#[tokio::test]
async fn replay_rebuilds_the_read_model_from_the_log_and_repairs_a_gap() {
    let names = Names::new();
    // No query-service consumes: the read model starts empty and only replay fills it.
    let (command, database_url) = spawn_command(&names).await;
    let client = reqwest::Client::new();
    let ids = create_todos(&client, &command, &["one", "two", "three", "four"]).await;
    let todo = |i: usize| command.url(&format!("/todos/{}", ids[i]));
    for (method, url, body) in [
        ("PATCH", todo(0), Some(json!({ "title": "one, renamed" }))),
        ("PATCH", todo(0), Some(json!({ "completed": true }))),
        ("PATCH", todo(1), Some(json!({ "completed": true }))),
        ("DELETE", todo(2), None),
    ] {
        let status = write(&client, method, url, body).await.status();
        assert!(status.is_success(), "{method}: {status}");
    }
    let events = 8;

    let rebuilt = replay(&names, &command.address).await;
    assert_eq!(
        rebuilt,
        (events, events, 0),
        "a rebuild applies every event"
    );
    let diffs = differences(&database_url, &mongodb_uri(), &names.mongo_db).await;
    assert!(diffs.is_empty(), "rebuilt read model differs: {diffs:#?}");

    let again = replay(&names, &command.address).await;
    assert_eq!(
        again,
        (events, 0, events),
        "a second replay changes nothing"
    );

    // A gap: the read model lost todo one (three events). Replay puts it back, alone.
    let mongo = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("MongoDB");
    mongo
        .database(&names.mongo_db)
        .collection::<mongodb::bson::Document>("todos")
        .delete_one(mongodb::bson::doc! { "_id": ids[0] })
        .await
        .expect("delete");
    let repaired = replay(&names, &command.address).await;
    assert_eq!(
        repaired,
        (events, 3, events - 3),
        "only the missing todo is applied"
    );
    let diffs = differences(&database_url, &mongodb_uri(), &names.mongo_db).await;
    assert!(diffs.is_empty(), "repaired read model differs: {diffs:#?}");

    // Port 0: no server can listen there, so the connection is refused.
    let unreachable = run_replay(&names, "http://127.0.0.1:0").await;
    assert!(
        !unreachable.status.success(),
        "replay from an unreachable command-service must fail"
    );

    command.stop().await;
    names.cleanup().await;
}

/// `GET /events` requests command-service answered 200, from its metrics.
async fn feed_requests(client: &reqwest::Client, command: &TestApp) -> u64 {
    let text = client
        .get(command.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let sample = r#"http_requests_total{route="GET /events",status="200"} "#;
    text.lines()
        .find_map(|l| l.strip_prefix(sample))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

#[tokio::test]
async fn replay_reads_a_log_longer_than_a_page_page_by_page() {
    let names = Names::new();
    let (command, database_url) = spawn_command(&names).await;
    let client = reqwest::Client::new();
    // 5 todos, 3 updated twice, 1 deleted: 12 events.
    let mut ids = Vec::new();
    for i in 0..5 {
        let created: Value = write(
            &client,
            "POST",
            command.url("/todos"),
            Some(json!({ "title": format!("paged {i}") })),
        )
        .await
        .json()
        .await
        .expect("json");
        ids.push(created["id"].as_i64().expect("id"));
    }
    for id in &ids[..3] {
        for body in [
            json!({ "completed": true }),
            json!({ "description": "again" }),
        ] {
            let url = command.url(&format!("/todos/{id}"));
            assert_eq!(write(&client, "PATCH", url, Some(body)).await.status(), 200);
        }
    }
    let url = command.url(&format!("/todos/{}", ids[4]));
    assert_eq!(write(&client, "DELETE", url, None).await.status(), 204);
    let log: Vec<Value> = get_json(&client, &command.url("/events?after=0&limit=1000")).await;
    let events = 12;
    assert_eq!(log.len(), events, "the log: {log:?}");
    let last_position = log[events - 1]["position"].as_i64().expect("position");

    // Pages of 5 (5, 5, 2), of 4 (4, 4, 4, then an empty page: the log ends on a page's edge)
    // and of 1: each into an empty read model of its own.
    for (page_size, pages) in [(5, 3), (4, 4), (1, 13)] {
        let mongo_db = format!("{}_page{page_size}", names.mongo_db);
        let store = query_service::store::Store::connect(&mongodb_uri(), &mongo_db)
            .await
            .expect("MongoDB");
        let before = feed_requests(&client, &command).await;
        let report = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            query_service::replay::replay_with_page_size(&store, &command.address, None, page_size),
        )
        .await
        .unwrap_or_else(|_| panic!("pages of {page_size}: replay ends within 30 s"))
        .expect("replay");
        assert_eq!(
            (report.read, report.applied, report.skipped),
            (events as u64, events as u64, 0),
            "pages of {page_size}: every event read and applied once"
        );
        assert_eq!(report.last_position, last_position, "pages of {page_size}");
        assert_eq!(
            feed_requests(&client, &command).await - before,
            pages,
            "pages of {page_size}: pages read"
        );
        let diffs = differences(&database_url, &mongodb_uri(), &mongo_db).await;
        assert!(diffs.is_empty(), "pages of {page_size}: {diffs:#?}");
        mongodb::Client::with_uri_str(mongodb_uri())
            .await
            .expect("MongoDB")
            .database(&mongo_db)
            .drop()
            .await
            .expect("drop the page's database");
    }
    command.stop().await;
    names.cleanup().await;
}
