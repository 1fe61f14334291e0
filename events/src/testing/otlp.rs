//! An OTLP receiver in-process, for tests that hold the services' traces: it serves OTLP over
//! HTTP (`POST /v1/traces`, protobuf bodies, the protocol the services export with), answers
//! as a collector does, and keeps every span it was sent.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use warp::Filter;

/// One span as the receiver got it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// OTLP's span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// String, integer and boolean attributes, as text.
    pub attributes: BTreeMap<String, String>,
    /// The span contexts it links to, as (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running receiver: its endpoint (for `OTEL_EXPORTER_OTLP_ENDPOINT`) and what it got.
pub struct Receiver {
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<u64>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => s.clone(),
                any_value::Value::IntValue(n) => n.to_string(),
                any_value::Value::BoolValue(b) => b.to_string(),
                any_value::Value::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

/// The spans of an export request, flattened.
fn spans_of(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| text(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: text(&span.attributes),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
    spans
}

impl Receiver {
    /// Starts the receiver on a port of loopback the OS picks.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts the receiver on `address` (OTLP/HTTP's own port, `127.0.0.1:4318`, to catch what
    /// an exporter would send by default).
    pub async fn start_on(address: &str) -> Self {
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let requests: Arc<Mutex<u64>> = Arc::default();
        let (kept, counted) = (spans.clone(), requests.clone());
        let route = warp::path!("v1" / "traces")
            .and(warp::post())
            .and(warp::header::optional::<String>("content-type"))
            .and(warp::body::bytes())
            .map(move |content_type: Option<String>, body: bytes::Bytes| {
                *counted.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                if content_type.as_deref() != Some("application/x-protobuf") {
                    return warp::http::Response::builder()
                        .status(415)
                        .body(Vec::new())
                        .unwrap_or_default();
                }
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        kept.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend(spans_of(request));
                        warp::http::Response::builder()
                            .header("content-type", "application/x-protobuf")
                            .body(ExportTraceServiceResponse::default().encode_to_vec())
                            .unwrap_or_default()
                    }
                    Err(_) => warp::http::Response::builder()
                        .status(400)
                        .body(Vec::new())
                        .unwrap_or_default(),
                }
            });
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .unwrap_or_else(|e| panic!("the OTLP receiver binds {address}: {e}"));
        let address = listener.local_addr().expect("its address");
        tokio::spawn(warp::serve(route).incoming(listener).run());

        Self {
            endpoint: format!("http://{address}"),
            spans,
            requests,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// How many export requests came (a receiver nothing was sent to counts 0).
    pub fn requests(&self) -> u64 {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The trace as an indented tree, parents before children: what a test prints when it fails.
pub fn tree(spans: &[ReceivedSpan]) -> String {
    fn walk(spans: &[ReceivedSpan], parent: &str, depth: usize, out: &mut String) {
        for span in spans.iter().filter(|s| s.parent_span_id == parent) {
            out.push_str(&format!(
                "{}{} [{}] {} (span {})\n",
                "  ".repeat(depth),
                span.service,
                span.kind,
                span.name,
                span.span_id
            ));
            walk(spans, &span.span_id, depth + 1, out);
        }
    }
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = String::new();
    // Roots: no parent, or a parent this trace does not hold (a client's span).
    let mut roots: Vec<&str> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id.as_str()))
        .map(|s| s.parent_span_id.as_str())
        .collect();
    roots.sort_unstable();
    roots.dedup();
    for root in roots {
        walk(spans, root, 0, &mut out);
    }
    out
}
