//! The HTTP server's limits, through the service as the binary runs it (both services run the
//! same server: `events::service::server`, whose own tests cover each phase in detail).

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
async fn a_body_that_never_ends_is_answered_408_and_writes_nothing() {
    let app = spawn_app_with(Options {
        extra: vec![("HTTP_BODY_READ_TIMEOUT_MS", "300".into())],
        ..Options::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(addr(&app))
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /todos HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"title\": \"never fin",
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("answered and closed within 5 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("/problems/request-timeout"), "{answer}");
    assert_eq!(app.count("todos").await, 0, "nothing written");
    app.stop().await;
}

#[tokio::test]
async fn at_the_cap_a_new_client_takes_an_idle_connections_place() {
    let app = spawn_app_with(Options {
        extra: vec![("HTTP_MAX_CONNECTIONS", "2".into())],
        ..Options::default()
    })
    .await;
    // Both places held by connections that send nothing.
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push(
            tokio::net::TcpStream::connect(addr(&app))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = tokio::time::timeout(
        Duration::from_secs(2),
        app.client.get(app.url("/health")).send(),
    )
    .await
    .expect("answered at once, not after the holders' deadline")
    .expect("request")
    .status();
    assert_eq!(status, 200);
    // The oldest holder was let go.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), holders[0].read(&mut buf))
        .await
        .expect("the oldest idle connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    app.stop().await;
}
