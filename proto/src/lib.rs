//! `airlock-proto`: everything that crosses the Airlock host/guest boundary.
//!
//! - [`pb`]: the gRPC services (`Launcher`, `Enforcer`, `Host`) generated from `proto/`.
//! - [`manifest`]: the signed, short-lived contract for one session.
//! - [`envelope`]: DSSE envelope signing and the ordered verification the enforcer runs.
//! - [`argv_pattern`], [`tool_invocation`], [`tool_rules`]: the tool-rule matcher. The
//!   launcher's policy engine and the guest broker both decide tool invocations with this
//!   code, so a rule cannot mean one thing on the host and another in the guest.
//!   [`git_options`] is the table of git's subcommand options that normalization reads.
//! - [`shell_status`]: how a command ended, as the one status both sides report.
//! - [`terminal_escapes`]: what a sandboxed command may send to the person's terminal.
//! - [`pty`]: pseudo-terminals, for a VM command's terminal and process isolation's.
//! - [`pidfd`]: process handles that survive pid reuse (the enforcer's supervisors and
//!   the launcher signalling the process-isolation enforcer).

pub mod argv_pattern;
pub mod egress_wire;
pub mod envelope;
pub mod git_options;
pub mod image_layout;
pub mod manifest;
pub mod pb;
pub mod pidfd;
pub mod program_interpreter;
pub mod pty;
pub mod shell_status;
pub mod terminal_escapes;
pub mod tool_invocation;
pub mod tool_rules;
pub mod verdict;
pub mod workspace_changes;

/// Version of the host/guest protocol (gRPC messages and manifest semantics).
///
/// Negotiated in `Enforcer.Hello` and bound into every manifest; a guest refuses a
/// manifest whose version it does not implement.
pub const PROTOCOL_VERSION: u32 = 1;

/// The guest vsock port the enforcer serves `Enforcer` on (the host dials it).
pub const ENFORCER_VSOCK_PORT: u32 = 1024;
/// The host vsock port the launcher serves `Host` on (the enforcer dials CID 2 there;
/// over hybrid vsock that is the Unix socket `<vsock socket>_1025`).
pub const HOST_VSOCK_PORT: u32 = 1025;
/// The host vsock port the launcher's egress service listens on: one stream per
/// connection the agent opens, starting with an `EgressOpen` frame ([`egress_wire`]).
pub const EGRESS_VSOCK_PORT: u32 = 1026;
/// The console line the enforcer prints once it listens on [`ENFORCER_VSOCK_PORT`]. The
/// launcher dials only after seeing it: connections made through vhost-device-vsock
/// before the guest's vsock driver is up sometimes hung the guest's device setup.
pub const ENFORCER_LISTENING_LINE: &str = "airlock-enforcer: listening on vsock port";

/// Most entries an ask's `reaches` may carry (where a call goes beyond its argv: see
/// `AskRequest.reaches`): the enforcer refuses a call with more, the launcher an ask.
pub const MAX_ASK_REACHES: usize = 32;
/// Most bytes in one entry of an ask's `reaches` (`key = value`).
pub const MAX_ASK_REACH_BYTES: usize = 1024;

/// Largest file `Collect` moves from the guest to the host: the enforcer sends no more
/// of one file, and the launcher accepts no more (it does not rely on the guest for it).
pub const MAX_COLLECT_BYTES: u64 = 256 << 20;
