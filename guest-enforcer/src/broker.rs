//! The exec broker: the approval path for tools.
//!
//! The agent's PATH holds shims (one multi-call binary, see [`crate::shim`]). A shim
//! sends its argv, environment, working directory (as an fd) and stdio (as fds) to the
//! broker over a Unix SOCK_SEQPACKET socket. The broker, outside the agent's Landlock
//! domain, decides the invocation with the manifest's [`ToolGrant`] (the same matcher
//! the launcher's policy uses) and:
//! - **allow**: runs the real binary from an fd opened and checked when the manifest was
//!   applied (no PATH lookup at exec time), with injection variables stripped and the
//!   tool's hardening configuration, under the per-tool sandbox;
//! - **deny**: writes one line to the shim's stderr naming the rule and what to ask for,
//!   and the shim exits 126;
//! - **ask**: asks through an [`Asker`]; until the host channel exists the only real one
//!   is [`NoApprovalChannel`], which answers deny.
//!
//! Exit status and signals pass through; TTYs pass through because the tool gets the
//! shim's own stdio fds. If the shim goes away (killed), the tool is killed.
//!
//! Landlock, not the broker, is what stops the agent from running `/usr/bin/git` itself:
//! the broker is only the path by which a granted invocation gets run.

use crate::pidfd::PidFd;
use airlock_proto::tool_invocation::{program_name, Invocation};
use airlock_proto::tool_rules::ToolGrant;
use airlock_proto::verdict::Verdict;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// Largest request a shim may send (argv + env), bytes.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Exit status of a refused invocation (as shells use for "cannot execute").
pub const EXIT_REFUSED: i32 = 126;

/// The first (and only request) message of a shim. Four fds ride along, in order:
/// working directory, stdin, stdout, stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Full argv; `argv[0]`'s basename names the tool.
    pub argv: Vec<String>,
    /// The shim's environment (filtered by the broker).
    pub env: Vec<(String, String)>,
}

/// Messages a shim sends after its request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ShimMessage {
    /// The shim received this signal; deliver it to the tool.
    Signal {
        /// Signal number.
        signal: i32,
    },
}

/// The broker's one reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrokerReply {
    /// The tool exited with this code.
    Exited {
        /// Exit code.
        code: i32,
    },
    /// The tool was killed by this signal.
    Signaled {
        /// Signal number.
        signal: i32,
    },
    /// The invocation was refused (the message was already written to the shim's stderr).
    Refused {
        /// Always [`EXIT_REFUSED`].
        code: i32,
    },
}

/// A run-time ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskRequest {
    /// The granted program argv[0] resolved to.
    pub program: String,
    /// The full argv.
    pub argv: Vec<String>,
    /// The working directory, as the sandbox sees it.
    pub cwd: String,
    /// Lower-case hex SHA-256 of the binary that would run (read through the fd that
    /// runs it), empty when it could not be read.
    pub binary_sha256: String,
    /// Rule that said ask.
    pub rule_id: String,
    /// Its reason.
    pub reason: String,
    /// Where the call reaches beyond its argv, as its tool's configuration says: for
    /// `git push`, the entries that pick its destination (see
    /// [`crate::git_hardening::preflight`]). Shown to the person; the approval is bound
    /// to it.
    pub reaches: Vec<String>,
}

/// A tool invocation the manifest's rules decided without asking, as reported to the
/// host's audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionReport {
    /// The invocation (its `rule_id` and `reason` are the deciding rule's).
    pub invocation: AskRequest,
    /// Allow or deny.
    pub verdict: Verdict,
}

/// Decides asks, and hears the decisions taken without asking. Must answer; no answer
/// in time is a deny.
pub trait Asker: Send + Sync {
    /// Allow or deny, with why.
    fn ask(&self, request: &AskRequest) -> (Verdict, String);

    /// Records a decision taken without asking, before it takes effect; an error means
    /// an allowed invocation must not run. Without a host (the enforcer run by hand)
    /// there is nothing to record to.
    fn record(&self, report: &DecisionReport) -> Result<(), String> {
        let _ = report;
        Ok(())
    }
}

/// The asker used until the host approval channel exists: every ask is denied.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoApprovalChannel;

impl Asker for NoApprovalChannel {
    fn ask(&self, _: &AskRequest) -> (Verdict, String) {
        (Verdict::Deny, "no approval channel".into())
    }
}

/// A granted tool: its rules and the binary, opened when the manifest was applied.
#[derive(Debug)]
pub struct GrantedTool {
    /// Run-time rules.
    pub grant: ToolGrant,
    binary: File,
    binary_path: PathBuf,
    /// The binary answers to other names: it is a known multi-call binary (busybox,
    /// toybox, uutils' `coreutils`) the tool's name links to, or it has other hard
    /// links (`unzip`/`zipinfo`, `bzip2`/`bzcat`). Such a binary picks what it does by
    /// the name it runs as, and its profile lets it execute its own inode: under
    /// another of its names it could be a shell.
    other_names: Option<PathBuf>,
    /// SHA-256 of `binary`, computed at the first ask (most tools are never asked for,
    /// and hashing every binary at apply time would slow every boot).
    sha256: std::sync::OnceLock<String>,
}

/// Why a tool cannot be granted (the manifest names something that cannot run).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The binary for a granted tool is missing or not an executable file.
    #[error("tool `{program}`: {path}: {problem}")]
    Binary {
        /// Tool.
        program: String,
        /// Where it was looked for.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Socket setup failed.
    #[error("broker socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

impl GrantedTool {
    /// Where the binary was found when the manifest was applied.
    pub fn binary_path(&self) -> &Path {
        &self.binary_path
    }

    /// Opens the tool's binary now; later execs use this fd, never the path.
    pub fn open(grant: ToolGrant, binary_path: &Path) -> Result<GrantedTool, BrokerError> {
        let bad = |problem: String| BrokerError::Binary {
            program: grant.program.clone(),
            path: binary_path.to_path_buf(),
            problem,
        };
        let binary = File::open(binary_path).map_err(|e| bad(e.to_string()))?;
        let meta = binary.metadata().map_err(|e| bad(e.to_string()))?;
        use std::os::unix::fs::PermissionsExt;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(bad("not executable".into()));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(bad(
                "writable by group or others; refusing to run it for the agent".into(),
            ));
        }
        use std::os::unix::fs::MetadataExt;
        let canonical = std::fs::canonicalize(binary_path).map_err(|e| bad(e.to_string()))?;
        let multi_call_name = canonical
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| {
                n != grant.program
                    && (n.starts_with("busybox") || n.starts_with("toybox") || n == "coreutils")
            });
        let other_names = (multi_call_name || meta.nlink() > 1).then_some(canonical);
        Ok(GrantedTool {
            grant,
            binary,
            binary_path: binary_path.to_path_buf(),
            other_names,
            sha256: std::sync::OnceLock::new(),
        })
    }

    /// The binary behind the tool's name when it answers to other names too: such a
    /// tool runs under the exec supervisor, which lets it start only brokered calls
    /// and what its profile names.
    pub fn other_names(&self) -> Option<&Path> {
        self.other_names.as_deref()
    }

    /// Lower-case hex SHA-256 of the binary this tool runs, read through the fd that
    /// runs it (positioned reads: the fd's offset is not shared state anyone relies on,
    /// but nothing moves it either). Empty if it cannot be read.
    pub fn binary_sha256(&self) -> &str {
        self.sha256.get_or_init(|| {
            use sha2::{Digest, Sha256};
            use std::os::unix::fs::FileExt;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            let mut offset = 0u64;
            loop {
                match self.binary.read_at(&mut buf, offset) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        offset += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return String::new(),
                }
            }
            hex::encode(hasher.finalize())
        })
    }
}

/// Prepares the per-tool sandbox in the broker and applies it in the tool's process
/// between fork and exec. Runs once per spawn.
pub trait ToolSandbox: Send + Sync {
    /// Builds what [`PreparedToolSandbox::apply`] needs (may allocate, may fail).
    fn prepare(&self, program: &str) -> io::Result<Box<dyn PreparedToolSandbox>>;

    /// The same, for a call that may run no program after its binary (see
    /// [`crate::no_exec`]): exec is allowed only as `execveat(binary_fd, "",
    /// AT_EMPTY_PATH)`, and the listener for every other attempt goes to `report`.
    fn prepare_running_no_program(
        &self,
        program: &str,
        binary_fd: RawFd,
        report: RawFd,
    ) -> io::Result<Box<dyn PreparedToolSandbox>>;
}

/// A prepared per-tool sandbox.
pub trait PreparedToolSandbox: Send + Sync {
    /// Applies it to the calling thread; must not allocate.
    fn apply(&mut self) -> io::Result<()>;
}

/// No per-tool layers (tests, or when the broker itself already runs confined).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unconfined;

impl ToolSandbox for Unconfined {
    fn prepare(&self, _: &str) -> io::Result<Box<dyn PreparedToolSandbox>> {
        struct Nothing;
        impl PreparedToolSandbox for Nothing {
            fn apply(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        Ok(Box::new(Nothing))
    }

    fn prepare_running_no_program(
        &self,
        _: &str,
        binary_fd: RawFd,
        report: RawFd,
    ) -> io::Result<Box<dyn PreparedToolSandbox>> {
        struct OnlyNoExec(crate::no_exec::NoExecFilter, RawFd);
        impl PreparedToolSandbox for OnlyNoExec {
            fn apply(&mut self) -> io::Result<()> {
                self.0.install_on_current_thread(self.1)
            }
        }
        Ok(Box::new(OnlyNoExec(
            crate::no_exec::NoExecFilter::allowing_only(binary_fd),
            report,
        )))
    }
}

/// The broker.
pub struct Broker {
    tools: HashMap<String, GrantedTool>,
    asker: Arc<dyn Asker>,
    sandbox: Arc<dyn ToolSandbox>,
    /// PATH given to tools (the shim directory, so tools' own children go through shims).
    tool_path: String,
    /// Variables every tool gets from the session, whatever the shim's environment says
    /// (the egress funnel's proxy endpoint).
    tool_environment: Vec<(String, String)>,
    /// How long an ask may wait for an answer before it is a deny.
    ask_timeout: std::time::Duration,
    /// How long a connection may take to send its request.
    request_deadline: std::time::Duration,
    /// Most connections served at once.
    max_connections: usize,
    /// Connections being served now.
    active: Arc<std::sync::atomic::AtomicUsize>,
}

/// Default deadline for an ask.
pub const DEFAULT_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Default time a connection has to send its request: a shim sends it at once, so
/// only a connection that holds a slot without asking for anything waits this long.
pub const DEFAULT_REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
/// Default cap on tool calls served at once (each holds a thread and, once allowed, a
/// running tool). An agent makes connections without processes, so its pids limit does
/// not bound them; this does.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// How long a connection over the cap gets to send the request the refusal answers
/// (on the accepting thread, so every other connection waits this long at most).
const OVER_CAP_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether a variable of the shim's environment reaches the tool. An allowlist: locale,
/// terminal, identity and git authorship pass; everything else is dropped, so no
/// loader, shell-startup, interpreter, pager, editor or git program-selecting variable
/// (`LD_PRELOAD`, `BASH_ENV`, `GLIBC_TUNABLES`, `PYTHONSTARTUP`, `LESSOPEN`,
/// `GIT_SSH_COMMAND`, …) can reach a tool, including ones nobody listed yet.
pub fn passes_to_tools(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TERM",
        "COLORTERM",
        "NO_COLOR",
        "TZ",
        "COLUMNS",
        "LINES",
    ];
    const PREFIXES: &[&str] = &["LC_", "GIT_AUTHOR_", "GIT_COMMITTER_"];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Most configuration the git preflight reads (a larger listing is refused).
const PREFLIGHT_MAX_BYTES: u64 = 1 << 20;
/// How long git may take to list its configuration.
const PREFLIGHT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends one frame (JSON) with optional fds.
pub(crate) fn send_frame(fd: RawFd, value: &impl Serialize, fds: &[RawFd]) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    let cmsgs: &[ControlMessage] = if fds.is_empty() {
        &[]
    } else {
        &[ControlMessage::ScmRights(fds)]
    };
    sendmsg::<UnixAddr>(
        fd,
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// Receives one frame and the fds that came with it (`None` at end of stream).
pub(crate) fn recv_frame(fd: RawFd, max: usize) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; max + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    let (len, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this process
                // for us; nothing else owns them.
                fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, fds, truncated)
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated || len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message over {max} bytes or too many fds"),
        ));
    }
    buf.truncate(len);
    Ok(Some((buf, fds)))
}

impl Broker {
    /// A broker for these tools.
    pub fn new(
        tools: Vec<GrantedTool>,
        asker: Arc<dyn Asker>,
        sandbox: Arc<dyn ToolSandbox>,
        tool_path: &str,
    ) -> Broker {
        Broker {
            tools: tools
                .into_iter()
                .map(|t| (t.grant.program.clone(), t))
                .collect(),
            asker,
            sandbox,
            tool_path: tool_path.to_string(),
            tool_environment: Vec::new(),
            ask_timeout: DEFAULT_ASK_TIMEOUT,
            request_deadline: DEFAULT_REQUEST_DEADLINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            active: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// Sets variables every tool gets from the session (they replace any of the same
    /// name from the shim: the agent cannot point a tool's proxy elsewhere).
    pub fn with_tool_environment(mut self, env: Vec<(String, String)>) -> Broker {
        self.tool_environment = env;
        self
    }

    /// Sets how long a connection has to send its request, and how many connections
    /// are served at once (at least one).
    pub fn with_connection_limits(
        mut self,
        request_deadline: std::time::Duration,
        max_connections: usize,
    ) -> Broker {
        self.request_deadline = request_deadline;
        self.max_connections = max_connections.max(1);
        self
    }

    /// Sets the deadline after which an unanswered ask is denied.
    pub fn with_ask_timeout(mut self, timeout: std::time::Duration) -> Broker {
        self.ask_timeout = timeout;
        self
    }

    /// Asks, enforcing the deadline here rather than trusting the asker to keep it.
    fn ask_with_deadline(&self, request: AskRequest) -> (Verdict, String) {
        let (tx, rx) = std::sync::mpsc::channel();
        let asker = Arc::clone(&self.asker);
        let spawned = std::thread::Builder::new().spawn(move || {
            let _ = tx.send(asker.ask(&request));
        });
        if let Err(e) = spawned {
            return (Verdict::Deny, format!("the ask could not start ({e})"));
        }
        rx.recv_timeout(self.ask_timeout).unwrap_or_else(|_| {
            (
                Verdict::Deny,
                format!("no answer within {} s", self.ask_timeout.as_secs_f64()),
            )
        })
    }

    /// Binds the broker's socket (SOCK_SEQPACKET, mode 0666: the agent's shims connect to
    /// it; every request is decided on its merits) and serves it on a background thread.
    pub fn serve(self: Arc<Self>, path: &Path) -> Result<std::thread::JoinHandle<()>, BrokerError> {
        use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
        let sock_err = |source: io::Error| BrokerError::Socket {
            path: path.to_path_buf(),
            source,
        };
        let _ = std::fs::remove_file(path);
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| sock_err(e.into()))?;
        let addr = UnixAddr::new(path).map_err(|e| sock_err(e.into()))?;
        bind(fd.as_raw_fd(), &addr).map_err(|e| sock_err(e.into()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(sock_err)?;
        listen(&fd, Backlog::new(64).expect("valid backlog")).map_err(|e| sock_err(e.into()))?;
        Ok(std::thread::spawn(move || loop {
            // CLOEXEC: a connection must never leak into a tool the broker starts (it
            // would hand the tool another caller's channel to the broker).
            match nix::sys::socket::accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(conn) => {
                    // SAFETY: accept4 returned a new descriptor that we now own.
                    let conn = unsafe { OwnedFd::from_raw_fd(conn) };
                    let Some(slot) = ConnectionSlot::take(&self.active, self.max_connections)
                    else {
                        self.refuse_unserved(
                            conn,
                            &format!(
                                "the tool broker is already serving {} calls (its cap); retry when one ends",
                                self.max_connections
                            ),
                        );
                        continue;
                    };
                    let me = Arc::clone(&self);
                    // The broker's threads count against the session's process limit
                    // (process mode): when it is spent, the call is refused readably
                    // and the broker goes on serving.
                    let Ok(spare) = conn.try_clone() else {
                        continue;
                    };
                    let spawned = std::thread::Builder::new().spawn(move || {
                        let _slot = slot;
                        me.handle(conn)
                    });
                    match spawned {
                        Ok(_) => drop(spare),
                        Err(e) => self.refuse_unserved(
                            spare,
                            &format!("the tool broker cannot start a thread for this call ({e}): the session's process limit is spent"),
                        ),
                    }
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(_) => return,
            }
        }))
    }

    /// Answers a connection the broker will not serve: one readable line on the shim's
    /// stderr if its request arrives within a short grace, then the refusal.
    fn refuse_unserved(&self, conn: OwnedFd, why: &str) {
        let fd = conn.as_raw_fd();
        if set_receive_deadline(fd, Some(OVER_CAP_GRACE)).is_err() {
            return;
        }
        if let Ok(Some((_, fds))) = recv_frame(fd, MAX_REQUEST_BYTES) {
            if let Some(stderr) = fds.into_iter().nth(3) {
                use std::io::Write;
                let _ = writeln!(File::from(stderr), "airlock: refused: {why}");
            }
        }
        let _ = send_frame(fd, &BrokerReply::Refused { code: EXIT_REFUSED }, &[]);
    }

    /// Handles one shim connection to the end. The request must arrive within the
    /// request deadline; a connection that sends nothing is closed then.
    pub fn handle(&self, conn: OwnedFd) {
        let fd = conn.as_raw_fd();
        if set_receive_deadline(fd, Some(self.request_deadline)).is_err() {
            return;
        }
        let Ok(Some((bytes, fds))) = recv_frame(fd, MAX_REQUEST_BYTES) else {
            return;
        };
        // From here the connection carries the shim's signals for the tool's whole
        // life, however long: no deadline.
        if set_receive_deadline(fd, None).is_err() {
            return;
        }
        // Stdio of the shim, so refusals reach the agent even for malformed requests.
        let stderr = fds.get(3).and_then(|f| f.try_clone().ok()).map(File::from);
        let refuse = |message: &str| {
            if let Some(mut e) = stderr.as_ref() {
                use std::io::Write;
                let _ = writeln!(e, "airlock: {message}");
            }
            let _ = send_frame(fd, &BrokerReply::Refused { code: EXIT_REFUSED }, &[]);
        };
        let request: ExecRequest = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return refuse(&format!("malformed request to the tool broker: {e}")),
        };
        let [cwd, stdin, stdout, stderr_fd]: [OwnedFd; 4] = match fds.try_into() {
            Ok(f) => f,
            Err(v) => {
                let v: Vec<OwnedFd> = v;
                return refuse(&format!(
                    "request carried {} descriptors, expected 4 (cwd, stdin, stdout, stderr)",
                    v.len()
                ));
            }
        };
        let Some(argv0) = request.argv.first() else {
            return refuse("empty argv");
        };
        let program = program_name(argv0).to_string();
        let Some(tool) = self.tools.get(&program) else {
            return refuse(&format!(
                "`{program}` is not a granted tool; ask for it in the plan's `tools`"
            ));
        };
        let mut argv = request.argv.clone();
        argv[0] = program.clone();
        let inv = match Invocation::parse(&argv) {
            Ok(inv) => inv,
            Err(e) => return refuse(&format!("{program}: refused: {e}")),
        };
        let decision = tool.grant.decide(&inv);
        let shown = shell_join(&argv);
        let invocation = |binary_sha256: String| AskRequest {
            program: program.clone(),
            argv: argv.clone(),
            cwd: std::fs::read_link(format!("/proc/self/fd/{}", cwd.as_raw_fd()))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            binary_sha256,
            rule_id: decision.decisive.rule_id.clone(),
            reason: decision.decisive.reason.clone(),
            reaches: Vec::new(),
        };
        // Where an approved call was shown to reach, to hold it to that.
        let mut approved_reaches = None;
        match decision.verdict {
            Verdict::Allow => {
                // On the host's record before it runs: a decision the host disagrees
                // with, or cannot write down, does not take effect.
                let report = DecisionReport {
                    invocation: invocation(tool.binary_sha256().to_string()),
                    verdict: Verdict::Allow,
                };
                if let Err(why) = self.asker.record(&report) {
                    return refuse(&format!(
                        "`{shown}` is allowed by rule `{}` but was not run: {why}",
                        decision.decisive.rule_id
                    ));
                }
            }
            Verdict::Deny => {
                // Refused whatever the record's fate; the denial is still reported.
                let _ = self.asker.record(&DecisionReport {
                    invocation: invocation(String::new()),
                    verdict: Verdict::Deny,
                });
                return refuse(&format!(
                    "denied `{shown}` by rule `{}`: {}",
                    decision.decisive.rule_id, decision.decisive.reason
                ));
            }
            Verdict::Ask => {
                // A call git's hardening refuses is refused before anyone is asked (a
                // person never approves what cannot run); checked again below, after
                // the answer, for what changed while the person read.
                let reaches = match self.git_check(tool, &inv, &request.env, &cwd) {
                    Ok(reaches) => reaches,
                    Err(why) => return refuse(&format!("`{shown}`: {why}")),
                };
                let mut ask = invocation(tool.binary_sha256().to_string());
                ask.reaches = reaches.clone();
                let (verdict, why) = self.ask_with_deadline(ask);
                if verdict != Verdict::Allow {
                    return refuse(&format!(
                        "`{shown}` needs approval (rule `{}`: {}) and was not approved: {why}",
                        decision.decisive.rule_id, decision.decisive.reason
                    ));
                }
                approved_reaches = Some(reaches);
            }
        }
        match self.git_check(tool, &inv, &request.env, &cwd) {
            Err(why) => return refuse(&format!("`{shown}`: {why}")),
            Ok(now) => {
                if let Some(then) = approved_reaches.filter(|then| *then != now) {
                    return refuse(&format!(
                        "`{shown}`: where it goes changed while it waited for approval (approved: {}; now: {}); it did not run, ask again",
                        reaches_shown(&then),
                        reaches_shown(&now)
                    ));
                }
            }
        }
        match self.spawn(
            tool,
            &inv,
            &argv,
            &request.env,
            cwd,
            stdin,
            stdout,
            stderr_fd,
        ) {
            Ok(child) => self.supervise(fd, child),
            Err(e) => refuse(&format!("could not start `{program}`: {e}")),
        }
    }

    /// The command that runs `tool` with `argv` in `cwd` under its sandbox (stdio is
    /// the caller's to set). With `no_exec`, every exec after the tool's binary goes to
    /// a seccomp listener, which the returned socket brings to the broker (see
    /// [`crate::no_exec`]).
    fn tool_command(
        &self,
        tool: &GrantedTool,
        argv: &[String],
        env: &[(String, String)],
        cwd: &OwnedFd,
        no_exec: bool,
    ) -> io::Result<(Command, Option<OwnedFd>)> {
        let mut tool_env: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| passes_to_tools(k))
            .cloned()
            .collect();
        tool_env.push(("PATH".into(), self.tool_path.clone()));
        tool_env.extend(self.tool_environment.iter().cloned());
        if tool.grant.program == "git" {
            tool_env.extend(crate::git_hardening::git_environment(
                &self.refusal_program(),
            ));
        }
        // Exec through /proc/self/fd: the inode opened when the manifest was applied,
        // whatever happened to the path since.
        let binary_fd = tool.binary.as_raw_fd();
        let mut cmd = Command::new(format!("/proc/self/fd/{binary_fd}"));
        cmd.arg0(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(tool_env.iter().cloned());
        let cwd_fd = cwd.as_raw_fd();
        let (mut sandbox, vectors, report) = if no_exec {
            let (ours, theirs) = crate::no_exec::report_pair()?;
            let sandbox = self.sandbox.prepare_running_no_program(
                &tool.grant.program,
                binary_fd,
                theirs.as_raw_fd(),
            )?;
            let vectors = crate::no_exec::ExecVectors::new(argv, &tool_env)?;
            (sandbox, Some((vectors, theirs)), Some(ours))
        } else {
            (self.sandbox.prepare(&tool.grant.program)?, None, None)
        };
        // SAFETY: runs between fork and exec: fchdir, the prepared sandbox's apply and
        // (no-exec calls) execveat of the binary's descriptor, none of which allocate;
        // errors are reported by errno.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fchdir(cwd_fd) != 0 {
                    return Err(io::Error::last_os_error());
                }
                sandbox.apply()?;
                match &vectors {
                    // The one exec the no-exec filter lets through.
                    Some((v, _report)) => Err(crate::no_exec::exec_binary_fd(binary_fd, v)),
                    None => Ok(()),
                }
            });
        }
        Ok((cmd, report))
    }

    /// The program a tool is pointed at where its profile refuses what it would run
    /// (git's editor): the shim binary, which prints [`crate::shim::REFUSAL_ENV`].
    fn refusal_program(&self) -> PathBuf {
        self.shim_dir().join("airlock-shim")
    }

    /// The shim directory (the first entry of the tools' PATH).
    fn shim_dir(&self) -> PathBuf {
        PathBuf::from(self.tool_path.split(':').next().unwrap_or_default())
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        tool: &GrantedTool,
        inv: &Invocation,
        argv: &[String],
        env: &[(String, String)],
        cwd: OwnedFd,
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> io::Result<std::process::Child> {
        // git never runs a program its configuration names: a call that needs no
        // helper runs none; one that does may run exactly its helpers. A binary with
        // other names may start only brokered calls and what its profile names: its
        // own inode, which the profile lets it execute, is every program it has.
        let git = tool.grant.program == "git";
        let multi_call = if git { None } else { tool.other_names() };
        let no_exec = git || multi_call.is_some();
        let may_run_helpers = git && crate::git_hardening::call_may_run_programs(inv);
        let allowed = if may_run_helpers {
            crate::git_hardening::helper_execs(&tool.grant.profile, &self.shim_dir())
        } else if multi_call.is_some() {
            profile_execs(&tool.grant.profile, &self.shim_dir())
        } else {
            vec![]
        };
        let report_to = if no_exec {
            Some(File::from(stderr.try_clone()?))
        } else {
            None
        };
        let (mut cmd, report) = self.tool_command(tool, argv, env, &cwd, no_exec)?;
        cmd.stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let child = cmd.spawn();
        // Our copies of the tool's ends go now: the tool holds its own.
        drop(cmd);
        drop(cwd);
        let child = child.map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}", tool.binary_path.display()))
        })?;
        if let (Some(report), Some(stderr)) = (report, report_to) {
            let refusal = match multi_call {
                Some(binary) => format!(
                    "refused by profile `{}`: `{}` is `{}`, one binary with other names, so it may start only granted tools (through their shims) and what its profile names",
                    tool.grant.profile.name,
                    inv.program,
                    binary.display()
                ),
                None => format!(
                    "refused by profile `{}`: `{} {}` runs no programs{}",
                    tool.grant.profile.name,
                    inv.program,
                    inv.args.first().map(String::as_str).unwrap_or_default(),
                    if may_run_helpers {
                        " but git's own helpers"
                    } else {
                        ""
                    }
                ),
            };
            let explained = vec![(
                self.refusal_program().display().to_string(),
                crate::git_hardening::EDITOR_REFUSAL,
            )];
            let started = crate::no_exec::receive_listener(&report).and_then(|listener| {
                std::thread::Builder::new().spawn(move || {
                    crate::no_exec::supervise_execs_until_exit(
                        listener, stderr, refusal, explained, allowed,
                    )
                })
            });
            if let Err(e) = started {
                // Unreported exec attempts would block the tool forever: stop it.
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(format!(
                    "the exec reporter could not start: {e}"
                )));
            }
        }
        Ok(child)
    }

    /// git's hardening for this call: why it is refused (not a git command, or
    /// configuration the preflight refuses), else where it reaches (a push's
    /// destinations, see [`crate::git_hardening::preflight`]). Empty for other tools.
    fn git_check(
        &self,
        tool: &GrantedTool,
        inv: &Invocation,
        env: &[(String, String)],
        cwd: &OwnedFd,
    ) -> Result<Vec<String>, String> {
        if tool.grant.program != "git" {
            return Ok(Vec::new());
        }
        if let Some(why) = crate::git_hardening::subcommand_refusal(inv, &tool.grant.profile) {
            return Err(why);
        }
        self.git_preflight(tool, inv, env, cwd)
    }

    /// Has git list, under the same sandbox, options and environment as the call, the
    /// configuration the call would read; see [`crate::git_hardening::preflight`].
    fn git_preflight(
        &self,
        tool: &GrantedTool,
        inv: &Invocation,
        env: &[(String, String)],
        cwd: &OwnedFd,
    ) -> Result<Vec<String>, String> {
        let listing = self.git_probe(
            tool,
            inv,
            env,
            cwd,
            &crate::git_hardening::PREFLIGHT_ARGS,
            "list its configuration",
        )?;
        let pushes = inv.args.first().is_some_and(|sub| sub == "push");
        let mut destinations = crate::git_hardening::preflight(&listing, pushes)?;
        if pushes {
            let probe = self.git_probe(
                tool,
                inv,
                env,
                cwd,
                &crate::git_hardening::PUSH_PROBE_ARGS,
                "name its configuration files and the branch checked out",
            )?;
            let probe = crate::git_hardening::PushProbe::parse(&probe)?;
            // A configuration file that is not a regular file (a symlink to a FIFO)
            // can show the check one text and the push another, deterministically.
            for (path, required) in probe.config_files.iter().zip([true, false]) {
                if let Some(why) = not_a_plain_file(cwd, path, required) {
                    return Err(format!(
                        "refused by profile `git`: `{}` {why}; git reads it again when the push runs, so what was checked and shown would not be what runs",
                        path.escape_debug()
                    ));
                }
            }
            // git reads a remote the configuration does not name from these legacy
            // files (a URL and push refspecs): out of the approval's sight.
            for path in &probe.legacy_remote_dirs {
                let held = directory_entries(cwd, path).map_err(|why| {
                    format!("refused by profile `git`: `{}` {why}", path.escape_debug())
                })?;
                if let Some(names) = held {
                    return Err(format!(
                        "refused by profile `git`: `{}` holds git's legacy remote files ({}), which set a remote's URL and push refspecs out of sight of the rules and the approval; remove them, and define remotes with `git remote add`",
                        path.escape_debug(),
                        names.escape_debug()
                    ));
                }
            }
            // The branch checked out picks `branch.<name>.*`: bound with the rest.
            destinations.push(format!("HEAD = {}", probe.checked_out));
        }
        Ok(destinations)
    }

    /// Runs git with the call's global options and `args`, under the same sandbox,
    /// environment and cwd as the call, and returns its output.
    fn git_probe(
        &self,
        tool: &GrantedTool,
        inv: &Invocation,
        env: &[(String, String)],
        cwd: &OwnedFd,
        args: &[&str],
        what: &str,
    ) -> Result<Vec<u8>, String> {
        use std::io::Read;
        let mut argv = vec![inv.program.clone()];
        argv.extend(inv.global_options.iter().cloned());
        argv.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = match self.tool_command(tool, &argv, env, cwd, false) {
            Ok((c, _)) => c,
            Err(e) => return Err(format!("could not have git {what}: {e}")),
        };
        let mut child = match cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return Err(format!("could not have git {what}: {e}")),
        };
        // Both pipes are drained on their own threads (git never blocks writing one
        // while we read the other), and git gets a deadline: a configuration file the
        // agent made a FIFO must not hang the call.
        let keep = |pipe: Option<Box<dyn Read + Send>>, limit: u64| {
            std::thread::Builder::new().spawn(move || {
                let mut kept = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = (&mut pipe).take(limit).read_to_end(&mut kept);
                    let _ = io::copy(&mut pipe, &mut io::sink());
                }
                kept
            })
        };
        let out = keep(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            PREFLIGHT_MAX_BYTES,
        );
        let err = keep(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            4096,
        );
        let status = wait_until(&mut child, std::time::Instant::now() + PREFLIGHT_DEADLINE);
        let output = out.ok().and_then(|t| t.join().ok());
        let errors = err.ok().and_then(|t| t.join().ok()).unwrap_or_default();
        let errors = String::from_utf8_lossy(&errors);
        match (status, output) {
            (None, _) => Err(format!(
                "git did not {what} within {} s (is a configuration file a FIFO?)",
                PREFLIGHT_DEADLINE.as_secs()
            )),
            (_, None) => Err(format!("could not read what git printed to {what}")),
            (Some(_), Some(o)) if o.len() as u64 >= PREFLIGHT_MAX_BYTES => Err(format!(
                "git's answer is over {PREFLIGHT_MAX_BYTES} bytes when asked to {what}; refusing to run git on it"
            )),
            (Some(s), Some(o)) if s.success() => Ok(o),
            (Some(_), Some(_)) => Err(format!(
                "could not have git {what}: {}",
                errors.lines().next().unwrap_or("git failed")
            )),
        }
    }

    /// Waits for the tool while relaying the shim's signals; kills the tool if the shim
    /// disappears. Replies with how the tool ended.
    fn supervise(&self, fd: RawFd, mut child: std::process::Child) {
        // Signal through a pidfd (of our unreaped child): immune to pid reuse once the
        // child is reaped.
        let Ok(pidfd) = PidFd::open(child.id() as libc::pid_t) else {
            let _ = child.kill();
            let _ = child.wait();
            let _ = send_frame(fd, &BrokerReply::Exited { code: 125 }, &[]);
            return;
        };
        let signal_child = move |signal: i32| {
            let _ = pidfd.send_signal(signal);
        };
        // Relay thread: delivers the shim's signals until the connection ends; if the
        // shim disappears (killed), the tool must not outlive it.
        let relay = std::thread::Builder::new().spawn(move || loop {
            match recv_frame(fd, 4096) {
                Ok(Some((bytes, _))) => {
                    if let Ok(ShimMessage::Signal { signal }) = serde_json::from_slice(&bytes) {
                        signal_child(signal);
                    }
                }
                Ok(None) | Err(_) => {
                    signal_child(libc::SIGKILL);
                    return;
                }
            }
        });
        let Ok(relay) = relay else {
            // No thread to carry the shim's signals: the tool must not run unsupervised.
            let _ = child.kill();
            let _ = child.wait();
            let _ = send_frame(fd, &BrokerReply::Exited { code: 125 }, &[]);
            return;
        };
        let reply = match child.wait() {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => BrokerReply::Exited { code },
                (None, Some(signal)) => BrokerReply::Signaled { signal },
                _ => BrokerReply::Exited { code: 125 },
            },
            Err(_) => BrokerReply::Exited { code: 125 },
        };
        let _ = send_frame(fd, &reply, &[]);
        // Unblock the relay thread (its SIGKILL now hits an exited process: harmless).
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
        let _ = relay.join();
    }
}

/// One of the broker's connection slots, given back when dropped.
struct ConnectionSlot(Arc<std::sync::atomic::AtomicUsize>);

impl ConnectionSlot {
    /// A slot, unless `max` are taken.
    fn take(active: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<ConnectionSlot> {
        use std::sync::atomic::Ordering;
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(Arc::clone(active)))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// What a tool that answers to other names may execute: the shims (brokered calls) and
/// each program its profile names, under its own name.
fn profile_execs(
    profile: &airlock_proto::tool_rules::ToolProfile,
    shim_dir: &Path,
) -> Vec<crate::no_exec::AllowedExec> {
    use crate::no_exec::AllowedExec;
    let mut allowed = vec![AllowedExec::In(shim_dir.display().to_string())];
    for path in &profile.executes {
        if let Some(name) = Path::new(path).file_name().and_then(|n| n.to_str()) {
            allowed.push(AllowedExec::Exact {
                path: path.clone(),
                argv0: name.to_string(),
            });
        }
    }
    allowed
}

/// Sets (or, with `None`, clears) how long a receive on `fd` may block.
fn set_receive_deadline(fd: RawFd, deadline: Option<std::time::Duration>) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::{TimeVal, TimeValLike};
    // Zero means no timeout to the kernel, so a deadline is at least a microsecond.
    let micros = deadline.map_or(0, |d| {
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX).max(1)
    });
    let tv = TimeVal::microseconds(micros);
    // SAFETY: `fd` is the caller's open socket, valid for this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    setsockopt(&fd, ReceiveTimeout, &tv).map_err(io::Error::from)
}

/// Why the file at `path` (relative to `cwd`) is not a plain file: a symlink, a FIFO or
/// anything but a regular file; absent is fine unless `required`.
fn not_a_plain_file(cwd: &OwnedFd, path: &str, required: bool) -> Option<String> {
    let Ok(c_path) = std::ffi::CString::new(path) else {
        return Some("has a NUL byte".into());
    };
    // SAFETY: `stat` is plain old data; all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fstatat` on a valid directory fd and a NUL-terminated path, filling `st`
    // (ours, writable); the return value is checked.
    let rc = unsafe {
        libc::fstatat(
            cwd.as_raw_fd(),
            c_path.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) if !required => None,
            _ => Some(format!("cannot be examined ({e})")),
        };
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFLNK => Some("is a symlink".into()),
        libc::S_IFIFO => Some("is a FIFO".into()),
        _ => Some("is not a regular file".into()),
    }
}

/// The names in the directory at `path` (relative to `cwd`, symlinks followed as git
/// follows them), comma-separated (at most 8), when it has any: `Ok(None)` when it is
/// empty, absent or not a directory (git then reads nothing from it either). Any other
/// failure is an `Err`: the push is refused rather than let through unchecked.
fn directory_entries(cwd: &OwnedFd, path: &str) -> Result<Option<String>, String> {
    use nix::dir::Dir;
    use nix::errno::Errno;
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let mut dir = match Dir::openat(cwd, path, flags, nix::sys::stat::Mode::empty()) {
        Ok(d) => d,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(format!("cannot be examined ({e})")),
    };
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| format!("cannot be listed ({e})"))?;
        let name = entry.file_name().to_string_lossy();
        if name == "." || name == ".." {
            continue;
        }
        names.push(name.into_owned());
        if names.len() == 8 {
            break;
        }
    }
    Ok((!names.is_empty()).then(|| names.join(", ")))
}

/// A call's reaches on one line, for a refusal the agent reads.
fn reaches_shown(reaches: &[String]) -> String {
    if reaches.is_empty() {
        return "nothing configured".into();
    }
    reaches
        .iter()
        .map(|r| r.escape_debug().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits for `child` until `deadline`: woken by its pidfd the moment it exits (a
/// brokered call pays no polling interval), killed and reaped if the deadline passes.
fn wait_until(
    child: &mut std::process::Child,
    deadline: std::time::Instant,
) -> Option<std::process::ExitStatus> {
    // Our own unreaped child: the pidfd names it.
    let pidfd = PidFd::open(child.id() as libc::pid_t).ok();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => break,
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match &pidfd {
            Some(fd) => {
                let _ = fd.wait_exited(left);
            }
            // No pidfd (a kernel before 5.3): a short sleep between checks.
            None => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
