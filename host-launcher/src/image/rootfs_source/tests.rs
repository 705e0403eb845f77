use super::*;
use std::io::Write;
use tar::{EntryType, Header};

const MTIME: u64 = 1_700_000_000;

/// Builds tar archives entry by entry (root-owned, fixed mtime unless said).
struct T(tar::Builder<Vec<u8>>);

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

impl T {
    fn new() -> T {
        T(tar::Builder::new(Vec::new()))
    }
    fn file(self, path: &str, mode: u32, data: &[u8]) -> T {
        self.owned(path, mode, 0, 0, data)
    }
    fn owned(mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> T {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }
    fn dir(mut self, path: &str) -> T {
        let mut h = header(EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }
    fn symlink(mut self, path: &str, target: &str) -> T {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    fn hardlink(mut self, path: &str, target: &str) -> T {
        let mut h = header(EntryType::Link, 0o644, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    fn chardev(mut self, path: &str) -> T {
        let mut h = header(EntryType::Char, 0o666, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        self.0.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }
    fn with_capability(mut self, path: &str, data: &[u8]) -> T {
        self.0
            .append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01\x00\x00\x02"[..])])
            .unwrap();
        self.file(path, 0o755, data)
    }
    /// A name the `tar` crate would refuse to write (`..`).
    fn raw_name(mut self, name: &str, data: &[u8]) -> T {
        let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    /// A regular file whose name may exceed ustar's fields (written as a GNU long
    /// name, as real archivers do).
    fn raw_long_name(mut self, name: &str, data: &[u8]) -> T {
        let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }
    /// A symlink whose target may exceed ustar's field (a GNU long link).
    fn long_symlink(mut self, path: &str, target: &str) -> T {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    /// The base a rootfs needs to pass the contract and the owner check.
    fn base(self) -> T {
        self.dir("etc")
            .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
            .file("etc/group", 0o644, b"root:x:0:\n")
            .dir("usr/bin")
            .dir("usr/lib")
            .file("usr/bin/true", 0o755, b"#!/bin/sh\n")
            .symlink("bin", "usr/bin")
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    lzma_rs::xz_compress(&mut &data[..], &mut out).unwrap();
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn hex256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

struct Ctx {
    dir: tempfile::TempDir,
    n: std::cell::Cell<u32>,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            dir: tempfile::tempdir().unwrap(),
            n: std::cell::Cell::new(0),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
    fn staging(&self) -> PathBuf {
        self.n.set(self.n.get() + 1);
        let p = self.path(&format!("staging{}", self.n.get()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    fn load_with(
        &self,
        src: &Path,
        limits: &SourceLimits,
        allow: &[&str],
    ) -> Result<LoadedRootfs, SourceError> {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        load_rootfs_source(
            src,
            &self.staging(),
            limits,
            &AllowList::parse(&allow).unwrap(),
        )
    }
    fn load(&self, src: &Path) -> Result<LoadedRootfs, SourceError> {
        self.load_with(src, &SourceLimits::default(), &[])
    }
    fn load_tar(&self, tar: Vec<u8>) -> Result<LoadedRootfs, SourceError> {
        self.n.set(self.n.get() + 1);
        let p = self.write(&format!("src{}.tar", self.n.get()), &tar);
        self.load(&p)
    }
}

fn file_bytes(r: &LoadedRootfs, path: &str) -> Vec<u8> {
    match &r
        .tree
        .get(path)
        .unwrap_or_else(|| panic!("{path} missing"))
        .kind
    {
        EntryKind::File { sha256, .. } => std::fs::read(r.tree.blob_path(sha256)).unwrap(),
        k => panic!("{path} is {k:?}"),
    }
}

fn err_text(r: Result<LoadedRootfs, SourceError>) -> String {
    match r {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

// ---- source kinds ----

#[test]
fn a_plain_tarball_loads_with_symlinks_hardlinks_and_implied_dirs() {
    let c = Ctx::new();
    let tar = T::new()
        .base()
        .raw_name("/usr/share/doc/x", b"doc")
        .hardlink("./usr/share/doc/y", "usr/share/doc/x")
        .bytes();
    let r = c.load_tar(tar).unwrap();
    assert_eq!(r.source.kind, SourceKind::Tarball);
    assert!(r.source.digest.starts_with("sha256:"));
    assert!(r.oci_config.is_none());
    let (x, y) = (
        r.tree.get("/usr/share/doc/x").unwrap(),
        r.tree.get("usr/share/doc/y").unwrap(),
    );
    match (&x.kind, &y.kind) {
        (EntryKind::File { inode: a, .. }, EntryKind::File { inode: b, .. }) => assert_eq!(a, b),
        k => panic!("{k:?}"),
    }
    // `usr/share` was only implied by its children.
    let share = r.tree.get("usr/share").unwrap();
    assert_eq!(
        (share.kind.clone(), share.mode, share.mtime),
        (EntryKind::Dir, 0o755, 0)
    );
    assert_eq!(
        r.tree.get("bin").unwrap().kind,
        EntryKind::Symlink {
            target: "usr/bin".into()
        }
    );
    assert_eq!(r.tree.resolve("/bin/true").unwrap().0, "usr/bin/true");
}

#[test]
fn compressed_tarballs_load_to_the_same_tree() {
    let c = Ctx::new();
    let tar = T::new().base().file("etc/motd", 0o644, b"hello\n").bytes();
    let plain = c.load_tar(tar.clone()).unwrap().tree.digest().unwrap();
    for (name, bytes) in [("gz", gzip(&tar)), ("xz", xz(&tar)), ("zst", zstd(&tar))] {
        let r = c.load_tar(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.source.kind, SourceKind::Tarball, "{name}");
        assert_eq!(r.tree.digest().unwrap(), plain, "{name}");
        assert_eq!(file_bytes(&r, "etc/motd"), b"hello\n");
    }
}

#[test]
fn a_directory_loads_like_the_tarball_of_the_same_content() {
    use std::os::unix::fs::MetadataExt;
    let c = Ctx::new();
    let root = c.path("root");
    for d in ["etc", "usr/bin", "usr/lib", "usr/share"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(root.join("usr/bin/true"), "#!/bin/sh\n").unwrap();
    std::fs::hard_link(root.join("usr/bin/true"), root.join("usr/bin/also")).unwrap();
    let r = c.load(&root).unwrap();
    assert_eq!(r.source.kind, SourceKind::Directory);
    assert_eq!(
        r.source.digest,
        format!("sha256:{}", r.tree.digest().unwrap())
    );
    // The same content as a tarball, with the directory's own metadata.
    let mut t = tar::Builder::new(Vec::new());
    for rel in [
        "etc",
        "etc/group",
        "etc/passwd",
        "usr",
        "usr/bin",
        "usr/bin/also",
        "usr/bin/true",
        "usr/lib",
        "usr/share",
    ] {
        let m = std::fs::symlink_metadata(root.join(rel)).unwrap();
        let mut h = Header::new_gnu();
        h.set_mode(m.mode() & 0o7777);
        h.set_uid(m.uid().into());
        h.set_gid(m.gid().into());
        h.set_mtime(m.mtime() as u64);
        if m.is_dir() {
            h.set_entry_type(EntryType::Directory);
            h.set_size(0);
            t.append_data(&mut h, rel, std::io::empty()).unwrap();
        } else if rel == "usr/bin/true" {
            h.set_entry_type(EntryType::Link);
            h.set_size(0);
            t.append_link(&mut h, rel, "usr/bin/also").unwrap();
        } else {
            let data = std::fs::read(root.join(rel)).unwrap();
            h.set_entry_type(EntryType::Regular);
            h.set_size(data.len() as u64);
            t.append_data(&mut h, rel, &data[..]).unwrap();
        }
    }
    // Owners must be known to the tree's own account files for the comparison to run.
    let owner_ok = ["etc", "usr"].iter().all(|d| {
        let m = std::fs::symlink_metadata(root.join(d)).unwrap();
        m.uid() == 0 && m.gid() == 0
    });
    if owner_ok {
        let from_tar = c.load_tar(t.into_inner().unwrap()).unwrap();
        assert_eq!(from_tar.tree.digest().unwrap(), r.tree.digest().unwrap());
    }
}

#[test]
fn a_directory_refuses_fifos_and_whiteout_names_naming_the_path() {
    let c = Ctx::new();
    let root = c.path("root");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    let fifo =
        std::ffi::CString::new(root.join("usr/bin/pipe").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let e = err_text(c.load(&root));
    assert!(e.contains("/usr/bin/pipe") && e.contains("FIFO"), "{e}");
    std::fs::remove_file(root.join("usr/bin/pipe")).unwrap();
    std::fs::write(root.join("usr/bin/.wh.x"), "").unwrap();
    let e = err_text(c.load(&root));
    assert!(e.contains("/usr/bin/.wh.x"), "{e}");
}

// ---- OCI ----

struct Oci {
    dir: PathBuf,
}

impl Oci {
    fn new(dir: PathBuf) -> Oci {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Oci { dir }
    }
    fn blob(&self, media: &str, bytes: &[u8]) -> serde_json::Value {
        let h = hex256(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&h), bytes).unwrap();
        serde_json::json!({"mediaType": media, "digest": format!("sha256:{h}"), "size": bytes.len()})
    }
    /// An image of these layers; returns the manifest's descriptor.
    fn image(&self, layers: &[(&str, Vec<u8>)]) -> serde_json::Value {
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/bin", "LANG=C.UTF-8"], "WorkingDir": "/srv", "User": "1000"},
            "rootfs": {"type": "layers", "diff_ids": []}
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config).unwrap(),
        );
        let layers: Vec<_> = layers.iter().map(|(m, b)| self.blob(m, b)).collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": layers
        });
        self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        )
    }
    fn index(&self, manifests: Vec<serde_json::Value>) {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR_ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Two layers: the second deletes a file and makes a directory opaque; its own
/// entries in that directory, before and after the marker, stay.
fn two_layers() -> Vec<(&'static str, Vec<u8>)> {
    let lower = T::new()
        .base()
        .file("etc/gone", 0o644, b"x")
        .file("opt/app/old", 0o644, b"old")
        .file("opt/app/sub/deep", 0o644, b"deep")
        .file("srv/keep", 0o644, b"keep")
        .bytes();
    let upper = T::new()
        .file("opt/app/before", 0o644, b"before")
        .file("opt/app/.wh..wh..opq", 0o644, b"")
        .file("opt/app/after", 0o644, b"after")
        .file("etc/.wh.gone", 0o644, b"")
        .file("srv/new", 0o644, b"new")
        .bytes();
    vec![(TAR_GZ, gzip(&lower)), (TAR, upper)]
}

fn assert_two_layers_applied(r: &LoadedRootfs) {
    for gone in ["etc/gone", "opt/app/old", "opt/app/sub", "opt/app/sub/deep"] {
        assert!(r.tree.get(gone).is_none(), "{gone} survived");
    }
    for kept in [
        "opt/app/before",
        "opt/app/after",
        "srv/keep",
        "srv/new",
        "usr/bin/true",
    ] {
        assert!(r.tree.get(kept).is_some(), "{kept} missing");
    }
    assert!(
        r.tree.entries().all(|(p, _)| !p.contains(".wh.")),
        "a whiteout marker leaked into the tree"
    );
    let cfg = r.oci_config.as_ref().unwrap();
    assert_eq!(cfg.env, ["PATH=/usr/bin", "LANG=C.UTF-8"]);
    assert_eq!(cfg.working_dir.as_deref(), Some("/srv"));
    assert_eq!(cfg.user.as_deref(), Some("1000"));
}

#[test]
fn an_oci_layout_applies_its_layers_with_whiteouts_and_opaque_dirs() {
    let c = Ctx::new();
    let oci = Oci::new(c.path("layout"));
    let m = oci.image(&two_layers());
    oci.index(vec![m.clone()]);
    let r = c.load(&c.path("layout")).unwrap();
    assert_eq!(r.source.kind, SourceKind::OciLayout);
    assert_eq!(r.source.digest, m["digest"].as_str().unwrap());
    assert_two_layers_applied(&r);
}

#[test]
fn an_oci_archive_loads_like_its_layout() {
    let c = Ctx::new();
    let oci = Oci::new(c.path("layout"));
    let m = oci.image(&two_layers());
    oci.index(vec![m.clone()]);
    let mut t = tar::Builder::new(Vec::new());
    t.append_dir_all(".", c.path("layout")).unwrap();
    let r = c.load_tar(t.into_inner().unwrap()).unwrap();
    assert_eq!(r.source.kind, SourceKind::OciArchive);
    assert_eq!(r.source.digest, m["digest"].as_str().unwrap());
    assert_two_layers_applied(&r);
    let layout = c.load(&c.path("layout")).unwrap();
    assert_eq!(r.tree.digest().unwrap(), layout.tree.digest().unwrap());
}

#[test]
fn a_zstd_layer_is_applied() {
    let c = Ctx::new();
    let oci = Oci::new(c.path("layout"));
    let m = oci.image(&[(TAR_ZST, zstd(&T::new().base().bytes()))]);
    oci.index(vec![m]);
    c.load(&c.path("layout")).unwrap();
}

#[test]
fn a_multi_platform_index_picks_linux_amd64_or_names_the_choices() {
    let c = Ctx::new();
    let oci = Oci::new(c.path("layout"));
    let mut amd = oci.image(&[(TAR, T::new().base().bytes())]);
    amd["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let mut arm = oci.image(&[(TAR, T::new().base().file("arm", 0o644, b"").bytes())]);
    arm["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64"});
    // A nested index, as buildx and containerd write it.
    let nested = oci.blob(
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [amd, arm]}))
            .unwrap(),
    );
    oci.index(vec![nested]);
    let r = c.load(&c.path("layout")).unwrap();
    assert_eq!(r.source.digest, amd["digest"].as_str().unwrap());
    let mut amd2 = arm.clone();
    amd2["platform"]["architecture"] = "amd64".into();
    oci.index(vec![amd.clone(), amd2]);
    let e = err_text(c.load(&c.path("layout")));
    assert!(
        e.contains(amd["digest"].as_str().unwrap()) && e.contains(arm["digest"].as_str().unwrap()),
        "{e}"
    );
}

#[test]
fn a_docker_save_archive_loads_checking_config_and_diff_ids() {
    let c = Ctx::new();
    let layers = [
        T::new().base().file("etc/gone", 0o644, b"x").bytes(),
        T::new()
            .file("etc/.wh.gone", 0o644, b"")
            .file("srv/x", 0o644, b"x")
            .bytes(),
    ];
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"User": "app"},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| format!("sha256:{}", hex256(l))).collect::<Vec<_>>()}
    }))
    .unwrap();
    let config_name = format!("{}.json", hex256(&config));
    let build = |layer2: &[u8]| {
        let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["team/img:1"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]);
        T::new()
            .file(
                "manifest.json",
                0o644,
                &serde_json::to_vec(&manifest).unwrap(),
            )
            .file(&config_name, 0o644, &config)
            .file("aaa/layer.tar", 0o644, &layers[0])
            .file("bbb/layer.tar", 0o644, layer2)
            .bytes()
    };
    let r = c.load_tar(build(&layers[1])).unwrap();
    assert_eq!(r.source.kind, SourceKind::DockerArchive);
    assert_eq!(r.source.digest, format!("sha256:{}", hex256(&config)));
    assert!(r.tree.get("etc/gone").is_none() && r.tree.get("srv/x").is_some());
    assert_eq!(r.oci_config.unwrap().user.as_deref(), Some("app"));
    // A layer that is not the one the config names.
    let mut other = layers[1].clone();
    other[600] ^= 1;
    let e = err_text(c.load_tar(build(&other)));
    assert!(
        e.contains("bbb/layer.tar") && e.contains(&hex256(&layers[1])),
        "{e}"
    );
}

// ---- refusals ----

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused_naming_it() {
    let c = Ctx::new();
    let oci = Oci::new(c.path("layout"));
    let layer = T::new().base().bytes();
    let m = oci.image(&[(TAR, layer.clone())]);
    oci.index(vec![m]);
    let h = hex256(&layer);
    let mut bad = layer.clone();
    bad[700] ^= 1;
    std::fs::write(c.path("layout/blobs/sha256").join(&h), &bad).unwrap();
    let e = err_text(c.load(&c.path("layout")));
    assert!(
        e.contains(&format!("sha256:{h}")) && e.contains("hash to"),
        "{e}"
    );
}

#[test]
fn an_unknown_layer_media_type_is_refused_naming_it() {
    let c = Ctx::new();
    let oci = Oci::new(c.path("layout"));
    let m = oci.image(&[("application/vnd.example.squashfs", T::new().base().bytes())]);
    oci.index(vec![m]);
    let e = err_text(c.load(&c.path("layout")));
    assert!(e.contains("application/vnd.example.squashfs"), "{e}");
}

#[test]
fn the_enforcers_own_places_are_refused() {
    let c = Ctx::new();
    for path in ["etc/airlock/launcher.pub", "usr/lib/airlock/x", "init"] {
        let e = err_text(c.load_tar(T::new().base().file(path, 0o644, b"x").bytes()));
        let owned = FORBIDDEN_PATHS
            .iter()
            .find(|f| format!("/{path}").starts_with(*f))
            .unwrap();
        assert!(e.contains(owned), "{path}: {e}");
    }
    // Through a symlink as well.
    let e = err_text(c.load_tar(T::new().base().symlink("init", "usr/bin/true").bytes()));
    assert!(e.contains("/init"), "{e}");
}

#[test]
fn set_id_files_are_refused_unless_allowed() {
    let c = Ctx::new();
    let tar = T::new()
        .base()
        .file("usr/bin/su", 0o4755, b"su")
        .file("usr/bin/wall", 0o2755, b"wall")
        .bytes();
    let p = c.write("setid.tar", &tar);
    let e = err_text(c.load(&p));
    // Both at once, each with its flag.
    assert!(e.contains("--allow setid:/usr/bin/su"), "{e}");
    assert!(e.contains("--allow setid:/usr/bin/wall"), "{e}");
    let e = err_text(c.load_with(&p, &SourceLimits::default(), &["setid:/usr/bin/su"]));
    assert!(
        !e.contains("/usr/bin/su:") && e.contains("/usr/bin/wall"),
        "{e}"
    );
    let r = c
        .load_with(
            &p,
            &SourceLimits::default(),
            &["setid:/usr/bin/su", "setid:/usr/bin/w*"],
        )
        .unwrap();
    let paths: Vec<_> = r.findings.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["/usr/bin/su", "/usr/bin/wall"]);
    assert_eq!(r.tree.get("usr/bin/su").unwrap().mode, 0o4755);
}

#[test]
fn capabilities_devices_and_unknown_owners_are_findings() {
    let c = Ctx::new();
    let tar = T::new()
        .base()
        .with_capability("usr/bin/ping", b"ping")
        .chardev("dev/null")
        .chardev("opt/null")
        .owned("srv/data", 0o644, 1000, 1000, b"x")
        .bytes();
    let p = c.write("f.tar", &tar);
    let e = err_text(c.load(&p));
    for needle in [
        "--allow capability:/usr/bin/ping",
        "--allow device:/opt/null",
        "--allow owner:/srv/data",
        "uid 1000",
    ] {
        assert!(e.contains(needle), "{needle}: {e}");
    }
    assert!(!e.contains("/dev/null"), "{e}");
    let r = c
        .load_with(
            &p,
            &SourceLimits::default(),
            &["capability:/usr/bin/*", "device:/opt/**", "owner:/srv/data"],
        )
        .unwrap();
    assert_eq!(r.findings.len(), 3);
    assert!(
        r.tree.get("dev/null").is_none(),
        "devices under /dev/ are dropped"
    );
    // Owners the tree's own account files name are fine.
    let tar = T::new()
        .dir("etc")
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/srv:/bin/sh\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\napp:x:1000:\n")
        .dir("usr/lib")
        .file("usr/bin/true", 0o755, b"")
        .owned("srv/data", 0o644, 1000, 1000, b"x")
        .bytes();
    assert!(c.load_tar(tar).unwrap().findings.is_empty());
}

#[test]
fn an_allow_flag_must_be_kind_and_absolute_path() {
    for bad in ["setid", "root:/x", "setid:x"] {
        assert!(AllowList::parse(&[bad.to_string()]).is_err(), "{bad}");
    }
}

#[test]
fn a_dotdot_path_is_refused_naming_it() {
    let c = Ctx::new();
    let e = err_text(c.load_tar(T::new().base().raw_name("usr/../../etc/x", b"x").bytes()));
    assert!(e.contains("usr/../../etc/x") && e.contains(".."), "{e}");
}

#[test]
fn writing_through_an_earlier_symlink_is_refused() {
    let c = Ctx::new();
    for target in ["/etc", "../..", "usr"] {
        let e = err_text(
            c.load_tar(
                T::new()
                    .base()
                    .symlink("a", target)
                    .file("a/passwd", 0o644, b"x")
                    .bytes(),
            ),
        );
        assert!(
            e.contains("/a/passwd") && e.contains("symlink /a"),
            "{target}: {e}"
        );
    }
}

#[test]
fn hardlinks_that_escape_or_dangle_are_refused() {
    let c = Ctx::new();
    let cases = [
        (
            T::new()
                .base()
                .symlink("a", "/etc")
                .hardlink("x", "a/passwd"),
            "goes through the symlink /a",
        ),
        (
            T::new().base().hardlink("x", "etc/shadow"),
            "does not exist",
        ),
        (
            T::new().base().hardlink("x", "usr/bin"),
            "not a regular file",
        ),
        (T::new().base().hardlink("x", "bin"), "not a regular file"),
        (T::new().base().hardlink("x", "../etc/passwd"), "`..`"),
    ];
    for (t, why) in cases {
        let e = err_text(c.load_tar(t.bytes()));
        assert!(e.contains("hardlink /x") && e.contains(why), "{why}: {e}");
    }
}

#[test]
fn the_size_cap_counts_everything_read_even_what_a_later_layer_deletes() {
    let c = Ctx::new();
    let big = T::new().base().file("big", 0o644, &[7u8; 8000]).bytes();
    let wipe = T::new().file(".wh.big", 0o644, b"").bytes();
    let oci = Oci::new(c.path("layout"));
    oci.index(vec![oci.image(&[(TAR, big.clone()), (TAR, wipe)])]);
    let layout = c.path("layout");
    let r = c.load(&layout).unwrap();
    assert!(r.tree.get("big").is_none());
    let tight = SourceLimits {
        max_bytes: big.len() as u64 + 100,
        ..SourceLimits::default()
    };
    let e = err_text(c.load_with(&layout, &tight, &[]));
    assert!(e.contains("more than") && e.contains("bytes"), "{e}");
    // One layer over the cap on its own, and a compressed one.
    let tiny = SourceLimits {
        max_bytes: 4096,
        ..SourceLimits::default()
    };
    for bytes in [big.clone(), gzip(&big)] {
        let p = c.write("big.tar", &bytes);
        let e = err_text(c.load_with(&p, &tiny, &[]));
        assert!(e.contains("more than 4096 bytes"), "{e}");
    }
    let few = SourceLimits {
        max_entries: 3,
        ..SourceLimits::default()
    };
    let p = c.write("many.tar", &big);
    let e = err_text(c.load_with(&p, &few, &[]));
    assert!(e.contains("more than 3 entries"), "{e}");
}

#[test]
fn a_json_document_over_its_cap_is_refused() {
    let c = Ctx::new();
    let oci = Oci::new(c.path("layout"));
    oci.index(vec![oci.image(&[(TAR, T::new().base().bytes())])]);
    let limits = SourceLimits {
        max_json_bytes: 64,
        ..SourceLimits::default()
    };
    let e = err_text(c.load_with(&c.path("layout"), &limits, &[]));
    assert!(e.contains("index.json") && e.contains("64 bytes"), "{e}");
}

#[test]
fn corrupt_archives_are_refused_naming_the_file() {
    let c = Ctx::new();
    let mut garbage = vec![0x41u8; 2048];
    garbage[0] = b'x';
    let p = c.write("garbage.tar", &garbage);
    let e = err_text(c.load(&p));
    assert!(e.contains("garbage.tar") && e.contains("corrupt"), "{e}");
    let gz = gzip(&T::new().base().file("f", 0o644, &[1u8; 50_000]).bytes());
    let p = c.write("cut.tar.gz", &gz[..gz.len() / 2]);
    let e = err_text(c.load(&p));
    assert!(e.contains("cut.tar.gz") && e.contains("corrupt"), "{e}");
    let p = c.write("empty", b"");
    let e = err_text(c.load(&p));
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn a_whiteout_name_in_a_plain_tarball_is_refused() {
    let c = Ctx::new();
    let e = err_text(c.load_tar(T::new().base().file("etc/.wh.passwd", 0o644, b"").bytes()));
    assert!(
        e.contains("/etc/.wh.passwd") && e.contains("whiteout"),
        "{e}"
    );
}

// ---- determinism ----

#[test]
fn the_canonical_tar_is_deterministic_and_covers_every_byte() {
    let c = Ctx::new();
    let tar = |motd: &[u8]| {
        T::new()
            .base()
            .file("etc/motd", 0o644, motd)
            .hardlink("a-link", "etc/motd")
            .file(&format!("long/{}", "n".repeat(200)), 0o644, b"long")
            .symlink("lnk", &"t".repeat(150))
            .bytes()
    };
    let a = c.load_tar(tar(b"hello")).unwrap();
    let b = c.load_tar(tar(b"hello")).unwrap();
    let d = c.load_tar(tar(b"hellp")).unwrap();
    assert_eq!(a.tree.digest().unwrap(), b.tree.digest().unwrap());
    assert_ne!(a.tree.digest().unwrap(), d.tree.digest().unwrap());
    let mut out = Vec::new();
    a.tree.write_canonical_tar(&mut out).unwrap();
    assert_eq!(hex256(&out), a.tree.digest().unwrap());
    // Read back: sorted, the first name of the hardlinked file carries the bytes.
    let mut ar = tar::Archive::new(&out[..]);
    let names: Vec<(String, EntryType)> = ar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let n = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            assert!(e.header().username_bytes().is_none_or(|u| u.is_empty()));
            (n, e.header().entry_type())
        })
        .collect();
    let mut sorted: Vec<&String> = names.iter().map(|(n, _)| n).collect();
    sorted.sort();
    assert_eq!(names.iter().map(|(n, _)| n).collect::<Vec<_>>(), sorted);
    assert!(
        names.contains(&("a-link".into(), EntryType::Regular)),
        "{names:?}"
    );
    assert!(
        names.contains(&("etc/motd".into(), EntryType::Link)),
        "{names:?}"
    );
    assert!(names.iter().any(|(n, _)| n.len() > 200));
    // The canonical tar is itself a source that gives the same tree.
    let again = c.load_tar(out).unwrap();
    assert_eq!(again.tree.digest().unwrap(), a.tree.digest().unwrap());
}

// ---- contract and inventory ----

#[test]
fn a_dynamically_linked_tool_needs_its_loader_and_libc() {
    let c = Ctx::new();
    let elf = elf::fake_dynamic_elf("/lib64/ld-linux-x86-64.so.2");
    let e = err_text(c.load_tar(T::new().base().file("usr/bin/tool", 0o755, &elf).bytes()));
    assert!(
        e.contains("/usr/bin/tool") && e.contains("/lib64/ld-linux-x86-64.so.2"),
        "{e}"
    );
    let e = err_text(
        c.load_tar(
            T::new()
                .base()
                .file("usr/bin/tool", 0o755, &elf)
                .file(
                    "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                    0o755,
                    b"ld",
                )
                .symlink("lib64", "usr/lib/x86_64-linux-gnu")
                .bytes(),
        ),
    );
    assert!(e.contains("no libc"), "{e}");
}

#[test]
fn the_inventory_lists_tools_interpreters_loaders_and_libc() {
    let c = Ctx::new();
    let elf = elf::fake_dynamic_elf("/lib64/ld-linux-x86-64.so.2");
    let r = c
        .load_tar(
            T::new()
                .base()
                .file("usr/bin/python3.11", 0o755, &elf)
                .symlink("usr/bin/python3", "python3.11")
                .file("usr/bin/notes.txt", 0o644, b"not a tool")
                .file("usr/lib/python3.11/os.py", 0o644, b"")
                .file("usr/local/bin/mytool", 0o755, b"#!/bin/sh\n")
                .file(
                    "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                    0o755,
                    b"ld",
                )
                .file("usr/lib/x86_64-linux-gnu/libc.so.6", 0o755, b"libc")
                .symlink("lib64", "usr/lib/x86_64-linux-gnu")
                .bytes(),
        )
        .unwrap();
    assert_eq!(r.contract.loaders, ["/lib64/ld-linux-x86-64.so.2"]);
    assert!(r.contract.notes.iter().any(|n| n.contains("/bin/sh")));
    let inv = Inventory::of(&r.tree);
    let dir = |p: &str| inv.tool_dirs.iter().find(|d| d.path == p).unwrap();
    assert_eq!(dir("/usr/local/bin").executables, ["mytool"]);
    assert_eq!(
        dir("/usr/bin").executables,
        ["python3", "python3.11", "true"]
    );
    assert_eq!(dir("/bin").resolved, "/usr/bin");
    assert_eq!(dir("/bin").executables, dir("/usr/bin").executables);
    let py = inv
        .interpreters
        .iter()
        .find(|i| i.name == "python3")
        .unwrap();
    assert_eq!(py.resolved, "/usr/bin/python3.11");
    assert_eq!(py.library_dirs, ["/usr/lib/python3.11"]);
    assert_eq!(inv.loaders.len(), 1);
    assert!(
        inv.loaders[0].present && inv.loaders[0].tools == 2,
        "{:?}",
        inv.loaders
    );
    assert!(inv
        .libc
        .contains(&"/usr/lib/x86_64-linux-gnu/libc.so.6".to_string()));
    serde_json::to_string(&inv).unwrap();
    serde_json::to_string(&r.source).unwrap();
}

#[test]
fn a_rootfs_without_any_tool_directory_is_refused() {
    let c = Ctx::new();
    let e = err_text(
        c.load_tar(
            T::new()
                .file("etc/hostname", 0o644, b"x")
                .dir("usr/lib")
                .bytes(),
        ),
    );
    assert!(e.contains("/usr/bin"), "{e}");
}

#[test]
fn a_rootfs_without_the_directories_the_enforcer_needs_is_refused() {
    let c = Ctx::new();
    // `/usr/lib` as a symlink does not count: the enforcer writes into it at boot.
    let e = err_text(
        c.load_tar(
            T::new()
                .dir("etc")
                .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
                .file("etc/group", 0o644, b"root:x:0:\n")
                .dir("usr/bin")
                .file("usr/bin/true", 0o755, b"#!/bin/sh\n")
                .symlink("usr/lib", "/tmp")
                .bytes(),
        ),
    );
    assert!(e.contains("has no directory /usr/lib"), "{e}");
}

#[test]
fn a_path_that_is_no_source_is_refused_naming_it() {
    let c = Ctx::new();
    let e = err_text(c.load(&c.path("nowhere")));
    assert!(e.contains("nowhere"), "{e}");
}

#[test]
fn a_long_name_over_the_header_cap_is_refused() {
    let c = Ctx::new();
    let mut t = tar::Builder::new(Vec::new());
    let mut h = header(EntryType::Regular, 0o644, 1);
    let long = format!("{}/x", "d".repeat(1 << 20));
    t.append_data(&mut h, &long, &b"x"[..]).unwrap();
    let e = err_text(c.load_tar(t.into_inner().unwrap()));
    assert!(e.contains("exceed"), "{e}");
}

#[test]
fn a_loaded_rootfs_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<LoadedRootfs>();
    send_sync::<SourceError>();
}

#[test]
fn a_whiteout_through_a_symlink_is_refused() {
    let c = Ctx::new();
    let oci = Oci::new(c.path("layout"));
    let lower = T::new().base().symlink("a", "/etc").bytes();
    let upper = T::new().file("a/.wh.passwd", 0o644, b"").bytes();
    oci.index(vec![oci.image(&[(TAR, lower), (TAR, upper)])]);
    let e = err_text(c.load(&c.path("layout")));
    assert!(e.contains("/a/passwd") && e.contains("symlink /a"), "{e}");
}

// ---- what an attacker's source tries (from an adversarial review) ----

/// One entry with a deep name must not cost memory quadratic in its length: names
/// longer than PATH_MAX, or with a component longer than NAME_MAX, are refused before
/// anything is held, and implied directories count as entries.
#[test]
fn deep_or_long_names_are_refused_before_they_cost_anything() {
    let c = Ctx::new();
    let deep = "a/".repeat(2500) + "f";
    let e = err_text(c.load_tar(T::new().base().raw_long_name(&deep, b"x").bytes()));
    assert!(e.contains("longer than 4095 bytes"), "{e}");
    let wide = format!("etc/{}", "n".repeat(300));
    let e = err_text(c.load_tar(T::new().base().raw_long_name(&wide, b"x").bytes()));
    assert!(e.contains("longer than 255 bytes"), "{e}");
    // Within the limits, implied directories are entries: 3 entries' worth of cap is
    // crossed by one file three directories down.
    let tar = c.write(
        "implied.tar",
        &T::new().file("a/b/c/d", 0o644, b"x").bytes(),
    );
    let small = SourceLimits {
        max_entries: 3,
        ..SourceLimits::default()
    };
    let e = err_text(c.load_with(&tar, &small, &[]));
    assert!(e.contains("more than 3 entries"), "{e}");
}

/// A link target longer than PATH_MAX is refused (resolving thousands of them walked
/// hundreds of thousands of components each).
#[test]
fn a_link_target_longer_than_path_max_is_refused() {
    let c = Ctx::new();
    let target = "x/../".repeat(1000) + "s";
    let e = err_text(c.load_tar(T::new().base().long_symlink("usr/bin/s", &target).bytes()));
    assert!(
        e.contains("/usr/bin/s") && e.contains("target is longer"),
        "{e}"
    );
}

/// An xz source is decoded as a stream and counted as it comes: a small file that
/// unpacks to far more than the limit is refused at the limit.
#[test]
fn an_xz_bomb_is_refused_at_the_byte_limit() {
    let c = Ctx::new();
    let big = T::new()
        .base()
        .file("usr/lib/zeros", 0o644, &vec![0u8; 8 << 20])
        .bytes();
    let mut child = std::process::Command::new("xz")
        .args(["-T1", "-0", "--stdout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("xz (xz-utils)");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&big).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert!(out.stdout.len() < 64 << 10, "{} bytes", out.stdout.len());
    let src = c.write("bomb.tar.xz", &out.stdout);
    let small = SourceLimits {
        max_bytes: 1 << 20,
        ..SourceLimits::default()
    };
    let e = err_text(c.load_with(&src, &small, &[]));
    assert!(e.contains("more than 1048576 bytes"), "{e}");
    // And a damaged xz stream is named as such.
    let mut damaged = out.stdout.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    let e = err_text(c.load(&c.write("damaged.tar.xz", &damaged)));
    assert!(e.contains("damaged.tar.xz"), "{e}");
}

/// A manifest naming one blob many times is not hashed without end: the bytes its
/// layers' blobs add up to count against the limit, and layers are capped.
#[test]
fn layers_named_over_and_over_are_refused() {
    let c = Ctx::new();
    let oci = Oci::new(c.path("oci"));
    let layer = T::new()
        .base()
        .file("usr/lib/blob", 0o644, &[7u8; 300 << 10])
        .bytes();
    let many: Vec<(&str, Vec<u8>)> = (0..8).map(|_| (TAR, layer.clone())).collect();
    let m = oci.image(&many);
    oci.index(vec![m]);
    let small = SourceLimits {
        max_bytes: 2 << 20,
        ..SourceLimits::default()
    };
    let e = err_text(c.load_with(&oci.dir, &small, &[]));
    assert!(
        e.contains("its layers' blobs") && e.contains("more than"),
        "{e}"
    );

    let oci = Oci::new(c.path("oci-many"));
    let tiny = T::new().base().bytes();
    let many: Vec<(&str, Vec<u8>)> = (0..300).map(|_| (TAR, tiny.clone())).collect();
    let m = oci.image(&many);
    oci.index(vec![m]);
    let e = err_text(c.load(&oci.dir));
    assert!(e.contains("300 layers"), "{e}");
}

/// The refusal's suggested flag matches exactly the refused path, however it is
/// named, and a name cannot put control characters on the terminal.
#[test]
fn the_suggested_allow_flag_matches_only_the_refused_path_and_names_are_escaped() {
    let c = Ctx::new();
    let tar = T::new()
        .base()
        .file("usr/bin/*", 0o4755, b"x")
        .file("usr/bin/rootshell", 0o644, b"x")
        .file("usr/bin/evil\x1b[2Jname", 0o4755, b"x")
        .bytes();
    let src = c.write("glob.tar", &tar);
    let e = err_text(c.load_with(&src, &SourceLimits::default(), &[]));
    assert!(e.contains("'setid:/usr/bin/[*]'"), "{e}");
    assert!(
        !e.contains('\x1b'),
        "a raw escape reached the message: {e:?}"
    );
    assert!(e.contains("\\u{1b}"), "{e}");
    // Pasting the suggestion for `*` does not let a set-id neighbour through.
    let sneaky = T::new()
        .base()
        .file("usr/bin/*", 0o4755, b"x")
        .file("usr/bin/rootshell", 0o4755, b"x")
        .bytes();
    let src = c.write("glob2.tar", &sneaky);
    let e = err_text(c.load_with(&src, &SourceLimits::default(), &["setid:/usr/bin/[*]"]));
    assert!(
        e.contains("/usr/bin/rootshell") && !e.contains("/usr/bin/*:"),
        "{e}"
    );
}

/// An owner id GNU tar would read as "leave the owner" (-1) makes nothing of root's.
#[test]
fn an_owner_id_of_u32_max_is_refused() {
    let c = Ctx::new();
    let e = err_text(
        c.load_tar(
            T::new()
                .base()
                // Named in the rootfs's own accounts, so the owner check alone would pass.
                .file(
                    "etc/passwd",
                    0o644,
                    b"root:x:0:0:root:/root:/bin/sh\nodd:x:4294967295:0::/:/bin/sh\n",
                )
                .owned("usr/bin/x", 0o755, u64::from(u32::MAX), 0, b"x")
                .bytes(),
        ),
    );
    assert!(
        e.contains("/usr/bin/x") && e.contains("no file can have"),
        "{e}"
    );
}

/// Where the enforcer mounts filesystems must be a directory if it is there at all.
#[test]
fn a_mount_point_that_is_a_link_is_refused() {
    let c = Ctx::new();
    for p in ["run", "tmp", "proc"] {
        let e = err_text(c.load_tar(T::new().base().symlink(p, "/etc").bytes()));
        assert!(
            e.contains(&format!("/{p} as something other than a directory")),
            "{e}"
        );
    }
}
