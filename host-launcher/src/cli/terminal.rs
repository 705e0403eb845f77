//! The user's terminal while a sandboxed command has it: raw mode (restored on every
//! way out), its size, and its input read only while no approval prompt is asking on
//! the same terminal.

use airlock_launcher::launcher::WindowSize;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether stdin and stdout are both terminals: then the command gets a terminal of
/// its own in the sandbox, relayed to this one.
pub fn both_are_terminals() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// The size of the terminal on stdout, if it has one.
pub fn window_size() -> Option<WindowSize> {
    let mut ws = empty_winsize();
    // SAFETY: TIOCGWINSZ writes one `winsize` into the live struct we pass.
    let rc = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(WindowSize {
        rows: u32::from(ws.ws_row),
        cols: u32::from(ws.ws_col),
    })
}

fn empty_winsize() -> libc::winsize {
    libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// `TERM` for the command, when ours is a plain terminal name (it picks the escape
/// sequences the command writes; nothing else of our environment goes in).
pub fn term_for_the_command() -> Option<(String, String)> {
    let term = std::env::var("TERM").ok()?;
    let plain = !term.is_empty()
        && term.len() <= 64
        && term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    plain.then(|| ("TERM".to_string(), term))
}

pub use airlock_launcher::host_terminal::RawMode;

/// One read of stdin: bytes, or its end.
pub enum Input {
    /// What was read.
    Bytes(Vec<u8>),
    /// End of input (or it could not be read any more).
    End,
}

/// Reads stdin on a thread of its own into a bounded channel (the command's pace
/// holds it back), only while `open`: a terminal approval prompt reads the same
/// terminal, and a key meant for it must not go to the command (nor one meant for the
/// command answer it).
pub fn read_stdin_while(open: Arc<AtomicBool>) -> tokio::sync::mpsc::Receiver<Input> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let spawned = std::thread::Builder::new()
        .name("airlock-stdin".into())
        .spawn(move || {
            use airlock_launcher::host_terminal::StdinReader;
            // Fails closed: a terminal that cannot be reopened is the command's end of
            // input, not a read that could take a prompt's answer.
            let Ok(stdin) = StdinReader::open() else {
                let _ = tx.blocking_send(Input::End);
                return;
            };
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                if !open.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
                // A timeout so the gate is looked at again (and a closed channel noticed).
                if !stdin.wait(std::time::Duration::from_millis(100)) {
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
                if !open.load(Ordering::SeqCst) {
                    continue;
                }
                let Some(n) = stdin.read_unless_prompt_shown(&mut buf) else {
                    continue;
                };
                let input = match n {
                    n if n > 0 => Input::Bytes(buf[..n as usize].to_vec()),
                    n if n < 0 && last_errno() == libc::EINTR => continue,
                    // EAGAIN: another reader took what poll saw.
                    n if n < 0 && last_errno() == libc::EAGAIN => continue,
                    _ => Input::End,
                };
                let end = matches!(input, Input::End);
                if tx.blocking_send(input).is_err() || end {
                    return;
                }
            }
        });
    if spawned.is_err() {
        // No reader: the command sees its input end at once rather than wait forever.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let _ = tx.try_send(Input::End);
        return rx;
    }
    rx
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
