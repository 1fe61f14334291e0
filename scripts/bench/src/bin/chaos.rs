//! `scripts/chaos.sh`: the pair under a steady write load while its broker, its stores and its
//! own processes fail one at a time; then the proof that nothing accepted was lost, nothing was
//! applied twice or backwards, and the read model equals the log.
//!
//! - Load: creates, updates and deletes at a fixed rate (default 100/s), each sent at its time
//!   whatever the earlier ones are doing; every answer is recorded.
//! - Faults, one at a time with pauses between (the cycle repeats on longer runs): RabbitMQ
//!   stopped and started, MongoDB stopped and started, PostgreSQL stopped and started (through
//!   `scripts/dev-services.sh`), command-service SIGKILLed and restarted, query-service
//!   SIGKILLed and restarted.
//! - After each fault heals: how long until every write accepted up to then is readable on the
//!   query side (`GET /todos/{id}?min_version=`).
//! - At the end: writes accepted; writes answered 503 outside a PostgreSQL outage (must be 0);
//!   other 5xx answers (must be 0); accepted writes missing from the read model (must be 0);
//!   `query-service verify` differences (must be 0); events query-service applied twice or
//!   backwards, from its own log of each event applied (must be 0). Exit code 1 if a
//!   must-be-zero is not.
//!
//! Everything is its own: PostgreSQL and MongoDB databases `chaos_<run>`, RabbitMQ exchange and
//! queues `chaos.<run>*`, services on `CHAOS_PORT` (5301) and the next port. They are removed at
//! the end unless `--keep` is given (then the pair's data stays for `query-service verify`).

use anyhow::{bail, Context};
use bench::process::Service;
use bson::{doc, Document};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::TryStreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

struct Args {
    minutes: f64,
    rate: u32,
    keep: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        minutes: 5.0,
        rate: 100,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--minutes" => a.minutes = it.next().context("--minutes N")?.parse()?,
            "--rate" => a.rate = it.next().context("--rate N")?.parse()?,
            "--keep" => a.keep = true,
            other => bail!("unknown argument {other:?}: --minutes N, --rate N, --keep"),
        }
    }
    Ok(a)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    RabbitMq,
    MongoDb,
    PostgreSql,
    CommandService,
    QueryService,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::RabbitMq,
        Fault::MongoDb,
        Fault::PostgreSql,
        Fault::CommandService,
        Fault::QueryService,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::RabbitMq => "RabbitMQ stopped",
            Fault::MongoDb => "MongoDB stopped",
            Fault::PostgreSql => "PostgreSQL stopped",
            Fault::CommandService => "command-service SIGKILLed",
            Fault::QueryService => "query-service SIGKILLed",
        }
    }
}

/// A write command-service accepted.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    todo: i64,
    version: i64,
    deleted: bool,
}

#[derive(Default)]
struct Record {
    accepted: Vec<Accepted>,
    /// Answers 503, by when.
    unavailable: Vec<Instant>,
    /// Other 5xx answers.
    errors: Vec<(u16, String)>,
    /// No answer (connection refused or reset, timeout), by when.
    unanswered: Vec<Instant>,
    /// 404 or 412: a write that lost a race with another (a delete, a concurrent update).
    conflicts: u64,
    /// The todos believed live, for picking update and delete targets.
    live: Vec<i64>,
}

fn dev_services(command: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("bash")
        .args(["scripts/dev-services.sh", command])
        .status()
        .with_context(|| format!("scripts/dev-services.sh {command}"))?;
    if !status.success() {
        bail!("scripts/dev-services.sh {command} failed");
    }
    Ok(())
}

struct Pair {
    work: PathBuf,
    port: u16,
    command_vars: Vec<(&'static str, String)>,
    query_vars: Vec<(&'static str, String)>,
    command: Option<Service>,
    query: Option<Service>,
}

impl Pair {
    fn command_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn query_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port + 1)
    }

    async fn start_command(&mut self) -> anyhow::Result<()> {
        let s =
            Service::start(&self.work, "command-service", self.port, &self.command_vars).await?;
        self.command = Some(s);
        Ok(())
    }

    async fn start_query(&mut self) -> anyhow::Result<()> {
        let s =
            Service::start(&self.work, "query-service", self.port + 1, &self.query_vars).await?;
        self.query = Some(s);
        Ok(())
    }

    /// Breaks one thing, holds it broken for `down`, heals it.
    async fn fault(&mut self, fault: Fault, down: Duration) -> anyhow::Result<()> {
        match fault {
            Fault::RabbitMq => {
                dev_services("stop-rabbitmq")?;
                tokio::time::sleep(down).await;
                dev_services("start-rabbitmq")?;
            }
            Fault::MongoDb => {
                dev_services("stop-mongo")?;
                tokio::time::sleep(down).await;
                dev_services("start-mongo")?;
            }
            Fault::PostgreSql => {
                dev_services("stop-postgres")?;
                tokio::time::sleep(down).await;
                dev_services("start-postgres")?;
            }
            Fault::CommandService => {
                if let Some(s) = self.command.take() {
                    s.kill()?;
                }
                tokio::time::sleep(down.min(Duration::from_secs(3))).await;
                self.start_command().await?;
            }
            Fault::QueryService => {
                if let Some(s) = self.query.take() {
                    s.kill()?;
                }
                tokio::time::sleep(down.min(Duration::from_secs(3))).await;
                self.start_query().await?;
            }
        }
        Ok(())
    }
}

/// Sends writes at `rate` per second until `stop`.
async fn load(
    base: String,
    rate: u32,
    record: Arc<Mutex<Record>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()
        .expect("an HTTP client");
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0u64.. {
        if std::sync::atomic::AtomicBool::load(&stop, std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep_until(started + interval * i as u32).await;
        let target = {
            let r = record.lock().expect("record");
            let roll: f64 = rand::random();
            if r.live.is_empty() || roll < 0.4 {
                None
            } else {
                let id = r.live[rand::random_range(0..r.live.len())];
                Some((id, roll >= 0.85))
            }
        };
        let (client, base, record) = (client.clone(), base.clone(), record.clone());
        tasks.spawn(async move {
            let request = match target {
                None => client
                    .post(format!("{base}/todos"))
                    .json(&serde_json::json!({ "title": format!("chaos {i}") })),
                Some((id, false)) => client.patch(format!("{base}/todos/{id}")).json(
                    &serde_json::json!({ "title": format!("chaos {i}"), "completed": i % 2 == 0 }),
                ),
                Some((id, true)) => client.delete(format!("{base}/todos/{id}")),
            };
            let answer = request.send().await;
            let now = Instant::now();
            let mut r = record.lock().expect("record");
            let response = match answer {
                Ok(response) => response,
                Err(_) => {
                    r.unanswered.push(now);
                    return;
                }
            };
            let status = response.status().as_u16();
            let etag = response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim_matches('"').parse::<i64>().ok());
            match (status, target, etag) {
                (201, None, Some(version)) | (200, Some((_, false)), Some(version)) => {
                    drop(r);
                    let id = target.map(|(id, _)| id);
                    // A create's id is in its Location header.
                    let id = id.or_else(|| {
                        response
                            .headers()
                            .get("location")?
                            .to_str()
                            .ok()?
                            .rsplit('/')
                            .next()?
                            .parse()
                            .ok()
                    });
                    let mut r = record.lock().expect("record");
                    if let Some(todo) = id {
                        if target.is_none() {
                            r.live.push(todo);
                        }
                        r.accepted.push(Accepted {
                            todo,
                            version,
                            deleted: false,
                        });
                    }
                }
                (204, Some((id, true)), Some(version)) => {
                    r.live.retain(|t| *t != id);
                    r.accepted.push(Accepted {
                        todo: id,
                        version,
                        deleted: true,
                    });
                }
                (404 | 412, _, _) => {
                    r.conflicts += 1;
                    if let Some((id, _)) = target {
                        if status == 404 {
                            r.live.retain(|t| *t != id);
                        }
                    }
                }
                (503, _, _) => r.unavailable.push(now),
                (s, _, _) => r.errors.push((s, format!("{target:?}"))),
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Waits until every write of `writes` is readable on the query side (the todo at that version
/// or later, or deleted since); how long that took, or `None` past `within`.
async fn readable(query: &str, writes: Vec<Accepted>, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    // The newest accepted version of each todo is enough: the guard applies in order.
    let mut newest: HashMap<i64, i64> = HashMap::new();
    for w in writes {
        let v = newest.entry(w.todo).or_insert(0);
        *v = (*v).max(w.version);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?;
    let pending: Vec<(i64, i64)> = newest.into_iter().collect();
    let chunks: Vec<Vec<(i64, i64)>> = pending.chunks(64).map(|c| c.to_vec()).collect();
    let mut set = tokio::task::JoinSet::new();
    for chunk in chunks {
        let (client, query) = (client.clone(), query.to_string());
        set.spawn(async move {
            for (todo, version) in chunk {
                loop {
                    let url = format!("{query}/todos/{todo}?min_version={version}");
                    if let Ok(r) = client.get(&url).send().await {
                        if r.status() == 200 || r.status() == 404 {
                            break;
                        }
                    }
                    if started.elapsed() > within {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            true
        });
    }
    let mut all = true;
    while let Some(done) = set.join_next().await {
        all &= done.unwrap_or(false);
    }
    all.then(|| started.elapsed())
}

/// From query-service's JSON logs: events applied twice, and applied after a newer version
/// of the same todo.
fn twice_or_backwards(work: &std::path::Path, port: u16) -> anyhow::Result<(u64, u64, u64)> {
    let text = std::fs::read_to_string(work.join(format!("query-service-{port}.log")))?;
    let mut applied: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
    let mut total = 0;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["message"] != "event projected" || v["outcome"] != "Applied" {
            continue;
        }
        let (Some(todo), Some(version)) = (v["todo_id"].as_i64(), v["version"].as_i64()) else {
            continue;
        };
        let at = v["timestamp"].as_str().unwrap_or_default().to_string();
        applied.entry(todo).or_default().push((at, version));
        total += 1;
    }
    let (mut twice, mut backwards) = (0, 0);
    for versions in applied.values_mut() {
        versions.sort();
        let mut seen = std::collections::HashSet::new();
        let mut highest = 0;
        for (_, v) in versions.iter() {
            if !seen.insert(*v) {
                twice += 1;
            }
            if *v < highest {
                backwards += 1;
            }
            highest = highest.max(*v);
        }
    }
    Ok((total, twice, backwards))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let run = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let work = std::env::current_dir()?
        .join("target")
        .join("chaos")
        .join(&run);
    std::fs::create_dir_all(&work)?;
    let port: u16 = std::env::var("CHAOS_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5301);
    let admin_url = std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://todo:todo@127.0.0.1:5432/postgres".into());
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let mongodb_uri = std::env::var("MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?maxIdleTimeMS=60000".into());
    let name = format!("chaos_{run}");
    let database_url = format!(
        "{}/{name}",
        &admin_url[..admin_url.rfind('/').unwrap_or(admin_url.len())]
    );
    let exchange = format!("chaos.{run}");
    let queue = format!("chaos.{run}.projection");
    eprintln!(
        "[chaos] run {run}: {} min at {} writes/s; logs in {}",
        args.minutes,
        args.rate,
        work.display()
    );

    let mut admin = AsyncPgConnection::establish(&admin_url)
        .await
        .context("PostgreSQL")?;
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    drop(admin);
    let mut pair = Pair {
        work: work.clone(),
        port,
        command_vars: vec![
            ("DATABASE_URL", database_url.clone()),
            ("AMQP_URL", amqp_url.clone()),
            ("AMQP_EXCHANGE", exchange.clone()),
            ("LOG_FORMAT", "json".into()),
        ],
        query_vars: vec![
            ("MONGODB_URI", mongodb_uri.clone()),
            ("MONGODB_DB", name.clone()),
            ("AMQP_URL", amqp_url.clone()),
            ("AMQP_EXCHANGE", exchange.clone()),
            ("AMQP_QUEUE", queue.clone()),
            ("LOG_FORMAT", "json".into()),
            ("RUST_LOG", "info,query_service::consumer=debug".into()),
            // The lag by position reads this pair's feed (and, once quiet, counts again kept
            // counts a redelivery after a kill may have left off).
            ("FEED_URL", format!("http://127.0.0.1:{port}")),
            ("LAG_EVERY_MS", "1000".into()),
        ],
        command: None,
        query: None,
    };
    // query-service first: it declares the queue, so no event of the first writes is unroutable.
    pair.start_query().await?;
    pair.start_command().await?;

    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = tokio::spawn(load(
        pair.command_base(),
        args.rate,
        record.clone(),
        stop.clone(),
    ));

    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let (warmup, tail) = (Duration::from_secs(15), Duration::from_secs(20));
    let faults = ((total.saturating_sub(warmup + tail)).as_secs() / 50).max(1) as usize;
    let slot = total.saturating_sub(warmup + tail) / faults as u32;
    let down = Duration::from_secs(10);
    let started = Instant::now();
    tokio::time::sleep(warmup).await;
    let mut windows: Vec<(Fault, Instant, Instant)> = Vec::new();
    let mut convergence = Vec::new();
    for k in 0..faults {
        let fault = Fault::ALL[k % Fault::ALL.len()];
        let slot_start = Instant::now();
        eprintln!(
            "[chaos] {:>4.0} s: {}",
            started.elapsed().as_secs_f64(),
            fault.name()
        );
        let from = Instant::now();
        pair.fault(fault, down).await?;
        let healed = Instant::now();
        windows.push((fault, from, healed));
        let writes: Vec<Accepted> = record.lock().expect("record").accepted.clone();
        let took = readable(&pair.query_base(), writes, Duration::from_secs(180)).await;
        eprintln!(
            "[chaos]        healed after {:.1} s; read model caught up {}",
            (healed - from).as_secs_f64(),
            took.map_or("NOT within 180 s".into(), |t| format!(
                "{:.1} s later",
                t.as_secs_f64()
            ))
        );
        convergence.push((fault, (healed - from), took));
        tokio::time::sleep_until(slot_start + slot).await;
    }
    tokio::time::sleep_until(started + total.saturating_sub(tail)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    loader.await?;

    // ---------------------------------------------------------------- the proof
    let record = std::mem::take(&mut *record.lock().expect("record"));
    let final_wait = readable(
        &pair.query_base(),
        record.accepted.clone(),
        Duration::from_secs(300),
    )
    .await;
    let grace = Duration::from_secs(5);
    let during = |at: &Instant, kinds: &[Fault]| {
        windows
            .iter()
            .any(|(f, from, to)| kinds.contains(f) && *at >= *from && *at <= *to + grace)
    };
    let bad_503 = record
        .unavailable
        .iter()
        .filter(|at| !during(at, &[Fault::PostgreSql]))
        .count();
    let bad_unanswered = record
        .unanswered
        .iter()
        .filter(|at| !during(at, &[Fault::CommandService, Fault::PostgreSql]))
        .count();

    // Every accepted write against MongoDB: the todo at that version or later.
    let mongo = mongodb::Client::with_uri_str(&mongodb_uri).await?;
    let todos = mongo.database(&name).collection::<Document>("todos");
    let mut newest: HashMap<i64, Accepted> = HashMap::new();
    for w in &record.accepted {
        let e = newest.entry(w.todo).or_insert(*w);
        if w.version > e.version {
            *e = *w;
        }
    }
    let ids: Vec<i64> = newest.keys().copied().collect();
    let mut stored: HashMap<i64, (i64, bool)> = HashMap::new();
    for chunk in ids.chunks(500) {
        let docs: Vec<Document> = todos
            .find(doc! { "_id": { "$in": chunk } })
            .await?
            .try_collect()
            .await?;
        for d in docs {
            if let (Ok(id), Ok(v)) = (d.get_i64("_id"), d.get_i64("version")) {
                stored.insert(id, (v, d.get_bool("deleted").unwrap_or(false)));
            }
        }
    }
    let missing = newest
        .values()
        .filter(|w| match stored.get(&w.todo) {
            None => true,
            Some((v, deleted)) => *v < w.version || (w.deleted && !deleted),
        })
        .count();

    // Quiet now: query-service's lag by position says so within a few readings, and counts
    // again kept counts a redelivery may have left off.
    let client = reqwest::Client::new();
    let quiet_by = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let state = async {
            let stats: serde_json::Value = client
                .get(format!("{}/stats", pair.query_base()))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            stats["lag"]["state"].as_str().map(String::from)
        }
        .await;
        if state.as_deref() == Some("idle") || tokio::time::Instant::now() > quiet_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let verify = std::process::Command::new("target/release/query-service")
        .args(["verify", &pair.command_base()])
        .env("MONGODB_URI", &mongodb_uri)
        .env("MONGODB_DB", &name)
        .env("RUST_LOG", "warn")
        .output()
        .context("running query-service verify")?;
    let verify_out = String::from_utf8_lossy(&verify.stdout).to_string();
    let differences = verify_out
        .lines()
        .next()
        .and_then(|l| l.split(": ").last())
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(u64::MAX);

    if let Some(s) = pair.command.take() {
        s.stop().await?;
    }
    if let Some(s) = pair.query.take() {
        s.stop().await?;
    }
    let (applied, twice, backwards) = twice_or_backwards(&work, port + 1)?;

    let creates = record.accepted.iter().filter(|w| w.version == 1).count();
    let deletes = record.accepted.iter().filter(|w| w.deleted).count();
    println!(
        "\n| chaos run {run}: {} min, {} writes/s | |",
        args.minutes, args.rate
    );
    println!("|---|---|");
    println!(
        "| writes accepted | {} ({creates} creates, {} updates, {deletes} deletes) |",
        record.accepted.len(),
        record.accepted.len() - creates - deletes
    );
    println!(
        "| writes refused as conflicts (404/412: lost a race with a delete or an update) | {} |",
        record.conflicts
    );
    println!(
        "| writes answered 503 while PostgreSQL was down | {} |",
        record.unavailable.len() - bad_503
    );
    println!(
        "| writes unanswered while command-service or PostgreSQL was down | {} |",
        record.unanswered.len() - bad_unanswered
    );
    println!("| **must be 0**: writes answered 503 with PostgreSQL up | {bad_503} |");
    println!("| **must be 0**: writes unanswered otherwise | {bad_unanswered} |");
    println!(
        "| **must be 0**: other 5xx answers | {} |",
        record.errors.len()
    );
    println!("| **must be 0**: accepted writes missing from the read model | {missing} |");
    println!("| **must be 0**: `query-service verify` differences | {differences} |");
    println!("| **must be 0**: events applied twice (of {applied} applied) | {twice} |");
    println!("| **must be 0**: events applied after a newer version | {backwards} |");
    println!(
        "| read model caught up after the load stopped | {} |",
        final_wait.map_or("NOT within 300 s".into(), |t| format!(
            "{:.1} s",
            t.as_secs_f64()
        ))
    );
    for (fault, held, took) in &convergence {
        println!(
            "| {} for {:.1} s: read model caught up | {} |",
            fault.name(),
            held.as_secs_f64(),
            took.map_or("NOT within 180 s".into(), |t| format!(
                "{:.1} s after it healed",
                t.as_secs_f64()
            ))
        );
    }
    println!("\nquery-service verify: {}", verify_out.trim_end());
    for (status, what) in record.errors.iter().take(10) {
        println!("5xx: {status} for {what}");
    }

    if args.keep {
        println!(
            "\nKept: PostgreSQL database {name}, MongoDB database {name}, exchange {exchange}, queue {queue}. \
             Verify by hand with the pair started on them, e.g.\n  \
             DATABASE_URL={database_url} AMQP_EXCHANGE={exchange} HTTP_ADDR=127.0.0.1:{port} target/release/command-service &\n  \
             MONGODB_DB={name} target/release/query-service verify http://127.0.0.1:{port}"
        );
    } else {
        let mut admin = AsyncPgConnection::establish(&admin_url).await?;
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
        mongo.database(&name).drop().await?;
        let conn =
            lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        for q in [queue.clone(), events::dead_letter_queue(&queue)] {
            channel
                .queue_delete(
                    q.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await?;
        }
        for x in [exchange.clone(), events::dead_letter_exchange(&exchange)] {
            channel
                .exchange_delete(
                    x.as_str().into(),
                    lapin::options::ExchangeDeleteOptions::default(),
                )
                .await?;
        }
        let _ = conn.close(200, "done".into()).await;
    }

    let failed = bad_503 + bad_unanswered + record.errors.len() + missing;
    if failed > 0 || differences != 0 || twice > 0 || backwards > 0 || final_wait.is_none() {
        eprintln!("[chaos] FAILED: a must-be-zero is not zero");
        std::process::exit(1);
    }
    eprintln!("[chaos] passed");
    Ok(())
}
