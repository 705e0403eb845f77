//! Serving egress streams: accept, authenticate, decide, resolve, dial, splice.

use super::address_ranges::resolve_for_dial;
use super::first_bytes::{ClientStreamGate, GateStep, Via};
use super::{EgressDecision, EgressService, MANIFEST_EGRESS_RULE, MAX_ATTEMPTS_PER_SESSION};
use crate::host_service::same_secret;
use crate::policy::capability::normalize_host;
use airlock_proto::egress_wire::{read_frame, write_frame};
use airlock_proto::pb::{EgressOpen, EgressVerdict, EgressVia};
use airlock_proto::verdict::Verdict;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long the enforcer has to send its `EgressOpen` once it opened a stream.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);
/// How long the host tries to reach an upstream before refusing the connection.
const DIAL_DEADLINE: Duration = Duration::from_secs(10);
/// How long the agent has to send enough first bytes for the name check (a ClientHello,
/// an HTTP request head); server-first protocols are not held up (their bytes flow).
const FIRST_BYTES_DEADLINE: Duration = Duration::from_secs(10);
/// Splice buffer per direction.
const SPLICE_BUFFER: usize = 64 * 1024;

/// The running egress service of one session. Dropping it (or [`EgressTask::close`])
/// closes every connection the session has open, at once.
pub struct EgressTask {
    closed: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    service: Arc<EgressService>,
}

impl EgressTask {
    /// Closes every connection and stops accepting new ones.
    pub fn close(&self) {
        let _ = self.closed.send(true);
        self.accept.abort();
    }

    /// Bytes the session's connections carried, both directions.
    pub fn bytes_carried(&self) -> u64 {
        self.service.bytes_carried()
    }
}

impl Drop for EgressTask {
    fn drop(&mut self) {
        self.close();
    }
}

/// Serves egress streams accepted on `listener` (a VM's `<vsock socket>_<port>`).
pub fn serve_egress_listener(
    service: Arc<EgressService>,
    listener: std::os::unix::net::UnixListener,
) -> std::io::Result<EgressTask> {
    listener.set_nonblocking(true)?;
    Ok(serve(
        service,
        StreamSource::Listener(tokio::net::UnixListener::from_std(listener)?),
    ))
}

/// Serves egress streams the enforcer hands over `control` (process isolation): each
/// message on it carries one connected socket (SCM_RIGHTS) that is then one stream.
pub fn serve_egress_handed(
    service: Arc<EgressService>,
    control: std::os::unix::net::UnixStream,
) -> std::io::Result<EgressTask> {
    control.set_nonblocking(true)?;
    Ok(serve(
        service,
        StreamSource::Handed(tokio::net::UnixStream::from_std(control)?),
    ))
}

/// Where a session's egress streams come from.
enum StreamSource {
    /// Accepted connections (a VM's hybrid vsock port).
    Listener(tokio::net::UnixListener),
    /// Sockets handed over a control socket; its end is the session's end.
    Handed(tokio::net::UnixStream),
}

impl StreamSource {
    /// The next stream; `Ok(None)` when no more can come.
    async fn next(&self) -> std::io::Result<Option<tokio::net::UnixStream>> {
        match self {
            StreamSource::Listener(l) => l.accept().await.map(|(s, _)| Some(s)),
            StreamSource::Handed(control) => loop {
                let Some(fd) = receive_stream(control).await? else {
                    return Ok(None);
                };
                // A descriptor that is no socket (a file, /dev/null) is one bad stream,
                // not a failed hand-over socket: it is closed and the next one served.
                let std = std::os::unix::net::UnixStream::from(fd);
                let stream = std
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::UnixStream::from_std(std));
                if let Ok(stream) = stream {
                    return Ok(Some(stream));
                }
            },
        }
    }
}

fn serve(service: Arc<EgressService>, source: StreamSource) -> EgressTask {
    let (closed, watch) = watch::channel(false);
    let svc = Arc::clone(&service);
    let accept = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                got = source.next() => match (got, &source) {
                    (Ok(Some(stream)), _) => {
                        conns.spawn(Arc::clone(&svc).handle(stream, watch.clone()));
                    }
                    // The enforcer closed its end: the session is over.
                    (Ok(None), _) => break,
                    // Out of descriptors and the like: back off, keep accepting.
                    (Err(_), StreamSource::Listener(_)) => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    (Err(e), StreamSource::Handed(_)) => {
                        (svc.log)(&format!("egress: the hand-over socket failed: {e}"));
                        break;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        // Open connections live until the session closes them.
        while conns.join_next().await.is_some() {}
    });
    EgressTask {
        closed,
        accept,
        service,
    }
}

/// One descriptor from `control`; `None` at end of stream. A message without exactly
/// one descriptor is skipped (whatever else it held is closed).
async fn receive_stream(control: &tokio::net::UnixStream) -> std::io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    loop {
        control.readable().await?;
        let got = control.try_io(tokio::io::Interest::READABLE, || {
            let mut byte = [0u8; 1];
            let mut iov = [std::io::IoSliceMut::new(&mut byte)];
            // Room for the most one message can carry (SCM_MAX_FD), so that every
            // descriptor of a message with several is received, and closed.
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 253]);
            let msg = recvmsg::<()>(
                control.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let mut fds = Vec::new();
            // Truncated only when this process is out of descriptors: skip the message.
            let Ok(cmsgs) = msg.cmsgs() else {
                return Ok(None);
            };
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(rights) = c {
                    // SAFETY: the kernel just installed these descriptors in this
                    // process for us; nothing else owns them.
                    fds.extend(
                        rights
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            Ok(Some((msg.bytes, fds)))
        });
        match got {
            Ok(Some((0, fds))) if fds.is_empty() => return Ok(None),
            Ok(Some((_, mut fds))) if fds.len() == 1 => return Ok(fds.pop()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn deny(reason: impl Into<String>, rule_id: impl Into<String>) -> EgressVerdict {
    EgressVerdict {
        verdict: airlock_proto::pb::Verdict::Deny as i32,
        reason: reason.into(),
        rule_id: rule_id.into(),
        approval_id: String::new(),
    }
}

impl EgressService {
    async fn handle<S>(self: Arc<Self>, mut stream: S, mut closed: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Streams that have not said who they are yet are few: a guest opening many and
        // sending nothing must not hold the launcher's descriptors for the deadline each.
        let Ok(unproven) = Arc::clone(&self.unproven).try_acquire_owned() else {
            (self.log)("egress: too many streams without a request at once; one was closed");
            return;
        };
        let open =
            match tokio::time::timeout(OPEN_DEADLINE, read_frame::<_, EgressOpen>(&mut stream))
                .await
            {
                Ok(Ok(open)) => open,
                Ok(Err(e)) => {
                    (self.log)(&format!("egress: a stream without a valid request: {e}"));
                    return;
                }
                Err(_) => {
                    (self.log)("egress: a stream sent no request in time");
                    return;
                }
            };
        drop(unproven);
        // A stranger gets no answer at all.
        if open.session_id != self.session_id || !same_secret(&open.session_secret, &self.secret) {
            (self.log)("egress: a stream not from this session's enforcer (wrong session id or secret) was closed");
            return;
        }
        if self.attempts.fetch_add(1, Ordering::SeqCst) >= MAX_ATTEMPTS_PER_SESSION {
            let _ = write_frame(
                &mut stream,
                &deny(
                    format!("this session already made {MAX_ATTEMPTS_PER_SESSION} connection attempts; no more are heard"),
                    MANIFEST_EGRESS_RULE,
                ),
            )
            .await;
            return;
        }
        let outcome = self.decide_and_dial(&open).await;
        match outcome {
            Err(verdict) => {
                let _ = write_frame(&mut stream, &verdict).await;
            }
            Ok((upstream, host, port, via, verdict, _slot)) => {
                if write_frame(&mut stream, &verdict).await.is_err() {
                    return;
                }
                let gate = ClientStreamGate::new(&host, port, via);
                tokio::select! {
                    why = self.splice(stream, upstream, gate) => {
                        if let Some(why) = why {
                            let action = self.action(&host, port, MANIFEST_EGRESS_RULE, &why);
                            let _ = self.record(Verdict::Deny, action);
                        }
                    }
                    _ = closed.wait_for(|c| *c) => {}
                }
            }
        }
    }

    /// The decision for one request; on allow, the dialled upstream and the slot it
    /// holds. Every refusal is recorded before it is answered.
    #[allow(clippy::type_complexity)]
    async fn decide_and_dial(
        &self,
        open: &EgressOpen,
    ) -> Result<
        (
            TcpStream,
            String,
            u16,
            Via,
            EgressVerdict,
            super::ConnectionSlot<'_>,
        ),
        EgressVerdict,
    > {
        let refuse = |host: &str, port: u16, rule: &str, reason: String| {
            let action = self.action(host, port, rule, &reason);
            match self.record(Verdict::Deny, action) {
                Ok(()) => deny(reason, rule),
                Err(why) => deny(
                    format!("{reason} (and the audit log cannot be written: {why})"),
                    rule,
                ),
            }
        };
        let port = u16::try_from(open.port).ok().filter(|p| *p != 0);
        let via = EgressVia::try_from(open.via).unwrap_or(EgressVia::Unspecified);
        let shown_host = open.host.chars().take(260).collect::<String>();
        let host = match normalize_host(&open.host) {
            Ok(h) if h == open.host => h,
            _ if open.host.is_empty() => {
                let address = open.address.chars().take(64).collect::<String>();
                return Err(refuse(
                    "",
                    port.unwrap_or(0),
                    MANIFEST_EGRESS_RULE,
                    format!(
                        "the agent connected to the address {address} port {} directly; egress is granted by name: connect to a granted name (the sandbox's DNS answers only those)",
                        open.port
                    ),
                ));
            }
            _ => {
                return Err(refuse(
                    "",
                    port.unwrap_or(0),
                    MANIFEST_EGRESS_RULE,
                    format!("`{}` is not a DNS name", shown_host.escape_debug()),
                ))
            }
        };
        let Some(port) = port else {
            return Err(refuse(
                &host,
                0,
                MANIFEST_EGRESS_RULE,
                format!("port {} is not a TCP port", open.port),
            ));
        };
        let via = match via {
            EgressVia::Transparent => Via::Transparent,
            EgressVia::ProxyConnect => Via::ProxyConnect,
            EgressVia::ProxyHttp => Via::ProxyHttp,
            EgressVia::DnsRefusal => {
                return Err(refuse(
                    &host,
                    port,
                    MANIFEST_EGRESS_RULE,
                    format!("the sandbox's DNS refused `{host}`: no grant names it (the query never left the sandbox)"),
                ));
            }
            EgressVia::Unspecified => {
                return Err(refuse(
                    &host,
                    port,
                    MANIFEST_EGRESS_RULE,
                    "the request says no way of connecting".into(),
                ));
            }
        };
        let mut approval_id = String::new();
        let decision = self.grants.decide(&host, port, self.advice.as_ref());
        if let EgressDecision::Deny { rule_id, reason } = decision {
            return Err(refuse(&host, port, &rule_id, reason));
        }
        // The slot is taken before a person is asked: a session has at most
        // `net_connections` connections open or waiting for an answer, never a flood of
        // asks in front of the person.
        let Some(slot) = self.reserve_connection() else {
            return Err(refuse(
                &host,
                port,
                MANIFEST_EGRESS_RULE,
                format!(
                    "this session already has {} connections open or waiting for an answer (resources.net_connections)",
                    self.grants.max_connections
                ),
            ));
        };
        if self.bytes.load(Ordering::SeqCst) >= self.grants.max_bytes {
            return Err(refuse(
                &host,
                port,
                MANIFEST_EGRESS_RULE,
                format!(
                    "this session used its {} MiB of network traffic (resources.net_mib)",
                    self.grants.max_bytes >> 20
                ),
            ));
        }
        if let EgressDecision::Ask = decision {
            let action = self.action(
                &host,
                port,
                MANIFEST_EGRESS_RULE,
                &format!("the plan's [[net]] {host}:{port} is granted on a person's answer"),
            );
            let answer = self.broker.ask(action, None).await;
            (self.log)(&format!(
                "egress {} {host}:{port}: {} (approval {})",
                if answer.approved {
                    "approved"
                } else {
                    "denied"
                },
                answer.message,
                answer.id
            ));
            if !answer.approved {
                return Err(deny(
                    format!("{} (approval {})", answer.message, answer.id),
                    MANIFEST_EGRESS_RULE,
                ));
            }
            approval_id = answer.id;
        }
        let addrs = match resolve_for_dial(&host, port, self.grants.pins()).await {
            Ok(a) => a,
            Err(e) => return Err(refuse(&host, port, MANIFEST_EGRESS_RULE, e.to_string())),
        };
        // On record before the dial: a connection reaching the server is already the
        // allow taking effect.
        if approval_id.is_empty() {
            let reason = format!("granted by the plan's [[net]] {host}:{port}");
            if let Err(why) = self.record(
                Verdict::Allow,
                self.action(&host, port, MANIFEST_EGRESS_RULE, &reason),
            ) {
                return Err(deny(
                    format!("the audit log cannot be written ({why}); nothing was sent"),
                    MANIFEST_EGRESS_RULE,
                ));
            }
        }
        let mut last = String::from("no address");
        let mut upstream = None;
        for addr in addrs {
            match tokio::time::timeout(DIAL_DEADLINE, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    upstream = Some(s);
                    break;
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: no answer in {} s", DIAL_DEADLINE.as_secs()),
            }
        }
        let Some(upstream) = upstream else {
            return Err(refuse(
                &host,
                port,
                MANIFEST_EGRESS_RULE,
                format!("could not connect to `{host}:{port}` ({last})"),
            ));
        };
        let _ = upstream.set_nodelay(true);
        let verdict = EgressVerdict {
            verdict: airlock_proto::pb::Verdict::Allow as i32,
            reason: String::new(),
            rule_id: MANIFEST_EGRESS_RULE.into(),
            approval_id,
        };
        Ok((upstream, host, port, via, verdict, slot))
    }

    /// Carries bytes both ways until either side closes; the agent's bytes pass the
    /// gate first. Returns why the host cut the connection, if it did.
    async fn splice<S>(
        &self,
        agent: S,
        upstream: TcpStream,
        mut gate: ClientStreamGate,
    ) -> Option<String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut agent_r, mut agent_w) = tokio::io::split(agent);
        let (mut up_r, mut up_w) = upstream.into_split();
        let outbound = async {
            let mut buf = vec![0u8; SPLICE_BUFFER];
            let first_by = tokio::time::Instant::now() + FIRST_BYTES_DEADLINE;
            let mut inspecting = true;
            loop {
                let n = if inspecting {
                    match tokio::time::timeout_at(first_by, agent_r.read(&mut buf)).await {
                        Ok(r) => r,
                        Err(_) => {
                            return Some(format!(
                                "the agent sent no complete TLS ClientHello or HTTP request head in {} s",
                                FIRST_BYTES_DEADLINE.as_secs()
                            ))
                        }
                    }
                } else {
                    agent_r.read(&mut buf).await
                };
                let n = match n {
                    Ok(0) | Err(_) => {
                        let _ = up_w.shutdown().await;
                        return None;
                    }
                    Ok(n) => n,
                };
                if !self.carry(n) {
                    return Some(self.traffic_limit_reason());
                }
                let released = match gate.feed(&buf[..n]) {
                    GateStep::NeedMore => continue,
                    GateStep::Forward(bytes) => bytes,
                    GateStep::Refuse(why) => return Some(why.to_string()),
                };
                inspecting = !gate.is_done();
                if up_w.write_all(&released).await.is_err() {
                    return None;
                }
            }
        };
        let inbound = async {
            let mut buf = vec![0u8; SPLICE_BUFFER];
            loop {
                let n = match up_r.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = agent_w.shutdown().await;
                        return None;
                    }
                    Ok(n) => n,
                };
                if !self.carry(n) {
                    return Some(self.traffic_limit_reason());
                }
                if agent_w.write_all(&buf[..n]).await.is_err() {
                    return None;
                }
            }
        };
        tokio::pin!(outbound, inbound);
        // Either direction ending on its own lets the other finish (half-close); a cut
        // ends both at once.
        let (mut out_done, mut in_done) = (false, false);
        loop {
            tokio::select! {
                cut = &mut outbound, if !out_done => {
                    if cut.is_some() { return cut; }
                    out_done = true;
                }
                cut = &mut inbound, if !in_done => {
                    if cut.is_some() { return cut; }
                    in_done = true;
                }
            }
            if out_done && in_done {
                return None;
            }
        }
    }

    fn traffic_limit_reason(&self) -> String {
        format!(
            "the session used its {} MiB of network traffic (resources.net_mib); the connection was closed",
            self.grants.max_bytes >> 20
        )
    }
}
