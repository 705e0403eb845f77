//! Virtual machine monitors. A VM is booted from an image descriptor, reached over
//! hybrid vsock, and destroyed with every helper process and its state directory.

pub mod hybrid_vsock;
pub mod qemu;

use crate::image::ImageDescriptor;
use std::path::PathBuf;

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

impl VmSpec {
    /// The command line the VMM passes: the image's, plus `tsc_early_khz` when known.
    pub fn kernel_cmdline(&self) -> String {
        match host_tsc_khz() {
            Some(khz) => format!("{} tsc_early_khz={khz}", self.cmdline),
            None => self.cmdline.clone(),
        }
    }
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
