//! Argument-vector patterns: `commit **`, `push * main`, `reset ** --hard **`.
//!
//! A pattern is a list of words separated by whitespace. A word is
//! - `*`: exactly one argument, whatever it is;
//! - `**`: any number of arguments (zero or more), anywhere in the pattern;
//! - a word with a bare `*` inside (`+*`, `--force-with-lease=*`, `-*f*`): one argument
//!   matching that glob, where `*` stands for any characters (including none);
//! - anything else: that argument, literally. Quote (`'*'`, `"a b"`) or escape (`\*`)
//!   to match a star or a space literally.
//!
//! Patterns match whole argument vectors: `commit` matches `commit` only, not
//! `commit -m x`; write `commit **` for that.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// One word of an [`ArgvPattern`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatternWord {
    /// Matches exactly this argument.
    Literal(String),
    /// `*`: matches exactly one argument.
    One,
    /// `**`: matches zero or more arguments.
    Rest,
    /// One argument matching a glob: literal pieces separated by `*` (any characters).
    /// Holds at least two pieces.
    Glob(Vec<String>),
}

impl PatternWord {
    /// Does this word match one argument?
    fn matches_arg(&self, arg: &str) -> bool {
        match self {
            PatternWord::Literal(lit) => lit == arg,
            PatternWord::One => true,
            PatternWord::Rest => false,
            PatternWord::Glob(pieces) => glob_pieces_match(pieces, arg),
        }
    }
}

/// `pieces` joined by `*` (any characters) match the whole of `s`?
fn glob_pieces_match(pieces: &[String], s: &str) -> bool {
    let (first, rest) = pieces.split_first().expect("a glob has pieces");
    let Some(mut tail) = s.strip_prefix(first.as_str()) else {
        return false;
    };
    let (last, middle) = rest.split_last().expect("a glob has two pieces");
    for piece in middle {
        match tail.find(piece.as_str()) {
            Some(at) => tail = &tail[at + piece.len()..],
            None => return false,
        }
    }
    tail.len() >= last.len() && tail.ends_with(last.as_str())
}

/// Why a pattern string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgvPatternError {
    /// A quote was opened and never closed.
    #[error("argv pattern `{pattern}`: unterminated {quote} quote")]
    UnterminatedQuote {
        /// The pattern as written.
        pattern: String,
        /// Which quote character.
        quote: char,
    },
    /// The pattern ends with a lone backslash.
    #[error("argv pattern `{pattern}`: trailing backslash")]
    TrailingBackslash {
        /// The pattern as written.
        pattern: String,
    },
    /// A pattern word contains a NUL byte, which no argument can contain.
    #[error("argv pattern `{pattern}`: contains a NUL byte")]
    Nul {
        /// The pattern as written.
        pattern: String,
    },
}

/// A compiled argument-vector pattern. See the module docs for the syntax.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArgvPattern {
    words: Vec<PatternWord>,
    source: String,
}

impl ArgvPattern {
    /// Parses a pattern string.
    pub fn parse(source: &str) -> Result<Self, ArgvPatternError> {
        if source.contains('\0') {
            return Err(ArgvPatternError::Nul {
                pattern: source.to_string(),
            });
        }
        let mut words = Vec::new();
        let mut chars = source.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            // Pieces of the word split at *bare* stars; quoted or escaped stars are literal.
            let mut pieces: Vec<String> = vec![String::new()];
            let mut quoted = false;
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                let cur = pieces.last_mut().expect("pieces is never empty");
                match c {
                    '*' => pieces.push(String::new()),
                    '\\' => {
                        quoted = true;
                        match chars.next() {
                            Some(escaped) => cur.push(escaped),
                            None => {
                                return Err(ArgvPatternError::TrailingBackslash {
                                    pattern: source.to_string(),
                                })
                            }
                        }
                    }
                    '\'' | '"' => {
                        quoted = true;
                        let quote = c;
                        loop {
                            match chars.next() {
                                Some(q) if q == quote => break,
                                Some('\\') if quote == '"' => match chars.next() {
                                    Some(escaped) => cur.push(escaped),
                                    None => {
                                        return Err(ArgvPatternError::UnterminatedQuote {
                                            pattern: source.to_string(),
                                            quote,
                                        })
                                    }
                                },
                                Some(other) => cur.push(other),
                                None => {
                                    return Err(ArgvPatternError::UnterminatedQuote {
                                        pattern: source.to_string(),
                                        quote,
                                    })
                                }
                            }
                        }
                    }
                    other => cur.push(other),
                }
            }
            let all_empty = pieces.iter().all(String::is_empty);
            words.push(match pieces.len() {
                1 => PatternWord::Literal(pieces.pop().expect("one piece")),
                2 if all_empty && !quoted => PatternWord::One,
                3 if all_empty && !quoted => PatternWord::Rest,
                // Empty middle pieces (`a**b`) match like a single star.
                _ => PatternWord::Glob(pieces),
            });
        }
        // `** **` means the same as `**`; collapsing keeps matching linear.
        words.dedup_by(|b, a| *a == PatternWord::Rest && *b == PatternWord::Rest);
        Ok(ArgvPattern {
            words,
            source: source.to_string(),
        })
    }

    /// The pattern that matches every argument vector (`**`).
    pub fn any() -> Self {
        ArgvPattern {
            words: vec![PatternWord::Rest],
            source: "**".to_string(),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The compiled words.
    pub fn words(&self) -> &[PatternWord] {
        &self.words
    }

    /// The literal words before the first wildcard (e.g. `["reset", "--hard"]`).
    pub fn literal_prefix(&self) -> impl Iterator<Item = &str> {
        self.words.iter().map_while(|w| match w {
            PatternWord::Literal(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// Does this pattern match the whole argument vector?
    pub fn matches<S: AsRef<str>>(&self, argv: &[S]) -> bool {
        // Classic wildcard matching with one backtrack point: `**` plays `*`, `*` plays `?`.
        let (p, a) = (&self.words, argv);
        let (mut pi, mut ai) = (0usize, 0usize);
        let mut backtrack: Option<(usize, usize)> = None;
        while ai < a.len() {
            match p.get(pi) {
                Some(PatternWord::Rest) => {
                    backtrack = Some((pi, ai));
                    pi += 1;
                    continue;
                }
                Some(w) if w.matches_arg(a[ai].as_ref()) => {
                    pi += 1;
                    ai += 1;
                    continue;
                }
                _ => {}
            }
            match backtrack {
                Some((bp, ba)) => {
                    pi = bp + 1;
                    ai = ba + 1;
                    backtrack = Some((bp, ba + 1));
                }
                None => return false,
            }
        }
        p[pi..].iter().all(|w| *w == PatternWord::Rest)
    }

    /// Does every argument vector matched by `other` also match `self`?
    ///
    /// Used by the shadowed-rule lint. Sound for this pattern language: a literal covers
    /// only the same literal, `*` covers one word of any kind, `**` covers any run.
    pub fn subsumes(&self, other: &ArgvPattern) -> bool {
        fn covers(a: &[PatternWord], b: &[PatternWord]) -> bool {
            match (a.first(), b.first()) {
                (None, None) => true,
                (Some(PatternWord::Rest), _) => {
                    // `**` absorbs zero or more of b's words.
                    (0..=b.len()).any(|k| covers(&a[1..], &b[k..]))
                }
                (None, Some(_)) => false,
                (Some(_), None) => false,
                (Some(PatternWord::One), Some(PatternWord::Rest)) => false,
                (Some(PatternWord::One), Some(_)) => covers(&a[1..], &b[1..]),
                (
                    Some(x @ (PatternWord::Literal(_) | PatternWord::Glob(_))),
                    Some(PatternWord::Literal(y)),
                ) if x.matches_arg(y) => covers(&a[1..], &b[1..]),
                (Some(PatternWord::Glob(x)), Some(PatternWord::Glob(y))) if x == y => {
                    covers(&a[1..], &b[1..])
                }
                _ => false,
            }
        }
        covers(&self.words, &other.words)
    }
}

impl fmt::Display for ArgvPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for ArgvPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for ArgvPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ArgvPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ArgvPattern {
    fn schema_name() -> Cow<'static, str> {
        "ArgvPattern".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Argument-vector pattern: words separated by spaces; `*` matches one argument, `**` any number (zero or more), a `*` inside a word (`+*`, `--opt=*`) matches any characters within one argument; quote or backslash-escape to match `*` literally.",
            "examples": ["commit **", "push * main", "reset ** --hard **"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ArgvPattern {
        ArgvPattern::parse(s).unwrap()
    }
    fn m(pat: &str, argv: &str) -> bool {
        let argv: Vec<&str> = argv.split_whitespace().collect();
        p(pat).matches(&argv)
    }

    #[test]
    fn literal_words_match_whole_vectors_only() {
        assert!(m("commit", "commit"));
        assert!(!m("commit", "commit -m x"));
        assert!(!m("commit", ""));
        assert!(m("", ""));
        assert!(!m("", "x"));
    }

    #[test]
    fn one_star_matches_exactly_one_word() {
        assert!(m("push *", "push origin"));
        assert!(!m("push *", "push"));
        assert!(!m("push *", "push origin main"));
        assert!(m("push * main", "push origin main"));
    }

    #[test]
    fn double_star_matches_any_run_anywhere() {
        assert!(m("commit **", "commit"));
        assert!(m("commit **", "commit -m hi there"));
        assert!(m("**", ""));
        assert!(m("reset ** --hard **", "reset HEAD~1 --hard"));
        assert!(m("reset ** --hard **", "reset --hard"));
        assert!(!m("reset ** --hard **", "reset --soft HEAD"));
        assert!(m("** x ** y", "a x b x c y"));
        assert!(!m("** x ** y", "a y b x"));
    }

    #[test]
    fn quoted_and_escaped_stars_are_literal() {
        assert!(m("add '*'", "add *"));
        assert!(!m("add '*'", "add file"));
        assert!(m(r"add \*", "add *"));
        assert!(!m(r"add \**", "add a b"));
        assert_eq!(
            p(r#"commit -m "a b""#).words()[2],
            PatternWord::Literal("a b".into())
        );
    }

    #[test]
    fn stars_inside_a_word_glob_within_that_argument() {
        assert!(m("push ** +* **", "push origin +main"));
        assert!(!m("push ** +* **", "push origin main"));
        assert!(m(
            "push ** --force-with-lease* **",
            "push --force-with-lease=origin/main origin"
        ));
        assert!(m(
            "push ** --force-with-lease* **",
            "push --force-with-lease"
        ));
        assert!(m("x a*b*c", "x abc"));
        assert!(m("x a*b*c", "x a-b-b-c"));
        assert!(!m("x a*b*c", "x a-c"));
        assert!(!m("x a*b*c", "x abcd"));
        assert!(!m("x a*b", "x a"), "prefix and suffix may not overlap");
        assert!(
            m("x 'a*'b*", "x a*bcd"),
            "quoted star stays literal, bare star globs"
        );
        assert!(!m("x 'a*'b*", "x axbcd"));
        assert!(p("push ** +* **").subsumes(&p("push origin +main")));
        assert!(!p("push ** +* **").subsumes(&p("push origin *")));
        assert!(p("x *").subsumes(&p("x a*")));
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert!(matches!(
            ArgvPattern::parse("commit 'x"),
            Err(ArgvPatternError::UnterminatedQuote { quote: '\'', .. })
        ));
        assert!(matches!(
            ArgvPattern::parse("commit \\"),
            Err(ArgvPatternError::TrailingBackslash { .. })
        ));
    }

    #[test]
    fn subsumption_is_sound_on_examples() {
        assert!(p("**").subsumes(&p("commit **")));
        assert!(p("commit **").subsumes(&p("commit -m *")));
        assert!(p("commit **").subsumes(&p("commit")));
        assert!(!p("commit *").subsumes(&p("commit **")));
        assert!(!p("commit -m *").subsumes(&p("commit **")));
        assert!(p("* **").subsumes(&p("push **")));
        assert!(!p("* **").subsumes(&p("**")));
        assert!(p("** --hard **").subsumes(&p("reset --hard")));
    }

    proptest::proptest! {
        /// If `a` subsumes `b`, every vector `b` matches is matched by `a`.
        #[test]
        fn subsumption_never_claims_a_cover_that_fails(
            a in proptest::collection::vec(proptest::sample::select(vec!["x", "y", "*", "**", "x*", "*y"]), 0..4),
            b in proptest::collection::vec(proptest::sample::select(vec!["x", "y", "*", "**", "x*", "xy", "*y"]), 0..4),
            argv in proptest::collection::vec(proptest::sample::select(vec!["x", "y", "z", "xy", "xzy"]), 0..5),
        ) {
            let (a, b) = (p(&a.join(" ")), p(&b.join(" ")));
            if a.subsumes(&b) && b.matches(&argv) {
                proptest::prop_assert!(a.matches(&argv), "{a} claimed to cover {b} but not {argv:?}");
            }
        }
    }
}
