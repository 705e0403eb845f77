//! `airlock run --tool NAME`: a tool the plan already lists, or one given twice, is
//! asked for once (a plan file listing a tool twice is refused: see `plan.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn run_tool_flags_merge_with_the_plans_tools() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    // The plan lists `git` and `bash`, and is denied (its mounts, port 80, its size): the
    // report is printed and nothing runs.
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .current_dir(root())
        .env("XDG_CONFIG_HOME", "/nonexistent-airlock-test")
        .stdin(std::process::Stdio::null())
        .args([
            "run",
            "--isolation",
            "process",
            "--json",
            "--on-ask",
            "deny",
        ])
        .args(["--policy", "manifests/policies/coding-agent.toml"])
        .args(["--plan", "manifests/plans/denied-secrets.toml"])
        .args(["--tool", "git", "--tool", "python3", "--tool", "git"])
        .arg("--audit-log")
        .arg(&audit)
        .args(["--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("listed twice"), "{stderr}");
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tools: Vec<&str> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "tool")
        .map(|i| i["request"].as_str().unwrap())
        .collect();
    assert_eq!(tools.len(), 3, "{tools:?}");
    for name in ["git", "bash", "python3"] {
        assert_eq!(
            tools.iter().filter(|t| t.contains(name)).count(),
            1,
            "{name} in {tools:?}"
        );
    }
}
