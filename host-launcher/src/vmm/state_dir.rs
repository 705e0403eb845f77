//! Per-VM state directories, and the sweep of those a crashed launcher left behind.
//!
//! Each VM gets `<state root>/vm-XXXXXX/`, stamped with the owning launcher's pid and
//! start time (`owner`). A directory whose owner is no longer that process is stale:
//! [`sweep_stale`] kills any recorded helper that is still the same process (pid and
//! start time both match) and removes the directory. A live launcher's directories are
//! never touched, so two launchers can share a state root.

use super::helpers::{process_start_time, HELPERS_FILE};
use super::VmmError;
use std::path::{Path, PathBuf};

/// The owner stamp in each VM directory: `pid start-time`.
pub const OWNER_FILE: &str = "owner";
/// VM directories start with this.
pub const VM_DIR_PREFIX: &str = "vm-";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VmmError + '_ {
    move |source| VmmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `state_root` (0700) if missing and checks that nobody else controls it:
/// the root must be a real directory of ours with no group or other access, and every
/// ancestor owned by us or root and, if others may write it, sticky (like `/tmp`).
/// Another user's directory in its place could redirect the VM's sockets or plant
/// directories for the sweep to act on.
pub fn ensure_private_state_root(state_root: &Path) -> Result<(), VmmError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(state_root)
        .map_err(io(state_root))?;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    let refuse = |path: &Path, problem: String| {
        io(path)(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("not a private state directory: {problem}"),
        ))
    };
    let meta = std::fs::symlink_metadata(state_root).map_err(io(state_root))?;
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
        return Err(refuse(
            state_root,
            format!(
                "it must be a directory owned by uid {me} with mode 0700 (it is uid {}, mode {:o})",
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    let absolute = std::path::absolute(state_root).map_err(io(state_root))?;
    for dir in absolute.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(io(dir))?;
        let others_write = m.mode() & 0o022 != 0;
        let sticky = m.mode() & 0o1000 != 0;
        if (m.uid() != me && m.uid() != 0) || (others_write && !sticky) {
            return Err(refuse(
                dir,
                format!(
                    "an ancestor of {} is uid {} mode {:o}: others could replace what is under it",
                    state_root.display(),
                    m.uid(),
                    m.mode() & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

/// A fresh VM directory under `state_root` (mode 0700), stamped with this process.
pub fn create_vm_dir(state_root: &Path) -> Result<tempfile::TempDir, VmmError> {
    ensure_private_state_root(state_root)?;
    let dir = tempfile::Builder::new()
        .prefix(VM_DIR_PREFIX)
        .tempdir_in(state_root)
        .map_err(io(state_root))?;
    let me = std::process::id();
    // A stamp without a start time would read as a dead launcher to the next sweep.
    let start = process_start_time(me).ok_or_else(|| {
        io(state_root)(std::io::Error::other(
            "this process's start time is unreadable in /proc; VM directories need it",
        ))
    })?;
    let stamp = format!("{me} {start}\n");
    let owner = dir.path().join(OWNER_FILE);
    std::fs::write(&owner, stamp).map_err(io(&owner))?;
    Ok(dir)
}

/// `pid start-time` of a stamp or helper line; `None` when unreadable.
fn parse_process(line: &str) -> Option<(u32, u64)> {
    let mut f = line.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Whether the process `(pid, start time)` is still running (and is the same one). A
/// zombie is not: it has exited, and only its status is left, waiting for a parent
/// that may never collect it (an orphaned helper under an init that does not reap, or
/// a crashed launcher its own parent has not waited for yet). Counting it as running
/// would keep a dead launcher's directory and "kill" helpers that already died.
fn still_running(pid: u32, start: u64) -> bool {
    process_start_time(pid).is_some_and(|now| now == start) && !exited_unreaped(pid)
}

/// Whether `pid` is a zombie (state `Z`, or `X` while it is being reaped).
fn exited_unreaped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The command name (field 2) is parenthesised and may contain spaces.
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X")
    })
}

/// What the sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Directories removed.
    pub removed: Vec<PathBuf>,
    /// Helper processes that had survived their launcher and were killed.
    pub killed: Vec<u32>,
}

/// Removes VM directories under `state_root` whose launcher is gone, killing helpers
/// of theirs that still run. A missing root is an empty sweep.
pub fn sweep_stale(state_root: &Path) -> Result<Sweep, VmmError> {
    use std::os::unix::fs::MetadataExt;
    let mut sweep = Sweep::default();
    if !state_root.exists() {
        return Ok(sweep);
    }
    ensure_private_state_root(state_root)?;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    let entries = std::fs::read_dir(state_root).map_err(io(state_root))?;
    for entry in entries {
        let entry = entry.map_err(io(state_root))?;
        let path = entry.path();
        let is_vm_dir = entry
            .file_name()
            .to_string_lossy()
            .starts_with(VM_DIR_PREFIX)
            && entry.file_type().is_ok_and(|t| t.is_dir())
            // Only directories this user made: nothing planted is acted on.
            && std::fs::symlink_metadata(&path).is_ok_and(|m| m.uid() == me);
        if !is_vm_dir {
            continue;
        }
        let owner = std::fs::read_to_string(path.join(OWNER_FILE)).unwrap_or_default();
        if let Some((pid, start)) = parse_process(&owner) {
            if still_running(pid, start) {
                continue;
            }
        } else if owner.is_empty() && recently_created(&path) {
            // A launcher between creating the directory and stamping it.
            continue;
        }
        let helpers = std::fs::read_to_string(path.join(HELPERS_FILE)).unwrap_or_default();
        for (pid, start) in helpers.lines().filter_map(parse_process) {
            if start != 0 && still_running(pid, start) {
                // SAFETY: kill with integer arguments; the pid was checked to be the
                // recorded helper (same start time) just now.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                sweep.killed.push(pid);
            }
        }
        std::fs::remove_dir_all(&path).map_err(io(&path))?;
        sweep.removed.push(path);
    }
    Ok(sweep)
}

fn recently_created(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() < 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn only_directories_of_dead_launchers_are_swept_and_their_helpers_killed() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("vms");
        ensure_private_state_root(&root).unwrap();
        // Ours: a live launcher's directory is left alone.
        let ours = create_vm_dir(root.as_path()).unwrap();
        // A crashed launcher's: a process that has exited, with a helper still running.
        let mut dead = Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        let dead_start = process_start_time(dead_pid).unwrap();
        dead.wait().unwrap();
        let stale = root.as_path().join("vm-stale");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join(OWNER_FILE), format!("{dead_pid} {dead_start}\n")).unwrap();
        let mut survivor = Command::new("sleep").arg("60").spawn().unwrap();
        let s = survivor.id();
        // A recorded helper whose pid now names another process (other start time) is
        // not killed.
        let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
        let b = bystander.id();
        std::fs::write(
            stale.join(HELPERS_FILE),
            format!(
                "{s} {} virtiofsd\n{b} {} qemu\n",
                process_start_time(s).unwrap(),
                process_start_time(b).unwrap() + 1
            ),
        )
        .unwrap();
        // Not a VM directory: untouched.
        std::fs::create_dir(root.as_path().join("keep")).unwrap();

        let sweep = sweep_stale(root.as_path()).unwrap();
        assert_eq!(sweep.removed, vec![stale.clone()]);
        assert_eq!(sweep.killed, vec![s]);
        assert!(!stale.exists());
        assert!(ours.path().exists());
        assert!(root.as_path().join("keep").exists());
        let st = survivor.wait().unwrap();
        assert!(!st.success(), "the surviving helper was killed");
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "a bystander was killed"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
        assert_eq!(
            sweep_stale(&root.as_path().join("absent")).unwrap(),
            Sweep::default()
        );
    }

    /// Helpers that died with their launcher but were never reaped (zombies under an
    /// init that does not reap) are not running: the sweep neither kills nor reports
    /// them, and a zombie launcher's directory is swept like a dead one's.
    #[test]
    fn zombies_count_as_exited_for_the_sweep() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("vms");
        ensure_private_state_root(&root).unwrap();
        // Children of this test that exit and are not waited for yet: zombies.
        let mut launcher = Command::new("true").spawn().unwrap();
        let mut helper = Command::new("true").spawn().unwrap();
        let (l, h) = (launcher.id(), helper.id());
        let (l_start, h_start) = (
            process_start_time(l).unwrap(),
            process_start_time(h).unwrap(),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(exited_unreaped(l) && exited_unreaped(h)) {
            assert!(std::time::Instant::now() < deadline, "`true` never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!still_running(l, l_start) && !still_running(h, h_start));
        let stale = root.join("vm-zombie");
        std::fs::create_dir(&stale).unwrap();
        std::fs::write(stale.join(OWNER_FILE), format!("{l} {l_start}\n")).unwrap();
        std::fs::write(stale.join(HELPERS_FILE), format!("{h} {h_start} qemu\n")).unwrap();

        let sweep = sweep_stale(&root).unwrap();
        assert_eq!(sweep.removed, vec![stale.clone()]);
        assert!(sweep.killed.is_empty(), "{sweep:?}");
        assert!(!stale.exists());
        // A live process is still running, of course.
        let me = std::process::id();
        assert!(still_running(me, process_start_time(me).unwrap()));
        launcher.wait().unwrap();
        helper.wait().unwrap();
    }

    #[test]
    fn a_state_root_others_control_is_refused_and_their_directories_are_not_swept() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        // A root others can read is refused; the same made private is accepted.
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ensure_private_state_root(&open).unwrap_err().to_string();
        assert!(e.contains("mode 0700"), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
        ensure_private_state_root(&open).unwrap();
        // Under a parent anyone may write (not sticky): refused, naming the parent.
        let shared = base.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = create_vm_dir(&shared.join("vms")).unwrap_err().to_string();
        assert!(e.contains("ancestor"), "{e}");
        // SAFETY: geteuid has no failure mode.
        if unsafe { libc::geteuid() } == 0 {
            // A directory another user planted in our root is not ours to act on.
            let planted = open.join("vm-planted");
            std::fs::create_dir(&planted).unwrap();
            std::fs::write(planted.join(OWNER_FILE), "999999 1\n").unwrap();
            std::os::unix::fs::chown(&planted, Some(4242), Some(4242)).unwrap();
            let sweep = sweep_stale(&open).unwrap();
            assert!(sweep.removed.is_empty(), "{sweep:?}");
            assert!(planted.exists());
        }
    }
}
