//! Up-front approvals: the `ask` decisions a plan needs answered before any manifest is
//! minted (the command, mounts, resources). Each goes to the [`ApprovalBroker`] as a
//! capability action, all at once, so one approver sees them together; a plan with an
//! ask nobody approved is refused exactly like a denied one, and nothing runs.

use crate::approval_broker::{Action, ActionKind, ApprovalBroker, PlanDecision, PlanDecisions};
use crate::mint::{mint, MintError, MintOptions};
use crate::plan::{evaluate, Plan, Report};
use crate::policy::Policy;
use airlock_proto::manifest::Manifest;
use airlock_proto::verdict::Verdict;
use std::sync::Arc;

/// What happens to the asks a plan needs answered before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpFront {
    /// Each is refused at once, nobody is asked (`APPROVAL_MODE_DENY_ASKS`).
    Deny,
    /// Each goes to the approval broker and waits for its answer or its deadline.
    Ask,
}

/// Why a plan got no manifest.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Denied (or an up-front ask answered no): nothing ran.
    #[error("plan denied, nothing ran: {}", .denials.join("; "))]
    Denied {
        /// The full decision report.
        report: Box<Report>,
        /// One line per refused request.
        denials: Vec<String>,
    },
    /// Minting failed for a reason that is not a decision (options, randomness).
    #[error("minting the manifest: {0}")]
    Mint(MintError),
}

/// The plan-time decisions of `report` for the audit log.
pub fn plan_decisions(
    session_id: &str,
    report: &Report,
    manifest_digest: Option<String>,
) -> PlanDecisions {
    PlanDecisions {
        session_id: session_id.to_string(),
        decisions: report
            .items
            .iter()
            .map(|i| PlanDecision {
                kind: i.kind.as_str().to_string(),
                capability: i.request.clone(),
                verdict: i.decision.verdict.to_string(),
                rule_id: i.decision.rule_id.clone(),
                reason: i.decision.reason.clone(),
            })
            .collect(),
        manifest_digest,
        requested_by: None,
    }
}

/// Most up-front asks one plan may put to a person; a plan with more is refused.
pub const MAX_UP_FRONT_ASKS: usize = 16;

/// Decides `plan` against `policy`, puts its up-front asks before the approvers of
/// `broker` as session `session_id` (or refuses them, per `up_front`), and mints the
/// manifest for what was granted. On success `opts.approve_asks` says whether asks were
/// approved, so a later mint of the same plan (bound to the boot's challenge) needs no
/// second round of questions. `requested_by` (an authenticated API caller) goes on
/// the record of a refusal.
pub async fn decide_and_mint(
    policy: &Policy,
    plan: &Plan,
    opts: &mut MintOptions,
    broker: &Arc<ApprovalBroker>,
    session_id: &str,
    up_front: UpFront,
    requested_by: Option<&str>,
) -> Result<(Report, Manifest), Refusal> {
    let decided =
        decide_and_mint_unrecorded(policy, plan, opts, broker, session_id, up_front).await;
    if let Err(Refusal::Denied { report, .. }) = &decided {
        // A refusal is on record too (nothing was minted, so nothing waits on it).
        let record = PlanDecisions {
            requested_by: requested_by.map(str::to_string),
            ..plan_decisions(session_id, report, None)
        };
        if let Err(why) = broker.record_plan(&record) {
            eprintln!("airlock: audit log: recording a refused plan: {why}");
        }
    }
    decided
}

async fn decide_and_mint_unrecorded(
    policy: &Policy,
    plan: &Plan,
    opts: &mut MintOptions,
    broker: &Arc<ApprovalBroker>,
    session_id: &str,
    up_front: UpFront,
) -> Result<(Report, Manifest), Refusal> {
    let report = evaluate(policy, plan);
    match mint(policy, plan, opts) {
        Ok(m) => Ok((report, m)),
        Err(MintError::Denied(denials)) => Err(Refusal::Denied {
            report: Box::new(report),
            denials,
        }),
        Err(MintError::NeedsApproval(asks)) if up_front == UpFront::Deny => Err(Refusal::Denied {
            report: Box::new(report),
            denials: asks
                .into_iter()
                .map(|a| format!("{a}; refused without asking (approval mode: deny asks)"))
                .collect(),
        }),
        Err(MintError::NeedsApproval(_)) => {
            let asked: Vec<_> = report
                .items
                .iter()
                .filter(|i| i.decision.verdict == Verdict::Ask && i.kind.asks_up_front())
                .collect();
            // A plan (which an agent may write, over MCP) cannot bury a person in asks:
            // past a handful, it is refused before anyone is asked.
            if asked.len() > MAX_UP_FRONT_ASKS {
                return Err(Refusal::Denied {
                    denials: vec![format!(
                        "the plan needs {} approvals at once (at most {MAX_UP_FRONT_ASKS} are put to a person): ask for fewer things, or have the policy decide them",
                        asked.len()
                    )],
                    report: Box::new(report),
                });
            }
            let mut waiting = tokio::task::JoinSet::new();
            for item in asked {
                let action = Action {
                    session_id: session_id.to_string(),
                    rule_id: item.decision.rule_id.clone(),
                    reason: item.decision.reason.clone(),
                    kind: ActionKind::Capability {
                        capability: format!("{} {}", item.kind.as_str(), item.request),
                    },
                };
                let broker = Arc::clone(broker);
                waiting.spawn(async move {
                    let shown = match &action.kind {
                        ActionKind::Capability { capability } => capability.clone(),
                        ActionKind::Tool { argv, .. } => argv.join(" "),
                        ActionKind::Net { host, port } => format!("{host}:{port}"),
                    };
                    let rule = action.rule_id.clone();
                    (shown, rule, broker.ask(action, None).await)
                });
            }
            let mut denials = Vec::new();
            while let Some(done) = waiting.join_next().await {
                match done {
                    Ok((_, _, r)) if r.approved => {}
                    Ok((shown, rule, r)) => denials.push(format!(
                        "`{shown}` needs approval (rule `{rule}`) and was not approved: {} (approval {})",
                        r.message, r.id
                    )),
                    Err(e) => denials.push(format!("an up-front ask was lost: {e}")),
                }
            }
            if !denials.is_empty() {
                denials.sort();
                return Err(Refusal::Denied {
                    report: Box::new(report),
                    denials,
                });
            }
            opts.approve_asks = true;
            match mint(policy, plan, opts) {
                Ok(m) => Ok((report, m)),
                Err(MintError::Denied(denials)) => Err(Refusal::Denied {
                    report: Box::new(report),
                    denials,
                }),
                Err(other) => Err(Refusal::Mint(other)),
            }
        }
        Err(other) => Err(Refusal::Mint(other)),
    }
}
