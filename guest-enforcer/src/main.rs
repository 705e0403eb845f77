//! `airlock-enforcer`: the guest side of Airlock (PID 1 inside the microVM).
//!
//! This step ships the manifest check the enforcer runs before it applies anything:
//!
//! ```text
//! airlock-enforcer verify-manifest --pub KEY.pub --cid N --image-id ID --nonce HEX
//!                                  [--session-id HEX] [--now UNIX_SECS] ENVELOPE
//! ```
//!
//! Unlike `airlock manifest verify` (an operator's inspection tool), every binding is
//! mandatory here: the guest knows its CID, its image and the nonce it handed out, and a
//! manifest that is not bound to all three is refused. Exit 0 and the manifest (JSON) on
//! stdout when valid; exit 1 and the failed check on stderr otherwise; exit 2 on usage
//! errors. Built statically for `x86_64-unknown-linux-musl`.
//!
//! ```text
//! airlock-enforcer run-process --envelope-fd N --pub-fd N --cid N --image-id ID
//!                              --nonce HEX --session-id HEX --shim PATH
//!                              [--source TAG=HOST_PATH]... [--tty]
//! ```
//!
//! Process isolation (see `airlock_enforcer::process_isolation`), started by
//! `airlock run --isolation process`: verifies the envelope read from one inherited
//! descriptor with the public key read from another, then runs the session. Exits with
//! the agent's status; 125 when airlock itself failed (nothing of the agent ran). With
//! `--tty` the agent gets a terminal of its own, relayed to this process's stdin and
//! stdout (`ProcessSession::tty`).
//!
//! Output never panics. SIGPIPE keeps the disposition Rust gives it (ignored), since
//! PID 1 and `run-process` serve sockets and pipes for the whole session and a peer that
//! goes away must not kill them: a write to a closed pipe fails with EPIPE instead.
//! `verify-manifest` then exits silently with 141 (128 + SIGPIPE, what a shell reports
//! for `cat` killed by SIGPIPE, and what `airlock` exits with) when its stdout is closed;
//! a diagnostic that cannot be written to stderr is dropped and the exit status stays
//! the one the command earned (PID 1 still powers off, `run-process` still reports the
//! agent's status).

use airlock_proto::envelope::{Expect, Expectations, Verifier};
use std::io::Write;
use std::process::ExitCode;

/// The exit status when stdout is a closed pipe: 128 + SIGPIPE.
const EXIT_STDOUT_CLOSED: u8 = 141;

/// `eprintln!` that never panics: a diagnostic stderr cannot take is dropped.
macro_rules! errln {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Writes `text` and a newline to stdout: the exit code for it (0; 141 when stdout is a
/// closed pipe, silently; 1 on another failure, said on stderr).
fn print_stdout(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(EXIT_STDOUT_CLOSED),
        Err(e) => {
            errln!("airlock-enforcer: stdout: {e}");
            ExitCode::from(1)
        }
    }
}

const USAGE: &str = "usage: airlock-enforcer verify-manifest --pub KEY.pub --cid N --image-id ID --nonce HEX [--session-id HEX] [--now UNIX_SECS] ENVELOPE";

/// Parsed `verify-manifest` arguments.
#[derive(Debug, Default)]
struct VerifyArgs {
    public_key: Option<String>,
    cid: Option<u32>,
    image_id: Option<String>,
    nonce: Option<String>,
    session_id: Option<String>,
    now: Option<u64>,
    envelope: Option<String>,
}

fn parse_verify_args(args: &[String]) -> Result<VerifyArgs, String> {
    let mut out = VerifyArgs::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--pub" => out.public_key = Some(value("--pub")?),
            "--cid" => {
                let v = value("--cid")?;
                out.cid = Some(
                    v.parse()
                        .map_err(|_| format!("--cid `{v}` is not a number"))?,
                );
            }
            "--image-id" => out.image_id = Some(value("--image-id")?),
            "--nonce" => out.nonce = Some(value("--nonce")?),
            "--session-id" => out.session_id = Some(value("--session-id")?),
            "--now" => {
                let v = value("--now")?;
                out.now = Some(
                    v.parse()
                        .map_err(|_| format!("--now `{v}` is not a number"))?,
                );
            }
            flag if flag.starts_with('-') && flag != "-" => {
                return Err(format!("unknown option `{flag}`"))
            }
            path => {
                if out.envelope.replace(path.to_string()).is_some() {
                    return Err("more than one envelope given".into());
                }
            }
        }
    }
    Ok(out)
}

fn verify_manifest(args: VerifyArgs) -> Result<String, (u8, String)> {
    let usage = |what: &str| (2u8, format!("{what} is required\n{USAGE}"));
    let pub_path = args.public_key.ok_or_else(|| usage("--pub"))?;
    let cid = args.cid.ok_or_else(|| usage("--cid"))?;
    let image_id = args.image_id.ok_or_else(|| usage("--image-id"))?;
    let nonce = args.nonce.ok_or_else(|| usage("--nonce"))?;
    let envelope_path = args.envelope.ok_or_else(|| usage("ENVELOPE"))?;
    let pem = std::fs::read_to_string(&pub_path).map_err(|e| (1, format!("{pub_path}: {e}")))?;
    let verifier =
        Verifier::from_public_key_pem(&pem).map_err(|e| (1, format!("{pub_path}: {e}")))?;
    let envelope =
        std::fs::read(&envelope_path).map_err(|e| (1, format!("{envelope_path}: {e}")))?;
    let now = match args.now {
        Some(n) => n,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| {
                (
                    1,
                    "system clock is before 1970; refusing to judge expiry".to_string(),
                )
            })?
            .as_secs(),
    };
    let expect = Expectations {
        now,
        session_id: args.session_id.map_or(Expect::Unchecked, Expect::Exactly),
        vm_cid: Expect::Exactly(cid),
        image_id: Expect::Exactly(image_id),
        nonce: Expect::Exactly(nonce),
    };
    let manifest = verifier
        .verify(&envelope, &expect)
        .map_err(|e| (1, format!("manifest refused: {e}")))?;
    serde_json::to_string_pretty(&manifest).map_err(|e| (1, e.to_string()))
}

const RUN_USAGE: &str = "usage: airlock-enforcer run-process --envelope-fd N --pub-fd N --cid N --image-id ID --nonce HEX --session-id HEX --shim PATH [--source TAG=HOST_PATH]... [--scratch-socket N] [--host-socket N --host-secret-fd N [--egress-socket N]] [--tty]";

/// Parses `run-process` arguments, verifies the envelope and runs the session.
fn run_process(args: &[String]) -> Result<u8, (u8, String)> {
    use airlock_enforcer::process_isolation::{read_inherited_fd, ProcessSession};
    let usage = |what: String| (2u8, format!("{what}\n{RUN_USAGE}"));
    let mut opts: std::collections::HashMap<&str, String> = Default::default();
    let mut sources = Vec::new();
    let mut tty = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--tty" {
            tty = true;
            continue;
        }
        let value = it
            .next()
            .cloned()
            .ok_or_else(|| usage(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--source" => {
                let (tag, path) = value
                    .split_once('=')
                    .ok_or_else(|| usage(format!("--source `{value}` is not TAG=HOST_PATH")))?;
                sources.push((tag.to_string(), std::path::PathBuf::from(path)));
            }
            f @ ("--envelope-fd" | "--pub-fd" | "--cid" | "--image-id" | "--nonce"
            | "--session-id" | "--shim" | "--scratch-socket" | "--host-socket"
            | "--host-secret-fd" | "--egress-socket") => {
                opts.insert(f, value);
            }
            other => return Err(usage(format!("unknown option `{other}`"))),
        }
    }
    let mut take = |name: &str| {
        opts.remove(name)
            .ok_or_else(|| usage(format!("{name} is required")))
    };
    let fd = |v: String, name: &str| {
        v.parse::<i32>()
            .map_err(|_| usage(format!("{name} `{v}` is not a descriptor number")))
    };
    let envelope_fd = fd(take("--envelope-fd")?, "--envelope-fd")?;
    let scratch_socket = match take("--scratch-socket").ok() {
        Some(v) => Some(fd(v, "--scratch-socket")?),
        None => None,
    };
    let host_socket = match take("--host-socket").ok() {
        Some(v) => Some(fd(v, "--host-socket")?),
        None => None,
    };
    let egress_socket = match take("--egress-socket").ok() {
        Some(v) => Some(fd(v, "--egress-socket")?),
        None => None,
    };
    let host_secret_fd = match take("--host-secret-fd").ok() {
        Some(v) => Some(fd(v, "--host-secret-fd")?),
        None => None,
    };
    if host_socket.is_some() != host_secret_fd.is_some() {
        return Err(usage(
            "--host-socket and --host-secret-fd go together".into(),
        ));
    }
    let pub_fd = fd(take("--pub-fd")?, "--pub-fd")?;
    let cid_text = take("--cid")?;
    let cid: u32 = cid_text
        .parse()
        .map_err(|_| usage(format!("--cid `{cid_text}` is not a number")))?;
    let (image_id, nonce, session_id, shim) = (
        take("--image-id")?,
        take("--nonce")?,
        take("--session-id")?,
        take("--shim")?,
    );
    let refused = |e: String| (125u8, e);
    let pem = read_inherited_fd(pub_fd, 64 * 1024)
        .map_err(|e| refused(format!("public key (fd {pub_fd}): {e}")))?;
    let pem = String::from_utf8(pem).map_err(|_| refused("public key is not UTF-8".into()))?;
    let verifier = Verifier::from_public_key_pem(&pem)
        .map_err(|e| refused(format!("public key (fd {pub_fd}): {e}")))?;
    let envelope = read_inherited_fd(envelope_fd, 2 << 20)
        .map_err(|e| refused(format!("envelope (fd {envelope_fd}): {e}")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| refused("system clock is before 1970".into()))?
        .as_secs();
    let expect = Expectations {
        now,
        session_id: Expect::Exactly(session_id),
        vm_cid: Expect::Exactly(cid),
        image_id: Expect::Exactly(image_id),
        nonce: Expect::Exactly(nonce),
    };
    let manifest = verifier
        .verify(&envelope, &expect)
        .map_err(|e| refused(format!("manifest refused: {e}")))?;
    // The launcher handed these descriptors over for us to own. Each is made
    // close-on-exec at once: nothing the agent or a tool runs may inherit a channel.
    let own = |fd: Option<i32>, name: &str| -> Result<Option<std::os::fd::OwnedFd>, (u8, String)> {
        let Some(fd) = fd else { return Ok(None) };
        // SAFETY: the launcher passed `fd` for this process to own; nothing else here
        // holds it.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| refused(format!("{name} {fd}: {e}")))?;
        Ok(Some(owned))
    };
    let scratch_socket = own(scratch_socket, "--scratch-socket")?;
    let egress_socket = own(egress_socket, "--egress-socket")?;
    let host_channel = match (own(host_socket, "--host-socket")?, host_secret_fd) {
        (Some(socket), Some(secret_fd)) => {
            let secret = read_inherited_fd(secret_fd, 1024)
                .map_err(|e| refused(format!("host secret (fd {secret_fd}): {e}")))?;
            Some((socket, secret))
        }
        _ => None,
    };
    let code = ProcessSession {
        manifest,
        sources,
        shim: shim.into(),
        scratch_socket,
        host_channel,
        egress_socket,
        tty,
    }
    .run()
    .map_err(|e| refused(format!("process isolation: {e}; the agent did not run")))?;
    Ok(u8::try_from(code).unwrap_or(125))
}

/// PID 1 in the guest: brings the guest up, reports on the console, serves the host
/// channel until the host asks for shutdown, powers off. Any failure powers off too.
fn run_as_guest_init() -> ! {
    use airlock_enforcer::guest_init::{bring_up_guest, power_off};
    match bring_up_guest() {
        Ok(r) => {
            // PID 1 must not panic (the kernel would): a console write that fails is
            // dropped.
            let _ = writeln!(
                std::io::stdout().lock(),
                "airlock-enforcer: init: mounted {}; modules {}; landlock abi {}; image {}; trusted key {}",
                r.mounted.join(" "),
                if r.modules.is_empty() { "none".to_string() } else { r.modules.join(" ") },
                r.landlock_abi,
                r.image_id,
                r.trusted_key_id
            );
            if let Err(e) = airlock_enforcer::host_channel::serve_until_shutdown(r) {
                errln!("airlock-enforcer: host channel: {e}; powering off");
            }
        }
        Err(e) => errln!("airlock-enforcer: {e}; powering off"),
    }
    power_off()
}

fn main() -> ExitCode {
    if std::process::id() == 1 {
        run_as_guest_init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some((cmd, rest)) = args.split_first() {
        if cmd == "run-process" {
            return match run_process(rest) {
                Ok(code) => ExitCode::from(code),
                Err((code, msg)) => {
                    errln!("airlock: {msg}");
                    ExitCode::from(code)
                }
            };
        }
    }
    let result = match args.split_first() {
        Some((cmd, rest)) if cmd == "verify-manifest" => parse_verify_args(rest)
            .map_err(|e| (2, format!("{e}\n{USAGE}")))
            .and_then(verify_manifest),
        _ => Err((2, format!("{USAGE}\n{RUN_USAGE}"))),
    };
    match result {
        Ok(json) => print_stdout(&json),
        Err((code, msg)) => {
            errln!("airlock-enforcer: {msg}");
            ExitCode::from(code)
        }
    }
}
