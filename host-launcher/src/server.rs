//! `airlock serve`: the `Launcher` gRPC service over a [`Launcher`], for orchestration
//! stacks in any language, with gRPC health and reflection.
//!
//! Every call is authenticated before any handler sees it ([`crate::api_access`]): on
//! the Unix socket by the peer's uid and groups from the kernel, on TCP by a client
//! certificate (mutual TLS; TCP without it is refused). A caller owns the sessions it
//! creates and sees only those unless it is an operator; a session it does not own
//! reads as unknown. Then every handler checks before it acts: a plan is decided by
//! the policy before any VM boots, a command must be the manifest's entrypoint or a
//! granted tool before it is forwarded, and every call on a session is on the audit
//! log, with its caller, before it takes effect.

use crate::api_access::{
    authenticate_call, caller_of, AccessPolicy, Authenticated, PeerUnixStream, ServerTlsFiles,
};
use crate::approval::UpFront;
use crate::approval_broker::{
    Action, ActionKind, Answer, ApiCall, Event, Pending, Resolution, ResolveError, Scope,
};
use crate::launcher::{
    ExecEnd, ExecOutput, ExecSpec, ExecStream, InputSender, Launcher, Session, SessionError,
};
use crate::plan::{evaluate, Plan, Report};
use crate::workspace_merge::{CommandEnd, MergeOutcome, MergeWhen};
use airlock_proto::pb::launcher_server::{Launcher as LauncherRpc, LauncherServer};
use airlock_proto::pb::MergeMode as ApiMerge;
use airlock_proto::pb::{
    approval_event, exec_event, exec_input, exit_status, plan_source, ApprovalEvent, ApprovalMode,
    ApprovalRequest, ApprovalResolution, ApprovalScope, CapabilityDecision, CreateSessionRequest,
    CreateSessionResponse, DestroySessionRequest, DestroySessionResponse, EvaluatePlanRequest,
    EvaluatePlanResponse, ExecEvent, ExecInput, ExecRequest, ExitStatus, GetSessionRequest,
    Isolation, ListSessionGrantsRequest, ListSessionGrantsResponse, Outcome, PlanSource,
    ResolveApprovalRequest, ResolveApprovalResponse, RevokeSessionGrantRequest,
    RevokeSessionGrantResponse, SessionInfo, SessionState, Started, WatchApprovalsRequest,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// Where `airlock serve` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A Unix socket (0600 unless other local users are admitted).
    Unix(PathBuf),
    /// A TCP address: served with mutual TLS only.
    Tcp(std::net::SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("`unix:` needs a socket path".into());
            }
            Ok(Listen::Unix(PathBuf::from(p)))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            let addr: std::net::SocketAddr = a
                .parse()
                .map_err(|e| format!("`{a}` is not an address:port ({e})"))?;
            Ok(Listen::Tcp(addr))
        } else {
            Err(format!("`{s}` is not unix:PATH or tcp:ADDR"))
        }
    }
}

/// One session the server holds.
struct Entry {
    session: tokio::sync::Mutex<Option<Session>>,
    info: SessionInfo,
    /// The creator's [`crate::api_access::Caller::principal`].
    owner: String,
}

/// The `Launcher` service.
pub struct LauncherService {
    launcher: Arc<Launcher>,
    sessions: Arc<Mutex<HashMap<String, Arc<Entry>>>>,
    outputs: PathBuf,
}

fn decisions(report: &Report) -> Vec<CapabilityDecision> {
    report
        .items
        .iter()
        .map(|i| CapabilityDecision {
            kind: i.kind.as_str().to_string(),
            capability: i.request.clone(),
            verdict: airlock_proto::pb::Verdict::from(i.decision.verdict) as i32,
            rule_id: i.decision.rule_id.clone(),
            reason: i.decision.reason.clone(),
        })
        .collect()
}

fn outcome(report: &Report) -> Outcome {
    match report.outcome {
        crate::plan::Outcome::Allowed => Outcome::Allowed,
        crate::plan::Outcome::NeedsApproval => Outcome::NeedsApproval,
        crate::plan::Outcome::Denied => Outcome::Denied,
    }
}

fn parse_plan(source: Option<PlanSource>) -> Result<Plan, Status> {
    let format = source
        .and_then(|s| s.format)
        .ok_or_else(|| Status::invalid_argument("`plan` is required (json or toml)"))?;
    let parsed = match format {
        plan_source::Format::Json(t) => Plan::parse("request plan", &t, true),
        plan_source::Format::Toml(t) => Plan::parse("request plan", &t, false),
    };
    parsed.map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The gRPC status for a session error.
fn status(e: SessionError) -> Status {
    use crate::approval::Refusal;
    let msg = e.to_string();
    match e {
        SessionError::Refused(Refusal::Denied { .. }) => Status::permission_denied(msg),
        SessionError::NotGranted { .. } => Status::permission_denied(msg),
        SessionError::Share { .. } | SessionError::StdinTooLarge { .. } => {
            Status::invalid_argument(msg)
        }
        SessionError::WallTime(_) => Status::deadline_exceeded(msg),
        SessionError::VmLost { .. }
        | SessionError::Unreachable { .. }
        | SessionError::BootTimeout { .. } => Status::unavailable(msg),
        // The guest's own code, except that a guest cannot make a failure look like
        // success.
        SessionError::Enforcer { code, .. } if code != tonic::Code::Ok => Status::new(code, msg),
        _ => Status::internal(msg),
    }
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A merge outcome as the API carries it.
fn merge_report(o: &MergeOutcome) -> airlock_proto::pb::MergeReport {
    let (dry_run, json, error) = match o {
        MergeOutcome::Merged { report: r, .. } => (
            r.dry_run,
            serde_json::to_string(r).unwrap_or_default(),
            String::new(),
        ),
        MergeOutcome::Skipped(_) => (false, String::new(), String::new()),
        MergeOutcome::Failed(e) => (false, String::new(), e.clone()),
    };
    airlock_proto::pb::MergeReport {
        dry_run,
        summary: o.summary_line(),
        json,
        error,
    }
}

fn to_event(out: ExecOutput) -> ExecEvent {
    let event = match out {
        ExecOutput::Started(id) => exec_event::Event::Started(Started {
            exec_id: id,
            pid: 0,
        }),
        ExecOutput::Stdout(b) => exec_event::Event::Stdout(b),
        ExecOutput::Stderr(b) => exec_event::Event::Stderr(b),
        ExecOutput::Ended(end) => exec_event::Event::Exit(match end {
            ExecEnd::Exited(c) => ExitStatus {
                status: Some(exit_status::Status::Code(c)),
                stopped_by_sandbox: String::new(),
            },
            ExecEnd::Signaled(s) => ExitStatus {
                status: Some(exit_status::Status::Signal(s)),
                stopped_by_sandbox: String::new(),
            },
            ExecEnd::Stopped(why) => ExitStatus {
                status: Some(exit_status::Status::Signal(libc::SIGKILL)),
                stopped_by_sandbox: why,
            },
        }),
    };
    ExecEvent { event: Some(event) }
}

impl LauncherService {
    /// A service over `launcher`; collected files go under `outputs/<session id>/`.
    pub fn new(launcher: Arc<Launcher>, outputs: PathBuf) -> LauncherService {
        LauncherService {
            launcher,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            outputs,
        }
    }

    /// The session `id` if `who` may see it. Someone else's session reads as unknown:
    /// a caller learns nothing about sessions it does not own.
    fn entry(&self, id: &str, who: &Authenticated) -> Result<Arc<Entry>, Status> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|e| who.may_control(&e.owner))
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no session {id:?} of {} on this launcher",
                    who.caller.principal()
                ))
            })
    }

    /// Whether `who` may see session `id`'s asks and answer them.
    fn owns(&self, id: &str, who: &Authenticated) -> bool {
        who.operator || self.entry(id, who).is_ok()
    }

    /// An `Exec` or `ExecInteractive` (`interactive`: its input streams; with a tty
    /// either way): the session must be the caller's, the call goes on the audit log,
    /// then the command starts (checked against the manifest on the host first).
    async fn start_exec(
        &self,
        who: &Authenticated,
        r: ExecRequest,
        interactive: bool,
    ) -> Result<(Arc<Entry>, ExecStream, Option<InputSender>, ApiMerge), Status> {
        let entry = self.entry(&r.session_id, who)?;
        let how = match (interactive, r.tty) {
            (false, false) => "",
            (true, false) => " (stdin streamed)",
            (false, true) => " (on a tty)",
            (true, true) => " (stdin streamed, on a tty)",
        };
        self.record(
            &r.session_id,
            who,
            format!("exec{how} {}", shell_words::join(&r.argv)),
        )?;
        let mut guard = entry.session.lock().await;
        let session = guard
            .as_mut()
            .ok_or_else(|| Status::failed_precondition("the session is being destroyed"))?;
        let spec = ExecSpec {
            argv: r.argv,
            cwd: (!r.cwd.is_empty()).then_some(r.cwd),
            env: r.env.into_iter().collect(),
            stdin: r.stdin,
        };
        let (stream, input) = if interactive || r.tty {
            let tty = r.tty.then(|| r.window.unwrap_or_default());
            let (input, stream) = session.exec_interactive(spec, tty).await.map_err(status)?;
            (stream, Some(input))
        } else {
            (session.exec(spec).await.map_err(status)?, None)
        };
        drop(guard);
        let merge = ApiMerge::try_from(r.merge).unwrap_or(ApiMerge::Unspecified);
        Ok((entry, stream, input, merge))
    }

    /// Puts `call` on the audit log before it takes effect; a call that cannot be
    /// recorded is refused.
    fn record(&self, session_id: &str, who: &Authenticated, call: String) -> Result<(), Status> {
        self.launcher
            .config()
            .approvals
            .record_call(&ApiCall {
                session_id: session_id.to_string(),
                caller: who.caller.to_string(),
                call,
            })
            .map_err(|why| {
                Status::unavailable(format!(
                    "the audit log cannot be written ({why}); the call was not made"
                ))
            })
    }
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// A command's events as the API streams them: the guest's, then, when `merge` asks
/// for it, the merge of the workspaces after the exit.
fn forward_events(
    entry: Arc<Entry>,
    mut stream: ExecStream,
    merge: ApiMerge,
) -> BoxStream<ExecEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    tokio::spawn(async move {
        let mut end = CommandEnd::Stopped("the command's end was not seen".into());
        while let Some(ev) = stream.next().await {
            if let Ok(ExecOutput::Ended(e)) = &ev {
                end = e.command_end();
            }
            if tx.send(ev.map(to_event).map_err(status)).await.is_err() {
                return;
            }
        }
        let when = match merge {
            ApiMerge::Unspecified => return,
            ApiMerge::Apply => MergeWhen::Exited,
            ApiMerge::DryRun => MergeWhen::DryRun,
        };
        let outcome = match entry.session.lock().await.as_mut() {
            None => MergeOutcome::Failed("the session is being destroyed".into()),
            Some(session) => session.merge_after(&end, when).await,
        };
        let _ = tx
            .send(Ok(ExecEvent {
                event: Some(exec_event::Event::Merged(merge_report(&outcome))),
            }))
            .await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl LauncherRpc for LauncherService {
    async fn evaluate_plan(
        &self,
        req: Request<EvaluatePlanRequest>,
    ) -> Result<Response<EvaluatePlanResponse>, Status> {
        caller_of(&req)?;
        let plan = parse_plan(req.into_inner().plan)?;
        let report = evaluate(&self.launcher.config().policy, &plan);
        Ok(Response::new(EvaluatePlanResponse {
            outcome: outcome(&report) as i32,
            decisions: decisions(&report),
            policy_digest: report.policy_digest.clone(),
        }))
    }

    async fn create_session(
        &self,
        req: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        let who = caller_of(&req)?;
        let r = req.into_inner();
        match Isolation::try_from(r.isolation).unwrap_or(Isolation::Unspecified) {
            Isolation::Vm | Isolation::Unspecified => {}
            Isolation::Process => {
                return Err(Status::unimplemented(
                    "process isolation runs from the CLI only (airlock run --isolation process); the server runs VM sessions",
                ))
            }
        }
        let up_front =
            match ApprovalMode::try_from(r.approval_mode).unwrap_or(ApprovalMode::Unspecified) {
                ApprovalMode::DenyAsks | ApprovalMode::Unspecified => UpFront::Deny,
                ApprovalMode::WaitForApprover => UpFront::Ask,
            };
        let plan = parse_plan(r.plan)?;
        let session = self
            .launcher
            .create_session_for(&plan, up_front, Some(&who.caller.to_string()))
            .await
            .map_err(status)?;
        let id = session.id().to_string();
        let deadline = session.deadline();
        let decided = decisions(session.report());
        let response = CreateSessionResponse {
            session_id: id.clone(),
            state: SessionState::Ready as i32,
            decisions: decided.clone(),
            manifest_digest: session.manifest_digest().to_string(),
        };
        let entry = Arc::new(Entry {
            session: tokio::sync::Mutex::new(Some(session)),
            info: SessionInfo {
                session_id: id.clone(),
                state: SessionState::Ready as i32,
                isolation: Isolation::Vm as i32,
                created_at_unix_millis: unix_millis(),
                error: String::new(),
                decisions: decided,
                labels: r.labels,
                owner: who.caller.principal(),
            },
            owner: who.caller.principal(),
        });
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::clone(&entry));
        // A session nobody destroys ends with its wall time: the VM is not left running.
        let sessions = Arc::clone(&self.sessions);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let removed = sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if removed.is_some() {
                if let Some(s) = entry.session.lock().await.take() {
                    let _ = s.destroy().await;
                }
            }
        });
        Ok(Response::new(response))
    }

    type ExecStream = BoxStream<ExecEvent>;
    async fn exec(&self, req: Request<ExecRequest>) -> Result<Response<Self::ExecStream>, Status> {
        let who = caller_of(&req)?;
        let (entry, stream, input, merge) = self.start_exec(&who, req.into_inner(), false).await?;
        // The whole stdin came with the request: dropping the input is end of file.
        drop(input);
        Ok(Response::new(forward_events(entry, stream, merge)))
    }

    type ExecInteractiveStream = BoxStream<ExecEvent>;
    async fn exec_interactive(
        &self,
        req: Request<tonic::Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecInteractiveStream>, Status> {
        let who = caller_of(&req)?;
        let mut inbound = req.into_inner();
        let start = match inbound.message().await? {
            Some(ExecInput {
                input: Some(exec_input::Input::Start(start)),
            }) => start,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "ExecInteractive: the first message must be `start`",
                ))
            }
            None => {
                return Err(Status::invalid_argument(
                    "ExecInteractive: the stream ended before its `start`",
                ))
            }
        };
        let (entry, stream, input, merge) = self.start_exec(&who, start, true).await?;
        // (An interactive start always has an input.)
        if let Some(mut input) = input {
            tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        _ = input.closed() => break,
                        m = inbound.message() => m,
                    };
                    let delivered = match msg.map(|m| m.and_then(|m| m.input)) {
                        Ok(Some(exec_input::Input::Stdin(bytes))) => input.stdin(&bytes).await,
                        Ok(Some(exec_input::Input::Eof(_))) => input.eof().await,
                        Ok(Some(exec_input::Input::Resize(size))) => input.resize(size).await,
                        // A second `start` starts nothing.
                        Ok(Some(exec_input::Input::Start(_))) => true,
                        // The client half-closed its stream (or it broke): end of input,
                        // which dropping the sender says.
                        Ok(None) | Err(_) => false,
                    };
                    if !delivered {
                        break;
                    }
                }
            });
        }
        Ok(Response::new(forward_events(entry, stream, merge)))
    }

    async fn destroy_session(
        &self,
        req: Request<DestroySessionRequest>,
    ) -> Result<Response<DestroySessionResponse>, Status> {
        let who = caller_of(&req)?;
        let r = req.into_inner();
        let entry = self.entry(&r.session_id, &who)?;
        self.record(&r.session_id, &who, "destroy".into())?;
        let Some(mut session) = entry.session.lock().await.take() else {
            return Err(Status::failed_precondition(
                "the session is being destroyed",
            ));
        };
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&r.session_id);
        let mut collected = Vec::new();
        let mut failure = None;
        if !r.collect.is_empty() {
            let dest = self.outputs.join(&r.session_id);
            match std::fs::create_dir_all(&dest) {
                Ok(()) => match session.collect(&r.collect, &dest).await {
                    Ok(c) => collected = c,
                    Err(e) => failure = Some(status(e)),
                },
                Err(e) => failure = Some(Status::internal(format!("{}: {e}", dest.display()))),
            }
        }
        // The caller asks for the merge knowing the session's commands are over: what
        // the layer holds now is what it keeps.
        let merged = match ApiMerge::try_from(r.merge).unwrap_or(ApiMerge::Unspecified) {
            ApiMerge::Unspecified => None,
            mode => {
                let when = if mode == ApiMerge::DryRun {
                    MergeWhen::DryRun
                } else {
                    MergeWhen::Exited
                };
                let outcome = session.merge_after(&CommandEnd::Exited(0), when).await;
                Some(merge_report(&outcome))
            }
        };
        // Destroyed whatever the collect's outcome: a session is never left running.
        session.destroy().await.map_err(status)?;
        if let Some(f) = failure {
            return Err(f);
        }
        Ok(Response::new(DestroySessionResponse {
            state: SessionState::Destroyed as i32,
            collected,
            merged,
        }))
    }

    async fn get_session(
        &self,
        req: Request<GetSessionRequest>,
    ) -> Result<Response<SessionInfo>, Status> {
        let who = caller_of(&req)?;
        let entry = self.entry(&req.into_inner().session_id, &who)?;
        Ok(Response::new(entry.info.clone()))
    }

    type WatchApprovalsStream = BoxStream<ApprovalEvent>;
    async fn watch_approvals(
        &self,
        req: Request<WatchApprovalsRequest>,
    ) -> Result<Response<Self::WatchApprovalsStream>, Status> {
        use tokio::sync::broadcast::error::RecvError;
        let who = caller_of(&req)?;
        let only = req.into_inner().session_id;
        if !only.is_empty() {
            self.entry(&only, &who)?;
        }
        let broker = Arc::clone(&self.launcher.config().approvals);
        // Subscribed before the snapshot: an ask made in between is seen twice at
        // most (watchers key on the id), never missed.
        let mut events = broker.subscribe();
        let waiting = broker.pending();
        // A non-operator sees the asks of the sessions it owns, each checked when the
        // event is sent (its sessions come and go while it watches).
        let sessions = Arc::clone(&self.sessions);
        let wanted = move |session: &str| {
            (only.is_empty() || only == session)
                && (who.operator
                    || sessions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(session)
                        .is_some_and(|e| who.may_control(&e.owner)))
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            for p in waiting.iter().filter(|p| wanted(&p.action.session_id)) {
                if tx.send(Ok(pending_event(p))).await.is_err() {
                    return;
                }
            }
            loop {
                let event = match events.recv().await {
                    Ok(Event::Pending(p)) if wanted(&p.action.session_id) => pending_event(&p),
                    Ok(Event::Resolved(r)) if wanted(&r.session_id) => resolved_event(&r),
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        // Too slow a watcher: say so rather than drop asks silently.
                        let _ = tx
                            .send(Err(Status::resource_exhausted(format!(
                                "this watcher fell {n} events behind; watch again (asks waiting are sent first)"
                            ))))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resolve_approval(
        &self,
        req: Request<ResolveApprovalRequest>,
    ) -> Result<Response<ResolveApprovalResponse>, Status> {
        let who = caller_of(&req)?;
        let r = req.into_inner();
        if r.approver.trim().is_empty() {
            return Err(Status::invalid_argument(
                "`approver` is required: every answer names who gave it (it goes to the audit log)",
            ));
        }
        if r.approver.len() > 256 || r.comment.len() > 4096 {
            return Err(Status::invalid_argument(
                "`approver` is at most 256 bytes and `comment` at most 4096",
            ));
        }
        let answer = if r.approve {
            match ApprovalScope::try_from(r.scope).unwrap_or(ApprovalScope::Unspecified) {
                ApprovalScope::Session => Answer::Approve(Scope::Session),
                ApprovalScope::Once | ApprovalScope::Unspecified => Answer::Approve(Scope::Once),
            }
        } else {
            Answer::Deny
        };
        let broker = &self.launcher.config().approvals;
        let asked_in = broker
            .pending()
            .into_iter()
            .find(|p| p.id == r.approval_id)
            .map(|p| p.action.session_id);
        if let Some(session) = &asked_in {
            if !self.owns(session, &who) {
                return Err(Status::not_found(format!(
                    "no approval {:?} for {} on this launcher",
                    r.approval_id,
                    who.caller.principal()
                )));
            }
        }
        // Who answered, as they said it and as the server authenticated them.
        let caller = who.caller.to_string();
        match broker.resolve_as(
            &r.approval_id,
            answer,
            &r.approver,
            &r.comment,
            Some(&caller),
        ) {
            Ok(res) => Ok(Response::new(ResolveApprovalResponse {
                accepted: true,
                message: res.message.clone(),
                resolution: Some(resolution_pb(&res)),
            })),
            Err(e @ ResolveError::AlreadyDecided(_)) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            Err(e @ ResolveError::Unknown(_)) => Err(Status::not_found(e.to_string())),
        }
    }

    async fn list_session_grants(
        &self,
        req: Request<ListSessionGrantsRequest>,
    ) -> Result<Response<ListSessionGrantsResponse>, Status> {
        let who = caller_of(&req)?;
        let session_id = req.into_inner().session_id;
        self.entry(&session_id, &who)?;
        let grants = self
            .launcher
            .config()
            .approvals
            .session_grants(&session_id)
            .into_iter()
            .map(|g| airlock_proto::pb::SessionGrant {
                action: Some(request_pb(&g.action, &g.digest, "", 0, 0)),
                digest: g.digest,
                approver: g.approver,
            })
            .collect();
        Ok(Response::new(ListSessionGrantsResponse { grants }))
    }

    async fn revoke_session_grant(
        &self,
        req: Request<RevokeSessionGrantRequest>,
    ) -> Result<Response<RevokeSessionGrantResponse>, Status> {
        let who = caller_of(&req)?;
        let r = req.into_inner();
        self.entry(&r.session_id, &who)?;
        self.record(&r.session_id, &who, format!("revoke {}", r.digest))?;
        let revoked = self
            .launcher
            .config()
            .approvals
            .revoke(&r.session_id, &r.digest);
        Ok(Response::new(RevokeSessionGrantResponse { revoked }))
    }
}

/// The wire form of an action waiting (or granted) under `id`.
fn request_pb(
    action: &Action,
    digest: &str,
    id: &str,
    asked: u64,
    deadline: u64,
) -> ApprovalRequest {
    let (kind, shown, tool) = match &action.kind {
        ActionKind::Tool {
            program,
            argv,
            cwd,
            binary_sha256,
            reaches,
        } => (
            "tool",
            crate::approver_channels::quote_command_line(argv),
            Some((program, argv, cwd, binary_sha256, reaches)),
        ),
        ActionKind::Net { host, port } => ("net", format!("{host}:{port}"), None),
        ActionKind::Capability { capability } => ("capability", capability.clone(), None),
    };
    ApprovalRequest {
        approval_id: id.to_string(),
        session_id: action.session_id.clone(),
        capability: Some(CapabilityDecision {
            kind: kind.to_string(),
            capability: shown,
            verdict: airlock_proto::pb::Verdict::Ask as i32,
            rule_id: action.rule_id.clone(),
            reason: action.reason.clone(),
        }),
        requested_at_unix_millis: asked as i64,
        expires_at_unix_millis: deadline as i64,
        kind: kind.to_string(),
        program: tool.map(|t| t.0.clone()).unwrap_or_default(),
        argv: tool.map(|t| t.1.clone()).unwrap_or_default(),
        cwd: tool.map(|t| t.2.clone()).unwrap_or_default(),
        binary_sha256: tool.map(|t| t.3.clone()).unwrap_or_default(),
        reaches: tool.map(|t| t.4.clone()).unwrap_or_default(),
        digest: digest.to_string(),
    }
}

fn pending_event(p: &Pending) -> ApprovalEvent {
    ApprovalEvent {
        event: Some(approval_event::Event::Pending(request_pb(
            &p.action,
            &p.digest,
            &p.id,
            p.asked_at_ms,
            p.deadline_ms,
        ))),
    }
}

fn resolution_pb(r: &Resolution) -> ApprovalResolution {
    ApprovalResolution {
        approval_id: r.id.clone(),
        digest: r.digest.clone(),
        approved: r.approved,
        scope: match r.scope {
            Some(Scope::Once) => ApprovalScope::Once,
            Some(Scope::Session) => ApprovalScope::Session,
            None => ApprovalScope::Unspecified,
        } as i32,
        approver: r.approver.clone(),
        comment: r.comment.clone(),
        message: r.message.clone(),
        session_id: r.session_id.clone(),
    }
}

fn resolved_event(r: &Resolution) -> ApprovalEvent {
    ApprovalEvent {
        event: Some(approval_event::Event::Resolved(resolution_pb(r))),
    }
}

/// A gRPC channel to an `airlock serve` at `listen` (what `airlock approvals` uses);
/// TCP needs `tls` (the server admits nothing else there).
pub async fn connect(
    listen: &Listen,
    tls: Option<&crate::api_access::ClientTlsFiles>,
) -> Result<tonic::transport::Channel, ServeError> {
    let failed = |endpoint: String| {
        move |e: tonic::transport::Error| ServeError::Bind {
            endpoint,
            source: std::io::Error::other(format!("connecting: {e}")),
        }
    };
    match listen {
        Listen::Unix(path) => {
            let path = path.clone();
            let shown = format!("unix:{}", path.display());
            tonic::transport::Endpoint::from_static("http://launcher.airlock")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .map_err(failed(shown))
        }
        Listen::Tcp(addr) => {
            let shown = format!("tcp:{addr}");
            let tls = tls.ok_or_else(|| ServeError::TcpNeedsTls(shown.clone()))?;
            let config = tls.load().map_err(|e| ServeError::Tls(e.to_string()))?;
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .map_err(failed(shown.clone()))?
                .tls_config(config)
                .map_err(failed(shown.clone()))?
                .connect()
                .await
                .map_err(failed(shown))
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The endpoint could not be bound.
    #[error("listening on {endpoint}: {source}")]
    Bind {
        /// Where.
        endpoint: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Another server answers on the socket.
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    /// TCP without mutual TLS.
    #[error("{0}: the Launcher API is served over TCP with mutual TLS only (a server certificate and key, and the CA that issues client certificates); use a Unix socket, or give the TLS files")]
    TcpNeedsTls(String),
    /// The TLS files could not be loaded or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The transport failed.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A Unix listener at `path`: 0600, or 0666 when `shared` (other local users are
/// admitted, and `SO_PEERCRED` decides who gets in). A stale socket file (nobody
/// answering) is replaced; a live one is an error.
fn bind_unix(path: &Path, shared: bool) -> Result<tokio::net::UnixListener, ServeError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let bind_err = |e| ServeError::Bind {
        endpoint: format!("unix:{}", path.display()),
        source: e,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    if let Some(dir) = path.parent() {
        // A directory made here is private (the socket is 0600 only once bound) unless
        // others are admitted: then they must be able to reach the socket in it.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(if shared { 0o755 } else { 0o700 })
            .recursive(true)
            .create(dir)
            .map_err(bind_err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
    let mode = if shared { 0o666 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    Ok(listener)
}

/// How long in-flight calls get after a shutdown request before the server exits
/// anyway (a client holding its connection open must not keep the server up).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Who may call, and the TLS files for a TCP endpoint.
#[derive(Debug, Clone)]
pub struct ApiAccess {
    /// Who is admitted, and who is an operator.
    pub policy: AccessPolicy,
    /// Required for a TCP endpoint; unused on a Unix socket.
    pub tls: Option<ServerTlsFiles>,
}

impl Default for ApiAccess {
    /// The launcher's own uid, as operator; no TCP.
    fn default() -> ApiAccess {
        ApiAccess {
            policy: AccessPolicy::own_uid_only(),
            tls: None,
        }
    }
}

/// HTTP/2 receive window of one call's stream.
const STREAM_WINDOW_BYTES: u32 = 256 * 1024;
/// HTTP/2 receive window of a whole connection: 64 stalled streams' worth.
const CONNECTION_WINDOW_BYTES: u32 = 64 * STREAM_WINDOW_BYTES;

/// Serves `service` on `listen` (plus health and reflection, v1 and v1alpha) until
/// `shutdown` resolves (then at most [`SHUTDOWN_GRACE`] more), every call authenticated
/// per `access` first. `ready` is called once the endpoint accepts connections.
pub async fn serve(
    service: LauncherService,
    listen: &Listen,
    access: ApiAccess,
    ready: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Refused before anything listens: TCP without mutual TLS is never served.
    let tls = match (listen, &access.tls) {
        (Listen::Tcp(addr), None) => return Err(ServeError::TcpNeedsTls(format!("tcp:{addr}"))),
        (Listen::Tcp(_), Some(files)) => {
            Some(files.load().map_err(|e| ServeError::Tls(e.to_string()))?)
        }
        (Listen::Unix(_), _) => None,
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<LauncherServer<LauncherService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(airlock_proto::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_failed = |e: tonic_reflection::server::Error| ServeError::Bind {
        endpoint: "reflection".into(),
        source: std::io::Error::other(e.to_string()),
    };
    // v1alpha too: grpcurl before 1.9, Evans, Postman and Python's grpcio-reflection
    // client speak only it.
    let reflection_v1 = reflection().build_v1().map_err(reflection_failed)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_failed)?;
    let shared_socket = access.policy.admits_other_local_users();
    let policy = Arc::new(access.policy);
    // A stream's receive window is a small part of its connection's: an
    // ExecInteractive whose command stops reading holds back its own stream (that is
    // the back-pressure), not the client's other calls on the same connection.
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let router = builder
        .layer(tonic::service::InterceptorLayer::new(move |req| {
            authenticate_call(&policy, req)
        }))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(LauncherServer::new(service));
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let requested = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&down| down).await;
    };
    let graceful = requested(rx.clone());
    let hard_stop = {
        let rx = rx.clone();
        async move {
            requested(rx).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    let served = match listen {
        Listen::Unix(path) => {
            let listener = bind_unix(path, shared_socket)?;
            ready();
            // Each connection carries its peer's credentials, read once at accept.
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                |accepted| accepted.map(PeerUnixStream::accepted),
            );
            let served = tokio::select! {
                r = router.serve_with_incoming_shutdown(incoming, graceful) => r,
                _ = hard_stop => Ok(()),
            };
            let _ = std::fs::remove_file(path);
            served
        }
        Listen::Tcp(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| ServeError::Bind {
                        endpoint: format!("tcp:{addr}"),
                        source: e,
                    })?;
            ready();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::select! {
                r = router.serve_with_incoming_shutdown(incoming, graceful) => r,
                _ = hard_stop => Ok(()),
            }
        }
    };
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:/run/a.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/a.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:7000".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        // Any address parses; serving TCP without mutual TLS is refused by `serve`.
        assert!("tcp:0.0.0.0:7000".parse::<Listen>().is_ok());
        assert!("unix:".parse::<Listen>().is_err());
        assert!("http://x"
            .parse::<Listen>()
            .unwrap_err()
            .contains("unix:PATH"));
    }
}
