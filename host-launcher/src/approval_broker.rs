//! The host's approval broker: where every ask waits for a person.
//!
//! An ask (a tool invocation the broker in the guest could not decide, an up-front
//! capability of a plan) becomes a [`Pending`] approval with an id, a deadline and a
//! digest of exactly the action that would happen: session, rule, program, full argv,
//! cwd and binary identity, or the capability. Channels (terminal, gRPC, a web page, a
//! script) watch [`Event`]s and answer with [`ApprovalBroker::resolve`]:
//! - an answer names one pending id, so it is bound to that digest, and is used once;
//! - the first answer wins; a late or second one gets [`ResolveError`];
//! - scope [`Scope::Session`] also approves later asks of the *same digest* in the same
//!   session (never another argv, never another session: narrower than any rule), and
//!   such grants can be listed and revoked while the session runs;
//! - no answer by the deadline, or the session ending, denies, with a reason the agent
//!   reads.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, oneshot};

/// Default time an ask waits for an answer.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(60);

/// What would happen if the ask were approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionKind {
    /// A tool invocation from the guest's broker.
    Tool {
        /// Program name as granted.
        program: String,
        /// The full argument vector, `argv[0]` included.
        argv: Vec<String>,
        /// Working directory in the sandbox.
        cwd: String,
        /// `sha256` of the binary that would run (hex).
        binary_sha256: String,
        /// Where the call reaches beyond its argv, as the guest's broker read it from
        /// the tool's configuration (`git push`: the remotes' URLs and the keys that
        /// pick the remote), one `key = value` each. Left out of the JSON when empty,
        /// so other tools' digests are as before.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reaches: Vec<String>,
    },
    /// A connection the agent opened to a name the manifest marks `ask` (the host's
    /// egress service asks before it resolves or dials anything).
    Net {
        /// DNS name, lower case.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// An up-front capability of a plan (a mount, the command, resources, an endpoint),
    /// as the policy saw it.
    Capability {
        /// The capability in text form (`fs rw /home/a/work`).
        capability: String,
    },
}

/// One action that needs an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// Session it belongs to.
    pub session_id: String,
    /// Rule that asked.
    pub rule_id: String,
    /// The rule's reason.
    pub reason: String,
    /// What would happen.
    #[serde(flatten)]
    pub kind: ActionKind,
}

impl Action {
    /// `sha256:` of the action's canonical JSON: what an answer is bound to. The session
    /// and the rule are part of it, so the same argv elsewhere is another action.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).expect("actions serialize");
        format!("sha256:{}", hex::encode(Sha256::digest(json)))
    }
}

/// How far an approval reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// This ask only.
    Once,
    /// This ask and later asks with the same digest in the same session.
    Session,
}

/// An approval waiting for its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// Id answers name.
    pub id: String,
    /// The action, exactly.
    pub action: Action,
    /// [`Action::digest`].
    pub digest: String,
    /// When it was asked (Unix milliseconds).
    pub asked_at_ms: u64,
    /// When it is denied without an answer (Unix milliseconds).
    pub deadline_ms: u64,
}

/// An answer from a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Let it happen, this far.
    Approve(Scope),
    /// Refuse it.
    Deny,
}

/// How an ask ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// The approval's id.
    pub id: String,
    /// The session whose ask it was.
    pub session_id: String,
    /// [`Action::digest`] of what was decided.
    pub digest: String,
    /// Whether it may happen.
    pub approved: bool,
    /// How far an approval reaches (`None` when denied).
    pub scope: Option<Scope>,
    /// Who or what answered: an approver's name, `session grant`, `timeout`,
    /// `session ended`.
    pub approver: String,
    /// The approver's comment, if any.
    pub comment: String,
    /// One line for the agent: who or what decided, or that time ran out.
    pub message: String,
    /// Who gave the answer as the Launcher API authenticated them (`uid 1000 …`,
    /// `certificate CN=…`), when it came through the API; `approver` is their own word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated_as: Option<String>,
}

/// What watchers see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new ask waits.
    Pending(Pending),
    /// An ask was answered (or timed out, or its session ended).
    Resolved(Resolution),
}

/// A `session`-scoped approval still in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionGrant {
    /// The action it covers, exactly.
    pub action: Action,
    /// Its digest.
    pub digest: String,
    /// Who granted it.
    pub approver: String,
}

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The id was answered already (or timed out, or its session ended).
    #[error("approval {0} is already decided; the first answer stands")]
    AlreadyDecided(String),
    /// No such approval was ever asked here.
    #[error("no approval {0} on this launcher")]
    Unknown(String),
}

/// An ask and how it ended: one line of a session's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decided {
    /// The ask as it was shown.
    pub pending: Pending,
    /// Its end.
    pub resolution: Resolution,
}

/// Where every decision is written before it takes effect (the audit log). A decision
/// that cannot be recorded is turned into a denial.
pub trait DecisionRecorder: Send + Sync {
    /// Records `decided` durably, or says why it could not.
    fn record(&self, decided: &Decided) -> Result<(), String>;
    /// Records the decisions the policy made alone for a session's plan, with the
    /// digest of the manifest minted from them, before that manifest is handed over.
    fn record_plan(&self, plan: &PlanDecisions) -> Result<(), String> {
        let _ = plan;
        Ok(())
    }
    /// Records a run-time decision the manifest's rules took without asking (a tool
    /// call allowed or denied outright), before it takes effect.
    fn record_automatic(&self, decision: &AutomaticDecision) -> Result<(), String> {
        let _ = decision;
        Ok(())
    }
    /// Records a call an authenticated API caller made on a session (`exec …`,
    /// `destroy`), before it takes effect.
    fn record_call(&self, call: &ApiCall) -> Result<(), String> {
        let _ = call;
        Ok(())
    }
    /// The session is over: seal what it recorded (a signed checkpoint).
    fn session_ended(&self, session_id: &str) -> Result<(), String> {
        let _ = session_id;
        Ok(())
    }
}

/// A run-time decision taken by the manifest's rules alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AutomaticDecision {
    /// The session.
    pub session_id: String,
    /// The invocation or connection, exactly (an [`ActionKind::Tool`] or
    /// [`ActionKind::Net`]).
    pub action: Action,
    /// `allow` or `deny`.
    pub verdict: String,
}

/// One decision of a plan, as the policy made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanDecision {
    /// `command`, `mount`, `net`, `tool`, `resources`.
    pub kind: String,
    /// The request as the policy saw it.
    pub capability: String,
    /// `allow`, `ask` or `deny`.
    pub verdict: String,
    /// The deciding rule.
    pub rule_id: String,
    /// Its reason.
    pub reason: String,
}

/// A session's plan-time decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanDecisions {
    /// The session.
    pub session_id: String,
    /// Every request's decision, in plan order.
    pub decisions: Vec<PlanDecision>,
    /// `sha256:` of the signed envelope handed to the enforcer (`None` when the plan
    /// was refused and nothing was minted).
    pub manifest_digest: Option<String>,
    /// The authenticated API caller that submitted the plan, if one did.
    pub requested_by: Option<String>,
}

/// A call an authenticated API caller made on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// The session.
    pub session_id: String,
    /// Who (an [`crate::api_access::Caller`], displayed).
    pub caller: String,
    /// What, in text: `exec git status`, `destroy`, `revoke sha256:…`.
    pub call: String,
}

/// Decisions kept for [`ApprovalBroker::history`] and to tell a late answer from an
/// unknown id; older ones are forgotten (their ids then read as unknown).
pub const MAX_DECIDED_KEPT: usize = 10_000;

struct Waiting {
    pending: Pending,
    reply: oneshot::Sender<Resolution>,
}

#[derive(Default)]
struct State {
    waiting: HashMap<String, Waiting>,
    decided: HashMap<String, Decided>,
    decided_order: std::collections::VecDeque<String>,
    grants: HashMap<String, HashMap<String, SessionGrant>>,
    ended: std::collections::HashSet<String>,
    next: u64,
}

impl State {
    fn remember(&mut self, d: Decided) {
        self.decided_order.push_back(d.pending.id.clone());
        self.decided.insert(d.pending.id.clone(), d);
        while self.decided_order.len() > MAX_DECIDED_KEPT {
            if let Some(old) = self.decided_order.pop_front() {
                self.decided.remove(&old);
            }
        }
    }
}

/// Denies an ask whose asker stopped waiting (its future was dropped).
struct Withdrawn<'a> {
    broker: &'a ApprovalBroker,
    id: Option<String>,
}

impl Drop for Withdrawn<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.broker.close(
                &id,
                "channel closed",
                "the asker went away before an answer (its channel closed)",
            );
        }
    }
}

/// An answer the broker gives itself, at once, to every ask (`--on-ask allow|deny`).
#[derive(Debug, Clone)]
pub struct AutoAnswer {
    /// The answer.
    pub answer: Answer,
    /// Who it is recorded as (`--on-ask deny`).
    pub approver: String,
}

/// Most asks waiting for a person at once, over every session: past it an ask is denied
/// at once, saying why (a session's own asks are bounded tighter where they start).
pub const MAX_WAITING_ASKS: usize = 256;

/// The broker; cheap to share (`Arc`).
pub struct ApprovalBroker {
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    timeout: Duration,
    auto: Option<AutoAnswer>,
    recorder: Option<Arc<dyn DecisionRecorder>>,
    /// Most asks waiting at once ([`MAX_WAITING_ASKS`] unless set).
    max_waiting: std::sync::atomic::AtomicUsize,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl std::fmt::Debug for ApprovalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalBroker")
            .field("timeout", &self.timeout)
            .field("auto", &self.auto)
            .field("pending", &self.lock().waiting.len())
            .finish_non_exhaustive()
    }
}

impl ApprovalBroker {
    /// A broker whose asks wait at most `timeout` unless an ask says otherwise.
    pub fn new(timeout: Duration) -> Arc<ApprovalBroker> {
        ApprovalBroker::configured(timeout, None, None)
    }

    /// A broker with an automatic answer (given at once to every ask that no session
    /// grant covers) and a recorder every decision goes through first.
    pub fn configured(
        timeout: Duration,
        auto: Option<AutoAnswer>,
        recorder: Option<Arc<dyn DecisionRecorder>>,
    ) -> Arc<ApprovalBroker> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(ApprovalBroker {
            state: Mutex::new(State::default()),
            events,
            timeout,
            auto,
            recorder,
            max_waiting: std::sync::atomic::AtomicUsize::new(MAX_WAITING_ASKS),
        })
    }

    /// Changes how many asks may wait at once (over every session).
    pub fn set_max_waiting(&self, most: usize) {
        self.max_waiting
            .store(most, std::sync::atomic::Ordering::SeqCst);
    }

    /// The default wait for an answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Records a run-time decision taken without asking (see
    /// [`DecisionRecorder::record_automatic`]); an error means it must not take effect.
    pub fn record_automatic(&self, decision: &AutomaticDecision) -> Result<(), String> {
        match &self.recorder {
            Some(r) => r.record_automatic(decision),
            None => Ok(()),
        }
    }

    /// Records a session's plan-time decisions (see [`DecisionRecorder::record_plan`]);
    /// an error means the session must not start.
    pub fn record_plan(&self, plan: &PlanDecisions) -> Result<(), String> {
        match &self.recorder {
            Some(r) => r.record_plan(plan),
            None => Ok(()),
        }
    }

    /// Records an API call on a session (see [`DecisionRecorder::record_call`]); an
    /// error means the call must not take effect.
    pub fn record_call(&self, call: &ApiCall) -> Result<(), String> {
        match &self.recorder {
            Some(r) => r.record_call(call),
            None => Ok(()),
        }
    }

    /// Writes `d` to the recorder; when it cannot, the decision becomes a denial that
    /// says so (a decision that is not on record does not take effect).
    fn recorded(&self, mut d: Decided) -> Decided {
        d.resolution.session_id = d.pending.action.session_id.clone();
        if let Some(rec) = &self.recorder {
            if let Err(why) = rec.record(&d) {
                d.resolution = Resolution {
                    approved: false,
                    scope: None,
                    message: format!("denied: the audit log cannot be written ({why})"),
                    ..d.resolution
                };
            }
        }
        d
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches asks and their resolutions from now on (see [`ApprovalBroker::pending`]
    /// for those already waiting).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Asks waiting now, oldest first.
    pub fn pending(&self) -> Vec<Pending> {
        let mut v: Vec<Pending> = self
            .lock()
            .waiting
            .values()
            .map(|w| w.pending.clone())
            .collect();
        v.sort_by_key(|p| (p.asked_at_ms, p.id.clone()));
        v
    }

    /// Puts `action` before the approvers and waits for the answer, the deadline
    /// (`timeout`, or the broker's), or the session's end. A `session` grant for the
    /// same digest answers at once, and so does an automatic answer.
    pub async fn ask(&self, action: Action, timeout: Option<Duration>) -> Resolution {
        let digest = action.digest();
        let wait = timeout.unwrap_or(self.timeout);
        let now = SystemTime::now();
        let (id, rx) = {
            let mut st = self.lock();
            st.next += 1;
            let id = format!("ap-{:06}", st.next);
            let pending = Pending {
                id: id.clone(),
                action,
                digest: digest.clone(),
                asked_at_ms: unix_ms(now),
                deadline_ms: unix_ms(now + wait),
            };
            let immediate = if st.ended.contains(&pending.action.session_id) {
                Some(denied(
                    &id,
                    &digest,
                    "session ended",
                    "the session has ended",
                ))
            } else if st.waiting.len() >= self.max_waiting.load(std::sync::atomic::Ordering::SeqCst)
            {
                // However many sessions ask, a person faces a bounded queue (and the
                // launcher a bounded set of waiting tasks).
                Some(denied(
                    &id,
                    &digest,
                    "too many asks",
                    &format!(
                        "{} asks are already waiting for a person; ask again once they are answered",
                        st.waiting.len()
                    ),
                ))
            } else if let Some(g) = st
                .grants
                .get(&pending.action.session_id)
                .and_then(|g| g.get(&digest))
            {
                Some(Resolution {
                    id: id.clone(),
                    session_id: String::new(),
                    digest: digest.clone(),
                    approved: true,
                    scope: Some(Scope::Session),
                    approver: "session grant".into(),
                    authenticated_as: None,
                    comment: String::new(),
                    message: format!(
                        "approved for this session by {} (the same action, approved earlier)",
                        g.approver
                    ),
                })
            } else {
                self.auto
                    .as_ref()
                    .map(|auto| answered(&id, &digest, auto.answer, &auto.approver, ""))
            };
            if let Some(resolution) = immediate {
                let d = self.recorded(Decided {
                    pending: pending.clone(),
                    resolution,
                });
                st.remember(d.clone());
                drop(st);
                // Nobody is asked: watchers see only how it ended (it is in the history
                // with what was asked), never a question they could try to answer.
                let _ = self.events.send(Event::Resolved(d.resolution.clone()));
                return d.resolution;
            }
            let (reply, rx) = oneshot::channel();
            st.waiting.insert(
                id.clone(),
                Waiting {
                    pending: pending.clone(),
                    reply,
                },
            );
            let _ = self.events.send(Event::Pending(pending));
            (id, rx)
        };
        // If whoever asked goes away first (the guest's connection closed, a session's
        // creation cancelled), what waits is denied rather than left pending forever.
        let mut withdrawn = Withdrawn {
            broker: self,
            id: Some(id.clone()),
        };
        let end = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            // Timed out (or the sender vanished): deny, unless an answer raced in.
            _ => self.close(
                &id,
                "timeout",
                &format!("no approver answered within {} s", wait.as_secs()),
            ),
        };
        withdrawn.id = None;
        end
    }

    /// Ends the ask `id` if it still waits, denied by `who` saying `message`; the
    /// decision it already has otherwise.
    fn close(&self, id: &str, who: &str, message: &str) -> Resolution {
        let mut st = self.lock();
        if let Some(done) = st.decided.get(id) {
            return done.resolution.clone();
        }
        let Some(w) = st.waiting.remove(id) else {
            return denied(id, "", who, "the ask was lost");
        };
        let d = self.recorded(Decided {
            resolution: denied(id, &w.pending.digest, who, message),
            pending: w.pending,
        });
        st.remember(d.clone());
        drop(st);
        let _ = self.events.send(Event::Resolved(d.resolution.clone()));
        d.resolution
    }

    /// Answers approval `id`. The first answer wins. A `session` approval is kept only
    /// when the decision is on record.
    pub fn resolve(
        &self,
        id: &str,
        answer: Answer,
        approver: &str,
        comment: &str,
    ) -> Result<Resolution, ResolveError> {
        self.resolve_as(id, answer, approver, comment, None)
    }

    /// [`ApprovalBroker::resolve`] by a caller the Launcher API authenticated (its
    /// description goes on the record next to the name the approver gave).
    pub fn resolve_as(
        &self,
        id: &str,
        answer: Answer,
        approver: &str,
        comment: &str,
        authenticated_as: Option<&str>,
    ) -> Result<Resolution, ResolveError> {
        let mut st = self.lock();
        let Some(w) = st.waiting.remove(id) else {
            return Err(if st.decided.contains_key(id) {
                ResolveError::AlreadyDecided(id.into())
            } else {
                ResolveError::Unknown(id.into())
            });
        };
        let who = if approver.trim().is_empty() {
            "an unnamed approver"
        } else {
            approver
        };
        let d = self.recorded(Decided {
            resolution: Resolution {
                authenticated_as: authenticated_as.map(str::to_string),
                ..answered(id, &w.pending.digest, answer, who, comment)
            },
            pending: w.pending,
        });
        let r = d.resolution.clone();
        if r.approved && r.scope == Some(Scope::Session) {
            st.grants
                .entry(d.pending.action.session_id.clone())
                .or_default()
                .insert(
                    d.pending.digest.clone(),
                    SessionGrant {
                        action: d.pending.action.clone(),
                        digest: d.pending.digest.clone(),
                        approver: who.to_string(),
                    },
                );
        }
        st.remember(d);
        drop(st);
        let _ = w.reply.send(r.clone());
        let _ = self.events.send(Event::Resolved(r.clone()));
        Ok(r)
    }

    /// Decided asks, oldest first (of `session_id`, or all), at most the last
    /// [`MAX_DECIDED_KEPT`].
    pub fn history(&self, session_id: Option<&str>) -> Vec<Decided> {
        let st = self.lock();
        st.decided_order
            .iter()
            .filter_map(|id| st.decided.get(id))
            .filter(|d| session_id.is_none_or(|s| d.pending.action.session_id == s))
            .cloned()
            .collect()
    }

    /// The `session`-scoped grants of `session_id` in force.
    pub fn session_grants(&self, session_id: &str) -> Vec<SessionGrant> {
        let mut v: Vec<SessionGrant> = self
            .lock()
            .grants
            .get(session_id)
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.digest.cmp(&b.digest));
        v
    }

    /// Revokes the `session` grant for `digest` in `session_id`; later identical asks
    /// wait for an answer again. Whether there was one.
    pub fn revoke(&self, session_id: &str, digest: &str) -> bool {
        self.lock()
            .grants
            .get_mut(session_id)
            .is_some_and(|g| g.remove(digest).is_some())
    }

    /// The session is over: everything it has waiting is denied, its grants go, and
    /// later asks from it are denied at once. Ending it again changes nothing (its
    /// checkpoint is written once).
    pub fn end_session(&self, session_id: &str) {
        let mut st = self.lock();
        st.grants.remove(session_id);
        if !st.ended.insert(session_id.to_string()) {
            return;
        }
        let ids: Vec<String> = st
            .waiting
            .iter()
            .filter(|(_, w)| w.pending.action.session_id == session_id)
            .map(|(id, _)| id.clone())
            .collect();
        let mut done = Vec::new();
        for id in ids {
            let w = st.waiting.remove(&id).expect("listed above");
            let d = self.recorded(Decided {
                resolution: denied(
                    &id,
                    &w.pending.digest,
                    "session ended",
                    "the session ended before anyone answered",
                ),
                pending: w.pending,
            });
            st.remember(d.clone());
            done.push((w.reply, d.resolution));
        }
        drop(st);
        for (reply, r) in done {
            let _ = reply.send(r.clone());
            let _ = self.events.send(Event::Resolved(r));
        }
        if let Some(rec) = &self.recorder {
            // The session is over whether or not its seal could be written; a missing
            // checkpoint is what `audit verify` reports.
            if let Err(why) = rec.session_ended(session_id) {
                eprintln!("airlock: audit log: sealing session {session_id}: {why}");
            }
        }
    }
}

/// The resolution of `answer` by `who`.
fn answered(id: &str, digest: &str, answer: Answer, who: &str, comment: &str) -> Resolution {
    match answer {
        Answer::Approve(scope) => Resolution {
            id: id.into(),
            session_id: String::new(),
            digest: digest.into(),
            approved: true,
            scope: Some(scope),
            approver: who.to_string(),
            comment: comment.to_string(),
            message: format!("approved by {who}"),
            authenticated_as: None,
        },
        Answer::Deny => {
            let mut r = denied(id, digest, who, &format!("denied by {who}"));
            if !comment.is_empty() {
                r.message = format!("{}: {comment}", r.message);
            }
            r.comment = comment.to_string();
            r
        }
    }
}

fn denied(id: &str, digest: &str, approver: &str, message: &str) -> Resolution {
    Resolution {
        id: id.into(),
        session_id: String::new(),
        digest: digest.into(),
        approved: false,
        scope: None,
        approver: approver.into(),
        comment: String::new(),
        message: message.into(),
        authenticated_as: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(session: &str, argv: &[&str]) -> Action {
        Action {
            session_id: session.into(),
            rule_id: "git-push".into(),
            reason: "pushing needs a human".into(),
            kind: ActionKind::Tool {
                program: "git".into(),
                argv: argv.iter().map(|a| a.to_string()).collect(),
                cwd: "/workspace".into(),
                binary_sha256: "ab".repeat(32),
                reaches: vec![],
            },
        }
    }

    #[test]
    fn where_a_call_reaches_is_part_of_its_digest_and_absent_when_empty() {
        let plain = push("s1", &["git", "push", "origin"]);
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("reaches"), "{json}");
        let mut there = plain.clone();
        if let ActionKind::Tool { reaches, .. } = &mut there.kind {
            reaches.push("remote.origin.url = /srv/a.git".into());
        }
        let mut elsewhere = plain.clone();
        if let ActionKind::Tool { reaches, .. } = &mut elsewhere.kind {
            reaches.push("remote.origin.url = /srv/b.git".into());
        }
        let digests = [plain.digest(), there.digest(), elsewhere.digest()];
        assert!(
            digests[0] != digests[1] && digests[1] != digests[2] && digests[0] != digests[2],
            "{digests:?}"
        );
    }

    /// Answers the next pending ask seen on `events` with `answer`.
    async fn answer_next(
        broker: &ApprovalBroker,
        events: &mut broadcast::Receiver<Event>,
        answer: Answer,
    ) -> Resolution {
        loop {
            if let Event::Pending(p) = events.recv().await.unwrap() {
                return broker.resolve(&p.id, answer, "alice", "").unwrap();
            }
        }
    }

    #[tokio::test]
    async fn an_answer_is_bound_to_one_action_and_used_once() {
        let b = ApprovalBroker::new(Duration::from_secs(5));
        let mut ev = b.subscribe();
        let (asked, answered) = tokio::join!(
            b.ask(push("s1", &["git", "push", "origin", "main"]), None),
            answer_next(&b, &mut ev, Answer::Approve(Scope::Once))
        );
        assert!(
            asked.approved && asked.message == "approved by alice",
            "{asked:?}"
        );
        assert_eq!(asked, answered);
        // The same id again: the first answer stands.
        assert_eq!(
            b.resolve(&asked.id, Answer::Deny, "bob", ""),
            Err(ResolveError::AlreadyDecided(asked.id.clone()))
        );
        assert!(matches!(
            b.resolve("ap-999999", Answer::Deny, "bob", ""),
            Err(ResolveError::Unknown(_))
        ));
        // `once` covers nothing later: the identical action waits again, and times out.
        let again = b
            .ask(
                push("s1", &["git", "push", "origin", "main"]),
                Some(Duration::from_millis(50)),
            )
            .await;
        assert!(!again.approved && again.approver == "timeout", "{again:?}");
        assert!(again.message.contains("no approver answered"), "{again:?}");
        assert!(b.pending().is_empty());
    }

    #[tokio::test]
    async fn a_session_grant_covers_only_the_same_digest_in_the_same_session_until_revoked() {
        let b = ApprovalBroker::new(Duration::from_secs(5));
        let mut ev = b.subscribe();
        let argv = ["git", "push", "origin", "main"];
        let (first, _) = tokio::join!(
            b.ask(push("s1", &argv), None),
            answer_next(&b, &mut ev, Answer::Approve(Scope::Session))
        );
        assert!(first.approved);
        let covered = b.ask(push("s1", &argv), None).await;
        assert_eq!(covered.approver, "session grant", "{covered:?}");
        let short = Some(Duration::from_millis(30));
        // One byte differs: not covered. Another session: not covered.
        let other_argv = b
            .ask(push("s1", &["git", "push", "origin", "maim"]), short)
            .await;
        assert!(!other_argv.approved, "{other_argv:?}");
        let other_session = b.ask(push("s2", &argv), short).await;
        assert!(!other_session.approved, "{other_session:?}");
        // The same argv where `origin` now names another repository: not covered.
        let mut elsewhere = push("s1", &argv);
        if let ActionKind::Tool { reaches, .. } = &mut elsewhere.kind {
            reaches.push("remote.origin.url = https://example.org/other.git".into());
        }
        let elsewhere = b.ask(elsewhere, short).await;
        assert!(!elsewhere.approved, "{elsewhere:?}");
        let grants = b.session_grants("s1");
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].approver, "alice");
        assert!(b.revoke("s1", &grants[0].digest));
        assert!(!b.revoke("s1", &grants[0].digest));
        let after = b.ask(push("s1", &argv), short).await;
        assert!(!after.approved && after.approver == "timeout", "{after:?}");
    }

    #[tokio::test]
    async fn a_denial_names_who_and_an_ended_session_denies_what_waits() {
        let b = ApprovalBroker::new(Duration::from_secs(5));
        let mut ev = b.subscribe();
        let (denied, _) = tokio::join!(b.ask(push("s1", &["git", "push"]), None), async {
            loop {
                if let Event::Pending(p) = ev.recv().await.unwrap() {
                    return b.resolve(&p.id, Answer::Deny, "bob", "not today").unwrap();
                }
            }
        });
        assert!(!denied.approved);
        assert_eq!(denied.message, "denied by bob: not today");

        let waiting = b.ask(push("s3", &["git", "push"]), None);
        let ending = async {
            while b.pending().is_empty() {
                tokio::task::yield_now().await;
            }
            b.end_session("s3");
        };
        let (r, ()) = tokio::join!(waiting, ending);
        assert!(!r.approved && r.approver == "session ended", "{r:?}");
        let late = b.ask(push("s3", &["git", "push"]), None).await;
        assert!(!late.approved && late.message.contains("ended"), "{late:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_concurrent_asks_across_four_sessions_each_get_their_own_answer() {
        let b = ApprovalBroker::new(Duration::from_secs(30));
        let mut ev = b.subscribe();
        // The approver approves asks whose last argument is even, denies the others.
        let approver = {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                let mut answered = 0;
                while answered < 100 {
                    if let Ok(Event::Pending(p)) = ev.recv().await {
                        let ActionKind::Tool { argv, .. } = &p.action.kind else {
                            panic!()
                        };
                        let n: u32 = argv.last().unwrap().parse().unwrap();
                        let a = if n.is_multiple_of(2) {
                            Answer::Approve(Scope::Once)
                        } else {
                            Answer::Deny
                        };
                        b.resolve(&p.id, a, "bot", "").unwrap();
                        answered += 1;
                    }
                }
            })
        };
        let mut asks = tokio::task::JoinSet::new();
        for i in 0..100u32 {
            let b = Arc::clone(&b);
            asks.spawn(async move {
                let n = i.to_string();
                let r = b
                    .ask(push(&format!("s{}", i % 4), &["git", "push", &n]), None)
                    .await;
                (i, r)
            });
        }
        let mut seen = 0;
        while let Some(done) = asks.join_next().await {
            let (i, r) = done.unwrap();
            assert_eq!(r.approved, i.is_multiple_of(2), "ask {i}: {r:?}");
            assert_eq!(
                r.digest,
                push(&format!("s{}", i % 4), &["git", "push", &i.to_string()]).digest()
            );
            seen += 1;
        }
        assert_eq!(seen, 100);
        approver.await.unwrap();
        assert!(b.pending().is_empty());
    }

    struct Failing(std::sync::atomic::AtomicBool);
    impl DecisionRecorder for Failing {
        fn record(&self, _: &Decided) -> Result<(), String> {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) {
                Err("disk full".into())
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn an_automatic_answer_is_immediate_recorded_and_kept_in_history() {
        let b = ApprovalBroker::configured(
            Duration::from_secs(5),
            Some(AutoAnswer {
                answer: Answer::Approve(Scope::Once),
                approver: "--on-ask allow".into(),
            }),
            None,
        );
        let mut ev = b.subscribe();
        let r = b.ask(push("s1", &["git", "push"]), None).await;
        assert!(r.approved && r.approver == "--on-ask allow", "{r:?}");
        assert_eq!(r.session_id, "s1");
        // Watchers see how it ended, and no question to answer.
        assert!(matches!(ev.recv().await.unwrap(), Event::Resolved(x) if x == r));
        let h = b.history(Some("s1"));
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].resolution, r);
        assert!(b.history(Some("s2")).is_empty());
        // The automatic answer never widens to a session grant.
        assert!(b.session_grants("s1").is_empty());
    }

    #[tokio::test]
    async fn a_decision_that_cannot_be_recorded_is_a_denial_and_grants_nothing() {
        let rec = Arc::new(Failing(std::sync::atomic::AtomicBool::new(true)));
        let b = ApprovalBroker::configured(Duration::from_secs(5), None, Some(rec.clone()));
        let mut ev = b.subscribe();
        let (asked, answered) = tokio::join!(
            b.ask(push("s1", &["git", "push"]), None),
            answer_next(&b, &mut ev, Answer::Approve(Scope::Session))
        );
        assert!(!asked.approved, "{asked:?}");
        assert!(
            asked.message.contains("audit log cannot be written"),
            "{asked:?}"
        );
        assert_eq!(asked, answered);
        assert!(
            b.session_grants("s1").is_empty(),
            "an unrecorded grant was kept"
        );
        // The neighbour: once the log works again, the same answer approves.
        rec.0.store(false, std::sync::atomic::Ordering::SeqCst);
        let (ok, _) = tokio::join!(
            b.ask(push("s1", &["git", "push"]), None),
            answer_next(&b, &mut ev, Answer::Approve(Scope::Once))
        );
        assert!(ok.approved, "{ok:?}");
    }

    #[tokio::test]
    async fn an_ask_whose_asker_goes_away_is_denied_not_left_waiting() {
        let b = ApprovalBroker::new(Duration::from_secs(30));
        let mut ev = b.subscribe();
        let asking = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.ask(push("s1", &["git", "push"]), None).await }
        });
        let Event::Pending(p) = ev.recv().await.unwrap() else {
            panic!()
        };
        asking.abort();
        let _ = asking.await;
        let Event::Resolved(r) = ev.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!((r.id.as_str(), r.approved), (p.id.as_str(), false));
        assert_eq!(r.approver, "channel closed");
        assert!(b.pending().is_empty());
        assert_eq!(
            b.resolve(&p.id, Answer::Approve(Scope::Once), "late", ""),
            Err(ResolveError::AlreadyDecided(p.id.clone()))
        );
    }

    #[tokio::test]
    async fn past_the_cap_on_waiting_asks_an_ask_is_denied_at_once_saying_why() {
        let b = ApprovalBroker::new(Duration::from_secs(30));
        let mut waiting = tokio::task::JoinSet::new();
        for i in 0..MAX_WAITING_ASKS {
            let b = Arc::clone(&b);
            let argv = format!("branch-{i}");
            waiting.spawn(async move { b.ask(push("s1", &["git", "push", &argv]), None).await });
        }
        while b.pending().len() < MAX_WAITING_ASKS {
            tokio::task::yield_now().await;
        }
        // Another session's ask too: the cap is over all of them.
        let over = b.ask(push("s2", &["git", "push"]), None).await;
        assert!(!over.approved, "{over:?}");
        assert!(over.message.contains("already waiting"), "{over:?}");
        assert_eq!(b.pending().len(), MAX_WAITING_ASKS, "nothing more waits");
        b.end_session("s1");
        while let Some(r) = waiting.join_next().await {
            assert!(!r.unwrap().approved);
        }
        // Room again.
        let b2 = Arc::clone(&b);
        let again = tokio::spawn(async move { b2.ask(push("s2", &["git", "push"]), None).await });
        while b.pending().is_empty() {
            tokio::task::yield_now().await;
        }
        b.end_session("s2");
        assert!(!again.await.unwrap().approved);
    }
}
