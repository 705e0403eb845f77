//! Lints for a loaded policy: rules that never decide anything and grants that are
//! wider than they look. Lints are warnings; a policy that loads is valid.

use super::{Location, Policy, RuleMatch};
use airlock_proto::tool_invocation::git_config_key_executes;
use airlock_proto::tool_rules::ToolMatch;
use airlock_proto::verdict::Verdict;
use std::fmt;

/// What kind of problem a lint found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LintKind {
    /// An earlier rule matches everything this rule matches.
    Shadowed,
    /// One of the rule's own `examples.match` is decided by an earlier rule.
    ExampleShadowed,
    /// The rule cannot match any capability.
    NeverMatches,
    /// The rule grants running arbitrary code.
    GrantsExecution,
    /// The policy has no `resources` rule, so every plan's resources are denied.
    NoResourcesRule,
    /// The default is `allow`: anything no rule foresaw is granted.
    DefaultAllow,
}

/// One warning.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lint {
    /// Kind.
    pub kind: LintKind,
    /// Rule concerned (empty for policy-wide lints).
    pub rule_id: String,
    /// 1-based line of the rule.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What and why.
    pub message: String,
}

impl fmt::Display for Lint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: warning[{:?}]: {}",
            self.line, self.col, self.kind, self.message
        )
    }
}

/// Programs that run arbitrary code given to them, with why.
pub fn code_runner_reason(program: &str) -> Option<&'static str> {
    let shell = "is a shell: granting it grants every program and every action";
    let interp = "is an interpreter: granting it grants arbitrary code";
    let runner = "runs another program named on its command line";
    Some(match program {
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" | "fish" | "csh" | "tcsh"
        | "busybox" | "toybox" => shell,
        "node" | "nodejs" | "deno" | "bun" | "perl" | "ruby" | "php" | "lua" | "luajit"
        | "tclsh" | "wish" | "Rscript" | "julia" | "awk" | "gawk" | "mawk" | "nawk" | "java"
        | "jshell" | "irb" | "ipython" | "expect" => interp,
        p if p.starts_with("python") || p.starts_with("pypy") || p.starts_with("lua5") => interp,
        "env" | "xargs" | "nice" | "nohup" | "timeout" | "stdbuf" | "setsid" | "chroot"
        | "sudo" | "su" | "doas" | "runuser" | "watch" | "time" | "strace" | "ltrace" | "gdb"
        | "nsenter" | "unshare" | "flock" | "ionice" | "taskset" | "chrt" | "script"
        | "parallel" => runner,
        "vi" | "vim" | "nvim" | "emacs" | "nano" | "less" | "more" | "man" => {
            "has shell escapes (`:!`, `!cmd`)"
        }
        "make" | "cmake" | "ninja" | "npm" | "npx" | "yarn" | "pnpm" | "pip" | "pip3" | "cargo"
        | "go" | "gradle" | "mvn" => {
            "runs code from the project it works on (build scripts, package scripts)"
        }
        "ssh" => "runs remote commands and local ProxyCommand/LocalCommand programs",
        _ => return None,
    })
}

/// Runs every lint.
pub fn lint(policy: &Policy) -> Vec<Lint> {
    let mut out = Vec::new();
    let push = |out: &mut Vec<Lint>, kind, rule_id: &str, loc: Location, message: String| {
        out.push(Lint {
            kind,
            rule_id: rule_id.to_string(),
            line: loc.line,
            col: loc.col,
            message,
        })
    };
    for (j, rule) in policy.rules.iter().enumerate() {
        if let Some(earlier) = policy.rules[..j]
            .iter()
            .find(|e| e.matcher.covers(&rule.matcher))
        {
            push(
                &mut out,
                LintKind::Shadowed,
                &rule.id,
                rule.location,
                format!(
                    "rule `{}` is shadowed by `{}` (line {}): that rule matches everything this one does, so this one never decides anything",
                    rule.id, earlier.id, earlier.location.line
                ),
            );
        } else {
            for ex in &rule.matches {
                let d = policy.decide_all(&ex.capabilities);
                let decider = policy.rules.iter().position(|r| r.id == d.rule_id);
                if decider.is_some_and(|k| k < j) {
                    push(
                        &mut out,
                        LintKind::ExampleShadowed,
                        &rule.id,
                        ex.location,
                        format!(
                            "example `{}` of rule `{}` is decided by earlier rule `{}` ({})",
                            ex.text, rule.id, d.rule_id, d.verdict
                        ),
                    );
                }
            }
        }
        if let Some(why) = never_matches(&rule.matcher) {
            push(
                &mut out,
                LintKind::NeverMatches,
                &rule.id,
                rule.location,
                format!("rule `{}` can never match: {why}", rule.id),
            );
        }
        if rule.decision != Verdict::Deny {
            if let Some(why) = grants_execution(&rule.matcher) {
                push(
                    &mut out,
                    LintKind::GrantsExecution,
                    &rule.id,
                    rule.location,
                    format!(
                        "rule `{}` ({}) grants arbitrary execution: {why}",
                        rule.id, rule.decision
                    ),
                );
            }
        }
    }
    if policy.default == Verdict::Allow {
        push(
            &mut out,
            LintKind::DefaultAllow,
            "",
            Location { line: 1, col: 1 },
            "default is `allow`: every capability no rule foresaw is granted; prefer `deny` or `ask`".into(),
        );
    }
    if !policy
        .rules
        .iter()
        .any(|r| matches!(r.matcher, RuleMatch::Resources(_)))
    {
        push(
            &mut out,
            LintKind::NoResourcesRule,
            "",
            Location { line: 1, col: 1 },
            "no `resources` rule: every plan's resources request will be denied".into(),
        );
    }
    out
}

fn never_matches(m: &RuleMatch) -> Option<String> {
    match m {
        RuleMatch::Fs(p) => {
            let pat = &p.pattern;
            if !pat.starts_with('/') && !pat.starts_with("**") && !pat.starts_with('{') {
                return Some(format!("path `{pat}` is relative; requests are absolute paths"));
            }
            let normalized_form_breaker = ["//", "/./", "/../"];
            if normalized_form_breaker.iter().any(|b| pat.contains(b))
                || pat.ends_with("/.")
                || pat.ends_with("/..")
                || (pat.len() > 1 && pat.ends_with('/'))
            {
                return Some(format!(
                    "path `{pat}` is not normalized; requests are (no `//`, `.`, `..` or trailing `/`)"
                ));
            }
            None
        }
        RuleMatch::Net(_) => None,
        RuleMatch::Tool { program, matcher } => match matcher {
            ToolMatch::Config(_) if program != "git" => Some(format!(
                "command-line configuration is only recognized for git, not `{program}`"
            )),
            ToolMatch::Argv(p) if program == "git" => p
                .literal_prefix()
                .next()
                .filter(|w| w.starts_with('-'))
                .map(|w| {
                    format!(
                        "git's global options (`{w}`) are removed before argv patterns match; match the subcommand (e.g. `push **`), and `-c` with `config = …`"
                    )
                }),
            _ => None,
        },
        RuleMatch::Resources(c) => {
            let zero = [
                ("vcpus", c.vcpus == Some(0)),
                ("memory_mib", c.memory_mib == Some(0)),
                ("pids", c.pids == Some(0)),
                ("wall_time_secs", c.wall_time_secs == Some(0)),
            ];
            zero.iter()
                .find(|(_, z)| *z)
                .map(|(k, _)| format!("ceiling {k} = 0, and every request asks for at least 1"))
        }
    }
}

fn grants_execution(m: &RuleMatch) -> Option<String> {
    let RuleMatch::Tool { program, matcher } = m else {
        return None;
    };
    if let Some(why) = code_runner_reason(program) {
        return Some(format!("`{program}` {why}"));
    }
    match (program.as_str(), matcher) {
        ("git", ToolMatch::Config(k)) => {
            let sample_keys = [
                "core.pager",
                "core.sshcommand",
                "alias.x",
                "core.hookspath",
                "diff.x.textconv",
            ];
            sample_keys
                .iter()
                .find(|key| k.matches(key) && git_config_key_executes(key))
                .map(|key| format!("git config `{key}` (matched by `{k}`) makes git run a program"))
        }
        ("git", ToolMatch::Argv(p)) => {
            let probe: [&[&str]; 2] = [
                &["config", "core.pager", "x"],
                &["config", "--global", "alias.x", "!sh"],
            ];
            probe
                .iter()
                .find(|argv| p.matches(argv))
                .map(|_| format!("`git {p}` allows `git config`, which can persist core.pager, alias.* and other settings that run programs"))
        }
        ("find", ToolMatch::Argv(p)) => {
            let probe: &[&str] = &[".", "-exec", "sh", "-c", "x", ";"];
            (p.matches(probe)
                || p.words()
                    .iter()
                    .any(|w| matches!(w, airlock_proto::argv_pattern::PatternWord::Rest)))
            .then(|| format!("`find {p}` can take `-exec`/`-execdir`/`-ok`, which run programs"))
        }
        ("sed", ToolMatch::Argv(p)) if !p.literal_prefix().any(|w| w == "--sandbox") => {
            let probe: &[&str] = &["1e id", "f"];
            p.matches(probe).then(|| {
                format!("`sed {p}` accepts arbitrary scripts, and GNU sed's `e` command runs programs (require `--sandbox`)")
            })
        }
        _ => None,
    }
}
