//! A directory source, walked by descriptor: symlinks are recorded, never followed;
//! hardlinks are found by `(dev, ino)`; sockets and FIFOs are refused.

use super::tree::{shown, Entry, EntryKind, Tree};
use super::{io, SourceError};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

impl Tree {
    /// Loads a directory tree (its root's own metadata is not kept). Walked by
    /// descriptor: every entry is looked up relative to its parent's open descriptor
    /// with `O_NOFOLLOW`, and what is opened must be the inode `fstatat` saw, so a
    /// source changed while it is read (a directory swapped for a symlink to the host's
    /// files, a file that grows) is refused rather than followed or miscounted.
    pub fn load_directory(&mut self, root: &Path) -> Result<(), SourceError> {
        use nix::fcntl::{openat, readlinkat, OFlag};
        use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
        let origin = root.display().to_string();
        let errno = |p: &Path| {
            let p = p.to_path_buf();
            move |e: nix::errno::Errno| io(&p)(std::io::Error::from(e))
        };
        let changed = |host: &Path| SourceError::Io {
            path: host.to_path_buf(),
            source: std::io::Error::other(
                "changed while it was being read; build again from a source nothing writes to",
            ),
        };
        let same = |a: &FileStat, b: &FileStat| a.st_dev == b.st_dev && a.st_ino == b.st_ino;
        let root_fd = nix::fcntl::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(root))?;
        let mut seen: HashMap<(u64, u64), String> = HashMap::new();
        let mut stack = vec![(root_fd, root.to_path_buf(), String::new())];
        while let Some((dir_fd, dir, rel)) = stack.pop() {
            let listing = nix::dir::Dir::from_fd(dir_fd.try_clone().map_err(io(&dir))?)
                .map_err(errno(&dir))?;
            let mut names: Vec<std::ffi::OsString> = Vec::new();
            for e in listing {
                let e = e.map_err(errno(&dir))?;
                let name = std::ffi::OsStr::from_bytes(e.file_name().to_bytes());
                if name != "." && name != ".." {
                    names.push(name.to_os_string());
                }
            }
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
                let m = fstatat(
                    &dir_fd,
                    name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(errno(&host))?;
                let kind = SFlag::from_bits_truncate(m.st_mode) & SFlag::S_IFMT;
                let entry = |kind: EntryKind| Entry {
                    kind,
                    mode: m.st_mode & 0o7777,
                    uid: m.st_uid.into(),
                    gid: m.st_gid.into(),
                    mtime: m.st_mtime.max(0) as u64,
                    capability: false,
                };
                let in_dev = path.starts_with("dev/");
                let new = if kind == SFlag::S_IFDIR {
                    let fd = openat(
                        &dir_fd,
                        name.as_os_str(),
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(errno(&host))?;
                    if !same(&fstat(&fd).map_err(errno(&host))?, &m) {
                        return Err(changed(&host));
                    }
                    stack.push((fd, host.clone(), path.clone()));
                    entry(EntryKind::Dir)
                } else if kind == SFlag::S_IFLNK {
                    let target = readlinkat(&dir_fd, name.as_os_str()).map_err(errno(&host))?;
                    let target = String::from_utf8(target.as_bytes().to_vec()).map_err(|_| {
                        SourceError::BadName {
                            origin: origin.clone(),
                            path: shown(&path),
                            problem: "is a link whose target is not UTF-8",
                        }
                    })?;
                    entry(EntryKind::Symlink { target })
                } else if kind == SFlag::S_IFREG {
                    if m.st_nlink > 1 {
                        if let Some(first) = seen.get(&(m.st_dev, m.st_ino)) {
                            let linked = self.hardlink_target(&origin, &path, first)?;
                            self.insert(&origin, &path, linked)?;
                            continue;
                        }
                        seen.insert((m.st_dev, m.st_ino), path.clone());
                    }
                    let len = m.st_size.max(0) as u64;
                    if !self.budget.add_bytes(len) {
                        return Err(self.budget.too_large(&origin));
                    }
                    let fd = openat(
                        &dir_fd,
                        name.as_os_str(),
                        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
                        Mode::empty(),
                    )
                    .map_err(errno(&host))?;
                    let mut f = std::fs::File::from(fd);
                    let now = fstat(&f).map_err(errno(&host))?;
                    if !same(&now, &m) || now.st_size != m.st_size {
                        return Err(changed(&host));
                    }
                    // At most the bytes counted; fewer (or a file that grew past them,
                    // seen as one byte more) is a change mid-read.
                    let (sha256, size) = self
                        .store
                        .put(&mut (&mut f).take(len + 1))
                        .map_err(io(&host))?;
                    if size != len {
                        return Err(changed(&host));
                    }
                    let inode = self.new_inode();
                    let mut e = entry(EntryKind::File {
                        sha256,
                        size,
                        inode,
                    });
                    e.capability = has_capability(&f).map_err(io(&host))?;
                    e
                } else if kind == SFlag::S_IFCHR || kind == SFlag::S_IFBLK {
                    if in_dev {
                        continue; // the enforcer mounts devtmpfs on /dev
                    }
                    let (major, minor) = (libc::major(m.st_rdev), libc::minor(m.st_rdev));
                    entry(if kind == SFlag::S_IFCHR {
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
                        what: if kind == SFlag::S_IFSOCK {
                            "socket"
                        } else {
                            "FIFO"
                        }
                        .into(),
                        hint: "a rootfs is read-only: create it at run time instead",
                    });
                };
                self.insert(&origin, &path, new)?;
            }
        }
        Ok(())
    }
}

/// Whether an open file carries a `security.capability` xattr. Only regular files are
/// asked: the kernel honours file capabilities on executables alone.
fn has_capability(f: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let name = c"security.capability";
    // SAFETY: a live descriptor and a NUL-terminated name that outlives the call; a
    // null buffer of size 0 only asks for the value's size.
    let n = unsafe { libc::fgetxattr(f.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if n >= 0 {
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => Ok(false),
        e => Err(e),
    }
}
