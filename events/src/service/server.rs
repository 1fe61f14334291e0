//! The HTTP server both services run: hyper serving the warp routes, with the limits a
//! production server needs and warp's own server does not set.
//!
//! - **Connection cap**: at most `max_connections` connections are served at once. The next
//!   one is accepted only when one closes; until then it waits in the kernel's backlog, so a
//!   flood of clients costs a socket each, not a task and buffers each.
//! - **Header-read timeout**: a client that does not finish sending a request's headers within
//!   `header_read_timeout` (a slow or idle connection holding a slot) is disconnected. It also
//!   bounds how long an idle keep-alive connection holds its slot.
//! - **Graceful shutdown**: when `shutdown` resolves, no new connection is accepted; requests in
//!   flight finish (each connection closes after its current request), for at most `drain`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use warp::Filter;

/// The server's limits, from each service's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
}

impl Limits {
    /// The limits from a service's `HTTP_MAX_CONNECTIONS` and `HTTP_HEADER_READ_TIMEOUT_MS`.
    /// Shutdown waits up to 20 s for requests in flight, under the 30 s a container platform
    /// gives before SIGKILL.
    pub fn new(max_connections: usize, header_read_timeout_ms: u64) -> Self {
        Limits {
            max_connections,
            header_read_timeout: Duration::from_millis(header_read_timeout_ms),
            drain: Duration::from_secs(20),
        }
    }
}

/// `HTTP_MAX_CONNECTIONS`'s default, in both services.
pub fn default_max_connections() -> usize {
    1_024
}

/// `HTTP_HEADER_READ_TIMEOUT_MS`'s default, in both services.
pub fn default_header_read_timeout_ms() -> u64 {
    10_000
}

/// Serves `filter` on `listener` until `shutdown` resolves, then drains.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot first, then a connection: beyond the cap, clients wait in the backlog.
        let slot = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, _) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(warp::service(filter.clone()));
        let mut builder =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let connection = builder
            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_ms = limits.drain.as_millis() as u64,
            "requests still in flight after the drain period; closing"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let routes = warp::path!("slow").and_then(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::convert::Infallible>("done")
        });
        tokio::spawn(serve(listener, routes, limits, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(300),
            drain: Duration::from_secs(1),
        };
        let (addr, _stop) = start(limits).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nhost:")
            .await
            .expect("write");
        let mut buf = Vec::new();
        // Closed (end of stream, or reset) rather than held open.
        let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buf))
            .await
            .expect("the server closes the connection within 3 s");
        assert!(
            !String::from_utf8_lossy(&buf).contains("done"),
            "never served"
        );
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_free_slot() {
        let limits = Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(1),
        };
        let (addr, _stop) = start(limits).await;
        // The one slot: a connection that sends nothing yet.
        let holder = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn(get(addr, "/slow"));
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!waiting.is_finished(), "not served while the slot is taken");
        drop(holder);
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("served once the slot is free")
            .expect("task")
            .expect("answered");
        assert!(answer.contains("done"), "{answer}");
    }

    #[tokio::test]
    async fn shutdown_lets_the_request_in_flight_finish() {
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(5),
            drain: Duration::from_secs(5),
        };
        let (addr, stop) = start(limits).await;
        let request = tokio::spawn(get(addr, "/slow"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(());
        let answer = request.await.expect("task").expect("answered");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
