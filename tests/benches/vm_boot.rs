//! VM sessions against a baseline run side by side (QEMU microvm; TCG here):
//! - time-to-ready of a `minimal` session (QEMU start → the enforcer's ready report,
//!   manifest verified and applied) vs a bare boot of the same kernel, same VM shape
//!   and devices, with a busybox initramfs whose `/init` only prints a line and powers
//!   off — runs interleaved, ratio of medians (target ≤ 1.15);
//! - host memory per session, guest RAM excluded: the launcher's RSS growth plus the
//!   helper daemons' RSS (target ≤ 30 MiB), QEMU's own (non-guest) memory shown apart;
//! - the enforcer's RSS in the guest, PID 1's VmHWM after one command, as the enforcer
//!   reports it when shut down (the agent cannot see PID 1) (target ≤ 10 MiB).
//!
//! `make bench` builds the static enforcer and tools first. Runs: AIRLOCK_BENCH_RUNS
//! (default 10).

#[path = "../vm_support.rs"]
mod vm_support;

use airlock_launcher::image::cpio::Archive;
use airlock_launcher::image::{build, Profile};
use airlock_launcher::launcher::{ExecEnd, ExecSpec, Launcher, LauncherConfig};
use airlock_launcher::plan::Plan;
use airlock_launcher::vmm::qemu::Qemu;
use airlock_launcher::vmm::{Vm, VmSpec};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Guest memory of every boot in the comparison (the session's 128 MiB grant plus the
/// launcher's overhead), so both boots have the same shape.
const AGENT_MIB: u64 = 128;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `VmRSS` (or another field) of a process, KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

const BARE_LINE: &str = "bare-init-reached";

/// Boots the bare initramfs once; seconds from QEMU start to `/init` running.
fn bare_boot(spec: &VmSpec, qemu: &Qemu, root: &std::path::Path) -> f64 {
    let start = Instant::now();
    let mut vm = qemu.boot_vm(spec, root).unwrap();
    loop {
        if vm.serial_output().contains(BARE_LINE) {
            let t = start.elapsed().as_secs_f64();
            let _ = vm.wait_for_exit(Duration::from_secs(10));
            Box::new(vm).destroy().unwrap();
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120) && vm.exited().is_none(),
            "bare boot failed:\n{}",
            vm.serial_output()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (inputs, tools) = vm_support::setup(dir.path());
    let runs: usize = std::env::var("AIRLOCK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (image, _) = build(Profile::Minimal, &inputs, &|_| {}).unwrap();
    // The baseline initramfs: busybox and an /init that says it ran and powers off.
    let mut bare = Archive::default();
    bare.dir("bin", 0o755).unwrap();
    bare.file("bin/busybox", 0o755, std::fs::read("/bin/busybox").unwrap())
        .unwrap();
    bare.file(
        "init",
        0o755,
        format!("#!/bin/busybox sh\n/bin/busybox echo {BARE_LINE} > /dev/console\n/bin/busybox poweroff -f\n")
            .into_bytes(),
    )
    .unwrap();
    let bare_initrd = dir.path().join("bare.cpio.gz");
    std::fs::write(&bare_initrd, bare.to_gzip()).unwrap();
    let mem = AGENT_MIB + airlock_launcher::launcher::GUEST_MEMORY_OVERHEAD_MIB;
    let mut bare_spec = VmSpec::for_image(&image, 3, 1, mem);
    bare_spec.initrd = bare_initrd;
    bare_spec.host_ports = vec![airlock_proto::HOST_VSOCK_PORT];

    let qemu = Qemu::tcg(tools);
    let signer = airlock_launcher::keys::load_signer(&dir.path().join("keys/airlock.key")).unwrap();
    let (launcher, _) = Launcher::new(LauncherConfig {
        policy: Arc::new(vm_support::vm_policy()),
        signer: Arc::new(signer),
        image,
        vmm: Arc::new(qemu.clone()),
        state_root: dir.path().join("vms"),
        boot_timeout: Duration::from_secs(120),
        egress_pins: Default::default(),
        approvals: airlock_launcher::approval_broker::ApprovalBroker::new(
            std::time::Duration::from_secs(60),
        ),
    })
    .unwrap();
    let plan = Plan::parse(
        "bench-plan.toml",
        &format!(
            "command = [\"/bin/true\"]\ntools = [\"cat\"]\n[resources]\nmemory_mib = {AGENT_MIB}\n"
        ),
        false,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let me = std::process::id();

    // One warm-up of each (page cache, first QEMU start).
    bare_boot(&bare_spec, &qemu, &dir.path().join("bare"));
    rt.block_on(async {
        launcher
            .create_session(&plan)
            .await
            .unwrap()
            .destroy()
            .await
            .unwrap()
    });

    let (mut bare_s, mut ready_s) = (Vec::new(), Vec::new());
    let (mut host_mib, mut qemu_own_mib, mut enforcer_mib) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        bare_s.push(bare_boot(&bare_spec, &qemu, &dir.path().join("bare")));
        rt.block_on(async {
            let before = status_kib(me, "VmRSS:");
            let t = Instant::now();
            let mut s = launcher.create_session(&plan).await.unwrap();
            ready_s.push(t.elapsed().as_secs_f64());
            let launcher_delta = status_kib(me, "VmRSS:").saturating_sub(before);
            let pids = s.vm_info().pids;
            let (qemu_pid, helpers) = pids.split_last().unwrap();
            let helper_kib: u64 = helpers.iter().map(|&p| status_kib(p, "VmRSS:")).sum();
            host_mib.push((launcher_delta + helper_kib) as f64 / 1024.0);
            // QEMU's own memory: what is not the guest's shared memfd RAM.
            let own = status_kib(*qemu_pid, "RssAnon:") + status_kib(*qemu_pid, "RssFile:");
            qemu_own_mib.push(own as f64 / 1024.0);
            // One command first, so the enforcer's peak includes serving an Exec. The
            // agent cannot read PID 1's /proc entry (hidepid): the enforcer reports its
            // own VmHWM in its answer to the shutdown request.
            let end = s
                .run(
                    ExecSpec {
                        argv: vec!["cat".into(), "/proc/self/status".into()],
                        ..Default::default()
                    },
                    &mut |_, _| {},
                )
                .await
                .unwrap();
            assert_eq!(end, ExecEnd::Exited(0), "the bench command failed");
            let hwm_kib = s
                .destroy_with_report()
                .await
                .unwrap()
                .expect("the enforcer did not answer the shutdown request")
                .enforcer_peak_rss_kib;
            assert!(hwm_kib > 0, "the enforcer reported no peak RSS (VmHWM)");
            enforcer_mib.push(hwm_kib as f64 / 1024.0);
        });
    }
    let (b, r) = (median(bare_s), median(ready_s));
    println!("vm_boot: {runs} interleaved runs, QEMU microvm TCG, 1 vCPU, {mem} MiB");
    println!(
        "  bare boot to /init (busybox, powers off):   median {:>7.0} ms",
        b * 1000.0
    );
    println!(
        "  minimal session to ready (verify + apply):  median {:>7.0} ms",
        r * 1000.0
    );
    println!(
        "  ratio session / bare:                       {:.2} (target <= 1.15)",
        r / b
    );
    println!(
        "  host memory per session (launcher delta + vhost-device-vsock): median {:.1} MiB (target <= 30)",
        median(host_mib)
    );
    println!(
        "  QEMU's own memory (RssAnon + RssFile, guest RAM excluded):   median {:.1} MiB",
        median(qemu_own_mib)
    );
    println!(
        "  enforcer (PID 1) peak RSS in the guest: median {:.1} MiB (target <= 10)",
        median(enforcer_mib)
    );
}
