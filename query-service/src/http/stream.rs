//! `GET /todos/stream`: server-sent events, one per change the projection applies on any
//! replica (`event: todo` with the todo, or `event: deleted`), each with `id:` set to the
//! change's position in the command side's log and its data giving `id`, `version`,
//! `position`, `deleted`, `todo` and `lag_ms` (milliseconds from the write to the send).
//!
//! A client that reconnects with `Last-Event-ID: N` first gets what the read model holds past
//! position N (each todo at its current state, in the order of their last change), read page
//! by page through the `last_position` index as the client takes them, then the live changes,
//! none twice. A replay that would pass `STREAM_REPLAY_MAX_BYTES` or `STREAM_REPLAY_MAX_MS`
//! ends with `event: reload` instead: the client is that far behind, and reading the list
//! afresh is cheaper than the history.
//!
//! Bounds: at most `STREAM_MAX_SUBSCRIBERS` clients (one more is 503) and
//! `STREAM_MAX_PER_PEER` from one address (429); a client more than `STREAM_BUFFER_BYTES` of
//! changes behind gets a final `event: dropped` and is disconnected (the consumer never waits
//! for a client); a client that reads nothing at all is disconnected by the server's write
//! deadline (`HTTP_WRITE_TIMEOUT_MS`). A comment every 15 s keeps proxies from closing an idle
//! stream.

use super::{with_state, State};
use crate::changes::{Change, Hub, Item, Subscription};
use crate::error::ApiError;
use crate::store::Store;
use events::service::http::{answer, request_id, RouteName};
use events::service::server::{peer, Peer, PeerCounts, PeerPlace};
use futures_util::stream::{self, Stream, StreamExt};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warp::sse::Event;
use warp::{Filter, Rejection, Reply};

/// The first replay page is small, so the first change goes out at once; later pages are
/// larger.
const FIRST_PAGE: i64 = 50;
const PAGE: i64 = 500;
/// Events produced ahead of what a client took.
const AHEAD: usize = 64;

/// What the stream holds and allows: the hub its clients subscribe to, its places, its bounds.
#[derive(Clone)]
pub struct Streams {
    pub hub: Arc<Hub>,
    /// Clients served at once (`STREAM_MAX_SUBSCRIBERS`).
    slots: Arc<tokio::sync::Semaphore>,
    per_peer: PeerCounts,
    max_per_peer: usize,
    replay_max_bytes: usize,
    replay_max: Duration,
}

impl Streams {
    pub fn new(
        hub: Arc<Hub>,
        max_subscribers: usize,
        max_per_peer: usize,
        replay_max_bytes: usize,
        replay_max: Duration,
    ) -> Self {
        Self {
            hub,
            slots: Arc::new(tokio::sync::Semaphore::new(max_subscribers)),
            per_peer: PeerCounts::default(),
            max_per_peer: max_per_peer.max(1),
            replay_max_bytes,
            replay_max,
        }
    }

    /// A place for a client from `peer` (no address: warp's test requests), or why none.
    fn admit(&self, peer: Option<Peer>) -> Result<Place, ApiError> {
        let peer_place = match peer {
            Some(Peer(ip)) => Some(self.per_peer.take(ip, self.max_per_peer).ok_or_else(|| {
                ApiError::TooManyRequests(format!(
                    "this address has {} streams open, as many as one client may \
                     (STREAM_MAX_PER_PEER)",
                    self.max_per_peer
                ))
            })?),
            None => None,
        };
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err(ApiError::Busy(
                "every stream slot (STREAM_MAX_SUBSCRIBERS) is taken".into(),
            ));
        };
        Ok(Place {
            _slot: slot,
            _peer: peer_place,
        })
    }
}

/// A client's place, given back when its stream ends.
struct Place {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _peer: Option<PeerPlace>,
}

pub(super) fn stream(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("todos" / "stream")
        .and(warp::get())
        .and(request_id())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(peer())
        .and(with_state(state))
        .and_then(
            move |rid: String, last: Option<String>, peer: Option<Peer>, state: State| async move {
                answer::<ApiError, _>(state.metrics.http.clone(), rid, route, async move {
                    let after = match last.as_deref().map(str::trim) {
                        None | Some("") => None,
                        Some(raw) => Some(
                            raw.parse::<i64>()
                                .ok()
                                .filter(|p| (0..=events::limits::MAX_ID).contains(p))
                                .ok_or_else(|| {
                                    ApiError::BadRequest(format!(
                                        "Last-Event-ID must be a position this stream sent \
                                         (0 to {}); got {raw}.",
                                        events::limits::MAX_ID
                                    ))
                                })?,
                        ),
                    };
                    let streams = state.streams.clone();
                    let place = streams.admit(peer)?;
                    // Subscribed before reading the backlog: nothing applied in between is lost.
                    let live = streams.hub.subscribe();
                    let replay = after.map(|position| Replay {
                        store: state.store.clone(),
                        position,
                        page: FIRST_PAGE,
                        sent_bytes: 0,
                        started: Instant::now(),
                        max_bytes: streams.replay_max_bytes,
                        max: streams.replay_max,
                    });
                    // Produced by a task of its own, a few events ahead of what the client took
                    // (the store's cursors cannot be shared between threads, as a response
                    // body must be); it ends when the client goes.
                    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(AHEAD);
                    tokio::spawn(async move {
                        let mut events = std::pin::pin!(changes(replay, live));
                        loop {
                            // A client that went is noticed at once, not at the next change:
                            // the task, its hub subscription and its store reads end with it.
                            let event = tokio::select! {
                                _ = tx.closed() => break,
                                event = events.next() => event,
                            };
                            let Some(event) = event else { break };
                            if tx.send(event).await.is_err() {
                                break;
                            }
                        }
                    });
                    let events = stream::unfold(rx, |mut rx| async move {
                        rx.recv().await.map(|event| (event, rx))
                    })
                    .map(move |e| {
                        let _held = &place; // the places are given back when the client goes
                        Ok::<Event, Infallible>(e)
                    });
                    let keep_alive = warp::sse::keep_alive()
                        .interval(Duration::from_secs(15))
                        .text("keep-alive");
                    Ok(warp::sse::reply(keep_alive.stream(events)).into_response())
                })
                .await
            },
        )
}

/// A reconnecting client's catch-up from the read model.
struct Replay {
    store: Store,
    /// The last position sent.
    position: i64,
    page: i64,
    sent_bytes: usize,
    started: Instant,
    max_bytes: usize,
    max: Duration,
}

enum Phase {
    Replaying(Replay),
    Live,
    Done,
}

struct Client {
    phase: Phase,
    live: Subscription,
    /// The version each todo was last sent at (by the replay): the live changes it already has
    /// are not sent twice. Bounded by the replay's bytes.
    sent: HashMap<i64, i64>,
}

/// The replay (if any), page by page as the client takes them, then the live changes.
fn changes(replay: Option<Replay>, live: Subscription) -> impl Stream<Item = Event> {
    let client = Client {
        phase: replay.map_or(Phase::Live, Phase::Replaying),
        live,
        sent: HashMap::new(),
    };
    stream::unfold(client, |mut client| async move {
        loop {
            match std::mem::replace(&mut client.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Replaying(mut replay) => {
                    if replay.started.elapsed() > replay.max {
                        let reload = reload(format!(
                            "more than {} ms of changes to catch up on (STREAM_REPLAY_MAX_MS); \
                             read the list again",
                            replay.max.as_millis()
                        ));
                        return Some((stream::iter(vec![reload]), client));
                    }
                    let page = match replay.store.changed_after(replay.position, replay.page).await
                    {
                        Ok(page) => page,
                        Err(err) => {
                            tracing::warn!(error = %err, "stream replay could not read the read model");
                            let reload = reload(
                                "the read model could not be read to catch up; read the list again"
                                    .into(),
                            );
                            return Some((stream::iter(vec![reload]), client));
                        }
                    };
                    let more = page.more;
                    replay.position = page.next;
                    replay.page = PAGE;
                    let mut events: Vec<Event> = Vec::with_capacity(page.changes.len());
                    let mut past_bound = false;
                    for c in &page.changes {
                        let (event, bytes) = event(c);
                        // The change that would pass the bound is not sent: reload instead.
                        if replay.sent_bytes + bytes > replay.max_bytes {
                            past_bound = true;
                            break;
                        }
                        replay.sent_bytes += bytes;
                        client.sent.insert(c.id, c.version);
                        events.push(event);
                    }
                    if past_bound {
                        events.push(reload(format!(
                            "more than {} bytes of changes to catch up on \
                             (STREAM_REPLAY_MAX_BYTES); read the list again",
                            replay.max_bytes
                        )));
                        return Some((stream::iter(events), client));
                    }
                    client.phase = if more {
                        Phase::Replaying(replay)
                    } else {
                        Phase::Live
                    };
                    if !events.is_empty() {
                        return Some((stream::iter(events), client));
                    }
                }
                Phase::Live => match client.live.recv().await {
                    Some(Item::Changes(batch)) => {
                        client.phase = Phase::Live;
                        let sent = &client.sent;
                        let fresh: Vec<Event> = batch
                            .changes
                            .iter()
                            .filter(|c| sent.get(&c.id).is_none_or(|v| *v < c.version))
                            .map(|c| event(c).0)
                            .collect();
                        if !fresh.is_empty() {
                            return Some((stream::iter(fresh), client));
                        }
                    }
                    Some(Item::Interrupted(reason)) => {
                        let last = Event::default()
                            .event("dropped")
                            .data(serde_json::json!({ "reason": reason }).to_string());
                        return Some((stream::iter(vec![last]), client));
                    }
                    None => return None,
                },
            }
        }
    })
    .flatten()
}

fn reload(reason: String) -> Event {
    Event::default()
        .event("reload")
        .data(serde_json::json!({ "reason": reason }).to_string())
}

/// A change's event, and its data's size.
fn event(change: &Change) -> (Event, usize) {
    let lag_ms = change.lag_ms(chrono::Utc::now());
    let data = serde_json::json!({
        "id": change.id,
        "version": change.version,
        "position": change.position,
        "deleted": change.deleted,
        "todo": change.todo,
        "lag_ms": lag_ms,
    })
    .to_string();
    let bytes = data.len();
    (
        Event::default()
            .id(change.position.to_string())
            .event(if change.deleted { "deleted" } else { "todo" })
            .data(data),
        bytes,
    )
}
