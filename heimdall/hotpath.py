"""The Python twin of the C hot path (heimdall/_hotpath.c): the UDP socket's readable callback.

It serves when the C reader is not built, when HEIMDALL_HOT_PATH=python, or
when the query log is on. Per datagram it does what the C reader does: the
rate-limit hook on the client's packed address, the key `data[2:].lower()`
(see heimdall/cachekey.py), one dict lookup, and for a fresh entry (re-aged
at most once a second) the reply ID + head + client question + tail.
Everything else goes to `slow(data, addr, now)`, the pipeline's way in.

Two readers: plain recvfrom/sendto with an adaptive number of reads per
wakeup, and recvmmsg/sendmmsg batches (heimdall/udpbatch.py) when datagrams
queue up.
"""

from __future__ import annotations

import socket
import time
from typing import Callable

from heimdall import udpbatch
from heimdall.cache import Entry
from heimdall.counters import Counters

BATCH = 256  # datagrams drained per wakeup before yielding to the loop
BATCH_MMSG = 64  # slots per recvmmsg/sendmmsg

Slow = Callable[[bytes, tuple, int], None]
Limited = Callable[[bytes, tuple], None]


class PyHotPath:
    """Called by the loop when the socket is readable; the same arguments as _hotpath.HotPath."""

    def __init__(self, sock: socket.socket, cache: dict[bytes, Entry], counters: Counters, slow: Slow,
                 time_hits: Callable[[int, float], None] | None, admit: Callable[[bytes], bool] | None,
                 limited: Limited, fast: bool = True, batch: str = "auto"):
        self.sock = sock
        self.cache = cache
        self.counters = counters
        self.slow = slow
        self.time_hits = time_hits
        self.admit = admit
        self.limited = limited
        self.fast = fast  # False: no hits here, every datagram goes to slow (the query log is on)
        self.batch_auto = batch == "auto"
        self.batch = udpbatch.BatchSocket(sock, BATCH_MMSG) if batch != "off" and udpbatch.available() else None
        self.limit = 1  # datagrams to read in the next wakeup (adapted by _adapt)
        self._probe = 0

    def __call__(self) -> None:
        if self.batch is None or (self.limit <= 2 and self.batch_auto):
            self.readable()
        else:
            self.readable_batched()

    def readable(self) -> None:
        """recvfrom/sendto: drain up to `limit` datagrams, answer fresh hits inline."""
        recvfrom = self.sock.recvfrom
        sendto = self.sock.sendto
        get = self.cache.get
        t0 = time.monotonic()
        now = int(t0)
        admit = self.admit
        fast = self.fast
        labels = self.counters.hit_labels
        hits = 0
        limit = self.limit
        got = 0
        drained = False
        while got < limit:
            try:
                data, addr = recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                drained = True
                break
            except OSError:
                got += 1
                continue
            got += 1
            if admit is not None and not admit(socket.inet_pton(self.sock.family, addr[0])):
                self.limited(data, addr)
                continue
            if fast:
                e = get(data[2:].lower())
                if e is not None and (e.aged == now or e.refresh(now)):
                    e.mark = True
                    try:
                        sendto(data[:2] + e.head + data[12:e.qend] + e.tail, addr)
                    except OSError:
                        pass
                    labels[e.lid] += 1
                    hits += 1
                    continue
            self.slow(data, addr, now)
        counters = self.counters
        counters.hits_fast += hits
        counters.udp_wakeups += 1
        counters.udp_datagrams += got
        if hits and self.time_hits is not None:
            self.time_hits(hits, (time.monotonic() - t0) / got)
        self._adapt(limit, got, drained)

    def readable_batched(self) -> None:
        """recvmmsg/sendmmsg: one syscall in, one out, per batch of datagrams.

        Only worth it when datagrams queue up: at low rates (recent batches of
        1-2) the ctypes calls cost more than they save, so `__call__` uses the
        plain reader then.
        """
        b = self.batch
        assert b is not None
        rview, lens, bufsize, queue = b.rview, b.rlens, b.bufsize, b.queue
        step, lenoff = udpbatch.LEN_STEP, udpbatch.LEN_INDEX
        get = self.cache.get
        admit = self.admit
        fast = self.fast
        counters = self.counters
        labels = counters.hit_labels
        for _ in range(4):  # a full batch means more may wait: read again, boundedly
            try:
                n = b.recv()
            except OSError:
                break
            if n == 0:
                break
            t0 = time.monotonic()
            now = int(t0)
            hits = 0
            for i in range(n):
                off = i * bufsize
                data = rview[off:off + lens[i * step + lenoff]].tobytes()
                if admit is not None and not admit(b.client_ip(i)):
                    self.limited(data, b.address(i))
                    continue
                if fast:
                    e = get(data[2:].lower())
                    if e is not None and (e.aged == now or e.refresh(now)):
                        e.mark = True
                        queue(i, data[:2] + e.head + data[12:e.qend] + e.tail)
                        labels[e.lid] += 1
                        hits += 1
                        continue
                self.slow(data, b.address(i), now)
            b.flush()
            counters.hits_fast += hits
            if hits and self.time_hits is not None:
                self.time_hits(hits, (time.monotonic() - t0) / n)
            counters.udp_wakeups += 1
            counters.udp_datagrams += n
            if n < b.batch:
                self.limit = n
                break

    def _adapt(self, limit: int, got: int, drained: bool) -> None:
        """Size the next batch: probing for EAGAIN costs a syscall and an exception,
        which at low rates is most of a query's cost, so read only as many as
        recent wakeups found (the poller is level-triggered; nothing is lost),
        growing when a batch was full and probing one extra now and then."""
        if drained:
            self.limit = got if got > 0 else 1
        elif limit > 1:
            self.limit = min(BATCH, limit * 2)
        else:
            self._probe = (self._probe + 1) & 7
            if self._probe == 0:
                self.limit = 2
