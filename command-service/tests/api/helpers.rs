//! Test harness: every test gets its own PostgreSQL database, its own RabbitMQ exchange and an
//! application on port 0, built by the same `Application::build` the binary uses. Nothing is
//! mocked: the services are the local ones `scripts/dev-services.sh` starts.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use command_service::testing::{
    create_database, spawn_app, spawn_app_with, test_settings, Options, TestApp,
};
pub use events::testing::{amqp_url, eventually, services, Restart};

/// A queue of the test's own, bound to an exchange with `todo.#`, to read back what was published.
pub struct TestQueue {
    pub name: String,
    pub channel: Channel,
    _conn: Connection,
}

pub async fn amqp_connect() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ reachable (run scripts/dev-services.sh up)")
}

pub async fn bind_queue(exchange: &str, durable: bool) -> TestQueue {
    let conn = amqp_connect().await;
    let channel = conn.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange declared");
    let name = format!("{exchange}.reader");
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue declared");
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.into(),
            events::BINDING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue bound");
    TestQueue {
        name,
        channel,
        _conn: conn,
    }
}

impl TestQueue {
    /// Reads exactly `n` messages (acking them), failing after `within`; then checks that no
    /// further message arrives for a short while.
    pub async fn take(&self, n: usize, within: Duration) -> Vec<lapin::message::Delivery> {
        let mut consumer = self
            .channel
            .basic_consume(
                self.name.as_str().into(),
                format!("reader-{}", uuid::Uuid::new_v4().simple())
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    delivery.ack(BasicAckOptions::default()).await.expect("ack");
                    got.push(delivery);
                }
                Ok(other) => panic!("consumer ended: {other:?}"),
                Err(_) => panic!(
                    "only {} of {n} messages arrived within {within:?}",
                    got.len()
                ),
            }
        }
        if let Ok(Some(Ok(extra))) =
            tokio::time::timeout(Duration::from_millis(1500), consumer.next()).await
        {
            panic!(
                "more than {n} messages: extra {:?}",
                String::from_utf8_lossy(&extra.data)
            );
        }
        got
    }

    pub async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// A TCP proxy in front of RabbitMQ that can stall: after [`StallingProxy::stall`] it forwards
/// nothing more either way and gives new connections silence, keeping every socket open. That
/// is a broker that stopped answering (a memory or disk alarm, a hung node) as a client sees it.
pub struct StallingProxy {
    pub port: u16,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl StallingProxy {
    pub async fn start() -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listens");
        let port = listener.local_addr().expect("address").port();
        let url = amqp_url();
        let upstream = url
            .rsplit_once('@')
            .map_or(url.as_str(), |(_, rest)| rest)
            .trim_start_matches("amqp://")
            .split('/')
            .next()
            .unwrap_or("127.0.0.1:5672")
            .to_string();
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let stalled = flag.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if std::sync::atomic::AtomicBool::load(&stalled, Ordering::SeqCst) {
                        // Accepted, then silence: the socket stays open, nothing is said.
                        let _held = client;
                        return std::future::pending::<()>().await;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, stalled.clone()),
                        pump(server_read, client_write, stalled),
                    );
                });
            }
        });
        Self {
            port,
            stalled,
            task,
        }
    }

    /// `AMQP_URL` through the proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if std::sync::atomic::AtomicBool::load(&stalled, std::sync::atomic::Ordering::SeqCst) {
            // Hold both sockets open and answer nothing, for good.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `GET /ready`'s body.
pub async fn ready(app: &TestApp) -> serde_json::Value {
    app.client
        .get(app.url("/ready"))
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("ready JSON")
}

/// The value of an unlabelled metric in `GET /metrics` (`outbox_publish_failures_total`, …).
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    events::testing::sample(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// command-service as the real binary (for signals, exit codes and its real log), on a port
/// the OS picks (`HTTP_ADDR` port 0) read back from its "listening" log line (`LOG_FORMAT`
/// json). Its environment is only what the test gives. Everything it writes to stdout and
/// stderr is kept, line by line.
pub struct Binary {
    pub child: std::process::Child,
    /// `http://127.0.0.1:<port>` once it listens (see [`start_binary`]).
    pub address: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    port: Option<oneshot::Receiver<Option<u16>>>,
}

/// Starts the binary with `vars` (plus `HTTP_ADDR` and `LOG_FORMAT`) and waits until it
/// listens. Their `RUST_LOG`, if any, must keep `command_service` at `info`: the port is read
/// from an info line.
pub async fn start_binary(vars: Vec<(&'static str, String)>) -> Binary {
    let mut binary = spawn_binary(vars);
    let port = binary.port.take().expect("not read yet");
    let port = match tokio::time::timeout(Duration::from_secs(60), port).await {
        Ok(Ok(Some(port))) => port,
        _ => panic!(
            "no \"command-service listening\" line with a port within 60 s:\n{}",
            binary.log()
        ),
    };
    binary.address = format!("http://127.0.0.1:{port}");
    binary
}

/// Starts the binary with `vars` (plus `HTTP_ADDR` and `LOG_FORMAT`), not waiting for anything.
pub fn spawn_binary(vars: Vec<(&'static str, String)>) -> Binary {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_command-service"))
        .env_clear()
        .envs(vars)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command-service binary starts");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = oneshot::channel::<Option<u16>>();
    let stdout = child.stdout.take().expect("stdout piped");
    let kept = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(tx) = tx.take_if(|_| line.contains("command-service listening")) {
                let port = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["addr"].as_str()?.rsplit(':').next()?.parse().ok());
                let _ = tx.send(port);
            }
            kept.lock().expect("log").push(line);
        }
    });
    let stderr = child.stderr.take().expect("stderr piped");
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            kept.lock().expect("log").push(line);
        }
    });
    Binary {
        child,
        address: String::new(),
        log,
        port: Some(rx),
    }
}

impl Binary {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Everything the process wrote so far, one line each.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    pub async fn wait_for_log(&self, text: &str, within: Duration) {
        eventually(within, &format!("{text:?} in the log"), || async {
            self.log().contains(text)
        })
        .await;
    }

    /// Sends a signal (`TERM`, `INT`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sessions of the database at `database_url` waiting for a lock (a row another session
/// holds): how a test sees that a request reached PostgreSQL and waits there.
pub async fn lock_waiters(database_url: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(database_url)
        .await
        .expect("database reachable");
    let n: N = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .get_result(&mut conn)
    .await
    .expect("pg_stat_activity");
    n.n
}
