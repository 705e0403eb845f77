//! `airlock ssh-entry`: what an OpenSSH forced command (`ForceCommand`, or
//! `command="…"` in `authorized_keys`) needs to turn every SSH login into a fresh
//! Airlock session running the plan's entrypoint.
//!
//! - [`check_login`] refuses to start when the login carries what the sshd options
//!   should have stopped and the forced command can see: a forwarded agent
//!   (`SSH_AUTH_SOCK`), X11 forwarding (`DISPLAY`), or no sshd at all (`SSH_CONNECTION`
//!   unset). Port forwarding, `-W` and tunnels never reach the forced command: only
//!   sshd's own options (`restrict`, `DisableForwarding yes`, …) stop them.
//! - [`original_command`] decides what becomes of `SSH_ORIGINAL_COMMAND`, the command
//!   the client asked for: refused unless the key's line allows it as an argument, and
//!   then one argv element appended to the entrypoint (never split, never given to a
//!   shell), capped in length and free of control characters, which the policy decides
//!   with the rest of the command.
//! - [`watch_closed`] notices the client going away: sshd closes the pipes of a
//!   session without a tty (and sends no signal), so a command that is only waiting
//!   would never learn of it otherwise.

use std::ffi::OsStr;
use std::os::fd::RawFd;

/// Longest `SSH_ORIGINAL_COMMAND` passed on as an argument, in bytes.
pub const MAX_ORIGINAL_COMMAND_BYTES: usize = 4096;

/// How much of a refused command the refusal quotes (characters, escaped).
const QUOTED_CHARS: usize = 80;

/// Why `ssh-entry` would not start a session; nothing ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryRefusal {
    /// Not started by sshd (and not allowed to run without it).
    #[error("not started by sshd (SSH_CONNECTION is not set): `airlock ssh-entry` is an OpenSSH forced command (ForceCommand or command=\"…\" in authorized_keys); --allow-without-ssh runs it by hand for testing")]
    NotUnderSshd,
    /// `SSH_AUTH_SOCK` is set: sshd forwarded the client's agent.
    #[error("agent forwarding reached this login (SSH_AUTH_SOCK is set): sshd must refuse it (`restrict` on the key; `DisableForwarding yes` or `AllowAgentForwarding no` in sshd_config); no session was started")]
    AgentForwarded,
    /// `DISPLAY` is set: sshd forwarded X11.
    #[error("X11 forwarding reached this login (DISPLAY is set): sshd must refuse it (`restrict` on the key; `DisableForwarding yes` or `X11Forwarding no` in sshd_config); no session was started")]
    X11Forwarded,
    /// The client asked for a command and this key's entrypoint takes none.
    #[error(
        "this login runs a fixed entrypoint and takes no command; refused `{shown}`: nothing ran"
    )]
    CommandNotAccepted {
        /// The command, escaped and cut short.
        shown: String,
    },
    /// The client's command may be an argument, but this one is not acceptable.
    #[error("the requested command {why}; refused: nothing ran")]
    CommandRefused {
        /// What is wrong with it.
        why: String,
    },
}

/// What is known of the login that started `ssh-entry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshLogin {
    /// `SSH_CONNECTION`: client address and port, server address and port (`None` when
    /// allowed to run without sshd).
    pub connection: Option<String>,
    /// The account logged in to (`USER`, else `LOGNAME`).
    pub user: Option<String>,
    /// `SSH_TTY`: the login has a pseudo-terminal.
    pub tty: Option<String>,
}

impl SshLogin {
    /// Who asked for the session, for the audit log's records of its decisions:
    /// `ssh:USER@CLIENT_ADDRESS` (what sshd reported; the key itself is the admin's
    /// mapping, named by the policy and plan the line gives).
    pub fn caller(&self) -> String {
        let user = self.user.as_deref().unwrap_or("?");
        match self
            .connection
            .as_deref()
            .and_then(|c| c.split_whitespace().next())
        {
            Some(client) => format!("ssh:{user}@{client}"),
            None => format!("ssh:{user}@local"),
        }
    }
}

/// Checks the environment sshd gave the forced command (`env` looks a variable up):
/// refused when agent or X11 forwarding got through, or when there is no sshd and
/// `allow_without_ssh` is not given. A tty (`SSH_TTY`) is fine: the entrypoint runs
/// without one either way.
pub fn check_login(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    allow_without_ssh: bool,
) -> Result<SshLogin, EntryRefusal> {
    let text = |name: &str| env(name).map(|v| v.to_string_lossy().into_owned());
    if env("SSH_AUTH_SOCK").is_some() {
        return Err(EntryRefusal::AgentForwarded);
    }
    if env("DISPLAY").is_some() {
        return Err(EntryRefusal::X11Forwarded);
    }
    let connection = text("SSH_CONNECTION").filter(|c| !c.trim().is_empty());
    if connection.is_none() && !allow_without_ssh {
        return Err(EntryRefusal::NotUnderSshd);
    }
    Ok(SshLogin {
        connection,
        user: text("USER").or_else(|| text("LOGNAME")),
        tty: text("SSH_TTY"),
    })
}

/// What becomes of `SSH_ORIGINAL_COMMAND` (`raw`; absent or empty: the client asked
/// for no command). Without `as_argument` any command is refused. With it, the command
/// is one argument for the entrypoint, exactly as sent, if it is UTF-8, at most
/// [`MAX_ORIGINAL_COMMAND_BYTES`] long, and holds no control character (C0, DEL, C1)
/// and no character that hides or reorders text (bidirectional controls, zero-width
/// characters, line and paragraph separators, byte-order mark): it will be shown to
/// approvers and written to the audit log.
pub fn original_command(
    raw: Option<&OsStr>,
    as_argument: bool,
) -> Result<Option<String>, EntryRefusal> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    if !as_argument {
        return Err(EntryRefusal::CommandNotAccepted {
            shown: quoted(&raw.to_string_lossy()),
        });
    }
    let refused = |why: String| Err(EntryRefusal::CommandRefused { why });
    let Some(text) = raw.to_str() else {
        return refused("is not UTF-8".into());
    };
    if text.len() > MAX_ORIGINAL_COMMAND_BYTES {
        return refused(format!(
            "is {} bytes long, more than the {MAX_ORIGINAL_COMMAND_BYTES} an argument may be",
            text.len()
        ));
    }
    if let Some((at, c)) = text.char_indices().find(|&(_, c)| hidden(c)) {
        return refused(format!(
            "holds the control character U+{:04X} at byte {at}",
            c as u32
        ));
    }
    Ok(Some(text.to_string()))
}

/// A character that is not shown as itself: controls, and those that hide or reorder
/// the text around them.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
        )
}

/// `text` cut to [`QUOTED_CHARS`] characters, every control escaped: safe to print on
/// the client's terminal.
fn quoted(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(QUOTED_CHARS)
        .map(|c| {
            if hidden(c) || c == '\\' || c == '`' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    if text.chars().count() > QUOTED_CHARS {
        out.push('…');
    }
    out
}

/// Watches `fds` (this process's stdout and stderr, `[1, 2]`, those that are open) on a
/// thread of its own and calls `on_closed` with the descriptor once one of them is
/// closed at the other end — a pipe whose reader is gone, a terminal hung up, a socket
/// shut down: how a session without a tty learns that sshd's side (the client) went
/// away. Never called while they stay open; a descriptor on a file or `/dev/null` never
/// closes.
pub fn watch_closed(
    fds: &[RawFd],
    on_closed: impl FnOnce(RawFd) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // SAFETY: F_GETFD on a descriptor number only reads its flags.
    let open = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    let mut fds: Vec<libc::pollfd> = fds
        .iter()
        .copied()
        .filter(|&fd| open(fd))
        .map(|fd| libc::pollfd {
            fd,
            // No events asked for: poll reports only POLLERR, POLLHUP and POLLNVAL.
            events: 0,
            revents: 0,
        })
        .collect();
    std::thread::Builder::new()
        .name("airlock-ssh-hangup".into())
        .spawn(move || {
            if fds.is_empty() {
                return;
            }
            loop {
                // SAFETY: `fds` is a valid array of its length for the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
                if n < 0 {
                    if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    return;
                }
                if let Some(p) = fds.iter().find(|p| p.revents != 0) {
                    on_closed(p.fd);
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStrExt;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    const SSHD: (&str, &str) = ("SSH_CONNECTION", "10.0.0.7 51000 10.0.0.1 22");

    #[test]
    fn a_login_through_sshd_without_forwarding_is_accepted() {
        let login = check_login(
            env(&[SSHD, ("USER", "agent"), ("SSH_TTY", "/dev/pts/3")]),
            false,
        )
        .unwrap();
        assert_eq!(login.caller(), "ssh:agent@10.0.0.7");
        assert_eq!(login.tty.as_deref(), Some("/dev/pts/3"));
    }

    #[test]
    fn forwarding_that_reached_the_login_or_no_sshd_is_refused() {
        let agent = env(&[SSHD, ("SSH_AUTH_SOCK", "/tmp/ssh-x/agent.1")]);
        assert_eq!(check_login(agent, false), Err(EntryRefusal::AgentForwarded));
        // Even when run by hand: the check is the same.
        let agent = env(&[("SSH_AUTH_SOCK", "")]);
        assert_eq!(check_login(agent, true), Err(EntryRefusal::AgentForwarded));
        let x11 = env(&[SSHD, ("DISPLAY", "localhost:10.0")]);
        assert_eq!(check_login(x11, false), Err(EntryRefusal::X11Forwarded));
        assert_eq!(
            check_login(env(&[("USER", "a")]), false),
            Err(EntryRefusal::NotUnderSshd)
        );
        assert_eq!(
            check_login(env(&[("SSH_CONNECTION", " ")]), false),
            Err(EntryRefusal::NotUnderSshd)
        );
        let by_hand = check_login(env(&[("LOGNAME", "me")]), true).unwrap();
        assert_eq!(by_hand.caller(), "ssh:me@local");
    }

    #[test]
    fn no_original_command_is_no_argument() {
        assert_eq!(original_command(None, false), Ok(None));
        assert_eq!(original_command(Some(OsStr::new("")), false), Ok(None));
        assert_eq!(original_command(Some(OsStr::new("")), true), Ok(None));
    }

    #[test]
    fn an_original_command_is_refused_unless_the_key_takes_it_as_one_argument() {
        let cmd = OsStr::new("cat /etc/shadow; rm -rf / `x` $(y)");
        let refused = original_command(Some(cmd), false).unwrap_err();
        assert!(matches!(refused, EntryRefusal::CommandNotAccepted { .. }));
        // Quoted as text, backquotes escaped.
        assert!(
            refused
                .to_string()
                .contains("cat /etc/shadow; rm -rf / \\u{60}x\\u{60} $(y)"),
            "{refused}"
        );
        assert_eq!(
            original_command(Some(cmd), true),
            Ok(Some(cmd.to_str().unwrap().to_string()))
        );
    }

    #[test]
    fn an_original_command_that_is_too_long_not_utf8_or_holds_controls_is_refused() {
        let long = "x".repeat(MAX_ORIGINAL_COMMAND_BYTES + 1);
        let e = original_command(Some(OsStr::new(&long)), true).unwrap_err();
        assert!(e.to_string().contains("4097 bytes long"), "{e}");
        let exact = "x".repeat(MAX_ORIGINAL_COMMAND_BYTES);
        assert_eq!(
            original_command(Some(OsStr::new(&exact)), true),
            Ok(Some(exact))
        );
        let e = original_command(Some(OsStr::from_bytes(b"ok\xff")), true).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        for (text, code) in [
            ("a\nb", "U+000A"),
            ("a\tb", "U+0009"),
            ("\u{1b}[2J", "U+001B"),
            ("a\u{7f}", "U+007F"),
            ("a\u{85}", "U+0085"),
            ("abc\u{202e}cba", "U+202E"),
            ("zero\u{200b}width", "U+200B"),
            ("\u{feff}bom", "U+FEFF"),
        ] {
            let e = original_command(Some(OsStr::new(text)), true).unwrap_err();
            assert!(e.to_string().contains(code), "{text:?}: {e}");
        }
        // Quoting and other scripts are text like any other.
        for ok in ["fix \"the parser\"", "ünïcödé 日本", "a'b"] {
            assert_eq!(
                original_command(Some(OsStr::new(ok)), true),
                Ok(Some(ok.to_string()))
            );
        }
    }

    #[test]
    fn a_refused_command_is_quoted_short_and_without_controls() {
        let hostile = format!("\u{1b}]0;pwned\u{7}{}", "y".repeat(200));
        let e = original_command(Some(OsStr::new(&hostile)), false).unwrap_err();
        let shown = e.to_string();
        assert!(!shown.chars().any(hidden), "{shown:?}");
        assert!(shown.contains("\\u{1b}]0;pwned\\u{7}"), "{shown}");
        assert!(shown.contains('…'), "{shown}");
        assert!(shown.len() < 300, "{shown}");
    }

    #[test]
    fn a_pipe_whose_reader_went_away_is_noticed_and_an_open_one_is_not() {
        use std::os::fd::AsRawFd;
        let pipe = || {
            let mut fds = [0; 2];
            // SAFETY: pipe2 fills the array with two new descriptors, which we own.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            use std::os::fd::FromRawFd;
            // SAFETY: just made, owned by nobody else.
            unsafe {
                (
                    std::fs::File::from_raw_fd(fds[0]),
                    std::fs::File::from_raw_fd(fds[1]),
                )
            }
        };
        let (kept_r, kept_w) = pipe();
        let (gone_r, gone_w) = pipe();
        let (tx, rx) = std::sync::mpsc::channel();
        watch_closed(&[kept_w.as_raw_fd(), gone_w.as_raw_fd()], move |fd| {
            let _ = tx.send(fd);
        })
        .unwrap();
        let quiet = std::time::Duration::from_millis(300);
        assert!(
            rx.recv_timeout(quiet).is_err(),
            "reported with both readers"
        );
        drop(gone_r);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)),
            Ok(gone_w.as_raw_fd())
        );
        drop((kept_r, kept_w, gone_w));
    }
}
