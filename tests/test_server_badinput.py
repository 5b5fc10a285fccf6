"""Bad input: FORMERR with the client's ID, NOTIMP, drops, and a barrage of junk survived."""

from __future__ import annotations

import random
import socket
import struct
import time

import dns.message
import dns.rcode
import pytest

from heimdall_server import HeimdallProcess


@pytest.fixture(scope="module")
def srv(upstream):
    with HeimdallProcess([upstream.addr], args=["--tcp-max-connections", "4"]) as h:
        yield h


def query_wire(name: str = "www.example.test", rdtype: str = "A", qid: int = 0x1234, **kw) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = qid
    return q.to_wire()


def header(qid: int, b2: int, b3: int, qd: int, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HBBHHHH", qid, b2, b3, qd, an, ns, ar)


def rcode_of(reply: bytes) -> int:
    return reply[3] & 0x0F


def assert_alive(srv) -> None:
    assert srv.query("www.example.test").answer[0][0].address == "192.0.2.10"
    assert srv.proc.poll() is None


@pytest.mark.parametrize("packet", [b"", b"\x00", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00"])
def test_shorter_than_a_header_is_dropped(srv, packet):
    assert srv.raw(packet, timeout=0.3) is None
    assert_alive(srv)


def test_qr_set_is_dropped_no_reflection(srv):
    wire = bytearray(query_wire())
    wire[2] |= 0x80
    assert srv.raw(bytes(wire), timeout=0.3) is None


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 15])
def test_unknown_opcode_is_notimp(srv, opcode):
    wire = bytearray(query_wire(qid=0x4321))
    wire[2] = (wire[2] & 0x87) | (opcode << 3)
    reply = srv.raw(bytes(wire))
    assert reply is not None and reply[:2] == b"\x43\x21"
    assert reply[2] & 0x80 and (reply[2] >> 3) & 0xF == opcode
    assert rcode_of(reply) == dns.rcode.NOTIMP


@pytest.mark.parametrize("packet", [
    header(0xAA01, 1, 0, 1) + b"\x03www",                       # question cut short
    header(0xAA02, 1, 0, 0),                                      # no question
    header(0xAA03, 1, 0, 2) + query_wire()[12:] * 2,              # two questions
    header(0xAA04, 1, 0, 1) + b"\xc0\x0c\x00\x01\x00\x01",        # compression pointer in question
    header(0xAA05, 1, 0, 1) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label > 63
    query_wire(qid=0xAA06) + b"junk",                             # trailing bytes
    header(0xAA07, 1, 0, 1, ar=1) + query_wire()[12:],            # promised OPT missing
    header(0xAA08, 1, 0, 1) + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63
    + b"\x3f" + b"d" * 63 + b"\x00\x00\x01\x00\x01",              # name > 255 bytes
])
def test_broken_body_is_formerr_with_client_id(srv, packet):
    reply = srv.raw(packet)
    assert reply is not None
    assert reply[:2] == packet[:2]
    assert reply[2] & 0x80
    assert rcode_of(reply) == dns.rcode.FORMERR


def test_edns_version_1_is_badvers(srv):
    q = dns.message.make_query("www.example.test", "A", use_edns=1)
    r = dns.message.from_wire(srv.raw(q.to_wire()))
    assert r.rcode() == dns.rcode.BADVERS


def test_axfr_over_udp_is_refused(srv):
    r = dns.message.from_wire(srv.raw(query_wire("example.test", "AXFR")))
    assert r.rcode() == dns.rcode.REFUSED


def test_hundreds_of_random_and_mutated_packets_then_still_answering(srv):
    rng = random.Random(20240101)
    base = [query_wire(n, t) for n in ("www.example.test", "x.bench.test", "missing.example.test")
            for t in ("A", "AAAA", "TXT")]
    base.append(query_wire("medium.example.test", "TXT", use_edns=0, payload=4096, want_dnssec=True))
    packets = []
    for i in range(600):
        kind = i % 3
        if kind == 0:
            packets.append(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 600))))
        else:
            p = bytearray(rng.choice(base))
            for _ in range(rng.randrange(1, 6)):
                p[rng.randrange(len(p))] = rng.getrandbits(8)
            if kind == 2:
                p = p[:rng.randrange(len(p) + 1)]
            packets.append(bytes(p))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        replies = []
        for p in packets:
            s.sendto(p, (srv.address, srv.port))
            try:
                while True:
                    replies.append(s.recv(65535))
            except BlockingIOError:
                pass
        s.settimeout(2.5)  # mutated names may be misses that go upstream: collect the stragglers
        try:
            while True:
                replies.append(s.recv(65535))
        except socket.timeout:
            pass
    assert replies, "some of the mutated queries are valid and must be answered"
    assert all(len(r) >= 12 and r[2] & 0x80 for r in replies)  # never a query-shaped reflection
    assert_alive(srv)
    assert "Traceback" not in srv.log


def test_tcp_garbage_and_abrupt_close(srv):
    with socket.create_connection((srv.address, srv.port), timeout=3) as s:
        bad = header(0xBB01, 1, 0, 1) + b"\x05hello"
        s.sendall(struct.pack("!H", len(bad)) + bad)
        size = struct.unpack("!H", s.recv(2))[0]
        reply = s.recv(size)
        assert reply[:2] == b"\xbb\x01" and rcode_of(reply) == dns.rcode.FORMERR
    with socket.create_connection((srv.address, srv.port), timeout=3) as s:
        s.sendall(b"\x01\x00" + b"\x00" * 10)  # promises 256 bytes, sends 10, hangs up
    with socket.create_connection((srv.address, srv.port), timeout=3) as s:
        s.sendall(b"\x00")  # half a length prefix
    assert_alive(srv)
    assert srv.query("www.example.test", tcp=True).answer[0][0].address == "192.0.2.10"


def test_tcp_connections_are_bounded(srv):
    """At the limit of 4 a fifth connection is served and the oldest idle one is closed for it."""
    socks = []
    for _ in range(4):
        socks.append(socket.create_connection((srv.address, srv.port), timeout=3))
        time.sleep(0.01)
    try:
        with socket.create_connection((srv.address, srv.port), timeout=3) as extra:
            q = query_wire("www.example.test")
            extra.sendall(struct.pack("!H", len(q)) + q)
            assert len(extra.recv(4096)) > 12  # answered
            assert socks[0].recv(10) == b""  # the oldest idle one made way
            socks[1].settimeout(0.3)
            with pytest.raises(socket.timeout):
                socks[1].recv(10)  # the others stay open
    finally:
        for s in socks:
            s.close()
    assert_alive(srv)


def test_tcp_client_that_never_reads_cannot_grow_server_memory(srv):
    import psutil

    q = query_wire("www.example.test")
    frame = struct.pack("!H", len(q)) + q
    proc = psutil.Process(srv.pid)
    with socket.create_connection((srv.address, srv.port), timeout=3) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(0.5)
        rss0 = proc.memory_info().rss
        sent, stalled = 0, False
        while sent < 20000 * 50:  # ~50 MB of answers if all were buffered
            try:
                s.sendall(frame * 50)
                sent += 50
            except socket.timeout:
                stalled = True  # the server stopped reading us: back-pressure works
                break
        grown = proc.memory_info().rss - rss0
    assert stalled, f"the server read all {sent} queries from a client that reads no answer"
    assert grown < 20 * 1024 * 1024, f"server grew by {grown} bytes"
    assert_alive(srv)
