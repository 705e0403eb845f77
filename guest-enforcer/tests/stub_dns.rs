//! The stub DNS served on real sockets (127.0.0.1, ephemeral ports), queried the way a
//! stub resolver does: hand-built packets over blocking UDP and TCP sockets, and `dig`
//! as well when it is installed.

use airlock_enforcer::stub_dns::{serve_tcp, serve_udp, StubDns};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TYPE_A: u16 = 1;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const NOERROR: u8 = 0;
const FORMERR: u8 = 1;
const NXDOMAIN: u8 = 3;
const WAIT: Duration = Duration::from_secs(5);

/// Both servers on their own thread and runtime, stopped when dropped.
struct Server {
    udp: SocketAddr,
    tcp: SocketAddr,
    stub: Arc<StubDns>,
    logs: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(names: &[&str]) -> Server {
        let stub = Arc::new(StubDns::new(names.iter().map(|n| n.to_string())));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // TCP on the UDP port when free, as a DNS server would be (dig uses one port).
        let port = udp.local_addr().unwrap().port();
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port))
            .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        udp.set_nonblocking(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (stub2, logs2) = (Arc::clone(&stub), Arc::clone(&logs));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let log: Arc<dyn Fn(&str) + Send + Sync> =
                    Arc::new(move |line: &str| logs2.lock().unwrap().push(line.to_string()));
                let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
                let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
                tokio::select! {
                    _ = serve_udp(udp, Arc::clone(&stub2), Arc::clone(&log)) => {}
                    _ = serve_tcp(tcp, stub2, log) => {}
                    _ = stopped => {}
                }
            });
        });
        Server {
            udp: udp_addr,
            tcp: tcp_addr,
            stub,
            logs,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// A UDP client socket "connected" to the server.
    fn client(&self) -> UdpSocket {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(self.udp).unwrap();
        sock.set_read_timeout(Some(WAIT)).unwrap();
        sock
    }

    /// One query over UDP; `None` when no reply comes within `wait`.
    fn udp(&self, query: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let sock = self.client();
        sock.set_read_timeout(Some(wait)).unwrap();
        sock.send(query).unwrap();
        let mut buf = [0u8; 2048];
        match sock.recv(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }

    fn udp_reply(&self, query: &[u8]) -> Vec<u8> {
        self.udp(query, WAIT).expect("a reply")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

/// A query with RD set and one question; `name`'s labels are split on dots.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

struct Reply {
    id: u16,
    rcode: u8,
    qdcount: u16,
    ancount: u16,
    question: Vec<u8>,
    addrs: Vec<Ipv4Addr>,
}

/// Parses the replies the stub sends (question echoed, A records with a pointer owner).
fn parse(reply: &[u8]) -> Reply {
    assert!(reply.len() >= 12, "{reply:?}");
    assert_eq!(reply[2] & 0x80, 0x80, "QR set");
    let word = |i: usize| u16::from_be_bytes([reply[i], reply[i + 1]]);
    let (qdcount, ancount) = (word(4), word(6));
    let mut pos = 12;
    let mut question = Vec::new();
    if qdcount == 1 {
        let start = pos;
        while reply[pos] != 0 {
            pos += 1 + usize::from(reply[pos]);
        }
        pos += 5;
        question = reply[start..pos].to_vec();
    }
    let mut addrs = Vec::new();
    // Owner by pointer to the question, A, IN, TTL, RDLENGTH 4, the address.
    for _ in 0..ancount {
        assert_eq!(&reply[pos..pos + 2], &[0xC0, 12]);
        assert_eq!(word(pos + 2), TYPE_A);
        assert_eq!(word(pos + 4), 1, "class IN");
        let ttl = u32::from_be_bytes(reply[pos + 6..pos + 10].try_into().unwrap());
        assert_eq!(ttl, airlock_enforcer::stub_dns::ANSWER_TTL_SECS);
        assert_eq!(word(pos + 10), 4);
        let a: [u8; 4] = reply[pos + 12..pos + 16].try_into().unwrap();
        addrs.push(Ipv4Addr::from(a));
        pos += 16;
    }
    Reply {
        id: word(0),
        rcode: reply[3] & 0xF,
        qdcount,
        ancount,
        question,
        addrs,
    }
}

fn synthetic(addr: Ipv4Addr) -> bool {
    let [a, b, ..] = addr.octets();
    a == 198 && (b == 18 || b == 19)
}

#[test]
fn udp_a_queries_get_stable_synthetic_addresses() {
    let server = Server::start(&["github.com", "pypi.org"]);
    let first = parse(&server.udp_reply(&query(0x1234, "github.com", TYPE_A)));
    assert_eq!((first.id, first.rcode, first.ancount), (0x1234, NOERROR, 1));
    let addr = first.addrs[0];
    assert!(synthetic(addr), "{addr}");
    assert_ne!(addr, Ipv4Addr::new(198, 18, 0, 0));
    assert_ne!(addr, Ipv4Addr::new(198, 18, 0, 1));
    let again = parse(&server.udp_reply(&query(0x4321, "github.com", TYPE_A)));
    assert_eq!(again.addrs, vec![addr]);
    let other = parse(&server.udp_reply(&query(7, "pypi.org.", TYPE_A)));
    assert!(synthetic(other.addrs[0]));
    assert_ne!(other.addrs[0], addr);
    assert_eq!(server.stub.name_for(addr).as_deref(), Some("github.com"));
    assert_eq!(
        server.stub.name_for(other.addrs[0]).as_deref(),
        Some("pypi.org")
    );
    // Each name's address is logged once, when given.
    let logs = server.logs();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs[0].contains("github.com") && logs[0].contains(&addr.to_string()));
}

#[test]
fn udp_aaaa_is_nodata() {
    let server = Server::start(&["github.com"]);
    let reply = parse(&server.udp_reply(&query(9, "github.com", TYPE_AAAA)));
    assert_eq!((reply.rcode, reply.qdcount, reply.ancount), (NOERROR, 1, 0));
    assert!(server.logs().is_empty());
}

#[test]
fn udp_txt_for_an_unknown_name_is_refused_and_nothing_else_happens() {
    let server = Server::start(&["github.com"]);
    let name = "nbswy3dpeb3w64tmmq.mfrggzdfmztwq2lk.c2.attacker.example";
    let client = server.client();
    let q = query(0xBEEF, name, TYPE_TXT);
    client.send(&q).unwrap();
    let mut buf = [0u8; 2048];
    let n = client.recv(&mut buf).unwrap();
    let reply = parse(&buf[..n]);
    assert_eq!(
        (reply.id, reply.rcode, reply.ancount),
        (0xBEEF, NXDOMAIN, 0)
    );
    assert_eq!(reply.question, q[12..]);
    // Exactly one datagram back; no address was given to anything.
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(client.recv(&mut buf).is_err(), "a second datagram");
    assert_eq!(server.stub.name_for(Ipv4Addr::new(198, 18, 0, 2)), None);
    // The refusal is logged once per name.
    server.udp_reply(&query(1, name, TYPE_TXT));
    server.udp_reply(&query(2, &name.to_uppercase(), TYPE_A));
    let logs = server.logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(
        logs[0].contains(name) && logs[0].contains("TXT"),
        "{logs:?}"
    );
}

#[test]
fn udp_mixed_case_is_echoed() {
    let server = Server::start(&["github.com"]);
    let q = query(3, "gItHuB.cOm", TYPE_A);
    let reply = parse(&server.udp_reply(&q));
    assert_eq!(reply.rcode, NOERROR);
    assert_eq!(reply.question, q[12..], "0x20 case preserved");
    assert!(synthetic(reply.addrs[0]));
}

#[test]
fn udp_two_questions_are_formerr() {
    let server = Server::start(&["github.com"]);
    let mut q = query(5, "github.com", TYPE_A);
    let question = q[12..].to_vec();
    q.extend_from_slice(&question);
    q[5] = 2;
    let reply = parse(&server.udp_reply(&q));
    assert_eq!((reply.id, reply.rcode, reply.ancount), (5, FORMERR, 0));
    assert_eq!(server.stub.name_for(Ipv4Addr::new(198, 18, 0, 2)), None);
}

#[test]
fn udp_malformed_queries() {
    let server = Server::start(&["github.com"]);
    let quiet = Duration::from_millis(300);
    // Shorter than a header, and a response: no reply.
    assert_eq!(server.udp(&[0x12, 0x34, 0x01], quiet), None);
    let mut response = query(6, "github.com", TYPE_A);
    response[2] |= 0x80;
    assert_eq!(server.udp(&response, quiet), None);
    let header = query(6, "x", TYPE_A)[..12].to_vec();
    let with_body = |body: &[u8]| [header.as_slice(), body].concat();
    // Truncated question, a compression pointer looping on itself, a 64-byte label.
    let mut overlong = vec![64];
    overlong.extend_from_slice(&[b'a'; 64]);
    overlong.extend_from_slice(&[0, 0, 1, 0, 1]);
    for body in [
        &[7, b'g', b'i', b't'][..],
        &[0xC0, 12, 0, 1, 0, 1][..],
        &overlong[..],
    ] {
        let reply = parse(&server.udp_reply(&with_body(body)));
        assert_eq!((reply.id, reply.rcode, reply.qdcount), (6, FORMERR, 0));
    }
    // The server still answers afterwards.
    let reply = parse(&server.udp_reply(&query(8, "github.com", TYPE_A)));
    assert_eq!(reply.rcode, NOERROR);
}

fn tcp_send(stream: &mut TcpStream, msg: &[u8]) {
    stream
        .write_all(&[&(msg.len() as u16).to_be_bytes()[..], msg].concat())
        .unwrap();
}

fn tcp_recv(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).unwrap();
    msg
}

#[test]
fn tcp_several_queries_on_one_connection() {
    let server = Server::start(&["github.com"]);
    let mut stream = TcpStream::connect(server.tcp).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // Two queries written back to back, then the replies read in order.
    tcp_send(&mut stream, &query(1, "github.com", TYPE_A));
    tcp_send(&mut stream, &query(2, "unknown.example", TYPE_A));
    let first = parse(&tcp_recv(&mut stream));
    let second = parse(&tcp_recv(&mut stream));
    assert_eq!((first.id, first.rcode), (1, NOERROR));
    assert!(synthetic(first.addrs[0]));
    assert_eq!((second.id, second.rcode), (2, NXDOMAIN));
    // The same address over TCP and UDP.
    let udp = parse(&server.udp_reply(&query(3, "github.com", TYPE_A)));
    assert_eq!(udp.addrs, first.addrs);
    tcp_send(&mut stream, &query(4, "github.com", TYPE_AAAA));
    let third = parse(&tcp_recv(&mut stream));
    assert_eq!((third.id, third.rcode, third.ancount), (4, NOERROR, 0));
    // A message without a readable header: the connection is closed.
    tcp_send(&mut stream, &[1, 2, 3]);
    let mut byte = [0u8; 1];
    assert_eq!(stream.read(&mut byte).unwrap(), 0);
}

#[test]
fn tcp_connections_are_capped() {
    let server = Server::start(&["github.com"]);
    let max = airlock_enforcer::stub_dns::MAX_TCP_CONNECTIONS;
    let mut held: Vec<TcpStream> = (0..max)
        .map(|_| TcpStream::connect(server.tcp).unwrap())
        .collect();
    // Every held connection is served (and so accepted) before the next one is tried.
    for (i, stream) in held.iter_mut().enumerate() {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        tcp_send(stream, &query(i as u16, "github.com", TYPE_A));
        assert_eq!(parse(&tcp_recv(stream)).id, i as u16);
    }
    let mut extra = TcpStream::connect(server.tcp).unwrap();
    extra.set_read_timeout(Some(WAIT)).unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(extra.read(&mut byte), Ok(0) | Err(_)), "closed");
    // Once one closes, a new connection is served again.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut again = TcpStream::connect(server.tcp).unwrap();
    again.set_read_timeout(Some(WAIT)).unwrap();
    tcp_send(&mut again, &query(99, "github.com", TYPE_A));
    assert_eq!(parse(&tcp_recv(&mut again)).id, 99);
}

/// `dig`, a real resolver client (`make deps` installs it).
#[test]
fn dig_gets_the_documented_answers() {
    assert!(
        std::process::Command::new("dig").arg("-v").output().is_ok(),
        "dig is missing (make deps installs dnsutils)"
    );
    let server = Server::start(&["github.com"]);
    let dig = |args: &[&str]| {
        let out = std::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &server.udp.port().to_string()])
            .args(["+tries=1", "+time=3"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let a = dig(&["+short", "github.com", "A"]);
    let addr: Ipv4Addr = a.trim().parse().unwrap_or_else(|_| panic!("{a}"));
    assert!(synthetic(addr));
    assert!(dig(&["txt.example.net", "TXT"]).contains("NXDOMAIN"));
    assert!(dig(&["github.com", "AAAA"]).contains("NOERROR"));
    // dig takes one port for both transports.
    if server.tcp.port() == server.udp.port() {
        assert!(dig(&["+tcp", "+short", "github.com", "A"]).contains("198."));
    }
}

/// The other [`DnsLog`](airlock_enforcer::stub_dns::DnsLog) form: every outcome, for a
/// caller that does its own filtering (the egress funnel reports first refusals).
#[test]
fn outcome_consumers_see_every_outcome() {
    use airlock_enforcer::stub_dns::DnsOutcome;
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let addr = udp.local_addr().unwrap();
    let stub = Arc::new(StubDns::new(["github.com".to_string()]));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let log: Arc<dyn Fn(&DnsOutcome) + Send + Sync> =
            Arc::new(move |o: &DnsOutcome| seen2.lock().unwrap().push(o.clone()));
        let server = tokio::spawn(serve_udp(
            tokio::net::UdpSocket::from_std(udp).unwrap(),
            stub,
            log,
        ));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        let mut buf = [0u8; 512];
        for (id, name) in [(1, "github.com"), (2, "github.com"), (3, "x.example")] {
            client.send(&query(id, name, TYPE_A)).await.unwrap();
            tokio::time::timeout(WAIT, client.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
        }
        server.abort();
    });
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(matches!(
        seen[1],
        DnsOutcome::Answered {
            newly_allocated: false,
            ..
        }
    ));
    assert_eq!(seen[2].first_refused_name(), Some("x.example"));
}
