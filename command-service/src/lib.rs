//! command-service: the write side of the todo CQRS pair.
//!
//! A library with a thin `main`: settings → telemetry → [`Application::build`] →
//! [`Application::run`]. Tests drive the same `build` the binary uses, on port 0.

pub mod commands;
pub mod db;
pub mod error;
pub mod event_log;
pub mod http;
pub mod idempotency;
pub mod input;
pub mod metrics;
pub mod openapi;
pub mod relay;
pub mod schema;
pub mod sequencer;
pub mod settings;
#[cfg(feature = "testing")]
pub mod testing;

pub use events::service::{healthcheck, shutdown, telemetry};

use anyhow::Context;
use events::service::supervise::Supervisor;
use relay::{RelayConfig, RelayStatus};
use sequencer::SequencerConfig;
use settings::Settings;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connections of the background tasks: one each for the sequencer, the relay and the
/// idempotency key cleanup.
const BACKGROUND_CONNECTIONS: usize = 3;

/// A built service: listener bound, database migrated, nothing running yet.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    pool: db::PgPool,
    settings: Settings,
    relay_status: Arc<RelayStatus>,
    tasks: Arc<Supervisor>,
}

impl Application {
    /// Binds `HTTP_ADDR`, builds the pool and applies migrations (waiting for PostgreSQL up to
    /// about a minute, so the service may start before its database; replicas starting together
    /// take turns).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let limits = settings.database_limits();
        let pool = db::pool(&settings.database_url, settings.database_pool_size, limits)?;
        db::migrate(&settings.database_url, 20, limits).await?;
        let listener = events::service::server::listen(&settings.http_addr)
            .await
            .with_context(|| format!("cannot listen on HTTP_ADDR={}", settings.http_addr))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            pool,
            settings,
            relay_status: Arc::default(),
            tasks: Arc::default(),
        })
    }

    /// The supervisor of the background tasks (what `/ready` reports under `tasks`).
    pub fn tasks(&self) -> Arc<Supervisor> {
        self.tasks.clone()
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves HTTP and runs the sequencer, the outbox relay and the idempotency key cleanup
    /// (supervised: restarted if they end or panic) until `signal` resolves. Then it stops in
    /// order: the HTTP server stops accepting and lets the requests in flight finish, and the
    /// key cleanup stops; then the sequencer stamps what they committed; then the relay
    /// publishes it (while RabbitMQ answers). So a write answered during shutdown is published
    /// before the process exits, not at its next start.
    pub async fn run(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_http, http_stopping) = shutdown::channel();
        let (stop_sequencer, sequencer_stopping) = shutdown::channel();
        let (stop_relay, relay_stopping) = shutdown::channel();
        let (stop_cleanup, cleanup_stopping) = shutdown::channel();
        let metrics = Arc::new(metrics::Metrics::default());
        let wake = commands::Wake::default();
        let keys = idempotency::Keys::new(self.settings.idempotency_ttl_hours);
        let commands = commands::Commands::new(self.pool.clone(), wake.clone(), keys);
        // The background tasks have connections of their own: a burst of requests waiting for
        // the pool never delays them.
        let background = db::pool(
            &self.settings.database_url,
            BACKGROUND_CONNECTIONS,
            self.settings.database_limits(),
        )?;
        // `/ready` and `/metrics` likewise: writers holding every connection of the pool
        // never make them wait or fail, and a probe never takes a connection from a write.
        let probes =
            commands::Probes::new(&self.settings.database_url, self.settings.database_limits())?;
        let state = http::State {
            commands,
            probes,
            relay: self.relay_status.clone(),
            tasks: self.tasks.clone(),
            metrics: metrics.clone(),
            max_body_bytes: self.settings.max_body_bytes,
            tokens: self.settings.tokens(),
            cors_origins: self.settings.cors_origins(),
        };
        let poll = Duration::from_millis(self.settings.relay_poll_ms);
        let max_backoff = Duration::from_millis(self.settings.relay_max_backoff_ms);
        let sequencer = {
            let (pool, wake, metrics, stop) = (
                background.clone(),
                wake.clone(),
                metrics.clone(),
                sequencer_stopping.clone(),
            );
            self.tasks.spawn("sequencer", sequencer_stopping, move || {
                sequencer::run(
                    pool.clone(),
                    wake.appended.clone(),
                    wake.stamped.clone(),
                    SequencerConfig { poll, max_backoff },
                    metrics.clone(),
                    stop.clone(),
                )
            })
        };
        let relay_config = RelayConfig {
            amqp_url: self.settings.amqp_url.clone(),
            exchange: self.settings.amqp_exchange.clone(),
            batch_size: self.settings.relay_batch_size,
            poll,
            max_backoff,
            timeout: Duration::from_millis(self.settings.amqp_timeout_ms),
        };
        let cleanup = {
            let (pool, stop) = (background.clone(), cleanup_stopping.clone());
            self.tasks
                .spawn("idempotency-cleanup", cleanup_stopping, move || {
                    keys.clean(pool.clone(), stop.clone())
                })
        };
        let relay = {
            let (status, metrics, stop) = (
                self.relay_status.clone(),
                metrics.clone(),
                relay_stopping.clone(),
            );
            self.tasks.spawn("relay", relay_stopping, move || {
                relay::run(
                    background.clone(),
                    wake.stamped.clone(),
                    relay_config.clone(),
                    status.clone(),
                    metrics.clone(),
                    stop.clone(),
                )
            })
        };
        tracing::info!(addr = %self.local_addr, "command-service listening");
        let server = tokio::spawn(events::service::server::serve(
            self.listener,
            http::routes(state),
            self.settings.server_limits(),
            metrics.http.clone(),
            async move { http_stopping.triggered().await },
        ));
        signal.await;
        stop_http.trigger();
        server.await.context("HTTP server task failed")?;
        stop_cleanup.trigger();
        cleanup
            .await
            .context("idempotency key cleanup task failed")?;
        stop_sequencer.trigger();
        sequencer.await.context("sequencer task failed")?;
        stop_relay.trigger();
        relay.await.context("relay task failed")?;
        tracing::info!("command-service stopped");
        Ok(())
    }
}

/// `command-service erase <id>`: [`commands::Commands::erase`] against `DATABASE_URL`, with the
/// migrations applied first (the erasure writes columns they add). Whatever service replicas
/// run stamp and publish the event it appends.
pub async fn erase(settings: &Settings, id: i64, actor: &str) -> anyhow::Result<commands::Erased> {
    let limits = settings.database_limits();
    db::migrate(&settings.database_url, 5, limits).await?;
    let pool = db::pool(&settings.database_url, 1, limits)?;
    let commands = commands::Commands::new(
        pool,
        commands::Wake::default(),
        idempotency::Keys::new(settings.idempotency_ttl_hours),
    );
    let origin = commands::Origin::new(format!("erase-{}", uuid::Uuid::now_v7()), actor);
    Ok(commands.erase(id, &origin).await?)
}
