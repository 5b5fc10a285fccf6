"""Forwarding to upstream servers: failover, health with backoff, RFC 5452 matching.

Queries leave through a small, constantly renewed set of UDP sockets per
upstream (`ChannelSet`, heimdall/channels.py): each is connect()ed from a port the kernel picks at
random, so the kernel drops datagrams from any other address or port, and
each serves at most a few hundred queries or 30 s before it is replaced.
Every query gets a random 16-bit ID; a reply counts only if address, port,
ID, QR and question match, anything else is counted and ignored while we
keep waiting. (A socket per query cost ~100 us of syscalls per miss here;
the set keeps a miss near 35 us.) TC=1 over UDP retries the same upstream
over TCP. tcp://, tls:// and https:// upstreams go over persistent,
pipelined connections instead (heimdall/streamupstream.py, dohupstream.py),
with the same failover and health rules. An upstream that times out or errors is marked down for an
exponentially growing backoff; healthy ones are tried first, down ones only
as a last resort.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from heimdall import wire
from heimdall.channels import IDS, ChannelSet, mix_case
from heimdall.config import HostPort
from heimdall.streamupstream import StreamError, StreamPool, stream_pool
from heimdall.upstreamurl import UpstreamUrl
from heimdall.wire import WireError

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0


@dataclass
class UpstreamStats:
    """Plain-int counters: upstream requests by result."""

    sent_udp: int = 0
    sent_tcp: int = 0  # TC=1 retries and tcp:// upstreams
    sent_tls: int = 0
    sent_https: int = 0
    sent_quic: int = 0
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
    channels: ChannelSet | None = None
    streams: StreamPool | None = None  # tcp://, tls://, https:// upstreams' connections
    zone: str = ""  # a forward zone's upstream (heimdall/forwardzones.py); "" for the default upstreams

    @functools.cached_property
    def label(self) -> str:
        """How metrics name it: host:port, or zone=host:port for a forward zone's (made once: every
        exchange is counted under it)."""
        return f"{self.zone}={self.addr}" if self.zone else str(self.addr)

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
    use_0x20: bool = False  # HEIMDALL_USE_0X20: random name case upstream, echoed exactly or rejected
    # observe(upstream, result, seconds) per exchange: result ok/servfail/timeout/error (metrics)
    observe: Callable[[Upstream, str, float], None] | None = None
    ca_file: str = ""  # HEIMDALL_UPSTREAM_CA_FILE: trusted for tls:// and https:// besides the system's CAs

    @classmethod
    def from_config(cls, addrs: tuple[HostPort, ...], timeout: float, zone: str = "",
                    ca_file: str = "") -> "UpstreamPool":
        return cls([Upstream(a, zone=zone) for a in addrs], timeout, ca_file=ca_file)

    def retire(self) -> None:
        """No new queries come to this pool: its sockets close once the ones in flight are over
        (a query never takes longer than the pool's timeout, failover included)."""
        asyncio.get_running_loop().call_later(self.timeout + 1.0, self.close)

    def close(self) -> None:
        for up in self.servers:
            if up.channels is not None:
                up.channels.close()
            if up.streams is not None:
                up.streams.close()

    def candidates(self, now: float) -> list[Upstream]:
        """Healthy upstreams in configured order, then down ones, soonest retry first."""
        for u in self.servers:  # (a loop: a generator for all() cost a miss ~1,000 instructions)
            if u.down_until > now:
                break
        else:
            return self.servers
        up = [u for u in self.servers if u.healthy(now)]
        down = sorted((u for u in self.servers if not u.healthy(now)), key=lambda u: u.down_until)
        return up + down

    async def query(self, question: bytes, rd: bool, cd: bool, do: bool,
                    build: Callable[[bytes], Any] | None = None) -> Any:
        """An upstream's validated reply for question, or None when none answered in time.

        With `build`, the result is build(reply); a reply that build rejects with
        WireError (ID and question matched, body broken) counts as that upstream's
        error: it is marked down and the next upstream is asked.
        """
        now = time.monotonic()
        deadline = now + self.timeout
        fallback: bytes | None = None
        cands = self.candidates(now)
        for i, up in enumerate(cands):
            t0 = time.monotonic()
            remaining = deadline - t0
            if remaining <= 0.005:
                break
            budget = remaining / (len(cands) - i)
            try:  # (no coroutine per exchange between this one and the reply: a frame cost a miss ~2,000)
                if isinstance(up.addr, UpstreamUrl):
                    reply = await self._stream(up, up.addr, question, rd, cd, do, budget)
                else:
                    reply = await self._udp(up, question, rd, cd, do, budget)
                    if reply[2] & wire.TC:
                        reply = await self._truncated(up.addr, question, rd, cd, do, budget)
            except (asyncio.TimeoutError, OSError, UpstreamError, StreamError) as exc:
                up.mark_down(time.monotonic())
                if self.observe is not None:
                    self.observe(up, "timeout" if isinstance(exc, asyncio.TimeoutError) else "error",
                                 time.monotonic() - t0)
                continue
            if up.fails:
                up.mark_up()
            rcode = reply[3] & wire.RCODE_MASK
            refused = rcode == wire.SERVFAIL or rcode == wire.REFUSED
            if self.observe is not None:
                self.observe(up, "servfail" if refused else "ok", time.monotonic() - t0)
            if refused:
                self.stats.servfail += 1
                fallback = fallback or reply
                continue
            if build is not None:
                try:
                    reply = build(reply)
                except WireError:
                    self.stats.errors += 1
                    up.mark_down(time.monotonic())
                    continue
            self.stats.ok += 1
            return reply
        if fallback is not None and build is not None:
            try:
                return build(fallback)
            except WireError:
                return None
        return fallback

    def _truncated(self, addr: HostPort, question: bytes, rd: bool, cd: bool, do: bool,
                   budget: float) -> Awaitable[bytes]:
        """A TC=1 reply over UDP: the same upstream asked again over TCP."""
        self.stats.truncated += 1
        return asyncio.wait_for(self._tcp(addr, question, rd, cd, do), max(budget, 0.5))

    def _udp(self, up: Upstream, question: bytes, rd: bool, cd: bool, do: bool,
             budget: float) -> asyncio.Future[bytes]:
        """The future of up's reply over UDP: sent now from one of its channels (heimdall/channels.py),
        settled by the channel's reader (reply or OSError) or its timer (TimeoutError after budget)."""
        chans = up.channels
        if chans is None:
            chans = up.channels = ChannelSet(up.addr, self.stats)
        if self.use_0x20:
            question = mix_case(question)
        return chans.ask(asyncio.get_running_loop(), question, rd, cd, do, budget, self.use_0x20)

    async def _tcp(self, addr: HostPort, question: bytes, rd: bool, cd: bool, do: bool) -> bytes:
        qid = IDS.next()
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

    async def _stream(self, up: Upstream, addr: UpstreamUrl, question: bytes, rd: bool, cd: bool, do: bool,
                      budget: float) -> bytes:
        if up.streams is None:
            up.streams = stream_pool(addr, self.ca_file, IDS.next, self._mismatched)
        if self.use_0x20:
            question = mix_case(question)
        if addr.transport == "tls":
            self.stats.sent_tls += 1
        elif addr.transport == "https":
            self.stats.sent_https += 1
        elif addr.transport == "quic":
            self.stats.sent_quic += 1
        else:
            self.stats.sent_tcp += 1
        try:
            return await up.streams.query(question, lambda qid: wire.make_query(qid, rd, cd, question, do),
                                          self.use_0x20, budget)
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            raise
        except StreamError:
            self.stats.errors += 1
            raise

    def _mismatched(self) -> None:
        self.stats.mismatched += 1
