//! Process isolation: the enforcer's VM code path, run on a host kernel.
//!
//! For hosts without virtualization and for fast tests. The agent shares the host's
//! kernel, so this is weaker than a VM: a kernel bug is an escape. What it does:
//!
//! 1. The supervisor (this process, real root on the host) verifies the manifest,
//!    creates the agent's cgroup, and prepares *idmapped* detached mounts of the
//!    granted host directories (the agent sees each tree as its owner does; what it
//!    writes lands owned by that owner), plus single-file mounts of the entrypoint and
//!    the shim.
//! 2. It forks the *sandbox init* into fresh pid and mount namespaces. The sandbox init
//!    builds a new root on a tmpfs: the host's `/usr` and `/etc` read-only, a private
//!    `/dev` with a few device nodes, a fresh `/proc` of its pid namespace, noexec
//!    `/tmp` and `/dev/shm`, the granted mounts (always nosuid, nodev, noexec), the shim
//!    directory, and nothing else of the host. It pivots into it.
//! 3. It then enters fresh user, mount, ipc, uts and net namespaces. The supervisor maps
//!    one uid and gid into the user namespace: the agent's (1000 inside), backed by a
//!    per-session unprivileged host uid, so host-root-owned files are not the agent's
//!    and no other session shares its uid. Mounts made before are now locked: nobody in
//!    the namespace can unmount them to see what they cover. The network namespace is
//!    empty (egress arrives with the host proxy).
//! 4. As PID 1 of its namespace it runs the same session code as the VM's enforcer
//!    ([`crate::session`]): resolve the manifest, serve the broker, start the agent
//!    under every layer, and kill everything left when the agent ends.

use crate::broker::{NoApprovalChannel, DEFAULT_ASK_TIMEOUT};
use crate::cgroup::{CgroupLimits, CgroupMembership, TreeCgroup};
use crate::identity::AgentIdentity;
use crate::manifest_layers::{
    existing_paths, plan_agent, present_loaders, GuestLayout, AGENT_DEVICES,
};
use crate::pidfd::PidFd;
use crate::session::{kill_everything_else_as_init, AgentEnd, AgentSession, EXIT_AIRLOCK_ERROR};
use airlock_proto::manifest::{Access, Manifest};
use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The agent's uid and gid inside its user namespace.
pub const AGENT_NS_ID: u32 = 1000;
/// Host uids backing agents are taken from `BASE ..= BASE + SPAN - 1`, one per session.
const AGENT_HOST_ID_BASE: u32 = 2_000_000_000;
const AGENT_HOST_ID_SPAN: u32 = 100_000_000;
/// Where the shims live in the sandbox (the agent's PATH).
pub const SHIM_DIR: &str = "/run/airlock/bin";
/// Where an entrypoint from outside the host's `/usr` is mounted (one file, by name),
/// so it never lands under a writable path of the sandbox (a host `/tmp/x/tool` would
/// otherwise sit in the agent's scratch `/tmp`).
pub const ENTRYPOINT_DIR: &str = "/run/airlock/entrypoint";
/// The broker socket in the sandbox.
pub const BROKER_SOCKET: &str = crate::shim::DEFAULT_BROKER_SOCKET;
/// Host directory the sandbox init mounts its new root on, in its own private mount
/// namespace: sessions share the empty directory and never see each other's mounts, and
/// nothing needs cleaning up after a crash.
pub const ROOT_MOUNT_POINT: &str = "/run/airlock/process-root";

/// Why process isolation could not be set up. Nothing of the agent runs.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// Not running with the privileges this mode needs.
    #[error("process isolation needs root on the host (to map the agent to its own uid and idmap its mounts); running as uid {0}")]
    NotRoot(u32),
    /// A copy-on-write workspace was granted but the launcher gave no channel for its
    /// changes: they could never be merged, so the session does not start.
    #[error("a copy-on-write workspace is granted but no --scratch-socket was given to hand its changes to the launcher")]
    NoScratchChannel,
    /// The manifest names a mount whose host source was not given.
    #[error("manifest field `mounts[{index}].tag`: no host source given for tag `{tag}`")]
    NoSource {
        /// Mount index.
        index: usize,
        /// Its tag.
        tag: String,
    },
    /// A host path cannot be used.
    #[error("{what} {path}: {problem}")]
    HostPath {
        /// Which input.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A system call failed while building the sandbox.
    #[error("{what}: {source}")]
    Os {
        /// What was being done (names the path or namespace).
        what: String,
        /// Cause.
        source: io::Error,
    },
    /// A mount would cover or sit inside a path the sandbox provides itself.
    #[error("manifest field `mounts[{index}].guest_path`: {path} would cover or sit inside {reserved}, which the sandbox provides itself")]
    Reserved {
        /// Mount index.
        index: usize,
        /// The guest path.
        path: String,
        /// The reserved path it collides with.
        reserved: &'static str,
    },
    /// The cgroup could not be created.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

fn os_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> IsolationError {
    let what = what.into();
    move |source| IsolationError::Os { what, source }
}

fn check(rc: libc::c_long, what: impl Into<String>) -> Result<libc::c_long, IsolationError> {
    if rc < 0 {
        Err(IsolationError::Os {
            what: what.into(),
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(rc)
    }
}

fn cpath(p: &Path) -> Result<CString, IsolationError> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| IsolationError::HostPath {
        what: "path",
        path: p.to_path_buf(),
        problem: "contains a NUL byte".into(),
    })
}

// The new mount API (Linux 5.2+, idmapping 5.12+); libc has the syscall numbers only.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Opens a granted directory as an `O_PATH` descriptor without following any symlink
/// on the way: the launcher resolved the path the policy decided, so a symlink there
/// now means it changed since, and mounting wherever it points would mount something
/// nobody decided on.
fn open_decided_dir(path: &Path) -> Result<OwnedFd, IsolationError> {
    crate::no_symlinks::open_following_no_symlinks(path, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| IsolationError::Os {
            what: format!(
                "mount source {} (opened without following symlinks: it must be the path the policy decided)",
                path.display()
            ),
            source: e,
        })
}

/// Where a detached mount is cloned from.
enum MountSource<'a> {
    /// A path (may go through symlinks: the shim and entrypoint binaries).
    Path(&'a Path),
    /// An already opened directory.
    Fd(&'a OwnedFd, &'a Path),
}

/// A detached copy of a host path's mount (not recursive: submounts stay behind), with
/// attributes applied and optionally idmapped through `idmap`.
fn detached_mount(
    source: MountSource<'_>,
    attrs: u64,
    idmap: Option<&OwnedFd>,
) -> Result<OwnedFd, IsolationError> {
    let (dirfd, c, flags, shown) = match source {
        MountSource::Path(p) => (libc::AT_FDCWD, cpath(p)?, 0, p),
        MountSource::Fd(fd, p) => (fd.as_raw_fd(), CString::default(), libc::AT_EMPTY_PATH, p),
    };
    let what = || format!("detached mount of {}", shown.display());
    // SAFETY: open_tree with a valid descriptor or AT_FDCWD and a NUL-terminated path;
    // returns a new fd or -1.
    let fd = check(
        unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                dirfd,
                c.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | flags as libc::c_uint,
            )
        },
        what(),
    )?;
    // SAFETY: open_tree returned a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: attrs | if idmap.is_some() { MOUNT_ATTR_IDMAP } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: idmap.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let empty = c"";
    // SAFETY: mount_setattr on our detached mount fd with a live, correctly sized attr.
    check(
        unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        },
        format!("{} (setting attributes/idmap)", what()),
    )?;
    Ok(fd)
}

/// Attaches a detached mount at `target` (which must exist).
fn attach(mount: &OwnedFd, target: &Path) -> Result<(), IsolationError> {
    let t = cpath(target)?;
    let empty = c"";
    // SAFETY: move_mount of our detached mount fd onto a valid NUL-terminated path.
    check(
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mount.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        },
        format!("attaching a mount at {}", target.display()),
    )?;
    Ok(())
}

fn read_byte(fd: &OwnedFd) -> io::Result<()> {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads one byte into a live buffer.
        match unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) } {
            1 => return Ok(()),
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

fn write_byte(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: writes one byte from a static buffer.
    if unsafe { libc::write(fd.as_raw_fd(), b"x".as_ptr().cast(), 1) } == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), IsolationError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into a live array.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long,
        "pipe",
    )?;
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes the uid and gid maps of `pid`'s user namespace (one line each).
fn write_id_maps(pid: libc::pid_t, uid: (u32, u32), gid: (u32, u32)) -> Result<(), IsolationError> {
    for (file, (inner, outer)) in [("uid_map", uid), ("gid_map", gid)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, format!("{inner} {outer} 1\n"))
            .map_err(os_err(format!("writing {path} (`{inner} {outer} 1`)")))?;
    }
    Ok(())
}

/// A user namespace whose only mapping is `owner → agent host id` (uid and gid), used to
/// idmap a granted tree: files its owner owns appear owned by the agent, and files the
/// agent creates are stored as the owner's. Made by a throwaway child.
fn idmap_userns(owner: (u32, u32), agent_host: u32) -> Result<OwnedFd, IsolationError> {
    let (go_r, go_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    // SAFETY: the child only calls unshare, write, read and _exit (async-signal-safe).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork for an idmap user namespace")(
            io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        // SAFETY: see above. The child's copies of the parent's pipe ends are closed
        // first, or its read would never see the parent close `go`.
        unsafe {
            libc::close(go_w.as_raw_fd());
            libc::close(ready_r.as_raw_fd());
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            if ok {
                libc::write(ready_w.as_raw_fd(), b"x".as_ptr().cast(), 1);
            }
            let mut b = 0u8;
            libc::read(go_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(if ok { 0 } else { 1 })
        }
    }
    drop(ready_w);
    drop(go_r);
    let result = (|| {
        read_byte(&ready_r).map_err(os_err("creating an idmap user namespace"))?;
        write_id_maps(pid, (owner.0, agent_host), (owner.1, agent_host))?;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .map_err(os_err("opening the idmap user namespace"))?;
        Ok(OwnedFd::from(ns))
    })();
    drop(go_w);
    let mut st = 0;
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    result
}

/// What the sandbox init mounts, prepared by the supervisor.
struct RootPlan {
    /// Mount point of the new root on the host (empty directory).
    root: PathBuf,
    /// Granted trees: (guest path, detached idmapped mount).
    mounts: Vec<(PathBuf, OwnedFd)>,
    /// Copy-on-write workspaces: (tag, guest path, detached read-only idmapped lower).
    workspaces: Vec<(String, PathBuf, OwnedFd)>,
    /// The session's scratch tmpfs (a detached mount): the workspaces' upper layers,
    /// `/tmp` and `/dev/shm`, all under one `disk_mib`.
    scratch: OwnedFd,
    /// Where the sandbox init says how the agent ended (`exited N`, `signaled N`,
    /// `wall-time`): the launcher merges only a command that exited. Kept off the
    /// scratch, which the agent may have filled.
    end_channel: Option<OwnedFd>,
    /// Single files: (path in the sandbox, detached mount), e.g. the entrypoint.
    files: Vec<(PathBuf, OwnedFd)>,
    /// Names of the tools to give shims.
    tools: Vec<String>,
    /// The launcher's `Host` service and the secret for it (see
    /// [`ProcessSession::host_channel`]).
    host_channel: Option<(OwnedFd, Vec<u8>)>,
    /// Where the egress funnel hands each connection to the launcher.
    egress_socket: Option<OwnedFd>,
    /// The sandbox's stdio is a fresh terminal's slave (see [`ProcessSession::tty`]).
    tty: bool,
}

const SYSTEM_DIRS: [&str; 2] = ["usr", "etc"];
/// Guest paths the sandbox root provides; a granted mount may not cover them (a rw
/// mount over /usr would let the agent replace the loader) nor sit inside them.
const TOP_LEVEL_ALIASES: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn mount(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: nix::mount::MsFlags,
    data: Option<&str>,
) -> Result<(), IsolationError> {
    nix::mount::mount(src, target, fstype, flags, data).map_err(|e| IsolationError::Os {
        what: format!(
            "mount {} on {} ({flags:?})",
            src.unwrap_or("-"),
            target.display()
        ),
        source: e.into(),
    })
}

fn mkdir_p(p: &Path) -> Result<(), IsolationError> {
    std::fs::create_dir_all(p).map_err(os_err(format!("mkdir {}", p.display())))
}

/// Binds `src` read-only (nosuid, nodev) at `target`.
fn bind_read_only(src: &Path, target: &Path) -> Result<(), IsolationError> {
    use nix::mount::MsFlags as F;
    mount(src.to_str(), target, None, F::MS_BIND, None)?;
    mount(
        None,
        target,
        None,
        F::MS_REMOUNT | F::MS_BIND | F::MS_RDONLY | F::MS_NOSUID | F::MS_NODEV,
        None,
    )
}

/// Mounts the scratch's `/tmp` and `/dev/shm` and each copy-on-write workspace in the
/// new root `r`: the scratch and each lower layer are attached at a staging directory,
/// the scratch directories are bound and the overlays mounted on their guest paths,
/// and the staging attachments are detached again (binds and overlays keep their own
/// references), so the agent's root holds neither the host tree nor the upper layers.
fn mount_scratch_and_workspaces(
    r: &Path,
    scratch: &OwnedFd,
    workspaces: &[(String, PathBuf, OwnedFd)],
) -> Result<(), IsolationError> {
    use nix::mount::MntFlags;
    let staging = r.join(".airlock-layers");
    let scratch_at = staging.join("scratch");
    mkdir_p(&scratch_at)?;
    attach(scratch, &scratch_at)?;
    let mut attached = vec![scratch_at.clone()];
    let scratch_mounts: Vec<(&str, PathBuf)> = crate::workspace_layer::SCRATCH_SUBDIRS
        .iter()
        .map(|(name, at)| (*name, r.join(at.trim_start_matches('/'))))
        .collect();
    crate::workspace_layer::bind_scratch_dirs(&scratch_at, &scratch_mounts).map_err(|e| {
        IsolationError::Os {
            what: "the session's scratch".into(),
            source: io::Error::other(e.to_string()),
        }
    })?;
    for (tag, guest, lower) in workspaces {
        let lower_at = staging.join("lower").join(tag);
        mkdir_p(&lower_at)?;
        attach(lower, &lower_at)?;
        attached.push(lower_at.clone());
        let target = r.join(guest.strip_prefix("/").unwrap_or(guest));
        mkdir_p(&target)?;
        crate::workspace_layer::mount_overlay(
            tag,
            &lower_at,
            &scratch_at,
            &target.to_string_lossy(),
        )
        .map_err(|e| IsolationError::Os {
            what: format!("the copy-on-write workspace at {}", guest.display()),
            source: io::Error::other(e.to_string()),
        })?;
    }
    for at in attached.iter().rev() {
        nix::mount::umount2(at, MntFlags::MNT_DETACH).map_err(|e| IsolationError::Os {
            what: format!("detaching {}", at.display()),
            source: e.into(),
        })?;
    }
    std::fs::remove_dir_all(&staging).map_err(os_err(format!("removing {}", staging.display())))
}

// The filesystem-context mount API (Linux 5.2+).
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// A detached tmpfs sized by `disk_mib` in bytes and inodes: the workspaces' scratch.
fn scratch_tmpfs(disk_mib: u64) -> Result<OwnedFd, IsolationError> {
    let what = "the workspaces' scratch tmpfs";
    // SAFETY: fsopen with a NUL-terminated filesystem name; returns a new fd or -1.
    let fs = check(
        unsafe { libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), FSOPEN_CLOEXEC) },
        format!("{what} (fsopen)"),
    )?;
    // SAFETY: fsopen returned a new descriptor we own.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    let size = CString::new(format!("{}m", disk_mib.max(1))).expect("no NUL");
    let inodes =
        CString::new(crate::workspace_layer::scratch_inodes(disk_mib).to_string()).expect("no NUL");
    for (key, value) in [
        (c"size", size.as_c_str()),
        (c"nr_inodes", inodes.as_c_str()),
        (c"mode", c"0700"),
    ] {
        // SAFETY: fsconfig on our fs context with NUL-terminated key and value.
        check(
            unsafe {
                libc::syscall(
                    libc::SYS_fsconfig,
                    fs.as_raw_fd(),
                    FSCONFIG_SET_STRING,
                    key.as_ptr(),
                    value.as_ptr(),
                    0,
                )
            },
            format!(
                "{what} ({} = {})",
                key.to_string_lossy(),
                value.to_string_lossy()
            ),
        )?;
    }
    // SAFETY: fsconfig command on our fs context; no pointers.
    check(
        unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        },
        format!("{what} (create)"),
    )?;
    // SAFETY: fsmount on our created fs context; returns a new fd or -1.
    let mnt = check(
        unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                fs.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
            )
        },
        format!("{what} (fsmount)"),
    )?;
    // SAFETY: fsmount returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as RawFd) })
}

/// Sends `fd` over the Unix socket `socket` (`SCM_RIGHTS`).
fn send_fd(socket: &OwnedFd, fd: &OwnedFd) -> Result<(), IsolationError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let payload = [io::IoSlice::new(b"s")];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &payload,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| IsolationError::Os {
        what: "handing the workspaces' scratch to the launcher".into(),
        source: e.into(),
    })?;
    Ok(())
}

/// In the sandbox init (new mount and pid namespaces, still host root): builds the new
/// root and pivots into it.
fn build_root_and_pivot(plan: &RootPlan) -> Result<(), IsolationError> {
    use nix::mount::MsFlags as F;
    let r = &plan.root;
    mount(None, Path::new("/"), None, F::MS_REC | F::MS_PRIVATE, None)?;
    mount(
        Some("tmpfs"),
        r,
        Some("tmpfs"),
        F::MS_NOSUID | F::MS_NODEV,
        Some("mode=0755,size=16m"),
    )?;
    for d in SYSTEM_DIRS {
        mkdir_p(&r.join(d))?;
        bind_read_only(&Path::new("/").join(d), &r.join(d))?;
    }
    // Merged-/usr hosts alias /bin, /lib… to /usr: the same symlinks; other hosts: binds.
    for name in TOP_LEVEL_ALIASES {
        let host = Path::new("/").join(name);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&host)
                    .map_err(os_err(format!("readlink {}", host.display())))?;
                std::os::unix::fs::symlink(&target, r.join(name))
                    .map_err(os_err(format!("symlink {name}")))?;
            }
            Ok(m) if m.is_dir() => {
                mkdir_p(&r.join(name))?;
                bind_read_only(&host, &r.join(name))?;
            }
            _ => {}
        }
    }
    let dev = r.join("dev");
    mkdir_p(&dev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        F::MS_NOSUID | F::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let node = dev.join(name);
        std::fs::File::create(&node).map_err(os_err(format!("creating {}", node.display())))?;
        mount(host.to_str(), &node, None, F::MS_BIND, None)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(os_err(format!("symlink /dev/{link}")))?;
    }
    for dir in ["tmp", "dev/shm"] {
        mkdir_p(&r.join(dir))?;
    }
    let proc_dir = r.join("proc");
    mkdir_p(&proc_dir)?;
    // hidepid: the agent sees only its own uid's processes (not the enforcer, PID 1).
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        F::MS_NOSUID | F::MS_NODEV | F::MS_NOEXEC,
        Some("hidepid=invisible"),
    )?;
    for (guest, fd) in &plan.mounts {
        let target = r.join(guest.strip_prefix("/").unwrap_or(guest));
        mkdir_p(&target)?;
        attach(fd, &target)?;
    }
    mount_scratch_and_workspaces(r, &plan.scratch, &plan.workspaces)?;
    let shim_dir = r.join(SHIM_DIR.trim_start_matches('/'));
    mkdir_p(&shim_dir)?;
    for (path, fd) in &plan.files {
        let target = r.join(path.strip_prefix("/").unwrap_or(path));
        if let Some(parent) = target.parent() {
            mkdir_p(parent)?;
        }
        if !target.exists() {
            std::fs::File::create(&target)
                .map_err(os_err(format!("creating {}", target.display())))?;
        }
        attach(fd, &target)?;
    }
    for tool in &plan.tools {
        std::os::unix::fs::symlink("airlock-shim", shim_dir.join(tool))
            .map_err(os_err(format!("shim for `{tool}`")))?;
    }
    // The shim directory read-only (recursive: the shim file is a mount inside it).
    mount(
        shim_dir.to_str(),
        &shim_dir,
        None,
        F::MS_BIND | F::MS_REC,
        None,
    )?;
    mount(
        None,
        &shim_dir,
        None,
        F::MS_REMOUNT | F::MS_BIND | F::MS_RDONLY | F::MS_NOSUID | F::MS_NODEV,
        None,
    )?;
    std::env::set_current_dir(r).map_err(os_err(format!("chdir {}", r.display())))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| IsolationError::Os {
        what: format!("pivot_root into {}", r.display()),
        source: e.into(),
    })?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH).map_err(|e| IsolationError::Os {
        what: "detaching the host's root".into(),
        source: e.into(),
    })?;
    std::env::set_current_dir("/").map_err(os_err("chdir /"))?;
    Ok(())
}

/// The image layout of the process sandbox's root (see [`build_root_and_pivot`]).
pub fn process_layout() -> GuestLayout {
    GuestLayout {
        tool_dirs: existing_paths(&["/usr/local/bin", "/usr/bin", "/usr/sbin"]),
        shim_dir: PathBuf::from(SHIM_DIR),
        loaders: present_loaders(),
        // Libraries and data, never the bin dirs or /usr/lib/git-core and the like:
        // what the agent can read, it can run through the loader.
        system_read_only: existing_paths(&[
            "/etc",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib/locale",
            "/usr/share",
            "/proc",
        ]),
        scratch: existing_paths(&["/tmp", "/dev/shm"]),
        devices: existing_paths(&AGENT_DEVICES),
        agent: AgentIdentity {
            uid: AGENT_NS_ID,
            gid: AGENT_NS_ID,
            groups: vec![],
        },
        nofile: 4096,
        external_entrypoints: Some(PathBuf::from(ENTRYPOINT_DIR)),
    }
}

/// Inputs of one process-isolated session.
pub struct ProcessSession {
    /// The verified manifest.
    pub manifest: Manifest,
    /// Host source of each mount tag.
    pub sources: Vec<(String, PathBuf)>,
    /// The shim binary on the host.
    pub shim: PathBuf,
    /// Where to send the scratch tmpfs (a detached mount descriptor, `SCM_RIGHTS`) that
    /// holds the copy-on-write workspaces' upper layers: the launcher reads them after
    /// the session for its merge-back gate. Without it, writable grants are refused.
    pub scratch_socket: Option<OwnedFd>,
    /// A connected socket the launcher serves its `Host` service on, and the session's
    /// secret for it: the broker's run-time asks go there. Without it, asks are denied
    /// ("no approval channel").
    pub host_channel: Option<(OwnedFd, Vec<u8>)>,
    /// A connected socket the launcher's egress service reads connections from: the
    /// funnel sends one end of a fresh socket pair per connection (`SCM_RIGHTS`),
    /// authenticated with the `host_channel` secret. Required when egress is granted.
    pub egress_socket: Option<OwnedFd>,
    /// Give the agent a terminal of its own instead of the enforcer's stdio: a fresh
    /// pseudo-terminal whose slave is the agent's stdin, stdout, stderr and controlling
    /// terminal (it leads its own session), relayed to and from the enforcer's stdin and
    /// stdout, which is put in raw mode while the session runs when it is a terminal;
    /// its size follows the enforcer's terminal (SIGWINCH). The caller's terminal then
    /// never reaches the agent: not its settings, not `/dev/tty`, not its session.
    pub tty: bool,
}

/// The agent's terminal under [`ProcessSession::tty`], on the supervisor's side.
struct Relay {
    master: OwnedFd,
    slave: Option<OwnedFd>,
    /// The enforcer's stdin terminal settings, restored when the session ends.
    saved: Option<libc::termios>,
    /// Input read from stdin, not yet taken by the master.
    to_agent: Vec<u8>,
    stdin_open: bool,
    master_open: bool,
    /// What of the agent's output may reach the caller's terminal.
    escapes: airlock_proto::terminal_escapes::EscapeFilter,
}

/// The size of the enforcer's stdin terminal, if it is one.
fn stdin_window() -> Option<airlock_proto::pb::WindowSize> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one live winsize.
    if unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } != 0 {
        return None;
    }
    Some(airlock_proto::pb::WindowSize {
        rows: ws.ws_row.into(),
        cols: ws.ws_col.into(),
    })
}

/// Copies all of `data` to `fd` (blocking); `false` when it cannot take more.
fn copy_all(fd: libc::c_int, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: writes from a live buffer.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n > 0 {
            data = &data[n as usize..];
        } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            return false;
        }
    }
    true
}

impl Relay {
    /// A fresh terminal from the host's devpts, sized as the enforcer's own.
    fn open() -> Result<Relay, IsolationError> {
        let (master, slave) =
            airlock_proto::pty::open_pty("/dev/ptmx", stdin_window().as_ref(), true)
                .map_err(os_err("allocating the agent's terminal"))?;
        Ok(Relay {
            master,
            slave: Some(slave),
            saved: None,
            to_agent: Vec::new(),
            stdin_open: true,
            master_open: true,
            escapes: airlock_proto::terminal_escapes::EscapeFilter::new(),
        })
    }

    /// In the forked sandbox init: the slave becomes its stdin, stdout and stderr (the
    /// agent's, later), the master is not kept.
    fn become_stdio_of_child(&self) -> io::Result<()> {
        let slave = self
            .slave
            .as_ref()
            .expect("the slave is kept until the fork");
        for target in 0..3 {
            // SAFETY: dup2 of a descriptor we hold onto a standard one.
            if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: closes this process's copies; the parent keeps its own.
        unsafe {
            libc::close(slave.as_raw_fd());
            libc::close(self.master.as_raw_fd());
        }
        Ok(())
    }

    /// In the supervisor, after the fork: the slave is the sandbox's alone, and a
    /// terminal stdin goes into raw mode (keys reach the agent's terminal as typed;
    /// its line discipline, not the caller's, echoes and interrupts).
    fn start(&mut self) {
        self.slave = None;
        // SAFETY: termios is plain data; tcgetattr fills it, tcsetattr reads it.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::isatty(0) == 1 && libc::tcgetattr(0, &mut t) == 0 {
                self.saved = Some(t);
                libc::cfmakeraw(&mut t);
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }

    /// The descriptors to poll now: stdin while no input waits for the agent, the
    /// master while it is open (writable too while input waits).
    fn pollfds(&self) -> Vec<libc::pollfd> {
        let mut fds = Vec::new();
        if self.stdin_open && self.to_agent.is_empty() {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if self.master_open {
            let out = if self.to_agent.is_empty() {
                0
            } else {
                libc::POLLOUT
            };
            fds.push(libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN | out,
                revents: 0,
            });
        }
        fds
    }

    /// Moves what `poll` found ready: stdin to the master (at most one read waits at a
    /// time: nothing is buffered beyond it), the master's output to stdout.
    fn pump(&mut self, ready: &[libc::pollfd]) {
        let mut buf = [0u8; 16 * 1024];
        for p in ready.iter().filter(|p| p.revents != 0) {
            if p.fd == 0 {
                // SAFETY: reads into a live buffer.
                let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
                match n {
                    n if n > 0 => self.to_agent.extend_from_slice(&buf[..n as usize]),
                    _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                    // End of the caller's input: nothing is closed (that would hang
                    // up the agent's terminal), as in a VM.
                    _ => self.stdin_open = false,
                }
                continue;
            }
            if p.revents & libc::POLLOUT != 0 && !self.to_agent.is_empty() {
                // SAFETY: writes from a live buffer (the master is non-blocking).
                let n = unsafe {
                    libc::write(p.fd, self.to_agent.as_ptr().cast(), self.to_agent.len())
                };
                if n > 0 {
                    self.to_agent.drain(..n as usize);
                }
            }
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                self.drain_output();
            }
        }
    }

    /// Copies what the master has to stdout; at its end (EIO: no slave left) the
    /// master is done.
    fn drain_output(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            // SAFETY: reads into a live buffer (the master is non-blocking).
            let n =
                unsafe { libc::read(self.master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                // Our stdout is the caller's terminal: what reaches past its screen
                // (clipboard, file transfer, answer-backs) stays out.
                let chunk = self.escapes.filtered(&buf[..n as usize]);
                if !copy_all(1, &chunk) {
                    self.master_open = false;
                    return;
                }
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) if n < 0 => return,
                Some(libc::EINTR) if n < 0 => continue,
                _ => {
                    self.master_open = false;
                    return;
                }
            }
        }
    }

    /// After the sandbox is gone: the agent's last output, for at most `grace` (a
    /// process it left behind may hold the terminal open).
    fn finish(&mut self, grace: std::time::Duration) {
        let deadline = std::time::Instant::now() + grace;
        while self.master_open {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let mut p = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
            self.drain_output();
        }
    }

    /// The enforcer's terminal changed size: so does the agent's.
    fn follow_size(&self) {
        if let Some(size) = stdin_window() {
            let _ = airlock_proto::pty::set_window_size(&self.master, &size);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(t) = self.saved.take() {
            let _ = copy_all(1, airlock_proto::terminal_escapes::DISPLAY_MODES_OFF);
            // SAFETY: restores the settings tcgetattr read.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// Host paths the sandbox root already holds (the entrypoint needs no extra mount there).
fn inside_system_dirs(p: &Path) -> bool {
    SYSTEM_DIRS
        .iter()
        .any(|d| p.starts_with(Path::new("/").join(d)))
}

fn agent_host_id(session_id: &str) -> u32 {
    let n = u32::from_str_radix(session_id.get(..8).unwrap_or("0"), 16).unwrap_or(0);
    AGENT_HOST_ID_BASE + n % AGENT_HOST_ID_SPAN
}

impl ProcessSession {
    /// Runs the session to the end; returns the exit status to exit with. Errors are
    /// airlock's own (the caller exits [`EXIT_AIRLOCK_ERROR`]).
    pub fn run(self) -> Result<i32, IsolationError> {
        // SAFETY: geteuid has no failure mode.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(IsolationError::NotRoot(euid));
        }
        let m = &self.manifest;
        let agent_host = agent_host_id(&m.session_id);

        // Prepare everything that can fail before any namespace exists.
        let mut mounts = Vec::new();
        let mut workspaces = Vec::new();
        for (index, mount) in m.mounts.iter().enumerate() {
            let guest = Path::new(&mount.guest_path);
            if let Some(r) = crate::manifest_layers::reserved_guest_path(guest) {
                return Err(IsolationError::Reserved {
                    index,
                    path: mount.guest_path.clone(),
                    reserved: r,
                });
            }
            let source = self
                .sources
                .iter()
                .find(|(t, _)| t == &mount.tag)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| IsolationError::NoSource {
                    index,
                    tag: mount.tag.clone(),
                })?;
            let dir = open_decided_dir(&source)?;
            let meta = std::fs::File::from(dir.try_clone().map_err(os_err("dup"))?)
                .metadata()
                .map_err(|e| IsolationError::HostPath {
                    what: "mount source",
                    path: source.clone(),
                    problem: e.to_string(),
                })?;
            let userns = idmap_userns((meta.uid(), meta.gid()), agent_host)?;
            let mut attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
            // A copy-on-write workspace's host directory is only ever its lower layer.
            if mount.mode != Access::RwLive {
                attrs |= MOUNT_ATTR_RDONLY;
            }
            let fd = detached_mount(MountSource::Fd(&dir, &source), attrs, Some(&userns))?;
            let guest = PathBuf::from(&mount.guest_path);
            if mount.mode == Access::Rw {
                workspaces.push((mount.tag.clone(), guest, fd));
            } else {
                mounts.push((guest, fd));
            }
        }
        let scratch = scratch_tmpfs(m.resources.disk_mib)?;
        if !workspaces.is_empty() {
            let socket = self
                .scratch_socket
                .as_ref()
                .ok_or(IsolationError::NoScratchChannel)?;
            send_fd(socket, &scratch)?;
        }
        let file_attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
        let shim_meta = std::fs::metadata(&self.shim).map_err(|e| IsolationError::HostPath {
            what: "shim",
            path: self.shim.clone(),
            problem: e.to_string(),
        })?;
        if !shim_meta.is_file() {
            return Err(IsolationError::HostPath {
                what: "shim",
                path: self.shim.clone(),
                problem: "is not a file".into(),
            });
        }
        let mut files = vec![(
            Path::new(SHIM_DIR).join("airlock-shim"),
            detached_mount(MountSource::Path(&self.shim), file_attrs, None)?,
        )];
        let argv0 = Path::new(&m.command.argv[0]);
        let in_a_mount = m.mounts.iter().any(|g| argv0.starts_with(&g.guest_path));
        if argv0.is_absolute() && !inside_system_dirs(argv0) && !in_a_mount {
            if !argv0.is_file() {
                return Err(IsolationError::HostPath {
                    what: "manifest field `command.argv[0]`:",
                    path: argv0.to_path_buf(),
                    problem: "does not exist or is not a file".into(),
                });
            }
            let name = argv0.file_name().unwrap_or_default();
            files.push((
                Path::new(ENTRYPOINT_DIR).join(name),
                detached_mount(MountSource::Path(argv0), file_attrs, None)?,
            ));
        }
        let cgroup = TreeCgroup::create_on_host(
            &format!("s{}", m.session_id),
            &CgroupLimits::for_resources(&m.resources)?,
        )?;
        let membership = cgroup.membership().map_err(os_err("opening the cgroup"));
        let result = membership.and_then(|membership| {
            std::fs::create_dir_all(ROOT_MOUNT_POINT)
                .map_err(os_err(format!("mkdir {ROOT_MOUNT_POINT}")))?;
            let plan = RootPlan {
                root: PathBuf::from(ROOT_MOUNT_POINT),
                mounts,
                workspaces,
                scratch,
                end_channel: match &self.scratch_socket {
                    Some(s) => Some(
                        s.try_clone()
                            .map_err(os_err("dup of the scratch channel"))?,
                    ),
                    None => None,
                },
                files,
                tools: m.tools.iter().map(|t| t.program.clone()).collect(),
                host_channel: match &self.host_channel {
                    Some((s, secret)) => Some((
                        s.try_clone().map_err(os_err("dup of the host channel"))?,
                        secret.clone(),
                    )),
                    None => None,
                },
                egress_socket: match &self.egress_socket {
                    Some(s) => Some(s.try_clone().map_err(os_err("dup of the egress socket"))?),
                    None => None,
                },
                tty: self.tty,
            };
            self.supervise(plan, agent_host, Arc::new(membership))
        });
        let destroyed = cgroup.destroy();
        let code = result?;
        destroyed?;
        Ok(code)
    }

    /// Forks the sandbox init, maps its ids, forwards termination and waits for it.
    fn supervise(
        &self,
        plan: RootPlan,
        agent_host: u32,
        membership: Arc<CgroupMembership>,
    ) -> Result<i32, IsolationError> {
        let (mapped_r, mapped_w) = pipe()?;
        let (unshared_r, unshared_w) = pipe()?;
        // Termination requests reach the supervisor through a signalfd; the sandbox init
        // unblocks them for its own children.
        // Dispositions are inherited across exec: the launcher may have ignored SIGINT
        // (it belongs to the agent) and the job-control stops; the agent must start
        // with the defaults.
        for s in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ] {
            // SAFETY: restores a default disposition; no handler involved.
            unsafe { libc::signal(s, libc::SIG_DFL) };
        }
        let mut mask = nix::sys::signal::SigSet::empty();
        for s in [
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::Signal::SIGHUP,
            nix::sys::signal::Signal::SIGINT,
        ] {
            mask.add(s);
        }
        let mut relay = if plan.tty {
            // The enforcer's terminal resizing comes through the signalfd too.
            mask.add(nix::sys::signal::Signal::SIGWINCH);
            Some(Relay::open()?)
        } else {
            None
        };
        mask.thread_block()
            .map_err(|e| os_err("blocking signals")(e.into()))?;
        let sfd = nix::sys::signalfd::SignalFd::with_flags(
            &mask,
            nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
        )
        .map_err(|e| os_err("signalfd")(e.into()))?;
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
            .map_err(|e| os_err("unshare(CLONE_NEWPID)")(e.into()))?;
        // SAFETY: fork; the child runs `sandbox_init`, which ends the process.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os_err("fork of the sandbox init")(
                io::Error::last_os_error(),
            ));
        }
        if pid == 0 {
            drop(mapped_w);
            drop(unshared_r);
            if let Some(relay) = &relay {
                if let Err(e) = relay.become_stdio_of_child() {
                    eprintln!("airlock: process isolation: the agent's terminal: {e}");
                    std::process::exit(EXIT_AIRLOCK_ERROR);
                }
            }
            let _ = mask.thread_unblock();
            let code = sandbox_init(&self.manifest, &plan, membership, &unshared_w, &mapped_r);
            std::process::exit(code);
        }
        drop(mapped_r);
        drop(unshared_w);
        drop(plan);
        if let Some(relay) = relay.as_mut() {
            relay.start();
        }
        let kill_init = || {
            // SAFETY: kills our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        };
        let mapped = (|| {
            read_byte(&unshared_r).map_err(os_err("sandbox init setup (see its error above)"))?;
            write_id_maps(pid, (AGENT_NS_ID, agent_host), (AGENT_NS_ID, agent_host))?;
            write_byte(&mapped_w).map_err(os_err("releasing the sandbox init"))
        })();
        if let Err(e) = mapped {
            kill_init();
            let mut st = 0;
            // SAFETY: reaps our own child.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            return Err(e);
        }
        // Our unreaped child: the pidfd names it.
        let pidfd = PidFd::open(pid).map_err(os_err("pidfd_open of the sandbox init"))?;
        let mut terminated = None;
        loop {
            let mut fds = vec![
                libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // The agent's terminal is relayed here: no thread can start in a process
            // that unshared its pid namespace.
            if let Some(relay) = &relay {
                fds.extend(relay.pollfds());
            }
            // SAFETY: live pollfds, as many as passed.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                kill_init();
                break;
            }
            if fds[1].revents & libc::POLLIN != 0 {
                if let Ok(Some(info)) = sfd.read_signal() {
                    match info.ssi_signo as i32 {
                        // The launcher passes its terminal's interrupt on (we lead a
                        // session of our own, with no terminal): the agent's, through
                        // its init, which forwards it.
                        libc::SIGINT => {
                            // SAFETY: signals our own child.
                            unsafe { libc::kill(pid, libc::SIGINT) };
                        }
                        libc::SIGWINCH => {
                            if let Some(relay) = &relay {
                                relay.follow_size();
                            }
                        }
                        // SIGTERM/SIGHUP are for the session as a whole.
                        signo => {
                            terminated = Some(signo);
                            kill_init();
                        }
                    }
                }
            }
            if let Some(relay) = relay.as_mut() {
                relay.pump(&fds[2..]);
            }
            if fds[0].revents & libc::POLLIN != 0 {
                break;
            }
        }
        let mut st = 0;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        // The agent's last output first, then the caller's terminal as it was.
        if let Some(mut relay) = relay.take() {
            relay.finish(std::time::Duration::from_secs(1));
        }
        if let Some(sig) = terminated {
            return Ok(AgentEnd::Signaled(sig).exit_code());
        }
        Ok(AgentEnd::from_wait_status(st).exit_code())
    }
}

/// PID 1 of the sandbox: builds the root, enters the agent's namespaces, runs the
/// session. Returns the exit status.
fn sandbox_init(
    manifest: &Manifest,
    plan: &RootPlan,
    membership: Arc<CgroupMembership>,
    unshared: &OwnedFd,
    mapped: &OwnedFd,
) -> i32 {
    // SAFETY: prctl with integer arguments: die with the supervisor.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("airlock: process isolation: {e}; the agent did not run");
        EXIT_AIRLOCK_ERROR
    };
    if let Err(e) = crate::session::forward_interrupts_to_the_agent() {
        return fail(&format!("a SIGINT handler: {e}"));
    }
    // The sandbox init serves the agent's tool calls (the broker's threads): it counts
    // against the session's limits like the agent and the tools do.
    if let Err(e) = membership.join_on_current_process() {
        return fail(&format!("joining the session's cgroup: {e}"));
    }
    use nix::sched::CloneFlags as C;
    if let Err(e) = nix::sched::unshare(C::CLONE_NEWNS) {
        return fail(&format!("unshare(CLONE_NEWNS): {e}"));
    }
    if let Err(e) = build_root_and_pivot(plan) {
        return fail(&e);
    }
    if let Err(e) = nix::sched::unshare(
        C::CLONE_NEWUSER | C::CLONE_NEWNS | C::CLONE_NEWIPC | C::CLONE_NEWUTS | C::CLONE_NEWNET,
    ) {
        return fail(&format!("unshare(user, mount, ipc, uts, net): {e}"));
    }
    if write_byte(unshared).is_err() || read_byte(mapped).is_err() {
        return fail(&"the supervisor did not map the agent's ids");
    }
    let _ = nix::unistd::sethostname("airlock");
    // The network namespace is empty; with egress granted, the funnel is its only way
    // out (set up before the agent exists, or the session does not start).
    if crate::egress_funnel::egress_granted(manifest) {
        let (Some(socket), Some((_, secret))) = (&plan.egress_socket, &plan.host_channel) else {
            return fail(
                &"egress is granted but the launcher gave no --egress-socket and --host-socket",
            );
        };
        let control = match socket.try_clone() {
            Ok(s) => std::os::unix::net::UnixStream::from(s),
            Err(e) => return fail(&format!("dup of the egress socket: {e}")),
        };
        if let Err(e) = crate::egress_funnel::start_egress_funnel_in_current_netns(
            manifest,
            secret.clone(),
            crate::egress_funnel::HostDialer::Handed(std::sync::Mutex::new(control)),
        ) {
            return fail(&e);
        }
    }
    let layout = process_layout();
    let mut agent = match plan_agent(manifest, &layout) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    agent.sandbox.cgroup = Some(Arc::clone(&membership));
    agent.tool_sandboxes.join_cgroup(&membership);
    let session = AgentSession {
        manifest,
        plan: agent,
        layout: &layout,
        broker_socket: PathBuf::from(BROKER_SOCKET),
        asker: match &plan.host_channel {
            Some((socket, secret)) => match socket.try_clone() {
                Ok(s) => Arc::new(crate::host_asker::HostAsker::over_stream(
                    manifest.session_id.clone(),
                    secret.clone(),
                    std::os::unix::net::UnixStream::from(s),
                )),
                Err(_) => Arc::new(NoApprovalChannel),
            },
            None => Arc::new(NoApprovalChannel),
        },
        ask_timeout: DEFAULT_ASK_TIMEOUT,
        on_terminal: plan.tty,
    };
    let end = session.run();
    kill_everything_else_as_init();
    if let Some(line) = crate::egress_funnel::dropped_summary() {
        eprintln!("airlock: {line}");
    }
    if let (Ok(end), Some(channel)) = (&end, &plan.end_channel) {
        let text = match end {
            AgentEnd::Exited(c) => format!("exited {c}"),
            AgentEnd::Signaled(s) => format!("signaled {s}"),
            AgentEnd::WallTimeExceeded => "wall-time".to_string(),
        };
        if let Err(e) = nix::unistd::write(channel, text.as_bytes()) {
            eprintln!("airlock: process isolation: telling the launcher how the agent ended: {e}");
        }
    }
    match end {
        Ok(AgentEnd::WallTimeExceeded) => {
            eprintln!(
                "airlock: the agent ran out of its wall time ({} s) and was killed",
                manifest.resources.wall_time_secs
            );
            AgentEnd::WallTimeExceeded.exit_code()
        }
        Ok(end) => end.exit_code(),
        Err(e) => fail(&e),
    }
}

/// Reads all of a descriptor handed over by the launcher (envelope, public key).
pub fn read_inherited_fd(fd: RawFd, max: u64) -> io::Result<Vec<u8>> {
    // SAFETY: the launcher passed this descriptor to us for reading; we take ownership.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("fd {fd}: more than {max} bytes"),
        ));
    }
    Ok(buf)
}
