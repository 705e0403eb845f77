//! The enforcer as PID 1 of the guest: the system it needs before any manifest.
//!
//! Mounts `/proc`, `/sys`, `/dev`, `/run`, a noexec `/tmp` and the cgroup2 hierarchy
//! (the enforcer owns every controller inside the VM), then loads the image's kernel
//! modules in the order the image builder computed from their own dependencies. Any
//! failure is fatal: the VM powers off with the reason on the console, and the host
//! reports it naming the serial log.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The module load order file in the image's module directory.
pub const MODULE_ORDER_FILE: &str = "airlock-load-order";

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
}

/// Where the image keeps the launcher's public key and its own id.
pub const TRUSTED_KEY_PATH: &str = "/etc/airlock/launcher.pub";
/// The image id file.
pub const IMAGE_ID_PATH: &str = "/etc/airlock/image-id";

/// What init did, for the console and the ready report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitReport {
    /// Mount points, in order.
    pub mounted: Vec<&'static str>,
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

/// (fstype, mount point, flags, data), in mount order.
const MOUNTS: [(&str, &str, u64, &str); 6] = [
    ("proc", "/proc", NOSUID | NODEV | NOEXEC, ""),
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

/// Mounts the guest's filesystems, in order. The initramfs root comes up
/// world-writable (1777); it is made 0755 first, so only PID 1 can add to it.
pub fn mount_guest_filesystems() -> Result<Vec<&'static str>, InitError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions("/", std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        InitError::Io {
            path: "/ (making it 0755)".into(),
            source,
        }
    })?;
    let mut done = Vec::new();
    for (fstype, target, flags, data) in MOUNTS {
        mount_one(fstype, target, flags, data).map_err(|source| InitError::Mount {
            fstype,
            target,
            source,
        })?;
        done.push(target);
    }
    Ok(done)
}

/// Loads the modules listed in `dir/airlock-load-order`, in order. A module the
/// kernel already has (EEXIST) counts as loaded.
pub fn load_image_modules(dir: &Path) -> Result<Vec<String>, InitError> {
    let order_path = dir.join(MODULE_ORDER_FILE);
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

/// Brings the guest up: filesystems, modules from `/lib/modules/<release>`, the
/// image's identity.
pub fn bring_up_guest() -> Result<InitReport, InitError> {
    let mounted = mount_guest_filesystems()?;
    let dir = Path::new("/lib/modules").join(kernel_release());
    let modules = load_image_modules(&dir)?;
    delegate_cgroup_controllers().map_err(|source| InitError::Io {
        path: "/sys/fs/cgroup/cgroup.subtree_control".into(),
        source,
    })?;
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
