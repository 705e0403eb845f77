//! Sessions under process isolation (`airlock run --isolation process`).
//!
//! The same path as a VM session up to the boundary: the plan is decided, a manifest is
//! minted and signed (with a key made for this one session: the enforcer is started by
//! us and told the public key directly), and the enforcer — the guest's own binary —
//! verifies it and applies every layer, here in fresh namespaces on the host kernel
//! instead of in a VM. Weaker than a VM: the agent shares the host's kernel.

use crate::approval::{decide_and_mint, Refusal, UpFront};
use crate::approval_broker::{Answer, ApprovalBroker, AutoAnswer, DEFAULT_APPROVAL_TIMEOUT};
use crate::host_service::HostService;
use crate::mint::{MintOptions, DEFAULT_TTL_SECS};
use crate::plan::{Plan, Report};
use crate::policy::Policy;
use crate::workspace_merge::{
    merge_from_scratch, receive_scratch, CommandEnd, MergeOutcome, MergeWhen, WorkspacePlan,
};
use airlock_proto::envelope::{random_hex, Signer};
use airlock_proto::shell_status::ProcessEnd;
use std::io::{Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::host_terminal::{SignalForwarding, TerminalStandIns};

/// Image id bound into process-isolation manifests (the "image" is the host's /usr).
pub const PROCESS_IMAGE_ID: &str = "host-process-isolation";
/// CID bound into process-isolation manifests (there is no VM; any fixed guest CID).
pub const PROCESS_CID: u32 = 3;

/// Where the guest-side binaries are.
#[derive(Debug, Clone)]
pub struct ProcessRunOptions {
    /// The `airlock-enforcer` binary.
    pub enforcer: PathBuf,
    /// The `airlock-shim` binary.
    pub shim: PathBuf,
    /// Where the session's asks (up-front and run-time) wait for an answer.
    pub approvals: Arc<ApprovalBroker>,
    /// When copy-on-write workspaces are merged back after the command.
    pub merge: MergeWhen,
    /// Names the egress service dials at a fixed address (`--resolve NAME=IP`).
    pub egress_pins: std::collections::BTreeMap<String, std::net::IpAddr>,
    /// Pass this process's SIGINT on to the agent, and end the session on SIGQUIT or
    /// SIGHUP (the CLI on a terminal: the enforcer leads a session of its own, so the
    /// terminal's signals reach only us). Installs handlers for the life of the process.
    pub forward_interrupts: bool,
    /// A terminal approval prompt may go up during the session (`--on-ask prompt`):
    /// the command's stdout and stderr then go through pipes the launcher relays, held
    /// while the prompt is up, even when they are not terminals (a pipe to `tee` reaches
    /// the screen too).
    pub prompt_on_the_terminal: bool,
}

impl ProcessRunOptions {
    /// The enforcer and shim installed next to the running executable.
    pub fn next_to_current_exe() -> std::io::Result<ProcessRunOptions> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
        Ok(ProcessRunOptions {
            enforcer: dir.join("airlock-enforcer"),
            shim: dir.join("airlock-shim"),
            approvals: ApprovalBroker::configured(
                DEFAULT_APPROVAL_TIMEOUT,
                Some(AutoAnswer {
                    answer: Answer::Deny,
                    approver: "no approver is configured".into(),
                }),
                None,
            ),
            merge: MergeWhen::default(),
            egress_pins: Default::default(),
            forward_interrupts: false,
            prompt_on_the_terminal: false,
        })
    }
}

/// Why a session did not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The plan was denied (or an up-front ask was answered no): nothing ran.
    #[error("plan denied, nothing ran: {}", .denials.join("; "))]
    Denied {
        /// The full decision report.
        report: Box<Report>,
        /// One line per refused request.
        denials: Vec<String>,
    },
    /// Airlock itself failed before the agent could run.
    #[error("{0}")]
    Setup(String),
}

impl RunError {
    /// CLI exit code: 4 for a denied plan, 125 for airlock's own failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Denied { .. } => 4,
            RunError::Setup(_) => 125,
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The session.
    pub session_id: String,
    /// The command's exit status (128 + signal if it was killed; 124 when it ran out of
    /// wall time; 125 when the enforcer refused or failed, with the reason on stderr).
    pub exit_code: i32,
    /// The decisions the session was started under.
    pub report: Report,
    /// What became of the copy-on-write workspaces' changes (`None`: there were none).
    pub merge: Option<MergeOutcome>,
}

fn setup(what: &str) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |e| RunError::Setup(format!("{what}: {e}"))
}

/// An unnamed temporary file holding `bytes`, rewound, to hand to the enforcer.
/// Where cgroup hierarchies are mounted on the host.
const CGROUP_MOUNTS: &str = "/sys/fs/cgroup";

/// Removes what is left of session `session_id`'s cgroups (`airlock/s<id>` in every
/// hierarchy: the unified one at the root or under it, each v1 controller's), deepest
/// first. Only empty groups can go; a group whose last task is still exiting is tried
/// again for up to a second.
fn remove_leftover_cgroups(session_id: &str) {
    let name = format!("s{session_id}");
    let mut groups = vec![PathBuf::from(CGROUP_MOUNTS).join("airlock").join(&name)];
    if let Ok(mounts) = std::fs::read_dir(CGROUP_MOUNTS) {
        groups.extend(
            mounts
                .flatten()
                .map(|m| m.path().join("airlock").join(&name)),
        );
    }
    for group in groups.iter().filter(|g| g.is_dir()) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while remove_cgroup_tree(group).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// `rmdir` of a cgroup and its child groups, children first (a cgroup's files go with
/// it; only directories are groups).
fn remove_cgroup_tree(group: &std::path::Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(group)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(group) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn handover_file(bytes: &[u8]) -> std::io::Result<std::fs::File> {
    let mut f = tempfile::tempfile()?;
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f)
}

/// Serves `service` on the one connection `stream` until the runtime goes.
fn serve_host_on_stream(
    rt: &tokio::runtime::Runtime,
    service: HostService,
    stream: std::os::unix::net::UnixStream,
) -> Result<(), RunError> {
    stream
        .set_nonblocking(true)
        .map_err(setup("the host channel"))?;
    let _entered = rt.enter();
    let stream = tokio::net::UnixStream::from_std(stream).map_err(setup("the host channel"))?;
    let incoming = tokio_stream::once(Ok::<_, std::io::Error>(stream));
    rt.spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(incoming)
            .await;
    });
    Ok(())
}

/// Decides `plan`, mints its manifest and runs it under process isolation; the
/// command's stdio are this process's. Blocks until the session is over (call it
/// outside an async context: it drives its own runtime for the session's asks).
pub fn run_process_isolated(
    policy: &Policy,
    plan: &Plan,
    opts: &ProcessRunOptions,
) -> Result<RunOutcome, RunError> {
    run_isolated(policy, plan, opts, false)
}

/// [`run_process_isolated`], the agent on a terminal of its own: a fresh
/// pseudo-terminal in the sandbox, its stdin, stdout, stderr and controlling terminal,
/// relayed to and from this process's stdin and stdout (a terminal stdin is in raw
/// mode meanwhile, and its size is followed). The caller's terminal never reaches the
/// sandbox, and the relays are this process's: a terminal approval prompt may go up
/// meanwhile (output waits, keys are the prompt's). The output comes as one stream, on
/// stdout.
pub fn run_process_isolated_on_a_terminal(
    policy: &Policy,
    plan: &Plan,
    opts: &ProcessRunOptions,
) -> Result<RunOutcome, RunError> {
    run_isolated(policy, plan, opts, true)
}

fn run_isolated(
    policy: &Policy,
    plan: &Plan,
    opts: &ProcessRunOptions,
    tty: bool,
) -> Result<RunOutcome, RunError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(setup("a runtime for the session's asks"))?;
    let session_id = random_hex(16).map_err(|e| RunError::Setup(e.to_string()))?;
    // Whatever happens below, the session's asks end with it.
    struct EndAsks<'a>(&'a ApprovalBroker, &'a str);
    impl Drop for EndAsks<'_> {
        fn drop(&mut self) {
            self.0.end_session(self.1);
        }
    }
    let _end_asks = EndAsks(&opts.approvals, &session_id);
    let out = run_in(&rt, policy, plan, opts, &session_id, tty);
    rt.shutdown_background();
    out
}

fn run_in(
    rt: &tokio::runtime::Runtime,
    policy: &Policy,
    plan: &Plan,
    opts: &ProcessRunOptions,
    session_id: &str,
    tty: bool,
) -> Result<RunOutcome, RunError> {
    let signer = Signer::generate().map_err(|e| RunError::Setup(e.to_string()))?;
    let nonce = random_hex(16).map_err(|e| RunError::Setup(e.to_string()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| RunError::Setup("the host clock is before 1970".into()))?
        .as_secs();
    let mut opts_mint = MintOptions {
        now,
        ttl_secs: DEFAULT_TTL_SECS,
        vm_cid: PROCESS_CID,
        image_id: PROCESS_IMAGE_ID.into(),
        nonce: Some(nonce.clone()),
        session_id: Some(session_id.to_string()),
        approve_asks: false,
    };
    let (report, mut manifest) = rt
        .block_on(decide_and_mint(
            policy,
            plan,
            &mut opts_mint,
            &opts.approvals,
            session_id,
            UpFront::Ask,
            None,
        ))
        .map_err(|e| match e {
            Refusal::Denied { report, denials } => RunError::Denied { report, denials },
            other => RunError::Setup(other.to_string()),
        })?;
    crate::egress::pin_granted_names(&mut manifest, &opts.egress_pins);
    for (what, path) in [("enforcer", &opts.enforcer), ("shim", &opts.shim)] {
        if !path.is_file() {
            return Err(RunError::Setup(format!(
                "the {what} binary {} does not exist (build the workspace, or pass --{what})",
                path.display()
            )));
        }
    }
    let workspaces = WorkspacePlan::of(&manifest, &report.resolved_mounts, &policy.protected)
        .map_err(RunError::Setup)?;
    // The sandbox hands the scratch holding the write layers over this socket.
    let channel = if workspaces.is_empty() {
        None
    } else {
        Some(
            std::os::unix::net::UnixStream::pair()
                .map_err(setup("the workspaces' scratch channel"))?,
        )
    };
    let envelope = signer
        .sign_manifest(&manifest)
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let envelope_json = serde_json::to_vec(&envelope).expect("envelopes serialize");
    let manifest_digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&envelope_json))
    );
    opts.approvals
        .record_plan(&crate::approval::plan_decisions(
            session_id,
            &report,
            Some(manifest_digest),
        ))
        .map_err(|why| {
            RunError::Setup(format!(
                "the audit log cannot be written ({why}); the session was not started"
            ))
        })?;
    let public = signer
        .verifier()
        .to_public_key_pem()
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let envelope_file = handover_file(&envelope_json).map_err(setup("envelope hand-over file"))?;
    let pub_file = handover_file(public.as_bytes()).map_err(setup("public key hand-over file"))?;
    let (env_fd, pub_fd) = (envelope_file.as_raw_fd(), pub_file.as_raw_fd());
    // The broker's run-time asks come to our `Host` service over this socket, which only
    // the enforcer holds (close-on-exec there); the secret rides in a hand-over file.
    let (host_ours, host_theirs) =
        std::os::unix::net::UnixStream::pair().map_err(setup("the host channel"))?;
    let host_secret = hex::decode(random_hex(32).map_err(|e| RunError::Setup(e.to_string()))?)
        .expect("random_hex gives hex");
    let host_secret_copy = host_secret.clone();
    let secret_file = handover_file(&host_secret).map_err(setup("host secret hand-over file"))?;
    serve_host_on_stream(
        rt,
        HostService::new(
            session_id.to_string(),
            host_secret,
            &manifest.tools,
            Arc::clone(&opts.approvals),
            Arc::new(std::sync::Mutex::new(Vec::new())),
            // Process isolation keeps no per-session directory: guest log records go
            // nowhere (the enforcer's own stderr is the session's).
            PathBuf::from("/dev/null"),
        ),
        host_ours,
    )?;
    let (host_fd, secret_fd) = (host_theirs.as_raw_fd(), secret_file.as_raw_fd());
    // With egress granted, the sandbox's funnel hands each connection over this socket
    // to the same egress service a VM's funnel reaches over vsock.
    let egress = if manifest.egress.allow.is_empty() && manifest.egress.ask.is_empty() {
        None
    } else {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(setup("the egress channel"))?;
        let _entered = rt.enter();
        let task = crate::egress::serve_egress_handed(
            crate::egress::EgressService::new(
                session_id.to_string(),
                host_secret_copy.clone(),
                crate::egress::EgressGrants::of(&manifest),
                Arc::clone(&opts.approvals),
                Some(crate::egress::advice_from_policy(Arc::new(policy.clone()))),
                crate::egress::session_log_stderr(),
            ),
            ours,
        )
        .map_err(setup("the egress service"))?;
        Some((task, theirs))
    };
    let egress_fd = egress.as_ref().map(|(_, theirs)| theirs.as_raw_fd());

    let mut cmd = Command::new(&opts.enforcer);
    cmd.arg("run-process")
        .args(["--envelope-fd", &env_fd.to_string()])
        .args(["--pub-fd", &pub_fd.to_string()])
        .args(["--cid", &PROCESS_CID.to_string()])
        .args(["--image-id", PROCESS_IMAGE_ID])
        .args(["--nonce", &nonce])
        .args(["--session-id", &manifest.session_id])
        .arg("--shim")
        .arg(&opts.shim);
    for (i, host) in report.resolved_mounts.iter().enumerate() {
        cmd.arg("--source").arg(format!("m{i}={host}"));
    }
    let scratch_fd = channel.as_ref().map(|(_, theirs)| theirs.as_raw_fd());
    if let Some(fd) = scratch_fd {
        cmd.args(["--scratch-socket", &fd.to_string()]);
    }
    cmd.args(["--host-socket", &host_fd.to_string()])
        .args(["--host-secret-fd", &secret_fd.to_string()]);
    if let Some(fd) = egress_fd {
        cmd.args(["--egress-socket", &fd.to_string()]);
    }
    if tty {
        cmd.arg("--tty");
    }
    // Nothing of the sandbox holds our terminal (see `host_terminal`): with `tty` the
    // enforcer's stdio is a terminal of ours that stands in for it (the agent gets the
    // enforcer's own terminal, relayed to ours), otherwise pipes stand in for whichever
    // of our stdio are terminals. Either way the relays are ours, held while a prompt
    // is up.
    let mut stand_ins = if tty {
        TerminalStandIns::a_terminal_for_ours().map_err(setup("a terminal for ours"))?
    } else {
        TerminalStandIns::for_our_terminals(opts.prompt_on_the_terminal)
            .map_err(setup("pipes for our terminal"))?
    };
    stand_ins.hand_to(&mut cmd);
    let handed_over: Vec<i32> = [env_fd, pub_fd, host_fd, secret_fd]
        .into_iter()
        .chain(scratch_fd)
        .chain(egress_fd)
        .collect();
    // SAFETY: runs between fork and exec: fcntl with integer arguments only.
    // A session of its own: no controlling terminal, so neither `/dev/tty` nor the
    // terminal's foreground reaches the sandbox (the signals it would have had are
    // forwarded below).
    // SAFETY: runs between fork and exec: fcntl and setsid with integer arguments only.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &handed_over {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // If the launcher dies, the enforcer tears the session down (it handles SIGTERM:
    // kills the sandbox, removes the cgroup). Forked by the long-lived spawner thread,
    // so the thread that called us ending is not the launcher dying.
    let mut child = crate::dies_with_launcher::spawn(cmd, libc::SIGTERM)
        .map_err(|e| RunError::Setup(format!("starting {}: {e}", opts.enforcer.display())))?;
    let forwarding = if tty || opts.forward_interrupts {
        // Unreaped until `wait` below: the pid is still our child's.
        let pidfd = airlock_proto::pidfd::PidFd::open(child.id() as libc::pid_t)
            .and_then(|p| Ok((p, stand_ins.size_follower()?)))
            .and_then(|(p, size)| SignalForwarding::start(rt, p, opts.forward_interrupts, size));
        match pidfd {
            Ok(f) => Some(f),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Setup(format!(
                    "forwarding signals to the enforcer: {e}"
                )));
            }
        }
    } else {
        None
    };
    drop((envelope_file, pub_file, secret_file, host_theirs));
    // Ours stays open (the task reads it) until the session ends; theirs goes now.
    let egress = egress.map(|(task, theirs)| {
        drop(theirs);
        task
    });
    // The sandbox sends the scratch before the agent starts (or closes the socket when
    // it fails first); our copy of its end must be gone for that close to be seen.
    let channel = channel.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });
    let scratch = channel.as_ref().and_then(receive_scratch);
    let status = child
        .wait()
        .map_err(|e| RunError::Setup(format!("waiting for the enforcer: {e}")))?;
    // An enforcer killed outright (SIGKILL) took its sandbox with it (PID 1 of its
    // namespace) but could not remove the session's cgroups: empty, they go here.
    if std::os::unix::process::ExitStatusExt::signal(&status).is_some() {
        remove_leftover_cgroups(&manifest.session_id);
    }
    // The sandbox is gone: so are its asks. A prompt still up for one is answered
    // "session ended" now (an approval typed later must not dial out for nobody), and
    // the relays' last output is not held behind it.
    opts.approvals.end_session(session_id);
    drop(forwarding);
    stand_ins.finish(std::time::Duration::from_secs(2));
    // After the scratch, the sandbox's last word on the channel is how the agent ended.
    let told = channel.and_then(|ours| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(ours, 64), &mut text).ok()?;
        (!text.is_empty()).then_some(text)
    });
    // Every connection the agent left open ends with the session.
    drop(egress);
    let exit_code = ProcessEnd::from(status).exit_code();
    let merge = (!workspaces.is_empty()).then(|| match &scratch {
        None => MergeOutcome::Skipped("the sandbox never set up its write layer".into()),
        Some(scratch) => {
            let started = std::time::Instant::now();
            let end = CommandEnd::from_marker(told.as_deref());
            match opts.merge.mode_for(&end) {
                None => MergeOutcome::Skipped(end.not_merged_because(opts.merge)),
                Some(mode) => match merge_from_scratch(&workspaces, scratch, mode) {
                    Ok(report) => MergeOutcome::Merged {
                        report,
                        elapsed: started.elapsed(),
                    },
                    Err(e) => MergeOutcome::Failed(e),
                },
            }
        }
    });
    Ok(RunOutcome {
        session_id: manifest.session_id,
        exit_code,
        report,
        merge,
    })
}
