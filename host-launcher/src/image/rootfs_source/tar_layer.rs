//! Tar streams into the tree: a rootfs tarball, an OCI/docker layer (a changeset with
//! whiteouts), or the outer tar of an image archive.

use super::tree::{shown, Counted, Entry, EntryKind, Tree};
use super::{io, SourceError};
use std::cell::Cell;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::rc::Rc;
use tar::EntryType;

/// The most memory xz-utils may take to decode a source (`xz -9` needs 65 MiB).
const XZ_MEMLIMIT: &str = "512MiB";

/// How a tar stream's names are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// A whole root filesystem: a `.wh.` name is refused, since it would delete files
    /// if the tree were ever used as a layer.
    Rootfs,
    /// An OCI/docker layer: `.wh.NAME` deletes NAME from the lower layers,
    /// `.wh..wh..opq` hides a directory's lower children.
    Changeset,
    /// The outer tar of an image archive: names are taken as they are.
    Outer,
}

/// A stream's compression, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    pub(crate) fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

impl Tree {
    /// Loads a tar file, plain or compressed (told by magic bytes).
    pub fn load_tar_file(
        &mut self,
        path: &Path,
        origin: &str,
        format: LayerFormat,
    ) -> Result<(), SourceError> {
        let mut f = std::fs::File::open(path).map_err(io(path))?;
        let mut head = [0u8; 6];
        let n = f.read(&mut head).map_err(io(path))?;
        f.rewind().map_err(io(path))?;
        self.load_compressed(f, Compression::sniff(&head[..n]), origin, format)
    }

    /// Loads a tar stream compressed with `compression`.
    pub(crate) fn load_compressed(
        &mut self,
        raw: std::fs::File,
        compression: Compression,
        origin: &str,
        format: LayerFormat,
    ) -> Result<(), SourceError> {
        let raw = BufReader::with_capacity(1 << 16, raw);
        match compression {
            Compression::None => self.load_tar_layer(raw, origin, format),
            Compression::Gzip => {
                self.load_tar_layer(flate2::bufread::MultiGzDecoder::new(raw), origin, format)
            }
            Compression::Zstd => {
                let d = ruzstd::decoding::StreamingDecoder::new(raw).map_err(|e| {
                    SourceError::Corrupt {
                        origin: origin.into(),
                        problem: format!("zstd: {e}"),
                    }
                })?;
                self.load_tar_layer(d, origin, format)
            }
            Compression::Xz => {
                // Decoded by xz-utils as a stream under a memory limit, counted as it
                // comes: a pure-Rust decoder that holds its output until the end
                // would let a 500 KB file take gigabytes before the byte limit
                // applied.
                let file = raw.into_inner();
                let mut child = std::process::Command::new("xz")
                    .args(["--decompress", "--stdout", "--threads=1"])
                    .arg(format!("--memlimit-decompress={XZ_MEMLIMIT}"))
                    .stdin(file)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| SourceError::Corrupt {
                        origin: origin.into(),
                        problem: format!(
                            "xz-compressed, and the `xz` program cannot be run ({e}): apt-get install xz-utils"
                        ),
                    })?;
                let out = child.stdout.take().expect("piped");
                let mut err = child.stderr.take().expect("piped");
                // Drained on its own thread: a decoder with much to say must not
                // block on a full pipe while we read its output.
                let said = std::thread::spawn(move || {
                    let mut s = String::new();
                    let _ = (&mut err).take(64 << 10).read_to_string(&mut s);
                    s
                });
                let loaded = self.load_tar_layer(BufReader::new(out), origin, format);
                // Whatever the tar reader left unread is not wanted: stop the decoder.
                let _ = child.kill();
                let status = child.wait().map_err(io(Path::new(origin)))?;
                let said = said.join().unwrap_or_default();
                match loaded {
                    Err(e) if status.success() || self.budget.over_bytes() => Err(e),
                    Err(_) | Ok(_) if !status.success() && !said.trim().is_empty() => {
                        Err(SourceError::Corrupt {
                            origin: origin.into(),
                            problem: format!("xz: {}", said.trim()),
                        })
                    }
                    other => other,
                }
            }
        }
    }

    /// Applies one tar stream (already decompressed), counting its bytes.
    pub fn load_tar_layer(
        &mut self,
        reader: impl Read,
        origin: &str,
        format: LayerFormat,
    ) -> Result<(), SourceError> {
        let counted = Counted {
            inner: reader,
            budget: self.budget.clone(),
        };
        self.load_uncounted(counted, origin, format)
    }

    fn load_uncounted(
        &mut self,
        reader: impl Read,
        origin: &str,
        format: LayerFormat,
    ) -> Result<(), SourceError> {
        let budget = self.budget.clone();
        let corrupt = |e: std::io::Error| {
            if budget.over_bytes() {
                budget.too_large(origin)
            } else {
                SourceError::Corrupt {
                    origin: origin.into(),
                    problem: e.to_string(),
                }
            }
        };
        self.begin_layer();
        let cap = Rc::new(HeaderCap {
            left: Cell::new(None),
            tripped: Cell::new(false),
        });
        let mut archive = tar::Archive::new(Capped {
            inner: reader,
            cap: cap.clone(),
        });
        let mut seen_any = false;
        let mut entries = archive.entries().map_err(corrupt)?;
        loop {
            // What the tar reader consumes between two entries is headers, long names
            // and PAX records, which it holds in memory: capped (the data of the
            // previous entry was drained below, so none of it is counted here).
            cap.left.set(Some(MAX_ENTRY_HEADERS));
            let next = entries.next();
            cap.left.set(None);
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(|e| {
                if cap.tripped.get() {
                    SourceError::Corrupt {
                        origin: origin.into(),
                        problem: format!(
                            "an entry's headers (long names, PAX records) exceed {MAX_ENTRY_HEADERS} bytes"
                        ),
                    }
                } else {
                    corrupt(e)
                }
            })?;
            seen_any = true;
            self.budget.add_entry(origin)?;
            self.apply_entry(&mut entry, origin, format)
                .map_err(|e| match e {
                    SourceError::Io { .. } if budget.over_bytes() => budget.too_large(origin),
                    e => e,
                })?;
            std::io::copy(&mut entry, &mut std::io::sink()).map_err(corrupt)?;
        }
        if !seen_any && format != LayerFormat::Changeset {
            // An empty layer is legitimate; an empty rootfs or archive is not a tar.
            return Err(SourceError::Corrupt {
                origin: origin.into(),
                problem: "no tar entries".into(),
            });
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        origin: &str,
        format: LayerFormat,
    ) -> Result<(), SourceError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let Some(path) = super::tree::normalize(origin, &entry.path_bytes())? else {
            // `./`: the root's own metadata is not kept (the image root is root's 0755).
            return Ok(());
        };
        if format != LayerFormat::Outer && path.split('/').any(|c| c.starts_with(".wh.")) {
            if format == LayerFormat::Rootfs {
                return Err(SourceError::WhiteoutName {
                    origin: origin.into(),
                    path: shown(&path),
                });
            }
            return self.apply_whiteout(origin, &path);
        }
        let header = entry.header();
        let mode = header.mode().map_err(|e| corrupt_at(origin, &path, e))? & 0o7777;
        let uid = header.uid().map_err(|e| corrupt_at(origin, &path, e))?;
        let gid = header.gid().map_err(|e| corrupt_at(origin, &path, e))?;
        let mut mtime = header.mtime().map_err(|e| corrupt_at(origin, &path, e))?;
        let mut capability = false;
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| corrupt_at(origin, &path, e))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| corrupt_at(origin, &path, e))?;
                match ext.key_bytes() {
                    b"SCHILY.xattr.security.capability" => capability = true,
                    // Fractional PAX times: whole seconds are kept.
                    b"mtime" => {
                        if let Some(secs) = ext
                            .value()
                            .ok()
                            .and_then(|v| v.split('.').next())
                            .and_then(|v| v.parse().ok())
                        {
                            mtime = secs;
                        }
                    }
                    _ => {}
                }
            }
        }
        let meta = |kind: EntryKind| Entry {
            kind,
            mode,
            uid,
            gid,
            mtime,
            capability,
        };
        let in_dev = path.starts_with("dev/");
        let new = match kind {
            EntryType::Regular | EntryType::Continuous => {
                let (sha256, size) = self
                    .store
                    .put(entry)
                    .map_err(|e| corrupt_or_large(self, origin, &path, e))?;
                let inode = self.new_inode();
                meta(EntryKind::File {
                    sha256,
                    size,
                    inode,
                })
            }
            EntryType::Directory => meta(EntryKind::Dir),
            EntryType::Symlink => {
                let target = link_name(entry, origin, &path)?;
                meta(EntryKind::Symlink { target })
            }
            EntryType::Link => {
                let raw = link_name(entry, origin, &path)?;
                let target = super::tree::normalize(origin, raw.as_bytes()).map_err(|e| {
                    SourceError::Hardlink {
                        origin: origin.into(),
                        path: shown(&path),
                        target: raw.clone(),
                        problem: format!("its target cannot be used: {e}"),
                    }
                })?;
                let Some(target) = target else {
                    return Err(SourceError::Hardlink {
                        origin: origin.into(),
                        path: shown(&path),
                        target: raw,
                        problem: "its target is the root".into(),
                    });
                };
                // One inode: the link shares the file's contents and metadata.
                self.hardlink_target(origin, &path, &target)?
            }
            EntryType::Char | EntryType::Block => {
                if in_dev {
                    return Ok(()); // the enforcer mounts devtmpfs on /dev
                }
                let header = entry.header();
                let (major, minor) = (
                    header
                        .device_major()
                        .ok()
                        .flatten()
                        .ok_or_else(|| corrupt_at(origin, &path, "no device major"))?,
                    header
                        .device_minor()
                        .ok()
                        .flatten()
                        .ok_or_else(|| corrupt_at(origin, &path, "no device minor"))?,
                );
                meta(if kind == EntryType::Char {
                    EntryKind::CharDevice { major, minor }
                } else {
                    EntryKind::BlockDevice { major, minor }
                })
            }
            EntryType::Fifo if in_dev => return Ok(()),
            EntryType::Fifo => {
                return Err(SourceError::Unsupported {
                    origin: origin.into(),
                    path: shown(&path),
                    what: "FIFO".into(),
                    hint: "a rootfs is read-only: create it at run time instead",
                })
            }
            EntryType::GNUSparse => {
                return Err(SourceError::Unsupported {
                    origin: origin.into(),
                    path: shown(&path),
                    what: "GNU sparse file".into(),
                    hint: "create the archive without --sparse",
                })
            }
            other => {
                return Err(SourceError::Unsupported {
                    origin: origin.into(),
                    path: shown(&path),
                    what: format!("tar entry of type {:?}", other.as_byte() as char),
                    hint: "only files, directories, symlinks, hardlinks and devices are kept",
                })
            }
        };
        self.insert(origin, &path, new)
    }

    /// `.wh.NAME` deletes NAME from the lower layers; `.wh..wh..opq` hides its
    /// directory's lower children; other `.wh..wh.` names (AUFS's own) are ignored.
    /// The markers themselves never enter the tree.
    fn apply_whiteout(&mut self, origin: &str, path: &str) -> Result<(), SourceError> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", path),
        };
        let Some(hidden) = name.strip_prefix(".wh.") else {
            // A `.wh.` directory above the marker: nothing a layer may write.
            return Err(SourceError::WhiteoutName {
                origin: origin.into(),
                path: shown(path),
            });
        };
        if dir.split('/').any(|c| c.starts_with(".wh.")) {
            return Err(SourceError::WhiteoutName {
                origin: origin.into(),
                path: shown(path),
            });
        }
        let target = if dir.is_empty() {
            hidden.to_string()
        } else {
            format!("{dir}/{hidden}")
        };
        if !self.check_whiteout_parents(origin, &target)? {
            return Ok(()); // nothing below to hide
        }
        if hidden == ".wh..opq" {
            if dir.is_empty() || matches!(self.get(dir).map(|e| &e.kind), Some(EntryKind::Dir)) {
                self.remove_children(dir, true);
            }
        } else if hidden.starts_with(".wh.") {
            // AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): not part of the image.
        } else if hidden.is_empty() {
            return Err(SourceError::BadName {
                origin: origin.into(),
                path: shown(path),
                problem: "is a whiteout of nothing",
            });
        } else {
            self.remove_subtree(&target, true);
        }
        Ok(())
    }
}

/// Bytes of headers, long names and PAX records one entry may have.
const MAX_ENTRY_HEADERS: u64 = 1 << 20;

/// How much the tar reader may still read before the next entry (`None`: no limit,
/// while an entry's data is read).
struct HeaderCap {
    left: Cell<Option<u64>>,
    tripped: Cell<bool>,
}

struct Capped<R> {
    inner: R,
    cap: Rc<HeaderCap>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = match self.cap.left.get() {
            // Ask for one byte more than allowed, to tell "at the cap" from "over".
            Some(left) => buf
                .len()
                .min(usize::try_from(left + 1).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let n = self.inner.read(&mut buf[..want])?;
        if let Some(left) = self.cap.left.get() {
            if n as u64 > left {
                self.cap.tripped.set(true);
                return Err(std::io::Error::other("entry headers over the limit"));
            }
            self.cap.left.set(Some(left - n as u64));
        }
        Ok(n)
    }
}

fn link_name<R: Read>(
    entry: &tar::Entry<'_, R>,
    origin: &str,
    path: &str,
) -> Result<String, SourceError> {
    let raw = entry
        .link_name_bytes()
        .ok_or_else(|| corrupt_at(origin, path, "a link without a target"))?;
    if raw.is_empty() || raw.contains(&0) {
        return Err(SourceError::BadName {
            origin: origin.into(),
            path: shown(path),
            problem: "is a link with an empty or NUL target",
        });
    }
    String::from_utf8(raw.into_owned()).map_err(|_| SourceError::BadName {
        origin: origin.into(),
        path: shown(path),
        problem: "is a link whose target is not UTF-8",
    })
}

fn corrupt_at(origin: &str, path: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Corrupt {
        origin: origin.into(),
        problem: format!("entry {}: {e}", shown(path)),
    }
}

fn corrupt_or_large(tree: &Tree, origin: &str, path: &str, e: std::io::Error) -> SourceError {
    if tree.budget.over_bytes() {
        tree.budget.too_large(origin)
    } else {
        corrupt_at(origin, path, e)
    }
}
