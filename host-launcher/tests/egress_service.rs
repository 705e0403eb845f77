//! The host's egress service against a guest whose root was taken: the agent holds the
//! session secret (PID 1 has it), has flushed the guest's netfilter rules and talks to
//! the service directly. The host must still refuse everything the manifest does not
//! grant, and record it.
//!
//! Every test drives the real service over real sockets, through the process-isolation
//! hand-over (a socket per connection passed with SCM_RIGHTS, as the guest's
//! `HostDialer::Handed` does) and through the VM path's listener, with real upstream
//! servers on 127.0.0.1. Refusals are checked four ways: the verdict, its reason, that
//! no upstream server heard anything, and that the decision is on record with the
//! host's reason.

use airlock_launcher::approval_broker::{
    ActionKind, Answer, ApprovalBroker, AutoAnswer, AutomaticDecision, Decided, DecisionRecorder,
    Scope,
};
use airlock_launcher::egress::{
    serve_egress_handed, serve_egress_listener, EgressGrants, EgressService, EgressTask,
};
use airlock_proto::egress_wire::{read_frame, write_frame, MAX_FRAME};
use airlock_proto::manifest::Manifest;
use airlock_proto::pb::{EgressOpen, EgressVerdict, EgressVia, Verdict};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

const SESSION: &str = "5e551015e551015e551015e551015e55";
const SECRET: [u8; 32] = [0x5a; 32];
/// How long the host has to answer (or close) a request; every decision here is local.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// What the agent sends on a granted raw TCP connection: its first byte makes it
/// neither TLS nor HTTP, so the gate lets it pass on a port other than 80 and 443.
const RAW: &[u8] = b"\0raw bytes, neither TLS nor HTTP";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    hex::decode(text.trim()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// --- The manifest ----------------------------------------------------------------

/// The egress part of a session's plan; everything else in the manifest is filler.
struct Plan<'a> {
    allow: Vec<(&'a str, u16)>,
    ask: Vec<(&'a str, u16)>,
    /// Names pinned to 127.0.0.1 (granted or not: a pin alone must grant nothing).
    pinned: Vec<&'a str>,
    net_connections: u32,
    net_mib: u64,
}

impl Default for Plan<'_> {
    fn default() -> Self {
        Plan {
            allow: vec![],
            ask: vec![],
            pinned: vec![],
            net_connections: 16,
            net_mib: 64,
        }
    }
}

fn manifest(plan: &Plan) -> Manifest {
    let endpoints = |list: &[(&str, u16)]| {
        list.iter()
            .map(|(host, port)| serde_json::json!({"host": host, "port": port}))
            .collect::<Vec<_>>()
    };
    let pins: serde_json::Map<String, serde_json::Value> = plan
        .pinned
        .iter()
        .map(|name| (name.to_string(), "127.0.0.1".into()))
        .collect();
    serde_json::from_value(serde_json::json!({
        "manifest_version": airlock_proto::manifest::MANIFEST_VERSION,
        "protocol_version": 1, "session_id": SESSION, "vm_cid": 3,
        "image_id": "sha256:abc", "nonce": "0".repeat(32), "issued_at": 1,
        "not_before": 1, "expires_at": 2, "policy_digest": "sha256:0",
        "command": {"argv": ["sh"], "cwd": "/", "env": {}},
        "mounts": [],
        "egress": {"allow": endpoints(&plan.allow), "ask": endpoints(&plan.ask), "pins": pins},
        "tools": [],
        "resources": {"vcpus": 1, "memory_mib": 1, "disk_mib": 1, "pids": 1,
            "wall_time_secs": 1, "net_connections": plan.net_connections,
            "net_mib": plan.net_mib}
    }))
    .expect("the test manifest deserializes")
}

// --- The audit log ---------------------------------------------------------------

/// The audit log: every decision the broker is asked to record, as it is recorded.
#[derive(Default)]
struct Recorder {
    automatic: Mutex<Vec<AutomaticDecision>>,
    asked: Mutex<Vec<Decided>>,
}

impl DecisionRecorder for Recorder {
    fn record(&self, decided: &Decided) -> Result<(), String> {
        self.asked.lock().unwrap().push(decided.clone());
        Ok(())
    }

    fn record_automatic(&self, decision: &AutomaticDecision) -> Result<(), String> {
        self.automatic.lock().unwrap().push(decision.clone());
        Ok(())
    }
}

impl Recorder {
    fn decisions(&self) -> usize {
        self.automatic.lock().unwrap().len() + self.asked.lock().unwrap().len()
    }

    /// Connections on record as allowed (by the manifest or by a person).
    fn grants(&self) -> usize {
        let automatic = self.automatic.lock().unwrap();
        let asked = self.asked.lock().unwrap();
        automatic.iter().filter(|d| d.verdict == "allow").count()
            + asked.iter().filter(|d| d.resolution.approved).count()
    }

    fn is_recorded(&self, verdict: &str, host: &str, port: u16, reason: &str) -> bool {
        let kind = ActionKind::Net {
            host: host.into(),
            port,
        };
        self.automatic.lock().unwrap().iter().any(|d| {
            d.verdict == verdict
                && d.session_id == SESSION
                && d.action.session_id == SESSION
                && d.action.kind == kind
                && d.action.reason == reason
        })
    }

    #[track_caller]
    fn assert_recorded(&self, verdict: &str, host: &str, port: u16, reason: &str) {
        if !self.is_recorded(verdict, host, port, reason) {
            let on_record = self.automatic.lock().unwrap().clone();
            panic!("no `{verdict}` of {host:?}:{port} on record saying {reason:?}; on record: {on_record:#?}");
        }
    }

    /// A connection the host cut is recorded as the cut happens: the agent may see
    /// the close a moment before the record is written.
    async fn wait_recorded(&self, verdict: &str, host: &str, port: u16, reason: &str) {
        let within = Duration::from_secs(1);
        let _ = tokio::time::timeout(within, async {
            while !self.is_recorded(verdict, host, port, reason) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        self.assert_recorded(verdict, host, port, reason);
    }

    /// The refusal `v` of `host:port` is on record with the reason the agent was given.
    fn assert_denial(&self, host: &str, port: u16, v: &EgressVerdict) {
        self.assert_recorded("deny", host, port, &v.reason);
    }
}

// --- Upstream servers ------------------------------------------------------------

/// An echo server on 127.0.0.1 that remembers everything: connections accepted,
/// bytes received, connections that ended, and how many grants were on record at the
/// moment each connection was accepted.
struct Upstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
    grants_on_record_at_accept: Arc<Mutex<Vec<usize>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Upstream {
    /// How many grants were on record at each accept, once the first connection was
    /// accepted (the dial completes in the kernel before this server's task runs
    /// `accept`, so the client can hear ALLOW first).
    async fn grants_seen_at_accept(&self) -> Vec<usize> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.accepted.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.grants_on_record_at_accept.lock().unwrap().clone()
    }

    async fn start(recorder: &Arc<Recorder>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let at_accept = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (accepted, ended, received, at_accept, recorder) = (
                Arc::clone(&accepted),
                Arc::clone(&ended),
                Arc::clone(&received),
                Arc::clone(&at_accept),
                Arc::clone(recorder),
            );
            async move {
                loop {
                    let Ok((mut conn, _)) = listener.accept().await else {
                        continue;
                    };
                    at_accept.lock().unwrap().push(recorder.grants());
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (ended, received) = (Arc::clone(&ended), Arc::clone(&received));
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            received.lock().unwrap().extend_from_slice(&buf[..n]);
                            if conn.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        ended.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Upstream {
            port,
            accepted,
            ended,
            received,
            grants_on_record_at_accept: at_accept,
            accept,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }

    fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    fn assert_heard_nothing(&self) {
        assert_eq!(
            self.accepted(),
            0,
            "a connection reached port {}",
            self.port
        );
        assert!(self.received().is_empty());
    }
}

/// Waits up to `within` for `done`, polling.
async fn wait_until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- The service and the taken-over guest ----------------------------------------

/// How the guest reaches the service.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// Process isolation: each stream is one end of a socket pair handed over a
    /// control socket with SCM_RIGHTS.
    Handed,
    /// A VM: each stream is a connection to the listener behind the vsock port.
    Listener,
}

const BOTH: [Path; 2] = [Path::Handed, Path::Listener];

enum HostEnd {
    Handed(std::os::unix::net::UnixStream),
    Listener {
        socket: std::path::PathBuf,
        /// Holds the socket's directory for as long as the service runs.
        _dir: tempfile::TempDir,
    },
}

/// A running egress service and the guest's end of it.
struct Rig {
    host: HostEnd,
    task: Option<EgressTask>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Rig {
    fn start(path: Path, plan: &Plan, auto: Option<AutoAnswer>, recorder: &Arc<Recorder>) -> Rig {
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let lines = Arc::clone(&log);
        let recorder: Arc<dyn DecisionRecorder> = recorder.clone();
        let broker = ApprovalBroker::configured(Duration::from_secs(5), auto, Some(recorder));
        let service = EgressService::new(
            SESSION.into(),
            SECRET.to_vec(),
            EgressGrants::of(&manifest(plan)),
            broker,
            None,
            Arc::new(move |line: &str| lines.lock().unwrap().push(line.to_string())),
        );
        let (host, task) = match path {
            Path::Handed => {
                let (guest, host) = std::os::unix::net::UnixStream::pair().unwrap();
                let task = serve_egress_handed(service, host).unwrap();
                (HostEnd::Handed(guest), task)
            }
            Path::Listener => {
                let dir = tempfile::tempdir().unwrap();
                let socket = dir.path().join("egress.sock");
                let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
                let task = serve_egress_listener(service, listener).unwrap();
                (HostEnd::Listener { socket, _dir: dir }, task)
            }
        };
        Rig {
            host,
            task: Some(task),
            log,
        }
    }

    fn task(&self) -> &EgressTask {
        self.task.as_ref().expect("the service runs")
    }

    fn log_lines_with(&self, text: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(text)).count()
    }

    /// A new stream to the service, as the guest's funnel opens one.
    async fn stream(&self) -> UnixStream {
        match &self.host {
            HostEnd::Handed(control) => {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
                // Our copy of `theirs` is closed once sent, so the host's close is an EOF here.
                hand_over(control, &[theirs.into()]);
                ours.set_nonblocking(true).unwrap();
                UnixStream::from_std(ours).unwrap()
            }
            HostEnd::Listener { socket, .. } => UnixStream::connect(socket).await.unwrap(),
        }
    }

    /// Sends `open` on a new stream and reads the host's answer.
    async fn request(&self, open: &EgressOpen) -> (UnixStream, Option<EgressVerdict>) {
        let mut stream = self.stream().await;
        write_frame(&mut stream, open).await.unwrap();
        let verdict = answer(&mut stream).await;
        (stream, verdict)
    }

    /// The session's own request for `allowed.test:port` is granted: nothing before it
    /// took the service down. The stream is closed again at once.
    async fn assert_still_grants(&self, port: u16) {
        let (_stream, verdict) = self.request(&connect("allowed.test", port)).await;
        allowed(verdict);
    }
}

/// A plan that grants `name` on `port` and pins it to 127.0.0.1, where the test's
/// upstream server listens.
fn pinned_plan(name: &str, port: u16) -> Plan<'_> {
    Plan {
        allow: vec![(name, port)],
        pinned: vec![name],
        ..Plan::default()
    }
}

/// A new audit log, an upstream server that records into it, and the service on
/// `path` running the plan `plan` makes of the server's port.
async fn rig_with_server<'a>(
    path: Path,
    plan: impl FnOnce(u16) -> Plan<'a>,
    auto: Option<AutoAnswer>,
) -> (Arc<Recorder>, Upstream, Rig) {
    let recorder = Arc::new(Recorder::default());
    let server = Upstream::start(&recorder).await;
    let rig = Rig::start(path, &plan(server.port), auto, &recorder);
    (recorder, server, rig)
}

/// The usual set-up: `allowed.test` granted on the server's port and pinned to it.
async fn granted_rig(path: Path) -> (Arc<Recorder>, Upstream, Rig) {
    rig_with_server(path, |port| pinned_plan("allowed.test", port), None).await
}

/// Sends `fds` in one message over the hand-over socket (SCM_RIGHTS, one byte), as
/// the guest's `HostDialer::Handed` does.
fn hand_over(control: &std::os::unix::net::UnixStream, fds: &[OwnedFd]) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let raw: Vec<_> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsgs = if raw.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    sendmsg::<()>(
        control.as_raw_fd(),
        &[std::io::IoSlice::new(b"c")],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .unwrap();
}

/// The host's verdict, or `None` if it closed the stream without one. A stream it
/// neither answers nor closes in time is a hang, and fails the test.
async fn answer(stream: &mut UnixStream) -> Option<EgressVerdict> {
    match tokio::time::timeout(ANSWER_WITHIN, read_frame::<_, EgressVerdict>(stream)).await {
        Err(_) => panic!("the host neither answered nor closed the stream in {ANSWER_WITHIN:?}"),
        Ok(Ok(verdict)) => Some(verdict),
        Ok(Err(e)) => {
            // Closed with our bytes unread is a reset on a Unix socket, else an EOF.
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ),
                "{e}"
            );
            None
        }
    }
}

/// Reads until the host closes the stream; what came before the close.
async fn until_closed(stream: &mut UnixStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(ANSWER_WITHIN, stream.read(&mut buf)).await {
            Err(_) => panic!("the connection is still open after {ANSWER_WITHIN:?}"),
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `bytes` and reads as many back from the echo server behind the stream.
async fn echo_through(stream: &mut UnixStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(ANSWER_WITHIN, stream.read_exact(&mut back))
        .await
        .expect("the echo came back in time")
        .unwrap();
    assert_eq!(back, bytes);
}

/// Opens `open` (granted) and sends `first` on it: the host must cut the connection
/// without a byte back, and record the refusal of `open`'s host and port saying `reason`.
async fn assert_cut_on_first_bytes(
    path: Path,
    rig: &Rig,
    recorder: &Recorder,
    open: &EgressOpen,
    first: &[u8],
    reason: &str,
) {
    let (mut stream, v) = rig.request(open).await;
    allowed(v);
    stream.write_all(first).await.unwrap();
    assert!(until_closed(&mut stream).await.is_empty(), "{path:?}");
    let port = u16::try_from(open.port).expect("a TCP port");
    recorder
        .wait_recorded("deny", &open.host, port, reason)
        .await;
}

fn request(host: &str, port: u32, via: EgressVia) -> EgressOpen {
    EgressOpen {
        session_id: SESSION.into(),
        session_secret: SECRET.to_vec(),
        host: host.into(),
        port,
        via: via as i32,
        address: String::new(),
    }
}

fn connect(host: &str, port: u16) -> EgressOpen {
    request(host, port.into(), EgressVia::Transparent)
}

#[track_caller]
fn denied(verdict: Option<EgressVerdict>, says: &[&str]) -> EgressVerdict {
    let v = verdict.expect("the host answered the session's enforcer");
    assert_eq!(v.verdict, Verdict::Deny as i32, "{v:?}");
    assert!(v.approval_id.is_empty(), "{v:?}");
    for words in says {
        assert!(
            v.reason.contains(words),
            "the reason {:?} does not say {words:?}",
            v.reason
        );
    }
    v
}

#[track_caller]
fn allowed(verdict: Option<EgressVerdict>) -> EgressVerdict {
    let v = verdict.expect("the host answered the session's enforcer");
    assert_eq!(v.verdict, Verdict::Allow as i32, "{v:?}");
    assert_eq!(v.rule_id, "manifest egress", "{v:?}");
    v
}

// --- 1. Who may ask --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_with_a_wrong_secret_or_session_id_gets_no_verdict_and_no_record() {
    for path in BOTH {
        let (recorder, server, rig) = granted_rig(path).await;
        let granted = connect("allowed.test", server.port);
        let strangers = [
            EgressOpen {
                session_secret: vec![0; 32],
                ..granted.clone()
            },
            // Prefixes and extensions of the secret, and none at all.
            EgressOpen {
                session_secret: SECRET[..31].to_vec(),
                ..granted.clone()
            },
            EgressOpen {
                session_secret: [&SECRET[..], &[0x5a]].concat(),
                ..granted.clone()
            },
            EgressOpen {
                session_secret: vec![],
                ..granted.clone()
            },
            // The right secret with another session's id, or none.
            EgressOpen {
                session_id: "0".repeat(32),
                ..granted.clone()
            },
            EgressOpen {
                session_id: String::new(),
                ..granted.clone()
            },
        ];
        for open in &strangers {
            let (_stream, verdict) = rig.request(open).await;
            assert_eq!(verdict, None, "{path:?}: a stranger got an answer");
        }
        assert_eq!(
            recorder.decisions(),
            0,
            "{path:?}: a stranger's request is no decision"
        );
        server.assert_heard_nothing();
        assert_eq!(
            rig.log_lines_with("not from this session's enforcer"),
            strangers.len(),
            "{path:?}"
        );
        // The same request with the session's credentials is granted: the refusals above
        // were about who asked.
        rig.assert_still_grants(server.port).await;
    }
}

// --- 2-5. What is asked for ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn names_not_granted_exactly_are_denied_naming_what_to_add() {
    for path in BOTH {
        let recorder = Arc::new(Recorder::default());
        let (granted, canary) = (
            Upstream::start(&recorder).await,
            Upstream::start(&recorder).await,
        );
        // Every name is pinned to loopback: a pin grants nothing, so a wrong allow would
        // reach one of the servers.
        let plan = Plan {
            allow: vec![("allowed.test", granted.port)],
            pinned: vec![
                "allowed.test",
                "unlisted.test",
                "api.allowed.test",
                "test",
                "allowed.test.evil",
            ],
            ..Plan::default()
        };
        let rig = Rig::start(path, &plan, None, &recorder);

        let (_s, v) = rig.request(&connect("unlisted.test", canary.port)).await;
        let add = format!(
            "`unlisted.test:{0}` is not granted to this session: add [[net]] host = \"unlisted.test\", port = {0} to the plan",
            canary.port
        );
        let v = denied(v, &[&add]);
        recorder.assert_denial("unlisted.test", canary.port, &v);

        let (_s, v) = rig.request(&connect("allowed.test", canary.port)).await;
        let only = format!(
            "`allowed.test` is granted on port {} only, not {}",
            granted.port, canary.port
        );
        let v = denied(v, &[&only]);
        recorder.assert_denial("allowed.test", canary.port, &v);

        // A sub-domain, a parent, and a name that merely starts with the granted one.
        for other in ["api.allowed.test", "test", "allowed.test.evil"] {
            let (_s, v) = rig.request(&connect(other, granted.port)).await;
            let v = denied(v, &[&format!("`{other}:{}` is not granted", granted.port)]);
            recorder.assert_denial(other, granted.port, &v);
        }
        granted.assert_heard_nothing();
        canary.assert_heard_nothing();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_without_a_name_is_denied_as_a_direct_connection() {
    let (recorder, canary, rig) = granted_rig(Path::Handed).await;
    for (address, port) in [
        ("127.0.0.1", canary.port),
        ("::1", canary.port),
        ("169.254.169.254", 80),
    ] {
        let open = EgressOpen {
            address: address.into(),
            ..connect("", port)
        };
        let (_s, v) = rig.request(&open).await;
        let v = denied(
            v,
            &[&format!(
                "the agent connected to the address {address} port {port} directly; egress is granted by name"
            )],
        );
        recorder.assert_denial("", port, &v);
    }
    // An address as long as a frame allows is cut short in the reason, not echoed whole.
    let open = EgressOpen {
        address: "9".repeat(MAX_FRAME - 200),
        ..connect("", canary.port)
    };
    let (_s, v) = rig.request(&open).await;
    let v = denied(v, &["directly; egress is granted by name"]);
    assert!(v.reason.len() < 1024, "{} bytes", v.reason.len());
    recorder.assert_denial("", canary.port, &v);
    canary.assert_heard_nothing();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_is_not_a_lower_case_dns_name_is_denied_without_panicking() {
    let (recorder, server, rig) = granted_rig(Path::Handed).await;
    let long = "a".repeat(300);
    let huge = "x".repeat(MAX_FRAME - 200);
    let hosts = [
        // Spellings of the granted name the guest must have normalised: the host takes
        // only the exact name, so nothing depends on how it would normalise them.
        "ALLOWED.TEST",
        "Allowed.test",
        "allowed.test.",
        "allowed.test\0evil.test",
        "allowed test",
        "\u{0430}llowed.test",
        "allowed.test:80",
        long.as_str(),
        huge.as_str(),
        // Addresses in the name field.
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "::1",
        "[::1]",
    ];
    for host in hosts {
        let (_s, v) = rig.request(&connect(host, server.port)).await;
        let v = denied(v, &["is not a DNS name"]);
        assert!(v.reason.len() < 1024, "{} bytes", v.reason.len());
        recorder.assert_denial("", server.port, &v);
    }
    // A port outside TCP's range is not read modulo 2^16.
    for port in [0, 65_536 + u32::from(server.port), u32::MAX] {
        let (_s, v) = rig
            .request(&request("allowed.test", port, EgressVia::Transparent))
            .await;
        let v = denied(v, &[&format!("port {port} is not a TCP port")]);
        recorder.assert_denial("allowed.test", 0, &v);
    }
    server.assert_heard_nothing();
    // Still serving: nothing above took the service down.
    rig.assert_still_grants(server.port).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_refusal_report_is_denied_and_recorded_even_for_a_granted_name() {
    let (recorder, server, rig) = granted_rig(Path::Handed).await;
    let (_s, v) = rig
        .request(&request("unlisted.test", 53, EgressVia::DnsRefusal))
        .await;
    let v = denied(v, &["the sandbox's DNS refused `unlisted.test`"]);
    recorder.assert_denial("unlisted.test", 53, &v);

    // A report is not a connection, whatever name and port it carries.
    let port = server.port;
    let (_s, v) = rig
        .request(&request("allowed.test", port.into(), EgressVia::DnsRefusal))
        .await;
    let v = denied(v, &["the sandbox's DNS refused `allowed.test`"]);
    recorder.assert_denial("allowed.test", port, &v);

    // Nor is a request that says no way of connecting, or one this host does not know.
    for via in [EgressVia::Unspecified as i32, 99] {
        let open = EgressOpen {
            via,
            ..connect("allowed.test", port)
        };
        let (_s, v) = rig.request(&open).await;
        let v = denied(v, &["the request says no way of connecting"]);
        recorder.assert_denial("allowed.test", port, &v);
    }
    server.assert_heard_nothing();
}

// --- 6-8. Resolving, dialling, the first bytes ----------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_granted_name_that_resolves_to_loopback_without_a_pin_is_denied() {
    let plan = |port| Plan {
        allow: vec![("localhost", port)],
        ..Plan::default()
    };
    let (recorder, canary, rig) = rig_with_server(Path::Handed, plan, None).await;
    let (_s, v) = rig.request(&connect("localhost", canary.port)).await;
    let v = denied(
        v,
        &[
            "every address `localhost` resolves to is in a refused range",
            "loopback (127.0.0.0/8)",
            "pin the name",
        ],
    );
    recorder.assert_denial("localhost", canary.port, &v);
    canary.assert_heard_nothing();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_grant_is_recorded_before_the_server_hears_of_it_and_carries_bytes_both_ways() {
    for path in BOTH {
        let (recorder, server, rig) = granted_rig(path).await;
        let (mut stream, v) = rig.request(&connect("allowed.test", server.port)).await;
        let v = allowed(v);
        assert!(v.approval_id.is_empty(), "{v:?}");
        // The record came first: the server's accept already saw it.
        assert_eq!(server.grants_seen_at_accept().await, vec![1], "{path:?}");
        recorder.assert_recorded(
            "allow",
            "allowed.test",
            server.port,
            &format!("granted by the plan's [[net]] allowed.test:{}", server.port),
        );
        echo_through(&mut stream, RAW).await;
        echo_through(&mut stream, b"\0and again").await;
        // Closing our side reaches the server, whose close comes back.
        stream.shutdown().await.unwrap();
        assert!(until_closed(&mut stream).await.is_empty());
        wait_until("the server saw the close", Duration::from_secs(1), || {
            server.ended() == 1
        })
        .await;
        assert!(rig.task().bytes_carried() >= 2 * (RAW.len() as u64 + 10));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_must_name_the_granted_name_in_its_sni_or_the_server_never_sees_the_hello() {
    let good = fixture("client_hello_sni_allowed.hex");
    let evil = fixture("client_hello_sni_evil.hex");
    let no_sni = fixture("client_hello_no_sni.hex");
    for path in BOTH {
        let plan = |port| pinned_plan("allowed.example", port);
        let (recorder, server, rig) = rig_with_server(path, plan, None).await;
        let open = connect("allowed.example", server.port);

        let names_evil = "TLS ClientHello names `evil.example` but the grant is `allowed.example`";
        assert_cut_on_first_bytes(path, &rig, &recorder, &open, &evil, names_evil).await;

        // The same with the hello sent at once behind the request, before the verdict.
        let mut stream = rig.stream().await;
        let mut frame = Vec::new();
        write_frame(&mut frame, &open).await.unwrap();
        stream
            .write_all(&[frame, evil.clone()].concat())
            .await
            .unwrap();
        allowed(answer(&mut stream).await);
        assert!(until_closed(&mut stream).await.is_empty(), "{path:?}");

        let names_none = "TLS ClientHello has no SNI (the grant is `allowed.example`)";
        assert_cut_on_first_bytes(path, &rig, &recorder, &open, &no_sni, names_none).await;

        // The server may have seen the TCP connects, never a byte of the hellos, and
        // each connection was cut.
        wait_until("every refused connection ended", ANSWER_WITHIN, || {
            server.ended() == server.accepted()
        })
        .await;
        assert!(
            server.received().is_empty(),
            "{path:?}: a hello got through"
        );

        // The granted name in the SNI passes, unchanged, both ways.
        let (mut stream, v) = rig.request(&open).await;
        allowed(v);
        echo_through(&mut stream, &good).await;
        assert_eq!(server.received(), good, "{path:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_must_name_the_granted_host_or_the_server_never_sees_the_request() {
    let (recorder, server, rig) = granted_rig(Path::Handed).await;
    let open = request("allowed.test", server.port.into(), EgressVia::ProxyHttp);
    let evil = b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n";
    let refused = format!(
        "HTTP request Host `evil.test` does not match the grant `allowed.test:{}`",
        server.port
    );
    assert_cut_on_first_bytes(Path::Handed, &rig, &recorder, &open, evil, &refused).await;
    assert!(server.received().is_empty(), "the request got through");

    let good = format!(
        "GET / HTTP/1.1\r\nHost: allowed.test:{}\r\n\r\n",
        server.port
    );
    let (mut stream, v) = rig.request(&open).await;
    allowed(v);
    echo_through(&mut stream, good.as_bytes()).await;
    assert_eq!(server.received(), good.as_bytes());
}

// --- 9. Limits -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_past_net_connections_is_denied_until_one_closes() {
    let plan = |port| Plan {
        net_connections: 2,
        ..pinned_plan("allowed.test", port)
    };
    let (recorder, server, rig) = rig_with_server(Path::Handed, plan, None).await;
    let open = connect("allowed.test", server.port);
    let (mut first, v) = rig.request(&open).await;
    allowed(v);
    let (mut second, v) = rig.request(&open).await;
    allowed(v);
    echo_through(&mut first, RAW).await;
    echo_through(&mut second, RAW).await;

    let (_s, v) = rig.request(&open).await;
    let v = denied(
        v,
        &["already has 2 connections open or waiting for an answer (resources.net_connections)"],
    );
    recorder.assert_denial("allowed.test", server.port, &v);
    assert_eq!(server.accepted(), 2, "the third was never dialled");

    // Once one closes (both ways), its place is free again.
    drop(first);
    wait_until("the server saw the close", Duration::from_secs(1), || {
        server.ended() == 1
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut third = loop {
        let (stream, v) = rig.request(&open).await;
        let v = v.expect("an answer");
        if v.verdict == Verdict::Allow as i32 {
            break stream;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's place was not given back: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    echo_through(&mut third, RAW).await;
    echo_through(&mut second, RAW).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn past_net_mib_the_connection_is_cut_and_new_ones_are_denied() {
    let plan = |port| Plan {
        net_mib: 1,
        ..pinned_plan("allowed.test", port)
    };
    let (recorder, server, rig) = rig_with_server(Path::Handed, plan, None).await;
    let open = connect("allowed.test", server.port);
    let (stream, v) = rig.request(&open).await;
    allowed(v);

    // 1.5 MiB out; its echo doubles it, so the 1 MiB limit falls well before the end.
    let sent = 3 << 19;
    let mut payload = vec![7u8; sent];
    payload[0] = 0;
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        // Fails once the host cuts the connection.
        let _ = writer.write_all(&payload).await;
        writer
    });
    let mut back = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(ANSWER_WITHIN, reader.read(&mut buf)).await {
            Err(_) => panic!("the connection was not cut"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => back += n,
        }
    }
    let _writer = write.await.unwrap();
    assert!(back < sent, "all {sent} bytes came back");
    assert!(rig.task().bytes_carried() > 1 << 20);
    let cut = "the session used its 1 MiB of network traffic (resources.net_mib); the connection was closed";
    recorder
        .wait_recorded("deny", "allowed.test", server.port, cut)
        .await;

    let (_s, v) = rig.request(&open).await;
    let v = denied(
        v,
        &["this session used its 1 MiB of network traffic (resources.net_mib)"],
    );
    recorder.assert_denial("allowed.test", server.port, &v);
    assert_eq!(server.accepted(), 1, "the denied one was never dialled");
}

// --- 10. Asks --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_ask_endpoint_follows_the_approvers_answer() {
    // `ask.test` is pinned to the server and only asked for, never granted outright.
    let plan = |port| Plan {
        ask: vec![("ask.test", port)],
        pinned: vec!["ask.test"],
        ..Plan::default()
    };

    let deny = AutoAnswer {
        answer: Answer::Deny,
        approver: "on-ask deny".into(),
    };
    let (recorder, server, rig) = rig_with_server(Path::Handed, plan, Some(deny)).await;
    let open = connect("ask.test", server.port);
    let net = ActionKind::Net {
        host: "ask.test".into(),
        port: server.port,
    };
    let (_s, v) = rig.request(&open).await;
    let v = denied(v, &["denied by on-ask deny (approval ap-"]);
    {
        let asked = recorder.asked.lock().unwrap();
        let [d] = &asked[..] else {
            panic!("{asked:#?}")
        };
        assert!(!d.resolution.approved);
        assert_eq!(d.pending.action.kind, net);
        assert_eq!(
            v.reason,
            format!("{} (approval {})", d.resolution.message, d.resolution.id)
        );
    }
    server.assert_heard_nothing();
    drop(rig);

    let approve = AutoAnswer {
        answer: Answer::Approve(Scope::Once),
        approver: "on-ask allow".into(),
    };
    let (recorder, server, rig) = rig_with_server(Path::Handed, plan, Some(approve)).await;
    let open = connect("ask.test", server.port);
    let (mut stream, v) = rig.request(&open).await;
    let v = allowed(v);
    let id = {
        let asked = recorder.asked.lock().unwrap();
        let [d] = &asked[..] else {
            panic!("{asked:#?}")
        };
        assert!(d.resolution.approved);
        assert_eq!(d.resolution.approver, "on-ask allow");
        d.resolution.id.clone()
    };
    assert_eq!(v.approval_id, id);
    echo_through(&mut stream, RAW).await;
    assert_eq!(*server.grants_on_record_at_accept.lock().unwrap(), vec![1]);
}

// --- 11. The session's end -------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_egress_task_closes_every_spliced_connection() {
    for path in BOTH {
        let (_recorder, server, mut rig) = granted_rig(path).await;
        let open = connect("allowed.test", server.port);
        let mut streams = Vec::new();
        for _ in 0..2 {
            let (mut stream, v) = rig.request(&open).await;
            allowed(v);
            echo_through(&mut stream, RAW).await;
            streams.push(stream);
        }
        assert_eq!(server.ended(), 0);
        let task = rig.task.take().unwrap();
        // Both ways of ending a session: `close`, and dropping the task.
        let kept = match path {
            Path::Handed => {
                drop(task);
                None
            }
            Path::Listener => {
                task.close();
                Some(task)
            }
        };
        wait_until(
            "the server saw every connection close",
            Duration::from_secs(1),
            || server.ended() == 2,
        )
        .await;
        for mut stream in streams {
            assert!(until_closed(&mut stream).await.is_empty(), "{path:?}");
        }
        drop(kept);
    }
}

// --- 12. Garbage -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_garbage_first_frame_is_closed_without_an_answer_and_the_service_keeps_serving() {
    for path in BOTH {
        let (recorder, server, rig) = granted_rig(path).await;
        let frame = |len: u32, body: &[u8]| [&len.to_be_bytes()[..], body].concat();
        let garbage = [
            frame(u32::MAX, b""),
            frame(MAX_FRAME as u32 + 1, &[0; 64]),
            // Not protobuf: a field with wire type 7.
            frame(3, &[0xff, 0xff, 0xff]),
            // A length, then the stream ends before the body.
            frame(100, b"\x0a\x20"),
            b"\x00\x00".to_vec(),
            vec![],
        ];
        for bytes in &garbage {
            let mut stream = rig.stream().await;
            stream.write_all(bytes).await.unwrap();
            // The host may have closed already; our shutdown is only so it sees an end.
            let _ = stream.shutdown().await;
            assert_eq!(answer(&mut stream).await, None, "{path:?}: {bytes:?}");
        }
        assert_eq!(
            rig.log_lines_with("a stream without a valid request"),
            garbage.len(),
            "{path:?}"
        );
        assert_eq!(recorder.decisions(), 0, "{path:?}");
        server.assert_heard_nothing();
        rig.assert_still_grants(server.port).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hand_over_socket_skips_whatever_is_not_one_socket_and_keeps_serving() {
    let (recorder, server, rig) = granted_rig(Path::Handed).await;
    let HostEnd::Handed(control) = &rig.host else {
        unreachable!()
    };
    let pair = || std::os::unix::net::UnixStream::pair().unwrap();
    // A message without a descriptor.
    hand_over(control, &[]);
    // Two sockets at once, and more than the host makes room for: none is served, and
    // each is closed.
    for count in [2, 5] {
        let (ours, theirs): (Vec<_>, Vec<OwnedFd>) = (0..count)
            .map(|_| {
                let (ours, theirs) = pair();
                (ours, theirs.into())
            })
            .unzip();
        hand_over(control, &theirs);
        drop(theirs);
        for ours in ours {
            ours.set_nonblocking(true).unwrap();
            let mut ours = UnixStream::from_std(ours).unwrap();
            assert_eq!(answer(&mut ours).await, None, "{count} at once");
        }
    }
    // A descriptor that is no socket at all.
    hand_over(control, &[std::fs::File::open("/dev/null").unwrap().into()]);

    let (_s, v) = rig.request(&connect("allowed.test", server.port)).await;
    allowed(v);
    assert_eq!(rig.log_lines_with("hand-over socket failed"), 0);
    assert_eq!(
        recorder.grants(),
        recorder.decisions(),
        "only the grant above"
    );
}
