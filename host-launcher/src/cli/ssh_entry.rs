//! `airlock ssh-entry`: the forced command of an SSH login (`ForceCommand`, or
//! `command="…"` on a key in `authorized_keys`). Every login is a fresh session — a
//! microVM by default — running the plan's command, the forced entrypoint; the key's
//! line names the policy and the plan, which is how a key maps to what it may run.
//!
//! What the client asked for (`SSH_ORIGINAL_COMMAND`) never runs: it is refused, or,
//! with `--original-command-as-argument` on the key's line, appended to the entrypoint
//! as one argument before the policy decides the plan (see
//! [`airlock_launcher::ssh_entry`]). The login is checked first (no forwarded agent,
//! no X11, really sshd), and the session is destroyed when the client goes away.

use super::output::errln;
use super::run::{stdin_for_vm, Isolation, MergeArg};
use super::session_setup::{egress_pins, launcher_signer, vm_launcher, Approvers};
use super::{fail, ApprovalArgs, Failure, OnAskArg, VmArgs};
use airlock_launcher::plan::Plan;
use airlock_launcher::policy::Policy;
use airlock_launcher::ssh_entry::{check_login, original_command, watch_closed};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct SshEntryArgs {
    /// Sandbox kind: a disposable microVM, or namespaces on the host kernel (weaker;
    /// root only).
    #[arg(long, value_enum, default_value = "vm")]
    isolation: Isolation,
    #[command(flatten)]
    vm: VmArgs,
    /// Policy file (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// The plan every login runs: its `command` is the forced entrypoint.
    #[arg(long)]
    plan: PathBuf,
    /// Pass the command the SSH client asked for (SSH_ORIGINAL_COMMAND) to the
    /// entrypoint as one more argument, exactly as sent (never split, never run by a
    /// shell), decided by the policy with the rest of the command. Without this flag a
    /// login that asks for a command is refused and nothing runs.
    #[arg(long)]
    original_command_as_argument: bool,
    /// Run without sshd (SSH_CONNECTION unset): for testing by hand.
    #[arg(long)]
    allow_without_ssh: bool,
    // Who answers asks: --approver-cmd (then asks wait for it), or --on-ask
    // deny|allow|wait [default: deny without --approver-cmd]. Never `prompt`: the
    // login's terminal is the agent's.
    #[command(flatten)]
    approvals: ApprovalArgs,
    /// When the changes in copy-on-write (`rw`) workspaces reach the host.
    #[arg(long, value_enum, default_value = "exited")]
    merge: MergeArg,
    /// The enforcer binary, for process isolation (default: next to airlock).
    #[arg(long)]
    enforcer: Option<PathBuf>,
    /// The shim binary, for process isolation (default: next to airlock).
    #[arg(long)]
    shim: Option<PathBuf>,
}

/// Exit status when the login itself is refused (forwarding got through, no sshd):
/// airlock's own failure, nothing ran.
const EXIT_REFUSED_LOGIN: u8 = 125;
/// Exit status when the client's command is refused: nothing ran, as for a denied plan.
const EXIT_REFUSED_COMMAND: u8 = 4;

pub fn exec(a: SshEntryArgs) -> Result<u8, Failure> {
    // The login first, then what the client asked for: neither needs any file, and a
    // refusal reads nothing, boots nothing.
    let login = check_login(|name| std::env::var_os(name), a.allow_without_ssh)
        .map_err(|e| fail(EXIT_REFUSED_LOGIN, e))?;
    let extra = original_command(
        std::env::var_os("SSH_ORIGINAL_COMMAND").as_deref(),
        a.original_command_as_argument,
    )
    .map_err(|e| fail(EXIT_REFUSED_COMMAND, e))?;
    let approvals = no_prompt(a.approvals)?;
    let bad = |e: &dyn std::fmt::Display| fail(125, e);
    let policy = Policy::load(&a.policy).map_err(|e| bad(&e))?;
    let mut plan = Plan::load(&a.plan).map_err(|e| bad(&e))?;
    // The client's argument joins the command before anything is decided: the policy
    // sees exactly the argv that will run.
    plan.command.extend(extra);
    plan.validate("ssh-entry").map_err(|e| bad(&e))?;
    let a = SshEntryArgs { approvals, ..a };
    match a.isolation {
        Isolation::Vm => run_in_vm(&a, policy, &plan, &login.caller()),
        Isolation::Process => run_process(a, policy, &plan),
    }
}

/// The approval flags for a login: never the terminal prompt (the login's terminal, if
/// any, is the agent's own), and asks denied unless an approver was given.
fn no_prompt(a: ApprovalArgs) -> Result<ApprovalArgs, Failure> {
    let on_ask = match a.on_ask {
        Some(OnAskArg::Prompt) => {
            return Err(fail(
                2,
                "--on-ask prompt: an SSH login's terminal belongs to the agent; give --approver-cmd PROG, or --on-ask deny|allow|wait",
            ))
        }
        Some(o) => o,
        None if a.approver_cmd.is_some() => OnAskArg::Wait,
        None => OnAskArg::Deny,
    };
    Ok(ApprovalArgs {
        on_ask: Some(on_ask),
        ..a
    })
}

/// Why a session is torn down before its command ended: the client went away, or
/// someone stopped `ssh-entry`.
struct Gone {
    code: u8,
    why: &'static str,
}

impl Gone {
    const OUTPUT_CLOSED: Gone = Gone {
        code: 128 + libc::SIGPIPE as u8,
        why: "the SSH client went away (its output was closed)",
    };

    fn failure(&self, what: &str) -> Failure {
        fail(self.code, format!("{}: {what}", self.why))
    }
}

/// What ends a VM session early: SIGHUP (a login's terminal hung up), SIGTERM, SIGQUIT
/// (a login's terminal), or the login's output closed at the other end (how sshd ends a
/// session without a tty: it sends no signal, it closes the pipes). Each destroys the
/// session before `ssh-entry` exits, where their default action would leave the VM
/// directory to the next launcher's sweep.
struct Hangups {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    closed: Option<tokio::sync::oneshot::Receiver<i32>>,
}

impl Hangups {
    /// Starts listening (inside the runtime): from now on SIGHUP and SIGTERM are ours.
    fn start() -> Result<Hangups, Failure> {
        use tokio::signal::unix::{signal, SignalKind};
        let handler = |kind| signal(kind).map_err(|e| fail(125, format!("signal handler: {e}")));
        let (tx, rx) = tokio::sync::oneshot::channel();
        watch_closed(&[1, 2], move |fd| {
            let _ = tx.send(fd);
        })
        .map_err(|e| fail(125, format!("watching the login's output: {e}")))?;
        Ok(Hangups {
            hup: handler(SignalKind::hangup())?,
            term: handler(SignalKind::terminate())?,
            quit: handler(SignalKind::quit())?,
            closed: Some(rx),
        })
    }

    /// The next reason to stop (cancel-safe).
    async fn next(&mut self) -> Gone {
        loop {
            let closed = async {
                match self.closed.as_mut() {
                    Some(rx) => rx.await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.hup.recv() => return Gone {
                    code: 128 + libc::SIGHUP as u8,
                    why: "SIGHUP (the login's terminal hung up)",
                },
                _ = self.term.recv() => return Gone {
                    code: 128 + libc::SIGTERM as u8,
                    why: "SIGTERM",
                },
                _ = self.quit.recv() => return Gone {
                    code: 128 + libc::SIGQUIT as u8,
                    why: "SIGQUIT",
                },
                seen = closed => {
                    if seen {
                        return Gone::OUTPUT_CLOSED;
                    }
                    // The watch had nothing to watch (no open output): never again.
                    self.closed = None;
                }
            }
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

enum Outcome {
    Ended(airlock_launcher::launcher::ExecEnd),
    Failed(Failure),
    Gone(Gone),
}

fn run_in_vm(a: &SshEntryArgs, policy: Policy, plan: &Plan, caller: &str) -> Result<u8, Failure> {
    use airlock_launcher::approval::{Refusal, UpFront};
    use airlock_launcher::launcher::{ExecEnd, ExecOutput, ExecSpec, SessionError};
    // Today a VM command's stdin is what `airlock run` gives it: read whole before the
    // VM boots when it is a pipe (an SSH login without a tty: `ssh -T host < input`,
    // or `ssh -n`), nothing from a terminal. When VM sessions get their tty stream,
    // this follows run's interactive path.
    let stdin = stdin_for_vm()?;
    let signer = launcher_signer(&a.vm)?;
    let approvers = Approvers::from_args(&a.approvals, false, &policy, signer.clone())
        .map_err(|f| fail(125, f.message))?;
    // Quiet: the login's stderr is the agent's, not an operator's.
    let launcher = vm_launcher(&a.vm, policy, signer, approvers.broker.clone(), true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(125, format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let _channels = approvers.start().map_err(|f| fail(125, f.message))?;
        let mut gone = Hangups::start()?;
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| fail(125, format!("signal handler: {e}")))?;
        // A client gone during the boot stops it: dropping the session being made
        // destroys its VM.
        let created = tokio::select! {
            biased;
            g = gone.next() => return Err(g.failure("before the session was ready; nothing ran")),
            s = launcher.create_session_for(plan, UpFront::Ask, Some(caller)) => s,
        };
        let mut session = match created {
            Ok(s) => s,
            Err(SessionError::Refused(Refusal::Denied { denials, .. })) => {
                for d in &denials {
                    errln!("airlock: denied: {d}");
                }
                return Err(fail(4, "plan denied; nothing ran"));
            }
            Err(e) => return Err(fail(e.exit_code() as u8, e)),
        };
        let argv = session.manifest().command.argv.clone();
        let started = tokio::select! {
            biased;
            g = gone.next() => Err(g),
            s = session.exec(ExecSpec { argv, stdin, ..Default::default() }) => Ok(s),
        };
        let mut stream = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let _ = session.destroy().await;
                return Err(fail(e.exit_code() as u8, e));
            }
            Err(g) => {
                let _ = session.destroy().await;
                return Err(g.failure("the session was destroyed"));
            }
        };
        let mut exec_id = String::new();
        let outcome = loop {
            tokio::select! {
                biased;
                g = gone.next() => break Outcome::Gone(g),
                _ = interrupt.recv() => {
                    // A login's terminal sends ^C here: it is the command's.
                    if !exec_id.is_empty() {
                        let _ = session.signal(&exec_id, libc::SIGINT).await;
                    }
                }
                ev = stream.next() => match ev {
                    None => break Outcome::Failed(fail(125, "the command's stream ended without an exit")),
                    Some(Err(e)) => break Outcome::Failed(fail(e.exit_code() as u8, e)),
                    Some(Ok(ExecOutput::Started(id))) => exec_id = id,
                    Some(Ok(ExecOutput::Stdout(b))) => {
                        if !relay(std::io::stdout().lock(), &b) {
                            break Outcome::Gone(Gone::OUTPUT_CLOSED);
                        }
                    }
                    Some(Ok(ExecOutput::Stderr(b))) => {
                        if !relay(std::io::stderr().lock(), &b) {
                            break Outcome::Gone(Gone::OUTPUT_CLOSED);
                        }
                    }
                    Some(Ok(ExecOutput::Ended(end))) => break Outcome::Ended(end),
                },
            }
        };
        drop(stream);
        let end = match outcome {
            // Nobody is left to read a merge report, and a command that did not end
            // on its own merges nothing: the session goes at once.
            Outcome::Gone(g) => {
                let _ = session.destroy().await;
                return Err(g.failure("the session was destroyed"));
            }
            Outcome::Failed(f) => Err(f),
            Outcome::Ended(end) => Ok(end),
        };
        let merge = if session.has_workspaces() {
            let ended = match &end {
                Ok(e) => e.command_end(),
                Err(_) => airlock_launcher::workspace_merge::CommandEnd::Stopped(
                    "the session failed".into(),
                ),
            };
            Some(session.merge_after(&ended, a.merge.into()).await)
        } else {
            None
        };
        session.destroy().await.map_err(|e| fail(125, e))?;
        let end = end?;
        if let ExecEnd::Stopped(why) = &end {
            errln!("airlock: the sandbox stopped the command: {why}");
        }
        if let Some(m) = &merge {
            errln!("airlock: workspace: {}", m.summary_line());
        }
        Ok(u8::try_from(end.exit_code()).unwrap_or(125))
    })
}

fn run_process(a: SshEntryArgs, policy: Policy, plan: &Plan) -> Result<u8, Failure> {
    use airlock_launcher::process_session::{run_process_isolated, ProcessRunOptions, RunError};
    let mut opts = ProcessRunOptions::next_to_current_exe().map_err(|e| fail(125, e))?;
    if let Some(e) = a.enforcer {
        opts.enforcer = e;
    }
    if let Some(s) = a.shim {
        opts.shim = s;
    }
    // As `airlock run`: the launcher's key signs the audit log's checkpoints when there
    // is one, else a key made for this session.
    let signer = match launcher_signer(&a.vm) {
        Ok(s) => s,
        Err(_) => std::sync::Arc::new(
            airlock_proto::envelope::Signer::generate().map_err(|e| fail(125, e))?,
        ),
    };
    let approvers = Approvers::from_args(&a.approvals, false, &policy, signer)
        .map_err(|f| fail(125, f.message))?;
    opts.approvals = approvers.broker.clone();
    opts.merge = a.merge.into();
    opts.egress_pins = egress_pins(&a.vm.resolve)?;
    let channel_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| fail(125, format!("tokio runtime: {e}")))?;
    let _channels = {
        let _entered = channel_rt.enter();
        approvers.start().map_err(|f| fail(125, f.message))?
    };
    // The client going away ends this process, and that tears the sandbox down: the
    // enforcer dies with its launcher (SIGTERM, its death signal), kills the sandbox and
    // removes its cgroup. SIGHUP (a login's terminal hung up) and SIGTERM keep their
    // default action, which is that same exit; a session without a tty gets no signal
    // from sshd, only its pipes closed, which the watch sees.
    watch_closed(&[1, 2], |_| {
        // SAFETY: ends the process at once, as a default SIGPIPE would.
        unsafe { libc::_exit(128 + libc::SIGPIPE) }
    })
    .map_err(|e| fail(125, format!("watching the login's output: {e}")))?;
    // Terminal interrupts belong to the agent (the enforcer restores its dispositions).
    // SAFETY: sets signal dispositions to ignore; no handler involved.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    match run_process_isolated(&policy, plan, &opts) {
        Ok(out) => {
            if let Some(m) = &out.merge {
                errln!("airlock: workspace: {}", m.summary_line());
            }
            Ok(u8::try_from(out.exit_code).unwrap_or(125))
        }
        Err(RunError::Denied { denials, .. }) => {
            for d in &denials {
                errln!("airlock: denied: {d}");
            }
            Err(fail(4, "plan denied; nothing ran"))
        }
        Err(e) => Err(fail(125, e)),
    }
}
