//! End-to-end VM sessions through `airlock_launcher::Launcher`: real QEMU microvm
//! guests under TCG, the enforcer as PID 1, shares served by virtiofsd, commands run
//! as the agent. Each test proves the forbidden thing fails for its reason and the
//! allowed neighbour works.

#[path = "vm_support.rs"]
mod vm_support;

use airlock_launcher::approval::Refusal;
use airlock_launcher::image::{build, ImageDescriptor, Profile};
use airlock_launcher::launcher::{ExecEnd, ExecOutput, ExecSpec, Launcher, Session, SessionError};
use airlock_launcher::plan::Plan;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vm_support::{setup, ONE_VM};

struct Fixture {
    dir: tempfile::TempDir,
    launcher: Launcher,
}

impl Fixture {
    fn state_root(&self) -> PathBuf {
        self.dir.path().join("vms")
    }
}

/// A launcher over a freshly built minimal image (panics naming a missing tool).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, tools) = setup(dir.path());
    let (image, _): (ImageDescriptor, bool) =
        build(Profile::Minimal, &inputs, &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let launcher = vm_support::qemu_launcher(dir.path(), image, vm_support::vm_policy(), tools);
    Fixture { dir, launcher }
}

/// A session of `/bin/sh` with 128 MiB for the agent and `tools`.
async fn shell_session(fx: &Fixture, tools: &[&str]) -> Session {
    let text =
        format!("command = [\"/bin/sh\"]\ntools = {tools:?}\n[resources]\nmemory_mib = 128\n");
    fx.launcher
        .create_session(&plan(&text))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A session of `/bin/sh` with `work` mounted at `/work` in `mode`.
async fn work_session(fx: &Fixture, work: &Path, mode: &str) -> Session {
    let p = plan(&format!(
        "command = [\"/bin/sh\"]\n[[mounts]]\nhost = \"{}\"\nguest = \"/work\"\nmode = \"{mode}\"\n\
         [resources]\nmemory_mib = 128\n",
        work.display()
    ));
    fx.launcher
        .create_session(&p)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn plan(text: &str) -> Plan {
    Plan::parse("plan.toml", text, false).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `script` with the session's `/bin/sh`; returns (status, stdout, stderr).
async fn sh(session: &mut Session, script: &str) -> (ExecEnd, String, String) {
    let argv = vec!["/bin/sh".into(), "-c".into(), script.into()];
    let spec = ExecSpec {
        argv,
        ..Default::default()
    };
    let (end, out, err) = vm_support::run_captured(session, spec).await;
    let end = end.unwrap_or_else(|e| panic!("{script}: {e}\n{}", session.serial_output()));
    (end, out, err)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn vm_dirs(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Output and status come back; a read-only share refuses writes (in the guest and in
/// virtiofsd), a read-write share's writes land on the host owned by the directory's
/// owner; collected files come back whole; the agent's containment holds in the VM.
#[tokio::test(flavor = "current_thread")]
async fn commands_run_as_the_agent_with_shares_enforced_and_outputs_collected() {
    let fx = fixture();
    let _one = ONE_VM.lock().await;
    let root = fx.dir.path();
    let (work, docs) = (root.join("work"), root.join("docs"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("readme"), "read me\n").unwrap();
    // The work tree belongs to someone other than root: the agent acts as that owner.
    std::os::unix::fs::chown(&work, Some(4242), Some(4343)).unwrap();
    let p = plan(&format!(
        "command = [\"/bin/sh\"]\ntools = [\"cat\"]\n\
         [[mounts]]\nhost = \"{}\"\nguest = \"/work\"\nmode = \"rw\"\n\
         [[mounts]]\nhost = \"{}\"\nguest = \"/docs\"\nmode = \"ro\"\n\
         [resources]\nmemory_mib = 128\n",
        work.display(),
        docs.display()
    ));
    let mut s = fx
        .launcher
        .create_session(&p)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let layers: Vec<&str> = s.ready().layers.iter().map(|l| l.name.as_str()).collect();
    assert!(
        layers.contains(&"mounts") && layers.contains(&"landlock"),
        "{layers:?}"
    );

    let (end, out, err) = sh(&mut s, "echo hello; echo oops >&2; exit 7").await;
    assert_eq!(
        (end, out.as_str(), err.as_str()),
        (ExecEnd::Exited(7), "hello\n", "oops\n")
    );

    // Who the agent is: uid 1000, no capabilities.
    let (_, out, _) = sh(
        &mut s,
        "while read k v rest; do case $k in Uid:|CapEff:) echo $k $v;; esac; done < /proc/self/status",
    )
    .await;
    assert_eq!(out, "Uid: 1000\nCapEff: 0000000000000000\n");

    // Read-only share: readable, not writable.
    let (end, out, _) = sh(&mut s, "cat /docs/readme").await;
    assert_eq!((end, out.as_str()), (ExecEnd::Exited(0), "read me\n"));
    let (end, _, err) = sh(&mut s, "echo x > /docs/new").await;
    assert_ne!(end, ExecEnd::Exited(0));
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!docs.join("new").exists());

    // Read-write share: copy-on-write, so the write reaches the host only through the
    // merge-back gate, and lands owned by the tree's owner.
    let (end, _, err) = sh(&mut s, "echo data > /work/out.txt").await;
    assert_eq!(end, ExecEnd::Exited(0), "{err}");
    let host = work.join("out.txt");
    assert!(
        !host.exists(),
        "a copy-on-write share's write reached the host unmerged"
    );
    let merged = s
        .merge(airlock_launcher::merge_gate::MergeMode::Apply)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.changes.len(), 1, "{}", merged.summary_line());
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "data\n");
    let meta = std::fs::metadata(&host).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4343));

    // Containment in the VM (the process-mode suite's cases that apply here).
    let cases: [(&str, &str); 6] = [
        // A copied binary on a writable mount or /tmp does not run (noexec, Landlock).
        (
            "cp /bin/busybox /work/bb && /work/bb true",
            "permission denied",
        ),
        (
            "cp /bin/busybox /tmp/bb && /tmp/bb true",
            "permission denied",
        ),
        // Nothing outside the grants is writable.
        ("echo x > /etc/passwd-new", "permission denied"),
        // PID 1 is out of reach.
        ("kill -9 1", "not permitted"),
        // No mounts, no namespaces.
        ("mount -t tmpfs none /work", "permission denied"),
        // The enforcer's process is hidden from the agent (`hidepid=invisible`).
        ("cat /proc/1/environ", "no such file"),
    ];
    for (script, want) in cases {
        let (end, _, err) = sh(&mut s, script).await;
        assert_ne!(end, ExecEnd::Exited(0), "{script} succeeded");
        assert!(err.to_lowercase().contains(want), "{script}: {err}");
    }
    // The allowed neighbour: busybox itself, from the image, runs.
    let (end, _, _) = sh(&mut s, "/bin/busybox true").await;
    assert_eq!(end, ExecEnd::Exited(0));

    // Collect: the output comes back, and a symlink planted in its place is refused.
    let dest = root.join("collected");
    std::fs::create_dir(&dest).unwrap();
    let got = s
        .collect(&["/work/out.txt".into()], &dest)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&got[0].host_path).unwrap(),
        "data\n"
    );
    assert_eq!(got[0].size, 5);
    sh(&mut s, "ln -s /etc/airlock/launcher.pub /work/link").await;
    let e = s
        .collect(&["/work/link".into()], &dest)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/work/link") && e.contains("symbolic link"),
        "{e}"
    );

    let info = s.vm_info();
    s.destroy().await.unwrap();
    for pid in info.pids {
        assert!(!alive(pid), "helper {pid} outlived its session");
    }
    assert!(!info.state_dir.exists());
}

/// A refused plan boots nothing: no VM directory is ever created.
#[tokio::test(flavor = "current_thread")]
async fn a_denied_plan_boots_no_vm() {
    let fx = fixture();
    let secret = fx.dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    let p = plan(&format!(
        "command = [\"/bin/sh\"]\n[[mounts]]\nhost = \"{}\"\nguest = \"/s\"\nmode = \"ro\"\n",
        secret.display()
    ));
    let Err(e) = fx.launcher.create_session(&p).await else {
        panic!("a plan sharing the secret tree got a session");
    };
    assert!(
        matches!(&e, SessionError::Refused(Refusal::Denied { .. })),
        "{e}"
    );
    assert_eq!(e.exit_code(), 4);
    assert!(e.to_string().contains("secret"), "{e}");
    assert!(vm_dirs(&fx.state_root()).is_empty());
}

/// `Signal` reaches the command (through the agent init), and a signal the command
/// may not be sent is refused by name.
#[tokio::test(flavor = "current_thread")]
async fn a_signal_reaches_the_running_command() {
    let fx = fixture();
    let _one = ONE_VM.lock().await;
    let mut s = shell_session(&fx, &[]).await;
    let mut stream = s
        .exec(ExecSpec {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 1; done".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut id = String::new();
    let mut out = String::new();
    let mut signalled = false;
    let end = loop {
        match stream.next().await.expect("an exit event").unwrap() {
            ExecOutput::Started(i) => id = i,
            ExecOutput::Stdout(b) => {
                out.push_str(&String::from_utf8_lossy(&b));
                if out.contains("ready") && !signalled {
                    let e = s.signal(&id, 9999).await.unwrap_err().to_string();
                    assert!(e.contains("signal 9999"), "{e}");
                    assert!(s.signal(&id, libc::SIGTERM).await.unwrap());
                    signalled = true;
                }
            }
            ExecOutput::Stderr(_) => {}
            ExecOutput::Ended(end) => break end,
        }
    };
    assert_eq!(end, ExecEnd::Exited(3), "{out}");
    assert!(out.contains("got-term"), "{out}");
    assert!(
        !s.signal(&id, libc::SIGTERM).await.unwrap(),
        "an ended command"
    );

    s.destroy().await.unwrap();
}

/// SIGKILL goes to a command's agent init, which cannot pass it on: the agent must die
/// with its init (its death signal), not live on under PID 1. The agent ticks into a
/// live (`rw-live`) share; after the kill the host sees the ticks stop.
#[tokio::test(flavor = "current_thread")]
async fn a_killed_command_does_not_outlive_its_init() {
    let fx = fixture();
    let _one = ONE_VM.lock().await;
    let work = fx.dir.path().join("live");
    std::fs::create_dir_all(&work).unwrap();
    let mut s = work_session(&fx, &work, "rw-live").await;
    let script = "echo ready; while :; do echo tick >> /work/ticks; sleep 0.1; done";
    let mut stream = s
        .exec(ExecSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut id = String::new();
    loop {
        match stream.next().await.expect("an event").unwrap() {
            ExecOutput::Started(i) => id = i,
            ExecOutput::Stdout(b) if String::from_utf8_lossy(&b).contains("ready") => break,
            _ => {}
        }
    }
    let ticks = || {
        std::fs::read_to_string(work.join("ticks"))
            .unwrap_or_default()
            .len()
    };
    // The neighbour: alive, it ticks.
    let before = ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(ticks() > before, "the command never ticked");
    assert!(s.signal(&id, libc::SIGKILL).await.unwrap());
    let end = loop {
        if let ExecOutput::Ended(end) = stream.next().await.expect("an exit event").unwrap() {
            break end;
        }
    };
    assert_eq!(end, ExecEnd::Signaled(libc::SIGKILL));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_kill = ticks();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ticks(), after_kill, "the agent outlived its killed init");
    s.destroy().await.unwrap();
}

/// The VM process killed under a running command: the session reports it (naming the
/// serial log), and destroying it leaves no helper and nothing on disk.
#[tokio::test(flavor = "current_thread")]
async fn a_vm_killed_mid_run_is_reported_and_leaves_nothing() {
    let fx = fixture();
    let _one = ONE_VM.lock().await;
    let mut s = shell_session(&fx, &[]).await;
    let info = s.vm_info();
    let qemu = *info.pids.last().unwrap();
    let mut stream = s
        .exec(ExecSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo up; sleep 60".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let err = loop {
        match stream.next().await.expect("an event") {
            Ok(ExecOutput::Stdout(_)) => {
                // SAFETY: kills the test's own QEMU child.
                unsafe { libc::kill(qemu as i32, libc::SIGKILL) };
            }
            Ok(ExecOutput::Ended(end)) => panic!("the command ended ({end:?}) with its VM killed"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SessionError::VmLost { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("signal: 9") && msg.contains("serial.log"),
        "{msg}"
    );
    drop(stream);
    s.destroy().await.unwrap();
    for pid in info.pids {
        assert!(!alive(pid), "helper {pid} outlived its VM");
    }
    assert!(!info.state_dir.exists());
    assert!(vm_dirs(&fx.state_root()).is_empty());
}

/// Four sessions at once, each in its own VM with its own CID and manifest.
#[tokio::test(flavor = "current_thread")]
async fn four_sessions_at_once() {
    let fx = fixture();
    let _one = ONE_VM.lock().await;
    let p = plan("command = [\"/bin/sh\"]\n[resources]\nmemory_mib = 128\n");
    let (a, b, c, d) = tokio::join!(
        fx.launcher.create_session(&p),
        fx.launcher.create_session(&p),
        fx.launcher.create_session(&p),
        fx.launcher.create_session(&p)
    );
    let mut sessions: Vec<Session> = [a, b, c, d]
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let mut cids: Vec<u32> = sessions.iter().map(|s| s.manifest().vm_cid).collect();
    cids.sort();
    cids.dedup();
    assert_eq!(cids.len(), 4, "each VM has its own CID");
    for (i, s) in sessions.iter_mut().enumerate() {
        let (end, out, _) = sh(s, &format!("echo session-{i}")).await;
        assert_eq!((end, out), (ExecEnd::Exited(0), format!("session-{i}\n")));
    }
    for s in sessions {
        s.destroy().await.unwrap();
    }
    assert!(vm_dirs(&fx.state_root()).is_empty());
}

/// A run-time ask goes from the broker in the VM to the launcher's `Host` service (the
/// only way out of the guest that is not the `Enforcer` channel), is answered there,
/// recorded, and the answer reaches the agent as a readable refusal.
#[tokio::test(flavor = "current_thread")]
async fn a_run_time_ask_is_decided_by_the_host_and_the_agent_reads_why() {
    let fx = fixture();
    let _one = ONE_VM.lock().await;
    let mut s = shell_session(&fx, &["wc", "cat"]).await;
    // Through the tool's shim (the minimal image's busybox shell would run its own
    // `wc` applet in-process, without any exec).
    let spec = ExecSpec {
        argv: vec!["wc".into(), "-l".into()],
        stdin: b"one\n".to_vec(),
        ..Default::default()
    };
    let (end, out, err) = vm_support::run_captured(&mut s, spec).await;
    let end = end.unwrap();
    assert_eq!(end, ExecEnd::Exited(126), "{err}");
    assert!(
        err.contains("wc-asks") && err.contains("denied by --on-ask deny"),
        "the host's reason reaches the agent: {err}"
    );
    assert!(out.is_empty(), "wc ran");
    let asks = s.asks();
    assert_eq!(asks.len(), 1, "{asks:?}");
    assert_eq!(asks[0].argv, vec!["wc".to_string(), "-l".into()]);
    assert!(!asks[0].allowed);
    // The same tool by an absolute path is still brokered: its shim, not the binary.
    let spec = ExecSpec {
        argv: vec!["/usr/bin/wc".into(), "-l".into()],
        stdin: b"one\n".to_vec(),
        ..Default::default()
    };
    let (end, out, err) = vm_support::run_captured(&mut s, spec).await;
    assert_eq!(end.unwrap(), ExecEnd::Exited(126), "{err}");
    assert!(out.is_empty() && err.contains("wc-asks"), "{out} {err}");
    assert_eq!(s.asks().len(), 2, "asked again");
    // The allowed neighbour runs without asking.
    let (end, out, _) = sh(&mut s, "echo two | /usr/lib/airlock/bin/cat").await;
    assert_eq!((end, out.as_str()), (ExecEnd::Exited(0), "two\n"));
    assert_eq!(s.asks().len(), 2, "no new ask");
    s.destroy().await.unwrap();
}

/// A merge in the middle of a session changes the host tree under the guest's
/// copy-on-write layer (files it replaced are new inodes on the host). The session goes
/// on working on those files afterwards, past the guest's attribute cache.
#[tokio::test(flavor = "current_thread")]
async fn a_session_goes_on_after_a_merge_in_the_middle() {
    let fx = fixture();
    let _one = ONE_VM.lock().await;
    let work = fx.dir.path().join("mid-merge").join("work");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::write(work.join("f"), "one\n").unwrap();
    std::fs::write(work.join("sub/g"), "one\n").unwrap();
    let mut s = work_session(&fx, &work, "rw").await;
    let (end, _, err) = sh(
        &mut s,
        "echo two > /work/f && echo two > /work/sub/g && echo new > /work/h",
    )
    .await;
    assert_eq!(end, ExecEnd::Exited(0), "{err}");
    let merged = s
        .merge(airlock_launcher::merge_gate::MergeMode::Apply)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.changes.len(), 3, "{}", merged.summary_line());
    assert_eq!(std::fs::read_to_string(work.join("f")).unwrap(), "two\n");
    // Past virtiofs's one-second attribute and entry timeouts.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (end, out, err) = sh(
        &mut s,
        "cat /work/f /work/sub/g /work/h && echo three > /work/f && echo three > /work/sub/g && echo three > /work/h && ls /work",
    )
    .await;
    assert_eq!(end, ExecEnd::Exited(0), "after the merge: {err}");
    assert_eq!(out, "two\ntwo\nnew\nf\nh\nsub\n");
    let merged = s
        .merge(airlock_launcher::merge_gate::MergeMode::Apply)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.changes.len(), 3, "{}", merged.summary_line());
    assert_eq!(
        std::fs::read_to_string(work.join("sub/g")).unwrap(),
        "three\n"
    );
    s.destroy().await.unwrap();
}
