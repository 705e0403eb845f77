//! Approver channels that run beside the launcher and answer the [`ApprovalBroker`]'s
//! asks: a person at the terminal (`airlock run --on-ask prompt`) and a program the
//! user names (`--approver-cmd PROG`).
//!
//! The agent chooses the argv it asks about, so everything shown to a person is
//! escaped first ([`sanitize_for_terminal`], [`describe_pending`]): what an approver
//! reads is exactly what would run, with nothing hidden, reordered or re-drawn by
//! control sequences or invisible characters.
//!
//! Both channels fail closed: a terminal that ends its input, a hook that fails,
//! misbehaves or says nothing in time, each denies the ask with a comment saying why.

use crate::approval_broker::{
    ActionKind, Answer, ApprovalBroker, Event, Pending, ResolveError, Scope,
};
use serde::Deserialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, oneshot, Semaphore};
use tokio::task::{AbortHandle, JoinSet};

/// Most output an `--approver-cmd` hook may write; more is a denial.
pub const MAX_HOOK_OUTPUT: usize = 64 * 1024;

/// Most `--approver-cmd` hooks running at once; further asks wait their turn.
pub const MAX_CONCURRENT_HOOKS: usize = 16;

/// The question under every ask on the terminal.
const PROMPT: &str = "approve [o]nce, for this [s]ession, or [d]eny? ";
/// Written before a prompt: attributes off (no invisible or same-colour text), the
/// palette and default colours back to the terminal's own (a command may have set the
/// text colour to the background's), cursor shown, the ASCII character set, replace
/// (not insert) mode, autowrap on, scroll margins reset around a cursor save and
/// restore; then a fresh line and the screen below the cursor erased, so nothing the
/// command painted in advance lines up with the prompt's text. Each is a sequence every
/// VT100-style terminal knows (the colour resets, xterm's); what is above stays.
const TERMINAL_RESET: &str = "\x1b[0m\x1b]104\x07\x1b]110\x07\x1b]111\x07\x1b[?25h\x1b(B\x0f\x1b[4l\x1b[?7h\x1b7\x1b[r\x1b8\r\n\x1b[J";

/// How much earlier than the ask's deadline a hook is stopped: the hook's denial, which
/// says why, must land before the broker's own timeout, which cannot.
const HOOK_DEADLINE_MARGIN_MS: u64 = 250;

/// Whether `c` must not reach a terminal as itself: C0 controls, DEL, C1 controls,
/// line/paragraph separators, bidi controls and the characters Unicode lists as
/// default-ignorable (zero-width, invisible and format characters, variation
/// selectors, tags). Each of them can hide, move or re-draw what is around it.
fn needs_escape(c: char) -> bool {
    matches!(
        c as u32,
        0x00..=0x1f
            | 0x7f..=0x9f
            | 0x00a0
            | 0x00ad
            | 0x034f
            | 0x061c
            | 0x115f..=0x1160
            | 0x1680
            | 0x17b4..=0x17b5
            | 0x180b..=0x180f
            | 0x2000..=0x200f
            | 0x2028..=0x202f
            | 0x205f..=0x206f
            | 0x2800
            | 0x3000
            | 0x3164
            | 0xfe00..=0xfe0f
            | 0xfeff
            | 0xffa0
            | 0xfff0..=0xfffb
            | 0x1bca0..=0x1bca3
            | 0x1d173..=0x1d17a
            | 0xe0000..=0xe0fff
    )
}

/// Escapes everything a terminal would interpret or not show: `\n`, `\r`, `\t` (a
/// newline is shown, never sent); the other C0 controls and DEL as `\x1b`; C1 controls
/// (U+0080..U+009F), bidi overrides and isolates, zero-width and other invisible format
/// characters and U+2028/2029 as `\u{202e}`. Everything else, ordinary non-ASCII letters
/// included, is unchanged, a backslash too: for argv, where a literal `\n` must not pass
/// for an escaped newline, [`describe_pending`] quotes unambiguously.
pub fn sanitize_for_terminal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !needs_escape(c) {
            out.push(c);
            continue;
        }
        // `write!` into a String cannot fail.
        let _ = match c {
            '\n' => write!(out, "\\n"),
            '\r' => write!(out, "\\r"),
            '\t' => write!(out, "\\t"),
            '\0'..='\x1f' | '\x7f' => write!(out, "\\x{:02x}", c as u32),
            _ => write!(out, "\\u{{{:x}}}", c as u32),
        };
    }
    out
}

/// A command shown longer than this gets a note next to the answer (about three lines
/// of a narrow terminal).
const LONG_COMMAND_CHARS: usize = 240;

/// A command line as [`quote_word`] shows each word: what every approval channel on a
/// terminal prints, so `a\nb` (a newline) and `a\\nb` (a backslash) never look alike.
pub fn quote_command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|w| quote_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One word of a command line as a POSIX shell would read it back, and safe on a
/// terminal: plain words as `shell_words` quotes them; words with anything
/// [`needs_escape`] in ANSI-C quoting (`$'a\nb'`, `$'\u202e'`), where every backslash
/// is an escape, so a literal `\n` (`$'\\n'`) and a newline (`$'\n'`) look different.
pub fn quote_word(word: &str) -> String {
    if !word.chars().any(needs_escape) {
        return shell_words::quote(word).into_owned();
    }
    let mut out = String::from("$'");
    for c in word.chars() {
        let _ = match c {
            '\\' => write!(out, "\\\\"),
            '\'' => write!(out, "\\'"),
            '\n' => write!(out, "\\n"),
            '\r' => write!(out, "\\r"),
            '\t' => write!(out, "\\t"),
            '\0'..='\x1f' | '\x7f' => write!(out, "\\x{:02x}", c as u32),
            c if needs_escape(c) && (c as u32) <= 0xffff => write!(out, "\\u{:04x}", c as u32),
            c if needs_escape(c) => write!(out, "\\U{:08x}", c as u32),
            c => write!(out, "{c}"),
        };
    }
    out.push('\'');
    out
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A multi-line description of `p` for a person: id, session, rule and reason, the exact
/// command (each argv element quoted so that spaces and quotes inside an argument are
/// visible and escapes are unambiguous), cwd, program, binary sha256, where the call
/// reaches by its configuration (a push's remotes), the action's digest and the seconds
/// left; for a capability ask, the capability.
pub fn describe_pending(p: &Pending) -> String {
    let a = &p.action;
    let left_s = p.deadline_ms.saturating_sub(unix_ms_now()) / 1000;
    let mut lines = vec![
        format!(
            "approval {} is waiting for an answer",
            sanitize_for_terminal(&p.id)
        ),
        format!("  session:    {}", sanitize_for_terminal(&a.session_id)),
        format!(
            "  rule:       {} ({})",
            sanitize_for_terminal(&a.rule_id),
            sanitize_for_terminal(&a.reason)
        ),
    ];
    let mut ansi_c = false;
    match &a.kind {
        ActionKind::Tool {
            program,
            argv,
            cwd,
            binary_sha256,
            reaches,
        } => {
            let words: Vec<String> = argv.iter().map(|w| quote_word(w)).collect();
            let cwd = quote_word(cwd);
            let program = quote_word(program);
            ansi_c = words
                .iter()
                .chain([&cwd, &program])
                .any(|w| w.starts_with("$'"));
            lines.push(format!("  command:    {}", words.join(" ")));
            lines.push(format!("  cwd:        {cwd}"));
            lines.push(format!("  program:    {program}"));
            lines.push(format!(
                "  binary:     sha256:{}",
                sanitize_for_terminal(binary_sha256)
            ));
            // Where the call goes, by the tool's configuration the agent may have
            // edited (`git push origin` does not say where `origin` is).
            for r in reaches {
                let (key, value) = r.split_once(" = ").unwrap_or((r, ""));
                let value = quote_word(value);
                ansi_c |= value.starts_with("$'");
                lines.push(format!(
                    "  reaches:    {} = {value}",
                    sanitize_for_terminal(key)
                ));
            }
        }
        ActionKind::Net { host, port } => {
            lines.push(format!(
                "  connect to: {}:{port}",
                sanitize_for_terminal(host)
            ));
        }
        ActionKind::Capability { capability } => {
            lines.push(format!(
                "  capability: {}",
                sanitize_for_terminal(capability)
            ));
        }
    }
    if ansi_c {
        lines.push(
            "  note:       $'...' words hold control or invisible characters, shown as escapes"
                .into(),
        );
    }
    // A command long enough to scroll its start off the screen says so next to the
    // answer: what scrolled away is part of what is approved.
    if let ActionKind::Tool { argv, reaches, .. } = &a.kind {
        let shown = argv
            .iter()
            .chain(reaches)
            .map(|w| quote_word(w).chars().count() + 1)
            .sum::<usize>();
        if shown > LONG_COMMAND_CHARS {
            lines.push(format!(
                "  note:       the command is {shown} characters ({} words): scroll up to read all of it before answering",
                argv.len()
            ));
        }
    }
    lines.push(format!(
        "  digest:     {}",
        sanitize_for_terminal(&p.digest)
    ));
    lines.push(format!("  time left:  {left_s} s"));
    lines.join("\n")
}

/// One line naming what `p` asks for (the command, the destination or the capability),
/// repeated with the answer so the person sees what they approved.
pub fn what_was_asked(p: &Pending) -> String {
    match &p.action.kind {
        ActionKind::Tool { argv, .. } => quote_command_line(argv),
        ActionKind::Net { host, port } => {
            format!("connect to {}:{port}", sanitize_for_terminal(host))
        }
        ActionKind::Capability { capability } => sanitize_for_terminal(capability),
    }
}

/// A running channel; dropping it (or [`ChannelHandle::stop`]) stops the channel.
#[must_use = "the channel stops when its handle is dropped"]
pub struct ChannelHandle {
    /// Dropping it tells the terminal thread to end.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    task: Option<AbortHandle>,
}

impl ChannelHandle {
    /// Stops the channel: the terminal thread ends (and is waited for, so nothing is
    /// written to the terminal after this returns); the command channel's task is
    /// aborted, and the hooks it runs are killed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(thread) = self.thread.take() {
            // The thread only ever waits in `select!`s that include the stop signal.
            let _ = thread.join();
        }
    }
}

impl Drop for ChannelHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for ChannelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelHandle")
            .field("thread", &self.thread.is_some())
            .field("task", &self.task.is_some())
            .finish()
    }
}

fn is_pending(broker: &ApprovalBroker, id: &str) -> bool {
    broker.pending().iter().any(|p| p.id == id)
}

/// How `p` ended, as the agent was told (from the broker's history).
fn decided_message(broker: &ApprovalBroker, p: &Pending) -> String {
    broker
        .history(Some(&p.action.session_id))
        .into_iter()
        .rev()
        .find(|d| d.pending.id == p.id)
        .map_or_else(|| "decided elsewhere".to_string(), |d| d.resolution.message)
}

/// Who answers on this terminal: the login name of our uid, or the uid.
fn terminal_approver() -> String {
    let uid = nix::unistd::Uid::current();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => format!("terminal ({})", sanitize_for_terminal(&user.name)),
        _ => format!("terminal (uid {uid})"),
    }
}

/// Starts the terminal channel (`airlock run --on-ask prompt`) on `tty` (normally
/// `/dev/tty`), opened here for reading and writing; an error opening it is returned.
///
/// Asks are shown strictly one at a time, oldest first (those waiting already, then new
/// ones), on the terminal only: never on stdout or stderr, which belong to the sandboxed
/// command. An answer is `o`/`once`, `s`/`session` or `d`/`deny` (any case); anything
/// else asks again; end of input denies. Typed-ahead input is discarded before every
/// prompt, so an answer always follows the question it answers. An ask decided
/// meanwhile (timeout, session ended, another channel) is reported and skipped. The
/// answer is recorded as from `terminal (<login name>)`.
///
/// The channel runs on a thread of its own (with a private single-threaded runtime to
/// wait on the terminal, the broker and the stop signal at once), so this may be called
/// inside or outside a Tokio runtime.
pub fn spawn_terminal_approver(
    broker: Arc<ApprovalBroker>,
    tty: &Path,
) -> io::Result<ChannelHandle> {
    // Our own open file description: O_NONBLOCK on it does not touch the descriptors
    // the sandboxed command or the shell use; O_NOCTTY so a terminal opened here never
    // becomes the controlling terminal of the launcher.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(tty)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let fd = {
        let _entered = runtime.enter();
        // SAFETY: the `File` owns its descriptor and moves into the `AsyncFd`, which
        // keeps it (never handing it out: no `into_inner`) until the `AsyncFd` drops;
        // so the descriptor stays open, on the same file description, throughout.
        unsafe { AsyncFd::register(file) }?
    };
    // Subscribe before the thread reads `pending()`: an ask made in between is seen
    // once (the queue de-duplicates), never missed.
    let events = broker.subscribe();
    let approver = terminal_approver();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("airlock-terminal-approver".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut tty = Tty {
                    fd,
                    buf: Vec::new(),
                };
                tokio::select! {
                    _ = stop_rx => {}
                    () = serve_terminal(&broker, events, &mut tty, &approver) => {}
                }
            });
        })?;
    Ok(ChannelHandle {
        stop: Some(stop_tx),
        thread: Some(thread),
        task: None,
    })
}

/// The terminal, non-blocking, with the input read but not yet taken as a line.
struct Tty {
    fd: AsyncFd<File>,
    buf: Vec<u8>,
}

/// Longest line kept; a longer one is taken as it is (and is not a valid answer).
const MAX_LINE: usize = 4096;

impl Tty {
    async fn write_all(&self, text: &str) -> io::Result<()> {
        // A terminal may run in raw mode (the sandboxed command's TUI); "\r\n" ends a
        // line in both modes.
        let text = text.replace('\n', "\r\n");
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|f| {
                let mut file: &File = f.get_ref();
                file.write(rest)
            }) {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => rest = &rest[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// The next line, `None` at end of input (or `^D` on a terminal in raw mode).
    async fn read_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..end]).into_owned()));
            }
            if self.buf.contains(&0x04) {
                self.buf.clear();
                return Ok(None);
            }
            if self.buf.len() > MAX_LINE {
                let line = std::mem::take(&mut self.buf);
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            let mut ready = self.fd.readable().await?;
            let mut chunk = [0u8; 512];
            match ready.try_io(|f| {
                let mut file: &File = f.get_ref();
                file.read(&mut chunk)
            }) {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                // A terminal that hung up reads as EIO: that is the end of its input.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }

    /// Forgets input typed before the prompt about to be shown.
    fn discard_input(&mut self) {
        self.buf.clear();
        // Not a terminal (a FIFO in a test, say): there is no kernel queue to flush.
        let _ =
            nix::sys::termios::tcflush(self.fd.get_ref(), nix::sys::termios::FlushArg::TCIFLUSH);
    }
}

/// Asks the terminal still has to show, in order, and the ids it knows about (queued,
/// or the one on screen) so that a repeated event or a re-read does not show one twice.
#[derive(Default)]
struct AskQueue {
    order: VecDeque<Pending>,
    known: HashSet<String>,
}

impl AskQueue {
    /// A new ask from an event; ignored when known, or decided already (a session grant
    /// answers at once: nothing to show).
    fn offer(&mut self, broker: &ApprovalBroker, p: Pending) {
        if !self.known.contains(&p.id) && is_pending(broker, &p.id) {
            self.known.insert(p.id.clone());
            self.order.push_back(p);
        }
    }

    /// Takes in everything waiting in the broker (at start, and after the event stream
    /// lagged and lost events), keeping the queue oldest first.
    fn refill(&mut self, broker: &ApprovalBroker) {
        for p in broker.pending() {
            if self.known.insert(p.id.clone()) {
                self.order.push_back(p);
            }
        }
        self.order.make_contiguous().sort_by_key(|p| p.asked_at_ms);
    }

    fn next(&mut self) -> Option<Pending> {
        self.order.pop_front()
    }

    fn done(&mut self, id: &str) {
        self.known.remove(id);
    }
}

async fn serve_terminal(
    broker: &ApprovalBroker,
    mut events: broadcast::Receiver<Event>,
    tty: &mut Tty,
    approver: &str,
) {
    let mut queue = AskQueue::default();
    queue.refill(broker);
    loop {
        let Some(p) = queue.next() else {
            match events.recv().await {
                Ok(Event::Pending(p)) => queue.offer(broker, p),
                Ok(Event::Resolved(_)) => {}
                Err(RecvError::Lagged(_)) => queue.refill(broker),
                Err(RecvError::Closed) => return,
            }
            continue;
        };
        if is_pending(broker, &p.id) {
            ask_on_terminal(broker, &mut events, &mut queue, tty, approver, &p).await;
        } else {
            let message = decided_message(broker, &p);
            let _ = tty.write_all(&already_decided(&p.id, &message)).await;
        }
        queue.done(&p.id);
    }
}

fn already_decided(id: &str, message: &str) -> String {
    format!(
        "\n{}: already decided: {}\n",
        sanitize_for_terminal(id),
        sanitize_for_terminal(message)
    )
}

fn parse_terminal_answer(line: &str) -> Option<Answer> {
    match line.trim().to_ascii_lowercase().as_str() {
        "o" | "once" => Some(Answer::Approve(Scope::Once)),
        "s" | "session" => Some(Answer::Approve(Scope::Session)),
        "d" | "deny" => Some(Answer::Deny),
        _ => None,
    }
}

/// Waits until ask `p` is decided by someone else, queueing new asks meanwhile; the
/// message of that decision.
async fn decided_elsewhere(
    broker: &ApprovalBroker,
    events: &mut broadcast::Receiver<Event>,
    queue: &mut AskQueue,
    p: &Pending,
) -> String {
    loop {
        match events.recv().await {
            Ok(Event::Pending(new)) => queue.offer(broker, new),
            Ok(Event::Resolved(r)) if r.id == p.id => return r.message,
            Ok(Event::Resolved(_)) => {}
            Err(RecvError::Lagged(_)) => {
                queue.refill(broker);
                if !is_pending(broker, &p.id) {
                    return decided_message(broker, p);
                }
            }
            // No broker, no decision: the person's answer (or the stop) ends the wait.
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// What ended one prompt.
enum Turn {
    Line(io::Result<Option<String>>),
    DecidedElsewhere(String),
}

/// Shows `p`, and asks until there is an answer, end of input, or a decision elsewhere.
async fn ask_on_terminal(
    broker: &ApprovalBroker,
    events: &mut broadcast::Receiver<Event>,
    queue: &mut AskQueue,
    tty: &mut Tty,
    approver: &str,
    p: &Pending,
) {
    // Whatever the sandboxed command wrote stays above the prompt: its output is held
    // until the answer (`host_terminal`), and the terminal's modes it may have set
    // (colours, invisible text, a one-line scroll region, another character set) are
    // reset so the request is shown as it is.
    let _shown = crate::host_terminal::prompt_gate().show();
    let mut text = format!("{TERMINAL_RESET}{}\n{PROMPT}", describe_pending(p));
    loop {
        tty.discard_input();
        // Writing too waits inside the select: a terminal whose output is stopped
        // (^S) must not keep a decided ask on hold.
        let turn = tokio::select! {
            line = async {
                tty.write_all(&text).await?;
                tty.read_line().await
            } => Turn::Line(line),
            message = decided_elsewhere(broker, events, queue, p) => Turn::DecidedElsewhere(message),
        };
        let (answer, comment) = match turn {
            Turn::DecidedElsewhere(message) => {
                let _ = tty.write_all(&already_decided(&p.id, &message)).await;
                return;
            }
            Turn::Line(Ok(Some(line))) => match parse_terminal_answer(&line) {
                Some(answer) => (answer, String::new()),
                None => {
                    text = format!("please answer o, s or d\n{PROMPT}");
                    continue;
                }
            },
            Turn::Line(Ok(None)) => (Answer::Deny, "end of input on the terminal".to_string()),
            Turn::Line(Err(e)) => (Answer::Deny, format!("the terminal failed: {e}")),
        };
        let shown = match broker.resolve(&p.id, answer, approver, &comment) {
            Ok(r) => format!(
                "{} ({}): {}\n",
                sanitize_for_terminal(&p.id),
                what_was_asked(p),
                sanitize_for_terminal(&r.message)
            ),
            Err(ResolveError::AlreadyDecided(_)) => {
                already_decided(&p.id, &decided_message(broker, p))
            }
            Err(ResolveError::Unknown(_)) => already_decided(&p.id, "decided elsewhere"),
        };
        let _ = tty.write_all(&shown).await;
        return;
    }
}

/// What a hook answers on stdout: exactly this object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookReply {
    answer: HookChoice,
    #[serde(default)]
    approver: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum HookChoice {
    Once,
    Session,
    Deny,
}

/// Starts the scripted channel (`--approver-cmd PROG`): every ask (those waiting, then
/// new ones) runs `program` (a path, or a name looked up in `PATH`; no shell, no
/// arguments) in a process group of its own, with the ask as one JSON object on stdin
/// (the serialized [`Pending`]). Its stdout must be exactly one object
/// `{"answer": "once"|"session"|"deny", "approver"?: string, "comment"?: string}`.
///
/// A failed exit, any other output, more than [`MAX_HOOK_OUTPUT`] bytes, or no answer
/// shortly before the ask's deadline denies, with a comment saying which; the hook's
/// process group is killed when its answer is in (or it ran out of time, or the ask was
/// decided elsewhere). The approver is recorded as `approver-cmd PROG`, or `NAME via
/// approver-cmd PROG` when the hook names one. At most [`MAX_CONCURRENT_HOOKS`] run at
/// once. The hook's stderr is ours.
///
/// # Panics
/// Outside a Tokio runtime (with I/O, time and process support): the channel is a task
/// on the current one.
pub fn spawn_command_approver(broker: Arc<ApprovalBroker>, program: PathBuf) -> ChannelHandle {
    // Subscribe before the task reads `pending()`, so no ask falls in between.
    let events = broker.subscribe();
    let task = tokio::spawn(serve_command(broker, Arc::new(program), events));
    ChannelHandle {
        stop: None,
        thread: None,
        task: Some(task.abort_handle()),
    }
}

/// The command channel's state: the hook task of every ask it is working on.
struct HookRunner {
    broker: Arc<ApprovalBroker>,
    program: Arc<PathBuf>,
    limit: Arc<Semaphore>,
    // Dropping the set (when the channel's task is aborted) aborts every hook task,
    // and that kills the hooks' process groups.
    hooks: JoinSet<String>,
    running: HashMap<String, AbortHandle>,
}

impl HookRunner {
    /// Starts a hook task for `p`, unless one is at work on it already.
    fn start(&mut self, p: Pending) {
        if self.running.contains_key(&p.id) {
            return;
        }
        let id = p.id.clone();
        let task = self.hooks.spawn(answer_with_hook(
            Arc::clone(&self.broker),
            Arc::clone(&self.program),
            p,
            Arc::clone(&self.limit),
        ));
        self.running.insert(id, task);
    }

    /// Stops the hook task for `id`, if any (its ask is decided).
    fn stop(&mut self, id: &str) {
        if let Some(task) = self.running.remove(id) {
            task.abort();
        }
    }

    /// After lost events: exactly the asks waiting now have a hook task.
    fn resync(&mut self) {
        let waiting = self.broker.pending();
        let ids: HashSet<&str> = waiting.iter().map(|p| p.id.as_str()).collect();
        let stale: Vec<String> = self
            .running
            .keys()
            .filter(|id| !ids.contains(id.as_str()))
            .cloned()
            .collect();
        for id in stale {
            self.stop(&id);
        }
        for p in waiting {
            self.start(p);
        }
    }
}

async fn serve_command(
    broker: Arc<ApprovalBroker>,
    program: Arc<PathBuf>,
    mut events: broadcast::Receiver<Event>,
) {
    let mut runner = HookRunner {
        broker,
        program,
        limit: Arc::new(Semaphore::new(MAX_CONCURRENT_HOOKS)),
        hooks: JoinSet::new(),
        running: HashMap::new(),
    };
    runner.resync();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(Event::Pending(p)) => {
                    // An ask answered at once (a session grant) is not pending any more.
                    if is_pending(&runner.broker, &p.id) {
                        runner.start(p);
                    }
                }
                // Decided (by its hook, or elsewhere): a hook still at work is stopped.
                Ok(Event::Resolved(r)) => runner.stop(&r.id),
                Err(RecvError::Lagged(_)) => runner.resync(),
                Err(RecvError::Closed) => return,
            },
            Some(done) = runner.hooks.join_next() => {
                if let Ok(id) = done {
                    runner.running.remove(&id);
                }
            }
        }
    }
}

/// Runs the hook for `p` (when its turn comes and `p` still waits) and answers `p`;
/// returns `p`'s id.
async fn answer_with_hook(
    broker: Arc<ApprovalBroker>,
    program: Arc<PathBuf>,
    p: Pending,
    limit: Arc<Semaphore>,
) -> String {
    let Ok(_permit) = limit.acquire_owned().await else {
        return p.id;
    };
    if !is_pending(&broker, &p.id) {
        return p.id;
    }
    let channel = format!("approver-cmd {}", program.display());
    let (answer, approver, comment) = match consult_hook(&program, &p).await {
        Ok(reply) => {
            let answer = match reply.answer {
                HookChoice::Once => Answer::Approve(Scope::Once),
                HookChoice::Session => Answer::Approve(Scope::Session),
                HookChoice::Deny => Answer::Deny,
            };
            let approver = match reply
                .approver
                .map(|a| sanitize_for_terminal(a.trim()))
                .filter(|a| !a.is_empty())
            {
                Some(name) => format!("{name} via {channel}"),
                None => channel,
            };
            (answer, approver, reply.comment.unwrap_or_default())
        }
        Err(why) => (Answer::Deny, channel, why),
    };
    // Decided meanwhile (the session ended): the first decision stands, nothing to do.
    let _ = broker.resolve(&p.id, answer, &approver, &comment);
    p.id
}

/// How long the hook for `p` may take from `now_ms`: up to a little before the deadline
/// (at most a fifth of the ask's whole wait is given up for that).
fn hook_budget(p: &Pending, now_ms: u64) -> Option<Duration> {
    let window = p.deadline_ms.saturating_sub(p.asked_at_ms);
    let margin = (window / 5).min(HOOK_DEADLINE_MARGIN_MS);
    let left = p.deadline_ms.saturating_sub(margin).saturating_sub(now_ms);
    (left > 0).then(|| Duration::from_millis(left))
}

/// Kills a hook's process group when dropped: after its answer, on its timeout, and when
/// its task is aborted (the ask decided elsewhere, the channel stopped).
struct KillGroupOnDrop(nix::unistd::Pid);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        // ESRCH (nothing left in the group) is the usual, good case.
        let _ = nix::sys::signal::killpg(self.0, nix::sys::signal::Signal::SIGKILL);
    }
}

async fn spawn_hook(program: &Path) -> io::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            // A hook just written is briefly "busy" while another thread's fork still
            // holds it open for writing; that passes.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            result => return result,
        }
    }
}

/// Runs the hook for `p` and reads its reply; why not, as the denial's comment.
async fn consult_hook(program: &Path, p: &Pending) -> Result<HookReply, String> {
    let mut input =
        serde_json::to_vec(p).map_err(|e| format!("the ask could not be encoded: {e}"))?;
    // One line: `read` in a shell hook wants its newline.
    input.push(b'\n');
    let budget = hook_budget(p, unix_ms_now()).ok_or_else(|| {
        "approver-cmd was not run: no time was left before the deadline".to_string()
    })?;
    let mut child = spawn_hook(program)
        .await
        .map_err(|e| format!("approver-cmd could not be started: {e}"))?;
    let _group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(|pid| KillGroupOnDrop(nix::unistd::Pid::from_raw(pid)));
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let run = async {
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A hook that does not read its input is free not to (EPIPE).
                let _ = stdin.write_all(&input).await;
                // Dropped here: the hook sees the end of its input.
            }
        };
        let mut out = Vec::new();
        let read = async {
            match stdout {
                Some(s) => s
                    .take(MAX_HOOK_OUTPUT as u64 + 1)
                    .read_to_end(&mut out)
                    .await
                    .map(drop),
                None => Ok(()),
            }
        };
        let ((), read) = tokio::join!(feed, read);
        read.map_err(|e| format!("approver-cmd's output could not be read: {e}"))?;
        if out.len() > MAX_HOOK_OUTPUT {
            return Err(format!(
                "approver-cmd wrote more than {} KiB",
                MAX_HOOK_OUTPUT / 1024
            ));
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("approver-cmd could not be waited for: {e}"))?;
        if !status.success() {
            return Err(format!("approver-cmd failed ({status})"));
        }
        parse_hook_reply(&out)
    };
    match tokio::time::timeout(budget, run).await {
        Ok(reply) => reply,
        Err(_) => Err(format!(
            "approver-cmd gave no answer before the ask's deadline ({} ms); it was killed",
            budget.as_millis()
        )),
    }
}

fn parse_hook_reply(out: &[u8]) -> Result<HookReply, String> {
    const EXPECTED: &str =
        r#"expected one object {"answer": "once"|"session"|"deny", "approver"?, "comment"?}"#;
    let text = std::str::from_utf8(out)
        .map_err(|_| format!("approver-cmd's output is not UTF-8; {EXPECTED}"))?;
    // A derived struct also reads a JSON array; only an object is an answer.
    if !text.trim_start().starts_with('{') {
        return Err(format!(
            "approver-cmd's output is not a JSON object; {EXPECTED}"
        ));
    }
    serde_json::from_str(text)
        .map_err(|e| format!("approver-cmd's output is not a valid answer ({e}); {EXPECTED}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval_broker::{Action, Resolution};
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Mutex;
    use std::time::Instant;

    fn tool(session: &str, argv: &[&str]) -> Action {
        Action {
            session_id: session.into(),
            rule_id: "git-push".into(),
            reason: "pushing needs a human".into(),
            kind: ActionKind::Tool {
                program: "git".into(),
                argv: argv.iter().map(|a| a.to_string()).collect(),
                cwd: "/workspace".into(),
                binary_sha256: "ab".repeat(32),
                reaches: vec![],
            },
        }
    }

    fn pending_of(action: Action) -> Pending {
        let now = unix_ms_now();
        Pending {
            id: "ap-000007".into(),
            digest: action.digest(),
            action,
            asked_at_ms: now,
            deadline_ms: now + 60_000,
        }
    }

    fn ask(
        b: &Arc<ApprovalBroker>,
        action: Action,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<Resolution> {
        let b = Arc::clone(b);
        tokio::spawn(async move { b.ask(action, Some(timeout)).await })
    }

    async fn until_pending(b: &ApprovalBroker, n: usize) {
        let start = Instant::now();
        while b.pending().len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "asks never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn sanitize_escapes_what_a_terminal_would_interpret_and_keeps_the_rest() {
        let cases = [
            ("\x1b[2J", "\\x1b[2J"),
            ("rm -rf /\rls -l   ", "rm -rf /\\rls -l   "),
            ("safe\u{202e}txt.exe", "safe\\u{202e}txt.exe"),
            ("\u{2066}x\u{2069}", "\\u{2066}x\\u{2069}"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("\u{85}", "\\u{85}"),
            (
                "a\u{200b}b\u{feff}c\u{2028}",
                "a\\u{200b}b\\u{feff}c\\u{2028}",
            ),
            ("one\ntwo\tthree\0\x7f", "one\\ntwo\\tthree\\x00\\x7f"),
            ("tag\u{e0041}", "tag\\u{e0041}"),
        ];
        for (raw, shown) in cases {
            assert_eq!(sanitize_for_terminal(raw), shown, "{raw:?}");
            assert!(
                !sanitize_for_terminal(raw).chars().any(needs_escape),
                "{raw:?}"
            );
        }
        for plain in [
            "git push origin main --force-with-lease='x' \"y\" \\",
            "café résumé 日本語 Ωμέγα",
            "",
        ] {
            assert_eq!(sanitize_for_terminal(plain), plain);
        }
    }

    #[test]
    fn describe_shows_each_argument_as_one_visible_word_and_names_rule_and_digest() {
        let p = pending_of(tool(
            "s1",
            &[
                "git",
                "commit",
                "-m",
                "it's \"done\" now",
                "a\nb",
                "\u{202e}x",
                "a\\nb",
            ],
        ));
        let d = describe_pending(&p);
        assert!(
            d.contains(
                r#"command:    git commit -m 'it'\''s "done" now' $'a\nb' $'\u202ex' 'a\nb'"#
            ),
            "{d}"
        );
        // The description itself holds nothing a terminal would interpret.
        assert!(!d.split('\n').any(|l| l.chars().any(needs_escape)), "{d}");
        for needle in [
            "ap-000007",
            "session:    s1",
            "git-push (pushing needs a human)",
            &p.digest,
            &format!("binary:     sha256:{}", "ab".repeat(32)),
            "cwd:        /workspace",
            "program:    git",
            "note:",
        ] {
            assert!(d.contains(needle), "{needle:?} missing from\n{d}");
        }
        let left = d.lines().last().unwrap();
        assert!(
            left == "  time left:  59 s" || left == "  time left:  60 s",
            "{d}"
        );

        // A push shows where it goes, each entry on its own line, values escaped.
        let mut push = tool("s1", &["git", "push", "origin", "main"]);
        if let ActionKind::Tool { reaches, .. } = &mut push.kind {
            reaches.push("remote.origin.url = https://example.org/r.git".into());
            reaches.push("remote.origin.url = https://evil.test/\u{202e}tig.r".into());
        }
        let d = describe_pending(&pending_of(push));
        assert!(
            d.contains("\n  reaches:    remote.origin.url = https://example.org/r.git\n")
                && d.contains(
                    "\n  reaches:    remote.origin.url = $'https://evil.test/\\u202etig.r'\n"
                ),
            "{d}"
        );
        assert!(!d.split('\n').any(|l| l.chars().any(needs_escape)), "{d}");

        let cap = pending_of(Action {
            session_id: "s2".into(),
            rule_id: "mounts".into(),
            reason: "writable mounts need a human".into(),
            kind: ActionKind::Capability {
                capability: "fs rw /home/a/work\x1b[8m".into(),
            },
        });
        let d = describe_pending(&cap);
        assert!(d.contains("capability: fs rw /home/a/work\\x1b[8m"), "{d}");
        assert!(!d.contains("command:") && !d.contains("note:"), "{d}");
    }

    /// A person at a pseudo-terminal: everything the approver writes to the terminal
    /// lands on `screen`.
    struct Human {
        master: File,
        screen: Arc<Mutex<Vec<u8>>>,
        path: PathBuf,
        // Held so the master never reads as hung up before the approver opens the pty.
        _slave: OwnedFd,
    }

    impl Human {
        fn new() -> Human {
            let pty = nix::pty::openpty(None, None).unwrap();
            let path = nix::unistd::ttyname(&pty.slave).unwrap();
            let master = File::from(pty.master);
            let mut reader = master.try_clone().unwrap();
            let screen = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&screen);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // Ends with EIO once every slave descriptor is closed.
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            Human {
                master,
                screen,
                path,
                _slave: pty.slave,
            }
        }

        fn mark(&self) -> usize {
            self.screen.lock().unwrap().len()
        }

        fn since(&self, mark: usize) -> String {
            String::from_utf8_lossy(&self.screen.lock().unwrap()[mark..]).into_owned()
        }

        /// Waits until the screen from `mark` on satisfies `ok`; that text.
        async fn sees(&self, mark: usize, ok: impl Fn(&str) -> bool) -> String {
            let start = Instant::now();
            loop {
                let text = self.since(mark);
                if ok(&text) {
                    return text;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the terminal never showed it; it shows:\n{text}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        fn types(&mut self, keys: &str) {
            self.master.write_all(keys.as_bytes()).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_person_at_the_terminal_answers_one_ask_at_a_time_in_order() {
        let b = ApprovalBroker::new(Duration::from_secs(30));
        let long = Duration::from_secs(30);
        // Two asks wait before the terminal opens: shown oldest first, one at a time.
        let first = ask(
            &b,
            tool("s1", &["git", "push", "origin", "my branch's tip"]),
            long,
        );
        until_pending(&b, 1).await;
        let second = ask(&b, tool("s1", &["git", "push", "--force"]), long);
        until_pending(&b, 2).await;
        let mut human = Human::new();
        let channel = spawn_terminal_approver(Arc::clone(&b), &human.path).unwrap();

        let shown = human.sees(0, |s| s.contains(PROMPT)).await;
        assert!(shown.contains("ap-000001"), "{shown}");
        let modes = &TERMINAL_RESET[..TERMINAL_RESET.find('\r').unwrap()];
        assert!(
            shown.starts_with(modes) && shown.contains("\x1b[Japproval ap-000001"),
            "the terminal's modes are reset and the screen below erased first: {shown:?}"
        );
        // While the prompt is up, sandbox output relays are held.
        let gate = crate::host_terminal::prompt_gate();
        assert!(gate.is_shown());
        assert_eq!(gate.write_unless_shown(|| ()), None);
        assert!(
            shown.contains(r#"command:    git push origin 'my branch'\''s tip'"#),
            "{shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!human.since(0).contains("ap-000002"), "{}", human.since(0));
        let mark = human.mark();
        human.types("S\n");
        let r = first.await.unwrap();
        assert!(r.approved && r.scope == Some(Scope::Session), "{r:?}");
        assert!(r.approver.starts_with("terminal ("), "{r:?}");
        human
            .sees(mark, |s| {
                s.contains(
                    r#"ap-000001 (git push origin 'my branch'\''s tip'): approved by terminal ("#,
                )
            })
            .await;

        // The second ask, denied.
        let shown = human.sees(mark, |s| s.contains(PROMPT)).await;
        assert!(
            shown.contains("ap-000002") && shown.contains("--force"),
            "{shown}"
        );
        let mark = human.mark();
        human.types("deny\n");
        let r = second.await.unwrap();
        assert!(!r.approved && r.approver.starts_with("terminal ("), "{r:?}");
        human
            .sees(mark, |s| {
                s.contains("ap-000002 (git push --force): denied by terminal (")
            })
            .await;

        // Anything else asks again; then `o`.
        let third = ask(&b, tool("s1", &["git", "fetch"]), long);
        human
            .sees(mark, |s| s.contains("ap-000003") && s.contains(PROMPT))
            .await;
        let mark = human.mark();
        human.types("x\n");
        human
            .sees(mark, |s| {
                s.contains("please answer o, s or d") && s.contains(PROMPT)
            })
            .await;
        human.types("o\n");
        let r = third.await.unwrap();
        assert!(r.approved && r.scope == Some(Scope::Once), "{r:?}");

        // Nobody answers in time: the terminal says so and moves on.
        let mark = human.mark();
        let fourth = ask(&b, tool("s1", &["git", "gc"]), Duration::from_millis(1500));
        human
            .sees(mark, |s| s.contains("ap-000004") && s.contains(PROMPT))
            .await;
        let r = fourth.await.unwrap();
        assert!(!r.approved && r.approver == "timeout", "{r:?}");
        human
            .sees(mark, |s| {
                s.contains("ap-000004: already decided: no approver answered within 1 s")
            })
            .await;

        // End of input (^D on an empty line) denies.
        let mark = human.mark();
        let fifth = ask(&b, tool("s1", &["git", "clean", "-fdx"]), long);
        human
            .sees(mark, |s| s.contains("ap-000005") && s.contains(PROMPT))
            .await;
        human.types("\x04");
        let r = fifth.await.unwrap();
        assert!(
            !r.approved && r.comment == "end of input on the terminal",
            "{r:?}"
        );

        human
            .sees(mark, |s| {
                s.contains("ap-000005 (git clean -fdx): denied by terminal (")
            })
            .await;

        // Stopped: later asks are not shown (and nothing more is written).
        channel.stop();
        let mark = human.mark();
        let sixth = ask(
            &b,
            tool("s1", &["git", "status"]),
            Duration::from_millis(200),
        );
        assert!(!sixth.await.unwrap().approved);
        assert_eq!(human.since(mark), "");
    }

    #[tokio::test]
    async fn an_ask_decided_before_the_terminal_gets_to_it_is_reported_not_shown() {
        let b = ApprovalBroker::new(Duration::from_secs(30));
        let mut human = Human::new();
        let _channel = spawn_terminal_approver(Arc::clone(&b), &human.path).unwrap();
        let first = ask(&b, tool("s1", &["git", "push"]), Duration::from_secs(30));
        human.sees(0, |s| s.contains(PROMPT)).await;
        // Queued behind the first, and timed out before its turn.
        let second = ask(
            &b,
            tool("s2", &["git", "push", "--tags"]),
            Duration::from_secs(1),
        );
        let r = second.await.unwrap();
        assert!(!r.approved && r.approver == "timeout", "{r:?}");
        let mark = human.mark();
        human.types("o\n");
        assert!(first.await.unwrap().approved);
        let text = human
            .sees(mark, |s| {
                s.contains("ap-000002: already decided: no approver answered within 1 s")
            })
            .await;
        assert!(!text.contains(PROMPT), "{text}");
    }

    #[test]
    fn a_terminal_that_cannot_be_opened_is_an_error() {
        let b = ApprovalBroker::new(Duration::from_secs(1));
        let err = spawn_terminal_approver(b, Path::new("/nonexistent/tty")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    /// The sandboxed command owns stdout and stderr: the channels write to neither
    /// (the terminal channel writes only to its terminal; hooks' stderr is theirs).
    #[test]
    fn the_channels_never_write_to_stdout_or_stderr() {
        let src = include_str!("approver_channels.rs");
        let code = src.split("#[cfg(test)]").next().unwrap();
        for banned in [
            "print!",
            "println!",
            "eprint",
            "io::stdout",
            "io::stderr",
            "dbg!",
        ] {
            assert!(!code.contains(banned), "{banned} in the channel code");
        }
    }

    fn hook(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Runs one ask through a channel running `body`.
    async fn decide_with(body: &str, timeout: Duration) -> (Resolution, Pending, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let prog = hook(dir.path(), "hook", body);
        let b = ApprovalBroker::new(Duration::from_secs(30));
        let _channel = spawn_command_approver(Arc::clone(&b), prog.clone());
        let argv = ["git", "push", "origin", "a b", "it's", "\u{202e}x\n"];
        let r = b.ask(tool("s1", &argv), Some(timeout)).await;
        let decided = b.history(None).pop().unwrap();
        assert_eq!(decided.resolution, r);
        // Keep the directory for the caller's checks.
        let kept = dir.keep();
        (r, decided.pending, kept.join("hook"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hook_answers_with_the_ask_as_json_on_stdin() {
        let (r, p, prog) = decide_with(
            r#"cat > "$0.stdin"
echo '{"answer": "session", "approver": "release-bot", "comment": "tagged"}'"#,
            Duration::from_secs(20),
        )
        .await;
        assert!(r.approved && r.scope == Some(Scope::Session), "{r:?}");
        assert_eq!(
            r.approver,
            format!("release-bot via approver-cmd {}", prog.display())
        );
        assert_eq!(r.comment, "tagged");
        let got: serde_json::Value =
            serde_json::from_slice(&std::fs::read(prog.with_extension("stdin")).unwrap()).unwrap();
        assert_eq!(got, serde_json::to_value(&p).unwrap());
        assert_eq!(
            got["action"]["argv"],
            serde_json::json!(["git", "push", "origin", "a b", "it's", "\u{202e}x\n"])
        );
        assert_eq!(got["digest"], p.action.digest());
        assert_eq!(got["action"]["kind"], "tool");
        std::fs::remove_dir_all(prog.parent().unwrap()).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hook_that_fails_or_says_anything_else_denies_and_says_why() {
        let cases = [
            ("echo '{\"answer\":\"once\"}'; exit 1", "exit status: 1"),
            ("echo yes please", "not a JSON object"),
            ("echo '[\"once\"]'", "not a JSON object"),
            (
                "echo '{\"answer\":\"once\",\"ttl\":5}'",
                "unknown field `ttl`",
            ),
            ("echo '{\"answer\":\"always\"}'", "unknown variant `always`"),
            (
                "echo '{\"answer\":\"once\",\"answer\":\"once\"}'",
                "duplicate field `answer`",
            ),
            ("echo '{\"answer\":\"once\"}{}'", "trailing characters"),
            ("echo '{}'", "missing field `answer`"),
            ("head -c 70000 /dev/zero", "more than 64 KiB"),
            ("printf '\\377'", "not UTF-8"),
            (
                "echo '{\"answer\":\"deny\",\"comment\":\"not now\"}'",
                "not now",
            ),
        ];
        for (body, why) in cases {
            let (r, _, prog) = decide_with(body, Duration::from_secs(20)).await;
            assert!(!r.approved, "{body}: {r:?}");
            assert!(r.comment.contains(why), "{body}: {r:?}");
            assert_eq!(
                r.approver,
                format!("approver-cmd {}", prog.display()),
                "{body}"
            );
            std::fs::remove_dir_all(prog.parent().unwrap()).unwrap();
        }
        let missing = tempfile::tempdir().unwrap().path().join("gone");
        let b = ApprovalBroker::new(Duration::from_secs(30));
        let _channel = spawn_command_approver(Arc::clone(&b), missing);
        let r = b
            .ask(tool("s1", &["git", "push"]), Some(Duration::from_secs(20)))
            .await;
        assert!(
            !r.approved && r.comment.contains("could not be started"),
            "{r:?}"
        );
    }

    fn gone(pid: i32) -> bool {
        // A zombie is dead too: only its parent's wait is missing.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    async fn until_gone(pid_file: &Path) {
        let pid: i32 = std::fs::read_to_string(pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let start = Instant::now();
        while !gone(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the hook's child {pid} still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hook_past_the_deadline_is_killed_with_its_process_group_and_denies() {
        let started = Instant::now();
        let (r, _, prog) = decide_with(
            r#"sleep 30 & echo $! > "$0.pid"; wait"#,
            Duration::from_secs(3),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(8));
        assert!(!r.approved, "{r:?}");
        // The hook's own denial, not the broker's timeout: it says what happened.
        assert_eq!(r.approver, format!("approver-cmd {}", prog.display()));
        assert!(
            r.comment.contains("no answer before the ask's deadline")
                && r.comment.contains("killed"),
            "{r:?}"
        );
        until_gone(&prog.with_extension("pid")).await;
        std::fs::remove_dir_all(prog.parent().unwrap()).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hook_whose_ask_is_decided_elsewhere_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let prog = hook(dir.path(), "hook", r#"sleep 30 & echo $! > "$0.pid"; wait"#);
        let b = ApprovalBroker::new(Duration::from_secs(30));
        let _channel = spawn_command_approver(Arc::clone(&b), prog.clone());
        let asked = ask(&b, tool("s1", &["git", "push"]), Duration::from_secs(30));
        let pid_file = prog.with_extension("pid");
        let start = Instant::now();
        while std::fs::read_to_string(&pid_file).map_or(true, |s| !s.ends_with('\n')) {
            assert!(start.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        b.end_session("s1");
        assert_eq!(asked.await.unwrap().approver, "session ended");
        until_gone(&pid_file).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hooks_run_concurrently_but_at_most_sixteen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let running = dir.path().join("running");
        std::fs::create_dir(&running).unwrap();
        let prog = hook(
            dir.path(),
            "hook",
            &format!(
                r#"touch "{r}/$$"; sleep 1; rm "{r}/$$"; echo '{{"answer":"once"}}'"#,
                r = running.display()
            ),
        );
        let b = ApprovalBroker::new(Duration::from_secs(60));
        let _channel = spawn_command_approver(Arc::clone(&b), prog);
        let started = Instant::now();
        let asks: Vec<_> = (0..24)
            .map(|i| {
                ask(
                    &b,
                    tool("s1", &["echo", &i.to_string()]),
                    Duration::from_secs(60),
                )
            })
            .collect();
        let watch = {
            let running = running.clone();
            tokio::spawn(async move {
                let mut most = 0;
                for _ in 0..150 {
                    most = most.max(std::fs::read_dir(&running).unwrap().count());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                most
            })
        };
        for a in asks {
            let r = a.await.unwrap();
            assert!(r.approved, "{r:?}");
        }
        // One after the other would take 24 s.
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "{:?}",
            started.elapsed()
        );
        let most = watch.await.unwrap();
        assert!((2..=MAX_CONCURRENT_HOOKS).contains(&most), "{most} at once");
    }

    /// More asks than the event buffer holds arrive before the channel reads any: its
    /// receiver lags, and it still answers every one.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lagging_command_channel_loses_no_ask() {
        let dir = tempfile::tempdir().unwrap();
        let prog = hook(dir.path(), "hook", r#"echo '{"answer":"once"}'"#);
        let b = ApprovalBroker::new(Duration::from_secs(120));
        // Past the event buffer: more than the default cap on waiting asks.
        b.set_max_waiting(2000);
        let _channel = spawn_command_approver(Arc::clone(&b), prog);
        let mut probe = b.subscribe();
        // On this single thread nothing runs until the test awaits: all the asks post
        // their events before the channel's task gets to read them.
        let mut asks = JoinSet::new();
        for i in 0..1100u32 {
            let b = Arc::clone(&b);
            asks.spawn(async move { b.ask(tool("s1", &["echo", &i.to_string()]), None).await });
        }
        let mut approved = 0;
        while let Some(r) = asks.join_next().await {
            assert!(r.unwrap().approved);
            approved += 1;
        }
        assert_eq!(approved, 1100);
        assert!(matches!(
            probe.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
    }
}
