"""Token-bucket rate limiting per client (or per /24, /56) and globally.

Buckets refill continuously: ``tokens = min(burst, tokens + elapsed * rate)``
on each check, so there is no timer. A query costs one token; with less than
one token left it is limited, and the server decides what to do (REFUSED or
drop, HEIMDALL_RATE_LIMIT_ACTION).

Memory is bounded: at most ``max_buckets`` buckets. Every ``sweep_interval``
seconds, and whenever the table is full, buckets that have refilled to the
burst are removed (a full bucket is the same as no bucket, so nothing is
lost). If the table is still full, the oldest-created bucket is evicted, which
at worst grants that client a fresh burst.

Per-client buckets live in one process. With N workers the server steers each
client (its address, or its /24 or /56) to one worker (heimdall/steering.py),
so its bucket is in one place whatever source ports it uses. The global bucket
is shared by the workers (heimdall/workershare.py) when one is given.
"""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heimdall.workershare import WorkerShare


@dataclass(frozen=True)
class RateLimitConfig:
    per_ip_qps: float = 100.0     # HEIMDALL_QUERIES_PER_SECOND_PER_IP
    per_ip_burst: float = 200.0   # HEIMDALL_BURST_SIZE_PER_IP
    global_qps: float = 0.0       # HEIMDALL_GLOBAL_QUERIES_PER_SECOND (0 = no global limit)
    global_burst: float = 0.0     # 0 = one second's worth of global_qps
    aggregate: bool = False       # key IPv4 by /24 and IPv6 by /56
    v4_prefix: int = 24
    v6_prefix: int = 56
    max_buckets: int = 100_000   # prefixes are whole bytes: 24 -> 3 octets, 56 -> 7 bytes
    sweep_interval: float = 60.0


class RateLimiter:
    """``allow(ip, now)`` on the hot path; counters say why queries were limited."""

    def __init__(self, config: RateLimitConfig, now: float = 0.0, share: "WorkerShare | None" = None) -> None:
        if config.per_ip_qps <= 0 or config.per_ip_burst < 1:
            raise ValueError("per-IP rate must be > 0 and burst >= 1")
        self.config = config
        self._rate = float(config.per_ip_qps)
        self._burst = float(config.per_ip_burst)
        self._buckets: dict[object, list[float]] = {}  # key -> [tokens, last refill time]
        self._max = config.max_buckets
        self._g_rate = float(config.global_qps)
        self._g_burst = float(config.global_burst or config.global_qps)
        self._g_tokens = self._g_burst
        self._g_last = now
        self._share = share  # N workers: the global bucket is theirs together
        if share is not None:
            share.reset_bucket(self._g_burst, now)
        self._next_sweep = now + config.sweep_interval
        self._last_full_sweep = now - 1.0
        self._v4_keep = config.v4_prefix // 8 if config.aggregate else 0
        self._v6_bytes = config.v6_prefix // 8
        self.limited_per_ip = 0
        self.limited_global = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def key(self, ip: str | bytes) -> object:
        """The bucket key: the address itself, or its /24 or /56 network.

        `ip` is a text address or a packed one (4 or 16 bytes, as the server's
        batched receive gives it); packed ones aggregate by a plain slice.
        """
        if not self._v4_keep:
            return ip
        if isinstance(ip, bytes):
            return ip[: self._v4_keep] if len(ip) == 4 else ip[: self._v6_bytes]
        if ":" in ip:
            try:
                return socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])[: self._v6_bytes]
            except OSError:
                return ip
        return ip.rsplit(".", 4 - self._v4_keep)[0] if self._v4_keep < 4 else ip

    def allow(self, ip: str | bytes, now: float) -> bool:
        """Take one token for `ip` (text or packed) at `now` (monotonic seconds); False = limit it."""
        if now >= self._next_sweep:
            self.sweep(now)
        key = self.key(ip) if self._v4_keep else ip
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self._max:
                self._make_room(now)
            self._buckets[key] = b = [self._burst, now]
        else:
            tokens = b[0] + (now - b[1]) * self._rate
            b[0] = tokens if tokens < self._burst else self._burst
            b[1] = now
        if b[0] < 1.0:
            self.limited_per_ip += 1
            return False
        b[0] -= 1.0
        if self._g_rate:
            return self._allow_global(now)
        return True

    def _allow_global(self, now: float) -> bool:
        if self._share is not None:
            if self._share.take(self._g_rate, self._g_burst, now):
                return True
            self.limited_global += 1
            return False
        tokens = self._g_tokens + (now - self._g_last) * self._g_rate
        self._g_tokens = tokens if tokens < self._g_burst else self._g_burst
        self._g_last = now
        if self._g_tokens < 1.0:
            self.limited_global += 1
            return False
        self._g_tokens -= 1.0
        return True

    def sweep(self, now: float) -> int:
        """Drop buckets that have refilled to the burst; returns how many."""
        self._next_sweep = now + self.config.sweep_interval
        rate, burst = self._rate, self._burst
        full = [k for k, (tokens, last) in self._buckets.items() if tokens + (now - last) * rate >= burst]
        for k in full:
            del self._buckets[k]
        return len(full)

    def _make_room(self, now: float) -> None:
        """Table full: sweep at most once a second, else evict the oldest 1/16 at once.

        Batches keep a flood of new addresses O(1) amortised per query.
        """
        if now - self._last_full_sweep >= 1.0:
            self._last_full_sweep = now
            if self.sweep(now) > 0:
                return
        victims = list(itertools.islice(self._buckets, max(1, self._max // 16)))
        for k in victims:
            del self._buckets[k]
        self.evicted += len(victims)
