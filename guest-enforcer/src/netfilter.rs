//! The egress funnel's nftables rules, programmed over `NETLINK_NETFILTER` in the
//! current network namespace.
//!
//! The messages are encoded here (layouts from `linux/netfilter/nfnetlink.h` and
//! `nf_tables.h`, expression encodings as `nft --debug=netlink` 1.0.6 emits them), so
//! the statically linked enforcer needs neither the `nft` binary nor libnftnl. The
//! rule set, equivalent to:
//!
//! ```text
//! table inet airlock {
//!  chain nat_out { type nat hook output priority -100; policy accept;
//!    ip daddr 127.0.0.0/8 return
//!    meta nfproto ipv4 udp dport 53 redirect to :53
//!    meta nfproto ipv4 tcp dport 53 redirect to :53
//!    meta nfproto ipv4 meta l4proto tcp redirect to :15001
//!  }
//!  chain filt_out { type filter hook output priority 0; policy drop;
//!    ct status dnat accept
//!    ip daddr 127.0.0.0/8 meta l4proto tcp accept
//!    ip daddr 127.0.0.0/8 udp dport 53 accept
//!    ip daddr 127.0.0.0/8 udp sport 53 accept
//!    ip6 daddr ::1 meta l4proto tcp accept
//!    counter drop
//!  }
//! }
//! ```
//!
//! is installed in one nf_tables transaction: either all of it is in place or none of
//! it. If the table already exists the install fails ([`NetfilterError::AlreadyInstalled`])
//! and leaves the existing table untouched; it never replaces it.

use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// The table holding both chains (family `inet`).
pub const TABLE: &str = "airlock";
/// The NAT chain (output hook): redirects.
pub const NAT_CHAIN: &str = "nat_out";
/// The filter chain (output hook): what may leave, and the drop counter.
pub const FILTER_CHAIN: &str = "filt_out";

/// Local ports the funnel redirects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunnelPorts {
    /// The transparent TCP forwarder on 127.0.0.1 (recovers the destination with
    /// `SO_ORIGINAL_DST`).
    pub transparent_tcp: u16,
    /// The stub DNS on 127.0.0.1 (UDP and TCP).
    pub dns: u16,
}

impl Default for FunnelPorts {
    fn default() -> Self {
        FunnelPorts {
            transparent_tcp: 15001,
            dns: 53,
        }
    }
}

/// Programming or reading nf_tables failed.
#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    /// No netlink socket.
    #[error("{operation}: opening a NETLINK_NETFILTER socket: {source}")]
    Socket {
        /// What was being done.
        operation: &'static str,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The request could not be sent.
    #[error("{operation}: sending {len} bytes to the kernel: {source}")]
    Send {
        /// What was being done.
        operation: &'static str,
        /// Request size.
        len: usize,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The kernel's answer could not be read (a timeout shows as `EAGAIN`).
    #[error("{operation}: reading the kernel's answer: {source}")]
    Receive {
        /// What was being done.
        operation: &'static str,
        /// Why.
        #[source]
        source: Errno,
    },
    /// The answer did not parse.
    #[error("{operation}: malformed netlink answer: {detail}")]
    Malformed {
        /// What was being done.
        operation: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The kernel refused a message; for a batch, nothing of it was applied.
    #[error("{operation}: the kernel refused {message}: {errno}{}", permission_hint(*.errno))]
    Rejected {
        /// What was being done.
        operation: &'static str,
        /// The refused message, e.g. `NEWRULE inet airlock nat_out "…"`.
        message: String,
        /// The kernel's error.
        errno: Errno,
    },
    /// The table exists already; the install changed nothing.
    #[error(
        "installing the egress funnel rules: table inet {TABLE} already exists \
         (nothing was changed; the rules are installed once per network namespace)"
    )]
    AlreadyInstalled,
    /// The drop rule's counter is not where it should be.
    #[error(
        "reading the drop counter: chain {FILTER_CHAIN} of table inet {TABLE} holds \
         {found} counters, expected exactly 1 (rules missing or altered)"
    )]
    DropCounter {
        /// How many counter expressions the chain holds.
        found: usize,
    },
}

fn permission_hint(errno: Errno) -> &'static str {
    if errno == Errno::EPERM {
        " (CAP_NET_ADMIN over this network namespace is required)"
    } else {
        ""
    }
}

const INSTALL: &str = "installing the egress funnel rules";
const FLUSH: &str = "deleting the egress funnel rules";
const READ_COUNTER: &str = "reading the drop counter";

/// Installs the funnel's table `inet airlock` in the calling thread's network
/// namespace, atomically. Fails with [`NetfilterError::AlreadyInstalled`] (changing
/// nothing) if the table exists. Needs `CAP_NET_ADMIN` over the namespace and the
/// nf_tables, nat and redir support in the kernel.
pub fn install_egress_funnel_rules_in_current_netns(
    ports: &FunnelPorts,
) -> Result<(), NetfilterError> {
    let batch = funnel_batch(ports);
    match NfSocket::open(INSTALL)?.commit(INSTALL, &batch) {
        Err(NetfilterError::Rejected {
            errno: Errno::EEXIST,
            message,
            ..
        }) if message == batch[0].what => Err(NetfilterError::AlreadyInstalled),
        other => other,
    }
}

/// Packets dropped (and counted) by the funnel's last filter rule so far.
pub fn dropped_packets_in_current_netns() -> Result<u64, NetfilterError> {
    let socket = NfSocket::open(READ_COUNTER)?;
    let mut attrs = Attrs::default();
    attrs
        .string(NFTA_RULE_TABLE, TABLE)
        .string(NFTA_RULE_CHAIN, FILTER_CHAIN);
    let rules = socket.dump(READ_COUNTER, NFT_MSG_GETRULE, &attrs.0)?;
    let mut counters = Vec::new();
    for rule in &rules {
        rule_counters(rule, &mut counters).map_err(|detail| NetfilterError::Malformed {
            operation: READ_COUNTER,
            detail,
        })?;
    }
    match counters[..] {
        [packets] => Ok(packets),
        _ => Err(NetfilterError::DropCounter {
            found: counters.len(),
        }),
    }
}

/// Deletes table `inet airlock` with everything in it (what a root in the guest
/// could do). Fails with `ENOENT` if it does not exist.
pub fn flush_egress_funnel_rules_in_current_netns() -> Result<(), NetfilterError> {
    let mut attrs = Attrs::default();
    attrs.string(NFTA_TABLE_NAME, TABLE);
    let delete = BatchMessage {
        what: format!("DELTABLE inet {TABLE}"),
        msg_type: NFT_MSG_DELTABLE,
        flags: NLM_F_REQUEST | NLM_F_ACK,
        attrs: attrs.0,
    };
    NfSocket::open(FLUSH)?.commit(FLUSH, &[delete])
}

// ---------------------------------------------------------------------------------
// Constants (linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h)

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNETLINK_V0: u8 = 0;

const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_DELTABLE: u8 = 2;
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_GETRULE: u8 = 7;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_RETURN: i32 = -5;

/// The verdict register and the first 16-byte data register.
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;

const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;

const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
const NFTA_REDIR_FLAGS: u16 = 3;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;

const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATUS: u32 = 2;
const IPS_DST_NAT: u32 = 1 << 5;

const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;

const NFTA_COUNTER_PACKETS: u16 = 2;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Offset of the destination address in the IPv4 and IPv6 headers.
const IPV4_DADDR_OFFSET: u32 = 16;
const IPV6_DADDR_OFFSET: u32 = 24;
/// Offset of the destination port in the TCP and UDP headers.
const L4_DPORT_OFFSET: u32 = 2;
/// Offset of the source port in the TCP and UDP headers.
const L4_SPORT_OFFSET: u32 = 0;

/// How long to wait for the kernel's answer. Netlink requests are processed
/// synchronously in `sendmsg`, so the answer is queued before we read; the timeout
/// only keeps a kernel bug from hanging PID 1.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
const RECV_BUFFER: usize = 64 * 1024;

// ---------------------------------------------------------------------------------
// The rule set

/// One nf_tables expression. Every register operand is `NFT_REG_1`; verdicts go to
/// the verdict register.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    /// `meta <key>` into reg 1.
    Meta(u32),
    /// `payload load <len>b @ <base> + <offset>` into reg 1.
    Payload { base: u32, offset: u32, len: u32 },
    /// `cmp <op> reg 1 <data>`.
    Cmp { op: u32, data: Vec<u8> },
    /// `ct load status` into reg 1.
    CtStatus,
    /// `reg 1 = (reg 1 & mask) ^ xor`.
    Bitwise { mask: Vec<u8>, xor: Vec<u8> },
    /// `immediate reg 1 <data>`.
    Value(Vec<u8>),
    /// `redir proto_min reg 1` (to 127.0.0.1 / ::1 and the port in reg 1).
    RedirToPortInReg1,
    /// `counter`.
    Counter,
    /// `immediate reg 0 <verdict>`.
    Verdict(i32),
}

/// A base chain on the output hook.
#[derive(Debug, Clone, Copy)]
struct BaseChain {
    name: &'static str,
    kind: &'static str,
    priority: i32,
    policy: i32,
}

struct Rule {
    chain: &'static str,
    /// The rule in nft syntax, for error messages.
    text: String,
    exprs: Vec<Expr>,
}

const NAT_OUT: BaseChain = BaseChain {
    name: NAT_CHAIN,
    kind: "nat",
    // NF_IP_PRI_NAT_DST: where `nft` and iptables put destination NAT on output.
    priority: -100,
    policy: NF_ACCEPT,
};

const FILT_OUT: BaseChain = BaseChain {
    name: FILTER_CHAIN,
    kind: "filter",
    priority: 0,
    // Fail closed: whatever no rule accepts does not leave.
    policy: NF_DROP,
};

fn nfproto_is(proto: u8) -> [Expr; 2] {
    [
        Expr::Meta(NFT_META_NFPROTO),
        Expr::Cmp {
            op: NFT_CMP_EQ,
            data: vec![proto],
        },
    ]
}

fn l4proto_is(proto: u8) -> [Expr; 2] {
    [
        Expr::Meta(NFT_META_L4PROTO),
        Expr::Cmp {
            op: NFT_CMP_EQ,
            data: vec![proto],
        },
    ]
}

/// `ip daddr 127.0.0.0/8`, as nft encodes it: a /8 prefix is a one-byte compare.
fn ipv4_daddr_in_loopback_net() -> Vec<Expr> {
    let mut exprs = nfproto_is(NFPROTO_IPV4).to_vec();
    exprs.push(Expr::Payload {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        offset: IPV4_DADDR_OFFSET,
        len: 1,
    });
    exprs.push(Expr::Cmp {
        op: NFT_CMP_EQ,
        data: vec![127],
    });
    exprs
}

fn redirect_to(port: u16) -> [Expr; 2] {
    [
        Expr::Value(port.to_be_bytes().to_vec()),
        Expr::RedirToPortInReg1,
    ]
}

fn funnel_rules(ports: &FunnelPorts) -> Vec<Rule> {
    let dns = ports.dns;
    let tcp = ports.transparent_tcp;
    let mut rules = Vec::new();
    let mut rule = |chain, text: String, exprs: Vec<Expr>| {
        rules.push(Rule { chain, text, exprs });
    };

    // nat_out. Loopback stays local: the agent's own local services, and the
    // forwarder's and stub's answers, must not be redirected back into the funnel.
    rule(
        NAT_CHAIN,
        "ip daddr 127.0.0.0/8 return".into(),
        [
            ipv4_daddr_in_loopback_net(),
            vec![Expr::Verdict(NFT_RETURN)],
        ]
        .concat(),
    );
    // DNS, whatever resolver the agent names, goes to the stub, which answers only
    // names the manifest allows (over UDP and TCP alike).
    for (proto, name) in [(IPPROTO_UDP, "udp"), (IPPROTO_TCP, "tcp")] {
        rule(
            NAT_CHAIN,
            format!("meta nfproto ipv4 {name} dport 53 redirect to :{dns}"),
            [
                &nfproto_is(NFPROTO_IPV4)[..],
                &l4proto_is(proto),
                &[
                    Expr::Payload {
                        base: NFT_PAYLOAD_TRANSPORT_HEADER,
                        offset: L4_DPORT_OFFSET,
                        len: 2,
                    },
                    Expr::Cmp {
                        op: NFT_CMP_EQ,
                        data: 53u16.to_be_bytes().to_vec(),
                    },
                ],
                &redirect_to(dns),
            ]
            .concat(),
        );
    }
    // All other IPv4 TCP goes to the transparent forwarder, which recovers the
    // original destination with SO_ORIGINAL_DST and asks the host for it.
    rule(
        NAT_CHAIN,
        format!("meta nfproto ipv4 meta l4proto tcp redirect to :{tcp}"),
        [
            &nfproto_is(NFPROTO_IPV4)[..],
            &l4proto_is(IPPROTO_TCP),
            &redirect_to(tcp),
        ]
        .concat(),
    );

    // filt_out (after NAT, so redirected packets already carry 127.0.0.1). Redirected
    // flows, both directions, are accepted by their conntrack entry's DNAT mark.
    rule(
        FILTER_CHAIN,
        "ct status dnat accept".into(),
        vec![
            Expr::CtStatus,
            Expr::Bitwise {
                // ct status is a host-endian u32 in the register.
                mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
                xor: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::Cmp {
                op: NFT_CMP_NEQ,
                data: 0u32.to_ne_bytes().to_vec(),
            },
            Expr::Verdict(NF_ACCEPT),
        ],
    );
    // Loopback TCP is local to the sandbox (the forwarder, the proxy, the agent's own
    // services). Loopback UDP only to and from the stub DNS: datagrams queued on
    // sockets nobody reads are memory no cgroup counts (under process isolation, the
    // host's), and UDP has no other use here.
    rule(
        FILTER_CHAIN,
        "ip daddr 127.0.0.0/8 meta l4proto tcp accept".into(),
        [
            ipv4_daddr_in_loopback_net(),
            l4proto_is(IPPROTO_TCP).to_vec(),
            vec![Expr::Verdict(NF_ACCEPT)],
        ]
        .concat(),
    );
    for (direction, offset) in [("dport", L4_DPORT_OFFSET), ("sport", L4_SPORT_OFFSET)] {
        rule(
            FILTER_CHAIN,
            format!("ip daddr 127.0.0.0/8 udp {direction} {dns} accept"),
            [
                ipv4_daddr_in_loopback_net(),
                l4proto_is(IPPROTO_UDP).to_vec(),
                vec![
                    Expr::Payload {
                        base: NFT_PAYLOAD_TRANSPORT_HEADER,
                        offset,
                        len: 2,
                    },
                    Expr::Cmp {
                        op: NFT_CMP_EQ,
                        data: dns.to_be_bytes().to_vec(),
                    },
                    Expr::Verdict(NF_ACCEPT),
                ],
            ]
            .concat(),
        );
    }
    rule(
        FILTER_CHAIN,
        "ip6 daddr ::1 meta l4proto tcp accept".into(),
        [
            &nfproto_is(NFPROTO_IPV6)[..],
            &[
                Expr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset: IPV6_DADDR_OFFSET,
                    len: 16,
                },
                Expr::Cmp {
                    op: NFT_CMP_EQ,
                    data: Ipv6Addr::LOCALHOST.octets().to_vec(),
                },
            ],
            &l4proto_is(IPPROTO_TCP),
            &[Expr::Verdict(NF_ACCEPT)],
        ]
        .concat(),
    );
    // Everything else (UDP other than DNS, ICMP, IPv6, raw IP) has no way out:
    // dropped, and counted so the enforcer can report attempts.
    rule(
        FILTER_CHAIN,
        "counter drop".into(),
        vec![Expr::Counter, Expr::Verdict(NF_DROP)],
    );
    rules
}

// ---------------------------------------------------------------------------------
// Encoding

/// Netlink attributes, appended in order (lengths exclude padding, as the kernel
/// expects; every attribute starts 4-byte aligned).
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn bytes(&mut self, attr_type: u16, data: &[u8]) -> &mut Self {
        let len = u16::try_from(NLA_HDRLEN + data.len()).expect("attribute under 64 KiB");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&attr_type.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
        self
    }

    fn string(&mut self, attr_type: u16, value: &str) -> &mut Self {
        let mut data = value.as_bytes().to_vec();
        data.push(0);
        self.bytes(attr_type, &data)
    }

    /// nf_tables integers are big-endian on the wire.
    fn be32(&mut self, attr_type: u16, value: u32) -> &mut Self {
        self.bytes(attr_type, &value.to_be_bytes())
    }

    fn nested(&mut self, attr_type: u16, fill: impl FnOnce(&mut Attrs)) -> &mut Self {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; NLA_HDRLEN]);
        fill(self);
        let len = u16::try_from(self.0.len() - start).expect("attribute under 64 KiB");
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(attr_type | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
}

/// One message of a batch: what it does (for errors), and its nf_tables payload.
struct BatchMessage {
    what: String,
    msg_type: u8,
    flags: u16,
    attrs: Vec<u8>,
}

fn table_message() -> BatchMessage {
    let mut attrs = Attrs::default();
    attrs
        .string(NFTA_TABLE_NAME, TABLE)
        .be32(NFTA_TABLE_FLAGS, 0);
    BatchMessage {
        what: format!("NEWTABLE inet {TABLE}"),
        msg_type: NFT_MSG_NEWTABLE,
        // EXCL: an existing table fails the whole batch instead of being merged into.
        flags: NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        attrs: attrs.0,
    }
}

fn chain_message(chain: &BaseChain) -> BatchMessage {
    let mut attrs = Attrs::default();
    attrs
        .string(NFTA_CHAIN_TABLE, TABLE)
        .string(NFTA_CHAIN_NAME, chain.name)
        .string(NFTA_CHAIN_TYPE, chain.kind)
        .be32(NFTA_CHAIN_POLICY, chain.policy as u32)
        .nested(NFTA_CHAIN_HOOK, |hook| {
            hook.be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT)
                .be32(NFTA_HOOK_PRIORITY, chain.priority as u32);
        });
    BatchMessage {
        what: format!(
            "NEWCHAIN inet {TABLE} {} (type {} hook output priority {})",
            chain.name, chain.kind, chain.priority
        ),
        msg_type: NFT_MSG_NEWCHAIN,
        flags: NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        attrs: attrs.0,
    }
}

fn rule_message(rule: &Rule) -> BatchMessage {
    let mut attrs = Attrs::default();
    attrs
        .string(NFTA_RULE_TABLE, TABLE)
        .string(NFTA_RULE_CHAIN, rule.chain)
        .nested(NFTA_RULE_EXPRESSIONS, |list| {
            for expr in &rule.exprs {
                list.nested(NFTA_LIST_ELEM, |elem| encode_expr(elem, expr));
            }
        });
    BatchMessage {
        what: format!("NEWRULE inet {TABLE} {} \"{}\"", rule.chain, rule.text),
        msg_type: NFT_MSG_NEWRULE,
        flags: NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        attrs: attrs.0,
    }
}

/// Attribute order as nft 1.0.6 emits it, so the bytes compare equal to its output.
fn encode_expr(elem: &mut Attrs, expr: &Expr) {
    let name = match expr {
        Expr::Meta(_) => "meta",
        Expr::Payload { .. } => "payload",
        Expr::Cmp { .. } => "cmp",
        Expr::CtStatus => "ct",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Value(_) | Expr::Verdict(_) => "immediate",
        Expr::RedirToPortInReg1 => "redir",
        Expr::Counter => "counter",
    };
    elem.string(NFTA_EXPR_NAME, name)
        .nested(NFTA_EXPR_DATA, |data| encode_expr_data(data, expr));
}

fn encode_expr_data(a: &mut Attrs, expr: &Expr) {
    fn data_value(a: &mut Attrs, attr_type: u16, value: &[u8]) {
        a.nested(attr_type, |data| {
            data.bytes(NFTA_DATA_VALUE, value);
        });
    }
    match expr {
        Expr::Meta(key) => {
            a.be32(NFTA_META_KEY, *key).be32(NFTA_META_DREG, NFT_REG_1);
        }
        Expr::Payload { base, offset, len } => {
            a.be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
                .be32(NFTA_PAYLOAD_BASE, *base)
                .be32(NFTA_PAYLOAD_OFFSET, *offset)
                .be32(NFTA_PAYLOAD_LEN, *len);
        }
        Expr::Cmp { op, data } => {
            a.be32(NFTA_CMP_SREG, NFT_REG_1).be32(NFTA_CMP_OP, *op);
            data_value(a, NFTA_CMP_DATA, data);
        }
        Expr::CtStatus => {
            a.be32(NFTA_CT_KEY, NFT_CT_STATUS)
                .be32(NFTA_CT_DREG, NFT_REG_1);
        }
        Expr::Bitwise { mask, xor } => {
            a.be32(NFTA_BITWISE_SREG, NFT_REG_1)
                .be32(NFTA_BITWISE_DREG, NFT_REG_1)
                .be32(NFTA_BITWISE_LEN, mask.len() as u32);
            data_value(a, NFTA_BITWISE_MASK, mask);
            data_value(a, NFTA_BITWISE_XOR, xor);
        }
        Expr::Value(value) => {
            a.be32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
            data_value(a, NFTA_IMMEDIATE_DATA, value);
        }
        Expr::RedirToPortInReg1 => {
            a.be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1)
                .be32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
        }
        // Counts into its own state; no attributes.
        Expr::Counter => {}
        Expr::Verdict(code) => {
            a.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
                .nested(NFTA_IMMEDIATE_DATA, |data| {
                    data.nested(NFTA_DATA_VERDICT, |verdict| {
                        verdict.be32(NFTA_VERDICT_CODE, *code as u32);
                    });
                });
        }
    }
}

fn funnel_batch(ports: &FunnelPorts) -> Vec<BatchMessage> {
    let mut batch = vec![
        table_message(),
        chain_message(&NAT_OUT),
        chain_message(&FILT_OUT),
    ];
    batch.extend(funnel_rules(ports).iter().map(rule_message));
    batch
}

/// Appends one nfnetlink message: `nlmsghdr`, `nfgenmsg`, attributes.
fn push_message(
    out: &mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = u32::try_from(NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len()).expect("small message");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&msg_type.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills in ours
    out.push(family);
    out.push(NFNETLINK_V0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

const fn nft_type(msg: u8) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg as u16
}

/// BATCH_BEGIN (seq `first_seq`), the messages (following seqs), BATCH_END. The
/// begin/end markers ask for no ACK; the kernel reports a batch-wide failure (no
/// permission, commit failure) against BATCH_BEGIN anyway.
fn encode_batch(messages: &[BatchMessage], first_seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    push_message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        first_seq,
        NFPROTO_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let mut seq = first_seq;
    for message in messages {
        seq += 1;
        push_message(
            &mut out,
            nft_type(message.msg_type),
            message.flags,
            seq,
            NFPROTO_INET,
            0,
            &message.attrs,
        );
    }
    push_message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq + 1,
        NFPROTO_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    out
}

// ---------------------------------------------------------------------------------
// Decoding

struct NlMsg<'a> {
    msg_type: u16,
    seq: u32,
    payload: &'a [u8],
}

fn read_u32_ne(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn read_u16_ne(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// Splits a datagram into netlink messages.
fn split_messages(mut bytes: &[u8]) -> Result<Vec<NlMsg<'_>>, String> {
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        let len = read_u32_ne(bytes, 0).ok_or("truncated nlmsghdr")? as usize;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            return Err(format!("message length {len} outside 16..={}", bytes.len()));
        }
        messages.push(NlMsg {
            msg_type: read_u16_ne(bytes, 4).ok_or("truncated nlmsghdr")?,
            seq: read_u32_ne(bytes, 8).ok_or("truncated nlmsghdr")?,
            payload: &bytes[NLMSG_HDRLEN..len],
        });
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    Ok(messages)
}

/// The (type without flags, payload) pairs of an attribute stream.
fn split_attrs(mut bytes: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut attrs = Vec::new();
    while bytes.len() >= NLA_HDRLEN {
        let len = read_u16_ne(bytes, 0).ok_or("truncated attribute")? as usize;
        let attr_type = read_u16_ne(bytes, 2).ok_or("truncated attribute")? & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > bytes.len() {
            return Err(format!("attribute {attr_type} has length {len}"));
        }
        attrs.push((attr_type, &bytes[NLA_HDRLEN..len]));
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    Ok(attrs)
}

/// The kernel's error code of an `NLMSG_ERROR` (0 = ACK), from `struct nlmsgerr`.
fn error_code(payload: &[u8]) -> Result<i32, String> {
    read_u32_ne(payload, 0)
        .map(|code| code as i32)
        .ok_or_else(|| "truncated NLMSG_ERROR".to_owned())
}

/// Appends the packet counts of every `counter` expression in a NEWRULE payload.
fn rule_counters(rule_payload: &[u8], counters: &mut Vec<u64>) -> Result<(), String> {
    let attrs = rule_payload
        .get(NFGENMSG_LEN..)
        .ok_or("rule message without nfgenmsg")?;
    for (attr_type, list) in split_attrs(attrs)? {
        if attr_type != NFTA_RULE_EXPRESSIONS {
            continue;
        }
        for (_, elem) in split_attrs(list)? {
            let elem = split_attrs(elem)?;
            let is_counter = elem
                .iter()
                .any(|&(t, v)| t == NFTA_EXPR_NAME && v == b"counter\0");
            if !is_counter {
                continue;
            }
            let data = elem
                .iter()
                .find(|&&(t, _)| t == NFTA_EXPR_DATA)
                .ok_or("counter expression without data")?
                .1;
            let packets = split_attrs(data)?
                .into_iter()
                .find(|&(t, _)| t == NFTA_COUNTER_PACKETS)
                .ok_or("counter expression without a packet count")?
                .1;
            let packets: [u8; 8] = packets
                .try_into()
                .map_err(|_| format!("packet count of {} bytes", packets.len()))?;
            counters.push(u64::from_be_bytes(packets));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The socket

struct NfSocket {
    fd: OwnedFd,
}

impl NfSocket {
    fn open(operation: &'static str) -> Result<Self, NetfilterError> {
        let failed = |source| NetfilterError::Socket { operation, source };
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(failed)?;
        // Port id 0: the kernel picks a unique one.
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(failed)?;
        let timeout = TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
        socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &timeout).map_err(failed)?;
        Ok(NfSocket { fd })
    }

    fn send(&self, operation: &'static str, bytes: &[u8]) -> Result<(), NetfilterError> {
        let failed = |source| NetfilterError::Send {
            operation,
            len: bytes.len(),
            source,
        };
        let sent = socket::sendto(
            self.fd.as_raw_fd(),
            bytes,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(failed)?;
        // A netlink datagram is taken whole or not at all.
        if sent != bytes.len() {
            return Err(failed(Errno::EMSGSIZE));
        }
        Ok(())
    }

    fn recv<'b>(
        &self,
        operation: &'static str,
        buffer: &'b mut [u8],
    ) -> Result<&'b [u8], NetfilterError> {
        let len = socket::recv(self.fd.as_raw_fd(), buffer, MsgFlags::empty())
            .map_err(|source| NetfilterError::Receive { operation, source })?;
        Ok(&buffer[..len])
    }

    /// Sends `messages` as one batch and checks every ACK. On failure names the
    /// first refused message; the kernel then applied none of them.
    fn commit(
        &self,
        operation: &'static str,
        messages: &[BatchMessage],
    ) -> Result<(), NetfilterError> {
        const FIRST_SEQ: u32 = 1;
        let end_seq = FIRST_SEQ + messages.len() as u32 + 1;
        self.send(operation, &encode_batch(messages, FIRST_SEQ))?;

        let malformed = |detail: String| NetfilterError::Malformed { operation, detail };
        let mut answers: Vec<Option<i32>> = vec![None; messages.len()];
        let mut buffer = vec![0u8; RECV_BUFFER];
        while answers.iter().any(Option::is_none) {
            let datagram = self.recv(operation, &mut buffer)?;
            for message in split_messages(datagram).map_err(malformed)? {
                if message.msg_type != NLMSG_ERROR {
                    continue;
                }
                let code = error_code(message.payload).map_err(malformed)?;
                match message.seq {
                    seq if seq == FIRST_SEQ || seq == end_seq => {
                        // Refused as a whole (no permission, commit failed).
                        if code != 0 {
                            return Err(NetfilterError::Rejected {
                                operation,
                                message: format!(
                                    "the whole batch ({} messages; reported on {})",
                                    messages.len(),
                                    if seq == FIRST_SEQ {
                                        "BATCH_BEGIN"
                                    } else {
                                        "BATCH_END"
                                    }
                                ),
                                errno: Errno::from_raw(-code),
                            });
                        }
                    }
                    seq if seq > FIRST_SEQ && seq < end_seq => {
                        answers[(seq - FIRST_SEQ - 1) as usize] = Some(code);
                    }
                    seq => {
                        return Err(malformed(format!(
                            "answer to unknown sequence number {seq}"
                        )))
                    }
                }
            }
        }
        // The kernel processes the whole batch and reports every failure; the first
        // one is the cause, later ones are usually its consequences.
        match answers
            .iter()
            .zip(messages)
            .find(|(code, _)| **code != Some(0))
        {
            Some((code, message)) => Err(NetfilterError::Rejected {
                operation,
                message: message.what.clone(),
                errno: Errno::from_raw(-code.unwrap_or_default()),
            }),
            None => Ok(()),
        }
    }

    /// A GET request with `NLM_F_DUMP`; returns the payload of every answer.
    fn dump(
        &self,
        operation: &'static str,
        msg_type: u8,
        attrs: &[u8],
    ) -> Result<Vec<Vec<u8>>, NetfilterError> {
        const SEQ: u32 = 1;
        let mut request = Vec::new();
        push_message(
            &mut request,
            nft_type(msg_type),
            NLM_F_REQUEST | NLM_F_DUMP,
            SEQ,
            NFPROTO_INET,
            0,
            attrs,
        );
        self.send(operation, &request)?;

        let malformed = |detail: String| NetfilterError::Malformed { operation, detail };
        let mut answers = Vec::new();
        let mut buffer = vec![0u8; RECV_BUFFER];
        loop {
            let datagram = self.recv(operation, &mut buffer)?;
            for message in split_messages(datagram).map_err(malformed)? {
                if message.seq != SEQ {
                    continue;
                }
                match message.msg_type {
                    NLMSG_NOOP => {}
                    NLMSG_DONE | NLMSG_ERROR => {
                        // Both carry an int error first; 0 ends a successful dump.
                        let code = error_code(message.payload).unwrap_or(0);
                        if code != 0 {
                            return Err(NetfilterError::Rejected {
                                operation,
                                message: format!("the dump request ({})", msg_name(msg_type)),
                                errno: Errno::from_raw(-code),
                            });
                        }
                        return Ok(answers);
                    }
                    _ => answers.push(message.payload.to_vec()),
                }
            }
        }
    }
}

fn msg_name(msg_type: u8) -> &'static str {
    match msg_type {
        NFT_MSG_NEWTABLE => "NEWTABLE",
        NFT_MSG_DELTABLE => "DELTABLE",
        NFT_MSG_NEWCHAIN => "NEWCHAIN",
        NFT_MSG_NEWRULE => "NEWRULE",
        NFT_MSG_GETRULE => "GETRULE",
        _ => "nf_tables message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the space-separated hex words below.
    fn hex(words: &str) -> Vec<u8> {
        words
            .split_whitespace()
            .flat_map(|word| {
                (0..word.len())
                    .step_by(2)
                    .map(move |i| u8::from_str_radix(&word[i..i + 2], 16).unwrap())
            })
            .collect()
    }

    // Message bodies (nfgenmsg and attributes) that `nft --debug=mnl -f` 1.0.6 sent
    // for the rule set in the module documentation, on x86_64.
    const NFT_NEWTABLE: &str = "01000000 0c000100 6169726c 6f636b00 08000200 00000000";
    const NFT_NEWCHAIN_NAT_OUT: &str = "01000000 0c000100 6169726c 6f636b00 0c000300 6e61745f \
        6f757400 08000700 6e617400 08000500 00000001 14000480 08000100 00000003 08000200 \
        ffffff9c";
    const NFT_NEWRULE_REDIRECT_TCP: &str = "01000000 0c000100 6169726c 6f636b00 0c000200 \
        6e61745f 6f757400 f4000480 24000180 09000100 6d657461 00000000 14000280 08000200 \
        0000000f 08000100 00000001 2c000180 08000100 636d7000 20000280 08000100 00000001 \
        08000200 00000000 0c000380 05000100 02000000 24000180 09000100 6d657461 00000000 \
        14000280 08000200 00000010 08000100 00000001 2c000180 08000100 636d7000 20000280 \
        08000100 00000001 08000200 00000000 0c000380 05000100 06000000 2c000180 0e000100 \
        696d6d65 64696174 65000000 18000280 08000100 00000001 0c000280 06000100 3a990000 \
        24000180 0a000100 72656469 72000000 14000280 08000100 00000001 08000300 00000002";
    const NFT_NEWRULE_CT_DNAT: &str = "01000000 0c000100 6169726c 6f636b00 0d000200 \
        66696c74 5f6f7574 00000000 c4000480 20000180 07000100 63740000 14000280 08000200 \
        00000002 08000100 00000001 44000180 0c000100 62697477 69736500 34000280 08000100 \
        00000001 08000200 00000001 08000300 00000004 0c000480 08000100 20000000 0c000580 \
        08000100 00000000 2c000180 08000100 636d7000 20000280 08000100 00000001 08000200 \
        00000001 0c000380 08000100 00000000 30000180 0e000100 696d6d65 64696174 65000000 \
        1c000280 08000100 00000000 10000280 0c000280 08000100 00000001";
    const NFT_NEWRULE_COUNTER_DROP: &str = "01000000 0c000100 6169726c 6f636b00 0d000200 \
        66696c74 5f6f7574 00000000 48000480 14000180 0c000100 636f756e 74657200 04000280 \
        30000180 0e000100 696d6d65 64696174 65000000 1c000280 08000100 00000000 10000280 \
        0c000280 08000100 00000000";

    /// The body (after `nlmsghdr`) of message `index` of the install batch.
    fn body_of(batch: &[u8], index: usize) -> (Vec<u8>, u16, u16, u32) {
        let messages = split_messages(batch).unwrap();
        let message = &messages[index];
        let start = message.payload.as_ptr() as usize - batch.as_ptr() as usize;
        let flags = read_u16_ne(batch, start - NLMSG_HDRLEN + 6).unwrap();
        (
            message.payload.to_vec(),
            message.msg_type,
            flags,
            message.seq,
        )
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn messages_match_what_nft_sends() {
        let batch = encode_batch(&funnel_batch(&FunnelPorts::default()), 1);
        let (body, msg_type, flags, seq) = body_of(&batch, 1);
        assert_eq!((msg_type, seq), (0x0a00, 2));
        assert_eq!(flags, 0x605, "REQUEST|ACK|CREATE|EXCL");
        assert_eq!(body, hex(NFT_NEWTABLE));
        assert_eq!(body_of(&batch, 2).0, hex(NFT_NEWCHAIN_NAT_OUT));
        let (body, msg_type, flags, _) = body_of(&batch, 7);
        assert_eq!(
            (msg_type, flags),
            (0x0a06, 0xc05),
            "NEWRULE REQUEST|ACK|CREATE|APPEND"
        );
        assert_eq!(body, hex(NFT_NEWRULE_REDIRECT_TCP));
        assert_eq!(body_of(&batch, 8).0, hex(NFT_NEWRULE_CT_DNAT));
        assert_eq!(body_of(&batch, 13).0, hex(NFT_NEWRULE_COUNTER_DROP));
    }

    #[test]
    fn batch_is_framed_by_begin_and_end_for_nf_tables() {
        let messages = funnel_batch(&FunnelPorts::default());
        assert_eq!(messages.len(), 3 + 10);
        let batch = encode_batch(&messages, 7);
        // BATCH_BEGIN: len 20, type 0x10, flags REQUEST, seq 7, port 0,
        // nfgenmsg {AF_UNSPEC, v0, res_id = htons(NFNL_SUBSYS_NFTABLES)}.
        assert_eq!(
            batch[..20],
            [20, 0, 0, 0, 0x10, 0, 1, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
        );
        assert_eq!(
            batch[batch.len() - 20..],
            [20, 0, 0, 0, 0x11, 0, 1, 0, 21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
        );
        let split = split_messages(&batch).unwrap();
        assert_eq!(split.len(), messages.len() + 2);
        assert!(split.iter().zip(7..).all(|(m, seq)| m.seq == seq));
    }

    #[test]
    fn ports_come_from_funnel_ports() {
        let ports = FunnelPorts {
            transparent_tcp: 0x1234,
            dns: 5353,
        };
        let rules = funnel_rules(&ports);
        let texts: Vec<_> = rules.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "ip daddr 127.0.0.0/8 return",
                "meta nfproto ipv4 udp dport 53 redirect to :5353",
                "meta nfproto ipv4 tcp dport 53 redirect to :5353",
                "meta nfproto ipv4 meta l4proto tcp redirect to :4660",
                "ct status dnat accept",
                "ip daddr 127.0.0.0/8 meta l4proto tcp accept",
                "ip daddr 127.0.0.0/8 udp dport 5353 accept",
                "ip daddr 127.0.0.0/8 udp sport 5353 accept",
                "ip6 daddr ::1 meta l4proto tcp accept",
                "counter drop",
            ]
        );
        // The port is loaded big-endian into reg 1 right before redir; the matched
        // DNS port stays 53.
        assert!(rules[3].exprs.contains(&Expr::Value(vec![0x12, 0x34])));
        assert!(rules[1]
            .exprs
            .contains(&Expr::Value(5353u16.to_be_bytes().to_vec())));
        assert!(rules[1].exprs.contains(&Expr::Cmp {
            op: NFT_CMP_EQ,
            data: vec![0, 53]
        }));
    }

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut attrs = Attrs::default();
        attrs.string(1, "ab").nested(2, |n| {
            n.bytes(3, &[9]);
        });
        assert_eq!(
            attrs.0,
            [7, 0, 1, 0, b'a', b'b', 0, 0, 12, 0, 2, 0x80, 5, 0, 3, 0, 9, 0, 0, 0]
        );
        let parsed = split_attrs(&attrs.0).unwrap();
        assert_eq!(parsed, [(1, &b"ab\0"[..]), (2, &attrs.0[12..20])]);
    }

    #[test]
    fn counter_is_read_from_a_rule_dump() {
        // A NEWRULE answer: nfgenmsg, table, chain, expressions [counter, immediate].
        let mut attrs = Attrs::default();
        attrs
            .string(NFTA_RULE_TABLE, TABLE)
            .string(NFTA_RULE_CHAIN, FILTER_CHAIN)
            .nested(NFTA_RULE_EXPRESSIONS, |list| {
                list.nested(NFTA_LIST_ELEM, |elem| {
                    elem.string(NFTA_EXPR_NAME, "counter")
                        .nested(NFTA_EXPR_DATA, |data| {
                            data.bytes(1, &999u64.to_be_bytes())
                                .bytes(NFTA_COUNTER_PACKETS, &42u64.to_be_bytes());
                        });
                });
                list.nested(NFTA_LIST_ELEM, |elem| {
                    encode_expr(elem, &Expr::Verdict(NF_DROP))
                });
            });
        let mut payload = vec![NFPROTO_INET, 0, 0, 0];
        payload.extend_from_slice(&attrs.0);
        let mut counters = Vec::new();
        rule_counters(&payload, &mut counters).unwrap();
        assert_eq!(counters, [42]);
        assert!(rule_counters(&payload[..20], &mut counters).is_err());
    }

    #[test]
    fn errors_name_the_operation_and_message() {
        let error = NetfilterError::Rejected {
            operation: INSTALL,
            message: chain_message(&NAT_OUT).what,
            errno: Errno::EPERM,
        };
        assert_eq!(
            error.to_string(),
            "installing the egress funnel rules: the kernel refused NEWCHAIN inet airlock \
             nat_out (type nat hook output priority -100): EPERM: Operation not permitted \
             (CAP_NET_ADMIN over this network namespace is required)"
        );
    }
}
