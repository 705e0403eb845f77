//! Run-time asks decided on the host: the broker's [`Asker`] calls the launcher's
//! `Host.Ask` with the session id and the session's secret. In a VM the call goes over
//! vsock (CID 2, [`airlock_proto::HOST_VSOCK_PORT`]), one connection per ask; under
//! process isolation over a socket the launcher handed to the enforcer, one HTTP/2
//! connection for the whole session. Anything short of an explicit allow from the host
//! — no connection, an error, an unknown verdict — is a deny, with the reason passed on
//! to the agent.

use crate::broker::{AskRequest, Asker, DecisionReport};
use airlock_proto::pb::host_client::HostClient;
use airlock_proto::verdict::Verdict;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// The host's vsock CID.
const VMADDR_CID_HOST: u32 = 2;
/// How long one ask may take, connection included (the broker's own ask timeout is the
/// outer bound).
const ASK_RPC_TIMEOUT: Duration = Duration::from_secs(110);

/// Asks the launcher.
pub struct HostAsker {
    session_id: String,
    secret: Vec<u8>,
    transport: Transport,
}

enum Transport {
    /// A fresh vsock connection per ask.
    Vsock,
    /// One connection handed over by the launcher, shared by every ask; the runtime
    /// that drives it is made at the first ask (never before the sandbox is set up:
    /// `unshare(CLONE_NEWUSER)` needs a single-threaded process).
    Handed(Box<Handed>),
}

use tonic::transport::Channel;

struct Handed {
    stream: std::sync::Mutex<Option<std::os::unix::net::UnixStream>>,
    client: std::sync::OnceLock<Result<(tokio::runtime::Runtime, HostClient<Channel>), String>>,
}

impl HostAsker {
    /// An asker for this session that reaches the host over vsock.
    pub fn new(session_id: String, secret: Vec<u8>) -> HostAsker {
        HostAsker {
            session_id,
            secret,
            transport: Transport::Vsock,
        }
    }

    /// An asker for this session that reaches the host over `stream`, a connected
    /// socket the launcher serves `Host` on (close-on-exec: the agent never holds it).
    pub fn over_stream(
        session_id: String,
        secret: Vec<u8>,
        stream: std::os::unix::net::UnixStream,
    ) -> HostAsker {
        HostAsker {
            session_id,
            secret,
            transport: Transport::Handed(Box::new(Handed {
                stream: std::sync::Mutex::new(Some(stream)),
                client: std::sync::OnceLock::new(),
            })),
        }
    }
}

/// A gRPC channel whose one connection is `stream` (a reconnect finds nothing: there is
/// no other way to the host, so later asks fail and are denied).
async fn channel_over(stream: std::os::unix::net::UnixStream) -> Result<Channel, String> {
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("host channel: {e}"))?;
    let stream = std::sync::Mutex::new(Some(stream));
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let s = stream.lock().unwrap_or_else(|p| p.into_inner()).take();
        async move {
            let s = s.ok_or_else(|| std::io::Error::other("the host channel is gone"))?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::from_std(s)?,
            ))
        }
    });
    tonic::transport::Endpoint::from_static("http://host.airlock")
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("host channel: {e}"))
}

/// A connected vsock stream to the host's `port`.
pub(crate) fn connect_host_vsock(port: u32) -> std::io::Result<std::os::unix::net::UnixStream> {
    use crate::host_channel::{vsock_addr, vsock_stream_socket};
    let fd = vsock_stream_socket(0)?;
    let addr = vsock_addr(VMADDR_CID_HOST, port);
    // SAFETY: connect on our socket with a live, correctly sized address.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Any connected stream socket reads and writes like a Unix stream.
    Ok(std::os::unix::net::UnixStream::from(fd))
}

fn ask_message(session_id: &str, secret: &[u8], r: &AskRequest) -> airlock_proto::pb::AskRequest {
    airlock_proto::pb::AskRequest {
        session_id: session_id.to_string(),
        session_secret: secret.to_vec(),
        kind: "tool".into(),
        program: r.program.clone(),
        argv: r.argv.clone(),
        cwd: r.cwd.clone(),
        binary_sha256: r.binary_sha256.clone(),
        rule_id: r.rule_id.clone(),
        reaches: r.reaches.clone(),
        ..Default::default()
    }
}

/// Sends one ask on `client` and reads the verdict: only an explicit allow allows.
async fn ask_on(
    mut client: HostClient<Channel>,
    message: airlock_proto::pb::AskRequest,
) -> Result<(Verdict, String), String> {
    let reply = client
        .ask(message)
        .await
        .map_err(|s| format!("the host refused the ask: {}", s.message()))?
        .into_inner();
    let verdict = airlock_proto::pb::Verdict::try_from(reply.verdict)
        .map(Verdict::from)
        .unwrap_or(Verdict::Deny);
    let reason = if reply.reason.trim().is_empty() {
        "the launcher gave no reason".to_string()
    } else {
        reply.reason
    };
    // Only allow and deny are answers; a host that answers "ask" again answered nothing.
    Ok(match verdict {
        Verdict::Allow => (Verdict::Allow, reason),
        _ => (Verdict::Deny, reason),
    })
}

fn timed_out() -> String {
    format!(
        "the host did not answer within {} s",
        ASK_RPC_TIMEOUT.as_secs()
    )
}

impl HostAsker {
    /// Runs `call` against the host's `Host` service over this session's transport,
    /// within [`ASK_RPC_TIMEOUT`].
    fn call<T, F, Fut>(&self, call: F) -> Result<T, String>
    where
        F: FnOnce(HostClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        match &self.transport {
            Transport::Vsock => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("no runtime to reach the host: {e}"))?;
                rt.block_on(async {
                    let over_vsock = async {
                        let stream = connect_host_vsock(airlock_proto::HOST_VSOCK_PORT)
                            .map_err(|e| format!("the host channel is unreachable ({e})"))?;
                        call(HostClient::new(channel_over(stream).await?)).await
                    };
                    tokio::time::timeout(ASK_RPC_TIMEOUT, over_vsock)
                        .await
                        .unwrap_or_else(|_| Err(timed_out()))
                })
            }
            Transport::Handed(handed) => {
                let Handed { stream, client } = handed.as_ref();
                let made = client.get_or_init(|| {
                    // Concurrent calls each use `block_on`; a current-thread runtime
                    // hands its driver from one to the next.
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("no runtime to reach the host: {e}"))?;
                    let s = stream
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take()
                        .ok_or("the host channel is gone")?;
                    let channel = rt.block_on(channel_over(s))?;
                    Ok((rt, HostClient::new(channel)))
                });
                let (rt, client) = made.as_ref().map_err(Clone::clone)?;
                let called = call(client.clone());
                rt.block_on(async { tokio::time::timeout(ASK_RPC_TIMEOUT, called).await })
                    .unwrap_or_else(|_| Err(timed_out()))
            }
        }
    }
}

impl Asker for HostAsker {
    fn ask(&self, request: &AskRequest) -> (Verdict, String) {
        let message = ask_message(&self.session_id, &self.secret, request);
        self.call(|client| ask_on(client, message))
            .unwrap_or_else(|why| (Verdict::Deny, why))
    }

    fn record(&self, report: &DecisionReport) -> Result<(), String> {
        let r = &report.invocation;
        let message = airlock_proto::pb::RecordRequest {
            session_id: self.session_id.clone(),
            session_secret: self.secret.clone(),
            program: r.program.clone(),
            argv: r.argv.clone(),
            cwd: r.cwd.clone(),
            binary_sha256: r.binary_sha256.clone(),
            verdict: airlock_proto::pb::Verdict::from(report.verdict) as i32,
            rule_id: r.rule_id.clone(),
        };
        self.call(|mut client| async move {
            client
                .record(message)
                .await
                .map(drop)
                .map_err(|s| format!("the host refused to record it: {}", s.message()))
        })
    }
}
