//! The one error policy of the HTTP API.
//!
//! Every failure a handler can meet is an [`ApiError`]; [`ApiError::into_response`] is the only
//! place that turns one into a response, always `application/problem+json` (RFC 9457) with
//! `type`, `title`, `status`, `detail` and, for validation, the offending fields.
//! - Client mistakes (400, 404, 405, 408, 412, 413, 415, 422) say exactly what was wrong.
//! - A store that cannot be reached is 503: the request changed nothing and can be retried.
//! - Anything else is 500 with a generic body; the cause chain goes to the log, never to the
//!   client.

use warp::http::StatusCode;
use warp::reply::Response;

pub use events::service::problem::FieldError;
use events::service::problem::Problem;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("request body over {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// The body did not arrive whole within `HTTP_BODY_READ_TIMEOUT_MS`.
    #[error("request body not received within {ms} ms")]
    RequestTimeout { ms: u64 },
    #[error("invalid request body")]
    Validation(Vec<FieldError>),
    #[error("invalid query parameters")]
    InvalidQuery(Vec<FieldError>),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// `If-Match` did not match; `current` is the todo's version, `None` when it does not exist
    /// (`If-Match: *` on a missing todo).
    #[error("precondition failed: current version is {current:?}")]
    PreconditionFailed { current: Option<i64> },
    #[error("Idempotency-Key reused with a different request body")]
    IdempotencyKeyReused,
    /// No usable `Authorization: Bearer` while `WRITE_TOKENS` is set.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A bearer token that may not do what the request asks (not one of `WRITE_TOKENS` for a
    /// write; for `GET /events`, not one of `FEED_TOKENS`, or of `WRITE_TOKENS` while that is
    /// unset): the detail says which.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A browser request from an origin `CORS_ORIGINS` does not list.
    #[error("cross-origin request refused: {0}")]
    CrossOrigin(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) | ApiError::InvalidQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Validation(_) | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::CrossOrigin(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn type_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::MalformedJson(_) => ("/problems/malformed-json", "Malformed JSON"),
            ApiError::BadRequest(_) => ("/problems/bad-request", "Bad request"),
            ApiError::UnsupportedMediaType(_) => {
                ("/problems/unsupported-media-type", "Unsupported media type")
            }
            ApiError::PayloadTooLarge { .. } => {
                ("/problems/payload-too-large", "Payload too large")
            }
            ApiError::RequestTimeout { .. } => ("/problems/request-timeout", "Request timeout"),
            ApiError::Validation(_) => ("/problems/validation", "Invalid request"),
            ApiError::InvalidQuery(_) => ("/problems/invalid-query", "Invalid query parameters"),
            ApiError::NotFound(_) => ("/problems/not-found", "Not found"),
            ApiError::Unauthorized(_) => ("/problems/unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => ("/problems/forbidden", "Forbidden"),
            ApiError::CrossOrigin(_) => ("/problems/cross-origin", "Origin not allowed"),
            ApiError::MethodNotAllowed => ("/problems/method-not-allowed", "Method not allowed"),
            ApiError::PreconditionFailed { .. } => {
                ("/problems/precondition-failed", "Precondition failed")
            }
            ApiError::IdempotencyKeyReused => (
                "/problems/idempotency-key-reused",
                "Idempotency-Key reused with a different request",
            ),
            ApiError::Unavailable(_) => ("/problems/unavailable", "Service unavailable"),
            ApiError::Internal(_) => ("/problems/internal", "Internal server error"),
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::MalformedJson(m) => format!("The body is not valid JSON: {m}"),
            ApiError::BadRequest(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::NotFound(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m) => m.clone(),
            ApiError::PayloadTooLarge { limit } => {
                format!("The request body is larger than the limit of {limit} bytes.")
            }
            ApiError::RequestTimeout { ms } => format!(
                "The request body did not arrive whole within {ms} ms; nothing was changed."
            ),
            ApiError::Validation(errors) | ApiError::InvalidQuery(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            ApiError::MethodNotAllowed => {
                "This route does not support the request's method.".into()
            }
            ApiError::PreconditionFailed {
                current: Some(current),
            } => format!(
                "If-Match does not match the current version; the todo is at version {current}."
            ),
            ApiError::PreconditionFailed { current: None } => {
                "If-Match: * requires a current version, and the todo does not exist.".into()
            }
            ApiError::IdempotencyKeyReused => {
                "This Idempotency-Key was first used with a different request body.".into()
            }
            ApiError::CrossOrigin(m) => format!("{m}; CORS_ORIGINS lists the origins allowed."),
            ApiError::Unavailable(_) => {
                "The store is unavailable; nothing was changed. Retry later.".into()
            }
            ApiError::Internal(_) => "An unexpected error occurred; nothing was changed.".into(),
        }
    }

    /// Builds the problem+json response and logs server-side failures with their cause.
    pub fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(err) => tracing::error!(error = ?err, "request failed"),
            ApiError::Unavailable(cause) => tracing::warn!(%cause, "store unavailable"),
            _ => {}
        }
        let (kind, title) = self.type_and_title();
        let mut problem = Problem::new(kind, title, self.detail());
        if let ApiError::Validation(errors) | ApiError::InvalidQuery(errors) = &self {
            problem.errors = Some(errors);
        }
        if let ApiError::PreconditionFailed { current } = &self {
            problem.current_version = *current;
        }
        let mut response = problem.into_response(status);
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot be reused.
            response.headers_mut().insert(
                warp::http::header::CONNECTION,
                warp::http::HeaderValue::from_static("close"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The edge between the commands and HTTP: each way a command fails, as its answer.
impl From<crate::commands::CommandError> for ApiError {
    fn from(err: crate::commands::CommandError) -> Self {
        use crate::commands::CommandError;
        match err {
            CommandError::NotFound(id) => ApiError::NotFound(format!("Todo {id} does not exist.")),
            CommandError::PreconditionFailed { current } => {
                ApiError::PreconditionFailed { current }
            }
            CommandError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            CommandError::Unavailable(cause) => ApiError::Unavailable(cause),
            CommandError::Internal(err) => ApiError::Internal(err),
        }
    }
}

/// Maps warp's own rejections (routing, headers, query strings) to problem responses. Handlers
/// never reject: they answer, so this sees only what failed before a handler ran.
pub async fn handle_rejection(
    rejection: warp::Rejection,
) -> Result<Response, std::convert::Infallible> {
    use events::service::http::{rejected, Rejected};
    let error = if let Some(e) = rejection.find::<ApiError>() {
        // Custom rejections from our own filters (body limits) carry an ApiError.
        match e {
            ApiError::PayloadTooLarge { limit } => ApiError::PayloadTooLarge { limit: *limit },
            ApiError::RequestTimeout { ms } => ApiError::RequestTimeout { ms: *ms },
            ApiError::BadRequest(m) => ApiError::BadRequest(m.clone()),
            ApiError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m.clone()),
            ApiError::Unauthorized(m) => ApiError::Unauthorized(m.clone()),
            ApiError::Forbidden(m) => ApiError::Forbidden(m.clone()),
            other => ApiError::BadRequest(other.to_string()),
        }
    } else {
        match rejected(&rejection) {
            Rejected::NotFound => ApiError::NotFound("No such route.".into()),
            Rejected::MethodNotAllowed => ApiError::MethodNotAllowed,
            Rejected::BadRequest(m) => ApiError::BadRequest(m),
            Rejected::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m),
            Rejected::Forbidden(m) => ApiError::CrossOrigin(m),
            Rejected::Unhandled(r) => {
                ApiError::Internal(anyhow::anyhow!("unhandled rejection: {r}"))
            }
        }
    };
    Ok(error.into_response())
}

/// How a handler's error is answered (see [`ApiError::into_response`]).
impl From<ApiError> for Response {
    fn from(err: ApiError) -> Self {
        err.into_response()
    }
}
