//! The one error policy of the read API: every failure is an [`ApiError`], answered as
//! `application/problem+json` (RFC 9457) by [`ApiError::into_response`] alone. Bad query
//! parameters are 400 and name each parameter; a store that cannot be reached is 503 with a
//! generic body (the cause goes to the log).

use warp::http::StatusCode;
use warp::reply::Response;

pub use events::service::problem::FieldError;
use events::service::problem::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid query parameters")]
    InvalidQuery(Vec<FieldError>),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("read model behind: has version {have:?}, asked for {want}")]
    Behind { have: Option<i64>, want: i64 },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Every place of a bounded resource is taken (stream slots): 503, saying which.
    #[error("busy: {0}")]
    Busy(String),
    /// An operator route without a bearer token: 401.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// An operator route with a token that may not, or with the routes off: 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The broker did not answer an operator route: 503.
    #[error("broker unavailable")]
    BrokerUnavailable,
    /// One client holds as much of a resource as one client may: 429, saying which.
    #[error("too many requests: {0}")]
    TooManyRequests(String),
    /// Anything else: a bug, or a stored document this version cannot read. 500, with the
    /// cause in the log only.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidQuery(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Behind { .. }
            | ApiError::Unavailable(_)
            | ApiError::Busy(_)
            | ApiError::BrokerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Unavailable(cause) => tracing::warn!(%cause, "read model store unavailable"),
            ApiError::Internal(err) => tracing::error!(error = ?err, "request failed"),
            _ => {}
        }
        let (kind, title, detail) = match &self {
            ApiError::InvalidQuery(errors) => (
                "/problems/invalid-query",
                "Invalid query parameters",
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            ApiError::BadRequest(m) => ("/problems/bad-request", "Bad request", m.clone()),
            ApiError::NotFound(m) => ("/problems/not-found", "Not found", m.clone()),
            ApiError::MethodNotAllowed => (
                "/problems/method-not-allowed",
                "Method not allowed",
                "This service serves reads only; writes go to command-service on port 5001."
                    .into(),
            ),
            ApiError::Behind { have, want } => (
                "/problems/read-model-behind",
                "Read model not yet at the requested version",
                match have {
                    Some(h) => format!("The read model holds version {h}; version {want} has not arrived yet. Retry shortly."),
                    None => format!("The read model does not hold this todo yet; version {want} has not arrived. Retry shortly."),
                },
            ),
            ApiError::Unavailable(_) => (
                "/problems/unavailable",
                "Service unavailable",
                "The read model store is unavailable. Retry later.".into(),
            ),
            ApiError::Busy(m) => ("/problems/busy", "Service busy", format!("{m}; retry shortly.")),
            ApiError::Unauthorized(m) => ("/problems/unauthorized", "Unauthorized", m.clone()),
            ApiError::Forbidden(m) => ("/problems/forbidden", "Forbidden", m.clone()),
            ApiError::BrokerUnavailable => (
                "/problems/broker-unavailable",
                "Broker unavailable",
                "RabbitMQ did not answer; nothing was changed that it did not confirm. Retry later."
                    .into(),
            ),
            ApiError::TooManyRequests(m) => (
                "/problems/too-many-requests",
                "Too many requests",
                format!("{m}; close one first."),
            ),
            ApiError::Internal(_) => (
                "/problems/internal",
                "Internal server error",
                "An unexpected error occurred.".into(),
            ),
        };
        let mut problem = Problem::new(kind, title, detail);
        if let ApiError::InvalidQuery(errors) = &self {
            problem.errors = Some(errors);
        }
        let mut response = problem.into_response(status);
        if let ApiError::Unauthorized(_) = &self {
            response.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Only a store that cannot serve now (out of reach, restarting, a primary stepping down) is
/// 503 "retry later"; any other failure of a read is a fault retrying will not mend: 500.
impl From<crate::store::ReadError> for ApiError {
    fn from(err: crate::store::ReadError) -> Self {
        use crate::store::ReadError;
        match err {
            ReadError::Unavailable(err) => ApiError::Unavailable(err.to_string()),
            fault @ ReadError::Fault(_) => ApiError::Internal(anyhow::Error::new(fault)),
        }
    }
}

/// Maps warp's own rejections (no route, wrong method, bad header) to problem responses.
pub async fn handle_rejection(
    rejection: warp::Rejection,
) -> Result<Response, std::convert::Infallible> {
    use events::service::http::{rejected, Rejected};
    let error = match rejected(&rejection) {
        Rejected::NotFound => ApiError::NotFound("No such route.".into()),
        Rejected::MethodNotAllowed => ApiError::MethodNotAllowed,
        Rejected::BadRequest(m) | Rejected::UnsupportedMediaType(m) | Rejected::Forbidden(m) => {
            ApiError::BadRequest(m)
        }
        Rejected::Unhandled(r) => ApiError::Internal(anyhow::anyhow!("unhandled rejection: {r}")),
    };
    Ok(error.into_response())
}

/// How a handler's error is answered (see [`ApiError::into_response`]).
impl From<ApiError> for Response {
    fn from(err: ApiError) -> Self {
        err.into_response()
    }
}
