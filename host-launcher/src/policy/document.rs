//! The policy file as written (TOML), before compilation.
//!
//! These types are the policy language's schema (`manifests/schemas/policy.schema.json`
//! is generated from them). Every field that compilation can reject is [`Located`], so a
//! bad glob or a failing example is reported at its own line and column.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::ops::Range;

/// A value with the byte range it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Byte range in the source file.
    pub span: Range<usize>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = toml::Spanned::<T>::deserialize(d)?;
        Ok(Located {
            span: spanned.span(),
            value: spanned.into_inner(),
        })
    }
}

impl<T: JsonSchema> JsonSchema for Located<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// A policy file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Airlock policy",
    description = "Ordered allow/ask/deny rules; the first rule that matches a capability decides it."
)]
pub struct PolicyDocument {
    /// Policy language version; must be 1.
    pub version: Located<u32>,
    /// Decision when no rule matches.
    pub default: Located<DecisionWord>,
    /// Ordered rules.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleDocument>,
    /// Execution profiles that replace the shipped one for their program.
    #[serde(default, rename = "profile")]
    pub profiles: Vec<ProfileDocument>,
    /// Protected paths inside writable grants, added to the shipped ones.
    #[serde(default, rename = "protect")]
    pub protect: Vec<ProtectDocument>,
    /// How long an ask waits for an approver before it is denied (`90s`, `2m`; at most
    /// 100 s; default 60 s). A launcher's `--ask-timeout` overrides it.
    #[serde(default)]
    pub ask_timeout: Option<Located<String>>,
}

/// `[[protect]]`: a glob inside every writable grant whose changes the merge-back gate
/// never applies unreviewed (matched relative to the grant's root; `**/` for any
/// depth).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtectDocument {
    /// Glob relative to the grant's root, e.g. `**/Makefile` or `ci/**`.
    pub path: Located<String>,
    /// `deny` (dropped from the merge and reported) or `ask`.
    pub decision: Located<DecisionWord>,
    /// Why (shown in the merge report).
    pub reason: Located<String>,
}

/// `[[profile]]`: what a granted program's own sandbox may execute and read besides its
/// binary, the shims and the loader. Replaces the profile shipped for that program.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileDocument {
    /// Program the profile is for (basename, as tool rules name it); one profile per
    /// program.
    pub program: Located<String>,
    /// Name shown when the profile refuses something (`[A-Za-z0-9._-]+`); defaults to
    /// the program.
    #[serde(default)]
    pub name: Option<Located<String>>,
    /// Absolute, normalized guest paths the tool may execute (a directory: everything
    /// below it). Literal paths, not globs; paths the image lacks are skipped.
    #[serde(default)]
    pub executes: Vec<Located<String>>,
    /// Absolute, normalized guest paths the tool may read besides the agent's read set.
    #[serde(default)]
    pub reads: Vec<Located<String>>,
    /// Why the program needs these paths, for whoever reviews the policy.
    pub reason: Located<String>,
}

/// `allow`, `ask` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DecisionWord {
    /// Grant.
    Allow,
    /// Ask a human; no answer means deny.
    Ask,
    /// Refuse.
    Deny,
}

impl From<DecisionWord> for airlock_proto::verdict::Verdict {
    fn from(d: DecisionWord) -> Self {
        use airlock_proto::verdict::Verdict;
        match d {
            DecisionWord::Allow => Verdict::Allow,
            DecisionWord::Ask => Verdict::Ask,
            DecisionWord::Deny => Verdict::Deny,
        }
    }
}

/// One rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleDocument {
    /// Unique id, reported with every decision the rule makes (`[A-Za-z0-9._-]+`).
    pub id: Located<String>,
    /// What the rule matches: exactly one of `fs`, `net`, `tool`, `resources`.
    #[serde(rename = "match")]
    pub matcher: Located<MatchDocument>,
    /// What it decides.
    pub decision: Located<DecisionWord>,
    /// Why; shown to the agent and the person on every decision it makes.
    pub reason: Located<String>,
    /// Capabilities (in the text form of the rule's kind) the rule must / must not
    /// match; checked when the policy is loaded.
    #[serde(default)]
    pub examples: ExamplesDocument,
}

/// Self-tests of a rule.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExamplesDocument {
    /// Each must match this rule.
    #[serde(default, rename = "match")]
    pub matches: Vec<Located<String>>,
    /// None may match this rule.
    #[serde(default)]
    pub not_match: Vec<Located<String>>,
}

/// The match table; exactly one kind must be set.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchDocument {
    /// Host paths.
    pub fs: Option<FsMatchDocument>,
    /// Network endpoints.
    pub net: Option<NetMatchDocument>,
    /// Program invocations.
    pub tool: Option<ToolMatchDocument>,
    /// Resource ceilings.
    pub resources: Option<ResourcesMatchDocument>,
}

/// `match.fs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FsMatchDocument {
    /// Absolute glob: `*` within one path component, `**` across components; a trailing
    /// `/**` also matches the directory itself. Matched against the path with symlinks
    /// resolved.
    pub path: Located<String>,
    /// Which access the rule covers: `ro`, `rw` (copy-on-write), `rw-live` (direct
    /// write-through, only by name), or `any` (default: `ro` and `rw`).
    #[serde(default)]
    pub mode: Option<Located<ModeWord>>,
    /// `rw-live` only: the directory may be owned by root. Without it a root-owned
    /// live grant is refused (set-id bits a root-owned tree keeps are root's).
    #[serde(default)]
    pub root_owned: Option<Located<bool>>,
}

/// Access a fs rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModeWord {
    /// Read-only requests only.
    Ro,
    /// Copy-on-write read-write requests only.
    Rw,
    /// Live write-through requests only.
    RwLive,
    /// Both.
    Any,
}

/// `match.net`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetMatchDocument {
    /// `example.com` (that name only), `*.example.com` (any name under it, not itself),
    /// or `*` (any name). Case-insensitive.
    pub host: Located<String>,
    /// A port, a range `"8000-8999"`, or absent for any port.
    #[serde(default)]
    pub port: Option<Located<PortDocument>>,
}

/// A port or an inclusive range.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PortDocument {
    /// One port.
    One(i64),
    /// `"LOW-HIGH"`.
    Range(String),
}

/// `match.tool`: a program plus either `argv` or `config` (or neither: any arguments).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolMatchDocument {
    /// Program name as invoked (basename, e.g. `git`).
    pub program: Located<String>,
    /// Argument pattern after the program's global options (`commit **`). Default `**`.
    #[serde(default)]
    pub argv: Option<Located<String>>,
    /// Configuration key set on the command line (`core.pager`, `alias.*`).
    #[serde(default)]
    pub config: Option<Located<String>>,
}

/// `match.resources`: matches requests at or below every ceiling given.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesMatchDocument {
    /// Most virtual CPUs.
    pub vcpus: Option<Located<u32>>,
    /// Most memory, MiB.
    pub memory_mib: Option<Located<u64>>,
    /// Most scratch disk, MiB.
    pub disk_mib: Option<Located<u64>>,
    /// Most processes/threads.
    pub pids: Option<Located<u32>>,
    /// Longest wall-clock time, seconds.
    pub wall_time_secs: Option<Located<u64>>,
    /// Most network connections open at once.
    pub net_connections: Option<Located<u32>>,
    /// Most network traffic in total, MiB.
    pub net_mib: Option<Located<u64>>,
}
