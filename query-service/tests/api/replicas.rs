//! Two query-service processes consume one queue (competing consumers, as the compose file
//! and deploy/k8s run them) under a burst of writes, with `replay` running beside them.

use crate::convergence::differences;
use crate::helpers::*;
use query_service::replay::replay_with_page_size;
use query_service::store::Store;
use serde_json::{json, Value};
use std::time::Duration;

/// Each process takes part of the burst (both settle events), the two together settle every
/// message once, and the read model ends equal to PostgreSQL both ways although the versions
/// of one todo land on different processes in any order, and a replay of the whole log, run
/// again and again meanwhile, writes older versions beside them.
#[tokio::test]
async fn two_query_services_on_one_queue_and_a_replay_beside_them_converge_under_a_burst() {
    let names = Names::new();
    let a = start_query_process(&names).await;
    let b = start_query_process(&names).await;
    let (command, database_url) = spawn_command(&names).await;
    let client = reqwest::Client::new();
    for process in [&a, &b] {
        eventually(Duration::from_secs(30), "process consuming", || async {
            get_json::<Value>(&client, &format!("{}/ready", process.address)).await["checks"]
                ["rabbitmq"]
                == "up"
        })
        .await;
    }

    // Eight writers: each creates 40 todos, updates each twice at once after creating it, and
    // deletes every fourth; the versions of one todo follow each other within milliseconds.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (client, base) = (client.clone(), command.url(""));
            tokio::spawn(async move {
                let mut events = 0u32;
                for i in 0..40 {
                    let todo: Value = client
                        .post(format!("{base}/todos"))
                        .json(&json!({ "title": format!("burst {w}.{i}") }))
                        .send()
                        .await
                        .expect("post")
                        .json()
                        .await
                        .expect("json");
                    let id = todo["id"].as_i64().expect("id");
                    for body in [json!({"completed": true}), json!({"title": "renamed"})] {
                        let r = client
                            .patch(format!("{base}/todos/{id}"))
                            .json(&body)
                            .send()
                            .await
                            .expect("patch");
                        assert_eq!(r.status(), 200);
                    }
                    events += 3;
                    if i % 4 == 3 {
                        let r = client
                            .delete(format!("{base}/todos/{id}"))
                            .send()
                            .await
                            .expect("delete");
                        assert_eq!(r.status(), 204);
                        events += 1;
                    }
                }
                events
            })
        })
        .collect();
    // Replays in pages of 25 while the burst lands, until it has ended.
    let replays = {
        let (names, url) = (names.mongo_db.clone(), command.url(""));
        let writers_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = writers_done.clone();
        let task = tokio::spawn(async move {
            let store = Store::connect(&mongodb_uri(), &names).await.expect("store");
            let mut runs = 0;
            let mut last = None;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || runs == 0 {
                last = Some(
                    replay_with_page_size(&store, &url, None, 25)
                        .await
                        .expect("replay beside the consumers"),
                );
                runs += 1;
            }
            (runs, last.expect("one replay"))
        });
        (task, writers_done)
    };
    let mut written = 0;
    for writer in writers {
        written += writer.await.expect("writer");
    }
    replays.1.store(true, std::sync::atomic::Ordering::SeqCst);
    let (runs, report) = replays.0.await.expect("replays");
    println!("{written} events written; {runs} replays, the last: {report:?}");
    assert_eq!(written, 8 * (40 * 3 + 10));

    eventually(
        Duration::from_secs(90),
        "both processes together settled every event",
        || async {
            settled_by(&client, &a.address).await + settled_by(&client, &b.address).await
                >= f64::from(written)
        },
    )
    .await;
    let (by_a, by_b) = (
        settled_by(&client, &a.address).await,
        settled_by(&client, &b.address).await,
    );
    println!("settled: {by_a} by one process, {by_b} by the other");
    assert!(by_a > 0.0 && by_b > 0.0, "both consumed: {by_a} and {by_b}");
    assert_eq!(
        by_a + by_b,
        f64::from(written),
        "every message settled once, none twice"
    );
    let diffs = differences(&database_url, &mongodb_uri(), &names.mongo_db).await;
    assert!(diffs.is_empty(), "{diffs:?}");
    let stats: Value = get_json(&client, &format!("{}/stats", a.address)).await;
    assert_eq!(stats["projection"]["dead_lettered"], 0, "{stats}");
    drop((a, b));
    command.stop().await;
    names.cleanup().await;
}
