//! `airlock run` in a VM as a script drives it: the real binary, a real QEMU guest on
//! the `minimal` image. Output and the command's status come back, piped stdin reaches
//! the command, `--json` ends with a summary, a denied plan exits 4 without booting,
//! stdin of any size streams to the command, and on a terminal the command gets one
//! of its own.

#[path = "vm_support.rs"]
mod vm_support;

use airlock_launcher::image::{build, Profile};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use vm_support::setup;

use vm_support::airlock;

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
fn a_denied_plan_boots_nothing_and_stdin_of_any_size_streams() {
    let cli = Cli::new();
    let secret = cli.dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let mount = format!("{}:/secret:ro", secret.display());
    let out = cli.run(&["--mount", &mount], &["/bin/true"], b"");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("rule `secret`"), "{stderr}");
    assert!(!booted_any(&cli.vms()), "a denied plan booted a VM");

    // Stdin streams while the command runs: far more than one message carries.
    let size = 3 * airlock_launcher::launcher::MAX_EXEC_STDIN_BYTES + 1;
    let out = cli.run(&[], &["/bin/sh", "-c", "wc -c"], &vec![b'x'; size]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), size.to_string());
}

/// On a terminal (`script(1)` gives `airlock run` one; the test types into it), the
/// command gets a terminal of its own in the guest, sized like ours and following
/// its resizes; ours is raw meanwhile (a key is echoed once, by the guest's terminal)
/// and as it was afterwards.
#[test]
fn on_a_terminal_the_command_gets_one_of_its_own_and_ours_is_restored() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let cli = Cli::new();
    let script = "test -t 0 && test -t 1 && echo tty-yes; echo size:$(stty size); \
        printf \"\\033]52;c;cHduZWQ=\\007clip-tried\\n\"; \
        echo ready; read x; echo got:$x; echo size:$(stty size); exit 7";
    let run = format!(
        "stty rows 33 cols 101; echo before:$(stty -g); echo pty:$(tty); \
         {} run --isolation vm --policy {} --image {} --key {} --tools-dir {} -- /bin/sh -c '{script}'; \
         echo status:$?; echo after:$(stty -g)",
        airlock().display(),
        vm_support::vm_policy_path().display(),
        cli.image_json.display(),
        cli.dir.path().join("keys/airlock.key").display(),
        cli.tools_dir.display(),
    );
    let mut child = Command::new("script")
        .args(["-qfec", &run, "/dev/null"])
        .env("XDG_RUNTIME_DIR", cli.dir.path().join("run"))
        .env("XDG_CACHE_HOME", cli.dir.path().join("cache"))
        .env("TERM", "xterm-256color")
        // The shell `script` runs the line with: the same here as on CI.
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let mut keyboard = child.stdin.take().unwrap();
    let mut screen = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = screen.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut seen = String::new();
    let mut wait_for = |needle: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !seen.contains(needle) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("never saw {needle:?} in:\n{seen}"),
            }
        }
        seen.clone()
    };
    let shown = wait_for("ready");
    assert!(shown.contains("tty-yes"), "{shown}");
    assert!(shown.contains("size:33 101"), "{shown}");
    // A clipboard write (OSC 52) from the guest never reaches our terminal.
    assert!(
        shown.contains("clip-tried") && !shown.contains("]52;"),
        "{shown:?}"
    );
    let pty = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("pty:"))
        .expect("the terminal's name")
        .to_string();
    // Resized as a window would be: the kernel signals airlock (the foreground job).
    let resized = Command::new("stty")
        .args(["-F", &pty, "rows", "40", "cols", "120"])
        .status()
        .unwrap();
    assert!(resized.success());
    std::thread::sleep(Duration::from_secs(2));
    keyboard.write_all(b"hello\r").unwrap();
    let shown = wait_for("after:");
    let _ = child.wait();
    let shown = shown
        + &rx
            .try_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect::<String>();
    assert!(shown.contains("got:hello"), "{shown}");
    assert!(
        shown.contains("size:40 120"),
        "the guest's terminal followed: {shown}"
    );
    assert!(shown.contains("status:7"), "{shown}");
    assert_eq!(
        shown.matches("hello").count(),
        2,
        "echoed once (ours was raw): {shown}"
    );
    let setting = |tag: &str| {
        shown
            .lines()
            .find_map(|l| l.trim().strip_prefix(tag).map(str::to_string))
            .unwrap_or_else(|| panic!("no {tag} in {shown}"))
    };
    assert_eq!(
        setting("before:"),
        setting("after:"),
        "our terminal is as it was"
    );
    assert!(!booted_any(&cli.vms()), "a VM directory outlived the run");
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
