use super::capability::Capability;
use super::lint::{lint, Lint, LintKind};
use super::*;

fn policy(text: &str) -> Policy {
    Policy::from_toml("test.toml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn load_err(text: &str) -> String {
    Policy::from_toml("test.toml", text)
        .unwrap_err()
        .to_string()
}

fn cap(text: &str) -> Vec<Capability> {
    Capability::parse_text(text).unwrap()
}

fn coding_agent() -> Policy {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/policies/coding-agent.toml");
    Policy::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

const HEAD: &str = "version = 1\ndefault = \"deny\"\n";

#[test]
fn first_match_wins_and_default_applies() {
    let p = policy(&format!(
        "{HEAD}
[[rule]]
id = \"a\"
decision = \"deny\"
reason = \"r\"
match.fs = {{ path = \"/x/secret/**\" }}
[[rule]]
id = \"b\"
decision = \"allow\"
reason = \"r\"
match.fs = {{ path = \"/x/**\" }}
"
    ));
    assert_eq!(p.decide_all(&cap("fs ro /x/secret/k")).rule_id, "a");
    assert_eq!(p.decide_all(&cap("fs ro /x/y")).verdict, Verdict::Allow);
    assert_eq!(
        p.decide_all(&cap("fs ro /x")).rule_id,
        "b",
        "dir/** covers dir itself"
    );
    let d = p.decide_all(&cap("fs ro /y"));
    assert_eq!((d.verdict, d.rule_id.as_str()), (Verdict::Deny, "default"));
}

#[test]
fn a_wildcard_request_is_granted_only_by_a_rule_covering_every_name_under_it() {
    let p = policy(&format!(
        "{HEAD}
[[rule]]
id = \"exact\"
decision = \"allow\"
reason = \"r\"
match.net = {{ host = \"crates.io\" }}
[[rule]]
id = \"under\"
decision = \"ask\"
reason = \"r\"
match.net = {{ host = \"*.crates.io\", port = 443 }}
examples.match = [\"*.crates.io:443\", \"*.static.crates.io:443\", \"static.crates.io:443\"]
examples.not_match = [\"*.other.io:443\", \"*.crates.io:80\"]
"
    ));
    for (request, rule) in [
        ("net *.crates.io:443", "under"),
        ("net *.static.crates.io:443", "under"),
        ("net crates.io:443", "exact"),
        // `crates.io` names one host, not the names under it.
        ("net *.crates.io:80", "default"),
        ("net *.evilcrates.io:443", "default"),
    ] {
        assert_eq!(p.decide_all(&cap(request)).rule_id, rule, "{request}");
    }
    for bad in [
        "net *.com:443",
        "net a.*.crates.io:443",
        "net *crates.io:443",
    ] {
        assert!(Capability::parse_text(bad).is_err(), "{bad}");
    }
}

#[test]
fn coding_agent_policy_decides_the_issue_examples() {
    let p = coding_agent();
    for (text, verdict, rule) in [
        ("tool git commit -m x", Verdict::Allow, "git-commit"),
        ("tool git status", Verdict::Allow, "git-status"),
        ("tool git diff", Verdict::Allow, "git-diff"),
        ("tool git push origin main", Verdict::Ask, "git-push"),
        (
            "tool git -C x -c core.sshCommand=y push",
            Verdict::Deny,
            "git-config-other",
        ),
        (
            "tool git -C x -c user.name=y push",
            Verdict::Ask,
            "git-push",
        ),
        ("tool git reset --hard", Verdict::Deny, "git-reset-hard"),
        ("tool git clean -fdx", Verdict::Deny, "git-clean"),
        ("tool python3 -c 1", Verdict::Deny, "no-python"),
        (
            "fs ro /home/alice/.ssh/id_rsa",
            Verdict::Deny,
            "home-secrets",
        ),
        ("fs rw /home/alice/work/app", Verdict::Allow, "workspace"),
        ("net github.com:443", Verdict::Allow, "forge-https"),
        ("net evil.example:443", Verdict::Ask, "other-https"),
        ("net evil.example:80", Verdict::Deny, "default"),
        ("resources vcpus=64", Verdict::Deny, NO_CEILING_RULE_ID),
    ] {
        let d = p.decide_all(&cap(text));
        assert_eq!(
            (d.verdict, d.rule_id.as_str()),
            (verdict, rule),
            "{text}: {d:?}"
        );
    }
}

#[test]
fn example_policies_load_and_pass_their_examples() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/policies");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let p = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!p.rules.is_empty(), "{}", path.display());
            let shadowed: Vec<_> = lint(&p)
                .into_iter()
                .filter(|l| {
                    matches!(
                        l.kind,
                        LintKind::Shadowed | LintKind::ExampleShadowed | LintKind::NeverMatches
                    )
                })
                .collect();
            assert!(shadowed.is_empty(), "{}: {shadowed:#?}", path.display());
            n += 1;
        }
    }
    assert!(n >= 2, "expected the shipped example policies");
}

/// Data-driven load errors: (policy body, expected `line:col: message` fragment).
#[test]
fn load_errors_name_line_column_and_problem() {
    let cases: &[(&str, &str)] = &[
        ("version = 1\ndefault = \"maybe\"\n", "test.toml:2:11: unknown variant `maybe`"),
        ("version = 2\ndefault = \"deny\"\n", "test.toml:1:11: policy version 2 is not supported"),
        ("version = 1\ndefault = \"deny\"\nextra = 1\n", "test.toml:3:1: unknown field `extra`"),
        ("version = 1\ndefault = \"deny\"\n[[rule]]\nid = 7\n", "test.toml:4:6: invalid type: integer `7`"),
        ("version = 1\ndefault = \"deny\"\n[[rule\n", "test.toml:3:"),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.fs = { path = \"/a/[\" }\n",
            "test.toml:7:21: rule `a`: bad path glob",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.fs = { path = \"/a\" }\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.fs = { path = \"/b\" }\n",
            "test.toml:9:6: duplicate rule id `a`",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.fs = { path = \"/a/**\" }\nexamples.match = [\"ro /b\"]\n",
            "test.toml:8:19: rule `a`: example `ro /b` should match this rule but does not",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.net = { host = \"a.com\", port = 443 }\nexamples.not_match = [\"a.com:443\"]\n",
            "test.toml:8:23: rule `a`: example `a.com:443` should not match this rule but does",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.net = { host = \"a.com\", port = \"9-1\" }\n",
            "test.toml:7:38: rule `a`: port range `9-1` is empty",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.net = { host = \"a.*.com\" }\n",
            "test.toml:7:22: rule `a`: host `a.*.com`",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch = { fs = { path = \"/a\" }, net = { host = \"b\" } }\n",
            "test.toml:7:9: rule `a`: `match` must set exactly one of fs, net, tool, resources (it sets 2)",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.tool = { program = \"/usr/bin/git\" }\n",
            "test.toml:7:26: rule `a`: program `/usr/bin/git` must be a bare name",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.tool = { program = \"git\", argv = \"commit 'x\" }\n",
            "test.toml:7:40: rule `a`: argv pattern `commit 'x`: unterminated ' quote",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a b\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.tool = { program = \"git\" }\n",
            "test.toml:4:6: rule id `a b` must be",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \" \"\nmatch.tool = { program = \"git\" }\n",
            "test.toml:6:10: rule `a`: reason is empty",
        ),
        (
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"a\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.fs = { path = \"/a\", mode = \"wo\" }\n",
            "test.toml:7:34: unknown variant `wo`",
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(text, want)| {
            let err = load_err(text);
            (!err.contains(want)).then(|| format!("want: {want}\ngot:  {err}"))
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn oversized_and_missing_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; (MAX_POLICY_BYTES + 1) as usize]).unwrap();
    let err = Policy::load(&big).unwrap_err();
    assert!(matches!(err, PolicyError::TooLarge { .. }), "{err}");
    let err = Policy::load(&dir.path().join("nope.toml")).unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }), "{err}");
}

/// Runs `cases` deterministic cases of `strategy` through `test`; panics on a failure.
fn run_cases<S: proptest::strategy::Strategy>(
    what: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) {
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(config.rng_algorithm);
    if let Err(e) = TestRunner::new_with_rng(config, rng).run(&strategy, test) {
        panic!("{what}: {e}");
    }
}

/// A load error must name `origin`, carry a non-empty message, and point inside `text`.
fn check_load_error(
    origin: &str,
    text: Option<&str>,
    err: &PolicyError,
) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::{prop_assert, prop_assert_eq};
    let shown = err.to_string();
    prop_assert!(
        shown.starts_with(origin) && shown.len() > origin.len() + 2,
        "error does not name its origin or says nothing: {shown:?}"
    );
    match err {
        PolicyError::At {
            origin: o,
            line,
            col,
            message,
        } => {
            prop_assert_eq!(o, origin);
            prop_assert!(!message.trim().is_empty(), "empty message: {shown:?}");
            if let Some(text) = text {
                let lines: Vec<&str> = text.split('\n').collect();
                prop_assert!(
                    (1..=lines.len()).contains(line),
                    "line {line} outside the text's {} lines: {shown:?}",
                    lines.len()
                );
                let width = lines[line - 1].chars().count();
                prop_assert!(
                    (1..=width + 1).contains(col),
                    "column {col} outside line {line} ({width} chars): {shown:?}"
                );
            }
        }
        PolicyError::Read { source, .. } => {
            prop_assert!(!source.to_string().trim().is_empty(), "{shown:?}")
        }
        PolicyError::TooLarge { .. } => {}
    }
    Ok(())
}

/// How a generated policy fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Loaded,
    /// Refused by TOML parsing or deserialization.
    BadDocument,
    /// Refused after deserializing: by rule compilation or the checks around it.
    BadRules,
}

/// Loads `text`; an error must be well-formed.
fn check_load(text: &str) -> Result<Outcome, proptest::test_runner::TestCaseError> {
    match Policy::from_toml("gen.toml", text) {
        Ok(_) => Ok(Outcome::Loaded),
        Err(e) => {
            check_load_error("gen.toml", Some(text), &e)?;
            let semantic = matches!(&e, PolicyError::At { message, .. }
                if ["rule ", "duplicate rule id", "policy version"]
                    .iter()
                    .any(|p| message.starts_with(p)));
            Ok(if semantic {
                Outcome::BadRules
            } else {
                Outcome::BadDocument
            })
        }
    }
}

/// Lines of rule syntax, valid and not, spliced into generated policies.
const FRAGMENTS: &[&str] = &[
    "",
    "# a comment",
    "[[rule]]",
    "[rule]",
    "[[rule",
    "version = 1",
    "version = 2",
    "default = \"allow\"",
    "default = \"maybe\"",
    "id = \"extra\"",
    "id = 7",
    "id = \"a b\"",
    "decision = \"ask\"",
    "decision = \"maybe\"",
    "reason = \"r\"",
    "reason = \" \"",
    "match.fs = { path = \"/srv/**\" }",
    "match.fs = { path = \"/a/[\" }",
    "match.fs = { path = \"/a\", mode = \"wo\" }",
    "match.net = { host = \"a.*.com\" }",
    "match.net = { host = \"a.com\", port = \"9-1\" }",
    "match.net = { host = \"a.com\", port = 70000 }",
    "match.tool = { program = \"/usr/bin/git\" }",
    "match.tool = { program = \"git\", argv = \"commit 'x\" }",
    "match.tool = { program = \"git\", config = \"user.*\" }",
    "match.resources = { vcpus = 0 }",
    "match = { fs = { path = \"/a\" }, net = { host = \"b\" } }",
    "examples.match = [\"ro /b\"]",
    "examples.not_match = [\"github.com:443\"]",
    "extra = 1",
    "\"unterminated",
    "\u{0}",
    "id = \"\u{e9}\"",
];

/// Token substitutions applied inside one line of a shipped policy.
const SUBSTITUTIONS: &[(&str, &str)] = &[
    ("deny", "allow"),
    ("allow", "maybe"),
    ("443", "\"9-1\""),
    ("443", "70000"),
    ("**", "["),
    ("\"", "'"),
    ("\"", ""),
    (" = ", " "),
    ("git\"", "/usr/bin/git\""),
    ("**", "'x"),
    ("match.", "matches."),
    ("id = \"", "id = \"x "),
    ("ro ", "wo "),
    ("[[", "["),
    ("}", ""),
    ("1", "2"),
    ("github.com", "*.*"),
    ("*", "\\"),
    ("examples.match", "examples.not_match"),
    ("examples.not_match", "examples.match"),
    ("reason = \"", "reason = \"\" #"),
    ("path = \"", "path = \"x/"),
    ("host = \"", "host = \"-"),
    ("port = 443", "port = \"443-80\""),
    ("argv = \"", "argv = \"\\\\"),
    ("config = \"", "argv = \"x\", config = \""),
    ("vcpus = 2", "vcpus = 0"),
    ("\"/home", "\"home"),
];

/// One edit of a policy's lines; the indices are scaled to the lines present.
#[derive(Debug, Clone)]
enum Edit {
    Delete(proptest::sample::Index),
    Duplicate(proptest::sample::Index),
    Swap(proptest::sample::Index, proptest::sample::Index),
    Truncate(proptest::sample::Index, proptest::sample::Index),
    Replace(proptest::sample::Index, &'static str),
    Insert(proptest::sample::Index, &'static str),
    Substitute(proptest::sample::Index, (&'static str, &'static str)),
}

fn arb_edit() -> impl proptest::strategy::Strategy<Value = Edit> {
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
    // Token substitutions mostly keep the document well-formed and so reach the rule
    // checks; line edits mostly break the document.
    prop_oneof![
        1 => any::<Index>().prop_map(Edit::Delete),
        1 => any::<Index>().prop_map(Edit::Duplicate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Truncate(a, b)),
        1 => (any::<Index>(), select(FRAGMENTS)).prop_map(|(a, f)| Edit::Replace(a, f)),
        1 => (any::<Index>(), select(FRAGMENTS)).prop_map(|(a, f)| Edit::Insert(a, f)),
        6 => (any::<Index>(), select(SUBSTITUTIONS)).prop_map(|(a, s)| Edit::Substitute(a, s)),
    ]
}

fn apply_edit(lines: &mut Vec<String>, edit: &Edit) {
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match edit {
        Edit::Delete(i) => {
            lines.remove(i.index(n));
        }
        Edit::Duplicate(i) => {
            let line = lines[i.index(n)].clone();
            lines.insert(i.index(n), line);
        }
        Edit::Swap(i, j) => lines.swap(i.index(n), j.index(n)),
        Edit::Truncate(i, at) => {
            let line = &mut lines[i.index(n)];
            let keep = at.index(line.chars().count() + 1);
            *line = line.chars().take(keep).collect();
        }
        Edit::Replace(i, fragment) => lines[i.index(n)] = fragment.to_string(),
        Edit::Insert(i, fragment) => lines.insert(i.index(n + 1), fragment.to_string()),
        Edit::Substitute(i, (from, to)) => {
            // Among the lines holding `from`, edit the i-th.
            let holding: Vec<usize> = (0..n).filter(|&k| lines[k].contains(from)).collect();
            if !holding.is_empty() {
                let k = holding[i.index(holding.len())];
                lines[k] = lines[k].replacen(from, to, 1);
            }
        }
    }
}

/// Rule bodies for assembled policies: a `match` line with an example it matches and
/// one it does not (`None`: the match line itself is invalid).
const MATCHES: &[(&str, Option<(&str, &str)>)] = &[
    (
        "match.fs = { path = \"/srv/**\" }",
        Some(("ro /srv/app", "ro /etc/x")),
    ),
    (
        "match.fs = { path = \"{/home/*,/root}/{work,src}/**\", mode = \"any\" }",
        Some(("rw /home/a/work/x", "ro /home/a/.ssh/id")),
    ),
    (
        "match.net = { host = \"*.example.com\", port = 443 }",
        Some(("api.example.com:443", "example.org:443")),
    ),
    (
        "match.net = { host = \"a.com\", port = \"1-1024\" }",
        Some(("a.com:80", "a.com:2000")),
    ),
    (
        "match.tool = { program = \"git\", argv = \"push ** --force **\" }",
        Some(("git push --force origin", "git push origin")),
    ),
    (
        "match.tool = { program = \"git\", config = \"user.*\" }",
        Some(("git -c user.name=x commit", "git -c core.pager=less log")),
    ),
    (
        "match.resources = { vcpus = 2, memory_mib = 2048 }",
        Some(("vcpus=1 memory_mib=512", "vcpus=3")),
    ),
    ("match.fs = { path = \"/a/[\" }", None),
    ("match.fs = { path = \"/a\", mode = \"wo\" }", None),
    ("match.net = { host = \"a.*.com\" }", None),
    ("match.net = { host = \"a.com\", port = \"9-1\" }", None),
    ("match.tool = { program = \"/usr/bin/git\" }", None),
    (
        "match.tool = { program = \"git\", argv = \"commit 'x\" }",
        None,
    ),
    (
        "match = { fs = { path = \"/a\" }, net = { host = \"b\" } }",
        None,
    ),
];

/// A policy assembled from rule syntax: mostly valid pieces, some broken ones.
fn arb_assembled_policy() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    use proptest::sample::select;
    let head = prop_oneof![
        8 => Just(HEAD),
        1 => select(vec![
            "version = 2\ndefault = \"deny\"\n",
            "version = 1\n",
            "default = \"deny\"\n",
            "version = 1\ndefault = \"allow\"\n",
            "version = 1\ndefault = \"deny\"\nextra = 1\n",
        ]),
    ];
    let id =
        prop_oneof![12 => Just(None), 1 => select(vec!["a b", "", "r0", "x\u{e9}"]).prop_map(Some)];
    let decision = prop_oneof![
        12 => select(vec!["allow", "deny", "ask"]).prop_map(|d| format!("decision = \"{d}\"\n")),
        1 => select(vec!["decision = \"maybe\"\n", "decision = 1\n", ""]).prop_map(String::from),
    ];
    let reason = prop_oneof![
        12 => Just("reason = \"r\"\n"),
        1 => select(vec!["reason = \" \"\n", ""]),
    ];
    // 0: no examples; 1, 2: right ones; 3: the wrong way round.
    let examples = prop_oneof![4 => Just(0u8), 2 => Just(1u8), 2 => Just(2u8), 1 => Just(3u8)];
    let rule = (id, decision, reason, select(MATCHES), examples);
    (head, prop::collection::vec(rule, 0..4)).prop_map(|(head, rules)| {
        let mut text = head.to_string();
        for (i, (id, decision, reason, (matcher, ex), examples)) in rules.into_iter().enumerate() {
            let id = id.map_or_else(|| format!("r{i}"), String::from);
            text += &format!("\n[[rule]]\nid = \"{id}\"\n{decision}{reason}{matcher}\n");
            let (good, bad) = ex.unwrap_or(("ro /x", "ro /y"));
            match examples {
                1 => text += &format!("examples.match = [\"{good}\"]\n"),
                2 => {
                    text += &format!(
                        "examples.match = [\"{good}\"]\nexamples.not_match = [\"{bad}\"]\n"
                    )
                }
                3 => text += &format!("examples.match = [\"{bad}\"]\n"),
                _ => {}
            }
        }
        text
    })
}

#[test]
fn arbitrary_bytes_never_panic_the_loader() {
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    // Fixed inputs that once mattered.
    for text in [
        "\u{0}",
        "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"\u{e9}\"\n",
        "[[[",
        "rule = 5",
        "",
    ] {
        if let Err(e) = check_load(text) {
            panic!("{text:?}: {e}");
        }
    }

    // Arbitrary bytes, both as text and as a file (not UTF-8 → a read error).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bytes.toml");
    let origin = file.display().to_string();
    run_cases("arbitrary bytes", 512, any::<Vec<u8>>(), |bytes| {
        check_load(&String::from_utf8_lossy(&bytes))?;
        std::fs::write(&file, &bytes).unwrap();
        if let Err(e) = Policy::load(&file) {
            check_load_error(&origin, std::str::from_utf8(&bytes).ok(), &e)?;
        }
        Ok(())
    });
    // Arbitrary text in TOML's alphabet.
    run_cases(
        "TOML-alphabet text",
        512,
        "[a-z0-9 =.,\"'#*\\[\\]{}\\\\\n-]{0,120}",
        |text| check_load(&text).map(drop),
    );

    // Near-valid policies: the shipped policy with a few line edits, and policies
    // assembled from rule syntax. Both must sometimes load and sometimes fail, or the
    // generator is not reaching the compiler behind the TOML parser.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/policies/coding-agent.toml"),
    )
    .unwrap();
    let shipped: Vec<String> = shipped.lines().map(String::from).collect();
    for (what, cases) in [("edited shipped policy", 256u32), ("assembled policy", 512)] {
        let counts =
            [Outcome::Loaded, Outcome::BadDocument, Outcome::BadRules].map(|_| AtomicUsize::new(0));
        let count = |outcome: Outcome| {
            counts[outcome as usize].fetch_add(1, Relaxed);
        };
        if what == "assembled policy" {
            run_cases(what, cases, arb_assembled_policy(), |text| {
                check_load(&text).map(count)
            });
        } else {
            let edits = prop::collection::vec(arb_edit(), 0..3);
            run_cases(what, cases, edits, |edits| {
                let mut lines = shipped.clone();
                for edit in &edits {
                    apply_edit(&mut lines, edit);
                }
                check_load(&lines.join("\n")).map(count)
            });
        }
        let [loaded, bad_document, bad_rules] = counts.map(AtomicUsize::into_inner);
        eprintln!(
            "{what}: of {cases}, {loaded} loaded, {bad_document} refused as documents, \
             {bad_rules} refused by rule checks"
        );
        // Measured: 95/109/52 of 256 edited, 182/140/190 of 512 assembled. Each outcome
        // must keep at least a tenth of the cases.
        let floor = cases as usize / 10;
        assert!(
            [loaded, bad_document, bad_rules]
                .iter()
                .all(|&n| n >= floor),
            "{what}: {loaded} loaded, {bad_document} + {bad_rules} refused of {cases}; \
             each must reach {floor}"
        );
    }
}

#[test]
fn shadowing_lint_fires_on_a_crafted_policy() {
    let p = policy(&format!(
        "{HEAD}
[[rule]]
id = \"all-git\"
decision = \"allow\"
reason = \"r\"
match.tool = {{ program = \"git\", argv = \"**\" }}
[[rule]]
id = \"git-push\"
decision = \"ask\"
reason = \"r\"
match.tool = {{ program = \"git\", argv = \"push **\" }}
[[rule]]
id = \"wide-net\"
decision = \"allow\"
reason = \"r\"
match.net = {{ host = \"*.example.com\" }}
[[rule]]
id = \"narrow-net\"
decision = \"deny\"
reason = \"r\"
match.net = {{ host = \"api.example.com\", port = 443 }}
[[rule]]
id = \"dir\"
decision = \"allow\"
reason = \"r\"
match.fs = {{ path = \"/srv/**\" }}
[[rule]]
id = \"file\"
decision = \"deny\"
reason = \"r\"
match.fs = {{ path = \"/srv/app/secret\", mode = \"ro\" }}
[[rule]]
id = \"not-shadowed\"
decision = \"deny\"
reason = \"r\"
match.fs = {{ path = \"/srvx/**\" }}
"
    ));
    let lints = lint(&p);
    let shadowed: Vec<&str> = lints
        .iter()
        .filter(|l| l.kind == LintKind::Shadowed)
        .map(|l| l.rule_id.as_str())
        .collect();
    assert_eq!(shadowed, ["git-push", "narrow-net", "file"], "{lints:#?}");
    let msg = &lints
        .iter()
        .find(|l| l.rule_id == "git-push")
        .unwrap()
        .message;
    assert!(msg.contains("shadowed by `all-git`"), "{msg}");
}

#[test]
fn other_lints_fire() {
    let p = policy(&format!(
        "{HEAD}
[[rule]]
id = \"sh\"
decision = \"ask\"
reason = \"r\"
match.tool = {{ program = \"bash\" }}
[[rule]]
id = \"pager\"
decision = \"allow\"
reason = \"r\"
match.tool = {{ program = \"git\", config = \"core.*\" }}
[[rule]]
id = \"find\"
decision = \"allow\"
reason = \"r\"
match.tool = {{ program = \"find\", argv = \"**\" }}
[[rule]]
id = \"relative\"
decision = \"allow\"
reason = \"r\"
match.fs = {{ path = \"work/**\" }}
[[rule]]
id = \"git-global\"
decision = \"allow\"
reason = \"r\"
match.tool = {{ program = \"git\", argv = \"-c **\" }}
[[rule]]
id = \"cfg-ls\"
decision = \"allow\"
reason = \"r\"
match.tool = {{ program = \"ls\", config = \"a.b\" }}
[[rule]]
id = \"zero\"
decision = \"allow\"
reason = \"r\"
match.resources = {{ vcpus = 0 }}
[[rule]]
id = \"sh-deny\"
decision = \"deny\"
reason = \"r\"
match.tool = {{ program = \"zsh\" }}
"
    ));
    let lints = lint(&p);
    let of = |kind| {
        lints
            .iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.rule_id.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(LintKind::GrantsExecution),
        ["sh", "pager", "find"],
        "{lints:#?}"
    );
    assert_eq!(
        of(LintKind::NeverMatches),
        ["relative", "git-global", "cfg-ls", "zero"],
        "{lints:#?}"
    );
    assert!(of(LintKind::NoResourcesRule).is_empty());
    // `zero` names only vcpus: every other resource is unbounded.
    let unbounded: Vec<&Lint> = lints
        .iter()
        .filter(|l| l.kind == LintKind::UnboundedResource)
        .collect();
    assert_eq!(unbounded.len(), 1, "{lints:#?}");
    assert!(
        unbounded[0].rule_id == "zero"
            && unbounded[0]
                .message
                .contains("no ceiling for `memory_mib`, `disk_mib`, `pids`, `wall_time_secs`, `net_connections`, `net_mib`"),
        "{lints:#?}"
    );
    let open = policy("version = 1\ndefault = \"allow\"\n");
    let kinds: Vec<LintKind> = lint(&open).into_iter().map(|l| l.kind).collect();
    assert_eq!(kinds, [LintKind::DefaultAllow, LintKind::NoResourcesRule]);
}

#[test]
fn tool_grant_reflects_reachable_rules() {
    let p = coding_agent();
    assert_eq!(p.decide_tool_grant("git").verdict, Verdict::Allow);
    assert_eq!(p.decide_tool_grant("rg").verdict, Verdict::Allow);
    let d = p.decide_tool_grant("bash");
    assert_eq!((d.verdict, d.rule_id.as_str()), (Verdict::Deny, "no-bash"));
    let d = p.decide_tool_grant("curl");
    assert_eq!((d.verdict, d.rule_id.as_str()), (Verdict::Deny, "default"));
    let grant = p.tool_grant("git");
    assert_eq!(
        grant.rules.first().map(|r| r.id.as_str()),
        Some("git-config-identity")
    );
    assert!(grant
        .rules
        .iter()
        .all(|r| p.rules.iter().any(|pr| pr.id == r.id)));
}

#[test]
fn runtime_grant_and_policy_agree_on_git_invocations() {
    // The manifest's ToolGrant and the launcher's engine must give the same answer.
    let p = coding_agent();
    let grant = p.tool_grant("git");
    for argv in [
        "git commit -m x",
        "git -c core.pager=less log",
        "git -c user.name=x push",
        "git reset HEAD~1 --hard",
        "git frobnicate",
        "git push --force",
        "git reset --har",
        "git push -fu origin",
        "git branch -Df x",
        "git clone -u /x y",
        "git restore -- --staged",
    ] {
        let words = shell_words::split(argv).unwrap();
        let inv = airlock_proto::tool_invocation::Invocation::parse(&words).unwrap();
        let runtime = grant.decide(&inv);
        let host = p.decide_all(&Capability::of_invocation(&inv));
        assert_eq!(runtime.verdict, host.verdict, "{argv}");
        assert_eq!(runtime.decisive.rule_id, host.rule_id, "{argv}");
    }
}

#[test]
fn git_is_decided_on_what_git_reads_not_on_the_spelling() {
    let p = coding_agent();
    for (text, verdict, rule) in [
        ("tool git reset --har", Verdict::Deny, "git-reset-hard"),
        (
            "tool git push -fu origin",
            Verdict::Deny,
            "git-push-force-short",
        ),
        ("tool git push --delet x", Verdict::Deny, "git-push-delete"),
        (
            "tool git branch -Df x",
            Verdict::Deny,
            "git-branch-delete-force",
        ),
        ("tool git commit -mfoo", Verdict::Allow, "git-commit"),
        ("tool git reset -- --hard", Verdict::Deny, "git-reset-hard"),
        ("tool git reset -- --har", Verdict::Deny, "default"),
        ("tool git clone -u /x y", Verdict::Deny, "git-config-other"),
        ("tool git fetch -u origin", Verdict::Allow, "git-fetch"),
    ] {
        let d = p.decide_all(&cap(text));
        assert_eq!(
            (d.verdict, d.rule_id.as_str()),
            (verdict, rule),
            "{text}: {d:?}"
        );
    }
}

#[test]
fn an_ambiguous_git_option_is_refused_in_capabilities_and_examples() {
    // git 2.47 itself refuses `push --forc`: --force, --force-with-lease or
    // --force-if-includes.
    let err = Capability::parse_text("tool git push --forc origin")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`--forc` is ambiguous") && err.contains("--force-with-lease"),
        "{err}"
    );
    let err = load_err(&format!(
        "{HEAD}
[[rule]]
id = \"push\"
decision = \"ask\"
reason = \"r\"
match.tool = {{ program = \"git\", argv = \"push **\" }}
examples.match = [\"git push --forc\"]
"
    ));
    assert!(
        err.contains("test.toml:9:") && err.contains("ambiguous"),
        "{err}"
    );
}

fn arb_capability() -> impl proptest::strategy::Strategy<Value = Capability> {
    use proptest::prelude::*;
    let seg = prop::sample::select(vec![
        "home", "alice", "root", "work", "src", ".ssh", "etc", "x", "projects", ".netrc",
    ]);
    let path = prop::collection::vec(seg, 0..5).prop_map(|v| format!("/{}", v.join("/")));
    let mode = prop::sample::select(vec![Access::Ro, Access::Rw]);
    let label = prop::sample::select(vec![
        "github",
        "com",
        "crates",
        "io",
        "static",
        "internal",
        "a",
        "githubusercontent",
        "metadata",
        "google",
    ]);
    // Some hosts are wildcard requests (`*.a.io`), which the index must place like a scan.
    let host = (prop::collection::vec(label, 1..4), any::<bool>()).prop_map(|(v, wild)| {
        if wild && v.len() > 1 {
            format!("*.{}", v.join("."))
        } else {
            v.join(".")
        }
    });
    let port = prop::sample::select(vec![22u16, 80, 443, 8080]);
    let word = prop::sample::select(vec![
        "push", "commit", "--hard", "reset", "-f", "--force", "x", "config", "clean", "status",
    ]);
    let args = prop::collection::vec(word, 0..4)
        .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
    let program = prop::sample::select(vec!["git", "rg", "sh", "curl"]);
    let key = prop::sample::select(vec!["user.name", "core.pager", "color.ui", "alias.x"]);
    prop_oneof![
        (path, mode).prop_map(|(path, mode)| Capability::Fs { path, mode }),
        (host, port).prop_map(|(host, port)| Capability::Net { host, port }),
        (program.clone(), args).prop_map(|(p, args)| Capability::Tool {
            program: p.into(),
            args
        }),
        (program, key).prop_map(|(p, k)| Capability::ToolConfig {
            program: p.into(),
            key: k.into()
        }),
        (1u32..10, 1u64..20000).prop_map(|(v, m)| {
            let mut r = capability::default_resources();
            r.vcpus = v;
            r.memory_mib = m;
            Capability::Resources(r)
        }),
    ]
}

proptest::proptest! {
    /// The index is an optimization only: it must pick the same rule as a linear scan.
    #[test]
    fn indexed_decisions_equal_linear_first_match(c in arb_capability()) {
        thread_local!(static P: Policy = coding_agent());
        P.with(|p| {
            proptest::prop_assert_eq!(p.decide(&c), p.decide_linear(&c), "{}", c);
            Ok(())
        })?;
    }
}

#[test]
fn rw_live_is_granted_only_by_name_and_root_owned_only_with_it() {
    let p = policy(&format!(
        "{HEAD}
[[rule]]
id = \"any\"
decision = \"allow\"
reason = \"r\"
match.fs = {{ path = \"/w/**\" }}
[[rule]]
id = \"live\"
decision = \"allow\"
reason = \"r\"
match.fs = {{ path = \"/live/**\", mode = \"rw-live\", root_owned = true }}
"
    ));
    // `any` covers ro and copy-on-write rw, never live write-through.
    assert_eq!(p.decide_all(&cap("fs rw /w/a")).rule_id, "any");
    assert_eq!(p.decide_all(&cap("fs ro /w/a")).rule_id, "any");
    assert_eq!(p.decide_all(&cap("fs rw-live /w/a")).rule_id, "default");
    assert_eq!(p.decide_all(&cap("fs rw-live /live/a")).rule_id, "live");
    assert_eq!(p.decide_all(&cap("fs rw /live/a")).rule_id, "default");
    assert!(p.rule_allows_root_owned("live") && !p.rule_allows_root_owned("any"));
    let lints = lint(&p);
    let live = lints
        .iter()
        .find(|l| l.kind == LintKind::RwLive)
        .expect("an rw-live lint");
    assert_eq!(live.rule_id, "live");
    assert!(live.message.contains("root_owned"), "{live}");

    let e = load_err(&format!(
        "{HEAD}
[[rule]]
id = \"cow\"
decision = \"allow\"
reason = \"r\"
match.fs = {{ path = \"/w/**\", mode = \"rw\", root_owned = true }}
"
    ));
    assert!(
        e.contains("root_owned only means something with mode = \"rw-live\""),
        "{e}"
    );
}

#[test]
fn protected_paths_extend_the_defaults_and_are_checked_at_load() {
    let p = policy(&format!(
        "{HEAD}
[[protect]]
path = \"**/Makefile\"
decision = \"ask\"
reason = \"make runs what it says\"
"
    ));
    assert_eq!(p.protected[0].glob, "**/Makefile");
    assert!(p.protected.iter().any(|g| g.glob == "**/.git/hooks/**"));
    for (entry, want) in [
        (
            "path = \"x\"\ndecision = \"allow\"\nreason = \"r\"",
            "`deny` or `ask`",
        ),
        (
            "path = \"x\"\ndecision = \"deny\"\nreason = \" \"",
            "reason is empty",
        ),
        (
            "path = \"/abs\"\ndecision = \"deny\"\nreason = \"r\"",
            "protect:",
        ),
        (
            "path = \"a/../b\"\ndecision = \"deny\"\nreason = \"r\"",
            "protect:",
        ),
    ] {
        let e = load_err(&format!("{HEAD}\n[[protect]]\n{entry}\n"));
        assert!(e.contains(want), "{entry}: {e}");
        assert!(e.contains("test.toml:"), "the error names where: {e}");
    }
}

#[test]
fn a_policy_may_set_how_long_asks_wait_within_the_launchers_bound() {
    let base = "version = 1\ndefault = \"deny\"\n";
    assert_eq!(policy(base).ask_timeout_secs, None);
    assert_eq!(
        policy(&format!("{base}ask_timeout = \"90s\"\n")).ask_timeout_secs,
        Some(90)
    );
    for (bad, says) in [("\"3m\"", "outside 1s..=100s"), ("\"soon\"", "ask_timeout")] {
        let text = format!("{base}ask_timeout = {bad}\n");
        let err = load_err(&text);
        assert!(
            err.contains(says) && err.contains("test.toml:3"),
            "{bad}: {err}"
        );
    }
}
