"""One worker's DNS service: UDP and TCP on one address, the cache and the miss path.

UDP hot path: the loop calls, when the socket is readable, the C reader
(heimdall/_hotpath.c: recvmmsg, hits built and sent with sendmmsg, the rest
handed to `_udp_slow_guarded`) or, when it is not built, the query log is on or
HEIMDALL_HOT_PATH=python, `_udp_readable_batched` (recvmmsg/sendmmsg batches,
when datagrams queue up) or `_udp_readable` (recvfrom/sendto, an adaptive
number per wakeup). Both do the same per datagram: the key is
`data[2:].lower()` (see wire.cache_key), one dict lookup, and if
the entry is fresh (re-aged at most once a second), the reply is ID + head +
client question + tail. Everything else (parsing, errors, misses, stale
entries) goes through `handle`.

Hook points for the features wired in later, in query order:
  1. `admit(ip: bytes) -> bool`: rate limit on the client's packed IP address
     (4 or 16 bytes), before anything (UDP datagrams and TCP messages); False
     drops the query, or answers REFUSED when `refuse_limited` is set.
  2. `policy(data, q) -> bytes|None`: blocklist before the cache, given the
     client message and its parsed Query (lower-cased wire qname:
     `data[12:q.qend - 4].lower()`); returns the reply to send instead (e.g.
     `wire.error_reply(data, wire.NXDOMAIN, q.qend, q.edns)`) or None to go
     on. The fast path answers cached names before `handle` runs, so clear
     the cache on a blocklist reload, or set `fast_ok = False`.
  3. `_fetch`: the miss path, where a second-tier (Redis) cache slots in
     before and after the upstream query.
  4. `observe(query, reply, client, tcp, t0, miss)`: after every reply sent by
     the slow path or the miss path (metrics, query log); fast-path hits are
     counted per label in `stats.hit_labels[entry.lid]` and timed per batch
     through `time_hits(n, seconds_each)`.
Counters are plain ints on `self.stats` (per worker); nothing else on the path.
heimdall/features.py installs all of these for issue 3.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from heimdall import anyquery, sharedvalue, udpbatch, wire
from heimdall.cache import MAX_LABELS, Cache, Entry, build_entry
from heimdall.config import Config, HostPort
from heimdall.upstream import UpstreamPool
from heimdall.wire import Query, WireError

try:  # the C hot path (heimdall/_hotpath.c), built by `pip install`; optional
    from heimdall import _hotpath
except ImportError:  # pragma: no cover - no compiler at install time
    _hotpath = None

BATCH = 256  # datagrams drained per wakeup before yielding to the loop
BATCH_MMSG = 64  # slots per recvmmsg/sendmmsg
UDP_RCVBUF = 4 << 20
TCP_LIMIT = 65535


@dataclass
class Stats:
    """Per-worker plain-int counters (read by the metrics module, never locked)."""

    queries_udp: int = 0  # UDP queries seen by the slow path (hits on the fast path are in hits_fast)
    queries_tcp: int = 0
    hits_fast: int = 0
    hits: int = 0  # slow-path cache hits
    misses: int = 0
    coalesced: int = 0
    stale_served: int = 0
    servfail: int = 0
    formerr: int = 0
    notimp: int = 0
    refused: int = 0
    dropped: int = 0
    overload: int = 0
    internal_errors: int = 0
    tcp_connections: int = 0
    udp_wakeups: int = 0  # reader callbacks: udp_datagrams / udp_wakeups = batch size
    udp_datagrams: int = 0
    tcp_rejected: int = 0
    by_qtype: dict[int, int] = field(default_factory=dict)  # slow path only
    by_rcode: dict[int, int] = field(default_factory=dict)  # miss replies
    miss_latency_ms: list[int] = field(default_factory=lambda: [0] * 16)  # log2 buckets of ms
    rate_limited: int = 0
    hit_labels: list[int] = field(default_factory=lambda: [0] * MAX_LABELS)  # fast-path hits by Entry.lid

    @property
    def cache_hits(self) -> int:
        return self.hits_fast + self.hits

    @property
    def queries(self) -> int:
        return self.hits_fast + self.queries_udp + self.queries_tcp


@dataclass(slots=True)
class Miss:
    key: bytes
    q: Query
    limit: int


def hot_path_built() -> bool:
    """True when the C hot path (heimdall/_hotpath.c) was compiled at install time."""
    return _hotpath is not None


def log(msg: str) -> None:
    print(f"heimdall[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def bind_sockets(addr: HostPort, reuseport: bool) -> tuple[socket.socket, socket.socket]:
    """A non-blocking UDP and a listening TCP socket on addr (SO_REUSEPORT for workers)."""
    udp = socket.socket(addr.family, socket.SOCK_DGRAM)
    tcp = socket.socket(addr.family, socket.SOCK_STREAM)
    try:
        for s in (udp, tcp):
            s.setblocking(False)
            if reuseport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                udp.setsockopt(socket.SOL_SOCKET, opt, UDP_RCVBUF)
                break
            except OSError:
                continue
        udp.bind((addr.host, addr.port))
        tcp.bind((addr.host, addr.port))
        tcp.listen(1024)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


class DnsServer:
    """UDP + TCP service for one worker process."""

    def __init__(self, config: Config, udp: socket.socket, tcp: socket.socket):
        self.config = config
        self.udp = udp
        self.tcp = tcp
        self.cache = Cache(config.cache_capacity, config.serve_stale)
        self.pool = UpstreamPool.from_config(config.upstream_servers, config.upstream_timeout)
        self.pool.use_0x20 = config.use_0x20
        self.stats = Stats()
        self.inflight: dict[bytes, asyncio.Future[Entry | None]] = {}
        self.pending = 0  # client queries waiting for the miss path
        self.admit: Callable[[bytes], bool] | None = None  # hook 1: rate limit on packed client IP
        self.policy: Callable[[bytes, Query], bytes | None] | None = None  # hook 2: blocking
        self.fast_ok = True
        self.shared = open_shared_cache(config)  # Redis second tier (issue 9), None when off
        self.refuse_limited = False  # admit said no: REFUSED (True) or drop (False)
        # hook 4: observe(query, reply, client, tcp, t0, miss) after each slow-path/miss reply
        # (metrics, query log); t0 is time.perf_counter() when the query was picked up
        self.observe: Callable[[bytes, bytes, object, bool, float, bool], None] | None = None
        # hook 5: time_hits(n, seconds_each) per batch of fast-path hits (duration histogram)
        self.time_hits: Callable[[int, float], None] | None = None
        self.stop_hooks: list[Callable[[], object]] = []  # run at the end of stop()
        self._batch: udpbatch.BatchSocket | None = None
        self._batch_auto = config.udp_batch == "auto"
        self._limit = 1  # datagrams to read in the next wakeup (adapted by _adapt)
        self._probe = 0
        self._tcp_server: asyncio.AbstractServer | None = None
        self._tcp_conns: set[TcpConnection] = set()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reload_hooks: list[Callable[[], object]] = []  # run on SIGHUP (e.g. reload blocklists)

    def reload(self) -> None:
        """SIGHUP: run the reload hooks; a failing hook is logged, never fatal."""
        for hook in self.reload_hooks:
            try:
                result = hook()
                if asyncio.iscoroutine(result):
                    asyncio.ensure_future(result)
            except Exception as exc:  # noqa: BLE001
                log(f"reload hook failed: {exc!r}")

    # --- lifecycle ---

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.udp.fileno(), self.udp_reader())
        self._tcp_server = await self._loop.create_server(lambda: TcpConnection(self), sock=self.tcp)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight queries finish for up to `grace` seconds."""
        if self._stopping:
            return
        self._stopping = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.udp.fileno())
        if self._tcp_server is not None:
            self._tcp_server.close()
        deadline = time.monotonic() + grace
        while (self.pending or any(c.busy for c in self._tcp_conns)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self._tcp_conns):
            conn.transport.close()
        self.udp.close()
        if self.shared is not None:
            await self.shared.close()
        st = self.stats
        log(f"stopped: {st.queries} queries ({st.cache_hits} cache hits, {st.misses} misses, "
            f"{st.servfail} SERVFAIL), {st.udp_datagrams} datagrams in {st.udp_wakeups} wakeups, "
            f"{len(self.cache)} cached")
        for hook in self.stop_hooks:
            try:
                result = hook()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:  # noqa: BLE001
                log(f"stop hook failed: {exc!r}")

    # --- UDP ---

    def udp_reader(self) -> Callable[[], None]:
        """The loop's readable callback: the C hot path where it can serve, else Python's.

        The C reader calls `admit`/`_limited` per datagram when rate limiting is
        on, answers fresh hits itself and hands everything else to
        `_udp_slow_guarded`. With the query log on (`fast_ok` False) every query
        must reach Python anyway, so the Python readers serve.
        """
        mode = self.config.hot_path
        if mode != "python" and self.fast_ok and _hotpath is not None:
            return _hotpath.HotPath(self.udp.fileno(), self.cache.map, self.stats.hit_labels, self.stats,
                                    self._udp_slow_guarded, self.time_hits, self.admit, self._limited)
        if mode == "c" and _hotpath is not None:
            log("HEIMDALL_HOT_PATH=c: the query log is on, so UDP uses the Python reader")
        if self.config.udp_batch != "off" and udpbatch.available():
            self._batch = udpbatch.BatchSocket(self.udp, BATCH_MMSG)
            return self._udp_readable_batched
        return self._udp_readable

    def _udp_readable(self) -> None:
        """Hot path: drain datagrams, answer fresh cache hits inline, the rest via _udp_slow."""
        recvfrom = self.udp.recvfrom
        sendto = self.udp.sendto
        get = self.cache.map.get
        t0 = time.monotonic()
        now = int(t0)
        admit = self.admit
        fast = self.fast_ok
        labels = self.stats.hit_labels
        hits = 0
        limit = self._limit
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
            if admit is not None and not admit(socket.inet_pton(self.udp.family, addr[0])):
                self._limited(data, addr)
                continue
            if fast:
                e = get(data[2:].lower())
                if e is not None and (e.aged == now or e.refresh(now)):
                    try:
                        sendto(data[:2] + e.head + data[12:e.qend] + e.tail, addr)
                    except OSError:
                        pass
                    labels[e.lid] += 1
                    hits += 1
                    continue
            self._udp_slow_guarded(data, addr, now)
        stats = self.stats
        stats.hits_fast += hits
        stats.udp_wakeups += 1
        stats.udp_datagrams += got
        if hits and self.time_hits is not None:
            self.time_hits(hits, (time.monotonic() - t0) / got)
        self._adapt(limit, got, drained)

    def _udp_readable_batched(self) -> None:
        """Hot path with recvmmsg/sendmmsg: one syscall in, one out, per batch of datagrams.

        Only worth it when datagrams queue up: at low rates (recent batches of
        1-2) the ctypes calls cost more than they save, so use the plain path.
        """
        if self._limit <= 2 and self._batch_auto:
            self._udp_readable()
            return
        b = self._batch
        rview, lens, bufsize, queue = b.rview, b.rlens, b.bufsize, b.queue
        step, lenoff = udpbatch.LEN_STEP, udpbatch.LEN_INDEX
        get = self.cache.map.get
        admit = self.admit
        fast = self.fast_ok
        stats = self.stats
        labels = stats.hit_labels
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
                    self._limited(data, b.address(i))
                    continue
                if fast:
                    e = get(data[2:].lower())
                    if e is not None and (e.aged == now or e.refresh(now)):
                        queue(i, data[:2] + e.head + data[12:e.qend] + e.tail)
                        labels[e.lid] += 1
                        hits += 1
                        continue
                self._udp_slow_guarded(data, b.address(i), now)
            b.flush()
            stats.hits_fast += hits
            if hits and self.time_hits is not None:
                self.time_hits(hits, (time.monotonic() - t0) / n)
            stats.udp_wakeups += 1
            stats.udp_datagrams += n
            if n < b.batch:
                self._limit = n
                break

    def _adapt(self, limit: int, got: int, drained: bool) -> None:
        """Size the next batch: probing for EAGAIN costs a syscall and an exception,
        which at low rates is most of a query's cost, so read only as many as
        recent wakeups found (the poller is level-triggered; nothing is lost),
        growing when a batch was full and probing one extra now and then."""
        if drained:
            self._limit = got if got > 0 else 1
        elif limit > 1:
            self._limit = min(BATCH, limit * 2)
        else:
            self._probe = (self._probe + 1) & 7
            if self._probe == 0:
                self._limit = 2

    def _udp_slow_guarded(self, data: bytes, addr: tuple, now: int) -> None:
        try:
            self._udp_slow(data, addr, now)
        except Exception as exc:  # noqa: BLE001 - a packet must never kill the worker
            self.stats.internal_errors += 1
            if self.stats.internal_errors <= 10:
                log(f"internal error on a UDP query: {exc!r}")

    def _udp_slow(self, data: bytes, addr: tuple, now: int) -> None:
        self.stats.queries_udp += 1
        t0 = time.perf_counter()
        result = self.handle(data, now, tcp=False)
        if result is None:
            return
        if isinstance(result, bytes):
            self._sendto(result, addr)
            if self.observe is not None:
                self.observe(data, result, addr, False, t0, False)
            return
        if self.pending >= self.config.max_inflight:
            self.stats.overload += 1
            self._sendto(self._servfail(data, result.q), addr)
            return
        self.pending += 1
        asyncio.ensure_future(self._udp_miss(result, data, addr, t0))

    def _limited(self, data: bytes, addr: tuple) -> None:
        """A datagram the admit hook (rate limit) turned down: REFUSED or dropped."""
        reply = self.limited_reply(data)
        if reply is not None:
            self._sendto(reply, addr)

    def limited_reply(self, data: bytes) -> bytes | None:
        """Count a rate-limited query; the REFUSED to send, or None to drop it."""
        self.stats.rate_limited += 1
        if not self.refuse_limited or len(data) < 12 or data[2] & wire.QR:
            return None
        try:
            qend = wire.question_end(data) if data[4:6] == b"\x00\x01" else None
        except WireError:
            qend = None
        return wire.error_reply(data, wire.REFUSED, qend)

    def _sendto(self, reply: bytes, addr: tuple) -> None:
        try:
            self.udp.sendto(reply, addr)
        except OSError:
            pass

    async def _udp_miss(self, miss: Miss, data: bytes, addr: tuple, t0: float = 0.0) -> None:
        try:
            reply = await self.resolve(miss, data)
            self._sendto(reply, addr)
            if self.observe is not None:
                self.observe(data, reply, addr, False, t0, True)
        finally:
            self.pending -= 1

    # --- common query handling ---

    def handle(self, data: bytes, now: int, tcp: bool) -> bytes | Miss | None:
        """Classify a query: a reply to send now, a Miss to resolve, or None to drop."""
        stats = self.stats
        if len(data) < 12 or data[2] & wire.QR:
            stats.dropped += 1
            return None
        if data[2] & wire.OPCODE_MASK:
            stats.notimp += 1
            try:
                qend = wire.question_end(data) if data[4:6] == b"\x00\x01" else None
            except WireError:
                qend = None
            return wire.error_reply(data, wire.NOTIMP, qend)
        try:
            q = wire.parse_query(data)
        except WireError:
            stats.formerr += 1
            return wire.error_reply(data, wire.FORMERR)
        stats.by_qtype[q.qtype] = stats.by_qtype.get(q.qtype, 0) + 1
        if q.edns and q.edns_version > 0:
            return wire.error_reply(data, wire.BADVERS, q.qend, edns=True)
        if q.qtype in (wire.TYPE_AXFR, wire.TYPE_IXFR) or q.qclass not in (1, 3, 255):
            stats.refused += 1
            return wire.error_reply(data, wire.REFUSED, q.qend, edns=q.edns)
        if self.policy is not None:
            blocked = self.policy(data, q)
            if blocked is not None:
                return blocked
        if q.qtype == 255 and self.config.any_mode != "forward":  # RFC 8482: no ANY amplification
            if self.config.any_mode == "refused":
                stats.refused += 1
            return anyquery.reply(data, q, self.config.any_mode)
        key = wire.cache_key(data, q, tcp)
        e = self.cache.get_fresh(key, now)
        if e is not None:
            stats.hits += 1
            return e.reply(data)
        stats.misses += 1
        return Miss(key, q, TCP_LIMIT if tcp else wire.size_class(q))

    def _servfail(self, data: bytes, q: Query) -> bytes:
        self.stats.servfail += 1
        return wire.error_reply(data, wire.SERVFAIL, q.qend, edns=q.edns)

    async def resolve(self, miss: Miss, data: bytes) -> bytes:
        """Miss path: coalesce on the key, fetch, and build this client's reply."""
        started = time.monotonic()
        fut = self.inflight.get(miss.key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self.inflight[miss.key] = fut
            entry: Entry | None = None
            try:
                entry = await self._fetch(miss, data)
            except Exception as exc:  # noqa: BLE001
                self.stats.internal_errors += 1
                log(f"internal error on the miss path: {exc!r}")
            finally:
                del self.inflight[miss.key]
                fut.set_result(entry)
        else:
            self.stats.coalesced += 1
            entry = await asyncio.shield(fut)
        ms = int((time.monotonic() - started) * 1000)
        self.stats.miss_latency_ms[min(15, ms.bit_length())] += 1
        if entry is None:
            stale = self.cache.get_stale(miss.key, int(time.monotonic()))
            if stale is not None:
                self.stats.stale_served += 1
                return stale.stale_reply(data)
            return self._servfail(data, miss.q)
        reply = entry.reply(data)
        rcode = reply[3] & wire.RCODE_MASK
        self.stats.by_rcode[rcode] = self.stats.by_rcode.get(rcode, 0) + 1
        return reply

    async def _fetch(self, miss: Miss, data: bytes) -> Entry | None:
        """Ask the shared tier (if any), then upstream; cache the answer. None: nobody answered.

        Runs once per key (inside the coalesced miss path): one Redis lookup
        per key; local hits never get here.
        """
        q = miss.q
        question = data[12:q.qend].lower()
        cfg = self.config
        shared, skey = self.shared, b""
        if shared is not None:
            rd, cd = bool(data[2] & wire.RD), bool(data[3] & wire.CD)
            skey = question + bytes((rd | cd << 1 | q.do << 2,))  # what changes the upstream answer
            entry = await self._from_shared(miss, data, skey, question)
            if entry is not None:
                return entry

        def build(response: bytes) -> tuple[Entry, int]:  # a broken body fails over to the next upstream
            entry, ttl = build_entry(response, data, q, miss.limit, int(time.monotonic()), cfg.min_ttl,
                                     cfg.max_ttl, cfg.negative_ttl)
            if shared is not None and ttl > 0:
                shared.put_nowait(skey, response, ttl)  # background write; Redis expiry = ttl
            return entry, ttl

        built = await self.pool.query(question, bool(data[2] & wire.RD), bool(data[3] & wire.CD), q.do, build)
        if built is None:
            return None
        entry, ttl = built
        if ttl > 0:
            self.cache.put(miss.key, entry)
        return entry

    async def _from_shared(self, miss: Miss, data: bytes, skey: bytes, question: bytes) -> Entry | None:
        """The entry built from the shared tier's answer (TTLs aged, none past what is left), or None."""
        hit = await self.shared.lookup(skey, question)
        if hit is None:
            return None
        cfg, left = self.config, hit.remaining
        try:
            entry, ttl = build_entry(sharedvalue.age_ttls(hit.wire, hit.age), data, miss.q, miss.limit,
                                     int(time.monotonic()), min(cfg.min_ttl, left), min(cfg.max_ttl, left),
                                     min(cfg.negative_ttl, left))
        except (WireError, sharedvalue.GarbageValue):
            self.shared.counters.garbage += 1
            return None
        if ttl > 0:
            self.cache.put(miss.key, entry)
        return entry


def open_shared_cache(config: Config):
    """A SharedCache when HEIMDALL_REDIS_URL is set (redis is imported only then), else None."""
    if not config.redis_url:
        return None
    from heimdall.sharedcache import SharedCache

    return SharedCache(config.redis_url, config.redis_key_prefix, config.redis_timeout)


class TcpConnection(asyncio.Protocol):
    """RFC 7766: length-prefixed queries, several per connection, answered as they complete."""

    MAX_PIPELINE = 32

    def __init__(self, server: DnsServer):
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.outstanding = 0
        self.last_active = time.monotonic()
        self.eof = False
        self.write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self.peer: object = None
        self.peer_ip = b""

    @property
    def busy(self) -> bool:
        return self.outstanding > 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        srv = self.server
        if len(srv._tcp_conns) >= srv.config.tcp_max_connections:
            srv.stats.tcp_rejected += 1
            transport.close()
            return
        srv._tcp_conns.add(self)
        srv.stats.tcp_connections += 1
        self.peer = transport.get_extra_info("peername")
        try:  # packed, for the admit (rate limit) hook
            self.peer_ip = socket.inet_pton(socket.AF_INET6 if ":" in self.peer[0] else socket.AF_INET, self.peer[0])
        except (OSError, TypeError, IndexError):
            self.peer_ip = b""
        transport.set_write_buffer_limits(high=256 * 1024)  # type: ignore[attr-defined]
        self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.last_active + self.server.config.tcp_idle_timeout - time.monotonic()
        self._timer = loop.call_later(max(0.05, delay), self._check_idle)

    def _check_idle(self) -> None:
        if self.transport.is_closing():
            return
        if self.outstanding == 0 and time.monotonic() - self.last_active >= self.server.config.tcp_idle_timeout:
            self.transport.close()
        else:
            self._arm()

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its queries (bounded memory)."""
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.outstanding < self.MAX_PIPELINE:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._tcp_conns.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def eof_received(self) -> bool:
        self.eof = True
        if self.outstanding == 0:
            return False  # close now
        return True  # keep open to send pending answers

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        buf = self.buf
        buf += data
        srv = self.server
        now = int(self.last_active)
        while len(buf) >= 2:
            size = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + size:
                break
            msg = bytes(buf[2:2 + size])
            del buf[:2 + size]
            srv.stats.queries_tcp += 1
            if srv.admit is not None and not srv.admit(self.peer_ip):
                refusal = srv.limited_reply(msg)
                if refusal is not None:
                    self._send(refusal)
                continue
            t0 = time.perf_counter()
            try:
                result = srv.handle(msg, now, tcp=True)
            except Exception as exc:  # noqa: BLE001
                srv.stats.internal_errors += 1
                log(f"internal error on a TCP query: {exc!r}")
                result = None
            if result is None:
                continue
            if isinstance(result, bytes):
                self._send(result)
                if srv.observe is not None:
                    srv.observe(msg, result, self.peer, True, t0, False)
            else:
                self.outstanding += 1
                srv.pending += 1
                asyncio.ensure_future(self._miss(result, msg, t0))
        if self.outstanding >= self.MAX_PIPELINE:
            self.transport.pause_reading()

    def _send(self, reply: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(len(reply).to_bytes(2, "big") + reply)

    async def _miss(self, miss: Miss, msg: bytes, t0: float = 0.0) -> None:
        try:
            reply = await self.server.resolve(miss, msg)
            self._send(reply)
            if self.server.observe is not None:
                self.server.observe(msg, reply, self.peer, True, t0, True)
        finally:
            self.outstanding -= 1
            self.server.pending -= 1
            self.last_active = time.monotonic()
            if self.outstanding < self.MAX_PIPELINE and not self.write_paused and not self.transport.is_closing():
                self.transport.resume_reading()
            if self.eof and self.outstanding == 0:
                self.transport.close()


Setup = Callable[["DnsServer"], object]  # may return a coroutine (awaited before serving)


async def serve_forever(config: Config, udp: socket.socket, tcp: socket.socket,
                        on_ready: Callable[[DnsServer], None] | None = None,
                        setup: Setup | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the exit status.

    `setup(server)` runs in the worker before it serves: the place to install
    the admit/policy hooks, reload hooks and per-worker state.
    """
    import signal

    server = DnsServer(config, udp, tcp)
    if setup is not None:
        pending = setup(server)
        if asyncio.iscoroutine(pending):  # async setup: e.g. bind the HTTP API before "ready"
            await pending
    saver = None
    if config.cache_file:  # issue 8: restore before serving, snapshot on a timer and at shutdown
        from heimdall.snapshot import Snapshotter

        saver = Snapshotter(server.cache, config.cache_file, config.cache_snapshot_interval, log)
        saver.restore(server.policy)  # names blocked now are not restored
    await server.start()
    if saver is not None:
        saver.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    if on_ready is not None:
        on_ready(server)
    await stop.wait()
    await server.stop(config.shutdown_grace)
    if saver is not None:
        saver.stop_and_save()
    return 0


def run_worker(config: Config, udp: socket.socket, tcp: socket.socket,
               on_ready: Callable[[DnsServer], None] | None = None, setup: Setup | None = None) -> int:
    """Run a worker on a fresh uvloop."""
    import uvloop

    return uvloop.run(serve_forever(config, udp, tcp, on_ready, setup))


def bind_error_message(addr: HostPort, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"cannot bind {addr}: address already in use"
    if exc.errno == errno.EACCES:
        return f"cannot bind {addr}: permission denied"
    return f"cannot bind {addr}: {exc.strerror or exc}"
