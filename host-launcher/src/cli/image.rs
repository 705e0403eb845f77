//! `airlock image`: build guest images (from a profile or a team's own root
//! filesystem), and inspect, list and remove them.

use super::output::{errln, outln};
use super::{fail, Failure};
use airlock_launcher::image::{AddedFile, ImageDescriptor, RootfsReport};
use airlock_launcher::keys::{self, PUBLIC_KEY_FILE};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build a guest image (kernel, initramfs, descriptor) from a profile or from a
    /// team's own root filesystem; a rebuild with nothing changed writes nothing.
    Build(Box<ImageBuildArgs>),
    /// What an image provides: tool directories and their programs, interpreters and
    /// their library trees, loaders, libc, the kernel's Landlock ABI, added files.
    Inspect(ImageInspectArgs),
    /// The images in the images directory: name, size, what each was built from.
    List(ImageListArgs),
    /// Remove images from the images directory.
    Rm(ImageRmArgs),
}

pub fn exec(cmd: ImageCmd) -> Result<u8, Failure> {
    match cmd {
        ImageCmd::Build(a) => build(*a),
        ImageCmd::Inspect(a) => inspect(a),
        ImageCmd::List(a) => list(a),
        ImageCmd::Rm(a) => rm(a),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProfileArg {
    /// initramfs: enforcer, shim, busybox, modules, key.
    Minimal,
    /// Debian trixie rootfs with git, curl, python3 (read-only erofs, tmpfs overlay).
    Debian,
}

#[derive(Args)]
pub struct ImageBuildArgs {
    /// Which image (not with --from-rootfs).
    #[arg(long, value_enum, required_unless_present = "from_rootfs")]
    profile: Option<ProfileArg>,
    /// Build from a team's own root filesystem: a directory, a tarball (`docker
    /// export`; plain, gzip, xz or zstd), an OCI image layout or its tar
    /// (`oci-archive:`), or a `docker save` tar. Needs --name.
    #[arg(
        long,
        value_name = "SRC",
        conflicts_with = "profile",
        requires = "name"
    )]
    from_rootfs: Option<PathBuf>,
    /// The image's name: its directory under the images directory (default: the
    /// profile's name).
    #[arg(long)]
    name: Option<String>,
    /// Let set-id files, file capabilities, devices or files of unknown owners through
    /// (--from-rootfs): KIND:GLOB with KIND setid, capability, device or owner, e.g.
    /// `setid:/usr/bin/su` (repeatable). Without it each is refused, all named at once.
    #[arg(long, value_name = "KIND:GLOB")]
    allow: Vec<String>,
    /// The most the source may make the build read, decompressed, across all layers
    /// (--from-rootfs).
    #[arg(long, value_name = "MIB", default_value_t = 8192)]
    max_source_mib: u64,
    /// Extra Debian packages for the `debian` profile, comma-separated
    /// (`--packages nodejs,ripgrep`); give --name too, or it replaces `debian`.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    packages: Vec<String>,
    /// Output directory; the image goes to OUT/<name>/ (default: $XDG_CACHE_HOME/airlock/images).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the kernel download and built root filesystems are cached (default:
    /// $XDG_CACHE_HOME/airlock).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Launcher public key the image trusts (default: $XDG_CONFIG_HOME/airlock/airlock.pub).
    #[arg(long = "pub")]
    public_key: Option<PathBuf>,
    /// Static enforcer binary (default: airlock-enforcer next to airlock).
    #[arg(long)]
    enforcer: Option<PathBuf>,
    /// Static shim binary (default: airlock-shim next to airlock).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Static busybox (from Debian's busybox-static).
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    /// Add a host file to the image at an absolute guest path (repeatable), e.g. a
    /// static tool: `--add ./mytool:/opt/tools/mytool`. Covered by the image id.
    #[arg(long = "add", value_name = "HOST:GUEST", value_parser = AddedFile::parse)]
    added: Vec<AddedFile>,
    /// Print the descriptor as JSON.
    #[arg(long)]
    json: bool,
}

/// The images directory: `--out`, else the cache's.
fn images_dir(out: Option<PathBuf>) -> Result<PathBuf, Failure> {
    match out {
        Some(o) => Ok(o),
        None => Ok(keys::default_cache_dir()
            .map_err(|e| fail(1, e))?
            .join("images")),
    }
}

fn build(a: ImageBuildArgs) -> Result<u8, Failure> {
    use airlock_launcher::image::rootfs_source::SourceLimits;
    use airlock_launcher::image::{BuildInputs, ImageRequest, Profile, RootfsSource};
    let cache = match a.cache {
        Some(c) => c,
        None => keys::default_cache_dir().map_err(|e| fail(1, e))?,
    };
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let public_key = match a.public_key {
        Some(p) => p,
        None => keys::default_key_dir()
            .map_err(|e| fail(1, e))?
            .join(PUBLIC_KEY_FILE),
    };
    let inputs = BuildInputs {
        enforcer: a
            .enforcer
            .unwrap_or_else(|| exe_dir.join("airlock-enforcer")),
        shim: a.shim.unwrap_or_else(|| exe_dir.join("airlock-shim")),
        busybox: a.busybox,
        public_key,
        out: images_dir(a.out)?,
        cache,
        added: a.added,
    };
    let profile = match (a.profile, &a.from_rootfs) {
        (_, Some(_)) => Profile::Rootfs,
        (Some(ProfileArg::Minimal), None) => Profile::Minimal,
        (Some(ProfileArg::Debian), None) => Profile::Debian,
        (None, None) => return Err(fail(2, "give --profile or --from-rootfs")),
    };
    if a.from_rootfs.is_none() && (!a.allow.is_empty()) {
        return Err(fail(2, "--allow is for --from-rootfs"));
    }
    let req = ImageRequest {
        profile,
        name: a.name,
        packages: a.packages,
        source: a.from_rootfs.map(|path| RootfsSource {
            path,
            allow: a.allow,
            limits: SourceLimits {
                max_bytes: a.max_source_mib.saturating_mul(1 << 20),
                ..SourceLimits::default()
            },
        }),
    };
    let progress = |line: &str| errln!("airlock: image: {line}");
    let (descriptor, changed) =
        airlock_launcher::image::build_image(&req, &inputs, &progress).map_err(|e| fail(1, e))?;
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&descriptor).expect("json")
        );
    } else {
        outln!(
            "{} image {} ({}): {}",
            descriptor.name(),
            descriptor.image_id,
            if changed {
                "built"
            } else {
                "up to date, nothing written"
            },
            inputs
                .out
                .join(descriptor.name())
                .join("image.json")
                .display()
        );
    }
    Ok(0)
}

#[derive(Args)]
pub struct ImageInspectArgs {
    /// An image's name in the images directory, its directory, or its image.json.
    image: String,
    /// The images directory (default: $XDG_CACHE_HOME/airlock/images).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print everything as one JSON object.
    #[arg(long)]
    json: bool,
}

/// An image found by name (in `dir`), directory or descriptor path: its directory
/// and its descriptor.
fn find_image(dir: &Path, what: &str) -> Result<(PathBuf, ImageDescriptor), Failure> {
    let p = Path::new(what);
    let image_dir = if p.is_file() {
        p.parent().map(Path::to_path_buf).unwrap_or_default()
    } else if p.is_dir() && (what.contains('/') || !dir.join(what).is_dir()) {
        p.to_path_buf()
    } else {
        airlock_launcher::image::check_image_name(what).map_err(|e| fail(2, e))?;
        dir.join(what)
    };
    let json = image_dir.join("image.json");
    let text = std::fs::read(&json).map_err(|e| {
        fail(
            1,
            format!(
                "no image `{what}`: {}: {e} (`airlock image list` shows what there is)",
                json.display()
            ),
        )
    })?;
    let d =
        serde_json::from_slice(&text).map_err(|e| fail(1, format!("{}: {e}", json.display())))?;
    Ok((image_dir, d))
}

fn inspect(a: ImageInspectArgs) -> Result<u8, Failure> {
    let dir = images_dir(a.out)?;
    let (image_dir, d) = find_image(&dir, &a.image)?;
    let report = RootfsReport::read(&image_dir).map_err(|e| fail(1, e))?;
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "name": d.name(),
                "directory": image_dir,
                "descriptor": d,
                "report": report,
            }))
            .expect("json")
        );
        return Ok(0);
    }
    outln!(
        "image {} ({}): {}",
        d.name(),
        d.profile.as_str(),
        d.image_id
    );
    outln!("  directory     {}", image_dir.display());
    match (&d.source, d.packages.is_empty()) {
        (Some(s), _) => outln!(
            "  built from    {} {} ({})",
            serde_json::to_value(s.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            s.path.display(),
            s.digest
        ),
        (None, false) => outln!(
            "  built from    profile {} + packages {}",
            d.profile.as_str(),
            d.packages.join(", ")
        ),
        (None, true) => outln!("  built from    profile {}", d.profile.as_str()),
    }
    outln!(
        "  kernel        {} ({}), Landlock ABI {}",
        d.kernel_release,
        d.kernel_package,
        d.landlock_abi
    );
    outln!(
        "  enforcer      {} (sha256 {}), trusts key {}",
        d.enforcer_version,
        &d.enforcer_sha256[..16.min(d.enforcer_sha256.len())],
        d.trusted_key_id
    );
    let Some(report) = report else {
        outln!("  (no inventory: the image was built by an older airlock; rebuild it)");
        return Ok(0);
    };
    let inv = &report.inventory;
    for t in &inv.tool_dirs {
        let shown = if t.path == t.resolved {
            t.path.clone()
        } else {
            format!("{} -> {}", t.path, t.resolved)
        };
        outln!("  tools in      {shown}: {} programs", t.executables.len());
        if !t.executables.is_empty() {
            outln!("                {}", summary(&t.executables, 24));
        }
    }
    for i in &inv.interpreters {
        outln!(
            "  interpreter   {} at {}{}{}",
            i.name,
            i.path,
            if i.resolved != i.path {
                format!(" -> {}", i.resolved)
            } else {
                String::new()
            },
            if i.library_dirs.is_empty() {
                String::new()
            } else {
                format!("; library {}", i.library_dirs.join(", "))
            }
        );
    }
    for l in &inv.loaders {
        outln!(
            "  loader        {} ({}; asked for by {} tools)",
            l.path,
            if l.present { "present" } else { "MISSING" },
            l.tools
        );
    }
    if inv.libc.is_empty() {
        outln!("  libc          none (statically linked tools only)");
    } else {
        outln!("  libc          {}", inv.libc.join(", "));
    }
    for f in &d.added {
        outln!(
            "  added file    {} (mode {:o}, sha256 {})",
            f.path,
            f.mode,
            f.sha256
        );
    }
    for f in &report.allowed {
        outln!(
            "  allowed       {} {} ({})",
            f.kind.as_str(),
            f.path,
            f.detail
        );
    }
    if let Some(c) = &report.contract {
        for n in &c.notes {
            outln!("  note          {n}");
        }
    }
    if let Some(c) = &report.oci_config {
        outln!("  config (reported, never a grant):");
        if let Some(u) = &c.user {
            outln!("                User {u}");
        }
        if let Some(w) = &c.working_dir {
            outln!("                WorkingDir {w}");
        }
        for e in &c.env {
            outln!("                Env {e}");
        }
    }
    Ok(0)
}

/// The first `n` names, and how many more.
fn summary(names: &[String], n: usize) -> String {
    let mut s = names.iter().take(n).cloned().collect::<Vec<_>>().join(" ");
    if names.len() > n {
        s.push_str(&format!(" … (+{})", names.len() - n));
    }
    s
}

#[derive(Args)]
pub struct ImageListArgs {
    /// The images directory (default: $XDG_CACHE_HOME/airlock/images).
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON object per image, in an array.
    #[arg(long)]
    json: bool,
}

/// Bytes under `dir` (regular files, not following symlinks).
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

fn list(a: ImageListArgs) -> Result<u8, Failure> {
    let dir = images_dir(a.out)?;
    let mut rows = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for image_dir in names {
            let Ok(text) = std::fs::read(image_dir.join("image.json")) else {
                continue;
            };
            let name = image_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let built_from = match serde_json::from_slice::<ImageDescriptor>(&text) {
                Ok(d) => match (&d.source, d.packages.is_empty()) {
                    (Some(s), _) => format!("{} ({})", s.path.display(), s.digest),
                    (None, false) => {
                        format!("profile {} + {}", d.profile.as_str(), d.packages.join(","))
                    }
                    (None, true) => format!("profile {}", d.profile.as_str()),
                },
                Err(e) => format!("unreadable image.json: {e}"),
            };
            let id = serde_json::from_slice::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["image_id"].as_str().map(str::to_string))
                .unwrap_or_default();
            rows.push((name, id, du(&image_dir), built_from));
        }
    }
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(name, id, size, from)| {
                serde_json::json!({"name": name, "image_id": id, "size_bytes": size, "built_from": from})
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(0);
    }
    if rows.is_empty() {
        errln!(
            "airlock: no images in {} (build one with `airlock image build --profile minimal`)",
            dir.display()
        );
        return Ok(0);
    }
    outln!(
        "{:<20} {:<19} {:>9}  BUILT FROM",
        "NAME",
        "IMAGE ID",
        "SIZE"
    );
    for (name, id, size, from) in rows {
        let short = id.strip_prefix("sha256:").unwrap_or(&id);
        outln!(
            "{:<20} {:<19} {:>6} MiB  {from}",
            name,
            format!("sha256:{}", &short[..12.min(short.len())]),
            size.div_ceil(1 << 20)
        );
    }
    Ok(0)
}

#[derive(Args)]
pub struct ImageRmArgs {
    /// Names of images in the images directory.
    #[arg(required = true)]
    names: Vec<String>,
    /// The images directory (default: $XDG_CACHE_HOME/airlock/images).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn rm(a: ImageRmArgs) -> Result<u8, Failure> {
    let dir = images_dir(a.out)?;
    // Every name checked before anything is removed: all or nothing.
    let mut dirs = Vec::new();
    for name in &a.names {
        airlock_launcher::image::check_image_name(name).map_err(|e| fail(2, e))?;
        let d = dir.join(name);
        if !d.join("image.json").is_file() {
            return Err(fail(
                1,
                format!("no image `{name}` in {} (nothing removed)", dir.display()),
            ));
        }
        dirs.push((name, d));
    }
    for (name, d) in dirs {
        std::fs::remove_dir_all(&d).map_err(|e| fail(1, format!("{}: {e}", d.display())))?;
        outln!("removed {name} ({})", d.display());
    }
    Ok(0)
}
