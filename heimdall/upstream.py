"""Forwarding to upstream servers: failover, health with backoff, RFC 5452 matching.

Every attempt uses a new UDP socket connect()ed to the upstream (the kernel
picks a random ephemeral port and drops datagrams from any other address or
port) and a random 16-bit ID; a reply counts only if address, port, ID, QR
and question match, anything else is counted and ignored while we keep
waiting. TC=1 over UDP retries the same upstream over TCP. An upstream that
times out or errors is marked down for an exponentially growing backoff;
healthy ones are tried first, down ones only as a last resort.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from dataclasses import dataclass, field

from heimdall import wire
from heimdall.config import HostPort

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0


@dataclass
class UpstreamStats:
    """Plain-int counters: upstream requests by result."""

    sent_udp: int = 0
    sent_tcp: int = 0
    ok: int = 0
    timeouts: int = 0
    errors: int = 0
    mismatched: int = 0  # replies ignored: wrong address/port/ID/question
    truncated: int = 0  # TC=1 replies retried over TCP
    servfail: int = 0  # SERVFAIL/REFUSED answers (next upstream tried)


@dataclass
class Upstream:
    addr: HostPort
    fails: int = 0
    down_until: float = 0.0

    def healthy(self, now: float) -> bool:
        return self.down_until <= now

    def mark_down(self, now: float) -> None:
        self.fails += 1
        self.down_until = now + min(BACKOFF_MAX, BACKOFF_START * 2 ** (self.fails - 1))

    def mark_up(self) -> None:
        self.fails = 0
        self.down_until = 0.0


class UpstreamError(Exception):
    pass


@dataclass
class UpstreamPool:
    servers: list[Upstream]
    timeout: float
    stats: UpstreamStats = field(default_factory=UpstreamStats)

    @classmethod
    def from_config(cls, addrs: tuple[HostPort, ...], timeout: float) -> "UpstreamPool":
        return cls([Upstream(a) for a in addrs], timeout)

    def candidates(self, now: float) -> list[Upstream]:
        """Healthy upstreams in configured order, then down ones, soonest retry first."""
        up = [u for u in self.servers if u.healthy(now)]
        down = sorted((u for u in self.servers if not u.healthy(now)), key=lambda u: u.down_until)
        return up + down

    async def query(self, question: bytes, rd: bool, cd: bool, do: bool) -> bytes | None:
        """An upstream's validated reply for question, or None when none answered in time."""
        deadline = time.monotonic() + self.timeout
        fallback: bytes | None = None
        cands = self.candidates(time.monotonic())
        for i, up in enumerate(cands):
            remaining = deadline - time.monotonic()
            if remaining <= 0.005:
                break
            budget = remaining / (len(cands) - i)
            try:
                reply = await self._ask(up, question, rd, cd, do, budget)
            except (asyncio.TimeoutError, OSError, UpstreamError):
                up.mark_down(time.monotonic())
                continue
            up.mark_up()
            rcode = reply[3] & wire.RCODE_MASK
            if rcode in (wire.SERVFAIL, wire.REFUSED):
                self.stats.servfail += 1
                fallback = fallback or reply
                continue
            self.stats.ok += 1
            return reply
        return fallback

    async def _ask(self, up: Upstream, question: bytes, rd: bool, cd: bool, do: bool, budget: float) -> bytes:
        reply = await self._udp(up.addr, question, rd, cd, do, budget)
        if reply[2] & wire.TC:
            self.stats.truncated += 1
            reply = await asyncio.wait_for(self._tcp(up.addr, question, rd, cd, do), max(budget, 0.5))
        return reply

    async def _udp(self, addr: HostPort, question: bytes, rd: bool, cd: bool, do: bool, budget: float) -> bytes:
        loop = asyncio.get_running_loop()
        qid = secrets.randbits(16)
        msg = wire.make_query(qid, rd, cd, question, do)
        sock = socket.socket(addr.family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        fd = sock.fileno()
        fut: asyncio.Future[bytes] = loop.create_future()
        stats = self.stats
        want = (addr.host, addr.port)

        def readable() -> None:
            for _ in range(64):
                try:
                    data, src = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # ICMP port unreachable etc.
                    if not fut.done():
                        fut.set_exception(exc)
                    return
                if src[:2] == want and wire.reply_matches(data, qid, question) and not fut.done():
                    fut.set_result(data)
                    return
                stats.mismatched += 1

        try:
            sock.connect(want)
            loop.add_reader(fd, readable)
            try:
                sock.send(msg)
                stats.sent_udp += 1
                return await asyncio.wait_for(fut, budget)
            finally:
                loop.remove_reader(fd)
        except asyncio.TimeoutError:
            stats.timeouts += 1
            raise
        except OSError:
            stats.errors += 1
            raise
        finally:
            sock.close()

    async def _tcp(self, addr: HostPort, question: bytes, rd: bool, cd: bool, do: bool) -> bytes:
        qid = secrets.randbits(16)
        msg = wire.make_query(qid, rd, cd, question, do)
        self.stats.sent_tcp += 1
        try:
            reader, writer = await asyncio.open_connection(addr.host, addr.port)
        except OSError:
            self.stats.errors += 1
            raise
        try:
            writer.write(len(msg).to_bytes(2, "big") + msg)
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
                if wire.reply_matches(data, qid, question):
                    return data
                self.stats.mismatched += 1
        except asyncio.IncompleteReadError:
            self.stats.errors += 1
            raise UpstreamError("upstream closed the TCP connection") from None
        finally:
            writer.close()
