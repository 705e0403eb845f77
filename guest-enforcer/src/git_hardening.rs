//! git as a brokered tool: closing its program-running surface.
//!
//! git runs programs that its options and configuration name: editors, pagers, ssh,
//! signing programs, credential helpers, filters, diff and merge drivers, hooks,
//! transports. The agent writes the repository's configuration (and can make a new
//! repository anywhere it can write), so every such key is agent-controlled. Four
//! walls:
//!
//! 1. **Overrides at command-line scope** (`GIT_CONFIG_COUNT`, which git reads after
//!    every file) and environment variables that outrank configuration, for every
//!    fixed-name key: the agent's files cannot change them.
//! 2. **A preflight**: before the call, the broker has git itself list the
//!    configuration it would read (includes followed) and refuses the call, naming the
//!    key and the file, if any program-naming key outside the overrides is set there
//!    (`filter.*`, `diff.*.textconv`, `merge.*.driver`, `include.*`, …).
//! 3. **The tool's execution profile** (Landlock): no shell, no interpreter, no other
//!    binary; what git starts by name reaches the shims, so it is a brokered call.
//! 4. **An exec supervisor** ([`crate::no_exec`]): a call that needs no helper runs no
//!    program at all; one that does may run exactly git's own (its exec-path `git`
//!    under that name, its HTTPS helper) and the shims.
//!
//! The preflight also refuses, for a `push`, the keys that change what it sends or
//! where (a mirror, configured refspecs, push URLs, URL rewrites): the rules and the
//! person approving decide a push by its command line.
//!
//! The gap: the configuration is read twice, by the preflight and by git. A key
//! written in between is not seen by the preflight: one whose value is exactly `git`,
//! in a helper-running call, runs git with the arguments git gives that key (for
//! `diff.external`, the changed file's name first); one that reshapes a push does so.

use airlock_proto::tool_invocation::git_config_key_executes;
use std::path::Path;

/// Configuration forced at command-line scope. `{refusal}` stands for the refusal
/// program (it prints one line naming the profile and fails).
const OVERRIDES: &[(&str, &str)] = &[
    // No hooks, no fsmonitor daemon, no pager (`cat` is git's own "no pager").
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.pager", "cat"),
    // Editors and signing programs: used only when needed, then refused readably.
    ("core.editor", "{refusal}"),
    ("sequence.editor", "{refusal}"),
    ("gpg.program", "{refusal}"),
    ("gpg.openpgp.program", "{refusal}"),
    ("gpg.x509.program", "{refusal}"),
    ("gpg.ssh.program", "{refusal}"),
    ("gpg.ssh.defaultKeyCommand", "{refusal}"),
    // ssh by name, through its shim (a brokered call the rules decide), never a
    // command line that needs a shell.
    ("core.sshCommand", "ssh"),
    ("ssh.variant", "ssh"),
    // An empty value empties the helper list: no credential helper runs.
    ("credential.helper", ""),
    ("core.askPass", ""),
    // Transports: https and ssh only. `file` runs git-upload-pack through a shell,
    // `ext` runs any command, `git` may run core.gitProxy.
    ("protocol.allow", "never"),
    ("protocol.https.allow", "always"),
    ("protocol.ssh.allow", "always"),
    ("protocol.http.allow", "never"),
    ("protocol.file.allow", "never"),
    ("protocol.ext.allow", "never"),
    ("protocol.git.allow", "never"),
    ("protocol.ftp.allow", "never"),
    ("protocol.ftps.allow", "never"),
    // No background work (it would run subcommands nobody granted), no submodule
    // recursion (a submodule's own configuration is not preflighted).
    ("maintenance.auto", "false"),
    ("gc.auto", "0"),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("push.recurseSubmodules", "no"),
    // A push sends what its command line says: no server-side push options (an empty
    // value clears the list; on some forges they merge or skip CI), no tags beyond it.
    ("push.pushOption", ""),
    ("push.followTags", "false"),
    // `git push` with no refspec pushes the current branch to the same name (`upstream`
    // would push it to `branch.<name>.merge`, a ref the approval never shows).
    ("push.default", "simple"),
];

/// Keys the overrides or the environment neutralise whatever the files say: the
/// preflight does not refuse them. `alias.*` never runs (the broker refuses a
/// subcommand that is not a git command); `pager.*` loses to `GIT_PAGER`.
fn neutralised(key: &str) -> bool {
    key.starts_with("alias.")
        || key.starts_with("pager.")
        || OVERRIDES.iter().any(|(k, _)| k.eq_ignore_ascii_case(key))
}

/// What git is told when it wants an editor or a signing program (the refusal
/// program prints it; a call that runs no program reports it instead).
pub const EDITOR_REFUSAL: &str = "git tried to run a program its configuration names (an editor or a signing program); profile `git` runs none: give messages with -m or -F, use --no-edit, --no-gpg-sign";

/// The environment git runs with (added to the filtered environment of the shim).
pub fn git_environment(refusal_program: &Path) -> Vec<(String, String)> {
    let refusal = refusal_program.display().to_string();
    let mut env = vec![
        ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
        ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
        // These outrank configuration of any scope.
        ("GIT_PAGER".into(), "cat".into()),
        ("GIT_EDITOR".into(), refusal.clone()),
        ("GIT_SEQUENCE_EDITOR".into(), refusal.clone()),
        ("GIT_SSH_COMMAND".into(), "ssh".into()),
        ("GIT_SSH_VARIANT".into(), "ssh".into()),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ("GIT_PROTOCOL_FROM_USER".into(), "0".into()),
        (crate::shim::REFUSAL_ENV.into(), EDITOR_REFUSAL.into()),
        ("GIT_CONFIG_COUNT".into(), OVERRIDES.len().to_string()),
    ];
    for (i, (k, v)) in OVERRIDES.iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), k.to_string()));
        env.push((
            format!("GIT_CONFIG_VALUE_{i}"),
            v.replace("{refusal}", &refusal),
        ));
    }
    env
}

/// git commands that start programs in normal operation (git itself for internal
/// work, the HTTPS remote helper): they run under git's profile. Every other git call
/// runs no program at all after git (see [`crate::no_exec`]), so nothing its
/// configuration names can run, even if written after the preflight.
const RUN_PROGRAMS: &[&str] = &[
    "fetch",
    "pull",
    "push",
    "clone",
    "ls-remote",
    "remote",
    "submodule",
    "stash",
    "worktree",
    "gc",
    "repack",
    "maintenance",
    "bundle",
    "archive",
    "fetch-pack",
    "send-pack",
];

/// The execs a git call that may start programs is allowed, under `profile`: each
/// listed `git` as `git` (git re-executes itself only so, through its exec-path; as
/// `git-<name>` it would run the subcommand the name picks), each listed remote helper
/// under the names git gives it (`git-remote-https` links to `git-remote-http`), and
/// the shims (brokered calls). Nothing a configuration value names can match them but
/// a bare `git`, which runs git with git's own arguments for that key.
pub fn helper_execs(
    profile: &airlock_proto::tool_rules::ToolProfile,
    shim_dir: &Path,
) -> Vec<crate::no_exec::AllowedExec> {
    use crate::no_exec::AllowedExec;
    let mut allowed = vec![AllowedExec::In(shim_dir.display().to_string())];
    for path in &profile.executes {
        let p = Path::new(path);
        let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
            continue;
        };
        let names: &[&str] = match name {
            "git" => &["git"],
            "git-remote-http" => &[
                "git-remote-http",
                "git-remote-https",
                "git-remote-ftp",
                "git-remote-ftps",
            ],
            _ => &[],
        };
        for n in names {
            allowed.push(AllowedExec::Exact {
                path: dir.join(n).display().to_string(),
                argv0: n.to_string(),
            });
        }
    }
    allowed
}

/// Whether this git call may start programs (within git's profile).
pub fn call_may_run_programs(inv: &airlock_proto::tool_invocation::Invocation) -> bool {
    inv.args
        .first()
        .is_some_and(|sub| RUN_PROGRAMS.contains(&sub.as_str()))
}

/// Why this git call cannot run under `profile`, found before it starts: git runs an
/// alias (`!` ones through a shell) for any name that is not one of its commands, and
/// a command it implements as a script or a separate program needs what the profile
/// does not give. `None` for git's own (built-in) commands.
pub fn subcommand_refusal(
    inv: &airlock_proto::tool_invocation::Invocation,
    profile: &airlock_proto::tool_rules::ToolProfile,
) -> Option<String> {
    use airlock_proto::git_options::{git_subcommand_kind, GitSubcommand};
    let sub = inv.args.first()?;
    let name = &profile.name;
    match git_subcommand_kind(sub) {
        Some(GitSubcommand::Builtin) => None,
        None => Some(format!(
            "refused by profile `{name}`: `{sub}` is not a git command, and aliases are not run here (a `!` alias is a shell command); use the command it stands for"
        )),
        Some(GitSubcommand::Script { interpreter }) => Some(format!(
            "refused by profile `{name}`: `git {sub}` is a {interpreter} script in git's exec-path, and the profile runs no {interpreter}"
        )),
        Some(GitSubcommand::Program) => {
            let helper = format!("/git-{sub}");
            let remote_http = sub.starts_with("remote-http") || sub.starts_with("remote-ftp");
            let listed = profile.executes.iter().any(|p| {
                p.ends_with(&helper) || (remote_http && p.ends_with("/git-remote-http"))
            });
            (!listed).then(|| {
                format!(
                    "refused by profile `{name}`: `git {sub}` is a separate program in git's exec-path that the profile does not run"
                )
            })
        }
    }
}

/// The arguments (after `git` and the invocation's global options) that make git print,
/// one per line, for a push: the repository configuration files it reads (`config`,
/// `config.worktree`), its legacy remote directories (`remotes`, `branches`: git reads
/// a remote's URL and push refspecs there when the configuration does not name that
/// remote), and the branch checked out (which picks `branch.<name>.*`). See
/// [`PushProbe::parse`].
pub const PUSH_PROBE_ARGS: [&str; 11] = [
    "rev-parse",
    "--git-path",
    "config",
    "--git-path",
    "config.worktree",
    "--git-path",
    "remotes",
    "--git-path",
    "branches",
    "--symbolic-full-name",
    "HEAD",
];

/// What [`PUSH_PROBE_ARGS`] printed.
#[derive(Debug, PartialEq, Eq)]
pub struct PushProbe {
    /// The repository configuration files, relative to the call's cwd (or absolute).
    pub config_files: [String; 2],
    /// The legacy remote directories.
    pub legacy_remote_dirs: [String; 2],
    /// `refs/heads/<name>`, or `HEAD` when detached.
    pub checked_out: String,
}

impl PushProbe {
    /// Reads git's output: exactly five lines.
    pub fn parse(output: &[u8]) -> Result<PushProbe, String> {
        let text = String::from_utf8_lossy(output);
        let lines: Vec<&str> = text.lines().collect();
        match lines.as_slice() {
            [config, worktree, remotes, branches, head] if !lines.iter().any(|l| l.is_empty()) => {
                Ok(PushProbe {
                    config_files: [config.to_string(), worktree.to_string()],
                    legacy_remote_dirs: [remotes.to_string(), branches.to_string()],
                    checked_out: head.to_string(),
                })
            }
            _ => Err(format!(
                "git rev-parse printed {} lines where 5 were expected; refusing the push",
                lines.len()
            )),
        }
    }
}

/// The arguments (after `git` and the invocation's global options) that make git
/// list the configuration it reads, for [`preflight`].
pub const PREFLIGHT_ARGS: [&str; 5] = ["config", "--list", "--show-scope", "-z", "--includes"];

/// Whether `key` (= `value`) changes what a `git push` sends, or where, beyond its
/// command line: a mirror (every ref, deletions too), configured refspecs (`+` forces,
/// `:ref` deletes), push URLs and URL rewrites (another repository), `matching` (every
/// branch with a counterpart). Set in a file the agent writes, it would turn a push the
/// rules allowed by its arguments (`git push origin`) into one they deny (`--mirror`,
/// `--force`), and the person approving it would see only `git push origin`.
fn key_reshapes_a_push(key: &str, value: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let remote = |suffix: &str| key.starts_with("remote.") && key.ends_with(suffix);
    remote(".mirror")
        || remote(".push")
        || remote(".pushurl")
        || (key.starts_with("url.")
            && (key.ends_with(".insteadof") || key.ends_with(".pushinsteadof")))
        || (key == "push.default" && value.trim().eq_ignore_ascii_case("matching"))
}

/// Whether `key` decides where a `git push` goes: a remote's URL (git pushes to each of
/// its values), or a key that picks the remote when the command line names none.
fn key_picks_a_push_destination(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    (key.starts_with("remote.") && key.ends_with(".url"))
        || key == "remote.pushdefault"
        || (key.starts_with("branch.")
            && (key.ends_with(".pushremote") || key.ends_with(".remote")))
}

/// A remote name a person can read as one: letters, digits, `.`, `_`, `-` (branch
/// names may have `/` too). git allows any subsection, and a remote named
/// `https://github.com/org/repo.git` takes `git push https://github.com/org/repo.git`
/// elsewhere, or one named `origin.url = …` forges a line of the approval.
fn plain_name(name: &str, slash: bool) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || (slash && c == '/'))
}

/// Why a destination entry cannot be shown for what it is: a remote or branch name
/// (in the key, or as the value of a key that names a remote) that is not plain.
/// (`git config --list` prints the section and variable in lower case.)
fn destination_entry_refusal(key: &str, value: &str) -> Option<String> {
    let (name, slash, value_names_remote) = if key == "remote.pushdefault" {
        (None, false, true)
    } else if let Some(rest) = key.strip_prefix("remote.") {
        (rest.rsplit_once('.').map(|(n, _)| n), false, false)
    } else {
        let rest = key.strip_prefix("branch.").unwrap_or(key);
        (rest.rsplit_once('.').map(|(n, _)| n), true, true)
    };
    if let Some(name) = name.filter(|n| !plain_name(n, slash)) {
        return Some(format!(
            "refused by profile `git`: `{}` names a remote or branch `{}` that is not a plain name (letters, digits, `.`, `_`, `-`), so a push's destination could not be shown for what it is; rename it",
            key.escape_debug(),
            name.escape_debug()
        ));
    }
    // `.` is the repository itself (a branch tracking a local one).
    if value_names_remote && value != "." && !plain_name(value, false) {
        return Some(format!(
            "refused by profile `git`: `{}` = `{}` is not a plain remote name (letters, digits, `.`, `_`, `-`), so a push's destination could not be shown for what it is",
            key.escape_debug(),
            value.escape_debug()
        ));
    }
    None
}

/// At most this many entries of git's configuration may decide where a push goes: the
/// person approving it is shown every one.
pub const MAX_PUSH_DESTINATIONS: usize = airlock_proto::MAX_ASK_REACHES;
/// At most this many bytes in one of them.
const MAX_PUSH_DESTINATION_BYTES: usize = airlock_proto::MAX_ASK_REACH_BYTES;

/// Reads git's `config --list --show-scope -z --includes` output and checks it for
/// this call (`pushes`: a `git push`). Refused, with why: a key that names a program
/// set outside the overrides, or, for a push, one that reshapes what it sends
/// ([`key_reshapes_a_push`]). Otherwise, for a push, where it may go: each entry that
/// picks its destination, as `key = value`, in git's order, which the person asked is
/// shown and an approval is bound to (the agent can edit `remote.origin.url`, and
/// `git push origin` alone does not say where that is). Empty for other calls.
pub fn preflight(listing: &[u8], pushes: bool) -> Result<Vec<String>, String> {
    let mut destinations = Vec::new();
    // Entries: `scope NUL key LF value NUL`.
    let mut fields = listing.split(|b| *b == 0);
    while let (Some(scope), Some(entry)) = (fields.next(), fields.next()) {
        let scope = String::from_utf8_lossy(scope);
        let entry = String::from_utf8_lossy(entry);
        let (key, value) = entry.split_once('\n').unwrap_or((&entry, ""));
        // Where a push goes counts whoever set it (the agent's own `-c` too).
        if pushes && key_picks_a_push_destination(key) {
            if let Some(why) = destination_entry_refusal(key, value) {
                return Err(why);
            }
            let shown = format!("{key} = {value}");
            if shown.len() > MAX_PUSH_DESTINATION_BYTES {
                return Err(format!(
                    "refused by profile `git`: `{key}` is over {MAX_PUSH_DESTINATION_BYTES} bytes; a push's destination must fit on the approval"
                ));
            }
            destinations.push(shown);
            if destinations.len() > MAX_PUSH_DESTINATIONS {
                return Err(format!(
                    "refused by profile `git`: more than {MAX_PUSH_DESTINATIONS} configuration entries (remote URLs, branch remotes) decide where this push goes; a person could not check them all"
                ));
            }
        }
        if scope == "command" {
            continue;
        }
        let key_executes = git_config_key_executes(key) || key.starts_with("hook.");
        if key_executes && !neutralised(key) {
            return Err(format!(
                "refused by profile `git`: the repository's {scope} configuration sets `{key}` (= `{}`), which makes git run a program; remove it (programs named by git configuration do not run in the sandbox)",
                value.escape_debug()
            ));
        }
        if pushes && key_reshapes_a_push(key, value) {
            return Err(format!(
                "refused by profile `git`: the repository's {scope} configuration sets `{key}` (= `{}`), which changes what `git push` sends or where; remove it, and name the remote and refspecs on the command line, where the policy decides them",
                value.escape_debug()
            ));
        }
    }
    Ok(destinations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_proto::tool_invocation::Invocation;
    use airlock_proto::tool_rules::ToolProfile;

    #[test]
    fn only_git_commands_run_and_the_refusal_names_the_profile() {
        let profile = ToolProfile {
            name: "git".into(),
            executes: vec!["/usr/lib/git-core/git-remote-http".into()],
            reads: vec![],
        };
        let refusal =
            |argv: &[&str]| subcommand_refusal(&Invocation::parse(argv).unwrap(), &profile);
        for ok in [
            &["git"][..],
            &["git", "status"],
            &["git", "-C", "/w", "commit", "-m", "x"],
            &["git", "remote-https", "origin"],
        ] {
            assert_eq!(refusal(ok), None, "{ok:?}");
        }
        for (argv, says) in [
            (&["git", "st"][..], "not a git command"),
            (&["git", "submodule", "update"], "sh script"),
            (&["git", "daemon"], "separate program"),
        ] {
            let why = refusal(argv).unwrap_or_else(|| panic!("{argv:?} must be refused"));
            assert!(why.contains(says) && why.contains("profile `git`"), "{why}");
        }
    }

    #[test]
    fn only_transport_and_housekeeping_calls_may_run_programs() {
        let may = |argv: &[&str]| call_may_run_programs(&Invocation::parse(argv).unwrap());
        assert!(may(&["git", "fetch", "origin"]));
        assert!(may(&["git", "-C", "/w", "push"]));
        assert!(!may(&["git", "add", "."]));
        assert!(!may(&["git", "commit", "-m", "x"]));
        assert!(!may(&["git", "diff"]));
    }

    fn listing(entries: &[(&str, &str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (scope, key, value) in entries {
            out.extend_from_slice(format!("{scope}\0{key}\n{value}\0").as_bytes());
        }
        out
    }

    #[test]
    fn program_keys_in_repository_files_are_refused_and_named() {
        for key in [
            "filter.x.clean",
            "filter.x.process",
            "diff.external",
            "diff.y.textconv",
            "diff.y.command",
            "merge.z.driver",
            "include.path",
            "includeif.gitdir:/w/.path",
            "credential.https://h.helper",
            "remote.origin.uploadpack",
            "remote.origin.vcs",
            "core.alternaterefscommand",
            "interactive.difffilter",
            "hook.pre-commit.command",
        ] {
            let why = preflight(
                &listing(&[
                    ("local", "user.name", "a"),
                    ("local", key, "/usr/bin/touch"),
                ]),
                false,
            )
            .expect_err(key);
            assert!(why.contains(key) && why.contains("profile `git`"), "{why}");
        }
    }

    #[test]
    fn inert_keys_overridden_keys_and_our_own_overrides_pass() {
        let ok = listing(&[
            ("local", "core.repositoryformatversion", "0"),
            ("local", "remote.origin.url", "https://example.org/r.git"),
            ("local", "core.editor", "vim"),
            ("local", "core.pager", "less"),
            ("local", "pager.log", "less"),
            ("local", "alias.st", "!sh -c id"),
            ("worktree", "credential.helper", "store"),
            ("command", "diff.external", "ours"),
        ]);
        assert_eq!(preflight(&ok, false), Ok(vec![]));
        assert_eq!(
            preflight(&ok, true),
            Ok(vec!["remote.origin.url = https://example.org/r.git".into()])
        );
    }

    #[test]
    fn keys_that_reshape_a_push_are_refused_for_a_push_only() {
        for (key, value) in [
            ("remote.origin.mirror", "true"),
            ("remote.origin.push", "+refs/heads/*:refs/heads/*"),
            ("remote.origin.push", ":refs/heads/main"),
            ("remote.origin.pushurl", "https://example.org/other.git"),
            ("remote.a.b.pushurl", "https://example.org/other.git"),
            (
                "url.https://example.org/other/.insteadof",
                "https://example.org/r/",
            ),
            (
                "url.https://example.org/other/.pushinsteadof",
                "https://example.org/r/",
            ),
            ("push.default", "matching"),
            ("push.default", " Matching"),
        ] {
            let conf = listing(&[
                ("local", "remote.origin.url", "https://example.org/r.git"),
                ("local", key, value),
            ]);
            let why = preflight(&conf, true).expect_err(key);
            assert!(
                why.contains(key) && why.contains("what `git push` sends"),
                "{why}"
            );
            assert!(preflight(&conf, false).is_ok(), "{key}: not a push");
        }
        // The remote's own URL, its fetch refspec, a remote named `push`, a safe
        // default, and our overrides: a push goes on.
        let ok = listing(&[
            ("local", "remote.origin.url", "https://example.org/r.git"),
            (
                "local",
                "remote.origin.fetch",
                "+refs/heads/*:refs/remotes/origin/*",
            ),
            ("local", "remote.push.url", "https://example.org/r.git"),
            ("local", "remote.pushdefault", "origin"),
            ("local", "push.default", "simple"),
            ("command", "remote.origin.push", "+refs/heads/*"),
        ]);
        assert!(preflight(&ok, true).is_ok());
    }

    #[test]
    fn a_push_reports_every_entry_that_picks_where_it_goes() {
        let conf = listing(&[
            ("global", "user.name", "a"),
            ("local", "remote.origin.url", "https://example.org/r.git"),
            // A second URL: git pushes to both.
            (
                "local",
                "remote.origin.url",
                "https://example.org/other.git",
            ),
            (
                "local",
                "remote.origin.fetch",
                "+refs/heads/*:refs/remotes/origin/*",
            ),
            ("local", "remote.Fork.url", "/srv/fork.git"),
            ("local", "remote.pushdefault", "Fork"),
            ("local", "branch.main.remote", "origin"),
            ("local", "branch.main.merge", "refs/heads/main"),
            ("local", "branch.wip.pushremote", "Fork"),
            // The agent's own `-c` counts as well.
            (
                "command",
                "remote.origin.url",
                "https://example.org/cli.git",
            ),
        ]);
        assert_eq!(
            preflight(&conf, true).unwrap(),
            [
                "remote.origin.url = https://example.org/r.git",
                "remote.origin.url = https://example.org/other.git",
                "remote.Fork.url = /srv/fork.git",
                "remote.pushdefault = Fork",
                "branch.main.remote = origin",
                "branch.wip.pushremote = Fork",
                "remote.origin.url = https://example.org/cli.git",
            ]
        );
        assert_eq!(preflight(&conf, false), Ok(vec![]), "not a push");
    }

    #[test]
    fn a_push_names_remotes_and_branches_plainly_or_is_refused() {
        let ok = listing(&[
            ("local", "remote.origin.url", "https://example.org/r.git"),
            ("local", "remote.up-stream_2.url", "/srv/r.git"),
            ("local", "branch.feature/x.remote", "origin"),
            ("local", "branch.local.remote", "."),
            ("local", "remote.pushdefault", "origin"),
        ]);
        assert!(preflight(&ok, true).is_ok(), "{:?}", preflight(&ok, true));
        for (key, value, says) in [
            // A remote named after a URL: `git push <that URL>` goes elsewhere.
            (
                "remote.https://github.com/org/repo.git.url",
                "https://evil.test/x.git",
                "names a remote or branch `https://github.com/org/repo.git`",
            ),
            // A remote whose name forges a line of the approval.
            (
                "remote.origin.url = https://github.com/org/repo.git.url",
                "https://evil.test/x.git",
                "that is not a plain name",
            ),
            (
                "remote.pushdefault",
                "origin.url = https://github.com/org/repo.git",
                "is not a plain remote name",
            ),
            ("branch.main.pushremote", "-x", "is not a plain remote name"),
            (
                "branch.a b.remote",
                "origin",
                "names a remote or branch `a b`",
            ),
        ] {
            let why = preflight(&listing(&[("local", key, value)]), true).expect_err(key);
            assert!(
                why.contains(says) && why.contains("profile `git`"),
                "{key}: {why}"
            );
            assert!(preflight(&listing(&[("local", key, value)]), false).is_ok());
        }
    }

    #[test]
    fn the_push_probe_reads_five_lines() {
        let p = PushProbe::parse(
            b".git/config\n.git/config.worktree\n.git/remotes\n.git/branches\nrefs/heads/main\n",
        )
        .unwrap();
        assert_eq!(p.config_files, [".git/config", ".git/config.worktree"]);
        assert_eq!(p.legacy_remote_dirs, [".git/remotes", ".git/branches"]);
        assert_eq!(p.checked_out, "refs/heads/main");
        for bad in [
            &b""[..],
            b"a\nb\nc\nd\n",
            b"a\nb\n\nd\ne\n",
            b"a\nb\nc\nd\ne\nf\n",
        ] {
            assert!(PushProbe::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_push_whose_destinations_cannot_be_shown_in_full_is_refused() {
        let many: Vec<(String, String)> = (0..=MAX_PUSH_DESTINATIONS)
            .map(|i| (format!("remote.r{i}.url"), format!("/srv/{i}.git")))
            .collect();
        let entries: Vec<(&str, &str, &str)> = many
            .iter()
            .map(|(k, v)| ("local", k.as_str(), v.as_str()))
            .collect();
        let why = preflight(&listing(&entries), true).unwrap_err();
        assert!(why.contains("more than 32"), "{why}");
        assert!(preflight(&listing(&entries[..MAX_PUSH_DESTINATIONS]), true).is_ok());
        let long = "x".repeat(1100);
        let why = preflight(&listing(&[("local", "remote.o.url", &long)]), true).unwrap_err();
        assert!(why.contains("`remote.o.url` is over 1024 bytes"), "{why}");
    }

    #[test]
    fn every_override_reaches_git_in_order() {
        let env = git_environment(Path::new("/r/airlock-shim"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GIT_CONFIG_COUNT"), Some(&*OVERRIDES.len().to_string()));
        assert_eq!(get("GIT_CONFIG_KEY_3"), Some("core.editor"));
        assert_eq!(get("GIT_CONFIG_VALUE_3"), Some("/r/airlock-shim"));
        assert_eq!(get("GIT_EDITOR"), Some("/r/airlock-shim"));
    }
}
