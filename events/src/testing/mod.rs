//! What the services' integration tests share (feature `testing`): where the local services
//! are, a PostgreSQL database of the test's own that is dropped with it, waiting for a
//! condition with a deadline, and stopping or starting a shared service through
//! `scripts/dev-services.sh`. Nothing here is a stand-in for a service: tests run against the
//! real PostgreSQL, RabbitMQ and MongoDB-wire server the script starts.

pub mod otlp;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The test process's log subscriber, once: pretty, at `TEST_LOG` (default `warn`).
pub fn init_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
        crate::service::telemetry::init(
            "test",
            crate::service::telemetry::LogFormat::Pretty,
            &filter,
        );
    });
}

/// The PostgreSQL URL tests create their databases with.
pub fn admin_database_url() -> String {
    std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://todo:todo@127.0.0.1:5432/postgres".into())
}

/// The RabbitMQ URL tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The MongoDB URL tests use.
pub fn mongodb_uri() -> String {
    std::env::var("MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?maxIdleTimeMS=60000".into())
}

/// A PostgreSQL database of one test's own, dropped (its sessions ended) when this is dropped,
/// also when the test fails.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

/// The database's URL, where a `&str` is wanted.
impl std::ops::Deref for TestDatabase {
    type Target = str;
    fn deref(&self) -> &str {
        &self.url
    }
}

/// A new, empty database named `<prefix>_<uuid>`.
pub async fn create_database(prefix: &str) -> TestDatabase {
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    admin(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("create test database (run scripts/dev-services.sh up): {e}"));
    let base = admin_database_url();
    let url = format!(
        "{}/{}",
        &base[..base.rfind('/').expect("the admin URL has a path")],
        name
    );
    TestDatabase { name, url }
}

async fn admin(statement: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&admin_database_url(), tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    client.batch_execute(statement).await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Its own thread and runtime: a Drop cannot await, and may run inside a runtime.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(admin(&statement))
                .map_err(|e| e.to_string())
        })
        .join();
        if let Ok(Err(err)) | Err(err) = dropped.map_err(|_| "panicked".to_string()) {
            eprintln!("test database {} not dropped: {err}", self.name);
        }
    }
}

/// The value of the sample `name` (with no labels, or its labels written out in `name`) in a
/// Prometheus/OpenMetrics text exposition; `None` when it is not there.
pub fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// Waits until `check` holds, trying every 100 ms; fails the test after `within`, naming
/// `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `scripts/dev-services.sh <command>` (`stop-rabbitmq`, `start-mongo`, …). Only a test
/// running alone may stop a shared service: the tests in an `outage.rs` (named `*outage*`),
/// which `cargo nextest` runs alone (`.config/nextest.toml`). Called from another file, or under
/// plain `cargo test` (which runs tests side by side), this refuses rather than break the tests
/// beside it.
#[track_caller]
pub fn services(command: &str) {
    if !command.starts_with("start") {
        let caller = std::panic::Location::caller().file();
        assert!(
            caller.ends_with("outage.rs"),
            "`dev-services.sh {command}` from {caller}: only tests in an outage.rs, which run \
             alone, may stop a shared service"
        );
        assert!(
            std::env::var_os("NEXTEST").is_some(),
            "`dev-services.sh {command}` stops a service other tests use: run the tests with \
             `cargo nextest run` (scripts/test.sh), which runs this test alone"
        );
    }
    if let Err(err) = try_services(command) {
        panic!("{err}");
    }
}

fn try_services(command: &str) -> Result<(), String> {
    let script: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "scripts",
        "dev-services.sh",
    ]
    .iter()
    .collect();
    match Command::new("bash").arg(script).arg(command).status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("dev-services.sh {command} failed: {status}")),
        Err(err) => Err(format!("dev-services.sh {command} did not run: {err}")),
    }
}

/// Runs `dev-services.sh <command>` when dropped (`Restart("start-rabbitmq")`), so a test that
/// fails half-way still leaves the service up for the next. When the test is already failing,
/// a restart that fails is logged rather than raised: a second panic would abort the process
/// and hide the test's own message.
pub struct Restart(pub &'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        match try_services(self.0) {
            Ok(()) => {}
            Err(err) if std::thread::panicking() => eprintln!("while failing: {err}"),
            Err(err) => panic!("{err}"),
        }
    }
}
