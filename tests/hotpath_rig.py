"""A DnsServer's UDP reader on real loopback sockets, and the Python model of a cache hit.

Shared by tests/test_hotpath.py, tests/test_hotpath_hardening.py and fuzz/fuzz_hotpath.py:
the model is what the Python twin (heimdall/hotpath.py) does per datagram, key =
data[2:].lower(); a fresh entry (re-aged through Entry.refresh) answers
entry.reply(data) to the sender, anything else goes to the slow path unchanged.
"""

from __future__ import annotations

import random
import select
import socket
import time

import dns.message
import dns.rrset

from heimdall import cachekey, wire
from heimdall.cache import build_entry
from heimdall.config import load_config
from heimdall.server import DnsServer

NAMES = [f"n{i}.hot.test" for i in range(8)]


def make_query(name: str, qtype: str = "A", edns: bool = False, qid: int | None = None) -> bytes:
    q = dns.message.make_query(name, qtype, use_edns=0 if edns else False)
    q.id = random.randrange(65536) if qid is None else qid
    return q.to_wire()


class Rig:
    """A DnsServer (not started) on a loopback socket with a filled cache, its UDP reader and a client."""

    def __init__(self, mode: str = "c", family: int = socket.AF_INET, time_hits=None):
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.config = load_config(["--upstream-servers", "127.0.0.1:9", "--hot-path", mode], {})
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # as bind_sockets does
        udp.bind((host, 0))
        udp.setblocking(False)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        self.srv = DnsServer(self.config, udp, tcp)
        self.slow: list[tuple[bytes, tuple]] = []
        self.srv.udp_listener.slow = lambda data, addr, now: self.slow.append((data, addr))
        self.srv.pipeline.time_hits = time_hits
        self.now = int(time.monotonic())
        for name in NAMES:
            for qtype, edns in (("A", False), ("AAAA", True)):
                self.put(make_query(name, qtype, edns), ttl=300)
        self.read = self.srv.udp_listener.reader()
        self.client = socket.socket(family, socket.SOCK_DGRAM)
        self.client.bind((host, 0))
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # room for a burst of replies
        self.client.settimeout(2)
        self.dest = udp.getsockname()
        self.second = int(time.monotonic())

    def put(self, query: bytes, ttl: int, now: int | None = None) -> None:
        q = dns.message.from_wire(query)
        r = dns.message.make_response(q)
        rdtype = q.question[0].rdtype
        r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", rdtype,
                                            "192.0.2.1" if rdtype == 1 else "2001:db8::1"))
        pq = wire.parse_query(query)
        entry, _ = build_entry(r.to_wire(), query, pq, 1232, self.now if now is None else now, 0, 86400, 3600)
        self.srv.cache.put(cachekey.cache_key(query, pq, False), entry)

    def ticked(self) -> bool:
        """True when the clock has moved to another second since the exchange began: replies then
        carry TTLs aged to either second, and the model cannot tell which one each saw."""
        return int(time.monotonic()) != self.second

    def model(self, data: bytes) -> bytes | None:
        """The reply a fresh hit gets, or None for the slow path."""
        e = self.srv.cache.map.get(data[2:].lower()) if len(data) > 12 else None
        now = int(time.monotonic())
        if e is not None and (e.aged == now or e.refresh(now)):
            return e.reply(data)
        return None

    def exchange(self, datagrams: list[bytes]) -> list[bytes]:
        self.second = int(time.monotonic())
        for d in datagrams:
            self.client.sendto(d, self.dest)
        self.drain()
        return self.replies(self.client)

    def drain(self) -> None:
        """Call the reader as the (level-triggered) loop does: while the socket is readable."""
        for _ in range(1000):
            self.read()
            if not select.select([self.srv.udp], [], [], 0)[0]:
                break

    @staticmethod
    def replies(sock: socket.socket) -> list[bytes]:
        """Every datagram waiting on `sock`."""
        out = []
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            while True:
                out.append(sock.recv(65535))
        except BlockingIOError:
            pass
        finally:
            sock.settimeout(timeout)
        return out

    def close(self) -> None:
        for s in (self.srv.udp, self.srv.tcp, self.client):
            s.close()
