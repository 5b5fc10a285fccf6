"""Redis as a second cache tier shared by every Heimdall instance and worker.

Why: a cold instance (a restart, a new replica behind a load balancer) should
not hammer the upstreams for names its neighbours already resolved.  The
server asks this tier only on a local miss and writes upstream answers to it
in the background, so local cache hits never touch Redis.

Redis must never slow or crash the caller: every command is bounded by
``timeout``; a timeout or connection error marks Redis *down* (one log line),
after which the tier is skipped entirely for a backoff period (doubling up to
``max_backoff``); one probe then tries again and, when it succeeds, Redis is
*up* again (one log line).

The value (sharedvalue.py) is a versioned header with the stored-at time
and TTL, then the DNS wire answer as the server passed it.  The key is
``key_prefix`` + hex of the server's opaque cache key, and its Redis expiry
is ``ttl`` seconds, so an answer never outlives its TTL there.  A value that
fails to decode (wrong magic or version, truncated, not a well-formed DNS
response: see sharedvalue.ttl_offsets) is counted as ``garbage``, never served.

Create one instance per event loop (per worker process, after fork).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from heimdall.sharedvalue import (  # noqa: F401 - re-exported
    HEADER_SIZE,
    MAGIC,
    VERSION,
    GarbageValue,
    age_ttls,
    decode_value,
    encode_value,
    ttl_offsets,
)

log = logging.getLogger("heimdall.sharedcache")

UP, DOWN, DISABLED = "up", "down", "disabled"
FLUSH, LISTS = "flush", "lists"  # what an invalidation says changed in the instance that sent it

# Upper bounds (seconds) of the latency histogram: fine below the default
# 50 ms timeout, where a loopback or LAN Redis lives.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
)


# --------------------------------------------------------------------------
# Counters the metrics module reads.
# --------------------------------------------------------------------------

@dataclass
class LatencyHistogram:
    """Round-trip times of completed Redis commands, Prometheus-shaped."""

    bounds: tuple[float, ...] = LATENCY_BOUNDS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, count <= le), ..., ("+Inf", all)], as HistogramMetricFamily wants."""
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


@dataclass(frozen=True, slots=True)
class SharedHit:
    """An answer found in Redis: the wire bytes as stored, their age, the TTL they were stored with."""

    wire: bytes
    age: float
    ttl: int

    @property
    def remaining(self) -> int:
        """Whole seconds the answer may still live (>= 1 for a hit)."""
        return self.ttl - int(self.age)


@dataclass
class Counters:
    """Plain ints: cheap to bump, trivially read by the metrics module."""

    hits: int = 0
    misses: int = 0
    garbage: int = 0
    errors: int = 0
    timeouts: int = 0
    skipped: int = 0
    puts: int = 0
    puts_dropped: int = 0
    invalidations_sent: int = 0
    invalidations_received: int = 0


# --------------------------------------------------------------------------
# The tier.
# --------------------------------------------------------------------------

class SharedCache:
    """Async get/put of DNS answers in Redis that degrades instead of failing."""

    def __init__(self, url: str | None, key_prefix: str = "heimdall:", timeout: float = 0.05,
                 *, backoff: float = 1.0, max_backoff: float = 30.0,
                 max_pending_puts: int = 256, max_connections: int = 64,
                 instance_id: str | None = None) -> None:
        self.url = url or None
        self.key_prefix = key_prefix.encode()
        self.timeout = timeout
        self.base_backoff = backoff
        self.max_backoff = max_backoff
        self.max_pending_puts = max_pending_puts
        self.counters = Counters()
        self.latency = LatencyHistogram()
        # Invalidations carrying our own id are ignored: give every worker of one
        # instance the same id (e.g. host + supervisor pid) so siblings skip them too.
        self.instance_id = (instance_id or uuid.uuid4().hex).encode()
        self._up = self.url is not None
        self._retry_at = 0.0
        self._backoff = backoff
        self._pending: set[asyncio.Task] = set()
        self._listener: asyncio.Task | None = None
        self._client: aioredis.Redis | None = None
        if self.url is not None:
            self._client = self._make_client(self.url, max_connections)

    def _make_client(self, url: str, max_connections: int) -> aioredis.Redis:
        # No client-side retries: our own backoff decides when to try again.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None,
            socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
        )
        return aioredis.Redis(connection_pool=pool)

    # ---- state -----------------------------------------------------------

    @property
    def state(self) -> str:
        if self._client is None:
            return DISABLED
        return UP if self._up else DOWN

    @property
    def channel(self) -> bytes:
        return self.key_prefix + b"invalidate"

    def redis_key(self, key: bytes) -> bytes:
        return self.key_prefix + key.hex().encode()

    def _may_try(self) -> bool:
        """True when Redis is up, or down but due for its one probe."""
        if self._up:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            self.counters.skipped += 1
            return False
        self._retry_at = now + self._backoff  # other callers skip while this one probes
        return True

    def _succeeded(self) -> None:
        if not self._up:
            self._up = True
            self._backoff = self.base_backoff
            log.warning("shared cache: redis %s is back, in use again", self.url)

    def _failed(self, exc: BaseException, was_up: bool) -> None:
        self.counters.errors += 1
        if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(exc).__name__:
            self.counters.timeouts += 1
        now = time.monotonic()
        if self._up:
            self._up = False
            self._backoff = self.base_backoff
            self._retry_at = now + self._backoff
            log.warning("shared cache: redis %s unavailable (%s: %s), local cache only, retry in %.1fs",
                        self.url, type(exc).__name__, str(exc) or "timed out", self._backoff)
        elif not was_up:  # a failed probe: wait longer next time
            self._backoff = min(self._backoff * 2, self.max_backoff)
            self._retry_at = now + self._backoff

    async def _command(self, *args: Any) -> tuple[bool, Any]:
        """(ok, reply) of one command bounded by `timeout`; never raises on Redis trouble."""
        assert self._client is not None  # callers check first
        was_up = self._up
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._client.execute_command(*args)
        except (RedisError, OSError, TimeoutError, asyncio.TimeoutError) as exc:
            self._failed(exc, was_up)
            return False, None
        self.latency.observe(time.perf_counter() - start)
        self._succeeded()
        return True, reply

    # ---- cache API -------------------------------------------------------

    async def get(self, key: bytes, question: bytes | None = None) -> tuple[bytes, float] | None:
        """(wire as stored, seconds since stored) or None on miss/garbage/error/skip."""
        hit = await self.lookup(key, question)
        return None if hit is None else (hit.wire, hit.age)

    async def lookup(self, key: bytes, question: bytes | None = None) -> SharedHit | None:
        """Like get, with the TTL the answer was stored with (to bound its TTLs by what is left).

        With `question` (lower-cased wire question), an answer whose question
        section does not start with it counts as garbage.
        """
        if self._client is None or not self._may_try():
            return None
        ok, value = await self._command("GET", self.redis_key(key))
        if not ok:
            return None
        if value is None:
            self.counters.misses += 1
            return None
        try:
            wire, stored_at, ttl = decode_value(value)
        except GarbageValue:
            self.counters.garbage += 1
            return None
        if question is not None and wire[12:12 + len(question)].lower() != question:
            self.counters.garbage += 1
            return None
        age = max(0.0, time.time() - stored_at)
        if age >= ttl:  # clocks of two instances disagree: treat as expired
            self.counters.misses += 1
            return None
        self.counters.hits += 1
        return SharedHit(wire, age, ttl)

    async def put(self, key: bytes, wire: bytes, ttl: int) -> None:
        """Schedule a background write and return at once (see put_nowait)."""
        self.put_nowait(key, wire, ttl)

    def put_nowait(self, key: bytes, wire: bytes, ttl: int) -> bool:
        """Start a bounded background SET with expiry `ttl`; False if not scheduled.

        Not scheduled when disabled, ttl <= 0, Redis down (backoff), or too
        many writes already in flight (counted as puts_dropped).  Must be
        called from inside the running event loop.
        """
        if self._client is None or ttl <= 0:
            return False
        if len(self._pending) >= self.max_pending_puts:
            self.counters.puts_dropped += 1
            return False
        if not self._may_try():
            return False
        value = encode_value(wire, ttl, time.time())
        task = asyncio.get_running_loop().create_task(self._store(self.redis_key(key), value, ttl))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def _store(self, rkey: bytes, value: bytes, ttl: int) -> None:
        ok, _ = await self._command("SET", rkey, value, "EX", ttl)
        if ok:
            self.counters.puts += 1

    async def drain(self) -> None:
        """Wait for the writes in flight (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # ---- cross-instance invalidation ----------------------------------------

    async def publish_invalidate(self, kind: str = FLUSH) -> bool:
        """Tell the other instances what changed here: FLUSH (the cache) or LISTS (the blocklists)."""
        if self._client is None or not self._may_try():
            return False
        ok, _ = await self._command("PUBLISH", self.channel, self.instance_id + b" " + kind.encode())
        if ok:
            self.counters.invalidations_sent += 1
        return ok

    def subscribe_invalidate(self, callback: Callable[[str], None]) -> asyncio.Task | None:
        """Run `callback(kind)` whenever another instance publishes an invalidation.

        The listener keeps one pub/sub connection, reconnecting with the
        same backoff after errors; cancel via close().  Our own messages
        are ignored (the publisher already flushed itself).
        """
        if self._client is None:
            return None
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen(callback))
        return self._listener

    async def _listen(self, callback: Callable[[str], None]) -> None:
        delay = self.base_backoff
        assert self._client is not None  # subscribe_invalidate checks first
        while True:
            pubsub = self._client.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(self.channel), max(self.timeout, 1.0))
                delay = self.base_backoff
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if not msg or msg.get("type") != "message":
                        continue
                    sender, _, kind = bytes(msg.get("data") or b"").partition(b" ")
                    if sender != self.instance_id:
                        self.counters.invalidations_received += 1
                        try:
                            callback(kind.decode(errors="replace") or FLUSH)
                        except Exception:  # noqa: BLE001 - a bad callback must not kill the listener
                            log.exception("invalidation callback failed")
            except (RedisError, OSError, TimeoutError, asyncio.TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            finally:
                try:
                    await asyncio.wait_for(pubsub.aclose(), 1.0)
                except (RedisError, OSError, TimeoutError, asyncio.TimeoutError):
                    pass

    async def flush_keys(self, batch: int = 1000) -> int:
        """Remove every key under the prefix (a cache flush that the shared tier must not undo);
        how many. Stops, with what it removed so far, when Redis fails or goes down."""
        removed, cursor = 0, 0
        while self._client is not None and self._may_try():
            ok, reply = await self._command("SCAN", cursor, "MATCH", self.key_prefix + b"*", "COUNT", batch)
            if not ok:
                break
            cursor, keys = int(reply[0]), [k for k in reply[1] if k != self.channel]
            if keys:
                ok, n = await self._command("UNLINK", *keys)
                if not ok:
                    break
                removed += int(n)
            if cursor == 0:
                break
        return removed

    # ---- lifecycle and metrics ---------------------------------------------

    async def close(self) -> None:
        """Cancel the listener and pending writes, close connections."""
        tasks = list(self._pending) + ([self._listener] if self._listener else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listener = None
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.aclose(close_connection_pool=True), 1.0)
            except (RedisError, OSError, TimeoutError, asyncio.TimeoutError):
                pass

    def stats(self) -> dict[str, Any]:
        """Counters, state and latency histogram for heimdall_redis_* and /health."""
        c = self.counters
        return {
            "state": self.state,
            "hits": c.hits, "misses": c.misses, "garbage": c.garbage,
            "errors": c.errors, "timeouts": c.timeouts, "skipped": c.skipped,
            "puts": c.puts, "puts_dropped": c.puts_dropped, "puts_in_flight": len(self._pending),
            "invalidations_sent": c.invalidations_sent,
            "invalidations_received": c.invalidations_received,
            "latency_bounds": self.latency.bounds,            # metrics.Hist(bounds, counts, sum)
            "latency_counts": list(self.latency.counts),      # per bucket, last one is +Inf
            "latency_buckets": self.latency.cumulative(),     # Prometheus (le, cumulative count)
            "latency_sum": self.latency.total,
            "latency_count": sum(self.latency.counts),
        }
