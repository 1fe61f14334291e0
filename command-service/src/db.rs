//! PostgreSQL access: the connection pool, embedded migrations, and how database errors are
//! classified (unavailable vs. a bug) for the one place that maps errors to HTTP.

use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::time::Duration;

pub type PgPool = Pool<AsyncPgConnection>;
pub type PooledConn = Object<AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Builds the pool. No connection is made here: the pool connects on demand, so the service
/// starts (and answers `/health` and 503s) while PostgreSQL is still down.
pub fn pool(database_url: &str, max_size: usize, timeout: Duration) -> anyhow::Result<PgPool> {
    let mut config = ManagerConfig::default();
    // A test query on checkout finds connections PostgreSQL closed while they sat idle (a
    // restart), so a request gets a fresh connection instead of an error.
    config.recycling_method = RecyclingMethod::Verified;
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    Ok(Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()?)
}

/// Applies pending migrations. Retries while PostgreSQL is unreachable so that the service and
/// its database can start in any order; gives up after `attempts`.
pub async fn migrate(pool: &PgPool, attempts: u32) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match pool.get().await {
            Ok(conn) => {
                // The harness drives the async connection from blocking code; keep it off the
                // async worker threads.
                let result = tokio::task::spawn_blocking(move || {
                    let mut harness = AsyncMigrationHarness::new(conn);
                    harness
                        .run_pending_migrations(MIGRATIONS)
                        .map(|applied| applied.len())
                        .map_err(|e| anyhow::anyhow!("migration failed: {e}"))
                })
                .await??;
                tracing::info!(applied = result, "database migrations are up to date");
                return Ok(());
            }
            Err(err) if attempt < attempts => {
                tracing::warn!(error = %err, attempt, "PostgreSQL not reachable yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(anyhow::anyhow!("PostgreSQL not reachable: {err}")),
        }
    }
}

/// Whether a database error means "the store is not there right now" (answer 503, retry later)
/// rather than a bug in a query.
pub fn is_unavailable(err: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match err {
        Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand, _)
        | Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
        | Error::BrokenTransactionManager => true,
        Error::DatabaseError(_, info) => {
            let message = info.message();
            // SQLSTATE class 57 (operator intervention: shutdown, restart) and 08 (connection
            // exceptions) arrive as `Unknown`; diesel keeps only the message.
            message.contains("terminating connection")
                || message.contains("shutting down")
                || message.contains("starting up")
                || message.contains("connection")
        }
        _ => false,
    }
}
