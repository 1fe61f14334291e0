//! The HTTP server's limits, through the service as the binary runs it (both services run the
//! same server: `events::service::server`).

use crate::helpers::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn a_client_that_stops_sending_its_headers_is_disconnected() {
    let app = spawn_app_with(Options {
        extra: vec![("HTTP_HEADER_READ_TIMEOUT_MS", "300".into())],
        ..Options::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(addr(&app))
        .await
        .expect("connect");
    stream
        .write_all(b"POST /todos HTTP/1.1\r\nhost: x\r\ncontent-type: appl")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the connection is closed, not held open");
    assert_eq!(app.count("todos").await, 0, "nothing written");
    app.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(Options {
        extra: vec![("HTTP_MAX_CONNECTIONS", "1".into())],
        ..Options::default()
    })
    .await;
    // Holds the one slot without sending anything.
    let holder = tokio::net::TcpStream::connect(addr(&app))
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = {
        let (client, url) = (app.client.clone(), app.url("/health"));
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !waiting.is_finished(),
        "no answer while the only slot is taken"
    );
    drop(holder);
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("answered once the slot is free")
        .expect("task")
        .expect("request");
    assert_eq!(status, 200);
    app.stop().await;
}
