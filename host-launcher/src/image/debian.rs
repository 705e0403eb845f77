//! The `debian` profile's root filesystem: Debian trixie minbase with git, curl,
//! ca-certificates and python3, packed read-only as erofs.
//!
//! mmdebstrap builds it in `--mode=unshare` (package maintainer scripts run in their own
//! namespaces; as a normal user with subuids they run without any privilege) from a
//! temporary trixie source derived from the machine's own (see [`super::apt`]), into a
//! tarball, which is bit-for-bit reproducible under `SOURCE_DATE_EPOCH`. The tarball is
//! unpacked and packed with `mkfs.erofs` inside `mmdebstrap --unshare-helper`, the same
//! namespaces, so owners survive (`shadow`, `utmp`, `mail`) without the packer needing
//! root; fixed timestamps and UUID make the image the same bytes for the same tarball.
//!
//! The result is cached under `cache/debian-rootfs/<key>/`, the key being a digest of
//! the whole recipe (suite, variant, packages, dpkg filters, packer options), so a
//! rebuild, or CI with a warm cache, downloads nothing. The archive moves on; the cache
//! is what pins the packages between recipe changes.

use super::host_command::{self, CommandFailed};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Debian suite of the rootfs (the kernel's).
pub const SUITE: &str = super::kernel::KERNEL_SUITE;
/// mmdebstrap's package selection before [`PACKAGES`]: Essential and apt only.
pub const VARIANT: &str = "minbase";
/// What the agent's tools need on top of minbase.
pub const PACKAGES: [&str; 4] = ["ca-certificates", "curl", "git", "python3"];
/// Every timestamp in the rootfs (2025-01-01T00:00:00Z): mmdebstrap's
/// `SOURCE_DATE_EPOCH` and mkfs.erofs's fixed mtime.
pub const SOURCE_DATE_EPOCH: u64 = 1_735_689_600;
/// The disk the rootfs is attached as (the first virtio-blk disk; the VMM adds no other).
pub const ROOT_DEVICE: &str = "/dev/vda";
/// Its filesystem.
pub const ROOT_FSTYPE: &str = "erofs";
/// Modules the enforcer needs to mount it and lay the writable overlay on top.
pub const ROOT_MODULES: [&str; 3] = ["virtio_blk", "erofs", "overlay"];
/// The erofs UUID: fixed, as the image must not differ between builds.
const EROFS_UUID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d";
/// Bump when the recipe changes meaning without changing its text (2: the cache entry
/// holds the rootfs's inventory for `image inspect`).
const RECIPE_VERSION: u32 = 2;
/// Documentation, manuals and translations are dead weight in an agent's rootfs; the
/// copyright files stay (the licences ask for them).
const DPKG_PATH_FILTERS: [&str; 5] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
];
/// The agent's default working directory and mount point, as in the `minimal` image.
const CUSTOMIZE_HOOK: &str = "mkdir -p \"$1/workspace\"";

/// Host programs the rootfs build runs, and the Debian package of each.
pub const HOST_TOOLS: [(&str, &str); 4] = [
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.erofs", "erofs-utils"),
    ("newuidmap", "uidmap"),
    ("tar", "tar"),
];

/// Why the rootfs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A host program is missing.
    #[error("the debian rootfs needs `{tool}` on the host: apt-get install {package}")]
    MissingTool {
        /// Program.
        tool: &'static str,
        /// Debian package providing it.
        package: &'static str,
    },
    /// No temporary apt source for the suite.
    #[error("the debian rootfs: {0}")]
    Sources(#[from] super::apt::SourcesError),
    /// A command failed.
    #[error("{what} failed ({status}): {stderr}")]
    Command {
        /// The command.
        what: String,
        /// Exit status.
        status: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// A file operation failed.
    #[error("debian rootfs {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// An extra package name is not one.
    #[error("--packages: {problem}")]
    BadPackage {
        /// What is wrong with it.
        problem: String,
    },
    /// The inventory of the rootfs could not be taken.
    #[error("debian rootfs: {0}")]
    Inventory(String),
    /// The packed image is not an erofs image.
    #[error("debian rootfs {path}: {problem}")]
    BadImage {
        /// File.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A packed rootfs in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    /// The erofs image.
    pub image: PathBuf,
    /// Its sha256 (hex).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The cache key (first 16 hex digits of the recipe's sha256).
    pub key: String,
    /// What the rootfs offers and what its checks said, as JSON
    /// ([`super::RootfsReport`]), next to the image in the cache.
    pub report: PathBuf,
}

/// Why `name` cannot be an extra package (`--packages`), if it cannot: Debian's own
/// rule for package names, so nothing else (an option, a path, a version pin) reaches
/// mmdebstrap's `--include`.
pub fn check_package_name(name: &str) -> Result<(), String> {
    let ok = name.len() >= 2
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a Debian package name (lower-case letters, digits, `+`, `-`, `.`; at least two characters, starting with a letter or digit)"
        ))
    }
}

/// The packages of the rootfs: [`PACKAGES`] and `extra`, sorted, each once.
fn packages_with(extra: &[String]) -> Vec<String> {
    let mut all: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    all.extend(extra.iter().cloned());
    all.sort();
    all.dedup();
    all
}

fn erofs_options() -> Vec<String> {
    vec![
        "-zlz4hc".into(),
        format!("-T{SOURCE_DATE_EPOCH}"),
        format!("-U{EROFS_UUID}"),
        "--quiet".into(),
    ]
}

/// Everything that decides the rootfs's contents, one item a line; its digest is the
/// cache key.
pub fn recipe() -> String {
    recipe_with(&[])
}

/// [`recipe`] with `extra` packages.
pub fn recipe_with(extra: &[String]) -> String {
    let mut r = format!(
        "airlock debian rootfs v{RECIPE_VERSION}\nsuite {SUITE}\nvariant {VARIANT}\npackages {}\nsource-date-epoch {SOURCE_DATE_EPOCH}\n",
        packages_with(extra).join(",")
    );
    for f in DPKG_PATH_FILTERS {
        r.push_str(&format!("dpkgopt {f}\n"));
    }
    r.push_str(&format!("customize-hook {CUSTOMIZE_HOOK}\n"));
    r.push_str(&format!("mkfs.erofs {}\n", erofs_options().join(" ")));
    // The packer itself (tar flags, what it leaves out) is part of the recipe.
    r.push_str(&format!("pack-script {PACK_SCRIPT:?}\n"));
    r.push_str("mmdebstrap --mode=unshare --format=tar\n");
    r
}

/// The first host program the build needs that is missing, if any.
pub fn missing_tool() -> Option<RootfsError> {
    // SAFETY: geteuid takes nothing and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    HOST_TOOLS
        .iter()
        // As root, mmdebstrap maps no users, so it needs no newuidmap.
        .filter(|(tool, _)| !(root && *tool == "newuidmap"))
        .find(|(tool, _)| crate::path_lookup::find_program(tool, &[]).is_none())
        .map(|&(tool, package)| RootfsError::MissingTool { tool, package })
}

impl From<CommandFailed> for RootfsError {
    fn from(f: CommandFailed) -> RootfsError {
        RootfsError::Command {
            what: f.what,
            status: f.status,
            stderr: f.stderr,
        }
    }
}

/// Unpacks the tarball on stdin and writes the erofs image to stdout. Runs inside
/// `mmdebstrap --unshare-helper`, whose namespace owns everything it creates, so it
/// creates its scratch directory itself and removes it before leaving.
const PACK_SCRIPT: &str = r#"set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir "$d/root"
tar -C "$d/root" --numeric-owner --same-permissions --same-owner --xattrs --xattrs-include='*' --exclude='./dev/*' --exclude='dev/*' -xf -
mkfs.erofs "$@" "$d/image" "$d/root" >&2
cat "$d/image"
"#;

pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64), RootfsError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), size))
}

/// erofs's superblock magic, 1024 bytes in.
pub(crate) fn check_erofs(path: &Path) -> Result<(), RootfsError> {
    let mut head = [0u8; 1028];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(io(path))?;
    if head[1024..1028] != 0xE0F5_E1E2u32.to_le_bytes() {
        return Err(RootfsError::BadImage {
            path: path.to_path_buf(),
            problem: "no erofs superblock".into(),
        });
    }
    Ok(())
}

/// An exclusive `flock` on `path`, held until the file is dropped.
pub(crate) fn lock_exclusive(path: &Path) -> Result<std::fs::File, RootfsError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    // SAFETY: flock on a descriptor this function owns; it only blocks.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io(path)(std::io::Error::last_os_error()));
    }
    Ok(f)
}

/// The rootfs for the current recipe, from the cache or built into it.
pub fn fetch_rootfs(cache: &Path, progress: &dyn Fn(&str)) -> Result<Rootfs, RootfsError> {
    fetch_rootfs_with(cache, &[], progress)
}

/// [`fetch_rootfs`] with `extra` packages (`image build --profile debian --packages`),
/// each checked with [`check_package_name`].
pub fn fetch_rootfs_with(
    cache: &Path,
    extra: &[String],
    progress: &dyn Fn(&str),
) -> Result<Rootfs, RootfsError> {
    for p in extra {
        check_package_name(p).map_err(|problem| RootfsError::BadPackage { problem })?;
    }
    let packages = packages_with(extra);
    let recipe = recipe_with(extra);
    let key = hex::encode(Sha256::digest(recipe.as_bytes()))[..16].to_string();
    let base = cache.join("debian-rootfs");
    let dest = base.join(&key);
    let cached = || -> Result<Rootfs, RootfsError> {
        let sum = dest.join("rootfs.erofs.sha256");
        let sha256 = std::fs::read_to_string(&sum)
            .map_err(io(&sum))?
            .trim()
            .to_string();
        let image = dest.join("rootfs.erofs");
        // The image id will vouch for these bytes: hash them, do not trust the note.
        let (actual, size) = sha256_file(&image)?;
        if actual != sha256 {
            return Err(RootfsError::BadImage {
                path: image,
                problem: format!(
                    "its sha256 is {actual}, not the {sha256} it was built with; remove {} to rebuild it",
                    dest.display()
                ),
            });
        }
        Ok(Rootfs {
            image,
            sha256,
            size,
            key: key.clone(),
            report: dest.join(super::REPORT_FILE),
        })
    };
    std::fs::create_dir_all(&base).map_err(io(&base))?;
    // Parallel tests or two builds share one cache: the second waits for the first
    // and then finds its result, rather than downloading everything again.
    let _lock = lock_exclusive(&base.join(".lock"))?;
    if dest.join(".complete").exists() {
        progress(&format!(
            "debian {SUITE} rootfs from the cache ({})",
            dest.display()
        ));
        return cached();
    }
    if let Some(missing) = missing_tool() {
        return Err(missing);
    }
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&base)
        .map_err(io(&base))?;
    let w = work.path();
    let sources = super::apt::SuiteSources::from_machine(SUITE)?.write_into(w, SUITE)?;
    let tarball = w.join("rootfs.tar");
    progress(&format!(
        "building the debian {SUITE} rootfs ({VARIANT} + {}) with mmdebstrap --mode=unshare",
        PACKAGES.join(", ")
    ));
    let mut mm = Command::new("mmdebstrap");
    mm.env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH.to_string())
        .args(["--mode=unshare", "--format=tar"])
        .arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", packages.join(",")));
    for f in DPKG_PATH_FILTERS {
        mm.arg(format!("--dpkgopt={f}"));
    }
    mm.arg(format!("--customize-hook={CUSTOMIZE_HOOK}"))
        .arg(SUITE)
        .arg(&tarball)
        .arg(&sources)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let forward = |l: &str| {
        if let Some(step) = l.strip_prefix("I: ") {
            progress(&format!("mmdebstrap: {step}"));
        }
    };
    host_command::run(&mut mm, "mmdebstrap (debian rootfs)", &forward)?;
    // What `image inspect` shows, read from the tarball before it goes: the same tree
    // model a team's own rootfs goes through, everything it holds accepted (this
    // recipe's set-id files are Debian's own).
    progress("taking the rootfs's inventory");
    let report = super::RootfsReport::of_debian_tarball(&tarball, w)?;
    let report_path = w.join(super::REPORT_FILE);
    std::fs::write(&report_path, report.to_json()).map_err(io(&report_path))?;
    progress("packing the rootfs read-only with mkfs.erofs");
    let image = w.join("rootfs.erofs");
    pack_erofs(&tarball, &image)?;
    // The tarball is only a step; the image is what the cache keeps.
    std::fs::remove_file(&tarball).map_err(io(&tarball))?;
    let (sha256, size) = sha256_file(&image)?;
    let sum = w.join("rootfs.erofs.sha256");
    std::fs::write(&sum, format!("{sha256}\n")).map_err(io(&sum))?;
    std::fs::write(w.join("recipe"), &recipe).map_err(io(w))?;
    std::fs::remove_file(&sources).map_err(io(&sources))?;
    std::fs::write(w.join(".complete"), &key).map_err(io(w))?;
    progress(&format!(
        "rootfs {} MiB, sha256 {sha256}",
        size.div_ceil(1 << 20)
    ));
    // Under the lock nothing else builds this recipe; whatever is at `dest` without
    // `.complete` is debris (staging directories are renamed whole).
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(w, &dest).map_err(io(&dest))?;
    // The staging directory is now `dest`: nothing left for the guard to remove.
    let _ = work.keep();
    cached()
}

/// Packs the root filesystem in `tarball` read-only into `image` (erofs), inside
/// `mmdebstrap --unshare-helper` so the owners in the tarball survive without root.
pub(crate) fn pack_erofs(tarball: &Path, image: &Path) -> Result<(), RootfsError> {
    let input = std::fs::File::open(tarball).map_err(io(tarball))?;
    let output = std::fs::File::create(image).map_err(io(image))?;
    let mut pack = Command::new("mmdebstrap");
    pack.args(["--unshare-helper", "sh", "-c", PACK_SCRIPT, "sh"])
        .args(erofs_options())
        .stdin(input)
        .stdout(output);
    host_command::run(&mut pack, "packing the rootfs (tar | mkfs.erofs)", &|_| {})?;
    check_erofs(image)
}

/// What decides how a tarball becomes the erofs image: part of every cache key.
pub(crate) fn packer_recipe() -> String {
    format!(
        "mkfs.erofs {}\npack-script {PACK_SCRIPT:?}\n",
        erofs_options().join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recipe_names_every_input_of_the_rootfs() {
        let r = recipe();
        for needle in [
            "suite trixie",
            "variant minbase",
            "packages ca-certificates,curl,git,python3",
            "source-date-epoch 1735689600",
            "-T1735689600",
            "-zlz4hc",
            "path-exclude=/usr/share/doc/*",
        ] {
            assert!(r.contains(needle), "{needle} missing from\n{r}");
        }
    }

    #[test]
    fn a_file_without_an_erofs_superblock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        assert!(matches!(check_erofs(&p), Err(RootfsError::BadImage { .. })));
        let mut sb = vec![0u8; 4096];
        sb[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
        std::fs::write(&p, sb).unwrap();
        check_erofs(&p).unwrap();
    }
}
