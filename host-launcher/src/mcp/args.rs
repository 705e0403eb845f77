//! A tool call's arguments, read by name: every problem names the argument (and, for
//! lists and maps, the element), so a model can correct its call.

use rmcp::model::JsonObject;
use serde_json::Value;

/// A bad argument, in words that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError(pub String);

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The arguments of one call to `tool`, which takes `known`.
pub struct Args<'a> {
    tool: &'static str,
    map: Option<&'a JsonObject>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Args<'a> {
    /// Checks that every argument given is one `tool` takes.
    pub fn new(
        tool: &'static str,
        map: Option<&'a JsonObject>,
        known: &[&str],
    ) -> Result<Args<'a>, ArgError> {
        if let Some(m) = map {
            if let Some(unknown) = m.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(ArgError(format!(
                    "unknown argument `{unknown}`: {tool} takes {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(Args { tool, map })
    }

    /// The value of `name`; `null` counts as absent.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map?.get(name).filter(|v| !v.is_null())
    }

    fn missing(&self, name: &str) -> ArgError {
        ArgError(format!(
            "missing required argument `{name}` ({} needs it)",
            self.tool
        ))
    }

    fn wrong(name: &str, want: &str, got: &Value) -> ArgError {
        ArgError(format!(
            "argument `{name}` must be {want}, not {}",
            type_name(got)
        ))
    }

    /// A required string.
    pub fn string(&self, name: &str) -> Result<String, ArgError> {
        self.opt_string(name)?.ok_or_else(|| self.missing(name))
    }

    /// An optional string.
    pub fn opt_string(&self, name: &str) -> Result<Option<String>, ArgError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(Self::wrong(name, "a string", v)),
        }
    }

    /// An optional string that must be one of `allowed`.
    pub fn opt_choice(&self, name: &str, allowed: &[&str]) -> Result<Option<String>, ArgError> {
        match self.opt_string(name)? {
            Some(s) if !allowed.contains(&s.as_str()) => Err(ArgError(format!(
                "argument `{name}` is {s:?}; it must be one of {}",
                allowed
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            other => Ok(other),
        }
    }

    /// A required, non-empty array of strings.
    pub fn string_list(&self, name: &str) -> Result<Vec<String>, ArgError> {
        let v = self.get(name).ok_or_else(|| self.missing(name))?;
        let Value::Array(items) = v else {
            return Err(Self::wrong(name, "an array of strings", v));
        };
        if items.is_empty() {
            return Err(ArgError(format!(
                "argument `{name}` is empty: it needs at least the program"
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(Self::wrong(&format!("{name}[{i}]"), "a string", other)),
            })
            .collect()
    }

    /// An optional object whose values are strings, as pairs in key order.
    pub fn opt_string_map(&self, name: &str) -> Result<Vec<(String, String)>, ArgError> {
        let Some(v) = self.get(name) else {
            return Ok(Vec::new());
        };
        let Value::Object(m) = v else {
            return Err(Self::wrong(name, "an object of strings", v));
        };
        m.iter()
            .map(|(k, item)| match item {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(Self::wrong(&format!("{name}.{k}"), "a string", other)),
            })
            .collect()
    }

    /// An optional whole number in `range`.
    pub fn opt_u64(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, ArgError> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(n) if range.contains(&n) => Ok(Some(n)),
            Some(n) => Err(ArgError(format!(
                "argument `{name}` is {n}; it must be within {}..={}",
                range.start(),
                range.end()
            ))),
            None => Err(Self::wrong(name, "a whole number", v)),
        }
    }
}

/// A session id as the launcher makes them: 32 lowercase hex characters.
pub fn session_id(args: &Args<'_>) -> Result<String, ArgError> {
    let id = args.string("session_id")?;
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ArgError(format!(
            "argument `session_id` is {id:?}: a session id is the 32 lowercase hex characters create_session returned"
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> JsonObject {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn every_problem_names_the_argument() {
        let m = obj(json!({"argv": "ls -l", "env": {"A": 1}, "n": -1, "x": 1}));
        let e = Args::new("run_command", Some(&m), &["argv", "env", "n"]).err();
        assert_eq!(
            e.unwrap().0,
            "unknown argument `x`: run_command takes `argv`, `env`, `n`"
        );
        let m = obj(json!({"argv": "ls -l", "env": {"A": 1}, "n": -1, "mode": "x"}));
        let a = Args::new("run_command", Some(&m), &["argv", "env", "n", "mode"]).unwrap();
        assert_eq!(
            a.string_list("argv").unwrap_err().0,
            "argument `argv` must be an array of strings, not a string"
        );
        assert_eq!(
            a.opt_string_map("env").unwrap_err().0,
            "argument `env.A` must be a string, not a number"
        );
        assert_eq!(
            a.opt_u64("n", 1..=5).unwrap_err().0,
            "argument `n` must be a whole number, not a number"
        );
        assert!(a
            .opt_choice("mode", &["ro", "rw"])
            .unwrap_err()
            .0
            .contains("`mode` is \"x\"; it must be one of \"ro\", \"rw\""));
        assert_eq!(
            a.string("plan").unwrap_err().0,
            "missing required argument `plan` (run_command needs it)"
        );
        let m = obj(json!({"argv": ["a", 2], "session_id": "ABC"}));
        let a = Args::new("t", Some(&m), &["argv", "session_id"]).unwrap();
        assert_eq!(
            a.string_list("argv").unwrap_err().0,
            "argument `argv[1]` must be a string, not a number"
        );
        assert!(session_id(&a).unwrap_err().0.contains("`session_id`"));
        // No arguments at all is the same as none of them given.
        let a = Args::new("t", None, &["plan"]).unwrap();
        assert!(a.string("plan").unwrap_err().0.contains("`plan`"));
        assert_eq!(a.opt_string("plan").unwrap(), None);
    }
}
