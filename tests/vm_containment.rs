//! The containment table (`tests/cases/containment.toml`) inside real VMs: every case's
//! attack must fail and its allowed neighbour must work in a QEMU microvm guest on the
//! `debian` image, through `airlock_launcher::Launcher` (policy → signed manifest →
//! boot → the enforcer as PID 1 → the agent), with the static hostile probe added to
//! the image (`image build --add`) as the agent's entrypoint.
//!
//! Where a VM stops an attack by another wall than process mode does (the guest's
//! `/dev` is a devtmpfs whose other devices Landlock refuses, its root is an overlay the
//! agent's uid may not write), the case carries a `vm` variant saying so; every other
//! case runs exactly as written. An attack and its neighbour share one session when
//! their plans are the same (that halves the boots); each run still gets judged on its
//! own. A case's `control` (its attack outside any sandbox) is process mode's: in a
//! guest every command runs in the sandbox, so the `vm` variant says instead why the
//! errno is the stated wall's. An expected OOM kill is read from the guest kernel's
//! console, the host having no view of the guest's cgroup files.

#[path = "containment_cases.rs"]
mod containment_cases;
#[path = "vm_support.rs"]
mod vm_support;

use airlock_launcher::image::{build, AddedFile, Profile};
use airlock_launcher::launcher::{ExecEnd, ExecSpec, Launcher, Session};
use airlock_launcher::plan::Plan;
use airlock_launcher::policy::Policy;
use containment_cases::{
    bad_input_spec, judge, load, policy_path, scratch, Ran, RunSpec, Scratch, Tokens,
};
use std::sync::Arc;
use vm_support::{require_present, setup, workspace_root};

/// Where the image build puts the probe (outside every tool dir: it is no tool).
const PROBE_IN_GUEST: &str = "/opt/airlock-tests/hostile_probe";
/// Sessions booting at once: one per core.
const PARALLEL_SESSIONS: usize = 2;

fn tokens() -> Tokens {
    Tokens {
        probe: PROBE_IN_GUEST.into(),
        shims: "/usr/lib/airlock/bin".into(),
    }
}

/// The plan of a run, as `airlock run` would build it from the same flags: the work
/// tree rw at /workspace (also the cwd), docs ro at /docs, the run's extra mounts,
/// tools, environment and resources.
fn plan_text(spec: &RunSpec, s: &Scratch) -> Result<String, String> {
    let t = tokens();
    let mut plan = toml::map::Map::new();
    let argv: Vec<String> = spec.argv.iter().map(|w| s.subst(&t, w)).collect();
    plan.insert("command".into(), toml::Value::try_from(&argv).unwrap());
    plan.insert("cwd".into(), "/workspace".into());
    plan.insert("env".into(), toml::Value::try_from(&spec.env).unwrap());
    plan.insert(
        "tools".into(),
        toml::Value::try_from(spec.granted_tools()).unwrap(),
    );
    let mut mounts = vec![
        format!("{}:/workspace:rw", s.base.join("work").display()),
        format!("{}:/docs:ro", s.base.join("docs").display()),
    ];
    mounts.extend(spec.mounts.iter().map(|m| s.subst(&t, m)));
    let mut tables = Vec::new();
    for m in &mounts {
        let mut parts = m.rsplitn(3, ':');
        let (mode, guest, host) = (parts.next(), parts.next(), parts.next());
        let (Some(mode), Some(guest), Some(host)) = (mode, guest, host) else {
            return Err(format!("mount `{m}` is not HOST:GUEST:MODE"));
        };
        let mut t = toml::map::Map::new();
        t.insert("host".into(), host.into());
        t.insert("guest".into(), guest.into());
        t.insert("mode".into(), mode.into());
        tables.push(toml::Value::Table(t));
    }
    plan.insert("mounts".into(), toml::Value::Array(tables));
    let res: toml::map::Map<String, toml::Value> = spec
        .resources
        .iter()
        .map(|(k, v)| (k.clone(), toml::Value::Integer(*v as i64)))
        .collect();
    plan.insert("resources".into(), toml::Value::Table(res));
    Ok(toml::to_string(&plan).unwrap())
}

/// Whether `allowed` can run in the session made for `attack`: the same plan but for
/// the command, and a command that session may run.
fn shares_a_session(attack: &RunSpec, allowed: &RunSpec) -> bool {
    let argv0 = allowed.argv[0].as_str();
    attack.mounts == allowed.mounts
        && attack.granted_tools() == allowed.granted_tools()
        && attack.env == allowed.env
        && attack.resources.is_empty()
        && allowed.resources.is_empty()
        && (argv0 == attack.argv[0] || allowed.granted_tools().iter().any(|t| t == argv0))
}

fn refused(e: impl std::fmt::Display, code: i32) -> Ran {
    Ran {
        code,
        stdout: String::new(),
        stderr: e.to_string(),
        oom_kills: None,
    }
}

/// What the guest kernel prints on its console (at `quiet`'s level too: an error) when
/// a memory cgroup's OOM killer kills a process; a whole-VM OOM says `Out of memory:`.
/// The agent cannot forge it: the console is no device it may open, and its output
/// reaches the host over vsock, not the serial line.
const MEMCG_OOM_KILL_LINE: &str = "Memory cgroup out of memory: Killed process";

fn memcg_oom_kills_on_console(session: &Session) -> u64 {
    session.serial_output().matches(MEMCG_OOM_KILL_LINE).count() as u64
}

async fn create(launcher: &Launcher, spec: &RunSpec, s: &Scratch) -> Result<Session, Ran> {
    let text = plan_text(spec, s).map_err(|e| refused(e, 125))?;
    let plan = Plan::parse("plan.toml", &text, false).map_err(|e| refused(e, 125))?;
    launcher
        .create_session(&plan)
        .await
        .map_err(|e| refused(&e, e.exit_code()))
}

/// Runs `spec`'s command in `session` as `airlock run` would report it.
async fn exec(session: &mut Session, spec: &RunSpec, s: &Scratch) -> Ran {
    let t = tokens();
    let argv: Vec<String> = spec.argv.iter().map(|w| s.subst(&t, w)).collect();
    let kills_before = memcg_oom_kills_on_console(session);
    let exec_spec = ExecSpec {
        argv,
        ..Default::default()
    };
    let (end, stdout, mut stderr) = vm_support::run_captured(session, exec_spec).await;
    let code = match end {
        Ok(ExecEnd::Stopped(why)) => {
            stderr.push_str(&format!(
                "\nairlock: the sandbox stopped the command: {why}"
            ));
            airlock_proto::shell_status::EXIT_WALL_TIME
        }
        Ok(end) => end.exit_code(),
        Err(e) => {
            stderr.push_str(&e.to_string());
            e.exit_code()
        }
    };
    // The host cannot read the guest's cgroup files; the guest kernel's own record of
    // the kill is on its console, which QEMU writes to the serial log as it comes.
    let oom_kills = if spec.oom_kill {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let kills = memcg_oom_kills_on_console(session).saturating_sub(kills_before);
            if kills > 0 || tokio::time::Instant::now() >= deadline {
                break Some(kills);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    } else {
        None
    };
    Ran {
        code,
        stdout,
        stderr,
        oom_kills,
    }
}

/// One unit of work: runs in one session where they can, each judged on its own.
struct Job {
    label: String,
    runs: Vec<(&'static str, RunSpec)>,
    /// A bad input: the session must not even start.
    bad_input: bool,
}

fn report(label: &str, role: &str, spec: &RunSpec, r: &Ran, s: &Scratch) -> Option<String> {
    let wrong = judge(spec, r, s);
    (!wrong.is_empty()).then(|| {
        format!(
            "{label} ({role}): {}\n    stdout: {:?}\n    stderr: {:?}",
            wrong.join(", "),
            r.stdout.trim(),
            r.stderr.trim()
        )
    })
}

/// Whatever the run left in the workspace's write layer goes through the merge-back
/// gate before the host tree is judged, as `airlock run` does: a `host_absent` check
/// then sees what an attack would have left on the host, not an untouched lower layer.
async fn merge_back(
    sess: &mut airlock_launcher::launcher::Session,
    label: &str,
    role: &str,
) -> Option<String> {
    sess.merge(airlock_launcher::merge_gate::MergeMode::Apply)
        .await
        .err()
        .map(|e| format!("{label} ({role}): merge: {e}"))
}

async fn run_job(launcher: &Launcher, job: &Job) -> Vec<String> {
    let mut failures = Vec::new();
    let s = scratch();
    if job.bad_input {
        let (role, spec) = &job.runs[0];
        let r = match create(launcher, spec, &s).await {
            Ok(session) => {
                let _ = session.destroy().await;
                refused("the session started", 0)
            }
            Err(r) => r,
        };
        failures.extend(report(&job.label, role, spec, &r, &s));
        return failures;
    }
    let (role, first) = &job.runs[0];
    let mut session = match create(launcher, first, &s).await {
        Ok(session) => Some(session),
        Err(r) => {
            failures.extend(report(&job.label, role, first, &r, &s));
            None
        }
    };
    if let Some(sess) = session.as_mut() {
        let r = exec(sess, first, &s).await;
        failures.extend(merge_back(sess, &job.label, role).await);
        failures.extend(report(&job.label, role, first, &r, &s));
    }
    for (role, spec) in &job.runs[1..] {
        // A refused first run leaves no session to share: the neighbour gets its own.
        let own;
        let sess = match session.as_mut() {
            Some(sess) => sess,
            None => match create(launcher, spec, &s).await {
                Ok(new) => {
                    own = session.insert(new);
                    own
                }
                Err(r) => {
                    failures.extend(report(&job.label, role, spec, &r, &s));
                    continue;
                }
            },
        };
        let r = exec(sess, spec, &s).await;
        failures.extend(merge_back(sess, &job.label, role).await);
        failures.extend(report(&job.label, role, spec, &r, &s));
    }
    if let Some(sess) = session {
        if let Err(e) = sess.destroy().await {
            failures.push(format!("{}: destroy: {e}", job.label));
        }
    }
    failures
}

fn jobs() -> Vec<Job> {
    let file = load();
    let mut jobs = Vec::new();
    for case in file.case {
        let vm = case.vm.as_ref();
        let attack = vm
            .and_then(|v| v.attack.clone())
            .unwrap_or_else(|| case.attack.clone());
        let allowed = vm
            .and_then(|v| v.allowed.clone())
            .unwrap_or_else(|| case.allowed.clone());
        let label = format!("{} ({})", case.id, vm.map_or(&case.reason, |v| &v.reason));
        if shares_a_session(&attack, &allowed) {
            jobs.push(Job {
                label,
                runs: vec![("attack", attack), ("allowed", allowed)],
                bad_input: false,
            });
        } else {
            for (role, spec) in [("attack", attack), ("allowed", allowed)] {
                jobs.push(Job {
                    label: label.clone(),
                    runs: vec![(role, spec)],
                    bad_input: false,
                });
            }
        }
    }
    // VM-only: the debian image's `/var/run` is a symlink to `/run`, where the broker's
    // socket lives; a share must not land there through it.
    jobs.push(Job {
        label: "bad input share-through-symlink (VM)".into(),
        runs: vec![(
            "refused",
            RunSpec {
                argv: vec!["@probe".into(), "write".into(), "/workspace/ran".into()],
                mounts: vec!["@work:/var/run/airlock-share:ro".into()],
                exit: 125,
                stderr: Some("goes through a symbolic link".into()),
                host_absent: Some("ran".into()),
                ..Default::default()
            },
        )],
        bad_input: true,
    });
    for bad in &file.bad_input {
        jobs.push(Job {
            label: format!("bad input {}", bad.id),
            runs: vec![("refused", bad_input_spec(bad))],
            bad_input: true,
        });
    }
    jobs
}

#[test]
fn every_case_has_a_vm_run_the_launcher_accepts() {
    let jobs = jobs();
    let file = load();
    assert!(jobs.len() >= file.case.len() + file.bad_input.len());
    // The sharing rule must halve the boots for most cases, or the suite gets slow.
    let shared = jobs.iter().filter(|j| j.runs.len() == 2).count();
    assert!(
        shared * 2 > file.case.len(),
        "only {shared} cases share a session"
    );
    let s = scratch();
    for j in &jobs {
        for (_, spec) in &j.runs {
            let text = plan_text(spec, &s).unwrap();
            if !j.bad_input {
                Plan::parse("plan.toml", &text, false)
                    .unwrap_or_else(|e| panic!("{}: {e}\n{text}", j.label));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_fails_in_a_vm_and_every_neighbour_works() {
    let dir = tempfile::tempdir().unwrap();
    let (mut inputs, tools) = setup(dir.path());
    let probe = workspace_root().join("target/x86_64-unknown-linux-musl/release/hostile_probe");
    require_present(&[&probe]);
    inputs.added = vec![AddedFile {
        host: probe,
        guest: PROBE_IN_GUEST.into(),
    }];
    let (image, _) = build(Profile::Debian, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        image
            .added
            .iter()
            .any(|a| a.path == PROBE_IN_GUEST && a.mode == 0o755),
        "{:?}",
        image.added
    );
    let policy = Policy::load(&policy_path()).unwrap_or_else(|e| panic!("{e}"));
    let launcher = vm_support::qemu_launcher(dir.path(), image, policy, tools);
    let launcher = Arc::new(launcher);
    let jobs = Arc::new(jobs());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..PARALLEL_SESSIONS {
        let (launcher, jobs, next) = (launcher.clone(), jobs.clone(), next.clone());
        workers.spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(job) = jobs.get(i) else {
                    return failures;
                };
                failures.extend(run_job(&launcher, job).await);
            }
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = workers.join_next().await {
        failures.extend(done.expect("a worker panicked"));
    }
    let left: Vec<_> = std::fs::read_dir(dir.path().join("vms"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if !left.is_empty() {
        failures.push(format!("VM directories left behind: {left:?}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} runs failed in a VM:\n{}",
        failures.len(),
        jobs.iter().map(|j| j.runs.len()).sum::<usize>(),
        failures.join("\n")
    );
}
