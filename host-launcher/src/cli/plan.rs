//! `airlock plan`: decide every request of a plan; the report `run` also prints.

use super::output::outln;
use super::{fail, Failure};
use airlock_launcher::plan::{evaluate, Outcome, Plan, Report};
use airlock_launcher::policy::Policy;
use std::path::Path;

pub fn exec(policy: &Path, plan: &Path, json: bool) -> Result<u8, Failure> {
    let policy = Policy::load(policy).map_err(|e| fail(1, e))?;
    let plan = Plan::load(plan).map_err(|e| fail(1, e))?;
    let report = evaluate(&policy, &plan);
    print_report(&report, json);
    Ok(report.outcome.exit_code() as u8)
}

pub fn print_report(report: &Report, json: bool) {
    if json {
        outln!("{}", serde_json::to_string_pretty(report).expect("json"));
        return;
    }
    outln!("policy {} ({})", report.policy, report.policy_digest);
    for i in &report.items {
        outln!(
            "{:<5}  {:<9} {}  [rule {}: {}]",
            i.decision.verdict,
            i.kind.as_str(),
            i.request,
            i.decision.rule_id,
            i.decision.reason
        );
        if let Some(n) = &i.note {
            outln!("       {:<9} note: {n}", "");
        }
    }
    outln!(
        "outcome: {}",
        match report.outcome {
            Outcome::Allowed => "allowed",
            Outcome::NeedsApproval => "needs approval",
            Outcome::Denied => "denied",
        }
    );
}
