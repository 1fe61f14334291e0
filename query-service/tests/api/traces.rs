//! One trace per write: both services as their binaries (each process has its own tracer and
//! service name), exporting by OTLP to a receiver in this test (`events::testing::otlp`).

use crate::helpers::*;
use events::testing::otlp::{tree, ReceivedSpan, Receiver};
use serde_json::{json, Value};
use std::time::Duration;

const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// The one span of `spans` that `what` picks, or a failure showing the whole trace.
fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pick: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "one {what} in the trace:\n{}", tree(spans));
    found[0]
}

/// Both services as their binaries, on this test's database and broker names, with `vars` on
/// both and the services' own log filter (requests logged with their spans); back once
/// query-service consumes.
async fn start_pair(
    names: &Names,
    database: &TestDatabase,
    vars: &[(&str, &str)],
) -> (Process, Process) {
    let mut shared: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    shared.push((
        "RUST_LOG".into(),
        "warn,events=info,command_service=info,query_service=info".into(),
    ));
    let mut query_vars = names.query_vars();
    query_vars.extend(shared.iter().cloned());
    let query = start_process(
        env!("CARGO_BIN_EXE_query-service"),
        &query_vars,
        "query_service",
        "query-service listening",
    )
    .await;
    let mut command_vars = vec![
        ("DATABASE_URL".to_string(), database.url.clone()),
        ("AMQP_URL".to_string(), amqp_url()),
        ("AMQP_EXCHANGE".to_string(), names.exchange.clone()),
    ];
    command_vars.extend(shared);
    let command = start_process(
        command_service_binary(),
        &command_vars,
        "command_service",
        "command-service listening",
    )
    .await;
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(30),
        "query-service consuming",
        || async {
            get_json::<Value>(&client, &format!("{}/ready", query.address)).await["checks"]
                ["rabbitmq"]
                == "up"
        },
    )
    .await;
    (command, query)
}

/// One `POST /todos` sent with a client's `traceparent`, then one read of the todo on
/// query-service in the same trace: the receiver gets one trace holding command-service's
/// server span, the commit under it and the publish under it (producer), then query-service's
/// consumer span under the publish and the batch apply under that, and the read's server span;
/// with the HTTP and messaging attributes, and the trace id in both services' logs.
#[tokio::test]
async fn one_post_is_one_trace_across_both_services_in_parent_order() {
    let receiver = Receiver::start().await;
    let names = Names::new();
    let database = create_database().await;
    let (command, query) = start_pair(
        &names,
        &database,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let client = reqwest::Client::new();

    // The client's own trace: the pair continues it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let created: Value = client
        .post(format!("{}/todos", command.address))
        .header("traceparent", &traceparent)
        .json(&json!({"title": "traced"}))
        .send()
        .await
        .expect("POST /todos")
        .json()
        .await
        .expect("the todo");
    let id = created["id"].as_i64().expect("id");
    // Readable first (outside the trace), so the traced read is a read of MongoDB, not a wait
    // answered by the projection's notice.
    let _ = client
        .get(format!("{}/todos/{id}?min_version=1", query.address))
        .send()
        .await
        .expect("GET");
    let read = client
        .get(format!("{}/todos/{id}", query.address))
        .header("traceparent", &traceparent)
        .send()
        .await
        .expect("GET /todos/{id}");
    assert_eq!(read.status(), 200);

    // Batches leave every 100 ms; the consumer's spans end once the batch is acked.
    let mut spans = Vec::new();
    eventually(Duration::from_secs(20), "the whole trace exported", || {
        spans = receiver.trace(trace_id);
        let whole = spans.iter().any(|s| s.name == "apply batch")
            && spans.iter().any(|s| s.kind == CONSUMER)
            && spans.iter().filter(|s| s.kind == SERVER).count() == 2;
        async move { whole }
    })
    .await;
    let shown = tree(&spans);
    println!("{shown}");

    let post = one(&spans, "POST server span", |s| {
        s.kind == SERVER && s.service == "command-service"
    });
    assert_eq!(post.name, "POST /todos", "{shown}");
    assert_eq!(
        post.parent_span_id, client_span,
        "the client's span is its parent"
    );
    assert_eq!(post.attribute("http.request.method"), Some("POST"));
    assert_eq!(post.attribute("http.route"), Some("/todos"));
    assert_eq!(post.attribute("http.response.status_code"), Some("201"));
    let request = one(&spans, "request span", |s| {
        s.service == "command-service" && s.name == "request"
    });
    assert_eq!(request.parent_span_id, post.span_id, "{shown}");
    let commit = one(&spans, "commit span", |s| s.name == "commit");
    assert_eq!(commit.parent_span_id, request.span_id, "{shown}");
    let publish = one(&spans, "publish span", |s| s.kind == PRODUCER);
    assert_eq!(publish.service, "command-service");
    assert_eq!(publish.parent_span_id, request.span_id, "{shown}");
    assert_eq!(publish.attribute("messaging.system"), Some("rabbitmq"));
    assert_eq!(publish.attribute("messaging.operation.type"), Some("send"));
    assert_eq!(
        publish.attribute("messaging.operation.name"),
        Some("publish")
    );
    assert_eq!(
        publish.attribute("messaging.destination.name"),
        Some(names.exchange.as_str())
    );
    let process = one(&spans, "consumer span", |s| s.kind == CONSUMER);
    assert_eq!(process.service, "query-service");
    assert_eq!(process.parent_span_id, publish.span_id, "{shown}");
    assert_eq!(
        process.attribute("messaging.operation.type"),
        Some("process")
    );
    assert_eq!(
        process.attribute("messaging.message.id"),
        publish.attribute("messaging.message.id")
    );
    let apply = one(&spans, "batch apply span", |s| s.name == "apply batch");
    assert_eq!(apply.service, "query-service");
    assert_eq!(apply.parent_span_id, process.span_id, "{shown}");
    let get = one(&spans, "GET server span", |s| {
        s.kind == SERVER && s.service == "query-service"
    });
    assert_eq!(get.name, "GET /todos/{id}", "{shown}");
    assert_eq!(get.attribute("http.response.status_code"), Some("200"));
    let find = one(&spans, "the read's MongoDB find", |s| {
        s.name == "find todos"
    });
    assert_eq!(find.attribute("db.system.name"), Some("mongodb"));
    let read_request = one(&spans, "the read's request span", |s| {
        s.service == "query-service" && s.name == "request"
    });
    assert_eq!(read_request.parent_span_id, get.span_id, "{shown}");
    assert_eq!(find.parent_span_id, read_request.span_id, "{shown}");

    // The logs of both carry the trace id.
    for (service, process) in [("command-service", &command), ("query-service", &query)] {
        eventually(
            Duration::from_secs(5),
            &format!("a log line of {service} with the trace id"),
            || {
                let found = process.lines().iter().any(|l| l.contains(trace_id));
                async move { found }
            },
        )
        .await;
    }

    drop(command);
    drop(query);
    names.cleanup().await;
}

/// Without `OTEL_EXPORTER_OTLP_ENDPOINT`, nothing is sent: a receiver on OTLP/HTTP's default
/// address (`localhost:4318`, where OpenTelemetry's exporter sends when it is built without an
/// endpoint) gets no request, while the trace context still travels (the event's `traceparent`
/// header is what the consumer logs its trace id from).
#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_logs_still_carry_the_trace_id() {
    let receiver = Receiver::start_on("127.0.0.1:4318").await;
    let names = Names::new();
    let database = create_database().await;
    // Batches would leave every 100 ms, were anything exported.
    let (command, query) =
        start_pair(&names, &database, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await;
    let client = reqwest::Client::new();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let created: Value = client
        .post(format!("{}/todos", command.address))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&json!({"title": "untraced"}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("todo");
    let id = created["id"].as_i64().expect("id");
    eventually(Duration::from_secs(20), "the todo readable", || async {
        client
            .get(format!("{}/todos/{id}", query.address))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "query-service logs the trace id",
        || {
            let found = query.lines().iter().any(|l| l.contains(trace_id));
            async move { found }
        },
    )
    .await;
    assert!(command.lines().iter().any(|l| l.contains(trace_id)));
    // Past several batches' delay: an exporter would have sent by now.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(receiver.requests(), 0, "nothing sent without an endpoint");
    drop(command);
    drop(query);
    names.cleanup().await;
}
