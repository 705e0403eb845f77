//! `Collect` in the VM: the host takes declared output files back before the VM is
//! destroyed.
//!
//! The agent controls everything it wrote, so each path is opened without following
//! any symlink on the way (`openat2` with `RESOLVE_NO_SYMLINKS`): an agent that
//! replaces an output with a link to a file it could not read itself gets an error, not
//! that file. Only regular files are sent, and at most [`MAX_COLLECT_BYTES`] each.

use airlock_proto::pb::CollectChunk;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tonic::Status;

/// Largest file `Collect` sends (the launcher's cap, from the same constant).
pub use airlock_proto::MAX_COLLECT_BYTES;
const CHUNK: usize = 64 * 1024;

/// Why a path cannot be collected.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// Not absolute after resolving against the command's cwd.
    #[error("collect {0}: the path is empty")]
    Empty(String),
    /// Opening failed (a symlink on the way gives ELOOP).
    #[error("collect {path}: {source}")]
    Open {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a regular file, or too big.
    #[error("collect {path}: {problem}")]
    Unusable {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// `path` opened read-only with no symlink anywhere on the way.
fn open_no_symlinks(path: &Path) -> Result<std::fs::File, CollectError> {
    // O_NONBLOCK: a FIFO the agent planted at an output path must not block the open
    // (it is refused as not a regular file right after); regular files ignore it.
    crate::no_symlinks::open_following_no_symlinks(
        path,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
    )
    .map(std::fs::File::from)
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => CollectError::Unusable {
            path: path.to_path_buf(),
            problem: "is or goes through a symbolic link, which collect never follows".into(),
        },
        _ => CollectError::Open {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Reads one file for `Collect`: its chunks, the last one with `eof` and its mode.
pub fn read_for_collect(guest_path: &str, cwd: &Path) -> Result<Vec<CollectChunk>, CollectError> {
    if guest_path.is_empty() {
        return Err(CollectError::Empty(guest_path.into()));
    }
    let path = cwd.join(guest_path);
    let mut f = open_no_symlinks(&path)?;
    let meta = f.metadata().map_err(|e| CollectError::Open {
        path: path.clone(),
        source: e,
    })?;
    if !meta.is_file() {
        return Err(CollectError::Unusable {
            path,
            problem: "is not a regular file".into(),
        });
    }
    if meta.len() > MAX_COLLECT_BYTES {
        return Err(CollectError::Unusable {
            path,
            problem: format!(
                "is {} bytes, more than the {MAX_COLLECT_BYTES} a collect takes",
                meta.len()
            ),
        });
    }
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| CollectError::Open {
            path: path.clone(),
            source: e,
        })?;
        total += n as u64;
        if total > MAX_COLLECT_BYTES {
            return Err(CollectError::Unusable {
                path,
                problem: "grew past the collect limit while being read".into(),
            });
        }
        if n == 0 {
            break;
        }
        chunks.push(CollectChunk {
            guest_path: guest_path.to_string(),
            data: buf[..n].to_vec(),
            eof: false,
            mode: 0,
        });
    }
    chunks.push(CollectChunk {
        guest_path: guest_path.to_string(),
        data: Vec::new(),
        eof: true,
        mode: meta.permissions().mode() & 0o7777,
    });
    Ok(chunks)
}

/// The chunks of every path in order; the first unusable path ends the stream with an
/// error naming it.
pub fn collect_stream(
    paths: Vec<String>,
    cwd: PathBuf,
) -> tokio_stream::wrappers::ReceiverStream<Result<CollectChunk, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    std::thread::spawn(move || {
        for p in paths {
            match read_for_collect(&p, &cwd) {
                Ok(chunks) => {
                    for c in chunks {
                        if tx.blocking_send(Ok(c)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::not_found(e.to_string())));
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_comes_back_whole_with_its_mode_and_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        std::fs::write(out.join("report.bin"), &data).unwrap();
        std::fs::set_permissions(
            out.join("report.bin"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let chunks = read_for_collect("out/report.bin", d.path()).unwrap();
        let got: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(got, data);
        let last = chunks.last().unwrap();
        assert!(last.eof && last.mode == 0o640, "{last:?}");

        // The agent swaps an output for a link to something else: refused, ELOOP.
        std::fs::write(d.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), out.join("link")).unwrap();
        let e = read_for_collect("out/link", d.path()).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // A link to a directory on the way is refused as well.
        std::os::unix::fs::symlink(&out, d.path().join("via")).unwrap();
        let e = read_for_collect("via/report.bin", d.path()).unwrap_err();
        assert!(e.to_string().contains("via/report.bin"), "{e}");
        // Directories are not files.
        let e = read_for_collect("out", d.path()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
