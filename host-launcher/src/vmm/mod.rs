//! Virtual machine monitors. A VM is booted from an image descriptor, reached over
//! hybrid vsock, and destroyed with every helper process and its state directory.
//!
//! Backends implement [`Vmm`]; what they boot is a [`VmSpec`] (the same guest image for
//! every backend), and what they hand back is a [`Vm`]. Helpers (vhost-device-vsock,
//! virtiofsd) are children of the launcher that die with it; each VM's state lives in
//! a fresh directory under the launcher's state root, removed on destroy, and swept at
//! start-up when a crashed launcher left it ([`state_dir`]).

pub mod cloud_hypervisor;
pub mod helpers;
pub mod hybrid_vsock;
pub mod qemu;
pub mod running;
pub mod state_dir;

use crate::image::ImageDescriptor;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

/// A host directory shared into the guest over virtio-fs (one virtiofsd each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The virtio-fs tag the guest mounts by (`m0`, `m1`, ... in manifest order).
    pub tag: String,
    /// Host directory (already resolved; no symlinks).
    pub host_dir: PathBuf,
    /// Read-only: enforced by virtiofsd on the host, not only by the guest's mount.
    pub read_only: bool,
    /// The host uid and gid the guest's agent (uid/gid 1000) acts as on this share: the
    /// directory's owner, so what the agent writes lands owned by that owner.
    pub owner: (u32, u32),
}

/// The guest uid/gid of the agent, as the enforcer runs it.
pub const GUEST_AGENT_ID: u32 = 1000;

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Kernel (bzImage for QEMU).
    pub kernel: PathBuf,
    /// initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest CID (3 or more).
    pub cid: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Root filesystem image, attached read-only as the first virtio-blk disk.
    pub rootfs: Option<PathBuf>,
    /// Uncompressed PVH kernel (cloud-hypervisor boots this one).
    pub vmlinux: PathBuf,
    /// Host directories shared over virtio-fs.
    pub shares: Vec<Share>,
    /// Host vsock ports the guest may dial: each gets a listener on
    /// `<vsock socket>_<port>` bound before the VMM starts (take it with
    /// [`Vm::take_host_listener`]). No listener, no host port.
    pub host_ports: Vec<u32>,
}

impl VmSpec {
    /// A VM for `image` with this CID and size.
    pub fn for_image(image: &ImageDescriptor, cid: u32, vcpus: u32, memory_mib: u64) -> VmSpec {
        VmSpec {
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            cmdline: image.cmdline.clone(),
            cid,
            vcpus,
            memory_mib,
            rootfs: image.rootfs.clone(),
            vmlinux: image.vmlinux.clone(),
            shares: Vec::new(),
            host_ports: Vec::new(),
        }
    }
}

/// The host's TSC frequency in kHz, when the TSC is constant (`constant_tsc`): under
/// TCG (and KVM) the guest's TSC runs at the host's rate. Telling the guest kernel
/// (`tsc_early_khz=`) spares it calibrating against the emulated PIT, which fails when
/// the host is busy and then hangs the boot with no other clock.
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let first = cpuinfo.split("\n\n").next()?;
    let field = |name: &str| {
        first
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    if !field("flags")?
        .split_whitespace()
        .any(|f| f == "constant_tsc")
    {
        return None;
    }
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// Kernel arguments every VM gets, whatever the image says. On a loaded host a guest's
/// clocksource watchdog can find the (emulated) TSC "unstable" and fall back to a
/// slower, coarser clock (seen on the console with four VMs booting on two busy
/// cores). The TSC of a VM we start is the host's constant TSC, so it is declared
/// reliable, and the IO-APIC timer check, which misfires under TCG load, is skipped
/// (Kata's guests take the same two).
pub const VM_CLOCK_ARGS: &str = "tsc=reliable no_timer_check";

impl VmSpec {
    /// The command line the VMM passes: the image's, [`VM_CLOCK_ARGS`], and
    /// `tsc_early_khz` when the host's TSC rate is known.
    pub fn kernel_cmdline(&self) -> String {
        match host_tsc_khz() {
            Some(khz) => format!("{} {VM_CLOCK_ARGS} tsc_early_khz={khz}", self.cmdline),
            None => format!("{} {VM_CLOCK_ARGS}", self.cmdline),
        }
    }
}

/// A virtual machine monitor: boots a [`VmSpec`] in a fresh directory under
/// `state_root`, returning once the VMM runs (the guest is still booting).
pub trait Vmm: Send + Sync {
    /// Short name (`qemu`, `cloud-hypervisor`), for messages and the ready report.
    fn name(&self) -> &'static str;
    /// Starts the helpers and the VMM.
    fn boot(&self, spec: &VmSpec, state_root: &Path) -> Result<Box<dyn Vm>, VmmError>;
}

/// A running VM. Dropping it destroys it.
pub trait Vm: Send + Sync + std::fmt::Debug {
    /// The hybrid vsock socket (host side of the guest's vsock).
    fn vsock_uds(&self) -> &Path;
    /// Where the guest's console goes.
    fn serial_log(&self) -> &Path;
    /// The per-VM directory.
    fn state_dir(&self) -> &Path;
    /// Pids of the VMM and its helpers.
    fn pids(&self) -> Vec<u32>;
    /// The VMM's exit status if it has exited (without waiting).
    fn exited(&mut self) -> Option<ExitStatus>;
    /// Waits up to `timeout` for the VMM to exit on its own (the guest powered off).
    fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus>;
    /// The listener for a host port of [`VmSpec::host_ports`] (once).
    fn take_host_listener(&mut self, port: u32) -> Option<std::os::unix::net::UnixListener>;
    /// Kills the VMM and every helper, reaps them and removes the per-VM directory.
    fn destroy(self: Box<Self>) -> Result<(), VmmError>;
    /// The console so far.
    fn serial_output(&self) -> String {
        read_console(self.serial_log())
    }
}

/// How much of a console [`Vm::serial_output`] returns: its last bytes (the guest
/// writes it; nothing may make the host hold an unbounded log in memory).
pub const CONSOLE_READ_BYTES: u64 = 4 << 20;

/// The last [`CONSOLE_READ_BYTES`] of a console log, invalid UTF-8 replaced (one stray
/// byte from the guest must not hide every line, the enforcer's ready line included).
pub fn read_console(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > CONSOLE_READ_BYTES && f.seek(SeekFrom::Start(len - CONSOLE_READ_BYTES)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = f.take(CONSOLE_READ_BYTES).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Finds a helper program: in each of `dirs` first, then on `PATH`.
pub use crate::path_lookup::find_program;

/// Opens `/dev/kvm` for reading and writing, as a VMM does: the first thing a machine
/// needs to run a guest under KVM. `Err` says why it cannot.
pub fn open_kvm() -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm cannot be opened ({e})"))
}

/// Why a VM could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A helper could not be started.
    #[error("starting {what}: {source}")]
    Spawn {
        /// Which program.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A helper exited before it was ready.
    #[error("{what} exited before it was ready ({status}); see its log in the VM directory")]
    HelperDied {
        /// Which program.
        what: String,
        /// How it ended.
        status: String,
    },
    /// A helper did not create its socket in time.
    #[error("{what} did not create {path} in time")]
    HelperTimeout {
        /// Which program.
        what: String,
        /// The socket.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}
