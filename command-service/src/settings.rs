//! Configuration: environment variables read by envy into one typed struct.
//!
//! Every field has a default that works against the local services `scripts/dev-services.sh`
//! starts, so `cargo run -p command-service` needs no variable. A variable that is set but does
//! not parse stops the service at start with the variable's name.

use events::service::redact;
pub use events::service::telemetry::LogFormat;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

#[derive(Clone, Deserialize, Serialize)]
pub struct Settings {
    /// `DATABASE_URL`: PostgreSQL holding todos, the event log (outbox) and idempotency keys.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// `DATABASE_POOL_SIZE`: connections kept by the pool.
    #[serde(default = "default_pool_size")]
    pub database_pool_size: usize,
    /// `DATABASE_TIMEOUT_MS`: how long a request waits for a connection before answering 503.
    #[serde(default = "default_database_timeout_ms")]
    pub database_timeout_ms: u64,
    /// `DATABASE_STATEMENT_TIMEOUT_MS`: PostgreSQL's `statement_timeout` on every connection.
    #[serde(default = "default_database_statement_timeout_ms")]
    pub database_statement_timeout_ms: u64,
    /// `DATABASE_LOCK_TIMEOUT_MS`: PostgreSQL's `lock_timeout` on every connection: how long a
    /// write waits for a todo's row another session holds before answering 503.
    #[serde(default = "default_database_lock_timeout_ms")]
    pub database_lock_timeout_ms: u64,
    /// `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS`: PostgreSQL's
    /// `idle_in_transaction_session_timeout` on every connection.
    #[serde(default = "default_database_idle_in_transaction_timeout_ms")]
    pub database_idle_in_transaction_timeout_ms: u64,
    /// `AMQP_URL`: RabbitMQ the relay publishes to.
    #[serde(default = "default_amqp_url")]
    pub amqp_url: String,
    /// `AMQP_EXCHANGE`: topic exchange events are published to.
    #[serde(default = "default_exchange")]
    pub amqp_exchange: String,
    /// `AMQP_TIMEOUT_MS`: deadline of each call the relay makes to RabbitMQ.
    #[serde(default = "default_amqp_timeout_ms")]
    pub amqp_timeout_ms: u64,
    /// `HTTP_ADDR`: address the HTTP API listens on.
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
    /// `MAX_BODY_BYTES`: request bodies over this size are answered 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// `RELAY_BATCH_SIZE`: events the relay publishes per round trip.
    #[serde(default = "default_relay_batch_size")]
    pub relay_batch_size: i64,
    /// `RELAY_POLL_MS`: fallback poll period of the relay when no notification arrives.
    #[serde(default = "default_relay_poll_ms")]
    pub relay_poll_ms: u64,
    /// `RELAY_MAX_BACKOFF_MS`: ceiling of the relay's retry backoff while RabbitMQ is away.
    #[serde(default = "default_relay_max_backoff_ms")]
    pub relay_max_backoff_ms: u64,
    /// `IDEMPOTENCY_TTL_HOURS`: how long a stored `Idempotency-Key` response is replayed.
    #[serde(default = "default_idempotency_ttl_hours")]
    pub idempotency_ttl_hours: i64,
    /// `CORS_ORIGINS`: comma-separated origins browsers may call the API from; empty: none.
    /// The default lets query-service's live page on this machine write.
    #[serde(default = "default_cors_origins")]
    pub cors_origins: String,
    /// `WRITE_TOKENS`: comma-separated bearer tokens, each `token` or `name:token` (the name
    /// becomes the `actor` of the events it writes); when set, every write and `GET /events`
    /// need `Authorization: Bearer <one of them>`. Empty: open (the local demo).
    #[serde(default)]
    pub write_tokens: String,
    /// `OPERATOR_TOKENS`: comma-separated bearer tokens (`name:token` too) that may erase a
    /// todo over HTTP (`POST /todos/{id}/erase`); empty: that route is closed.
    #[serde(default)]
    pub operator_tokens: String,
    /// `FEED_TOKENS`: comma-separated bearer tokens that may read `GET /events` and nothing
    /// else; when set, the feed takes these only. Empty: the feed follows `WRITE_TOKENS`.
    #[serde(default)]
    pub feed_tokens: String,
    /// `HTTP_MAX_CONNECTIONS`: connections held at once, in any phase; at the cap a new one
    /// takes the oldest idle one's place, or is answered 503 when every one is busy.
    #[serde(default = "events::service::server::default_max_connections")]
    pub http_max_connections: usize,
    /// `HTTP_MAX_CONNECTIONS_PER_PEER`: connections one IP address may hold; one more is
    /// answered 503. Behind a proxy, set it to `HTTP_MAX_CONNECTIONS`.
    #[serde(default = "events::service::server::default_max_connections_per_peer")]
    pub http_max_connections_per_peer: usize,
    /// `HTTP_HEADER_READ_TIMEOUT_MS`: a client must send a request's head within this of
    /// connecting (or of its previous answer, on a kept-alive connection), or its connection
    /// is closed.
    #[serde(default = "events::service::server::default_header_read_timeout_ms")]
    pub http_header_read_timeout_ms: u64,
    /// `HTTP_BODY_READ_TIMEOUT_MS`: a request's body must arrive whole within this of its head
    /// (408 past it).
    #[serde(default = "events::service::server::default_body_read_timeout_ms")]
    pub http_body_read_timeout_ms: u64,
    /// `HTTP_WRITE_TIMEOUT_MS`: a write to a client that makes no progress for this long (the
    /// client reads nothing) closes the connection.
    #[serde(default = "events::service::server::default_write_timeout_ms")]
    pub http_write_timeout_ms: u64,
    /// `LOG_FORMAT`: `pretty` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `RUST_LOG`: tracing filter.
    #[serde(default = "default_rust_log")]
    pub rust_log: String,
}

fn default_database_url() -> String {
    "postgres://todo:todo@127.0.0.1:5432/todos".into()
}
fn default_pool_size() -> usize {
    10
}
fn default_database_timeout_ms() -> u64 {
    3_000
}
fn default_database_statement_timeout_ms() -> u64 {
    5_000
}
fn default_database_lock_timeout_ms() -> u64 {
    2_000
}
fn default_database_idle_in_transaction_timeout_ms() -> u64 {
    10_000
}
fn default_amqp_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}
fn default_exchange() -> String {
    events::EXCHANGE.into()
}
fn default_amqp_timeout_ms() -> u64 {
    5_000
}
fn default_cors_origins() -> String {
    "http://localhost:5002,http://127.0.0.1:5002".into()
}
fn default_http_addr() -> String {
    "0.0.0.0:5001".into()
}
fn default_max_body_bytes() -> u64 {
    64 * 1024
}
fn default_relay_batch_size() -> i64 {
    100
}
fn default_relay_poll_ms() -> u64 {
    1_000
}
fn default_relay_max_backoff_ms() -> u64 {
    10_000
}
fn default_idempotency_ttl_hours() -> i64 {
    24
}
fn default_rust_log() -> String {
    "info,command_service=info".into()
}

impl Settings {
    /// The HTTP server's limits (see `events::service::server::Limits`).
    pub fn server_limits(&self) -> events::service::server::Limits {
        events::service::server::Limits::new(events::service::server::HttpSettings {
            max_connections: self.http_max_connections,
            max_connections_per_peer: self.http_max_connections_per_peer,
            header_read_timeout_ms: self.http_header_read_timeout_ms,
            body_read_timeout_ms: self.http_body_read_timeout_ms,
            write_timeout_ms: self.http_write_timeout_ms,
        })
    }

    /// `CORS_ORIGINS` as a list.
    pub fn cors_origins(&self) -> Vec<String> {
        self.cors_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect()
    }

    /// Who may write and read the feed (see [`crate::http::auth::Tokens`]).
    pub fn tokens(&self) -> crate::http::auth::Tokens {
        crate::http::auth::Tokens::from_lists(&self.write_tokens, &self.feed_tokens)
            .with_operators(&self.operator_tokens)
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, envy::Error> {
        Self::from_vars(std::env::vars())
    }

    /// How long PostgreSQL may keep the service waiting (see [`crate::db::Limits`]).
    pub fn database_limits(&self) -> crate::db::Limits {
        crate::db::Limits {
            connect: Duration::from_millis(self.database_timeout_ms),
            statement: Duration::from_millis(self.database_statement_timeout_ms),
            lock: Duration::from_millis(self.database_lock_timeout_ms),
            idle_in_transaction: Duration::from_millis(
                self.database_idle_in_transaction_timeout_ms,
            ),
        }
    }

    /// Every environment variable the service reads, derived from the struct's fields, so the
    /// list cannot drift from what is read.
    pub fn variables() -> Vec<String> {
        events::service::variables::<Self>()
    }

    /// Reads the settings from the given variables (the tests pass their own). A value that
    /// parses but cannot be used (a `CORS_ORIGINS` entry that is no origin) is an error too,
    /// naming the variable and the entry.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, envy::Error> {
        let settings: Self = envy::from_iter(vars)?;
        for (name, list) in [
            ("WRITE_TOKENS", &settings.write_tokens),
            ("FEED_TOKENS", &settings.feed_tokens),
            ("OPERATOR_TOKENS", &settings.operator_tokens),
        ] {
            events::service::tokens::check_list(name, list).map_err(envy::Error::Custom)?;
        }
        for entry in settings.cors_origins() {
            if let Err(why) = events::service::check_origin(&entry) {
                return Err(envy::Error::Custom(format!(
                    "CORS_ORIGINS: {entry:?} is not an origin ({why}); write \
                     scheme://host[:port] with http or https, comma-separated"
                )));
            }
        }
        Ok(settings)
    }
}

/// Secrets never reach the log: URLs are shown without their password.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &redact(&self.database_url))
            .field("database_pool_size", &self.database_pool_size)
            .field("database_limits", &self.database_limits())
            .field("amqp_url", &redact(&self.amqp_url))
            .field("amqp_exchange", &self.amqp_exchange)
            .field("http_addr", &self.http_addr)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("log_format", &self.log_format)
            .field("tokens", &self.tokens().describe())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_the_local_services() {
        let s = Settings::from_vars(Vec::new()).expect("defaults");
        assert_eq!(s.http_addr, "0.0.0.0:5001");
        assert_eq!(s.database_url, "postgres://todo:todo@127.0.0.1:5432/todos");
        assert_eq!(s.amqp_exchange, "todo.events");
        assert_eq!(s.log_format, LogFormat::Pretty);
    }

    #[test]
    fn an_unparsable_variable_is_named_in_the_error() {
        let err = Settings::from_vars([("DATABASE_POOL_SIZE".to_string(), "many".to_string())])
            .expect_err("must fail");
        assert!(err.to_string().contains("DATABASE_POOL_SIZE"), "{err}");
        let err = Settings::from_vars([("LOG_FORMAT".to_string(), "xml".to_string())])
            .expect_err("must fail");
        assert!(err.to_string().contains("xml"), "{err}");
    }

    /// command-service/README.md's table under "## Configuration" against this struct, both ways:
    /// every variable listed is read, every variable read is listed, with the code's default.
    #[test]
    fn the_readme_table_lists_every_variable_read_with_its_default_and_nothing_else() {
        let mismatches = events::service::configuration_mismatches::<Settings>(
            env!("CARGO_MANIFEST_DIR"),
            "command-service",
        );
        assert!(
            mismatches.is_empty(),
            "command-service/README.md's configuration table vs Settings:\n{}",
            mismatches.join("\n")
        );
    }

    #[test]
    fn a_cors_origins_entry_that_is_no_origin_is_a_configuration_error_naming_it() {
        let refused = [
            ("not a url", "words"),
            ("http://x/path", "a path"),
            ("http://x/", "a trailing slash"),
            ("ftp://x", "another scheme"),
            ("localhost:5002", "no scheme"),
            ("http://", "no host"),
            ("http://user@x", "a user"),
            ("http://x?q=1", "a query"),
            ("http://x:0", "port 0"),
        ];
        for (entry, why) in refused {
            let list = format!("http://localhost:5002, {entry}");
            let err = Settings::from_vars([("CORS_ORIGINS".to_string(), list)])
                .err()
                .unwrap_or_else(|| panic!("{why}: {entry:?} accepted"));
            let message = err.to_string();
            assert!(
                message.contains("CORS_ORIGINS") && message.contains(entry),
                "{why}: {message}"
            );
        }
        for list in [
            "",
            "http://localhost:5002,http://127.0.0.1:5002",
            "https://todo.example.com, http://[::1]:8080",
        ] {
            let settings = Settings::from_vars([("CORS_ORIGINS".to_string(), list.to_string())])
                .unwrap_or_else(|e| panic!("{list:?}: {e}"));
            // What warp's CORS filter takes without panicking.
            let _ = warp::cors().allow_origins(settings.cors_origins().iter().map(String::as_str));
        }
    }

    #[test]
    fn debug_output_hides_passwords() {
        let s = Settings::from_vars(Vec::new()).expect("defaults");
        let shown = format!("{s:?}");
        assert!(!shown.contains(":postgres@"), "{shown}");
        assert!(!shown.contains(":guest@"), "{shown}");
        assert_eq!(
            redact("amqp://u:secret@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
