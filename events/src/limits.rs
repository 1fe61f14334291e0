//! The rules a todo's text and numbers keep, written once for both sides: command-service
//! refuses a request that breaks them (422 naming the field), and the read side can hold
//! events to the same rules.
//!
//! - A title is trimmed (Unicode whitespace at both ends), then holds 1 to
//!   [`TITLE_MAX_CHARS`] characters, no control character, and at least one character that
//!   shows: a title made only of whitespace and invisible characters ([`is_invisible`]) is
//!   blank.
//! - A description holds at most [`DESCRIPTION_MAX_CHARS`] characters and no control
//!   character but tab and line breaks.
//! - Neither holds U+0000, which PostgreSQL's `text` and `jsonb` cannot store.
//! - Ids, versions and log positions are 1 to [`MAX_ID`].

/// The most characters (not bytes) a title holds, after trimming.
pub const TITLE_MAX_CHARS: usize = 200;
/// The most characters (not bytes) a description holds.
pub const DESCRIPTION_MAX_CHARS: usize = 2000;
/// The largest id, version or position: 2^53 - 1, the largest integer JavaScript (and many
/// other JSON readers, which read numbers as doubles) keeps exactly.
pub const MAX_ID: i64 = 9_007_199_254_740_991;

/// The characters `char::is_whitespace` (and so `str::trim`) takes, as a regex class body.
macro_rules! ws {
    () => {
        r"\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000"
    };
}

/// [`is_invisible`]'s characters, as a regex class body.
macro_rules! invisible {
    () => {
        r"\u00AD\u034F\u061C\u115F\u1160\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u206F\u3164\uFE00-\uFE0F\uFEFF\uFFA0"
    };
}

/// The control characters (`char::is_control`), as a regex class body.
macro_rules! control {
    () => {
        r"\u0000-\u001F\u007F-\u009F"
    };
}

/// The title rules as one regular expression (ECMA-262, as JSON Schema's `pattern` reads it),
/// for the OpenAPI documents: any amount of whitespace around; between it 1 to
/// [`TITLE_MAX_CHARS`] characters, no control character, first and last not whitespace; and not
/// only whitespace and invisible characters (the lookahead). `WS` is Rust's
/// `char::is_whitespace` (what `str::trim` removes), `INVISIBLE` is [`is_invisible`].
pub const TITLE_PATTERN: &str = concat!(
    "^(?![",
    ws!(),
    invisible!(),
    "]*$)[",
    ws!(),
    "]*[^",
    ws!(),
    control!(),
    "](?:[^",
    control!(),
    "]{0,198}[^",
    ws!(),
    control!(),
    "])?[",
    ws!(),
    "]*$"
);

/// The description rules but the length (the document's `maxLength`): no control character
/// but tab, line feed and carriage return.
pub const DESCRIPTION_PATTERN: &str = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$";

/// Whether `n` is a usable id, version or position: 1 to [`MAX_ID`].
pub fn in_id_range(n: i64) -> bool {
    (1..=MAX_ID).contains(&n)
}

/// Characters that show nothing and move nothing a reader can see: zero-width characters,
/// the word joiner, the byte order mark, the soft hyphen and the bidirectional controls
/// (marks, embeddings, overrides, isolates). A title of only these (and whitespace) is blank;
/// one that holds them beside visible text is kept as written.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                  // soft hyphen
        | '\u{034F}'                // combining grapheme joiner
        | '\u{061C}'                // Arabic letter mark
        | '\u{115F}' | '\u{1160}'   // Hangul fillers
        | '\u{180E}'                // Mongolian vowel separator
        | '\u{200B}'..='\u{200F}'   // zero-width space, ZWNJ, ZWJ, LRM, RLM
        | '\u{202A}'..='\u{202E}'   // bidi embeddings and overrides
        | '\u{2060}'..='\u{2064}'   // word joiner, invisible operators
        | '\u{2066}'..='\u{206F}'   // bidi isolates, deprecated format characters
        | '\u{3164}'                // Hangul filler
        | '\u{FE00}'..='\u{FE0F}'   // variation selectors
        | '\u{FEFF}'                // byte order mark, zero-width no-break space
        | '\u{FFA0}'                // halfwidth Hangul filler
    )
}

/// The message for a text holding U+0000.
const NUL: &str = "must not contain the NUL character (U+0000)";

/// The first control character of `text` not in `allowed`.
fn control_character(text: &str, allowed: &[char]) -> Option<char> {
    text.chars()
        .find(|c| c.is_control() && !allowed.contains(c))
}

fn control_message(c: char) -> String {
    format!(
        "must not contain control characters (found U+{:04X})",
        c as u32
    )
}

/// The title as stored (trimmed), or why `raw` breaks the rules.
pub fn title(raw: &str) -> Result<&str, String> {
    let trimmed = raw.trim();
    let len = trimmed.chars().count();
    if trimmed.contains('\0') {
        Err(NUL.into())
    } else if let Some(c) = control_character(trimmed, &[]) {
        Err(control_message(c))
    } else if len == 0 {
        Err("must not be blank".into())
    } else if trimmed
        .chars()
        .all(|c| c.is_whitespace() || is_invisible(c))
    {
        Err("must not be blank: it holds only whitespace and invisible characters".into())
    } else if len > TITLE_MAX_CHARS {
        Err(format!(
            "must be at most {TITLE_MAX_CHARS} characters, got {len}"
        ))
    } else {
        Ok(trimmed)
    }
}

/// Why a title an event carries could not have come from the write side, or `None`: the rules
/// every version of command-service held titles to (stored trimmed, 1 to
/// [`TITLE_MAX_CHARS`] characters, no control character). Laxer than [`title`] on purpose: the
/// invisible-only rule is newer, and the log keeps titles earlier versions took, which the
/// read side must still apply (a replay, a redelivery, a rolling upgrade).
pub fn stored_title(title: &str) -> Option<String> {
    let len = title.chars().count();
    if title.contains('\0') {
        Some(NUL.into())
    } else if let Some(c) = control_character(title, &[]) {
        Some(control_message(c))
    } else if title.trim() != title {
        Some("must be stored trimmed".into())
    } else if len == 0 {
        Some("must not be blank".into())
    } else if len > TITLE_MAX_CHARS {
        Some(format!(
            "must be at most {TITLE_MAX_CHARS} characters, got {len}"
        ))
    } else {
        None
    }
}

/// Why `text` breaks the rules of a description, or `None` when it keeps them.
pub fn description(text: &str) -> Option<String> {
    let len = text.chars().count();
    if text.contains('\0') {
        Some(NUL.into())
    } else if let Some(c) = control_character(text, &['\t', '\n', '\r']) {
        Some(control_message(c))
    } else if len > DESCRIPTION_MAX_CHARS {
        Some(format!(
            "must be at most {DESCRIPTION_MAX_CHARS} characters, got {len}"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_is_trimmed_and_kept_within_its_rules() {
        let longest = "é".repeat(TITLE_MAX_CHARS);
        let kept: &[(&str, &str, &str)] = &[
            (
                "  Learn CQRS  ",
                "Learn CQRS",
                "whitespace around is trimmed",
            ),
            (&longest, &longest, "200 characters (not bytes) fit"),
            (
                "a\u{200B}b",
                "a\u{200B}b",
                "an invisible character beside text stays",
            ),
            (
                "\u{200D}x",
                "\u{200D}x",
                "a visible character makes it a title",
            ),
        ];
        for (raw, stored, why) in kept {
            assert_eq!(title(raw).as_deref(), Ok(*stored), "{why}");
        }
    }

    #[test]
    fn a_title_that_breaks_a_rule_says_which() {
        let too_long = "x".repeat(TITLE_MAX_CHARS + 1);
        let refused: &[(&str, &str, &str)] = &[
            ("", "blank", "empty"),
            ("   \t ", "blank", "whitespace only"),
            ("\u{200B}", "invisible", "a zero-width space alone"),
            (
                "\u{200D}\u{2060}\u{FEFF}",
                "invisible",
                "ZWJ, word joiner and BOM",
            ),
            (
                "\u{202A}\u{202B}\u{202C}\u{202D}\u{202E}",
                "invisible",
                "bidi embeddings and overrides",
            ),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                "invisible",
                "bidi isolates",
            ),
            ("\u{200E}\u{200F}", "invisible", "direction marks"),
            ("\u{00AD}", "invisible", "a soft hyphen"),
            (
                " \u{200B} \u{3000} \u{FEFF} ",
                "invisible",
                "invisible characters among spaces",
            ),
            (&too_long, "at most 200", "201 characters"),
            ("a\u{0000}", "U+0000", "NUL"),
            ("a\u{0007}b", "U+0007", "a control character"),
        ];
        for (raw, expected, why) in refused {
            let message = title(raw).expect_err(why);
            assert!(message.contains(expected), "{why}: {message}");
        }
    }

    #[test]
    fn a_description_keeps_its_rules() {
        let longest = "d".repeat(DESCRIPTION_MAX_CHARS);
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("", None, "empty is a description"),
            (
                "line\none\ttab\r\n",
                None,
                "tabs and line breaks are allowed",
            ),
            (&longest, None, "2000 characters fit"),
            (
                "\u{200B}",
                None,
                "invisible characters are a description's own business",
            ),
            ("a\u{0000}", Some("U+0000"), "NUL"),
            ("a\u{001B}", Some("U+001B"), "escape"),
        ];
        for (text, expected, why) in cases {
            match (description(text), expected) {
                (None, None) => {}
                (Some(message), Some(expected)) => {
                    assert!(message.contains(expected), "{why}: {message}")
                }
                (got, _) => panic!("{why}: {got:?}"),
            }
        }
        let too_long = "d".repeat(DESCRIPTION_MAX_CHARS + 1);
        assert!(
            description(&too_long).is_some_and(|m| m.contains("at most 2000")),
            "2001 characters"
        );
    }

    #[test]
    fn the_patterns_name_the_same_characters_as_the_rules() {
        // Every character of the classes, read back from the pattern, against the functions.
        let class = |body: &str| -> Vec<char> {
            let mut chars = Vec::new();
            let codes: Vec<u32> = body
                .split("\\u")
                .filter(|s| !s.is_empty())
                .map(|s| u32::from_str_radix(&s[..4], 16).expect("hex"))
                .collect();
            let ranges: Vec<bool> = body
                .split("\\u")
                .filter(|s| !s.is_empty())
                .map(|s| s.ends_with('-'))
                .collect();
            let mut i = 0;
            while i < codes.len() {
                let (from, to) = if ranges[i] {
                    i += 1;
                    (codes[i - 1], codes[i])
                } else {
                    (codes[i], codes[i])
                };
                chars.extend((from..=to).filter_map(char::from_u32));
                i += 1;
            }
            chars
        };
        let ws = class(ws!());
        let all: Vec<char> = (0..=0xFFFF).filter_map(char::from_u32).collect();
        assert_eq!(
            ws,
            all.iter()
                .copied()
                .filter(|c| c.is_whitespace())
                .collect::<Vec<_>>(),
            "whitespace"
        );
        assert_eq!(
            class(invisible!()),
            all.iter()
                .copied()
                .filter(|c| is_invisible(*c))
                .collect::<Vec<_>>(),
            "invisible"
        );
        assert_eq!(
            class(control!()),
            all.iter()
                .copied()
                .filter(|c| c.is_control())
                .collect::<Vec<_>>(),
            "control"
        );
        assert!(TITLE_PATTERN.contains(&format!("{{0,{}}}", TITLE_MAX_CHARS - 2)));
    }

    #[test]
    fn ids_run_from_one_to_the_largest_exact_double() {
        assert_eq!(MAX_ID, (1_i64 << 53) - 1);
        assert_eq!(MAX_ID as f64 as i64, MAX_ID, "exact as a double");
        for (n, ok, why) in [
            (1, true, "the first id"),
            (MAX_ID, true, "the last id"),
            (0, false, "zero"),
            (-1, false, "negative"),
            (MAX_ID + 1, false, "past 2^53 - 1"),
        ] {
            assert_eq!(in_id_range(n), ok, "{why}");
        }
    }
}
