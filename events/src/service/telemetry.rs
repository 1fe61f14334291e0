//! Logging: `tracing` to stdout, human-readable or one JSON object per line (`LOG_FORMAT`),
//! each line with the spans it is in (a request's carries its `trace_id`); and traces, every
//! span an OpenTelemetry one ([`super::trace`]).

use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// `LOG_FORMAT`: `pretty` (default) or `json`.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// Read by hand so that a wrong value names the variable (envy does not for enums), and so
/// that `JSON` works as well as `json`.
impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.trim().to_ascii_lowercase().as_str() {
            "pretty" | "" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            _ => Err(serde::de::Error::custom(format!(
                "LOG_FORMAT must be `pretty` or `json`, not {value:?}"
            ))),
        }
    }
}

/// Installs the global subscriber for `service` (the name its traces carry). Safe to call more
/// than once (later calls do nothing), so tests that build several applications in one process
/// can all call it.
pub fn init(service: &'static str, format: LogFormat, filter: &str) {
    init_with_writer(service, format, filter, std::io::stdout);
}

/// Like [`init`], writing to `writer` (tests capture the log this way).
pub fn init_with_writer<W>(service: &'static str, format: LogFormat, filter: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let mut filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // warp's trace filter (which opens the requests' server spans) would log every 4xx.
    if let Ok(quiet) = "warp::filters::trace=error".parse() {
        filter = filter.add_directive(quiet);
    }
    let lines = fmt::layer()
        .with_writer(writer)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let lines = match format {
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
        LogFormat::Pretty => lines.compact().boxed(),
    };
    // Traces take the services' own spans whatever `RUST_LOG` says of the log: a quieter log
    // never drops a span from a trace.
    let traced = tracing_subscriber::filter::Targets::new()
        .with_target("events", tracing::Level::INFO)
        .with_target("command_service", tracing::Level::INFO)
        .with_target("query_service", tracing::Level::INFO);
    let _ = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(super::trace::layer(service).with_filter(traced))
        .try_init();
}
