//! The tri-state outcome every policy decision ends in.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Outcome of a decision: run it, ask a human first, or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The capability is granted.
    Allow,
    /// A human (or a configured approver) must approve first; no answer means deny.
    Ask,
    /// The capability is refused.
    Deny,
}

impl Verdict {
    /// Ordering by restrictiveness: `allow < ask < deny`.
    fn rank(self) -> u8 {
        match self {
            Verdict::Allow => 0,
            Verdict::Ask => 1,
            Verdict::Deny => 2,
        }
    }

    /// The more restrictive of two verdicts (deny beats ask beats allow).
    pub fn most_restrictive(self, other: Verdict) -> Verdict {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    /// Lowercase name as written in policies and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Ask => "ask",
            Verdict::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Verdict::Allow),
            "ask" => Ok(Verdict::Ask),
            "deny" => Ok(Verdict::Deny),
            other => Err(format!(
                "unknown decision `{other}`: expected allow, ask or deny"
            )),
        }
    }
}

/// A verdict together with the rule that produced it and the human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// What was decided.
    pub verdict: Verdict,
    /// Id of the rule that decided, or `default` when no rule matched.
    pub rule_id: String,
    /// Why, in words the agent and the person can act on.
    pub reason: String,
}

impl Decision {
    /// Rule id used when no rule matched and the policy default decided.
    pub const DEFAULT_RULE_ID: &'static str = "default";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_restrictive_orders_deny_over_ask_over_allow() {
        use Verdict::*;
        assert_eq!(Allow.most_restrictive(Ask), Ask);
        assert_eq!(Ask.most_restrictive(Allow), Ask);
        assert_eq!(Ask.most_restrictive(Deny), Deny);
        assert_eq!(Deny.most_restrictive(Allow), Deny);
        assert_eq!(Allow.most_restrictive(Allow), Allow);
    }
}
