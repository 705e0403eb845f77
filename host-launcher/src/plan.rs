//! Plans and their evaluation.
//!
//! A plan says what a session wants: the command, host directories, network endpoints,
//! tools and resources. [`evaluate`] turns every request into a capability, decides each
//! with the policy, and reports decision, rule and reason per request.

use crate::policy::capability::{default_resources, normalize_requested_host, Capability};
use crate::policy::{decide_or_deny, line_col, DecisionEngine, Policy};
use airlock_proto::manifest::{validate_abs_path, Access, Resources};
use airlock_proto::tool_invocation::Invocation;
use airlock_proto::verdict::{Decision, Verdict};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Largest plan file accepted.
pub const MAX_PLAN_BYTES: u64 = 1 << 20;

/// What a session asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Airlock plan",
    description = "What one agent session asks for; every request is decided by the policy."
)]
pub struct Plan {
    /// Command to run in the sandbox: program and arguments.
    pub command: Vec<String>,
    /// Working directory in the guest (default: the first mount's guest path, else `/`).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Host directories to share.
    #[serde(default)]
    pub mounts: Vec<PlanMount>,
    /// Network endpoints to reach.
    #[serde(default)]
    pub net: Vec<PlanEndpoint>,
    /// Programs to invoke (bare names, e.g. `git`).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Resources; unnamed ones take defaults (1 vCPU, 512 MiB, 256 MiB disk, 256 pids,
    /// 600 s).
    #[serde(default)]
    pub resources: PlanResources,
}

/// One host directory to share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanMount {
    /// Absolute host path (symlinks are resolved before the policy sees it).
    pub host: String,
    /// Absolute path in the guest.
    pub guest: String,
    /// `ro` or `rw`.
    pub mode: Access,
}

/// One network endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanEndpoint {
    /// DNS name.
    pub host: String,
    /// TCP port (default 443).
    #[serde(default = "https_port")]
    pub port: u16,
}

fn https_port() -> u16 {
    443
}

/// Requested resources; `None` takes the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanResources {
    /// Virtual CPUs (default 1).
    pub vcpus: Option<u32>,
    /// Memory, MiB (default 512).
    pub memory_mib: Option<u64>,
    /// Scratch disk, MiB (default 256).
    pub disk_mib: Option<u64>,
    /// Processes/threads (default 256).
    pub pids: Option<u32>,
    /// Wall-clock limit, seconds (default 600).
    pub wall_time_secs: Option<u64>,
    /// Network connections open at once (default 32).
    pub net_connections: Option<u32>,
    /// Network traffic in total, both directions, MiB (default 1024).
    pub net_mib: Option<u64>,
}

impl PlanResources {
    /// With defaults filled in.
    pub fn resolve(&self) -> Resources {
        let d = default_resources();
        Resources {
            vcpus: self.vcpus.unwrap_or(d.vcpus),
            memory_mib: self.memory_mib.unwrap_or(d.memory_mib),
            disk_mib: self.disk_mib.unwrap_or(d.disk_mib),
            pids: self.pids.unwrap_or(d.pids),
            wall_time_secs: self.wall_time_secs.unwrap_or(d.wall_time_secs),
            net_connections: self.net_connections.unwrap_or(d.net_connections),
            net_mib: self.net_mib.unwrap_or(d.net_mib),
        }
    }
}

/// A plan that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Unreadable file.
    #[error("{origin}: cannot read plan: {source}")]
    Read {
        /// File.
        origin: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Too large.
    #[error("{origin}: plan is over the {MAX_PLAN_BYTES}-byte limit")]
    TooLarge {
        /// File.
        origin: String,
    },
    /// Does not parse.
    #[error("{origin}:{line}:{col}: {message}")]
    Syntax {
        /// File.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What.
        message: String,
    },
    /// Parses but a field is wrong.
    #[error("{origin}: `{field}`: {problem}")]
    Field {
        /// File.
        origin: String,
        /// Field path.
        field: String,
        /// What.
        problem: String,
    },
}

impl Plan {
    /// Reads a TOML or JSON plan (`.json` is JSON, `.toml` is TOML, otherwise JSON if the
    /// first non-blank character is `{`).
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let origin = path.display().to_string();
        let read = |source| PlanError::Read {
            origin: origin.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_PLAN_BYTES {
            return Err(PlanError::TooLarge { origin });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let json = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => true,
            Some("toml") => false,
            _ => text.trim_start().starts_with('{'),
        };
        Plan::parse(&origin, &text, json)
    }

    /// Parses plan text.
    pub fn parse(origin: &str, text: &str, json: bool) -> Result<Plan, PlanError> {
        let plan: Plan = if json {
            serde_json::from_str(text).map_err(|e| PlanError::Syntax {
                origin: origin.into(),
                line: e.line(),
                col: e.column(),
                message: e.to_string(),
            })?
        } else {
            toml::from_str(text).map_err(|e| {
                let (line, col) = line_col(text, e.span().map_or(0, |s| s.start));
                PlanError::Syntax {
                    origin: origin.into(),
                    line,
                    col,
                    message: e.message().trim_end().replace('\n', "; "),
                }
            })?
        };
        plan.validate(origin)?;
        Ok(plan)
    }

    /// Adds tools to grant from outside the plan file (`airlock run --tool`). A name the
    /// plan already lists, or one given twice, is kept once: asking again for a tool
    /// already asked for changes nothing. (A plan *file* that lists a tool twice is still
    /// refused by [`Plan::validate`]: there it is a slip worth naming.)
    pub fn add_tools<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            if !self.tools.iter().any(|t| t == name) {
                self.tools.push(name.to_string());
            }
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self, origin: &str) -> Result<(), PlanError> {
        let bad = |field: String, problem: String| PlanError::Field {
            origin: origin.into(),
            field,
            problem,
        };
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(bad("command".into(), "must name a program".into()));
        }
        if let Some(cwd) = &self.cwd {
            validate_abs_path(cwd).map_err(|p| bad("cwd".into(), p))?;
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(bad(format!("env.{k}"), "invalid variable name".into()));
            }
        }
        let mut guests = BTreeSet::new();
        for (i, m) in self.mounts.iter().enumerate() {
            validate_abs_path(&m.host).map_err(|p| bad(format!("mounts[{i}].host"), p))?;
            validate_abs_path(&m.guest).map_err(|p| bad(format!("mounts[{i}].guest"), p))?;
            if m.guest == "/" {
                return Err(bad(
                    format!("mounts[{i}].guest"),
                    "cannot mount over `/`".into(),
                ));
            }
            if !guests.insert(m.guest.as_str()) {
                return Err(bad(
                    format!("mounts[{i}].guest"),
                    format!("`{}` is mounted twice", m.guest),
                ));
            }
        }
        for (i, e) in self.net.iter().enumerate() {
            normalize_requested_host(&e.host).map_err(|p| bad(format!("net[{i}].host"), p))?;
            if e.port == 0 {
                return Err(bad(format!("net[{i}].port"), "port 0".into()));
            }
        }
        let mut tools = BTreeSet::new();
        for (i, t) in self.tools.iter().enumerate() {
            if t.is_empty() || t.contains('/') || t.contains(char::is_whitespace) {
                return Err(bad(
                    format!("tools[{i}]"),
                    format!("`{t}` must be a bare program name"),
                ));
            }
            if !tools.insert(t.as_str()) {
                return Err(bad(format!("tools[{i}]"), format!("`{t}` listed twice")));
            }
        }
        let resources = self.resources.resolve();
        if let Some(name) = resources.first_zero_field() {
            return Err(bad(
                format!("resources.{name}"),
                "must be greater than 0".into(),
            ));
        }
        if let Some((name, why)) = resources.over_host_cap() {
            return Err(bad(format!("resources.{name}"), why));
        }
        Ok(())
    }
}

/// What a report line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// The command to run.
    Command,
    /// A mount.
    Mount,
    /// A network endpoint.
    Net,
    /// A tool grant.
    Tool,
    /// The resources.
    Resources,
}

impl RequestKind {
    /// Name as reported.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Command => "command",
            RequestKind::Mount => "mount",
            RequestKind::Net => "net",
            RequestKind::Tool => "tool",
            RequestKind::Resources => "resources",
        }
    }

    /// Must an `ask` on this kind be answered before the session starts? Network and
    /// tool asks can be answered when the connection or invocation happens.
    pub fn asks_up_front(self) -> bool {
        matches!(
            self,
            RequestKind::Command | RequestKind::Mount | RequestKind::Resources
        )
    }
}

/// The decision on one request.
#[derive(Debug, Clone, Serialize)]
pub struct ReportItem {
    /// Kind of request.
    pub kind: RequestKind,
    /// Position among requests of this kind.
    pub index: usize,
    /// The request, as the policy saw it.
    pub request: String,
    /// The decision.
    #[serde(flatten)]
    pub decision: Decision,
    /// Extra facts (a resolved symlink, a missing path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Overall outcome; also the CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Everything allowed (exit 0).
    Allowed,
    /// Something needs a human (exit 3).
    NeedsApproval,
    /// Something is denied (exit 4).
    Denied,
}

impl Outcome {
    /// CLI exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Allowed => 0,
            Outcome::NeedsApproval => 3,
            Outcome::Denied => 4,
        }
    }
}

/// The decision report for a plan.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `allowed`, `needs_approval` or `denied`.
    pub outcome: Outcome,
    /// Policy file the decisions came from.
    pub policy: String,
    /// Its digest.
    pub policy_digest: String,
    /// One line per request.
    pub items: Vec<ReportItem>,
    /// Mount host paths after resolving symlinks, in `mounts` order.
    #[serde(skip)]
    pub resolved_mounts: Vec<String>,
}

/// Resolves a host path the way the launcher will open it: symlinks followed when it
/// exists, otherwise as written. Returns the path and a note for the report.
fn resolve_host_path(host: &str) -> (String, Option<String>) {
    match std::fs::canonicalize(host) {
        Ok(real) => {
            let real = real.to_string_lossy().into_owned();
            let note = (real != host).then(|| format!("`{host}` resolves to `{real}`"));
            (real, note)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            host.to_string(),
            Some(format!("`{host}` does not exist on this host")),
        ),
        Err(e) => (host.to_string(), Some(format!("`{host}`: {e}"))),
    }
}

/// The uid that owns `path`.
fn owner_uid(path: &str) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.uid())
}

/// Decides every request of a plan.
pub fn evaluate(policy: &Policy, plan: &Plan) -> Report {
    let engine: &dyn DecisionEngine = policy;
    let mut items = Vec::new();
    let mut push = |kind, index, request: String, decision, note| {
        items.push(ReportItem {
            kind,
            index,
            request,
            decision,
            note,
        })
    };

    match Invocation::parse(&plan.command) {
        Ok(inv) => {
            let caps = Capability::of_invocation(&inv);
            push(
                RequestKind::Command,
                0,
                shell_words::join(&plan.command),
                policy.decide_all(&caps),
                None,
            );
        }
        Err(e) => push(
            RequestKind::Command,
            0,
            shell_words::join(&plan.command),
            Decision {
                verdict: Verdict::Deny,
                rule_id: "invalid-invocation".into(),
                reason: e.to_string(),
            },
            None,
        ),
    }

    let mut resolved_mounts = Vec::new();
    for (i, m) in plan.mounts.iter().enumerate() {
        let (path, note) = resolve_host_path(&m.host);
        let cap = Capability::Fs {
            path: path.clone(),
            mode: m.mode,
        };
        let mut decision = decide_or_deny(engine, &cap);
        if m.mode == Access::RwLive
            && decision.verdict != Verdict::Deny
            && !policy.rule_allows_root_owned(&decision.rule_id)
        {
            // Fail closed: an owner that cannot be read is not known to be safe.
            let why = match owner_uid(&path) {
                Ok(0) => Some("a directory root owns".to_string()),
                Ok(_) => None,
                Err(e) => Some(format!("a directory whose owner cannot be read ({e})")),
            };
            if let Some(why) = why {
                decision = Decision {
                    verdict: Verdict::Deny,
                    reason: format!(
                        "rule `{}` would grant rw-live on {why}: the agent could leave set-id programs or root's files there live; use copy-on-write `rw` (the merge-back gate never passes set-id bits), or opt in with root_owned = true on the rule",
                        decision.rule_id
                    ),
                    rule_id: decision.rule_id,
                };
            }
        }
        push(
            RequestKind::Mount,
            i,
            format!("{} -> {} ({})", path, m.guest, m.mode),
            decision,
            note,
        );
        resolved_mounts.push(path);
    }

    for (i, e) in plan.net.iter().enumerate() {
        let host = normalize_requested_host(&e.host).expect("validated");
        let request = format!("{host}:{}", e.port);
        let cap = Capability::Net { host, port: e.port };
        push(
            RequestKind::Net,
            i,
            request,
            decide_or_deny(engine, &cap),
            None,
        );
    }

    for (i, t) in plan.tools.iter().enumerate() {
        push(
            RequestKind::Tool,
            i,
            t.clone(),
            policy.decide_tool_grant(t),
            None,
        );
    }

    let r = plan.resources.resolve();
    let request = format!(
        "vcpus={} memory_mib={} disk_mib={} pids={} wall_time_secs={} net_connections={} net_mib={}",
        r.vcpus, r.memory_mib, r.disk_mib, r.pids, r.wall_time_secs, r.net_connections, r.net_mib
    );
    let cap = Capability::Resources(r);
    push(
        RequestKind::Resources,
        0,
        request,
        decide_or_deny(engine, &cap),
        None,
    );

    let outcome = if items.iter().any(|i| i.decision.verdict == Verdict::Deny) {
        Outcome::Denied
    } else if items.iter().any(|i| i.decision.verdict == Verdict::Ask) {
        Outcome::NeedsApproval
    } else {
        Outcome::Allowed
    };
    Report {
        outcome,
        policy: policy.origin.clone(),
        policy_digest: policy.digest.clone(),
        items,
        resolved_mounts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coding_agent() -> Policy {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/policies/coding-agent.toml");
        Policy::load(&path).unwrap()
    }

    fn plan(text: &str) -> Result<Plan, PlanError> {
        Plan::parse("plan.toml", text, false)
    }

    #[test]
    fn bad_plans_name_the_field() {
        for (text, want) in [
            ("command = []", "`command`: must name a program"),
            (
                "command = [\"x\"]\nsurprise = 1",
                "plan.toml:2:1: unknown field `surprise`",
            ),
            (
                "command = [\"x\"]\n[[mounts]]\nhost = \"rel\"\nguest = \"/w\"\nmode = \"rw\"",
                "`mounts[0].host`: `rel` is not an absolute path",
            ),
            (
                "command = [\"x\"]\n[[mounts]]\nhost = \"/a\"\nguest = \"/w/../x\"\nmode = \"rw\"",
                "`mounts[0].guest`",
            ),
            (
                "command = [\"x\"]\n[[mounts]]\nhost = \"/a\"\nguest = \"/w\"\nmode = \"wx\"",
                "unknown variant `wx`",
            ),
            (
                "command = [\"x\"]\ntools = [\"/bin/git\"]",
                "`tools[0]`: `/bin/git` must be a bare program name",
            ),
            (
                "command = [\"x\"]\ntools = [\"git\", \"git\"]",
                "listed twice",
            ),
            (
                "command = [\"x\"]\n[[net]]\nhost = \"a b\"",
                "`net[0].host`",
            ),
            (
                "command = [\"x\"]\n[resources]\nvcpus = 0",
                "`resources.vcpus`: must be greater than 0",
            ),
            (
                "command = [\"x\"]\n[resources]\nnet_connections = 1025",
                "`resources.net_connections`: 1025 is over 1024, the most any session holds open",
            ),
        ] {
            let err = plan(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}\nwant: {want}\ngot:  {err}");
        }
        let err = Plan::parse("p.json", "{\"command\": [\"x\"],\n \"nope\": 1}", true).unwrap_err();
        assert!(err.to_string().starts_with("p.json:2:"), "{err}");
    }

    #[test]
    fn added_tools_merge_with_the_plans_and_each_other() {
        let mut p = plan("command = [\"x\"]\ntools = [\"git\", \"rg\"]").unwrap();
        p.add_tools(["git", "python3", "python3", "rg", "git"]);
        assert_eq!(p.tools, ["git", "rg", "python3"]);
        p.validate("command line").unwrap();
        // Within a plan file, a tool listed twice is still refused.
        let err = plan("command = [\"x\"]\ntools = [\"git\", \"git\"]").unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn a_symlink_is_decided_by_where_it_points() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("work")).unwrap();
        std::fs::create_dir_all(root.join("secrets")).unwrap();
        std::os::unix::fs::symlink(root.join("secrets"), root.join("work/link")).unwrap();
        let r = root.display();
        let policy = Policy::from_toml(
            "p.toml",
            &format!(
                "version = 1\ndefault = \"deny\"\n\
                 [[rule]]\nid = \"work\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.fs = {{ path = \"{r}/work/**\" }}\n\
                 [[rule]]\nid = \"small\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.resources = {{ vcpus = 1 }}\n"
            ),
        )
        .unwrap();
        let p = plan(&format!(
            "command = [\"true\"]\n[[mounts]]\nhost = \"{r}/work/link\"\nguest = \"/w\"\nmode = \"ro\"\n"
        ))
        .unwrap();
        let report = evaluate(&policy, &p);
        let m = &report.items[1];
        assert_eq!(m.kind, RequestKind::Mount);
        assert_eq!(m.decision.verdict, Verdict::Deny, "{m:?}");
        assert!(m.note.as_deref().unwrap().contains("resolves to"), "{m:?}");
        assert_eq!(report.outcome, Outcome::Denied);
    }

    #[test]
    fn every_request_gets_a_decision_and_the_worst_sets_the_outcome() {
        let p = plan(
            "command = [\"git\", \"status\"]\ntools = [\"git\", \"bash\"]\n\
             [[mounts]]\nhost = \"/home/a/work/app\"\nguest = \"/workspace\"\nmode = \"rw\"\n\
             [[net]]\nhost = \"github.com\"\n[[net]]\nhost = \"example.org\"\n",
        )
        .unwrap();
        let report = evaluate(&coding_agent(), &p);
        let got: Vec<(RequestKind, Verdict, &str)> = report
            .items
            .iter()
            .map(|i| (i.kind, i.decision.verdict, i.decision.rule_id.as_str()))
            .collect();
        use RequestKind::*;
        use Verdict::*;
        assert_eq!(
            got,
            [
                (Command, Allow, "git-status"),
                (Mount, Allow, "workspace"),
                (Net, Allow, "forge-https"),
                (Net, Ask, "other-https"),
                (Tool, Allow, "git-commit"),
                (Tool, Deny, "no-bash"),
                (Resources, Allow, "standard-session"),
            ]
        );
        assert_eq!(report.outcome, Outcome::Denied);
    }

    #[test]
    fn rw_live_is_refused_on_root_owned_or_unreadable_owners_without_the_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let live = root.join("live");
        std::fs::create_dir(&live).unwrap();
        let policy = Policy::from_toml(
            "p.toml",
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"live\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.fs = { path = \"/**/live/**\", mode = \"rw-live\" }\n[[rule]]\nid = \"true\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.tool = { program = \"true\" }\n[[rule]]\nid = \"res\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.resources = { vcpus = 4 }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let decide = |host: &std::path::Path| {
            let p = plan(&format!(
                "command = [\"true\"]\n[[mounts]]\nhost = \"{}\"\nguest = \"/w\"\nmode = \"rw-live\"\n",
                host.display()
            ))
            .unwrap();
            evaluate(&policy, &p).items[1].decision.clone()
        };
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(&live).unwrap().uid();
        let d = decide(&live);
        if owner == 0 {
            assert_eq!(
                (d.verdict, d.rule_id.as_str()),
                (Verdict::Deny, "live"),
                "{d:?}"
            );
            assert!(d.reason.contains("root owns"), "{d:?}");
        } else {
            assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
        }
        // Whose it is cannot be read: refused, not assumed safe.
        let gone = root.join("missing/live");
        let d = decide(&gone);
        assert_eq!(
            (d.verdict, d.rule_id.as_str()),
            (Verdict::Deny, "live"),
            "{d:?}"
        );
        assert!(d.reason.contains("owner cannot be read"), "{d:?}");
    }
}
