//! Lints for a loaded policy: rules that never decide anything, grants that are wider
//! than they look, and execution profiles that reach a shell or an interpreter. Lints
//! are warnings; a policy that loads is valid.

use super::capability::Capability;
use super::{Location, Policy, RuleMatch};
use airlock_proto::argv_pattern::{ArgvPattern, PatternWord};
use airlock_proto::tool_invocation::git_config_key_executes;
use airlock_proto::tool_rules::ToolMatch;
use airlock_proto::verdict::Verdict;
use std::fmt;
use std::path::{Path, PathBuf};

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
    /// An execution profile lets a tool run a shell, an interpreter or a whole bin
    /// directory outside the broker.
    ProfileRunsCode,
    /// A rule admits an option or command-line configuration that makes the program run
    /// another program (`rg --pre`, `tar --to-command`, `git -c filter.x.clean=…`).
    OptionRunsPrograms,
    /// A rule grants `rw-live`: the agent writes the host directory directly, with no
    /// merge-back gate (no protected paths, no quota in total, nothing undone).
    RwLive,
    /// A `resources` rule that allows or asks names no ceiling for some resource, so
    /// a plan may ask for any amount of it.
    UnboundedResource,
}

/// One warning.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

/// Programs that run arbitrary code given to them, with why. Versioned names
/// (`python3.13`, `perl5.40.1`, `ruby3.1`) are the programs they version.
pub fn code_runner_reason(program: &str) -> Option<&'static str> {
    named_code_runner(program).or_else(|| {
        let bare = program.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        let version = &program[bare.len()..];
        (!bare.is_empty() && version.starts_with(|c: char| c.is_ascii_digit()))
            .then(|| named_code_runner(bare))
            .flatten()
    })
}

fn named_code_runner(program: &str) -> Option<&'static str> {
    let shell = "is a shell: granting it grants every program and every action";
    let interp = "is an interpreter: granting it grants arbitrary code";
    let runner = "runs another program named on its command line";
    Some(match program {
        "sh" | "bash" | "rbash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" | "fish" | "csh"
        | "tcsh" | "busybox" | "toybox" | "screen" | "tmux" => shell,
        "node" | "nodejs" | "deno" | "bun" | "perl" | "ruby" | "php" | "lua" | "luajit"
        | "tclsh" | "wish" | "Rscript" | "julia" | "awk" | "gawk" | "mawk" | "nawk" | "java"
        | "jshell" | "irb" | "ipython" | "expect" => interp,
        p if p.starts_with("python") || p.starts_with("pypy") || p.starts_with("lua5") => interp,
        "env" | "xargs" | "nice" | "nohup" | "timeout" | "stdbuf" | "setsid" | "chroot"
        | "sudo" | "su" | "doas" | "runuser" | "watch" | "time" | "strace" | "ltrace" | "gdb"
        | "nsenter" | "unshare" | "flock" | "ionice" | "taskset" | "chrt" | "script"
        | "parallel" | "setarch" | "run-parts" | "ssh-agent" | "systemd-run" | "pkexec"
        | "capsh" | "bwrap" | "firejail" | "socat" | "ncat" => runner,
        "vi" | "vim" | "nvim" | "view" | "rview" | "vimdiff" | "ex" | "ed" | "red" | "emacs"
        | "nano" | "editor" | "sensible-editor" | "less" | "more" | "pager" | "sensible-pager"
        | "man" | "mail" | "mailx" | "ftp" | "gpg" | "gpg2" => {
            "has shell escapes (`:!`, `!cmd`) or runs the programs its options name"
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
    for rule in &policy.rules {
        if let RuleMatch::Fs(p) = &rule.matcher {
            if p.mode == super::ModeMatch::RwLive && rule.decision != Verdict::Deny {
                push(
                    &mut out,
                    LintKind::RwLive,
                    &rule.id,
                    rule.location,
                    format!(
                        "rule `{}` grants rw-live on `{}`: the agent writes the host directory itself, so a planted .git/config, hook or .envrc runs for the next host user, nothing bounds the total written and a killed session leaves half-written files; `rw` (copy-on-write, merged back through the gate) protects against all three{}",
                        rule.id,
                        p.pattern,
                        if p.root_owned { "; root_owned = true also admits trees root owns" } else { "" }
                    ),
                );
            }
        }
    }
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
        if let RuleMatch::Resources(c) = &rule.matcher {
            let unbounded: Vec<&str> = [
                ("vcpus", c.vcpus.is_none()),
                ("memory_mib", c.memory_mib.is_none()),
                ("disk_mib", c.disk_mib.is_none()),
                ("pids", c.pids.is_none()),
                ("wall_time_secs", c.wall_time_secs.is_none()),
                ("net_connections", c.net_connections.is_none()),
                ("net_mib", c.net_mib.is_none()),
            ]
            .into_iter()
            .filter_map(|(k, none)| none.then_some(k))
            .collect();
            if rule.decision != Verdict::Deny && !unbounded.is_empty() {
                push(
                    &mut out,
                    LintKind::UnboundedResource,
                    &rule.id,
                    rule.location,
                    format!(
                        "rule `{}` ({}) names no ceiling for {}: a plan may ask for any amount (only the host's own caps apply, e.g. net_connections ≤ {}); name one",
                        rule.id,
                        rule.decision,
                        unbounded.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
                        airlock_proto::manifest::MAX_NET_CONNECTIONS
                    ),
                );
            }
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
    let mut found = option_lints(policy);
    found.extend(git_config_lints(policy));
    found.extend(profile_lints(policy));
    found.sort_by_key(|l| (l.line, l.col));
    out.extend(found);
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
                ("net_connections", c.net_connections == Some(0)),
                ("net_mib", c.net_mib == Some(0)),
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
            // `**` can always absorb an action, whatever the words around it.
            (p.words().contains(&PatternWord::Rest) || admits_any(p, FIND_ACTIONS)).then(|| {
                format!("`find {p}` can take `-exec`/`-execdir`/`-ok`/`-okdir`, which run programs")
            })
        }
        ("sed", ToolMatch::Argv(p)) if !p.literal_prefix().any(|w| w == "--sandbox") => {
            admits_any(p, SED_SCRIPTS).then(|| {
                format!("`sed {p}` is a runner: GNU sed's `e` command and `s///e` flag run programs, and a script (first argument, `-e`, `--expression`, `-f`) cannot be checked by an argv pattern (require `--sandbox`)")
            })
        }
        _ => None,
    }
}

/// find's actions that run a program named on its command line.
const FIND_ACTIONS: &[&[&str]] = &[
    &["-exec", "x", ";"],
    &["-exec", "x", "{}", "+"],
    &["-execdir", "x", ";"],
    &["-ok", "x", ";"],
    &["-okdir", "x", ";"],
];

/// Ways to hand sed a script that runs a program.
const SED_SCRIPTS: &[&[&str]] = &[
    &["1e x"],
    &["s/x/x/e"],
    &["-e", "1e x"],
    &["--expression=1e x"],
    &["-f", "x"],
    &["--file=x"],
];

/// Does `pattern` admit some argument vector that uses one of `uses`?
fn admits_any(pattern: &ArgvPattern, uses: &[&[&str]]) -> bool {
    uses.iter()
        .any(|u| witnesses(pattern, u).iter().any(|w| pattern.matches(w)))
}

/// Argument vectors that contain `fragment` and that `pattern` may admit: the fragment
/// alone or beside a placeholder, and the pattern's own words (wildcards filled in) with
/// the fragment in place of a `**` or of as many words as it has. Callers check each
/// with the real matcher, so a hit is a real invocation; a miss is not a proof.
fn witnesses(pattern: &ArgvPattern, fragment: &[&str]) -> Vec<Vec<String>> {
    let frag: Vec<String> = fragment.iter().map(|s| s.to_string()).collect();
    let x = || vec!["x".to_string()];
    let words = pattern.words();
    let filled: Vec<Vec<String>> = words
        .iter()
        .map(|w| match w {
            PatternWord::Literal(s) => vec![s.clone()],
            PatternWord::One => x(),
            PatternWord::Glob(pieces) => vec![pieces.join("x")],
            PatternWord::Rest => vec![],
        })
        .collect();
    let mut out = vec![
        frag.clone(),
        [frag.clone(), x()].concat(),
        [x(), frag.clone()].concat(),
    ];
    // In place of a `**` first: that is where an option most plausibly goes (`-xf * **`
    // reads `tar -xf x --to-command x`). An option in place of a word right after
    // another option would be that option's value (`tar -tf *`), so it is not tried.
    let after_option =
        |i: usize| i > 0 && matches!(&words[i - 1], PatternWord::Literal(w) if w.starts_with('-'));
    let rests = (0..words.len()).filter(|&i| words[i] == PatternWord::Rest);
    let others = (0..words.len()).filter(|&i| words[i] != PatternWord::Rest);
    for i in rests.chain(others) {
        let replaced = match words[i] {
            PatternWord::Rest => 1,
            _ => frag.len(),
        };
        if i + replaced > words.len()
            || (words[i] != PatternWord::Rest && fragment[0].starts_with('-') && after_option(i))
        {
            continue;
        }
        let mut w = filled[..i].concat();
        w.extend(frag.iter().cloned());
        w.extend(filled[i + replaced..].concat());
        out.push(w);
    }
    out
}

/// An option that makes a program run another program.
struct OptionRunner {
    program: &'static str,
    /// The option as messages name it.
    option: &'static str,
    /// Argument runs that use it: spellings, `=` forms, abbreviations the program
    /// accepts. Bundled short options (`-nz`) are not listed: patterns see words.
    uses: &'static [&'static [&'static str]],
    /// What it runs.
    why: &'static str,
    /// Deny patterns that, placed first, catch every use above (a test holds this).
    deny: &'static [&'static str],
}

/// Options of programs whose ordinary use runs nothing; each makes them run a program.
/// (find's actions and sed's scripts are `grants_execution`: running programs is part
/// of what those are for.)
const OPTION_RUNNERS: &[OptionRunner] = &[
    OptionRunner {
        program: "rg",
        option: "--pre",
        uses: &[&["--pre", "x"], &["--pre=x"]],
        why: "runs the named program on every file it searches",
        deny: &["** --pre* **"],
    },
    OptionRunner {
        program: "rg",
        option: "--search-zip",
        uses: &[&["--search-zip"], &["-z"]],
        why:
            "starts decompressors (gzip, bzip2, xz, lz4, zstd, brotli) by name for compressed files",
        deny: &["** --search-zip **", "** -z **"],
    },
    // GNU tar takes any unambiguous abbreviation of a long option (`--to-c=`,
    // `--checkpoint-=exec=`, `--new-=`), so the deny patterns start at the shortest.
    OptionRunner {
        program: "tar",
        option: "--to-command",
        uses: &[&["--to-command", "x"], &["--to-command=x"], &["--to-c=x"]],
        why: "pipes every extracted file to a shell command",
        deny: &["** --to-c* **"],
    },
    OptionRunner {
        program: "tar",
        option: "--use-compress-program",
        uses: &[
            &["--use-compress-program", "x"],
            &["--use-compress-program=x"],
            &["--use=x"],
            &["-I", "x"],
            &["-Ix"],
        ],
        why: "runs the named program as the compressor",
        deny: &["** --use* **", "** -I* **"],
    },
    OptionRunner {
        program: "tar",
        option: "--info-script",
        uses: &[
            &["--info-script", "x"],
            &["--info-script=x"],
            &["--inf=x"],
            &["-F", "x"],
            &["-Fx"],
        ],
        why: "runs the named script at the end of every volume",
        deny: &["** --inf* **", "** -F* **"],
    },
    OptionRunner {
        program: "tar",
        option: "--new-volume-script",
        uses: &[
            &["--new-volume-script", "x"],
            &["--new-volume-script=x"],
            &["--new-=x"],
        ],
        why: "runs the named script at the end of every volume",
        deny: &["** --new-* **"],
    },
    OptionRunner {
        program: "tar",
        option: "--checkpoint-action=exec=",
        uses: &[
            &["--checkpoint-action=exec=x"],
            &["--checkpoint-action", "exec=x"],
            &["--checkpoint-=exec=x"],
        ],
        why: "runs a command at every checkpoint",
        deny: &["** --checkpoint-* **"],
    },
    // `--rs` and `--rm` are the shortest prefixes GNU tar takes for these.
    OptionRunner {
        program: "tar",
        option: "--rsh-command",
        uses: &[&["--rsh-command", "x"], &["--rsh-command=x"], &["--rs=x"]],
        why: "runs the named program as the remote shell for a `host:path` archive",
        deny: &["** --rs* **"],
    },
    OptionRunner {
        program: "tar",
        option: "--rmt-command",
        uses: &[&["--rmt-command", "x"], &["--rmt-command=x"], &["--rm=x"]],
        why: "runs the named program as the remote tape server",
        deny: &["** --rm* **"],
    },
    OptionRunner {
        program: "sort",
        option: "--compress-program",
        uses: &[
            &["--compress-program", "x"],
            &["--compress-program=x"],
            &["--co=x"],
        ],
        why: "runs the named program to compress its temporary files",
        deny: &["** --co* **"],
    },
    OptionRunner {
        program: "zip",
        option: "--unzip-command",
        uses: &[
            &["-TT", "x"],
            &["--unzip-command", "x"],
            &["--unzip-command=x"],
        ],
        why: "runs the named command to test the archive",
        deny: &["** -TT* **", "** --unzip-command* **"],
    },
    OptionRunner {
        program: "wget",
        option: "--use-askpass",
        uses: &[&["--use-askpass=x"], &["--use-askpass", "x"]],
        why: "runs the named program to ask for credentials",
        deny: &["** --use-askpass* **"],
    },
    OptionRunner {
        program: "sdiff",
        option: "--diff-program",
        uses: &[&["--diff-program=x"], &["--diff-program", "x"]],
        why: "runs the named program instead of diff",
        deny: &["** --diff-program* **"],
    },
];

/// git configuration a `-c` can set that names programs, by the subcommands that read
/// it. Repository configuration is the broker's business (its hardening and git's
/// profile); these are what a policy's own `config` rules let through.
struct GitConfigRunner {
    /// Sample keys (normalized), each one [`git_config_key_executes`] knows.
    keys: &'static [&'static str],
    /// Subcommands that run what the keys name; empty: any subcommand.
    subcommands: &'static [&'static str],
    /// What the keys name.
    why: &'static str,
}

const GIT_CONFIG_RUNNERS: &[GitConfigRunner] = &[
    GitConfigRunner {
        keys: &["diff.x.textconv", "diff.x.command", "diff.external"],
        subcommands: &["diff", "log", "show", "blame", "grep"],
        why: "textconv and external diff drivers",
    },
    GitConfigRunner {
        keys: &["filter.x.clean", "filter.x.smudge", "filter.x.process"],
        subcommands: &[
            "add", "commit", "checkout", "status", "stash", "switch", "restore", "reset", "merge",
            "pull",
        ],
        why: "clean/smudge filters",
    },
    GitConfigRunner {
        keys: &[
            "core.editor",
            "sequence.editor",
            "gpg.program",
            "gpg.x.program",
        ],
        subcommands: &[
            "commit",
            "merge",
            "rebase",
            "tag",
            "pull",
            "revert",
            "cherry-pick",
        ],
        why: "editors and gpg",
    },
    GitConfigRunner {
        keys: &[
            "core.sshcommand",
            "core.gitproxy",
            "core.askpass",
            "credential.helper",
            "credential.x.helper",
            "remote.x.uploadpack",
            "remote.x.receivepack",
        ],
        subcommands: &["fetch", "pull", "push", "clone", "ls-remote"],
        why: "transport commands and credential helpers",
    },
    GitConfigRunner {
        keys: &[
            "alias.x",
            "core.pager",
            "pager.x",
            "core.hookspath",
            "core.fsmonitor",
            "include.path",
        ],
        subcommands: &[],
        why: "aliases, pagers, hooks, fsmonitor and included files",
    },
];

/// The first rule that decides `cap`, or `None` when the default does.
fn decider(policy: &Policy, cap: &Capability) -> Option<usize> {
    policy.index.first_match(&policy.rules, cap)
}

/// Is this rule already reported as granting arbitrary execution? (One warning says
/// enough.)
fn flagged_as_execution(policy: &Policy, i: usize) -> bool {
    let r = &policy.rules[i];
    r.decision != Verdict::Deny && grants_execution(&r.matcher).is_some()
}

/// Where and by what a lint about a decision is reported: the deciding rule, or the
/// policy's default at the top of the file.
fn decided_by(policy: &Policy, at: Option<usize>) -> (String, Location, String) {
    match at {
        Some(i) => {
            let r = &policy.rules[i];
            (
                r.id.clone(),
                r.location,
                format!("rule `{}` ({})", r.id, r.decision),
            )
        }
        None => (
            String::new(),
            Location { line: 1, col: 1 },
            format!("the policy default ({})", policy.default),
        ),
    }
}

fn has_tool_rules(policy: &Policy, program: &str) -> bool {
    policy
        .rules
        .iter()
        .any(|r| matches!(&r.matcher, RuleMatch::Tool { program: p, .. } if p == program))
}

/// [`OPTION_RUNNERS`] against the policy: the first invocation using each option that
/// is not denied, reported at the rule that lets it through.
fn option_lints(policy: &Policy) -> Vec<Lint> {
    let mut out: Vec<Lint> = Vec::new();
    for runner in OPTION_RUNNERS {
        if !has_tool_rules(policy, runner.program) {
            continue;
        }
        // Candidate invocations: the uses alone, and fitted into each rule that can grant.
        let patterns: Vec<&ArgvPattern> = policy
            .rules
            .iter()
            .filter(|r| r.decision != Verdict::Deny)
            .filter_map(|r| match &r.matcher {
                RuleMatch::Tool {
                    program,
                    matcher: ToolMatch::Argv(p),
                } if program == runner.program => Some(p),
                _ => None,
            })
            .collect();
        let any = ArgvPattern::any();
        let mut reported: Vec<Option<usize>> = Vec::new();
        for pattern in patterns.into_iter().chain([&any]) {
            for use_ in runner.uses {
                for args in witnesses(pattern, use_) {
                    let cap = Capability::Tool {
                        program: runner.program.to_string(),
                        args,
                    };
                    let at = decider(policy, &cap);
                    let verdict = at.map_or(policy.default, |i| policy.rules[i].decision);
                    if verdict == Verdict::Deny
                        || reported.contains(&at)
                        || at.is_some_and(|i| flagged_as_execution(policy, i))
                    {
                        continue;
                    }
                    reported.push(at);
                    let Capability::Tool { args, .. } = cap else {
                        unreachable!("built above")
                    };
                    let (rule_id, loc, by) = decided_by(policy, at);
                    let deny = runner
                        .deny
                        .iter()
                        .map(|d| format!("`{d}`"))
                        .collect::<Vec<_>>()
                        .join(" and ");
                    let rules = if runner.deny.len() == 1 {
                        "a deny rule"
                    } else {
                        "deny rules"
                    };
                    out.push(Lint {
                        kind: LintKind::OptionRunsPrograms,
                        rule_id,
                        line: loc.line,
                        col: loc.col,
                        message: format!(
                            "{by} lets `{} {}` through: `{}` {} ({}); add {rules} for {deny} before it",
                            runner.program,
                            args.join(" "),
                            runner.option,
                            runner.why,
                            reach(policy, runner.program)
                        ),
                    });
                }
            }
        }
    }
    out
}

/// What a program started by `program` can be, under its profile.
fn reach(policy: &Policy, program: &str) -> String {
    let profile = policy.tool_profile(program);
    match profile.executes.as_slice() {
        [] => format!(
            "under profile `{}` what it starts is a brokered call, decided by the rules",
            profile.name
        ),
        paths => format!(
            "under profile `{}` what it starts is a brokered call, or {} run directly",
            profile.name,
            paths
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// git configuration that names programs, set on the command line and let through by
/// the policy; says which of the subcommands that run it the policy grants.
fn git_config_lints(policy: &Policy) -> Vec<Lint> {
    if !has_tool_rules(policy, "git") {
        return Vec::new();
    }
    let grants = |sub: &str| {
        [
            vec![sub.to_string()],
            vec![sub.to_string(), "x".to_string()],
        ]
        .into_iter()
        .any(|args| {
            let cap = Capability::Tool {
                program: "git".into(),
                args,
            };
            policy.decide(&cap).verdict != Verdict::Deny
        })
    };
    // Per deciding rule (or the default): one sample key it lets through per group.
    let mut found: Vec<(Option<usize>, Vec<String>)> = Vec::new();
    for group in GIT_CONFIG_RUNNERS {
        let mut seen: Vec<Option<usize>> = Vec::new();
        for key in group.keys {
            let cap = Capability::ToolConfig {
                program: "git".into(),
                key: key.to_string(),
            };
            let at = decider(policy, &cap);
            let verdict = at.map_or(policy.default, |i| policy.rules[i].decision);
            if verdict == Verdict::Deny
                || seen.contains(&at)
                || at.is_some_and(|i| flagged_as_execution(policy, i))
            {
                continue;
            }
            seen.push(at);
            let readers = match group.subcommands {
                [] => "any subcommand".to_string(),
                subs => {
                    let granted: Vec<String> = subs
                        .iter()
                        .filter(|s| grants(s))
                        .map(|s| format!("`git {s}`"))
                        .collect();
                    match granted.is_empty() {
                        true => "subcommands this policy does not grant".to_string(),
                        false => granted.join(", "),
                    }
                }
            };
            let note = format!("`{key}` ({}, run by {readers})", group.why);
            match found.iter_mut().find(|(a, _)| *a == at) {
                Some((_, notes)) => notes.push(note),
                None => found.push((at, vec![note])),
            }
        }
    }
    found
        .into_iter()
        .map(|(at, notes)| {
            let (rule_id, loc, by) = decided_by(policy, at);
            Lint {
                kind: LintKind::OptionRunsPrograms,
                rule_id,
                line: loc.line,
                col: loc.col,
                message: format!(
                    "{by} lets `git -c` set configuration that names programs git runs: {}; allow only inert keys and deny the rest with `config = \"*\"`",
                    notes.join("; ")
                ),
            }
        })
        .collect()
}

/// Directories that hold a system's programs: executing one executes all of them.
const BIN_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/sbin",
    "/usr",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/lib",
    "/usr/libexec",
    "/usr/local",
    "/lib",
    "/lib64",
];

/// Most entries looked at under one profile directory on this host.
const HOST_SCAN_ENTRIES: usize = 20_000;

/// Effective profiles (declared or shipped) that let a tool run code outside the
/// broker.
fn profile_lints(policy: &Policy) -> Vec<Lint> {
    let mut out = Vec::new();
    for eff in policy.effective_profiles() {
        let loc = match policy.declared_profile(&eff.program) {
            Some(d) => d.location,
            None => policy
                .rules
                .iter()
                .find(|r| matches!(&r.matcher, RuleMatch::Tool { program, .. } if *program == eff.program))
                .map_or(Location { line: 1, col: 1 }, |r| r.location),
        };
        let source = match eff.source {
            super::profiles::ProfileSource::Policy => "",
            super::profiles::ProfileSource::Shipped => "shipped ",
        };
        for path in &eff.profile.executes {
            if let Some(why) = executes_code(path) {
                out.push(Lint {
                    kind: LintKind::ProfileRunsCode,
                    rule_id: String::new(),
                    line: loc.line,
                    col: loc.col,
                    message: format!(
                        "{source}profile `{}` for `{}` executes `{path}`: {why}; a profile should list only the helpers the tool runs by path (what it runs by name is a brokered call)",
                        eff.profile.name, eff.program
                    ),
                });
            }
        }
    }
    out
}

/// Why executing `path` (a guest path, also looked up on this host) runs arbitrary
/// code, if it does.
fn executes_code(path: &str) -> Option<String> {
    if BIN_DIRS.contains(&path) {
        return Some(
            "a whole bin directory: every program in it, shells and interpreters included, would run without the broker".into(),
        );
    }
    let host = Path::new(path);
    match std::fs::metadata(host) {
        Ok(m) if m.is_dir() => {
            let (found, why) = code_runner_below(host)?;
            Some(format!(
                "on this host it holds `{}`, and {why}",
                found.display()
            ))
        }
        Ok(_) => runner_by_name(host).or_else(|| {
            let real = std::fs::canonicalize(host).ok()?;
            let why = runner_by_name(&real)?;
            Some(format!(
                "on this host it is `{}`, and {why}",
                real.display()
            ))
        }),
        Err(_) => runner_by_name(host),
    }
}

/// Why the program at `p` runs code, by its file name.
fn runner_by_name(p: &Path) -> Option<String> {
    let name = p.file_name()?.to_str()?;
    code_runner_reason(name).map(|why| format!("`{name}` {why}"))
}

/// The first file (or link) under `dir`, in name order, whose name or link target is a
/// code runner. Directory links are not followed; the walk stops after
/// [`HOST_SCAN_ENTRIES`] entries.
fn code_runner_below(dir: &Path) -> Option<(PathBuf, String)> {
    let mut budget = HOST_SCAN_ENTRIES;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for e in entries {
            if budget == 0 {
                return None;
            }
            budget -= 1;
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                subdirs.push(path);
                continue;
            }
            let target = || {
                kind.is_symlink()
                    .then(|| std::fs::canonicalize(&path).ok())
                    .flatten()
                    .filter(|t| t.is_file())
            };
            if let Some(why) =
                runner_by_name(&path).or_else(|| target().and_then(|t| runner_by_name(&t)))
            {
                return Some((path, why));
            }
        }
        // Depth first, in name order.
        pending.extend(subdirs.into_iter().rev());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "version = 1\ndefault = \"deny\"\n";

    fn policy(body: &str) -> Policy {
        Policy::from_toml("lint.toml", &format!("{HEAD}{body}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rule(id: &str, decision: &str, tool: &str) -> String {
        format!("[[rule]]\nid = \"{id}\"\ndecision = \"{decision}\"\nreason = \"r\"\nmatch.tool = {{ {tool} }}\n")
    }

    fn profile(program: &str, executes: &[&str]) -> String {
        let list: Vec<String> = executes.iter().map(|p| format!("{p:?}")).collect();
        format!(
            "[[profile]]\nprogram = \"{program}\"\nname = \"{program}-p\"\nexecutes = [{}]\nreason = \"r\"\n",
            list.join(", ")
        )
    }

    fn of(p: &Policy, kind: LintKind) -> Vec<Lint> {
        lint(p).into_iter().filter(|l| l.kind == kind).collect()
    }

    #[test]
    fn versioned_interpreter_names_are_interpreters() {
        for name in [
            "python3.13",
            "perl5.40.1",
            "ruby3.1",
            "php8.2",
            "tclsh8.6",
            "node18",
        ] {
            assert!(code_runner_reason(name).is_some(), "{name}");
        }
        for name in [
            "cc",
            "gcc-12",
            "x86_64-linux-gnu-gcc-12",
            "7z",
            "rg",
            "tar",
            "3",
        ] {
            assert_eq!(code_runner_reason(name), None, "{name}");
        }
    }

    #[test]
    fn a_profile_that_executes_an_interpreter_or_a_bin_directory_is_reported() {
        let p = policy(&format!(
            "{}{}{}",
            rule("make", "allow", "program = \"make\""),
            profile("make", &["/usr/bin/cc", "/opt/py/bin/python3.13"]),
            profile("ninja", &["/usr/bin"]),
        ));
        let lints = of(&p, LintKind::ProfileRunsCode);
        assert_eq!(lints.len(), 2, "{lints:#?}");
        assert_eq!(
            (lints[0].line, lints[0].col),
            (9, 11),
            "at the profile's program"
        );
        assert!(
            lints[0].message.starts_with(
                "profile `make-p` for `make` executes `/opt/py/bin/python3.13`: `python3.13` is an interpreter"
            ),
            "{}",
            lints[0].message
        );
        assert!(lints[1]
            .message
            .contains("executes `/usr/bin`: a whole bin directory"));
    }

    #[test]
    fn a_profile_directory_is_looked_into_on_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let tools = root.join("tools");
        std::fs::create_dir_all(tools.join("bin")).unwrap();
        std::fs::write(tools.join("bin/cc1"), "").unwrap();
        std::fs::write(tools.join("bin/zsh"), "").unwrap();
        // A directory named like an interpreter holds its library, not the program.
        let clean = root.join("clean");
        std::fs::create_dir_all(clean.join("python3")).unwrap();
        std::fs::write(clean.join("cc1"), "").unwrap();
        std::fs::write(root.join("dash"), "").unwrap();
        std::os::unix::fs::symlink(root.join("dash"), clean.join("cc")).unwrap();
        let (tools, clean) = (tools.to_str().unwrap(), clean.to_str().unwrap());

        let p = policy(&profile("make", &[tools]));
        let lints = of(&p, LintKind::ProfileRunsCode);
        assert_eq!(lints.len(), 1, "{lints:#?}");
        assert!(
            lints[0].message.contains(&format!(
                "on this host it holds `{tools}/bin/zsh`, and `zsh` is a shell"
            )),
            "{}",
            lints[0].message
        );

        // A link that resolves to a shell is a shell, whatever its name.
        let link = format!("{clean}/cc");
        let p = policy(&profile("make", &[&link]));
        let lints = of(&p, LintKind::ProfileRunsCode);
        assert_eq!(lints.len(), 1, "{lints:#?}");
        assert!(
            lints[0].message.contains("on this host it is `"),
            "{}",
            lints[0].message
        );
        assert!(
            lints[0].message.contains("`dash` is a shell"),
            "{}",
            lints[0].message
        );

        // The scan resolves links too; without the link the directory is clean.
        let p = policy(&profile("make", &[clean]));
        let lints = of(&p, LintKind::ProfileRunsCode);
        assert_eq!(lints.len(), 1, "{lints:#?}");
        assert!(
            lints[0]
                .message
                .contains(&format!("holds `{link}`, and `dash` is a shell")),
            "{}",
            lints[0].message
        );
        std::fs::remove_file(&link).unwrap();
        let p = policy(&profile("make", &[clean, &format!("{clean}/cc1")]));
        assert_eq!(of(&p, LintKind::ProfileRunsCode), [], "{:#?}", lint(&p));
    }

    #[test]
    fn shipped_profiles_of_granted_programs_do_not_run_code() {
        let p = policy(&format!(
            "{}{}",
            rule("git", "allow", "program = \"git\", argv = \"status **\""),
            rule("rg", "allow", "program = \"rg\", argv = \"-n TODO src\""),
        ));
        assert_eq!(of(&p, LintKind::ProfileRunsCode), [], "{:#?}", lint(&p));
    }

    #[test]
    fn rg_and_tar_options_that_run_programs_are_reported_at_the_rule_that_admits_them() {
        let p = policy(&format!(
            "{}{}",
            rule("rg-n", "ask", "program = \"rg\", argv = \"-n **\""),
            rule("tar-x", "allow", "program = \"tar\", argv = \"-xf * **\""),
        ));
        let lints = of(&p, LintKind::OptionRunsPrograms);
        let msgs: Vec<&str> = lints.iter().map(|l| l.message.as_str()).collect();
        assert!(
            msgs.contains(&"rule `rg-n` (ask) lets `rg -n --pre x` through: `--pre` runs the named program on every file it searches (under profile `rg` what it starts is a brokered call, decided by the rules); add a deny rule for `** --pre* **` before it"),
            "{msgs:#?}"
        );
        let options = |id: &str| {
            lints
                .iter()
                .filter(|l| l.rule_id == id)
                .map(|l| l.message.split('`').nth(5).unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(options("rg-n"), ["--pre", "--search-zip"], "{msgs:#?}");
        assert_eq!(
            options("tar-x"),
            [
                "--to-command",
                "--use-compress-program",
                "--info-script",
                "--new-volume-script",
                "--checkpoint-action=exec=",
                "--rsh-command",
                "--rmt-command"
            ],
            "{msgs:#?}"
        );
        assert!(
            lints.iter().all(|l| l.line == 4 || l.line == 9),
            "{lints:#?}"
        );
    }

    #[test]
    fn options_denied_first_or_not_admitted_are_not_reported() {
        // Literal patterns cannot take the options.
        let p = policy(&format!(
            "{}{}",
            rule("rg", "allow", "program = \"rg\", argv = \"-n TODO src\""),
            rule(
                "tar",
                "allow",
                "program = \"tar\", argv = \"-tf archive.tar\""
            ),
        ));
        assert_eq!(of(&p, LintKind::OptionRunsPrograms), [], "{:#?}", lint(&p));
        // A word right after an option is taken as its value, not as another option.
        let p = policy(&rule("tar", "allow", "program = \"tar\", argv = \"-tf *\""));
        assert_eq!(of(&p, LintKind::OptionRunsPrograms), [], "{:#?}", lint(&p));
        // Each table row's own deny rules, placed first, close every use it lists.
        for runner in OPTION_RUNNERS {
            let mut body = String::new();
            for (i, d) in runner.deny.iter().enumerate() {
                let tool = format!("program = \"{}\", argv = \"{d}\"", runner.program);
                body.push_str(&rule(&format!("deny-{i}"), "deny", &tool));
            }
            let tool = format!("program = \"{}\"", runner.program);
            body.push_str(&rule("all", "allow", &tool));
            let p = policy(&body);
            let named = format!("`{}` {}", runner.option, runner.why);
            let left: Vec<Lint> = of(&p, LintKind::OptionRunsPrograms)
                .into_iter()
                .filter(|l| l.message.contains(&named))
                .collect();
            assert_eq!(left, [], "{} {}", runner.program, runner.option);
        }
    }

    #[test]
    fn an_option_the_default_lets_through_is_reported_at_the_top() {
        let text = format!(
            "version = 1\ndefault = \"ask\"\n{}{}",
            rule(
                "no-pre",
                "deny",
                "program = \"rg\", argv = \"** --pre* **\""
            ),
            rule(
                "res",
                "allow",
                "program = \"rg\", argv = \"** --search-zip **\""
            ),
        );
        let p = Policy::from_toml("lint.toml", &text).unwrap();
        let lints = of(&p, LintKind::OptionRunsPrograms);
        assert_eq!(lints.len(), 2, "{lints:#?}");
        assert_eq!((lints[0].rule_id.as_str(), lints[0].line), ("", 1));
        assert!(
            lints[0]
                .message
                .starts_with("the policy default (ask) lets `rg -z` through"),
            "{}",
            lints[0].message
        );
        assert_eq!(lints[1].rule_id, "res");
    }

    #[test]
    fn git_config_that_names_programs_is_reported_with_the_subcommands_that_run_it() {
        for group in GIT_CONFIG_RUNNERS {
            for key in group.keys {
                assert!(
                    git_config_key_executes(key),
                    "{key} must be an executing key"
                );
            }
        }
        let p = policy(&format!(
            "{}{}{}{}{}",
            rule(
                "identity",
                "allow",
                "program = \"git\", config = \"user.*\""
            ),
            rule(
                "filters",
                "allow",
                "program = \"git\", config = \"filter.*\""
            ),
            rule("signing", "ask", "program = \"git\", config = \"gpg.*\""),
            rule("pager", "allow", "program = \"git\", config = \"core.*\""),
            rule("add", "allow", "program = \"git\", argv = \"add **\""),
        ));
        let lints = of(&p, LintKind::OptionRunsPrograms);
        let ids: Vec<&str> = lints.iter().map(|l| l.rule_id.as_str()).collect();
        // `core.*` is already reported as granting execution; `user.*` is inert.
        assert_eq!(ids, ["filters", "signing"], "{lints:#?}");
        assert_eq!(
            lints[0].message,
            "rule `filters` (allow) lets `git -c` set configuration that names programs git runs: `filter.x.clean` (clean/smudge filters, run by `git add`); allow only inert keys and deny the rest with `config = \"*\"`"
        );
        assert!(
            lints[1].message.contains(
                "`gpg.program` (editors and gpg, run by subcommands this policy does not grant)"
            ),
            "{}",
            lints[1].message
        );
        assert_eq!(
            of(&p, LintKind::GrantsExecution)
                .iter()
                .map(|l| l.rule_id.as_str())
                .collect::<Vec<_>>(),
            ["pager"]
        );
        let quiet = policy(&format!(
            "{}{}{}",
            rule(
                "identity",
                "allow",
                "program = \"git\", config = \"user.*\""
            ),
            rule("other", "deny", "program = \"git\", config = \"*\""),
            rule("add", "allow", "program = \"git\", argv = \"add **\""),
        ));
        assert_eq!(
            of(&quiet, LintKind::OptionRunsPrograms),
            [],
            "{:#?}",
            lint(&quiet)
        );
    }

    #[test]
    fn sed_and_find_are_runners_unless_the_pattern_rules_it_out() {
        let p = policy(&format!(
            "{}{}{}{}{}{}",
            rule(
                "sed-print",
                "allow",
                "program = \"sed\", argv = \"-n 1p *\""
            ),
            rule("sed-e", "allow", "program = \"sed\", argv = \"-e * f\""),
            rule(
                "sed-safe",
                "allow",
                "program = \"sed\", argv = \"--sandbox **\""
            ),
            rule(
                "sed-fixed",
                "allow",
                "program = \"sed\", argv = \"-n 1p f\""
            ),
            rule(
                "find-okdir",
                "allow",
                "program = \"find\", argv = \"* -okdir * ;\""
            ),
            rule(
                "find-name",
                "allow",
                "program = \"find\", argv = \". -name *\""
            ),
        ));
        let ids: Vec<String> = of(&p, LintKind::GrantsExecution)
            .into_iter()
            .map(|l| l.rule_id)
            .collect();
        assert_eq!(ids, ["sed-print", "sed-e", "find-okdir"], "{:#?}", lint(&p));
        assert_eq!(of(&p, LintKind::OptionRunsPrograms), []);
    }
}
