//! The host channel, guest side: the `Enforcer` gRPC service on a vsock port.
//!
//! Only PID 1 holds a vsock socket (the agent's seccomp filter denies `AF_VSOCK`). The
//! host dials this port through its hybrid-vsock Unix socket. Calls are served in the
//! order the protocol fixes: `Hello` first, then one `Apply` per boot, then `Exec`,
//! `ExecInteractive` (input streamed while the command runs, on pipes or a terminal),
//! `Signal` and `Collect`; `Shutdown` at any time.

use crate::guest_init::InitReport;
use airlock_proto::pb::enforcer_server::{Enforcer, EnforcerServer};
use airlock_proto::pb::{
    AppliedLayer, ApplyRequest, ChangeChunk, ChangesRequest, CollectChunk, CollectRequest,
    EnforcerExecInput, EnforcerExecRequest, ExecEvent, HelloRequest, HelloResponse, ReadyReport,
    ShutdownRequest, ShutdownResponse, SignalRequest, SignalResponse, WorkspaceMergedRequest,
    WorkspaceMergedResponse,
};
use airlock_proto::PROTOCOL_VERSION;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Mutex;
use tonic::{Request, Response, Status};

/// The vsock port the enforcer listens on.
pub const ENFORCER_PORT: u32 = airlock_proto::ENFORCER_VSOCK_PORT;
/// Any CID (the guest's own).
const VMADDR_CID_ANY: u32 = u32::MAX;

/// A new `AF_VSOCK` stream socket (close-on-exec, plus `extra` type flags).
pub fn vsock_stream_socket(extra: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket with constant arguments; returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | extra,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The vsock address `cid:port`.
pub fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; zeroed is valid before we fill it.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = cid;
    addr
}

/// A listening `AF_VSOCK` stream socket on `port` (non-blocking, close-on-exec).
pub fn listen_vsock(port: u32) -> io::Result<OwnedFd> {
    let fd = vsock_stream_socket(libc::SOCK_NONBLOCK)?;
    let addr = vsock_addr(VMADDR_CID_ANY, port);
    // SAFETY: bind/listen on our socket with a live, correctly sized address.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen on our bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Accepts connections on a listening vsock socket as tokio streams. The stream type is
/// tokio's `UnixStream`: it only reads and writes the descriptor, which works for any
/// stream socket.
fn incoming(
    listener: OwnedFd,
) -> io::Result<tokio_stream::wrappers::ReceiverStream<io::Result<tokio::net::UnixStream>>> {
    // SAFETY: the AsyncFd owns the descriptor, so it stays open while registered.
    let listener = unsafe { tokio::io::unix::AsyncFd::register(listener)? };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let mut ready = match listener.readable().await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            // SAFETY: accept4 on our listening socket; no peer address wanted.
            let fd: RawFd = unsafe {
                libc::accept4(
                    listener.get_ref().as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    ready.clear_ready();
                }
                continue;
            }
            // SAFETY: accept4 returned a new connected descriptor we own.
            let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
            let stream = tokio::net::UnixStream::from_std(std_stream);
            if tx.send(stream).await.is_err() {
                return;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// What the service knows and has handed out.
struct State {
    /// The nonce of the last `Hello`; `Apply` must carry a manifest bound to it. Taken
    /// by the first `Apply`, whatever its outcome: one Apply per boot.
    challenge: Option<Vec<u8>>,
    /// What the `Apply` prepared.
    applied: Option<crate::guest_apply::Applied>,
    /// An `Apply` failed after its manifest verified: it may have mounted shares or
    /// linked shims, so this VM takes no other manifest (a refused signature, binding
    /// or expiry changes nothing and may be followed by a right one).
    spoiled: Option<String>,
}

/// The `Enforcer` service.
pub struct EnforcerService {
    init: InitReport,
    next_exec: std::sync::atomic::AtomicU64,
    running: crate::guest_exec::RunningExecs,
    state: Mutex<State>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Whether a host speaking `[min, max]` and this guest can talk; the refusal names both.
pub fn check_protocol(host_max: u32, host_min: u32) -> Result<(), Status> {
    let min = host_min.min(host_max);
    if (min..=host_max).contains(&PROTOCOL_VERSION) {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "protocol mismatch: the host speaks versions {min}..={host_max}, this enforcer speaks {PROTOCOL_VERSION}"
        )))
    }
}

impl EnforcerService {
    /// Starts the command of an `Exec` or `ExecInteractive`.
    fn start_exec(
        &self,
        r: &EnforcerExecRequest,
    ) -> Result<(crate::guest_exec::Events, crate::guest_exec::InputSink), Status> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(applied) = st.applied.as_ref() else {
            return Err(Status::failed_precondition(
                "no manifest applied: Exec needs a successful Apply first",
            ));
        };
        let id = self
            .next_exec
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::guest_exec::start_interactive(applied, r, id, &self.running)
            .map_err(|e| Status::failed_precondition(e.to_string()))
    }

    /// The applied manifest's working directory, or the refusal for `call` before
    /// `Apply`.
    fn applied_cwd(&self, call: &str) -> Result<std::path::PathBuf, Status> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.applied
            .as_ref()
            .map(|a| std::path::PathBuf::from(&a.manifest.command.cwd))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "no manifest applied: {call} needs a successful Apply first"
                ))
            })
    }
}

#[tonic::async_trait]
impl Enforcer for EnforcerService {
    async fn hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloResponse>, Status> {
        let r = req.into_inner();
        check_protocol(r.host_protocol_version, r.host_min_protocol_version)?;
        let mut nonce = vec![0u8; 16];
        getrandom::fill(&mut nonce)
            .map_err(|e| Status::internal(format!("no randomness for the challenge: {e}")))?;
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.applied.is_some() {
                return Err(Status::failed_precondition(
                    "a manifest is already applied in this VM; a new session needs a new VM",
                ));
            }
            if let Some(why) = &st.spoiled {
                return Err(Status::failed_precondition(format!(
                    "an earlier Apply failed part-way ({why}); a new session needs a new VM"
                )));
            }
            st.challenge = Some(nonce.clone());
        }
        Ok(Response::new(HelloResponse {
            guest_protocol_version: PROTOCOL_VERSION,
            enforcer_version: env!("CARGO_PKG_VERSION").to_string(),
            landlock_abi: self.init.landlock_abi,
            challenge_nonce: nonce,
            image_id: self.init.image_id.clone(),
        }))
    }

    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ReadyReport>, Status> {
        use crate::guest_apply::{apply_in_vm, ApplyError};
        let r = req.into_inner();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(challenge) = st.challenge.take() else {
            return Err(Status::failed_precondition(
                ApplyError::NoChallenge.to_string(),
            ));
        };
        match apply_in_vm(
            &self.init,
            &challenge,
            &r.envelope,
            r.host_time_unix_millis,
            &r.session_secret,
        ) {
            Ok(applied) => {
                let report = ReadyReport {
                    session_id: applied.manifest.session_id.clone(),
                    landlock_abi: self.init.landlock_abi,
                    layers: applied
                        .layers
                        .iter()
                        .map(|(name, detail)| AppliedLayer {
                            name: name.clone(),
                            detail: detail.clone(),
                        })
                        .collect(),
                };
                println!(
                    "airlock-enforcer: ready: session {}",
                    applied.manifest.session_id
                );
                st.applied = Some(applied);
                Ok(Response::new(report))
            }
            Err(e) => {
                println!("airlock-enforcer: apply refused: {e}");
                if !e.is_refusal() {
                    st.spoiled = Some(e.to_string());
                }
                Err(if e.is_refusal() {
                    Status::permission_denied(e.to_string())
                } else {
                    Status::failed_precondition(e.to_string())
                })
            }
        }
    }

    type ExecStream = BoxStream<ExecEvent>;
    async fn exec(
        &self,
        req: Request<EnforcerExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let (events, input) = self.start_exec(&req.into_inner())?;
        // The whole stdin came with the request: end of file after it.
        drop(input);
        Ok(Response::new(Box::pin(events)))
    }

    type ExecInteractiveStream = BoxStream<ExecEvent>;
    async fn exec_interactive(
        &self,
        req: Request<tonic::Streaming<EnforcerExecInput>>,
    ) -> Result<Response<Self::ExecInteractiveStream>, Status> {
        use airlock_proto::pb::enforcer_exec_input::Input;
        let mut inbound = req.into_inner();
        let start = match inbound.message().await? {
            Some(EnforcerExecInput {
                input: Some(Input::Start(start)),
            }) => start,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "ExecInteractive: the first message must be `start`",
                ))
            }
            None => {
                return Err(Status::invalid_argument(
                    "ExecInteractive: the stream ended before its `start`",
                ))
            }
        };
        let (events, mut input) = self.start_exec(&start)?;
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = input.ended() => break,
                    m = inbound.message() => m,
                };
                match msg.map(|m| m.and_then(|m| m.input)) {
                    Ok(Some(Input::Stdin(bytes))) => {
                        input.stdin(&bytes).await;
                    }
                    Ok(Some(Input::Eof(_))) => input.eof(),
                    Ok(Some(Input::Resize(size))) => input.resize(&size),
                    // A second `start` starts nothing.
                    Ok(Some(Input::Start(_))) => {}
                    // The host half-closed its stream (or it broke): end of input.
                    Ok(None) | Err(_) => break,
                }
            }
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn signal(
        &self,
        req: Request<SignalRequest>,
    ) -> Result<Response<SignalResponse>, Status> {
        let r = req.into_inner();
        self.applied_cwd("Signal")?;
        let delivered = crate::guest_exec::signal(&self.running, &r.exec_id, r.signal)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(SignalResponse { delivered }))
    }

    type ChangesStream = BoxStream<ChangeChunk>;
    async fn changes(
        &self,
        _req: Request<ChangesRequest>,
    ) -> Result<Response<Self::ChangesStream>, Status> {
        let tags = {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(applied) = st.applied.as_ref() else {
                return Err(Status::failed_precondition(
                    "no manifest applied: Changes needs a successful Apply first",
                ));
            };
            applied.workspaces.clone()
        };
        Ok(Response::new(Box::pin(
            crate::workspace_layer::changes_stream(
                tags,
                std::path::PathBuf::from(crate::workspace_layer::VM_SCRATCH_DIR),
            ),
        )))
    }

    async fn workspace_merged(
        &self,
        _req: Request<WorkspaceMergedRequest>,
    ) -> Result<Response<WorkspaceMergedResponse>, Status> {
        {
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if st.applied.is_none() {
                return Err(Status::failed_precondition(
                    "no manifest applied: WorkspaceMerged needs a successful Apply first",
                ));
            }
        }
        crate::workspace_layer::forget_cached_lookups()
            .map_err(|e| Status::internal(format!("dropping the dentry cache: {e}")))?;
        Ok(Response::new(WorkspaceMergedResponse {}))
    }

    type CollectStream = BoxStream<CollectChunk>;
    async fn collect(
        &self,
        req: Request<CollectRequest>,
    ) -> Result<Response<Self::CollectStream>, Status> {
        let cwd = self.applied_cwd("Collect")?;
        Ok(Response::new(Box::pin(
            crate::guest_collect::collect_stream(req.into_inner().guest_paths, cwd),
        )))
    }

    async fn shutdown(
        &self,
        req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        let enforcer_peak_rss_kib = peak_rss_kib();
        println!(
            "airlock-enforcer: shutdown requested by the host: {}; peak RSS (VmHWM) {enforcer_peak_rss_kib} kB",
            req.into_inner().reason
        );
        if let Some(line) = crate::egress_funnel::dropped_summary() {
            println!("airlock-enforcer: {line}");
        }
        let _ = self.shutdown.send(true);
        Ok(Response::new(ShutdownResponse {
            enforcer_peak_rss_kib,
        }))
    }
}

/// This process's peak resident set size, KiB: `VmHWM` of `/proc/self/status` (a
/// process always sees its own entry, whatever `hidepid` hides from others); 0 if it
/// cannot be read.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Serves the `Enforcer` service on [`ENFORCER_PORT`] until the host asks for shutdown
/// (the reply is flushed first, and a connection that lingers does not hold the VM up
/// for more than two seconds), then returns.
pub fn serve_until_shutdown(init: InitReport) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = listen_vsock(ENFORCER_PORT)?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let service = EnforcerService {
            init,
            next_exec: std::sync::atomic::AtomicU64::new(1),
            running: Default::default(),
            state: Mutex::new(State {
                challenge: None,
                applied: None,
                spoiled: None,
            }),
            shutdown: tx,
        };
        println!("{} {ENFORCER_PORT}", airlock_proto::ENFORCER_LISTENING_LINE);
        let requested = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|&down| down).await;
        };
        let graceful = {
            let rx = rx.clone();
            async move {
                requested(rx).await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        let served = tonic::transport::Server::builder().serve_with_incoming_shutdown(
            EnforcerServer::new(service),
            incoming(listener)?,
            graceful,
        );
        tokio::select! {
            r = served => r.map_err(io::Error::other),
            _ = async {
                requested(rx).await;
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            } => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_rss_is_read_from_the_process_own_status() {
        assert!(super::peak_rss_kib() > 0);
    }
}
