//! Writing to stdout and stderr without panicking.
//!
//! `println!` and `eprintln!` panic when the write fails: `airlock policy check --json …
//! | head -c 0` printed "failed printing to stdout: Broken pipe" and a backtrace. Rust
//! starts programs with SIGPIPE ignored, so a write to a closed pipe fails with EPIPE
//! instead of killing the process, and `airlock` keeps it that way: it serves gRPC and
//! HTTP and splices egress streams, and a default SIGPIPE would kill the server when a
//! peer goes away mid-write. The CLI's own output goes through [`outln!`] and
//! [`errln!`] instead, which handle the failure:
//!
//! - **stdout closed** (EPIPE): whoever read the output is gone, so `airlock` exits at
//!   once, silently, with status [`EXIT_STDOUT_CLOSED`] (141 = 128 + SIGPIPE, what a
//!   shell reports for `cat` killed by SIGPIPE). Not 0: the exit codes carry outcomes,
//!   and 0 would say "all allowed" of a denied plan nobody read.
//! - **another stdout failure** (a full disk): said on stderr, exit 1.
//! - **stderr failures are ignored**: the diagnostic is lost, and the command goes on
//!   to its own exit status (a session still ends, a VM is still destroyed).
//!
//! `airlock approvals watch` keeps its own rule (it stops with 0 when its output cannot
//! be written), and `airlock run` relays the command's output ignoring failures: the
//! command runs to its end and its status is the exit status.

use std::io::Write;

/// The exit status when stdout is a closed pipe: 128 + SIGPIPE.
pub const EXIT_STDOUT_CLOSED: i32 = 128 + libc::SIGPIPE;

/// `println!` for the CLI's output: exits 141 when stdout is closed (see the module).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` for the CLI's diagnostics: a failure to write is ignored (see the module).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::output::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {errln, outln};

/// Writes `args` to stdout and flushes; see the module for what a failure does.
pub fn stdout(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        stdout_failed(e);
    }
}

/// Writes `bytes` to stdout and flushes; see the module for what a failure does.
pub fn stdout_bytes(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        stdout_failed(e);
    }
}

/// Writes `args` to stderr, ignoring a failure.
pub fn stderr(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Ends the process after a failed write to stdout.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(EXIT_STDOUT_CLOSED);
    }
    stderr(format_args!("airlock: stdout: {e}\n"));
    std::process::exit(1);
}

/// clap's `Error::exit` (help and version on stdout, exit 0; usage errors on stderr,
/// exit 2), except that help or version sent to a closed stdout exits 141 like all
/// other output instead of 0.
pub fn clap_exit(e: &clap::Error) -> ! {
    if let Err(io) = e.print() {
        if !e.use_stderr() {
            stdout_failed(io);
        }
    }
    let _ = std::io::stdout().lock().flush();
    std::process::exit(e.exit_code());
}
