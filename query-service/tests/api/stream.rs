//! `GET /todos/stream`: a client connected before a write gets its change; one reconnecting
//! with `Last-Event-ID` gets what it missed (and nothing it had), then the live changes; a
//! client too far behind gets a final `dropped` event.

use crate::helpers::*;
use serde_json::{json, Value};
use std::time::Duration;

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

/// Reads a stream response event by event.
struct Client {
    response: reqwest::Response,
    buffer: String,
}

impl Client {
    async fn connect(query: &Running, last_event_id: Option<&str>) -> Self {
        Self::connect_from(query, last_event_id, "127.0.0.1").await
    }

    /// A client from a loopback address of its own (`127.0.0.2` …): another peer.
    async fn connect_from(query: &Running, last_event_id: Option<&str>, from: &str) -> Self {
        let response = request(query, last_event_id, from).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Client {
            response,
            buffer: String::new(),
        }
    }

    async fn connect_unchecked(query: &Running, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new().get(query.url("/todos/stream"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("stream");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Client {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped); `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, "message".to_string(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                let data = serde_json::from_str(&data).expect("data is JSON");
                return Some(Sse { id, event, data });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("an event within 20 s")
                .expect("stream readable")?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until `done` holds for the events read so far.
    async fn until(&mut self, done: impl Fn(&[Sse]) -> bool) -> Vec<Sse> {
        let mut seen = Vec::new();
        while !done(&seen) {
            seen.push(self.next().await.expect("the stream goes on"));
        }
        seen
    }
}

/// `GET /todos/stream` from the loopback address `from`.
async fn request(query: &Running, last_event_id: Option<&str>, from: &str) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .local_address(Some(from.parse().expect("address")))
        .build()
        .expect("client");
    let mut request = client.get(query.url("/todos/stream"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.expect("stream")
}

fn has(events: &[Sse], id: i64, version: i64) -> bool {
    events
        .iter()
        .any(|e| e.data["id"] == id && e.data["version"] == version)
}

#[tokio::test]
async fn a_client_gets_each_change_and_one_reconnecting_with_last_event_id_gets_what_it_missed() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let (command, _database) = spawn_command(&names).await;
    let client = reqwest::Client::new();
    let write = |method: &'static str, path: String, body: Option<Value>| {
        let (client, url) = (client.clone(), command.url(&path));
        async move {
            let mut request = client.request(method.parse().expect("method"), url);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("write");
            assert!(response.status().is_success(), "{method} {path}");
            response.json::<Value>().await.unwrap_or(Value::Null)
        }
    };

    // Connected before the write: the change arrives, with its position as the event id.
    let mut first = Client::connect(&query, None).await;
    let a = write("POST", "/todos".into(), Some(json!({"title": "streamed"}))).await["id"]
        .as_i64()
        .expect("id");
    let events = first.until(|seen| has(seen, a, 1)).await;
    let created = events.last().expect("an event").clone();
    assert_eq!(created.event, "todo");
    assert_eq!(created.data["todo"]["title"], "streamed");
    assert_eq!(
        created.id.as_deref(),
        Some(created.data["position"].to_string().as_str())
    );
    assert!(
        created.data["lag_ms"].as_i64().is_some_and(|l| l >= 0),
        "{:?}",
        created.data
    );
    let last_id = created.id.clone().expect("an id");
    drop(first);

    // While away: a new todo, a change of the first, a deletion of a third.
    let b = write("POST", "/todos".into(), Some(json!({"title": "missed"}))).await["id"]
        .as_i64()
        .expect("id");
    write(
        "PATCH",
        format!("/todos/{a}"),
        Some(json!({"completed": true})),
    )
    .await;
    let c = write("POST", "/todos".into(), Some(json!({"title": "gone"}))).await["id"]
        .as_i64()
        .expect("id");
    write("DELETE", format!("/todos/{c}"), None).await;
    eventually(
        Duration::from_secs(20),
        "the read model has them",
        || async {
            let status = |path: String| {
                let (client, url) = (client.clone(), query.url(&path));
                async move {
                    client
                        .get(url)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                }
            };
            status(format!("/todos/{a}?min_version=2")).await == 200
                && status(format!("/todos/{b}")).await == 200
                // Deleted, not merely not there yet: a tombstone settles any version.
                && status(format!("/todos/{c}?min_version=2")).await == 404
        },
    )
    .await;

    // Reconnecting with the last id: what was missed, each todo once at its state now, and
    // nothing at or before the last id.
    let mut again = Client::connect(&query, Some(&last_id)).await;
    let missed = again
        .until(|seen| has(seen, a, 2) && has(seen, b, 1) && has(seen, c, 2))
        .await;
    let last: i64 = last_id.parse().expect("a position");
    for e in &missed {
        assert!(
            e.data["position"].as_i64().expect("position") > last,
            "{e:?}"
        );
    }
    assert!(missed
        .iter()
        .any(|e| e.event == "deleted" && e.data["id"] == c));
    assert_eq!(missed.len(), 3, "each todo once: {missed:?}");
    // Then live.
    let d = write("POST", "/todos".into(), Some(json!({"title": "after"}))).await["id"]
        .as_i64()
        .expect("id");
    let live = again.until(|seen| has(seen, d, 1)).await;
    assert!(
        live.iter().all(|e| !has(
            &missed,
            e.data["id"].as_i64().unwrap_or(0),
            e.data["version"].as_i64().unwrap_or(0)
        )),
        "nothing twice: {live:?}"
    );
    drop(again);
    command.stop().await;
    query.stop().await;
    names.cleanup().await;
}

fn created(todo_id: i64) -> events::Envelope {
    let at = chrono::Utc::now();
    events::Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: events::EventType::TodoCreated,
        schema_version: events::SCHEMA_VERSION,
        todo_id,
        version: 1,
        position: todo_id,
        occurred_at: at,
        correlation_id: "stream".into(),
        causation_id: None,
        actor: None,
        data: Some(events::TodoState {
            title: format!("{todo_id} {}", "x".repeat(180)),
            description: Some("y".repeat(1900)),
            completed: false,
            created_at: at,
            updated_at: at,
            due_at: None,
            erased_at: None,
        }),
        changed: Vec::new(),
    }
}

/// A client that stops reading (its socket's window tiny and full) falls behind while the
/// projection goes on: once more than `STREAM_BUFFER_BYTES` of changes behind, it is sent a
/// final `dropped` event and its stream ends, and the projection applied every event meanwhile.
/// (The write deadline, which would also end it, is set far off here.)
#[tokio::test]
async fn a_client_that_never_reads_is_dropped_with_a_final_event_and_the_projection_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let names = Names::new();
    let query = spawn_query_with(
        &names,
        &[
            ("STREAM_BUFFER_BYTES", "20000"),
            ("HTTP_WRITE_TIMEOUT_MS", "600000"),
        ],
    )
    .await;
    wait_for_consumer(&query).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(2048).expect("small window");
    let address = query
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let mut stuck = socket.connect(address).await.expect("connect");
    stuck
        .write_all(b"GET /todos/stream HTTP/1.1\r\nHost: q\r\n\r\n")
        .await
        .expect("request");
    let mut head = vec![0u8; 512];
    let n = stuck.read(&mut head).await.expect("head");
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));

    // Far more than the sockets can hold (about 2 KB an event; a loopback socket buffers at
    // most a few MB), one batch at a time.
    const EVENTS: i64 = 4000;
    let publisher = publisher(&names.exchange).await;
    for id in 1..=EVENTS {
        publisher.publish(&created(id)).await;
    }
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(90),
        "the projection applied every event",
        || async {
            get_json::<Value>(&client, &query.url("/stats")).await["projection"]["applied"]
                == EVENTS
        },
    )
    .await;

    // Now read what the stuck client was sent: it ends with `dropped`, short of every event.
    let mut received = Vec::new();
    let read_all = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stuck.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("the server ends the stream");
    let text = String::from_utf8_lossy(&received);
    let sent = text.matches("event: todo").count() + text.matches("event:todo").count();
    println!("the stuck client was sent {sent} of {EVENTS} changes");
    assert!(
        text.contains("event: dropped") || text.contains("event:dropped"),
        "no dropped event"
    );
    assert!((sent as i64) < EVENTS, "it kept up after all");
    query.stop().await;
    names.cleanup().await;
}

/// Streams are capped per address: one address's clients past `STREAM_MAX_PER_PEER` are 429,
/// and a client from another address still gets a stream; a slot comes back when a client
/// goes.
#[tokio::test]
async fn one_address_holds_at_most_its_streams_and_another_address_still_gets_one() {
    let names = Names::new();
    let query = spawn_query_with(&names, &[("STREAM_MAX_PER_PEER", "2")]).await;
    let mut held = vec![
        Client::connect_from(&query, None, "127.0.0.2").await,
        Client::connect_from(&query, None, "127.0.0.2").await,
    ];
    let refused = request(&query, None, "127.0.0.2").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = refused.json().await.expect("problem");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("STREAM_MAX_PER_PEER")),
        "{body}"
    );
    let _other = Client::connect_from(&query, None, "127.0.0.3").await;
    held.pop();
    eventually(Duration::from_secs(5), "the slot comes back", || async {
        request(&query, None, "127.0.0.2").await.status() == 200
    })
    .await;
    drop(held);
    query.stop().await;
    names.cleanup().await;
}

/// A replay is bounded: one that would send more than `STREAM_REPLAY_MAX_BYTES` ends with
/// `event: reload` (the client reads the list instead); one within the bound goes live.
#[tokio::test]
async fn a_replay_past_its_bound_ends_with_reload_and_one_within_it_goes_live() {
    let names = Names::new();
    let query = spawn_query_with(&names, &[("STREAM_REPLAY_MAX_BYTES", "20000")]).await;
    wait_for_consumer(&query).await;
    // 60 todos of about 2 KB each: 120 KB to replay from the start.
    const TODOS: i64 = 60;
    let publisher = publisher(&names.exchange).await;
    for id in 1..=TODOS {
        publisher.publish(&created(id)).await;
    }
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "all applied", || async {
        get_json::<Value>(&client, &query.url("/stats")).await["projection"]["applied"] == TODOS
    })
    .await;

    let mut from_start = Client::connect_unchecked(&query, Some("0")).await;
    let mut todos = 0;
    let reload = loop {
        let e = from_start
            .next()
            .await
            .expect("the replay ends with reload");
        match e.event.as_str() {
            "todo" => todos += 1,
            "reload" => break e,
            other => panic!("unexpected {other}: {e:?}"),
        }
    };
    assert!(
        reload.data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("STREAM_REPLAY_MAX_BYTES")),
        "{reload:?}"
    );
    assert!((1..TODOS).contains(&todos), "sent {todos} before reload");
    assert!(from_start.next().await.is_none(), "the stream ends");

    // Within the bound: the last five, then live.
    let mut near = Client::connect(&query, Some(&(TODOS - 5).to_string())).await;
    let caught_up = near.until(|seen| seen.len() == 5).await;
    assert!(caught_up.iter().all(|e| e.event == "todo"), "{caught_up:?}");
    publisher.publish(&created(TODOS + 1)).await;
    let live = near.until(|seen| has(seen, TODOS + 1, 1)).await;
    assert_eq!(live.len(), 1, "{live:?}");
    query.stop().await;
    names.cleanup().await;
}

/// With two query-service instances on one queue, each applies part of the events, and a
/// stream client on each sees every change, whichever instance applied it.
#[tokio::test]
async fn every_replicas_stream_carries_every_change_whichever_replica_applied_it() {
    let names = Names::new();
    let extra = [("AMQP_PREFETCH", "5")];
    let one = spawn_query_with(&names, &extra).await;
    let two = spawn_query_with(&names, &extra).await;
    wait_for_consumer(&one).await;
    wait_for_consumer(&two).await;
    let mut on_one = Client::connect(&one, None).await;
    let mut on_two = Client::connect(&two, None).await;
    const TODOS: i64 = 200;
    let publisher = publisher(&names.exchange).await;
    for id in 1..=TODOS {
        publisher.publish(&created(id)).await;
    }
    let every = |seen: &[Sse]| (1..=TODOS).all(|id| has(seen, id, 1));
    let seen_one = on_one.until(every).await;
    let seen_two = on_two.until(every).await;
    assert_eq!(seen_one.len() as i64, TODOS, "each change once on one");
    assert_eq!(seen_two.len() as i64, TODOS, "each change once on two");
    let client = reqwest::Client::new();
    let (by_one, by_two) = (
        settled_by(&client, &one.address).await,
        settled_by(&client, &two.address).await,
    );
    println!("applied by one: {by_one}, by two: {by_two}");
    assert!(
        by_one > 0.0 && by_two > 0.0,
        "both replicas applied part: {by_one} and {by_two}"
    );
    one.stop().await;
    two.stop().await;
    names.cleanup().await;
}
