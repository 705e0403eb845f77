//! `airlock image`: build guest images.

use super::output::{errln, outln};
use super::{fail, Failure};
use airlock_launcher::image::AddedFile;
use airlock_launcher::keys::{self, PUBLIC_KEY_FILE};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build a guest image (kernel, initramfs, descriptor); a rebuild with nothing
    /// changed writes nothing.
    Build(ImageBuildArgs),
}

pub fn exec(cmd: ImageCmd) -> Result<u8, Failure> {
    match cmd {
        ImageCmd::Build(a) => build(a),
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
    /// Which image.
    #[arg(long, value_enum)]
    profile: ProfileArg,
    /// Output directory; the image goes to OUT/<profile>/ (default: $XDG_CACHE_HOME/airlock/images).
    #[arg(long)]
    out: Option<PathBuf>,
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

fn build(a: ImageBuildArgs) -> Result<u8, Failure> {
    use airlock_launcher::image::{BuildInputs, Profile};
    let cache = keys::default_cache_dir().map_err(|e| fail(1, e))?;
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
        out: a.out.unwrap_or_else(|| cache.join("images")),
        cache,
        added: a.added,
    };
    let profile = match a.profile {
        ProfileArg::Minimal => Profile::Minimal,
        ProfileArg::Debian => Profile::Debian,
    };
    let progress = |line: &str| errln!("airlock: image: {line}");
    let (descriptor, changed) =
        airlock_launcher::image::build(profile, &inputs, &progress).map_err(|e| fail(1, e))?;
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&descriptor).expect("json")
        );
    } else {
        outln!(
            "{} image {} ({}): {}",
            profile.as_str(),
            descriptor.image_id,
            if changed {
                "built"
            } else {
                "up to date, nothing written"
            },
            inputs
                .out
                .join(profile.as_str())
                .join("image.json")
                .display()
        );
    }
    Ok(0)
}
