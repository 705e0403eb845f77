//! `airlock serve` as orchestrators use it: the real binary on a real Unix socket,
//! driven by the Rust client and by a Python `grpcio` client generated from `proto/`,
//! each session a real VM.

#[path = "vm_support.rs"]
mod vm_support;

use airlock_launcher::image::{build, Profile};
use airlock_proto::pb::launcher_client::LauncherClient;
use airlock_proto::pb::{
    approval_event, exec_event, exit_status, plan_source, ApprovalEvent, ApprovalMode,
    ApprovalRequest, ApprovalScope, CreateSessionRequest, DestroySessionRequest,
    EvaluatePlanRequest, ExecRequest, GetSessionRequest, ListSessionGrantsRequest, MergeMode,
    Outcome, PlanSource, ResolveApprovalRequest, ResolveApprovalResponse,
    RevokeSessionGrantRequest, WatchApprovalsRequest,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use vm_support::{setup, workspace_root};

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hostile_probe"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A running `airlock serve`, killed on drop.
struct Server {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signals the test's own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    start_server_with(&[])
}

fn start_server_with(extra: &[&str]) -> Server {
    start_server_on(None, extra)
}

/// `airlock serve` on `tcp` (an address; mutual TLS flags in `extra`) or, by default,
/// on a Unix socket in its directory.
fn start_server_on(tcp: Option<std::net::SocketAddr>, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, tools) = setup(dir.path());
    let (image, _) = build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let policy = vm_support::vm_policy_path();
    let socket = dir.path().join("run/launcher.sock");
    let image_json = inputs.out.join("minimal/image.json");
    assert!(std::fs::read_to_string(&image_json)
        .unwrap()
        .contains(&image.image_id));
    let child = Command::new(bin_dir().join("airlock"))
        .arg("serve")
        .arg("--policy")
        .arg(&policy)
        .arg("--listen")
        .arg(match tcp {
            Some(addr) => format!("tcp:{addr}"),
            None => format!("unix:{}", socket.display()),
        })
        .arg("--image")
        .arg(&image_json)
        .arg("--key")
        .arg(dir.path().join("keys/airlock.key"))
        .arg("--tools-dir")
        .arg(tools.vhost_device_vsock.parent().unwrap())
        .arg("--outputs")
        .arg(dir.path().join("outputs"))
        .args(extra)
        .env("XDG_RUNTIME_DIR", dir.path().join("run"))
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let server = Server { child, socket, dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    let listening = || match tcp {
        Some(addr) => std::net::TcpStream::connect(addr).is_ok(),
        None => std::os::unix::net::UnixStream::connect(&server.socket).is_ok(),
    };
    while !listening() {
        assert!(
            Instant::now() < deadline,
            "airlock serve never listened: {}",
            std::fs::read_to_string(server.dir.path().join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

async fn channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://launcher")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

fn toml(text: String) -> Option<PlanSource> {
    Some(PlanSource {
        format: Some(plan_source::Format::Toml(text)),
    })
}

#[tokio::test(flavor = "current_thread")]
async fn the_rust_client_runs_a_session_and_every_call_checks_first() {
    let server = start_server();
    let _one = vm_support::ONE_VM.lock().await;
    let ch = channel(&server.socket).await;
    // By default only the launcher's own uid is admitted, and only it can open the socket.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&server.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // Health and reflection are served next to the Launcher service.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let st = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "airlock.v1.Launcher".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let services = reflected_services(ch.clone()).await;
    assert!(
        services.iter().any(|s| s == "airlock.v1.Launcher"),
        "{services:?}"
    );

    let mut client = LauncherClient::new(ch);
    let work = server.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let plan = format!(
        "command = [\"/bin/sh\"]\n[[mounts]]\nhost = \"{}\"\nguest = \"/work\"\nmode = \"rw\"\n[resources]\nmemory_mib = 128\n",
        work.display()
    );

    // A denied plan: refused with the reason, no session.
    let secret = server.dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let denied = client
        .create_session(CreateSessionRequest {
            plan: toml(format!(
                "command = [\"/bin/sh\"]\n[[mounts]]\nhost = \"{}\"\nguest = \"/s\"\nmode = \"ro\"\n",
                secret.display()
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(denied.message().contains("secret"), "{denied}");
    let eval = client
        .evaluate_plan(EvaluatePlanRequest {
            plan: toml(plan.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(eval.outcome, Outcome::Allowed as i32);

    let created = client
        .create_session(CreateSessionRequest {
            plan: toml(plan),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let sid = created.session_id.clone();
    assert!(created.manifest_digest.starts_with("sha256:"));

    let mut stream = client
        .exec(ExecRequest {
            session_id: sid.clone(),
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo hi; echo out > /work/o; echo x > /work/.envrc; exit 5".into(),
            ],
            // The caller's choice: merge the workspace when this command has exited.
            merge: MergeMode::Apply as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut out, mut code, mut merged) = (Vec::new(), None, None);
    while let Some(ev) = stream.message().await.unwrap() {
        match ev.event.unwrap() {
            exec_event::Event::Stdout(b) => out.extend(b),
            exec_event::Event::Exit(st) => code = st.status,
            exec_event::Event::Merged(m) => merged = Some(m),
            _ => {}
        }
    }
    assert_eq!(out, b"hi\n");
    assert_eq!(code, Some(exit_status::Status::Code(5)));
    let merged = merged.expect("a merged event after exit");
    assert!(merged.error.is_empty() && !merged.dry_run, "{merged:?}");
    assert!(
        merged.summary.contains("merged 1 change") && merged.summary.contains(".envrc"),
        "{merged:?}"
    );
    assert_eq!(std::fs::read_to_string(work.join("o")).unwrap(), "out\n");
    assert!(!work.join(".envrc").exists());
    let report: serde_json::Value = serde_json::from_str(&merged.json).unwrap();
    assert_eq!(report["refused"][0]["path"], ".envrc", "{report}");

    // The host checks the command against the manifest before the guest sees it.
    let refused = client
        .exec(ExecRequest {
            session_id: sid.clone(),
            argv: vec!["/bin/busybox".into(), "true".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("may not run"), "{refused}");
    let unknown = client
        .get_session(GetSessionRequest {
            session_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let done = client
        .destroy_session(DestroySessionRequest {
            session_id: sid.clone(),
            collect: vec!["/work/o".into()],
            merge: MergeMode::DryRun as i32,
        })
        .await
        .unwrap()
        .into_inner();
    // Merged already, so a second merge finds nothing new (unchanged entries skip).
    let again = done.merged.expect("a merge report");
    assert!(again.dry_run && again.error.is_empty(), "{again:?}");
    assert!(
        again.summary.starts_with("would merge no changes"),
        "{again:?}"
    );
    assert_eq!(done.collected.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&done.collected[0].host_path).unwrap(),
        "out\n"
    );
    assert!(Path::new(&done.collected[0].host_path).starts_with(server.dir.path().join("outputs")));
    let vms = server.dir.path().join("run/airlock/vms");
    let left = || -> Vec<_> {
        std::fs::read_dir(&vms)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    assert!(left().is_empty(), "VM directories left: {:?}", left());

    // A session nobody destroys is destroyed when its wall time runs out.
    let short = client
        .create_session(CreateSessionRequest {
            plan: toml(
                "command = [\"/bin/sh\"]\n[resources]\nmemory_mib = 128\nwall_time_secs = 2\n"
                    .into(),
            ),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(left().len(), 1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let gone = client
        .get_session(GetSessionRequest {
            session_id: short.session_id,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert!(
        left().is_empty(),
        "the expired session's VM is still there: {:?}",
        left()
    );
}

/// The services a reflection client of version `$v` (`v1`, `v1alpha`: the same
/// messages in two packages) is told about.
macro_rules! reflected_services {
    ($v:ident, $ch:expr) => {{
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        let mut client = ServerReflectionClient::new($ch);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = client
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let mut names: Vec<String> = Vec::new();
        while let Some(r) = resp.message().await.unwrap() {
            if let Some(MessageResponse::ListServicesResponse(l)) = r.message_response {
                names.extend(l.service.into_iter().map(|s| s.name));
            }
        }
        names
    }};
}

async fn reflected_services(ch: Channel) -> Vec<String> {
    reflected_services!(v1, ch)
}

async fn reflected_services_v1alpha(ch: Channel) -> Vec<String> {
    reflected_services!(v1alpha, ch)
}

/// An orchestration stack in another language: Python's grpcio, with stubs generated
/// from `proto/` now, drives a whole session (see `tests/clients/launcher_client.py`).
#[tokio::test(flavor = "current_thread")]
async fn a_python_grpcio_client_drives_a_session() {
    let python = workspace_root().join("target/airlock-cache/py/bin/python");
    vm_support::require_present(&[&python]);
    let server = start_server();
    let _one = vm_support::ONE_VM.lock().await;
    let stubs = server.dir.path().join("stubs");
    std::fs::create_dir(&stubs).unwrap();
    let proto = workspace_root().join("proto/proto");
    let mut gen = Command::new(&python);
    gen.args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()));
    for f in ["common", "launcher", "enforcer", "host"] {
        gen.arg(proto.join(format!("airlock/v1/{f}.proto")));
    }
    let st = gen.status().unwrap();
    assert!(st.success(), "grpc_tools.protoc failed");
    let work = server.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = tokio::task::spawn_blocking({
        let (python, stubs, socket) = (python.clone(), stubs.clone(), server.socket.clone());
        move || {
            Command::new(python)
                .arg(workspace_root().join("tests/clients/launcher_client.py"))
                .arg(stubs)
                .arg(socket)
                .arg(work)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("python client: ok"), "{stdout}\n{stderr}");
}

/// Runs `argv` in session `sid` with `stdin`; (stdout, stderr, exit code).
async fn exec_collect(
    client: &mut LauncherClient<Channel>,
    sid: &str,
    argv: &[&str],
    stdin: &[u8],
) -> (String, String, Option<exit_status::Status>) {
    let mut stream = client
        .exec(ExecRequest {
            session_id: sid.into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            stdin: stdin.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .into_inner();
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(ev) = stream.message().await.unwrap() {
        match ev.event.unwrap() {
            exec_event::Event::Stdout(b) => out.extend(b),
            exec_event::Event::Stderr(b) => err.extend(b),
            exec_event::Event::Exit(st) => code = st.status,
            _ => {}
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        code,
    )
}

/// The next event of `events` that is a pending ask.
async fn next_pending(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<ApprovalEvent>,
) -> ApprovalRequest {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await
            .expect("an ask within 120 s")
            .expect("the watch stream is open");
        if let Some(approval_event::Event::Pending(p)) = ev.event {
            return p;
        }
    }
}

/// Answers `id` as `ops`.
async fn answer(
    client: &mut LauncherClient<Channel>,
    id: &str,
    approve: bool,
    scope: ApprovalScope,
    comment: &str,
) -> Result<ResolveApprovalResponse, tonic::Status> {
    client
        .resolve_approval(ResolveApprovalRequest {
            approval_id: id.into(),
            approve,
            approver: "ops".into(),
            comment: comment.into(),
            scope: scope as i32,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "current_thread")]
async fn asks_wait_for_resolve_approval_bound_to_the_action_and_scoped() {
    let server = start_server_with(&["--ask-timeout", "90s", "--approvals-http", "127.0.0.1:0"]);
    // The approvals page's address, with its token, is printed at start; the token
    // lets a browser in (a cookie and a redirect), nothing else does.
    let log = std::fs::read_to_string(server.dir.path().join("serve.log")).unwrap();
    let url = log
        .lines()
        .find_map(|l| l.strip_prefix("airlock: approvals page: "))
        .unwrap_or_else(|| panic!("no approvals page address in:\n{log}"))
        .to_string();
    let (hostport, query) = url
        .strip_prefix("http://")
        .and_then(|u| u.split_once('/'))
        .unwrap();
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(hostport).unwrap();
        write!(
            c,
            "GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        reply
    };
    let signed_in = get(query);
    assert!(signed_in.starts_with("HTTP/1.1 303"), "{signed_in}");
    assert!(
        signed_in.contains("HttpOnly; SameSite=Strict"),
        "{signed_in}"
    );
    assert!(get("").starts_with("HTTP/1.1 401"));
    assert!(get("?token=wrong").starts_with("HTTP/1.1 401"));
    let _one = vm_support::ONE_VM.lock().await;
    let ch = channel(&server.socket).await;
    let mut client = LauncherClient::new(ch.clone());
    // A watcher for every session, from before the first ask.
    let mut watch = LauncherClient::new(ch.clone())
        .watch_approvals(WatchApprovalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(ev)) = watch.message().await {
            let _ = tx.send(ev);
        }
    });
    let share = server.dir.path().join("approvals-upfront");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("note"), "after a yes\n").unwrap();
    let plan = format!(
        "command = [\"/bin/sh\"]\ntools = [\"wc\"]\n[[mounts]]\nhost = \"{}\"\nguest = \"/shared\"\nmode = \"ro\"\n[resources]\nmemory_mib = 128\n",
        share.display()
    );

    // Without WAIT_FOR_APPROVER, an up-front ask is refused at once.
    let refused = client
        .create_session(CreateSessionRequest {
            plan: toml(plan.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("refused without asking"),
        "{refused}"
    );

    // `airlock approvals watch`, as a person next to the server would run it.
    let connect = format!("unix:{}", server.socket.display());
    let mut watched = CliWatch::start(&connect);

    // With it, CreateSession waits for the answer.
    let creating = {
        let mut c = client.clone();
        let plan = plan.clone();
        tokio::spawn(async move {
            c.create_session(CreateSessionRequest {
                plan: toml(plan),
                approval_mode: ApprovalMode::WaitForApprover as i32,
                ..Default::default()
            })
            .await
        })
    };
    let up_front = next_pending(&mut events).await;
    assert_eq!(up_front.kind, "capability");
    let cap = up_front.capability.clone().unwrap();
    assert_eq!(cap.rule_id, "upfront-dir");
    assert!(cap.capability.contains("approvals-upfront"), "{cap:?}");
    assert!(up_front.expires_at_unix_millis > up_front.requested_at_unix_millis);
    // The CLI client sees it too, and answers it.
    let line = watched.next_line().await;
    let seen: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(seen["event"], "pending", "{seen}");
    assert_eq!(seen["id"], up_front.approval_id.as_str());
    assert_eq!(seen["rule_id"], "upfront-dir");
    let yes = Command::new(bin_dir().join("airlock"))
        .args(["approvals", "resolve", &up_front.approval_id, "--approve"])
        .args(["--approver", "ops", "--connect", &connect])
        .output()
        .unwrap();
    assert_eq!(
        yes.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&yes.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&yes.stdout).trim(),
        "approved by ops"
    );
    // The record keeps both the name the approver gave and who the server saw.
    let records = audit_records(&server, &up_front.session_id);
    let answer_record = records
        .iter()
        .find(|r| r["approval_id"] == up_front.approval_id.as_str())
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(answer_record["approver"], "ops", "{answer_record}");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = format!("uid {} ", unsafe { libc::geteuid() });
    assert!(
        answer_record["caller"]
            .as_str()
            .is_some_and(|c| c.starts_with(&me)),
        "{answer_record}"
    );
    // A second answer is refused, and changes nothing.
    let second = answer(
        &mut client,
        &up_front.approval_id,
        false,
        ApprovalScope::Once,
        "",
    )
    .await
    .unwrap_err();
    let again = Command::new(bin_dir().join("airlock"))
        .args(["approvals", "resolve", &up_front.approval_id, "--deny"])
        .args(["--connect", &connect])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already decided"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let line = watched.next_line().await;
    assert!(
        line.contains("\"event\":\"resolved\"") && line.contains("ops"),
        "{line}"
    );
    drop(watched);
    assert_eq!(second.code(), tonic::Code::FailedPrecondition);
    assert!(second.message().contains("already decided"), "{second}");
    let created = creating
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let sid = created.session_id;
    assert_eq!(up_front.session_id, sid);
    let (out, _, _) = exec_collect(
        &mut client,
        &sid,
        &["/bin/sh", "-c", "cat /shared/note"],
        b"",
    )
    .await;
    assert_eq!(out, "after a yes\n");

    // A run-time ask shows the exact action; a `session` answer covers the same
    // action later, not another one.
    let mut runner = client.clone();
    let (asked, shown) = tokio::join!(
        exec_collect(&mut runner, &sid, &["wc", "-l"], b"a\nb\n"),
        async {
            let p = next_pending(&mut events).await;
            answer(
                &mut client.clone(),
                &p.approval_id,
                true,
                ApprovalScope::Session,
                "",
            )
            .await
            .unwrap();
            p
        }
    );
    assert_eq!(asked.0.trim(), "2", "{asked:?}");
    assert_eq!(asked.2, Some(exit_status::Status::Code(0)));
    assert_eq!(
        (shown.kind.as_str(), shown.program.as_str()),
        ("tool", "wc")
    );
    assert_eq!(shown.argv, ["wc", "-l"]);
    assert_eq!(shown.binary_sha256.len(), 64, "{shown:?}");
    assert!(!shown.cwd.is_empty(), "{shown:?}");
    assert_eq!(shown.capability.as_ref().unwrap().rule_id, "wc-asks");
    let covered = exec_collect(&mut client, &sid, &["wc", "-l"], b"x\n").await;
    assert_eq!(
        covered.0.trim(),
        "1",
        "the session grant covered it: {covered:?}"
    );
    let grants = client
        .list_session_grants(ListSessionGrantsRequest {
            session_id: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].digest, shown.digest);
    assert_eq!(grants[0].approver, "ops");
    // One argument differs: asked again; denied with a comment the agent reads.
    let (denied, _) = tokio::join!(
        exec_collect(&mut runner, &sid, &["wc", "-c"], b"abc"),
        async {
            let p = next_pending(&mut events).await;
            assert_eq!(p.argv, ["wc", "-c"]);
            answer(
                &mut client.clone(),
                &p.approval_id,
                false,
                ApprovalScope::Once,
                "count lines instead",
            )
            .await
            .unwrap();
        }
    );
    assert_eq!(denied.2, Some(exit_status::Status::Code(126)), "{denied:?}");
    assert!(
        denied.1.contains("denied by ops: count lines instead"),
        "{denied:?}"
    );
    // Revoked: the same action waits for an answer again.
    let revoked = client
        .revoke_session_grant(RevokeSessionGrantRequest {
            session_id: sid.clone(),
            digest: shown.digest.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    // Destroying the session denies what it has waiting.
    let pending_exec = {
        let mut c = client.clone();
        let sid = sid.clone();
        tokio::spawn(async move { exec_collect(&mut c, &sid, &["wc", "-l"], b"").await })
    };
    let p = next_pending(&mut events).await;
    assert_eq!(p.argv, ["wc", "-l"]);
    client
        .destroy_session(DestroySessionRequest {
            session_id: sid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = pending_exec.await;
    let ended = loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .unwrap()
            .unwrap();
        if let Some(approval_event::Event::Resolved(r)) = ev.event {
            if r.approval_id == p.approval_id {
                break r;
            }
        }
    };
    assert!(
        !ended.approved && ended.approver == "session ended",
        "{ended:?}"
    );
    let late = answer(&mut client, &p.approval_id, true, ApprovalScope::Once, "")
        .await
        .unwrap_err();
    assert_eq!(late.code(), tonic::Code::FailedPrecondition);
}

/// `airlock approvals watch --json` in a child process; its lines, one at a time.
struct CliWatch {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl CliWatch {
    fn start(connect: &str) -> CliWatch {
        let mut child = Command::new(bin_dir().join("airlock"))
            .args(["approvals", "watch", "--json", "--connect", connect])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        CliWatch { child, lines }
    }

    async fn next_line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), self.lines.recv())
            .await
            .expect("a line from `airlock approvals watch` within 60 s")
            .expect("`airlock approvals watch` is still running")
    }
}

impl Drop for CliWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to `socket` with the credentials `uid`, `gid` and `groups`, taken by a
/// thread of its own for the `connect` (the kernel records the peer's credentials
/// then, for `SO_PEERCRED` and `SO_PEERGROUPS`); returns a channel over that stream.
async fn channel_as(socket: &Path, uid: u32, gid: u32, groups: &[u32]) -> Channel {
    let (path, groups) = (socket.to_path_buf(), groups.to_vec());
    let stream = std::thread::spawn(move || {
        // SAFETY: raw system calls change only the calling thread's credentials (the
        // libc wrappers would change every thread's); `groups` outlives the call, and
        // this thread ends right after the connect.
        let failed = unsafe {
            libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        };
        assert!(
            !failed,
            "taking uid {uid}: {}",
            std::io::Error::last_os_error()
        );
        std::os::unix::net::UnixStream::connect(&path)
    })
    .join()
    .unwrap()
    .unwrap_or_else(|e| panic!("uid {uid} connecting to {}: {e}", socket.display()));
    stream.set_nonblocking(true).unwrap();
    let once = std::sync::Mutex::new(Some(stream));
    let once = std::sync::Arc::new(once);
    tonic::transport::Endpoint::from_static("http://launcher")
        .connect_with_connector(tower::service_fn(move |_| {
            let taken = once.lock().unwrap().take();
            async move {
                let s = taken.ok_or_else(|| std::io::Error::other("one connection only"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::from_std(s)?,
                ))
            }
        }))
        .await
        .unwrap()
}

fn small_plan() -> Option<PlanSource> {
    toml("command = [\"/bin/sh\"]\n[resources]\nmemory_mib = 128\n".into())
}

async fn exec_exit(client: &mut LauncherClient<Channel>, sid: &str) -> Result<i32, tonic::Status> {
    let mut stream = client
        .exec(ExecRequest {
            session_id: sid.into(),
            argv: vec!["/bin/sh".into(), "-c".into(), "exit 3".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut code = None;
    while let Some(ev) = stream.message().await? {
        if let Some(exec_event::Event::Exit(st)) = ev.event {
            if let Some(exit_status::Status::Code(c)) = st.status {
                code = Some(c);
            }
        }
    }
    Ok(code.expect("an exit event"))
}

/// The audit records of `session`, as JSON.
fn audit_records(server: &Server, session: &str) -> Vec<serde_json::Value> {
    let log = server.dir.path().join("state/airlock/audit.jsonl");
    std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["session_id"] == session)
        .collect()
}

/// Someone else's session is unknown to a caller: every call on it says so.
async fn assert_cannot_reach(client: &mut LauncherClient<Channel>, sid: &str, who: &str) {
    let e = client
        .get_session(GetSessionRequest {
            session_id: sid.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{who}: {e}");
    let e = exec_exit(client, sid).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{who} exec: {e}");
    let e = client
        .destroy_session(DestroySessionRequest {
            session_id: sid.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{who} destroy: {e}");
    let e = client
        .watch_approvals(WatchApprovalsRequest {
            session_id: sid.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{who} watch: {e}");
    let e = client
        .list_session_grants(ListSessionGrantsRequest {
            session_id: sid.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{who} grants: {e}");
}

/// The Unix socket admits by the kernel's record of the peer (uid, gid, supplementary
/// groups), never by anything the caller sends; a session belongs to its creator.
#[tokio::test(flavor = "current_thread")]
async fn the_unix_socket_admits_by_peer_credentials_and_sessions_belong_to_their_creator() {
    use std::os::unix::fs::PermissionsExt;
    const TEAM: u32 = 4242;
    let server = start_server_with(&["--allow-gid", "4242"]);
    let _one = vm_support::ONE_VM.lock().await;
    // Others are admitted, so others must reach the socket: SO_PEERCRED decides.
    // (The socket's directories are the test's to open up, as they are an operator's.)
    for d in [server.dir.path(), server.socket.parent().unwrap()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mode = std::fs::metadata(&server.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666, "a shared socket: {mode:o}");

    // Not in the group: refused, with what would admit it.
    let mut stranger = LauncherClient::new(channel_as(&server.socket, 65534, 65534, &[]).await);
    let e = stranger
        .evaluate_plan(EvaluatePlanRequest { plan: small_plan() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("uid 65534") && e.message().contains("--allow-uid 65534"),
        "{e}"
    );
    // Health is behind the same check.
    let e = tonic_health::pb::health_client::HealthClient::new(
        channel_as(&server.socket, 65534, 65534, &[]).await,
    )
    .check(tonic_health::pb::HealthCheckRequest::default())
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    // A member by a supplementary group (SO_PEERGROUPS) creates a session.
    let mut alice = LauncherClient::new(channel_as(&server.socket, 65534, 65534, &[TEAM]).await);
    let created = alice
        .create_session(CreateSessionRequest {
            plan: small_plan(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let sid = created.session_id;
    let info = alice
        .get_session(GetSessionRequest {
            session_id: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.owner, "uid:65534");

    // Another member of the group does not see it.
    let mut bob = LauncherClient::new(channel_as(&server.socket, 65533, TEAM, &[]).await);
    assert_cannot_reach(&mut bob, &sid, "another admitted uid").await;

    // The launcher's own uid is the operator: it sees every session.
    let mut operator = LauncherClient::new(channel(&server.socket).await);
    let seen = operator
        .get_session(GetSessionRequest {
            session_id: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.owner, "uid:65534");

    assert_eq!(exec_exit(&mut alice, &sid).await.unwrap(), 3);
    alice
        .destroy_session(DestroySessionRequest {
            session_id: sid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Every call on the session is on the audit log with who made it.
    let records = audit_records(&server, &sid);
    let by = |cap: &str| {
        records
            .iter()
            .find(|r| r["capability"].as_str().is_some_and(|c| c.starts_with(cap)))
            .unwrap_or_else(|| panic!("no `{cap}` record: {records:#?}"))
    };
    for cap in ["api exec /bin/sh -c 'exit 3'", "api destroy"] {
        let r = by(cap);
        assert!(
            r["caller"]
                .as_str()
                .unwrap()
                .starts_with("uid 65534 gid 65534"),
            "{r}"
        );
    }
    let plan_records: Vec<_> = records.iter().filter(|r| r["phase"] == "plan").collect();
    assert!(!plan_records.is_empty(), "{records:#?}");
    assert!(
        plan_records.iter().all(|r| r["caller"]
            .as_str()
            .is_some_and(|c| c.starts_with("uid 65534"))),
        "{plan_records:#?}"
    );
}

/// Writes a CA and certificates signed by it with `openssl`.
struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    fn new(dir: &Path) -> TestPki {
        let pki = TestPki {
            dir: dir.join("pki"),
        };
        std::fs::create_dir_all(&pki.dir).unwrap();
        pki.ca("ca");
        pki.ca("rogue-ca");
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl runs (make deps installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        let subj = format!("/CN={name}");
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &subj,
        ]);
    }

    /// A certificate for `cn` from `ca`; `san` for a server.
    fn issue(&self, ca: &str, cn: &str, san: Option<&str>) -> (PathBuf, PathBuf) {
        let subj = format!("/CN={cn}");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{cn}.key"),
            "-out",
            &format!("{cn}.csr"),
            "-subj",
            &subj,
        ]);
        let ext = self.dir.join(format!("{cn}.ext"));
        std::fs::write(
            &ext,
            match san {
                Some(san) => format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n"),
                None => "extendedKeyUsage=clientAuth\n".into(),
            },
        )
        .unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{cn}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{cn}.pem"),
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
        ]);
        (
            self.dir.join(format!("{cn}.pem")),
            self.dir.join(format!("{cn}.key")),
        )
    }

    fn client(&self, ca: &str, cn: &str) -> airlock_launcher::api_access::ClientTlsFiles {
        let (cert, key) = self.issue(ca, cn, None);
        airlock_launcher::api_access::ClientTlsFiles {
            cert,
            key,
            server_ca: self.dir.join("ca.pem"),
        }
    }
}

fn free_loopback_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// TCP is mutual TLS or nothing: no client certificate, one from another CA, or plain
/// HTTP/2 get no answer; a certificate's CN names the caller, who owns its sessions.
#[tokio::test(flavor = "current_thread")]
async fn tcp_is_served_with_mutual_tls_only_and_the_certificate_names_the_caller() {
    use airlock_launcher::server::{connect, Listen};
    // Refused before anything starts when the TLS files are missing.
    let out = Command::new(bin_dir().join("airlock"))
        .args(["serve", "--policy"])
        .arg(vm_support::vm_policy_path())
        .args(["--listen", "tcp:127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mutual TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pki_dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(pki_dir.path());
    let (server_cert, server_key) = pki.issue("ca", "launcher", Some("IP:127.0.0.1"));
    let addr = free_loopback_port();
    let ca = pki.dir.join("ca.pem");
    let server = start_server_on(
        Some(addr),
        &[
            "--tls-cert",
            server_cert.to_str().unwrap(),
            "--tls-key",
            server_key.to_str().unwrap(),
            "--tls-client-ca",
            ca.to_str().unwrap(),
            "--operator-cn",
            "ops",
        ],
    );
    let _one = vm_support::ONE_VM.lock().await;
    let listen = Listen::Tcp(addr);

    // Without a client certificate, with one from another CA, or in plain text: no call
    // gets through.
    let no_cert = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(&ca).unwrap()),
    );
    let anonymous = async {
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(no_cert)
            .unwrap()
            .connect()
            .await?;
        LauncherClient::new(ch)
            .evaluate_plan(EvaluatePlanRequest { plan: small_plan() })
            .await
            .map_err(|e| -> Box<dyn std::error::Error> { e.into() })?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    assert!(
        anonymous.await.is_err(),
        "a client without a certificate got an answer"
    );
    let rogue = pki.client("rogue-ca", "rogue");
    if let Ok(ch) = connect(&listen, Some(&rogue)).await {
        let e = LauncherClient::new(ch)
            .evaluate_plan(EvaluatePlanRequest { plan: small_plan() })
            .await
            .unwrap_err();
        assert_ne!(e.code(), tonic::Code::Ok);
    }
    if let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
    {
        LauncherClient::new(ch)
            .evaluate_plan(EvaluatePlanRequest { plan: small_plan() })
            .await
            .expect_err("plain HTTP/2 got an answer");
    }

    let orchestrator = connect(&listen, Some(&pki.client("ca", "orchestrator")))
        .await
        .unwrap();
    // Reflection answers in both versions older and newer clients speak.
    let services = reflected_services(orchestrator.clone()).await;
    assert!(
        services.iter().any(|s| s == "airlock.v1.Launcher"),
        "{services:?}"
    );
    let services = reflected_services_v1alpha(orchestrator.clone()).await;
    assert!(
        services.iter().any(|s| s == "airlock.v1.Launcher"),
        "{services:?}"
    );

    let mut orchestrator = LauncherClient::new(orchestrator);
    let sid = orchestrator
        .create_session(CreateSessionRequest {
            plan: small_plan(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .session_id;
    let mut other = LauncherClient::new(
        connect(&listen, Some(&pki.client("ca", "other-team")))
            .await
            .unwrap(),
    );
    assert_cannot_reach(&mut other, &sid, "cn:other-team").await;
    let mut ops = LauncherClient::new(
        connect(&listen, Some(&pki.client("ca", "ops")))
            .await
            .unwrap(),
    );
    let info = ops
        .get_session(GetSessionRequest {
            session_id: sid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.owner, "cn:orchestrator");
    assert_eq!(exec_exit(&mut orchestrator, &sid).await.unwrap(), 3);
    orchestrator
        .destroy_session(DestroySessionRequest {
            session_id: sid.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let records = audit_records(&server, &sid);
    let destroy = records
        .iter()
        .find(|r| r["capability"] == "api destroy")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert!(
        destroy["caller"]
            .as_str()
            .unwrap()
            .starts_with("certificate CN=orchestrator (sha256:"),
        "{destroy}"
    );
}
