//! The guest's stub DNS: every query the agent makes (nftables redirects UDP and TCP
//! port 53 to 127.0.0.1:53) is answered here, locally, and nothing is ever forwarded,
//! so DNS cannot carry data out of the sandbox.
//!
//! - An `A` query for a name the manifest grants gets a *synthetic* address in
//!   198.18.0.0/15, stable for the life of the [`StubDns`]; the egress forwarder maps
//!   a redirected connection's original destination back to the name with
//!   [`StubDns::name_for`] and the host resolves the name itself.
//! - `AAAA`, `SVCB` and `HTTPS` for a granted name get NODATA (NOERROR, no records):
//!   resolvers ask for them alongside `A`, and an error would make them retry or fail
//!   the whole lookup. Every other type (TXT, CNAME, MX, ANY, SRV, …) is REFUSED.
//! - Any other name gets NXDOMAIN, whatever the type.
//! - A query that is not a plain one-question query gets FORMERR (NOTIMP for another
//!   opcode, BADVERS for EDNS other than version 0); one whose header cannot be read,
//!   and any response (QR=1), gets no reply at all.
//!
//! The parser is written by hand for exactly this subset rather than taken from a DNS
//! crate: the checks that matter here (no compression pointers in the question, at
//! most one additional record and only an OPT, no trailing bytes) are stricter than a
//! general-purpose parser's, the question is echoed byte for byte (0x20 case
//! randomisation), and PID 1 gains no dependency.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// First address of the synthetic range (198.18.0.0/15, RFC 2544 benchmarking space:
/// never routed on the internet, so it cannot collide with a real destination).
const SYNTHETIC_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// Number of addresses in 198.18.0.0/15.
const SYNTHETIC_SIZE: u32 = 1 << 17;
/// First offset handed out: .0 is the network address and 198.18.0.1 is the funnel's
/// own address on lo.
const FIRST_OFFSET: u32 = 2;
/// Last offset handed out (the broadcast address, 198.19.255.255, is never used).
const LAST_OFFSET: u32 = SYNTHETIC_SIZE - 2;

/// TTL of a synthetic `A` record, in seconds. Answers are local and cost next to
/// nothing, so a short TTL is free; it bounds how long a cached answer can outlive the
/// stub that gave it (the mapping is only stable for one [`StubDns`]).
pub const ANSWER_TTL_SECS: u32 = 5;
/// UDP payload size advertised in an EDNS reply (the DNS flag day 2020 value). Replies
/// are never larger than about 300 bytes, well under 512, so it is never needed.
pub const EDNS_UDP_SIZE: u16 = 1232;
/// Distinct refused names remembered for [`DnsOutcome::Refused::first_refusal`]. Past
/// this, new names are no longer tracked (and report `first_refusal: false`), so a
/// flood of made-up names costs neither memory nor log lines.
pub const REFUSAL_TRACKING_CAP: usize = 1024;
/// A TCP connection with no complete query (or reply write) for this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connections served at once; more are accepted and closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 64;

const HEADER_LEN: usize = 12;
const MAX_NAME_WIRE_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;

const CLASS_IN: u16 = 1;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const TYPE_SVCB: u16 = 64;
const TYPE_HTTPS: u16 = 65;

const FLAG_QR: u16 = 0x8000;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;

const RCODE_NOERROR: u8 = 0;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;
/// Extended RCODE 16 (needs an OPT record to carry its upper bits).
const RCODE_BADVERS: u16 = 16;

/// Why a query was not answered with a record (see [`DnsOutcome::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The name is not one the manifest grants (NXDOMAIN).
    UnknownName,
    /// A granted name, but a type the stub does not answer (REFUSED).
    QueryType,
    /// A class other than IN (REFUSED).
    Class(u16),
    /// Every synthetic address is taken (SERVFAIL); only with more granted names than
    /// 198.18.0.0/15 holds.
    AddressPoolExhausted,
}

/// Why a query was not well-formed or not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedQuery {
    /// Opcode other than QUERY (answered NOTIMP).
    #[error("opcode {0} is not supported")]
    Opcode(u8),
    /// QDCOUNT other than 1 (RFC 9619).
    #[error("{0} questions (exactly one is allowed)")]
    QuestionCount(u16),
    /// Answer or authority records in a query.
    #[error("answer or authority records in a query")]
    UnexpectedRecords,
    /// More than one additional record, or one that is not an EDNS OPT.
    #[error("additional records other than one EDNS OPT")]
    UnexpectedAdditional,
    /// The message ends inside the question or the OPT record.
    #[error("message truncated")]
    Truncated,
    /// A compression pointer in the question's name.
    #[error("compression pointer in the question")]
    CompressedName,
    /// A label length byte above 63 (0x40..0xBF: too long for a label, and the
    /// obsolete extended and reserved label types).
    #[error("label longer than 63 bytes")]
    LabelTooLong,
    /// A name longer than 255 bytes on the wire.
    #[error("name longer than 255 bytes")]
    NameTooLong,
    /// A malformed OPT record (owner not the root, or options overrunning it).
    #[error("malformed EDNS OPT record")]
    BadOpt,
    /// An EDNS version other than 0 (answered BADVERS).
    #[error("EDNS version {0} is not supported")]
    EdnsVersion(u8),
    /// Bytes after the last record.
    #[error("trailing bytes after the last record")]
    TrailingBytes,
}

impl MalformedQuery {
    /// A small number per kind, for logging each kind once.
    fn kind(self) -> u32 {
        match self {
            MalformedQuery::Opcode(_) => 0,
            MalformedQuery::QuestionCount(_) => 1,
            MalformedQuery::UnexpectedRecords => 2,
            MalformedQuery::UnexpectedAdditional => 3,
            MalformedQuery::Truncated => 4,
            MalformedQuery::CompressedName => 5,
            MalformedQuery::LabelTooLong => 6,
            MalformedQuery::NameTooLong => 7,
            MalformedQuery::BadOpt => 8,
            MalformedQuery::EdnsVersion(_) => 9,
            MalformedQuery::TrailingBytes => 10,
        }
    }
}

/// What [`StubDns::answer`] did with a query. Names are lower-case, in presentation
/// form, with every byte outside `[a-z0-9_-]` (other than the dots between labels)
/// escaped as `\DDD`, so they are safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsOutcome {
    /// An `A` query for a granted name, answered with its synthetic address.
    Answered {
        name: String,
        addr: Ipv4Addr,
        /// This query gave the name its address (true once per name).
        newly_allocated: bool,
    },
    /// A granted name, a type answered with no records (`AAAA`, `SVCB`, `HTTPS`).
    NoData { name: String, qtype: u16 },
    /// Not answered: NXDOMAIN for an unknown name, REFUSED for another type or class,
    /// SERVFAIL when the address pool is exhausted.
    Refused {
        name: String,
        qtype: u16,
        reason: RefusalReason,
        /// The first refusal for this name (log it); false for a repeat and for every
        /// name once [`REFUSAL_TRACKING_CAP`] names are tracked.
        first_refusal: bool,
        /// True exactly once: on the first refusal of a name that could no longer be
        /// tracked (log that further refused names go unlogged).
        tracking_stopped: bool,
    },
    /// Malformed or unsupported: answered FORMERR (NOTIMP, BADVERS where those apply).
    Malformed {
        reason: MalformedQuery,
        /// The first malformed query of this kind in the stub's life (log it).
        first_of_kind: bool,
    },
}

impl DnsOutcome {
    /// The refused name, when this is its first refusal (see
    /// [`DnsOutcome::Refused::first_refusal`]): what a caller reports once per name.
    pub fn first_refused_name(&self) -> Option<&str> {
        match self {
            DnsOutcome::Refused {
                name,
                first_refusal: true,
                ..
            } => Some(name),
            _ => None,
        }
    }

    /// The line worth logging for this outcome, if any: a name's address when first
    /// given, the first refusal per name, the first malformed query per kind. Bounded
    /// by the manifest, [`REFUSAL_TRACKING_CAP`] and the number of kinds, whatever the
    /// agent sends.
    pub fn log_line(&self) -> Option<String> {
        match self {
            DnsOutcome::Answered {
                name,
                addr,
                newly_allocated: true,
            } => Some(format!("dns: {name} is {addr} in this sandbox")),
            DnsOutcome::Answered { .. } | DnsOutcome::NoData { .. } => None,
            DnsOutcome::Refused {
                name,
                qtype,
                reason,
                first_refusal,
                tracking_stopped,
            } => {
                let mut line = String::new();
                if *first_refusal {
                    let why = match reason {
                        RefusalReason::UnknownName => {
                            "not a granted egress name (NXDOMAIN)".to_string()
                        }
                        RefusalReason::QueryType => {
                            "only A is answered for granted names (REFUSED)".to_string()
                        }
                        RefusalReason::Class(c) => format!("class {c} is not IN (REFUSED)"),
                        RefusalReason::AddressPoolExhausted => {
                            "no synthetic address left (SERVFAIL)".to_string()
                        }
                    };
                    let _ = write!(
                        line,
                        "dns: refused {} {name}: {why}; later refusals for this name are not logged",
                        type_name(*qtype)
                    );
                }
                if *tracking_stopped {
                    if !line.is_empty() {
                        line.push_str("; ");
                    }
                    let _ = write!(
                        line,
                        "dns: {REFUSAL_TRACKING_CAP} names refused; refusals of further names are not logged"
                    );
                }
                (!line.is_empty()).then_some(line)
            }
            DnsOutcome::Malformed {
                reason,
                first_of_kind: true,
            } => Some(format!(
                "dns: malformed query: {reason}; later ones of this kind are not logged"
            )),
            DnsOutcome::Malformed { .. } => None,
        }
    }
}

/// A type's mnemonic, for log lines.
fn type_name(qtype: u16) -> String {
    let known = match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        41 => "OPT",
        43 => "DS",
        46 => "RRSIG",
        48 => "DNSKEY",
        52 => "TLSA",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        251 => "IXFR",
        252 => "AXFR",
        255 => "ANY",
        256 => "URI",
        257 => "CAA",
        _ => return format!("TYPE{qtype}"),
    };
    known.to_string()
}

/// The stub resolver: the granted names, the synthetic addresses given so far and the
/// names already refused. Shared between the UDP and TCP servers and the forwarder.
pub struct StubDns {
    known: HashSet<String>,
    /// Suffixes of `*.suffix` grants: every name strictly under one is known.
    under: Vec<String>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    /// Offset of the next address to give, from [`SYNTHETIC_BASE`].
    next_offset: u32,
    refused: HashSet<String>,
    tracking_stopped: bool,
    /// Bit per [`MalformedQuery::kind`] already reported.
    malformed_seen: u32,
}

impl StubDns {
    /// Is `name` (lower case, presentation form) granted, exactly or under a wildcard?
    fn is_granted(&self, name: &str) -> bool {
        self.known.contains(name)
            || self.under.iter().any(|suffix| {
                name.strip_suffix(suffix.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
            })
    }

    /// A stub answering for `names` (the manifest's egress names). Each is compared
    /// case-insensitively, a trailing dot ignored; empty names are skipped. A name
    /// `*.suffix` stands for every name strictly under `suffix` (not `suffix` itself).
    pub fn new(names: impl IntoIterator<Item = String>) -> StubDns {
        let (mut known, mut under) = (HashSet::new(), Vec::new());
        for n in names {
            let n = n.strip_suffix('.').unwrap_or(&n).to_ascii_lowercase();
            match n.strip_prefix("*.") {
                Some(suffix) if !suffix.is_empty() => under.push(suffix.to_string()),
                _ if !n.is_empty() => {
                    known.insert(n);
                }
                _ => {}
            }
        }
        StubDns {
            known,
            under,
            state: Mutex::new(State {
                next_offset: FIRST_OFFSET,
                ..State::default()
            }),
        }
    }

    /// The granted name a synthetic address was given to, if any.
    pub fn name_for(&self, addr: Ipv4Addr) -> Option<String> {
        self.lock().by_addr.get(&addr).cloned()
    }

    /// The reply to one DNS message and what was done, or `None` when nothing should be
    /// sent back (no readable header, or the message is itself a response).
    pub fn answer(&self, query: &[u8]) -> Option<(Vec<u8>, DnsOutcome)> {
        let header = Header::parse(query)?;
        // Never answer a response: a reply is itself a response, so a reply looped back
        // to the stub (or between two stubs) dies here instead of ping-ponging.
        if header.flags & FLAG_QR != 0 {
            return None;
        }
        let parsed = match parse_query(&header, query) {
            Ok(parsed) => parsed,
            Err(Rejected { reason, question }) => {
                let rcode = match reason {
                    MalformedQuery::Opcode(_) => RCODE_NOTIMP,
                    _ => RCODE_FORMERR,
                };
                let reply = Reply {
                    header: &header,
                    question,
                    rcode: u16::from(rcode),
                    answer: None,
                    edns: false,
                }
                .encode();
                return Some((reply, self.malformed(reason)));
            }
        };
        let question = &parsed.question;
        let mut reply = Reply {
            header: &header,
            question: Some(question.raw),
            rcode: u16::from(RCODE_NOERROR),
            answer: None,
            edns: parsed.edns_version.is_some(),
        };
        if let Some(version) = parsed.edns_version.filter(|v| *v != 0) {
            reply.rcode = RCODE_BADVERS;
            let outcome = self.malformed(MalformedQuery::EdnsVersion(version));
            return Some((reply.encode(), outcome));
        }
        let name = question.display_name();
        let qtype = question.qtype;
        let refuse = |reason: RefusalReason, rcode: u8, mut reply: Reply<'_>| {
            reply.rcode = u16::from(rcode);
            let (first_refusal, tracking_stopped) = self.track_refusal(&name);
            let outcome = DnsOutcome::Refused {
                name: name.clone(),
                qtype,
                reason,
                first_refusal,
                tracking_stopped,
            };
            Some((reply.encode(), outcome))
        };
        if question.qclass != CLASS_IN {
            return refuse(RefusalReason::Class(question.qclass), RCODE_REFUSED, reply);
        }
        let known = question.lookup_key().filter(|key| self.is_granted(key));
        let Some(key) = known else {
            return refuse(RefusalReason::UnknownName, RCODE_NXDOMAIN, reply);
        };
        match qtype {
            TYPE_A => match self.allocate(key) {
                Some((addr, newly_allocated)) => {
                    reply.answer = Some(addr);
                    let outcome = DnsOutcome::Answered {
                        name,
                        addr,
                        newly_allocated,
                    };
                    Some((reply.encode(), outcome))
                }
                None => refuse(RefusalReason::AddressPoolExhausted, RCODE_SERVFAIL, reply),
            },
            TYPE_AAAA | TYPE_SVCB | TYPE_HTTPS => {
                Some((reply.encode(), DnsOutcome::NoData { name, qtype }))
            }
            _ => refuse(RefusalReason::QueryType, RCODE_REFUSED, reply),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent at every await-free step, so a poisoned lock (a
        // panic elsewhere while holding it) is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The name's address, given now if it has none; `None` when the pool is empty.
    fn allocate(&self, key: String) -> Option<(Ipv4Addr, bool)> {
        let mut state = self.lock();
        if let Some(addr) = state.by_name.get(&key) {
            return Some((*addr, false));
        }
        if state.next_offset > LAST_OFFSET {
            return None;
        }
        let addr = Ipv4Addr::from(SYNTHETIC_BASE + state.next_offset);
        state.next_offset += 1;
        state.by_name.insert(key.clone(), addr);
        state.by_addr.insert(addr, key);
        Some((addr, true))
    }

    /// `(first_refusal, tracking_stopped)` for a refusal of `name`.
    fn track_refusal(&self, name: &str) -> (bool, bool) {
        let mut state = self.lock();
        if state.refused.contains(name) {
            return (false, false);
        }
        if state.refused.len() < REFUSAL_TRACKING_CAP {
            state.refused.insert(name.to_string());
            return (true, false);
        }
        let first_stop = !state.tracking_stopped;
        state.tracking_stopped = true;
        (false, first_stop)
    }

    fn malformed(&self, reason: MalformedQuery) -> DnsOutcome {
        let bit = 1u32 << reason.kind();
        let mut state = self.lock();
        let first_of_kind = state.malformed_seen & bit == 0;
        state.malformed_seen |= bit;
        DnsOutcome::Malformed {
            reason,
            first_of_kind,
        }
    }
}

/// The fixed 12-byte header.
struct Header {
    id: u16,
    flags: u16,
    qdcount: u16,
    ancount: u16,
    nscount: u16,
    arcount: u16,
}

impl Header {
    fn parse(msg: &[u8]) -> Option<Header> {
        let h = msg.get(..HEADER_LEN)?;
        let word = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(Header {
            id: word(0),
            flags: word(2),
            qdcount: word(4),
            ancount: word(6),
            nscount: word(8),
            arcount: word(10),
        })
    }

    fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xF) as u8
    }
}

/// The one question of a query.
struct Question<'a> {
    /// The question section exactly as received (name, type, class), for the echo.
    raw: &'a [u8],
    labels: Vec<&'a [u8]>,
    qtype: u16,
    qclass: u16,
}

impl Question<'_> {
    /// The lower-case dotted name to look up, or `None` when a label holds a byte a
    /// granted name cannot contain (a dot inside a label must not pass for two labels).
    fn lookup_key(&self) -> Option<String> {
        let plain = self.labels.iter().all(|label| {
            label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        });
        plain.then(|| self.display_name())
    }

    /// Lower-case presentation form, every byte outside `[a-z0-9_-]` as `\DDD`.
    fn display_name(&self) -> String {
        if self.labels.is_empty() {
            return ".".to_string();
        }
        let mut out = String::new();
        for (i, label) in self.labels.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            for b in label.iter().map(u8::to_ascii_lowercase) {
                if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' {
                    out.push(char::from(b));
                } else {
                    let _ = write!(out, "\\{b:03}");
                }
            }
        }
        out
    }
}

struct ParsedQuery<'a> {
    question: Question<'a>,
    /// The EDNS version when the query carries an OPT record.
    edns_version: Option<u8>,
}

/// A rejected query: why, and the question to echo when it could be read.
struct Rejected<'a> {
    reason: MalformedQuery,
    question: Option<&'a [u8]>,
}

impl From<MalformedQuery> for Rejected<'_> {
    fn from(reason: MalformedQuery) -> Self {
        Rejected {
            reason,
            question: None,
        }
    }
}

fn parse_query<'a>(header: &Header, msg: &'a [u8]) -> Result<ParsedQuery<'a>, Rejected<'a>> {
    if header.opcode() != 0 {
        // Another opcode's sections need not look like a question: echo none.
        return Err(MalformedQuery::Opcode(header.opcode()).into());
    }
    if header.qdcount != 1 {
        return Err(MalformedQuery::QuestionCount(header.qdcount).into());
    }
    let mut cursor = Cursor {
        msg,
        pos: HEADER_LEN,
    };
    let question = parse_question(&mut cursor)?;
    let with_question = |reason| Rejected {
        reason,
        question: Some(question.raw),
    };
    if header.ancount != 0 || header.nscount != 0 {
        return Err(with_question(MalformedQuery::UnexpectedRecords));
    }
    let edns_version = match header.arcount {
        0 => None,
        1 => Some(parse_opt(&mut cursor).map_err(with_question)?),
        _ => return Err(with_question(MalformedQuery::UnexpectedAdditional)),
    };
    if cursor.pos != msg.len() {
        return Err(with_question(MalformedQuery::TrailingBytes));
    }
    Ok(ParsedQuery {
        question,
        edns_version,
    })
}

fn parse_question<'a>(cursor: &mut Cursor<'a>) -> Result<Question<'a>, MalformedQuery> {
    let start = cursor.pos;
    let mut labels = Vec::new();
    loop {
        let len = cursor.u8()?;
        if len & 0xC0 == 0xC0 {
            return Err(MalformedQuery::CompressedName);
        }
        let len = usize::from(len);
        if len > MAX_LABEL_LEN {
            return Err(MalformedQuery::LabelTooLong);
        }
        // Wire length so far, this label's bytes and the root byte still to come.
        if cursor.pos - start + len + usize::from(len != 0) > MAX_NAME_WIRE_LEN {
            return Err(MalformedQuery::NameTooLong);
        }
        if len == 0 {
            break;
        }
        labels.push(cursor.take(len)?);
    }
    let qtype = cursor.u16()?;
    let qclass = cursor.u16()?;
    Ok(Question {
        raw: &cursor.msg[start..cursor.pos],
        labels,
        qtype,
        qclass,
    })
}

/// The additional record, which must be an EDNS OPT; returns its version.
fn parse_opt(cursor: &mut Cursor<'_>) -> Result<u8, MalformedQuery> {
    // Owner name: the root, a single zero byte.
    if cursor.u8()? != 0 {
        return Err(MalformedQuery::BadOpt);
    }
    if cursor.u16()? != TYPE_OPT {
        return Err(MalformedQuery::UnexpectedAdditional);
    }
    let _udp_size = cursor.u16()?;
    let ttl = cursor.take(4)?;
    let version = ttl[1];
    let rdlen = usize::from(cursor.u16()?);
    let mut options = Cursor {
        msg: cursor.take(rdlen)?,
        pos: 0,
    };
    // Options are ignored (none is echoed), but they must tile the RDATA exactly.
    while options.pos < options.msg.len() {
        let _code = options.u16().map_err(|_| MalformedQuery::BadOpt)?;
        let len = usize::from(options.u16().map_err(|_| MalformedQuery::BadOpt)?);
        options.take(len).map_err(|_| MalformedQuery::BadOpt)?;
    }
    Ok(version)
}

/// A read position in a message; every read is bounds-checked.
struct Cursor<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MalformedQuery> {
        let end = self.pos.checked_add(n).ok_or(MalformedQuery::Truncated)?;
        let bytes = self
            .msg
            .get(self.pos..end)
            .ok_or(MalformedQuery::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, MalformedQuery> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, MalformedQuery> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// A reply: the query's id, opcode, RD and CD echoed, QR and RA set (the stub is the
/// agent's recursive resolver as far as its clients can tell), never AA.
struct Reply<'a> {
    header: &'a Header,
    question: Option<&'a [u8]>,
    /// Possibly extended (above 15: carried in the OPT record).
    rcode: u16,
    answer: Option<Ipv4Addr>,
    edns: bool,
}

impl Reply<'_> {
    /// The encoded reply. At most 12 + 259 (question) + 16 (answer) + 11 (OPT) = 298
    /// bytes, so always within 512 even without EDNS.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(300);
        let flags = FLAG_QR
            | (self.header.flags & (0xF << 11))
            | (self.header.flags & (FLAG_RD | FLAG_CD))
            | FLAG_RA
            | (self.rcode & 0xF);
        out.extend_from_slice(&self.header.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&u16::from(self.question.is_some()).to_be_bytes());
        out.extend_from_slice(&u16::from(self.answer.is_some()).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&u16::from(self.edns).to_be_bytes());
        if let Some(question) = self.question {
            out.extend_from_slice(question);
        }
        if let Some(addr) = self.answer {
            // The owner is the question's name, by pointer to offset 12.
            out.extend_from_slice(&[0xC0, HEADER_LEN as u8]);
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ANSWER_TTL_SECS.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&addr.octets());
        }
        if self.edns {
            out.push(0);
            out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
            // Extended RCODE (upper 8 bits), version 0, DO clear (no DNSSEC), Z 0.
            out.extend_from_slice(&[(self.rcode >> 4) as u8, 0, 0, 0]);
            out.extend_from_slice(&0u16.to_be_bytes());
        }
        out
    }
}

/// Where the servers report what they did with each query.
///
/// Implemented for a line logger, `Arc<dyn Fn(&str) + Send + Sync>`, which is given
/// [`DnsOutcome::log_line`] (so only the bounded set of lines worth logging), and for
/// an outcome consumer, `Arc<dyn Fn(&DnsOutcome) + Send + Sync>`, which sees every
/// outcome and does its own filtering (e.g. with [`DnsOutcome::first_refused_name`]).
/// Called on the serving task: it must not block.
pub trait DnsLog: Send + Sync + 'static {
    /// Reports one outcome.
    fn record(&self, outcome: &DnsOutcome);
}

impl DnsLog for Arc<dyn Fn(&str) + Send + Sync> {
    fn record(&self, outcome: &DnsOutcome) {
        if let Some(line) = outcome.log_line() {
            self(&line);
        }
    }
}

impl DnsLog for Arc<dyn Fn(&DnsOutcome) + Send + Sync> {
    fn record(&self, outcome: &DnsOutcome) {
        self(outcome);
    }
}

/// Answers DNS over UDP on `socket` until the task is dropped. A datagram that fails
/// (to arrive, to parse, to be answered) never stops the loop.
pub async fn serve_udp(socket: UdpSocket, stub: Arc<StubDns>, log: impl DnsLog) {
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(_) => {
                // Per-datagram errors; yield so a persistent one cannot spin the
                // runtime's thread.
                tokio::task::yield_now().await;
                continue;
            }
        };
        let Some((reply, outcome)) = stub.answer(&buf[..len]) else {
            continue;
        };
        log.record(&outcome);
        // A client that went away is no concern of the stub's.
        let _ = socket.send_to(&reply, peer).await;
    }
}

/// Answers DNS over TCP (RFC 7766: 2-byte length prefix, several queries per
/// connection) until the task is dropped, which also ends every connection. At most
/// [`MAX_TCP_CONNECTIONS`] at once; one idle for [`TCP_IDLE_TIMEOUT`] is closed.
pub async fn serve_tcp(listener: TcpListener, stub: Arc<StubDns>, log: impl DnsLog) {
    let log = Arc::new(log);
    // Owned by this future: dropping it aborts every connection's task.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            // Finished connections are reaped before the next accept is counted
            // against the cap.
            biased;
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // E.g. out of descriptors: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if connections.len() >= MAX_TCP_CONNECTIONS {
                    // Closed at once: the client fails fast instead of queueing.
                    drop(stream);
                    continue;
                }
                let (stub, log) = (Arc::clone(&stub), Arc::clone(&log));
                connections.spawn(async move { serve_tcp_connection(stream, &stub, &*log).await });
            }
        }
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, stub: &StubDns, log: &impl DnsLog) {
    use tokio::time::timeout;
    loop {
        let mut prefix = [0u8; 2];
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut prefix)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        // The 2-byte prefix bounds a message to 64 KiB; the buffer is only as large as
        // the message announced.
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut msg)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        // Nothing to answer leaves the client nothing to wait for: close.
        let Some((reply, outcome)) = stub.answer(&msg) else {
            return;
        };
        log.record(&outcome);
        let mut framed = Vec::with_capacity(2 + reply.len());
        // Replies are at most ~300 bytes, so the length always fits the prefix.
        framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query: `id`, RD set, one question for `name` (dots split labels as given).
    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&FLAG_RD.to_be_bytes());
        q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    /// A query (id 1, type A, class IN) for a name of one label, `label` byte for byte:
    /// a dot or any other byte in it stays inside the label.
    fn one_label_query(label: &[u8]) -> Vec<u8> {
        let mut q = query(1, "x", TYPE_A);
        q.truncate(12);
        q.push(label.len() as u8);
        q.extend_from_slice(label);
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    fn with_opt(mut q: Vec<u8>, version: u8, options: &[u8]) -> Vec<u8> {
        q[11] = 1;
        q.push(0);
        q.extend_from_slice(&TYPE_OPT.to_be_bytes());
        q.extend_from_slice(&4096u16.to_be_bytes());
        q.extend_from_slice(&[0, version, 0x80, 0]);
        q.extend_from_slice(&(options.len() as u16).to_be_bytes());
        q.extend_from_slice(options);
        q
    }

    fn stub() -> StubDns {
        StubDns::new(["github.com".to_string(), "Example.ORG.".to_string()])
    }

    fn rcode(reply: &[u8]) -> u8 {
        reply[3] & 0xF
    }

    fn count(reply: &[u8], i: usize) -> u16 {
        u16::from_be_bytes([reply[4 + 2 * i], reply[5 + 2 * i]])
    }

    fn a_record(reply: &[u8]) -> Ipv4Addr {
        assert_eq!(count(reply, 1), 1);
        let a: [u8; 4] = reply[reply.len() - 4..].try_into().unwrap();
        Ipv4Addr::from(a)
    }

    fn in_synthetic_range(addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        a & !(SYNTHETIC_SIZE - 1) == SYNTHETIC_BASE
    }

    #[test]
    fn a_for_a_known_name_is_stable_and_maps_back() {
        let stub = stub();
        let (reply, outcome) = stub.answer(&query(7, "github.com", TYPE_A)).unwrap();
        assert_eq!(&reply[..2], &7u16.to_be_bytes());
        assert_eq!(rcode(&reply), RCODE_NOERROR);
        assert_eq!(reply[2] & 0x80, 0x80, "QR set");
        let addr = a_record(&reply);
        assert!(in_synthetic_range(addr));
        assert_eq!(addr, Ipv4Addr::new(198, 18, 0, 2), "never .0 or .1");
        assert_eq!(
            outcome,
            DnsOutcome::Answered {
                name: "github.com".into(),
                addr,
                newly_allocated: true
            }
        );
        assert!(outcome.log_line().is_some());
        let (again, outcome) = stub.answer(&query(8, "github.com", TYPE_A)).unwrap();
        assert_eq!(a_record(&again), addr);
        assert!(matches!(
            outcome,
            DnsOutcome::Answered {
                newly_allocated: false,
                ..
            }
        ));
        assert_eq!(outcome.log_line(), None);
        // The configured name's case and trailing dot do not matter.
        let (other, _) = stub.answer(&query(9, "example.org", TYPE_A)).unwrap();
        let other = a_record(&other);
        assert_ne!(other, addr);
        assert_eq!(stub.name_for(addr).as_deref(), Some("github.com"));
        assert_eq!(stub.name_for(other).as_deref(), Some("example.org"));
        assert_eq!(stub.name_for(Ipv4Addr::new(198, 18, 0, 1)), None);
        assert_eq!(stub.name_for(Ipv4Addr::new(8, 8, 8, 8)), None);
    }

    #[test]
    fn answer_record_is_well_formed() {
        let stub = stub();
        let q = query(1, "github.com", TYPE_A);
        let (reply, _) = stub.answer(&q).unwrap();
        // Header, echoed question, then: pointer to 12, A, IN, TTL, RDLENGTH 4.
        assert_eq!(&reply[12..q.len()], &q[12..]);
        let rr = &reply[q.len()..];
        assert_eq!(&rr[..2], &[0xC0, 12]);
        assert_eq!(&rr[2..6], &[0, 1, 0, 1]);
        assert_eq!(&rr[6..10], &ANSWER_TTL_SECS.to_be_bytes());
        assert_eq!(&rr[10..12], &[0, 4]);
        assert_eq!(rr.len(), 16);
        assert_eq!(count(&reply, 0), 1);
        assert_eq!(count(&reply, 3), 0);
        assert_eq!(reply[2] & 0x01, 0x01, "RD echoed");
        assert_eq!(reply[3] & 0x80, 0x80, "RA set");
    }

    #[test]
    fn mixed_case_is_matched_and_echoed() {
        let stub = stub();
        let q = query(3, "GiThUb.CoM", TYPE_A);
        let (reply, outcome) = stub.answer(&q).unwrap();
        assert_eq!(rcode(&reply), RCODE_NOERROR);
        assert_eq!(&reply[12..q.len()], &q[12..], "question echoed as sent");
        assert!(matches!(outcome, DnsOutcome::Answered { ref name, .. } if name == "github.com"));
    }

    #[test]
    fn aaaa_svcb_https_are_nodata() {
        let stub = stub();
        for qtype in [TYPE_AAAA, TYPE_SVCB, TYPE_HTTPS] {
            let (reply, outcome) = stub.answer(&query(4, "github.com", qtype)).unwrap();
            assert_eq!(rcode(&reply), RCODE_NOERROR);
            assert_eq!(count(&reply, 0), 1);
            assert_eq!((count(&reply, 1), count(&reply, 2)), (0, 0));
            assert_eq!(
                outcome,
                DnsOutcome::NoData {
                    name: "github.com".into(),
                    qtype
                }
            );
        }
        // NODATA gives no address.
        assert_eq!(stub.name_for(Ipv4Addr::new(198, 18, 0, 2)), None);
    }

    #[test]
    fn other_types_for_a_known_name_are_refused() {
        let stub = stub();
        for (i, qtype) in [16u16, 5, 15, 255, 33, 12].into_iter().enumerate() {
            let (reply, outcome) = stub.answer(&query(5, "github.com", qtype)).unwrap();
            assert_eq!(rcode(&reply), RCODE_REFUSED);
            assert_eq!(count(&reply, 1), 0);
            let DnsOutcome::Refused {
                reason,
                first_refusal,
                ..
            } = outcome
            else {
                panic!("{outcome:?}")
            };
            assert_eq!(reason, RefusalReason::QueryType);
            assert_eq!(first_refusal, i == 0, "once per name");
        }
    }

    #[test]
    fn a_wildcard_grant_answers_names_strictly_under_it_only() {
        let stub = StubDns::new(["*.Crates.io.".to_string()]);
        for (i, name) in ["static.crates.io", "a.b.crates.io"]
            .into_iter()
            .enumerate()
        {
            let (reply, outcome) = stub.answer(&query(i as u16, name, TYPE_A)).unwrap();
            assert_eq!(rcode(&reply), 0, "{name}");
            let DnsOutcome::Answered { addr, .. } = outcome else {
                panic!("{outcome:?}")
            };
            assert_eq!(stub.name_for(addr).as_deref(), Some(name));
        }
        for name in [
            "crates.io",
            "evilcrates.io",
            "crates.io.evil",
            "*.crates.io",
        ] {
            let (reply, _) = stub.answer(&query(9, name, TYPE_A)).unwrap();
            assert_eq!(rcode(&reply), RCODE_NXDOMAIN, "{name}");
        }
    }

    #[test]
    fn unknown_names_get_nxdomain_and_no_address() {
        let stub = stub();
        let name = "mzxw6ytboi4dsojs.gezdgnbvgy3tqojq.exfil.example.net";
        let (reply, outcome) = stub.answer(&query(6, name, 16)).unwrap();
        assert_eq!(rcode(&reply), RCODE_NXDOMAIN);
        assert_eq!((count(&reply, 1), count(&reply, 2)), (0, 0));
        assert_eq!(
            outcome,
            DnsOutcome::Refused {
                name: name.into(),
                qtype: 16,
                reason: RefusalReason::UnknownName,
                first_refusal: true,
                tracking_stopped: false,
            }
        );
        assert!(outcome.log_line().unwrap().contains("TXT"));
        assert_eq!(outcome.first_refused_name(), Some(name));
        let (_, outcome) = stub.answer(&query(6, name, TYPE_A)).unwrap();
        assert!(matches!(
            outcome,
            DnsOutcome::Refused {
                first_refusal: false,
                ..
            }
        ));
        assert_eq!(outcome.log_line(), None);
        assert_eq!(outcome.first_refused_name(), None);
        // A sub-domain or a parent of a granted name is not granted.
        for other in ["api.github.com", "com", "github.com.evil"] {
            let (reply, _) = stub.answer(&query(6, other, TYPE_A)).unwrap();
            assert_eq!(rcode(&reply), RCODE_NXDOMAIN, "{other}");
        }
        assert!(stub.lock().by_name.is_empty());
    }

    #[test]
    fn a_dot_inside_a_label_is_not_a_separator() {
        let stub = stub();
        // One label "github.com" instead of two.
        let q = one_label_query(b"github.com");
        let (reply, outcome) = stub.answer(&q).unwrap();
        assert_eq!(rcode(&reply), RCODE_NXDOMAIN);
        assert!(
            matches!(outcome, DnsOutcome::Refused { ref name, .. } if name == "github\\046com")
        );
    }

    #[test]
    fn names_are_escaped_for_logs() {
        let stub = stub();
        let q = one_label_query(b"a\nB\\");
        let (_, outcome) = stub.answer(&q).unwrap();
        assert!(matches!(outcome, DnsOutcome::Refused { ref name, .. } if name == "a\\010b\\092"));
        let (_, outcome) = stub.answer(&query(2, "", TYPE_A)).unwrap();
        assert!(matches!(outcome, DnsOutcome::Refused { ref name, .. } if name == "."));
    }

    #[test]
    fn other_classes_are_refused() {
        let stub = stub();
        let mut q = query(1, "github.com", TYPE_A);
        let n = q.len();
        q[n - 1] = 3; // CH
        let (reply, outcome) = stub.answer(&q).unwrap();
        assert_eq!(rcode(&reply), RCODE_REFUSED);
        assert!(matches!(
            outcome,
            DnsOutcome::Refused {
                reason: RefusalReason::Class(3),
                ..
            }
        ));
    }

    #[test]
    fn refusal_tracking_is_bounded() {
        let stub = stub();
        for i in 0..REFUSAL_TRACKING_CAP {
            let (_, outcome) = stub
                .answer(&query(1, &format!("n{i}.test"), TYPE_A))
                .unwrap();
            assert!(matches!(
                outcome,
                DnsOutcome::Refused {
                    first_refusal: true,
                    tracking_stopped: false,
                    ..
                }
            ));
        }
        let (_, outcome) = stub.answer(&query(1, "late.test", TYPE_A)).unwrap();
        assert!(matches!(
            outcome,
            DnsOutcome::Refused {
                first_refusal: false,
                tracking_stopped: true,
                ..
            }
        ));
        assert!(outcome.log_line().unwrap().contains("not logged"));
        let (_, outcome) = stub.answer(&query(1, "later.test", TYPE_A)).unwrap();
        assert!(matches!(
            outcome,
            DnsOutcome::Refused {
                first_refusal: false,
                tracking_stopped: false,
                ..
            }
        ));
        assert_eq!(stub.lock().refused.len(), REFUSAL_TRACKING_CAP);
    }

    #[test]
    fn address_pool_is_never_reused_and_ends() {
        let stub = stub();
        stub.lock().next_offset = LAST_OFFSET;
        let (reply, _) = stub.answer(&query(1, "github.com", TYPE_A)).unwrap();
        assert_eq!(a_record(&reply), Ipv4Addr::new(198, 19, 255, 254));
        let (reply, outcome) = stub.answer(&query(1, "example.org", TYPE_A)).unwrap();
        assert_eq!(rcode(&reply), RCODE_SERVFAIL);
        assert!(matches!(
            outcome,
            DnsOutcome::Refused {
                reason: RefusalReason::AddressPoolExhausted,
                ..
            }
        ));
    }

    #[test]
    fn header_level_problems() {
        let stub = stub();
        // Shorter than a header: dropped.
        assert!(stub.answer(&[]).is_none());
        assert!(stub.answer(&[0; 11]).is_none());
        // A response: dropped.
        let mut q = query(1, "github.com", TYPE_A);
        q[2] |= 0x80;
        assert!(stub.answer(&q).is_none());
        // Another opcode: NOTIMP, no question echoed.
        let mut q = query(1, "github.com", TYPE_A);
        q[2] |= 2 << 3;
        let (reply, outcome) = stub.answer(&q).unwrap();
        assert_eq!(rcode(&reply), RCODE_NOTIMP);
        assert_eq!((reply[2] >> 3) & 0xF, 2, "opcode echoed");
        assert_eq!(reply.len(), HEADER_LEN);
        assert!(matches!(
            outcome,
            DnsOutcome::Malformed {
                reason: MalformedQuery::Opcode(2),
                ..
            }
        ));
    }

    #[test]
    fn question_count_other_than_one_is_formerr() {
        let stub = stub();
        for qd in [0u8, 2] {
            let mut q = query(1, "github.com", TYPE_A);
            q[5] = qd;
            if qd == 2 {
                let second = q[12..].to_vec();
                q.extend_from_slice(&second);
            }
            let (reply, outcome) = stub.answer(&q).unwrap();
            assert_eq!(rcode(&reply), RCODE_FORMERR);
            assert_eq!(reply.len(), HEADER_LEN);
            assert_eq!(
                outcome,
                DnsOutcome::Malformed {
                    reason: MalformedQuery::QuestionCount(u16::from(qd)),
                    first_of_kind: qd == 0,
                }
            );
        }
        assert!(stub.lock().by_name.is_empty());
    }

    #[test]
    fn malformed_questions_are_formerr() {
        let stub = stub();
        let header = &query(1, "x", TYPE_A)[..12];
        let case = |body: &[u8]| {
            let mut q = header.to_vec();
            q.extend_from_slice(body);
            let (reply, outcome) = stub.answer(&q).unwrap();
            assert_eq!(rcode(&reply), RCODE_FORMERR, "{body:?}");
            assert_eq!(count(&reply, 0), 0);
            match outcome {
                DnsOutcome::Malformed { reason, .. } => reason,
                other => panic!("{other:?}"),
            }
        };
        // Truncated inside a label, before the type, inside the class.
        assert_eq!(case(&[6, b'g', b'i']), MalformedQuery::Truncated);
        assert_eq!(case(&[1, b'a', 0]), MalformedQuery::Truncated);
        assert_eq!(case(&[1, b'a', 0, 0, 1, 0]), MalformedQuery::Truncated);
        // A pointer to itself (a loop) and a pointer after a label.
        assert_eq!(
            case(&[0xC0, 12, 0, 1, 0, 1]),
            MalformedQuery::CompressedName
        );
        assert_eq!(
            case(&[1, b'a', 0xC0, 12, 0, 1, 0, 1]),
            MalformedQuery::CompressedName
        );
        // A 64-byte label; and 0x80, a reserved label type.
        let mut long = vec![64];
        long.extend_from_slice(&[b'a'; 64]);
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(case(&long), MalformedQuery::LabelTooLong);
        assert_eq!(case(&[0x80, 0, 0, 1, 0, 1]), MalformedQuery::LabelTooLong);
        // 4 labels of 63: 256 bytes with the root.
        let mut long = Vec::new();
        for _ in 0..4 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(case(&long), MalformedQuery::NameTooLong);
    }

    /// A name of 255 bytes on the wire, the most a name may have: 3 × 63 + 61 + 5
    /// length bytes + root.
    fn longest_name() -> String {
        [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".")
    }

    #[test]
    fn longest_name_is_accepted() {
        let stub = stub();
        // 3 × 63 + 61 + 5 length bytes + root = 255.
        let name = longest_name();
        let q = query(1, &name, TYPE_A);
        assert_eq!(q.len() - 12 - 4, 255);
        let (reply, outcome) = stub.answer(&with_opt(q, 0, &[])).unwrap();
        assert_eq!(rcode(&reply), RCODE_NXDOMAIN);
        assert!(matches!(outcome, DnsOutcome::Refused { .. }));
        assert!(reply.len() <= 512);
    }

    #[test]
    fn largest_reply_fits_in_512() {
        let name = longest_name();
        let stub = StubDns::new([name.clone()]);
        let q = with_opt(query(1, &name, TYPE_A), 0, &[]);
        let (reply, _) = stub.answer(&q).unwrap();
        assert_eq!(count(&reply, 1), 1);
        assert!(reply.len() <= 512, "{}", reply.len());
    }

    #[test]
    fn records_beyond_the_question() {
        let stub = stub();
        let base = query(1, "github.com", TYPE_A);
        // An answer record in the query.
        let mut q = base.clone();
        q[7] = 1;
        let (reply, outcome) = stub.answer(&q).unwrap();
        assert_eq!(rcode(&reply), RCODE_FORMERR);
        assert_eq!(&reply[12..], &base[12..], "question echoed");
        assert!(matches!(
            outcome,
            DnsOutcome::Malformed {
                reason: MalformedQuery::UnexpectedRecords,
                ..
            }
        ));
        // Two additional records.
        let mut q = with_opt(base.clone(), 0, &[]);
        q[11] = 2;
        let (reply, _) = stub.answer(&q).unwrap();
        assert_eq!(rcode(&reply), RCODE_FORMERR);
        // One additional that is not an OPT (a TSIG-ish type 250).
        let mut q = with_opt(base.clone(), 0, &[]);
        let at = base.len() + 1;
        q[at..at + 2].copy_from_slice(&250u16.to_be_bytes());
        let (_, outcome) = stub.answer(&q).unwrap();
        assert!(matches!(
            outcome,
            DnsOutcome::Malformed {
                reason: MalformedQuery::UnexpectedAdditional,
                ..
            }
        ));
        // Trailing garbage.
        let mut q = base.clone();
        q.push(0);
        let (_, outcome) = stub.answer(&q).unwrap();
        assert!(matches!(
            outcome,
            DnsOutcome::Malformed {
                reason: MalformedQuery::TrailingBytes,
                ..
            }
        ));
        // Options that overrun the OPT's RDATA.
        let q = with_opt(base.clone(), 0, &[0, 10, 0, 8, 1, 2]);
        let (_, outcome) = stub.answer(&q).unwrap();
        assert!(matches!(
            outcome,
            DnsOutcome::Malformed {
                reason: MalformedQuery::BadOpt,
                ..
            }
        ));
        assert!(stub.lock().by_name.is_empty());
    }

    #[test]
    fn edns() {
        let stub = stub();
        // A cookie option is accepted and not echoed; the reply carries OPT 1232.
        let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let (reply, outcome) = stub
            .answer(&with_opt(query(1, "github.com", TYPE_A), 0, &cookie))
            .unwrap();
        assert!(matches!(outcome, DnsOutcome::Answered { .. }));
        assert_eq!(count(&reply, 3), 1);
        let opt = &reply[reply.len() - 11..];
        assert_eq!(opt, &[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]);
        // The A record sits just before the OPT.
        let a: [u8; 4] = reply[reply.len() - 15..reply.len() - 11]
            .try_into()
            .unwrap();
        assert!(in_synthetic_range(Ipv4Addr::from(a)));
        // Version 1: BADVERS (extended RCODE 16 = 1 in the OPT, 0 in the header).
        let (reply, outcome) = stub
            .answer(&with_opt(query(1, "github.com", TYPE_A), 1, &[]))
            .unwrap();
        assert_eq!(rcode(&reply), 0);
        assert_eq!(count(&reply, 1), 0);
        assert_eq!(reply[reply.len() - 6], 1);
        assert!(matches!(
            outcome,
            DnsOutcome::Malformed {
                reason: MalformedQuery::EdnsVersion(1),
                ..
            }
        ));
    }

    #[test]
    fn malformed_logging_is_once_per_kind() {
        let stub = stub();
        let mut q = query(1, "github.com", TYPE_A);
        q.push(0);
        let (_, first) = stub.answer(&q).unwrap();
        let (_, second) = stub.answer(&q).unwrap();
        assert!(first.log_line().is_some());
        assert_eq!(second.log_line(), None);
    }

    #[test]
    fn concurrent_queries_agree_on_addresses() {
        let stub = Arc::new(StubDns::new(
            (0..50).map(|i| format!("h{i}.example")).collect::<Vec<_>>(),
        ));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stub = Arc::clone(&stub);
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            let (reply, _) = stub
                                .answer(&query(1, &format!("h{i}.example"), TYPE_A))
                                .unwrap();
                            a_record(&reply)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        let distinct: HashSet<_> = results[0].iter().collect();
        assert_eq!(distinct.len(), 50);
        for (i, addr) in results[0].iter().enumerate() {
            assert_eq!(stub.name_for(*addr), Some(format!("h{i}.example")));
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn check(stub: &StubDns, bytes: &[u8]) {
            if let Some((reply, _)) = stub.answer(bytes) {
                assert!(bytes.len() >= HEADER_LEN);
                assert_eq!(&reply[..2], &bytes[..2], "id echoed");
                assert_eq!(reply[2] & 0x80, 0x80, "QR set");
                assert!(reply.len() <= 512);
            }
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                check(&stub(), &bytes);
            }

            /// Mutations of a valid query reach deeper than random bytes.
            #[test]
            fn mutated_queries_never_panic(
                edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                cut in any::<usize>(),
                edns in any::<bool>(),
                qtype in prop_oneof![Just(TYPE_A), Just(TYPE_AAAA), any::<u16>()],
            ) {
                let mut q = query(1, "GitHub.com", qtype);
                if edns {
                    q = with_opt(q, 0, &[0, 10, 0, 2, 9, 9]);
                }
                for (at, byte) in edits {
                    let i = at % q.len();
                    q[i] = byte;
                }
                q.truncate(cut % (q.len() + 1));
                let stub = stub();
                check(&stub, &q);
                // Whatever happened, an address only ever goes to a granted name.
                for addr in stub.lock().by_addr.keys() {
                    prop_assert!(in_synthetic_range(*addr));
                }
                prop_assert!(stub.lock().by_name.keys().all(|n| n == "github.com"));
            }
        }
    }
}
