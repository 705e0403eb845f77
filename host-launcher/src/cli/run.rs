//! `airlock run`: one command in a sandbox (a microVM, or process isolation), its
//! stdin, and the merge-back of its workspaces.

use super::output::errln;
use super::plan::print_report;
use super::session_setup::{egress_pins, launcher_signer, vm_launcher, Approvers};
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
    use airlock_launcher::process_session::{run_process_isolated, ProcessRunOptions, RunError};
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
    let mut opts = ProcessRunOptions::next_to_current_exe().map_err(|e| bad(&e))?;
    if let Some(e) = a.enforcer {
        opts.enforcer = e;
    }
    if let Some(s) = a.shim {
        opts.shim = s;
    }
    // The audit log's checkpoints are signed with the launcher's key when there is one
    // (process isolation needs none otherwise); else with a key made for this run: the
    // checkpoint names that key's id, so `audit verify --pub` says whose it is not.
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
    let prompt_on_the_terminal = approvers.prompt_on_the_terminal();
    // The approver channels live on their own runtime: the session blocks this thread.
    let channel_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| fail(125, format!("tokio runtime: {e}")))?;
    let _channels = {
        let _entered = channel_rt.enter();
        approvers.start().map_err(|f| fail(125, f.message))?
    };
    // Terminal interrupts belong to the agent (same process group); the enforcer
    // restores default dispositions for it.
    // SAFETY: sets signal dispositions to ignore; no handler involved.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
    // On our terminal, a terminal of its own in the sandbox (ours in raw mode, relayed;
    // never handed to the agent); else our stdio, as they are. Not while a prompt
    // approver reads the same terminal: the sandbox's relay does not yet hold keys
    // back while an ask waits (the VM path does), so a key could go to the wrong one.
    let ran = if terminal::both_are_terminals() && !prompt_on_the_terminal {
        airlock_launcher::process_session::run_process_isolated_on_a_terminal(&policy, &plan, &opts)
    } else {
        run_process_isolated(&policy, &plan, &opts)
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

/// What a VM command started with one `Exec` gets on stdin (`ssh-entry`): ours, read
/// whole when it is a pipe or a file, nothing when it is a terminal.
pub(super) fn stdin_for_vm() -> Result<Vec<u8>, Failure> {
    use airlock_launcher::launcher::MAX_EXEC_STDIN_BYTES;
    use std::io::{IsTerminal, Read};
    let input = std::io::stdin();
    if input.is_terminal() {
        return Ok(Vec::new());
    }
    let mut bytes = Vec::new();
    match input
        .lock()
        .take(MAX_EXEC_STDIN_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
    {
        Ok(_) => {}
        // No stdin at all (a closed descriptor) is an empty one.
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => return Ok(Vec::new()),
        Err(e) => return Err(fail(125, format!("reading stdin: {e}"))),
    }
    if bytes.len() > MAX_EXEC_STDIN_BYTES {
        return Err(fail(
            125,
            format!("stdin is more than the {MAX_EXEC_STDIN_BYTES} bytes a command in a VM takes; pass large inputs as a --mount"),
        ));
    }
    Ok(bytes)
}

fn run_in_vm(a: &RunArgs, policy: Policy, plan: &Plan) -> Result<u8, Failure> {
    use airlock_launcher::launcher::{ExecOutput, ExecSpec, WindowSize};
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::signal::unix::{signal, SignalKind};
    let signer = launcher_signer(&a.vm)?;
    let approvers = Approvers::from_args(&a.approvals, false, &policy, signer.clone())
        .map_err(|f| fail(125, f.message))?;
    let broker = approvers.broker.clone();
    let launcher = vm_launcher(&a.vm, policy, signer, approvers.broker.clone(), a.json)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(125, format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let _channels = approvers.start().map_err(|f| fail(125, f.message))?;
        let signal_failed = |e: std::io::Error| fail(125, format!("signal handler: {e}"));
        let mut hangup = signal(SignalKind::hangup()).map_err(signal_failed)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(signal_failed)?;
        let mut window_change = signal(SignalKind::window_change()).map_err(signal_failed)?;
        let mut session = match launcher.create_session(plan).await {
            Ok(s) => s,
            Err(airlock_launcher::launcher::SessionError::Refused(
                airlock_launcher::approval::Refusal::Denied { report, denials },
            )) => {
                if a.json {
                    print_report(&report, true);
                } else {
                    for d in &denials {
                        errln!("airlock: denied: {d}");
                    }
                }
                return Err(fail(4, "plan denied; nothing ran"));
            }
            Err(e) => return Err(fail(e.exit_code() as u8, e)),
        };
        // A terminal of its own in the guest when ours is one (both ends), relayed to
        // ours; else its stdin and stdout are pipes, streamed as they come.
        let tty = terminal::both_are_terminals()
            .then(|| terminal::window_size().unwrap_or(WindowSize { rows: 24, cols: 80 }));
        let argv = session.manifest().command.argv.clone();
        let (mut input, mut stream) = session
            .exec_interactive(
                ExecSpec {
                    argv,
                    env: if tty.is_some() {
                        terminal::term_for_the_command().into_iter().collect()
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                },
                tty,
            )
            .await
            .map_err(|e| fail(e.exit_code() as u8, e))?;
        // Raw from here to the end of the command; restored when this is dropped, on
        // every way out of this block (the summary lines below print cooked).
        let raw = tty.and_then(|_| terminal::RawMode::enter());
        // A prompt approver reads this same terminal: while an ask waits, keys are its.
        let stdin_open = std::sync::Arc::new(AtomicBool::new(true));
        let mut stdin = terminal::read_stdin_while(std::sync::Arc::clone(&stdin_open));
        let mut asks = broker.subscribe();
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
        let mut interrupts = 0u32;
        let end = loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                // Without a terminal of its own the command gets our ^C as a signal;
                // with one, ^C is a key that its terminal turns into SIGINT.
                _ = tokio::signal::ctrl_c(), if tty.is_none() => {
                    interrupts += 1;
                    if interrupts > 1 {
                        break Err(fail(130, "interrupted twice: the session is destroyed"));
                    }
                    errln!("airlock: interrupt: passed to the command (again to destroy the session)");
                    Some(Ok(ExecOutput::Started(String::new())))
                }
                _ = window_change.recv(), if tty.is_some() => {
                    if let Some(size) = terminal::window_size() {
                        let _ = resize_tx.try_send(size);
                    }
                    continue;
                }
                _ = asks.recv(), if tty.is_some() => {
                    stdin_open.store(broker.pending().is_empty(), Ordering::SeqCst);
                    continue;
                }
                _ = hangup.recv() => break Err(fail(129, "the terminal hung up: the session is destroyed")),
                _ = terminate.recv() => break Err(fail(143, "terminated: the session is destroyed")),
            };
            match ev {
                None => break Err(fail(125, "the command's stream ended without an exit")),
                Some(Err(e)) => break Err(fail(e.exit_code() as u8, e)),
                Some(Ok(ExecOutput::Started(id))) if id.is_empty() => {
                    let _ = session.signal(&exec_id, libc::SIGINT).await;
                }
                Some(Ok(ExecOutput::Started(id))) => exec_id = id,
                Some(Ok(ExecOutput::Stdout(b))) => {
                    let _ = std::io::stdout().write_all(&b);
                    let _ = std::io::stdout().flush();
                }
                Some(Ok(ExecOutput::Stderr(b))) => {
                    let _ = std::io::stderr().write_all(&b);
                }
                Some(Ok(ExecOutput::Ended(end))) => break Ok(end),
            }
        };
        forward.abort();
        drop(raw);
        let mut collected = Vec::new();
        if end.is_ok() && !a.collect.is_empty() {
            std::fs::create_dir_all(&a.collect_dir)
                .map_err(|e| fail(125, format!("{}: {e}", a.collect_dir.display())))?;
            collected = session
                .collect(&a.collect, &a.collect_dir)
                .await
                .map_err(|e| fail(125, e))?;
        }
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
            if let airlock_launcher::launcher::ExecEnd::Stopped(why) = &end {
                errln!("airlock: the sandbox stopped the command: {why}");
            }
            if let Some(m) = &merge {
                errln!("airlock: workspace: {}", m.summary_line());
            }
        }
        Ok(u8::try_from(end.exit_code()).unwrap_or(125))
    })
}
