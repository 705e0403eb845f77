//! A rootfs from a team's own source (`airlock image build --from-rootfs SRC`): loaded
//! and checked by [`super::rootfs_source`], written as one canonical tarball, packed
//! read-only as erofs by the same packer as `debian`, and cached by the digest of what
//! was packed — so the same source gives the same bytes and the same image id, and a
//! rebuild packs nothing. The image itself (initramfs, id) is then made exactly as for
//! `debian`: the id covers the rootfs's digest, the kernel, the enforcer and the key.

use super::debian::{self, Rootfs, RootfsError};
use super::inspect::{RootfsReport, REPORT_FILE};
use super::rootfs_source::{load_rootfs_source, AllowList, SourceLimits};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// What to build a rootfs from.
#[derive(Debug, Clone)]
pub struct RootfsSource {
    /// A directory, a tarball, an OCI layout or archive, or a `docker save` tar.
    pub path: PathBuf,
    /// `--allow KIND:GLOB` flags.
    pub allow: Vec<String>,
    /// How much the source may make the build read.
    pub limits: SourceLimits,
}

/// Bump when the packing changes meaning without changing its recipe text.
const CUSTOM_RECIPE_VERSION: u32 = 1;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The rootfs of `source`, from the cache or packed into it, with its report.
pub fn fetch_custom_rootfs(
    cache: &Path,
    source: &RootfsSource,
    progress: &dyn Fn(&str),
) -> Result<(Rootfs, RootfsReport), super::ImageError> {
    let base = cache.join("custom-rootfs");
    std::fs::create_dir_all(&base).map_err(io(&base))?;
    let allow = AllowList::parse(&source.allow)?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&base)
        .map_err(io(&base))?;
    let w = work.path();
    let stage = w.join("stage");
    std::fs::create_dir(&stage).map_err(io(&stage))?;
    progress(&format!("reading and checking {}", source.path.display()));
    let loaded = load_rootfs_source(&source.path, &stage, &source.limits, &allow)?;
    let report = RootfsReport {
        inventory: super::rootfs_source::Inventory::of(&loaded.tree),
        contract: Some(loaded.contract.clone()),
        allowed: loaded.findings.clone(),
        source: Some(loaded.source.clone()),
        oci_config: loaded.oci_config.clone(),
    };
    progress(&format!(
        "{} {} ({}), {} entries",
        match loaded.source.kind {
            super::rootfs_source::SourceKind::Directory => "directory",
            super::rootfs_source::SourceKind::Tarball => "tarball",
            super::rootfs_source::SourceKind::OciLayout => "OCI layout",
            super::rootfs_source::SourceKind::OciArchive => "OCI archive",
            super::rootfs_source::SourceKind::DockerArchive => "docker archive",
        },
        loaded.source.path.display(),
        loaded.source.digest,
        loaded.tree.len()
    ));
    for f in &loaded.findings {
        progress(&format!(
            "allowed by --allow: {} {} ({})",
            f.kind.as_str(),
            f.path,
            f.detail
        ));
    }
    for note in &loaded.contract.notes {
        progress(&format!("note: {note}"));
    }
    // The cache key is what will be packed (the canonical tarball), not the source's
    // own digest: two sources with the same contents share one rootfs, and an allow
    // list that lets a different set through changes the key with the contents.
    let tree_digest = loaded.tree.digest()?;
    let recipe = format!(
        "airlock custom rootfs v{CUSTOM_RECIPE_VERSION}\ntree sha256:{tree_digest}\n{}",
        debian::packer_recipe()
    );
    let key = hex::encode(Sha256::digest(recipe.as_bytes()))[..16].to_string();
    let dest = base.join(&key);
    let _lock = debian::lock_exclusive(&base.join(".lock"))?;
    if !dest.join(".complete").exists() {
        let tarball = w.join("rootfs.tar");
        {
            let f = std::fs::File::create(&tarball).map_err(io(&tarball))?;
            let mut out = std::io::BufWriter::new(f);
            loaded.tree.write_canonical_tar(&mut out)?;
            use std::io::Write;
            out.flush().map_err(io(&tarball))?;
        }
        // The blobs are in the tarball now.
        drop(loaded);
        let _ = std::fs::remove_dir_all(&stage);
        progress("packing the rootfs read-only with mkfs.erofs");
        let image = w.join("rootfs.erofs");
        debian::pack_erofs(&tarball, &image)?;
        std::fs::remove_file(&tarball).map_err(io(&tarball))?;
        let (sha256, _) = debian::sha256_file(&image)?;
        let sum = w.join("rootfs.erofs.sha256");
        std::fs::write(&sum, format!("{sha256}\n")).map_err(io(&sum))?;
        std::fs::write(w.join("recipe"), &recipe).map_err(io(w))?;
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::create_dir(&dest).map_err(io(&dest))?;
        for f in ["rootfs.erofs", "rootfs.erofs.sha256", "recipe"] {
            std::fs::rename(w.join(f), dest.join(f)).map_err(io(&dest))?;
        }
        std::fs::write(dest.join(".complete"), &key).map_err(io(&dest))?;
    } else {
        progress(&format!("rootfs from the cache ({})", dest.display()));
    }
    // The report names this build's source (another path with the same contents
    // shares the rootfs, not the report).
    let report_path = dest.join(REPORT_FILE);
    std::fs::write(&report_path, report.to_json()).map_err(io(&report_path))?;
    let image = dest.join("rootfs.erofs");
    let sum = dest.join("rootfs.erofs.sha256");
    let want = std::fs::read_to_string(&sum).map_err(io(&sum))?;
    // The image id will vouch for these bytes: hash them, do not trust the note.
    let (sha256, size) = debian::sha256_file(&image)?;
    if sha256 != want.trim() {
        return Err(RootfsError::BadImage {
            path: image,
            problem: format!(
                "its sha256 is {sha256}, not the {} it was built with; remove {} to rebuild it",
                want.trim(),
                dest.display()
            ),
        }
        .into());
    }
    Ok((
        Rootfs {
            image,
            sha256,
            size,
            key,
            report: report_path,
        },
        report,
    ))
}
