//! Traces: one trace per write, from the HTTP request through the outbox and the broker to the
//! read model, in OpenTelemetry's terms.
//!
//! Every `tracing` span of the services is an OpenTelemetry span too (the layer [`layer`]
//! builds). Spans get their W3C trace context whatever the settings, so logs always carry a
//! `trace_id` and a `traceparent` always travels on: taken from a request's header
//! ([`set_parent`]), stored with each event in command-service's outbox, sent by the relay as
//! the message's `traceparent` header, continued by query-service's consumer.
//!
//! They are exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: by OTLP over HTTP with protobuf bodies
//! (`<endpoint>/v1/traces`), in batches (`OTEL_BSP_SCHEDULE_DELAY`, default 5000 ms), named by
//! `OTEL_SERVICE_NAME` or the service's own name, sampled as `OTEL_TRACES_SAMPLER` says
//! (default: every trace). Unset, nothing is sent anywhere; the spans are still made and marked
//! sampled, so a service that does export downstream (query-service, say, while
//! command-service does not) records its part of the trace.
//!
//! The spans follow OpenTelemetry's semantic conventions: `otel.kind` server for an HTTP
//! request (`http.request.method`, `http.route`, `url.path`, `http.response.status_code`),
//! producer for a publish and consumer for a delivery processed (`messaging.system` rabbitmq,
//! `messaging.operation.type`, `messaging.destination.name`, `messaging.message.id`).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace context header, on HTTP requests and AMQP messages alike.
pub const TRACEPARENT: &str = "traceparent";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported: an OTLP endpoint is set.
pub fn exporting() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// The process's tracer provider: exporting by OTLP when [`exporting`], else keeping nothing.
/// Built once; `service` names the process unless `OTEL_SERVICE_NAME` does.
fn provider(service: &'static str) -> &'static SdkTracerProvider {
    PROVIDER.get_or_init(|| {
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name(service);
        }
        let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
        if exporting() {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => builder = builder.with_batch_exporter(exporter),
                // Logging is not up yet: say it on stderr, and run without exporting.
                Err(err) => eprintln!("OTLP trace export is off: {err}"),
            }
        }
        builder.build()
    })
}

/// The layer that makes every `tracing` span an OpenTelemetry span of `service`.
pub fn layer<S>(service: &'static str) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider(service).tracer(service))
        .with_tracked_inactivity(false)
}

/// Sends the spans not yet exported and stops the exporter: at the end of `main`.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(err) = provider.shutdown() {
            tracing::debug!(error = %err, "trace exporter shutdown");
        }
    }
}

/// Whether `traceparent` has the W3C form: `version-traceid-parentid-flags`, of 2, 32, 16 and
/// 2 lowercase hex digits (a later version may add fields after them).
fn well_formed(traceparent: &str) -> bool {
    let parts: Vec<&str> = traceparent.split('-').collect();
    parts.len() >= 4
        && parts.iter().zip([2, 32, 16, 2]).all(|(part, len)| {
            part.len() == len
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// The trace context a `traceparent` value carries, if it is a valid one.
fn context_of(traceparent: &str) -> Option<opentelemetry::Context> {
    if !well_formed(traceparent) {
        return None;
    }
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of the trace context `traceparent` names (a request's header, a
/// message's); an absent or invalid one leaves `span` where it is (a new trace, or its
/// parent's). Call it before the span is entered.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(context_of) {
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the trace context `traceparent` names (a batch's other messages).
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if let Some(cx) = context_of(traceparent) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// The `traceparent` of `span`: what a message or an outbox row carries to continue it.
/// `None` when the span has no trace context (no tracing layer installed).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The trace id of `span` (32 hex digits), as logs show it.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let span_context = cx.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Records `trace_id` on `span` (declared with `trace_id = tracing::field::Empty`), so every
/// log line inside it carries the trace id.
pub fn record_trace_id(span: &tracing::Span) {
    if let Some(id) = trace_id(span) {
        span.record("trace_id", id.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_only_when_valid() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(context_of(valid).is_some());
        for invalid in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "not a traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(context_of(invalid).is_none(), "{invalid:?}");
        }
    }
}
