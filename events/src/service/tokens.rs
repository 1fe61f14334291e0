//! Bearer tokens as both services configure them (`WRITE_TOKENS`, `FEED_TOKENS`,
//! `OPERATOR_TOKENS`): a comma-separated list, each entry `token` or `name:token`. The name is
//! what comes before the first `:` (1 to [`NAME_MAX_CHARS`] of `A-Z a-z 0-9 . _ @ -`, not
//! `anonymous`), never part of the token: the events a named token writes carry it as their
//! `actor`. Tokens are kept as SHA-256 digests and compared digest to digest; they never reach
//! a log or an answer.

use sha2::{Digest, Sha256};

/// A token's SHA-256 digest.
pub type TokenDigest = [u8; 32];

/// The longest token name.
pub const NAME_MAX_CHARS: usize = 64;

/// A configured token: its digest and its name, if it has one.
#[derive(Clone)]
pub struct Token {
    pub digest: TokenDigest,
    pub name: Option<String>,
}

impl Token {
    /// Its name, or [`crate::ANONYMOUS`].
    pub fn actor(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| crate::ANONYMOUS.to_string())
    }
}

/// Why a list's entry cannot be used, if one cannot: a name outside the rules, or a name with
/// no token after it. The settings check this at start, naming the variable.
pub fn bad_entry(entry: &str) -> Option<String> {
    let (name, token) = entry.trim().split_once(':')?;
    let ok = !name.is_empty()
        && name.chars().count() <= NAME_MAX_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if !ok {
        return Some(format!(
            "a token's name (before the first ':') must be 1 to {NAME_MAX_CHARS} of \
             A-Z a-z 0-9 . _ @ -, got {} characters",
            name.chars().count()
        ));
    }
    if name == crate::ANONYMOUS {
        return Some(format!(
            "`{}` names the writes of no token; give the token another name",
            crate::ANONYMOUS
        ));
    }
    token
        .trim()
        .is_empty()
        .then(|| format!("the name {name:?} has no token after its ':'"))
}

/// The first entry of `list` that cannot be used, as `<variable>: <why>`.
pub fn check_list(variable: &str, list: &str) -> Result<(), String> {
    match list.split(',').find_map(bad_entry) {
        Some(why) => Err(format!(
            "{variable}: {why}; write each entry as token or name:token"
        )),
        None => Ok(()),
    }
}

/// A comma-separated list: blanks around each entry ignored, empty entries dropped, a
/// `name:` before a token taken as its name (an entry [`bad_entry`] refuses is taken whole as
/// a token; the settings refuse it before).
pub fn parse_list(list: &str) -> Vec<Token> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|entry| match entry.split_once(':') {
            Some((name, token)) if bad_entry(entry).is_none() => Token {
                digest: digest(token.trim()),
                name: Some(name.to_string()),
            },
            _ => Token {
                digest: digest(entry),
                name: None,
            },
        })
        .collect()
}

/// The token of `list` whose digest is `given`.
pub fn find<'a>(list: &'a [Token], given: &TokenDigest) -> Option<&'a Token> {
    list.iter().find(|t| &t.digest == given)
}

/// The token of an `Authorization: Bearer <token>` header, the scheme in any case (RFC 9110
/// 11.1); `None` for another scheme or no token.
pub fn bearer(header: &str) -> Option<&str> {
    let header = header.trim_start();
    let (scheme, rest) = header.split_at(header.find(' ')?);
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_before_the_first_colon_and_held_to_their_rules() {
        let list = parse_list(" alice:a-s3cret , plain, ci.bot@x-1:t:with:colons ");
        let names: Vec<Option<&str>> = list.iter().map(|t| t.name.as_deref()).collect();
        assert_eq!(names, [Some("alice"), None, Some("ci.bot@x-1")]);
        assert!(find(&list, &digest("a-s3cret")).is_some());
        assert!(find(&list, &digest("alice:a-s3cret")).is_none());
        assert!(find(&list, &digest("t:with:colons")).is_some());
        assert_eq!(list[1].actor(), "anonymous");
        for bad in [
            "a b:t",
            ":t",
            "é:t",
            "anonymous:t",
            "alice:",
            "alice: ",
            &format!("{}:t", "n".repeat(65)),
        ] {
            assert!(bad_entry(bad).is_some(), "{bad}");
        }
        assert!(check_list("WRITE_TOKENS", "ok, alice:").is_err());
        assert!(check_list("WRITE_TOKENS", "ok, alice:t, ,").is_ok());
        assert_eq!(bearer("BeArEr  tok "), Some("tok"));
        assert_eq!(bearer("Basic x"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
