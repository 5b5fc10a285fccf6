"""Forwarding: failover, health, timeouts, spoofed replies, coalescing, serve-stale, upstream loss."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rrset
import pytest

from heimdall_server import HeimdallProcess
from udp_responder import UdpResponder
from tools.nsd import LocalUpstream


@dataclass
class FakeUpstream(UdpResponder):
    """A UDP 'upstream' we control: swallows, spoofs, or answers late, and counts queries."""

    mode: str  # "swallow" | "spoof" | "delay"
    delay: float = 0.3
    answer: str = "192.0.2.99"
    queries: list[bytes] = field(default_factory=list)
    seen: set = field(default_factory=set)
    ports: list[int] = field(default_factory=list)

    def _reply(self, query: bytes, ip: str, qid: int | None = None, name: str | None = None) -> bytes:
        q = dns.message.from_wire(query)
        r = dns.message.make_response(q)
        owner = dns.name.from_text(name) if name else q.question[0].name
        if name:
            r.question[0].name = owner  # type: ignore[misc]
        r.answer.append(dns.rrset.from_text(owner, 300, "IN", "A", ip))
        if qid is not None:
            r.id = qid
        return r.to_wire()

    def handle(self, data: bytes, src: tuple) -> None:
        self.queries.append(data)
        self.ports.append(src[1])
        if self.mode == "swallow":
            return
        if self.mode == "spoof":
            qid = int.from_bytes(data[:2], "big")
            self.sock.sendto(self._reply(data, "6.6.6.1", qid=qid ^ 0x5A5A), src)  # wrong ID
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:  # right ID, wrong port
                other.sendto(self._reply(data, "6.6.6.2"), src)
            self.sock.sendto(self._reply(data, "6.6.6.3", name="evil.example.test"), src)  # wrong question
            time.sleep(0.1)
            self.sock.sendto(self._reply(data, self.answer), src)
        elif self.mode == "delay":
            threading.Timer(self.delay, self._late, (data, src)).start()
        elif self.mode == "servfail-once":
            name = dns.message.from_wire(data).question[0].name
            if name not in self.seen:
                self.seen.add(name)
                r = dns.message.make_response(dns.message.from_wire(data))
                r.set_rcode(dns.rcode.SERVFAIL)
                self.sock.sendto(r.to_wire(), src)
            else:
                self.sock.sendto(self._reply(data, self.answer), src)

    def _late(self, data: bytes, src: tuple) -> None:
        if not self.stop.is_set():
            self.sock.sendto(self._reply(data, self.answer), src)


def unique(zone: str = "bench.test") -> str:
    return f"u{uuid.uuid4().hex[:12]}.{zone}"


def test_failover_past_an_upstream_that_swallows_queries(upstream):
    with FakeUpstream("swallow") as hole, \
            HeimdallProcess([hole.addr, upstream.addr], args=["--upstream-timeout", "2"]) as h:
        t0 = time.monotonic()
        r = h.query(unique(), timeout=5)
        assert r.answer[0][0].address == "192.0.2.1"
        assert time.monotonic() - t0 < 2 * 2.0 - 0.5  # one upstream timeout, not two
        assert len(hole.queries) == 1
        # The swallower is now marked down: the next names go straight to NSD, the swallower asked no more
        # (a count: a timer would also measure how long this process waited for a core)
        for _ in range(3):
            assert h.query(unique(), timeout=5).answer[0][0].address == "192.0.2.1"
            assert len(hole.queries) == 1


def test_nobody_answers_means_servfail_in_time():
    with FakeUpstream("swallow") as a, FakeUpstream("swallow") as b, \
            HeimdallProcess([a.addr, b.addr], args=["--upstream-timeout", "1"]) as h:
        for _ in range(2):
            t0 = time.monotonic()
            r = h.query(unique(), timeout=5)
            elapsed = time.monotonic() - t0
            assert r.rcode() == dns.rcode.SERVFAIL
            assert 0.5 < elapsed < 1.6
        tcp = h.query(unique(), tcp=True, timeout=5)
        assert tcp.rcode() == dns.rcode.SERVFAIL


def test_spoofed_replies_are_ignored():
    with FakeUpstream("spoof") as fake, HeimdallProcess([fake.addr]) as h:
        for _ in range(3):
            r = h.query(unique(), timeout=5)
            assert [rr.address for rr in r.answer[0]] == ["192.0.2.99"]


def test_upstream_queries_use_random_ids_and_ports():
    with FakeUpstream("delay", delay=0.0) as fake, HeimdallProcess([fake.addr]) as h:
        for _ in range(12):
            h.query(unique(), timeout=5)
    ids = {q[:2] for q in fake.queries}
    assert len(fake.queries) == 12 and len(ids) >= 10
    assert len(set(fake.ports)) >= 10  # a new connected socket, kernel-random port, per query so far


def test_identical_queries_in_flight_are_coalesced():
    with FakeUpstream("delay", delay=0.5) as fake, HeimdallProcess([fake.addr]) as h:
        name = unique()
        results: list[str] = []

        def ask() -> None:
            results.append(h.query(name, timeout=5).answer[0][0].address)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == ["192.0.2.99"] * 8
        assert len(fake.queries) == 1


def test_upstream_stopped_cached_names_still_answered_new_ones_servfail():
    private = LocalUpstream().start()
    try:
        with HeimdallProcess([private.addr], args=["--upstream-timeout", "1"]) as h:
            cached = unique()
            assert h.query(cached).answer[0][0].address == "192.0.2.1"
            assert h.query("www.example.test", tcp=True).answer[0][0].address == "192.0.2.10"
            private.stop()
            assert h.query(cached).answer[0][0].address == "192.0.2.1"
            assert h.query("www.example.test", tcp=True).answer[0][0].address == "192.0.2.10"
            t0 = time.monotonic()
            assert h.query(unique(), timeout=5).rcode() == dns.rcode.SERVFAIL
            assert time.monotonic() - t0 < 1.6
    finally:
        private.stop()


def test_serve_stale_when_upstream_is_gone():
    private = LocalUpstream().start()
    try:
        args = ["--upstream-timeout", "0.5", "--max-ttl", "1", "--serve-stale", "30"]
        with HeimdallProcess([private.addr], args=args) as h:
            name = unique()
            assert h.query(name).answer[0].ttl == 1
            private.stop()
            time.sleep(2.1)  # expired now
            r = h.query(name, timeout=5)
            assert r.rcode() == dns.rcode.NOERROR
            assert r.answer[0][0].address == "192.0.2.1"
            assert r.answer[0].ttl == 30  # RFC 8767 stale TTL
    finally:
        private.stop()


def test_expired_answer_without_serve_stale_is_servfail():
    private = LocalUpstream().start()
    try:
        with HeimdallProcess([private.addr], args=["--upstream-timeout", "0.5", "--max-ttl", "1"]) as h:
            name = unique()
            h.query(name)
            private.stop()
            time.sleep(2.1)
            assert h.query(name, timeout=5).rcode() == dns.rcode.SERVFAIL
    finally:
        private.stop()


@pytest.mark.parametrize("bad", ["127.0.0.1:9"])  # discard port, nothing listening: ICMP refused
def test_refused_upstream_fails_over_fast(upstream, bad):
    with HeimdallProcess([bad, upstream.addr], args=["--upstream-timeout", "2"]) as h:
        t0 = time.monotonic()
        assert h.query(unique(), timeout=5).answer[0][0].address == "192.0.2.1"
        assert time.monotonic() - t0 < 1.0


def test_servfail_from_upstream_is_passed_on_but_not_cached():
    with FakeUpstream("servfail-once") as fake, HeimdallProcess([fake.addr]) as h:
        name = unique()
        assert h.query(name, timeout=5).rcode() == dns.rcode.SERVFAIL
        r = h.query(name, timeout=5)
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0][0].address == "192.0.2.99"
        assert len(fake.queries) == 2


def test_ipv6_bind_and_batched_udp(upstream):
    h = HeimdallProcess([upstream.addr], address="::1", args=["--udp-batch", "on"])
    h.start()
    try:
        assert h.query("www.example.test").answer[0][0].address == "192.0.2.10"
        assert h.query("www.example.test", tcp=True).answer[0][0].address == "192.0.2.10"
        assert h.query(unique()).answer[0][0].address == "192.0.2.1"
    finally:
        h.stop()
