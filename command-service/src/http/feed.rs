//! `GET /events?after=&limit=`: the event feed, its query parsing and its `Link` to the next
//! page.

use super::auth::{authorized, Access};
use super::{json_response, with_state, State};
use crate::error::{ApiError, FieldError};
use events::service::http::{answer, request_id, RouteName};
use std::collections::HashMap;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

const FEED_DEFAULT_LIMIT: i64 = 100;
/// The largest page of `GET /events`.
pub const FEED_MAX_LIMIT: i64 = 1000;
/// The header of a `GET /events` page that gives the head of the log when the page was read:
/// the highest position stamped. Every event committed before the request is at or below it.
pub const LOG_HEAD: &str = "log-head";

#[derive(Debug, PartialEq, Eq)]
struct FeedQuery {
    after: i64,
    limit: i64,
}

fn feed_query(params: &HashMap<String, String>) -> Result<FeedQuery, ApiError> {
    let mut errors = Vec::new();
    for key in params.keys().filter(|k| *k != "after" && *k != "limit") {
        errors.push(FieldError::new(key.clone(), "unknown query parameter"));
    }
    let after = match params.get("after") {
        None => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (0..=events::limits::MAX_ID).contains(&n) => n,
            _ => {
                errors.push(FieldError::new(
                    "after",
                    format!(
                        "must be an integer from 0 to {}, got {v:?}",
                        events::limits::MAX_ID
                    ),
                ));
                0
            }
        },
    };
    let limit = match params.get("limit") {
        None => FEED_DEFAULT_LIMIT,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=FEED_MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.push(FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {FEED_MAX_LIMIT}, got {v:?}"),
                ));
                0
            }
        },
    };
    if errors.is_empty() {
        Ok(FeedQuery { after, limit })
    } else {
        Err(ApiError::InvalidQuery(errors))
    }
}

pub(super) fn feed(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("events")
        .and(warp::get())
        .and(authorized(state.tokens.clone(), Access::Feed))
        .and(request_id())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_state(state))
        .and_then(
            move |rid: String, params: HashMap<String, String>, state: State| async move {
                answer::<ApiError, _>(state.metrics.http.clone(), rid, route, async move {
                    let q = feed_query(&params)?;
                    let page = state.commands.feed(q.after, q.limit).await?;
                    let events = page.events;
                    let mut response = json_response(StatusCode::OK, &events);
                    response
                        .headers_mut()
                        .insert(LOG_HEAD, HeaderValue::from(page.head));
                    if events.len() as i64 == q.limit {
                        if let Some(last) = events.last() {
                            let link = format!(
                                "</events?after={}&limit={}>; rel=\"next\"",
                                last.position, q.limit
                            );
                            if let Ok(v) = HeaderValue::from_str(&link) {
                                response.headers_mut().insert(header::LINK, v);
                            }
                        }
                    }
                    Ok(response)
                })
                .await
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_query_defaults_and_errors() {
        let q = |pairs: &[(&str, &str)]| {
            feed_query(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(
            q(&[]).expect("defaults"),
            FeedQuery {
                after: 0,
                limit: 100
            }
        );
        assert_eq!(
            q(&[("after", "7"), ("limit", "5")]).expect("given"),
            FeedQuery { after: 7, limit: 5 }
        );
        for bad in [
            vec![("after", "-1")],
            vec![("after", "x")],
            vec![("after", "9007199254740992")],
            vec![("limit", "0")],
            vec![("limit", "1001")],
            vec![("cursor", "1")],
        ] {
            assert!(q(&bad).is_err(), "{bad:?}");
        }
    }
}
