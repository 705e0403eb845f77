//! A directory source, walked with `lstat`: symlinks are recorded, never followed;
//! hardlinks are found by `(dev, ino)`; sockets and FIFOs are refused.

use super::tree::{shown, Entry, EntryKind, Tree};
use super::{io, SourceError};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

impl Tree {
    /// Loads a directory tree (its root's own metadata is not kept).
    pub fn load_directory(&mut self, root: &Path) -> Result<(), SourceError> {
        let origin = root.display().to_string();
        let mut seen: HashMap<(u64, u64), String> = HashMap::new();
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let mut names: Vec<_> = std::fs::read_dir(&dir)
                .map_err(io(&dir))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(io(&dir))?;
            names.sort();
            for name in names {
                let host = dir.join(&name);
                let raw = name.as_bytes();
                let path = match super::tree::normalize(&origin, raw)? {
                    Some(n) if !rel.is_empty() => format!("{rel}/{n}"),
                    Some(n) => n,
                    None => continue,
                };
                self.budget.add_entry(&origin)?;
                if raw.starts_with(b".wh.") {
                    return Err(SourceError::WhiteoutName {
                        origin: origin.clone(),
                        path: shown(&path),
                    });
                }
                let m = std::fs::symlink_metadata(&host).map_err(io(&host))?;
                let t = m.file_type();
                let entry = |kind: EntryKind| Entry {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid().into(),
                    gid: m.gid().into(),
                    mtime: m.mtime().max(0) as u64,
                    capability: false,
                };
                let in_dev = path.starts_with("dev/");
                let new = if t.is_dir() {
                    stack.push((host.clone(), path.clone()));
                    entry(EntryKind::Dir)
                } else if t.is_symlink() {
                    let target = std::fs::read_link(&host).map_err(io(&host))?;
                    let target = target.as_os_str().as_bytes();
                    let target =
                        String::from_utf8(target.to_vec()).map_err(|_| SourceError::BadName {
                            origin: origin.clone(),
                            path: shown(&path),
                            problem: "is a link whose target is not UTF-8",
                        })?;
                    entry(EntryKind::Symlink { target })
                } else if t.is_file() {
                    if m.nlink() > 1 {
                        if let Some(first) = seen.get(&(m.dev(), m.ino())) {
                            let linked = self.hardlink_target(&origin, &path, first)?;
                            self.insert(&origin, &path, linked)?;
                            continue;
                        }
                        seen.insert((m.dev(), m.ino()), path.clone());
                    }
                    if !self.budget.add_bytes(m.len()) {
                        return Err(self.budget.too_large(&origin));
                    }
                    // O_NOFOLLOW: a file swapped for a symlink since the lstat fails.
                    let mut f = std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&host)
                        .map_err(io(&host))?;
                    let (sha256, size) = self.store.put(&mut f).map_err(io(&host))?;
                    let inode = self.new_inode();
                    let mut e = entry(EntryKind::File {
                        sha256,
                        size,
                        inode,
                    });
                    e.capability = has_capability(&host).map_err(io(&host))?;
                    e
                } else if t.is_char_device() || t.is_block_device() {
                    if in_dev {
                        continue; // the enforcer mounts devtmpfs on /dev
                    }
                    let (major, minor) = (libc::major(m.rdev()), libc::minor(m.rdev()));
                    entry(if t.is_char_device() {
                        EntryKind::CharDevice { major, minor }
                    } else {
                        EntryKind::BlockDevice { major, minor }
                    })
                } else if in_dev {
                    continue;
                } else {
                    return Err(SourceError::Unsupported {
                        origin: origin.clone(),
                        path: shown(&path),
                        what: if t.is_socket() { "socket" } else { "FIFO" }.into(),
                        hint: "a rootfs is read-only: create it at run time instead",
                    });
                };
                self.insert(&origin, &path, new)?;
            }
        }
        Ok(())
    }
}

/// Whether a file carries a `security.capability` xattr. Only regular files are
/// asked: the kernel honours file capabilities on executables alone.
fn has_capability(path: &Path) -> std::io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let name = c"security.capability";
    // SAFETY: both strings are NUL-terminated and outlive the call; a null buffer of
    // size 0 only asks for the value's size.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if n >= 0 {
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(false),
        e => Err(e),
    }
}
