//! `airlock mcp` as MCP hosts run it: the real binary over stdio, driven by the official
//! Python SDK (PyPI `mcp`, in the Makefile's venv) and by JSON-RPC lines written by hand;
//! each session a real VM.

#[path = "vm_support.rs"]
mod vm_support;

use airlock_launcher::image::{build, Profile};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vm_support::{setup, workspace_root};

/// The policy the MCP sessions run under.
const POLICY: &str = r#"
version = 1
default = "deny"

[[rule]]
id = "secret"
decision = "deny"
reason = "the test's secret tree is never shared"
match.fs = { path = "/**/secret/**" }
examples.match = ["ro /tmp/x/secret"]

[[rule]]
id = "trees"
decision = "allow"
reason = "the test's work and docs trees"
match.fs = { path = "/**/{work,docs}/**" }
examples.match = ["rw /tmp/x/work", "ro /tmp/x/docs"]

[[rule]]
id = "true"
decision = "allow"
reason = "an entrypoint that does nothing"
match.tool = { program = "true" }

[[rule]]
id = "echo"
decision = "allow"
reason = "saying things"
match.tool = { program = "echo" }

[[rule]]
id = "cat"
decision = "allow"
reason = "reading files (read_file)"
match.tool = { program = "cat" }

[[rule]]
id = "tee"
decision = "allow"
reason = "writing files (write_file)"
match.tool = { program = "tee" }

[[rule]]
id = "sleep"
decision = "allow"
reason = "waiting (the timeout test)"
match.tool = { program = "sleep" }

[[rule]]
id = "wc-asks"
decision = "ask"
reason = "counting needs a human today"
match.tool = { program = "wc" }

[[rule]]
id = "small"
decision = "allow"
reason = "test VMs"
match.resources = { vcpus = 1, memory_mib = 512, disk_mib = 256, pids = 256, wall_time_secs = 600 }
"#;

/// The `airlock` binary next to the test binaries (`cargo build -p airlock-launcher`).
fn airlock() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .unwrap()
        .join("airlock");
    vm_support::require_present(&[&bin]);
    bin
}

/// A scratch directory with the policy, the key, and the trees the plans mount.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
        for d in ["work", "docs", "secret", "run", "cache", "state", "config"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("work/hello.txt"), "hello from the host\n").unwrap();
        std::fs::write(dir.path().join("docs/readme.txt"), "docs\n").unwrap();
        std::fs::write(dir.path().join("secret/key"), "never shared\n").unwrap();
        Scratch { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// What `airlock mcp` runs with: its own runtime, cache, state and config dirs.
    fn env(&self) -> Vec<(String, String)> {
        ["run", "cache", "state", "config"]
            .iter()
            .zip([
                "XDG_RUNTIME_DIR",
                "XDG_CACHE_HOME",
                "XDG_STATE_HOME",
                "XDG_CONFIG_HOME",
            ])
            .map(|(d, var)| (var.to_string(), self.path(d).display().to_string()))
            .collect()
    }

    /// The VM directories the server's launcher has now.
    fn vm_dirs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.path("run/airlock/vms")) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Processes whose command line names a VM directory of this scratch directory
    /// (VMMs and their helpers).
    fn processes(&self) -> Vec<String> {
        let needle = self.path("run/airlock/vms").display().to_string();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&needle) {
                    found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
                }
            }
        }
        found
    }
}

/// A guest image and the VMM tools, built for `s` (its key in `s/keys`); the `airlock
/// mcp` arguments that use them.
fn vm_args(s: &Scratch) -> Vec<String> {
    let (inputs, tools) = setup(s.dir.path());
    build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    vec![
        "--image".into(),
        inputs.out.join("minimal/image.json").display().to_string(),
        "--key".into(),
        s.path("keys/airlock.key").display().to_string(),
        "--tools-dir".into(),
        tools
            .vhost_device_vsock
            .parent()
            .unwrap()
            .display()
            .to_string(),
    ]
}

/// `airlock mcp` spoken to line by line.
struct Raw {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    next: u64,
    log: PathBuf,
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: signals the test's own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Raw {
    fn start(s: &Scratch, extra: &[String]) -> Raw {
        let log = s.path("mcp.log");
        let mut child = Command::new(airlock())
            .arg("mcp")
            .arg("--policy")
            .arg(s.path("policy.toml"))
            .args(extra)
            .envs(s.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Raw {
            child,
            stdin,
            lines,
            next: 0,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn send(&mut self, v: Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a request and returns its response (every line on stdout must be JSON-RPC).
    fn request(&mut self, method: &str, params: Value, within: Duration) -> Value {
        self.next += 1;
        let id = self.next;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!("no answer to {method} ({e}); server log:\n{}", self.log())
            });
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout carried a non-JSON line {line:?}: {e}"));
            assert_eq!(v["jsonrpc"], "2.0", "{v}");
            if v["id"] == json!(id) {
                return v;
            }
        }
    }

    fn initialize(&mut self, version: &str) -> Value {
        let hello = self.request(
            "initialize",
            json!({
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "tests/mcp.rs", "version": "0"}
            }),
            Duration::from_secs(30),
        );
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        hello
    }

    fn call(&mut self, tool: &str, args: Value, within: Duration) -> Value {
        let v = self.request(
            "tools/call",
            json!({"name": tool, "arguments": args}),
            within,
        );
        assert!(v.get("error").is_none(), "{tool}: a protocol error: {v}");
        v["result"].clone()
    }

    /// Closes stdin and waits for the server to exit on its own.
    fn close_and_wait(&mut self, within: Duration) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "airlock mcp did not exit within {within:?} of its stdin closing; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

fn plan(s: &Scratch) -> String {
    format!(
        r#"
command = ["/bin/true"]
tools = ["echo"]
[[mounts]]
host = "{}"
guest = "/work"
mode = "rw"
[resources]
memory_mib = 128
"#,
        s.path("work").display()
    )
}

/// An MCP host can list the tools and evaluate plans before any image exists; creating
/// a session says what is missing; the server leaves when its stdin closes.
#[test]
fn initialize_and_tools_list_need_no_image() {
    let s = Scratch::new();
    airlock_launcher::keys::keygen(&s.path("keys"), true).unwrap();
    let missing = s.path("no-image/image.json");
    let mut mcp = Raw::start(
        &s,
        &[
            "--image".into(),
            missing.display().to_string(),
            "--key".into(),
            s.path("keys/airlock.key").display().to_string(),
        ],
    );
    let hello = mcp.initialize("2025-06-18");
    let r = &hello["result"];
    assert_eq!(r["protocolVersion"], "2025-06-18", "{hello}");
    assert_eq!(r["serverInfo"]["name"], "airlock", "{hello}");
    assert!(r["capabilities"]["tools"].is_object(), "{hello}");

    let list = mcp.request("tools/list", json!({}), Duration::from_secs(10));
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "evaluate_plan",
            "create_session",
            "run_command",
            "read_file",
            "write_file",
            "list_pending_asks",
            "destroy_session"
        ],
        "{list}"
    );

    let r = mcp.call(
        "evaluate_plan",
        json!({"plan": plan(&s)}),
        Duration::from_secs(10),
    );
    assert_eq!(r["isError"], false, "{r}");
    assert_eq!(r["structuredContent"]["outcome"], "allowed", "{r}");

    let r = mcp.call(
        "create_session",
        json!({"plan": plan(&s)}),
        Duration::from_secs(30),
    );
    assert_eq!(r["isError"], true, "{r}");
    assert!(
        text(&r).contains("the launcher could not be made")
            && text(&r).contains(&missing.display().to_string()),
        "{r}"
    );
    let st = mcp.close_and_wait(Duration::from_secs(10));
    assert!(st.success(), "{st}; log:\n{}", mcp.log());
    assert!(s.vm_dirs().is_empty(), "{:?}", s.vm_dirs());
}

/// The official Python SDK drives a whole session: a denied plan, bad arguments, a
/// session with a command, files read and written, an ask nobody answers, destroy with
/// merge (see tests/clients/mcp_client.py).
#[test]
fn the_python_sdk_drives_a_session() {
    let python = workspace_root().join("target/airlock-cache/py/bin/python");
    vm_support::require_present(&[&python]);
    let has_mcp = Command::new(&python)
        .args(["-c", "import mcp.client.stdio"])
        .status()
        .unwrap();
    assert!(
        has_mcp.success(),
        "the venv lacks the `mcp` package (`make tools` installs it)"
    );
    let s = Scratch::new();
    // Over the output cap of a result (1 MiB).
    const BIG: usize = (1 << 20) + (1 << 19);
    let big: String = "0123456789abcdef".repeat(BIG / 16);
    std::fs::write(s.path("work/big.txt"), &big).unwrap();
    let _one = vm_support::ONE_VM.blocking_lock();
    let mut args: Vec<String> = vec![
        "mcp".into(),
        "--policy".into(),
        s.path("policy.toml").display().to_string(),
        "--on-ask".into(),
        "wait".into(),
        "--ask-timeout".into(),
        "5s".into(),
        "--audit-log".into(),
        s.path("audit.jsonl").display().to_string(),
    ];
    args.extend(vm_args(&s));
    let config = json!({
        "command": airlock().display().to_string(),
        "args": args,
        "env": s.env().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "work": s.path("work").display().to_string(),
        "docs": s.path("docs").display().to_string(),
        "secret": s.path("secret").display().to_string(),
        "big_bytes": BIG,
    });
    let config_file = s.path("client.json");
    std::fs::write(&config_file, config.to_string()).unwrap();
    let out = Command::new(&python)
        .arg(workspace_root().join("tests/clients/mcp_client.py"))
        .arg(&config_file)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // The client's steps (and the server's stderr, which it passes on), for the log.
    eprintln!("{stderr}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("mcp client: ok"), "{stdout}\n{stderr}");

    // What write_file wrote reached the host through the merge-back gate, and nothing
    // else changed there.
    assert_eq!(
        std::fs::read_to_string(s.path("work/new.txt")).unwrap(),
        "written over MCP\n"
    );
    assert_eq!(
        std::fs::read(s.path("work/blob.bin")).unwrap(),
        (0..=255u8).collect::<Vec<u8>>()
    );
    assert_eq!(
        std::fs::read_to_string(s.path("work/hello.txt")).unwrap(),
        "hello from the host\n"
    );
    assert!(!s.path("docs/x.txt").exists());

    // The file tools were tool calls like any other: decided in the sandbox and on
    // record, and so was the ask.
    let audit = std::fs::read_to_string(s.path("audit.jsonl")).unwrap();
    for want in [
        "tool tee /work/new.txt",
        "tool cat /work/hello.txt",
        "\"rule_id\":\"wc-asks\"",
        "\"approver\":\"timeout\"",
    ] {
        assert!(
            audit.contains(want),
            "the audit log lacks {want:?}:\n{audit}"
        );
    }
    // Nothing of the session is left.
    assert!(s.vm_dirs().is_empty(), "{:?}", s.vm_dirs());
    assert!(s.processes().is_empty(), "{:?}", s.processes());
}

/// Sessions the server created are destroyed when its stdin closes: the server exits
/// on its own, with nothing of its VMs left.
#[test]
fn closing_stdin_destroys_the_sessions() {
    let s = Scratch::new();
    let _one = vm_support::ONE_VM.blocking_lock();
    let mut args = vec!["--on-ask".into(), "deny".into()];
    args.extend(vm_args(&s));
    let mut mcp = Raw::start(&s, &args);
    let hello = mcp.initialize("2025-11-25");
    assert_eq!(hello["result"]["protocolVersion"], "2025-11-25", "{hello}");
    let r = mcp.call(
        "create_session",
        json!({"plan": plan(&s)}),
        Duration::from_secs(300),
    );
    assert_eq!(r["isError"], false, "{r}\nlog:\n{}", mcp.log());
    let sid = r["structuredContent"]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = mcp.call(
        "run_command",
        json!({"session_id": sid, "argv": ["echo", "still", "here"]}),
        Duration::from_secs(120),
    );
    assert_eq!(r["structuredContent"]["stdout"], "still here\n", "{r}");
    assert_eq!(s.vm_dirs().len(), 1, "{:?}", s.vm_dirs());
    assert!(!s.processes().is_empty(), "the VM's processes are found");

    let st = mcp.close_and_wait(Duration::from_secs(30));
    assert!(st.success(), "{st}; log:\n{}", mcp.log());
    assert!(s.vm_dirs().is_empty(), "{:?}", s.vm_dirs());
    assert!(s.processes().is_empty(), "{:?}", s.processes());
}
