#!/usr/bin/env python3
"""Regenerates the ClientHello fixtures used by tests/egress_first_bytes.rs.

Each fixture is the exact bytes OpenSSL (through Python's ssl module) writes first
as a TLS client, saved as one line of hex. Run from this directory:
    python3 gen_client_hellos.py
"""
import ssl
import struct


def client_hello(server_hostname):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def handshake_of(record_bytes):
    """The handshake message carried by a single-record ClientHello."""
    assert record_bytes[0] == 0x16
    (length,) = struct.unpack(">H", record_bytes[3:5])
    assert len(record_bytes) == 5 + length, "expected exactly one record"
    return record_bytes[5:]


def with_padding(handshake, pad_len):
    """Replaces the padding extension (type 21, RFC 7685) OpenSSL may have added with
    one of `pad_len` zero bytes, last, fixing every enclosing length."""
    assert handshake[0] == 1
    body = bytes(handshake[4:])
    # Walk to the extensions block: version, random, session id, suites, compression.
    pos = 2 + 32
    pos += 1 + body[pos]
    pos += 2 + struct.unpack(">H", body[pos:pos + 2])[0]
    pos += 1 + body[pos]
    (ext_len,) = struct.unpack(">H", body[pos:pos + 2])
    assert pos + 2 + ext_len == len(body)
    kept = bytearray()
    at = pos + 2
    while at < len(body):
        kind, length = struct.unpack(">HH", body[at:at + 4])
        if kind != 21:
            kept += body[at:at + 4 + length]
        at += 4 + length
    kept += struct.pack(">HH", 21, pad_len) + bytes(pad_len)
    new_body = body[:pos] + struct.pack(">H", len(kept)) + bytes(kept)
    return bytes([1]) + struct.pack(">I", len(new_body))[1:] + new_body


def records(handshake, max_fragment):
    out = bytearray()
    for start in range(0, len(handshake), max_fragment):
        fragment = handshake[start:start + max_fragment]
        out += bytes([0x16, 3, 1]) + struct.pack(">H", len(fragment)) + fragment
    return bytes(out)


def write(name, data):
    with open(name, "w") as f:
        f.write(data.hex() + "\n")


def main():
    write("client_hello_sni_allowed.hex", client_hello("allowed.example"))
    write("client_hello_sni_evil.hex", client_hello("evil.example"))
    write("client_hello_no_sni.hex", client_hello(None))
    # Python lower-cases names (IDNA), so the upper-case SNI is made by hand: same
    # length, only the letters' case changes.
    hello = client_hello("allowed.example.")
    assert hello.count(b"allowed.example.") == 1
    write("client_hello_sni_upper_trailing_dot.hex",
          hello.replace(b"allowed.example.", b"ALLOWED.Example."))
    # 17000 bytes of padding make the handshake message larger than one record
    # (2^14 bytes) can carry, so it is split over two records as a client must.
    padded = with_padding(handshake_of(client_hello("allowed.example")), 17000)
    two = records(padded, 16384)
    assert two.count(b"\x16\x03\x01") >= 2
    write("client_hello_padded_two_records.hex", two)


if __name__ == "__main__":
    main()
