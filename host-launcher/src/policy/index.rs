//! Rule index: finds the first matching rule without testing every rule.
//!
//! Rules are bucketed by a key the capability determines (a path's ancestors, a host's
//! suffixes, a program name). Each bucket lists rule positions in policy order, so the
//! first match is the smallest position that matches across the capability's buckets.
//! Must agree with a linear scan (`Policy::decide_linear`) on every input.

use super::capability::Capability;
use super::{HostPattern, Rule, RuleMatch};
use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub(super) struct RuleIndex {
    /// Fs rules by the literal directory before their first wildcard.
    fs_by_dir: HashMap<String, Vec<usize>>,
    /// Net rules for one exact host.
    net_exact: HashMap<String, Vec<usize>>,
    /// Net rules `*.suffix`, by suffix.
    net_under: HashMap<String, Vec<usize>>,
    /// Net rules `*`.
    net_any: Vec<usize>,
    /// Tool rules by program.
    tool_by_program: HashMap<String, Vec<usize>>,
    /// Resources rules.
    resources: Vec<usize>,
}

impl RuleIndex {
    pub(super) fn build(rules: &[Rule]) -> RuleIndex {
        let mut ix = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            match &rule.matcher {
                RuleMatch::Fs(p) => ix
                    .fs_by_dir
                    .entry(p.literal_dir.clone())
                    .or_default()
                    .push(i),
                RuleMatch::Net(n) => match &n.host {
                    HostPattern::Exact(h) => ix.net_exact.entry(h.clone()).or_default().push(i),
                    HostPattern::Under(s) => ix.net_under.entry(s.clone()).or_default().push(i),
                    HostPattern::Any => ix.net_any.push(i),
                },
                RuleMatch::Tool { program, .. } => ix
                    .tool_by_program
                    .entry(program.clone())
                    .or_default()
                    .push(i),
                RuleMatch::Resources(_) => ix.resources.push(i),
            }
        }
        ix
    }

    /// Positions of the rules for `program`, in policy order.
    pub(super) fn tool_rules(&self, program: &str) -> &[usize] {
        self.tool_by_program.get(program).map_or(&[], Vec::as_slice)
    }

    pub(super) fn first_match(&self, rules: &[Rule], cap: &Capability) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut scan = |bucket: &[usize]| {
            for &i in bucket {
                if best.is_some_and(|b| i >= b) {
                    break;
                }
                if rules[i].matcher.matches(cap) {
                    best = Some(i);
                    break;
                }
            }
        };
        match cap {
            Capability::Fs { path, .. } => {
                // The root, then every ancestor, then the path itself.
                if let Some(b) = self.fs_by_dir.get("/") {
                    scan(b);
                }
                for (pos, _) in path.match_indices('/').skip(1) {
                    if let Some(b) = self.fs_by_dir.get(&path[..pos]) {
                        scan(b);
                    }
                }
                if path != "/" {
                    if let Some(b) = self.fs_by_dir.get(path.as_str()) {
                        scan(b);
                    }
                }
            }
            Capability::Net { host, .. } => {
                if let Some(b) = self.net_exact.get(host.as_str()) {
                    scan(b);
                }
                for (pos, _) in host.match_indices('.') {
                    if let Some(b) = self.net_under.get(&host[pos + 1..]) {
                        scan(b);
                    }
                }
                scan(&self.net_any);
            }
            Capability::Tool { program, .. } | Capability::ToolConfig { program, .. } => {
                scan(self.tool_rules(program));
            }
            Capability::Resources(_) => scan(&self.resources),
        }
        best
    }
}
