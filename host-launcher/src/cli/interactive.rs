//! A VM session's command attached to this process's stdio, shared by `airlock run`
//! and `airlock ssh-entry`: a terminal of its own in the guest when ours is one (raw
//! mode, its size and changes; restored on every way out), else stdin streamed as it
//! comes with its end passed on; output relayed as it comes. And what cuts a session
//! short — the terminal hung up, SIGTERM, SIGQUIT, our output closed at the other end
//! (how sshd ends a login without a tty: no signal, its pipes closed), a second
//! interrupt — each of which destroys the session before this process exits, where
//! their default action would leave the VM to the next launcher's sweep.

use super::output::errln;
use super::terminal;
use super::{fail, Failure};
use airlock_launcher::approval::Refusal;
use airlock_launcher::approval_broker::ApprovalBroker;
use airlock_launcher::launcher::{
    ExecEnd, ExecOutput, ExecSpec, Launcher, Session, SessionError, WindowSize,
};
use airlock_launcher::plan::Plan;
use airlock_launcher::ssh_entry::watch_closed;
use airlock_proto::terminal_escapes::EscapeFilter;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Why a session is torn down before its command ended, and the exit status that says
/// so (128 + the signal, as a shell reports a command killed by it).
pub(super) struct Gone {
    pub code: u8,
    pub why: &'static str,
}

impl Gone {
    const OUTPUT_CLOSED: Gone = Gone {
        code: 128 + libc::SIGPIPE as u8,
        why: "our output was closed at the other end",
    };
    const INTERRUPTED: Gone = Gone {
        code: 128 + libc::SIGINT as u8,
        why: "interrupted",
    };

    pub fn failure(&self, what: &str) -> Failure {
        fail(self.code, format!("{}: {what}", self.why))
    }
}

/// What [`Stops::next`] saw.
enum Stop {
    Gone(Gone),
    /// SIGINT: the command's, while it runs (its first); a stop before it does.
    Interrupt,
}

/// The signals and the watch that end a session early. From [`Stops::start`] on,
/// SIGHUP, SIGTERM, SIGQUIT and SIGINT are ours.
pub(super) struct Stops {
    hup: Signal,
    term: Signal,
    quit: Signal,
    int: Signal,
    closed: Option<tokio::sync::oneshot::Receiver<i32>>,
}

impl Stops {
    /// Starts listening (inside the runtime).
    pub fn start() -> Result<Stops, Failure> {
        // ^Z would stop airlock alone: the VM runs on while its output, input and asks
        // wait (an ask then times out as a denial). Ignored, as under process
        // isolation; in the background, reading the terminal is the command's end of
        // input instead of a stop.
        // SAFETY: sets signal dispositions to ignore; no handler involved.
        unsafe {
            libc::signal(libc::SIGTSTP, libc::SIG_IGN);
            libc::signal(libc::SIGTTIN, libc::SIG_IGN);
        }
        let handler = |kind| signal(kind).map_err(|e| fail(125, format!("signal handler: {e}")));
        let (tx, rx) = tokio::sync::oneshot::channel();
        watch_closed(&[1, 2], move |fd| {
            let _ = tx.send(fd);
        })
        .map_err(|e| fail(125, format!("watching our output: {e}")))?;
        Ok(Stops {
            hup: handler(SignalKind::hangup())?,
            term: handler(SignalKind::terminate())?,
            quit: handler(SignalKind::quit())?,
            int: handler(SignalKind::interrupt())?,
            closed: Some(rx),
        })
    }

    /// The next reason to stop (cancel-safe).
    async fn next(&mut self) -> Stop {
        loop {
            let closed = async {
                match self.closed.as_mut() {
                    Some(rx) => rx.await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let gone = |code: i32, why| {
                Stop::Gone(Gone {
                    code: 128 + code as u8,
                    why,
                })
            };
            tokio::select! {
                _ = self.hup.recv() => return gone(libc::SIGHUP, "SIGHUP (the terminal hung up)"),
                _ = self.term.recv() => return gone(libc::SIGTERM, "SIGTERM"),
                _ = self.quit.recv() => return gone(libc::SIGQUIT, "SIGQUIT"),
                _ = self.int.recv() => return Stop::Interrupt,
                seen = closed => {
                    if seen {
                        return Stop::Gone(Gone::OUTPUT_CLOSED);
                    }
                    // The watch had nothing to watch (no open output): never again.
                    self.closed = None;
                }
            }
        }
    }

    /// The next reason to stop while no command runs: an interrupt is one too.
    async fn next_before_the_command(&mut self) -> Gone {
        match self.next().await {
            Stop::Gone(g) => g,
            Stop::Interrupt => Gone::INTERRUPTED,
        }
    }
}

/// Why there is no session.
pub(super) enum NotCreated {
    /// The policy (or a person) refused the plan: nothing ran.
    Denied {
        report: Box<airlock_launcher::plan::Report>,
        denials: Vec<String>,
    },
    /// It could not be made, or a stop came first (its VM is destroyed).
    Failed(Failure),
}

impl NotCreated {
    /// The failure to exit with, once the refusal is told: each denial on stderr, or
    /// with `json` the decision report on stdout.
    pub fn told(self, json: bool) -> Failure {
        match self {
            NotCreated::Denied { report, denials } => {
                if json {
                    super::plan::print_report(&report, true);
                } else {
                    for d in &denials {
                        errln!("airlock: denied: {d}");
                    }
                }
                fail(4, "plan denied; nothing ran")
            }
            NotCreated::Failed(f) => f,
        }
    }
}

/// Creates the session for `plan` (asked for by `caller`), unless a stop comes first:
/// dropping the session being made destroys its VM.
pub(super) async fn create_session_unless_stopped(
    launcher: &Launcher,
    plan: &Plan,
    caller: Option<&str>,
    stops: &mut Stops,
) -> Result<Session, NotCreated> {
    use airlock_launcher::approval::UpFront;
    let created = tokio::select! {
        biased;
        g = stops.next_before_the_command() => {
            return Err(NotCreated::Failed(g.failure("before the session was ready; nothing ran")))
        }
        s = launcher.create_session_for(plan, UpFront::Ask, caller) => s,
    };
    match created {
        Ok(s) => Ok(s),
        Err(SessionError::Refused(Refusal::Denied { report, denials })) => {
            Err(NotCreated::Denied { report, denials })
        }
        Err(e) => Err(NotCreated::Failed(fail(e.exit_code() as u8, e))),
    }
}

/// How the command attached to our stdio ended.
pub(super) enum Attached {
    /// It ended (exited, or the sandbox stopped it).
    Ended(ExecEnd),
    /// The session failed under it.
    Failed(Failure),
    /// A stop came first: destroy the session at once (nobody is left to read a merge
    /// report, and a command that did not end on its own merges nothing).
    Gone(Gone),
}

/// The broker's next event, or never without one.
async fn next_event(
    events: &mut Option<tokio::sync::broadcast::Receiver<airlock_launcher::approval_broker::Event>>,
) {
    match events {
        Some(rx) => {
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = rx.recv().await {
                *events = None;
            }
        }
        None => std::future::pending().await,
    }
}

/// [`run_the_command_attached`], with a stop destroying the session at once: the
/// session back with how its command ended, or the stop's failure once it is gone.
pub(super) async fn run_attached_or_destroy(
    mut session: Session,
    stops: &mut Stops,
    prompt: Option<Arc<ApprovalBroker>>,
) -> Result<(Session, Result<ExecEnd, Failure>), Failure> {
    match run_the_command_attached(&mut session, stops, prompt).await {
        Attached::Ended(end) => Ok((session, Ok(end))),
        Attached::Failed(f) => Ok((session, Err(f))),
        Attached::Gone(g) => {
            let _ = session.destroy().await;
            Err(g.failure("the session was destroyed"))
        }
    }
}

/// Writes a chunk of the command's output; false when the reader is gone.
fn relay(mut out: impl Write, bytes: &[u8]) -> bool {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) => e.kind() != std::io::ErrorKind::BrokenPipe,
        Ok(()) => true,
    }
}

/// The escape filters for whichever of our stdout and stderr are terminals (a pipe or
/// a file gets the command's bytes exactly).
struct TerminalFilters {
    stdout: Option<EscapeFilter>,
    stderr: Option<EscapeFilter>,
}

impl TerminalFilters {
    fn for_our_outputs() -> TerminalFilters {
        use std::io::IsTerminal;
        TerminalFilters {
            stdout: std::io::stdout().is_terminal().then(EscapeFilter::new),
            stderr: std::io::stderr().is_terminal().then(EscapeFilter::new),
        }
    }

    fn stdout(&mut self, b: Vec<u8>) -> Vec<u8> {
        match &mut self.stdout {
            Some(f) => f.filtered(&b),
            None => b,
        }
    }

    fn stderr(&mut self, b: Vec<u8>) -> Vec<u8> {
        match &mut self.stderr {
            Some(f) => f.filtered(&b),
            None => b,
        }
    }
}

/// A chunk of the command's output on its way to our stdout or stderr.
enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// Relays `out` unless an approval prompt is on the terminal: `None` then (the caller
/// keeps it, and reads no more of the command's output until the prompt is answered,
/// so nothing the command writes can cover or imitate the prompt).
/// False when our output's reader is gone.
fn relay_unless_prompt_shown(out: Output, held: &mut Option<Output>) -> bool {
    let relayed =
        airlock_launcher::host_terminal::prompt_gate().write_unless_shown(|| match &out {
            Output::Stdout(b) => relay(std::io::stdout().lock(), b),
            Output::Stderr(b) => relay(std::io::stderr().lock(), b),
        });
    match relayed {
        Some(open) => open,
        None => {
            *held = Some(out);
            true
        }
    }
}

/// Runs the session's own command (its manifest's) attached to our stdio until it
/// ends or a stop comes. `prompt` is the broker whose asks a person answers on this
/// same terminal: while one waits, keys are the prompt's, not the command's.
pub(super) async fn run_the_command_attached(
    session: &mut Session,
    stops: &mut Stops,
    prompt: Option<Arc<ApprovalBroker>>,
) -> Attached {
    let mut window_change = match signal(SignalKind::window_change()) {
        Ok(s) => s,
        Err(e) => return Attached::Failed(fail(125, format!("signal handler: {e}"))),
    };
    let tty = terminal::both_are_terminals()
        .then(|| terminal::window_size().unwrap_or(WindowSize { rows: 24, cols: 80 }));
    let argv = session.manifest().command.argv.clone();
    let spec = ExecSpec {
        argv,
        env: if tty.is_some() {
            terminal::term_for_the_command().into_iter().collect()
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    let started = tokio::select! {
        biased;
        g = stops.next_before_the_command() => return Attached::Gone(g),
        s = session.exec_interactive(spec, tty) => s,
    };
    let (mut input, mut stream) = match started {
        Ok(s) => s,
        Err(e) => return Attached::Failed(fail(e.exit_code() as u8, e)),
    };
    // Raw from here to the end of the command; restored when this is dropped, on every
    // way out (what is printed after it prints cooked).
    let _raw = tty.and_then(|_| terminal::RawMode::enter());
    let stdin_open = Arc::new(AtomicBool::new(true));
    let mut asks = prompt
        .as_ref()
        .filter(|_| tty.is_some())
        .map(|b| b.subscribe());
    // An ask already waiting (its event went out before the subscription) holds the
    // keys back from the start, before anything is read.
    if let Some(b) = prompt.as_ref().filter(|_| asks.is_some()) {
        stdin_open.store(b.pending().is_empty(), Ordering::SeqCst);
    }
    let mut stdin = terminal::read_stdin_while(Arc::clone(&stdin_open));
    let (resize_tx, mut resize_rx) = tokio::sync::mpsc::channel::<WindowSize>(4);
    // Input goes on from a task of its own: a command that does not read its stdin
    // holds that task back, never the reading of its output.
    let forward = tokio::spawn(async move {
        let mut reading = true;
        loop {
            tokio::select! {
                got = stdin.recv(), if reading => match got {
                    Some(terminal::Input::Bytes(b)) => {
                        if !input.stdin(&b).await {
                            reading = false;
                        }
                    }
                    _ => {
                        // On a terminal the end is the user's ^D, typed as a key.
                        if tty.is_none() {
                            input.eof().await;
                        }
                        reading = false;
                    }
                },
                size = resize_rx.recv() => match size {
                    Some(size) => {
                        input.resize(size).await;
                    }
                    None => return,
                },
            }
        }
    });
    let mut exec_id = String::new();
    let mut interrupted = false;
    let mut to_terminal = TerminalFilters::for_our_outputs();
    let mut prompt_shown = airlock_launcher::host_terminal::prompt_gate().watch();
    let mut held: Option<Output> = None;
    let attached = loop {
        let ev = tokio::select! {
            ev = stream.next(), if held.is_none() => ev,
            changed = prompt_shown.changed(), if held.is_some() => {
                if changed.is_err() {
                    break Attached::Failed(fail(125, "the terminal prompt's gate is gone"));
                }
                if let Some(out) = held.take() {
                    if !relay_unless_prompt_shown(out, &mut held) {
                        break Attached::Gone(Gone::OUTPUT_CLOSED);
                    }
                }
                continue;
            }
            stop = stops.next() => match stop {
                Stop::Gone(g) => break Attached::Gone(g),
                // With a terminal of its own ^C is a key its terminal turns into
                // SIGINT; a SIGINT that reaches us anyway is the command's too. Without
                // one, the first is the command's, the second ends the session.
                Stop::Interrupt if interrupted && tty.is_none() => break Attached::Gone(Gone {
                    why: "interrupted twice",
                    ..Gone::INTERRUPTED
                }),
                Stop::Interrupt => {
                    if tty.is_none() {
                        interrupted = true;
                        errln!("airlock: interrupt: passed to the command (again to destroy the session)");
                    }
                    if !exec_id.is_empty() {
                        let _ = session.signal(&exec_id, libc::SIGINT).await;
                    }
                    continue;
                }
            },
            _ = window_change.recv(), if tty.is_some() => {
                if let Some(size) = terminal::window_size() {
                    let _ = resize_tx.try_send(size);
                }
                continue;
            }
            _ = next_event(&mut asks) => {
                let pending = prompt.as_ref().is_some_and(|b| !b.pending().is_empty());
                stdin_open.store(!pending, Ordering::SeqCst);
                continue;
            }
        };
        match ev {
            None => {
                break Attached::Failed(fail(125, "the command's stream ended without an exit"))
            }
            Some(Err(e)) => break Attached::Failed(fail(e.exit_code() as u8, e)),
            Some(Ok(ExecOutput::Started(id))) => exec_id = id,
            Some(Ok(ExecOutput::Stdout(b))) => {
                let b = to_terminal.stdout(b);
                if !relay_unless_prompt_shown(Output::Stdout(b), &mut held) {
                    break Attached::Gone(Gone::OUTPUT_CLOSED);
                }
            }
            Some(Ok(ExecOutput::Stderr(b))) => {
                let b = to_terminal.stderr(b);
                if !relay_unless_prompt_shown(Output::Stderr(b), &mut held) {
                    break Attached::Gone(Gone::OUTPUT_CLOSED);
                }
            }
            Some(Ok(ExecOutput::Ended(end))) => break Attached::Ended(end),
        }
    };
    forward.abort();
    attached
}
