//! The operator's routes over the dead-letter queue, the same as `query-service dead-letters`
//! (`crate::dead_letters`), guarded by `OPERATOR_TOKENS`:
//!
//! - `GET /dead-letters`: every message of the dead-letter queue (at most [`LISTED`]), each
//!   with its event id, todo, version, type, and when and why it was refused; all stay there.
//! - `POST /dead-letters/redrive?all=true` or `?event_ids=<id>,<id>`: those back to the live
//!   queue (with the broker user of `OPERATOR_AMQP_URL`, else `AMQP_URL`: redriving publishes
//!   into the live queue, which query-service's own user may not).
//! - `POST /dead-letters/purge?confirm=true`: drops them all.
//!
//! `OPERATOR_TOKENS` unset: the routes answer 403 and do nothing. Set: each needs
//! `Authorization: Bearer <one of them>` (401 without, 403 with another), checked before the
//! broker is asked. Tokens are kept as SHA-256 digests; they never reach a log or an answer.

use super::{query, with_state, State};
use crate::dead_letters::{self, DeadLetter, Selection};
use crate::error::{ApiError, FieldError};
use events::service::http::{answer, json_response, request_id, RouteName};
use serde::Serialize;
use std::collections::HashMap;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

/// Most dead letters `GET /dead-letters` lists (the CLI lists up to [`dead_letters::MOST`]).
pub const LISTED: usize = 1_000;

/// What the operator's routes need: who may call them and with which broker user.
#[derive(Clone, Default)]
pub struct Operator {
    tokens: Vec<events::service::tokens::Token>,
    /// Lists and purges with it (query-service's own user).
    amqp_url: String,
    /// Redrives with it (`OPERATOR_AMQP_URL`, else `amqp_url`).
    redrive_url: String,
    queue: String,
}

impl Operator {
    pub fn new(tokens: &str, amqp_url: &str, operator_amqp_url: &str, queue: &str) -> Self {
        Self {
            tokens: events::service::tokens::parse_list(tokens),
            amqp_url: amqp_url.into(),
            redrive_url: if operator_amqp_url.is_empty() {
                amqp_url.into()
            } else {
                operator_amqp_url.into()
            },
            queue: queue.into(),
        }
    }

    /// `off` or `token`, as `/ready` could report it.
    pub fn mode(&self) -> &'static str {
        if self.tokens.is_empty() {
            "off"
        } else {
            "token"
        }
    }

    fn check(&self, header: Option<&str>) -> Result<(), ApiError> {
        if self.tokens.is_empty() {
            return Err(ApiError::Forbidden(
                "The operator routes are off: set OPERATOR_TOKENS to use them.".into(),
            ));
        }
        let Some(token) = header.and_then(events::service::tokens::bearer) else {
            return Err(ApiError::Unauthorized(
                "An operator route needs Authorization: Bearer <one of OPERATOR_TOKENS>.".into(),
            ));
        };
        let digest = events::service::tokens::digest(token);
        if events::service::tokens::find(&self.tokens, &digest).is_some() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "That token is not one of OPERATOR_TOKENS.".into(),
            ))
        }
    }
}

/// One dead letter as the route answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterView {
    pub event_id: String,
    pub todo_id: Option<i64>,
    pub version: Option<i64>,
    pub event_type: String,
    /// RFC 3339, when the consumer refused it (empty when the broker dead-lettered it).
    pub refused_at: String,
    pub reason: String,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(l: &DeadLetter) -> Self {
        Self {
            event_id: l.event_id.clone(),
            todo_id: l.todo_id,
            version: l.version,
            event_type: l.event_type.clone(),
            refused_at: l.refused_at.clone(),
            reason: l.reason.clone(),
        }
    }
}

/// `GET /dead-letters`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    pub queue: String,
    /// The dead letters, oldest first (at most 1,000).
    pub dead_letters: Vec<DeadLetterView>,
    /// More were there than listed.
    pub truncated: bool,
}

/// `POST /dead-letters/redrive`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RedriveAnswer {
    pub redriven: Vec<DeadLetterView>,
    /// Dead letters left where they were.
    pub kept: usize,
    /// Event ids asked for that the queue did not hold.
    pub missing: Vec<String>,
    /// Why the redrive stopped before the end (the broker refused or did not confirm a copy):
    /// those in `redriven` were sent, the rest stay in the dead-letter queue. Null when it ran
    /// to the end.
    pub failed: Option<String>,
}

/// `POST /dead-letters/purge`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurgeAnswer {
    pub purged: u32,
}

/// The broker away or refusing: 503, nothing changed that was not confirmed.
fn broker(err: anyhow::Error) -> ApiError {
    tracing::warn!(error = ?err, "dead-letter queue not reachable");
    ApiError::BrokerUnavailable
}

fn only(params: &HashMap<String, String>, known: &[&str]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    super::params::unknown_params(params, known, &mut errors);
    errors
}

/// An operator route: `path` (with its method), answered by `work` with the state and the
/// query's parameters once the bearer token passed [`Operator::check`].
fn guarded<F, Fut>(
    path: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
    state: State,
    route: RouteName,
    work: F,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone
where
    F: Fn(State, HashMap<String, String>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response, ApiError>> + Send,
{
    path.and(request_id())
        .and(warp::header::optional::<String>("authorization"))
        .and(with_state(state))
        .and(query())
        .and_then(
            move |rid: String,
                  auth: Option<String>,
                  state: State,
                  params: HashMap<String, String>| {
                let work = work.clone();
                async move {
                    answer::<ApiError, _>(state.metrics.http.clone(), rid, route, async move {
                        state.operator.check(auth.as_deref())?;
                        work(state, params).await
                    })
                    .await
                }
            },
        )
}

pub(super) fn list(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    guarded(
        warp::path!("dead-letters").and(warp::get()),
        state,
        route,
        |state: State, params: HashMap<String, String>| async move {
            let unknown = only(&params, &[]);
            if !unknown.is_empty() {
                return Err(ApiError::InvalidQuery(unknown));
            }
            let op = &state.operator;
            let letters = dead_letters::list_at_most(&op.amqp_url, &op.queue, LISTED + 1)
                .await
                .map_err(broker)?;
            let truncated = letters.len() > LISTED;
            Ok(json_response(
                StatusCode::OK,
                &DeadLetterList {
                    queue: events::dead_letter_queue(&op.queue),
                    dead_letters: letters.iter().take(LISTED).map(Into::into).collect(),
                    truncated,
                },
            ))
        },
    )
}

pub(super) fn redrive(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    guarded(
        warp::path!("dead-letters" / "redrive").and(warp::post()),
        state,
        route,
        |state: State, params: HashMap<String, String>| async move {
            let mut errors = only(&params, &["all", "event_ids"]);
            let selection = match (
                params.get("all").map(String::as_str),
                params.get("event_ids"),
            ) {
                (Some("true"), None) => Some(Selection::All),
                (None, Some(ids)) => {
                    let ids: Vec<String> = ids
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect();
                    if ids.is_empty() || ids.len() > 1_000 {
                        errors.push(FieldError::new(
                            "event_ids",
                            "1 to 1,000 event ids, separated by commas",
                        ));
                    }
                    Some(Selection::EventIds(ids))
                }
                _ => {
                    errors.push(FieldError::new(
                        "all",
                        "say which: all=true, or event_ids=<id>,<id> (not both)",
                    ));
                    None
                }
            };
            let (Some(selection), true) = (selection, errors.is_empty()) else {
                return Err(ApiError::InvalidQuery(errors));
            };
            let op = &state.operator;
            let report = dead_letters::redrive(&op.redrive_url, &op.queue, &selection)
                .await
                .map_err(broker)?;
            Ok(json_response(
                StatusCode::OK,
                &RedriveAnswer {
                    redriven: report.sent.iter().map(Into::into).collect(),
                    kept: report.kept,
                    missing: report.missing,
                    failed: report.failed,
                },
            ))
        },
    )
}

pub(super) fn purge(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    guarded(
        warp::path!("dead-letters" / "purge").and(warp::post()),
        state,
        route,
        |state: State, params: HashMap<String, String>| async move {
            let mut errors = only(&params, &["confirm"]);
            if params.get("confirm").map(String::as_str) != Some("true") {
                errors.push(FieldError::new(
                    "confirm",
                    "purging drops every dead letter for good: say so with confirm=true",
                ));
            }
            if !errors.is_empty() {
                return Err(ApiError::InvalidQuery(errors));
            }
            let op = &state.operator;
            let purged = dead_letters::purge(&op.amqp_url, &op.queue)
                .await
                .map_err(broker)?;
            Ok(json_response(StatusCode::OK, &PurgeAnswer { purged }))
        },
    )
}
