use super::capability::Capability;
use super::lint::{lint, LintKind};
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

#[test]
fn arbitrary_bytes_never_panic_the_loader() {
    for text in [
        "\u{0}",
        "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"\u{e9}\"\n",
        "[[[",
        "rule = 5",
    ] {
        let _ = Policy::from_toml("x", text);
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
    ] {
        let words = shell_words::split(argv).unwrap();
        let inv = airlock_proto::tool_invocation::Invocation::parse(&words).unwrap();
        let runtime = grant.decide(&inv);
        let host = p.decide_all(&Capability::of_invocation(&inv));
        assert_eq!(runtime.verdict, host.verdict, "{argv}");
        assert_eq!(runtime.decisive.rule_id, host.rule_id, "{argv}");
    }
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
    let host = prop::collection::vec(label, 1..4).prop_map(|v| v.join("."));
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
