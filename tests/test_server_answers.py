"""Heimdall answers real clients correctly: records, negative answers, cache, TTLs, EDNS, TCP."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from heimdall_server import HeimdallProcess


@pytest.fixture(scope="module")
def srv(upstream):
    with HeimdallProcess([upstream.addr]) as h:
        yield h


def unique(zone: str = "bench.test") -> str:
    return f"u{uuid.uuid4().hex[:12]}.{zone}"


def test_a_and_aaaa(srv):
    r = srv.query("www.example.test", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.QR and r.flags & dns.flags.RA
    assert [rr.address for rr in r.answer[0]] == ["192.0.2.10"]
    r6 = srv.query("www.example.test", "AAAA")
    assert [rr.address for rr in r6.answer[0]] == ["2001:db8::10"]


def test_cname_chain(srv):
    r = srv.query("alias.example.test", "A")
    cname = r.find_rrset(r.answer, dns.name.from_text("alias.example.test"), dns.rdataclass.IN, dns.rdatatype.CNAME)
    assert cname[0].target.to_text() == "www.example.test."
    a = r.find_rrset(r.answer, dns.name.from_text("www.example.test"), dns.rdataclass.IN, dns.rdatatype.A)
    assert a[0].address == "192.0.2.10"


def test_mx(srv):
    r = srv.query("mail.example.test", "MX")
    assert r.answer[0][0].preference == 10
    assert r.answer[0][0].exchange.to_text() == "www.example.test."


def test_multiple_records(srv):
    r = srv.query("multi.example.test", "A")
    assert sorted(rr.address for rr in r.answer[0]) == ["192.0.2.31", "192.0.2.32", "192.0.2.33"]


@pytest.mark.parametrize("name,rdtype,rcode", [("missing.example.test", "A", dns.rcode.NXDOMAIN),
                                               ("www.example.test", "MX", dns.rcode.NOERROR)])
def test_negative_answers_carry_soa(srv, name, rdtype, rcode):
    r = srv.query(name, rdtype)
    assert r.rcode() == rcode
    assert r.answer == []
    assert r.authority[0].rdtype == dns.rdatatype.SOA
    assert 0 < r.authority[0].ttl <= 60  # RFC 2308: SOA minimum bounds the negative TTL


def test_negative_answer_is_cached_and_aged(srv):
    name = unique("example.test")
    first = srv.query(name, "A")
    assert first.rcode() == dns.rcode.NXDOMAIN and first.authority[0].ttl == 60
    time.sleep(2.1)
    again = srv.query(name, "A")
    assert again.rcode() == dns.rcode.NXDOMAIN
    assert again.authority[0].ttl <= 58  # NSD would say 60: this came from the cache


def test_cache_hit_keeps_client_case_and_id_and_ages_ttl(srv):
    name = unique()
    first = srv.query(name, "A")
    assert first.answer[0].ttl == 3600
    time.sleep(2.1)
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(name))
    q = dns.message.make_query(mixed, "A", use_edns=False)
    q.id = 0xBEEF
    wire = q.to_wire()
    reply = srv.raw(wire)
    assert reply is not None
    assert reply[:2] == b"\xbe\xef"
    assert reply[12:len(wire)] == wire[12:]  # the question exactly as sent, 0x20 case included
    r = dns.message.from_wire(reply)
    assert r.question[0].name.to_text().rstrip(".") == mixed
    assert r.answer[0][0].address == "192.0.2.1"
    assert 3590 <= r.answer[0].ttl <= 3598  # aged by the 2+ seconds it sat in the cache


def test_repeated_hits_stay_correct(srv):
    name = unique()
    for i in range(50):
        q = dns.message.make_query(name.upper() if i % 2 else name, "A", use_edns=False)
        q.id = i
        reply = srv.raw(q.to_wire())
        r = dns.message.from_wire(reply)
        assert r.id == i and r.answer[0][0].address == "192.0.2.1"


def test_edns_is_echoed_and_plain_stays_plain(srv):
    with_edns = srv.query("www.example.test", "A", use_edns=0, want_dnssec=True)
    assert with_edns.edns == 0
    assert with_edns.ednsflags & dns.flags.DO
    plain = srv.query("www.example.test", "A", use_edns=False)
    assert plain.edns == -1


def test_udp_size_limits_and_tc(srv):
    no_edns = srv.query("medium.example.test", "TXT", use_edns=False)
    assert no_edns.flags & dns.flags.TC and no_edns.answer == []
    with_edns = srv.query("medium.example.test", "TXT", use_edns=0, payload=1232)
    assert not with_edns.flags & dns.flags.TC
    assert len(with_edns.answer[0]) == 5
    big_udp = srv.query("big.example.test", "TXT", use_edns=0, payload=4096)
    assert big_udp.flags & dns.flags.TC


def test_tcp_gets_the_whole_big_answer(srv):
    # Heimdall itself must retry NSD over TCP (NSD truncates 8.7 KB over UDP).
    r = srv.query("big.example.test", "TXT", tcp=True)
    assert not r.flags & dns.flags.TC
    assert len(r.answer[0]) == 40
    r2 = srv.query("medium.example.test", "TXT", tcp=True, use_edns=False)
    assert len(r2.answer[0]) == 5


def pipelined(sock: socket.socket, names: list[str], first_id: int) -> dict[int, dns.message.Message]:
    """Every name's A query in one write, IDs from first_id; the replies by ID, in whatever order they came."""
    msgs = []
    for i, n in enumerate(names):
        q = dns.message.make_query(n, "A")
        q.id = first_id + i
        w = q.to_wire()
        msgs.append(struct.pack("!H", len(w)) + w)
    sock.sendall(b"".join(msgs))
    f = sock.makefile("rb")
    replies = {}
    for _ in names:
        size = struct.unpack("!H", f.read(2))[0]
        r = dns.message.from_wire(f.read(size))
        replies[r.id] = r
    return replies


def test_tcp_pipelining_several_queries_one_connection(srv):
    names = [unique() for _ in range(5)]
    with socket.create_connection((srv.address, srv.port), timeout=5) as s:
        seen = {qid: r.question[0].name.to_text().rstrip(".") for qid, r in pipelined(s, names, 1000).items()}
    assert seen == {1000 + i: n for i, n in enumerate(names)}


def test_tcp_pipelined_hits_and_misses_in_one_write_are_all_answered(srv):
    """The hits of one read go out together at its end, each miss when it completes: none is lost."""
    cached = [unique() for _ in range(3)]
    for n in cached:
        srv.query(n, "A", tcp=True)
    names = [cached[0], unique(), cached[1], unique(), cached[2], unique()]
    with socket.create_connection((srv.address, srv.port), timeout=5) as s:
        for _ in range(2):  # the second time every name is a hit: six replies from one read
            seen = {qid: (r.question[0].name.to_text().rstrip("."), r.rcode())
                    for qid, r in pipelined(s, names, 2000).items()}
            assert seen == {2000 + i: (n, dns.rcode.NOERROR) for i, n in enumerate(names)}


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed")
def test_dig_as_a_client(srv):
    for extra in ([], ["+tcp"], ["+noedns"]):
        out = subprocess.run(["dig", "+short", "+time=3", "+tries=1", "-p", str(srv.port), "@127.0.0.1",
                              "www.example.test", "A", *extra], capture_output=True, text=True, timeout=10)
        assert out.stdout.strip() == "192.0.2.10", (extra, out.stdout, out.stderr)


def test_ttl_clamps_and_negative_cap(upstream):
    with HeimdallProcess([upstream.addr], args=["--min-ttl", "30", "--max-ttl", "100", "--negative-ttl", "10"]) as h:
        assert h.query("short.example.test").answer[0].ttl == 30
        assert h.query("long.example.test").answer[0].ttl == 100
        assert h.query("www.example.test").answer[0].ttl == 100
        nx = h.query("nothing.example.test")
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].ttl == 10


def test_short_ttl_expires_and_is_refetched(upstream):
    with HeimdallProcess([upstream.addr]) as h:
        assert h.query("short.example.test").answer[0].ttl == 1
        time.sleep(2.1)
        r = h.query("short.example.test")  # expired: fetched again, not served with TTL 0
        assert r.answer[0].ttl == 1


def test_idle_tcp_connection_is_closed(upstream):
    with HeimdallProcess([upstream.addr], args=["--tcp-idle-timeout", "0.5"]) as h:
        with socket.create_connection((h.address, h.port), timeout=5) as s:
            t0 = time.monotonic()
            assert s.recv(10) == b""
            assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("mode", ["on", "off", "auto"])
def test_bursts_from_many_clients_get_their_own_answers(upstream, mode):
    """Hundreds of queries in flight at once: every reply carries its query's ID, case and answer.

    `on` forces the recvmmsg/sendmmsg path, `off` the recvfrom/sendto path."""
    with HeimdallProcess([upstream.addr], args=["--udp-batch", mode]) as h:
        names = [f"burst{i}.bench.test" for i in range(20)] + ["www.example.test"]
        for n in names:
            h.query(n)
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        try:
            sent = {}
            h.signal(signal.SIGSTOP)  # let the whole burst queue up in the socket, then serve it
            for rnd in range(10):
                for si, s in enumerate(socks):
                    for ni, n in enumerate(names):
                        qid = (rnd * 4 + si) * 64 + ni
                        qname = n.upper() if (qid % 3 == 0) else n
                        q = dns.message.make_query(qname, "A", use_edns=False if qid % 2 else 0)
                        q.id = qid
                        s.sendto(q.to_wire(), (h.address, h.port))
                        sent[(si, qid)] = qname
            h.signal(signal.SIGCONT)
            got = {}
            for si, s in enumerate(socks):
                s.settimeout(2)
                try:
                    while len([k for k in got if k[0] == si]) < len(names) * 10:
                        r = dns.message.from_wire(s.recv(4096))
                        got[(si, r.id)] = r
                except socket.timeout:
                    pass
        finally:
            for s in socks:
                s.close()
        assert len(got) >= 0.99 * len(sent)  # loopback UDP under load may drop a few
        for key, r in got.items():
            qname = sent[key]
            assert r.question[0].name.to_text().rstrip(".") == qname
            want = "192.0.2.10" if qname.lower() == "www.example.test" else "192.0.2.1"
            assert r.answer[0][0].address == want
            assert (r.edns == -1) == bool(key[1] % 2)
        assert h.stop() == 0
        m = re.search(r"(\d+) datagrams in (\d+) wakeups", h.log)
        assert m, h.log
        if mode == "on":  # the burst really was served in batches
            assert int(m.group(1)) > 2 * int(m.group(2))
