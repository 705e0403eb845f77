//! Process isolation on a terminal (`run_process_isolated_on_a_terminal`, the
//! enforcer's `run-process --tty`): the agent gets a fresh terminal of its own, relayed
//! to the caller's, not the caller's terminal itself. Root only, like every process
//! isolation test. `script(1)` gives the launcher (this test binary, run again as a
//! helper) a terminal whose other end is the test, playing the person at the keyboard.

use airlock_launcher::approval_broker::{Answer, ApprovalBroker, AutoAnswer};
use airlock_launcher::plan::Plan;
use airlock_launcher::policy::Policy;
use airlock_launcher::process_session::{
    run_process_isolated, run_process_isolated_on_a_terminal, ProcessRunOptions,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Set in the helper's environment: only then does the helper test run its session.
const HELPER: &str = "AIRLOCK_TEST_PROCESS_TTY_HELPER";

/// The agent (busybox's shell, for its `stty`) says whether its stdin is a terminal,
/// whether it leads its session and its terminal's size, reads a line, and says the
/// size again.
const SCRIPT: &str = "test -t 0 && test -t 1 && echo tty-yes; \
    read pid comm state ppid pgrp sess rest < /proc/$$/stat; \
    [ \"$sess\" = \"$$\" ] && echo leader-yes; \
    echo size:$(stty size); \
    /run/airlock/bin/head -c0 /dev/null && echo tool-runs; \
    /run/airlock/bin/head -c0 /dev/tty 2>/dev/null && echo tool-has-a-tty || echo tool-no-tty; \
    printf '\\033]52;c;cHduZWQ=\\007clip-tried\\n'; \
    echo ready; read x; echo got:$x; echo size:$(stty size)";

/// The agent when the caller's terminal is not relayed as a terminal (a prompt approver
/// reads it): pipes, no `/dev/tty`; input still flows, and ^C typed at the caller's
/// terminal interrupts it.
const PIPES_SCRIPT: &str =
    "test -t 0 || echo stdin-not-a-tty; test -t 1 || echo stdout-not-a-tty; \
    test -t 2 || echo stderr-not-a-tty; \
    (exec 3</dev/tty) 2>/dev/null && echo agent-has-the-tty || echo agent-no-tty; \
    printf '\\033]52;c;cHduZWQ=\\007clip-tried\\n'; \
    echo ready; read x; echo got:$x; trap 'echo shell-got-int' INT; \
    ( trap 'echo child-got-int; exit 3' INT; echo waiting; read y; echo not-interrupted ); \
    echo after-child:$?";

/// The agent while a prompt is up on the caller's terminal and its stdout is a pipe
/// (to `cat`, which writes to the terminal): its output must wait for the answer.
const HELD_SCRIPT: &str = "echo early-output";

/// The agent on a terminal of its own while a prompt is up on the caller's: its output
/// must wait for the answer, and the answer's keys are not its input.
const TTY_HELD_SCRIPT: &str = "test -t 0 && echo tty-yes; echo early-output; read x; echo got:$x";

fn set_size(rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one live winsize.
    unsafe { libc::ioctl(0, libc::TIOCSWINSZ, &ws) };
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

fn termios_of_stdin() -> Option<Vec<u8>> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: one live termios.
    if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
        return None;
    }
    // The settings that raw mode changes.
    Some(format!("{} {} {} {}", t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag).into_bytes())
}

/// The VM tests' policy, plus busybox (a shell with `stty`) and `head` (a tool that
/// opens what it is given).
fn test_policy() -> Policy {
    let dir = tempfile::tempdir().unwrap();
    let mut text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("cases/vm-policy.toml"))
            .unwrap();
    text.push_str(
        "\n[[rule]]\nid = \"busybox\"\ndecision = \"allow\"\nreason = \"a shell with stty\"\nmatch.tool = { program = \"busybox\" }\n\
         [[rule]]\nid = \"head\"\ndecision = \"allow\"\nreason = \"opens what it is given\"\nmatch.tool = { program = \"head\" }\n",
    );
    std::fs::write(dir.path().join("policy.toml"), text).unwrap();
    Policy::load(&dir.path().join("policy.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// Not a test on its own: the launcher side that the test below runs inside
/// `script`'s terminal (nothing without the helper variable).
#[test]
fn helper_runs_a_process_session_on_its_terminal() {
    if std::env::var_os(HELPER).is_none() {
        return;
    }
    let policy = test_policy();
    let mode = std::env::var(HELPER).unwrap_or_default();
    let (pipes, held, tty_held) = (mode == "pipes", mode == "held", mode == "tty-held");
    let plan = Plan {
        command: vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            match mode.as_str() {
                "pipes" => PIPES_SCRIPT,
                "held" => HELD_SCRIPT,
                "tty-held" => TTY_HELD_SCRIPT,
                _ => SCRIPT,
            }
            .into(),
        ],
        cwd: None,
        env: Default::default(),
        mounts: vec![],
        net: vec![],
        // Through its shim (busybox's shell would run its own `head`): a tool the
        // sandbox's broker runs.
        tools: vec!["head".into()],
        resources: Default::default(),
    };
    let opts = ProcessRunOptions {
        enforcer: bin_dir().join("airlock-enforcer"),
        shim: bin_dir().join("airlock-shim"),
        approvals: ApprovalBroker::configured(
            Duration::from_secs(5),
            Some(AutoAnswer {
                answer: Answer::Deny,
                approver: "the test".into(),
            }),
            None,
        ),
        merge: Default::default(),
        egress_pins: Default::default(),
        forward_interrupts: pipes,
        prompt_on_the_terminal: held || tty_held,
    };
    let mut answer = None;
    if held {
        // A prompt is up (as the terminal approver raises it) from before the agent
        // starts until 3 s later; what the agent writes meanwhile must wait.
        let shown = airlock_launcher::host_terminal::prompt_gate().show();
        answer = Some(std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            // Straight to the terminal (our stderr), not through the session's relay.
            std::io::stderr().write_all(b"prompt-answered\n").unwrap();
            drop(shown);
        }));
    }
    if tty_held {
        // A prompt is up from before the agent starts until the person answers it: it
        // reads its answer from the terminal, as the terminal approver does.
        let shown = airlock_launcher::host_terminal::prompt_gate().show();
        answer = Some(std::thread::spawn(move || {
            let mut typed = Vec::new();
            let mut key = [0u8; 1];
            while !typed.ends_with(b"\r") && !typed.ends_with(b"\n") {
                // SAFETY: reads one byte into a live buffer.
                if unsafe { libc::read(0, key.as_mut_ptr().cast(), 1) } != 1 {
                    break;
                }
                typed.push(key[0]);
            }
            let line = format!(
                "prompt-answered:{}\r\n",
                String::from_utf8_lossy(&typed).trim()
            );
            std::io::stderr().write_all(line.as_bytes()).unwrap();
            drop(shown);
        }));
        let out = run_process_isolated_on_a_terminal(&policy, &plan, &opts)
            .unwrap_or_else(|e| panic!("{e}"));
        answer.take().unwrap().join().unwrap();
        let line = format!("helper: exit {}\n", out.exit_code);
        std::io::stdout().write_all(line.as_bytes()).unwrap();
        return;
    }
    if pipes || held {
        let out = run_process_isolated(&policy, &plan, &opts).unwrap_or_else(|e| panic!("{e}"));
        if let Some(t) = answer {
            t.join().unwrap();
        }
        let line = format!("helper: exit {}\n", out.exit_code);
        std::io::stdout().write_all(line.as_bytes()).unwrap();
        return;
    }
    let before = termios_of_stdin();
    // The size the agent's terminal starts with; then the caller's terminal is resized
    // while the agent waits for its line (the test types it 4 s after `ready`).
    set_size(33, 101);
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(2));
        set_size(40, 120);
    });
    let out =
        run_process_isolated_on_a_terminal(&policy, &plan, &opts).unwrap_or_else(|e| panic!("{e}"));
    let restored = termios_of_stdin() == before;
    // Not `println!`: the harness would capture it.
    let line = format!("helper: exit {} restored {restored}\n", out.exit_code);
    std::io::stdout().write_all(line.as_bytes()).unwrap();
}

/// The person at `script`'s terminal, where the helper runs the launcher.
struct Person {
    child: std::process::Child,
    keys: std::process::ChildStdin,
    screen: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Person {
    /// Starts the helper in a terminal of `script`'s, in mode `mode`.
    fn start(mode: &str) -> Person {
        // `exec`: no shell between `script` and the launcher. A non-interactive dash (CI's
        // `/bin/sh`, when `SHELL` is unset) dies of the ^C the launcher handles.
        let mut helper = format!(
            "exec {} --exact helper_runs_a_process_session_on_its_terminal --nocapture --test-threads=1",
            std::env::current_exe().unwrap().display()
        );
        if mode == "held" {
            // stdout a pipe to the terminal, as `airlock run ... | tee log` is.
            helper.push_str(" | cat");
        }
        let mut child = std::process::Command::new("script")
            .args(["-qfec", &helper, "/dev/null"])
            .env(HELPER, mode)
            // The shell `script` runs the line with: the same here as on CI.
            .env("SHELL", "/bin/sh")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("script(1) from util-linux");
        let keys = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, screen) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Person {
            child,
            keys,
            screen,
            seen: String::new(),
        }
    }

    fn wait_for(&mut self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.seen.contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.screen.recv_timeout(left) {
                Ok(b) => self.seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("never saw {needle:?} in:\n{}", self.seen),
            }
        }
    }

    /// Watches the screen for `how_long`.
    fn looks(&mut self, how_long: Duration) {
        let until = std::time::Instant::now() + how_long;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            if let Ok(b) = self.screen.recv_timeout(left) {
                self.seen.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }

    fn types(&mut self, keys: &[u8]) {
        self.keys.write_all(keys).unwrap();
    }

    /// Waits for `script` to end; everything it showed.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        while let Ok(b) = self.screen.recv_timeout(Duration::from_secs(1)) {
            self.seen.push_str(&String::from_utf8_lossy(&b));
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Person {
    /// A failed assertion ends `script` (and, hung up, the helper in it): left running
    /// they would hold the harness's output open.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn built_or_skip() -> bool {
    if !airlock_tests::running_as_root() {
        airlock_tests::skip("process isolation needs root (it maps uids and idmaps mounts)");
        return false;
    }
    for b in ["airlock-enforcer", "airlock-shim"] {
        assert!(
            bin_dir().join(b).is_file(),
            "{b} is not built (run `cargo build --workspace` first)"
        );
    }
    true
}

#[test]
fn under_process_isolation_the_agent_gets_a_terminal_of_its_own() {
    if !built_or_skip() {
        return;
    }
    let mut person = Person::start("1");
    person.wait_for("ready");
    assert!(person.seen.contains("tty-yes"), "{}", person.seen);
    assert!(
        person.seen.contains("leader-yes"),
        "the agent leads its session: {}",
        person.seen
    );
    // A clipboard write (OSC 52) never reaches the caller's terminal; the text does.
    assert!(
        person.seen.contains("clip-tried") && !person.seen.contains("]52;"),
        "{}",
        person.seen
    );
    // A granted tool, run by the sandbox's broker, is in no session with a terminal:
    // not the agent's, and never the caller's.
    assert!(
        person.seen.contains("tool-runs") && person.seen.contains("tool-no-tty"),
        "{}",
        person.seen
    );
    std::thread::sleep(Duration::from_secs(4));
    person.types(b"hello\r");
    person.wait_for("helper: exit");
    let (status, seen) = person.finish();
    assert!(status.success(), "{seen}");
    assert!(seen.contains("got:hello"), "{seen}");
    assert!(seen.contains("size:33 101"), "{seen}");
    assert!(
        seen.contains("size:40 120"),
        "the agent's terminal follows: {seen}"
    );
    // Echoed once, by the agent's terminal: the caller's was raw meanwhile.
    assert_eq!(seen.matches("hello").count(), 2, "{seen}");
    assert!(seen.contains("helper: exit 0 restored true"), "{seen}");
}

/// Without a relayed terminal (what `airlock run` does while a prompt approver reads the
/// terminal) the agent gets pipes: it cannot open the caller's terminal, take its
/// foreground or change its modes, yet what is typed reaches it and ^C interrupts it.
#[test]
fn without_a_relayed_terminal_the_agent_never_holds_the_callers() {
    if !built_or_skip() {
        return;
    }
    let mut person = Person::start("pipes");
    person.wait_for("ready");
    for want in [
        "stdin-not-a-tty",
        "stdout-not-a-tty",
        "stderr-not-a-tty",
        "agent-no-tty",
        "clip-tried",
    ] {
        assert!(person.seen.contains(want), "{want}: {}", person.seen);
    }
    assert!(!person.seen.contains("]52;"), "{}", person.seen);
    person.types(b"hello\r");
    person.wait_for("waiting");
    assert!(person.seen.contains("got:hello"), "{}", person.seen);
    // ^C at the caller's terminal: the kernel signals its foreground group (the
    // launcher alone now), which passes it on to the agent's process group: the shell
    // and the child it waits for, as a terminal would.
    person.types(b"\x03");
    person.wait_for("helper: exit");
    let (status, seen) = person.finish();
    assert!(status.success(), "{seen}");
    assert!(
        seen.contains("child-got-int") && seen.contains("after-child:3"),
        "the interrupt reached the shell's child: {seen}"
    );
    assert!(seen.contains("shell-got-int"), "{seen}");
    assert!(!seen.contains("not-interrupted"), "{seen}");
}

/// On a terminal of its own too, the agent's output waits while an approval prompt is
/// on the caller's terminal, and what the person types to answer it never reaches the
/// agent: the relays are the launcher's, not the enforcer's.
#[test]
fn on_a_terminal_of_its_own_a_prompt_holds_output_and_keeps_its_keys() {
    if !built_or_skip() {
        return;
    }
    let mut person = Person::start("tty-held");
    person.looks(Duration::from_secs(3));
    assert!(
        !person.seen.contains("early-output") && !person.seen.contains("tty-yes"),
        "the agent wrote while the prompt was up: {}",
        person.seen
    );
    person.types(b"yes\r");
    person.wait_for("prompt-answered:yes");
    person.wait_for("early-output");
    person.types(b"hello\r");
    person.wait_for("helper: exit");
    let (status, seen) = person.finish();
    assert!(status.success(), "{seen}");
    assert!(seen.contains("tty-yes"), "{seen}");
    assert!(seen.contains("got:hello"), "{seen}");
    assert!(
        !seen.contains("got:yes"),
        "the prompt's answer reached the agent: {seen}"
    );
    assert!(seen.contains("helper: exit 0"), "{seen}");
}

/// While an approval prompt is on the caller's terminal, the agent's output waits,
/// even when it goes to the terminal through a pipe (`airlock run ... | tee log`).
#[test]
fn while_a_prompt_is_up_output_through_a_pipe_waits_too() {
    if !built_or_skip() {
        return;
    }
    let mut person = Person::start("held");
    person.wait_for("helper: exit");
    let (status, seen) = person.finish();
    assert!(status.success(), "{seen}");
    let answered = seen.find("prompt-answered").expect("the prompt went");
    let output = seen.find("early-output").expect("the agent's output came");
    assert!(
        answered < output,
        "the agent's output reached the terminal while the prompt was up: {seen}"
    );
}

/// Every session cgroup on the host now (`airlock/s*` in each hierarchy).
fn session_cgroups() -> std::collections::BTreeSet<PathBuf> {
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(mounts) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(mounts.flatten().map(|m| m.path()));
    }
    roots
        .iter()
        .filter_map(|r| std::fs::read_dir(r.join("airlock")).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('s'))
        })
        .collect()
}

/// An enforcer killed outright (SIGKILL: no handler runs) cannot remove its session's
/// cgroups; the launcher does, once the enforcer is gone.
#[test]
fn an_enforcer_killed_outright_leaves_no_cgroup_behind() {
    if !built_or_skip() {
        return;
    }
    let policy = test_policy();
    let plan = Plan {
        command: vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            "sleep 60".into(),
        ],
        cwd: None,
        env: Default::default(),
        mounts: vec![],
        net: vec![],
        tools: vec![],
        resources: Default::default(),
    };
    let opts = ProcessRunOptions {
        enforcer: bin_dir().join("airlock-enforcer"),
        shim: bin_dir().join("airlock-shim"),
        ..ProcessRunOptions::next_to_current_exe().unwrap()
    };
    let session = std::thread::spawn(move || run_process_isolated(&policy, &plan, &opts));
    // Our child enforcer (other tests' run under `script`), and its session's id.
    let me = std::process::id().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (enforcer, session_id) = loop {
        let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|p| {
            let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
            let (comm, rest) = stat.split_once(") ")?;
            let ppid = rest.split(' ').nth(1)?;
            if !(comm.ends_with("(airlock-enforce") && ppid == me) {
                return None;
            }
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let id = args.windows(2).find(|w| w[0] == "--session-id")?[1].clone();
            Some((p.file_name().to_string_lossy().parse::<i32>().unwrap(), id))
        });
        if let Some(f) = found {
            break f;
        }
        assert!(std::time::Instant::now() < deadline, "no enforcer started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The session's groups exist while it runs (else this test would prove nothing).
    let named = |g: &PathBuf| g.ends_with(format!("s{session_id}"));
    let ours = loop {
        let ours: Vec<PathBuf> = session_cgroups().into_iter().filter(named).collect();
        if !ours.is_empty() {
            break ours;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no session cgroup appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: kill with a pid and a signal.
    assert_eq!(unsafe { libc::kill(enforcer, libc::SIGKILL) }, 0);
    let out = session.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.exit_code, 137);
    assert_eq!(out.session_id, session_id);
    for group in &ours {
        assert!(!group.exists(), "{} was left behind", group.display());
    }
}
