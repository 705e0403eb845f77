//! `airlock run --isolation process` end to end, against a baseline run side by side:
//! - time from `airlock run --isolation process -- /bin/true` to its exit vs a direct
//!   `/bin/true` (target: median ≤ 50 ms);
//! - peak RSS of the enforcer's processes (supervisor and sandbox init) during a
//!   session (target ≤ 10 MiB), with the launcher's for comparison.
//!
//! Needs root and the release binaries: `make bench` builds them first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const POLICY: &str = r#"
version = 1
default = "deny"
[[rule]]
id = "true"
decision = "allow"
reason = "bench"
match.tool = { program = "true" }
[[rule]]
id = "sleep"
decision = "allow"
reason = "bench"
match.tool = { program = "sleep" }
[[rule]]
id = "res"
decision = "allow"
reason = "bench"
match.resources = { vcpus = 1, memory_mib = 512, disk_mib = 256, pids = 256, wall_time_secs = 600 }
"#;

/// The bench's own state directory: its audit log starts empty and grows over the
/// bench's runs only, as a fresh launcher's would.
fn state_home() -> &'static Path {
    static STATE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    STATE.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn airlock(policy: &Path, argv: &[&str]) -> Command {
    let mut c = Command::new(bin_dir().join("airlock"));
    c.args(["run", "--isolation", "process", "--policy"])
        .arg(policy)
        .arg("--")
        .args(argv)
        .env("XDG_STATE_HOME", state_home())
        .stdin(Stdio::null());
    c
}

/// VmHWM (peak RSS) of `pid`, KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Direct children of `pid`, whichever of its threads forked them (the launcher
/// starts the enforcer from a spawner thread of its own).
fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    tasks
        .iter()
        .flat_map(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn main() {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: process isolation needs root");
        return;
    }
    if !bin_dir().join("airlock").exists() {
        println!(
            "skipped: {} not built (make bench builds it)",
            bin_dir().join("airlock").display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();

    let time = |mut c: Command| {
        let t = Instant::now();
        let st = c.status().unwrap();
        assert!(st.success(), "{c:?} failed");
        t.elapsed().as_secs_f64()
    };
    // Interleaved so machine noise hits both sides alike.
    let (mut direct, mut sandboxed) = (Vec::new(), Vec::new());
    for _ in 0..41 {
        direct.push(time(Command::new("/bin/true")));
        sandboxed.push(time(airlock(&policy, &["/bin/true"])));
    }
    let (d, s) = (median(direct), median(sandboxed));
    println!(
        "airlock run --isolation process -- /bin/true: {:.1} ms median vs direct {:.2} ms (+{:.1} ms; target <= 50 ms)",
        s * 1e3,
        d * 1e3,
        (s - d) * 1e3
    );

    // Peak RSS: sample the process tree of a session that sleeps.
    let mut worst_enforcer = 0;
    let mut launcher = 0;
    for _ in 0..5 {
        let mut child = airlock(&policy, &["/bin/sleep", "0.6"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let cli = child.id();
        launcher = launcher.max(peak_rss_kib(cli).unwrap_or(0));
        let mut stack = children(cli);
        while let Some(pid) = stack.pop() {
            if comm(pid).starts_with("airlock-enforce") {
                worst_enforcer = worst_enforcer.max(peak_rss_kib(pid).unwrap_or(0));
            }
            stack.extend(children(pid));
        }
        assert!(child.wait().unwrap().success());
    }
    println!(
        "peak RSS: enforcer (largest of supervisor, sandbox init) {:.1} MiB (target <= 10 MiB); launcher CLI {:.1} MiB",
        worst_enforcer as f64 / 1024.0,
        launcher as f64 / 1024.0
    );
}
