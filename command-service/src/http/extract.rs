//! What the handlers take from a request: the JSON body (content type checked, size limited),
//! a todo id from the path, `If-Match` as a [`Precondition`] and `Idempotency-Key` as an
//! [`idempotency::Key`].

use crate::commands::Precondition;
use crate::error::ApiError;
use crate::idempotency;
use crate::input;
use bytes::{Buf, Bytes, BytesMut};
use events::service::server::BodyReadTimeout;
use futures_util::{Stream, StreamExt};
use warp::{Filter, Rejection};

/// Reads a JSON request body: 415 unless the content type is JSON, 413 past the limit (by
/// `Content-Length` when given, else while reading a chunked body), 408 when it does not arrive
/// whole within `HTTP_BODY_READ_TIMEOUT_MS` (the server's deadline on the body).
pub(super) fn json_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(
            move |content_type: Option<String>, length: Option<u64>, body| async move {
                read_json_body(content_type, length, body, limit)
                    .await
                    .map_err(warp::reject::custom)
            },
        )
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn read_json_body<S, B>(
    content_type: Option<String>,
    length: Option<u64>,
    body: S,
    limit: u64,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    match content_type {
        Some(ct) if is_json(&ct) => {}
        Some(ct) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type must be application/json, got {ct}."
            )))
        }
        None => {
            return Err(ApiError::UnsupportedMediaType(
                "Content-Type must be application/json; none was given.".into(),
            ))
        }
    }
    if length.is_some_and(|l| l > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| match BodyReadTimeout::find(&e) {
            Some(timeout) => ApiError::RequestTimeout {
                ms: timeout.0.as_millis() as u64,
            },
            None => ApiError::BadRequest(format!("unreadable body: {e}")),
        })?;
        if buf.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// A todo id from the path: ids are 1 to `events::limits::MAX_ID`, so any other number is a
/// todo that does not exist (404, as for a path id that is not a number).
pub(super) fn todo_id(id: i64) -> Result<i64, ApiError> {
    if events::limits::in_id_range(id) {
        Ok(id)
    } else {
        Err(ApiError::NotFound(format!(
            "Todo {id} does not exist; ids are 1 to {}.",
            events::limits::MAX_ID
        )))
    }
}

/// Parses `If-Match`: `*`, or a comma-separated list of entity tags (RFC 9110 8.8.3: `"…"` or
/// `W/"…"`, the quoted part visible ASCII but `"`; `events::service::openapi::IF_MATCH_PATTERN`
/// is the same grammar). It compares strongly (RFC 9110 13.1.1), so only strong tags `"N"` can
/// match; a weak `W/"N"` is well-formed but matches nothing, as does a tag that is not a version
/// (412). Anything else is 400.
pub(super) fn precondition(raw: Option<String>) -> Result<Option<Precondition>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let blanks: &[char] = &[' ', '\t'];
    let header = raw.trim_matches(blanks);
    if header == "*" {
        return Ok(Some(Precondition::Any));
    }
    let malformed = || {
        ApiError::BadRequest(format!(
            "If-Match must be * or quoted entity tags such as \"3\", comma-separated; got {raw}."
        ))
    };
    let mut versions = Vec::new();
    let mut rest = header;
    loop {
        let (weak, tag) = match rest.strip_prefix("W/") {
            Some(tag) => (true, tag),
            None => (false, rest),
        };
        let tag = tag.strip_prefix('"').ok_or_else(malformed)?;
        let end = tag.find('"').ok_or_else(malformed)?;
        let opaque = &tag[..end];
        if !opaque
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7E).contains(&b))
        {
            return Err(malformed());
        }
        if !weak {
            if let Ok(v) = opaque.parse::<i64>() {
                versions.push(v);
            }
        }
        rest = tag[end + 1..].trim_start_matches(blanks);
        if rest.is_empty() {
            return Ok(Some(Precondition::Versions(versions)));
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(malformed)?
            .trim_start_matches(blanks);
    }
}

/// Parses `Idempotency-Key` (1 to 255 characters, blanks around it not counted), the key of
/// the request `input`.
pub(super) fn idempotency_key(
    raw: Option<String>,
    input: &input::TodoInput,
) -> Result<Option<idempotency::Key>, ApiError> {
    let Some(key) = raw else { return Ok(None) };
    let key = key.trim_matches([' ', '\t']).to_string();
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 characters.".into(),
        ));
    }
    Ok(Some(idempotency::Key::new(key, input)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_forms() {
        let cases: &[(&str, Option<Precondition>)] = &[
            ("*", Some(Precondition::Any)),
            ("\"3\"", Some(Precondition::Versions(vec![3]))),
            ("W/\"3\"", Some(Precondition::Versions(vec![]))),
            ("W/\"3\", \"4\"", Some(Precondition::Versions(vec![4]))),
            ("\"1\", \"2\"", Some(Precondition::Versions(vec![1, 2]))),
            ("\"abc\"", Some(Precondition::Versions(vec![]))),
            ("\"a,b\", \"5\"", Some(Precondition::Versions(vec![5]))),
            (" \"6\" ,\t\"7\" ", Some(Precondition::Versions(vec![6, 7]))),
            ("\"\"", Some(Precondition::Versions(vec![]))),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                &precondition(Some(raw.to_string())).expect(raw),
                expected,
                "If-Match: {raw}"
            );
        }
        for malformed in [
            "3",
            "W/3",
            "\"3\", 4",
            "\"a b\"",
            "\"3\"\"",
            "\"3\",",
            ",\"3\"",
            "\"3\",,\"4\"",
            "*, \"3\"",
            "\"3",
            "",
        ] {
            assert!(
                matches!(
                    precondition(Some(malformed.into())),
                    Err(ApiError::BadRequest(_))
                ),
                "If-Match: {malformed}"
            );
        }
        assert_eq!(precondition(None).expect("absent"), None);
    }

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in ["text/plain", "application/x-www-form-urlencoded", "json"] {
            assert!(!is_json(ct), "{ct}");
        }
    }
}
