//! Running the agent under a resolved manifest: the broker serves the granted tools, the
//! agent starts under its sandbox, and the session ends when the agent does.
//!
//! The agent is started through a small *agent init*: a forked child of the enforcer
//! that applies the agent's layers to itself, becomes the child subreaper of the agent's
//! tree (so the agent's orphans are reaped inside the sandbox, not by the enforcer,
//! whose own children are the broker's tools) and forks the agent's entrypoint. The
//! agent init never execs and runs only async-signal-safe code: the enforcer is
//! multi-threaded (the broker) when it forks. When the agent exits, the agent init
//! reports its wait status and exits; the caller then kills whatever is left.

use crate::broker::{Asker, Broker, BrokerError};
use crate::manifest_layers::{AgentPlan, GuestLayout};
use crate::sandbox::{PreparedSandbox, SandboxError};
use airlock_proto::manifest::Manifest;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Exit status for airlock's own failures (as `env`/`timeout` use for "could not run").
pub const EXIT_AIRLOCK_ERROR: i32 = 125;
/// Exit status when the wall-time limit stopped the agent (as `timeout` uses).
pub use airlock_proto::shell_status::EXIT_WALL_TIME;

/// Why the agent could not be started. Nothing of the agent ran, or it was stopped.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The broker could not serve.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A layer could not be prepared.
    #[error(transparent)]
    Layer(#[from] SandboxError),
    /// An argument, variable or path cannot be passed to exec.
    #[error("manifest field `{field}`: contains a NUL byte")]
    Nul {
        /// Which field.
        field: &'static str,
    },
    /// A system call of the enforcer failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// The agent's layers failed to apply in its process: the agent never ran.
    #[error("applying the agent's layers failed in its process: {0} (the agent did not run)")]
    ApplyFailed(io::Error),
    /// The entrypoint could not be executed.
    #[error("cannot execute the entrypoint {path}: {source}")]
    Exec {
        /// The entrypoint.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

fn os(what: &'static str) -> impl FnOnce(io::Error) -> SessionError {
    move |source| SessionError::Os { what, source }
}

/// How the agent ended (`WallTimeExceeded`: the manifest's wall time ran out); its
/// `exit_code` is the status a shell would report.
pub use airlock_proto::shell_status::ProcessEnd as AgentEnd;

/// Everything needed to run one agent.
pub struct AgentSession<'a> {
    /// The verified manifest.
    pub manifest: &'a Manifest,
    /// What [`crate::manifest_layers::plan_agent`] resolved from it.
    pub plan: AgentPlan,
    /// The image layout it was resolved against.
    pub layout: &'a GuestLayout,
    /// Where the broker listens (the shims' default is [`crate::shim::DEFAULT_BROKER_SOCKET`]).
    pub broker_socket: PathBuf,
    /// Who answers run-time asks.
    pub asker: Arc<dyn Asker>,
    /// Deadline for one ask.
    pub ask_timeout: Duration,
    /// The enforcer's stdin is a pseudo-terminal's slave that the agent takes as its
    /// stdio and controlling terminal (process isolation's `--tty`); else the agent
    /// inherits the enforcer's stdio as they are.
    pub on_terminal: bool,
}

/// The agent's exec arguments, built before fork (nothing is allocated after it).
pub struct ExecImage {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
}

fn cstring(s: &str, field: &'static str) -> Result<CString, SessionError> {
    CString::new(s).map_err(|_| SessionError::Nul { field })
}

/// The agent's environment: the manifest's, then PATH = the shim directory (so tools
/// resolve to shims), HOME and USER unless the manifest set them.
pub fn agent_environment(manifest: &Manifest, layout: &GuestLayout) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = manifest
        .command
        .env
        .iter()
        .filter(|(k, _)| k.as_str() != "PATH")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("PATH".into(), layout.shim_dir.display().to_string()));
    for (k, v) in crate::egress_funnel::agent_proxy_environment(manifest) {
        if !manifest.command.env.contains_key(&k) {
            env.push((k, v));
        }
    }
    for (k, v) in [("HOME", manifest.command.cwd.as_str()), ("USER", "agent")] {
        if !manifest.command.env.contains_key(k) {
            env.push((k.into(), v.into()));
        }
    }
    env
}

impl ExecImage {
    /// What to exec: the resolved binary, argv, `KEY=VALUE` environment, cwd.
    pub fn new(
        entrypoint: &std::path::Path,
        argv: &[String],
        env: &[(String, String)],
        cwd: &str,
    ) -> Result<ExecImage, SessionError> {
        Ok(ExecImage {
            path: cstring(&entrypoint.display().to_string(), "command.argv[0]")?,
            argv: argv
                .iter()
                .map(|a| cstring(a, "command.argv"))
                .collect::<Result<Vec<_>, _>>()?,
            envp: env
                .iter()
                .map(|(k, v)| cstring(&format!("{k}={v}"), "command.env"))
                .collect::<Result<Vec<_>, _>>()?,
            cwd: cstring(cwd, "command.cwd")?,
        })
    }

    fn for_session(session: &AgentSession<'_>) -> Result<ExecImage, SessionError> {
        let m = session.manifest;
        ExecImage::new(
            &session.plan.entrypoint,
            &m.command.argv,
            &agent_environment(m, session.layout),
            &m.command.cwd,
        )
    }
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into a live two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded; both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Stage codes the agent init reports on its error pipe.
const STAGE_APPLY: i32 = 1;
const STAGE_EXEC: i32 = 2;
const STAGE_FORK: i32 = 3;

/// Writes (stage, errno) to `fd` and exits. Async-signal-safe.
fn report_and_exit(fd: libc::c_int, stage: i32, errno: i32) -> ! {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write from a live stack buffer, then _exit; both async-signal-safe.
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(EXIT_AIRLOCK_ERROR)
    }
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Signals the agent init passes on to the agent (how `Signal` and a terminal's
/// interrupts reach it); every other catchable signal keeps its default action.
pub const FORWARDED_SIGNALS: [libc::c_int; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// The agent's pid, in the agent init (a forked child: one per process).
static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A terminal's interrupt (sent by the kernel) already reached the agent, which is in
    // the same process group; only signals a process sent to the init are passed on.
    // SAFETY: the kernel hands SA_SIGINFO handlers a valid siginfo.
    let from_kernel = info.is_null() || unsafe { (*info).si_code } > 0;
    let pid = FORWARD_TO.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 && !from_kernel {
        // To the agent's process group (it leads one), as a terminal would: a shell
        // waiting on a child is interrupted with it. Just the agent if the group is not
        // formed yet.
        // SAFETY: kill is async-signal-safe; the pid is the agent init's own child.
        unsafe {
            if libc::kill(-pid, sig) != 0 {
                libc::kill(pid, sig);
            }
        }
    }
}

/// Closes every descriptor from 3 up but `keep` (each ≥ 3), with `close_range`.
/// Async-signal-safe: one syscall per gap, no allocation. Returns the errno.
fn close_descriptors_except_on_current_process(keep: &[libc::c_int; 2]) -> Result<(), i32> {
    let mut keep = *keep;
    keep.sort_unstable();
    let mut first: libc::c_uint = 3;
    for k in keep {
        let k = k as libc::c_uint;
        if k > first {
            close_range(first, k - 1)?;
        }
        first = first.max(k + 1);
    }
    close_range(first, libc::c_uint::MAX)
}

fn close_range(first: libc::c_uint, last: libc::c_uint) -> Result<(), i32> {
    // SAFETY: close_range takes integers only and touches nothing but the descriptor
    // table of this process.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
    if r == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

/// The agent init, in the forked child. Never returns. With `terminal`, `stdio` is a
/// pseudo-terminal's slave, which the agent makes its controlling terminal.
#[allow(clippy::too_many_arguments)]
fn agent_init(
    image: &ExecImage,
    sandbox: &mut PreparedSandbox,
    err_fd: libc::c_int,
    status_fd: libc::c_int,
    stdio: Option<[libc::c_int; 3]>,
    terminal: bool,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    // SAFETY (each block below): raw, async-signal-safe syscalls on values prepared
    // before fork; pointers refer to live, NUL-terminated data owned by the parent's
    // copy of memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        if libc::chdir(image.cwd.as_ptr()) != 0 {
            report_and_exit(err_fd, STAGE_APPLY, last_errno());
        }
    }
    if let Err(e) = sandbox.apply_on_current_thread() {
        report_and_exit(
            err_fd,
            STAGE_APPLY,
            e.raw_os_error().unwrap_or(libc::EPROTO),
        );
    }
    // SAFETY: see above.
    unsafe {
        if let Some(fds) = stdio {
            for (target, fd) in fds.into_iter().enumerate() {
                if libc::dup2(fd, target as libc::c_int) < 0 {
                    report_and_exit(err_fd, STAGE_APPLY, last_errno());
                }
            }
        }
    }
    // The init never execs, so CLOEXEC never closes what it inherited from the
    // enforcer: other commands' pipes (a stdin that then never reaches end of file),
    // the vsock listener, the broker's socket. It keeps its stdio and its two pipes.
    if let Err(errno) = close_descriptors_except_on_current_process(&[err_fd, status_fd]) {
        report_and_exit(err_fd, STAGE_APPLY, errno);
    }
    // SAFETY: see above.
    let agent = unsafe { libc::fork() };
    if agent < 0 {
        report_and_exit(err_fd, STAGE_FORK, last_errno());
    }
    if agent == 0 {
        // SAFETY: see above; execve only returns on failure.
        unsafe {
            libc::close(status_fd);
            // The death signal is not inherited across fork: set again here, the agent
            // dies with its init (killed at the wall time or by a Signal, or by the
            // agent itself) instead of living on under PID 1. Same credentials and no
            // new privileges, so execve keeps it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                report_and_exit(err_fd, STAGE_EXEC, last_errno());
            }
            if libc::getppid() <= 1 {
                report_and_exit(err_fd, STAGE_EXEC, libc::ESRCH);
            }
            // On a terminal the agent leads a session of its own whose controlling
            // terminal is its stdin: job control, ^C and SIGWINCH reach its foreground
            // group, and `/dev/tty` opens it. (The init, which dup'ed the slave onto
            // its own stdio, stays in the enforcer's session.)
            if terminal
                && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0 as libc::c_int) < 0)
            {
                report_and_exit(err_fd, STAGE_EXEC, last_errno());
            }
            // Without one it still leads a process group of its own, which forwarded
            // signals (a Signal, the launcher's ^C) reach whole.
            if !terminal && libc::setpgid(0, 0) != 0 {
                report_and_exit(err_fd, STAGE_EXEC, last_errno());
            }
            libc::execve(image.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        report_and_exit(err_fd, STAGE_EXEC, last_errno());
    }
    // SAFETY: see above. The agent init outlives the signals it forwards so it can
    // report how the agent (which keeps default dispositions: set after the fork)
    // ended; the handler only calls kill, which is async-signal-safe.
    unsafe {
        libc::close(err_fd);
        FORWARD_TO.store(agent, std::sync::atomic::Ordering::SeqCst);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = forward_signal as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        for s in FORWARDED_SIGNALS {
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
    }
    loop {
        let mut status = 0;
        // SAFETY: see above.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == agent {
            let bytes = status.to_ne_bytes();
            // SAFETY: see above.
            unsafe {
                libc::write(status_fd, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0)
            }
        }
        if pid < 0 && last_errno() != libc::EINTR {
            // SAFETY: see above.
            unsafe { libc::_exit(EXIT_AIRLOCK_ERROR) }
        }
    }
}

fn read_exact_or_eof(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the unfilled tail of a live buffer.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if last_errno() == libc::EINTR => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
    Ok(got)
}

/// Waits until `fd` is readable or `timeout` passes; `false` on timeout.
fn wait_readable(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                left.as_millis().min(i32::MAX as u128) as i32
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            n if n > 0 => return Ok(true),
            0 => continue,
            _ if last_errno() == libc::EINTR => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// Serves the broker for `plan`'s tools on `socket` (a background thread).
pub fn serve_broker(
    tools: Vec<crate::broker::GrantedTool>,
    tool_sandboxes: crate::manifest_layers::ToolSandboxes,
    layout: &GuestLayout,
    asker: Arc<dyn Asker>,
    ask_timeout: Duration,
    socket: &std::path::Path,
    tool_environment: Vec<(String, String)>,
) -> Result<(), SessionError> {
    let tool_path = layout.shim_dir.display().to_string();
    let broker = Arc::new(
        Broker::new(tools, asker, Arc::new(tool_sandboxes), &tool_path)
            .with_ask_timeout(ask_timeout)
            .with_tool_environment(tool_environment),
    );
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(os("creating the broker socket directory"))?;
    }
    broker.serve(socket)?;
    Ok(())
}

/// An agent that started (its exec succeeded).
#[derive(Debug)]
pub struct RunningAgent {
    init: libc::pid_t,
    status: OwnedFd,
}

/// What the agent's stdin, stdout and stderr are.
#[derive(Debug, Clone, Copy)]
pub enum AgentStdio<'a> {
    /// The enforcer's own.
    Inherited,
    /// stdin, stdout, stderr (pipes, in practice).
    Fds([BorrowedFd<'a>; 3]),
    /// A pseudo-terminal's slave for all three, and the agent's controlling terminal
    /// (it becomes a session leader).
    Terminal(BorrowedFd<'a>),
}

/// Starts `image` under `sandbox` through a fresh agent init, with `stdio` as the
/// agent's stdin, stdout and stderr. Returns once the exec succeeded, or the reason it
/// did not.
pub fn start_agent(
    image: &ExecImage,
    sandbox: &crate::sandbox::Sandbox,
    stdio: AgentStdio<'_>,
) -> Result<RunningAgent, SessionError> {
    let mut prepared = sandbox.prepare()?;
    let (err_r, err_w) = pipe_cloexec().map_err(os("pipe"))?;
    let (status_r, status_w) = pipe_cloexec().map_err(os("pipe"))?;
    let mut argv: Vec<*const libc::c_char> = image.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = image.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let (stdio, terminal) = match stdio {
        AgentStdio::Inherited => (None, false),
        AgentStdio::Fds(fds) => (Some(fds.map(|f| f.as_raw_fd())), false),
        AgentStdio::Terminal(slave) => (Some([slave.as_raw_fd(); 3]), true),
    };

    // SAFETY: the child runs only `agent_init`, which uses async-signal-safe calls on
    // data prepared above and never returns.
    let init = unsafe { libc::fork() };
    if init < 0 {
        return Err(SessionError::Os {
            what: "fork of the agent init",
            source: io::Error::last_os_error(),
        });
    }
    if init == 0 {
        agent_init(
            image,
            &mut prepared,
            err_w.as_raw_fd(),
            status_w.as_raw_fd(),
            stdio,
            terminal,
            &argv,
            &envp,
        );
    }
    drop(err_w);
    drop(status_w);
    // The error pipe closes when the agent's exec succeeded (CLOEXEC) and the init
    // closed its copy; it carries (stage, errno) otherwise.
    let mut err = [0u8; 8];
    let n = read_exact_or_eof(&err_r, &mut err).map_err(os("reading the agent init"))?;
    if n == 8 {
        let mut st = 0;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(init, &mut st, 0) };
        let stage = i32::from_ne_bytes(err[..4].try_into().expect("4 bytes"));
        let errno =
            io::Error::from_raw_os_error(i32::from_ne_bytes(err[4..].try_into().expect("4 bytes")));
        return Err(match stage {
            STAGE_APPLY => SessionError::ApplyFailed(errno),
            STAGE_EXEC => SessionError::Exec {
                path: PathBuf::from(image.path.to_string_lossy().into_owned()),
                source: errno,
            },
            _ => SessionError::Os {
                what: "fork of the agent",
                source: errno,
            },
        });
    }
    AGENT_INIT.store(init, std::sync::atomic::Ordering::SeqCst);
    Ok(RunningAgent {
        init,
        status: status_r,
    })
}

/// The running agent's init, for [`forward_interrupts_to_the_agent`] (0: none).
static AGENT_INIT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn interrupt_the_agent(sig: libc::c_int) {
    let init = AGENT_INIT.load(std::sync::atomic::Ordering::SeqCst);
    if init > 0 {
        // SAFETY: kill is async-signal-safe; the agent init forwards it to the agent.
        unsafe { libc::kill(init, sig) };
    }
}

/// In a process-isolation sandbox init (PID 1 of its namespace, which gets from outside
/// only the signals it handles): SIGINT, sent by the supervisor when the launcher's
/// terminal is interrupted, goes on to the agent through its init.
pub fn forward_interrupts_to_the_agent() -> io::Result<()> {
    // SAFETY: installs a handler that only loads an atomic and calls kill.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = interrupt_the_agent as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl RunningAgent {
    /// The agent init's pid (the agent's parent).
    pub fn init_pid(&self) -> libc::pid_t {
        self.init
    }

    /// Waits for the agent to end, at most `wall` (then it is killed). The agent init is
    /// reaped either way.
    pub fn wait(self, wall: Option<Duration>) -> Result<AgentEnd, SessionError> {
        let reap_init = || {
            // Before its pid can be reused.
            let _ = AGENT_INIT.compare_exchange(
                self.init,
                0,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            );
            let mut st = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(self.init, &mut st, 0) };
            st
        };
        if !wait_readable(&self.status, wall).map_err(os("waiting for the agent"))? {
            // SAFETY: kills our own child (the agent init); PDEATHSIG takes the agent.
            unsafe { libc::kill(self.init, libc::SIGKILL) };
            reap_init();
            return Ok(AgentEnd::WallTimeExceeded);
        }
        let mut st = [0u8; 4];
        let n = read_exact_or_eof(&self.status, &mut st).map_err(os("reading the agent status"))?;
        let init_status = reap_init();
        if n != 4 && libc::WIFSIGNALED(init_status) && libc::WTERMSIG(init_status) == libc::SIGKILL
        {
            // Killed (a `Signal` of SIGKILL, or the agent itself): the agent died with
            // it (its death signal), and that is how the command ended.
            return Ok(AgentEnd::Signaled(libc::SIGKILL));
        }
        if n != 4 {
            return Err(SessionError::Os {
                what: "the agent init died without reporting the agent's status",
                source: io::Error::from_raw_os_error(libc::EPIPE),
            });
        }
        Ok(AgentEnd::from_wait_status(i32::from_ne_bytes(st)))
    }
}

/// The manifest's wall time as a deadline (0 = none).
pub fn wall_time(manifest: &Manifest) -> Option<Duration> {
    match manifest.resources.wall_time_secs {
        0 => None,
        s => Some(Duration::from_secs(s)),
    }
}

impl AgentSession<'_> {
    /// Serves the broker, starts the agent and waits for it (at most the manifest's wall
    /// time). On return the agent init has been reaped; the agent's leftovers are the
    /// caller's to kill (PID 1 kills everything in its namespace).
    pub fn run(self) -> Result<AgentEnd, SessionError> {
        let image = ExecImage::for_session(&self)?;
        serve_broker(
            self.plan.tools,
            self.plan.tool_sandboxes,
            self.layout,
            self.asker.clone(),
            self.ask_timeout,
            &self.broker_socket,
            crate::egress_funnel::agent_proxy_environment(self.manifest),
        )?;
        let stdin = std::io::stdin();
        let stdio = if self.on_terminal {
            AgentStdio::Terminal(std::os::fd::AsFd::as_fd(&stdin))
        } else {
            AgentStdio::Inherited
        };
        start_agent(&image, &self.plan.sandbox, stdio)?.wait(wall_time(self.manifest))
    }
}

/// Kills every process of the calling process's pid namespace except itself (the
/// caller must be its PID 1) and reaps them.
pub fn kill_everything_else_as_init() {
    // SAFETY: kill(-1) from PID 1 signals every other process of its namespace.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    loop {
        let mut st = 0;
        // SAFETY: reaps any child.
        let pid = unsafe { libc::waitpid(-1, &mut st, 0) };
        if pid < 0 && last_errno() != libc::EINTR {
            break;
        }
    }
}
