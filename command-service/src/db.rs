//! PostgreSQL access: the connection pool, embedded migrations, and how database errors are
//! classified (unavailable vs. a bug) for the one place that maps errors to HTTP.

use diesel::sql_types::BigInt;
use diesel::{ConnectionError, ConnectionResult};
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use events::service::backoff::Backoff;
use std::time::Duration;

pub type PgPool = Pool<AsyncPgConnection>;
pub type PooledConn = Object<AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// How long PostgreSQL may keep the service waiting. Every connection the service opens
/// carries them, so a write answers (503 at worst) in bounded time even when a row it needs is
/// locked by a stalled session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Waiting for a pooled connection, and opening a new one (TCP connect and startup).
    pub connect: Duration,
    /// PostgreSQL's `statement_timeout`: one statement's run time, lock waits included.
    pub statement: Duration,
    /// PostgreSQL's `lock_timeout`: one wait for a lock (a todo's row, an advisory lock).
    pub lock: Duration,
    /// PostgreSQL's `idle_in_transaction_session_timeout`: PostgreSQL ends a session whose
    /// transaction sits idle this long, releasing its locks.
    pub idle_in_transaction: Duration,
}

/// Connections of the probe pool: `/ready` and `/metrics` query PostgreSQL on these, never on
/// a connection the writes use. Two, so a readiness probe and a scrape at once do not wait for
/// each other.
pub const PROBE_CONNECTIONS: usize = 2;

impl Limits {
    /// The limits of the probe pool: a probe waits at most a second for a connection (or for
    /// opening one) and its statement runs at most a second, whatever the writes are allowed.
    /// Both stay under the two seconds `/ready` and `/metrics` give each query, so PostgreSQL
    /// cancels a slow probe itself and the connection goes back to the pool usable.
    pub fn for_probes(self) -> Self {
        Self {
            connect: Duration::from_secs(1),
            statement: Duration::from_secs(1),
            lock: Duration::from_millis(500),
            idle_in_transaction: self.idle_in_transaction,
        }
    }

    /// The session settings, as the `options` startup parameter (`-c name=value`, in ms).
    fn options(&self) -> String {
        format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
            self.statement.as_millis(),
            self.lock.as_millis(),
            self.idle_in_transaction.as_millis()
        )
    }
}

/// TCP keepalives: a connection whose peer vanished (host down, network cut) without closing it
/// is noticed about `IDLE + INTERVAL * RETRIES` after its last traffic, not hours later.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;
/// Data sent but unacknowledged this long closes the connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection to `database_url` with the [`Limits`] set on its session, TCP keepalives
/// and a deadline for connecting. Options the URL sets itself are kept; the limits follow them,
/// so they win.
pub async fn connect(database_url: &str, limits: Limits) -> ConnectionResult<AsyncPgConnection> {
    let mut config: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e: tokio_postgres::Error| ConnectionError::InvalidConnectionUrl(e.to_string()))?;
    config
        .connect_timeout(limits.connect)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(TCP_USER_TIMEOUT);
    let options = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {}", limits.options()),
        _ => limits.options(),
    };
    config.options(&options);
    // `connect_timeout` covers the TCP connect only; a server that accepts and then says
    // nothing is bounded here.
    let (client, connection) =
        tokio::time::timeout(limits.connect, config.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| {
                ConnectionError::BadConnection(format!(
                    "no connection to PostgreSQL within {} ms",
                    limits.connect.as_millis()
                ))
            })?
            .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

/// Builds the pool. No connection is made here: the pool connects on demand, so the service
/// starts (and answers `/health` and 503s) while PostgreSQL is still down.
pub fn pool(database_url: &str, max_size: usize, limits: Limits) -> anyhow::Result<PgPool> {
    let mut config = ManagerConfig::default();
    // No test query on checkout: it would add a round trip to every request, and most writes
    // are one statement. A connection PostgreSQL closed (a restart) is known as closed by the
    // time it is checked out again, and `Fast` drops it then.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| Box::pin(connect(url, limits)));
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    Ok(Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(limits.connect))
        .create_timeout(Some(limits.connect))
        .recycle_timeout(Some(limits.connect))
        .build()?)
}

/// Key of the session-level advisory lock migrations run under ("migra").
const MIGRATION_LOCK: i64 = 0x006d_6967_7261;

/// Applies pending migrations on a connection of its own. Retries while PostgreSQL is
/// unreachable so that the service and its database can start in any order; gives up after
/// `attempts`.
///
/// Replicas starting together on an empty database would each create the migrations table and
/// apply the same migration, and all but one fail. They take turns on a session-level advisory
/// lock instead: one migrates, the others wait for it and then find nothing pending. The lock is
/// held across the migrations' own transactions and released when the connection closes, also
/// if migrating fails. The connection has the `limits` but for the statement and lock
/// timeouts: a migration may rewrite a table, and the others wait for it as long as it takes.
pub async fn migrate(database_url: &str, attempts: u32, limits: Limits) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempt = 0;
    let mut conn = loop {
        attempt += 1;
        match connect(database_url, limits).await {
            Ok(conn) => break conn,
            Err(err) if attempt < attempts => {
                tracing::warn!(error = %err, attempt, "PostgreSQL not reachable yet, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(err) => return Err(anyhow::anyhow!("PostgreSQL not reachable: {err}")),
        }
    };
    conn.batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .map_err(|e| anyhow::anyhow!("cannot set up the migration session: {e}"))?;
    // Tried, not waited for: a session blocked in `pg_advisory_lock` is a transaction in
    // progress, and a migration that builds an index CONCURRENTLY waits for every transaction
    // in progress: the replicas waiting for the lock would deadlock with the one holding it.
    let waiting_since = std::time::Instant::now();
    let mut said = false;
    loop {
        let got: crate::event_log::Locked = prepared(
            "SELECT pg_try_advisory_lock($1) AS locked",
            (bind::<BigInt, _>(MIGRATION_LOCK),),
        )
        .get_result(&mut conn)
        .await
        .map_err(|e| anyhow::anyhow!("cannot take the migration lock: {e}"))?;
        if got.locked {
            break;
        }
        if !said && waiting_since.elapsed() > Duration::from_secs(5) {
            said = true;
            tracing::info!("another replica is migrating the database; waiting for it");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The harness drives the async connection from blocking code; keep it off the async
    // worker threads.
    let (applied, mut conn) = tokio::task::spawn_blocking(move || {
        let mut harness = AsyncMigrationHarness::new(conn);
        let applied = harness
            .run_pending_migrations(MIGRATIONS)
            .map(|applied| applied.len())
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"));
        (applied, harness.into_inner())
    })
    .await?;
    let applied = applied?;
    build_indexes_concurrently(&mut conn).await?;
    prepared(
        "SELECT pg_advisory_unlock($1)",
        (bind::<BigInt, _>(MIGRATION_LOCK),),
    )
    .execute(&mut conn)
    .await?;
    tracing::info!(applied, "database migrations are up to date");
    Ok(())
}

/// Indexes built `CONCURRENTLY` (writes go on meanwhile), which a migration cannot build
/// safely: one interrupted leaves an INVALID index behind, and `IF NOT EXISTS` would then take
/// it for built. Here an invalid one is dropped and built again, at every start, under the
/// migration lock.
///
/// - `idempotency_keys_todo_id_idx`: `command-service erase <id>` finds the stored answer of
///   the todo's creation through it, never reading the whole table under the todo's row lock.
const CONCURRENT_INDEXES: [(&str, &str); 1] = [(
    "idempotency_keys_todo_id_idx",
    "ON idempotency_keys ((response_body->>'id'))",
)];

async fn build_indexes_concurrently(conn: &mut AsyncPgConnection) -> anyhow::Result<()> {
    #[derive(diesel::QueryableByName)]
    struct Valid {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bool>)]
        valid: Option<bool>,
    }
    for (name, definition) in CONCURRENT_INDEXES {
        let state: Valid = diesel::sql_query(format!(
            "SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('{name}')) \
             AS valid"
        ))
        .get_result(conn)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read index {name}: {e}"))?;
        match state.valid {
            Some(true) => continue,
            Some(false) => {
                tracing::warn!(
                    index = name,
                    "an interrupted build left the index invalid; building it again"
                );
                conn.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot drop invalid index {name}: {e}"))?;
            }
            None => {}
        }
        conn.batch_execute(&format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {definition}"
        ))
        .await
        .map_err(|e| anyhow::anyhow!("cannot build index {name}: {e}"))?;
        tracing::info!(index = name, "index built");
    }
    Ok(())
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
                // `lock_timeout` and `statement_timeout` (SQLSTATE 55P03, 57014): the store
                // could not serve the request in time, and it changed nothing.
                || message.contains("due to lock timeout")
                || message.contains("due to statement timeout")
                || message.contains("shutting down")
                || message.contains("starting up")
                || message.contains("connection")
        }
        _ => false,
    }
}

/// A fixed SQL text with `$1`, `$2`, … placeholders and its values, which diesel-async prepares
/// once per connection and then reuses.
///
/// diesel's `sql_query` is never cached: every run would prepare its statement again (an extra
/// round trip, and a parse and plan in PostgreSQL). The write path is one statement per write,
/// so that would double its round trips. A placeholder may appear more than once. Every `$` of
/// the text must start a placeholder (`$1` and up): the text may hold no `$` in a string
/// literal or a dollar-quoted string.
pub struct Prepared<B> {
    sql: &'static str,
    binds: B,
}

/// One value of a [`Prepared`] statement, with its SQL type.
pub struct Bind<ST, V> {
    value: V,
    _sql_type: std::marker::PhantomData<ST>,
}

pub fn bind<ST, V>(value: V) -> Bind<ST, V> {
    Bind {
        value,
        _sql_type: std::marker::PhantomData,
    }
}

/// `sql` with the values of its placeholders, `$1` being `binds.0`.
pub fn prepared<B: Binds>(sql: &'static str, binds: B) -> Prepared<B> {
    Prepared { sql, binds }
}

/// A tuple of [`Bind`]s.
pub trait Binds {
    /// Pushes the value of placeholder `index` (0-based).
    fn push<'b>(
        &'b self,
        index: usize,
        out: &mut diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()>;
}

macro_rules! binds {
    ($($i:tt $V:ident $ST:ident),+) => {
        impl<$($ST, $V),+> Binds for ($(Bind<$ST, $V>,)+)
        where
            $(diesel::pg::Pg: diesel::sql_types::HasSqlType<$ST>,
              $V: diesel::serialize::ToSql<$ST, diesel::pg::Pg>,)+
        {
            fn push<'b>(
                &'b self,
                index: usize,
                out: &mut diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
            ) -> diesel::QueryResult<()> {
                match index {
                    $($i => out.push_bind_param::<$ST, $V>(&self.$i.value),)+
                    _ => Err(diesel::result::Error::QueryBuilderError(
                        format!("no value for placeholder ${}", index + 1).into(),
                    )),
                }
            }
        }
    };
}

impl Binds for () {
    fn push<'b>(
        &'b self,
        index: usize,
        _out: &mut diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        Err(diesel::result::Error::QueryBuilderError(
            format!("no value for placeholder ${}", index + 1).into(),
        ))
    }
}

binds!(0 V0 S0);
binds!(0 V0 S0, 1 V1 S1);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3, 4 V4 S4);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3, 4 V4 S4, 5 V5 S5);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3, 4 V4 S4, 5 V5 S5, 6 V6 S6);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3, 4 V4 S4, 5 V5 S5, 6 V6 S6, 7 V7 S7);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3, 4 V4 S4, 5 V5 S5, 6 V6 S6, 7 V7 S7, 8 V8 S8);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3, 4 V4 S4, 5 V5 S5, 6 V6 S6, 7 V7 S7, 8 V8 S8, 9 V9 S9);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3, 4 V4 S4, 5 V5 S5, 6 V6 S6, 7 V7 S7, 8 V8 S8, 9 V9 S9, 10 V10 S10);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3, 4 V4 S4, 5 V5 S5, 6 V6 S6, 7 V7 S7, 8 V8 S8, 9 V9 S9, 10 V10 S10, 11 V11 S11);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3, 4 V4 S4, 5 V5 S5, 6 V6 S6, 7 V7 S7, 8 V8 S8, 9 V9 S9, 10 V10 S10, 11 V11 S11, 12 V12 S12);
binds!(0 V0 S0, 1 V1 S1, 2 V2 S2, 3 V3 S3, 4 V4 S4, 5 V5 S5, 6 V6 S6, 7 V7 S7, 8 V8 S8, 9 V9 S9, 10 V10 S10, 11 V11 S11, 12 V12 S12, 13 V13 S13);

impl<B: Binds> diesel::query_builder::QueryFragment<diesel::pg::Pg> for Prepared<B> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        let mut rest = self.sql;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let digits = rest[at + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len() - at - 1, |n| n);
            let number: usize = rest[at + 1..at + 1 + digits].parse().map_err(|_| {
                diesel::result::Error::QueryBuilderError(
                    format!("`$` without a placeholder number in: {}", self.sql).into(),
                )
            })?;
            let index = number.checked_sub(1).ok_or_else(|| {
                diesel::result::Error::QueryBuilderError(
                    format!("placeholders start at $1, not $0, in: {}", self.sql).into(),
                )
            })?;
            self.binds.push(index, &mut out)?;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl<B> diesel::query_builder::QueryId for Prepared<B> {
    type QueryId = ();
    // Cached by its SQL text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> diesel::query_builder::Query for Prepared<B> {
    type SqlType = diesel::sql_types::Untyped;
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    #[test]
    fn errors_of_a_store_that_cannot_serve_now_are_unavailable() {
        let db = |message: &str| {
            Error::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_string()))
        };
        for message in [
            "canceling statement due to lock timeout",
            "canceling statement due to statement timeout",
            "terminating connection due to idle-in-transaction timeout",
            "terminating connection due to administrator command",
            "the database system is starting up",
        ] {
            assert!(is_unavailable(&db(message)), "{message}");
        }
        for message in [
            "syntax error at or near \"SELEC\"",
            "column \"nope\" does not exist",
        ] {
            assert!(!is_unavailable(&db(message)), "{message}");
        }
        assert!(!is_unavailable(&Error::NotFound));
    }

    #[test]
    fn the_limits_are_session_options_in_milliseconds() {
        let limits = Limits {
            connect: Duration::from_secs(3),
            statement: Duration::from_secs(5),
            lock: Duration::from_millis(2500),
            idle_in_transaction: Duration::from_secs(10),
        };
        assert_eq!(
            limits.options(),
            "-c statement_timeout=5000 -c lock_timeout=2500 \
             -c idle_in_transaction_session_timeout=10000"
        );
    }
}
