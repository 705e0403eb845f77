//! The approvals web page in a real browser: a person sees exactly the command an agent
//! asked for, hostile text included, as text, and approves it with a click.
//!
//! Needs Chromium (`apt-get install --no-install-recommends chromium`, or `$CHROMIUM`): without it the test is
//! skipped with a note, except under CI (`CI` set), where that is a failure.

#[path = "cdp.rs"]
mod cdp;

use airlock_launcher::approval_broker::{
    Action, ActionKind, Answer, ApprovalBroker, Pending, Resolution, Scope,
};
use airlock_launcher::approvals_http::start_approvals_http;
use serde_json::Value;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An argv element that runs script if it is ever parsed as HTML.
const HOSTILE_HTML: &str = r#"<img src=x onerror="window.__airlockPwned=1">"#;
/// An argv element that would repaint a terminal and retitle its window.
const HOSTILE_ESC: &str = "\u{1b}[2J\u{1b}]0;pwned\u{7}done";

/// Chromium, or `None` (with the reason printed) when the test cannot run here.
fn chromium_or_skip() -> Option<PathBuf> {
    if let Some(p) = cdp::chromium_path() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "Chromium is required under CI: apt-get install --no-install-recommends chromium (or set CHROMIUM)"
    );
    // Straight to stderr: the test harness would swallow `eprintln!` of a passing test.
    let _ = writeln!(
        std::io::stderr(),
        "approvals_web skipped: no Chromium (apt-get install --no-install-recommends chromium, or set CHROMIUM)"
    );
    None
}

/// `target/test-artifacts/`, made if missing.
fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("cannot make target/test-artifacts");
    dir
}

/// How the page shows `s`: the escaping app.js does, for text without Unicode format,
/// separator, private-use or unassigned characters beyond the few listed here.
fn shown_as(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let hidden = c.is_control()
            || matches!(c, '\u{a0}' | '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        match c {
            '\\' => out.push_str("\\\\"),
            c if hidden && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hidden => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Waits until `broker` has an ask waiting and returns the oldest.
fn first_pending(broker: &ApprovalBroker, timeout: Duration) -> Pending {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(p) = broker.pending().into_iter().next() {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no ask arrived within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn js_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// Opens the approvals page at `url` (the address with its token), checks that the
/// oldest ask waiting on `broker` is shown exactly and only as text, types `comment`,
/// clicks "Approve once", and waits until the page lists it as decided. Screenshots of
/// the ask and of the result go to `target/test-artifacts/approvals-web*.png`.
/// Returns the ask approved.
fn approve_oldest_in_browser(
    browser: &mut cdp::Browser,
    broker: &ApprovalBroker,
    url: &str,
    comment: &str,
) -> Pending {
    let pending = first_pending(broker, Duration::from_secs(30));
    let id = pending.id.clone();
    let card = format!("[data-approval-card={}]", js_str(&id));
    browser.navigate(url).expect("the page opens");
    // The token went into a cookie and out of the address bar.
    let here = browser.evaluate("location.href").unwrap();
    assert!(
        here.as_str()
            .is_some_and(|u| u.ends_with("/") && !u.contains("token")),
        "{here}"
    );
    browser
        .wait_for(
            &format!("document.querySelector({})", js_str(&card)),
            Duration::from_secs(15),
        )
        .expect("the ask appears");
    browser
        .wait_for(
            "document.getElementById('status').textContent === 'live'",
            Duration::from_secs(10),
        )
        .expect("the page follows events");

    // Exactly the argv, one chip per element, escapes visible.
    if let ActionKind::Tool {
        argv,
        cwd,
        program,
        binary_sha256,
        reaches,
    } = &pending.action.kind
    {
        let chips = browser
            .evaluate(&format!(
                "[...document.querySelectorAll({} + ' .argv code.arg')].map(c => c.textContent)",
                js_str(&card)
            ))
            .unwrap();
        let expected: Vec<Value> = argv
            .iter()
            .map(|a| {
                Value::String(if a.is_empty() {
                    "(empty)".into()
                } else {
                    shown_as(a)
                })
            })
            .collect();
        assert_eq!(chips, Value::Array(expected), "argv chips");
        let text = browser
            .evaluate(&format!(
                "document.querySelector({}).textContent",
                js_str(&card)
            ))
            .unwrap();
        let text = text.as_str().unwrap();
        let reaches_shown = reaches.iter().map(|r| shown_as(r));
        for shown in [
            shown_as(cwd),
            shown_as(program),
            binary_sha256.clone(),
            pending.digest.clone(),
        ]
        .into_iter()
        .chain(reaches_shown)
        {
            assert!(
                text.contains(&shown),
                "{shown:?} is not on the card: {text}"
            );
        }
    }
    // Markup an agent wrote is text: no element was made from it, no handler ran.
    assert_eq!(
        browser
            .evaluate("document.querySelectorAll('img, iframe, object, embed').length")
            .unwrap(),
        0
    );
    assert_eq!(
        browser
            .evaluate("[...document.scripts].map(s => new URL(s.src).pathname)")
            .unwrap(),
        serde_json::json!(["/app.js"])
    );
    assert_eq!(
        browser.evaluate("typeof window.__airlockPwned").unwrap(),
        "undefined"
    );

    let shots = artifacts_dir();
    browser
        .screenshot(&shots.join("approvals-web.png"))
        .unwrap();

    browser
        .type_text(&format!("{card} input.comment"), comment)
        .expect("the comment field takes text");
    browser
        .click(&format!(
            "button[data-approval={}][data-answer=\"once\"]",
            js_str(&id)
        ))
        .expect("Approve once is clickable");
    browser
        .wait_for(
            &format!(
                "!document.querySelector({}) && \
                 document.querySelector('tr[data-decided=' + {} + '] .decision')?.textContent === 'approved once'",
                js_str(&card),
                js_str(&js_str(&id))
            ),
            Duration::from_secs(15),
        )
        .expect("the ask moves to the decided list");
    browser
        .screenshot(&shots.join("approvals-web-decided.png"))
        .unwrap();
    pending
}

fn tool_action(session: &str, argv: &[&str]) -> Action {
    Action {
        session_id: session.into(),
        rule_id: "git-push".into(),
        reason: "pushing needs a human".into(),
        kind: ActionKind::Tool {
            program: "git".into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            cwd: "/workspace".into(),
            binary_sha256: "ab".repeat(32),
            // A push's destination, with a character that would reorder it on screen.
            reaches: vec!["remote.origin.url = https://example.org/\u{202e}r.git".into()],
        },
    }
}

/// Asks `action` on `rt`; returns the task and the ask as it waits.
fn ask(
    rt: &tokio::runtime::Runtime,
    broker: &Arc<ApprovalBroker>,
    action: Action,
) -> (tokio::task::JoinHandle<Resolution>, Pending) {
    assert!(broker.pending().is_empty(), "one ask at a time here");
    let task = rt.spawn({
        let broker = Arc::clone(broker);
        async move { broker.ask(action, None).await }
    });
    (task, first_pending(broker, Duration::from_secs(10)))
}

fn answered(rt: &tokio::runtime::Runtime, task: tokio::task::JoinHandle<Resolution>) -> Resolution {
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await })
        .expect("the ask is answered")
        .expect("the ask task ran")
}

fn card_of(id: &str) -> String {
    format!(
        "document.querySelector('[data-approval-card=' + {} + ']')",
        js_str(&js_str(id))
    )
}

#[test]
fn a_person_approves_a_hostile_looking_ask_in_chromium() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = ApprovalBroker::new(Duration::from_secs(120));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let page = rt
        .block_on(start_approvals_http(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&broker),
            async move {
                let _ = stopped.await;
            },
        ))
        .unwrap();
    let hostile = [
        "git",
        "push",
        "origin",
        "main",
        HOSTILE_HTML,
        HOSTILE_ESC,
        "a\\x1b",
    ];
    let action = tool_action("web-test", &hostile);
    assert!(
        matches!(&action.kind, ActionKind::Tool { reaches, .. } if reaches.len() == 1),
        "the card must show a push's destination"
    );
    let (first, _) = ask(&rt, &broker, action);

    let mut browser = cdp::Browser::launch(&chromium).expect("Chromium starts");
    let asked = approve_oldest_in_browser(&mut browser, &broker, &page.url, "looks right");

    let resolution = answered(&rt, first);
    assert_eq!(resolution.id, asked.id);
    assert!(resolution.approved, "{resolution:?}");
    assert_eq!(resolution.scope, Some(Scope::Once));
    assert_eq!(resolution.approver, "web");
    assert_eq!(resolution.comment, "looks right");

    // The hostile text is on the page, as text: in the decided list now.
    let body = browser.evaluate("document.body.textContent").unwrap();
    let body = body.as_str().unwrap();
    assert!(body.contains(HOSTILE_HTML), "{body}");
    assert!(body.contains(r"\x1b[2J\x1b]0;pwned\x07done"), "{body}");
    // A literal backslash sequence is not mistaken for an escape.
    assert!(body.contains(r"a\\x1b"), "{body}");

    // From here the page is not reloaded: what changes comes over the event stream.
    browser.evaluate("window.__sameDocument = true").unwrap();
    let shots = artifacts_dir();

    // "Approve for session" makes a grant the page lists, and its Revoke ends it.
    let (second, p2) = ask(
        &rt,
        &broker,
        tool_action("web-test", &["git", "push", "--tags"]),
    );
    browser
        .wait_for(&card_of(&p2.id), Duration::from_secs(15))
        .expect("a new ask appears without a reload");
    browser
        .click(&format!(
            "button[data-approval={}][data-answer=\"session\"]",
            js_str(&p2.id)
        ))
        .unwrap();
    let r2 = answered(&rt, second);
    assert_eq!(
        (r2.approved, r2.scope),
        (true, Some(Scope::Session)),
        "{r2:?}"
    );
    let revoke = format!("button[data-revoke-digest={}]", js_str(&p2.digest));
    browser
        .wait_for(
            &format!("document.querySelector({})", js_str(&revoke)),
            Duration::from_secs(15),
        )
        .expect("the session grant is listed");
    browser
        .screenshot(&shots.join("approvals-web-grant.png"))
        .unwrap();
    browser.click(&revoke).unwrap();
    browser
        .wait_for(
            "!document.getElementById('grants-empty').hidden",
            Duration::from_secs(15),
        )
        .expect("the revoked grant leaves the list");
    assert!(broker.session_grants("web-test").is_empty());

    // Answered on another channel: the card goes by itself.
    let (third, p3) = ask(
        &rt,
        &broker,
        tool_action("web-test", &["git", "push", "-f"]),
    );
    browser
        .wait_for(&card_of(&p3.id), Duration::from_secs(15))
        .unwrap();
    broker
        .resolve(&p3.id, Answer::Deny, "terminal", "not forced")
        .unwrap();
    browser
        .wait_for(
            &format!(
                "!{} && document.querySelector('tr[data-decided=' + {} + '] .by')?.textContent === 'terminal'",
                card_of(&p3.id),
                js_str(&js_str(&p3.id))
            ),
            Duration::from_secs(15),
        )
        .expect("an answer given elsewhere shows without a reload");
    assert!(!answered(&rt, third).approved);
    assert_eq!(browser.evaluate("window.__sameDocument").unwrap(), true);

    let errors = browser.console_errors().unwrap();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");

    drop(browser);
    stop.send(()).unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), page.finished()).await })
        .expect("the page stops");
}

#[test]
fn an_ask_from_a_real_session_is_approved_in_chromium_and_the_tool_runs() {
    use airlock_launcher::process_session::{run_process_isolated, ProcessRunOptions};
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    if !airlock_tests::running_as_root() {
        airlock_tests::skip("a real session here is process-isolated, which needs root");
        return;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .unwrap()
        .to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = ApprovalBroker::new(Duration::from_secs(90));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let page = rt
        .block_on(start_approvals_http(
            "127.0.0.1:0".parse().unwrap(),
            Arc::clone(&broker),
            async move {
                let _ = stopped.await;
            },
        ))
        .unwrap();
    // The agent runs a tool whose rule says ask; exit 7 says it ran and succeeded.
    let policy = airlock_launcher::policy::Policy::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cases/approvals-policy.toml"),
    )
    .unwrap();
    let plan = airlock_launcher::plan::Plan {
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "(exec true released-by-a-click) && exit 7".into(),
        ],
        cwd: None,
        env: Default::default(),
        mounts: vec![],
        net: vec![],
        tools: vec!["true".into()],
        resources: Default::default(),
    };
    let session = {
        let broker = Arc::clone(&broker);
        std::thread::spawn(move || {
            let opts = ProcessRunOptions {
                enforcer: bin.join("airlock-enforcer"),
                shim: bin.join("airlock-shim"),
                approvals: broker,
                merge: Default::default(),
                egress_pins: Default::default(),
                forward_interrupts: false,
                prompt_on_the_terminal: false,
            };
            run_process_isolated(&policy, &plan, &opts).unwrap()
        })
    };
    let mut browser = cdp::Browser::launch(&chromium).expect("Chromium starts");
    let asked = approve_oldest_in_browser(&mut browser, &broker, &page.url, "ship it");
    browser
        .screenshot(&artifacts_dir().join("approvals-web-real-session.png"))
        .unwrap();
    let out = session.join().unwrap();
    assert_eq!(out.exit_code, 7, "the approved tool ran in the session");
    assert_eq!(asked.action.session_id, out.session_id);
    let ActionKind::Tool { argv, .. } = &asked.action.kind else {
        panic!("{asked:?}")
    };
    assert_eq!(argv, &["true", "released-by-a-click"]);
    let decided = broker.history(Some(&out.session_id));
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].resolution.approver, "web");
    drop(browser);
    stop.send(()).unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), page.finished()).await })
        .expect("the page stops");
}
