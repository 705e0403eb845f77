//! A hostile process for the layer tests: performs one forbidden (or allowed) action and
//! prints `ok` or `errno=N`. The tests run it under the enforcer's layers and check both
//! that the forbidden thing fails and that it fails for the layer's reason (the errno the
//! layer produces, compared with the same action unconfined).
//!
//! Usage: hostile_probe ACTION [ARGS...]
//!
//! Output never panics: a line stdout or stderr cannot take (a closed pipe) is dropped,
//! and the probe's exit status stays its own. SIGPIPE stays ignored, so probes that
//! write to sockets and pipes see EPIPE rather than die.

use std::ffi::CString;
use std::io::{Read, Write};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Turns a raw syscall result into ok / errno.
fn check(rc: libc::c_long) -> Result<(), i32> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in probe arguments")
}

fn io(r: std::io::Result<()>) -> Result<(), i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// `seccomp_data.arch` of the two ABIs a 64-bit x86 process can enter the kernel by.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// The errno the witness answers with. No syscall the probe makes returns it on its
/// own, and the agent's filter never does: seeing it means the call got past every
/// filter installed before the witness.
const WITNESS_ERRNO: i32 = libc::EHWPOISON;

fn parse_number(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// Makes `call` (syscall `nr` of ABI `arch`) under a witness: a seccomp filter of the
/// probe's own, installed after whatever the tests applied before exec, that hands that
/// one syscall to a supervisor thread instead of the kernel, and the supervisor answers
/// [`WITNESS_ERRNO`]. A user-notify answer ranks below any errno or kill, whatever the
/// order the filters were installed in, so a filter that refuses the call wins and the
/// witness never hears of it; if every other filter lets it through, the witness
/// answers. Either way the call itself never runs, so the
/// tests can issue `kexec_load` or `mount` as root without touching the machine, and an
/// errno the agent's filter answers can only have come from that filter.
fn witnessed_syscall(
    arch: u32,
    nr: u32,
    call: impl FnOnce() -> Result<(), i32>,
) -> Result<(), i32> {
    use libc::{sock_filter, sock_fprog};
    let (tx, rx) = std::sync::mpsc::channel::<i32>();
    // The supervisor starts before the witness exists: filters are per thread, so its
    // own ioctls are never witnessed.
    std::thread::spawn(move || {
        let Ok(listener) = rx.recv() else { return };
        // If this thread stops, the listener closes with it, and the kernel then fails
        // witnessed calls with ENOSYS instead of leaving the probe blocked forever.
        // SAFETY: the descriptor came from seccomp(2) in this process; only we own it.
        let owned =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(listener) };
        let _close_on_return = owned;
        loop {
            // SAFETY: seccomp_notif is plain data; the kernel fills it.
            let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: RECV writes one seccomp_notif into `req`.
            if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                return;
            }
            let mut resp = libc::seccomp_notif_resp {
                id: req.id,
                val: 0,
                error: -WITNESS_ERRNO,
                flags: 0,
            };
            // SAFETY: SEND reads one seccomp_notif_resp from `resp`.
            unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
        }
    });
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let f = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let program = [
        f(ld, 0, 0, 4),     // seccomp_data.arch
        f(jeq, 0, 3, arch), // another ABI: allow
        f(ld, 0, 0, 0),     // seccomp_data.nr
        f(jeq, 0, 1, nr),   // another call: allow
        f(ret, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
        f(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut sock_filter,
    };
    // SAFETY: prctl with integer arguments; no_new_privs lets an unprivileged probe
    // install a filter (the agent's sandbox has set it already).
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        panic!("witness: no_new_privs: errno {}", errno());
    }
    // SAFETY: `prog` points to `program`, which outlives the call.
    let listener = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const sock_fprog,
        )
    };
    if listener < 0 {
        panic!("witness: cannot install its filter: errno {}", errno());
    }
    tx.send(listener as i32).expect("the supervisor waits");
    call()
}

fn run(action: &str, args: &[String]) -> Result<(), i32> {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    // SAFETY (applies to each block below): each call is a raw syscall whose pointer
    // arguments are null or point to live, correctly sized locals; results are checked.
    match action {
        "read" => {
            io(std::fs::File::open(arg(0)).and_then(|mut f| f.read(&mut [0u8; 16]).map(|_| ())))
        }
        "write" => io(std::fs::write(arg(0), b"written by the probe")),
        "hardlink" => io(std::fs::hard_link(arg(0), arg(1))),
        "exec" => {
            let path = cstr(arg(0));
            let argv = [path.as_ptr(), std::ptr::null()];
            // SAFETY: see above; execv only returns on failure.
            unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
            Err(errno())
        }
        "connect-tcp" => io(std::net::TcpStream::connect((
            "127.0.0.1",
            arg(0).parse::<u16>().unwrap_or(1),
        ))
        .map(|_| ())),
        "kill" => check(unsafe { libc::kill(arg(0).parse().unwrap_or(1), 0) } as libc::c_long),
        "abstract-connect" => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(arg(0).as_bytes())
                .map_err(|_| -1)?;
            io(std::os::unix::net::UnixStream::connect_addr(&addr).map(|_| ()))
        }
        "socket" => {
            let (family, ty) = match arg(0) {
                "vsock" => (libc::AF_VSOCK, libc::SOCK_STREAM),
                "packet" => (libc::AF_PACKET, libc::SOCK_RAW),
                "raw" => (libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC),
                "tcp" => (libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC),
                other => panic!("unknown socket kind {other}"),
            };
            check(unsafe { libc::socket(family, ty, 0) } as libc::c_long)
        }
        "io-uring-setup" => {
            let mut params = [0u8; 120];
            check(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) })
        }
        "memfd-create" => {
            check(unsafe { libc::syscall(libc::SYS_memfd_create, cstr("x").as_ptr(), 0u32) })
        }
        // The fd is a non-executable file, so unconfined the kernel answers EACCES (and
        // the probe is not replaced); the filter answers EPERM before the kernel looks.
        "execveat-empty-path" => {
            let fd = unsafe {
                libc::open(
                    cstr("/etc/passwd").as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(errno());
            }
            let empty = cstr("");
            let argv = [empty.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null::<libc::c_char>()];
            check(unsafe {
                libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    empty.as_ptr(),
                    argv.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                )
            })
        }
        "ptrace-traceme" => check(unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) }),
        "process-vm-readv" => check(unsafe {
            libc::syscall(
                libc::SYS_process_vm_readv,
                libc::getpid(),
                std::ptr::null::<u8>(),
                0,
                std::ptr::null::<u8>(),
                0,
                0,
            )
        }),
        "unshare-user" => check(unsafe { libc::unshare(libc::CLONE_NEWUSER) } as libc::c_long),
        "clone-newuser" => {
            let pid = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
                    0,
                    0,
                    0,
                    0,
                )
            };
            if pid == 0 {
                unsafe { libc::_exit(0) };
            }
            if pid > 0 {
                unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
            }
            check(pid)
        }
        "fork" => {
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                unsafe { libc::_exit(0) };
            }
            if pid > 0 {
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            check(pid as libc::c_long)
        }
        // An fs type that does not exist: unconfined this fails with ENODEV, so the probe
        // never mounts anything on the host even when run as root.
        "mount" => check(unsafe {
            libc::mount(
                cstr("none").as_ptr(),
                cstr("/tmp").as_ptr(),
                cstr("airlock-no-such-fs").as_ptr(),
                0,
                std::ptr::null(),
            )
        } as libc::c_long),
        "bpf" => {
            check(unsafe { libc::syscall(libc::SYS_bpf, 0xffffi64, std::ptr::null::<u8>(), 0u32) })
        }
        "perf-event-open" => check(unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                std::ptr::null::<u8>(),
                0,
                -1,
                -1,
                0,
            )
        }),
        "userfaultfd" => check(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) }),
        "keyctl" => check(unsafe { libc::syscall(libc::SYS_keyctl, 0xffffi64, 0, 0, 0, 0) }),
        "init-module" => check(unsafe {
            libc::syscall(
                libc::SYS_init_module,
                std::ptr::null::<u8>(),
                0,
                cstr("").as_ptr(),
            )
        }),
        "personality-set" => check(unsafe {
            libc::personality(0x0040_0000 /* READ_IMPLIES_EXEC */)
        } as libc::c_long),
        "personality-query" => check(unsafe { libc::personality(0xffff_ffff) } as libc::c_long),
        "tiocsti" => {
            let c: libc::c_char = b'x' as libc::c_char;
            check(unsafe { libc::ioctl(0, libc::TIOCSTI, &c) } as libc::c_long)
        }
        "clone3" => {
            check(unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) })
        }
        "x32-getpid" => check(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) }),
        "getpid" => check(unsafe { libc::syscall(libc::SYS_getpid) }),
        // `witnessed-syscall NR A0..A5`: see `witnessed_syscall`.
        "witnessed-syscall" => {
            let num = |i: usize| parse_number(arg(i));
            let args = [num(1), num(2), num(3), num(4), num(5), num(6)];
            witnessed_syscall(AUDIT_ARCH_X86_64, num(0) as u32, || {
                // SAFETY: the witness answers this syscall number before the kernel runs
                // it, unless a filter installed before it decided first: it never runs.
                check(unsafe {
                    libc::syscall(
                        num(0) as libc::c_long,
                        args[0],
                        args[1],
                        args[2],
                        args[3],
                        args[4],
                        args[5],
                    )
                })
            })
        }
        // getpid (20) through the i386 entry point (`int 0x80`), under a witness for the
        // i386 ABI: a filter keyed on x86-64 numbers must not judge it as x86-64.
        "witnessed-int80-getpid" => witnessed_syscall(AUDIT_ARCH_I386, 20, || {
            let mut rc: i32 = 20;
            // SAFETY: `int 0x80` with eax = 20 (i386 getpid) takes no pointer arguments
            // and clobbers only eax; the witness answers it before it runs.
            unsafe { std::arch::asm!("int 0x80", inout("eax") rc, options(nostack)) };
            if rc < 0 {
                Err(-rc)
            } else {
                Ok(())
            }
        }),
        // Looks for any open descriptor in FIRST..=LAST before opening anything itself:
        // `ok` if one is (something leaked into the agent), errno=9 (EBADF) if none.
        "fd-open-any" => {
            let (first, last): (i32, i32) =
                (arg(0).parse().unwrap_or(3), arg(1).parse().unwrap_or(3));
            let open = (first..=last).find(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
            match open {
                Some(fd) => {
                    let _ = writeln!(std::io::stderr(), "descriptor {fd} is open");
                    Ok(())
                }
                None => Err(libc::EBADF),
            }
        }
        "setuid-root" => check(unsafe { libc::setuid(0) } as libc::c_long),
        // Writes N bytes with SIGXFSZ ignored, so RLIMIT_FSIZE shows as EFBIG.
        "write-big" => {
            unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
            let n: usize = arg(0).parse().unwrap_or(0);
            io(std::fs::write(arg(1), vec![b'x'; n]))
        }
        // Keeps N descriptors open at once.
        "open-many" => {
            let n: usize = arg(0).parse().unwrap_or(0);
            let files: Result<Vec<_>, _> =
                (0..n).map(|_| std::fs::File::open("/dev/null")).collect();
            io(files.map(|_| ()))
        }
        // Forks N children that wait on a pipe, then releases them all.
        "fork-many" => {
            let n: usize = arg(0).parse().unwrap_or(0);
            let mut fds = [0; 2];
            unsafe { libc::pipe(fds.as_mut_ptr()) };
            let mut kids = Vec::new();
            let mut result = Ok(());
            for _ in 0..n {
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let mut b = [0u8; 1];
                    unsafe {
                        libc::close(fds[1]);
                        libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                        libc::_exit(0);
                    }
                }
                if pid < 0 {
                    result = Err(errno());
                    break;
                }
                kids.push(pid);
            }
            unsafe { libc::close(fds[1]) };
            for pid in kids {
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            result
        }
        "exit-code" => std::process::exit(arg(0).parse().unwrap_or(1)),
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(arg(0).parse().unwrap_or(0)));
            Ok(())
        }
        "symlink" => io(std::os::unix::fs::symlink(arg(0), arg(1))),
        // Plants a symlink TARGET at LINK, then reads through it.
        "symlink-read" => {
            io(std::os::unix::fs::symlink(arg(0), arg(1)))?;
            io(std::fs::File::open(arg(1)).and_then(|mut f| f.read(&mut [0u8; 16]).map(|_| ())))
        }
        // Copies SRC to DST, makes it executable and execs it.
        "copy-exec" => {
            run("copy", args)?;
            run("exec", &args[1..])
        }
        // Copies a file and makes the copy executable (the "bring your own binary" move).
        "copy" => io(std::fs::copy(arg(0), arg(1)).and_then(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(arg(1), std::fs::Permissions::from_mode(0o755))
        })),
        // exec with arguments: PATH ARG...
        "execv" => {
            let owned: Vec<CString> = args.iter().map(|a| cstr(a)).collect();
            let mut argv: Vec<*const libc::c_char> = owned.iter().map(|a| a.as_ptr()).collect();
            argv.push(std::ptr::null());
            // SAFETY: see above; argv is NULL-terminated and outlives the call.
            unsafe { libc::execv(owned[0].as_ptr(), argv.as_ptr()) };
            Err(errno())
        }
        // Allocates and touches N MiB.
        "hog" => {
            let n: usize = arg(0).parse().unwrap_or(0);
            let mut v: Vec<Vec<u8>> = Vec::new();
            for _ in 0..n {
                v.push(vec![1u8; 1 << 20]);
            }
            std::hint::black_box(&v);
            Ok(())
        }
        // Sends a hand-written request to the broker socket at PATH with this process's
        // cwd and stdio, and prints the broker's reply: a forged shim.
        "broker-raw" => {
            use std::os::fd::AsRawFd;
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0) };
            if fd < 0 {
                return Err(errno());
            }
            let path = arg(0).as_bytes();
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in addr.sun_path.iter_mut().zip(path) {
                *d = *s as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sa_family_t>() + path.len();
            check(unsafe {
                libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len as u32)
            } as libc::c_long)?;
            let cwd = std::fs::File::open(".").map_err(|e| e.raw_os_error().unwrap_or(-1))?;
            let fds = [cwd.as_raw_fd(), 0, 1, 2];
            let payload = arg(1).as_bytes();
            let mut iov = libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            };
            let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(&fds) as u32) } as usize;
            let mut cbuf = vec![0u8; space];
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(&fds) as u32) as _;
                std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), 4);
            }
            check(unsafe { libc::sendmsg(fd, &msg, 0) } as libc::c_long)?;
            let mut reply = [0u8; 512];
            let n = unsafe { libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0) };
            if n < 0 {
                return Err(errno());
            }
            let _ = writeln!(
                std::io::stdout(),
                "reply {}",
                String::from_utf8_lossy(&reply[..n as usize])
            );
            Ok(())
        }
        // Containment-table actions (issue 15).
        // userfaultfd with UFFD_USER_MODE_ONLY: since Linux 5.11 any process may make one
        // (it handles only faults of its own user-space code), whatever
        // vm.unprivileged_userfaultfd says, so unconfined it works unprivileged.
        "userfaultfd-user-mode" => {
            const UFFD_USER_MODE_ONLY: libc::c_int = 1;
            check(unsafe {
                libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY)
            })
        }
        // `hog-child N`: a child allocates and touches N MiB (as `hog`) while this small
        // process waits for it and prints how it ended (`child exited N` or `child
        // killed by signal N`). Then it reads its stdin to the end, so whoever feeds it
        // can look at the session (its cgroup's counters) while the session still
        // exists, and ends as a shell would: 128 + the signal that killed the child.
        "hog-child" => {
            // SAFETY: fork in a single-threaded process; the child runs `hog` and exits.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err(errno());
            }
            if pid == 0 {
                let code = i32::from(run("hog", args).is_err());
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(code) };
            }
            let mut st = 0;
            // SAFETY: waits for our own child; `st` is a live local.
            if unsafe { libc::waitpid(pid, &mut st, 0) } < 0 {
                return Err(errno());
            }
            let code = if libc::WIFSIGNALED(st) {
                let _ = writeln!(
                    std::io::stdout(),
                    "child killed by signal {}",
                    libc::WTERMSIG(st)
                );
                128 + libc::WTERMSIG(st)
            } else {
                let _ = writeln!(std::io::stdout(), "child exited {}", libc::WEXITSTATUS(st));
                libc::WEXITSTATUS(st)
            };
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        other => panic!("unknown action {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (action, rest) = args
        .split_first()
        .expect("usage: hostile_probe ACTION [ARGS...]");
    if action == "status" {
        // Identity and capability lines of /proc/self/status, `;`-separated.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let keep = [
            "Uid:",
            "Gid:",
            "Groups:",
            "CapInh:",
            "CapPrm:",
            "CapEff:",
            "CapBnd:",
            "CapAmb:",
            "NoNewPrivs:",
        ];
        let lines: Vec<&str> = status
            .lines()
            .filter(|l| keep.iter().any(|k| l.starts_with(k)))
            .collect();
        let _ = writeln!(std::io::stdout(), "ok {}", lines.join(";"));
        return;
    }
    let line = match run(action, rest) {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("errno={e}"),
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
}
