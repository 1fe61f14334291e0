//! The event log as a feed: a reader never skips an event, even one that commits after it
//! read past its position, and each todo's events come in version order.

use crate::helpers::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

async fn page(app: &TestApp, after: i64, limit: i64) -> Vec<Value> {
    let response = app
        .client
        .get(app.url(&format!("/events?after={after}&limit={limit}")))
        .send()
        .await
        .expect("feed");
    assert_eq!(response.status(), 200);
    response.json().await.expect("feed JSON")
}

/// Reads the whole log from the start, page by page.
async fn whole_log(app: &TestApp) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let events = page(app, after, 1000).await;
        let Some(last) = events.last() else {
            return all;
        };
        after = last["position"].as_i64().expect("position");
        all.extend(events);
    }
}

#[tokio::test]
async fn a_reader_tailing_the_feed_during_concurrent_writes_reads_the_final_log_exactly() {
    let app = spawn_app_with(Options {
        extra: vec![("DATABASE_POOL_SIZE", "16".into())],
        ..Options::default()
    })
    .await;
    let app = Arc::new(app);
    let writing = Arc::new(AtomicBool::new(true));

    // 12 writers: each creates todos and updates each a few times, so commits of many
    // transactions interleave and one todo's events follow each other closely.
    let mut writers = Vec::new();
    for w in 0..12 {
        let app = app.clone();
        writers.push(tokio::spawn(async move {
            for t in 0..8 {
                let id = app.create(&format!("writer {w} todo {t}")).await["id"]
                    .as_i64()
                    .expect("id");
                for v in 0..3 {
                    let body = format!(r#"{{"title":"writer {w} todo {t} edit {v}"}}"#);
                    let response = app
                        .send("PATCH", &format!("/todos/{id}"), Some(&body))
                        .await;
                    assert_eq!(response.status(), 200);
                }
            }
        }));
    }

    // The reader tails the feed with small pages while the writers run.
    let reader = {
        let app = app.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut read: Vec<Value> = Vec::new();
            let mut after = 0;
            let mut pages = 0;
            loop {
                let done = !writing.load(Ordering::SeqCst);
                let events = page(&app, after, 7).await;
                pages += 1;
                if let Some(last) = events.last() {
                    after = last["position"].as_i64().expect("position");
                }
                let empty = events.is_empty();
                read.extend(events);
                // Writers finished before this page was asked for, and it was empty: the end.
                if done && empty {
                    return (read, pages);
                }
            }
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    writing.store(false, Ordering::SeqCst);
    let (read, pages) = reader.await.expect("reader");
    assert!(
        pages > 10,
        "the reader read while writes went on ({pages} pages)"
    );

    let log = whole_log(&app).await;
    assert_eq!(log.len(), 12 * 8 * 4, "every accepted write has its event");
    let ids = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["event_id"].as_str().expect("event_id").to_string())
            .collect()
    };
    assert_eq!(
        ids(&read),
        ids(&log),
        "the tailing reader saw exactly the final log, in its order"
    );
    let distinct: HashSet<String> = ids(&read).into_iter().collect();
    assert_eq!(distinct.len(), read.len(), "no event twice");

    let positions: Vec<i64> = log
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect();
    assert_eq!(
        positions,
        (1..=log.len() as i64).collect::<Vec<_>>(),
        "positions are gapless and increasing"
    );
    let mut last_version: HashMap<i64, i64> = HashMap::new();
    for e in &log {
        let todo = e["todo_id"].as_i64().expect("todo_id");
        let version = e["version"].as_i64().expect("version");
        let previous = last_version.insert(todo, version).unwrap_or(0);
        assert_eq!(
            version,
            previous + 1,
            "todo {todo}'s events in version order"
        );
    }
    match Arc::try_unwrap(app) {
        Ok(app) => app.stop().await,
        Err(_) => panic!("app still shared"),
    }
}
