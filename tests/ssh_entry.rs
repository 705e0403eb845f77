//! `airlock ssh-entry` behind the real OpenSSH server and client on loopback: a
//! throwaway host key and client keys, an `sshd -D` this test runs with its own
//! configuration, `authorized_keys` lines that each map a key to a policy and a plan
//! (`command="airlock ssh-entry …",restrict`), real QEMU guests on the `minimal` image.
//!
//! - a login lands in the forced entrypoint, in the guest, with nothing of the SSH
//!   login's environment; the audit log names the SSH caller;
//! - a requested command does not run: refused, or — on a key whose line allows it —
//!   one argv element of the entrypoint, which the policy decides (and can deny);
//! - a subsystem (`ssh -s … sftp`, the real `sftp`) fails, defined or not;
//! - port forwarding (`-W`, `-L`, `-R`) and agent forwarding fail, stopped by sshd
//!   (by `sshd_config` alone and by the key's `restrict` alone), while the control
//!   with both missing shows each would have worked — and `ssh-entry` refuses a login
//!   that got a forwarded agent;
//! - the client going away (killed; with and without a tty) destroys the session: no
//!   QEMU, vhost-device-vsock or virtiofsd of it remains, and no VM directory;
//! - under process isolation too (root only): the login lands in the entrypoint and
//!   hanging up leaves no process of the session.
//!
//! Needs OpenSSH (`apt-get install --no-install-recommends openssh-server
//! openssh-client`; `make deps` installs them): without it the tests that need it are
//! skipped with a note, except under CI (`CI` set), where that is a failure.

#[path = "vm_support.rs"]
mod vm_support;

use airlock_launcher::image::{build, Profile};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
const SSH: &str = "/usr/bin/ssh";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
const SSH_AGENT: &str = "/usr/bin/ssh-agent";
const SFTP: &str = "/usr/bin/sftp";

/// How long a VM login may take to boot and answer (TCG on two busy cores).
const BOOT: Duration = Duration::from_secs(240);
/// How long the session may take to go once its client is gone.
const TEARDOWN: Duration = Duration::from_secs(60);

/// What must accompany `airlock ssh-entry` in `sshd_config` (README, "SSH: a forced
/// entrypoint"): no forwarding of any kind, no tunnels, no `~/.ssh/rc`, no pty.
const LOCKED_DOWN: &str = "\
DisableForwarding yes
AllowAgentForwarding no
AllowTcpForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
PermitUserRC no
PermitTTY no
";

/// sshd's defaults spelled out: everything the locked-down configuration refuses is
/// allowed (controls, and the tests of the key's `restrict` alone).
const PERMISSIVE: &str = "\
AllowAgentForwarding yes
AllowTcpForwarding yes
PermitTTY yes
";

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

fn airlock() -> PathBuf {
    let bin = bin_dir().join("airlock");
    vm_support::require_present(&[&bin]);
    bin
}

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cases/ssh")
        .join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether OpenSSH is here; a skip (with the reason) when not, a failure under CI.
fn openssh_present() -> bool {
    let missing: Vec<&str> = [SSHD, SSH, SSH_KEYGEN, SSH_AGENT, SFTP]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "OpenSSH is missing ({}): apt-get install --no-install-recommends openssh-server openssh-client",
        missing.join(", ")
    );
    assert!(std::env::var_os("CI").is_none(), "required under CI: {why}");
    airlock_tests::skip(&why);
    false
}

macro_rules! need_openssh {
    () => {
        if !openssh_present() {
            return;
        }
    };
}

/// The account the tests log in to: root (sshd then allows it only with a forced
/// command, `PermitRootLogin forced-commands-only`), else the user running them.
fn login_user() -> String {
    if airlock_tests::running_as_root() {
        return "root".into();
    }
    let out = Command::new("id").arg("-un").output().unwrap();
    text(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// One test's directory: SSH keys, the launcher's key and image, and the runtime,
/// cache, state and config directories `airlock ssh-entry` gets under sshd
/// (`SetEnv`).
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        for d in ["ssh", "run", "cache", "state", "config"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Scratch { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn vms(&self) -> PathBuf {
        self.path("run/airlock/vms")
    }

    fn vm_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.vms())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// The processes of this test's sessions that are still alive (zombies are
    /// gone): VMMs and helpers (their command lines name a VM directory here), and
    /// `airlock ssh-entry` itself (its line names this directory's audit log).
    fn leftovers(&self) -> Vec<String> {
        let vms = self.vms().display().to_string();
        let audit = self.audit_log().display().to_string();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = text(&cmd).replace('\0', " ");
            if cmd.contains(&vms) || (cmd.contains("ssh-entry") && cmd.contains(&audit)) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
        found
    }

    fn audit_log(&self) -> PathBuf {
        self.path("audit.jsonl")
    }

    /// A plan whose entrypoint says `ready` and waits, with a read-only share (so a
    /// virtiofsd runs beside the VMM).
    fn sleep_plan(&self) -> PathBuf {
        let work = self.path("work");
        let _ = std::fs::create_dir(&work);
        let plan = self.path("sleep-plan.toml");
        std::fs::write(
            &plan,
            format!(
                "command = [\"/bin/sh\", \"-c\", \"echo ready; while :; do sleep 1; done\", \"entry\"]\n\
                 [[mounts]]\nhost = \"{}\"\nguest = \"/work\"\nmode = \"ro\"\n\
                 [resources]\nmemory_mib = 128\n",
                work.display()
            ),
        )
        .unwrap();
        plan
    }

    /// A client key pair named `name`; the private key's path.
    fn client_key(&self, name: &str) -> PathBuf {
        let key = self.path(&format!("ssh/{name}"));
        if !key.exists() {
            let st = Command::new(SSH_KEYGEN)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&key)
                .status()
                .unwrap();
            assert!(st.success(), "ssh-keygen {name}");
        }
        key
    }

    /// The `authorized_keys` line for key `name`: `options` (e.g. `restrict`), then the
    /// forced command `airlock ssh-entry` with this test's policy, the plan `plan`,
    /// the VM pieces and `flags`.
    fn key_line(
        &self,
        name: &str,
        plan: &Path,
        vm: Option<&Vm>,
        flags: &[&str],
        options: &str,
    ) -> String {
        let pubkey = std::fs::read_to_string(self.client_key(name).with_extension("pub")).unwrap();
        let mut cmd = format!(
            "{} ssh-entry --policy {} --plan {} --audit-log {}",
            airlock().display(),
            case("policy.toml").display(),
            plan.display(),
            self.audit_log().display()
        );
        if let Some(vm) = vm {
            cmd += &format!(
                " --image {} --key {} --tools-dir {}",
                vm.image_json.display(),
                self.path("keys/airlock.key").display(),
                vm.tools_dir.display()
            );
        }
        for f in flags {
            cmd += &format!(" {f}");
        }
        assert!(!cmd.contains('"'), "a quote in {cmd}");
        let options = if options.is_empty() {
            String::new()
        } else {
            format!(",{options}")
        };
        format!("command=\"{cmd}\"{options} {}", pubkey.trim())
    }
}

/// The guest image and the VMM tools, built into a scratch directory (its launcher key
/// in `keys/`).
struct Vm {
    image_json: PathBuf,
    tools_dir: PathBuf,
    /// The kernel command line the image boots with (the guest's `/proc/cmdline`
    /// starts with it).
    cmdline: String,
}

impl Vm {
    fn build(s: &Scratch) -> Vm {
        let (inputs, tools) = vm_support::setup(s.dir.path());
        build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
        let image_json = inputs.out.join("minimal/image.json");
        let descriptor: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&image_json).unwrap()).unwrap();
        Vm {
            cmdline: descriptor["cmdline"].as_str().unwrap().to_string(),
            image_json,
            tools_dir: tools.vhost_device_vsock.parent().unwrap().to_path_buf(),
        }
    }
}

/// The real sshd in the foreground on a free loopback port, with the test's host key,
/// `authorized_keys` and configuration.
struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// Starts sshd with `lines` as `authorized_keys` and `config` after the base
    /// configuration; returns once it listens.
    fn start(s: &Scratch, lines: &[String], config: &str) -> Sshd {
        if airlock_tests::running_as_root() {
            // sshd run by root needs its privilege-separation directory, which the
            // package's service would make at boot (/run/sshd, root's, 0755).
            let _ = std::fs::create_dir("/run/sshd");
        }
        let host_key = s.path("ssh/host_ed25519");
        if !host_key.exists() {
            let st = Command::new(SSH_KEYGEN)
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key)
                .status()
                .unwrap();
            assert!(st.success(), "ssh-keygen (host key)");
        }
        let port = free_port();
        let keys = s.path(&format!("ssh/authorized_keys-{port}"));
        std::fs::write(&keys, lines.join("\n") + "\n").unwrap();
        let conf = s.path(&format!("ssh/sshd_config-{port}"));
        let env = ["run", "cache", "state", "config"]
            .iter()
            .zip([
                "XDG_RUNTIME_DIR",
                "XDG_CACHE_HOME",
                "XDG_STATE_HOME",
                "XDG_CONFIG_HOME",
            ])
            .map(|(d, var)| format!("{var}={}", s.path(d).display()))
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(
            &conf,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {}\n\
                 AuthorizedKeysFile {}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PidFile none\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin forced-commands-only\n\
                 LogLevel VERBOSE\n\
                 SetEnv {env}\n\
                 {config}",
                host_key.display(),
                keys.display()
            ),
        )
        .unwrap();
        let log = s.path(&format!("ssh/sshd-{port}.log"));
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&conf)
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let sshd = Sshd { child, port, log };
        let listening = format!("Server listening on 127.0.0.1 port {port}");
        assert!(
            wait_until(Duration::from_secs(10), || sshd.log().contains(&listening)),
            "sshd did not start listening: {}",
            sshd.log()
        );
        sshd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ssh` as key `key` with `opts`, to this server, asking for `remote` (nothing: a
    /// login). No agent unless the test gives one.
    fn ssh(&self, s: &Scratch, key: &str, opts: &[&str], remote: &[&str]) -> Command {
        let mut cmd = Command::new(SSH);
        cmd.args(["-F", "/dev/null", "-p", &self.port.to_string(), "-i"])
            .arg(s.client_key(key))
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=10",
            ])
            .args(opts)
            .arg(format!("{}@127.0.0.1", login_user()))
            .args(remote)
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("DISPLAY");
        cmd
    }
}

/// Runs `cmd` with `stdin`; its output.
fn output_with(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    out
}

/// Runs `cmd` (stdin closed) for at most `timeout`: how it ended (`None`: still
/// running, then killed) and its stderr.
fn run_within(mut cmd: Command, timeout: Duration) -> (Option<ExitStatus>, String) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (status, std::fs::read_to_string(err.path()).unwrap())
}

/// A loopback TCP listener that counts the connections it gets.
struct Canary {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Canary {
    fn start() -> Canary {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                count.fetch_add(1, Ordering::SeqCst);
                drop(conn);
            }
        });
        Canary { port, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A running `ssh-agent` (foreground) with its socket in the scratch directory.
struct Agent {
    child: Child,
    sock: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn start(s: &Scratch) -> Agent {
        let sock = s.path("ssh/agent.sock");
        let child = Command::new(SSH_AGENT)
            .args(["-D", "-a"])
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || sock.exists()),
            "ssh-agent made no socket"
        );
        Agent { child, sock }
    }
}

/// A login with `key` (`opts`, no command), its stdin `stdin`, stdout read line by
/// line on a thread of its own.
struct Login {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Login {
    fn start(s: &Scratch, sshd: &Sshd, key: &str, opts: &[&str], stdin: Stdio) -> Login {
        let mut cmd = sshd.ssh(s, key, opts, &[]);
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(s.path("ssh-client.err")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Login { child, lines }
    }

    /// Waits for a line that is `want` once trimmed (a terminal's `\r` included);
    /// the lines before it, trimmed. Panics with what came instead.
    fn wait_for(&mut self, s: &Scratch, sshd: &Sshd, want: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim() == want => return said,
                Ok(line) => said.push(line.trim().to_string()),
                Err(e) => {
                    let _ = self.child.kill();
                    panic!(
                        "the login never said `{want}` ({e}): {}\n{}\nsshd: {}",
                        said.join("\n"),
                        std::fs::read_to_string(s.path("ssh-client.err")).unwrap_or_default(),
                        sshd.log()
                    );
                }
            }
        }
    }

    /// Writes `bytes` to the login's stdin.
    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("a piped stdin");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the client to exit, which must be with the entrypoint's status 0, and
    /// for the session to leave no process or VM directory.
    fn ends_with_status_0_leaving_nothing(self, s: &Scratch) {
        assert_eq!(
            self.wait(TEARDOWN).and_then(|st| st.code()),
            Some(0),
            "the login did not end with the entrypoint's status"
        );
        assert!(
            wait_until(TEARDOWN, || s.leftovers().is_empty()
                && s.vm_dirs().is_empty()),
            "{:#?}",
            s.leftovers()
        );
    }

    /// Waits for the client to exit; its status.
    fn wait(mut self, within: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(within, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        let _ = self.child.kill();
        status
    }
}

/// A login with `key` (`opts`, no command) whose entrypoint prints `ready` and waits:
/// the ssh client (stdout piped; stdin `stdin`) once `ready` arrived.
fn login_until_ready(s: &Scratch, sshd: &Sshd, key: &str, opts: &[&str], stdin: Stdio) -> Child {
    let mut login = Login::start(s, sshd, key, opts, stdin);
    login.wait_for(s, sshd, "ready", BOOT);
    login.child
}

/// Kills the ssh client of a running login and waits for the session to go: no
/// process of it and no VM directory may remain.
fn hang_up_and_check_the_session_is_gone(s: &Scratch, sshd: &Sshd, mut client: Child) {
    let during = s.leftovers();
    for helper in [
        "qemu-system",
        "vhost-device-vsock",
        "virtiofsd",
        "ssh-entry",
    ] {
        assert!(
            during.iter().any(|p| p.contains(helper)),
            "no {helper} while the session runs: {during:#?}"
        );
    }
    assert_eq!(s.vm_dirs().len(), 1, "one VM directory while it runs");
    client.kill().unwrap();
    client.wait().unwrap();
    let gone = wait_until(TEARDOWN, || {
        s.leftovers().is_empty() && s.vm_dirs().is_empty()
    });
    assert!(
        gone,
        "the session outlived its client: processes {:#?}, VM directories {:?}\nsshd: {}",
        s.leftovers(),
        s.vm_dirs(),
        sshd.log()
    );
}

/// A login lands in the plan's entrypoint, in the guest (its kernel command line is
/// the image's, not the host's), with none of the SSH login's environment — not even
/// with `ssh -A` and a running agent — and with the client's stdin; the session is
/// gone afterwards, and the audit log names who asked over SSH.
#[test]
fn a_login_lands_in_the_forced_entrypoint_in_a_vm() {
    need_openssh!();
    let s = Scratch::new();
    let vm = Vm::build(&s);
    let _one = vm_support::ONE_VM.blocking_lock();
    let line = s.key_line(
        "agent",
        &case("entry-plan.toml"),
        Some(&vm),
        &[],
        "restrict",
    );
    let sshd = Sshd::start(&s, &[line], LOCKED_DOWN);
    let agent = Agent::start(&s);
    let mut cmd = sshd.ssh(&s, "agent", &["-T", "-A"], &[]);
    cmd.env("SSH_AUTH_SOCK", &agent.sock);
    let out = output_with(cmd, b"hello from the client\n");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let context = format!("stdout: {stdout}\nstderr: {stderr}\nsshd: {}", sshd.log());
    assert_eq!(out.status.code(), Some(0), "{context}");
    let cmdline = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kernel-cmdline: "))
        .unwrap_or_else(|| panic!("the entrypoint did not run: {context}"));
    assert!(
        cmdline.starts_with(&vm.cmdline),
        "not the guest's kernel: `{cmdline}` (the image boots `{}`)",
        vm.cmdline
    );
    let host = std::fs::read_to_string("/proc/cmdline").unwrap();
    assert_ne!(cmdline, host.trim(), "the entrypoint ran on the host");
    assert!(stdout.contains("argc: 0\n"), "{context}");
    assert!(
        stdout.contains("ssh-env: [unset] [unset] [unset]\n"),
        "the SSH login's environment reached the guest: {context}"
    );
    assert!(
        stdout.contains("stdin: [hello from the client]\n"),
        "{context}"
    );
    assert!(s.vm_dirs().is_empty(), "a VM directory outlived the login");
    assert!(s.leftovers().is_empty(), "{:#?}", s.leftovers());
    let audit = std::fs::read_to_string(s.audit_log()).unwrap();
    let caller = format!("ssh:{}@127.0.0.1", login_user());
    assert!(
        audit.contains(&caller),
        "the audit log does not name {caller}: {audit}"
    );
    if airlock_tests::running_as_root() {
        assert!(
            sshd.log()
                .contains("Root login accepted for forced command"),
            "{}",
            sshd.log()
        );
    }
}

/// A key whose line does not take a command: `ssh host 'cat /etc/shadow'` (or any
/// command) is refused before anything is read or booted, and does not run — on the
/// host (a marker it would make stays absent) or anywhere.
#[test]
fn a_requested_command_is_refused_and_nothing_runs() {
    need_openssh!();
    let s = Scratch::new();
    let line = s.key_line("agent", &case("entry-plan.toml"), None, &[], "restrict");
    let sshd = Sshd::start(&s, &[line], LOCKED_DOWN);
    let marker = s.path("ran-on-the-host");
    let touch = format!("touch {}", marker.display());
    for remote in [
        vec!["cat /etc/shadow"],
        vec![touch.as_str()],
        vec!["sh", "-c", "id"],
    ] {
        let out = output_with(sshd.ssh(&s, "agent", &["-T"], &remote), b"");
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(4), "{remote:?}: {stdout} {stderr}");
        assert!(stdout.is_empty(), "{remote:?}: {stdout}");
        assert!(
            stderr.contains(&format!(
                "takes no command; refused `{}`: nothing ran",
                remote.join(" ")
            )),
            "{remote:?}: {stderr}"
        );
    }
    assert!(!marker.exists(), "the requested command ran on the host");
    assert!(!s.vms().exists(), "a refused login made a VM directory");
}

/// A key whose line says `--original-command-as-argument`: the client's command — the
/// words `ssh` joins with spaces, quotes and `$(…)` included — is one argv element of
/// the entrypoint in the guest, never split or run; the policy decides it with the
/// command (`rule shadow` denies one naming the shadow file, before anything boots);
/// one with a control character or over the length cap is refused.
#[test]
fn a_requested_command_is_one_argument_when_the_key_allows_it() {
    need_openssh!();
    let s = Scratch::new();
    let vm = Vm::build(&s);
    let _one = vm_support::ONE_VM.blocking_lock();
    let line = s.key_line(
        "agent",
        &case("entry-plan.toml"),
        Some(&vm),
        &["--original-command-as-argument"],
        "restrict",
    );
    let sshd = Sshd::start(&s, &[line], LOCKED_DOWN);
    let marker = s.path("ran-somewhere");
    let touch = format!("touch {}", marker.display());
    let remote = [
        "fix",
        "\"the parser\";",
        &touch,
        "$(id)",
        "`id`",
        "|",
        "cat",
    ];
    let out = output_with(sshd.ssh(&s, "agent", &["-T"], &remote), b"");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let context = format!("stdout: {stdout}\nstderr: {stderr}\nsshd: {}", sshd.log());
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert!(stdout.contains("kernel-cmdline: "), "{context}");
    assert!(stdout.contains("argc: 1\n"), "{context}");
    let args: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("arg: "))
        .collect();
    assert_eq!(args, [format!("[{}]", remote.join(" "))], "{context}");
    assert!(!marker.exists(), "the requested command ran");
    assert!(s.vm_dirs().is_empty(), "a VM directory outlived the login");

    // The policy sees the argument: a deny rule on it refuses the plan, nothing boots.
    let audit_before = std::fs::read_to_string(s.audit_log()).unwrap().len();
    let out = output_with(
        sshd.ssh(&s, "agent", &["-T"], &["please read /etc/shadow"]),
        b"",
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(4), "{stdout} {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("rule `shadow`"), "{stderr}");
    assert!(stderr.contains("please read /etc/shadow"), "{stderr}");
    let audit = std::fs::read_to_string(s.audit_log()).unwrap();
    assert!(
        audit[audit_before..].contains("please read /etc/shadow"),
        "the audit log does not hold the denied argument: {audit}"
    );
    assert!(s.vm_dirs().is_empty());

    // Sanitized: control characters and overlong commands are refused as they are.
    let long = "x".repeat(airlock_launcher::ssh_entry::MAX_ORIGINAL_COMMAND_BYTES + 1);
    for (remote, says) in [
        ("clear\x1b[2J", "U+001B"),
        ("two\nlines", "U+000A"),
        ("tab\there", "U+0009"),
        (long.as_str(), "bytes long"),
    ] {
        let out = output_with(sshd.ssh(&s, "agent", &["-T"], &[remote]), b"");
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(4), "{remote:?}: {stdout} {stderr}");
        assert!(stdout.is_empty(), "{remote:?}: {stdout}");
        assert!(stderr.contains(says), "{remote:?}: {stderr}");
        assert!(!stderr.contains('\x1b'), "{remote:?}: {stderr:?}");
    }
    assert!(s.vm_dirs().is_empty());
}

/// `ssh -s … sftp` and the real `sftp` client fail: with no `Subsystem` defined sshd
/// refuses the request, and with one defined the forced command replaces it and
/// `ssh-entry` refuses what sshd reports as the original command.
#[test]
fn a_requested_subsystem_fails() {
    need_openssh!();
    let s = Scratch::new();
    let line = s.key_line("agent", &case("entry-plan.toml"), None, &[], "restrict");
    // (configuration, the client's exit status, what its stderr says, what sshd logs)
    for (config, code, says, logged) in [
        (
            LOCKED_DOWN.to_string(),
            None,
            "subsystem request failed",
            "subsystem request for sftp by user",
        ),
        // A subsystem's stderr is not relayed: ssh-entry's refusal shows as its status
        // (4: refused, nothing ran), the original command being the subsystem's.
        (
            format!("{LOCKED_DOWN}Subsystem sftp internal-sftp\n"),
            Some(4),
            "",
            "Starting session: forced-command (key-option)",
        ),
    ] {
        let sshd = Sshd::start(&s, std::slice::from_ref(&line), &config);
        let out = output_with(sshd.ssh(&s, "agent", &["-T", "-s"], &["sftp"]), b"");
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let context = format!("{config}: {stdout} {stderr}\nsshd: {}", sshd.log());
        assert_ne!(out.status.code(), Some(0), "{context}");
        if code.is_some() {
            assert_eq!(out.status.code(), code, "{context}");
        }
        assert!(stdout.is_empty(), "{context}");
        assert!(stderr.contains(says), "{context}");
        assert!(sshd.log().contains(logged), "{context}");
        let sftp = Command::new(SFTP)
            .args([
                "-F",
                "/dev/null",
                "-b",
                "-",
                "-P",
                &sshd.port.to_string(),
                "-i",
            ])
            .arg(s.client_key("agent"))
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .arg(format!("{}@127.0.0.1", login_user()))
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut sftp = sftp;
        let _ = sftp.stdin.take().unwrap().write_all(b"ls /\n");
        let out = sftp.wait_with_output().unwrap();
        assert!(
            !out.status.success(),
            "{config}: sftp worked: {}",
            text(&out.stdout)
        );
        assert!(!text(&out.stdout).contains("/etc"), "{}", text(&out.stdout));
    }
    assert!(!s.vms().exists(), "a subsystem request made a VM directory");
}

/// Port forwarding (`-W`, `-L`, `-R`) fails against sshd with the locked-down
/// configuration and a key without `restrict`, and against a permissive sshd with a
/// `restrict` key: a loopback canary hears nothing, and nothing listens on the remote
/// port. The control, permissive and without `restrict`, does reach the canary.
#[test]
fn port_forwarding_is_stopped_by_sshd() {
    need_openssh!();
    let s = Scratch::new();
    // Root may only log in with a forced command: every line has one.
    let open_line = s.key_line("agent", &case("entry-plan.toml"), None, &[], "");
    let restricted_line = s.key_line("agent", &case("entry-plan.toml"), None, &[], "restrict");

    // The control: nothing stops it, and -W reaches the canary.
    let control = Canary::start();
    {
        let sshd = Sshd::start(&s, std::slice::from_ref(&open_line), PERMISSIVE);
        let target = format!("127.0.0.1:{}", control.port);
        let (status, stderr) = run_within(
            sshd.ssh(&s, "agent", &["-W", &target], &[]),
            Duration::from_secs(20),
        );
        assert!(
            wait_until(Duration::from_secs(5), || control.accepted() > 0),
            "the control did not reach the canary ({status:?}: {stderr}); the test proves nothing\nsshd: {}",
            sshd.log()
        );
    }

    for (what, config, line) in [
        ("sshd_config", LOCKED_DOWN, &open_line),
        ("the key's restrict", PERMISSIVE, &restricted_line),
    ] {
        let canary = Canary::start();
        let sshd = Sshd::start(&s, std::slice::from_ref(line), config);
        let target = format!("127.0.0.1:{}", canary.port);

        // -W: a stdio forward.
        let (status, stderr) = run_within(
            sshd.ssh(&s, "agent", &["-W", &target], &[]),
            Duration::from_secs(20),
        );
        assert!(
            status.is_some_and(|st| !st.success()),
            "{what}: ssh -W did not fail: {status:?} {stderr}"
        );

        // -R: the server refuses to listen; the client gives up (ExitOnForwardFailure).
        let remote_port = free_port();
        let forward = format!("127.0.0.1:{remote_port}:{target}");
        let (status, stderr) = run_within(
            sshd.ssh(
                &s,
                "agent",
                &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &forward],
                &[],
            ),
            Duration::from_secs(20),
        );
        assert!(
            status.is_some_and(|st| !st.success()),
            "{what}: ssh -R did not fail: {status:?} {stderr}"
        );
        assert!(
            TcpStream::connect(("127.0.0.1", remote_port)).is_err(),
            "{what}: something listens on the remote-forwarded port"
        );

        // -L: the client listens; each connection through it is refused by sshd.
        let local_port = free_port();
        let forward = format!("127.0.0.1:{local_port}:{target}");
        let mut client = sshd
            .ssh(&s, "agent", &["-N", "-L", &forward], &[])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut conn = None;
        wait_until(Duration::from_secs(10), || {
            conn = TcpStream::connect(("127.0.0.1", local_port)).ok();
            conn.is_some()
        });
        let mut conn = conn.unwrap_or_else(|| panic!("{what}: ssh -L never listened"));
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = conn.write_all(b"knock knock\n");
        let mut buf = [0u8; 64];
        let read = conn.read(&mut buf);
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "{what}: data came back through -L: {read:?}"
        );
        let _ = client.kill();
        let _ = client.wait();

        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(canary.accepted(), 0, "{what}: the canary was reached");
        let log = sshd.log();
        assert!(
            log.contains("refused") || log.contains("prohibited") || log.contains("disabled"),
            "{what}: sshd did not log refusing: {log}"
        );
    }
    assert!(!s.vms().exists(), "forwarding made a VM directory");
}

/// `ssh -A` with a running agent: sshd's options stop the forwarding (the login gets
/// as far as `ssh-entry`'s next check, the refused command, not the agent refusal),
/// by `sshd_config` alone and by the key's `restrict` alone; when a misconfigured
/// sshd lets it through, `ssh-entry` refuses to start, naming `SSH_AUTH_SOCK`.
#[test]
fn agent_forwarding_is_stopped_by_sshd_and_refused_by_ssh_entry_if_it_gets_through() {
    need_openssh!();
    let s = Scratch::new();
    let agent = Agent::start(&s);
    let open_line = s.key_line("agent", &case("entry-plan.toml"), None, &[], "");
    let restricted_line = s.key_line("agent", &case("entry-plan.toml"), None, &[], "restrict");
    let login = |sshd: &Sshd| {
        let mut cmd = sshd.ssh(&s, "agent", &["-T", "-A"], &["probe"]);
        cmd.env("SSH_AUTH_SOCK", &agent.sock);
        output_with(cmd, b"")
    };
    for (what, config, line) in [
        ("sshd_config", LOCKED_DOWN, &open_line),
        ("the key's restrict", PERMISSIVE, &restricted_line),
    ] {
        let sshd = Sshd::start(&s, std::slice::from_ref(line), config);
        let out = login(&sshd);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{what}: {stderr}");
        assert!(
            stderr.contains("takes no command; refused `probe`"),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("SSH_AUTH_SOCK"), "{what}: {stderr}");
    }
    // Misconfigured: the agent gets through, and ssh-entry will not start.
    let sshd = Sshd::start(&s, &[open_line], PERMISSIVE);
    let out = login(&sshd);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("agent forwarding reached this login (SSH_AUTH_SOCK is set)"),
        "{stderr}"
    );
    assert!(!s.vms().exists(), "a refused login made a VM directory");
}

/// A login without a tty (`ssh -T`) streams its stdin into the entrypoint for as
/// long as the command runs, not read whole before the VM boots: each line is answered
/// before the next is sent (a login whose input were read to its end first would wait
/// here forever), and closing the client's stdin is the command's end of input.
#[test]
fn a_login_without_a_tty_streams_its_stdin_to_the_entrypoint() {
    need_openssh!();
    let s = Scratch::new();
    let vm = Vm::build(&s);
    let _one = vm_support::ONE_VM.blocking_lock();
    let line = s.key_line("agent", &case("echo-plan.toml"), Some(&vm), &[], "restrict");
    let sshd = Sshd::start(&s, &[line], LOCKED_DOWN);
    let mut login = Login::start(&s, &sshd, "agent", &["-T"], Stdio::piped());
    login.wait_for(&s, &sshd, "ready", BOOT);
    for word in ["one", "two", "three"] {
        login.send(format!("{word}\n").as_bytes());
        login.wait_for(&s, &sshd, &format!("got: {word}"), Duration::from_secs(60));
    }
    drop(login.child.stdin.take());
    login.wait_for(&s, &sshd, "stdin ended", Duration::from_secs(60));
    login.ends_with_status_0_leaving_nothing(&s);
}

/// A login with a tty (`ssh -tt`, a key with `restrict,pty`): the entrypoint gets a
/// terminal of its own in the guest (`/dev/pts/N`, the login's window size), and what
/// the client types reaches it through that terminal's line discipline.
#[test]
fn a_tty_login_gets_a_terminal_of_its_own_in_the_guest() {
    need_openssh!();
    let s = Scratch::new();
    let vm = Vm::build(&s);
    let _one = vm_support::ONE_VM.blocking_lock();
    let line = s.key_line(
        "agent",
        &case("tty-plan.toml"),
        Some(&vm),
        &[],
        "restrict,pty",
    );
    let config = LOCKED_DOWN.replace("PermitTTY no", "PermitTTY yes");
    let sshd = Sshd::start(&s, &[line], &config);
    let mut login = Login::start(&s, &sshd, "agent", &["-tt"], Stdio::piped());
    let before = login.wait_for(&s, &sshd, "ready", BOOT);
    let tty = before
        .iter()
        .find_map(|l| l.strip_prefix("tty: "))
        .unwrap_or_else(|| panic!("no tty line: {before:#?}"));
    assert!(
        tty.starts_with("/dev/pts/"),
        "the entrypoint's stdin is not a terminal of its own: `{tty}`"
    );
    let size = before
        .iter()
        .find_map(|l| l.strip_prefix("size: "))
        .unwrap_or_else(|| panic!("no size line: {before:#?}"));
    let dims: Vec<u32> = size.split(' ').filter_map(|n| n.parse().ok()).collect();
    assert!(
        dims.len() == 2 && dims.iter().all(|&n| n > 0),
        "the guest's terminal has no window size: `{size}`"
    );
    login.send(b"typed by the client\n");
    let echoed = login.wait_for(
        &s,
        &sshd,
        "got: typed by the client",
        Duration::from_secs(60),
    );
    assert!(
        echoed.iter().any(|l| l == "typed by the client"),
        "the guest's terminal did not echo what was typed: {echoed:#?}"
    );
    login.ends_with_status_0_leaving_nothing(&s);
}

/// The client killed mid-session (a login without a tty: sshd sends no signal, it
/// closes the session's pipes): `ssh-entry` notices, destroys the VM, and no QEMU,
/// vhost-device-vsock, virtiofsd or VM directory of it remains.
#[test]
fn disconnecting_destroys_the_session() {
    need_openssh!();
    let s = Scratch::new();
    let vm = Vm::build(&s);
    let _one = vm_support::ONE_VM.blocking_lock();
    let line = s.key_line("agent", &s.sleep_plan(), Some(&vm), &[], "restrict");
    let sshd = Sshd::start(&s, &[line], LOCKED_DOWN);
    let client = login_until_ready(&s, &sshd, "agent", &["-T"], Stdio::null());
    hang_up_and_check_the_session_is_gone(&s, &sshd, client);
}

/// The same with a tty (`restrict,pty` and `PermitTTY yes`, `ssh -tt`): the hang-up
/// is a SIGHUP, and the session goes just the same.
#[test]
fn hanging_up_a_tty_login_destroys_the_session() {
    need_openssh!();
    let s = Scratch::new();
    let vm = Vm::build(&s);
    let _one = vm_support::ONE_VM.blocking_lock();
    let line = s.key_line("agent", &s.sleep_plan(), Some(&vm), &[], "restrict,pty");
    let config = LOCKED_DOWN.replace("PermitTTY no", "PermitTTY yes");
    let sshd = Sshd::start(&s, &[line], &config);
    let client = login_until_ready(&s, &sshd, "agent", &["-tt"], Stdio::piped());
    hang_up_and_check_the_session_is_gone(&s, &sshd, client);
}

/// `ssh-entry` stopped with SIGTERM mid-session (an operator, or sshd's service
/// stopping): it destroys the session before it exits, and the client's login ends.
#[test]
fn sigterm_to_ssh_entry_destroys_the_session() {
    need_openssh!();
    let s = Scratch::new();
    let vm = Vm::build(&s);
    let _one = vm_support::ONE_VM.blocking_lock();
    let line = s.key_line("agent", &s.sleep_plan(), Some(&vm), &[], "restrict");
    let sshd = Sshd::start(&s, &[line], LOCKED_DOWN);
    let mut client = login_until_ready(&s, &sshd, "agent", &["-T"], Stdio::null());
    let entry = s
        .leftovers()
        .iter()
        .find(|p| p.contains("ssh-entry"))
        .and_then(|p| p.split(':').next()?.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("no ssh-entry process: {:#?}", s.leftovers()));
    // SAFETY: signals the ssh-entry this test's login started.
    assert_eq!(unsafe { libc::kill(entry, libc::SIGTERM) }, 0);
    let gone = wait_until(TEARDOWN, || {
        s.leftovers().is_empty() && s.vm_dirs().is_empty()
    });
    assert!(
        gone,
        "the session outlived SIGTERM: {:#?} {:?}",
        s.leftovers(),
        s.vm_dirs()
    );
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = client.try_wait().unwrap();
        status.is_some()
    });
    let _ = client.kill();
    assert_eq!(
        status.and_then(|st| st.code()),
        Some(128 + libc::SIGTERM),
        "the login did not end with ssh-entry's status"
    );
}

/// The pids of `pid`'s descendants.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // After the command's closing parenthesis: state, then the parent's pid.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if let Some(ppid) = rest.split(' ').nth(1).and_then(|x| x.parse().ok()) {
            parents.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// Alive: a live process (a zombie has exited).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// Process isolation (root only): the login lands in the entrypoint, and killing the
/// client takes `ssh-entry`, the enforcer and the agent's processes down.
#[test]
fn a_login_under_process_isolation_lands_in_the_entrypoint_and_goes_with_its_client() {
    need_openssh!();
    if !airlock_tests::running_as_root() {
        return airlock_tests::skip(
            "process isolation needs root (it maps uids and idmaps mounts)",
        );
    }
    for b in ["airlock-enforcer", "airlock-shim"] {
        vm_support::require_present(&[&bin_dir().join(b)]);
    }
    let s = Scratch::new();
    let entry = s.key_line(
        "entry",
        &case("entry-plan.toml"),
        None,
        &["--isolation", "process", "--original-command-as-argument"],
        "restrict",
    );
    let sleeper = s.key_line(
        "sleeper",
        &s.sleep_plan(),
        None,
        &["--isolation", "process"],
        "restrict",
    );
    let sshd = Sshd::start(&s, &[entry, sleeper], LOCKED_DOWN);

    let out = output_with(
        sshd.ssh(&s, "entry", &["-T"], &["one argument"]),
        b"from the client\n",
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let context = format!("stdout: {stdout}\nstderr: {stderr}\nsshd: {}", sshd.log());
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert!(
        stdout.contains("argc: 1\narg: [one argument]\n"),
        "{context}"
    );
    assert!(
        stdout.contains("ssh-env: [unset] [unset] [unset]\n"),
        "{context}"
    );
    assert!(stdout.contains("stdin: [from the client]\n"), "{context}");

    let client = login_until_ready(&s, &sshd, "sleeper", &["-T"], Stdio::null());
    let entry_pid = s
        .leftovers()
        .iter()
        .find_map(|p| p.split(':').next()?.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no ssh-entry process: {:#?}", s.leftovers()));
    let session: Vec<u32> = std::iter::once(entry_pid)
        .chain(descendants(entry_pid))
        .collect();
    let names: Vec<String> = session
        .iter()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default())
        .collect();
    assert!(
        names.iter().any(|n| n.trim() == "airlock-enforce"),
        "no enforcer under ssh-entry: {names:?}"
    );
    let mut client = client;
    client.kill().unwrap();
    client.wait().unwrap();
    let gone = wait_until(TEARDOWN, || session.iter().all(|&p| !alive(p)));
    let left: Vec<String> = session
        .iter()
        .filter(|&&p| alive(p))
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default())
        .collect();
    assert!(gone, "the session outlived its client: {left:?}");
}

/// A start `ssh-entry` refuses: its environment, its flags, its exit status and what
/// it says.
type Refused = (
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
    i32,
    &'static str,
);

/// Run by hand (no sshd): refused without `SSH_CONNECTION` unless
/// `--allow-without-ssh`; refused with a forwarded agent or X11 in its environment,
/// with a command the key does not take, and with `--on-ask prompt`. Nothing is read
/// or booted for any of them.
#[test]
fn ssh_entry_refuses_what_it_can_see_before_anything_runs() {
    let s = Scratch::new();
    let run = |env: &[(&str, &str)], flags: &[&str]| {
        let out = Command::new(airlock())
            .arg("ssh-entry")
            .arg("--policy")
            .arg(case("policy.toml"))
            .arg("--plan")
            .arg(case("entry-plan.toml"))
            .arg("--audit-log")
            .arg(s.audit_log())
            .args(flags)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("XDG_RUNTIME_DIR", s.path("run"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (out.status.code(), text(&out.stderr))
    };
    const SSHD_ENV: (&str, &str) = ("SSH_CONNECTION", "127.0.0.1 50000 127.0.0.1 22");
    let cases: &[Refused] = &[
        (&[], &[], 125, "SSH_CONNECTION is not set"),
        (
            &[SSHD_ENV, ("SSH_AUTH_SOCK", "/tmp/agent.sock")],
            &[],
            125,
            "SSH_AUTH_SOCK is set",
        ),
        (
            &[SSHD_ENV, ("DISPLAY", "localhost:10.0")],
            &[],
            125,
            "DISPLAY is set",
        ),
        (
            &[("SSH_ORIGINAL_COMMAND", "cat /etc/shadow")],
            &["--allow-without-ssh"],
            4,
            "takes no command; refused `cat /etc/shadow`",
        ),
        (
            &[SSHD_ENV, ("SSH_ORIGINAL_COMMAND", "a\u{202e}b")],
            &["--original-command-as-argument"],
            4,
            "U+202E",
        ),
        (
            &[SSHD_ENV],
            &["--on-ask", "prompt"],
            2,
            "belongs to the agent",
        ),
    ];
    for (env, flags, code, says) in cases {
        let (got, stderr) = run(env, flags);
        assert_eq!(got, Some(*code), "{env:?} {flags:?}: {stderr}");
        assert!(stderr.contains(says), "{env:?} {flags:?}: {stderr}");
    }
    assert!(!s.vms().exists(), "a refused start made a VM directory");
    assert!(
        !s.audit_log().exists(),
        "a refused start wrote the audit log"
    );
}
