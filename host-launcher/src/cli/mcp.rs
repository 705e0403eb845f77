//! `airlock mcp`: the Model Context Protocol over stdio, for agent hosts that speak MCP
//! (the server is `airlock_launcher::mcp`; this is its command line).

use super::session_setup::{launcher_signer, vm_launcher, Approvers};
use super::{fail, ApprovalArgs, Failure, OnAskArg, VmArgs};
use airlock_launcher::mcp::{LauncherFactory, LauncherParts, McpConfig, DEFAULT_MAX_SESSIONS};
use airlock_launcher::mint::parse_duration_secs;
use airlock_launcher::policy::Policy;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct McpArgs {
    /// Policy file (TOML) every plan is decided against.
    #[arg(long)]
    policy: PathBuf,
    #[command(flatten)]
    vm: VmArgs,
    // Who answers asks: by default `wait` when --approver-cmd or --approvals-http is
    // given, else `deny` (stdin carries the protocol; the MCP client never answers).
    #[command(flatten)]
    approvals: ApprovalArgs,
    /// Serve the approvals web page on this loopback address (e.g. 127.0.0.1:8765); its
    /// address, with the access token, goes to stderr when the first session is made.
    #[arg(long, value_name = "ADDR")]
    approvals_http: Option<std::net::SocketAddr>,
    /// Most sessions at once.
    #[arg(long, default_value_t = DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,
}

pub fn exec(mut a: McpArgs) -> Result<u8, Failure> {
    let policy = Policy::load(&a.policy).map_err(|e| fail(1, e))?;
    // Usage errors now, not at the first session (which is when the approvers are made).
    if let Some(t) = &a.approvals.ask_timeout {
        parse_duration_secs(t).map_err(|e| fail(2, format!("--ask-timeout: {e}")))?;
    }
    if let Some(addr) = a.approvals_http {
        if !addr.ip().is_loopback() {
            return Err(fail(
                2,
                format!("--approvals-http {addr} is not a loopback address"),
            ));
        }
    }
    // Nobody can answer on stdin (it is the protocol): without an approver, asks are
    // denied at once rather than left to time out.
    if a.approvals.on_ask.is_none()
        && a.approvals.approver_cmd.is_none()
        && a.approvals_http.is_none()
    {
        a.approvals.on_ask = Some(OnAskArg::Deny);
    }
    if a.max_sessions == 0 {
        return Err(fail(2, "--max-sessions must be at least 1"));
    }
    let max_sessions = a.max_sessions;
    let policy_file = a.policy.display().to_string();
    let a = Arc::new(a);
    let for_launcher = policy.clone();
    let factory: LauncherFactory = Box::new(move || {
        let (a, policy) = (Arc::clone(&a), for_launcher.clone());
        Box::pin(async move {
            // The key, the audit log, the image and the VMM's probe boot: blocking work.
            let setup = Arc::clone(&a);
            let (launcher, approvers) = tokio::task::spawn_blocking(move || {
                let signer = launcher_signer(&setup.vm)?;
                let approvers =
                    Approvers::from_args(&setup.approvals, true, &policy, signer.clone())?;
                let launcher =
                    vm_launcher(&setup.vm, policy, signer, approvers.broker.clone(), false)?;
                Ok::<_, Failure>((launcher, approvers))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|f| f.message)?;
            let channels = approvers.start().map_err(|f| f.message)?;
            let page = match a.approvals_http {
                Some(addr) => {
                    let page = airlock_launcher::approvals_http::start_approvals_http(
                        addr,
                        approvers.broker.clone(),
                        std::future::pending(),
                    )
                    .await
                    .map_err(|e| format!("--approvals-http: {e}"))?;
                    eprintln!("airlock: approvals page: {}", page.url);
                    Some(page)
                }
                None => None,
            };
            Ok(LauncherParts {
                launcher,
                keep_alive: Box::new((channels, page)),
            })
        })
    });
    let mut config = McpConfig::new(Arc::new(policy), factory);
    config.max_sessions = max_sessions;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail(1, format!("tokio runtime: {e}")))?;
    eprintln!("airlock: mcp: serving the Model Context Protocol on stdio (policy {policy_file})");
    let served = rt.block_on(async {
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("airlock: mcp: shutting down; its sessions are destroyed");
        };
        airlock_launcher::mcp::serve_stdio_until(config, stop).await
    });
    // A read of stdin may still block a thread (stopped by a signal): do not wait for it.
    rt.shutdown_background();
    served.map_err(|e| fail(1, e))?;
    Ok(0)
}
