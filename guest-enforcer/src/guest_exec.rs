//! `Exec` in the VM: a command run as the agent under the applied layers, its output
//! streamed back. Only what the manifest's Landlock grant can execute runs: the
//! manifest's entrypoint and granted tools (through their shims); anything else fails
//! at exec with the kernel's EACCES, reported as the command's failure to start.

use crate::guest_apply::Applied;
use crate::manifest_layers::resolve_entrypoint;
use crate::pidfd::PidFd;
use crate::session::{agent_environment, start_agent, wall_time, AgentEnd, ExecImage};
use airlock_proto::pb::{
    exec_event, exit_status, EnforcerExecRequest, ExecEvent, ExitStatus, Started,
};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
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

/// Starts `req` as the agent; the stream yields `started`, output chunks, then `exit`.
pub fn start(
    applied: &Applied,
    req: &EnforcerExecRequest,
    id: u64,
    running_execs: &RunningExecs,
) -> Result<Events, ExecError> {
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
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let running = start_agent(
        &image,
        &applied.sandbox,
        Some([&stdin_r, &stdout_w, &stderr_w]),
    )?;
    drop((stdin_r, stdout_w, stderr_w));
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
    let stdin_bytes = req.stdin.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let _ = tx.try_send(event(exec_event::Event::Started(Started {
        exec_id: exec_id.clone(),
        pid,
    })));
    std::thread::spawn(move || {
        let mut stdin = std::fs::File::from(stdin_w);
        let _ = stdin.write_all(&stdin_bytes);
        drop(stdin);
    });
    let pump =
        |fd: OwnedFd, stderr: bool, tx: tokio::sync::mpsc::Sender<Result<ExecEvent, Status>>| {
            std::thread::spawn(move || {
                let mut f = std::fs::File::from(fd);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let chunk = buf[..n].to_vec();
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
        };
    let out = pump(stdout_r, false, tx.clone());
    let err = pump(stderr_r, true, tx.clone());
    std::thread::spawn(move || {
        let end = running.wait(wall);
        registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&exec_id);
        // Output first: the exit event is the last one. A process the command left
        // behind may hold its stdout open forever; the exit is not held hostage to it.
        let deadline = std::time::Instant::now() + OUTPUT_GRACE;
        while !(out.is_finished() && err.is_finished()) && std::time::Instant::now() < deadline {
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
    Ok(Events {
        inner: tokio_stream::wrappers::ReceiverStream::new(rx),
        ended: false,
    })
}
