"""The pipeline: the stages a query passes, in order, written once for every transport.

    listener: udp.py (hot path: _hotpath.c, or hotpath.py) | tcp.py (also DoT: tls.py) | doh.py
      1. admit         rate limit on the client address        ratelimit.py
      2. screen        malformed, opcode, AXFR, EDNS version   screen.py
      3. policy        local records, blocking, then qtype     localrecords.py, blocking.py,
                       ANY (RFC 8482)                          anyquery.py
                       (and, on what 6 finds, CNAME cloaking)
      4. cache         a fresh answer                          cache.py (its key: cachekey.py)
         --- a miss: coalesced per key; at most max_inflight waiting (all workers), so many
             per client, so many fetches per parent name (a flood's zone): inflight.py ---
      5. shared tier   Redis, shared by a fleet                sharedtier.py
      6. upstream      forward, validate, build the entry      forward.py (sockets: upstream.py;
                       (per zone when forward zones are set)   zones: forwardzones.py)
         nobody answered: a stale answer (RFC 8767) or SERVFAIL
    observers: counting.py (metrics), querylog.py, each told the reply and How it was made

The UDP hot path is the shortcut for plain cache hits: it runs stage 1 and a
cache lookup itself (in C, or in its Python twin) and hands every other
datagram to `dispatch`, exactly as TCP does. Optional stages are None until
heimdall/assembly.py installs them from the configuration. The cache is
written in one place, `store`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Protocol

from heimdall import cachekey, wire
from heimdall.anyquery import AnyQuery
from heimdall.cache import Cache, Entry, Prefetch, local_entry
from heimdall.clientgroups import GroupedBlocking
from heimdall.config import Config
from heimdall.counters import Counters
from heimdall.forward import Forward
from heimdall.forwardzones import ZoneRouter
from heimdall.inflight import Bound, client_key, parent
from heimdall.outcome import Answer, Fetched, How, Miss
from heimdall.screen import question_end_or_none, screen
from heimdall.sharedtier import SharedTier
from heimdall.transport import Transport
from heimdall.wire import Query
from heimdall.workershare import WorkerShare

log = logging.getLogger("heimdall.pipeline")

TCP_LIMIT = 65535
MISS_TASK = "heimdall-miss"
PREFETCH_MIN_TTL = 10  # a tenth of less is under the second that entries are aged by
Send = Callable[[bytes, object], None]  # send(reply, client): one reply to the client it came from


class Policy(Protocol):
    """Stage 3: an answer decided by local rules (blocked, synthesised), or None to go on."""

    def check(self, data: bytes, q: Query) -> Answer | None: ...


class Observer(Protocol):
    """Told every reply the pipeline sends, with how it was made (fast-path hits: see `time_hits`)."""

    def observe(self, data: bytes, reply: bytes, client: object, transport: Transport, seconds: float,
                how: How) -> None: ...


class Pipeline:
    """One worker's stages, in query order; `dispatch` is the entry for every transport."""

    def __init__(self, config: Config, cache: Cache, counters: Counters, upstream: Forward | ZoneRouter,
                 shared: SharedTier | None = None):
        self.config = config
        self.counters = counters
        self.admit: Callable[[bytes], bool] | None = None  # 1: rate limit on the packed client IP
        self.refuse_limited = False  # 1 said no: REFUSED (True) or drop (False)
        self.local_records: Policy | None = None  # 3, first
        self.blocking: Policy | None = None  # 3
        self.groups: GroupedBlocking | None = None  # 3, per client group (clientgroups.py)
        self.check_chain: Callable[[bytes, Query, bytes], Answer | None] | None = None  # 3, on what 6 found
        self.prefetch = config.prefetch  # 4: an entry asked for in its last tenth of TTL is refetched
        self.any_query: Policy | None = AnyQuery(config.any_mode, counters) if config.any_mode != "forward" else None
        self.cache = cache  # 4
        self.shared = shared  # 5
        self.upstream = upstream  # 6
        self.observers: list[Observer] = []
        self.time_hits: Callable[[int, float], None] | None = None  # per batch of hot-path hits: (n, seconds each)
        self.fast_path = True  # False: every query must reach the observers (the query log is on)
        # key -> the future its coalesced queries wait on; None until a second query asks (most never do)
        self.inflight: dict[bytes, asyncio.Future[Entry | None] | None] = {}
        self.pending = 0  # client queries waiting for the miss path
        self.share: WorkerShare | None = None  # with N workers: max_inflight holds for their sum
        self.zone_bound = Bound(config.max_inflight_per_zone) if config.max_inflight_per_zone else None  # fetches
        self.client_bound = Bound(config.max_inflight_per_client) if config.max_inflight_per_client else None
        self.slot = 0

    def share_inflight(self, share: WorkerShare, slot: int) -> None:
        self.share, self.slot = share, slot
        share.publish(slot, 0)

    # --- the entry for every transport ---

    def dispatch(self, data: bytes, now: int, transport: Transport, client: object, send: Send,
                 done: Callable[[], None] | None = None) -> bool:
        """Answer `data` with `send(reply, client)`; True when a miss was started (`done` is called after it)."""
        t0 = time.perf_counter()
        result = self.answer(data, now, transport, client)
        if result is None:
            return False
        if isinstance(result, Answer):
            send(result.reply, client)
            if self.observers:
                self.observe(data, result, client, transport, t0)
            return False
        if self.pending + (self.share.others(self.slot) if self.share else 0) >= self.config.max_inflight:
            self.counters.overload += 1
            send(self.servfail(data, result.q), client)
            return False
        zb = self.zone_bound  # a zone can be full only while that many fetches are in flight in all
        if zb is not None and len(self.inflight) >= zb.bound and result.key not in self.inflight \
                and zb.full(parent(result.question)):
            self.counters.inflight_limited["zone"] += 1  # turned away here, before a task is made for it
            send(self.servfail(data, result.q), client)
            return False
        if self.client_bound is not None and not self.client_bound.enter(client_key(client)):
            self.counters.inflight_limited["client"] += 1
            send(self.servfail(data, result.q), client)
            return False
        self.pending += 1
        if self.share is not None:
            self.share.publish(self.slot, self.pending)
        # The C Task itself, named: the loop's create_task would format a "Task-N" name per miss
        asyncio.Task(self._finish(result, data, client, transport, t0, send, done), loop=asyncio.get_running_loop(),
                     name=MISS_TASK)
        return True

    def limited(self, data: bytes) -> bytes | None:
        """Stage 1 turned a query down: count it; the REFUSED to send, or None to drop it."""
        self.counters.rate_limited += 1
        if not self.refuse_limited or len(data) < 12 or data[2] & wire.QR:
            return None
        return wire.error_reply(data, wire.REFUSED, question_end_or_none(data))

    # --- stages 2-4: answered now, or a miss ---

    def answer(self, data: bytes, now: int, transport: Transport, client: object = None) -> Answer | Miss | None:
        """Screen, policy, cache: an Answer to send now, a Miss to resolve, or None to drop."""
        q = screen(data, self.counters)
        if not isinstance(q, Query):
            return q
        placed = self.groups.place(data, q, client) if self.groups is not None else None
        local = self.local(data, q, self.blocking if placed is None else placed.blocking)
        if local is not None:
            if local.ttl > 0:  # under the UDP key: the hot path serves it next time
                entry = local_entry(local.reply, q, now, local.ttl, local.how == How.BLOCKED)
                key = cachekey.cache_key(data, q, False)
                self.store(key if placed is None else cachekey.group_key(key, placed.group), entry, local.ttl)
            return local
        key = cachekey.cache_key(data, q, bool(transport))  # every stream transport: the same entries
        if placed is not None:  # a listed name: each client group has its own answer
            key = cachekey.group_key(key, placed.group)
        e = self.cache.get_fresh(key, now)
        if e is not None:
            self.counters.hits += 1
            return Answer(e.reply(data), How.CACHED)
        self.counters.misses += 1
        return Miss(key, q, TCP_LIMIT if transport else wire.size_class(q), data[wire.HEADER_LEN:q.qend].lower())

    def local(self, data: bytes, q: Query, blocking: Policy | None) -> Answer | None:
        """Stage 3: the first policy that answers (local records, then blocking, then ANY)."""
        for policy in (self.local_records, blocking, self.any_query):
            if policy is not None:
                local = policy.check(data, q)
                if local is not None:
                    return local
        return None

    def decided_locally(self, data: bytes, q: Query) -> bool:
        """A policy stage answers this query now, or client groups may answer it differently per group."""
        if self.groups is not None and self.groups.listed(data[12:q.qend - 4].lower()):
            return True
        return self.local(data, q, self.blocking) is not None

    def store(self, key: bytes, entry: Entry, ttl: int) -> None:
        """The one place the query path writes the cache: answers that may live (ttl > 0)."""
        if ttl > 0:
            self.cache.put(key, entry)

    # --- stages 5-6: the miss path ---

    async def resolve(self, miss: Miss, data: bytes) -> Answer:
        """Coalesce on the key (the first query fetches through the tiers, the others wait on its
        future), then build this client's reply: the entry found, else stale, else SERVFAIL."""
        started = time.monotonic()
        inflight = self.inflight
        entry: Entry | None
        if miss.key in inflight:
            fut = inflight[miss.key]
            if fut is None:  # the first to join this fetch makes the future everyone after it waits on
                fut = inflight[miss.key] = asyncio.get_running_loop().create_future()
            self.counters.coalesced += 1
            entry = await asyncio.shield(fut)
        else:
            zb = self.zone_bound
            zone = parent(miss.question) if zb is not None else b""
            if zb is not None and not zb.enter(zone):
                self.counters.inflight_limited["zone"] += 1
                return Answer(self.servfail(data, miss.q), How.FAILED)
            inflight[miss.key] = None
            entry = None
            try:
                got = await self.fetch(miss, data)
                if got is not None:
                    if self.check_chain is not None and got.entry.tail.find(wire.CNAME_IN) >= 0:  # else no CNAME
                        got = self.cloak(got, miss, data)
                    if self.prefetch and got.ttl >= PREFETCH_MIN_TTL:
                        got.entry.prefetch = Prefetch(miss.key, got.ttl, self.start_prefetch)
                    self.store(miss.key, got.entry, got.ttl)
                    entry = got.entry
            except Exception as exc:  # noqa: BLE001 - a miss must end in an answer, never a lost query
                self.counters.internal_errors += 1
                log.error(f"internal error on the miss path: {exc!r}")
            finally:
                fut = inflight.pop(miss.key)
                if fut is not None:
                    fut.set_result(entry)
                if zb is not None:
                    zb.leave(zone)
        ms = int((time.monotonic() - started) * 1000)
        self.counters.miss_latency_ms[min(15, ms.bit_length())] += 1
        if entry is None:
            stale = self.cache.get_stale(miss.key, int(time.monotonic()))
            if stale is not None:
                self.counters.stale_served += 1
                return Answer(stale.stale_reply(data), How.STALE)
            return Answer(self.servfail(data, miss.q), How.FAILED)
        reply = entry.reply(data)
        rcode = reply[3] & wire.RCODE_MASK
        self.counters.by_rcode[rcode] = self.counters.by_rcode.get(rcode, 0) + 1
        return Answer(reply, How.RESOLVED)

    def start_prefetch(self, key: bytes) -> None:
        """Refetch a popular entry before it expires, in the background; its clients keep the cached answer."""
        if key in self.inflight:
            return
        data = cachekey.query_for_key(key)
        try:
            q = wire.parse_query(data)
        except wire.WireError:
            return
        limit = TCP_LIMIT if key[:1] == b"T" else wire.size_class(q)
        self.counters.prefetches += 1
        asyncio.get_running_loop().create_task(self.resolve(Miss(key, q, limit, data[wire.HEADER_LEN:q.qend].lower()), data))

    def cloak(self, got: Fetched, miss: Miss, data: bytes) -> Fetched:
        """An answer whose CNAME chain passes through a blocked name becomes the block answer, cached as one."""
        assert self.check_chain is not None
        blocked = self.check_chain(data, miss.q, got.entry.reply(data))
        if blocked is None:
            return got
        return Fetched(local_entry(blocked.reply, miss.q, int(time.monotonic()), blocked.ttl, True), blocked.ttl)

    def fetch(self, miss: Miss, data: bytes) -> Awaitable[Fetched | None]:
        """Stage 5, then stage 6 (without a shared tier, the upstream's awaitable itself: no extra frame)."""
        if self.shared is None:
            return self.upstream.fetch(miss, data)
        return self._fetch_tiers(self.shared, miss, data)

    async def _fetch_tiers(self, shared: SharedTier, miss: Miss, data: bytes) -> Fetched | None:
        """What the shared tier has, else the upstream's answer, which the shared tier then learns."""
        got = await shared.fetch(miss, data)
        if got is not None:
            return got
        got = await self.upstream.fetch(miss, data)
        if got is not None:
            shared.learn(miss, data, got)
        return got

    async def _finish(self, miss: Miss, data: bytes, client: object, transport: Transport, t0: float, send: Send,
                      done: Callable[[], None] | None) -> None:
        try:
            answer = await self.resolve(miss, data)
            send(answer.reply, client)
            if self.observers:
                self.observe(data, answer, client, transport, t0)
        finally:
            self.pending -= 1
            if self.client_bound is not None:
                self.client_bound.leave(client_key(client))
            if self.share is not None:
                self.share.publish(self.slot, self.pending)
            if done is not None:
                done()

    # --- replies and observers ---

    def servfail(self, data: bytes, q: Query) -> bytes:
        self.counters.servfail += 1
        return wire.error_reply(data, wire.SERVFAIL, q.qend, edns=q.edns)

    def observe(self, data: bytes, answer: Answer, client: object, transport: Transport, t0: float) -> None:
        seconds = time.perf_counter() - t0
        for observer in self.observers:
            observer.observe(data, answer.reply, client, transport, seconds, answer.how)

