//! The caller's terminal and the sandbox. Two rules, for every way a session is attached
//! to the terminal `airlock` runs on:
//!
//! - **Nothing of the sandbox holds the caller's terminal.** A process that holds it can
//!   take its foreground (`tcsetpgrp`) and read what the person types to their shell
//!   after the session, change its settings or line discipline for good, or read it
//!   through `/dev/tty`. VM sessions never could (the guest has its own terminal); a
//!   process-isolation enforcer leads a session of its own with no controlling terminal,
//!   and any of its stdin, stdout or stderr that would be a terminal is a pipe relayed
//!   here instead, or, for a command on a terminal of its own, a pseudo-terminal of ours
//!   relayed here ([`TerminalStandIns`]).
//! - **Nothing the sandbox writes reaches the terminal while an approval prompt is on
//!   it** ([`PromptGate`]). Otherwise the command could draw a harmless-looking request
//!   over the real one and have the person approve what they never saw. Relays stop
//!   (their pipe fills and the command waits) until the prompt is answered, and they do
//!   not read the terminal's input meanwhile: those keys are the person's answer.

use std::io::{self, Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How often a relay held back by the prompt looks again.
const HELD_POLL: Duration = Duration::from_millis(50);
/// Largest read relayed at once.
const RELAY_CHUNK: usize = 16 * 1024;

/// The process-wide gate between sandbox output relays and the terminal approval prompt
/// (there is one terminal).
#[derive(Debug)]
pub struct PromptGate {
    /// How many prompts are on the terminal now (0 or 1 in practice).
    shown: tokio::sync::watch::Sender<usize>,
    /// Held for every relayed write and while a prompt is raised, so a write in flight
    /// lands before the prompt, never inside or after it.
    writing: Mutex<()>,
}

/// The gate every relay and the terminal prompt share.
pub fn prompt_gate() -> &'static PromptGate {
    static GATE: OnceLock<PromptGate> = OnceLock::new();
    GATE.get_or_init(|| PromptGate {
        shown: tokio::sync::watch::Sender::new(0),
        writing: Mutex::new(()),
    })
}

/// A prompt on the terminal; relays resume when it drops.
#[must_use = "the prompt is only on screen while this lives"]
pub struct PromptShown<'a>(&'a PromptGate);

impl Drop for PromptShown<'_> {
    fn drop(&mut self) {
        self.0.shown.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl PromptGate {
    /// Marks a prompt as on the terminal, after any relayed write in flight has landed.
    pub fn show(&self) -> PromptShown<'_> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        self.shown.send_modify(|n| *n += 1);
        PromptShown(self)
    }

    /// Whether a prompt is on the terminal.
    pub fn is_shown(&self) -> bool {
        *self.shown.borrow() > 0
    }

    /// Runs `write` (a relay's write to the terminal, or the input relay's read of it)
    /// unless a prompt is on it: `None` then, and the caller keeps what it meant to
    /// write for later (or leaves the keys to the prompt).
    pub fn write_unless_shown<R>(&self, write: impl FnOnce() -> R) -> Option<R> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        (!self.is_shown()).then(write)
    }

    /// Changes whenever a prompt appears or goes (for async relays to wait on).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<usize> {
        self.shown.subscribe()
    }

    /// Blocks until no prompt is on the terminal or `stop` is set.
    fn wait_until_clear(&self, stop: &AtomicBool) {
        while self.is_shown() && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(HELD_POLL);
        }
    }
}

/// Whether `a` and `b` are open on the same file (device and inode).
fn same_file(a: RawFd, b: RawFd) -> bool {
    let id = |fd: RawFd| {
        // SAFETY: stat is plain data; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one live stat.
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    };
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// Pipes standing in for whichever of the caller's stdin, stdout and stderr are
/// terminals (and for stdout and stderr whatever they are while a terminal prompt may
/// show), each relayed on a thread of its own through the [`PromptGate`]. The others
/// are passed on as they are.
pub struct TerminalStandIns {
    stdin: Option<Stdio>,
    stdout: Option<Stdio>,
    stderr: Option<Stdio>,
    outputs: Vec<std::thread::JoinHandle<()>>,
    /// Bytes the output relays have written so far.
    progress: Arc<AtomicU64>,
    /// Tells the input relay the session is over: stop reading the terminal (what is
    /// typed next is for the shell, or for a merge-back prompt).
    input_done: Arc<AtomicBool>,
    /// With a terminal of ours standing in: its master (to pass our size on) and our
    /// terminal's raw mode, restored once the last output is through.
    master: Option<OwnedFd>,
    raw: Option<RawMode>,
}

impl TerminalStandIns {
    /// Stand-ins for the terminals among our fds 0, 1 and 2; with `prompt_may_show`
    /// (a terminal approval prompt may go up during the session), for stdout and stderr
    /// whatever they are: a pipe to `tee` or `cat` reaches the screen too, and must be
    /// held while the prompt is up (only a terminal's output is escape-filtered).
    pub fn for_our_terminals(prompt_may_show: bool) -> io::Result<TerminalStandIns> {
        let input_done = Arc::new(AtomicBool::new(false));
        let stdin = if is_terminal(0) {
            let (reader, writer) = std::io::pipe()?;
            spawn_input_relay(writer, Arc::clone(&input_done))?;
            Some(Stdio::from(OwnedFd::from(reader)))
        } else {
            None
        };
        let mut outputs = Vec::new();
        let progress = Arc::new(AtomicU64::new(0));
        let mut output = |fd: RawFd| -> io::Result<Option<OwnedFd>> {
            let terminal = is_terminal(fd);
            if !terminal && !prompt_may_show {
                return Ok(None);
            }
            let (reader, writer) = std::io::pipe()?;
            outputs.push(spawn_output_relay(
                reader,
                fd,
                terminal,
                Arc::clone(&progress),
            )?);
            Ok(Some(OwnedFd::from(writer)))
        };
        let stdout = output(1)?;
        // Our stdout and stderr are one file (a terminal, or `2>&1 | tee`): one pipe
        // for both, so what the command writes to each keeps its order on the way.
        let stderr = match &stdout {
            Some(pipe) if same_file(1, 2) => Some(pipe.try_clone()?),
            _ => output(2)?,
        };
        let (stdout, stderr) = (stdout.map(Stdio::from), stderr.map(Stdio::from));
        Ok(TerminalStandIns {
            stdin,
            stdout,
            stderr,
            outputs,
            progress,
            input_done,
            master: None,
            raw: None,
        })
    }

    /// A terminal of ours standing in for the caller's, for a command that gets a
    /// terminal of its own: a fresh pseudo-terminal (raw, sized as ours) whose slave is
    /// its stdin, stdout and stderr. What it writes is relayed to our stdout and what is
    /// typed on our stdin to it, both through the [`PromptGate`] like the pipes of
    /// [`Self::for_our_terminals`], so an approval prompt can go up on the same
    /// terminal mid-session; ours is in raw mode meanwhile (keys, ^C included, reach
    /// the command's terminal as typed). [`Self::size_follower`] passes resizes on.
    pub fn a_terminal_for_ours() -> io::Result<TerminalStandIns> {
        let size =
            our_window_size().unwrap_or(airlock_proto::pb::WindowSize { rows: 24, cols: 80 });
        let (master, slave) = airlock_proto::pty::open_pty("/dev/ptmx", Some(&size), false)?;
        // Nothing here edits or echoes a key, nor translates output: the command's own
        // terminal (the enforcer's, for the agent) does that once.
        make_raw(&slave)?;
        // Built first: on any error below, dropping it stops the input relay and puts
        // our terminal back.
        let mut stand_ins = TerminalStandIns {
            stdin: Some(Stdio::from(slave.try_clone()?)),
            stdout: Some(Stdio::from(slave.try_clone()?)),
            stderr: Some(Stdio::from(slave)),
            outputs: Vec::new(),
            progress: Arc::new(AtomicU64::new(0)),
            input_done: Arc::new(AtomicBool::new(false)),
            master: None,
            raw: RawMode::enter(),
        };
        spawn_input_relay(
            std::fs::File::from(master.try_clone()?),
            Arc::clone(&stand_ins.input_done),
        )?;
        stand_ins.outputs.push(spawn_output_relay(
            std::fs::File::from(master.try_clone()?),
            1,
            is_terminal(1),
            Arc::clone(&stand_ins.progress),
        )?);
        stand_ins.master = Some(master);
        Ok(stand_ins)
    }

    /// For a terminal of ours: what passes our terminal's size on to it (call on
    /// SIGWINCH, before the command is told).
    pub fn size_follower(&self) -> io::Result<Option<SizeFollower>> {
        self.master
            .as_ref()
            .map(|m| m.try_clone().map(SizeFollower))
            .transpose()
    }

    /// Whether any of the three was a terminal.
    pub fn any(&self) -> bool {
        self.stdin.is_some() || self.stdout.is_some() || self.stderr.is_some()
    }

    /// Gives the stand-ins to `cmd` (the pipes' other ends stay with the relays).
    pub fn hand_to(&mut self, cmd: &mut std::process::Command) {
        if let Some(s) = self.stdin.take() {
            cmd.stdin(s);
        }
        if let Some(s) = self.stdout.take() {
            cmd.stdout(s);
        }
        if let Some(s) = self.stderr.take() {
            cmd.stderr(s);
        }
    }

    /// After the session: stop reading the terminal, and let the command's last output
    /// through. Every writer is gone with the sandbox, so the relays end at the pipes'
    /// end; a slow terminal or a prompt waiting for its answer only makes that later.
    /// They are given up only when nothing at all was written for `stalled` with no
    /// prompt up (a terminal stopped with ^S, say).
    pub fn finish(mut self, stalled: Duration) {
        self.input_done.store(true, Ordering::SeqCst);
        // Our copies of the child's ends, if `hand_to` was never called.
        self.stdin = None;
        self.stdout = None;
        self.stderr = None;
        let mut seen = self.progress.load(Ordering::SeqCst);
        let mut since = std::time::Instant::now();
        for t in self.outputs.drain(..) {
            while !t.is_finished() {
                let now = self.progress.load(Ordering::SeqCst);
                // A prompt on the terminal holds the relays: waiting for the person is
                // not a stall.
                if now != seen || prompt_gate().is_shown() {
                    seen = now;
                    since = std::time::Instant::now();
                } else if since.elapsed() >= stalled {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        // Our terminal back as it was, after the command's last output.
        self.raw = None;
    }
}

impl Drop for TerminalStandIns {
    fn drop(&mut self) {
        self.input_done.store(true, Ordering::SeqCst);
    }
}

/// Copies the sandbox's output from `from` to our `to`, held while a prompt is on the
/// terminal, and when `to` is a terminal through an
/// [`airlock_proto::terminal_escapes::EscapeFilter`]. Ends with the pipe (every writer
/// gone), or at a write error (its end closes: the command's next write fails).
fn spawn_output_relay(
    mut from: impl Read + Send + 'static,
    to: RawFd,
    terminal: bool,
    progress: Arc<AtomicU64>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("airlock-output".into())
        .spawn(move || {
            let never = AtomicBool::new(false);
            let mut buf = vec![0u8; RELAY_CHUNK];
            let mut escapes = airlock_proto::terminal_escapes::EscapeFilter::new();
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // A terminal's master reads EIO once no slave is left.
                    Err(_) => return,
                };
                // On a terminal, what reaches past its screen stays out.
                let chunk = if terminal {
                    escapes.filtered(&buf[..n])
                } else {
                    buf[..n].to_vec()
                };
                loop {
                    prompt_gate().wait_until_clear(&never);
                    match prompt_gate().write_unless_shown(|| write_all_fd(to, &chunk)) {
                        Some(Ok(())) => {
                            progress.fetch_add(chunk.len() as u64 + 1, Ordering::SeqCst);
                            break;
                        }
                        // Our output is gone (a closed pipe, a hung-up terminal): so
                        // is the command's, whose next write fails with EPIPE, as if
                        // it wrote there itself.
                        Some(Err(_)) => return,
                        None => continue,
                    }
                }
            }
        })
}

/// Our stdin as the input relays read it. On a terminal: our own open file description
/// of it, non-blocking, so a read never waits and is done under the prompt gate's lock
/// (the prompt takes that lock before it flushes typed-ahead keys and reads its
/// answer: a key typed once a prompt is going up is the prompt's), and O_NONBLOCK does
/// not touch the description the shell shares. Elsewhere (a pipe, a file): stdin.
pub struct StdinReader {
    own: Option<std::fs::File>,
}

impl StdinReader {
    /// Opens it; an error when stdin is a terminal that cannot be reopened (reading
    /// the shared description instead could take a prompt's answer).
    pub fn open() -> io::Result<StdinReader> {
        let own = if is_terminal(0) {
            Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open("/proc/self/fd/0")?,
            )
        } else {
            None
        };
        Ok(StdinReader { own })
    }

    fn fd(&self) -> RawFd {
        self.own.as_ref().map_or(0, std::os::fd::AsRawFd::as_raw_fd)
    }

    /// Waits at most `timeout` for input (or its end); false on a timeout or a signal.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one live pollfd.
        unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            ) > 0
        }
    }

    /// One read into `buf` (`read(2)`'s result: bytes, 0 at the end, -1 with errno
    /// set); `None` while a prompt is up on a terminal: those keys are its.
    pub fn read_unless_prompt_shown(&self, buf: &mut [u8]) -> Option<isize> {
        let fd = self.fd();
        let mut read = || {
            // SAFETY: reads into a live buffer of its length.
            unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
        };
        if self.own.is_some() {
            prompt_gate().write_unless_shown(read)
        } else {
            Some(read())
        }
    }
}

/// Copies what is typed on our terminal (fd 0) into the sandbox's stdin, not while a
/// prompt is on the terminal, and not after the session. The terminal's end of input
/// (^D on an empty line, when it is not raw) closes the pipe.
fn spawn_input_relay(mut to: impl Write + Send + 'static, done: Arc<AtomicBool>) -> io::Result<()> {
    let stdin = StdinReader::open()?;
    std::thread::Builder::new()
        .name("airlock-input".into())
        .spawn(move || {
            let mut buf = vec![0u8; RELAY_CHUNK];
            loop {
                prompt_gate().wait_until_clear(&done);
                if done.load(Ordering::SeqCst) {
                    return;
                }
                if !stdin.wait(HELD_POLL) || done.load(Ordering::SeqCst) {
                    continue;
                }
                let Some(n) = stdin.read_unless_prompt_shown(&mut buf) else {
                    continue;
                };
                if n < 0 {
                    match io::Error::last_os_error().kind() {
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                        _ => return,
                    }
                }
                // Its end, or the sandbox stopped reading for good (EPIPE: SIGPIPE is
                // ignored in airlock): our end drops, the command sees EOF.
                if n == 0 || to.write_all(&buf[..n as usize]).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
}

fn write_all_fd(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice of its length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// The size of our terminal (stdout's, else stdin's), when it has one.
pub fn our_window_size() -> Option<airlock_proto::pb::WindowSize> {
    [1, 0].into_iter().find_map(|fd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the live struct we pass.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then(|| airlock_proto::pb::WindowSize {
            rows: ws.ws_row.into(),
            cols: ws.ws_col.into(),
        })
    })
}

/// Gives a terminal of ours (see [`TerminalStandIns::a_terminal_for_ours`]) our size.
pub struct SizeFollower(OwnedFd);

impl SizeFollower {
    /// Copies our terminal's size to it now.
    pub fn follow(&self) {
        if let Some(size) = our_window_size() {
            let _ = airlock_proto::pty::set_window_size(&self.0, &size);
        }
    }
}

fn make_raw(fd: &OwnedFd) -> io::Result<()> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    let mut t = tcgetattr(fd)?;
    cfmakeraw(&mut t);
    tcsetattr(fd, SetArg::TCSANOW, &t)?;
    Ok(())
}

/// Our stdin terminal in raw mode until dropped: keys (Ctrl-C included) reach the
/// command's terminal as typed, and its own line discipline echoes them. Restored on
/// every way out, a panic included.
pub struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// Puts stdin in raw mode; `None` if it is not a terminal.
    pub fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        restore_on_panic(&saved);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

/// Release builds abort on a panic, and `Drop` never runs: a hook puts the terminal
/// back first (the settings of the first raw-mode entry, which are the user's).
fn restore_on_panic(saved: &nix::sys::termios::Termios) {
    // nix's `Termios` is not `Sync`; the plain libc struct is.
    static SAVED: OnceLock<libc::termios> = OnceLock::new();
    if SAVED.set(libc::termios::from(saved.clone())).is_err() {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(saved) = SAVED.get() {
            // SAFETY: tcsetattr reads one live termios.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
        previous(info);
    }));
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            // The command's last display modes (mouse reporting, bracketed paste, a
            // hidden cursor) end with it.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(airlock_proto::terminal_escapes::DISPLAY_MODES_OFF);
            let _ = out.flush();
        }
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Passes our terminal's signals on to the process-isolation enforcer, which leads a
/// session of its own and so no longer gets them from the terminal: a resize (SIGWINCH,
/// for the agent's relayed terminal) and, when asked for, an interrupt (SIGINT, passed
/// to the agent) and a quit or hang-up (SIGQUIT, SIGHUP: the session ends, SIGTERM).
/// Runs on `rt` until dropped.
pub struct SignalForwarding(tokio::task::JoinHandle<()>);

impl SignalForwarding {
    /// Starts forwarding to `enforcer` (a pidfd, so a reused pid is never signalled).
    /// `interrupts`: also SIGINT, SIGQUIT and SIGHUP (a handler stays installed for the
    /// life of the process: a program embedding the launcher decides).
    /// `size`: a terminal of ours standing in for the caller's, given our new size
    /// before the enforcer is told of a resize.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        enforcer: airlock_proto::pidfd::PidFd,
        interrupts: bool,
        size: Option<SizeFollower>,
    ) -> io::Result<SignalForwarding> {
        use tokio::signal::unix::{signal, SignalKind};
        let _entered = rt.enter();
        let mut resize = signal(SignalKind::window_change())?;
        let mut ends = if interrupts {
            Some((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::quit())?,
                signal(SignalKind::hangup())?,
            ))
        } else {
            None
        };
        Ok(SignalForwarding(rt.spawn(async move {
            loop {
                let signal = match &mut ends {
                    Some((interrupt, quit, hangup)) => tokio::select! {
                        Some(()) = resize.recv() => libc::SIGWINCH,
                        Some(()) = interrupt.recv() => libc::SIGINT,
                        Some(()) = quit.recv() => libc::SIGTERM,
                        Some(()) = hangup.recv() => libc::SIGTERM,
                        else => return,
                    },
                    None => match resize.recv().await {
                        Some(()) => libc::SIGWINCH,
                        None => return,
                    },
                };
                if signal == libc::SIGWINCH {
                    if let Some(size) = &size {
                        size.follow();
                    }
                }
                let _ = enforcer.send_signal(signal);
            }
        })))
    }
}

impl Drop for SignalForwarding {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_waits_while_a_prompt_is_shown_and_goes_through_after() {
        let gate = PromptGate {
            shown: tokio::sync::watch::Sender::new(0),
            writing: Mutex::new(()),
        };
        assert_eq!(gate.write_unless_shown(|| 1), Some(1));
        let shown = gate.show();
        assert!(gate.is_shown());
        assert_eq!(
            gate.write_unless_shown(|| 2),
            None,
            "held while the prompt is up"
        );
        drop(shown);
        assert_eq!(gate.write_unless_shown(|| 3), Some(3));
    }

    #[test]
    fn a_prompt_waits_for_a_write_in_flight() {
        let gate: &'static PromptGate = Box::leak(Box::new(PromptGate {
            shown: tokio::sync::watch::Sender::new(0),
            writing: Mutex::new(()),
        }));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            gate.write_unless_shown(|| {
                started_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(200));
                std::time::Instant::now()
            })
        });
        started_rx.recv().unwrap();
        let shown = gate.show();
        let prompt_at = std::time::Instant::now();
        let written_at = writer.join().unwrap().expect("the write went first");
        assert!(
            written_at <= prompt_at,
            "the prompt went up while a write was still landing"
        );
        drop(shown);
    }
}
