//! Adversarial tests of the host tree cgroup ([`TreeCgroup`]) on this machine's own
//! hierarchy, whichever it is (cgroup2, or the hybrid layout where pids/memory/cpu are
//! cgroup v1 hierarchies).
//!
//! Each hostile child joins the group between fork and exec through
//! [`CgroupMembership::join_on_current_process`], as the agent does. Each case runs the
//! same program inside and outside the group (or under a looser limit) and checks the
//! group's own counters, so the limit is shown to be the reason for the failure.

use airlock_enforcer::cgroup::{CgroupError, CgroupLimits, CgroupMembership, TreeCgroup};
use airlock_enforcer::pidfd::PidFd;
use airlock_tests::{running_as_root, skip};
use std::io::BufRead;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// A group name no concurrently running test (or test binary) uses.
fn unique_name(tag: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test-{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn probe_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
}

/// Makes `cmd` join `membership` between fork and exec.
fn join_before_exec(cmd: &mut Command, membership: CgroupMembership) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only writes to pre-opened
    // descriptors (no allocation, no locks).
    unsafe { cmd.pre_exec(move || membership.join_on_current_process()) }
}

/// Destroys the group when a failed assertion unwinds, so no run leaves groups behind.
struct Guard(Option<TreeCgroup>);

impl std::ops::Deref for Guard {
    type Target = TreeCgroup;
    fn deref(&self) -> &TreeCgroup {
        self.0.as_ref().unwrap()
    }
}

impl Guard {
    fn destroy(mut self) -> Result<(), CgroupError> {
        self.0.take().unwrap().destroy()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(tree) = self.0.take() {
            let _ = tree.destroy();
        }
    }
}

/// Creates a group on this host, or records why the test cannot run (a skip).
fn host_group(tag: &str, limits: &CgroupLimits) -> Option<Guard> {
    if !running_as_root() {
        skip("creating cgroups needs root (CI runs as root)");
        return None;
    }
    let tree = TreeCgroup::create_on_host(&unique_name(tag), limits)
        .unwrap_or_else(|e| panic!("this host must offer the controllers: {e}"));
    eprintln!("{}", tree.describe());
    Some(Guard(Some(tree)))
}

/// The group directory holding `file` (the one bound to its controller).
fn file_in(tree: &TreeCgroup, file: &str) -> PathBuf {
    tree.paths()
        .into_iter()
        .map(|p| p.join(file))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no group of {} has {file}", tree.describe()))
}

/// The value of `key` in a `key value` cgroup file (pids.events, memory.oom_control, ...).
fn keyed(path: &Path, key: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}: no `{key}` in {text:?}", path.display()))
}

fn read_trim(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Runs `hostile_probe fork-many n` (n children blocked on a pipe, then all reaped).
fn fork_many(n: usize, membership: Option<CgroupMembership>) -> String {
    let mut cmd = Command::new(probe_path());
    cmd.args(["fork-many", &n.to_string()]).stdin(Stdio::null());
    if let Some(m) = membership {
        join_before_exec(&mut cmd, m);
    }
    let out = cmd.output().expect("probe starts");
    assert!(out.status.success(), "probe failed: {:?}", out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_fork_bomb_in_the_tree_cgroup_stops_at_pids_max() {
    let limits = CgroupLimits {
        pids_max: Some(16),
        ..Default::default()
    };
    let Some(tree) = host_group("forkbomb", &limits) else {
        return;
    };
    let events = file_in(&tree, "pids.events");
    assert_eq!(keyed(&events, "max"), 0, "fresh group");

    // Outside the group the same program makes its 40 processes.
    assert_eq!(fork_many(40, None), "ok");
    // Inside, fork fails once the tree holds 16 tasks, and the group counts the refusal.
    assert_eq!(
        fork_many(40, Some(tree.membership().unwrap())),
        format!("errno={}", libc::EAGAIN)
    );
    assert!(
        keyed(&events, "max") > 0,
        "the group's pids.max refused the fork"
    );
    let peak = file_in(&tree, "pids.current").with_file_name("pids.peak");
    if peak.exists() {
        let peak: u64 = read_trim(&peak).parse().unwrap();
        assert!(peak <= 16, "the tree reached {peak} tasks");
    }
    assert_eq!(
        read_trim(&file_in(&tree, "pids.current")),
        "0",
        "all reaped"
    );
    tree.destroy().unwrap();
}

/// The interpreter behind `python3` (resolved so the group's child is python itself).
/// `make test` installs python3: its absence is a broken set-up, not a skip.
fn python3() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap_or_else(|e| panic!("python3 (make test installs it): {e}"));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.is_file(),
        "python3 did not name its interpreter: {out:?}"
    );
    path
}

/// Allocates and touches 256 MiB (bytearray() zero-fills every page) inside a group
/// limited to `limit` bytes.
fn memory_hog(python: &Path, limit: u64) -> (std::process::ExitStatus, String, u64) {
    let limits = CgroupLimits {
        memory_max_bytes: Some(limit),
        ..Default::default()
    };
    let tree = host_group("memhog", &limits).unwrap();
    let mut cmd = Command::new(python);
    cmd.args(["-c", "b = bytearray(256 << 20); print('touched', len(b))"])
        .stdin(Stdio::null());
    join_before_exec(&mut cmd, tree.membership().unwrap());
    let out = cmd.output().expect("python starts");
    let oom_kills = match &*tree {
        TreeCgroup::V1(_) => keyed(&file_in(&tree, "memory.oom_control"), "oom_kill"),
        TreeCgroup::V2(_) => keyed(&file_in(&tree, "memory.events"), "oom_kill"),
    };
    tree.destroy().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        oom_kills,
    )
}

#[test]
fn a_memory_hog_is_oom_killed_at_the_tree_limit_but_fits_a_larger_one() {
    if !running_as_root() {
        return skip("creating cgroups needs root (CI runs as root)");
    }
    let python = python3();
    let (status, stdout, oom_kills) = memory_hog(&python, 64 * MIB);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "hog under 64 MiB: {status:?} {stdout:?}"
    );
    assert!(oom_kills >= 1, "the group's OOM killer did it");

    let (status, stdout, oom_kills) = memory_hog(&python, 512 * MIB);
    assert!(status.success(), "hog under 512 MiB: {status:?}");
    assert_eq!(stdout, format!("touched {}", 256 * MIB));
    assert_eq!(oom_kills, 0);
}

/// Starts a python busy loop that runs for one second of wall time and prints the CPU
/// seconds it got.
fn spin_one_second(python: &Path, membership: Option<CgroupMembership>) -> std::process::Child {
    let mut cmd = Command::new(python);
    cmd.args([
        "-c",
        "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.0: pass\nprint(time.process_time())",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    if let Some(m) = membership {
        join_before_exec(&mut cmd, m);
    }
    cmd.spawn().expect("python starts")
}

fn cpu_seconds(child: std::process::Child) -> f64 {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_cpu_spinner_in_the_tree_cgroup_is_throttled_to_its_quota() {
    let python = python3();
    // 5 ms per 100 ms: a twentieth of one CPU.
    let limits = CgroupLimits {
        cpu_max: Some((5_000, 100_000)),
        ..Default::default()
    };
    let Some(tree) = host_group("cpu", &limits) else {
        return;
    };
    // Side by side, so both see the same load from whatever else runs on the machine.
    let free = spin_one_second(&python, None);
    let bounded = spin_one_second(&python, Some(tree.membership().unwrap()));
    let (free, bounded) = (cpu_seconds(free), cpu_seconds(bounded));
    eprintln!("cpu seconds in 1 s: free {free}, under 5% quota {bounded}");
    assert!(bounded < 0.25, "spinner under a 5% quota got {bounded} s");
    assert!(
        free > 1.5 * bounded,
        "the unbounded twin got {free} s, the bounded one {bounded} s"
    );
    assert!(
        keyed(&file_in(&tree, "cpu.stat"), "nr_throttled") > 0,
        "the group's quota throttled it"
    );
    tree.destroy().unwrap();
}

#[test]
fn the_tree_cgroup_gets_exactly_the_limits_asked_for() {
    let limits = CgroupLimits {
        pids_max: Some(33),
        memory_max_bytes: Some(96 * MIB),
        cpu_max: Some((50_000, 100_000)),
    };
    let Some(tree) = host_group("limits", &limits) else {
        return;
    };
    assert_eq!(read_trim(&file_in(&tree, "pids.max")), "33");
    match &*tree {
        TreeCgroup::V1(v1) => {
            let controllers: Vec<&str> = v1.groups().flat_map(|(c, _)| c.iter().copied()).collect();
            assert_eq!(controllers, ["pids", "memory", "cpu"]);
            let mem = (96 * MIB).to_string();
            assert_eq!(read_trim(&file_in(&tree, "memory.limit_in_bytes")), mem);
            let memsw = file_in(&tree, "memory.limit_in_bytes")
                .with_file_name("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                assert_eq!(read_trim(&memsw), mem, "swap adds nothing to the budget");
            }
            assert_eq!(
                keyed(&file_in(&tree, "memory.oom_control"), "oom_kill_disable"),
                0
            );
            assert_eq!(read_trim(&file_in(&tree, "cpu.cfs_quota_us")), "50000");
            assert_eq!(read_trim(&file_in(&tree, "cpu.cfs_period_us")), "100000");
            assert!(
                tree.describe().starts_with("cgroup v1: pids=/"),
                "{}",
                tree.describe()
            );
        }
        TreeCgroup::V2(_) => {
            assert_eq!(
                read_trim(&file_in(&tree, "memory.max")),
                (96 * MIB).to_string()
            );
            assert_eq!(read_trim(&file_in(&tree, "cpu.max")), "50000 100000");
        }
    }
    for p in tree.paths() {
        assert_eq!(p.parent().unwrap().file_name().unwrap(), "airlock");
    }
    tree.destroy().unwrap();
}

#[test]
fn a_parent_that_disables_the_oom_killer_does_not_make_the_group_hang() {
    if !running_as_root() {
        return skip("creating cgroups needs root (CI runs as root)");
    }
    let host_memory = Path::new("/sys/fs/cgroup/memory");
    if !host_memory.join("memory.oom_control").exists() {
        return skip("a cgroup v1 behaviour, and this host has no v1 memory hierarchy");
    }
    // A private parent (never the shared one, which concurrent hogs use) with the OOM
    // killer off: v1 copies that into new children, where a hog would hang at the limit.
    std::fs::create_dir_all(host_memory.join("airlock")).unwrap();
    let parent = host_memory.join("airlock").join(unique_name("oomparent"));
    std::fs::create_dir(&parent).unwrap();
    std::fs::write(parent.join("memory.oom_control"), "1").unwrap();
    let v1 = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&parent, v1.path().join("memory")).unwrap();
    let v2 = tempfile::tempdir().unwrap();
    let limits = CgroupLimits {
        memory_max_bytes: Some(64 * MIB),
        ..Default::default()
    };
    let made = TreeCgroup::create_under(v2.path(), v1.path(), &unique_name("oom"), &limits);
    let disabled = made
        .as_ref()
        .map(|tree| keyed(&file_in(tree, "memory.oom_control"), "oom_kill_disable"))
        .map_err(|e| e.to_string());
    if let Ok(tree) = made {
        tree.destroy().unwrap();
    }
    let _ = std::fs::remove_dir(parent.join("airlock"));
    std::fs::remove_dir(&parent).unwrap();
    assert_eq!(disabled.unwrap(), 0, "the group re-enabled its OOM killer");
}

#[test]
fn destroy_kills_stragglers_including_orphans_and_leaves_no_group() {
    let limits = CgroupLimits {
        pids_max: Some(64),
        memory_max_bytes: Some(256 * MIB),
        ..Default::default()
    };
    destroy_kills_stragglers(&limits);
}

#[test]
fn destroy_kills_stragglers_of_a_group_without_limits() {
    // Nothing to bound, yet the tree is still tracked (in cgroup2, which every current
    // host mounts, hybrid ones at /sys/fs/cgroup/unified) so it can be killed.
    destroy_kills_stragglers(&CgroupLimits::default());
}

fn destroy_kills_stragglers(limits: &CgroupLimits) {
    let Some(tree) = host_group("destroy", limits) else {
        return;
    };
    if tree.paths().is_empty() {
        return skip("no cgroup2 on this host to track an unlimited tree");
    }
    // The child prints the pid of a `sleep 60` it orphans (its subshell exits, so the
    // sleep is reparented away from us), then becomes a `sleep 60` itself.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "(sleep 60 & echo $!); exec sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    join_before_exec(&mut cmd, tree.membership().unwrap());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let orphan: i32 = line.trim().parse().unwrap();
    // Pinned, so the check below cannot be fooled by pid reuse.
    let orphan_fd = PidFd::open(orphan).unwrap_or_else(|e| panic!("pidfd_open({orphan}): {e}"));
    for p in tree.paths() {
        let members = read_trim(&p.join("cgroup.procs"));
        let members: Vec<&str> = members.split_whitespace().collect();
        assert!(
            members.contains(&child.id().to_string().as_str()),
            "{members:?}"
        );
        assert!(
            members.contains(&orphan.to_string().as_str()),
            "{members:?}"
        );
    }
    assert!(!orphan_fd.wait_exited(Duration::ZERO).unwrap());

    let dirs: Vec<PathBuf> = tree.paths().into_iter().map(Path::to_path_buf).collect();
    tree.destroy().unwrap();
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    // destroy returned only once the groups were empty: both are already dead.
    let status = child.try_wait().unwrap().expect("child dead after destroy");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(
        orphan_fd.wait_exited(Duration::ZERO).unwrap(),
        "orphaned sleep survived destroy"
    );
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_controller_no_hierarchy_offers_is_refused_by_name() {
    let v2 = tempfile::tempdir().unwrap();
    let v1 = tempfile::tempdir().unwrap();
    // A plain directory named like the controller is not a hierarchy either.
    std::fs::create_dir(v1.path().join("memory")).unwrap();
    for (limits, controller) in [
        (
            CgroupLimits {
                pids_max: Some(16),
                ..Default::default()
            },
            "pids",
        ),
        (
            CgroupLimits {
                memory_max_bytes: Some(64 * MIB),
                ..Default::default()
            },
            "memory",
        ),
    ] {
        let err = TreeCgroup::create_under(v2.path(), v1.path(), &unique_name("missing"), &limits)
            .unwrap_err();
        match &err {
            CgroupError::ControllerUnavailable {
                controller: c,
                v1_hierarchy,
                ..
            } => {
                assert_eq!(*c, controller);
                assert_eq!(v1_hierarchy, &v1.path().join(controller));
            }
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("`{controller}`")), "{msg}");
        assert!(msg.contains("not a cgroup2 hierarchy"), "{msg}");
    }
    assert!(entries(v2.path()).is_empty(), "nothing made in the v2 root");
    assert_eq!(
        entries(v1.path()),
        ["memory"],
        "nothing made in the v1 root"
    );
    assert!(entries(&v1.path().join("memory")).is_empty());
}

#[test]
fn a_half_made_tree_cgroup_is_removed_when_a_later_controller_is_missing() {
    if !running_as_root() {
        return skip("creating cgroups needs root (CI runs as root)");
    }
    let host_pids = Path::new("/sys/fs/cgroup/pids");
    if !host_pids.join("cgroup.procs").exists() {
        return skip("a cgroup v1 behaviour, and this host has no v1 pids hierarchy");
    }
    // pids is real (v1), memory is absent: the pids group is made first, then the
    // memory controller is refused and the pids group must go again.
    let v1 = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(host_pids, v1.path().join("pids")).unwrap();
    let v2 = tempfile::tempdir().unwrap();
    let name = unique_name("halfmade");
    let limits = CgroupLimits {
        pids_max: Some(16),
        memory_max_bytes: Some(64 * MIB),
        ..Default::default()
    };
    let err = TreeCgroup::create_under(v2.path(), v1.path(), &name, &limits).unwrap_err();
    assert!(
        matches!(
            err,
            CgroupError::ControllerUnavailable {
                controller: "memory",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        !host_pids.join("airlock").join(&name).exists(),
        "pids group left behind"
    );
}

#[test]
fn group_names_that_could_escape_or_collide_are_refused() {
    let v2 = tempfile::tempdir().unwrap();
    let v1 = tempfile::tempdir().unwrap();
    let limits = CgroupLimits {
        pids_max: Some(16),
        ..Default::default()
    };
    let long = "a".repeat(65);
    for bad in [
        "",
        ".",
        "..",
        "../escape",
        "a/b",
        "/abs",
        "cgroup.procs",
        "a b",
        "tab\t",
        "nul\0",
        "é",
        long.as_str(),
    ] {
        let err = TreeCgroup::create_under(v2.path(), v1.path(), bad, &limits).unwrap_err();
        assert!(
            matches!(err, CgroupError::InvalidName(ref n) if n == bad),
            "{bad:?}: {err}"
        );
        let err = TreeCgroup::create_on_host(bad, &limits).unwrap_err();
        assert!(matches!(err, CgroupError::InvalidName(_)), "{bad:?}: {err}");
    }
    // The longest valid name passes validation (and then fails on the missing controller).
    let err = TreeCgroup::create_under(v2.path(), v1.path(), &"Az09_-".repeat(10)[..60], &limits)
        .unwrap_err();
    assert!(
        matches!(err, CgroupError::ControllerUnavailable { .. }),
        "{err}"
    );
    let err = TreeCgroup::create_under(v2.path(), v1.path(), &"x".repeat(64), &limits).unwrap_err();
    assert!(
        matches!(err, CgroupError::ControllerUnavailable { .. }),
        "{err}"
    );
    assert!(entries(v2.path()).is_empty() && entries(v1.path()).is_empty());
}
