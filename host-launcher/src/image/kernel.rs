//! The guest kernel: Debian trixie's cloud kernel, pinned by exact package version,
//! fetched by package name with apt through a temporary configuration (the machine's
//! own sources and state are not touched), unpacked with `dpkg-deb -x`.
//!
//! apt authenticates what it downloads against the signed archive metadata of the
//! machine's own Debian entry (same `Signed-By`), so a cached kernel is as trusted as
//! an installed package.

use super::host_command::{self, CommandFailed};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The pinned kernel package.
pub const KERNEL_PACKAGE: &str = "linux-image-6.12.117+deb13-cloud-amd64";
/// Its exact version.
pub const KERNEL_VERSION: &str = "6.12.117-1";
/// `uname -r` of that kernel.
pub const KERNEL_RELEASE: &str = "6.12.117+deb13-cloud-amd64";
/// The Debian suite it comes from.
pub const KERNEL_SUITE: &str = "trixie";

/// Why the kernel could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A command failed.
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        /// The command.
        what: String,
        /// Exit status.
        status: String,
        /// Its stderr (last lines).
        stderr: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// No temporary apt source for the kernel's suite could be made.
    #[error("fetching the kernel: {0}")]
    Sources(#[from] super::apt::SourcesError),
    /// The kernel image is not what it should be.
    #[error("kernel {path}: {problem}")]
    BadImage {
        /// File.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An unpacked kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bzImage (QEMU boots it directly).
    pub vmlinuz: PathBuf,
    /// The uncompressed ELF kernel with its PVH entry (cloud-hypervisor).
    pub vmlinux: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
    /// The kernel's build configuration.
    pub config: PathBuf,
}

impl From<CommandFailed> for KernelError {
    fn from(f: CommandFailed) -> KernelError {
        KernelError::Command {
            what: f.what,
            status: f.status,
            stderr: f.stderr,
        }
    }
}

/// Runs one step of the fetch with nothing on its stdin and its stdout discarded.
fn run_quiet(cmd: &mut Command, what: &str) -> Result<(), KernelError> {
    let quiet = cmd.stdin(Stdio::null()).stdout(Stdio::null());
    host_command::run(quiet, what, &|_| {}).map_err(KernelError::from)
}

/// The pinned kernel under `cache/kernel/<release>`, fetched and unpacked if missing.
pub fn fetch_kernel(cache: &Path, progress: &dyn Fn(&str)) -> Result<Kernel, KernelError> {
    let dest = cache.join("kernel").join(KERNEL_RELEASE);
    let kernel = Kernel {
        vmlinuz: dest.join(format!("boot/vmlinuz-{KERNEL_RELEASE}")),
        vmlinux: dest.join("vmlinux"),
        modules: dest.join(format!("usr/lib/modules/{KERNEL_RELEASE}")),
        config: dest.join(format!("boot/config-{KERNEL_RELEASE}")),
    };
    // `.complete` names the package version unpacked there: another version under the
    // same release name is fetched again, not silently kept.
    let complete = |d: &Path| {
        std::fs::read_to_string(d.join(".complete")).is_ok_and(|v| v.trim() == KERNEL_VERSION)
    };
    if complete(&dest) {
        return Ok(kernel);
    }
    progress(&format!(
        "fetching {KERNEL_PACKAGE}={KERNEL_VERSION} from Debian {KERNEL_SUITE}"
    ));
    std::fs::create_dir_all(cache.join("kernel")).map_err(io(cache))?;
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(cache.join("kernel"))
        .map_err(io(cache))?;
    let w = work.path();
    for d in ["lists/partial", "cache/archives/partial", "debs"] {
        std::fs::create_dir_all(w.join(d)).map_err(io(w))?;
    }
    let sources =
        super::apt::SuiteSources::from_machine(KERNEL_SUITE)?.write_into(w, KERNEL_SUITE)?;
    let apt_opts = |c: &mut Command| {
        c.arg("-o")
            .arg(format!("Dir::Etc::sourcelist={}", sources.display()))
            .args(["-o", "Dir::Etc::sourceparts=/nonexistent"])
            .arg("-o")
            .arg(format!("Dir::State::lists={}", w.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", w.join("cache").display()))
            .args(["-o", "Debug::NoLocking=1", "-q"]);
    };
    let mut update = Command::new("apt-get");
    apt_opts(&mut update);
    run_quiet(
        update.arg("update"),
        "apt-get update (temporary trixie configuration)",
    )?;
    let mut download = Command::new("apt-get");
    apt_opts(&mut download);
    run_quiet(
        download
            .arg("download")
            .arg(format!("{KERNEL_PACKAGE}={KERNEL_VERSION}"))
            .current_dir(w.join("debs")),
        &format!("apt-get download {KERNEL_PACKAGE}={KERNEL_VERSION}"),
    )?;
    let deb = std::fs::read_dir(w.join("debs"))
        .map_err(io(w))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| KernelError::BadImage {
            path: w.join("debs"),
            problem: "apt-get download produced no .deb".into(),
        })?;
    let unpacked = w.join("root");
    progress(&format!("unpacking {}", deb.display()));
    run_quiet(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        "dpkg-deb -x",
    )?;
    let staged = Kernel {
        vmlinuz: unpacked.join(format!("boot/vmlinuz-{KERNEL_RELEASE}")),
        vmlinux: unpacked.join("vmlinux"),
        modules: unpacked.join(format!("usr/lib/modules/{KERNEL_RELEASE}")),
        config: unpacked.join(format!("boot/config-{KERNEL_RELEASE}")),
    };
    progress("extracting the uncompressed vmlinux (for cloud-hypervisor)");
    let bz = std::fs::read(&staged.vmlinuz).map_err(io(&staged.vmlinuz))?;
    let elf = vmlinux_from_bzimage(&bz).map_err(|problem| KernelError::BadImage {
        path: staged.vmlinuz.clone(),
        problem,
    })?;
    std::fs::write(&staged.vmlinux, elf).map_err(io(&staged.vmlinux))?;
    std::fs::write(unpacked.join(".complete"), KERNEL_VERSION).map_err(io(&unpacked))?;
    // Another build may have finished the same fetch meanwhile: its copy is as good.
    if !complete(&dest) {
        let _ = std::fs::remove_dir_all(&dest);
        if let Err(e) = std::fs::rename(&unpacked, &dest) {
            if !complete(&dest) {
                return Err(io(&dest)(e));
            }
        }
    }
    Ok(kernel)
}

/// The ELF kernel inside a bzImage: the protected-mode payload, decompressed.
pub fn vmlinux_from_bzimage(bz: &[u8]) -> Result<Vec<u8>, String> {
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS setup header)".into());
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let u32_at = |at: usize| {
        bz.get(at..at + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| "truncated setup header".to_string())
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let payload = bz
        .get(start..start + u32_at(0x24c)?)
        .ok_or("payload outside the file")?;
    let elf = if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        use std::io::Read;
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(payload)
            .map_err(|e| format!("zstd payload: {e}"))?
            .read_to_end(&mut out)
            .map_err(|e| format!("zstd payload: {e}"))?;
        out
    } else if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &payload[..], &mut out)
            .map_err(|e| format!("xz payload: {e}"))?;
        out
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .map_err(|e| format!("gzip payload: {e}"))?;
        out
    } else {
        return Err(format!(
            "payload compression not supported (magic {:02x?})",
            &payload[..payload.len().min(4)]
        ));
    };
    if !elf.starts_with(b"\x7fELF") {
        return Err("decompressed payload is not an ELF kernel".into());
    }
    Ok(elf)
}

/// The Landlock ABI a kernel of this release implements, if its configuration enables
/// Landlock (2 since 5.19, 3 since 6.2, 4 since 6.7, 5 since 6.10, 6 since 6.12).
pub fn landlock_abi(config: &str, release: &str) -> Option<u32> {
    let enabled = config.lines().any(|l| l == "CONFIG_SECURITY_LANDLOCK=y");
    let in_lsm = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_LSM="))
        .is_some_and(|v| v.trim_matches('"').split(',').any(|m| m == "landlock"));
    if !enabled || !in_lsm {
        return None;
    }
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some(match (major, minor) {
        (m, _) if m > 6 => 6,
        (6, n) if n >= 12 => 6,
        (6, n) if n >= 10 => 5,
        (6, n) if n >= 7 => 4,
        (6, n) if n >= 2 => 3,
        (6, _) => 2,
        (5, n) if n >= 19 => 2,
        _ => 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landlock_abi_follows_release_and_config() {
        let on = "CONFIG_SECURITY_LANDLOCK=y\nCONFIG_LSM=\"landlock,lockdown,yama\"\n";
        assert_eq!(landlock_abi(on, KERNEL_RELEASE), Some(6));
        assert_eq!(landlock_abi(on, "6.10.3"), Some(5));
        assert_eq!(landlock_abi(on, "6.1.0-30-amd64"), Some(2));
        assert_eq!(
            landlock_abi(
                "CONFIG_SECURITY_LANDLOCK=y\nCONFIG_LSM=\"yama\"\n",
                "6.12.1"
            ),
            None
        );
        assert_eq!(landlock_abi("", "6.12.1"), None);
    }

    #[test]
    fn a_bzimage_payload_is_found_and_decompressed() {
        use std::io::Write;
        let elf = b"\x7fELF-kernel-body".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf).unwrap();
        let payload = gz.finish().unwrap();
        let mut bz = vec![0u8; 5 * 512];
        bz[0x1f1] = 4;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(&[0u8; 16]);
        bz.extend_from_slice(&payload);
        assert_eq!(vmlinux_from_bzimage(&bz).unwrap(), elf);
        assert!(vmlinux_from_bzimage(&bz[..100]).is_err());
    }
}
