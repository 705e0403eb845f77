//! What the agent sends on a granted connection must match the granted name.
//!
//! The host splices bytes between the agent and the upstream it dialled. Upstream →
//! agent bytes flow at once (server-first protocols such as SSH must work); agent →
//! upstream bytes pass through a [`ClientStreamGate`], which holds them until they are
//! known to be for the granted name:
//!
//! - **TLS** (first byte 0x16): the ClientHello, which may be fragmented over several
//!   records and arrive in several reads, must carry an SNI `host_name` equal to the
//!   granted name (ASCII case-insensitive, one trailing dot ignored). After it the
//!   stream is encrypted and forwarded without inspection; there is no interception.
//! - **HTTP/1**: every request head on the connection, not only the first, must name
//!   the granted name and port (Host header, and the authority of an absolute-form
//!   target). Message framing is tracked (Content-Length, chunked) so that a request
//!   hidden in a body is forwarded as body and the next request is found where the
//!   server will find it; ambiguous framing (request smuggling) is refused. Bodies are
//!   forwarded without inspection.
//! - **Anything else** is refused on the web ports 80 and 443 and on plain-HTTP proxy
//!   requests; on other ports it is forwarded as raw TCP, which cannot be checked.
//!
//! The ClientHello is parsed by hand (about 150 lines over a bounded buffer, every
//! length checked against what contains it) rather than with rustls' `Acceptor`: the
//! lock file holds no rustls, and a TLS stack is a large dependency for reading one
//! extension of one message.
//!
//! Encrypted Client Hello: with ECH the SNI seen here is the outer (public) name of the
//! client-facing server, and the name the client really wants is encrypted. A grant of
//! a client-facing ECH server's public name therefore reaches whatever that server
//! fronts, as with domain fronting; grant origin names, never a CDN's shared name. A
//! ClientHello whose outer SNI is not granted is refused like any other.

use std::collections::BTreeSet;
use std::time::Duration;

/// The most bytes held before the first unit (ClientHello, request head, trailer
/// section) is complete; more is refused rather than buffered.
pub const MAX_FIRST_BYTES: usize = 64 * 1024;

/// A chunk-size line (size and extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// Headers per request head (httparse needs a fixed array).
const MAX_HEADERS: usize = 128;
/// TLS plaintext records carry at most 2^14 bytes (RFC 8446 §5.1).
const MAX_TLS_RECORD: usize = 1 << 14;
/// Deciding whether a stream is HTTP looks at most this far into its first line.
const MAX_DETECT_LINE: usize = 8192;
/// Leading CR/LF bytes tolerated before a first request line; servers skip "at least
/// one" empty line, clients send at most a few.
const MAX_LEADING_NEWLINES: usize = 64;
/// How much of an agent-supplied value a refusal quotes.
const MAX_SHOWN: usize = 200;

/// Methods that make a first line HTTP as soon as they are followed by a space (other
/// tokens are HTTP when their line contains `HTTP/`).
const KNOWN_METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PRI",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
    "QUERY",
];

/// How long the caller lets a connection stay undecided (the gate answering
/// [`GateStep::NeedMore`] before its first [`GateStep::Forward`]) before closing it.
/// Later requests on a keep-alive connection are under the caller's idle timeout.
pub fn first_bytes_deadline() -> Duration {
    Duration::from_secs(10)
}

/// How the agent's connection reached the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Redirected by the guest's funnel; the destination came from the original
    /// destination of the connection.
    Transparent,
    /// An HTTP proxy `CONNECT host:port` request; the gate sees the tunnelled stream.
    ProxyConnect,
    /// A plain-HTTP proxy request (absolute-form target); the gate sees the requests.
    ProxyHttp,
}

/// What the gate found the stream to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// TLS: the ClientHello was (or is being) checked, the rest passes.
    Tls,
    /// HTTP/1: every request head is checked. A refusal can be answered with a 403.
    Http1,
    /// Neither TLS nor HTTP on a port where that is allowed: passes unchecked.
    RawTcp,
}

/// The outcome of one [`ClientStreamGate::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateStep {
    /// Nothing may go upstream now; the gate holds what it was fed. Read more.
    NeedMore,
    /// These bytes passed the gate and may go upstream now.
    Forward(Vec<u8>),
    /// The stream is refused: send nothing more upstream and cut the connection.
    /// Bytes held by the gate are dropped, including any that had passed in the same
    /// call ahead of the refused point (the end of a request pipelined before a
    /// refused one): that request dies with the connection, which is safe.
    Refuse(Refusal),
}

/// Why a client stream is refused. The messages are shown to the agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The ClientHello's SNI names another server.
    #[error("TLS ClientHello names `{sni}` but the grant is `{granted}`")]
    SniMismatch {
        /// The SNI as sent (escaped).
        sni: String,
        /// The granted name.
        granted: String,
    },
    /// The ClientHello names no server, so it cannot be matched to the grant.
    #[error("TLS ClientHello has no SNI (the grant is `{granted}`)")]
    NoSni {
        /// The granted name.
        granted: String,
    },
    /// The bytes start like TLS but are not a well-formed ClientHello.
    #[error("malformed TLS ClientHello: {0}")]
    BadTls(String),
    /// A request names another host or port.
    #[error("HTTP request {what} `{host}` does not match the grant `{granted}`")]
    HostMismatch {
        /// `Host` or `target authority`.
        what: &'static str,
        /// The value as sent (escaped).
        host: String,
        /// The granted `name:port`.
        granted: String,
    },
    /// A request has no Host header or more than one.
    #[error("HTTP request has {count} Host headers; exactly one is required")]
    HostCount {
        /// How many Host headers the request has.
        count: usize,
    },
    /// CONNECT would open a tunnel to a name of the agent's choosing.
    #[error("HTTP CONNECT is refused inside a granted connection (the grant is `{granted}`)")]
    Connect {
        /// The granted name.
        granted: String,
    },
    /// HTTP/2 frames carry `:authority`, which the gate does not parse.
    #[error("HTTP Upgrade to h2c is refused: HTTP/2 frames are not inspected")]
    H2cUpgrade,
    /// The HTTP/2 connection preface (prior knowledge) on a cleartext stream.
    #[error("cleartext HTTP/2 (prior knowledge) is refused: HTTP/2 frames are not inspected")]
    Http2PriorKnowledge,
    /// After an upgrade the stream is no longer HTTP/1 and could not be checked.
    #[error(
        "HTTP Upgrade `{0}` on a cleartext connection is refused: the upgraded stream \
         could not be checked (use TLS, e.g. wss://)"
    )]
    Upgrade(String),
    /// Framing the gate and a server could read differently (request smuggling).
    #[error("HTTP request framing refused: {0}")]
    Framing(String),
    /// Not a well-formed HTTP/1 request.
    #[error("malformed HTTP request: {0}")]
    BadHttp(String),
    /// Ports 80 and 443 carry TLS or HTTP only.
    #[error("not TLS or HTTP on web port {port}")]
    NotTlsOrHttp {
        /// The destination port.
        port: u16,
    },
    /// A plain-HTTP proxy request must be HTTP.
    #[error("not an HTTP request on a plain-HTTP proxy connection")]
    NotHttpViaProxy,
    /// A unit that must be held whole grew past [`MAX_FIRST_BYTES`].
    #[error("{0} exceeds 64 KiB")]
    TooLarge(&'static str),
}

/// Checks what the agent sends on one connection granted for `name:port`; see the
/// module documentation for the rules.
///
/// Byte accounting: the gate owns the bytes it was fed and has not yet released. Each
/// [`feed`](Self::feed) appends its input and returns the bytes it releases, oldest
/// first, which may include bytes held from earlier calls. The concatenation of every
/// `Forward` payload is always a prefix of the concatenation of everything fed: bytes are never altered, reordered or invented.
/// Bytes still held when the agent closes were never approved; drop them.
#[derive(Debug)]
pub struct ClientStreamGate {
    granted: String,
    port: u16,
    via: Via,
    /// Fed, not released. Always starts at the beginning of an unfinished unit.
    held: Vec<u8>,
    state: State,
    kind: Option<StreamKind>,
    /// Some bytes were forwarded.
    first_passed: bool,
}

#[derive(Debug)]
enum State {
    /// Nothing classified yet.
    Start,
    /// Collecting the ClientHello; `records_end` is where the next record header starts.
    Tls {
        records_end: usize,
        handshake: Vec<u8>,
    },
    Http(Http),
    /// Everything passes (after the ClientHello, or raw TCP).
    Passthrough,
    Refused(Refusal),
}

/// Where an HTTP/1 client stream is. Offsets are relative to the start of the held
/// bytes, which is the start of the unfinished unit.
#[derive(Debug, Clone, Copy)]
enum Http {
    /// Before or inside a request head: `skipped` leading CRLF bytes, `scanned` bytes
    /// checked for bare CR/LF without finding the head's end.
    Head {
        skipped: usize,
        scanned: usize,
    },
    Body {
        remaining: u64,
    },
    ChunkLine,
    ChunkData {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers {
        scanned: usize,
    },
}

impl Http {
    const fn head() -> Self {
        Http::Head {
            skipped: 0,
            scanned: 0,
        }
    }
}

impl ClientStreamGate {
    /// A gate for a connection granted for `granted_name` (compared ASCII
    /// case-insensitively, one trailing dot ignored) and `port`.
    pub fn new(granted_name: &str, port: u16, via: Via) -> Self {
        ClientStreamGate {
            granted: granted_name
                .strip_suffix('.')
                .unwrap_or(granted_name)
                .to_ascii_lowercase(),
            port,
            via,
            held: Vec::new(),
            state: State::Start,
            kind: None,
            first_passed: false,
        }
    }

    /// Feeds the next bytes the agent sent and says what may go upstream. After a
    /// refusal every later call repeats it with nothing to forward.
    pub fn feed(&mut self, bytes: &[u8]) -> GateStep {
        if let State::Refused(refusal) = &self.state {
            return GateStep::Refuse(refusal.clone());
        }
        if matches!(self.state, State::Passthrough) && self.held.is_empty() {
            // The common case after the first bytes: no copy into the hold.
            return if bytes.is_empty() {
                GateStep::NeedMore
            } else {
                GateStep::Forward(bytes.to_vec())
            };
        }
        self.held.extend_from_slice(bytes);
        let (passed, verdict) = self.advance();
        if let Err(refusal) = verdict {
            self.held = Vec::new();
            self.state = State::Refused(refusal.clone());
            return GateStep::Refuse(refusal);
        }
        if passed == 0 {
            return GateStep::NeedMore;
        }
        self.first_passed = true;
        GateStep::Forward(if passed == self.held.len() {
            std::mem::take(&mut self.held)
        } else {
            self.held.drain(..passed).collect()
        })
    }

    /// What the stream was found to be, once known (also after a refusal).
    pub fn kind(&self) -> Option<StreamKind> {
        self.kind
    }

    /// True once the first bytes passed (the first ClientHello or request head, or raw
    /// TCP was recognised): the [`first_bytes_deadline`] is over. Keep feeding: on
    /// HTTP/1 every later request is still checked.
    pub fn is_done(&self) -> bool {
        self.first_passed
    }

    /// True once every later byte passes unchecked (after a good ClientHello, or raw
    /// TCP): the caller may stop feeding and splice directly.
    pub fn is_passthrough(&self) -> bool {
        matches!(self.state, State::Passthrough) && self.held.is_empty()
    }

    /// Runs the state machine over the held bytes. Returns how many leading held
    /// bytes passed, and the refusal that stopped it, if any.
    fn advance(&mut self) -> (usize, Result<(), Refusal>) {
        let mut passed = 0;
        loop {
            let unit = &self.held[passed..];
            match &mut self.state {
                State::Refused(_) => return (passed, Ok(())),
                State::Passthrough => return (self.held.len(), Ok(())),
                State::Start => match classify(unit, self.port, self.via) {
                    Ok(Some(kind)) => {
                        self.kind = Some(kind);
                        self.state = match kind {
                            StreamKind::Tls => State::Tls {
                                records_end: 0,
                                handshake: Vec::new(),
                            },
                            StreamKind::Http1 => State::Http(Http::head()),
                            StreamKind::RawTcp => State::Passthrough,
                        };
                    }
                    Ok(None) => return (passed, Ok(())),
                    Err(refusal) => return (passed, Err(refusal)),
                },
                State::Tls {
                    records_end,
                    handshake,
                } => match scan_client_hello(unit, records_end, handshake) {
                    Ok(None) => return (passed, Ok(())),
                    Ok(Some(hello)) => {
                        if let Err(refusal) = check_sni(hello.sni.as_deref(), &self.granted) {
                            return (passed, Err(refusal));
                        }
                        passed += hello.wire_len;
                        self.state = State::Passthrough;
                    }
                    Err(refusal) => return (passed, Err(refusal)),
                },
                State::Http(http) => match http_step(unit, http, &self.granted, self.port) {
                    Ok(Some((len, next))) => {
                        passed += len;
                        *http = next;
                    }
                    Ok(None) => return (passed, Ok(())),
                    Err(refusal) => return (passed, Err(refusal)),
                },
            }
        }
    }
}

/// Decides what the first bytes are, or `None` while that is not yet known.
fn classify(unit: &[u8], port: u16, via: Via) -> Result<Option<StreamKind>, Refusal> {
    let Some(&first) = unit.first() else {
        return Ok(None);
    };
    if first == 0x16 {
        return if via == Via::ProxyHttp {
            Err(Refusal::NotHttpViaProxy)
        } else {
            Ok(Some(StreamKind::Tls))
        };
    }
    match looks_like_http(unit) {
        None => Ok(None),
        Some(true) => Ok(Some(StreamKind::Http1)),
        Some(false) if via == Via::ProxyHttp => Err(Refusal::NotHttpViaProxy),
        Some(false) if port == 80 || port == 443 => Err(Refusal::NotTlsOrHttp { port }),
        Some(false) => Ok(Some(StreamKind::RawTcp)),
    }
}

/// Whether the stream starts like an HTTP/1 request: optional empty lines, a token,
/// a space, and then either a known method or a line that mentions `HTTP/`. Generous
/// on purpose: what looks like HTTP is then parsed strictly, and a malformed request
/// is refused rather than passed as raw TCP. A verdict, once given, does not change
/// as more bytes arrive.
fn looks_like_http(data: &[u8]) -> Option<bool> {
    let Some(start) = data.iter().position(|&b| b != b'\r' && b != b'\n') else {
        return (data.len() > MAX_LEADING_NEWLINES).then_some(false);
    };
    if start > MAX_LEADING_NEWLINES {
        return Some(false);
    }
    let line = &data[start..];
    let Some(method_len) = line.iter().position(|&b| !is_tchar(b)) else {
        return (line.len() > MAX_DETECT_LINE).then_some(false);
    };
    if method_len == 0 || method_len > MAX_DETECT_LINE || line[method_len] != b' ' {
        return Some(false);
    }
    let method = &line[..method_len];
    if KNOWN_METHODS
        .iter()
        .any(|known| known.as_bytes().eq_ignore_ascii_case(method))
    {
        return Some(true);
    }
    let window = &line[..line.len().min(MAX_DETECT_LINE)];
    let line_end = window.iter().position(|&b| b == b'\n');
    let first_line = &window[..line_end.unwrap_or(window.len())];
    if contains_ignore_case(first_line, b"HTTP/") {
        Some(true)
    } else if line_end.is_some() || line.len() >= MAX_DETECT_LINE {
        Some(false)
    } else {
        None
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

// --- TLS -------------------------------------------------------------------------

/// A complete ClientHello.
struct ClientHello {
    /// Bytes of the records that carry it.
    wire_len: usize,
    /// Its SNI host name, if it has one.
    sni: Option<Vec<u8>>,
}

/// Reassembles the handshake from the TLS records at the start of `wire`, resuming
/// at `records_end`; `None` while a record is incomplete.
fn scan_client_hello(
    wire: &[u8],
    records_end: &mut usize,
    handshake: &mut Vec<u8>,
) -> Result<Option<ClientHello>, Refusal> {
    loop {
        let Some(header) = wire.get(*records_end..*records_end + 5) else {
            return Ok(None);
        };
        if header[0] != 0x16 {
            return Err(bad_tls(format!(
                "record of content type {} before the ClientHello was complete",
                header[0]
            )));
        }
        if header[1] != 3 {
            return Err(bad_tls(format!(
                "record version {}.{} is not TLS",
                header[1], header[2]
            )));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Err(bad_tls("empty handshake record".into()));
        }
        if len > MAX_TLS_RECORD {
            return Err(bad_tls(format!("record of {len} bytes exceeds 2^14")));
        }
        let end = *records_end + 5 + len;
        if end > MAX_FIRST_BYTES {
            return Err(Refusal::TooLarge("TLS ClientHello"));
        }
        let Some(fragment) = wire.get(*records_end + 5..end) else {
            return Ok(None);
        };
        handshake.extend_from_slice(fragment);
        *records_end = end;
        if handshake.len() < 4 {
            continue;
        }
        if handshake[0] != 1 {
            return Err(bad_tls(format!(
                "first handshake message has type {}, not ClientHello (1)",
                handshake[0]
            )));
        }
        let message_len = u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]);
        let message_end = 4 + message_len as usize;
        if message_end > MAX_FIRST_BYTES {
            return Err(Refusal::TooLarge("TLS ClientHello"));
        }
        match handshake.len().cmp(&message_end) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Greater => {
                // Nothing follows a ClientHello in the client's first flight.
                return Err(bad_tls("data after the ClientHello in its record".into()));
            }
            std::cmp::Ordering::Equal => {
                let sni = parse_client_hello(&handshake[4..])?;
                return Ok(Some(ClientHello {
                    wire_len: end,
                    sni: sni.map(<[u8]>::to_vec),
                }));
            }
        }
    }
}

/// Parses a ClientHello body (RFC 8446 §4.1.2) and returns its SNI host name.
fn parse_client_hello(body: &[u8]) -> Result<Option<&[u8]>, Refusal> {
    let mut r = Reader::new(body);
    let version = r.take(2, "legacy_version")?;
    if version[0] != 3 {
        return Err(bad_tls(format!(
            "legacy_version {}.{} is not TLS",
            version[0], version[1]
        )));
    }
    r.take(32, "random")?;
    if r.vec8("legacy_session_id")?.len() > 32 {
        return Err(bad_tls("legacy_session_id longer than 32 bytes".into()));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(bad_tls(format!("cipher_suites of {} bytes", suites.len())));
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(bad_tls("no compression methods".into()));
    }
    if r.is_empty() {
        // A ClientHello without extensions (TLS 1.2 and older) names no server.
        return Ok(None);
    }
    let extensions = r.vec16("extensions")?;
    if !r.is_empty() {
        return Err(bad_tls("bytes after the extensions".into()));
    }
    let mut r = Reader::new(extensions);
    let mut seen = BTreeSet::new();
    let mut host_name = None;
    while !r.is_empty() {
        let kind = r.u16("extension type")?;
        let data = r.vec16("extension data")?;
        // RFC 8446 §4.2: at most one extension of each type. Two server_name
        // extensions would let the gate and the server read different names.
        if !seen.insert(kind) {
            return Err(bad_tls(format!("extension {kind} appears twice")));
        }
        if kind == 0 {
            host_name = Some(parse_server_name(data)?);
        }
    }
    Ok(host_name)
}

/// Parses a server_name extension (RFC 6066 §3) and returns its single host name.
fn parse_server_name(data: &[u8]) -> Result<&[u8], Refusal> {
    let mut r = Reader::new(data);
    let list = r.vec16("server_name_list")?;
    if !r.is_empty() {
        return Err(bad_tls("bytes after server_name_list".into()));
    }
    let mut r = Reader::new(list);
    let mut host_name = None;
    while !r.is_empty() {
        let kind = r.u8("server name type")?;
        if kind != 0 {
            return Err(bad_tls(format!("server name of unknown type {kind}")));
        }
        let name = r.vec16("host_name")?;
        if name.is_empty() {
            return Err(bad_tls("empty host_name".into()));
        }
        if host_name.replace(name).is_some() {
            return Err(bad_tls("more than one host_name".into()));
        }
    }
    host_name.ok_or_else(|| bad_tls("empty server_name_list".into()))
}

fn check_sni(sni: Option<&[u8]>, granted: &str) -> Result<(), Refusal> {
    let Some(sni) = sni else {
        return Err(Refusal::NoSni {
            granted: granted.to_owned(),
        });
    };
    if normalize_name(sni) == granted.as_bytes() {
        Ok(())
    } else {
        Err(Refusal::SniMismatch {
            sni: shown(sni),
            granted: granted.to_owned(),
        })
    }
}

fn bad_tls(why: String) -> Refusal {
    Refusal::BadTls(why)
}

/// Bounds-checked reads of TLS's big-endian, length-prefixed fields.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Refusal> {
        if n > self.data.len() {
            return Err(bad_tls(format!("{what} is truncated")));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, Refusal> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, Refusal> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self, what: &str) -> Result<&'a [u8], Refusal> {
        let len = self.u8(what)?;
        self.take(usize::from(len), what)
    }

    fn vec16(&mut self, what: &str) -> Result<&'a [u8], Refusal> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }
}

// --- HTTP/1 ----------------------------------------------------------------------

/// Advances one HTTP unit at the start of `unit`. Returns its length and the next
/// state, or `None` (with `http` updated) while the unit is incomplete.
fn http_step(
    unit: &[u8],
    http: &mut Http,
    granted: &str,
    port: u16,
) -> Result<Option<(usize, Http)>, Refusal> {
    match http {
        Http::Head { skipped, scanned } => {
            // Empty lines before a request line are skipped by servers (RFC 9112
            // §2.2) and so are skipped here, then the request after them is checked.
            while unit[*skipped..].starts_with(b"\r\n") {
                *skipped += 2;
            }
            match unit.get(*skipped) {
                None => return hold(unit, "HTTP request head"),
                Some(b'\r') if *skipped + 1 == unit.len() => {
                    return hold(unit, "HTTP request head")
                }
                Some(b'\r' | b'\n') => {
                    return Err(Refusal::BadHttp(
                        "bare CR or LF before the request line".into(),
                    ))
                }
                Some(_) => {}
            }
            let Some(end) = find_blank_line(unit, *skipped, scanned, "request head")? else {
                return hold(unit, "HTTP request head");
            };
            if end > MAX_FIRST_BYTES {
                // Complete but too large: refused as if it had arrived byte by byte.
                return Err(Refusal::TooLarge("HTTP request head"));
            }
            let next = check_head(&unit[*skipped..end], granted, port)?;
            Ok(Some((end, next)))
        }
        Http::Body { remaining } => Ok(take_data(unit, *remaining).map(|(n, left)| {
            let next = if left == 0 {
                Http::head()
            } else {
                Http::Body { remaining: left }
            };
            (n, next)
        })),
        Http::ChunkData { remaining } => Ok(take_data(unit, *remaining).map(|(n, left)| {
            let next = if left == 0 {
                Http::ChunkEnd
            } else {
                Http::ChunkData { remaining: left }
            };
            (n, next)
        })),
        Http::ChunkLine => {
            let window = &unit[..unit.len().min(MAX_CHUNK_LINE)];
            let Some(lf) = window.iter().position(|&b| b == b'\n') else {
                return if unit.len() >= MAX_CHUNK_LINE {
                    Err(Refusal::Framing(format!(
                        "chunk-size line exceeds {MAX_CHUNK_LINE} bytes"
                    )))
                } else {
                    Ok(None)
                };
            };
            if lf == 0 || unit[lf - 1] != b'\r' {
                return Err(Refusal::Framing("bare LF in a chunk-size line".into()));
            }
            let size = parse_chunk_size(&unit[..lf - 1])?;
            let next = if size == 0 {
                Http::Trailers { scanned: 0 }
            } else {
                Http::ChunkData { remaining: size }
            };
            Ok(Some((lf + 1, next)))
        }
        Http::ChunkEnd => match unit {
            [b'\r', b'\n', ..] => Ok(Some((2, Http::ChunkLine))),
            [] | [b'\r'] => Ok(None),
            _ => Err(Refusal::Framing(
                "chunk data is not followed by CRLF".into(),
            )),
        },
        Http::Trailers { scanned } => {
            let Some(end) = find_blank_line(unit, 0, scanned, "trailer section")? else {
                return hold(unit, "HTTP trailer section");
            };
            if end > MAX_FIRST_BYTES {
                return Err(Refusal::TooLarge("HTTP trailer section"));
            }
            check_trailers(&unit[..end])?;
            Ok(Some((end, Http::head())))
        }
    }
}

/// Keeps holding an incomplete unit unless it grew too large.
fn hold(unit: &[u8], what: &'static str) -> Result<Option<(usize, Http)>, Refusal> {
    if unit.len() > MAX_FIRST_BYTES {
        Err(Refusal::TooLarge(what))
    } else {
        Ok(None)
    }
}

/// Passes up to `remaining` body bytes: `(passed, still remaining)`, or `None` if
/// there are no bytes.
fn take_data(unit: &[u8], remaining: u64) -> Option<(usize, u64)> {
    if unit.is_empty() {
        return None;
    }
    let n = usize::try_from(remaining).map_or(unit.len(), |r| r.min(unit.len()));
    Some((n, remaining - n as u64))
}

/// Finds the end of a CRLF-terminated block of lines starting at `start` (just past
/// its empty last line), resuming at `scanned`. Refuses bare CR and bare LF: servers
/// disagree about them, and such disagreement is how requests are smuggled.
fn find_blank_line(
    unit: &[u8],
    start: usize,
    scanned: &mut usize,
    what: &str,
) -> Result<Option<usize>, Refusal> {
    for k in (*scanned).max(start)..unit.len() {
        let previous = (k > start).then(|| unit[k - 1]);
        if previous == Some(b'\r') && unit[k] != b'\n' {
            return Err(Refusal::BadHttp(format!("bare CR in the {what}")));
        }
        if unit[k] == b'\n' {
            if previous != Some(b'\r') {
                return Err(Refusal::BadHttp(format!("bare LF in the {what}")));
            }
            let empty_line = k == start + 1 || (k >= start + 3 && &unit[k - 3..k - 1] == b"\r\n");
            if empty_line {
                return Ok(Some(k + 1));
            }
        }
    }
    *scanned = unit.len();
    Ok(None)
}

/// Parses and checks one complete request head; returns how its body is framed.
fn check_head(head: &[u8], granted: &str, port: u16) -> Result<Http, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(Refusal::BadHttp("incomplete request head".into())),
        Err(_) if head.starts_with(b"PRI * HTTP/2") => return Err(Refusal::Http2PriorKnowledge),
        Err(e) => return Err(Refusal::BadHttp(format!("request head: {e}"))),
    }
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    let version = request.version.unwrap_or(1);
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Refusal::Connect {
            granted: granted.to_owned(),
        });
    }

    let mut hosts = Vec::new();
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("host") {
            hosts.push(header.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths.push(header.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.push(header.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            // After a 101 the stream is no longer HTTP/1, and the gate cannot see
            // whether the server switched; HTTP/2 in particular carries :authority.
            let protocols = header.value;
            let h2c = protocols
                .split(|&b| b == b',')
                .any(|p| trim_ows(p).eq_ignore_ascii_case(b"h2c"));
            return Err(if h2c {
                Refusal::H2cUpgrade
            } else {
                Refusal::Upgrade(shown(protocols))
            });
        }
    }

    let one_host = || match hosts.as_slice() {
        [host] => Ok(*host),
        _ => Err(Refusal::HostCount { count: hosts.len() }),
    };
    if target.starts_with('/') || (target == "*" && method.eq_ignore_ascii_case("OPTIONS")) {
        check_authority("Host", one_host()?, 80, granted, port)?;
    } else if let Some((scheme, rest)) = target.split_once("://") {
        let default_port = if scheme.eq_ignore_ascii_case("http") {
            80
        } else if scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            return Err(Refusal::BadHttp(format!(
                "request target scheme `{}` is not http or https",
                shown(scheme.as_bytes())
            )));
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest.as_bytes()[..authority_end];
        check_authority("target authority", authority, default_port, granted, port)?;
        // A server must prefer the target's authority, but one that does not would
        // route by Host: check both.
        if !hosts.is_empty() {
            check_authority("Host", one_host()?, default_port, granted, port)?;
        }
    } else {
        return Err(Refusal::BadHttp(format!(
            "request target `{}` is neither origin-form nor absolute-form",
            shown(target.as_bytes())
        )));
    }

    body_framing(version, &lengths, &codings)
}

/// How a request's body is delimited (RFC 9112 §6.3), refusing every case where a
/// server could delimit it differently.
fn body_framing(version: u8, lengths: &[&[u8]], codings: &[&[u8]]) -> Result<Http, Refusal> {
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err(Refusal::Framing(
                "both Content-Length and Transfer-Encoding".into(),
            ));
        }
        if version == 0 {
            return Err(Refusal::Framing(
                "Transfer-Encoding in an HTTP/1.0 request".into(),
            ));
        }
        if codings.len() != 1 || !trim_ows(codings[0]).eq_ignore_ascii_case(b"chunked") {
            let all: Vec<String> = codings.iter().map(|c| shown(c)).collect();
            return Err(Refusal::Framing(format!(
                "Transfer-Encoding `{}`: only a single `chunked` is accepted",
                all.join(", ")
            )));
        }
        return Ok(Http::ChunkLine);
    }
    match lengths {
        [] => Ok(Http::head()),
        [length] => {
            let digits = trim_ows(length);
            let length = (!digits.is_empty() && digits.len() <= 19)
                .then_some(digits)
                .filter(|d| d.iter().all(u8::is_ascii_digit))
                .and_then(|d| std::str::from_utf8(d).ok()?.parse::<u64>().ok())
                .ok_or_else(|| {
                    Refusal::Framing(format!(
                        "Content-Length `{}` is not a decimal length",
                        shown(length)
                    ))
                })?;
            Ok(if length == 0 {
                Http::head()
            } else {
                Http::Body { remaining: length }
            })
        }
        _ => Err(Refusal::Framing(format!(
            "{} Content-Length headers",
            lengths.len()
        ))),
    }
}

/// Checks a `host[:port]` against the grant; `default_port` applies when the port is
/// absent or empty.
fn check_authority(
    what: &'static str,
    value: &[u8],
    default_port: u16,
    granted: &str,
    port: u16,
) -> Result<(), Refusal> {
    let value = trim_ows(value);
    let mismatch = || Refusal::HostMismatch {
        what,
        host: shown(value),
        granted: format!("{granted}:{port}"),
    };
    let Some((host, explicit_port)) = split_authority(value) else {
        return Err(mismatch());
    };
    if normalize_name(host) == granted.as_bytes() && explicit_port.unwrap_or(default_port) == port {
        Ok(())
    } else {
        Err(mismatch())
    }
}

/// Splits `host[:port]` (host possibly a bracketed IPv6 literal); `None` if it is not
/// that shape (userinfo, path characters, a non-numeric port).
fn split_authority(value: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let (host, port) = if value.first() == Some(&b'[') {
        let close = value.iter().position(|&b| b == b']')?;
        value.split_at(close + 1)
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => value.split_at(colon),
            None => (value, &[][..]),
        }
    };
    let bad_host_byte = |b: &u8| b"@/\\?# \t:".contains(b) || b.is_ascii_control();
    if host.is_empty() || (host[0] != b'[' && host.iter().any(bad_host_byte)) {
        return None;
    }
    let port = match port {
        [] | [b':'] => None,
        [b':', digits @ ..] if digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) => {
            Some(std::str::from_utf8(digits).ok()?.parse().ok()?)
        }
        _ => return None,
    };
    Some((host, port))
}

/// Validates a chunk-size line without its CRLF: `1*HEXDIG [ BWS ";" ext ]`.
fn parse_chunk_size(line: &[u8]) -> Result<u64, Refusal> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let bad = || {
        Refusal::Framing(format!(
            "chunk-size line `{}` is not a hexadecimal size",
            shown(line)
        ))
    };
    if digits == 0 || digits > 16 {
        return Err(bad());
    }
    let extension = &line[digits..];
    let after_ws = trim_ows(extension);
    let extension_ok = extension.is_empty()
        || (after_ws.first() == Some(&b';')
            && extension
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80));
    if !extension_ok {
        return Err(bad());
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| bad())?;
    u64::from_str_radix(text, 16).map_err(|_| bad())
}

/// Trailer fields must parse as header fields and may not carry framing or routing
/// (some servers merge trailers into the header section).
fn check_trailers(section: &[u8]) -> Result<(), Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut headers) {
        Ok(httparse::Status::Complete((n, fields))) if n == section.len() => {
            for field in fields {
                let name = field.name;
                if ["host", "content-length", "transfer-encoding"]
                    .iter()
                    .any(|f| name.eq_ignore_ascii_case(f))
                {
                    return Err(Refusal::Framing(format!("`{name}` in a chunked trailer")));
                }
            }
            Ok(())
        }
        Ok(_) => Err(Refusal::BadHttp("incomplete trailer section".into())),
        Err(e) => Err(Refusal::BadHttp(format!("trailer section: {e}"))),
    }
}

fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// ASCII lower case without one trailing dot: the form names are compared in.
fn normalize_name(name: &[u8]) -> Vec<u8> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    name.to_ascii_lowercase()
}

/// An agent-supplied value as a refusal quotes it: escaped, and cut short.
fn shown(bytes: &[u8]) -> String {
    let mut text: String = bytes[..bytes.len().min(MAX_SHOWN)]
        .escape_ascii()
        .to_string();
    if bytes.len() > MAX_SHOWN {
        text.push('…');
    }
    text
}
