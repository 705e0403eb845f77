//! Commands whose input streams while they run (`Session::exec_interactive`, the
//! `ExecInteractive` RPCs), on pipes and on a terminal, in real QEMU/TCG guests.

#[path = "vm_support.rs"]
mod vm_support;

use airlock_launcher::image::{build, ImageDescriptor, Profile};
use airlock_launcher::launcher::{
    ExecEnd, ExecOutput, ExecSpec, ExecStream, Launcher, Session, WindowSize,
};
use airlock_launcher::plan::Plan;
use std::time::Duration;
use vm_support::{setup, ONE_VM};

struct Fixture {
    _dir: tempfile::TempDir,
    launcher: Launcher,
}

/// A launcher over a freshly built minimal image (panics naming a missing tool).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, tools) = setup(dir.path());
    let (image, _): (ImageDescriptor, bool) =
        build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let launcher = vm_support::qemu_launcher(dir.path(), image, vm_support::vm_policy(), tools);
    Fixture {
        _dir: dir,
        launcher,
    }
}

async fn session(fx: &Fixture, entrypoint: &str) -> Session {
    let text = format!("command = [\"{entrypoint}\"]\n[resources]\nmemory_mib = 128\n");
    let plan = Plan::parse("plan.toml", &text, false).unwrap_or_else(|e| panic!("{e}"));
    fx.launcher
        .create_session(&plan)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn argv(args: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

/// Reads `stream` until its stdout so far contains `want` (panics at its end or after
/// 60 s); returns the stdout so far.
async fn read_until(stream: &mut ExecStream, out: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !out.contains(want) {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within 60 s; stdout so far: {out:?}"));
        let ev = match next {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => panic!("{e}"),
            None => panic!("the stream ended before {want:?}; stdout: {out:?}"),
        };
        match ev {
            ExecOutput::Stdout(b) => out.push_str(&String::from_utf8_lossy(&b)),
            ExecOutput::Stderr(b) => panic!("stderr: {}", String::from_utf8_lossy(&b)),
            ExecOutput::Started(_) => {}
            ExecOutput::Ended(end) => panic!("ended ({end:?}) before {want:?}; stdout: {out:?}"),
        }
    }
}

/// Reads `stream` to its end; (how it ended, the stdout that came).
async fn read_to_end(stream: &mut ExecStream, out: &mut String) -> ExecEnd {
    loop {
        match stream.next().await.expect("an exit event").unwrap() {
            ExecOutput::Stdout(b) => out.push_str(&String::from_utf8_lossy(&b)),
            ExecOutput::Ended(end) => return end,
            _ => {}
        }
    }
}

/// `cat` echoes a line before the next one is sent: the input streams, it is not
/// gathered up front; end of file ends it.
#[tokio::test(flavor = "current_thread")]
async fn cat_reads_each_line_as_it_is_sent_and_ends_at_eof() {
    let fx = fixture();
    let _one = ONE_VM.lock().await;
    let mut s = session(&fx, "/bin/cat").await;
    let (mut input, mut stream) = s
        .exec_interactive(argv(&["/bin/cat"]), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    assert!(input.stdin(b"one\n").await);
    read_until(&mut stream, &mut out, "one\n").await;
    assert_eq!(out, "one\n");
    assert!(input.stdin(b"two\n").await);
    assert!(input.eof().await);
    let end = read_to_end(&mut stream, &mut out).await;
    assert_eq!((end, out.as_str()), (ExecEnd::Exited(0), "one\ntwo\n"));
    // The command is over: its input stream closes (what is sent before the close
    // reaches no one).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while input.stdin(b"late\n").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "input still taken 10 s after the exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.destroy().await.unwrap();
}

/// On a tty: the terminal has the size the start asked for, follows a resize (the
/// shell's `stty` reads it again), takes typed input, is the command's controlling
/// terminal (`/dev/tty` opens it, a typed ^C interrupts it), and `test -t` sees a
/// terminal; without a tty it sees a pipe.
#[tokio::test(flavor = "current_thread")]
async fn a_tty_command_gets_a_sized_terminal_that_follows_resizes() {
    let fx = fixture();
    let _one = ONE_VM.lock().await;
    let mut s = session(&fx, "/bin/sh").await;
    let script = "stty size; read x; echo got:$x; stty size";
    let (mut input, mut stream) = s
        .exec_interactive(
            argv(&["/bin/sh", "-c", script]),
            Some(WindowSize {
                rows: 33,
                cols: 101,
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    read_until(&mut stream, &mut out, "33 101").await;
    assert!(
        input
            .resize(WindowSize {
                rows: 40,
                cols: 120,
            })
            .await
    );
    assert!(input.stdin(b"hello\r").await);
    read_until(&mut stream, &mut out, "got:hello").await;
    let end = read_to_end(&mut stream, &mut out).await;
    assert_eq!(end, ExecEnd::Exited(0), "{out:?}");
    // A terminal's output: one stream, lines ending in CR LF.
    assert!(out.contains("got:hello\r\n40 120\r\n"), "{out:?}");

    // The terminal is the command's controlling one: /dev/tty opens it, and ^C typed
    // into it interrupts the foreground group.
    let script = "echo via-dev-tty > /dev/tty; echo ready; sleep 600";
    let (mut input, mut stream) = s
        .exec_interactive(
            argv(&["/bin/sh", "-c", script]),
            Some(WindowSize::default()),
        )
        .await
        .unwrap();
    let mut out = String::new();
    read_until(&mut stream, &mut out, "ready").await;
    assert!(out.starts_with("via-dev-tty\r\n"), "{out:?}");
    assert!(input.stdin(b"\x03").await);
    let end = read_to_end(&mut stream, &mut out).await;
    assert_eq!(end, ExecEnd::Signaled(libc::SIGINT), "{out:?}");

    let is_tty = "test -t 0 && test -t 1 && echo tty || echo not-a-tty";
    let (input, mut stream) = s
        .exec_interactive(
            argv(&["/bin/sh", "-c", is_tty]),
            Some(WindowSize::default()),
        )
        .await
        .unwrap();
    drop(input);
    let mut out = String::new();
    let end = read_to_end(&mut stream, &mut out).await;
    assert_eq!((end, out.as_str()), (ExecEnd::Exited(0), "tty\r\n"));
    let (end, out, _) = vm_support::run_captured(&mut s, argv(&["/bin/sh", "-c", is_tty])).await;
    assert_eq!(
        (end.unwrap(), out.as_str()),
        (ExecEnd::Exited(0), "not-a-tty\n")
    );
    s.destroy().await.unwrap();
}

/// Every API call on a session, as the audit log would get it; refuses them all while
/// `refuse` is set (a full disk).
#[derive(Default)]
struct Calls {
    calls: std::sync::Mutex<Vec<String>>,
    refuse: std::sync::atomic::AtomicBool,
}

impl airlock_launcher::approval_broker::DecisionRecorder for Calls {
    fn record(&self, _: &airlock_launcher::approval_broker::Decided) -> Result<(), String> {
        Ok(())
    }

    fn record_call(&self, c: &airlock_launcher::approval_broker::ApiCall) -> Result<(), String> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the disk is full".into());
        }
        self.calls.lock().unwrap().push(c.call.clone());
        Ok(())
    }
}

async fn unix_channel(socket: &std::path::Path) -> tonic::transport::Channel {
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

/// `Launcher.ExecInteractive` over the API: the first message must be `start`; the
/// start is checked against the manifest and put on the audit log before anything
/// runs (and refused when it cannot be); then stdin streams, and the client
/// half-closing its stream is end of file. With `tty` the command gets a terminal
/// (echo, ^D as end of file) and resizes pass through.
#[tokio::test(flavor = "current_thread")]
async fn the_api_streams_input_after_the_checks_exec_makes() {
    use airlock_launcher::approval_broker::{Answer, ApprovalBroker, AutoAnswer};
    use airlock_launcher::server::{serve, ApiAccess, LauncherService, Listen};
    use airlock_proto::pb::launcher_client::LauncherClient;
    use airlock_proto::pb::{
        exec_event, exec_input, exit_status, plan_source, CreateSessionRequest,
        DestroySessionRequest, ExecInput, ExecRequest, PlanSource,
    };
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let (inputs, tools) = setup(dir.path());
    let (image, _) = build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let calls = Arc::new(Calls::default());
    let approvals = ApprovalBroker::configured(
        Duration::from_secs(60),
        Some(AutoAnswer {
            answer: Answer::Deny,
            approver: "--on-ask deny".into(),
        }),
        Some(calls.clone()),
    );
    let launcher = vm_support::qemu_launcher_with(
        dir.path(),
        image,
        vm_support::vm_policy(),
        tools,
        approvals,
    );
    let _one = ONE_VM.lock().await;
    let socket = dir.path().join("run/launcher.sock");
    let service = LauncherService::new(Arc::new(launcher), dir.path().join("outputs"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listen = Listen::Unix(socket.clone());
    let server = tokio::spawn(async move {
        serve(service, &listen, ApiAccess::default(), || {}, async {
            let _ = stopped.await;
        })
        .await
    });
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            !server.is_finished(),
            "the server stopped: {:?}",
            server.await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = LauncherClient::new(unix_channel(&socket).await);
    let sid = client
        .create_session(CreateSessionRequest {
            plan: Some(PlanSource {
                format: Some(plan_source::Format::Toml(
                    "command = [\"/bin/cat\"]\n[resources]\nmemory_mib = 128\n".into(),
                )),
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner()
        .session_id;
    let input = |i: exec_input::Input| ExecInput { input: Some(i) };
    let start = |argv: &[&str], stdin: &[u8]| {
        input(exec_input::Input::Start(ExecRequest {
            session_id: sid.clone(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            stdin: stdin.to_vec(),
            ..Default::default()
        }))
    };
    let open = |first: Vec<ExecInput>| {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        for m in first {
            tx.try_send(m).unwrap();
        }
        (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
    };

    // Input before the start: refused, nothing runs.
    let (_tx, rx) = open(vec![input(exec_input::Input::Stdin(b"x".to_vec()))]);
    let e = client.exec_interactive(rx).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // A program the manifest does not grant: refused on the host.
    let (_tx, rx) = open(vec![start(&["/bin/busybox", "true"], b"")]);
    let e = client.exec_interactive(rx).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // A call that cannot go on the audit log does not happen.
    calls.refuse.store(true, Ordering::SeqCst);
    let (_tx, rx) = open(vec![start(&["/bin/cat"], b"")]);
    let e = client.exec_interactive(rx).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(e.message().contains("audit log"), "{e}");
    calls.refuse.store(false, Ordering::SeqCst);

    // The start's stdin comes first; each line is echoed before the next is sent.
    let (tx, rx) = open(vec![start(&["/bin/cat"], b"zero\n")]);
    let mut events = client.exec_interactive(rx).await.unwrap().into_inner();
    let mut out = Vec::new();
    let mut read_until = async |want: &[u8], out: &mut Vec<u8>| {
        while !out.ends_with(want) {
            match events.message().await.unwrap().expect("an event").event {
                Some(exec_event::Event::Stdout(b)) => out.extend(b),
                Some(exec_event::Event::Started(_)) => {}
                other => panic!("{other:?} before {want:?}"),
            }
        }
    };
    read_until(b"zero\n", &mut out).await;
    tx.send(input(exec_input::Input::Stdin(b"one\n".to_vec())))
        .await
        .unwrap();
    read_until(b"one\n", &mut out).await;
    // Half-closing the stream is end of file.
    drop(tx);
    let mut code = None;
    while let Some(ev) = events.message().await.unwrap() {
        match ev.event {
            Some(exec_event::Event::Stdout(b)) => out.extend(b),
            Some(exec_event::Event::Exit(st)) => code = st.status,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(out, b"zero\none\n");
    assert_eq!(code, Some(exit_status::Status::Code(0)));
    assert_eq!(
        *calls.calls.lock().unwrap(),
        vec![
            "exec (stdin streamed) /bin/busybox true",
            "exec (stdin streamed) /bin/cat"
        ],
        "every start on record, the refused one too; the unrecorded one not"
    );

    // On a tty: the terminal echoes what is typed, `cat` prints it again, and ^D at
    // the start of a line is its end of file (`eof` closes nothing on a terminal).
    let (tx, rx) = open(vec![input(exec_input::Input::Start(ExecRequest {
        session_id: sid.clone(),
        argv: vec!["/bin/cat".into()],
        tty: true,
        window: Some(WindowSize { rows: 24, cols: 80 }),
        ..Default::default()
    }))]);
    let mut events = client.exec_interactive(rx).await.unwrap().into_inner();
    for m in [
        exec_input::Input::Stdin(b"abc\r".to_vec()),
        exec_input::Input::Resize(WindowSize {
            rows: 50,
            cols: 132,
        }),
        exec_input::Input::Stdin(b"\x04".to_vec()),
    ] {
        tx.send(input(m)).await.unwrap();
    }
    let (mut out, mut code) = (Vec::new(), None);
    while let Some(ev) = events.message().await.unwrap() {
        match ev.event {
            Some(exec_event::Event::Stdout(b)) => out.extend(b),
            Some(exec_event::Event::Exit(st)) => code = st.status,
            Some(exec_event::Event::Started(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(code, Some(exit_status::Status::Code(0)));
    assert_eq!(String::from_utf8_lossy(&out), "abc\r\nabc\r\n");
    assert_eq!(
        calls.calls.lock().unwrap().last().unwrap(),
        "exec (stdin streamed, on a tty) /bin/cat"
    );

    client
        .destroy_session(DestroySessionRequest {
            session_id: sid,
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = stop.send(());
    let _ = server.await;
}

/// A command that never reads its stdin: the sender is held back once a bounded
/// amount is in flight (the guest holds at most 1 MiB of it, the channels and HTTP/2
/// windows between add a few), not buffered without limit; a kill still ends the
/// command, and then input is refused.
#[tokio::test(flavor = "current_thread")]
async fn a_command_that_does_not_read_holds_the_sender_back() {
    let fx = fixture();
    let _one = ONE_VM.lock().await;
    let mut s = session(&fx, "/bin/sh").await;
    let (mut input, mut stream) = s
        .exec_interactive(argv(&["/bin/sh", "-c", "echo up; sleep 600"]), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut id = String::new();
    let mut out = String::new();
    while !out.contains("up") {
        match stream.next().await.expect("an event").unwrap() {
            ExecOutput::Started(i) => id = i,
            ExecOutput::Stdout(b) => out.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("{other:?}"),
        }
    }
    let chunk = vec![b'x'; 256 * 1024];
    let mut accepted = 0usize;
    // 64 MiB offered; the sends stall long before.
    for _ in 0..256 {
        match tokio::time::timeout(Duration::from_secs(3), input.stdin(&chunk)).await {
            Ok(true) => accepted += chunk.len(),
            Ok(false) => panic!("input refused while the command runs"),
            Err(_) => break,
        }
    }
    eprintln!("{accepted} bytes were taken before the sends stalled");
    assert!(
        accepted < 16 << 20,
        "{accepted} bytes taken by a command that reads nothing"
    );
    assert!(s.signal(&id, libc::SIGKILL).await.unwrap());
    let end = read_to_end(&mut stream, &mut out).await;
    assert_eq!(end, ExecEnd::Signaled(libc::SIGKILL));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::timeout(Duration::from_secs(1), input.stdin(b"late"))
        .await
        .unwrap_or(true)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "input still taken 10 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.destroy().await.unwrap();
}
