//! The `airlock` CLI contract: commands, exit codes and machine-readable output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn airlock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .current_dir(root())
        .env("XDG_CONFIG_HOME", "/nonexistent-airlock-test")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const POLICY: &str = "manifests/policies/coding-agent.toml";

/// (plan, exit code, outcome) for every shipped example plan.
#[test]
fn plan_exit_codes_follow_the_outcome() {
    for (plan, code, outcome) in [
        ("manifests/plans/allowed-commit.toml", 0, "allowed"),
        ("manifests/plans/review.json", 0, "allowed"),
        (
            "manifests/plans/needs-approval-push.toml",
            3,
            "needs_approval",
        ),
        ("manifests/plans/denied-secrets.toml", 4, "denied"),
    ] {
        let out = airlock(&["plan", "--policy", POLICY, "--plan", plan, "--json"]);
        assert_eq!(out.status.code(), Some(code), "{plan}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["outcome"], outcome, "{plan}");
        for item in v["items"].as_array().unwrap() {
            for field in ["kind", "request", "verdict", "rule_id", "reason"] {
                assert!(
                    item.get(field).is_some(),
                    "{plan}: item lacks {field}: {item}"
                );
            }
        }
    }
}

#[test]
fn bad_input_exits_1_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let bad_policy = dir.path().join("bad.toml");
    std::fs::write(&bad_policy, "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"x\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.fs = { path = \"/a/**\" }\nexamples.match = [\"ro /b\"]\n").unwrap();
    let bad = bad_policy.to_str().unwrap();
    let out = airlock(&["policy", "check", POLICY, bad]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("bad.toml:8:19: rule `x`: example `ro /b` should match"),
        "{}",
        text(&out)
    );

    let out = airlock(&[
        "plan",
        "--policy",
        bad,
        "--plan",
        "manifests/plans/review.json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let bad_plan = dir.path().join("plan.toml");
    std::fs::write(&bad_plan, "command = [\"x\"]\nmounts = 3\n").unwrap();
    let out = airlock(&[
        "plan",
        "--policy",
        POLICY,
        "--plan",
        bad_plan.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("plan.toml:2:10"), "{}", text(&out));

    let out = airlock(&["plan", "--policy", POLICY]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "usage errors exit 2: {}",
        text(&out)
    );
}

#[test]
fn policy_check_lints_and_can_fail_on_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lint.toml");
    std::fs::write(&p, "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"py\"\ndecision = \"allow\"\nreason = \"r\"\nmatch.tool = { program = \"python3\" }\n").unwrap();
    let p = p.to_str().unwrap();
    let out = airlock(&["policy", "check", p]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("grants arbitrary execution"),
        "{}",
        text(&out)
    );
    let out = airlock(&["policy", "check", "--deny-warnings", p]);
    assert_eq!(out.status.code(), Some(1));
    let out = airlock(&["policy", "check", "--json", p]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["valid"], true);
    assert!(v[0]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["kind"] == "grants_execution"));
}

#[test]
fn decide_works_with_both_engines() {
    for policy in [POLICY, "manifests/policies/coding-agent.rego"] {
        if !root().join(policy).exists() {
            continue;
        }
        let out = airlock(&[
            "policy",
            "decide",
            "--policy",
            policy,
            "tool git -C /w push origin main",
        ]);
        assert_eq!(out.status.code(), Some(3), "{policy}: {}", text(&out));
        assert!(text(&out).contains("git-push"), "{policy}: {}", text(&out));
        let out = airlock(&[
            "policy",
            "decide",
            "--policy",
            policy,
            "--json",
            "fs ro /home/a/.ssh/id_rsa",
            "tool git status",
        ]);
        assert_eq!(out.status.code(), Some(4), "{policy}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["decision"]["rule_id"], "home-secrets");
        assert_eq!(v[1]["decision"]["verdict"], "allow");
    }
}

#[test]
fn keygen_mint_verify_round_trip_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let k = keys.to_str().unwrap();
    let out = airlock(&["keygen", "--out", k]);
    assert!(out.status.success(), "{}", text(&out));
    let out = airlock(&["keygen", "--out", k]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "refuses to overwrite: {}",
        text(&out)
    );
    let key = keys.join("airlock.key");
    let public = keys.join("airlock.pub");
    let (key, public) = (key.to_str().unwrap(), public.to_str().unwrap());

    let mint = |plan: &str, extra: &[&str]| {
        let mut args = vec![
            "manifest",
            "mint",
            "--policy",
            POLICY,
            "--plan",
            plan,
            "--key",
            key,
            "--image-id",
            "img-a",
            "--cid",
            "9",
        ];
        args.extend_from_slice(extra);
        airlock(&args)
    };
    let out = mint("manifests/plans/allowed-commit.toml", &["--ttl", "2m"]);
    assert!(out.status.success(), "{}", text(&out));
    let envelope = dir.path().join("env.json");
    std::fs::write(&envelope, &out.stdout).unwrap();
    let env = envelope.to_str().unwrap();

    let out = airlock(&[
        "manifest",
        "verify",
        "--pub",
        public,
        "--cid",
        "9",
        "--image-id",
        "img-a",
        env,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = airlock(&["manifest", "verify", "--pub", public, "--json", env]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(
        v["manifest"]["expires_at"].as_u64().unwrap()
            - v["manifest"]["issued_at"].as_u64().unwrap(),
        120
    );

    for (args, want) in [
        (
            vec!["--cid", "10"],
            "vm cid: manifest is for CID 9, this VM is CID 10",
        ),
        (vec!["--image-id", "img-b"], "image id:"),
        (
            vec!["--nonce", "00000000000000000000000000000000"],
            "nonce:",
        ),
    ] {
        let mut a = vec!["manifest", "verify", "--pub", public];
        a.extend(args);
        a.push(env);
        let out = airlock(&a);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(want), "{want}: {}", text(&out));
    }
    // Another key's public half does not verify it.
    let other = dir.path().join("other");
    airlock(&["keygen", "--out", other.to_str().unwrap()]);
    let out = airlock(&[
        "manifest",
        "verify",
        "--pub",
        other.join("airlock.pub").to_str().unwrap(),
        env,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("key id:"), "{}", text(&out));

    let out = mint("manifests/plans/denied-secrets.toml", &["--approve-asks"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(out.stdout.is_empty(), "a denied plan mints nothing");
    let out = mint("manifests/plans/needs-approval-push.toml", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = mint(
        "manifests/plans/needs-approval-push.toml",
        &["--approve-asks"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = mint("manifests/plans/allowed-commit.toml", &["--ttl", "soon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--ttl"), "{}", text(&out));
}

#[test]
fn default_key_location_follows_xdg() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["keygen"])
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("airlock/airlock.key").exists());
    assert!(dir.path().join("airlock/airlock.pub").exists());
}

/// OpenSSL 3.0 refuses PKCS#8 v2 Ed25519 keys; `keygen` writes v1, which it reads, and
/// OpenSSL derives the same public key as `airlock.pub`.
#[test]
fn keygen_writes_a_private_key_openssl_reads() {
    if Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl is missing: `make deps` installs it");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = airlock(&["keygen", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(dir.path().join("airlock.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl pkey refused the key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(dir.path().join("airlock.pub")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), public.trim());
}
