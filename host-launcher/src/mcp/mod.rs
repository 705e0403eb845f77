//! `airlock mcp`: the Model Context Protocol over stdio, for agents whose host speaks MCP.
//!
//! JSON-RPC 2.0 on stdin/stdout through the official Rust SDK ([`rmcp`]), at protocol
//! revision 2025-06-18 or later. The server offers seven tools — evaluate a plan,
//! create a session from a plan, run a command in it, read and write files inside its
//! granted mounts, list its asks, destroy it — and every one of them goes through the
//! same [`Launcher`] the gRPC server (`airlock serve`) uses: the policy, the approvers and
//! the manifest decide, never the MCP client. A denied plan is a tool result with
//! `isError: true` naming the rule (not a protocol error); a bad argument is a tool
//! error naming the argument.
//!
//! The launcher (image, key, VMM, approval broker, audit log) is made on the first tool
//! call that needs one, so `initialize`, `tools/list` and `evaluate_plan` work before a
//! guest image exists. Sessions this server created are destroyed when its stdin
//! closes (or it is told to stop), and each when its wall time runs out.
//!
//! Files: `read_file` and `write_file` have no launcher method of their own. They run
//! the granted tools `cat PATH` and `tee PATH` (content on stdin) in the session, as
//! the agent, through the same `Exec` as `run_command`: the plan must grant those
//! programs, the guest's broker decides each call by the manifest's rules (and records
//! it), and the sandbox's mounts and Landlock decide what can be read or written. This
//! server only refuses paths outside the session's mounts (and writes to `ro` ones)
//! before anything runs.

mod args;
mod server;
#[cfg(test)]
mod tests;
mod tools;

pub use server::AirlockMcp;

use crate::launcher::Launcher;
use crate::policy::Policy;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A launcher made on first use, with whatever must live as long as it (approver
/// channels, the approvals page).
pub struct LauncherParts {
    /// The launcher every session is created by.
    pub launcher: Launcher,
    /// Dropped when the server ends (e.g. approver channel handles).
    pub keep_alive: Box<dyn std::any::Any + Send>,
}

/// Makes the launcher. Called on the first tool call that needs one; a failure (no
/// image yet, no key) is that call's tool error, and the next call tries again.
pub type LauncherFactory = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<LauncherParts, String>> + Send>> + Send + Sync,
>;

/// Most bytes of a command's stdout, and of its stderr, a tool result carries (the
/// rest is counted, not kept); also the most `read_file` returns. The tools'
/// descriptions say so.
pub const OUTPUT_LIMIT: usize = 1 << 20;
/// Most sessions one MCP server holds at once.
pub const DEFAULT_MAX_SESSIONS: usize = 4;

/// What `airlock mcp` serves.
pub struct McpConfig {
    /// The policy `evaluate_plan` decides against: the same file the launcher loads.
    pub policy: Arc<Policy>,
    /// Makes the launcher on first use.
    pub launcher: LauncherFactory,
    /// Sessions at once ([`DEFAULT_MAX_SESSIONS`]).
    pub max_sessions: usize,
}

impl McpConfig {
    /// A configuration with the default limits.
    pub fn new(policy: Arc<Policy>, launcher: LauncherFactory) -> McpConfig {
        McpConfig {
            policy,
            launcher,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// Why the MCP server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The client did not complete the protocol's opening.
    #[error("MCP initialization failed: {0}")]
    Initialize(String),
    /// The server's task failed.
    #[error("the MCP server task failed: {0}")]
    Task(String),
}

/// Serves MCP on this process's stdin and stdout until stdin closes, then destroys the
/// sessions it created. Call within a multi-threaded tokio runtime; nothing else may
/// write to stdout meanwhile.
pub async fn serve_stdio(config: McpConfig) -> Result<(), McpError> {
    serve_stdio_until(config, std::future::pending()).await
}

/// [`serve_stdio`], also ending (and destroying the sessions) when `stop` resolves,
/// e.g. on SIGTERM. Reading stdin blocks a thread of the runtime's blocking pool: shut
/// the runtime down with a timeout (or in the background) afterwards.
pub async fn serve_stdio_until(
    config: McpConfig,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), McpError> {
    serve(config, rmcp::transport::stdio(), stop).await
}

/// Serves MCP on `transport` (any [`rmcp`] transport: a `(reader, writer)` pair, a
/// duplex stream…) until the client goes away or `stop` resolves; then destroys the
/// sessions this server created.
pub async fn serve<T, E, A>(
    config: McpConfig,
    transport: T,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), McpError>
where
    T: rmcp::transport::IntoTransport<rmcp::RoleServer, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    use rmcp::service::ServerInitializeError;
    use rmcp::ServiceExt;
    let handler = AirlockMcp::new(config);
    let state = handler.clone();
    tokio::pin!(stop);
    let served = tokio::select! {
        s = handler.serve(transport) => s,
        () = &mut stop => {
            state.close().await;
            return Ok(());
        }
    };
    let running = match served {
        Ok(r) => r,
        // The client left before it said hello: nothing was created.
        Err(ServerInitializeError::ConnectionClosed(_)) | Err(ServerInitializeError::Cancelled) => {
            state.close().await;
            return Ok(());
        }
        Err(e) => {
            state.close().await;
            return Err(McpError::Initialize(e.to_string()));
        }
    };
    let token = running.cancellation_token();
    let waited = tokio::select! {
        w = running.waiting() => w.map(drop).map_err(|e| McpError::Task(e.to_string())),
        () = &mut stop => {
            token.cancel();
            Ok(())
        }
    };
    state.close().await;
    waited
}
