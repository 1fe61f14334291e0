//! The write routes: `POST /todos`, `PATCH`, `PUT` and `DELETE /todos/{id}`. Each reads its
//! request (see [`super::extract`]), runs its command and answers the todo with its `ETag`
//! (and `Location` for a created one, replayed or not).

use super::auth::{authorized_as, Access};
use super::extract::{idempotency_key, json_body, precondition, todo_id};
use super::{json_response, with_state, State};
use crate::commands::{Change, Created, Origin, Todo};
use crate::error::ApiError;
use crate::idempotency::Replayed;
use crate::input;
use bytes::Bytes;
use events::service::http::{answer, request_id, RouteName};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

fn todo_response(status: StatusCode, todo: &Todo) -> Response {
    let mut response = json_response(status, todo);
    set_etag(&mut response, todo.version);
    response
}

fn set_etag(response: &mut Response, version: i64) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
}

/// A created todo (or the replay of its creation): the todo, its `ETag` and its `Location`.
fn created(status: StatusCode, todo: &Todo) -> Response {
    let mut response = todo_response(status, todo);
    if let Ok(v) = HeaderValue::from_str(&format!("/todos/{}", todo.id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

pub(super) fn create(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos")
        .and(warp::post())
        .and(authorized_as(state.tokens.clone(), Access::Write))
        .and(request_id())
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(json_body(state.max_body_bytes))
        .and(with_state(state))
        .and_then(
            move |actor: String, id: String, key: Option<String>, body: Bytes, state: State| async move {
                let origin = Origin::new(&id, actor);
                answer::<ApiError, _>(state.metrics.http.clone(), id, route, async move {
                    let input = input::todo_input(&body)?;
                    let key = idempotency_key(key, &input)?;
                    match state.commands.create(input, key, &origin.traced()).await? {
                        Created::New(todo) => Ok(created(StatusCode::CREATED, &todo)),
                        Created::Replayed(Replayed { status, todo }) => {
                            let status = StatusCode::from_u16(status).map_err(|e| {
                                ApiError::Internal(anyhow::anyhow!(
                                    "stored idempotent answer has status {status}: {e}"
                                ))
                            })?;
                            let mut response = created(status, &todo);
                            response
                                .headers_mut()
                                .insert("idempotent-replayed", HeaderValue::from_static("true"));
                            Ok(response)
                        }
                    }
                })
                .await
            },
        )
}

fn update_route(
    state: State,
    method: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
    route: RouteName,
    parse: fn(&[u8]) -> Result<Change, ApiError>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos" / i64)
        .and(method)
        .and(authorized_as(state.tokens.clone(), Access::Write))
        .and(request_id())
        .and(warp::header::optional::<String>("if-match"))
        .and(json_body(state.max_body_bytes))
        .and(with_state(state))
        .and_then(
            move |id: i64,
                  actor: String,
                  rid: String,
                  if_match: Option<String>,
                  body: Bytes,
                  state: State| async move {
                let origin = Origin::new(&rid, actor);
                answer::<ApiError, _>(state.metrics.http.clone(), rid, route, async move {
                    let id = todo_id(id)?;
                    let change = parse(&body)?;
                    let precondition = precondition(if_match)?;
                    let todo = state
                        .commands
                        .update(id, change, precondition, &origin.traced())
                        .await?;
                    Ok(todo_response(StatusCode::OK, &todo))
                })
                .await
            },
        )
}

pub(super) fn patch(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    update_route(state, warp::patch(), route, |b| {
        input::todo_patch(b).map(Change::Patch)
    })
}

pub(super) fn put(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    update_route(state, warp::put(), route, |b| {
        input::todo_input(b).map(Change::Put)
    })
}

pub(super) fn delete(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos" / i64)
        .and(warp::delete())
        .and(authorized_as(state.tokens.clone(), Access::Write))
        .and(request_id())
        .and(warp::header::optional::<String>("if-match"))
        .and(with_state(state))
        .and_then(
            move |id: i64, actor: String, rid: String, if_match: Option<String>, state: State| async move {
                let origin = Origin::new(&rid, actor);
                answer::<ApiError, _>(state.metrics.http.clone(), rid, route, async move {
                    let id = todo_id(id)?;
                    let precondition = precondition(if_match)?;
                    let version = state
                        .commands
                        .delete(id, precondition, &origin.traced())
                        .await?;
                    let mut response = StatusCode::NO_CONTENT.into_response();
                    set_etag(&mut response, version);
                    Ok(response)
                })
                .await
            },
        )
}

/// `POST /todos/{id}/erase`: removes the todo's title and description from it and from every
/// event of its history (see `Commands::erase`). Takes a token of `OPERATOR_TOKENS` only;
/// closed (403) while that is unset.
pub(super) fn erase(
    state: State,
    route: RouteName,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("todos" / i64 / "erase")
        .and(warp::post())
        .and(authorized_as(state.tokens.clone(), Access::Erase))
        .and(request_id())
        .and(with_state(state))
        .and_then(
            move |id: i64, actor: String, rid: String, state: State| async move {
                let origin = Origin::new(&rid, actor);
                answer::<ApiError, _>(state.metrics.http.clone(), rid, route, async move {
                    let id = todo_id(id)?;
                    let erased = state.commands.erase(id, &origin.traced()).await?;
                    Ok(json_response(StatusCode::OK, &erased))
                })
                .await
            },
        )
}
