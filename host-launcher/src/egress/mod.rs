//! The host's egress service: every connection the agent opens is a request to the
//! host, decided by name and port against the launcher's own copy of the manifest,
//! resolved here and dialled from here.
//!
//! The guest's funnel (stub DNS, netfilter redirect, proxy endpoint) only turns the
//! agent's connections into requests; nothing it says is trusted beyond "the agent
//! wants `name:port`". The host then:
//! 1. checks the stream is the session's enforcer (session id and secret);
//! 2. decides by name and port: `egress.allow` → allow, `egress.ask` → the approval
//!    broker (a person, or the configured auto-answer), anything else → deny, naming
//!    what the policy would say about it and what to add to the plan;
//! 3. counts it against the session's limits (connections open at once, traffic);
//! 4. resolves the name with its own resolver ([`address_ranges::resolve_for_dial`]),
//!    refusing loopback, private, link-local and metadata answers unless the manifest
//!    pins the name to an address;
//! 5. dials, answers ALLOW, and splices, with the agent's first bytes checked against
//!    the name ([`first_bytes`]: TLS SNI, HTTP Host) before any reaches the server.
//!
//! Every decision and every refused attempt is recorded (the audit log through the
//! approval broker's recorder) before it takes effect, and one line goes to the
//! session log. Destroying the session closes every connection.

pub mod address_ranges;
pub mod first_bytes;
mod service;

pub use service::{serve_egress_handed, serve_egress_listener, EgressTask};

use crate::approval_broker::{Action, ActionKind, ApprovalBroker, AutomaticDecision};
use crate::policy::capability::Capability;
use crate::policy::Policy;
use airlock_proto::manifest::Manifest;
use airlock_proto::verdict::Verdict;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// The rule id the host names for a connection decided by the manifest's lists.
pub const MANIFEST_EGRESS_RULE: &str = "manifest egress";

/// How the host decided a name and port, before resolving anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressDecision {
    /// In `egress.allow`.
    Allow,
    /// In `egress.ask`: a person decides.
    Ask,
    /// Not granted: why, in words the agent can act on, and the rule that says so.
    Deny {
        /// The policy rule that would decide it, or [`MANIFEST_EGRESS_RULE`].
        rule_id: String,
        /// What to do about it.
        reason: String,
    },
}

/// What the policy says about an endpoint the session was not granted: used only to
/// make a denial readable ("the policy would ask; add it to the plan").
pub type PolicyAdvice = Arc<dyn Fn(&str, u16) -> (Verdict, String, String) + Send + Sync>;

/// The policy's decision for `host:port`, as advice for denials.
pub fn advice_from_policy(policy: Arc<Policy>) -> PolicyAdvice {
    Arc::new(move |host: &str, port: u16| {
        let d = policy.decide(&Capability::Net {
            host: host.to_string(),
            port,
        });
        (d.verdict, d.rule_id, d.reason)
    })
}

/// A session's egress grants and limits, from the launcher's copy of the manifest.
pub struct EgressGrants {
    allow: BTreeSet<(String, u16)>,
    ask: BTreeSet<(String, u16)>,
    pins: BTreeMap<String, IpAddr>,
    max_connections: u32,
    max_bytes: u64,
}

impl EgressGrants {
    /// The grants of `manifest` (already validated: pins parse).
    pub fn of(manifest: &Manifest) -> EgressGrants {
        let e = &manifest.egress;
        let set = |l: &[airlock_proto::manifest::Endpoint]| {
            l.iter().map(|e| (e.host.clone(), e.port)).collect()
        };
        EgressGrants {
            allow: set(&e.allow),
            ask: set(&e.ask),
            pins: e
                .pins
                .iter()
                .filter_map(|(n, ip)| ip.parse().ok().map(|ip| (n.clone(), ip)))
                .collect(),
            max_connections: manifest.resources.net_connections,
            max_bytes: manifest.resources.net_mib.saturating_mul(1 << 20),
        }
    }

    /// Allow, ask or deny for `host:port` (`host` a DNS name, lower case). An exact
    /// grant of the name decides before a `*.` grant that covers it.
    pub fn decide(&self, host: &str, port: u16, advice: Option<&PolicyAdvice>) -> EgressDecision {
        let key = (host.to_string(), port);
        if self.allow.contains(&key) {
            return EgressDecision::Allow;
        }
        if self.ask.contains(&key) {
            return EgressDecision::Ask;
        }
        let covered = |set: &BTreeSet<(String, u16)>| {
            set.iter()
                .any(|(g, p)| *p == port && g.starts_with("*.") && grant_covers(g, host))
        };
        if covered(&self.allow) {
            return EgressDecision::Allow;
        }
        if covered(&self.ask) {
            return EgressDecision::Ask;
        }
        let other_ports: Vec<String> = self
            .allow
            .iter()
            .chain(&self.ask)
            .filter(|(g, _)| grant_covers(g, host))
            .map(|(_, p)| p.to_string())
            .collect();
        if !other_ports.is_empty() {
            // A few are enough to act on; the reason must fit the verdict frame.
            let shown = if other_ports.len() > 8 {
                format!(
                    "{} and {} more",
                    other_ports[..8].join(", "),
                    other_ports.len() - 8
                )
            } else {
                other_ports.join(", ")
            };
            return EgressDecision::Deny {
                rule_id: MANIFEST_EGRESS_RULE.into(),
                reason: format!("`{host}` is granted on port {shown} only, not {port}"),
            };
        }
        let ask_for = format!("[[net]] host = \"{host}\", port = {port}");
        match advice.map(|a| a(host, port)) {
            Some((Verdict::Deny, rule, why)) => EgressDecision::Deny {
                reason: format!("`{host}:{port}` is not granted and the policy's rule `{rule}` denies it ({why})"),
                rule_id: rule,
            },
            Some((verdict, rule, _)) => EgressDecision::Deny {
                reason: format!(
                    "`{host}:{port}` is not granted to this session; the policy's rule `{rule}` would {} it: add {ask_for} to the plan",
                    if verdict == Verdict::Allow { "allow" } else { "ask about" }
                ),
                rule_id: rule,
            },
            None => EgressDecision::Deny {
                rule_id: MANIFEST_EGRESS_RULE.into(),
                reason: format!("`{host}:{port}` is not granted to this session: add {ask_for} to the plan"),
            },
        }
    }

    /// The pins (name → address) the host dials instead of resolving.
    pub fn pins(&self) -> &BTreeMap<String, IpAddr> {
        &self.pins
    }
}

/// Does the manifest's `grant` (a name, or `*.suffix`: every name strictly under
/// `suffix`) cover the DNS name `host`?
pub fn grant_covers(grant: &str, host: &str) -> bool {
    match grant.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => grant == host,
    }
}

/// Records `pins` in `manifest` for the names it grants (allow or ask); pins of other
/// names are left out (they would grant nothing).
pub fn pin_granted_names(manifest: &mut Manifest, pins: &BTreeMap<String, IpAddr>) {
    let e = &mut manifest.egress;
    for (name, ip) in pins {
        if e.allow
            .iter()
            .chain(&e.ask)
            .any(|g| grant_covers(&g.host, name))
        {
            e.pins.insert(name.clone(), ip.to_string());
        }
    }
}

/// Where the egress service writes its one line per decision for people reading the
/// session (the session log next to the guest's log).
pub type SessionLog = Arc<dyn Fn(&str) + Send + Sync>;

/// A [`SessionLog`] appending to `path` (the session's `guest.log`), one line per
/// decision, each prefixed with the Unix time in milliseconds.
pub fn session_log_file(path: std::path::PathBuf) -> SessionLog {
    let file = std::sync::Mutex::new(None::<std::fs::File>);
    Arc::new(move |line: &str| {
        use std::io::Write;
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .ok();
        }
        if let Some(f) = f.as_mut() {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let _ = writeln!(f, "{ms} host: {}", line.escape_debug());
        }
    })
}

/// A [`SessionLog`] on the launcher's stderr (process isolation keeps no session
/// directory; its stderr is the session's, shared with the agent's). Refusals only:
/// a line per allowed connection would bury the agent's own output; the audit log has
/// every decision.
pub fn session_log_stderr() -> SessionLog {
    Arc::new(|line: &str| {
        if !line.starts_with("egress allow ") {
            eprintln!("airlock: {}", line.escape_debug());
        }
    })
}

/// One session's egress service.
pub struct EgressService {
    session_id: String,
    secret: Vec<u8>,
    grants: EgressGrants,
    broker: Arc<ApprovalBroker>,
    advice: Option<PolicyAdvice>,
    log: SessionLog,
    open: AtomicU32,
    bytes: AtomicU64,
    attempts: AtomicU64,
    unproven: Arc<tokio::sync::Semaphore>,
}

/// Most streams a session may have open before they sent their request.
pub const MAX_UNPROVEN_STREAMS: usize = 64;

/// Most connection attempts a session may make in total: each is a record in the audit
/// log, so a guest looping on refused connections must not grow it without bound.
pub const MAX_ATTEMPTS_PER_SESSION: u64 = 100_000;

impl EgressService {
    /// The service for one session.
    pub fn new(
        session_id: String,
        secret: Vec<u8>,
        grants: EgressGrants,
        broker: Arc<ApprovalBroker>,
        advice: Option<PolicyAdvice>,
        log: SessionLog,
    ) -> Arc<EgressService> {
        Arc::new(EgressService {
            session_id,
            secret,
            grants,
            broker,
            advice,
            log,
            open: AtomicU32::new(0),
            bytes: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            unproven: Arc::new(tokio::sync::Semaphore::new(MAX_UNPROVEN_STREAMS)),
        })
    }

    /// Bytes carried so far, both directions.
    pub fn bytes_carried(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    fn action(&self, host: &str, port: u16, rule_id: &str, reason: &str) -> Action {
        Action {
            session_id: self.session_id.clone(),
            rule_id: rule_id.to_string(),
            reason: reason.to_string(),
            kind: ActionKind::Net {
                host: host.to_string(),
                port,
            },
        }
    }

    /// Writes an automatic decision to the audit log (before it takes effect) and the
    /// session log. An allow that cannot be recorded is an error: it must not happen.
    fn record(&self, verdict: Verdict, action: Action) -> Result<(), String> {
        (self.log)(&format!(
            "egress {} {}: {} (rule `{}`)",
            verdict,
            match &action.kind {
                ActionKind::Net { host, port } => format!("{host}:{port}"),
                _ => String::new(),
            },
            action.reason,
            action.rule_id
        ));
        self.broker.record_automatic(&AutomaticDecision {
            session_id: self.session_id.clone(),
            verdict: verdict.to_string(),
            action,
        })
    }
}

/// A reserved place among the session's open connections, given back on drop.
struct ConnectionSlot<'a>(&'a AtomicU32);

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EgressService {
    fn reserve_connection(&self) -> Option<ConnectionSlot<'_>> {
        let max = self.grants.max_connections;
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot(&self.open))
    }

    /// Counts `n` more bytes; false once the session's traffic limit is passed.
    fn carry(&self, n: usize) -> bool {
        let total = self.bytes.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        total <= self.grants.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> EgressGrants {
        EgressGrants {
            allow: [("github.com".to_string(), 443)].into(),
            ask: [("example.org".to_string(), 443)].into(),
            pins: BTreeMap::new(),
            max_connections: 2,
            max_bytes: 10,
        }
    }

    #[test]
    fn names_and_ports_decide_and_denials_say_what_to_ask_for() {
        let g = grants();
        assert_eq!(g.decide("github.com", 443, None), EgressDecision::Allow);
        assert_eq!(g.decide("example.org", 443, None), EgressDecision::Ask);
        let EgressDecision::Deny { reason, .. } = g.decide("github.com", 22, None) else {
            panic!()
        };
        assert!(
            reason.contains("granted on port 443 only, not 22"),
            "{reason}"
        );
        // Strictly the name: a subdomain or a parent is another name.
        for other in ["api.github.com", "com", "github.com.evil"] {
            assert!(matches!(
                g.decide(other, 443, None),
                EgressDecision::Deny { .. }
            ));
        }
        let advice: PolicyAdvice =
            Arc::new(|_: &str, _| (Verdict::Ask, "other-https".into(), "why".into()));
        let EgressDecision::Deny { rule_id, reason } = g.decide("pypi.org", 443, Some(&advice))
        else {
            panic!()
        };
        assert_eq!(rule_id, "other-https");
        assert!(
            reason.contains("would ask about it: add [[net]] host = \"pypi.org\", port = 443"),
            "{reason}"
        );
    }

    #[test]
    fn wildcard_grants_cover_names_strictly_under_and_exact_grants_come_first() {
        let g = EgressGrants {
            allow: [("*.crates.io".to_string(), 443)].into(),
            ask: [
                ("static.crates.io".to_string(), 443),
                ("*.example.org".to_string(), 80),
            ]
            .into(),
            pins: BTreeMap::new(),
            max_connections: 2,
            max_bytes: 10,
        };
        assert_eq!(
            g.decide("index.crates.io", 443, None),
            EgressDecision::Allow
        );
        assert_eq!(g.decide("a.b.crates.io", 443, None), EgressDecision::Allow);
        assert_eq!(g.decide("static.crates.io", 443, None), EgressDecision::Ask);
        assert_eq!(g.decide("www.example.org", 80, None), EgressDecision::Ask);
        for (host, port) in [
            ("crates.io", 443),
            ("evilcrates.io", 443),
            ("index.crates.io", 80),
            ("crates.io.evil", 443),
            ("example.org", 80),
        ] {
            assert!(
                matches!(g.decide(host, port, None), EgressDecision::Deny { .. }),
                "{host}:{port}"
            );
        }
        let EgressDecision::Deny { reason, .. } = g.decide("index.crates.io", 22, None) else {
            panic!()
        };
        assert!(reason.contains("granted on port 443 only"), "{reason}");
    }

    #[test]
    fn connection_slots_are_bounded_and_given_back() {
        let svc = EgressService::new(
            "s".into(),
            vec![1; 32],
            grants(),
            ApprovalBroker::new(std::time::Duration::from_secs(1)),
            None,
            Arc::new(|_: &str| {}),
        );
        let a = svc.reserve_connection().unwrap();
        let _b = svc.reserve_connection().unwrap();
        assert!(svc.reserve_connection().is_none());
        drop(a);
        assert!(svc.reserve_connection().is_some());
        assert!(svc.carry(10));
        assert!(!svc.carry(1), "the 11th byte passes a 10-byte limit");
    }
}
