//! The native and Rego engines must decide every case in
//! `tests/cases/engine-agreement.toml` identically, and as the case expects.

use airlock_launcher::policy::capability::Capability;
use airlock_launcher::policy::rego::RegoEngine;
use airlock_launcher::policy::{decide_or_deny, DecisionEngine, Policy};
use airlock_proto::tool_rules::combine_parts;
use airlock_proto::verdict::{Decision, Verdict};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    capability: String,
    verdict: Verdict,
    rule_id: String,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(root().join("tests/cases/engine-agreement.toml")).unwrap();
    toml::from_str::<Cases>(&text)
        .unwrap_or_else(|e| panic!("cases file: {e}"))
        .case
}

/// Decides every capability of a case text and folds them (most restrictive wins). An
/// invocation that cannot be normalized (an ambiguous abbreviation) is denied as
/// `invalid-invocation`, as plan evaluation and the broker do, before any engine.
fn decide(engine: &dyn DecisionEngine, text: &str) -> Decision {
    let caps = match Capability::parse_text(text) {
        Ok(caps) => caps,
        Err(e) if text.starts_with("tool ") => {
            return Decision {
                verdict: Verdict::Deny,
                rule_id: "invalid-invocation".into(),
                reason: e.to_string(),
            }
        }
        Err(e) => panic!("{e}"),
    };
    let parts = caps
        .iter()
        .map(|c| (c.to_string(), decide_or_deny(engine, c)))
        .collect();
    combine_parts(parts).decisive
}

#[test]
fn both_engines_decide_every_case_as_expected() {
    let native = Policy::load(&root().join("manifests/policies/coding-agent.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let rego = RegoEngine::load(&root().join("manifests/policies/coding-agent.rego"))
        .unwrap_or_else(|e| panic!("{e}"));
    let cases = cases();
    assert!(
        cases.len() >= 60,
        "the cases file should cover the policy well"
    );
    let mut failures = Vec::new();
    for c in &cases {
        for engine in [&native as &dyn DecisionEngine, &rego] {
            let d = decide(engine, &c.capability);
            if (d.verdict, d.rule_id.as_str()) != (c.verdict, c.rule_id.as_str()) {
                failures.push(format!(
                    "{:<6} `{}`: expected {} by `{}`, got {} by `{}` ({})",
                    engine.name(),
                    c.capability,
                    c.verdict,
                    c.rule_id,
                    d.verdict,
                    d.rule_id,
                    d.reason
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreement(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_rule_of_the_policy_decides_part_of_at_least_one_case() {
    let native = Policy::load(&root().join("manifests/policies/coding-agent.toml")).unwrap();
    // A case with `-c` has several parts; a rule counts if it decides any of them.
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for c in cases() {
        for cap in Capability::parse_text(&c.capability).unwrap_or_default() {
            covered.insert(native.decide(&cap).rule_id);
        }
    }
    let missing: Vec<&str> = native
        .rules
        .iter()
        .map(|r| r.id.as_str())
        .filter(|id| !covered.contains(*id))
        .collect();
    assert!(missing.is_empty(), "rules no case exercises: {missing:?}");
    for special in ["default", "no-ceiling"] {
        assert!(covered.contains(special), "no case reaches `{special}`");
    }
}

#[test]
fn a_rego_policy_without_a_usable_decision_is_refused() {
    let err = RegoEngine::from_source("empty.rego", "package airlock\nimport rego.v1\nx := 1\n")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("policy does not produce a decision"),
        "{err}"
    );
    let err = RegoEngine::from_source("syntax.rego", "package airlock\ndecision := {").unwrap_err();
    assert!(err.to_string().contains("syntax.rego"), "{err}");
    let err = RegoEngine::from_source(
        "bad.rego",
        "package airlock\nimport rego.v1\ndecision := {\"verdict\": \"maybe\", \"rule_id\": \"x\", \"reason\": \"y\"}\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown decision `maybe`"),
        "{err}"
    );
}

#[test]
fn a_rego_engine_error_at_decision_time_becomes_a_denial() {
    // Decides net probes fine (so it loads), but is undefined for fs capabilities.
    let rego = RegoEngine::from_source(
        "partial.rego",
        "package airlock\nimport rego.v1\ndecision := {\"verdict\": \"allow\", \"rule_id\": \"net\", \"reason\": \"r\"} if input.kind == \"net\"\n",
    )
    .unwrap();
    let cap = Capability::parse_text("fs ro /etc/passwd")
        .unwrap()
        .remove(0);
    assert!(rego.decide(&cap).is_err());
    let d = decide_or_deny(&rego, &cap);
    assert_eq!(
        (d.verdict, d.rule_id.as_str()),
        (Verdict::Deny, "engine-error")
    );
    assert!(d.reason.contains("undefined"), "{}", d.reason);
}
