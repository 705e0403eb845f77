//! The workspace suite: writable grants are copy-on-write, and nothing reaches the host
//! except through the launcher's merge-back gate. Each test is a real `airlock run` in
//! both isolation modes (process: namespaces on this kernel; vm: a QEMU guest on the
//! debian image), with a python script as the agent (`python3 -c`, the suite's policy
//! `tests/cases/workspace-policy.toml`) and git through its shim.
//!
//! Each attack from the issue that opened this work is made for real, next to its
//! allowed neighbour, and judged on the host tree afterwards: what git runs there, the
//! bytes, modes and owners left. Needs root (process isolation maps uids; the host
//! checks chown trees and set an immutable attribute); skipped with a reason otherwise.

#[path = "vm_support.rs"]
mod vm_support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// The uid and gid that own the suite's workspaces (not root, not the runner).
const OWNER: u32 = 4321;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Process,
    Vm,
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

fn policy_path() -> PathBuf {
    vm_support::workspace_root().join("tests/cases/workspace-policy.toml")
}

/// One session at a time: VMs are heavy.
static ONE: Mutex<()> = Mutex::new(());

struct VmEnv {
    dir: tempfile::TempDir,
    image_json: PathBuf,
    tools_dir: PathBuf,
}

/// The debian image, built once for the suite (its rootfs comes from the shared cache).
fn vm_env() -> &'static VmEnv {
    static ENV: OnceLock<VmEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (inputs, tools) = vm_support::setup(dir.path());
        let (image, _) = airlock_launcher::image::build(
            airlock_launcher::image::Profile::Debian,
            &inputs,
            &|_| {},
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let _ = image;
        VmEnv {
            image_json: inputs.out.join("debian/image.json"),
            tools_dir: tools.vhost_device_vsock.parent().unwrap().to_path_buf(),
            dir,
        }
    })
}

/// Why this machine cannot run the suite, if it cannot.
fn skip_reason() -> Option<&'static str> {
    (!airlock_tests::running_as_root())
        .then_some("the workspace suite needs root (process isolation, chown, chattr)")
}

/// A host tree for one test: `work` is a git repository owned by [`OWNER`] with a
/// commit of `a.txt`, `b.txt`, `old.txt` and `m/inner.txt`.
struct Tree {
    dir: tempfile::TempDir,
    work: PathBuf,
}

fn git_on_host(work: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args(["-c", "safe.directory=*", "-C"])
        .arg(work)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", work.parent().unwrap())
        .output()
        .unwrap()
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("m")).unwrap();
        for (name, text) in [
            ("a.txt", "alpha\n"),
            ("b.txt", "beta\n"),
            ("old.txt", "old\n"),
            ("m/inner.txt", "inner\n"),
        ] {
            std::fs::write(work.join(name), text).unwrap();
        }
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["config", "user.name", "Host User"],
            &["config", "user.email", "host@example.invalid"],
            &["add", "-A"],
            &["commit", "-q", "-m", "base"],
        ] {
            let out = git_on_host(&work, args);
            assert!(out.status.success(), "git {args:?}: {out:?}");
        }
        chown_tree(&work, OWNER);
        Tree { dir, work }
    }

    fn plan(&self, disk_mib: u64) -> PathBuf {
        let p = self.dir.path().join("plan.toml");
        std::fs::write(
            &p,
            format!(
                "command = [\"python3\"]\ncwd = \"/workspace\"\n[resources]\ndisk_mib = {disk_mib}\nmemory_mib = 512\n"
            ),
        )
        .unwrap();
        p
    }
}

fn chown_tree(p: &Path, id: u32) {
    let st = Command::new("chown")
        .args(["-R", "-h", &format!("{id}:{id}")])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Everything under `root` (no symlink followed): path → (type, mode, uid, bytes).
fn snapshot(root: &Path) -> BTreeMap<String, (String, u32, u32, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, u32, u32, Vec<u8>)>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let (kind, bytes) = if m.is_dir() {
                ("dir", vec![])
            } else if m.file_type().is_symlink() {
                (
                    "link",
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if m.is_file() {
                ("file", std::fs::read(&p).unwrap())
            } else {
                ("special", vec![])
            };
            out.insert(rel, (kind.into(), m.mode() & 0o7777, m.uid(), bytes));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `airlock run` in `mode` with the suite's policy, the tree's plan and `extra` flags,
/// the agent being `python3 -c script`.
fn airlock_run(mode: Mode, tree: &Tree, disk_mib: u64, extra: &[&str], script: &str) -> Command {
    let mut cmd = Command::new(bin_dir().join("airlock"));
    cmd.arg("run")
        .arg("--isolation")
        .arg(match mode {
            Mode::Process => "process",
            Mode::Vm => "vm",
        })
        .arg("--policy")
        .arg(policy_path())
        .arg("--plan")
        .arg(tree.plan(disk_mib))
        .args(["--tool", "git", "--tool", "python3"]);
    if mode == Mode::Vm {
        let env = vm_env();
        cmd.arg("--image")
            .arg(&env.image_json)
            .arg("--key")
            .arg(env.dir.path().join("keys/airlock.key"))
            .arg("--tools-dir")
            .arg(&env.tools_dir)
            .env("XDG_RUNTIME_DIR", env.dir.path().join("run"))
            .env("XDG_CACHE_HOME", env.dir.path().join("cache"));
    }
    cmd.args(extra)
        .arg("--")
        .args(["python3", "-c", script])
        .stdin(Stdio::null());
    cmd
}

fn run(
    mode: Mode,
    tree: &Tree,
    disk_mib: u64,
    extra: &[&str],
    script: &str,
) -> (i32, String, String) {
    let mut args = vec![
        "--mount".to_string(),
        format!("{}:/workspace:rw", tree.work.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = airlock_run(mode, tree, disk_mib, &args, script)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// Runs `body` in `mode` unless the machine cannot, one session at a time.
fn in_mode(mode: Mode, body: impl FnOnce(Mode)) {
    if let Some(why) = skip_reason() {
        airlock_tests::skip(why);
        return;
    }
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    body(mode)
}

// ----------------------------------------------------------------- scenarios -----

/// The allowed neighbour: a normal edit-and-commit (new file, modification, deletion,
/// rename, new directories) lands on the host, owned by the workspace's owner, and the
/// host's git sees the commit.
fn edit_and_commit_lands(mode: Mode) {
    let tree = Tree::new();
    let script = r#"
import os, subprocess
os.chdir('/workspace')
open('new.txt', 'w').write('new\n')
open('a.txt', 'a').write('more\n')
os.remove('b.txt')
os.rename('old.txt', 'renamed.txt')
os.makedirs('d/e')
open('d/e/f.txt', 'w').write('deep\n')
subprocess.run(['git', 'add', '-A'], check=True)
subprocess.run(['git', 'commit', '-q', '-m', 'agent work'], check=True)
print('committed')
"#;
    let (code, out, err) = run(mode, &tree, 256, &[], script);
    assert_eq!(code, 0, "{mode:?}: {out}\n{err}");
    assert!(
        err.contains("airlock: workspace: merged"),
        "{mode:?}: {err}"
    );
    let w = &tree.work;
    assert_eq!(std::fs::read_to_string(w.join("new.txt")).unwrap(), "new\n");
    assert_eq!(
        std::fs::read_to_string(w.join("a.txt")).unwrap(),
        "alpha\nmore\n"
    );
    assert!(!w.join("b.txt").exists() && !w.join("old.txt").exists());
    assert_eq!(
        std::fs::read_to_string(w.join("renamed.txt")).unwrap(),
        "old\n"
    );
    assert_eq!(
        std::fs::read_to_string(w.join("d/e/f.txt")).unwrap(),
        "deep\n"
    );
    for p in ["new.txt", "d", "d/e/f.txt", "renamed.txt"] {
        let m = std::fs::symlink_metadata(w.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (OWNER, OWNER), "{mode:?}: owner of {p}");
        assert_eq!(m.mode() & 0o7022, 0, "{mode:?}: {p} mode {:o}", m.mode());
    }
    let log = git_on_host(w, &["log", "--format=%s"]);
    assert_eq!(
        String::from_utf8_lossy(&log.stdout),
        "agent work\nbase\n",
        "{mode:?}"
    );
    let status = git_on_host(w, &["status", "--porcelain"]);
    assert_eq!(String::from_utf8_lossy(&status.stdout), "", "{mode:?}");
}

/// The agent plants what makes the host run code later (`core.fsmonitor` in
/// `.git/config`, a post-commit hook, `.envrc`, a nested repository's hook, a bare
/// repository's config, a Makefile the policy protects): none of it lands, the host's
/// own `git status` and `git commit` run nothing, and the files around it still merge.
/// The control plants the same in a copy on the host and shows the marker appear.
fn planted_persistence_is_refused(mode: Mode) {
    let tree = Tree::new();
    let marker = tree.dir.path().join("pwned");
    let plant = format!(
        r#"
import os
os.chdir('/workspace')
open('.git/config', 'a').write('[core]\n\tfsmonitor = "touch {m}; false"\n')
os.makedirs('.git/hooks', exist_ok=True)
open('.git/hooks/post-commit', 'w').write('#!/bin/sh\ntouch {m}\n')
os.chmod('.git/hooks/post-commit', 0o755)
open('.envrc', 'w').write('touch {m}\n')
open('Makefile', 'w').write('all:\n\ttouch {m}\n')
os.makedirs('sub/.git/hooks')
open('sub/.git/hooks/pre-commit', 'w').write('#!/bin/sh\ntouch {m}\n')
for d in ['bare/objects', 'bare/refs']:
    os.makedirs(d)
open('bare/HEAD', 'w').write('ref: refs/heads/main\n')
open('bare/config', 'w').write('[core]\n\tbare = true\n\tfsmonitor = "touch {m}"\n')
open('kept.txt', 'w').write('kept\n')
print('planted')
"#,
        m = marker.display()
    );
    // Control: the same moves made on the host itself do run code there.
    let control = tempfile::tempdir().unwrap();
    let cwork = control.path().join("work");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&tree.work)
        .arg(&cwork)
        .status()
        .unwrap();
    assert!(st.success());
    let host_plant = plant.replace("/workspace", &cwork.display().to_string());
    let st = Command::new("python3")
        .args(["-c", &host_plant])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    git_on_host(&cwork, &["status"]);
    assert!(
        marker.exists(),
        "control: the planted fsmonitor does not run on this host"
    );
    std::fs::remove_file(&marker).unwrap();

    let config_before = std::fs::read(tree.work.join(".git/config")).unwrap();
    let (code, out, err) = run(mode, &tree, 256, &[], &plant);
    assert_eq!(code, 0, "{mode:?}: {out}\n{err}");
    assert!(err.contains("refused"), "{mode:?}: {err}");
    let w = &tree.work;
    assert_eq!(
        std::fs::read(w.join(".git/config")).unwrap(),
        config_before,
        "{mode:?}"
    );
    for gone in [
        ".git/hooks/post-commit",
        ".envrc",
        "Makefile",
        "sub/.git/hooks/pre-commit",
        "bare/config",
    ] {
        assert!(
            !w.join(gone).exists(),
            "{mode:?}: {gone} reached the host\n{err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(w.join("kept.txt")).unwrap(),
        "kept\n"
    );
    // The host user's own git, afterwards, in the workspace and the planted repos.
    git_on_host(w, &["status"]);
    let commit = git_on_host(w, &["commit", "-q", "--allow-empty", "-m", "host"]);
    assert!(commit.status.success(), "{commit:?}");
    git_on_host(&w.join("bare"), &["status"]);
    assert!(
        !marker.exists(),
        "{mode:?}: something planted ran on the host"
    );
}

/// Set-id bits and FIFOs never reach the host, even from a root-owned workspace (the
/// one where a set-id copy of a shell would be root's; the agent cannot read a real
/// shell, so any file stands in for it); the plain file next to them does.
fn setid_and_special_files_are_refused(mode: Mode) {
    let tree = Tree::new();
    chown_tree(&tree.work, 0);
    let script = r#"
import os, shutil, errno
os.chdir('/workspace')
shutil.copy('/etc/passwd', 'shell')
for how, call in [('chmod', lambda: os.chmod('shell', 0o6755)),
                  ('mkfifo', lambda: os.mkfifo('fifo')),
                  ('chmod-plain', lambda: os.chmod('shell', 0o750)),
                  ('mkfifo-tmp', lambda: os.mkfifo('/tmp/fifo'))]:
    try:
        call()
        print(how, 'ok')
    except OSError as e:
        print(how, 'errno', e.errno)
open('plain.txt', 'w').write('plain\n')
"#;
    let (code, out, err) = run(mode, &tree, 256, &[], script);
    assert_eq!(code, 0, "{mode:?}: {out}\n{err}");
    assert!(
        out.contains("chmod errno 1"),
        "{mode:?}: seccomp refuses set-id modes\n{out}"
    );
    // The neighbours: a plain mode change, and a FIFO in /tmp (not a workspace).
    assert!(
        out.contains("chmod-plain ok") && out.contains("mkfifo-tmp ok"),
        "{mode:?}: {out}"
    );
    assert!(
        out.contains("mkfifo errno 13"),
        "{mode:?}: Landlock refuses FIFOs in a workspace\n{out}"
    );
    let w = &tree.work;
    let shell = std::fs::metadata(w.join("shell")).unwrap();
    assert_eq!(shell.mode() & 0o7777, 0o750, "{mode:?}: {:o}", shell.mode());
    assert!(!w.join("fifo").exists());
    assert_eq!(
        std::fs::read_to_string(w.join("plain.txt")).unwrap(),
        "plain\n"
    );
}

/// `disk_mib` bounds the write layer in bytes and in inodes, in total with `/tmp`: after
/// 32 MiB in `/tmp`, 40 × 8 MiB under 64 MiB stops with ENOSPC by the fourth file, and so
/// does a flood of empty files; what fit is merged and the host grows by at most the
/// quota.
fn the_quota_holds_in_bytes_and_inodes(mode: Mode) {
    let tree = Tree::new();
    let script = r#"
import os
os.chdir('/workspace')
os.makedirs('big'); os.makedirs('many')
with open('/tmp/filler', 'wb') as f:
    f.write(b'x' * (32 << 20))
for i in range(40):
    try:
        with open(f'big/f{i}', 'wb') as f:
            f.write(b'x' * (8 << 20))
    except OSError as e:
        print('bytes stopped at', i, e.strerror)
        os.remove(f'big/f{i}')
        break
for i in range(20000):
    try:
        open(f'many/{i}', 'w').close()
    except OSError as e:
        print('inodes stopped at', i, e.strerror)
        break
"#;
    let (code, out, err) = run(mode, &tree, 64, &[], script);
    assert_eq!(code, 0, "{mode:?}: {out}\n{err}");
    let stopped = |what: &str| -> usize {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{what} stopped at ")))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{mode:?}: {what} never stopped: {out}\n{err}"))
    };
    assert!(out.contains("No space left on device"), "{mode:?}: {out}");
    assert!(
        stopped("bytes") <= 4,
        "{mode:?}: /tmp and the workspace share one budget: {out}"
    );
    assert!(stopped("inodes") < 16_384, "{mode:?}: {out}");
    assert!(
        err.contains("airlock: workspace: merged"),
        "{mode:?}: {err}"
    );
    let bytes: u64 = snapshot(&tree.work.join("big"))
        .values()
        .map(|v| v.3.len() as u64)
        .sum();
    assert!(bytes <= 64 << 20, "{mode:?}: {bytes} bytes landed");
    assert!(err.contains("airlock: workspace:"), "{mode:?}: {err}");
}

/// A session killed in the middle of writing (the launcher SIGKILLed) leaves the host
/// tree byte-identical; so does an agent killed by a signal (its writes may be half
/// done, so they are not offered for merging).
fn a_killed_session_leaves_the_host_as_it_was(mode: Mode) {
    use std::io::BufRead;
    let tree = Tree::new();
    let before = snapshot(&tree.work);
    let script = r#"
import os, sys, time
os.chdir('/workspace')
open('a.txt', 'w').write('half')
for i in range(100):
    open(f'part{i}', 'w').write('x' * 1000)
print('writing', flush=True)
time.sleep(120)
"#;
    let mut args = vec![
        "--mount".to_string(),
        format!("{}:/workspace:rw", tree.work.display()),
    ];
    args.push("--merge".into());
    args.push("exited".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = airlock_run(mode, &tree, 256, &args, script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "writing\n", "{mode:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        snapshot(&tree.work),
        before,
        "{mode:?}: a killed session changed the host"
    );

    let script = r#"
import os, signal
os.chdir('/workspace')
open('a.txt', 'w').write('half')
os.kill(os.getpid(), signal.SIGKILL)
"#;
    let (code, out, err) = run(mode, &tree, 256, &[], script);
    assert_eq!(code, 137, "{mode:?}: {out}\n{err}");
    assert!(err.contains("nothing merged"), "{mode:?}: {err}");
    assert_eq!(
        snapshot(&tree.work),
        before,
        "{mode:?}: a killed agent's writes landed"
    );
}

/// A merge that fails part-way is rolled back. While the agent waits, `z.txt`, which
/// it deleted, is made immutable on the host (`chattr +i`: not even root may rename
/// it), so the gate fails on it after `a.txt`, which sorts first, was already renamed
/// into place. The host tree ends byte-identical to how it was when the gate started,
/// and the summary names the path that failed.
fn a_merge_refused_in_the_middle_leaves_nothing(mode: Mode) {
    use std::io::{BufRead, Read};
    let tree = Tree::new();
    let z = tree.work.join("z.txt");
    std::fs::write(&z, "immutable\n").unwrap();
    chown_tree(&z, OWNER);
    let chattr = |flag: &str| Command::new("chattr").arg(flag).arg(&z).output().unwrap();
    let probe = chattr("+i");
    if !probe.status.success() {
        airlock_tests::skip(&format!(
            "chattr +i does not work on this filesystem: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
        return;
    }
    assert!(chattr("-i").status.success());
    let script = r#"
import os, time
os.chdir('/workspace')
open('a.txt', 'a').write('changed\n')
os.remove('z.txt')
print('ready', flush=True)
time.sleep(3)
"#;
    let mount = format!("{}:/workspace:rw", tree.work.display());
    let mut child = airlock_run(mode, &tree, 256, &["--mount", &mount], script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n", "{mode:?}");
    assert!(chattr("+i").status.success());
    let before = snapshot(&tree.work);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    let after = snapshot(&tree.work);
    assert!(chattr("-i").status.success());
    assert_eq!(status.code(), Some(0), "{mode:?}: {err}");
    assert!(
        err.contains("merge refused") && err.contains("z.txt"),
        "{mode:?}: {err}"
    );
    assert_eq!(
        after, before,
        "{mode:?}: a failed merge left part of itself"
    );
}

/// `--merge dry-run --json` reports what would change and changes nothing.
fn a_dry_run_reports_and_writes_nothing(mode: Mode) {
    let tree = Tree::new();
    let before = snapshot(&tree.work);
    let script = r#"
import os
os.chdir('/workspace')
open('new.txt', 'w').write('new\n')
os.remove('b.txt')
open('.envrc', 'w').write('x\n')
"#;
    let (code, out, err) = run(mode, &tree, 256, &["--merge", "dry-run", "--json"], script);
    assert_eq!(code, 0, "{mode:?}: {out}\n{err}");
    assert_eq!(snapshot(&tree.work), before, "{mode:?}");
    let json: serde_json::Value = serde_json::from_str(err.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{mode:?}: {e}: {err}"));
    let report = &json["merge"]["report"];
    assert_eq!(report["dry_run"], true, "{json}");
    let changes = report["changes"].to_string();
    assert!(
        changes.contains("new.txt") && changes.contains("b.txt"),
        "{json}"
    );
    assert!(report["refused"].to_string().contains(".envrc"), "{json}");
}

/// `rw-live` writes the host directly; set-id modes and FIFOs are still refused by the
/// sandbox. A root-owned live grant is refused (exit 4, naming the rule) unless the
/// rule opts in.
fn rw_live_writes_through_and_root_needs_an_opt_in(mode: Mode) {
    let tree = Tree::new();
    let live = tree.dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let script = r#"
import os
os.chdir('/workspace')
open('direct.txt', 'w').write('direct\n')
for how, call in [('chmod', lambda: os.chmod('direct.txt', 0o4755)),
                  ('mkfifo', lambda: os.mkfifo('fifo'))]:
    try:
        call(); print(how, 'ok')
    except OSError as e:
        print(how, 'errno', e.errno)
"#;
    let mount = |dir: &Path| {
        vec![
            "--mount".to_string(),
            format!("{}:/workspace:rw-live", dir.display()),
        ]
    };
    let root_owned = mount(&live);
    let args: Vec<&str> = root_owned.iter().map(String::as_str).collect();
    let out = airlock_run(mode, &tree, 256, &args, script)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{mode:?}: {err}");
    assert!(
        err.contains("live") && err.contains("root_owned"),
        "{mode:?}: {err}"
    );
    assert!(!live.join("direct.txt").exists());

    chown_tree(&live, OWNER);
    let owned = mount(&live);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let out = airlock_run(mode, &tree, 256, &args, script)
        .output()
        .unwrap();
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{mode:?}: {stdout}\n{err}");
    assert!(
        stdout.contains("chmod errno 1") && stdout.contains("mkfifo errno 13"),
        "{mode:?}: {stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(live.join("direct.txt")).unwrap(),
        "direct\n"
    );
    assert!(
        !err.contains("airlock: workspace:"),
        "{mode:?}: a live grant has nothing to merge: {err}"
    );

    let rootlive = tree.dir.path().join("rootlive");
    std::fs::create_dir(&rootlive).unwrap();
    let opted = mount(&rootlive);
    let args: Vec<&str> = opted.iter().map(String::as_str).collect();
    let out = airlock_run(mode, &tree, 256, &args, script)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{mode:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rootlive.join("direct.txt").exists());
}

macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        mod process {
            $(#[test] fn $name() { super::in_mode(super::Mode::Process, super::$name) })*
        }
        mod vm {
            $(#[test] fn $name() { super::in_mode(super::Mode::Vm, super::$name) })*
        }
    };
}

both_modes!(
    edit_and_commit_lands,
    planted_persistence_is_refused,
    setid_and_special_files_are_refused,
    the_quota_holds_in_bytes_and_inodes,
    a_killed_session_leaves_the_host_as_it_was,
    a_merge_refused_in_the_middle_leaves_nothing,
    a_dry_run_reports_and_writes_nothing,
    rw_live_writes_through_and_root_needs_an_opt_in,
);
