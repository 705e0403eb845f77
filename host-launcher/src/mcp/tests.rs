//! The protocol and every check made before the launcher, over an in-memory pipe. No
//! launcher can be made here (no image): what needs one is refused with the reason.
//! Sessions themselves are tested against real VMs in `tests/mcp.rs`.

use super::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const POLICY: &str = r#"
version = 1
default = "deny"

[[rule]]
id = "secret"
decision = "deny"
reason = "secrets are never shared"
match.fs = { path = "/**/secret/**" }

[[rule]]
id = "work"
decision = "allow"
reason = "the work tree"
match.fs = { path = "/**/work/**" }

[[rule]]
id = "true"
decision = "allow"
reason = "does nothing"
match.tool = { program = "true" }

[[rule]]
id = "small"
decision = "allow"
reason = "small sessions"
match.resources = { vcpus = 1, memory_mib = 512, disk_mib = 256, pids = 256, wall_time_secs = 600 }
"#;

struct Client {
    write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    read: BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
    next: u64,
    server: tokio::task::JoinHandle<Result<(), McpError>>,
    made: Arc<std::sync::atomic::AtomicUsize>,
}

impl Client {
    async fn send(&mut self, v: Value) {
        let mut line = serde_json::to_vec(&v).unwrap();
        line.push(b'\n');
        self.write.write_all(&line).await.unwrap();
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                self.read.read_line(&mut line),
            )
            .await
            .expect("an answer within 20 s")
            .unwrap();
            assert!(n > 0, "the server closed its output");
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == json!(id) {
                assert_eq!(v["jsonrpc"], "2.0", "{v}");
                return v;
            }
        }
    }

    async fn call(&mut self, tool: &str, args: Value) -> Value {
        let v = self
            .request("tools/call", json!({"name": tool, "arguments": args}))
            .await;
        assert!(v.get("error").is_none(), "a tool result, not an error: {v}");
        v["result"].clone()
    }
}

/// Starts a server whose launcher cannot be made, and says hello at `version`.
async fn start(version: &str) -> (Client, Value) {
    let policy = Arc::new(Policy::from_toml("test.toml", POLICY).unwrap());
    let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&made);
    let factory: LauncherFactory = Box::new(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Err("VM image /nowhere/image.json: No such file or directory".into()) })
    });
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(serve(
        McpConfig::new(policy, factory),
        theirs,
        std::future::pending(),
    ));
    let (read, write) = tokio::io::split(ours);
    let mut c = Client {
        write,
        read: BufReader::new(read),
        next: 0,
        server,
        made,
    };
    let hello = c
        .request(
            "initialize",
            json!({
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "unit", "version": "0"}
            }),
        )
        .await;
    c.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    (c, hello)
}

const DENIED_PLAN: &str = r#"
command = ["true"]
[[mounts]]
host = "/tmp/x/secret"
guest = "/s"
mode = "ro"
"#;

#[tokio::test]
async fn initialize_and_tools_list_need_no_launcher() {
    let (mut c, hello) = start("2025-06-18").await;
    let r = &hello["result"];
    assert_eq!(r["protocolVersion"], "2025-06-18", "{hello}");
    assert_eq!(r["serverInfo"]["name"], "airlock");
    assert!(r["capabilities"]["tools"].is_object(), "{hello}");
    assert!(r["instructions"].as_str().unwrap().contains("policy"));

    let list = c.request("tools/list", json!({})).await;
    let tools = list["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
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
        ]
    );
    for t in tools {
        let schema = &t["inputSchema"];
        assert_eq!(schema["type"], "object", "{t}");
        assert_eq!(schema["additionalProperties"], false, "{t}");
        for req in schema["required"].as_array().unwrap() {
            assert!(
                schema["properties"][req.as_str().unwrap()].is_object(),
                "{t}"
            );
        }
        let d = t["description"].as_str().unwrap();
        assert!(d.contains("cannot"), "says what it cannot do: {t}");
    }
    // What read_file and write_file run is said where a model reads it.
    assert!(tools[3]["description"]
        .as_str()
        .unwrap()
        .contains("`cat PATH`"));
    assert!(tools[4]["description"]
        .as_str()
        .unwrap()
        .contains("`tee PATH`"));

    // Nothing needed a launcher so far.
    assert_eq!(c.made.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_older_client_is_offered_the_newest_handshake_revision() {
    let (_c, hello) = start("2025-03-26").await;
    assert_eq!(hello["result"]["protocolVersion"], "2025-11-25", "{hello}");
    let (_c, hello) = start("2025-11-25").await;
    assert_eq!(hello["result"]["protocolVersion"], "2025-11-25", "{hello}");
}

#[tokio::test]
async fn evaluate_plan_reports_each_decision_with_its_rule() {
    let (mut c, _) = start("2025-06-18").await;
    let r = c.call("evaluate_plan", json!({"plan": DENIED_PLAN})).await;
    assert_eq!(r["isError"], false, "{r}");
    let report = &r["structuredContent"];
    assert_eq!(report["outcome"], "denied", "{r}");
    let items = report["items"].as_array().unwrap();
    let mount = items.iter().find(|i| i["kind"] == "mount").unwrap();
    assert_eq!(mount["verdict"], "deny");
    assert_eq!(mount["rule_id"], "secret");
    assert_eq!(mount["reason"], "secrets are never shared");
    let command = items.iter().find(|i| i["kind"] == "command").unwrap();
    assert_eq!(command["verdict"], "allow");
    assert_eq!(command["rule_id"], "true");
    // The same report as text, for clients that read only text.
    let text: Value = serde_json::from_str(r["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(&text, report);

    // JSON plans too, by their first character or by `format`.
    let json_plan = r#"{"command": ["true"], "mounts": [{"host": "/tmp/x/work", "guest": "/w", "mode": "rw"}]}"#;
    for args in [
        json!({"plan": json_plan}),
        json!({"plan": json_plan, "format": "json"}),
    ] {
        let r = c.call("evaluate_plan", args).await;
        assert_eq!(r["structuredContent"]["outcome"], "allowed", "{r}");
    }
    assert_eq!(c.made.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn bad_arguments_are_tool_errors_naming_the_argument() {
    let (mut c, _) = start("2025-06-18").await;
    let cases = [
        (
            "evaluate_plan",
            json!({}),
            "missing required argument `plan`",
        ),
        (
            "evaluate_plan",
            json!({"plan": DENIED_PLAN, "policy": "allow-all.toml"}),
            "unknown argument `policy`",
        ),
        (
            "evaluate_plan",
            json!({"plan": "command = [\"true\"]\nmounts = 3\n"}),
            "argument `plan`:2:",
        ),
        (
            "evaluate_plan",
            json!({"plan": "command = []"}),
            "argument `plan`: `command`: must name a program",
        ),
        (
            "evaluate_plan",
            json!({"plan": DENIED_PLAN, "format": "yaml"}),
            "argument `format` is \"yaml\"",
        ),
        (
            "create_session",
            json!({"plan": 7}),
            "argument `plan` must be a string, not a number",
        ),
        (
            "run_command",
            json!({"session_id": "0123456789abcdef0123456789abcdef", "argv": "ls -l"}),
            "argument `argv` must be an array of strings, not a string",
        ),
        (
            "run_command",
            json!({"session_id": "0123456789abcdef0123456789abcdef", "argv": []}),
            "argument `argv` is empty",
        ),
        (
            "run_command",
            json!({"session_id": "nope", "argv": ["true"]}),
            "argument `session_id` is \"nope\"",
        ),
        (
            "run_command",
            json!({"session_id": "0123456789abcdef0123456789abcdef", "argv": ["true"], "cwd": "work"}),
            "argument `cwd`: `work` is not an absolute path",
        ),
        (
            "run_command",
            json!({"session_id": "0123456789abcdef0123456789abcdef", "argv": ["true"], "timeout_secs": 0}),
            "argument `timeout_secs` is 0",
        ),
        (
            "read_file",
            json!({"session_id": "0123456789abcdef0123456789abcdef", "path": "/w/../etc/passwd"}),
            "argument `path`: `/w/../etc/passwd` contains a `..` component",
        ),
        (
            "write_file",
            json!({"session_id": "0123456789abcdef0123456789abcdef", "path": "/w/a", "content": "%%", "encoding": "base64"}),
            "argument `content` is not base64",
        ),
        (
            "destroy_session",
            json!({"session_id": "0123456789abcdef0123456789abcdef", "merge": "yes"}),
            "argument `merge` is \"yes\"",
        ),
    ];
    for (tool, args, want) in cases {
        let r = c.call(tool, args.clone()).await;
        let text = r["content"][0]["text"].as_str().unwrap();
        assert_eq!(r["isError"], true, "{tool} {args}: {r}");
        assert!(
            text.contains(want),
            "{tool} {args}: {text:?} lacks {want:?}"
        );
        assert_eq!(r["structuredContent"]["error"], text, "{r}");
    }
    // An unknown tool is a protocol error (the request cannot be routed).
    let v = c
        .request("tools/call", json!({"name": "sudo", "arguments": {}}))
        .await;
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown tool `sudo`"));
    assert_eq!(c.made.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn sessions_need_the_launcher_and_unknown_ones_are_named() {
    let (mut c, _) = start("2025-06-18").await;
    // Creating needs the launcher (its policy, approvers and audit log decide, even a
    // denial); without one, the call says why.
    let r = c.call("create_session", json!({"plan": DENIED_PLAN})).await;
    assert_eq!(r["isError"], true, "{r}");
    let text = r["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("the launcher could not be made: VM image /nowhere/image.json"),
        "{text}"
    );
    // Each call tries again (the image may have been built since).
    c.call("create_session", json!({"plan": DENIED_PLAN})).await;
    assert_eq!(c.made.load(std::sync::atomic::Ordering::SeqCst), 2);

    let id = "0123456789abcdef0123456789abcdef";
    for (tool, args) in [
        ("run_command", json!({"session_id": id, "argv": ["true"]})),
        ("read_file", json!({"session_id": id, "path": "/w/a"})),
        (
            "write_file",
            json!({"session_id": id, "path": "/w/a", "content": "x"}),
        ),
        ("list_pending_asks", json!({"session_id": id})),
        ("destroy_session", json!({"session_id": id})),
    ] {
        let r = c.call(tool, args).await;
        assert_eq!(r["isError"], true, "{r}");
        let text = r["content"][0]["text"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("no session {id} on this server")),
            "{text}"
        );
    }
}

#[tokio::test]
async fn the_server_ends_when_its_input_closes() {
    let (c, _) = start("2025-06-18").await;
    let Client {
        write,
        read,
        server,
        ..
    } = c;
    drop(write);
    drop(read);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the server stops when its input closes");
    ended.unwrap().unwrap();
}
