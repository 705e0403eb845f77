//! The exec shim: a multi-call binary installed once per granted tool (`git`, `rg`, …)
//! in the agent's PATH. It runs nothing itself: it hands the invocation to the broker
//! and mirrors how the tool ended (exit code, or death by the same signal).
//!
//! The shim is not a security boundary (the agent could connect to the broker
//! directly, and the broker decides every request on its merits); it is the path by
//! which a granted invocation gets run.

use crate::broker::{
    recv_frame, send_frame as send_shim_frame, BrokerReply, ExecRequest, ShimMessage, EXIT_REFUSED,
};
use airlock_proto::shell_status::ProcessEnd;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;

/// Where the enforcer puts the broker socket in the guest.
pub const DEFAULT_BROKER_SOCKET: &str = "/run/airlock/broker.sock";
/// Environment variable that points a shim at another socket (process mode, tests).
pub const BROKER_SOCKET_ENV: &str = "AIRLOCK_BROKER_SOCKET";

/// Signals a shim forwards to the tool instead of dying of them.
const FORWARDED: [Signal; 5] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGWINCH,
];

/// Set by the broker for a tool whose profile refuses a program the tool may name (git's
/// editor): the tool is pointed at the shim binary itself, which prints this and fails.
pub const REFUSAL_ENV: &str = "AIRLOCK_PROFILE_REFUSAL";

fn fail(message: &str) -> i32 {
    eprintln!("airlock-shim: {message}");
    EXIT_REFUSED
}

/// Runs the shim: returns the exit code to exit with (after re-raising a signal if the
/// tool died of one).
pub fn run(argv: Vec<String>, env: Vec<(String, String)>, socket_path: &Path) -> i32 {
    let Some(argv0) = argv.first() else {
        return fail("empty argv");
    };
    if airlock_proto::tool_invocation::program_name(argv0).starts_with("airlock-shim") {
        if let Some((_, why)) = env.iter().find(|(k, _)| k == REFUSAL_ENV) {
            eprintln!("airlock: {why} (asked to run it with {:?})", &argv[1..]);
            return EXIT_REFUSED;
        }
        return fail(
            "the shim is installed under a tool's name (e.g. `git`); it is not run directly",
        );
    }
    let sock = match socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) {
        Ok(s) => s,
        Err(e) => return fail(&format!("socket: {e}")),
    };
    let addr = match UnixAddr::new(socket_path) {
        Ok(a) => a,
        Err(e) => return fail(&format!("{}: {e}", socket_path.display())),
    };
    if let Err(e) = connect(sock.as_raw_fd(), &addr) {
        return fail(&format!(
            "cannot reach the tool broker at {}: {e}",
            socket_path.display()
        ));
    }
    // O_PATH: the broker only fchdir()s to it, and the agent may stand in a directory
    // it can enter but not list (Landlock does not check O_PATH opens).
    // SAFETY: open with a static NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::open(
            c".".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return fail(&format!(
            "cannot open the working directory: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: open returned a new descriptor we own.
    let cwd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // Block forwarded signals before anything else can run, then relay them.
    let mut mask = SigSet::empty();
    for s in FORWARDED {
        mask.add(s);
    }
    if mask.thread_block().is_err() {
        return fail("cannot block signals");
    }
    let fds: [RawFd; 4] = [cwd.as_raw_fd(), 0, 1, 2];
    if let Err(e) = send_shim_frame(sock.as_raw_fd(), &ExecRequest { argv, env }, &fds) {
        return fail(&format!("cannot send the request to the broker: {e}"));
    }
    drop(cwd);
    let relay_fd = sock.as_raw_fd();
    std::thread::spawn(move || loop {
        if let Ok(sig) = mask.wait() {
            let _ = send_shim_frame(relay_fd, &ShimMessage::Signal { signal: sig as i32 }, &[]);
        }
    });
    let reply = match recv_frame(sock.as_raw_fd(), 4096) {
        Ok(Some((bytes, _))) => serde_json::from_slice::<BrokerReply>(&bytes),
        Ok(None) => return fail("the broker closed the connection without an answer"),
        Err(e) => return fail(&format!("broker: {e}")),
    };
    match reply {
        Ok(BrokerReply::Exited { code }) => code,
        Ok(BrokerReply::Refused { code }) => code,
        Ok(BrokerReply::Signaled { signal }) => {
            // Die of the same signal, so callers see what they would have seen.
            if let Ok(sig) = Signal::try_from(signal) {
                let mut one = SigSet::empty();
                one.add(sig);
                let _ = one.thread_unblock();
                // SAFETY: restoring the default action and raising a signal at ourselves.
                unsafe {
                    libc::signal(signal, libc::SIG_DFL);
                    libc::raise(signal);
                }
            }
            ProcessEnd::Signaled(signal).exit_code()
        }
        Err(e) => fail(&format!("unreadable broker reply: {e}")),
    }
}
