//! The containment suite: `tests/cases/containment.toml` run through the real
//! `airlock run --isolation process` (launcher → signed manifest → enforcer →
//! namespaces and every layer → the hostile probe or a tool through its shim).
//!
//! Each case has an attack that must fail in the stated way and an allowed neighbour
//! that must work under the same policy, so a case fails if the sandbox is too loose
//! *or* if it only "passes" because everything is broken. Needs root (process isolation
//! maps the agent to its own uid and idmaps its mounts); skipped with a reason otherwise.

#[path = "containment_cases.rs"]
mod containment_cases;

use containment_cases::{
    bad_input_spec, expects_a_failure, judge, load, policy_path, scratch, Ran, RunSpec, Scratch,
    Tokens,
};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `target/<profile>/` where cargo put the binaries of this build.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

/// The tests of this file run sessions one at a time: they watch session cgroups.
static SESSIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_session_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SESSIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why this machine cannot run the suite, if it cannot: only not being root (process
/// isolation maps uids and idmaps mounts). Everything else it needs is asserted: a
/// missing binary or a kernel below the enforcer's Landlock ABI is a broken set-up.
fn skip_reason() -> Option<String> {
    if !airlock_tests::running_as_root() {
        return Some("process isolation needs root (it maps uids and idmaps mounts)".into());
    }
    assert!(
        airlock_enforcer::landlock::kernel_abi() >= airlock_enforcer::landlock::MIN_ABI,
        "this kernel's Landlock ABI is below the enforcer's minimum"
    );
    // `make test` (and `cargo test --workspace`) builds them.
    for b in [
        "airlock",
        "airlock-enforcer",
        "airlock-shim",
        "hostile_probe",
    ] {
        assert!(
            bin_dir().join(b).is_file(),
            "{} is not built (run `cargo build --workspace` first)",
            bin_dir().join(b).display()
        );
    }
    None
}

/// `airlock run --isolation process --policy <the suite's policy>`, to be completed.
fn airlock_run_process() -> Command {
    let mut cmd = Command::new(bin_dir().join("airlock"));
    cmd.args(["run", "--isolation", "process", "--policy"])
        .arg(policy_path());
    cmd
}

/// Where the table's tokens point in process mode.
fn tokens() -> Tokens {
    Tokens {
        probe: bin_dir().join("hostile_probe").display().to_string(),
        shims: "/run/airlock/bin".into(),
    }
}

// ------------------------------------------------------------- session cgroups -----
//
// Where a session's cgroups are is the kernel's word, not a guess: the hierarchies are
// what /proc/self/mountinfo lists (cgroup v1 controllers, cgroup2 at /sys/fs/cgroup or
// /sys/fs/cgroup/unified, whatever the host has), and a live session's groups are what
// /proc/<agent>/cgroup names, mapped onto those mounts.

/// A mounted cgroup hierarchy.
#[derive(Debug)]
struct Hierarchy {
    /// The directory of the hierarchy the mount shows (`/` unless a subtree is mounted).
    root: String,
    /// Where it is mounted.
    mount: PathBuf,
    /// cgroup v1: the super options (its controllers, `name=`); cgroup2: `None`.
    v1_options: Option<Vec<String>>,
}

/// Every cgroup hierarchy mounted in this mount namespace.
fn hierarchies() -> Vec<Hierarchy> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let unescape = |f: &str| {
        let mut out = String::new();
        let mut rest = f;
        while let Some(i) = rest.find('\\') {
            out.push_str(&rest[..i]);
            let code = rest
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok());
            match code {
                Some(c) => {
                    out.push(c as char);
                    rest = &rest[i + 4..];
                }
                None => {
                    out.push('\\');
                    rest = &rest[i + 1..];
                }
            }
        }
        out.push_str(rest);
        out
    };
    text.lines()
        .filter_map(|line| {
            let (mount_part, fs_part) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount_part.split(' ').collect();
            let mut fs = fs_part.split(' ');
            let (fstype, _source, options) = (fs.next()?, fs.next()?, fs.next().unwrap_or(""));
            let v1_options = match fstype {
                "cgroup2" => None,
                "cgroup" => Some(options.split(',').map(String::from).collect()),
                _ => return None,
            };
            Some(Hierarchy {
                root: unescape(fields.get(3)?),
                mount: PathBuf::from(unescape(fields.get(4)?)),
                v1_options,
            })
        })
        .collect()
}

/// Whether `name` is a session's group: `s` and the 32 hex digits of its id.
fn is_session_group(name: &str) -> bool {
    name.len() == 33 && name.starts_with('s') && name[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The directories of `pid`'s cgroups, one per hierarchy /proc/<pid>/cgroup lists
/// (empty when the process is gone).
fn cgroup_dirs_of(pid: i32, hs: &[Hierarchy]) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return vec![];
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let h = hs.iter().find(|h| match &h.v1_options {
                None => controllers.is_empty(),
                Some(opts) => {
                    !controllers.is_empty()
                        && controllers.split(',').all(|c| opts.iter().any(|o| o == c))
                }
            })?;
            let inside = Path::new(path).strip_prefix(&h.root).ok()?;
            Some(h.mount.join(inside))
        })
        .collect()
}

/// Every directory named `s<session>` in every mounted cgroup hierarchy, at any depth.
fn session_groups(session: &str) -> Vec<PathBuf> {
    let name = format!("s{session}");
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = hierarchies().into_iter().map(|h| h.mount).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_str() == Some(name.as_str()) {
                found.push(e.path());
            }
            stack.push(e.path());
        }
    }
    found.sort();
    found.dedup();
    found
}

/// `root` and every process descended from it.
fn process_tree(root: u32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut tree = vec![root as i32];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// The session groups (`…/s<id>`) the processes under `root` are in, in every hierarchy.
fn session_groups_of_tree(root: u32, hs: &[Hierarchy]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = process_tree(root)
        .into_iter()
        .flat_map(|pid| cgroup_dirs_of(pid, hs))
        .filter(|d| {
            d.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_session_group)
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// The `oom_kill` count of a memory cgroup: `memory.events` (cgroup2) or
/// `memory.oom_control` (v1); `None` if `dir` has neither (not a memory group, or gone).
fn oom_kill_count(dir: &Path) -> Option<u64> {
    ["memory.events", "memory.oom_control"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// What the runner saw of a session while it ran (runs with `oom_kill` only).
#[derive(Default)]
struct Watched {
    /// The session's groups, from its processes' /proc/<pid>/cgroup.
    groups: Vec<PathBuf>,
    /// What [`session_groups`] found for the same session at that moment.
    scanned: Vec<PathBuf>,
    /// The highest `oom_kill` count of the session's memory group.
    oom_kills: Option<u64>,
}

/// Watches the session under `root` until its memory group has recorded an OOM kill
/// (or `limit` passes, or the session ends), then closes the agent's stdin so it can
/// end: `hog-child` holds the session open until then, so the counter is read before
/// the session's teardown removes the group.
fn watch_oom(root: u32, stdin: std::process::ChildStdin, limit: std::time::Duration) -> Watched {
    let hs = hierarchies();
    let deadline = std::time::Instant::now() + limit;
    let mut w = Watched::default();
    while std::time::Instant::now() < deadline {
        if w.groups.is_empty() {
            let groups = session_groups_of_tree(root, &hs);
            if let Some(first) = groups.first() {
                let session = first.file_name().unwrap().to_string_lossy()[1..].to_string();
                w.scanned = session_groups(&session);
                w.groups = groups;
            }
        } else if w.groups.iter().all(|g| !g.exists()) {
            break; // the session is over
        }
        if let Some(n) = w.groups.iter().find_map(|g| oom_kill_count(g)) {
            w.oom_kills = Some(w.oom_kills.map_or(n, |m| m.max(n)));
            if n > 0 {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(stdin);
    w
}

/// A run through `airlock run --isolation process`, and what else the runner learnt.
struct Outcome {
    ran: Ran,
    /// From the `--json` summary (absent when airlock started no session).
    session: Option<String>,
    watched: Option<Watched>,
}

fn run(spec: &RunSpec, s: &Scratch) -> Outcome {
    let t = tokens();
    let subst = |w: &str| s.subst(&t, w);
    let argv: Vec<String> = spec.argv.iter().map(|w| subst(w)).collect();
    let extra_mounts: Vec<String> = spec.mounts.iter().map(|w| subst(w)).collect();
    let mut cmd = airlock_run_process();
    // The summary names the session, so its cgroups can be looked for afterwards. A
    // plan the policy denies (exit 4) starts no session, and --json would turn its
    // refusal into a report on stdout: such runs are not asked for it.
    if spec.exit != 4 {
        cmd.arg("--json");
    }
    cmd.arg("--mount")
        .arg(format!("{}:/workspace:rw", s.base.join("work").display()))
        .arg("--mount")
        .arg(format!("{}:/docs:ro", s.base.join("docs").display()));
    for m in &extra_mounts {
        cmd.args(["--mount", m]);
    }
    for t in spec.granted_tools() {
        cmd.args(["--tool", &t]);
    }
    if !spec.env.is_empty() || !spec.resources.is_empty() {
        let mut plan = toml::map::Map::new();
        plan.insert("command".into(), toml::Value::try_from(&argv).unwrap());
        plan.insert("cwd".into(), "/workspace".into());
        plan.insert("env".into(), toml::Value::try_from(&spec.env).unwrap());
        let res: toml::map::Map<String, toml::Value> = spec
            .resources
            .iter()
            .map(|(k, v)| (k.clone(), toml::Value::Integer(*v as i64)))
            .collect();
        plan.insert("resources".into(), toml::Value::Table(res));
        let path = s.base.join("plan.toml");
        std::fs::write(&path, toml::to_string(&plan).unwrap()).unwrap();
        cmd.arg("--plan").arg(path);
    }
    cmd.arg("--").args(&argv);
    let (out, watched) = if spec.oom_kill {
        // The agent's stdin stays open until the watcher has read the counter.
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run airlock");
        let stdin = child.stdin.take().unwrap();
        let watched = watch_oom(child.id(), stdin, std::time::Duration::from_secs(60));
        (
            child.wait_with_output().expect("run airlock"),
            Some(watched),
        )
    } else {
        (
            cmd.stdin(Stdio::null()).output().expect("run airlock"),
            None,
        )
    };
    // The summary is stderr's last line; the table judges what comes before it.
    let all = String::from_utf8_lossy(&out.stderr).into_owned();
    let (before, last) = all
        .trim_end()
        .rsplit_once('\n')
        .unwrap_or(("", all.trim_end()));
    let summary = serde_json::from_str::<serde_json::Value>(last).ok();
    let session = summary
        .as_ref()
        .and_then(|v| v["session_id"].as_str())
        .map(String::from);
    let stderr = match session {
        Some(_) => before.to_string(),
        None => all.clone(),
    };
    Outcome {
        ran: Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
            oom_kills: watched.as_ref().and_then(|w| w.oom_kills),
        },
        session,
        watched,
    }
}

/// A case's control: the attack's move on the host, outside any sandbox, as uid/gid
/// 65534 without groups or capabilities, in its own scratch trees (theirs), with @work
/// as its working directory.
fn run_control(spec: &RunSpec, s: &Scratch) -> Ran {
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&s.base)
        .status()
        .expect("chown");
    assert!(st.success(), "chown the control's scratch trees");
    let t = tokens();
    let argv: Vec<String> = spec.argv.iter().map(|w| s.subst(&t, w)).collect();
    let work = s.base.join("work");
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&work)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &work)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .envs(&spec.env)
        // std drops the supplementary groups when root sets a uid.
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("control {argv:?}: {e}"));
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        oom_kills: None,
    }
}

fn load_cases() -> Vec<containment_cases::Case> {
    load().case
}

#[test]
fn the_cases_file_has_at_least_thirty_distinct_cases() {
    let cases = load_cases();
    let mut ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), cases.len(), "duplicate case ids");
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    for c in &cases {
        assert!(!c.reason.trim().is_empty(), "{}: no reason", c.id);
        assert!(
            expects_a_failure(&c.attack),
            "{}: the attack expects nothing that shows it failed",
            c.id
        );
        if let Some(control) = &c.control {
            assert!(
                !control.argv[0].starts_with("@shims") && control.resources.is_empty(),
                "{}: a control runs on the host: no shims, no plan",
                c.id
            );
        }
        if let Some(vm) = &c.vm {
            assert!(
                !vm.reason.trim().is_empty(),
                "{}: vm variant without a reason",
                c.id
            );
            assert!(
                vm.attack.is_some() || vm.allowed.is_some(),
                "{}: vm variant changes nothing",
                c.id
            );
            if let Some(a) = &vm.attack {
                assert!(
                    expects_a_failure(a),
                    "{}: the VM attack expects no failure",
                    c.id
                );
            }
        }
    }
}

/// One failure line: what was wrong with a run, and what it printed.
fn failure(label: &str, wrong: &[String], r: &Ran) -> String {
    format!(
        "{label}: {}\n    stdout: {:?}\n    stderr: {:?}",
        wrong.join(", "),
        r.stdout.trim(),
        r.stderr.trim()
    )
}

/// What is wrong with what the runner saw of a session besides its output: groups it
/// left behind (looked for by its id in every mounted hierarchy), and for a watched
/// session, groups the scan would have missed.
fn session_problems(o: &Outcome) -> Vec<String> {
    let mut wrong = Vec::new();
    if let Some(id) = &o.session {
        let left = session_groups(id);
        if !left.is_empty() {
            wrong.push(format!("session cgroups left behind: {left:?}"));
        }
    }
    if let Some(w) = &o.watched {
        if w.groups.is_empty() {
            wrong.push("the session's cgroups were never seen while it ran".into());
        } else if w.scanned != w.groups {
            wrong.push(format!(
                "the session is in {:?}, but a scan of the mounted hierarchies found {:?}",
                w.groups, w.scanned
            ));
        }
        let named = w.groups.iter().all(|g| {
            o.session
                .as_ref()
                .is_some_and(|id| g.file_name() == Some(format!("s{id}").as_ref()))
        });
        if !named {
            wrong.push(format!(
                "the watched groups {:?} are not the session {:?} of the summary",
                w.groups, o.session
            ));
        }
    }
    wrong
}

#[test]
fn every_attack_fails_for_its_reason_and_every_neighbour_works() {
    if let Some(why) = skip_reason() {
        return airlock_tests::skip(&why);
    }
    let _one = one_session_at_a_time();
    // A host abstract socket the abstract-socket case tries to reach.
    let _listener = std::os::unix::net::UnixListener::bind_addr(
        &<std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            b"airlock-containment-test",
        )
        .unwrap(),
    )
    .expect("bind the host-side abstract socket");
    let outside = Command::new(bin_dir().join("hostile_probe"))
        .args(["abstract-connect", "airlock-containment-test"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&outside.stdout).trim(),
        "ok",
        "unconfined, the probe reaches the host's abstract socket"
    );
    let mut failures = Vec::new();
    let mut cases = load_cases();
    let filtered = std::env::var("AIRLOCK_CASES").is_ok();
    // For working on a few cases: AIRLOCK_CASES=id-substring (the suite stays whole
    // otherwise; a filtered run says so).
    if let Ok(only) = std::env::var("AIRLOCK_CASES") {
        cases.retain(|c| c.id.contains(&only));
        eprintln!("AIRLOCK_CASES={only}: running {} cases only", cases.len());
    }
    let mut watched = 0;
    for case in &cases {
        for (role, spec) in [("attack", &case.attack), ("allowed", &case.allowed)] {
            let s = scratch();
            let o = run(spec, &s);
            watched += usize::from(o.watched.is_some());
            let mut wrong = judge(spec, &o.ran, &s);
            wrong.extend(session_problems(&o));
            if !wrong.is_empty() {
                let label = format!("{} ({role}; {})", case.id, case.reason);
                failures.push(failure(&label, &wrong, &o.ran));
            }
        }
        if let Some(spec) = &case.control {
            let s = scratch();
            let r = run_control(spec, &s);
            let wrong = judge(spec, &r, &s);
            if !wrong.is_empty() {
                let label = format!(
                    "{} (control: the attack's move outside the sandbox, as uid 65534)",
                    case.id
                );
                failures.push(failure(&label, &wrong, &r));
            }
        }
    }
    for bad in &load().bad_input {
        let spec = bad_input_spec(bad);
        let s = scratch();
        let o = run(&spec, &s);
        let mut wrong = judge(&spec, &o.ran, &s);
        if !o.ran.stderr.contains("the agent did not run") {
            wrong.push("stderr does not say the agent did not run".into());
        }
        wrong.extend(session_problems(&o));
        if !wrong.is_empty() {
            failures.push(failure(&format!("bad input {}", bad.id), &wrong, &o.ran));
        }
    }
    // The leftover checks above look where the scan looks; at least one session was
    // watched live, its groups read from the kernel, and the scan found exactly those.
    assert!(
        watched > 0 || filtered,
        "no run watched its session's cgroups"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The launcher's process (as if the orchestrator died or was stopped): the session must
/// not outlive it, and nothing of it may stay behind.
#[test]
fn a_terminated_launcher_takes_its_session_down() {
    if let Some(why) = skip_reason() {
        return airlock_tests::skip(&why);
    }
    let _one = one_session_at_a_time();
    let s = scratch();
    let mut child = airlock_run_process()
        .arg("--json")
        .arg("--mount")
        .arg(format!("{}:/workspace:rw", s.base.join("work").display()))
        .arg("--")
        .arg(bin_dir().join("hostile_probe"))
        .args(["sleep", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the agent runs: the kernel lists it in its session's groups (one per
    // hierarchy the session uses), and each of those groups lists it.
    let hs = hierarchies();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let groups = loop {
        let groups = session_groups_of_tree(child.id(), &hs);
        let populated = !groups.is_empty()
            && groups.iter().all(|g| {
                std::fs::read_to_string(g.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
            });
        if populated {
            break groups;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let session = groups[0].file_name().unwrap().to_string_lossy()[1..].to_string();
    assert_eq!(
        session_groups(&session),
        groups,
        "a scan of the mounted hierarchies finds exactly the session's groups"
    );
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(!status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = session_groups(&session);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session's cgroups {left:?} outlived its launcher"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let leftover = Command::new("pgrep")
        .args(["-f", "hostile_probe sleep 60"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&leftover.stdout).trim().is_empty(),
        "the agent outlived its launcher"
    );
}

#[test]
fn json_summary_reports_the_session_and_its_exit_code() {
    if let Some(why) = skip_reason() {
        return airlock_tests::skip(&why);
    }
    let _one = one_session_at_a_time();
    let out = airlock_run_process()
        .arg("--json")
        .arg("--")
        .arg(bin_dir().join("hostile_probe"))
        .args(["exit-code", "7"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("last stderr line is not JSON ({e}): {stderr}"));
    assert_eq!(summary["exit_code"], 7);
    assert_eq!(summary["isolation"], "process");
    assert_eq!(summary["session_id"].as_str().map(str::len), Some(32));
}

/// The enforcer itself (not the launcher) is the one that refuses: a manifest bound to
/// another nonce, one signed by another key, or a mount source that is now a symlink
/// never gets a sandbox, and the would-be agent leaves no marker.
#[test]
fn the_enforcer_refuses_bad_manifests_and_moved_mount_sources() {
    use airlock_launcher::mint::{mint, MintOptions};
    use airlock_launcher::plan::Plan;
    use airlock_launcher::policy::Policy;
    use airlock_proto::envelope::Signer;
    use std::io::{Seek, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if let Some(why) = skip_reason() {
        return airlock_tests::skip(&why);
    }
    let _one = one_session_at_a_time();
    let s = scratch();
    let work = s.base.join("work");
    let policy = Policy::load(&policy_path()).unwrap_or_else(|e| panic!("{e}"));
    let probe = bin_dir().join("hostile_probe").display().to_string();
    let plan_text = format!(
        "command = [{probe:?}, \"write\", \"/workspace/ran\"]\n[[mounts]]\nhost = {:?}\nguest = \"/workspace\"\nmode = \"rw-live\"\n",
        work.display().to_string()
    );
    let plan = Plan::parse("plan.toml", &plan_text, false).unwrap_or_else(|e| panic!("{e}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let nonce = "00112233445566778899aabbccddeeff";
    let manifest = mint(
        &policy,
        &plan,
        &MintOptions {
            now,
            ttl_secs: 60,
            vm_cid: 3,
            image_id: "host-process-isolation".into(),
            nonce: Some(nonce.into()),
            session_id: None,
            approve_asks: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let signer = Signer::generate().unwrap();
    let other = Signer::generate().unwrap();
    let envelope = serde_json::to_vec(&signer.sign_manifest(&manifest).unwrap()).unwrap();
    let link = s.base.join("link-to-work");
    std::os::unix::fs::symlink(&work, &link).unwrap();

    let run = |verifier: &Signer, nonce: &str, source: &Path| {
        let file = |bytes: &[u8]| {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(bytes).unwrap();
            f.rewind().unwrap();
            f
        };
        let env_file = file(&envelope);
        let pub_file = file(verifier.verifier().to_public_key_pem().unwrap().as_bytes());
        let (e, p) = (env_file.as_raw_fd(), pub_file.as_raw_fd());
        let mut cmd = Command::new(bin_dir().join("airlock-enforcer"));
        cmd.arg("run-process")
            .args(["--envelope-fd", &e.to_string(), "--pub-fd", &p.to_string()])
            .args([
                "--cid",
                "3",
                "--image-id",
                "host-process-isolation",
                "--nonce",
                nonce,
            ])
            .args(["--session-id", &manifest.session_id])
            .arg("--shim")
            .arg(bin_dir().join("airlock-shim"))
            .arg("--source")
            .arg(format!("m0={}", source.display()))
            .stdin(Stdio::null());
        // SAFETY: fcntl between fork and exec, integer arguments only.
        unsafe {
            cmd.pre_exec(move || {
                for fd in [e, p] {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases: [(&str, &Signer, &str, &Path, &str); 3] = [
        (
            "other nonce",
            &signer,
            "ffeeddccbbaa99887766554433221100",
            &work,
            "nonce",
        ),
        ("other key", &other, nonce, &work, "key id"),
        (
            "symlinked source",
            &signer,
            nonce,
            &link,
            "without following symlinks",
        ),
    ];
    for (what, verifier, nonce, source, want) in cases {
        let (code, stderr) = run(verifier, nonce, source);
        assert_eq!(code, Some(125), "{what}: {stderr}");
        assert!(
            stderr.contains(want),
            "{what}: stderr lacks {want:?}: {stderr}"
        );
        assert!(!work.join("ran").exists(), "{what}: the agent ran");
    }
    // The same inputs, done right, run the agent: the refusals above were the checks.
    let (code, stderr) = run(&signer, nonce, &work);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(work.join("ran").exists());
}
