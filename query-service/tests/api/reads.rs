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
        causation_id: None,
        actor: None,
        data: Some(TodoState {
            title: format!("todo {todo_id}"),
            description: None,
            completed,
            created_at: at,
            updated_at: at,
            due_at: None,
            erased_at: None,
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
        (
            "a time cursor without its time",
            "GET",
            "/todos?cursor=created_at~all~7",
            400,
        ),
        (
            "min_version past 2^53 - 1",
            "GET",
            "/todos/1?min_version=9007199254740992",
            400,
        ),
        ("an id past 2^53 - 1", "GET", "/todos/9007199254740992", 404),
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
        ("no writes to the stream", "POST", "/todos/stream", 405),
        ("the page is read only", "PUT", "/", 405),
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
        if *status == 405 {
            // The route table's methods at that path, for reads: GET alone.
            assert_eq!(response.headers()["allow"], "GET", "{why}");
        }
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
    eventually(
        Duration::from_secs(5),
        "the first waiter holds the budget",
        || async { metric(&client, &query, "min_version_waiting").await >= 1.0 },
    )
    .await;

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
    eventually(Duration::from_secs(5), "the next waiter waits", || async {
        metric(&client, &query, "min_version_waiting").await >= 1.0
    })
    .await;
    let mut update = created(1, true);
    update.event_type = EventType::TodoUpdated;
    update.version = 2;
    update.changed = vec![events::Field::Completed];
    publisher.publish(&update).await;
    assert_eq!(waiter.await.expect("waiter"), 200);
    query.stop().await;
    names.cleanup().await;
}

/// Fifty `?min_version=` waiters on one todo while the read model is behind cost one store read
/// per round, in rounds that back off; the notice of the version answers all of them without a
/// read; a todo past the highest id is 404 without reading it.
#[tokio::test]
async fn min_version_waiters_share_their_reads_and_rounds_back_off() {
    let names = Names::new();
    let query = spawn_query(&names).await;
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

    let skipped = metric(&client, &query, "todo_reads_skipped_total").await;
    let response = client
        .get(query.url("/todos/4000"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 404);
    assert_eq!(
        metric(&client, &query, "todo_reads_skipped_total").await,
        skipped + 1.0,
        "a todo past the highest id is not read"
    );

    let rounds = metric(&client, &query, "min_version_rounds_total").await;
    let reads = metric(&client, &query, "min_version_round_reads_total").await;
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            let url = query.url("/todos/1?min_version=2");
            tokio::spawn(async move {
                let response = client.get(url).send().await.expect("sent");
                let status = response.status();
                let body: Value = response.json().await.expect("json");
                (status, body)
            })
        })
        .collect();
    eventually(Duration::from_secs(5), "fifty waiting", || async {
        metric(&client, &query, "min_version_waiting").await >= 50.0
    })
    .await;
    // Behind for three seconds: rounds 100, 200, 400, 800 and 1600 ms apart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rounds_behind = metric(&client, &query, "min_version_rounds_total").await - rounds;
    let reads_behind = metric(&client, &query, "min_version_round_reads_total").await - reads;
    assert!(
        (1.0..=6.0).contains(&rounds_behind),
        "rounds back off: {rounds_behind} in 3 s"
    );
    assert_eq!(
        reads_behind, rounds_behind,
        "one read of the todo per round, shared by fifty waiters"
    );

    let answered = metric(&client, &query, "min_version_answered_by_notice_total").await;
    let reads_before = metric(&client, &query, "min_version_round_reads_total").await;
    let mut update = created(1, true);
    update.event_type = EventType::TodoUpdated;
    update.version = 2;
    update.changed = vec![events::Field::Completed];
    publisher.publish(&update).await;
    for waiter in waiters {
        let (status, body) = waiter.await.expect("waiter");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["version"], 2, "{body}");
    }
    // The notice answers them; a round that was due at the same moment may read the todo
    // once and answer some first: fifty answers cost at most one read.
    let by_notice =
        metric(&client, &query, "min_version_answered_by_notice_total").await - answered;
    let reads_after = metric(&client, &query, "min_version_round_reads_total").await - reads_before;
    assert!(
        reads_after <= 1.0 && (reads_after == 1.0 || by_notice >= 50.0),
        "fifty answered by the notice ({by_notice}) and at most one read ({reads_after})"
    );
    query.stop().await;
    names.cleanup().await;
}

/// A todo for the sorting tests: created_at and updated_at each in an order of their own, with
/// ties (two todos share each time), so pages must break ties by id.
fn timed(todo_id: i64, version: i64, completed: bool) -> Envelope {
    let base = Utc
        .with_ymd_and_hms(2026, 11, 22, 9, 0, 0)
        .single()
        .expect("time");
    let created_at = base + Span::seconds((40 - todo_id) / 2);
    let updated_at = base + Span::seconds(100 + (todo_id * 7 % 31) / 2 + 50 * (version - 1));
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: if version == 1 {
            EventType::TodoCreated
        } else {
            EventType::TodoUpdated
        },
        schema_version: SCHEMA_VERSION,
        todo_id,
        version,
        position: todo_id * 10 + version,
        occurred_at: updated_at,
        correlation_id: "reads".into(),
        causation_id: None,
        actor: None,
        data: Some(TodoState {
            title: format!("todo {todo_id} v{version}"),
            description: None,
            completed,
            created_at,
            updated_at,
            due_at: None,
            erased_at: None,
        }),
        changed: if version == 1 {
            Vec::new()
        } else {
            vec![events::Field::Title, events::Field::Completed]
        },
    }
}

/// The ids of `todos` in the order `sort` lists them: by the sort key, then by id, both
/// reversed for a descending sort.
fn expected_order(todos: &[Envelope], sort: &str, completed: Option<bool>) -> Vec<i64> {
    let key = sort.trim_start_matches('-');
    let mut rows: Vec<(String, i64)> = todos
        .iter()
        .filter(|e| completed.is_none_or(|c| e.data.as_ref().is_some_and(|d| d.completed == c)))
        // A due-date order lists the todos that have one.
        .filter(|e| key != "due_at" || e.data.as_ref().is_some_and(|d| d.due_at.is_some()))
        .map(|e| {
            let d = e.data.as_ref().expect("data");
            let k = match key {
                "id" => format!("{:020}", e.todo_id),
                "created_at" => query_service::store::timestamp(d.created_at),
                "updated_at" => query_service::store::timestamp(d.updated_at),
                "due_at" => query_service::store::timestamp(d.due_at.expect("a due date")),
                other => panic!("unknown sort {other}"),
            };
            (k, e.todo_id)
        })
        .collect();
    rows.sort();
    if sort.starts_with('-') {
        rows.reverse();
    }
    rows.into_iter().map(|(_, id)| id).collect()
}

#[tokio::test]
async fn every_sort_both_ways_with_and_without_completed_lists_every_todo_once_in_order() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;
    let todos: Vec<Envelope> = (1..=30).map(|id| timed(id, 1, id % 3 == 0)).collect();
    for e in &todos {
        publisher.publish(e).await;
    }
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(20), "all 30 projected", || async {
        settled_in_stats(&client, &query).await == 30
    })
    .await;

    for sort in [
        "id",
        "-id",
        "created_at",
        "-created_at",
        "updated_at",
        "-updated_at",
    ] {
        for completed in [None, Some(true), Some(false)] {
            let expected = expected_order(&todos, sort, completed);
            let filter = completed.map_or(String::new(), |c| format!("&completed={c}"));
            // Pages of 3 end inside runs of equal times; a page of 200 holds everything.
            for limit in [3, 200] {
                let first = format!("/todos?sort={sort}&limit={limit}{filter}");
                let (ids, pages) = walk(&client, &query, &first).await;
                assert_eq!(ids, expected, "{first}");
                if limit == 200 {
                    assert_eq!(pages, 1, "{first}");
                }
            }
        }
    }
    query.stop().await;
    names.cleanup().await;
}

/// Times in clusters of very different density (a burst within a second, a day's trickle,
/// todos years apart) with ties: a time-ordered list walks windows of time sized by the
/// density it last saw, and must list every todo once, in order, wherever that guess is wrong.
#[tokio::test]
async fn time_ordered_lists_hold_every_todo_across_clusters_of_any_density() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;
    let base = Utc
        .with_ymd_and_hms(2026, 11, 22, 9, 0, 0)
        .single()
        .expect("time");
    let todos: Vec<Envelope> = (1..=240)
        .map(|id| {
            let mut e = timed(id, 1, id % 4 == 0);
            let at = match id % 3 {
                // A burst: 80 todos within 0.4 s, two to each instant.
                0 => base + Span::microseconds((id / 2) * 10_000),
                // A day's trickle, every 18 minutes.
                1 => base - Span::minutes(id * 18),
                // Years apart.
                _ => base - Span::days(id * 11),
            };
            let updated = at + Span::seconds(id % 5);
            let d = e.data.as_mut().expect("data");
            d.created_at = at;
            d.updated_at = updated;
            e.occurred_at = updated;
            e
        })
        .collect();
    for e in &todos {
        publisher.publish(e).await;
    }
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "all projected", || async {
        settled_in_stats(&client, &query).await == todos.len() as i64
    })
    .await;
    for sort in ["created_at", "-created_at", "updated_at", "-updated_at"] {
        for completed in [None, Some(true), Some(false)] {
            let expected = expected_order(&todos, sort, completed);
            let filter = completed.map_or(String::new(), |c| format!("&completed={c}"));
            for limit in [7, 50] {
                let first = format!("/todos?sort={sort}&limit={limit}{filter}");
                let (ids, _) = walk(&client, &query, &first).await;
                assert_eq!(ids, expected, "{first}");
            }
        }
    }
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn due_date_orders_and_the_overdue_list_hold_every_todo_with_a_due_date_once() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;
    let now = Utc::now();
    let mut todos: Vec<Envelope> = (1..=120)
        .map(|id| {
            let mut e = timed(id, 1, id % 4 == 0);
            let d = e.data.as_mut().expect("data");
            d.due_at = match id % 3 {
                // No due date: in no due-date list.
                0 => None,
                // Past: overdue unless completed (hours to months ago, two to an instant).
                1 => Some(now - Span::hours((id / 2) * 37)),
                // Ahead: days to years from now.
                _ => Some(now + Span::days(id * 9)),
            };
            e
        })
        .collect();
    for e in &todos {
        publisher.publish(e).await;
    }
    // A later version takes one todo's due date away and gives another one.
    for (id, due) in [(1, None), (3, Some(now - Span::minutes(5)))] {
        let mut e = timed(id, 2, false);
        e.data.as_mut().expect("data").due_at = due;
        publisher.publish(&e).await;
        todos[(id - 1) as usize] = e;
    }
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "all projected", || async {
        settled_in_stats(&client, &query).await == todos.len() as i64 + 2
    })
    .await;
    for sort in ["due_at", "-due_at"] {
        for completed in [None, Some(true), Some(false)] {
            let expected = expected_order(&todos, sort, completed);
            let filter = completed.map_or(String::new(), |c| format!("&completed={c}"));
            for limit in [7, 50] {
                let first = format!("/todos?sort={sort}&limit={limit}{filter}");
                let (ids, _) = walk(&client, &query, &first).await;
                assert_eq!(ids, expected, "{first}");
            }
        }
        // Overdue: open, due before now.
        let overdue: Vec<Envelope> = todos
            .iter()
            .filter(|e| {
                e.data
                    .as_ref()
                    .is_some_and(|d| !d.completed && d.due_at.is_some_and(|t| t < Utc::now()))
            })
            .cloned()
            .collect();
        let expected = expected_order(&overdue, sort, None);
        assert!(expected.len() > 10, "{expected:?}");
        assert!(expected.contains(&3) && !expected.contains(&1));
        for limit in [7, 50] {
            let first = format!("/todos?overdue=true&sort={sort}&limit={limit}");
            let (ids, _) = walk(&client, &query, &first).await;
            assert_eq!(ids, expected, "{first}");
        }
    }
    // Another order beside it gives the direction only; completed=true, nothing.
    let overdue: Vec<Envelope> = todos
        .iter()
        .filter(|e| {
            e.data
                .as_ref()
                .is_some_and(|d| !d.completed && d.due_at.is_some_and(|t| t < Utc::now()))
        })
        .cloned()
        .collect();
    let (ids, _) = walk(
        &client,
        &query,
        "/todos?overdue=true&sort=-created_at&limit=9",
    )
    .await;
    assert_eq!(ids, expected_order(&overdue, "-due_at", None));
    let (ids, _) = walk(&client, &query, "/todos?overdue=true&completed=true").await;
    assert!(ids.is_empty(), "{ids:?}");
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn a_walk_sees_every_todo_once_while_writes_land_between_its_pages() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let publisher = publisher(&names.exchange).await;
    let client = reqwest::Client::new();
    for id in 1..=30 {
        publisher.publish(&timed(id, 1, false)).await;
    }
    let mut sent = 30;
    eventually(Duration::from_secs(20), "all 30 projected", || async {
        settled_in_stats(&client, &query).await == sent
    })
    .await;
    let mut next_id = 31;
    // Every update carries a version above all earlier ones of any todo.
    let mut version = 1;
    // Sorted by a key no write changes, todos are created and others updated between pages;
    // sorted by updated_at, which an update moves, todos are only created.
    for (sort, updates) in [
        ("id", true),
        ("-id", true),
        ("created_at", true),
        ("-created_at", true),
        ("updated_at", false),
        ("-updated_at", false),
    ] {
        let before: Vec<i64> = walk(&client, &query, "/todos?limit=200").await.0;
        let mut seen: Vec<i64> = Vec::new();
        let mut next = Some(format!("/todos?sort={sort}&limit=4"));
        let mut pages = 0;
        while let Some(path) = next {
            let response = client.get(query.url(&path)).send().await.expect("page");
            assert_eq!(response.status(), 200, "{path}");
            next = next_link(&response);
            let page: Vec<Value> = response.json().await.expect("json array");
            seen.extend(page.iter().map(|t| t["id"].as_i64().expect("id")));
            pages += 1;
            assert!(pages < 50, "{sort}: the walk ends");
            // Writes land before the next page is read.
            publisher.publish(&timed(next_id, 1, false)).await;
            next_id += 1;
            sent += 1;
            if updates {
                let updated = seen.last().map_or(1, |id| (id * 7) % 30 + 1);
                version += 1;
                publisher
                    .publish(&timed(updated, version, version % 2 == 0))
                    .await;
                sent += 1;
            }
            eventually(Duration::from_secs(10), "the writes applied", || async {
                settled_in_stats(&client, &query).await == sent
            })
            .await;
        }
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{sort}: a todo listed twice: {seen:?}"
        );
        let missed: Vec<&i64> = before.iter().filter(|id| !seen.contains(id)).collect();
        assert!(missed.is_empty(), "{sort}: skipped {missed:?} of {seen:?}");
    }
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn min_version_of_a_todo_never_created_waits_then_says_the_read_model_is_behind() {
    let names = Names::new();
    let query = spawn_query_with(&names, &[("MIN_VERSION_WAIT_MS", "1500")]).await;
    wait_for_consumer(&query).await;
    let client = reqwest::Client::new();

    // Without min_version: 404 at once.
    let response = client.get(query.url("/todos/7")).send().await.expect("get");
    assert_eq!(response.status(), 404);

    // With it: the todo may not have arrived yet, so the answer is "behind", after the wait.
    let started = Instant::now();
    let response = client
        .get(query.url("/todos/7?min_version=1"))
        .send()
        .await
        .expect("get");
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(waited >= Duration::from_millis(1400), "waited {waited:?}");
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/read-model-behind", "{problem}");

    // And a create that arrives during the wait answers it.
    let waiter = tokio::spawn({
        let (client, url) = (client.clone(), query.url("/todos/7?min_version=1"));
        async move { client.get(url).send().await.expect("get").status() }
    });
    eventually(Duration::from_secs(5), "the request is waiting", || async {
        metric(&client, &query, "min_version_waiting").await == 1.0
    })
    .await;
    publisher(&names.exchange)
        .await
        .publish(&created(7, false))
        .await;
    assert_eq!(waiter.await.expect("waiter"), 200);
    query.stop().await;
    names.cleanup().await;
}

#[tokio::test]
async fn request_ids_are_answered_back_and_unusable_ones_replaced() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let client = reqwest::Client::new();
    let longest = "x".repeat(128);
    let too_long = "x".repeat(129);
    let given: Vec<(&str, reqwest::header::HeaderValue, bool)> = vec![
        ("plain", "abc-123".parse().expect("value"), true),
        ("128 characters", longest.parse().expect("value"), true),
        ("empty", "".parse().expect("value"), false),
        ("a space", "two words".parse().expect("value"), false),
        ("129 characters", too_long.parse().expect("value"), false),
        (
            "not ASCII",
            reqwest::header::HeaderValue::from_bytes("café".as_bytes()).expect("value"),
            false,
        ),
        (
            "not UTF-8",
            reqwest::header::HeaderValue::from_bytes(b"id-\xff").expect("value"),
            false,
        ),
    ];
    // Answers of each kind: a list, a todo, a todo that is not there, a bad parameter, stats.
    for path in ["/todos", "/todos/1", "/todos?limit=0", "/stats"] {
        for (why, value, kept) in &given {
            let response = client
                .get(query.url(path))
                .header("x-request-id", value.clone())
                .send()
                .await
                .expect("sent");
            let answered = response
                .headers()
                .get("x-request-id")
                .unwrap_or_else(|| panic!("{path}, {why}: no X-Request-Id"))
                .clone();
            if *kept {
                assert_eq!(&answered, value, "{path}, {why}: kept");
            } else {
                let id = answered.to_str().expect("ASCII");
                assert!(
                    uuid::Uuid::parse_str(id).is_ok(),
                    "{path}, {why}: replaced by a new id, got {id:?}"
                );
            }
        }
        // None given: a new one.
        let response = client.get(query.url(path)).send().await.expect("sent");
        let id = response.headers()["x-request-id"].to_str().expect("ASCII");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{path}: {id:?}");
    }
    query.stop().await;
    names.cleanup().await;
}

/// A stored document this version cannot read is a fault (500 problem+json, the cause in the
/// log), on a read by id and on a list that meets it: never a 404 "no such todo", never a 503
/// "retry later", never left out of a list in silence.
#[tokio::test]
async fn a_stored_document_that_cannot_be_read_is_500_not_404_or_503() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let client = reqwest::Client::new();
    let db = mongodb::Client::with_uri_str(mongodb_uri())
        .await
        .expect("client")
        .database(&names.mongo_db);
    db.collection::<mongodb::bson::Document>("todos")
        .insert_one(mongodb::bson::doc! {
            "_id": 7_i64, "version": "three", "deleted": false, "title": 5,
        })
        .await
        .expect("insert");
    // Within the highest id the projection recorded: a todo past it is not read at all.
    db.collection::<mongodb::bson::Document>("projection_stats")
        .update_one(
            mongodb::bson::doc! { "_id": "todos" },
            mongodb::bson::doc! { "$max": { "max_todo_id": 7_i64 } },
        )
        .upsert(true)
        .await
        .expect("highest id");
    for path in ["/todos/7", "/todos", "/todos?limit=1"] {
        let response = client.get(query.url(path)).send().await.expect("read");
        assert_eq!(response.status(), 500, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(problem["type"], "/problems/internal", "{path}: {problem}");
    }
    query.stop().await;
    names.cleanup().await;
}
