//! The relay's calls to RabbitMQ have deadlines: a broker that stops answering is a broker
//! failure (reported, retried with backoff), never a relay stuck in an open transaction.

use crate::helpers::*;
use std::time::{Duration, Instant};

async fn app_behind(proxy: &StallingProxy, exchange: &str) -> TestApp {
    spawn_app_with(Options {
        exchange: Some(exchange.to_string()),
        extra: vec![
            ("AMQP_URL", proxy.amqp_url()),
            ("AMQP_TIMEOUT_MS", "1000".into()),
        ],
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_broker_that_stops_answering_is_reported_down_within_the_deadline() {
    let exchange = format!("test.{}", uuid::Uuid::new_v4().simple());
    let queue = bind_queue(&exchange, false).await;
    let proxy = StallingProxy::start().await;
    let app = app_behind(&proxy, &exchange).await;
    app.create("before").await;
    queue.take(1, Duration::from_secs(15)).await;
    assert_eq!(ready(&app).await["checks"]["rabbitmq"], "up");

    proxy.stall();
    let stalled_at = Instant::now();
    app.create("during").await;
    // Publishing waits for a confirm that never comes: after AMQP_TIMEOUT_MS (1 s here) the
    // round fails, the connection is dropped, and reconnecting meets silence too.
    eventually(Duration::from_secs(5), "rabbitmq reported down", || async {
        ready(&app).await["checks"]["rabbitmq"] == "down"
    })
    .await;
    let took = stalled_at.elapsed();
    let body = ready(&app).await;
    assert_eq!(
        body["status"], "ready",
        "writes need PostgreSQL only: {body}"
    );
    assert_eq!(body["checks"]["outbox_backlog"], 1, "{body}");
    assert!(
        body["checks"]["relay_last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{body} after {took:?}"
    );
    // Still down while every reconnection meets silence; writes go on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ready(&app).await["checks"]["rabbitmq"], "down");
    app.create("after").await;

    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("stops within 5 s although the broker does not answer");
    queue.delete().await;
}

#[tokio::test]
async fn stopping_while_the_broker_does_not_answer_does_not_hang() {
    let exchange = format!("test.{}", uuid::Uuid::new_v4().simple());
    let proxy = StallingProxy::start().await;
    let app = app_behind(&proxy, &exchange).await;
    eventually(Duration::from_secs(10), "relay connected", || async {
        ready(&app).await["checks"]["rabbitmq"] == "up"
    })
    .await;
    proxy.stall();
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("stops within 5 s although the broker does not answer");
}

#[tokio::test]
async fn a_broker_address_that_never_speaks_amqp_is_reported_down_and_stop_does_not_hang() {
    // Accepts TCP connections and never says a word.
    let proxy = StallingProxy::start().await;
    proxy.stall();
    let app = app_behind(&proxy, "test.silent").await;
    let response = app.post_json("/todos", r#"{"title":"kept"}"#).await;
    assert_eq!(response.status(), 201, "writes need PostgreSQL only");
    for _ in 0..3 {
        let body = ready(&app).await;
        assert_eq!(body["checks"]["rabbitmq"], "down", "{body}");
        assert_eq!(body["checks"]["outbox_backlog"], 1, "{body}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("stops within 5 s although the broker does not answer");
}
