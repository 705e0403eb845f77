//! The image contract: what a rootfs must not hold (the enforcer's own places), what it
//! must (tools, and a loader and libc for dynamically linked ones), and what is only
//! worth saying. The enforcer checks [`FORBIDDEN_PATHS`] again at boot.

use super::elf;
use super::inventory::TOOL_DIRS;
use super::tree::{EntryKind, Tree};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Paths the enforcer owns in every image: a rootfs holding anything there (even
/// through a symlink) is refused. One list with the enforcer's boot check.
pub const FORBIDDEN_PATHS: [&str; 3] = airlock_proto::image_layout::ROOTFS_RESERVED;

/// Where a libc is looked for (by file name).
pub(crate) const LIB_DIRS: [&str; 7] = [
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/local/lib",
];
/// File names of a libc (glibc, musl).
pub(crate) const LIBC_NAMES: [&str; 3] =
    ["libc.so.6", "libc.musl-x86_64.so.1", "ld-musl-x86_64.so.1"];
/// Init systems that are present but never run.
const INITS: [&str; 3] = [
    "/sbin/init",
    "/lib/systemd/systemd",
    "/usr/lib/systemd/systemd",
];

/// Why a rootfs breaks the contract.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// It holds a path the enforcer owns.
    #[error("the rootfs holds {path}, where the enforcer puts its own files at boot; remove it from the source")]
    Forbidden {
        /// The path.
        path: String,
    },
    /// A dynamically linked tool's loader is missing.
    #[error("{tool} is dynamically linked against {loader}, which the rootfs does not have; add the loader (and libc) or link the tool statically")]
    MissingLoader {
        /// The tool.
        tool: String,
        /// Its PT_INTERP.
        loader: String,
    },
    /// Dynamically linked tools but no libc.
    #[error("{tool} is dynamically linked but the rootfs has no libc ({}) in {}; add it or link the tool statically", LIBC_NAMES.join(", "), LIB_DIRS.join(", "))]
    MissingLibc {
        /// One such tool.
        tool: String,
    },
    /// Where the enforcer mounts a filesystem is not a directory.
    #[error("the rootfs has {path} as something other than a directory: the enforcer mounts a filesystem there at boot; make it a directory, or leave it out")]
    NotAMountPoint {
        /// The path.
        path: String,
    },
    /// A directory the enforcer needs is missing (or is not a real directory).
    #[error("the rootfs has no directory {path} (a symlink does not count): the enforcer carries its key, ids and shims into it at boot; add it to the source")]
    MissingDir {
        /// The directory.
        path: String,
    },
    /// No tool directory at all.
    #[error("the rootfs has none of {}: an agent would have nothing to run", TOOL_DIRS.join(", "))]
    NoToolDirs,
}

/// What the contract check found worth saying.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractReport {
    /// The tool directories the rootfs has.
    pub tool_dirs: Vec<String>,
    /// The loaders its dynamically linked tools ask for (all present).
    pub loaders: Vec<String>,
    /// Where its libc is, if it has one.
    pub libc: Option<String>,
    /// Remarks that are not refusals (no `/bin/sh`, an init that never runs, …).
    pub notes: Vec<String>,
}

/// The executables of the tree's tool directories, as (shown path, resolved path).
pub(crate) fn tool_files(tree: &Tree) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs_seen = BTreeSet::new();
    for dir in TOOL_DIRS {
        let Some((real, e)) = tree.resolve(dir) else {
            continue;
        };
        if e.kind != EntryKind::Dir || !dirs_seen.insert(real.clone()) {
            continue;
        }
        for (child, _) in tree.children(&real) {
            let name = child.rsplit('/').next().unwrap_or(child);
            if let Some((file, e)) = tree.resolve(child) {
                if matches!(e.kind, EntryKind::File { .. }) && e.mode & 0o111 != 0 {
                    out.push((format!("{dir}/{name}"), file));
                }
            }
        }
    }
    out
}

/// Checks the contract; see [`ContractError`] for what is refused.
pub fn check_contract(tree: &Tree) -> Result<ContractReport, ContractError> {
    for path in FORBIDDEN_PATHS {
        if tree.get(path).is_some() || tree.resolve(path).is_some() {
            return Err(ContractError::Forbidden { path: path.into() });
        }
    }
    for dir in airlock_proto::image_layout::ROOTFS_MOUNT_POINTS {
        if matches!(tree.get(dir), Some(e) if e.kind != EntryKind::Dir) {
            return Err(ContractError::NotAMountPoint { path: dir.into() });
        }
    }
    for dir in airlock_proto::image_layout::ROOTFS_REQUIRED_DIRS {
        if !matches!(tree.get(dir), Some(e) if e.kind == EntryKind::Dir) {
            return Err(ContractError::MissingDir { path: dir.into() });
        }
    }
    let mut report = ContractReport::default();
    for dir in TOOL_DIRS {
        if matches!(tree.resolve(dir), Some((_, e)) if e.kind == EntryKind::Dir) {
            report.tool_dirs.push(dir.to_string());
        }
    }
    if report.tool_dirs.is_empty() {
        return Err(ContractError::NoToolDirs);
    }
    report.libc = LIB_DIRS.iter().find_map(|d| {
        LIBC_NAMES.iter().find_map(|n| {
            let p = format!("{d}/{n}");
            matches!(tree.resolve(&p), Some((_, e)) if matches!(e.kind, EntryKind::File { .. }))
                .then_some(p)
        })
    });
    let mut loaders = BTreeSet::new();
    let mut dynamic_tool = None;
    for (tool, real) in tool_files(tree) {
        let Some(EntryKind::File { sha256, .. }) = tree.get(&real).map(|e| &e.kind) else {
            continue;
        };
        let Some(loader) = elf::interpreter(&tree.blob_path(sha256)) else {
            continue;
        };
        if !matches!(tree.resolve(&loader), Some((_, e)) if matches!(e.kind, EntryKind::File { .. }))
        {
            return Err(ContractError::MissingLoader { tool, loader });
        }
        dynamic_tool.get_or_insert(tool);
        loaders.insert(loader);
    }
    report.loaders = loaders.into_iter().collect();
    // musl's loader is its libc.
    let musl = report.loaders.iter().any(|l| l.contains("ld-musl"));
    if let Some(tool) = dynamic_tool {
        if report.libc.is_none() && !musl {
            return Err(ContractError::MissingLibc { tool });
        }
    }
    if !matches!(tree.resolve("/bin/sh"), Some((_, e)) if matches!(e.kind, EntryKind::File { .. }))
    {
        report
            .notes
            .push("no /bin/sh: fine unless a policy grants `sh` or a tool runs scripts".into());
    }
    for init in INITS {
        if tree.resolve(init).is_some() {
            report.notes.push(format!(
                "{init} is present but never runs: the enforcer is PID 1"
            ));
        }
    }
    if !matches!(tree.resolve("/workspace"), Some((_, e)) if e.kind == EntryKind::Dir) {
        report.notes.push(
            "no /workspace directory: a mount there creates it; without one, give plans a `cwd` the rootfs has".into(),
        );
    }
    Ok(report)
}
