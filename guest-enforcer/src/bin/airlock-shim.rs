//! `airlock-shim`: installed under each granted tool's name in the agent's PATH.
//! See `airlock_enforcer::shim`.

use airlock_enforcer::shim::{run, BROKER_SOCKET_ENV, DEFAULT_BROKER_SOCKET};
use std::path::PathBuf;

fn main() {
    // A closed stderr ends the shim quietly, killed by SIGPIPE (a shell shows 141),
    // instead of a panic in `eprintln!`: the shim writes nothing but diagnostics, and its
    // socket writes to the broker use MSG_NOSIGNAL, so SIGPIPE cannot come from the
    // broker going away. This is also how the tool it stands for ends on a closed pipe
    // (the shim re-raises the tool's signal). The signal is unblocked too, in case whoever
    // ran the shim blocked it (blocked, the write would fail with EPIPE and panic).
    // SAFETY: at the top of main, before any thread exists: resets one signal's
    // disposition to the default and unblocks it; no handler is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    let mut argv = Vec::new();
    for a in std::env::args_os() {
        match a.into_string() {
            Ok(s) => argv.push(s),
            Err(a) => {
                eprintln!("airlock-shim: argument {a:?} is not UTF-8; refusing to forward it");
                std::process::exit(airlock_enforcer::broker::EXIT_REFUSED);
            }
        }
    }
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let socket = std::env::var_os(BROKER_SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BROKER_SOCKET));
    std::process::exit(run(argv, env, &socket));
}
