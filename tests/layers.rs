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
use airlock_enforcer::seccomp::{compile_agent_filters, AgentFilters};
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
    // The enforcer's own composition of the layers; the filters the tests compiled are
    // the same `compile_agent_filters()` output.
    let mut prepared = Sandbox {
        cgroup: None,
        rlimits: layers.rlimits,
        identity: layers.identity.cloned(),
        landlock: layers.landlock.cloned(),
        seccomp: layers.seccomp.is_some(),
    }
    .prepare()
    .unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: the closure runs between fork and exec; the prepared sandbox applies
    // with syscalls only (no allocation on success) and reports failure by errno.
    unsafe {
        cmd.pre_exec(move || prepared.apply_on_current_thread());
    }
    let out = cmd.output().expect("probe starts under the layers");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
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

#[test]
fn seccomp_denies_each_listed_call_with_eperm() {
    let filters = compile_agent_filters().unwrap();
    // (action, args): confined must be exactly EPERM; unconfined must not be EPERM-by-us
    // (it succeeds or fails with the kernel's own errno for our harmless arguments).
    let cases: &[&[&str]] = &[
        &["socket", "vsock"],
        &["socket", "packet"],
        &["socket", "raw"],
        &["io-uring-setup"],
        &["memfd-create"],
        &["execveat-empty-path"],
        &["ptrace-traceme"],
        &["process-vm-readv"],
        &["unshare-user"],
        &["clone-newuser"],
        &["mount"],
        &["bpf"],
        &["perf-event-open"],
        &["keyctl"],
        &["init-module"],
        &["personality-set"],
    ];
    let mut failures = Vec::new();
    for args in cases {
        let confined = probe(None, Some(&filters), args);
        if confined != Outcome::Errno(EPERM) {
            failures.push(format!("{args:?}: confined {confined:?}, expected EPERM"));
        }
        let free = probe(None, None, args);
        if free == Outcome::Errno(EPERM) {
            failures.push(format!(
                "{args:?}: unconfined also EPERM, so the test proves nothing here"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
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
fn tiocsti_is_refused_by_the_filter_not_by_the_terminal() {
    let filters = compile_agent_filters().unwrap();
    // stdin is /dev/null: unconfined the ioctl fails with ENOTTY; confined, EPERM.
    assert_eq!(
        probe(None, None, &["tiocsti"]),
        Outcome::Errno(libc::ENOTTY)
    );
    assert_eq!(
        probe(None, Some(&filters), &["tiocsti"]),
        Outcome::Errno(EPERM)
    );
}

#[test]
fn clone3_answers_enosys_so_libc_falls_back_to_clone() {
    let filters = compile_agent_filters().unwrap();
    assert_eq!(
        probe(None, Some(&filters), &["clone3"]),
        Outcome::Errno(ENOSYS)
    );
    // Unconfined, our null arguments get EINVAL or EFAULT: ENOSYS is the filter's.
    assert_ne!(probe(None, None, &["clone3"]), Outcome::Errno(ENOSYS));
}

#[test]
fn x32_syscall_numbers_are_refused() {
    let filters = compile_agent_filters().unwrap();
    assert_eq!(
        probe(None, Some(&filters), &["x32-getpid"]),
        Outcome::Errno(ENOSYS)
    );
    if probe(None, None, &["x32-getpid"]) != Outcome::Ok {
        eprintln!("note: this kernel refuses x32 syscalls itself; the guard is untestable here");
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
    if !is_root() {
        eprintln!("skipped: dropping to another uid needs root (CI runs as root)");
        return;
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
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
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
    if !is_root() {
        eprintln!("skipped: needs root to run as a dedicated uid");
        return;
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

#[test]
fn a_cgroup_leaf_stops_a_fork_bomb_spread_over_processes() {
    use airlock_enforcer::cgroup::{CgroupError, CgroupLeaf, CgroupLimits};
    let Some(mount) = cgroup2_mount() else {
        eprintln!("skipped: no cgroup2 mount on this machine (the VM test covers it)");
        return;
    };
    if !is_root() {
        eprintln!("skipped: creating cgroups needs root");
        return;
    }
    // Our own parent group: we never change a group we did not create.
    let parent = mount.join(format!("airlock-test-{}", std::process::id()));
    std::fs::create_dir(&parent).unwrap();
    let limits = CgroupLimits {
        pids_max: Some(8),
        ..Default::default()
    };
    let result = CgroupLeaf::create(&parent, "agent", &limits);
    let root_has_pids = std::fs::read_to_string(mount.join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .any(|c| c == "pids");
    match result {
        Err(CgroupError::MissingController { controller, .. }) => {
            // Hybrid hosts bind pids to cgroup v1: refusing is the right answer here.
            assert!(
                !root_has_pids,
                "pids is delegated, yet the leaf was refused"
            );
            assert_eq!(controller, "pids");
            eprintln!("note: {} offers no pids controller (hybrid cgroup host); refusal checked, limit not exercised", mount.display());
        }
        Err(e) => panic!("{e}"),
        Ok(leaf) => {
            assert_eq!(
                std::fs::read_to_string(leaf.path().join("pids.max"))
                    .unwrap()
                    .trim(),
                "8"
            );
            let mut cmd = Command::new(probe_path());
            cmd.args(["fork-many", "32"]);
            let leaf = std::sync::Arc::new(leaf);
            let joined = std::sync::Arc::clone(&leaf);
            // SAFETY: one write(2) between fork and exec.
            unsafe {
                cmd.pre_exec(move || joined.join_on_current_process());
            }
            let out = cmd.output().unwrap();
            assert_eq!(parse(&out.stdout), Outcome::Errno(libc::EAGAIN));
            std::sync::Arc::try_unwrap(leaf).unwrap().destroy().unwrap();
        }
    }
    std::fs::remove_dir(&parent).unwrap();
}
