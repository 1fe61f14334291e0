//! command-service in-process for integration tests (feature `testing`), here and in
//! query-service's: each app on a database of its own (dropped with it), its own exchange, port
//! 0, built by the same [`Application::build`] the binary uses, with short timeouts.

use crate::settings::Settings;
use crate::Application;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use events::testing::{amqp_url, TestDatabase};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A database of the test's own (dropped with the value).
pub async fn create_database() -> TestDatabase {
    events::testing::create_database("cs_test").await
}

/// A running command-service; stopped (as by SIGTERM) by [`TestApp::stop`] or when dropped.
pub struct TestApp {
    pub address: String,
    /// The supervisor of the app's background tasks.
    pub tasks: std::sync::Arc<events::service::supervise::Supervisor>,
    pub database_url: String,
    pub exchange: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The database the app made for itself, dropped after the app.
    _database: Option<TestDatabase>,
}

#[derive(Default)]
pub struct Options {
    pub database_url: Option<String>,
    pub exchange: Option<String>,
    pub extra: Vec<(&'static str, String)>,
}

/// The settings of a test's application: its database and exchange, port 0, short timeouts;
/// a variable given in `extra` replaces the default here.
pub fn test_settings(
    database_url: &str,
    exchange: &str,
    extra: Vec<(&'static str, String)>,
) -> Settings {
    let mut vars = vec![
        ("DATABASE_URL".to_string(), database_url.to_string()),
        ("AMQP_URL".to_string(), amqp_url()),
        ("AMQP_EXCHANGE".to_string(), exchange.to_string()),
        ("HTTP_ADDR".to_string(), "127.0.0.1:0".to_string()),
        ("DATABASE_POOL_SIZE".to_string(), "5".to_string()),
        ("DATABASE_TIMEOUT_MS".to_string(), "1500".to_string()),
        ("RELAY_MAX_BACKOFF_MS".to_string(), "1000".to_string()),
        ("RELAY_POLL_MS".to_string(), "500".to_string()),
    ];
    vars.retain(|(k, _)| !extra.iter().any(|(name, _)| name == k));
    for (k, v) in extra {
        vars.push((k.to_string(), v));
    }
    Settings::from_vars(vars).expect("test settings")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    events::testing::init_logs();
    let (database_url, database) = match options.database_url {
        Some(url) => (url, None),
        None => {
            let database = create_database().await;
            (database.url.clone(), Some(database))
        }
    };
    let exchange = options
        .exchange
        .unwrap_or_else(|| format!("test.{}", uuid::Uuid::new_v4().simple()));
    let settings = test_settings(&database_url, &exchange, options.extra);
    let app = Application::build(settings)
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let tasks = app.tasks();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        tasks,
        database_url,
        exchange,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client"),
        stop: Some(stop),
        task: Some(task),
        _database: database,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request sent")
    }

    pub async fn create(&self, title: &str) -> serde_json::Value {
        let response = self
            .post_json("/todos", &serde_json::json!({ "title": title }).to_string())
            .await;
        assert_eq!(response.status(), 201, "create {title}");
        response.json().await.expect("todo JSON")
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<&str>) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        request.send().await.expect("request sent")
    }

    pub async fn events(&self) -> Vec<serde_json::Value> {
        let response = self
            .client
            .get(self.url("/events?after=0&limit=1000"))
            .send()
            .await
            .expect("feed");
        assert_eq!(response.status(), 200);
        response.json().await.expect("feed JSON")
    }

    pub async fn db(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.database_url)
            .await
            .expect("test database reachable")
    }

    /// Counts rows of a table in this app's database.
    pub async fn count(&self, table: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.db().await;
        let n: N = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result(&mut conn)
            .await
            .expect("count");
        n.n
    }

    /// Stops the service the way SIGTERM does and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("service stops within 30 s");
            result.expect("service task").expect("service ran cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
