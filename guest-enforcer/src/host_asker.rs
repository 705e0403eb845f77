//! Run-time asks decided on the host: the broker's [`Asker`] in the VM calls the
//! launcher's `Host.Ask` over vsock (CID 2, [`airlock_proto::HOST_VSOCK_PORT`]) with the
//! session id and the secret `Apply` handed over. Anything short of an explicit allow
//! from the host — no connection, an error, an unknown verdict — is a deny, with the
//! reason passed on to the agent.

use crate::broker::{AskRequest, Asker};
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
}

impl HostAsker {
    /// An asker for this session.
    pub fn new(session_id: String, secret: Vec<u8>) -> HostAsker {
        HostAsker { session_id, secret }
    }
}

/// A connected vsock stream to the host's `port`.
fn connect_host_vsock(port: u32) -> std::io::Result<std::os::unix::net::UnixStream> {
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

async fn ask_host(
    session_id: String,
    secret: Vec<u8>,
    request: AskRequest,
) -> Result<(Verdict, String), String> {
    let stream = connect_host_vsock(airlock_proto::HOST_VSOCK_PORT)
        .map_err(|e| format!("the host channel is unreachable ({e})"))?;
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("host channel: {e}"))?;
    let stream = std::sync::Mutex::new(Some(stream));
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let s = stream.lock().unwrap_or_else(|p| p.into_inner()).take();
        async move {
            let s = s.ok_or_else(|| std::io::Error::other("one connection per ask"))?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::from_std(s)?,
            ))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://host.vsock")
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("host channel: {e}"))?;
    let reply = HostClient::new(channel)
        .ask(airlock_proto::pb::AskRequest {
            session_id,
            session_secret: secret,
            kind: "tool".into(),
            argv: request.argv,
            rule_id: request.rule_id,
            ..Default::default()
        })
        .await
        .map_err(|s| format!("the host refused the ask: {}", s.message()))?
        .into_inner();
    let verdict = airlock_proto::pb::Verdict::try_from(reply.verdict)
        .map(Verdict::from)
        .unwrap_or(Verdict::Deny);
    // Only allow and deny are answers; a host that answers "ask" again answered nothing.
    let reason = if reply.reason.trim().is_empty() {
        "the launcher gave no reason".to_string()
    } else {
        reply.reason
    };
    Ok(match verdict {
        Verdict::Allow => (Verdict::Allow, reason),
        _ => (Verdict::Deny, reason),
    })
}

impl Asker for HostAsker {
    fn ask(&self, request: &AskRequest) -> (Verdict, String) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return (Verdict::Deny, format!("no runtime for the ask: {e}")),
        };
        let asked = ask_host(
            self.session_id.clone(),
            self.secret.clone(),
            request.clone(),
        );
        match rt.block_on(async { tokio::time::timeout(ASK_RPC_TIMEOUT, asked).await }) {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => (Verdict::Deny, why),
            Err(_) => (
                Verdict::Deny,
                format!(
                    "the host did not answer within {} s",
                    ASK_RPC_TIMEOUT.as_secs()
                ),
            ),
        }
    }
}
