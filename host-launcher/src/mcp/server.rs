//! The MCP handler: each tool call checked, then handed to the [`Launcher`].

use super::args::{session_id, ArgError, Args};
use super::tools::{self, READ_PROGRAM, WRITE_PROGRAM};
use super::{LauncherFactory, McpConfig, OUTPUT_LIMIT};
use crate::approval::{Refusal, UpFront};
use crate::launcher::MAX_EXEC_STDIN_BYTES;
use crate::launcher::{ExecEnd, ExecOutput, ExecSpec, Launcher, Session, SessionError};
use crate::plan::{evaluate, Plan, MAX_PLAN_BYTES};
use crate::policy::Policy;
use crate::workspace_merge::{CommandEnd, MergeWhen};
use airlock_proto::manifest::{validate_abs_path, Access};
use base64::Engine as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ProtocolVersion, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a killed command gets to report its end.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// How long closing waits for a session that is busy (merging) before leaving it to
/// be destroyed when it is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

const INSTRUCTIONS: &str = "Airlock runs commands in disposable sandboxes (microVMs) under a policy. \
Write a plan (the entrypoint command, the tools it may run, host directories to mount, network endpoints, resources), \
check it with evaluate_plan, start it with create_session, then run_command, read_file and write_file in the session, \
and destroy_session when done (merge=apply brings rw mounts' changes back to the host through the merge-back gate). \
The policy decides every request; asks are answered by the humans or programs this server was started with, never by \
this client; a refusal names the rule that refused.";

/// The launcher, once made.
struct Launched {
    launcher: Launcher,
    _keep_alive: Mutex<Box<dyn std::any::Any + Send>>,
}

/// One session this server created.
struct Entry {
    session: tokio::sync::Mutex<Option<Session>>,
    /// The manifest's mounts: guest path and mode.
    mounts: Vec<(String, Access)>,
    /// The manifest's entrypoint program and granted tools.
    entrypoint: String,
    tools: Vec<String>,
}

impl Entry {
    /// The mount `path` is strictly inside (guest path, mode).
    fn mount_of(&self, path: &str) -> Option<&(String, Access)> {
        self.mounts
            .iter()
            .filter(|(guest, _)| {
                path.strip_prefix(guest.as_str())
                    .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
            })
            .max_by_key(|(guest, _)| guest.len())
    }

    fn mounts_shown(&self) -> String {
        if self.mounts.is_empty() {
            return "it has none".into();
        }
        self.mounts
            .iter()
            .map(|(g, m)| format!("{g} ({})", access_name(*m)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the manifest lets `program` run (the session checks again).
    fn may_run(&self, program: &str) -> bool {
        self.entrypoint == program || self.tools.iter().any(|t| t == program)
    }
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Ro => "ro",
        Access::Rw => "rw",
        Access::RwLive => "rw-live",
    }
}

struct Inner {
    policy: Arc<Policy>,
    factory: LauncherFactory,
    launched: tokio::sync::OnceCell<Launched>,
    sessions: Mutex<HashMap<String, Arc<Entry>>>,
    /// Sessions being created (they count against the limit).
    creating: AtomicUsize,
    max_sessions: usize,
    closed: AtomicBool,
}

/// The `airlock mcp` server: an [`rmcp::ServerHandler`] over a lazily made [`Launcher`].
#[derive(Clone)]
pub struct AirlockMcp {
    inner: Arc<Inner>,
}

/// A tool call that did not do what was asked: its message (naming the argument, the
/// rule or the step) and what else the caller should see.
struct Failure {
    message: String,
    details: Option<Value>,
}

impl Failure {
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            details: None,
        }
    }
}

impl From<ArgError> for Failure {
    fn from(e: ArgError) -> Failure {
        Failure::new(format!("invalid arguments: {e}"))
    }
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Failure {
        match e {
            SessionError::Refused(Refusal::Denied { report, denials }) => Failure {
                message: format!("plan denied, nothing ran: {}", denials.join("; ")),
                details: Some(json!({
                    "outcome": report.outcome,
                    "report": *report,
                    "denials": denials,
                })),
            },
            other => Failure::new(other.to_string()),
        }
    }
}

/// What a tool returns: its structured result, and whether it is an error.
struct Done {
    value: Value,
    is_error: bool,
}

impl Done {
    fn ok(value: Value) -> Done {
        Done {
            value,
            is_error: false,
        }
    }
}

type Outcome = Result<Done, Failure>;

fn result_of(outcome: Outcome) -> CallToolResult {
    match outcome {
        Ok(Done { value, is_error }) => {
            let mut r = if is_error {
                CallToolResult::structured_error(value)
            } else {
                CallToolResult::structured(value)
            };
            // The text form is the same JSON, for clients that read text only.
            if let Some(v) = &r.structured_content {
                r.content = vec![ContentBlock::text(
                    serde_json::to_string_pretty(v).unwrap_or_default(),
                )];
            }
            r
        }
        Err(Failure { message, details }) => {
            let mut structured = json!({ "error": message });
            if let (Some(Value::Object(extra)), Value::Object(m)) = (details, &mut structured) {
                m.extend(extra);
            }
            let mut r = CallToolResult::error(vec![ContentBlock::text(message)]);
            r.structured_content = Some(structured);
            r
        }
    }
}

/// Bytes of one output stream, up to a cap; the rest is counted.
struct Capped {
    kept: Vec<u8>,
    total: u64,
    limit: usize,
}

impl Capped {
    fn new(limit: usize) -> Capped {
        Capped {
            kept: Vec::new(),
            total: 0,
            limit,
        }
    }

    fn push(&mut self, b: &[u8]) {
        self.total += b.len() as u64;
        let room = self.limit.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&b[..room.min(b.len())]);
    }

    fn truncated(&self) -> bool {
        self.total > self.kept.len() as u64
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }
}

/// A command that ran to its end.
struct Ran {
    end: ExecEnd,
    stdout: Capped,
    stderr: Capped,
    timed_out: bool,
}

impl Ran {
    fn failed(&self) -> bool {
        self.timed_out || self.end != ExecEnd::Exited(0)
    }

    /// One line: how it ended and what it said on stderr.
    fn why(&self, what: &str) -> String {
        let how = match &self.end {
            ExecEnd::Exited(c) => format!("exited {c}"),
            ExecEnd::Signaled(s) => format!("was killed by signal {s}"),
            ExecEnd::Stopped(why) => format!("was stopped by the sandbox ({why})"),
        };
        let said = self.stderr.text();
        let said = said.trim();
        if said.is_empty() {
            format!("`{what}` {how}")
        } else {
            format!("`{what}` {how}: {said}")
        }
    }
}

/// The plan in a call's `plan` (and `format`) arguments.
fn plan_arg(a: &Args<'_>) -> Result<Plan, Failure> {
    let text = a.string("plan")?;
    if text.len() as u64 > MAX_PLAN_BYTES {
        return Err(ArgError(format!(
            "argument `plan` is {} bytes; a plan is at most {MAX_PLAN_BYTES}",
            text.len()
        ))
        .into());
    }
    let json = match a.opt_choice("format", &["toml", "json"])?.as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => text.trim_start().starts_with('{'),
    };
    Plan::parse("argument `plan`", &text, json).map_err(|e| ArgError(e.to_string()).into())
}

/// An absolute, normalized path argument.
fn path_arg(a: &Args<'_>, name: &str) -> Result<String, Failure> {
    let p = a.string(name)?;
    validate_abs_path(&p).map_err(|why| ArgError(format!("argument `{name}`: {why}")))?;
    Ok(p)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Holds one of the server's session places while a session is being created.
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AirlockMcp {
    /// A server for `config`; nothing is made until a tool needs it.
    pub fn new(config: McpConfig) -> AirlockMcp {
        AirlockMcp {
            inner: Arc::new(Inner {
                policy: config.policy,
                factory: config.launcher,
                launched: tokio::sync::OnceCell::new(),
                sessions: Mutex::new(HashMap::new()),
                creating: AtomicUsize::new(0),
                max_sessions: config.max_sessions.max(1),
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The ids of the sessions this server holds.
    pub fn session_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.sessions().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Refuses new sessions and destroys every session this server created (the end of
    /// the server: stdin closed, or told to stop).
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let entries: Vec<Arc<Entry>> = self.sessions().drain().map(|(_, e)| e).collect();
        let mut destroying = tokio::task::JoinSet::new();
        for entry in entries {
            destroying.spawn(async move {
                // A session busy merging is dropped instead, which destroys it too.
                if let Ok(mut guard) = tokio::time::timeout(CLOSE_WAIT, entry.session.lock()).await
                {
                    if let Some(session) = guard.take() {
                        let _ = session.destroy().await;
                    }
                }
            });
        }
        while destroying.join_next().await.is_some() {}
    }

    async fn launcher(&self) -> Result<&Launcher, Failure> {
        let launched = self
            .inner
            .launched
            .get_or_try_init(|| async {
                let parts = (self.inner.factory)().await.map_err(|e| {
                    Failure::new(format!(
                        "no session can be created yet: the launcher could not be made: {e}"
                    ))
                })?;
                Ok::<_, Failure>(Launched {
                    launcher: parts.launcher,
                    _keep_alive: Mutex::new(parts.keep_alive),
                })
            })
            .await?;
        Ok(&launched.launcher)
    }

    fn entry(&self, id: &str) -> Result<Arc<Entry>, Failure> {
        self.sessions().get(id).cloned().ok_or_else(|| {
            Failure::new(format!(
                "no session {id} on this server: it was destroyed, ran out of its wall time, or was not created here"
            ))
        })
    }

    fn evaluate_plan(&self, a: &Args<'_>) -> Outcome {
        let plan = plan_arg(a)?;
        let report = evaluate(&self.inner.policy, &plan);
        Ok(Done::ok(
            serde_json::to_value(&report).map_err(|e| Failure::new(e.to_string()))?,
        ))
    }

    async fn create_session(&self, a: &Args<'_>) -> Outcome {
        let plan = plan_arg(a)?;
        let inner = &self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(Failure::new("this server is shutting down"));
        }
        let taken = inner.creating.fetch_add(1, Ordering::SeqCst);
        let _place = Place(&inner.creating);
        if taken + self.sessions().len() >= inner.max_sessions {
            return Err(Failure::new(format!(
                "this server holds at most {} sessions at once; destroy one first",
                inner.max_sessions
            )));
        }
        let launcher = self.launcher().await?;
        // Up-front asks go to this server's approvers (or are answered as they were
        // configured): the client has no say.
        let session = launcher.create_session_with(&plan, UpFront::Ask).await?;
        let m = session.manifest();
        let entry = Arc::new(Entry {
            mounts: m
                .mounts
                .iter()
                .map(|x| (x.guest_path.clone(), x.mode))
                .collect(),
            entrypoint: m.command.argv.first().cloned().unwrap_or_default(),
            tools: m.tools.iter().map(|t| t.program.clone()).collect(),
            session: tokio::sync::Mutex::new(None),
        });
        let id = session.id().to_string();
        let granted = json!({
            "session_id": id,
            "manifest_digest": session.manifest_digest(),
            "time_to_ready_ms": session.time_to_ready().as_millis() as u64,
            "granted": {
                "command": m.command.argv,
                "cwd": m.command.cwd,
                "mounts": m.mounts.iter().map(|x| json!({
                    "guest_path": x.guest_path,
                    "mode": access_name(x.mode),
                })).collect::<Vec<_>>(),
                "tools": entry.tools,
                "net": {
                    "allow": m.egress.allow.iter().map(|e| format!("{}:{}", e.host, e.port)).collect::<Vec<_>>(),
                    "ask": m.egress.ask.iter().map(|e| format!("{}:{}", e.host, e.port)).collect::<Vec<_>>(),
                },
                "resources": m.resources,
            },
            "report": session.report(),
        });
        let deadline = session.deadline();
        *entry.session.lock().await = Some(session);
        if inner.closed.load(Ordering::SeqCst) {
            if let Some(s) = entry.session.lock().await.take() {
                let _ = s.destroy().await;
            }
            return Err(Failure::new("this server is shutting down"));
        }
        self.sessions().insert(id.clone(), Arc::clone(&entry));
        // A session nobody destroys ends with its wall time: the VM is not left running.
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let Some(inner) = weak.upgrade() else { return };
            let removed = inner
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            drop(inner);
            if let Some(entry) = removed {
                if let Some(s) = entry.session.lock().await.take() {
                    let _ = s.destroy().await;
                }
            }
        });
        Ok(Done::ok(granted))
    }

    /// Runs `spec` in `entry`'s session to its end, killing it at `timeout` or when
    /// the call is cancelled.
    async fn exec(
        &self,
        entry: &Entry,
        spec: ExecSpec,
        timeout: Option<Duration>,
        cancelled: &CancellationToken,
    ) -> Result<Ran, Failure> {
        let mut stream = {
            let mut guard = entry.session.lock().await;
            let session = guard
                .as_mut()
                .ok_or_else(|| Failure::new("the session is being destroyed"))?;
            session.exec(spec).await?
        };
        let (mut stdout, mut stderr) = (Capped::new(OUTPUT_LIMIT), Capped::new(OUTPUT_LIMIT));
        let mut exec_id: Option<String> = None;
        let (mut timed_out, mut kill_wanted, mut killed) = (false, false, false);
        let kill_at = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut give_up_at: Option<tokio::time::Instant> = None;
        loop {
            if kill_wanted && !killed {
                if let Some(id) = &exec_id {
                    killed = true;
                    give_up_at = Some(tokio::time::Instant::now() + KILL_GRACE);
                    if let Some(s) = entry.session.lock().await.as_mut() {
                        let _ = s.signal(id, libc::SIGKILL).await;
                    }
                }
            }
            let ev = tokio::select! {
                ev = stream.next() => ev,
                () = sleep_until_some(kill_at), if !kill_wanted => {
                    timed_out = true;
                    kill_wanted = true;
                    continue;
                }
                () = cancelled.cancelled(), if !kill_wanted => {
                    kill_wanted = true;
                    continue;
                }
                () = sleep_until_some(give_up_at) => {
                    return Err(Failure::new(
                        "the command was killed but its end was not reported",
                    ));
                }
            };
            match ev {
                None => {
                    return Err(Failure::new(
                        "the command's stream ended without an exit status",
                    ))
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(ExecOutput::Started(id))) => exec_id = Some(id),
                Some(Ok(ExecOutput::Stdout(b))) => stdout.push(&b),
                Some(Ok(ExecOutput::Stderr(b))) => stderr.push(&b),
                Some(Ok(ExecOutput::Ended(end))) => {
                    return Ok(Ran {
                        end,
                        stdout,
                        stderr,
                        timed_out,
                    })
                }
            }
        }
    }

    async fn run_command(&self, a: &Args<'_>, cancelled: &CancellationToken) -> Outcome {
        let id = session_id(a)?;
        let argv = a.string_list("argv")?;
        let cwd = match a.opt_string("cwd")? {
            Some(c) => {
                validate_abs_path(&c).map_err(|why| ArgError(format!("argument `cwd`: {why}")))?;
                Some(c)
            }
            None => None,
        };
        let env = a.opt_string_map("env")?;
        if let Some((k, _)) = env
            .iter()
            .find(|(k, _)| k.is_empty() || k.contains(['=', '\0']))
        {
            return Err(ArgError(format!("argument `env`: {k:?} is not a variable name")).into());
        }
        let stdin = a.opt_string("stdin")?.unwrap_or_default().into_bytes();
        if stdin.len() > MAX_EXEC_STDIN_BYTES {
            return Err(ArgError(format!(
                "argument `stdin` is {} bytes; a command takes at most {MAX_EXEC_STDIN_BYTES}",
                stdin.len()
            ))
            .into());
        }
        let timeout = a
            .opt_u64("timeout_secs", 1..=86_400)?
            .map(Duration::from_secs);
        let entry = self.entry(&id)?;
        let ran = self
            .exec(
                &entry,
                ExecSpec {
                    argv,
                    cwd,
                    env,
                    stdin,
                },
                timeout,
                cancelled,
            )
            .await?;
        let (status, signal, stopped) = match &ran.end {
            ExecEnd::Exited(_) => ("exited", None, None),
            ExecEnd::Signaled(s) => ("signaled", Some(*s), None),
            ExecEnd::Stopped(why) => ("stopped", None, Some(why.clone())),
        };
        Ok(Done {
            is_error: ran.failed(),
            value: json!({
                "exit_code": ran.end.exit_code(),
                "status": status,
                "signal": signal,
                "stopped_by_sandbox": stopped,
                "timed_out": ran.timed_out,
                "stdout": ran.stdout.text(),
                "stderr": ran.stderr.text(),
                "stdout_bytes": ran.stdout.total,
                "stderr_bytes": ran.stderr.total,
                "stdout_truncated": ran.stdout.truncated(),
                "stderr_truncated": ran.stderr.truncated(),
            }),
        })
    }

    /// `entry`'s mount holding `path`, refusing what `tool` cannot do there.
    fn file_checks<'e>(
        entry: &'e Entry,
        tool: &str,
        program: &str,
        path: &str,
        write: bool,
    ) -> Result<&'e (String, Access), Failure> {
        let Some(mount) = entry.mount_of(path) else {
            return Err(Failure::new(format!(
                "`{path}` is not inside any of this session's mounts ({}): {tool} reaches only files in them",
                entry.mounts_shown()
            )));
        };
        if write && mount.1 == Access::Ro {
            return Err(Failure::new(format!(
                "`{path}` is in the read-only mount {}: {tool} writes only rw and rw-live mounts",
                mount.0
            )));
        }
        if !entry.may_run(program) {
            return Err(Failure::new(format!(
                "{tool} runs `{program} PATH` in the session as the agent, and this session was not granted `{program}`: add \"{program}\" to the plan's `tools` (the policy decides it)"
            )));
        }
        Ok(mount)
    }

    async fn read_file(&self, a: &Args<'_>, cancelled: &CancellationToken) -> Outcome {
        let id = session_id(a)?;
        let path = path_arg(a, "path")?;
        let entry = self.entry(&id)?;
        Self::file_checks(&entry, tools::READ_FILE, READ_PROGRAM, &path, false)?;
        let argv = vec![READ_PROGRAM.to_string(), path.clone()];
        let spec = ExecSpec {
            argv,
            ..Default::default()
        };
        let ran = self.exec(&entry, spec, None, cancelled).await?;
        if ran.failed() {
            return Err(Failure::new(ran.why(&format!("{READ_PROGRAM} {path}"))));
        }
        let (content, encoding) = match std::str::from_utf8(&ran.stdout.kept) {
            Ok(text) => (text.to_string(), "utf8"),
            // A cut in the middle of a character is still text.
            Err(e) if ran.stdout.truncated() && e.error_len().is_none() => (
                String::from_utf8_lossy(&ran.stdout.kept[..e.valid_up_to()]).into_owned(),
                "utf8",
            ),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(&ran.stdout.kept),
                "base64",
            ),
        };
        Ok(Done::ok(json!({
            "path": path,
            "content": content,
            "encoding": encoding,
            "bytes": ran.stdout.total,
            "truncated": ran.stdout.truncated(),
        })))
    }

    async fn write_file(&self, a: &Args<'_>, cancelled: &CancellationToken) -> Outcome {
        let id = session_id(a)?;
        let path = path_arg(a, "path")?;
        let content = a.string("content")?;
        let bytes = match a.opt_choice("encoding", &["utf8", "base64"])?.as_deref() {
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(content.trim())
                .map_err(|e| ArgError(format!("argument `content` is not base64: {e}")))?,
            _ => content.into_bytes(),
        };
        if bytes.len() > MAX_EXEC_STDIN_BYTES {
            return Err(ArgError(format!(
                "argument `content` is {} bytes; write_file takes at most {MAX_EXEC_STDIN_BYTES}",
                bytes.len()
            ))
            .into());
        }
        let entry = self.entry(&id)?;
        let (mount, mode) =
            Self::file_checks(&entry, tools::WRITE_FILE, WRITE_PROGRAM, &path, true)?.clone();
        let spec = ExecSpec {
            argv: vec![WRITE_PROGRAM.to_string(), path.clone()],
            stdin: bytes.clone(),
            ..Default::default()
        };
        let ran = self.exec(&entry, spec, None, cancelled).await?;
        if ran.failed() {
            return Err(Failure::new(ran.why(&format!("{WRITE_PROGRAM} {path}"))));
        }
        let lands = match mode {
            Access::RwLive => "written through to the host directory",
            _ => "in the session's copy-on-write layer: it reaches the host only through destroy_session with merge=apply",
        };
        Ok(Done::ok(json!({
            "path": path,
            "bytes_written": bytes.len(),
            "mount": mount,
            "mode": access_name(mode),
            "lands": lands,
        })))
    }

    async fn list_pending_asks(&self, a: &Args<'_>) -> Outcome {
        let id = session_id(a)?;
        self.entry(&id)?;
        let broker = &self.launcher().await?.config().approvals;
        let pending: Vec<Value> = broker
            .pending()
            .into_iter()
            .filter(|p| p.action.session_id == id)
            .map(|p| {
                json!({
                    "approval_id": p.id,
                    "rule_id": p.action.rule_id,
                    "reason": p.action.reason,
                    "action": p.action.kind,
                    "digest": p.digest,
                    "asked_at_ms": p.asked_at_ms,
                    "deadline_ms": p.deadline_ms,
                    "seconds_left": p.deadline_ms.saturating_sub(unix_ms()) / 1000,
                })
            })
            .collect();
        let answered: Vec<Value> = broker
            .history(Some(&id))
            .into_iter()
            .map(|d| {
                json!({
                    "approval_id": d.pending.id,
                    "rule_id": d.pending.action.rule_id,
                    "reason": d.pending.action.reason,
                    "action": d.pending.action.kind,
                    "approved": d.resolution.approved,
                    "scope": d.resolution.scope,
                    "approver": d.resolution.approver,
                    "comment": d.resolution.comment,
                    "message": d.resolution.message,
                })
            })
            .collect();
        Ok(Done::ok(json!({
            "session_id": id,
            "pending": pending,
            "answered": answered,
        })))
    }

    async fn destroy_session(&self, a: &Args<'_>) -> Outcome {
        let id = session_id(a)?;
        let when = match a
            .opt_choice("merge", &["none", "dry_run", "apply"])?
            .as_deref()
        {
            Some("apply") => Some(MergeWhen::Exited),
            Some("dry_run") => Some(MergeWhen::DryRun),
            _ => None,
        };
        let entry = self.entry(&id)?;
        let Some(mut session) = entry.session.lock().await.take() else {
            return Err(Failure::new("the session is already being destroyed"));
        };
        self.sessions().remove(&id);
        // The caller asks for the merge knowing the session's commands are over: what
        // the write layer holds now is what it keeps.
        let merge = match when {
            None if session.has_workspaces() => {
                json!({"status": "discarded", "summary": "nothing merged: merge was not asked for; the rw mounts' changes are gone with the session"})
            }
            None => Value::Null,
            Some(when) => session
                .merge_after(&CommandEnd::Exited(0), when)
                .await
                .to_json(),
        };
        session.destroy().await?;
        Ok(Done::ok(json!({
            "session_id": id,
            "destroyed": true,
            "merge": merge,
        })))
    }

    async fn call(
        &self,
        name: &str,
        arguments: Option<&JsonObject>,
        cancelled: &CancellationToken,
    ) -> Option<Outcome> {
        let tool = tool_static(name)?;
        let known = match tool {
            tools::EVALUATE_PLAN | tools::CREATE_SESSION => tools::PLAN_ARGS,
            tools::RUN_COMMAND => tools::RUN_ARGS,
            tools::READ_FILE => tools::READ_ARGS,
            tools::WRITE_FILE => tools::WRITE_ARGS,
            tools::LIST_PENDING_ASKS => tools::ASKS_ARGS,
            tools::DESTROY_SESSION => tools::DESTROY_ARGS,
            _ => return None,
        };
        let a = match Args::new(tool, arguments, known) {
            Ok(a) => a,
            Err(e) => return Some(Err(e.into())),
        };
        Some(match tool {
            tools::EVALUATE_PLAN => self.evaluate_plan(&a),
            tools::CREATE_SESSION => self.create_session(&a).await,
            tools::RUN_COMMAND => self.run_command(&a, cancelled).await,
            tools::READ_FILE => self.read_file(&a, cancelled).await,
            tools::WRITE_FILE => self.write_file(&a, cancelled).await,
            tools::LIST_PENDING_ASKS => self.list_pending_asks(&a).await,
            _ => self.destroy_session(&a).await,
        })
    }
}

/// `name` as one of the tools' own names.
fn tool_static(name: &str) -> Option<&'static str> {
    tools::all()
        .iter()
        .find(|t| t.name == name)
        .map(|t| match t.name {
            Cow::Borrowed(s) => s,
            Cow::Owned(_) => unreachable!("tool names are static"),
        })
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl ServerHandler for AirlockMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("airlock", env!("CARGO_PKG_VERSION"))
                    .with_title("Airlock: sandboxed sessions under a policy"),
            )
            .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
            .with_instructions(INSTRUCTIONS)
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(&SUPPORTED)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::all()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        match self
            .call(&request.name, request.arguments.as_ref(), &context.ct)
            .await
        {
            Some(outcome) => Ok(result_of(outcome).into()),
            None => Err(ErrorData::invalid_params(
                format!(
                    "unknown tool `{}`: this server offers {}",
                    request.name,
                    tools::all()
                        .iter()
                        .map(|t| t.name.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None,
            )),
        }
    }
}

/// Protocol revisions this server speaks: 2025-06-18 and later.
static SUPPORTED: [ProtocolVersion; 3] = [
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2026_07_28,
];
