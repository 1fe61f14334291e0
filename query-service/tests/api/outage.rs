//! Tests that stop a shared service or kill a process. nextest runs them alone.

use crate::convergence::differences;
use crate::helpers::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn outage_of_mongodb_during_writes_loses_nothing_and_dead_letters_nothing() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let (command, database_url) = spawn_command(&names).await;
    let client = reqwest::Client::new();

    let mut ids = Vec::new();
    for i in 0..10 {
        let todo: Value = client
            .post(command.url("/todos"))
            .json(&json!({"title": format!("before {i}")}))
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        ids.push(todo["id"].as_i64().expect("id"));
    }
    let restart = Restart("start-mongo");
    services("stop-mongo");
    for i in 0..20 {
        let response = client
            .post(command.url("/todos"))
            .json(&json!({"title": format!("during {i}")}))
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 201);
    }
    for id in &ids {
        let response = client
            .patch(command.url(&format!("/todos/{id}")))
            .json(&json!({"completed": true}))
            .send()
            .await
            .expect("patch");
        assert_eq!(response.status(), 200);
    }
    let response = client
        .delete(command.url(&format!("/todos/{}", ids[0])))
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    // Reads fail loudly while the store is away.
    let ready = client.get(query.url("/ready")).send().await.expect("ready");
    assert_eq!(ready.status(), 503);
    let response = client.get(query.url("/todos")).send().await.expect("list");
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(restart);

    eventually(
        Duration::from_secs(60),
        "read model converged after MongoDB returned",
        || async {
            differences(&database_url, &mongodb_uri(), &names.mongo_db)
                .await
                .is_empty()
        },
    )
    .await;
    let stats: Value = get_json(&client, &query.url("/stats")).await;
    assert_eq!(stats["projection"]["dead_lettered"], 0, "{stats}");
    assert_eq!(queue_depth(&names.dead_letter_queue()).await, 0);
    // /stats counts are at most a second old.
    eventually(Duration::from_secs(5), "29 live todos counted", || async {
        get_json::<Value>(&client, &query.url("/stats")).await["total"] == 29
    })
    .await;
    command.stop().await;
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn outage_query_service_killed_mid_stream_converges_after_restart() {
    let names = Names::new();
    let mut process = start_query_process(&names).await;
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "query-service process consuming",
        || async {
            match client
                .get(format!("{}/ready", process.address))
                .send()
                .await
            {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|b| b["checks"]["rabbitmq"] == "up"),
                Err(_) => false,
            }
        },
    )
    .await;
    let (command, database_url) = spawn_command(&names).await;

    // A stream of writes; the process is killed part-way through it.
    let writer = {
        let client = client.clone();
        let base = command.url("");
        tokio::spawn(async move {
            let mut ids: Vec<i64> = Vec::new();
            for i in 0..150 {
                let todo: Value = client
                    .post(format!("{base}/todos"))
                    .json(&json!({"title": format!("stream {i}")}))
                    .send()
                    .await
                    .expect("post")
                    .json()
                    .await
                    .expect("json");
                let id = todo["id"].as_i64().expect("id");
                ids.push(id);
                if i % 3 == 0 {
                    let r = client
                        .patch(format!("{base}/todos/{id}"))
                        .json(&json!({"completed": true, "description": "updated"}))
                        .send()
                        .await
                        .expect("patch");
                    assert_eq!(r.status(), 200);
                }
                if i % 10 == 0 && i > 0 {
                    let victim = ids[i / 2];
                    let r = client
                        .delete(format!("{base}/todos/{victim}"))
                        .send()
                        .await
                        .expect("delete");
                    assert!(r.status() == 204 || r.status() == 404);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    process.child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
    process.child.wait().expect("reaped");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut process = start_query_process(&names).await;
    writer.await.expect("writes succeed");

    eventually(
        Duration::from_secs(60),
        "read model converged after the restart",
        || async {
            differences(&database_url, &mongodb_uri(), &names.mongo_db)
                .await
                .is_empty()
        },
    )
    .await;
    let diffs = differences(&database_url, &mongodb_uri(), &names.mongo_db).await;
    assert!(diffs.is_empty(), "{diffs:?}");
    process.child.kill().expect("stop");
    let _ = process.child.wait();
    command.stop().await;
    names.cleanup().await;
}
