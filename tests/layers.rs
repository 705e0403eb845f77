//! Adversarial tests of the Landlock and seccomp layers on the host kernel.
//!
//! A hostile probe (`tests/hostile_probe.rs`) is started with the layers applied
//! between fork and exec, exactly as the enforcer applies them to the agent. Each case
//! checks that the forbidden action fails with the errno the layer produces, and that
//! the same action unconfined (or an allowed neighbour under the layer) behaves
//! differently: a case proves the layer is the reason.

use airlock_enforcer::identity::AgentIdentity;
use airlock_enforcer::landlock::{kernel_abi, LandlockError, LandlockPolicy, MIN_ABI};
use airlock_enforcer::limits::Rlimits;
use airlock_enforcer::sandbox::Sandbox;
use airlock_enforcer::seccomp::{
    agent_filter_entries, compile_agent_filters, compile_agent_filters_without, AgentFilters,
    FilterEntry,
};
use airlock_tests::{running_as_root, skip};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const EPERM: i32 = libc::EPERM;
const EACCES: i32 = libc::EACCES;
const ENOSYS: i32 = libc::ENOSYS;

fn probe_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
}

/// What the probe reported.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Errno(i32),
}

fn parse(stdout: &[u8]) -> Outcome {
    let s = String::from_utf8_lossy(stdout);
    let s = s.trim();
    match s.strip_prefix("errno=") {
        Some(n) => Outcome::Errno(n.parse().unwrap()),
        None if s == "ok" || s.starts_with("ok ") => Outcome::Ok,
        None => panic!("probe printed {s:?}"),
    }
}

/// Runs the probe with optional layers applied in the child before exec.
fn probe(
    landlock: Option<&LandlockPolicy>,
    seccomp: Option<&AgentFilters>,
    args: &[&str],
) -> Outcome {
    parse(&probe_with(
        &Layers {
            landlock,
            seccomp,
            ..Default::default()
        },
        args,
    ))
}

/// Every layer the tests can stack, in the enforcer's order: limits, identity,
/// Landlock, seccomp.
#[derive(Default)]
struct Layers<'a> {
    rlimits: Option<Rlimits>,
    identity: Option<&'a AgentIdentity>,
    landlock: Option<&'a LandlockPolicy>,
    seccomp: Option<&'a AgentFilters>,
}

fn probe_with(layers: &Layers<'_>, args: &[&str]) -> Vec<u8> {
    let mut cmd = Command::new(probe_path());
    cmd.args(args).stdin(std::process::Stdio::null());
    // The enforcer's own composition of the layers, in its order; seccomp comes last
    // there too, and here it is the filter the test passed (the agent's, or one built
    // without an entry to prove that entry matters).
    let mut prepared = Sandbox {
        cgroup: None,
        rlimits: layers.rlimits,
        identity: layers.identity.cloned(),
        landlock: layers.landlock.cloned(),
        seccomp: false,
    }
    .prepare()
    .unwrap_or_else(|e| panic!("{e}"));
    let filters = layers.seccomp.cloned();
    // SAFETY: the closure runs between fork and exec; the prepared sandbox and the
    // filter apply with syscalls only (no allocation on success) and report failure by
    // errno.
    unsafe {
        cmd.pre_exec(move || {
            prepared.apply_on_current_thread()?;
            if let Some(f) = &filters {
                f.install_on_current_thread()
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EPROTO))?;
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("probe starts under the layers");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn nobody() -> AgentIdentity {
    AgentIdentity {
        uid: 65534,
        gid: 65534,
        groups: vec![],
    }
}

/// Read-only system paths a dynamically linked probe needs, plus the probe's directory.
fn base_policy() -> LandlockPolicy {
    let probe_dir = probe_path().parent().unwrap().to_path_buf();
    let mut read_only: Vec<PathBuf> = ["/lib", "/lib64", "/usr/lib", "/etc/ld.so.cache"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    read_only.dedup();
    // The kernel opens the ELF interpreter for exec too: it needs EXECUTE.
    let loader = PathBuf::from("/lib64/ld-linux-x86-64.so.2");
    LandlockPolicy {
        read_only,
        executable: vec![probe_dir, loader],
        devices: vec![PathBuf::from("/dev/null")],
        ..Default::default()
    }
}

struct Tree {
    _dir: tempfile::TempDir,
    ro: PathBuf,
    rw: PathBuf,
    secret: PathBuf,
    tools: PathBuf,
}

/// ro/ (granted read-only), rw/ (read-write), tools/ (executable), secret/ (nothing).
fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let mk = |n: &str| {
        let p = root.join(n);
        std::fs::create_dir(&p).unwrap();
        p
    };
    let (ro, rw, secret, tools) = (mk("ro"), mk("rw"), mk("secret"), mk("tools"));
    std::fs::write(ro.join("readme"), "public").unwrap();
    std::fs::write(secret.join("key"), "hunter2").unwrap();
    std::fs::copy(probe_path(), tools.join("tool")).unwrap();
    Tree {
        _dir: dir,
        ro,
        rw,
        secret,
        tools,
    }
}

fn fs_policy(t: &Tree) -> LandlockPolicy {
    let mut p = base_policy();
    p.read_only.push(t.ro.clone());
    p.read_write.push(t.rw.clone());
    p.executable.push(t.tools.clone());
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_kernel_meets_the_pinned_landlock_abi() {
    assert!(
        kernel_abi() >= MIN_ABI,
        "host kernel Landlock ABI {} < {MIN_ABI}",
        kernel_abi()
    );
}

#[test]
fn landlock_filesystem_cases() {
    let t = tree();
    let p = fs_policy(&t);
    let secret_key = t.secret.join("key");
    let link = t.rw.join("link-to-secret");
    std::os::unix::fs::symlink(&secret_key, &link).unwrap();
    let copied = t.rw.join("copied-tool");
    std::fs::copy(probe_path(), &copied).unwrap();
    let hard = t.rw.join("hard");
    let (ro_readme, ro_new, rw_new) = (t.ro.join("readme"), t.ro.join("new"), t.rw.join("new"));
    // (what, args, confined outcome, unconfined outcome; None = the unconfined action
    // replaces the probe, see `exec_from_the_executable_dir_works_under_landlock`)
    let cases: Vec<(&str, Vec<&str>, Outcome, Option<Outcome>)> = vec![
        (
            "read a granted file",
            vec!["read", s(&ro_readme)],
            Outcome::Ok,
            Some(Outcome::Ok),
        ),
        (
            "read a secret outside the grant",
            vec!["read", s(&secret_key)],
            Outcome::Errno(EACCES),
            Some(Outcome::Ok),
        ),
        (
            "read the secret through a symlink in a rw dir",
            vec!["read", s(&link)],
            Outcome::Errno(EACCES),
            Some(Outcome::Ok),
        ),
        (
            "write into a read-only dir",
            vec!["write", s(&ro_new)],
            Outcome::Errno(EACCES),
            Some(Outcome::Ok),
        ),
        (
            "write into a read-write dir",
            vec!["write", s(&rw_new)],
            Outcome::Ok,
            Some(Outcome::Ok),
        ),
        (
            "exec a binary copied into a rw dir",
            vec!["exec", s(&copied)],
            Outcome::Errno(EACCES),
            None,
        ),
        (
            "exec a binary outside any grant",
            vec!["exec", "/bin/true"],
            Outcome::Errno(EACCES),
            None,
        ),
        (
            "hardlink the secret into the rw dir",
            vec!["hardlink", s(&secret_key), s(&hard)],
            Outcome::Errno(libc::EXDEV),
            Some(Outcome::Ok),
        ),
    ];
    let mut failures = Vec::new();
    for (what, args, confined, unconfined) in &cases {
        let _ = std::fs::remove_file(&hard);
        let _ = std::fs::remove_file(&ro_new);
        let got = probe(Some(&p), None, args);
        if got != *confined {
            failures.push(format!("{what}: confined {got:?}, expected {confined:?}"));
        }
        if *what == "hardlink the secret into the rw dir" {
            assert!(!hard.exists(), "the hard link must not have been created");
        }
        let _ = std::fs::remove_file(&hard);
        if let Some(unconfined) = unconfined {
            let free = probe(None, None, args);
            if free != *unconfined {
                failures.push(format!(
                    "{what}: unconfined {free:?}, expected {unconfined:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn exec_from_the_executable_dir_works_under_landlock() {
    let t = tree();
    let p = fs_policy(&t);
    // The probe execs tools/tool with args "getpid": the new image reports ok.
    let tool = t.tools.join("tool");
    let mut cmd = Command::new(probe_path());
    let prepared = p.prepare().unwrap();
    let mut prepared = Some(prepared);
    cmd.args(["exec", s(&tool)]);
    // SAFETY: as in `probe`.
    unsafe {
        cmd.pre_exec(move || {
            prepared
                .take()
                .unwrap()
                .restrict_current_thread()
                .map_err(|_| std::io::Error::from_raw_os_error(libc::EPROTO))
        });
    }
    let out = cmd.output().unwrap();
    // The exec'd tool runs with no action and panics with a usage message: that it ran
    // at all (stderr mentions the usage) is the point.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("usage: hostile_probe"),
        "tool did not run: {stderr}"
    );
}

#[test]
fn landlock_tcp_connect_is_limited_to_granted_ports() {
    let granted = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (gp, op) = (
        granted.local_addr().unwrap().port(),
        other.local_addr().unwrap().port(),
    );
    let mut p = base_policy();
    p.connect_tcp.push(gp);
    assert_eq!(
        probe(Some(&p), None, &["connect-tcp", &gp.to_string()]),
        Outcome::Ok
    );
    assert_eq!(
        probe(Some(&p), None, &["connect-tcp", &op.to_string()]),
        Outcome::Errno(EACCES)
    );
    assert_eq!(
        probe(None, None, &["connect-tcp", &op.to_string()]),
        Outcome::Ok
    );
}

#[test]
fn landlock_scopes_signals_and_abstract_sockets_to_the_sandbox() {
    let me = std::process::id().to_string();
    let p = base_policy();
    assert_eq!(probe(Some(&p), None, &["kill", &me]), Outcome::Errno(EPERM));
    assert_eq!(probe(None, None, &["kill", &me]), Outcome::Ok);

    let name = format!("airlock-test-{}", std::process::id());
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    assert_eq!(
        probe(Some(&p), None, &["abstract-connect", &name]),
        Outcome::Errno(EPERM)
    );
    assert_eq!(probe(None, None, &["abstract-connect", &name]), Outcome::Ok);
}

#[test]
fn bad_landlock_policies_are_refused_before_anything_runs() {
    let t = tree();
    let mut p = fs_policy(&t);
    p.read_only.push(t.ro.join("does-not-exist"));
    let err = p.prepare().unwrap_err();
    assert!(matches!(err, LandlockError::Path { .. }), "{err}");
    assert!(err.to_string().contains("does-not-exist"), "{err}");

    let mut p = fs_policy(&t);
    p.executable.push(t.rw.join("bin"));
    std::fs::create_dir(t.rw.join("bin")).unwrap();
    let err = p.prepare().unwrap_err();
    assert!(
        matches!(err, LandlockError::WritableExecutable { .. }),
        "{err}"
    );
}

/// One call the agent's filter must judge, made by the probe under a witness (see
/// `witnessed_syscall` in `tests/hostile_probe.rs`): the call never runs, and the
/// witness answers `WITNESS_ERRNO` for whatever the filter let through.
struct FilterCase {
    what: &'static str,
    /// The filter entry that must refuse it; `None` for a neighbour it must let through.
    entry: Option<FilterEntry>,
    nr: i64,
    args: [u64; 6],
    /// The filter's answer (ignored for neighbours).
    errno: i32,
}

/// The witness's answer (`EHWPOISON`): the call got past the agent's filter.
const WITNESSED: Outcome = Outcome::Errno(libc::EHWPOISON);

fn deny(what: &'static str, nr: i64, args: [u64; 6]) -> FilterCase {
    FilterCase {
        what,
        entry: Some(FilterEntry::Denied(nr)),
        nr,
        args,
        errno: EPERM,
    }
}

fn neighbour(what: &'static str, nr: i64, args: [u64; 6]) -> FilterCase {
    FilterCase {
        what,
        entry: None,
        nr,
        args,
        errno: 0,
    }
}

/// Every entry of the agent's filter, tried, plus the neighbours each argument rule
/// must leave alone. Arguments are what a real attack would pass where the filter
/// looks at them (flags, families, request codes), and null elsewhere.
// ioctl request codes are c_ulong on glibc and c_int on musl: the casts are for musl.
#[allow(clippy::unnecessary_cast)]
fn filter_cases() -> Vec<FilterCase> {
    use libc::*;
    let z = [0u64; 6];
    let a = |v: &[u64]| {
        let mut out = [0u64; 6];
        out[..v.len()].copy_from_slice(v);
        out
    };
    let clone_with = |flag: c_int| a(&[(flag | SIGCHLD) as u64]);
    let mut cases = vec![
        FilterCase {
            what: "an x32 syscall number (getpid | x32 bit)",
            entry: Some(FilterEntry::X32),
            nr: 0x4000_0000 | SYS_getpid,
            args: z,
            errno: ENOSYS,
        },
        FilterCase {
            what: "clone3 (flags in memory, out of the filter's sight)",
            entry: Some(FilterEntry::Clone3),
            nr: SYS_clone3,
            args: z,
            errno: ENOSYS,
        },
        deny("io_uring_setup", SYS_io_uring_setup, a(&[1])),
        deny("io_uring_enter", SYS_io_uring_enter, z),
        deny("io_uring_register", SYS_io_uring_register, z),
        deny("memfd_create", SYS_memfd_create, z),
        deny(
            "ptrace(PTRACE_TRACEME)",
            SYS_ptrace,
            a(&[PTRACE_TRACEME as u64]),
        ),
        deny("process_vm_readv", SYS_process_vm_readv, a(&[1])),
        deny("process_vm_writev", SYS_process_vm_writev, a(&[1])),
        deny("bpf", SYS_bpf, z),
        deny("perf_event_open", SYS_perf_event_open, z),
        deny("userfaultfd", SYS_userfaultfd, a(&[O_CLOEXEC as u64])),
        deny("kexec_load", SYS_kexec_load, z),
        deny("kexec_file_load", SYS_kexec_file_load, z),
        deny("init_module", SYS_init_module, z),
        deny("finit_module", SYS_finit_module, z),
        deny("delete_module", SYS_delete_module, z),
        deny("mount", SYS_mount, z),
        deny("umount2", SYS_umount2, z),
        deny("pivot_root", SYS_pivot_root, z),
        deny("move_mount", SYS_move_mount, z),
        deny("open_tree", SYS_open_tree, z),
        deny("fsopen", SYS_fsopen, z),
        deny("fsmount", SYS_fsmount, z),
        deny("fsconfig", SYS_fsconfig, z),
        deny("fspick", SYS_fspick, z),
        deny("mount_setattr", SYS_mount_setattr, z),
        deny(
            "unshare(CLONE_NEWUSER)",
            SYS_unshare,
            a(&[CLONE_NEWUSER as u64]),
        ),
        deny("setns", SYS_setns, z),
        deny("keyctl", SYS_keyctl, z),
        deny("add_key", SYS_add_key, z),
        deny("request_key", SYS_request_key, z),
        deny(
            "socket(AF_VSOCK)",
            SYS_socket,
            a(&[AF_VSOCK as u64, SOCK_STREAM as u64]),
        ),
        deny(
            "socket(AF_PACKET)",
            SYS_socket,
            a(&[AF_PACKET as u64, SOCK_DGRAM as u64]),
        ),
        deny(
            "socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC)",
            SYS_socket,
            a(&[AF_INET as u64, (SOCK_RAW | SOCK_CLOEXEC) as u64]),
        ),
        deny(
            "socket(AF_INET6, SOCK_RAW)",
            SYS_socket,
            a(&[AF_INET6 as u64, SOCK_RAW as u64]),
        ),
        deny(
            "execveat(fd, \"\", AT_EMPTY_PATH)",
            SYS_execveat,
            a(&[3, 0, 0, 0, AT_EMPTY_PATH as u64]),
        ),
        deny("ioctl(TIOCSTI)", SYS_ioctl, a(&[0, TIOCSTI as u64])),
        deny("ioctl(TIOCLINUX)", SYS_ioctl, a(&[0, 0x541C])),
        deny("ioctl(TIOCSETD)", SYS_ioctl, a(&[0, 0x5423])),
        deny(
            "ioctl(TIOCSETD) with junk in the upper half",
            SYS_ioctl,
            a(&[0, 0x1_0000_5423]),
        ),
        deny(
            "personality(READ_IMPLIES_EXEC)",
            SYS_personality,
            a(&[0x0040_0000]),
        ),
        neighbour(
            "socket(AF_INET, SOCK_STREAM)",
            SYS_socket,
            a(&[AF_INET as u64, SOCK_STREAM as u64]),
        ),
        neighbour(
            "socket(AF_UNIX, SOCK_DGRAM)",
            SYS_socket,
            a(&[AF_UNIX as u64, SOCK_DGRAM as u64]),
        ),
        neighbour("execveat(dirfd, path, 0)", SYS_execveat, a(&[3])),
        neighbour(
            "clone(SIGCHLD): a plain fork",
            SYS_clone,
            a(&[SIGCHLD as u64]),
        ),
        neighbour("ioctl(TCGETS)", SYS_ioctl, a(&[0, TCGETS as u64])),
        // What a tty command does with its own terminal: lead a session, take the
        // terminal as its controlling one, read and set its size.
        neighbour("setsid", SYS_setsid, z),
        neighbour("ioctl(TIOCSCTTY)", SYS_ioctl, a(&[0, TIOCSCTTY as u64])),
        neighbour("ioctl(TIOCGWINSZ)", SYS_ioctl, a(&[0, TIOCGWINSZ as u64])),
        neighbour("ioctl(TIOCSWINSZ)", SYS_ioctl, a(&[0, TIOCSWINSZ as u64])),
        neighbour("personality(query)", SYS_personality, a(&[0xffff_ffff])),
        neighbour("personality(PER_LINUX)", SYS_personality, z),
        neighbour("getpid", SYS_getpid, z),
        // Set-id modes: a set-id file left in a live share runs as its owner on the host.
        deny("chmod(path, 04755)", SYS_chmod, a(&[0, 0o4755])),
        deny("fchmod(fd, 02755)", SYS_fchmod, a(&[3, 0o2755])),
        deny(
            "fchmodat(dirfd, path, 06755)",
            SYS_fchmodat,
            a(&[3, 0, 0o6755]),
        ),
        deny(
            "fchmodat2(dirfd, path, 04755, 0)",
            SYS_fchmodat2,
            a(&[3, 0, 0o4755]),
        ),
        deny("creat(path, 04755)", SYS_creat, a(&[0, 0o4755])),
        deny(
            "open(path, O_CREAT | O_WRONLY, 02755)",
            SYS_open,
            a(&[0, (O_CREAT | O_WRONLY) as u64, 0o2755]),
        ),
        deny(
            "openat(dirfd, path, O_CREAT, 04700)",
            SYS_openat,
            a(&[3, 0, O_CREAT as u64, 0o4700]),
        ),
        neighbour("chmod(path, 0755)", SYS_chmod, a(&[0, 0o755])),
        neighbour(
            "fchmod(fd, 01777): sticky is allowed",
            SYS_fchmod,
            a(&[3, 0o1777]),
        ),
        neighbour(
            "openat(dirfd, path, O_CREAT, 0644)",
            SYS_openat,
            a(&[3, 0, O_CREAT as u64, 0o644]),
        ),
        neighbour(
            "open(path, O_RDONLY, 04755): no O_CREAT, the mode means nothing",
            SYS_open,
            a(&[0, O_RDONLY as u64, 0o4755]),
        ),
    ];
    for (name, flag) in [
        ("clone(CLONE_NEWNS)", CLONE_NEWNS),
        ("clone(CLONE_NEWUSER)", CLONE_NEWUSER),
        ("clone(CLONE_NEWPID)", CLONE_NEWPID),
        ("clone(CLONE_NEWNET)", CLONE_NEWNET),
        ("clone(CLONE_NEWIPC)", CLONE_NEWIPC),
        ("clone(CLONE_NEWUTS)", CLONE_NEWUTS),
        ("clone(CLONE_NEWCGROUP)", CLONE_NEWCGROUP),
    ] {
        cases.push(deny(name, SYS_clone, clone_with(flag)));
    }
    cases
}

/// Runs the probe's `witnessed-syscall` for `case` under `filters` (or none).
fn witnessed(filters: Option<&AgentFilters>, case: &FilterCase) -> Outcome {
    let mut args = vec!["witnessed-syscall".to_string(), case.nr.to_string()];
    args.extend(case.args.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    probe(None, filters, &args)
}

/// Each entry of the filter is tried: unconfined, the witness answers (the probe
/// makes that call, and it reaches seccomp on this kernel, x32 included); under the
/// agent's filter, the filter's errno comes back, which the witness's presence proves
/// is the filter's own decision (whatever the kernel would have said is never asked).
#[test]
fn the_agent_filter_refuses_every_entry_and_passes_the_neighbours() {
    let filters = compile_agent_filters().unwrap();
    let mut failures = Vec::new();
    for case in filter_cases() {
        let free = witnessed(None, &case);
        if free != WITNESSED {
            failures.push(format!(
                "{}: unconfined {free:?}, expected the witness",
                case.what
            ));
        }
        let confined = witnessed(Some(&filters), &case);
        let want = match case.entry {
            Some(_) => Outcome::Errno(case.errno),
            None => WITNESSED,
        };
        if confined != want {
            failures.push(format!(
                "{}: under the filter {confined:?}, expected {want:?}",
                case.what
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The mutation check: the filter built without one entry lets that entry's calls
/// through to the witness. So every refusal above is its own entry's doing, and no
/// entry is dead weight that another one covers.
#[test]
fn each_filter_entry_is_the_reason_for_its_refusals() {
    let cases = filter_cases();
    let mut failures = Vec::new();
    for entry in agent_filter_entries().unwrap() {
        let mine: Vec<&FilterCase> = cases.iter().filter(|c| c.entry == Some(entry)).collect();
        if mine.is_empty() {
            failures.push(format!("{entry:?}: no case tries it"));
            continue;
        }
        let without = compile_agent_filters_without(entry).unwrap();
        for case in mine {
            let got = witnessed(Some(&without), case);
            if got != WITNESSED {
                failures.push(format!(
                    "{} without {entry:?}: {got:?}, expected the witness",
                    case.what
                ));
            }
        }
    }
    for case in &cases {
        if let Some(entry) = case.entry {
            assert!(
                agent_filter_entries().unwrap().contains(&entry),
                "{}: {entry:?} is not in the filter",
                case.what
            );
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// A syscall through the i386 entry point (`int 0x80`) kills the process: its numbers
/// mean other calls, which a list keyed on x86-64 numbers would misjudge.
#[test]
fn the_i386_syscall_entry_kills_the_agent() {
    use std::os::unix::process::ExitStatusExt;
    let free = parse(&probe_with(&Layers::default(), &["witnessed-int80-getpid"]));
    assert_eq!(
        free, WITNESSED,
        "unconfined, the witness hears the i386 call (the kernel has the i386 entry)"
    );
    let mut prepared = Sandbox {
        cgroup: None,
        rlimits: None,
        identity: None,
        landlock: None,
        seccomp: true,
    }
    .prepare()
    .unwrap();
    let mut cmd = Command::new(probe_path());
    cmd.arg("witnessed-int80-getpid");
    // SAFETY: as in `probe_with`.
    unsafe {
        cmd.pre_exec(move || prepared.apply_on_current_thread());
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "the filter kills it: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The x32 guard holds even where the kernel has no x32 ABI: the witness shows the
/// call reaches seccomp (so the kernel's own ENOSYS would come later), and the filter's
/// ENOSYS comes first. Where the kernel does run x32 calls, the same holds.
#[test]
fn x32_numbers_reach_seccomp_on_this_kernel_and_the_filter_refuses_them() {
    let case = filter_cases()
        .into_iter()
        .find(|c| c.entry == Some(FilterEntry::X32))
        .unwrap();
    assert_eq!(witnessed(None, &case), WITNESSED);
    let filters = compile_agent_filters().unwrap();
    assert_eq!(witnessed(Some(&filters), &case), Outcome::Errno(ENOSYS));
    let without = compile_agent_filters_without(FilterEntry::X32).unwrap();
    assert_eq!(witnessed(Some(&without), &case), WITNESSED);
}

#[test]
fn seccomp_allows_the_neighbours() {
    let filters = compile_agent_filters().unwrap();
    for args in [
        &["getpid"][..],
        &["socket", "tcp"],
        &["fork"],
        &["personality-query"],
    ] {
        assert_eq!(probe(None, Some(&filters), args), Outcome::Ok, "{args:?}");
    }
}

#[test]
fn both_layers_stack() {
    let t = tree();
    let p = fs_policy(&t);
    let filters = compile_agent_filters().unwrap();
    assert_eq!(
        probe(Some(&p), Some(&filters), &["read", s(&t.ro.join("readme"))]),
        Outcome::Ok
    );
    assert_eq!(
        probe(
            Some(&p),
            Some(&filters),
            &["read", s(&t.secret.join("key"))]
        ),
        Outcome::Errno(EACCES)
    );
    assert_eq!(
        probe(Some(&p), Some(&filters), &["memfd-create"]),
        Outcome::Errno(EPERM)
    );
}

#[test]
fn identity_drops_to_an_unprivileged_uid_with_every_capability_set_empty() {
    if !running_as_root() {
        return skip("dropping to another uid needs root (CI runs as root)");
    }
    let id = nobody();
    let status = String::from_utf8(probe_with(
        &Layers {
            identity: Some(&id),
            ..Default::default()
        },
        &["status"],
    ))
    .unwrap();
    for want in [
        "Uid:\t65534\t65534\t65534\t65534",
        "Gid:\t65534\t65534\t65534\t65534",
        "CapInh:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(status.contains(want), "missing {want:?} in {status}");
    }
    let groups = status
        .split(';')
        .find_map(|l| l.strip_prefix("Groups:"))
        .expect("Groups line");
    assert!(
        groups.trim().is_empty(),
        "supplementary groups left: {groups:?}"
    );
    // Unconfined (root), the bounding set is full: the check above is the layer's doing.
    let free = String::from_utf8(probe_with(&Layers::default(), &["status"])).unwrap();
    assert!(!free.contains("CapBnd:\t0000000000000000"), "{free}");
}

#[test]
fn the_dropped_agent_cannot_regain_root() {
    if !running_as_root() {
        return skip("dropping to another uid needs root (CI runs as root)");
    }
    let id = nobody();
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("root-only");
    std::fs::write(&private, "root's").unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dropped = Layers {
        identity: Some(&id),
        ..Default::default()
    };
    assert_eq!(
        parse(&probe_with(&dropped, &["setuid-root"])),
        Outcome::Errno(EPERM)
    );
    assert_eq!(
        parse(&probe_with(&dropped, &["read", s(&private)])),
        Outcome::Errno(EACCES)
    );
    // Without the drop, root reads it (no CAP_DAC_OVERRIDE left is the reason above).
    assert_eq!(
        parse(&probe_with(&Layers::default(), &["read", s(&private)])),
        Outcome::Ok
    );
}

#[test]
fn root_identities_are_refused() {
    for id in [
        AgentIdentity {
            uid: 0,
            gid: 1,
            groups: vec![],
        },
        AgentIdentity {
            uid: 1,
            gid: 0,
            groups: vec![],
        },
        AgentIdentity {
            uid: 1,
            gid: 1,
            groups: vec![0],
        },
    ] {
        assert!(id.prepare().is_err(), "{id:?}");
    }
}

#[test]
fn rlimits_stop_big_files_and_descriptor_hoarding() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    let limited = Layers {
        rlimits: Some(Rlimits {
            fsize_bytes: Some(1 << 20),
            nofile: Some(16),
            ..Default::default()
        }),
        ..Default::default()
    };
    let two_mib = (2 << 20).to_string();
    assert_eq!(
        parse(&probe_with(&limited, &["write-big", &two_mib, s(&big)])),
        Outcome::Errno(libc::EFBIG)
    );
    assert_eq!(
        parse(&probe_with(
            &Layers::default(),
            &["write-big", &two_mib, s(&big)]
        )),
        Outcome::Ok
    );
    assert_eq!(
        parse(&probe_with(&limited, &["open-many", "64"])),
        Outcome::Errno(libc::EMFILE)
    );
    assert_eq!(
        parse(&probe_with(&Layers::default(), &["open-many", "64"])),
        Outcome::Ok
    );
}

#[test]
fn rlimit_nproc_stops_a_fork_bomb_of_the_agent_uid() {
    if !running_as_root() {
        return skip("running as a dedicated uid needs root (CI runs as root)");
    }
    // A uid nothing else on the machine uses, so the count is the probe's own.
    let id = AgentIdentity {
        uid: 64_999,
        gid: 64_999,
        groups: vec![],
    };
    let bomb = Layers {
        rlimits: Some(Rlimits {
            nproc: Some(8),
            ..Default::default()
        }),
        identity: Some(&id),
        ..Default::default()
    };
    assert_eq!(
        parse(&probe_with(&bomb, &["fork-many", "32"])),
        Outcome::Errno(libc::EAGAIN)
    );
    let no_limit = Layers {
        identity: Some(&id),
        ..Default::default()
    };
    assert_eq!(
        parse(&probe_with(&no_limit, &["fork-many", "32"])),
        Outcome::Ok
    );
}

/// The cgroup2 mount point of this machine, if any.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[test]
fn a_cgroup_leaf_is_refused_where_cgroup2_cannot_enforce_it() {
    use airlock_enforcer::cgroup::{CgroupError, CgroupLeaf, CgroupLimits};
    let limits = CgroupLimits {
        pids_max: Some(8),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = CgroupLeaf::create(dir.path(), "agent", &limits).unwrap_err();
    assert!(matches!(err, CgroupError::NotCgroup2(_)), "{err}");
    assert!(!dir.path().join("agent").exists(), "nothing half-made");
}

/// A group of our own under this host's cgroup2 mount, removed on drop (we never
/// change a group we did not create).
struct OwnGroup(PathBuf);

impl OwnGroup {
    /// `None` (with the reason recorded as a skip) where this host cannot have one.
    fn under_cgroup2(tag: &str) -> Option<OwnGroup> {
        let Some(mount) = cgroup2_mount() else {
            skip("this host mounts no cgroup2 hierarchy");
            return None;
        };
        if !running_as_root() {
            skip("creating cgroups needs root (CI runs as root)");
            return None;
        }
        let path = mount.join(format!("airlock-test-{}-{tag}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Some(OwnGroup(path))
    }
}

impl Drop for OwnGroup {
    fn drop(&mut self) {
        // Children first (a leaf the test made below ours).
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_cgroup_leaf_is_refused_by_name_where_its_parent_offers_no_controller() {
    use airlock_enforcer::cgroup::{CgroupError, CgroupLeaf, CgroupLimits};
    let Some(own) = OwnGroup::under_cgroup2("undelegated") else {
        return;
    };
    // A group below ours offers only what ours delegates in cgroup.subtree_control:
    // nothing, on every layout (hybrid or pure cgroup2).
    let parent = own.0.join("parent");
    std::fs::create_dir(&parent).unwrap();
    let limits = CgroupLimits {
        pids_max: Some(8),
        ..Default::default()
    };
    let err = CgroupLeaf::create(&parent, "agent", &limits).unwrap_err();
    match &err {
        CgroupError::MissingController {
            controller,
            parent: p,
            ..
        } => {
            assert_eq!(*controller, "pids");
            assert_eq!(p, &parent);
        }
        other => panic!("{other}"),
    }
    assert!(!parent.join("agent").exists(), "nothing half-made");
    assert_eq!(
        std::fs::read_to_string(parent.join("cgroup.subtree_control"))
            .unwrap()
            .trim(),
        "",
        "the refused leaf enabled nothing in its parent"
    );
}

#[test]
fn a_cgroup_leaf_stops_a_fork_bomb_spread_over_processes() {
    use airlock_enforcer::cgroup::{CgroupError, CgroupLeaf, CgroupLimits};
    let Some(own) = OwnGroup::under_cgroup2("forkbomb") else {
        return;
    };
    let limits = CgroupLimits {
        pids_max: Some(8),
        ..Default::default()
    };
    let leaf = match CgroupLeaf::create(&own.0, "agent", &limits) {
        Err(CgroupError::MissingController { available, .. }) => {
            return skip(&format!(
                "this host's cgroup2 offers no pids controller (it offers {available:?}: a hybrid \
                 host binds pids to cgroup v1); every VM session runs this leaf in the guest's \
                 cgroup2 (the VM containment case `fork-bomb`, where RLIMIT_NPROC stands too)"
            ));
        }
        Err(e) => panic!("{e}"),
        Ok(leaf) => leaf,
    };
    assert_eq!(
        std::fs::read_to_string(leaf.path().join("pids.max"))
            .unwrap()
            .trim(),
        "8"
    );
    let leaf = std::sync::Arc::new(leaf);
    let fork_bomb = |leaf: Option<std::sync::Arc<CgroupLeaf>>| {
        let mut cmd = Command::new(probe_path());
        cmd.args(["fork-many", "32"]);
        if let Some(joined) = leaf {
            // SAFETY: one write(2) between fork and exec.
            unsafe {
                cmd.pre_exec(move || joined.join_on_current_process());
            }
        }
        parse(&cmd.output().unwrap().stdout)
    };
    assert_eq!(fork_bomb(None), Outcome::Ok, "outside the leaf all 32 fork");
    assert_eq!(
        fork_bomb(Some(std::sync::Arc::clone(&leaf))),
        Outcome::Errno(libc::EAGAIN)
    );
    let events = std::fs::read_to_string(leaf.path().join("pids.events")).unwrap();
    assert!(
        !events.contains("max 0"),
        "the leaf's pids.max refused the forks: {events}"
    );
    std::sync::Arc::try_unwrap(leaf)
        .unwrap_or_else(|_| panic!("the leaf is still shared"))
        .destroy()
        .unwrap();
}
