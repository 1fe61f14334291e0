//! The real `query-service` binary stopped by a real SIGTERM: a request in flight is answered,
//! the batch in hand is applied and acked, and the process exits 0.

use crate::helpers::*;
use chrono::{TimeZone, Utc};
use events::{Envelope, EventType, TodoState, SCHEMA_VERSION};
use query_service::store::Store;
use serde_json::Value;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn event(todo_id: i64, version: i64) -> Envelope {
    let at = Utc
        .with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
        .single()
        .expect("time");
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
        occurred_at: at,
        correlation_id: format!("shutdown-{todo_id}-{version}"),
        causation_id: None,
        actor: None,
        data: Some(TodoState {
            title: format!("todo {todo_id} v{version}"),
            description: None,
            completed: version % 2 == 0,
            created_at: at,
            updated_at: at + chrono::Duration::seconds(version),
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

/// The binary, listening on a port of its own choosing, its JSON log lines collected.
/// Killed (SIGKILL) when dropped, so a failing test leaves nothing running.
struct Binary {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Binary {
    fn start(names: &Names, extra: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_query-service"));
        for (k, v) in names.query_vars() {
            command.env(k, v);
        }
        command
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        for (k, v) in extra {
            command.env(k, v);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("query-service starts");
        let stdout = child.stdout.take().expect("stdout");
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().expect("log lines").push(value);
                }
            }
        });
        Self { child, lines }
    }

    /// The first log line whose message is `message`.
    fn line(&self, message: &str) -> Option<Value> {
        self.lines
            .lock()
            .expect("log lines")
            .iter()
            .find(|l| l["message"] == message)
            .cloned()
    }

    /// `http://<addr>` from the "query-service listening" line.
    async fn address(&self) -> String {
        eventually(
            Duration::from_secs(30),
            "query-service listening",
            || async { self.line("query-service listening").is_some() },
        )
        .await;
        let line = self.line("query-service listening").expect("line");
        format!("http://{}", line["addr"].as_str().expect("addr"))
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM sent");
    }

    /// The exit status, waiting up to `within`.
    async fn exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "exited within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_answers_the_request_in_flight_finishes_the_batch_in_hand_and_exits_0() {
    let names = Names::new();
    let mut binary = Binary::start(&names, &[("MIN_VERSION_WAIT_MS", "3000")]);
    let address = binary.address().await;
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), "consuming", || async {
        match client.get(format!("{address}/ready")).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .is_ok_and(|b| b["checks"]["rabbitmq"] == "up"),
            Err(_) => false,
        }
    })
    .await;
    let publisher = Arc::new(publisher(&names.exchange).await);
    publisher.publish(&event(1, 1)).await;
    eventually(Duration::from_secs(10), "todo 1 projected", || async {
        settled_by(&client, &address).await == 1.0
    })
    .await;

    // In flight: a read waiting for a version that is never published.
    let waiter = tokio::spawn({
        let (client, url) = (client.clone(), format!("{address}/todos/1?min_version=2"));
        async move {
            let response = client.get(url).send().await.expect("answered, not cut");
            let status = response.status();
            (status, response.json::<Value>().await.expect("problem"))
        }
    });
    eventually(Duration::from_secs(5), "the read is waiting", || async {
        metric_at(&client, &address, "min_version_waiting").await == 1.0
    })
    .await;

    // A stream of 100 todos (create and 2 updates each). Its first half is published at once,
    // confirmed only when all of it is out, so the process works through a backlog in full
    // batches; SIGTERM comes as soon as part of it is settled, and the second half after it.
    let stream: Vec<Envelope> = (2..=101)
        .flat_map(|id| (1..=3).map(move |v| event(id, v)))
        .collect();
    let total = 1 + stream.len() as i64;
    let (first, second) = stream.split_at(150);
    let mut confirms = Vec::new();
    for e in first {
        confirms.push(
            publisher
                .channel
                .basic_publish(
                    names.exchange.as_str().into(),
                    e.routing_key().into(),
                    lapin::options::BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &e.to_json(),
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("published"),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirmed").is_ack(), "broker acked");
    }
    let termed = Arc::new(tokio::sync::Notify::new());
    let publishing = tokio::spawn({
        let (publisher, termed, second) = (publisher.clone(), termed.clone(), second.to_vec());
        async move {
            termed.notified().await;
            for e in &second {
                publisher.publish(e).await;
            }
        }
    });
    eventually(
        Duration::from_secs(10),
        "part of the stream settled",
        || async { settled_by(&client, &address).await >= 2.0 },
    )
    .await;
    binary.terminate();
    termed.notify_one();

    let (status, problem) = waiter.await.expect("waiter");
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "/problems/read-model-behind", "{problem}");
    let exit = binary.exit(Duration::from_secs(30)).await;
    assert_eq!(exit.code(), Some(0), "{exit}");
    assert!(binary.line("SIGTERM received, shutting down").is_some());
    assert!(binary.line("consumer stopped").is_some());
    assert!(binary.line("query-service stopped").is_some());
    publishing.await.expect("published");

    // Every message is either settled in the read model's counters (applied and acked in the
    // same batch) or back in the queue, never both: no batch was applied and left unacked.
    let store = Store::connect(&mongodb_uri(), &names.mongo_db)
        .await
        .expect("MongoDB");
    let counted = || async {
        let p = store.projection_stats().await.expect("stats");
        p.applied + p.skipped_duplicates + p.superseded + p.dead_lettered
    };
    let settled = counted().await;
    println!("{settled} of {total} messages settled before the exit");
    assert!(
        (2..total).contains(&settled),
        "stopped mid-stream: {settled} of {total}"
    );
    eventually(
        Duration::from_secs(10),
        "settled + queued = published",
        || async { settled + i64::from(queue_depth(&names.queue).await) == total },
    )
    .await;
    names.cleanup().await;
}
