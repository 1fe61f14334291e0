use crate::helpers::*;
use chrono::{Duration as Span, TimeZone, Utc};
use events::{Envelope, EventType, TodoState, SCHEMA_VERSION};
use serde_json::Value;
use std::time::{Duration, Instant};

fn created(todo_id: i64, completed: bool) -> Envelope {
    let base = Utc
        .with_ymd_and_hms(2026, 11, 22, 9, 0, 0)
        .single()
        .expect("time");
    // created_at runs backwards with the id, so sorting by it differs from sorting by id.
    let at = base + Span::seconds(1000 - todo_id);
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: EventType::TodoCreated,
        schema_version: SCHEMA_VERSION,
        todo_id,
        version: 1,
        position: todo_id,
        occurred_at: at,
        correlation_id: "reads".into(),
        data: Some(TodoState {
            title: format!("todo {todo_id}"),
            description: None,
            completed,
            created_at: at,
            updated_at: at,
        }),
        changed: Vec::new(),
    }
}

fn next_link(response: &reqwest::Response) -> Option<String> {
    let link = response.headers().get("link")?.to_str().ok()?;
    let start = link.find('<')? + 1;
    let end = link.find('>')?;
    assert!(link.ends_with("rel=\"next\""), "{link}");
    Some(link[start..end].to_string())
}

async fn walk(client: &reqwest::Client, query: &Running, first: &str) -> (Vec<i64>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut next = Some(first.to_string());
    while let Some(path) = next {
        let response = client.get(query.url(&path)).send().await.expect("page");
        assert_eq!(response.status(), 200, "{path}");
        next = next_link(&response);
        let page: Vec<Value> = response.json().await.expect("json array");
        ids.extend(page.iter().map(|t| t["id"].as_i64().expect("id")));
        pages += 1;
        assert!(pages < 50, "pagination ends");
    }
    (ids, pages)
}

#[tokio::test]
async fn lists_filter_sort_and_paginate_with_link_headers() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;
    for id in 1..=25 {
        publisher.publish(&created(id, id % 3 == 0)).await;
    }
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(20), "all 25 projected", || async {
        let s: Value = get_json(&client, &query.url("/stats")).await;
        s["total"] == 25
    })
    .await;

    let (ids, pages) = walk(&client, &query, "/todos?limit=10").await;
    assert_eq!(ids, (1..=25).collect::<Vec<i64>>());
    assert_eq!(pages, 3);

    let (ids, _) = walk(&client, &query, "/todos?limit=4&sort=-id").await;
    assert_eq!(ids, (1..=25).rev().collect::<Vec<i64>>());

    // created_at runs backwards with the id.
    let (ids, _) = walk(&client, &query, "/todos?limit=7&sort=created_at").await;
    assert_eq!(ids, (1..=25).rev().collect::<Vec<i64>>());
    let (ids, _) = walk(&client, &query, "/todos?limit=7&sort=-updated_at").await;
    assert_eq!(ids, (1..=25).collect::<Vec<i64>>());

    let (ids, _) = walk(&client, &query, "/todos?completed=true&limit=3").await;
    assert_eq!(ids, (1..=25).filter(|i| i % 3 == 0).collect::<Vec<i64>>());
    let (ids, _) = walk(&client, &query, "/todos?completed=false&limit=100").await;
    assert_eq!(ids.len(), 17);
    query.stop().await;
    names.cleanup().await;
}

fn deleted(todo_id: i64) -> Envelope {
    let mut e = created(todo_id, false);
    e.event_id = uuid::Uuid::new_v4();
    e.event_type = EventType::TodoDeleted;
    e.version = 2;
    e.data = None;
    e
}

#[tokio::test]
async fn lists_in_id_order_skip_deleted_todos_and_page_past_long_gaps() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;
    for id in 1..=60 {
        publisher.publish(&created(id, id % 7 == 0)).await;
    }
    // A run of 40 deleted todos: longer than several windows of a small page.
    for id in 11..=50 {
        publisher.publish(&deleted(id)).await;
    }
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(20),
        "all 100 events projected",
        || async {
            let s: Value = get_json(&client, &query.url("/stats")).await;
            s["total"] == 20 && s["projection"]["applied"].as_i64().unwrap_or(0) > 0
        },
    )
    .await;
    let live: Vec<i64> = (1..=10).chain(51..=60).collect();

    let (ids, pages) = walk(&client, &query, "/todos?limit=4").await;
    assert_eq!(ids, live);
    assert_eq!(pages, 5, "full pages; the last one knows nothing follows");
    let (ids, _) = walk(&client, &query, "/todos?limit=4&sort=-id").await;
    assert_eq!(ids, live.iter().rev().copied().collect::<Vec<i64>>());
    let (ids, _) = walk(&client, &query, "/todos?completed=true&limit=2").await;
    assert_eq!(ids, vec![7, 56]);
    let (ids, _) = walk(&client, &query, "/todos?completed=true&limit=2&sort=-id").await;
    assert_eq!(ids, vec![56, 7]);
    let (ids, pages) = walk(&client, &query, "/todos?limit=200").await;
    assert_eq!((ids, pages), (live, 1));
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn bad_reads_get_problem_json() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let client = reqwest::Client::new();
    let cases: &[(&str, &str, &str, u16)] = &[
        (
            "completed not a boolean",
            "GET",
            "/todos?completed=maybe",
            400,
        ),
        ("limit zero", "GET", "/todos?limit=0", 400),
        ("limit too large", "GET", "/todos?limit=1000", 400),
        ("unknown sort", "GET", "/todos?sort=priority", 400),
        ("forged cursor", "GET", "/todos?cursor=abc", 400),
        ("unknown parameter", "GET", "/todos?page=2", 400),
        ("min_version zero", "GET", "/todos/1?min_version=0", 400),
        (
            "min_version not a number",
            "GET",
            "/todos/1?min_version=x",
            400,
        ),
        ("unknown todo", "GET", "/todos/424242", 404),
        ("non-numeric id", "GET", "/todos/abc", 404),
        ("zero id", "GET", "/todos/0", 404),
        ("unknown route", "GET", "/nowhere", 404),
        ("writes go to the command side", "POST", "/todos", 405),
        ("no deletes here", "DELETE", "/todos/1", 405),
    ];
    for (why, method, path, status) in cases {
        let response = client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                query.url(path),
            )
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), *status, "{why}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{why}"
        );
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["status"], *status, "{why}");
        assert!(
            problem["title"].is_string()
                && problem["detail"].is_string()
                && problem["type"].is_string(),
            "{why}"
        );
    }
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn a_min_version_waiter_beyond_the_budget_is_answered_503_at_once() {
    let names = Names::new();
    // MIN_VERSION_WAIT_MS is 5000 for tests.
    let query = spawn_query_with(&names, &[("MIN_VERSION_MAX_WAITERS", "1")]).await;
    wait_for_consumer(&query).await;
    let publisher = publisher(&names.exchange).await;
    publisher.publish(&created(1, false)).await;
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(10), "todo 1 projected", || async {
        client
            .get(query.url("/todos/1"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    // The one waiter the budget allows, for a version that never comes.
    let waiter = tokio::spawn({
        let client = client.clone();
        let url = query.url("/todos/1?min_version=5");
        async move {
            let started = Instant::now();
            let status = client.get(url).send().await.expect("sent").status();
            (status, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let response = client
        .get(query.url("/todos/1?min_version=3"))
        .send()
        .await
        .expect("sent");
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(
        took < Duration::from_millis(1000),
        "answered without waiting, took {took:?}"
    );
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/read-model-behind", "{problem}");

    // A read that needs no wait is served while the budget is spent.
    let response = client
        .get(query.url("/todos/1?min_version=1"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);

    let (status, waited) = waiter.await.expect("waiter");
    assert_eq!(status, 503);
    assert!(waited >= Duration::from_millis(4500), "waited {waited:?}");

    // The budget is given back: the next waiter waits, and gets its version.
    let waiter = tokio::spawn({
        let client = client.clone();
        let url = query.url("/todos/1?min_version=2");
        async move { client.get(url).send().await.expect("sent").status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut update = created(1, true);
    update.event_type = EventType::TodoUpdated;
    update.version = 2;
    update.changed = vec![events::Field::Completed];
    publisher.publish(&update).await;
    assert_eq!(waiter.await.expect("waiter"), 200);
    query.stop().await;
    names.cleanup().await;
}
