//! `GET /todos/stream`: server-sent events, one per change the projection applies in this
//! process (`event: todo` with the todo, or `event: deleted`), each with `id:` set to the
//! change's position in the command side's log and its data giving `id`, `version`,
//! `position`, `deleted`, `todo` and `lag_ms` (milliseconds from the write to the send).
//!
//! A client that reconnects with `Last-Event-ID: N` first gets what the read model holds past
//! position N (each todo at its current state, oldest change first), then the live changes,
//! none twice. A comment every 15 s keeps proxies from closing an idle stream. At most
//! `STREAM_MAX_SUBSCRIBERS` clients at once (one more is 503); a client more than
//! `STREAM_BUFFER` batches behind gets a final `dropped` event and is disconnected: the
//! consumer never waits for a client.

use super::{with_state, State};
use crate::changes::{Change, Changes};
use crate::error::ApiError;
use events::service::http::{answer, request_id, RouteName};
use futures_util::stream::{self, Stream, StreamExt};
use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use warp::sse::Event;
use warp::{Filter, Rejection, Reply};

/// Changes read from the read model per page when catching a reconnecting client up.
const REPLAY_PAGE: i64 = 500;

pub(super) fn stream(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("todos" / "stream")
        .and(warp::get())
        .and(request_id())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(with_state(state))
        .and_then(
            move |rid: String, last: Option<String>, state: State| async move {
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
                    let Ok(slot) = state.stream_slots.clone().try_acquire_owned() else {
                        return Err(ApiError::Unavailable(
                            "every stream slot (STREAM_MAX_SUBSCRIBERS) is taken".into(),
                        ));
                    };
                    // Subscribed before reading the backlog: nothing applied in between is lost.
                    let live = state.changes.subscribe();
                    let mut backlog = Vec::new();
                    if let Some(mut position) = after {
                        loop {
                            let page = state.store.changed_after(position, REPLAY_PAGE).await?;
                            let full = page.len() as i64 == REPLAY_PAGE;
                            position = page.last().map_or(position, |c| c.position);
                            backlog.extend(page);
                            if !full {
                                break;
                            }
                        }
                    }
                    // The live changes the backlog already holds are not sent twice.
                    let sent: HashSet<(i64, i64)> =
                        backlog.iter().map(|c| (c.id, c.version)).collect();
                    let events = stream::iter(backlog.into_iter().map(event))
                        .chain(live_events(live, sent))
                        .map(move |e| {
                            let _held = &slot; // the slot is freed when the client goes
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

/// The live changes but those in `sent`; ends with a `dropped` event when the client fell
/// further behind than the buffer.
fn live_events(
    live: tokio::sync::broadcast::Receiver<Changes>,
    sent: HashSet<(i64, i64)>,
) -> impl Stream<Item = Event> {
    stream::unfold(Some((live, sent)), |state| async move {
        let (mut live, sent) = state?;
        loop {
            match live.recv().await {
                Ok(batch) => {
                    let fresh: Vec<Event> = batch
                        .iter()
                        .filter(|c| !sent.contains(&(c.id, c.version)))
                        .map(|c| event(c.clone()))
                        .collect();
                    if !fresh.is_empty() {
                        return Some((stream::iter(fresh), Some((live, sent))));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    let last = Event::default().event("dropped").data(format!(
                        "{{\"reason\":\"behind by {missed} batches; reconnect with Last-Event-ID\"}}"
                    ));
                    return Some((stream::iter(vec![last]), None));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .flatten()
}

fn event(change: Change) -> Event {
    let lag_ms = change.lag_ms(chrono::Utc::now());
    let data = serde_json::json!({
        "id": change.id,
        "version": change.version,
        "position": change.position,
        "deleted": change.deleted,
        "todo": change.todo,
        "lag_ms": lag_ms,
    });
    Event::default()
        .id(change.position.to_string())
        .event(if change.deleted { "deleted" } else { "todo" })
        .data(data.to_string())
}
