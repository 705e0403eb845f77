//! A team's own root filesystem (`airlock image build --from-rootfs SRC`), turned into a
//! validated, merged, deterministic [`Tree`] ready to be packed read-only.
//!
//! The source is a directory, a tarball (`docker export`; plain, gzip, xz or zstd,
//! told apart by magic bytes), an OCI image layout (a directory or a tar of one, as
//! `skopeo`/`buildah` write `oci-archive:`) or a `docker save` tar. OCI and docker
//! layers are applied in order with their whiteouts; every blob is checked against its
//! digest before it is used. The tree is a model in memory: file contents go to
//! `staging/blobs/<sha256>`, so nothing a source says is ever written outside the
//! staging directory, and paths that would escape the root (`..`, writing through a
//! planted symlink) are refused all the same, as they would mean something else to the
//! next tool. What a rootfs may carry is then checked: set-id files, file capabilities,
//! devices and unknown owners are refused all at once unless `--allow` names them
//! ([`findings`]), and the image contract holds ([`contract`]).
//!
//! Everything read counts against [`SourceLimits`]: bytes decompressed across all
//! layers (a layer deleted by a later one still counts) and entries.

pub mod canonical_tar;
pub mod contract;
mod directory;
mod elf;
pub mod findings;
pub mod inventory;
mod oci;
mod tar_layer;
pub mod tree;

pub use contract::{check_contract, ContractError, ContractReport, FORBIDDEN_PATHS};
pub use findings::{AllowList, Finding, FindingKind};
pub use inventory::Inventory;
pub use oci::OciConfigReport;
pub use tar_layer::LayerFormat;
pub use tree::{Entry, EntryKind, Tree};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// How much a source may make us read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLimits {
    /// Bytes read (decompressed) in total, across all layers.
    pub max_bytes: u64,
    /// Entries read in total, across all layers (whiteouts included).
    pub max_entries: u64,
    /// Size of one JSON document (OCI index, manifest, config; docker `manifest.json`).
    pub max_json_bytes: u64,
}

impl Default for SourceLimits {
    fn default() -> SourceLimits {
        SourceLimits {
            max_bytes: 8 << 30,
            max_entries: 1_000_000,
            max_json_bytes: 4 << 20,
        }
    }
}

/// What kind of source a rootfs came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A directory tree.
    Directory,
    /// A tarball of the root (`docker export`), possibly compressed.
    Tarball,
    /// An OCI image layout directory.
    OciLayout,
    /// A tar of an OCI image layout.
    OciArchive,
    /// A `docker save` tar with only `manifest.json`.
    DockerArchive,
}

/// Where a rootfs came from, for `image.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDescription {
    /// The kind of source.
    pub kind: SourceKind,
    /// The path given.
    pub path: PathBuf,
    /// OCI: the image manifest's digest; docker archive: the config's digest (the
    /// image id); tarball: the file's; directory: the canonical tree's (`sha256:<hex>`).
    pub digest: String,
}

/// A source loaded, checked and merged.
#[derive(Debug)]
pub struct LoadedRootfs {
    /// The merged tree.
    pub tree: Tree,
    /// Where it came from.
    pub source: SourceDescription,
    /// What an OCI or docker image config said (reported, never trusted as a grant).
    pub oci_config: Option<OciConfigReport>,
    /// Findings an `--allow` accepted; they stay in the tree.
    pub findings: Vec<Finding>,
    /// What the contract check reported.
    pub contract: ContractReport,
}

/// Why a rootfs source cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path is none of the kinds of source.
    #[error("rootfs source {path}: {problem}")]
    NotASource {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        problem: String,
    },
    /// Reading or writing a file failed.
    #[error("rootfs source {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// An archive or its compression is corrupt.
    #[error("{origin}: corrupt archive ({problem}); check the file or export it again")]
    Corrupt {
        /// File or layer.
        origin: String,
        /// What the decoder said.
        problem: String,
    },
    /// An entry's name cannot be used (empty, NUL, not UTF-8).
    #[error("{origin}: entry {path:?}: {problem}")]
    BadName {
        /// File or layer.
        origin: String,
        /// The name as read (lossy).
        path: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// An entry's path has a `..` component.
    #[error("{origin}: entry {path} has a `..` component and would land outside the root; rebuild the archive with paths inside the root")]
    PathEscapes {
        /// File or layer.
        origin: String,
        /// The entry.
        path: String,
    },
    /// An entry would be written through a symlink an earlier entry planted.
    #[error("{origin}: entry {path} would be written through the symlink {link} -> {target}; put it at the path the link points to")]
    ThroughSymlink {
        /// File or layer.
        origin: String,
        /// The entry.
        path: String,
        /// The symlink on its way.
        link: String,
        /// Where the symlink points.
        target: String,
    },
    /// An entry's parent is not a directory.
    #[error("{origin}: entry {path}: {parent} is not a directory")]
    NotADirectory {
        /// File or layer.
        origin: String,
        /// The entry.
        path: String,
        /// The parent that is not a directory.
        parent: String,
    },
    /// A hardlink points somewhere it may not.
    #[error("{origin}: hardlink {path} -> {target}: {problem}")]
    Hardlink {
        /// File or layer.
        origin: String,
        /// The link.
        path: String,
        /// What it links to.
        target: String,
        /// Why it is refused.
        problem: String,
    },
    /// A name that means a whiteout in an image layer, in a source that has none.
    #[error("{origin}: {path} is named like an OCI whiteout (`.wh.`), which would delete files if this tree were ever a layer; rename it")]
    WhiteoutName {
        /// File.
        origin: String,
        /// The entry.
        path: String,
    },
    /// An entry of a kind a rootfs may not carry.
    #[error("{origin}: {path} is a {what}; {hint}")]
    Unsupported {
        /// File or layer.
        origin: String,
        /// The entry.
        path: String,
        /// Its kind.
        what: String,
        /// What to do.
        hint: &'static str,
    },
    /// More bytes than [`SourceLimits::max_bytes`].
    #[error("{origin}: more than {limit} bytes read in total (layers count in full even when a later layer deletes what they wrote); slim the image or raise the limit")]
    TooLarge {
        /// Where the limit was crossed.
        origin: String,
        /// The limit.
        limit: u64,
    },
    /// Its names would take more memory than a rootfs can need.
    #[error("{origin}: the names of its entries take more than {limit} bytes; the archive is not a rootfs (deep or repeated paths)")]
    NamesTooLarge {
        /// Where the limit was crossed.
        origin: String,
        /// The limit.
        limit: u64,
    },
    /// More entries than [`SourceLimits::max_entries`].
    #[error(
        "{origin}: more than {limit} entries read in total; slim the image or raise the limit"
    )]
    TooManyEntries {
        /// Where the limit was crossed.
        origin: String,
        /// The limit.
        limit: u64,
    },
    /// A blob's bytes are not what its descriptor says.
    #[error("{origin}: blob {digest}: {problem}; the image is corrupt or was tampered with, export it again")]
    BlobMismatch {
        /// The image.
        origin: String,
        /// The descriptor's digest.
        digest: String,
        /// What differs.
        problem: String,
    },
    /// An OCI or docker image's structure cannot be used.
    #[error("{origin}: {problem}")]
    Image {
        /// The image or document.
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// Set-id files, capabilities, devices or unknown owners nobody allowed.
    #[error("{}", findings::refusal_message(.0))]
    Findings(Vec<Finding>),
    /// An `--allow` flag cannot be parsed.
    #[error("--allow {flag}: {problem}")]
    Allow {
        /// The flag's value.
        flag: String,
        /// What is wrong.
        problem: String,
    },
    /// Writing the canonical tar failed.
    #[error("writing the canonical rootfs tar: {0}")]
    Output(std::io::Error),
    /// The image contract does not hold.
    #[error(transparent)]
    Contract(#[from] ContractError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads `src` into a tree under `staging`, checks it and reports what it holds.
/// `staging` must exist; the tree's blobs stay there for as long as the tree is used.
pub fn load_rootfs_source(
    src: &Path,
    staging: &Path,
    limits: &SourceLimits,
    allow: &AllowList,
) -> Result<LoadedRootfs, SourceError> {
    let meta = std::fs::metadata(src).map_err(io(src))?;
    let mut tree = Tree::new(staging, limits)?;
    let (kind, digest, oci_config) = if meta.is_dir() {
        if src.join("oci-layout").is_file() && src.join("index.json").is_file() {
            let layout = oci::Layout::Directory(src.to_path_buf());
            let (digest, config) = oci::load_layout(&layout, &mut tree, limits)?;
            (SourceKind::OciLayout, digest, Some(config))
        } else {
            tree.load_directory(src)?;
            (SourceKind::Directory, String::new(), None)
        }
    } else if meta.is_file() {
        load_archive(src, staging, limits, &mut tree)?
    } else {
        return Err(SourceError::NotASource {
            path: src.to_path_buf(),
            problem: "is neither a directory nor a file (a directory, a tarball, an OCI layout or archive, or a `docker save` tar)".into(),
        });
    };
    let findings = findings::check(&tree, allow)?;
    let contract = check_contract(&tree)?;
    let digest = if kind == SourceKind::Directory {
        format!("sha256:{}", tree.digest()?)
    } else {
        digest
    };
    Ok(LoadedRootfs {
        tree,
        source: SourceDescription {
            kind,
            path: src.to_path_buf(),
            digest,
        },
        oci_config,
        findings,
        contract,
    })
}

/// A file source: read once as a plain tar into a scratch tree (its contents land in
/// the blob store, where an OCI blob's file name is its digest), then told apart by
/// what it holds: `oci-layout` + `index.json` is an OCI archive, `manifest.json`
/// alone a docker archive, anything else a rootfs tarball, loaded again for real.
fn load_archive(
    src: &Path,
    staging: &Path,
    limits: &SourceLimits,
    tree: &mut Tree,
) -> Result<(SourceKind, String, Option<OciConfigReport>), SourceError> {
    let origin = src.display().to_string();
    let outer_dir = staging.join("outer");
    std::fs::create_dir_all(&outer_dir).map_err(io(&outer_dir))?;
    let mut outer = Tree::new(&outer_dir, limits)?;
    outer.load_tar_file(src, &origin, LayerFormat::Outer)?;
    let is_file =
        |p: &str| matches!(outer.get(p), Some(e) if matches!(e.kind, EntryKind::File { .. }));
    let (is_oci, is_docker) = (
        is_file("oci-layout") && is_file("index.json"),
        is_file("manifest.json"),
    );
    let image = if is_oci {
        let layout = oci::Layout::Archive(outer, origin.clone());
        let loaded = oci::load_layout(&layout, tree, limits);
        Some(loaded.map(|(d, c)| (SourceKind::OciArchive, d, Some(c))))
    } else if is_docker {
        let loaded = oci::load_docker_archive(&outer, &origin, tree, limits);
        Some(loaded.map(|(d, c)| (SourceKind::DockerArchive, d, Some(c))))
    } else {
        None
    };
    // The outer tar's files were only a step (the tree's own blobs are elsewhere).
    let _ = std::fs::remove_dir_all(&outer_dir);
    if let Some(loaded) = image {
        return loaded;
    }
    tree.load_tar_file(src, &origin, LayerFormat::Rootfs)?;
    Ok((
        SourceKind::Tarball,
        format!("sha256:{}", sha256_file(src)?),
        None,
    ))
}

/// The sha256 of a file (hex), streamed.
fn sha256_file(path: &Path) -> Result<String, SourceError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests;
