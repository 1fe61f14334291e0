//! Configuration: environment variables read by envy into one typed struct.
//!
//! Every field has a default that works against the local services `scripts/dev-services.sh`
//! starts, so `cargo run -p query-service` needs no variable. A variable that is set but does
//! not parse stops the service at start with the variable's name.

use events::service::redact;
pub use events::service::telemetry::LogFormat;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Deserialize, Serialize)]
pub struct Settings {
    /// `MONGODB_URI`: the read model's MongoDB (or wire-compatible server).
    #[serde(default = "default_mongodb_uri")]
    pub mongodb_uri: String,
    /// `MONGODB_DB`: database holding the `todos` collection.
    #[serde(default = "default_mongodb_db")]
    pub mongodb_db: String,
    /// `AMQP_URL`: RabbitMQ to consume from.
    #[serde(default = "default_amqp_url")]
    pub amqp_url: String,
    /// `AMQP_EXCHANGE`: topic exchange the command side publishes to.
    #[serde(default = "default_exchange")]
    pub amqp_exchange: String,
    /// `AMQP_QUEUE`: this service's quorum queue; its dead-letter queue is `<AMQP_QUEUE>.dlq`.
    #[serde(default = "default_queue")]
    pub amqp_queue: String,
    /// `AMQP_PREFETCH`: unacknowledged deliveries the consumer holds at once.
    #[serde(default = "default_prefetch")]
    pub amqp_prefetch: u16,
    /// `AMQP_MAX_DELIVERIES`: a message delivered this many times without being settled (a
    /// consumer that fails on it every time) is dead-lettered with that reason; 0: never.
    #[serde(default = "default_max_deliveries")]
    pub amqp_max_deliveries: u32,
    /// `OPERATOR_TOKENS`: comma-separated bearer tokens for the dead-letter routes
    /// (`/dead-letters`); empty: those routes answer 403.
    #[serde(default)]
    pub operator_tokens: String,
    /// `OPERATOR_AMQP_URL`: the broker user `POST /dead-letters/redrive` publishes into the
    /// live queue with (query-service's own may not); empty: `AMQP_URL`.
    #[serde(default)]
    pub operator_amqp_url: String,
    /// `RETRY_MAX_BACKOFF_MS`: ceiling of the backoff between retries of a store or broker,
    /// and between retries of an event the store refused.
    #[serde(default = "default_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// `MIN_VERSION_WAIT_MS`: how long `GET /todos/{id}?min_version=N` waits for version N.
    #[serde(default = "default_min_version_wait_ms")]
    pub min_version_wait_ms: u64,
    /// `MIN_VERSION_MAX_WAITERS`: how many `?min_version=` requests may wait at once; one more
    /// is answered 503 `read-model-behind` at once.
    #[serde(default = "default_min_version_max_waiters")]
    pub min_version_max_waiters: usize,
    /// `STREAM_MAX_SUBSCRIBERS`: clients `GET /todos/stream` serves at once; one more is
    /// answered 503.
    #[serde(default = "default_stream_max_subscribers")]
    pub stream_max_subscribers: usize,
    /// `STREAM_MAX_PER_PEER`: stream clients one IP address may have at once; one more is
    /// answered 429.
    #[serde(default = "default_stream_max_per_peer")]
    pub stream_max_per_peer: usize,
    /// `STREAM_BUFFER_BYTES`: bytes of changes queued for a stream client that is behind; one
    /// further behind is sent a final `dropped` event and disconnected.
    #[serde(default = "default_stream_buffer_bytes")]
    pub stream_buffer_bytes: usize,
    /// `STREAM_REPLAY_MAX_BYTES`: what a reconnecting client's replay (`Last-Event-ID`) may send
    /// before it is told to reload the list instead.
    #[serde(default = "default_stream_replay_max_bytes")]
    pub stream_replay_max_bytes: usize,
    /// `STREAM_REPLAY_MAX_MS`: how long a replay may take before the client is told to reload
    /// the list instead.
    #[serde(default = "default_stream_replay_max_ms")]
    pub stream_replay_max_ms: u64,
    /// `HTTP_ADDR`: address the HTTP API listens on.
    #[serde(default = "default_http_addr")]
    pub http_addr: String,
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
    /// `COMMAND_SERVICE_URL`: the origin of the command-service the live page at `GET /`
    /// writes to (and may connect to, in its Content-Security-Policy).
    #[serde(default = "default_command_service_url")]
    pub command_service_url: String,
    /// `FEED_TOKEN`: the bearer token `replay` and `verify` send to command-service's
    /// `GET /events` (one of its `FEED_TOKENS`, or of its `WRITE_TOKENS` while it has no feed
    /// tokens). Empty: none sent.
    #[serde(default)]
    pub feed_token: String,
    /// `FEED_URL`: command-service's base URL as this service reaches it, for the lag by
    /// position (`crate::lag`): the head of the log from its `GET /events`. Empty: off.
    #[serde(default = "default_feed_url")]
    pub feed_url: String,
    /// `LAG_EVERY_MS`: how often the lag by position is read.
    #[serde(default = "default_lag_every_ms")]
    pub lag_every_ms: u64,
    /// `STUCK_AFTER_MS`: events waiting and nothing applied for this long is `stuck`.
    #[serde(default = "default_stuck_after_ms")]
    pub stuck_after_ms: u64,
    /// `LOG_FORMAT`: `pretty` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `RUST_LOG`: tracing filter.
    #[serde(default = "default_rust_log")]
    pub rust_log: String,
}

fn default_mongodb_uri() -> String {
    "mongodb://127.0.0.1:27017/?maxIdleTimeMS=60000".into()
}
fn default_mongodb_db() -> String {
    "todo_read".into()
}
fn default_amqp_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}
fn default_exchange() -> String {
    events::EXCHANGE.into()
}
fn default_queue() -> String {
    events::QUERY_QUEUE.into()
}
fn default_prefetch() -> u16 {
    100
}
fn default_max_deliveries() -> u32 {
    20
}
fn default_max_backoff_ms() -> u64 {
    5_000
}
fn default_min_version_wait_ms() -> u64 {
    5_000
}
fn default_min_version_max_waiters() -> usize {
    100
}
fn default_stream_max_subscribers() -> usize {
    100
}
fn default_stream_max_per_peer() -> usize {
    16
}
fn default_stream_buffer_bytes() -> usize {
    1 << 20
}
fn default_stream_replay_max_bytes() -> usize {
    4 << 20
}
fn default_stream_replay_max_ms() -> u64 {
    10_000
}
fn default_http_addr() -> String {
    "0.0.0.0:5002".into()
}
fn default_command_service_url() -> String {
    "http://127.0.0.1:5001".into()
}
fn default_feed_url() -> String {
    "http://127.0.0.1:5001".into()
}
fn default_lag_every_ms() -> u64 {
    5_000
}
fn default_stuck_after_ms() -> u64 {
    60_000
}
fn default_rust_log() -> String {
    "info,query_service=info".into()
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

    /// `FEED_TOKEN`, if set.
    pub fn feed_token(&self) -> Option<&str> {
        Some(self.feed_token.as_str()).filter(|t| !t.is_empty())
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, envy::Error> {
        Self::from_vars(std::env::vars())
    }

    /// Every environment variable the service reads, derived from the struct's fields, so the
    /// list cannot drift from what is read.
    pub fn variables() -> Vec<String> {
        events::service::variables::<Self>()
    }

    /// Reads the settings from the given variables (the tests pass their own). A value that
    /// parses but cannot be used (a `COMMAND_SERVICE_URL` that is no origin) is an error too,
    /// naming the variable.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, envy::Error> {
        let settings: Self = envy::from_iter(vars)?;
        if let Err(why) = events::service::check_origin(&settings.command_service_url) {
            return Err(envy::Error::Custom(format!(
                "COMMAND_SERVICE_URL: {:?} is not an origin ({why}); write scheme://host[:port] \
                 with http or https",
                settings.command_service_url
            )));
        }
        events::service::tokens::check_list("OPERATOR_TOKENS", &settings.operator_tokens)
            .map_err(envy::Error::Custom)?;
        Ok(settings)
    }
}

/// Secrets never reach the log: URLs are shown without their password.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("mongodb_uri", &redact(&self.mongodb_uri))
            .field("mongodb_db", &self.mongodb_db)
            .field("amqp_url", &redact(&self.amqp_url))
            .field("amqp_exchange", &self.amqp_exchange)
            .field("amqp_queue", &self.amqp_queue)
            .field("http_addr", &self.http_addr)
            .field("command_service_url", &self.command_service_url)
            .field("log_format", &self.log_format)
            .field(
                "feed_token",
                &if self.feed_token().is_some() {
                    "set"
                } else {
                    "unset"
                },
            )
            .field(
                "operator_tokens",
                &if self.operator_tokens.trim().is_empty() {
                    "unset"
                } else {
                    "set"
                },
            )
            .field("operator_amqp_url", &redact(&self.operator_amqp_url))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_the_local_services() {
        let s = Settings::from_vars(Vec::new()).expect("defaults");
        assert_eq!(s.http_addr, "0.0.0.0:5002");
        assert_eq!(
            s.mongodb_uri,
            "mongodb://127.0.0.1:27017/?maxIdleTimeMS=60000"
        );
        assert_eq!(s.amqp_queue, "query-service.todo-events");
        assert_eq!(s.amqp_exchange, "todo.events");
    }

    #[test]
    fn an_unparsable_variable_is_named_in_the_error() {
        let err = Settings::from_vars([("AMQP_PREFETCH".to_string(), "lots".to_string())])
            .expect_err("must fail");
        assert!(err.to_string().contains("AMQP_PREFETCH"), "{err}");
    }

    /// query-service/README.md's table under "## Configuration" against this struct, both ways:
    /// every variable listed is read, every variable read is listed, with the code's default.
    #[test]
    fn the_readme_table_lists_every_variable_read_with_its_default_and_nothing_else() {
        let mismatches = events::service::configuration_mismatches::<Settings>(
            env!("CARGO_MANIFEST_DIR"),
            "query-service",
        );
        assert!(
            mismatches.is_empty(),
            "query-service/README.md's configuration table vs Settings:\n{}",
            mismatches.join("\n")
        );
    }

    #[test]
    fn a_command_service_url_that_is_no_origin_is_a_configuration_error_naming_it() {
        let refused = [
            ("not a url", "words"),
            ("http://x/path", "a path"),
            ("ftp://x", "another scheme"),
            ("http://x; script-src *", "a policy's separator"),
            ("javascript:alert(1)", "a script URL"),
        ];
        for (value, why) in refused {
            let err = Settings::from_vars([("COMMAND_SERVICE_URL".to_string(), value.to_string())])
                .err()
                .unwrap_or_else(|| panic!("{why}: {value:?} accepted"));
            assert!(
                err.to_string().contains("COMMAND_SERVICE_URL"),
                "{why}: {err}"
            );
        }
        for value in ["http://127.0.0.1:5001", "https://todo.example.com"] {
            let s = Settings::from_vars([("COMMAND_SERVICE_URL".to_string(), value.to_string())])
                .unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(s.command_service_url, value);
        }
    }

    #[test]
    fn debug_output_hides_passwords() {
        let s = Settings::from_vars([(
            "MONGODB_URI".to_string(),
            "mongodb://app:s3cret@db:27017/".to_string(),
        )])
        .expect("settings");
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains(":guest@"), "{shown}");
    }
}
