//! `airlock policy`: check and lint policy files; decide capabilities given as text.

use super::output::outln;
use super::{fail, Failure};
use airlock_launcher::policy::capability::Capability;
use airlock_launcher::policy::lint::lint;
use airlock_launcher::policy::rego::RegoEngine;
use airlock_launcher::policy::{decide_or_deny, DecisionEngine, Policy};
use airlock_proto::tool_rules::combine_parts;
use airlock_proto::verdict::Verdict;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Load each policy (syntax, types, ids, globs, examples) and lint it.
    Check {
        /// Policy files (.toml native, .rego Rego).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Exit 1 on lint warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Decide capabilities given as text (`fs ro /p`, `net host:443`, `tool git push`,
    /// `resources vcpus=2`).
    Decide {
        /// Policy file (.toml or .rego).
        #[arg(long)]
        policy: PathBuf,
        /// Capabilities.
        #[arg(required = true)]
        capabilities: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

pub fn exec(cmd: PolicyCmd) -> Result<u8, Failure> {
    match cmd {
        PolicyCmd::Check {
            files,
            json,
            deny_warnings,
        } => check(&files, json, deny_warnings),
        PolicyCmd::Decide {
            policy,
            capabilities,
            json,
        } => decide(&policy, &capabilities, json),
    }
}

fn is_rego(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "rego")
}

fn check(files: &[PathBuf], json: bool, deny_warnings: bool) -> Result<u8, Failure> {
    let mut code = 0;
    let mut results = Vec::new();
    for file in files {
        let mut protected = Vec::new();
        let (ok, rules, lints, profiles, error) = if is_rego(file) {
            match RegoEngine::load(file) {
                Ok(_) => (true, None, Vec::new(), Vec::new(), None),
                Err(e) => (false, None, Vec::new(), Vec::new(), Some(e.to_string())),
            }
        } else {
            match Policy::load(file) {
                Ok(p) => {
                    let profiles = p.effective_profiles();
                    protected = p.protected.clone();
                    (true, Some(p.rules.len()), lint(&p), profiles, None)
                }
                Err(e) => (false, None, Vec::new(), Vec::new(), Some(e.to_string())),
            }
        };
        if !ok || (deny_warnings && !lints.is_empty()) {
            code = 1;
        }
        if json {
            results.push(serde_json::json!({
                "file": file.display().to_string(),
                "valid": ok,
                "rules": rules,
                "error": error,
                "warnings": lints,
                "profiles": profiles,
                "protected": protected.iter().map(|g| serde_json::json!({
                    "path": g.glob, "decision": g.decision, "source": g.source, "reason": g.reason,
                })).collect::<Vec<_>>(),
            }));
        } else {
            match (&error, rules) {
                (Some(e), _) => outln!("invalid  {e}"),
                (None, Some(n)) => outln!(
                    "ok       {} ({n} rules, {} warnings)",
                    file.display(),
                    lints.len()
                ),
                (None, None) => outln!("ok       {} (rego)", file.display()),
            }
            for p in profiles.iter().filter(|p| p.granted) {
                outln!("  {p}");
            }
            if !protected.is_empty() {
                let own: Vec<&str> = protected
                    .iter()
                    .filter(|g| g.source != "default")
                    .map(|g| g.glob.as_str())
                    .collect();
                outln!(
                    "  protected in writable grants: {} shipped{}",
                    protected.len() - own.len(),
                    if own.is_empty() {
                        String::new()
                    } else {
                        format!(", and the policy's {}", own.join(", "))
                    }
                );
            }
            for l in &lints {
                outln!("  {}:{l}", file.display());
            }
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&results).expect("json"));
    }
    Ok(code)
}

fn decide(policy: &Path, texts: &[String], json: bool) -> Result<u8, Failure> {
    let engine: Box<dyn DecisionEngine> = if is_rego(policy) {
        Box::new(RegoEngine::load(policy).map_err(|e| fail(1, e))?)
    } else {
        Box::new(Policy::load(policy).map_err(|e| fail(1, e))?)
    };
    let mut worst = Verdict::Allow;
    let mut out = Vec::new();
    for text in texts {
        let caps = Capability::parse_text(text).map_err(|e| fail(1, e))?;
        let parts = caps
            .iter()
            .map(|c| (c.to_string(), decide_or_deny(engine.as_ref(), c)))
            .collect();
        let d = combine_parts(parts).decisive;
        worst = worst.most_restrictive(d.verdict);
        if json {
            out.push(
                serde_json::json!({"capability": text, "engine": engine.name(), "decision": d}),
            );
        } else {
            outln!(
                "{:<5}  {text}  [rule {}: {}]",
                d.verdict,
                d.rule_id,
                d.reason
            );
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&out).expect("json"));
    }
    Ok(match worst {
        Verdict::Allow => 0,
        Verdict::Ask => 3,
        Verdict::Deny => 4,
    })
}
