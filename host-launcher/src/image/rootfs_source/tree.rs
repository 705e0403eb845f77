//! The merged root filesystem as a model: path → metadata, contents in a blob store.
//!
//! Paths are kept relative to the root (`etc/passwd`) and shown absolute
//! (`/etc/passwd`). A `BTreeMap` keeps them sorted by bytes, so parents come before
//! their children and a subtree is one range. Hardlinks are files sharing an `inode`:
//! deleting one name keeps the others, as on a filesystem.

use super::{io, SourceError, SourceLimits};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// One path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits, set-id and sticky bits included (`0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// Modification time (seconds since the epoch), as the source had it.
    pub mtime: u64,
    /// The source gave it a `security.capability` xattr. Only flagged (see
    /// [`super::findings`]): no xattr is carried into the result.
    pub capability: bool,
}

/// The kinds of entry a rootfs may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file; its bytes are in the blob store under `sha256`. Names sharing
    /// an `inode` are hardlinks of one another.
    File {
        /// sha256 of the contents (hex).
        sha256: String,
        /// Size in bytes.
        size: u64,
        /// Hardlink group.
        inode: u64,
    },
    /// A symbolic link (never followed while loading).
    Symlink {
        /// Where it points, as written.
        target: String,
    },
    /// A character device (kept only when allowed; under `/dev/` dropped).
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device (same).
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// What every source read so far has cost, against the limits; shared with the
/// readers that count decompressed bytes.
#[derive(Debug)]
pub(crate) struct Budget {
    pub(crate) limits: SourceLimits,
    bytes: AtomicU64,
    entries: AtomicU64,
}

impl Budget {
    /// Counts `n` bytes; false once over the limit.
    pub(crate) fn add_bytes(&self, n: u64) -> bool {
        let total = self.bytes.fetch_add(n, Relaxed).saturating_add(n);
        total <= self.limits.max_bytes
    }

    pub(crate) fn over_bytes(&self) -> bool {
        self.bytes.load(Relaxed) > self.limits.max_bytes
    }

    /// Counts one entry.
    pub(crate) fn add_entry(&self, origin: &str) -> Result<(), SourceError> {
        let n = self.entries.fetch_add(1, Relaxed) + 1;
        if n > self.limits.max_entries {
            return Err(SourceError::TooManyEntries {
                origin: origin.to_string(),
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    pub(crate) fn too_large(&self, origin: &str) -> SourceError {
        SourceError::TooLarge {
            origin: origin.to_string(),
            limit: self.limits.max_bytes,
        }
    }
}

/// A reader counting what passes through it against the budget; past the limit it
/// fails (the caller turns that into [`SourceError::TooLarge`]).
pub(crate) struct Counted<R> {
    pub(crate) inner: R,
    pub(crate) budget: Arc<Budget>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.budget.add_bytes(n as u64) {
            return Err(std::io::Error::other("over the size limit"));
        }
        Ok(n)
    }
}

/// File contents by sha256, one file each (`staging/blobs/<sha256>`).
#[derive(Debug)]
pub(crate) struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub(crate) fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Spools `from` into the store; returns its sha256 and size.
    pub(crate) fn put(&self, from: &mut dyn Read) -> std::io::Result<(String, u64)> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            tmp.write_all(&buf[..n])?;
            size += n as u64;
        }
        let sha = hex::encode(h.finalize());
        let to = self.path(&sha);
        if !to.exists() {
            tmp.persist(&to).map_err(|e| e.error)?;
        }
        Ok((sha, size))
    }
}

/// A merged root filesystem: metadata in memory, contents in the blob store.
#[derive(Debug)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
    pub(crate) store: BlobStore,
    pub(crate) budget: Arc<Budget>,
    next_inode: u64,
    /// Paths the layer being applied wrote, and their parents: what its own whiteouts
    /// and opaque markers leave alone.
    layer_keep: HashSet<String>,
    /// Bytes of path names held in memory (entries and `layer_keep`): a few deep
    /// names must not cost gigabytes.
    held_name_bytes: u64,
    /// The part of `held_name_bytes` that is `layer_keep`'s (freed per layer).
    keep_name_bytes: u64,
}

/// The longest path a rootfs entry may have (the kernel's `PATH_MAX` less its NUL).
pub(crate) const MAX_PATH_BYTES: usize = 4095;
/// The longest path component (the kernel's `NAME_MAX`).
pub(crate) const MAX_COMPONENT_BYTES: usize = 255;
/// The most bytes of path names a tree holds in memory; a real rootfs of a million
/// entries needs about a tenth of it.
pub(crate) const MAX_HELD_NAME_BYTES: u64 = 256 << 20;
/// The most path components one resolution walks, links followed included.
const MAX_RESOLVE_STEPS: usize = 4096;

/// Shows a tree path as an absolute one.
pub(crate) fn shown(path: &str) -> String {
    format!("/{path}")
}

/// Normalizes an entry name as tar does: leading `/` and `./` go, empty and `.`
/// components go; `..`, NUL and empty names are refused. `Ok(None)` is the root.
pub(crate) fn normalize(origin: &str, raw: &[u8]) -> Result<Option<String>, SourceError> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    if raw.contains(&0) {
        return Err(SourceError::BadName {
            origin: origin.into(),
            path: lossy(),
            problem: "contains a NUL byte",
        });
    }
    if raw.is_empty() {
        return Err(SourceError::BadName {
            origin: origin.into(),
            path: String::new(),
            problem: "is empty",
        });
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(SourceError::BadName {
            origin: origin.into(),
            path: lossy(),
            problem: "is not UTF-8 (rename it)",
        });
    };
    // What no Linux filesystem can hold is refused before it costs anything.
    if raw.len() > MAX_PATH_BYTES {
        return Err(SourceError::BadName {
            origin: origin.into(),
            path: lossy().chars().take(120).collect::<String>() + "…",
            problem: "is longer than 4095 bytes (PATH_MAX)",
        });
    }
    if text.split('/').any(|c| c.len() > MAX_COMPONENT_BYTES) {
        return Err(SourceError::BadName {
            origin: origin.into(),
            path: lossy().chars().take(120).collect::<String>() + "…",
            problem: "has a component longer than 255 bytes (NAME_MAX)",
        });
    }
    let mut parts = Vec::new();
    for c in text.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(SourceError::PathEscapes {
                    origin: origin.into(),
                    path: text.to_string(),
                })
            }
            c => parts.push(c),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

impl Tree {
    /// An empty tree whose contents go to `staging/blobs/`.
    pub fn new(staging: &Path, limits: &SourceLimits) -> Result<Tree, SourceError> {
        let dir = staging.join("blobs");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Tree {
            entries: BTreeMap::new(),
            store: BlobStore { dir },
            budget: Arc::new(Budget {
                limits: limits.clone(),
                bytes: AtomicU64::new(0),
                entries: AtomicU64::new(0),
            }),
            next_inode: 0,
            layer_keep: HashSet::new(),
            held_name_bytes: 0,
            keep_name_bytes: 0,
        })
    }

    /// Counts `n` more bytes of names held; refused past [`MAX_HELD_NAME_BYTES`].
    fn hold_name(&mut self, origin: &str, n: usize) -> Result<(), SourceError> {
        self.held_name_bytes += n as u64;
        if self.held_name_bytes > MAX_HELD_NAME_BYTES {
            return Err(SourceError::NamesTooLarge {
                origin: origin.into(),
                limit: MAX_HELD_NAME_BYTES,
            });
        }
        Ok(())
    }

    /// Marks `path` as written by the layer being applied.
    fn keep_in_layer(&mut self, origin: &str, path: &str) -> Result<(), SourceError> {
        if !self.layer_keep.contains(path) {
            self.hold_name(origin, path.len())?;
            self.keep_name_bytes += path.len() as u64;
            self.layer_keep.insert(path.to_string());
        }
        Ok(())
    }

    /// The entry at `path` (absolute or relative to the root; not resolved).
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path.trim_start_matches('/'))
    }

    /// Every entry, sorted by path bytes (relative paths: `etc/passwd`).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// The direct children of a directory (relative path, `""` for the root).
    pub fn children<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a str, &'a Entry)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let start = prefix.clone();
        self.entries
            .range(start..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .filter(move |(p, _)| !p[dir.len()..].trim_start_matches('/').contains('/'))
            .map(|(p, e)| (p.as_str(), e))
    }

    /// How many entries the tree holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where a file's contents are.
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.store.path(sha256)
    }

    /// Follows symlinks inside the tree as the kernel would with the tree as root
    /// (`..` stops at the root, absolute targets start from it). Returns the final
    /// path and its entry; `None` when something on the way is missing, is not a
    /// directory, or the links loop.
    pub fn resolve(&self, path: &str) -> Option<(String, &Entry)> {
        let mut pending: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .rev()
            .map(str::to_string)
            .collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        let mut steps = 0;
        while let Some(c) = pending.pop() {
            steps += 1;
            if steps > MAX_RESOLVE_STEPS {
                return None;
            }
            if c == ".." {
                cur.pop();
                continue;
            }
            cur.push(c);
            let here = cur.join("/");
            let e = self.entries.get(&here)?;
            if let EntryKind::Symlink { target } = &e.kind {
                // The last component is followed too: callers want what it names.
                hops += 1;
                if hops > 40 {
                    return None;
                }
                cur.pop();
                if target.starts_with('/') {
                    cur.clear();
                }
                pending.extend(
                    target
                        .split('/')
                        .filter(|c| !c.is_empty() && *c != ".")
                        .rev()
                        .map(str::to_string),
                );
            } else if !pending.is_empty() && e.kind != EntryKind::Dir {
                return None;
            }
        }
        if cur.is_empty() {
            return None; // the root itself has no entry
        }
        let here = cur.join("/");
        self.entries.get(&here).map(|e| (here, e))
    }

    /// Starts applying a layer: its own whiteouts must leave what it writes alone.
    pub(crate) fn begin_layer(&mut self) {
        self.layer_keep.clear();
        self.held_name_bytes -= self.keep_name_bytes;
        self.keep_name_bytes = 0;
    }

    pub(crate) fn new_inode(&mut self) -> u64 {
        self.next_inode += 1;
        self.next_inode
    }

    /// Checks that every parent of `path` is a directory (creating missing ones as
    /// root's 0755), so nothing is written through a symlink or a file.
    fn make_parents(&mut self, origin: &str, path: &str) -> Result<(), SourceError> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let p = &path[..end + i];
            match self.entries.get(p) {
                None => {
                    // An implied directory is an entry like any other.
                    self.budget.add_entry(origin)?;
                    self.hold_name(origin, p.len())?;
                    self.entries.insert(p.to_string(), implied_dir());
                }
                Some(Entry {
                    kind: EntryKind::Dir,
                    ..
                }) => {}
                Some(Entry {
                    kind: EntryKind::Symlink { target },
                    ..
                }) => {
                    return Err(SourceError::ThroughSymlink {
                        origin: origin.into(),
                        path: shown(path),
                        link: shown(p),
                        target: target.clone(),
                    })
                }
                Some(_) => {
                    return Err(SourceError::NotADirectory {
                        origin: origin.into(),
                        path: shown(path),
                        parent: shown(p),
                    })
                }
            }
            let p = p.to_string();
            self.keep_in_layer(origin, &p)?;
            end += i + 1;
        }
        Ok(())
    }

    /// Puts `entry` at `path` (normalized), replacing what was there; a directory
    /// over a directory only takes the new metadata and keeps the children.
    pub(crate) fn insert(
        &mut self,
        origin: &str,
        path: &str,
        entry: Entry,
    ) -> Result<(), SourceError> {
        // GNU tar would take -1 to mean "leave the owner", and nothing larger fits.
        if entry.uid >= u64::from(u32::MAX) || entry.gid >= u64::from(u32::MAX) {
            return Err(SourceError::BadName {
                origin: origin.into(),
                path: shown(path),
                problem: "has an owner or group id of 4294967295 or more, which no file can have",
            });
        }
        if let EntryKind::Symlink { target } = &entry.kind {
            if target.len() > MAX_PATH_BYTES {
                return Err(SourceError::BadName {
                    origin: origin.into(),
                    path: shown(path),
                    problem: "is a link whose target is longer than 4095 bytes (PATH_MAX)",
                });
            }
        }
        self.make_parents(origin, path)?;
        match self.entries.get_mut(path) {
            Some(old) if old.kind == EntryKind::Dir && entry.kind == EntryKind::Dir => {
                *old = entry;
            }
            Some(_) => {
                self.remove_subtree(path, false);
                self.entries.insert(path.to_string(), entry);
            }
            None => {
                self.hold_name(origin, path.len())?;
                self.entries.insert(path.to_string(), entry);
            }
        }
        self.keep_in_layer(origin, path)?;
        Ok(())
    }

    /// The file a hardlink names, which must exist already as a regular file reached
    /// without a symlink.
    pub(crate) fn hardlink_target(
        &self,
        origin: &str,
        path: &str,
        target: &str,
    ) -> Result<Entry, SourceError> {
        let refuse = |problem: String| SourceError::Hardlink {
            origin: origin.into(),
            path: shown(path),
            target: shown(target),
            problem,
        };
        let mut end = 0;
        while let Some(i) = target[end..].find('/') {
            let p = &target[..end + i];
            match self.entries.get(p).map(|e| &e.kind) {
                Some(EntryKind::Dir) => {}
                Some(EntryKind::Symlink { .. }) => {
                    return Err(refuse(format!(
                        "its target goes through the symlink {}; link to the file itself",
                        shown(p)
                    )))
                }
                _ => return Err(refuse("its target does not exist (yet)".into())),
            }
            end += i + 1;
        }
        match self.entries.get(target) {
            Some(
                e @ Entry {
                    kind: EntryKind::File { .. },
                    ..
                },
            ) => Ok(e.clone()),
            Some(_) => Err(refuse("its target is not a regular file".into())),
            None => Err(refuse(
                "its target does not exist (yet); hardlinks must follow the file they name".into(),
            )),
        }
    }

    /// Removes `path` and everything under it; with `keep_layer`, spares what the
    /// current layer wrote (a whiteout only hides lower layers).
    pub(crate) fn remove_subtree(&mut self, path: &str, keep_layer: bool) {
        self.remove_children(path, keep_layer);
        if !(keep_layer && self.layer_keep.contains(path)) {
            self.entries.remove(path);
        }
    }

    /// Removes everything under `dir` (not `dir` itself); `keep_layer` as above.
    pub(crate) fn remove_children(&mut self, dir: &str, keep_layer: bool) {
        let doomed: Vec<String> = if dir.is_empty() {
            self.entries.keys().cloned().collect()
        } else {
            let start = format!("{dir}/");
            // '0' is the byte after '/': the range is exactly `dir/…`.
            let end = format!("{dir}0");
            self.entries
                .range(start..end)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for k in doomed {
            if !(keep_layer && self.layer_keep.contains(&k)) {
                self.entries.remove(&k);
            }
        }
    }

    /// Checks that the parents of a whiteout's path are plain directories (a
    /// whiteout through a symlink would delete somewhere else).
    pub(crate) fn check_whiteout_parents(
        &self,
        origin: &str,
        path: &str,
    ) -> Result<bool, SourceError> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let p = &path[..end + i];
            match self.entries.get(p).map(|e| &e.kind) {
                None => return Ok(false),
                Some(EntryKind::Dir) => {}
                Some(EntryKind::Symlink { target }) => {
                    return Err(SourceError::ThroughSymlink {
                        origin: origin.into(),
                        path: shown(path),
                        link: shown(p),
                        target: target.clone(),
                    })
                }
                Some(_) => return Ok(false),
            }
            end += i + 1;
        }
        Ok(true)
    }

    /// Reads a small file of the tree (following symlinks), at most `max` bytes.
    pub fn read_small(&self, path: &str, max: u64) -> Option<Vec<u8>> {
        let (_, e) = self.resolve(path)?;
        let EntryKind::File { sha256, size, .. } = &e.kind else {
            return None;
        };
        if *size > max {
            return None;
        }
        std::fs::read(self.blob_path(sha256)).ok()
    }
}

/// A directory nobody described: created for its children.
pub(crate) fn implied_dir() -> Entry {
    Entry {
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        capability: false,
    }
}
