//! The `Host` service one session's enforcer calls (guest → host, over the VM's hybrid
//! vsock): run-time asks from the tool broker, and log records.
//!
//! It is served on a listener only that VM can reach (`<vsock socket>_1025`), and every
//! call must carry the session id and the per-session secret handed over in `Apply`:
//! the agent cannot open vsock (seccomp), and a call without the secret is refused
//! before anything is looked at. The same service is served to a process-isolated
//! session over a socket only its enforcer holds.
//!
//! An ask is decided again here from the launcher's own copy of the manifest (a guest
//! that lies about the rule, or asks for what its rules deny, gets no approval to
//! show), then put before the approvers through the [`ApprovalBroker`]; each one is
//! recorded with its answer.

use crate::approval_broker::{Action, ActionKind, ApprovalBroker, AutomaticDecision};
use airlock_proto::pb::host_server::{Host, HostServer};
use airlock_proto::pb::{
    AskRequest, AskResponse, LogAck, LogLevel, LogRecord, RecordRequest, RecordResponse, Verdict,
};
use airlock_proto::tool_invocation::{program_name, Invocation};
use airlock_proto::tool_rules::ToolGrant;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status, Streaming};

/// Most asks one session may make; past it every ask is refused (a guest that floods
/// the host is not heard further).
pub const MAX_ASKS_PER_SESSION: usize = 1000;
/// Most bytes of log one session may write into `guest.log`, over all its streams.
pub const MAX_GUEST_LOG_BYTES: u64 = 16 << 20;
/// Most bytes one ask may carry (its argv and rule id): what the host keeps per ask.
pub const MAX_ASK_BYTES: usize = 64 << 10;
/// Most tool calls decided without asking that one session may have recorded; past it
/// the host refuses to record more, so allowed calls stop running (a guest cannot grow
/// the audit log without bound).
pub const MAX_RECORDS_PER_SESSION: u64 = 100_000;
/// Most bytes of argv and text those records may carry together: the count alone would
/// let a session write [`MAX_RECORDS_PER_SESSION`] × [`MAX_ASK_BYTES`] (6 GiB) into the
/// audit log.
pub const MAX_RECORD_BYTES_PER_SESSION: u64 = 64 << 20;

/// One run-time ask and how it was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskRecord {
    /// The approval's id (empty when the host refused without asking anyone).
    pub approval_id: String,
    /// What was asked (argv for tools).
    pub argv: Vec<String>,
    /// The rule that said ask.
    pub rule_id: String,
    /// The answer.
    pub allowed: bool,
    /// Why.
    pub reason: String,
}

/// The `Host` service of one session.
pub struct HostService {
    session_id: String,
    secret: Vec<u8>,
    broker: Arc<ApprovalBroker>,
    /// The manifest's tool grants, by program: what the host itself says asks.
    tools: HashMap<String, ToolGrant>,
    asks: Arc<Mutex<Vec<AskRecord>>>,
    guest_log: PathBuf,
    /// Bytes this session's streams have written to `guest_log`, together.
    log_written: std::sync::atomic::AtomicU64,
    /// Decisions recorded through `Record`.
    recorded: std::sync::atomic::AtomicU64,
    /// Their argv and text, in bytes.
    recorded_bytes: std::sync::atomic::AtomicU64,
}

/// Refuses a call carrying more than [`MAX_ASK_BYTES`] of argv and text: what the host
/// keeps and shows per call.
fn within_size(what: &str, lists: [&[String]; 2], text: [&String; 4]) -> Result<u64, Status> {
    let size = lists
        .iter()
        .flat_map(|l| l.iter())
        .map(|a| a.len() + 1)
        .sum::<usize>()
        + text.iter().map(|t| t.len()).sum::<usize>();
    if size > MAX_ASK_BYTES {
        return Err(Status::invalid_argument(format!(
            "{what} of {size} bytes; the host hears at most {MAX_ASK_BYTES}"
        )));
    }
    Ok(size as u64)
}

/// Equal in constant time (the secret is compared without an early exit).
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl HostService {
    /// The service for `session_id` with `secret`, whose manifest grants `tools`; asks
    /// go to `broker` and are recorded in `asks`; log records are appended to
    /// `guest_log`.
    pub fn new(
        session_id: String,
        secret: Vec<u8>,
        tools: &[ToolGrant],
        broker: Arc<ApprovalBroker>,
        asks: Arc<Mutex<Vec<AskRecord>>>,
        guest_log: PathBuf,
    ) -> HostService {
        HostService {
            session_id,
            secret,
            broker,
            tools: tools
                .iter()
                .map(|t| (t.program.clone(), t.clone()))
                .collect(),
            asks,
            guest_log,
            log_written: std::sync::atomic::AtomicU64::new(0),
            recorded: std::sync::atomic::AtomicU64::new(0),
            recorded_bytes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The gRPC server for it.
    pub fn into_server(self) -> HostServer<HostService> {
        HostServer::new(self)
    }

    /// `argv` decided again from the manifest this launcher minted, as the action it
    /// is: the rule and its reason are the host's, not the guest's.
    fn decide_here(
        &self,
        claimed_program: &str,
        argv: &[String],
        cwd: &str,
        binary_sha256: &str,
        reaches: &[String],
    ) -> Result<(airlock_proto::verdict::Verdict, Action), String> {
        let Some(argv0) = argv.first() else {
            return Err("an empty argv".into());
        };
        let program = program_name(argv0).to_string();
        let Some(grant) = self.tools.get(&program) else {
            return Err(format!("`{program}` is not a granted tool of this session"));
        };
        if !claimed_program.is_empty() && claimed_program != program {
            return Err(format!(
                "the guest names program `{claimed_program}` but its argv runs `{program}`"
            ));
        }
        let mut argv = argv.to_vec();
        argv[0] = program.clone();
        let inv = Invocation::parse(&argv).map_err(|e| format!("{program}: {e}"))?;
        let decision = grant.decide(&inv);
        Ok((
            decision.verdict,
            Action {
                session_id: self.session_id.clone(),
                rule_id: decision.decisive.rule_id.clone(),
                reason: decision.decisive.reason.clone(),
                kind: ActionKind::Tool {
                    program,
                    argv,
                    cwd: cwd.to_string(),
                    binary_sha256: binary_sha256.to_string(),
                    reaches: reaches.to_vec(),
                },
            },
        ))
    }

    /// The action to put before the approvers: an invocation the launcher's copy of
    /// the manifest does not mark `ask` is refused without asking anyone.
    fn action_for(&self, r: &AskRequest) -> Result<Action, String> {
        let (verdict, action) =
            self.decide_here(&r.program, &r.argv, &r.cwd, &r.binary_sha256, &r.reaches)?;
        if verdict != airlock_proto::verdict::Verdict::Ask {
            return Err(format!(
                "the launcher's copy of the manifest does not ask for this: rule `{}` says {verdict} ({})",
                action.rule_id, action.reason
            ));
        }
        Ok(action)
    }

    fn authenticate(&self, session_id: &str, secret: &[u8]) -> Result<(), Status> {
        if session_id != self.session_id || !same_secret(secret, &self.secret) {
            return Err(Status::permission_denied(
                "not this session's enforcer (wrong session id or secret)",
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Host for HostService {
    async fn ask(&self, req: Request<AskRequest>) -> Result<Response<AskResponse>, Status> {
        let r = req.into_inner();
        self.authenticate(&r.session_id, &r.session_secret)?;
        if r.kind != "tool" {
            return Err(Status::invalid_argument(format!(
                "ask kind {:?}: this launcher decides tool asks only",
                r.kind
            )));
        }
        within_size(
            "an ask",
            [&r.argv, &r.reaches],
            [&r.rule_id, &r.cwd, &r.program, &r.binary_sha256],
        )?;
        if r.reaches.len() > airlock_proto::MAX_ASK_REACHES {
            return Err(Status::invalid_argument(format!(
                "an ask reaching {} places; the host hears at most {}",
                r.reaches.len(),
                airlock_proto::MAX_ASK_REACHES
            )));
        }
        if let Some(long) = r
            .reaches
            .iter()
            .find(|e| e.len() > airlock_proto::MAX_ASK_REACH_BYTES)
        {
            return Err(Status::invalid_argument(format!(
                "an ask whose `reaches` has an entry of {} bytes; the host hears at most {}",
                long.len(),
                airlock_proto::MAX_ASK_REACH_BYTES
            )));
        }
        let slot = {
            // Counted under one lock: concurrent asks cannot pass the cap.
            let mut asks = self.asks.lock().unwrap_or_else(|p| p.into_inner());
            if asks.len() >= MAX_ASKS_PER_SESSION {
                return Err(Status::resource_exhausted(format!(
                    "this session already made {MAX_ASKS_PER_SESSION} asks; no more are heard"
                )));
            }
            // Reserved now, filled in with the answer below.
            asks.push(AskRecord {
                approval_id: String::new(),
                argv: r.argv.clone(),
                rule_id: r.rule_id.clone(),
                allowed: false,
                reason: "waiting for an answer".into(),
            });
            asks.len() - 1
        };
        let (allowed, reason, approval_id) = match self.action_for(&r) {
            Err(refusal) => (false, refusal, String::new()),
            Ok(action) => {
                let rule = action.rule_id.clone();
                let answer = self.broker.ask(action, None).await;
                let reason = if answer.approved {
                    answer.message
                } else {
                    format!("{} (approval {}, rule `{rule}`)", answer.message, answer.id)
                };
                (answer.approved, reason, answer.id)
            }
        };
        if let Some(rec) = self
            .asks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(slot)
        {
            rec.allowed = allowed;
            rec.reason = reason.clone();
            rec.approval_id = approval_id.clone();
        }
        Ok(Response::new(AskResponse {
            verdict: if allowed {
                Verdict::Allow
            } else {
                Verdict::Deny
            } as i32,
            reason,
            approval_id,
        }))
    }

    async fn record(
        &self,
        req: Request<RecordRequest>,
    ) -> Result<Response<RecordResponse>, Status> {
        use airlock_proto::verdict::Verdict as V;
        use std::sync::atomic::Ordering;
        let r = req.into_inner();
        self.authenticate(&r.session_id, &r.session_secret)?;
        let size = within_size(
            "a record",
            [&r.argv, &[]],
            [&r.rule_id, &r.cwd, &r.program, &r.binary_sha256],
        )?;
        if self.recorded.fetch_add(1, Ordering::SeqCst) >= MAX_RECORDS_PER_SESSION {
            return Err(Status::resource_exhausted(format!(
                "this session already had {MAX_RECORDS_PER_SESSION} tool calls recorded; no more are"
            )));
        }
        if self.recorded_bytes.fetch_add(size, Ordering::SeqCst) + size
            > MAX_RECORD_BYTES_PER_SESSION
        {
            return Err(Status::resource_exhausted(format!(
                "this session's recorded tool calls already carry {} MiB of arguments; no more are recorded",
                MAX_RECORD_BYTES_PER_SESSION >> 20
            )));
        }
        let claimed = match Verdict::try_from(r.verdict) {
            Ok(Verdict::Allow) => V::Allow,
            Ok(Verdict::Deny) => V::Deny,
            _ => {
                return Err(Status::invalid_argument(
                    "a record is of an allow or a deny (asks go through Ask)",
                ))
            }
        };
        let (verdict, action) = self
            .decide_here(&r.program, &r.argv, &r.cwd, &r.binary_sha256, &[])
            .map_err(Status::permission_denied)?;
        // The host's own decision is what goes on record; a guest that says otherwise
        // is told no (an allow the host does not share does not run).
        self.broker
            .record_automatic(&AutomaticDecision {
                session_id: self.session_id.clone(),
                verdict: verdict.to_string(),
                action: action.clone(),
            })
            .map_err(|why| {
                Status::unavailable(format!("the audit log cannot be written: {why}"))
            })?;
        if verdict != claimed {
            return Err(Status::permission_denied(format!(
                "the launcher's copy of the manifest says {verdict} by rule `{}` ({}), not {claimed}",
                action.rule_id, action.reason
            )));
        }
        Ok(Response::new(RecordResponse {}))
    }

    async fn log(&self, req: Request<Streaming<LogRecord>>) -> Result<Response<LogAck>, Status> {
        use std::io::Write;
        let mut stream = req.into_inner();
        let mut accepted = 0u64;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.guest_log)
            .map_err(|e| Status::internal(format!("{}: {e}", self.guest_log.display())))?;
        while let Some(rec) = stream.message().await? {
            use std::sync::atomic::Ordering;
            self.authenticate(&rec.session_id, &rec.session_secret)?;
            let line_len = (rec.target.len() + rec.message.len() + 40) as u64;
            // Reserved before writing, across every stream of the session.
            let before = self.log_written.fetch_add(line_len, Ordering::SeqCst);
            if before.saturating_add(line_len) > MAX_GUEST_LOG_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "guest.log reached its {MAX_GUEST_LOG_BYTES}-byte limit"
                )));
            }
            let level = LogLevel::try_from(rec.level).unwrap_or(LogLevel::Unspecified);
            // One line per record, whatever the guest put in it.
            let one_line = |t: &str| t.replace(['\n', '\r'], " ");
            writeln!(
                file,
                "{} {:?} {}: {}",
                rec.unix_millis,
                level,
                one_line(&rec.target),
                one_line(&rec.message)
            )
            .map_err(|e| Status::internal(format!("{}: {e}", self.guest_log.display())))?;
            accepted += 1;
        }
        Ok(Response::new(LogAck { accepted }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval_broker::{Answer, AutoAnswer, Event, Scope};
    use airlock_proto::tool_rules::ToolGrant;
    use std::time::Duration;

    fn git_grant() -> ToolGrant {
        let policy = crate::policy::Policy::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../manifests/policies/coding-agent.toml"),
        )
        .unwrap();
        policy.tool_grant("git")
    }

    fn service(
        dir: &std::path::Path,
        broker: Arc<ApprovalBroker>,
    ) -> (HostService, Arc<Mutex<Vec<AskRecord>>>) {
        let asks = Arc::new(Mutex::new(Vec::new()));
        (
            HostService::new(
                "s1".into(),
                vec![7; 32],
                &[git_grant()],
                broker,
                Arc::clone(&asks),
                dir.join("guest.log"),
            ),
            asks,
        )
    }

    fn denying() -> Arc<ApprovalBroker> {
        ApprovalBroker::configured(
            Duration::from_secs(5),
            Some(AutoAnswer {
                answer: Answer::Deny,
                approver: "--on-ask deny".into(),
            }),
            None,
        )
    }

    fn ask(secret: Vec<u8>, argv: &[&str]) -> AskRequest {
        AskRequest {
            session_id: "s1".into(),
            session_secret: secret,
            kind: "tool".into(),
            program: "git".into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            cwd: "/work".into(),
            binary_sha256: "ab".repeat(32),
            rule_id: "git-push".into(),
            ..Default::default()
        }
    }

    const PUSH: &[&str] = &["git", "push", "origin", "main"];

    #[tokio::test(flavor = "current_thread")]
    async fn only_the_sessions_enforcer_is_heard_and_asks_reach_the_broker() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, asks) = service(dir.path(), denying());
        for bad in [vec![], vec![7; 31], vec![8; 32]] {
            let e = svc.ask(Request::new(ask(bad, PUSH))).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
        }
        let mut other = ask(vec![7; 32], PUSH);
        other.session_id = "s2".into();
        assert!(svc.ask(Request::new(other)).await.is_err());
        assert!(
            asks.lock().unwrap().is_empty(),
            "a refused call was recorded"
        );

        let r = svc
            .ask(Request::new(ask(vec![7; 32], PUSH)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.verdict, Verdict::Deny as i32);
        assert!(r.reason.contains("denied by --on-ask deny"), "{}", r.reason);
        assert!(r.approval_id.starts_with("ap-"), "{r:?}");
        let rec = asks.lock().unwrap().clone();
        assert_eq!(rec.len(), 1);
        assert!(!rec[0].allowed);
        assert_eq!(rec[0].approval_id, r.approval_id);
        assert_eq!(
            (rec[0].argv.join(" "), rec[0].rule_id.as_str()),
            ("git push origin main".into(), "git-push")
        );
        // A guest that floods the host with asks stops being heard.
        for _ in 1..MAX_ASKS_PER_SESSION {
            svc.ask(Request::new(ask(vec![7; 32], PUSH))).await.unwrap();
        }
        let e = svc
            .ask(Request::new(ask(vec![7; 32], PUSH)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(asks.lock().unwrap().len(), MAX_ASKS_PER_SESSION);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_host_decides_again_and_puts_exactly_the_action_before_the_approver() {
        let dir = tempfile::tempdir().unwrap();
        let broker = ApprovalBroker::new(Duration::from_secs(5));
        let mut events = broker.subscribe();
        let (svc, _) = service(dir.path(), Arc::clone(&broker));
        // What the manifest denies or allows is never put before anyone, whatever
        // rule the guest claims.
        for (argv, says) in [
            (&["git", "reset", "--hard", "HEAD"][..], "git-reset-hard"),
            (&["git", "status"][..], "git-status"),
            (&["rm", "-rf", "/"][..], "not a granted tool"),
        ] {
            let mut lie = ask(vec![7; 32], argv);
            lie.program = argv[0].into();
            let r = svc.ask(Request::new(lie)).await.unwrap().into_inner();
            assert_eq!(r.verdict, Verdict::Deny as i32, "{argv:?}");
            assert!(r.reason.contains(says), "{argv:?}: {}", r.reason);
        }
        assert!(broker.pending().is_empty() && broker.history(None).is_empty());
        // A program name that disagrees with argv is refused too.
        let mut mismatch = ask(vec![7; 32], PUSH);
        mismatch.program = "rg".into();
        let r = svc.ask(Request::new(mismatch)).await.unwrap().into_inner();
        assert!(r.reason.contains("names program"), "{}", r.reason);

        // The real ask: the approver sees the host's rule and reason and the exact
        // argv, cwd and binary; approving it lets it run.
        let approver = {
            let broker = Arc::clone(&broker);
            tokio::spawn(async move {
                loop {
                    if let Ok(Event::Pending(p)) = events.recv().await {
                        return (
                            p.clone(),
                            broker
                                .resolve(&p.id, Answer::Approve(Scope::Once), "alice", "")
                                .unwrap(),
                        );
                    }
                }
            })
        };
        let mut claimed = ask(vec![7; 32], PUSH);
        claimed.rule_id = "something-else".into();
        let r = svc.ask(Request::new(claimed)).await.unwrap().into_inner();
        let (shown, _) = approver.await.unwrap();
        assert_eq!(r.verdict, Verdict::Allow as i32, "{r:?}");
        assert_eq!(r.reason, "approved by alice");
        assert_eq!(shown.action.rule_id, "git-push");
        assert_eq!(
            shown.action.reason,
            "pushing publishes code under someone's name: a human decides"
        );
        assert_eq!(
            shown.action.kind,
            ActionKind::Tool {
                program: "git".into(),
                argv: PUSH.iter().map(|a| a.to_string()).collect(),
                cwd: "/work".into(),
                binary_sha256: "ab".repeat(32),
                reaches: vec![],
            }
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_oversized_ask_is_refused_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, asks) = service(dir.path(), denying());
        let mut big = ask(vec![7; 32], PUSH);
        big.argv.push("x".repeat(MAX_ASK_BYTES));
        let e = svc.ask(Request::new(big)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("at most"), "{}", e.message());
        assert!(asks.lock().unwrap().is_empty());
        // Where a call reaches: 32 entries of 1 KiB at most (a guest that sends more
        // would push the command off the person's screen).
        for (reaches, says) in [
            (vec!["k = v".to_string(); 33], "an ask reaching 33 places"),
            (vec!["x".repeat(1025)], "an entry of 1025 bytes"),
        ] {
            let mut wide = ask(vec![7; 32], PUSH);
            wide.reaches = reaches;
            let e = svc.ask(Request::new(wide)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(says), "{}", e.message());
        }
        assert!(asks.lock().unwrap().is_empty());
        // The neighbour: an ordinary ask is heard.
        svc.ask(Request::new(ask(vec![7; 32], PUSH))).await.unwrap();
        assert_eq!(asks.lock().unwrap().len(), 1);
    }

    struct Kept(Mutex<Vec<AutomaticDecision>>, bool);
    impl crate::approval_broker::DecisionRecorder for Kept {
        fn record(&self, _: &crate::approval_broker::Decided) -> Result<(), String> {
            Ok(())
        }
        fn record_automatic(&self, d: &AutomaticDecision) -> Result<(), String> {
            if self.1 {
                return Err("disk full".into());
            }
            self.0.lock().unwrap().push(d.clone());
            Ok(())
        }
    }

    fn record_of(argv: &[&str], verdict: Verdict) -> RecordRequest {
        RecordRequest {
            session_id: "s1".into(),
            session_secret: vec![7; 32],
            program: argv[0].into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            cwd: "/work".into(),
            binary_sha256: "cd".repeat(32),
            verdict: verdict as i32,
            rule_id: "whatever".into(),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn decisions_taken_without_asking_are_recorded_as_the_host_decides_them() {
        let dir = tempfile::tempdir().unwrap();
        let kept = Arc::new(Kept(Mutex::new(Vec::new()), false));
        let broker = ApprovalBroker::configured(Duration::from_secs(5), None, Some(kept.clone()));
        let (svc, _) = service(dir.path(), broker);
        svc.record(Request::new(record_of(&["git", "status"], Verdict::Allow)))
            .await
            .unwrap();
        // A guest that claims an allow the host's manifest does not give is refused,
        // and what goes on record is the host's decision.
        let e = svc
            .record(Request::new(record_of(
                &["git", "reset", "--hard", "HEAD"],
                Verdict::Allow,
            )))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("git-reset-hard"), "{}", e.message());
        // An ask is not a record.
        let e = svc
            .record(Request::new(record_of(&["git", "push"], Verdict::Ask)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let kept_now = kept.0.lock().unwrap().clone();
        assert_eq!(
            kept_now
                .iter()
                .map(|d| (d.verdict.as_str(), d.action.rule_id.as_str()))
                .collect::<Vec<_>>(),
            [("allow", "git-status"), ("deny", "git-reset-hard")]
        );
        // Without the secret, nothing is recorded.
        let mut forged = record_of(&["git", "status"], Verdict::Allow);
        forged.session_secret = vec![0; 32];
        assert_eq!(
            svc.record(Request::new(forged)).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(kept.0.lock().unwrap().len(), 2);

        // A log that cannot be written: the allowed call must not run.
        let failing = Arc::new(Kept(Mutex::new(Vec::new()), true));
        let broker = ApprovalBroker::configured(Duration::from_secs(5), None, Some(failing));
        let (svc, _) = service(dir.path(), broker);
        let e = svc
            .record(Request::new(record_of(&["git", "status"], Verdict::Allow)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(
            e.message().contains("audit log cannot be written"),
            "{}",
            e.message()
        );
    }
}
