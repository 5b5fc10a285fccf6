"""Cache poisoning by attack: forged replies while a real query is in flight; none may be cached or returned.

The upstream is a UDP socket we control. It answers every name at once
(192.0.2.77, victims 192.0.2.200) except *target* names, which it answers
only after an attacker, told the server's source port (and, in the harshest
cases, even the query ID), has finished spraying forged replies (6.6.6.x) at
that port. Afterwards the server must return the real data for the target,
serve the real data from its cache, and, asked for the victim names the
forgeries carried, ask the upstream and return the real data too.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from heimdall_server import HeimdallProcess
from udp_responder import UdpResponder

REAL, VICTIM_REAL = "192.0.2.77", "192.0.2.200"
VICTIM = "www.victim.test."
EVIL_PREFIX = "6.6.6."
IDS = 65536
FORGED = {"sent": 0}  # forged replies sent by all tests in this module (for docs/reliability-security.md)


@pytest.fixture(scope="module", autouse=True)
def report_forged():
    yield
    print(f"\ntest_poisoning: {FORGED['sent']} forged replies sent")  # figure for docs/reliability-security.md


@dataclass
class Seen:
    qid: int
    port: int
    wire: bytes
    name: str
    rdtype: int


def reply(query: bytes, answers=(), authority=(), additional=(), rcode=0, qid: int | None = None,
          question: str | None = None, rdtype: int | None = None, lower: bool = False) -> bytes:
    """A response to query: its question (or another one), the given sections."""
    q = dns.message.from_wire(query)
    if question or rdtype:
        q = dns.message.make_query(question or q.question[0].name, rdtype or q.question[0].rdtype)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.RA
    r.set_rcode(rcode)
    r.id = int.from_bytes(query[:2], "big") if qid is None else qid
    r.answer += [dns.rrset.from_text(*a) for a in answers]
    r.authority += [dns.rrset.from_text(*a) for a in authority]
    r.additional += [dns.rrset.from_text(*a) for a in additional]
    w = bytearray(r.to_wire())
    if lower:  # echo the question in lower case, as some upstreams (and most spoofers) do
        end = 12 + len(dns.name.from_text(str(q.question[0].name)).to_wire())
        w[12:end] = bytes(w[12:end]).lower()
    return bytes(w)


@dataclass
class Upstream(UdpResponder):
    """The upstream socket. `attack(seen, sock)` runs for target queries before the real answer."""

    attack: Callable[[Seen, socket.socket], None] | None = None
    real: Callable[[Seen], bytes] | None = None  # the real answer for a target (default: A REAL)
    delay: float = 0.2
    lower: bool = False  # echo questions lower-cased
    seen: list[Seen] = field(default_factory=list)

    def __enter__(self) -> "Upstream":
        super().__enter__()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.targets: list[threading.Thread] = []
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.targets:
            t.join(30)
        super().__exit__(*exc)

    def asked(self, name: str) -> int:
        return sum(s.name == name.lower() for s in self.seen)

    def handle(self, data: bytes, src: tuple) -> None:
        q = dns.message.from_wire(data)
        seen = Seen(q.id, src[1], data, str(q.question[0].name).lower(), q.question[0].rdtype)
        self.seen.append(seen)
        if "target" in seen.name:
            t = threading.Thread(target=self._target, args=(seen, src), daemon=True)
            self.targets.append(t)
            t.start()
        else:
            ip = VICTIM_REAL if "victim" in seen.name else REAL
            self.sock.sendto(reply(data, [(seen.name, 300, "IN", "A", ip)], lower=self.lower), src)

    def _target(self, seen: Seen, src) -> None:
        started = time.monotonic()
        if self.attack is not None:
            self.attack(seen, self.sock)
        time.sleep(max(0.0, self.delay - (time.monotonic() - started)))
        real = self.real(seen) if self.real else reply(seen.wire, [(seen.name, 300, "IN", "A", REAL)],
                                                        lower=self.lower)
        self.sock.sendto(real, src)


def spray(sock: socket.socket, port: int, make: Callable[[int], bytes], ids=range(IDS)) -> int:
    """Send make(qid) for every qid to 127.0.0.1:port from sock, paced so the kernel queue keeps up."""
    n = 0
    for qid in ids:
        try:
            sock.sendto(make(qid), ("127.0.0.1", port))
        except BlockingIOError:
            time.sleep(0.001)
        n += 1
        if n % 256 == 0:
            time.sleep(0.001)
    FORGED["sent"] += n
    return n


def forged(seen: Seen, ip: str, **kw) -> Callable[[int], bytes]:
    """A template forged reply (answer A ip for the target and the victim), ID patched per packet."""
    base = reply(seen.wire, [(seen.name, 86400, "IN", "A", ip)], additional=[(VICTIM, 86400, "IN", "A", ip)],
                 **kw)
    tail = base[2:]
    return lambda qid: struct.pack("!H", qid) + tail


def addresses(msg: dns.message.Message) -> set[str]:
    return {rr.to_text() for section in (msg.answer, msg.authority, msg.additional) for rrs in section
            for rr in rrs if rrs.rdtype == dns.rdatatype.A}


def serve(up: Upstream, env: dict | None = None, timeout: str = "8") -> HeimdallProcess:
    return HeimdallProcess([up.addr], args=["--upstream-timeout", timeout], env=env or {})


def assert_unpoisoned(srv: HeimdallProcess, up: Upstream, first: dns.message.Message, target: str) -> None:
    """The in-flight answer, the cached answer and the victim's answer are all real."""
    assert first.rcode() == dns.rcode.NOERROR and addresses(first) == {REAL}, first
    again = srv.query(target)
    assert addresses(again) == {REAL}, again
    assert up.asked(target) == 1, "the real answer must have been cached"
    victim = srv.query(VICTIM)
    assert addresses(victim) == {VICTIM_REAL}, victim
    assert up.asked(VICTIM) == 1, "the victim name must not have been cached from a forgery"


def attack_wrong_address(seen: Seen, _sock: socket.socket) -> None:
    """All 65536 IDs with the right question from 127.0.0.2, then the right ID from 127.0.0.3 and a wrong port."""
    make = forged(seen, EVIL_PREFIX + "1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        spray(s, seen.port, make)
    for src in ("127.0.0.3", "127.0.0.1"):  # right ID: wrong address; right address, wrong port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((src, 0))
            spray(s, seen.port, forged(seen, EVIL_PREFIX + "2"), ids=[seen.qid] * 50)


def attack_wrong_question(seen: Seen, sock: socket.socket) -> None:
    """From the upstream's own address and port (a spoofed source): every ID with the victim's question,
    and the right ID with the victim's question, another type, another class of name."""
    spray(sock, seen.port, forged(seen, EVIL_PREFIX + "3", question=VICTIM))
    for kw in ({"question": VICTIM}, {"rdtype": dns.rdatatype.AAAA}, {"question": "x" + seen.name}):
        spray(sock, seen.port, forged(seen, EVIL_PREFIX + "4", **kw), ids=[seen.qid] * 20)


@pytest.mark.parametrize("attack", [attack_wrong_address, attack_wrong_question])
def test_forged_replies_while_in_flight_are_neither_returned_nor_cached(attack):
    target = f"target-{attack.__name__.replace('_', '-')}.example.test."
    with Upstream(attack=attack) as up, serve(up) as srv:
        first = srv.query(target, timeout=30)
        assert_unpoisoned(srv, up, first, target)


def test_harness_control_right_id_and_question_from_the_upstream_address_is_accepted():
    """Control: a forgery with everything right (the attacker was handed the ID) does get in.

    This proves the sprays above reach the server's upstream socket and would
    poison it if the checks let them: their failure is the defences' doing.
    """
    def attack(seen: Seen, sock: socket.socket) -> None:
        spray(sock, seen.port, forged(seen, EVIL_PREFIX + "9"), ids=[seen.qid])

    target = "target-control.example.test."
    with Upstream(attack=attack) as up, serve(up) as srv:
        assert addresses(srv.query(target, timeout=30)) == {EVIL_PREFIX + "9"}


def test_0x20_rejects_a_forgery_with_the_right_port_and_id_but_not_our_case():
    """HEIMDALL_USE_0X20: even handed port and ID, an attacker must guess the case of ~27 letters."""
    def attack(seen: Seen, sock: socket.socket) -> None:
        assert seen.wire[12:seen.wire.index(b"\x00", 12)] != seen.wire[12:seen.wire.index(b"\x00", 12)].lower()
        spray(sock, seen.port, forged(seen, EVIL_PREFIX + "5", lower=True), ids=[seen.qid] * 20)
        spray(sock, seen.port, forged(seen, EVIL_PREFIX + "6", lower=True))  # every ID, lower case

    target = "target-zeroxtwenty-casecheck.example.test."
    with Upstream(attack=attack, real=lambda s: reply(s.wire, [(s.name, 300, "IN", "A", REAL)])) as up, \
            serve(up, {"HEIMDALL_USE_0X20": "1"}) as srv:
        first = srv.query(target, timeout=30)
        assert_unpoisoned(srv, up, first, target)


def test_0x20_upstream_that_lowercases_is_rejected_one_that_preserves_case_is_accepted(upstream):
    with Upstream(lower=True) as low, serve(low, {"HEIMDALL_USE_0X20": "1"}, timeout="1") as srv:
        r = srv.query("www.example.test", timeout=5)
        assert r.rcode() == dns.rcode.SERVFAIL and low.asked("www.example.test.") >= 1
    with Upstream() as keep, serve(keep, {"HEIMDALL_USE_0X20": "1"}) as srv:
        names = [f"casecheck{i}.example.test." for i in range(8)]
        for name in names:
            assert addresses(srv.query(name)) == {REAL}
        sent = [s.wire[12:12 + len(dns.name.from_text(s.name).to_wire())] for s in keep.seen]
        assert any(w != w.lower() for w in sent), "0x20 should randomise the case of upstream names"
    with HeimdallProcess([upstream.addr], env={"HEIMDALL_USE_0X20": "1"}) as srv:  # NSD preserves case
        for name in ("www.example.test", "multi.example.test", "alias.example.test", "nope.example.test"):
            r = srv.query(name)
            assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), r
        assert srv.query("www.example.test").answer[0][0].to_text() == "192.0.2.10"


# --- out-of-bailiwick records in an otherwise genuine reply ---

def real_with_extras(seen: Seen) -> bytes:
    n = seen.name
    return reply(seen.wire,
                 answers=[(n, 300, "IN", "A", REAL), (VICTIM, 86400, "IN", "A", EVIL_PREFIX + "7")],
                 authority=[("victim.test.", 86400, "IN", "NS", "ns.evil.test.")],
                 additional=[(VICTIM, 86400, "IN", "A", EVIL_PREFIX + "7"),
                             ("ns.evil.test.", 86400, "IN", "A", EVIL_PREFIX + "8")])


def cname_with_extras(seen: Seen) -> bytes:
    n = seen.name
    return reply(seen.wire,
                 answers=[(n, 300, "IN", "CNAME", "real.example.test."), ("real.example.test.", 300, "IN", "A", REAL),
                          (VICTIM, 86400, "IN", "A", EVIL_PREFIX + "7"),
                          ("unrelated.example.test.", 300, "IN", "A", EVIL_PREFIX + "7")],
                 additional=[(VICTIM, 86400, "IN", "A", EVIL_PREFIX + "7")])


def nxdomain_with_extras(seen: Seen) -> bytes:
    soa = "ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60"
    return reply(seen.wire, rcode=dns.rcode.NXDOMAIN,
                 answers=[(VICTIM, 86400, "IN", "A", EVIL_PREFIX + "7")],
                 authority=[("victim.test.", 86400, "IN", "SOA", soa.replace("example", "victim")),
                            ("example.test.", 300, "IN", "SOA", soa),
                            ("victim.test.", 86400, "IN", "NS", "ns.evil.test.")],
                 additional=[(VICTIM, 86400, "IN", "A", EVIL_PREFIX + "7")])


@pytest.mark.parametrize("real", [real_with_extras, cname_with_extras, nxdomain_with_extras])
def test_out_of_bailiwick_records_are_stripped_never_cached(real):
    target = f"target-{real.__name__.replace('_', '-')}.example.test."
    with Upstream(real=real, delay=0.0) as up, serve(up) as srv:
        replies = [srv.query(target, timeout=10) for _ in range(2)]  # from upstream, then from the cache
        assert up.asked(target) == 1
        for r in replies:
            assert not any(a.startswith(EVIL_PREFIX) for a in addresses(r)), r
            owners = {str(rrs.name) for sec in (r.answer, r.authority, r.additional) for rrs in sec}
            assert not any("victim" in o or "evil" in o or "unrelated" in o for o in owners), r
            if real is nxdomain_with_extras:
                assert r.rcode() == dns.rcode.NXDOMAIN
                assert [str(rrs.name) for rrs in r.authority] == ["example.test."]  # its own zone's SOA
            else:
                assert addresses(r) == {REAL}
                if real is cname_with_extras:
                    assert [str(rrs.name) for rrs in r.answer] == [target, "real.example.test."]
        victim = srv.query(VICTIM)
        assert addresses(victim) == {VICTIM_REAL} and up.asked(VICTIM) == 1
