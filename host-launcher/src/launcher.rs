//! [`Launcher`]: VM sessions from a plan, the library the CLI and the server use.
//!
//! A session is: the plan decided against the policy (a denied plan boots nothing) →
//! a fresh VM booted from the image, its shares served by one virtiofsd each → `Hello`
//! over hybrid vsock (protocol versions, the boot's challenge) → a manifest minted for
//! exactly this boot (its CID, the image, the challenge) and `Apply`'d → ready. Then
//! commands run in it (`exec`), output files come back (`collect`), and `destroy` (or
//! drop) tears the VM down with every helper and its directory. A VM is never reused.

use crate::approval::{decide_and_mint, Refusal, UpFront};
use crate::approval_broker::ApprovalBroker;
use crate::host_service::{AskRecord, HostService};
use crate::image::ImageDescriptor;
use crate::merge_gate::{MergeMode, MergeReport};
use crate::mint::{MintOptions, DEFAULT_TTL_SECS};
use crate::plan::{Plan, Report};
use crate::policy::Policy;
use crate::vmm::hybrid_vsock::{grpc_channel, VsockError};
use crate::vmm::state_dir::{sweep_stale, Sweep};
use crate::vmm::{Share, Vm, VmSpec, Vmm, VmmError};
use crate::workspace_merge::{event_of_chunk, CommandEnd, MergeOutcome, MergeWhen, WorkspacePlan};
use airlock_proto::envelope::Signer;
use airlock_proto::manifest::{Access, Manifest};
use airlock_proto::pb::enforcer_client::EnforcerClient;
use airlock_proto::pb::{
    enforcer_exec_input, exec_event, exit_status, ApplyRequest, ChangesRequest, CollectRequest,
    CollectedPath, EnforcerExecInput, EnforcerExecRequest, ExecEvent, HelloRequest, ReadyReport,
    ShutdownRequest, ShutdownResponse, SignalRequest, StdinEof, WorkspaceMergedRequest,
};
use airlock_proto::shell_status::{ProcessEnd, EXIT_WALL_TIME};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

use airlock_proto::{EGRESS_VSOCK_PORT, ENFORCER_VSOCK_PORT as ENFORCER_PORT, HOST_VSOCK_PORT};
/// Guest memory on top of the agent's grant: the guest kernel, the enforcer, the page
/// cache of the image.
pub const GUEST_MEMORY_OVERHEAD_MIB: u64 = 128;
/// Default time a VM gets from boot to the enforcer answering (TCG is slow; a busy
/// host slower).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// What a [`Launcher`] works with.
#[derive(Clone)]
pub struct LauncherConfig {
    /// The policy every plan is decided against.
    pub policy: Arc<Policy>,
    /// The launcher's signing key (the image must trust it).
    pub signer: Arc<Signer>,
    /// The guest image.
    pub image: ImageDescriptor,
    /// The VMM backend.
    pub vmm: Arc<dyn Vmm>,
    /// Where per-VM directories go.
    pub state_root: PathBuf,
    /// Boot deadline.
    pub boot_timeout: Duration,
    /// Where asks wait for an answer: up-front asks of plans and run-time asks of
    /// every session's broker. Approver channels watch it.
    pub approvals: Arc<ApprovalBroker>,
    /// Names the egress service dials at a fixed address (`--resolve NAME=IP`), for
    /// sessions granted those names; recorded in their manifests.
    pub egress_pins: std::collections::BTreeMap<String, std::net::IpAddr>,
}

/// Why a session could not be created, or failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The plan was refused: no VM was booted.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The launcher's key is not the one the image trusts.
    #[error("the image {image} trusts key {trusted}, but this launcher signs with key {ours}; rebuild the image (airlock image build) with this launcher's public key")]
    KeyMismatch {
        /// Image id.
        image: String,
        /// Key id the image trusts.
        trusted: String,
        /// Key id of the signer.
        ours: String,
    },
    /// A granted mount cannot be served.
    #[error("manifest field `mounts[{index}]`: mount source {path} cannot be shared: {problem} (the agent did not run)")]
    Share {
        /// Mount index.
        index: usize,
        /// Host path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The VMM or a helper failed.
    #[error("{vmm}: {source}")]
    Vmm {
        /// Backend name.
        vmm: &'static str,
        /// Cause.
        source: VmmError,
    },
    /// The guest never answered. The VM directory (and its log) is removed with the
    /// VM, so the end of the console comes with the error.
    #[error("{source}; last console lines:\n{tail}")]
    Unreachable {
        /// What the handshake saw.
        source: VsockError,
        /// The end of the console.
        tail: String,
    },
    /// The enforcer never came up (its console line never appeared).
    #[error("the enforcer did not come up before the boot deadline (serial log: {serial_log}); last console lines:\n{tail}")]
    BootTimeout {
        /// The console.
        serial_log: PathBuf,
        /// The end of the console.
        tail: String,
    },
    /// The enforcer refused or failed a call; the agent did not run.
    #[error("the enforcer refused {call}: {message} (serial log: {serial_log})")]
    Enforcer {
        /// The call.
        call: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
        /// The VM's console.
        serial_log: PathBuf,
    },
    /// The guest is not the image we booted.
    #[error("the VM answered as image {got}, but {want} was booted")]
    WrongImage {
        /// Booted.
        want: String,
        /// Reported.
        got: String,
    },
    /// The VM went away under a running session.
    #[error("the VM exited ({status}) during {during}; last console lines:\n{tail}\n(serial log: {serial_log})")]
    VmLost {
        /// What was going on.
        during: String,
        /// How the VMM ended.
        status: String,
        /// The end of the console.
        tail: String,
        /// The console.
        serial_log: PathBuf,
    },
    /// The command is neither the manifest's entrypoint nor a granted tool.
    #[error("`{argv0}` may not run in this session: the manifest's entrypoint is {entrypoint} and its tools are [{}]", .tools.join(", "))]
    NotGranted {
        /// What was asked for.
        argv0: String,
        /// The entrypoint.
        entrypoint: String,
        /// Granted tools.
        tools: Vec<String>,
    },
    /// The session's wall time ran out.
    #[error("the session's wall time of {0} s ran out")]
    WallTime(u64),
    /// A command's stdin is over what one Exec carries.
    #[error("stdin of {len} bytes is more than the {MAX_EXEC_STDIN_BYTES} bytes a command in a VM takes (it is sent whole, before the command starts)")]
    StdinTooLarge {
        /// Bytes offered.
        len: usize,
    },
    /// Writing collected files failed.
    #[error("collecting into {path}: {problem}")]
    Collect {
        /// Where.
        path: PathBuf,
        /// What failed.
        problem: String,
    },
    /// Merging the workspaces back failed as a whole; the host tree is as it was.
    #[error("merging the workspaces back: {0}")]
    Merge(String),
    /// Something else on the host.
    #[error("{0}")]
    Host(String),
}

impl SessionError {
    /// CLI exit code: 4 for a refused plan, 124 when the wall time ran out, 125
    /// otherwise (airlock's own failure).
    pub fn exit_code(&self) -> i32 {
        match self {
            SessionError::Refused(Refusal::Denied { .. }) => 4,
            SessionError::WallTime(_) => EXIT_WALL_TIME,
            _ => 125,
        }
    }
}

/// Creates VM sessions.
pub struct Launcher {
    cfg: LauncherConfig,
    next_cid: AtomicU32,
}

/// First guest CID handed out (0-2 are reserved by vsock).
const FIRST_CID: u32 = 3;

impl Launcher {
    /// A launcher for `cfg`. Refuses a signer the image does not trust, and sweeps the
    /// state root of VM directories a crashed launcher left behind.
    pub fn new(cfg: LauncherConfig) -> Result<(Launcher, Sweep), SessionError> {
        if cfg.signer.key_id() != cfg.image.trusted_key_id {
            return Err(SessionError::KeyMismatch {
                image: cfg.image.image_id.clone(),
                trusted: cfg.image.trusted_key_id.clone(),
                ours: cfg.signer.key_id().to_string(),
            });
        }
        let sweep = sweep_stale(&cfg.state_root).map_err(|e| SessionError::Vmm {
            vmm: cfg.vmm.name(),
            source: e,
        })?;
        Ok((
            Launcher {
                cfg,
                next_cid: AtomicU32::new(FIRST_CID),
            },
            sweep,
        ))
    }

    /// The configuration.
    pub fn config(&self) -> &LauncherConfig {
        &self.cfg
    }

    /// Each VM gets its own vsock device, so CIDs only need to differ between the
    /// sessions of one launcher (a manifest bound to one VM is useless in another).
    fn allocate_cid(&self) -> u32 {
        loop {
            let cid = self.next_cid.fetch_add(1, Ordering::Relaxed);
            if (FIRST_CID..u32::MAX - 1).contains(&cid) {
                return cid;
            }
            let _ = self.next_cid.compare_exchange(
                cid.wrapping_add(1),
                FIRST_CID,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Decides `plan`, boots a VM for it, applies its manifest, and returns the ready
    /// session. Up-front asks wait for the approvers. A refused plan boots nothing; any
    /// failure after boot destroys the VM.
    pub async fn create_session(&self, plan: &Plan) -> Result<Session, SessionError> {
        self.create_session_with(plan, UpFront::Ask).await
    }

    /// [`Launcher::create_session`], with the plan's up-front asks handled per
    /// `up_front`.
    pub async fn create_session_with(
        &self,
        plan: &Plan,
        up_front: UpFront,
    ) -> Result<Session, SessionError> {
        self.create_session_for(plan, up_front, None).await
    }

    /// [`Launcher::create_session_with`] for an authenticated caller, whose name
    /// (`requested_by`) goes on the audit log's records of the plan's decisions.
    pub async fn create_session_for(
        &self,
        plan: &Plan,
        up_front: UpFront,
        requested_by: Option<&str>,
    ) -> Result<Session, SessionError> {
        let cfg = &self.cfg;
        let now = unix_now()?;
        let cid = self.allocate_cid();
        let random = |n| {
            airlock_proto::envelope::random_hex(n)
                .map_err(|e| SessionError::Host(format!("randomness: {e}")))
        };
        let session_id = random(16)?;
        let secret = hex::decode(random(32)?).expect("random_hex gives hex");
        let mint_opts = |nonce: String| MintOptions {
            now,
            ttl_secs: DEFAULT_TTL_SECS,
            vm_cid: cid,
            image_id: cfg.image.image_id.clone(),
            nonce: Some(nonce),
            session_id: Some(session_id.clone()),
            approve_asks: false,
        };
        // Decide first: a refused plan costs no VM. The manifest that counts is minted
        // again below, bound to the boot's challenge, with the same approvals.
        let mut draft_opts = mint_opts("00".repeat(16));
        let decided = decide_and_mint(
            &cfg.policy,
            plan,
            &mut draft_opts,
            &cfg.approvals,
            &session_id,
            up_front,
            requested_by,
        )
        .await;
        let (report, mut draft) =
            decided.inspect_err(|_| cfg.approvals.end_session(&session_id))?;
        crate::egress::pin_granted_names(&mut draft, &cfg.egress_pins);
        let shares = shares_for(&draft, &report)?;
        let r = &draft.resources;
        let mut spec = VmSpec::for_image(
            &cfg.image,
            cid,
            r.vcpus.max(1),
            r.memory_mib + GUEST_MEMORY_OVERHEAD_MIB,
        );
        spec.shares = shares;
        spec.host_ports = vec![HOST_VSOCK_PORT, EGRESS_VSOCK_PORT];
        let vmm = cfg.vmm.name();
        let started = Instant::now();
        let vm = cfg
            .vmm
            .boot(&spec, &cfg.state_root)
            .map_err(|e| SessionError::Vmm { vmm, source: e })?;
        let mut vm = VmGuard(Some(vm));
        let asks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let approvals_of_session = SessionApprovals {
            broker: Arc::clone(&cfg.approvals),
            session_id: session_id.clone(),
            ended: false,
        };
        let host_listener = vm
            .get_mut()
            .take_host_listener(HOST_VSOCK_PORT)
            .ok_or_else(|| SessionError::Host("the VMM bound no host listener".into()))?;
        let egress_listener = vm
            .get_mut()
            .take_host_listener(EGRESS_VSOCK_PORT)
            .ok_or_else(|| SessionError::Host("the VMM bound no egress listener".into()))?;
        let guest_log = vm.get().state_dir().join("guest.log");
        let mut host_task = HostTask {
            task: serve_host(
                HostService::new(
                    session_id.clone(),
                    secret.clone(),
                    &draft.tools,
                    Arc::clone(&cfg.approvals),
                    Arc::clone(&asks),
                    vm.get().state_dir().join("guest.log"),
                ),
                host_listener,
            )?,
            approvals: approvals_of_session,
            egress: None,
        };
        let (uds, serial) = (
            vm.get().vsock_uds().to_path_buf(),
            vm.get().serial_log().to_path_buf(),
        );
        let deadline = started + cfg.boot_timeout;
        vm.wait_for_enforcer(deadline).await?;
        let channel = grpc_channel(&uds, ENFORCER_PORT, deadline, &serial)
            .await
            .map_err(|e| {
                let tail = console_tail(&vm.get().serial_output(), CONSOLE_TAIL_LINES);
                vm.lost_or(SessionError::Unreachable { source: e, tail }, "boot")
            })?;
        let mut client = EnforcerClient::new(channel);
        let v = airlock_proto::PROTOCOL_VERSION;
        let answer_by = tokio::time::Instant::from_std(deadline);
        let hello = within(
            answer_by,
            "Hello",
            client.hello(HelloRequest {
                host_protocol_version: v,
                host_min_protocol_version: v,
                host_software_version: env!("CARGO_PKG_VERSION").into(),
            }),
        )
        .await
        .map_err(|s| vm.refusal("Hello", s))?
        .into_inner();
        if hello.image_id != cfg.image.image_id {
            return Err(SessionError::WrongImage {
                want: cfg.image.image_id.clone(),
                got: hello.image_id,
            });
        }
        // The same plan and the same approvals: no second round of questions.
        let mut opts = mint_opts(hex::encode(&hello.challenge_nonce));
        opts.approve_asks = draft_opts.approve_asks;
        let (_, mut manifest) = decide_and_mint(
            &cfg.policy,
            plan,
            &mut opts,
            &cfg.approvals,
            &session_id,
            UpFront::Deny,
            requested_by,
        )
        .await?;
        crate::egress::pin_granted_names(&mut manifest, &cfg.egress_pins);
        if manifest.tools != draft.tools
            || manifest.mounts != draft.mounts
            || manifest.egress != draft.egress
        {
            return Err(SessionError::Host(
                "the plan decided differently at boot than before it (the policy changed?)".into(),
            ));
        }
        // Listening before the manifest is handed over: the funnel's first connection
        // finds the host ready, decided from this copy of the manifest.
        host_task.egress = Some(
            crate::egress::serve_egress_listener(
                crate::egress::EgressService::new(
                    session_id.clone(),
                    secret.clone(),
                    crate::egress::EgressGrants::of(&manifest),
                    Arc::clone(&cfg.approvals),
                    Some(crate::egress::advice_from_policy(Arc::clone(&cfg.policy))),
                    crate::egress::session_log_file(guest_log),
                ),
                egress_listener,
            )
            .map_err(|e| SessionError::Host(format!("the egress listener: {e}")))?,
        );
        let envelope = cfg
            .signer
            .sign_manifest(&manifest)
            .map_err(|e| SessionError::Host(format!("signing the manifest: {e}")))?;
        let envelope = serde_json::to_vec(&envelope).expect("envelopes serialize");
        let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&envelope)));
        // On record before it takes effect: a launcher that cannot write its audit log
        // starts nothing.
        cfg.approvals
            .record_plan(&crate::approval_broker::PlanDecisions {
                requested_by: requested_by.map(str::to_string),
                ..crate::approval::plan_decisions(
                    &session_id,
                    &report,
                    Some(manifest_digest.clone()),
                )
            })
            .map_err(|why| {
                SessionError::Host(format!(
                    "the audit log cannot be written ({why}); the session was not started"
                ))
            })?;
        let ready = within(
            answer_by,
            "Apply",
            client.apply(ApplyRequest {
                envelope,
                host_time_unix_millis: unix_now_millis()?,
                session_secret: secret,
            }),
        )
        .await
        .map_err(|s| vm.refusal("Apply", s))?
        .into_inner();
        let wall = Duration::from_secs(manifest.resources.wall_time_secs);
        let workspaces =
            WorkspacePlan::of(&manifest, &report.resolved_mounts, &cfg.policy.protected)
                .map_err(SessionError::Merge)?;
        Ok(Session {
            workspaces,
            report,
            manifest,
            manifest_digest,
            ready,
            time_to_ready: started.elapsed(),
            deadline: tokio::time::Instant::now() + wall,
            client,
            asks,
            host_task,
            vm: Arc::new(std::sync::Mutex::new(vm)),
        })
    }
}

/// A session's place in the approval broker: when the session goes, whatever it has
/// waiting is denied and its `session` grants go with it (once).
struct SessionApprovals {
    broker: Arc<ApprovalBroker>,
    session_id: String,
    ended: bool,
}

impl SessionApprovals {
    fn end(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            self.broker.end_session(&self.session_id);
        }
    }
}

impl Drop for SessionApprovals {
    fn drop(&mut self) {
        self.end();
    }
}

/// The session's `Host` service task: stopped with the session, which also ends the
/// session's asks.
struct HostTask {
    task: tokio::task::JoinHandle<()>,
    /// The session's egress service: dropping it closes every connection.
    egress: Option<crate::egress::EgressTask>,
    /// Dropped after the task is aborted: nothing of the session asks any more.
    approvals: SessionApprovals,
}

impl Drop for HostTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `service` on the VM's host listener until aborted.
fn serve_host(
    service: HostService,
    listener: std::os::unix::net::UnixListener,
) -> Result<tokio::task::JoinHandle<()>, SessionError> {
    let host = |e: std::io::Error| SessionError::Host(format!("the Host service listener: {e}"));
    listener.set_nonblocking(true).map_err(host)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(host)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    Ok(tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(incoming)
            .await;
    }))
}

type SharedVm = Arc<std::sync::Mutex<VmGuard>>;

fn lock(vm: &SharedVm) -> std::sync::MutexGuard<'_, VmGuard> {
    vm.lock().unwrap_or_else(|p| p.into_inner())
}

/// The VM of a session being created or running: destroyed when dropped.
struct VmGuard(Option<Box<dyn Vm>>);

impl VmGuard {
    fn get(&self) -> &dyn Vm {
        self.0.as_deref().expect("the VM lives until destroy")
    }

    fn get_mut(&mut self) -> &mut Box<dyn Vm> {
        self.0.as_mut().expect("the VM lives until destroy")
    }

    /// `VmLost` if the VMM has exited (waiting a moment for it to finish dying),
    /// else `other`.
    fn lost_or(&mut self, other: SessionError, during: &str) -> SessionError {
        let Some(vm) = self.0.as_mut() else {
            return destroyed_during(during);
        };
        match vm.wait_for_exit(Duration::from_millis(300)) {
            Some(status) => SessionError::VmLost {
                during: during.to_string(),
                status: status.to_string(),
                tail: console_tail(&vm.serial_output(), CONSOLE_TAIL_LINES),
                serial_log: vm.serial_log().to_path_buf(),
            },
            None => other,
        }
    }

    /// Waits until the enforcer says on the console that it listens (the VMM exiting
    /// first is `VmLost`; the deadline passing is `BootTimeout`).
    async fn wait_for_enforcer(&mut self, deadline: Instant) -> Result<(), SessionError> {
        loop {
            let console = self.get().serial_output();
            if console.contains(airlock_proto::ENFORCER_LISTENING_LINE) {
                return Ok(());
            }
            if self.get_mut().exited().is_some() {
                let e = SessionError::Host("the VM exited while booting".into());
                return Err(self.lost_or(e, "boot"));
            }
            if Instant::now() >= deadline {
                return Err(SessionError::BootTimeout {
                    serial_log: self.get().serial_log().to_path_buf(),
                    tail: console_tail(&console, CONSOLE_TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn refusal(&mut self, call: &'static str, s: tonic::Status) -> SessionError {
        let Some(vm) = self.0.as_deref() else {
            return destroyed_during(call);
        };
        let serial_log = vm.serial_log().to_path_buf();
        let e = SessionError::Enforcer {
            call,
            code: s.code(),
            message: s.message().to_string(),
            serial_log,
        };
        if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
            self.lost_or(e, call)
        } else {
            e
        }
    }
}

/// A command's stream (which shares the VM) outlived the session's destroy.
fn destroyed_during(during: &str) -> SessionError {
    SessionError::Host(format!(
        "the session was destroyed during {during}: its VM is gone"
    ))
}

/// `call` to the enforcer, given until `deadline`: a guest that never answers is a
/// refusal with a reason, not a caller waiting forever.
async fn within<T>(
    deadline: tokio::time::Instant,
    what: &str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout_at(deadline, call).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "the enforcer did not answer {what} before its deadline"
        ))),
    }
}

/// How long the guest gets to stream back what `collect` asked for.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest silence of the guest while it streams workspace changes.
pub const MERGE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Drop for VmGuard {
    fn drop(&mut self) {
        if let Some(vm) = self.0.take() {
            let _ = vm.destroy();
        }
    }
}

/// How much of the console an error carries (the VM directory, and with it the log,
/// is gone by the time anyone reads the error).
const CONSOLE_TAIL_LINES: usize = 40;

/// The last `lines` lines of a console, each cut at [`CONSOLE_LINE_CHARS`]: the tail
/// goes into error messages (and gRPC statuses), so the guest must not size it.
fn console_tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| match l.char_indices().nth(CONSOLE_LINE_CHARS) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Longest console line an error message quotes.
const CONSOLE_LINE_CHARS: usize = 300;

fn unix_now() -> Result<u64, SessionError> {
    Ok(unix_now_millis()? as u64 / 1000)
}

fn unix_now_millis() -> Result<i64, SessionError> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| SessionError::Host("the host clock is before 1970".into()))
}

/// The virtio-fs shares for a manifest's mounts: the host paths the policy decided
/// (symlinks already resolved), each a directory, served as its owner.
fn shares_for(manifest: &Manifest, report: &Report) -> Result<Vec<Share>, SessionError> {
    let mut shares = Vec::new();
    for (index, m) in manifest.mounts.iter().enumerate() {
        let path =
            report.resolved_mounts.get(index).cloned().ok_or_else(|| {
                SessionError::Host(format!("mounts[{index}]: no decided host path"))
            })?;
        let bad = |problem: String| SessionError::Share {
            index,
            path: path.clone(),
            problem,
        };
        // The decided path itself, not whatever a symlink put there since.
        let meta = std::fs::symlink_metadata(&path).map_err(|e| bad(e.to_string()))?;
        if !meta.is_dir() {
            return Err(bad(
                "is not a directory (virtio-fs shares directories)".into()
            ));
        }
        shares.push(Share {
            tag: m.tag.clone(),
            host_dir: PathBuf::from(&path),
            read_only: m.mode != Access::RwLive,
            owner: (meta.uid(), meta.gid()),
        });
    }
    Ok(shares)
}

/// The most stdin one command takes: it travels whole in the Exec request, which
/// must stay under gRPC's 4 MiB message limit.
pub const MAX_EXEC_STDIN_BYTES: usize = 2 << 20;

/// A command to run in a session.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// argv (argv[0]: the manifest's entrypoint or a granted tool).
    pub argv: Vec<String>,
    /// Working directory (default: the manifest's).
    pub cwd: Option<String>,
    /// Extra environment (PATH cannot be changed).
    pub env: Vec<(String, String)>,
    /// Bytes for its stdin (then end of file).
    pub stdin: Vec<u8>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    /// Exit code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
    /// The sandbox stopped it (wall time), with the reason.
    Stopped(String),
}

impl ExecEnd {
    /// How it ended, as merging sees it.
    pub fn command_end(&self) -> CommandEnd {
        match self {
            ExecEnd::Exited(c) => CommandEnd::Exited(*c),
            ExecEnd::Signaled(s) => CommandEnd::Stopped(format!("killed by signal {s}")),
            ExecEnd::Stopped(why) => CommandEnd::Stopped(why.clone()),
        }
    }

    /// Shell-style status ([`ProcessEnd::exit_code`]): the code, 128 + signal, 124 when
    /// stopped for time.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecEnd::Exited(c) => ProcessEnd::Exited(*c),
            ExecEnd::Signaled(s) => ProcessEnd::Signaled(*s),
            ExecEnd::Stopped(_) => ProcessEnd::WallTimeExceeded,
        }
        .exit_code()
    }
}

/// What a running command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// Started, with the id `signal` takes.
    Started(String),
    /// Bytes on its stdout.
    Stdout(Vec<u8>),
    /// Bytes on its stderr.
    Stderr(Vec<u8>),
    /// The last event.
    Ended(ExecEnd),
}

/// A terminal's size (rows, columns), for commands run on one.
pub use airlock_proto::pb::WindowSize;

/// Largest stdin piece one input message carries (gRPC messages stay far below the
/// 4 MiB limit).
const INPUT_PIECE: usize = 64 * 1024;
/// Input messages queued on the host for one command; with the guest's own bound, what
/// a fast sender can have in flight is capped, and [`InputSender::stdin`] waits.
const INPUT_MESSAGES_IN_FLIGHT: usize = 16;

/// Where the input of a command started by [`Session::exec_interactive`] goes.
/// Dropping it is end of file, as [`InputSender::eof`].
#[derive(Debug)]
pub struct InputSender {
    tx: Option<tokio::sync::mpsc::Sender<EnforcerExecInput>>,
}

impl InputSender {
    async fn send(&mut self, input: enforcer_exec_input::Input) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        let sent = tx
            .send(EnforcerExecInput { input: Some(input) })
            .await
            .is_ok();
        if !sent {
            self.tx = None;
        }
        sent
    }

    /// Sends `bytes` to the command's stdin (its terminal's input with a tty), waiting
    /// while as much as the guest and this side hold is in flight. `false` once the
    /// command takes no more input (it ended, or `eof` was sent): the bytes are dropped.
    pub async fn stdin(&mut self, bytes: &[u8]) -> bool {
        for piece in bytes.chunks(INPUT_PIECE) {
            if !self
                .send(enforcer_exec_input::Input::Stdin(piece.to_vec()))
                .await
            {
                return false;
            }
        }
        true
    }

    /// No more stdin: the command's stdin is closed once what was sent is written. On
    /// a terminal nothing is closed (send Ctrl-D, 0x04, as a person would); only
    /// window sizes may follow.
    pub async fn eof(&mut self) -> bool {
        self.send(enforcer_exec_input::Input::Eof(StdinEof {}))
            .await
    }

    /// The command's terminal is now `size` (nothing without a tty).
    pub async fn resize(&mut self, size: WindowSize) -> bool {
        self.send(enforcer_exec_input::Input::Resize(size)).await
    }

    /// Resolves when the command's input stream is gone (the command's call ended).
    pub async fn closed(&self) {
        if let Some(tx) = &self.tx {
            tx.closed().await;
        }
    }
}

/// The events of one command. Independent of the session's borrow, so the session can
/// signal the command while its events are read.
pub struct ExecStream {
    inner: tonic::Streaming<ExecEvent>,
    ended: bool,
    deadline: tokio::time::Instant,
    wall_secs: u64,
    vm: SharedVm,
    /// The connection of a command that has one of its own, kept while its events are.
    _connection: Option<EnforcerClient<Channel>>,
}

impl ExecStream {
    /// The next event; `None` after `Ended`. A VM that died, or the session's wall
    /// time running out, ends the stream with an error.
    pub async fn next(&mut self) -> Option<Result<ExecOutput, SessionError>> {
        if self.ended {
            return None;
        }
        let got = tokio::time::timeout_at(self.deadline, self.inner.message()).await;
        let item = match got {
            Err(_) => {
                self.ended = true;
                return Some(Err(SessionError::WallTime(self.wall_secs)));
            }
            Ok(Err(status)) => {
                self.ended = true;
                return Some(Err(lock(&self.vm).refusal("Exec", status)));
            }
            Ok(Ok(None)) => {
                self.ended = true;
                let e = SessionError::Host(
                    "the enforcer ended the command's stream without an exit status".into(),
                );
                return Some(Err(lock(&self.vm).lost_or(e, "Exec")));
            }
            Ok(Ok(Some(ev))) => ev,
        };
        Some(Ok(match item.event {
            Some(exec_event::Event::Started(s)) => ExecOutput::Started(s.exec_id),
            Some(exec_event::Event::Stdout(b)) => ExecOutput::Stdout(b),
            Some(exec_event::Event::Stderr(b)) => ExecOutput::Stderr(b),
            Some(exec_event::Event::Exit(st)) => {
                self.ended = true;
                ExecOutput::Ended(if !st.stopped_by_sandbox.is_empty() {
                    ExecEnd::Stopped(st.stopped_by_sandbox)
                } else {
                    match st.status {
                        Some(exit_status::Status::Code(c)) => ExecEnd::Exited(c),
                        Some(exit_status::Status::Signal(s)) => ExecEnd::Signaled(s),
                        None => ExecEnd::Stopped("no status".into()),
                    }
                })
            }
            // The guest never sends merge reports: merging is the launcher's.
            Some(exec_event::Event::Merged(_)) | None => {
                return Some(Err(SessionError::Host(
                    "an empty or unexpected exec event from the guest".into(),
                )))
            }
        }))
    }
}

/// A ready VM session. Dropping it destroys the VM.
pub struct Session {
    workspaces: WorkspacePlan,
    report: Report,
    manifest: Manifest,
    manifest_digest: String,
    ready: ReadyReport,
    time_to_ready: Duration,
    deadline: tokio::time::Instant,
    client: EnforcerClient<Channel>,
    asks: Arc<std::sync::Mutex<Vec<AskRecord>>>,
    host_task: HostTask,
    vm: SharedVm,
}

/// Where a session's VM is, for diagnostics and tests.
#[derive(Debug, Clone)]
pub struct VmInfo {
    /// The VMM and its helpers (the VMM last).
    pub pids: Vec<u32>,
    /// The per-VM directory.
    pub state_dir: PathBuf,
    /// The guest's console log.
    pub serial_log: PathBuf,
}

/// Largest file `collect` accepts from a guest (the enforcer has the same cap, from the
/// same constant; the host does not rely on it).
pub use airlock_proto::MAX_COLLECT_BYTES;

/// A file `collect` brought back.
pub type Collected = CollectedPath;

impl Session {
    /// The session id (from the manifest).
    pub fn id(&self) -> &str {
        &self.manifest.session_id
    }

    /// The decisions it was created under.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The manifest it runs under.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// `sha256:` of the signed envelope.
    pub fn manifest_digest(&self) -> &str {
        &self.manifest_digest
    }

    /// What the enforcer applied.
    pub fn ready(&self) -> &ReadyReport {
        &self.ready
    }

    /// When the session's wall time runs out (commands are refused after it).
    pub fn deadline(&self) -> tokio::time::Instant {
        self.deadline
    }

    /// From the VMM's start to the ready report.
    pub fn time_to_ready(&self) -> Duration {
        self.time_to_ready
    }

    /// The VM's processes and files.
    pub fn vm_info(&self) -> VmInfo {
        let vm = lock(&self.vm);
        let vm = vm.get();
        VmInfo {
            pids: vm.pids(),
            state_dir: vm.state_dir().to_path_buf(),
            serial_log: vm.serial_log().to_path_buf(),
        }
    }

    /// The run-time asks the session's broker made, with their answers.
    pub fn asks(&self) -> Vec<AskRecord> {
        self.asks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The guest's console so far.
    pub fn serial_output(&self) -> String {
        lock(&self.vm).get().serial_output()
    }

    /// Whether the manifest lets `argv0` run: its entrypoint, or a granted tool by
    /// name. Checked on the host before the guest (which checks again) sees the call.
    pub fn may_exec(&self, argv0: &str) -> Result<(), SessionError> {
        let m = &self.manifest;
        let entry = m.command.argv.first().map(String::as_str);
        // A granted tool by any spelling (`wc`, `/usr/bin/wc`): the enforcer runs it
        // through its shim, so the broker decides it like any other call.
        let name = airlock_proto::tool_invocation::program_name(argv0);
        let tool = m.tools.iter().any(|t| t.program == name);
        if entry == Some(argv0) || tool {
            return Ok(());
        }
        Err(SessionError::NotGranted {
            argv0: argv0.to_string(),
            entrypoint: entry.unwrap_or_default().to_string(),
            tools: m.tools.iter().map(|t| t.program.clone()).collect(),
        })
    }

    /// The guest's request for `spec` (on a terminal of `tty`'s size, if any), once the
    /// host's checks passed: the manifest lets it run, its stdin fits in one message,
    /// the session's wall time has not run out.
    fn exec_request(
        &self,
        spec: ExecSpec,
        tty: Option<WindowSize>,
    ) -> Result<EnforcerExecRequest, SessionError> {
        self.may_exec(spec.argv.first().map(String::as_str).unwrap_or_default())?;
        if spec.stdin.len() > MAX_EXEC_STDIN_BYTES {
            return Err(SessionError::StdinTooLarge {
                len: spec.stdin.len(),
            });
        }
        if tokio::time::Instant::now() >= self.deadline {
            return Err(SessionError::WallTime(
                self.manifest.resources.wall_time_secs,
            ));
        }
        Ok(EnforcerExecRequest {
            argv: spec.argv,
            cwd: spec.cwd.unwrap_or_default(),
            env: spec.env.into_iter().collect(),
            stdin: spec.stdin,
            tty: tty.is_some(),
            window: tty,
        })
    }

    /// The events of a command the guest started.
    fn exec_stream(
        &self,
        started: Result<tonic::Response<tonic::Streaming<ExecEvent>>, tonic::Status>,
    ) -> Result<ExecStream, SessionError> {
        let inner = match started {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(lock(&self.vm).refusal("Exec", s)),
        };
        Ok(ExecStream {
            inner,
            ended: false,
            deadline: self.deadline,
            wall_secs: self.manifest.resources.wall_time_secs,
            vm: Arc::clone(&self.vm),
            _connection: None,
        })
    }

    /// Starts a command; its events come from the returned stream.
    pub async fn exec(&mut self, spec: ExecSpec) -> Result<ExecStream, SessionError> {
        let req = self.exec_request(spec, None)?;
        let started = within(self.deadline, "Exec", self.client.exec(req)).await;
        self.exec_stream(started)
    }

    /// Starts a command whose input keeps coming while it runs: `spec.stdin` is its
    /// first input (not followed by end of file), the returned [`InputSender`] sends
    /// the rest, window sizes and the end of file. With `tty` (its initial size) the
    /// command runs on a pseudo-terminal allocated in the guest: its stdin, stdout and
    /// stderr and its controlling terminal, so all its output comes as stdout.
    pub async fn exec_interactive(
        &mut self,
        spec: ExecSpec,
        tty: Option<WindowSize>,
    ) -> Result<(InputSender, ExecStream), SessionError> {
        let req = self.exec_request(spec, tty)?;
        // A connection of its own: a command that stops reading its stdin stops the
        // guest reading this stream, and HTTP/2 flow control then holds back the whole
        // connection once its window is spent; on the session's shared connection
        // that would stall every other call (a `Signal` to kill that very command).
        let (uds, serial) = {
            let vm = lock(&self.vm);
            (
                vm.get().vsock_uds().to_path_buf(),
                vm.get().serial_log().to_path_buf(),
            )
        };
        let connect_by = self
            .deadline
            .into_std()
            .min(Instant::now() + Duration::from_secs(10));
        let channel = grpc_channel(&uds, ENFORCER_PORT, connect_by, &serial)
            .await
            .map_err(|e| {
                let mut vm = lock(&self.vm);
                let tail = console_tail(&vm.get().serial_output(), CONSOLE_TAIL_LINES);
                vm.lost_or(SessionError::Unreachable { source: e, tail }, "Exec")
            })?;
        let mut client = EnforcerClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(INPUT_MESSAGES_IN_FLIGHT);
        tx.try_send(EnforcerExecInput {
            input: Some(enforcer_exec_input::Input::Start(req)),
        })
        .expect("a new channel has room");
        let started = within(
            self.deadline,
            "Exec",
            client.exec_interactive(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let mut stream = self.exec_stream(started)?;
        stream._connection = Some(client);
        Ok((InputSender { tx: Some(tx) }, stream))
    }

    /// Runs a command to its end, passing output to `out(is_stderr, bytes)`.
    pub async fn run(
        &mut self,
        spec: ExecSpec,
        out: &mut (dyn FnMut(bool, &[u8]) + Send),
    ) -> Result<ExecEnd, SessionError> {
        let mut stream = self.exec(spec).await?;
        while let Some(ev) = stream.next().await {
            match ev? {
                ExecOutput::Stdout(b) => out(false, &b),
                ExecOutput::Stderr(b) => out(true, &b),
                ExecOutput::Started(_) => {}
                ExecOutput::Ended(end) => return Ok(end),
            }
        }
        Err(SessionError::Host(
            "the command's stream ended early".into(),
        ))
    }

    /// Sends `signal` to a running command; `false` if it had already ended.
    pub async fn signal(&mut self, exec_id: &str, signal: i32) -> Result<bool, SessionError> {
        let req = SignalRequest {
            exec_id: exec_id.into(),
            signal,
        };
        let answer_by = tokio::time::Instant::now() + Duration::from_secs(10);
        match within(answer_by, "Signal", self.client.signal(req)).await {
            Ok(r) => Ok(r.into_inner().delivered),
            Err(s) => Err(lock(&self.vm).refusal("Signal", s)),
        }
    }

    /// Copies `guest_paths` (regular files; relative ones from the command's cwd) into
    /// `dest`, which must exist. Each lands at `dest/<n>-<file name>` so no guest path
    /// can place a file outside `dest`; returns where each went with its digest.
    pub async fn collect(
        &mut self,
        guest_paths: &[String],
        dest: &Path,
    ) -> Result<Vec<Collected>, SessionError> {
        use std::io::Write;
        let req = CollectRequest {
            guest_paths: guest_paths.to_vec(),
        };
        let answer_by = tokio::time::Instant::now() + COLLECT_TIMEOUT;
        let mut stream = match within(answer_by, "Collect", self.client.collect(req)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(lock(&self.vm).refusal("Collect", s)),
        };
        let mut done: Vec<Collected> = Vec::new();
        let mut current: Option<(String, std::fs::File, PathBuf, Sha256, u64)> = None;
        let write_err = |path: &Path, e: std::io::Error| SessionError::Collect {
            path: path.to_path_buf(),
            problem: e.to_string(),
        };
        loop {
            let chunk = match within(answer_by, "Collect", stream.message()).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(s) => return Err(lock(&self.vm).refusal("Collect", s)),
            };
            // The guest is not trusted to stay within the request: chunks must be for
            // the requested paths, in order, each file within the host's own cap.
            let unasked = |problem: String| SessionError::Collect {
                path: dest.to_path_buf(),
                problem,
            };
            if current.as_ref().is_none_or(|c| c.0 != chunk.guest_path) {
                let expected = guest_paths.get(done.len());
                if current.is_some() || expected != Some(&chunk.guest_path) {
                    return Err(unasked(format!(
                        "the guest sent {:?} where {expected:?} was due",
                        chunk.guest_path
                    )));
                }
                let name = Path::new(&chunk.guest_path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .filter(|n| !n.is_empty() && n != "." && n != "..")
                    .unwrap_or_else(|| "file".into());
                let host = dest.join(format!("{}-{name}", done.len()));
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&host)
                    .map_err(|e| write_err(&host, e))?;
                current = Some((chunk.guest_path.clone(), f, host, Sha256::new(), 0));
            }
            let (_, f, host, hash, size) = current.as_mut().expect("set above");
            // Checked before writing: the host never holds more than the cap.
            *size = size.saturating_add(chunk.data.len() as u64);
            if *size > MAX_COLLECT_BYTES {
                return Err(unasked(format!(
                    "{:?} is over the {MAX_COLLECT_BYTES}-byte collect limit",
                    chunk.guest_path
                )));
            }
            f.write_all(&chunk.data).map_err(|e| write_err(host, e))?;
            hash.update(&chunk.data);
            if chunk.eof {
                let (guest_path, _, host, hash, size) = current.take().expect("set above");
                done.push(CollectedPath {
                    guest_path,
                    host_path: host.display().to_string(),
                    size,
                    sha256: hex::encode(hash.finalize()),
                });
            }
        }
        if done.len() != guest_paths.len() {
            return Err(SessionError::Collect {
                path: dest.to_path_buf(),
                problem: format!("{} of {} paths came back", done.len(), guest_paths.len()),
            });
        }
        Ok(done)
    }

    /// Does the session have copy-on-write workspaces (anything to merge)?
    pub fn has_workspaces(&self) -> bool {
        !self.workspaces.is_empty()
    }

    /// Reads what the agent changed in the copy-on-write workspaces so far and runs it
    /// through the merge-back gate: applied all or nothing (`Apply`), or only reported
    /// (`DryRun`). Merging again later applies only what changed since (unchanged
    /// entries are skipped). An error means nothing of this merge reached the host.
    pub async fn merge(&mut self, mode: MergeMode) -> Result<MergeReport, SessionError> {
        let mut gate = self.workspaces.gate(mode).map_err(SessionError::Merge)?;
        if self.workspaces.is_empty() {
            return gate
                .finish()
                .map_err(|e| SessionError::Merge(e.to_string()));
        }
        let mut stream = match within(
            tokio::time::Instant::now() + MERGE_IDLE_TIMEOUT,
            "Changes",
            self.client.changes(ChangesRequest {}),
        )
        .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(lock(&self.vm).refusal("Changes", s)),
        };
        loop {
            // The bound is on silence, not on the whole merge: a large workspace takes
            // as long as its bytes take to cross vsock.
            let answer_by = tokio::time::Instant::now() + MERGE_IDLE_TIMEOUT;
            let chunk = match within(answer_by, "Changes", stream.message()).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(s) => return Err(lock(&self.vm).refusal("Changes", s)),
            };
            let ev = event_of_chunk(chunk).map_err(SessionError::Merge)?;
            gate.feed(ev)
                .map_err(|e| SessionError::Merge(e.to_string()))?;
        }
        let report = gate
            .finish()
            .map_err(|e| SessionError::Merge(e.to_string()))?;
        if !report.dry_run && !report.changes.is_empty() {
            self.tell_the_guest_the_workspaces_changed().await;
        }
        Ok(report)
    }

    /// After a merge changed the host side of the workspaces: the guest forgets its
    /// cached lookups, or a file the merge replaced fails the agent's next open with
    /// ESTALE. Best effort: the merge itself is done; an older enforcer without the
    /// call, or one that does not answer, leaves only that staleness.
    async fn tell_the_guest_the_workspaces_changed(&mut self) {
        let told = within(
            tokio::time::Instant::now() + MERGE_IDLE_TIMEOUT,
            "WorkspaceMerged",
            self.client.workspace_merged(WorkspaceMergedRequest {}),
        )
        .await;
        if let Err(s) = told {
            if s.code() != tonic::Code::Unimplemented {
                eprintln!(
                    "airlock: session {}: the guest was not told of the merge ({}); files the merge replaced may fail with ESTALE in the session",
                    self.id(),
                    s.message()
                );
            }
        }
    }

    /// Merges (or dry-runs) after a command that ended `end`, as `when` says.
    pub async fn merge_after(&mut self, end: &CommandEnd, when: MergeWhen) -> MergeOutcome {
        if !self.has_workspaces() {
            return MergeOutcome::Skipped("the session has no copy-on-write workspace".into());
        }
        let started = Instant::now();
        match when.mode_for(end) {
            None => MergeOutcome::Skipped(end.not_merged_because(when)),
            Some(mode) => match self.merge(mode).await {
                Ok(report) => MergeOutcome::Merged {
                    report,
                    elapsed: started.elapsed(),
                },
                Err(e) => MergeOutcome::Failed(e.to_string()),
            },
        }
    }

    /// Asks the enforcer to power off (briefly), then kills the VM and its helpers and
    /// removes its directory.
    pub async fn destroy(self) -> Result<(), SessionError> {
        self.destroy_with_report().await.map(drop)
    }

    /// [`Session::destroy`], returning the enforcer's answer to the shutdown request
    /// (`None` if it did not answer within the brief wait): its own peak RSS, for
    /// measurements.
    pub async fn destroy_with_report(mut self) -> Result<Option<ShutdownResponse>, SessionError> {
        // First, so what waits is denied as "the session ended" rather than by its
        // channel closing under it.
        self.host_task.approvals.end();
        if let Some(egress) = &self.host_task.egress {
            egress.close();
        }
        let polite = self.client.shutdown(ShutdownRequest {
            reason: "session destroyed".into(),
        });
        let answer = match tokio::time::timeout(Duration::from_secs(1), polite).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        };
        let vm = lock(&self.vm).0.take();
        if let Some(vm) = vm {
            let dir = vm.state_dir().display().to_string();
            vm.destroy()
                .map_err(|e| SessionError::Host(format!("{dir}: {e}")))?;
        }
        Ok(answer)
    }
}
