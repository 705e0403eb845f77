//! The egress suite: every connection leaves through the host, decided by name and
//! port. The table `tests/cases/egress-table.toml` runs as the agent in both isolation
//! modes (process: `airlock run --isolation process`, one run per case; vm: one session
//! on the debian image, one exec per case), against servers on this host's loopback:
//! an HTTP server, a TLS server with a test CA, and TCP/UDP canaries that must never
//! hear a byte. The session is granted `allowed.test` on the HTTP and TLS ports only
//! (pinned to 127.0.0.1 with `--resolve`, the only way a session reaches loopback).
//!
//! After the table: no host server saw what a refused case tried to send, and in the
//! VM, destroying the session closes a connection the agent holds open.

#[path = "vm_support.rs"]
mod vm_support;

use serde::Deserialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    argv: Vec<String>,
    exit: Option<i32>,
    stdout: Option<String>,
    server_must_not_see: Option<String>,
    #[serde(default)]
    dropped: bool,
}

fn table() -> Table {
    let path = vm_support::workspace_root().join("tests/cases/egress-table.toml");
    toml::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn policy_path() -> PathBuf {
    vm_support::workspace_root().join("tests/cases/egress-policy.toml")
}

/// Everything any host server received, in order, as text (lossy).
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<String>>>);

impl Heard {
    fn push(&self, what: impl Into<String>) {
        self.0.lock().unwrap().push(what.into());
    }
    fn all(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// The host side of the suite: servers on loopback and the test CA.
struct Servers {
    dir: tempfile::TempDir,
    http: u16,
    tls: u16,
    canary: u16,
    /// What the HTTP server and the TLS server heard.
    served: Heard,
    /// What the canaries heard (must stay empty).
    canaries: Heard,
    /// Connections to the HTTP server's `/hold` that the peer closed.
    held_closed: Arc<Mutex<u32>>,
    tls_log: PathBuf,
    tls_child: Child,
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.tls_child.kill();
        let _ = self.tls_child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (make deps installs it)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

const TLS_SERVER: &str = r#"
import socket, ssl, sys, threading
cert, key, log = sys.argv[1], sys.argv[2], sys.argv[3]
lock = threading.Lock()
def note(s):
    with lock, open(log, 'a') as f:
        f.write(s + '\n')
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
def sni(sock, name, c):
    note('sni ' + repr(name))
ctx.sni_callback = sni
ls = socket.socket()
ls.bind(('127.0.0.1', 0))
ls.listen(64)
print(ls.getsockname()[1], flush=True)
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        note('request ' + repr(t.recv(65536)))
        t.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\nConnection: close\r\n\r\nhello over tls')
        t.close()
    except Exception as e:
        note('error ' + repr(e))
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

fn serve_http(served: Heard, held_closed: Arc<Mutex<u32>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let (served, held_closed) = (served.clone(), Arc::clone(&held_closed));
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => {
                            if String::from_utf8_lossy(&buf).contains("GET /hold ") {
                                *held_closed.lock().unwrap() += 1;
                            }
                            return;
                        }
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    served.push(String::from_utf8_lossy(&chunk[..n]).into_owned());
                    // Answer each complete request head; keep the connection (a second
                    // request on it must reach this server to be seen).
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end + 4);
                        if head.starts_with("get /hold ") {
                            buf.extend_from_slice(b"GET /hold ");
                            continue;
                        }
                        let body = "hello from the host server\n";
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                        if head.contains("connection: close") {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

impl Servers {
    fn start() -> Servers {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("egress-ca");
        std::fs::create_dir(&ca).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut args = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=airlock egress test CA",
        ];
        args.extend(ec);
        args.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(&ca, &args);
        let mut args = vec!["req", "-subj", "/CN=allowed.test"];
        args.extend(ec);
        args.extend(["-keyout", "leaf.key", "-out", "leaf.csr"]);
        openssl(&ca, &args);
        std::fs::write(ca.join("san.ext"), "subjectAltName=DNS:allowed.test\n").unwrap();
        openssl(
            &ca,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "leaf.pem",
            ],
        );
        // The sandbox reads only the CA certificate.
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        for f in ["ca.key", "leaf.key", "leaf.csr", "san.ext", "leaf.pem"] {
            std::fs::rename(ca.join(f), keys.join(f)).unwrap();
        }
        let _ = std::fs::remove_file(ca.join("ca.srl"));
        let tls_log = dir.path().join("tls.log");
        std::fs::write(&tls_log, "").unwrap();
        let mut tls_child = Command::new("python3")
            .args(["-c", TLS_SERVER])
            .arg(keys.join("leaf.pem"))
            .arg(keys.join("leaf.key"))
            .arg(&tls_log)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(tls_child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let tls: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TLS server said {line:?}"));

        let (served, canaries) = (Heard::default(), Heard::default());
        let held_closed = Arc::new(Mutex::new(0));
        let http = serve_http(served.clone(), Arc::clone(&held_closed));
        // The canaries: one port number, TCP and UDP.
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let canary = tcp.local_addr().unwrap().port();
        let udp = UdpSocket::bind(("127.0.0.1", canary)).unwrap();
        let heard = canaries.clone();
        std::thread::spawn(move || {
            for mut c in tcp.incoming().flatten() {
                heard.push(format!("tcp connection from {:?}", c.peer_addr()));
                let mut b = Vec::new();
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = c.read_to_end(&mut b);
                heard.push(String::from_utf8_lossy(&b).into_owned());
            }
        });
        let heard = canaries.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 2048];
            while let Ok((n, from)) = udp.recv_from(&mut b) {
                heard.push(format!(
                    "udp from {from}: {}",
                    String::from_utf8_lossy(&b[..n])
                ));
            }
        });
        Servers {
            dir,
            http,
            tls,
            canary,
            served,
            canaries,
            held_closed,
            tls_log,
            tls_child,
        }
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("egress-ca")
    }

    fn subst(&self, word: &str) -> String {
        word.replace("{http}", &self.http.to_string())
            .replace("{tls}", &self.tls.to_string())
            .replace("{canary}", &self.canary.to_string())
            .replace("{ca}", "/egress-ca/ca.pem")
    }

    /// Everything the suite's servers heard, canaries included.
    fn everything_heard(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.served.all(),
            self.canaries.all(),
            std::fs::read_to_string(&self.tls_log).unwrap_or_default()
        )
    }

    fn net_flags(&self) -> Vec<String> {
        vec![
            format!("allowed.test:{}", self.http),
            format!("allowed.test:{}", self.tls),
            format!("*.wild.test:{}", self.http),
        ]
    }
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

fn judge(mode: &str, case: &Case, ran: &Ran) -> Option<String> {
    let mut wrong = Vec::new();
    match case.exit {
        Some(want) if ran.code != want => wrong.push(format!("exit {} (wanted {want})", ran.code)),
        None if ran.code == 0 => wrong.push("exit 0 (wanted a failure)".to_string()),
        _ => {}
    }
    if let Some(want) = &case.stdout {
        if !ran.stdout.contains(want.as_str()) {
            wrong.push(format!("stdout lacks {want:?}"));
        }
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "[{mode}] {}: {}\n  stdout: {}\n  stderr: {}",
            case.name,
            wrong.join("; "),
            ran.stdout.trim(),
            ran.stderr.trim()
        )
    })
}

fn check_nothing_heard(servers: &Servers, table: &Table) -> Vec<String> {
    let heard = servers.everything_heard();
    let mut wrong = Vec::new();
    for case in &table.case {
        if let Some(secret) = &case.server_must_not_see {
            if heard.contains(secret.as_str()) {
                wrong.push(format!("{}: a host server heard {secret:?}", case.name));
            }
        }
    }
    let canaries = servers.canaries.all();
    if !canaries.is_empty() {
        wrong.push(format!("the canaries heard: {canaries}"));
    }
    wrong
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_egress_table_holds_under_process_isolation() {
    if !airlock_tests::running_as_root() {
        return airlock_tests::skip("process isolation needs root");
    }
    let servers = Servers::start();
    let table = table();
    let state = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in &table.case {
        let mut cmd = Command::new(bin_dir().join("airlock"));
        cmd.args(["run", "--isolation", "process", "--policy"])
            .arg(policy_path())
            .args(["--tool", "curl", "--tool", "python3"])
            .args([
                "--resolve",
                "allowed.test=127.0.0.1",
                "--resolve",
                "canary.test=127.0.0.1",
                "--resolve",
                "a.wild.test=127.0.0.1",
            ])
            .arg("--mount")
            .arg(format!("{}:/egress-ca:ro", servers.ca_dir().display()))
            .arg("--audit-log")
            .arg(state.path().join("audit.jsonl"));
        for n in servers.net_flags() {
            cmd.args(["--net", &n]);
        }
        cmd.arg("--")
            .args(case.argv.iter().map(|w| servers.subst(w)))
            .env("XDG_RUNTIME_DIR", state.path().join("run"))
            .env("XDG_STATE_HOME", state.path().join("state"))
            .stdin(Stdio::null());
        let out = cmd.output().unwrap();
        let ran = Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "[process] {}: exit {}: {}",
            case.name,
            ran.code,
            ran.stdout.trim()
        );
        failures.extend(judge("process", case, &ran));
        if case.dropped
            && !(ran.stderr.contains("egress funnel: ")
                && ran.stderr.contains(" packets dropped")
                && !ran.stderr.contains("funnel: 0 packets"))
        {
            failures.push(format!(
                "[process] {}: the funnel counted no drop: {}",
                case.name, ran.stderr
            ));
        }
    }
    failures.extend(check_nothing_heard(&servers, &table));
    // Each refusal is on record, with the host's reason.
    let audit = std::fs::read_to_string(state.path().join("audit.jsonl")).unwrap();
    for want in [
        "net allowed.test:",
        "is not granted and the policy's rule `default` denies it",
        "directly; egress is granted by name",
        "the sandbox's DNS refused `canary.test`",
    ] {
        if !audit.contains(want) {
            failures.push(format!("the audit log lacks {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_table_holds_in_a_vm_and_destroy_closes_connections() {
    use airlock_launcher::launcher::{ExecSpec, Launcher, LauncherConfig};
    let _one = vm_support::ONE_VM.lock().await;
    let servers = Servers::start();
    let table = table();
    let dir = tempfile::tempdir().unwrap();
    let (inputs, tools) = vm_support::setup(dir.path());
    let (image, _) =
        airlock_launcher::image::build(airlock_launcher::image::Profile::Debian, &inputs, &|_| {})
            .unwrap_or_else(|e| panic!("{e}"));
    let policy = airlock_launcher::policy::Policy::load(&policy_path()).unwrap();
    let signer = airlock_launcher::keys::load_signer(&dir.path().join("keys/airlock.key")).unwrap();
    let (launcher, _) = Launcher::new(LauncherConfig {
        policy: Arc::new(policy),
        signer: Arc::new(signer),
        image,
        vmm: Arc::new(airlock_launcher::vmm::qemu::Qemu {
            tools,
            accel: airlock_launcher::vmm::qemu::Accel::Tcg,
        }),
        state_root: dir.path().join("vms"),
        boot_timeout: Duration::from_secs(120),
        approvals: airlock_launcher::approval_broker::ApprovalBroker::new(Duration::from_secs(5)),
        egress_pins: [
            ("allowed.test".to_string(), "127.0.0.1".parse().unwrap()),
            ("canary.test".to_string(), "127.0.0.1".parse().unwrap()),
            ("a.wild.test".to_string(), "127.0.0.1".parse().unwrap()),
        ]
        .into(),
    })
    .unwrap();
    let mut plan_text = format!(
        "command = [\"python3\", \"-c\", \"pass\"]\ntools = [\"curl\", \"python3\"]\n[[mounts]]\nhost = \"{}\"\nguest = \"/egress-ca\"\nmode = \"ro\"\n",
        servers.ca_dir().display()
    );
    for n in servers.net_flags() {
        let (h, p) = n.split_once(':').unwrap();
        plan_text.push_str(&format!("[[net]]\nhost = \"{h}\"\nport = {p}\n"));
    }
    let plan = airlock_launcher::plan::Plan::parse("plan.toml", &plan_text, false).unwrap();
    let mut session = launcher
        .create_session(&plan)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let egress_layer = session
        .ready()
        .layers
        .iter()
        .find(|l| l.name == "egress")
        .map(|l| l.detail.clone());
    assert!(
        egress_layer
            .as_deref()
            .is_some_and(|d| d.contains("the host decides")),
        "the ready report names the funnel: {egress_layer:?}"
    );
    let mut failures = Vec::new();
    for case in &table.case {
        let spec = ExecSpec {
            argv: case.argv.iter().map(|w| servers.subst(w)).collect(),
            ..Default::default()
        };
        let (end, stdout, stderr) = vm_support::run_captured(&mut session, spec).await;
        let code = match end {
            Ok(e) => e.exit_code(),
            Err(e) => panic!("{}: {e}", case.name),
        };
        eprintln!("[vm] {}: exit {code}", case.name);
        failures.extend(judge(
            "vm",
            case,
            &Ran {
                code,
                stdout,
                stderr,
            },
        ));
    }
    failures.extend(check_nothing_heard(&servers, &table));

    // A connection the agent holds open ends when the session is destroyed.
    let hold = ExecSpec {
        argv: vec![
            "python3".into(),
            "-c".into(),
            format!(
                "import socket,time\ns=socket.create_connection(('allowed.test',{}),timeout=20)\ns.sendall(b'GET /hold HTTP/1.1\\r\\nHost: allowed.test:{}\\r\\n\\r\\n')\nprint('holding',flush=True)\ntime.sleep(600)",
                servers.http, servers.http
            ),
        ],
        ..Default::default()
    };
    let mut stream = session.exec(hold).await.unwrap();
    // Wait until the request reached the host server.
    let reached = async {
        while !servers.served.all().contains("GET /hold") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), reached)
        .await
        .expect("the held connection reached the host server");
    let _ = stream.next().await;
    drop(stream);
    assert_eq!(*servers.held_closed.lock().unwrap(), 0);
    session.destroy().await.unwrap();
    let closed = async {
        while *servers.held_closed.lock().unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .is_err()
    {
        failures.push("destroying the session left the agent's connection open".into());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An endpoint the policy says `ask` about is decided per connection by the approvers:
/// `--on-ask deny` refuses it (the agent's connection is reset, the session log says
/// who refused), `--on-ask allow` lets it through, and both answers are on record.
#[test]
fn an_asked_endpoint_goes_to_the_approvers_per_connection() {
    if !airlock_tests::running_as_root() {
        return airlock_tests::skip("process isolation needs root");
    }
    let servers = Servers::start();
    let state = tempfile::tempdir().unwrap();
    let fetch = format!(
        "import urllib.request\nopener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))\ntry:\n    print(opener.open('http://asked.test:{}/asked', timeout=20).read().decode())\nexcept OSError as e:\n    print('refused:', e)\n",
        servers.http
    );
    let run = |answer: &str| {
        let out = Command::new(bin_dir().join("airlock"))
            .args(["run", "--isolation", "process", "--policy"])
            .arg(policy_path())
            .args(["--tool", "python3", "--on-ask", answer])
            .args(["--net", &format!("asked.test:{}", servers.http)])
            .args(["--resolve", "asked.test=127.0.0.1", "--audit-log"])
            .arg(state.path().join("audit.jsonl"))
            .args(["--", "python3", "-c", &fetch])
            .env("XDG_RUNTIME_DIR", state.path().join("run"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (stdout, stderr) = run("deny");
    assert!(stdout.contains("refused:"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("egress denied asked.test:") && stderr.contains("--on-ask deny"),
        "the session log says who refused: {stderr}"
    );
    assert!(
        !servers.served.all().contains("/asked"),
        "a refused connection reached the server"
    );
    let (stdout, stderr) = run("allow");
    assert!(
        stdout.contains("hello from the host server"),
        "{stdout}\n{stderr}"
    );
    let audit = std::fs::read_to_string(state.path().join("audit.jsonl")).unwrap();
    let nets: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("net asked.test:"))
        .collect();
    assert!(
        nets.iter().any(|l| l.contains("\"denied\""))
            && nets.iter().any(|l| l.contains("\"approved\"")),
        "both answers are on record: {nets:#?}"
    );
}
