//! The `airlock` subcommands, one module each, and what they share: the command line
//! ([`Cli`], [`Command`]), the argument groups several subcommands flatten ([`VmArgs`],
//! [`ApprovalArgs`]) and [`Failure`], the error every subcommand returns.

pub mod approvals;
pub mod audit;
pub mod image;
pub mod interactive;
pub mod keygen;
pub mod manifest;
pub mod mcp;
pub mod output;
pub mod plan;
pub mod policy;
pub mod run;
pub mod schema;
pub mod serve;
pub mod session_setup;
pub mod ssh_entry;
pub mod terminal;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Give LLM agents tools without ambient authority."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load, check and lint policies; decide capabilities.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Decide every request of a plan (exit 0 all allowed, 3 needs approval, 4 denied).
    Plan {
        /// Policy file (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// Plan file (TOML or JSON).
        #[arg(long)]
        plan: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Generate the launcher's signing key pair.
    Keygen {
        /// Directory for airlock.key and airlock.pub (default: $XDG_CONFIG_HOME/airlock).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing key pair.
        #[arg(long)]
        force: bool,
    },
    /// Mint and verify signed manifests.
    #[command(subcommand)]
    Manifest(manifest::ManifestCmd),
    /// Build guest images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Run a command in a sandbox under a policy (exit: the command's status; 4 plan
    /// denied, nothing ran; 125 airlock's own failure).
    Run(run::RunArgs),
    /// Serve the Launcher gRPC service (with health and reflection) for orchestrators.
    Serve(serve::ServeArgs),
    /// The forced command of an SSH login (OpenSSH `ForceCommand`, or `command="…"` on a
    /// key): every login a fresh session running the plan's command; the client's own
    /// command is refused, or one argument the policy decides.
    ///
    /// Refuses a login that carries a forwarded agent or X11, or that sshd did not start.
    /// Asks go to --approver-cmd, or --on-ask deny|allow|wait (default: deny); never to
    /// a prompt, as the login's terminal is the agent's. The session is destroyed when
    /// the client goes away.
    SshEntry(ssh_entry::SshEntryArgs),
    /// Serve the Model Context Protocol on stdio: MCP tools for plans and sessions, every
    /// call decided by the policy and the approvers, never by the MCP client.
    Mcp(mcp::McpArgs),
    /// Watch and answer asks of a running `airlock serve` (gRPC client).
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCmd),
    /// Check and read the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Write the JSON Schemas of policy, plan and manifest.
    Schema {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnAskArg {
    /// Ask on the controlling terminal (/dev/tty), beside the command's output.
    Prompt,
    /// Approve every ask, once (automation that trusts its policy's ask rules).
    Allow,
    /// Deny every ask.
    Deny,
    /// Let asks wait for an approver (gRPC WatchApprovals, the web page,
    /// --approver-cmd) until their deadline.
    Wait,
}

/// Who answers asks (shared by `run` and `serve`).
#[derive(Args)]
pub struct ApprovalArgs {
    /// Who answers asks [run: prompt when there is a controlling terminal, wait with
    /// --approver-cmd, else deny; serve: wait].
    #[arg(long, value_enum)]
    pub on_ask: Option<OnAskArg>,
    /// Run PROG for each ask: the ask as JSON on stdin, the answer as JSON on stdout
    /// (`{"answer":"once|session|deny"}`); a failure or a malformed answer denies.
    #[arg(long, value_name = "PROG")]
    pub approver_cmd: Option<PathBuf>,
    /// How long an ask waits for an answer before it is denied (at most 100s)
    /// [default: the policy's `ask_timeout`, else 60s].
    #[arg(long)]
    pub ask_timeout: Option<String>,
    /// The audit log every decision is written to before it takes effect
    /// [default: $XDG_STATE_HOME/airlock/audit.jsonl].
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VmmArg {
    /// QEMU `-M microvm` (KVM when a probe boot proves it works, else TCG).
    Qemu,
    /// cloud-hypervisor (needs working KVM).
    CloudHypervisor,
}

/// How VM sessions are made (shared by `run` and `serve`).
#[derive(Args)]
pub struct VmArgs {
    /// VM image descriptor (`image.json`, or its directory) [default:
    /// $XDG_CACHE_HOME/airlock/images/minimal/image.json].
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// VM monitor.
    #[arg(long, value_enum, default_value = "qemu")]
    pub vmm: VmmArg,
    /// The launcher's private key [default: $XDG_CONFIG_HOME/airlock/airlock.key].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Where vhost-device-vsock, virtiofsd (and cloud-hypervisor) are, before PATH.
    #[arg(long)]
    pub tools_dir: Option<PathBuf>,
    /// Dial NAME at IP instead of resolving it, like curl's --resolve (repeatable);
    /// recorded in the manifest of sessions granted NAME, and the explicit grant of that
    /// address even in loopback or private ranges.
    #[arg(long = "resolve", value_name = "NAME=IP")]
    pub resolve: Vec<String>,
}

/// A failure with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

pub fn fail(code: u8, message: impl std::fmt::Display) -> Failure {
    Failure {
        code,
        message: message.to_string(),
    }
}
