//! Run-time asks, end to end, against the same tool allowed outright, side by side:
//! - a session runs `true N` through its shim 40 times in a row; each call's rule says
//!   ask, and an automatic approver (`--on-ask allow`) answers on the host. The round
//!   trip of one ask (shim → broker → host `Host.Ask` → approval broker → answer → tool
//!   spawned, exited, reported) is the interval between consecutive asks reaching the
//!   host: median and p99, process isolation and a VM;
//! - the baseline: the same 40 calls with the tool allowed (no ask), per call;
//! - the host's own handling of one ask (the `Host.Ask` RPC over a Unix socket, the
//!   manifest re-decided, the broker asked, answered and recorded), median and p99
//!   (target ≤ 1 ms).
//!
//! `make bench` builds the static enforcer and tools first. Calls: AIRLOCK_BENCH_ASKS
//! (default 40).

#[path = "../vm_support.rs"]
mod vm_support;

use airlock_launcher::approval_broker::{Answer, ApprovalBroker, AutoAnswer, Event, Scope};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

fn allowing() -> Arc<ApprovalBroker> {
    ApprovalBroker::configured(
        Duration::from_secs(60),
        Some(AutoAnswer {
            answer: Answer::Approve(Scope::Once),
            approver: "--on-ask allow".into(),
        }),
        None,
    )
}

/// Records when each ask is decided (an automatic answer is given the moment the ask
/// reaches the broker).
fn ask_times(rt: &tokio::runtime::Runtime, broker: &ApprovalBroker) -> Arc<Mutex<Vec<Instant>>> {
    let times = Arc::new(Mutex::new(Vec::new()));
    let mut events = broker.subscribe();
    let t = Arc::clone(&times);
    rt.spawn(async move {
        while let Ok(ev) = events.recv().await {
            if let Event::Resolved(_) = ev {
                t.lock().unwrap().push(Instant::now());
            }
        }
    });
    times
}

fn intervals_ms(times: &[Instant]) -> Vec<f64> {
    times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .collect()
}

fn policy(dir: &Path, decision: &str) -> airlock_launcher::policy::Policy {
    let path = dir.join(format!("bench-{decision}.toml"));
    std::fs::write(
        &path,
        format!(
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"agent\"\ndecision = \"allow\"\nreason = \"the bench's shell\"\nmatch.tool = {{ program = \"sh\" }}\n[[rule]]\nid = \"tool\"\ndecision = \"{decision}\"\nreason = \"the tool under test\"\nmatch.tool = {{ program = \"true\" }}\n[[rule]]\nid = \"vm-tool\"\ndecision = \"{decision}\"\nreason = \"the tool under test in the VM\"\nmatch.tool = {{ program = \"wc\" }}\n[[rule]]\nid = \"small\"\ndecision = \"allow\"\nreason = \"bench VMs\"\nmatch.resources = {{ vcpus = 1, memory_mib = 512, disk_mib = 256, pids = 256, wall_time_secs = 600 }}\n"
        ),
    )
    .unwrap();
    airlock_launcher::policy::Policy::load(&path).unwrap()
}

fn process_mode(dir: &Path, n: usize) {
    use airlock_launcher::process_session::{run_process_isolated, ProcessRunOptions};
    // Shell builtins only: the sandbox runs no program that is not granted.
    let script =
        format!("i=1; while [ $i -le {n} ]; do (exec true $i) || exit 9; i=$((i+1)); done");
    let plan = airlock_launcher::plan::Plan {
        command: vec!["/bin/sh".into(), "-c".into(), script],
        cwd: None,
        env: Default::default(),
        mounts: vec![],
        net: vec![],
        tools: vec!["true".into()],
        resources: Default::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let run = |decision: &str| {
        let broker = allowing();
        let times = ask_times(&rt, &broker);
        let opts = ProcessRunOptions {
            enforcer: bin_dir().join("airlock-enforcer"),
            shim: bin_dir().join("airlock-shim"),
            approvals: broker,
            merge: Default::default(),
            egress_pins: Default::default(),
            forward_interrupts: false,
            prompt_on_the_terminal: false,
        };
        let started = Instant::now();
        let out = run_process_isolated(&policy(dir, decision), &plan, &opts).unwrap();
        let total = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(out.exit_code, 0, "{decision}: a call failed");
        std::thread::sleep(Duration::from_millis(50));
        let t = times.lock().unwrap().clone();
        (total, t)
    };
    let (_, _) = run("allow"); // warm-up
    let (allow_total, none) = run("allow");
    assert!(none.is_empty(), "an allowed tool asked");
    let (_, asked) = run("ask");
    assert_eq!(asked.len(), n, "every call asked");
    let rt_ms = intervals_ms(&asked);
    let base = allow_total / n as f64;
    println!("process isolation, {n} calls:");
    println!(
        "  ask round trip (auto-approved): median {:.2} ms, p99 {:.2} ms",
        pct(rt_ms.clone(), 0.5),
        pct(rt_ms.clone(), 0.99)
    );
    println!(
        "  the same call allowed outright: {base:.2} ms per call (session total / {n}); ratio {:.2}",
        pct(rt_ms, 0.5) / base
    );
}

fn vm_mode(dir: &Path, n: usize) {
    use airlock_launcher::image::{build, Profile};
    use airlock_launcher::launcher::ExecSpec;
    let (inputs, tools) = vm_support::setup(dir);
    let (image, _) = build(Profile::Minimal, &inputs, &|_| {}).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The shim by its path: busybox's shell would run its own `wc` applet in-process.
    let script = format!(
        "i=1; while [ $i -le {n} ]; do /usr/lib/airlock/bin/wc -l /dev/null $i >/dev/null 2>&1; i=$((i+1)); done; echo done"
    );
    let plan = airlock_launcher::plan::Plan::parse(
        "bench.toml",
        "command = [\"/bin/sh\"]\ntools = [\"wc\"]\n[resources]\nmemory_mib = 128\n",
        false,
    )
    .unwrap();
    let run = |decision: &str| {
        let broker = allowing();
        let times = ask_times(&rt, &broker);
        let launcher = vm_support::qemu_launcher_with(
            dir,
            image.clone(),
            policy(dir, decision),
            tools.clone(),
            broker,
        );
        let total = rt.block_on(async {
            let mut s = launcher.create_session(&plan).await.unwrap();
            let started = Instant::now();
            let (end, out, err) = vm_support::run_captured(
                &mut s,
                ExecSpec {
                    argv: vec!["/bin/sh".into(), "-c".into(), script.clone()],
                    ..Default::default()
                },
            )
            .await;
            let total = started.elapsed().as_secs_f64() * 1e3;
            assert!(end.is_ok() && out.contains("done"), "{out} {err}");
            s.destroy().await.unwrap();
            total
        });
        let t = times.lock().unwrap().clone();
        (total, t)
    };
    let (allow_total, none) = run("allow");
    assert!(none.is_empty(), "an allowed tool asked");
    let (_, asked) = run("ask");
    assert_eq!(asked.len(), n, "every call asked");
    let rt_ms = intervals_ms(&asked);
    let base = allow_total / n as f64;
    println!("VM (QEMU/TCG), {n} calls:");
    println!(
        "  ask round trip (auto-approved): median {:.2} ms, p99 {:.2} ms",
        pct(rt_ms.clone(), 0.5),
        pct(rt_ms.clone(), 0.99)
    );
    println!(
        "  the same call allowed outright: {base:.2} ms per call (exec total / {n}); ratio {:.2}",
        pct(rt_ms, 0.5) / base
    );
}

/// The host's part alone: `Host.Ask` over a Unix socket pair, decided and answered.
fn host_side(n: usize) {
    use airlock_launcher::host_service::HostService;
    use airlock_proto::pb::host_client::HostClient;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let policy = airlock_launcher::policy::Policy::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/policies/coding-agent.toml"),
    )
    .unwrap();
    let times = rt.block_on(async {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let svc = HostService::new(
            "s".into(),
            vec![1; 32],
            &[policy.tool_grant("git")],
            allowing(),
            Arc::new(Mutex::new(Vec::new())),
            "/dev/null".into(),
        );
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc.into_server())
                .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(ours)))
                .await
                .unwrap();
        });
        let slot = Mutex::new(Some(theirs));
        let channel = tonic::transport::Endpoint::from_static("http://h")
            .connect_with_connector(tower::service_fn(move |_| {
                let s = slot.lock().unwrap().take();
                async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s.unwrap())) }
            }))
            .await
            .unwrap();
        let mut client = HostClient::new(channel);
        let mut times = Vec::new();
        for i in 0..n + 20 {
            let started = Instant::now();
            let r = client
                .ask(airlock_proto::pb::AskRequest {
                    session_id: "s".into(),
                    session_secret: vec![1; 32],
                    kind: "tool".into(),
                    program: "git".into(),
                    argv: vec![
                        "git".into(),
                        "push".into(),
                        "origin".into(),
                        format!("b{i}"),
                    ],
                    cwd: "/w".into(),
                    binary_sha256: "ab".repeat(32),
                    rule_id: "git-push".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.verdict, airlock_proto::pb::Verdict::Allow as i32, "{r:?}");
            if i >= 20 {
                times.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        times
    });
    println!(
        "host side (Host.Ask over a Unix socket, re-decided, answered, recorded), {n} asks: median {:.3} ms, p99 {:.3} ms (target <= 1 ms)",
        pct(times.clone(), 0.5),
        pct(times, 0.99)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("AIRLOCK_BENCH_ASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    host_side(200);
    let dir = tempfile::tempdir().unwrap();
    if airlock_tests::running_as_root() {
        process_mode(dir.path(), n);
    } else {
        println!("process isolation: skipped (needs root)");
    }
    vm_mode(dir.path(), n);
}
