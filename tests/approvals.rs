//! Asks reach a person: run-time tool asks and up-front asks of real process-isolated
//! sessions go to the launcher's approval broker and are answered by the channels
//! (`--approver-cmd`, `--on-ask`), bound to exactly the action that was shown.
//! (VM sessions and the gRPC channel: `launcher_server.rs`; the web page:
//! `approvals_web.rs`; the terminal prompt: the launcher's unit tests, on a pty.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

fn policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases/approvals-policy.toml")
}

fn skip_reason() -> Option<String> {
    if !airlock_tests::running_as_root() {
        return Some("process isolation needs root (it maps uids and idmaps mounts)".into());
    }
    for b in ["airlock", "airlock-enforcer", "airlock-shim"] {
        assert!(
            bin_dir().join(b).is_file(),
            "{b} is not built (run `cargo build --workspace` first)"
        );
    }
    None
}

macro_rules! root_only {
    () => {
        if let Some(why) = skip_reason() {
            airlock_tests::skip(&why);
            return;
        }
    };
}

/// A hook for `--approver-cmd`: saves each ask it gets (one file per call) and answers
/// with `answer` (a JSON text) or as `body` says.
fn hook(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("approver.sh");
    let script = format!(
        "#!/bin/sh\nf=$(mktemp {d}/asked-$(date +%s%N)-XXXXXX)\ncat > \"$f\"\n{body}\n",
        d = dir.display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn asked(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("asked-"))
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect()
}

/// `airlock run --isolation process` of `script` (sh -c) with `extra` flags.
fn run(extra: &[&str], script: &str) -> Output {
    let state = tempfile::tempdir().unwrap();
    run_with_state(state.path(), extra, script)
}

/// [`run`], with `$XDG_STATE_HOME` (where the audit log goes) at `state`.
fn run_with_state(state: &Path, extra: &[&str], script: &str) -> Output {
    Command::new(bin_dir().join("airlock"))
        .args(["run", "--isolation", "process", "--policy"])
        .arg(policy())
        .args(["--tool", "true"])
        .args(extra)
        .args(["--", "/bin/sh", "-c", script])
        .env("XDG_STATE_HOME", state)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `exec` so the shell runs the real tool through its shim, not a builtin.
const ASK_ONE: &str = "(exec true one); echo \"rc=$?\"";

#[test]
fn an_ask_approved_by_the_approver_cmd_runs_and_the_hook_saw_exactly_the_action() {
    root_only!();
    let dir = tempfile::tempdir().unwrap();
    let h = hook(dir.path(), r#"echo '{"answer":"once","approver":"hook"}'"#);
    let out = run(&["--approver-cmd", h.to_str().unwrap()], ASK_ONE);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("rc=0"),
        "the approved tool ran: {stdout} {stderr}"
    );
    let seen = asked(dir.path());
    assert_eq!(seen.len(), 1, "{seen:?}");
    let a = &seen[0];
    assert_eq!(a["action"]["argv"], serde_json::json!(["true", "one"]));
    assert_eq!(a["action"]["rule_id"], "true-asks");
    assert_eq!(a["action"]["kind"], "tool");
    assert_eq!(a["action"]["cwd"], "/");
    let sha = a["action"]["binary_sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64, "the binary's identity is shown: {a}");
    assert!(a["digest"].as_str().unwrap().starts_with("sha256:"), "{a}");
}

#[test]
fn a_denial_names_who_denied_and_why_and_the_tool_does_not_run() {
    root_only!();
    let dir = tempfile::tempdir().unwrap();
    let h = hook(
        dir.path(),
        r#"echo '{"answer":"deny","approver":"bob","comment":"not on a Friday"}'"#,
    );
    let out = run(&["--approver-cmd", h.to_str().unwrap()], ASK_ONE);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("rc=126"), "{stdout} {stderr}");
    assert!(
        stderr.contains("needs approval (rule `true-asks`")
            && stderr.contains("denied by bob via approver-cmd")
            && stderr.contains("not on a Friday"),
        "one line says who denied and why: {stderr}"
    );
    // A hook that fails, or answers nonsense, denies too.
    for body in [
        "exit 3",
        "echo '{\"answer\":\"yes\"}'",
        "echo '{\"answer\":\"once\",\"extra\":1}'",
    ] {
        let h = hook(dir.path(), body);
        let out = run(&["--approver-cmd", h.to_str().unwrap()], ASK_ONE);
        assert!(
            text(&out.stdout).contains("rc=126"),
            "{body}: {}",
            text(&out.stderr)
        );
    }
    // --on-ask deny and --on-ask allow answer at once.
    let out = run(&["--on-ask", "deny"], ASK_ONE);
    assert!(text(&out.stdout).contains("rc=126"));
    assert!(
        text(&out.stderr).contains("denied by --on-ask deny"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["--on-ask", "allow"], ASK_ONE);
    assert!(text(&out.stdout).contains("rc=0"), "{}", text(&out.stderr));
}

#[test]
fn an_unanswered_ask_is_denied_when_its_time_runs_out() {
    root_only!();
    let started = std::time::Instant::now();
    let out = run(&["--on-ask", "wait", "--ask-timeout", "1s"], ASK_ONE);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("rc=126"), "{stdout} {stderr}");
    assert!(
        stderr.contains("no approver answered within 1 s"),
        "the agent reads that time ran out: {stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn a_session_scope_covers_only_the_same_argv_in_the_same_session() {
    root_only!();
    let dir = tempfile::tempdir().unwrap();
    let h = hook(
        dir.path(),
        r#"echo '{"answer":"session","approver":"carol"}'"#,
    );
    let script =
        "(exec true one); a=$?; (exec true one); b=$?; (exec true onf); c=$?; echo \"rc=$a$b$c\"";
    let out = run(&["--approver-cmd", h.to_str().unwrap()], script);
    assert!(
        text(&out.stdout).contains("rc=000"),
        "{}",
        text(&out.stderr)
    );
    let seen = asked(dir.path());
    // The second `true one` was covered by the session grant; `true onf` (one byte
    // differs) was asked again.
    let argvs: Vec<_> = seen.iter().map(|a| a["action"]["argv"].clone()).collect();
    assert_eq!(
        argvs,
        [
            serde_json::json!(["true", "one"]),
            serde_json::json!(["true", "onf"])
        ]
    );
    // Another session: the same argv is asked again.
    let out = run(&["--approver-cmd", h.to_str().unwrap()], ASK_ONE);
    assert!(text(&out.stdout).contains("rc=0"));
    assert_eq!(asked(dir.path()).len(), 3);
    assert_ne!(
        seen[0]["action"]["session_id"],
        asked(dir.path())[2]["action"]["session_id"]
    );
}

/// `git push origin` does not say where `origin` is, and the agent can repoint it: the
/// ask shows the remote's URL, and a `session` grant for the push does not cover the
/// same command once `origin` names another repository.
#[test]
fn a_push_is_asked_with_where_it_goes_and_a_session_grant_stays_there() {
    root_only!();
    let dir = tempfile::tempdir().unwrap();
    let h = hook(
        dir.path(),
        r#"echo '{"answer":"session","approver":"carol"}'"#,
    );
    // Nothing listens on port 9: an approved push runs and fails to connect (128); a
    // refused one is 126.
    let script = "set -e; cd /tmp; git init -q r; cd r; \
        export GIT_AUTHOR_NAME=a GIT_AUTHOR_EMAIL=a@x GIT_COMMITTER_NAME=a GIT_COMMITTER_EMAIL=a@x; \
        git commit -q --allow-empty -m x; \
        git remote add origin https://127.0.0.1:9/a.git; set +e; \
        (exec git push -q origin HEAD 2>/dev/null); a=$?; \
        (exec git push -q origin HEAD 2>/dev/null); b=$?; \
        git remote set-url origin https://127.0.0.1:9/b.git; \
        (exec git push -q origin HEAD 2>/dev/null); c=$?; echo \"rc=$a,$b,$c\"";
    let out = run(
        &["--tool", "git", "--approver-cmd", h.to_str().unwrap()],
        script,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("rc=128,128,128"), "{stdout} {stderr}");
    let seen = asked(dir.path());
    let reaches: Vec<_> = seen
        .iter()
        .map(|a| a["action"]["reaches"].clone())
        .collect();
    // The second push was covered by the grant; the third was asked again.
    assert_eq!(
        reaches,
        [
            serde_json::json!([
                "remote.origin.url = https://127.0.0.1:9/a.git",
                "HEAD = refs/heads/master"
            ]),
            serde_json::json!([
                "remote.origin.url = https://127.0.0.1:9/b.git",
                "HEAD = refs/heads/master"
            ])
        ],
        "{stderr}"
    );
    assert_eq!(seen[0]["action"]["argv"], seen[1]["action"]["argv"]);
    assert_ne!(seen[0]["digest"], seen[1]["digest"]);
}

#[test]
fn an_up_front_ask_waits_for_its_answer_before_anything_runs() {
    root_only!();
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("approvals-upfront");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("note.txt"), "shared after a yes\n").unwrap();
    let mount = format!("{}:/shared:ro", share.display());
    let h = hook(dir.path(), r#"echo '{"answer":"once","approver":"dana"}'"#);
    let out = run(
        &["--approver-cmd", h.to_str().unwrap(), "--mount", &mount],
        "read line < /shared/note.txt; echo \"$line\"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("shared after a yes"));
    let seen = asked(dir.path());
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["action"]["kind"], "capability");
    assert_eq!(seen[0]["action"]["rule_id"], "upfront-dir");
    assert!(
        seen[0]["action"]["capability"]
            .as_str()
            .unwrap()
            .contains("approvals-upfront"),
        "{}",
        seen[0]
    );
    // Denied: nothing runs (exit 4), and the refusal says who.
    let h = hook(dir.path(), r#"echo '{"answer":"deny","approver":"dana"}'"#);
    let out = run(
        &["--approver-cmd", h.to_str().unwrap(), "--mount", &mount],
        "echo RAN",
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("RAN"));
    assert!(
        text(&out.stderr).contains("denied by dana"),
        "{}",
        text(&out.stderr)
    );
    // A plan that would put 17 asks before a person at once is refused before anyone
    // is asked (an agent writing plans over MCP cannot bury the person); 16 may be.
    let before = asked(dir.path()).len();
    let h = hook(dir.path(), r#"echo '{"answer":"once","approver":"dana"}'"#);
    let mut args = vec!["--approver-cmd".to_string(), h.display().to_string()];
    for i in 0..17 {
        let d = share.join(format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        args.extend(["--mount".into(), format!("{}:/s{i}:ro", d.display())]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&argv, "echo RAN");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("RAN"));
    assert!(
        text(&out.stderr).contains("the plan needs 17 approvals at once (at most 16"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(asked(dir.path()).len(), before, "nobody was asked");
    let out = run(&argv[..argv.len() - 2], "echo RAN");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("RAN"));
    assert_eq!(asked(dir.path()).len(), before + 16);
}

#[test]
fn every_decision_is_in_the_audit_log_and_tampering_is_caught() {
    root_only!();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let h = hook(dir.path(), r#"echo '{"answer":"once","approver":"erin"}'"#);
    let out = run_with_state(
        &state,
        &["--approver-cmd", h.to_str().unwrap(), "--tool", "echo"],
        &format!("(exec echo hi); (exec echo secret x); {ASK_ONE}"),
    );
    assert!(text(&out.stdout).contains("rc=0"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hi"));
    let out = run_with_state(&state, &["--on-ask", "deny"], ASK_ONE);
    assert!(text(&out.stdout).contains("rc=126"));
    let log = state.join("airlock/audit.jsonl");
    let airlock = |args: &[&str]| {
        Command::new(bin_dir().join("airlock"))
            .args(args)
            .output()
            .unwrap()
    };
    let ok = airlock(&["audit", "verify", log.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Per session: the plan's decisions (by the policy, with the manifest's digest),
    // the run-time answer (by whom, bound to the action's digest), a checkpoint.
    let decisions: Vec<_> = records.iter().filter(|r| r["kind"] == "decision").collect();
    let run_time: Vec<_> = decisions
        .iter()
        .filter(|r| r["phase"] == "run_time")
        .collect();
    // The calls the rules decided alone are on record too, as the host decided them.
    let auto: Vec<(String, String)> = run_time
        .iter()
        .filter(|r| r["approver"] == "policy")
        .map(|r| (r["verdict"].to_string(), r["rule_id"].to_string()))
        .collect();
    assert_eq!(
        auto,
        [
            ("\"allow\"".to_string(), "\"echo\"".to_string()),
            ("\"deny\"".to_string(), "\"echo-secret\"".to_string())
        ]
    );
    let asked: Vec<_> = run_time
        .iter()
        .filter(|r| r["approver"] != "policy")
        .collect();
    assert_eq!(asked.len(), 2, "{records:?}");
    assert_eq!(
        asked[0]["approver"],
        "erin via approver-cmd ".to_string() + h.to_str().unwrap()
    );
    assert_eq!(asked[0]["verdict"], "approved");
    assert_eq!(asked[1]["approver"], "--on-ask deny");
    for r in &asked {
        assert_eq!(r["rule_id"], "true-asks");
    }
    for r in &run_time {
        assert!(r["action_digest"].as_str().unwrap().starts_with("sha256:"));
        assert!(
            r["manifest_digest"]
                .as_str()
                .unwrap()
                .starts_with("sha256:"),
            "{r}"
        );
    }
    assert!(decisions.iter().any(|r| r["phase"] == "plan"
        && r["approver"] == "policy"
        && r["rule_id"] == "agent-script"));
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "checkpoint").count(),
        2
    );
    let shown = airlock(&["audit", "show", log.to_str().unwrap()]);
    assert!(
        text(&shown.stdout).contains("true-asks"),
        "{}",
        text(&shown.stdout)
    );

    // Each kind of tampering is caught, naming the first bad record.
    let text_of_log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text_of_log.lines().collect();
    let tampered = |name: &str, body: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        airlock(&["audit", "verify", p.to_str().unwrap()])
    };
    let edited = text_of_log.replacen("\"verdict\":\"denied\"", "\"verdict\":\"approved\"", 1);
    assert_ne!(edited, text_of_log);
    let mut reordered = lines.clone();
    reordered.swap(1, 2);
    let mut deleted = lines.clone();
    deleted.remove(2);
    for (name, body) in [
        ("edited.jsonl", edited),
        ("reordered.jsonl", reordered.join("\n") + "\n"),
        ("deleted.jsonl", deleted.join("\n") + "\n"),
    ] {
        let out = tampered(name, body);
        assert_eq!(out.status.code(), Some(1), "{name} passed");
        assert!(
            text(&out.stderr).contains("line "),
            "{name}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn the_agent_holds_no_way_to_the_approval_broker() {
    root_only!();
    // The host channel is close-on-exec in the enforcer: the agent (the probe here)
    // holds no descriptor past its stdio, so it cannot answer its own asks.
    let probe = bin_dir().join("hostile_probe");
    let agent = |args: &[&str]| {
        Command::new(bin_dir().join("airlock"))
            .args(["run", "--isolation", "process", "--policy"])
            .arg(policy())
            .args(["--on-ask", "deny", "--"])
            .arg(&probe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // The probe prints `ok` when it finds an open descriptor, `errno=9` when none is.
    let out = agent(&["fd-open-any", "3", "1023"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(stdout.trim(), "errno=9", "a descriptor is open: {stderr}");
    // The neighbour: the same probe sees its stdio.
    let out = agent(&["fd-open-any", "0", "2"]);
    assert_eq!(text(&out.stdout).trim(), "ok", "{}", text(&out.stderr));
}

#[test]
fn a_hundred_concurrent_asks_across_four_sessions_each_get_their_own_answer() {
    use airlock_launcher::approval_broker::{ActionKind, Answer, ApprovalBroker, Event, Scope};
    use airlock_launcher::process_session::{run_process_isolated, ProcessRunOptions};
    root_only!();
    let broker = ApprovalBroker::new(std::time::Duration::from_secs(60));
    // Approves the asks whose argument is even, denies the others.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut events = broker.subscribe();
    let approver = {
        let broker = broker.clone();
        rt.spawn(async move {
            let mut answered = 0;
            while answered < 100 {
                if let Ok(Event::Pending(p)) = events.recv().await {
                    let ActionKind::Tool { argv, .. } = &p.action.kind else {
                        panic!("{p:?}")
                    };
                    let n: u32 = argv[1].parse().unwrap();
                    let a = if n.is_multiple_of(2) {
                        Answer::Approve(Scope::Once)
                    } else {
                        Answer::Deny
                    };
                    broker.resolve(&p.id, a, "parity", "").unwrap();
                    answered += 1;
                }
            }
        })
    };
    let policy = airlock_launcher::policy::Policy::load(&policy()).unwrap();
    // 25 asks at once per session; the exit status counts the ones that ran (shell
    // builtins only: the sandbox runs no program that is not granted).
    let script = "i=1; while [ $i -le 25 ]; do ( (exec true $i) && : > /tmp/ok$i ) & i=$((i+1)); done; wait; n=0; for f in /tmp/ok*; do [ -e \"$f\" ] && n=$((n+1)); done; exit $n";
    let plan = airlock_launcher::plan::Plan {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        cwd: None,
        env: Default::default(),
        mounts: vec![],
        net: vec![],
        tools: vec!["true".into()],
        resources: Default::default(),
    };
    let sessions: Vec<_> = (0..4)
        .map(|_| {
            let (policy, plan, broker) = (policy.clone(), plan.clone(), broker.clone());
            std::thread::spawn(move || {
                let opts = ProcessRunOptions {
                    enforcer: bin_dir().join("airlock-enforcer"),
                    shim: bin_dir().join("airlock-shim"),
                    approvals: broker,
                    merge: Default::default(),
                    egress_pins: Default::default(),
                    forward_interrupts: false,
                    prompt_on_the_terminal: false,
                };
                run_process_isolated(&policy, &plan, &opts).unwrap()
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for s in sessions {
        let out = s.join().unwrap();
        assert_eq!(out.exit_code, 12, "12 even numbers in 1..=25 ran");
        ids.insert(out.session_id);
    }
    assert_eq!(ids.len(), 4);
    rt.block_on(approver).unwrap();
    let history = broker.history(None);
    assert_eq!(history.len(), 100);
    for d in &history {
        let ActionKind::Tool { argv, .. } = &d.pending.action.kind else {
            panic!()
        };
        let n: u32 = argv[1].parse().unwrap();
        assert_eq!(d.resolution.approved, n.is_multiple_of(2), "{d:?}");
        assert!(ids.contains(&d.pending.action.session_id));
    }
}

#[test]
fn on_a_terminal_the_person_is_asked_there_and_the_answer_holds() {
    root_only!();
    use std::io::{Read, Write};
    // `script` gives the launcher a terminal of its own (a pty whose other end is this
    // test, playing the person at the keyboard); with one, `--on-ask prompt` is the
    // default.
    let state = tempfile::tempdir().unwrap();
    let cmd = format!(
        "{} run --isolation process --policy {} --tool true -- /bin/sh -c '(exec true one); echo rc=$?; (exec true two); echo rc=$?'",
        bin_dir().join("airlock").display(),
        policy().display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("XDG_STATE_HOME", state.path())
        // The shell `script` runs the line with: the same here as on CI.
        .env("SHELL", "/bin/sh")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut seen = String::new();
    // Reads until `needle` has appeared `times` times.
    let wait_for = |needle: &str, times: usize, seen: &mut String| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while seen.matches(needle).count() < times {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("never saw {needle:?} {times} times in:\n{seen}"),
            }
        }
    };
    const PROMPT: &str = "approve [o]nce, for this [s]ession, or [d]eny?";
    wait_for(PROMPT, 1, &mut seen);
    assert!(seen.contains("command:    true one"), "{seen}");
    assert!(seen.contains("rule:       true-asks"), "{seen}");
    stdin.write_all(b"o\r").unwrap();
    wait_for("rc=0", 1, &mut seen);
    // The second ask, answered no.
    wait_for(PROMPT, 2, &mut seen);
    assert!(seen.contains("command:    true two"), "{seen}");
    stdin.write_all(b"d\r").unwrap();
    wait_for("rc=126", 1, &mut seen);
    assert!(seen.contains("denied by terminal ("), "{seen}");
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen}");
}
