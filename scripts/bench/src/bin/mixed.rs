//! `scripts/mixed_versions.sh`: the pair built at an older contract version (old) and as it is
//! now (new), side by side in every mix while writes go on, and the proof that nothing was
//! lost and nothing a newer reader can apply stays dead-lettered.
//!
//! Two kinds of old pair: one of contract version 1, whose reader takes version 1 only and
//! dead-letters what is newer (the phases below as written), and, with
//! `MIXED_OLD_READS_NEWER=1`, one of version 2 or later, whose reader reads a newer version as
//! its own: then nothing may be dead-lettered in any phase, and the old reader applies its
//! share in phases 2 and 3.
//!
//! One database, one exchange and one queue throughout; the phases, each under writes at a
//! fixed rate (creates, updates, deletes; with due dates while the writer is new):
//!
//! 1. old command-service, old and new query-service on one queue: version 1 events; the new
//!    reader upcasts them. Nothing may be dead-lettered.
//! 2. new command-service (it migrates the database as it starts), the same two readers:
//!    version 2 events; the old reader dead-letters the share it gets (it reads version 1
//!    only), the new one applies its share.
//! 3. new command-service with the old reader alone: the rolling upgrade in the wrong order;
//!    every event is dead-lettered.
//! 4. the old reader replaced by the new one, and `query-service dead-letters redrive --all`:
//!    every dead letter is applied or found older than what the read model holds.
//!
//! At the end: the dead-letter queue is empty, every accepted write is readable at its version
//! (`GET /todos/{id}?min_version=`, a 404 for a deleted one), and `query-service verify`
//! finds the read model equal to the log. Exit 1 otherwise. The old binaries are in
//! `MIXED_OLD_BIN_DIR`, the new in `SERVICE_BIN_DIR` (default `target/release`).

use anyhow::{bail, Context};
use bench::figures::{applied, settled};
use bench::process::Service;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A write command-service accepted: the todo and the version it answered.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    todo: i64,
    version: i64,
    deleted: bool,
}

#[derive(Default)]
struct Record {
    accepted: Vec<Accepted>,
    live: Vec<i64>,
    /// Answers other than 2xx, 404 and 412, with the body.
    failed: Vec<String>,
}

/// Writes at `rate` per second to `base` until `stop`; with due dates while `new_writer`.
async fn writes(
    base: Arc<Mutex<String>>,
    rate: u32,
    new_writer: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut n: u64 = 0;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        next += interval;
        if paused.load(Ordering::Relaxed) {
            continue;
        }
        n += 1;
        let url = base.lock().expect("base").clone();
        let due = new_writer.load(Ordering::Relaxed);
        let target = {
            let r = record.lock().expect("record");
            (!r.live.is_empty()).then(|| r.live[(n as usize * 7919) % r.live.len()])
        };
        let (method, path, body) = match (n % 10, target) {
            (0, Some(id)) => ("DELETE", format!("/todos/{id}"), None),
            (1..=3, Some(id)) => {
                let mut b =
                    json!({ "title": format!("changed {n}"), "completed": n.is_multiple_of(2) });
                if due {
                    b["due_at"] = json!(format!("2027-01-{:02}T09:00:00Z", 1 + n % 28));
                }
                ("PATCH", format!("/todos/{id}"), Some(b))
            }
            _ => {
                let mut b = json!({ "title": format!("todo {n}") });
                if due && n.is_multiple_of(2) {
                    b["due_at"] = json!("2026-06-01T12:00:00Z");
                }
                ("POST", "/todos".to_string(), Some(b))
            }
        };
        let mut request = client.request(method.parse().expect("method"), format!("{url}{path}"));
        if let Some(b) = &body {
            request = request.json(b);
        }
        let (client_record, path_id) = (record.clone(), path.clone());
        tokio::spawn(async move {
            let Ok(response) = request.send().await else {
                client_record
                    .lock()
                    .expect("record")
                    .failed
                    .push(format!("{method} {path_id}: no answer"));
                return;
            };
            let status = response.status().as_u16();
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim_matches('"').parse::<i64>().ok());
            let body: Option<Value> = response.json().await.ok();
            let mut r = client_record.lock().expect("record");
            match (method, status) {
                ("POST", 201) | ("PATCH", 200) => {
                    if let Some(b) = body {
                        let (todo, version) = (b["id"].as_i64(), b["version"].as_i64());
                        if let (Some(todo), Some(version)) = (todo, version) {
                            r.accepted.push(Accepted {
                                todo,
                                version,
                                deleted: false,
                            });
                            if method == "POST" {
                                r.live.push(todo);
                            }
                        }
                    }
                }
                ("DELETE", 204) => {
                    let todo: i64 = path_id
                        .rsplit('/')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    r.accepted.push(Accepted {
                        todo,
                        version: etag.unwrap_or(0),
                        deleted: true,
                    });
                    r.live.retain(|&t| t != todo);
                }
                // Lost a race with a delete.
                (_, 404) | (_, 412) => {}
                _ => r
                    .failed
                    .push(format!("{method} {path_id}: {status} {body:?}")),
            }
        });
    }
}

struct Binaries {
    old: PathBuf,
    new: PathBuf,
}

impl Binaries {
    fn of(&self, new: bool, name: &str) -> PathBuf {
        if new { &self.new } else { &self.old }.join(name)
    }
}

async fn dead_letters(amqp_url: &str, queue: &str) -> anyhow::Result<u32> {
    let conn = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let n = query_service::dead_letters::depth(&channel, &events::dead_letter_queue(queue)).await?;
    let _ = conn.close(200, "counted".into()).await;
    Ok(n)
}

/// Waits until every service in `bases` settled nothing new for 2 s (their metrics).
async fn settle(bases: &[String]) -> anyhow::Result<()> {
    let mut last = -1i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut now = 0;
        for b in bases {
            now += settled(b).await?;
        }
        if now == last {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the readers still settle events after 120 s");
        }
        last = now;
    }
}

/// A row of the table: the mix, what must hold, what was seen, whether it held.
struct Row(String, String, String, bool);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    let binaries = Binaries {
        old: PathBuf::from(
            std::env::var("MIXED_OLD_BIN_DIR")
                .context("MIXED_OLD_BIN_DIR: where the old binaries are")?,
        ),
        new: PathBuf::from(
            std::env::var("SERVICE_BIN_DIR").unwrap_or_else(|_| "target/release".into()),
        ),
    };
    for new in [false, true] {
        for name in ["command-service", "query-service"] {
            let b = binaries.of(new, name);
            if !b.exists() {
                bail!("{} is missing", b.display());
            }
        }
    }
    let run = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let work = std::env::current_dir()?
        .join("target")
        .join("mixed")
        .join(&run);
    std::fs::create_dir_all(&work)?;
    let port: u16 = std::env::var("MIXED_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5501);
    let rate: u32 = std::env::var("MIXED_RATE")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(40);
    let seconds: u64 = std::env::var("MIXED_SECONDS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8);
    let admin_url = std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://todo:todo@127.0.0.1:5432/postgres".into());
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let mongodb_uri = std::env::var("MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?maxIdleTimeMS=60000".into());
    let name = format!("mixed_{run}");
    let database_url = format!(
        "{}/{name}",
        &admin_url[..admin_url.rfind('/').unwrap_or(admin_url.len())]
    );
    let exchange = format!("mixed.{run}");
    let queue = format!("mixed.{run}.projection");
    eprintln!(
        "[mixed] run {run}: old binaries in {}, new in {}; logs in {}",
        binaries.old.display(),
        binaries.new.display(),
        work.display()
    );
    let mut admin = AsyncPgConnection::establish(&admin_url)
        .await
        .context("PostgreSQL")?;
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    drop(admin);

    let outcome = phases(
        &binaries,
        &work,
        port,
        rate,
        Duration::from_secs(seconds),
        &database_url,
        &amqp_url,
        &mongodb_uri,
        &name,
        &exchange,
        &queue,
    )
    .await;

    // Everything of the run is removed, whatever happened.
    let mut admin = AsyncPgConnection::establish(&admin_url).await?;
    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    if let Ok(client) = mongodb::Client::with_uri_str(&mongodb_uri).await {
        let _ = client.database(&name).drop().await;
    }
    if let Ok(conn) =
        lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default()).await
    {
        if let Ok(ch) = conn.create_channel().await {
            for q in [
                queue.clone(),
                events::dead_letter_queue(&queue),
                events::changes_exchange(&queue),
            ] {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            for e in [
                exchange.clone(),
                events::dead_letter_exchange(&exchange),
                events::changes_exchange(&queue),
            ] {
                let _ = ch
                    .exchange_delete(e.as_str().into(), Default::default())
                    .await;
            }
        }
        let _ = conn.close(200, "cleaned".into()).await;
    }

    let rows = outcome?;
    println!("| mix | what must hold | what was seen | |");
    println!("|---|---|---|---|");
    for Row(mix, must, seen, ok) in &rows {
        println!(
            "| {mix} | {must} | {seen} | {} |",
            if *ok { "ok" } else { "FAILED" }
        );
    }
    let failed = rows.iter().filter(|r| !r.3).count();
    if failed > 0 {
        eprintln!("[mixed] {failed} of {} did not hold", rows.len());
        std::process::exit(1);
    }
    eprintln!("[mixed] all {} held", rows.len());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn phases(
    binaries: &Binaries,
    work: &Path,
    port: u16,
    rate: u32,
    each: Duration,
    database_url: &str,
    amqp_url: &str,
    mongodb_uri: &str,
    name: &str,
    exchange: &str,
    queue: &str,
) -> anyhow::Result<Vec<Row>> {
    let command_vars = vec![
        ("DATABASE_URL", database_url.to_string()),
        ("AMQP_URL", amqp_url.to_string()),
        ("AMQP_EXCHANGE", exchange.to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ];
    let query_vars = vec![
        ("MONGODB_URI", mongodb_uri.to_string()),
        ("MONGODB_DB", name.to_string()),
        ("AMQP_URL", amqp_url.to_string()),
        ("AMQP_EXCHANGE", exchange.to_string()),
        ("AMQP_QUEUE", queue.to_string()),
        ("LOG_FORMAT", "json".to_string()),
    ];
    let start = |new: bool, service: &'static str, port: u16| {
        let vars = if service == "command-service" {
            command_vars.clone()
        } else {
            query_vars.clone()
        };
        let binary = binaries.of(new, service);
        async move { Service::start_binary(work, service, &binary, port, &vars).await }
    };
    let (command_port, new_reader_port, old_reader_port) = (port, port + 1, port + 2);
    let base = |p: u16| format!("http://127.0.0.1:{p}");
    let mut rows = Vec::new();

    // 1. The old writer, both readers on one queue.
    let mut new_reader = Some(start(true, "query-service", new_reader_port).await?);
    let mut old_reader = Some(start(false, "query-service", old_reader_port).await?);
    let mut command = start(false, "command-service", command_port).await?;
    let writer_base = Arc::new(Mutex::new(base(command_port)));
    let new_writer = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(writes(
        writer_base.clone(),
        rate,
        new_writer.clone(),
        paused.clone(),
        record.clone(),
        stop.clone(),
    ));
    // Between two mixes the writes pause (those in flight answered) and the readers settle.
    let pause = |readers: Vec<String>| {
        let paused = paused.clone();
        async move {
            paused.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(2)).await;
            settle(&readers).await
        }
    };
    tokio::time::sleep(each).await;
    pause(vec![base(new_reader_port), base(old_reader_port)]).await?;
    let after_first = dead_letters(amqp_url, queue).await?;
    let written_first = record.lock().expect("record").accepted.len();
    rows.push(Row(
        "old command-service; old and new query-service on one queue".into(),
        "the old version's events: both readers apply them (the new one upcasts); nothing dead-lettered"
            .into(),
        format!("{written_first} writes accepted; {after_first} dead-lettered"),
        after_first == 0 && written_first > 0,
    ));

    let reads_newer = std::env::var("MIXED_OLD_READS_NEWER").is_ok_and(|v| v == "1");
    // 2. The new writer: the old one stops (its requests in flight answered), the new one
    // starts on the same port and migrates the database.
    command.stop().await?;
    command = start(true, "command-service", command_port).await?;
    new_writer.store(true, Ordering::Relaxed);
    paused.store(false, Ordering::Relaxed);
    tokio::time::sleep(each).await;
    pause(vec![base(new_reader_port), base(old_reader_port)]).await?;
    let after_second = dead_letters(amqp_url, queue).await?;
    let new_settled = settled(&base(new_reader_port)).await?;
    let old_settled = settled(&base(old_reader_port)).await?;
    let written_second = record.lock().expect("record").accepted.len() - written_first;
    rows.push(Row(
        "new command-service (migrating the database as it starts); old and new query-service on one queue".into(),
        if reads_newer {
            "both readers apply their share of the new version's events (the old one reads them as its own); nothing dead-lettered"
        } else {
            "the new reader applies its share of the new version's events; the old one dead-letters what it cannot read (it reads version 1 only), nothing else"
        }
        .into(),
        format!(
            "{written_second} writes accepted; the new reader settled {new_settled} events in all, the old one {old_settled}; {} dead-lettered by the old one",
            after_second - after_first
        ),
        if reads_newer {
            after_second == after_first && new_settled > 0 && old_settled > 0
        } else {
            after_second > after_first && new_settled > 0
        },
    ));

    // 3. The new writer with the old reader alone: the wrong order.
    if let Some(r) = new_reader.take() {
        r.stop().await?;
    }
    let old_applied_before = applied(&base(old_reader_port)).await?;
    paused.store(false, Ordering::Relaxed);
    tokio::time::sleep(each).await;
    pause(vec![base(old_reader_port)]).await?;
    stop.store(true, Ordering::Relaxed);
    load.await?;
    let after_third = dead_letters(amqp_url, queue).await?;
    let old_applied = applied(&base(old_reader_port)).await? - old_applied_before;
    rows.push(Row(
        "new command-service, old query-service alone (upgraded in the wrong order)".into(),
        if reads_newer {
            "the old reader applies every event, the fields it does not know left out; nothing dead-lettered"
        } else {
            "every event of the new version is dead-lettered, none applied"
        }
        .into(),
        format!(
            "{} more dead-lettered, {after_third} in all; {old_applied} applied by the old reader",
            after_third - after_second
        ),
        if reads_newer {
            after_third == after_second && old_applied > 0
        } else {
            after_third > after_second && old_applied == 0
        },
    ));
    // 4. The upgrade finished, then the dead letters redriven.
    if let Some(r) = old_reader.take() {
        r.stop().await?;
    }
    let new_reader = start(true, "query-service", new_reader_port).await?;
    let redriven = query_service::dead_letters::redrive(
        amqp_url,
        queue,
        &query_service::dead_letters::Selection::All,
    )
    .await?;
    settle(&[base(new_reader_port)]).await?;
    let left = dead_letters(amqp_url, queue).await?;
    // Every accepted write readable at its version.
    let client = reqwest::Client::new();
    let accepted = record.lock().expect("record").accepted.clone();
    let failed = record.lock().expect("record").failed.clone();
    let mut newest: std::collections::HashMap<i64, Accepted> = std::collections::HashMap::new();
    for a in &accepted {
        let e = newest.entry(a.todo).or_insert(*a);
        if a.version > e.version {
            *e = *a;
        }
    }
    let mut missing = Vec::new();
    for a in newest.values() {
        let r = client
            .get(format!(
                "{}/todos/{}?min_version={}",
                base(new_reader_port),
                a.todo,
                a.version
            ))
            .send()
            .await?;
        let ok = if a.deleted {
            r.status() == 404
        } else {
            r.status() == 200
        };
        if !ok {
            missing.push(format!("todo {} v{}: {}", a.todo, a.version, r.status()));
        }
    }
    let verify = std::process::Command::new(binaries.of(true, "query-service"))
        .args(["verify", &base(command_port)])
        .envs(query_vars.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .context("running query-service verify")?;
    let verify_out = String::from_utf8_lossy(&verify.stdout)
        .trim_end()
        .to_string();
    rows.push(Row(
        "old query-service replaced by the new one; `dead-letters redrive --all`".into(),
        "every dead letter applied or older than the read model: the dead-letter queue empty; every accepted write readable at its version; `verify` 0 differences; no write failed".into(),
        format!(
            "{} redriven, {left} left; {} writes accepted, {} todos, {} not readable{}; {} writes failed{}; {verify_out}",
            redriven.sent.len(),
            accepted.len(),
            newest.len(),
            missing.len(),
            if missing.is_empty() { String::new() } else { format!(" ({})", missing.iter().take(3).cloned().collect::<Vec<_>>().join(", ")) },
            failed.len(),
            if failed.is_empty() { String::new() } else { format!(" ({})", failed.iter().take(3).cloned().collect::<Vec<_>>().join("; ")) },
        ),
        left == 0 && missing.is_empty() && failed.is_empty() && verify.status.success(),
    ));
    new_reader.stop().await?;
    command.stop().await?;
    Ok(rows)
}
