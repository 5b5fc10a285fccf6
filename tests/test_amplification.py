"""Amplification: ANY answered minimally (RFC 8482) or refused, UDP replies within the client's size, rate
limiting before any upstream work."""

from __future__ import annotations

import socket
from dataclasses import fields

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from heimdall.config import Config
from heimdall_server import HeimdallProcess
from udp_responder import UdpResponder


class CountingUpstream(UdpResponder):
    """Answers every query with one A record and remembers (name, qtype) of each."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def handle(self, data: bytes, src: tuple) -> None:
        q = dns.message.from_wire(data)
        self.asked.append((str(q.question[0].name).lower(), q.question[0].rdtype))
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "192.0.2.5"))
        self.sock.sendto(r.to_wire(), src)


@pytest.mark.parametrize("edns", [False, True])
@pytest.mark.parametrize("tcp", [False, True])
def test_any_minimal_is_one_hinfo_and_never_asks_upstream(edns, tcp):
    with CountingUpstream() as up, HeimdallProcess([up.addr]) as srv:  # minimal is the default
        for name in ("www.example.test", "Big.Example.TEST", "nothing.example.test"):
            q = dns.message.make_query(name, "ANY", use_edns=0 if edns else False, payload=4096)
            w = q.to_wire()
            fn = dns.query.tcp if tcp else dns.query.udp
            r = fn(q, srv.address, port=srv.port, timeout=3)
            assert r.rcode() == dns.rcode.NOERROR and r.id == q.id
            assert len(r.answer) == 1 and r.answer[0].rdtype == dns.rdatatype.HINFO
            assert r.answer[0][0].cpu == b"RFC8482" and r.answer[0][0].os == b""
            assert str(r.answer[0].name).lower() == name.lower() + "."
            assert not r.authority and not r.additional
            assert (r.edns >= 0) == edns
            raw = srv.raw(w) if not tcp else None
            if raw is not None:
                assert len(raw) <= len(w) + 30, (len(raw), len(w))  # ~1x: nothing to amplify
                qend = 12 + len(dns.name.from_text(name).to_wire()) + 4
                assert raw[12:qend] == w[12:qend]  # the question as sent, case and all
        assert up.asked == []


def test_any_refused_mode():
    with CountingUpstream() as up, HeimdallProcess([up.addr], env={"HEIMDALL_ANY_MODE": "refused"}) as srv:
        r = srv.query("www.example.test", "ANY")
        assert r.rcode() == dns.rcode.REFUSED and not r.answer and len(r.question) == 1
        assert srv.query("www.example.test", "ANY", tcp=True).rcode() == dns.rcode.REFUSED
        assert srv.query("www.example.test", "A").rcode() == dns.rcode.NOERROR  # other types unaffected
        assert up.asked == [("www.example.test.", dns.rdatatype.A)]


def test_any_forward_mode_asks_upstream():
    with CountingUpstream() as up, HeimdallProcess([up.addr], env={"HEIMDALL_ANY_MODE": "forward"}) as srv:
        r = srv.query("www.example.test", "ANY")
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0].rdtype == dns.rdatatype.A
        assert up.asked == [("www.example.test.", dns.rdatatype.ANY)]


def test_bad_any_mode_is_a_config_error():
    with pytest.raises(RuntimeError, match="HEIMDALL_ANY_MODE"):
        HeimdallProcess(["127.0.0.1:9"], env={"HEIMDALL_ANY_MODE": "sometimes"}).start(timeout=10)


SIZES = [None, 0, 1, 100, 511, 512, 513, 600, 1000, 1100, 1231, 1232, 1233, 1400, 4096, 65535]


@pytest.mark.parametrize("any_mode", ["minimal", "forward"])
def test_udp_replies_never_exceed_the_clients_size(upstream, any_mode):
    """Every name, size and DO bit, from upstream and then from the cache: len <= the client's limit."""
    names = [("big.example.test", "TXT"), ("medium.example.test", "TXT"), ("multi.example.test", "A"),
             ("www.example.test", "ANY"), ("big.example.test", "ANY"), ("nope.example.test", "A"),
             ("alias.example.test", "A")]
    checked = truncated = 0
    with HeimdallProcess([upstream.addr], env={"HEIMDALL_ANY_MODE": any_mode}) as srv:
        for size in SIZES:
            for do in (False, True):
                for name, rdtype in names:
                    for _ in range(2):  # the miss path, then the cache
                        q = dns.message.make_query(name, rdtype, use_edns=False if size is None else 0,
                                                   payload=size or 0, want_dnssec=do and size is not None)
                        raw = srv.raw(q.to_wire(), timeout=3)
                        assert raw is not None, (name, size)
                        limit = 512 if size is None else max(512, size)
                        assert len(raw) <= limit, (name, rdtype, size, len(raw))
                        r = dns.message.from_wire(raw)
                        assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), (name, size, r)
                        truncated += bool(r.flags & dns.flags.TC)
                        checked += 1
    assert checked == len(SIZES) * 2 * len(names) * 2
    assert truncated > 0  # big.example.test never fits: the limit was really exercised


RATE_LIMIT_WIRED = "enable_rate_limiting" in {f.name for f in fields(Config)}


@pytest.mark.skipif(not RATE_LIMIT_WIRED, reason="this tree's Config has no enable_rate_limiting")
def test_rate_limited_queries_cost_no_upstream_work():
    """A client over its budget sending unique names (all misses): only admitted queries reach upstream."""
    env = {"HEIMDALL_ENABLE_RATE_LIMITING": "1", "HEIMDALL_QUERIES_PER_SECOND_PER_IP": "1",
           "HEIMDALL_BURST_SIZE_PER_IP": "10", "HEIMDALL_RATE_LIMIT_ACTION": "refused"}
    with CountingUpstream() as up, HeimdallProcess([up.addr], env=env) as srv:
        rcodes = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # one client address and port
            s.settimeout(2)
            for i in range(200):
                s.sendto(dns.message.make_query(f"flood{i}.example.test", "A").to_wire(), (srv.address, srv.port))
                try:
                    rcodes.append(dns.message.from_wire(s.recv(4096)).rcode())
                except socket.timeout:
                    rcodes.append(None)
        admitted = rcodes.count(dns.rcode.NOERROR)
        assert rcodes.count(dns.rcode.REFUSED) >= 150
        assert len(up.asked) == admitted <= 20  # burst 10 + 1/s refill over the run
