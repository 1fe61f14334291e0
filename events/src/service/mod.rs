//! What both services run on besides the contract (feature `service`): graceful shutdown,
//! logging, settings helpers, the HTTP plumbing every route goes through (the route table and
//! route names, request ids, metrics, problem+json answers, warp's rejections, the operator
//! routes, the server's limits), the one retry delay (`backoff`), supervised background tasks,
//! the operator routes of the OpenAPI documents and their checks (`openapi`), and the
//! healthcheck probe their containers call.
//!
//! It lives here because the workspace has one shared crate, `events` (events/README.md); the
//! feature keeps the contract itself free of warp, tokio and tracing for anyone who only needs
//! the types.

pub mod asyncapi;
pub mod backoff;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod server;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;
pub mod tokens;
pub mod trace;

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

/// The rows of `service`'s table under `## Configuration` in a README: each
/// `| `NAME` | `default` | meaning |` as (name, default), in the table's order. The table is the
/// first one after a line holding only the service's name, or, in a README with no such line
/// (a service's own), the section's first.
pub fn documented_variables(readme: &str, service: &str) -> Vec<(String, String)> {
    let section = readme
        .split_once("\n## Configuration\n")
        .map_or("", |(_, rest)| rest.split("\n## ").next().unwrap_or(""));
    let unquote = |cell: &str| cell.trim().trim_matches('`').to_string();
    let named = section.lines().any(|line| line.trim() == service);
    section
        .lines()
        .skip_while(|line| named && line.trim() != service)
        .skip(usize::from(named))
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
            let name = cells.first()?.trim();
            (name.starts_with('`') && cells.len() >= 3).then(|| (unquote(name), unquote(cells[1])))
        })
        .collect()
}

/// Holds a settings struct read by envy against the configuration table in the crate's own
/// README (`manifest_dir`/README.md), both ways, and returns every
/// mismatch:
/// - every variable the table lists is read: set to a value no number or enum takes, it either
///   fails naming the variable or reaches its field;
/// - every variable the struct reads (its fields, upper-cased) is in the table, and the
///   service's sources read no variable around the struct (`env::var`);
/// - the table's default is the code's (rendered as text), and setting a variable to its
///   documented default changes nothing.
pub fn configuration_mismatches<T: Serialize + DeserializeOwned>(
    manifest_dir: &str,
    service: &str,
) -> Vec<String> {
    let path = std::path::Path::new(manifest_dir).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap_or_default();
    let mut mismatches = check_configuration::<T>(&readme, service);
    let mut sources = vec![std::path::Path::new(manifest_dir).join("src")];
    while let Some(path) = sources.pop() {
        if path.is_dir() {
            let entries = std::fs::read_dir(&path).into_iter().flatten().flatten();
            sources.extend(entries.map(|e| e.path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("env::var(") || text.contains("env::var_os(") {
                mismatches.push(format!(
                    "{} reads a variable around the settings struct",
                    path.display()
                ));
            }
        }
    }
    mismatches
}

/// [`configuration_mismatches`] on a README's text, without the source scan.
pub fn check_configuration<T: Serialize + DeserializeOwned>(
    readme: &str,
    service: &str,
) -> Vec<String> {
    let documented = documented_variables(readme, service);
    if documented.is_empty() {
        return vec![format!("no configuration table for {service}")];
    }
    let parse = |vars: Vec<(String, String)>| {
        envy::from_iter::<_, T>(vars).map(|s| serde_json::to_value(s).unwrap_or_default())
    };
    let Ok(defaults) = parse(Vec::new()) else {
        return vec![format!(
            "{service}'s settings do not parse with no variable set"
        )];
    };
    let mut mismatches = Vec::new();
    for (name, documented_default) in &documented {
        let field = name.to_lowercase();
        let garbage = "\u{1}not-a-value".to_string();
        let read = match parse(vec![(name.clone(), garbage.clone())]) {
            Err(err) => err.to_string().contains(name.as_str()),
            Ok(value) => value[&field] == serde_json::Value::String(garbage),
        };
        if !read {
            mismatches.push(format!("{name} is in the table but not read"));
            continue;
        }
        let code_default = match &defaults[&field] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if &code_default != documented_default {
            mismatches.push(format!(
                "{name}: the table's default is `{documented_default}`, the code's `{code_default}`"
            ));
        }
        match parse(vec![(name.clone(), documented_default.clone())]) {
            Ok(value) if value == defaults => {}
            _ => mismatches.push(format!(
                "{name}={documented_default} (the table's default) is not the default"
            )),
        }
    }
    let listed: Vec<&String> = documented.iter().map(|(name, _)| name).collect();
    for name in variables::<T>() {
        if !listed.contains(&&name) {
            mismatches.push(format!("{name} is read but not in the table"));
        }
    }
    mismatches
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

/// Whether `entry` is an origin as browsers send it in `Origin`: `http` or `https`, a host, a
/// port perhaps, nothing else (no path, query, user or trailing slash). Both services check
/// the origins they are configured with here (warp's CORS filter panics on anything it
/// cannot read as one, and an origin goes verbatim into a Content-Security-Policy).
pub fn check_origin(entry: &str) -> Result<(), &'static str> {
    let uri: warp::http::Uri = entry.parse().map_err(|_| "not a URL")?;
    let scheme = match uri.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        Some(_) => return Err("the scheme must be http or https"),
        None => return Err("no scheme"),
    };
    let authority = uri.authority().ok_or("no host")?;
    if authority.as_str().contains('@') {
        return Err("an origin has no user");
    }
    if authority.host().is_empty() {
        return Err("no host");
    }
    if entry != format!("{scheme}://{authority}") {
        return Err("an origin has no path, query or trailing slash");
    }
    if authority.port_u16() == Some(0) {
        return Err("port 0");
    }
    Ok(())
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

    #[derive(Serialize, serde::Deserialize)]
    struct Limits {
        #[serde(default = "ten")]
        pool_size: u32,
        #[serde(default)]
        log_format: telemetry::LogFormat,
    }
    fn ten() -> u32 {
        10
    }

    #[test]
    fn a_configuration_table_is_held_against_the_settings_both_ways() {
        let readme = |rows: &str| {
            format!(
                "# x\n\n## Configuration\n\nother\n\n| Variable | Default | Meaning |\n|---|---|---|\n\
                 | `POOL_SIZE` | `99` | not this one |\n\nsvc\n\n| Variable | Default | Meaning |\n\
                 |---|---|---|\n{rows}\n## Tests\n\n| `LATER` | `1` | not configuration |\n"
            )
        };
        let good = readme("| `POOL_SIZE` | `10` | pool |\n| `LOG_FORMAT` | `pretty` | format |\n");
        assert_eq!(
            documented_variables(&good, "svc"),
            [
                ("POOL_SIZE".to_string(), "10".to_string()),
                ("LOG_FORMAT".to_string(), "pretty".to_string())
            ]
        );
        assert_eq!(
            check_configuration::<Limits>(&good, "svc"),
            Vec::<String>::new()
        );
        let bad = readme("| `POOL_SIZE` | `20` | pool |\n| `HTTP_ADDR` | `:80` | never read |\n");
        assert_eq!(
            check_configuration::<Limits>(&bad, "svc"),
            [
                "POOL_SIZE: the table's default is `20`, the code's `10`",
                "POOL_SIZE=20 (the table's default) is not the default",
                "HTTP_ADDR is in the table but not read",
                "LOG_FORMAT is read but not in the table",
            ]
        );
        // A service's own README names no service: its section's first table is its own.
        let own = "# svc\n\n## Configuration\n\nIntro.\n\n| Variable | Default | Meaning |\n|---|---|---|\n\
                   | `POOL_SIZE` | `10` | pool |\n| `LOG_FORMAT` | `pretty` | format |\n\n## Layout\n";
        assert_eq!(
            check_configuration::<Limits>(own, "svc"),
            Vec::<String>::new()
        );
        assert_eq!(
            check_configuration::<Limits>("# x\n\n## Configuration\n\nnone\n", "nobody"),
            ["no configuration table for nobody"]
        );
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
