//! A background task that dies is restarted, and `/ready` says so.

use crate::helpers::*;
use serde_json::Value;
use std::time::Duration;

async fn ready(app: &TestApp) -> Value {
    app.client
        .get(app.url("/ready"))
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn a_relay_that_dies_is_restarted_and_ready_reports_it() {
    let exchange = format!("test.{}", uuid::Uuid::new_v4().simple());
    let queue = bind_queue(&exchange, false).await;
    let app = spawn_app_with(Options {
        exchange: Some(exchange),
        ..Options::default()
    })
    .await;
    let body = ready(&app).await;
    assert_eq!(body["tasks"]["relay"]["state"], "running", "{body}");
    assert_eq!(body["tasks"]["sequencer"]["restarts"], 0, "{body}");

    assert!(app.tasks.abort("relay"), "the relay is a supervised task");
    eventually(Duration::from_secs(10), "relay restarted", || async {
        let body = ready(&app).await;
        body["tasks"]["relay"]["restarts"] == 1 && body["tasks"]["relay"]["state"] == "running"
    })
    .await;
    let body = ready(&app).await;
    assert_eq!(
        body["tasks"]["relay"]["last_failure"], "was aborted",
        "{body}"
    );
    // The restarted relay publishes.
    app.create("after the restart").await;
    let messages = queue.take(1, Duration::from_secs(15)).await;
    let envelope = events::Envelope::from_json(&messages[0].data).expect("envelope");
    assert_eq!(envelope.version, 1);
    app.stop().await;
    queue.delete().await;
}
