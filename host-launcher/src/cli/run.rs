//! `airlock run`: one command in a sandbox (a microVM, or process isolation), its
//! stdin, and the merge-back of its workspaces.

use super::output::errln;
use super::plan::print_report;
use super::session_setup::{launcher_signer, process_setup, vm_launcher, Approvers};
use super::terminal;
use super::{fail, ApprovalArgs, Failure, VmArgs};
use airlock_launcher::plan::Plan;
use airlock_launcher::policy::Policy;
use clap::Args;
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Isolation {
    /// A disposable microVM (the default).
    Vm,
    /// Fresh namespaces on the host kernel (weaker: the kernel is shared).
    Process,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum MergeArg {
    /// Merge when the command exited on its own, whatever its status.
    Exited,
    /// Merge only when the command exited 0.
    Success,
    /// Report what would be merged; change nothing on the host.
    DryRun,
    /// Merge nothing (the write layer is discarded with the sandbox).
    Never,
}

impl From<MergeArg> for airlock_launcher::workspace_merge::MergeWhen {
    fn from(a: MergeArg) -> Self {
        use airlock_launcher::workspace_merge::MergeWhen as W;
        match a {
            MergeArg::Exited => W::Exited,
            MergeArg::Success => W::Success,
            MergeArg::DryRun => W::DryRun,
            MergeArg::Never => W::Never,
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Sandbox kind: a disposable microVM, or namespaces on the host kernel (weaker).
    #[arg(long, value_enum, default_value = "vm")]
    isolation: Isolation,
    #[command(flatten)]
    vm: VmArgs,
    /// Copy this guest file back to the host when the command ends (repeatable).
    #[arg(long = "collect", value_name = "GUEST_PATH")]
    collect: Vec<String>,
    /// Where collected files go.
    #[arg(long, default_value = "airlock-collected")]
    collect_dir: PathBuf,
    /// Policy file (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// Plan file; the flags below add to it, and CMD replaces its command.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Share a host directory: HOST:GUEST[:ro|rw|rw-live] (default ro; rw is
    /// copy-on-write, merged back through the gate; rw-live writes the host directly).
    #[arg(long = "mount", value_name = "HOST:GUEST[:ro|rw|rw-live]")]
    mounts: Vec<String>,
    /// Grant a tool (its rules come from the policy).
    #[arg(long = "tool", value_name = "NAME")]
    tools: Vec<String>,
    /// Ask for a network endpoint, HOST[:PORT] (port 443 when omitted; the policy
    /// decides it like a plan's [[net]]).
    #[arg(long = "net", value_name = "HOST[:PORT]")]
    net: Vec<String>,
    #[command(flatten)]
    approvals: ApprovalArgs,
    /// When the changes in copy-on-write (`rw`) workspaces reach the host, through the
    /// merge-back gate.
    #[arg(long, value_enum, default_value = "exited")]
    merge: MergeArg,
    /// Print the decisions (when denied) and a summary as JSON.
    #[arg(long)]
    json: bool,
    /// The enforcer binary (default: airlock-enforcer next to airlock).
    #[arg(long)]
    enforcer: Option<PathBuf>,
    /// The shim binary (default: airlock-shim next to airlock).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// Command and arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

/// Parses `HOST:GUEST[:ro|rw|rw-live]`.
fn parse_mount(text: &str) -> Result<airlock_launcher::plan::PlanMount, String> {
    use airlock_proto::manifest::Access;
    let parts: Vec<&str> = text.split(':').collect();
    let (host, guest, mode) = match parts.as_slice() {
        [h, g] => (*h, *g, Access::Ro),
        [h, g, "ro"] => (*h, *g, Access::Ro),
        [h, g, "rw"] => (*h, *g, Access::Rw),
        [h, g, "rw-live"] => (*h, *g, Access::RwLive),
        [_, _, m] => return Err(format!("--mount `{text}`: mode `{m}` is not ro or rw")),
        _ => {
            return Err(format!(
                "--mount `{text}` is not HOST:GUEST[:ro|rw|rw-live]"
            ))
        }
    };
    let host = std::path::absolute(host)
        .map_err(|e| format!("--mount `{text}`: {e}"))?
        .display()
        .to_string();
    Ok(airlock_launcher::plan::PlanMount {
        host,
        guest: guest.to_string(),
        mode,
    })
}

pub fn exec(a: RunArgs) -> Result<u8, Failure> {
    use airlock_launcher::process_session::{run_process_isolated, RunError};
    // Bad input is airlock's own failure here (125), as the command's codes are the
    // command's.
    let bad = |e: &dyn std::fmt::Display| fail(125, e);
    let policy = Policy::load(&a.policy).map_err(|e| bad(&e))?;
    let mut plan = match &a.plan {
        Some(p) => Plan::load(p).map_err(|e| bad(&e))?,
        None => Plan {
            command: vec![],
            cwd: None,
            env: Default::default(),
            mounts: vec![],
            net: vec![],
            tools: vec![],
            resources: Default::default(),
        },
    };
    if !a.command.is_empty() {
        plan.command = a.command.clone();
    }
    for m in &a.mounts {
        plan.mounts.push(parse_mount(m).map_err(|e| bad(&e))?);
    }
    // Merged: a tool the plan already lists, or one given twice, is asked for once.
    plan.add_tools(a.tools.iter().map(String::as_str));
    for n in &a.net {
        let airlock_launcher::policy::capability::Capability::Net { host, port } =
            airlock_launcher::policy::capability::parse_net(n)
                .map_err(|e| bad(&format!("--net {n}: {e}")))?
        else {
            unreachable!("parse_net gives a net capability")
        };
        plan.net
            .push(airlock_launcher::plan::PlanEndpoint { host, port });
    }
    if plan.command.is_empty() {
        return Err(fail(2, "no command: give one after `--` or in --plan"));
    }
    plan.validate("command line").map_err(|e| bad(&e))?;
    if a.isolation == Isolation::Vm {
        return run_in_vm(&a, policy, &plan);
    }
    let setup = process_setup(
        &a.vm,
        &a.approvals,
        &policy,
        a.enforcer.clone(),
        a.shim.clone(),
        a.merge.into(),
    )?;
    // Terminal interrupts are the agent's: the session forwards them once it runs
    // (the enforcer leads a session of its own); until then they do nothing.
    // ^Z would stop airlock alone: the sandbox leads a session of its own and would run
    // on with its output, input and asks frozen. Ignored, as on the command's own
    // terminal (where ^Z is a key); in the background, reading the terminal is then
    // the command's end of input instead of a stop.
    // SAFETY: sets signal dispositions to ignore; no handler involved.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(libc::SIGTSTP, libc::SIG_IGN);
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
    }
    // On our terminal, a terminal of its own in the sandbox (ours in raw mode, relayed
    // here, held while a prompt asks on the same terminal). Our terminal itself never
    // reaches the sandbox (`host_terminal`).
    let ran = if terminal::both_are_terminals() {
        airlock_launcher::process_session::run_process_isolated_on_a_terminal(
            &policy,
            &plan,
            &setup.opts,
        )
    } else {
        run_process_isolated(&policy, &plan, &setup.opts)
    };
    match ran {
        Ok(out) => {
            if a.json {
                errln!(
                    "{}",
                    serde_json::json!({
                        "session_id": out.session_id,
                        "isolation": "process",
                        "exit_code": out.exit_code,
                        "outcome": out.report.outcome,
                        "merge": out.merge.as_ref().map(|m| m.to_json()),
                    })
                );
            } else if let Some(m) = &out.merge {
                errln!("airlock: workspace: {}", m.summary_line());
            }
            Ok(u8::try_from(out.exit_code).unwrap_or(125))
        }
        Err(RunError::Denied { report, denials }) => {
            if a.json {
                print_report(&report, true);
            } else {
                for d in &denials {
                    errln!("airlock: denied: {d}");
                }
            }
            Err(fail(4, "plan denied; nothing ran"))
        }
        Err(e) => Err(fail(125, e)),
    }
}

fn run_in_vm(a: &RunArgs, policy: Policy, plan: &Plan) -> Result<u8, Failure> {
    use super::interactive::{create_session_unless_stopped, run_attached_or_destroy, Stops};
    let signer = launcher_signer(&a.vm)?;
    let approvers = Approvers::from_args(&a.approvals, false, &policy, signer.clone())
        .map_err(|f| fail(125, f.message))?;
    let prompt = approvers
        .prompt_on_the_terminal()
        .then(|| approvers.broker.clone());
    let launcher = vm_launcher(&a.vm, policy, signer, approvers.broker.clone(), a.json)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(125, format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let _channels = approvers.start().map_err(|f| fail(125, f.message))?;
        let mut stops = Stops::start()?;
        let session = create_session_unless_stopped(&launcher, plan, None, &mut stops)
            .await
            .map_err(|n| n.told(a.json))?;
        let (mut session, end) = run_attached_or_destroy(session, &mut stops, prompt).await?;
        let mut collected = Vec::new();
        if end.is_ok() && !a.collect.is_empty() {
            std::fs::create_dir_all(&a.collect_dir)
                .map_err(|e| fail(125, format!("{}: {e}", a.collect_dir.display())))?;
            collected = session
                .collect(&a.collect, &a.collect_dir)
                .await
                .map_err(|e| fail(125, e))?;
        }
        let merge = merge_after(&mut session, &end, a.merge).await;
        let id = session.id().to_string();
        let ttr = session.time_to_ready();
        session.destroy().await.map_err(|e| fail(125, e))?;
        let end = end?;
        if a.json {
            errln!(
                "{}",
                serde_json::json!({
                    "session_id": id,
                    "isolation": "vm",
                    "exit_code": end.exit_code(),
                    "time_to_ready_ms": ttr.as_millis() as u64,
                    "collected": collected.iter().map(|c| serde_json::json!({
                        "guest_path": c.guest_path, "host_path": c.host_path,
                        "size": c.size, "sha256": c.sha256,
                    })).collect::<Vec<_>>(),
                    "merge": merge.as_ref().map(|m| m.to_json()),
                })
            );
        } else {
            say_how_it_ended(&end, merge.as_ref());
        }
        Ok(u8::try_from(end.exit_code()).unwrap_or(125))
    })
}

/// The merge-back after the command, when the session has copy-on-write workspaces.
pub(super) async fn merge_after(
    session: &mut airlock_launcher::launcher::Session,
    end: &Result<airlock_launcher::launcher::ExecEnd, Failure>,
    merge: MergeArg,
) -> Option<airlock_launcher::workspace_merge::MergeOutcome> {
    if !session.has_workspaces() {
        return None;
    }
    let ended = match end {
        Ok(e) => e.command_end(),
        Err(_) => {
            airlock_launcher::workspace_merge::CommandEnd::Stopped("the session failed".into())
        }
    };
    Some(session.merge_after(&ended, merge.into()).await)
}

/// The lines after a VM command: the sandbox stopped it, what the merge did.
pub(super) fn say_how_it_ended(
    end: &airlock_launcher::launcher::ExecEnd,
    merge: Option<&airlock_launcher::workspace_merge::MergeOutcome>,
) {
    if let airlock_launcher::launcher::ExecEnd::Stopped(why) = end {
        errln!("airlock: the sandbox stopped the command: {why}");
    }
    if let Some(m) = merge {
        errln!("airlock: workspace: {}", m.summary_line());
    }
}
