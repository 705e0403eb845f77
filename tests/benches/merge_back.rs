//! Merge-back through the gate against a plain copy, side by side: a session's agent
//! writes 1,000 new files of 100 KiB (≈100 MiB) into a copy-on-write workspace; the
//! launcher's merge (reading the write layer, judging every entry, staging, renaming
//! into place, fsync'd) is timed by `airlock run --json` (`merge.elapsed_ms`), and a
//! `cp -a` of an identical 1,000-file tree on the same filesystem is the baseline. Both
//! isolation modes (the VM streams the layer over vsock; process isolation reads the
//! scratch tmpfs directly). Ratio of medians. Needs root; the VM half needs the debian
//! image's inputs (`make bench` builds them). Runs: AIRLOCK_BENCH_RUNS (default 3).

#[path = "../vm_support.rs"]
mod vm_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const FILES: usize = 1000;
const FILE_BYTES: usize = 100 << 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn airlock() -> PathBuf {
    vm_support::workspace_root().join("target/release/airlock")
}

const AGENT: &str = r#"
import os
os.chdir('/workspace')
os.makedirs('out')
block = bytes(range(256)) * 400
for i in range(1000):
    with open(f'out/f{i:04}', 'wb') as f:
        f.write(block)
"#;

/// One session in `isolation`; returns the merge's milliseconds.
fn merge_once(isolation: &str, work: &Path, plan: &Path, vm: &[String], state: &Path) -> f64 {
    let out = Command::new(airlock())
        .env("XDG_RUNTIME_DIR", state.join("run"))
        .env("XDG_CACHE_HOME", state.join("cache"))
        .args(["run", "--json", "--isolation", isolation, "--policy"])
        .arg(vm_support::workspace_root().join("tests/cases/workspace-policy.toml"))
        .arg("--plan")
        .arg(plan)
        .args(["--tool", "python3"])
        .args(vm)
        .arg("--mount")
        .arg(format!("{}:/workspace:rw", work.display()))
        .args(["--", "python3", "-c", AGENT])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{isolation}: {err}");
    let json: serde_json::Value = serde_json::from_str(err.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{isolation}: {e}: {err}"));
    let merge = &json["merge"];
    assert_eq!(merge["status"], "merged", "{json}");
    let added = merge["report"]["changes"].as_array().map_or(0, Vec::len);
    assert_eq!(added, FILES + 1, "{isolation}: {json}");
    merge["elapsed_ms"].as_f64().unwrap()
}

/// `cp -a` of a tree like the one the agent writes; milliseconds.
fn copy_once(scratch: &Path) -> f64 {
    let src = scratch.join("src");
    if !src.exists() {
        std::fs::create_dir_all(src.join("out")).unwrap();
        let block: Vec<u8> = (0..=255u8).cycle().take(FILE_BYTES).collect();
        for i in 0..FILES {
            std::fs::write(src.join(format!("out/f{i:04}")), &block).unwrap();
        }
    }
    let dst = scratch.join("dst");
    let _ = std::fs::remove_dir_all(&dst);
    let t = Instant::now();
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    // The gate fsyncs what it stages: the copy is synced too, for a like-for-like time.
    let synced = Command::new("sync").arg("-f").arg(&dst).status().unwrap();
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(st.success() && synced.success());
    ms
}

fn main() {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("merge_back: skipped (process isolation and the VM's shares need root)");
        return;
    }
    let runs: usize = std::env::var("AIRLOCK_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "command = [\"python3\"]\ncwd = \"/workspace\"\n[resources]\ndisk_mib = 256\nmemory_mib = 512\n",
    )
    .unwrap();
    let (inputs, tools) = vm_support::setup(dir.path());
    airlock_launcher::image::build(airlock_launcher::image::Profile::Debian, &inputs, &|_| {})
        .unwrap_or_else(|e| panic!("{e}"));
    let vm: Vec<String> = vec![
        "--image".into(),
        inputs.out.join("debian/image.json").display().to_string(),
        "--key".into(),
        dir.path().join("keys/airlock.key").display().to_string(),
        "--tools-dir".into(),
        tools
            .vhost_device_vsock
            .parent()
            .unwrap()
            .display()
            .to_string(),
    ];
    println!(
        "merge_back: {runs} interleaved runs, {FILES} new files × {} KiB per session",
        FILE_BYTES >> 10
    );
    for (isolation, vm_args) in [("process", &[][..]), ("vm", &vm[..])] {
        let (mut merge, mut copy) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let work = dir.path().join(format!("{isolation}-{i}/work"));
            std::fs::create_dir_all(&work).unwrap();
            merge.push(merge_once(isolation, &work, &plan, vm_args, dir.path()));
            copy.push(copy_once(dir.path()));
        }
        let (m, c) = (median(merge), median(copy));
        println!(
            "  {isolation:7}  merge-back {m:8.1} ms   cp -a {c:8.1} ms   ratio {:.2}",
            m / c
        );
    }
}
