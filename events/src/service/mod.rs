//! What both services run on besides the contract (feature `service`): graceful shutdown,
//! logging, settings helpers, the HTTP plumbing every route goes through (request ids,
//! metrics, the route table, problem+json answers), and the healthcheck probe their
//! containers call.
//!
//! It lives here because the workspace has one shared crate (see DESIGN.md); the feature keeps
//! the contract itself free of warp, tokio and tracing for anyone who only needs the types.

pub mod http;
pub mod metrics;
pub mod problem;
pub mod server;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;

use anyhow::Context;
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

/// Every environment variable a settings struct read by envy reads, derived from its fields
/// (envy maps `FIELD_NAME` to `field_name`), so the list cannot drift from what is read. The
/// struct must deserialize from no variables at all (every field has a default).
pub fn variables<T: Serialize + DeserializeOwned>() -> Vec<String> {
    let defaults = envy::from_iter::<_, T>(Vec::<(String, String)>::new()).ok();
    let value = defaults.and_then(|d| serde_json::to_value(d).ok());
    let mut names: Vec<String> = value
        .as_ref()
        .and_then(|v| v.as_object())
        .map(|o| o.keys().map(|k| k.to_uppercase()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Replaces the password of a `scheme://user:password@host` URL with `***`, so settings can
/// be logged.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `<service> healthcheck`: asks the running service's `/health` on `HTTP_ADDR`'s port over
/// loopback; for container healthchecks, so the image needs no curl.
pub async fn healthcheck(http_addr: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = http_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .with_context(|| format!("HTTP_ADDR={http_addr} has no port"))?;
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(3), check)
        .await
        .context("health check timed out")??;
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        anyhow::bail!(
            "unhealthy: {}",
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        let cases = [
            (
                "postgres://app:s3cret@db:5432/todos",
                "postgres://app:***@db:5432/todos",
            ),
            (
                "amqp://guest@rabbit:5672/%2f",
                "amqp://guest@rabbit:5672/%2f",
            ),
            ("mongodb://127.0.0.1:27017/", "mongodb://127.0.0.1:27017/"),
            ("not a url", "not a url"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[derive(Serialize, serde::Deserialize)]
    struct Sample {
        #[serde(default)]
        http_addr: String,
        #[serde(default)]
        log_format: telemetry::LogFormat,
    }

    #[test]
    fn variables_are_the_upper_case_field_names() {
        assert_eq!(variables::<Sample>(), ["HTTP_ADDR", "LOG_FORMAT"]);
    }

    #[test]
    fn log_format_is_read_in_any_case_and_a_wrong_one_is_named() {
        let read = |value: &str| {
            envy::from_iter::<_, Sample>([("LOG_FORMAT".to_string(), value.to_string())])
                .map(|s| s.log_format)
        };
        assert_eq!(read("JSON").expect("JSON"), telemetry::LogFormat::Json);
        assert_eq!(
            read("pretty").expect("pretty"),
            telemetry::LogFormat::Pretty
        );
        let err = read("xml").expect_err("xml must fail");
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
    }
}
