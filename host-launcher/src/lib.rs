//! `airlock-launcher`: the host side of Airlock.
//!
//! The launcher makes every decision: it loads a [`policy`], evaluates a [`plan`]
//! against it, and [`mint`]s the signed manifest for what was granted. The `airlock`
//! CLI is a thin layer over this library; programs that embed Airlock use the same.
//! [`launcher::Launcher`] runs plans in disposable microVMs ([`vmm`] backends, [`image`]s);
//! [`process_session`] runs a plan under the enforcer's process isolation.

/// Who may call the Launcher API (`SO_PEERCRED`, mutual TLS) and which sessions it sees.
pub mod api_access;
pub mod approval;
/// The host's approval broker: pending asks, bound single-use answers, session grants.
pub mod approval_broker;
/// The loopback web page where a person answers asks (`airlock serve --approvals-http`).
pub mod approvals_http;
/// Approver channels that run beside the launcher: the terminal prompt and `--approver-cmd`.
pub mod approver_channels;
/// The host-side audit log: hash-chained JSON Lines with signed checkpoints.
pub mod audit_log;
/// Child processes that die with the launcher, forked by one long-lived thread.
pub mod dies_with_launcher;
/// Egress by name: the host decides, resolves and dials every connection the agent opens.
pub mod egress;
pub mod host_service;
/// The caller's terminal: never held by a sandbox, silent while an approval prompt is on it.
pub mod host_terminal;
pub mod image;
pub mod keys;
pub mod launcher;
/// `airlock mcp`: the Model Context Protocol over stdio, every call through the [`launcher::Launcher`].
pub mod mcp;
/// The merge-back gate: which workspace changes reach the host, applied all or nothing.
pub mod merge_gate;
pub mod mint;
/// Finding host programs as a shell would: given directories, then `PATH`.
pub mod path_lookup;
pub mod plan;
pub mod policy;
pub mod process_session;
pub mod schema;
pub mod server;
/// `airlock ssh-entry`: the login checks, `SSH_ORIGINAL_COMMAND` as at most one argument, the client going away.
pub mod ssh_entry;
pub mod vmm;
/// Merging copy-on-write workspaces back: the gate's inputs and its change streams.
pub mod workspace_merge;
