//! `airlock run` in a VM as a script drives it: the real binary, a real QEMU guest on
//! the `minimal` image. Output and the command's status come back, piped stdin reaches
//! the command, `--json` ends with a summary, a denied plan exits 4 without booting,
//! and a stdin too large to carry is refused (125) before anything boots.

#[path = "vm_support.rs"]
mod vm_support;

use airlock_launcher::image::{build, Profile};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use vm_support::setup;

fn airlock() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .unwrap()
        .join("airlock")
}

struct Cli {
    dir: tempfile::TempDir,
    image_json: PathBuf,
    tools_dir: PathBuf,
}

impl Cli {
    fn new() -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let (inputs, tools) = setup(dir.path());
        build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
        Cli {
            image_json: inputs.out.join("minimal/image.json"),
            tools_dir: tools.vhost_device_vsock.parent().unwrap().to_path_buf(),
            dir,
        }
    }

    fn vms(&self) -> PathBuf {
        self.dir.path().join("run/airlock/vms")
    }

    /// `airlock run --isolation vm … -- argv` with `stdin` piped in.
    fn run(&self, extra: &[&str], argv: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(airlock())
            .args(["run", "--isolation", "vm", "--policy"])
            .arg(vm_support::vm_policy_path())
            .arg("--image")
            .arg(&self.image_json)
            .arg("--key")
            .arg(self.dir.path().join("keys/airlock.key"))
            .arg("--tools-dir")
            .arg(&self.tools_dir)
            .args(extra)
            .arg("--")
            .args(argv)
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let bytes = stdin.to_vec();
        // A writer thread: airlock may refuse before reading it all.
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        });
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        out
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn booted_any(vms: &Path) -> bool {
    std::fs::read_dir(vms).is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn airlock_run_in_a_vm_passes_stdin_output_and_status() {
    let cli = Cli::new();
    let out = cli.run(
        &["--json"],
        &[
            "/bin/sh",
            "-c",
            "read x; echo got:$x; echo to-stderr >&2; exit 3",
        ],
        b"hello from the host\n",
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(stdout.trim(), "got:hello from the host", "{stderr}");
    assert!(stderr.contains("to-stderr"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("the last stderr line is not JSON ({e}): {stderr}"));
    assert_eq!(summary["isolation"], "vm");
    assert_eq!(summary["exit_code"], 3);
    // The VM is gone once airlock returns.
    assert!(!booted_any(&cli.vms()), "a VM directory outlived the run");
}

#[test]
fn a_denied_plan_or_an_oversized_stdin_boots_nothing() {
    let cli = Cli::new();
    let secret = cli.dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let mount = format!("{}:/secret:ro", secret.display());
    let out = cli.run(&["--mount", &mount], &["/bin/true"], b"");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("rule `secret`"), "{stderr}");
    assert!(!booted_any(&cli.vms()), "a denied plan booted a VM");

    let big = vec![b'x'; airlock_launcher::launcher::MAX_EXEC_STDIN_BYTES + 1];
    let out = cli.run(&[], &["/bin/sh", "-c", "wc -c"], &big);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("stdin is more than"), "{stderr}");
    assert!(!booted_any(&cli.vms()), "an oversized stdin booted a VM");
    // The neighbour: exactly the limit goes through.
    let big = vec![b'x'; airlock_launcher::launcher::MAX_EXEC_STDIN_BYTES];
    let out = cli.run(&[], &["/bin/sh", "-c", "wc -c"], &big);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        airlock_launcher::launcher::MAX_EXEC_STDIN_BYTES.to_string()
    );
}

/// Nothing of a VM session needs root: run as root, the suite drops `airlock run` to
/// `nobody` (65534, no groups, no capabilities; `/dev/kvm` not even openable, so the
/// probe falls back to TCG) with an image, key and share that user owns, and the
/// session boots, runs and writes to its share as that user. (As another user every VM
/// test already runs unprivileged.)
#[test]
fn a_vm_session_needs_no_root() {
    use std::os::unix::fs::PermissionsExt;
    if !airlock_tests::running_as_root() {
        return airlock_tests::skip(
            "not root: cannot hand a session to another user (every VM test here already runs unprivileged)",
        );
    }
    let cli = Cli::new();
    const NOBODY: u32 = 65534;
    let chown_tree = |p: &Path| {
        let st = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success(), "chown {}", p.display());
    };
    let root = cli.dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = root.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("in.txt"), "from the host\n").unwrap();
    for p in [root.join("keys"), root.join("images"), work.clone()] {
        chown_tree(&p);
    }
    for d in ["run", "cache"] {
        std::fs::create_dir(root.join(d)).unwrap();
        chown_tree(&root.join(d));
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(airlock())
        .args(["run", "--isolation", "vm", "--policy"])
        .arg(vm_support::vm_policy_path())
        .arg("--image")
        .arg(&cli.image_json)
        .arg("--key")
        .arg(root.join("keys/airlock.key"))
        .arg("--tools-dir")
        .arg(&cli.tools_dir)
        .arg("--mount")
        .arg(format!("{}:/work:rw", work.display()))
        .args([
            "--",
            "/bin/sh",
            "-c",
            "read x < /work/in.txt; echo \"$x, seen\" > /work/out.txt",
        ])
        .env("XDG_RUNTIME_DIR", root.join("run"))
        .env("XDG_CACHE_HOME", root.join("cache"))
        .env("HOME", root.join("run"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let written = work.join("out.txt");
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        "from the host, seen\n"
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&written).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (NOBODY, NOBODY),
        "the share's write is not the share owner's"
    );
    assert!(
        !booted_any(&root.join("run/airlock/vms")),
        "a VM directory outlived the run"
    );
}
