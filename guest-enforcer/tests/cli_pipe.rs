//! `airlock-enforcer` and `airlock-shim` with stdout or stderr a pipe nobody reads any
//! more: a quiet exit, never a panic. `verify-manifest` exits 141 (128 + SIGPIPE) when
//! its stdout is closed, and keeps its own status when only stderr is; the shim, which
//! writes nothing but diagnostics, dies of SIGPIPE (a shell shows 141), as the tool it
//! stands for would.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const EXIT_STDOUT_CLOSED: i32 = 141;
#[path = "support/signed_envelope.rs"]
mod signed_envelope;
use signed_envelope::{fixture, Fixture, NONCE, NOW};

/// The write end of a pipe whose read end is already closed.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer.into()
}

fn enforcer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_airlock-enforcer"));
    c.env("RUST_BACKTRACE", "1").stdin(Stdio::null());
    c
}

fn assert_no_panic(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{what} panicked: {stderr}"
    );
}

/// The `verify-manifest` arguments that accept the shared fixture's envelope.
fn signed_envelope(f: &Fixture) -> Vec<String> {
    [
        "verify-manifest",
        "--pub",
        f.public_key.to_str().unwrap(),
        "--cid",
        "5",
        "--image-id",
        "img-1",
        "--nonce",
        NONCE,
        "--now",
        &NOW.to_string(),
        f.envelope.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn verify_manifest_into_a_closed_stdout_exits_141_quietly() {
    let f = fixture();
    let args = signed_envelope(&f);
    // With stdout open, the manifest is printed: the case below had output to write.
    let open = enforcer().args(&args).output().unwrap();
    assert!(open.status.success(), "{open:?}");
    assert!(!open.stdout.is_empty());

    let out = enforcer()
        .args(&args)
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_no_panic("verify-manifest", &out);
    assert!(out.stderr.is_empty(), "{out:?}");
    assert_eq!(out.status.code(), Some(EXIT_STDOUT_CLOSED), "{out:?}");
}

#[test]
fn enforcer_errors_into_a_closed_stderr_keep_their_status() {
    let f = fixture();
    let mut refused = signed_envelope(&f);
    // Another nonce: refused, exit 1.
    let nonce = refused.iter().position(|a| a == NONCE).unwrap();
    refused[nonce] = "ffeeddccbbaa99887766554433221100".into();
    let cases: [(Vec<String>, i32); 4] = [
        (refused, 1),
        (vec!["verify-manifest".into()], 2),
        (vec![], 2),
        (vec!["run-process".into(), "--cid".into()], 2),
    ];
    for (args, code) in cases {
        let out = enforcer()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(closed_pipe())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
    }
}

#[test]
fn the_shims_diagnostics_into_a_closed_stderr_end_it_by_sigpipe() {
    let dir = tempfile::tempdir().unwrap();
    let git = dir.path().join("git");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_airlock-shim"), &git).unwrap();
    let shim = |program: &Path, stderr: Stdio| {
        Command::new(program)
            .arg("status")
            .env("AIRLOCK_BROKER_SOCKET", dir.path().join("no-broker.sock"))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .output()
            .unwrap()
    };
    // Stderr open: the broker is unreachable, said so, refused.
    let out = shim(&git, Stdio::piped());
    assert_eq!(
        out.status.code(),
        Some(airlock_enforcer::broker::EXIT_REFUSED),
        "{out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the tool broker"),
        "{out:?}"
    );
    // Stderr closed: the same message kills it by SIGPIPE, no panic (which would exit
    // 101, or abort with panic = "abort").
    for program in [git.as_path(), Path::new(env!("CARGO_BIN_EXE_airlock-shim"))] {
        let out = shim(program, closed_pipe());
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{}: {out:?}",
            program.display()
        );
    }
}
