//! The `Host` service one session's enforcer calls (guest → host, over the VM's hybrid
//! vsock): run-time asks from the tool broker, and log records.
//!
//! It is served on a listener only that VM can reach (`<vsock socket>_1025`), and every
//! call must carry the session id and the per-session secret handed over in `Apply`:
//! the agent cannot open vsock (seccomp), and a call without the secret is refused
//! before anything is looked at. Asks are decided on the host, by the launcher's
//! approver; each one is recorded with its answer.

use crate::approval::OnAsk;
use airlock_proto::pb::host_server::{Host, HostServer};
use airlock_proto::pb::{AskRequest, AskResponse, LogAck, LogLevel, LogRecord, Verdict};
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
    on_ask: OnAsk,
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
    /// The service for `session_id` with `secret`; asks are answered by `on_ask` and
    /// recorded in `asks`; log records are appended to `guest_log`.
    pub fn new(
        session_id: String,
        secret: Vec<u8>,
        on_ask: OnAsk,
        asks: Arc<Mutex<Vec<AskRecord>>>,
        guest_log: PathBuf,
    ) -> HostService {
        HostService {
            session_id,
            secret,
            on_ask,
            asks,
            guest_log,
            log_written: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The gRPC server for it.
    pub fn into_server(self) -> HostServer<HostService> {
        HostServer::new(self)
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
        let size = r.argv.iter().map(|a| a.len() + 1).sum::<usize>() + r.rule_id.len();
        if size > MAX_ASK_BYTES {
            return Err(Status::invalid_argument(format!(
                "an ask of {size} bytes; the host hears at most {MAX_ASK_BYTES}"
            )));
        }
        let (allowed, reason) = match self.on_ask {
            OnAsk::Deny => (
                false,
                "no approver is configured on the launcher, so asks are answered no (--on-ask deny)"
                    .to_string(),
            ),
        };
        {
            // Counted and recorded under one lock: concurrent asks cannot pass the cap.
            let mut asks = self.asks.lock().unwrap_or_else(|p| p.into_inner());
            if asks.len() >= MAX_ASKS_PER_SESSION {
                return Err(Status::resource_exhausted(format!(
                    "this session already made {MAX_ASKS_PER_SESSION} asks; no more are heard"
                )));
            }
            asks.push(AskRecord {
                argv: r.argv,
                rule_id: r.rule_id,
                allowed,
                reason: reason.clone(),
            });
        }
        Ok(Response::new(AskResponse {
            verdict: if allowed {
                Verdict::Allow
            } else {
                Verdict::Deny
            } as i32,
            reason,
            approval_id: String::new(),
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

    fn service(dir: &std::path::Path) -> (HostService, Arc<Mutex<Vec<AskRecord>>>) {
        let asks = Arc::new(Mutex::new(Vec::new()));
        (
            HostService::new(
                "s1".into(),
                vec![7; 32],
                OnAsk::Deny,
                Arc::clone(&asks),
                dir.join("guest.log"),
            ),
            asks,
        )
    }

    fn ask(secret: Vec<u8>) -> AskRequest {
        AskRequest {
            session_id: "s1".into(),
            session_secret: secret,
            kind: "tool".into(),
            argv: vec!["git".into(), "push".into()],
            rule_id: "git-push".into(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_the_sessions_enforcer_is_heard_and_asks_are_answered_no_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, asks) = service(dir.path());
        for bad in [vec![], vec![7; 31], vec![8; 32]] {
            let e = svc.ask(Request::new(ask(bad))).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
        }
        let mut other = ask(vec![7; 32]);
        other.session_id = "s2".into();
        assert!(svc.ask(Request::new(other)).await.is_err());
        assert!(
            asks.lock().unwrap().is_empty(),
            "a refused call was recorded"
        );

        let r = svc
            .ask(Request::new(ask(vec![7; 32])))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.verdict, Verdict::Deny as i32);
        assert!(r.reason.contains("no approver"), "{}", r.reason);
        let rec = asks.lock().unwrap().clone();
        assert_eq!(rec.len(), 1);
        assert!(!rec[0].allowed);
        assert_eq!(
            (rec[0].argv.join(" "), rec[0].rule_id.as_str()),
            ("git push".into(), "git-push")
        );
        // A guest that floods the host with asks stops being heard.
        for _ in 1..MAX_ASKS_PER_SESSION {
            svc.ask(Request::new(ask(vec![7; 32]))).await.unwrap();
        }
        let e = svc.ask(Request::new(ask(vec![7; 32]))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(asks.lock().unwrap().len(), MAX_ASKS_PER_SESSION);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_oversized_ask_is_refused_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, asks) = service(dir.path());
        let mut big = ask(vec![7; 32]);
        big.argv.push("x".repeat(MAX_ASK_BYTES));
        let e = svc.ask(Request::new(big)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("at most"), "{}", e.message());
        assert!(asks.lock().unwrap().is_empty());
        // The neighbour: an ordinary ask is heard.
        svc.ask(Request::new(ask(vec![7; 32]))).await.unwrap();
        assert_eq!(asks.lock().unwrap().len(), 1);
    }
}
