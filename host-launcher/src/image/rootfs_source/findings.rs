//! What a rootfs may carry only when someone says so: set-id files, file
//! capabilities, devices outside `/dev/`, and owners the tree's own `/etc/passwd` and
//! `/etc/group` do not name. All are found at once and refused in one error listing
//! every path with the `--allow KIND:PATH` that would accept it, so the source is fixed
//! in one go. Accepted findings stay in the tree and are reported.
//!
//! Capabilities are only flagged: no xattr is carried into the packed result, so an
//! allowed file loses its capability.

use super::tree::{shown, EntryKind, Tree};
use super::SourceError;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// `/etc/passwd` and `/etc/group` larger than this are not read (all owners unknown).
const MAX_ID_FILE: u64 = 16 << 20;

/// What kind of thing was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A regular file with the set-uid or set-gid bit.
    Setid,
    /// A file with a `security.capability` xattr.
    Capability,
    /// A device node outside `/dev/`.
    Device,
    /// An owner or group the tree's own account files do not name.
    Owner,
}

impl FindingKind {
    /// The prefix of its `--allow` flag.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Setid => "setid",
            FindingKind::Capability => "capability",
            FindingKind::Device => "device",
            FindingKind::Owner => "owner",
        }
    }

    const ALL: [FindingKind; 4] = [
        FindingKind::Setid,
        FindingKind::Capability,
        FindingKind::Device,
        FindingKind::Owner,
    ];
}

/// One thing found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// Its kind.
    pub kind: FindingKind,
    /// Absolute path in the tree.
    pub path: String,
    /// What exactly (mode, device numbers, ids).
    pub detail: String,
}

/// The `--allow KIND:GLOB` flags (globs are absolute; `*` stays within a component,
/// `**` crosses components).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    sets: Vec<(FindingKind, GlobSet)>,
}

impl AllowList {
    /// Parses `setid:PATH`, `capability:PATH`, `device:PATH`, `owner:PATH`.
    pub fn parse(flags: &[String]) -> Result<AllowList, SourceError> {
        let mut builders: Vec<(FindingKind, GlobSetBuilder)> = FindingKind::ALL
            .iter()
            .map(|k| (*k, GlobSetBuilder::new()))
            .collect();
        for flag in flags {
            let bad = |problem: String| SourceError::Allow {
                flag: flag.clone(),
                problem,
            };
            let (kind, pattern) = flag.split_once(':').ok_or_else(|| {
                bad("expected KIND:PATH (setid, capability, device, owner)".into())
            })?;
            let k = FindingKind::ALL
                .into_iter()
                .find(|k| k.as_str() == kind)
                .ok_or_else(|| {
                    bad(format!(
                        "unknown kind `{kind}` (setid, capability, device, owner)"
                    ))
                })?;
            if !pattern.starts_with('/') {
                return Err(bad("the path must be absolute".into()));
            }
            let glob: Glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| bad(e.to_string()))?;
            builders
                .iter_mut()
                .find(|(b, _)| *b == k)
                .expect("every kind has a builder")
                .1
                .add(glob);
        }
        let sets = builders
            .into_iter()
            .map(|(k, b)| {
                b.build().map(|s| (k, s)).map_err(|e| SourceError::Allow {
                    flag: k.as_str().into(),
                    problem: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AllowList { sets })
    }

    /// Whether a flag accepts the finding.
    pub fn allows(&self, f: &Finding) -> bool {
        self.sets
            .iter()
            .any(|(k, s)| *k == f.kind && s.is_match(&f.path))
    }
}

/// The ids named in column 3 of an account file (`name:x:ID:…`).
fn ids(tree: &Tree, path: &str) -> HashSet<u64> {
    let mut ids: HashSet<u64> = HashSet::from([0]);
    if let Some(text) = tree.read_small(path, MAX_ID_FILE) {
        for line in String::from_utf8_lossy(&text).lines() {
            if let Some(id) = line.split(':').nth(2).and_then(|i| i.trim().parse().ok()) {
                ids.insert(id);
            }
        }
    }
    ids
}

/// Every finding in the tree; an error listing those no flag allows.
pub fn check(tree: &Tree, allow: &AllowList) -> Result<Vec<Finding>, SourceError> {
    let (uids, gids) = (ids(tree, "etc/passwd"), ids(tree, "etc/group"));
    let mut found = Vec::new();
    for (path, e) in tree.entries() {
        let mut add = |kind, detail: String| {
            found.push(Finding {
                kind,
                path: shown(path),
                detail,
            })
        };
        match &e.kind {
            EntryKind::File { .. } if e.mode & 0o6000 != 0 => add(
                FindingKind::Setid,
                format!(
                    "{} file (mode {:04o})",
                    match e.mode & 0o6000 {
                        0o4000 => "set-uid",
                        0o2000 => "set-gid",
                        _ => "set-uid and set-gid",
                    },
                    e.mode
                ),
            ),
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                add(
                    FindingKind::Device,
                    format!("device {major}:{minor} outside /dev/"),
                )
            }
            _ => {}
        }
        if e.capability {
            add(
                FindingKind::Capability,
                "file capabilities (security.capability; dropped from the image)".into(),
            );
        }
        let mut unknown = Vec::new();
        if !uids.contains(&e.uid) {
            unknown.push(format!("uid {} is not in /etc/passwd", e.uid));
        }
        if !gids.contains(&e.gid) {
            unknown.push(format!("gid {} is not in /etc/group", e.gid));
        }
        if !unknown.is_empty() {
            add(FindingKind::Owner, unknown.join(", "));
        }
    }
    let refused: Vec<Finding> = found.iter().filter(|f| !allow.allows(f)).cloned().collect();
    if !refused.is_empty() {
        return Err(SourceError::Findings(refused));
    }
    Ok(found)
}

/// The one error for every finding nobody allowed.
pub(crate) fn refusal_message(findings: &[Finding]) -> String {
    let mut m = format!(
        "the rootfs holds {} thing(s) it may only hold when allowed; fix the source, or accept each with the flag shown:",
        findings.len()
    );
    for f in findings {
        // The path as data: control characters escaped (a name must not repaint the
        // terminal), and the flag's glob matching exactly this path, shell-quoted, so
        // a file named `/usr/bin/*` cannot make the suggestion allow its neighbours.
        let flag = format!("{}:{}", f.kind.as_str(), globset::escape(&f.path));
        m.push_str(&format!(
            "\n  {}: {} (--allow {})",
            printable(&f.path),
            printable(&f.detail),
            printable(&shell_words::quote(&flag))
        ));
    }
    m
}

/// `s` with its control characters written as `\u{..}`: what a source names is
/// shown, never acted on by the terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}
