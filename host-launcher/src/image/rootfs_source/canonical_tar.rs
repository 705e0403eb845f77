//! The tree as one canonical tar: what gets packed, and what its digest covers.
//!
//! GNU format (long names as `././@LongLink` entries, themselves fixed), entries in
//! path-byte order (parents first), numeric owners, no user or group names, no
//! xattrs, the source's mtimes; directories the source only implied are root's 0755
//! with mtime 0. Of the names of a hardlinked file, the first in that order carries
//! the contents and the others are tar hardlinks to it. The same tree always gives the
//! same bytes.

use super::tree::{EntryKind, Tree};
use super::SourceError;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use tar::{EntryType, Header};

impl Tree {
    /// Writes the canonical tar of the tree to `out`.
    pub fn write_canonical_tar(&self, out: impl Write) -> Result<(), SourceError> {
        let mut b = tar::Builder::new(out);
        let mut first_name: HashMap<u64, &str> = HashMap::new();
        for (path, e) in self.entries() {
            let mut h = Header::new_gnu();
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(e.mtime);
            h.set_size(0);
            let written = match &e.kind {
                EntryKind::Dir => {
                    h.set_entry_type(EntryType::Directory);
                    b.append_data(&mut h, path, std::io::empty())
                }
                EntryKind::File {
                    sha256,
                    size,
                    inode,
                } => {
                    if let Some(first) = first_name.get(inode) {
                        h.set_entry_type(EntryType::Link);
                        b.append_link(&mut h, path, first)
                    } else {
                        first_name.insert(*inode, path);
                        let blob = self.blob_path(sha256);
                        let f = std::fs::File::open(&blob).map_err(super::io(&blob))?;
                        h.set_entry_type(EntryType::Regular);
                        h.set_size(*size);
                        // Exactly `size` bytes, even if the blob changed underneath.
                        let data = std::io::Read::take(f, *size);
                        b.append_data(&mut h, path, data)
                    }
                }
                EntryKind::Symlink { target } => {
                    h.set_entry_type(EntryType::Symlink);
                    b.append_link(&mut h, path, target)
                }
                EntryKind::CharDevice { major, minor }
                | EntryKind::BlockDevice { major, minor } => {
                    h.set_entry_type(if matches!(e.kind, EntryKind::CharDevice { .. }) {
                        EntryType::Char
                    } else {
                        EntryType::Block
                    });
                    h.set_device_major(*major).map_err(SourceError::Output)?;
                    h.set_device_minor(*minor).map_err(SourceError::Output)?;
                    b.append_data(&mut h, path, std::io::empty())
                }
            };
            written.map_err(SourceError::Output)?;
        }
        b.into_inner()
            .map_err(SourceError::Output)?
            .flush()
            .map_err(SourceError::Output)
    }

    /// The sha256 (hex) of the canonical tar, computed while streaming it.
    pub fn digest(&self) -> Result<String, SourceError> {
        struct HashWriter(Sha256);
        impl Write for HashWriter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = HashWriter(Sha256::new());
        self.write_canonical_tar(&mut w)?;
        Ok(hex::encode(w.0.finalize()))
    }
}
