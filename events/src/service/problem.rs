//! The one shape of every error answer: `application/problem+json` (RFC 9457) with `type`,
//! `title`, `status`, `detail` and, where a request named bad fields or parameters, `errors`.
//! Each service's `ApiError` decides the words; this module writes them.

use serde::Serialize;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

/// One invalid field of a request body, or one invalid query parameter.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A problem document. `status` is written from the response's status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub title: &'a str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<&'a [FieldError]>,
    /// On 412: the version the todo is at, so the client can re-read and retry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<i64>,
}

impl<'a> Problem<'a> {
    pub fn new(kind: &'a str, title: &'a str, detail: String) -> Self {
        Self {
            kind,
            title,
            status: 0,
            detail,
            errors: None,
            current_version: None,
        }
    }

    /// The response: the document with its content type, and `Retry-After: 1` on 503 (the
    /// request changed nothing and may be sent again).
    pub fn into_response(mut self, status: StatusCode) -> Response {
        self.status = status.as_u16();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = Response::new(body.into());
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
