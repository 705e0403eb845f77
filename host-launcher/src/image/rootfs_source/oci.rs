//! OCI image layouts (a directory, or a tar of one already unpacked into a scratch
//! tree) and legacy `docker save` archives: pick the image, check every blob against
//! its descriptor before use, report the config, apply the layers in order.

use super::tar_layer::{Compression, LayerFormat};
use super::tree::{EntryKind, Tree};
use super::{io, SourceError, SourceLimits};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::path::PathBuf;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Layer media types applied; the bytes are decoded by their magic, as containerd
/// does, since tools disagree on labelling uncompressed layers.
const LAYER_TYPES: [&str; 5] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// What the image's config says about running it: reported, never a grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciConfigReport {
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootfsConfig>,
}

#[derive(Debug, Default, Deserialize)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RootfsConfig {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

/// Where an OCI layout's files are.
pub(crate) enum Layout {
    /// A directory on the host.
    Directory(PathBuf),
    /// A tar of a layout, unpacked into a scratch tree; its origin for messages.
    Archive(Tree, String),
}

/// The hex of a `sha256:` digest, which also names the blob's file.
fn digest_hex<'a>(origin: &str, digest: &'a str) -> Result<&'a str, SourceError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ => Err(SourceError::Image {
            origin: origin.into(),
            problem: format!("digest {digest:?} is not a sha256 digest (sha256:<64 hex digits>)"),
        }),
    }
}

impl Layout {
    fn origin(&self) -> String {
        match self {
            Layout::Directory(d) => d.display().to_string(),
            Layout::Archive(_, o) => o.clone(),
        }
    }

    /// A file of the layout by its path (`index.json`), unverified: for the index.
    fn open_file(&self, rel: &str) -> Result<(std::fs::File, u64), SourceError> {
        match self {
            Layout::Directory(d) => {
                let p = d.join(rel);
                let m = std::fs::symlink_metadata(&p).map_err(io(&p))?;
                if !m.is_file() {
                    return Err(SourceError::Image {
                        origin: self.origin(),
                        problem: format!("{rel} is not a regular file"),
                    });
                }
                Ok((std::fs::File::open(&p).map_err(io(&p))?, m.len()))
            }
            Layout::Archive(t, _) => match t.get(rel).map(|e| &e.kind) {
                Some(EntryKind::File { sha256, size, .. }) => {
                    let p = t.blob_path(sha256);
                    Ok((std::fs::File::open(&p).map_err(io(&p))?, *size))
                }
                _ => Err(SourceError::Image {
                    origin: self.origin(),
                    problem: format!("{rel} is missing or not a regular file"),
                }),
            },
        }
    }

    /// A blob, after checking its size and sha256 against the descriptor.
    fn open_blob(&self, d: &Descriptor) -> Result<std::fs::File, SourceError> {
        let origin = self.origin();
        let hex = digest_hex(&origin, &d.digest)?;
        let mismatch = |problem: String| SourceError::BlobMismatch {
            origin: origin.clone(),
            digest: d.digest.clone(),
            problem,
        };
        let rel = format!("blobs/sha256/{hex}");
        match self {
            Layout::Directory(_) => {
                let (mut f, size) = self
                    .open_file(&rel)
                    .map_err(|_| mismatch("the blob is missing from blobs/sha256/".into()))?;
                if size != d.size {
                    return Err(mismatch(format!(
                        "{size} bytes where the descriptor says {}",
                        d.size
                    )));
                }
                let mut h = Sha256::new();
                std::io::copy(&mut (&mut f).take(d.size), &mut h)
                    .map_err(|e| mismatch(e.to_string()))?;
                let actual = hex::encode(h.finalize());
                if actual != hex {
                    return Err(mismatch(format!("its contents hash to sha256:{actual}")));
                }
                f.rewind().map_err(|e| mismatch(e.to_string()))?;
                Ok(f)
            }
            Layout::Archive(t, _) => match t.get(&rel).map(|e| &e.kind) {
                // Spooled by its contents' sha256: the check was made while reading.
                Some(EntryKind::File { sha256, size, .. }) => {
                    if sha256 != hex {
                        return Err(mismatch(format!("its contents hash to sha256:{sha256}")));
                    }
                    if *size != d.size {
                        return Err(mismatch(format!(
                            "{size} bytes where the descriptor says {}",
                            d.size
                        )));
                    }
                    let p = t.blob_path(sha256);
                    std::fs::File::open(&p).map_err(io(&p))
                }
                _ => Err(mismatch("the blob is missing from blobs/sha256/".into())),
            },
        }
    }

    /// A JSON blob, checked and size-capped.
    fn read_json<T: DeserializeOwned>(
        &self,
        d: &Descriptor,
        limits: &SourceLimits,
    ) -> Result<T, SourceError> {
        let origin = format!("{} blob {}", self.origin(), d.digest);
        if d.size > limits.max_json_bytes {
            return Err(json_too_large(&origin, limits));
        }
        let f = self.open_blob(d)?;
        parse_json(f, &origin, limits)
    }
}

fn json_too_large(origin: &str, limits: &SourceLimits) -> SourceError {
    SourceError::Image {
        origin: origin.into(),
        problem: format!(
            "a JSON document over {} bytes; this is not an image's metadata",
            limits.max_json_bytes
        ),
    }
}

fn parse_json<T: DeserializeOwned>(
    f: impl Read,
    origin: &str,
    limits: &SourceLimits,
) -> Result<T, SourceError> {
    let mut bytes = Vec::new();
    f.take(limits.max_json_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SourceError::Image {
            origin: origin.into(),
            problem: e.to_string(),
        })?;
    if bytes.len() as u64 > limits.max_json_bytes {
        return Err(json_too_large(origin, limits));
    }
    serde_json::from_slice(&bytes).map_err(|e| SourceError::Image {
        origin: origin.into(),
        problem: format!("not the JSON expected: {e}"),
    })
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

fn describe(d: &Descriptor) -> String {
    let platform = d.platform.as_ref().map_or("no platform".into(), |p| {
        format!("{}/{}", p.os, p.architecture)
    });
    match d.annotations.get("org.opencontainers.image.ref.name") {
        Some(name) => format!("{} ({platform}, {name})", d.digest),
        None => format!("{} ({platform})", d.digest),
    }
}

/// The image manifest among `list`: the only one, or the only linux/amd64 one;
/// a nested index is followed one level.
fn pick(
    layout: &Layout,
    list: &[Descriptor],
    depth: u32,
    limits: &SourceLimits,
) -> Result<Descriptor, SourceError> {
    let origin = layout.origin();
    let amd64 = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    };
    let chosen = match list {
        [] => {
            return Err(SourceError::Image {
                origin,
                problem: "the index lists no image".into(),
            })
        }
        [one] if one.platform.is_none() || amd64(&one) => one.clone(),
        _ => {
            let mut fits = list.iter().filter(amd64);
            match (fits.next(), fits.next()) {
                (Some(one), None) => one.clone(),
                _ => {
                    return Err(SourceError::Image {
                        origin,
                        problem: format!(
                            "not exactly one linux/amd64 image among: {}; export just the one wanted (e.g. skopeo copy --override-arch amd64)",
                            list.iter().map(describe).collect::<Vec<_>>().join("; ")
                        ),
                    })
                }
            }
        }
    };
    if is_index(&chosen.media_type) {
        if depth > 0 {
            return Err(SourceError::Image {
                origin,
                problem: format!(
                    "{} is an index inside an index inside index.json: nested too deep",
                    chosen.digest
                ),
            });
        }
        let nested: Index = layout.read_json(&chosen, limits)?;
        return pick(layout, &nested.manifests, depth + 1, limits);
    }
    if chosen.media_type != OCI_MANIFEST && chosen.media_type != DOCKER_MANIFEST {
        return Err(SourceError::Image {
            origin,
            problem: format!(
                "{} has media type {:?}, not an image manifest",
                chosen.digest, chosen.media_type
            ),
        });
    }
    Ok(chosen)
}

/// Refuses an image for another platform (its config says so).
fn check_platform(origin: &str, config: &ImageConfig) -> Result<(), SourceError> {
    let arch = config.architecture.as_deref().unwrap_or("amd64");
    let os = config.os.as_deref().unwrap_or("linux");
    if arch != "amd64" || os != "linux" {
        return Err(SourceError::Image {
            origin: origin.into(),
            problem: format!("the image is for {os}/{arch}; the guest is linux/amd64"),
        });
    }
    Ok(())
}

fn report(config: &ImageConfig) -> OciConfigReport {
    let run = config.config.as_ref();
    OciConfigReport {
        env: run.and_then(|r| r.env.clone()).unwrap_or_default(),
        working_dir: run
            .and_then(|r| r.working_dir.clone())
            .filter(|w| !w.is_empty()),
        user: run.and_then(|r| r.user.clone()).filter(|u| !u.is_empty()),
    }
}

/// Applies one layer file: compression by magic bytes.
fn apply_layer(tree: &mut Tree, mut f: std::fs::File, origin: &str) -> Result<(), SourceError> {
    let mut head = [0u8; 6];
    let n = f.read(&mut head).map_err(|e| SourceError::Corrupt {
        origin: origin.into(),
        problem: e.to_string(),
    })?;
    f.rewind().map_err(|e| SourceError::Corrupt {
        origin: origin.into(),
        problem: e.to_string(),
    })?;
    tree.load_compressed(
        f,
        Compression::sniff(&head[..n]),
        origin,
        LayerFormat::Changeset,
    )
}

/// The most layers an image may have (Docker's own limit is 127; overlayfs's ~500).
const MAX_LAYERS: usize = 256;

fn check_layer_count(origin: &str, n: usize) -> Result<(), SourceError> {
    if n > MAX_LAYERS {
        return Err(SourceError::Image {
            origin: origin.into(),
            problem: format!("{n} layers, more than the {MAX_LAYERS} an image may have; squash it"),
        });
    }
    Ok(())
}

/// Loads the image of an OCI layout into `tree`; returns the manifest's digest and
/// the config's report.
pub(crate) fn load_layout(
    layout: &Layout,
    tree: &mut Tree,
    limits: &SourceLimits,
) -> Result<(String, OciConfigReport), SourceError> {
    let origin = layout.origin();
    let (f, size) = layout.open_file("index.json")?;
    if size > limits.max_json_bytes {
        return Err(json_too_large(&format!("{origin} index.json"), limits));
    }
    let index: Index = parse_json(f, &format!("{origin} index.json"), limits)?;
    let chosen = pick(layout, &index.manifests, 0, limits)?;
    let manifest: Manifest = layout.read_json(&chosen, limits)?;
    let config: ImageConfig = layout.read_json(&manifest.config, limits)?;
    check_platform(&origin, &config)?;
    check_layer_count(&origin, manifest.layers.len())?;
    // Every blob is hashed before it is used: the bytes hashed count against the same
    // limit as the bytes unpacked, so a manifest naming one large blob many times is
    // refused rather than hashed without end.
    let hashed: u64 = manifest
        .layers
        .iter()
        .map(|l| l.size)
        .fold(0, u64::saturating_add);
    if hashed > limits.max_bytes {
        return Err(SourceError::TooLarge {
            origin: format!("{origin} (its layers' blobs)"),
            limit: limits.max_bytes,
        });
    }
    for l in &manifest.layers {
        if !LAYER_TYPES.contains(&l.media_type.as_str()) {
            return Err(SourceError::Image {
                origin: format!("{origin} layer {}", l.digest),
                problem: format!(
                    "media type {:?} is not a layer this build applies ({})",
                    l.media_type,
                    LAYER_TYPES.join(", ")
                ),
            });
        }
    }
    for l in &manifest.layers {
        let f = layout.open_blob(l)?;
        apply_layer(tree, f, &format!("{origin} layer {}", l.digest))?;
    }
    Ok((chosen.digest, report(&config)))
}

/// Loads the image of a legacy `docker save` archive (only `manifest.json`), already
/// unpacked into `outer`. The config's file is named by its digest, and each
/// uncompressed layer's digest is the config's `diff_ids` entry: both are checked.
/// Returns the config's digest (docker's image id).
pub(crate) fn load_docker_archive(
    outer: &Tree,
    origin: &str,
    tree: &mut Tree,
    limits: &SourceLimits,
) -> Result<(String, OciConfigReport), SourceError> {
    let file = |rel: &str| -> Result<(String, u64), SourceError> {
        let norm = super::tree::normalize(origin, rel.as_bytes())?.unwrap_or_default();
        match outer.get(&norm).map(|e| &e.kind) {
            Some(EntryKind::File { sha256, size, .. }) => Ok((sha256.clone(), *size)),
            _ => Err(SourceError::Image {
                origin: origin.into(),
                problem: format!("{rel}, named by manifest.json, is missing or not a file"),
            }),
        }
    };
    let open = |sha: &str| {
        let p = outer.blob_path(sha);
        std::fs::File::open(&p).map_err(io(&p))
    };
    let (sha, size) = file("manifest.json")?;
    if size > limits.max_json_bytes {
        return Err(json_too_large(&format!("{origin} manifest.json"), limits));
    }
    let manifests: Vec<DockerManifest> =
        parse_json(open(&sha)?, &format!("{origin} manifest.json"), limits)?;
    let m = match manifests.as_slice() {
        [one] => one,
        _ => {
            return Err(SourceError::Image {
                origin: origin.into(),
                problem: format!(
                    "manifest.json lists {} images ({}); save exactly one",
                    manifests.len(),
                    manifests
                        .iter()
                        .map(|m| m.repo_tags.clone().unwrap_or_default().join(",")
                            + " "
                            + &m.config)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            })
        }
    };
    let (config_sha, config_size) = file(&m.config)?;
    let named = m
        .config
        .rsplit('/')
        .next()
        .unwrap_or(&m.config)
        .trim_end_matches(".json");
    if named.len() == 64 && named != config_sha {
        return Err(SourceError::BlobMismatch {
            origin: origin.into(),
            digest: format!("sha256:{named}"),
            problem: format!("the config's contents hash to sha256:{config_sha}"),
        });
    }
    if config_size > limits.max_json_bytes {
        return Err(json_too_large(&format!("{origin} {}", m.config), limits));
    }
    let config: ImageConfig = parse_json(
        open(&config_sha)?,
        &format!("{origin} {}", m.config),
        limits,
    )?;
    check_platform(origin, &config)?;
    let diff_ids = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .unwrap_or_default();
    check_layer_count(origin, m.layers.len())?;
    if diff_ids.len() != m.layers.len() {
        return Err(SourceError::Image {
            origin: origin.into(),
            problem: format!(
                "manifest.json names {} layers but the config's rootfs.diff_ids {}",
                m.layers.len(),
                diff_ids.len()
            ),
        });
    }
    for (layer, diff_id) in m.layers.iter().zip(&diff_ids) {
        let (sha, _) = file(layer)?;
        let layer_origin = format!("{origin} layer {layer}");
        let mut f = open(&sha)?;
        let mut head = [0u8; 6];
        let n = f.read(&mut head).map_err(io(&outer.blob_path(&sha)))?;
        // Compressed layers (newer docker) are named by their own digest instead.
        let expected = if Compression::sniff(&head[..n]) == Compression::None {
            digest_hex(&layer_origin, diff_id)?.to_string()
        } else {
            layer
                .strip_prefix("blobs/sha256/")
                .map(str::to_string)
                .ok_or_else(|| SourceError::Image {
                    origin: layer_origin.clone(),
                    problem: "a compressed layer not named by its digest cannot be checked".into(),
                })?
        };
        if sha != expected {
            return Err(SourceError::BlobMismatch {
                origin: layer_origin,
                digest: format!("sha256:{expected}"),
                problem: format!("its contents hash to sha256:{sha}"),
            });
        }
        apply_layer(tree, f, &layer_origin)?;
    }
    Ok((format!("sha256:{config_sha}"), report(&config)))
}
