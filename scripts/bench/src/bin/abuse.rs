//! `scripts/abuse.sh`: the pair against clients and peers that do not play along, from release
//! binaries on stores of the run's own, one table (attack | what must hold | what was seen),
//! exit code 1 when something does not hold.
//!
//! The attacks, in order:
//! 1. The services as the least-privilege broker users `deploy/rabbitmq/definitions.json`
//!    ships (the script makes them on a vhost of the run's own): both become ready; the
//!    writer's user cannot consume the reader's queue; the reader's user cannot publish events.
//! 2. Sockets that send nothing, a byte at a time, half an HTTP/2 preface, a body that never
//!    ends, and a reader that never reads, all at once against both services (from loopback
//!    addresses of their own), while `/health` is asked on both every 50 ms from another
//!    address: each answer within 100 ms, each socket closed within its deadline.
//! 3. 200 streams from one address, then one from another.
//! 4. The read model filled through the API, then 100 replays from `Last-Event-ID: 0` whose
//!    clients never read: query-service's memory and each replay's first byte.
//! 5. Forged events published with the writer's broker user (an id at the top of i64, a
//!    version far ahead, an oversized title): dead-lettered with their reasons, every list
//!    unchanged; a version ahead of the log set by hand, undone by `verify --repair`.
//! 6. `query-service replay` and `verify` with `WRITE_TOKENS` and `FEED_TOKENS` set; a feed
//!    token may not write.
//! 7. Two query-service processes on one queue: a stream client on each sees every change.
//!
//! `--short` runs each with smaller numbers (what `scripts/test.sh` runs). Names: PostgreSQL
//! and MongoDB databases `abuse_<run>`, the vhost and users `scripts/abuse.sh` made; services on
//! `ABUSE_PORT` (5401) and the next two ports; logs in `target/abuse/<run>/`.

use anyhow::{bail, Context};
use bench::process::Service;
use bson::doc;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

struct Config {
    short: bool,
    /// `--todos N`: the read model's size for the replays, in place of the mode's.
    todos: Option<usize>,
    run: String,
    port: u16,
    admin_database_url: String,
    mongodb_uri: String,
    amqp_command_url: String,
    amqp_query_url: String,
    work: PathBuf,
    write_token: String,
    feed_token: String,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let (mut short, mut todos) = (false, None);
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--short" => short = true,
                "--todos" => todos = Some(args.next().context("--todos N")?.parse()?),
                other => bail!("unknown argument {other:?}: --short, --todos N"),
            }
        }
        let var = |name: &str| {
            std::env::var(name).with_context(|| format!("{name} (set by scripts/abuse.sh)"))
        };
        let run = var("ABUSE_RUN")?;
        Ok(Self {
            short,
            todos,
            port: std::env::var("ABUSE_PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(5401),
            admin_database_url: std::env::var("TEST_ADMIN_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://todo:todo@127.0.0.1:5432/postgres".into()),
            mongodb_uri: std::env::var("MONGODB_URI")
                .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?maxIdleTimeMS=60000".into()),
            amqp_command_url: var("ABUSE_AMQP_COMMAND_URL")?,
            amqp_query_url: var("ABUSE_AMQP_QUERY_URL")?,
            work: std::env::current_dir()?
                .join("target")
                .join("abuse")
                .join(&run),
            write_token: format!("write-{}", uuid::Uuid::new_v4().simple()),
            feed_token: format!("feed-{}", uuid::Uuid::new_v4().simple()),
            run,
        })
    }

    fn database(&self) -> String {
        format!("abuse_{}", self.run)
    }

    fn database_url(&self) -> String {
        let base = &self.admin_database_url;
        let cut = base.rfind('/').unwrap_or(base.len());
        format!("{}/{}", &base[..cut], self.database())
    }

    /// Sockets per service for the slow-client attack.
    fn sockets(&self) -> usize {
        if self.short {
            300
        } else {
            2_000
        }
    }

    /// Todos in the read model for the replays.
    fn todos(&self) -> usize {
        if let Some(n) = self.todos {
            n
        } else if self.short {
            3_000
        } else {
            100_000
        }
    }
}

/// One line of the table.
struct Row {
    attack: String,
    must: String,
    seen: String,
    ok: bool,
    /// A bound on time or memory: held in a full run on release binaries; `--short` (the test
    /// suite, perhaps on debug binaries beside other work) reports it without holding it.
    timing: bool,
}

impl Row {
    fn new(attack: &str, must: &str, seen: String, ok: bool) -> Self {
        Self {
            attack: attack.into(),
            must: must.into(),
            seen,
            ok,
            timing: false,
        }
    }

    fn timing(self) -> Self {
        Self {
            timing: true,
            ..self
        }
    }

    /// Whether the row counts against the run.
    fn failed(&self, short: bool) -> bool {
        !(self.ok || short && self.timing)
    }
}

/// The pair as this run starts it.
struct Pair {
    command: Service,
    query: Service,
    /// A second query-service on the same queue.
    replica: Service,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    std::fs::create_dir_all(&config.work)?;
    eprintln!(
        "[abuse] run {} ({}), logs in {}",
        config.run,
        if config.short { "short" } else { "full" },
        config.work.display()
    );
    let mut admin = AsyncPgConnection::establish(&config.admin_database_url)
        .await
        .context("PostgreSQL reachable (scripts/dev-services.sh up)")?;
    use diesel_async::RunQueryDsl;
    diesel::sql_query(format!("CREATE DATABASE {}", config.database()))
        .execute(&mut admin)
        .await?;
    let outcome = attack(&config).await;
    let cleaned = cleanup(&config, &mut admin).await;
    let rows = outcome?;
    cleaned?;
    println!("| attack | what must hold | what was seen | |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.attack,
            r.must,
            r.seen,
            match (r.ok, r.failed(config.short)) {
                (true, _) => "ok",
                (false, true) => "FAILED",
                (false, false) => "not held (--short: a bound on time, measured only)",
            }
        );
    }
    let failed = rows.iter().filter(|r| r.failed(config.short)).count();
    if failed > 0 {
        eprintln!("[abuse] {failed} of {} did not hold", rows.len());
        std::process::exit(1);
    }
    eprintln!("[abuse] all {} held", rows.len());
    Ok(())
}

async fn cleanup(config: &Config, admin: &mut AsyncPgConnection) -> anyhow::Result<()> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        config.database()
    ))
    .execute(admin)
    .await?;
    let client = mongodb::Client::with_uri_str(&config.mongodb_uri).await?;
    client.database(&config.database()).drop().await?;
    Ok(())
}

async fn start(config: &Config) -> anyhow::Result<Pair> {
    let command_vars = [
        ("DATABASE_URL", config.database_url()),
        ("AMQP_URL", config.amqp_command_url.clone()),
        ("WRITE_TOKENS", config.write_token.clone()),
        ("FEED_TOKENS", config.feed_token.clone()),
        ("LOG_FORMAT", "json".to_string()),
    ];
    let command =
        Service::start(&config.work, "command-service", config.port, &command_vars).await?;
    let query_vars = |port: u16| {
        vec![
            ("MONGODB_URI", config.mongodb_uri.clone()),
            ("MONGODB_DB", config.database()),
            ("AMQP_URL", config.amqp_query_url.clone()),
            ("FEED_TOKEN", config.feed_token.clone()),
            (
                "COMMAND_SERVICE_URL",
                format!("http://127.0.0.1:{}", config.port),
            ),
            ("LOG_FORMAT", "json".to_string()),
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        ]
    };
    let query = Service::start(
        &config.work,
        "query-service",
        config.port + 1,
        &query_vars(config.port + 1),
    )
    .await?;
    let replica = Service::start(
        &config.work,
        "query-service",
        config.port + 2,
        &query_vars(config.port + 2),
    )
    .await?;
    Ok(Pair {
        command,
        query,
        replica,
    })
}

async fn attack(config: &Config) -> anyhow::Result<Vec<Row>> {
    let pair = start(config).await?;
    let mut rows = Vec::new();
    let result = async {
        rows.push(least_privilege(config, &pair).await?);
        rows.extend(slow_clients(config, &pair).await?);
        rows.push(streams_from_one_address(&pair).await?);
        rows.push(two_replicas(config, &pair).await?);
        rows.extend(forged_events(config, &pair).await?);
        rows.extend(feed_tokens(config, &pair).await?);
        fill(config, &pair).await?;
        rows.push(replays(config, &pair).await?);
        anyhow::Ok(())
    }
    .await;
    // Every service stops on SIGTERM (open streams included) within 30 s.
    let mut stopped = Vec::new();
    for service in [pair.replica, pair.query, pair.command] {
        let (name, port) = (service.name, service.port);
        let started = Instant::now();
        let outcome = service.stop().await;
        stopped.push(match outcome {
            Ok(()) => format!("{name} :{port} in {:.1} s", started.elapsed().as_secs_f64()),
            Err(err) => format!("{name} :{port}: {err}"),
        });
    }
    result?;
    let all = stopped.iter().all(|s| s.contains(" in "));
    rows.push(Row::new(
        "SIGTERM to each process after all of the above",
        "each stops within 30 s",
        stopped.join("; "),
        all,
    ));
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// 1. Least privilege

async fn amqp(url: &str) -> anyhow::Result<Connection> {
    Ok(Connection::connect(url, ConnectionProperties::default()).await?)
}

async fn ready_checks(base: &str) -> anyhow::Result<Value> {
    Ok(reqwest::get(format!("{base}/ready")).await?.json().await?)
}

async fn least_privilege(config: &Config, pair: &Pair) -> anyhow::Result<Row> {
    let command_ready = ready_checks(&pair.command.base).await?;
    let query_ready = ready_checks(&pair.query.base).await?;
    let up = command_ready["checks"]["rabbitmq"] == "up"
        && query_ready["checks"]["rabbitmq"] == "up"
        && query_ready["checks"]["fanout"] == "up";
    // The writer's user reading the reader's queue.
    let writer = amqp(&config.amqp_command_url).await?;
    let channel = writer.create_channel().await?;
    let consume = channel
        .basic_get(
            events::QUERY_QUEUE.into(),
            BasicGetOptions { no_ack: false },
        )
        .await;
    let writer_refused = consume
        .as_ref()
        .err()
        .is_some_and(|e| e.to_string().contains("ACCESS_REFUSED"));
    let _ = writer.close(200, "done".into()).await;
    // The reader's user publishing an event.
    let reader = amqp(&config.amqp_query_url).await?;
    let channel = reader.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let published = async {
        channel
            .basic_publish(
                events::EXCHANGE.into(),
                "todo.created".into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await?
            .await
    }
    .await;
    let reader_refused = published
        .as_ref()
        .err()
        .is_some_and(|e| e.to_string().contains("ACCESS_REFUSED"));
    // The reader's user routing what it may publish (dead letters) into its own queue.
    let channel = reader.create_channel().await?;
    let bound = channel
        .queue_bind(
            events::QUERY_QUEUE.into(),
            events::DEAD_LETTER_EXCHANGE.into(),
            "".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    let bind_refused = bound
        .as_ref()
        .err()
        .is_some_and(|e| e.to_string().contains("ACCESS_REFUSED"));
    let _ = reader.close(200, "done".into()).await;
    Ok(Row::new(
        "the services as the broker users deploy/rabbitmq/definitions.json ships",
        "both ready with their own users; the writer's user cannot consume, the reader's cannot publish events nor bind its queue to what it may publish to",
        format!(
            "ready: command rabbitmq {}, query rabbitmq {} fanout {}; writer consuming: {}; reader publishing: {}; reader binding its queue to the DLX: {}",
            command_ready["checks"]["rabbitmq"],
            query_ready["checks"]["rabbitmq"],
            query_ready["checks"]["fanout"],
            if writer_refused { "ACCESS_REFUSED" } else { "allowed" },
            if reader_refused { "ACCESS_REFUSED" } else { "allowed" },
            if bind_refused { "ACCESS_REFUSED" } else { "allowed" },
        ),
        up && writer_refused && reader_refused && bind_refused,
    ))
}

// ---------------------------------------------------------------------------------------------
// 2. Slow and silent clients

/// A loopback address of the attack's own: 127.0.1.1, 127.0.1.2, …
fn attacker_address(n: usize) -> String {
    format!("127.0.{}.{}", 1 + n / 200, 1 + n % 200)
}

async fn connect_from(
    from: &str,
    to: SocketAddr,
    recv_buffer: Option<u32>,
) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(format!("{from}:0").parse()?)?;
    Ok(socket.connect(to).await?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slow {
    Silent,
    ByteAtATime,
    HalfHttp2Preface,
    EndlessBody,
    NeverReads,
}

impl Slow {
    const ALL: [Slow; 5] = [
        Slow::Silent,
        Slow::ByteAtATime,
        Slow::HalfHttp2Preface,
        Slow::EndlessBody,
        Slow::NeverReads,
    ];

    fn name(self) -> &'static str {
        match self {
            Slow::Silent => "sends nothing",
            Slow::ByteAtATime => "a byte every 500 ms",
            Slow::HalfHttp2Preface => "half an HTTP/2 preface",
            Slow::EndlessBody => "a body that never ends",
            Slow::NeverReads => "never reads its answers",
        }
    }

    /// The deadline that must close it: the header deadline, the body deadline, or the write
    /// deadline after the buffers filled.
    fn deadline(self) -> Duration {
        match self {
            Slow::Silent | Slow::ByteAtATime | Slow::HalfHttp2Preface => {
                Duration::from_millis(5_000)
            }
            Slow::EndlessBody | Slow::NeverReads => Duration::from_millis(10_000),
        }
    }
}

/// What a reader that never reads is allowed beyond the write deadline: the time the server
/// takes to fill the buffers (its 256 KiB send buffer and the client's) while everything else
/// of the attack runs.
const NEVER_READS_FILL: Duration = Duration::from_secs(4);

/// Waits until the server closes `stream`: `Some(elapsed)`, or `None` if still open at
/// `within`.
async fn closed_within(
    stream: &mut TcpStream,
    started: Instant,
    within: Duration,
) -> Option<Duration> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(started + within, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One slow socket; how long until the server closed it (`None`: not within its deadline
/// and a second).
async fn slow_socket(
    kind: Slow,
    from: String,
    to: SocketAddr,
    token: String,
    hold_until: Instant,
) -> anyhow::Result<Option<Duration>> {
    let slack = Duration::from_millis(1_500);
    let recv = (kind == Slow::NeverReads).then_some(4096);
    let mut stream = connect_from(&from, to, recv).await?;
    let started = Instant::now();
    match kind {
        Slow::Silent => {}
        Slow::HalfHttp2Preface => stream.write_all(b"PRI * HTTP/2.0\r\n\r\nS").await?,
        Slow::ByteAtATime => {
            let head = b"GET /health HTTP/1.1\r\nHost: abuse\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            for byte in head {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                let mut probe = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut probe))
                    .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(Some(started.elapsed())),
                    _ => {}
                }
                if started.elapsed() > kind.deadline() + slack {
                    return Ok(None);
                }
            }
        }
        Slow::EndlessBody => {
            stream
                .write_all(
                    format!(
                        "POST /todos HTTP/1.1\r\nHost: abuse\r\nContent-Type: application/json\r\n\
                         Authorization: Bearer {token}\r\nContent-Length: 10000\r\n\r\n{{\"title\": \""
                    )
                    .as_bytes(),
                )
                .await?;
            let mut answer = Vec::new();
            loop {
                let _ = stream.write_all(b"a").await;
                let mut buf = [0u8; 4096];
                match tokio::time::timeout(Duration::from_millis(1_000), stream.read(&mut buf))
                    .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(Some(started.elapsed())),
                    Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                    Err(_) => {}
                }
                if started.elapsed() > kind.deadline() + slack {
                    return Ok(None);
                }
            }
        }
        Slow::NeverReads => {
            // Requests for the largest answer, pipelined, and nothing read: the server's
            // writes fill both sides' buffers, then stall until the write
            // deadline closes the connection. The close cannot be seen here without reading
            // (which would let the server's writes go on): the socket is held past the
            // deadline while the servers' own count of connections is read.
            let request = b"GET /openapi.json HTTP/1.1\r\nHost: abuse\r\n\r\n".repeat(250);
            let _ = tokio::time::timeout(kind.deadline(), stream.write_all(&request)).await;
            tokio::time::sleep_until(hold_until).await;
            return Ok(Some(Duration::ZERO));
        }
    }
    Ok(closed_within(&mut stream, started, kind.deadline() + slack).await)
}

/// `GET /health` on a fresh connection: the status line's code and the time to it.
async fn health(to: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let attempt = async {
        let mut stream = TcpStream::connect(to).await?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        anyhow::Ok(
            std::str::from_utf8(&head[9..12])
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
        )
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(code)) => (code, started.elapsed()),
        _ => (0, started.elapsed()),
    }
}

fn address(service: &Service) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], service.port))
}

async fn slow_clients(config: &Config, pair: &Pair) -> anyhow::Result<Vec<Row>> {
    let targets = [address(&pair.command), address(&pair.query)];
    let per_service = config.sockets();
    let mut sockets = Vec::new();
    let began = Instant::now();
    // Every socket opened within the first second; the servers' count of connections is read
    // once every deadline has passed (the longest, a reader that never reads, counted from
    // when its buffers filled), while the readers that never read still hold theirs.
    let ramp = Duration::from_secs(1);
    let count_at = began + ramp + Slow::NeverReads.deadline() + NEVER_READS_FILL;
    let hold_until = count_at + Duration::from_secs(1);
    let total = targets.len() * per_service;
    for (t, to) in targets.iter().enumerate() {
        for n in 0..per_service {
            let kind = Slow::ALL[n % Slow::ALL.len()];
            let k = t + n * targets.len();
            let from = attacker_address(k);
            let to = *to;
            let token = config.write_token.clone();
            let at = began + ramp.mul_f64(k as f64 / total as f64);
            sockets.push((
                kind,
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    slow_socket(kind, from, to, token, hold_until).await
                }),
            ));
        }
    }
    let counts = tokio::spawn(async move {
        tokio::time::sleep_until(count_at).await;
        let mut open = Vec::new();
        for to in targets {
            let text = reqwest::get(format!("http://{to}/metrics"))
                .await?
                .text()
                .await?;
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix("http_connections_open "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            open.push(n);
        }
        anyhow::Ok(open)
    });
    // Probes from 127.0.0.1 while the attack lasts, on a thread and runtime of their own: the
    // time measured is the services', not the wait of a probe's task behind the attack's
    // thousands of tasks in this process's scheduler.
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probes = {
        let probing = probing.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            anyhow::Ok(runtime.block_on(async move {
                let mut seen = Vec::new();
                let began = Instant::now();
                while probing.load(std::sync::atomic::Ordering::Relaxed) {
                    let next = Instant::now() + Duration::from_millis(50);
                    let at = began.elapsed();
                    let (a, b) = tokio::join!(health(targets[0]), health(targets[1]));
                    seen.push((a.0, a.1, at, "command-service"));
                    seen.push((b.0, b.1, at, "query-service"));
                    tokio::time::sleep_until(next).await;
                }
                seen
            }))
        })
    };
    let mut per_kind: Vec<(Slow, usize, usize, Duration)> = Slow::ALL
        .iter()
        .map(|k| (*k, 0, 0, Duration::ZERO))
        .collect();
    let mut errors = 0;
    for (kind, task) in sockets {
        let entry = per_kind
            .iter_mut()
            .find(|(k, ..)| *k == kind)
            .expect("every kind");
        match task.await? {
            Ok(Some(took)) => {
                entry.1 += 1;
                entry.3 = entry.3.max(took);
            }
            Ok(None) => entry.2 += 1,
            Err(_) => errors += 1,
        }
    }
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    let probes = tokio::task::spawn_blocking(move || probes.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the probes' thread panicked"))??;
    let open_at_end = counts.await??;
    let slowest = probes
        .iter()
        .max_by_key(|p| p.1)
        .map(|p| (p.1, p.2, p.3))
        .unwrap_or((Duration::ZERO, Duration::ZERO, ""));
    let mut latencies: Vec<Duration> = probes.iter().map(|p| p.1).collect();
    latencies.sort();
    let p99 = latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    let bad = probes.iter().filter(|p| p.0 != 200).count();
    let mut rows = vec![Row::new(
        &format!(
            "{} sockets on each service, all at once: {}",
            per_service,
            Slow::ALL.map(Slow::name).join(", ")
        ),
        "/health on both services answers 200 within 100 ms throughout",
        format!(
            "{} probes, p99 {:.1} ms, slowest {:.1} ms ({}, {:.1} s into the attack), {} not 200 (connect failures of the attack: {errors})",
            probes.len(),
            p99.as_secs_f64() * 1e3,
            slowest.0.as_secs_f64() * 1e3,
            slowest.2,
            slowest.1.as_secs_f64(),
            bad
        ),
        bad == 0 && slowest.0 < Duration::from_millis(100),
    )
    .timing()];
    for (kind, closed, open, slowest) in per_kind {
        if kind == Slow::NeverReads {
            // Each server's count includes the request that reads it.
            let held: f64 = open_at_end.iter().map(|n| n - 1.0).sum();
            rows.push(Row::new(
                &format!("  sockets that {}", kind.name()),
                &format!(
                    "each closed by the server within the write deadline ({} s) of its buffers filling ({} s allowed for that)",
                    kind.deadline().as_secs(),
                    NEVER_READS_FILL.as_secs()
                ),
                format!(
                    "{} held by the clients; connections the servers still had: {} (command-service {}, query-service {}, each less the one counting)",
                    closed + open,
                    held,
                    open_at_end[0] - 1.0,
                    open_at_end[1] - 1.0
                ),
                held == 0.0,
            ));
            continue;
        }
        rows.push(Row::new(
            &format!("  sockets that {}", kind.name()),
            &format!(
                "each closed within its deadline ({} s)",
                kind.deadline().as_secs()
            ),
            format!(
                "{closed} closed, slowest after {:.1} s; {open} still open past it",
                slowest.as_secs_f64()
            ),
            open == 0 && closed > 0,
        ));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// 3. Streams from one address

/// Opens `GET /todos/stream` from `from` and reads the answer's status line; the stream stays
/// open while the value lives.
async fn open_stream(
    from: &str,
    to: SocketAddr,
    last_event_id: Option<&str>,
    recv_buffer: Option<u32>,
) -> anyhow::Result<(u16, TcpStream, Duration)> {
    let mut stream = connect_from(from, to, recv_buffer).await?;
    let started = Instant::now();
    let last = last_event_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(format!("GET /todos/stream HTTP/1.1\r\nHost: abuse\r\n{last}\r\n").as_bytes())
        .await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    let first_byte = started.elapsed();
    let code = std::str::from_utf8(&head[9..12])?.parse()?;
    Ok((code, stream, first_byte))
}

async fn streams_from_one_address(pair: &Pair) -> anyhow::Result<Row> {
    let to = address(&pair.query);
    let mut held = Vec::new();
    let (mut ok, mut too_many, mut other) = (0, 0, 0);
    for _ in 0..200 {
        match open_stream("127.0.2.1", to, None, None).await {
            Ok((200, stream, _)) => {
                ok += 1;
                held.push(stream);
            }
            Ok((429, ..)) => too_many += 1,
            _ => other += 1,
        }
    }
    let another = open_stream("127.0.2.2", to, None, None).await;
    let another_ok = matches!(another, Ok((200, ..)));
    drop(held);
    drop(another);
    Ok(Row::new(
        "200 GET /todos/stream from one address",
        "that address gets its share (STREAM_MAX_PER_PEER); another address still gets a stream",
        format!(
            "{ok} streams, {too_many} answered 429, {other} other; another address: {}",
            if another_ok { "200" } else { "refused" }
        ),
        another_ok && ok > 0 && ok < 200 && other == 0,
    ))
}

// ---------------------------------------------------------------------------------------------
// 4. Replays at size

async fn post_todo(
    client: &reqwest::Client,
    config: &Config,
    base: &str,
    title: &str,
) -> anyhow::Result<Value> {
    let response = client
        .post(format!("{base}/todos"))
        .bearer_auth(&config.write_token)
        .json(&json!({ "title": title }))
        .send()
        .await?;
    if response.status() != 201 {
        bail!("POST /todos answered {}", response.status());
    }
    Ok(response.json().await?)
}

async fn fill(config: &Config, pair: &Pair) -> anyhow::Result<()> {
    let n = config.todos();
    let started = Instant::now();
    eprintln!("[abuse] writing {n} todos through command-service");
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, next, base) = (client.clone(), next.clone(), pair.command.base.clone());
        let token = config.write_token.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= n {
                    return anyhow::Ok(());
                }
                let response = client
                    .post(format!("{base}/todos"))
                    .bearer_auth(&token)
                    .json(&json!({ "title": format!("abuse todo {k}"), "description": "x".repeat(100) }))
                    .send()
                    .await?;
                if response.status() != 201 {
                    bail!("POST /todos answered {}", response.status());
                }
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    loop {
        let stats: Value = reqwest::get(format!("{}/stats", pair.query.base))
            .await?
            .json()
            .await?;
        if stats["total"].as_u64().unwrap_or(0) >= n as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the read model did not reach {n} todos within 10 minutes: {stats}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "[abuse] {n} todos in the read model after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn replays(config: &Config, pair: &Pair) -> anyhow::Result<Row> {
    let to = address(&pair.query);
    let pid = pair.query.pid();
    let before = rss_kib(pid);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut clients = Vec::new();
    for k in 0..100 {
        let from = format!("127.0.4.{}", 1 + k / 10);
        clients.push(tokio::spawn(async move {
            // A slot of a stream that just ended is given back once the server saw it close.
            let mut tries = 0;
            let (mut stream, first_byte) = loop {
                let (code, stream, first_byte) =
                    open_stream(&from, to, Some("0"), Some(4096)).await?;
                match code {
                    200 => break (stream, first_byte),
                    503 if tries < 20 => tries += 1,
                    code => bail!("a replay answered {code}"),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            // The first event, then nothing more is read.
            let started = Instant::now();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&seen).contains("\nid:") {
                let n =
                    tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await??;
                if n == 0 {
                    bail!("the replay ended before its first event");
                }
                seen.extend_from_slice(&buf[..n]);
            }
            anyhow::Ok((stream, first_byte, started.elapsed() + first_byte))
        }));
    }
    let mut held = Vec::new();
    let mut first_bytes = Vec::new();
    let mut first_events = Vec::new();
    for c in clients {
        let (stream, first_byte, first_event) = c.await??;
        held.push(stream);
        first_bytes.push(first_byte);
        first_events.push(first_event);
    }
    // Held, unread, while the replays have what they need to fill the buffers.
    tokio::time::sleep(Duration::from_secs(5)).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.await?;
    drop(held);
    let grew_mib = (peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before)) as f64
        / 1024.0;
    let slowest_byte = first_bytes.iter().max().copied().unwrap_or_default();
    first_events.sort();
    let p50 = first_events[first_events.len() / 2];
    let max_event = first_events.last().copied().unwrap_or_default();
    Ok(Row::new(
        &format!(
            "100 replays from Last-Event-ID: 0 at {} todos, clients that never read",
            config.todos()
        ),
        "query-service grows by less than 64 MiB; each replay's first byte within 100 ms",
        format!(
            "RSS {:.0} -> {:.0} MiB (+{grew_mib:.1}); first byte: slowest {:.1} ms; first event: p50 {:.0} ms, max {:.0} ms",
            before as f64 / 1024.0,
            before as f64 / 1024.0 + grew_mib,
            slowest_byte.as_secs_f64() * 1e3,
            p50.as_secs_f64() * 1e3,
            max_event.as_secs_f64() * 1e3
        ),
        grew_mib < 64.0 && slowest_byte < Duration::from_millis(100),
    )
    .timing())
}

// ---------------------------------------------------------------------------------------------
// 5. Forged events

fn forged(todo_id: i64, version: i64, title: &str) -> events::Envelope {
    let at = chrono::Utc::now();
    events::Envelope {
        event_id: uuid::Uuid::new_v4(),
        event_type: if version == 1 {
            events::EventType::TodoCreated
        } else {
            events::EventType::TodoUpdated
        },
        schema_version: events::SCHEMA_VERSION,
        todo_id,
        version,
        position: 1,
        occurred_at: at,
        correlation_id: "abuse".into(),
        causation_id: None,
        actor: None,
        data: Some(events::TodoState {
            title: title.into(),
            description: None,
            completed: true,
            created_at: at,
            updated_at: at,
            due_at: None,
            erased_at: None,
        }),
        changed: vec![events::Field::Completed],
    }
}

async fn lists(base: &str) -> anyhow::Result<Vec<Value>> {
    let mut seen = Vec::new();
    for path in [
        "/todos?limit=5",
        "/todos?sort=-id&limit=5",
        "/todos?sort=-updated_at&limit=5",
        "/todos/1",
    ] {
        seen.push(reqwest::get(format!("{base}{path}")).await?.json().await?);
    }
    let stats: Value = reqwest::get(format!("{base}/stats")).await?.json().await?;
    seen.push(json!([
        stats["total"],
        stats["completed"],
        stats["pending"]
    ]));
    Ok(seen)
}

fn text(value: Option<&AMQPValue>) -> String {
    match value {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => String::new(),
    }
}

async fn forged_events(config: &Config, pair: &Pair) -> anyhow::Result<Vec<Row>> {
    let before = lists(&pair.query.base).await?;
    let cases = [
        (
            "an id at the top of i64",
            forged(i64::MAX, 1, "forged"),
            "todo_id",
        ),
        (
            "a version far ahead",
            forged(1, 1 << 62, "forged"),
            "version",
        ),
        (
            "an oversized title",
            forged(1, 2, &"x".repeat(events::limits::TITLE_MAX_CHARS + 1)),
            "title",
        ),
    ];
    // Published as a peer with broker access would: the writer's own user.
    let writer = amqp(&config.amqp_command_url).await?;
    let channel = writer.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for (_, event, _) in &cases {
        channel
            .basic_publish(
                events::EXCHANGE.into(),
                event.routing_key().into(),
                BasicPublishOptions::default(),
                &event.to_json(),
                BasicProperties::default()
                    .with_content_type(events::CONTENT_TYPE.into())
                    .with_delivery_mode(2),
            )
            .await?
            .await?;
    }
    let _ = writer.close(200, "done".into()).await;
    // The reader's user may look at its dead-letter queue.
    let reader = amqp(&config.amqp_query_url).await?;
    let channel = reader.create_channel().await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let depth = channel
            .queue_declare(
                events::DEAD_LETTER_QUEUE.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?
            .message_count();
        if depth as usize >= cases.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The reasons of what the dead-letter queue holds, in whatever order they came.
    let mut reasons = Vec::new();
    for _ in 0..cases.len() {
        let got = channel
            .basic_get(
                events::DEAD_LETTER_QUEUE.into(),
                BasicGetOptions { no_ack: true },
            )
            .await?;
        if let Some(m) = got {
            let headers = m.delivery.properties.headers().clone().unwrap_or_default();
            reasons.push(text(headers.inner().get(events::HEADER_REFUSED_REASON)));
        }
    }
    let mut rows = Vec::new();
    for (what, _, field) in &cases {
        let found = reasons
            .iter()
            .position(|r| r.contains(field))
            .map(|k| reasons.remove(k));
        let held = found.is_some();
        rows.push(Row::new(
            &format!("a forged event: {what}"),
            "in the dead-letter queue with its reason",
            found.unwrap_or_else(|| "not in the dead-letter queue".into()),
            held,
        ));
    }
    let _ = reader.close(200, "done".into()).await;
    let after = lists(&pair.query.base).await?;
    rows.push(Row::new(
        "  the lists after the forged events",
        "every list, todo 1 and the counts unchanged",
        if after == before {
            "unchanged".into()
        } else {
            format!("changed: {after:?}")
        },
        after == before,
    ));
    // A version ahead of the log, set by hand, and verify --repair.
    let mongo = mongodb::Client::with_uri_str(&config.mongodb_uri).await?;
    mongo
        .database(&config.database())
        .collection::<bson::Document>("todos")
        .update_one(
            doc! { "_id": 1_i64 },
            doc! { "$set": { "version": events::limits::MAX_ID, "title": "by hand" } },
        )
        .await?;
    let (repaired, out) =
        query_command(config, &["verify", &pair.command.base, "--repair"], true).await?;
    let todo: Value = reqwest::get(format!("{}/todos/1", pair.query.base))
        .await?
        .json()
        .await?;
    let put_back = todo["version"] == 1 && todo["title"] != "by hand";
    rows.push(Row::new(
        "a version ahead of the log put there by hand",
        "undone by verify --repair",
        format!(
            "verify --repair exit {}; {}; todo 1 now at version {}",
            if repaired { 0 } else { 1 },
            out.lines()
                .find(|l| l.contains("ahead of the log back"))
                .unwrap_or("no repair line"),
            todo["version"]
        ),
        repaired && put_back,
    ));
    Ok(rows)
}

/// Runs `query-service <args>` against this run's read model, with the feed token or not.
async fn query_command(
    config: &Config,
    args: &[&str],
    with_token: bool,
) -> anyhow::Result<(bool, String)> {
    let mut command = std::process::Command::new(bench::process::binary("query-service"));
    command
        .args(args)
        .env_clear()
        .env("MONGODB_URI", &config.mongodb_uri)
        .env("MONGODB_DB", config.database())
        .env("RUST_LOG", "warn");
    if with_token {
        command.env("FEED_TOKEN", &config.feed_token);
    }
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// 6. Feed tokens

async fn feed_tokens(config: &Config, pair: &Pair) -> anyhow::Result<Vec<Row>> {
    let (replayed, replay_out) =
        query_command(config, &["replay", &pair.command.base], true).await?;
    let (verified, verify_out) =
        query_command(config, &["verify", &pair.command.base], true).await?;
    let (without, without_out) =
        query_command(config, &["verify", &pair.command.base], false).await?;
    let client = reqwest::Client::new();
    let write_with_feed = client
        .post(format!("{}/todos", pair.command.base))
        .bearer_auth(&config.feed_token)
        .json(&json!({ "title": "with a feed token" }))
        .send()
        .await?
        .status();
    let last = |out: &str| {
        out.lines()
            .last()
            .unwrap_or("")
            .chars()
            .take(160)
            .collect::<String>()
    };
    Ok(vec![
        Row::new(
            "query-service replay and verify with WRITE_TOKENS and FEED_TOKENS set",
            "both pass with FEED_TOKEN; without it they fail naming FEED_TOKEN",
            format!(
                "replay exit {}, verify exit {} ({}); without FEED_TOKEN: exit {} ({})",
                i32::from(!replayed),
                i32::from(!verified),
                last(&verify_out),
                i32::from(!without),
                last(&without_out)
            ),
            replayed && verified && !without && without_out.contains("FEED_TOKEN"),
        )
        .with_detail(&replay_out),
        Row::new(
            "POST /todos with a feed token",
            "403: a feed token may not write",
            write_with_feed.as_u16().to_string(),
            write_with_feed == 403,
        ),
    ])
}

impl Row {
    /// Keeps a command's output in the log when the row failed.
    fn with_detail(self, detail: &str) -> Self {
        if !self.ok {
            eprintln!("[abuse] {}: {detail}", self.attack);
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Two replicas

async fn two_replicas(config: &Config, pair: &Pair) -> anyhow::Result<Row> {
    const WRITES: usize = 200;
    let mut readers = Vec::new();
    for service in [&pair.query, &pair.replica] {
        let (code, stream, _) = open_stream("127.0.3.1", address(service), None, None).await?;
        if code != 200 {
            bail!("a stream answered {code}");
        }
        readers.push(tokio::spawn(read_ids(stream, WRITES)));
    }
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for k in 0..WRITES {
        let todo = post_todo(
            &client,
            config,
            &pair.command.base,
            &format!("seen by both {k}"),
        )
        .await?;
        ids.push(todo["id"].as_i64().unwrap_or(0));
    }
    let mut seen = Vec::new();
    for r in readers {
        seen.push(r.await??);
    }
    let applied = |base: String| async move {
        let text = reqwest::get(format!("{base}/metrics"))
            .await?
            .text()
            .await?;
        anyhow::Ok(
            text.lines()
                .filter(|l| l.starts_with("projection_events_total{") && l.contains("applied"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>(),
        )
    };
    let (by_one, by_two) = (
        applied(pair.query.base.clone()).await?,
        applied(pair.replica.base.clone()).await?,
    );
    let every = |s: &Vec<i64>| ids.iter().all(|id| s.contains(id));
    Ok(Row::new(
        "two query-service processes on one queue, a stream client on each",
        "each client sees every change, whichever process applied it",
        format!(
            "{WRITES} writes; applied {by_one} by one, {by_two} by the other; the clients saw {} and {} of them",
            ids.iter().filter(|id| seen[0].contains(id)).count(),
            ids.iter().filter(|id| seen[1].contains(id)).count()
        ),
        every(&seen[0]) && every(&seen[1]) && by_one > 0.0 && by_two > 0.0,
    ))
}

/// Reads a stream until it has seen `n` todo events (or 30 s passed); their ids.
async fn read_ids(mut stream: TcpStream, n: usize) -> anyhow::Result<Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while ids.len() < n {
        let Ok(read) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await else {
            break;
        };
        let read = read?;
        if read == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..read]));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                    if let Some(id) = v["id"].as_i64() {
                        ids.push(id);
                    }
                }
            }
        }
    }
    Ok(ids)
}
