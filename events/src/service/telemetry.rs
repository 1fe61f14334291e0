//! Logging: `tracing` to stdout, human-readable or one JSON object per line (`LOG_FORMAT`).

use serde::{Deserialize, Serialize};
use tracing_subscriber::{fmt, EnvFilter};

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

/// Installs the global subscriber. Safe to call more than once (later calls do nothing), so
/// tests that build several applications in one process can all call it.
pub fn init(format: LogFormat, filter: &str) {
    init_with_writer(format, filter, std::io::stdout);
}

/// Like [`init`], writing to `writer` (tests capture the log this way).
pub fn init_with_writer<W>(format: LogFormat, filter: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_writer(writer)
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
