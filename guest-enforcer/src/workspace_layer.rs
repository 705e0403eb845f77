//! Copy-on-write workspaces: what keeps a writable grant from reaching back into the
//! host.
//!
//! A `rw` grant is an overlay. The host directory is its read-only lower layer
//! (virtiofsd `--readonly` in a VM, a read-only idmapped mount in process isolation);
//! everything the agent writes lands in an upper layer on the session's **scratch**, one
//! tmpfs sized by the plan's `disk_mib` in bytes *and* inodes, shared by every writable
//! grant of the session and by the agent's `/tmp` (and `/dev/shm` in process isolation):
//! a limit per grant or per mount would not be a limit in total. The scratch
//! is outside the agent's view; nothing of it reaches the host unless the launcher's
//! merge-back gate reads the upper layers (see `airlock_proto::workspace_changes`) and
//! applies what passes its rules.
//!
//! The overlay is mounted without `redirect_dir`, `metacopy` and `index`, so the upper
//! layer holds only whole files, whiteouts and opaque directories: nothing the host
//! side has to interpret through the lower layer.

use airlock_proto::pb::{ChangeChunk, ChangeKind as PbKind};
use airlock_proto::workspace_changes::{walk_upper_layer, ChangeEvent, ChangeKind};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tonic::Status;

/// Where the scratch tmpfs is mounted in a VM (root only, outside every agent grant).
pub const VM_SCRATCH_DIR: &str = "/run/airlock/scratch";
/// Where the lower layers (the host's read-only shares) are mounted in a VM.
pub const VM_LOWER_DIR: &str = "/run/airlock/lower";

pub use airlock_proto::workspace_changes::scratch_inodes;

/// tmpfs options of the scratch: size and inodes from `disk_mib`, root-only.
pub fn scratch_tmpfs_options(disk_mib: u64) -> String {
    format!(
        "size={}m,nr_inodes={},mode=0700",
        disk_mib.max(1),
        scratch_inodes(disk_mib)
    )
}

/// Directories of the scratch that become the agent's scratch mounts (`/tmp`, and in
/// process isolation `/dev/shm`): their bytes and inodes count against the same
/// `disk_mib` as the workspaces' write layers.
pub const SCRATCH_SUBDIRS: [(&str, &str); 2] = [("tmp", "/tmp"), ("shm", "/dev/shm")];

/// Binds `scratch/<name>` (made mode 1777) onto `target` for each `(name, target)`:
/// nosuid, nodev, noexec.
pub fn bind_scratch_dirs(
    scratch: &Path,
    targets: &[(&str, PathBuf)],
) -> Result<(), WorkspaceError> {
    use nix::mount::{mount, MsFlags};
    for (name, target) in targets {
        let dir = scratch.join(name);
        std::fs::create_dir_all(&dir).map_err(step(name, format!("creating {}", dir.display())))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .map_err(step(name, "making it mode 1777"))?;
        let shown = target.display().to_string();
        mount(
            Some(&dir),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| step(name, format!("binding it onto {shown}"))(e.into()))?;
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| step(name, format!("making {shown} nosuid, nodev, noexec"))(e.into()))?;
    }
    Ok(())
}

/// The upper layer of mount `tag` inside a scratch at `scratch`.
pub fn upper_dir(scratch: &Path, tag: &str) -> PathBuf {
    scratch.join("upper").join(tag)
}

/// Why a workspace layer could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A step failed.
    #[error("session scratch, `{tag}`: {what}: {source}")]
    Io {
        /// Mount tag.
        tag: String,
        /// The step.
        what: String,
        /// Cause.
        source: io::Error,
    },
}

fn step(tag: &str, what: impl Into<String>) -> impl FnOnce(io::Error) -> WorkspaceError {
    let (tag, what) = (tag.to_string(), what.into());
    move |source| WorkspaceError::Io { tag, what, source }
}

/// Mounts the overlay for `tag` at `target`: `lower` (a read-only mount of the host
/// directory) under an upper and work directory made in `scratch`. The upper root takes
/// the lower root's owner and mode, or the workspace's root would appear root-owned.
/// `target` may be a `/proc/self/fd/N` path of a directory opened without symlinks.
pub fn mount_overlay(
    tag: &str,
    lower: &Path,
    scratch: &Path,
    target: &str,
) -> Result<(), WorkspaceError> {
    use nix::mount::{mount, MsFlags};
    let root =
        std::fs::metadata(lower).map_err(step(tag, format!("reading {}", lower.display())))?;
    let upper = upper_dir(scratch, tag);
    let work = scratch.join("work").join(tag);
    for dir in [&upper, &work] {
        std::fs::create_dir_all(dir).map_err(step(tag, format!("creating {}", dir.display())))?;
    }
    std::os::unix::fs::chown(&upper, Some(root.uid()), Some(root.gid()))
        .map_err(step(tag, "giving the upper layer the workspace's owner"))?;
    std::fs::set_permissions(
        &upper,
        std::os::unix::fs::PermissionsExt::from_mode(root.mode() & 0o7777),
    )
    .map_err(step(tag, "giving the upper layer the workspace's mode"))?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off,xino=off",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| step(tag, format!("mounting the overlay ({data})"))(e.into()))
}

/// One change event as the `Enforcer.Changes` stream carries it.
pub fn change_chunk(ev: ChangeEvent) -> ChangeChunk {
    match ev {
        ChangeEvent::Entry(e) => ChangeChunk {
            mount: e.mount,
            path: e.path,
            kind: match e.kind {
                ChangeKind::Dir => PbKind::Dir,
                ChangeKind::File => PbKind::File,
                ChangeKind::Symlink => PbKind::Symlink,
                ChangeKind::Delete => PbKind::Delete,
                ChangeKind::OpaqueDir => PbKind::OpaqueDir,
                ChangeKind::Special => PbKind::Special,
            } as i32,
            mode: e.mode,
            size: e.size,
            symlink_target: e.symlink_target,
            special: e.special,
            data: Vec::new(),
        },
        ChangeEvent::Data(data) => ChangeChunk {
            data,
            ..Default::default()
        },
    }
}

/// After the host merged changes into a workspace's host side (the overlay's lower
/// layer, through virtiofs) while the session goes on: frees the guest's unused
/// dentries and inodes (`drop_caches` 2). Overlayfs keeps a reference to the lower file
/// behind each copied-up one; a merge replaces such files on the host (new inodes), and
/// revalidating the old reference fails the agent's next open with ESTALE. Dropped, the
/// next lookup finds the new host file. Dentries in use (open files, working
/// directories) stay, and so does everything on the write layer.
pub fn forget_cached_lookups() -> std::io::Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", b"2\n")
}

/// Streams the upper layers of `tags` in the scratch at `scratch` (in order), for
/// `Enforcer.Changes`. A layer that cannot be read ends the stream with an error naming
/// it; the host then merges nothing.
pub fn changes_stream(
    tags: Vec<String>,
    scratch: PathBuf,
) -> tokio_stream::wrappers::ReceiverStream<Result<ChangeChunk, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    // A thread that cannot start is an error the host reads, not a panic in PID 1.
    let walker = std::thread::Builder::new().name("changes".into());
    let spawned = walker.spawn(move || {
        for tag in tags {
            let upper = match airlock_proto::workspace_changes::open_layer_dir(&upper_dir(
                &scratch, &tag,
            )) {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = tx.blocking_send(Err(Status::internal(
                        step(&tag, "opening the upper layer")(e).to_string(),
                    )));
                    return;
                }
            };
            let walked = walk_upper_layer(&upper, &tag, &mut |ev| {
                tx.blocking_send(Ok(change_chunk(ev)))
                    .map_err(|_| "the host stopped reading".to_string())
            });
            if let Err(e) = walked {
                let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                return;
            }
        }
    });
    if let Err(e) = spawned {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.try_send(Err(Status::internal(format!(
            "no thread to read the write layers: {e}"
        ))));
        return tokio_stream::wrappers::ReceiverStream::new(rx);
    }
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_is_bounded_in_bytes_and_inodes_by_disk_mib() {
        assert_eq!(scratch_inodes(64), 16_384);
        assert_eq!(scratch_inodes(0), 64);
        assert_eq!(
            scratch_tmpfs_options(64),
            "size=64m,nr_inodes=16384,mode=0700"
        );
    }
}
