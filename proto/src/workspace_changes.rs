//! The changes a session made to a copy-on-write workspace, as the host's merge-back
//! gate reads them.
//!
//! A writable grant is an overlay: the host directory is the read-only lower layer and
//! everything the agent writes lands in a disposable upper layer. [`walk_upper_layer`]
//! reads that upper layer the way overlayfs records it and turns it into a stream of
//! [`ChangeEvent`]s: the enforcer sends them over `Enforcer.Changes` in a VM, the
//! launcher reads them itself in process isolation. The stream is the *agent's* data:
//! the gate on the host checks every entry; the walker only reports faithfully.
//!
//! Overlay conventions read here (the overlay is mounted with `redirect_dir=off`,
//! `metacopy=off`, `index=off`, so there are no others):
//! - a character device 0:0 is a *whiteout*: the lower entry was deleted;
//! - a directory with `trusted.overlay.opaque = "y"` *replaces* the lower directory
//!   (it was deleted and made again): nothing of the lower one shows through;
//! - renames appear as what they are without `redirect_dir`: the new name as a full
//!   copy, the old name as a whiteout.

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

/// What one entry of the upper layer means for the host tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A directory that is new or whose metadata changed; lower entries show through.
    Dir,
    /// A regular file, new or modified: its whole content follows.
    File,
    /// A symbolic link, new or replaced.
    Symlink,
    /// The host entry (file, link or whole directory) was deleted.
    Delete,
    /// A directory that replaces the host one entirely (lower entries are deleted).
    OpaqueDir,
    /// Something the host tree must never receive (FIFO, socket, device, a name that
    /// is not UTF-8); [`ChangeEntry::special`] says what.
    Special,
}

/// One entry of a write layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEntry {
    /// Tag of the mount the entry belongs to.
    pub mount: String,
    /// Path relative to the grant's root, `/`-separated, no `.`/`..`/empty components.
    pub path: String,
    /// What it is.
    pub kind: ChangeKind,
    /// Permission bits as found, set-id and sticky included (`0o7777`).
    pub mode: u32,
    /// [`ChangeKind::File`]: how many bytes of content follow.
    pub size: u64,
    /// [`ChangeKind::Symlink`]: the link's target, as written.
    pub symlink_target: String,
    /// [`ChangeKind::Special`]: what the entry is.
    pub special: String,
}

/// One step of the change stream: an entry, then (files only) its content in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    /// The next entry; parents always come before their children.
    Entry(ChangeEntry),
    /// Content of the last [`ChangeKind::File`] entry.
    Data(Vec<u8>),
}

/// Why the upper layer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A system call on an entry failed.
    #[error("reading the write layer of mount `{mount}` at `{path}`: {source}")]
    Io {
        /// Mount tag.
        mount: String,
        /// Path relative to the grant.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// An overlay feature this walker does not read (the overlay is mounted without it).
    #[error("the write layer of mount `{mount}` has `{xattr}` at `{path}`: the overlay was mounted with features the merge does not read")]
    Unsupported {
        /// Mount tag.
        mount: String,
        /// Path relative to the grant.
        path: String,
        /// The overlay attribute found.
        xattr: String,
    },
    /// Directories nested deeper than [`MAX_DEPTH`]: the walk would exhaust its stack
    /// (and no host path could hold them), so the merge fails as a whole.
    #[error("the write layer of mount `{mount}` nests directories deeper than {MAX_DEPTH} levels at `{path}`; nothing of it is merged")]
    TooDeep {
        /// Mount tag.
        mount: String,
        /// The first directory past the limit.
        path: String,
    },
    /// The consumer gave up (its own error is what matters).
    #[error("the change stream's reader stopped: {0}")]
    Stopped(String),
}

/// Bytes per inode a workspace scratch allows: `disk_mib` MiB gives `disk_mib * 256`
/// inodes, so a flood of empty files meets a bound as a flood of bytes does.
const BYTES_PER_INODE: u64 = 4096;

/// Inodes (files, directories, links) the write layers of a session may hold in total:
/// the scratch tmpfs's `nr_inodes` and the merge gate's entry quota (at least 64, for the
/// layers' own directories).
pub fn scratch_inodes(disk_mib: u64) -> u64 {
    ((disk_mib << 20) / BYTES_PER_INODE).max(64)
}

/// Deepest directory nesting a write layer may have. The walk recurses once per level,
/// so an agent must not be able to choose the depth (its stack is the enforcer's, or the
/// launcher's); real trees stay far below this.
pub const MAX_DEPTH: usize = 256;

/// Size of [`ChangeEvent::Data`] pieces.
pub const CHANGE_CHUNK: usize = 64 * 1024;

/// Overlay's private attributes in the default (`trusted.`) namespace. `origin`,
/// `impure` and `nlink` only describe where a copied-up entry came from; `redirect` and
/// `metacopy` would change what an entry *means* (a renamed directory, a file whose data
/// is still below) and are refused, though the mount options rule them out.
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
const UNREAD_XATTRS: [&CStr; 2] = [c"trusted.overlay.redirect", c"trusted.overlay.metacopy"];

fn openat_no_follow(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: openat on a live directory descriptor with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The value of xattr `name` on `fd` (`None` when absent).
fn xattr(fd: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; 256];
    // SAFETY: fgetxattr into a live buffer of the given length.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(buf[..n as usize].to_vec()))
}

/// Metadata of `name` in `dir`, not following a symlink (an `O_PATH` open: a FIFO is
/// never opened for reading, so it cannot block the walk).
fn metadata_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<std::fs::Metadata> {
    let fd = openat_no_follow(dir, name, libc::O_PATH)?;
    std::fs::File::from(fd).metadata()
}

struct Walk<'a> {
    mount: &'a str,
    sink: &'a mut dyn FnMut(ChangeEvent) -> Result<(), String>,
}

impl Walk<'_> {
    fn io(&self, path: &str) -> impl FnOnce(io::Error) -> WalkError + '_ {
        let (mount, path) = (self.mount.to_string(), path.to_string());
        move |source| WalkError::Io {
            mount,
            path,
            source,
        }
    }

    fn emit(&mut self, e: ChangeEvent) -> Result<(), WalkError> {
        (self.sink)(e).map_err(WalkError::Stopped)
    }

    fn entry(&self, path: &str, kind: ChangeKind, mode: u32) -> ChangeEntry {
        ChangeEntry {
            mount: self.mount.to_string(),
            path: path.to_string(),
            kind,
            mode: mode & 0o7777,
            size: 0,
            symlink_target: String::new(),
            special: String::new(),
        }
    }

    fn check_unread_xattrs(&self, fd: BorrowedFd<'_>, path: &str) -> Result<(), WalkError> {
        for name in UNREAD_XATTRS {
            if xattr(fd, name).map_err(self.io(path))?.is_some() {
                return Err(WalkError::Unsupported {
                    mount: self.mount.to_string(),
                    path: path.to_string(),
                    xattr: name.to_string_lossy().into_owned(),
                });
            }
        }
        Ok(())
    }

    /// Every entry below `root`, names sorted, each directory before its children. An
    /// explicit stack, not recursion: the agent chooses the depth.
    fn tree(&mut self, root: OwnedFd) -> Result<(), WalkError> {
        let names = self.sorted_names(&root, "")?;
        let mut stack = vec![(root, String::new(), names.into_iter())];
        while let Some((dir, prefix, names)) = stack.last_mut() {
            let Some(name) = names.next() else {
                stack.pop();
                continue;
            };
            if let Some((sub, path)) = self.one(dir, prefix, &name)? {
                let names = self.sorted_names(&sub, &path)?;
                stack.push((sub, path, names.into_iter()));
            }
        }
        Ok(())
    }

    fn sorted_names(
        &self,
        dir: &OwnedFd,
        path: &str,
    ) -> Result<Vec<std::ffi::OsString>, WalkError> {
        let mut names = list_dir(dir).map_err(self.io(path))?;
        names.sort();
        Ok(names)
    }

    /// Reports the entry `name` of `dir` (at `prefix`); a directory comes back, opened,
    /// for the walk to descend into.
    fn one(
        &mut self,
        dir: &OwnedFd,
        prefix: &str,
        name: &std::ffi::OsString,
    ) -> Result<Option<(OwnedFd, String)>, WalkError> {
        {
            let shown = String::from_utf8_lossy(name.as_bytes()).into_owned();
            let path = if prefix.is_empty() {
                shown.clone()
            } else {
                format!("{prefix}/{shown}")
            };
            let cname = CString::new(name.as_bytes()).expect("directory entries have no NUL");
            let meta = metadata_at(dir.as_fd(), &cname).map_err(self.io(&path))?;
            let ft = meta.file_type();
            let mode = meta.permissions().mode();
            if std::str::from_utf8(name.as_bytes()).is_err() {
                let mut e = self.entry(&path, ChangeKind::Special, mode);
                e.special = "a name that is not UTF-8".into();
                self.emit(ChangeEvent::Entry(e))?;
                return Ok(None);
            }
            if ft.is_dir() {
                let sub = openat_no_follow(dir.as_fd(), &cname, libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(self.io(&path))?;
                if path.matches('/').count() >= MAX_DEPTH {
                    return Err(WalkError::TooDeep {
                        mount: self.mount.to_string(),
                        path,
                    });
                }
                self.check_unread_xattrs(sub.as_fd(), &path)?;
                let opaque = xattr(sub.as_fd(), OPAQUE_XATTR).map_err(self.io(&path))?;
                let kind = match opaque.as_deref() {
                    Some(b"y") => ChangeKind::OpaqueDir,
                    None => ChangeKind::Dir,
                    Some(_) => {
                        return Err(WalkError::Unsupported {
                            mount: self.mount.to_string(),
                            path,
                            xattr: "trusted.overlay.opaque (not \"y\")".into(),
                        })
                    }
                };
                self.emit(ChangeEvent::Entry(self.entry(&path, kind, mode)))?;
                return Ok(Some((sub, path)));
            } else if ft.is_file() {
                let f = openat_no_follow(dir.as_fd(), &cname, libc::O_RDONLY | libc::O_NONBLOCK)
                    .map_err(self.io(&path))?;
                self.check_unread_xattrs(f.as_fd(), &path)?;
                self.file(std::fs::File::from(f), &path)?;
            } else if ft.is_symlink() {
                // SAFETY: readlinkat into a live buffer of the given length.
                let mut buf = vec![0u8; libc::PATH_MAX as usize];
                let n = unsafe {
                    libc::readlinkat(
                        dir.as_raw_fd(),
                        cname.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n < 0 {
                    return Err(self.io(&path)(io::Error::last_os_error()));
                }
                buf.truncate(n as usize);
                match String::from_utf8(buf) {
                    Ok(target) => {
                        let mut e = self.entry(&path, ChangeKind::Symlink, 0o777);
                        e.symlink_target = target;
                        self.emit(ChangeEvent::Entry(e))?;
                    }
                    Err(_) => {
                        let mut e = self.entry(&path, ChangeKind::Special, 0o777);
                        e.special = "a symbolic link whose target is not UTF-8".into();
                        self.emit(ChangeEvent::Entry(e))?;
                    }
                }
            } else if ft.is_char_device() && meta.rdev() == 0 {
                self.emit(ChangeEvent::Entry(self.entry(&path, ChangeKind::Delete, 0)))?;
            } else {
                let what = if ft.is_fifo() {
                    "a FIFO".to_string()
                } else if ft.is_socket() {
                    "a socket".to_string()
                } else {
                    let kind = if ft.is_char_device() {
                        "character"
                    } else {
                        "block"
                    };
                    let (ma, mi) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
                    format!("a {kind} device {ma}:{mi}")
                };
                let mut e = self.entry(&path, ChangeKind::Special, mode);
                e.special = what;
                self.emit(ChangeEvent::Entry(e))?;
            }
        }
        Ok(None)
    }

    fn file(&mut self, mut f: std::fs::File, path: &str) -> Result<(), WalkError> {
        let meta = f.metadata().map_err(self.io(path))?;
        let mut e = self.entry(path, ChangeKind::File, meta.permissions().mode());
        e.size = meta.len();
        self.emit(ChangeEvent::Entry(e))?;
        let mut left = meta.len();
        let mut buf = vec![0u8; CHANGE_CHUNK];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = f.read(&mut buf[..want]).map_err(self.io(path))?;
            if n == 0 {
                return Err(self.io(path)(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was read",
                )));
            }
            left -= n as u64;
            self.emit(ChangeEvent::Data(buf[..n].to_vec()))?;
        }
        Ok(())
    }
}

/// Names in a directory (without `.` and `..`), read through its descriptor.
fn list_dir(dir: &OwnedFd) -> io::Result<Vec<std::ffi::OsString>> {
    // `/proc/self/fd/N` of a directory opened O_NOFOLLOW reads that directory, whatever
    // its path has become since.
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        out.push(e?.file_name());
    }
    Ok(out)
}

/// Reads the upper layer open at `upper` (a directory descriptor) for mount `mount` and
/// hands each event to `sink`, parents first, names sorted. A `sink` error stops the
/// walk ([`WalkError::Stopped`]).
pub fn walk_upper_layer(
    upper: &OwnedFd,
    mount: &str,
    sink: &mut dyn FnMut(ChangeEvent) -> Result<(), String>,
) -> Result<(), WalkError> {
    let root = upper.try_clone().map_err(|source| WalkError::Io {
        mount: mount.to_string(),
        path: String::new(),
        source,
    })?;
    let mut w = Walk { mount, sink };
    w.tree(root)
}

/// Opens `path` as a directory without following a final symlink (for the walker).
pub fn open_layer_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(dir: &std::path::Path) -> Vec<ChangeEvent> {
        let fd = open_layer_dir(dir).unwrap();
        let mut out = Vec::new();
        walk_upper_layer(&fd, "m0", &mut |e| {
            out.push(e);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn files_dirs_links_and_specials_come_out_parents_first_with_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir(p.join("b")).unwrap();
        std::fs::write(p.join("b/x.txt"), vec![7u8; CHANGE_CHUNK + 10]).unwrap();
        std::fs::set_permissions(p.join("b/x.txt"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::os::unix::fs::symlink("b/x.txt", p.join("a-link")).unwrap();
        let fifo = CString::new(p.join("c-fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let ev = walk(p);
        let entries: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                ChangeEvent::Entry(e) => Some((e.path.as_str(), e.kind, e.mode)),
                _ => None,
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("a-link", ChangeKind::Symlink, 0o777),
                ("b", ChangeKind::Dir, 0o755),
                ("b/x.txt", ChangeKind::File, 0o4755),
                ("c-fifo", ChangeKind::Special, 0o644),
            ]
        );
        let data: usize = ev
            .iter()
            .map(|e| match e {
                ChangeEvent::Data(d) => d.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(data, CHANGE_CHUNK + 10);
        let ChangeEvent::Entry(fifo) = ev.last().unwrap() else {
            panic!()
        };
        assert_eq!(fifo.special, "a FIFO");
    }

    #[test]
    fn nesting_past_the_limit_fails_the_walk_and_just_under_it_does_not() {
        let d = tempfile::tempdir().unwrap();
        // Made relative to a descriptor, level by level: the path grows past PATH_MAX.
        let mut at = open_layer_dir(d.path()).unwrap();
        for _ in 0..MAX_DEPTH {
            // SAFETY: mkdirat/openat on a live directory descriptor, NUL-terminated name.
            let fd = unsafe {
                assert_eq!(libc::mkdirat(at.as_raw_fd(), c"d".as_ptr(), 0o755), 0);
                libc::openat(
                    at.as_raw_fd(),
                    c"d".as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )
            };
            assert!(fd >= 0);
            // SAFETY: openat returned a new descriptor we own.
            at = unsafe { OwnedFd::from_raw_fd(fd) };
        }
        let fd = open_layer_dir(d.path()).unwrap();
        let mut n = 0;
        walk_upper_layer(&fd, "m0", &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, MAX_DEPTH, "every level just under the limit is walked");
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::mkdirat(at.as_raw_fd(), c"d".as_ptr(), 0o755) },
            0
        );
        let e = walk_upper_layer(&fd, "m0", &mut |_| Ok(())).unwrap_err();
        assert!(matches!(e, WalkError::TooDeep { .. }), "{e}");
    }
}
