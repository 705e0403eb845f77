//! Custom images (`airlock image build --from-rootfs SRC`), through the real CLI and
//! real QEMU guests:
//!
//! - a directory and a gzip tarball of a small busybox rootfs each boot a session that
//!   sees the rootfs's own files; the same source gives the same image id (and writes
//!   nothing), one changed byte gives another;
//! - an OCI image layout made with `umoci`, and the same image as `skopeo` writes it
//!   into an `oci-archive:` and a `docker-archive:` (`docker save`'s format): one image
//!   id for all three, and each archive boots, its whiteout applied;
//! - the README's worked example: an OCI image built with `umoci` from the `debian`
//!   profile's rootfs plus a second layer that deletes a file and adds a tool. Refused
//!   without `--allow` (Debian's set-id programs, every one named), built with it; in
//!   the session the deleted file is gone, the added tool works through its shim and
//!   not directly; `image inspect` reports the source, the config (never a grant) and
//!   the tool;
//! - refusals, each naming the path, nothing written: a rootfs with its own
//!   `/etc/airlock`, a set-id file, `../` in a tarball, a write through a symlink an
//!   earlier entry planted, a source over the size cap, a corrupt tarball;
//! - `image inspect` on `minimal` and `debian`; `image list` and `image rm`.

#[path = "vm_support.rs"]
mod vm_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vm_support::airlock;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn case(name: &str) -> PathBuf {
    vm_support::workspace_root()
        .join("tests/cases/custom-images")
        .join(name)
}

/// md5 of "hi\n", as busybox's and coreutils' `md5sum` print it.
const MD5_OF_HI: &str = "764efa883dda1e11db47671c4a3bbd9e";

/// One test's scratch: keys, images, the VMM tools.
struct Fixture {
    dir: tempfile::TempDir,
    tools_dir: PathBuf,
    cache: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (inputs, tools) = vm_support::setup(dir.path());
        Fixture {
            tools_dir: tools.vhost_device_vsock.parent().unwrap().to_path_buf(),
            cache: inputs.cache,
            dir,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn images(&self) -> PathBuf {
        self.path("images")
    }

    /// `airlock image build` with this fixture's key, enforcer, cache and images
    /// directory, and `args`.
    fn image_build(&self, args: &[&str]) -> Output {
        let musl = vm_support::workspace_root().join("target/x86_64-unknown-linux-musl/release");
        Command::new(airlock())
            .args(["image", "build", "--cache"])
            .arg(&self.cache)
            .arg("--out")
            .arg(self.images())
            .arg("--pub")
            .arg(self.path("keys/airlock.pub"))
            .arg("--enforcer")
            .arg(musl.join("airlock-enforcer"))
            .arg("--shim")
            .arg(musl.join("airlock-shim"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Builds `--from-rootfs src --name name` (plus `extra`), which must succeed; the
    /// image id.
    fn build_ok(&self, src: &Path, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["--from-rootfs", src.to_str().unwrap(), "--name", name];
        args.extend(extra);
        let out = self.image_build(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "image build {name}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        self.image_id(name)
    }

    /// Builds `--from-rootfs src`, which must be refused (exit 1, nothing written):
    /// its stderr.
    fn build_refused(&self, src: &Path, extra: &[&str]) -> String {
        let mut args = vec!["--from-rootfs", src.to_str().unwrap(), "--name", "refused"];
        args.extend(extra);
        let out = self.image_build(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "not refused: {err}");
        assert!(
            !self.images().join("refused/image.json").exists(),
            "a refused build wrote an image: {err}"
        );
        err
    }

    fn image_id(&self, name: &str) -> String {
        let d: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.images().join(name).join("image.json")).unwrap(),
        )
        .unwrap();
        d["image_id"].as_str().unwrap().to_string()
    }

    /// `airlock run` on image `name` with `plan` and the tests' policy: (status,
    /// stdout, stderr).
    fn run(&self, name: &str, plan: &Path, script: &str) -> (Option<i32>, String, String) {
        let out = Command::new(airlock())
            .args(["run", "--isolation", "vm", "--policy"])
            .arg(case("policy.toml"))
            .arg("--plan")
            .arg(plan)
            .arg("--image")
            .arg(self.images().join(name))
            .arg("--key")
            .arg(self.path("keys/airlock.key"))
            .arg("--tools-dir")
            .arg(&self.tools_dir)
            .args(["--", "/bin/sh", "-c", script])
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("XDG_STATE_HOME", self.path("state"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    }

    /// `airlock image SUB args` against this fixture's images directory.
    fn image(&self, sub: &str, args: &[&str]) -> Output {
        Command::new(airlock())
            .args(["image", sub])
            .args(args)
            .arg("--out")
            .arg(self.images())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// A small root filesystem: static busybox with a few applets, the account files,
/// `/etc/motd` saying `motd`, and the directories the enforcer needs.
fn busybox_rootfs(at: &Path, motd: &str) -> PathBuf {
    for d in ["bin", "etc", "usr/bin", "usr/lib", "workspace", "tmp"] {
        std::fs::create_dir_all(at.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", at.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "test", "md5sum"] {
        std::os::unix::fs::symlink("busybox", at.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        at.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000::/workspace:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(at.join("etc/group"), "root:x:0:\nagent:x:1000:\n").unwrap();
    std::fs::write(at.join("etc/motd"), motd).unwrap();
    at.to_path_buf()
}

/// Runs `cmd`, which must succeed.
fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// An OCI image layout made with `umoci` at `layout` (tag `latest`): `base` as its
/// first layer, then a second layer of what `edit` changes in the unpacked rootfs
/// (`umoci unpack` / `repack`: deletions become whiteouts). Its image reference.
fn umoci_image(layout: &Path, base: &Path, bundle: &Path, edit: impl FnOnce(&Path)) -> String {
    let image = format!("{}:latest", layout.display());
    sh(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    sh(Command::new("umoci").args(["new", "--image", &image]));
    sh(Command::new("umoci")
        .args(["insert", "--image", &image])
        .arg(base)
        .arg("/"));
    sh(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(bundle));
    edit(&bundle.join("rootfs"));
    sh(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(bundle));
    image
}

/// A tarball written by Python's `tarfile` from `script` (which gets `t`, the open
/// archive, and `io`), for entries GNU tar will not make.
fn crafted_tar(at: &Path, script: &str) -> PathBuf {
    let program = format!(
        "import io, sys, tarfile\nt = tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT)\n\
         def add(name, data=b'x', kind=tarfile.REGTYPE, link=''):\n    i = tarfile.TarInfo(name)\n    i.type = kind\n    i.linkname = link\n    i.size = len(data) if kind == tarfile.REGTYPE else 0\n    i.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644\n    t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)\n\
         for d in ['bin', 'etc', 'usr', 'usr/lib', 'usr/bin']:\n    add(d, kind=tarfile.DIRTYPE)\n\
         {script}\nt.close()\n"
    );
    sh(Command::new("python3").args(["-c", &program]).arg(at));
    at.to_path_buf()
}

#[test]
fn a_directory_and_a_tarball_boot_and_the_same_source_gives_the_same_id() {
    let f = Fixture::new();
    let root = busybox_rootfs(&f.path("rootfs"), "from a directory\n");
    let id = f.build_ok(&root, "from-dir", &[]);
    let _one = vm_support::ONE_VM.blocking_lock();
    let (code, out, err) = f.run("from-dir", &case("plan.toml"), "cat /etc/motd");
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "from a directory\n"),
        "{err}"
    );

    // The same source again: the same id, nothing written.
    let again = f.image_build(&[
        "--from-rootfs",
        root.to_str().unwrap(),
        "--name",
        "from-dir",
    ]);
    assert_eq!(f.image_id("from-dir"), id);
    assert!(
        text(&again.stdout).contains("up to date, nothing written"),
        "{}",
        text(&again.stdout)
    );
    // One byte changed: another id.
    std::fs::write(root.join("etc/motd"), "from a directorY\n").unwrap();
    let changed = f.build_ok(&root, "from-dir-changed", &[]);
    assert_ne!(changed, id, "one changed byte kept the image id");

    // The same tree as a gzip tarball (`docker export` style, compressed).
    let tarball = f.path("rootfs.tar.gz");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "-czf"])
        .arg(&tarball)
        .arg("."));
    let tar_id = f.build_ok(&tarball, "from-tar", &[]);
    assert_eq!(
        f.build_ok(&tarball, "from-tar-again", &[]),
        tar_id,
        "the same tarball gave another id"
    );
    let (code, out, err) = f.run(
        "from-tar",
        &case("plan.toml"),
        "cat /etc/motd; echo hi | md5sum",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("from a directorY\n{MD5_OF_HI}  -\n"), "{err}");
    let d: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.images().join("from-tar/image.json")).unwrap())
            .unwrap();
    assert_eq!(d["profile"], "rootfs");
    assert_eq!(d["source"]["kind"], "tarball");
    assert!(
        d["source"]["digest"]
            .as_str()
            .is_some_and(|s| s.starts_with("sha256:")),
        "{d}"
    );
}

#[test]
fn an_oci_layout_and_its_oci_and_docker_archives_give_one_image_and_boot() {
    let f = Fixture::new();
    let root = busybox_rootfs(&f.path("rootfs"), "from the base layer\n");
    std::fs::write(root.join("etc/notes"), "deleted by the second layer\n").unwrap();
    let layout = f.path("oci");
    let image = umoci_image(&layout, &root, &f.path("bundle"), |rootfs| {
        std::fs::remove_file(rootfs.join("etc/notes")).unwrap();
    });
    let archive = f.path("oci-archive.tar");
    let docker = f.path("docker-archive.tar");
    sh(Command::new("skopeo")
        .args(["copy", &format!("oci:{image}")])
        .arg(format!("oci-archive:{}:latest", archive.display())));
    sh(Command::new("skopeo")
        .args(["copy", &format!("oci:{image}")])
        .arg(format!("docker-archive:{}:team/agent:1", docker.display())));
    let id = f.build_ok(&layout, "layout", &[]);
    assert_eq!(f.build_ok(&archive, "oci-archive", &[]), id);
    assert_eq!(f.build_ok(&docker, "docker-archive", &[]), id);
    let _one = vm_support::ONE_VM.blocking_lock();
    for name in ["oci-archive", "docker-archive"] {
        let (code, out, err) = f.run(
            name,
            &case("plan.toml"),
            "cat /etc/motd; test -e /etc/notes && echo 'notes: present' || echo 'notes: gone'",
        );
        assert_eq!(code, Some(0), "{name}: {err}");
        assert_eq!(out, "from the base layer\nnotes: gone\n", "{name}: {err}");
    }
    for (name, kind) in [
        ("oci-archive", "oci-archive"),
        ("docker-archive", "docker-archive"),
    ] {
        let d: serde_json::Value = serde_json::from_slice(
            &std::fs::read(f.images().join(name).join("image.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(d["source"]["kind"], kind, "{d}");
    }
}

/// The README's worked example, from the `debian` profile's own rootfs.
#[test]
fn an_oci_image_made_with_umoci_boots_without_its_deleted_file_and_with_its_added_tool() {
    if !airlock_tests::running_as_root() {
        // fsck.erofs extracts Debian's owners, and umoci keeps them, only as root.
        airlock_tests::skip("the OCI example needs root (Debian's file owners)");
        return;
    }
    let f = Fixture::new();
    let rootfs = airlock_launcher::image::debian::fetch_rootfs(&f.cache, &|_| {})
        .unwrap_or_else(|e| panic!("{e}"));
    // The rootfs as it boots: mounted read-only and copied out with owners and modes
    // (fsck.erofs --extract would drop the set-id bits: it chowns after it chmods;
    // umoci wants a tree it may chmod).
    let mnt = f.path("debian-mnt");
    std::fs::create_dir(&mnt).unwrap();
    sh(Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(&rootfs.image)
        .arg(&mnt));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let mounted = Unmount(mnt.clone());
    let debian = f.path("debian-root");
    sh(Command::new("cp").arg("-a").arg(&mnt).arg(&debian));
    drop(mounted);
    let layout = f.path("team-oci");
    // The team's layer: a file deleted, a tool added.
    let image = umoci_image(&layout, &debian, &f.path("bundle"), |rootfs| {
        std::fs::remove_file(rootfs.join("etc/issue")).unwrap();
        std::fs::create_dir_all(rootfs.join("usr/local/bin")).unwrap();
        std::fs::copy(
            rootfs.join("usr/bin/md5sum"),
            rootfs.join("usr/local/bin/team-digest"),
        )
        .unwrap();
    });
    sh(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.env",
        "TEAM_TOKEN=from-the-config",
        "--config.user",
        "0",
    ]));

    // Debian's set-id programs are refused, every one named, with the flag to add.
    let err = f.build_refused(&layout, &[]);
    for named in ["/usr/bin/su", "/usr/bin/passwd", "--allow setid:"] {
        assert!(
            err.contains(named),
            "the refusal does not name {named}: {err}"
        );
    }
    let id = f.build_ok(&layout, "team", &["--allow", "setid:/usr/**"]);
    assert!(id.starts_with("sha256:"));

    let _one = vm_support::ONE_VM.blocking_lock();
    let (code, out, err) = f.run(
        "team",
        &case("team-plan.toml"),
        "test -e /etc/issue && echo 'issue: present' || echo 'issue: gone'; \
         test -e /etc/debian_version && echo 'base: present'; \
         echo \"token: ${TEAM_TOKEN-unset}\"; \
         echo hi | team-digest; \
         /usr/local/bin/team-digest </dev/null; echo \"direct: $?\"",
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "issue: gone",
            "base: present",
            "token: unset",
            &format!("{MD5_OF_HI}  -")[..]
        ],
        "{out}{err}"
    );
    // The real binary is not the agent's to run: only its shim is.
    assert_eq!(lines.get(4), Some(&"direct: 126"), "{out}{err}");

    let inspect = f.image("inspect", &["team", "--json"]);
    assert_eq!(inspect.status.code(), Some(0), "{}", text(&inspect.stderr));
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["descriptor"]["source"]["kind"], "oci-layout", "{v}");
    assert_eq!(
        v["report"]["oci_config"]["env"][0], "TEAM_TOKEN=from-the-config",
        "{v}"
    );
    let local = v["report"]["inventory"]["tool_dirs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "/usr/local/bin")
        .unwrap_or_else(|| panic!("no /usr/local/bin: {v}"));
    assert_eq!(local["executables"], serde_json::json!(["team-digest"]));
    let allowed = v["report"]["allowed"].to_string();
    assert!(allowed.contains("/usr/bin/su"), "{allowed}");
}

#[test]
fn refusals_name_the_path_and_write_nothing() {
    let f = Fixture::new();

    let own = busybox_rootfs(&f.path("own-airlock"), "x\n");
    std::fs::create_dir_all(own.join("etc/airlock")).unwrap();
    std::fs::write(own.join("etc/airlock/launcher.pub"), "not ours\n").unwrap();
    let err = f.build_refused(&own, &[]);
    assert!(err.contains("/etc/airlock"), "{err}");

    let setid = busybox_rootfs(&f.path("setid"), "x\n");
    std::fs::copy("/bin/busybox", setid.join("usr/bin/helper")).unwrap();
    sh(Command::new("chmod")
        .arg("u+s")
        .arg(setid.join("usr/bin/helper")));
    let err = f.build_refused(&setid, &[]);
    assert!(
        err.contains("/usr/bin/helper") && err.contains("--allow setid:"),
        "{err}"
    );
    // Named, it goes through.
    f.build_ok(
        &setid,
        "setid-allowed",
        &["--allow", "setid:/usr/bin/helper"],
    );

    let dotdot = crafted_tar(&f.path("dotdot.tar"), "add('bin/../../escaped')");
    let err = f.build_refused(&dotdot, &[]);
    assert!(err.contains("escaped"), "{err}");

    let planted = crafted_tar(
        &f.path("planted.tar"),
        "add('etc/conf', kind=tarfile.SYMTYPE, link='/tmp')\nadd('etc/conf/evil')",
    );
    let err = f.build_refused(&planted, &[]);
    assert!(err.contains("etc/conf/evil"), "{err}");

    let big = busybox_rootfs(&f.path("big"), "x\n");
    std::fs::write(big.join("usr/lib/blob"), vec![7u8; 3 << 20]).unwrap();
    let err = f.build_refused(&big, &["--max-source-mib", "2"]);
    assert!(err.contains("cap") || err.contains("limit"), "{err}");

    let good = busybox_rootfs(&f.path("good"), "x\n");
    let tarball = f.path("good.tar.gz");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&good)
        .arg("-czf")
        .arg(&tarball)
        .arg("."));
    let bytes = std::fs::read(&tarball).unwrap();
    let corrupt = f.path("corrupt.tar.gz");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let err = f.build_refused(&corrupt, &[]);
    assert!(err.contains("corrupt.tar.gz"), "{err}");
    // The whole file is fine: the refusal was for the damage.
    f.build_ok(&tarball, "good", &[]);
}

#[test]
fn image_inspect_describes_minimal_and_debian_and_list_and_rm_manage_the_cache() {
    use airlock_launcher::image::{build, BuildInputs, Profile};
    let f = Fixture::new();
    let (inputs, _) = vm_support::setup(&f.path("setup"));
    let inputs = BuildInputs {
        out: f.images(),
        public_key: f.path("keys/airlock.pub"),
        ..inputs
    };
    build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let minimal = f.image("inspect", &["minimal", "--json"]);
    assert_eq!(minimal.status.code(), Some(0), "{}", text(&minimal.stderr));
    let v: serde_json::Value = serde_json::from_slice(&minimal.stdout).unwrap();
    let inv = &v["report"]["inventory"];
    assert_eq!(inv["tool_dirs"][0]["path"], "/bin", "{v}");
    let bin = inv["tool_dirs"][0]["executables"].to_string();
    assert!(bin.contains("\"sh\"") && bin.contains("\"cat\""), "{bin}");
    assert_eq!(
        inv["loaders"],
        serde_json::json!([]),
        "busybox is static: {v}"
    );
    assert_eq!(v["descriptor"]["landlock_abi"], 6, "{v}");

    build(Profile::Debian, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let debian = f.image("inspect", &["debian"]);
    let shown = text(&debian.stdout);
    assert_eq!(debian.status.code(), Some(0), "{}", text(&debian.stderr));
    for line in [
        "Landlock ABI 6",
        "tools in      /usr/bin",
        "interpreter   python3 at /usr/bin/python3",
        "library /usr/lib/python3.",
        "loader        /lib64/ld-linux-x86-64.so.2 (present",
        "libc          ",
    ] {
        assert!(shown.contains(line), "no `{line}` in:\n{shown}");
    }

    let root = busybox_rootfs(&f.path("rootfs"), "x\n");
    f.build_ok(&root, "team", &[]);
    let list = f.image("list", &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["debian", "minimal", "team"], "{v}");
    let team = &v.as_array().unwrap()[2];
    assert!(
        team["built_from"].as_str().unwrap().contains("rootfs"),
        "{team}"
    );
    assert!(team["size_bytes"].as_u64().unwrap() > 0, "{team}");

    // rm checks every name first: one unknown name removes nothing.
    let refused = f.image("rm", &["team", "nope"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("nope"),
        "{}",
        text(&refused.stderr)
    );
    assert!(f.images().join("team/image.json").exists());
    let removed = f.image("rm", &["team"]);
    assert_eq!(removed.status.code(), Some(0), "{}", text(&removed.stderr));
    assert!(!f.images().join("team").exists());
    let traversal = f.image("rm", &["../images"]);
    assert_eq!(
        traversal.status.code(),
        Some(2),
        "{}",
        text(&traversal.stderr)
    );
    assert!(f.images().join("minimal/image.json").exists());
}
