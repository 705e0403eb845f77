//! Tool rules: the per-program, ordered allow/ask/deny rules that decide each
//! invocation at run time.
//!
//! The launcher copies a program's rules from the policy into the manifest
//! ([`ToolGrant`]); the guest broker decides every exec with [`ToolGrant::decide`]. The
//! launcher's policy engine matches tool capabilities with the same [`ToolMatch`], so
//! host and guest cannot disagree about what a rule means.
//!
//! An invocation is one *argv capability* (its normalized arguments) plus one *config
//! capability* per command-line configuration setting (git's `-c`). Each is decided by
//! the first matching rule of its kind (or the default); the invocation's verdict is the
//! most restrictive of them.

use crate::argv_pattern::ArgvPattern;
use crate::tool_invocation::{ConfigSetting, Invocation};
use crate::verdict::{Decision, Verdict};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// What a tool rule matches: the normalized argument vector, or a configuration key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToolMatch {
    /// Matches the arguments after program-specific global options.
    Argv(ArgvPattern),
    /// Matches one configuration setting made on the command line (`git -c key=…`).
    Config(ConfigKeyPattern),
}

impl ToolMatch {
    /// Does this matcher match the invocation's argument vector?
    pub fn matches_argv(&self, args: &[String]) -> bool {
        matches!(self, ToolMatch::Argv(p) if p.matches(args))
    }

    /// Does this matcher match this configuration setting?
    pub fn matches_config(&self, setting: &ConfigSetting) -> bool {
        matches!(self, ToolMatch::Config(p) if p.matches(&setting.key))
    }
}

/// A configuration-key pattern: `core.pager`, `alias.*`, `*`. `*` stands for one or
/// more dotted parts; section and variable names are case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigKeyPattern {
    normalized: String,
    source: String,
}

/// A configuration-key pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key pattern `{pattern}`: {problem}")]
pub struct ConfigKeyPatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl ConfigKeyPattern {
    /// Parses a key pattern.
    pub fn parse(source: &str) -> Result<Self, ConfigKeyPatternError> {
        let err = |problem| ConfigKeyPatternError {
            pattern: source.to_string(),
            problem,
        };
        if source.is_empty() {
            return Err(err("is empty"));
        }
        if source.matches('*').count() > 1 {
            return Err(err("has more than one `*`"));
        }
        if !source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | '_'))
        {
            return Err(err("has characters a config key cannot contain"));
        }
        if source != "*" && !source.contains('.') {
            return Err(err("needs a section and a variable (`section.variable`)"));
        }
        // Fold the section (before the first dot) and variable (after the last dot).
        let normalized = match (source.find('.'), source.rfind('.')) {
            (Some(first), Some(last)) => format!(
                "{}{}{}",
                source[..first].to_ascii_lowercase(),
                &source[first..=last],
                source[last + 1..].to_ascii_lowercase()
            ),
            _ => source.to_string(),
        };
        Ok(ConfigKeyPattern {
            normalized,
            source: source.to_string(),
        })
    }

    /// Does a normalized key match?
    pub fn matches(&self, key: &str) -> bool {
        crate::tool_invocation::config_key_pattern_matches(&self.normalized, key)
    }

    /// Does every key this pattern matches also match `self`? (For the shadowing lint.)
    pub fn subsumes(&self, other: &ConfigKeyPattern) -> bool {
        if self.normalized == other.normalized {
            return true;
        }
        if other.normalized.contains('*') {
            return self.normalized == "*";
        }
        self.matches(&other.normalized)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for ConfigKeyPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for ConfigKeyPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for ConfigKeyPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ConfigKeyPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ConfigKeyPattern {
    fn schema_name() -> Cow<'static, str> {
        "ConfigKeyPattern".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Configuration key pattern (`section[.subsection].variable`); one `*` stands for one or more dotted parts.",
            "examples": ["core.pager", "alias.*", "user.*"]
        })
    }
}

/// One ordered rule for a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    /// Id of the policy rule this came from.
    pub id: String,
    /// What it matches.
    #[serde(rename = "match")]
    pub matcher: ToolMatch,
    /// What it decides.
    pub decision: Verdict,
    /// Why (shown to the agent on a denial).
    pub reason: String,
}

/// Everything the guest needs to decide invocations of one program at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolGrant {
    /// Program name (basename) as rules name it, e.g. `git`.
    pub program: String,
    /// Ordered rules; the first that matches decides.
    pub rules: Vec<ToolRule>,
    /// Verdict when no rule matches (the policy's default).
    pub default: Verdict,
    /// What the tool's own sandbox may execute and read besides the agent's grants.
    pub profile: ToolProfile,
}

/// A granted tool's execution profile: the tool's sandbox may execute its own binary,
/// the shims (so whatever it starts by name is a brokered call, decided by the rules)
/// and the loader, plus exactly the paths listed here. Never a shell, an interpreter or
/// a whole bin directory: a program that can be made to run what its options or
/// configuration name is otherwise an interpreter for whoever writes them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolProfile {
    /// Name shown when the profile refuses something (`git`, `default`, or the
    /// policy's own profile name).
    pub name: String,
    /// Absolute guest paths (files, or directories for all below) the tool may execute
    /// besides its own binary, e.g. git's remote helpers. Paths the image lacks are
    /// skipped.
    #[serde(default)]
    pub executes: Vec<String>,
    /// Absolute guest paths the tool may read besides the agent's read set, e.g. an
    /// interpreter's standard library. Paths the image lacks are skipped.
    #[serde(default)]
    pub reads: Vec<String>,
}

/// The decision on one whole invocation, with the decision on each of its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvocationDecision {
    /// The most restrictive verdict of all parts.
    pub verdict: Verdict,
    /// The part that determined the verdict (the first part with that verdict).
    pub decisive: Decision,
    /// One decision for the arguments, then one per configuration setting.
    pub parts: Vec<(String, Decision)>,
}

impl ToolGrant {
    /// Decides a normalized invocation. The caller must have checked that
    /// `inv.program == self.program`.
    pub fn decide(&self, inv: &Invocation) -> InvocationDecision {
        let mut parts = Vec::with_capacity(1 + inv.config.len());
        parts.push((
            format!("{} {}", inv.program, inv.args.join(" ")),
            self.first_match(|m| m.matches_argv(&inv.args), "these arguments"),
        ));
        for setting in &inv.config {
            parts.push((
                format!("{} {} {}", inv.program, setting.via, setting.key),
                self.first_match(|m| m.matches_config(setting), "this configuration key"),
            ));
        }
        combine_parts(parts)
    }

    fn first_match(&self, hit: impl Fn(&ToolMatch) -> bool, what: &str) -> Decision {
        self.rules
            .iter()
            .find(|r| hit(&r.matcher))
            .map(|r| Decision {
                verdict: r.decision,
                rule_id: r.id.clone(),
                reason: r.reason.clone(),
            })
            .unwrap_or_else(|| Decision {
                verdict: self.default,
                rule_id: Decision::DEFAULT_RULE_ID.into(),
                reason: format!("no rule for {} matches {what}", self.program),
            })
    }
}

/// Folds per-part decisions into one: the most restrictive verdict wins, and the first
/// part carrying it that an explicit rule decided (else the first) explains it.
pub fn combine_parts(parts: Vec<(String, Decision)>) -> InvocationDecision {
    let verdict = parts
        .iter()
        .map(|(_, d)| d.verdict)
        .fold(Verdict::Allow, Verdict::most_restrictive);
    // Prefer a part an explicit rule decided: its reason says more than the default's.
    let carrying = || parts.iter().filter(|(_, d)| d.verdict == verdict);
    let decisive = carrying()
        .find(|(_, d)| d.rule_id != Decision::DEFAULT_RULE_ID)
        .or_else(|| carrying().next())
        .map(|(_, d)| d.clone())
        .expect("parts always holds the argv decision");
    InvocationDecision {
        verdict,
        decisive,
        parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, m: ToolMatch, d: Verdict) -> ToolRule {
        ToolRule {
            id: id.into(),
            matcher: m,
            decision: d,
            reason: format!("because {id}"),
        }
    }
    fn argv(s: &str) -> ToolMatch {
        ToolMatch::Argv(ArgvPattern::parse(s).unwrap())
    }
    fn cfg(s: &str) -> ToolMatch {
        ToolMatch::Config(ConfigKeyPattern::parse(s).unwrap())
    }
    fn git() -> ToolGrant {
        ToolGrant {
            program: "git".into(),
            rules: vec![
                rule("inert-config", cfg("user.*"), Verdict::Allow),
                rule("commit", argv("commit **"), Verdict::Allow),
                rule("push", argv("push **"), Verdict::Ask),
                rule("reset-hard", argv("reset ** --hard **"), Verdict::Deny),
            ],
            default: Verdict::Deny,
            profile: Default::default(),
        }
    }
    fn decide(s: &str) -> InvocationDecision {
        let argv: Vec<&str> = s.split_whitespace().collect();
        git().decide(&Invocation::parse(&argv).unwrap())
    }

    #[test]
    fn first_matching_rule_decides_the_arguments() {
        assert_eq!(decide("git commit -m x").verdict, Verdict::Allow);
        assert_eq!(decide("git -C /w push origin").verdict, Verdict::Ask);
        let d = decide("git reset HEAD --hard");
        assert_eq!(
            (d.verdict, d.decisive.rule_id.as_str()),
            (Verdict::Deny, "reset-hard")
        );
        let d = decide("git gc");
        assert_eq!(
            (d.verdict, d.decisive.rule_id.as_str()),
            (Verdict::Deny, "default")
        );
    }

    #[test]
    fn config_settings_need_their_own_grant() {
        assert_eq!(decide("git -c user.name=x commit").verdict, Verdict::Allow);
        let d = decide("git -c core.pager=evil commit -m x");
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.decisive.rule_id, "default");
        assert!(d.parts[1].0.contains("core.pager"), "{:?}", d.parts);
        let d = decide("git -c core.sshCommand=evil push");
        assert_eq!(
            d.verdict,
            Verdict::Deny,
            "ask for push must not hide the config deny"
        );
    }

    #[test]
    fn config_patterns_fold_case_and_reject_junk() {
        assert!(ConfigKeyPattern::parse("Core.SSHCommand")
            .unwrap()
            .matches("core.sshcommand"));
        assert!(ConfigKeyPattern::parse("alias.*")
            .unwrap()
            .matches("alias.st"));
        assert!(!ConfigKeyPattern::parse("alias.*").unwrap().matches("alias"));
        assert!(ConfigKeyPattern::parse("a.*.*").is_err());
        assert!(ConfigKeyPattern::parse("pager").is_err());
        assert!(ConfigKeyPattern::parse("core.pa ger").is_err());
        assert!(ConfigKeyPattern::parse("*")
            .unwrap()
            .subsumes(&ConfigKeyPattern::parse("alias.*").unwrap()));
    }

    #[test]
    fn grant_round_trips_through_json_and_rejects_unknown_fields() {
        let g = git();
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(serde_json::from_str::<ToolGrant>(&json).unwrap(), g);
        let bad = json.replacen("\"default\"", "\"surprise\":1,\"default\"", 1);
        assert!(serde_json::from_str::<ToolGrant>(&bad).is_err());
    }
}
