//! `GET /`: the live page (`page.html`, plain HTML, CSS and JavaScript compiled into the
//! binary; nothing loaded from elsewhere). It lists the read model, keeps it current from
//! `GET /todos/stream`, shows `/stats`, and writes through command-service on the same host's
//! port 5001 (`?command=<url>` to point it elsewhere), showing for each write its version and
//! how long after its answer the read side had it.

use warp::http::{header, HeaderValue};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

const PAGE: &str = include_str!("page.html");

pub(super) fn page() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end().and(warp::get()).map(|| {
        let mut response = PAGE.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        response
    })
}
