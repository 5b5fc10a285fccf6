"""Stage 5: the shared (Redis) tier, asked before the upstreams and taught what they answer.

Every worker of every server in a fleet builds its own reply variants from
the upstream's message stored here, with TTLs aged by the time it has been
stored and none longer than what is left of it. Redis being slow or down is
the SharedCache's business (heimdall/sharedcache.py): a lookup then finds
nothing and the miss goes upstream.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING

from heimdall import cachekey, sharedvalue
from heimdall.cache import build_entry
from heimdall.config import Config
from heimdall.outcome import Fetched, Miss
from heimdall.wire import WireError

if TYPE_CHECKING:
    from heimdall.sharedcache import SharedCache


class SharedTier:
    def __init__(self, redis: "SharedCache", config: Config):
        self.redis = redis
        self.config = config

    async def fetch(self, miss: Miss, data: bytes) -> Fetched | None:
        """The entry built from the shared tier's answer, or None (not there, unusable, or Redis down)."""
        q = miss.q
        hit = await self.redis.lookup(cachekey.shared_key(miss.question, data, q), miss.question)
        if hit is None:
            return None
        cfg, left = self.config, hit.remaining
        try:
            entry, ttl = build_entry(sharedvalue.age_ttls(hit.wire, hit.age), data, q, miss.limit,
                                     int(time.monotonic()), min(cfg.min_ttl, left), min(cfg.max_ttl, left),
                                     min(cfg.negative_ttl, left))
        except (WireError, sharedvalue.GarbageValue):
            self.redis.counters.garbage += 1
            return None
        return Fetched(entry, ttl)

    async def close(self) -> None:
        await self.redis.close()

    def learn(self, miss: Miss, data: bytes, got: Fetched) -> None:
        """Store an upstream's answer in the background; Redis expires it with its TTL."""
        if got.ttl > 0 and got.response is not None:
            self.redis.put_nowait(cachekey.shared_key(miss.question, data, miss.q), got.response, got.ttl)


def open_shared_tier(config: Config) -> SharedTier | None:
    """The tier when HEIMDALL_REDIS_URL is set (redis is imported only then), else None."""
    if not config.redis_url:
        return None
    from heimdall.sharedcache import SharedCache

    return SharedTier(SharedCache(config.redis_url, config.redis_key_prefix, config.redis_timeout,
                                  instance_id=instance_id()), config)


def instance_id() -> str:
    """This server on this host, the same in each of its workers (the supervisor's pid), so that sibling
    workers ignore each other's invalidations: they act on every change together anyway."""
    under_supervisor = os.environ.get("HEIMDALL_WORKER_INDEX") is not None
    return f"{socket.gethostname()}:{os.getppid() if under_supervisor else os.getpid()}"

