//! A reproducible initramfs: a `newc` cpio archive, gzip-compressed.
//!
//! Same entries in → same bytes out: entries are written sorted by path, every parent
//! directory is present before its children, and owner, mtime, inode numbers and the gzip
//! header are fixed. The kernel unpacks it into its rootfs before running `/init`.

use std::collections::BTreeMap;
use std::io::Write;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with these contents.
    File(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
}

/// One archive member. Paths are relative, without a leading `/` (`init`, `bin/sh`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits (e.g. 0o755).
    pub mode: u32,
    /// What it is.
    pub kind: EntryKind,
}

/// Why an archive cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// A path is absolute, empty, has `.`/`..` components or a NUL.
    #[error("initramfs entry `{0}`: paths must be relative, normalized and NUL-free")]
    BadPath(String),
    /// A path was added twice with different contents.
    #[error("initramfs entry `{0}` added twice with different contents")]
    Duplicate(String),
    /// A parent of a path is not a directory.
    #[error("initramfs entry `{path}`: its parent `{parent}` is not a directory")]
    ParentNotDir {
        /// The entry.
        path: String,
        /// The parent.
        parent: String,
    },
}

/// The archive being assembled.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

fn check_path(path: &str) -> Result<(), CpioError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && !path.ends_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(CpioError::BadPath(path.to_string()))
    }
}

impl Archive {
    /// Adds an entry, creating missing parent directories (mode 0755).
    pub fn add(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        check_path(path)?;
        let mut parent = String::new();
        for component in path.split('/').take(path.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(
                        parent.clone(),
                        Entry {
                            mode: 0o755,
                            kind: EntryKind::Dir,
                        },
                    );
                }
                Some(Entry {
                    kind: EntryKind::Dir,
                    ..
                }) => {}
                Some(_) => {
                    return Err(CpioError::ParentNotDir {
                        path: path.to_string(),
                        parent,
                    })
                }
            }
        }
        match self.entries.get(path) {
            Some(existing) if *existing != entry => Err(CpioError::Duplicate(path.to_string())),
            _ => {
                self.entries.insert(path.to_string(), entry);
                Ok(())
            }
        }
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<(), CpioError> {
        self.add(
            path,
            Entry {
                mode,
                kind: EntryKind::File(data),
            },
        )
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.add(
            path,
            Entry {
                mode: 0o777,
                kind: EntryKind::Symlink(target.to_string()),
            },
        )
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        self.add(
            path,
            Entry {
                mode,
                kind: EntryKind::Dir,
            },
        )
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// The uncompressed `newc` archive.
    pub fn to_newc(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (type_bits, data): (u32, &[u8]) = match &entry.kind {
                EntryKind::Dir => (0o040000, &[]),
                EntryKind::File(d) => (0o100000, d),
                EntryKind::Symlink(t) => (0o120000, t.as_bytes()),
            };
            let nlink = if entry.kind == EntryKind::Dir { 2 } else { 1 };
            write_header(
                &mut out,
                ino as u32 + 1,
                type_bits | (entry.mode & 0o7777),
                nlink,
                data.len() as u32,
                path,
            );
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        write_header(&mut out, 0, 0, 1, 0, "TRAILER!!!");
        out
    }

    /// The gzip-compressed archive, with a fixed gzip header (no name, mtime 0).
    pub fn to_gzip(&self) -> Vec<u8> {
        let raw = self.to_newc();
        let mut enc = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(3)
            .write(Vec::new(), flate2::Compression::default());
        enc.write_all(&raw).expect("writing to a Vec cannot fail");
        enc.finish().expect("writing to a Vec cannot fail")
    }
}

fn write_header(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, size: u32, name: &str) {
    let namesize = name.len() as u32 + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check: owner root, mtime 0.
    let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Reads a `newc` archive back (tests, and `airlock image` inspection): (path, mode,
/// contents) per entry, in archive order.
pub fn read_newc(mut data: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let start_len = data.len();
    loop {
        let offset = start_len - data.len();
        if data.len() < 110 || &data[..6] != b"070701" {
            return Err(format!("no newc header at offset {offset}"));
        }
        let field = |i: usize| {
            let s = std::str::from_utf8(&data[6 + i * 8..14 + i * 8]).map_err(|e| e.to_string())?;
            u32::from_str_radix(s, 16).map_err(|e| format!("field {i} at {offset}: {e}"))
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let namesize = field(11)? as usize;
        let name_end = 110 + namesize;
        let data_start = name_end.div_ceil(4) * 4;
        let data_end = data_start + size;
        if data.len() < data_end || namesize == 0 {
            return Err(format!("truncated entry at offset {offset}"));
        }
        let name = String::from_utf8_lossy(&data[110..name_end - 1]).into_owned();
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        out.push((name, mode, data[data_start..data_end].to_vec()));
        data = &data[(data_end.div_ceil(4) * 4).min(data.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::default();
        a.file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        a.file("etc/airlock/image-id", 0o644, b"x".to_vec())
            .unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        a
    }

    #[test]
    fn entries_come_out_sorted_with_parents_first_and_read_back() {
        let a = sample();
        let read = read_newc(&a.to_newc()).unwrap();
        let names: Vec<&str> = read.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "etc",
                "etc/airlock",
                "etc/airlock/image-id",
                "init"
            ]
        );
        let init = read.iter().find(|(n, _, _)| n == "init").unwrap();
        assert_eq!(init.1, 0o100755);
        assert_eq!(init.2, b"#!/bin/sh\n");
        let sh = read.iter().find(|(n, _, _)| n == "bin/sh").unwrap();
        assert_eq!(
            (sh.1 & 0o170000, sh.2.as_slice()),
            (0o120000, &b"busybox"[..])
        );
    }

    #[test]
    fn the_same_entries_in_any_order_give_the_same_bytes() {
        let mut b = Archive::default();
        b.symlink("bin/sh", "busybox").unwrap();
        b.file("etc/airlock/image-id", 0o644, b"x".to_vec())
            .unwrap();
        b.file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
        assert_eq!(sample().to_gzip(), b.to_gzip());
        let mut c = b.clone();
        c.file("init2", 0o755, vec![]).unwrap();
        assert_ne!(c.to_gzip(), b.to_gzip());
    }

    #[test]
    fn bad_paths_and_conflicts_are_refused() {
        let mut a = sample();
        for bad in ["/abs", "", "a/../b", "a//b", "./a", "a/"] {
            assert!(
                matches!(a.dir(bad, 0o755), Err(CpioError::BadPath(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            a.file("init", 0o755, b"other".to_vec()),
            Err(CpioError::Duplicate(_))
        ));
        assert!(matches!(
            a.file("init/x", 0o644, vec![]),
            Err(CpioError::ParentNotDir { .. })
        ));
        // The same content twice is fine.
        a.file("init", 0o755, b"#!/bin/sh\n".to_vec()).unwrap();
    }
}
