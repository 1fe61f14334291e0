//! query-service: the read side of the todo CQRS pair.
//!
//! A library with a thin `main`: settings → telemetry → [`Application::build`] →
//! [`Application::run`]. Tests drive the same `build` the binary uses, on port 0.

pub mod changes;
pub mod consumer;
pub mod dead_letters;
pub mod error;
pub mod fanout;
pub mod http;
pub mod lag;
pub mod metrics;
pub mod openapi;
pub mod rebuild;
pub mod replay;
pub mod settings;
pub mod store;
pub mod verify;
pub mod waits;

pub use events::service::{healthcheck, shutdown, telemetry};

use anyhow::Context;
use consumer::{ConsumerConfig, ConsumerStatus};
use events::service::backoff::Backoff;
use events::service::supervise::Supervisor;
use settings::Settings;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio::net::TcpListener;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    store: Store,
    settings: Settings,
    tasks: Arc<Supervisor>,
}

impl Application {
    /// Binds `HTTP_ADDR`, connects the MongoDB client and creates indexes (waiting for MongoDB
    /// up to about a minute, so the service may start before its store).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = Store::connect(&settings.mongodb_uri, &settings.mongodb_db)
            .await
            .context("MONGODB_URI is not a usable MongoDB connection string")?;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        for attempt in 1.. {
            match store.ensure_indexes().await {
                Ok(()) => break,
                Err(err) if attempt < 20 => {
                    tracing::warn!(error = %err, attempt, "MongoDB not reachable yet, retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(err) => return Err(anyhow::Error::new(err).context("MongoDB not reachable")),
            }
        }
        let listener = events::service::server::listen(&settings.http_addr)
            .await
            .with_context(|| format!("cannot listen on HTTP_ADDR={}", settings.http_addr))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            store,
            settings,
            tasks: Arc::default(),
        })
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The supervisor of the consumer (what `/ready` reports under `tasks`).
    pub fn tasks(&self) -> Arc<Supervisor> {
        self.tasks.clone()
    }

    /// Serves reads and runs the projection (supervised: restarted if it ends or panics) until
    /// `signal` resolves; then stops accepting, finishes in-flight requests and the batch in
    /// hand, and returns.
    pub async fn run(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (trigger, shutdown) = shutdown::channel();
        let status = Arc::new(ConsumerStatus::default());
        let metrics = Arc::new(metrics::Metrics::default());
        // Batches applied, for `?min_version=` waiters; a waiter that falls behind re-reads.
        let (applied, _) = tokio::sync::broadcast::channel(256);
        // Changes for `GET /todos/stream`, from every replica: a client further behind than its
        // buffer is dropped.
        let hub = changes::Hub::new(self.settings.stream_buffer_bytes);
        let changes_exchange = events::changes_exchange(&self.settings.amqp_queue);
        let config = ConsumerConfig {
            metrics: metrics.clone(),
            amqp_url: self.settings.amqp_url.clone(),
            exchange: self.settings.amqp_exchange.clone(),
            queue: self.settings.amqp_queue.clone(),
            prefetch: self.settings.amqp_prefetch,
            max_backoff: Duration::from_millis(self.settings.retry_max_backoff_ms),
            applied: applied.clone(),
            changes_exchange: changes_exchange.clone(),
            max_deliveries: self.settings.amqp_max_deliveries,
        };
        let consumer = {
            let (store, status, stop) = (self.store.clone(), status.clone(), shutdown.clone());
            self.tasks.spawn("consumer", shutdown.clone(), move || {
                consumer::run(store.clone(), config.clone(), status.clone(), stop.clone())
            })
        };
        let fanout_config = fanout::FanoutConfig {
            amqp_url: self.settings.amqp_url.clone(),
            exchange: changes_exchange,
            max_backoff: Duration::from_millis(self.settings.retry_max_backoff_ms),
            hub: hub.clone(),
            applied: applied.clone(),
            status: status.clone(),
        };
        let fanout = {
            let stop = shutdown.clone();
            self.tasks.spawn("fanout", shutdown.clone(), move || {
                fanout::run(fanout_config.clone(), stop.clone())
            })
        };
        // A read model an earlier version wrote gets its sort keys and kept counts in the
        // background; until then its time-ordered lists hold only the todos written since, and
        // `/stats` counts.
        let upgrade = self.store.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            loop {
                let keys = upgrade.add_sort_keys().await.map_err(anyhow::Error::from);
                let counts = upgrade
                    .keep_counts(false)
                    .await
                    .map_err(anyhow::Error::from);
                match keys.and_then(|n| counts.map(|()| n)) {
                    Ok(0) => break,
                    Ok(n) => {
                        tracing::info!(
                            todos = n,
                            "sort keys added to an earlier version's read model"
                        );
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "sort keys or counts of an earlier read model not kept yet; retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });
        // Reads follow the read model's pointer (`store/generations.rs`): read again every
        // second. The previous generation of a rebuild is dropped once its grace has passed,
        // if the rebuild that switched did not get to it, by a task of its own (it waits
        // before it drops, and the pointer must go on being read meanwhile).
        let pointer_task = {
            let (store, stop) = (self.store.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut failures = 0u32;
                loop {
                    tokio::select! {
                        _ = stop.triggered() => return,
                        _ = tokio::time::sleep(store::generations::POINTER_EVERY) => {}
                    }
                    match store.refresh_pointer().await {
                        Ok(_) => failures = 0,
                        Err(err) => {
                            failures += 1;
                            // Reads go on by the last reading; say so once it is stale.
                            if failures == 5 {
                                tracing::warn!(error = %err, "the read model's pointer has not been read for 5 s: reads follow the last reading");
                            }
                        }
                    }
                }
            })
        };
        let retire_task = {
            let (store, stop) = (self.store.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.triggered() => return,
                        _ = tokio::time::sleep(store::generations::SWITCH_WAIT) => {}
                    }
                    match store.retire_previous().await {
                        Ok(Some(n)) => tracing::info!(
                            generation = n,
                            "dropped the read model's previous generation after its grace period"
                        ),
                        Ok(None) => {}
                        Err(err) => {
                            tracing::debug!(error = %err, "previous generation not retired")
                        }
                    }
                }
            })
        };
        // How far the read model is behind the log, by position (`lag.rs`).
        let lag = Arc::new(lag::Watch::new(metrics.lag_by_position.clone()));
        let lag_task = {
            let (watch, store, stop) = (lag.clone(), self.store.clone(), shutdown.clone());
            let config = lag::LagConfig {
                feed_url: Some(self.settings.feed_url.clone()).filter(|u| !u.is_empty()),
                feed_token: self.settings.feed_token().map(String::from),
                every: Duration::from_millis(self.settings.lag_every_ms),
                stuck_after: Duration::from_millis(self.settings.stuck_after_ms),
            };
            let held = metrics.clone();
            tokio::spawn(async move { watch.run(store, config, move || held.held(), stop).await })
        };
        // `?min_version=` waiters share one room, fed by both the consumer and the fan-out.
        let waits = waits::Waits::new(self.store.clone(), metrics.waits.clone());
        let waits_task = tokio::spawn(waits.clone().run(applied.subscribe(), shutdown.clone()));
        let state = http::State {
            store: self.store.clone(),
            lag,
            consumer: status,
            metrics: metrics.clone(),
            min_version_wait: Duration::from_millis(self.settings.min_version_wait_ms),
            min_version_waiters: Arc::new(tokio::sync::Semaphore::new(
                self.settings.min_version_max_waiters,
            )),
            waits,
            streams: http::Streams::new(
                hub.clone(),
                self.settings.stream_max_subscribers,
                self.settings.stream_max_per_peer,
                self.settings.stream_replay_max_bytes,
                Duration::from_millis(self.settings.stream_replay_max_ms),
            ),
            counts: http::CountsCache::default(),
            tasks: self.tasks.clone(),
            page: http::Page::new(&self.settings.command_service_url)?,
            operator: http::Operator::new(
                &self.settings.operator_tokens,
                &self.settings.amqp_url,
                &self.settings.operator_amqp_url,
                &self.settings.amqp_queue,
            ),
        };
        let stream_hub = hub;
        tracing::info!(addr = %self.local_addr, "query-service listening");
        let server_shutdown = shutdown.clone();
        let server = tokio::spawn(events::service::server::serve(
            self.listener,
            http::routes(state),
            self.settings.server_limits(),
            metrics.http.clone(),
            async move { server_shutdown.triggered().await },
        ));
        signal.await;
        trigger.trigger();
        // Streams never end by themselves: tell their clients to reconnect (to another
        // replica, or to this one once it is back), so the server's drain is not held by them.
        stream_hub.close("the service is shutting down; reconnect with Last-Event-ID");
        server.await.context("HTTP server task failed")?;
        consumer.await.context("consumer task failed")?;
        fanout.await.context("fan-out task failed")?;
        waits_task
            .await
            .context("min_version waiting room failed")?;
        pointer_task.abort();
        retire_task.abort();
        lag_task.abort();
        tracing::info!("query-service stopped");
        Ok(())
    }
}
