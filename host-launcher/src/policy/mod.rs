//! Policy: ordered allow/ask/deny rules over capabilities, first match wins.
//!
//! A policy file is TOML ([`document`]); [`Policy::load`] compiles it, checks every
//! rule's own examples, and refuses the whole file on the first problem with
//! `file:line:col`. Decisions are pure and do no I/O: [`Policy::decide`] uses an index
//! so a 1,000-rule policy answers in about a microsecond, with the same result as a
//! linear first-match scan (a property test holds the two together).
//!
//! Two engines implement [`DecisionEngine`]: this native one and [`rego::RegoEngine`]
//! (Rego through regorus, for teams that already write OPA).

pub mod capability;
pub mod document;
mod index;
pub mod lint;
pub mod profiles;
pub mod rego;

use crate::policy::capability::{parse_fs, parse_net, parse_resources, parse_tool, Capability};
use crate::policy::document::{
    DecisionWord, FsMatchDocument, Located, MatchDocument, ModeWord, NetMatchDocument,
    PolicyDocument, PortDocument, ResourcesMatchDocument, RuleDocument, ToolMatchDocument,
};
use airlock_proto::argv_pattern::ArgvPattern;
use airlock_proto::manifest::{Access, Resources};
use airlock_proto::tool_rules::{ConfigKeyPattern, ToolGrant, ToolMatch, ToolRule};
use airlock_proto::verdict::{Decision, Verdict};
use globset::{Glob, GlobBuilder, GlobMatcher};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::ops::{Range, RangeInclusive};
use std::path::Path;

/// Largest policy file accepted.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Rule id reported when a resources request fits under no `resources` rule.
pub const NO_CEILING_RULE_ID: &str = "no-ceiling";

/// Anything that decides capabilities.
pub trait DecisionEngine {
    /// Short name for reports (`native`, `rego`).
    fn name(&self) -> &'static str;
    /// Decides one capability.
    fn decide(&self, capability: &Capability) -> Result<Decision, EngineError>;
}

/// An engine could not decide. Callers treat it as a denial.
#[derive(Debug, thiserror::Error)]
#[error("{engine} engine: {message}")]
pub struct EngineError {
    /// Which engine.
    pub engine: &'static str,
    /// What went wrong.
    pub message: String,
}

/// Decides with `engine`, turning an engine failure into a denial that says why.
pub fn decide_or_deny(engine: &dyn DecisionEngine, capability: &Capability) -> Decision {
    engine.decide(capability).unwrap_or_else(|e| Decision {
        verdict: Verdict::Deny,
        rule_id: "engine-error".into(),
        reason: e.to_string(),
    })
}

/// A policy that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{origin}: cannot read policy: {source}")]
    Read {
        /// File name.
        origin: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is too large.
    #[error("{origin}: policy is {size} bytes, over the {MAX_POLICY_BYTES}-byte limit")]
    TooLarge {
        /// File name.
        origin: String,
        /// Its size.
        size: u64,
    },
    /// A problem at a place in the file.
    #[error("{origin}:{line}:{col}: {message}")]
    At {
        /// File name.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (characters).
        col: usize,
        /// What is wrong.
        message: String,
    },
}

/// 1-based line and column of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where a rule or example is in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

/// What a fs rule's `mode` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeMatch {
    /// Read-only requests.
    Ro,
    /// Copy-on-write read-write requests.
    Rw,
    /// Live write-through requests (only ever matched by a rule that names them).
    RwLive,
    /// `ro` and `rw` (never `rw-live`: live write-through is granted by name only).
    Any,
}

impl ModeMatch {
    fn admits(self, mode: Access) -> bool {
        matches!(
            (self, mode),
            (ModeMatch::Any, Access::Ro | Access::Rw)
                | (ModeMatch::Ro, Access::Ro)
                | (ModeMatch::Rw, Access::Rw)
                | (ModeMatch::RwLive, Access::RwLive)
        )
    }
    /// Does every mode `other` admits pass `self` too?
    fn covers(self, other: ModeMatch) -> bool {
        self == other || (self == ModeMatch::Any && other != ModeMatch::RwLive)
    }
    /// Name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            ModeMatch::Ro => "ro",
            ModeMatch::Rw => "rw",
            ModeMatch::RwLive => "rw-live",
            ModeMatch::Any => "any",
        }
    }
}

/// A compiled `match.fs`.
#[derive(Debug, Clone)]
pub struct PathMatch {
    /// The glob as written.
    pub pattern: String,
    glob: GlobMatcher,
    /// For `dir/**`: matches `dir` itself.
    dir_itself: Option<GlobMatcher>,
    /// Access covered.
    pub mode: ModeMatch,
    /// `rw-live` may be granted on a directory root owns (`root_owned = true`).
    pub root_owned: bool,
    /// Longest directory prefix without wildcards (index key).
    pub(crate) literal_dir: String,
}

impl PathMatch {
    /// Does the glob match this (normalized, absolute) path?
    pub fn matches_path(&self, path: &str) -> bool {
        self.glob.is_match(path) || self.dir_itself.as_ref().is_some_and(|d| d.is_match(path))
    }
}

/// A compiled host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This name only.
    Exact(String),
    /// `*.suffix`: names strictly under `suffix`.
    Under(String),
    /// `*`: any name.
    Any,
}

impl HostPattern {
    /// Does the (normalized) host match? A requested `*.name` (every name strictly
    /// under `name`) matches only a pattern that matches every one of them.
    pub fn matches(&self, host: &str) -> bool {
        if let Some(under) = host.strip_prefix("*.") {
            return match self {
                HostPattern::Exact(_) => false,
                HostPattern::Under(suffix) => under == suffix || self.matches(under),
                HostPattern::Any => true,
            };
        }
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Under(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            HostPattern::Any => true,
        }
    }
    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Any, _) => true,
            (_, HostPattern::Any) => false,
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Under(_), HostPattern::Exact(b)) => self.matches(b),
            (HostPattern::Under(a), HostPattern::Under(b)) => {
                a == b || HostPattern::Under(a.clone()).matches(b)
            }
            (HostPattern::Exact(_), HostPattern::Under(_)) => false,
        }
    }
}

/// A compiled `match.net`.
#[derive(Debug, Clone)]
pub struct HostMatch {
    /// Host pattern as written.
    pub pattern: String,
    /// Compiled host pattern.
    pub host: HostPattern,
    /// Inclusive port range.
    pub ports: RangeInclusive<u16>,
}

/// A compiled `match.resources`: each `Some` is a ceiling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ceilings {
    /// Most vCPUs.
    pub vcpus: Option<u32>,
    /// Most memory, MiB.
    pub memory_mib: Option<u64>,
    /// Most scratch disk, MiB.
    pub disk_mib: Option<u64>,
    /// Most processes.
    pub pids: Option<u32>,
    /// Longest wall time, seconds.
    pub wall_time_secs: Option<u64>,
    /// Most connections open at once.
    pub net_connections: Option<u32>,
    /// Most network traffic, MiB.
    pub net_mib: Option<u64>,
}

impl Ceilings {
    /// Is every requested amount at or under its ceiling?
    pub fn admit(&self, r: &Resources) -> bool {
        fn ok<T: PartialOrd>(ceiling: Option<T>, v: T) -> bool {
            ceiling.is_none_or(|c| v <= c)
        }
        ok(self.vcpus, r.vcpus)
            && ok(self.memory_mib, r.memory_mib)
            && ok(self.disk_mib, r.disk_mib)
            && ok(self.pids, r.pids)
            && ok(self.wall_time_secs, r.wall_time_secs)
            && ok(self.net_connections, r.net_connections)
            && ok(self.net_mib, r.net_mib)
    }
    fn covers(&self, other: &Ceilings) -> bool {
        fn cov<T: PartialOrd>(a: Option<T>, b: Option<T>) -> bool {
            match (a, b) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => b <= a,
            }
        }
        cov(self.vcpus, other.vcpus)
            && cov(self.memory_mib, other.memory_mib)
            && cov(self.disk_mib, other.disk_mib)
            && cov(self.pids, other.pids)
            && cov(self.wall_time_secs, other.wall_time_secs)
            && cov(self.net_connections, other.net_connections)
            && cov(self.net_mib, other.net_mib)
    }
}

/// What a rule matches.
#[derive(Debug, Clone)]
pub enum RuleMatch {
    /// Host paths.
    Fs(PathMatch),
    /// Network endpoints.
    Net(HostMatch),
    /// Invocations of one program.
    Tool {
        /// Program (basename).
        program: String,
        /// Arguments or configuration key.
        matcher: ToolMatch,
    },
    /// Resource requests under these ceilings.
    Resources(Ceilings),
}

impl RuleMatch {
    /// Does this matcher match the capability?
    pub fn matches(&self, cap: &Capability) -> bool {
        match (self, cap) {
            (RuleMatch::Fs(m), Capability::Fs { path, mode }) => {
                m.mode.admits(*mode) && m.matches_path(path)
            }
            (RuleMatch::Net(m), Capability::Net { host, port }) => {
                m.ports.contains(port) && m.host.matches(host)
            }
            (RuleMatch::Tool { program, matcher }, Capability::Tool { program: p, args }) => {
                program == p && matcher.matches_argv(args)
            }
            (RuleMatch::Tool { program, matcher }, Capability::ToolConfig { program: p, key }) => {
                program == p && matches!(matcher, ToolMatch::Config(k) if k.matches(key))
            }
            (RuleMatch::Resources(c), Capability::Resources(r)) => c.admit(r),
            _ => false,
        }
    }

    /// Does this matcher match everything `other` matches? (Sound, not complete: used to
    /// report shadowed rules, never to decide.)
    pub fn covers(&self, other: &RuleMatch) -> bool {
        match (self, other) {
            (RuleMatch::Fs(a), RuleMatch::Fs(b)) => {
                a.mode.covers(b.mode)
                    && (a.pattern == b.pattern
                        || (is_literal_glob(&b.pattern) && a.matches_path(&b.pattern))
                        || a.pattern
                            .strip_suffix("/**")
                            .filter(|dir| !dir.contains(['*', '?', '[', '{', '\\']))
                            .is_some_and(|dir| {
                                b.pattern == dir || b.pattern.starts_with(&format!("{dir}/"))
                            }))
            }
            (RuleMatch::Net(a), RuleMatch::Net(b)) => {
                a.ports.start() <= b.ports.start()
                    && b.ports.end() <= a.ports.end()
                    && a.host.covers(&b.host)
            }
            (
                RuleMatch::Tool {
                    program: pa,
                    matcher: ma,
                },
                RuleMatch::Tool {
                    program: pb,
                    matcher: mb,
                },
            ) => {
                pa == pb
                    && match (ma, mb) {
                        (ToolMatch::Argv(a), ToolMatch::Argv(b)) => a.subsumes(b),
                        (ToolMatch::Config(a), ToolMatch::Config(b)) => a.subsumes(b),
                        _ => false,
                    }
            }
            (RuleMatch::Resources(a), RuleMatch::Resources(b)) => a.covers(b),
            _ => false,
        }
    }

    /// The kind this matcher decides.
    pub fn kind(&self) -> &'static str {
        match self {
            RuleMatch::Fs(_) => "fs",
            RuleMatch::Net(_) => "net",
            RuleMatch::Tool { .. } => "tool",
            RuleMatch::Resources(_) => "resources",
        }
    }
}

fn is_literal_glob(p: &str) -> bool {
    !p.contains(['*', '?', '[', '{', '\\'])
}

/// A rule's example, parsed.
#[derive(Debug, Clone)]
pub struct Example {
    /// As written.
    pub text: String,
    /// Where.
    pub location: Location,
    /// The capabilities it stands for.
    pub capabilities: Vec<Capability>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique id.
    pub id: String,
    /// Where the rule's `id` is.
    pub location: Location,
    /// What it matches.
    pub matcher: RuleMatch,
    /// What it decides.
    pub decision: Verdict,
    /// Why.
    pub reason: String,
    /// Examples that must match.
    pub matches: Vec<Example>,
    /// Examples that must not match.
    pub not_match: Vec<Example>,
}

impl Rule {
    fn decision(&self) -> Decision {
        Decision {
            verdict: self.decision,
            rule_id: self.id.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// A loaded, checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// File it came from.
    pub origin: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Decision when no rule matches.
    pub default: Verdict,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Execution profiles the policy declares (`[[profile]]`), replacing the shipped
    /// ones for their programs (see [`Policy::tool_profile`]).
    pub profiles: Vec<profiles::DeclaredProfile>,
    /// Protected paths of writable grants: the policy's `[[protect]]` entries, then the
    /// shipped defaults ([`crate::merge_gate::default_protected_paths`]).
    pub protected: Vec<crate::merge_gate::ProtectedPath>,
    /// How long an ask waits for an answer (`ask_timeout`), when the policy says.
    pub ask_timeout_secs: Option<u64>,
    index: index::RuleIndex,
}

/// Longest an ask may wait: the guest's broker gives the host 110 s per ask, and an
/// answer must arrive before it gives up.
pub const MAX_ASK_TIMEOUT_SECS: u64 = 100;

impl Policy {
    /// Reads and compiles a policy file (at most [`MAX_POLICY_BYTES`]).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let read = |source| PolicyError::Read {
            origin: origin.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let size = file.metadata().map_err(read)?.len();
        if size > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge { origin, size });
        }
        let mut text = String::new();
        use std::io::Read;
        file.take(MAX_POLICY_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                origin,
                size: text.len() as u64,
            });
        }
        Policy::from_toml(&origin, &text)
    }

    /// Compiles policy text; `origin` names it in errors.
    pub fn from_toml(origin: &str, text: &str) -> Result<Policy, PolicyError> {
        let cx = Ctx { origin, text };
        let doc: PolicyDocument = toml::from_str(text).map_err(|e| {
            cx.err(
                e.span().unwrap_or(0..0),
                e.message().trim_end().replace('\n', "; "),
            )
        })?;
        if doc.version.value != 1 {
            return Err(cx.err(
                doc.version.span.clone(),
                format!(
                    "policy version {} is not supported (expected 1)",
                    doc.version.value
                ),
            ));
        }
        let mut rules = Vec::with_capacity(doc.rules.len());
        let mut ids = HashSet::new();
        for rule in doc.rules {
            let id_span = rule.id.span.clone();
            let compiled = compile_rule(rule, &cx)?;
            if !ids.insert(compiled.id.clone()) {
                return Err(cx.err(id_span, format!("duplicate rule id `{}`", compiled.id)));
            }
            rules.push(compiled);
        }
        let profiles = profiles::compile_profiles(doc.profiles, &cx)?;
        let mut protected = Vec::new();
        for p in doc.protect {
            use crate::merge_gate::{ProtectDecision, ProtectedPath};
            let decision = match p.decision.value {
                document::DecisionWord::Deny => ProtectDecision::Deny,
                document::DecisionWord::Ask => ProtectDecision::Ask,
                document::DecisionWord::Allow => {
                    return Err(cx.err(
                        p.decision.span,
                        "a protected path is `deny` or `ask`; to let changes through, leave the path out".into(),
                    ))
                }
            };
            if p.reason.value.trim().is_empty() {
                return Err(cx.err(p.reason.span, "protect: reason is empty; say why".into()));
            }
            let glob = ProtectedPath::new(&p.path.value, decision, &p.reason.value, "policy")
                .map_err(|e| cx.err(p.path.span.clone(), format!("protect: {e}")))?;
            protected.push(glob);
        }
        protected.extend(crate::merge_gate::default_protected_paths());
        let ask_timeout_secs = match &doc.ask_timeout {
            None => None,
            Some(t) => {
                let secs = crate::mint::parse_duration_secs(&t.value)
                    .map_err(|e| cx.err(t.span.clone(), format!("ask_timeout: {e}")))?;
                if !(1..=MAX_ASK_TIMEOUT_SECS).contains(&secs) {
                    return Err(cx.err(
                        t.span.clone(),
                        format!("ask_timeout: {secs}s is outside 1s..={MAX_ASK_TIMEOUT_SECS}s"),
                    ));
                }
                Some(secs)
            }
        };
        let index = index::RuleIndex::build(&rules);
        Ok(Policy {
            ask_timeout_secs,
            origin: origin.to_string(),
            digest: format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes()))),
            default: doc.default.value.into(),
            rules,
            profiles,
            protected,
            index,
        })
    }

    /// May the rule `rule_id` grant `rw-live` on a root-owned directory?
    pub fn rule_allows_root_owned(&self, rule_id: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.id == rule_id && matches!(&r.matcher, RuleMatch::Fs(p) if p.root_owned))
    }

    /// First-match decision (indexed).
    pub fn decide(&self, cap: &Capability) -> Decision {
        self.finish(cap, self.index.first_match(&self.rules, cap))
    }

    /// First-match decision by scanning every rule in order: the reference the index
    /// is tested against.
    pub fn decide_linear(&self, cap: &Capability) -> Decision {
        self.finish(cap, self.rules.iter().position(|r| r.matcher.matches(cap)))
    }

    fn finish(&self, cap: &Capability, hit: Option<usize>) -> Decision {
        match (hit, cap) {
            (Some(i), _) => self.rules[i].decision(),
            (None, Capability::Resources(_)) => Decision {
                verdict: Verdict::Deny,
                rule_id: NO_CEILING_RULE_ID.into(),
                reason: "request is above every resources ceiling in the policy".into(),
            },
            (None, _) => Decision {
                verdict: self.default,
                rule_id: Decision::DEFAULT_RULE_ID.into(),
                reason: format!("no rule matches `{cap}`; the policy default applies"),
            },
        }
    }

    /// Decides several capabilities (one invocation): most restrictive wins, the first
    /// capability carrying that verdict explains it.
    pub fn decide_all(&self, caps: &[Capability]) -> Decision {
        let parts = caps
            .iter()
            .map(|c| (c.to_string(), self.decide(c)))
            .collect::<Vec<_>>();
        airlock_proto::tool_rules::combine_parts(parts).decisive
    }

    /// The run-time rules for one program, in policy order, as the manifest carries
    /// them.
    pub fn tool_grant(&self, program: &str) -> ToolGrant {
        ToolGrant {
            program: program.to_string(),
            rules: self
                .index
                .tool_rules(program)
                .iter()
                .map(|&i| {
                    let r = &self.rules[i];
                    let RuleMatch::Tool { matcher, .. } = &r.matcher else {
                        unreachable!("tool index holds tool rules only")
                    };
                    ToolRule {
                        id: r.id.clone(),
                        matcher: matcher.clone(),
                        decision: r.decision,
                        reason: r.reason.clone(),
                    }
                })
                .collect(),
            default: self.default,
            profile: self.tool_profile(program),
        }
    }

    /// Plan-time decision on granting a program at all: granted if some invocation of
    /// it could be allowed or asked at run time.
    pub fn decide_tool_grant(&self, program: &str) -> Decision {
        let grant = self.tool_grant(program);
        let argv_rules: Vec<&ToolRule> = grant
            .rules
            .iter()
            .filter(|r| matches!(r.matcher, ToolMatch::Argv(_)))
            .collect();
        // An argv rule is reachable unless an earlier argv rule covers all it matches.
        let reachable = |i: usize| {
            let ToolMatch::Argv(p) = &argv_rules[i].matcher else {
                return false;
            };
            !argv_rules[..i]
                .iter()
                .any(|e| matches!(&e.matcher, ToolMatch::Argv(q) if q.subsumes(p)))
        };
        let catch_all = argv_rules.iter().position(
            |r| matches!(&r.matcher, ToolMatch::Argv(p) if p.subsumes(&ArgvPattern::any())),
        );
        let granting: Vec<&ToolRule> = (0..argv_rules.len())
            .filter(|&i| argv_rules[i].decision != Verdict::Deny && reachable(i))
            .map(|i| argv_rules[i])
            .collect();
        let default_reachable = catch_all.is_none() && grant.default != Verdict::Deny;
        let counts = |v: Verdict| grant.rules.iter().filter(|r| r.decision == v).count();
        if !granting.is_empty() || default_reachable {
            // Name the first rule that allows outright, else the first that asks.
            let rule_id = granting
                .iter()
                .find(|r| r.decision == Verdict::Allow)
                .or(granting.first())
                .map_or(Decision::DEFAULT_RULE_ID.to_string(), |r| r.id.clone());
            return Decision {
                verdict: Verdict::Allow,
                rule_id,
                reason: format!(
                    "`{program}` granted; each invocation is decided at run time by {} rule(s) ({} allow, {} ask, {} deny; default {})",
                    grant.rules.len(),
                    counts(Verdict::Allow),
                    counts(Verdict::Ask),
                    counts(Verdict::Deny),
                    grant.default
                ),
            };
        }
        match catch_all
            .map(|i| argv_rules[i])
            .or(argv_rules.first().copied())
        {
            Some(r) => Decision {
                verdict: Verdict::Deny,
                rule_id: r.id.clone(),
                reason: r.reason.clone(),
            },
            None => Decision {
                verdict: Verdict::Deny,
                rule_id: Decision::DEFAULT_RULE_ID.into(),
                reason: format!("no rule grants `{program}` and the policy default is deny"),
            },
        }
    }
}

impl DecisionEngine for Policy {
    fn name(&self) -> &'static str {
        "native"
    }
    fn decide(&self, capability: &Capability) -> Result<Decision, EngineError> {
        Ok(Policy::decide(self, capability))
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn compile_rule(rule: RuleDocument, cx: &Ctx<'_>) -> Result<Rule, PolicyError> {
    let id = rule.id.value;
    if !valid_id(&id) {
        return Err(cx.err(
            rule.id.span,
            format!("rule id `{id}` must be 1-64 characters of [A-Za-z0-9._-]"),
        ));
    }
    let matcher = compile_match(rule.matcher, &id, cx)?;
    if rule.reason.value.trim().is_empty() {
        return Err(cx.err(
            rule.reason.span,
            format!("rule `{id}`: reason is empty; say why, the agent will read it"),
        ));
    }
    let default_mode = match &matcher {
        RuleMatch::Fs(p) if p.mode == ModeMatch::Rw => Some(Access::Rw),
        RuleMatch::Fs(p) if p.mode == ModeMatch::RwLive => Some(Access::RwLive),
        _ => None,
    };
    let parse_examples = |list: Vec<Located<String>>| -> Result<Vec<Example>, PolicyError> {
        list.into_iter()
            .map(|ex| {
                let parsed = match &matcher {
                    RuleMatch::Fs(_) => parse_fs(&ex.value, default_mode).map(|c| vec![c]),
                    RuleMatch::Net(_) => parse_net(&ex.value).map(|c| vec![c]),
                    RuleMatch::Tool { .. } => parse_tool(&ex.value),
                    RuleMatch::Resources(_) => parse_resources(&ex.value).map(|c| vec![c]),
                };
                let capabilities = parsed.map_err(|p| {
                    cx.err(
                        ex.span.clone(),
                        format!("rule `{id}`: example `{}`: {p}", ex.value),
                    )
                })?;
                Ok(Example {
                    location: cx.loc(&ex.span),
                    text: ex.value,
                    capabilities,
                })
            })
            .collect()
    };
    let matches = parse_examples(rule.examples.matches)?;
    let not_match = parse_examples(rule.examples.not_match)?;
    for ex in &matches {
        if !ex.capabilities.iter().any(|c| matcher.matches(c)) {
            return Err(cx.err_at(
                ex.location,
                format!(
                    "rule `{id}`: example `{}` should match this rule but does not",
                    ex.text
                ),
            ));
        }
    }
    for ex in &not_match {
        if ex.capabilities.iter().any(|c| matcher.matches(c)) {
            return Err(cx.err_at(
                ex.location,
                format!(
                    "rule `{id}`: example `{}` should not match this rule but does",
                    ex.text
                ),
            ));
        }
    }
    Ok(Rule {
        location: cx.loc(&rule.id.span),
        id,
        matcher,
        decision: rule.decision.value.into(),
        reason: rule.reason.value,
        matches,
        not_match,
    })
}

/// The file being compiled, for locating errors.
struct Ctx<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn loc(&self, span: &Range<usize>) -> Location {
        let (line, col) = line_col(self.text, span.start);
        Location { line, col }
    }
    fn err(&self, span: Range<usize>, message: String) -> PolicyError {
        self.err_at(self.loc(&span), message)
    }
    fn err_at(&self, loc: Location, message: String) -> PolicyError {
        PolicyError::At {
            origin: self.origin.to_string(),
            line: loc.line,
            col: loc.col,
            message,
        }
    }
}

fn compile_match(
    m: Located<MatchDocument>,
    id: &str,
    cx: &Ctx<'_>,
) -> Result<RuleMatch, PolicyError> {
    let span = m.span;
    let MatchDocument {
        fs,
        net,
        tool,
        resources,
    } = m.value;
    let set = [
        fs.is_some(),
        net.is_some(),
        tool.is_some(),
        resources.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        return Err(cx.err(
            span,
            format!("rule `{id}`: `match` must set exactly one of fs, net, tool, resources (it sets {set})"),
        ));
    }
    if let Some(fs) = fs {
        return compile_fs(fs, id, cx).map(RuleMatch::Fs);
    }
    if let Some(net) = net {
        return compile_net(net, id, cx).map(RuleMatch::Net);
    }
    if let Some(tool) = tool {
        return compile_tool(tool, id, cx);
    }
    let r = resources.expect("exactly one kind is set");
    Ok(RuleMatch::Resources(compile_resources(r)))
}

/// A path glob as fs rules use it: `*` within a component, `\\` escapes.
fn path_glob(
    pattern: &str,
    at: &Located<String>,
    id: &str,
    cx: &Ctx<'_>,
) -> Result<GlobMatcher, PolicyError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g: Glob| g.compile_matcher())
        .map_err(|e| cx.err(at.span.clone(), format!("rule `{id}`: bad path glob: {e}")))
}

fn compile_fs(fs: FsMatchDocument, id: &str, cx: &Ctx<'_>) -> Result<PathMatch, PolicyError> {
    let glob = path_glob(&fs.path.value, &fs.path, id, cx)?;
    let mode = match fs.mode.map(|m| m.value) {
        None | Some(ModeWord::Any) => ModeMatch::Any,
        Some(ModeWord::Ro) => ModeMatch::Ro,
        Some(ModeWord::Rw) => ModeMatch::Rw,
        Some(ModeWord::RwLive) => ModeMatch::RwLive,
    };
    let root_owned = match fs.root_owned {
        Some(flag) if flag.value && mode != ModeMatch::RwLive => {
            return Err(cx.err(
                flag.span,
                format!("rule `{id}`: root_owned only means something with mode = \"rw-live\" (copy-on-write grants never pass set-id bits to the host)"),
            ))
        }
        Some(flag) => flag.value,
        None => false,
    };
    // `dir/**` also matches `dir` itself: mounting the directory is the common case.
    let dir_itself = match fs.path.value.strip_suffix("/**").filter(|d| !d.is_empty()) {
        Some(dir) => Some(path_glob(dir, &fs.path, id, cx)?),
        None => None,
    };
    let pattern = fs.path.value;
    let literal_dir = literal_dir_of(&pattern);
    Ok(PathMatch {
        pattern,
        glob,
        dir_itself,
        mode,
        root_owned,
        literal_dir,
    })
}

/// The directory part of a glob before its first wildcard (`/home/*/x` → `/home`).
fn literal_dir_of(pattern: &str) -> String {
    let cut = pattern
        .find(['*', '?', '[', '{', '\\'])
        .unwrap_or(pattern.len());
    let head = &pattern[..cut];
    let dir = if cut == pattern.len() {
        head.trim_end_matches('/')
    } else {
        head.rfind('/').map_or("", |i| &head[..i])
    };
    if dir.is_empty() {
        "/".to_string()
    } else {
        dir.to_string()
    }
}

fn compile_net(net: NetMatchDocument, id: &str, cx: &Ctx<'_>) -> Result<HostMatch, PolicyError> {
    let raw = net.host.value;
    let bad = |msg: String| {
        cx.err(
            net.host.span.clone(),
            format!("rule `{id}`: host `{raw}`: {msg}"),
        )
    };
    let host = if raw == "*" {
        HostPattern::Any
    } else if let Some(rest) = raw.strip_prefix("*.") {
        if rest.contains('*') {
            return Err(bad("only one leading `*.` wildcard is supported".into()));
        }
        HostPattern::Under(capability::normalize_host(rest).map_err(bad)?)
    } else if raw.contains('*') {
        return Err(bad(
            "`*` is only supported as a whole leading label (`*.example.com`) or alone".into(),
        ));
    } else {
        HostPattern::Exact(capability::normalize_host(&raw).map_err(bad)?)
    };
    let ports = match net.port {
        None => 1..=u16::MAX,
        Some(p) => {
            let bad_port = |msg: String| cx.err(p.span.clone(), format!("rule `{id}`: port {msg}"));
            let port = |n: i64| {
                u16::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad_port(format!("{n} is not in 1-65535")))
            };
            match p.value {
                PortDocument::One(n) => {
                    let n = port(n)?;
                    n..=n
                }
                PortDocument::Range(ref s) => {
                    let (lo, hi) = s
                        .split_once('-')
                        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
                        .ok_or_else(|| {
                            bad_port(format!("`{s}` is not a number or LOW-HIGH range"))
                        })?;
                    let (lo, hi) = (port(lo)?, port(hi)?);
                    if lo > hi {
                        return Err(bad_port(format!("range `{s}` is empty")));
                    }
                    lo..=hi
                }
            }
        }
    };
    Ok(HostMatch {
        pattern: raw,
        host,
        ports,
    })
}

fn compile_tool(tool: ToolMatchDocument, id: &str, cx: &Ctx<'_>) -> Result<RuleMatch, PolicyError> {
    let program = tool.program.value;
    if program.is_empty()
        || !program
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
    {
        return Err(cx.err(
            tool.program.span,
            format!("rule `{id}`: program `{program}` must be a bare name (rules match the basename of argv[0])"),
        ));
    }
    let matcher = match (tool.argv, tool.config) {
        (Some(_), Some(c)) => {
            return Err(cx.err(
                c.span,
                format!("rule `{id}`: set `argv` or `config`, not both"),
            ))
        }
        (Some(a), None) => ToolMatch::Argv(
            ArgvPattern::parse(&a.value)
                .map_err(|e| cx.err(a.span.clone(), format!("rule `{id}`: {e}")))?,
        ),
        (None, Some(c)) => ToolMatch::Config(
            ConfigKeyPattern::parse(&c.value)
                .map_err(|e| cx.err(c.span.clone(), format!("rule `{id}`: {e}")))?,
        ),
        (None, None) => ToolMatch::Argv(ArgvPattern::any()),
    };
    Ok(RuleMatch::Tool { program, matcher })
}

fn compile_resources(r: ResourcesMatchDocument) -> Ceilings {
    Ceilings {
        vcpus: r.vcpus.map(|v| v.value),
        memory_mib: r.memory_mib.map(|v| v.value),
        disk_mib: r.disk_mib.map(|v| v.value),
        pids: r.pids.map(|v| v.value),
        wall_time_secs: r.wall_time_secs.map(|v| v.value),
        net_connections: r.net_connections.map(|v| v.value),
        net_mib: r.net_mib.map(|v| v.value),
    }
}

impl DecisionWord {
    /// As a verdict.
    pub fn verdict(self) -> Verdict {
        self.into()
    }
}

#[cfg(test)]
mod tests;
