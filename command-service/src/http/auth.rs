//! Who may write: with `WRITE_TOKENS` set, every write and `GET /events` need
//! `Authorization: Bearer <token>` with one of the tokens (401 without one, 403 with another),
//! checked before anything is read or written. Unset, writes are open, as the local demo
//! wants. Tokens are kept as SHA-256 digests and compared digest to digest.

use crate::error::ApiError;
use sha2::{Digest, Sha256};
use warp::{Filter, Rejection};

/// Passes a request `tokens` allow, before its body is read; rejects any other with the
/// 401 or 403 problem (answered by `crate::error::handle_rejection`).
pub fn authorized(tokens: WriteTokens) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |header: Option<String>| {
            let checked = tokens.check(header.as_deref());
            async move { checked.map_err(warp::reject::custom) }
        })
        .untuple_one()
}

/// The configured tokens, or none (open).
#[derive(Clone, Default)]
pub struct WriteTokens(Vec<[u8; 32]>);

impl WriteTokens {
    /// From `WRITE_TOKENS`: comma-separated, blanks around each ignored, empty entries dropped.
    pub fn from_list(list: &str) -> Self {
        Self(
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(digest)
                .collect(),
        )
    }

    /// Whether writes need a token.
    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// `open` or `token`, as `/ready` reports it.
    pub fn mode(&self) -> &'static str {
        if self.required() {
            "token"
        } else {
            "open"
        }
    }

    /// For the settings' log line: how many, never which.
    pub fn describe(&self) -> String {
        format!("{} ({} tokens)", self.mode(), self.0.len())
    }

    /// Checks a request's `Authorization` header.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        if !self.required() {
            return Ok(());
        }
        let Some(header) = authorization else {
            return Err(ApiError::Unauthorized(
                "This service requires Authorization: Bearer <token> for writes.".into(),
            ));
        };
        let Some(token) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Err(ApiError::Unauthorized(
                "Authorization must be Bearer <token>.".into(),
            ));
        };
        let given = digest(token);
        if self.0.iter().any(|known| known == &given) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_without_tokens_and_checked_with_them() {
        assert!(WriteTokens::from_list("").check(None).is_ok());
        assert!(WriteTokens::from_list(" , ").check(None).is_ok());
        let tokens = WriteTokens::from_list("alpha, beta");
        assert!(tokens.check(Some("Bearer alpha")).is_ok());
        assert!(tokens.check(Some("Bearer beta")).is_ok());
        for (header, unauthorized) in [
            (None, true),
            (Some("alpha"), true),
            (Some("Basic YWxwaGE="), true),
            (Some("Bearer "), true),
            (Some("Bearer gamma"), false),
            (Some("Bearer alph"), false),
        ] {
            match tokens.check(header) {
                Err(ApiError::Unauthorized(_)) => assert!(unauthorized, "{header:?}"),
                Err(ApiError::Forbidden) => assert!(!unauthorized, "{header:?}"),
                other => panic!("{header:?}: {other:?}"),
            }
        }
        assert_eq!(tokens.describe(), "token (2 tokens)");
    }
}
