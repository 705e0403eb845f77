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
use super::run::{Isolation, MergeArg};
use super::session_setup::{launcher_signer, process_setup, vm_launcher, Approvers};
use super::{fail, ApprovalArgs, Failure, OnAskArg, VmArgs};
use airlock_launcher::plan::Plan;
use airlock_launcher::policy::Policy;
use airlock_launcher::ssh_entry::{check_login, original_command, watch_closed};
use clap::Args;
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

fn run_in_vm(a: &SshEntryArgs, policy: Policy, plan: &Plan, caller: &str) -> Result<u8, Failure> {
    use super::interactive::{create_session_unless_stopped, run_attached_or_destroy, Stops};
    use super::run::{merge_after, say_how_it_ended};
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
        let mut stops = Stops::start()?;
        let session = create_session_unless_stopped(&launcher, plan, Some(caller), &mut stops)
            .await
            .map_err(|n| n.told(false))?;
        // The login's terminal (`ssh -t`) becomes the command's own in the guest, its
        // stdin (`ssh -T`) streams until the client closes it. No prompt approver: the
        // terminal is the agent's.
        let (mut session, end) = run_attached_or_destroy(session, &mut stops, None).await?;
        let merge = merge_after(&mut session, &end, a.merge).await;
        session.destroy().await.map_err(|e| fail(125, e))?;
        let end = end?;
        say_how_it_ended(&end, merge.as_ref());
        Ok(u8::try_from(end.exit_code()).unwrap_or(125))
    })
}

fn run_process(a: SshEntryArgs, policy: Policy, plan: &Plan) -> Result<u8, Failure> {
    use airlock_launcher::process_session::{
        run_process_isolated, run_process_isolated_on_a_terminal, RunError,
    };
    let setup = process_setup(
        &a.vm,
        &a.approvals,
        &policy,
        a.enforcer,
        a.shim,
        a.merge.into(),
    )?;
    // The client going away ends this process, and that tears the sandbox down: the
    // enforcer dies with its launcher (SIGTERM, its death signal), kills the sandbox and
    // removes its cgroup. SIGTERM keeps its default action, which is that same exit;
    // SIGHUP (a login's terminal hung up) ends the session through the enforcer (the
    // session forwards it as SIGTERM); a session without a tty gets no signal from
    // sshd, only its pipes closed, which the watch sees.
    watch_closed(&[1, 2], |_| {
        // SAFETY: ends the process at once, as a default SIGPIPE would.
        unsafe { libc::_exit(128 + libc::SIGPIPE) }
    })
    .map_err(|e| fail(125, format!("watching the login's output: {e}")))?;
    // Terminal interrupts are the agent's: the session forwards them once it runs.
    // SAFETY: sets signal dispositions to ignore; no handler involved.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    // A login with a terminal (`ssh -t`): the command gets a terminal of its own in the
    // sandbox, relayed to the login's (never handed to the agent).
    let ran = if super::terminal::both_are_terminals() {
        run_process_isolated_on_a_terminal(&policy, plan, &setup.opts)
    } else {
        run_process_isolated(&policy, plan, &setup.opts)
    };
    match ran {
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
