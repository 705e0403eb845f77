//! The enforcer as PID 1 of the guest: the system it needs before any manifest.
//!
//! Mounts `/proc`, `/sys`, `/dev` and `/run`, loads the image's kernel modules in the
//! order the image builder computed from their own dependencies, then — for an image
//! with a root filesystem (`debian`) — switches into it, and mounts a noexec `/tmp` and
//! the cgroup2 hierarchy (the enforcer owns every controller inside the VM). Any
//! failure is fatal: the VM powers off with the reason on the console, and the host
//! reports it naming the serial log.
//!
//! The switch: the kernel command line names the device (`airlock.root=/dev/vda`) and
//! its filesystem (`airlock.rootfstype=erofs`); the initramfs holds the rootfs's digest
//! (inside what the image id covers), and the two must agree — a rootfs image booted
//! without a root, or a root named for an image without one, powers off. The device is
//! mounted read-only, a tmpfs-backed overlay makes it writable for this boot only, the
//! launcher's key, the image id and the shim are copied from the initramfs into the
//! overlay (the rootfs itself must not provide them), and the API filesystems are moved
//! in before the overlay is moved onto `/` and chrooted into (an initramfs cannot be
//! pivot_root'ed away).

use airlock_proto::image_layout::{parse_added_files_list, ADDED_FILES_LIST};
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The module load order file in the image's module directory.
pub const MODULE_ORDER_FILE: &str = "airlock-load-order";
/// The egress funnel's modules, loaded when a session is granted egress (the image
/// builder's `EGRESS_MODULE_ORDER_FILE`).
pub const EGRESS_MODULE_ORDER_FILE: &str = "airlock-egress-load-order";

/// Why the guest could not be brought up. The VM powers off.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("init: mount {fstype} on {target}: {source}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// A module could not be loaded.
    #[error("init: loading kernel module {path}: {source}")]
    Module {
        /// Module file.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// The baked key or image id is missing or unusable: no manifest could be trusted.
    #[error("init: {path}: {problem} (no manifest can be verified without it)")]
    Identity {
        /// File.
        path: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The image's module directory or order file is unusable.
    #[error("init: {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// The root filesystem asked for (or its absence) is inconsistent or malformed.
    #[error("init: root filesystem: {0}")]
    RootConfig(String),
    /// A step of switching into the root filesystem failed.
    #[error("init: switching to the root filesystem {device}: {step}: {source}")]
    Root {
        /// The device.
        device: String,
        /// What was being done.
        step: String,
        /// Cause.
        source: io::Error,
    },
}

/// Where the image keeps the launcher's public key and its own id.
pub const TRUSTED_KEY_PATH: &str = "/etc/airlock/launcher.pub";
/// The image id file.
pub const IMAGE_ID_PATH: &str = "/etc/airlock/image-id";
/// The rootfs digest an image with a root filesystem carries in its initramfs.
pub const ROOTFS_DIGEST_PATH: &str = "/etc/airlock/rootfs-sha256";
/// The kernel command-line argument naming the root filesystem's device.
pub const ROOT_ARG: &str = "airlock.root";
/// The kernel command-line argument naming its filesystem type.
pub const ROOT_FSTYPE_ARG: &str = "airlock.rootfstype";
/// Filesystems a root may have (read-only images).
pub const ROOT_FSTYPES: [&str; 2] = ["erofs", "ext4"];
/// What init copies from the initramfs into the switched root (mode): the identity
/// the enforcer reads and the shim every granted tool is linked to.
const CARRIED_INTO_ROOT: [(&str, u32); 5] = [
    (TRUSTED_KEY_PATH, 0o644),
    (IMAGE_ID_PATH, 0o644),
    ("/etc/airlock/kernel-sha256", 0o644),
    (ROOTFS_DIGEST_PATH, 0o644),
    ("/usr/lib/airlock/bin/airlock-shim", 0o755),
];
/// What the rootfs must not bring itself: what is in the enforcer's directories comes
/// from the initramfs only (the shim directory is the only one the agent may execute
/// from), and `/init` is the enforcer's. The image builder checks the same list.
const RESERVED_IN_ROOT: [&str; 3] = airlock_proto::image_layout::ROOTFS_RESERVED;
/// Where the switch is staged in the initramfs.
const STAGE: &str = "/.airlock";
/// The API filesystems moved into the new root, as mounted in the initramfs.
const MOVED_INTO_ROOT: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];

/// What init did, for the console and the ready report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitReport {
    /// Mount points, in order; a switched root comes first, as
    /// `/=overlay(<fstype>:<device>:ro+tmpfs)`.
    pub mounted: Vec<String>,
    /// Modules loaded, in order (already present ones included).
    pub modules: Vec<String>,
    /// Landlock ABI of the running kernel.
    pub landlock_abi: u32,
    /// Key id of the baked launcher key.
    pub trusted_key_id: String,
    /// The image's id.
    pub image_id: String,
    /// This VM's vsock CID.
    pub vm_cid: u32,
}

/// (fstype, mount point, flags, data), in mount order. `/proc` hides every process
/// from users it may not ptrace (`hidepid=invisible`): the agent's uid sees its own
/// tree, not PID 1, the broker or their files under `/proc/<pid>`.
const MOUNTS: [(&str, &str, u64, &str); 6] = [
    (
        "proc",
        "/proc",
        NOSUID | NODEV | NOEXEC,
        "hidepid=invisible",
    ),
    ("sysfs", "/sys", NOSUID | NODEV | NOEXEC, ""),
    ("devtmpfs", "/dev", NOSUID | NOEXEC, "mode=0755"),
    ("tmpfs", "/run", NOSUID | NODEV, "mode=0755"),
    ("tmpfs", "/tmp", NOSUID | NODEV | NOEXEC, "mode=1777"),
    ("cgroup2", "/sys/fs/cgroup", NOSUID | NODEV | NOEXEC, ""),
];
const NOSUID: u64 = libc::MS_NOSUID;
const NODEV: u64 = libc::MS_NODEV;
const NOEXEC: u64 = libc::MS_NOEXEC;

fn mount_one(fstype: &'static str, target: &'static str, flags: u64, data: &str) -> io::Result<()> {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| CString::new(s).expect("static strings have no NUL");
    let (src, tgt, ty, d) = (c(fstype), c(target), c(fstype), c(data));
    // SAFETY: mount with valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ptr(),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                d.as_ptr().cast()
            },
        )
    };
    match rc {
        0 => Ok(()),
        // The kernel mounts devtmpfs itself when so configured; any other mount found
        // busy is not the one we need, and fails.
        _ if fstype == "devtmpfs"
            && io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) =>
        {
            Ok(())
        }
        _ => Err(io::Error::last_os_error()),
    }
}

/// How many of [`MOUNTS`] come before the modules and the switch of root (the rest
/// are mounted in the final root).
const EARLY_MOUNTS: usize = 4;

fn mount_all(
    list: &[(&'static str, &'static str, u64, &'static str)],
) -> Result<Vec<String>, InitError> {
    let mut done = Vec::new();
    for &(fstype, target, flags, data) in list {
        mount_one(fstype, target, flags, data).map_err(|source| InitError::Mount {
            fstype,
            target,
            source,
        })?;
        done.push(target.to_string());
    }
    Ok(done)
}

/// Mounts `/proc`, `/sys`, `/dev` and `/run`, in order. The initramfs root comes up
/// world-writable (1777); it is made 0755 first, so only PID 1 can add to it.
pub fn mount_early_filesystems() -> Result<Vec<String>, InitError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions("/", std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        InitError::Io {
            path: "/ (making it 0755)".into(),
            source,
        }
    })?;
    mount_all(&MOUNTS[..EARLY_MOUNTS])
}

/// Mounts the noexec `/tmp` and cgroup2, in the root the guest runs in.
pub fn mount_late_filesystems() -> Result<Vec<String>, InitError> {
    mount_all(&MOUNTS[EARLY_MOUNTS..])
}

/// Which root filesystem to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSpec {
    /// Block device (`/dev/vda`).
    pub device: String,
    /// Its filesystem, one of [`ROOT_FSTYPES`].
    pub fstype: String,
}

/// The root filesystem the kernel command line asks for, if any. Other arguments are
/// ignored; a repeated, malformed or dangling root argument is an error.
pub fn root_from_cmdline(cmdline: &str) -> Result<Option<RootSpec>, String> {
    let (mut device, mut fstype) = (None, None);
    for arg in cmdline.split_whitespace() {
        let Some((key, value)) = arg.split_once('=') else {
            continue;
        };
        let slot = match key {
            ROOT_ARG => &mut device,
            ROOT_FSTYPE_ARG => &mut fstype,
            _ => continue,
        };
        if slot.replace(value.to_string()).is_some() {
            return Err(format!("`{key}` given twice on the kernel command line"));
        }
    }
    let Some(device) = device else {
        return match fstype {
            Some(_) => Err(format!("`{ROOT_FSTYPE_ARG}` without `{ROOT_ARG}`")),
            None => Ok(None),
        };
    };
    let plain = device
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'_' || b == b'-');
    if !device.starts_with("/dev/") || device.contains("//") || !plain || device.len() <= 5 {
        return Err(format!("`{ROOT_ARG}={device}` is not a device under /dev"));
    }
    let fstype = fstype.unwrap_or_else(|| ROOT_FSTYPES[0].to_string());
    if !ROOT_FSTYPES.contains(&fstype.as_str()) {
        return Err(format!(
            "`{ROOT_FSTYPE_ARG}={fstype}` is not one of {}",
            ROOT_FSTYPES.join(", ")
        ));
    }
    Ok(Some(RootSpec { device, fstype }))
}

/// Whether `path` is a real directory (not a symlink): paths into the new root are
/// resolved from the initramfs, where the rootfs's absolute symlinks would point
/// elsewhere.
fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Waits for the kernel to create the block device's node (probing is asynchronous).
fn wait_for_block_device(device: &Path, timeout: std::time::Duration) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match std::fs::metadata(device) {
            Ok(m) if m.file_type().is_block_device() => return Ok(()),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a block device",
                ))
            }
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("did not appear within {} s: {e}", timeout.as_secs()),
                ))
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// Mounts `spec` read-only under a tmpfs-backed overlay, carries the image's identity
/// and the shim into it, moves the API filesystems in and makes it the root. Returns
/// the report's entry for `/`.
pub fn switch_root(spec: &RootSpec) -> Result<String, InitError> {
    use nix::mount::{mount, MsFlags};
    use std::os::unix::fs::DirBuilderExt;
    let step = |step: String| {
        let device = spec.device.clone();
        move |source: io::Error| InitError::Root {
            device,
            step,
            source,
        }
    };
    let errno = |step_name: String| {
        let f = step(step_name);
        move |e: nix::errno::Errno| f(e.into())
    };
    let stage = Path::new(STAGE);
    let (lower, rw, new) = (stage.join("lower"), stage.join("rw"), stage.join("root"));
    for d in [stage, &lower, &rw, &new] {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(d)
            .map_err(step(format!("creating {}", d.display())))?;
    }
    let device = Path::new(&spec.device);
    wait_for_block_device(device, std::time::Duration::from_secs(10))
        .map_err(step(format!("waiting for {}", spec.device)))?;
    // The image is read-only for every boot; nothing on it is a device or setuid for
    // the guest, whatever its inodes say.
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        Some(device),
        &lower,
        Some(spec.fstype.as_str()),
        MsFlags::MS_RDONLY | hardened,
        None::<&str>,
    )
    .map_err(errno(format!("mounting it read-only ({})", spec.fstype)))?;
    mount(
        Some("tmpfs"),
        &rw,
        Some("tmpfs"),
        hardened,
        Some("mode=0755"),
    )
    .map_err(errno("mounting the tmpfs for the writable layer".into()))?;
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    for d in [&upper, &work] {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(d)
            .map_err(step(format!("creating {}", d.display())))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &new,
        Some("overlay"),
        hardened,
        Some(options.as_str()),
    )
    .map_err(errno("mounting the overlay".into()))?;
    for reserved in RESERVED_IN_ROOT {
        if std::fs::symlink_metadata(new.join(reserved.trim_start_matches('/'))).is_ok() {
            return Err(InitError::RootConfig(format!(
                "{} provides {reserved}, which only the initramfs may provide",
                spec.device
            )));
        }
    }
    for dir in airlock_proto::image_layout::ROOTFS_REQUIRED_DIRS {
        if !is_real_dir(&new.join(dir.trim_start_matches('/'))) {
            return Err(InitError::RootConfig(format!(
                "{dir} on {} is not a directory",
                spec.device
            )));
        }
    }
    let carry = |from: &str, mode: u32| -> Result<(), InitError> {
        let to = new.join(from.trim_start_matches('/'));
        let parent = to.parent().expect("carried paths have a parent");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(parent)
            .map_err(step(format!("creating {}", parent.display())))?;
        let bytes = std::fs::read(from).map_err(step(format!("reading {from}")))?;
        write_new_file(&to, &bytes, mode).map_err(step(format!("writing {from} into it")))
    };
    for (from, mode) in CARRIED_INTO_ROOT {
        carry(from, mode)?;
    }
    // Files the image builder added (`--add`): the initramfs holds them, inside what
    // the image id covers; one the rootfs already has is refused (create_new), never
    // silently replaced.
    for (mode, path) in added_files_in_initramfs()? {
        carry(&path, mode)?;
    }
    if Path::new(ADDED_FILES_LIST).exists() {
        carry(ADDED_FILES_LIST, 0o644)?;
    }
    for m in MOVED_INTO_ROOT {
        let target = new.join(m.trim_start_matches('/'));
        if !is_real_dir(&target) {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&target)
                .map_err(step(format!("creating {m} in it")))?;
        }
        mount(
            Some(m),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(errno(format!("moving {m} into it")))?;
    }
    nix::unistd::chdir(&new).map_err(errno("entering it".into()))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(errno("moving it onto /".into()))?;
    nix::unistd::chroot(".").map_err(errno("chroot".into()))?;
    nix::unistd::chdir("/").map_err(errno("entering the new /".into()))?;
    // Every later step trusts `/` to be this overlay: check, rather than assume.
    let fs = nix::sys::statfs::statfs("/").map_err(errno("statfs /".into()))?;
    if fs.filesystem_type() != nix::sys::statfs::OVERLAYFS_SUPER_MAGIC {
        return Err(InitError::RootConfig(format!(
            "after the switch, / is not the overlay (filesystem type {:#x})",
            fs.filesystem_type().0
        )));
    }
    Ok(format!(
        "/=overlay({}:{}:ro+tmpfs)",
        spec.fstype, spec.device
    ))
}

/// The files listed in the initramfs's [`ADDED_FILES_LIST`], if it has one.
fn added_files_in_initramfs() -> Result<Vec<(u32, String)>, InitError> {
    match std::fs::read_to_string(ADDED_FILES_LIST) {
        Ok(text) => parse_added_files_list(&text).map_err(InitError::RootConfig),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(InitError::RootConfig(format!("{ADDED_FILES_LIST}: {e}"))),
    }
}

/// Creates `path` (it must not exist) with `bytes` and exactly `mode`.
fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()
}

/// Loads the modules listed in `dir/airlock-load-order`, in order. A module the
/// kernel already has (EEXIST) counts as loaded.
pub fn load_image_modules(dir: &Path) -> Result<Vec<String>, InitError> {
    load_image_modules_listed(dir, MODULE_ORDER_FILE)
}

/// The initramfs's module directory, opened at boot (see [`load_egress_modules`]).
static INITRAMFS_MODULES: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// Loads the egress funnel's modules ([`EGRESS_MODULE_ORDER_FILE`]) from the
/// initramfs's module directory, which boot kept open across the switch of root.
pub fn load_egress_modules() -> Result<Vec<String>, InitError> {
    let dir = INITRAMFS_MODULES.get().ok_or_else(|| {
        InitError::RootConfig("the initramfs's module directory was not kept at boot".into())
    })?;
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    load_image_modules_listed(&path, EGRESS_MODULE_ORDER_FILE)
}

/// Loads the modules listed in `dir/list`, in order (EEXIST counts as loaded).
pub fn load_image_modules_listed(dir: &Path, list: &str) -> Result<Vec<String>, InitError> {
    let order_path = dir.join(list);
    let order = std::fs::read_to_string(&order_path).map_err(|source| InitError::Io {
        path: order_path.display().to_string(),
        source,
    })?;
    let mut loaded = Vec::new();
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        let shown = path.display().to_string();
        let file = std::fs::File::open(&path).map_err(|source| InitError::Module {
            path: shown.clone(),
            source,
        })?;
        let params = c"";
        // SAFETY: finit_module on an fd we own with an empty parameter string.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(InitError::Module {
                path: shown,
                source: io::Error::last_os_error(),
            });
        }
        loaded.push(name.trim_end_matches(".ko").to_string());
    }
    Ok(loaded)
}

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// This VM's vsock CID, from the vsock device.
pub fn local_vsock_cid() -> io::Result<u32> {
    const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::Ioctl = 0x7b9;
    let dev = std::fs::File::open("/dev/vsock")?;
    let mut cid: u32 = 0;
    // SAFETY: the ioctl writes one u32 through a pointer to a live local.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), IOCTL_VM_SOCKETS_GET_LOCAL_CID, &mut cid) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cid)
}

/// Hands the cgroup controllers to the root's children, so the agent's group can be
/// limited (the enforcer owns the whole hierarchy in the VM).
pub fn delegate_cgroup_controllers() -> io::Result<()> {
    let root = Path::new("/sys/fs/cgroup");
    let available = std::fs::read_to_string(root.join("cgroup.controllers"))?;
    let wanted: Vec<String> = ["pids", "memory", "cpu"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    std::fs::write(root.join("cgroup.subtree_control"), wanted.join(" "))
}

/// The baked launcher key and image id (fail closed: unreadable means no VM).
pub fn read_image_identity() -> Result<(airlock_proto::envelope::Verifier, String), InitError> {
    let bad = |path, problem: String| InitError::Identity { path, problem };
    let pem = std::fs::read_to_string(TRUSTED_KEY_PATH)
        .map_err(|e| bad(TRUSTED_KEY_PATH, e.to_string()))?;
    let verifier = airlock_proto::envelope::Verifier::from_public_key_pem(&pem)
        .map_err(|e| bad(TRUSTED_KEY_PATH, e.to_string()))?;
    let id = std::fs::read_to_string(IMAGE_ID_PATH)
        .map_err(|e| bad(IMAGE_ID_PATH, e.to_string()))?
        .trim()
        .to_string();
    airlock_proto::manifest::validate_image_id(&id).map_err(|e| bad(IMAGE_ID_PATH, e))?;
    Ok((verifier, id))
}

/// The root filesystem this boot must switch to: what the kernel command line asks
/// for, checked against whether the image carries a rootfs digest.
fn root_to_switch_to() -> Result<Option<RootSpec>, InitError> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|source| InitError::Io {
        path: "/proc/cmdline".into(),
        source,
    })?;
    let root = root_from_cmdline(&cmdline).map_err(InitError::RootConfig)?;
    let has_rootfs = Path::new(ROOTFS_DIGEST_PATH).exists();
    match (&root, has_rootfs) {
        (None, true) => Err(InitError::RootConfig(format!(
            "the image has a root filesystem ({ROOTFS_DIGEST_PATH}) but the kernel command line names none (`{ROOT_ARG}=`)"
        ))),
        (Some(r), false) => Err(InitError::RootConfig(format!(
            "the kernel command line names {} but this image has no root filesystem",
            r.device
        ))),
        _ => Ok(root),
    }
}

/// Brings the guest up: the early filesystems, modules from
/// `/lib/modules/<release>`, the switch into the root filesystem if the image has
/// one, the late filesystems, the image's identity.
pub fn bring_up_guest() -> Result<InitReport, InitError> {
    let mut mounted = mount_early_filesystems()?;
    let root = root_to_switch_to()?;
    let dir = Path::new("/lib/modules").join(kernel_release());
    let modules = load_image_modules(&dir)?;
    // The egress modules load when a session is granted egress, after the switch of
    // root hid the initramfs: keep its module directory open for then.
    let _ = INITRAMFS_MODULES.set(std::fs::File::open(&dir).map_err(|source| InitError::Io {
        path: dir.display().to_string(),
        source,
    })?);
    if let Some(root) = &root {
        mounted.insert(0, switch_root(root)?);
    }
    mounted.extend(mount_late_filesystems()?);
    // A devpts of the guest's own for the terminals of `tty` commands; its `ptmx` is
    // root's only (the agent cannot allocate terminals, and its Landlock rules do not
    // reach /dev/pts). Without it only tty commands fail, saying so.
    match mount_one(
        "devpts",
        "/dev/pts",
        NOSUID | NOEXEC,
        "mode=0600,ptmxmode=0600",
    ) {
        Ok(()) => mounted.push("/dev/pts".into()),
        Err(e) => {
            println!("airlock-enforcer: init: no devpts at /dev/pts ({e}); tty commands cannot run")
        }
    }
    delegate_cgroup_controllers().map_err(|source| InitError::Io {
        path: "/sys/fs/cgroup/cgroup.subtree_control".into(),
        source,
    })?;
    protect_links_and_fifos()?;
    let (verifier, image_id) = read_image_identity()?;
    let vm_cid = local_vsock_cid().map_err(|source| InitError::Io {
        path: "/dev/vsock (local CID)".into(),
        source,
    })?;
    Ok(InitReport {
        mounted,
        modules,
        landlock_abi: crate::landlock::kernel_abi(),
        trusted_key_id: verifier.key_id().to_string(),
        image_id,
        vm_cid,
    })
}

/// The kernel's link and FIFO protections (a distribution's init sets them; PID 1 here
/// is the init): no hard link to a file the agent does not own, no following another
/// user's symlink in a sticky directory, and no root open of another user's FIFO or
/// file planted in one (`/tmp`).
const PROTECTIONS: [(&str, &str); 4] = [
    ("/proc/sys/fs/protected_hardlinks", "1"),
    ("/proc/sys/fs/protected_symlinks", "1"),
    ("/proc/sys/fs/protected_fifos", "2"),
    ("/proc/sys/fs/protected_regular", "2"),
];

fn protect_links_and_fifos() -> Result<(), InitError> {
    for (path, value) in PROTECTIONS {
        std::fs::write(path, value).map_err(|source| InitError::Io {
            path: path.into(),
            source,
        })?;
    }
    Ok(())
}

/// Syncs and powers the VM off (falls back to a reboot request, which `-no-reboot`
/// VMMs treat as exit). Never returns.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // Nothing else can be done; PID 1 must not exit (that panics the kernel).
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_comes_from_the_command_line_or_not_at_all() {
        assert_eq!(root_from_cmdline("console=ttyS0 quiet panic=-1"), Ok(None));
        let want = RootSpec {
            device: "/dev/vda".into(),
            fstype: "erofs".into(),
        };
        assert_eq!(
            root_from_cmdline("console=ttyS0 airlock.root=/dev/vda airlock.rootfstype=erofs"),
            Ok(Some(want.clone()))
        );
        assert_eq!(root_from_cmdline("airlock.root=/dev/vda"), Ok(Some(want)));
        assert_eq!(
            root_from_cmdline("airlock.root=/dev/vdb airlock.rootfstype=ext4")
                .unwrap()
                .unwrap()
                .fstype,
            "ext4"
        );
    }

    #[test]
    fn a_malformed_repeated_or_dangling_root_is_refused() {
        for bad in [
            "airlock.root=/dev/vda airlock.root=/dev/vdb",
            "airlock.root=/etc/passwd",
            "airlock.root=/dev/../etc/x",
            "airlock.root=/dev/",
            "airlock.root=/dev//vda",
            "airlock.root=/dev/vda airlock.rootfstype=vfat",
            "airlock.rootfstype=erofs",
            "airlock.root=/dev/vda,x",
        ] {
            assert!(root_from_cmdline(bad).is_err(), "{bad}");
        }
    }
}
