//! The `rebuild` phase: `query-service rebuild` on a filled pair while writes go on at a fixed
//! rate and a reader pages through the whole list again and again.
//!
//! The pair is filled to `BENCH_REBUILD_TODOS` (default 100,000) on both sides
//! (`stores::fill_pair`), then:
//!
//! 1. writes start at `BENCH_REBUILD_RATE` a second (default 100; open loop: a create and an
//!    update of an existing todo in turn, never a delete), and a reader pages through
//!    `GET /todos?limit=100`, a page every 50 ms, from the first page to the last, again and
//!    again, holding each
//!    pass to everything it saw before: no todo it saw is missing, none is at an older
//!    version;
//! 2. `query-service rebuild` runs as an operator would run it; it is killed (SIGKILL) once it
//!    has read half the log, and run again, which takes it up where it stopped, switches the
//!    readers and, after its grace period, drops the old generation;
//! 3. the writes go on through the grace period, then stop; once the projection has settled
//!    them, `query-service verify` compares the read model with the log.
//!
//! It prints the rebuild's rate beside the store's own bulk rate (the limit: the projection's
//! bulk command with the same indexes), the reader's passes, pages and regressions, its page
//! latency before, during and after the rebuild, and verify's answer. It fails the run on a
//! regression, a failed write or a verify that finds a difference.

use crate::load::ms;
use crate::{rate, ratio, stores, Config, Report};
use anyhow::bail;
use bench::process::Service;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The list's page size the reader asks for.
const PAGE: usize = 100;
/// The reader's pace: a page every this long (a person scrolling fast, or a client syncing),
/// not as fast as the store answers, which would leave the rebuild and the projection nothing.
const PAGE_EVERY: Duration = Duration::from_millis(50);
/// How long the old generation is kept after the switch.
const GRACE_S: u64 = 15;

/// What the reader saw.
#[derive(Default)]
struct Reading {
    passes: u64,
    pages: u64,
    regressions: Vec<String>,
    /// Each page's latency (seconds) and the generation `/stats` named before it.
    latencies: Vec<(Instant, f64)>,
    /// Todos in the last whole pass.
    last_pass: usize,
}

/// Pages through the list until `stop`.
async fn read_throughout(base: String, stop: Arc<AtomicBool>, reading: Arc<Mutex<Reading>>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let mut seen: HashMap<i64, i64> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let mut this_pass: HashMap<i64, i64> = HashMap::with_capacity(seen.len() + 1000);
        let mut url = format!("{base}/todos?limit={PAGE}");
        let mut whole = true;
        loop {
            if stop.load(Ordering::Relaxed) {
                whole = false;
                break;
            }
            tokio::time::sleep(PAGE_EVERY).await;
            let asked = Instant::now();
            let response = match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => r,
                Ok(r) => {
                    let status = r.status();
                    reading
                        .lock()
                        .expect("reading")
                        .regressions
                        .push(format!("GET {url}: {status}"));
                    whole = false;
                    break;
                }
                Err(err) => {
                    reading
                        .lock()
                        .expect("reading")
                        .regressions
                        .push(format!("GET {url}: {err}"));
                    whole = false;
                    break;
                }
            };
            let next = response
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix('<')?.split_once('>'))
                .map(|(path, _)| format!("{base}{path}"));
            let page: Vec<Value> = response.json().await.unwrap_or_default();
            let took = asked.elapsed().as_secs_f64();
            let mut r = reading.lock().expect("reading");
            r.pages += 1;
            r.latencies.push((asked, took));
            for todo in &page {
                let (Some(id), Some(version)) = (todo["id"].as_i64(), todo["version"].as_i64())
                else {
                    continue;
                };
                if let Some(&before) = seen.get(&id) {
                    if version < before {
                        let pass = r.passes;
                        r.regressions.push(format!(
                            "pass {pass}: todo {id} at version {version} after {before}"
                        ));
                    }
                }
                this_pass.insert(id, version);
            }
            drop(r);
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        if !whole {
            continue;
        }
        let mut r = reading.lock().expect("reading");
        let missing: Vec<i64> = seen
            .keys()
            .filter(|id| !this_pass.contains_key(id))
            .copied()
            .collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(5).map(|id| id.to_string()).collect();
            let pass = r.passes;
            r.regressions.push(format!(
                "pass {pass}: {} todos seen before are missing ({}…)",
                missing.len(),
                shown.join(", ")
            ));
        }
        r.passes += 1;
        r.last_pass = this_pass.len();
        drop(r);
        for (id, version) in this_pass {
            let kept = seen.entry(id).or_insert(version);
            *kept = (*kept).max(version);
        }
    }
}

/// Writes at `per_second` until `stop`: a create and an update of one of the first `size`
/// todos in turn. Returns (accepted, failed with a sample of the failures).
async fn write_throughout(
    base: String,
    per_second: u32,
    size: usize,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let interval = Duration::from_secs_f64(1.0 / per_second as f64);
    let mut next = tokio::time::Instant::now();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(next).await;
        next += interval;
        n += 1;
        let (client, base, accepted, failed) = (
            client.clone(),
            base.clone(),
            accepted.clone(),
            failed.clone(),
        );
        tokio::spawn(async move {
            let request = if n.is_multiple_of(2) {
                client
                    .post(format!("{base}/todos"))
                    .json(&json!({ "title": format!("written during the rebuild {n}") }))
            } else {
                let id = 1 + (n * 7919) % size.max(1) as u64;
                client
                    .patch(format!("{base}/todos/{id}"))
                    .json(&json!({ "completed": n % 4 == 1 }))
            };
            match request.send().await {
                Ok(r) if r.status().is_success() => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => failed
                    .lock()
                    .expect("failed")
                    .push(format!("{}", r.status())),
                Err(err) => failed.lock().expect("failed").push(err.to_string()),
            }
        });
    }
}

fn p99_between(latencies: &[(Instant, f64)], from: Instant, to: Instant) -> (usize, f64, f64) {
    let mut within: Vec<f64> = latencies
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, s)| *s)
        .collect();
    within.sort_by(f64::total_cmp);
    if within.is_empty() {
        return (0, f64::NAN, f64::NAN);
    }
    let k = ((within.len() - 1) as f64 * 0.99).round() as usize;
    (within.len(), within[k], within[within.len() - 1])
}

/// `query-service rebuild` as an operator runs it, its log appended to `log`.
fn rebuild_command(
    config: &Config,
    mongo_db: &str,
    command: &str,
    log: &std::path::Path,
) -> anyhow::Result<std::process::Command> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut c = std::process::Command::new(bench::process::binary("query-service"));
    c.args(["rebuild", command, "--grace", &GRACE_S.to_string()])
        .env("MONGODB_URI", &config.mongodb_uri)
        .env("MONGODB_DB", mongo_db)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::from(file.try_clone()?))
        .stdout(std::process::Stdio::from(file));
    Ok(c)
}

/// The `read_model` object of query-service's `/stats`.
async fn read_model(client: &reqwest::Client, query: &str) -> anyhow::Result<Value> {
    let stats: Value = client
        .get(format!("{query}/stats"))
        .send()
        .await?
        .json()
        .await?;
    Ok(stats["read_model"].clone())
}

pub async fn phase(config: &Config, report: &mut Report) -> anyhow::Result<()> {
    let size = config.rebuild_todos;
    let per_second = config.rebuild_rate;
    let pg_db = format!("bench_rebuild_{}", config.run);
    let mongo_db = pg_db.clone();
    stores::create_database(config, &pg_db).await?;
    stores::migrate(&config.database_url(&pg_db)).await?;
    let filled = Instant::now();
    stores::fill_pair(config, &pg_db, &mongo_db, size).await?;
    report.note(format!(
        "rebuild: {size} todos filled on both sides in {:.0} s",
        filled.elapsed().as_secs_f64()
    ));
    let (bulk, store_rate) = stores::store_bulk_rate(config, 5_000).await?;

    let command_vars = vec![
        ("DATABASE_URL", config.database_url(&pg_db)),
        ("AMQP_URL", config.amqp_url.clone()),
        ("AMQP_EXCHANGE", config.rebuild_exchange()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let query_vars = vec![
        ("AMQP_URL", config.amqp_url.clone()),
        ("AMQP_EXCHANGE", config.rebuild_exchange()),
        ("MONGODB_URI", config.mongodb_uri.clone()),
        ("MONGODB_DB", mongo_db.clone()),
        ("AMQP_QUEUE", config.rebuild_queue()),
        ("RUST_LOG", "info".to_string()),
    ];
    let command =
        Service::start(&config.work, "command-service", config.port, &command_vars).await?;
    let query = Service::start(&config.work, "query-service", config.port + 1, &query_vars).await?;
    let client = reqwest::Client::new();

    let stop_writes = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let writer = tokio::spawn(write_throughout(
        command.base.clone(),
        per_second,
        size,
        stop_writes.clone(),
        accepted.clone(),
        failed.clone(),
    ));
    let stop_reads = Arc::new(AtomicBool::new(false));
    let reading = Arc::new(Mutex::new(Reading::default()));
    let reader = tokio::spawn(read_throughout(
        query.base.clone(),
        stop_reads.clone(),
        reading.clone(),
    ));
    // A baseline: the reader's pages with writes going on and no rebuild.
    let before = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;

    let log = config.work.join("rebuild.log");
    let started = Instant::now();
    let mut first = rebuild_command(config, &mongo_db, &command.base, &log)?.spawn()?;
    let half = size as i64 / 2;
    let killed_at = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(status) = first.try_wait()? {
            bail!(
                "the rebuild ended before it was killed: {status} (log: {})",
                log.display()
            );
        }
        let rm = read_model(&client, &query.base).await?;
        if let Some(p) = rm["build_position"].as_i64().filter(|&p| p >= half) {
            first.kill()?;
            first.wait()?;
            break p;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the rebuild did not read half the log within 30 minutes");
        }
    };
    let killed_after = started.elapsed().as_secs_f64();
    let second = rebuild_command(config, &mongo_db, &command.base, &log)?;
    let (second, switched_at) = {
        let mut second = second;
        let child = tokio::task::spawn_blocking(move || second.output());
        // The moment the pointer moved, as this replica saw it.
        let watch = {
            let (client, query) = (client.clone(), query.base.clone());
            tokio::spawn(async move {
                loop {
                    if let Ok(rm) = read_model(&client, &query).await {
                        if rm["generation"].as_i64().unwrap_or(0) > 0 {
                            return Instant::now();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let out = child.await??;
        // A rebuild that failed before its switch leaves the pointer where it was.
        let switched_at = match tokio::time::timeout(Duration::from_secs(5), watch).await {
            Ok(seen) => seen?,
            Err(_) => bail!(
                "the rebuild taken up ended ({}) and the readers never switched (log: {})",
                out.status,
                log.display()
            ),
        };
        (out, switched_at)
    };
    let rebuilt_s = started.elapsed().as_secs_f64();
    // Its summary, the last line it printed that starts `rebuild:`.
    let said = std::fs::read_to_string(&log)?
        .lines()
        .rev()
        .find(|l| l.starts_with("rebuild: "))
        .unwrap_or("no summary line")
        .to_string();
    if !second.status.success() {
        bail!(
            "the rebuild taken up failed: {said} (log: {})",
            log.display()
        );
    }
    let after_switch = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop_writes.store(true, Ordering::Relaxed);
    writer.await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = Instant::now();
    stop_reads.store(true, Ordering::Relaxed);
    reader.await?;

    // The projection settles what was written, then verify.
    crate::load::wait_for_idle(&query.base).await?;
    let verified = std::process::Command::new(bench::process::binary("query-service"))
        .args(["verify", &command.base])
        .env("MONGODB_URI", &config.mongodb_uri)
        .env("MONGODB_DB", &mongo_db)
        .output()?;
    let verify_said = String::from_utf8_lossy(&verified.stdout);
    let verify_line = verify_said
        .lines()
        .find(|l| l.starts_with("verify: "))
        .unwrap_or("no verify line")
        .to_string();
    let rm = read_model(&client, &query.base).await?;

    let r = std::mem::take(&mut *reading.lock().expect("reading"));
    let accepted = accepted.load(Ordering::Relaxed);
    let failed = failed.lock().expect("failed").clone();
    let events_read = second_events(&said).unwrap_or(0) + killed_at.max(0) as u64;
    let build_rate = events_read as f64 / rebuilt_s;
    report.row(
        format!("rebuild at {size} todos, writes at {per_second}/s"),
        format!(
            "{} ({events_read} events in {rebuilt_s:.0} s, killed once)",
            rate(build_rate)
        ),
        format!("store bulk rate {} (bulks of {bulk})", rate(store_rate)),
        ratio(build_rate, store_rate),
    );
    let (n0, p0, m0) = p99_between(&r.latencies, before, started);
    let (n1, p1, m1) = p99_between(&r.latencies, started, switched_at);
    let (n2, p2, m2) = p99_between(&r.latencies, switched_at, end);
    report.row(
        "reader: list page of 100, p99 (max)".to_string(),
        format!(
            "before {} ({}), {n0} pages; during {} ({}), {n1}; after the switch {} ({}), {n2}",
            ms(p0),
            ms(m0),
            ms(p1),
            ms(m1),
            ms(p2),
            ms(m2)
        ),
        String::new(),
        ratio(p1, p0),
    );
    // The slowest pages, and when, from the start of the rebuild.
    let mut slowest: Vec<&(Instant, f64)> = r.latencies.iter().collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let slowest: Vec<String> = slowest
        .iter()
        .take(3)
        .map(|(at, took)| {
            let from_start = at.saturating_duration_since(started).as_secs_f64()
                - started.saturating_duration_since(*at).as_secs_f64();
            format!("{} at {from_start:+.1} s", ms(*took))
        })
        .collect();
    report.note(format!(
        "rebuild: slowest pages {} from the rebuild's start (the switch seen at {:+.1} s, the rebuild ended at {rebuilt_s:+.1} s)",
        slowest.join(", "),
        (switched_at - started).as_secs_f64()
    ));
    report.note(format!(
        "rebuild: killed (SIGKILL) at log position {killed_at} after {killed_after:.0} s; run again: {said}. \
         The reader: {} whole passes of the list ({} pages), {} regressions{}; last pass {} todos; \
         /stats read_model after: {rm}. Writes: {accepted} accepted, {} failed{}. \
         Pages after the switch counted from {:.1} s after the rebuild's switch was seen. {verify_line}",
        r.passes,
        r.pages,
        r.regressions.len(),
        if r.regressions.is_empty() {
            String::new()
        } else {
            format!(" (first: {})", r.regressions[..r.regressions.len().min(5)].join("; "))
        },
        r.last_pass,
        failed.len(),
        failed.first().map(|f| format!(" (first: {f})")).unwrap_or_default(),
        (after_switch - switched_at).as_secs_f64(),
    ));
    let regressions = r.regressions.len();
    query.stop().await?;
    command.stop().await?;
    if regressions > 0 || !failed.is_empty() || !verified.status.success() {
        bail!(
            "the rebuild did not hold: {regressions} regressions, {} failed writes, verify: {verify_said}",
            failed.len()
        );
    }
    Ok(())
}

/// The events the second run read, from its summary line ("… read N events after …").
fn second_events(said: &str) -> Option<u64> {
    said.split("read ").nth(1)?.split(' ').next()?.parse().ok()
}
