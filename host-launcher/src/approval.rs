//! Up-front approvals: the `ask` decisions a plan needs answered before any manifest is
//! minted (mounts, tools' existence, resources). Unanswered means no: a plan with an
//! ask nobody approved is refused exactly like a denied one, and nothing runs.

use crate::mint::{mint, MintError, MintOptions};
use crate::plan::{evaluate, Plan, Report};
use crate::policy::Policy;
use airlock_proto::manifest::Manifest;

/// What answers an `ask` that must be answered before the session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAsk {
    /// Answer no: the plan is refused.
    Deny,
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

/// Decides `plan` against `policy`, answers its up-front asks with `on_ask`, and mints
/// the manifest for what was granted.
pub fn decide_and_mint(
    policy: &Policy,
    plan: &Plan,
    opts: &MintOptions,
    on_ask: OnAsk,
) -> Result<(Report, Manifest), Refusal> {
    let report = evaluate(policy, plan);
    match mint(policy, plan, opts) {
        Ok(m) => Ok((report, m)),
        Err(MintError::Denied(denials)) => Err(Refusal::Denied {
            report: Box::new(report),
            denials,
        }),
        Err(MintError::NeedsApproval(asks)) => match on_ask {
            OnAsk::Deny => Err(Refusal::Denied {
                report: Box::new(report),
                denials: asks
                    .into_iter()
                    .map(|a| format!("{a}; answered no by --on-ask deny"))
                    .collect(),
            }),
        },
        Err(other) => Err(Refusal::Mint(other)),
    }
}
