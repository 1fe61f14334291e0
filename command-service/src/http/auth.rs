//! Who may write and who may read the event log.
//!
//! - `WRITE_TOKENS` set: every write needs `Authorization: Bearer <token>` with one of them
//!   (401 without one, 403 with another). Unset, writes are open, as the local demo wants.
//! - `FEED_TOKENS` set: `GET /events` needs one of them, and only them: a write token reads
//!   no feed then (least privilege), and a feed token writes nothing (403). Unset, the feed
//!   keeps the writes' rule: write tokens when `WRITE_TOKENS` is set, open when not. So a
//!   setting left unset never opens what another one closed.
//!
//! The scheme is matched case-insensitively (`Bearer`, `bearer`, `BEARER`: RFC 9110 11.1),
//! checked before anything is read or written. Tokens are kept as SHA-256 digests and compared
//! digest to digest; they never reach a log or an answer.

use crate::error::ApiError;
use sha2::{Digest, Sha256};
use warp::{Filter, Rejection};

/// What a request asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `POST`, `PATCH`, `PUT`, `DELETE` of todos.
    Write,
    /// `GET /events`.
    Feed,
}

/// Passes a request `tokens` allow `access`, before its body is read; rejects any other with
/// the 401 or 403 problem (answered by `crate::error::handle_rejection`).
pub fn authorized(
    tokens: Tokens,
    access: Access,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |header: Option<String>| {
            let checked = tokens.check(access, header.as_deref());
            async move { checked.map_err(warp::reject::custom) }
        })
        .untuple_one()
}

type TokenDigest = [u8; 32];

/// The configured tokens: `WRITE_TOKENS` (none: writes open) and `FEED_TOKENS` (`None`: unset,
/// the feed follows the writes' rule).
#[derive(Clone, Default)]
pub struct Tokens {
    write: Vec<TokenDigest>,
    feed: Option<Vec<TokenDigest>>,
}

/// A comma-separated list: blanks around each entry ignored, empty entries dropped.
fn digests(list: &str) -> Vec<TokenDigest> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(digest)
        .collect()
}

impl Tokens {
    /// From `WRITE_TOKENS` and `FEED_TOKENS`; a `FEED_TOKENS` with no token in it is unset.
    pub fn from_lists(write: &str, feed: &str) -> Self {
        let feed = digests(feed);
        Self {
            write: digests(write),
            feed: (!feed.is_empty()).then_some(feed),
        }
    }

    /// `open` or `token`: how writes are let through, as `/ready` reports it.
    pub fn write_mode(&self) -> &'static str {
        if self.write.is_empty() {
            "open"
        } else {
            "token"
        }
    }

    /// `open`, `write-token` (FEED_TOKENS unset, WRITE_TOKENS set) or `feed-token`: how
    /// `GET /events` is let through, as `/ready` reports it.
    pub fn feed_mode(&self) -> &'static str {
        match (&self.feed, self.write.is_empty()) {
            (Some(_), _) => "feed-token",
            (None, false) => "write-token",
            (None, true) => "open",
        }
    }

    /// For the settings' log line: how many, never which.
    pub fn describe(&self) -> String {
        format!(
            "writes {} ({} tokens), feed {} ({} tokens)",
            self.write_mode(),
            self.write.len(),
            self.feed_mode(),
            self.feed.as_ref().map_or(0, Vec::len)
        )
    }

    /// Checks a request's `Authorization` header for `access`.
    pub fn check(&self, access: Access, authorization: Option<&str>) -> Result<(), ApiError> {
        let (allowed, what): (&[TokenDigest], &str) = match (access, &self.feed) {
            (Access::Write, _) => (&self.write, "writes"),
            (Access::Feed, Some(feed)) => (feed, "GET /events"),
            (Access::Feed, None) => (&self.write, "GET /events"),
        };
        if allowed.is_empty() {
            return Ok(());
        }
        let Some(header) = authorization else {
            return Err(ApiError::Unauthorized(format!(
                "This service requires Authorization: Bearer <token> for {what}."
            )));
        };
        let Some(token) = bearer(header) else {
            return Err(ApiError::Unauthorized(
                "Authorization must be Bearer <token>.".into(),
            ));
        };
        let given = digest(token);
        if allowed.contains(&given) {
            return Ok(());
        }
        let refusal = match access {
            Access::Write if self.feed.as_ref().is_some_and(|f| f.contains(&given)) => {
                "This token may read GET /events only; it may not write."
            }
            Access::Write => "This bearer token may not write here.",
            Access::Feed if self.feed.is_some() && self.write.contains(&given) => {
                "GET /events takes a token of FEED_TOKENS (set on this service); write tokens \
                 read no feed."
            }
            Access::Feed => "This bearer token may not read GET /events here.",
        };
        Err(ApiError::Forbidden(refusal.into()))
    }
}

/// The token of an `Authorization: Bearer <token>` header, the scheme in any case; `None` for
/// another scheme or no token.
fn bearer(header: &str) -> Option<&str> {
    let header = header.trim_start();
    let (scheme, rest) = header.split_at(header.find(' ')?);
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Answer {
        Pass,
        Unauthorized,
        Forbidden,
    }

    fn answer(result: Result<(), ApiError>) -> Answer {
        match result {
            Ok(()) => Answer::Pass,
            Err(ApiError::Unauthorized(_)) => Answer::Unauthorized,
            Err(ApiError::Forbidden(_)) => Answer::Forbidden,
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_setting_and_header_gets_its_answer() {
        use Access::{Feed, Write};
        use Answer::*;
        /// (why, WRITE_TOKENS, FEED_TOKENS, what the request asks, its header, its answer)
        type Case<'a> = (&'a str, &'a str, &'a str, Access, Option<&'a str>, Answer);
        let cases: &[Case] = &[
            ("nothing set: writes open", "", "", Write, None, Pass),
            ("nothing set: the feed open", "", "", Feed, None, Pass),
            ("blank lists are unset", " , ", " ,", Feed, None, Pass),
            (
                "write token writes",
                "w1, w2",
                "",
                Write,
                Some("Bearer w2"),
                Pass,
            ),
            (
                "scheme in lower case",
                "w1",
                "",
                Write,
                Some("bearer w1"),
                Pass,
            ),
            (
                "scheme in upper case",
                "w1",
                "",
                Write,
                Some("BEARER w1"),
                Pass,
            ),
            (
                "scheme in mixed case",
                "w1",
                "f1",
                Feed,
                Some("BeArEr f1"),
                Pass,
            ),
            ("no header", "w1", "", Write, None, Unauthorized),
            ("a bare token", "w1", "", Write, Some("w1"), Unauthorized),
            (
                "another scheme",
                "w1",
                "",
                Write,
                Some("Basic dzE="),
                Unauthorized,
            ),
            (
                "no token after the scheme",
                "w1",
                "",
                Write,
                Some("Bearer "),
                Unauthorized,
            ),
            (
                "a scheme that only starts with bearer",
                "w1",
                "",
                Write,
                Some("Bearerx w1"),
                Unauthorized,
            ),
            (
                "a wrong token",
                "w1",
                "",
                Write,
                Some("Bearer w"),
                Forbidden,
            ),
            (
                "FEED_TOKENS unset: a write token reads the feed",
                "w1",
                "",
                Feed,
                Some("Bearer w1"),
                Pass,
            ),
            (
                "FEED_TOKENS unset: the feed needs a write token",
                "w1",
                "",
                Feed,
                None,
                Unauthorized,
            ),
            (
                "FEED_TOKENS set: a feed token reads",
                "w1",
                "f1, f2",
                Feed,
                Some("Bearer f2"),
                Pass,
            ),
            (
                "FEED_TOKENS set: a write token reads no feed",
                "w1",
                "f1",
                Feed,
                Some("Bearer w1"),
                Forbidden,
            ),
            (
                "FEED_TOKENS set: no token",
                "w1",
                "f1",
                Feed,
                None,
                Unauthorized,
            ),
            (
                "a feed token may not write",
                "w1",
                "f1",
                Write,
                Some("Bearer f1"),
                Forbidden,
            ),
            (
                "feed tokens alone close the feed only",
                "",
                "f1",
                Feed,
                None,
                Unauthorized,
            ),
            (
                "feed tokens alone leave writes open",
                "",
                "f1",
                Write,
                None,
                Pass,
            ),
        ];
        for (why, write, feed, access, header, expected) in cases {
            let tokens = Tokens::from_lists(write, feed);
            assert_eq!(&answer(tokens.check(*access, *header)), expected, "{why}");
        }
    }

    #[test]
    fn the_modes_and_the_log_line_name_no_token() {
        let cases = [
            ("", "", "open", "open"),
            ("w", "", "token", "write-token"),
            ("w", "f", "token", "feed-token"),
            ("", "f", "open", "feed-token"),
        ];
        for (write, feed, writes, reads) in cases {
            let tokens = Tokens::from_lists(write, feed);
            assert_eq!(
                (tokens.write_mode(), tokens.feed_mode()),
                (writes, reads),
                "{write:?} {feed:?}"
            );
        }
        let shown = Tokens::from_lists("s3cret-a, s3cret-b", "f33d").describe();
        assert_eq!(shown, "writes token (2 tokens), feed feed-token (1 tokens)");
        assert!(!shown.contains("s3cret") && !shown.contains("f33d"));
    }
}
