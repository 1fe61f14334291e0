//! `otlp_receiver`: an OTLP/HTTP receiver on this machine that prints each trace it is sent,
//! as a tree of spans (service, kind, name, and the attributes that say what the span was), so
//! one `curl -X POST` to command-service shows its trace across both services without a
//! collector. The receiver is `events::testing::otlp`, the one the tests use.
//!
//!   cargo run --release -p bench --bin otlp_receiver            # listens on 127.0.0.1:4318
//!   OTLP_RECEIVER_ADDR=127.0.0.1:14318 cargo run ... --bin otlp_receiver
//!
//! Then start the services with `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318`. A trace
//! is printed once no new span of it arrived for `OTLP_RECEIVER_QUIET_MS` (6000: longer than
//! the exporters' default batch delay of 5 s, so both services' batches are in), and printed
//! whole again if more of it arrives later. It runs until interrupted (or for
//! `OTLP_RECEIVER_SECONDS`, when set), and keeps every span it gets: a tool for a look, not a
//! collector.

use events::testing::otlp::{ReceivedSpan, Receiver};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

const KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];

/// The attributes worth a line: what the conventions say the span was.
const SHOWN: [&str; 10] = [
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "messaging.operation.type",
    "messaging.destination.name",
    "messaging.message.id",
    "db.operation.name",
    "db.collection.name",
    "correlation_id",
    "causation_id",
];

fn print(trace_id: &str, spans: &[ReceivedSpan]) {
    println!("trace {trace_id}: {} spans", spans.len());
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    fn walk(spans: &[ReceivedSpan], parent: &str, depth: usize) {
        let mut children: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.parent_span_id == parent)
            .collect();
        children.sort_by(|a, b| a.span_id.cmp(&b.span_id));
        for span in children {
            let attributes: Vec<String> = SHOWN
                .iter()
                .filter_map(|k| span.attribute(k).map(|v| format!("{k}={v}")))
                .collect();
            println!(
                "{}{:<15} {:<8} {}  {}",
                "  ".repeat(depth + 1),
                span.service,
                KINDS.get(span.kind as usize).copied().unwrap_or("?"),
                span.name,
                attributes.join(" ")
            );
            walk(spans, &span.span_id, depth + 1);
        }
    }
    let mut roots: Vec<&str> = spans
        .iter()
        .map(|s| s.parent_span_id.as_str())
        .filter(|p| !ids.contains(p))
        .collect();
    roots.sort_unstable();
    roots.dedup();
    for root in roots {
        if !root.is_empty() {
            println!("  (parent {root}: the caller's span)");
        }
        walk(spans, root, 0);
    }
}

#[tokio::main]
async fn main() {
    let address =
        std::env::var("OTLP_RECEIVER_ADDR").unwrap_or_else(|_| "127.0.0.1:4318".to_string());
    let quiet = Duration::from_millis(
        std::env::var("OTLP_RECEIVER_QUIET_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(6000),
    );
    let until = std::env::var("OTLP_RECEIVER_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(|s| Instant::now() + Duration::from_secs(s));
    let receiver = Receiver::start_on(&address).await;
    println!(
        "OTLP receiver on {}: start the services with OTEL_EXPORTER_OTLP_ENDPOINT={}",
        receiver.endpoint, receiver.endpoint
    );
    // Per trace: its spans' count when last seen, and when that count last changed.
    let mut seen: BTreeMap<String, (usize, Instant)> = BTreeMap::new();
    // Per trace: how many spans it had when printed.
    let mut printed: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let spans = receiver.spans();
        let mut by_trace: BTreeMap<String, Vec<ReceivedSpan>> = BTreeMap::new();
        for span in spans {
            by_trace
                .entry(span.trace_id.clone())
                .or_default()
                .push(span);
        }
        for (trace_id, spans) in &by_trace {
            if printed.get(trace_id) == Some(&spans.len()) {
                continue;
            }
            let entry = seen
                .entry(trace_id.clone())
                .or_insert((spans.len(), Instant::now()));
            if entry.0 != spans.len() {
                *entry = (spans.len(), Instant::now());
            } else if entry.1.elapsed() >= quiet {
                print(trace_id, spans);
                printed.insert(trace_id.clone(), spans.len());
            }
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            return;
        }
    }
}
