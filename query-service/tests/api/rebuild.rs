//! `query-service rebuild` builds a new generation of the read model beside the live one while
//! reads and writes go on, is taken up where it stopped, switches every reader at once, and
//! drops the old generation after its grace period.

use crate::helpers::*;
use query_service::rebuild::{rebuild, Options};
use query_service::store::Store;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Pages through `GET /todos` (id order, pages of 10) again and again until `stop`, holding
/// each pass to everything seen before: no todo seen earlier is missing (the writes create
/// and update, never delete) and none is at an older version. Returns the regressions seen,
/// the passes made and the generations `/stats` named between passes.
async fn read_throughout(base: String, stop: Arc<AtomicBool>) -> (Vec<String>, usize, Vec<i64>) {
    let client = reqwest::Client::new();
    let mut seen: HashMap<i64, i64> = HashMap::new();
    let mut regressions = Vec::new();
    let mut passes = 0;
    let mut generations = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut this_pass: HashMap<i64, i64> = HashMap::new();
        let mut url = format!("{base}/todos?limit=10");
        loop {
            let response = client.get(&url).send().await.expect("a page");
            assert_eq!(response.status(), 200, "{url}");
            // The next page is the `Link` header's `rel="next"`.
            let next = response
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix('<')?.split_once('>'))
                .map(|(path, _)| format!("{base}{path}"));
            let page: Vec<Value> = response.json().await.expect("a page of todos");
            for todo in &page {
                let id = todo["id"].as_i64().expect("id");
                let version = todo["version"].as_i64().expect("version");
                if seen.get(&id).is_some_and(|&before| version < before) {
                    regressions.push(format!(
                        "pass {passes}: todo {id} at version {version} after {}",
                        seen[&id]
                    ));
                }
                this_pass.insert(id, version);
            }
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        for id in seen.keys() {
            if !this_pass.contains_key(id) {
                regressions.push(format!("pass {passes}: todo {id} missing"));
            }
        }
        for (id, version) in this_pass {
            let kept = seen.entry(id).or_insert(version);
            *kept = (*kept).max(version);
        }
        passes += 1;
        let stats: Value = get_json(&client, &format!("{base}/stats")).await;
        let generation = stats["read_model"]["generation"]
            .as_i64()
            .expect("generation");
        if generations.last() != Some(&generation) {
            generations.push(generation);
        }
    }
    (regressions, passes, generations)
}

#[tokio::test]
async fn rebuild_beside_the_live_read_model_switches_readers_without_a_regression() {
    let names = Names::new();
    let (command, _database) = spawn_command(&names).await;
    let query = spawn_query(&names).await;
    let client = reqwest::Client::new();
    let titles: Vec<String> = (0..40).map(|k| format!("todo {k}")).collect();
    let titles: Vec<&str> = titles.iter().map(String::as_str).collect();
    let ids = create_todos(&client, &command, &titles).await;
    eventually(
        Duration::from_secs(20),
        "the read model holds the first 40",
        || async { get_json::<Value>(&client, &query.url("/stats")).await["total"] == 40 },
    )
    .await;

    // Writes go on throughout: a create and an update every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, command, ids) = (stop.clone(), command.address.clone(), ids.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let created = write(
                    &client,
                    "POST",
                    format!("{command}/todos"),
                    Some(json!({ "title": format!("during {k}") })),
                )
                .await;
                assert_eq!(created.status(), 201);
                let id = ids[k % ids.len()];
                let patched = write(
                    &client,
                    "PATCH",
                    format!("{command}/todos/{id}"),
                    Some(json!({ "completed": k.is_multiple_of(2) })),
                )
                .await;
                assert_eq!(patched.status(), 200);
                k += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            k
        })
    };
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(read_throughout(query.address.clone(), reader_stop.clone()));

    let store = Store::connect(&mongodb_uri(), &names.mongo_db)
        .await
        .expect("store");
    store.ensure_indexes().await.expect("indexes");
    // Stopped after two pages of ten: as if killed half way through the log.
    let options = Options {
        grace: Duration::from_secs(2),
        page_size: 10,
        stop_after_pages: Some(2),
        share: 100,
        ..Options::default()
    };
    let first = rebuild(&store, &command.address, None, &options)
        .await
        .expect("the first rebuild runs");
    assert!(!first.switched, "{first}");
    assert_eq!((first.generation, first.resumed_from), (1, 0), "{first}");
    assert!(first.log.last_position >= 20, "{first}");
    let stats: Value = get_json(&client, &query.url("/stats")).await;
    assert_eq!(stats["read_model"]["generation"], 0, "{stats}");
    eventually(
        Duration::from_secs(5),
        "/stats names the generation being built",
        || async {
            get_json::<Value>(&client, &query.url("/stats")).await["read_model"]["building"] == 1
        },
    )
    .await;

    // In-place repairs wait for the rebuild: they would write one generation of two.
    let refused = query_service::replay::replay(&store, &command.address, None)
        .await
        .expect_err("replay refuses to run beside a rebuild");
    assert!(
        refused.to_string().contains("a rebuild is under way"),
        "{refused:#}"
    );

    // Taken up where it stopped, then switched and the old generation dropped; the switch
    // held for 2 s after the log is read, while the consumer alone keeps the new generation
    // up to date with the writes.
    let options = Options {
        stop_after_pages: None,
        hold_switch: Duration::from_secs(2),
        ..options
    };
    let second = rebuild(&store, &command.address, None, &options)
        .await
        .expect("the rebuild is taken up");
    assert_eq!(second.generation, 1, "{second}");
    assert_eq!(second.resumed_from, first.log.last_position, "{second}");
    assert!(second.switched && second.retired, "{second}");
    assert_eq!(second.replaced, Some(0), "{second}");

    // Reads follow the pointer within a second, on this replica and a fresh one alike.
    eventually(
        Duration::from_secs(5),
        "reads follow the new generation",
        || async {
            get_json::<Value>(&client, &query.url("/stats")).await["read_model"]["generation"] == 1
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.expect("writer");
    reader_stop.store(true, Ordering::Relaxed);
    let (regressions, passes, generations) = reader.await.expect("reader");
    assert!(regressions.is_empty(), "the reader saw: {regressions:#?}");
    assert!(passes >= 3, "{passes} passes");
    assert_eq!(generations.last(), Some(&1), "{generations:?}");
    assert!(writes >= 10, "{writes} writes");

    let total = 40 + writes as u64;
    eventually(
        Duration::from_secs(20),
        "every write is readable",
        || async { get_json::<Value>(&client, &query.url("/stats")).await["total"] == total },
    )
    .await;
    let verified = query_service::verify::verify(&store, &command.address, None)
        .await
        .expect("verify runs");
    assert!(
        verified.differences.is_empty(),
        "the rebuilt read model differs from the log: {verified}"
    );
    assert_eq!(verified.compared as u64, total, "{verified}");

    // The old generation is gone, the new one serves.
    let mongo = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("MongoDB");
    let mut collections = mongo
        .database(&names.mongo_db)
        .list_collection_names()
        .await
        .expect("collections");
    collections.sort();
    assert_eq!(
        collections,
        ["projection_stats_1", "read_model", "todos_1"],
        "generation 0 dropped"
    );
    let fresh = spawn_query(&names).await;
    let stats: Value = get_json(&client, &fresh.url("/stats")).await;
    assert_eq!(stats["read_model"]["generation"], 1, "{stats}");
    assert_eq!(stats["total"], total, "{stats}");
    fresh.stop().await;

    query.stop().await;
    command.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn an_abandoned_rebuild_is_unnamed_and_dropped_and_reads_stay_where_they_were() {
    let names = Names::new();
    let (command, _database) = spawn_command(&names).await;
    let query = spawn_query(&names).await;
    let client = reqwest::Client::new();
    create_todos(&client, &command, &["one", "two", "three"]).await;
    eventually(
        Duration::from_secs(20),
        "the read model holds the three",
        || async { get_json::<Value>(&client, &query.url("/stats")).await["total"] == 3 },
    )
    .await;
    let store = Store::connect(&mongodb_uri(), &names.mongo_db)
        .await
        .expect("store");
    store.ensure_indexes().await.expect("indexes");
    let stopped = Options {
        page_size: 1,
        stop_after_pages: Some(1),
        ..Options::default()
    };
    let first = rebuild(&store, &command.address, None, &stopped)
        .await
        .expect("a rebuild stopped after a page");
    assert!(!first.switched, "{first}");
    let abandon = Options {
        abandon: true,
        ..Options::default()
    };
    let given_up = rebuild(&store, &command.address, None, &abandon)
        .await
        .expect("the rebuild is abandoned");
    assert!(given_up.abandoned, "{given_up}");
    let pointer = store.refresh_pointer().await.expect("pointer");
    assert_eq!(
        (pointer.current, pointer.building, pointer.preparing),
        (0, None, None),
        "{pointer:?}"
    );
    let mongo = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("MongoDB");
    let collections = mongo
        .database(&names.mongo_db)
        .list_collection_names()
        .await
        .expect("collections");
    assert!(
        !collections.iter().any(|c| c.ends_with("_1")),
        "generation 1 dropped: {collections:?}"
    );
    let stats: Value = get_json(&client, &query.url("/stats")).await;
    assert_eq!(stats["total"], 3, "{stats}");
    assert_eq!(stats["read_model"]["generation"], 0, "{stats}");
    // Repairs in place run again.
    query_service::replay::replay(&store, &command.address, None)
        .await
        .expect("replay runs once no rebuild is under way");

    query.stop().await;
    command.stop().await;
    names.cleanup().await;
}
