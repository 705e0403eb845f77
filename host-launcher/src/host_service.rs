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

use crate::approval_broker::{Action, ActionKind, ApprovalBroker};
use airlock_proto::pb::host_server::{Host, HostServer};
use airlock_proto::pb::{AskRequest, AskResponse, LogAck, LogLevel, LogRecord, Verdict};
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
}

/// Equal in constant time (the secret is compared without an early exit).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
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
        }
    }

    /// The gRPC server for it.
    pub fn into_server(self) -> HostServer<HostService> {
        HostServer::new(self)
    }

    /// The action to put before the approvers, decided again from the manifest this
    /// launcher minted: the rule and its reason are the host's, not the guest's, and an
    /// invocation the manifest does not mark `ask` is refused without asking anyone.
    fn action_for(&self, r: &AskRequest) -> Result<Action, String> {
        let Some(argv0) = r.argv.first() else {
            return Err("an ask with an empty argv".into());
        };
        let program = program_name(argv0).to_string();
        let Some(grant) = self.tools.get(&program) else {
            return Err(format!("`{program}` is not a granted tool of this session"));
        };
        if !r.program.is_empty() && r.program != program {
            return Err(format!(
                "the ask names program `{}` but its argv runs `{program}`",
                r.program
            ));
        }
        let mut argv = r.argv.clone();
        argv[0] = program.clone();
        let inv = Invocation::parse(&argv).map_err(|e| format!("{program}: {e}"))?;
        let decision = grant.decide(&inv);
        if decision.verdict != airlock_proto::verdict::Verdict::Ask {
            return Err(format!(
                "the launcher's copy of the manifest does not ask for this: rule `{}` says {} ({})",
                decision.decisive.rule_id, decision.verdict, decision.decisive.reason
            ));
        }
        Ok(Action {
            session_id: self.session_id.clone(),
            rule_id: decision.decisive.rule_id.clone(),
            reason: decision.decisive.reason.clone(),
            kind: ActionKind::Tool {
                program,
                argv,
                cwd: r.cwd.clone(),
                binary_sha256: r.binary_sha256.clone(),
            },
        })
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
        let size = r.argv.iter().map(|a| a.len() + 1).sum::<usize>()
            + r.rule_id.len()
            + r.cwd.len()
            + r.program.len()
            + r.binary_sha256.len();
        if size > MAX_ASK_BYTES {
            return Err(Status::invalid_argument(format!(
                "an ask of {size} bytes; the host hears at most {MAX_ASK_BYTES}"
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
        // The neighbour: an ordinary ask is heard.
        svc.ask(Request::new(ask(vec![7; 32], PUSH))).await.unwrap();
        assert_eq!(asks.lock().unwrap().len(), 1);
    }
}
