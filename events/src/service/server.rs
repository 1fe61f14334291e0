//! The HTTP server both services run: hyper serving the warp routes over HTTP/1.1, with a
//! deadline on every phase of a connection and a cap on what one client can hold.
//!
//! - **HTTP/1.1 only.** Both APIs are small JSON answers and one server-sent-events stream,
//!   which HTTP/1.1 carries as well as HTTP/2; in production HTTP/2 (and TLS) ends at the
//!   ingress or load balancer in front. Serving HTTP/1.1 alone removes the protocol detection
//!   that reads a client's first bytes before any timer runs, and HTTP/2's own surface
//!   (stream multiplexing, pings, flow-control windows) that would need its own limits. An
//!   HTTP/2 preface is answered as the malformed HTTP/1.1 request it is.
//! - **Accept to complete headers**: a client must send a request's whole head within
//!   `header_read_timeout`, counted from the moment the connection is accepted (and, between
//!   requests on a kept-alive connection, from the end of the previous answer: the same
//!   deadline bounds an idle keep-alive connection). Past it, the connection is closed.
//! - **Reading a body**: a request's body must arrive whole within `body_read_timeout` of its
//!   head; a handler reading it after that gets [`BodyReadTimeout`] (answered 408).
//! - **A client that does not read its answer**: a write that makes no progress for
//!   `write_timeout` (the socket's send buffer full, the client not reading) fails, which
//!   closes the connection. This is also what drops a stream client that stopped reading. The
//!   send buffer is fixed at 256 KiB, so such a client holds that much of the kernel's memory,
//!   not the megabytes autotuning would grow it to.
//! - **Connection cap**: at most `max_connections` connections at once, counted from accept,
//!   whatever phase they are in. At the cap, a new connection takes the place of the oldest one
//!   with no request in progress (idle, or still sending its head): a flood of connections
//!   that send nothing cannot keep a real client out for the length of a deadline. With every
//!   connection busy, the new one is answered 503 and closed at once, never left waiting.
//! - **Per peer**: at most `max_connections_per_peer` connections from one IP address; one more
//!   is answered 503 and closed. Behind a proxy every client has the proxy's address: set the
//!   cap to `max_connections` there.
//! - **Graceful shutdown**: when `shutdown` resolves, no new connection is accepted; requests in
//!   flight finish (each connection closes after its current request), for at most `drain`.
//!
//! Each request carries its peer's address as [`Peer`] (read with [`peer`]), for limits of a
//! route's own (the stream caps its clients per peer).

use super::metrics::HttpMetrics;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Sleep;
use warp::Filter;

/// The server's limits, from each service's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain: Duration,
}

/// The HTTP settings both services read, by their variable names' fields.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// `HTTP_MAX_CONNECTIONS`
    pub max_connections: usize,
    /// `HTTP_MAX_CONNECTIONS_PER_PEER`
    pub max_connections_per_peer: usize,
    /// `HTTP_HEADER_READ_TIMEOUT_MS`
    pub header_read_timeout_ms: u64,
    /// `HTTP_BODY_READ_TIMEOUT_MS`
    pub body_read_timeout_ms: u64,
    /// `HTTP_WRITE_TIMEOUT_MS`
    pub write_timeout_ms: u64,
}

impl Limits {
    /// The limits from a service's HTTP settings. Shutdown waits up to 20 s for requests in
    /// flight, under the 30 s a container platform gives before SIGKILL.
    pub fn new(settings: HttpSettings) -> Self {
        Limits {
            max_connections: settings.max_connections.max(1),
            max_connections_per_peer: settings.max_connections_per_peer.max(1),
            header_read_timeout: Duration::from_millis(settings.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(settings.body_read_timeout_ms),
            write_timeout: Duration::from_millis(settings.write_timeout_ms),
            drain: Duration::from_secs(20),
        }
    }
}

/// `HTTP_MAX_CONNECTIONS`'s default, in both services.
pub fn default_max_connections() -> usize {
    1_024
}

/// `HTTP_MAX_CONNECTIONS_PER_PEER`'s default, in both services.
pub fn default_max_connections_per_peer() -> usize {
    256
}

/// `HTTP_HEADER_READ_TIMEOUT_MS`'s default, in both services.
pub fn default_header_read_timeout_ms() -> u64 {
    5_000
}

/// `HTTP_BODY_READ_TIMEOUT_MS`'s default, in both services.
pub fn default_body_read_timeout_ms() -> u64 {
    10_000
}

/// `HTTP_WRITE_TIMEOUT_MS`'s default, in both services.
pub fn default_write_timeout_ms() -> u64 {
    10_000
}

/// The largest request head (request line and headers) a client may send: 16 KiB. hyper
/// answers a larger one 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The kernel's send buffer of each connection, fixed (no autotuning up to megabytes): what a
/// client that stops reading can make the server write, and hold, before its writes stall and
/// the write deadline runs. Plenty for this API's answers (a page of todos is tens of KB; a
/// stream sends changes as they come).
const SEND_BUFFER_BYTES: usize = 256 * 1024;
/// Refused connections answered at once; past it, refused ones are closed unanswered.
const REFUSALS_AT_ONCE: usize = 64;

/// The listen backlog asked of the kernel (which caps it at `net.core.somaxconn`: 4096 on
/// current Linux). Tokio's default of 1,024 overflows when a few thousand connections arrive at
/// once: the kernel then drops further SYNs, and a real client's connect waits for its first
/// retransmission, a second later, however quickly the server accepts.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`, the first address it resolves to that binds) with [`LISTEN_BACKLOG`] and
/// `SO_REUSEADDR` (a restarted service binds again while its old connections are in
/// `TIME_WAIT`).
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    // Each address it resolves to in turn, as `TcpListener::bind` does (`localhost` may give
    // `::1` first on a host without IPv6).
    for resolved in tokio::net::lookup_host(addr).await? {
        let bound = (|| {
            let socket = if resolved.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(resolved)?;
            socket.listen(LISTEN_BACKLOG)
        })();
        match bound {
            Ok(listener) => return Ok(listener),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// The address of the client that sent a request, as the server saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer(pub IpAddr);

/// The request's [`Peer`]: `None` only where no server put it there (warp's test requests).
pub fn peer() -> impl Filter<Extract = (Option<Peer>,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<Peer>()
}

/// Places held per peer address, each capped: a connection's (here) or a route's own (the
/// stream's clients). A place is given back when its [`PeerPlace`] drops.
#[derive(Clone, Default)]
pub struct PeerCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One place of a peer in [`PeerCounts`].
pub struct PeerPlace {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PeerCounts {
    /// A place for `ip` if it holds fewer than `max`.
    pub fn take(&self, ip: IpAddr, max: usize) -> Option<PeerPlace> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerPlace {
            ip,
            counts: self.0.clone(),
        })
    }
}

impl Drop for PeerPlace {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// What a request's body reader gets when the body did not arrive whole within
/// `body_read_timeout` of the request's head.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyReadTimeout(pub Duration);

impl BodyReadTimeout {
    /// The timeout in `err`'s chain of causes (a body stream hands it over wrapped), if any.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyReadTimeout> {
        let mut cause = Some(err);
        while let Some(e) = cause {
            if let Some(timeout) = e.downcast_ref::<BodyReadTimeout>() {
                return Some(timeout);
            }
            cause = e.source();
        }
        None
    }
}

/// Serves `filter` on `listener` until `shutdown` resolves, then drains.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    limits: Limits,
    metrics: HttpMetrics,
    shutdown: impl Future<Output = ()>,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let registry = Arc::new(Registry::default());
    let refusing = Arc::new(tokio::sync::Semaphore::new(REFUSALS_AT_ONCE));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(100)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
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
        let peer = addr.ip();
        let ticket = match registry.admit(peer, &limits) {
            Ok((ticket, evicted)) => {
                if evicted {
                    metrics.connection_evicted();
                }
                ticket
            }
            Err(refusal) => {
                metrics.connection_refused(refusal.reason());
                // Refusals are bounded too: past the cap of those in progress, the socket is
                // closed without an answer.
                if let Ok(place) = refusing.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(stream, refusal).await;
                        drop(place);
                    });
                }
                continue;
            }
        };
        metrics.connection_opened();
        if let Err(err) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER_BYTES) {
            tracing::debug!(error = %err, "the send buffer's size was not set");
        }
        let io = hyper_util::rt::TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
        let routes = warp::service(filter.clone());
        let busy = ticket.busy.clone();
        let body_read_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(
            move |request: warp::http::Request<hyper::body::Incoming>| {
                let guard = Busy::enter(busy.clone());
                let mut request = request.map(|body| DeadlineBody::new(body, body_read_timeout));
                request.extensions_mut().insert(Peer(peer));
                let mut routes = routes.clone();
                let answered = tower_service::Service::call(&mut routes, request);
                async move {
                    // One request at a time per turn: a client pipelining hundreds of requests
                    // waits its turn between them, so a new client (a probe of /health) is
                    // served after one request of each busy connection, not after a run of
                    // each one's.
                    tokio::task::yield_now().await;
                    let response = answered.await?;
                    Ok::<_, std::convert::Infallible>(response.map(|body| BusyBody {
                        body,
                        _guard: guard,
                    }))
                }
            },
        );
        let connection = graceful.watch(builder.serve_connection(io, service));
        let registry = registry.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    ended = &mut connection => {
                        if let Err(err) = ended {
                            tracing::debug!(error = %err, "connection ended with an error");
                        }
                        break;
                    }
                    // Dropping the connection closes its socket. A request that began between
                    // the registry's look and now is answered first (the cap is passed by one
                    // meanwhile); the connection closes after it, by its own deadlines.
                    _ = ticket.evict.notified() => {
                        if ticket.busy.load(Ordering::Acquire) == 0 {
                            break;
                        }
                    }
                }
            }
            registry.release(&ticket);
            metrics.connection_closed();
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

/// Why a connection was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Every connection is busy with a request.
    Full,
    /// Its address holds `max_connections_per_peer` already.
    Peer,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::Peer => "peer",
        }
    }
}

/// Answers 503 problem+json without reading the request, and closes. The answer fits in the
/// socket's empty send buffer; a client that cannot take it loses it after a second.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let detail = match refusal {
        Refusal::Full => "Every connection this server serves at once is busy; try again shortly.",
        Refusal::Peer => {
            "This address holds as many connections as one client may (HTTP_MAX_CONNECTIONS_PER_PEER)."
        }
    };
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": detail,
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Then what the client sent is read and dropped until it closes (a second at most):
    // closing with its request unread would reset the connection and could take the answer
    // with it.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The connections being served: counted as a whole and per peer, each with its start and
/// whether a request is in progress, so the oldest idle one can be told to go.
#[derive(Default)]
struct Registry {
    inner: Mutex<Connections>,
    peers: PeerCounts,
}

#[derive(Default)]
struct Connections {
    next: u64,
    open: HashMap<u64, Entry>,
}

struct Entry {
    /// Given back when the entry goes (the connection ended, or was let go).
    _peer: PeerPlace,
    opened: Instant,
    busy: Arc<AtomicUsize>,
    evict: Arc<Notify>,
}

/// A served connection's place in the [`Registry`].
struct Ticket {
    id: u64,
    busy: Arc<AtomicUsize>,
    evict: Arc<Notify>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a connection from `peer`, and whether an idle connection was told to go to
    /// make room; or why there is none.
    fn admit(&self, peer: IpAddr, limits: &Limits) -> Result<(Ticket, bool), Refusal> {
        let mut c = self.lock();
        let place = self
            .peers
            .take(peer, limits.max_connections_per_peer)
            .ok_or(Refusal::Peer)?;
        let mut evicted = false;
        if c.open.len() >= limits.max_connections {
            let oldest_idle = c
                .open
                .iter()
                .filter(|(_, e)| e.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, e)| e.opened)
                .map(|(id, _)| *id);
            let Some(id) = oldest_idle else {
                return Err(Refusal::Full);
            };
            if let Some(gone) = c.open.remove(&id) {
                // `notify_one` keeps the permit if the task is not waiting yet.
                gone.evict.notify_one();
                evicted = true;
            }
        }
        c.next += 1;
        let id = c.next;
        let ticket = Ticket {
            id,
            busy: Arc::new(AtomicUsize::new(0)),
            evict: Arc::new(Notify::new()),
        };
        c.open.insert(
            id,
            Entry {
                _peer: place,
                opened: Instant::now(),
                busy: ticket.busy.clone(),
                evict: ticket.evict.clone(),
            },
        );
        Ok((ticket, evicted))
    }

    /// The connection ended (an evicted one was already forgotten).
    fn release(&self, ticket: &Ticket) {
        self.lock().open.remove(&ticket.id);
    }
}

/// A request in progress on a connection, from its head until its answer's body was written
/// whole (or dropped): while one is, the connection is not idle and never evicted.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Busy(count)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that holds its request's [`Busy`] until it is written or dropped.
struct BusyBody<B> {
    body: B,
    _guard: Busy,
}

impl<B: Body<Data = Bytes> + Unpin> Body for BusyBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails with [`BodyReadTimeout`] once `timeout` has passed since the
/// request's head arrived.
struct DeadlineBody<B> {
    body: B,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl<B> DeadlineBody<B> {
    fn new(body: B, timeout: Duration) -> Self {
        Self {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyReadTimeout(self.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket whose writes fail once one has made no progress for `timeout`: a client that
/// stops reading its answer loses its connection instead of holding it.
struct WriteDeadline {
    stream: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    fn new(stream: TcpStream, timeout: Duration) -> Self {
        Self {
            stream,
            timeout,
            stalled: None,
        }
    }

    /// Passes a write's outcome through; a `Pending` starts (or checks) the stall's deadline.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match poll {
            Poll::Pending => {
                let timeout = self.timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stalled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the client read nothing of its answer for {timeout:?}"),
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry as Metrics;
    use tokio::io::AsyncReadExt;

    fn limits() -> Limits {
        Limits {
            max_connections: 8,
            max_connections_per_peer: 8,
            header_read_timeout: Duration::from_millis(400),
            body_read_timeout: Duration::from_millis(400),
            write_timeout: Duration::from_millis(400),
            drain: Duration::from_secs(1),
        }
    }

    struct Server {
        addr: std::net::SocketAddr,
        metrics: Arc<Mutex<Metrics>>,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    impl Server {
        /// A figure of the server's connection metrics.
        fn figure(&self, name: &str) -> f64 {
            let text = super::super::metrics::render(&self.metrics.lock().expect("metrics"));
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        }
    }

    async fn read_all<S, B>(body: S) -> String
    where
        S: futures_util::Stream<Item = Result<B, warp::Error>>,
        B: bytes::Buf,
    {
        use futures_util::StreamExt;
        let mut body = std::pin::pin!(body);
        let mut read = 0;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => read += c.remaining(),
                Err(e) => {
                    return match BodyReadTimeout::find(&e) {
                        Some(_) => format!("timed out after {read} bytes"),
                        None => format!("failed: {e}"),
                    }
                }
            }
        }
        format!("read {read} bytes")
    }

    /// Routes: `/slow` (answers after 300 ms), `/body` (reads the body, says how it ended),
    /// `/big` (64 MiB), `/peer` (the peer's address).
    async fn start(limits: Limits) -> (Server, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let slow = warp::path!("slow").and_then(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::convert::Infallible>("done".to_string())
        });
        let body = warp::path!("body").and(warp::body::stream()).then(read_all);
        let big = warp::path!("big").map(|| vec![b'x'; 64 << 20]);
        let who = warp::path!("peer")
            .and(peer())
            .map(|p: Option<Peer>| format!("{:?}", p.map(|p| p.0)));
        let routes = slow
            .or(body)
            .unify()
            .or(who)
            .unify()
            .map(|s: String| s.into_bytes())
            .or(big)
            .unify();
        let mut registry = Metrics::default();
        let metrics = HttpMetrics::register(&mut registry);
        tokio::spawn(serve(listener, routes, limits, metrics, async {
            let _ = stopped.await;
        }));
        let (_stop, _unused) = tokio::sync::oneshot::channel();
        (
            Server {
                addr,
                metrics: Arc::new(Mutex::new(registry)),
                _stop,
            },
            stop,
        )
    }

    async fn connect_from(from: &str, to: std::net::SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{from}:0").parse().expect("address"))
            .expect("bind a loopback address");
        socket.connect(to).await.expect("connect")
    }

    async fn request(stream: &mut TcpStream, path: &str) -> String {
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .expect("answered within 5 s");
        answer
    }

    /// Waits until the peer closes `stream` (end of stream or reset), at most `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
                Err(_) => panic!("still open after {within:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_or_a_byte_at_a_time_is_closed_at_the_header_deadline()
    {
        let (server, _stop) = start(limits()).await;
        let mut silent = TcpStream::connect(server.addr).await.expect("connect");
        let took = closed_within(&mut silent, Duration::from_secs(3)).await;
        assert!(took >= Duration::from_millis(350), "closed early: {took:?}");

        let mut trickle = TcpStream::connect(server.addr).await.expect("connect");
        let started = Instant::now();
        let head = b"GET /slow HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut closed = false;
        for byte in head {
            if trickle.write_all(&[*byte]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rest = closed_within(&mut trickle, Duration::from_secs(3)).await;
        let took = started.elapsed();
        assert!(
            closed || took < Duration::from_millis(1500),
            "a byte every 50 ms kept the connection for {took:?} ({rest:?} after the last byte)"
        );
        // Half an HTTP/2 preface is no HTTP/1.1 head either.
        let mut preface = TcpStream::connect(server.addr).await.expect("connect");
        preface
            .write_all(b"PRI * HTTP/2.0\r\n")
            .await
            .expect("write");
        closed_within(&mut preface, Duration::from_secs(3)).await;
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_at_the_header_deadline() {
        let (server, _stop) = start(limits()).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut first = [0u8; 512];
        let n = stream.read(&mut first).await.expect("answer");
        assert!(
            first[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&first[..n])
        );
        let took = closed_within(&mut stream, Duration::from_secs(3)).await;
        assert!(took >= Duration::from_millis(300), "{took:?}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_fails_its_reader_at_the_body_deadline() {
        let (server, _stop) = start(limits()).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nsome")
            .await
            .expect("write");
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
            .await
            .expect("answered within 3 s")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.contains("timed out after 4 bytes"), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_its_answer_loses_the_connection_at_the_write_deadline() {
        let (server, _stop) = start(limits()).await;
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.figure("http_connections_open"), 1.0);
        // Never read: the server's writes stall on the full buffers, then fail.
        crate::testing::eventually(Duration::from_secs(5), "the connection is closed", || {
            let open = server.figure("http_connections_open");
            async move { open == 0.0 }
        })
        .await;
    }

    #[tokio::test]
    async fn at_the_cap_a_new_connection_takes_the_oldest_idle_ones_place_and_busy_ones_are_kept() {
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(30),
            ..limits()
        };
        let (server, _stop) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(server.addr).await.expect("connect"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Each new client is served at once, in the place of the oldest idle connection, and
        // stays (kept alive, idle) for the next round.
        for round in 0..3 {
            let mut client = TcpStream::connect(server.addr).await.expect("connect");
            client
                .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("write");
            let mut answer = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(2), client.read(&mut answer))
                .await
                .expect("answered at once")
                .expect("read");
            let answer = String::from_utf8_lossy(&answer[..n]).to_string();
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "round {round}: {answer}"
            );
            closed_within(&mut idle[round], Duration::from_secs(2)).await;
            idle.push(client);
        }
        assert!(server.figure("http_connections_evicted_total") >= 3.0);
        // Four requests in progress: nothing idle to let go, so one more is refused at once.
        let mut busy = Vec::new();
        for _ in 0..4 {
            busy.push(tokio::spawn({
                let addr = server.addr;
                async move {
                    let mut s = TcpStream::connect(addr).await.expect("connect");
                    request(&mut s, "/slow").await
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut refused = TcpStream::connect(server.addr).await.expect("connect");
        let answer = request(&mut refused, "/peer").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
        for b in busy {
            let answer = b.await.expect("task");
            assert!(
                answer.contains("done"),
                "a busy connection was kept: {answer}"
            );
        }
        assert_eq!(
            server.figure("http_connections_refused_total{reason=\"full\"}"),
            1.0
        );
    }

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_and_another_address_is_still_served() {
        let limits = Limits {
            max_connections_per_peer: 3,
            header_read_timeout: Duration::from_secs(30),
            ..limits()
        };
        let (server, _stop) = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_from("127.0.0.2", server.addr).await);
        }
        let mut fourth = connect_from("127.0.0.2", server.addr).await;
        let answer = request(&mut fourth, "/peer").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("HTTP_MAX_CONNECTIONS_PER_PEER"), "{answer}");
        let mut other = connect_from("127.0.0.3", server.addr).await;
        let answer = request(&mut other, "/peer").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains("127.0.0.3"),
            "the route sees its peer: {answer}"
        );
        // A slot of the address comes back when one of its connections goes.
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = connect_from("127.0.0.2", server.addr).await;
        let answer = request(&mut again, "/peer").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn shutdown_lets_the_request_in_flight_finish() {
        let (server, stop) = start(limits()).await;
        let request = tokio::spawn(async move {
            let mut s = TcpStream::connect(server.addr).await.expect("connect");
            request(&mut s, "/slow").await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop.send(());
        let answer = request.await.expect("task");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
