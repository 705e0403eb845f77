//! Normalizing a tool invocation before rules see it.
//!
//! Rules are written against what a program *does*, not how it was spelled. For git,
//! `git -C dir -c user.name=x --no-pager push origin` is a `push`: the global options
//! before the subcommand are peeled off, so a `push **` rule matches it. Options that
//! make git run another program (`-c core.pager=…`, `-c alias.x=!sh`, `--exec-path=…`,
//! `--config-env=core.sshCommand=…`) become separate [`ConfigSetting`]s that the policy
//! must allow explicitly. Anything we cannot parse is an error, and errors are denials.
//!
//! The subcommand's own arguments are then read the way git reads them (see
//! [`crate::git_options`]): `reset --har` is `reset --hard`, `clean -fd` is
//! `clean -f -d`, `commit -mfoo` is `commit -m foo`, and an ambiguous abbreviation is
//! refused, as git refuses it. Subcommand options that name a program for git to run
//! (`clone -u`, `fetch --upload-pack`, `push --receive-pack`, `rebase --exec`, …) are
//! [`ConfigSetting`]s too.

use crate::git_options::{self, NormalizedArgs, OptionValue};
use std::path::Path;

/// A program's arguments after program-specific normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Program name as rules name it: the basename of `argv[0]`.
    pub program: String,
    /// `argv[0]` as given (may be a path).
    pub program_path: String,
    /// Arguments the argv patterns match: for git, from the subcommand on, as git reads
    /// them (abbreviated long options expanded, bundled short options split).
    pub args: Vec<String>,
    /// Global options that were peeled off, as given (for reports).
    pub global_options: Vec<String>,
    /// Configuration the invocation sets that is not known to be inert; each needs its
    /// own grant.
    pub config: Vec<ConfigSetting>,
}

/// One configuration setting made on the command line (e.g. git's `-c key=value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSetting {
    /// Normalized key (`core.pager`; section and variable lower-cased, subsection kept).
    pub key: String,
    /// The value (for `--config-env`, the name of the environment variable).
    pub value: String,
    /// The option that set it (`-c`, `--config-env`, `--exec-path`; for a subcommand's
    /// option, the subcommand and the option as spelled: `clone -u`, `push --exec`).
    pub via: &'static str,
    /// Whether the key is known to make the program execute something.
    pub executes: bool,
}

/// Why an invocation could not be normalized. The caller must treat it as a denial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvocationError {
    /// `argv` was empty.
    #[error("empty argument vector")]
    Empty,
    /// An argument contains a NUL byte.
    #[error("argument {index} contains a NUL byte")]
    Nul {
        /// Index into argv.
        index: usize,
    },
    /// A global option we do not know; it might change what runs, so refuse.
    #[error("{program}: unrecognized global option `{option}` before the subcommand")]
    UnknownGlobalOption {
        /// The program.
        program: String,
        /// The option as given.
        option: String,
    },
    /// A global option that needs a value had none.
    #[error("{program}: global option `{option}` needs a value")]
    MissingValue {
        /// The program.
        program: String,
        /// The option as given.
        option: String,
    },
    /// A long option that abbreviates several of the subcommand's options; git refuses
    /// it, and guessing which one was meant could pick the one a rule does not deny.
    #[error(
        "{program} {subcommand}: `{option}` is ambiguous: it could be {}",
        .candidates.join(", ")
    )]
    AmbiguousOption {
        /// The program.
        program: String,
        /// The subcommand.
        subcommand: String,
        /// The option as given.
        option: String,
        /// The options it abbreviates, spelled out.
        candidates: Vec<String>,
    },
    /// `-c` without `=`: git reads it as setting the key to true; fine, but a key that is
    /// not syntactically a config key is refused.
    #[error("{program}: `{setting}` is not a valid configuration key")]
    BadConfigKey {
        /// The program.
        program: String,
        /// The setting as given.
        setting: String,
    },
}

impl Invocation {
    /// Normalizes `argv` (with `argv[0]` the program) for rule matching.
    pub fn parse<S: AsRef<str>>(argv: &[S]) -> Result<Invocation, InvocationError> {
        let argv: Vec<&str> = argv.iter().map(AsRef::as_ref).collect();
        let Some((&program_path, rest)) = argv.split_first() else {
            return Err(InvocationError::Empty);
        };
        if let Some(index) = argv.iter().position(|a| a.contains('\0')) {
            return Err(InvocationError::Nul { index });
        }
        let program = program_name(program_path).to_string();
        let mut inv = Invocation {
            program,
            program_path: program_path.to_string(),
            args: Vec::new(),
            global_options: Vec::new(),
            config: Vec::new(),
        };
        match inv.program.as_str() {
            "git" => {
                peel_git_global_options(&mut inv, rest)?;
                normalize_git_subcommand(&mut inv)?;
            }
            _ => inv.args = rest.iter().map(|s| s.to_string()).collect(),
        }
        Ok(inv)
    }
}

/// The name rules use for a program: the last path component.
pub fn program_name(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(path)
}

/// git's global options (git.c `handle_options`), by how they take a value.
enum GitOpt {
    /// No value.
    Flag,
    /// A value, either `--opt=value` or `--opt value`.
    Value,
    /// A value only as a separate argument (`-C dir`, `-c k=v`).
    SeparateValue,
}

fn git_global_option(name: &str) -> Option<GitOpt> {
    use GitOpt::*;
    Some(match name {
        "-p"
        | "--paginate"
        | "-P"
        | "--no-pager"
        | "--no-replace-objects"
        | "--no-lazy-fetch"
        | "--no-optional-locks"
        | "--no-advice"
        | "--bare"
        | "--literal-pathspecs"
        | "--no-literal-pathspecs"
        | "--glob-pathspecs"
        | "--noglob-pathspecs"
        | "--icase-pathspecs"
        | "--html-path"
        | "--man-path"
        | "--info-path" => Flag,
        "--git-dir" | "--work-tree" | "--namespace" | "--attr-source" | "--config-env"
        | "--list-cmds" | "--super-prefix" => Value,
        "-C" | "-c" => SeparateValue,
        _ => return None,
    })
}

fn peel_git_global_options(inv: &mut Invocation, rest: &[&str]) -> Result<(), InvocationError> {
    let mut i = 0;
    while i < rest.len() {
        let arg = rest[i];
        if !arg.starts_with('-') {
            break;
        }
        // `--version`/`--help` are commands in git (git.c rewrites them to `version`/`help`).
        match arg {
            "-v" | "--version" => {
                inv.args.push("version".into());
                inv.args.extend(rest[i + 1..].iter().map(|s| s.to_string()));
                return Ok(());
            }
            "-h" | "--help" => {
                inv.args.push("help".into());
                inv.args.extend(rest[i + 1..].iter().map(|s| s.to_string()));
                return Ok(());
            }
            _ => {}
        }
        // `--exec-path` alone prints a path; with a value it picks where subcommands come from.
        if let Some(path) = arg.strip_prefix("--exec-path=") {
            inv.global_options.push(arg.to_string());
            inv.config.push(ConfigSetting {
                key: "--exec-path".into(),
                value: path.to_string(),
                via: "--exec-path",
                executes: true,
            });
            i += 1;
            continue;
        }
        if arg == "--exec-path" {
            inv.global_options.push(arg.to_string());
            i += 1;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        let kind = git_global_option(name).ok_or_else(|| InvocationError::UnknownGlobalOption {
            program: inv.program.clone(),
            option: arg.to_string(),
        })?;
        let missing = || InvocationError::MissingValue {
            program: inv.program.clone(),
            option: arg.to_string(),
        };
        let value = match (kind, inline) {
            (GitOpt::Flag, None) => None,
            (GitOpt::Flag, Some(_)) | (GitOpt::SeparateValue, Some(_)) => {
                return Err(InvocationError::UnknownGlobalOption {
                    program: inv.program.clone(),
                    option: arg.to_string(),
                })
            }
            (GitOpt::Value, Some(v)) => Some(v.to_string()),
            (GitOpt::Value | GitOpt::SeparateValue, None) => {
                i += 1;
                Some(rest.get(i).ok_or_else(missing)?.to_string())
            }
        };
        inv.global_options.push(arg.to_string());
        if inline.is_none() {
            if let Some(v) = &value {
                inv.global_options.push(v.clone());
            }
        }
        match (name, value) {
            ("-c", Some(setting)) => {
                let (key, val) = setting
                    .split_once('=')
                    .unwrap_or((setting.as_str(), "true"));
                inv.config
                    .push(git_config_setting(&inv.program, &setting, key, val, "-c")?);
            }
            ("--config-env", Some(setting)) => {
                let (key, env) =
                    setting
                        .split_once('=')
                        .ok_or_else(|| InvocationError::BadConfigKey {
                            program: inv.program.clone(),
                            setting: setting.clone(),
                        })?;
                inv.config.push(git_config_setting(
                    &inv.program,
                    &setting,
                    key,
                    env,
                    "--config-env",
                )?);
            }
            _ => {}
        }
        i += 1;
    }
    inv.args = rest[i..].iter().map(|s| s.to_string()).collect();
    Ok(())
}

/// Subcommand options that name a program git runs: the other end of a transport
/// (`upload-pack`, `receive-pack`, which run locally for local and ssh-less URLs), a
/// shell command (`rebase --exec`), a pager or diff tool. Each becomes a [`ConfigSetting`]
/// with key `--<long name>` and `via` the subcommand and the option as spelled.
/// (subcommand, long name, `via` for the long spelling, `via` for the short one.)
const GIT_PROGRAM_OPTIONS: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "clone",
        "upload-pack",
        "clone --upload-pack",
        Some("clone -u"),
    ),
    ("clone", "template", "clone --template", None),
    ("fetch", "upload-pack", "fetch --upload-pack", None),
    ("pull", "upload-pack", "pull --upload-pack", None),
    ("ls-remote", "upload-pack", "ls-remote --upload-pack", None),
    ("ls-remote", "exec", "ls-remote --exec", None),
    ("push", "receive-pack", "push --receive-pack", None),
    ("push", "exec", "push --exec", None),
    (
        "send-pack",
        "receive-pack",
        "send-pack --receive-pack",
        None,
    ),
    ("send-pack", "exec", "send-pack --exec", None),
    ("archive", "exec", "archive --exec", None),
    ("rebase", "exec", "rebase --exec", Some("rebase -x")),
    (
        "grep",
        "open-files-in-pager",
        "grep --open-files-in-pager",
        Some("grep -O"),
    ),
    (
        "difftool",
        "extcmd",
        "difftool --extcmd",
        Some("difftool -x"),
    ),
    ("init", "template", "init --template", None),
];

/// Rewrites `inv.args[1..]` (after the subcommand) the way git reads them, and records
/// program-running options as configuration.
fn normalize_git_subcommand(inv: &mut Invocation) -> Result<(), InvocationError> {
    let Some((subcommand, rest)) = inv.args.split_first() else {
        return Ok(());
    };
    let subcommand = subcommand.clone();
    let NormalizedArgs { args, options } =
        git_options::normalize_args(&subcommand, rest).map_err(|e| {
            InvocationError::AmbiguousOption {
                program: inv.program.clone(),
                subcommand: subcommand.clone(),
                option: e.option,
                candidates: e.candidates,
            }
        })?;
    for parsed in &options {
        let (table, opt) = (parsed.table, parsed.option);
        if table.sub.is_some() || parsed.unset {
            continue;
        }
        let Some(long) = opt.long else { continue };
        // `clone -c key=value` sets configuration in the new repository that the clone
        // itself already uses (core.sshCommand, core.fsmonitor, …): like `git -c`.
        if (table.command, long) == ("clone", "config") {
            let setting = parsed.value.as_deref().unwrap_or("");
            let (key, value) = setting.split_once('=').unwrap_or((setting, "true"));
            let via = if parsed.short {
                "clone -c"
            } else {
                "clone --config"
            };
            inv.config
                .push(git_config_setting(&inv.program, setting, key, value, via)?);
            continue;
        }
        let Some(&(_, _, via_long, via_short)) = GIT_PROGRAM_OPTIONS
            .iter()
            .find(|(cmd, name, _, _)| (*cmd, *name) == (table.command, long))
        else {
            continue;
        };
        // A required value that is missing is git's error; an optional one left out
        // still runs the default program (grep's pager).
        if opt.value == OptionValue::Required && parsed.value.is_none() {
            continue;
        }
        inv.config.push(ConfigSetting {
            key: format!("--{long}"),
            value: parsed.value.clone().unwrap_or_default(),
            via: if parsed.short {
                via_short.unwrap_or(via_long)
            } else {
                via_long
            },
            executes: true,
        });
    }
    // fetch-pack reads its own arguments: options until the first word without a dash,
    // and only the `=` forms of these two.
    if subcommand == "fetch-pack" {
        for arg in rest.iter().take_while(|a| a.starts_with('-')) {
            for (key, via) in [
                ("--upload-pack", "fetch-pack --upload-pack"),
                ("--exec", "fetch-pack --exec"),
            ] {
                if let Some(program) = arg.strip_prefix(key).and_then(|a| a.strip_prefix('=')) {
                    inv.config.push(ConfigSetting {
                        key: key.into(),
                        value: program.to_string(),
                        via,
                        executes: true,
                    });
                }
            }
        }
    }
    inv.args.truncate(1);
    inv.args.extend(args);
    Ok(())
}

fn git_config_setting(
    program: &str,
    setting: &str,
    key: &str,
    value: &str,
    via: &'static str,
) -> Result<ConfigSetting, InvocationError> {
    let key = normalize_git_config_key(key).ok_or_else(|| InvocationError::BadConfigKey {
        program: program.to_string(),
        setting: setting.to_string(),
    })?;
    let executes = git_config_key_executes(&key);
    Ok(ConfigSetting {
        key,
        value: value.to_string(),
        via,
        executes,
    })
}

/// git config keys are `section[.subsection].variable`; section and variable are
/// case-insensitive, the subsection is not. Returns `None` for a malformed key.
pub fn normalize_git_config_key(key: &str) -> Option<String> {
    let first = key.find('.')?;
    let last = key.rfind('.')?;
    let (section, variable) = (&key[..first], &key[last + 1..]);
    let valid_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    if !valid_name(section)
        || variable.is_empty()
        || !variable
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return None;
    }
    let middle = if first < last { &key[first..last] } else { "" };
    Some(format!(
        "{}{}.{}",
        section.to_ascii_lowercase(),
        middle,
        variable.to_ascii_lowercase()
    ))
}

/// Does setting this (normalized) git config key make git execute a program, load more
/// config, or hand code a way in? Keys are matched with `*` standing for a subsection.
pub fn git_config_key_executes(key: &str) -> bool {
    const EXECUTING: &[&str] = &[
        "alias.*",
        "browser.*.cmd",
        "browser.*.path",
        "core.alternaterefscommand",
        "core.askpass",
        "core.editor",
        "core.fsmonitor",
        "core.gitproxy",
        "core.hookspath",
        "core.pager",
        "core.sshcommand",
        "core.worktree",
        "credential.helper",
        "credential.*.helper",
        "diff.external",
        "diff.*.command",
        "diff.*.textconv",
        "difftool.*.cmd",
        "difftool.*.path",
        "filter.*.clean",
        "filter.*.process",
        "filter.*.smudge",
        "gpg.program",
        "gpg.*.program",
        "hook.*.command",
        "imap.tunnel",
        "include.path",
        "includeif.*.path",
        "init.templatedir",
        "interactive.difffilter",
        "man.*.cmd",
        "man.*.path",
        "merge.*.driver",
        "mergetool.*.cmd",
        "mergetool.*.path",
        "pager.*",
        "protocol.allow",
        "protocol.*.allow",
        "remote.*.receivepack",
        "remote.*.uploadpack",
        "remote.*.vcs",
        "sendemail.cccmd",
        "sendemail.smtpserver",
        "sendemail.tocmd",
        "sequence.editor",
        "submodule.*.update",
        "tar.*.command",
        "trailer.*.cmd",
        "trailer.*.command",
        "uploadpack.packobjectshook",
        "web.browser",
    ];
    EXECUTING
        .iter()
        .any(|pattern| config_key_pattern_matches(pattern, key))
}

/// Matches a config key against a pattern where `*` stands for one or more whole
/// dotted parts (`alias.*` matches `alias.co`; `diff.*.textconv` matches
/// `diff.my.driver.textconv`, because subsections may contain dots).
pub fn config_key_pattern_matches(pattern: &str, key: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == key,
        Some((prefix, suffix)) => {
            key.len() > prefix.len() + suffix.len()
                && key.starts_with(prefix)
                && key.ends_with(suffix)
                && !suffix.contains('*')
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Invocation {
        Invocation::parse(&s.split_whitespace().collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn git_global_options_are_peeled_before_the_subcommand() {
        let inv = parse(
            "/usr/bin/git -C /w -c user.name=x --no-pager --git-dir=/w/.git push origin main",
        );
        assert_eq!(inv.program, "git");
        assert_eq!(inv.args, ["push", "origin", "main"]);
        assert_eq!(inv.config.len(), 1);
        assert!(!inv.config[0].executes, "user.name is inert");
        let inv = parse("git --work-tree /w --namespace ns commit -m x");
        assert_eq!(inv.args, ["commit", "-m", "x"]);
    }

    #[test]
    fn executing_config_is_its_own_setting_whatever_the_spelling() {
        for (argv, key) in [
            ("git -c core.pager=less log", "core.pager"),
            ("git -c Core.SSHCommand=evil push", "core.sshcommand"),
            ("git -c alias.st=!sh st", "alias.st"),
            ("git --config-env=core.editor=EDITOR commit", "core.editor"),
            ("git --config-env core.hooksPath=X commit", "core.hookspath"),
            (
                "git -c diff.My.Driver.textconv=x diff",
                "diff.My.Driver.textconv",
            ),
            ("git --exec-path=/tmp/x status", "--exec-path"),
        ] {
            let inv = parse(argv);
            assert_eq!(inv.config.len(), 1, "{argv}");
            assert_eq!(inv.config[0].key, key, "{argv}");
            assert!(
                inv.config[0].executes,
                "{argv} must be flagged as executing"
            );
        }
    }

    #[test]
    fn subsection_case_is_kept_and_section_case_folded() {
        assert_eq!(
            normalize_git_config_key("Remote.Origin.UploadPack").as_deref(),
            Some("remote.Origin.uploadpack")
        );
        assert!(normalize_git_config_key("nodot").is_none());
        assert!(normalize_git_config_key("a.").is_none());
    }

    #[test]
    fn version_and_help_become_subcommands() {
        assert_eq!(parse("git --version").args, ["version"]);
        assert_eq!(parse("git -C x --help push").args, ["help", "push"]);
    }

    #[test]
    fn unknown_or_incomplete_global_options_are_errors() {
        let err = Invocation::parse(&["git", "--frobnicate", "push"]).unwrap_err();
        assert!(
            matches!(err, InvocationError::UnknownGlobalOption { .. }),
            "{err}"
        );
        let err = Invocation::parse(&["git", "-C"]).unwrap_err();
        assert!(matches!(err, InvocationError::MissingValue { .. }), "{err}");
        let err = Invocation::parse(&["git", "-c", "=x", "log"]).unwrap_err();
        assert!(matches!(err, InvocationError::BadConfigKey { .. }), "{err}");
        let err = Invocation::parse(&["git", "-Cdir", "log"]).unwrap_err();
        assert!(
            matches!(err, InvocationError::UnknownGlobalOption { .. }),
            "{err}"
        );
        assert_eq!(Invocation::parse::<&str>(&[]), Err(InvocationError::Empty));
        assert!(matches!(
            Invocation::parse(&["git", "a\0b"]),
            Err(InvocationError::Nul { index: 1 })
        ));
    }

    #[test]
    fn git_subcommand_arguments_are_read_as_git_reads_them() {
        for (argv, args) in [
            ("git reset --har", &["reset", "--hard"][..]),
            (
                "git -C /w reset --hard HEAD~1",
                &["reset", "--hard", "HEAD~1"],
            ),
            ("git push --delet x", &["push", "--delete", "x"]),
            ("git push -fu origin", &["push", "-f", "-u", "origin"]),
            ("git clean -fd", &["clean", "-f", "-d"]),
            ("git branch -Df x", &["branch", "-D", "-f", "x"]),
            ("git commit -mfoo", &["commit", "-m", "foo"]),
            ("git commit -m -fd", &["commit", "-m", "-fd"]),
            ("git reset -- --har", &["reset", "--", "--har"]),
            ("git log -3 --sourc", &["log", "-3", "--sourc"]),
            ("git stash clear", &["stash", "clear"]),
            (
                "git --no-pager stash --keep-ind",
                &["stash", "--keep-index"],
            ),
            ("git frobnicate --har -fd", &["frobnicate", "--har", "-fd"]),
            ("git", &[]),
        ] {
            assert_eq!(parse(argv).args, args, "{argv}");
        }
    }

    #[test]
    fn an_ambiguous_abbreviation_is_refused_naming_the_candidates() {
        let err = Invocation::parse(&["git", "push", "--forc", "origin"]).unwrap_err();
        let InvocationError::AmbiguousOption {
            subcommand,
            option,
            candidates,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!((subcommand.as_str(), option.as_str()), ("push", "--forc"));
        assert!(candidates.contains(&"--force-with-lease".to_string()));
        let message = err.to_string();
        assert!(
            message.contains("`--forc`") && message.contains("--force-if-includes"),
            "{message}"
        );
    }

    #[test]
    fn transport_programs_are_config_settings_that_execute() {
        for (argv, key, via, value) in [
            ("git clone -u /x y z", "--upload-pack", "clone -u", "/x"),
            ("git clone -u/x y", "--upload-pack", "clone -u", "/x"),
            (
                "git clone --upload=/x y",
                "--upload-pack",
                "clone --upload-pack",
                "/x",
            ),
            (
                "git fetch --upload-pack /x origin",
                "--upload-pack",
                "fetch --upload-pack",
                "/x",
            ),
            (
                "git pull --upload-pack=/x",
                "--upload-pack",
                "pull --upload-pack",
                "/x",
            ),
            (
                "git ls-remote --exec=/x origin",
                "--exec",
                "ls-remote --exec",
                "/x",
            ),
            (
                "git push --receive-pack=/x origin",
                "--receive-pack",
                "push --receive-pack",
                "/x",
            ),
            ("git push --exec /x origin", "--exec", "push --exec", "/x"),
            (
                "git send-pack --rec=/x r",
                "--receive-pack",
                "send-pack --receive-pack",
                "/x",
            ),
            (
                "git archive --remote=r --exec=/x HEAD",
                "--exec",
                "archive --exec",
                "/x",
            ),
            (
                "git fetch-pack --exec=/x r",
                "--exec",
                "fetch-pack --exec",
                "/x",
            ),
            ("git rebase -x make main", "--exec", "rebase -x", "make"),
            ("git grep -O foo", "--open-files-in-pager", "grep -O", ""),
            (
                "git init --template=/t",
                "--template",
                "init --template",
                "/t",
            ),
        ] {
            let inv = parse(argv);
            assert_eq!(inv.config.len(), 1, "{argv}: {:?}", inv.config);
            let c = &inv.config[0];
            assert_eq!(
                (c.key.as_str(), c.via, c.value.as_str()),
                (key, via, value),
                "{argv}"
            );
            assert!(c.executes, "{argv}");
        }
        // `fetch -u` is --update-head-ok; after `--`, or negated, nothing runs.
        for argv in [
            "git fetch -u origin",
            "git clone -- -u x",
            "git push --no-receive-pack origin",
            "git ls-remote origin --upload-pack=/x",
            "git archive --exe=/x HEAD",
        ] {
            assert!(parse(argv).config.is_empty(), "{argv}");
        }
    }

    #[test]
    fn clone_config_is_command_line_configuration() {
        let inv = parse("git clone -c core.sshCommand=evil -c user.name=x url");
        let keys: Vec<(&str, &str, bool)> = inv
            .config
            .iter()
            .map(|c| (c.key.as_str(), c.via, c.executes))
            .collect();
        assert_eq!(
            keys,
            [
                ("core.sshcommand", "clone -c", true),
                ("user.name", "clone -c", false)
            ]
        );
        let err = Invocation::parse(&["git", "clone", "--config=nodot", "u"]).unwrap_err();
        assert!(matches!(err, InvocationError::BadConfigKey { .. }), "{err}");
    }

    #[test]
    fn other_programs_are_taken_as_given() {
        let inv = parse("/bin/ls -la /x");
        assert_eq!(inv.program, "ls");
        assert_eq!(inv.args, ["-la", "/x"]);
        assert_eq!(parse("rg --har -fd").args, ["--har", "-fd"]);
        assert!(inv.config.is_empty());
    }
}
