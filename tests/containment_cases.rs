//! The containment table (`tests/cases/containment.toml`), shared by the process-mode
//! suite (`containment.rs`) and the same table inside VMs (`vm_containment.rs`,
//! `#[path]`-included): its types, the fresh scratch trees every run gets, the token
//! substitution and the judgement of a run.
#![allow(dead_code)]

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    pub case: Vec<Case>,
    pub bad_input: Vec<BadInput>,
}

/// A manifest the sandbox cannot apply: refused with `stderr`, nothing runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadInput {
    pub id: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default)]
    pub mounts: Vec<String>,
    pub stderr: String,
}

/// An attack and its allowed neighbour.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub id: String,
    pub reason: String,
    pub attack: RunSpec,
    pub allowed: RunSpec,
    /// The attack's move made without any sandbox, by the process-mode runner on the
    /// host as an unprivileged user: shows that what stops the attack is the sandbox,
    /// not the kernel or the host as they are. VMs cannot run outside their sandbox;
    /// there the case's `vm` variant says why its errno is the stated wall's.
    pub control: Option<RunSpec>,
    /// How the case differs inside a VM, if it does.
    pub vm: Option<VmVariant>,
}

/// A case inside a VM: the same attack may fail by another wall (the reason says
/// which), with the runs given here replacing the table's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmVariant {
    pub reason: String,
    pub attack: Option<RunSpec>,
    pub allowed: Option<RunSpec>,
}

/// One run: what to start and what must come of it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub argv: Vec<String>,
    #[serde(default)]
    pub mounts: Vec<String>,
    pub tools: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: BTreeMap<String, u64>,
    #[serde(default)]
    pub exit: i32,
    pub stdout: Option<String>,
    pub stdout_lacks: Option<String>,
    pub stderr: Option<String>,
    pub host_absent: Option<String>,
    /// A path under @work that must exist afterwards (controls: the attack worked).
    pub host_present: Option<String>,
    /// A host path that must exist for the run to mean anything (e.g. the device an
    /// attack expects the sandbox to hide): checked before the run is judged.
    pub host_exists: Option<String>,
    /// The session's memory cgroup must have OOM-killed a process during the run:
    /// process mode reads the `oom_kill` counter of the session's memory cgroup
    /// (`memory.events` on cgroup2, `memory.oom_control` on v1) while the session is
    /// alive; a VM runner reads the guest kernel's console, which says `Memory cgroup
    /// out of memory: Killed process` for a memory cgroup's OOM kill only.
    #[serde(default)]
    pub oom_kill: bool,
}

/// The tools a run gets unless it names its own.
pub const DEFAULT_TOOLS: [&str; 2] = ["cat", "git"];

impl RunSpec {
    /// The tools granted to this run.
    pub fn granted_tools(&self) -> Vec<String> {
        self.tools
            .clone()
            .unwrap_or_else(|| DEFAULT_TOOLS.iter().map(|t| t.to_string()).collect())
    }
}

/// The workspace checkout.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The suite's policy file.
pub fn policy_path() -> PathBuf {
    workspace_root().join("tests/cases/containment-policy.toml")
}

pub fn load() -> CasesFile {
    let path = workspace_root().join("tests/cases/containment.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where the tokens of the table point in one kind of sandbox.
pub struct Tokens {
    /// `@probe`: the hostile probe as the sandbox sees it.
    pub probe: String,
    /// `@shims`: the agent's shim directory.
    pub shims: String,
}

/// Fresh scratch trees for one run: work (file.txt, a git repo with a hook git would
/// run if it looked in `.git/hooks`, leaving `message` in the work tree), docs
/// (readme), secret (key).
pub struct Scratch {
    _dir: tempfile::TempDir,
    pub base: PathBuf,
}

impl Scratch {
    /// `argv`/mount text with every token replaced (`@secret` and `@work` are host
    /// paths: the secret tree is never shared, so its path must not resolve inside).
    pub fn subst(&self, t: &Tokens, w: &str) -> String {
        w.replace("@probe", &t.probe)
            .replace("@shims", &t.shims)
            .replace("@secret", &self.base.join("secret").display().to_string())
            .replace("@work", &self.base.join("work").display().to_string())
    }
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdout(Stdio::null())
        .status()
        .expect("git on the host");
    assert!(st.success(), "host git {args:?} failed");
}

pub fn scratch() -> Scratch {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let work = base.join("work");
    for d in ["work", "docs", "secret"] {
        std::fs::create_dir(base.join(d)).unwrap();
    }
    std::fs::write(work.join("file.txt"), "hello from the workspace\n").unwrap();
    std::fs::write(base.join("docs/readme"), "read me\n").unwrap();
    std::fs::write(base.join("secret/key"), "TOPSECRET\n").unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(
        &work,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@x",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "initial",
        ],
    );
    // The hook is the system's own `touch`, by a symbolic link: git would run it as
    // `prepare-commit-msg .git/COMMIT_EDITMSG message` (for `commit -m`), in the top of
    // the work tree, so it touches `message` there and the commit goes on. It is on no
    // noexec mount; what keeps git from running it is where git looks for hooks (and
    // git's execution profile, which does not list /usr/bin/touch).
    std::fs::create_dir_all(work.join(".git/hooks")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/touch", work.join(".git/hooks/prepare-commit-msg"))
        .unwrap();
    Scratch { _dir: dir, base }
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// OOM kills the session's memory cgroup recorded during the run, when the runner
    /// looked (runs with `oom_kill`); `None` when it could not find them.
    pub oom_kills: Option<u64>,
}

/// What is wrong with a run, if anything.
pub fn judge(spec: &RunSpec, r: &Ran, s: &Scratch) -> Vec<String> {
    let mut wrong = Vec::new();
    if let Some(p) = &spec.host_exists {
        if std::fs::symlink_metadata(p).is_err() {
            wrong.push(format!(
                "precondition: {p} does not exist on this host, so the run proves nothing here"
            ));
        }
    }
    if r.code != spec.exit {
        wrong.push(format!("exit {} (expected {})", r.code, spec.exit));
    }
    if let Some(want) = &spec.stdout {
        // The probe's verdicts are whole lines (`errno=1` must not match `errno=111`).
        let verdict = want == "ok" || want.starts_with("errno=");
        let found = if verdict {
            r.stdout.lines().any(|l| l.trim() == want)
        } else {
            r.stdout.contains(want.as_str())
        };
        if !found {
            wrong.push(format!("stdout lacks {want:?}"));
        }
    }
    if let Some(bad) = &spec.stdout_lacks {
        if r.stdout.contains(bad.as_str()) {
            wrong.push(format!("stdout contains {bad:?}"));
        }
    }
    if let Some(want) = &spec.stderr {
        if !r.stderr.contains(want.as_str()) {
            wrong.push(format!("stderr lacks {want:?}"));
        }
    }
    if let Some(p) = &spec.host_absent {
        if s.base.join("work").join(p).exists() {
            wrong.push(format!("{p} appeared in the workspace on the host"));
        }
    }
    if let Some(p) = &spec.host_present {
        if std::fs::symlink_metadata(s.base.join("work").join(p)).is_err() {
            wrong.push(format!("{p} did not appear in the workspace on the host"));
        }
    }
    if spec.oom_kill {
        match r.oom_kills {
            None => wrong.push("the session's memory cgroup (its OOM count) was not found".into()),
            Some(0) => wrong.push("the session's memory cgroup recorded no OOM kill".into()),
            Some(_) => {}
        }
    }
    wrong
}

/// Whether `spec` expects something that shows the attack failed.
pub fn expects_a_failure(a: &RunSpec) -> bool {
    a.exit != 0
        || a.stdout.as_deref().is_some_and(|s| s.starts_with("errno="))
        || a.stdout_lacks.is_some()
        || a.host_absent.is_some()
        || a.stdout.as_deref() == Some("refused")
        || a.oom_kill
}

/// The bad input as a run: exit 125, its message, and no `ran` marker.
pub fn bad_input_spec(bad: &BadInput) -> RunSpec {
    RunSpec {
        argv: bad.argv.clone(),
        mounts: bad.mounts.clone(),
        tools: (!bad.tools.is_empty()).then(|| bad.tools.clone()),
        exit: 125,
        stderr: Some(bad.stderr.clone()),
        host_absent: Some("ran".into()),
        ..Default::default()
    }
}
