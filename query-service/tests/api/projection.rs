use crate::helpers::*;
use chrono::{Duration as Span, TimeZone, Utc};
use events::{Envelope, EventType, Field, TodoState, SCHEMA_VERSION};
use query_service::store::{Outcome, Store, Stored};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;
use std::time::Duration;

fn event(todo_id: i64, version: i64, kind: EventType, title: &str, completed: bool) -> Envelope {
    let base = Utc
        .with_ymd_and_hms(2026, 11, 22, 10, 0, 0)
        .single()
        .expect("time");
    let at = base + Span::seconds(todo_id * 100 + version);
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: kind,
        schema_version: SCHEMA_VERSION,
        todo_id,
        version,
        position: todo_id * 100 + version,
        occurred_at: at,
        correlation_id: format!("test-{todo_id}-{version}"),
        causation_id: None,
        actor: None,
        data: (kind != EventType::TodoDeleted).then(|| TodoState {
            title: title.to_string(),
            description: None,
            completed,
            created_at: base + Span::seconds(todo_id * 100 + 1),
            updated_at: at,
            due_at: None,
            erased_at: None,
        }),
        changed: if kind == EventType::TodoUpdated {
            vec![Field::Title, Field::Completed]
        } else {
            Vec::new()
        },
    }
}

async fn stats(client: &reqwest::Client, query: &Running) -> Value {
    get_json(client, &query.url("/stats")).await
}

/// The seeds of the shuffles: `PROJECTION_SEED` alone when it is set (to replay a run), else
/// three new ones.
fn seeds() -> Vec<u64> {
    match std::env::var("PROJECTION_SEED") {
        Ok(seed) => vec![seed
            .trim()
            .parse()
            .expect("PROJECTION_SEED is an unsigned integer")],
        Err(_) => (0..3).map(|_| rand::random()).collect(),
    }
}

#[tokio::test]
async fn duplicated_and_shuffled_events_end_at_each_todos_last_version() {
    for seed in seeds() {
        println!("shuffle seed {seed} (PROJECTION_SEED={seed} replays it)");
        duplicated_and_shuffled(seed).await;
    }
}

async fn duplicated_and_shuffled(seed: u64) {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;

    // 20 todos: created, updated 1 to 4 times, every fourth one deleted at the end.
    let mut all = Vec::new();
    let mut last = Vec::new();
    for id in 1..=20_i64 {
        let updates = 1 + id % 4;
        all.push(event(
            id,
            1,
            EventType::TodoCreated,
            &format!("todo {id} v1"),
            false,
        ));
        for v in 2..=(1 + updates) {
            all.push(event(
                id,
                v,
                EventType::TodoUpdated,
                &format!("todo {id} v{v}"),
                v % 2 == 0,
            ));
        }
        let mut final_version = 1 + updates;
        let deleted = id % 4 == 0;
        if deleted {
            final_version += 1;
            all.push(event(id, final_version, EventType::TodoDeleted, "", false));
        }
        last.push((id, final_version, deleted));
    }
    let mut deliveries: Vec<&Envelope> = all.iter().chain(all.iter()).collect();
    deliveries.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    for e in &deliveries {
        publisher.publish(e).await;
    }

    let client = reqwest::Client::new();
    let total = deliveries.len() as i64;
    eventually(
        Duration::from_secs(30),
        &format!("seed {seed}: every delivery settled"),
        || async {
            let s = stats(&client, &query).await;
            s["projection"]["applied"].as_i64().unwrap_or(0)
                + s["projection"]["skipped_duplicates"].as_i64().unwrap_or(0)
                + s["projection"]["superseded"].as_i64().unwrap_or(0)
                == total
        },
    )
    .await;

    let store = Store::connect(&mongodb_uri(), &names.mongo_db)
        .await
        .expect("store");
    for (id, version, deleted) in last {
        let stored = store.get(id).await.expect("read").expect("document exists");
        assert_eq!(
            stored.version(),
            version,
            "seed {seed}: todo {id} ends at its last version"
        );
        let response = client
            .get(query.url(&format!("/todos/{id}")))
            .send()
            .await
            .expect("get");
        if deleted {
            assert!(
                matches!(stored, Stored::Deleted { .. }),
                "seed {seed}: todo {id} stays deleted"
            );
            assert_eq!(response.status(), 404, "seed {seed}: todo {id}");
        } else {
            assert_eq!(response.status(), 200, "seed {seed}: todo {id}");
            let todo: Value = response.json().await.expect("json");
            assert_eq!(todo["version"], version, "seed {seed}: todo {id}");
            assert_eq!(
                todo["title"],
                format!("todo {id} v{version}"),
                "seed {seed}: todo {id}"
            );
        }
    }
    // /stats counts are at most a second old.
    eventually(Duration::from_secs(5), "15 live todos counted", || async {
        stats(&client, &query).await["total"] == 15
    })
    .await;
    let s = stats(&client, &query).await;
    assert_eq!(s["projection"]["dead_lettered"], 0, "seed {seed}: {s}");
    assert!(
        s["projection"]["skipped_duplicates"].as_i64().expect("n")
            + s["projection"]["superseded"].as_i64().expect("n")
            >= all.len() as i64,
        "seed {seed}: every second copy is skipped or folded into a newer event: {s}"
    );
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn a_malformed_message_is_dead_lettered_and_the_next_good_one_applied() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;

    let poison: &[(&str, &[u8])] = &[
        ("todo.created", b"{ not json"),
        ("todo.created", br#"{"event_type":"TodoCreated"}"#),
        ("todo.updated", br#"[1,2,3]"#),
    ];
    for (key, body) in poison {
        publisher.publish_raw(key, body).await;
    }
    let good = event(7, 1, EventType::TodoCreated, "after the poison", false);
    publisher.publish(&good).await;

    let client = reqwest::Client::new();
    eventually(Duration::from_secs(20), "good event applied", || async {
        client
            .get(query.url("/todos/7"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "poison in the dead-letter queue",
        || async { queue_depth(&names.dead_letter_queue()).await == 3 },
    )
    .await;
    let s = stats(&client, &query).await;
    assert_eq!(s["projection"]["dead_lettered"], 3, "{s}");
    assert_eq!(
        queue_depth(&names.queue).await,
        0,
        "nothing left blocking the queue"
    );
    query.stop().await;
    names.cleanup().await;
}

/// Todo 1's document as MongoDB holds it, every field (also when it was projected).
async fn raw_document(names: &Names) -> bson::Document {
    mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("MongoDB")
        .database(&names.mongo_db)
        .collection::<bson::Document>("todos")
        .find_one(bson::doc! { "_id": 1_i64 })
        .await
        .expect("read")
        .expect("todo 1 has a document")
}

#[tokio::test]
async fn a_late_or_repeated_event_never_moves_a_todo_backwards_or_rewrites_it() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;
    let client = reqwest::Client::new();
    let v1 = event(1, 1, EventType::TodoCreated, "todo 1 v1", false);
    let v2 = event(1, 2, EventType::TodoUpdated, "todo 1 v2", true);
    let v3 = event(1, 3, EventType::TodoUpdated, "todo 1 v3", false);
    let v4 = event(1, 4, EventType::TodoDeleted, "", false);
    // Publishes one message and waits until it is settled: each is a batch of its own, so
    // the version guard alone decides (no folding within a batch).
    let mut sent = 0;
    let mut deliver = async |e: &Envelope| {
        publisher.publish(e).await;
        sent += 1;
        eventually(
            Duration::from_secs(10),
            &format!("version {} settled", e.version),
            || async { settled_in_stats(&client, &query).await == sent },
        )
        .await;
    };
    for e in [&v1, &v2, &v3] {
        deliver(e).await;
    }
    let at_v3 = raw_document(&names).await;
    assert_eq!(at_v3.get_i64("version"), Ok(3), "{at_v3}");

    for (why, e) in [("v3 again", &v3), ("v2 late", &v2), ("v1 late", &v1)] {
        deliver(e).await;
        assert_eq!(
            raw_document(&names).await,
            at_v3,
            "{why}: the document is not written again"
        );
        let todo: Value = get_json(&client, &query.url("/todos/1")).await;
        assert_eq!(
            (todo["version"].as_i64(), todo["title"].as_str()),
            (Some(3), Some("todo 1 v3")),
            "{why}: {todo}"
        );
    }
    let s = stats(&client, &query).await;
    assert_eq!(
        (
            s["projection"]["applied"].as_i64(),
            s["projection"]["skipped_duplicates"].as_i64()
        ),
        (Some(3), Some(3)),
        "each version applied once, each repeat skipped: {s}"
    );

    // A delete is final: no older version brings the todo back.
    deliver(&v4).await;
    let tombstone = raw_document(&names).await;
    for (why, e) in [("v3 after the delete", &v3), ("v1 after the delete", &v1)] {
        deliver(e).await;
        assert_eq!(raw_document(&names).await, tombstone, "{why}");
        let response = client.get(query.url("/todos/1")).send().await.expect("get");
        assert_eq!(response.status(), 404, "{why}");
    }
    query.stop().await;
    names.cleanup().await;
}

/// Another replica writes a todo between this replica's read and its write: the write meets
/// the changed document (a duplicate key from MongoDB), reads again, lands over what the other
/// wrote (it must not be counted a duplicate), and the counts of live and completed todos
/// move once for each write. A stale event is a duplicate without a write.
#[tokio::test]
async fn a_version_racing_another_replicas_insert_lands_on_the_second_try() {
    let names = Names::new();
    let store = Store::connect(&mongodb_uri(), &names.mongo_db)
        .await
        .expect("store");
    store.ensure_indexes().await.expect("indexes");
    let other = Store::connect(&mongodb_uri(), &names.mongo_db)
        .await
        .expect("store");
    store
        .apply_batch(&[event(2, 5, EventType::TodoUpdated, "newer", false)])
        .await
        .expect("seed");
    store
        .record(Default::default(), None, Default::default())
        .await
        .expect("recorded");
    let batch = [
        event(1, 2, EventType::TodoUpdated, "v2", true),
        event(2, 4, EventType::TodoUpdated, "old", false),
    ];
    let mut raced = 0;
    let results = store
        .apply_batch_racing(&batch, || {
            raced += 1;
            let other = other.clone();
            async move {
                // The other replica's version 1, between this one's read and its write.
                other
                    .apply_batch(&[event(1, 1, EventType::TodoCreated, "v1", false)])
                    .await
                    .expect("other replica");
                other
                    .record(Default::default(), None, Default::default())
                    .await
                    .expect("other recorded");
            }
        })
        .await
        .expect("batch");
    assert_eq!(raced, 1, "one race, before the first write");
    assert_eq!(
        results,
        vec![Some(Ok(Outcome::Applied)), Some(Ok(Outcome::Duplicate))],
        "the racing version lands, the stale one stays a duplicate"
    );
    store
        .record(Default::default(), None, Default::default())
        .await
        .expect("recorded");
    let (_, counts) = store.stats_and_counts().await.expect("stats");
    assert_eq!(counts, Some((2, 1)), "two live todos, one completed");
    let stored = store.get(1).await.expect("read").expect("stored");
    assert_eq!(stored.version(), 2);
    assert_eq!(
        store.get(2).await.expect("read").expect("stored").version(),
        5
    );
    names.cleanup().await;
}

/// A read model an earlier version wrote has no sort keys: the upgrade gives its live todos
/// theirs once (guarded by version), after which the time-ordered lists hold them again.
#[tokio::test]
async fn an_earlier_read_model_gets_its_sort_keys_once() {
    let names = Names::new();
    let store = Store::connect(&mongodb_uri(), &names.mongo_db)
        .await
        .expect("store");
    store.ensure_indexes().await.expect("indexes");
    let created = [1, 2, 3].map(|id| event(id, 1, EventType::TodoCreated, "old", id == 2));
    store.apply_all(&created).await.expect("applied");
    store
        .apply_all(&[event(3, 2, EventType::TodoDeleted, "", false)])
        .await
        .expect("deleted");
    store
        .record(
            Default::default(),
            None,
            query_service::store::Highest::of(&created),
        )
        .await
        .expect("recorded");
    // As an earlier version left them: no sort keys, no flag.
    let client = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("client");
    let db = client.database(&names.mongo_db);
    let unset = bson::doc! { "$unset": {
        "sort_created": "", "sort_updated": "", "sort_completed_created": "", "sort_completed_updated": "",
    } };
    db.collection::<bson::Document>("todos")
        .update_many(bson::doc! {}, unset)
        .await
        .expect("keys removed");
    db.collection::<bson::Document>("projection_stats")
        .update_one(bson::doc! {}, bson::doc! { "$unset": { "sort_keys": "" } })
        .await
        .expect("flag removed");
    let list = |sort| query_service::store::ListQuery {
        due_before: None,
        completed: None,
        sort,
        descending: true,
        limit: 10,
        after: None,
    };
    let ids = |page: Vec<query_service::store::Todo>| page.iter().map(|t| t.id).collect::<Vec<_>>();
    let (page, _) = store
        .list(&list(query_service::store::SortKey::CreatedAt))
        .await
        .expect("list");
    assert!(page.is_empty(), "no sort keys yet: {:?}", ids(page));

    assert_eq!(
        store.add_sort_keys().await.expect("added"),
        2,
        "the live todos"
    );
    assert_eq!(store.add_sort_keys().await.expect("again"), 0, "once");
    for sort in [
        query_service::store::SortKey::CreatedAt,
        query_service::store::SortKey::UpdatedAt,
    ] {
        let (page, _) = store.list(&list(sort)).await.expect("list");
        assert_eq!(ids(page), vec![2, 1], "{sort:?}");
    }
    names.cleanup().await;
}

/// Documents an earlier version wrote beside this one (a tombstone that kept its sort keys, a
/// todo whose key says another `completed`) are passed over without cutting a page short: every
/// live todo of the filter is listed once, and the walk goes on past them.
#[tokio::test]
async fn a_time_ordered_walk_passes_over_documents_with_stale_sort_keys() {
    let names = Names::new();
    let store = Store::connect(&mongodb_uri(), &names.mongo_db)
        .await
        .expect("store");
    store.ensure_indexes().await.expect("indexes");
    let created: Vec<_> = (1..=8)
        .map(|id| event(id, 1, EventType::TodoCreated, "t", id % 2 == 0))
        .collect();
    store.apply_all(&created).await.expect("applied");
    store
        .record(
            Default::default(),
            None,
            query_service::store::Highest::of(&created),
        )
        .await
        .expect("recorded");
    let todos = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("client")
        .database(&names.mongo_db)
        .collection::<bson::Document>("todos");
    // Todo 3 deleted by a writer that left its keys; todo 5's keys say completed.
    todos
        .update_one(
            bson::doc! { "_id": 3_i64 },
            bson::doc! { "$set": { "deleted": true, "version": 2_i64 }, "$unset": { "title": "", "completed": "" } },
        )
        .await
        .expect("stale tombstone");
    let five = todos
        .find_one(bson::doc! { "_id": 5_i64 })
        .await
        .expect("read")
        .expect("five");
    let stale = five
        .get_str("sort_completed_created")
        .expect("key")
        .replacen("0|", "1|", 1);
    todos
        .update_one(
            bson::doc! { "_id": 5_i64 },
            bson::doc! { "$set": { "sort_completed_created": stale } },
        )
        .await
        .expect("stale key");
    for (completed, expected) in [
        (None, vec![1, 2, 4, 5, 6, 7, 8]),
        (Some(true), vec![2, 4, 6, 8]),
        (Some(false), vec![1, 7]),
    ] {
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let q = query_service::store::ListQuery {
                due_before: None,
                completed,
                sort: query_service::store::SortKey::CreatedAt,
                descending: false,
                limit: 2,
                after: after.clone(),
            };
            let (page, next) = store.list(&q).await.expect("page");
            seen.extend(page.iter().map(|t| t.id));
            match next {
                Some(cursor) => after = Some(cursor),
                None => break,
            }
            assert!(seen.len() < 20, "the walk ends");
        }
        assert_eq!(seen, expected, "completed={completed:?}");
    }
    names.cleanup().await;
}
