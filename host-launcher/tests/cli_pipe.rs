//! `airlock` with its stdout or stderr a pipe nobody reads any more (`airlock … | head
//! -c 0`): a quiet exit, never a panic. A closed stdout exits 141 (128 + SIGPIPE; see
//! `cli::output`), before or after whatever the command would have exited with; a
//! closed stderr loses the message and keeps the command's own status.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const EXIT_STDOUT_CLOSED: i32 = 141;
const POLICY: &str = "manifests/policies/coding-agent.toml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The write end of a pipe whose read end is already closed.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer.into()
}

fn airlock() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_airlock"));
    c.current_dir(root())
        .env("XDG_CONFIG_HOME", "/nonexistent-airlock-test")
        // A panic would print its backtrace: nothing to miss.
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    c
}

/// `airlock ARGS` with stdout a closed pipe (stderr captured).
fn stdout_closed(args: &[&str]) -> Output {
    airlock()
        .args(args)
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// `airlock ARGS` with stderr a closed pipe (stdout captured).
fn stderr_closed(args: &[&str]) -> Output {
    airlock()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(closed_pipe())
        .output()
        .unwrap()
}

fn assert_no_panic(args: &[&str], out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "airlock {args:?} panicked: {stderr}"
    );
}

#[test]
fn a_closed_stdout_is_a_quiet_exit_141_for_every_printing_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().join("keys");
    // Keys and an envelope to print about (made with stdout open).
    let made = airlock()
        .args(["keygen", "--out", key_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let key = key_dir.join("airlock.key");
    let public = key_dir.join("airlock.pub");
    let minted = airlock()
        .args([
            "manifest",
            "mint",
            "--policy",
            POLICY,
            "--image-id",
            "img-1",
        ])
        .args(["--plan", "manifests/plans/allowed-commit.toml", "--key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let envelope = dir.path().join("envelope.json");
    std::fs::write(&envelope, &minted.stdout).unwrap();
    let (key, public, envelope) = (
        key.to_str().unwrap(),
        public.to_str().unwrap(),
        envelope.to_str().unwrap(),
    );
    let other_keys = dir.path().join("other-keys");
    let schemas = dir.path().join("schemas");

    let cases: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["--version"],
        vec!["policy", "--help"],
        vec!["run", "--help"],
        vec!["policy", "check", POLICY],
        vec!["policy", "check", "--json", POLICY],
        vec!["policy", "decide", "--policy", POLICY, "tool git push"],
        vec![
            "policy",
            "decide",
            "--json",
            "--policy",
            POLICY,
            "fs ro /etc",
        ],
        // Allowed (would exit 0) and denied (would exit 4): 141 either way, as nobody
        // read the outcome.
        vec![
            "plan",
            "--policy",
            POLICY,
            "--plan",
            "manifests/plans/allowed-commit.toml",
        ],
        vec![
            "plan",
            "--json",
            "--policy",
            POLICY,
            "--plan",
            "manifests/plans/denied-secrets.toml",
        ],
        vec![
            "manifest",
            "mint",
            "--policy",
            POLICY,
            "--plan",
            "manifests/plans/allowed-commit.toml",
            "--image-id",
            "img-1",
            "--key",
            key,
        ],
        vec!["manifest", "verify", "--pub", public, envelope],
        vec!["manifest", "verify", "--json", "--pub", public, envelope],
        vec!["keygen", "--out", other_keys.to_str().unwrap()],
        vec!["schema", "--out", schemas.to_str().unwrap()],
    ];
    for args in &cases {
        let out = stdout_closed(args);
        assert_no_panic(args, &out);
        assert_eq!(
            out.status.code(),
            Some(EXIT_STDOUT_CLOSED),
            "airlock {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_closed_stderr_keeps_the_commands_own_status() {
    let cases: [(&[&str], i32); 4] = [
        // A failure reported on stderr: its exit code.
        (
            &["plan", "--policy", "/nonexistent.toml", "--plan", "x.toml"],
            1,
        ),
        // clap's usage error on stderr.
        (&["policy", "decide"], 2),
        // A denied plan (its report on stdout).
        (
            &[
                "plan",
                "--policy",
                POLICY,
                "--plan",
                "manifests/plans/denied-secrets.toml",
            ],
            4,
        ),
        // `run`: refusals on stderr, before anything runs.
        (&["run", "--policy", POLICY, "--isolation", "process"], 2),
    ];
    for (args, code) in cases {
        let out = stderr_closed(args);
        assert_eq!(out.status.code(), Some(code), "airlock {args:?}: {out:?}");
    }
}

#[test]
fn help_on_an_open_pipe_is_unchanged() {
    let out = airlock().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.starts_with("Give LLM agents tools"), "{help}");
}
