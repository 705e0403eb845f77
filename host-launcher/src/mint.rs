//! Minting: from a decided plan to the manifest for one session.
//!
//! Only what was allowed, or asked and approved, enters the manifest. A denied request
//! refuses the whole plan (running without it would half-apply the plan). Asks on the
//! command, mounts or resources must be approved before minting; asks on network
//! endpoints become the manifest's `egress.ask` list, decided when the connection is
//! made. Tool grants carry the program's ordered rules, so each invocation is decided at
//! run time by the same matcher the policy uses.

use crate::plan::{Plan, RequestKind};
use crate::policy::capability::normalize_requested_host;
use crate::policy::Policy;
use airlock_proto::envelope::{random_hex, KeyError};
use airlock_proto::manifest::{
    validate_image_id, Command, Egress, Endpoint, Manifest, Mount, MANIFEST_VERSION,
};
use airlock_proto::verdict::Verdict;

/// Default validity of a manifest.
pub const DEFAULT_TTL_SECS: u64 = 600;
/// Longest validity accepted.
pub const MAX_TTL_SECS: u64 = 24 * 3600;

/// How to mint.
#[derive(Debug, Clone)]
pub struct MintOptions {
    /// Mint time (Unix seconds; the host clock).
    pub now: u64,
    /// Validity, seconds (1 ..= [`MAX_TTL_SECS`]).
    pub ttl_secs: u64,
    /// CID of the VM that will receive it.
    pub vm_cid: u32,
    /// Image the VM boots.
    pub image_id: String,
    /// The boot's challenge nonce (hex); random when `None`.
    pub nonce: Option<String>,
    /// Session id (32 hex); random when `None`.
    pub session_id: Option<String>,
    /// Treat every up-front `ask` (command, mounts, resources) as approved: an
    /// approver (or an operator) said yes to them. Network asks stay asks, decided per
    /// connection.
    pub approve_asks: bool,
}

/// Why no manifest was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The plan has denied requests.
    #[error("plan denied: {}", .0.join("; "))]
    Denied(Vec<String>),
    /// The plan has asks that must be approved first.
    #[error("needs approval before the session starts (pass --approve-asks to approve): {}", .0.join("; "))]
    NeedsApproval(Vec<String>),
    /// An option is out of range.
    #[error("{0}")]
    BadOption(String),
    /// Randomness failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl MintError {
    /// CLI exit code: 4 denied, 3 needs approval, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            MintError::Denied(_) => 4,
            MintError::NeedsApproval(_) => 3,
            _ => 1,
        }
    }
}

/// Parses `90`, `90s`, `10m`, `2h` into seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{text}` is not a duration (e.g. 90s, 10m, 2h)"))
}

/// Evaluates `plan` with `policy` and mints the manifest for what was granted.
///
/// The decisions are made here, from the same policy and plan that shape the manifest,
/// so a caller cannot pair a plan with a report made for another one.
pub fn mint(policy: &Policy, plan: &Plan, opts: &MintOptions) -> Result<Manifest, MintError> {
    let report = crate::plan::evaluate(policy, plan);
    let report = &report;
    if !(1..=MAX_TTL_SECS).contains(&opts.ttl_secs) {
        return Err(MintError::BadOption(format!(
            "ttl {}s is outside 1s..={MAX_TTL_SECS}s",
            opts.ttl_secs
        )));
    }
    if opts.vm_cid < 3 {
        return Err(MintError::BadOption(format!(
            "cid {} is reserved; guest CIDs start at 3",
            opts.vm_cid
        )));
    }
    validate_image_id(&opts.image_id).map_err(MintError::BadOption)?;

    let describe = |i: &crate::plan::ReportItem| {
        format!(
            "{} `{}`: {} by rule `{}` ({})",
            i.kind.as_str(),
            i.request,
            i.decision.verdict,
            i.decision.rule_id,
            i.decision.reason
        )
    };
    let denied: Vec<String> = report
        .items
        .iter()
        .filter(|i| i.decision.verdict == Verdict::Deny)
        .map(describe)
        .collect();
    if !denied.is_empty() {
        return Err(MintError::Denied(denied));
    }
    let pending: Vec<String> = report
        .items
        .iter()
        .filter(|i| {
            i.decision.verdict == Verdict::Ask && i.kind.asks_up_front() && !opts.approve_asks
        })
        .map(describe)
        .collect();
    if !pending.is_empty() {
        return Err(MintError::NeedsApproval(pending));
    }

    let mounts = plan
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| Mount {
            tag: format!("m{i}"),
            guest_path: m.guest.clone(),
            mode: m.mode,
        })
        .collect();

    let mut egress = Egress::default();
    for item in report.items.iter().filter(|i| i.kind == RequestKind::Net) {
        let e = &plan.net[item.index];
        let endpoint = Endpoint {
            host: normalize_requested_host(&e.host).expect("plan was validated"),
            port: e.port,
        };
        match item.decision.verdict {
            Verdict::Allow => egress.allow.push(endpoint),
            // Decided per connection, whatever was approved up front: approving a mount
            // must not open the network.
            Verdict::Ask => egress.ask.push(endpoint),
            Verdict::Deny => unreachable!("denied plans were refused above"),
        }
    }
    egress.allow.sort();
    egress.allow.dedup();
    egress.ask.sort();
    egress.ask.dedup();

    let tools = plan.tools.iter().map(|t| policy.tool_grant(t)).collect();
    let cwd = plan
        .cwd
        .clone()
        .or_else(|| plan.mounts.first().map(|m| m.guest.clone()))
        .unwrap_or_else(|| "/".into());

    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        protocol_version: airlock_proto::PROTOCOL_VERSION,
        session_id: match &opts.session_id {
            Some(s) => s.clone(),
            None => random_hex(16)?,
        },
        vm_cid: opts.vm_cid,
        image_id: opts.image_id.clone(),
        nonce: match &opts.nonce {
            Some(n) => n.clone(),
            None => random_hex(16)?,
        },
        issued_at: opts.now,
        not_before: opts.now,
        expires_at: opts.now + opts.ttl_secs,
        policy_digest: policy.digest.clone(),
        command: Command {
            argv: plan.command.clone(),
            cwd,
            env: plan.env.clone(),
        },
        mounts,
        egress,
        tools,
        resources: plan.resources.resolve(),
    };
    manifest
        .validate()
        .map_err(|e| MintError::BadOption(e.to_string()))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn coding_agent() -> Policy {
        Policy::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/policies/coding-agent.toml"),
        )
        .unwrap()
    }

    fn opts() -> MintOptions {
        MintOptions {
            now: 1_700_000_000,
            ttl_secs: DEFAULT_TTL_SECS,
            vm_cid: 3,
            image_id: "test-image".into(),
            nonce: None,
            session_id: None,
            approve_asks: false,
        }
    }

    fn plan(text: &str) -> Plan {
        Plan::parse("p.toml", text, false).unwrap()
    }

    #[test]
    fn only_granted_requests_enter_the_manifest() {
        let policy = coding_agent();
        let p = plan(
            "command = [\"git\", \"status\"]\ntools = [\"git\", \"rg\"]\n\
             [[mounts]]\nhost = \"/home/a/work/app\"\nguest = \"/workspace\"\nmode = \"rw\"\n\
             [[net]]\nhost = \"GitHub.com\"\n[[net]]\nhost = \"docs.rs\"\n",
        );
        let m = mint(&policy, &p, &opts()).unwrap();
        assert_eq!(m.command.cwd, "/workspace");
        assert_eq!(m.mounts.len(), 1);
        assert_eq!(
            m.egress.allow,
            vec![Endpoint {
                host: "github.com".into(),
                port: 443
            }]
        );
        assert_eq!(
            m.egress.ask,
            vec![Endpoint {
                host: "docs.rs".into(),
                port: 443
            }],
            "net asks are decided at connect time"
        );
        assert_eq!(
            m.tools
                .iter()
                .map(|t| t.program.as_str())
                .collect::<Vec<_>>(),
            ["git", "rg"]
        );
        assert_eq!(m.expires_at - m.issued_at, DEFAULT_TTL_SECS);
        assert_eq!(m.policy_digest, policy.digest);
        let approved = mint(
            &policy,
            &p,
            &MintOptions {
                approve_asks: true,
                ..opts()
            },
        )
        .unwrap();
        // Approving up-front asks never opens the network: net asks stay asks.
        assert_eq!(approved.egress, m.egress);
        assert!(!approved.egress.ask.is_empty());
    }

    #[test]
    fn denied_and_unapproved_plans_mint_nothing() {
        let policy = coding_agent();
        let denied = plan("command = [\"true\"]\n[[mounts]]\nhost = \"/home/a/.ssh\"\nguest = \"/k\"\nmode = \"ro\"\n");
        let err = mint(&policy, &denied, &opts()).unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert!(err.to_string().contains("home-secrets"), "{err}");
        // --approve-asks never overrides a deny.
        let err = mint(
            &policy,
            &denied,
            &MintOptions {
                approve_asks: true,
                ..opts()
            },
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 4);

        let ask = plan("command = [\"git\", \"push\"]\n");
        let err = mint(&policy, &ask, &opts()).unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains("git-push"), "{err}");
        mint(
            &policy,
            &ask,
            &MintOptions {
                approve_asks: true,
                ..opts()
            },
        )
        .unwrap();
    }

    #[test]
    fn options_are_checked() {
        let policy = coding_agent();
        let p = plan("command = [\"git\", \"status\"]\n");
        for (o, want) in [
            (
                MintOptions {
                    ttl_secs: 0,
                    ..opts()
                },
                "ttl",
            ),
            (
                MintOptions {
                    ttl_secs: MAX_TTL_SECS + 1,
                    ..opts()
                },
                "ttl",
            ),
            (
                MintOptions {
                    vm_cid: 2,
                    ..opts()
                },
                "cid 2",
            ),
            (
                MintOptions {
                    image_id: "a b".into(),
                    ..opts()
                },
                "image id",
            ),
            (
                MintOptions {
                    nonce: Some("xyz".into()),
                    ..opts()
                },
                "nonce",
            ),
        ] {
            let err = mint(&policy, &p, &o).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_secs("90").unwrap(), 90);
        assert_eq!(parse_duration_secs("10m").unwrap(), 600);
        assert_eq!(parse_duration_secs("2h").unwrap(), 7200);
        assert!(parse_duration_secs("m").is_err());
        assert!(parse_duration_secs("-1s").is_err());
    }
}
