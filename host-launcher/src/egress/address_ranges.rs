//! Which resolved addresses the host refuses to dial, and how a granted name becomes
//! the addresses it dials.
//!
//! A grant is a DNS name; what the name resolves to is not the agent's to choose, but
//! it is not the grant's author's either: a public name can resolve to loopback, a
//! private network or a cloud metadata service (DNS rebinding, or just a careless
//! record). The host resolves every name itself and refuses answers in ranges that
//! reach the host, its networks or its cloud, unless the manifest pins the name to an
//! address (a pin is the explicit grant of that address, whatever its range).

use crate::policy::capability::normalize_host;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// How long the host's resolver may take for one name.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Defines the refused IPv4 ranges and their names, plain and as embedded in each
/// IPv6 form that carries an IPv4 address (so every name stays a `&'static str`).
macro_rules! ipv4_ranges {
    ($($range:ident = $name:literal,)*) => {
        #[derive(Debug, Clone, Copy)]
        enum V4Range {
            $($range,)*
        }

        impl V4Range {
            fn name(self, carrier: Carrier) -> &'static str {
                match (self, carrier) {
                    $(
                        (V4Range::$range, Carrier::Plain) => $name,
                        (V4Range::$range, Carrier::Mapped) => {
                            concat!($name, " in IPv4-mapped IPv6 (::ffff:0:0/96)")
                        }
                        (V4Range::$range, Carrier::Nat64) => {
                            concat!($name, " in NAT64 (64:ff9b::/96)")
                        }
                        (V4Range::$range, Carrier::LocalNat64) => {
                            concat!($name, " in local-use NAT64 (64:ff9b:1::/48)")
                        }
                        (V4Range::$range, Carrier::SixToFour) => {
                            concat!($name, " in 6to4 (2002::/16)")
                        }
                    )*
                }
            }
        }
    };
}

ipv4_ranges! {
    Unspecified = "unspecified (0.0.0.0)",
    ThisNetwork = "this network (0.0.0.0/8)",
    Loopback = "loopback (127.0.0.0/8)",
    Private10 = "private (10.0.0.0/8)",
    Private172 = "private (172.16.0.0/12)",
    Private192 = "private (192.168.0.0/16)",
    Metadata = "cloud metadata (169.254.169.254)",
    AlibabaMetadata = "cloud metadata (100.100.100.200, Alibaba)",
    AzureWireServer = "cloud platform service (168.63.129.16, Azure WireServer)",
    LinkLocal = "link-local (169.254.0.0/16)",
    SharedCgnat = "carrier-grade NAT (100.64.0.0/10)",
    IetfProtocol = "IETF protocol assignments (192.0.0.0/24)",
    Documentation1 = "documentation (192.0.2.0/24)",
    Documentation2 = "documentation (198.51.100.0/24)",
    Documentation3 = "documentation (203.0.113.0/24)",
    Relay6to4 = "6to4 relay anycast (192.88.99.0/24, deprecated)",
    Benchmarking = "benchmarking (198.18.0.0/15)",
    Multicast = "multicast (224.0.0.0/4)",
    Broadcast = "broadcast (255.255.255.255)",
    Reserved = "reserved (240.0.0.0/4)",
}

/// How an IPv4 address reached the classifier.
#[derive(Debug, Clone, Copy)]
enum Carrier {
    Plain,
    Mapped,
    Nat64,
    LocalNat64,
    SixToFour,
}

/// The refused range `ip` is in, named with its prefix, or `None` if the host may
/// dial it. IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4) are
/// judged by that address.
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => ipv4_range(v4).map(|r| r.name(Carrier::Plain)),
        IpAddr::V6(v6) => ipv6_range(v6),
    }
}

fn ipv4_range(ip: Ipv4Addr) -> Option<V4Range> {
    let [a, b, c, d] = ip.octets();
    // Single addresses first: they sit inside wider ranges and name the real danger.
    let range = match (a, b, c, d) {
        _ if ip.is_unspecified() => V4Range::Unspecified,
        (169, 254, 169, 254) => V4Range::Metadata,
        (100, 100, 100, 200) => V4Range::AlibabaMetadata,
        // Azure's host-side endpoint (agent configuration, certificates) answers
        // only from inside a VM although the address is public.
        (168, 63, 129, 16) => V4Range::AzureWireServer,
        _ if ip.is_broadcast() => V4Range::Broadcast,
        (0, ..) => V4Range::ThisNetwork,
        _ if ip.is_loopback() => V4Range::Loopback,
        (10, ..) => V4Range::Private10,
        (172, 16..=31, ..) => V4Range::Private172,
        (192, 168, ..) => V4Range::Private192,
        _ if ip.is_link_local() => V4Range::LinkLocal,
        (100, 64..=127, ..) => V4Range::SharedCgnat,
        // Mostly special-purpose (DS-Lite, NAT64 discovery, OCI's 192.0.0.192
        // metadata alias); the two anycast services in it are not for agents.
        (192, 0, 0, _) => V4Range::IetfProtocol,
        (192, 0, 2, _) => V4Range::Documentation1,
        (198, 51, 100, _) => V4Range::Documentation2,
        (203, 0, 113, _) => V4Range::Documentation3,
        (192, 88, 99, _) => V4Range::Relay6to4,
        (198, 18..=19, ..) => V4Range::Benchmarking,
        _ if ip.is_multicast() => V4Range::Multicast,
        (240..=255, ..) => V4Range::Reserved,
        _ => return None,
    };
    Some(range)
}

fn ipv6_range(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    if s == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] {
        return Some("cloud metadata (fd00:ec2::254, AWS)");
    }
    if s == [0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254] {
        return Some("cloud metadata (fd20:ce::254, GCP)");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return ipv4_range(v4).map(|r| r.name(Carrier::Mapped));
    }
    if s[..6] == [0; 6] {
        // Deprecated (RFC 4291 §2.5.5.1); nothing legitimate resolves to it.
        return Some("IPv4-compatible IPv6 (::/96, deprecated)");
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return ipv4_range(embedded(s[6], s[7])).map(|r| r.name(Carrier::Nat64));
    }
    if s[..3] == [0x64, 0xff9b, 1] {
        // RFC 8215 lets each network choose a prefix of /48 to /96 here, and RFC 6052
        // puts the IPv4 address in a different place for each. A /96 (the usual
        // choice) is judged by its IPv4 address; other lengths cannot be told apart
        // from the address alone, so they are refused.
        if s[3..6] != [0, 0, 0] {
            return Some("local-use NAT64 (64:ff9b:1::/48) with a prefix other than /96");
        }
        return ipv4_range(embedded(s[6], s[7])).map(|r| r.name(Carrier::LocalNat64));
    }
    if s[0] == 0x2002 {
        return ipv4_range(embedded(s[1], s[2])).map(|r| r.name(Carrier::SixToFour));
    }
    let range = match s {
        // The server's IPv4 address is inside the address, the route to it is not
        // the host's: Teredo relays tunnel to anywhere.
        [0x2001, 0, ..] => "Teredo (2001::/32)",
        [0x2001, 2, 0, ..] => "benchmarking (2001:2::/48)",
        [0x2001, 0xdb8, ..] => "documentation (2001:db8::/32)",
        [0x3ff0..=0x3fff, ..] => "documentation (3fff::/20)",
        [0x100, 0, 0, 0, ..] => "discard-only (100::/64)",
        _ if ip.is_unique_local() => "private (unique local fc00::/7)",
        _ if ip.is_unicast_link_local() => "link-local (fe80::/10)",
        [0xfec0..=0xfeff, ..] => "site-local (fec0::/10, deprecated)",
        _ if ip.is_multicast() => "multicast (ff00::/8)",
        // Only 2000::/3 is allocated for global unicast; the rest is reserved or
        // special-purpose (SRv6 SIDs, dummy prefixes, SIIT), never a public server.
        [0x2000..=0x3fff, ..] => return None,
        _ => "not global unicast (outside 2000::/3)",
    };
    Some(range)
}

/// Parses a `--resolve` pin `NAME=IP` (like curl's `--resolve`, without the port):
/// the name normalised (lower case, no trailing dot) and checked to be a DNS name,
/// the address IPv4 or IPv6, brackets allowed around IPv6.
pub fn parse_resolve_pin(text: &str) -> Result<(String, IpAddr), String> {
    let Some((name, address)) = text.split_once('=') else {
        return Err(format!("`{text}` is not NAME=IP"));
    };
    let name = normalize_host(name)?;
    let ip = match address.strip_prefix('[') {
        Some(bracketed) => bracketed
            .strip_suffix(']')
            .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6)
            .ok_or_else(|| format!("`{address}` is not a bracketed IPv6 address"))?,
        None => address
            .parse::<IpAddr>()
            .map_err(|_| format!("`{address}` is not an IPv4 or IPv6 address"))?,
    };
    Ok((name, ip))
}

/// Why a granted name gave no address to dial.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver answered with no address at all.
    #[error("`{name}` resolves to no address")]
    NoAddress {
        /// The name looked up.
        name: String,
    },
    /// Every answer is in a refused range.
    #[error(
        "every address `{name}` resolves to is in a refused range: {}; pin the name to \
         an address to grant it explicitly",
        shown_answers(answers)
    )]
    AllRefused {
        /// The name looked up.
        name: String,
        /// Each refused answer with the range it is in.
        answers: Vec<(IpAddr, &'static str)>,
    },
    /// The resolver did not answer within [`LOOKUP_TIMEOUT`].
    #[error("resolving `{name}` took longer than {} s", LOOKUP_TIMEOUT.as_secs())]
    Timeout {
        /// The name looked up.
        name: String,
    },
    /// The resolver failed (no such name, no resolver, ...).
    #[error("resolving `{name}` failed: {source}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// What the resolver said.
        source: std::io::Error,
    },
}

fn shown_answers(answers: &[(IpAddr, &'static str)]) -> String {
    let shown: Vec<String> = answers
        .iter()
        .map(|(ip, range)| format!("{ip} ({range})"))
        .collect();
    shown.join(", ")
}

/// The addresses to dial for `name:port`. A pin for the name (looked up lower case,
/// without a trailing dot) wins and is returned as is: it is the explicit grant of its
/// address. Otherwise the host's resolver answers within [`LOOKUP_TIMEOUT`] and every
/// answer in a [`refused_range`] is dropped; if none is left, the error names each
/// answer and its range.
pub async fn resolve_for_dial(
    name: &str,
    port: u16,
    pins: &BTreeMap<String, IpAddr>,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let key = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if let Some(ip) = pins.get(&key) {
        return Ok(vec![SocketAddr::new(*ip, port)]);
    }
    let answers = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| ResolveError::Timeout {
            name: name.to_owned(),
        })?
        .map_err(|source| ResolveError::Lookup {
            name: name.to_owned(),
            source,
        })?;
    let mut dial: Vec<SocketAddr> = Vec::new();
    let mut refused: Vec<(IpAddr, &'static str)> = Vec::new();
    for answer in answers {
        let ip = answer.ip();
        if dial.contains(&answer) || refused.iter().any(|(seen, _)| *seen == ip) {
            continue;
        }
        match refused_range(ip) {
            Some(range) => refused.push((ip, range)),
            None => dial.push(answer),
        }
    }
    match (dial.is_empty(), refused.is_empty()) {
        (false, _) => Ok(dial),
        (true, true) => Err(ResolveError::NoAddress {
            name: name.to_owned(),
        }),
        (true, false) => Err(ResolveError::AllRefused {
            name: name.to_owned(),
            answers: refused,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Address → the range it is refused as (`None`: the host may dial it).
    const CASES: &[(&str, Option<&str>)] = &[
        // Public addresses pass.
        ("1.1.1.1", None),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("100.63.255.255", None),
        ("100.128.0.0", None),
        ("172.15.255.255", None),
        ("172.32.0.0", None),
        ("192.0.1.1", None),
        ("198.17.255.255", None),
        ("198.20.0.0", None),
        ("223.255.255.255", None),
        ("2606:4700:4700::1111", None),
        ("2a00:1450:4001:80b::200e", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
        ("64:ff9b:1::808:808", None),
        ("2002:808:808::1", None),
        ("2001:4860:4860::8888", None),
        // IPv4 ranges.
        ("0.0.0.0", Some("unspecified (0.0.0.0)")),
        ("0.1.2.3", Some("this network (0.0.0.0/8)")),
        ("127.0.0.1", Some("loopback (127.0.0.0/8)")),
        ("127.255.255.254", Some("loopback (127.0.0.0/8)")),
        ("10.0.0.1", Some("private (10.0.0.0/8)")),
        ("172.16.0.1", Some("private (172.16.0.0/12)")),
        ("172.31.255.255", Some("private (172.16.0.0/12)")),
        ("192.168.1.1", Some("private (192.168.0.0/16)")),
        ("169.254.169.254", Some("cloud metadata (169.254.169.254)")),
        (
            "100.100.100.200",
            Some("cloud metadata (100.100.100.200, Alibaba)"),
        ),
        (
            "168.63.129.16",
            Some("cloud platform service (168.63.129.16, Azure WireServer)"),
        ),
        ("169.254.170.2", Some("link-local (169.254.0.0/16)")),
        ("100.64.0.1", Some("carrier-grade NAT (100.64.0.0/10)")),
        ("100.127.255.255", Some("carrier-grade NAT (100.64.0.0/10)")),
        (
            "192.0.0.192",
            Some("IETF protocol assignments (192.0.0.0/24)"),
        ),
        ("192.0.2.1", Some("documentation (192.0.2.0/24)")),
        ("198.51.100.7", Some("documentation (198.51.100.0/24)")),
        ("203.0.113.9", Some("documentation (203.0.113.0/24)")),
        (
            "192.88.99.1",
            Some("6to4 relay anycast (192.88.99.0/24, deprecated)"),
        ),
        ("198.18.0.1", Some("benchmarking (198.18.0.0/15)")),
        ("198.19.255.255", Some("benchmarking (198.18.0.0/15)")),
        ("224.0.0.251", Some("multicast (224.0.0.0/4)")),
        ("239.255.255.250", Some("multicast (224.0.0.0/4)")),
        ("240.0.0.1", Some("reserved (240.0.0.0/4)")),
        ("255.255.255.254", Some("reserved (240.0.0.0/4)")),
        ("255.255.255.255", Some("broadcast (255.255.255.255)")),
        // IPv6 ranges.
        ("::", Some("unspecified (::)")),
        ("::1", Some("loopback (::1)")),
        ("fd00:ec2::254", Some("cloud metadata (fd00:ec2::254, AWS)")),
        ("fd20:ce::254", Some("cloud metadata (fd20:ce::254, GCP)")),
        ("fd00:ec2::23", Some("private (unique local fc00::/7)")),
        ("fc00::1", Some("private (unique local fc00::/7)")),
        ("fe80::1", Some("link-local (fe80::/10)")),
        ("febf::1", Some("link-local (fe80::/10)")),
        ("fec0::1", Some("site-local (fec0::/10, deprecated)")),
        ("ff02::1", Some("multicast (ff00::/8)")),
        ("2001::1", Some("Teredo (2001::/32)")),
        ("2001:0:4136:e378::1", Some("Teredo (2001::/32)")),
        ("2001:2::1", Some("benchmarking (2001:2::/48)")),
        ("2001:db8::1", Some("documentation (2001:db8::/32)")),
        ("3fff::1", Some("documentation (3fff::/20)")),
        ("100::1", Some("discard-only (100::/64)")),
        (
            "100:0:0:1::1",
            Some("not global unicast (outside 2000::/3)"),
        ),
        ("5f00::1", Some("not global unicast (outside 2000::/3)")),
        ("4000::1", Some("not global unicast (outside 2000::/3)")),
        (
            "::ffff:0:8.8.8.8",
            Some("not global unicast (outside 2000::/3)"),
        ),
        (
            "::127.0.0.1",
            Some("IPv4-compatible IPv6 (::/96, deprecated)"),
        ),
        (
            "::8.8.8.8",
            Some("IPv4-compatible IPv6 (::/96, deprecated)"),
        ),
        // IPv6 carrying a refused IPv4 address.
        (
            "::ffff:127.0.0.1",
            Some("loopback (127.0.0.0/8) in IPv4-mapped IPv6 (::ffff:0:0/96)"),
        ),
        (
            "::ffff:169.254.169.254",
            Some("cloud metadata (169.254.169.254) in IPv4-mapped IPv6 (::ffff:0:0/96)"),
        ),
        (
            "::ffff:0.0.0.0",
            Some("unspecified (0.0.0.0) in IPv4-mapped IPv6 (::ffff:0:0/96)"),
        ),
        (
            "64:ff9b::10.1.2.3",
            Some("private (10.0.0.0/8) in NAT64 (64:ff9b::/96)"),
        ),
        (
            "64:ff9b::a9fe:a9fe",
            Some("cloud metadata (169.254.169.254) in NAT64 (64:ff9b::/96)"),
        ),
        (
            "64:ff9b:1::192.168.0.1",
            Some("private (192.168.0.0/16) in local-use NAT64 (64:ff9b:1::/48)"),
        ),
        // 127.0.0.1 where a /48 prefix puts it (7f00, the u octet, 00 01).
        (
            "64:ff9b:1:7f00:0:100::",
            Some("local-use NAT64 (64:ff9b:1::/48) with a prefix other than /96"),
        ),
        (
            "2002:7f00:1::1",
            Some("loopback (127.0.0.0/8) in 6to4 (2002::/16)"),
        ),
        (
            "2002:a9fe:a9fe::",
            Some("cloud metadata (169.254.169.254) in 6to4 (2002::/16)"),
        ),
        (
            "2002:c0a8:101::1",
            Some("private (192.168.0.0/16) in 6to4 (2002::/16)"),
        ),
    ];

    #[test]
    fn every_case_is_classified_as_listed() {
        let mut wrong = Vec::new();
        for (text, want) in CASES {
            let ip: IpAddr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            let got = refused_range(ip);
            if got != *want {
                wrong.push(format!("{text}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn pins_parse_like_curl_resolve_and_say_what_is_wrong() {
        let ok: &[(&str, &str, &str)] = &[
            ("api.example.com=10.0.0.5", "api.example.com", "10.0.0.5"),
            ("API.Example.COM.=10.0.0.5", "api.example.com", "10.0.0.5"),
            ("db.internal=::1", "db.internal", "::1"),
            ("db.internal=[fd00::1]", "db.internal", "fd00::1"),
        ];
        for (text, name, ip) in ok {
            let (n, i) = parse_resolve_pin(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((n.as_str(), i), (*name, ip.parse::<IpAddr>().unwrap()));
        }
        let bad: &[(&str, &str)] = &[
            ("api.example.com", "is not NAME=IP"),
            ("=10.0.0.1", "must be 1-253 characters"),
            ("a..b=10.0.0.1", "empty or over-long label"),
            ("a_b.example=10.0.0.1", "may only contain"),
            ("10.0.0.1=10.0.0.2", "is an IP address"),
            (
                "x.example=10.0.0",
                "`10.0.0` is not an IPv4 or IPv6 address",
            ),
            ("x.example=[10.0.0.1]", "is not a bracketed IPv6 address"),
            ("x.example=[::1", "is not a bracketed IPv6 address"),
            ("x.example=fe80::1%eth0", "is not an IPv4 or IPv6 address"),
            ("x.example=", "`` is not an IPv4 or IPv6 address"),
        ];
        for (text, why) in bad {
            let e = parse_resolve_pin(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[tokio::test]
    async fn a_pin_wins_without_a_range_check() {
        let pins = BTreeMap::from([("db.internal".to_string(), "127.0.0.1".parse().unwrap())]);
        let got = resolve_for_dial("DB.internal.", 5432, &pins).await.unwrap();
        assert_eq!(got, vec!["127.0.0.1:5432".parse().unwrap()]);
    }

    #[tokio::test]
    async fn loopback_answers_are_refused_and_named() {
        let e = resolve_for_dial("localhost", 80, &BTreeMap::new())
            .await
            .unwrap_err();
        let ResolveError::AllRefused { name, answers } = &e else {
            panic!("{e}")
        };
        assert_eq!(name, "localhost");
        assert!(!answers.is_empty());
        assert!(
            answers.iter().all(|(ip, _)| ip.is_loopback()),
            "{answers:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("every address `localhost` resolves to is in a refused range: ")
                && text.contains("(loopback ("),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_address_literal_is_checked_like_an_answer() {
        let e = resolve_for_dial("169.254.169.254", 80, &BTreeMap::new())
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("169.254.169.254 (cloud metadata (169.254.169.254))"),
            "{e}"
        );
        let ok = resolve_for_dial("8.8.8.8", 53, &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(ok, vec!["8.8.8.8:53".parse().unwrap()]);
    }
}
