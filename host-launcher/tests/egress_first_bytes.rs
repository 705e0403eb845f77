//! The egress gate on what the agent sends first (and, for HTTP/1, on every request):
//! real ClientHellos from OpenSSL (tests/data, made by gen_client_hellos.py), crafted
//! ones for the malformed cases, and HTTP/1 streams that try to smuggle or front.

use airlock_launcher::egress::first_bytes::{
    first_bytes_deadline, ClientStreamGate, GateStep, Refusal, StreamKind, Via, MAX_FIRST_BYTES,
};
use proptest::prelude::*;
use std::time::Duration;

const GRANTED: &str = "allowed.example";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    hex::decode(text.trim()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What a gate did with a whole stream.
#[derive(Debug, PartialEq)]
struct Outcome {
    forwarded: Vec<u8>,
    refusal: Option<Refusal>,
}

/// Feeds `bytes` in pieces of `piece` bytes (0: one piece), checking on the way that
/// nothing is forwarded out of order and that a refusal is final.
fn run_in(gate: &mut ClientStreamGate, bytes: &[u8], piece: usize) -> Outcome {
    let mut forwarded = Vec::new();
    let piece = if piece == 0 {
        bytes.len().max(1)
    } else {
        piece
    };
    for chunk in bytes.chunks(piece) {
        match gate.feed(chunk) {
            GateStep::NeedMore => {}
            GateStep::Forward(b) => {
                assert!(!b.is_empty(), "Forward never carries nothing");
                forwarded.extend_from_slice(&b);
            }
            GateStep::Refuse(refusal) => {
                assert_eq!(gate.feed(b"more"), GateStep::Refuse(refusal.clone()));
                return Outcome {
                    forwarded,
                    refusal: Some(refusal),
                };
            }
        }
        assert!(
            bytes.starts_with(&forwarded),
            "forwarded bytes are a prefix"
        );
    }
    Outcome {
        forwarded,
        refusal: None,
    }
}

fn run(port: u16, via: Via, bytes: &[u8], piece: usize) -> Outcome {
    run_in(&mut ClientStreamGate::new(GRANTED, port, via), bytes, piece)
}

/// Runs in one piece and byte by byte; both must decide the same. Returns the one-piece
/// outcome.
fn run_both(port: u16, via: Via, bytes: &[u8]) -> Outcome {
    let whole = run(port, via, bytes, 0);
    let bytewise = run(port, via, bytes, 1);
    assert_eq!(
        whole.refusal, bytewise.refusal,
        "same verdict in any pieces"
    );
    if whole.refusal.is_none() {
        assert_eq!(whole.forwarded, bytewise.forwarded);
    }
    whole
}

fn refusal(port: u16, bytes: &[u8]) -> String {
    match run_both(port, Via::Transparent, bytes).refusal {
        Some(r) => r.to_string(),
        None => panic!("not refused: {}", shown(bytes)),
    }
}

/// The start of a stream, for assertion messages.
fn shown(bytes: &[u8]) -> String {
    bytes[..bytes.len().min(300)].escape_ascii().to_string()
}

fn passes(port: u16, bytes: &[u8]) {
    let outcome = run_both(port, Via::Transparent, bytes);
    assert_eq!(outcome.refusal, None, "{}", shown(bytes));
    assert_eq!(outcome.forwarded, bytes, "everything forwarded");
}

// --- TLS -------------------------------------------------------------------------

#[test]
fn a_real_client_hello_for_the_granted_name_passes_in_any_pieces() {
    let hello = fixture("client_hello_sni_allowed.hex");
    for port in [443, 8443] {
        for via in [Via::Transparent, Via::ProxyConnect] {
            for piece in [0, 1, 2, 5, 7, 100, 516] {
                let mut gate = ClientStreamGate::new(GRANTED, port, via);
                let outcome = run_in(&mut gate, &hello, piece);
                assert_eq!(outcome.refusal, None);
                assert_eq!(outcome.forwarded, hello, "piece {piece}");
                assert_eq!(gate.kind(), Some(StreamKind::Tls));
                assert!(gate.is_done() && gate.is_passthrough());
                // After the ClientHello the stream is encrypted: anything passes.
                assert_eq!(
                    gate.feed(b"\x17\x03\x03 GET / HTTP/1.1\r\nHost: evil\r\n\r\n"),
                    GateStep::Forward(
                        b"\x17\x03\x03 GET / HTTP/1.1\r\nHost: evil\r\n\r\n".to_vec()
                    )
                );
            }
        }
    }
}

#[test]
fn nothing_of_a_client_hello_passes_before_its_last_byte() {
    let hello = fixture("client_hello_sni_allowed.hex");
    let mut gate = ClientStreamGate::new(GRANTED, 443, Via::Transparent);
    for (i, byte) in hello.iter().enumerate() {
        let step = gate.feed(&[*byte]);
        if i + 1 < hello.len() {
            assert_eq!(step, GateStep::NeedMore, "byte {i}");
            assert!(!gate.is_done());
        } else {
            assert_eq!(step, GateStep::Forward(hello.clone()));
        }
    }
}

#[test]
fn bytes_after_the_client_hello_in_the_same_read_pass_with_it() {
    let mut stream = fixture("client_hello_sni_allowed.hex");
    let hello_len = stream.len();
    stream.extend_from_slice(b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x02ab");
    passes(443, &stream);
    let outcome = run(443, Via::Transparent, &stream, hello_len - 1);
    assert_eq!(outcome.forwarded, stream);
}

#[test]
fn another_sni_is_refused_naming_both() {
    let hello = fixture("client_hello_sni_evil.hex");
    assert_eq!(
        refusal(443, &hello),
        "TLS ClientHello names `evil.example` but the grant is `allowed.example`"
    );
    let outcome = run(443, Via::Transparent, &hello, 1);
    assert!(outcome.forwarded.is_empty(), "nothing of it went upstream");
}

#[test]
fn no_sni_is_refused() {
    let hello = fixture("client_hello_no_sni.hex");
    assert_eq!(
        refusal(443, &hello),
        "TLS ClientHello has no SNI (the grant is `allowed.example`)"
    );
    // On any port: TLS is checked wherever it is seen.
    assert!(refusal(8443, &hello).contains("no SNI"));
}

#[test]
fn sni_case_and_a_trailing_dot_do_not_matter_on_either_side() {
    let hello = fixture("client_hello_sni_upper_trailing_dot.hex");
    assert!(hello.windows(16).any(|w| w == b"ALLOWED.Example."));
    passes(443, &hello);
    for granted in ["ALLOWED.EXAMPLE", "allowed.example."] {
        let outcome = run_in(
            &mut ClientStreamGate::new(granted, 443, Via::Transparent),
            &hello,
            3,
        );
        assert_eq!(outcome.refusal, None, "{granted}");
    }
}

#[test]
fn a_client_hello_over_two_records_passes_in_any_pieces() {
    let hello = fixture("client_hello_padded_two_records.hex");
    // Two handshake records: the first full (2^14), the second the rest.
    assert_eq!(&hello[..5], &[0x16, 3, 1, 0x40, 0x00]);
    assert_eq!(hello[5 + 0x4000], 0x16);
    assert!(hello.len() > 17_000);
    passes(443, &hello);
    let outcome = run(443, Via::Transparent, &hello, 1000);
    assert_eq!(outcome.forwarded, hello);
}

#[test]
fn a_client_hello_fragmented_into_tiny_records_passes() {
    let handshake = fixture("client_hello_sni_allowed.hex")[5..].to_vec();
    for size in [1, 2, 3, 4, 5, 63, 300] {
        passes(443, &records(&handshake, size));
    }
    let evil = fixture("client_hello_sni_evil.hex")[5..].to_vec();
    assert!(refusal(443, &records(&evil, 1)).contains("`evil.example`"));
}

/// Frames a handshake message in TLS records of at most `size` bytes.
fn records(handshake: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for fragment in handshake.chunks(size) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        out.extend_from_slice(fragment);
    }
    out
}

/// A minimal ClientHello with these extensions, in one record.
fn hello_with(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(data);
    }
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    records(&handshake, 1 << 14)
}

/// A server_name extension body listing these (type, name) entries.
fn server_names(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (kind, name) in names {
        list.push(*kind);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut data = (list.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&list);
    data
}

#[test]
fn crafted_client_hellos_are_parsed_strictly() {
    let sni = |name: &[u8]| (0u16, server_names(&[(0, name)]));
    passes(
        443,
        &hello_with(&[(10, vec![0, 2, 0, 29]), sni(b"allowed.example")]),
    );

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (hello_with(&[]), "no SNI"),
        (
            hello_with(&[sni(b"allowed.example"), sni(b"evil.example")]),
            "extension 0 appears twice",
        ),
        (
            hello_with(&[(
                0,
                server_names(&[(0, b"allowed.example"), (0, b"evil.example")]),
            )]),
            "more than one host_name",
        ),
        (
            hello_with(&[(0, server_names(&[(1, b"allowed.example")]))]),
            "server name of unknown type 1",
        ),
        (
            hello_with(&[(0, server_names(&[]))]),
            "empty server_name_list",
        ),
        (hello_with(&[(0, vec![])]), "server_name_list is truncated"),
        (
            hello_with(&[(0, server_names(&[(0, b"")]))]),
            "empty host_name",
        ),
        (
            hello_with(&[sni(b"allowed.example\0.evil.example")]),
            "names `allowed.example\\x00.evil.example`",
        ),
        (
            hello_with(&[sni(b"allowed.example.evil")]),
            "but the grant is",
        ),
        (
            hello_with(&[sni(b"sub.allowed.example")]),
            "but the grant is",
        ),
    ];
    for (hello, want) in cases {
        let got = refusal(443, &hello);
        assert!(got.contains(want), "want {want:?}, got {got:?}");
    }
}

#[test]
fn lengths_that_do_not_add_up_are_refused() {
    let good = hello_with(&[(0, server_names(&[(0, b"allowed.example")]))]);
    // The extensions block claims one byte more than there is (record and handshake
    // lengths grown to match, so only the inner length lies).
    let mut longer = good.clone();
    longer.push(0);
    longer[3..5].copy_from_slice(&((good.len() - 5 + 1) as u16).to_be_bytes());
    longer[6..9].copy_from_slice(&((good.len() - 9 + 1) as u32).to_be_bytes()[1..]);
    assert!(refusal(443, &longer).contains("bytes after the extensions"));

    let mut handshake = good[5..].to_vec();
    handshake[0] = 2; // ServerHello
    assert!(refusal(443, &records(&handshake, 1 << 14)).contains("not ClientHello"));

    // A record that is not a handshake before the ClientHello is complete.
    let mut split = records(&good[5..], 20);
    split[25] = 0x17;
    assert!(refusal(443, &split).contains("content type 23"));

    assert!(refusal(443, b"\x16\x03\x01\x00\x00").contains("empty handshake record"));
    assert!(refusal(443, b"\x16\x03\x01\x40\x01").contains("exceeds 2^14"));
    assert!(refusal(443, b"\x16\x02\x00\x00\x10").contains("record version 2.0"));
    // Data after the ClientHello inside its record.
    let mut trailing = good[5..].to_vec();
    trailing.push(0);
    assert!(refusal(443, &records(&trailing, 1 << 14)).contains("data after the ClientHello"));
}

#[test]
fn a_client_hello_declared_larger_than_64_kib_is_refused_at_once() {
    let declared = b"\x16\x03\x01\x00\x04\x01\x01\x00\x00";
    let mut gate = ClientStreamGate::new(GRANTED, 443, Via::Transparent);
    assert_eq!(
        gate.feed(declared),
        GateStep::Refuse(Refusal::TooLarge("TLS ClientHello"))
    );
    assert_eq!(
        Refusal::TooLarge("TLS ClientHello").to_string(),
        "TLS ClientHello exceeds 64 KiB"
    );
    // Many small records that never complete the message hit the cap too.
    let mut handshake = vec![1, 0, 0xff, 0xff];
    handshake.extend(std::iter::repeat_n(0u8, 0xffff));
    let wire = records(&handshake, 100);
    let outcome = run(443, Via::Transparent, &wire, 4096);
    assert_eq!(outcome.refusal, Some(Refusal::TooLarge("TLS ClientHello")));
    assert!(outcome.forwarded.is_empty());
}

#[test]
fn tls_on_a_plain_http_proxy_request_is_refused() {
    let hello = fixture("client_hello_sni_allowed.hex");
    let outcome = run(80, Via::ProxyHttp, &hello, 0);
    assert_eq!(outcome.refusal, Some(Refusal::NotHttpViaProxy));
}

// --- HTTP/1 ----------------------------------------------------------------------

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: allowed.example\r\nUser-Agent: t\r\n\r\n";

#[test]
fn a_request_for_the_granted_host_passes_and_is_held_until_its_head_ends() {
    passes(80, GET);
    let mut gate = ClientStreamGate::new(GRANTED, 80, Via::Transparent);
    assert_eq!(gate.feed(&GET[..GET.len() - 1]), GateStep::NeedMore);
    assert!(!gate.is_done());
    assert_eq!(
        gate.feed(&GET[GET.len() - 1..]),
        GateStep::Forward(GET.to_vec())
    );
    assert_eq!(gate.kind(), Some(StreamKind::Http1));
    assert!(
        gate.is_done() && !gate.is_passthrough(),
        "later requests are checked"
    );
    for host in [
        "ALLOWED.example",
        "allowed.example.",
        "allowed.example:80",
        "allowed.example:",
    ] {
        passes(
            80,
            format!("GET /x?y HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
    }
    passes(
        8080,
        b"GET / HTTP/1.1\r\nHost: allowed.example:8080\r\n\r\n",
    );
    passes(80, b"GET / HTTP/1.0\r\nHost: allowed.example\r\n\r\n");
    passes(80, b"OPTIONS * HTTP/1.1\r\nHost: allowed.example\r\n\r\n");
}

#[test]
fn another_host_or_port_is_refused_naming_both() {
    assert_eq!(
        refusal(80, b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
        "HTTP request Host `evil.example` does not match the grant `allowed.example:80`"
    );
    for host in [
        "allowed.example:8080",
        "allowed.example.evil",
        "sub.allowed.example",
        "allowed.example:80:80",
        "user@allowed.example",
        "[::1]",
        "allowed.example/x",
        "",
    ] {
        let text = refusal(
            80,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert!(text.contains("does not match the grant"), "{host}: {text}");
    }
    // On another port the port must be named and equal.
    assert!(
        refusal(8080, b"GET / HTTP/1.1\r\nHost: allowed.example\r\n\r\n")
            .contains("does not match the grant `allowed.example:8080`")
    );
}

#[test]
fn exactly_one_host_header_is_required() {
    assert_eq!(
        refusal(80, b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
        "HTTP request has 0 Host headers; exactly one is required"
    );
    assert!(refusal(
        80,
        b"GET / HTTP/1.1\r\nHost: allowed.example\r\nHost: evil.example\r\n\r\n"
    )
    .contains("has 2 Host headers"));
    assert!(refusal(
        80,
        b"GET / HTTP/1.1\r\nHost: allowed.example\r\nhost: allowed.example\r\n\r\n"
    )
    .contains("has 2 Host headers"));
}

#[test]
fn keep_alive_requests_are_each_checked() {
    let mut gate = ClientStreamGate::new(GRANTED, 80, Via::Transparent);
    assert_eq!(gate.feed(GET), GateStep::Forward(GET.to_vec()));
    assert_eq!(gate.feed(GET), GateStep::Forward(GET.to_vec()));
    let evil = b"GET /admin HTTP/1.1\r\nHost: evil.example\r\n\r\n";
    assert_eq!(
        gate.feed(evil),
        GateStep::Refuse(Refusal::HostMismatch {
            what: "Host",
            host: "evil.example".into(),
            granted: "allowed.example:80".into(),
        })
    );
    // Pipelined in one read: the second request is refused all the same.
    let pipelined = [GET, &evil[..]].concat();
    let outcome = run(80, Via::Transparent, &pipelined, 0);
    assert!(matches!(
        outcome.refusal,
        Some(Refusal::HostMismatch { .. })
    ));
    let outcome = run(80, Via::Transparent, &pipelined, 7);
    assert!(matches!(
        outcome.refusal,
        Some(Refusal::HostMismatch { .. })
    ));
    assert!(GET.starts_with(&outcome.forwarded));
}

#[test]
fn leading_empty_lines_do_not_hide_a_request() {
    assert!(
        refusal(80, b"\r\n\r\nGET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
            .contains("Host `evil.example`")
    );
    passes(80, &[b"\r\n\r\n", GET].concat());
    // Between requests too (some clients send a CRLF after a body).
    let after = [
        GET,
        b"\r\n",
        b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    ]
    .concat();
    assert!(refusal(80, &after).contains("evil.example"));
    passes(80, &[GET, b"\r\n", GET].concat());
    // Bare CR or LF first is not an empty line.
    assert!(refusal(80, &[b"\n", GET].concat()).contains("malformed HTTP request"));
    assert!(refusal(80, &[b"\rX", GET].concat()).contains("malformed HTTP request"));
}

#[test]
fn absolute_form_targets_are_checked_by_their_authority() {
    for via in [Via::Transparent, Via::ProxyHttp] {
        let ok = b"GET http://allowed.example/x HTTP/1.1\r\nHost: allowed.example\r\n\r\n";
        let outcome = run(80, via, ok, 0);
        assert_eq!(
            (outcome.refusal, outcome.forwarded.as_slice()),
            (None, &ok[..])
        );
        let outcome = run(80, via, b"GET http://allowed.example HTTP/1.1\r\n\r\n", 1);
        assert_eq!(outcome.refusal, None, "Host may be absent in absolute-form");

        let cases: &[(&[u8], &str)] = &[
            (
                b"GET http://evil.example/ HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
                "HTTP request target authority `evil.example` does not match the grant `allowed.example:80`",
            ),
            (
                b"GET http://allowed.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
                "HTTP request Host `evil.example` does not match",
            ),
            (
                b"GET http://allowed.example@evil.example/ HTTP/1.1\r\n\r\n",
                "target authority `allowed.example@evil.example`",
            ),
            (
                b"GET https://allowed.example/ HTTP/1.1\r\n\r\n",
                "does not match the grant `allowed.example:80`",
            ),
            (
                b"GET ftp://allowed.example/ HTTP/1.1\r\n\r\n",
                "scheme `ftp` is not http or https",
            ),
            (b"GET allowed.example HTTP/1.1\r\n\r\n", "neither origin-form"),
        ];
        for (request, want) in cases {
            let got = run(80, via, request, 0).refusal.map(|r| r.to_string());
            assert!(
                got.as_deref().is_some_and(|g| g.contains(want)),
                "{via:?} {}: {got:?}",
                request.escape_ascii()
            );
        }
    }
    // https:// implies port 443.
    let outcome = run(
        443,
        Via::Transparent,
        b"GET https://allowed.example/ HTTP/1.1\r\n\r\n",
        0,
    );
    assert_eq!(outcome.refusal, None);
}

#[test]
fn a_chunked_body_is_forwarded_as_body_however_it_looks() {
    let hidden = "GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n";
    let smuggle = format!(
        "POST /upload HTTP/1.1\r\nHost: allowed.example\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{hidden}\r\n5;name=value\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n",
        hidden.len()
    );
    let smuggle = smuggle.as_bytes();
    passes(80, smuggle);
    // Followed by a good request, then an evil one: the framing found both.
    let stream = [smuggle, GET].concat();
    passes(80, &stream);
    let stream = [smuggle, b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n"].concat();
    assert!(refusal(80, &stream).contains("Host `evil.example`"));
    // Upper-case hex and a chunk split over reads.
    let upper = b"PUT / HTTP/1.1\r\nHost: allowed.example\r\nTransfer-Encoding: Chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n";
    passes(80, upper);
    for piece in [1, 3, 11] {
        assert_eq!(run(80, Via::Transparent, upper, piece).forwarded, upper);
    }
}

#[test]
fn a_content_length_body_is_forwarded_as_body_however_it_looks() {
    let body = b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n";
    let request = [
        format!(
            "POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        body,
    ]
    .concat();
    passes(80, &request);
    passes(80, &[&request[..], GET].concat());
    let mut gate = ClientStreamGate::new(GRANTED, 80, Via::Transparent);
    let head_len = request.len() - body.len();
    assert_eq!(
        gate.feed(&request[..head_len + 3]),
        GateStep::Forward(request[..head_len + 3].to_vec()),
        "body bytes pass as they come"
    );
    assert_eq!(
        gate.feed(&request[head_len + 3..]),
        GateStep::Forward(request[head_len + 3..].to_vec())
    );
    passes(
        80,
        b"POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: 000\r\n\r\n",
    );
}

#[test]
fn ambiguous_framing_is_refused() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP request framing refused: both Content-Length and Transfer-Encoding",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
            "2 Content-Length headers",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: 4, 4\r\n\r\n",
            "Content-Length `4, 4` is not a decimal length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: +4\r\n\r\n",
            "Content-Length `+4`",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: 0x4\r\n\r\n",
            "Content-Length `0x4`",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: \r\n\r\n",
            "Content-Length ``",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "is not a decimal length",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "Transfer-Encoding `gzip, chunked`: only a single `chunked` is accepted",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "only a single `chunked`",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: allowed.example\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "Transfer-Encoding `xchunked`",
        ),
        (
            b"POST / HTTP/1.0\r\nHost: allowed.example\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding in an HTTP/1.0 request",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: allowed.example\r\nX: a\nHost: evil.example\r\n\r\n",
            "bare LF in the request head",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: allowed.example\rX: y\r\n\r\n",
            "bare CR in the request head",
        ),
        (
            b"GET / HTTP/1.1\r\nHost : evil.example\r\n\r\n",
            "malformed HTTP request: request head: invalid header name",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: allowed.example\r\nX: a\r\n b\r\n\r\n",
            "malformed HTTP request",
        ),
        (
            b"GET  / HTTP/1.1\r\nHost: allowed.example\r\n\r\n",
            "malformed HTTP request",
        ),
    ];
    for (request, want) in cases {
        let got = refusal(80, request);
        assert!(got.contains(want), "{}: {got}", request.escape_ascii());
    }
}

#[test]
fn chunked_framing_is_strict() {
    let head = b"POST / HTTP/1.1\r\nHost: allowed.example\r\nTransfer-Encoding: chunked\r\n\r\n";
    let cases: &[(&[u8], &str)] = &[
        (b"5\nhello\r\n0\r\n\r\n", "bare LF in a chunk-size line"),
        (b"5 \r\nhello\r\n0\r\n\r\n", "chunk-size line `5 `"),
        (b"-5\r\nhello\r\n0\r\n\r\n", "chunk-size line `-5`"),
        (b"0x5\r\nhello\r\n0\r\n\r\n", "chunk-size line `0x5`"),
        (b"\r\n", "chunk-size line ``"),
        (
            b"5;a=\x01\r\nhello\r\n0\r\n\r\n",
            "is not a hexadecimal size",
        ),
        (
            b"11111111111111111\r\n",
            "chunk-size line `11111111111111111`",
        ),
        (
            b"5\r\nhelloX\r\n0\r\n\r\n",
            "chunk data is not followed by CRLF",
        ),
        (
            b"5\r\nhello\n0\r\n\r\n",
            "chunk data is not followed by CRLF",
        ),
        (
            b"0\r\nHost: evil.example\r\n\r\n",
            "`Host` in a chunked trailer",
        ),
        (
            b"0\r\nContent-Length: 5\r\n\r\n",
            "`Content-Length` in a chunked trailer",
        ),
        (b"0\r\nX: y\n\r\n", "bare LF in the trailer section"),
        (b"0\r\nno colon\r\n\r\n", "trailer section"),
    ];
    for (body, want) in cases {
        let got = refusal(80, &[&head[..], body].concat());
        assert!(got.contains(want), "{}: {got}", body.escape_ascii());
    }
    let long_line = [&head[..], &vec![b'1'; 5000]].concat();
    assert!(refusal(80, &long_line).contains("chunk-size line exceeds 4096 bytes"));
    passes(80, &[&head[..], b"5 ; ext\r\nhello\r\n0\r\n\r\n"].concat());
    passes(80, &[&head[..], b"0\r\n\r\n"].concat());
}

#[test]
fn connect_upgrades_and_http2_are_refused() {
    let connect = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n";
    for via in [Via::Transparent, Via::ProxyHttp, Via::ProxyConnect] {
        let got = run(80, via, connect, 0).refusal;
        assert_eq!(
            got.map(|r| r.to_string()).as_deref(),
            Some("HTTP CONNECT is refused inside a granted connection (the grant is `allowed.example`)")
        );
    }
    assert_eq!(
        refusal(
            80,
            b"GET / HTTP/1.1\r\nHost: allowed.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        ),
        "HTTP Upgrade to h2c is refused: HTTP/2 frames are not inspected"
    );
    assert!(refusal(
        80,
        b"GET /ws HTTP/1.1\r\nHost: allowed.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    .contains("HTTP Upgrade `websocket` on a cleartext connection is refused"));
    assert_eq!(
        refusal(80, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        "cleartext HTTP/2 (prior knowledge) is refused: HTTP/2 frames are not inspected"
    );
    // `Connection: upgrade` alone changes nothing.
    passes(
        80,
        b"GET / HTTP/1.1\r\nHost: allowed.example\r\nConnection: keep-alive, Upgrade\r\n\r\n",
    );
}

#[test]
fn an_oversized_request_head_is_refused() {
    let mut head = b"GET / HTTP/1.1\r\nHost: allowed.example\r\n".to_vec();
    while head.len() <= MAX_FIRST_BYTES {
        head.extend_from_slice(
            b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    let outcome = run(80, Via::Transparent, &head, 4096);
    assert_eq!(
        outcome.refusal,
        Some(Refusal::TooLarge("HTTP request head"))
    );
    assert_eq!(
        outcome.refusal.unwrap().to_string(),
        "HTTP request head exceeds 64 KiB"
    );
    // Complete but over the cap: the same, whatever the pieces.
    head.extend_from_slice(b"\r\n");
    assert_eq!(refusal(80, &head), "HTTP request head exceeds 64 KiB");
    // More headers than the parser holds.
    let mut many = b"GET / HTTP/1.1\r\nHost: allowed.example\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(refusal(80, &many).contains("too many headers"));
}

// --- Neither ---------------------------------------------------------------------

#[test]
fn other_protocols_are_refused_on_web_ports_and_pass_elsewhere() {
    let ssh = b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n";
    assert_eq!(refusal(443, ssh), "not TLS or HTTP on web port 443");
    assert_eq!(
        refusal(80, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
        "not TLS or HTTP on web port 80"
    );
    assert_eq!(
        run(3128, Via::ProxyHttp, ssh, 0).refusal,
        Some(Refusal::NotHttpViaProxy)
    );
    for (port, first) in [
        (22, &ssh[..]),
        (5432, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
        (25, b"EHLO client.example\r\n"),
        (6379, b"PING\r\n"),
        (6379, b"*1\r\n$4\r\nPING\r\n"),
    ] {
        let mut gate = ClientStreamGate::new(GRANTED, port, Via::Transparent);
        assert_eq!(
            gate.feed(first),
            GateStep::Forward(first.to_vec()),
            "{port}"
        );
        assert_eq!(gate.kind(), Some(StreamKind::RawTcp));
        assert!(gate.is_done() && gate.is_passthrough());
        assert_eq!(
            gate.feed(b"GET / HTTP/1.1\r\nHost: evil\r\n\r\n"),
            GateStep::Forward(b"GET / HTTP/1.1\r\nHost: evil\r\n\r\n".to_vec()),
            "raw TCP cannot be checked after its start"
        );
        let mut gate = ClientStreamGate::new(GRANTED, port, Via::ProxyConnect);
        assert_eq!(gate.feed(first), GateStep::Forward(first.to_vec()));
    }
}

#[test]
fn http_and_tls_are_checked_on_any_port() {
    for port in [22, 8080, 3000] {
        assert!(
            refusal(port, b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n").contains("evil.example")
        );
        assert!(
            refusal(port, b"FROB /x HTTP/1.1\r\nHost: evil.example\r\n\r\n")
                .contains("evil.example")
        );
        assert!(refusal(port, &fixture("client_hello_sni_evil.hex")).contains("evil.example"));
    }
}

#[test]
fn an_undecided_start_holds_everything() {
    // A prefix of a method, and an unknown token line still open, could be HTTP.
    for start in [&b"GE"[..], b"G", b"\r\n", b"FROB /x", b"\x16\x03"] {
        let mut gate = ClientStreamGate::new(GRANTED, 22, Via::Transparent);
        assert_eq!(
            gate.feed(start),
            GateStep::NeedMore,
            "{}",
            start.escape_ascii()
        );
        let want = (start[0] == 0x16).then_some(StreamKind::Tls);
        assert_eq!(gate.kind(), want, "{}", start.escape_ascii());
        assert!(!gate.is_done());
    }
    assert_eq!(first_bytes_deadline(), Duration::from_secs(10));
}

#[test]
fn a_refusal_is_final() {
    let mut gate = ClientStreamGate::new(GRANTED, 80, Via::Transparent);
    let step = gate.feed(b"GET / HTTP/1.1\r\nHost: evil\r\n\r\n");
    assert!(matches!(step, GateStep::Refuse(_)));
    assert_eq!(gate.feed(GET), step);
    assert_eq!(gate.feed(b""), step);
    assert_eq!(gate.kind(), Some(StreamKind::Http1));
}

// --- Properties ------------------------------------------------------------------

fn any_via() -> impl Strategy<Value = Via> {
    prop_oneof![
        Just(Via::Transparent),
        Just(Via::ProxyConnect),
        Just(Via::ProxyHttp)
    ]
}

/// Streams built from pieces of real requests and hellos, so the parser's deeper
/// states are reached, with some noise.
fn stream_of_pieces() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"GET / HTTP/1.1\r\n".to_vec()),
        Just(b"POST http://allowed.example/ HTTP/1.1\r\n".to_vec()),
        Just(b"Host: allowed.example\r\n".to_vec()),
        Just(b"Host: evil.example\r\n".to_vec()),
        Just(b"Content-Length: 5\r\n".to_vec()),
        Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"5\r\nhello\r\n".to_vec()),
        Just(b"0\r\n\r\n".to_vec()),
        Just(b"hello".to_vec()),
        Just(b"\x16\x03\x01".to_vec()),
        Just(fixture("client_hello_sni_allowed.hex")),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

fn pieces_of(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    at.push(0);
    at.push(len);
    at.sort_unstable();
    at.dedup();
    at
}

/// Feeds `bytes` cut at `cuts`; returns what was forwarded and the refusal, checking
/// the prefix property after every step.
fn feed_cut(port: u16, via: Via, bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<Refusal>) {
    let mut gate = ClientStreamGate::new(GRANTED, port, via);
    let mut forwarded = Vec::new();
    let at = pieces_of(bytes.len(), cuts);
    for w in at.windows(2) {
        match gate.feed(&bytes[w[0]..w[1]]) {
            GateStep::NeedMore => {}
            GateStep::Forward(b) => forwarded.extend_from_slice(&b),
            GateStep::Refuse(r) => return (forwarded, Some(r)),
        }
        assert!(
            bytes[..w[1]].starts_with(&forwarded),
            "forwarded only what was fed, in order"
        );
    }
    (forwarded, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_and_forward_a_prefix(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        port in prop_oneof![Just(22u16), Just(80), Just(443), Just(8080)],
        via in any_via(),
    ) {
        let (forwarded, _) = feed_cut(port, via, &bytes, &cuts);
        prop_assert!(bytes.starts_with(&forwarded));
    }

    #[test]
    fn the_verdict_does_not_depend_on_how_the_stream_is_cut(
        bytes in stream_of_pieces(),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
        port in prop_oneof![Just(22u16), Just(80), Just(443)],
        via in any_via(),
    ) {
        let (whole_fwd, whole) = feed_cut(port, via, &bytes, &[]);
        let (cut_fwd, cut) = feed_cut(port, via, &bytes, &cuts);
        prop_assert_eq!(&whole, &cut);
        if whole.is_none() {
            prop_assert_eq!(whole_fwd, cut_fwd);
        }
    }
}
