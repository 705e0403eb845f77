//! Workspace-level tests live in `tests/*.rs`; see README "Tests".
//!
//! This library holds what every test binary needs to be honest about what it ran:
//! [`skip`] for a test that cannot run on this machine, and [`running_as_root`].

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file `make test` reads skip records from: `$AIRLOCK_TEST_SKIPS`, else
/// `target/test-skips.log` in the workspace.
pub fn skip_log_path() -> PathBuf {
    match std::env::var_os("AIRLOCK_TEST_SKIPS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ sits in the workspace")
            .join("target/test-skips.log"),
    }
}

/// Records that the calling test did not run its body here, and why; the caller then
/// returns. cargo's harness has no "skipped" outcome, so such a test shows as passed
/// in cargo's own count; `make test` reads these records and reports it as skipped,
/// by name, instead (`N passed, N failed, N skipped`).
///
/// Only for what cannot run on this machine as it is (not root, a layout the kernel
/// does not offer). A missing tool is never a skip: `make test` installs every tool,
/// so tests panic when one is absent.
///
/// Must be called from the test's own thread: the harness names that thread after
/// the test, and the record carries that name.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or_else(|| panic!("skip({why:?}) called outside a test's own thread"))
        .to_string();
    // The binary's name without cargo's `-<hash>` suffix: `layers-0123abcd` → `layers`.
    let exe = std::env::current_exe().expect("the test binary's path");
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let binary = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => stem,
    };
    let why = why.replace(['\n', '\t'], " ");
    eprintln!("skipped: {why}");
    let path = skip_log_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // One write of one line on an O_APPEND file: records from concurrent tests and
    // test binaries do not interleave.
    let line = format!("{binary}\t{test}\t{why}\n");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("cannot record the skip in {}: {e}", path.display()));
}

/// Whether the tests run as root (CI does; several layers need it to be exercised).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
