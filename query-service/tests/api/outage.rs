//! Tests that stop a shared service or kill a process. nextest runs them alone.

use crate::convergence::differences;
use crate::helpers::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    eventually(Duration::from_secs(20), "the first 10 applied", || async {
        settled_by(&client, &query.address).await == 10.0
    })
    .await;
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
    // The consumer met the outage: the events written meanwhile reached it, and it is retrying
    // their write (each try fails after the driver's 3 s server selection timeout).
    eventually(
        Duration::from_secs(30),
        "the consumer found MongoDB unavailable and retried",
        || async { metric(&client, &query, "projection_store_unavailable_total").await >= 2.0 },
    )
    .await;
    assert_eq!(
        settled_by(&client, &query.address).await,
        10.0,
        "nothing settled while MongoDB is away"
    );
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
    assert_eq!(
        metric(&client, &query, "projection_refusals_total").await,
        0.0,
        "a store away is waited for, not taken for a refusal of each event"
    );
    // /stats counts are at most a second old.
    eventually(Duration::from_secs(5), "29 live todos counted", || async {
        get_json::<Value>(&client, &query.url("/stats")).await["total"] == 29
    })
    .await;
    command.stop().await;
    query.stop().await;
    names.cleanup().await;
}

async fn consuming(client: &reqwest::Client, process: &Process) {
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
}

#[tokio::test]
async fn outage_query_service_killed_mid_stream_converges_after_restart() {
    let names = Names::new();
    let process = start_query_process(&names).await;
    let client = reqwest::Client::new();
    consuming(&client, &process).await;
    let (command, database_url) = spawn_command(&names).await;

    // Six writers at once, each creating todos, updating every third and deleting one of every
    // five: faster than the process projects them, so it works through a backlog in full
    // batches. They write until the process was killed, and five rounds more.
    const WRITERS: usize = 6;
    let written = Arc::new(AtomicUsize::new(0));
    let (kill_done, killed) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            let base = command.url("");
            let (written, killed) = (written.clone(), killed.clone());
            tokio::spawn(async move {
                let mut ids: Vec<i64> = Vec::new();
                let mut rounds_after_kill = 0;
                for i in 0..500 {
                    if *killed.borrow() {
                        rounds_after_kill += 1;
                        if rounds_after_kill > 5 {
                            break;
                        }
                    }
                    let todo: Value = client
                        .post(format!("{base}/todos"))
                        .json(&json!({"title": format!("stream {w}.{i}")}))
                        .send()
                        .await
                        .expect("post")
                        .json()
                        .await
                        .expect("json");
                    let id = todo["id"].as_i64().expect("id");
                    ids.push(id);
                    written.fetch_add(1, Ordering::SeqCst);
                    if i % 3 == 0 {
                        let r = client
                            .patch(format!("{base}/todos/{id}"))
                            .json(&json!({"completed": true, "description": "updated"}))
                            .send()
                            .await
                            .expect("patch");
                        assert_eq!(r.status(), 200);
                        written.fetch_add(1, Ordering::SeqCst);
                    }
                    if i % 5 == 4 {
                        // Each victim (the writer's 3rd, 8th, … todo) exists, deleted once.
                        let victim = ids[i - 2];
                        let r = client
                            .delete(format!("{base}/todos/{victim}"))
                            .send()
                            .await
                            .expect("delete");
                        assert_eq!(r.status(), 204, "delete of todo {victim}");
                        written.fetch_add(1, Ordering::SeqCst);
                    }
                }
                assert!(rounds_after_kill > 0, "the kill came while writing");
            })
        })
        .collect();
    // Killed once it has settled part of the stream and is behind the writers: the read model
    // is half built and the process is working through a batch with more queued.
    let settled = std::cell::Cell::new(0.0);
    eventually(
        Duration::from_secs(30),
        "the process settled part of the stream and is behind",
        || async {
            settled.set(settled_by(&client, &process.address).await);
            settled.get() >= 1.0 && written.load(Ordering::SeqCst) as f64 - settled.get() >= 20.0
        },
    )
    .await;
    let settled = settled.get();
    drop(process); // SIGKILL (Child::kill), then reaped
    let at_kill = written.load(Ordering::SeqCst);
    println!("killed having settled {settled} events, with {at_kill} written");
    let process = start_query_process(&names).await;
    kill_done.send(true).expect("writers wait");
    consuming(&client, &process).await;
    for writer in writers {
        writer.await.expect("writes succeed");
    }

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
    drop(process);
    command.stop().await;
    names.cleanup().await;
}

/// RabbitMQ stops and starts again under a running pair: query-service keeps answering reads
/// from MongoDB, `/ready` stays 200 (reads need MongoDB only) and reports the broker down; the
/// consumer reconnects once RabbitMQ is back (its connection attempts grow) and projects what
/// was written meanwhile.
#[tokio::test]
async fn outage_of_rabbitmq_query_service_reports_it_keeps_reading_and_reconnects() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let (command, database_url) = spawn_command(&names).await;
    let client = reqwest::Client::new();
    let create = |title: String| {
        let (client, url) = (client.clone(), command.url("/todos"));
        async move {
            let response = client
                .post(url)
                .json(&json!({ "title": title }))
                .send()
                .await
                .expect("post");
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.expect("json")["id"]
                .as_i64()
                .expect("id")
        }
    };
    let first = create("before".into()).await;
    eventually(
        Duration::from_secs(20),
        "the first todo applied",
        || async { settled_by(&client, &query.address).await == 1.0 },
    )
    .await;
    let ready: Value = get_json(&client, &query.url("/ready")).await;
    assert_eq!(ready["checks"]["rabbitmq"], "up", "{ready}");
    let attempts_before = metric(&client, &query, "consumer_connection_attempts_total").await;

    let restart = Restart("start-rabbitmq");
    services("stop-rabbitmq");
    eventually(
        Duration::from_secs(30),
        "/ready reports the broker down",
        || async {
            let response = client.get(query.url("/ready")).send().await.expect("ready");
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            assert_eq!(status, 200, "reads need MongoDB only: {body}");
            body["checks"]["rabbitmq"] == "down"
        },
    )
    .await;
    // Reads go on from the read model.
    let response = client
        .get(query.url(&format!("/todos/{first}")))
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), 200);
    // Writes go on too: command-service keeps them in its outbox.
    let mut during = Vec::new();
    for i in 0..5 {
        during.push(create(format!("during {i}")).await);
    }
    // The consumer keeps trying while the broker is away.
    eventually(
        Duration::from_secs(30),
        "the consumer tried to reconnect",
        || async {
            metric(&client, &query, "consumer_connection_attempts_total").await
                >= attempts_before + 1.0
        },
    )
    .await;
    assert_eq!(settled_by(&client, &query.address).await, 1.0);
    drop(restart);

    eventually(
        Duration::from_secs(60),
        "/ready reports the broker up again",
        || async {
            get_json::<Value>(&client, &query.url("/ready")).await["checks"]["rabbitmq"] == "up"
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "what was written during the outage is readable",
        || async {
            let mut all = true;
            for id in &during {
                let status = client
                    .get(query.url(&format!("/todos/{id}")))
                    .send()
                    .await
                    .expect("read")
                    .status();
                all &= status == 200;
            }
            all
        },
    )
    .await;
    let diffs = differences(&database_url, &mongodb_uri(), &names.mongo_db).await;
    assert!(diffs.is_empty(), "{diffs:?}");
    command.stop().await;
    query.stop().await;
    names.cleanup().await;
}
