//! The exec broker and shim, end to end over a real socket: decisions, exit status,
//! signals, environment stripping, forged requests and binary identity.

use airlock_enforcer::broker::{
    AskRequest, Asker, Broker, BrokerError, GrantedTool, Unconfined, EXIT_REFUSED,
};
use airlock_enforcer::shim::BROKER_SOCKET_ENV;
use airlock_proto::argv_pattern::ArgvPattern;
use airlock_proto::tool_rules::{ToolGrant, ToolMatch, ToolRule};
use airlock_proto::verdict::Verdict;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rule(id: &str, argv: &str, decision: Verdict) -> ToolRule {
    ToolRule {
        id: id.into(),
        matcher: ToolMatch::Argv(ArgvPattern::parse(argv).unwrap()),
        decision,
        reason: format!("reason of {id}"),
    }
}

fn grant(program: &str, rules: Vec<ToolRule>) -> ToolGrant {
    ToolGrant {
        program: program.into(),
        rules,
        default: Verdict::Deny,
        profile: Default::default(),
    }
}

/// Answers every ask with a fixed verdict, and keeps what it was asked.
struct FixedAsker(Verdict, Arc<std::sync::Mutex<Vec<AskRequest>>>);
impl Asker for FixedAsker {
    fn ask(&self, r: &AskRequest) -> (Verdict, String) {
        self.1.lock().unwrap().push(r.clone());
        (self.0, "test asker".into())
    }
}

struct Setup {
    dir: tempfile::TempDir,
    socket: PathBuf,
    bin: PathBuf,
    asked: Arc<std::sync::Mutex<Vec<AskRequest>>>,
}

/// The system's `name`, from `/usr/bin` or `/bin` before the rest of `PATH`.
fn which(name: &str) -> PathBuf {
    let system = ["/usr/bin".into(), "/bin".into()];
    airlock_launcher::path_lookup::find_program(name, &system)
        .unwrap_or_else(|| panic!("{name} not found"))
}

fn setup(asker: Verdict) -> Setup {
    setup_with(asker, |b| b)
}

/// [`setup`], with `configure` applied to the broker before it serves.
fn setup_with(asker: Verdict, configure: impl FnOnce(Broker) -> Broker) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tools = vec![
        GrantedTool::open(
            grant(
                "echo",
                vec![
                    rule("echo-secret", "secret **", Verdict::Deny),
                    rule("echo-ask", "please **", Verdict::Ask),
                    rule("echo-any", "**", Verdict::Allow),
                ],
            ),
            &which("echo"),
        )
        .unwrap(),
        GrantedTool::open(
            grant("sh", vec![rule("sh-c", "-c *", Verdict::Allow)]),
            &which("sh"),
        )
        .unwrap(),
        GrantedTool::open(
            grant("env", vec![rule("env-bare", "", Verdict::Allow)]),
            &which("env"),
        )
        .unwrap(),
    ];
    for name in ["echo", "sh", "env", "cat"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_airlock-shim"), bin.join(name)).unwrap();
    }
    let socket = dir.path().join("broker.sock");
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let broker = Arc::new(configure(Broker::new(
        tools,
        Arc::new(FixedAsker(asker, Arc::clone(&asked))),
        Arc::new(Unconfined),
        bin.to_str().unwrap(),
    )));
    broker.serve(&socket).unwrap();
    Setup {
        dir,
        socket,
        bin,
        asked,
    }
}

impl Setup {
    fn shim(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.env(BROKER_SOCKET_ENV, &self.socket);
        c
    }
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        self.shim(tool).args(args).output().unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn allowed_invocations_run_with_their_output_and_exit_status() {
    let s = setup(Verdict::Deny);
    let out = s.run("echo", &["hello", "world"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"hello world\n");
    let out = s.run("sh", &["-c", "echo to-stderr >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stderr(&out), "to-stderr\n");
}

#[test]
fn the_working_directory_passes_through() {
    let s = setup(Verdict::Deny);
    let work = std::fs::canonicalize(s.dir.path()).unwrap().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = s
        .shim("sh")
        .args(["-c", "pwd"])
        .current_dir(&work)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        work.to_str().unwrap()
    );
}

#[test]
fn denied_invocations_exit_126_naming_the_rule() {
    let s = setup(Verdict::Deny);
    let out = s.run("echo", &["secret", "key"]);
    assert_eq!(out.status.code(), Some(EXIT_REFUSED));
    assert!(out.stdout.is_empty(), "nothing of a denied tool may run");
    assert_eq!(
        stderr(&out),
        "airlock: denied `echo secret key` by rule `echo-secret`: reason of echo-secret\n"
    );
    // Default deny, for an argv no rule matches.
    let out = s.run("sh", &["-x", "script"]);
    assert_eq!(out.status.code(), Some(EXIT_REFUSED));
    assert!(
        stderr(&out).contains("by rule `default`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn tools_that_are_not_granted_are_refused() {
    let s = setup(Verdict::Deny);
    let out = s.run("cat", &["/etc/passwd"]);
    assert_eq!(out.status.code(), Some(EXIT_REFUSED));
    assert!(
        stderr(&out).contains("`cat` is not a granted tool"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn asks_go_to_the_asker_and_no_answer_is_no() {
    let denied = setup(Verdict::Deny);
    let out = denied.run("echo", &["please", "run"]);
    assert_eq!(out.status.code(), Some(EXIT_REFUSED));
    assert!(
        stderr(&out).contains("needs approval (rule `echo-ask`"),
        "{}",
        stderr(&out)
    );
    let approved = setup(Verdict::Allow);
    let out = approved.run("echo", &["please", "run"]);
    assert_eq!(out.stdout, b"please run\n");
    // The asker is told exactly what would run: the program, the full argv, the cwd
    // and the identity of the binary the broker holds open.
    let asked = approved.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    let a = &asked[0];
    assert_eq!(a.program, "echo");
    assert_eq!(a.argv, ["echo", "please", "run"]);
    assert_eq!(
        (a.rule_id.as_str(), a.reason.is_empty()),
        ("echo-ask", false)
    );
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(Path::new(&a.cwd), cwd, "{a:?}");
    use sha2::Digest;
    let want = hex::encode(sha2::Sha256::digest(std::fs::read(which("echo")).unwrap()));
    assert_eq!(a.binary_sha256, want);
    // What is allowed or denied outright is never asked.
    approved.run("echo", &["hello"]);
    denied.run("echo", &["secret", "x"]);
    assert_eq!(approved.asked.lock().unwrap().len(), 1);
    assert_eq!(denied.asked.lock().unwrap().len(), 1);
}

#[test]
fn the_default_asker_has_no_approval_channel() {
    use airlock_enforcer::broker::NoApprovalChannel;
    let (v, why) = NoApprovalChannel.ask(&AskRequest {
        program: "git".into(),
        argv: vec!["git".into(), "push".into()],
        cwd: "/".into(),
        binary_sha256: String::new(),
        rule_id: "git-push".into(),
        reason: "r".into(),
        reaches: vec![],
    });
    assert_eq!(v, Verdict::Deny);
    assert_eq!(why, "no approval channel");
}

#[test]
fn injection_variables_are_stripped_and_path_is_the_shim_dir() {
    let s = setup(Verdict::Deny);
    let out = s
        .shim("env")
        .env("LD_PRELOAD", "/tmp/evil.so")
        .env("LD_LIBRARY_PATH", "/tmp")
        .env("BASH_ENV", "/tmp/evil.sh")
        .env("GIT_SSH_COMMAND", "evil")
        .env("PYTHONSTARTUP", "/tmp/evil.py")
        .env("GLIBC_TUNABLES", "x")
        .env("LESSOPEN", "|/tmp/evil %s")
        .env("GIT_AUTHOR_NAME", "Agent")
        .env("LC_ALL", "C.UTF-8")
        .env("FOO", "bar")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let env = String::from_utf8_lossy(&out.stdout);
    for gone in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "BASH_ENV",
        "GIT_SSH_COMMAND",
        "PYTHONSTARTUP",
        "GLIBC_TUNABLES",
        "LESSOPEN",
        "FOO",
        BROKER_SOCKET_ENV,
    ] {
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{gone}="))),
            "{gone} survived:\n{env}"
        );
    }
    assert!(env.contains("LC_ALL=C.UTF-8\n"), "{env}");
    assert!(env.contains("GIT_AUTHOR_NAME=Agent\n"), "{env}");
    assert!(
        env.contains(&format!("PATH={}\n", s.bin.display())),
        "{env}"
    );
}

/// Starts `sh -c "SETUP; echo $$ > PIDFILE; SCRIPT"` through the shim and waits until
/// the tool wrote its pid (so it is past SETUP, e.g. a trap).
fn start_tool(s: &Setup, setup: &str, script: &str) -> (std::process::Child, i32) {
    let pidfile = s.dir.path().join(format!("tool-{}.pid", script.len()));
    let script = format!("{setup} echo $$ > {}; {script}", pidfile.display());
    // The caller waits for the child; clippy cannot see through the return.
    #[allow(clippy::zombie_processes)]
    let child = s.shim("sh").args(["-c", &script]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(pid) = std::fs::read_to_string(&pidfile)
            .unwrap_or_default()
            .trim()
            .parse()
        {
            // Give the shell a moment to reach the command after writing its pid.
            std::thread::sleep(Duration::from_millis(100));
            return (child, pid);
        }
        assert!(Instant::now() < deadline, "tool never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_signal_to_the_shim_reaches_the_tool() {
    let s = setup(Verdict::Deny);
    let marker = s.dir.path().join("got-term");
    // Absolute path: the tool's PATH is the shim directory, which has no `sleep`.
    let trap = format!("trap 'echo yes > {}; exit 3' TERM;", marker.display());
    let script = format!("{} 30 & wait", which("sleep").display());
    let (mut child, _) = start_tool(&s, &trap, &script);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "the tool's trap ran and its exit code came back: {status:?}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "yes\n");
}

#[test]
fn a_tool_killed_by_a_signal_kills_the_shim_with_the_same_signal() {
    let s = setup(Verdict::Deny);
    let (mut child, tool_pid) =
        start_tool(&s, "", &format!("exec {} 30", which("sleep").display()));
    // SAFETY: signalling the tool directly, as another process might.
    unsafe { libc::kill(tool_pid, libc::SIGUSR1) };
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGUSR1), "{status:?}");
}

#[test]
fn killing_the_shim_kills_the_tool() {
    let s = setup(Verdict::Deny);
    let (mut child, tool_pid) =
        start_tool(&s, "", &format!("exec {} 30", which("sleep").display()));
    let stat = std::fs::read_to_string(format!("/proc/{tool_pid}/stat")).unwrap_or_default();
    assert!(
        stat.contains("(sleep)") && !stat.contains(") Z "),
        "tool not running before the kill: {stat:?}"
    );
    child.kill().unwrap(); // SIGKILL: the shim cannot forward anything
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{tool_pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tool {tool_pid} outlived its shim"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Talks to the broker without a shim: what a hostile agent process could do.
fn forged(socket_path: &Path, payload: &[u8], fds: &[i32]) -> String {
    use nix::sys::socket::{
        connect, recvmsg, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag,
        SockType, UnixAddr,
    };
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    connect(sock.as_raw_fd(), &UnixAddr::new(socket_path).unwrap()).unwrap();
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &[IoSlice::new(payload)],
        cmsgs,
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let n = recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, None, MsgFlags::empty())
        .unwrap()
        .bytes;
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn forged_requests_get_a_refusal_not_a_hang() {
    let s = setup(Verdict::Allow);
    let err_path = s.dir.path().join("stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    use std::os::fd::AsRawFd;
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let cwd = std::fs::File::open(s.dir.path()).unwrap();
    let four = [
        cwd.as_raw_fd(),
        devnull.as_raw_fd(),
        devnull.as_raw_fd(),
        err.as_raw_fd(),
    ];
    // Garbage.
    let reply = forged(&s.socket, b"{not json", &four);
    assert_eq!(reply, r#"{"type":"refused","code":126}"#);
    assert!(std::fs::read_to_string(&err_path)
        .unwrap()
        .contains("malformed request"));
    // An extra field (e.g. trying to pick the binary).
    let reply = forged(
        &s.socket,
        br#"{"argv":["echo","x"],"env":[],"binary":"/bin/sh"}"#,
        &four,
    );
    assert_eq!(reply, r#"{"type":"refused","code":126}"#);
    // No descriptors.
    let reply = forged(&s.socket, br#"{"argv":["echo","x"],"env":[]}"#, &[]);
    assert_eq!(reply, r#"{"type":"refused","code":126}"#);
    // A path in argv[0] does not choose the binary: `/tmp/evil/echo` runs the granted echo.
    let out_path = s.dir.path().join("stdout");
    let out = std::fs::File::create(&out_path).unwrap();
    let four = [
        cwd.as_raw_fd(),
        devnull.as_raw_fd(),
        out.as_raw_fd(),
        err.as_raw_fd(),
    ];
    let reply = forged(
        &s.socket,
        br#"{"argv":["/tmp/evil/echo","from","forged"],"env":[]}"#,
        &four,
    );
    assert_eq!(reply, r#"{"type":"exited","code":0}"#);
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "from forged\n");
}

#[test]
fn the_binary_is_the_one_opened_at_grant_time() {
    let dir = tempfile::tempdir().unwrap();
    let tool_path = dir.path().join("echo");
    std::fs::copy(which("echo"), &tool_path).unwrap();
    let tool = GrantedTool::open(
        grant("echo", vec![rule("any", "**", Verdict::Allow)]),
        &tool_path,
    )
    .unwrap();
    // Swap the file at that path for a script after the grant.
    let swapped = dir.path().join("swapped");
    std::fs::write(&swapped, "#!/bin/sh\necho SWAPPED\n").unwrap();
    std::fs::set_permissions(
        &swapped,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(&swapped, &tool_path).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_airlock-shim"), bin.join("echo")).unwrap();
    let socket = dir.path().join("b.sock");
    Arc::new(Broker::new(
        vec![tool],
        Arc::new(FixedAsker(Verdict::Deny, Default::default())),
        Arc::new(Unconfined),
        "/nonexistent",
    ))
    .serve(&socket)
    .unwrap();
    let out = Command::new(bin.join("echo"))
        .arg("original")
        .env(BROKER_SOCKET_ENV, &socket)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "original\n",
        "{}",
        stderr(&out)
    );
}

#[test]
fn tools_that_cannot_be_trusted_are_refused_at_grant_time() {
    let dir = tempfile::tempdir().unwrap();
    let g = || grant("x", vec![]);
    let err = GrantedTool::open(g(), &dir.path().join("missing")).unwrap_err();
    assert!(
        matches!(err, BrokerError::Binary { .. }) && err.to_string().contains("missing"),
        "{err}"
    );
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "x").unwrap();
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    assert!(GrantedTool::open(g(), &plain)
        .unwrap_err()
        .to_string()
        .contains("not executable"));
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    assert!(GrantedTool::open(g(), &plain)
        .unwrap_err()
        .to_string()
        .contains("writable by group or others"));
    assert!(GrantedTool::open(g(), dir.path())
        .unwrap_err()
        .to_string()
        .contains("not a regular file"));
}

#[test]
fn the_shim_refuses_to_run_as_itself() {
    let out = Command::new(env!("CARGO_BIN_EXE_airlock-shim"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EXIT_REFUSED));
    assert!(
        stderr(&out).contains("installed under a tool's name"),
        "{}",
        stderr(&out)
    );
}

/// A broker whose tools run under the per-tool sandbox: Landlock grants the tool's
/// binary, the loader, the libraries and one read-only directory; seccomp is on.
fn sandboxed_cat(dir: &Path, readable: &Path) -> (PathBuf, PathBuf) {
    use airlock_enforcer::landlock::LandlockPolicy;
    use airlock_enforcer::sandbox::Sandbox;
    let cat = which("cat");
    let read_only: Vec<PathBuf> = ["/lib", "/lib64", "/usr/lib", "/etc/ld.so.cache"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .chain([readable.to_path_buf()])
        .collect();
    let sandbox = Sandbox {
        landlock: Some(LandlockPolicy {
            read_only,
            executable: vec![cat.clone(), PathBuf::from("/lib64/ld-linux-x86-64.so.2")],
            ..Default::default()
        }),
        seccomp: true,
        ..Default::default()
    };
    let tool = GrantedTool::open(
        grant("cat", vec![rule("cat-any", "**", Verdict::Allow)]),
        &cat,
    )
    .unwrap();
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let _ = std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_airlock-shim"), bin.join("cat"));
    let socket = dir.join("sandboxed.sock");
    Arc::new(Broker::new(
        vec![tool],
        Arc::new(FixedAsker(Verdict::Deny, Default::default())),
        Arc::new(sandbox),
        "/nonexistent",
    ))
    .serve(&socket)
    .unwrap();
    (bin.join("cat"), socket)
}

#[test]
fn brokered_tools_run_inside_their_own_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let (open, secret) = (root.join("open"), root.join("secret"));
    std::fs::create_dir(&open).unwrap();
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(open.join("readme"), "public\n").unwrap();
    std::fs::write(secret.join("key"), "hunter2\n").unwrap();
    let (cat, socket) = sandboxed_cat(&root, &open);
    let run = |file: &Path| {
        Command::new(&cat)
            .arg(file)
            .env(BROKER_SOCKET_ENV, &socket)
            .output()
            .unwrap()
    };
    let out = run(&open.join("readme"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "public\n",
        "{}",
        stderr(&out)
    );
    // The broker granted `cat`, but the tool's sandbox does not grant the secret.
    let out = run(&secret.join("key"));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    // Neighbour: the same read through an unconfined broker succeeds.
    let s = setup(Verdict::Deny);
    let out = s.run(
        "sh",
        &[
            "-c",
            &format!("read l < {}; echo $l", secret.join("key").display()),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hunter2\n",
        "{}",
        stderr(&out)
    );
}

/// Never answers.
struct SilentAsker;
impl Asker for SilentAsker {
    fn ask(&self, _: &AskRequest) -> (Verdict, String) {
        std::thread::sleep(Duration::from_secs(3600));
        (Verdict::Allow, "too late".into())
    }
}

#[test]
fn an_unanswered_ask_is_a_deny_at_the_deadline_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let tool = GrantedTool::open(
        grant("echo", vec![rule("echo-ask", "**", Verdict::Ask)]),
        &which("echo"),
    )
    .unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_airlock-shim"), bin.join("echo")).unwrap();
    let socket = dir.path().join("b.sock");
    Arc::new(
        Broker::new(
            vec![tool],
            Arc::new(SilentAsker),
            Arc::new(Unconfined),
            "/nonexistent",
        )
        .with_ask_timeout(Duration::from_millis(300)),
    )
    .serve(&socket)
    .unwrap();
    let started = Instant::now();
    let out = Command::new(bin.join("echo"))
        .arg("hi")
        .env(BROKER_SOCKET_ENV, &socket)
        .output()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the denial must not hang"
    );
    assert_eq!(out.status.code(), Some(EXIT_REFUSED));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("no answer within 0.3 s"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_terminal_passes_through_to_the_tool() {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let s = setup(Verdict::Deny);
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into live locals; name, termios and winsize
    // are optional and passed as null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two new descriptors we own.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    let io = |f: &std::os::fd::OwnedFd| std::process::Stdio::from(f.try_clone().unwrap());
    let mut child = s
        .shim("sh")
        .args(["-c", "test -t 0 && test -t 1 && test -t 2 && echo on-a-tty"])
        .stdin(io(&slave))
        .stdout(io(&slave))
        .stderr(io(&slave))
        .spawn()
        .unwrap();
    drop(slave);
    let status = child.wait().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    let mut master = master;
    // The slave is closed once the tool and the shim are gone: read until EIO.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert!(status.success(), "{}", String::from_utf8_lossy(&out));
    assert!(
        String::from_utf8_lossy(&out).contains("on-a-tty"),
        "the tool did not get the terminal: {:?}",
        String::from_utf8_lossy(&out)
    );
}

/// A connection to the broker that sends nothing: what a hostile agent holds to tie up
/// the broker.
fn silent_connection(socket_path: &Path) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    connect(sock.as_raw_fd(), &UnixAddr::new(socket_path).unwrap()).unwrap();
    sock
}

/// Waits until the broker closes `conn` (a receive returns end of file); how long.
fn closed_by_the_broker_within(conn: &std::os::fd::OwnedFd, limit: Duration) -> Option<Duration> {
    use std::os::fd::AsRawFd;
    let t = Instant::now();
    let mut p = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, limit.as_millis() as i32) };
    if n != 1 {
        return None;
    }
    let mut buf = [0u8; 64];
    // SAFETY: recv into a live local buffer.
    let got = unsafe { libc::recv(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    (got == 0).then(|| t.elapsed())
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_request_deadline() {
    let s = setup_with(Verdict::Allow, |b| {
        b.with_connection_limits(Duration::from_millis(300), 8)
    });
    let silent = silent_connection(&s.socket);
    let took = closed_by_the_broker_within(&silent, Duration::from_secs(10))
        .expect("the broker closed the silent connection");
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the deadline"
    );
    // A tool that runs longer than the deadline is not cut off: the deadline is for
    // the request only.
    let out = s.run("sh", &["-c", "sleep 1; echo done"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
}

#[test]
fn calls_over_the_connection_cap_are_refused_readably_and_slots_come_back() {
    let s = setup_with(Verdict::Allow, |b| {
        b.with_connection_limits(Duration::from_secs(30), 2)
    });
    let held = [silent_connection(&s.socket), silent_connection(&s.socket)];
    // The broker takes the held connections' slots as it accepts them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = s.run("echo", &["over", "the", "cap"]);
        if out.status.code() == Some(EXIT_REFUSED) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(out.status.code(), Some(EXIT_REFUSED), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already serving 2 calls (its cap)"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty(), "the tool did not run");
    // Hanging up gives the slots back: the same call then runs.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = s.run("echo", &["under", "the", "cap"]);
        if out.status.code() == Some(0) {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "under the cap\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots never came back: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_broker_connection_leaks_into_a_tool() {
    let s = setup(Verdict::Allow);
    // Another caller's connection is open while the tool runs.
    let _other = silent_connection(&s.socket);
    let stop = s.dir.path().join("stop");
    let (mut child, tool) = start_tool(
        &s,
        "",
        &format!("while [ ! -e {} ]; do :; done", stop.display()),
    );
    // The tool's descriptors, read from outside while it runs.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{tool}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    std::fs::write(&stop, "").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        fds.iter().any(|f| f.starts_with("0 -> ")),
        "read the tool's fds: {fds:?}"
    );
    assert!(
        !fds.iter().any(|f| f.contains("socket:")),
        "a socket reached the tool (its own broker connection or another caller's): {fds:?}"
    );
}

/// A stand-in for git that does what a raced configuration could make git do: the
/// broker's git handling keys on the program name, so `git` here is bash running the
/// script named by the subcommand from its working directory (`config` for the
/// preflight, `stash` for the call). A `stash` call may start git's own helpers; its
/// exec supervisor lets through exactly `<exec-path>/git` named `git`, and refuses
/// the same binary named `git-push` (git would run `push`) and any other program.
#[test]
fn a_git_call_that_runs_helpers_runs_exactly_them() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let exec_path = dir.path().join("git-core");
    let work = dir.path().join("work");
    for d in [&bin, &exec_path, &work] {
        std::fs::create_dir(d).unwrap();
    }
    // The exec-path's `git`: an echo, so what runs shows in the output.
    std::fs::copy(which("echo"), exec_path.join("git")).unwrap();
    std::fs::write(work.join("config"), "exit 0\n").unwrap();
    let helper = exec_path.join("git").display().to_string();
    std::fs::write(
        work.join("stash"),
        format!(
            "(exec -a git {helper} helper-ran)\n(exec -a git-push {helper} dashed-ran)\n(exec {} other-ran)\nexit 0\n",
            which("echo").display()
        ),
    )
    .unwrap();
    let mut git = grant("git", vec![rule("git-any", "**", Verdict::Allow)]);
    git.profile = airlock_proto::tool_rules::ToolProfile {
        name: "git".into(),
        executes: vec![helper.clone()],
        reads: vec![],
    };
    let tools = vec![GrantedTool::open(git, &which("bash")).unwrap()];
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_airlock-shim"), bin.join("git")).unwrap();
    let socket = dir.path().join("broker.sock");
    Arc::new(Broker::new(
        tools,
        Arc::new(FixedAsker(Verdict::Deny, Default::default())),
        Arc::new(Unconfined),
        bin.to_str().unwrap(),
    ))
    .serve(&socket)
    .unwrap();
    let git_in_work = |sub: &str| {
        Command::new(bin.join("git"))
            .arg(sub)
            .current_dir(&work)
            .env(BROKER_SOCKET_ENV, &socket)
            .output()
            .unwrap()
    };
    let out = git_in_work("stash");
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(stdout, "helper-ran\n", "only the helper ran; stderr: {err}");
    for refused in [helper.as_str(), &which("echo").display().to_string()] {
        assert!(
            err.contains(&format!(
                "refused by profile `git`: `git stash` runs no programs but git's own helpers; it tried to run `{refused}`"
            )),
            "{refused} refused and reported: {err}"
        );
    }
    // The same call as one that needs no helper (`status`) runs none at all.
    std::fs::copy(work.join("stash"), work.join("status")).unwrap();
    let out = git_in_work("status");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`git status` runs no programs;"),
        "{}",
        stderr(&out)
    );
    // A preflight that never ends (a configuration file made a FIFO) is a readable
    // refusal after its deadline, not a hang.
    nix::unistd::mkfifo(
        &work.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::fs::write(work.join("config"), "read -r line < fifo\n").unwrap();
    let t = Instant::now();
    let out = git_in_work("status");
    assert_eq!(out.status.code(), Some(EXIT_REFUSED), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("did not list its configuration within 10 s"),
        "{}",
        stderr(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

/// Approves every ask, running `meanwhile` first (what the agent does while the person
/// reads), and keeps what it was asked.
struct ApproverWhile<F>(F, Arc<std::sync::Mutex<Vec<AskRequest>>>);
impl<F: Fn() + Send + Sync> Asker for ApproverWhile<F> {
    fn ask(&self, r: &AskRequest) -> (Verdict, String) {
        self.1.lock().unwrap().push(r.clone());
        (self.0)();
        (Verdict::Allow, "test approver".into())
    }
}

/// `git push origin` does not say where `origin` is, and the agent can edit it: the ask
/// carries the configuration that picks the destination, and a push whose destination
/// changed while it waited for approval does not run.
#[test]
fn a_push_is_asked_with_its_destination_and_held_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, work) = (dir.path().join("bin"), dir.path().join("work"));
    for d in [&bin, &work] {
        std::fs::create_dir(d).unwrap();
    }
    // "git" is bash running the script named by the subcommand: `config` lists the
    // remote's URL from the file `url`, as `git config --list -z --show-scope` would.
    std::fs::write(
        work.join("config"),
        "printf 'local\\0remote.origin.url\\n%s\\0' \"$(<url)\"\n",
    )
    .unwrap();
    std::fs::write(work.join("push"), "echo pushed\n").unwrap();
    std::fs::write(work.join("url"), "https://example.org/r.git").unwrap();
    // `rev-parse --git-path remotes --git-path branches`, as git prints them; `git
    // init` makes an empty `branches`.
    std::fs::write(
        work.join("rev-parse"),
        "printf '.git/config\\n.git/config.worktree\\n.git/remotes\\n.git/branches\\nrefs/heads/main\\n'\n",
    )
    .unwrap();
    std::fs::create_dir_all(work.join(".git/branches")).unwrap();
    std::fs::write(work.join(".git/config"), "").unwrap();
    let git = grant("git", vec![rule("git-push", "push **", Verdict::Ask)]);
    let tools = vec![GrantedTool::open(git, &which("bash")).unwrap()];
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_airlock-shim"), bin.join("git")).unwrap();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let url_file = work.join("url");
    let socket = dir.path().join("broker.sock");
    Arc::new(Broker::new(
        tools,
        Arc::new(ApproverWhile(
            move || {
                // The second ask's "person" reads while the agent repoints origin.
                if std::fs::read_to_string(&url_file)
                    .unwrap()
                    .contains("second")
                {
                    std::fs::write(&url_file, "https://evil.test/copy.git").unwrap();
                }
            },
            Arc::clone(&asked),
        )),
        Arc::new(Unconfined),
        bin.to_str().unwrap(),
    ))
    .serve(&socket)
    .unwrap();
    let push = || {
        Command::new(bin.join("git"))
            .args(["push", "origin"])
            .current_dir(&work)
            .env(BROKER_SOCKET_ENV, &socket)
            .output()
            .unwrap()
    };
    let out = push();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pushed\n",
        "{}",
        stderr(&out)
    );
    assert_eq!(
        asked.lock().unwrap()[0].reaches,
        [
            "remote.origin.url = https://example.org/r.git",
            "HEAD = refs/heads/main"
        ]
    );

    std::fs::write(work.join("url"), "https://example.org/second.git").unwrap();
    let out = push();
    assert_eq!(out.status.code(), Some(EXIT_REFUSED), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "the push did not run"
    );
    assert!(
        stderr(&out).contains(
            "`git push origin`: where it goes changed while it waited for approval (approved: remote.origin.url = https://example.org/second.git, HEAD = refs/heads/main; now: remote.origin.url = https://evil.test/copy.git, HEAD = refs/heads/main)"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        asked.lock().unwrap()[1].reaches,
        [
            "remote.origin.url = https://example.org/second.git",
            "HEAD = refs/heads/main"
        ]
    );

    // A legacy remote file names a URL and push refspecs the configuration does not
    // show: the push is refused before anyone is asked.
    std::fs::create_dir_all(work.join(".git/remotes")).unwrap();
    std::fs::write(
        work.join(".git/remotes/origin2"),
        "URL: https://evil.test/copy.git\nPush: +refs/heads/*:refs/heads/*\n",
    )
    .unwrap();
    let out = push();
    assert_eq!(out.status.code(), Some(EXIT_REFUSED), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`.git/remotes` holds git's legacy remote files (origin2)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(asked.lock().unwrap().len(), 2, "nobody was asked");
    std::fs::remove_dir_all(work.join(".git/remotes")).unwrap();

    // One that cannot be examined (a symlink loop) refuses too: unchecked is not empty.
    std::os::unix::fs::symlink("remotes", work.join(".git/remotes")).unwrap();
    let out = push();
    assert_eq!(out.status.code(), Some(EXIT_REFUSED), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`.git/remotes` cannot be examined"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(work.join(".git/remotes")).unwrap();

    // A configuration file that is a symlink (to a FIFO that serves the check one text
    // and the push another) is refused before anyone is asked.
    std::fs::remove_file(work.join(".git/config")).unwrap();
    nix::unistd::mkfifo(
        &dir.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink(dir.path().join("fifo"), work.join(".git/config")).unwrap();
    let out = push();
    assert_eq!(out.status.code(), Some(EXIT_REFUSED), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`.git/config` is a symlink; git reads it again when the push runs"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(work.join(".git/config")).unwrap();
    nix::unistd::mkfifo(
        &work.join(".git/config"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let out = push();
    assert!(
        stderr(&out).contains("`.git/config` is a FIFO"),
        "{}",
        stderr(&out)
    );
    assert_eq!(asked.lock().unwrap().len(), 2, "nobody was asked");
}

/// Records nothing: the host is unreachable or refuses.
struct UnrecordedAsker;
impl Asker for UnrecordedAsker {
    fn ask(&self, _: &AskRequest) -> (Verdict, String) {
        (Verdict::Allow, "test asker".into())
    }
    fn record(&self, _: &airlock_enforcer::broker::DecisionReport) -> Result<(), String> {
        Err("the audit log cannot be written".into())
    }
}

#[test]
fn an_allowed_call_the_host_cannot_record_does_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let tool = GrantedTool::open(
        grant(
            "echo",
            vec![
                rule("echo-ask", "please **", Verdict::Ask),
                rule("any", "**", Verdict::Allow),
            ],
        ),
        &which("echo"),
    )
    .unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_airlock-shim"), bin.join("echo")).unwrap();
    let socket = dir.path().join("b.sock");
    Arc::new(Broker::new(
        vec![tool],
        Arc::new(UnrecordedAsker),
        Arc::new(Unconfined),
        "/nonexistent",
    ))
    .serve(&socket)
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(bin.join("echo"))
            .env(BROKER_SOCKET_ENV, &socket)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["hello"]);
    assert_eq!(out.status.code(), Some(EXIT_REFUSED));
    assert!(out.stdout.is_empty(), "the tool ran");
    assert!(
        stderr(&out)
            .contains("is allowed by rule `any` but was not run: the audit log cannot be written"),
        "{}",
        stderr(&out)
    );
    // The neighbour: an ask, recorded by the host itself when it answers, runs.
    let out = run(&["please", "run"]);
    assert_eq!(out.stdout, b"please run\n", "{}", stderr(&out));
}

/// A tool whose binary answers to other names (busybox's `find`) starts only brokered
/// calls: its profile lets it execute its own inode, which under the name `sh` is a
/// shell. The same tool's own work goes on.
#[test]
fn a_multi_call_tool_cannot_run_its_binary_under_another_name() {
    let busybox = std::fs::canonicalize("/bin/busybox")
        .expect("busybox is installed (make deps installs busybox-static)");
    let busybox = busybox.as_path();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let tools_dir = dir.path().join("tools");
    for d in [&bin, &tools_dir] {
        std::fs::create_dir(d).unwrap();
    }
    std::os::unix::fs::symlink(busybox, tools_dir.join("find")).unwrap();
    let mut find_grant = grant("find", vec![rule("find-any", "**", Verdict::Allow)]);
    find_grant.profile.name = "find".into();
    let tool = GrantedTool::open(find_grant, &tools_dir.join("find")).unwrap();
    assert_eq!(tool.other_names(), Some(busybox));
    // A tool that is its own binary answers to no other name.
    let echo = GrantedTool::open(grant("echo", vec![]), &which("echo")).unwrap();
    assert_eq!(echo.other_names(), None);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_airlock-shim"), bin.join("find")).unwrap();
    let socket = dir.path().join("broker.sock");
    Arc::new(Broker::new(
        vec![tool],
        Arc::new(FixedAsker(Verdict::Deny, Default::default())),
        Arc::new(Unconfined),
        bin.to_str().unwrap(),
    ))
    .serve(&socket)
    .unwrap();
    let target = dir.path().display().to_string();
    let find = |args: &[&str]| {
        Command::new(bin.join("find"))
            .arg(&target)
            .args(args)
            .env(BROKER_SOCKET_ENV, &socket)
            .output()
            .unwrap()
    };
    for shell in ["/bin/busybox", "/bin/sh"] {
        let out = find(&[
            "-maxdepth",
            "0",
            "-exec",
            shell,
            "sh",
            "-c",
            "echo pwned",
            ";",
        ]);
        let (stdout, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(!stdout.contains("pwned"), "{shell} ran: {stdout} {err}");
        assert!(
            err.contains(&format!(
                "refused by profile `find`: `find` is `{}`, one binary with other names",
                busybox.display()
            )) && err.contains(&format!("it tried to run `{shell}`")),
            "{err}"
        );
    }
    let out = find(&["-maxdepth", "0", "-print"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{target}\n"),
        "{}",
        stderr(&out)
    );
}
