//! The guest's egress funnel: the only way the agent's connections leave the sandbox.
//!
//! The sandbox has no route out. [`crate::net_interfaces`] gives `lo` the synthetic
//! range and a default route so every IPv4 connect reaches the output hook, and
//! [`crate::netfilter`] redirects DNS to the stub ([`crate::stub_dns`]) and every other
//! TCP connection to the forwarder here; the rest is dropped and counted. The
//! forwarder turns each connection into a request to the host's egress service
//! (`EgressOpen`: the name the stub DNS handed out an address for, the port), waits
//! for its verdict, and splices. A proxy endpoint does the same for clients that
//! prefer `HTTP_PROXY`/`HTTPS_PROXY`, answering refusals with a 403 and a JSON body.
//!
//! Nothing here decides: the host decides every connection from its own copy of the
//! manifest, resolves the name itself and checks what the agent sends first. A guest
//! whose rules were flushed by a compromised root still reaches nothing the host does
//! not grant (it has no NIC; vsock is the only way out).

use crate::net_interfaces::{bring_up_funnel_interfaces_in_current_netns, FunnelAddresses};
use crate::netfilter::{install_egress_funnel_rules_in_current_netns, FunnelPorts};
use crate::stub_dns::{DnsOutcome, StubDns};
use airlock_proto::egress_wire::{read_frame, write_frame};
use airlock_proto::manifest::Manifest;
use airlock_proto::pb::{EgressOpen, EgressVerdict, EgressVia, Verdict};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// Where redirected TCP connections arrive (127.0.0.1).
pub const FUNNEL_TRANSPARENT_PORT: u16 = 15001;
/// The stub DNS (127.0.0.1, UDP and TCP); every query to port 53 is redirected here.
pub const FUNNEL_DNS_PORT: u16 = 53;
/// The HTTP proxy endpoint (127.0.0.1) named in the agent's `HTTP(S)_PROXY`.
pub const FUNNEL_PROXY_PORT: u16 = 3128;
/// How long a proxy client has to send its request head.
const PROXY_HEAD_DEADLINE: Duration = Duration::from_secs(10);
/// Largest proxy request head read.
const PROXY_HEAD_MAX: usize = 16 * 1024;
/// How long the host has to answer a request (an ask waits for a person: the host
/// caps asks at 100 s).
const VERDICT_DEADLINE: Duration = Duration::from_secs(110);

/// Why the funnel could not be set up. The session does not start: egress granted but
/// not enforceable must not run.
#[derive(Debug, thiserror::Error)]
pub enum FunnelError {
    /// Interfaces or routes.
    #[error("egress funnel: {0}")]
    Interfaces(#[from] crate::net_interfaces::NetInterfaceError),
    /// The netfilter rules.
    #[error("egress funnel: {0}")]
    Rules(#[from] crate::netfilter::NetfilterError),
    /// A listener or the funnel's thread.
    #[error("egress funnel: {what}: {source}")]
    Io {
        /// What was being set up.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FunnelError {
    let what = what.into();
    move |source| FunnelError::Io { what, source }
}

/// How the funnel reaches the host's egress service.
pub enum HostDialer {
    /// In a VM: a vsock stream to the host's port per connection.
    Vsock {
        /// The host port ([`airlock_proto::EGRESS_VSOCK_PORT`]).
        port: u32,
    },
    /// Under process isolation: one end of a fresh socket pair per connection, handed
    /// to the launcher over this socket (SCM_RIGHTS).
    Handed(Mutex<std::os::unix::net::UnixStream>),
}

impl HostDialer {
    fn open(&self) -> io::Result<UnixStream> {
        let std = match self {
            HostDialer::Vsock { port } => crate::host_asker::connect_host_vsock(*port)?,
            HostDialer::Handed(control) => {
                let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
                let control = control.lock().unwrap_or_else(|p| p.into_inner());
                send_fd(&control, theirs.into())?;
                ours
            }
        };
        std.set_nonblocking(true)?;
        UnixStream::from_std(std)
    }
}

fn send_fd(control: &std::os::unix::net::UnixStream, fd: OwnedFd) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let iov = [io::IoSlice::new(b"c")];
    sendmsg::<()>(
        control.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// The funnel of one session: what it needs to ask the host.
struct Funnel {
    session_id: String,
    secret: Vec<u8>,
    dialer: HostDialer,
    stub: Arc<StubDns>,
}

/// The running funnel; its thread lives as long as the process (the session).
pub struct EgressFunnel {
    /// What the funnel set up, for the "ready" report.
    pub description: String,
}

/// Does the manifest grant any egress? Without it no funnel is set up: the agent has
/// no route at all and Landlock grants no port.
pub fn egress_granted(manifest: &Manifest) -> bool {
    !manifest.egress.allow.is_empty() || !manifest.egress.ask.is_empty()
}

/// The TCP ports the agent's Landlock domain may connect to: each granted port, the
/// stub DNS (TCP queries) and the proxy endpoint. Redirection happens after Landlock
/// sees the original port, so these are the ports the agent dials, not the funnel's.
pub fn agent_connect_ports(manifest: &Manifest) -> Vec<u16> {
    if !egress_granted(manifest) {
        return vec![];
    }
    let mut ports: Vec<u16> = manifest
        .egress
        .allow
        .iter()
        .chain(&manifest.egress.ask)
        .map(|e| e.port)
        .chain([FUNNEL_DNS_PORT, FUNNEL_PROXY_PORT])
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// One line saying how many packets the funnel's rules dropped (other UDP, ICMP, IPv6),
/// when a funnel was set up in this network namespace.
pub fn dropped_summary() -> Option<String> {
    if !FUNNEL_STARTED.load(std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    Some(match crate::netfilter::dropped_packets_in_current_netns() {
        Ok(n) => format!("egress funnel: {n} packets dropped (UDP other than DNS, ICMP, IPv6)"),
        Err(e) => format!("egress funnel: the drop counter cannot be read: {e}"),
    })
}

static FUNNEL_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The agent's proxy variables (set only when egress is granted).
pub fn agent_proxy_environment(manifest: &Manifest) -> Vec<(String, String)> {
    if !egress_granted(manifest) {
        return vec![];
    }
    let proxy = format!("http://127.0.0.1:{FUNNEL_PROXY_PORT}");
    let mut env = Vec::new();
    for k in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
        env.push((k.to_string(), proxy.clone()));
    }
    for k in ["no_proxy", "NO_PROXY"] {
        env.push((k.to_string(), "localhost,127.0.0.1,::1".to_string()));
    }
    env
}

/// Sets up the funnel in the current network namespace (interfaces, listeners, then
/// rules) and serves it on a thread of its own. Fails closed: any step that fails
/// stops the session.
pub fn start_egress_funnel_in_current_netns(
    manifest: &Manifest,
    session_secret: Vec<u8>,
    dialer: HostDialer,
) -> Result<EgressFunnel, FunnelError> {
    // On a thread of its own: rtnetlink runs a runtime of its own, and `Apply` calls us
    // from inside the enforcer's. Threads share the network namespace.
    std::thread::scope(|s| {
        s.spawn(|| bring_up_funnel_interfaces_in_current_netns(&FunnelAddresses::default()))
            .join()
            .unwrap_or_else(|_| panic!("the interface setup thread panicked"))
    })?;
    let local = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let bind_tcp = |port: u16| {
        let l = std::net::TcpListener::bind(local(port))
            .map_err(io_err(format!("listening on 127.0.0.1:{port}")))?;
        l.set_nonblocking(true)
            .map_err(io_err(format!("127.0.0.1:{port}")))?;
        Ok::<_, FunnelError>(l)
    };
    let transparent = bind_tcp(FUNNEL_TRANSPARENT_PORT)?;
    let proxy = bind_tcp(FUNNEL_PROXY_PORT)?;
    let dns_tcp = bind_tcp(FUNNEL_DNS_PORT)?;
    let dns_udp = std::net::UdpSocket::bind(local(FUNNEL_DNS_PORT)).map_err(io_err(format!(
        "the stub DNS on 127.0.0.1:{FUNNEL_DNS_PORT}/udp"
    )))?;
    dns_udp
        .set_nonblocking(true)
        .map_err(io_err("the stub DNS socket"))?;
    install_egress_funnel_rules_in_current_netns(&FunnelPorts {
        transparent_tcp: FUNNEL_TRANSPARENT_PORT,
        dns: FUNNEL_DNS_PORT,
    })?;
    FUNNEL_STARTED.store(true, std::sync::atomic::Ordering::SeqCst);
    let names: Vec<String> = manifest
        .egress
        .allow
        .iter()
        .chain(&manifest.egress.ask)
        .map(|e| e.host.clone())
        .collect();
    let funnel = Arc::new(Funnel {
        session_id: manifest.session_id.clone(),
        secret: session_secret,
        dialer,
        stub: Arc::new(StubDns::new(names.iter().cloned())),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("the funnel's runtime"))?;
    std::thread::Builder::new()
        .name("egress-funnel".into())
        .spawn(move || {
            rt.block_on(async move {
                let serve = async {
                    let transparent = TcpListener::from_std(transparent)?;
                    let proxy = TcpListener::from_std(proxy)?;
                    let dns_tcp = TcpListener::from_std(dns_tcp)?;
                    let dns_udp = tokio::net::UdpSocket::from_std(dns_udp)?;
                    let log = dns_log(Arc::clone(&funnel));
                    tokio::join!(
                        crate::stub_dns::serve_udp(
                            dns_udp,
                            Arc::clone(&funnel.stub),
                            Arc::clone(&log)
                        ),
                        crate::stub_dns::serve_tcp(dns_tcp, Arc::clone(&funnel.stub), log),
                        accept_loop(transparent, Arc::clone(&funnel), Mode::Transparent),
                        accept_loop(proxy, Arc::clone(&funnel), Mode::Proxy),
                    );
                    Ok::<(), io::Error>(())
                };
                if let Err(e) = serve.await {
                    eprintln!("airlock-enforcer: egress funnel stopped: {e}");
                }
            })
        })
        .map_err(io_err("the funnel's thread"))?;
    Ok(EgressFunnel {
        description: format!(
            "{} names by the stub DNS; TCP redirected to the forwarder, proxy on 127.0.0.1:{FUNNEL_PROXY_PORT}, everything else dropped; the host decides each connection",
            names.len()
        ),
    })
}

/// The stub's log: a refusal reported once per name goes to the host, which records it.
fn dns_log(funnel: Arc<Funnel>) -> Arc<dyn Fn(&DnsOutcome) + Send + Sync> {
    Arc::new(move |outcome: &DnsOutcome| {
        if let Some(name) = outcome.first_refused_name() {
            let funnel = Arc::clone(&funnel);
            let name = name.to_string();
            tokio::spawn(async move {
                let _ = funnel
                    .ask_host(&name, FUNNEL_DNS_PORT, EgressVia::DnsRefusal, "")
                    .await;
            });
        }
    })
}

#[derive(Clone, Copy)]
enum Mode {
    Transparent,
    Proxy,
}

async fn accept_loop(listener: TcpListener, funnel: Arc<Funnel>, mode: Mode) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let funnel = Arc::clone(&funnel);
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match mode {
                        Mode::Transparent => funnel.transparent(stream).await,
                        Mode::Proxy => funnel.proxy(stream).await,
                    }
                });
            }
            // Out of descriptors and the like: back off, keep serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Closes `stream` with a reset, so the agent's `connect`/`read` fails at once.
fn reset(stream: TcpStream) {
    // SO_LINGER with a zero time: close sends RST at once (it never blocks).
    let _ = nix::sys::socket::setsockopt(
        &stream,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    drop(stream);
}

impl Funnel {
    /// Sends the request and waits for the verdict; on ALLOW the stream is the
    /// connection.
    async fn ask_host(
        &self,
        host: &str,
        port: u16,
        via: EgressVia,
        address: &str,
    ) -> io::Result<(UnixStream, EgressVerdict)> {
        let mut stream = self.dialer.open()?;
        let open = EgressOpen {
            session_id: self.session_id.clone(),
            session_secret: self.secret.clone(),
            host: host.to_string(),
            port: u32::from(port),
            via: via as i32,
            address: address.to_string(),
        };
        write_frame(&mut stream, &open).await?;
        let verdict = tokio::time::timeout(VERDICT_DEADLINE, read_frame(&mut stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the host did not answer"))??;
        Ok((stream, verdict))
    }

    async fn transparent(&self, stream: TcpStream) {
        let original = match original_destination(&stream) {
            Ok(a) => a,
            Err(_) => return reset(stream),
        };
        // A connection straight to the forwarder's own port has no other destination.
        if original.port() == FUNNEL_TRANSPARENT_PORT && original.ip().is_loopback() {
            return reset(stream);
        }
        let (host, address) = match self.stub.name_for(*original.ip()) {
            Some(name) => (name, String::new()),
            None => (String::new(), original.ip().to_string()),
        };
        match self
            .ask_host(&host, original.port(), EgressVia::Transparent, &address)
            .await
        {
            Ok((upstream, v)) if v.verdict == Verdict::Allow as i32 => {
                splice(stream, upstream).await
            }
            Ok((_, v)) => {
                eprintln!(
                    "airlock-enforcer: egress refused {}:{}: {}",
                    if host.is_empty() { &address } else { &host },
                    original.port(),
                    v.reason
                );
                reset(stream)
            }
            Err(_) => reset(stream),
        }
    }

    async fn proxy(&self, mut stream: TcpStream) {
        let (head, request) = match read_proxy_head(&mut stream).await {
            Ok(r) => r,
            Err(why) => {
                let _ = respond(&mut stream, 400, &why, "", 0, "").await;
                return;
            }
        };
        let (host, port, via, address) = (
            request.host.clone(),
            request.port,
            if request.connect {
                EgressVia::ProxyConnect
            } else {
                EgressVia::ProxyHttp
            },
            request.address.clone(),
        );
        match self.ask_host(&host, port, via, &address).await {
            Ok((mut upstream, v)) if v.verdict == Verdict::Allow as i32 => {
                let forward = if request.connect {
                    if stream
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    head[request.head_len..].to_vec()
                } else {
                    let mut bytes = request.origin_form_head.clone();
                    bytes.extend_from_slice(&head[request.head_len..]);
                    bytes
                };
                if upstream.write_all(&forward).await.is_err() {
                    return;
                }
                splice(stream, upstream).await
            }
            Ok((_, v)) => {
                let shown = if host.is_empty() { &address } else { &host };
                let _ = respond(&mut stream, 403, &v.reason, &v.rule_id, port, shown).await;
            }
            Err(e) => {
                let _ = respond(
                    &mut stream,
                    502,
                    &format!("the host's egress service could not be reached: {e}"),
                    "",
                    port,
                    &host,
                )
                .await;
            }
        }
    }
}

/// Buffer per direction: vsock moves large frames best (64 KiB is its default buffer).
const SPLICE_BUFFER: usize = 64 * 1024;

async fn splice(mut agent: TcpStream, mut upstream: UnixStream) {
    let _ = tokio::io::copy_bidirectional_with_sizes(
        &mut agent,
        &mut upstream,
        SPLICE_BUFFER,
        SPLICE_BUFFER,
    )
    .await;
}

fn original_destination(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    let sin = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst)
        .map_err(io::Error::from)?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        u16::from_be(sin.sin_port),
    ))
}

/// A proxy request, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// `CONNECT host:port`, else an absolute-form plain-HTTP request.
    pub connect: bool,
    /// The DNS name asked for, lower case; empty when the request named an address.
    pub host: String,
    /// The address named instead of a name.
    pub address: String,
    /// The port (80 for `http://` without one).
    pub port: u16,
    /// Bytes of the request head (what follows is the body or the tunnel's first bytes).
    pub head_len: usize,
    /// For plain HTTP: the head rewritten to origin form with `Connection: close`, so the
    /// next request (perhaps for another name) comes on a new connection and is decided
    /// again.
    pub origin_form_head: Vec<u8>,
}

async fn read_proxy_head(stream: &mut TcpStream) -> Result<(Vec<u8>, ProxyRequest), String> {
    let mut buf = Vec::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + PROXY_HEAD_DEADLINE;
    loop {
        let mut chunk = [0u8; 2048];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| "no complete request head in time".to_string())?
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("the client closed before a complete request head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(req) = parse_proxy_head(&buf)? {
            return Ok((buf, req));
        }
        if buf.len() > PROXY_HEAD_MAX {
            return Err(format!("request head over {PROXY_HEAD_MAX} bytes"));
        }
    }
}

/// Parses a proxy request head: `Ok(None)` while incomplete.
pub fn parse_proxy_head(buf: &[u8]) -> Result<Option<ProxyRequest>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("not an HTTP request: {e}")),
    };
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let (connect, authority, path) = if method.eq_ignore_ascii_case("CONNECT") {
        (true, target, "")
    } else if let Some(rest) = target.strip_prefix("http://") {
        let (auth, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        (false, auth, path)
    } else if target.starts_with("https://") {
        return Err("an https:// URL through the proxy needs CONNECT (the client does that when HTTPS_PROXY is set)".into());
    } else {
        return Err(format!(
            "`{method} {target}` is not a proxy request: expected CONNECT host:port or an absolute http:// URL"
        ));
    };
    if authority.contains('@') {
        return Err("credentials in the proxy URL are not accepted".into());
    }
    let (name, port) = split_authority(authority, if connect { None } else { Some(80) })?;
    let (host, address) = match name.parse::<std::net::IpAddr>() {
        Ok(ip) => (String::new(), ip.to_string()),
        Err(_) => (
            name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase(),
            String::new(),
        ),
    };
    let mut origin_form_head = Vec::new();
    if !connect {
        origin_form_head.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
        let mut has_host = false;
        for h in req.headers.iter() {
            let n = h.name.to_ascii_lowercase();
            if matches!(
                n.as_str(),
                "connection" | "proxy-connection" | "keep-alive" | "proxy-authorization"
            ) {
                continue;
            }
            has_host |= n == "host";
            origin_form_head.extend_from_slice(h.name.as_bytes());
            origin_form_head.extend_from_slice(b": ");
            origin_form_head.extend_from_slice(h.value);
            origin_form_head.extend_from_slice(b"\r\n");
        }
        if !has_host {
            origin_form_head.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
        }
        origin_form_head.extend_from_slice(b"Connection: close\r\n\r\n");
    }
    Ok(Some(ProxyRequest {
        connect,
        host,
        address,
        port,
        head_len,
        origin_form_head,
    }))
}

fn split_authority(authority: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("`{authority}` is not host:port");
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        (v6.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        (None, Some(d)) => d,
        (None, None) => return Err(bad()),
    };
    if name.is_empty() {
        return Err(bad());
    }
    Ok((name, port))
}

/// A proxy answer the agent can act on: 403 with the host's reason and rule as JSON.
async fn respond(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    rule: &str,
    port: u16,
    host: &str,
) -> io::Result<()> {
    let body = serde_json::json!({
        "error": match status { 403 => "egress refused", 400 => "bad proxy request", _ => "egress unavailable" },
        "host": host,
        "port": port,
        "rule": rule,
        "reason": reason,
    })
    .to_string()
        + "\n";
    let text = match status {
        403 => "Forbidden",
        400 => "Bad Request",
        _ => "Bad Gateway",
    };
    let msg = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nX-Airlock-Refused: {}\r\n\r\n{body}",
        body.len(),
        rule.replace(['\r', '\n'], " ")
    );
    stream.write_all(msg.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_heads_name_their_destination_and_plain_http_is_rewritten_to_close() {
        let r = parse_proxy_head(b"CONNECT Example.COM:443 HTTP/1.1\r\nHost: x\r\n\r\nTLS")
            .unwrap()
            .unwrap();
        assert!(r.connect);
        assert_eq!((r.host.as_str(), r.port), ("example.com", 443));
        assert_eq!(r.head_len, 45);

        let r = parse_proxy_head(
            b"GET http://example.com/a?b HTTP/1.1\r\nHost: example.com\r\nProxy-Connection: keep-alive\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.connect),
            ("example.com", 80, false)
        );
        let head = String::from_utf8(r.origin_form_head).unwrap();
        assert!(head.starts_with("GET /a?b HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Connection: close\r\n\r\n"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("proxy-connection"),
            "{head}"
        );

        let r = parse_proxy_head(b"CONNECT 10.0.0.1:22 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.host.as_str(), r.address.as_str()), ("", "10.0.0.1"));
        let r = parse_proxy_head(b"CONNECT [::1]:22 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.address, "::1");

        assert_eq!(parse_proxy_head(b"GET http://exa").unwrap(), None);
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"CONNECT example.com HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:0 HTTP/1.1\r\n\r\n",
            b"GET https://example.com/ HTTP/1.1\r\n\r\n",
            b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01",
        ] {
            assert!(
                parse_proxy_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn landlock_ports_are_the_granted_ones_plus_the_funnel_and_none_without_egress() {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "manifest_version": airlock_proto::manifest::MANIFEST_VERSION,
            "protocol_version": 1, "session_id": "0".repeat(32), "vm_cid": 3,
            "image_id": "sha256:abc", "nonce": "0".repeat(32), "issued_at": 1,
            "not_before": 1, "expires_at": 2, "policy_digest": "sha256:0",
            "command": {"argv": ["sh"], "cwd": "/", "env": {}},
            "mounts": [], "egress": {"allow": [], "ask": [], "pins": {}}, "tools": [],
            "resources": {"vcpus": 1, "memory_mib": 1, "disk_mib": 1, "pids": 1,
                "wall_time_secs": 1, "net_connections": 1, "net_mib": 1}
        }))
        .unwrap();
        assert!(agent_connect_ports(&m).is_empty());
        assert!(agent_proxy_environment(&m).is_empty());
        m.egress.allow.push(airlock_proto::manifest::Endpoint {
            host: "example.com".into(),
            port: 8443,
        });
        assert_eq!(agent_connect_ports(&m), vec![53, 3128, 8443]);
        assert!(agent_proxy_environment(&m)
            .iter()
            .any(|(k, v)| k == "HTTPS_PROXY" && v == "http://127.0.0.1:3128"));
    }
}
