//! Argument-vector patterns: `commit **`, `push * main`, `reset ** --hard **`.
//!
//! A pattern is a list of words separated by whitespace. A word is
//! - `*`: exactly one argument, whatever it is;
//! - `**`: any number of arguments (zero or more), anywhere in the pattern;
//! - anything else: that argument, literally. Quote a word (`'*'`, `"a b"`) or escape
//!   it (`\*`) to match a star or a space literally.
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
            let mut word = String::new();
            // A word is a wildcard only if it is written bare: `'*'` and `\*` are literal.
            let mut bare = true;
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                match c {
                    '\\' => {
                        bare = false;
                        match chars.next() {
                            Some(escaped) => word.push(escaped),
                            None => {
                                return Err(ArgvPatternError::TrailingBackslash {
                                    pattern: source.to_string(),
                                })
                            }
                        }
                    }
                    '\'' | '"' => {
                        bare = false;
                        let quote = c;
                        loop {
                            match chars.next() {
                                Some(q) if q == quote => break,
                                Some('\\') if quote == '"' => match chars.next() {
                                    Some(escaped) => word.push(escaped),
                                    None => {
                                        return Err(ArgvPatternError::UnterminatedQuote {
                                            pattern: source.to_string(),
                                            quote,
                                        })
                                    }
                                },
                                Some(other) => word.push(other),
                                None => {
                                    return Err(ArgvPatternError::UnterminatedQuote {
                                        pattern: source.to_string(),
                                        quote,
                                    })
                                }
                            }
                        }
                    }
                    other => word.push(other),
                }
            }
            words.push(match (bare, word.as_str()) {
                (true, "*") => PatternWord::One,
                (true, "**") => PatternWord::Rest,
                _ => PatternWord::Literal(word),
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
                Some(PatternWord::One) => {
                    pi += 1;
                    ai += 1;
                    continue;
                }
                Some(PatternWord::Literal(lit)) if lit == a[ai].as_ref() => {
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
                (Some(PatternWord::One), Some(PatternWord::Literal(_) | PatternWord::One)) => {
                    covers(&a[1..], &b[1..])
                }
                (Some(PatternWord::Literal(x)), Some(PatternWord::Literal(y))) if x == y => {
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
            "description": "Argument-vector pattern: words separated by spaces; `*` matches one argument, `**` any number (zero or more); quote or backslash-escape to match `*` literally.",
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
            a in proptest::collection::vec(proptest::sample::select(vec!["x", "y", "*", "**"]), 0..4),
            b in proptest::collection::vec(proptest::sample::select(vec!["x", "y", "*", "**"]), 0..4),
            argv in proptest::collection::vec(proptest::sample::select(vec!["x", "y", "z"]), 0..5),
        ) {
            let (a, b) = (p(&a.join(" ")), p(&b.join(" ")));
            if a.subsumes(&b) && b.matches(&argv) {
                proptest::prop_assert!(a.matches(&argv), "{a} claimed to cover {b} but not {argv:?}");
            }
        }
    }
}
