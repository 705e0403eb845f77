//! The egress funnel's interfaces and nftables rules, programmed from Rust, checked
//! against the kernel.
//!
//! Each test re-executes this test binary under `unshare -Urn` (fresh user and network
//! namespaces) with [`INSIDE`] naming the test, and the re-executed copy runs the
//! test's body there. The host's network namespace is never touched: the body refuses
//! to run in the namespace the test started in. Needs `unshare` (util-linux) and, for
//! the golden comparison, `nft`.

use std::io::{ErrorKind, Read};
use std::net::{
    Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use airlock_enforcer::net_interfaces::{
    bring_up_funnel_interfaces_in_current_netns, FunnelAddresses, FUNNEL_LOCAL_ADDR,
};
use airlock_enforcer::netfilter::{
    dropped_packets_in_current_netns, flush_egress_funnel_rules_in_current_netns,
    install_egress_funnel_rules_in_current_netns, FunnelPorts, NetfilterError,
};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn};

/// Set in the re-executed copy: the name of the test whose body to run.
const INSIDE: &str = "AIRLOCK_NETFILTER_TEST_INSIDE";
/// The namespace the test started in, which the body must not run in.
const OUTER_NETNS: &str = "AIRLOCK_NETFILTER_TEST_OUTER_NETNS";

const EXPECTED_RULESET: &str = "\
table inet airlock {
 chain nat_out { type nat hook output priority -100; policy accept;
   ip daddr 127.0.0.0/8 return
   meta nfproto ipv4 udp dport 53 redirect to :53
   meta nfproto ipv4 tcp dport 53 redirect to :53
   meta nfproto ipv4 meta l4proto tcp redirect to :15001
 }
 chain filt_out { type filter hook output priority 0; policy drop;
   ct status dnat accept
   ip daddr 127.0.0.0/8 meta l4proto tcp accept
   ip daddr 127.0.0.0/8 udp dport 53 accept
   ip daddr 127.0.0.0/8 udp sport 53 accept
   ip6 daddr ::1 meta l4proto tcp accept
   counter drop
 }
}";

const PORTS: FunnelPorts = FunnelPorts {
    transparent_tcp: 15001,
    dns: 53,
};

const TIMEOUT: Duration = Duration::from_secs(5);

fn current_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .expect("readlink /proc/self/ns/net")
        .display()
        .to_string()
}

/// Runs `body` in fresh namespaces made by `unshare <unshare_flags>`: here, if this is
/// the re-executed copy for `name`; otherwise by re-executing.
fn run_inside(name: &str, unshare_flags: &str, body: fn()) {
    match std::env::var(INSIDE) {
        Ok(inside) if inside == name => {
            if unshare_flags.contains('n') {
                let outer = std::env::var(OUTER_NETNS).expect("outer netns recorded");
                assert_ne!(
                    current_netns(),
                    outer,
                    "refusing to touch the starting network namespace"
                );
            }
            body();
            return;
        }
        // Another test's re-executed copy runs only that test (`--exact`).
        Ok(_) => return,
        Err(_) => {}
    }
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new("unshare")
        .arg(unshare_flags)
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, name)
        .env(OUTER_NETNS, current_netns())
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`unshare {unshare_flags}` {name} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The filter must have selected exactly the body, or nothing was tested.
    assert!(
        stdout.contains("running 1 test") && stdout.contains("1 passed"),
        "{name} did not run inside:\n{stdout}\n{stderr}"
    );
}

fn set_up_funnel() {
    let interfaces = bring_up_funnel_interfaces_in_current_netns(&FunnelAddresses::default())
        .expect("bringing up the funnel interfaces");
    assert_eq!(interfaces.local_addr, FUNNEL_LOCAL_ADDR);
    install_egress_funnel_rules_in_current_netns(&PORTS).expect("installing the rules");
}

/// `nft list table inet airlock`, normalized: one statement per line, counter values
/// dropped, the chain header joined to its `type` line, and nft's symbolic
/// `priority filter` written as the number it stands for.
fn listed_ruleset() -> String {
    let output = Command::new("nft")
        .args(["list", "table", "inet", "airlock"])
        .output()
        .expect("running nft");
    assert!(
        output.status.success(),
        "nft list table: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    normalize(&String::from_utf8(output.stdout).expect("utf-8"))
}

fn normalize(listing: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let line = strip_handle(line);
        let line = strip_counter_values(&line).replace("priority filter;", "priority 0;");
        match lines.last_mut() {
            Some(last) if last.starts_with("chain ") && line.starts_with("type ") => {
                last.push(' ');
                last.push_str(&line);
            }
            _ => lines.push(line),
        }
    }
    lines.join("\n")
}

fn strip_handle(line: &str) -> String {
    match line.find(" # handle ") {
        Some(at) => line[..at].to_owned(),
        None => line.to_owned(),
    }
}

/// `counter packets 3 bytes 180 drop` → `counter drop`.
fn strip_counter_values(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "counter"
            && words.get(i + 1) == Some(&"packets")
            && words.get(i + 3) == Some(&"bytes")
        {
            out.push("counter");
            i += 5;
        } else {
            out.push(words[i]);
            i += 1;
        }
    }
    out.join(" ")
}

fn expected_ruleset() -> String {
    normalize(EXPECTED_RULESET)
}

fn listen(addr: SocketAddr) -> TcpListener {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

/// Accepts one connection, waiting up to [`TIMEOUT`].
fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match listener.accept() {
            Ok(accepted) => return accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept on {:?}: {e}", listener.local_addr()),
        }
    }
}

fn assert_nothing_pending(listener: &TcpListener) {
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!(
            "{:?} unexpectedly got a connection: {other:?}",
            listener.local_addr()
        ),
    }
}

fn original_dst(stream: &TcpStream) -> SocketAddrV4 {
    let raw = socket::getsockopt(&stream.as_fd(), sockopt::OriginalDst).expect("SO_ORIGINAL_DST");
    SocketAddrV4::from(SockaddrIn::from(raw))
}

/// Connects to `target` and checks the funnel's forwarder listener gets it, with
/// `target` as the original destination and the funnel address as the source.
fn assert_funneled(forwarder: &TcpListener, target: SocketAddrV4) {
    let mut client = TcpStream::connect_timeout(&target.into(), TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {target}: {e}"));
    let (mut accepted, peer) = accept(forwarder);
    assert_eq!(original_dst(&accepted), target, "SO_ORIGINAL_DST");
    assert_eq!(
        peer.ip(),
        FUNNEL_LOCAL_ADDR,
        "source of a funneled connection"
    );
    std::io::Write::write_all(&mut client, b"ping").expect("write");
    let mut got = [0u8; 4];
    accepted.set_read_timeout(Some(TIMEOUT)).unwrap();
    accepted
        .read_exact(&mut got)
        .expect("read what the client sent");
    assert_eq!(&got, b"ping");
}

fn dropped() -> u64 {
    dropped_packets_in_current_netns().expect("reading the drop counter")
}

// -----------------------------------------------------------------------------

#[test]
fn rules_list_as_the_documented_ruleset() {
    run_inside("rules_list_as_the_documented_ruleset", "-Urn", || {
        set_up_funnel();
        assert_eq!(listed_ruleset(), expected_ruleset());
        assert_eq!(dropped(), 0);
    });
}

#[test]
fn rules_use_the_given_ports() {
    run_inside("rules_use_the_given_ports", "-Urn", || {
        install_egress_funnel_rules_in_current_netns(&FunnelPorts {
            transparent_tcp: 4242,
            dns: 5353,
        })
        .expect("install");
        let expected = expected_ruleset()
            .replace("redirect to :53", "redirect to :5353")
            .replace("udp dport 53 accept", "udp dport 5353 accept")
            .replace("udp sport 53 accept", "udp sport 5353 accept")
            .replace("redirect to :15001", "redirect to :4242");
        assert_eq!(listed_ruleset(), expected);
    });
}

#[test]
fn ipv4_tcp_is_funneled_with_its_original_destination() {
    run_inside(
        "ipv4_tcp_is_funneled_with_its_original_destination",
        "-Urn",
        || {
            set_up_funnel();
            let forwarder = listen((Ipv4Addr::LOCALHOST, PORTS.transparent_tcp).into());
            let dns_tcp = listen((Ipv4Addr::LOCALHOST, PORTS.dns).into());
            let local = listen((Ipv4Addr::LOCALHOST, 0).into());

            // Any address, public or synthetic, any port.
            assert_funneled(&forwarder, SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 80));
            assert_funneled(
                &forwarder,
                SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 4), 443),
            );
            assert_funneled(
                &forwarder,
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 22),
            );

            // TCP to port 53 goes to the stub, not the forwarder.
            let target = SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 53);
            let _client = TcpStream::connect_timeout(&target.into(), TIMEOUT).expect("connect :53");
            let (accepted, _) = accept(&dns_tcp);
            assert_eq!(original_dst(&accepted), target);
            assert_nothing_pending(&forwarder);

            // Loopback is not redirected: the local listener itself gets the connection.
            let local_addr = local.local_addr().unwrap();
            let _client = TcpStream::connect_timeout(&local_addr, TIMEOUT).expect("connect local");
            let (_, peer) = accept(&local);
            assert_eq!(peer.ip(), Ipv4Addr::LOCALHOST);
            assert_nothing_pending(&forwarder);
            assert_nothing_pending(&dns_tcp);

            // Nothing of the above was dropped.
            assert_eq!(dropped(), 0);
        },
    );
}

#[test]
fn udp_goes_to_the_stub_dns_or_nowhere() {
    run_inside("udp_goes_to_the_stub_dns_or_nowhere", "-Urn", || {
        set_up_funnel();
        let stub = UdpSocket::bind((Ipv4Addr::LOCALHOST, PORTS.dns)).expect("bind :53/udp");
        stub.set_read_timeout(Some(TIMEOUT)).unwrap();
        let client = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind client");

        // DNS to any resolver reaches the stub, and its answer gets back.
        client
            .send_to(b"query", "1.2.3.4:53")
            .expect("send to 1.2.3.4:53");
        let mut buf = [0u8; 16];
        let (n, from) = stub
            .recv_from(&mut buf)
            .expect("the stub receives the query");
        assert_eq!(&buf[..n], b"query");
        assert_eq!(from.ip(), FUNNEL_LOCAL_ADDR);
        stub.send_to(b"answer", from).expect("answer");
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (n, answered_by) = client
            .recv_from(&mut buf)
            .expect("the client gets the answer");
        assert_eq!(&buf[..n], b"answer");
        // Un-NATed on the way back: the client sees the resolver it asked.
        assert_eq!(answered_by, "1.2.3.4:53".parse().unwrap());
        assert_eq!(dropped(), 0);

        // Any other UDP is refused at sendto and counted.
        let error = client
            .send_to(b"ntp", "9.9.9.9:123")
            .expect_err("UDP to 9.9.9.9:123 must not leave");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
        assert_eq!(dropped(), 1);
        let error = client
            .send_to(b"x", "198.18.0.7:443")
            .expect_err("UDP to a synthetic address must not leave either (QUIC)");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
        assert_eq!(dropped(), 2);

        // So is ICMP.
        let raw = socket::socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            socket::SockProtocol::Icmp,
        )
        .expect("raw ICMP socket");
        let echo_request = [8u8, 0, 0xf7, 0xff, 0, 0, 0, 0];
        let to = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 0));
        let error = socket::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&raw),
            &echo_request,
            &to,
            MsgFlags::empty(),
        )
        .expect_err("ICMP must not leave");
        assert_eq!(error, Errno::EPERM);
        assert_eq!(dropped(), 3);

        // Loopback UDP reaches the stub asked directly, and its answer comes back; to
        // any other loopback port it is refused: datagrams queued where nobody reads
        // are memory no cgroup counts.
        let direct = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        direct
            .send_to(b"direct", (Ipv4Addr::LOCALHOST, PORTS.dns))
            .expect("to the stub on loopback");
        let (n, from) = stub.recv_from(&mut buf).expect("the stub receives it");
        assert_eq!(&buf[..n], b"direct");
        stub.send_to(b"back", from).expect("the answer on loopback");
        direct.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (n, _) = direct.recv_from(&mut buf).expect("the answer arrives");
        assert_eq!(&buf[..n], b"back");
        let sink = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let error = direct
            .send_to(b"fill", sink.local_addr().unwrap())
            .expect_err("loopback UDP to another port must be refused");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
        assert_eq!(dropped(), 4);
    });
}

#[test]
fn ipv6_does_not_leave_even_with_a_route() {
    run_inside("ipv6_does_not_leave_even_with_a_route", "-Urn", || {
        set_up_funnel();
        let target = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 80));
        TcpStream::connect_timeout(&target, TIMEOUT).expect_err("no IPv6 route out");
        assert_eq!(dropped(), 0, "unroutable: refused before the hook");

        if !Path::new("/proc/net/if_inet6").exists() {
            eprintln!("IPv6 disabled in this kernel; skipping the routed half");
            return;
        }
        // IPv6 loopback stays usable.
        let local = listen(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::LOCALHOST,
            0,
            0,
            0,
        )));
        TcpStream::connect_timeout(&local.local_addr().unwrap(), TIMEOUT).expect("[::1]");
        accept(&local);

        // Someone adds a route out: the filter still drops (and counts) it.
        let status = Command::new("ip")
            .args(["-6", "route", "add", "default", "dev", "lo"])
            .status()
            .expect("running ip");
        assert!(status.success(), "ip -6 route add default dev lo");
        let error = TcpStream::connect_timeout(&target, Duration::from_millis(1500))
            .expect_err("IPv6 TCP must not leave");
        assert!(
            matches!(error.kind(), ErrorKind::TimedOut)
                || error.raw_os_error() == Some(libc::EPERM),
            "{error}"
        );
        assert!(dropped() >= 1, "the SYN was dropped by the counted rule");
        let udp = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).expect("bind v6");
        let before = dropped();
        let error = udp
            .send_to(b"x", target)
            .expect_err("IPv6 UDP must not leave");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
        assert_eq!(dropped(), before + 1);
    });
}

#[test]
fn installing_twice_fails_and_changes_nothing() {
    run_inside("installing_twice_fails_and_changes_nothing", "-Urn", || {
        set_up_funnel();
        let client = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        client.send_to(b"x", "9.9.9.9:123").unwrap_err();
        assert_eq!(dropped(), 1);

        let error = install_egress_funnel_rules_in_current_netns(&FunnelPorts {
            transparent_tcp: 1,
            dns: 2,
        })
        .expect_err("a second install must fail");
        assert!(
            matches!(error, NetfilterError::AlreadyInstalled),
            "{error:?}"
        );
        assert!(error.to_string().contains("already exists"), "{error}");
        // Nothing replaced, nothing duplicated, the counter kept.
        assert_eq!(listed_ruleset(), expected_ruleset());
        assert_eq!(dropped(), 1);

        // The interfaces are idempotent.
        bring_up_funnel_interfaces_in_current_netns(&FunnelAddresses::default())
            .expect("bringing the interfaces up again");
    });
}

#[test]
fn an_existing_table_is_left_exactly_as_it_was() {
    run_inside(
        "an_existing_table_is_left_exactly_as_it_was",
        "-Urn",
        || {
            // Someone else's (empty) table of the same name: the batch must not add its
            // chains to it, even though only the table message fails.
            let status = Command::new("nft")
                .args(["add", "table", "inet", "airlock"])
                .status()
                .expect("running nft");
            assert!(status.success());
            let error = install_egress_funnel_rules_in_current_netns(&PORTS).unwrap_err();
            assert!(
                matches!(error, NetfilterError::AlreadyInstalled),
                "{error:?}"
            );
            assert_eq!(listed_ruleset(), "table inet airlock {\n}");
        },
    );
}

#[test]
fn flushed_rules_are_reported_and_can_be_reinstalled() {
    run_inside(
        "flushed_rules_are_reported_and_can_be_reinstalled",
        "-Urn",
        || {
            set_up_funnel();
            flush_egress_funnel_rules_in_current_netns().expect("flush");
            let error = dropped_packets_in_current_netns().unwrap_err();
            assert!(
                matches!(error, NetfilterError::DropCounter { found: 0 }),
                "{error:?}"
            );
            let error = flush_egress_funnel_rules_in_current_netns().unwrap_err();
            assert!(
                matches!(
                    error,
                    NetfilterError::Rejected {
                        errno: Errno::ENOENT,
                        ..
                    }
                ),
                "{error:?}"
            );
            assert!(
                error.to_string().contains("DELTABLE inet airlock"),
                "{error}"
            );

            // Without rules nothing is redirected: the forwarder gets no connection.
            let forwarder = listen((Ipv4Addr::LOCALHOST, PORTS.transparent_tcp).into());
            let _ = TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::new(8, 8, 8, 8), 80)),
                Duration::from_millis(300),
            );
            assert_nothing_pending(&forwarder);

            install_egress_funnel_rules_in_current_netns(&PORTS).expect("reinstall");
            assert_eq!(listed_ruleset(), expected_ruleset());
            assert_funneled(
                &forwarder,
                SocketAddrV4::new(Ipv4Addr::new(8, 8, 4, 4), 443),
            );
        },
    );
}

#[test]
fn without_cap_net_admin_errors_name_the_operation() {
    // A user namespace alone: "root" there has no capability over the host's network
    // namespace, so the kernel refuses every change (and the host is never touched).
    run_inside(
        "without_cap_net_admin_errors_name_the_operation",
        "-Ur",
        || {
            let error = install_egress_funnel_rules_in_current_netns(&PORTS).unwrap_err();
            assert!(
                matches!(
                    error,
                    NetfilterError::Rejected {
                        errno: Errno::EPERM,
                        ..
                    }
                ),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(
                message.starts_with("installing the egress funnel rules: the kernel refused"),
                "{message}"
            );
            assert!(
                message.contains("EPERM") && message.contains("CAP_NET_ADMIN"),
                "{message}"
            );

            let error = dropped_packets_in_current_netns().unwrap_err();
            assert!(
                error.to_string().contains("reading the drop counter"),
                "{error}"
            );
            assert!(error.to_string().contains("EPERM"), "{error}");

            let error = bring_up_funnel_interfaces_in_current_netns(&FunnelAddresses::default())
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("interface lo") && error.contains("EPERM"),
                "{error}"
            );
        },
    );
}

#[test]
fn normalization_is_faithful() {
    assert_eq!(
        normalize(
            "table inet t { # handle 4\n\tchain c { # handle 1\n\t\ttype filter hook \
             output priority filter; policy drop;\n\t\tcounter packets 12 bytes 3400 drop \
             # handle 9\n\t}\n}\n"
        ),
        "table inet t {\nchain c { type filter hook output priority 0; policy drop;\n\
         counter drop\n}\n}"
    );
}
