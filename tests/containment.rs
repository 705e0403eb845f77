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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `target/<profile>/` where cargo put the binaries of this build.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

/// The tests of this file run sessions one at a time: they count session cgroups.
static SESSIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_session_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SESSIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why this machine cannot run the suite, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        return Some("process isolation needs root (it maps uids and idmaps mounts)".into());
    }
    if airlock_enforcer::landlock::kernel_abi() < airlock_enforcer::landlock::MIN_ABI {
        return Some("this kernel's Landlock ABI is below the enforcer's minimum".into());
    }
    // Missing binaries are a broken build, not a reason to skip (`cargo test
    // --workspace` builds them).
    for b in ["airlock", "airlock-enforcer", "airlock-shim"] {
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

fn run(spec: &RunSpec, s: &Scratch) -> Ran {
    let t = tokens();
    let subst = |w: &str| s.subst(&t, w);
    let argv: Vec<String> = spec.argv.iter().map(|w| subst(w)).collect();
    let extra_mounts: Vec<String> = spec.mounts.iter().map(|w| subst(w)).collect();
    let mut cmd = airlock_run_process();
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
    let out = cmd
        .arg("--")
        .args(&argv)
        .stdin(Stdio::null())
        .output()
        .expect("run airlock");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn load_cases() -> Vec<containment_cases::Case> {
    load().case
}

/// Agent cgroups (`s<session>`) present under the pids hierarchy, if it is v1.
fn session_cgroups() -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup/pids/airlock")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('s') && e_is_session(n))
                .collect()
        })
        .unwrap_or_default()
}

fn e_is_session(name: &str) -> bool {
    name.len() == 33 && name[1..].bytes().all(|b| b.is_ascii_hexdigit())
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

#[test]
fn every_attack_fails_for_its_reason_and_every_neighbour_works() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
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
    let cases = load_cases();
    for case in &cases {
        for (role, spec) in [("attack", &case.attack), ("allowed", &case.allowed)] {
            let s = scratch();
            let r = run(spec, &s);
            let wrong = judge(spec, &r, &s);
            if !wrong.is_empty() {
                failures.push(format!(
                    "{} ({role}; {}): {}\n    stdout: {:?}\n    stderr: {:?}",
                    case.id,
                    case.reason,
                    wrong.join(", "),
                    r.stdout.trim(),
                    r.stderr.trim()
                ));
            }
        }
    }
    for bad in &load().bad_input {
        let spec = bad_input_spec(bad);
        let s = scratch();
        let r = run(&spec, &s);
        let mut wrong = judge(&spec, &r, &s);
        if !r.stderr.contains("the agent did not run") {
            wrong.push("stderr does not say the agent did not run".into());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "bad input {}: {}\n    stderr: {:?}",
                bad.id,
                wrong.join(", "),
                r.stderr.trim()
            ));
        }
    }
    let left = session_cgroups();
    if !left.is_empty() {
        failures.push(format!("session cgroups left behind: {left:?}"));
    }
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
        eprintln!("skipped: {why}");
        return;
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
    // Wait until the agent runs: its session cgroup exists and holds a process.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let group = loop {
        let found = session_cgroups().into_iter().find(|g| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/pids/airlock/{g}/cgroup.procs"))
                .is_ok_and(|p| !p.trim().is_empty())
        });
        if let Some(g) = found {
            break g;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(!status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&format!("/sys/fs/cgroup/pids/airlock/{group}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the session's cgroup {group} outlived its launcher"
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
        eprintln!("skipped: {why}");
        return;
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
        eprintln!("skipped: {why}");
        return;
    }
    let _one = one_session_at_a_time();
    let s = scratch();
    let work = s.base.join("work");
    let policy = Policy::load(&policy_path()).unwrap_or_else(|e| panic!("{e}"));
    let probe = bin_dir().join("hostile_probe").display().to_string();
    let plan_text = format!(
        "command = [{probe:?}, \"write\", \"/workspace/ran\"]\n[[mounts]]\nhost = {:?}\nguest = \"/workspace\"\nmode = \"rw\"\n",
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
