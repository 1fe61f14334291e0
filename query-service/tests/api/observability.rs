//! One request followed across both services' logs, and the metrics both expose.

use crate::helpers::*;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A log sink shared by both in-process services.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// The JSON log line (LOG_FORMAT=json) of `target_prefix` whose message is `message` and that
/// carries `request_id` in its span.
fn find(lines: &[Value], target_prefix: &str, message: &str, request_id: &str) -> Option<Value> {
    lines
        .iter()
        .find(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with(target_prefix))
                && l["message"] == message
                && l.to_string().contains(request_id)
        })
        .cloned()
}

// nextest runs each test in its own process, so this test's global log subscriber is its own.
#[tokio::test]
async fn a_request_id_is_followed_from_the_write_to_the_projection() {
    let captured = Captured::default();
    let sink = captured.clone();
    // Each projected event is logged at debug (one info line per batch).
    query_service::telemetry::init_with_writer(
        "test",
        query_service::settings::LogFormat::Json,
        "info,query_service::consumer=debug",
        move || sink.clone(),
    );
    let names = Names::new();
    let query = spawn_query(&names).await;
    let (command, _database) = spawn_command(&names).await;
    let client = reqwest::Client::new();
    let request_id = format!("abc-{}", uuid::Uuid::new_v4().simple());

    let response = client
        .post(command.url("/todos"))
        .header("x-request-id", &request_id)
        .json(&json!({"title": "traced"}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], request_id.as_str());
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");
    let read = client
        .get(query.url(&format!("/todos/{id}?min_version=1")))
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 200);

    eventually(
        Duration::from_secs(10),
        "both log lines written",
        || async {
            let lines = captured.lines();
            find(&lines, "command_service", "todo created", &request_id).is_some()
                && find(&lines, "query_service", "event projected", &request_id).is_some()
        },
    )
    .await;
    let lines = captured.lines();
    let write = find(&lines, "command_service", "todo created", &request_id).expect("write line");
    let apply = find(&lines, "query_service", "event projected", &request_id).expect("apply line");
    assert_eq!(write["todo_id"], id, "{write}");
    assert_eq!(apply["todo_id"], id, "{apply}");
    assert_eq!(
        apply["span"]["correlation_id"],
        request_id.as_str(),
        "the consumer's span: {apply}"
    );
    command.stop().await;
    query.stop().await;
    names.cleanup().await;
}

fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_show_the_write_the_outbox_and_the_projection() {
    let names = Names::new();
    let query = spawn_query(&names).await;
    let (command, _database) = spawn_command(&names).await;
    let client = reqwest::Client::new();
    let todo: Value = client
        .post(command.url("/todos"))
        .json(&json!({"title": "measured"}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let id = todo["id"].as_i64().expect("id");
    let read = client
        .get(query.url(&format!("/todos/{id}?min_version=1")))
        .send()
        .await
        .expect("get");
    assert_eq!(read.status(), 200);

    let text = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.expect("metrics");
            assert_eq!(r.status(), 200);
            assert!(r.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("application/openmetrics-text"));
            r.text().await.expect("text")
        }
    };
    eventually(Duration::from_secs(10), "outbox counters moved", || async {
        let m = text(command.url("/metrics")).await;
        sample(&m, "outbox_published_total").is_some_and(|v| v >= 1.0)
    })
    .await;
    let m = text(command.url("/metrics")).await;
    assert_eq!(
        sample(
            &m,
            r#"http_requests_total{route="POST /todos",status="201"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"http_request_duration_seconds_count{route="POST /todos",status="201"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "outbox_backlog"), Some(0.0), "{m}");
    assert!(m.contains("outbox_publish_failures_total"), "{m}");

    let q = text(query.url("/metrics")).await;
    assert_eq!(
        sample(&q, r#"projection_events_total{outcome="applied"}"#),
        Some(1.0),
        "{q}"
    );
    assert_eq!(sample(&q, "projection_lag_seconds_count"), Some(1.0), "{q}");
    assert_eq!(
        sample(
            &q,
            r#"http_requests_total{route="GET /todos/{id}",status="200"}"#
        ),
        Some(1.0),
        "{q}"
    );
    command.stop().await;
    query.stop().await;
    names.cleanup().await;
}

/// The metric names of a text exposition: each family's (from `# TYPE`) with the sample names
/// its type gives (`_total` of a counter; `_bucket`, `_sum`, `_count` of a histogram).
fn exported(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_string());
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

/// The metric names a PromQL expression reads: its identifiers, less label matchers and
/// groupings, ranges, functions (followed by `(`) and keywords.
fn metrics_read(expr: &str) -> Vec<String> {
    // Keywords, and the aggregations (which may be followed by `by (…)` before their `(`).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    // Label matchers `{…}`, ranges `[…]` and the label lists of `by (…)` go first.
    let mut plain = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    for c in expr.chars() {
        match c {
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => plain.push(c),
        }
    }
    let mut names = Vec::new();
    let chars: Vec<char> = plain.chars().collect();
    let mut k = 0;
    let mut after_grouping = false;
    while k < chars.len() {
        if chars[k].is_ascii_alphabetic() || chars[k] == '_' {
            let start = k;
            while k < chars.len()
                && (chars[k].is_ascii_alphanumeric() || chars[k] == '_' || chars[k] == ':')
            {
                k += 1;
            }
            let word: String = chars[start..k].iter().collect();
            let next = chars[k..].iter().find(|c| !c.is_whitespace());
            if word == "by" || word == "without" {
                // Skip its label list.
                after_grouping = true;
                continue;
            }
            if next != Some(&'(') && !KEYWORDS.contains(&word.as_str()) {
                names.push(word);
            }
        } else if chars[k] == '(' && after_grouping {
            after_grouping = false;
            while k < chars.len() && chars[k] != ')' {
                k += 1;
            }
            k += 1;
        } else {
            k += 1;
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    let names = Names::new();
    let (command, _database) = spawn_command(&names).await;
    let query = spawn_query(&names).await;
    let client = reqwest::Client::new();
    // Some of each service's labelled families appear once they have a sample: a write, and
    // its read at its version, give them one.
    let ids = create_todos(&client, &command, &["measured"]).await;
    let read = client
        .get(query.url(&format!("/todos/{}?min_version=1", ids[0])))
        .send()
        .await
        .expect("read");
    assert_eq!(read.status(), 200);
    let mut exports = std::collections::BTreeSet::new();
    for base in [command.address.clone(), query.address.clone()] {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        exports.extend(exported(&text));
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut expressions = Vec::new();
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("alerts.yml"),
    )
    .expect("alerts.yml parses");
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert").to_string();
            expressions.push((name, rule["expr"].as_str().expect("expr").to_string()));
        }
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/prometheus/dashboard.json"))
            .expect("dashboard.json"),
    )
    .expect("dashboard.json parses");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            expressions.push((
                format!("panel {}", panel["title"]),
                target["expr"].as_str().expect("expr").to_string(),
            ));
        }
    }
    let mut missing = Vec::new();
    let mut read = 0;
    for (what, expr) in &expressions {
        for metric in metrics_read(expr) {
            // Prometheus's own and kube-state-metrics' series.
            if metric == "up" || metric.starts_with("kube_") {
                continue;
            }
            read += 1;
            if !exports.contains(&metric) {
                missing.push(format!("{what}: {metric} (in {expr})"));
            }
        }
    }
    assert!(
        read >= 20,
        "{read} metric reads found: the parser lost them"
    );
    assert!(
        missing.is_empty(),
        "named by deploy/prometheus but exported by neither service:\n{}",
        missing.join("\n")
    );
    query.stop().await;
    command.stop().await;
    names.cleanup().await;
}

#[test]
fn metric_names_are_told_from_functions_labels_and_keywords() {
    assert_eq!(
        metrics_read(
            r#"sum by (le, job) (rate(http_request_duration_seconds_bucket{job="q"}[5m])) > 0 and max(projection_stuck) == 1"#
        ),
        ["http_request_duration_seconds_bucket", "projection_stuck"]
    );
}
