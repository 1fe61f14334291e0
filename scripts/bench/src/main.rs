//! `scripts/bench.sh`: the pair measured against the limits of its own stores, in one run on
//! one machine, printed as one table of figures, limits and their ratios.
//!
//! Every figure is taken beside the limit it is compared with, in the same run, because a
//! shared machine's absolute numbers say little on their own:
//!
//! - writes: pgbench running command-service's own write statement (`commands::CREATE`) vs
//!   `POST /todos` under wrk, at 1 and 16 connections, with command-service alone and then
//!   with query-service running;
//! - projection: the store's rate for the projection's own bulk command (same indexes, same
//!   bulk size) vs the rate query-service drains a queued burst at; and the store's rate with
//!   each secondary index alone, to show what each costs;
//! - reads: the store's find-by-id rate vs `GET /todos/{id}` at 16 connections; a list page at
//!   1,000 and 20,000 todos vs the store's rate for the query that returns its documents, and
//!   the store's `explain` of it;
//! - open loop: writes sent at a fixed rate whatever the answers do (so slow answers show as
//!   latency, not as a lower rate), each followed by `GET /todos/{id}?min_version=` to time
//!   when the read side has it.
//!
//! Each phase also prints where the CPU went (PostgreSQL, RabbitMQ, MongoDB, the services, the
//! load generator). It asserts nothing about speed.
//!
//! Everything it creates is its own: PostgreSQL databases `bench_*`, MongoDB databases
//! `bench_*`, RabbitMQ exchange and queues `bench.*` (removed at the end), services on ports
//! `BENCH_PORT` (5201) to `BENCH_PORT + 3`.

mod cpu;
mod load;
mod rebuild;
mod stores;

use bench::process::Service;

use anyhow::Context;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the run measures, from the environment (all optional).
#[derive(Debug, Clone)]
pub struct Config {
    /// `BENCH_SECONDS`: length of each closed-loop measurement (default 10).
    pub seconds: u64,
    /// `BENCH_OPEN_SECONDS`: length of each open-loop rate (default 30).
    pub open_seconds: u64,
    /// `BENCH_RATES`: open-loop write rates per second (default `100,200,400`).
    pub rates: Vec<u32>,
    /// `BENCH_BURST`: todos created, and their events queued, before the projection's drain is
    /// timed (default 10000).
    pub burst: usize,
    /// `BENCH_PORT`: first of four ports for the services (default 5201).
    pub port: u16,
    /// `BENCH_LIST_SIZES`: read model sizes the list phase fills to and measures at
    /// (default `1000,20000`; say `100000,1000000` for production size).
    pub list_sizes: Vec<usize>,
    /// `BENCH_VERIFY_MAX`: the largest filled pair `query-service verify` runs on (default
    /// 100000: it reads the whole log over HTTP).
    pub verify_max: usize,
    /// `BENCH_TODOS`: sizes of the pair the open loop runs at, each filled on both sides
    /// (default `0`; the README's table: `0,100000,1000000`).
    pub pair_sizes: Vec<usize>,
    /// `BENCH_PHASES`: which phases run, of `main` (writes, projection, open loop at the
    /// burst's size, reads), `lists`, `sizes` (default these three) and `rebuild`
    /// (`src/rebuild.rs`).
    pub phases: Vec<String>,
    /// `BENCH_REBUILD_TODOS`: the size of the pair the rebuild phase fills (default 100000).
    pub rebuild_todos: usize,
    /// `BENCH_REBUILD_RATE`: writes per second during the rebuild phase (default 100).
    pub rebuild_rate: u32,
    pub admin_database_url: String,
    pub amqp_url: String,
    pub mongodb_uri: String,
    /// Where logs and generated scripts go.
    pub work: PathBuf,
    pub run: String,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v} does not parse")),
        Err(_) => Ok(default),
    }
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let root = std::env::current_dir()?;
        let run = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
        let rates = std::env::var("BENCH_RATES").unwrap_or_else(|_| "100,200,400".into());
        Ok(Self {
            seconds: env_or("BENCH_SECONDS", 10)?,
            open_seconds: env_or("BENCH_OPEN_SECONDS", 30)?,
            rates: rates
                .split(',')
                .map(|r| r.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .context("BENCH_RATES")?,
            burst: env_or("BENCH_BURST", 10_000)?,
            port: env_or("BENCH_PORT", 5201)?,
            list_sizes: std::env::var("BENCH_LIST_SIZES")
                .unwrap_or_else(|_| "1000,20000".into())
                .split(',')
                .map(|r| r.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .context("BENCH_LIST_SIZES")?,
            verify_max: env_or("BENCH_VERIFY_MAX", 100_000)?,
            pair_sizes: std::env::var("BENCH_TODOS")
                .unwrap_or_else(|_| "0".into())
                .split(',')
                .map(|r| r.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .context("BENCH_TODOS")?,
            phases: std::env::var("BENCH_PHASES")
                .unwrap_or_else(|_| "main,lists,sizes".into())
                .split(',')
                .map(|p| p.trim().to_string())
                .collect(),
            rebuild_todos: env_or("BENCH_REBUILD_TODOS", 100_000)?,
            rebuild_rate: env_or("BENCH_REBUILD_RATE", 100)?,
            admin_database_url: std::env::var("TEST_ADMIN_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://todo:todo@127.0.0.1:5432/postgres".into()),
            amqp_url: std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            mongodb_uri: std::env::var("MONGODB_URI")
                .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?maxIdleTimeMS=60000".into()),
            work: root.join("target").join("bench").join(&run),
            run,
        })
    }

    fn database_url(&self, name: &str) -> String {
        let base = &self.admin_database_url;
        let cut = base.rfind('/').unwrap_or(base.len());
        format!("{}/{name}", &base[..cut])
    }

    fn exchange(&self) -> String {
        format!("bench.{}", self.run)
    }

    fn queue(&self) -> String {
        format!("bench.{}.projection", self.run)
    }

    fn size_queue(&self, size: usize) -> String {
        format!("{}.size{size}", self.queue())
    }

    fn size_exchange(&self, size: usize) -> String {
        format!("{}.size{size}", self.exchange())
    }

    fn rebuild_exchange(&self) -> String {
        format!("{}.rebuild", self.exchange())
    }

    fn rebuild_queue(&self) -> String {
        format!("{}.rebuild", self.queue())
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

/// One line of the result table.
pub struct Row {
    pub what: String,
    pub figure: String,
    pub limit: String,
    pub ratio: Option<f64>,
}

pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn row(&mut self, what: impl Into<String>, figure: String, limit: String, ratio: Option<f64>) {
        let row = Row {
            what: what.into(),
            figure,
            limit,
            ratio,
        };
        eprintln!(
            "[bench] {:<44} {:<34} {:<30} {}",
            row.what,
            row.figure,
            row.limit,
            row.ratio.map(|r| format!("{r:.2}x")).unwrap_or_default()
        );
        self.rows.push(row);
    }

    fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("[bench] {note}");
        self.notes.push(note);
    }

    /// Where the CPU went during `phase` (a note under the table).
    fn cpu(&mut self, phase: impl std::fmt::Display, sampler: cpu::Sampler) {
        self.note(format!("CPU, {phase}: {}", sampler.stop()));
    }

    fn print(&self) {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n| measured | figure | limit (same run) | ratio |\n|---|---|---|---|"
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                r.what,
                r.figure,
                r.limit,
                r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default()
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n{n}");
        }
        println!("{out}");
    }
}

fn ratio(figure: f64, limit: f64) -> Option<f64> {
    (limit > 0.0).then(|| figure / limit)
}

fn rate(x: f64) -> String {
    format!("{x:.0}/s")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    std::fs::create_dir_all(&config.work)?;
    eprintln!(
        "[bench] run {} (logs in {}); {} s per closed loop, {} s per open-loop rate",
        config.run,
        config.work.display(),
        config.seconds,
        config.open_seconds
    );
    let mut report = Report {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let result = tokio::select! {
        result = run(&config, &mut report) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let cleanup = stores::cleanup(&config).await;
    report.print();
    if let Err(err) = &cleanup {
        eprintln!("[bench] cleanup: {err:#}");
    }
    result
}

async fn run(config: &Config, report: &mut Report) -> anyhow::Result<()> {
    report.note(format!(
        "Machine: {} cores, {}; PostgreSQL {}, MongoDB-wire server: {}.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu::model(),
        stores::postgres_version(config).await.unwrap_or_default(),
        stores::mongo_server(config).await.unwrap_or_default(),
    ));

    if config.runs("main") {
        main_phase(config, report).await?;
    }
    if config.runs("lists") {
        lists(config, report).await?;
    }
    if config.runs("sizes") {
        for &size in &config.pair_sizes {
            at_size(config, report, size).await?;
        }
    }
    if config.runs("rebuild") {
        rebuild::phase(config, report).await?;
    }
    Ok(())
}

/// The pair at `size` todos (both sides filled as the pipeline leaves them, `verify` run on
/// it): the store's own saturation rate on what each write costs it, and open loops at
/// fractions of it, for the highest rate held with write-to-readable p99 under 50 ms and max
/// under 1 s.
async fn at_size(config: &Config, report: &mut Report, size: usize) -> anyhow::Result<()> {
    let pg_db = format!("bench_size{size}_{}", config.run);
    let mongo_db = pg_db.clone();
    stores::create_database(config, &pg_db).await?;
    stores::migrate(&config.database_url(&pg_db)).await?;
    let filled = Instant::now();
    stores::fill_pair(config, &pg_db, &mongo_db, size).await?;
    let fill_s = filled.elapsed().as_secs_f64();
    // An exchange of its own: the earlier phases' queues stay bound to the run's exchange,
    // and every message to them would be stored again by queues nobody reads.
    let command_vars = vec![
        ("DATABASE_URL", config.database_url(&pg_db)),
        ("AMQP_URL", config.amqp_url.clone()),
        ("AMQP_EXCHANGE", config.size_exchange(size)),
        ("RUST_LOG", "warn".to_string()),
    ];
    let query_vars = vec![
        ("AMQP_URL", config.amqp_url.clone()),
        ("AMQP_EXCHANGE", config.size_exchange(size)),
        ("MONGODB_URI", config.mongodb_uri.clone()),
        ("MONGODB_DB", mongo_db.clone()),
        ("AMQP_QUEUE", config.size_queue(size)),
        ("RUST_LOG", "warn".to_string()),
    ];
    let command =
        Service::start(&config.work, "command-service", config.port, &command_vars).await?;
    let query = Service::start(&config.work, "query-service", config.port + 1, &query_vars).await?;
    if size <= config.verify_max {
        let verified = Instant::now();
        let out = std::process::Command::new(bench::process::binary("query-service"))
            .args(["verify", &command.base])
            .env("MONGODB_URI", &config.mongodb_uri)
            .env("MONGODB_DB", &mongo_db)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        report.note(format!(
            "{size} todos: filled both sides in {fill_s:.0} s; query-service verify ({:.0} s): {}",
            verified.elapsed().as_secs_f64(),
            text.lines().next().unwrap_or("no output")
        ));
        if !out.status.success() {
            anyhow::bail!("verify failed on the filled pair: {text}");
        }
    } else {
        report.note(format!(
            "{size} todos: filled both sides in {fill_s:.0} s (verify runs up to BENCH_VERIFY_MAX={})",
            config.verify_max
        ));
    }
    let bulk = 50;
    let cpu = cpu::Sampler::start();
    let saturation = stores::saturation_rate(config, &mongo_db, bulk).await?;
    report.cpu(format!("store saturation at {size} todos"), cpu);
    report.row(
        format!("store saturation, {size} todos"),
        format!(
            "{} (bulks of {bulk}: an $in read, the upserts; a read by id per write)",
            rate(saturation)
        ),
        String::new(),
        None,
    );
    let mut held: Option<(u32, load::Open)> = None;
    // Up from half the saturation rate while rates are held; down from it while they are not.
    let mut fractions = vec![0.5];
    let mut up = [0.65, 0.8, 0.9, 1.0, 1.2].into_iter();
    let mut down = [0.35, 0.25, 0.15, 0.1].into_iter();
    while let Some(&fraction) = fractions.last() {
        let per_second = ((saturation * fraction) as u32).max(1);
        let cpu = cpu::Sampler::start();
        let lag_before = load::histogram(&query.base, "projection_lag_seconds").await?;
        let o = load::open_loop(
            &command.base,
            &query.base,
            per_second,
            Duration::from_secs(config.open_seconds),
        )
        .await?;
        report.cpu(format!("open loop {per_second}/s at {size} todos"), cpu);
        // Where the time goes: from a write's event time (`occurred_at`, taken as the write's
        // statement runs) to its application in MongoDB (the commit, the sequencer, the relay,
        // the broker and the consumer's write, not its settling), the rest being the answer.
        let lag_after = load::histogram(&query.base, "projection_lag_seconds").await?;
        let applied_p99 = load::percentile_bound(&lag_before, &lag_after, 99.0)
            .map_or("none".to_string(), |b| format!("≤ {}", load::ms(b)));
        let ok = o.readable_p99 < 0.050
            && o.readable_max < 1.0
            && o.failed_writes == 0
            && o.failed_reads == 0
            && o.sent_rate >= per_second as f64 * 0.95;
        report.row(
            format!(
                "  open loop {per_second}/s ({:.2}x saturation), {size} todos",
                fraction
            ),
            format!(
                "write-to-readable p99 {} max {}; event-to-store p99 {applied_p99}; POST p99 {}; {} failed{}",
                load::ms(o.readable_p99),
                load::ms(o.readable_max),
                load::ms(o.post_p99),
                o.failed_writes + o.failed_reads,
                if ok { "; held" } else { "; not held" }
            ),
            String::new(),
            None,
        );
        load::wait_for_idle(&query.base).await?;
        let going_down = fractions.len() > 1 && fraction < 0.5;
        let next = match (ok, held.is_some()) {
            (true, _) => {
                held = Some((per_second, o));
                // Held on the way down: the highest held.
                if going_down {
                    None
                } else {
                    up.next()
                }
            }
            // Not held after a rate that was: the one before is the answer.
            (false, true) => None,
            (false, false) => down.next(),
        };
        match next {
            Some(f) => fractions.push(f),
            None => break,
        }
    }
    match held {
        Some((per_second, _)) => report.row(
            format!("highest fixed write rate held, {size} todos"),
            format!("{per_second}/s (p99 < 50 ms, max < 1 s)"),
            format!("store saturation: {}", rate(saturation)),
            ratio(per_second as f64, saturation),
        ),
        None => report.row(
            format!("highest fixed write rate held, {size} todos"),
            "none of the rates tried".into(),
            format!("store saturation: {}", rate(saturation)),
            None,
        ),
    }
    command.stop().await?;
    query.stop().await?;
    Ok(())
}

/// Writes (alone, then beside the projection), the projection's drain, the open loop on the
/// burst's read model and reads by id.
async fn main_phase(config: &Config, report: &mut Report) -> anyhow::Result<()> {
    // ------------------------------------------------------------------ writes, alone
    let pg_db = format!("bench_pg_{}", config.run);
    let cs_db = format!("bench_{}", config.run);
    stores::create_database(config, &pg_db).await?;
    stores::create_database(config, &cs_db).await?;
    stores::migrate(&config.database_url(&pg_db)).await?;
    // The projection's queue exists before the first write, so every event is routed and a
    // burst builds up for the drain below.
    stores::declare_queue(config).await?;
    let pgbench_script = stores::pgbench_script(config)?;
    let mut pgbench = Vec::new();
    for clients in [1u32, 16] {
        let cpu = cpu::Sampler::start();
        let (tps, used) = tokio::join!(
            stores::pgbench(config, &pg_db, &pgbench_script, clients),
            cpu::window(config.seconds)
        );
        let tps = tps?;
        report.note(format!(
            "CPU, pgbench c={clients}: {}",
            cpu::per_op(&used, tps, "transaction")
        ));
        report.cpu(format!("pgbench c={clients} ({tps:.0} tps)"), cpu);
        pgbench.push((clients, tps));
    }
    // The limit of the design as the stores do it together: the service's statement under
    // pgbench and a plain publisher of the same envelopes to the same quorum queue, at once.
    // A write needs both, so the pair of them is the lower of the two rates.
    let mut combined = Vec::new();
    for clients in [1u32, 16] {
        let cpu = cpu::Sampler::start();
        let (tps, published, used) = tokio::join!(
            stores::pgbench(config, &pg_db, &pgbench_script, clients),
            stores::publisher_rate(config),
            cpu::window(config.seconds)
        );
        let (tps, published) = (tps?, published?);
        let limit = tps.min(published);
        report.note(format!(
            "CPU, pgbench c={clients} with the plain publisher at once: {}; {} (the publisher is `load`)",
            cpu::per_op_of(&used, tps, "transaction", Some(&["postgres"])),
            cpu::per_op_of(&used, published, "message", Some(&["rabbitmq", "load"]))
        ));
        report.row(
            format!("the stores together: pgbench c={clients} and a plain publisher at once"),
            format!(
                "{} (pgbench {}, publisher {})",
                rate(limit),
                rate(tps),
                rate(published)
            ),
            String::new(),
            None,
        );
        report.cpu(
            format!("pgbench c={clients} and the plain publisher at once"),
            cpu,
        );
        combined.push((clients, limit));
    }
    stores::purge_queue(config).await?;

    let mongo_db = format!("bench_{}", config.run);
    let command_vars = vec![
        ("DATABASE_URL", config.database_url(&cs_db)),
        ("AMQP_URL", config.amqp_url.clone()),
        ("AMQP_EXCHANGE", config.exchange()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let command =
        Service::start(&config.work, "command-service", config.port, &command_vars).await?;
    for (&(clients, tps), &(_, together)) in pgbench.iter().zip(&combined) {
        let cpu = cpu::Sampler::start();
        let (w, used) = tokio::join!(
            load::wrk_post(config, &command.base, clients),
            cpu::window(config.seconds)
        );
        let w = w?;
        report.row(
            format!("POST /todos, {clients} connection(s), command-service alone"),
            format!("{} (p99 {})", rate(w.rate), load::ms(w.p99)),
            format!("pgbench c={clients}: {}", rate(tps)),
            ratio(w.rate, tps),
        );
        report.row(
            format!("POST /todos, {clients} connection(s), against the stores together"),
            format!("{} (p99 {})", rate(w.rate), load::ms(w.p99)),
            format!("pgbench + publisher at once: {}", rate(together)),
            ratio(w.rate, together),
        );
        report.note(format!(
            "CPU, POST c={clients}, command-service alone: {} (wrk is `load`)",
            cpu::per_op(&used, w.rate, "write")
        ));
        report.cpu(format!("POST c={clients}, command-service alone"), cpu);
        if w.errors > 0 {
            report.note(format!(
                "POST c={clients}: {} answers were not 2xx",
                w.errors
            ));
        }
    }
    // A second replica on the same database: both take half the connections at once.
    let second = Service::start(
        &config.work,
        "command-service",
        config.port + 3,
        &command_vars,
    )
    .await?;
    let cpu = cpu::Sampler::start();
    let (a, b) = tokio::join!(
        load::wrk_post(config, &command.base, 8),
        load::wrk_post(config, &second.base, 8)
    );
    let (a, b) = (a?, b?);
    report.cpu("POST, 2 replicas x 8 connections", cpu);
    let tps16 = pgbench.last().map_or(0.0, |p| p.1);
    report.row(
        "POST /todos, 2 replicas x 8 connections, one database",
        format!(
            "{} ({} + {})",
            rate(a.rate + b.rate),
            rate(a.rate),
            rate(b.rate)
        ),
        format!("pgbench c=16: {}", rate(tps16)),
        ratio(a.rate + b.rate, tps16),
    );
    second.stop().await?;
    // The events of those closed loops are not the drain's burst: drop them, then queue a
    // burst of BENCH_BURST new todos.
    load::wait_for_outbox(&command.base).await?;
    stores::purge_queue(config).await?;
    let (_, before) = stores::log_size(config, &cs_db).await?;
    load::create_todos(&command.base, config.burst, 16).await?;
    load::wait_for_outbox(&command.base).await?;
    let (_, after) = stores::log_size(config, &cs_db).await?;
    let burst = stores::queue_depth(config).await?;
    // Ids of the todos the read model will hold, for the reads below.
    let ids = (before + 1, after);

    // ------------------------------------------------------------------ projection
    let (bulk, bulk_rate) = stores::store_bulk_rate(config, burst).await?;
    let query_vars = vec![
        ("AMQP_URL", config.amqp_url.clone()),
        ("AMQP_EXCHANGE", config.exchange()),
        ("MONGODB_URI", config.mongodb_uri.clone()),
        ("MONGODB_DB", mongo_db.clone()),
        ("AMQP_QUEUE", config.queue()),
        ("RUST_LOG", "warn".to_string()),
    ];
    // Timed from the start of the process: it consumes as soon as it is up.
    let cpu = cpu::Sampler::start();
    let started = Instant::now();
    let query = Service::start(&config.work, "query-service", config.port + 1, &query_vars).await?;
    load::wait_for_settled(&query.base, burst as i64, Duration::from_secs(600)).await?;
    let drain = burst as f64 / started.elapsed().as_secs_f64();
    report.cpu("projection drain", cpu);
    report.row(
        format!("projection drains a queued burst of {burst} events"),
        format!("{} (bulks of up to {bulk})", rate(drain)),
        format!("store bulk upserts: {}", rate(bulk_rate)),
        ratio(drain, bulk_rate),
    );
    for (indexes, upserts) in stores::index_costs(config, bulk).await? {
        report.row(
            format!("store bulk upserts, indexes: {indexes}"),
            rate(upserts),
            String::new(),
            None,
        );
    }

    // The same drain while a `GET /todos/stream` client never reads (its socket's window
    // small and full): the consumer never waits for a stream client, so the rate is the
    // drain's above.
    query.stop().await?;
    load::create_todos(&command.base, config.burst, 16).await?;
    load::wait_for_outbox(&command.base).await?;
    let burst2 = stores::queue_depth(config).await?;
    let started = Instant::now();
    let query = Service::start(&config.work, "query-service", config.port + 1, &query_vars).await?;
    let stuck = load::stuck_stream_client(&query.base).await?;
    load::wait_for_settled(&query.base, burst2 as i64, Duration::from_secs(600)).await?;
    let drain_stuck = burst2 as f64 / started.elapsed().as_secs_f64();
    drop(stuck);
    report.row(
        format!("projection drains {burst2} events, a stream client never reading"),
        rate(drain_stuck),
        format!("without it (above): {}", rate(drain)),
        ratio(drain_stuck, drain),
    );

    // ------------------------------------------------------------------ writes, pair running
    for &(clients, tps) in &pgbench {
        let cpu = cpu::Sampler::start();
        let w = load::wrk_post(config, &command.base, clients).await?;
        report.cpu(format!("POST c={clients}, query-service running"), cpu);
        report.row(
            format!("POST /todos, {clients} connection(s), query-service running"),
            format!("{} (p99 {})", rate(w.rate), load::ms(w.p99)),
            format!("pgbench c={clients}: {}", rate(tps)),
            ratio(w.rate, tps),
        );
    }
    // Those writes outrun the store; what is still queued is dropped so the open loop starts
    // from a read model that is caught up.
    load::wait_for_outbox(&command.base).await?;
    stores::purge_queue(config).await?;
    load::wait_for_idle(&query.base).await?;

    // ------------------------------------------------------------------ open loop
    for &per_second in &config.rates {
        let cpu = cpu::Sampler::start();
        let o = load::open_loop(
            &command.base,
            &query.base,
            per_second,
            Duration::from_secs(config.open_seconds),
        )
        .await?;
        report.cpu(format!("open loop {per_second}/s"), cpu);
        report.row(
            format!(
                "open loop {per_second} writes/s for {} s",
                config.open_seconds
            ),
            format!(
                "sent {:.0}/s, POST p99 {}, {} POSTs failed, {} reads not 200",
                o.sent_rate,
                load::ms(o.post_p99),
                o.failed_writes,
                o.failed_reads
            ),
            String::new(),
            None,
        );
        report.row(
            format!("  write-to-readable at {per_second}/s"),
            format!(
                "p50 {} p99 {} max (largest lag) {}",
                load::ms(o.readable_p50),
                load::ms(o.readable_p99),
                load::ms(o.readable_max)
            ),
            String::new(),
            None,
        );
    }

    // ------------------------------------------------------------------ reads
    let finds = stores::find_by_id_rate(config, &mongo_db, ids, 16).await?;
    let w = load::wrk_get_by_id(config, &query.base, ids).await?;
    report.row(
        format!(
            "GET /todos/{{id}}, 16 connections, ids {}..={} of the burst",
            ids.0, ids.1
        ),
        format!("{} (p99 {})", rate(w.rate), load::ms(w.p99)),
        format!("store find by _id: {}", rate(finds)),
        ratio(w.rate, finds),
    );
    command.stop().await?;
    query.stop().await?;

    Ok(())
}

/// The list phase: pages in every order at each of `BENCH_LIST_SIZES`, each beside the store's
/// cheapest query for the same documents, and `/stats`.
async fn lists(config: &Config, report: &mut Report) -> anyhow::Result<()> {
    let list_db = format!("bench_list_{}", config.run);
    let list_vars = vec![
        ("AMQP_URL", config.amqp_url.clone()),
        ("AMQP_EXCHANGE", config.exchange()),
        ("MONGODB_URI", config.mongodb_uri.clone()),
        ("MONGODB_DB", list_db.clone()),
        ("AMQP_QUEUE", format!("{}.lists", config.queue())),
        ("RUST_LOG", "warn".to_string()),
    ];
    let lists = Service::start(&config.work, "query-service", config.port + 2, &list_vars).await?;
    let mut have = 0;
    for &size in &config.list_sizes {
        let filled = Instant::now();
        stores::fast_fill(config, &list_db, have, size).await?;
        report.note(format!(
            "read model filled from {have} to {size} todos in {:.0} s",
            filled.elapsed().as_secs_f64()
        ));
        have = size;
        let middle = (size / 2) as i64;
        let path = format!(
            "/todos?limit=50&cursor={}",
            query_service::http::encode_cursor(
                &query_service::store::ListQuery {
                    due_before: None,
                    completed: None,
                    sort: query_service::store::SortKey::Id,
                    descending: false,
                    limit: 50,
                    after: None,
                },
                &query_service::store::Cursor {
                    v: None,
                    id: middle
                }
            )
        );
        let store = stores::page_rate(config, &list_db, middle, 50, 4).await?;
        let w = load::wrk_get(config, &lists.base, &path, 4).await?;
        report.row(
            format!("GET /todos?limit=50 (a middle page), {size} todos, 4 connections"),
            format!("{} (p99 {})", rate(w.rate), load::ms(w.p99)),
            format!("store, the page's query (51 ids, sorted): {}", rate(store)),
            ratio(w.rate, store),
        );
        let (plan, sorted) = stores::explain_page(config, &list_db, middle, 50).await?;
        report.note(format!(
            "explain of the page query at {size} todos: {plan}; {}",
            if sorted {
                "a SORT stage: the store sorts in memory"
            } else {
                "no SORT stage"
            }
        ));
        for sort in ["created_at", "-created_at", "updated_at", "-updated_at"] {
            for completed in [None, Some(true)] {
                time_page(config, report, &lists.base, &list_db, size, sort, completed).await?;
            }
        }
        match first_rows(&lists.base) {
            Ok(line) => report.row(
                format!("the live page in Chromium, {size} todos"),
                line,
                String::new(),
                None,
            ),
            Err(err) => report.note(format!(
                "the live page at {size} todos not measured: {err:#}"
            )),
        }
        let stats = load::wrk_get(config, &lists.base, "/stats", 1).await?;
        report.row(
            format!("GET /stats, {size} todos, 1 connection"),
            format!("{} (p99 {})", rate(stats.rate), load::ms(stats.p99)),
            String::new(),
            None,
        );
    }
    lists.stop().await?;
    Ok(())
}

/// `scripts/browser_test.py --first-rows` against the page at `base`: how long after navigation
/// its first rows showed, and the requests to query-service before them.
fn first_rows(base: &str) -> anyhow::Result<String> {
    let python = if std::path::Path::new(".local/venv/bin/python").exists() {
        ".local/venv/bin/python"
    } else {
        "python3"
    };
    let out = std::process::Command::new(python)
        .args(["scripts/browser_test.py", "--first-rows"])
        .env("PAGE_URL", format!("{base}/"))
        .env("CDP_PORT", "9334")
        .output()
        .context("scripts/browser_test.py")?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| l.starts_with("[browser] first rows"))
        .with_context(|| format!("no timing from scripts/browser_test.py: {}", text.trim()))?;
    Ok(line.trim_start_matches("[browser] ").to_string())
}

/// A middle page of 50 of a time-ordered list: the service under wrk, beside the store's rate
/// for the range of the page's keys (its first to its last) and its plan.
async fn time_page(
    config: &Config,
    report: &mut Report,
    base: &str,
    database: &str,
    size: usize,
    sort: &str,
    completed: Option<bool>,
) -> anyhow::Result<()> {
    let filter = completed.map_or(String::new(), |c| format!("&completed={c}"));
    let client = reqwest::Client::new();
    // The second page, by the first page's cursor: a page past a cursor, as scrolling reads.
    let first = client
        .get(format!("{base}/todos?limit=50&sort={sort}{filter}"))
        .send()
        .await?;
    let link = first
        .headers()
        .get("link")
        .and_then(|v| v.to_str().ok())
        .and_then(|l| l.split('<').nth(1)?.split('>').next().map(str::to_string))
        .context("a next page")?;
    let page: Vec<serde_json::Value> = client
        .get(format!("{base}{link}"))
        .send()
        .await?
        .json()
        .await?;
    let time = sort.trim_start_matches('-');
    // The stored keys hold fixed-width times, as `store::timestamp` writes them.
    let key = |t: &serde_json::Value| {
        let prefix = completed.map_or("", query_service::store::completed_prefix);
        let at = t[time]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|d| query_service::store::timestamp(d.with_timezone(&chrono::Utc)))
            .unwrap_or_default();
        query_service::store::sort_key(prefix, &at, t["id"].as_i64().unwrap_or_default())
    };
    let (Some(a), Some(b)) = (page.first(), page.last()) else {
        anyhow::bail!("{sort}: an empty second page");
    };
    let field = query_service::store::SORT_KEYS
        .iter()
        .find(|(_, t, c)| *t == time && *c == completed.is_some())
        .map(|(f, _, _)| *f)
        .context("a sort key")?;
    let (store_rate, plan) = stores::sort_page_rate(
        config,
        database,
        field,
        (key(a), key(b)),
        sort.starts_with('-'),
        page.len() as i64,
    )
    .await?;
    let w = load::wrk_get(config, base, &link, 1).await?;
    report.row(
        format!("GET /todos?limit=50&sort={sort}{filter} (page 2), {size} todos"),
        format!("{} (p99 {})", rate(w.rate), load::ms(w.p99)),
        format!("store, the page's key range: {}", rate(store_rate)),
        ratio(w.rate, store_rate),
    );
    report.note(format!(
        "explain of the store's query for sort={sort}{filter} at {size}: {plan}{}",
        if plan.contains("SORT") {
            " (a SORT stage)"
        } else {
            " (no SORT stage)"
        }
    ));
    Ok(())
}
