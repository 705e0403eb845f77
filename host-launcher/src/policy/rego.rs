//! The Rego engine: the same [`DecisionEngine`] interface, answered by a Rego policy
//! evaluated in process with regorus.
//!
//! The policy gets one capability as `input` (its JSON form, see
//! [`Capability`]) and must define `data.airlock.decision` as an object
//! `{"verdict": "allow"|"ask"|"deny", "rule_id": string, "reason": string}`. Anything
//! else (an undefined decision, a wrong type, an unknown verdict, an evaluation error)
//! is an [`EngineError`], which callers turn into a denial.

use super::capability::Capability;
use super::{DecisionEngine, EngineError};
use airlock_proto::verdict::{Decision, Verdict};
use std::path::Path;
use std::sync::Mutex;

/// Rule the engine evaluates.
pub const DECISION_RULE: &str = "data.airlock.decision";

/// A loaded Rego policy.
pub struct RegoEngine {
    origin: String,
    // regorus evaluates through `&mut Engine`; decisions are short, so a lock is enough.
    engine: Mutex<regorus::Engine>,
}

impl std::fmt::Debug for RegoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegoEngine")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn engine_err(message: impl Into<String>) -> EngineError {
    EngineError {
        engine: "rego",
        message: message.into(),
    }
}

impl RegoEngine {
    /// Loads a `.rego` file (at most [`super::MAX_POLICY_BYTES`]).
    pub fn load(path: &Path) -> Result<RegoEngine, EngineError> {
        let size = std::fs::metadata(path)
            .map_err(|e| engine_err(format!("{}: {e}", path.display())))?
            .len();
        if size > super::MAX_POLICY_BYTES {
            return Err(engine_err(format!(
                "{}: {size} bytes is over the {}-byte limit",
                path.display(),
                super::MAX_POLICY_BYTES
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| engine_err(format!("{}: {e}", path.display())))?;
        RegoEngine::from_source(&path.display().to_string(), &text)
    }

    /// Compiles Rego source; fails if it does not parse or does not define a decision
    /// for a probe capability (so a broken policy fails at load, not at first use).
    pub fn from_source(origin: &str, text: &str) -> Result<RegoEngine, EngineError> {
        let mut engine = regorus::Engine::new();
        engine
            .add_policy(origin.to_string(), text.to_string())
            .map_err(|e| engine_err(format!("{origin}: {e}")))?;
        let this = RegoEngine {
            origin: origin.to_string(),
            engine: Mutex::new(engine),
        };
        let probe = Capability::Net {
            host: "probe.invalid".into(),
            port: 443,
        };
        this.decide(&probe).map_err(|e| {
            engine_err(format!(
                "{origin}: policy does not produce a decision: {}",
                e.message
            ))
        })?;
        Ok(this)
    }
}

impl DecisionEngine for RegoEngine {
    fn name(&self) -> &'static str {
        "rego"
    }

    fn decide(&self, capability: &Capability) -> Result<Decision, EngineError> {
        let input = serde_json::to_string(capability).map_err(|e| engine_err(e.to_string()))?;
        let input = regorus::Value::from_json_str(&input).map_err(|e| engine_err(e.to_string()))?;
        let value = {
            let mut engine = self
                .engine
                .lock()
                .map_err(|_| engine_err("engine lock poisoned"))?;
            engine.set_input(input);
            engine.eval_rule(DECISION_RULE.to_string()).map_err(|e| {
                engine_err(format!("{}: evaluating {DECISION_RULE}: {e}", self.origin))
            })?
        };
        if value == regorus::Value::Undefined {
            return Err(engine_err(format!(
                "{}: {DECISION_RULE} is undefined for `{capability}`",
                self.origin
            )));
        }
        let json = value.to_json_str().map_err(|e| engine_err(e.to_string()))?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            verdict: String,
            rule_id: String,
            reason: String,
        }
        let raw: Raw = serde_json::from_str(&json).map_err(|e| {
            engine_err(format!(
                "{}: {DECISION_RULE} must be {{verdict, rule_id, reason}}, got {json}: {e}",
                self.origin
            ))
        })?;
        let verdict: Verdict = raw.verdict.parse().map_err(engine_err)?;
        Ok(Decision {
            verdict,
            rule_id: raw.rule_id,
            reason: raw.reason,
        })
    }
}
