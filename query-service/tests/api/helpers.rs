//! Test harness: each test gets its own MongoDB database, RabbitMQ exchange and queue, and
//! (when it writes through command-service) its own PostgreSQL database. Services run on
//! port 0, built by the same `Application::build` their binaries use, or as the real binary
//! when a test must kill the process.

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use command_service::testing::{spawn_app_with, Options, TestApp};
pub use events::testing::{amqp_url, eventually, mongodb_uri, services, Restart, TestDatabase};

/// Names that keep one test's broker objects and databases apart from every other test's.
#[derive(Clone, Debug)]
pub struct Names {
    pub exchange: String,
    pub queue: String,
    pub mongo_db: String,
}

impl Names {
    pub fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            exchange: format!("test.{id}"),
            queue: format!("test.{id}.query"),
            mongo_db: format!("qs_test_{id}"),
        }
    }

    pub fn dead_letter_queue(&self) -> String {
        events::dead_letter_queue(&self.queue)
    }

    /// The variables that point a query-service at this test's broker objects and database.
    pub fn query_vars(&self) -> Vec<(String, String)> {
        vec![
            ("MONGODB_URI".into(), mongodb_uri()),
            ("MONGODB_DB".into(), self.mongo_db.clone()),
            ("AMQP_URL".into(), amqp_url()),
            ("AMQP_EXCHANGE".into(), self.exchange.clone()),
            ("AMQP_QUEUE".into(), self.queue.clone()),
            ("RETRY_MAX_BACKOFF_MS".into(), "1000".into()),
            ("MIN_VERSION_WAIT_MS".into(), "5000".into()),
        ]
    }

    /// Deletes this test's MongoDB database, queues and exchanges.
    pub async fn cleanup(&self) {
        if let Ok(client) = mongodb::Client::with_uri_str(mongodb_uri()).await {
            let _ = client.database(&self.mongo_db).drop().await;
        }
        if let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
            if let Ok(ch) = conn.create_channel().await {
                for q in [self.queue.clone(), self.dead_letter_queue()] {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for x in [
                    self.exchange.clone(),
                    events::dead_letter_exchange(&self.exchange),
                    events::changes_exchange(&self.queue),
                ] {
                    let _ = ch
                        .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = conn.close(200, "done".into()).await;
        }
    }
}

pub struct Running {
    pub address: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("service stops within 30 s")
                .expect("service task")
                .expect("service ran cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn spawn_query(names: &Names) -> Running {
    let running = spawn_query_with(names, &[]).await;
    wait_for_consumer(&running).await;
    running
}

/// query-service with `extra` variables in place of or beside the test's own, not waiting for its
/// consumer to subscribe.
pub async fn spawn_query_with(names: &Names, extra: &[(&str, &str)]) -> Running {
    events::testing::init_logs();
    let mut vars = names.query_vars();
    vars.push(("HTTP_ADDR".into(), "127.0.0.1:0".into()));
    vars.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let settings = query_service::settings::Settings::from_vars(vars).expect("settings");
    let app = query_service::Application::build(settings)
        .await
        .expect("query-service builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Running {
        address,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Waits until the consumer has declared its queue and subscribed (readiness shows it).
pub async fn wait_for_consumer(running: &Running) {
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(20), "consumer connected", || async {
        match client.get(running.url("/ready")).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .is_ok_and(|b| b["checks"]["rabbitmq"] == "up" && b["checks"]["fanout"] == "up"),
            Err(_) => false,
        }
    })
    .await;
}

/// command-service in-process (`command_service::testing`), on a database of its own,
/// publishing to this test's exchange; the database is dropped with the second value.
pub async fn spawn_command(names: &Names) -> (TestApp, TestDatabase) {
    let database = create_database().await;
    let app = spawn_app_with(Options {
        database_url: Some(database.url.clone()),
        exchange: Some(names.exchange.clone()),
        // The services' own pool and wait: bursts in these tests are the services' load.
        extra: vec![
            ("DATABASE_POOL_SIZE", "10".into()),
            ("DATABASE_TIMEOUT_MS", "5000".into()),
        ],
    })
    .await;
    (app, database)
}

/// A PostgreSQL database of the test's own (dropped with the value).
pub async fn create_database() -> TestDatabase {
    events::testing::create_database("qs_test").await
}

/// query-service as a real process (for SIGKILL), on a port the OS picks (`HTTP_ADDR` port 0),
/// read back from its "listening" log line. Killed (SIGKILL) and reaped when dropped, so a test
/// that fails half-way leaves no process behind.
pub struct Process {
    pub child: Child,
    pub address: String,
    pub port: u16,
    /// Every line it wrote to stdout so far (its JSON log).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        // Killing a process that already exited (and was reaped) is not an error worth a panic.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// The log lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub async fn start_query_process(names: &Names) -> Process {
    let vars = names.query_vars();
    start_process(
        env!("CARGO_BIN_EXE_query-service"),
        &vars,
        "query_service",
        "query-service listening",
    )
    .await
}

/// command-service's binary, which the workspace's test build builds beside this crate's:
/// `target/<profile>/command-service`, next to the `deps/` this test binary runs from.
pub fn command_service_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("command-service"))
        .expect("target/<profile>/");
    assert!(
        binary.exists(),
        "{} is missing: build the workspace's tests (cargo nextest run --workspace, or \
         cargo build -p command-service) first",
        binary.display()
    );
    binary
}

/// A service binary as a real process with `vars`, JSON logs at info for `crate_name` (unless
/// `vars` sets `RUST_LOG`), on a port the OS picks, read back from its `message` log line.
pub async fn start_process(
    binary: impl AsRef<std::ffi::OsStr>,
    vars: &[(String, String)],
    crate_name: &str,
    message: &'static str,
) -> Process {
    let mut cmd = Command::new(binary);
    let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
    cmd.env("HTTP_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", format!("{filter},{crate_name}=info"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The caller's own variables win (a `RUST_LOG` of its own too).
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let port = listening_port(stdout, message, log.clone()).await;
    Process {
        child,
        address: format!("http://127.0.0.1:{port}"),
        port,
        log,
    }
}

/// Reads a process's JSON log up to the line `message` and returns the port of its `addr`. The
/// rest of the log is read and kept in `log`, so the process never blocks on a full pipe.
async fn listening_port(
    stdout: std::process::ChildStdout,
    message: &'static str,
    log: Arc<Mutex<Vec<String>>>,
) -> u16 {
    use std::io::BufRead;
    let (tx, rx) = oneshot::channel::<Option<u16>>();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(tx) = tx.take_if(|_| line.contains(message)) {
                let port = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["addr"].as_str()?.rsplit(':').next()?.parse().ok());
                let _ = tx.send(port);
            }
            log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    tokio::time::timeout(Duration::from_secs(60), rx)
        .await
        .unwrap_or_else(|_| panic!("no {message:?} log line within 60 s"))
        .unwrap_or_else(|_| panic!("the process ended before {message:?}"))
        .unwrap_or_else(|| panic!("{message:?} names no port"))
}

pub struct Publisher {
    pub channel: Channel,
    _conn: Connection,
    exchange: String,
}

/// Publishes straight to the exchange, with confirms, as the relay does.
pub async fn publisher(exchange: &str) -> Publisher {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ reachable (run scripts/dev-services.sh up)");
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    Publisher {
        channel,
        _conn: conn,
        exchange: exchange.to_string(),
    }
}

impl Publisher {
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .expect("published")
            .await
            .expect("confirmed");
        assert!(confirm.is_ack(), "broker acked");
        assert!(
            confirm.take_message().is_none(),
            "message was routed to a queue"
        );
    }

    pub async fn publish(&self, e: &events::Envelope) {
        self.publish_raw(e.routing_key(), &e.to_json()).await;
    }
}

/// Creates one todo per title through command-service at `command`; their ids, in order.
pub async fn create_todos(
    client: &reqwest::Client,
    command: &TestApp,
    titles: &[&str],
) -> Vec<i64> {
    let mut ids = Vec::new();
    for title in titles {
        let created: Value = write(
            client,
            "POST",
            command.url("/todos"),
            Some(serde_json::json!({ "title": title })),
        )
        .await
        .json()
        .await
        .expect("json");
        ids.push(created["id"].as_i64().expect("id"));
    }
    ids
}

/// Sends a write (`POST`, `PATCH`, `PUT`, `DELETE`) with an optional JSON body.
pub async fn write(
    client: &reqwest::Client,
    method: &str,
    url: String,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let mut request = client.request(
        reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
        url,
    );
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("sent")
}

/// `GET url`, answered 200 with a JSON body of type `T`.
pub async fn get_json<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: &str) -> T {
    let response = client.get(url).send().await.expect("request sent");
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.expect("JSON body")
}

/// Messages waiting in a queue (declares it passively).
pub async fn queue_depth(queue: &str) -> u32 {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}

/// The value of an unlabelled metric of `GET /metrics` (a counter's `_total` sample or a
/// gauge), 0 when it is not there yet.
pub async fn metric(client: &reqwest::Client, running: &Running, name: &str) -> f64 {
    metric_at(client, &running.address, name).await
}

/// The sample `name` of the query-service at `address`; 0 when it is not there.
pub async fn metric_at(client: &reqwest::Client, address: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    events::testing::sample(&text, name).unwrap_or(0.0)
}

/// Events the query-service process at `address` settled since it started, whatever their
/// outcome (`projection_events_total`, all outcomes); 0 when it does not answer.
pub async fn settled_by(client: &reqwest::Client, address: &str) -> f64 {
    let Ok(response) = client.get(format!("{address}/metrics")).send().await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("projection_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Events the read model's shared counters (`/stats`) hold as settled, whatever the outcome.
pub async fn settled_in_stats(client: &reqwest::Client, query: &Running) -> i64 {
    let stats: Value = get_json(client, &query.url("/stats")).await;
    [
        "applied",
        "skipped_duplicates",
        "superseded",
        "dead_lettered",
    ]
    .iter()
    .map(|k| stats["projection"][k].as_i64().unwrap_or(0))
    .sum()
}

/// Counts the log lines that contain a text.
#[derive(Clone)]
pub struct LineCounter {
    needle: &'static str,
    seen: Arc<Mutex<usize>>,
}

impl LineCounter {
    /// The process's log subscriber, counting the lines with `needle` (the consumer logs at
    /// info, everything else at warn). nextest runs each test in its own process, so the
    /// subscriber is the test's own.
    pub fn install(needle: &'static str) -> Self {
        Self::install_with(needle, "warn,query_service::consumer=info")
    }

    /// [`LineCounter::install`] with a log filter of the test's choosing.
    pub fn install_with(needle: &'static str, filter: &str) -> Self {
        let counter = LineCounter {
            needle,
            seen: Arc::default(),
        };
        let sink = counter.clone();
        query_service::telemetry::init_with_writer(
            "test",
            query_service::settings::LogFormat::Json,
            filter,
            move || sink.clone(),
        );
        counter
    }

    pub fn count(&self) -> usize {
        *self.seen.lock().expect("counter")
    }
}

impl Write for LineCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if String::from_utf8_lossy(buf).contains(self.needle) {
            *self.seen.lock().expect("counter") += 1;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
