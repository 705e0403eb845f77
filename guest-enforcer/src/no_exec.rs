//! Tool calls that run no program, or only the helpers they must: after the broker
//! has executed the tool's binary, every further `execve`/`execveat` the tool makes
//! goes to the broker, which lets through only the exact helper execs the call needs
//! (git's own `git` for its internal subcommands, its HTTPS helper, the shims) and
//! refuses and reports every other.
//!
//! A program that starts what its configuration names (git's filters, drivers,
//! editors) is, for the call's lifetime, an interpreter of whatever the agent last
//! wrote there. Most calls of such a tool never need to start anything (`git status`,
//! `add`, `commit`, `diff`): for those the broker installs, on top of the tool's own
//! layers, a seccomp filter under which the only exec allowed is
//! `execveat(binary_fd, "", …, AT_EMPTY_PATH)` on the descriptor the broker opened when
//! the manifest was applied (close-on-exec, so it is gone once the tool runs). Every
//! other exec goes to a user-notify listener the broker holds: it answers `EACCES` and
//! writes one line naming the profile and the program on the tool's stderr. The
//! answer never depends on what the tool's memory says (the kernel's warning about
//! user-notify pointer races is about decisions; this one is always "no"), so the path
//! read from the tool is only for the report.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The filter: `execve` → notify; `execveat` → allowed only on `binary_fd` with
/// `AT_EMPTY_PATH`, else notify; everything else passes to the tool's other filters.
#[derive(Debug, Clone)]
pub struct NoExecFilter {
    program: Vec<libc::sock_filter>,
}

// SAFETY: sock_filter is plain data (integers); the Vec owns it.
unsafe impl Send for NoExecFilter {}
// SAFETY: as above; it is only read.
unsafe impl Sync for NoExecFilter {}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Offsets in `struct seccomp_data`: nr, arch, then args[] from byte 16.
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}

impl NoExecFilter {
    /// The filter for a call whose binary the broker executes from `binary_fd`.
    pub fn allowing_only(binary_fd: RawFd) -> NoExecFilter {
        let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
        let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
        let jset = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        // Jump offsets count from the next instruction; NOTIFY is 9, ALLOW 10.
        let program = vec![
            f(ld, 0, 0, ARCH),
            // Another ABI: the agent's filter below kills it already.
            f(jeq, 0, 8, AUDIT_ARCH_X86_64),
            f(ld, 0, 0, NR),
            f(jeq, 5, 0, libc::SYS_execve as u32),
            f(jeq, 0, 5, libc::SYS_execveat as u32),
            // The kernel reads dirfd and flags as ints: the low words decide.
            f(ld, 0, 0, arg_low(0)),
            f(jeq, 0, 2, binary_fd as u32),
            f(ld, 0, 0, arg_low(4)),
            f(jset, 1, 0, libc::AT_EMPTY_PATH as u32),
            f(ret, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
            f(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
        ];
        NoExecFilter { program }
    }

    /// Between fork and exec: installs the filter with a listener and sends the
    /// listener to the broker over `report` (SCM_RIGHTS). No allocation.
    pub fn install_on_current_thread(&self, report: RawFd) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prctl with integer arguments (the identity layer set it already; a
        // filter needs it when the caller has no CAP_SYS_ADMIN).
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `prog` points to our program, which outlives the call.
        let listener = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &prog as *const libc::sock_fprog,
            )
        };
        if listener < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = listener as RawFd;
        let sent = send_fd(report, listener);
        // SAFETY: closing the listener we just got; the broker holds its own copy.
        unsafe { libc::close(listener) };
        sent
    }
}

/// Sends one descriptor with a one-byte message; no allocation.
fn send_fd(socket: RawFd, fd: RawFd) -> io::Result<()> {
    #[repr(C, align(8))]
    struct Control([u8; 64]);
    let mut control = Control([0; 64]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: msghdr is plain data; every pointer set below points to a live local,
    // and CMSG_* only compute offsets inside `control`, which is large enough for one
    // descriptor (CMSG_SPACE(4) = 24).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// argv and envp built before fork, for [`exec_binary_fd`] after it.
pub struct ExecVectors {
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into `_strings`' heap buffers, which move with the value
// and are never mutated; nothing else aliases them.
unsafe impl Send for ExecVectors {}
// SAFETY: as above; only read.
unsafe impl Sync for ExecVectors {}

impl ExecVectors {
    /// NUL-terminated argv and `KEY=value` envp (an argument with a NUL is an error).
    pub fn new(argv: &[String], env: &[(String, String)]) -> io::Result<ExecVectors> {
        let bad = |_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in argv or env");
        let args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(bad))
            .collect::<Result<_, _>>()?;
        let vars: Vec<CString> = env
            .iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")).map_err(bad))
            .collect::<Result<_, _>>()?;
        let ptrs = |v: &[CString]| {
            let mut p: Vec<*const libc::c_char> = v.iter().map(|c| c.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let (argv, envp) = (ptrs(&args), ptrs(&vars));
        let mut strings = args;
        strings.extend(vars);
        Ok(ExecVectors {
            _strings: strings,
            argv,
            envp,
        })
    }
}

/// Between fork and exec: executes the binary open at `fd` (the one exec the filter
/// allows). Returns only on failure.
pub fn exec_binary_fd(fd: RawFd, vectors: &ExecVectors) -> io::Error {
    const EMPTY: &CStr = c"";
    // SAFETY: every pointer is NUL-terminated data owned by `vectors` or static;
    // execveat only returns on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            EMPTY.as_ptr(),
            vectors.argv.as_ptr(),
            vectors.envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

/// Receives the listener a child sent over `report` (it is already queued once the
/// child has executed its binary).
pub fn receive_listener(report: &OwnedFd) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        report.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let [fd] = fds[..] {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::other(
        "the tool did not send its seccomp listener",
    ))
}

/// An exec a call may make after its binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedExec {
    /// This path, with this `argv[0]` or the path itself as `argv[0]` (git's
    /// `<exec-path>/git` as `git`: its internal subcommands; never as `git-<name>`,
    /// which would pick a subcommand by name).
    Exact {
        /// The path execve is given.
        path: String,
        /// The `argv[0]` it is given.
        argv0: String,
    },
    /// Any program directly in this directory (the shims: each is a brokered call).
    In(String),
}

impl AllowedExec {
    fn admits(&self, path: &str, argv0: &str) -> bool {
        match self {
            // git gives a program it starts its resolved path as argv[0]; a bare name
            // is the same program under the same name. Any other name is not.
            AllowedExec::Exact { path: p, argv0: a } => p == path && (argv0 == a || argv0 == p),
            AllowedExec::In(dir) => path
                .strip_prefix(dir.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|name| !name.is_empty() && !name.contains('/')),
        }
    }
}

/// Supervises every exec the tool attempts, until the tool and its threads are gone:
/// one that `allowed` admits continues (Landlock still decides whether it may run);
/// any other is answered `EACCES`, writing `refusal` and the program to `stderr` (or,
/// for a program in `explained`, its explanation).
///
/// Letting an exec continue on what the tool's memory says is sound only because
/// nothing hostile can change that memory between the read and the exec: the
/// processes under this filter are the tool's own (git and its helpers; the agent's
/// code never runs in the tool's domain), and the agent cannot write to them (its
/// seccomp filter denies ptrace and `process_vm_*`, and Landlock denies ptrace-class
/// access, `/proc/<pid>/mem` included, across sibling domains). The decision is then
/// rechecked with `SECCOMP_IOCTL_NOTIF_ID_VALID`, so a recycled pid cannot lend its
/// memory.
pub fn supervise_execs_until_exit(
    listener: OwnedFd,
    mut stderr: File,
    refusal: String,
    explained: Vec<(String, &'static str)>,
    allowed: Vec<AllowedExec>,
) {
    let fd = listener.as_raw_fd();
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        if pfd.revents & libc::POLLIN == 0 {
            // POLLHUP: no task uses the filter any more.
            return;
        }
        // SAFETY: seccomp_notif is plain data; the kernel fills it.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV writes one seccomp_notif into `req`.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } < 0 {
            continue;
        }
        let execveat = req.data.nr == libc::SYS_execveat as i32;
        let (path_arg, argv_arg) = if execveat {
            (req.data.args[1], req.data.args[2])
        } else {
            (req.data.args[0], req.data.args[1])
        };
        let path = read_c_string(req.pid, path_arg);
        let argv0 = read_pointer(req.pid, argv_arg).and_then(|p| read_c_string(req.pid, p));
        let admitted = !execveat
            && match (&path, &argv0) {
                (Some(path), Some(argv0)) => allowed.iter().any(|a| a.admits(path, argv0)),
                _ => false,
            };
        // The memory was read from the process this notification is about.
        let mut id = req.id;
        // SAFETY: ID_VALID reads one u64.
        let valid = unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &mut id) } == 0;
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: 0,
        };
        if admitted && valid {
            resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
        } else {
            let program = path.unwrap_or_else(|| "a program".into());
            let _ = match explained.iter().find(|(p, _)| *p == program) {
                Some((_, why)) => writeln!(stderr, "airlock: {why}"),
                None => writeln!(stderr, "airlock: {refusal}; it tried to run `{program}`"),
            };
            resp.error = -libc::EACCES;
        }
        // SAFETY: SEND reads one seccomp_notif_resp from `resp`.
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}

/// A pointer-sized value from another process's memory.
fn read_pointer(pid: u32, address: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = [0u8; 8];
    mem.read_exact_at(&mut buf, address).ok()?;
    Some(u64::from_ne_bytes(buf))
}

/// A NUL-terminated string of at most 256 bytes from another process (for the report
/// only: its contents decide nothing).
fn read_c_string(pid: u32, address: u64) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let mem = File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = [0u8; 256];
    let n = mem.read_at(&mut buf, address).ok()?;
    let end = buf[..n].iter().position(|b| *b == 0).unwrap_or(n);
    Some(
        String::from_utf8_lossy(&buf[..end])
            .escape_debug()
            .to_string(),
    )
}

/// A connected pair for [`NoExecFilter::install_on_current_thread`]'s report:
/// (broker's end, child's end), both close-on-exec.
pub fn report_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into a live array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
