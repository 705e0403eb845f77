//! `Exec` in the VM: a command run as the agent under the applied layers, its output
//! streamed back. Only what the manifest's Landlock grant can execute runs: the
//! manifest's entrypoint and granted tools (through their shims); anything else fails
//! at exec with the kernel's EACCES, reported as the command's failure to start.
//!
//! A command's stdin is a pipe, or with `tty` a pseudo-terminal allocated here (the
//! guest's own devpts, which only PID 1 can allocate from): the agent gets the slave as
//! its stdio and controlling terminal, the enforcer keeps the master. Input arrives
//! whole (`Exec`) or as it comes (`ExecInteractive`, through an [`InputSink`]); either
//! way one writer thread writes it, taking from a bounded channel, so the guest never
//! queues more than [`STDIN_IN_FLIGHT`] bytes of streamed input (plus the one gRPC
//! message being handed over) whatever the host sends.

use crate::guest_apply::Applied;
use crate::manifest_layers::resolve_entrypoint;
use crate::pidfd::PidFd;
use crate::session::{agent_environment, start_agent, wall_time, AgentEnd, AgentStdio, ExecImage};
use airlock_proto::pb::{
    exec_event, exit_status, EnforcerExecRequest, ExecEvent, ExitStatus, Started, WindowSize,
};
use airlock_proto::pty::{open_pty, set_window_size};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use tonic::Status;

/// Why a command could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No argv.
    #[error("Exec needs an argv")]
    EmptyArgv,
    /// argv[0] is neither the plan's entrypoint nor a granted tool.
    #[error(
        "Exec argv[0] `{argv0}` is neither the plan's entrypoint `{entrypoint}` nor a granted tool"
    )]
    NotGranted {
        /// What was asked for.
        argv0: String,
        /// The plan's entrypoint.
        entrypoint: String,
    },
    /// argv[0] names nothing runnable.
    #[error(transparent)]
    Entrypoint(#[from] crate::manifest_layers::ManifestApplyError),
    /// Starting it failed.
    #[error(transparent)]
    Start(#[from] crate::session::SessionError),
    /// Pipes.
    #[error("pipe: {0}")]
    Pipe(std::io::Error),
    /// The pseudo-terminal a tty command asked for.
    #[error("allocating a terminal: {0}")]
    Terminal(std::io::Error),
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ExecError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into a live array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(ExecError::Pipe(std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The commands still running, by exec id: a pidfd of each one's agent init, so a
/// `Signal` can never reach a recycled pid.
pub type RunningExecs = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, PidFd>>>;

/// Sends `sig` to the command `exec_id`: SIGKILL to its agent init (the agent dies
/// with it), any other of [`crate::session::FORWARDED_SIGNALS`] to the init, which
/// passes it on to the agent. `Ok(false)` when the command already ended.
pub fn signal(running: &RunningExecs, exec_id: &str, sig: i32) -> Result<bool, String> {
    if sig != libc::SIGKILL && !crate::session::FORWARDED_SIGNALS.contains(&sig) {
        return Err(format!(
            "signal {sig} is not one Exec commands can be sent (allowed: KILL, INT, TERM, HUP, QUIT, USR1, USR2, WINCH)"
        ));
    }
    let map = running.lock().unwrap_or_else(|p| p.into_inner());
    let Some(pidfd) = map.get(exec_id) else {
        return Ok(false);
    };
    match pidfd.send_signal(sig) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(format!("signalling {exec_id}: {e}")),
    }
}

/// How long output may still arrive after the command exited.
const OUTPUT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The events of one command. The stream ends with the `exit` event (or an error),
/// even while a process the command left behind still holds an output pipe open.
pub struct Events {
    inner: tokio_stream::wrappers::ReceiverStream<Result<ExecEvent, Status>>,
    ended: bool,
}

impl tokio_stream::Stream for Events {
    type Item = Result<ExecEvent, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        let item = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(Some(ev)) = &item {
            let last = match ev {
                Ok(e) => matches!(e.event, Some(exec_event::Event::Exit(_))),
                Err(_) => true,
            };
            self.ended = last;
        }
        item
    }
}

fn event(e: exec_event::Event) -> Result<ExecEvent, Status> {
    Ok(ExecEvent { event: Some(e) })
}

/// Largest piece of stdin one channel slot holds.
const STDIN_PIECE: usize = 64 * 1024;
/// Pieces the stdin channel holds.
const STDIN_SLOTS: usize = 16;
/// The most streamed stdin the guest holds for a command at once (the channel; the
/// writer's current piece comes on top). A host that sends faster waits: the input
/// task stops reading its stream, and gRPC flow control stops the host.
pub const STDIN_IN_FLIGHT: usize = STDIN_PIECE * STDIN_SLOTS;

/// Where a running command's input goes. Dropping it is end of file on its stdin.
pub struct InputSink {
    stdin: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    terminal: Option<Arc<OwnedFd>>,
    ended: tokio::sync::watch::Receiver<bool>,
}

impl InputSink {
    /// Queues `bytes` for the command's stdin, waiting while the guest holds
    /// [`STDIN_IN_FLIGHT`] already. `false` once the command takes no more input (it
    /// ended, closed its stdin, or `eof` was sent): the bytes are dropped.
    pub async fn stdin(&mut self, bytes: &[u8]) -> bool {
        let Some(tx) = &self.stdin else {
            return false;
        };
        for piece in bytes.chunks(STDIN_PIECE) {
            if *self.ended.borrow() || tx.send(piece.to_vec()).await.is_err() {
                self.stdin = None;
                return false;
            }
        }
        true
    }

    /// No more input: a pipe is closed once what was queued is written. A terminal
    /// stays open (closing it would hang up the command's session).
    pub fn eof(&mut self) {
        self.stdin = None;
    }

    /// Sets the terminal's size (the kernel sends SIGWINCH to its foreground group);
    /// nothing without a terminal.
    pub fn resize(&self, size: &WindowSize) {
        if let Some(master) = &self.terminal {
            let _ = set_window_size(master, size);
        }
    }

    /// Resolves once the command has ended.
    pub async fn ended(&mut self) {
        let _ = self.ended.wait_for(|&e| e).await;
    }
}

/// The guest's own devpts (mounted by init, its `ptmx` root's only).
const PTMX: &str = "/dev/pts/ptmx";

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits up to 200 ms for `events` on `fd`.
fn poll_for(fd: &OwnedFd, events: libc::c_short) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut pfd, 1, 200) };
}

/// Writes all of `data` to the non-blocking `fd`; `false` when the command no longer
/// takes input (it ended, or its side is closed).
fn write_all(fd: &OwnedFd, mut data: &[u8], ended: &tokio::sync::watch::Receiver<bool>) -> bool {
    while !data.is_empty() {
        if *ended.borrow() {
            return false;
        }
        // SAFETY: writes from a live buffer.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n > 0 {
            data = &data[n as usize..];
            continue;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => poll_for(fd, libc::POLLOUT),
            _ => return false,
        }
    }
    true
}

/// Reads `fd` to its end (a terminal master's end is EIO: every slave closed) and sends
/// each chunk as stdout or stderr; stops when nobody reads the events any more.
fn pump(
    fd: Arc<OwnedFd>,
    stderr: bool,
    tx: tokio::sync::mpsc::Sender<Result<ExecEvent, Status>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // SAFETY: reads into a live buffer.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                break;
            }
            if n < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) if !tx.is_closed() => {
                        poll_for(&fd, libc::POLLIN);
                        continue;
                    }
                    _ => break,
                }
            }
            let chunk = buf[..n as usize].to_vec();
            let e = if stderr {
                exec_event::Event::Stderr(chunk)
            } else {
                exec_event::Event::Stdout(chunk)
            };
            if tx.blocking_send(event(e)).is_err() {
                break;
            }
        }
    })
}

/// Starts `req` as the agent; `req.stdin` is its first input, and the returned sink
/// takes the rest. The stream yields `started`, output chunks, then `exit`.
pub fn start_interactive(
    applied: &Applied,
    req: &EnforcerExecRequest,
    id: u64,
    running_execs: &RunningExecs,
) -> Result<(Events, InputSink), ExecError> {
    let argv0 = req.argv.first().ok_or(ExecError::EmptyArgv)?;
    let m = &applied.manifest;
    let planned = m
        .command
        .argv
        .first()
        .map(String::as_str)
        .unwrap_or_default();
    let tool = m
        .tools
        .iter()
        .any(|t| t.program == airlock_proto::tool_invocation::program_name(argv0));
    // The entrypoint binary is the only one the agent's layers let it execute besides
    // the shims; any other path would fail at exec, so say why now.
    if argv0 != planned && !tool {
        return Err(ExecError::NotGranted {
            argv0: argv0.clone(),
            entrypoint: planned.to_string(),
        });
    }
    let entrypoint = resolve_entrypoint(argv0, m, &applied.layout)?;
    let mut env = agent_environment(m, &applied.layout);
    for (k, v) in &req.env {
        if k != "PATH" {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
    }
    let cwd = if req.cwd.is_empty() {
        m.command.cwd.clone()
    } else {
        req.cwd.clone()
    };
    let image = ExecImage::new(&entrypoint, &req.argv, &env, &cwd)?;
    // (what input is written to, the outputs and whether each is stderr, the master)
    let (running, stdin_w, outputs, terminal) = if req.tty {
        let (master, slave) =
            open_pty(PTMX, req.window.as_ref(), true).map_err(ExecError::Terminal)?;
        let running = start_agent(
            &image,
            &applied.sandbox,
            AgentStdio::Terminal(slave.as_fd()),
        )?;
        drop(slave);
        let master = Arc::new(master);
        (
            running,
            Arc::clone(&master),
            vec![(Arc::clone(&master), false)],
            Some(master),
        )
    } else {
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        // Only the enforcer's end: the agent's read end stays blocking.
        set_nonblocking(&stdin_w).map_err(ExecError::Pipe)?;
        let running = start_agent(
            &image,
            &applied.sandbox,
            AgentStdio::Fds([stdin_r.as_fd(), stdout_w.as_fd(), stderr_w.as_fd()]),
        )?;
        drop((stdin_r, stdout_w, stderr_w));
        (
            running,
            Arc::new(stdin_w),
            vec![(Arc::new(stdout_r), false), (Arc::new(stderr_r), true)],
            None,
        )
    };
    let pid = running.init_pid() as u32;
    let exec_id = format!("exec-{id}");
    // Our own child, not yet reaped: the pidfd names it.
    let pidfd = match PidFd::open(running.init_pid()).map_err(ExecError::Pipe) {
        Ok(fd) => fd,
        Err(e) => {
            // Nothing could signal it: do not leave it running (a zero wall time kills
            // and reaps it).
            let _ = running.wait(Some(std::time::Duration::ZERO));
            return Err(e);
        }
    };
    running_execs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(exec_id.clone(), pidfd);
    let registry = std::sync::Arc::clone(running_execs);
    let wall = wall_time(m);
    let (ended_tx, ended_rx) = tokio::sync::watch::channel(false);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let _ = tx.try_send(event(exec_event::Event::Started(Started {
        exec_id: exec_id.clone(),
        pid,
    })));
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(STDIN_SLOTS);
    let first = req.stdin.clone();
    let ended = ended_rx.clone();
    std::thread::spawn(move || {
        if !write_all(&stdin_w, &first, &ended) {
            return;
        }
        while let Some(piece) = stdin_rx.blocking_recv() {
            if !write_all(&stdin_w, &piece, &ended) {
                return;
            }
        }
        // End of input: the pipe closes with the last reference (a terminal's master
        // lives on with the output pump).
    });
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(fd, stderr)| pump(fd, stderr, tx.clone()))
        .collect();
    std::thread::spawn(move || {
        let end = running.wait(wall);
        registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&exec_id);
        // Input that arrives from now on is dropped.
        let _ = ended_tx.send(true);
        // Output first: the exit event is the last one. A process the command left
        // behind may hold its stdout open forever; the exit is not held hostage to it.
        let deadline = std::time::Instant::now() + OUTPUT_GRACE;
        while !pumps.iter().all(|p| p.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let status = match end {
            Ok(AgentEnd::Exited(c)) => ExitStatus {
                status: Some(exit_status::Status::Code(c)),
                stopped_by_sandbox: String::new(),
            },
            Ok(AgentEnd::Signaled(s)) => ExitStatus {
                status: Some(exit_status::Status::Signal(s)),
                stopped_by_sandbox: String::new(),
            },
            Ok(AgentEnd::WallTimeExceeded) => ExitStatus {
                status: Some(exit_status::Status::Signal(libc::SIGKILL)),
                stopped_by_sandbox: format!(
                    "wall time of {} s exceeded",
                    wall.map_or(0, |w| w.as_secs())
                ),
            },
            Err(e) => {
                let _ = tx.blocking_send(Err(Status::internal(e.to_string())));
                return;
            }
        };
        let _ = tx.blocking_send(event(exec_event::Event::Exit(status)));
    });
    Ok((
        Events {
            inner: tokio_stream::wrappers::ReceiverStream::new(rx),
            ended: false,
        },
        InputSink {
            stdin: Some(stdin_tx),
            terminal,
            ended: ended_rx,
        },
    ))
}
