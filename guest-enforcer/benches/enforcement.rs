//! Enforcement overhead, as ratios against an unconfined baseline run side by side:
//! - getpid in a loop under the agent's seccomp filters vs without (target ≤ 1.10);
//! - exec of `/bin/true` through shim + broker vs a direct spawn (target ≤ 1 ms added);
//! - `git status` through shim + broker (git's preflight and no-exec filter included)
//!   vs git run directly.
//!
//! Run with `make bench` (or `cargo bench -p airlock-enforcer --bench enforcement`).

use airlock_enforcer::broker::{Broker, GrantedTool, NoApprovalChannel, Unconfined};
use airlock_enforcer::seccomp::compile_agent_filters;
use airlock_proto::argv_pattern::ArgvPattern;
use airlock_proto::tool_rules::{ToolGrant, ToolMatch, ToolRule};
use airlock_proto::verdict::Verdict;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

const LOOPS: u32 = 2_000_000;

/// Child mode: time getpid and print the mean in ns.
fn getpid_loop() {
    let t = Instant::now();
    for _ in 0..LOOPS {
        // SAFETY: getpid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    println!("ns={:.2}", t.elapsed().as_nanos() as f64 / LOOPS as f64);
}

/// Which filter the child runs under.
#[derive(Clone, Copy, PartialEq)]
enum Under {
    Nothing,
    /// A filter that allows everything: the floor cost of seccomp on this kernel.
    AllowAll,
    Agent,
}

fn getpid_ns(under: Under) -> f64 {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("--getpid-loop");
    if under == Under::AllowAll {
        let allow: seccompiler::BpfProgram = seccompiler::SeccompFilter::new(
            Default::default(),
            seccompiler::SeccompAction::Allow,
            seccompiler::SeccompAction::KillProcess,
            seccompiler::TargetArch::x86_64,
        )
        .unwrap()
        .try_into()
        .unwrap();
        // SAFETY: installs a precompiled filter between fork and exec (no allocation).
        unsafe {
            cmd.pre_exec(move || {
                seccompiler::apply_filter(&allow)
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EPROTO))
            });
        }
    }
    if under == Under::Agent {
        let f = compile_agent_filters().unwrap();
        // SAFETY: installs a precompiled filter between fork and exec (no allocation).
        unsafe {
            cmd.pre_exec(move || {
                f.install_on_current_thread()
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EPROTO))
            });
        }
    }
    let out = cmd.output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim().strip_prefix("ns=").unwrap().parse().unwrap()
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--getpid-loop") {
        return getpid_loop();
    }
    // Interleave the runs so machine noise hits both sides alike.
    let (mut bare, mut floor, mut filtered) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..9 {
        bare.push(getpid_ns(Under::Nothing));
        floor.push(getpid_ns(Under::AllowAll));
        filtered.push(getpid_ns(Under::Agent));
    }
    let (b, a, f) = (median(bare), median(floor), median(filtered));
    println!(
        "getpid: unconfined {b:.1} ns; any seccomp filter (allow-all) {a:.1} ns, ratio {:.3}; the agent's filter {f:.1} ns, ratio {:.3} (target <= 1.10)",
        a / b,
        f / b
    );

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("broker.sock");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    // Guest images ship the static (musl) shim; use it when `make enforcer-static` built
    // it, else the host build.
    let static_shim = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-musl/release/airlock-shim");
    let shim = if static_shim.exists() {
        static_shim
    } else {
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_airlock-shim"))
    };
    println!("shim: {}", shim.display());
    std::os::unix::fs::symlink(&shim, bin.join("true")).ok();
    let grant = ToolGrant {
        program: "true".into(),
        rules: vec![ToolRule {
            id: "true".into(),
            matcher: ToolMatch::Argv(ArgvPattern::any()),
            decision: Verdict::Allow,
            reason: "bench".into(),
        }],
        default: Verdict::Deny,
        profile: Default::default(),
    };
    let tool = GrantedTool::open(grant, std::path::Path::new("/bin/true")).unwrap();
    // git as the broker runs it: the preflight (`git config --list`) and, for `status`,
    // the no-exec filter with its reporter.
    let git_path = ["/usr/local/bin/git", "/usr/bin/git"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
        .expect("git is installed");
    std::os::unix::fs::symlink(&shim, bin.join("git")).ok();
    let git_grant = ToolGrant {
        program: "git".into(),
        rules: vec![ToolRule {
            id: "git".into(),
            matcher: ToolMatch::Argv(ArgvPattern::any()),
            decision: Verdict::Allow,
            reason: "bench".into(),
        }],
        default: Verdict::Deny,
        profile: airlock_proto::tool_rules::ToolProfile {
            name: "git".into(),
            ..Default::default()
        },
    };
    let git_tool = GrantedTool::open(git_grant, git_path).unwrap();
    Arc::new(Broker::new(
        vec![tool, git_tool],
        Arc::new(NoApprovalChannel),
        Arc::new(Unconfined),
        "/nonexistent",
    ))
    .serve(&socket)
    .unwrap();
    let time = |mut c: Command| {
        let t = Instant::now();
        let st = c.status().unwrap();
        assert!(st.success());
        t.elapsed()
    };
    let (mut direct, mut brokered) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        direct.push(time(Command::new("/bin/true")).as_secs_f64());
        let mut c = Command::new(bin.join("true"));
        c.env(airlock_enforcer::shim::BROKER_SOCKET_ENV, &socket);
        brokered.push(time(c).as_secs_f64());
    }
    let (d, b) = (median(direct), median(brokered));
    println!(
        "exec /bin/true: direct {:.0} µs, through shim + broker {:.0} µs: +{:.0} µs (target <= 1000 µs added)",
        d * 1e6,
        b * 1e6,
        (b - d) * 1e6
    );

    let repo = dir.path().join("repo");
    let st = Command::new(git_path)
        .args(["init", "-q"])
        .arg(&repo)
        .status()
        .unwrap();
    assert!(st.success());
    let (mut direct, mut brokered) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let mut c = Command::new(git_path);
        c.args(["status", "--short"]).current_dir(&repo);
        direct.push(time(c).as_secs_f64());
        let mut c = Command::new(bin.join("git"));
        c.args(["status", "--short"])
            .current_dir(&repo)
            .env(airlock_enforcer::shim::BROKER_SOCKET_ENV, &socket);
        brokered.push(time(c).as_secs_f64());
    }
    let (d, b) = (median(direct), median(brokered));
    println!(
        "git status: direct {:.2} ms, through shim + broker (preflight, no-exec filter) {:.2} ms: +{:.2} ms",
        d * 1e3,
        b * 1e3,
        (b - d) * 1e3
    );
}
