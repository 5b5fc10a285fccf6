"""The UDP sockets queries leave through: random source ports, random IDs, one timer per upstream.

Each upstream has a small, constantly renewed set of UDP sockets
(`ChannelSet`), each connect()ed from a port the kernel picks at random, so
the kernel drops datagrams from any other address or port; each serves at
most MAX_USES queries or MAX_AGE s before it is replaced (RFC 5452: the
source port changes as often as that, the 16-bit ID with every query). A
reply counts only if its ID is one we wait for and its QR bit and question
match (`wire.reply_matches`); anything else is counted and ignored while we
keep waiting.

A query's deadline is kept beside it, and one timer per set (armed for its
earliest deadline) fails every query past its deadline, instead of one timer
per query: a reply that arrives in time costs no timer at all. The reader
settles a query itself (result, timeout or socket error), so the one who
asked awaits a bare future.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING, Callable, Iterator

from heimdall import wire
from heimdall.config import HostPort

if TYPE_CHECKING:
    from heimdall.upstream import UpstreamStats


def _py_recv_burst(fd: int, limit: int) -> list[bytes]:
    """recv_burst without the C extension: the datagrams waiting on fd, at most limit."""
    out: list[bytes] = []
    for _ in range(limit):
        try:
            out.append(os.read(fd, 65535))  # one datagram per read on a UDP socket
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            if not out:
                raise
            break
    return out


# heimdall/_hotpath.c reads a burst without an exception at its end
recv_burst: Callable[[int, int], list[bytes]] = getattr(wire.c_ext, "recv_burst", _py_recv_burst)
# ... and matches a reply (bytes, as both readers return) to its query in C when it can
reply_matches: Callable[[bytes, int, bytes, bool], bool] = wire._c_reply_matches or wire.py_reply_matches

SWEEP_SLACK = 0.005  # a timeout may fire this much late, so queries expiring together share one sweep
Waiting = tuple[bytes, asyncio.Future, float]  # (question as sent, future of the reply, loop-time deadline)


class RandomIds:
    """Unpredictable 16-bit IDs from os.urandom, fetched in bulk (one syscall per 2048 IDs)."""

    def __init__(self) -> None:
        self._ids: Iterator[int] = iter(())

    def next(self) -> int:
        try:  # (an iterator over a list: a third of the bytecodes of an index kept by hand)
            return next(self._ids)
        except StopIteration:
            self._ids = iter(memoryview(os.urandom(4096)).cast("H").tolist())
            return next(self._ids)


IDS = RandomIds()
_LETTERS = frozenset(range(0x41, 0x5B)) | frozenset(range(0x61, 0x7B))


def mix_case(question: bytes) -> bytes:
    """0x20 (draft-vixie-dnsext-dns0x20): flip the case of each letter of the name at random.

    Length bytes are at most 63 and never letters; the type and class stay as they are.
    """
    name = question[:-4]
    bits = os.urandom(len(name))
    return bytes(c ^ 0x20 if c in _LETTERS and r & 1 else c for c, r in zip(name, bits)) + question[-4:]


def _settle_error(fut: asyncio.Future, exc: BaseException) -> bool:
    """Fail fut unless it is settled already (or its loop is gone); True when it was failed here."""
    if fut.done() or fut.get_loop().is_closed():
        return False
    fut.set_exception(exc)
    return True


class Channel:
    """One UDP socket connect()ed to an upstream from a kernel-chosen random port.

    connect() makes the kernel drop datagrams from any other address or port;
    replies are matched to waiting queries by ID and question. A channel
    serves a bounded number of queries, then retires (closes when idle) so
    source ports keep changing.
    """

    def __init__(self, addr: HostPort, stats: UpstreamStats, loop: asyncio.AbstractEventLoop):
        self.sock = socket.socket(addr.family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect((addr.host, addr.port))
        self.stats = stats
        self.loop = loop
        self.fd = self.sock.fileno()
        self.waiting: dict[int, Waiting] = {}
        self.exact = False  # 0x20: the question must echo our mixed case exactly
        self.uses = 0
        self.born = time.monotonic()
        self.retired = False
        loop.add_reader(self.fd, self._readable)

    def free_id(self) -> int:
        self.uses += 1
        while True:
            qid = IDS.next()
            if qid not in self.waiting:
                return qid

    def _readable(self) -> None:
        try:
            datagrams = recv_burst(self.fd, 64)  # connect(): only the upstream's address and port reach us
        except OSError as exc:  # ICMP unreachable for this upstream: fail everyone waiting here
            self.retired = True  # uvloop stops polling a socket after an error: replies would go unread
            self.fail(OSError(exc.errno, exc.strerror))
            return
        waiting = self.waiting
        for data in datagrams:
            qid = data[0] << 8 | data[1] if len(data) >= 12 else -1
            entry = waiting.get(qid)
            if entry is not None and reply_matches(data, qid, entry[0], self.exact):
                del waiting[qid]
                if not entry[1].done():  # else its asker gave up (cancelled): nobody to tell
                    entry[1].set_result(data)
                if self.retired and not waiting:
                    self.close()
            else:
                self.stats.mismatched += 1

    def fail(self, exc: OSError) -> None:
        """Every query waiting here ends with exc (counted as errors); a retired channel then closes."""
        for _q, fut, _d in self.waiting.values():
            if _settle_error(fut, exc):
                self.stats.errors += 1
        self.waiting.clear()
        if self.retired:
            self.close()

    def expire(self, now: float) -> float:
        """Fail the queries past their deadline (timeouts); the earliest deadline left, or inf."""
        earliest = float("inf")
        waiting = self.waiting
        for qid, (_q, fut, deadline) in list(waiting.items()):
            if deadline <= now or fut.done():
                del waiting[qid]
                if _settle_error(fut, asyncio.TimeoutError()):
                    self.stats.timeouts += 1
            elif deadline < earliest:
                earliest = deadline
        if self.retired and not waiting:
            self.close()
        return earliest

    def withdraw(self, qid: int) -> None:
        """Forget a query that never left (its send failed)."""
        self.waiting.pop(qid, None)
        if self.retired and not self.waiting:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            self.sock.close()
            self.fd = -1


class ChannelSet:
    """Up to SIZE open channels per upstream, picked at random, renewed after MAX_USES queries or MAX_AGE s."""

    SIZE = 16
    MAX_USES = 256
    MAX_AGE = 30.0

    def __init__(self, addr: HostPort, stats: UpstreamStats):
        self.addr = addr
        self.stats = stats
        self.channels: list[Channel] = []
        self.draining: list[Channel] = []  # retired, still waiting for replies: swept until they close
        self.sweep: asyncio.TimerHandle | None = None
        self.sweep_at = 0.0

    def ask(self, loop: asyncio.AbstractEventLoop, question: bytes, rd: bool, cd: bool, do: bool,
            budget: float, exact: bool) -> asyncio.Future:
        """Send question from a random channel with a fresh random ID: the future of its matching reply,
        failed with TimeoutError after budget s or with the socket's OSError."""
        chan = self.pick(loop)
        qid = chan.free_id()
        fut = loop.create_future()
        deadline = loop.time() + budget
        chan.exact = exact
        chan.waiting[qid] = (question, fut, deadline)
        try:
            chan.sock.send(wire.make_query(qid, rd, cd, question, do))
        except OSError:
            # An earlier datagram's ICMP error (upstream was down) surfaces on this send, which did
            # not go out, and uvloop has stopped polling the socket: one more try on a fresh channel.
            chan.withdraw(qid)
            chan = self.renew(chan, loop)
            qid = chan.free_id()
            chan.exact = exact
            chan.waiting[qid] = (question, fut, deadline)
            try:
                chan.sock.send(wire.make_query(qid, rd, cd, question, do))
            except OSError:
                chan.withdraw(qid)
                self.stats.errors += 1
                raise
        self.stats.sent_udp += 1
        if self.sweep is None or deadline + SWEEP_SLACK < self.sweep_at:
            self.watch(loop, deadline)
        return fut

    def watch(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Arm the set's one timer for `deadline` (sooner than the one armed, if any)."""
        if self.sweep is not None:
            self.sweep.cancel()
        self.sweep_at = deadline + SWEEP_SLACK
        self.sweep = loop.call_at(self.sweep_at, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sweep = None
        now = loop.time()
        earliest = float("inf")
        for chan in (*self.channels, *self.draining):
            earliest = min(earliest, chan.expire(now))
        self.draining = [c for c in self.draining if c.fd >= 0]
        if earliest != float("inf"):
            self.watch(loop, earliest)

    def pick(self, loop: asyncio.AbstractEventLoop) -> Channel:
        chans = self.channels
        if len(chans) < self.SIZE:
            chan = Channel(self.addr, self.stats, loop)
            chans.append(chan)
            return chan
        i = IDS.next() % len(chans)
        chan = chans[i]
        if chan.retired or chan.uses >= self.MAX_USES or time.monotonic() - chan.born > self.MAX_AGE:
            chan = self.renew(chan, loop, i)
        return chan

    def renew(self, chan: Channel, loop: asyncio.AbstractEventLoop, i: int | None = None) -> Channel:
        """Retire chan (closed when its last query is done) and put a fresh channel in its place."""
        chan.retired = True
        if chan.waiting:
            self.draining.append(chan)
        else:
            chan.close()
        fresh = Channel(self.addr, self.stats, loop)
        if i is None:
            i = next((j for j, c in enumerate(self.channels) if c is chan), None)
        if i is None:
            fresh.retired = True  # chan was already replaced: fresh serves this one query, then closes
            self.draining.append(fresh)
        else:
            self.channels[i] = fresh
        return fresh

    def close(self) -> None:
        """Close every socket; queries still waiting end as timeouts (no reply can reach them now)."""
        if self.sweep is not None:
            self.sweep.cancel()
            self.sweep = None
        for chan in (*self.channels, *self.draining):
            for _q, fut, _d in chan.waiting.values():
                _settle_error(fut, asyncio.TimeoutError())
            chan.waiting.clear()
            chan.close()
        self.channels.clear()
        self.draining.clear()
