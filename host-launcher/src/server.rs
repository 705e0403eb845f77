//! `airlock serve`: the `Launcher` gRPC service over a [`Launcher`], for orchestration
//! stacks in any language, with gRPC health and reflection.
//!
//! Every handler checks before it acts: a plan is decided by the policy before any VM
//! boots, a command must be the manifest's entrypoint or a granted tool before it is
//! forwarded, and calls naming an unknown session are refused. The default endpoint is
//! a Unix socket only its owner can connect to; TCP is opt-in and, having no
//! authentication yet, refused on anything but loopback.

use crate::approval::UpFront;
use crate::approval_broker::{
    Action, ActionKind, Answer, Event, Pending, Resolution, ResolveError, Scope,
};
use crate::launcher::{ExecEnd, ExecOutput, ExecSpec, Launcher, Session, SessionError};
use crate::plan::{evaluate, Plan, Report};
use crate::workspace_merge::{CommandEnd, MergeOutcome, MergeWhen};
use airlock_proto::pb::launcher_server::{Launcher as LauncherRpc, LauncherServer};
use airlock_proto::pb::MergeMode as ApiMerge;
use airlock_proto::pb::{
    approval_event, exec_event, exit_status, plan_source, ApprovalEvent, ApprovalMode,
    ApprovalRequest, ApprovalResolution, ApprovalScope, CapabilityDecision, CreateSessionRequest,
    CreateSessionResponse, DestroySessionRequest, DestroySessionResponse, EvaluatePlanRequest,
    EvaluatePlanResponse, ExecEvent, ExecRequest, ExitStatus, GetSessionRequest, Isolation,
    ListSessionGrantsRequest, ListSessionGrantsResponse, Outcome, PlanSource,
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
    /// A Unix socket (created 0600).
    Unix(PathBuf),
    /// A loopback TCP address.
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
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "tcp:{addr} is not a loopback address; the Launcher service has no authentication yet, so it is only served on loopback or a Unix socket"
                ));
            }
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

    fn entry(&self, id: &str) -> Result<Arc<Entry>, Status> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no session {id:?} on this launcher")))
    }
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl LauncherRpc for LauncherService {
    async fn evaluate_plan(
        &self,
        req: Request<EvaluatePlanRequest>,
    ) -> Result<Response<EvaluatePlanResponse>, Status> {
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
            .create_session_with(&plan, up_front)
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
            },
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
        let r = req.into_inner();
        if r.tty {
            return Err(Status::unimplemented(
                "Exec with a tty is not served by this launcher yet",
            ));
        }
        let entry = self.entry(&r.session_id)?;
        let mut guard = entry.session.lock().await;
        let session = guard
            .as_mut()
            .ok_or_else(|| Status::failed_precondition("the session is being destroyed"))?;
        let mut stream = session
            .exec(ExecSpec {
                argv: r.argv,
                cwd: (!r.cwd.is_empty()).then_some(r.cwd),
                env: r.env.into_iter().collect(),
                stdin: r.stdin,
            })
            .await
            .map_err(status)?;
        drop(guard);
        let merge = ApiMerge::try_from(r.merge).unwrap_or(ApiMerge::Unspecified);
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
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn destroy_session(
        &self,
        req: Request<DestroySessionRequest>,
    ) -> Result<Response<DestroySessionResponse>, Status> {
        let r = req.into_inner();
        let entry = self.entry(&r.session_id)?;
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
        let entry = self.entry(&req.into_inner().session_id)?;
        Ok(Response::new(entry.info.clone()))
    }

    type WatchApprovalsStream = BoxStream<ApprovalEvent>;
    async fn watch_approvals(
        &self,
        req: Request<WatchApprovalsRequest>,
    ) -> Result<Response<Self::WatchApprovalsStream>, Status> {
        use tokio::sync::broadcast::error::RecvError;
        let only = req.into_inner().session_id;
        let broker = Arc::clone(&self.launcher.config().approvals);
        // Subscribed before the snapshot: an ask made in between is seen twice at
        // most (watchers key on the id), never missed.
        let mut events = broker.subscribe();
        let waiting = broker.pending();
        let wanted = move |session: &str| only.is_empty() || only == session;
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
        match broker.resolve(&r.approval_id, answer, &r.approver, &r.comment) {
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
        let session_id = req.into_inner().session_id;
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
        let r = req.into_inner();
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
        } => (
            "tool",
            shell_words::join(argv),
            Some((program, argv, cwd, binary_sha256)),
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

/// A gRPC channel to an `airlock serve` at `listen` (what `airlock approvals` uses).
pub async fn connect(listen: &Listen) -> Result<tonic::transport::Channel, ServeError> {
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
        Listen::Tcp(addr) => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(failed(format!("tcp:{addr}")))?
            .connect()
            .await
            .map_err(failed(format!("tcp:{addr}"))),
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
    /// The transport failed.
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A Unix listener at `path`, 0600. A stale socket file (nobody answering) is replaced;
/// a live one is an error.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
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
        // A directory made here is private: the socket is 0600 only once bound.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(bind_err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// How long in-flight calls get after a shutdown request before the server exits
/// anyway (a client holding its connection open must not keep the server up).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves `service` on `listen` (plus health and reflection) until `shutdown` resolves
/// (then at most [`SHUTDOWN_GRACE`] more). `ready` is called once the endpoint accepts
/// connections.
pub async fn serve(
    service: LauncherService,
    listen: &Listen,
    ready: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<LauncherServer<LauncherService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(airlock_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Bind {
            endpoint: "reflection".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
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
            let listener = bind_unix(path)?;
            ready();
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
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
    fn endpoints_parse_and_tcp_is_loopback_only() {
        assert_eq!(
            "unix:/run/a.sock".parse::<Listen>().unwrap(),
            Listen::Unix("/run/a.sock".into())
        );
        assert_eq!(
            "tcp:127.0.0.1:7000".parse::<Listen>().unwrap(),
            Listen::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        let e = "tcp:0.0.0.0:7000".parse::<Listen>().unwrap_err();
        assert!(e.contains("not a loopback address"), "{e}");
        assert!("unix:".parse::<Listen>().is_err());
        assert!("http://x"
            .parse::<Listen>()
            .unwrap_err()
            .contains("unix:PATH"));
    }
}
