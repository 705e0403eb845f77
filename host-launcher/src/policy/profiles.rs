//! Tool execution profiles: what a granted tool's own sandbox may execute and read
//! besides its binary, the shims and the loader.
//!
//! Every program the shipped policies grant has a profile here; any other program gets
//! the `default` profile, which executes nothing more. A tool that starts another
//! program by name reaches it through the shims, so that call is brokered and decided
//! by the rules like the agent's own; a tool that names a program by path can run only
//! what its profile lists.
//!
//! A policy may declare its own profile for a program (`[[profile]]`), which replaces
//! the shipped one. Declared profiles are checked when the policy loads; whether they
//! reach a shell or an interpreter is a lint ([`super::lint`]).

use super::document::{Located, ProfileDocument};
use super::{valid_id, Ctx, Location, Policy, PolicyError, RuleMatch};
use airlock_proto::tool_rules::ToolProfile;
use airlock_proto::verdict::Verdict;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;

/// git's exec-path in Debian images: where its remote helpers and the `git` it
/// re-executes for internal work (`index-pack`, `pack-objects`, …) live. Builds of git
/// elsewhere use `/usr/libexec/git-core` or `/usr/local/libexec/git-core`; the profile
/// lists all three, and the enforcer skips what an image lacks.
pub const GIT_EXEC_PATH: &str = "/usr/lib/git-core";

/// Longest path a profile may list (Linux `PATH_MAX`).
const MAX_PROFILE_PATH_BYTES: usize = 4096;

/// The profile shipped for `program`, or the `default` one.
pub fn shipped_profile(program: &str) -> ToolProfile {
    let (name, executes): (&str, &[&str]) = match program {
        // The exec-path's `git` (its internal subcommands run through it) and the HTTPS
        // remote helper (`git-remote-https` links to it). Not the directory: it also
        // holds shell and Perl scripts and the daemon, shell and http-backend programs.
        "git" => (
            "git",
            &[
                "/usr/lib/git-core/git",
                "/usr/lib/git-core/git-remote-http",
                "/usr/libexec/git-core/git",
                "/usr/libexec/git-core/git-remote-http",
                "/usr/local/libexec/git-core/git",
                "/usr/local/libexec/git-core/git-remote-http",
            ],
        ),
        // Searching runs nothing: `--pre` and `--search-zip` would start programs, and
        // can only reach the shims (brokered calls) under this profile.
        "rg" => ("rg", &[]),
        _ => ("default", &[]),
    };
    ToolProfile {
        name: name.to_string(),
        executes: executes.iter().map(|s| s.to_string()).collect(),
        reads: vec![],
    }
}

/// A `[[profile]]` the policy declares, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredProfile {
    /// Program it is for (basename).
    pub program: String,
    /// The profile the manifest carries for that program.
    pub profile: ToolProfile,
    /// Why, as written.
    pub reason: String,
    /// Where its `program` is.
    pub location: Location,
}

/// Where an effective profile comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileSource {
    /// Declared by the policy (`[[profile]]`).
    Policy,
    /// Shipped with Airlock ([`shipped_profile`]).
    Shipped,
}

/// The profile a program would run under, for reports (`airlock policy check`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectiveProfile {
    /// Program (basename).
    pub program: String,
    /// Whether the policy can grant the program at all (some invocation is not denied).
    pub granted: bool,
    /// Declared by the policy or shipped.
    pub source: ProfileSource,
    /// Line of the `[[profile]]` for a declared one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The declared profile's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Name, executes and reads, as the manifest carries them.
    #[serde(flatten)]
    pub profile: ToolProfile,
}

impl fmt::Display for EffectiveProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |paths: &[String]| match paths.is_empty() {
            true => "nothing more".to_string(),
            false => paths.join(", "),
        };
        let source = match (self.source, self.line) {
            (ProfileSource::Policy, Some(line)) => format!("policy, line {line}"),
            (ProfileSource::Policy, None) => "policy".to_string(),
            (ProfileSource::Shipped, _) => "shipped".to_string(),
        };
        write!(
            f,
            "{}: profile `{}` ({source}) executes {}",
            self.program,
            self.profile.name,
            list(&self.profile.executes)
        )?;
        if !self.profile.reads.is_empty() {
            write!(f, "; reads {}", list(&self.profile.reads))?;
        }
        if !self.granted {
            f.write_str(" [never granted]")?;
        }
        Ok(())
    }
}

impl Policy {
    /// The execution profile a granted `program` runs under: the policy's own
    /// `[[profile]]` for it, else the shipped one.
    pub fn tool_profile(&self, program: &str) -> ToolProfile {
        self.declared_profile(program)
            .map_or_else(|| shipped_profile(program), |d| d.profile.clone())
    }

    /// The policy's `[[profile]]` for `program`, if it declares one.
    pub fn declared_profile(&self, program: &str) -> Option<&DeclaredProfile> {
        self.profiles.iter().find(|d| d.program == program)
    }

    /// The effective profile of every program the policy has tool rules for (in the
    /// order they first appear), then of programs with only a declared profile.
    pub fn effective_profiles(&self) -> Vec<EffectiveProfile> {
        let mut programs: Vec<&str> = Vec::new();
        let tool_programs = self.rules.iter().filter_map(|r| match &r.matcher {
            RuleMatch::Tool { program, .. } => Some(program.as_str()),
            _ => None,
        });
        for p in tool_programs.chain(self.profiles.iter().map(|d| d.program.as_str())) {
            if !programs.contains(&p) {
                programs.push(p);
            }
        }
        programs
            .into_iter()
            .map(|program| {
                let declared = self.declared_profile(program);
                EffectiveProfile {
                    program: program.to_string(),
                    granted: self.decide_tool_grant(program).verdict != Verdict::Deny,
                    source: match declared {
                        Some(_) => ProfileSource::Policy,
                        None => ProfileSource::Shipped,
                    },
                    line: declared.map(|d| d.location.line),
                    reason: declared.map(|d| d.reason.clone()),
                    profile: self.tool_profile(program),
                }
            })
            .collect()
    }
}

/// Checks the policy's `[[profile]]` tables: one per program, a bare program name, a
/// valid name, a reason, and absolute, normalized, literal paths.
pub(super) fn compile_profiles(
    docs: Vec<ProfileDocument>,
    cx: &Ctx<'_>,
) -> Result<Vec<DeclaredProfile>, PolicyError> {
    let mut out: Vec<DeclaredProfile> = Vec::with_capacity(docs.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for doc in docs {
        let program = doc.program.value;
        let location = cx.loc(&doc.program.span);
        if !is_bare_program_name(&program) {
            return Err(cx.err(
                doc.program.span,
                format!("profile: program `{program}` must be a bare name (the basename tool rules match), like `make`"),
            ));
        }
        if let Some(first) = seen.insert(program.clone(), location.line) {
            return Err(cx.err(
                doc.program.span,
                format!("profile for `{program}` is declared twice (first at line {first}); a program has one profile"),
            ));
        }
        let name = match doc.name {
            Some(n) if !valid_id(&n.value) => {
                let message = format!(
                    "profile for `{program}`: name `{}` must be 1-64 characters of [A-Za-z0-9._-]",
                    n.value
                );
                return Err(cx.err(n.span, message));
            }
            Some(n) => n.value,
            None => program.clone(),
        };
        if doc.reason.value.trim().is_empty() {
            return Err(cx.err(
                doc.reason.span,
                format!("profile for `{program}`: reason is empty; say why the program needs these paths"),
            ));
        }
        let paths = |field: &str, list: Vec<Located<String>>| {
            let mut checked: Vec<String> = Vec::with_capacity(list.len());
            for p in list {
                let problem = profile_path_problem(&p.value).or_else(|| {
                    checked
                        .contains(&p.value)
                        .then(|| "is listed twice".to_string())
                });
                if let Some(problem) = problem {
                    return Err(cx.err(
                        p.span,
                        format!(
                            "profile for `{program}`: {field} entry `{}` {problem}",
                            p.value.escape_debug()
                        ),
                    ));
                }
                checked.push(p.value);
            }
            Ok(checked)
        };
        let executes = paths("executes", doc.executes)?;
        let reads = paths("reads", doc.reads)?;
        out.push(DeclaredProfile {
            profile: ToolProfile {
                name,
                executes,
                reads,
            },
            program,
            reason: doc.reason.value,
            location,
        });
    }
    Ok(out)
}

/// A name tool rules can match: what the basename of `argv[0]` can be.
fn is_bare_program_name(p: &str) -> bool {
    !p.is_empty()
        && p != "."
        && p != ".."
        && p.len() <= 255
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
}

/// Why `p` cannot be a profile path (the guest resolves it literally, as written).
fn profile_path_problem(p: &str) -> Option<String> {
    if p.len() > MAX_PROFILE_PATH_BYTES {
        return Some(format!("is longer than {MAX_PROFILE_PATH_BYTES} bytes"));
    }
    if p.trim() != p {
        return Some("has leading or trailing whitespace".into());
    }
    if p.chars().any(char::is_control) {
        return Some("contains a control character".into());
    }
    if !p.starts_with('/') {
        return Some("is not an absolute path (profiles name guest paths from `/`)".into());
    }
    if p != "/" && (p.ends_with('/') || p[1..].split('/').any(|c| matches!(c, "" | "." | ".."))) {
        return Some("is not normalized (no `//`, `.` or `..` components, no trailing `/`)".into());
    }
    if let Some(c) = p
        .chars()
        .find(|c| matches!(c, '*' | '?' | '[' | ']' | '{' | '}'))
    {
        return Some(format!(
            "contains `{c}`: profile paths are literal, not globs (a directory covers everything below it)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::Policy;
    use super::*;

    const HEAD: &str = "version = 1\ndefault = \"deny\"\n";

    fn load(body: &str) -> Result<Policy, String> {
        Policy::from_toml("p.toml", &format!("{HEAD}{body}")).map_err(|e| e.to_string())
    }

    fn profile(fields: &str) -> String {
        format!("[[profile]]\nprogram = \"make\"\nreason = \"builds C\"\n{fields}\n")
    }

    #[test]
    fn a_declared_profile_replaces_the_shipped_one() {
        let p = load(&format!(
            "[[rule]]\nid = \"make\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.tool = {{ program = \"make\" }}\n{}",
            profile("name = \"make-cc\"\nexecutes = [\"/usr/bin/cc\", \"/usr/lib/gcc\"]\nreads = [\"/usr/include\"]")
        ))
        .unwrap();
        let want = ToolProfile {
            name: "make-cc".into(),
            executes: vec!["/usr/bin/cc".into(), "/usr/lib/gcc".into()],
            reads: vec!["/usr/include".into()],
        };
        assert_eq!(p.tool_profile("make"), want);
        assert_eq!(p.tool_grant("make").profile, want);
        assert_eq!(p.tool_profile("git"), shipped_profile("git"));
        let eff = p.effective_profiles();
        assert_eq!(eff.len(), 1);
        assert_eq!(
            (eff[0].source, eff[0].line, eff[0].granted),
            (ProfileSource::Policy, Some(9), true)
        );
        assert_eq!(
            eff[0].to_string(),
            "make: profile `make-cc` (policy, line 9) executes /usr/bin/cc, /usr/lib/gcc; reads /usr/include"
        );
        let json = serde_json::to_value(&eff[0]).unwrap();
        assert_eq!(json["name"], "make-cc");
        assert_eq!(json["source"], "policy");
        assert_eq!(json["executes"][1], "/usr/lib/gcc");
    }

    #[test]
    fn name_defaults_to_the_program_and_lists_default_to_empty() {
        let p = load(&profile("")).unwrap();
        let want = ToolProfile {
            name: "make".into(),
            ..Default::default()
        };
        assert_eq!(p.tool_profile("make"), want);
        // A profile without rules is still reported: the policy declared it.
        let eff = p.effective_profiles();
        assert_eq!(eff[0].program, "make");
        assert!(!eff[0].granted);
        assert!(eff[0]
            .to_string()
            .ends_with("executes nothing more [never granted]"));
    }

    #[test]
    fn shipped_profiles_are_reported_for_programs_with_rules() {
        let p = load(
            "[[rule]]\nid = \"git\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.tool = { program = \"git\", argv = \"status **\" }\n\
             [[rule]]\nid = \"rg\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.tool = { program = \"rg\" }\n\
             [[rule]]\nid = \"git-log\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.tool = { program = \"git\", argv = \"log **\" }\n",
        )
        .unwrap();
        let eff = p.effective_profiles();
        let programs: Vec<&str> = eff.iter().map(|e| e.program.as_str()).collect();
        assert_eq!(programs, ["git", "rg"]);
        assert_eq!(eff[0].source, ProfileSource::Shipped);
        assert_eq!(eff[0].profile, shipped_profile("git"));
        assert_eq!(
            eff[0].to_string(),
            format!(
                "git: profile `git` (shipped) executes {}",
                shipped_profile("git").executes.join(", ")
            )
        );
        assert_eq!(
            eff[1].to_string(),
            "rg: profile `rg` (shipped) executes nothing more"
        );
        let json = serde_json::to_value(&eff[1]).unwrap();
        assert!(
            json.get("line").is_none() && json.get("reason").is_none(),
            "{json}"
        );
    }

    /// Each bad profile is refused at the offending value, naming it.
    #[test]
    fn bad_profiles_are_refused_at_their_place() {
        let cases: &[(&str, &str)] = &[
            (
                "[[profile]]\nprogram = \"/usr/bin/make\"\nreason = \"r\"\n",
                "p.toml:4:11: profile: program `/usr/bin/make` must be a bare name",
            ),
            (
                "[[profile]]\nprogram = \"..\"\nreason = \"r\"\n",
                "p.toml:4:11: profile: program `..` must be a bare name",
            ),
            (
                &format!("{}{}", profile(""), profile("")),
                "p.toml:8:11: profile for `make` is declared twice (first at line 4)",
            ),
            (
                &profile("name = \"a b\""),
                "p.toml:6:8: profile for `make`: name `a b` must be 1-64 characters",
            ),
            (
                "[[profile]]\nprogram = \"make\"\nreason = \" \"\n",
                "p.toml:5:10: profile for `make`: reason is empty",
            ),
            (
                "[[profile]]\nprogram = \"make\"\n",
                "p.toml:3:1: missing field `reason`",
            ),
            (
                &profile("executes = [\"usr/bin/cc\"]"),
                "p.toml:6:13: profile for `make`: executes entry `usr/bin/cc` is not an absolute path",
            ),
            (
                &profile("executes = [\"/usr/bin/../bin/sh\"]"),
                "executes entry `/usr/bin/../bin/sh` is not normalized",
            ),
            (
                &profile("executes = [\"/usr/lib/gcc/\"]"),
                "executes entry `/usr/lib/gcc/` is not normalized",
            ),
            (
                &profile("reads = [\"/usr//include\"]"),
                "p.toml:6:10: profile for `make`: reads entry `/usr//include` is not normalized",
            ),
            (
                &profile("reads = [\"/usr/include/.\"]"),
                "reads entry `/usr/include/.` is not normalized",
            ),
            (
                &profile("executes = [\"/usr/bin/cc \"]"),
                "executes entry `/usr/bin/cc ` has leading or trailing whitespace",
            ),
            (
                &profile("executes = [\"/usr/bin/cc\\n\"]"),
                "executes entry `/usr/bin/cc\\n` has leading or trailing whitespace",
            ),
            (
                &profile("executes = [\"/usr/bin/c\\u0007c\"]"),
                "contains a control character",
            ),
            (
                &profile("executes = [\"/usr/bin/*\"]"),
                "executes entry `/usr/bin/*` contains `*`: profile paths are literal, not globs",
            ),
            (
                &profile("executes = [\"/usr/bin/cc\", \"/usr/bin/cc\"]"),
                "p.toml:6:28: profile for `make`: executes entry `/usr/bin/cc` is listed twice",
            ),
            (
                &profile("executes = \"/usr/bin/cc\""),
                "p.toml:6:12: invalid type: string \"/usr/bin/cc\", expected a sequence",
            ),
            (
                &profile("runs = [\"/usr/bin/cc\"]"),
                "p.toml:6:1: unknown field `runs`, expected one of `program`, `name`, `executes`, `reads`, `reason`",
            ),
        ];
        for (body, want) in cases {
            let err = load(body).expect_err(body);
            assert!(err.contains(want), "{body}\nwant: {want}\ngot:  {err}");
        }
    }

    #[test]
    fn root_is_a_valid_path_and_left_to_the_lint() {
        let p = load(&profile("executes = [\"/\"]")).unwrap();
        assert_eq!(p.tool_profile("make").executes, ["/"]);
    }
}
