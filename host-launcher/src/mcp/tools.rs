//! The tools `airlock mcp` offers: names, what each can and cannot do, input schemas.

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Value};
use std::sync::Arc;

/// `evaluate_plan`.
pub const EVALUATE_PLAN: &str = "evaluate_plan";
/// `create_session`.
pub const CREATE_SESSION: &str = "create_session";
/// `run_command`.
pub const RUN_COMMAND: &str = "run_command";
/// `read_file`.
pub const READ_FILE: &str = "read_file";
/// `write_file`.
pub const WRITE_FILE: &str = "write_file";
/// `list_pending_asks`.
pub const LIST_PENDING_ASKS: &str = "list_pending_asks";
/// `destroy_session`.
pub const DESTROY_SESSION: &str = "destroy_session";

/// The program `read_file` runs in the session (`cat PATH`).
pub const READ_PROGRAM: &str = "cat";
/// The program `write_file` runs in the session (`tee PATH`, content on stdin).
pub const WRITE_PROGRAM: &str = "tee";

/// Arguments each tool takes.
pub const PLAN_ARGS: &[&str] = &["plan", "format"];
/// `run_command`'s.
pub const RUN_ARGS: &[&str] = &["session_id", "argv", "cwd", "env", "stdin", "timeout_secs"];
/// `read_file`'s.
pub const READ_ARGS: &[&str] = &["session_id", "path"];
/// `write_file`'s.
pub const WRITE_ARGS: &[&str] = &["session_id", "path", "content", "encoding"];
/// `list_pending_asks`'s.
pub const ASKS_ARGS: &[&str] = &["session_id"];
/// `destroy_session`'s.
pub const DESTROY_ARGS: &[&str] = &["session_id", "merge"];

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => unreachable!("tool schemas are objects"),
    }
}

fn session_id_prop() -> Value {
    json!({
        "type": "string",
        "pattern": "^[0-9a-f]{32}$",
        "description": "The session id create_session returned."
    })
}

fn plan_props() -> Value {
    json!({
        "plan": {
            "type": "string",
            "description": "The plan's text, TOML or JSON (at most 1 MiB): `command` (argv of the session's entrypoint), optional `cwd`, `env`, `tools` (bare program names the session may run), `[[mounts]]` (`host`, `guest`, `mode` = ro | rw | rw-live), `[[net]]` (`host`, `port`), `[resources]` (vcpus, memory_mib, disk_mib, pids, wall_time_secs, net_connections, net_mib)."
        },
        "format": {
            "type": "string",
            "enum": ["toml", "json"],
            "description": "How `plan` is written (default: JSON if it starts with `{`, else TOML)."
        }
    })
}

fn tool(
    name: &'static str,
    title: &str,
    description: &'static str,
    input: Value,
    (read_only, destructive, idempotent): (bool, bool, bool),
) -> Tool {
    let hints = ToolAnnotations::with_title(title)
        .read_only(read_only)
        .destructive(destructive)
        .idempotent(idempotent)
        // A session reaches what its plan was granted, network endpoints included.
        .open_world(!read_only);
    Tool::new(name, description, schema(input))
        .with_title(title)
        .with_annotations(hints)
}

/// Every tool, in the order `tools/list` gives them.
pub fn all() -> Vec<Tool> {
    vec![
        tool(
            EVALUATE_PLAN,
            "Evaluate a plan",
            "Decides every request of a plan (its command, mounts, network endpoints, tools, resources) against this server's policy and returns the decision report: per capability the verdict (allow, ask or deny), the id of the rule that decided and its reason, and the outcome (allowed, needs_approval, denied). Nothing is created or run, and nobody is asked. It cannot change the policy or any decision: a plan is granted only what the policy allows.",
            json!({
                "type": "object",
                "properties": plan_props(),
                "required": ["plan"],
                "additionalProperties": false
            }),
            (true, false, true),
        ),
        tool(
            CREATE_SESSION,
            "Create a session",
            "Creates a sandboxed session from a plan: the policy decides every request first; an `ask` on the command, a mount or the resources goes to this server's approvers (configured by whoever started it, never by the MCP client), and a denied or unapproved plan creates nothing (isError, naming each refusing rule). Otherwise a disposable microVM boots with exactly what was granted and the session id is returned with the grants: the entrypoint, mounts (guest path and mode), tools, network endpoints and resources. It cannot widen the policy, approve its own asks or share anything the plan did not ask for. `rw` mounts are copy-on-write: changes reach the host only through destroy_session's merge. The session is destroyed when its wall time runs out or when this server's stdin closes.",
            json!({
                "type": "object",
                "properties": plan_props(),
                "required": ["plan"],
                "additionalProperties": false
            }),
            (false, false, false),
        ),
        tool(
            RUN_COMMAND,
            "Run a command in a session",
            "Runs argv in a session, as the sandboxed agent, and returns its stdout, stderr and exit status (exit_code: the status, 128 + signal, 124 when the sandbox stopped it). argv[0] must be the session's entrypoint or a tool its plan was granted; a granted tool's invocation is decided by the manifest's rules in the sandbox (a denied or unapproved one exits 126 with the refusing rule on stderr). It cannot run ungranted programs, change PATH, reach files outside the session's mounts or network endpoints it was not granted, or outlive the session's wall time. Output over 1 MiB per stream is cut (the totals are reported); stdin is at most 2 MiB. isError is true when the command could not run or exited non-zero. No terminal: interactive programs get no input beyond `stdin`.",
            json!({
                "type": "object",
                "properties": {
                    "session_id": session_id_prop(),
                    "argv": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "description": "Program and arguments, one element each (no shell parsing)."
                    },
                    "cwd": {"type": "string", "description": "Absolute working directory in the session (default: the plan's)."},
                    "env": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Extra environment variables (PATH cannot be changed)."
                    },
                    "stdin": {"type": "string", "description": "Text for the command's stdin (then end of file)."},
                    "timeout_secs": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 86400,
                        "description": "Kill the command after this many seconds (default: only the session's wall time bounds it)."
                    }
                },
                "required": ["session_id", "argv"],
                "additionalProperties": false
            }),
            (false, true, false),
        ),
        tool(
            READ_FILE,
            "Read a file in a session",
            "Reads a file inside one of the session's mounts by running the granted tool `cat PATH` in the session as the agent: the plan must grant `cat`, the manifest's rules decide the call, and the sandbox decides what is readable. The text is returned as is, or base64 when it is not UTF-8; at most 1 MiB (`truncated` says when there was more). It cannot read outside the session's mounts, read what the agent could not, or follow the host's view of a path.",
            json!({
                "type": "object",
                "properties": {
                    "session_id": session_id_prop(),
                    "path": {"type": "string", "description": "Absolute, normalized path in the session, inside one of its mounts (e.g. /workspace/README.md)."}
                },
                "required": ["session_id", "path"],
                "additionalProperties": false
            }),
            (true, false, true),
        ),
        tool(
            WRITE_FILE,
            "Write a file in a session",
            "Creates or replaces a file inside one of the session's `rw` or `rw-live` mounts by running the granted tool `tee PATH` in the session as the agent, with the content on its stdin: the plan must grant `tee`, the manifest's rules decide the call, and the sandbox decides what is writable. In an `rw` mount the write lands in the session's copy-on-write layer and reaches the host only if destroy_session merges it through the gate; an `rw-live` mount writes the host directory at once. At most 2 MiB. It cannot write `ro` mounts, anything outside the mounts, or what the agent could not.",
            json!({
                "type": "object",
                "properties": {
                    "session_id": session_id_prop(),
                    "path": {"type": "string", "description": "Absolute, normalized path in the session, inside an rw or rw-live mount."},
                    "content": {"type": "string", "description": "The file's new content."},
                    "encoding": {
                        "type": "string",
                        "enum": ["utf8", "base64"],
                        "description": "How `content` is written (default utf8)."
                    }
                },
                "required": ["session_id", "path", "content"],
                "additionalProperties": false
            }),
            (false, true, true),
        ),
        tool(
            LIST_PENDING_ASKS,
            "List a session's asks",
            "Lists the session's asks waiting for a human (each with its approval id, the rule that asked and its reason, what would happen — the exact argv and cwd of a tool call, or the capability —, and its deadline), then those already answered, with who answered and how. It cannot answer them: the approvers this server was started with do (--approver-cmd, --on-ask, the approvals page), never the MCP client.",
            json!({
                "type": "object",
                "properties": {"session_id": session_id_prop()},
                "required": ["session_id"],
                "additionalProperties": false
            }),
            (true, false, true),
        ),
        tool(
            DESTROY_SESSION,
            "Destroy a session",
            "Destroys a session: its VM and everything in it are gone, its pending asks are denied, and its copy-on-write (`rw`) changes are discarded unless `merge` is `apply` (merged into the host through the merge-back gate, all or nothing; protected paths and quotas refuse what they must) or `dry_run` (reported only). Returns the merge report. It cannot bring a session back.",
            json!({
                "type": "object",
                "properties": {
                    "session_id": session_id_prop(),
                    "merge": {
                        "type": "string",
                        "enum": ["none", "dry_run", "apply"],
                        "description": "What becomes of the rw mounts' changes (default none: discarded)."
                    }
                },
                "required": ["session_id"],
                "additionalProperties": false
            }),
            (false, true, true),
        ),
    ]
}
