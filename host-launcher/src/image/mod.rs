//! Guest images (`airlock image build`).
//!
//! An image is a kernel, an initramfs and (for `debian`) a root filesystem, described
//! by an [`ImageDescriptor`]. The `minimal` initramfs holds the static enforcer as
//! `/init`, the static shim, busybox as userland, the kernel modules the enforcer loads
//! (in dependency order, computed from the modules themselves), the launcher's public
//! key and the image id. The `debian` initramfs holds the same minus busybox, plus the
//! modules to mount the read-only rootfs (see [`debian`]) and its digest; the kernel
//! command line tells the enforcer to switch into it under a disposable writable layer.
//! Images are reproducible: the same inputs give the same bytes and the same id, and a
//! rebuild with nothing changed writes nothing.

pub mod apt;
pub mod cpio;
pub mod custom;
pub mod debian;
mod host_command;
pub mod inspect;
pub mod kernel;
pub mod kmod;
pub mod rootfs_source;

pub use custom::RootfsSource;
pub use inspect::{RootfsReport, REPORT_FILE};

use airlock_proto::image_layout::{added_files_list_line, ADDED_FILES_LIST};
pub use airlock_proto::image_layout::{check_added_guest_path, ADDED_FILE_RESERVED};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Modules the enforcer needs in every image: the virtio-mmio transport (microvm's
/// devices), vsock over virtio (the host channel) and overlayfs (copy-on-write
/// workspaces over their read-only shares). virtio-fs is built in.
pub const ENFORCER_MODULES: [&str; 3] = ["virtio_mmio", "vmw_vsock_virtio_transport", "overlay"];
/// Modules the egress funnel loads when a session is granted egress (netfilter's NAT
/// chain, redirect and conntrack-status matching; their dependencies come along).
/// Loaded on demand, so a session without egress pays nothing for them at boot.
pub const EGRESS_MODULES: [&str; 3] = ["nft_chain_nat", "nft_redir", "nft_ct"];
/// The egress modules' load order (those not already loaded at boot), like
/// [`MODULE_ORDER_FILE`].
pub const EGRESS_MODULE_ORDER_FILE: &str = "airlock-egress-load-order";
/// Where the image keeps what the enforcer reads at boot.
pub const AIRLOCK_ETC: &str = "etc/airlock";
/// The module load order, one file name per line, in `lib/modules/<release>/`.
pub const MODULE_ORDER_FILE: &str = "airlock-load-order";
/// Kernel command line of every image.
pub const CMDLINE: &str = "console=ttyS0 quiet panic=-1";
/// The command-line argument naming the root filesystem's device: the enforcer mounts
/// it read-only, lays a tmpfs-backed overlay on top and switches into it.
pub const ROOT_ARG: &str = "airlock.root";
/// The command-line argument naming that device's filesystem.
pub const ROOT_FSTYPE_ARG: &str = "airlock.rootfstype";
/// The rootfs digest in the initramfs: inside what the image id covers, and the
/// enforcer's sign that this image must switch root (it refuses to run without).
pub const ROOTFS_DIGEST_FILE: &str = "rootfs-sha256";

/// The kernel command line of a profile.
pub fn cmdline(profile: Profile) -> String {
    match profile {
        Profile::Minimal => CMDLINE.to_string(),
        Profile::Debian | Profile::Rootfs => format!(
            "{CMDLINE} {ROOT_ARG}={} {ROOT_FSTYPE_ARG}={}",
            debian::ROOT_DEVICE,
            debian::ROOT_FSTYPE
        ),
    }
}

/// Which image to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// initramfs only: enforcer, shim, busybox, modules, key.
    Minimal,
    /// Debian trixie rootfs with git, curl, python3 (read-only, with a writable layer).
    Debian,
    /// A team's own rootfs (`--from-rootfs`), booted like `debian`.
    Rootfs,
}

impl Profile {
    /// Name as used on the command line and in paths.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Minimal => "minimal",
            Profile::Debian => "debian",
            Profile::Rootfs => "rootfs",
        }
    }
}

/// What `image build` produced: everything a VMM needs to boot it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDescriptor {
    /// Profile.
    pub profile: Profile,
    /// `sha256:<hex>` over the image's contents (bound into every manifest).
    pub image_id: String,
    /// bzImage (QEMU).
    pub kernel: PathBuf,
    /// Uncompressed ELF kernel with a PVH entry (cloud-hypervisor).
    pub vmlinux: PathBuf,
    /// gzip-compressed newc initramfs.
    pub initrd: PathBuf,
    /// Root filesystem image, if the profile has one.
    pub rootfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// `uname -r` of the kernel.
    pub kernel_release: String,
    /// Debian package and version the kernel came from.
    pub kernel_package: String,
    /// Landlock ABI the kernel implements.
    pub landlock_abi: u32,
    /// Version of the enforcer baked in.
    pub enforcer_version: String,
    /// sha256 of the enforcer binary baked in.
    pub enforcer_sha256: String,
    /// Key id of the launcher key the image trusts.
    pub trusted_key_id: String,
    /// Modules the enforcer loads, in order.
    pub modules: Vec<String>,
    /// Files added with `--add`, in path order (absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<AddedEntry>,
    /// The image's name: its directory under the images directory (absent in images
    /// built before names: the profile's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Packages added to the `debian` recipe (`--packages`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
    /// Where a `rootfs` image's root filesystem came from (path and digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<rootfs_source::SourceDescription>,
}

impl ImageDescriptor {
    /// The image's name (its directory's).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.profile.as_str())
    }
}

/// Why `name` cannot name an image, if it cannot: it becomes a directory name.
pub fn check_image_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "image name `{name}`: use 1-64 letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        ))
    }
}

/// What to build: a profile, under a name, with `debian`'s extra packages or a
/// `rootfs` image's source.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// The profile.
    pub profile: Profile,
    /// The image's directory name (default: the profile's name).
    pub name: Option<String>,
    /// Extra Debian packages (`debian` only).
    pub packages: Vec<String>,
    /// The source (`rootfs` only, and required there).
    pub source: Option<RootfsSource>,
}

impl ImageRequest {
    /// A profile as it comes, under its own name.
    pub fn profile(profile: Profile) -> ImageRequest {
        ImageRequest {
            profile,
            name: None,
            packages: Vec::new(),
            source: None,
        }
    }

    /// The name the image gets.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.profile.as_str())
    }
}

/// A file added to an image (`image build --add HOST:GUEST`): a team's own tool or
/// test binary, inside what the image id covers like every other byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedFile {
    /// The file on the host (a regular file; symlinks are followed at build time).
    pub host: PathBuf,
    /// Absolute, normalized path in the guest, outside [`ADDED_FILE_RESERVED`].
    pub guest: String,
}

/// How an added file ended up in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedEntry {
    /// Path in the guest.
    pub path: String,
    /// Permission bits: 0755 when the host file is executable by anyone, else 0644.
    pub mode: u32,
    /// sha256 of its bytes (hex).
    pub sha256: String,
}

impl AddedFile {
    /// Parses `HOST:GUEST` (the host path may not contain `:`), checking the guest path.
    pub fn parse(text: &str) -> Result<AddedFile, String> {
        let (host, guest) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}`: expected HOST:GUEST"))?;
        if host.is_empty() {
            return Err(format!("`{text}`: the host path is empty"));
        }
        check_added_guest_path(guest).map_err(|e| format!("`{text}`: {e}"))?;
        Ok(AddedFile {
            host: PathBuf::from(host),
            guest: guest.to_string(),
        })
    }
}

/// Inputs of an image build.
#[derive(Debug, Clone)]
pub struct BuildInputs {
    /// Static enforcer (becomes `/init`).
    pub enforcer: PathBuf,
    /// Static shim.
    pub shim: PathBuf,
    /// Static busybox.
    pub busybox: PathBuf,
    /// The launcher's public key (PEM).
    pub public_key: PathBuf,
    /// Cache (kernel downloads).
    pub cache: PathBuf,
    /// Output directory (the image goes to `out/<profile>/`).
    pub out: PathBuf,
    /// Files added to the image (`--add`).
    pub added: Vec<AddedFile>,
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The kernel.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// Modules.
    #[error(transparent)]
    Modules(#[from] kmod::ModuleError),
    /// The archive.
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
    /// The debian root filesystem.
    #[error(transparent)]
    Rootfs(#[from] debian::RootfsError),
    /// A team's own root filesystem.
    #[error(transparent)]
    Source(#[from] rootfs_source::SourceError),
    /// The request does not hold together.
    #[error("image build: {0}")]
    Request(String),
    /// An input cannot be used.
    #[error("{what} {path}: {problem}")]
    Input {
        /// Which input.
        what: &'static str,
        /// Path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Writing the image failed.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether an ELF file asks for a program interpreter (is dynamically linked).
pub fn has_interpreter(elf: &[u8]) -> Result<bool, String> {
    use airlock_proto::program_interpreter::{program_interpreter_of, ProgramInterpreter};
    match program_interpreter_of(std::io::Cursor::new(elf)) {
        Ok(ProgramInterpreter::Dynamic(_)) => Ok(true),
        Ok(ProgramInterpreter::Static) => Ok(false),
        Ok(ProgramInterpreter::NotElf64) => Err("not a little-endian ELF64 executable".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn read_static(what: &'static str, path: &Path) -> Result<Vec<u8>, ImageError> {
    let bad = |problem: String| ImageError::Input {
        what,
        path: path.to_path_buf(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    match has_interpreter(&bytes) {
        Ok(false) => Ok(bytes),
        Ok(true) => Err(bad(
            "is dynamically linked; the image has no loader (build it static: make enforcer-static)"
                .into(),
        )),
        Err(e) => Err(bad(e)),
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The busybox applets, from `busybox --list` (one per line).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let out = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| ImageError::Input {
            what: "busybox",
            path: busybox.to_path_buf(),
            problem: e.to_string(),
        })?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .map(str::to_string)
        .collect();
    applets.sort();
    applets.dedup();
    if applets.is_empty() {
        return Err(ImageError::Input {
            what: "busybox",
            path: busybox.to_path_buf(),
            problem: "`--list` printed no applets".into(),
        });
    }
    Ok(applets)
}

/// What every initramfs holds: the enforcer as `/init`, the shim, the modules and
/// their order, the launcher's key and the kernel's digest.
fn base_initramfs(
    inputs: &BuildInputs,
    modules: &[kmod::ModuleFile],
    egress_modules: &[kmod::ModuleFile],
    release: &str,
    kernel_sha256: &str,
) -> Result<cpio::Archive, ImageError> {
    let mut a = cpio::Archive::default();
    a.file("init", 0o755, read_static("enforcer", &inputs.enforcer)?)?;
    a.file(
        "usr/lib/airlock/bin/airlock-shim",
        0o755,
        read_static("shim", &inputs.shim)?,
    )?;
    for d in ["proc", "sys", "dev", "run"] {
        a.dir(d, 0o755)?;
    }
    let moddir = format!("lib/modules/{release}");
    let mut order = String::new();
    for m in modules {
        let file = format!("{}.ko", m.name);
        a.file(&format!("{moddir}/{file}"), 0o644, m.elf.clone())?;
        order.push_str(&file);
        order.push('\n');
    }
    a.file(
        &format!("{moddir}/{MODULE_ORDER_FILE}"),
        0o644,
        order.into_bytes(),
    )?;
    let mut egress_order = String::new();
    for m in egress_modules {
        let file = format!("{}.ko", m.name);
        a.file(&format!("{moddir}/{file}"), 0o644, m.elf.clone())?;
        egress_order.push_str(&file);
        egress_order.push('\n');
    }
    a.file(
        &format!("{moddir}/{EGRESS_MODULE_ORDER_FILE}"),
        0o644,
        egress_order.into_bytes(),
    )?;
    let pem = std::fs::read(&inputs.public_key).map_err(|e| ImageError::Input {
        what: "public key",
        path: inputs.public_key.clone(),
        problem: e.to_string(),
    })?;
    a.file(&format!("{AIRLOCK_ETC}/launcher.pub"), 0o644, pem)?;
    // The kernel is part of the image: its digest is inside what the id covers.
    a.file(
        &format!("{AIRLOCK_ETC}/kernel-sha256"),
        0o644,
        format!("{kernel_sha256}\n").into_bytes(),
    )?;
    Ok(a)
}

/// Puts the added files into the archive at their guest paths, with the list the
/// `debian` init carries them into the switched root by. A path the image already
/// has is refused: an added file never silently replaces part of the image.
fn add_files(a: &mut cpio::Archive, added: &[AddedFile]) -> Result<Vec<AddedEntry>, ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries = Vec::with_capacity(added.len());
    for f in added {
        let bad = |problem: String| ImageError::Input {
            what: "added file",
            path: f.host.clone(),
            problem,
        };
        check_added_guest_path(&f.guest).map_err(&bad)?;
        let meta = std::fs::metadata(&f.host).map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("is not a regular file".into()));
        }
        let rel = f.guest.trim_start_matches('/');
        if a.entries().any(|(p, _)| p == rel) {
            return Err(bad(format!("the image already has {}", f.guest)));
        }
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let bytes = std::fs::read(&f.host).map_err(|e| bad(e.to_string()))?;
        let sha256 = hex_sha256(&bytes);
        a.file(rel, mode, bytes)?;
        entries.push(AddedEntry {
            path: f.guest.clone(),
            mode,
            sha256,
        });
    }
    entries.sort_by(|x, y| x.path.cmp(&y.path));
    if !entries.is_empty() {
        let list: String = entries
            .iter()
            .map(|e| added_files_list_line(e.mode, &e.path))
            .collect();
        a.file(
            ADDED_FILES_LIST.trim_start_matches('/'),
            0o644,
            list.into_bytes(),
        )?;
    }
    Ok(entries)
}

/// The id covers every other byte of the image, then is added to it.
fn seal(mut a: cpio::Archive) -> Result<(cpio::Archive, String), ImageError> {
    let image_id = format!("sha256:{}", hex_sha256(&a.to_newc()));
    a.file(
        &format!("{AIRLOCK_ETC}/image-id"),
        0o644,
        format!("{image_id}\n").into_bytes(),
    )?;
    Ok((a, image_id))
}

/// The `minimal` initramfs for this kernel and these inputs, its image id and what
/// was added to it.
pub fn minimal_initramfs(
    inputs: &BuildInputs,
    modules: &[kmod::ModuleFile],
    egress_modules: &[kmod::ModuleFile],
    release: &str,
    kernel_sha256: &str,
) -> Result<(cpio::Archive, String, Vec<AddedEntry>), ImageError> {
    let mut a = base_initramfs(inputs, modules, egress_modules, release, kernel_sha256)?;
    a.file(
        "bin/busybox",
        0o755,
        read_static("busybox", &inputs.busybox)?,
    )?;
    for applet in busybox_applets(&inputs.busybox)? {
        a.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    for d in ["tmp", "workspace", "usr/bin", "sbin"] {
        a.dir(d, 0o755)?;
    }
    let added = add_files(&mut a, &inputs.added)?;
    let (a, id) = seal(a)?;
    Ok((a, id, added))
}

/// The `debian` initramfs: no userland (the rootfs is the userland), the modules to
/// mount the rootfs among the others, and the rootfs's digest, so the image id covers
/// the rootfs's bytes too.
pub fn debian_initramfs(
    inputs: &BuildInputs,
    modules: &[kmod::ModuleFile],
    egress_modules: &[kmod::ModuleFile],
    release: &str,
    kernel_sha256: &str,
    rootfs_sha256: &str,
) -> Result<(cpio::Archive, String, Vec<AddedEntry>), ImageError> {
    let mut a = base_initramfs(inputs, modules, egress_modules, release, kernel_sha256)?;
    a.file(
        &format!("{AIRLOCK_ETC}/{ROOTFS_DIGEST_FILE}"),
        0o644,
        format!("{rootfs_sha256}\n").into_bytes(),
    )?;
    let added = add_files(&mut a, &inputs.added)?;
    let (a, id) = seal(a)?;
    Ok((a, id, added))
}

/// Writes the image's [`RootfsReport`] next to `image.json` (a report alone changing
/// does not count as the image changing).
fn changed_report(dir: &Path, report: &RootfsReport) -> Result<bool, ImageError> {
    write_if_changed(&dir.join(REPORT_FILE), &report.to_json())
}

/// Writes `bytes` to `path` unless it already holds exactly them (so a rebuild with
/// nothing changed touches nothing); through a temporary file and a rename otherwise.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool, ImageError> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(true)
}

/// Copies `from` to `to` unless `to` already holds the same bytes (compared in chunks:
/// a rootfs is too large to hold twice); through a temporary file and a rename.
fn copy_if_changed(from: &Path, to: &Path) -> Result<bool, ImageError> {
    use std::io::Read;
    let same = (|| -> std::io::Result<bool> {
        let (mut a, mut b) = (std::fs::File::open(from)?, std::fs::File::open(to)?);
        if a.metadata()?.len() != b.metadata()?.len() {
            return Ok(false);
        }
        let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        loop {
            let n = a.read(&mut x)?;
            if n == 0 {
                return Ok(true);
            }
            b.read_exact(&mut y[..n])?;
            if x[..n] != y[..n] {
                return Ok(false);
            }
        }
    })();
    if same.unwrap_or(false) {
        return Ok(false);
    }
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, to).map_err(io(to))?;
    Ok(true)
}

/// Builds an image; `progress` receives one line per step. Returns the descriptor and
/// whether anything was written.
pub fn build(
    profile: Profile,
    inputs: &BuildInputs,
    progress: &dyn Fn(&str),
) -> Result<(ImageDescriptor, bool), ImageError> {
    build_image(&ImageRequest::profile(profile), inputs, progress)
}

/// Builds the image `req` asks for into `inputs.out/<name>/`; see [`build`].
pub fn build_image(
    req: &ImageRequest,
    inputs: &BuildInputs,
    progress: &dyn Fn(&str),
) -> Result<(ImageDescriptor, bool), ImageError> {
    let profile = req.profile;
    check_image_name(req.name()).map_err(ImageError::Request)?;
    match (profile, &req.source, req.packages.is_empty()) {
        (Profile::Rootfs, None, _) => {
            return Err(ImageError::Request(
                "a rootfs image needs its source (--from-rootfs)".into(),
            ))
        }
        (Profile::Minimal | Profile::Debian, Some(_), _) => {
            return Err(ImageError::Request(format!(
                "--from-rootfs builds its own profile, not `{}`",
                profile.as_str()
            )))
        }
        (Profile::Minimal | Profile::Rootfs, _, false) => {
            return Err(ImageError::Request(
                "--packages adds Debian packages to the `debian` profile only".into(),
            ))
        }
        _ => {}
    }
    if profile != Profile::Minimal {
        // Fail before any download when the host cannot build the rootfs.
        if let Some(missing) = debian::missing_tool() {
            return Err(missing.into());
        }
    }
    let k = kernel::fetch_kernel(&inputs.cache, progress)?;
    let mut wanted: Vec<&str> = ENFORCER_MODULES.to_vec();
    if profile != Profile::Minimal {
        wanted.extend(debian::ROOT_MODULES);
    }
    progress(&format!(
        "resolving modules {} against {}",
        wanted.join(", "),
        k.modules.display()
    ));
    let tree = kmod::ModuleTree::scan(&k.modules)?;
    let modules = tree.load_order(&wanted)?;
    let mut with_egress = wanted.clone();
    with_egress.extend(EGRESS_MODULES);
    let egress_modules: Vec<kmod::ModuleFile> = tree
        .load_order(&with_egress)?
        .into_iter()
        .filter(|m| !modules.iter().any(|b| b.name == m.name))
        .collect();
    progress(&format!(
        "load order: {}",
        modules
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(" → ")
    ));
    let config = std::fs::read_to_string(&k.config).map_err(io(&k.config))?;
    let landlock_abi =
        kernel::landlock_abi(&config, kernel::KERNEL_RELEASE).ok_or_else(|| ImageError::Input {
            what: "kernel configuration",
            path: k.config.clone(),
            problem: "Landlock is not enabled".into(),
        })?;
    let (rootfs, report) = match (&req.source, profile) {
        (_, Profile::Minimal) => (
            None,
            RootfsReport::of_minimal(&busybox_applets(&inputs.busybox)?),
        ),
        (Some(source), _) => {
            let (rootfs, report) = custom::fetch_custom_rootfs(&inputs.cache, source, progress)?;
            (Some(rootfs), report)
        }
        (None, _) => {
            let rootfs = debian::fetch_rootfs_with(&inputs.cache, &req.packages, progress)?;
            let report = RootfsReport::read(rootfs.report.parent().unwrap_or(Path::new(".")))
                .map_err(|problem| ImageError::Input {
                    what: "rootfs report",
                    path: rootfs.report.clone(),
                    problem,
                })?
                .unwrap_or_default();
            (Some(rootfs), report)
        }
    };
    progress("assembling the initramfs");
    let vmlinuz = std::fs::read(&k.vmlinuz).map_err(io(&k.vmlinuz))?;
    let vmlinux = std::fs::read(&k.vmlinux).map_err(io(&k.vmlinux))?;
    // Both kernels are part of the image (QEMU boots one, cloud-hypervisor the other):
    // both digests are inside what the id covers, in `sha256sum` form.
    let kernel_sha256 = format!(
        "{}  vmlinuz\n{}  vmlinux",
        hex_sha256(&vmlinuz),
        hex_sha256(&vmlinux)
    );
    let release = kernel::KERNEL_RELEASE;
    let (archive, image_id, added) = match &rootfs {
        None => minimal_initramfs(inputs, &modules, &egress_modules, release, &kernel_sha256)?,
        Some(r) => debian_initramfs(
            inputs,
            &modules,
            &egress_modules,
            release,
            &kernel_sha256,
            &r.sha256,
        )?,
    };
    let dir = inputs.out.join(req.name());
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    changed_report(&dir, &report)?;
    let initrd = dir.join("initramfs.cpio.gz");
    let mut changed = write_if_changed(&initrd, &archive.to_gzip())?;
    let kernel_out = dir.join("vmlinuz");
    let vmlinux_out = dir.join("vmlinux");
    // The bytes just hashed, not the cache files again.
    for (bytes, to) in [(&vmlinuz, &kernel_out), (&vmlinux, &vmlinux_out)] {
        changed |= write_if_changed(to, bytes)?;
    }
    let rootfs_out = match &rootfs {
        None => None,
        Some(r) => {
            let to = dir.join("rootfs.erofs");
            changed |= copy_if_changed(&r.image, &to)?;
            Some(to)
        }
    };
    let pem = std::fs::read_to_string(&inputs.public_key).map_err(io(&inputs.public_key))?;
    let trusted_key_id = airlock_proto::envelope::Verifier::from_public_key_pem(&pem)
        .map_err(|e| ImageError::Input {
            what: "public key",
            path: inputs.public_key.clone(),
            problem: e.to_string(),
        })?
        .key_id()
        .to_string();
    let enforcer = std::fs::read(&inputs.enforcer).map_err(io(&inputs.enforcer))?;
    let descriptor = ImageDescriptor {
        profile,
        image_id,
        kernel: kernel_out,
        vmlinux: vmlinux_out,
        initrd,
        rootfs: rootfs_out,
        cmdline: cmdline(profile),
        kernel_release: kernel::KERNEL_RELEASE.to_string(),
        kernel_package: format!("{}={}", kernel::KERNEL_PACKAGE, kernel::KERNEL_VERSION),
        landlock_abi,
        enforcer_version: env!("CARGO_PKG_VERSION").to_string(),
        enforcer_sha256: hex_sha256(&enforcer),
        trusted_key_id,
        modules: modules.iter().map(|m| m.name.clone()).collect(),
        added,
        name: req.name.clone(),
        packages: req.packages.clone(),
        source: report.source.clone(),
    };
    let json = serde_json::to_vec_pretty(&descriptor).expect("descriptors serialize");
    changed |= write_if_changed(&dir.join("image.json"), &json)?;
    Ok((descriptor, changed))
}
