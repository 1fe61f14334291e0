//! Who may write and who may read the event log.
//!
//! - `WRITE_TOKENS` set: every write needs `Authorization: Bearer <token>` with one of them
//!   (401 without one, 403 with another). Unset, writes are open, as the local demo wants.
//! - `FEED_TOKENS` set: `GET /events` needs one of them, and only them: a write token reads
//!   no feed then (least privilege), and a feed token writes nothing (403). Unset, the feed
//!   keeps the writes' rule: write tokens when `WRITE_TOKENS` is set, open when not. So a
//!   setting left unset never opens what another one closed.
//!
//! - `OPERATOR_TOKENS` set: `POST /todos/{id}/erase` takes one of them, and only them. Unset,
//!   that route is closed (403): erasure over HTTP is never open by default; the
//!   `command-service erase <id>` command needs no token, only the database.
//!
//! An entry written `name:token` names its token: the events it writes carry the name as their
//! `actor`. A token without a name, or open writes, write `anonymous`. The lists are read by
//! `events::service::tokens`, as query-service reads its `OPERATOR_TOKENS`.
//!
//! The scheme is matched case-insensitively (`Bearer`, `bearer`, `BEARER`: RFC 9110 11.1),
//! checked before anything is read or written. Tokens are kept as SHA-256 digests and compared
//! digest to digest; they never reach a log or an answer.

use crate::error::ApiError;
use events::service::tokens::{bearer, digest, find, parse_list as tokens, Token};
use warp::{Filter, Rejection};

/// What a request asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `POST`, `PATCH`, `PUT`, `DELETE` of todos.
    Write,
    /// `GET /events`.
    Feed,
    /// `POST /todos/{id}/erase`.
    Erase,
}

/// Passes a request `tokens` allow `access`, before its body is read; rejects any other with
/// the 401 or 403 problem (answered by `crate::error::handle_rejection`).
pub fn authorized(
    tokens: Tokens,
    access: Access,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    authorized_as(tokens, access)
        .map(|_actor: String| ())
        .untuple_one()
}

/// [`authorized`], passing on who the request is: the token's name, or `anonymous`.
pub fn authorized_as(
    tokens: Tokens,
    access: Access,
) -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
        let checked = tokens.check(access, header.as_deref());
        async move { checked.map_err(warp::reject::custom) }
    })
}

/// The configured tokens: `WRITE_TOKENS` (none: writes open), `FEED_TOKENS` (`None`: unset,
/// the feed follows the writes' rule) and `OPERATOR_TOKENS` (none: erasure over HTTP closed).
#[derive(Clone, Default)]
pub struct Tokens {
    write: Vec<Token>,
    feed: Option<Vec<Token>>,
    operator: Vec<Token>,
}

impl Tokens {
    /// From `WRITE_TOKENS` and `FEED_TOKENS`; a `FEED_TOKENS` with no token in it is unset.
    pub fn from_lists(write: &str, feed: &str) -> Self {
        let feed = tokens(feed);
        Self {
            write: tokens(write),
            feed: (!feed.is_empty()).then_some(feed),
            operator: Vec::new(),
        }
    }

    /// These, with `OPERATOR_TOKENS` as the tokens that may erase over HTTP.
    pub fn with_operators(mut self, operator: &str) -> Self {
        self.operator = tokens(operator);
        self
    }

    /// `closed` or `token`: how `POST /todos/{id}/erase` is let through.
    pub fn erase_mode(&self) -> &'static str {
        if self.operator.is_empty() {
            "closed"
        } else {
            "token"
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
            "writes {} ({} tokens), feed {} ({} tokens), erase {} ({} tokens)",
            self.write_mode(),
            self.write.len(),
            self.feed_mode(),
            self.feed.as_ref().map_or(0, Vec::len),
            self.erase_mode(),
            self.operator.len()
        )
    }

    /// Checks a request's `Authorization` header for `access`; passes with the name of its
    /// token, or `anonymous`.
    pub fn check(&self, access: Access, authorization: Option<&str>) -> Result<String, ApiError> {
        let (allowed, what): (&[Token], &str) = match (access, &self.feed) {
            (Access::Write, _) => (&self.write, "writes"),
            (Access::Feed, Some(feed)) => (feed, "GET /events"),
            (Access::Feed, None) => (&self.write, "GET /events"),
            (Access::Erase, _) => (&self.operator, "erasure"),
        };
        if allowed.is_empty() {
            if access == Access::Erase {
                return Err(ApiError::Forbidden(
                    "Erasure over HTTP is closed: set OPERATOR_TOKENS on this service, or run \
                     `command-service erase <id>` where it can reach the database."
                        .into(),
                ));
            }
            return Ok(events::ANONYMOUS.to_string());
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
        if let Some(token) = find(allowed, &given) {
            return Ok(token.actor());
        }
        let refusal = match access {
            Access::Write
                if self
                    .feed
                    .as_ref()
                    .is_some_and(|f| find(f, &given).is_some()) =>
            {
                "This token may read GET /events only; it may not write."
            }
            Access::Write => "This bearer token may not write here.",
            Access::Erase => "This bearer token may not erase here: erasure takes OPERATOR_TOKENS.",
            Access::Feed if self.feed.is_some() && find(&self.write, &given).is_some() => {
                "GET /events takes a token of FEED_TOKENS (set on this service); write tokens \
                 read no feed."
            }
            Access::Feed => "This bearer token may not read GET /events here.",
        };
        Err(ApiError::Forbidden(refusal.into()))
    }
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

    fn answer(result: Result<String, ApiError>) -> Answer {
        match result {
            Ok(_) => Answer::Pass,
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
        assert_eq!(
            shown,
            "writes token (2 tokens), feed feed-token (1 tokens), erase closed (0 tokens)"
        );
        assert!(!shown.contains("s3cret") && !shown.contains("f33d"));
    }

    #[test]
    fn a_named_token_writes_as_its_name_and_the_others_as_anonymous() {
        let tokens = Tokens::from_lists("alice:a-s3cret, b-s3cret", "").with_operators("ops:o1");
        let write = |h: &str| tokens.check(Access::Write, Some(h));
        assert_eq!(write("Bearer a-s3cret").ok().as_deref(), Some("alice"));
        assert_eq!(write("Bearer b-s3cret").ok().as_deref(), Some("anonymous"));
        assert_eq!(
            answer(write("Bearer alice:a-s3cret")),
            Answer::Forbidden,
            "the name is no part of the token"
        );
        let open = Tokens::default();
        assert_eq!(
            open.check(Access::Write, None).ok().as_deref(),
            Some("anonymous")
        );
        // Erasure: closed without OPERATOR_TOKENS, operator tokens only with it.
        assert_eq!(answer(open.check(Access::Erase, None)), Answer::Forbidden);
        assert_eq!(
            answer(tokens.check(Access::Erase, None)),
            Answer::Unauthorized
        );
        assert_eq!(
            answer(tokens.check(Access::Erase, Some("Bearer a-s3cret"))),
            Answer::Forbidden
        );
        assert_eq!(
            tokens
                .check(Access::Erase, Some("Bearer o1"))
                .ok()
                .as_deref(),
            Some("ops")
        );
        assert_eq!(
            answer(tokens.check(Access::Write, Some("Bearer o1"))),
            Answer::Forbidden
        );
    }
}
