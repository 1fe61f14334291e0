//! `query-service verify` compares the read model with command-service's log, names every
//! difference, and `--repair` puts back what the version guard can.

use crate::helpers::*;
use bson::doc;
use serde_json::{json, Value};

/// Runs `query-service verify <command_url> [args]` as an operator would. Off the runtime's
/// thread: command-service answers from this test's runtime.
pub(crate) async fn run_verify(names: &Names, command_url: &str, args: &[&str]) -> (bool, String) {
    run_verify_with(names, command_url, args, &[]).await
}

/// [`run_verify`] with more variables (a `FEED_TOKEN`).
pub(crate) async fn run_verify_with(
    names: &Names,
    command_url: &str,
    args: &[&str],
    vars: &[(&str, &str)],
) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_query-service"));
    command
        .arg("verify")
        .arg(command_url)
        .args(args)
        .envs(vars.iter().copied())
        .env("MONGODB_URI", mongodb_uri())
        .env("MONGODB_DB", &names.mongo_db)
        .env("RUST_LOG", "warn");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("joined")
        .expect("query-service verify runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

#[tokio::test]
async fn verify_finds_each_difference_and_repair_puts_back_what_the_guard_can() {
    let names = Names::new();
    let (command, _database) = spawn_command(&names).await;
    let query = spawn_query(&names).await;
    let client = reqwest::Client::new();
    let ids = create_todos(&client, &command, &["one", "two", "three", "four"]).await;
    let patched = write(
        &client,
        "PATCH",
        command.url(&format!("/todos/{}", ids[1])),
        Some(json!({ "completed": true })),
    )
    .await;
    assert_eq!(patched.status(), 200);
    let deleted = write(
        &client,
        "DELETE",
        command.url(&format!("/todos/{}", ids[3])),
        None,
    )
    .await;
    assert_eq!(deleted.status(), 204);
    for (id, version) in [(ids[1], 2), (ids[3], 2)] {
        let read = client
            .get(query.url(&format!("/todos/{id}?min_version={version}")))
            .send()
            .await
            .expect("read");
        assert!(read.status() == 200 || read.status() == 404, "{id}");
    }

    let (ok, out) = run_verify(&names, &command.address, &[]).await;
    assert!(ok, "a converged read model verifies: {out}");
    assert!(
        out.contains("compared 4 todos (3 live, 1 deleted) folded from 6 events: 0 difference(s)"),
        "{out}"
    );

    // Break it in three ways a guard can repair and two it cannot.
    let mongo = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("mongo");
    let todos = mongo
        .database(&names.mongo_db)
        .collection::<bson::Document>("todos");
    todos
        .delete_one(doc! { "_id": ids[0] })
        .await
        .expect("delete");
    todos
        .update_one(
            doc! { "_id": ids[1] },
            doc! { "$set": { "version": 1_i64, "completed": false } },
        )
        .await
        .expect("set back");
    todos
        .update_one(
            doc! { "_id": ids[2] },
            doc! { "$set": { "title": "tampered" } },
        )
        .await
        .expect("tamper");
    todos
        .insert_one(doc! { "_id": 999_999_i64, "version": 1_i64, "deleted": true })
        .await
        .expect("insert");
    let (ok, out) = run_verify(&names, &command.address, &[]).await;
    assert!(!ok, "differences exit non-zero: {out}");
    for expected in [
        format!("todo {}: missing from the read model", ids[0]),
        format!(
            "todo {}: the read model has it live at version 1, the log live at version 2",
            ids[1]
        ),
        format!(
            "todo {}: at version 1 the read model has title \"tampered\" (log \"three\")",
            ids[2]
        ),
        "todo 999999: in the read model, but the log has no event for it".to_string(),
        "4 difference(s)".to_string(),
    ] {
        assert!(out.contains(&expected), "{expected:?} in {out}");
    }

    let (ok, out) = run_verify(&names, &command.address, &["--repair"]).await;
    assert!(!ok, "what the guard cannot repair is still reported: {out}");
    let after = out
        .split("verify after repair:")
        .nth(1)
        .expect("a second verification");
    assert!(after.contains("2 difference(s)"), "{out}");
    assert!(
        !after.contains(&format!("todo {}:", ids[0])),
        "put back: {out}"
    );
    assert!(
        !after.contains(&format!("todo {}:", ids[1])),
        "moved forward: {out}"
    );
    assert!(
        after.contains(&format!("todo {}:", ids[2])),
        "same version, left: {out}"
    );
    query.stop().await;
    command.stop().await;
    names.cleanup().await;
}

/// A document ahead of the log (a version the log never reached, as a forged event or a hand
/// edit leaves it) is kept for ever by the version guard; `--repair` puts it back to the log's
/// state, live or deleted, and the highest todo id back to the log's, so lists in id order
/// walk from the real ids again.
#[tokio::test]
async fn repair_puts_back_a_document_ahead_of_the_log_and_the_highest_id() {
    let names = Names::new();
    let (command, _database) = spawn_command(&names).await;
    let query = spawn_query(&names).await;
    let client = reqwest::Client::new();
    let ids = create_todos(&client, &command, &["pinned", "resurrected"]).await;
    for id in &ids {
        let read = client
            .get(query.url(&format!("/todos/{id}?min_version=1")))
            .send()
            .await
            .expect("read");
        assert_eq!(read.status(), 200);
    }
    let mongo = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("mongo");
    let db = mongo.database(&names.mongo_db);
    let todos = db.collection::<bson::Document>("todos");
    todos
        .update_one(
            doc! { "_id": ids[0] },
            doc! { "$set": { "version": events::limits::MAX_ID, "title": "forged" } },
        )
        .await
        .expect("pin");
    todos
        .update_one(
            doc! { "_id": ids[1] },
            doc! {
                "$set": { "version": 50_i64, "deleted": true, "deleted_at": "2026-12-01T00:00:00.000000Z" },
                "$unset": { "title": "", "description": "", "completed": "" },
            },
        )
        .await
        .expect("delete ahead");
    db.collection::<bson::Document>("projection_stats")
        .update_one(
            doc! { "_id": "todos" },
            doc! { "$set": { "max_todo_id": events::limits::MAX_ID } },
        )
        .await
        .expect("forge the highest id");
    let listed: Value = get_json(&client, &query.url("/todos?sort=-id")).await;
    assert_eq!(listed, json!([]), "the forged highest id hides the list");

    let (ok, out) = run_verify(&names, &command.address, &["--repair"]).await;
    assert!(ok, "everything put back: {out}");
    for expected in [
        format!(
            "todo {}: the read model has it live at version {}, the log live at version 1",
            ids[0],
            events::limits::MAX_ID
        ),
        format!(
            "todo {}: the read model has it deleted at version 50, the log live at version 1",
            ids[1]
        ),
        "put 2 document(s) ahead of the log back".to_string(),
    ] {
        assert!(out.contains(&expected), "{expected:?} in {out}");
    }
    let after = out
        .split("verify after repair:")
        .nth(1)
        .expect("a second verification");
    assert!(after.contains("0 difference(s)"), "{out}");
    let listed: Vec<Value> = get_json(&client, &query.url("/todos?sort=-id")).await;
    let titles: Vec<&str> = listed.iter().filter_map(|t| t["title"].as_str()).collect();
    assert_eq!(titles, ["resurrected", "pinned"], "{listed:?}");
    query.stop().await;
    command.stop().await;
    names.cleanup().await;
}
